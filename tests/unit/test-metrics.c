/* SPDX-License-Identifier: Apache-2.0 */
/* envd's /metrics figures: parsing /proc/stat and /proc/meminfo, and the CPU percentage. */
#include <errno.h>
#include <string.h>

#include "harness.h"
#include "sys/metrics.h"

TEST(cpu_line_parsed_without_guest_time)
{
    struct metrics_cpu_sample s;
    /* user nice system idle iowait irq softirq steal guest guest_nice */
    ASSERT_OK(metrics_parse_cpu("cpu  100 20 30 400 50 6 4 0 70 5\ncpu0 1 2 3 4\n", &s));
    ASSERT_UEQ(s.total, 100 + 20 + 30 + 400 + 50 + 6 + 4 + 0);
    ASSERT_UEQ(s.busy, s.total - 400 - 50);
    /* Old kernels print fewer columns. */
    ASSERT_OK(metrics_parse_cpu("cpu 1 2 3 4\n", &s));
    ASSERT_UEQ(s.total, 10);
    ASSERT_UEQ(s.busy, 6);
    ASSERT_ERR(metrics_parse_cpu("intr 1 2 3\n", &s), EINVAL);
    ASSERT_ERR(metrics_parse_cpu("cpu x\n", &s), EINVAL);
}

TEST(cpu_percent_between_samples)
{
    struct metrics_cpu_sample a = {1000, 200}, b = {2000, 450};
    ASSERT_TRUE(metrics_cpu_percent(&a, &b) == 25.0);
    struct metrics_cpu_sample c = {2003, 451};
    /* 1/3 busy rounds to two decimals. */
    ASSERT_TRUE(metrics_cpu_percent(&b, &c) == 33.33);
    /* Nothing elapsed, or a counter went backwards: 0. */
    ASSERT_TRUE(metrics_cpu_percent(&b, &b) == 0.0);
    ASSERT_TRUE(metrics_cpu_percent(&c, &b) == 0.0);
}

TEST(meminfo_fields)
{
    struct host_metrics m;
    memset(&m, 0, sizeof(m));
    ASSERT_OK(metrics_parse_meminfo("MemTotal:        1000 kB\n"
                                    "MemFree:          100 kB\n"
                                    "MemAvailable:     600 kB\n"
                                    "Buffers:           10 kB\n"
                                    "Cached:           200 kB\n"
                                    "SwapCached:         7 kB\n"
                                    "SReclaimable:      30 kB\n",
                                    &m));
    ASSERT_UEQ(m.mem_total, 1000 * 1024);
    ASSERT_UEQ(m.mem_used, 400 * 1024);
    /* "Cached" must not match "SwapCached". */
    ASSERT_UEQ(m.mem_cache, 230 * 1024);
    ASSERT_ERR(metrics_parse_meminfo("MemFree: 1 kB\n", &m), EINVAL);
}

TEST(collect_reads_this_machine)
{
    struct metrics_cpu_sample prev = {0, 0};
    struct host_metrics m;
    ASSERT_OK(metrics_collect(&prev, &m));
    ASSERT_TRUE(m.cpu_count >= 1);
    ASSERT_TRUE(m.mem_total > 0 && m.mem_used <= m.mem_total);
    ASSERT_TRUE(m.disk_total > 0 && m.disk_used <= m.disk_total);
    ASSERT_TRUE(m.cpu_used_pct >= 0 && m.cpu_used_pct <= 100);
    ASSERT_TRUE(prev.total > 0);
}

TEST_MAIN()

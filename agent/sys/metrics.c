/* SPDX-License-Identifier: Apache-2.0 */
#include "sys/metrics.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/statfs.h>
#include <time.h>
#include <unistd.h>

#include "base/cleanup.h"
#include "base/macro.h"

/* /proc/stat and /proc/meminfo are read whole; both are a few KiB even with many CPUs. */
#define METRICS_READ_MAX (256 * 1024)

static int read_file(const char *path, char *buf, size_t len)
{
    _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    size_t off = 0;
    while (off < len - 1) {
        ssize_t n = read(fd, buf + off, len - 1 - off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            break;
        off += (size_t) n;
    }
    buf[off] = '\0';
    return 0;
}

int metrics_parse_cpu(const char *proc_stat, struct metrics_cpu_sample *ret)
{
    unsigned long long v[10] = {0};
    if (strncmp(proc_stat, "cpu ", 4) != 0)
        return -EINVAL;
    int n = sscanf(proc_stat + 4, "%llu %llu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1],
                   &v[2], &v[3], &v[4], &v[5], &v[6], &v[7], &v[8], &v[9]);
    if (n < 4)
        return -EINVAL;
    /* user nice system idle iowait irq softirq steal guest guest_nice: guest time is already
     * part of user (and guest_nice of nice), so the total leaves it out. */
    uint64_t total = 0;
    for (int i = 0; i < 8; i++)
        total += v[i];
    ret->total = total;
    ret->busy = total - v[3] - v[4];
    return 0;
}

double metrics_cpu_percent(const struct metrics_cpu_sample *prev,
                           const struct metrics_cpu_sample *now)
{
    if (now->total <= prev->total || now->busy < prev->busy)
        return 0;
    double pct = 100.0 * (double) (now->busy - prev->busy) / (double) (now->total - prev->total);
    if (pct > 100)
        pct = 100;
    return round(pct * 100) / 100;
}

/* Value in kB of a "Name:   123 kB" line, or 0. */
static uint64_t meminfo_kb(const char *meminfo, const char *name, int *found)
{
    size_t n = strlen(name);
    for (const char *p = meminfo; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (strncmp(p, name, n) == 0 && p[n] == ':') {
            unsigned long long kb = 0;
            if (sscanf(p + n + 1, "%llu", &kb) == 1) {
                (*found)++;
                return kb;
            }
        }
    }
    return 0;
}

int metrics_parse_meminfo(const char *meminfo, struct host_metrics *m)
{
    int found = 0, need;
    uint64_t total = meminfo_kb(meminfo, "MemTotal", &found);
    uint64_t avail = meminfo_kb(meminfo, "MemAvailable", &found);
    need = found;
    uint64_t cached = meminfo_kb(meminfo, "Cached", &found);
    uint64_t srecl = meminfo_kb(meminfo, "SReclaimable", &found);
    if (need < 2)
        return -EINVAL;
    m->mem_total = total * 1024;
    m->mem_used = (total > avail ? total - avail : 0) * 1024;
    m->mem_cache = (cached + srecl) * 1024;
    return 0;
}

int metrics_collect(struct metrics_cpu_sample *prev, struct host_metrics *ret)
{
    static char buf[METRICS_READ_MAX];
    struct metrics_cpu_sample now;
    struct statfs sf;
    int r;

    memset(ret, 0, sizeof(*ret));
    ret->ts = (int64_t) time(NULL);
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    ret->cpu_count = ncpu > 0 ? (uint32_t) ncpu : 1;
    r = read_file("/proc/stat", buf, sizeof(buf));
    if (r < 0)
        return r;
    r = metrics_parse_cpu(buf, &now);
    if (r < 0)
        return r;
    ret->cpu_used_pct = metrics_cpu_percent(prev, &now);
    *prev = now;
    r = read_file("/proc/meminfo", buf, sizeof(buf));
    if (r < 0)
        return r;
    r = metrics_parse_meminfo(buf, ret);
    if (r < 0)
        return r;
    if (statfs("/", &sf) < 0)
        return -errno;
    ret->disk_total = (uint64_t) sf.f_blocks * (uint64_t) sf.f_bsize;
    uint64_t avail = (uint64_t) sf.f_bavail * (uint64_t) sf.f_bsize;
    ret->disk_used = ret->disk_total > avail ? ret->disk_total - avail : 0;
    return 0;
}

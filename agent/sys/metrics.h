/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Host figures for envd's GET /metrics, read from /proc and statfs. CPU use is measured since the
 * previous sample (as gopsutil's cpu.Percent(0, false), which envd calls): busy = total - idle -
 * iowait, with guest time left out of the total (the kernel already counts it in user time).
 */
#pragma once

#include <stdint.h>

struct metrics_cpu_sample {
    uint64_t total;
    uint64_t busy;
};

struct host_metrics {
    int64_t ts;          /* unix seconds */
    uint32_t cpu_count;  /* logical CPUs online */
    double cpu_used_pct; /* 0..100, two decimals */
    uint64_t mem_total;  /* bytes */
    uint64_t mem_used;   /* MemTotal - MemAvailable */
    uint64_t mem_cache;  /* Cached + SReclaimable */
    uint64_t disk_total; /* statfs("/"): blocks * bsize */
    uint64_t disk_used;  /* total - bavail * bsize */
};

/* Parses /proc/stat's aggregate "cpu" line. */
int metrics_parse_cpu(const char *proc_stat, struct metrics_cpu_sample *ret);
/* Busy percentage between two samples (0 when nothing elapsed), rounded to two decimals. */
double metrics_cpu_percent(const struct metrics_cpu_sample *prev,
                           const struct metrics_cpu_sample *now);
/* Parses /proc/meminfo into the memory fields. */
int metrics_parse_meminfo(const char *meminfo, struct host_metrics *m);
/*
 * Samples everything. `prev` holds the previous CPU sample and is updated (zeroed on the first
 * call: the first percentage is then since boot, as gopsutil's first call).
 */
int metrics_collect(struct metrics_cpu_sample *prev, struct host_metrics *ret);

/* SPDX-License-Identifier: Apache-2.0 */
#include "sys/clock.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "base/timefmt.h"

bool clock_needs_step(int64_t guest_ns, int64_t host_ns)
{
    return guest_ns < host_ns - CLOCK_MAX_BEHIND_NS || guest_ns > host_ns + CLOCK_MAX_AHEAD_NS;
}

int64_t clock_realtime_ns(void)
{
    struct timespec ts;
    (void) clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t) ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int clock_step_to(int64_t host_ns)
{
    struct timespec ts = {.tv_sec = host_ns / 1000000000, .tv_nsec = host_ns % 1000000000};
    if (ts.tv_nsec < 0) {
        ts.tv_sec--;
        ts.tv_nsec += 1000000000;
    }
    return clock_settime(CLOCK_REALTIME, &ts) < 0 ? -errno : 0;
}

int clock_parse_rfc3339(const char *s, int64_t *ret_ns)
{
    int64_t secs;
    int32_t nanos;
    int r = rfc3339_parse(s, strlen(s), &secs, &nanos);
    if (r < 0)
        return r;
    /* Nanoseconds in an int64 cover 1677-09-21 to 2262-04-11; beyond is out of range. */
    int64_t ns;
    if (__builtin_mul_overflow(secs, (int64_t) 1000000000, &ns) ||
        __builtin_add_overflow(ns, (int64_t) nanos, &ns))
        return -ERANGE;
    *ret_ns = ns;
    return 0;
}

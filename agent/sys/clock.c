/* SPDX-License-Identifier: Apache-2.0 */
#include "sys/clock.h"

#include <errno.h>
#include <string.h>
#include <time.h>

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

static int digits(const char **p, int n, int *ret)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        char c = (*p)[i];
        if (c < '0' || c > '9')
            return -EINVAL;
        v = v * 10 + (c - '0');
    }
    *p += n;
    *ret = v;
    return 0;
}

/* Days since 1970-01-01 of a proleptic Gregorian date. */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

int clock_parse_rfc3339(const char *s, int64_t *ret_ns)
{
    static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    const char *p = s;
    int Y, M, D, h, m, sec, oh = 0, om = 0;
    int64_t frac = 0;
    if (digits(&p, 4, &Y) || *p++ != '-' || digits(&p, 2, &M) || *p++ != '-' || digits(&p, 2, &D) ||
        (*p != 'T' && *p != 't') || !*p++ || digits(&p, 2, &h) || *p++ != ':' ||
        digits(&p, 2, &m) || *p++ != ':' || digits(&p, 2, &sec))
        return -EINVAL;
    if (M < 1 || M > 12 || D < 1 || D > mdays[M - 1] || h > 23 || m > 59 || sec > 60)
        return -EINVAL;
    bool leap = (Y % 4 == 0 && Y % 100 != 0) || Y % 400 == 0;
    if (M == 2 && D == 29 && !leap)
        return -EINVAL;
    if (*p == '.') {
        p++;
        int n = 0;
        while (*p >= '0' && *p <= '9') {
            if (n < 9) {
                frac = frac * 10 + (*p - '0');
                n++;
            }
            p++;
        }
        if (n == 0)
            return -EINVAL;
        for (; n < 9; n++)
            frac *= 10;
    }
    int sign = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        sign = *p++ == '+' ? 1 : -1;
        if (digits(&p, 2, &oh) || *p++ != ':' || digits(&p, 2, &om) || oh > 23 || om > 59)
            return -EINVAL;
    } else {
        return -EINVAL;
    }
    if (*p)
        return -EINVAL;
    if (sec == 60)
        sec = 59; /* leap second: clamp as Go's parser rejects, but be lenient */
    int64_t secs = days_from_civil(Y, M, D) * 86400 + h * 3600 + m * 60 + sec;
    secs -= (int64_t) sign * (oh * 3600 + om * 60);
    *ret_ns = secs * 1000000000 + frac;
    return 0;
}

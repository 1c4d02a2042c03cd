/* SPDX-License-Identifier: Apache-2.0 */
#include "base/timefmt.h"

#include <errno.h>
#include <stdbool.h>

#include "base/macro.h"

/*
 * Calendar arithmetic for Timestamp: proleptic Gregorian, days since 1970-01-01, in 400-year eras
 * of 146097 days that start on 0000-03-01 (719468 days before the epoch). No libc time functions:
 * they depend on time_t's range and, for mktime, on the local time zone.
 */

int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    /* Count years from March so that the leap day is the last day of the "year". */
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned) (y - era * 400);
    unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t) doe - 719468;
}

void civil_from_days(int64_t z, int64_t *ret_y, unsigned *ret_m, unsigned *ret_d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned) (z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    unsigned d = doy - (153 * mp + 2) / 5 + 1;
    unsigned m = mp < 10 ? mp + 3 : mp - 9;
    *ret_y = (int64_t) yoe + era * 400 + (m <= 2);
    *ret_m = m;
    *ret_d = d;
}

unsigned days_in_month(int64_t y, unsigned m)
{
    static const unsigned char days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return m == 2 && leap ? 29 : days[m - 1];
}

static int parse_digits(const char *s, size_t n, unsigned *ret)
{
    unsigned v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -EINVAL;
        v = v * 10 + (unsigned) (s[i] - '0');
    }
    *ret = v;
    return 0;
}

/* RFC 3339: YYYY-MM-DDTHH:MM:SS[.f{1,9}](Z|±HH:MM), within the Timestamp range. */
int rfc3339_parse(const char *s, size_t len, int64_t *ret_seconds, int32_t *ret_nanos)
{
    unsigned y, mo, dd, h, mi, sec, nanos = 0;
    if (len < STRLEN("0000-00-00T00:00:00Z") || s[4] != '-' || s[7] != '-' || s[10] != 'T' ||
        s[13] != ':' || s[16] != ':')
        return -EINVAL;
    if (parse_digits(s, 4, &y) < 0 || parse_digits(s + 5, 2, &mo) < 0 ||
        parse_digits(s + 8, 2, &dd) < 0 || parse_digits(s + 11, 2, &h) < 0 ||
        parse_digits(s + 14, 2, &mi) < 0 || parse_digits(s + 17, 2, &sec) < 0)
        return -EINVAL;
    if (y < 1 || mo < 1 || mo > 12 || dd < 1 || dd > days_in_month(y, mo) || h > 23 || mi > 59 ||
        sec > 59)
        return -EINVAL;

    size_t i = 19;
    if (i < len && s[i] == '.') {
        size_t start = ++i;
        while (i < len && s[i] >= '0' && s[i] <= '9' && i - start < 9)
            nanos = nanos * 10 + (unsigned) (s[i++] - '0');
        if (i == start || (i < len && s[i] >= '0' && s[i] <= '9'))
            return -EINVAL;
        for (size_t k = i - start; k < 9; k++)
            nanos *= 10;
    }

    int64_t offset = 0;
    if (i + 1 == len && s[i] == 'Z') {
        i++;
    } else if (i + 6 == len && (s[i] == '+' || s[i] == '-') && s[i + 3] == ':') {
        unsigned oh, om;
        if (parse_digits(s + i + 1, 2, &oh) < 0 || parse_digits(s + i + 4, 2, &om) < 0 || oh > 23 ||
            om > 59)
            return -EINVAL;
        offset = (int64_t) (oh * 3600 + om * 60) * (s[i] == '-' ? -1 : 1);
        i += 6;
    } else {
        return -EINVAL;
    }

    int64_t secs = days_from_civil(y, mo, dd) * TIMEFMT_SECONDS_PER_DAY + h * 3600 + mi * 60 + sec -
                   offset;
    if (secs < TIMEFMT_MIN_SECONDS || secs > TIMEFMT_MAX_SECONDS)
        return -ERANGE;
    *ret_seconds = secs;
    *ret_nanos = (int32_t) nanos;
    return 0;
}

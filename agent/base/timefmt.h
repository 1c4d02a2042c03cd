/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Calendar arithmetic and RFC 3339 parsing without libc time functions (they depend on
 * time_t's range and, for mktime, on the local time zone). Used for protobuf Timestamps and
 * /init timestamps alike.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#define TIMEFMT_SECONDS_PER_DAY 86400
/* The range of google.protobuf.Timestamp: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z. */
#define TIMEFMT_MIN_SECONDS     (-62135596800LL)
#define TIMEFMT_MAX_SECONDS     253402300799LL

/* Days since 1970-01-01 of a proleptic Gregorian date, and back. */
int64_t days_from_civil(int64_t y, unsigned m, unsigned d);
void civil_from_days(int64_t z, int64_t *ret_y, unsigned *ret_m, unsigned *ret_d);
unsigned days_in_month(int64_t y, unsigned m);
/*
 * Parses RFC 3339 (YYYY-MM-DDTHH:MM:SS[.f{1,9}](Z|±HH:MM)) into seconds and nanoseconds since
 * the epoch. -EINVAL for bad syntax, -ERANGE outside the Timestamp range.
 */
int rfc3339_parse(const char *s, size_t len, int64_t *ret_seconds, int32_t *ret_nanos);

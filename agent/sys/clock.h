/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Realtime clock stepping from /init timestamps, as envd: step when the guest is more than
 * 50 ms behind or more than 5 s ahead of the host. Only called when stepping is allowed (see
 * state_clock_step_allowed), so a test on a development machine never moves its clock.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

/* envd's thresholds. */
#define CLOCK_MAX_BEHIND_NS (50LL * 1000 * 1000)
#define CLOCK_MAX_AHEAD_NS  (5LL * 1000 * 1000 * 1000)

/* Pure decision: does a guest at `guest_ns` need stepping to `host_ns`? */
bool clock_needs_step(int64_t guest_ns, int64_t host_ns);
/* Current CLOCK_REALTIME in nanoseconds. */
int64_t clock_realtime_ns(void);
/* Sets CLOCK_REALTIME. Returns 0 or -errno. */
int clock_step_to(int64_t host_ns);
/* Parses RFC 3339 ("2026-08-22T10:00:00.123Z", "+02:00" offsets) into Unix nanoseconds. */
int clock_parse_rfc3339(const char *s, int64_t *ret_ns);

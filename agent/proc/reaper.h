/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The one reaper. On SIGCHLD it loops waitpid(-1, WNOHANG) until nothing is left, and hands
 * each status to whoever watches that pid; exits of unwatched children (orphans re-parented to
 * guestd as subreaper or PID 1) are counted and logged at debug level. No other code in guestd
 * calls waitpid, so no tracked status is ever stolen. Watches are registered in the same loop
 * iteration as the fork, and reaping only happens from the loop, so no exit is missed.
 */
#pragma once

#include <stdint.h>
#include <sys/types.h>

typedef struct uv_loop_s uv_loop_t;
typedef void (*reaper_exit_cb)(pid_t pid, int status, void *userdata);

/* Starts reaping on `loop`. Makes guestd a child subreaper unless it is PID 1. */
int reaper_start(uv_loop_t *loop);
/* Stops reaping (closes the signal handle). */
void reaper_stop(void);
/* Calls `cb` once when `pid` exits. -EEXIST if already watched. */
int reaper_watch(pid_t pid, reaper_exit_cb cb, void *userdata);
void reaper_unwatch(pid_t pid);
/* Reaps now (as if SIGCHLD arrived); used after spawn failures and by tests. */
void reaper_reap_now(void);
/* Orphans reaped so far (children nobody watched). */
uint64_t reaper_orphans_reaped(void);

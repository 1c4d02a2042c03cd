/* SPDX-License-Identifier: Apache-2.0 */
/*
 * PID-1 duties: when guestd is the VM's init it mounts what a minimal system needs, sets the
 * hostname, brings up loopback (and eth0 from a kernel `ip=` argument), and at the end syncs
 * and powers off, reboots or halts.
 *
 * The guard: every function that changes the system refuses with -EPERM unless guestd really is
 * PID 1 (or a test passes an explicit override to the pure helpers). A test run on a
 * development machine can therefore never mount anything, move its network or power it off.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum pid1_action {
    PID1_POWEROFF = 0,
    PID1_REBOOT,
    PID1_HALT,
};

/* What guestd takes from the kernel command line. */
struct pid1_boot {
    char hostname[65];
    /* ip=<client>:<server>:<gateway>:<netmask>:<hostname>:<device>:<autoconf> */
    bool has_ip;
    char ip[16];
    char gateway[16];
    char netmask[16];
    char device[16];
};

bool pid1_is(void);
/* Parses "none|poweroff|reboot|halt" style names. */
int pid1_action_from_string(const char *s, enum pid1_action *ret);
const char *pid1_action_name(enum pid1_action a);
/* Parses a kernel command line (pure; no side effects). Unknown words are ignored. */
int pid1_parse_cmdline(const char *cmdline, struct pid1_boot *ret);
/*
 * Sets the system up as init: mounts, hostname, network. Each failure is logged and skipped:
 * PID 1 goes on regardless. Returns -EPERM (doing nothing) unless guestd is PID 1.
 */
int pid1_setup(void);
/* Sends `sig` to every process but guestd (kill(-1)). -EPERM unless PID 1. */
int pid1_kill_all(int sig);
/* Syncs and performs the final action. Does not return on success; -EPERM unless PID 1. */
int pid1_final_action(enum pid1_action a);

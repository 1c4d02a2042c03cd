/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The agent's mutable state as clients see it: the environment given to children, the default
 * user and working directory, /init bookkeeping, identity (boot id, VM generation) and
 * activity. One instance, owned by main and passed to the rpc layer.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "base/kv.h"

enum clock_sync_mode {
    CLOCK_SYNC_AUTO = 0, /* step the clock only as PID 1 */
    CLOCK_SYNC_ON,
    CLOCK_SYNC_OFF,
};

struct agent_state {
    /* Set by guestd itself (E2B_SANDBOX, …); /init cannot overwrite them. */
    struct kv env_internal;
    /* Set by /init envVars; each applied /init replaces the whole set. */
    struct kv env_user;
    char *default_user;
    char *default_workdir; /* NULL: the user's home */
    bool have_init_ts;
    int64_t last_init_ts_ns;
    char boot_id[40];
    uint64_t generation;
    uint64_t started_mono_ms;
    int64_t started_real_ns;
    uint64_t last_activity_mono_ms;
    bool pid1;
    enum clock_sync_mode clock_sync;
    bool require_token;
    bool trust_host_vsock;
    /* Test builds only (-Dvm_test_knobs=true): a CID to treat as the host's. */
    uint32_t host_cid;
    char *run_dir; /* envd's /run/e2b */
    void (*request_shutdown)(void *userdata, const char *reason);
    void *shutdown_data;
};

/* Initialises the state with envd's defaults (user root, E2B_SANDBOX=true). */
void state_init(struct agent_state *st);
void state_done(struct agent_state *st);
/* Monotonic milliseconds. */
uint64_t state_now_ms(void);
/* Records client activity now. */
void state_touch(struct agent_state *st);
/*
 * Writes run_dir/.E2B_SANDBOX (0444) as envd does; returns 0 or -errno. Creates run_dir 0755.
 */
int state_write_run_files(const struct agent_state *st);
/* Whether guestd may step the realtime clock. */
bool state_clock_step_allowed(const struct agent_state *st);

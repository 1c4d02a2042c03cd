/* SPDX-License-Identifier: Apache-2.0 */
/*
 * guestd's configuration: defaults, then the config file (key=value, keys named like the long
 * flags), then command-line flags. Flags follow Go's flag syntax so that guestd drops into an
 * envd image unchanged: -name, --name, -name=value, --name value; boolean flags take a value
 * only as -name=true|false. envd's own flags (-port, -isnotfc, -verbose, -cgroup-root,
 * -no-cgroups, -version) are accepted with envd's meaning.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/log.h"
#include "net/net.h"
#include "sys/state.h"

/* Listeners one guestd may have. */
#define CONFIG_MAX_LISTENERS             16
/* The default config file; a missing default file is not an error. */
#define CONFIG_DEFAULT_PATH              "/etc/guestd/guestd.conf"
/* envd's port. */
#define CONFIG_DEFAULT_PORT              49983
#define CONFIG_DEFAULT_UNIX_SOCKET       "/run/guestd/guestd.sock"
/* Children get this long after SIGTERM at shutdown before SIGKILL. */
#define CONFIG_DEFAULT_SHUTDOWN_GRACE_MS 5000

struct guestd_config {
    struct net_addr listen[CONFIG_MAX_LISTENERS];
    size_t n_listen;
    bool listen_from_flags;
    char *default_user;
    char *default_workdir;
    enum log_level log_level;
    enum log_format log_format;
    char *access_token_file;
    bool require_token;
    bool trust_host_vsock;
    enum clock_sync_mode clock_sync;
    char *run_dir;
    char *config_path;
    bool config_path_explicit;
    /* envd compatibility */
    uint16_t port; /* 0: default */
    bool isnotfc;
    bool verbose;
    char *cgroup_root;
    bool no_cgroups;
    /* HTTP limits (0: the defaults in agent-limits.h) */
    uint64_t header_timeout_ms;
    uint64_t idle_timeout_ms;
    uint32_t max_connections;
    /* processes (0: the defaults in proc/proc.h) */
    uint64_t output_log_cap;
    uint64_t output_global_cap;
    uint64_t output_drain_ms;
    uint64_t result_ttl_ms;
    uint64_t shutdown_grace_ms;
    /* PID 1: what ends the VM after shutdown (enum pid1_action) */
    int final_action;
    /* actions */
    bool show_version;
    bool show_help;
    /* test builds only */
    uint32_t test_host_cid;
};

void config_init(struct guestd_config *c);
void config_done(struct guestd_config *c);
/*
 * Parses argv (without argv[0]) over the current values. Returns 0 or -EINVAL with a message
 * in err.
 */
int config_parse_args(struct guestd_config *c, int argc, char *const *argv, char *err,
                      size_t errlen);
/* Finds --config/-config in argv without applying anything else (so the file can go first). */
int config_find_path(struct guestd_config *c, int argc, char *const *argv, char *err,
                     size_t errlen);
/* Reads a config file over the current values. -ENOENT if missing, -EINVAL with err. */
int config_load_file(struct guestd_config *c, const char *path, char *err, size_t errlen);
/* Parses a config file's text (for tests and fuzzing). */
int config_load_text(struct guestd_config *c, const char *text, char *err, size_t errlen);
/* Fills in default listeners when none were configured. */
void config_default_listeners(struct guestd_config *c, bool pid1);
/* Usage text. */
const char *config_usage(void);

/* SPDX-License-Identifier: Apache-2.0 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "base/cleanup.h"
#include "base/parse.h"
#include "build-config.h"
#include "sys/pid1.h"

/* Longest line accepted in the config file. */
#define CONFIG_LINE_MAX 4096
/* Largest config file read. */
#define CONFIG_FILE_MAX (256 * 1024)

enum opt_type {
    OPT_STRING,
    OPT_BOOL,
};

enum opt_id {
    O_LISTEN,
    O_DEFAULT_USER,
    O_DEFAULT_WORKDIR,
    O_LOG_LEVEL,
    O_LOG_FORMAT,
    O_CONFIG,
    O_ACCESS_TOKEN_FILE,
    O_REQUIRE_TOKEN,
    O_TRUST_HOST_VSOCK,
    O_CLOCK_SYNC,
    O_RUN_DIR,
    O_VERSION,
    O_HELP,
    O_PORT,
    O_ISNOTFC,
    O_VERBOSE,
    O_CGROUP_ROOT,
    O_NO_CGROUPS,
    O_COMMIT,
    O_TEST_HOST_CID,
    O_HEADER_TIMEOUT_MS,
    O_IDLE_TIMEOUT_MS,
    O_MAX_CONNECTIONS,
    O_OUTPUT_LOG_CAP,
    O_OUTPUT_GLOBAL_CAP,
    O_OUTPUT_DRAIN_MS,
    O_RESULT_TTL_MS,
    O_SHUTDOWN_GRACE_MS,
    O_FINAL_ACTION,
    O_ACCESS_TOKEN, /* refused: never from argv or the config file */
};

struct opt {
    const char *name;
    enum opt_id id;
    enum opt_type type;
    bool file_ok; /* may appear in the config file */
};

static const struct opt opts[] = {
        {"listen", O_LISTEN, OPT_STRING, true},
        {"default-user", O_DEFAULT_USER, OPT_STRING, true},
        {"default-workdir", O_DEFAULT_WORKDIR, OPT_STRING, true},
        {"log-level", O_LOG_LEVEL, OPT_STRING, true},
        {"log-format", O_LOG_FORMAT, OPT_STRING, true},
        {"config", O_CONFIG, OPT_STRING, false},
        {"access-token-file", O_ACCESS_TOKEN_FILE, OPT_STRING, true},
        {"require-token", O_REQUIRE_TOKEN, OPT_BOOL, true},
        {"trust-host-vsock", O_TRUST_HOST_VSOCK, OPT_BOOL, true},
        {"clock-sync", O_CLOCK_SYNC, OPT_STRING, true},
        {"run-dir", O_RUN_DIR, OPT_STRING, true},
        {"version", O_VERSION, OPT_BOOL, false},
        {"help", O_HELP, OPT_BOOL, false},
        {"h", O_HELP, OPT_BOOL, false},
        {"port", O_PORT, OPT_STRING, true},
        {"isnotfc", O_ISNOTFC, OPT_BOOL, true},
        {"verbose", O_VERBOSE, OPT_BOOL, true},
        {"cgroup-root", O_CGROUP_ROOT, OPT_STRING, true},
        {"no-cgroups", O_NO_CGROUPS, OPT_BOOL, true},
        {"commit", O_COMMIT, OPT_BOOL, false},
        {"test-host-cid", O_TEST_HOST_CID, OPT_STRING, false},
        {"header-timeout-ms", O_HEADER_TIMEOUT_MS, OPT_STRING, true},
        {"idle-timeout-ms", O_IDLE_TIMEOUT_MS, OPT_STRING, true},
        {"max-connections", O_MAX_CONNECTIONS, OPT_STRING, true},
        {"output-log-cap", O_OUTPUT_LOG_CAP, OPT_STRING, true},
        {"output-global-cap", O_OUTPUT_GLOBAL_CAP, OPT_STRING, true},
        {"output-drain-ms", O_OUTPUT_DRAIN_MS, OPT_STRING, true},
        {"result-ttl-ms", O_RESULT_TTL_MS, OPT_STRING, true},
        {"shutdown-grace-ms", O_SHUTDOWN_GRACE_MS, OPT_STRING, true},
        {"final-action", O_FINAL_ACTION, OPT_STRING, true},
        {"access-token", O_ACCESS_TOKEN, OPT_STRING, true},
};

void config_init(struct guestd_config *c)
{
    memset(c, 0, sizeof(*c));
    c->default_user = xstrdup("root");
    c->log_level = LOG_LVL_INFO;
    c->log_format = LOG_FORMAT_TEXT;
    c->clock_sync = CLOCK_SYNC_AUTO;
    c->run_dir = xstrdup("/run/e2b");
    c->config_path = xstrdup(CONFIG_DEFAULT_PATH);
    c->cgroup_root = xstrdup("/sys/fs/cgroup");
}

void config_done(struct guestd_config *c)
{
    free(c->default_user);
    free(c->default_workdir);
    free(c->access_token_file);
    free(c->run_dir);
    free(c->config_path);
    free(c->cgroup_root);
    memset(c, 0, sizeof(*c));
}

static void set_str(char **dst, const char *v)
{
    free(*dst);
    *dst = xstrdup(v);
}

static const struct opt *find_opt(const char *name, size_t len)
{
    for (size_t i = 0; i < ARRAY_SIZE(opts); i++)
        if (strlen(opts[i].name) == len && strncmp(opts[i].name, name, len) == 0)
            return &opts[i];
    return NULL;
}

/* Applies one option. `from_file` restricts what may be set. */
static int apply(struct guestd_config *c, const struct opt *o, const char *v, bool from_file,
                 char *err, size_t errlen)
{
    bool b = false;
    if (o->type == OPT_BOOL && parse_bool(v, &b) < 0) {
        (void) snprintf(err, errlen, "invalid boolean value '%s' for %s", v, o->name);
        return -EINVAL;
    }
    if (from_file && !o->file_ok && o->id != O_ACCESS_TOKEN) {
        (void) snprintf(err, errlen, "'%s' cannot be set in the config file", o->name);
        return -EINVAL;
    }
    switch (o->id) {
    case O_LISTEN: {
        if (!from_file && !c->listen_from_flags) {
            /* Flags override the file: the first --listen replaces the file's list. */
            c->n_listen = 0;
            c->listen_from_flags = true;
        }
        if (c->n_listen >= CONFIG_MAX_LISTENERS) {
            (void) snprintf(err, errlen, "too many listeners (at most %d)", CONFIG_MAX_LISTENERS);
            return -EINVAL;
        }
        if (net_addr_parse(v, &c->listen[c->n_listen]) < 0) {
            (void) snprintf(err, errlen,
                            "invalid listen address '%s' (tcp:HOST:PORT, unix:PATH or vsock:PORT)",
                            v);
            return -EINVAL;
        }
        c->n_listen++;
        return 0;
    }
    case O_DEFAULT_USER:
        if (!*v) {
            (void) snprintf(err, errlen, "default-user must not be empty");
            return -EINVAL;
        }
        set_str(&c->default_user, v);
        return 0;
    case O_DEFAULT_WORKDIR:
        set_str(&c->default_workdir, v);
        return 0;
    case O_LOG_LEVEL:
        if (log_level_from_string(v, &c->log_level) < 0) {
            (void) snprintf(err, errlen, "invalid log level '%s' (error, warn, info, debug)", v);
            return -EINVAL;
        }
        return 0;
    case O_LOG_FORMAT:
        if (log_format_from_string(v, &c->log_format) < 0) {
            (void) snprintf(err, errlen, "invalid log format '%s' (text, json)", v);
            return -EINVAL;
        }
        return 0;
    case O_CONFIG:
        set_str(&c->config_path, v);
        c->config_path_explicit = true;
        return 0;
    case O_ACCESS_TOKEN_FILE:
        set_str(&c->access_token_file, v);
        return 0;
    case O_REQUIRE_TOKEN:
        c->require_token = b;
        return 0;
    case O_TRUST_HOST_VSOCK:
        c->trust_host_vsock = b;
        return 0;
    case O_CLOCK_SYNC:
        if (streq(v, "auto"))
            c->clock_sync = CLOCK_SYNC_AUTO;
        else if (streq(v, "on"))
            c->clock_sync = CLOCK_SYNC_ON;
        else if (streq(v, "off"))
            c->clock_sync = CLOCK_SYNC_OFF;
        else {
            (void) snprintf(err, errlen, "invalid clock-sync '%s' (auto, on, off)", v);
            return -EINVAL;
        }
        return 0;
    case O_RUN_DIR:
        set_str(&c->run_dir, v);
        return 0;
    case O_VERSION:
        c->show_version = b;
        return 0;
    case O_COMMIT:
        /* envd prints its commit; guestd has none to print, so it prints its version. */
        c->show_version = b;
        return 0;
    case O_HELP:
        c->show_help = b;
        return 0;
    case O_PORT:
        if (parse_port(v, &c->port) < 0) {
            (void) snprintf(err, errlen, "invalid port '%s'", v);
            return -EINVAL;
        }
        return 0;
    case O_ISNOTFC:
        c->isnotfc = b;
        return 0;
    case O_VERBOSE:
        c->verbose = b;
        if (b)
            c->log_level = LOG_LVL_DEBUG;
        return 0;
    case O_CGROUP_ROOT:
        set_str(&c->cgroup_root, v);
        return 0;
    case O_NO_CGROUPS:
        c->no_cgroups = b;
        return 0;
    case O_TEST_HOST_CID:
        if (!GUESTD_VM_TEST_KNOBS) {
            (void) snprintf(err, errlen, "test-host-cid exists only in test builds");
            return -EINVAL;
        }
        if (parse_u32(v, &c->test_host_cid) < 0) {
            (void) snprintf(err, errlen, "invalid CID '%s'", v);
            return -EINVAL;
        }
        return 0;
    case O_HEADER_TIMEOUT_MS:
    case O_IDLE_TIMEOUT_MS: {
        uint64_t ms;
        if (parse_u64(v, &ms) < 0 || ms == 0 || ms > 24ULL * 3600 * 1000) {
            (void) snprintf(err, errlen, "invalid %s '%s' (1 ms to 24 h)", o->name, v);
            return -EINVAL;
        }
        if (o->id == O_HEADER_TIMEOUT_MS)
            c->header_timeout_ms = ms;
        else
            c->idle_timeout_ms = ms;
        return 0;
    }
    case O_MAX_CONNECTIONS:
        if (parse_u32(v, &c->max_connections) < 0 || c->max_connections == 0 ||
            c->max_connections > 1000000) {
            (void) snprintf(err, errlen, "invalid max-connections '%s'", v);
            return -EINVAL;
        }
        return 0;
    case O_OUTPUT_LOG_CAP:
    case O_OUTPUT_GLOBAL_CAP:
    case O_OUTPUT_DRAIN_MS:
    case O_RESULT_TTL_MS:
    case O_SHUTDOWN_GRACE_MS: {
        /* Sizes up to 16 GiB, times up to a week: anything beyond is a typo, not a setting. */
        bool size = o->id == O_OUTPUT_LOG_CAP || o->id == O_OUTPUT_GLOBAL_CAP;
        uint64_t n, max = size ? 16ULL << 30 : 7ULL * 24 * 3600 * 1000;
        if (parse_u64(v, &n) < 0 || n == 0 || n > max) {
            (void) snprintf(err, errlen, "invalid %s '%s' (1 to %llu%s)", o->name, v,
                            (unsigned long long) max, size ? " bytes" : " ms");
            return -EINVAL;
        }
        uint64_t *dst = o->id == O_OUTPUT_LOG_CAP      ? &c->output_log_cap
                        : o->id == O_OUTPUT_GLOBAL_CAP ? &c->output_global_cap
                        : o->id == O_OUTPUT_DRAIN_MS   ? &c->output_drain_ms
                        : o->id == O_RESULT_TTL_MS     ? &c->result_ttl_ms
                                                       : &c->shutdown_grace_ms;
        *dst = n;
        return 0;
    }
    case O_FINAL_ACTION: {
        enum pid1_action a;
        if (pid1_action_from_string(v, &a) < 0) {
            (void) snprintf(err, errlen, "invalid final-action '%s' (poweroff, reboot, halt)", v);
            return -EINVAL;
        }
        c->final_action = (int) a;
        return 0;
    }
    case O_ACCESS_TOKEN:
        (void) snprintf(err, errlen,
                        "the access token is never taken from the command line or the config "
                        "file (it would leak through /proc); use access-token-file or /init");
        return -EINVAL;
    }
    return -EINVAL;
}

/* Splits "-name", "--name=value" into name and value. Returns false if not a flag. */
static bool split_flag(const char *arg, const char **name, size_t *nlen, const char **value)
{
    if (arg[0] != '-' || arg[1] == '\0')
        return false;
    const char *n = arg + 1;
    if (*n == '-')
        n++;
    if (*n == '\0' || *n == '-' || *n == '=')
        return false;
    const char *eq = strchr(n, '=');
    *name = n;
    *nlen = eq ? (size_t) (eq - n) : strlen(n);
    *value = eq ? eq + 1 : NULL;
    return true;
}

static int walk_args(struct guestd_config *c, int argc, char *const *argv, bool only_config,
                     char *err, size_t errlen)
{
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];
        const char *name, *value;
        size_t nlen;
        if (streq(arg, "--") || streq(arg, "-"))
            break;
        if (!split_flag(arg, &name, &nlen, &value)) {
            (void) snprintf(err, errlen, "unexpected argument '%s'", arg);
            return -EINVAL;
        }
        const struct opt *o = find_opt(name, nlen);
        if (!o) {
            (void) snprintf(err, errlen, "unknown flag '%s' (see --help)", arg);
            return -EINVAL;
        }
        if (!value) {
            if (o->type == OPT_BOOL) {
                value = "true";
            } else {
                if (i + 1 >= argc) {
                    (void) snprintf(err, errlen, "flag '%s' needs a value", arg);
                    return -EINVAL;
                }
                value = argv[++i];
            }
        }
        if (only_config && o->id != O_CONFIG)
            continue;
        if (!only_config && o->id == O_CONFIG)
            continue;
        int r = apply(c, o, value, false, err, errlen);
        if (r < 0)
            return r;
    }
    return 0;
}

int config_find_path(struct guestd_config *c, int argc, char *const *argv, char *err, size_t errlen)
{
    return walk_args(c, argc, argv, true, err, errlen);
}

int config_parse_args(struct guestd_config *c, int argc, char *const *argv, char *err,
                      size_t errlen)
{
    return walk_args(c, argc, argv, false, err, errlen);
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r'))
        s[--n] = '\0';
    return s;
}

int config_load_text(struct guestd_config *c, const char *text, char *err, size_t errlen)
{
    _cleanup_free_ char *copy = xstrdup(text);
    int lineno = 0;
    char *next;
    for (char *line = copy; line; line = next) {
        /* Split by hand: strtok_r would merge blank lines and skew the line numbers. */
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        lineno++;
        char *l = trim(line);
        if (*l == '\0' || *l == '#')
            continue;
        if (strlen(l) > CONFIG_LINE_MAX) {
            (void) snprintf(err, errlen, "line %d: too long", lineno);
            return -EINVAL;
        }
        char *eq = strchr(l, '=');
        if (!eq) {
            (void) snprintf(err, errlen, "line %d: expected key = value", lineno);
            return -EINVAL;
        }
        *eq = '\0';
        char *key = trim(l), *val = trim(eq + 1);
        const struct opt *o = find_opt(key, strlen(key));
        if (!o) {
            (void) snprintf(err, errlen, "line %d: unknown key '%s'", lineno, key);
            return -EINVAL;
        }
        char sub[256];
        int r = apply(c, o, val, true, sub, sizeof(sub));
        if (r < 0) {
            (void) snprintf(err, errlen, "line %d: %s", lineno, sub);
            return r;
        }
    }
    return 0;
}

int config_load_file(struct guestd_config *c, const char *path, char *err, size_t errlen)
{
    _cleanup_fclose_ FILE *f = fopen(path, "re");
    if (!f) {
        (void) snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -errno;
    }
    _cleanup_free_ char *text = xmalloc(CONFIG_FILE_MAX + 1);
    size_t n = fread(text, 1, CONFIG_FILE_MAX + 1, f);
    if (n > CONFIG_FILE_MAX) {
        (void) snprintf(err, errlen, "%s: larger than %d bytes", path, CONFIG_FILE_MAX);
        return -EFBIG;
    }
    text[n] = '\0';
    if (strlen(text) != n) {
        (void) snprintf(err, errlen, "%s: contains a NUL byte", path);
        return -EINVAL;
    }
    char sub[512];
    int r = config_load_text(c, text, sub, sizeof(sub));
    if (r < 0)
        (void) snprintf(err, errlen, "%s: %s", path, sub);
    return r;
}

void config_default_listeners(struct guestd_config *c, bool pid1)
{
    uint16_t port = c->port ? c->port : CONFIG_DEFAULT_PORT;
    if (c->n_listen > 0) {
        /* envd's -port with explicit listeners moves every TCP listener to that port. */
        if (c->port)
            for (size_t i = 0; i < c->n_listen; i++)
                if (c->listen[i].transport == TRANSPORT_TCP)
                    c->listen[i].port = c->port;
        return;
    }
    /* vsock only as PID 1: a development machine may itself be a VM whose hypervisor would
     * otherwise reach guestd. */
    if (pid1) {
        struct net_addr *v = &c->listen[c->n_listen++];
        memset(v, 0, sizeof(*v));
        v->transport = TRANSPORT_VSOCK;
        v->vport = port;
    }
    struct net_addr *t = &c->listen[c->n_listen++];
    memset(t, 0, sizeof(*t));
    t->transport = TRANSPORT_TCP;
    strcpy(t->host, "0.0.0.0");
    t->port = port;
    struct net_addr *u = &c->listen[c->n_listen++];
    memset(u, 0, sizeof(*u));
    u->transport = TRANSPORT_UNIX;
    strcpy(u->path, CONFIG_DEFAULT_UNIX_SOCKET);
}

const char *config_usage(void)
{
    return "Usage: guestd [flags]\n"
           "\n"
           "guestd " GUESTD_VERSION
           " - the in-VM guest agent, wire-compatible with envd " ENVD_COMPAT_VERSION ".\n"
           "\n"
           "Flags (Go syntax: -flag, --flag, -flag=value, --flag value):\n"
           "  --listen ADDR            listen on tcp:HOST:PORT, unix:PATH or vsock:PORT; "
           "repeatable.\n"
           "                           Default: tcp:0.0.0.0:49983 and "
           "unix:" CONFIG_DEFAULT_UNIX_SOCKET ",\n"
           "                           plus vsock:49983 when running as PID 1.\n"
           "  --default-user NAME      user for requests that name none (default root)\n"
           "  --default-workdir DIR    working directory for requests that name none\n"
           "  --access-token-file F    read the access token from F (root-owned, mode 0600)\n"
           "  --require-token          answer only /health and /init until a token is set\n"
           "  --trust-host-vsock       vsock peers with the host CID need no token\n"
           "  --clock-sync MODE        auto (step the clock from /init only as PID 1), on, off\n"
           "  --run-dir DIR            where envd's marker files go (default /run/e2b)\n"
           "  --header-timeout-ms MS   time allowed for a request's headers (default 10000)\n"
           "  --idle-timeout-ms MS     idle keep-alive connections close after this (default "
           "640000)\n"
           "  --max-connections N      open connections at most (default 4096)\n"
           "  --output-log-cap BYTES   output kept per process (default 1 MiB)\n"
           "  --output-global-cap B    output kept for all processes (default 64 MiB)\n"
           "  --output-drain-ms MS     wait for output after a process exits (default 2000)\n"
           "  --result-ttl-ms MS       keep results of ended processes (default 300000)\n"
           "  --shutdown-grace-ms MS   SIGTERM to SIGKILL for children at shutdown (default 5000)\n"
           "  --final-action ACTION    as PID 1, after shutdown: poweroff (default), reboot, halt\n"
           "  --log-level LEVEL        error, warn, info (default), debug\n"
           "  --log-format FORMAT      text (default) or json\n"
           "  --config FILE            key = value file (default " CONFIG_DEFAULT_PATH ")\n"
           "  --version                print the envd-compatible version and exit\n"
           "  --help                   this text\n"
           "\n"
           "envd flags, accepted unchanged: -port N, -isnotfc, -verbose, -cgroup-root DIR,\n"
           "-no-cgroups, -version, -commit.\n";
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * guestd's entry point: configuration, process-wide setup, listeners, the event loop and an
 * orderly shutdown. Everything else lives in agentcore.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <uv.h>

#include "base/log.h"
#include "build-config.h"
#include "config.h"
#include "http/http.h"
#include "net/net.h"
#include "proc/proc.h"
#include "proc/reaper.h"
#include "rpc/fs.h"
#include "rpc/process.h"
#include "rpc/router.h"
#include "rpc/system.h"
#include "rpc/watch.h"
#include "sec/token.h"
#include "sys/pid1.h"
#include "sys/state.h"

struct guestd {
    uv_loop_t *loop;
    struct guestd_config cfg;
    struct agent_state state;
    struct router *router;
    struct http_server *http;
    struct proc_table *procs;
    struct net_listener *listeners[CONFIG_MAX_LISTENERS];
    size_t n_listeners;
    uv_signal_t sigterm, sigint;
    bool shutting_down;
};

static void on_connection(struct net_listener *l, uv_stream_t *server, enum transport transport,
                          void *userdata)
{
    struct guestd *g = userdata;
    (void) l;
    int r = http_server_accept(g->http, server, transport);
    if (r < 0 && r != -EMFILE)
        log_debug("accept on %s failed: %s", transport_name(transport), strerror(-r));
}

static void on_http_closed(void *userdata)
{
    struct guestd *g = userdata;
    uv_close((uv_handle_t *) &g->sigterm, NULL);
    uv_close((uv_handle_t *) &g->sigint, NULL);
    watch_service_shutdown();
    proc_table_free(g->procs);
    g->procs = NULL;
    process_service_init(NULL);
    reaper_stop();
}

/* Children are gone (or were killed after the grace period): end the connections. */
static void on_children_done(void *userdata)
{
    struct guestd *g = userdata;
    http_server_shutdown(g->http, on_http_closed, g);
}

/* Stops accepting, ends every stream with a reason, and lets the loop run dry. */
static void shutdown_begin(void *userdata, const char *reason)
{
    struct guestd *g = userdata;
    if (g->shutting_down)
        return;
    g->shutting_down = true;
    log_info("shutting down: %s", reason);
    for (size_t i = 0; i < g->n_listeners; i++)
        net_listener_close(g->listeners[i]);
    g->n_listeners = 0;
    system_announce_shutdown(reason);
    /* Order: stop accepting; SIGTERM the children (their streams end with their end events,
     * cause "shutdown"); SIGKILL what is left after the grace period; then close connections,
     * letting final frames drain. */
    proc_table_shutdown(g->procs,
                        g->cfg.shutdown_grace_ms ? g->cfg.shutdown_grace_ms
                                                 : CONFIG_DEFAULT_SHUTDOWN_GRACE_MS,
                        on_children_done, g);
}

static void on_signal(uv_signal_t *s, int signum)
{
    struct guestd *g = s->data;
    shutdown_begin(g, signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

static int setup_config(struct guestd *g, int argc, char **argv)
{
    char err[1024] = "";
    config_init(&g->cfg);
    if (config_find_path(&g->cfg, argc - 1, argv + 1, err, sizeof(err)) < 0)
        goto fail;
    int r = config_load_file(&g->cfg, g->cfg.config_path, err, sizeof(err));
    if (r < 0 && !(r == -ENOENT && !g->cfg.config_path_explicit))
        goto fail;
    if (config_parse_args(&g->cfg, argc - 1, argv + 1, err, sizeof(err)) < 0)
        goto fail;
    return 0;
fail:
    fprintf(stderr, "guestd: %s\n", err);
    return -EINVAL;
}

/* PID 1 after shutdown: end every remaining process (orphans included), bounded in time. */
static void pid1_end_all(uint64_t grace_ms)
{
    /* Reap in steps of this long while waiting for processes to go. */
    const useconds_t step_us = 50 * 1000;
    (void) pid1_kill_all(SIGTERM);
    for (uint64_t waited = 0;; waited += step_us / 1000) {
        while (waitpid(-1, NULL, WNOHANG) > 0)
            ;
        if (waitpid(-1, NULL, WNOHANG) < 0 && errno == ECHILD)
            return;
        if (waited >= grace_ms)
            break;
        (void) usleep(step_us);
    }
    (void) pid1_kill_all(SIGKILL);
    for (int i = 0; i < 40; i++) {
        if (waitpid(-1, NULL, WNOHANG) < 0 && errno == ECHILD)
            return;
        (void) usleep(step_us);
    }
}

static int start_listeners(struct guestd *g)
{
    for (size_t i = 0; i < g->cfg.n_listen; i++) {
        char name[NET_ADDR_MAX + 16];
        struct net_listener *l;
        net_addr_format(&g->cfg.listen[i], name, sizeof(name));
        int r = net_listen(g->loop, &g->cfg.listen[i], on_connection, g, &l);
        if (r < 0) {
            log_error("cannot listen on %s: %s", name, strerror(-r));
            /* PID 1 never exits on an error: it serves on the listeners it could open. */
            if (g->state.pid1)
                continue;
            return r;
        }
        net_addr_format(net_listener_addr(l), name, sizeof(name));
        log_info("listening on %s", name);
        g->listeners[g->n_listeners++] = l;
    }
    return 0;
}

int main(int argc, char **argv)
{
    static struct guestd g;
    int r;

    bool pid1 = pid1_is();
    if (setup_config(&g, argc, argv) < 0) {
        if (!pid1)
            return 2;
        /* As init, a bad argument must not panic the kernel: go on with the defaults. */
        config_done(&g.cfg);
        config_init(&g.cfg);
        fprintf(stderr, "guestd: going on with the defaults\n");
    }
    if (g.cfg.show_help) {
        fputs(config_usage(), stdout);
        return 0;
    }
    if (g.cfg.show_version) {
        /* Only the envd-compatible semver: template builders parse this line. */
        puts(ENVD_COMPAT_VERSION);
        return 0;
    }
    log_setup(g.cfg.log_level, g.cfg.log_format);
    /* As PID 1: mounts, console, hostname and network first. Outside PID 1 this refuses and
     * guestd becomes a subreaper instead (reaper_start). */
    if (pid1 && pid1_setup() == 0)
        log_info("running as PID 1");

    /* Children inherit a predictable file mode creation mask, as under envd. */
    umask(022);
    /* Nobody may read guestd's memory (the token lives there) through ptrace or core dumps. */
    (void) prctl(PR_SET_DUMPABLE, 0);
    (void) signal(SIGPIPE, SIG_IGN);
    r = token_init();
    if (r < 0)
        log_warn("cannot lock the token page in memory (%s); continuing unlocked", strerror(-r));

    state_init(&g.state);
    free(g.state.default_user);
    g.state.default_user = strdup(g.cfg.default_user);
    if (g.cfg.default_workdir && *g.cfg.default_workdir)
        g.state.default_workdir = strdup(g.cfg.default_workdir);
    free(g.state.run_dir);
    g.state.run_dir = strdup(g.cfg.run_dir);
    g.state.clock_sync = g.cfg.clock_sync;
    g.state.require_token = g.cfg.require_token;
    g.state.trust_host_vsock = g.cfg.trust_host_vsock;
    if (g.cfg.test_host_cid)
        g.state.host_cid = g.cfg.test_host_cid;
    if (g.cfg.isnotfc)
        kv_set(&g.state.env_internal, "E2B_SANDBOX", "false");
    g.state.request_shutdown = shutdown_begin;
    g.state.shutdown_data = &g;

    if (g.cfg.access_token_file) {
        r = token_load_file(g.cfg.access_token_file);
        if (r < 0) {
            log_error("cannot load the access token from %s: %s%s", g.cfg.access_token_file,
                      strerror(-r),
                      r == -EPERM ? " (the file must be owned by root and mode 0600 or stricter)"
                                  : "");
            return 1;
        }
    }
    r = state_write_run_files(&g.state);
    if (r < 0)
        log_warn("cannot write %s/.E2B_SANDBOX: %s", g.state.run_dir, strerror(-r));

    g.loop = uv_default_loop();
    if (router_new(&g.state, &g.router) < 0 ||
        http_server_new(g.loop, router_handle, g.router, &g.http) < 0) {
        log_error("out of memory");
        return 1;
    }
    http_server_set_limits(g.http, g.cfg.header_timeout_ms, g.cfg.idle_timeout_ms,
                           g.cfg.max_connections);
    router_add_methods(g.router, system_methods, system_methods_count);

    struct proc_limits plim = {
            .log_cap = g.cfg.output_log_cap ? g.cfg.output_log_cap : PROC_DEFAULT_LOG_CAP,
            .global_cap =
                    g.cfg.output_global_cap ? g.cfg.output_global_cap : PROC_DEFAULT_GLOBAL_CAP,
            .drain_ms = g.cfg.output_drain_ms ? g.cfg.output_drain_ms : PROC_DEFAULT_DRAIN_MS,
            .owner_stall_ms = PROC_DEFAULT_OWNER_STALL_MS,
            .result_ttl_ms = g.cfg.result_ttl_ms ? g.cfg.result_ttl_ms : PROC_DEFAULT_RESULT_TTL_MS,
            .max_results = PROC_DEFAULT_MAX_RESULTS,
            .max_processes = PROC_DEFAULT_MAX_PROCESSES,
    };
    if (plim.global_cap < plim.log_cap)
        plim.global_cap = plim.log_cap;
    r = reaper_start(g.loop);
    if (r < 0) {
        log_error("cannot start reaping children: %s", strerror(-r));
        return 1;
    }
    if (proc_table_new(g.loop, &plim, &g.procs) < 0) {
        log_error("out of memory");
        return 1;
    }
    process_service_init(g.procs);
    router_add_methods(g.router, process_methods, process_methods_count);
    router_add_methods(g.router, fs_methods, fs_methods_count);
    router_add_methods(g.router, watch_methods, watch_methods_count);

    config_default_listeners(&g.cfg, g.state.pid1);
    if (start_listeners(&g) < 0)
        return 1;

    (void) uv_signal_init(g.loop, &g.sigterm);
    (void) uv_signal_init(g.loop, &g.sigint);
    g.sigterm.data = g.sigint.data = &g;
    (void) uv_signal_start(&g.sigterm, on_signal, SIGTERM);
    (void) uv_signal_start(&g.sigint, on_signal, SIGINT);

    log_info("guestd %s ready (envd %s compatible, pid %d%s)", GUESTD_VERSION, ENVD_COMPAT_VERSION,
             (int) getpid(), g.state.pid1 ? ", PID 1" : "");
    (void) uv_run(g.loop, UV_RUN_DEFAULT);

    http_server_free(g.http);
    router_free(g.router);
    r = uv_loop_close(g.loop);
    if (r < 0)
        log_debug("event loop closed with handles left: %s", uv_strerror(r));
    enum pid1_action action = (enum pid1_action) g.cfg.final_action;
    uint64_t grace =
            g.cfg.shutdown_grace_ms ? g.cfg.shutdown_grace_ms : CONFIG_DEFAULT_SHUTDOWN_GRACE_MS;
    state_done(&g.state);
    config_done(&g.cfg);
    if (pid1) {
        enum pid1_action a = action;
        pid1_end_all(grace);
        log_info("stopped; final action: %s", pid1_action_name(a));
        r = pid1_final_action(a);
        log_error("final action %s failed: %s", pid1_action_name(a), strerror(-r));
        /* PID 1 must never exit: that would panic the kernel. */
        for (;;)
            (void) pause();
    }
    log_info("stopped");
    return 0;
}

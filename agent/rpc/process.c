/* SPDX-License-Identifier: Apache-2.0 */
/*
 * envd's process.Process service and guestd.v1.Process, on the process table.
 *
 * Streams (Start, Connect, Attach) are process subscribers that pull output from the log at
 * the client's pace: a pump sends chunks while the connection is not congested and resumes
 * when it drains. An envd subscriber that falls behind the log is cut with resource_exhausted
 * (it can reconnect); a guestd subscriber gets gap events with the bytes lost. The end event
 * always comes after all output, and a client leaving never stops the process.
 */
#include "rpc/process.h"

#include <errno.h>
#include <nettle/sha2.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <uv.h>

#include "agent-limits.h"
#include "base/alloc.h"
#include "base/buf.h"
#include "base/log.h"
#include "base/path.h"
#include "base/users.h"
#include "guestd/v1/process.pb-c.h"
#include "http/http.h"
#include "proc/proc.h"
#include "process/process.pb-c.h"
#include "rpc/pbjson.h"
#include "rpc/router.h"
#include "sys/state.h"

/* The PATH children get unless the request or /init says otherwise. */
#define PROCESS_DEFAULT_PATH  "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
/* envd puts every child at this OOM score so the kernel kills user code before guestd. */
#define PROCESS_OOM_SCORE_ADJ 100
/* Soft RLIMIT_NOFILE for children (select()-safe default, as systemd does). */
#define PROCESS_NOFILE_SOFT   1024
/* Client-minted exec ids and tags are bounded like any other client string. */
#define PROCESS_ID_MAX_BYTES  128
/* The header that makes envd's Start idempotent. */
#define EXEC_ID_HEADER        "guestd-exec-id"

static struct proc_table *procs;

void process_service_init(struct proc_table *table)
{
    procs = table;
}

/* --- stream subscribers ---------------------------------------------------------------------- */

enum sub_kind {
    SUB_ENVD_START = 0,
    SUB_ENVD_CONNECT,
    SUB_GUESTD,
};

struct stream {
    struct proc_sub sub;
    struct rpc_call *call;
    enum sub_kind kind;
    bool started;
    bool done;
    uint64_t sent[4]; /* per stream: the next stream offset the client expects */
    uint64_t generation;
};

static void stream_free(struct stream *s)
{
    proc_unsubscribe(&s->sub);
    free(s);
}

static void send_envd_event(struct stream *s, Process__ProcessEvent *ev)
{
    if (s->kind == SUB_ENVD_START) {
        Process__StartResponse r = PROCESS__START_RESPONSE__INIT;
        r.event = ev;
        (void) rpc_send(s->call, &r.base);
    } else {
        Process__ConnectResponse r = PROCESS__CONNECT_RESPONSE__INIT;
        r.event = ev;
        (void) rpc_send(s->call, &r.base);
    }
}

static Google__Protobuf__Timestamp *ts_of(Google__Protobuf__Timestamp *t, int64_t ns)
{
    google__protobuf__timestamp__init(t);
    t->seconds = ns / 1000000000;
    t->nanos = (int32_t) (ns % 1000000000);
    return t;
}

/* Fills a guestd Result from a process; `status` and `tail` are caller buffers. */
static void fill_result(const struct proc *p, Guestd__V1__Result *r, char *status, size_t slen,
                        char *tail, Google__Protobuf__Timestamp *t0,
                        Google__Protobuf__Timestamp *t1)
{
    const struct proc_result *res = proc_result(p);
    const struct outlog *log = proc_log(p);
    static const Guestd__V1__ExitCause causes[] = {
            [PROC_CAUSE_RUNNING] = GUESTD__V1__EXIT_CAUSE__EXIT_CAUSE_RUNNING,
            [PROC_CAUSE_EXITED] = GUESTD__V1__EXIT_CAUSE__EXIT_CAUSE_EXITED,
            [PROC_CAUSE_SIGNALED] = GUESTD__V1__EXIT_CAUSE__EXIT_CAUSE_SIGNALED,
            [PROC_CAUSE_SIGNALED_BY_CLIENT] = GUESTD__V1__EXIT_CAUSE__EXIT_CAUSE_SIGNALED_BY_CLIENT,
            [PROC_CAUSE_DEADLINE] = GUESTD__V1__EXIT_CAUSE__EXIT_CAUSE_DEADLINE,
            [PROC_CAUSE_SHUTDOWN] = GUESTD__V1__EXIT_CAUSE__EXIT_CAUSE_SHUTDOWN,
            [PROC_CAUSE_SPAWN_FAILED] = GUESTD__V1__EXIT_CAUSE__EXIT_CAUSE_SPAWN_FAILED,
            [PROC_CAUSE_OOM_KILLED] = GUESTD__V1__EXIT_CAUSE__EXIT_CAUSE_OOM_KILLED,
    };
    r->pid = res->pid > 0 ? (uint32_t) res->pid : 0;
    r->exec_id = (char *) (proc_exec_id(p) ? proc_exec_id(p) : "");
    r->cause = proc_has_ended(p) ? causes[res->cause] : GUESTD__V1__EXIT_CAUSE__EXIT_CAUSE_RUNNING;
    r->exit_code = res->exit_code;
    r->signal = (uint32_t) res->signal;
    proc_status_string(res, status, slen);
    r->status = status;
    if (res->cause == PROC_CAUSE_SPAWN_FAILED) {
        r->spawn_step = (char *) spawn_step_name(res->spawn_step);
        r->spawn_errno = res->spawn_errno;
    }
    r->output_cut = res->output_cut;
    r->started_at = ts_of(t0, res->started_ns);
    if (proc_has_ended(p))
        r->ended_at = ts_of(t1, res->ended_ns);
    r->stdout_bytes = outlog_stream_total(log, OUT_STDOUT);
    r->stderr_bytes = outlog_stream_total(log, OUT_STDERR);
    r->pty_bytes = outlog_stream_total(log, OUT_PTY);
    r->tail.len = outlog_tail(log, tail, OUTLOG_TAIL_BYTES);
    r->tail.data = (uint8_t *) tail;
}

static void send_end(struct stream *s)
{
    struct proc *p = s->sub.proc;
    const struct proc_result *res = proc_result(p);
    char status[96];
    if (s->kind != SUB_GUESTD) {
        Process__ProcessEvent ev = PROCESS__PROCESS_EVENT__INIT;
        Process__ProcessEvent__EndEvent end = PROCESS__PROCESS_EVENT__END_EVENT__INIT;
        proc_status_string(res, status, sizeof(status));
        end.exit_code = res->exit_code;
        end.exited = res->exited;
        end.status = status;
        /* envd's error is Go's Wait error: the same text, absent on success. */
        if (!(res->exited && res->exit_code == 0)) {
            end._error_case = PROCESS__PROCESS_EVENT__END_EVENT___ERROR_ERROR;
            end.error = status;
        }
        ev.event_case = PROCESS__PROCESS_EVENT__EVENT_END;
        ev.end = &end;
        send_envd_event(s, &ev);
        return;
    }
    Guestd__V1__ProcessEvent ev = GUESTD__V1__PROCESS_EVENT__INIT;
    Guestd__V1__Result r = GUESTD__V1__RESULT__INIT;
    Google__Protobuf__Timestamp t0, t1;
    char tail[OUTLOG_TAIL_BYTES];
    fill_result(p, &r, status, sizeof(status), tail, &t0, &t1);
    ev.event_case = GUESTD__V1__PROCESS_EVENT__EVENT_END;
    ev.end = &r;
    ev.generation = s->generation;
    (void) rpc_send(s->call, &ev.base);
}

static Guestd__V1__Stream wire_stream(enum out_stream st)
{
    switch (st) {
    case OUT_STDOUT:
        return GUESTD__V1__STREAM__STREAM_STDOUT;
    case OUT_STDERR:
        return GUESTD__V1__STREAM__STREAM_STDERR;
    case OUT_PTY:
        return GUESTD__V1__STREAM__STREAM_PTY;
    }
    return GUESTD__V1__STREAM__STREAM_UNSPECIFIED;
}

static void send_gap(struct stream *s, enum out_stream st, uint64_t lost)
{
    Guestd__V1__ProcessEvent ev = GUESTD__V1__PROCESS_EVENT__INIT;
    Guestd__V1__ProcessEvent__Gap gap = GUESTD__V1__PROCESS_EVENT__GAP__INIT;
    gap.stream = wire_stream(st);
    gap.offset = s->sent[st];
    gap.lost = lost;
    ev.event_case = GUESTD__V1__PROCESS_EVENT__EVENT_GAP;
    ev.gap = &gap;
    ev.generation = s->generation;
    (void) rpc_send(s->call, &ev.base);
    s->sent[st] += lost;
}

static void send_data(struct stream *s, const struct outlog_chunk *ch, const char *data, size_t len,
                      uint64_t stream_off)
{
    if (s->kind != SUB_GUESTD) {
        Process__ProcessEvent ev = PROCESS__PROCESS_EVENT__INIT;
        Process__ProcessEvent__DataEvent d = PROCESS__PROCESS_EVENT__DATA_EVENT__INIT;
        ProtobufCBinaryData bytes = {len, (uint8_t *) data};
        switch (ch->stream) {
        case OUT_STDOUT:
            d.output_case = PROCESS__PROCESS_EVENT__DATA_EVENT__OUTPUT_STDOUT;
            d.stdout = bytes;
            break;
        case OUT_STDERR:
            d.output_case = PROCESS__PROCESS_EVENT__DATA_EVENT__OUTPUT_STDERR;
            d.stderr = bytes;
            break;
        case OUT_PTY:
            d.output_case = PROCESS__PROCESS_EVENT__DATA_EVENT__OUTPUT_PTY;
            d.pty = bytes;
            break;
        }
        ev.event_case = PROCESS__PROCESS_EVENT__EVENT_DATA;
        ev.data = &d;
        send_envd_event(s, &ev);
        return;
    }
    Guestd__V1__ProcessEvent ev = GUESTD__V1__PROCESS_EVENT__INIT;
    Guestd__V1__ProcessEvent__Data d = GUESTD__V1__PROCESS_EVENT__DATA__INIT;
    d.stream = wire_stream(ch->stream);
    d.offset = stream_off;
    d.data.len = len;
    d.data.data = (uint8_t *) data;
    ev.event_case = GUESTD__V1__PROCESS_EVENT__EVENT_DATA;
    ev.data = &d;
    ev.generation = s->generation;
    (void) rpc_send(s->call, &ev.base);
}

/* Ends the call and forgets the subscriber. */
static void stream_finish(struct stream *s, enum rpc_code code, const char *msg)
{
    struct rpc_call *call = s->call;
    s->done = true;
    rpc_call_set_data(call, NULL);
    stream_free(s);
    if (code == RPC_OK)
        rpc_end(call, RPC_OK, NULL);
    else
        rpc_end(call, code, "%s", msg);
}

/* Sends what the client has not seen yet, as far as its connection takes it. */
static void pump(struct stream *s)
{
    struct proc *p = s->sub.proc;
    const struct outlog *log = proc_log(p);
    while (!s->done && !rpc_call_congested(s->call)) {
        struct outlog_chunk ch;
        if (!outlog_read(log, s->sub.cursor, &ch)) {
            if (!proc_has_ended(p))
                return; /* woken again when there is more */
            if (s->kind == SUB_GUESTD)
                for (enum out_stream st = OUT_STDOUT; st <= OUT_PTY; st++) {
                    uint64_t total = outlog_stream_total(log, st);
                    if (total > s->sent[st])
                        send_gap(s, st, total - s->sent[st]);
                }
            send_end(s);
            stream_finish(s, RPC_OK, NULL);
            return;
        }
        uint64_t stream_off = ch.stream_off;
        const char *data = ch.data;
        size_t len = ch.len;
        /* Bytes of this stream the client already has (attach from an offset). */
        if (stream_off + len <= s->sent[ch.stream]) {
            s->sub.cursor = ch.log_off + ch.len;
            continue;
        }
        if (stream_off < s->sent[ch.stream]) {
            size_t skip = (size_t) (s->sent[ch.stream] - stream_off);
            data += skip;
            len -= skip;
            stream_off += skip;
        }
        if (stream_off > s->sent[ch.stream]) {
            uint64_t lost = stream_off - s->sent[ch.stream];
            if (s->kind != SUB_GUESTD) {
                char msg[160];
                (void) snprintf(msg, sizeof(msg),
                                "slow consumer: %llu bytes of output were dropped before they "
                                "could be sent; reconnect",
                                (unsigned long long) lost);
                stream_finish(s, RPC_RESOURCE_EXHAUSTED, msg);
                return;
            }
            send_gap(s, ch.stream, lost);
        }
        send_data(s, &ch, data, len, stream_off);
        s->sent[ch.stream] = stream_off + len;
        s->sub.cursor = ch.log_off + ch.len;
        proc_sub_advanced(&s->sub);
    }
}

static void on_wake(struct proc_sub *sub)
{
    pump(container_of(sub, struct stream, sub));
}

static void stream_on_drain(struct rpc_call *call)
{
    struct stream *s = rpc_call_data(call);
    if (s)
        pump(s);
}

/* The client left, or the deadline passed. A Start deadline kills the process, as envd. */
static void stream_on_cancel(struct rpc_call *call, enum rpc_code why)
{
    struct stream *s = rpc_call_data(call);
    if (!s)
        return;
    rpc_call_set_data(call, NULL);
    if (why == RPC_DEADLINE_EXCEEDED && s->sub.owner && s->sub.proc && !proc_has_ended(s->sub.proc))
        (void) proc_signal(s->sub.proc, SIGKILL, true, PROC_CAUSE_DEADLINE);
    stream_free(s);
}

/* Starts streaming process `p` on `call` from `from` (a log offset). Sends the start event. */
static void stream_begin(struct rpc_call *call, struct proc *p, enum sub_kind kind, bool owner,
                         uint64_t from, const uint64_t *sent)
{
    struct rpc_ctx *ctx = rpc_call_ctx(call);
    struct stream *s = xcalloc(1, sizeof(*s));
    s->call = call;
    s->kind = kind;
    s->sub.owner = owner;
    s->sub.wake = on_wake;
    s->generation = ctx->state->generation;
    if (sent)
        memcpy(s->sent, sent, sizeof(s->sent));
    proc_subscribe(p, &s->sub, from);
    rpc_call_set_data(call, s);
    /* The first event is always start (the SDK errors "Expected start event" otherwise). */
    if (kind != SUB_GUESTD) {
        Process__ProcessEvent ev = PROCESS__PROCESS_EVENT__INIT;
        Process__ProcessEvent__StartEvent st = PROCESS__PROCESS_EVENT__START_EVENT__INIT;
        st.pid = (uint32_t) proc_pid(p);
        ev.event_case = PROCESS__PROCESS_EVENT__EVENT_START;
        ev.start = &st;
        send_envd_event(s, &ev);
    } else {
        Guestd__V1__ProcessEvent ev = GUESTD__V1__PROCESS_EVENT__INIT;
        Guestd__V1__ProcessEvent__Started st = GUESTD__V1__PROCESS_EVENT__STARTED__INIT;
        st.pid = proc_pid(p) > 0 ? (uint32_t) proc_pid(p) : 0;
        st.exec_id = (char *) (proc_exec_id(p) ? proc_exec_id(p) : "");
        ev.event_case = GUESTD__V1__PROCESS_EVENT__EVENT_START;
        ev.start = &st;
        ev.generation = s->generation;
        (void) rpc_send(call, &ev.base);
    }
    pump(s);
}

/* --- starting -------------------------------------------------------------------------------- */

/* The original request config, kept (packed) for List. */
struct saved_config {
    size_t len;
    uint8_t data[];
};

static void saved_config_free(void *p)
{
    free(p);
}

static struct saved_config *save_config(const Process__ProcessConfig *cfg)
{
    size_t n = protobuf_c_message_get_packed_size(&cfg->base);
    struct saved_config *c = xmalloc(sizeof(*c) + n);
    c->len = protobuf_c_message_pack(&cfg->base, c->data);
    return c;
}

/* Identifies a command for exec-id retries: a digest of the request's config, PTY and tag. */
static void fingerprint(const Process__StartRequest *req, char out[65])
{
    static const char hex[] = "0123456789abcdef";
    struct sha256_ctx ctx;
    uint8_t d[SHA256_DIGEST_SIZE];
    Process__StartRequest copy = *req;
    size_t n = protobuf_c_message_get_packed_size(&copy.base);
    uint8_t *buf = xmalloc(n ? n : 1);
    n = protobuf_c_message_pack(&copy.base, buf);
    sha256_init(&ctx);
    sha256_update(&ctx, n, buf);
    sha256_digest(&ctx, sizeof(d), d);
    free(buf);
    for (size_t i = 0; i < sizeof(d); i++) {
        out[2 * i] = hex[d[i] >> 4];
        out[2 * i + 1] = hex[d[i] & 15];
    }
    out[64] = '\0';
}

struct env_builder {
    char **items;
    size_t n, cap;
};

/* Sets NAME=VALUE, replacing an earlier NAME (later sources win). */
static void env_set(struct env_builder *e, const char *name, const char *value)
{
    size_t nlen = strlen(name);
    char *item = xmalloc(nlen + strlen(value) + 2);
    memcpy(item, name, nlen);
    item[nlen] = '=';
    strcpy(item + nlen + 1, value);
    for (size_t i = 0; i < e->n; i++)
        if (strncmp(e->items[i], name, nlen) == 0 && e->items[i][nlen] == '=') {
            free(e->items[i]);
            e->items[i] = item;
            return;
        }
    if (e->n + 2 > e->cap) {
        e->cap = e->cap ? e->cap * 2 : 32;
        e->items = xrealloc(e->items, e->cap * sizeof(char *));
    }
    e->items[e->n++] = item;
    e->items[e->n] = NULL;
}

static const char *env_get(const struct env_builder *e, const char *name)
{
    size_t nlen = strlen(name);
    for (size_t i = 0; i < e->n; i++)
        if (strncmp(e->items[i], name, nlen) == 0 && e->items[i][nlen] == '=')
            return e->items[i] + nlen + 1;
    return NULL;
}

static void env_free(struct env_builder *e)
{
    for (size_t i = 0; i < e->n; i++)
        free(e->items[i]);
    free(e->items);
}

struct start_params {
    const Process__StartRequest *req;
    const char *exec_id;
    enum proc_policy policy;
    enum sub_kind kind;
};

/* Resolves the working directory: the request's, else the default workdir, else home. */
static int resolve_cwd(struct rpc_ctx *ctx, const Process__ProcessConfig *cfg, char **ret,
                       char *err, size_t errlen)
{
    const char *want = NULL;
    if (cfg->_cwd_case == PROCESS__PROCESS_CONFIG___CWD_CWD && *cfg->cwd)
        want = cfg->cwd;
    else if (ctx->state->default_workdir)
        want = ctx->state->default_workdir;
    if (!want) {
        *ret = xstrdup(ctx->user.home);
        return 0;
    }
    int r = path_expand(want, ctx->user.home, ret);
    if (r < 0) {
        (void) snprintf(err, errlen,
                        r == -EINVAL ? "cannot expand user-specific home dir in '%s'"
                                     : "invalid cwd '%s'",
                        want);
        return r;
    }
    struct stat st;
    if (stat(*ret, &st) < 0 || !S_ISDIR(st.st_mode)) {
        (void) snprintf(err, errlen, "cwd '%s' does not exist", *ret);
        free(*ret);
        *ret = NULL;
        return -ENOENT;
    }
    return 0;
}

static void start_process(struct rpc_call *call, const struct start_params *sp)
{
    struct rpc_ctx *ctx = rpc_call_ctx(call);
    const Process__StartRequest *req = sp->req;
    const Process__ProcessConfig *cfg = req->process;
    struct env_builder env = {0};
    char *cwd = NULL;
    char **candidates = NULL;
    gid_t groups[USERS_MAX_GROUPS];
    char err[PATH_MAX_BYTES + 128];
    char fp[65];

    if (!procs) {
        rpc_fail(call, RPC_UNAVAILABLE, "the process service is not running");
        return;
    }
    if (!cfg || !*cfg->cmd) {
        rpc_fail(call, RPC_INVALID_ARGUMENT, "process.cmd is required");
        return;
    }
    const char *tag = req->_tag_case == PROCESS__START_REQUEST___TAG_TAG ? req->tag : NULL;
    if ((tag && strlen(tag) > PROCESS_ID_MAX_BYTES) ||
        (sp->exec_id && strlen(sp->exec_id) > PROCESS_ID_MAX_BYTES)) {
        rpc_fail(call, RPC_INVALID_ARGUMENT, "tag and exec id are limited to %d bytes",
                 PROCESS_ID_MAX_BYTES);
        return;
    }
    fingerprint(req, fp);

    /* Idempotent start: a retry with the same exec id attaches instead of running again. */
    if (sp->exec_id && *sp->exec_id) {
        struct proc *old = proc_find_exec_id(procs, sp->exec_id);
        if (old) {
            if (!proc_fingerprint(old) || strcmp(proc_fingerprint(old), fp) != 0) {
                proc_unref(old);
                rpc_fail(call, RPC_FAILED_PRECONDITION,
                         "exec id '%s' was already used for a different command", sp->exec_id);
                return;
            }
            if (proc_result(old)->cause == PROC_CAUSE_SPAWN_FAILED && sp->kind != SUB_GUESTD) {
                const struct proc_result *r = proc_result(old);
                rpc_fail(call, RPC_INVALID_ARGUMENT, "failed to start process: %s: %s",
                         spawn_step_name(r->spawn_step), strerror(r->spawn_errno));
                proc_unref(old);
                return;
            }
            stream_begin(call, old, sp->kind, false, outlog_start(proc_log(old)), NULL);
            proc_unref(old);
            return;
        }
    }

    int r = resolve_cwd(ctx, cfg, &cwd, err, sizeof(err));
    if (r < 0) {
        rpc_fail(call, RPC_INVALID_ARGUMENT, "%s", err);
        return;
    }

    /* Environment, later sources winning: defaults for the user, /init's envVars, guestd's
     * own (E2B_SANDBOX…), then the request's envs. */
    env_set(&env, "PATH", PROCESS_DEFAULT_PATH);
    env_set(&env, "HOME", ctx->user.home);
    env_set(&env, "USER", ctx->user.name);
    env_set(&env, "LOGNAME", ctx->user.name);
    env_set(&env, "SHELL", ctx->user.shell);
    for (size_t i = 0; i < ctx->state->env_user.n; i++)
        env_set(&env, ctx->state->env_user.items[i].key, ctx->state->env_user.items[i].value);
    for (size_t i = 0; i < ctx->state->env_internal.n; i++)
        env_set(&env, ctx->state->env_internal.items[i].key,
                ctx->state->env_internal.items[i].value);
    for (size_t i = 0; i < cfg->n_envs; i++) {
        const char *k = cfg->envs[i]->key;
        if (!*k || strchr(k, '=')) {
            rpc_fail(call, RPC_INVALID_ARGUMENT, "invalid environment variable name '%s'", k);
            goto out;
        }
        env_set(&env, k, cfg->envs[i]->value);
    }

    int n_cand = spawn_candidates(cfg->cmd, env_get(&env, "PATH"), &candidates);
    if (n_cand < 0) {
        rpc_fail(call, RPC_INVALID_ARGUMENT, "invalid command '%s'", cfg->cmd);
        goto out;
    }
    int n_groups = users_groups(ctx->user.name, ctx->user.gid, groups, USERS_MAX_GROUPS);
    if (n_groups < 0) {
        rpc_fail(call, RPC_INTERNAL, "cannot read the groups of '%s': %s", ctx->user.name,
                 strerror(-n_groups));
        goto out;
    }
    char **argv = xcalloc(cfg->n_args + 2, sizeof(char *));
    argv[0] = cfg->cmd;
    for (size_t i = 0; i < cfg->n_args; i++)
        argv[i + 1] = cfg->args[i];

    struct proc_spec spec = {
            .plan =
                    {
                            .candidates = candidates,
                            .n_candidates = (size_t) n_cand,
                            .argv = argv,
                            .envp = env.items,
                            .change_ids = geteuid() == 0,
                            .uid = ctx->user.uid,
                            .gid = ctx->user.gid,
                            .groups = groups,
                            .n_groups = (size_t) n_groups,
                            .cwd = cwd,
                            .oom_score_adj =
                                    geteuid() == 0 ? PROCESS_OOM_SCORE_ADJ : SPAWN_NO_OOM_SCORE,
                            .nofile_soft = PROCESS_NOFILE_SOFT,
                            .umask = 022,
                    },
            .pty = req->_pty_case == PROCESS__START_REQUEST___PTY_PTY && req->pty,
            .stdin_pipe = req->_stdin_case != PROCESS__START_REQUEST___STDIN_STDIN || req->stdin,
            .tag = tag,
            .exec_id = sp->exec_id,
            .fingerprint = fp,
            .policy = sp->policy,
            .config = save_config(cfg),
            .config_free = saved_config_free,
    };
    if (spec.pty && req->pty->size) {
        spec.cols = (unsigned short) MIN(req->pty->size->cols, 65535u);
        spec.rows = (unsigned short) MIN(req->pty->size->rows, 65535u);
    }
    struct proc *p = NULL;
    struct spawn_error serr = {SPAWN_STEP_NONE, 0};
    r = proc_start(procs, &spec, &p, &serr);
    free(argv);
    if (r < 0) {
        if (p && sp->kind == SUB_GUESTD) {
            /* A typed failure: the client gets start (no pid) and the result. */
            stream_begin(call, p, sp->kind, false, 0, NULL);
            proc_unref(p);
            goto out;
        }
        proc_unref(p);
        if (r == -EAGAIN)
            rpc_fail(call, RPC_RESOURCE_EXHAUSTED, "too many processes");
        else if (r == -ESHUTDOWN)
            rpc_fail(call, RPC_UNAVAILABLE, "guestd is shutting down");
        else
            rpc_fail(call, RPC_INVALID_ARGUMENT, "failed to start process '%s': %s: %s", cfg->cmd,
                     spawn_step_name(serr.step), strerror(serr.err));
        goto out;
    }
    log_debug("started process %d (%s) for %s", (int) proc_pid(p), cfg->cmd, ctx->user.name);
    /* Connect-Timeout-Ms on a start kills the process at the deadline even if the client has
     * gone by then (envd); the stream itself ends with deadline_exceeded. */
    if (rpc_call_has_deadline(call)) {
        uint64_t now = uv_now(http_req_loop(rpc_call_http(call)));
        uint64_t due = rpc_call_deadline(call);
        proc_set_deadline(p, due > now ? due - now : 0);
    }
    stream_begin(call, p, sp->kind, true, 0, NULL);
    proc_unref(p);
out:
    spawn_candidates_free(candidates);
    env_free(&env);
    free(cwd);
}

/* --- process.Process ------------------------------------------------------------------------- */

static struct proc *find_selected(const Process__ProcessSelector *sel, bool include_ended,
                                  char *err, size_t errlen, enum rpc_code *code)
{
    struct proc *p = NULL;
    *code = RPC_NOT_FOUND;
    if (!sel || sel->selector_case == PROCESS__PROCESS_SELECTOR__SELECTOR__NOT_SET) {
        *code = RPC_UNIMPLEMENTED;
        (void) snprintf(err, errlen, "invalid input type");
        return NULL;
    }
    if (!procs) {
        *code = RPC_UNAVAILABLE;
        (void) snprintf(err, errlen, "the process service is not running");
        return NULL;
    }
    if (sel->selector_case == PROCESS__PROCESS_SELECTOR__SELECTOR_PID) {
        p = proc_find_pid(procs, (pid_t) sel->pid, include_ended);
        if (!p)
            (void) snprintf(err, errlen, "process with pid %u not found", sel->pid);
    } else {
        p = proc_find_tag(procs, sel->tag, include_ended);
        if (!p)
            (void) snprintf(err, errlen, "process with tag %s not found", sel->tag);
    }
    return p;
}

static const Process__ProcessEvent__KeepAlive ka_envd = PROCESS__PROCESS_EVENT__KEEP_ALIVE__INIT;
static const Process__ProcessEvent ka_envd_event = {
        PROTOBUF_C_MESSAGE_INIT(&process__process_event__descriptor),
        PROCESS__PROCESS_EVENT__EVENT_KEEPALIVE,
        {.keepalive = (Process__ProcessEvent__KeepAlive *) &ka_envd},
};
static const Process__StartResponse ka_start = {
        PROTOBUF_C_MESSAGE_INIT(&process__start_response__descriptor),
        (Process__ProcessEvent *) &ka_envd_event,
};
static const Process__ConnectResponse ka_connect = {
        PROTOBUF_C_MESSAGE_INIT(&process__connect_response__descriptor),
        (Process__ProcessEvent *) &ka_envd_event,
};
static const Guestd__V1__ProcessEvent__KeepAlive ka_guestd_inner =
        GUESTD__V1__PROCESS_EVENT__KEEP_ALIVE__INIT;
static const Guestd__V1__ProcessEvent ka_guestd = {
        .base = PROTOBUF_C_MESSAGE_INIT(&guestd__v1__process_event__descriptor),
        .event_case = GUESTD__V1__PROCESS_EVENT__EVENT_KEEPALIVE,
        .keepalive = (Guestd__V1__ProcessEvent__KeepAlive *) &ka_guestd_inner,
};

static void envd_start(struct rpc_call *call, const ProtobufCMessage *in)
{
    const struct http_req *http = rpc_call_http(call);
    const char *exec_id = http ? http_req_header(http, EXEC_ID_HEADER) : NULL;
    struct start_params sp = {
            .req = (const Process__StartRequest *) in,
            .exec_id = exec_id && *exec_id ? exec_id : NULL,
            .policy = PROC_POLICY_OWNER_PACED,
            .kind = SUB_ENVD_START,
    };
    start_process(call, &sp);
}

static void envd_connect(struct rpc_call *call, const ProtobufCMessage *in)
{
    const Process__ConnectRequest *req = (const Process__ConnectRequest *) in;
    char err[256];
    enum rpc_code code;
    struct proc *p = find_selected(req->process, true, err, sizeof(err), &code);
    if (!p) {
        rpc_fail(call, code, "%s", err);
        return;
    }
    /* envd never replays: a Connect sees output from now on (guestd.v1 Attach replays). */
    const struct outlog *log = proc_log(p);
    uint64_t sent[4] = {0, outlog_stream_total(log, OUT_STDOUT),
                        outlog_stream_total(log, OUT_STDERR), outlog_stream_total(log, OUT_PTY)};
    stream_begin(call, p, SUB_ENVD_CONNECT, false, outlog_end(log), sent);
    proc_unref(p);
}

struct list_ctx {
    Process__ListResponse *resp;
    size_t cap;
};

static void list_one(struct proc *p, void *data)
{
    struct list_ctx *lc = data;
    const struct saved_config *sc = proc_config(p);
    Process__ProcessInfo *info = xmalloc(sizeof(*info));
    process__process_info__init(info);
    info->pid = (uint32_t) proc_pid(p);
    if (proc_tag(p)) {
        info->_tag_case = PROCESS__PROCESS_INFO___TAG_TAG;
        info->tag = (char *) proc_tag(p);
    }
    if (sc)
        info->config = process__process_config__unpack(NULL, sc->len, sc->data);
    if (lc->resp->n_processes == lc->cap) {
        lc->cap = lc->cap ? lc->cap * 2 : 16;
        lc->resp->processes = xrealloc(lc->resp->processes, lc->cap * sizeof(info));
    }
    lc->resp->processes[lc->resp->n_processes++] = info;
}

static void envd_list(struct rpc_call *call, const ProtobufCMessage *in)
{
    Process__ListResponse resp = PROCESS__LIST_RESPONSE__INIT;
    struct list_ctx lc = {&resp, 0};
    (void) in;
    if (procs)
        proc_table_foreach_live(procs, list_one, &lc);
    (void) rpc_reply(call, &resp.base);
    for (size_t i = 0; i < resp.n_processes; i++) {
        if (resp.processes[i]->config)
            protobuf_c_message_free_unpacked(&resp.processes[i]->config->base, NULL);
        free(resp.processes[i]);
    }
    free(resp.processes);
}

static void envd_send_input(struct rpc_call *call, const ProtobufCMessage *in)
{
    const Process__SendInputRequest *req = (const Process__SendInputRequest *) in;
    Process__SendInputResponse resp = PROCESS__SEND_INPUT_RESPONSE__INIT;
    char err[256];
    enum rpc_code code;
    struct proc *p = find_selected(req->process, false, err, sizeof(err), &code);
    if (!p) {
        rpc_fail(call, code, "%s", err);
        return;
    }
    int r = 0;
    if (!req->input || req->input->input_case == PROCESS__PROCESS_INPUT__INPUT__NOT_SET) {
        rpc_fail(call, RPC_UNIMPLEMENTED, "invalid input type");
        goto out;
    }
    bool want_pty = req->input->input_case == PROCESS__PROCESS_INPUT__INPUT_PTY;
    if (want_pty != proc_is_pty(p)) {
        rpc_fail(call, RPC_INTERNAL,
                 want_pty ? "process %d has no PTY: send stdin input"
                          : "process %d has a PTY: send pty input",
                 (int) proc_pid(p));
        goto out;
    }
    const ProtobufCBinaryData *d = want_pty ? &req->input->pty : &req->input->stdin;
    r = proc_write_input(p, d->data, d->len);
    if (r == -EPIPE)
        rpc_fail(call, RPC_INTERNAL, "stdin not enabled or closed");
    else if (r < 0)
        rpc_fail(call, RPC_INTERNAL, "writing input failed: %s", strerror(-r));
    else
        (void) rpc_reply(call, &resp.base);
out:
    proc_unref(p);
}

static void envd_send_signal(struct rpc_call *call, const ProtobufCMessage *in)
{
    const Process__SendSignalRequest *req = (const Process__SendSignalRequest *) in;
    Process__SendSignalResponse resp = PROCESS__SEND_SIGNAL_RESPONSE__INIT;
    char err[256];
    enum rpc_code code;
    int sig;
    if (req->signal == PROCESS__SIGNAL__SIGNAL_SIGKILL)
        sig = SIGKILL;
    else if (req->signal == PROCESS__SIGNAL__SIGNAL_SIGTERM)
        sig = SIGTERM;
    else {
        rpc_fail(call, RPC_UNIMPLEMENTED, "invalid signal");
        return;
    }
    struct proc *p = find_selected(req->process, false, err, sizeof(err), &code);
    if (!p) {
        rpc_fail(call, code, "%s", err);
        return;
    }
    /* envd signals the process itself (not its group). */
    int r = proc_signal(p, sig, false, PROC_CAUSE_SIGNALED_BY_CLIENT);
    if (r < 0 && r != -ESRCH)
        rpc_fail(call, RPC_INTERNAL, "error sending signal: %s", strerror(-r));
    else
        (void) rpc_reply(call, &resp.base);
    proc_unref(p);
}

static void envd_update(struct rpc_call *call, const ProtobufCMessage *in)
{
    const Process__UpdateRequest *req = (const Process__UpdateRequest *) in;
    Process__UpdateResponse resp = PROCESS__UPDATE_RESPONSE__INIT;
    char err[256];
    enum rpc_code code;
    struct proc *p = find_selected(req->process, false, err, sizeof(err), &code);
    if (!p) {
        rpc_fail(call, code, "%s", err);
        return;
    }
    if (req->_pty_case == PROCESS__UPDATE_REQUEST___PTY_PTY && req->pty) {
        if (!proc_is_pty(p)) {
            rpc_fail(call, RPC_INTERNAL, "tty not assigned to process");
            proc_unref(p);
            return;
        }
        unsigned cols = req->pty->size ? req->pty->size->cols : 0;
        unsigned rows = req->pty->size ? req->pty->size->rows : 0;
        int r = proc_resize(p, (unsigned short) MIN(cols, 65535u),
                            (unsigned short) MIN(rows, 65535u));
        if (r < 0) {
            rpc_fail(call, RPC_INTERNAL, "error resizing tty: %s", strerror(-r));
            proc_unref(p);
            return;
        }
    }
    (void) rpc_reply(call, &resp.base);
    proc_unref(p);
}

static void envd_close_stdin(struct rpc_call *call, const ProtobufCMessage *in)
{
    const Process__CloseStdinRequest *req = (const Process__CloseStdinRequest *) in;
    Process__CloseStdinResponse resp = PROCESS__CLOSE_STDIN_RESPONSE__INIT;
    char err[256];
    enum rpc_code code;
    struct proc *p = find_selected(req->process, false, err, sizeof(err), &code);
    if (!p) {
        rpc_fail(call, code, "%s", err);
        return;
    }
    if (proc_close_stdin(p) == -ENOTTY)
        rpc_fail(call, RPC_UNKNOWN,
                 "cannot close stdin for PTY process \xe2\x80\x94 send Ctrl+D (0x04) instead");
    else
        (void) rpc_reply(call, &resp.base);
    proc_unref(p);
}

/* StreamInput: the process is chosen by the first message; input follows in order. */
struct input_stream {
    struct proc *p;
    bool failed;
};

static void input_fail(struct rpc_call *call, struct input_stream *is, enum rpc_code code,
                       const char *msg)
{
    is->failed = true;
    rpc_call_set_data(call, NULL);
    proc_unref(is->p);
    free(is);
    rpc_end(call, code, "%s", msg);
}

static void stream_input_message(struct rpc_call *call, const ProtobufCMessage *msg)
{
    const Process__StreamInputRequest *req = (const Process__StreamInputRequest *) msg;
    struct input_stream *is = rpc_call_data(call);
    char err[256];
    enum rpc_code code;
    if (!is) {
        is = xcalloc(1, sizeof(*is));
        rpc_call_set_data(call, is);
    }
    switch (req->event_case) {
    case PROCESS__STREAM_INPUT_REQUEST__EVENT_START:
        if (is->p) {
            input_fail(call, is, RPC_FAILED_PRECONDITION, "the stream was already started");
            return;
        }
        is->p = find_selected(req->start ? req->start->process : NULL, false, err, sizeof(err),
                              &code);
        if (!is->p)
            input_fail(call, is, code, err);
        return;
    case PROCESS__STREAM_INPUT_REQUEST__EVENT_DATA: {
        if (!is->p) {
            input_fail(call, is, RPC_FAILED_PRECONDITION,
                       "input before the start message that names the process");
            return;
        }
        const Process__ProcessInput *input = req->data ? req->data->input : NULL;
        if (!input || input->input_case == PROCESS__PROCESS_INPUT__INPUT__NOT_SET) {
            input_fail(call, is, RPC_UNIMPLEMENTED, "invalid input type");
            return;
        }
        bool want_pty = input->input_case == PROCESS__PROCESS_INPUT__INPUT_PTY;
        if (want_pty != proc_is_pty(is->p)) {
            input_fail(call, is, RPC_INTERNAL,
                       want_pty ? "process has no PTY: send stdin input"
                                : "process has a PTY: send pty input");
            return;
        }
        const ProtobufCBinaryData *d = want_pty ? &input->pty : &input->stdin;
        int r = proc_write_input(is->p, d->data, d->len);
        if (r < 0)
            input_fail(call, is, RPC_INTERNAL,
                       r == -EPIPE ? "stdin not enabled or closed" : "writing input failed");
        return;
    }
    case PROCESS__STREAM_INPUT_REQUEST__EVENT_KEEPALIVE:
        return;
    default:
        input_fail(call, is, RPC_UNIMPLEMENTED, "invalid input type");
        return;
    }
}

static void stream_input_end(struct rpc_call *call)
{
    struct input_stream *is = rpc_call_data(call);
    Process__StreamInputResponse resp = PROCESS__STREAM_INPUT_RESPONSE__INIT;
    if (is) {
        rpc_call_set_data(call, NULL);
        proc_unref(is->p);
        free(is);
    }
    (void) rpc_reply(call, &resp.base);
}

static void stream_input_cancel(struct rpc_call *call, enum rpc_code why)
{
    struct input_stream *is = rpc_call_data(call);
    (void) why;
    if (is) {
        rpc_call_set_data(call, NULL);
        proc_unref(is->p);
        free(is);
    }
}

/* --- guestd.v1.Process ----------------------------------------------------------------------- */

static struct proc *find_guestd(const Guestd__V1__Selector *sel, char *err, size_t errlen,
                                enum rpc_code *code)
{
    struct proc *p = NULL;
    *code = RPC_NOT_FOUND;
    if (!procs) {
        *code = RPC_UNAVAILABLE;
        (void) snprintf(err, errlen, "the process service is not running");
        return NULL;
    }
    switch (sel ? sel->selector_case : GUESTD__V1__SELECTOR__SELECTOR__NOT_SET) {
    case GUESTD__V1__SELECTOR__SELECTOR_PID:
        p = proc_find_pid(procs, (pid_t) sel->pid, true);
        if (!p)
            (void) snprintf(err, errlen, "process with pid %u not found", sel->pid);
        return p;
    case GUESTD__V1__SELECTOR__SELECTOR_TAG:
        p = proc_find_tag(procs, sel->tag, true);
        if (!p)
            (void) snprintf(err, errlen, "process with tag %s not found", sel->tag);
        return p;
    case GUESTD__V1__SELECTOR__SELECTOR_EXEC_ID:
        p = proc_find_exec_id(procs, sel->exec_id);
        if (!p)
            (void) snprintf(err, errlen, "process with exec id %s not found", sel->exec_id);
        return p;
    default:
        *code = RPC_INVALID_ARGUMENT;
        (void) snprintf(err, errlen, "a process selector (pid, tag or exec id) is required");
        return NULL;
    }
}

static void guestd_start(struct rpc_call *call, const ProtobufCMessage *in)
{
    const Guestd__V1__StartRequest *req = (const Guestd__V1__StartRequest *) in;
    if (!req->start) {
        rpc_fail(call, RPC_INVALID_ARGUMENT, "start is required");
        return;
    }
    if (*req->profile && strcmp(req->profile, "default") != 0) {
        rpc_fail(call, RPC_INVALID_ARGUMENT, "profile '%s' is not available", req->profile);
        return;
    }
    struct start_params sp = {
            .req = req->start,
            .exec_id = *req->exec_id ? req->exec_id : NULL,
            .policy = req->output_policy == GUESTD__V1__OUTPUT_POLICY__OUTPUT_POLICY_BLOCK
                              ? PROC_POLICY_BLOCK
                      : req->output_policy == GUESTD__V1__OUTPUT_POLICY__OUTPUT_POLICY_DROP_OLDEST
                              ? PROC_POLICY_DROP_OLDEST
                              : PROC_POLICY_OWNER_PACED,
            .kind = SUB_GUESTD,
    };
    start_process(call, &sp);
}

static void guestd_attach(struct rpc_call *call, const ProtobufCMessage *in)
{
    const Guestd__V1__AttachRequest *req = (const Guestd__V1__AttachRequest *) in;
    char err[256];
    enum rpc_code code;
    struct proc *p = find_guestd(req->process, err, sizeof(err), &code);
    if (!p) {
        rpc_fail(call, code, "%s", err);
        return;
    }
    const struct outlog *log = proc_log(p);
    uint64_t sent[4] = {0, req->stdout_offset, req->stderr_offset, req->pty_offset};
    uint64_t from = outlog_end(log);
    /* Start at the earliest position any stream still needs; bytes already gone come out as
     * gap events when their stream's next chunk is sent. */
    for (enum out_stream st = OUT_STDOUT; st <= OUT_PTY; st++) {
        uint64_t lost;
        uint64_t at = outlog_seek_stream(log, st, sent[st], &lost);
        if (at < from)
            from = at;
    }
    stream_begin(call, p, SUB_GUESTD, false, from, sent);
    proc_unref(p);
}

static void guestd_result(struct rpc_call *call, const ProtobufCMessage *in)
{
    const Guestd__V1__ResultRequest *req = (const Guestd__V1__ResultRequest *) in;
    Guestd__V1__ResultResponse resp = GUESTD__V1__RESULT_RESPONSE__INIT;
    Guestd__V1__Result r = GUESTD__V1__RESULT__INIT;
    Google__Protobuf__Timestamp t0, t1;
    char status[96], tail[OUTLOG_TAIL_BYTES], err[256];
    enum rpc_code code;
    struct proc *p = find_guestd(req->process, err, sizeof(err), &code);
    if (!p) {
        rpc_fail(call, code, "%s", err);
        return;
    }
    fill_result(p, &r, status, sizeof(status), tail, &t0, &t1);
    resp.result = &r;
    (void) rpc_reply(call, &resp.base);
    proc_unref(p);
}

static void guestd_signal(struct rpc_call *call, const ProtobufCMessage *in)
{
    const Guestd__V1__SignalRequest *req = (const Guestd__V1__SignalRequest *) in;
    Guestd__V1__SignalResponse resp = GUESTD__V1__SIGNAL_RESPONSE__INIT;
    char err[256];
    enum rpc_code code;
    if (req->signal == 0 || req->signal >= (uint32_t) NSIG) {
        rpc_fail(call, RPC_INVALID_ARGUMENT, "invalid signal %u", req->signal);
        return;
    }
    if (req->scope == GUESTD__V1__SIGNAL_SCOPE__SIGNAL_SCOPE_CGROUP) {
        rpc_fail(call, RPC_UNIMPLEMENTED, "cgroup scope needs the isolation feature");
        return;
    }
    struct proc *p = find_guestd(req->process, err, sizeof(err), &code);
    if (!p) {
        rpc_fail(call, code, "%s", err);
        return;
    }
    if (proc_has_ended(p)) {
        rpc_fail(call, RPC_FAILED_PRECONDITION, "process %d has already ended", (int) proc_pid(p));
        proc_unref(p);
        return;
    }
    bool group = req->scope == GUESTD__V1__SIGNAL_SCOPE__SIGNAL_SCOPE_GROUP;
    int r = proc_signal(p, (int) req->signal, group, PROC_CAUSE_SIGNALED_BY_CLIENT);
    if (r < 0)
        rpc_fail(call, rpc_code_from_errno(r), "error sending signal: %s", strerror(-r));
    else
        (void) rpc_reply(call, &resp.base);
    proc_unref(p);
}

const struct rpc_method process_methods[] = {
        {.path = "/process.Process/Start",
         .kind = RPC_SERVER_STREAM,
         .input = &process__start_request__descriptor,
         .output = &process__start_response__descriptor,
         .handle = envd_start,
         .on_cancel = stream_on_cancel,
         .on_drain = stream_on_drain,
         .keepalive = &ka_start.base},
        {.path = "/process.Process/Connect",
         .kind = RPC_SERVER_STREAM,
         .input = &process__connect_request__descriptor,
         .output = &process__connect_response__descriptor,
         .handle = envd_connect,
         .on_cancel = stream_on_cancel,
         .on_drain = stream_on_drain,
         .keepalive = &ka_connect.base},
        {.path = "/process.Process/List",
         .kind = RPC_UNARY,
         .input = &process__list_request__descriptor,
         .output = &process__list_response__descriptor,
         .handle = envd_list},
        {.path = "/process.Process/SendInput",
         .kind = RPC_UNARY,
         .input = &process__send_input_request__descriptor,
         .output = &process__send_input_response__descriptor,
         .handle = envd_send_input},
        {.path = "/process.Process/StreamInput",
         .kind = RPC_CLIENT_STREAM,
         .input = &process__stream_input_request__descriptor,
         .output = &process__stream_input_response__descriptor,
         .on_message = stream_input_message,
         .on_end = stream_input_end,
         .on_cancel = stream_input_cancel},
        {.path = "/process.Process/SendSignal",
         .kind = RPC_UNARY,
         .input = &process__send_signal_request__descriptor,
         .output = &process__send_signal_response__descriptor,
         .handle = envd_send_signal},
        {.path = "/process.Process/Update",
         .kind = RPC_UNARY,
         .input = &process__update_request__descriptor,
         .output = &process__update_response__descriptor,
         .handle = envd_update},
        {.path = "/process.Process/CloseStdin",
         .kind = RPC_UNARY,
         .input = &process__close_stdin_request__descriptor,
         .output = &process__close_stdin_response__descriptor,
         .handle = envd_close_stdin},
        {.path = "/guestd.v1.Process/Start",
         .kind = RPC_SERVER_STREAM,
         .input = &guestd__v1__start_request__descriptor,
         .output = &guestd__v1__process_event__descriptor,
         .handle = guestd_start,
         .on_cancel = stream_on_cancel,
         .on_drain = stream_on_drain,
         .keepalive = &ka_guestd.base},
        {.path = "/guestd.v1.Process/Attach",
         .kind = RPC_SERVER_STREAM,
         .input = &guestd__v1__attach_request__descriptor,
         .output = &guestd__v1__process_event__descriptor,
         .handle = guestd_attach,
         .on_cancel = stream_on_cancel,
         .on_drain = stream_on_drain,
         .keepalive = &ka_guestd.base},
        {.path = "/guestd.v1.Process/Result",
         .kind = RPC_UNARY,
         .input = &guestd__v1__result_request__descriptor,
         .output = &guestd__v1__result_response__descriptor,
         .handle = guestd_result},
        {.path = "/guestd.v1.Process/Signal",
         .kind = RPC_UNARY,
         .input = &guestd__v1__signal_request__descriptor,
         .output = &guestd__v1__signal_response__descriptor,
         .handle = guestd_signal},
};
const size_t process_methods_count = ARRAY_SIZE(process_methods);

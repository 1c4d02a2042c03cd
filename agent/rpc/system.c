/* SPDX-License-Identifier: Apache-2.0 */
#include "rpc/system.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "agent-limits.h"
#include "base/alloc.h"
#include "base/buf.h"
#include "base/cleanup.h"
#include "base/log.h"
#include "build-config.h"
#include "guestd/v1/system.pb-c.h"
#include "http/http.h"
#include "rpc/router.h"
#include "sec/token.h"
#include "sys/clock.h"
#include "sys/metrics.h"
#include "sys/state.h"

/* --- /health, /envs ------------------------------------------------------------------------- */

void system_health(struct http_req *req)
{
    http_resp_header(req, "Cache-Control", "no-store");
    (void) http_resp_simple(req, 204, NULL, NULL, 0);
}

void system_envs(struct http_req *req, struct rpc_ctx *ctx)
{
    const struct agent_state *st = ctx->state;
    struct buf b;
    bool first = true;
    buf_init(&b, SIZE_MAX / 2);
    (void) buf_append_char(&b, '{');
    /* User variables first, then internal ones, which /init can never override. */
    for (size_t i = 0; i < st->env_user.n; i++) {
        if (kv_get(&st->env_internal, st->env_user.items[i].key))
            continue;
        if (!first)
            (void) buf_append_char(&b, ',');
        first = false;
        (void) rpc_json_quote(&b, st->env_user.items[i].key);
        (void) buf_append_char(&b, ':');
        (void) rpc_json_quote(&b, st->env_user.items[i].value);
    }
    for (size_t i = 0; i < st->env_internal.n; i++) {
        if (!first)
            (void) buf_append_char(&b, ',');
        first = false;
        (void) rpc_json_quote(&b, st->env_internal.items[i].key);
        (void) buf_append_char(&b, ':');
        (void) rpc_json_quote(&b, st->env_internal.items[i].value);
    }
    (void) buf_append_char(&b, '}');
    http_resp_header(req, "Cache-Control", "no-store");
    (void) http_resp_simple(req, 200, "application/json", b.data, b.len);
    buf_free(&b);
}

/* --- /metrics -------------------------------------------------------------------------------- */

/* The previous CPU sample: envd's cpu_used_pct is the busy share since the last call. */
static struct metrics_cpu_sample cpu_prev;

/* Go's JSON float: shortest form, no trailing zeros ("12.5", "3", "0.07"). */
static void append_pct(struct buf *b, double v)
{
    char num[32];
    int n = snprintf(num, sizeof(num), "%.2f", v);
    while (n > 0 && num[n - 1] == '0')
        num[--n] = '\0';
    if (n > 0 && num[n - 1] == '.')
        num[--n] = '\0';
    (void) buf_append_str(b, num);
}

void system_metrics(struct http_req *req, struct rpc_ctx *ctx)
{
    struct host_metrics m;
    struct buf b;
    char *format = NULL;
    (void) ctx;
    http_resp_header(req, "Cache-Control", "no-store");
    if (http_query_get(req->query, "format", &format) < 0) {
        router_rest_error(req, 400, "invalid query string");
        return;
    }
    if (metrics_collect(&cpu_prev, &m) < 0) {
        free(format);
        (void) http_resp_simple(req, 500, NULL, NULL, 0);
        return;
    }
    buf_init(&b, 64 * 1024);
    if (format && streq(format, "prometheus")) {
        (void) buf_printf(&b,
                          "# HELP guestd_host_cpu_count Logical CPUs online.\n"
                          "# TYPE guestd_host_cpu_count gauge\n"
                          "guestd_host_cpu_count %u\n"
                          "# HELP guestd_host_cpu_used_percent Busy CPU share since the previous "
                          "scrape.\n"
                          "# TYPE guestd_host_cpu_used_percent gauge\n"
                          "guestd_host_cpu_used_percent %.2f\n"
                          "# HELP guestd_host_memory_total_bytes MemTotal.\n"
                          "# TYPE guestd_host_memory_total_bytes gauge\n"
                          "guestd_host_memory_total_bytes %llu\n"
                          "# HELP guestd_host_memory_used_bytes MemTotal minus MemAvailable.\n"
                          "# TYPE guestd_host_memory_used_bytes gauge\n"
                          "guestd_host_memory_used_bytes %llu\n"
                          "# HELP guestd_host_memory_cache_bytes Cached plus SReclaimable.\n"
                          "# TYPE guestd_host_memory_cache_bytes gauge\n"
                          "guestd_host_memory_cache_bytes %llu\n"
                          "# HELP guestd_host_disk_total_bytes Size of the root filesystem.\n"
                          "# TYPE guestd_host_disk_total_bytes gauge\n"
                          "guestd_host_disk_total_bytes %llu\n"
                          "# HELP guestd_host_disk_used_bytes Used space of the root filesystem.\n"
                          "# TYPE guestd_host_disk_used_bytes gauge\n"
                          "guestd_host_disk_used_bytes %llu\n",
                          m.cpu_count, m.cpu_used_pct, (unsigned long long) m.mem_total,
                          (unsigned long long) m.mem_used, (unsigned long long) m.mem_cache,
                          (unsigned long long) m.disk_total, (unsigned long long) m.disk_used);
        (void) http_resp_simple(req, 200, "text/plain; version=0.0.4; charset=utf-8", b.data,
                                b.len);
    } else if (format && *format) {
        router_rest_error(req, 400, "unknown metrics format (json or prometheus)");
    } else {
        /* envd's fields and names exactly (host/metrics.go). */
        (void) buf_printf(&b, "{\"ts\":%lld,\"cpu_count\":%u,\"cpu_used_pct\":", (long long) m.ts,
                          m.cpu_count);
        append_pct(&b, m.cpu_used_pct);
        (void) buf_printf(&b,
                          ",\"mem_total_mib\":%llu,\"mem_used_mib\":%llu,\"mem_total\":%llu,"
                          "\"mem_used\":%llu,\"mem_cache\":%llu,\"disk_used\":%llu,"
                          "\"disk_total\":%llu}\n",
                          (unsigned long long) (m.mem_total >> 20),
                          (unsigned long long) (m.mem_used >> 20), (unsigned long long) m.mem_total,
                          (unsigned long long) m.mem_used, (unsigned long long) m.mem_cache,
                          (unsigned long long) m.disk_used, (unsigned long long) m.disk_total);
        (void) http_resp_simple(req, 200, "application/json", b.data, b.len);
    }
    buf_free(&b);
    free(format);
}

/* --- /init ----------------------------------------------------------------------------------- */

/* The fields of envd's /init body we act on. Go's decoder matches keys case-insensitively. */
struct init_body {
    const char *access_token; /* NULL: absent */
    json_t *env_vars;         /* object or NULL */
    const char *default_user;
    const char *default_workdir;
    const char *timestamp;
};

static const char *const ignored_init_fields[] = {"hyperloopIP", "lifecycleID", "volumeMounts",
                                                  "caBundle"};

/* Extracts and type-checks the known fields. Returns -EINVAL with a reason on a type error. */
static int init_parse(json_t *root, struct init_body *ret, char *err, size_t errlen)
{
    const char *key;
    json_t *v;
    memset(ret, 0, sizeof(*ret));
    json_object_foreach(root, key, v)
    {
        const char **str = NULL;
        if (strcasecmp(key, "accessToken") == 0)
            str = &ret->access_token;
        else if (strcasecmp(key, "defaultUser") == 0)
            str = &ret->default_user;
        else if (strcasecmp(key, "defaultWorkdir") == 0)
            str = &ret->default_workdir;
        else if (strcasecmp(key, "timestamp") == 0)
            str = &ret->timestamp;
        if (str) {
            if (json_is_null(v))
                continue;
            if (!json_is_string(v)) {
                (void) snprintf(err, errlen, "field '%s' must be a string", key);
                return -EINVAL;
            }
            *str = json_string_value(v);
            continue;
        }
        if (strcasecmp(key, "envVars") == 0) {
            if (json_is_null(v))
                continue;
            if (!json_is_object(v)) {
                (void) snprintf(err, errlen, "field 'envVars' must be an object of strings");
                return -EINVAL;
            }
            const char *k;
            json_t *ev;
            json_object_foreach(v, k, ev)
            {
                if (!json_is_string(ev)) {
                    (void) snprintf(err, errlen, "envVars['%.64s'] must be a string", k);
                    return -EINVAL;
                }
            }
            ret->env_vars = v;
            continue;
        }
        for (size_t i = 0; i < ARRAY_SIZE(ignored_init_fields); i++)
            if (strcasecmp(key, ignored_init_fields[i]) == 0 && !json_is_null(v))
                log_info("/init: field '%s' is accepted but not acted on by guestd",
                         ignored_init_fields[i]);
    }
    return 0;
}

static int env_name_valid(const char *k)
{
    size_t n = strlen(k);
    return n > 0 && n <= LIMIT_ENV_NAME_BYTES && !strchr(k, '=');
}

static void init_reply_text(struct http_req *req, int status, const char *text)
{
    (void) http_resp_simple(req, status, text && *text ? "text/plain; charset=utf-8" : NULL, text,
                            text ? strlen(text) : 0);
}

static void on_init_complete(struct http_req *req)
{
    struct rpc_ctx *ctx = req->data;
    struct agent_state *st = ctx->state;
    json_auto_t *root = NULL; /* jansson's own cleanup attribute */
    struct init_body body;
    char err[256] = "";
    int64_t ts_ns = 0;

    req->data = NULL;
    if (req->body.len > 0) {
        json_error_t jerr;
        root = json_loadb(req->body.data, req->body.len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY,
                          &jerr);
        if (!root || !(json_is_object(root) || json_is_null(root))) {
            log_info("/init: malformed body: %s", root ? "not an object" : jerr.text);
            init_reply_text(req, 400, NULL);
            goto out;
        }
    }
    if (root && json_is_object(root)) {
        if (init_parse(root, &body, err, sizeof(err)) < 0) {
            log_info("/init: %s", err);
            init_reply_text(req, 400, NULL);
            goto out;
        }
    } else {
        memset(&body, 0, sizeof(body));
    }
    if (body.access_token && !*body.access_token) {
        init_reply_text(req, 400, "access token must not be empty");
        goto out;
    }
    if (body.timestamp && clock_parse_rfc3339(body.timestamp, &ts_ns) < 0) {
        init_reply_text(req, 400, "invalid timestamp");
        goto out;
    }
    /* A replayed or out-of-order /init (older timestamp) changes nothing, as envd. */
    if (body.timestamp && st->have_init_ts && ts_ns <= st->last_init_ts_ns) {
        log_debug("/init: stale timestamp, nothing applied");
        http_resp_header(req, "Cache-Control", "no-store");
        (void) http_resp_simple(req, 204, NULL, NULL, 0);
        goto out;
    }

    /*
     * Who may change the token: the holder of the current one (in the body, as envd, or in
     * X-Access-Token, which is how guestd rotates), a peer trusted by construction, or anyone
     * while no token is set (first boot). An authorised /init without accessToken clears it.
     */
    bool authorized = !token_is_set() || ctx->trusted;
    if (!authorized && body.access_token)
        authorized = token_matches(body.access_token, strlen(body.access_token));
    if (!authorized) {
        const char *hdr = http_req_header(req, "x-access-token");
        authorized = hdr && token_matches(hdr, strlen(hdr));
    }
    if (!authorized) {
        init_reply_text(req, 401,
                        body.access_token ? "access token validation failed"
                                          : "access token reset not authorized");
        goto out;
    }

    if (body.env_vars) {
        const char *k;
        json_t *v;
        if (json_object_size(body.env_vars) > LIMIT_ENV_VARS) {
            init_reply_text(req, 400, "too many environment variables");
            goto out;
        }
        json_object_foreach(body.env_vars, k, v)
        {
            if (!env_name_valid(k) || json_string_length(v) > LIMIT_ENV_VALUE_BYTES) {
                (void) snprintf(err, sizeof(err), "invalid environment variable '%.64s'", k);
                init_reply_text(req, 400, err);
                goto out;
            }
        }
    }
    if (body.access_token) {
        int r = token_set(body.access_token, strlen(body.access_token));
        if (r < 0) {
            init_reply_text(req, 400, "invalid access token");
            goto out;
        }
    } else if (token_is_set()) {
        token_clear();
        log_info("/init: access token cleared");
    }

    if (body.timestamp) {
        st->have_init_ts = true;
        st->last_init_ts_ns = ts_ns;
        int64_t now = clock_realtime_ns();
        if (clock_needs_step(now, ts_ns)) {
            if (state_clock_step_allowed(st)) {
                int r = clock_step_to(ts_ns);
                if (r < 0)
                    log_warn("/init: stepping the clock failed: %s", strerror(-r));
                else
                    log_info("/init: clock stepped by %lld ms",
                             (long long) ((ts_ns - now) / 1000000));
            } else {
                log_info("/init: clock is %lld ms off, not stepped (clock sync is off here)",
                         (long long) ((now - ts_ns) / 1000000));
            }
        }
    }
    if (body.env_vars) {
        const char *k;
        json_t *v;
        kv_clear(&st->env_user);
        json_object_foreach(body.env_vars, k, v)
        {
            if (kv_get(&st->env_internal, k))
                continue; /* E2B_SANDBOX and friends stay guestd's */
            kv_set(&st->env_user, k, json_string_value(v));
        }
    }
    if (body.default_user && *body.default_user) {
        free(st->default_user);
        st->default_user = xstrdup(body.default_user);
    }
    if (body.default_workdir && *body.default_workdir) {
        free(st->default_workdir);
        st->default_workdir = xstrdup(body.default_workdir);
    }
    http_resp_header(req, "Cache-Control", "no-store");
    (void) http_resp_simple(req, 204, NULL, NULL, 0);
out:
    if (ctx->user_resolved)
        user_info_done(&ctx->user);
    free(ctx);
}

static void on_init_abort(struct http_req *req)
{
    free(req->data);
    req->data = NULL;
}

static const struct http_req_ops init_ops = {
        .on_complete = on_init_complete,
        .on_abort = on_init_abort,
};

void system_init(struct http_req *req, struct rpc_ctx *ctx)
{
    req->data = ctx;
    http_req_set_ops(req, &init_ops, LIMIT_SMALL_BODY_BYTES);
}

/* --- guestd.v1.System ------------------------------------------------------------------------ */

static const char *const features[] = {
        "envd-rest",    /* /health, /init, /envs */
        "connect-json", /* both Connect codecs */
        "connect-proto", "cors", "token-auth", "system-events",
};

static Google__Protobuf__Timestamp *timestamp_new(int64_t ns)
{
    Google__Protobuf__Timestamp *t = xmalloc(sizeof(*t));
    google__protobuf__timestamp__init(t);
    t->seconds = ns / 1000000000;
    t->nanos = (int32_t) (ns % 1000000000);
    return t;
}

static void info_handle(struct rpc_call *call, const ProtobufCMessage *in)
{
    struct rpc_ctx *ctx = rpc_call_ctx(call);
    const struct agent_state *st = ctx->state;
    Guestd__V1__InfoResponse resp = GUESTD__V1__INFO_RESPONSE__INIT;
    uint64_t now = state_now_ms();
    (void) in;
    resp.version = (char *) GUESTD_VERSION;
    resp.envd_version = (char *) ENVD_COMPAT_VERSION;
    resp.n_features = ARRAY_SIZE(features);
    resp.features = (char **) features;
    resp.boot_id = (char *) st->boot_id;
    resp.generation = st->generation;
    resp.uptime_ms = now - st->started_mono_ms;
    /* This request itself counts as activity; report the idle time before it. */
    resp.idle_ms = ctx->idle_before_ms;
    resp.pid1 = st->pid1;
    Google__Protobuf__Timestamp *started = timestamp_new(st->started_real_ns);
    resp.started_at = started;
    (void) rpc_reply(call, &resp.base);
    free(started);
}

/* Open System/Events streams, for broadcasts. */
struct events_sub {
    struct rpc_call *call;
    struct events_sub *next;
};
static struct events_sub *events_subs;

static void events_unlink(struct rpc_call *call)
{
    for (struct events_sub **p = &events_subs; *p; p = &(*p)->next)
        if ((*p)->call == call) {
            struct events_sub *s = *p;
            *p = s->next;
            free(s);
            return;
        }
}

static void events_handle(struct rpc_call *call, const ProtobufCMessage *in)
{
    struct rpc_ctx *ctx = rpc_call_ctx(call);
    Guestd__V1__EventsResponse ev = GUESTD__V1__EVENTS_RESPONSE__INIT;
    Guestd__V1__EventsResponse__Started started = GUESTD__V1__EVENTS_RESPONSE__STARTED__INIT;
    (void) in;
    ev.generation = ctx->state->generation;
    ev.event_case = GUESTD__V1__EVENTS_RESPONSE__EVENT_START;
    ev.start = &started;
    struct events_sub *s = xcalloc(1, sizeof(*s));
    s->call = call;
    s->next = events_subs;
    events_subs = s;
    (void) rpc_send(call, &ev.base);
}

static void events_cancel(struct rpc_call *call, enum rpc_code why)
{
    (void) why;
    events_unlink(call);
}

void system_announce_shutdown(const char *reason)
{
    while (events_subs) {
        struct rpc_call *call = events_subs->call;
        struct rpc_ctx *ctx = rpc_call_ctx(call);
        Guestd__V1__EventsResponse ev = GUESTD__V1__EVENTS_RESPONSE__INIT;
        Guestd__V1__EventsResponse__ShuttingDown sd =
                GUESTD__V1__EVENTS_RESPONSE__SHUTTING_DOWN__INIT;
        sd.reason = (char *) reason;
        ev.generation = ctx->state->generation;
        ev.event_case = GUESTD__V1__EVENTS_RESPONSE__EVENT_SHUTTING_DOWN;
        ev.shutting_down = &sd;
        events_unlink(call);
        (void) rpc_send(call, &ev.base);
        rpc_end(call, RPC_OK, NULL);
    }
}

static void shutdown_handle(struct rpc_call *call, const ProtobufCMessage *in)
{
    struct rpc_ctx *ctx = rpc_call_ctx(call);
    Guestd__V1__ShutdownResponse resp = GUESTD__V1__SHUTDOWN_RESPONSE__INIT;
    (void) in;
    if (!ctx->state->request_shutdown) {
        rpc_fail(call, RPC_UNIMPLEMENTED, "shutdown is not available");
        return;
    }
    (void) rpc_reply(call, &resp.base);
    ctx->state->request_shutdown(ctx->state->shutdown_data, "requested over the API");
}

static const Guestd__V1__EventsResponse__KeepAlive events_ka_inner =
        GUESTD__V1__EVENTS_RESPONSE__KEEP_ALIVE__INIT;
static const Guestd__V1__EventsResponse events_keepalive = {
        PROTOBUF_C_MESSAGE_INIT(&guestd__v1__events_response__descriptor),
        0,
        GUESTD__V1__EVENTS_RESPONSE__EVENT_KEEPALIVE,
        {.keepalive = (Guestd__V1__EventsResponse__KeepAlive *) &events_ka_inner},
};

const struct rpc_method system_methods[] = {
        {
                .path = "/guestd.v1.System/Info",
                .kind = RPC_UNARY,
                .input = &guestd__v1__info_request__descriptor,
                .output = &guestd__v1__info_response__descriptor,
                .handle = info_handle,
        },
        {
                .path = "/guestd.v1.System/Events",
                .kind = RPC_SERVER_STREAM,
                .input = &guestd__v1__events_request__descriptor,
                .output = &guestd__v1__events_response__descriptor,
                .handle = events_handle,
                .on_cancel = events_cancel,
                .keepalive = &events_keepalive.base,
        },
        {
                .path = "/guestd.v1.System/Shutdown",
                .kind = RPC_UNARY,
                .input = &guestd__v1__shutdown_request__descriptor,
                .output = &guestd__v1__shutdown_response__descriptor,
                .handle = shutdown_handle,
        },
};
const size_t system_methods_count = ARRAY_SIZE(system_methods);

/* SPDX-License-Identifier: Apache-2.0 */
#include "rpc/router.h"

#include <errno.h>
#include <nettle/base64.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "agent-limits.h"
#include "base/alloc.h"
#include "base/buf.h"
#include "base/log.h"
#include "build-config.h"
#include "http/http.h"
#include "rpc/files.h"
#include "rpc/system.h"
#include "sec/token.h"
#include "sys/state.h"

/* envd's token-gate rejection, word for word (clients compare it). */
#define UNAUTHORIZED_MESSAGE \
    "unauthorized access, please provide a valid access token or method signing if supported"

/* Headers a browser may read from responses (rs/cors plus connect's own). */
#define CORS_EXPOSE_HEADERS                                                      \
    "Connect-Protocol-Version, Connect-Timeout-Ms, Grpc-Status, Grpc-Message, "  \
    "Grpc-Status-Details-Bin, Location, Cache-Control, X-Content-Type-Options, " \
    "X-Envd-Version, X-Guestd-Version, ETag, Content-Disposition, Content-Range, Accept-Ranges"
/* How long a browser may cache a preflight answer, as envd. */
#define CORS_MAX_AGE "7200"

struct router {
    struct agent_state *state;
    const struct rpc_method **methods;
    size_t n_methods;
};

int router_new(struct agent_state *st, struct router **ret)
{
    struct router *r = calloc(1, sizeof(*r));
    if (!r)
        return -ENOMEM;
    r->state = st;
    *ret = r;
    return 0;
}

void router_free(struct router *r)
{
    if (!r)
        return;
    free(r->methods);
    free(r);
}

void router_add_methods(struct router *r, const struct rpc_method *methods, size_t n)
{
    r->methods = xrealloc(r->methods, (r->n_methods + n) * sizeof(*r->methods));
    for (size_t i = 0; i < n; i++)
        r->methods[r->n_methods++] = &methods[i];
}

bool router_peer_trusted(const struct agent_state *st, const struct peer_info *peer)
{
    if (peer->transport == TRANSPORT_UNIX)
        return peer->has_cred && peer->uid == 0;
    if (peer->transport == TRANSPORT_VSOCK)
        return st->trust_host_vsock && peer->cid == st->host_cid;
    /* A loopback TCP source is never trusted: anything inside the VM can connect from it. */
    return false;
}

void router_rest_error(struct http_req *req, int status, const char *message)
{
    struct buf b;
    buf_init(&b, LIMIT_SMALL_BODY_BYTES);
    (void) buf_printf(&b, "{\"code\":%d,\"message\":", status);
    (void) rpc_json_quote(&b, message);
    (void) buf_append_str(&b, "}\n");
    http_resp_header(req, "X-Content-Type-Options", "nosniff");
    (void) http_resp_simple(req, status, "application/json; charset=utf-8", b.data, b.len);
    buf_free(&b);
}

static void ctx_free(void *p)
{
    struct rpc_ctx *ctx = p;
    if (!ctx)
        return;
    if (ctx->user_resolved)
        user_info_done(&ctx->user);
    free(ctx);
}

/* Answers a CORS preflight. Returns true if the request was one. */
static bool cors(struct http_req *req)
{
    const char *origin = http_req_header(req, "origin");
    if (!origin)
        return false;
    const char *want_method = http_req_header(req, "access-control-request-method");
    if (req->method == HMETHOD_OPTIONS && want_method) {
        static const char *const allowed[] = {"HEAD", "GET", "POST", "PUT", "PATCH", "DELETE"};
        bool ok = false;
        for (size_t i = 0; i < ARRAY_SIZE(allowed); i++)
            ok = ok || strcasecmp(want_method, allowed[i]) == 0;
        http_resp_header(req, "Vary",
                         "Origin, Access-Control-Request-Method, Access-Control-Request-Headers");
        if (ok) {
            char m[16];
            size_t i = 0;
            for (; want_method[i] && i < sizeof(m) - 1; i++)
                m[i] = (char) (want_method[i] >= 'a' && want_method[i] <= 'z' ? want_method[i] - 32
                                                                              : want_method[i]);
            m[i] = '\0';
            http_resp_header(req, "Access-Control-Allow-Origin", "*");
            http_resp_header(req, "Access-Control-Allow-Methods", m);
            const char *hdrs = http_req_header(req, "access-control-request-headers");
            if (hdrs && *hdrs)
                http_resp_header(req, "Access-Control-Allow-Headers", hdrs);
            http_resp_header(req, "Access-Control-Max-Age", CORS_MAX_AGE);
        }
        (void) http_resp_simple(req, 204, NULL, NULL, 0);
        return true;
    }
    http_resp_header(req, "Vary", "Origin");
    http_resp_header(req, "Access-Control-Allow-Origin", "*");
    http_resp_header(req, "Access-Control-Expose-Headers", CORS_EXPOSE_HEADERS);
    return false;
}

/* envd's gate passes these by exact method and path; /files checks signatures itself. */
static bool auth_exempt(const struct http_req *req)
{
    if (streq(req->path, "/health"))
        return req->method == HMETHOD_GET;
    /* HEAD is a GET without the body: /files checks its signature the same way. */
    if (streq(req->path, "/files"))
        return req->method == HMETHOD_GET || req->method == HMETHOD_HEAD ||
               req->method == HMETHOD_POST;
    if (streq(req->path, "/init"))
        return req->method == HMETHOD_POST;
    return false;
}

/*
 * Resolves the run-as user: "Authorization: Basic base64(user:)" or the default user.
 * On failure writes the error message (envd's texts) and returns -EACCES.
 */
static int resolve_user(struct rpc_ctx *ctx, const struct http_req *req, char *err, size_t errlen)
{
    const char *auth = http_req_header(req, "authorization");
    if (auth && strncasecmp(auth, "Basic ", 6) == 0) {
        const char *b64 = auth + 6;
        size_t blen = strlen(b64);
        char decoded[LIMIT_USERNAME_BYTES * 2];
        struct base64_decode_ctx dctx;
        size_t dlen = sizeof(decoded) - 1;
        base64_decode_init(&dctx);
        if (blen > BASE64_ENCODE_LENGTH(sizeof(decoded) - 2) ||
            !base64_decode_update(&dctx, &dlen, (uint8_t *) decoded, blen, b64) ||
            !base64_decode_final(&dctx)) {
            (void) snprintf(err, errlen, "invalid authorization header");
            return -EACCES;
        }
        decoded[dlen] = '\0';
        if (strlen(decoded) != dlen) {
            (void) snprintf(err, errlen, "invalid authorization header");
            return -EACCES;
        }
        char *colon = strchr(decoded, ':');
        if (colon)
            *colon = '\0';
        if (users_by_name(decoded, &ctx->user) < 0) {
            (void) snprintf(err, errlen, "invalid username: '%s'", decoded);
            return -EACCES;
        }
        ctx->user_resolved = true;
        return 0;
    }
    if (users_by_name(ctx->state->default_user, &ctx->user) < 0) {
        (void) snprintf(err, errlen, "invalid default user");
        return -EACCES;
    }
    ctx->user_resolved = true;
    return 0;
}

static bool is_connect_path(const char *path)
{
    /* "/<package>.<Service>/<Method>": a dot in the first segment and exactly two segments. */
    if (path[0] != '/')
        return false;
    const char *slash = strchr(path + 1, '/');
    if (!slash || slash == path + 1 || strchr(slash + 1, '/') || !slash[1])
        return false;
    const char *dot = memchr(path + 1, '.', (size_t) (slash - path - 1));
    return dot != NULL;
}

static const struct rpc_method *find_method(const struct router *r, const char *path)
{
    for (size_t i = 0; i < r->n_methods; i++)
        if (streq(r->methods[i]->path, path))
            return r->methods[i];
    return NULL;
}

void router_handle(struct http_req *req, void *userdata)
{
    struct router *r = userdata;
    struct agent_state *st = r->state;

    http_resp_header(req, "X-Envd-Version", ENVD_COMPAT_VERSION);
    http_resp_header(req, "X-Guestd-Version", GUESTD_VERSION);
    if (cors(req))
        return;

    bool trusted = router_peer_trusted(st, req->peer);
    bool exempt = auth_exempt(req);
    if (!trusted && st->require_token && !token_is_set() &&
        !(streq(req->path, "/health") && req->method == HMETHOD_GET) &&
        !(streq(req->path, "/init") && req->method == HMETHOD_POST)) {
        router_rest_error(req, 401, "access token required: waiting for /init to set one");
        return;
    }
    if (!exempt && !trusted && token_is_set()) {
        const char *tok = http_req_header(req, "x-access-token");
        if (!tok || !token_matches(tok, strlen(tok))) {
            router_rest_error(req, 401, UNAUTHORIZED_MESSAGE);
            return;
        }
    }

    if (streq(req->path, "/health")) {
        if (req->method != HMETHOD_GET && req->method != HMETHOD_HEAD) {
            http_resp_header(req, "Allow", "GET, HEAD");
            (void) http_resp_simple(req, 405, NULL, NULL, 0);
            return;
        }
        system_health(req);
        return;
    }

    struct rpc_ctx *ctx = xcalloc(1, sizeof(*ctx));
    ctx->state = st;
    ctx->router = r;
    ctx->trusted = trusted;
    ctx->peer = req->peer;
    ctx->idle_before_ms = state_now_ms() - st->last_activity_mono_ms;
    state_touch(st);

    if (streq(req->path, "/init")) {
        if (req->method != HMETHOD_POST) {
            http_resp_header(req, "Allow", "POST");
            (void) http_resp_simple(req, 405, NULL, NULL, 0);
            ctx_free(ctx);
            return;
        }
        system_init(req, ctx); /* takes ctx */
        return;
    }

    /* /files/compose is token-gated above and takes its user from its JSON body. */
    if (streq(req->path, "/files/compose")) {
        files_compose(req, st);
        ctx_free(ctx);
        return;
    }

    /* /files picks its user from the `username` query parameter, never from Basic auth. */
    if (streq(req->path, "/files")) {
        files_handle(req, st, trusted);
        ctx_free(ctx);
        return;
    }

    char err[LIMIT_USERNAME_BYTES + 64];
    if (resolve_user(ctx, req, err, sizeof(err)) < 0) {
        ctx_free(ctx);
        rpc_reject(req, RPC_UNAUTHENTICATED, err);
        return;
    }

    if (streq(req->path, "/envs")) {
        if (req->method != HMETHOD_GET) {
            http_resp_header(req, "Allow", "GET");
            (void) http_resp_simple(req, 405, NULL, NULL, 0);
        } else {
            system_envs(req, ctx);
        }
        ctx_free(ctx);
        return;
    }

    if (streq(req->path, "/metrics")) {
        if (req->method != HMETHOD_GET && req->method != HMETHOD_HEAD) {
            http_resp_header(req, "Allow", "GET");
            (void) http_resp_simple(req, 405, NULL, NULL, 0);
        } else {
            system_metrics(req, ctx);
        }
        ctx_free(ctx);
        return;
    }

    if (is_connect_path(req->path)) {
        const struct rpc_method *m = find_method(r, req->path);
        if (!m) {
            char msg[LIMIT_URL_BYTES + 64];
            (void) snprintf(msg, sizeof(msg), "%.200s is not implemented", req->path);
            ctx_free(ctx);
            struct buf b;
            buf_init(&b, sizeof(msg) + 64);
            (void) buf_append_str(&b, "{\"code\":\"unimplemented\",\"message\":");
            (void) rpc_json_quote(&b, msg);
            (void) buf_append_char(&b, '}');
            (void) http_resp_simple(req, 404, "application/json", b.data, b.len);
            buf_free(&b);
            return;
        }
        rpc_serve(req, m, ctx, ctx_free);
        return;
    }

    ctx_free(ctx);
    (void) http_resp_simple(req, 404, "text/plain; charset=utf-8", "404 page not found\n", 19);
}

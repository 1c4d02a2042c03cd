/* SPDX-License-Identifier: Apache-2.0 */
#include "rpc/connect.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <uv.h>

#include "agent-limits.h"
#include "base/alloc.h"
#include "base/buf.h"
#include "base/log.h"
#include "base/parse.h"
#include "http/http.h"
#include "rpc/pbjson.h"

/* Connect envelope: 1 flag byte and a 4-byte big-endian length. */
#define ENVELOPE_HEADER          5
#define ENVELOPE_FLAG_COMPRESSED 0x01
#define ENVELOPE_FLAG_END_STREAM 0x02

enum call_state {
    CALL_READING = 0, /* request body still arriving */
    CALL_ACTIVE,      /* handler owns the call */
    CALL_DONE,        /* response finished or cancelled */
};

struct rpc_call {
    struct http_req *req;
    const struct rpc_method *method;
    void *ctx;
    void (*ctx_free)(void *ctx);
    void *data;
    bool proto;
    bool stream_response; /* response uses envelopes */
    enum call_state state;
    bool in_handler;
    uint64_t deadline;
    uint64_t keepalive_ms;
    uv_timer_t deadline_timer;
    uv_timer_t keepalive_timer;
    bool timers_live;
    int pending_closes;
    ProtobufCMessage *request; /* unary/server-stream request */
    struct buf envelope;       /* client-stream: partial envelope */
    bool started;              /* response headers sent */
};

static const struct {
    const char *name;
    int http;
} code_table[] = {
        [RPC_OK] = {"ok", 200},
        [RPC_CANCELED] = {"canceled", 499},
        [RPC_UNKNOWN] = {"unknown", 500},
        [RPC_INVALID_ARGUMENT] = {"invalid_argument", 400},
        [RPC_DEADLINE_EXCEEDED] = {"deadline_exceeded", 504},
        [RPC_NOT_FOUND] = {"not_found", 404},
        [RPC_ALREADY_EXISTS] = {"already_exists", 409},
        [RPC_PERMISSION_DENIED] = {"permission_denied", 403},
        [RPC_RESOURCE_EXHAUSTED] = {"resource_exhausted", 429},
        [RPC_FAILED_PRECONDITION] = {"failed_precondition", 400},
        [RPC_ABORTED] = {"aborted", 409},
        [RPC_OUT_OF_RANGE] = {"out_of_range", 400},
        [RPC_UNIMPLEMENTED] = {"unimplemented", 501},
        [RPC_INTERNAL] = {"internal", 500},
        [RPC_UNAVAILABLE] = {"unavailable", 503},
        [RPC_DATA_LOSS] = {"data_loss", 500},
        [RPC_UNAUTHENTICATED] = {"unauthenticated", 401},
};

const char *rpc_code_name(enum rpc_code code)
{
    return code < ARRAY_SIZE(code_table) ? code_table[code].name : "unknown";
}

int rpc_code_http_status(enum rpc_code code)
{
    return code < ARRAY_SIZE(code_table) ? code_table[code].http : 500;
}

enum rpc_code rpc_code_from_errno(int neg_errno)
{
    switch (-neg_errno) {
    case ENOENT:
    case ESRCH:
        return RPC_NOT_FOUND;
    case EEXIST:
        return RPC_ALREADY_EXISTS;
    case EACCES:
    case EPERM:
        return RPC_PERMISSION_DENIED;
    case EINVAL:
    case ENOTDIR:
    case EISDIR:
    case ENAMETOOLONG:
    case ELOOP:
        return RPC_INVALID_ARGUMENT;
    case E2BIG:
    case ENOSPC:
    case EDQUOT:
    case EMFILE:
    case ENFILE:
    case EAGAIN:
        return RPC_RESOURCE_EXHAUSTED;
    case ETIMEDOUT:
        return RPC_DEADLINE_EXCEEDED;
    case ECANCELED:
        return RPC_CANCELED;
    case ENOSYS:
    case EOPNOTSUPP:
        return RPC_UNIMPLEMENTED;
    default:
        return RPC_INTERNAL;
    }
}

int rpc_parse_timeout(const char *value, uint64_t *ret_ms)
{
    return parse_u64_digits(value, strlen(value), LIMIT_TIMEOUT_DIGITS, ret_ms);
}

int rpc_json_quote(struct buf *out, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    int r = buf_append_char(out, '"');
    for (; r == 0 && *s; s++) {
        unsigned char c = (unsigned char) *s;
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char) c};
            r = buf_append(out, e, 2);
        } else if (c < 0x20) {
            char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            r = buf_append(out, e, 6);
        } else {
            r = buf_append_char(out, (char) c);
        }
    }
    return r ? r : buf_append_char(out, '"');
}

/* {"code":"…","message":"…"} */
static void error_json(struct buf *out, enum rpc_code code, const char *message)
{
    (void) buf_printf(out, "{\"code\":\"%s\"", rpc_code_name(code));
    if (message && *message) {
        (void) buf_append_str(out, ",\"message\":");
        (void) rpc_json_quote(out, message);
    }
    (void) buf_append_char(out, '}');
}

static void write_envelope(struct http_req *req, uint8_t flags, const char *payload, size_t len)
{
    uint8_t head[ENVELOPE_HEADER] = {flags, (uint8_t) (len >> 24), (uint8_t) (len >> 16),
                                     (uint8_t) (len >> 8), (uint8_t) len};
    struct buf b;
    buf_init(&b, ENVELOPE_HEADER + len);
    if (buf_append(&b, head, sizeof(head)) == 0 && buf_append(&b, payload, len) == 0)
        (void) http_resp_write(req, b.data, b.len);
    buf_free(&b);
}

static void start_stream_response(struct http_req *req, bool proto)
{
    http_resp_header(req, "Content-Type",
                     proto ? "application/connect+proto" : "application/connect+json");
    (void) http_resp_start(req, 200, -1);
}

/* Which codec and framing a content type selects. */
static int parse_content_type(const char *ct, bool *ret_proto, bool *ret_stream)
{
    if (!ct)
        return -EINVAL;
    size_t n = strcspn(ct, ";");
    while (n > 0 && (ct[n - 1] == ' ' || ct[n - 1] == '\t'))
        n--;
#define CT_IS(lit) (n == STRLEN(lit) && strncasecmp(ct, lit, n) == 0)
    if (CT_IS("application/json"))
        *ret_proto = false, *ret_stream = false;
    else if (CT_IS("application/proto"))
        *ret_proto = true, *ret_stream = false;
    else if (CT_IS("application/connect+json"))
        *ret_proto = false, *ret_stream = true;
    else if (CT_IS("application/connect+proto"))
        *ret_proto = true, *ret_stream = true;
    else
        return -EINVAL;
#undef CT_IS
    return 0;
}

void rpc_reject(struct http_req *req, enum rpc_code code, const char *message)
{
    bool proto = false, stream = false;
    struct buf b;
    buf_init(&b, LIMIT_SMALL_BODY_BYTES);
    (void) parse_content_type(http_req_header(req, "content-type"), &proto, &stream);
    if (stream) {
        (void) buf_append_str(&b, "{\"error\":");
        error_json(&b, code, message);
        (void) buf_append_char(&b, '}');
        start_stream_response(req, proto);
        write_envelope(req, ENVELOPE_FLAG_END_STREAM, b.data, b.len);
        (void) http_resp_finish(req);
    } else {
        error_json(&b, code, message);
        (void) http_resp_simple(req, rpc_code_http_status(code), "application/json", b.data, b.len);
    }
    buf_free(&b);
}

/* --- call lifecycle -------------------------------------------------------------------------- */

static void call_free(struct rpc_call *call)
{
    if (call->request)
        protobuf_c_message_free_unpacked(call->request, NULL);
    buf_free(&call->envelope);
    if (call->ctx_free)
        call->ctx_free(call->ctx);
    free(call);
}

static void on_timer_closed(uv_handle_t *h)
{
    struct rpc_call *call = h->data;
    if (--call->pending_closes == 0)
        call_free(call);
}

/* Releases the call: HTTP side already finished or gone. Timers close asynchronously. */
static void call_release(struct rpc_call *call)
{
    call->state = CALL_DONE;
    call->req = NULL;
    if (!call->timers_live) {
        call_free(call);
        return;
    }
    call->timers_live = false;
    call->pending_closes = 2;
    uv_close((uv_handle_t *) &call->deadline_timer, on_timer_closed);
    uv_close((uv_handle_t *) &call->keepalive_timer, on_timer_closed);
}

/* Writes the final error or end frame and finishes the HTTP response. */
static void call_finish(struct rpc_call *call, enum rpc_code code, const char *message)
{
    struct http_req *req = call->req;
    if (!req || call->state == CALL_DONE)
        return;
    if (call->stream_response) {
        struct buf b;
        buf_init(&b, LIMIT_SMALL_BODY_BYTES);
        if (code == RPC_OK) {
            (void) buf_append_str(&b, "{}");
        } else {
            (void) buf_append_str(&b, "{\"error\":");
            error_json(&b, code, message);
            (void) buf_append_char(&b, '}');
        }
        if (!call->started) {
            start_stream_response(req, call->proto);
            call->started = true;
        }
        write_envelope(req, ENVELOPE_FLAG_END_STREAM, b.data, b.len);
        buf_free(&b);
        (void) http_resp_finish(req);
    } else if (code != RPC_OK) {
        struct buf b;
        buf_init(&b, LIMIT_SMALL_BODY_BYTES);
        error_json(&b, code, message);
        (void) http_resp_simple(req, rpc_code_http_status(code), "application/json", b.data, b.len);
        buf_free(&b);
    }
    call_release(call);
}

static void call_cancel(struct rpc_call *call, enum rpc_code why, const char *message)
{
    if (call->state == CALL_DONE)
        return;
    enum call_state was = call->state;
    call->state = CALL_DONE; /* handler calls to rpc_end inside on_cancel are ignored */
    if (was == CALL_ACTIVE && call->method->on_cancel)
        call->method->on_cancel(call, why);
    call->state = was;
    call_finish(call, why, message);
}

static void on_deadline(uv_timer_t *t)
{
    struct rpc_call *call = t->data;
    call_cancel(call, RPC_DEADLINE_EXCEEDED, "context deadline exceeded");
}

static void on_keepalive(uv_timer_t *t)
{
    struct rpc_call *call = t->data;
    if (call->state != CALL_ACTIVE || !call->method->keepalive)
        return;
    (void) rpc_send(call, call->method->keepalive);
}

static void on_http_abort(struct http_req *req)
{
    struct rpc_call *call = req->data;
    call->req = NULL;
    if (call->state == CALL_DONE)
        return;
    enum call_state was = call->state;
    call->state = CALL_DONE;
    if (was == CALL_ACTIVE && call->method->on_cancel)
        call->method->on_cancel(call, RPC_CANCELED);
    call_release(call);
}

static void on_http_drain(struct http_req *req)
{
    struct rpc_call *call = req->data;
    if (call->state == CALL_ACTIVE && call->method->on_drain)
        call->method->on_drain(call);
}

static void call_decode_fail(struct rpc_call *call, const char *what, char *err)
{
    char msg[512];
    (void) snprintf(msg, sizeof(msg), "%s: %s", what, err ? err : "malformed message");
    free(err);
    call_finish(call, RPC_INVALID_ARGUMENT, msg);
}

static int decode(struct rpc_call *call, const char *data, size_t len, ProtobufCMessage **ret,
                  char **err)
{
    if (call->proto)
        return pbproto_decode(call->method->input, (const uint8_t *) data, len, ret, err);
    return pbjson_decode(call->method->input, data, len, ret, err);
}

/* Runs the handler for a unary or server-stream request whose body is complete. */
static void call_dispatch(struct rpc_call *call)
{
    struct http_req *req = call->req;
    const char *data = req->body.data ? req->body.data : "";
    size_t len = req->body.len;
    char *err = NULL;

    if (call->method->kind == RPC_SERVER_STREAM) {
        /* Exactly one envelope. */
        if (len < ENVELOPE_HEADER) {
            call_finish(call, RPC_INVALID_ARGUMENT, "protocol error: incomplete envelope");
            return;
        }
        uint8_t flags = (uint8_t) data[0];
        size_t n = ((size_t) (uint8_t) data[1] << 24) | ((size_t) (uint8_t) data[2] << 16) |
                   ((size_t) (uint8_t) data[3] << 8) | (size_t) (uint8_t) data[4];
        if (flags & ENVELOPE_FLAG_COMPRESSED) {
            call_finish(call, RPC_INTERNAL,
                        "protocol error: received compressed message without "
                        "Connect-Content-Encoding");
            return;
        }
        if (flags != 0 || n != len - ENVELOPE_HEADER) {
            call_finish(call, RPC_INVALID_ARGUMENT,
                        "protocol error: expected exactly one request envelope");
            return;
        }
        data += ENVELOPE_HEADER;
        len = n;
    }
    if (decode(call, data, len, &call->request, &err) < 0) {
        call_decode_fail(call, "invalid request", err);
        return;
    }
    call->state = CALL_ACTIVE;
    call->in_handler = true;
    call->method->handle(call, call->request);
    call->in_handler = false;
}

static void on_http_complete(struct http_req *req)
{
    struct rpc_call *call = req->data;
    if (call->state != CALL_READING && call->method->kind != RPC_CLIENT_STREAM)
        return;
    if (call->method->kind == RPC_CLIENT_STREAM) {
        if (call->state == CALL_DONE)
            return;
        if (call->envelope.len > 0) {
            call_finish(call, RPC_INVALID_ARGUMENT, "protocol error: incomplete envelope");
            return;
        }
        call->state = CALL_ACTIVE;
        if (call->method->on_end)
            call->method->on_end(call);
        return;
    }
    call_dispatch(call);
}

/* Client streams: split the body into envelopes as it arrives. */
static int on_http_body(struct http_req *req, const char *data, size_t len)
{
    struct rpc_call *call = req->data;
    if (call->state == CALL_DONE)
        return 0;
    while (len > 0) {
        struct buf *e = &call->envelope;
        size_t need;
        if (e->len < ENVELOPE_HEADER) {
            need = ENVELOPE_HEADER - e->len;
        } else {
            size_t n = ((size_t) (uint8_t) e->data[1] << 24) |
                       ((size_t) (uint8_t) e->data[2] << 16) |
                       ((size_t) (uint8_t) e->data[3] << 8) | (size_t) (uint8_t) e->data[4];
            if (n > LIMIT_RPC_MESSAGE_BYTES) {
                call_finish(call, RPC_RESOURCE_EXHAUSTED, "message larger than the limit");
                return 0;
            }
            need = ENVELOPE_HEADER + n - e->len;
        }
        size_t take = MIN(need, len);
        if (buf_append(e, data, take) < 0) {
            call_finish(call, RPC_RESOURCE_EXHAUSTED, "message larger than the limit");
            return 0;
        }
        data += take;
        len -= take;
        if (take < need)
            break;
        if (e->len < ENVELOPE_HEADER)
            continue;
        size_t n = ((size_t) (uint8_t) e->data[1] << 24) | ((size_t) (uint8_t) e->data[2] << 16) |
                   ((size_t) (uint8_t) e->data[3] << 8) | (size_t) (uint8_t) e->data[4];
        if (e->len < ENVELOPE_HEADER + n)
            continue;
        if (e->data[0] != 0) {
            call_finish(call, RPC_INVALID_ARGUMENT,
                        (e->data[0] & ENVELOPE_FLAG_COMPRESSED)
                                ? "protocol error: compressed messages are not supported"
                                : "protocol error: unexpected envelope flags");
            return 0;
        }
        ProtobufCMessage *msg = NULL;
        char *err = NULL;
        if (decode(call, e->data + ENVELOPE_HEADER, n, &msg, &err) < 0) {
            call_decode_fail(call, "invalid request message", err);
            return 0;
        }
        buf_reset(e);
        call->state = CALL_ACTIVE;
        call->in_handler = true;
        call->method->on_message(call, msg);
        call->in_handler = false;
        protobuf_c_message_free_unpacked(msg, NULL);
        if (call->state == CALL_DONE)
            return 0;
    }
    return 0;
}

static const struct http_req_ops collect_ops = {
        .on_complete = on_http_complete,
        .on_abort = on_http_abort,
        .on_drain = on_http_drain,
};

static const struct http_req_ops stream_in_ops = {
        .on_body = on_http_body,
        .on_complete = on_http_complete,
        .on_abort = on_http_abort,
        .on_drain = on_http_drain,
};

void rpc_serve(struct http_req *req, const struct rpc_method *method, void *ctx,
               void (*ctx_free)(void *ctx))
{
    bool proto, stream;
    bool want_stream = method->kind != RPC_UNARY;
    if (req->method != HMETHOD_POST) {
        http_resp_header(req, "Allow", "POST");
        (void) http_resp_simple(req, 405, "text/plain; charset=utf-8", "405 method not allowed\n",
                                23);
        if (ctx_free)
            ctx_free(ctx);
        return;
    }
    if (parse_content_type(http_req_header(req, "content-type"), &proto, &stream) < 0 ||
        stream != want_stream) {
        http_resp_header(req, "Accept-Post",
                         want_stream ? "application/connect+json, application/connect+proto"
                                     : "application/json, application/proto");
        (void) http_resp_simple(req, 415, NULL, NULL, 0);
        if (ctx_free)
            ctx_free(ctx);
        return;
    }
    struct rpc_call *call = xcalloc(1, sizeof(*call));
    call->req = req;
    call->method = method;
    call->ctx = ctx;
    call->ctx_free = ctx_free;
    call->proto = proto;
    /* Server and client streams both answer with envelopes and an end-of-stream frame. */
    call->stream_response = method->kind != RPC_UNARY;
    buf_init(&call->envelope, ENVELOPE_HEADER + LIMIT_RPC_MESSAGE_BYTES);
    req->data = call;

    /* guestd answers identity only (no SDK compresses RPCs); say so rather than misparse. */
    const char *enc =
            http_req_header(req, want_stream ? "connect-content-encoding" : "content-encoding");
    if (enc && strcasecmp(enc, "identity") != 0) {
        char msg[160];
        (void) snprintf(msg, sizeof(msg),
                        "unknown compression \"%.64s\": supported encodings are identity", enc);
        call_finish(call, RPC_UNIMPLEMENTED, msg);
        return;
    }

    const char *version = http_req_header(req, "connect-protocol-version");
    if (version && !streq(version, "1")) {
        call_finish(call, RPC_INVALID_ARGUMENT, "connect-protocol-version must be \"1\"");
        return;
    }

    uv_loop_t *loop = http_req_loop(req);
    const char *timeout = http_req_header(req, "connect-timeout-ms");
    uint64_t timeout_ms = 0;
    if (timeout && rpc_parse_timeout(timeout, &timeout_ms) < 0) {
        char msg[128];
        (void) snprintf(msg, sizeof(msg), "protocol error: invalid connect timeout");
        call_finish(call, RPC_INVALID_ARGUMENT, msg);
        return;
    }
    (void) uv_timer_init(loop, &call->deadline_timer);
    (void) uv_timer_init(loop, &call->keepalive_timer);
    call->deadline_timer.data = call;
    call->keepalive_timer.data = call;
    call->timers_live = true;
    if (timeout) {
        call->deadline = uv_now(loop) + timeout_ms;
        (void) uv_timer_start(&call->deadline_timer, on_deadline, timeout_ms, 0);
    }
    if (method->kind == RPC_SERVER_STREAM && method->keepalive) {
        const char *ka = http_req_header(req, "keepalive-ping-interval");
        uint32_t secs = LIMIT_KEEPALIVE_DEFAULT_S;
        /* Missing, invalid or zero intervals fall back to the default (envd would panic on 0). */
        if (ka && (parse_u32(ka, &secs) < 0 || secs < LIMIT_KEEPALIVE_MIN_S))
            secs = LIMIT_KEEPALIVE_DEFAULT_S;
        call->keepalive_ms = (uint64_t) secs * 1000;
        (void) uv_timer_start(&call->keepalive_timer, on_keepalive, call->keepalive_ms,
                              call->keepalive_ms);
    }
    if (method->kind == RPC_CLIENT_STREAM)
        http_req_set_ops(req, &stream_in_ops, 0);
    else
        http_req_set_ops(req, &collect_ops, LIMIT_RPC_MESSAGE_BYTES + ENVELOPE_HEADER);
}

void *rpc_call_ctx(const struct rpc_call *call)
{
    return call->ctx;
}

void *rpc_call_data(const struct rpc_call *call)
{
    return call->data;
}

void rpc_call_set_data(struct rpc_call *call, void *data)
{
    call->data = data;
}

const struct http_req *rpc_call_http(const struct rpc_call *call)
{
    return call->req;
}

uint64_t rpc_call_deadline(const struct rpc_call *call)
{
    return call->deadline;
}

bool rpc_call_has_deadline(const struct rpc_call *call)
{
    return call->deadline != 0;
}

bool rpc_call_congested(const struct rpc_call *call)
{
    return call->req && http_req_write_queued(call->req) > LIMIT_WRITE_HIGH_WATER;
}

bool rpc_call_is_proto(const struct rpc_call *call)
{
    return call->proto;
}

static int encode(struct rpc_call *call, const ProtobufCMessage *msg, struct buf *out)
{
    return call->proto ? pbproto_encode(msg, out) : pbjson_encode(msg, out);
}

int rpc_reply(struct rpc_call *call, const ProtobufCMessage *resp)
{
    if (call->state != CALL_ACTIVE || !call->req)
        return -ECANCELED;
    struct buf b;
    buf_init(&b, LIMIT_RPC_MESSAGE_BYTES);
    int r = encode(call, resp, &b);
    if (r < 0) {
        buf_free(&b);
        call_finish(call, RPC_INTERNAL, "response too large to encode");
        return r;
    }
    if (call->method->kind == RPC_CLIENT_STREAM) {
        /* Client streams answer with one envelope and an end-of-stream frame. */
        if (!call->started) {
            start_stream_response(call->req, call->proto);
            call->started = true;
        }
        write_envelope(call->req, 0, b.data, b.len);
        buf_free(&b);
        call_finish(call, RPC_OK, NULL);
        return 0;
    }
    (void) http_resp_simple(call->req, 200, call->proto ? "application/proto" : "application/json",
                            b.data, b.len);
    buf_free(&b);
    call_release(call);
    return 0;
}

int rpc_send(struct rpc_call *call, const ProtobufCMessage *msg)
{
    if (call->state != CALL_ACTIVE || !call->req)
        return -ECANCELED;
    struct buf b;
    buf_init(&b, LIMIT_RPC_MESSAGE_BYTES);
    int r = encode(call, msg, &b);
    if (r < 0) {
        buf_free(&b);
        return r;
    }
    if (!call->started) {
        start_stream_response(call->req, call->proto);
        call->started = true;
    }
    write_envelope(call->req, 0, b.data, b.len);
    buf_free(&b);
    /* Any message counts as a sign of life: restart the keepalive interval. */
    if (call->keepalive_ms && msg != call->method->keepalive)
        (void) uv_timer_again(&call->keepalive_timer);
    return 0;
}

void rpc_end(struct rpc_call *call, enum rpc_code code, const char *fmt, ...)
{
    char msg[1024] = "";
    if (call->state != CALL_ACTIVE)
        return;
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        (void) vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
    }
    if (!call->req) {
        call_release(call);
        return;
    }
    call_finish(call, code, msg);
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The Connect protocol (v1) over HTTP/1.1: unary calls, server streams and client streams, with
 * the JSON and binary proto codecs.
 *
 * A method handler receives a struct rpc_call. It answers a unary or client-stream call once
 * with rpc_reply() or rpc_fail(); a server stream sends messages with rpc_send() and ends with
 * rpc_end() (code RPC_OK or an error). After that the call belongs to this module again.
 * If the client disappears or the Connect-Timeout-Ms deadline passes first, `on_cancel` runs
 * instead; the call is ended by this module and freed after on_cancel returns.
 * Stream calls get keepalive messages (the method's `keepalive` message) every
 * Keepalive-Ping-Interval seconds without other messages.
 */
#pragma once

#include <limits.h> /* protobuf-c's generated enums use INT_MAX */
#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>
#include <stdint.h>

#include "base/macro.h"

struct http_req;
struct rpc_call;

enum rpc_kind {
    RPC_UNARY = 0,
    RPC_SERVER_STREAM,
    RPC_CLIENT_STREAM,
};

/* Connect error codes. */
enum rpc_code {
    RPC_OK = 0,
    RPC_CANCELED,
    RPC_UNKNOWN,
    RPC_INVALID_ARGUMENT,
    RPC_DEADLINE_EXCEEDED,
    RPC_NOT_FOUND,
    RPC_ALREADY_EXISTS,
    RPC_PERMISSION_DENIED,
    RPC_RESOURCE_EXHAUSTED,
    RPC_FAILED_PRECONDITION,
    RPC_ABORTED,
    RPC_OUT_OF_RANGE,
    RPC_UNIMPLEMENTED,
    RPC_INTERNAL,
    RPC_UNAVAILABLE,
    RPC_DATA_LOSS,
    RPC_UNAUTHENTICATED,
};

struct rpc_method {
    const char *path; /* "/process.Process/Start" */
    enum rpc_kind kind;
    const ProtobufCMessageDescriptor *input;
    const ProtobufCMessageDescriptor *output;
    /* Unary and server stream: the decoded request (freed after the call ends). */
    void (*handle)(struct rpc_call *call, const ProtobufCMessage *req);
    /* Client stream: each message in order, then on_end once the client has sent all. */
    void (*on_message)(struct rpc_call *call, const ProtobufCMessage *msg);
    void (*on_end)(struct rpc_call *call);
    /* The call ends without the handler: client gone (RPC_CANCELED) or deadline. */
    void (*on_cancel)(struct rpc_call *call, enum rpc_code why);
    /* Queued output fell below the low-water mark after rpc_call_congested() was true. */
    void (*on_drain)(struct rpc_call *call);
    /* Streams: the keepalive message, or NULL for none. */
    const ProtobufCMessage *keepalive;
};

/* Connect code name ("not_found") and the HTTP status a unary error carries. */
const char *rpc_code_name(enum rpc_code code);
int rpc_code_http_status(enum rpc_code code);
/* Maps a -errno to the usual code (ENOENT → not_found, EACCES → permission_denied, …). */
enum rpc_code rpc_code_from_errno(int neg_errno);

/*
 * Serves `req` with `method`. `ctx` is the router's per-request context, handed to the handler
 * through rpc_call_ctx(). Must be called from the HTTP on_request callback.
 */
void rpc_serve(struct http_req *req, const struct rpc_method *method, void *ctx,
               void (*ctx_free)(void *ctx));
/* Ends a request that never reached a method with a Connect error in the right shape for the
 * content type it announced (unary JSON error, or stream end frame). */
void rpc_reject(struct http_req *req, enum rpc_code code, const char *message);

void *rpc_call_ctx(const struct rpc_call *call);
void *rpc_call_data(const struct rpc_call *call);
void rpc_call_set_data(struct rpc_call *call, void *data);
const struct http_req *rpc_call_http(const struct rpc_call *call);
/* Absolute deadline in loop milliseconds, or 0 when none was given. */
uint64_t rpc_call_deadline(const struct rpc_call *call);
bool rpc_call_has_deadline(const struct rpc_call *call);
/* True when the client's connection has more than the high-water mark queued. */
bool rpc_call_congested(const struct rpc_call *call);
bool rpc_call_is_proto(const struct rpc_call *call);

int rpc_reply(struct rpc_call *call, const ProtobufCMessage *resp);
int rpc_send(struct rpc_call *call, const ProtobufCMessage *msg);
void rpc_end(struct rpc_call *call, enum rpc_code code, const char *fmt, ...) _printf_(3, 4);
/* rpc_end for unary calls reads better as: */
#define rpc_fail rpc_end

/* Appends `s` as a JSON string literal (quotes and escapes). */
struct buf;
int rpc_json_quote(struct buf *out, const char *s);

/* Decodes a Connect-Timeout-Ms value: 1-10 digits. -EINVAL otherwise. */
int rpc_parse_timeout(const char *value, uint64_t *ret_ms);

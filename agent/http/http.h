/* SPDX-License-Identifier: Apache-2.0 */
/*
 * HTTP/1.1 server connections on llhttp.
 *
 * A struct http_server accepts connections from listening streams (made by net/) and owns them.
 * Each connection parses requests one at a time; pipelined requests wait in the input buffer
 * until the previous response has finished, so responses always go out in order.
 *
 * For every request the server calls `on_request` once the headers are complete. The handler
 * either answers at once (http_resp_*) or installs body callbacks with http_req_set_ops():
 *   - without ops->on_body the body is collected into req->body, up to the limit given;
 *   - ops->on_complete runs when the whole request has arrived;
 *   - ops->on_abort runs if the connection dies before http_resp_finish(); after it returns the
 *     request is gone and the handler must not touch it again;
 *   - ops->on_drain runs when queued output falls below LIMIT_WRITE_LOW_WATER, for producers
 *     that stopped because http_req_write_queued() was above LIMIT_WRITE_HIGH_WATER.
 * After http_resp_finish() the request belongs to the connection again and may be freed at any
 * moment: the handler must drop its pointer. Streams have no body or write timeout: they may be
 * silent for hours.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "agent-limits.h"
#include "base/buf.h"
#include "base/transport.h"

struct http_server;
struct http_req;
typedef struct uv_loop_s uv_loop_t;
typedef struct uv_stream_s uv_stream_t;

enum http_method {
    HMETHOD_OTHER = 0,
    HMETHOD_GET,
    HMETHOD_HEAD,
    HMETHOD_POST,
    HMETHOD_PUT,
    HMETHOD_DELETE,
    HMETHOD_OPTIONS,
    HMETHOD_PATCH,
    HMETHOD_CONNECT,
};

struct http_header {
    char *name; /* lower-cased */
    char *value;
};

struct http_req_ops {
    int (*on_body)(struct http_req *req, const char *data, size_t len);
    void (*on_complete)(struct http_req *req);
    void (*on_abort)(struct http_req *req);
    void (*on_drain)(struct http_req *req);
};

struct http_req {
    enum http_method method;
    const char *method_name;
    char *target;      /* the raw request target, e.g. "/files?path=a" */
    char *path;        /* target up to '?', not percent-decoded */
    const char *query; /* after '?', or NULL */
    struct http_header *headers;
    size_t n_headers;
    uint8_t http_minor; /* 1.x */
    bool keep_alive;    /* false for "Connection: close" or HTTP/1.0 without keep-alive */
    bool has_body;      /* a body is announced (Content-Length > 0 or chunked) */
    bool body_complete; /* the whole body has been received */
    const struct peer_info *peer;
    struct buf body; /* collected body when no on_body callback is installed */
    void *data;      /* the handler's */
};

typedef void (*http_request_cb)(struct http_req *req, void *userdata);

/* Creates a server on `loop`. Returns 0 or -errno. */
int http_server_new(uv_loop_t *loop, http_request_cb on_request, void *userdata,
                    struct http_server **ret);
/*
 * Accepts one pending connection from `listener` (a listening uv_tcp_t or uv_pipe_t of the given
 * transport). Over the connection cap the connection is accepted and closed at once.
 */
int http_server_accept(struct http_server *srv, uv_stream_t *listener, enum transport transport);
/* Overrides the defaults from agent-limits.h (LIMIT_HEADER_TIMEOUT_MS, LIMIT_IDLE_TIMEOUT_MS,
 * LIMIT_CONNECTIONS); 0 keeps a default. */
void http_server_set_limits(struct http_server *srv, uint64_t header_timeout_ms,
                            uint64_t idle_timeout_ms, size_t max_connections);
/* Number of open connections. */
size_t http_server_connections(const struct http_server *srv);
/*
 * Stops the server: every open connection is closed, aborting requests in progress. `done` runs
 * once the last connection has been freed (possibly before this returns).
 */
void http_server_shutdown(struct http_server *srv, void (*done)(void *userdata), void *userdata);
void http_server_free(struct http_server *srv);

/* Looks up a request header by lower-case name (the first one if repeated), or NULL. */
const char *http_req_header(const struct http_req *req, const char *lname);
/* Counts the occurrences of a header. */
size_t http_req_header_count(const struct http_req *req, const char *lname);
/*
 * Installs body and lifecycle callbacks. `body_max` limits a collected body (ignored with
 * on_body). Call from on_request only. Sends "100 Continue" if the client asked for it.
 */
void http_req_set_ops(struct http_req *req, const struct http_req_ops *ops, size_t body_max);
/* Stops or restarts reading the request body from the socket (backpressure for uploads). */
void http_req_pause(struct http_req *req);
void http_req_resume(struct http_req *req);
/* Bytes queued for the peer and not yet written. */
size_t http_req_write_queued(const struct http_req *req);
/* The event loop serving the request. */
uv_loop_t *http_req_loop(const struct http_req *req);
/* Milliseconds since the loop's epoch when the request headers completed. */
uint64_t http_req_start_ms(const struct http_req *req);

/* Adds a response header (copied). Only before http_resp_start(). */
void http_resp_header(struct http_req *req, const char *name, const char *value);
/*
 * Sends the status line and headers. `content_length` < 0 selects chunked encoding. Unless the
 * handler set one, adds Content-Length/Transfer-Encoding, Date-less minimal headers, and
 * "Connection: close" when the connection will close.
 */
int http_resp_start(struct http_req *req, int status, int64_t content_length);
/* Writes body bytes (copied; framed as one chunk when chunked). Suppressed for HEAD. */
int http_resp_write(struct http_req *req, const void *data, size_t len);
/* Ends the response (terminating chunk when chunked). The request must not be used after. */
int http_resp_finish(struct http_req *req);
/* Start + write + finish in one call. */
int http_resp_simple(struct http_req *req, int status, const char *content_type, const void *body,
                     size_t len);
/* True once http_resp_start() has run. */
bool http_resp_started(const struct http_req *req);

/* Reason phrase for a status code ("OK", "Not Found"), or "Unknown". */
const char *http_status_text(int status);
/*
 * Finds `name` in a query string ("a=1&b=2") and returns its percent-decoded value in a new
 * string (NULL if absent). Returns -EINVAL for bad escapes or a decoded NUL byte.
 */
int http_query_get(const char *query, const char *name, char **ret_value);
/* Case-insensitive comparison of a header value against a token list ("keep-alive, Upgrade"). */
bool http_header_has_token(const char *value, const char *token);

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The project's one HTTP/1.1 + Connect client (guestctl, the in-VM test suite and the
 * benchmarks all use it; there is no second client). It is deliberately simple and blocking:
 *
 *  - A `struct client` owns at most one connection to one address and runs one request at a
 *    time on it. The connection is kept alive between requests and re-dialled transparently
 *    when the server closed it while idle. Not thread-safe: one client per thread.
 *  - Sockets are non-blocking underneath, and every wait goes through poll() with a timeout,
 *    so the calls behave as blocking calls that fail with -ETIMEDOUT instead of hanging: a
 *    connect timeout bounds dialling (including the Firecracker handshake and its retries),
 *    and an I/O timeout bounds every single wait for the peer (it is an inactivity timeout,
 *    not a deadline for a whole request). All fds are CLOEXEC and sends use MSG_NOSIGNAL.
 *  - Addresses: `unix:PATH` (`unix:@NAME` for the abstract namespace), `tcp:HOST:PORT` (HOST is
 *    a numeric IPv4 address, `[IPv6]` or the literal `localhost`; names are never resolved),
 *    `vsock:CID:PORT`, and `fc:UDS_PATH:PORT` (Firecracker/Cloud Hypervisor hybrid vsock: the
 *    client connects to the Unix socket, writes `CONNECT PORT\n` and reads `OK N\n`).
 *  - The library never logs. Every fallible function returns 0 (or a count) on success and a
 *    negative errno on failure. After a transport or protocol failure the connection is
 *    closed; the next request dials again.
 *
 * Errors of the Connect layer (client_unary, client_stream_*):
 *  - -EREMOTEIO: the server answered with a Connect error; `err` holds its code, message and
 *    HTTP status. Only this value means "the server said no".
 *  - -EPROTO: the server broke the protocol (bad framing, wrong content type, undecodable
 *    message, stream without end-of-stream frame: message "missing EndStreamResponse").
 *  - -E2BIG: a response exceeded one of the limits below.
 *  - -ETIMEDOUT, -ECONNREFUSED, -ECONNRESET, -EPIPE, …: transport failures.
 *  - -EINVAL: bad arguments (for example a header value containing CR or LF).
 *  - -EBUSY: a stream is open on this client.
 * Whenever a Connect call fails and `err` is not NULL, `err` is filled in as well: for local
 * failures with the code connect-go would report (unavailable, internal, deadline_exceeded,
 * resource_exhausted, …), http_status 0 unless a response was received, and a description.
 *
 * Ownership: strings passed in are copied or used only during the call. A response head
 * (`struct client_response`) is borrowed from the client until the next request starts or the
 * client is freed. Decoded messages belong to the caller, who frees them with
 * protobuf_c_message_free_unpacked(msg, NULL). A `struct client_stream` borrows its client: the
 * client must outlive it, and no other request may run on the client while it is open.
 */
#pragma once

#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "base/buf.h"
#include "base/cleanup.h"

/* Default connect timeout: long enough for a VM that is still booting its agent. */
#define CLIENT_DEFAULT_CONNECT_TIMEOUT_MS 10000
/* Default I/O inactivity timeout: generous, a loaded VM may stall for seconds. */
#define CLIENT_DEFAULT_IO_TIMEOUT_MS      60000
/* Default wait for Firecracker's `OK` ack, as firecracker-go-sdk (Kata waits up to 10 s). */
#define CLIENT_DEFAULT_FC_ACK_TIMEOUT_MS  1000
/* A timeout value meaning "wait forever" (for streams that may be silent for hours). */
#define CLIENT_TIMEOUT_INFINITE           (-1)

/* Longest response head (status line and headers) accepted, in bytes. */
#define CLIENT_MAX_HEADER_BYTES     (64 * 1024)
/* Most response header fields accepted; guestd sends about ten. */
#define CLIENT_MAX_HEADERS          100
/*
 * Largest Connect message accepted or sent: one envelope payload, a unary response body or a
 * request message. 16 MiB matches what servers commonly allow and bounds the memory one
 * response can make us allocate.
 */
#define CLIENT_MAX_MESSAGE_BYTES    (16 * 1024 * 1024)
/* Largest unary error body read to extract a Connect error; larger ones use the HTTP status. */
#define CLIENT_MAX_ERROR_BODY_BYTES (64 * 1024)

enum client_addr_kind {
    CLIENT_ADDR_UNIX,
    CLIENT_ADDR_TCP,
    CLIENT_ADDR_VSOCK,
    CLIENT_ADDR_FC,
};

/* A parsed address. Public so that callers can inspect and print it. */
struct client_addr {
    enum client_addr_kind kind;
    /* Socket address to connect to: the Unix socket itself for CLIENT_ADDR_FC. */
    struct sockaddr_storage sa;
    socklen_t sa_len;
    /* Guest vsock port requested with `CONNECT` (CLIENT_ADDR_FC only). */
    uint32_t fc_port;
    /* Value of the Host header: `HOST:PORT` for TCP, `localhost` otherwise. */
    char host[64];
};

/*
 * Parses one of the address forms listed above into *ret. Returns -EINVAL for an unknown
 * scheme, a missing or non-numeric part, a port out of range, a host name other than
 * `localhost`, or a Unix path that is empty or too long for sockaddr_un.
 */
int client_addr_parse(const char *s, struct client_addr *ret);

/* Options for client_new(). Zero-initialise; 0 means "the default" for every timeout. */
struct client_options {
    int connect_timeout_ms; /* dialling, with retries (fc:), in total */
    int io_timeout_ms;      /* each wait for the peer; CLIENT_TIMEOUT_INFINITE disables it */
    int fc_ack_timeout_ms;  /* each wait for Firecracker's `OK` line */
    const char *token;      /* sent as X-Access-Token; copied */
    const char *user;       /* sent as Authorization: Basic base64("user:"); copied */
};

struct client;

/* Creates a client for `address` (see client_addr_parse). Does not connect yet. */
int client_new(const char *address, const struct client_options *opts, struct client **ret);
/* Closes the connection and frees the client. Accepts NULL; returns NULL. */
struct client *client_free(struct client *c);
DEFINE_CLEANUP_FUNC(struct client *, client_free);
#define _cleanup_client_ _cleanup_(client_freep)

/* Replaces the access token (NULL removes it). -EINVAL if it contains control characters. */
int client_set_token(struct client *c, const char *token);
/* Replaces the Basic-auth user (NULL removes it). -EINVAL for ':' or control characters. */
int client_set_user(struct client *c, const char *user);
/* Changes the I/O timeout for the following calls (0 = default, CLIENT_TIMEOUT_INFINITE). */
void client_set_io_timeout(struct client *c, int timeout_ms);
/* The parsed address the client dials. */
const struct client_addr *client_get_addr(const struct client *c);

/*
 * Dials now unless a connection is already open (requests do this on their own). Useful to
 * wait for an agent to come up. Returns -ETIMEDOUT, -ECONNREFUSED, … on failure.
 */
int client_connect(struct client *c);
/* Closes the connection, if any; the next request dials again. */
void client_disconnect(struct client *c);
/* Number of successful dials so far (lets tests and benchmarks check keep-alive reuse). */
unsigned client_get_dial_count(const struct client *c);

/* Plain HTTP/1.1 */

struct client_header {
    const char *name;
    const char *value;
};

/* Request flags. */
enum {
    /* Stream the body with client_request_write() and client_request_finish() (chunked). */
    CLIENT_REQUEST_CHUNKED = 1 << 0,
    /* Do not send X-Access-Token and Authorization even if the client has them. */
    CLIENT_REQUEST_NO_AUTH = 1 << 1,
};

struct client_request {
    const char *method; /* "GET", "POST", … */
    const char *target; /* origin-form path and query, already percent-encoded */
    const struct client_header *headers;
    size_t n_headers;
    const void *body; /* sent with Content-Length unless CLIENT_REQUEST_CHUNKED */
    size_t body_len;
    unsigned flags;
};

/* The head of a response: borrowed from the client until the next request or client_free. */
struct client_response {
    int status;
    const char *reason;
    const struct client_header *headers;
    size_t n_headers;
    /* Content-Length, or -1 when the body is chunked or runs until the server closes. */
    int64_t content_length;
};

/*
 * Sends a request head (and its body unless CLIENT_REQUEST_CHUNKED), dialling first if needed.
 * Adds Host, User-Agent, the auth headers and the framing header; `req->headers` must not
 * contain those framing headers. An unread previous response is discarded by closing the
 * connection. -EINVAL for a method, target or header containing CR, LF or other control bytes;
 * -EBUSY while a stream is open on the client.
 */
int client_request_start(struct client *c, const struct client_request *req);
/* Sends `n` bytes as one chunk of a CLIENT_REQUEST_CHUNKED body (n == 0 sends nothing). */
int client_request_write(struct client *c, const void *p, size_t n);
/* Ends a chunked request body. A no-op for other requests. */
int client_request_finish(struct client *c);
/*
 * Reads the response head (skipping interim 1xx responses) into *ret. -EPROTO for a malformed
 * head, -E2BIG above CLIENT_MAX_HEADER_BYTES or CLIENT_MAX_HEADERS.
 */
int client_response_start(struct client *c, const struct client_response **ret);
/*
 * Reads up to `n` (> 0) bytes of the response body (de-chunked). Returns the count, 0 at the end
 * of the body (again on every later call), or a negative errno: -EPROTO for bad chunking,
 * -ECONNRESET when the connection closed before the framing said the body ended. Reads of
 * 16 KiB or more go straight from the socket into `p`.
 */
ssize_t client_response_read(struct client *c, void *p, size_t n);
/*
 * Appends the rest of the body to `out` (NULL discards it); -E2BIG (and the connection is
 * closed) if the body does not fit within out->max.
 */
int client_response_read_all(struct client *c, struct buf *out);
/* Case-insensitive header lookup; NULL when absent. Returns the first field of that name. */
const char *client_response_header(const struct client_response *r, const char *name);
/*
 * One round trip: client_request_start() (the request must not be chunked), the response head
 * and the whole body appended to `body` (bounded by body->max; NULL discards it). *ret (may be
 * NULL) is borrowed as above.
 */
int client_fetch(struct client *c, const struct client_request *req, struct buf *body,
                 const struct client_response **ret);

/* Connect protocol */

enum client_codec {
    CLIENT_CODEC_JSON,  /* application/json, application/connect+json */
    CLIENT_CODEC_PROTO, /* application/proto, application/connect+proto */
};

/* Per-call options; NULL or zero-initialised means JSON, no deadline, no extra headers. */
struct client_call_options {
    enum client_codec codec;
    uint32_t timeout_ms; /* sent as Connect-Timeout-Ms when not 0 */
    const struct client_header *headers;
    size_t n_headers;
};

/* A failed call. Zero-initialise before first use; release with client_error_done(). */
struct client_error {
    int http_status; /* 0 when no HTTP response was involved */
    char *code;      /* Connect code name, e.g. "not_found" */
    char *message;   /* never NULL once set; may be "" */
};

void client_error_done(struct client_error *e);

/*
 * connect-es's codeFromHttpStatus: the Connect code for an HTTP status when the body carries
 * no Connect error (400 internal, 401 unauthenticated, 403 permission_denied,
 * 404 unimplemented, 429/502/503/504 unavailable, else unknown).
 */
const char *client_code_from_http_status(int status);

/*
 * Unary call: POSTs `req` to `procedure` (the full path, e.g. "/process.Process/List") and
 * decodes the answer as a new `resp_desc` message into *ret_resp. Errors as described above;
 * `err` may be NULL.
 */
int client_unary(struct client *c, const char *procedure, const struct client_call_options *opts,
                 const ProtobufCMessage *req, const ProtobufCMessageDescriptor *resp_desc,
                 struct client_error *err, ProtobufCMessage **ret_resp);

struct client_stream;

/*
 * Server stream: sends `req` as the one request envelope and reads the response head. Messages
 * then come from client_stream_recv(). A Connect error answered instead of a stream (non-200)
 * fails here with -EREMOTEIO.
 */
int client_stream_open_server(struct client *c, const char *procedure,
                              const struct client_call_options *opts, const ProtobufCMessage *req,
                              const ProtobufCMessageDescriptor *resp_desc, struct client_error *err,
                              struct client_stream **ret);
/*
 * Client stream: sends the request head with a chunked body; the caller then sends messages
 * with client_stream_send(), ends with client_stream_close_send() and reads the single answer
 * with client_stream_recv() (or does both with client_stream_close_and_recv()).
 */
int client_stream_open_client(struct client *c, const char *procedure,
                              const struct client_call_options *opts,
                              const ProtobufCMessageDescriptor *resp_desc, struct client_error *err,
                              struct client_stream **ret);
/*
 * Sends one message as one envelope in one chunk. If the server answered early (typically
 * with an error) and closed, returns that answer's error when it can be read.
 */
int client_stream_send(struct client_stream *s, const ProtobufCMessage *msg,
                       struct client_error *err);
/* Ends the request body of a client stream and reads the response head. */
int client_stream_close_send(struct client_stream *s, struct client_error *err);
/*
 * Receives the next message. Returns 1 and sets *ret_msg, or 0 once the end-of-stream frame
 * said `{}` (the connection is then ready for reuse), or a negative errno: -EREMOTEIO for an
 * end-of-stream error, -EPROTO for a compressed frame, bad flags, an undecodable message,
 * trailing data or a body that ended without end-of-stream ("missing EndStreamResponse"),
 * -E2BIG for an envelope above CLIENT_MAX_MESSAGE_BYTES. Calling it again after the end
 * returns the same result.
 */
int client_stream_recv(struct client_stream *s, struct client_error *err,
                       ProtobufCMessage **ret_msg);
/*
 * client_stream_close_send() and then the one response message of a client stream: exactly
 * one message followed by `{}` (-EPROTO otherwise).
 */
int client_stream_close_and_recv(struct client_stream *s, struct client_error *err,
                                 ProtobufCMessage **ret_msg);
/* The response head of an open stream (NULL before it was read). Borrowed from the stream. */
const struct client_response *client_stream_response(const struct client_stream *s);
/* Frees a stream. Closing it before the end of the stream closes the client's connection. */
struct client_stream *client_stream_free(struct client_stream *s);
DEFINE_CLEANUP_FUNC(struct client_stream *, client_stream_free);
#define _cleanup_client_stream_ _cleanup_(client_stream_freep)

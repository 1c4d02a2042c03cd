/* SPDX-License-Identifier: Apache-2.0 */
/*
 * HTTP/1.1 connections: accept, llhttp glue, limits, timers, in-order responses, writes.
 *
 * Input bytes live in conn->in. Every byte has an absolute offset in the connection's input
 * stream; conn->in_abs is the offset of in.data[0]. Parsed bytes are consumed after each
 * llhttp_execute() except those we must still look at: the header section of the request being
 * parsed (to reject obs-fold, which llhttp 8.1 accepts) and the two bytes after a chunk's data
 * (llhttp 8.1 skips them without checking that they are CRLF, a request smuggling vector).
 *
 * A connection is freed only in its last close callback; llhttp callbacks never free it, they
 * mark it closing, so the execute loop above them stays valid.
 */
#include <errno.h>
#include <linux/vm_sockets.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <llhttp.h>
#include <uv.h>

#include "base/alloc.h"
#include "base/log.h"
#include "base/macro.h"
#include "http/http.h"

/* Offsets past this value mean "keep nothing back" when consuming input. */
#define KEEP_NONE UINT64_MAX

enum timer_mode {
    TIMER_OFF = 0,
    TIMER_IDLE,
    TIMER_HEADERS,
};

struct conn;

struct req_impl {
    struct http_req pub;
    struct conn *conn;
    const struct http_req_ops *ops;
    size_t body_max;
    struct buf resp_headers;
    uint64_t start_ms;
    uint64_t discarded;
    bool ops_set;
    bool expect_continue;
    bool resp_started;
    bool resp_finished;
    bool resp_chunked;
    bool above_high_water;
    bool paused;
    bool headers_done;
    size_t headers_cap;
};

struct conn {
    struct http_server *srv;
    struct conn *prev, *next;
    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } h;
    uv_timer_t timer;
    int pending_closes;
    bool closing;
    bool reading;
    bool in_execute;
    bool parser_paused;
    bool want_close;
    enum timer_mode timer_mode;

    llhttp_t parser;
    llhttp_settings_t *settings;
    struct buf in;
    uint64_t in_abs;     /* absolute offset of in.data[0] */
    uint64_t parsed_abs; /* every byte before this offset has been given to llhttp */
    uint64_t keep_from;  /* do not consume input at or after this absolute offset */
    const char *exec_base;
    uint64_t exec_abs;

    /* Header parsing state of the current request. */
    struct buf hname, hvalue;
    struct buf url;
    bool value_seen;       /* a non-empty chunk of the current value arrived */
    uint64_t last_end_abs; /* end of the last header field or value chunk */
    uint64_t msg_start_abs;
    bool close_when_flushed; /* close once queued output is written, whatever the request */
    size_t header_bytes;
    int error_status; /* status to answer a parse error with (0: 400) */
    const char *error_text;

    /* Chunked body checks. */
    uint64_t chunk_size;
    uint64_t chunk_end_abs;

    struct req_impl *req;
    size_t write_queued;
    struct peer_info peer;
};

struct http_server {
    uv_loop_t *loop;
    http_request_cb on_request;
    void *userdata;
    llhttp_settings_t settings;
    struct conn *conns;
    size_t n_conns;
    uint64_t header_timeout_ms;
    uint64_t idle_timeout_ms;
    size_t max_connections;
    bool shutting_down;
    uv_timer_t drain_timer;
    bool drain_timer_live;
    void (*shutdown_done)(void *userdata);
    void *shutdown_data;
};

struct write_req {
    uv_write_t w;
    struct conn *conn;
    size_t len;
    char data[];
};

static void conn_close(struct conn *c);
static void on_drain_timer_closed(uv_handle_t *h);
static void conn_process_input(struct conn *c);
static void req_destroy(struct req_impl *r);

static inline struct conn *conn_of_parser(llhttp_t *p)
{
    return container_of(p, struct conn, parser);
}

static uint64_t abs_of(const struct conn *c, const char *p)
{
    return c->exec_abs + (uint64_t) (p - c->exec_base);
}

/* Returns the input byte at absolute offset `abs`, or -1 if it is no longer (or not yet) held. */
static int byte_at(const struct conn *c, uint64_t abs)
{
    if (abs < c->in_abs || abs >= c->in_abs + c->in.len)
        return -1;
    return (unsigned char) c->in.data[abs - c->in_abs];
}

/* --- timers ---------------------------------------------------------------------------------- */

static void on_timer(uv_timer_t *t)
{
    struct conn *c = container_of(t, struct conn, timer);
    if (c->timer_mode == TIMER_HEADERS && !c->closing) {
        static const char resp[] = "HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain\r\n"
                                   "Content-Length: 16\r\nConnection: close\r\n\r\n"
                                   "request timeout\n";
        log_debug("%s: request headers not complete in time", c->peer.addr);
        uv_buf_t b = uv_buf_init((char *) resp, sizeof(resp) - 1);
        (void) uv_try_write(&c->h.stream, &b, 1);
    }
    conn_close(c);
}

static void timer_set(struct conn *c, enum timer_mode mode)
{
    if (c->closing)
        return;
    c->timer_mode = mode;
    if (mode == TIMER_OFF)
        (void) uv_timer_stop(&c->timer);
    else
        (void) uv_timer_start(
                &c->timer, on_timer,
                mode == TIMER_IDLE ? c->srv->idle_timeout_ms : c->srv->header_timeout_ms, 0);
}

/* --- writing --------------------------------------------------------------------------------- */

static void on_write_done(uv_write_t *w, int status)
{
    struct write_req *wr = container_of(w, struct write_req, w);
    struct conn *c = wr->conn;
    c->write_queued -= wr->len;
    free(wr);
    if (status < 0) {
        if (!c->closing)
            log_debug("%s: write failed: %s", c->peer.addr, uv_strerror(status));
        conn_close(c);
        return;
    }
    if (c->closing)
        return;
    struct req_impl *r = c->req;
    if (r && r->above_high_water && c->write_queued < LIMIT_WRITE_LOW_WATER) {
        r->above_high_water = false;
        if (r->ops && r->ops->on_drain)
            r->ops->on_drain(&r->pub);
    }
    if (c->write_queued == 0 && (c->close_when_flushed || (c->want_close && !c->req)))
        conn_close(c);
}

/* Queues `n` parts as one write; the bytes are copied. */
static int conn_writev(struct conn *c, const uv_buf_t *parts, size_t n)
{
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += parts[i].len;
    if (c->closing)
        return -EPIPE;
    if (total == 0)
        return 0;
    struct write_req *wr = malloc(sizeof(*wr) + total);
    if (!wr)
        return -ENOMEM;
    wr->conn = c;
    wr->len = total;
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        memcpy(wr->data + off, parts[i].base, parts[i].len);
        off += parts[i].len;
    }
    uv_buf_t b = uv_buf_init(wr->data, (unsigned) total);
    int r = uv_write(&wr->w, &c->h.stream, &b, 1, on_write_done);
    if (r < 0) {
        free(wr);
        conn_close(c);
        return r;
    }
    c->write_queued += total;
    return 0;
}

/* Answers a protocol error on the connection itself and closes it afterwards. */
static void conn_fail(struct conn *c, int status, const char *text)
{
    char head[256];
    if (c->closing)
        return;
    if (c->req && c->req->resp_started) {
        conn_close(c);
        return;
    }
    size_t tlen = strlen(text);
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                     status, http_status_text(status), tlen + 1);
    uv_buf_t parts[3] = {uv_buf_init(head, (unsigned) n),
                         uv_buf_init((char *) text, (unsigned) tlen),
                         uv_buf_init((char *) "\n", 1)};
    if (c->req) {
        struct req_impl *r = c->req;
        c->req = NULL;
        if (r->headers_done && r->ops && r->ops->on_abort)
            r->ops->on_abort(&r->pub);
        req_destroy(r);
    }
    c->want_close = true;
    (void) conn_writev(c, parts, 3);
    if (c->write_queued == 0)
        conn_close(c);
}

/* --- requests -------------------------------------------------------------------------------- */

static void req_destroy(struct req_impl *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->pub.n_headers; i++) {
        free(r->pub.headers[i].name);
        free(r->pub.headers[i].value);
    }
    free(r->pub.headers);
    free(r->pub.target);
    free(r->pub.path);
    buf_free(&r->pub.body);
    buf_free(&r->resp_headers);
    free(r);
}

/* The current request is over on both sides: move on to the next one or close. */
static void conn_request_done(struct conn *c)
{
    struct req_impl *r = c->req;
    c->req = NULL;
    bool keep = r->pub.keep_alive && !c->want_close && !c->srv->shutting_down;
    req_destroy(r);
    if (!keep) {
        c->want_close = true;
        if (c->write_queued == 0)
            conn_close(c);
        return;
    }
    timer_set(c, TIMER_IDLE);
    if (c->parser_paused) {
        c->parser_paused = false;
        llhttp_resume(&c->parser);
    }
    if (!c->in_execute)
        conn_process_input(c);
}

/* --- llhttp callbacks ------------------------------------------------------------------------ */

static int parse_error(struct conn *c, int status, const char *text)
{
    c->error_status = status;
    c->error_text = text;
    return HPE_USER;
}

static int on_message_begin(llhttp_t *p)
{
    struct conn *c = conn_of_parser(p);
    struct req_impl *r = calloc(1, sizeof(*r));
    if (!r)
        return parse_error(c, 503, "out of memory");
    r->conn = c;
    r->pub.peer = &c->peer;
    buf_init(&r->pub.body, 0);
    buf_init(&r->resp_headers, LIMIT_HEADER_BYTES);
    c->req = r;
    buf_reset(&c->url);
    buf_reset(&c->hname);
    buf_reset(&c->hvalue);
    c->value_seen = false;
    c->header_bytes = 0;
    c->msg_start_abs = KEEP_NONE;
    /* Keep the whole header section in the input buffer until it is complete (the message
     * starts somewhere in the current execute, so holding from its start is enough). */
    c->keep_from = c->exec_abs;
    timer_set(c, TIMER_HEADERS);
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len)
{
    struct conn *c = conn_of_parser(p);
    if (buf_append(&c->url, at, len) < 0)
        return parse_error(c, 414, "request target too long");
    return 0;
}

static int push_header(struct conn *c)
{
    struct req_impl *r = c->req;
    if (r->pub.n_headers >= LIMIT_HEADER_COUNT)
        return parse_error(c, 431, "too many header fields");
    if (r->pub.n_headers == r->headers_cap) {
        size_t ncap = r->headers_cap ? r->headers_cap * 2 : 16;
        r->pub.headers = xrealloc(r->pub.headers, ncap * sizeof(*r->pub.headers));
        r->headers_cap = ncap;
    }
    char *name = xstrndup(c->hname.data ? c->hname.data : "", c->hname.len);
    for (char *s = name; *s; s++)
        if (*s >= 'A' && *s <= 'Z')
            *s = (char) (*s + 32);
    /* Trailing whitespace is not part of a field value (RFC 9110 5.5). */
    size_t vlen = c->hvalue.len;
    while (vlen > 0 && (c->hvalue.data[vlen - 1] == ' ' || c->hvalue.data[vlen - 1] == '\t'))
        vlen--;
    r->pub.headers[r->pub.n_headers].name = name;
    r->pub.headers[r->pub.n_headers].value = xstrndup(c->hvalue.data ? c->hvalue.data : "", vlen);
    r->pub.n_headers++;
    buf_reset(&c->hname);
    buf_reset(&c->hvalue);
    c->value_seen = false;
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    struct conn *c = conn_of_parser(p);
    c->header_bytes += len;
    if (c->header_bytes > LIMIT_HEADER_BYTES)
        return parse_error(c, 431, "request header fields too large");
    (void) buf_append(&c->hname, at, len);
    c->last_end_abs = abs_of(c, at + len);
    return 0;
}

static int on_header_value_complete(llhttp_t *p)
{
    return push_header(conn_of_parser(p));
}

static int on_method(llhttp_t *p, const char *at, size_t len)
{
    struct conn *c = conn_of_parser(p);
    (void) len;
    if (c->msg_start_abs == KEEP_NONE) /* the first chunk of the method starts the message */
        c->msg_start_abs = abs_of(c, at);
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    struct conn *c = conn_of_parser(p);
    /* llhttp reports an empty value as a zero-length chunk at an unrelated position. */
    if (len == 0)
        return 0;
    uint64_t start = abs_of(c, at);
    /*
     * obs-fold (a value continued on a line starting with whitespace) is accepted by llhttp 8.1
     * and deprecated by RFC 9112: proxies and servers disagree on it, so it smuggles. Legal
     * value chunks of one field are contiguous in the input stream (read boundaries do not
     * leave gaps), and the gap before the first chunk holds only ':' and blanks. A CR or LF in
     * the gap, or any gap before a later chunk, is a fold.
     */
    if (c->value_seen && start != c->last_end_abs)
        return parse_error(c, 400, "obsolete line folding is not allowed");
    for (uint64_t a = c->last_end_abs; a < start; a++) {
        int b = byte_at(c, a);
        if (b == '\r' || b == '\n' || b < 0)
            return parse_error(c, 400, "obsolete line folding is not allowed");
    }
    c->value_seen = true;
    c->header_bytes += len;
    if (c->header_bytes > LIMIT_HEADER_BYTES)
        return parse_error(c, 431, "request header fields too large");
    (void) buf_append(&c->hvalue, at, len);
    c->last_end_abs = start + len;
    return 0;
}

/*
 * llhttp 8.1 lets a bare LF end the request line or the header section. Every line of the
 * header section (held in the input buffer until now) must end in CRLF.
 */
static bool header_section_has_bare_lf(const struct conn *c)
{
    int prev = -1;
    for (uint64_t a = c->msg_start_abs; a < c->in_abs + c->in.len; a++) {
        int b = byte_at(c, a);
        if (b == '\n') {
            if (prev != '\r')
                return true;
            /* CRLF CRLF ends the section. */
            if (a >= c->msg_start_abs + 3 && byte_at(c, a - 2) == '\n')
                return false;
        }
        prev = b;
    }
    return false;
}

static enum http_method method_of(uint8_t m)
{
    switch (m) {
    case HTTP_GET:
        return HMETHOD_GET;
    case HTTP_HEAD:
        return HMETHOD_HEAD;
    case HTTP_POST:
        return HMETHOD_POST;
    case HTTP_PUT:
        return HMETHOD_PUT;
    case HTTP_DELETE:
        return HMETHOD_DELETE;
    case HTTP_OPTIONS:
        return HMETHOD_OPTIONS;
    case HTTP_PATCH:
        return HMETHOD_PATCH;
    case HTTP_CONNECT:
        return HMETHOD_CONNECT;
    default:
        return HMETHOD_OTHER;
    }
}

static int on_headers_complete(llhttp_t *p)
{
    struct conn *c = conn_of_parser(p);
    struct req_impl *r = c->req;
    if (c->hname.len > 0)
        return parse_error(c, 400, "header field without value");
    if (llhttp_get_http_major(p) != 1)
        return parse_error(c, 505, "HTTP version not supported");
    if (header_section_has_bare_lf(c))
        return parse_error(c, 400, "bare LF in the request header section");
    if (c->url.len == 0)
        return parse_error(c, 400, "empty request target");
    if (memchr(c->url.data, '\0', c->url.len))
        return parse_error(c, 400, "NUL in request target");

    r->pub.target = xstrndup(c->url.data, c->url.len);
    /* Absolute form ("http://host/path"): the path is what follows the authority. */
    const char *path_start = r->pub.target;
    if (strncasecmp(path_start, "http://", 7) == 0 || strncasecmp(path_start, "https://", 8) == 0) {
        const char *slash = strchr(strstr(path_start, "//") + 2, '/');
        path_start = slash ? slash : "/";
    }
    char *q = strchr(path_start, '?');
    r->pub.path = q ? xstrndup(path_start, (size_t) (q - path_start)) : xstrdup(path_start);
    r->pub.query = q ? q + 1 : NULL;
    /* RFC 9112 3.2: an HTTP/1.1 request has exactly one Host header. */
    size_t n_host = http_req_header_count(&r->pub, "host");
    if (n_host > 1 || (n_host == 0 && llhttp_get_http_minor(p) >= 1))
        return parse_error(c, 400, n_host ? "more than one Host header" : "missing Host header");
    /* llhttp passes other codings through; Go answers 501 for anything but chunked. */
    const char *te = http_req_header(&r->pub, "transfer-encoding");
    if (te && strcasecmp(te, "chunked") != 0)
        return parse_error(c, 501, "unsupported transfer coding");
    r->pub.method = method_of(llhttp_get_method(p));
    r->pub.method_name = llhttp_method_name((llhttp_method_t) llhttp_get_method(p));
    r->pub.http_minor = llhttp_get_http_minor(p);
    r->pub.keep_alive = llhttp_should_keep_alive(p) != 0;
    r->pub.has_body =
            (p->flags & F_CHUNKED) || ((p->flags & F_CONTENT_LENGTH) && p->content_length > 0);
    r->pub.body_complete = !r->pub.has_body;
    const char *expect = http_req_header(&r->pub, "expect");
    r->expect_continue = expect && http_header_has_token(expect, "100-continue") && r->pub.has_body;
    r->start_ms = uv_now(c->srv->loop);
    r->headers_done = true;

    /* The header section has been checked; stop holding it back. */
    c->keep_from = KEEP_NONE;
    timer_set(c, TIMER_OFF);

    c->srv->on_request(&r->pub, c->srv->userdata);
    if (c->closing)
        return HPE_USER;
    /* A handler that answered without installing ops does not want the body. */
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    struct conn *c = conn_of_parser(p);
    struct req_impl *r = c->req;
    if (p->flags & F_CHUNKED) {
        c->chunk_end_abs = abs_of(c, at + len);
        c->keep_from = c->chunk_end_abs;
    }
    if (!r)
        return 0;
    if (r->resp_finished || !r->ops_set) {
        /* The handler has answered already: read the body away to keep the connection. */
        r->discarded += len;
        if (r->discarded > LIMIT_DISCARD_BODY) {
            c->want_close = true;
            return HPE_USER;
        }
        return 0;
    }
    if (r->ops && r->ops->on_body) {
        int e = r->ops->on_body(&r->pub, at, len);
        if (c->closing)
            return HPE_USER;
        if (e < 0) {
            if (!r->resp_started)
                return parse_error(c, 400, "request body rejected");
            c->want_close = true;
            return HPE_USER;
        }
        return 0;
    }
    if (buf_append(&r->pub.body, at, len) < 0)
        return parse_error(c, 413, "request body too large");
    return 0;
}

static int on_chunk_header(llhttp_t *p)
{
    struct conn *c = conn_of_parser(p);
    c->chunk_size = p->content_length;
    /* The last chunk: trailer fields follow, and the obs-fold check reads their raw bytes, so
     * hold the input from here until the message is complete. */
    if (c->chunk_size == 0)
        c->keep_from = MIN(c->keep_from, c->exec_abs);
    return 0;
}

static int on_chunk_complete(llhttp_t *p)
{
    struct conn *c = conn_of_parser(p);
    if (c->chunk_size > 0) {
        /* llhttp 8.1 skips the two bytes after chunk data without looking at them. */
        int a = byte_at(c, c->chunk_end_abs);
        int b = byte_at(c, c->chunk_end_abs + 1);
        if (a != '\r' || b != '\n')
            return parse_error(c, 400, "chunk data not followed by CRLF");
    }
    if (c->chunk_size > 0)
        c->keep_from = KEEP_NONE;
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    struct conn *c = conn_of_parser(p);
    c->keep_from = KEEP_NONE;
    struct req_impl *r = c->req;
    if (!r)
        return HPE_PAUSED;
    r->pub.body_complete = true;
    if (!r->resp_finished && r->ops && r->ops->on_complete)
        r->ops->on_complete(&r->pub);
    if (c->closing)
        return HPE_USER;
    if (r->resp_finished) {
        bool keep = r->pub.keep_alive && !c->want_close && !c->srv->shutting_down &&
                    llhttp_get_method(p) != HTTP_CONNECT;
        c->req = NULL;
        req_destroy(r);
        if (!keep) {
            c->want_close = true;
            return HPE_PAUSED;
        }
        timer_set(c, TIMER_IDLE);
        return 0;
    }
    if (!r->ops_set && !r->resp_started)
        log_debug("%s: request handler neither answered nor took the request", c->peer.addr);
    c->parser_paused = true;
    return HPE_PAUSED;
}

/* --- reading --------------------------------------------------------------------------------- */

static void conn_consume(struct conn *c)
{
    uint64_t upto = MIN(c->parsed_abs, c->keep_from);
    if (upto > c->in_abs) {
        buf_consume(&c->in, (size_t) (upto - c->in_abs));
        c->in_abs = upto;
    }
}

/* Reads while there is room and nobody asked for a pause; stops otherwise. */
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b);
static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b);

static void conn_update_reading(struct conn *c)
{
    if (c->closing)
        return;
    bool want = c->in.len < LIMIT_INPUT_BUFFER && !(c->req && c->req->paused);
    if (want && !c->reading) {
        if (uv_read_start(&c->h.stream, on_alloc, on_read) == 0)
            c->reading = true;
    } else if (!want && c->reading) {
        (void) uv_read_stop(&c->h.stream);
        c->reading = false;
    }
}

/* Drops the current request after a callback abandoned it, and closes once output drained. */
static void conn_abandon(struct conn *c)
{
    struct req_impl *r = c->req;
    if (r) {
        c->req = NULL;
        if (r->headers_done && !r->resp_finished && r->ops && r->ops->on_abort)
            r->ops->on_abort(&r->pub);
        req_destroy(r);
    }
    c->want_close = true;
    if (c->write_queued == 0)
        conn_close(c);
}

static void conn_process_input(struct conn *c)
{
    while (!c->closing && !c->parser_paused && !c->want_close) {
        size_t skip = (size_t) (c->parsed_abs - c->in_abs);
        if (skip >= c->in.len)
            break;
        c->exec_base = c->in.data + skip;
        c->exec_abs = c->parsed_abs;
        size_t n = c->in.len - skip;
        c->in_execute = true;
        llhttp_errno_t e = llhttp_execute(&c->parser, c->exec_base, n);
        c->in_execute = false;
        if (c->closing)
            return;
        size_t used = n;
        if (e == HPE_PAUSED || e == HPE_PAUSED_UPGRADE) {
            used = (size_t) (llhttp_get_error_pos(&c->parser) - c->exec_base);
            if (e == HPE_PAUSED_UPGRADE)
                c->want_close = true;
        } else if (e != HPE_OK) {
            if (c->error_status || e != HPE_USER) {
                int status = c->error_status ? c->error_status : 400;
                const char *text =
                        c->error_text ? c->error_text : llhttp_get_error_reason(&c->parser);
                log_debug("%s: bad request: %s (%s)", c->peer.addr, text ? text : "?",
                          llhttp_errno_name(e));
                conn_fail(c, status, text ? text : "bad request");
            } else {
                conn_abandon(c);
            }
            return;
        }
        c->parsed_abs += used;
        conn_consume(c);
        if (c->want_close) {
            if (!c->req && c->write_queued == 0)
                conn_close(c);
            break;
        }
    }
    conn_update_reading(c);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    struct conn *c = container_of(h, struct conn, h.handle);
    (void) suggested;
    if (buf_reserve(&c->in, LIMIT_READ_CHUNK) < 0) {
        *b = uv_buf_init(NULL, 0);
        return;
    }
    *b = uv_buf_init(buf_tail(&c->in), LIMIT_READ_CHUNK);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    struct conn *c = container_of(s, struct conn, h.stream);
    (void) b;
    if (nread == 0 || c->closing)
        return;
    if (nread < 0) {
        if (nread != UV_EOF)
            log_debug("%s: read failed: %s", c->peer.addr, uv_strerror((int) nread));
        /* The client is gone (or half-closed, which HTTP/1.1 clients only do when they are
         * done): a request in progress is cancelled, as Go's net/http cancels its context. */
        conn_abandon(c);
        if (!c->closing)
            conn_close(c);
        return;
    }
    buf_commit(&c->in, (size_t) nread);
    if (!c->req && c->timer_mode == TIMER_IDLE)
        timer_set(c, TIMER_HEADERS);
    conn_process_input(c);
}

/* --- connection lifecycle -------------------------------------------------------------------- */

static void conn_free(struct conn *c)
{
    struct http_server *srv = c->srv;
    if (c->prev)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    srv->n_conns--;
    req_destroy(c->req);
    buf_free(&c->in);
    buf_free(&c->hname);
    buf_free(&c->hvalue);
    buf_free(&c->url);
    free(c);
    if (srv->shutting_down && srv->n_conns == 0) {
        if (srv->drain_timer_live) {
            if (!uv_is_closing((uv_handle_t *) &srv->drain_timer))
                uv_close((uv_handle_t *) &srv->drain_timer, on_drain_timer_closed);
        } else if (srv->shutdown_done) {
            void (*done)(void *) = srv->shutdown_done;
            srv->shutdown_done = NULL;
            done(srv->shutdown_data);
        }
    }
}

static void on_close(uv_handle_t *h)
{
    struct conn *c = h->data;
    if (--c->pending_closes == 0)
        conn_free(c);
}

static void conn_close(struct conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    if (c->req && c->req->headers_done && !c->req->resp_finished) {
        struct req_impl *r = c->req;
        c->req = NULL;
        if (r->ops && r->ops->on_abort)
            r->ops->on_abort(&r->pub);
        req_destroy(r);
    }
    uv_close((uv_handle_t *) &c->timer, on_close);
    uv_close(&c->h.handle, on_close);
}

static void fill_peer(struct conn *c, enum transport t)
{
    uv_os_fd_t fd = -1;
    c->peer.transport = t;
    (void) uv_fileno(&c->h.handle, &fd);
    switch (t) {
    case TRANSPORT_TCP: {
        struct sockaddr_storage ss;
        int len = sizeof(ss);
        char ip[INET6_ADDRSTRLEN] = "?";
        int port = 0;
        if (uv_tcp_getpeername(&c->h.tcp, (struct sockaddr *) &ss, &len) == 0) {
            if (ss.ss_family == AF_INET) {
                struct sockaddr_in *in = (struct sockaddr_in *) &ss;
                (void) uv_ip4_name(in, ip, sizeof(ip));
                port = ntohs(in->sin_port);
            } else if (ss.ss_family == AF_INET6) {
                struct sockaddr_in6 *in6 = (struct sockaddr_in6 *) &ss;
                (void) uv_ip6_name(in6, ip, sizeof(ip));
                port = ntohs(in6->sin6_port);
            }
        }
        (void) snprintf(c->peer.addr, sizeof(c->peer.addr), strchr(ip, ':') ? "[%s]:%d" : "%s:%d",
                        ip, port);
        break;
    }
    case TRANSPORT_UNIX: {
        struct ucred cred;
        socklen_t len = sizeof(cred);
        if (fd >= 0 && getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
            c->peer.has_cred = true;
            c->peer.uid = cred.uid;
            c->peer.gid = cred.gid;
            c->peer.pid = cred.pid;
            (void) snprintf(c->peer.addr, sizeof(c->peer.addr), "unix:pid=%d,uid=%u",
                            (int) cred.pid, (unsigned) cred.uid);
        } else {
            (void) snprintf(c->peer.addr, sizeof(c->peer.addr), "unix");
        }
        break;
    }
    case TRANSPORT_VSOCK: {
        struct sockaddr_vm vm;
        socklen_t len = sizeof(vm);
        if (fd >= 0 && getpeername(fd, (struct sockaddr *) &vm, &len) == 0 &&
            vm.svm_family == AF_VSOCK) {
            c->peer.cid = vm.svm_cid;
            c->peer.port = vm.svm_port;
        }
        (void) snprintf(c->peer.addr, sizeof(c->peer.addr), "vsock:%u:%u", c->peer.cid,
                        c->peer.port);
        break;
    }
    }
}

/* --- public API ------------------------------------------------------------------------------ */

int http_server_new(uv_loop_t *loop, http_request_cb on_request, void *userdata,
                    struct http_server **ret)
{
    struct http_server *srv = calloc(1, sizeof(*srv));
    if (!srv)
        return -ENOMEM;
    srv->loop = loop;
    srv->on_request = on_request;
    srv->userdata = userdata;
    srv->header_timeout_ms = LIMIT_HEADER_TIMEOUT_MS;
    srv->idle_timeout_ms = LIMIT_IDLE_TIMEOUT_MS;
    srv->max_connections = LIMIT_CONNECTIONS;
    llhttp_settings_init(&srv->settings);
    srv->settings.on_message_begin = on_message_begin;
    srv->settings.on_url = on_url;
    srv->settings.on_header_field = on_header_field;
    srv->settings.on_header_value = on_header_value;
    srv->settings.on_header_value_complete = on_header_value_complete;
    srv->settings.on_method = on_method;
    srv->settings.on_headers_complete = on_headers_complete;
    srv->settings.on_body = on_body;
    srv->settings.on_chunk_header = on_chunk_header;
    srv->settings.on_chunk_complete = on_chunk_complete;
    srv->settings.on_message_complete = on_message_complete;
    *ret = srv;
    return 0;
}

int http_server_accept(struct http_server *srv, uv_stream_t *listener, enum transport transport)
{
    struct conn *c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    int r = transport == TRANSPORT_TCP ? uv_tcp_init(srv->loop, &c->h.tcp)
                                       : uv_pipe_init(srv->loop, &c->h.pipe, 0);
    if (r < 0) {
        free(c);
        return r;
    }
    c->srv = srv;
    c->h.handle.data = c;
    c->pending_closes = 2;
    (void) uv_timer_init(srv->loop, &c->timer);
    c->timer.data = c;
    c->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = c;
    srv->conns = c;
    srv->n_conns++;
    buf_init(&c->in, LIMIT_INPUT_BUFFER + LIMIT_READ_CHUNK);
    buf_init(&c->hname, LIMIT_HEADER_BYTES);
    buf_init(&c->hvalue, LIMIT_HEADER_BYTES);
    buf_init(&c->url, LIMIT_URL_BYTES);
    c->keep_from = KEEP_NONE;
    llhttp_init(&c->parser, HTTP_REQUEST, &srv->settings);

    r = uv_accept(listener, &c->h.stream);
    if (r < 0) {
        conn_close(c);
        return r;
    }
    if (transport == TRANSPORT_TCP)
        (void) uv_tcp_nodelay(&c->h.tcp, 1);
    fill_peer(c, transport);
    if (srv->shutting_down || srv->n_conns > srv->max_connections) {
        log_warn("%s: connection refused: %s", c->peer.addr,
                 srv->shutting_down ? "shutting down" : "too many connections");
        conn_close(c);
        return -EMFILE;
    }
    timer_set(c, TIMER_IDLE);
    conn_update_reading(c);
    return 0;
}

void http_server_set_limits(struct http_server *srv, uint64_t header_timeout_ms,
                            uint64_t idle_timeout_ms, size_t max_connections)
{
    if (header_timeout_ms)
        srv->header_timeout_ms = header_timeout_ms;
    if (idle_timeout_ms)
        srv->idle_timeout_ms = idle_timeout_ms;
    if (max_connections)
        srv->max_connections = max_connections;
}

size_t http_server_connections(const struct http_server *srv)
{
    return srv->n_conns;
}

static void on_drain_timer_closed(uv_handle_t *h)
{
    struct http_server *srv = h->data;
    srv->drain_timer_live = false;
    if (srv->n_conns == 0 && srv->shutdown_done) {
        void (*done)(void *) = srv->shutdown_done;
        srv->shutdown_done = NULL;
        done(srv->shutdown_data);
    }
}

static void on_drain_timeout(uv_timer_t *t)
{
    struct http_server *srv = t->data;
    for (struct conn *c = srv->conns; c; c = c->next)
        conn_close(c);
    uv_close((uv_handle_t *) t, on_drain_timer_closed);
}

void http_server_shutdown(struct http_server *srv, void (*done)(void *userdata), void *userdata)
{
    srv->shutting_down = true;
    srv->shutdown_done = done;
    srv->shutdown_data = userdata;
    /*
     * Idle connections close now. A connection whose response has finished but is still being
     * written closes once it drained (conn_request_done/on_write_done see want_close); one with
     * a request still in progress is aborted. Whatever is left after LIMIT_SHUTDOWN_DRAIN_MS is
     * closed regardless.
     */
    for (struct conn *c = srv->conns; c; c = c->next) {
        c->want_close = true;
        if (c->write_queued == 0 || (c->req && !c->req->resp_finished))
            conn_close(c);
    }
    if (srv->n_conns > 0 && !srv->drain_timer_live) {
        (void) uv_timer_init(srv->loop, &srv->drain_timer);
        srv->drain_timer.data = srv;
        srv->drain_timer_live = true;
        (void) uv_timer_start(&srv->drain_timer, on_drain_timeout, LIMIT_SHUTDOWN_DRAIN_MS, 0);
    }
    if (srv->n_conns == 0 && !srv->drain_timer_live && srv->shutdown_done) {
        srv->shutdown_done = NULL;
        if (done)
            done(userdata);
    }
}

void http_server_free(struct http_server *srv)
{
    free(srv);
}

const char *http_req_header(const struct http_req *req, const char *lname)
{
    for (size_t i = 0; i < req->n_headers; i++)
        if (streq(req->headers[i].name, lname))
            return req->headers[i].value;
    return NULL;
}

size_t http_req_header_count(const struct http_req *req, const char *lname)
{
    size_t n = 0;
    for (size_t i = 0; i < req->n_headers; i++)
        if (streq(req->headers[i].name, lname))
            n++;
    return n;
}

void http_req_set_ops(struct http_req *req, const struct http_req_ops *ops, size_t body_max)
{
    struct req_impl *r = container_of(req, struct req_impl, pub);
    r->ops = ops;
    r->ops_set = true;
    r->body_max = body_max;
    r->pub.body.max = body_max;
    if (r->expect_continue && !r->resp_started) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        uv_buf_t b = uv_buf_init((char *) cont, sizeof(cont) - 1);
        (void) conn_writev(r->conn, &b, 1);
        r->expect_continue = false;
    }
    if (r->pub.body_complete && ops && ops->on_complete && r->conn->in_execute == false)
        ops->on_complete(req);
}

void http_req_pause(struct http_req *req)
{
    struct req_impl *r = container_of(req, struct req_impl, pub);
    r->paused = true;
    conn_update_reading(r->conn);
}

void http_req_resume(struct http_req *req)
{
    struct req_impl *r = container_of(req, struct req_impl, pub);
    r->paused = false;
    conn_update_reading(r->conn);
}

size_t http_req_write_queued(const struct http_req *req)
{
    const struct req_impl *r = container_of(req, const struct req_impl, pub);
    return r->conn->write_queued;
}

uv_loop_t *http_req_loop(const struct http_req *req)
{
    const struct req_impl *r = container_of(req, const struct req_impl, pub);
    return r->conn->srv->loop;
}

uint64_t http_req_start_ms(const struct http_req *req)
{
    const struct req_impl *r = container_of(req, const struct req_impl, pub);
    return r->start_ms;
}

void http_resp_header(struct http_req *req, const char *name, const char *value)
{
    struct req_impl *r = container_of(req, struct req_impl, pub);
    if (r->resp_started)
        return;
    (void) buf_printf(&r->resp_headers, "%s: %s\r\n", name, value);
}

bool http_resp_started(const struct http_req *req)
{
    const struct req_impl *r = container_of(req, const struct req_impl, pub);
    return r->resp_started;
}

/* Builds the status line and headers into `out`. */
static int resp_head(struct req_impl *r, int status, int64_t content_length, struct buf *out)
{
    struct conn *c = r->conn;
    /* With 100-continue pending the client may never send the body we did not ask for, so the
     * connection cannot be reused. Other unread bodies are read away (LIMIT_DISCARD_BODY). */
    if (!r->pub.body_complete && r->expect_continue)
        c->want_close = true;
    bool close = c->want_close || !r->pub.keep_alive || c->srv->shutting_down;
    if (close)
        c->want_close = true;
    int e = buf_printf(out, "HTTP/1.1 %d %s\r\n", status, http_status_text(status));
    if (e == 0 && r->resp_headers.len)
        e = buf_append(out, r->resp_headers.data, r->resp_headers.len);
    if (e == 0 && status >= 200 && status != 204 && status != 304) {
        if (content_length >= 0)
            e = buf_printf(out, "Content-Length: %lld\r\n", (long long) content_length);
        else
            e = buf_append_str(out, "Transfer-Encoding: chunked\r\n");
    }
    if (e == 0 && close)
        e = buf_append_str(out, "Connection: close\r\n");
    if (e == 0)
        e = buf_append_str(out, "\r\n");
    return e;
}

int http_resp_start(struct http_req *req, int status, int64_t content_length)
{
    struct req_impl *r = container_of(req, struct req_impl, pub);
    struct buf head;
    if (r->resp_started)
        return -EALREADY;
    buf_init(&head, LIMIT_HEADER_BYTES + 1024);
    int e = resp_head(r, status, content_length, &head);
    if (e < 0) {
        buf_free(&head);
        return e;
    }
    r->resp_started = true;
    r->resp_chunked = content_length < 0 && status >= 200 && status != 204 && status != 304;
    uv_buf_t b = uv_buf_init(head.data, (unsigned) head.len);
    e = conn_writev(r->conn, &b, 1);
    buf_free(&head);
    return e;
}

int http_resp_write(struct http_req *req, const void *data, size_t len)
{
    struct req_impl *r = container_of(req, struct req_impl, pub);
    struct conn *c = r->conn;
    if (!r->resp_started || r->resp_finished)
        return -EINVAL;
    if (len == 0 || req->method == HMETHOD_HEAD)
        return 0;
    int e;
    if (r->resp_chunked) {
        char size[24];
        int n = snprintf(size, sizeof(size), "%zx\r\n", len);
        uv_buf_t parts[3] = {uv_buf_init(size, (unsigned) n),
                             uv_buf_init((char *) data, (unsigned) len),
                             uv_buf_init((char *) "\r\n", 2)};
        e = conn_writev(c, parts, 3);
    } else {
        uv_buf_t b = uv_buf_init((char *) data, (unsigned) len);
        e = conn_writev(c, &b, 1);
    }
    if (e == 0 && c->write_queued > LIMIT_WRITE_HIGH_WATER)
        r->above_high_water = true;
    return e;
}

int http_resp_finish(struct http_req *req)
{
    struct req_impl *r = container_of(req, struct req_impl, pub);
    struct conn *c = r->conn;
    int e = 0;
    if (r->resp_finished)
        return -EALREADY;
    if (!r->resp_started)
        return -EINVAL;
    if (r->resp_chunked && req->method != HMETHOD_HEAD) {
        uv_buf_t b = uv_buf_init((char *) "0\r\n\r\n", 5);
        e = conn_writev(c, &b, 1);
    }
    r->resp_finished = true;
    if (!r->pub.body_complete && c->want_close) {
        /* A body we will not read (100-continue refused): nothing more can happen here. */
        c->close_when_flushed = true;
        if (c->write_queued == 0 && !c->in_execute)
            conn_close(c);
    }
    if (r->paused) {
        r->paused = false;
        conn_update_reading(c);
    }
    /* Still inside llhttp (a synchronous answer): on_message_complete moves on. Otherwise the
     * request is done once its body has been read (or discarded). */
    if (!c->in_execute && c->req == r && r->pub.body_complete && !c->closing)
        conn_request_done(c);
    return e;
}

int http_resp_simple(struct http_req *req, int status, const char *content_type, const void *body,
                     size_t len)
{
    struct req_impl *r = container_of(req, struct req_impl, pub);
    struct buf out;
    if (r->resp_started)
        return -EALREADY;
    if (content_type)
        http_resp_header(req, "Content-Type", content_type);
    buf_init(&out, LIMIT_HEADER_BYTES + 1024 + len);
    int e = resp_head(r, status, status == 204 || status == 304 ? -1 : (int64_t) len, &out);
    if (e == 0 && req->method != HMETHOD_HEAD && len)
        e = buf_append(&out, body, len);
    if (e < 0) {
        buf_free(&out);
        return e;
    }
    r->resp_started = true;
    uv_buf_t b = uv_buf_init(out.data, (unsigned) out.len);
    e = conn_writev(r->conn, &b, 1);
    buf_free(&out);
    int f = http_resp_finish(req);
    return e < 0 ? e : f;
}

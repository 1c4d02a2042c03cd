/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Fuzz target for the HTTP/1.1 engine (agent/http/conn.c): the real server on a private loop,
 * fed through a connected Unix socket pair in pieces so that partial request lines, headers,
 * chunk sizes and chunk data all happen.
 *
 * Input: byte 0 is a control byte, the rest goes to the server.
 *   bits 0-2  largest piece: 1, 2, 3, 7, 16, 64, 512 or 65536 bytes; piece sizes are drawn
 *             from a PRNG seeded with the control byte, and each piece is read by the server
 *             on its own before the next one is written
 *   bit 3     half-close the client (SHUT_WR) after the last piece
 *   bit 4     shut the server down while the client is still connected
 * So '@' feeds one byte at a time, 'G' in one write; 'H'-'O' add the half-close, 'P'-'W' the
 * early shutdown.
 *
 * Handlers, chosen by the first letter of the path: /b… (and any POST/PUT) collects the body
 * with a 1 KiB limit and answers on completion; /s… streams the body through on_body and
 * rejects a body containing 'X'; /d… answers from a timer; /p… pauses body reading until a
 * timer resumes it; /c… answers with a chunked body at once; anything else gets a small fixed
 * response. Every run closes everything and checks uv_loop_close() == 0.
 *
 * FUZZ_HTTP_DEBUG=1 in the environment copies everything the server sends to stderr.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <uv.h>

#include "base/log.h"
#include "http/http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* NOWAIT loop turns without progress before the feeder gives up on a stalled server. */
#define STALL_TURNS   16
/* Limit for collected bodies: small, so that 413 happens. */
#define FUZZ_BODY_MAX 1024

struct run {
    uv_loop_t loop;
    uv_pipe_t listener;
    struct http_server *srv;
    int accepted;
    bool shutdown_done;
};

static struct run R;
static bool debug;

/* A request answered or resumed later, from a timer. */
struct later {
    uv_timer_t timer;
    struct http_req *req; /* NULL once finished or aborted */
    bool resume;          /* /p: resume reading, then let on_complete answer */
};

static void later_closed(uv_handle_t *h)
{
    free(h->data);
}

static void later_abort(struct http_req *req)
{
    struct later *l = req->data;
    if (l)
        l->req = NULL;
}

static void answer(struct http_req *req, const char *text)
{
    (void) http_resp_simple(req, 200, "text/plain", text, strlen(text));
}

static void collect_complete(struct http_req *req)
{
    struct later *l = req->data;
    char text[64];
    if (l)
        l->req = NULL; /* the request is about to go back to the connection */
    (void) snprintf(text, sizeof(text), "got %zu bytes\n", req->body.len);
    answer(req, text);
}

static int stream_body(struct http_req *req, const char *data, size_t len)
{
    (void) req;
    return memchr(data, 'X', len) ? -EINVAL : 0;
}

static void stream_complete(struct http_req *req)
{
    http_resp_header(req, "Content-Type", "application/octet-stream");
    if (http_resp_start(req, 200, -1) < 0)
        return;
    (void) http_resp_write(req, "stream", 6);
    (void) http_resp_write(req, "ed\n", 3);
    (void) http_resp_finish(req);
}

static const struct http_req_ops collect_ops = {
        .on_complete = collect_complete,
        .on_abort = later_abort,
};

static const struct http_req_ops stream_ops = {
        .on_body = stream_body,
        .on_complete = stream_complete,
};

static const struct http_req_ops later_ops = {
        .on_abort = later_abort,
};

static void later_fire(uv_timer_t *t)
{
    struct later *l = t->data;
    if (l->req) {
        struct http_req *req = l->req;
        req->data = NULL; /* `l` goes away with the timer */
        l->req = NULL;
        if (l->resume) {
            http_req_resume(req);
        } else {
            answer(req, "later\n");
        }
    }
    uv_close((uv_handle_t *) t, later_closed);
}

static void start_later(struct http_req *req, bool resume)
{
    struct later *l = calloc(1, sizeof(*l));
    if (!l)
        abort();
    l->req = req;
    l->resume = resume;
    l->timer.data = l;
    req->data = l;
    (void) uv_timer_init(&R.loop, &l->timer);
    (void) uv_timer_start(&l->timer, later_fire, 0, 0);
}

static void on_request(struct http_req *req, void *userdata)
{
    (void) userdata;
    char kind = req->path[0] == '/' ? req->path[1] : '\0';
    req->data = NULL;
    if (kind == 's') {
        http_req_set_ops(req, &stream_ops, 0);
    } else if (kind == 'd') {
        http_req_set_ops(req, &later_ops, 0);
        start_later(req, false);
    } else if (kind == 'p') {
        http_req_set_ops(req, &collect_ops, FUZZ_BODY_MAX);
        http_req_pause(req);
        start_later(req, true);
    } else if (kind == 'c') {
        if (http_resp_start(req, 200, -1) == 0) {
            (void) http_resp_write(req, "chunk one\n", 10);
            (void) http_resp_write(req, "chunk two\n", 10);
            (void) http_resp_finish(req);
        }
    } else if (kind == 'b' || req->method == HMETHOD_POST || req->method == HMETHOD_PUT) {
        http_req_set_ops(req, &collect_ops, FUZZ_BODY_MAX);
    } else {
        answer(req, "ok\n");
    }
}

static void on_connection(uv_stream_t *server, int status)
{
    if (status < 0)
        return;
    if (http_server_accept(R.srv, server, TRANSPORT_UNIX) == 0)
        R.accepted++;
}

static void on_shutdown(void *userdata)
{
    (void) userdata;
    R.shutdown_done = true;
}

static void print_handle(uv_handle_t *h, void *arg)
{
    (void) arg;
    fprintf(stderr, "fuzz-http: handle left open: %s%s\n", uv_handle_type_name(h->type),
            uv_is_closing(h) ? " (closing)" : "");
}

/* Reads and drops whatever the server sent. Returns false once the server has closed. */
static bool drain(int fd)
{
    char buf[16384];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n > 0) {
            if (debug)
                (void) fwrite(buf, 1, (size_t) n, stderr);
            continue;
        }
        if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
            return false;
        if (errno != EINTR)
            return true;
    }
}

static int outq(int fd)
{
    int n = 0;
    if (ioctl(fd, SIOCOUTQ, &n) < 0)
        return 0;
    return n;
}

/* Runs the loop until the server has read everything written so far. False if it stalled or
 * closed the connection. */
static bool settle(int fd)
{
    int last = -1, stalled = 0;
    for (;;) {
        (void) uv_run(&R.loop, UV_RUN_NOWAIT);
        if (!drain(fd))
            return false;
        int q = outq(fd);
        if (q == 0)
            return true;
        stalled = q == last ? stalled + 1 : 0;
        if (stalled > STALL_TURNS)
            return false;
        last = q;
    }
}

/* Writes one piece; false if the server is gone or stopped reading. */
static bool feed(int fd, const uint8_t *p, size_t len)
{
    int stalled = 0;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n > 0) {
            p += n;
            len -= (size_t) n;
            stalled = 0;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
            return false;
        if (!settle(fd) && ++stalled > STALL_TURNS)
            return false;
    }
    return settle(fd);
}

static uint32_t xorshift(uint32_t *s)
{
    uint32_t x = *s;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *s = x;
}

static void fail(const char *what)
{
    fprintf(stderr, "fuzz-http: %s: %s\n", what, strerror(errno));
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const size_t max_piece[] = {1, 2, 3, 7, 16, 64, 512, 65536};
    static bool initialised;
    static unsigned counter;
    if (!initialised) {
        initialised = true;
        (void) signal(SIGPIPE, SIG_IGN);
        log_setup(LOG_LVL_ERROR, LOG_FORMAT_TEXT);
        debug = getenv("FUZZ_HTTP_DEBUG") != NULL;
    }
    if (size < 1)
        return 0;
    const uint8_t ctl = data[0];
    data++;
    size--;

    memset(&R, 0, sizeof(R));
    if (uv_loop_init(&R.loop) < 0)
        fail("uv_loop_init");

    /* An abstract Unix socket: nothing on disk to clean up. */
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int n = snprintf(sa.sun_path + 1, sizeof(sa.sun_path) - 1, "guestd-fuzz-http-%d-%u",
                     (int) getpid(), counter++);
    socklen_t salen = (socklen_t) (offsetof(struct sockaddr_un, sun_path) + 1 + (size_t) n);
    int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (lfd < 0 || bind(lfd, (struct sockaddr *) &sa, salen) < 0)
        fail("listening socket");
    if (uv_pipe_init(&R.loop, &R.listener, 0) < 0 || uv_pipe_open(&R.listener, lfd) < 0 ||
        uv_listen((uv_stream_t *) &R.listener, 8, on_connection) < 0)
        fail("listener");
    if (http_server_new(&R.loop, on_request, NULL, &R.srv) < 0)
        fail("http_server_new");

    int cfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (cfd < 0 || connect(cfd, (struct sockaddr *) &sa, salen) < 0)
        fail("client socket");
    if (fcntl(cfd, F_SETFL, O_NONBLOCK) < 0)
        fail("O_NONBLOCK");
    for (int i = 0; R.accepted == 0; i++) {
        if (i > 1000)
            fail("accept");
        (void) uv_run(&R.loop, UV_RUN_NOWAIT);
    }

    uint32_t rng = 0x9e3779b9u ^ ((uint32_t) ctl * 2654435761u);
    size_t piece_max = max_piece[ctl & 7];
    size_t off = 0;
    while (off < size) {
        size_t piece = piece_max == 1 ? 1 : 1 + xorshift(&rng) % piece_max;
        if (piece > size - off)
            piece = size - off;
        if (!feed(cfd, data + off, piece))
            break;
        off += piece;
    }
    if (ctl & 0x08)
        (void) shutdown(cfd, SHUT_WR);
    for (int i = 0; i < 4; i++) {
        (void) uv_run(&R.loop, UV_RUN_NOWAIT);
        if (!drain(cfd))
            break;
    }

    if (!(ctl & 0x10))
        (void) close(cfd);
    http_server_shutdown(R.srv, on_shutdown, NULL);
    uv_close((uv_handle_t *) &R.listener, NULL);
    if (ctl & 0x10) {
        /* the server closes first; the client reads to the end, then leaves */
        for (int i = 0; i < 4; i++) {
            (void) uv_run(&R.loop, UV_RUN_NOWAIT);
            if (!drain(cfd))
                break;
        }
        (void) close(cfd);
    }
    (void) uv_run(&R.loop, UV_RUN_DEFAULT);
    if (!R.shutdown_done || http_server_connections(R.srv) != 0) {
        fprintf(stderr, "fuzz-http: server shutdown incomplete (%zu connections)\n",
                http_server_connections(R.srv));
        abort();
    }
    http_server_free(R.srv);
    if (uv_loop_close(&R.loop) != 0) {
        uv_walk(&R.loop, print_handle, NULL);
        fprintf(stderr, "fuzz-http: uv_loop_close() failed: handles leaked\n");
        abort();
    }
    return 0;
}

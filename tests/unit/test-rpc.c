/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The Connect layer end to end: a real HTTP server, router and test-only methods on a private
 * loop, driven by a forked client that writes raw bytes (split into tiny writes) and checks the
 * raw answer. Covers client streams, which no production method uses yet, plus errors,
 * deadlines, keepalives and cancellation.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <uv.h>

#include "guestd/v1/system.pb-c.h"
#include "harness.h"
#include "http/http.h"
#include "net/net.h"
#include "rpc/connect.h"
#include "rpc/router.h"
#include "sys/state.h"

/* --- test methods -------------------------------------------------------------------------- */

static int cancels;
static enum rpc_code last_cancel = RPC_OK;

struct sum_state {
    uint64_t sum;
    uint64_t count;
};

static void sum_message(struct rpc_call *call, const ProtobufCMessage *msg)
{
    const Guestd__V1__DebugRequest *req = (const Guestd__V1__DebugRequest *) msg;
    struct sum_state *s = rpc_call_data(call);
    if (!s) {
        s = calloc(1, sizeof(*s));
        rpc_call_set_data(call, s);
    }
    s->sum += req->limit;
    s->count++;
}

static void sum_end(struct rpc_call *call)
{
    struct sum_state *s = rpc_call_data(call);
    Guestd__V1__InfoResponse resp = GUESTD__V1__INFO_RESPONSE__INIT;
    resp.uptime_ms = s ? s->sum : 0;
    resp.generation = s ? s->count : 0;
    free(s);
    rpc_call_set_data(call, NULL);
    (void) rpc_reply(call, &resp.base);
}

static void sum_cancel(struct rpc_call *call, enum rpc_code why)
{
    free(rpc_call_data(call));
    cancels++;
    last_cancel = why;
}

static void fail_handle(struct rpc_call *call, const ProtobufCMessage *in)
{
    (void) in;
    rpc_fail(call, RPC_NOT_FOUND, "process with pid %d not found", 42);
}

/* Never answers: only a deadline or a disconnect ends it. */
static void hang_handle(struct rpc_call *call, const ProtobufCMessage *in)
{
    (void) call;
    (void) in;
}

static void hang_cancel(struct rpc_call *call, enum rpc_code why)
{
    (void) call;
    cancels++;
    last_cancel = why;
}

static void echo_handle(struct rpc_call *call, const ProtobufCMessage *in)
{
    const Guestd__V1__DebugRequest *req = (const Guestd__V1__DebugRequest *) in;
    Guestd__V1__InfoResponse resp = GUESTD__V1__INFO_RESPONSE__INIT;
    resp.generation = req->limit;
    resp.version = (char *) "echo";
    (void) rpc_reply(call, &resp.base);
}

static const Guestd__V1__EventsResponse__KeepAlive ka_inner =
        GUESTD__V1__EVENTS_RESPONSE__KEEP_ALIVE__INIT;
static const Guestd__V1__EventsResponse ka = {
        PROTOBUF_C_MESSAGE_INIT(&guestd__v1__events_response__descriptor),
        0,
        GUESTD__V1__EVENTS_RESPONSE__EVENT_KEEPALIVE,
        {.keepalive = (Guestd__V1__EventsResponse__KeepAlive *) &ka_inner},
};

static const struct rpc_method test_methods[] = {
        {.path = "/test.T/Sum",
         .kind = RPC_CLIENT_STREAM,
         .input = &guestd__v1__debug_request__descriptor,
         .output = &guestd__v1__info_response__descriptor,
         .on_message = sum_message,
         .on_end = sum_end,
         .on_cancel = sum_cancel},
        {.path = "/test.T/Fail",
         .kind = RPC_UNARY,
         .input = &guestd__v1__debug_request__descriptor,
         .output = &guestd__v1__info_response__descriptor,
         .handle = fail_handle},
        {.path = "/test.T/Hang",
         .kind = RPC_UNARY,
         .input = &guestd__v1__debug_request__descriptor,
         .output = &guestd__v1__info_response__descriptor,
         .handle = hang_handle,
         .on_cancel = hang_cancel},
        {.path = "/test.T/HangStream",
         .kind = RPC_SERVER_STREAM,
         .input = &guestd__v1__debug_request__descriptor,
         .output = &guestd__v1__events_response__descriptor,
         .handle = hang_handle,
         .on_cancel = hang_cancel,
         .keepalive = &ka.base},
        {.path = "/test.T/Echo",
         .kind = RPC_UNARY,
         .input = &guestd__v1__debug_request__descriptor,
         .output = &guestd__v1__info_response__descriptor,
         .handle = echo_handle},
};

/* --- server and client ---------------------------------------------------------------------- */

struct fixture {
    uv_loop_t loop;
    struct agent_state state;
    struct router *router;
    struct http_server *http;
    struct net_listener *listener;
    char dir[64];
    char path[128];
};

static void on_conn(struct net_listener *l, uv_stream_t *server, enum transport t, void *data)
{
    struct fixture *f = data;
    (void) l;
    ASSERT_OK(http_server_accept(f->http, server, t));
}

static void fixture_start(struct fixture *f)
{
    struct net_addr a;
    strcpy(f->dir, "/tmp/guestd-rpc-XXXXXX");
    ASSERT_NOT_NULL(mkdtemp(f->dir));
    snprintf(f->path, sizeof(f->path), "%s/s", f->dir);
    char spec[160];
    snprintf(spec, sizeof(spec), "unix:%s", f->path);
    ASSERT_OK(net_addr_parse(spec, &a));
    ASSERT_OK(uv_loop_init(&f->loop));
    state_init(&f->state);
    ASSERT_OK(router_new(&f->state, &f->router));
    router_add_methods(f->router, test_methods, ARRAY_SIZE(test_methods));
    ASSERT_OK(http_server_new(&f->loop, router_handle, f->router, &f->http));
    ASSERT_OK(net_listen(&f->loop, &a, on_conn, f, &f->listener));
}

static void on_walk_close(uv_handle_t *h, void *arg)
{
    (void) arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static void fixture_stop(struct fixture *f)
{
    net_listener_close(f->listener);
    http_server_shutdown(f->http, NULL, NULL);
    (void) uv_run(&f->loop, UV_RUN_DEFAULT);
    uv_walk(&f->loop, on_walk_close, NULL);
    (void) uv_run(&f->loop, UV_RUN_DEFAULT);
    ASSERT_EQ(uv_loop_close(&f->loop), 0);
    http_server_free(f->http);
    router_free(f->router);
    state_done(&f->state);
    rmdir(f->dir);
}

static void on_tick(uv_timer_t *t)
{
    pid_t *child = t->data;
    int status;
    if (waitpid(*child, &status, WNOHANG) == *child) {
        *child = WIFEXITED(status) ? -WEXITSTATUS(status) - 1 : -1000;
        uv_stop(t->loop);
    }
}

/* Runs `client` in a child; serves until it exits. Returns its exit status. */
static int run_client(struct fixture *f, int (*client)(const char *path))
{
    fflush(stdout);
    pid_t child = fork();
    ASSERT_TRUE(child >= 0);
    if (child == 0)
        _exit(client(f->path));
    uv_timer_t tick;
    uv_timer_init(&f->loop, &tick);
    tick.data = &child;
    uv_timer_start(&tick, on_tick, 5, 5);
    while (child > 0)
        (void) uv_run(&f->loop, UV_RUN_DEFAULT);
    uv_close((uv_handle_t *) &tick, NULL);
    (void) uv_run(&f->loop, UV_RUN_NOWAIT);
    return -child - 1;
}

static int dial(const char *path)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    strncpy(sa.sun_path, path, sizeof(sa.sun_path) - 1);
    if (fd < 0 || connect(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0)
        return -1;
    struct timeval tv = {.tv_sec = 20};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    return fd;
}

/* Sends `n` bytes one at a time, so every parser and envelope boundary is crossed. */
static int send_slowly(int fd, const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (send(fd, p + i, 1, MSG_NOSIGNAL) != 1)
            return -1;
    return 0;
}

/* Reads until EOF into a static buffer. */
static const char *read_all(int fd, size_t *ret_len)
{
    static char buf[65536];
    size_t len = 0;
    ssize_t n;
    while (len < sizeof(buf) - 1 && (n = recv(fd, buf + len, sizeof(buf) - 1 - len, 0)) > 0)
        len += (size_t) n;
    buf[len] = '\0';
    if (ret_len)
        *ret_len = len;
    return buf;
}

static size_t envelope(char *out, uint8_t flags, const char *json)
{
    size_t n = strlen(json);
    out[0] = (char) flags;
    out[1] = (char) (n >> 24);
    out[2] = (char) (n >> 16);
    out[3] = (char) (n >> 8);
    out[4] = (char) n;
    memcpy(out + 5, json, n);
    return 5 + n;
}

static size_t chunk(char *out, const char *data, size_t n)
{
    int h = sprintf(out, "%zx\r\n", n);
    memcpy(out + h, data, n);
    memcpy(out + h + n, "\r\n", 2);
    return (size_t) h + n + 2;
}

#define EXPECT(cond)                                                         \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "# client: %s failed; got:\n%s\n", #cond, resp); \
            return 1;                                                        \
        }                                                                    \
    } while (0)

/* --- cases ---------------------------------------------------------------------------------- */

static int client_sum(const char *path)
{
    char body[512], env[64], req[1024];
    size_t blen = 0;
    const char *msgs[] = {"{\"limit\":1}", "{\"limit\":2}", "{\"limit\":39}"};
    for (size_t i = 0; i < 3; i++) {
        size_t e = envelope(env, 0, msgs[i]);
        blen += chunk(body + blen, env, e);
    }
    memcpy(body + blen, "0\r\n\r\n", 5);
    blen += 5;
    int n = snprintf(
            req, sizeof(req),
            "POST /test.T/Sum HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            "Content-Type: application/connect+json\r\nTransfer-Encoding: chunked\r\n\r\n");
    memcpy(req + n, body, blen);
    int fd = dial(path);
    if (fd < 0 || send_slowly(fd, req, (size_t) n + blen) < 0)
        return 2;
    size_t len;
    const char *resp = read_all(fd, &len);
    EXPECT(strstr(resp, "HTTP/1.1 200 OK\r\n"));
    EXPECT(strstr(resp, "Content-Type: application/connect+json\r\n"));
    EXPECT(memmem(resp, len, "\"generation\":\"3\"", 16));
    EXPECT(memmem(resp, len, "\"uptimeMs\":\"42\"", 15));
    EXPECT(memmem(resp, len, "\x02\x00\x00\x00\x02{}", 7));
    return 0;
}

TEST(client_stream_sums_messages_split_bytewise)
{
    struct fixture f;
    fixture_start(&f);
    ASSERT_EQ(run_client(&f, client_sum), 0);
    fixture_stop(&f);
}

static int client_compressed(const char *path)
{
    char env[64], req[1024];
    size_t e = envelope(env, 1, "{\"limit\":1}");
    int n = snprintf(req, sizeof(req),
                     "POST /test.T/Sum HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     "Content-Type: application/connect+json\r\nContent-Length: %zu\r\n\r\n",
                     e);
    memcpy(req + n, env, e);
    int fd = dial(path);
    if (fd < 0 || send(fd, req, (size_t) n + e, 0) < 0)
        return 2;
    size_t len;
    const char *resp = read_all(fd, &len);
    EXPECT(strstr(resp, "HTTP/1.1 200 OK\r\n"));
    EXPECT(memmem(resp, len, "{\"error\":{\"code\":\"invalid_argument\"", 30));
    return 0;
}

TEST(client_stream_rejects_compressed_envelope)
{
    struct fixture f;
    fixture_start(&f);
    ASSERT_EQ(run_client(&f, client_compressed), 0);
    fixture_stop(&f);
}

static int client_fail(const char *path)
{
    static const char req[] = "POST /test.T/Fail HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                              "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
    int fd = dial(path);
    if (fd < 0 || send_slowly(fd, req, sizeof(req) - 1) < 0)
        return 2;
    const char *resp = read_all(fd, NULL);
    EXPECT(strstr(resp, "HTTP/1.1 404 Not Found\r\n"));
    EXPECT(strstr(resp, "Content-Type: application/json\r\n"));
    EXPECT(strstr(resp, "{\"code\":\"not_found\",\"message\":\"process with pid 42 not found\"}"));
    return 0;
}

TEST(unary_error_maps_code_to_status_and_json)
{
    struct fixture f;
    fixture_start(&f);
    ASSERT_EQ(run_client(&f, client_fail), 0);
    fixture_stop(&f);
}

static int client_deadline(const char *path)
{
    static const char req[] = "POST /test.T/Hang HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                              "Content-Type: application/json\r\nConnect-Timeout-Ms: 100\r\n"
                              "Content-Length: 2\r\n\r\n{}";
    int fd = dial(path);
    if (fd < 0 || send(fd, req, sizeof(req) - 1, 0) < 0)
        return 2;
    const char *resp = read_all(fd, NULL);
    EXPECT(strstr(resp, "HTTP/1.1 504 Gateway Timeout\r\n"));
    EXPECT(strstr(resp,
                  "{\"code\":\"deadline_exceeded\",\"message\":\"context deadline exceeded\"}"));
    return 0;
}

TEST(unary_deadline_cancels_handler)
{
    struct fixture f;
    fixture_start(&f);
    cancels = 0;
    ASSERT_EQ(run_client(&f, client_deadline), 0);
    ASSERT_EQ(cancels, 1);
    ASSERT_EQ(last_cancel, RPC_DEADLINE_EXCEEDED);
    fixture_stop(&f);
}

static int client_keepalive_then_leave(const char *path)
{
    char env[64], req[1024];
    size_t e = envelope(env, 0, "{}");
    int n = snprintf(req, sizeof(req),
                     "POST /test.T/HangStream HTTP/1.1\r\nHost: x\r\n"
                     "Content-Type: application/connect+json\r\nKeepalive-Ping-Interval: 1\r\n"
                     "Content-Length: %zu\r\n\r\n",
                     e);
    memcpy(req + n, env, e);
    int fd = dial(path);
    if (fd < 0 || send(fd, req, (size_t) n + e, 0) < 0)
        return 2;
    /* Wait for the first keepalive frame, then hang up mid-stream. */
    char resp[4096] = "";
    size_t len = 0;
    while (!memmem(resp, len, "{\"keepalive\":{}}", 16)) {
        ssize_t r = recv(fd, resp + len, sizeof(resp) - 1 - len, 0);
        if (r <= 0)
            return 3;
        len += (size_t) r;
        resp[len] = '\0';
    }
    EXPECT(strstr(resp, "Transfer-Encoding: chunked\r\n"));
    close(fd);
    return 0;
}

TEST(stream_keepalive_and_client_disconnect_cancels)
{
    struct fixture f;
    fixture_start(&f);
    cancels = 0;
    ASSERT_EQ(run_client(&f, client_keepalive_then_leave), 0);
    /* The disconnect reaches the server after the child is gone: serve until it is seen. */
    for (int i = 0; i < 2000 && cancels == 0; i++) {
        (void) uv_run(&f.loop, UV_RUN_NOWAIT);
        usleep(1000);
    }
    ASSERT_EQ(cancels, 1);
    ASSERT_EQ(last_cancel, RPC_CANCELED);
    fixture_stop(&f);
}

static int client_proto(const char *path)
{
    /* DebugRequest{limit=7}: field 1 varint. */
    static const char req[] =
            "POST /test.T/Echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            "Content-Type: application/proto\r\nContent-Length: 2\r\n\r\n\x08\x07";
    int fd = dial(path);
    if (fd < 0 || send_slowly(fd, req, sizeof(req) - 1) < 0)
        return 2;
    size_t len;
    const char *resp = read_all(fd, &len);
    EXPECT(strstr(resp, "HTTP/1.1 200 OK\r\n"));
    EXPECT(strstr(resp, "Content-Type: application/proto\r\n"));
    /* InfoResponse{version="echo" (field 1), generation=7 (field 5)}. */
    EXPECT(memmem(resp, len,
                  "\x0a\x04"
                  "echo",
                  6));
    EXPECT(memmem(resp, len, "\x28\x07", 2));
    return 0;
}

TEST(unary_proto_codec)
{
    struct fixture f;
    fixture_start(&f);
    ASSERT_EQ(run_client(&f, client_proto), 0);
    fixture_stop(&f);
}

static int client_bad_json(const char *path)
{
    static const char req[] = "POST /test.T/Echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                              "Content-Type: application/json\r\nContent-Length: 13\r\n\r\n"
                              "{\"limit\":\"x\"}";
    int fd = dial(path);
    if (fd < 0 || send(fd, req, sizeof(req) - 1, 0) < 0)
        return 2;
    const char *resp = read_all(fd, NULL);
    EXPECT(strstr(resp, "HTTP/1.1 400 Bad Request\r\n"));
    EXPECT(strstr(resp, "\"code\":\"invalid_argument\""));
    EXPECT(strstr(resp, "limit"));
    return 0;
}

TEST(unary_bad_field_names_the_field)
{
    struct fixture f;
    fixture_start(&f);
    ASSERT_EQ(run_client(&f, client_bad_json), 0);
    fixture_stop(&f);
}

TEST_MAIN()

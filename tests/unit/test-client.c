/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Tests for agent/client. Each network test forks a scripted peer that listens on a Unix socket
 * (or loopback TCP) in a temp dir, speaks canned bytes and records what it received in a
 * capture file, which the test then checks.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <linux/vm_sockets.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "base/buf.h"
#include "build-config.h"
#include "client/client.h"
#include "harness.h"
#include "process/process.pb-c.h"

/* Most bytes a peer records. */
#define PEER_CAPTURE_MAX (1024 * 1024)
/* A peer that is still running after this long is stuck: it kills itself. */
#define PEER_ALARM_S     20
/* A peer that waits for connections gives up after this much idle time. */
#define PEER_IDLE_MS     1500

#define ASSERT_CONTAINS(b, s)                                                          \
    do {                                                                               \
        const struct buf *_b = (b);                                                    \
        const char *_s = (s);                                                          \
        if (!_b->data || !memmem(_b->data, _b->len, _s, strlen(_s)))                   \
            test_fail(__FILE__, __LINE__, "%s does not contain \"%s\":\n%.*s", #b, _s, \
                      (int) _b->len, _b->data ? _b->data : "");                        \
    } while (0)

#define ASSERT_NOT_CONTAINS(b, s)                                        \
    do {                                                                 \
        const struct buf *_b = (b);                                      \
        const char *_s = (s);                                            \
        if (_b->data && memmem(_b->data, _b->len, _s, strlen(_s)))       \
            test_fail(__FILE__, __LINE__, "%s contains \"%s\"", #b, _s); \
    } while (0)

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Scripted peer */

struct peer {
    pid_t pid;
    char dir[64];
    char path[128];
    char capture[128];
    char address[192];
};

typedef void (*peer_fn)(int lfd, struct buf *cap);

static _Noreturn void peer_die(const char *what)
{
    fprintf(stderr, "peer: %s (%s)\n", what, strerror(errno));
    _exit(3);
}

static int peer_accept(int lfd)
{
    struct pollfd p = {.fd = lfd, .events = POLLIN};
    if (poll(&p, 1, PEER_IDLE_MS) <= 0)
        return -1;
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0)
        peer_die("accept");
    return fd;
}

static bool peer_getc(int fd, char *ch)
{
    for (;;) {
        ssize_t k = read(fd, ch, 1);
        if (k == 1)
            return true;
        if (k == 0)
            return false;
        if (errno != EINTR)
            return false;
    }
}

/* Reads one line byte by byte (nothing beyond it is consumed) into `line`, also appending to cap.
 */
static bool peer_read_line(int fd, struct buf *cap, struct buf *line)
{
    char ch;
    buf_reset(line);
    do {
        if (!peer_getc(fd, &ch))
            return false;
        if (buf_append_char(line, ch) < 0 || buf_append_char(cap, ch) < 0)
            peer_die("line too long");
    } while (ch != '\n');
    return true;
}

static void peer_read_n(int fd, size_t n, struct buf *cap, struct buf *body)
{
    for (size_t i = 0; i < n; i++) {
        char ch;
        if (!peer_getc(fd, &ch))
            peer_die("body cut short");
        if (buf_append_char(cap, ch) < 0 || (body && buf_append_char(body, ch) < 0))
            peer_die("body too long");
    }
}

/*
 * Reads one HTTP request into cap, byte by byte so nothing of a following one is consumed. The
 * de-chunked body also goes to `body` if not NULL. False on EOF before the first byte.
 */
static bool peer_read_request(int fd, struct buf *cap, struct buf *body)
{
    struct buf line;
    size_t length = 0;
    bool chunked = false, first = true;

    buf_init(&line, 64 * 1024);
    for (;;) {
        if (!peer_read_line(fd, cap, &line)) {
            if (first && line.len == 0) {
                buf_free(&line);
                return false;
            }
            peer_die("request head cut short");
        }
        first = false;
        if (streq(line.data, "\r\n"))
            break;
        if (strncasecmp(line.data, "Content-Length:", 15) == 0)
            length = strtoul(line.data + 15, NULL, 10);
        if (strncasecmp(line.data, "Transfer-Encoding: chunked", 26) == 0)
            chunked = true;
    }
    if (!chunked) {
        peer_read_n(fd, length, cap, body);
        buf_free(&line);
        return true;
    }
    for (;;) {
        if (!peer_read_line(fd, cap, &line))
            peer_die("chunk size cut short");
        size_t size = strtoul(line.data, NULL, 16);
        if (size == 0)
            break;
        peer_read_n(fd, size, cap, body);
        peer_read_n(fd, 2, cap, NULL);
    }
    do {
        if (!peer_read_line(fd, cap, &line))
            peer_die("trailers cut short");
    } while (!streq(line.data, "\r\n"));
    buf_free(&line);
    return true;
}

/* Sends `n` bytes, in pieces of `split` bytes with pauses between them when split > 0. */
static void peer_send_split(int fd, const void *p, size_t n, size_t split)
{
    const char *s = p;
    while (n > 0) {
        size_t part = split ? (split < n ? split : n) : n;
        ssize_t k = send(fd, s, part, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            /* The client may hang up once it has seen enough (limits, errors). */
            if (errno == EPIPE || errno == ECONNRESET)
                return;
            peer_die("send");
        }
        s += k;
        n -= (size_t) k;
        if (split)
            usleep(500);
    }
}

static void peer_send(int fd, const char *s)
{
    peer_send_split(fd, s, strlen(s), 0);
}

static void peer_run(struct peer *p, int lfd, peer_fn fn)
{
    p->pid = fork();
    ASSERT_TRUE(p->pid >= 0);
    if (p->pid == 0) {
        struct buf cap;
        (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
        alarm(PEER_ALARM_S);
        buf_init(&cap, PEER_CAPTURE_MAX);
        fn(lfd, &cap);
        FILE *f = fopen(p->capture, "we");
        if (!f || fwrite(cap.data ? cap.data : "", 1, cap.len, f) != cap.len || fclose(f) != 0)
            peer_die("capture");
        _exit(0);
    }
    close(lfd);
}

static void peer_init(struct peer *p)
{
    memset(p, 0, sizeof(*p));
    snprintf(p->dir, sizeof(p->dir), "/tmp/test-client-XXXXXX");
    ASSERT_NOT_NULL(mkdtemp(p->dir));
    snprintf(p->path, sizeof(p->path), "%s/sock", p->dir);
    snprintf(p->capture, sizeof(p->capture), "%s/capture", p->dir);
}

static int peer_listen_unix(struct peer *p)
{
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT_TRUE(lfd >= 0);
    ASSERT_TRUE(strlen(p->path) < sizeof(un.sun_path));
    memcpy(un.sun_path, p->path, strlen(p->path) + 1);
    ASSERT_OK(bind(lfd, (struct sockaddr *) &un, sizeof(un)));
    ASSERT_OK(listen(lfd, 16));
    return lfd;
}

/* Starts a peer on a Unix socket; p->address is `unix:PATH`. */
static void peer_start(struct peer *p, peer_fn fn)
{
    peer_init(p);
    snprintf(p->address, sizeof(p->address), "unix:%s", p->path);
    peer_run(p, peer_listen_unix(p), fn);
}

/* Starts a peer on an ephemeral loopback TCP port; p->address is `tcp:127.0.0.1:PORT`. */
static uint16_t peer_start_tcp(struct peer *p, peer_fn fn)
{
    struct sockaddr_in in = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(in);

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT_TRUE(lfd >= 0);
    ASSERT_OK(bind(lfd, (struct sockaddr *) &in, sizeof(in)));
    ASSERT_OK(listen(lfd, 16));
    ASSERT_OK(getsockname(lfd, (struct sockaddr *) &in, &len));
    peer_init(p);
    snprintf(p->address, sizeof(p->address), "tcp:127.0.0.1:%u", ntohs(in.sin_port));
    peer_run(p, lfd, fn);
    return ntohs(in.sin_port);
}

/* Waits for the peer, checks it exited cleanly and loads what it captured. */
static void peer_finish(struct peer *p, struct buf *cap)
{
    int status;
    ASSERT_EQ(waitpid(p->pid, &status, 0), p->pid);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        test_fail(__FILE__, __LINE__, "peer failed: status 0x%x", status);
    buf_init(cap, PEER_CAPTURE_MAX);
    FILE *f = fopen(p->capture, "re");
    ASSERT_NOT_NULL(f);
    char tmp[4096];
    size_t n;
    while ((n = fread(tmp, 1, sizeof(tmp), f)) > 0)
        ASSERT_OK(buf_append(cap, tmp, n));
    fclose(f);
    unlink(p->capture);
    unlink(p->path);
    rmdir(p->dir);
}

static void peer_kill(struct peer *p)
{
    kill(p->pid, SIGKILL);
    (void) waitpid(p->pid, NULL, 0);
    unlink(p->capture);
    unlink(p->path);
    rmdir(p->dir);
}

/* The generic peer: serves canned replies in order, one per request. */

/* Most canned replies one peer serves. */
#define CANNED_MAX 4

static struct buf canned[CANNED_MAX];
static size_t n_canned;
static size_t canned_split;   /* send each reply in pieces of this size (0: at once) */
static bool canned_reconnect; /* close after each reply and accept a new connection */
static bool canned_keep_body; /* record the de-chunked bodies after the raw requests */

static void canned_reset(void)
{
    for (size_t i = 0; i < n_canned; i++)
        buf_free(&canned[i]);
    n_canned = 0;
}

static void canned_add(const void *p, size_t n)
{
    ASSERT_TRUE(n_canned < CANNED_MAX);
    buf_init(&canned[n_canned], PEER_CAPTURE_MAX);
    ASSERT_OK(buf_append(&canned[n_canned], p, n));
    n_canned++;
}

static void canned_add_str(const char *s)
{
    canned_add(s, strlen(s));
}

static void peer_canned(int lfd, struct buf *cap)
{
    struct buf body;
    int fd = -1;

    buf_init(&body, PEER_CAPTURE_MAX);
    for (size_t i = 0; i < n_canned; i++) {
        if (fd < 0)
            fd = peer_accept(lfd);
        if (fd < 0)
            peer_die("no connection");
        if (!peer_read_request(fd, cap, canned_keep_body ? &body : NULL))
            peer_die("client closed early");
        peer_send_split(fd, canned[i].data, canned[i].len, canned_split);
        if (canned_reconnect) {
            close(fd);
            fd = -1;
        }
    }
    if (canned_keep_body) {
        (void) buf_append_str(cap, "\n--body--\n");
        (void) buf_append(cap, body.data ? body.data : "", body.len);
    }
}

/* Builders for responses */

static void add_chunk(struct buf *b, const void *p, size_t n)
{
    ASSERT_OK(buf_printf(b, "%zx\r\n", n));
    ASSERT_OK(buf_append(b, p, n));
    ASSERT_OK(buf_append_str(b, "\r\n"));
}

static void add_frame(struct buf *b, uint8_t flags, const void *p, size_t n)
{
    uint8_t hdr[5] = {flags, (uint8_t) (n >> 24), (uint8_t) (n >> 16), (uint8_t) (n >> 8),
                      (uint8_t) n};
    ASSERT_OK(buf_append(b, hdr, sizeof(hdr)));
    ASSERT_OK(buf_append(b, p, n));
}

/* One frame in one HTTP chunk. */
static void add_chunk_frame(struct buf *b, uint8_t flags, const char *json)
{
    struct buf f;
    buf_init(&f, PEER_CAPTURE_MAX);
    add_frame(&f, flags, json, strlen(json));
    add_chunk(b, f.data, f.len);
    buf_free(&f);
}

#define STREAM_HEAD_JSON                                            \
    "HTTP/1.1 200 OK\r\nContent-Type: application/connect+json\r\n" \
    "Transfer-Encoding: chunked\r\n\r\n"

static const char *body_of(const struct buf *cap, size_t *ret_len)
{
    const char *p = memmem(cap->data, cap->len, "\r\n\r\n", 4);
    ASSERT_NOT_NULL(p);
    p += 4;
    *ret_len = cap->len - (size_t) (p - cap->data);
    return p;
}

static struct client *new_client(const char *address, const struct client_options *o)
{
    struct client *c = NULL;
    ASSERT_OK(client_new(address, o, &c));
    return c;
}

/* Addresses */

TEST(addr_unix)
{
    struct client_addr a;
    const struct sockaddr_un *un = (const struct sockaddr_un *) &a.sa;

    ASSERT_OK(client_addr_parse("unix:/run/guestd.sock", &a));
    ASSERT_EQ(a.kind, CLIENT_ADDR_UNIX);
    ASSERT_EQ(un->sun_family, AF_UNIX);
    ASSERT_STR_EQ(un->sun_path, "/run/guestd.sock");
    ASSERT_STR_EQ(a.host, "localhost");

    ASSERT_OK(client_addr_parse("unix:@guestd", &a));
    ASSERT_EQ(un->sun_path[0], '\0');
    ASSERT_MEM_EQ(un->sun_path + 1, "guestd", 6);
    ASSERT_EQ(a.sa_len, offsetof(struct sockaddr_un, sun_path) + 7);

    char longpath[200];
    memset(longpath, 'a', sizeof(longpath));
    memcpy(longpath, "unix:/", 6);
    longpath[sizeof(longpath) - 1] = '\0';
    ASSERT_ERR(client_addr_parse(longpath, &a), EINVAL);
    ASSERT_ERR(client_addr_parse("unix:", &a), EINVAL);
    ASSERT_ERR(client_addr_parse("unix:@", &a), EINVAL);
}

TEST(addr_tcp)
{
    struct client_addr a;
    const struct sockaddr_in *in = (const struct sockaddr_in *) &a.sa;
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *) &a.sa;
    char text[INET6_ADDRSTRLEN];

    ASSERT_OK(client_addr_parse("tcp:127.0.0.1:49983", &a));
    ASSERT_EQ(a.kind, CLIENT_ADDR_TCP);
    ASSERT_EQ(in->sin_family, AF_INET);
    ASSERT_EQ(ntohs(in->sin_port), 49983);
    ASSERT_EQ(ntohl(in->sin_addr.s_addr), 0x7f000001);
    ASSERT_STR_EQ(a.host, "127.0.0.1:49983");

    ASSERT_OK(client_addr_parse("tcp:localhost:8080", &a));
    ASSERT_EQ(ntohl(in->sin_addr.s_addr), INADDR_LOOPBACK);
    ASSERT_EQ(ntohs(in->sin_port), 8080);
    ASSERT_STR_EQ(a.host, "localhost:8080");

    ASSERT_OK(client_addr_parse("tcp:[::1]:1", &a));
    ASSERT_EQ(in6->sin6_family, AF_INET6);
    ASSERT_EQ(ntohs(in6->sin6_port), 1);
    ASSERT_NOT_NULL(inet_ntop(AF_INET6, &in6->sin6_addr, text, sizeof(text)));
    ASSERT_STR_EQ(text, "::1");
    ASSERT_STR_EQ(a.host, "[::1]:1");

    static const char *const bad[] = {
            "tcp:example.com:80", /* no name resolution */
            "tcp:1.2.3:80",       "tcp:1.2.3.4",      "tcp:1.2.3.4:",   "tcp:1.2.3.4:0",
            "tcp:1.2.3.4:65536",  "tcp:1.2.3.4:8x",   "tcp:1.2.3.4:-1", "tcp::80",
            "tcp:::1:80",         "tcp:[::1]80",      "tcp:[::1]:",     "tcp:[1.2.3.4]:80",
            "tcp:[::1:80",        "tcp:256.0.0.1:80",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (client_addr_parse(bad[i], &a) != -EINVAL)
            test_fail(__FILE__, __LINE__, "accepted '%s'", bad[i]);
}

TEST(addr_vsock)
{
    struct client_addr a;
    const struct sockaddr_vm *vm = (const struct sockaddr_vm *) &a.sa;

    ASSERT_OK(client_addr_parse("vsock:3:1024", &a));
    ASSERT_EQ(a.kind, CLIENT_ADDR_VSOCK);
    ASSERT_EQ(vm->svm_family, AF_VSOCK);
    ASSERT_UEQ(vm->svm_cid, 3);
    ASSERT_UEQ(vm->svm_port, 1024);
    ASSERT_EQ(a.sa_len, sizeof(struct sockaddr_vm));

    ASSERT_OK(client_addr_parse("vsock:2:4294967294", &a));
    ASSERT_UEQ(vm->svm_port, 4294967294u);

    static const char *const bad[] = {"vsock:3",
                                      "vsock:3:",
                                      "vsock::1024",
                                      "vsock:x:1",
                                      "vsock:3:-1",
                                      "vsock:4294967295:1",
                                      "vsock:3:4294967295",
                                      "vsock:3:1:2",
                                      "vsock:3:99999999999"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (client_addr_parse(bad[i], &a) != -EINVAL)
            test_fail(__FILE__, __LINE__, "accepted '%s'", bad[i]);
}

TEST(addr_fc)
{
    struct client_addr a;
    const struct sockaddr_un *un = (const struct sockaddr_un *) &a.sa;

    ASSERT_OK(client_addr_parse("fc:/run/fc/v.sock:1024", &a));
    ASSERT_EQ(a.kind, CLIENT_ADDR_FC);
    ASSERT_EQ(un->sun_family, AF_UNIX);
    ASSERT_STR_EQ(un->sun_path, "/run/fc/v.sock");
    ASSERT_UEQ(a.fc_port, 1024);

    /* The port follows the last colon. */
    ASSERT_OK(client_addr_parse("fc:./a:b/v.sock:52", &a));
    ASSERT_STR_EQ(un->sun_path, "./a:b/v.sock");
    ASSERT_UEQ(a.fc_port, 52);

    static const char *const bad[] = {"fc:/x", "fc::52", "fc:/x:", "fc:/x:port", "fc:/x:-1"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (client_addr_parse(bad[i], &a) != -EINVAL)
            test_fail(__FILE__, __LINE__, "accepted '%s'", bad[i]);
}

TEST(addr_bad_scheme)
{
    struct client_addr a;
    struct client *c = NULL;

    ASSERT_ERR(client_addr_parse(NULL, &a), EINVAL);
    ASSERT_ERR(client_addr_parse("", &a), EINVAL);
    ASSERT_ERR(client_addr_parse("/run/guestd.sock", &a), EINVAL);
    ASSERT_ERR(client_addr_parse("http://127.0.0.1:49983", &a), EINVAL);
    ASSERT_ERR(client_addr_parse("UNIX:/x", &a), EINVAL);
    ASSERT_ERR(client_addr_parse("unix", &a), EINVAL);
    ASSERT_ERR(client_new("tcp:host:1", NULL, &c), EINVAL);
    ASSERT_NULL(c);
}

/* Options and request validation (no peer needed: these fail before dialling) */

TEST(request_validation)
{
    struct client_options o = {.connect_timeout_ms = -2};
    struct client *c = NULL;
    struct client_header crlf[] = {{"X-A", "a\r\nX-Injected: 1"}};
    struct client_header framing[] = {{"content-length", "5"}};
    struct client_header badname[] = {{"X A", "b"}};

    ASSERT_ERR(client_new("unix:/nonexistent/guestd.sock", &o, &c), EINVAL);
    o = (struct client_options){.token = "a\nb"};
    ASSERT_ERR(client_new("unix:/nonexistent/guestd.sock", &o, &c), EINVAL);
    c = new_client("unix:/nonexistent/guestd.sock", NULL);

    ASSERT_ERR(client_set_user(c, "a:b"), EINVAL);
    ASSERT_ERR(client_set_user(c, ""), EINVAL);
    ASSERT_ERR(client_set_token(c, "tok\r\n"), EINVAL);
    ASSERT_OK(client_set_user(c, "root"));
    ASSERT_OK(client_set_user(c, NULL));

    struct client_request r = {.method = "GET", .target = "/health"};
    r.headers = crlf;
    r.n_headers = 1;
    ASSERT_ERR(client_request_start(c, &r), EINVAL);
    r.headers = framing;
    ASSERT_ERR(client_request_start(c, &r), EINVAL);
    r.headers = badname;
    ASSERT_ERR(client_request_start(c, &r), EINVAL);
    r = (struct client_request){.method = "GET", .target = "health"};
    ASSERT_ERR(client_request_start(c, &r), EINVAL);
    r.target = "/a b";
    ASSERT_ERR(client_request_start(c, &r), EINVAL);
    r = (struct client_request){.method = "GE T", .target = "/"};
    ASSERT_ERR(client_request_start(c, &r), EINVAL);
    r = (struct client_request){.method = "POST",
                                .target = "/",
                                .body = "x",
                                .body_len = 1,
                                .flags = CLIENT_REQUEST_CHUNKED};
    ASSERT_ERR(client_request_start(c, &r), EINVAL);
    ASSERT_EQ(client_get_dial_count(c), 0);

    /* A valid request now dials, and fails like the socket does. */
    r = (struct client_request){.method = "GET", .target = "/health"};
    ASSERT_ERR(client_request_start(c, &r), ENOENT);

    struct client_error err = {0};
    Process__ListRequest req = PROCESS__LIST_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    ASSERT_ERR(client_unary(c, "/process.Process/List", NULL, &req.base,
                            &process__list_response__descriptor, &err, &resp),
               ENOENT);
    ASSERT_STR_EQ(err.code, "unavailable");
    ASSERT_NOT_NULL(strstr(err.message, "No such file or directory"));
    ASSERT_EQ(err.http_status, 0);
    client_error_done(&err);
    client_free(c);
}

TEST(code_from_http_status)
{
    ASSERT_STR_EQ(client_code_from_http_status(400), "internal");
    ASSERT_STR_EQ(client_code_from_http_status(401), "unauthenticated");
    ASSERT_STR_EQ(client_code_from_http_status(403), "permission_denied");
    ASSERT_STR_EQ(client_code_from_http_status(404), "unimplemented");
    ASSERT_STR_EQ(client_code_from_http_status(429), "unavailable");
    ASSERT_STR_EQ(client_code_from_http_status(502), "unavailable");
    ASSERT_STR_EQ(client_code_from_http_status(503), "unavailable");
    ASSERT_STR_EQ(client_code_from_http_status(504), "unavailable");
    ASSERT_STR_EQ(client_code_from_http_status(500), "unknown");
    ASSERT_STR_EQ(client_code_from_http_status(409), "unknown");
}

/* Unary calls */

#define LIST_JSON                                                                   \
    "{\"processes\":[{\"config\":{\"cmd\":\"/bin/sh\",\"args\":[\"-c\",\"true\"]}," \
    "\"pid\":42,\"tag\":\"web\"}]}"

static void add_json_reply(int status, const char *reason, const char *ctype, const char *body)
{
    struct buf b;
    buf_init(&b, PEER_CAPTURE_MAX);
    ASSERT_OK(buf_printf(&b, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n\r\n%s",
                         status, reason, ctype, strlen(body), body));
    canned_add(b.data, b.len);
    buf_free(&b);
}

static void check_list_response(const ProtobufCMessage *m)
{
    const Process__ListResponse *l = (const Process__ListResponse *) m;
    ASSERT_NOT_NULL(m);
    ASSERT_TRUE(m->descriptor == &process__list_response__descriptor);
    ASSERT_EQ(l->n_processes, 1);
    ASSERT_EQ(l->processes[0]->pid, 42);
    ASSERT_STR_EQ(l->processes[0]->config->cmd, "/bin/sh");
    ASSERT_EQ(l->processes[0]->config->n_args, 2);
    ASSERT_STR_EQ(l->processes[0]->config->args[1], "true");
    ASSERT_EQ(l->processes[0]->_tag_case, PROCESS__PROCESS_INFO___TAG_TAG);
    ASSERT_STR_EQ(l->processes[0]->tag, "web");
}

TEST(unary_json_ok)
{
    struct peer p;
    struct buf cap;
    struct client_error err = {0};
    struct client_header extra[] = {{"Keepalive-Ping-Interval", "50"}};
    struct client_call_options o = {.timeout_ms = 5000, .headers = extra, .n_headers = 1};
    Process__ListRequest req = PROCESS__LIST_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    size_t blen;

    add_json_reply(200, "OK", "application/json; charset=utf-8", LIST_JSON);
    peer_start(&p, peer_canned);
    struct client *c = new_client(p.address, NULL);
    ASSERT_OK(client_unary(c, "/process.Process/List", &o, &req.base,
                           &process__list_response__descriptor, &err, &resp));
    ASSERT_NULL(err.code);
    check_list_response(resp);
    protobuf_c_message_free_unpacked(resp, NULL);
    client_free(c);

    peer_finish(&p, &cap);
    ASSERT_TRUE(cap.len > 0 &&
                strncmp(cap.data, "POST /process.Process/List HTTP/1.1\r\n", 37) == 0);
    ASSERT_CONTAINS(&cap, "\r\nHost: localhost\r\n");
    ASSERT_CONTAINS(&cap, "\r\nUser-Agent: guestd-client/" GUESTD_VERSION "\r\n");
    ASSERT_CONTAINS(&cap, "\r\nContent-Type: application/json\r\n");
    ASSERT_CONTAINS(&cap, "\r\nConnect-Protocol-Version: 1\r\n");
    ASSERT_CONTAINS(&cap, "\r\nConnect-Timeout-Ms: 5000\r\n");
    ASSERT_CONTAINS(&cap, "\r\nKeepalive-Ping-Interval: 50\r\n");
    ASSERT_CONTAINS(&cap, "\r\nContent-Length: 2\r\n");
    ASSERT_NOT_CONTAINS(&cap, "X-Access-Token");
    ASSERT_NOT_CONTAINS(&cap, "Authorization");
    const char *body = body_of(&cap, &blen);
    ASSERT_EQ(blen, 2);
    ASSERT_MEM_EQ(body, "{}", 2);
    buf_free(&cap);
}

TEST(unary_connect_error)
{
    struct peer p;
    struct buf cap;
    struct client_error err = {0};
    Process__ListRequest req = PROCESS__LIST_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;

    add_json_reply(404, "Not Found", "application/json",
                   "{\"code\":\"not_found\",\"message\":\"process with pid 7 not found\"}");
    add_json_reply(200, "OK", "application/json", LIST_JSON);
    peer_start(&p, peer_canned);
    struct client *c = new_client(p.address, NULL);
    ASSERT_ERR(client_unary(c, "/process.Process/List", NULL, &req.base,
                            &process__list_response__descriptor, &err, &resp),
               EREMOTEIO);
    ASSERT_NULL(resp);
    ASSERT_STR_EQ(err.code, "not_found");
    ASSERT_STR_EQ(err.message, "process with pid 7 not found");
    ASSERT_EQ(err.http_status, 404);

    /* The error body was read whole: the connection serves the next call, and err is reset. */
    ASSERT_OK(client_unary(c, "/process.Process/List", NULL, &req.base,
                           &process__list_response__descriptor, &err, &resp));
    ASSERT_NULL(err.code);
    check_list_response(resp);
    protobuf_c_message_free_unpacked(resp, NULL);
    ASSERT_EQ(client_get_dial_count(c), 1);
    client_free(c);
    peer_finish(&p, &cap);
    buf_free(&cap);
}

TEST(unary_error_from_status)
{
    struct peer p;
    struct buf cap;
    struct client_error err = {0};
    Process__ListRequest req = PROCESS__LIST_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;

    /* Not JSON: the code comes from the status. */
    add_json_reply(503, "Service Unavailable", "text/plain", "upstream down");
    /* envd's token gate: a numeric code is no Connect error, but its message is kept. */
    add_json_reply(401, "Unauthorized", "application/json",
                   "{\"code\":401,\"message\":\"unauthorized access\"}");
    /* A valid-looking JSON error with an unknown code name. */
    add_json_reply(400, "Bad Request", "application/json", "{\"code\":\"nope\"}");
    /* A 200 with the wrong content type is a protocol violation. */
    add_json_reply(200, "OK", "text/html", "<html></html>");
    peer_start(&p, peer_canned);
    struct client *c = new_client(p.address, NULL);

    ASSERT_ERR(client_unary(c, "/process.Process/List", NULL, &req.base,
                            &process__list_response__descriptor, &err, &resp),
               EREMOTEIO);
    ASSERT_STR_EQ(err.code, "unavailable");
    ASSERT_STR_EQ(err.message, "HTTP 503 Service Unavailable");
    ASSERT_EQ(err.http_status, 503);

    ASSERT_ERR(client_unary(c, "/process.Process/List", NULL, &req.base,
                            &process__list_response__descriptor, &err, &resp),
               EREMOTEIO);
    ASSERT_STR_EQ(err.code, "unauthenticated");
    ASSERT_STR_EQ(err.message, "unauthorized access");
    ASSERT_EQ(err.http_status, 401);

    ASSERT_ERR(client_unary(c, "/process.Process/List", NULL, &req.base,
                            &process__list_response__descriptor, &err, &resp),
               EREMOTEIO);
    ASSERT_STR_EQ(err.code, "internal");

    ASSERT_ERR(client_unary(c, "/process.Process/List", NULL, &req.base,
                            &process__list_response__descriptor, &err, &resp),
               EPROTO);
    ASSERT_STR_EQ(err.code, "internal");
    ASSERT_NOT_NULL(strstr(err.message, "text/html"));
    ASSERT_NULL(resp);
    client_error_done(&err);
    client_free(c);
    peer_finish(&p, &cap);
    buf_free(&cap);
}

TEST(unary_proto)
{
    struct peer p;
    struct buf cap;
    struct client_error err = {0};
    struct client_call_options o = {.codec = CLIENT_CODEC_PROTO};
    Process__ProcessSelector sel = PROCESS__PROCESS_SELECTOR__INIT;
    Process__SendSignalRequest req = PROCESS__SEND_SIGNAL_REQUEST__INIT;
    Process__ListRequest list = PROCESS__LIST_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    uint8_t want[64];
    size_t blen;

    sel.selector_case = PROCESS__PROCESS_SELECTOR__SELECTOR_PID;
    sel.pid = 5;
    req.process = &sel;
    req.signal = PROCESS__SIGNAL__SIGNAL_SIGKILL;
    size_t want_len = protobuf_c_message_pack(&req.base, want);

    /* A binary ListResponse, packed here with protobuf-c itself. */
    Process__ProcessConfig cfg = PROCESS__PROCESS_CONFIG__INIT;
    Process__ProcessInfo info = PROCESS__PROCESS_INFO__INIT;
    Process__ProcessInfo *infos[] = {&info};
    Process__ListResponse lr = PROCESS__LIST_RESPONSE__INIT;
    char *args[] = {"-c", "true"};
    cfg.cmd = "/bin/sh";
    cfg.n_args = 2;
    cfg.args = args;
    info.config = &cfg;
    info.pid = 42;
    info._tag_case = PROCESS__PROCESS_INFO___TAG_TAG;
    info.tag = "web";
    lr.n_processes = 1;
    lr.processes = infos;
    uint8_t packed[256];
    size_t plen = protobuf_c_message_pack(&lr.base, packed);

    canned_add_str(
            "HTTP/1.1 200 OK\r\nContent-Type: application/proto\r\nContent-Length: 0\r\n\r\n");
    struct buf r2;
    buf_init(&r2, 4096);
    ASSERT_OK(buf_printf(&r2,
                         "HTTP/1.1 200 OK\r\nContent-Type: application/proto\r\n"
                         "Content-Length: %zu\r\n\r\n",
                         plen));
    ASSERT_OK(buf_append(&r2, packed, plen));
    canned_add(r2.data, r2.len);
    buf_free(&r2);

    peer_start(&p, peer_canned);
    struct client *c = new_client(p.address, NULL);
    ASSERT_OK(client_unary(c, "/process.Process/SendSignal", &o, &req.base,
                           &process__send_signal_response__descriptor, &err, &resp));
    ASSERT_TRUE(resp->descriptor == &process__send_signal_response__descriptor);
    protobuf_c_message_free_unpacked(resp, NULL);
    ASSERT_OK(client_unary(c, "/process.Process/List", &o, &list.base,
                           &process__list_response__descriptor, &err, &resp));
    check_list_response(resp);
    protobuf_c_message_free_unpacked(resp, NULL);
    client_free(c);

    peer_finish(&p, &cap);
    ASSERT_CONTAINS(&cap, "\r\nContent-Type: application/proto\r\n");
    char cl[32];
    snprintf(cl, sizeof(cl), "\r\nContent-Length: %zu\r\n", want_len);
    ASSERT_CONTAINS(&cap, cl);
    const char *body = body_of(&cap, &blen);
    ASSERT_TRUE(blen >= want_len);
    ASSERT_MEM_EQ(body, want, want_len);
    /* The empty ListRequest is an empty body. */
    ASSERT_CONTAINS(&cap, "POST /process.Process/List HTTP/1.1\r\n");
    ASSERT_CONTAINS(&cap, "\r\nContent-Length: 0\r\n");
    buf_free(&cap);
}

TEST(auth_headers)
{
    struct peer p;
    struct buf cap;
    struct client_options o = {.token = "s3cret", .user = "user"};
    Process__ListRequest req = PROCESS__LIST_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;

    add_json_reply(200, "OK", "application/json", "{}");
    canned_add_str("HTTP/1.1 204 No Content\r\n\r\n");
    peer_start(&p, peer_canned);
    struct client *c = new_client(p.address, &o);
    ASSERT_OK(client_unary(c, "/process.Process/List", NULL, &req.base,
                           &process__list_response__descriptor, NULL, &resp));
    protobuf_c_message_free_unpacked(resp, NULL);

    const struct client_response *r;
    struct client_request hr = {
            .method = "GET", .target = "/health", .flags = CLIENT_REQUEST_NO_AUTH};
    ASSERT_OK(client_fetch(c, &hr, NULL, &r));
    ASSERT_EQ(r->status, 204);
    client_free(c);

    peer_finish(&p, &cap);
    const char *get = memmem(cap.data, cap.len, "GET /health", 11);
    ASSERT_NOT_NULL(get);
    struct buf first = {.data = cap.data, .len = (size_t) (get - cap.data)};
    struct buf second = {.data = (char *) get, .len = cap.len - first.len};
    ASSERT_CONTAINS(&first, "\r\nX-Access-Token: s3cret\r\n");
    /* base64("user:") */
    ASSERT_CONTAINS(&first, "\r\nAuthorization: Basic dXNlcjo=\r\n");
    ASSERT_NOT_CONTAINS(&second, "X-Access-Token");
    ASSERT_NOT_CONTAINS(&second, "Authorization");
    /* GET without a body carries no Content-Length. */
    ASSERT_NOT_CONTAINS(&second, "Content-Length");
    buf_free(&cap);
}

/* Plain HTTP framing */

#define CHUNKED_REPLY                                                                   \
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n" \
    "5\r\nhello\r\n"                                                                    \
    "1;ext=\"x y\"\r\n \r\n"                                                            \
    "A \r\n0123456789\r\n"                                                              \
    "0\r\nX-Trailer: yes\r\n\r\n"

TEST(chunked_odd_splits)
{
    static const size_t splits[] = {1, 2, 3, 5, 7, 13, 0};

    for (size_t i = 0; i < sizeof(splits) / sizeof(splits[0]); i++) {
        struct peer p;
        struct buf cap, body;
        const struct client_response *r;
        char small[3];
        ssize_t k;

        canned_reset();
        canned_add_str(CHUNKED_REPLY);
        canned_add_str("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbye");
        canned_split = splits[i];
        peer_start(&p, peer_canned);
        struct client *c = new_client(p.address, NULL);

        struct client_request req = {.method = "GET", .target = "/files?path=%2Ftmp%2Fx"};
        ASSERT_OK(client_request_start(c, &req));
        ASSERT_OK(client_response_start(c, &r));
        ASSERT_EQ(r->status, 200);
        ASSERT_EQ(r->content_length, -1);
        ASSERT_STR_EQ(client_response_header(r, "content-type"), "text/plain");
        buf_init(&body, 1024);
        while ((k = client_response_read(c, small, sizeof(small))) > 0)
            ASSERT_OK(buf_append(&body, small, (size_t) k));
        ASSERT_EQ(k, 0);
        ASSERT_STR_EQ(body.data, "hello 0123456789");
        /* At the end the read keeps returning 0. */
        ASSERT_EQ(client_response_read(c, small, sizeof(small)), 0);

        buf_reset(&body);
        ASSERT_OK(client_fetch(c, &req, &body, &r));
        ASSERT_EQ(r->content_length, 3);
        ASSERT_STR_EQ(body.data, "bye");
        ASSERT_EQ(client_get_dial_count(c), 1);
        buf_free(&body);
        client_free(c);
        peer_finish(&p, &cap);
        ASSERT_CONTAINS(&cap, "GET /files?path=%2Ftmp%2Fx HTTP/1.1\r\n");
        buf_free(&cap);
    }
}

static void expect_fetch_error(const char *reply, int err, size_t body_max)
{
    struct peer p;
    struct buf cap, body;

    canned_reset();
    canned_add_str(reply);
    peer_start(&p, peer_canned);
    struct client *c = new_client(p.address, NULL);
    struct client_request req = {.method = "GET", .target = "/"};
    buf_init(&body, body_max);
    int r = client_fetch(c, &req, &body, NULL);
    if (r != -err)
        test_fail(__FILE__, __LINE__, "got %d, want %d for reply:\n%s", r, -err, reply);
    buf_free(&body);
    client_free(c);
    peer_finish(&p, &cap);
    buf_free(&cap);
}

TEST(http_malformed_responses)
{
    /* Bad chunk size, chunk data not followed by CRLF, chunk size overflow. */
    expect_fetch_error("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", EPROTO, 1024);
    expect_fetch_error("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX\r\n",
                       EPROTO, 1024);
    expect_fetch_error("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                       "1000000000000000\r\n",
                       EPROTO, 1024);
    /* Unsupported transfer coding; both Content-Length and chunked; bad Content-Length. */
    expect_fetch_error("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", EPROTO, 1024);
    expect_fetch_error("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                       EPROTO, 1024);
    expect_fetch_error("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc",
                       EPROTO, 1024);
    expect_fetch_error("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", EPROTO, 1024);
    /* Status line, obsolete folding, a header without a colon. */
    expect_fetch_error("HTTP/2 200 OK\r\n\r\n", EPROTO, 1024);
    expect_fetch_error("HTTP/1.1 20 OK\r\n\r\n", EPROTO, 1024);
    expect_fetch_error("HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\n\r\n", EPROTO, 1024);
    expect_fetch_error("HTTP/1.1 200 OK\r\nbogus\r\n\r\n", EPROTO, 1024);
    /* Body cut short: the connection closed early. */
    expect_fetch_error("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", ECONNRESET, 1024);
    expect_fetch_error("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", ECONNRESET,
                       1024);
    /* Body larger than the caller's buffer. */
    expect_fetch_error("HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n01234567890123456789", E2BIG,
                       10);
}

TEST(http_header_limits)
{
    struct buf reply;

    buf_init(&reply, 1024 * 1024);
    ASSERT_OK(buf_append_str(&reply, "HTTP/1.1 200 OK\r\n"));
    for (int i = 0; i < CLIENT_MAX_HEADERS + 1; i++)
        ASSERT_OK(buf_printf(&reply, "X-H%d: v\r\n", i));
    ASSERT_OK(buf_append_str(&reply, "Content-Length: 0\r\n\r\n"));
    expect_fetch_error(reply.data, E2BIG, 1024);

    buf_reset(&reply);
    ASSERT_OK(buf_append_str(&reply, "HTTP/1.1 200 OK\r\nX-Big: "));
    for (int i = 0; i < CLIENT_MAX_HEADER_BYTES; i++)
        ASSERT_OK(buf_append_char(&reply, 'a'));
    ASSERT_OK(buf_append_str(&reply, "\r\nContent-Length: 0\r\n\r\n"));
    expect_fetch_error(reply.data, E2BIG, 1024);
    buf_free(&reply);
}

TEST(http_read_until_close_and_interim)
{
    struct peer p;
    struct buf cap, body;
    const struct client_response *r;

    /* A 100 Continue before the answer; no framing: the body runs until the close. */
    canned_add_str("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\nX-A:  spaced value  \r\n\r\n"
                   "all of it");
    canned_add_str("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    canned_reconnect = true;
    peer_start(&p, peer_canned);
    struct client *c = new_client(p.address, NULL);
    struct client_request req = {.method = "POST", .target = "/x", .body = "abc", .body_len = 3};
    buf_init(&body, 1024);
    ASSERT_OK(client_fetch(c, &req, &body, &r));
    ASSERT_EQ(r->status, 200);
    ASSERT_STR_EQ(r->reason, "OK");
    ASSERT_STR_EQ(client_response_header(r, "x-a"), "spaced value");
    ASSERT_NULL(client_response_header(r, "x-b"));
    ASSERT_STR_EQ(body.data, "all of it");
    buf_reset(&body);
    ASSERT_OK(client_fetch(c, &req, &body, &r));
    ASSERT_STR_EQ(body.data, "ok");
    ASSERT_EQ(client_get_dial_count(c), 2);
    buf_free(&body);
    client_free(c);
    peer_finish(&p, &cap);
    ASSERT_CONTAINS(&cap, "\r\nContent-Length: 3\r\n\r\nabc");
    buf_free(&cap);
}

TEST(keep_alive_reuse)
{
    struct peer p;
    struct buf cap, body;
    const struct client_response *r;

    /* One connection for both requests: the peer accepts only once. */
    canned_add_str("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none");
    canned_add_str("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntwo");
    peer_start(&p, peer_canned);
    struct client *c = new_client(p.address, NULL);
    struct client_request req = {.method = "GET", .target = "/a"};
    buf_init(&body, 1024);
    ASSERT_OK(client_fetch(c, &req, &body, &r));
    ASSERT_STR_EQ(body.data, "one");
    buf_reset(&body);
    req.target = "/b";
    ASSERT_OK(client_fetch(c, &req, &body, &r));
    ASSERT_STR_EQ(body.data, "two");
    ASSERT_EQ(client_get_dial_count(c), 1);
    buf_free(&body);
    client_free(c);
    peer_finish(&p, &cap);
    ASSERT_CONTAINS(&cap, "GET /a HTTP/1.1\r\n");
    ASSERT_CONTAINS(&cap, "GET /b HTTP/1.1\r\n");
    buf_free(&cap);
}

/*
 * The server closes after each answer, once with and once without saying so. On a Unix socket a
 * write to the closed connection fails (and is retried on a fresh one); over TCP it succeeds, so
 * only the check for an idle close before reuse saves the request.
 */
static void keep_alive_server_closed(bool tcp)
{
    struct peer p;
    struct buf cap, body;
    const struct client_response *r;

    canned_reset();
    canned_add_str("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1");
    canned_add_str("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n2");
    canned_add_str("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n3");
    canned_reconnect = true;
    if (tcp)
        (void) peer_start_tcp(&p, peer_canned);
    else
        peer_start(&p, peer_canned);
    struct client *c = new_client(p.address, NULL);
    struct client_request req = {.method = "GET", .target = "/"};
    buf_init(&body, 1024);
    for (int i = 1; i <= 3; i++) {
        /* Let the idle close arrive first, as with a server's keep-alive timeout. */
        usleep(50 * 1000);
        buf_reset(&body);
        ASSERT_OK(client_fetch(c, &req, &body, &r));
        ASSERT_EQ(body.data[0], '0' + i);
    }
    ASSERT_EQ(client_get_dial_count(c), 3);
    buf_free(&body);
    client_free(c);
    peer_finish(&p, &cap);
    buf_free(&cap);
}

TEST(keep_alive_server_closed_unix)
{
    keep_alive_server_closed(false);
}

TEST(keep_alive_server_closed_tcp)
{
    keep_alive_server_closed(true);
}

static void peer_silent(int lfd, struct buf *cap)
{
    int fd = peer_accept(lfd);
    if (fd < 0 || !peer_read_request(fd, cap, NULL))
        peer_die("no request");
    pause();
}

TEST(io_timeout)
{
    struct peer p;
    struct client_options o = {.io_timeout_ms = 200};
    const struct client_response *r;

    peer_start(&p, peer_silent);
    struct client *c = new_client(p.address, &o);
    struct client_request req = {.method = "GET", .target = "/"};
    int64_t t0 = mono_ms();
    ASSERT_ERR(client_fetch(c, &req, NULL, &r), ETIMEDOUT);
    int64_t dt = mono_ms() - t0;
    ASSERT_TRUE(dt >= 150 && dt < 5000);
    client_free(c);
    peer_kill(&p);
}

TEST(tcp_loopback)
{
    struct peer p;
    struct buf cap, body;
    const struct client_response *r;

    canned_add_str("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
    uint16_t port = peer_start_tcp(&p, peer_canned);

    struct client *c = new_client(p.address, NULL);
    struct client_request req = {.method = "GET", .target = "/health"};
    buf_init(&body, 1024);
    ASSERT_OK(client_fetch(c, &req, &body, &r));
    ASSERT_STR_EQ(body.data, "hello");
    buf_free(&body);
    client_free(c);
    peer_finish(&p, &cap);
    char host[64];
    snprintf(host, sizeof(host), "\r\nHost: 127.0.0.1:%u\r\n", port);
    ASSERT_CONTAINS(&cap, host);
    buf_free(&cap);
}

TEST(vsock_loopback)
{
    struct peer p;
    struct buf cap, body;
    struct sockaddr_vm vm = {
            .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = VMADDR_PORT_ANY};
    socklen_t len = sizeof(vm);
    const struct client_response *r;

    /* AF_VSOCK on a development machine reaches its own hypervisor: only the QEMU guest of
     * tests/vm (which sets GUESTD_IN_VM) may bind or connect vsock. */
    if (!getenv("GUESTD_IN_VM"))
        TEST_SKIP("vsock runs only inside the QEMU guest (tests/vm)");
    int lfd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (lfd < 0)
        TEST_SKIP("no AF_VSOCK");
    if (bind(lfd, (struct sockaddr *) &vm, sizeof(vm)) < 0 || listen(lfd, 16) < 0 ||
        getsockname(lfd, (struct sockaddr *) &vm, &len) < 0) {
        close(lfd);
        TEST_SKIP("cannot listen on vsock");
    }
    peer_init(&p);
    snprintf(p.address, sizeof(p.address), "vsock:%u:%u", VMADDR_CID_LOCAL, vm.svm_port);
    canned_add_str("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nvs");
    peer_run(&p, lfd, peer_canned);

    struct client_options o = {.connect_timeout_ms = 1000};
    struct client *c = new_client(p.address, &o);
    int q = client_connect(c);
    if (q < 0) {
        client_free(c);
        peer_kill(&p);
        TEST_SKIP("no vsock loopback transport");
    }
    struct client_request req = {.method = "GET", .target = "/health"};
    buf_init(&body, 1024);
    ASSERT_OK(client_fetch(c, &req, &body, &r));
    ASSERT_STR_EQ(body.data, "vs");
    buf_free(&body);
    client_free(c);
    peer_finish(&p, &cap);
    buf_free(&cap);
}

/* Server streams */

static void check_event(const ProtobufCMessage *m, Process__ProcessEvent__EventCase want)
{
    ASSERT_NOT_NULL(m);
    ASSERT_TRUE(m->descriptor == &process__connect_response__descriptor);
    const Process__ConnectResponse *r = (const Process__ConnectResponse *) m;
    ASSERT_NOT_NULL(r->event);
    ASSERT_EQ(r->event->event_case, want);
}

static struct client_stream *open_connect_stream(struct client *c,
                                                 const struct client_call_options *o,
                                                 struct client_error *err, int want)
{
    Process__ProcessSelector sel = PROCESS__PROCESS_SELECTOR__INIT;
    Process__ConnectRequest req = PROCESS__CONNECT_REQUEST__INIT;
    struct client_stream *s = NULL;

    sel.selector_case = PROCESS__PROCESS_SELECTOR__SELECTOR_PID;
    sel.pid = 42;
    req.process = &sel;
    int r = client_stream_open_server(c, "/process.Process/Connect", o, &req.base,
                                      &process__connect_response__descriptor, err, &s);
    ASSERT_EQ(r, want);
    return s;
}

TEST(server_stream_three_messages)
{
    struct peer p;
    struct buf cap, reply;
    struct client_error err = {0};
    ProtobufCMessage *m = NULL;
    struct client_header extra[] = {{"Keepalive-Ping-Interval", "50"}};
    struct client_call_options o = {.timeout_ms = 60000, .headers = extra, .n_headers = 1};
    static const char start[] = "{\"event\":{\"start\":{\"pid\":42}}}";
    static const char data[] = "{\"event\":{\"data\":{\"stdout\":\"aGVsbG8=\"}}}";
    static const char end[] =
            "{\"event\":{\"end\":{\"exitCode\":3,\"exited\":true,\"status\":\"exit status 3\"}}}";

    buf_init(&reply, 65536);
    ASSERT_OK(buf_append_str(&reply, STREAM_HEAD_JSON));
    add_chunk_frame(&reply, 0, start);
    /* The second frame straddles two chunks; the third and the end share one. */
    struct buf f;
    buf_init(&f, 65536);
    add_frame(&f, 0, data, strlen(data));
    add_chunk(&reply, f.data, 3);
    add_chunk(&reply, f.data + 3, f.len - 3);
    buf_reset(&f);
    add_frame(&f, 0, end, strlen(end));
    add_frame(&f, 2, "{}", 2);
    add_chunk(&reply, f.data, f.len);
    ASSERT_OK(buf_append_str(&reply, "0\r\n\r\n"));
    canned_add(reply.data, reply.len);
    add_json_reply(200, "OK", "application/json", LIST_JSON);
    canned_split = 4;
    peer_start(&p, peer_canned);

    struct client *c = new_client(p.address, NULL);
    struct client_stream *s = open_connect_stream(c, &o, &err, 0);
    ASSERT_EQ(client_stream_response(s)->status, 200);

    ASSERT_EQ(client_stream_recv(s, &err, &m), 1);
    check_event(m, PROCESS__PROCESS_EVENT__EVENT_START);
    ASSERT_EQ(((Process__ConnectResponse *) m)->event->start->pid, 42);
    protobuf_c_message_free_unpacked(m, NULL);

    ASSERT_EQ(client_stream_recv(s, &err, &m), 1);
    check_event(m, PROCESS__PROCESS_EVENT__EVENT_DATA);
    const Process__ProcessEvent__DataEvent *d = ((Process__ConnectResponse *) m)->event->data;
    ASSERT_EQ(d->output_case, PROCESS__PROCESS_EVENT__DATA_EVENT__OUTPUT_STDOUT);
    ASSERT_EQ(d->stdout.len, 5);
    ASSERT_MEM_EQ(d->stdout.data, "hello", 5);
    protobuf_c_message_free_unpacked(m, NULL);

    ASSERT_EQ(client_stream_recv(s, &err, &m), 1);
    check_event(m, PROCESS__PROCESS_EVENT__EVENT_END);
    ASSERT_EQ(((Process__ConnectResponse *) m)->event->end->exit_code, 3);
    ASSERT_STR_EQ(((Process__ConnectResponse *) m)->event->end->status, "exit status 3");
    protobuf_c_message_free_unpacked(m, NULL);

    m = NULL;
    ASSERT_EQ(client_stream_recv(s, &err, &m), 0);
    ASSERT_NULL(m);
    ASSERT_NULL(err.code);
    ASSERT_EQ(client_stream_recv(s, &err, &m), 0);

    /* No other request while the stream is open; afterwards the connection is reused. */
    Process__ListRequest lreq = PROCESS__LIST_REQUEST__INIT;
    ASSERT_ERR(client_unary(c, "/process.Process/List", NULL, &lreq.base,
                            &process__list_response__descriptor, &err, &m),
               EBUSY);
    client_stream_free(s);
    ASSERT_OK(client_unary(c, "/process.Process/List", NULL, &lreq.base,
                           &process__list_response__descriptor, &err, &m));
    check_list_response(m);
    protobuf_c_message_free_unpacked(m, NULL);
    ASSERT_EQ(client_get_dial_count(c), 1);
    client_error_done(&err);
    client_free(c);

    peer_finish(&p, &cap);
    ASSERT_CONTAINS(&cap, "POST /process.Process/Connect HTTP/1.1\r\n");
    ASSERT_CONTAINS(&cap, "\r\nContent-Type: application/connect+json\r\n");
    ASSERT_CONTAINS(&cap, "\r\nConnect-Protocol-Version: 1\r\n");
    ASSERT_CONTAINS(&cap, "\r\nConnect-Timeout-Ms: 60000\r\n");
    ASSERT_CONTAINS(&cap, "\r\nKeepalive-Ping-Interval: 50\r\n");
    size_t blen;
    const uint8_t *body = (const uint8_t *) body_of(&cap, &blen);
    const char *next = memmem(body, blen, "POST /process.Process/List", 26);
    ASSERT_NOT_NULL(next);
    blen = (size_t) ((const uint8_t *) next - body);
    ASSERT_TRUE(blen > 5);
    ASSERT_EQ(body[0], 0);
    ASSERT_UEQ((uint32_t) body[1] << 24 | body[2] << 16 | body[3] << 8 | body[4], blen - 5);
    ASSERT_TRUE(memmem(body + 5, blen - 5, "\"pid\":42", 8) != NULL);
    buf_free(&f);
    buf_free(&reply);
    buf_free(&cap);
}

TEST(server_stream_proto)
{
    struct peer p;
    struct buf cap, reply;
    struct client_call_options o = {.codec = CLIENT_CODEC_PROTO};
    ProtobufCMessage *m = NULL;
    Process__ProcessEvent__StartEvent st = PROCESS__PROCESS_EVENT__START_EVENT__INIT;
    Process__ProcessEvent ev = PROCESS__PROCESS_EVENT__INIT;
    Process__ConnectResponse cr = PROCESS__CONNECT_RESPONSE__INIT;
    uint8_t packed[64];

    st.pid = 77;
    ev.event_case = PROCESS__PROCESS_EVENT__EVENT_START;
    ev.start = &st;
    cr.event = &ev;
    size_t plen = protobuf_c_message_pack(&cr.base, packed);

    buf_init(&reply, 4096);
    ASSERT_OK(buf_append_str(&reply,
                             "HTTP/1.1 200 OK\r\nContent-Type: application/connect+proto\r\n"
                             "Transfer-Encoding: chunked\r\n\r\n"));
    struct buf f;
    buf_init(&f, 4096);
    add_frame(&f, 0, packed, plen);
    add_frame(&f, 2, "{}", 2);
    add_chunk(&reply, f.data, f.len);
    ASSERT_OK(buf_append_str(&reply, "0\r\n\r\n"));
    canned_add(reply.data, reply.len);
    peer_start(&p, peer_canned);

    struct client *c = new_client(p.address, NULL);
    struct client_stream *s = open_connect_stream(c, &o, NULL, 0);
    ASSERT_EQ(client_stream_recv(s, NULL, &m), 1);
    check_event(m, PROCESS__PROCESS_EVENT__EVENT_START);
    ASSERT_EQ(((Process__ConnectResponse *) m)->event->start->pid, 77);
    protobuf_c_message_free_unpacked(m, NULL);
    ASSERT_EQ(client_stream_recv(s, NULL, &m), 0);
    client_stream_free(s);
    client_free(c);
    peer_finish(&p, &cap);
    ASSERT_CONTAINS(&cap, "\r\nContent-Type: application/connect+proto\r\n");
    buf_free(&f);
    buf_free(&reply);
    buf_free(&cap);
}

/* Runs a Connect stream against `reply` and returns the final result of client_stream_recv. */
static int stream_result(const char *reply, size_t len, struct client_error *err, int *ret_messages)
{
    struct peer p;
    struct buf cap;
    ProtobufCMessage *m = NULL;
    int r, n = 0;

    canned_reset();
    canned_add(reply, len);
    peer_start(&p, peer_canned);
    struct client *c = new_client(p.address, NULL);
    struct client_stream *s = open_connect_stream(c, NULL, err, 0);
    while ((r = client_stream_recv(s, err, &m)) == 1) {
        protobuf_c_message_free_unpacked(m, NULL);
        n++;
    }
    /* The result sticks. */
    struct client_error again = {0};
    ASSERT_EQ(client_stream_recv(s, &again, &m), r);
    if (err && err->code) {
        ASSERT_STR_EQ(again.code, err->code);
        ASSERT_STR_EQ(again.message, err->message);
    }
    client_error_done(&again);
    client_stream_free(s);
    client_free(c);
    peer_finish(&p, &cap);
    buf_free(&cap);
    *ret_messages = n;
    return r;
}

TEST(server_stream_end_error)
{
    struct buf reply;
    struct client_error err = {0};
    int n;

    buf_init(&reply, 65536);
    ASSERT_OK(buf_append_str(&reply, STREAM_HEAD_JSON));
    add_chunk_frame(&reply, 0, "{\"event\":{\"start\":{\"pid\":42}}}");
    add_chunk_frame(&reply, 2,
                    "{\"error\":{\"code\":\"deadline_exceeded\",\"message\":\"deadline exceeded\"},"
                    "\"metadata\":{\"x-a\":[\"b\"]}}");
    ASSERT_OK(buf_append_str(&reply, "0\r\n\r\n"));
    ASSERT_ERR(stream_result(reply.data, reply.len, &err, &n), EREMOTEIO);
    ASSERT_EQ(n, 1);
    ASSERT_STR_EQ(err.code, "deadline_exceeded");
    ASSERT_STR_EQ(err.message, "deadline exceeded");
    ASSERT_EQ(err.http_status, 200);

    /* An error without a valid code is "unknown". */
    buf_reset(&reply);
    ASSERT_OK(buf_append_str(&reply, STREAM_HEAD_JSON));
    add_chunk_frame(&reply, 2, "{\"error\":{\"message\":\"boom\"}}");
    ASSERT_OK(buf_append_str(&reply, "0\r\n\r\n"));
    ASSERT_ERR(stream_result(reply.data, reply.len, &err, &n), EREMOTEIO);
    ASSERT_EQ(n, 0);
    ASSERT_STR_EQ(err.code, "unknown");
    ASSERT_STR_EQ(err.message, "boom");
    client_error_done(&err);
    buf_free(&reply);
}

TEST(server_stream_missing_end)
{
    struct buf reply;
    struct client_error err = {0};
    int n;

    /* The body ends properly, but without an end-of-stream frame. */
    buf_init(&reply, 65536);
    ASSERT_OK(buf_append_str(&reply, STREAM_HEAD_JSON));
    add_chunk_frame(&reply, 0, "{\"event\":{\"start\":{\"pid\":42}}}");
    ASSERT_OK(buf_append_str(&reply, "0\r\n\r\n"));
    ASSERT_ERR(stream_result(reply.data, reply.len, &err, &n), EPROTO);
    ASSERT_EQ(n, 1);
    ASSERT_STR_EQ(err.message, "missing EndStreamResponse");
    ASSERT_STR_EQ(err.code, "internal");

    /* Same with a body delimited by the close. */
    buf_reset(&reply);
    ASSERT_OK(buf_append_str(&reply, "HTTP/1.1 200 OK\r\nContent-Type: application/connect+json\r\n"
                                     "Connection: close\r\n\r\n"));
    add_frame(&reply, 0, "{}", 2);
    ASSERT_ERR(stream_result(reply.data, reply.len, &err, &n), EPROTO);
    ASSERT_EQ(n, 1);
    ASSERT_STR_EQ(err.message, "missing EndStreamResponse");

    /* The connection drops inside the chunked body: a transport failure. */
    buf_reset(&reply);
    ASSERT_OK(buf_append_str(&reply, STREAM_HEAD_JSON));
    add_chunk_frame(&reply, 0, "{\"event\":{\"start\":{\"pid\":42}}}");
    ASSERT_OK(buf_append_str(&reply, "20\r\n\x00\x00"));
    ASSERT_ERR(stream_result(reply.data, reply.len, &err, &n), ECONNRESET);
    ASSERT_EQ(n, 1);
    ASSERT_STR_EQ(err.code, "unavailable");

    /* An envelope cut inside a well-formed body. */
    buf_reset(&reply);
    ASSERT_OK(buf_append_str(&reply, STREAM_HEAD_JSON));
    add_chunk(&reply, "\x00\x00\x00\x00\x09{}", 7);
    ASSERT_OK(buf_append_str(&reply, "0\r\n\r\n"));
    ASSERT_ERR(stream_result(reply.data, reply.len, &err, &n), EPROTO);
    ASSERT_EQ(n, 0);
    client_error_done(&err);
    buf_free(&reply);
}

TEST(server_stream_bad_frames)
{
    struct buf reply;
    struct client_error err = {0};
    int n;

    /* Compressed frame: never negotiated. */
    buf_init(&reply, 65536);
    ASSERT_OK(buf_append_str(&reply, STREAM_HEAD_JSON));
    add_chunk_frame(&reply, 1, "{}");
    ASSERT_OK(buf_append_str(&reply, "0\r\n\r\n"));
    ASSERT_ERR(stream_result(reply.data, reply.len, &err, &n), EPROTO);
    ASSERT_NOT_NULL(strstr(err.message, "compress"));

    /* Unknown flag bits. */
    buf_reset(&reply);
    ASSERT_OK(buf_append_str(&reply, STREAM_HEAD_JSON));
    add_chunk_frame(&reply, 0x80, "{}");
    ASSERT_OK(buf_append_str(&reply, "0\r\n\r\n"));
    ASSERT_ERR(stream_result(reply.data, reply.len, &err, &n), EPROTO);

    /* An envelope above the limit is refused before it is read. */
    buf_reset(&reply);
    ASSERT_OK(buf_append_str(&reply, STREAM_HEAD_JSON));
    add_chunk(&reply, "\x00\x01\x00\x00\x01", 5);
    ASSERT_OK(buf_append_str(&reply, "0\r\n\r\n"));
    ASSERT_ERR(stream_result(reply.data, reply.len, &err, &n), E2BIG);
    ASSERT_STR_EQ(err.code, "resource_exhausted");

    /* Invalid end-of-stream JSON, and data after the end-of-stream frame. */
    buf_reset(&reply);
    ASSERT_OK(buf_append_str(&reply, STREAM_HEAD_JSON));
    add_chunk_frame(&reply, 2, "[]");
    ASSERT_OK(buf_append_str(&reply, "0\r\n\r\n"));
    ASSERT_ERR(stream_result(reply.data, reply.len, &err, &n), EPROTO);
    buf_reset(&reply);
    ASSERT_OK(buf_append_str(&reply, STREAM_HEAD_JSON));
    add_chunk_frame(&reply, 2, "{}");
    add_chunk_frame(&reply, 0, "{}");
    ASSERT_OK(buf_append_str(&reply, "0\r\n\r\n"));
    ASSERT_ERR(stream_result(reply.data, reply.len, &err, &n), EPROTO);

    /* A message the codec cannot decode. */
    buf_reset(&reply);
    ASSERT_OK(buf_append_str(&reply, STREAM_HEAD_JSON));
    add_chunk_frame(&reply, 0, "{\"event\":{\"start\":{\"pid\":\"x\"}}}");
    ASSERT_OK(buf_append_str(&reply, "0\r\n\r\n"));
    ASSERT_ERR(stream_result(reply.data, reply.len, &err, &n), EPROTO);
    ASSERT_EQ(n, 0);
    client_error_done(&err);
    buf_free(&reply);
}

TEST(server_stream_http_error)
{
    struct peer p;
    struct buf cap;
    struct client_error err = {0};

    /* Errors before the stream starts come as plain HTTP responses. */
    add_json_reply(404, "Not Found", "text/plain", "404 page not found");
    add_json_reply(200, "OK", "application/json", "{}");
    peer_start(&p, peer_canned);
    struct client *c = new_client(p.address, NULL);
    ASSERT_NULL(open_connect_stream(c, NULL, &err, -EREMOTEIO));
    ASSERT_STR_EQ(err.code, "unimplemented");
    ASSERT_EQ(err.http_status, 404);
    /* A stream answered with a unary content type. */
    ASSERT_NULL(open_connect_stream(c, NULL, &err, -EPROTO));
    ASSERT_STR_EQ(err.code, "internal");
    client_error_done(&err);
    client_free(c);
    peer_finish(&p, &cap);
    buf_free(&cap);
}

/* Client streams */

static void stream_input_messages(Process__StreamInputRequest *start,
                                  Process__StreamInputRequest *data)
{
    static Process__ProcessSelector sel = PROCESS__PROCESS_SELECTOR__INIT;
    static Process__StreamInputRequest__StartEvent st =
            PROCESS__STREAM_INPUT_REQUEST__START_EVENT__INIT;
    static Process__ProcessInput in = PROCESS__PROCESS_INPUT__INIT;
    static Process__StreamInputRequest__DataEvent de =
            PROCESS__STREAM_INPUT_REQUEST__DATA_EVENT__INIT;

    sel.selector_case = PROCESS__PROCESS_SELECTOR__SELECTOR_PID;
    sel.pid = 7;
    st.process = &sel;
    start->event_case = PROCESS__STREAM_INPUT_REQUEST__EVENT_START;
    start->start = &st;
    in.input_case = PROCESS__PROCESS_INPUT__INPUT_STDIN;
    in.stdin.data = (uint8_t *) "hi";
    in.stdin.len = 2;
    de.input = &in;
    data->event_case = PROCESS__STREAM_INPUT_REQUEST__EVENT_DATA;
    data->data = &de;
}

TEST(client_stream)
{
    struct peer p;
    struct buf cap, reply;
    struct client_error err = {0};
    Process__StreamInputRequest start = PROCESS__STREAM_INPUT_REQUEST__INIT;
    Process__StreamInputRequest data = PROCESS__STREAM_INPUT_REQUEST__INIT;
    struct client_stream *s = NULL;
    ProtobufCMessage *m = NULL;

    stream_input_messages(&start, &data);
    buf_init(&reply, 4096);
    ASSERT_OK(buf_append_str(&reply, STREAM_HEAD_JSON));
    add_chunk_frame(&reply, 0, "{}");
    add_chunk_frame(&reply, 2, "{}");
    ASSERT_OK(buf_append_str(&reply, "0\r\n\r\n"));
    canned_add(reply.data, reply.len);
    canned_keep_body = true;
    peer_start(&p, peer_canned);

    struct client *c = new_client(p.address, NULL);
    ASSERT_OK(client_stream_open_client(c, "/process.Process/StreamInput", NULL,
                                        &process__stream_input_response__descriptor, &err, &s));
    ASSERT_NULL(client_stream_response(s));
    ASSERT_OK(client_stream_send(s, &start.base, &err));
    ASSERT_OK(client_stream_send(s, &data.base, &err));
    ASSERT_OK(client_stream_close_and_recv(s, &err, &m));
    ASSERT_TRUE(m->descriptor == &process__stream_input_response__descriptor);
    protobuf_c_message_free_unpacked(m, NULL);
    ASSERT_ERR(client_stream_send(s, &data.base, &err), EINVAL);
    client_stream_free(s);
    client_free(c);

    peer_finish(&p, &cap);
    ASSERT_CONTAINS(&cap, "POST /process.Process/StreamInput HTTP/1.1\r\n");
    ASSERT_CONTAINS(&cap, "\r\nTransfer-Encoding: chunked\r\n");
    ASSERT_CONTAINS(&cap, "\r\nContent-Type: application/connect+json\r\n");
    ASSERT_NOT_CONTAINS(&cap, "Content-Length");
    /* The de-chunked body is two envelopes. */
    const char *b = memmem(cap.data, cap.len, "\n--body--\n", 10);
    ASSERT_NOT_NULL(b);
    const uint8_t *e = (const uint8_t *) b + 10;
    size_t left = cap.len - (size_t) ((const char *) e - cap.data);
    int n = 0;
    while (left > 0) {
        ASSERT_TRUE(left >= 5);
        ASSERT_EQ(e[0], 0);
        size_t len = (size_t) e[1] << 24 | (size_t) e[2] << 16 | (size_t) e[3] << 8 | e[4];
        ASSERT_TRUE(left >= 5 + len);
        struct buf msg = {.data = (char *) e + 5, .len = len};
        if (n == 0)
            ASSERT_CONTAINS(&msg, "\"pid\":7");
        else
            ASSERT_CONTAINS(&msg, "\"stdin\":\"aGk=\"");
        e += 5 + len;
        left -= 5 + len;
        n++;
    }
    ASSERT_EQ(n, 2);
    client_error_done(&err);
    buf_free(&reply);
    buf_free(&cap);
}

TEST(client_stream_message_count)
{
    static const char *const bodies[] = {"", "{}"}; /* no message; then two messages */

    for (size_t i = 0; i < 2; i++) {
        struct peer p;
        struct buf cap, reply;
        struct client_error err = {0};
        Process__StreamInputRequest start = PROCESS__STREAM_INPUT_REQUEST__INIT;
        Process__StreamInputRequest data = PROCESS__STREAM_INPUT_REQUEST__INIT;
        struct client_stream *s = NULL;
        ProtobufCMessage *m = NULL;

        stream_input_messages(&start, &data);
        buf_init(&reply, 4096);
        ASSERT_OK(buf_append_str(&reply, STREAM_HEAD_JSON));
        if (*bodies[i]) {
            add_chunk_frame(&reply, 0, bodies[i]);
            add_chunk_frame(&reply, 0, bodies[i]);
        }
        add_chunk_frame(&reply, 2, "{}");
        ASSERT_OK(buf_append_str(&reply, "0\r\n\r\n"));
        canned_reset();
        canned_add(reply.data, reply.len);
        peer_start(&p, peer_canned);
        struct client *c = new_client(p.address, NULL);
        ASSERT_OK(client_stream_open_client(c, "/process.Process/StreamInput", NULL,
                                            &process__stream_input_response__descriptor, &err, &s));
        ASSERT_OK(client_stream_send(s, &start.base, &err));
        ASSERT_ERR(client_stream_close_and_recv(s, &err, &m), EPROTO);
        ASSERT_NULL(m);
        ASSERT_STR_EQ(err.code, "internal");
        ASSERT_STR_EQ(err.message,
                      i == 0 ? "missing response message" : "more than one response message");
        client_error_done(&err);
        client_stream_free(s);
        client_free(c);
        peer_finish(&p, &cap);
        buf_free(&cap);
        buf_free(&reply);
    }
}

static void peer_early_error(int lfd, struct buf *cap)
{
    struct buf line;
    int fd = peer_accept(lfd);

    if (fd < 0)
        peer_die("no connection");
    buf_init(&line, 65536);
    do {
        if (!peer_read_line(fd, cap, &line))
            peer_die("head cut short");
    } while (!streq(line.data, "\r\n"));
    peer_send(fd, "HTTP/1.1 200 OK\r\nContent-Type: application/connect+json\r\n"
                  "Connection: close\r\n\r\n");
    static const char end[] = "{\"error\":{\"code\":\"not_found\",\"message\":\"no such pid\"}}";
    struct buf f;
    buf_init(&f, 4096);
    add_frame(&f, 2, end, strlen(end));
    peer_send_split(fd, f.data, f.len, 0);
    shutdown(fd, SHUT_WR);
    /* Stop reading without closing: the client's sends fail or block, then it reads. */
    close(fd);
}

TEST(client_stream_early_error)
{
    struct peer p;
    struct buf cap;
    struct client_error err = {0};
    Process__StreamInputRequest start = PROCESS__STREAM_INPUT_REQUEST__INIT;
    Process__StreamInputRequest data = PROCESS__STREAM_INPUT_REQUEST__INIT;
    struct client_stream *s = NULL;
    ProtobufCMessage *m = NULL;
    int r = 0;

    stream_input_messages(&start, &data);
    peer_start(&p, peer_early_error);
    struct client *c = new_client(p.address, NULL);
    ASSERT_OK(client_stream_open_client(c, "/process.Process/StreamInput", NULL,
                                        &process__stream_input_response__descriptor, &err, &s));
    /* Give the peer time to answer and close. */
    usleep(100 * 1000);
    for (int i = 0; i < 100 && r == 0; i++)
        r = client_stream_send(s, &data.base, &err);
    if (r == 0)
        r = client_stream_close_and_recv(s, &err, &m);
    ASSERT_ERR(r, EREMOTEIO);
    ASSERT_STR_EQ(err.code, "not_found");
    ASSERT_STR_EQ(err.message, "no such pid");
    client_error_done(&err);
    client_stream_free(s);
    client_free(c);
    peer_finish(&p, &cap);
    buf_free(&cap);
}

/* Firecracker hybrid vsock */

static const char *fc_mode; /* "ok", "overread", "close", "garbage", "silent" */

static void peer_fc(int lfd, struct buf *cap)
{
    int held[64], n_held = 0, conns = 0;

    for (;;) {
        int fd = peer_accept(lfd);
        if (fd < 0)
            break;
        conns++;
        /* The client sends the line in one write, so one read gets it all. */
        char line[64];
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (poll(&pfd, 1, 2000) <= 0)
            peer_die("no CONNECT line");
        usleep(20 * 1000);
        ssize_t k = read(fd, line, sizeof(line));
        if (k <= 0)
            peer_die("read CONNECT");
        (void) buf_append(cap, line, (size_t) k);
        if (k != 13 || memcmp(line, "CONNECT 1024\n", 13) != 0)
            peer_die("bad CONNECT line");

        if (streq(fc_mode, "ok") || streq(fc_mode, "overread")) {
            struct buf req;
            buf_init(&req, 65536);
            if (streq(fc_mode, "ok")) {
                peer_send(fd, "OK 1073741824\n");
                if (!peer_read_request(fd, &req, NULL))
                    peer_die("no request");
                peer_send(fd, "HTTP/1.1 204 No Content\r\n\r\n");
            } else {
                /* Bytes right after the ack must reach the HTTP layer, not vanish with it. */
                peer_send(fd, "OK 1073741825\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi");
                if (!peer_read_request(fd, &req, NULL))
                    peer_die("no request");
            }
            (void) buf_append(cap, req.data, req.len);
            buf_free(&req);
            close(fd);
            break;
        }
        if (streq(fc_mode, "garbage"))
            peer_send(fd, "ERROR no listener\n");
        if (streq(fc_mode, "silent") && n_held < 64) {
            held[n_held++] = fd;
            continue;
        }
        close(fd);
    }
    for (int i = 0; i < n_held; i++)
        close(held[i]);
    (void) buf_printf(cap, "\nconnections=%d\n", conns);
}

static void fc_address(const struct peer *p, char *out, size_t n)
{
    snprintf(out, n, "fc:%s:1024", p->path);
}

TEST(fc_handshake_ok)
{
    struct peer p;
    struct buf cap;
    char address[256];
    const struct client_response *r;

    fc_mode = "ok";
    peer_start(&p, peer_fc);
    fc_address(&p, address, sizeof(address));
    struct client *c = new_client(address, NULL);
    ASSERT_EQ(client_get_addr(c)->kind, CLIENT_ADDR_FC);
    struct client_request req = {.method = "GET", .target = "/health"};
    ASSERT_OK(client_fetch(c, &req, NULL, &r));
    ASSERT_EQ(r->status, 204);
    client_free(c);
    peer_finish(&p, &cap);
    ASSERT_TRUE(strncmp(cap.data, "CONNECT 1024\nGET /health HTTP/1.1\r\n", 35) == 0);
    ASSERT_CONTAINS(&cap, "connections=1");
    buf_free(&cap);
}

TEST(fc_ack_not_overread)
{
    struct peer p;
    struct buf cap, body;
    char address[256];
    const struct client_response *r;

    fc_mode = "overread";
    peer_start(&p, peer_fc);
    fc_address(&p, address, sizeof(address));
    struct client *c = new_client(address, NULL);
    struct client_request req = {.method = "GET", .target = "/health"};
    buf_init(&body, 1024);
    ASSERT_OK(client_fetch(c, &req, &body, &r));
    ASSERT_EQ(r->status, 200);
    ASSERT_STR_EQ(body.data, "hi");
    buf_free(&body);
    client_free(c);
    peer_finish(&p, &cap);
    buf_free(&cap);
}

TEST(fc_refused)
{
    static const char *const modes[] = {"close", "garbage"};

    for (size_t i = 0; i < 2; i++) {
        struct peer p;
        struct buf cap;
        char address[256];
        struct client_options o = {.connect_timeout_ms = 350};

        fc_mode = modes[i];
        peer_start(&p, peer_fc);
        fc_address(&p, address, sizeof(address));
        struct client *c = new_client(address, &o);
        int64_t t0 = mono_ms();
        ASSERT_ERR(client_connect(c), ECONNREFUSED);
        int64_t dt = mono_ms() - t0;
        /* Retried every 100 ms until the connect timeout. */
        ASSERT_TRUE(dt >= 250 && dt < 2000);
        client_free(c);
        peer_finish(&p, &cap);
        const char *n = memmem(cap.data, cap.len, "connections=", 12);
        ASSERT_NOT_NULL(n);
        ASSERT_TRUE(atoi(n + 12) >= 3);
        buf_free(&cap);
    }
}

TEST(fc_no_answer)
{
    struct peer p;
    struct buf cap;
    char address[256];
    struct client_options o = {.connect_timeout_ms = 300, .fc_ack_timeout_ms = 100};
    Process__ListRequest req = PROCESS__LIST_REQUEST__INIT;
    struct client_error err = {0};
    ProtobufCMessage *m = NULL;

    fc_mode = "silent";
    peer_start(&p, peer_fc);
    fc_address(&p, address, sizeof(address));
    struct client *c = new_client(address, &o);
    int64_t t0 = mono_ms();
    ASSERT_ERR(client_unary(c, "/process.Process/List", NULL, &req.base,
                            &process__list_response__descriptor, &err, &m),
               ETIMEDOUT);
    int64_t dt = mono_ms() - t0;
    ASSERT_TRUE(dt >= 250 && dt < 2000);
    ASSERT_STR_EQ(err.code, "deadline_exceeded");
    client_error_done(&err);
    client_free(c);
    peer_finish(&p, &cap);
    buf_free(&cap);
}

TEST(fc_waits_for_boot)
{
    struct peer p;
    struct buf cap;
    char address[256];
    struct client_options o = {.connect_timeout_ms = 3000};
    const struct client_response *r;

    /* The socket appears only after a while, as when Firecracker starts after the client. */
    fc_mode = "ok";
    peer_init(&p);
    fc_address(&p, address, sizeof(address));
    p.pid = fork();
    ASSERT_TRUE(p.pid >= 0);
    if (p.pid == 0) {
        (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
        usleep(300 * 1000);
        peer_run(&p, peer_listen_unix(&p), peer_fc);
        int status;
        _exit(waitpid(p.pid, &status, 0) == p.pid && WIFEXITED(status) ? WEXITSTATUS(status) : 4);
    }
    struct client *c = new_client(address, &o);
    struct client_request req = {.method = "GET", .target = "/health"};
    ASSERT_OK(client_fetch(c, &req, NULL, &r));
    ASSERT_EQ(r->status, 204);
    ASSERT_EQ(client_get_dial_count(c), 1);
    client_free(c);
    peer_finish(&p, &cap);
    buf_free(&cap);
}

TEST_MAIN()

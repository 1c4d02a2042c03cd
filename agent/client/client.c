/* SPDX-License-Identifier: Apache-2.0 */
#include "client/client.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <linux/vm_sockets.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nettle/base64.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "base/alloc.h"
#include "base/macro.h"
#include "base/parse.h"
#include "build-config.h"
#include "rpc/pbjson.h"

/*
 * Receive buffer. Body reads at least a quarter of this size go straight into the caller's
 * memory, so multi-GiB downloads are not copied twice.
 */
#define CLIENT_READ_BUFFER       (64 * 1024)
/* Longest chunk-size line (hex size and extensions); real servers send fewer than 20 bytes. */
#define CLIENT_MAX_CHUNK_LINE    4096
/* Most hex digits in a chunk size: 15 keeps the value below 2^60, far above any real chunk. */
#define CLIENT_MAX_CHUNK_DIGITS  15
/* Most decimal digits in Content-Length: 18 keeps the value below INT64_MAX. */
#define CLIENT_MAX_LENGTH_DIGITS 18
/* Cap on a request head we build, the caller's extra headers included. */
#define CLIENT_MAX_REQUEST_HEAD  (64 * 1024)
/*
 * Longest Firecracker ack accepted. The muxer reads its own command line up to 32 bytes too,
 * and `OK 4294967295\n` (the longest valid ack) is 14 bytes.
 */
#define CLIENT_FC_ACK_MAX        32
/* Period of Firecracker dial attempts while the VM boots (as firecracker-go-sdk). */
#define CLIENT_FC_RETRY_MS       100
/* Pause before retrying a Unix connect whose listen backlog is full. */
#define CLIENT_BACKLOG_RETRY_MS  10
/* Bytes of a Connect envelope header: flags (1) and big-endian payload length (4). */
#define ENVELOPE_HEADER          5
/* Envelope flag: the payload is compressed (never negotiated by this client). */
#define ENVELOPE_COMPRESSED      0x01
/* Envelope flag: end-of-stream frame carrying JSON status and trailers. */
#define ENVELOPE_END_STREAM      0x02

enum client_phase {
    PHASE_IDLE,    /* no request in flight; an open connection may be reused */
    PHASE_SENDING, /* head sent, chunked request body still open */
    PHASE_SENT,    /* request complete (or its body failed), response head not read yet */
    PHASE_BODY,    /* response head read, body being read */
    PHASE_DONE,    /* response complete; an open connection may be reused */
};

enum body_mode {
    BODY_LENGTH,  /* Content-Length (or no body at all) */
    BODY_CHUNKED, /* Transfer-Encoding: chunked */
    BODY_CLOSE,   /* until the server closes the connection */
};

enum chunk_state {
    CHUNK_SIZE,     /* expecting a chunk-size line */
    CHUNK_DATA,     /* inside chunk data, body_left bytes to go */
    CHUNK_DATA_END, /* expecting the CRLF after chunk data */
    CHUNK_TRAILERS, /* after the last chunk, expecting trailer lines up to an empty one */
};

struct client {
    struct client_addr addr;
    char *address; /* as given, for error messages */
    int connect_timeout_ms;
    int io_timeout_ms;
    int fc_ack_timeout_ms;
    char *token;
    char *authorization; /* "Basic …", precomputed from the user */

    int fd;
    unsigned dial_count;
    struct client_stream *stream; /* the open stream that owns the connection, if any */

    enum client_phase phase;
    int send_error;  /* first failure while sending a chunked body */
    bool req_head;   /* the request in flight is HEAD: its response has no body */
    bool req_close;  /* the connection must not be reused after this response */
    bool keep_alive; /* the response allows reuse */
    enum body_mode body_mode;
    enum chunk_state chunk_state;
    uint64_t body_left;   /* of Content-Length, or of the current chunk */
    size_t trailer_bytes; /* trailer bytes seen so far (bounded like a head) */

    struct buf head; /* response head, split into C strings in place */
    struct buf line; /* chunk-size and trailer lines */
    struct client_header headers[CLIENT_MAX_HEADERS];
    struct client_response resp;

    size_t rpos, rlen;
    char rbuf[CLIENT_READ_BUFFER];
};

struct client_stream {
    struct client *c;
    const ProtobufCMessageDescriptor *desc;
    enum client_codec codec;
    bool sending;   /* client stream: request body still open */
    bool have_head; /* response head read */
    int result;     /* 1 while messages may follow, then the final result (0 or -errno) */
    struct client_error final; /* the error behind a negative result, for repeated calls */
    struct buf payload;
};

static const char *const connect_codes[] = {
        "canceled",
        "unknown",
        "invalid_argument",
        "deadline_exceeded",
        "not_found",
        "already_exists",
        "permission_denied",
        "resource_exhausted",
        "failed_precondition",
        "aborted",
        "out_of_range",
        "unimplemented",
        "internal",
        "unavailable",
        "data_loss",
        "unauthenticated",
};

static bool startswith(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    (void) clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A deadline `timeout_ms` from now; INT64_MAX for CLIENT_TIMEOUT_INFINITE. */
static int64_t deadline_after(int timeout_ms)
{
    return timeout_ms < 0 ? INT64_MAX : now_ms() + timeout_ms;
}

static void sleep_until(int64_t deadline)
{
    for (;;) {
        int64_t left = deadline - now_ms();
        if (left <= 0)
            return;
        struct timespec ts = {.tv_sec = left / 1000, .tv_nsec = (left % 1000) * 1000000};
        (void) nanosleep(&ts, NULL);
    }
}

/* Waits until `fd` is ready for `events`. -ETIMEDOUT once `deadline` has passed. */
static int wait_fd(int fd, short events, int64_t deadline)
{
    for (;;) {
        int timeout = -1;
        if (deadline != INT64_MAX) {
            int64_t left = deadline - now_ms();
            timeout = left <= 0 ? 0 : (int) MIN(left, (int64_t) INT32_MAX);
        }
        struct pollfd p = {.fd = fd, .events = events};
        int r = poll(&p, 1, timeout);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (r == 0)
            return -ETIMEDOUT;
        return 0;
    }
}

/* Sends all of `iov`; the I/O timeout bounds each wait, not the whole transfer. */
static int send_all(int fd, struct iovec *iov, int iovcnt, int timeout_ms)
{
    int64_t deadline = deadline_after(timeout_ms);
    while (iovcnt > 0) {
        if (iov->iov_len == 0) {
            iov++;
            iovcnt--;
            continue;
        }
        struct msghdr m = {.msg_iov = iov, .msg_iovlen = (size_t) iovcnt};
        ssize_t k = sendmsg(fd, &m, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                return -errno;
            int r = wait_fd(fd, POLLOUT, deadline);
            if (r < 0)
                return r;
            continue;
        }
        deadline = deadline_after(timeout_ms);
        size_t left = (size_t) k;
        while (left > 0 && left >= iov->iov_len) {
            left -= iov->iov_len;
            iov++;
            iovcnt--;
        }
        if (left > 0) {
            iov->iov_base = (char *) iov->iov_base + left;
            iov->iov_len -= left;
        }
    }
    return 0;
}

/* One recv, waiting at most until `deadline`. Returns the count, 0 at EOF, or -errno. */
static ssize_t recv_some(int fd, void *p, size_t n, int64_t deadline)
{
    for (;;) {
        ssize_t k = recv(fd, p, n, 0);
        if (k >= 0)
            return k;
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return -errno;
        int r = wait_fd(fd, POLLIN, deadline);
        if (r < 0)
            return r;
    }
}

/* Addresses */

static int parse_unix_path(const char *path, struct client_addr *a)
{
    struct sockaddr_un *un = (struct sockaddr_un *) &a->sa;
    size_t len = strlen(path);

    /* sun_path needs its NUL, except for abstract names, which are length-delimited. */
    if (len == 0 || len >= sizeof(un->sun_path) || (path[0] == '@' && len == 1))
        return -EINVAL;
    un->sun_family = AF_UNIX;
    memcpy(un->sun_path, path, len);
    if (path[0] == '@') {
        un->sun_path[0] = '\0';
        a->sa_len = (socklen_t) (offsetof(struct sockaddr_un, sun_path) + len);
    } else {
        a->sa_len = (socklen_t) (offsetof(struct sockaddr_un, sun_path) + len + 1);
    }
    (void) snprintf(a->host, sizeof(a->host), "localhost");
    return 0;
}

/* Copies s[0..len) into `out` (of size `size`) as a C string; -EINVAL if it does not fit. */
static int copy_part(const char *s, size_t len, char *out, size_t size)
{
    if (len >= size)
        return -EINVAL;
    memcpy(out, s, len);
    out[len] = '\0';
    return 0;
}

static int parse_tcp(const char *s, struct client_addr *a)
{
    char host[INET6_ADDRSTRLEN + 1];
    const char *port_str;
    uint16_t port;
    int r;

    if (s[0] == '[') {
        const char *end = strchr(s, ']');
        if (!end || end[1] != ':')
            return -EINVAL;
        r = copy_part(s + 1, (size_t) (end - s - 1), host, sizeof(host));
        if (r < 0)
            return r;
        port_str = end + 2;
        if (parse_port(port_str, &port) < 0)
            return -EINVAL;
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *) &a->sa;
        if (inet_pton(AF_INET6, host, &in6->sin6_addr) != 1)
            return -EINVAL;
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons(port);
        a->sa_len = sizeof(*in6);
    } else {
        const char *colon = strchr(s, ':');
        if (!colon)
            return -EINVAL;
        r = copy_part(s, (size_t) (colon - s), host, sizeof(host));
        if (r < 0)
            return r;
        port_str = colon + 1;
        if (parse_port(port_str, &port) < 0)
            return -EINVAL;
        struct sockaddr_in *in = (struct sockaddr_in *) &a->sa;
        /* `localhost` is the only name: resolving names is forbidden in this project. */
        if (streq(host, "localhost"))
            in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        else if (inet_pton(AF_INET, host, &in->sin_addr) != 1)
            return -EINVAL;
        in->sin_family = AF_INET;
        in->sin_port = htons(port);
        a->sa_len = sizeof(*in);
    }
    if ((size_t) snprintf(a->host, sizeof(a->host), "%s", s) >= sizeof(a->host))
        return -EINVAL;
    return 0;
}

static int parse_vsock(const char *s, struct client_addr *a)
{
    char cid_str[16];
    uint32_t cid, port;
    const char *colon = strchr(s, ':');

    if (!colon || copy_part(s, (size_t) (colon - s), cid_str, sizeof(cid_str)) < 0)
        return -EINVAL;
    if (parse_u32(cid_str, &cid) < 0 || parse_u32(colon + 1, &port) < 0)
        return -EINVAL;
    /* The wildcards only make sense for bind(). */
    if (cid == VMADDR_CID_ANY || port == VMADDR_PORT_ANY)
        return -EINVAL;
    struct sockaddr_vm *vm = (struct sockaddr_vm *) &a->sa;
    vm->svm_family = AF_VSOCK;
    vm->svm_cid = cid;
    vm->svm_port = port;
    a->sa_len = sizeof(*vm);
    (void) snprintf(a->host, sizeof(a->host), "localhost");
    return 0;
}

static int parse_fc(const char *s, struct client_addr *a)
{
    char path[sizeof(((struct sockaddr_un *) NULL)->sun_path) + 1];
    /* The port follows the last colon, so the path may contain colons. */
    const char *colon = strrchr(s, ':');
    uint32_t port;
    int r;

    if (!colon || copy_part(s, (size_t) (colon - s), path, sizeof(path)) < 0)
        return -EINVAL;
    if (parse_u32(colon + 1, &port) < 0)
        return -EINVAL;
    r = parse_unix_path(path, a);
    if (r < 0)
        return r;
    a->fc_port = port;
    return 0;
}

int client_addr_parse(const char *s, struct client_addr *ret)
{
    struct client_addr a = {0};
    int r;

    if (!s || !ret)
        return -EINVAL;
    if (startswith(s, "unix:")) {
        a.kind = CLIENT_ADDR_UNIX;
        r = parse_unix_path(s + STRLEN("unix:"), &a);
    } else if (startswith(s, "tcp:")) {
        a.kind = CLIENT_ADDR_TCP;
        r = parse_tcp(s + STRLEN("tcp:"), &a);
    } else if (startswith(s, "vsock:")) {
        a.kind = CLIENT_ADDR_VSOCK;
        r = parse_vsock(s + STRLEN("vsock:"), &a);
    } else if (startswith(s, "fc:")) {
        a.kind = CLIENT_ADDR_FC;
        r = parse_fc(s + STRLEN("fc:"), &a);
    } else {
        r = -EINVAL;
    }
    if (r < 0)
        return r;
    *ret = a;
    return 0;
}

/* Header syntax (RFC 9110) */

static bool is_tchar(unsigned char ch)
{
    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9'))
        return true;
    return ch != '\0' && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

static bool valid_token(const char *s)
{
    if (!s || !*s)
        return false;
    for (; *s; s++)
        if (!is_tchar((unsigned char) *s))
            return false;
    return true;
}

/* Field values: no control bytes but HTAB (in particular no CR or LF: no header injection). */
static bool valid_field_value(const char *s)
{
    if (!s)
        return false;
    for (; *s; s++) {
        unsigned char ch = (unsigned char) *s;
        if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
            return false;
    }
    return true;
}

/* An origin-form target: a path starting with '/', with no spaces or control bytes. */
static bool valid_target(const char *s)
{
    if (!s || s[0] != '/')
        return false;
    for (; *s; s++) {
        unsigned char ch = (unsigned char) *s;
        if (ch <= 0x20 || ch == 0x7f)
            return false;
    }
    return true;
}

/* Client */

static int normalize_timeout(int ms, int def, int *ret)
{
    if (ms < CLIENT_TIMEOUT_INFINITE)
        return -EINVAL;
    *ret = ms == 0 ? def : ms;
    return 0;
}

int client_new(const char *address, const struct client_options *opts, struct client **ret)
{
    static const struct client_options defaults = {0};
    _cleanup_client_ struct client *c = NULL;
    int r;

    if (!address || !ret)
        return -EINVAL;
    if (!opts)
        opts = &defaults;

    c = xcalloc(1, sizeof(*c));
    c->fd = -1;
    buf_init(&c->head, CLIENT_MAX_HEADER_BYTES);
    buf_init(&c->line, CLIENT_MAX_CHUNK_LINE);

    r = client_addr_parse(address, &c->addr);
    if (r < 0)
        return r;
    c->address = xstrdup(address);
    r = normalize_timeout(opts->connect_timeout_ms, CLIENT_DEFAULT_CONNECT_TIMEOUT_MS,
                          &c->connect_timeout_ms);
    if (r < 0)
        return r;
    r = normalize_timeout(opts->io_timeout_ms, CLIENT_DEFAULT_IO_TIMEOUT_MS, &c->io_timeout_ms);
    if (r < 0)
        return r;
    r = normalize_timeout(opts->fc_ack_timeout_ms, CLIENT_DEFAULT_FC_ACK_TIMEOUT_MS,
                          &c->fc_ack_timeout_ms);
    if (r < 0)
        return r;
    r = client_set_token(c, opts->token);
    if (r < 0)
        return r;
    r = client_set_user(c, opts->user);
    if (r < 0)
        return r;

    *ret = TAKE_PTR(c);
    return 0;
}

struct client *client_free(struct client *c)
{
    if (!c)
        return NULL;
    if (c->stream)
        c->stream->c = NULL;
    c->fd = safe_close(c->fd);
    if (c->token) {
        /* Do not leave the secret lying around in freed memory. */
        explicit_bzero(c->token, strlen(c->token));
        free(c->token);
    }
    free(c->authorization);
    free(c->address);
    buf_free(&c->head);
    buf_free(&c->line);
    free(c);
    return NULL;
}

int client_set_token(struct client *c, const char *token)
{
    if (!c || (token && (!*token || !valid_field_value(token))))
        return -EINVAL;
    if (c->token) {
        explicit_bzero(c->token, strlen(c->token));
        free(c->token);
    }
    c->token = token ? xstrdup(token) : NULL;
    return 0;
}

int client_set_user(struct client *c, const char *user)
{
    if (!c || (user && (!*user || !valid_field_value(user) || strchr(user, ':'))))
        return -EINVAL;
    free(c->authorization);
    c->authorization = NULL;
    if (!user)
        return 0;

    /* envd reads the user from Basic credentials with an empty password: "user:". */
    size_t ulen = strlen(user);
    _cleanup_free_ uint8_t *cred = xmalloc(ulen + 1);
    memcpy(cred, user, ulen);
    cred[ulen] = ':';
    size_t b64 = BASE64_ENCODE_RAW_LENGTH(ulen + 1);
    char *auth = xmalloc(STRLEN("Basic ") + b64 + 1);
    memcpy(auth, "Basic ", STRLEN("Basic "));
    base64_encode_raw(auth + STRLEN("Basic "), ulen + 1, cred);
    auth[STRLEN("Basic ") + b64] = '\0';
    c->authorization = auth;
    return 0;
}

void client_set_io_timeout(struct client *c, int timeout_ms)
{
    (void) normalize_timeout(timeout_ms, CLIENT_DEFAULT_IO_TIMEOUT_MS, &c->io_timeout_ms);
}

const struct client_addr *client_get_addr(const struct client *c)
{
    return &c->addr;
}

unsigned client_get_dial_count(const struct client *c)
{
    return c->dial_count;
}

void client_disconnect(struct client *c)
{
    c->fd = safe_close(c->fd);
    c->rpos = c->rlen = 0;
    c->phase = PHASE_IDLE;
}

/* Dialling */

static int connect_socket(const struct client_addr *a, int64_t deadline, int *ret_fd)
{
    _cleanup_close_ int fd = -1;

    fd = socket(a->sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -errno;
    for (;;) {
        if (connect(fd, (const struct sockaddr *) &a->sa, a->sa_len) == 0)
            break;
        if (errno == EINPROGRESS || errno == EINTR) {
            int soerr = 0;
            socklen_t len = sizeof(soerr);
            int r = wait_fd(fd, POLLOUT, deadline);
            if (r < 0)
                return r;
            if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0)
                return -errno;
            if (soerr)
                return -soerr;
            break;
        }
        /* A non-blocking Unix connect fails with EAGAIN while the listen backlog is full. */
        if (errno == EAGAIN && a->sa.ss_family == AF_UNIX) {
            if (now_ms() + CLIENT_BACKLOG_RETRY_MS >= deadline)
                return -ETIMEDOUT;
            sleep_until(now_ms() + CLIENT_BACKLOG_RETRY_MS);
            continue;
        }
        return -errno;
    }
    if (a->sa.ss_family == AF_INET || a->sa.ss_family == AF_INET6) {
        /* Stream envelopes are small writes that must leave at once. */
        int one = 1;
        (void) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    *ret_fd = TAKE_FD(fd);
    return 0;
}

/*
 * Firecracker's hybrid vsock handshake. The command goes out in one write: the muxer reads it
 * from a non-blocking socket and may drop a client that dribbles it. The ack is read byte by
 * byte so that nothing after its '\n' is consumed. Firecracker closes the socket without a
 * word when the command is bad or nothing listens on the port: both give -ECONNREFUSED.
 */
static int fc_handshake(int fd, uint32_t port, int64_t deadline)
{
    char cmd[32], ack[CLIENT_FC_ACK_MAX + 1];
    size_t len = 0;
    uint32_t host_port;
    int n = snprintf(cmd, sizeof(cmd), "CONNECT %" PRIu32 "\n", port);
    struct iovec iov = {.iov_base = cmd, .iov_len = (size_t) n};
    int r = send_all(fd, &iov, 1, (int) MIN(MAX(deadline - now_ms(), 0), (int64_t) INT32_MAX));

    if (r == -EPIPE || r == -ECONNRESET)
        return -ECONNREFUSED;
    if (r < 0)
        return r;

    for (;;) {
        if (len == CLIENT_FC_ACK_MAX)
            return -ECONNREFUSED;
        ssize_t k = recv_some(fd, ack + len, 1, deadline);
        if (k == 0 || k == -ECONNRESET)
            return -ECONNREFUSED;
        if (k < 0)
            return (int) k;
        if (ack[len++] == '\n')
            break;
    }
    ack[len - 1] = '\0';
    if (!startswith(ack, "OK ") || parse_u32(ack + STRLEN("OK "), &host_port) < 0)
        return -ECONNREFUSED;
    return 0;
}

/* Errors after which a Firecracker dial is worth repeating: the VM or its agent is not up. */
static bool fc_retryable(int r)
{
    return r == -ECONNREFUSED || r == -ENOENT || r == -ETIMEDOUT || r == -ECONNRESET ||
           r == -EPIPE || r == -EAGAIN;
}

static int client_dial(struct client *c)
{
    int64_t deadline = deadline_after(c->connect_timeout_ms);

    for (;;) {
        int64_t start = now_ms();
        int fd = -1;
        int r = connect_socket(&c->addr, deadline, &fd);
        if (r >= 0 && c->addr.kind == CLIENT_ADDR_FC) {
            int64_t ack_deadline = MIN(deadline, deadline_after(c->fc_ack_timeout_ms));
            r = fc_handshake(fd, c->addr.fc_port, ack_deadline);
            if (r < 0)
                fd = safe_close(fd);
        }
        if (r >= 0) {
            c->fd = fd;
            c->rpos = c->rlen = 0;
            c->dial_count++;
            return 0;
        }
        /* While a VM boots, Firecracker refuses until the agent listens: keep trying. */
        if (c->addr.kind != CLIENT_ADDR_FC || !fc_retryable(r))
            return r;
        int64_t next = start + CLIENT_FC_RETRY_MS;
        if (now_ms() >= deadline || next >= deadline)
            return r;
        sleep_until(next);
    }
}

int client_connect(struct client *c)
{
    if (c->fd >= 0)
        return 0;
    return client_dial(c);
}

/*
 * Whether an idle kept-alive connection still looks usable: the server may have closed it
 * (its idle timeout) or sent something unsolicited. Either way, dial a fresh one.
 */
static bool conn_usable(struct client *c)
{
    struct pollfd p = {.fd = c->fd, .events = POLLIN | POLLRDHUP};

    if (c->rpos < c->rlen)
        return false;
    return poll(&p, 1, 0) == 0;
}

/* Requests */

static bool header_is(const char *name, const char *want)
{
    return strcasecmp(name, want) == 0;
}

/* Whether a comma-separated header value contains `token` (case-insensitive). */
static bool list_has_token(const char *value, const char *token)
{
    return parse_list_has_token(value, token);
}

static int build_head(struct client *c, const struct client_request *req, struct buf *out,
                      bool *ret_close)
{
    bool has_host = false, has_agent = false, close = false;
    bool chunked = req->flags & CLIENT_REQUEST_CHUNKED;
    bool auth = !(req->flags & CLIENT_REQUEST_NO_AUTH);
    int r;

    for (size_t i = 0; i < req->n_headers; i++) {
        const struct client_header *h = &req->headers[i];
        if (!valid_token(h->name) || !valid_field_value(h->value))
            return -EINVAL;
        /* Framing is ours: a second framing header would desynchronise the connection. */
        if (header_is(h->name, "Content-Length") || header_is(h->name, "Transfer-Encoding"))
            return -EINVAL;
        has_host |= header_is(h->name, "Host");
        has_agent |= header_is(h->name, "User-Agent");
        if (header_is(h->name, "Connection") && list_has_token(h->value, "close"))
            close = true;
    }

    r = buf_printf(out, "%s %s HTTP/1.1\r\n", req->method, req->target);
    if (r >= 0 && !has_host)
        r = buf_printf(out, "Host: %s\r\n", c->addr.host);
    if (r >= 0 && !has_agent)
        r = buf_append_str(out, "User-Agent: guestd-client/" GUESTD_VERSION "\r\n");
    if (r >= 0 && auth && c->token)
        r = buf_printf(out, "X-Access-Token: %s\r\n", c->token);
    if (r >= 0 && auth && c->authorization)
        r = buf_printf(out, "Authorization: %s\r\n", c->authorization);
    for (size_t i = 0; r >= 0 && i < req->n_headers; i++)
        r = buf_printf(out, "%s: %s\r\n", req->headers[i].name, req->headers[i].value);
    if (r >= 0) {
        if (chunked)
            r = buf_append_str(out, "Transfer-Encoding: chunked\r\n");
        else if (req->body_len > 0 || !(streq(req->method, "GET") || streq(req->method, "HEAD")))
            r = buf_printf(out, "Content-Length: %zu\r\n", req->body_len);
    }
    if (r >= 0)
        r = buf_append_str(out, "\r\n");
    if (r < 0)
        return r;
    *ret_close = close;
    return 0;
}

/* The head may hold the access token: wipe it before the memory goes back to the heap. */
static void buf_wipe_free(struct buf *b)
{
    if (b->data)
        explicit_bzero(b->data, b->cap);
    buf_free(b);
}

static int request_start(struct client *c, const struct client_request *req)
{
    _cleanup_(buf_wipe_free) struct buf head;
    bool chunked = req->flags & CLIENT_REQUEST_CHUNKED;
    bool close = false;
    int r;

    buf_init(&head, CLIENT_MAX_REQUEST_HEAD);
    if (!valid_token(req->method) || !valid_target(req->target))
        return -EINVAL;
    if ((req->body_len > 0 && !req->body) || (chunked && req->body_len > 0))
        return -EINVAL;
    r = build_head(c, req, &head, &close);
    if (r < 0)
        return r;

    /* The previous response was not read to its end: its rest is still on the wire. */
    if (c->phase != PHASE_IDLE && c->phase != PHASE_DONE)
        client_disconnect(c);
    if (c->fd >= 0 && !conn_usable(c))
        client_disconnect(c);
    c->phase = PHASE_IDLE;
    memset(&c->resp, 0, sizeof(c->resp));

    for (int attempt = 0;; attempt++) {
        bool reused = c->fd >= 0;
        if (!reused) {
            r = client_dial(c);
            if (r < 0)
                return r;
        }
        struct iovec iov[] = {
                {.iov_base = head.data, .iov_len = head.len},
                {.iov_base = (void *) req->body, .iov_len = req->body_len},
        };
        r = send_all(c->fd, iov, (int) ARRAY_SIZE(iov), c->io_timeout_ms);
        if (r >= 0)
            break;
        client_disconnect(c);
        /*
         * A kept-alive connection the server closed just now fails on write. The server cannot
         * have seen the whole request then, so sending it again on a fresh connection is safe.
         */
        if (!reused || attempt > 0 || (r != -EPIPE && r != -ECONNRESET))
            return r;
    }

    c->phase = chunked ? PHASE_SENDING : PHASE_SENT;
    c->send_error = 0;
    c->req_head = streq(req->method, "HEAD");
    c->req_close = close;
    return 0;
}

int client_request_start(struct client *c, const struct client_request *req)
{
    if (!c || !req)
        return -EINVAL;
    if (c->stream)
        return -EBUSY;
    return request_start(c, req);
}

/* A failed body write: keep the socket, the server may have answered early (e.g. 413). */
static int body_send_failed(struct client *c, int r)
{
    c->phase = PHASE_SENT;
    c->req_close = true;
    c->send_error = r;
    return r;
}

int client_request_write(struct client *c, const void *p, size_t n)
{
    char size[32];

    if (!c || (n > 0 && !p))
        return -EINVAL;
    if (c->phase != PHASE_SENDING)
        return c->send_error < 0 ? c->send_error : -EINVAL;
    if (n == 0)
        return 0; /* a zero-size chunk would end the body */

    int len = snprintf(size, sizeof(size), "%zx\r\n", n);
    struct iovec iov[] = {
            {.iov_base = size, .iov_len = (size_t) len},
            {.iov_base = (void *) p, .iov_len = n},
            {.iov_base = (void *) "\r\n", .iov_len = 2},
    };
    int r = send_all(c->fd, iov, (int) ARRAY_SIZE(iov), c->io_timeout_ms);
    if (r < 0)
        return body_send_failed(c, r);
    return 0;
}

int client_request_finish(struct client *c)
{
    if (!c)
        return -EINVAL;
    if (c->phase == PHASE_SENT)
        return c->send_error;
    if (c->phase != PHASE_SENDING)
        return -EINVAL;

    struct iovec iov = {.iov_base = (void *) "0\r\n\r\n", .iov_len = 5};
    int r = send_all(c->fd, &iov, 1, c->io_timeout_ms);
    if (r < 0)
        return body_send_failed(c, r);
    c->phase = PHASE_SENT;
    return 0;
}

/* Responses */

/* Reads more bytes into rbuf. Returns the count, 0 at EOF, or -errno. */
static ssize_t fill(struct client *c)
{
    if (c->rpos == c->rlen) {
        c->rpos = c->rlen = 0;
    } else if (c->rlen == sizeof(c->rbuf)) {
        memmove(c->rbuf, c->rbuf + c->rpos, c->rlen - c->rpos);
        c->rlen -= c->rpos;
        c->rpos = 0;
    }
    ssize_t k = recv_some(c->fd, c->rbuf + c->rlen, sizeof(c->rbuf) - c->rlen,
                          deadline_after(c->io_timeout_ms));
    if (k > 0)
        c->rlen += (size_t) k;
    return k;
}

/* Appends one line, '\n' included, to `out`. EOF first: -ECONNRESET; out's cap: -E2BIG. */
static int read_line(struct client *c, struct buf *out)
{
    for (;;) {
        if (c->rpos == c->rlen) {
            ssize_t k = fill(c);
            if (k < 0)
                return (int) k;
            if (k == 0)
                return -ECONNRESET;
        }
        const char *start = c->rbuf + c->rpos;
        size_t avail = c->rlen - c->rpos;
        const char *nl = memchr(start, '\n', avail);
        size_t take = nl ? (size_t) (nl - start) + 1 : avail;
        int r = buf_append(out, start, take);
        if (r < 0)
            return r;
        c->rpos += take;
        if (nl)
            return 0;
    }
}

static bool line_is_empty(const char *line, size_t len)
{
    return (len == 1 && line[0] == '\n') || (len == 2 && line[0] == '\r' && line[1] == '\n');
}

/* Reads a response head, up to and including its empty line, into c->head. */
static int read_head(struct client *c)
{
    buf_reset(&c->head);
    for (;;) {
        size_t start = c->head.len;
        int r = read_line(c, &c->head);
        if (r < 0)
            return r;
        if (line_is_empty(c->head.data + start, c->head.len - start))
            return start == 0 ? -EPROTO : 0;
    }
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    char *end = s + strlen(s);
    while (end > s && (end[-1] == ' ' || end[-1] == '\t'))
        *--end = '\0';
    return s;
}

/* Splits c->head into the status line and header fields (C strings in place). */
static int parse_head(struct client *c, int *ret_minor)
{
    char *p = c->head.data, *end = c->head.data + c->head.len;
    size_t n = 0;
    int minor;

    /* C strings follow: a NUL inside the head would hide what comes after it. */
    if (memchr(p, '\0', c->head.len))
        return -EPROTO;

    /* Every line ends in '\n' (read_line guarantees it); cut them into C strings. */
    char *nl = memchr(p, '\n', (size_t) (end - p));
    *nl = '\0';
    if (nl > p && nl[-1] == '\r')
        nl[-1] = '\0';
    if (!startswith(p, "HTTP/1.") || (p[7] != '0' && p[7] != '1') || p[8] != ' ')
        return -EPROTO;
    minor = p[7] - '0';
    for (int i = 9; i < 12; i++)
        if (p[i] < '0' || p[i] > '9')
            return -EPROTO;
    if (p[12] != ' ' && p[12] != '\0')
        return -EPROTO;
    c->resp.status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    c->resp.reason = p[12] ? p + 13 : p + 12;
    if (!valid_field_value(c->resp.reason))
        return -EPROTO;

    for (p = nl + 1; p < end; p = nl + 1) {
        nl = memchr(p, '\n', (size_t) (end - p));
        *nl = '\0';
        if (nl > p && nl[-1] == '\r')
            nl[-1] = '\0';
        if (*p == '\0')
            break; /* the empty line */
        /* Obsolete line folding is rejected, as by every current HTTP implementation. */
        if (*p == ' ' || *p == '\t')
            return -EPROTO;
        char *colon = strchr(p, ':');
        if (!colon)
            return -EPROTO;
        *colon = '\0';
        char *value = trim(colon + 1);
        if (!valid_token(p) || !valid_field_value(value))
            return -EPROTO;
        if (n == CLIENT_MAX_HEADERS)
            return -E2BIG;
        c->headers[n].name = p;
        c->headers[n].value = value;
        n++;
    }
    c->resp.headers = c->headers;
    c->resp.n_headers = n;
    *ret_minor = minor;
    return 0;
}

/* Works out how the body is delimited and whether the connection may be reused. */
static int parse_framing(struct client *c, int minor)
{
    const struct client_response *r = &c->resp;
    bool has_length = false, chunked = false, te = false;
    uint64_t length = 0;

    c->keep_alive = minor == 1;
    for (size_t i = 0; i < r->n_headers; i++) {
        const char *name = r->headers[i].name, *value = r->headers[i].value;
        if (header_is(name, "Content-Length")) {
            uint64_t v;
            if (parse_u64_digits(value, strlen(value), CLIENT_MAX_LENGTH_DIGITS, &v) < 0)
                return -EPROTO;
            if (has_length && v != length)
                return -EPROTO;
            has_length = true;
            length = v;
        } else if (header_is(name, "Transfer-Encoding")) {
            /* Only plain chunked: we never ask for other codings and could not undo them. */
            if (te || strcasecmp(value, "chunked") != 0)
                return -EPROTO;
            te = chunked = true;
        } else if (header_is(name, "Connection")) {
            if (list_has_token(value, "close"))
                c->keep_alive = false;
        }
    }
    /* Both at once is how responses get smuggled (RFC 9112 §6.3): treat it as an error. */
    if (has_length && chunked)
        return -EPROTO;

    c->resp.content_length = has_length ? (int64_t) length : -1;
    if (c->req_head || r->status == 204 || r->status == 304) {
        c->body_mode = BODY_LENGTH;
        c->body_left = 0;
    } else if (chunked) {
        c->body_mode = BODY_CHUNKED;
        c->chunk_state = CHUNK_SIZE;
    } else if (has_length) {
        c->body_mode = BODY_LENGTH;
        c->body_left = length;
    } else {
        c->body_mode = BODY_CLOSE;
        c->keep_alive = false;
    }
    return 0;
}

static void body_finished(struct client *c)
{
    if (!c->keep_alive || c->req_close)
        client_disconnect(c);
    c->phase = PHASE_DONE;
}

int client_response_start(struct client *c, const struct client_response **ret)
{
    int minor = 1, r;

    if (!c || !ret)
        return -EINVAL;
    if (c->phase != PHASE_SENT)
        return -EINVAL;
    for (;;) {
        r = read_head(c);
        if (r >= 0)
            r = parse_head(c, &minor);
        if (r < 0)
            goto fail;
        /* Interim responses precede the real one; 101 would switch protocols: never asked. */
        if (c->resp.status == 101) {
            r = -EPROTO;
            goto fail;
        }
        if (c->resp.status >= 200)
            break;
        if (c->resp.status < 100) {
            r = -EPROTO;
            goto fail;
        }
    }
    r = parse_framing(c, minor);
    if (r < 0)
        goto fail;
    c->phase = PHASE_BODY;
    if (c->body_mode == BODY_LENGTH && c->body_left == 0)
        body_finished(c);
    *ret = &c->resp;
    return 0;
fail:
    client_disconnect(c);
    return r;
}

/* Reads body bytes as they come: buffered first, then straight from the socket. */
static ssize_t raw_read(struct client *c, char *p, size_t n)
{
    if (c->rpos == c->rlen) {
        if (n >= sizeof(c->rbuf) / 4)
            return recv_some(c->fd, p, n, deadline_after(c->io_timeout_ms));
        ssize_t k = fill(c);
        if (k <= 0)
            return k;
    }
    size_t take = MIN(n, c->rlen - c->rpos);
    memcpy(p, c->rbuf + c->rpos, take);
    c->rpos += take;
    return (ssize_t) take;
}

static int read_chunk_size(struct client *c)
{
    uint64_t size = 0;
    size_t digits = 0;
    const char *p;
    int r;

    buf_reset(&c->line);
    r = read_line(c, &c->line);
    if (r == -E2BIG)
        return -EPROTO;
    if (r < 0)
        return r;
    for (p = c->line.data; digits < CLIENT_MAX_CHUNK_DIGITS + 1; p++, digits++) {
        int v;
        if (*p >= '0' && *p <= '9')
            v = *p - '0';
        else if (*p >= 'a' && *p <= 'f')
            v = *p - 'a' + 10;
        else if (*p >= 'A' && *p <= 'F')
            v = *p - 'A' + 10;
        else
            break;
        size = size * 16 + (uint64_t) v;
    }
    if (digits == 0 || digits > CLIENT_MAX_CHUNK_DIGITS)
        return -EPROTO;
    while (*p == ' ' || *p == '\t')
        p++;
    /* Chunk extensions (";name=value") carry nothing we use. */
    if (*p != ';' && !streq(p, "\r\n") && !streq(p, "\n"))
        return -EPROTO;

    if (size == 0) {
        c->chunk_state = CHUNK_TRAILERS;
        c->trailer_bytes = 0;
    } else {
        c->chunk_state = CHUNK_DATA;
        c->body_left = size;
    }
    return 0;
}

static int read_chunk_end(struct client *c)
{
    buf_reset(&c->line);
    int r = read_line(c, &c->line);
    if (r == -E2BIG)
        return -EPROTO;
    if (r < 0)
        return r;
    if (!line_is_empty(c->line.data, c->line.len))
        return -EPROTO;
    c->chunk_state = CHUNK_SIZE;
    return 0;
}

/* Trailers are read and ignored, bounded like a head. Returns 1 after the empty line. */
static int read_trailer(struct client *c)
{
    buf_reset(&c->line);
    int r = read_line(c, &c->line);
    if (r == -E2BIG)
        return -EPROTO;
    if (r < 0)
        return r;
    c->trailer_bytes += c->line.len;
    if (c->trailer_bytes > CLIENT_MAX_HEADER_BYTES)
        return -E2BIG;
    return line_is_empty(c->line.data, c->line.len);
}

static ssize_t body_read(struct client *c, char *p, size_t n)
{
    ssize_t k;
    int r;

    for (;;) {
        switch (c->body_mode) {
        case BODY_LENGTH:
            if (c->body_left == 0) {
                body_finished(c);
                return 0;
            }
            k = raw_read(c, p, (size_t) MIN((uint64_t) n, c->body_left));
            if (k == 0)
                return -ECONNRESET; /* closed before Content-Length bytes came */
            if (k < 0)
                return k;
            c->body_left -= (uint64_t) k;
            if (c->body_left == 0)
                body_finished(c);
            return k;
        case BODY_CLOSE:
            k = raw_read(c, p, n);
            if (k == 0)
                body_finished(c);
            return k;
        case BODY_CHUNKED:
            switch (c->chunk_state) {
            case CHUNK_SIZE:
                r = read_chunk_size(c);
                if (r < 0)
                    return r;
                continue;
            case CHUNK_DATA:
                k = raw_read(c, p, (size_t) MIN((uint64_t) n, c->body_left));
                if (k == 0)
                    return -ECONNRESET; /* closed inside a chunk */
                if (k < 0)
                    return k;
                c->body_left -= (uint64_t) k;
                if (c->body_left == 0)
                    c->chunk_state = CHUNK_DATA_END;
                return k;
            case CHUNK_DATA_END:
                r = read_chunk_end(c);
                if (r < 0)
                    return r;
                continue;
            case CHUNK_TRAILERS:
                r = read_trailer(c);
                if (r < 0)
                    return r;
                if (r > 0) {
                    body_finished(c);
                    return 0;
                }
                continue;
            }
        }
        return -EINVAL; /* not reached */
    }
}

ssize_t client_response_read(struct client *c, void *p, size_t n)
{
    if (!c || !p || n == 0)
        return -EINVAL;
    if (c->phase == PHASE_DONE)
        return 0;
    if (c->phase != PHASE_BODY)
        return -EINVAL;
    ssize_t k = body_read(c, p, n);
    if (k < 0)
        client_disconnect(c);
    return k;
}

/* Size of each read when the body goes to a buffer or is discarded. */
#define CLIENT_READ_ALL_STEP (64 * 1024)

int client_response_read_all(struct client *c, struct buf *out)
{
    char scratch[4096];

    if (!c)
        return -EINVAL;
    for (;;) {
        ssize_t k;
        if (!out) {
            k = client_response_read(c, scratch, sizeof(scratch));
        } else if (out->len == out->max) {
            /* Full: only the end of the body may follow. */
            k = client_response_read(c, scratch, 1);
            if (k > 0) {
                client_disconnect(c);
                return -E2BIG;
            }
        } else {
            size_t want = MIN((size_t) CLIENT_READ_ALL_STEP, out->max - out->len);
            int r = buf_reserve(out, want);
            if (r < 0) {
                client_disconnect(c);
                return r;
            }
            k = client_response_read(c, buf_tail(out), want);
            if (k > 0)
                buf_commit(out, (size_t) k);
        }
        if (k < 0)
            return (int) k;
        if (k == 0)
            return 0;
    }
}

const char *client_response_header(const struct client_response *r, const char *name)
{
    if (!r || !name)
        return NULL;
    for (size_t i = 0; i < r->n_headers; i++)
        if (header_is(r->headers[i].name, name))
            return r->headers[i].value;
    return NULL;
}

int client_fetch(struct client *c, const struct client_request *req, struct buf *body,
                 const struct client_response **ret)
{
    const struct client_response *resp;
    int r;

    if (!c || !req || (req->flags & CLIENT_REQUEST_CHUNKED))
        return -EINVAL;
    r = client_request_start(c, req);
    if (r < 0)
        return r;
    r = client_response_start(c, &resp);
    if (r < 0)
        return r;
    r = client_response_read_all(c, body);
    if (r < 0)
        return r;
    if (ret)
        *ret = resp;
    return 0;
}

/* Connect errors */

void client_error_done(struct client_error *e)
{
    if (!e)
        return;
    free(e->code);
    free(e->message);
    *e = (struct client_error){0};
}

static void error_set(struct client_error *e, int http_status, const char *code, const char *fmt,
                      ...) _printf_(4, 5);
static void error_set(struct client_error *e, int http_status, const char *code, const char *fmt,
                      ...)
{
    va_list ap;
    char *msg;

    if (!e)
        return;
    client_error_done(e);
    va_start(ap, fmt);
    if (vasprintf(&msg, fmt, ap) < 0)
        alloc_oom();
    va_end(ap);
    e->http_status = http_status;
    e->code = xstrdup(code);
    e->message = msg;
}

static void error_copy(struct client_error *dst, const struct client_error *src)
{
    if (!dst || dst == src)
        return;
    client_error_done(dst);
    dst->http_status = src->http_status;
    dst->code = src->code ? xstrdup(src->code) : NULL;
    dst->message = src->message ? xstrdup(src->message) : NULL;
}

/* Sets an error with its message and returns `r` (status 0: no response involved). */
static int fail(struct client_error *e, int status, int r, const char *code, const char *msg)
{
    error_set(e, status, code, "%s", msg);
    return r;
}

/* The Connect code connect-go reports for a local failure. */
static const char *code_from_errno(int r)
{
    switch (r) {
    case -ETIMEDOUT:
        return "deadline_exceeded";
    case -EPROTO:
        return "internal";
    case -E2BIG:
    case -ENOMEM:
        return "resource_exhausted";
    case -EINVAL:
    case -EBUSY:
        return "invalid_argument";
    default:
        return "unavailable";
    }
}

/* Fills `e` for a failure that did not describe itself yet. Returns `r`. */
static int error_finish(struct client *c, struct client_error *e, int r)
{
    if (r >= 0 || !e || e->code)
        return r;
    error_set(e, c && c->phase >= PHASE_BODY ? c->resp.status : 0, code_from_errno(r), "%s: %s",
              c ? c->address : "client", strerror(-r));
    return r;
}

static bool is_connect_code(const char *s)
{
    for (size_t i = 0; i < ARRAY_SIZE(connect_codes); i++)
        if (streq(s, connect_codes[i]))
            return true;
    return false;
}

const char *client_code_from_http_status(int status)
{
    switch (status) {
    case 400:
        return "internal";
    case 401:
        return "unauthenticated";
    case 403:
        return "permission_denied";
    case 404:
        return "unimplemented";
    case 429:
    case 502:
    case 503:
    case 504:
        return "unavailable";
    default:
        return "unknown";
    }
}

/* Whether a Content-Type names `want`, ignoring parameters and case. */
static bool media_type_is(const char *ct, const char *want)
{
    size_t n = strlen(want);

    if (!ct || strncasecmp(ct, want, n) != 0)
        return false;
    ct += n;
    while (*ct == ' ' || *ct == '\t')
        ct++;
    return *ct == '\0' || *ct == ';';
}

/*
 * Turns a non-200 answer into a Connect error, as connect-es does: the JSON body when the
 * response is JSON and names a valid code, otherwise a code derived from the HTTP status
 * (keeping the body's message if it has one: envd's token gate answers {"code":401,…}).
 */
static int error_from_response(struct client *c, struct client_error *e)
{
    _cleanup_(buf_free) struct buf body;
    _cleanup_(json_decrefp) json_t *root = NULL;
    const struct client_response *resp = &c->resp;
    const char *code = NULL, *message = NULL;

    buf_init(&body, CLIENT_MAX_ERROR_BODY_BYTES);
    int r = client_response_read_all(c, &body);
    if (r >= 0 && media_type_is(client_response_header(resp, "Content-Type"), "application/json"))
        root = json_loadb(body.data ? body.data : "", body.len, JSON_REJECT_DUPLICATES, NULL);
    if (json_is_object(root)) {
        const char *s = json_string_value(json_object_get(root, "code"));
        if (s && is_connect_code(s))
            code = s;
        message = json_string_value(json_object_get(root, "message"));
    }
    if (code)
        error_set(e, resp->status, code, "%s", message ? message : "");
    else if (message)
        error_set(e, resp->status, client_code_from_http_status(resp->status), "%s", message);
    else
        error_set(e, resp->status, client_code_from_http_status(resp->status), "HTTP %d %s",
                  resp->status, resp->reason);
    return -EREMOTEIO;
}

/* Connect calls */

static const char *unary_content_type(enum client_codec codec)
{
    return codec == CLIENT_CODEC_PROTO ? "application/proto" : "application/json";
}

static const char *stream_content_type(enum client_codec codec)
{
    return codec == CLIENT_CODEC_PROTO ? "application/connect+proto" : "application/connect+json";
}

static int encode_message(enum client_codec codec, const ProtobufCMessage *msg, struct buf *out)
{
    return codec == CLIENT_CODEC_PROTO ? pbproto_encode(msg, out) : pbjson_encode(msg, out);
}

static int decode_message(enum client_codec codec, const ProtobufCMessageDescriptor *desc,
                          const char *data, size_t len, struct client_error *e,
                          ProtobufCMessage **ret)
{
    _cleanup_free_ char *why = NULL;
    int r;

    if (codec == CLIENT_CODEC_PROTO)
        r = pbproto_decode(desc, (const uint8_t *) data, len, ret, &why);
    else
        r = pbjson_decode(desc, data ? data : "", len, ret, &why);
    if (r == -ENOMEM)
        return r;
    if (r < 0) {
        error_set(e, 200, "internal", "cannot decode %s: %s", desc->name, why ? why : strerror(-r));
        return -EPROTO;
    }
    return 0;
}

/*
 * Issues the request of a Connect call: the Connect headers, the caller's extra headers and
 * either `body` (Content-Length) or a chunked body when `body` is NULL.
 */
static int call_start(struct client *c, const char *procedure, const struct client_call_options *o,
                      const char *content_type, const struct buf *body)
{
    _cleanup_free_ struct client_header *h = NULL;
    char timeout[16];
    size_t n = 0;

    if (o->n_headers > SIZE_MAX / sizeof(*h) - 3)
        return -EINVAL;
    h = xcalloc(o->n_headers + 3, sizeof(*h));
    h[n++] = (struct client_header){"Content-Type", content_type};
    h[n++] = (struct client_header){"Connect-Protocol-Version", "1"};
    if (o->timeout_ms > 0) {
        (void) snprintf(timeout, sizeof(timeout), "%" PRIu32, o->timeout_ms);
        h[n++] = (struct client_header){"Connect-Timeout-Ms", timeout};
    }
    for (size_t i = 0; i < o->n_headers; i++)
        h[n++] = o->headers[i];

    struct client_request req = {
            .method = "POST",
            .target = procedure,
            .headers = h,
            .n_headers = n,
            .body = body ? body->data : NULL,
            .body_len = body ? body->len : 0,
            .flags = body ? 0 : CLIENT_REQUEST_CHUNKED,
    };
    return request_start(c, &req);
}

/* Rejects a compressed body we never asked for: we could not read it. */
static bool encoding_ok(const struct client_response *resp, const char *header)
{
    const char *enc = client_response_header(resp, header);
    return !enc || strcasecmp(enc, "identity") == 0;
}

static bool call_args_ok(struct client *c, const char *procedure,
                         const ProtobufCMessageDescriptor *desc)
{
    return c && !c->stream && valid_target(procedure) && desc;
}

static int unary_call(struct client *c, const char *procedure, const struct client_call_options *o,
                      const ProtobufCMessage *req, const ProtobufCMessageDescriptor *resp_desc,
                      struct client_error *e, ProtobufCMessage **ret)
{
    _cleanup_(buf_free) struct buf body;
    const struct client_response *resp;
    int r;

    buf_init(&body, CLIENT_MAX_MESSAGE_BYTES);
    r = encode_message(o->codec, req, &body);
    if (r == -E2BIG)
        return fail(e, 0, r, "resource_exhausted", "request message too large");
    if (r < 0)
        return r;
    r = call_start(c, procedure, o, unary_content_type(o->codec), &body);
    if (r < 0)
        return r;
    r = client_response_start(c, &resp);
    if (r < 0)
        return r;
    if (resp->status != 200)
        return error_from_response(c, e);

    if (!media_type_is(client_response_header(resp, "Content-Type"),
                       unary_content_type(o->codec))) {
        client_disconnect(c);
        error_set(e, 200, "internal", "unexpected content type '%s'",
                  client_response_header(resp, "Content-Type") ?: "");
        return -EPROTO;
    }
    if (!encoding_ok(resp, "Content-Encoding")) {
        client_disconnect(c);
        return fail(e, 200, -EPROTO, "internal", "unexpected Content-Encoding");
    }

    buf_free(&body);
    buf_init(&body, CLIENT_MAX_MESSAGE_BYTES);
    r = client_response_read_all(c, &body);
    if (r == -E2BIG)
        return fail(e, 200, r, "resource_exhausted", "response message too large");
    if (r < 0)
        return r;
    return decode_message(o->codec, resp_desc, body.data, body.len, e, ret);
}

int client_unary(struct client *c, const char *procedure, const struct client_call_options *opts,
                 const ProtobufCMessage *req, const ProtobufCMessageDescriptor *resp_desc,
                 struct client_error *err, ProtobufCMessage **ret_resp)
{
    static const struct client_call_options defaults = {0};
    ProtobufCMessage *msg = NULL;
    int r;

    client_error_done(err);
    if (!call_args_ok(c, procedure, resp_desc) || !req || !ret_resp)
        return error_finish(c, err, c && c->stream ? -EBUSY : -EINVAL);
    r = unary_call(c, procedure, opts ?: &defaults, req, resp_desc, err, &msg);
    if (r < 0)
        return error_finish(c, err, r);
    *ret_resp = msg;
    return 0;
}

/* Streams */

static struct client_stream *stream_new(struct client *c, const ProtobufCMessageDescriptor *desc,
                                        enum client_codec codec)
{
    struct client_stream *s = xcalloc(1, sizeof(*s));
    s->c = c;
    s->desc = desc;
    s->codec = codec;
    s->result = 1;
    buf_init(&s->payload, CLIENT_MAX_MESSAGE_BYTES);
    return s;
}

struct client_stream *client_stream_free(struct client_stream *s)
{
    if (!s)
        return NULL;
    if (s->c) {
        /* Unread stream data is still on the wire: the connection cannot be reused. */
        if (s->c->phase != PHASE_DONE && s->c->phase != PHASE_IDLE)
            client_disconnect(s->c);
        if (s->c->stream == s)
            s->c->stream = NULL;
    }
    client_error_done(&s->final);
    buf_free(&s->payload);
    free(s);
    return NULL;
}

const struct client_response *client_stream_response(const struct client_stream *s)
{
    return s && s->have_head && s->c ? &s->c->resp : NULL;
}

/* Reads the response head of a stream: a Connect error or the start of a 200 stream. */
static int stream_read_head(struct client_stream *s, struct client_error *e)
{
    struct client *c = s->c;
    const struct client_response *resp;
    int r = client_response_start(c, &resp);

    if (r < 0)
        return r;
    if (resp->status != 200)
        return error_from_response(c, e);
    if (!media_type_is(client_response_header(resp, "Content-Type"),
                       stream_content_type(s->codec))) {
        client_disconnect(c);
        error_set(e, 200, "internal", "unexpected content type '%s'",
                  client_response_header(resp, "Content-Type") ?: "");
        return -EPROTO;
    }
    if (!encoding_ok(resp, "Connect-Content-Encoding")) {
        client_disconnect(c);
        return fail(e, 200, -EPROTO, "internal", "unexpected Connect-Content-Encoding");
    }
    s->have_head = true;
    return 0;
}

static int encode_envelope(enum client_codec codec, const ProtobufCMessage *msg, struct buf *out)
{
    static const char zero[ENVELOPE_HEADER];
    int r = buf_append(out, zero, sizeof(zero));
    if (r < 0)
        return r;
    r = encode_message(codec, msg, out);
    if (r < 0)
        return r;
    uint32_t len = (uint32_t) (out->len - ENVELOPE_HEADER);
    out->data[0] = 0;
    out->data[1] = (char) (len >> 24);
    out->data[2] = (char) (len >> 16);
    out->data[3] = (char) (len >> 8);
    out->data[4] = (char) len;
    return 0;
}

int client_stream_open_server(struct client *c, const char *procedure,
                              const struct client_call_options *opts, const ProtobufCMessage *req,
                              const ProtobufCMessageDescriptor *resp_desc, struct client_error *err,
                              struct client_stream **ret)
{
    static const struct client_call_options defaults = {0};
    _cleanup_client_stream_ struct client_stream *s = NULL;
    _cleanup_(buf_free) struct buf env;
    int r;

    client_error_done(err);
    buf_init(&env, ENVELOPE_HEADER + CLIENT_MAX_MESSAGE_BYTES);
    if (!call_args_ok(c, procedure, resp_desc) || !req || !ret)
        return error_finish(c, err, c && c->stream ? -EBUSY : -EINVAL);
    if (!opts)
        opts = &defaults;

    r = encode_envelope(opts->codec, req, &env);
    if (r == -E2BIG)
        return fail(err, 0, r, "resource_exhausted", "request message too large");
    if (r < 0)
        return error_finish(c, err, r);
    s = stream_new(c, resp_desc, opts->codec);
    r = call_start(c, procedure, opts, stream_content_type(opts->codec), &env);
    if (r >= 0)
        r = stream_read_head(s, err);
    if (r < 0)
        return error_finish(c, err, r);

    c->stream = s;
    *ret = TAKE_PTR(s);
    return 0;
}

int client_stream_open_client(struct client *c, const char *procedure,
                              const struct client_call_options *opts,
                              const ProtobufCMessageDescriptor *resp_desc, struct client_error *err,
                              struct client_stream **ret)
{
    static const struct client_call_options defaults = {0};
    _cleanup_client_stream_ struct client_stream *s = NULL;
    int r;

    client_error_done(err);
    if (!call_args_ok(c, procedure, resp_desc) || !ret)
        return error_finish(c, err, c && c->stream ? -EBUSY : -EINVAL);
    if (!opts)
        opts = &defaults;

    s = stream_new(c, resp_desc, opts->codec);
    r = call_start(c, procedure, opts, stream_content_type(opts->codec), NULL);
    if (r < 0)
        return error_finish(c, err, r);
    s->sending = true;
    c->stream = s;
    *ret = TAKE_PTR(s);
    return 0;
}

/* Reads exactly `n` bytes of body unless it ends first. Returns the count or -errno. */
static ssize_t read_exact(struct client *c, void *p, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t k = client_response_read(c, (char *) p + got, n - got);
        if (k < 0)
            return k;
        if (k == 0)
            break;
        got += (size_t) k;
    }
    return (ssize_t) got;
}

/* Interprets an end-of-stream payload: `{}` → 0, an error → -EREMOTEIO, junk → -EPROTO. */
static int parse_end_stream(struct client_stream *s, struct client_error *e)
{
    _cleanup_(json_decrefp) json_t *root = NULL;
    json_t *error;

    root = json_loadb(s->payload.data ? s->payload.data : "", s->payload.len,
                      JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_object(root))
        return fail(e, 200, -EPROTO, "internal", "invalid EndStreamResponse");
    error = json_object_get(root, "error");
    if (!error || json_is_null(error))
        return 0;
    if (!json_is_object(error))
        return fail(e, 200, -EPROTO, "internal", "invalid EndStreamResponse");
    const char *code = json_string_value(json_object_get(error, "code"));
    const char *message = json_string_value(json_object_get(error, "message"));
    error_set(e, s->c->resp.status, code && is_connect_code(code) ? code : "unknown", "%s",
              message ? message : "");
    return -EREMOTEIO;
}

static int stream_read_frame(struct client_stream *s, struct client_error *e,
                             ProtobufCMessage **ret)
{
    struct client *c = s->c;
    uint8_t hdr[ENVELOPE_HEADER];
    ssize_t k;
    int r;

    k = read_exact(c, hdr, sizeof(hdr));
    if (k == -ECONNRESET)
        return fail(e, 200, -ECONNRESET, "unavailable",
                    "connection closed before EndStreamResponse");
    if (k < 0)
        return (int) k;
    if (k == 0)
        return fail(e, 200, -EPROTO, "internal", "missing EndStreamResponse");
    if (k < (ssize_t) sizeof(hdr))
        return fail(e, 200, -EPROTO, "internal", "incomplete envelope");

    uint8_t flags = hdr[0];
    uint32_t len = (uint32_t) hdr[1] << 24 | (uint32_t) hdr[2] << 16 | (uint32_t) hdr[3] << 8 |
                   (uint32_t) hdr[4];
    if (flags & ENVELOPE_COMPRESSED)
        return fail(e, 200, -EPROTO, "internal",
                    "received compressed envelope, but no compression was negotiated");
    if (flags & ~ENVELOPE_END_STREAM) {
        error_set(e, 200, "internal", "invalid envelope flags 0x%02x", flags);
        return -EPROTO;
    }
    if (len > CLIENT_MAX_MESSAGE_BYTES) {
        error_set(e, 200, "resource_exhausted", "message size %" PRIu32 " exceeds limit %d", len,
                  CLIENT_MAX_MESSAGE_BYTES);
        return -E2BIG;
    }

    buf_reset(&s->payload);
    r = buf_reserve(&s->payload, len);
    if (r < 0)
        return r;
    k = len ? read_exact(c, buf_tail(&s->payload), len) : 0;
    if (k == -ECONNRESET)
        return fail(e, 200, -ECONNRESET, "unavailable",
                    "connection closed before EndStreamResponse");
    if (k < 0)
        return (int) k;
    if ((size_t) k < len)
        return fail(e, 200, -EPROTO, "internal", "incomplete envelope");
    buf_commit(&s->payload, len);

    if (!(flags & ENVELOPE_END_STREAM)) {
        r = decode_message(s->codec, s->desc, s->payload.data, s->payload.len, e, ret);
        return r < 0 ? r : 1;
    }

    r = parse_end_stream(s, e);
    if (r == -EPROTO)
        return r;
    /* The end-of-stream frame is the last thing in the body. */
    char extra;
    k = read_exact(c, &extra, 1);
    if (k > 0) {
        client_error_done(e);
        return fail(e, 200, -EPROTO, "internal", "extra data after EndStreamResponse");
    }
    /* A transport failure after the final status does not change what the server said. */
    return r;
}

/* Records a final result (0 or -errno) so repeated calls return it again. */
static int stream_end(struct client_stream *s, int r, struct client_error *e)
{
    struct client *c = s->c;

    r = error_finish(c, e, r);
    s->result = r;
    s->sending = false;
    if (r < 0 && e)
        error_copy(&s->final, e);
    else if (r < 0)
        error_set(&s->final, 0, code_from_errno(r), "%s", strerror(-r));
    if (c->phase != PHASE_DONE)
        client_disconnect(c);
    return r;
}

int client_stream_recv(struct client_stream *s, struct client_error *err,
                       ProtobufCMessage **ret_msg)
{
    ProtobufCMessage *msg = NULL;
    int r;

    client_error_done(err);
    if (!s || !ret_msg)
        return -EINVAL;
    if (s->result <= 0) {
        error_copy(err, &s->final);
        return s->result;
    }
    if (!s->c || s->sending || !s->have_head)
        return error_finish(s->c, err, -EINVAL);

    r = stream_read_frame(s, err, &msg);
    if (r <= 0)
        return stream_end(s, r, err);
    *ret_msg = msg;
    return 1;
}

/*
 * After a failed send the server may have answered early (an error, typically, before closing
 * the connection). Reports that answer when it can be read, otherwise the send error `r`.
 */
static int stream_early_answer(struct client_stream *s, int r, struct client_error *e)
{
    struct client_error tmp = {0};
    ProtobufCMessage *msg = NULL;
    int q;

    s->sending = false;
    /* Only a peer that hung up can have answered; after a timeout reading would wait again. */
    if (r != -EPIPE && r != -ECONNRESET)
        return stream_end(s, r, e);
    q = stream_read_head(s, &tmp);
    while (q >= 0) {
        q = stream_read_frame(s, &tmp, &msg);
        if (msg)
            protobuf_c_message_free_unpacked(msg, NULL);
        msg = NULL;
        if (q == 0)
            break;
    }
    if (q == -EREMOTEIO) {
        error_copy(e, &tmp);
        r = q;
    }
    client_error_done(&tmp);
    return stream_end(s, r, e);
}

int client_stream_send(struct client_stream *s, const ProtobufCMessage *msg,
                       struct client_error *err)
{
    _cleanup_(buf_free) struct buf env;
    int r;

    client_error_done(err);
    buf_init(&env, ENVELOPE_HEADER + CLIENT_MAX_MESSAGE_BYTES);
    if (!s || !msg)
        return -EINVAL;
    if (s->result <= 0) {
        error_copy(err, &s->final);
        return s->result < 0 ? s->result : -EINVAL;
    }
    if (!s->c || !s->sending)
        return error_finish(s->c, err, -EINVAL);

    r = encode_envelope(s->codec, msg, &env);
    if (r == -E2BIG)
        return fail(err, 0, r, "resource_exhausted", "request message too large");
    if (r < 0)
        return error_finish(s->c, err, r);
    r = client_request_write(s->c, env.data, env.len);
    if (r < 0)
        return stream_early_answer(s, r, err);
    return 0;
}

int client_stream_close_send(struct client_stream *s, struct client_error *err)
{
    int r;

    client_error_done(err);
    if (!s)
        return -EINVAL;
    if (s->result <= 0) {
        error_copy(err, &s->final);
        return s->result < 0 ? s->result : -EINVAL;
    }
    if (!s->c || !s->sending)
        return error_finish(s->c, err, -EINVAL);

    r = client_request_finish(s->c);
    if (r < 0)
        return stream_early_answer(s, r, err);
    s->sending = false;
    r = stream_read_head(s, err);
    if (r < 0)
        return stream_end(s, r, err);
    return 0;
}

int client_stream_close_and_recv(struct client_stream *s, struct client_error *err,
                                 ProtobufCMessage **ret_msg)
{
    ProtobufCMessage *msg = NULL, *extra = NULL;
    int r;

    if (!s || !ret_msg)
        return -EINVAL;
    r = client_stream_close_send(s, err);
    if (r < 0)
        return r;
    r = client_stream_recv(s, err, &msg);
    if (r < 0)
        return r;
    if (r == 0)
        return fail(err, 200, -EPROTO, "internal", "missing response message");
    r = client_stream_recv(s, err, &extra);
    if (r != 0) {
        protobuf_c_message_free_unpacked(msg, NULL);
        if (r < 0)
            return r;
        protobuf_c_message_free_unpacked(extra, NULL);
        /* Ends the stream (and drops the connection, whose body is not read to its end). */
        return stream_end(s, fail(err, 200, -EPROTO, "internal", "more than one response message"),
                          err);
    }
    *ret_msg = msg;
    return 0;
}

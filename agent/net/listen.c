/* SPDX-License-Identifier: Apache-2.0 */
#include <arpa/inet.h>
#include <errno.h>
#include <linux/vm_sockets.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <uv.h>

#include "base/cleanup.h"
#include "base/macro.h"
#include "base/parse.h"
#include "net/net.h"

/* Pending connections the kernel queues per listener before guestd accepts them. */
#define NET_BACKLOG 1024

struct net_listener {
    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } h;
    struct net_addr addr;
    net_connection_cb cb;
    void *userdata;
    bool unlink_on_close;
};

int net_addr_parse(const char *s, struct net_addr *ret)
{
    struct net_addr a;
    memset(&a, 0, sizeof(a));
    if (strlen(s) >= NET_ADDR_MAX)
        return -EINVAL;
    if (strncmp(s, "tcp:", 4) == 0) {
        const char *hp = s + 4;
        const char *colon;
        size_t hlen;
        a.transport = TRANSPORT_TCP;
        if (hp[0] == '[') {
            const char *close = strchr(hp, ']');
            if (!close || close[1] != ':')
                return -EINVAL;
            hlen = (size_t) (close - hp - 1);
            if (hlen == 0 || hlen >= sizeof(a.host))
                return -EINVAL;
            memcpy(a.host, hp + 1, hlen);
            colon = close + 1;
        } else {
            colon = strrchr(hp, ':');
            if (!colon)
                return -EINVAL;
            hlen = (size_t) (colon - hp);
            if (hlen == 0 || hlen >= sizeof(a.host) || memchr(hp, ':', hlen))
                return -EINVAL;
            memcpy(a.host, hp, hlen);
        }
        if (streq(a.host, "localhost"))
            strcpy(a.host, "127.0.0.1");
        unsigned char tmp[16];
        if (inet_pton(AF_INET, a.host, tmp) != 1 && inet_pton(AF_INET6, a.host, tmp) != 1)
            return -EINVAL; /* numeric addresses only: no name resolution in guestd */
        uint32_t port;
        if (parse_u32(colon + 1, &port) < 0 || port > 65535)
            return -EINVAL;
        a.port = (uint16_t) port;
    } else if (strncmp(s, "unix:", 5) == 0) {
        a.transport = TRANSPORT_UNIX;
        size_t plen = strlen(s + 5);
        if (plen == 0 || plen >= sizeof(a.path))
            return -EINVAL;
        memcpy(a.path, s + 5, plen);
    } else if (strncmp(s, "vsock:", 6) == 0) {
        a.transport = TRANSPORT_VSOCK;
        if (parse_u32(s + 6, &a.vport) < 0)
            return -EINVAL;
    } else {
        return -EINVAL;
    }
    *ret = a;
    return 0;
}

void net_addr_format(const struct net_addr *a, char *out, size_t len)
{
    switch (a->transport) {
    case TRANSPORT_TCP:
        (void) snprintf(out, len, strchr(a->host, ':') ? "tcp:[%s]:%u" : "tcp:%s:%u", a->host,
                        a->port);
        break;
    case TRANSPORT_UNIX:
        (void) snprintf(out, len, "unix:%s", a->path);
        break;
    case TRANSPORT_VSOCK:
        (void) snprintf(out, len, "vsock:%u", a->vport);
        break;
    }
}

static void on_connection(uv_stream_t *server, int status)
{
    struct net_listener *l = container_of(server, struct net_listener, h.stream);
    if (status < 0)
        return; /* EMFILE and friends: libuv retries when fds free up */
    l->cb(l, server, l->addr.transport, l->userdata);
}

/* Creates the parent directory of a Unix socket path (one level, mode 0755). */
static int make_parent_dir(const char *path)
{
    char dir[sizeof(((struct net_addr *) 0)->path)];
    const char *slash = strrchr(path, '/');
    if (!slash || slash == path)
        return 0;
    size_t n = (size_t) (slash - path);
    memcpy(dir, path, n);
    dir[n] = '\0';
    for (char *p = dir + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(dir, 0755) < 0 && errno != EEXIST)
            return -errno;
        *p = '/';
    }
    if (mkdir(dir, 0755) < 0 && errno != EEXIST)
        return -errno;
    return 0;
}

static int listen_unix(uv_loop_t *loop, struct net_listener *l)
{
    int r = make_parent_dir(l->addr.path);
    if (r < 0)
        return r;
    /* A stale socket from an earlier run would make bind fail; a live one must not be stolen. */
    struct stat st;
    if (lstat(l->addr.path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode))
            return -EEXIST;
        _cleanup_close_ int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        memcpy(sa.sun_path, l->addr.path, strlen(l->addr.path));
        if (probe >= 0 && connect(probe, (struct sockaddr *) &sa, sizeof(sa)) == 0)
            return -EADDRINUSE;
        (void) unlink(l->addr.path);
    }
    r = uv_pipe_init(loop, &l->h.pipe, 0);
    if (r < 0)
        return r;
    /* Bind under a restrictive umask so that the socket is never briefly world-connectable. */
    mode_t old = umask(0177);
    r = uv_pipe_bind(&l->h.pipe, l->addr.path);
    umask(old);
    if (r < 0)
        return r;
    l->unlink_on_close = true;
    if (chmod(l->addr.path, 0600) < 0)
        return -errno;
    return uv_listen(&l->h.stream, NET_BACKLOG, on_connection);
}

static int listen_tcp(uv_loop_t *loop, struct net_listener *l)
{
    struct sockaddr_storage ss;
    int r;
    if (strchr(l->addr.host, ':'))
        r = uv_ip6_addr(l->addr.host, l->addr.port, (struct sockaddr_in6 *) &ss);
    else
        r = uv_ip4_addr(l->addr.host, l->addr.port, (struct sockaddr_in *) &ss);
    if (r < 0)
        return r;
    r = uv_tcp_init(loop, &l->h.tcp);
    if (r < 0)
        return r;
    r = uv_tcp_bind(&l->h.tcp, (struct sockaddr *) &ss, 0);
    if (r == 0)
        r = uv_listen(&l->h.stream, NET_BACKLOG, on_connection);
    if (r < 0)
        return r;
    int len = sizeof(ss);
    if (uv_tcp_getsockname(&l->h.tcp, (struct sockaddr *) &ss, &len) == 0)
        l->addr.port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *) &ss)->sin6_port
                                                      : ((struct sockaddr_in *) &ss)->sin_port);
    return 0;
}

static int listen_vsock(uv_loop_t *loop, struct net_listener *l)
{
    /* libuv has no AF_VSOCK support: make the socket here and hand it over as a pipe, whose
     * accept path is a plain accept4() on any stream socket. */
    _cleanup_close_ int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -errno;
    struct sockaddr_vm vm = {
            .svm_family = AF_VSOCK,
            .svm_cid = VMADDR_CID_ANY,
            .svm_port = l->addr.vport,
    };
    if (bind(fd, (struct sockaddr *) &vm, sizeof(vm)) < 0)
        return -errno;
    if (listen(fd, NET_BACKLOG) < 0)
        return -errno;
    int r = uv_pipe_init(loop, &l->h.pipe, 0);
    if (r < 0)
        return r;
    r = uv_pipe_open(&l->h.pipe, fd);
    if (r < 0)
        return r;
    TAKE_FD(fd);
    return uv_listen(&l->h.stream, NET_BACKLOG, on_connection);
}

static void on_listener_closed(uv_handle_t *h)
{
    free(container_of(h, struct net_listener, h.handle));
}

int net_listen(uv_loop_t *loop, const struct net_addr *addr, net_connection_cb cb, void *userdata,
               struct net_listener **ret)
{
    struct net_listener *l = calloc(1, sizeof(*l));
    if (!l)
        return -ENOMEM;
    l->addr = *addr;
    l->cb = cb;
    l->userdata = userdata;
    int r;
    switch (addr->transport) {
    case TRANSPORT_TCP:
        r = listen_tcp(loop, l);
        break;
    case TRANSPORT_UNIX:
        r = listen_unix(loop, l);
        break;
    case TRANSPORT_VSOCK:
        r = listen_vsock(loop, l);
        break;
    default:
        r = -EINVAL;
    }
    if (r < 0) {
        if (l->unlink_on_close)
            (void) unlink(l->addr.path);
        if (uv_is_active(&l->h.handle) || l->h.handle.loop)
            uv_close(&l->h.handle, on_listener_closed);
        else
            free(l);
        return r;
    }
    *ret = l;
    return 0;
}

const struct net_addr *net_listener_addr(const struct net_listener *l)
{
    return &l->addr;
}

void net_listener_close(struct net_listener *l)
{
    if (!l)
        return;
    if (l->unlink_on_close)
        (void) unlink(l->addr.path);
    uv_close(&l->h.handle, on_listener_closed);
}

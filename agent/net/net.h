/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Listening sockets: TCP, Unix (mode 0600, parent directory created) and AF_VSOCK (created,
 * bound and listened by guestd itself, then wrapped for libuv as a pipe). A listener reports
 * each pending connection through a callback; the owner accepts it (http_server_accept()).
 */
#pragma once

#include <stdint.h>

#include "base/transport.h"

typedef struct uv_loop_s uv_loop_t;
typedef struct uv_stream_s uv_stream_t;

/* Longest textual listen address accepted. */
#define NET_ADDR_MAX 256

struct net_addr {
    enum transport transport;
    char host[64];  /* TCP: numeric IPv4/IPv6 address */
    uint16_t port;  /* TCP */
    uint32_t vport; /* vsock port */
    char path[108]; /* Unix socket path */
};

/* Parses "tcp:HOST:PORT", "tcp:[V6]:PORT", "unix:PATH" or "vsock:PORT". -EINVAL on bad input. */
int net_addr_parse(const char *s, struct net_addr *ret);
/* Formats an address back to its textual form. */
void net_addr_format(const struct net_addr *a, char *out, size_t len);

struct net_listener;
typedef void (*net_connection_cb)(struct net_listener *l, uv_stream_t *server,
                                  enum transport transport, void *userdata);

/* Binds and listens. Returns 0 or -errno (e.g. -EADDRINUSE, -EAFNOSUPPORT for vsock). */
int net_listen(uv_loop_t *loop, const struct net_addr *addr, net_connection_cb cb, void *userdata,
               struct net_listener **ret);
/* The address a listener is bound to (for TCP port 0: the port chosen). */
const struct net_addr *net_listener_addr(const struct net_listener *l);
/* Closes the listener (asynchronously) and removes a Unix socket file it created. */
void net_listener_close(struct net_listener *l);

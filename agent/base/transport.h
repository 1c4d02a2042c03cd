/* SPDX-License-Identifier: Apache-2.0 */
/* Transport kinds and what is known about a connected peer. Shared by net/, http/ and rpc/. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

enum transport {
    TRANSPORT_TCP = 0,
    TRANSPORT_UNIX,
    TRANSPORT_VSOCK,
};

/* The host's CID as seen from a guest (VMADDR_CID_HOST). */
#define TRANSPORT_VSOCK_HOST_CID 2

struct peer_info {
    enum transport transport;
    /* Unix sockets: SO_PEERCRED of the connecting process. */
    bool has_cred;
    uid_t uid;
    gid_t gid;
    pid_t pid;
    /* vsock: the peer's CID and port. */
    uint32_t cid;
    uint32_t port;
    /* Printable peer address for logs ("127.0.0.1:5555", "unix", "vsock:2:1234"). */
    char addr[64];
};

const char *transport_name(enum transport t);

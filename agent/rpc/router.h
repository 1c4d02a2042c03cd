/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The request entry point: common headers, CORS (answered before the auth gate, as envd),
 * the access-token gate, run-as user resolution, and dispatch to REST endpoints and Connect
 * methods. Services register their method tables; unknown Connect procedures get 404.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/transport.h"
#include "base/users.h"
#include "rpc/connect.h"

struct agent_state;
struct http_req;
struct router;

/* What a handler knows about the request beyond HTTP. Freed with the call. */
struct rpc_ctx {
    struct agent_state *state;
    struct router *router;
    struct user_info user; /* the run-as user (Basic auth or the default user) */
    bool user_resolved;
    bool trusted; /* a peer trusted by construction (uid 0 on the Unix socket, host vsock) */
    const struct peer_info *peer;
    uint64_t idle_before_ms; /* time since the previous client request */
};

int router_new(struct agent_state *st, struct router **ret);
void router_free(struct router *r);
/* Registers methods; the table must outlive the router. */
void router_add_methods(struct router *r, const struct rpc_method *methods, size_t n);
/* The http_request_cb for http_server_new(); userdata is the router. */
void router_handle(struct http_req *req, void *userdata);
/* True if the peer is trusted by construction under the current configuration. */
bool router_peer_trusted(const struct agent_state *st, const struct peer_info *peer);
/* Writes envd's REST error body {"code":<status>,"message":"…"} with its headers. */
void router_rest_error(struct http_req *req, int status, const char *message);

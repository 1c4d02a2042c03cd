/* SPDX-License-Identifier: Apache-2.0 */
/* envd's REST endpoints (/health, /init, /envs) and the guestd.v1.System service. */
#pragma once

#include <stddef.h>

#include "rpc/connect.h"

struct http_req;
struct rpc_ctx;

void system_health(struct http_req *req);
void system_init(struct http_req *req, struct rpc_ctx *ctx);
void system_envs(struct http_req *req, struct rpc_ctx *ctx);
/* envd's GET /metrics (JSON), or Prometheus text with ?format=prometheus. */
void system_metrics(struct http_req *req, struct rpc_ctx *ctx);
/* guestd.v1.System methods. */
extern const struct rpc_method system_methods[];
extern const size_t system_methods_count;
/* Ends every System/Events stream with a shutting_down event (graceful shutdown). */
void system_announce_shutdown(const char *reason);

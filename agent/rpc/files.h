/* SPDX-License-Identifier: Apache-2.0 */
/*
 * envd's /files endpoints: GET (and HEAD) downloads a file, POST uploads one or more.
 *
 * The router's token gate lets GET and POST /files through: these requests authenticate
 * themselves (envd's validateSigning), either with a matching X-Access-Token or with a signed
 * URL. The `username` query parameter picks the user (the default user without it; Basic auth
 * plays no part). All file work runs on libuv's threadpool under that user's fs ids
 * (fs/creds.h), in steps of XFER_CHUNK bytes with backpressure both ways, so neither a slow
 * client nor a slow disk makes guestd buffer a file.
 *
 * guestd's directory transfer, behind parameters envd clients never send: GET with
 * `archive=tar` streams the directory at `path` as a POSIX tar; POST with Content-Type
 * application/x-tar unpacks the body under the directory `path` (created if missing), refusing
 * absolute names, "..", hard links, devices and any entry reached through a symlink.
 */
#pragma once

#include <stdbool.h>

struct agent_state;
struct http_req;

/*
 * Serves a request whose path is /files. `trusted`: the peer is trusted by construction and
 * needs no token (router_peer_trusted()). Answers every method; takes over the request.
 */
void files_handle(struct http_req *req, struct agent_state *st, bool trusted);

/*
 * Serves a request whose path is /files/compose (protocol-envd.md §4.7): POST with a JSON body
 * naming the sources, the destination and optionally the user (the default user without one).
 * The router's token gate has already run. Answers every method; takes over the request.
 */
void files_compose(struct http_req *req, struct agent_state *st);

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Every limit guestd enforces on its clients, in one place, each with its reason. Limits that
 * operators may change are defaults for config keys of the same meaning.
 */
#pragma once

/* --- HTTP ------------------------------------------------------------------------------------ */

/* Longest request target. Signed /files URLs with long paths stay far below this. */
#define LIMIT_URL_BYTES         (16 * 1024)
/* Sum of all header names and values of one request; browsers and SDKs send under 8 KiB. */
#define LIMIT_HEADER_BYTES      (64 * 1024)
/* Header lines per request; more is a flood, not a client. */
#define LIMIT_HEADER_COUNT      128
/* Open connections. The JS SDK opens up to 200 RPC and 10 REST connections per origin, and an
 * orchestrator, guestctl sessions and tunnels come on top; 4096 leaves room for all of them
 * while keeping guestd's memory bounded (an idle connection costs a few KiB). */
#define LIMIT_CONNECTIONS       4096
/* A request's headers must be complete within this time of its first byte (slowloris). */
#define LIMIT_HEADER_TIMEOUT_MS (10 * 1000)
/* Idle keep-alive connections close after this. envd uses 640 s so that it outlives every proxy
 * in front of it; guestd matches it. Streams in progress are never timed out. */
#define LIMIT_IDLE_TIMEOUT_MS   (640 * 1000)
/* Bytes read from a socket at once, and the most input buffered while a pipelined request waits
 * for the previous response. */
#define LIMIT_READ_CHUNK        (64 * 1024)
#define LIMIT_INPUT_BUFFER      (256 * 1024)
/* Stream producers pause above the high-water mark of queued output and resume below the low. */
#define LIMIT_WRITE_HIGH_WATER  (1024 * 1024)
#define LIMIT_WRITE_LOW_WATER   (256 * 1024)
/* A body the handler did not want (it answered early) is read and thrown away up to this size
 * to keep the connection; past it the connection is closed instead. */
#define LIMIT_DISCARD_BODY      (1024 * 1024)

/* On shutdown, connections whose last response is still being written get this long to drain
 * before they are closed regardless. */
#define LIMIT_SHUTDOWN_DRAIN_MS 2000

/* --- Connect RPC ----------------------------------------------------------------------------- */

/* Unary request bodies and single stream envelopes. The largest envd request is SendInput with
 * a chunk of stdin; 16 MiB is generous for that and bounds memory per request. */
#define LIMIT_RPC_MESSAGE_BYTES   (16 * 1024 * 1024)
/* Bodies of small JSON endpoints (/init, /files/compose). A CA bundle fits easily. */
#define LIMIT_SMALL_BODY_BYTES    (1024 * 1024)
/* Largest Connect-Timeout-Ms: the header allows at most 10 digits. */
#define LIMIT_TIMEOUT_DIGITS      10
/* Default stream keepalive interval (envd: 90 s) and the smallest accepted. */
#define LIMIT_KEEPALIVE_DEFAULT_S 90
#define LIMIT_KEEPALIVE_MIN_S     1

/* --- /init and the environment --------------------------------------------------------------- */

/* Environment variables set through /init; each name and value is also length-limited. */
#define LIMIT_ENV_VARS        4096
#define LIMIT_ENV_NAME_BYTES  1024
#define LIMIT_ENV_VALUE_BYTES (128 * 1024)
/* Access tokens: envd's are 64 hex characters; allow room for other schemes. */
#define LIMIT_TOKEN_BYTES     512
/* Usernames as accepted in Basic auth and query parameters (Linux allows 32; be lenient). */
#define LIMIT_USERNAME_BYTES  256

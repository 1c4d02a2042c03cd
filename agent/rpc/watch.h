/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Directory watches over the wire, on the engine in fs/watch.h:
 *   - filesystem.Filesystem/WatchDir (server stream): start, then filesystem events, keepalives;
 *     ends with `internal` when inotify overflows, `resource_exhausted` when its client falls
 *     too far behind;
 *   - filesystem.Filesystem/CreateWatcher, GetWatcherEvents, RemoveWatcher: polling watchers,
 *     owned by guestd (not by a connection), bounded in number and removed after ten minutes
 *     without a poll;
 *   - guestd.v1.Filesystem/Watch (server stream): like WatchDir, but every message carries an
 *     increasing sequence number, and lost events (inotify overflow, a slow client) are
 *     replaced by a rescan event with a fresh listing instead of ending the stream.
 * Validation, walks and entry info run as the requesting user on worker threads.
 */
#pragma once

#include <stddef.h>

#include "rpc/connect.h"

/* Removes every polling watcher (graceful shutdown, after the connections are closed). */
void watch_service_shutdown(void);

extern const struct rpc_method watch_methods[];
extern const size_t watch_methods_count;

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * envd's filesystem.Filesystem service, unary part: Stat, MakeDir, Move, ListDir, Remove.
 * Each operation runs on libuv's threadpool with the requesting user's file-system
 * credentials (fs/creds.h) and is answered on the loop thread.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "filesystem/filesystem.pb-c.h"
#include "fs/fsop.h"
#include "rpc/connect.h"

/* A protobuf view of one entry (EntryInfo); its strings point into the fsop_entry, which must
 * outlive it. Shared by the filesystem RPCs and the watchers. */
struct fs_pb_entry {
    Filesystem__EntryInfo info;
    Google__Protobuf__Timestamp mtime;
    Filesystem__EntryInfo__MetadataEntry *meta;
    Filesystem__EntryInfo__MetadataEntry **meta_ptrs;
};

/*
 * envd's ExpandAndResolve for the run-as user of `call`: "" → the default workdir if set, else
 * home (or invalid_argument "path is required" unless allow_empty); "~" and "~/x" → home;
 * relative → under home; cleaned. Answers the call with invalid_argument on failure.
 */
int fs_resolve_path(struct rpc_call *call, const char *p, bool allow_empty, char **ret);

void fs_pb_entry_fill(struct fs_pb_entry *p, const struct fsop_entry *e);
/* Frees what fs_pb_entry_fill allocated (not the entry's strings). */
void fs_pb_entry_done(struct fs_pb_entry *p);

extern const struct rpc_method fs_methods[];
extern const size_t fs_methods_count;

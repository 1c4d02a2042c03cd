/* SPDX-License-Identifier: Apache-2.0 */
/*
 * envd's filesystem.Filesystem service, unary part: Stat, MakeDir, Move, ListDir, Remove.
 * Each operation runs on libuv's threadpool with the requesting user's file-system
 * credentials (fs/creds.h) and is answered on the loop thread.
 */
#pragma once

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

void fs_pb_entry_fill(struct fs_pb_entry *p, const struct fsop_entry *e);
/* Frees what fs_pb_entry_fill allocated (not the entry's strings). */
void fs_pb_entry_done(struct fs_pb_entry *p);

extern const struct rpc_method fs_methods[];
extern const size_t fs_methods_count;

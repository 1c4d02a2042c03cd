/* SPDX-License-Identifier: Apache-2.0 */
/*
 * envd's filesystem.Filesystem service, unary part: Stat, MakeDir, Move, ListDir, Remove.
 * Each operation runs on libuv's threadpool with the requesting user's file-system
 * credentials (fs/creds.h) and is answered on the loop thread.
 */
#pragma once

#include <stddef.h>

#include "rpc/connect.h"

extern const struct rpc_method fs_methods[];
extern const size_t fs_methods_count;

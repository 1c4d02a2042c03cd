/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Users and groups from the passwd and group files under a root directory, parsed with
 * fgetpwent_r/fgetgrent_r. Never NSS: a static binary would otherwise dlopen the guest's NSS
 * modules (and with them a second libc).
 */
#pragma once

#include <stddef.h>
#include <sys/types.h>

/* Supplementary groups collected for one user; the kernel's NGROUPS_MAX is 65536, but a user in
 * more than this many groups is a misconfiguration we refuse rather than truncate silently. */
#define USERS_MAX_GROUPS 256

struct user_info {
    uid_t uid;
    gid_t gid;
    char *name;
    char *home;
    char *shell;
};

/* Sets the root ("/" by default) whose etc/passwd and etc/group are read. For tests. */
void users_set_root(const char *root);
/* Looks a user up by name. -ENOENT if absent, other -errno on read errors. */
int users_by_name(const char *name, struct user_info *ret);
int users_by_uid(uid_t uid, struct user_info *ret);
void user_info_done(struct user_info *u);
/*
 * Fills `gids` with the user's primary group followed by every group listing the user as a
 * member (deduplicated). Returns the count or -errno (-E2BIG past `max`).
 */
int users_groups(const char *name, gid_t primary, gid_t *gids, size_t max);
/* Group name for a gid into `out` (the decimal id if unknown). */
void users_group_name(gid_t gid, char *out, size_t len);
/* User name for a uid into `out` (the decimal id if unknown). */
void users_user_name(uid_t uid, char *out, size_t len);

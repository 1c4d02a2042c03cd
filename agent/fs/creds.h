/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Per-thread file-system credentials for file operations done on behalf of a user.
 *
 * Linux keeps credentials per thread, but glibc's setgroups/setresuid broadcast a change to
 * every thread of the process. So this module only makes raw system calls (setgroups,
 * setfsgid, setfsuid), which change the calling thread alone: a libuv worker thread can act
 * as a user while the loop thread and the other workers stay root. Only the fs ids change
 * (file access checks and the owner of new files); the real, effective and saved ids stay
 * root, which is what lets the thread switch back.
 *
 * Usage: creds_enter() → the file operation → creds_leave(), on the same thread, always,
 * whether the operation failed or not.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "base/users.h"

/* Root's own supplementary groups that can be saved and restored (guestd normally has none;
 * more than this is refused rather than restored incompletely). */
#define CREDS_MAX_SAVED_GROUPS USERS_MAX_GROUPS

struct creds_saved {
    bool switched; /* false: guestd is not root and nothing was changed */
    uid_t fsuid;
    gid_t fsgid;
    int n_groups;
    gid_t groups[CREDS_MAX_SAVED_GROUPS];
};

/*
 * Switches the calling thread to `uid`, `gid` and the supplementary `groups` for file access,
 * saving the previous state in `saved`. When guestd does not run as root it cannot act as
 * anybody else and runs the operation as itself (saved->switched = false), as envd does.
 * On failure nothing is left changed and -errno is returned.
 */
int creds_enter(uid_t uid, gid_t gid, const gid_t *groups, size_t n_groups,
                struct creds_saved *saved);

/*
 * Restores what creds_enter() saved. A thread that cannot get its credentials back would
 * serve the next job with a user's rights, so a failure here aborts guestd.
 */
void creds_leave(const struct creds_saved *saved);

/* SPDX-License-Identifier: Apache-2.0 */
#include "fs/creds.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "base/log.h"

/*
 * Raw calls: these change the calling thread only. glibc's setgroups() would run the change on
 * every thread of the process (its setxid broadcast), turning the loop thread into the user.
 * An id of -1 is invalid for the kernel, so setfs[ug]id(-1) changes nothing and returns the
 * current value: that is how the current fs ids are read and how a change is verified.
 */
static long raw_setgroups(size_t n, const gid_t *groups)
{
    return syscall(SYS_setgroups, n, groups);
}

static long raw_getgroups(int n, gid_t *groups)
{
    return syscall(SYS_getgroups, n, groups);
}

static uid_t raw_setfsuid(uid_t uid)
{
    return (uid_t) syscall(SYS_setfsuid, uid);
}

static gid_t raw_setfsgid(gid_t gid)
{
    return (gid_t) syscall(SYS_setfsgid, gid);
}

/*
 * Ordering. Entering: groups, then fsgid, then fsuid. All three need CAP_SETGID/CAP_SETUID,
 * which stay effective because the effective uid stays 0; setting a non-zero fsuid drops the
 * file-system capabilities (DAC override, chown, …) from this thread, so it comes last: the
 * operation then runs with exactly the user's file access. Leaving: the reverse, fsuid first
 * (which also brings the file-system capabilities back), then fsgid, then the groups.
 */
int creds_enter(uid_t uid, gid_t gid, const gid_t *groups, size_t n_groups,
                struct creds_saved *saved)
{
    saved->switched = false;
    if (geteuid() != 0)
        return 0;

    long n = raw_getgroups(CREDS_MAX_SAVED_GROUPS, saved->groups);
    if (n < 0)
        return -errno;
    saved->n_groups = (int) n;
    saved->fsuid = raw_setfsuid((uid_t) -1);
    saved->fsgid = raw_setfsgid((gid_t) -1);

    if (raw_setgroups(n_groups, groups) < 0)
        return -errno;
    (void) raw_setfsgid(gid);
    if (raw_setfsgid((gid_t) -1) != gid) {
        (void) raw_setgroups((size_t) saved->n_groups, saved->groups);
        return -EPERM;
    }
    (void) raw_setfsuid(uid);
    if (raw_setfsuid((uid_t) -1) != uid) {
        (void) raw_setfsgid(saved->fsgid);
        (void) raw_setgroups((size_t) saved->n_groups, saved->groups);
        return -EPERM;
    }
    saved->switched = true;
    return 0;
}

void creds_leave(const struct creds_saved *saved)
{
    if (!saved->switched)
        return;
    (void) raw_setfsuid(saved->fsuid);
    (void) raw_setfsgid(saved->fsgid);
    if (raw_setfsuid((uid_t) -1) != saved->fsuid || raw_setfsgid((gid_t) -1) != saved->fsgid ||
        raw_setgroups((size_t) saved->n_groups, saved->groups) < 0) {
        log_error("cannot restore a worker thread's credentials; stopping");
        abort();
    }
}

/* SPDX-License-Identifier: Apache-2.0 */
#include "base/users.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/alloc.h"
#include "base/cleanup.h"
#include "base/macro.h"

/* Scratch space for one passwd or group line; a group with many members needs a lot. */
#define USERS_LINE_BUF (64 * 1024)

static char users_root[PATH_MAX] = "/";

void users_set_root(const char *root)
{
    (void) snprintf(users_root, sizeof(users_root), "%s", root);
}

static int open_db(const char *rel, FILE **ret)
{
    _cleanup_close_ int dirfd = open(users_root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dirfd < 0)
        return -errno;
    _cleanup_close_ int fd = openat(dirfd, rel, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return -errno;
    FILE *f = fdopen(fd, "re");
    if (!f)
        return -errno;
    TAKE_FD(fd);
    *ret = f;
    return 0;
}

static void fill_user(const struct passwd *pw, struct user_info *ret)
{
    ret->uid = pw->pw_uid;
    ret->gid = pw->pw_gid;
    ret->name = xstrdup(pw->pw_name);
    ret->home = xstrdup(pw->pw_dir && *pw->pw_dir ? pw->pw_dir : "/");
    ret->shell = xstrdup(pw->pw_shell && *pw->pw_shell ? pw->pw_shell : "/bin/sh");
}

/* Finds the first passwd entry for which match() is true. */
static int find_user(int (*match)(const struct passwd *, const void *), const void *arg,
                     struct user_info *ret)
{
    _cleanup_fclose_ FILE *f = NULL;
    _cleanup_free_ char *line = xmalloc(USERS_LINE_BUF);
    struct passwd pw, *res;
    int r = open_db("etc/passwd", &f);
    if (r < 0)
        return r;
    for (;;) {
        r = fgetpwent_r(f, &pw, line, USERS_LINE_BUF, &res);
        if (r == ENOENT)
            return -ENOENT;
        if (r == ERANGE || r == EINVAL)
            continue; /* an over-long or malformed line: skip it, as glibc's files backend does */
        if (r != 0)
            return -r;
        if (match(res, arg)) {
            fill_user(res, ret);
            return 0;
        }
    }
}

static int match_name(const struct passwd *pw, const void *arg)
{
    return streq(pw->pw_name, (const char *) arg);
}

static int match_uid(const struct passwd *pw, const void *arg)
{
    return pw->pw_uid == *(const uid_t *) arg;
}

int users_by_name(const char *name, struct user_info *ret)
{
    if (!*name || strchr(name, ':') || strchr(name, '\n'))
        return -ENOENT;
    return find_user(match_name, name, ret);
}

int users_by_uid(uid_t uid, struct user_info *ret)
{
    return find_user(match_uid, &uid, ret);
}

void user_info_done(struct user_info *u)
{
    free(u->name);
    free(u->home);
    free(u->shell);
    u->name = u->home = u->shell = NULL;
}

static int add_gid(gid_t *gids, size_t *n, size_t max, gid_t g)
{
    for (size_t i = 0; i < *n; i++)
        if (gids[i] == g)
            return 0;
    if (*n >= max)
        return -E2BIG;
    gids[(*n)++] = g;
    return 0;
}

int users_groups(const char *name, gid_t primary, gid_t *gids, size_t max)
{
    size_t n = 0;
    int r = add_gid(gids, &n, max, primary);
    if (r < 0)
        return r;
    _cleanup_fclose_ FILE *f = NULL;
    r = open_db("etc/group", &f);
    if (r == -ENOENT)
        return (int) n;
    if (r < 0)
        return r;
    _cleanup_free_ char *line = xmalloc(USERS_LINE_BUF);
    struct group gr, *res;
    for (;;) {
        r = fgetgrent_r(f, &gr, line, USERS_LINE_BUF, &res);
        if (r == ENOENT)
            break;
        if (r == ERANGE || r == EINVAL)
            continue;
        if (r != 0)
            return -r;
        for (char **m = res->gr_mem; m && *m; m++)
            if (streq(*m, name)) {
                r = add_gid(gids, &n, max, res->gr_gid);
                if (r < 0)
                    return r;
                break;
            }
    }
    return (int) n;
}

void users_group_name(gid_t gid, char *out, size_t len)
{
    _cleanup_fclose_ FILE *f = NULL;
    if (open_db("etc/group", &f) == 0) {
        _cleanup_free_ char *line = xmalloc(USERS_LINE_BUF);
        struct group gr, *res;
        int r;
        while ((r = fgetgrent_r(f, &gr, line, USERS_LINE_BUF, &res)) != ENOENT) {
            if (r != 0)
                continue;
            if (res->gr_gid == gid) {
                (void) snprintf(out, len, "%s", res->gr_name);
                return;
            }
        }
    }
    (void) snprintf(out, len, "%u", (unsigned) gid);
}

void users_user_name(uid_t uid, char *out, size_t len)
{
    struct user_info u;
    if (users_by_uid(uid, &u) == 0) {
        (void) snprintf(out, len, "%s", u.name);
        user_info_done(&u);
        return;
    }
    (void) snprintf(out, len, "%u", (unsigned) uid);
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fs/fsop and fs/creds. Each test runs in its own forked child (harness), so tests may switch
 * their own credentials and umask. Tests that act as the user `user` (uid 1001) need root and
 * that user; they skip otherwise.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <uv.h>

#include "base/cleanup.h"
#include "base/macro.h"
#include "base/users.h"
#include "fs/creds.h"
#include "fs/fsop.h"
#include "harness.h"

/* The unprivileged account the tests act as (present on the CI machine and in the rootfs). */
#define TEST_USER   "user"
#define TEST_UID    1001
#define TEST_GID    1001
/* Bytes of /proc/thread-self/status kept per line compared. */
#define STATUS_LINE 512

static void need_user(void)
{
    struct user_info u;
    if (geteuid() != 0)
        TEST_SKIP("needs root");
    if (users_by_name(TEST_USER, &u) < 0)
        TEST_SKIP("needs the user '" TEST_USER "'");
    if (u.uid != TEST_UID || u.gid != TEST_GID) {
        user_info_done(&u);
        TEST_SKIP("'" TEST_USER "' is not uid/gid 1001");
    }
    user_info_done(&u);
}

/* A fresh directory under /tmp, symlink-free (its realpath), mode 0755 so the user can enter. */
static char *tmpdir(void)
{
    char tmpl[] = "/tmp/test-fs-XXXXXX";
    ASSERT_NOT_NULL(mkdtemp(tmpl));
    ASSERT_OK(chmod(tmpl, 0755));
    char *real = realpath(tmpl, NULL);
    ASSERT_NOT_NULL(real);
    return real;
}

static void rmrf(const char *dir)
{
    char cmd[PATH_MAX + 32];
    (void) snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    (void) !system(cmd);
}

static char *pjoin(const char *a, const char *b)
{
    char *p = NULL;
    ASSERT_TRUE(asprintf(&p, "%s/%s", a, b) > 0);
    return p;
}

static void write_file(const char *path, const char *text, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    ASSERT_TRUE(fd >= 0);
    ASSERT_EQ(write(fd, text, strlen(text)), (ssize_t) strlen(text));
    ASSERT_OK(fchmod(fd, mode));
    close(fd);
}

static bool exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

/* --- Go's FileMode string --------------------------------------------------------------------- */

TEST(mode_string_examples)
{
    static const struct {
        mode_t mode;
        const char *want;
    } cases[] = {
            {S_IFREG | 0644, "-rw-r--r--"},
            {S_IFREG | 0000, "----------"},
            {S_IFREG | 0777, "-rwxrwxrwx"},
            {S_IFREG | 0421, "-r---w---x"},
            {S_IFDIR | 0755, "drwxr-xr-x"},
            {S_IFLNK | 0777, "Lrwxrwxrwx"},
            {S_IFREG | S_ISUID | 0755, "urwxr-xr-x"},
            {S_IFREG | S_ISGID | 0755, "grwxr-xr-x"},
            {S_IFREG | S_ISVTX | 0644, "trw-r--r--"},
            {S_IFREG | S_ISUID | S_ISGID | S_ISVTX | 0777, "ugtrwxrwxrwx"},
            {S_IFDIR | S_ISVTX | 0777, "dtrwxrwxrwx"},
            {S_IFDIR | S_ISGID | 0775, "dgrwxrwxr-x"},
            {S_IFDIR | S_ISUID | S_ISGID | S_ISVTX | 0700, "dugtrwx------"},
            {S_IFCHR | 0666, "Dcrw-rw-rw-"},
            {S_IFCHR | S_ISUID | 0666, "Ducrw-rw-rw-"},
            {S_IFCHR | S_ISVTX | 0620, "Dctrw--w----"},
            {S_IFBLK | 0660, "Drw-rw----"},
            {S_IFBLK | S_ISGID | 0660, "Dgrw-rw----"},
            {S_IFIFO | 0644, "prw-r--r--"},
            {S_IFIFO | S_ISUID | 0600, "purw-------"},
            {S_IFSOCK | 0755, "Srwxr-xr-x"},
            {S_IFSOCK | S_ISGID | S_ISVTX | 0777, "Sgtrwxrwxrwx"},
            {S_IFLNK | S_ISUID | 0777, "Lurwxrwxrwx"},
    };
    char out[FSOP_MODE_STRING_MAX];
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        fsop_mode_string(cases[i].mode, out);
        ASSERT_STR_EQ(out, cases[i].want);
    }
}

/* Every file type with every combination of the three special bits: type letters in Go's
 * order "dalTLDpSugct?", never ls-style s/t in the permission slots. */
TEST(mode_string_every_combination)
{
    static const struct {
        mode_t type;
        const char *before; /* letters that come before "u" in Go's order */
        const char *after;  /* letters between "g" and "t" */
    } types[] = {
            {S_IFREG, "", ""},   {S_IFDIR, "d", ""}, {S_IFLNK, "L", ""},  {S_IFBLK, "D", ""},
            {S_IFCHR, "D", "c"}, {S_IFIFO, "p", ""}, {S_IFSOCK, "S", ""},
    };
    char out[FSOP_MODE_STRING_MAX], want[FSOP_MODE_STRING_MAX];
    for (size_t t = 0; t < ARRAY_SIZE(types); t++)
        for (unsigned special = 0; special < 8; special++) {
            mode_t m = types[t].type | 0751;
            if (special & 4)
                m |= S_ISUID;
            if (special & 2)
                m |= S_ISGID;
            if (special & 1)
                m |= S_ISVTX;
            (void) snprintf(want, sizeof(want), "%s%s%s%s%s", types[t].before,
                            (special & 4) ? "u" : "", (special & 2) ? "g" : "", types[t].after,
                            (special & 1) ? "t" : "");
            if (!want[0])
                strcpy(want, "-");
            strcat(want, "rwxr-x--x");
            fsop_mode_string(m, out);
            ASSERT_STR_EQ(out, want);
        }
}

/* --- entry info ------------------------------------------------------------------------------- */

TEST(entry_info_file)
{
    umask(022);
    _cleanup_free_ char *dir = tmpdir();
    _cleanup_free_ char *path = pjoin(dir, "file1.txt");
    write_file(path, "Hello, world!", 0644);
    const struct timespec times[2] = {{.tv_sec = 1700000000, .tv_nsec = 123456789},
                                      {.tv_sec = 1700000000, .tv_nsec = 123456789}};
    ASSERT_OK(utimensat(AT_FDCWD, path, times, 0));
    bool xattrs = setxattr(path, "user.e2b.owner", "team-a", 6, 0) == 0;
    if (xattrs) {
        ASSERT_OK(setxattr(path, "user.other", "x", 1, 0));
        ASSERT_OK(setxattr(path, "user.e2b.bad", "\xff\xfe", 2, 0));
        ASSERT_OK(setxattr(path, "user.e2b.empty", "", 0, 0));
    }

    struct fsop_names names;
    fsop_names_init(&names);
    struct fsop_entry e;
    ASSERT_OK(fsop_entry_info(path, &names, &e, NULL));
    ASSERT_STR_EQ(e.name, "file1.txt");
    ASSERT_STR_EQ(e.path, path);
    ASSERT_EQ(e.type, FSOP_TYPE_FILE);
    ASSERT_EQ(e.size, 13);
    ASSERT_EQ(e.mode, 0644);
    ASSERT_EQ(e.mode, 420);
    ASSERT_STR_EQ(e.permissions, "-rw-r--r--");
    ASSERT_STR_EQ(e.owner, "root");
    ASSERT_STR_EQ(e.group, "root");
    ASSERT_TRUE(e.has_mtime);
    ASSERT_EQ(e.mtime_sec, 1700000000);
    ASSERT_EQ(e.mtime_nsec, 123456789);
    ASSERT_NULL(e.symlink_target);
    if (xattrs) {
        ASSERT_EQ(e.metadata.n, 2);
        ASSERT_STR_EQ(kv_get(&e.metadata, "owner"), "team-a");
        ASSERT_STR_EQ(kv_get(&e.metadata, "empty"), "");
        ASSERT_NULL(kv_get(&e.metadata, "bad"));
    } else {
        ASSERT_EQ(e.metadata.n, 0);
    }
    fsop_entry_done(&e);

    /* An epoch mtime is "zero" for envd and omitted. */
    const struct timespec zero[2] = {{0, 0}, {0, 0}};
    ASSERT_OK(utimensat(AT_FDCWD, path, zero, 0));
    ASSERT_OK(fsop_entry_info(path, NULL, &e, NULL));
    ASSERT_FALSE(e.has_mtime);
    fsop_entry_done(&e);

    /* Unknown owners fall back to the decimal ids. */
    ASSERT_OK(chown(path, 54321, 54322));
    ASSERT_OK(fsop_entry_info(path, &names, &e, NULL));
    ASSERT_STR_EQ(e.owner, "54321");
    ASSERT_STR_EQ(e.group, "54322");
    fsop_entry_done(&e);
    rmrf(dir);
}

TEST(entry_info_dir_and_root)
{
    umask(022);
    _cleanup_free_ char *dir = tmpdir();
    _cleanup_free_ char *sub = pjoin(dir, "sub dir");
    ASSERT_OK(mkdir(sub, 0755));
    struct fsop_entry e;
    ASSERT_OK(fsop_entry_info(sub, NULL, &e, NULL));
    ASSERT_STR_EQ(e.name, "sub dir");
    ASSERT_EQ(e.type, FSOP_TYPE_DIRECTORY);
    ASSERT_EQ(e.mode, 0755);
    ASSERT_STR_EQ(e.permissions, "drwxr-xr-x");
    ASSERT_NULL(e.symlink_target);
    fsop_entry_done(&e);

    ASSERT_OK(chmod(sub, 01777));
    ASSERT_OK(fsop_entry_info(sub, NULL, &e, NULL));
    ASSERT_STR_EQ(e.permissions, "dtrwxrwxrwx");
    ASSERT_EQ(e.mode, 0777);
    fsop_entry_done(&e);

    ASSERT_OK(fsop_entry_info("/", NULL, &e, NULL));
    ASSERT_STR_EQ(e.name, "/");
    ASSERT_STR_EQ(e.path, "/");
    ASSERT_EQ(e.type, FSOP_TYPE_DIRECTORY);
    fsop_entry_done(&e);
    rmrf(dir);
}

TEST(entry_info_symlinks)
{
    umask(022);
    _cleanup_free_ char *dir = tmpdir();
    _cleanup_free_ char *file = pjoin(dir, "target.txt");
    _cleanup_free_ char *sub = pjoin(dir, "subdir");
    _cleanup_free_ char *l_file = pjoin(dir, "link-file");
    _cleanup_free_ char *l_dir = pjoin(dir, "link-dir");
    _cleanup_free_ char *l_chain = pjoin(dir, "link-chain");
    _cleanup_free_ char *l_dangling = pjoin(dir, "dangling");
    write_file(file, "abc", 0600);
    ASSERT_OK(mkdir(sub, 0750));
    ASSERT_OK(symlink("target.txt", l_file));
    ASSERT_OK(symlink(sub, l_dir));
    ASSERT_OK(symlink("link-file", l_chain));
    ASSERT_OK(symlink("does-not-exist", l_dangling));

    struct fsop_entry e;
    ASSERT_OK(fsop_entry_info(l_file, NULL, &e, NULL));
    ASSERT_STR_EQ(e.name, "link-file");
    ASSERT_STR_EQ(e.path, l_file);                     /* the link, not its target */
    ASSERT_EQ(e.type, FSOP_TYPE_FILE);                 /* the target's type */
    ASSERT_EQ(e.mode, 0600);                           /* the target's permission bits */
    ASSERT_STR_EQ(e.permissions, "Lrwxrwxrwx");        /* the link's own mode */
    ASSERT_EQ(e.size, (int64_t) strlen("target.txt")); /* the link text */
    ASSERT_STR_EQ(e.symlink_target, file);             /* absolute and resolved */
    ASSERT_TRUE(S_ISLNK(e.lmode));
    fsop_entry_done(&e);

    ASSERT_OK(fsop_entry_info(l_dir, NULL, &e, NULL));
    ASSERT_EQ(e.type, FSOP_TYPE_DIRECTORY);
    ASSERT_EQ(e.mode, 0750);
    ASSERT_EQ(e.size, (int64_t) strlen(sub));
    ASSERT_STR_EQ(e.symlink_target, sub);
    fsop_entry_done(&e);

    /* A chain resolves all the way. */
    ASSERT_OK(fsop_entry_info(l_chain, NULL, &e, NULL));
    ASSERT_EQ(e.type, FSOP_TYPE_FILE);
    ASSERT_STR_EQ(e.symlink_target, file);
    fsop_entry_done(&e);

    /* Dangling: unspecified type, mode 0, the path itself as the target. */
    ASSERT_OK(fsop_entry_info(l_dangling, NULL, &e, NULL));
    ASSERT_EQ(e.type, FSOP_TYPE_UNSPECIFIED);
    ASSERT_EQ(e.mode, 0);
    ASSERT_STR_EQ(e.permissions, "Lrwxrwxrwx");
    ASSERT_EQ(e.size, (int64_t) strlen("does-not-exist"));
    ASSERT_STR_EQ(e.symlink_target, l_dangling);
    fsop_entry_done(&e);
    rmrf(dir);
}

TEST(entry_info_devices_and_missing)
{
    struct fsop_entry e;
    struct stat st;
    if (stat("/dev/null", &st) < 0 || !S_ISCHR(st.st_mode))
        TEST_SKIP("no /dev/null character device");
    ASSERT_OK(fsop_entry_info("/dev/null", NULL, &e, NULL));
    ASSERT_STR_EQ(e.name, "null");
    ASSERT_EQ(e.type, FSOP_TYPE_UNSPECIFIED);
    ASSERT_EQ(e.mode, st.st_mode & 0777);
    ASSERT_STR_EQ(e.permissions, "Dcrw-rw-rw-");
    ASSERT_NULL(e.symlink_target);
    fsop_entry_done(&e);

    struct fsop_err err = {0};
    ASSERT_ERR(fsop_entry_info("/nonexistent-guestd-test/x", NULL, &e, &err), ENOENT);
    ASSERT_STR_EQ(err.op, "lstat");
    ASSERT_STR_EQ(err.path, "/nonexistent-guestd-test/x");
    fsop_err_done(&err);
}

TEST(resolve_names_first_missing_component)
{
    _cleanup_free_ char *dir = tmpdir();
    _cleanup_free_ char *link = pjoin(dir, "l");
    _cleanup_free_ char *missing = pjoin(dir, "a/b/c");
    _cleanup_free_ char *first = pjoin(dir, "a");
    ASSERT_OK(symlink(".", link));
    char *real = NULL;
    struct fsop_err err = {0};
    _cleanup_free_ char *via = pjoin(dir, "l/l/l");
    ASSERT_OK(fsop_resolve(via, &real, &err));
    ASSERT_STR_EQ(real, dir);
    free(real);
    ASSERT_ERR(fsop_resolve(missing, &real, &err), ENOENT);
    ASSERT_STR_EQ(err.op, "lstat");
    ASSERT_STR_EQ(err.path, first);
    fsop_err_done(&err);

    _cleanup_free_ char *loop = pjoin(dir, "loop");
    ASSERT_OK(symlink("loop", loop));
    ASSERT_ERR(fsop_resolve(loop, &real, &err), ELOOP);
    fsop_err_done(&err);
    rmrf(dir);
}

/* --- listing ---------------------------------------------------------------------------------- */

/*
 *   B            (file; "B" < "a" bytewise)
 *   a/
 *     y/
 *       deep/
 *         bottom
 *     z
 *   b.txt
 *   link -> a    (a symlink to a directory: listed, never descended)
 *   sp ace
 */
static void make_tree(const char *root)
{
    char p[PATH_MAX];
#define P(rel) (snprintf(p, sizeof(p), "%s/%s", root, rel), p)
    write_file(P("B"), "B", 0644);
    ASSERT_OK(mkdir(P("a"), 0755));
    ASSERT_OK(mkdir(P("a/y"), 0755));
    ASSERT_OK(mkdir(P("a/y/deep"), 0755));
    write_file(P("a/y/deep/bottom"), "", 0644);
    write_file(P("a/z"), "zz", 0644);
    write_file(P("b.txt"), "hello", 0644);
    ASSERT_OK(symlink("a", P("link")));
    write_file(P("sp ace"), "", 0644);
#undef P
}

static void assert_listing(const struct fsop_list *l, const char *prefix, const char *const *want,
                           size_t n)
{
    char p[PATH_MAX];
    for (size_t i = 0; i < l->n && i < n; i++) {
        (void) snprintf(p, sizeof(p), "%s/%s", prefix, want[i]);
        ASSERT_STR_EQ(l->items[i].path, p);
        const char *slash = strrchr(want[i], '/');
        ASSERT_STR_EQ(l->items[i].name, slash ? slash + 1 : want[i]);
    }
    ASSERT_EQ(l->n, n);
}

TEST(list_order_and_depth)
{
    umask(022);
    _cleanup_free_ char *dir = tmpdir();
    make_tree(dir);
    struct fsop_names names;
    fsop_names_init(&names);
    struct fsop_list l;
    struct fsop_list_opts o = {.depth = 1, .max_entries = 1000};

    static const char *const d1[] = {"B", "a", "b.txt", "link", "sp ace"};
    ASSERT_OK(fsop_list(dir, dir, &o, &names, &l, NULL));
    assert_listing(&l, dir, d1, ARRAY_SIZE(d1));
    ASSERT_EQ(l.items[1].type, FSOP_TYPE_DIRECTORY);
    ASSERT_EQ(l.items[3].type, FSOP_TYPE_DIRECTORY); /* link → a */
    ASSERT_STR_EQ(l.items[3].permissions, "Lrwxrwxrwx");
    ASSERT_EQ(l.items[2].size, 5);
    ASSERT_TRUE(l.text_bytes > 0);
    fsop_list_done(&l);

    static const char *const d2[] = {"B", "a", "a/y", "a/z", "b.txt", "link", "sp ace"};
    o.depth = 2;
    ASSERT_OK(fsop_list(dir, dir, &o, &names, &l, NULL));
    assert_listing(&l, dir, d2, ARRAY_SIZE(d2));
    fsop_list_done(&l);

    static const char *const d9[] = {"B",   "a",     "a/y",  "a/y/deep", "a/y/deep/bottom",
                                     "a/z", "b.txt", "link", "sp ace"};
    o.depth = 9;
    ASSERT_OK(fsop_list(dir, dir, &o, &names, &l, NULL));
    assert_listing(&l, dir, d9, ARRAY_SIZE(d9));
    fsop_list_done(&l);

    /* Paths are rebuilt on the requested root, whatever the walk used. */
    o.depth = 2;
    ASSERT_OK(fsop_list("/requested/root", dir, &o, &names, &l, NULL));
    assert_listing(&l, "/requested/root", d2, ARRAY_SIZE(d2));
    fsop_list_done(&l);

    /* Too many entries. */
    o.depth = 9;
    o.max_entries = 8;
    ASSERT_ERR(fsop_list(dir, dir, &o, &names, &l, NULL), E2BIG);
    o.max_entries = 9;
    ASSERT_OK(fsop_list(dir, dir, &o, &names, &l, NULL));
    fsop_list_done(&l);
    o.max_entries = 3; /* a single directory larger than the room left */
    o.depth = 1;
    ASSERT_ERR(fsop_list(dir, dir, &o, &names, &l, NULL), E2BIG);

    /* Cancelled. */
    atomic_bool cancel = true;
    o.max_entries = 1000;
    o.cancel = &cancel;
    ASSERT_ERR(fsop_list(dir, dir, &o, &names, &l, NULL), ECANCELED);

    /* The root of the file system has no "//" in its paths. */
    o.cancel = NULL;
    o.depth = 1;
    o.max_entries = 100000;
    ASSERT_OK(fsop_list("/", "/", &o, &names, &l, NULL));
    ASSERT_TRUE(l.n > 0);
    for (size_t i = 0; i < l.n; i++) {
        ASSERT_TRUE(l.items[i].path[0] == '/' && l.items[i].path[1] != '/');
        ASSERT_STR_EQ(l.items[i].path + 1, l.items[i].name);
    }
    fsop_list_done(&l);

    /* An empty directory. */
    _cleanup_free_ char *empty = pjoin(dir, "a/y/deep/e");
    ASSERT_OK(mkdir(empty, 0755));
    ASSERT_OK(fsop_list(empty, empty, &o, &names, &l, NULL));
    ASSERT_EQ(l.n, 0);
    fsop_list_done(&l);
    rmrf(dir);
}

TEST(list_as_user_skips_unreadable_subdirs)
{
    need_user();
    umask(022);
    _cleanup_free_ char *dir = tmpdir();
    make_tree(dir);
    _cleanup_free_ char *priv = pjoin(dir, "a/priv");
    _cleanup_free_ char *secret = pjoin(dir, "a/priv/secret");
    _cleanup_free_ char *noexec = pjoin(dir, "a/rdonly");
    _cleanup_free_ char *noexec_f = pjoin(dir, "a/rdonly/f");
    ASSERT_OK(mkdir(priv, 0700));
    write_file(secret, "s", 0600);
    ASSERT_OK(mkdir(noexec, 0755));
    write_file(noexec_f, "f", 0644);
    ASSERT_OK(chmod(noexec, 0744)); /* readable, not searchable by others */

    gid_t groups[] = {TEST_GID};
    struct creds_saved saved;
    ASSERT_OK(creds_enter(TEST_UID, TEST_GID, groups, 1, &saved));
    struct fsop_list l;
    struct fsop_err err = {0};
    struct fsop_list_opts o = {.depth = 3, .max_entries = 1000};
    ASSERT_OK(fsop_list(dir, dir, &o, NULL, &l, &err));
    static const char *const want[] = {"B",        "a",   "a/priv", "a/rdonly", "a/y",
                                       "a/y/deep", "a/z", "b.txt",  "link",     "sp ace"};
    assert_listing(&l, dir, want, ARRAY_SIZE(want));
    fsop_list_done(&l);

    /* At the top, the same is an error. */
    ASSERT_ERR(fsop_list(priv, priv, &o, NULL, &l, &err), EACCES);
    ASSERT_STR_EQ(err.op, "open");
    ASSERT_STR_EQ(err.path, priv);
    ASSERT_ERR(fsop_list(noexec, noexec, &o, NULL, &l, &err), EACCES);
    ASSERT_STR_EQ(err.op, "lstat");
    ASSERT_STR_EQ(err.path, noexec_f);
    fsop_err_done(&err);
    creds_leave(&saved);
    rmrf(dir);
}

/* --- mkdir -p, move, rm -rf ------------------------------------------------------------------- */

TEST(mkdir_p_creates_parents_with_owner)
{
    need_user();
    umask(022);
    _cleanup_free_ char *dir = tmpdir();
    _cleanup_free_ char *deep = pjoin(dir, "x/y/z");
    struct stat st;
    ASSERT_OK(fsop_mkdir_p(deep, TEST_UID, TEST_GID, NULL));
    const char *const rel[] = {"x", "x/y", "x/y/z"};
    for (size_t i = 0; i < ARRAY_SIZE(rel); i++) {
        _cleanup_free_ char *p = pjoin(dir, rel[i]);
        ASSERT_OK(stat(p, &st));
        ASSERT_TRUE(S_ISDIR(st.st_mode));
        ASSERT_EQ(st.st_mode & 07777, 0755);
        ASSERT_EQ(st.st_uid, TEST_UID);
        ASSERT_EQ(st.st_gid, TEST_GID);
    }
    /* Existing directories are left alone (the tmp dir stays root's). */
    ASSERT_OK(stat(dir, &st));
    ASSERT_EQ(st.st_uid, 0);
    ASSERT_OK(fsop_mkdir_p(deep, TEST_UID, TEST_GID, NULL));

    /* A file in the way. */
    _cleanup_free_ char *file = pjoin(dir, "x/file");
    _cleanup_free_ char *under = pjoin(dir, "x/file/sub");
    write_file(file, "", 0644);
    struct fsop_err err = {0};
    ASSERT_ERR(fsop_mkdir_p(under, TEST_UID, TEST_GID, &err), ENOTDIR);
    ASSERT_STR_EQ(err.op, "stat");
    ASSERT_STR_EQ(err.path, file);
    fsop_err_done(&err);

    /* As the user, below a set-group-ID directory of another group: the new directories still
     * get the user's primary group. */
    _cleanup_free_ char *sg = pjoin(dir, "sg");
    _cleanup_free_ char *sg_new = pjoin(dir, "sg/n1/n2");
    ASSERT_OK(mkdir(sg, 0775));
    ASSERT_OK(chown(sg, TEST_UID, 0));
    ASSERT_OK(chmod(sg, 02775));
    gid_t groups[] = {TEST_GID};
    struct creds_saved saved;
    ASSERT_OK(creds_enter(TEST_UID, TEST_GID, groups, 1, &saved));
    ASSERT_OK(fsop_mkdir_p(sg_new, TEST_UID, TEST_GID, NULL));
    /* And where the user may not write. */
    _cleanup_free_ char *denied = pjoin(dir, "nope");
    ASSERT_ERR(fsop_mkdir_p(denied, TEST_UID, TEST_GID, &err), EACCES);
    ASSERT_STR_EQ(err.op, "mkdir");
    fsop_err_done(&err);
    creds_leave(&saved);
    ASSERT_OK(stat(sg_new, &st));
    ASSERT_EQ(st.st_uid, TEST_UID);
    ASSERT_EQ(st.st_gid, TEST_GID);
    ASSERT_FALSE(exists(denied));
    rmrf(dir);
}

TEST(move_files_and_dirs)
{
    umask(022);
    _cleanup_free_ char *dir = tmpdir();
    _cleanup_free_ char *src = pjoin(dir, "src.txt");
    _cleanup_free_ char *dst = pjoin(dir, "new/parent/dst.txt");
    _cleanup_free_ char *sdir = pjoin(dir, "sdir");
    _cleanup_free_ char *ddir = pjoin(dir, "ddir");
    write_file(src, "data", 0644);
    ASSERT_OK(fsop_move(src, dst, 0, 0, NULL));
    ASSERT_FALSE(exists(src));
    ASSERT_TRUE(exists(dst));

    struct fsop_err err = {0};
    ASSERT_ERR(fsop_move(src, dst, 0, 0, &err), ENOENT);
    ASSERT_STR_EQ(err.op, "rename");
    ASSERT_STR_EQ(err.path, src);
    ASSERT_STR_EQ(err.path2, dst);

    /* Like Go's os.Rename, never onto an existing directory, even an empty one. */
    ASSERT_OK(mkdir(sdir, 0755));
    ASSERT_OK(mkdir(ddir, 0755));
    ASSERT_ERR(fsop_move(sdir, ddir, 0, 0, &err), EEXIST);
    ASSERT_TRUE(exists(sdir));
    /* Renaming a directory onto itself is fine. */
    ASSERT_OK(fsop_move(sdir, sdir, 0, 0, NULL));
    /* A file over a file replaces it. */
    write_file(src, "again", 0644);
    ASSERT_OK(fsop_move(src, dst, 0, 0, NULL));
    struct stat st;
    ASSERT_OK(stat(dst, &st));
    ASSERT_EQ(st.st_size, 5);
    fsop_err_done(&err);
    rmrf(dir);
}

TEST(remove_never_follows_symlinks)
{
    umask(022);
    _cleanup_free_ char *dir = tmpdir();
    _cleanup_free_ char *outside = pjoin(dir, "outside");
    _cleanup_free_ char *keep = pjoin(dir, "outside/keep.txt");
    _cleanup_free_ char *tree = pjoin(dir, "tree");
    _cleanup_free_ char *f = pjoin(dir, "tree/sub/f");
    _cleanup_free_ char *sub = pjoin(dir, "tree/sub");
    _cleanup_free_ char *sub2 = pjoin(dir, "tree/sub/deeper");
    _cleanup_free_ char *l_dir = pjoin(dir, "tree/sub/to-outside");
    _cleanup_free_ char *l_file = pjoin(dir, "tree/to-keep");
    _cleanup_free_ char *top_link = pjoin(dir, "top-link");
    ASSERT_OK(mkdir(outside, 0755));
    write_file(keep, "keep", 0644);
    ASSERT_OK(mkdir(tree, 0755));
    ASSERT_OK(mkdir(sub, 0755));
    ASSERT_OK(mkdir(sub2, 0700));
    write_file(f, "f", 0644);
    ASSERT_OK(symlink(outside, l_dir));
    ASSERT_OK(symlink(keep, l_file));
    ASSERT_OK(symlink(outside, top_link));

    ASSERT_OK(fsop_remove(tree, NULL));
    ASSERT_FALSE(exists(tree));
    ASSERT_TRUE(exists(keep));

    /* A symlink given as the path itself: the link goes, its target stays. */
    ASSERT_OK(fsop_remove(top_link, NULL));
    ASSERT_FALSE(exists(top_link));
    ASSERT_TRUE(exists(keep));

    /* Missing is success; "/" is refused; a single file goes. */
    ASSERT_OK(fsop_remove(tree, NULL));
    _cleanup_free_ char *missing = pjoin(dir, "no/such/thing");
    ASSERT_OK(fsop_remove(missing, NULL));
    struct fsop_err err = {0};
    ASSERT_ERR(fsop_remove("/", &err), EINVAL);
    ASSERT_ERR(fsop_remove("//", &err), EINVAL);
    fsop_err_done(&err);
    ASSERT_OK(fsop_remove(keep, NULL));
    ASSERT_FALSE(exists(keep));
    rmrf(dir);
}

TEST(remove_as_user_reports_the_blocked_path)
{
    need_user();
    umask(022);
    _cleanup_free_ char *dir = tmpdir();
    _cleanup_free_ char *mine = pjoin(dir, "mine");
    _cleanup_free_ char *theirs = pjoin(dir, "mine/theirs");
    _cleanup_free_ char *locked = pjoin(dir, "mine/theirs/locked");
    _cleanup_free_ char *free1 = pjoin(dir, "mine/a-free");
    ASSERT_OK(mkdir(mine, 0755));
    ASSERT_OK(chown(mine, TEST_UID, TEST_GID));
    ASSERT_OK(mkdir(theirs, 0755)); /* root's: the user cannot empty it */
    write_file(locked, "x", 0644);
    write_file(free1, "x", 0644);
    ASSERT_OK(chown(free1, TEST_UID, TEST_GID));

    gid_t groups[] = {TEST_GID};
    struct creds_saved saved;
    struct fsop_err err = {0};
    ASSERT_OK(creds_enter(TEST_UID, TEST_GID, groups, 1, &saved));
    ASSERT_ERR(fsop_remove(mine, &err), EACCES);
    creds_leave(&saved);
    ASSERT_STR_EQ(err.op, "unlinkat");
    ASSERT_STR_EQ(err.path, locked);
    fsop_err_done(&err);
    /* It went on past the failure: what it could remove is gone. */
    ASSERT_FALSE(exists(free1));
    ASSERT_TRUE(exists(locked));
    rmrf(dir);
}

TEST(remove_depth_limit)
{
    _cleanup_free_ char *dir = tmpdir();
    char p[PATH_MAX];
    size_t n = (size_t) snprintf(p, sizeof(p), "%s/top", dir);
    ASSERT_OK(mkdir(p, 0755));
    for (int i = 0; i < FSOP_MAX_DEPTH + 2; i++) {
        ASSERT_TRUE(n + 3 < sizeof(p));
        memcpy(p + n, "/d", 3);
        n += 2;
        ASSERT_OK(mkdir(p, 0755));
    }
    _cleanup_free_ char *top = pjoin(dir, "top");
    struct fsop_err err = {0};
    ASSERT_ERR(fsop_remove(top, &err), ELOOP);
    ASSERT_STR_EQ(err.op, "open");
    fsop_err_done(&err);
    rmrf(dir);
}

/* --- credentials ------------------------------------------------------------------------------ */

/* The Uid:, Gid: and Groups: lines of a thread's status. */
struct thread_ids {
    char uid[STATUS_LINE];
    char gid[STATUS_LINE];
    char groups[STATUS_LINE];
};

static void read_ids(const char *status_path, struct thread_ids *ids)
{
    FILE *f = fopen(status_path, "re");
    char line[STATUS_LINE];
    ASSERT_NOT_NULL(f);
    memset(ids, 0, sizeof(*ids));
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, "Uid:", 4) == 0)
            strcpy(ids->uid, line);
        else if (strncmp(line, "Gid:", 4) == 0)
            strcpy(ids->gid, line);
        else if (strncmp(line, "Groups:", 7) == 0)
            strcpy(ids->groups, line);
    }
    fclose(f);
    ASSERT_TRUE(ids->uid[0] && ids->gid[0] && ids->groups[0]);
}

struct creds_job {
    uv_work_t work;
    char main_status[64];
    const char *private_file;
    const char *user_dir;
    struct thread_ids before, during, main_during, after;
    int open_errno;
    int create_result;
    uid_t created_uid;
    gid_t created_gid;
    int enter_result;
};

static void creds_work(uv_work_t *w)
{
    struct creds_job *j = container_of(w, struct creds_job, work);
    gid_t groups[USERS_MAX_GROUPS];
    int n = users_groups(TEST_USER, TEST_GID, groups, USERS_MAX_GROUPS);
    struct creds_saved saved;

    read_ids("/proc/thread-self/status", &j->before);
    j->enter_result = n < 0 ? n : creds_enter(TEST_UID, TEST_GID, groups, (size_t) n, &saved);
    if (j->enter_result < 0)
        return;
    read_ids("/proc/thread-self/status", &j->during);
    read_ids(j->main_status, &j->main_during);
    int fd = open(j->private_file, O_RDONLY | O_CLOEXEC);
    j->open_errno = fd < 0 ? errno : 0;
    if (fd >= 0)
        close(fd);
    char path[PATH_MAX];
    (void) snprintf(path, sizeof(path), "%s/created", j->user_dir);
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    j->create_result = fd < 0 ? -errno : 0;
    if (fd >= 0) {
        struct stat st;
        if (fstat(fd, &st) == 0) {
            j->created_uid = st.st_uid;
            j->created_gid = st.st_gid;
        }
        close(fd);
    }
    creds_leave(&saved);
    read_ids("/proc/thread-self/status", &j->after);
}

static void creds_done(uv_work_t *w, int status)
{
    (void) w;
    ASSERT_EQ(status, 0);
}

TEST(creds_switch_on_worker_thread_and_restore)
{
    need_user();
    umask(022);
    _cleanup_free_ char *dir = tmpdir();
    _cleanup_free_ char *priv = pjoin(dir, "root-only");
    _cleanup_free_ char *secret = pjoin(dir, "root-only/secret");
    _cleanup_free_ char *home = pjoin(dir, "home");
    ASSERT_OK(mkdir(priv, 0700));
    write_file(secret, "s", 0644); /* readable file, but its directory is closed */
    ASSERT_OK(mkdir(home, 0755));
    ASSERT_OK(chown(home, TEST_UID, TEST_GID));

    struct creds_job j = {.private_file = secret, .user_dir = home};
    (void) snprintf(j.main_status, sizeof(j.main_status), "/proc/self/task/%d/status",
                    (int) syscall(SYS_gettid));
    struct thread_ids main_before, main_after;
    read_ids(j.main_status, &main_before);

    uv_loop_t loop;
    ASSERT_OK(uv_loop_init(&loop));
    ASSERT_OK(uv_queue_work(&loop, &j.work, creds_work, creds_done));
    ASSERT_OK(uv_run(&loop, UV_RUN_DEFAULT));
    ASSERT_OK(uv_loop_close(&loop));

    ASSERT_OK(j.enter_result);
    /* While switched: fs ids (the 4th column) are the user's, the other ids stay root. */
    ASSERT_STR_EQ(j.during.uid, "Uid:\t0\t0\t0\t1001\n");
    ASSERT_STR_EQ(j.during.gid, "Gid:\t0\t0\t0\t1001\n");
    ASSERT_STR_EQ(j.during.groups, "Groups:\t1001 \n");
    ASSERT_EQ(j.open_errno, EACCES);
    ASSERT_OK(j.create_result);
    ASSERT_EQ(j.created_uid, TEST_UID);
    ASSERT_EQ(j.created_gid, TEST_GID);
    /* Only the worker changed: the main thread kept root's ids throughout. */
    ASSERT_STR_EQ(j.main_during.uid, main_before.uid);
    ASSERT_STR_EQ(j.main_during.gid, main_before.gid);
    ASSERT_STR_EQ(j.main_during.groups, main_before.groups);
    /* Afterwards the worker is exactly as before. */
    ASSERT_STR_EQ(j.after.uid, j.before.uid);
    ASSERT_STR_EQ(j.after.gid, j.before.gid);
    ASSERT_STR_EQ(j.after.groups, j.before.groups);
    read_ids(j.main_status, &main_after);
    ASSERT_STR_EQ(main_after.uid, main_before.uid);
    ASSERT_STR_EQ(main_after.groups, main_before.groups);
    rmrf(dir);
}

TEST(creds_restore_after_failed_operation)
{
    need_user();
    _cleanup_free_ char *dir = tmpdir();
    _cleanup_free_ char *priv = pjoin(dir, "root-only");
    ASSERT_OK(mkdir(priv, 0700));
    struct thread_ids before, after;
    read_ids("/proc/thread-self/status", &before);
    gid_t groups[] = {TEST_GID, 27};
    struct creds_saved saved;
    ASSERT_OK(creds_enter(TEST_UID, TEST_GID, groups, 2, &saved));
    struct fsop_err err = {0};
    struct fsop_list l;
    struct fsop_list_opts o = {.depth = 1, .max_entries = 10};
    ASSERT_ERR(fsop_list(priv, priv, &o, NULL, &l, &err), EACCES);
    fsop_err_done(&err);
    creds_leave(&saved);
    read_ids("/proc/thread-self/status", &after);
    ASSERT_STR_EQ(after.uid, before.uid);
    ASSERT_STR_EQ(after.gid, before.gid);
    ASSERT_STR_EQ(after.groups, before.groups);
    /* Root can read it again. */
    ASSERT_OK(fsop_list(priv, priv, &o, NULL, &l, NULL));
    fsop_list_done(&l);
    rmrf(dir);
}

TEST_MAIN()

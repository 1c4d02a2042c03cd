/* SPDX-License-Identifier: Apache-2.0 */
#include "fs/fsop.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "base/alloc.h"
#include "base/cleanup.h"
#include "base/log.h"
#include "base/macro.h"
#include "base/users.h"
#include "base/utf8.h"

/* Records the failing call and returns `r` (a -errno) for `return set_err(...)`. */
static int set_err(struct fsop_err *err, const char *op, const char *path, const char *path2, int r)
{
    if (!err)
        return r;
    fsop_err_done(err);
    err->op = op;
    err->path = xstrdup(path);
    err->path2 = path2 ? xstrdup(path2) : NULL;
    return r;
}

void fsop_err_done(struct fsop_err *e)
{
    if (!e)
        return;
    free(e->path);
    free(e->path2);
    e->op = NULL;
    e->path = e->path2 = NULL;
}

void fsop_names_init(struct fsop_names *n)
{
    memset(n, 0, sizeof(*n));
}

static const char *cached_name(struct fsop_name_slot *slots, unsigned *next, uint32_t id,
                               void (*lookup)(uint32_t id, char *out, size_t len))
{
    for (size_t i = 0; i < FSOP_NAMES_CACHED; i++)
        if (slots[i].used && slots[i].id == id)
            return slots[i].name;
    struct fsop_name_slot *s = &slots[*next];
    *next = (*next + 1) % FSOP_NAMES_CACHED;
    s->used = true;
    s->id = id;
    lookup(id, s->name, sizeof(s->name));
    return s->name;
}

static void lookup_user(uint32_t id, char *out, size_t len)
{
    users_user_name((uid_t) id, out, len);
}

static void lookup_group(uint32_t id, char *out, size_t len)
{
    users_group_name((gid_t) id, out, len);
}

static char *user_name(struct fsop_names *names, uid_t uid)
{
    char buf[FSOP_NAME_MAX];
    if (names)
        return xstrdup(cached_name(names->users, &names->next_user, uid, lookup_user));
    users_user_name(uid, buf, sizeof(buf));
    return xstrdup(buf);
}

static char *group_name(struct fsop_names *names, gid_t gid)
{
    char buf[FSOP_NAME_MAX];
    if (names)
        return xstrdup(cached_name(names->groups, &names->next_group, gid, lookup_group));
    users_group_name(gid, buf, sizeof(buf));
    return xstrdup(buf);
}

/* --- Go's FileMode ---------------------------------------------------------------------------- */

/* Go's mode bits in the order of its letters "dalTLDpSugct?" (os.FileMode.String). */
enum go_mode_bit {
    GO_DIR = 0,  /* d */
    GO_APPEND,   /* a: never set on Linux */
    GO_EXCL,     /* l: never set on Linux */
    GO_TEMP,     /* T: never set on Linux */
    GO_SYMLINK,  /* L */
    GO_DEVICE,   /* D */
    GO_PIPE,     /* p */
    GO_SOCKET,   /* S */
    GO_SETUID,   /* u */
    GO_SETGID,   /* g */
    GO_CHARDEV,  /* c */
    GO_STICKY,   /* t */
    GO_IRREGULAR /* ?: never set from a stat on Linux */
};

void fsop_mode_string(mode_t m, char out[FSOP_MODE_STRING_MAX])
{
    static const char letters[] = "dalTLDpSugct?";
    static const char rwx[] = "rwxrwxrwx";
    bool bits[sizeof(letters) - 1] = {false};
    size_t o = 0;

    /* The type mapping of Go's fillFileStatFromSys. */
    switch (m & S_IFMT) {
    case S_IFDIR:
        bits[GO_DIR] = true;
        break;
    case S_IFLNK:
        bits[GO_SYMLINK] = true;
        break;
    case S_IFBLK:
        bits[GO_DEVICE] = true;
        break;
    case S_IFCHR:
        bits[GO_DEVICE] = bits[GO_CHARDEV] = true;
        break;
    case S_IFIFO:
        bits[GO_PIPE] = true;
        break;
    case S_IFSOCK:
        bits[GO_SOCKET] = true;
        break;
    default:
        break;
    }
    bits[GO_SETUID] = (m & S_ISUID) != 0;
    bits[GO_SETGID] = (m & S_ISGID) != 0;
    bits[GO_STICKY] = (m & S_ISVTX) != 0;

    for (size_t i = 0; i < ARRAY_SIZE(bits); i++)
        if (bits[i])
            out[o++] = letters[i];
    if (o == 0)
        out[o++] = '-';
    for (int i = 0; i < 9; i++)
        out[o++] = (m & (1u << (8 - i))) ? rwx[i] : '-';
    out[o] = '\0';
}

/* --- entry info ------------------------------------------------------------------------------- */

static enum fsop_type type_of(mode_t m)
{
    if (S_ISREG(m))
        return FSOP_TYPE_FILE;
    if (S_ISDIR(m))
        return FSOP_TYPE_DIRECTORY;
    return FSOP_TYPE_UNSPECIFIED;
}

/* A size the kernel reported for xattr names or values; bounded by its own limits (64 KiB). */
#define XATTR_BUF_MAX (64 * 1024)

/* Reads user.e2b.* xattrs into `m` (following symlinks, as Go's xattr.List does). Best-effort:
 * a file system without xattrs or an unreadable attribute just yields fewer entries. */
static void read_metadata(const char *path, struct kv *m)
{
    ssize_t n = listxattr(path, NULL, 0);
    if (n <= 0)
        return;
    if (n > XATTR_BUF_MAX)
        n = XATTR_BUF_MAX;
    _cleanup_free_ char *names = xmalloc((size_t) n + 1);
    n = listxattr(path, names, (size_t) n);
    if (n <= 0)
        return;
    names[n] = '\0';
    for (char *name = names; name < names + n; name += strlen(name) + 1) {
        if (strncmp(name, FSOP_METADATA_PREFIX, STRLEN(FSOP_METADATA_PREFIX)) != 0)
            continue;
        const char *key = name + STRLEN(FSOP_METADATA_PREFIX);
        ssize_t vn = getxattr(path, name, NULL, 0);
        if (vn < 0 || vn > XATTR_BUF_MAX)
            continue;
        _cleanup_free_ char *value = xmalloc((size_t) vn + 1);
        vn = getxattr(path, name, value, (size_t) vn);
        if (vn < 0)
            continue;
        value[vn] = '\0';
        /* A map<string,string> must be UTF-8 (and a C string has no NUL inside). */
        if (memchr(value, '\0', (size_t) vn) || !utf8_valid((const uint8_t *) key, strlen(key)) ||
            !utf8_valid((const uint8_t *) value, (size_t) vn))
            continue;
        kv_set(m, key, value);
    }
}

/* EntryInfo of `syspath`, reported under `path` with `name`. */
static int entry_at(const char *syspath, const char *path, const char *name,
                    struct fsop_names *names, struct fsop_entry *ret, struct fsop_err *err)
{
    struct stat st;
    if (lstat(syspath, &st) < 0)
        return set_err(err, "lstat", path, NULL, -errno);

    struct fsop_entry e = {0};
    e.lmode = st.st_mode;
    e.size = (int64_t) st.st_size;
    fsop_mode_string(st.st_mode, e.permissions);
    if (S_ISLNK(st.st_mode)) {
        /* Go's EvalSymlinks, falling back to the path itself, and the target's type. */
        char *real = realpath(syspath, NULL);
        struct stat tst;
        e.symlink_target = real ? real : xstrdup(path);
        if (stat(syspath, &tst) == 0) {
            e.type = type_of(tst.st_mode);
            e.mode = tst.st_mode & 0777;
        }
    } else {
        e.type = type_of(st.st_mode);
        e.mode = st.st_mode & 0777;
    }
    e.owner = user_name(names, st.st_uid);
    e.group = group_name(names, st.st_gid);
    e.has_mtime = st.st_mtim.tv_sec != 0 || st.st_mtim.tv_nsec != 0;
    e.mtime_sec = st.st_mtim.tv_sec;
    e.mtime_nsec = (int32_t) st.st_mtim.tv_nsec;
    kv_init(&e.metadata);
    read_metadata(syspath, &e.metadata);
    e.name = xstrdup(name);
    e.path = xstrdup(path);
    *ret = e;
    return 0;
}

static const char *base_name(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return path;
    if (slash[1] == '\0')
        return slash == path ? "/" : path; /* "/" itself (paths here are clean) */
    return slash + 1;
}

int fsop_entry_info(const char *path, struct fsop_names *names, struct fsop_entry *ret,
                    struct fsop_err *err)
{
    return entry_at(path, path, base_name(path), names, ret, err);
}

void fsop_entry_done(struct fsop_entry *e)
{
    if (!e)
        return;
    free(e->name);
    free(e->path);
    free(e->owner);
    free(e->group);
    free(e->symlink_target);
    kv_clear(&e->metadata);
    memset(e, 0, sizeof(*e));
}

/* --- resolving -------------------------------------------------------------------------------- */

int fsop_resolve(const char *path, char **ret, struct fsop_err *err)
{
    char *real = realpath(path, NULL);
    if (real) {
        *ret = real;
        return 0;
    }
    int r = -errno;
    /* Name the first component that fails, as Go's EvalSymlinks ("lstat /a/b: …"). */
    _cleanup_free_ char *prefix = xstrdup(path);
    size_t n = strlen(prefix);
    for (size_t i = 1; i <= n; i++) {
        if (i < n && prefix[i] != '/')
            continue;
        char saved = prefix[i];
        prefix[i] = '\0';
        struct stat st;
        if (lstat(prefix, &st) < 0 && errno == -r)
            return set_err(err, "lstat", prefix, NULL, r);
        prefix[i] = saved;
    }
    return set_err(err, "lstat", path, NULL, r);
}

/* --- listing ---------------------------------------------------------------------------------- */

static char *join(const char *dir, const char *name)
{
    size_t dn = strlen(dir), nn = strlen(name);
    bool slash = dn > 0 && dir[dn - 1] == '/';
    char *p = xmalloc(dn + nn + 2);
    memcpy(p, dir, dn);
    if (!slash)
        p[dn++] = '/';
    memcpy(p + dn, name, nn + 1);
    return p;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *) a, *(char *const *) b);
}

struct names_array {
    char **v;
    size_t n;
};

static void names_array_done(struct names_array *a)
{
    for (size_t i = 0; i < a->n; i++)
        free(a->v[i]);
    free(a->v);
}

/* Reads the names in `fd` (consumed) except "." and "..". -E2BIG past `max`. */
static int read_names(int fd, size_t max, struct names_array *ret)
{
    DIR *d = fdopendir(fd);
    if (!d) {
        int r = -errno;
        (void) safe_close(fd);
        return r;
    }
    struct names_array a = {0};
    size_t cap = 0;
    int r = 0;
    for (;;) {
        errno = 0;
        struct dirent *de = readdir(d);
        if (!de) {
            r = errno ? -errno : 0;
            break;
        }
        if (streq(de->d_name, ".") || streq(de->d_name, ".."))
            continue;
        if (a.n >= max) {
            r = -E2BIG;
            break;
        }
        if (a.n == cap) {
            cap = cap ? cap * 2 : 64;
            a.v = xrealloc(a.v, cap * sizeof(*a.v));
        }
        a.v[a.n++] = xstrdup(de->d_name);
    }
    (void) closedir(d);
    if (r < 0) {
        names_array_done(&a);
        return r;
    }
    if (a.n > 1)
        qsort(a.v, a.n, sizeof(*a.v), cmp_names);
    *ret = a;
    return 0;
}

struct walker {
    const struct fsop_list_opts *opts;
    struct fsop_names *names;
    struct fsop_list *out;
    struct fsop_err *err;
};

static void list_push(struct fsop_list *l, struct fsop_entry *e)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 64;
        l->items = xrealloc(l->items, l->cap * sizeof(*l->items));
    }
    l->text_bytes += strlen(e->name) + strlen(e->path) + strlen(e->owner) + strlen(e->group) +
                     (e->symlink_target ? strlen(e->symlink_target) : 0);
    for (size_t i = 0; i < e->metadata.n; i++)
        l->text_bytes += strlen(e->metadata.items[i].key) + strlen(e->metadata.items[i].value);
    l->items[l->n++] = *e;
    memset(e, 0, sizeof(*e));
}

/* Lists the children of `sys` (reported as `rep`), which are at depth `level`. */
static int walk(struct walker *w, const char *sys, const char *rep, unsigned level)
{
    bool top = level == 1;
    int fd = open(sys, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        int r = -errno;
        if (!top && (r == -ENOENT || r == -ENOTDIR || r == -ELOOP))
            return 0; /* vanished, or replaced by a file or symlink since its lstat */
        if (!top && (r == -EACCES || r == -EPERM)) {
            log_debug("listing: skipping unreadable directory '%s': %s", sys, strerror(-r));
            return 0;
        }
        return set_err(w->err, "open", rep, NULL, r);
    }
    struct names_array names = {0};
    size_t room = w->opts->max_entries > w->out->n ? w->opts->max_entries - w->out->n : 0;
    int r = read_names(fd, room, &names);
    if (r == -E2BIG)
        return r;
    if (r < 0) {
        if (!top && (r == -ENOENT || r == -EACCES || r == -EPERM))
            return 0;
        return set_err(w->err, "readdirent", rep, NULL, r);
    }

    r = 0;
    for (size_t i = 0; i < names.n && r == 0; i++) {
        if (w->opts->cancel && atomic_load(w->opts->cancel)) {
            r = -ECANCELED;
            break;
        }
        _cleanup_free_ char *csys = join(sys, names.v[i]);
        _cleanup_free_ char *crep = join(rep, names.v[i]);
        struct fsop_entry e;
        r = entry_at(csys, crep, names.v[i], w->names, &e, w->err);
        if (r == -ENOENT) {
            r = 0; /* vanished since readdir */
            fsop_err_done(w->err);
            continue;
        }
        if (!top && (r == -EACCES || r == -EPERM)) {
            /* Readable but not searchable: the same as unreadable below the root. */
            log_debug("listing: skipping directory '%s' without search permission", sys);
            fsop_err_done(w->err);
            r = 0;
            break;
        }
        if (r < 0)
            break;
        if (w->out->n >= w->opts->max_entries) {
            fsop_entry_done(&e);
            r = -E2BIG;
            break;
        }
        bool descend = S_ISDIR(e.lmode) && level < w->opts->depth;
        list_push(w->out, &e);
        if (descend)
            r = walk(w, csys, crep, level + 1);
    }
    names_array_done(&names);
    return r;
}

int fsop_list(const char *requested, const char *resolved, const struct fsop_list_opts *opts,
              struct fsop_names *names, struct fsop_list *ret, struct fsop_err *err)
{
    struct fsop_list out = {0};
    struct walker w = {.opts = opts, .names = names, .out = &out, .err = err};
    if (opts->depth == 0) {
        *ret = out;
        return 0;
    }
    int r = walk(&w, resolved, requested, 1);
    if (r < 0) {
        fsop_list_done(&out);
        return r;
    }
    *ret = out;
    return 0;
}

void fsop_list_done(struct fsop_list *l)
{
    if (!l)
        return;
    for (size_t i = 0; i < l->n; i++)
        fsop_entry_done(&l->items[i]);
    free(l->items);
    memset(l, 0, sizeof(*l));
}

/* --- mkdir -p, move --------------------------------------------------------------------------- */

/* Makes sure `p` is a directory, creating it 0755 and chowning it if it is missing. */
static int ensure_dir(const char *p, uid_t uid, gid_t gid, struct fsop_err *err)
{
    struct stat st;
    if (stat(p, &st) == 0)
        return S_ISDIR(st.st_mode) ? 0 : set_err(err, "stat", p, NULL, -ENOTDIR);
    if (errno != ENOENT)
        return set_err(err, "stat", p, NULL, -errno);
    if (mkdir(p, 0755) < 0) {
        if (errno != EEXIST)
            return set_err(err, "mkdir", p, NULL, -errno);
        /* Lost a race with another creator: fine if it made a directory. */
        if (stat(p, &st) < 0)
            return set_err(err, "stat", p, NULL, -errno);
        return S_ISDIR(st.st_mode) ? 0 : set_err(err, "stat", p, NULL, -ENOTDIR);
    }
    /* Created with our fs ids already; the chown also undoes a set-group-ID parent's group. */
    if (fchownat(AT_FDCWD, p, uid, gid, AT_SYMLINK_NOFOLLOW) < 0)
        return set_err(err, "chown", p, NULL, -errno);
    return 0;
}

int fsop_mkdir_p(const char *path, uid_t uid, gid_t gid, struct fsop_err *err)
{
    if (path[0] != '/')
        return set_err(err, "mkdir", path, NULL, -EINVAL);
    _cleanup_free_ char *p = xstrdup(path);
    size_t n = strlen(p);
    while (n > 1 && p[n - 1] == '/')
        p[--n] = '\0';
    for (size_t i = 1; i <= n; i++) {
        if (i < n && p[i] != '/')
            continue;
        if (p[i - 1] == '/')
            continue; /* "//" */
        char saved = p[i];
        p[i] = '\0';
        int r = ensure_dir(p, uid, gid, err);
        p[i] = saved;
        if (r < 0)
            return r;
    }
    return 0;
}

static char *dir_name(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return xstrdup(".");
    if (slash == path)
        return xstrdup("/");
    return xstrndup(path, (size_t) (slash - path));
}

int fsop_move(const char *src, const char *dst, uid_t uid, gid_t gid, struct fsop_err *err)
{
    _cleanup_free_ char *parent = dir_name(dst);
    int r = fsop_mkdir_p(parent, uid, gid, err);
    if (r < 0)
        return r;
    /* Go's os.Rename refuses to replace a directory, even an empty one. */
    struct stat dst_st, src_st;
    if (lstat(dst, &dst_st) == 0 && S_ISDIR(dst_st.st_mode)) {
        if (lstat(src, &src_st) < 0)
            return set_err(err, "rename", src, dst, -errno);
        if (!streq(src, dst) && (src_st.st_dev != dst_st.st_dev || src_st.st_ino != dst_st.st_ino))
            return set_err(err, "rename", src, dst, -EEXIST);
    }
    if (rename(src, dst) < 0)
        return set_err(err, "rename", src, dst, -errno);
    return 0;
}

/* --- rm -rf ----------------------------------------------------------------------------------- */

/* Attempts to empty a directory before giving up on ENOTEMPTY (entries created meanwhile). */
#define REMOVE_RETRIES 3

static int remove_at(int dfd, const char *name, const char *parent, unsigned depth,
                     struct fsop_err *err);

/* Removes everything in the directory `fd` (consumed), reported as `path`. */
static int empty_dir(int fd, const char *path, unsigned depth, struct fsop_err *err)
{
    DIR *d = fdopendir(fd);
    if (!d) {
        int r = -errno;
        (void) safe_close(fd);
        return set_err(err, "open", path, NULL, r);
    }
    int first = 0;
    for (;;) {
        errno = 0;
        struct dirent *de = readdir(d);
        if (!de) {
            if (errno && first == 0)
                first = set_err(err, "readdirent", path, NULL, -errno);
            break;
        }
        if (streq(de->d_name, ".") || streq(de->d_name, ".."))
            continue;
        int r = remove_at(dirfd(d), de->d_name, path, depth + 1, first == 0 ? err : NULL);
        if (r < 0 && first == 0)
            first = r;
    }
    (void) closedir(d);
    return first;
}

static int remove_at(int dfd, const char *name, const char *parent, unsigned depth,
                     struct fsop_err *err)
{
    if (unlinkat(dfd, name, 0) == 0 || errno == ENOENT)
        return 0;
    int r = -errno;
    _cleanup_free_ char *path = join(parent, name);
    struct stat st;
    /* Linux says EISDIR for a directory, some file systems EPERM. EACCES/EPERM may also mean
     * that the parent is not writable: a directory's contents may still be removable then. */
    if (r != -EISDIR && r != -EPERM && r != -EACCES)
        return set_err(err, "unlinkat", path, NULL, r);
    if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
        return errno == ENOENT ? 0 : set_err(err, "lstat", path, NULL, -errno);
    if (!S_ISDIR(st.st_mode))
        return set_err(err, "unlinkat", path, NULL, r);
    if (depth >= FSOP_MAX_DEPTH)
        return set_err(err, "open", path, NULL, -ELOOP);

    for (int attempt = 0; attempt < REMOVE_RETRIES; attempt++) {
        /* O_NOFOLLOW: if the directory was swapped for a symlink, never walk into it. */
        int fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0) {
            if (errno == ENOENT)
                return 0;
            if (errno == ENOTDIR || errno == ELOOP) {
                /* Replaced by a file or symlink: remove that instead. */
                if (unlinkat(dfd, name, 0) == 0 || errno == ENOENT)
                    return 0;
                return set_err(err, "unlinkat", path, NULL, -errno);
            }
            return set_err(err, "open", path, NULL, -errno);
        }
        int first = empty_dir(fd, path, depth, err);
        if (unlinkat(dfd, name, AT_REMOVEDIR) == 0 || errno == ENOENT)
            return first;
        r = -errno;
        if (first < 0)
            return first; /* the child's failure explains why the directory is not empty */
        if (r != -ENOTEMPTY && r != -EEXIST)
            break;
    }
    return set_err(err, "unlinkat", path, NULL, r);
}

int fsop_remove(const char *path, struct fsop_err *err)
{
    if (path[0] != '/')
        return set_err(err, "unlinkat", path, NULL, -EINVAL);
    _cleanup_free_ char *clean = xstrdup(path);
    size_t n = strlen(clean);
    while (n > 1 && clean[n - 1] == '/')
        clean[--n] = '\0';
    if (streq(clean, "/"))
        return set_err(err, "unlinkat", "/", NULL, -EINVAL);
    _cleanup_free_ char *parent = dir_name(clean);
    const char *name = base_name(clean);
    if (streq(name, ".") || streq(name, ".."))
        return set_err(err, "unlinkat", clean, NULL, -EINVAL);
    _cleanup_close_ int dfd = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return errno == ENOENT ? 0 : set_err(err, "open", parent, NULL, -errno);
    return remove_at(dfd, name, parent, 0, err);
}

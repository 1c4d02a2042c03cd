/* SPDX-License-Identifier: Apache-2.0 */
#include "fs/watch.h"

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <uv.h>

#include "base/alloc.h"
#include "base/buf.h"
#include "base/cleanup.h"
#include "base/log.h"
#include "base/macro.h"
#include "base/users.h"
#include "fs/creds.h"
#include "fs/xfer.h"

/* What every kernel watch reports (envd's set). IN_EXCL_UNLINK: nothing about files after they
 * were unlinked (a deleted file still open and written would otherwise report WRITE under a
 * name that no longer exists). IN_ONLYDIR and IN_DONT_FOLLOW are added per call. */
#define WATCH_MASK                                                                      \
    (IN_CREATE | IN_MODIFY | IN_DELETE | IN_DELETE_SELF | IN_MOVED_FROM | IN_MOVED_TO | \
     IN_MOVE_SELF | IN_ATTRIB | IN_EXCL_UNLINK)
/* Bytes read from the inotify instance at once (about 1,000 records with short names). */
#define READ_BUFFER    (64 * 1024)
/* Reads per poll callback before other loop work gets its turn (the poll fires again). */
#define READS_PER_POLL 16
/* Directory renames whose MOVED_TO half is awaited at once, per watch. The kernel queues both
 * halves back to back, so a handful is plenty; the oldest is given up beyond this. */
#define PENDING_MOVES  16
/* Internal marker for "WATCH_MAX_DESCRIPTORS reached": inotify_add_watch never fails with it. */
#define ERR_LIMIT      EDQUOT

/* statfs magic numbers of network and FUSE file systems (envd refuses them by default). */
#define MAGIC_NFS  0x6969
#define MAGIC_CIFS 0xFF534D42
#define MAGIC_SMB  0x517B
#define MAGIC_SMB2 0xFE534D42
#define MAGIC_FUSE 0x65735546

/* --- a small integer-keyed hash map (open addressing, linear probing) ------------------------ */

struct imap_slot {
    int64_t key;
    void *val; /* NULL: empty */
};

struct imap {
    struct imap_slot *s;
    size_t cap; /* 0 or a power of two */
    size_t n;
};

static size_t imap_home(const struct imap *m, int64_t key)
{
    uint64_t x = (uint64_t) key * 0x9E3779B97F4A7C15ull;
    x ^= x >> 32;
    return (size_t) x & (m->cap - 1);
}

static void *imap_get(const struct imap *m, int64_t key)
{
    if (m->cap == 0)
        return NULL;
    for (size_t i = imap_home(m, key);; i = (i + 1) & (m->cap - 1)) {
        if (!m->s[i].val)
            return NULL;
        if (m->s[i].key == key)
            return m->s[i].val;
    }
}

static void imap_put(struct imap *m, int64_t key, void *val);

static void imap_grow(struct imap *m)
{
    struct imap old = *m;
    m->cap = old.cap ? old.cap * 2 : 16;
    m->s = xcalloc(m->cap, sizeof(*m->s));
    m->n = 0;
    for (size_t i = 0; i < old.cap; i++)
        if (old.s[i].val)
            imap_put(m, old.s[i].key, old.s[i].val);
    free(old.s);
}

/* Sets key → val (val not NULL), replacing an existing value. */
static void imap_put(struct imap *m, int64_t key, void *val)
{
    assert(val);
    if ((m->n + 1) * 4 > m->cap * 3)
        imap_grow(m);
    size_t i = imap_home(m, key);
    while (m->s[i].val && m->s[i].key != key)
        i = (i + 1) & (m->cap - 1);
    if (!m->s[i].val)
        m->n++;
    m->s[i].key = key;
    m->s[i].val = val;
}

/* Removes key; returns its value or NULL. Later entries of the probe run move back so that
 * lookups never need tombstones. */
static void *imap_del(struct imap *m, int64_t key)
{
    if (m->cap == 0)
        return NULL;
    size_t mask = m->cap - 1, i = imap_home(m, key);
    while (m->s[i].val && m->s[i].key != key)
        i = (i + 1) & mask;
    void *val = m->s[i].val;
    if (!val)
        return NULL;
    for (size_t j = i;;) {
        j = (j + 1) & mask;
        if (!m->s[j].val)
            break;
        size_t k = imap_home(m, m->s[j].key);
        /* Leave s[j] if its home lies cyclically in (i, j]; otherwise it may fill the hole. */
        bool stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
        if (!stays) {
            m->s[i] = m->s[j];
            i = j;
        }
    }
    m->s[i].val = NULL;
    m->n--;
    return val;
}

static void imap_free(struct imap *m)
{
    free(m->s);
    *m = (struct imap){0};
}

static uint64_t fnv1a(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++)
        h = (h ^ (uint8_t) *s) * 0x100000001b3ull;
    return h;
}

/* --- structures ------------------------------------------------------------------------------- */

/* A kernel watch descriptor and the references on it. Guarded by the engine's lock. */
struct wdref {
    unsigned count; /* 0: a zombie, removed from the kernel once no walk runs */
    bool gone;      /* the kernel removed it (IN_IGNORED): never inotify_rm_watch it */
};

/* The inotify instance; freed in its poll handle's close callback. */
struct watch_instance {
    uv_poll_t poll;
    int fd;
    struct watch_engine *e;
};

struct watch_engine {
    uv_loop_t *loop;
    struct watch_instance *inst; /* NULL while no watch exists */
    /*
     * Worker threads add kernel watches and take references; the loop thread drops them. The
     * lock guards `refs` and `n_zombies` only and is never held across a system call. A
     * reference that drops to zero leaves a zombie that is removed from the kernel only while
     * no walk runs (`jobs` == 0): otherwise a walk could be handed that very descriptor by
     * inotify_add_watch just before it is removed, and would keep a dead one.
     */
    uv_mutex_t lock;
    struct imap refs; /* wd → struct wdref */
    size_t n_zombies;
    size_t max_descriptors;
    unsigned jobs;         /* walks in flight (loop thread only) */
    unsigned depth;        /* > 0 while engine code runs callbacks or iterates watches */
    struct watch *watches; /* all watches, closing ones included */
    size_t n_watches;
    _Alignas(struct inotify_event) char rbuf[READ_BUFFER];
};

/* A directory a watch covers. */
struct sub {
    int wd;
    char *rel; /* relative to the root; "" for the root */
    bool seen; /* resync bookkeeping */
};

struct pending_move {
    uint32_t cookie;
    char *rel; /* the directory's name before the move */
};

enum job_kind {
    JOB_INITIAL = 0,
    JOB_SUBTREE,
    JOB_RESYNC,
};

struct watch {
    struct watch_engine *e;
    struct watch *prev, *next;
    const struct watch_ops *ops;
    void *userdata;
    char *root;
    bool recursive;
    bool allow_network;
    uid_t uid;
    gid_t gid;
    char *user;
    gid_t *groups; /* read by the initial walk */
    size_t n_groups;
    bool have_groups;
    struct imap subs; /* wd → struct sub */
    int root_wd;
    bool closing;
    bool resync_wanted;
    struct wjob *job; /* the walk in flight, if any */
    /* Raw records that arrived while a walk ran, replayed after it. */
    struct buf backlog;
    size_t backlog_off;
    bool backlog_lost;
    /* Names a walk reported as synthetic CREATEs: their CREATE records in the backlog are not
     * reported again (fnv1a(name) → name). Cleared when the backlog is empty. */
    struct imap skip;
    struct pending_move moves[PENDING_MOVES];
    size_t n_moves;
    /* The last rename away from one of guestd's upload names (see XFER_UPLOAD_TMP_PREFIX):
     * its cookie, and 'n' (new file) or 'r' (replaced file). */
    uint32_t upload_cookie;
    char upload_kind;
};

struct found_dir {
    int wd;
    char *rel;
};

/* One walk. The worker reads only the inputs and writes only the outputs. */
struct wjob {
    uv_work_t work;
    struct watch *w;
    struct watch_engine *e; /* the worker touches only lock, refs and n_zombies */
    enum job_kind kind;
    int fd;
    char *root;
    char *rel; /* SUBTREE: the new directory */
    bool recursive;
    bool allow_network;
    uid_t uid;
    gid_t gid;
    char *user;
    gid_t *groups;
    size_t n_groups;
    bool need_groups;
    struct watch_error err;
    struct found_dir *dirs;
    size_t n_dirs, cap_dirs;
    char **entries;
    size_t n_entries, cap_entries;
    bool entries_overflow;
    struct imap seen; /* wds this walk holds a reference on */
};

void watch_error_done(struct watch_error *e)
{
    if (!e)
        return;
    free(e->path);
    *e = (struct watch_error){0};
}

static char *join(const char *dir, const char *name)
{
    size_t dn = strlen(dir), nn = strlen(name);
    if (dn == 0)
        return xstrdup(name);
    bool slash = dir[dn - 1] == '/';
    char *p = xmalloc(dn + nn + 2);
    memcpy(p, dir, dn);
    if (!slash)
        p[dn++] = '/';
    memcpy(p + dn, name, nn + 1);
    return p;
}

/* True if `rel` is `dir` or lies below it. */
static bool rel_under(const char *rel, const char *dir)
{
    size_t n = strlen(dir);
    if (n == 0)
        return true;
    return strncmp(rel, dir, n) == 0 && (rel[n] == '\0' || rel[n] == '/');
}

/* --- references (worker threads and loop thread) -------------------------------------------- */

/* Worker: watches `path` and takes one reference for the walk. -EEXIST if the walk already
 * holds this descriptor (a bind mount met twice), -ERR_LIMIT past max_descriptors. */
static int job_add_watch(struct wjob *j, const char *path, bool follow)
{
    struct watch_engine *e = j->e;
    uint32_t mask = WATCH_MASK | IN_ONLYDIR | (follow ? 0 : IN_DONT_FOLLOW);
    int wd = inotify_add_watch(j->fd, path, mask);
    if (wd < 0)
        return -errno;
    if (imap_get(&j->seen, wd))
        return -EEXIST;
    int r = wd;
    uv_mutex_lock(&e->lock);
    struct wdref *ref = imap_get(&e->refs, wd);
    if (!ref) {
        ref = xcalloc(1, sizeof(*ref));
        imap_put(&e->refs, wd, ref);
        if (e->refs.n > e->max_descriptors) {
            e->n_zombies++; /* count 0: taken out of the kernel again once no walk runs */
            r = -ERR_LIMIT;
        } else {
            ref->count = 1;
        }
    } else {
        if (ref->count == 0)
            e->n_zombies--;
        ref->count++;
    }
    uv_mutex_unlock(&e->lock);
    if (r >= 0)
        imap_put(&j->seen, wd, (void *) 1);
    return r;
}

/* Loop thread: drops one reference. */
static void ref_release(struct watch_engine *e, int wd)
{
    uv_mutex_lock(&e->lock);
    struct wdref *ref = imap_get(&e->refs, wd);
    if (ref && ref->count > 0 && --ref->count == 0) {
        if (ref->gone)
            free(imap_del(&e->refs, wd));
        else
            e->n_zombies++;
    }
    uv_mutex_unlock(&e->lock);
}

/* Loop thread: takes zombies out of the kernel, unless a walk runs. */
static void flush_zombies(struct watch_engine *e)
{
    if (e->jobs > 0 || !e->inst)
        return;
    uv_mutex_lock(&e->lock);
    if (e->n_zombies > 0) {
        size_t n = 0;
        int *wds = xcalloc(e->n_zombies, sizeof(*wds));
        for (size_t i = 0; i < e->refs.cap && n < e->n_zombies; i++) {
            struct wdref *ref = e->refs.s[i].val;
            if (ref && ref->count == 0)
                wds[n++] = (int) e->refs.s[i].key;
        }
        for (size_t i = 0; i < n; i++) {
            struct wdref *ref = imap_del(&e->refs, wds[i]);
            if (!ref->gone)
                (void) inotify_rm_watch(e->inst->fd, wds[i]);
            free(ref);
        }
        e->n_zombies = 0;
        free(wds);
    }
    uv_mutex_unlock(&e->lock);
}

/* --- walks (worker thread, with the user's fs ids) ------------------------------------------- */

static int job_fail(struct wjob *j, enum watch_step step, int err, const char *path)
{
    if (j->err.step == WATCH_STEP_NONE) {
        j->err.step = step;
        j->err.err = err;
        j->err.path = xstrdup(path);
    }
    return err < 0 ? err : -EIO;
}

static void job_push_dir(struct wjob *j, int wd, const char *rel)
{
    if (j->n_dirs == j->cap_dirs) {
        j->cap_dirs = j->cap_dirs ? j->cap_dirs * 2 : 16;
        j->dirs = xrealloc(j->dirs, j->cap_dirs * sizeof(*j->dirs));
    }
    j->dirs[j->n_dirs++] = (struct found_dir){.wd = wd, .rel = xstrdup(rel)};
}

static bool job_push_entry(struct wjob *j, const char *rel)
{
    if (j->n_entries >= WATCH_WALK_MAX_ENTRIES) {
        j->entries_overflow = true;
        return false;
    }
    if (j->n_entries == j->cap_entries) {
        j->cap_entries = j->cap_entries ? j->cap_entries * 2 : 16;
        j->entries = xrealloc(j->entries, j->cap_entries * sizeof(*j->entries));
    }
    j->entries[j->n_entries++] = xstrdup(rel);
    return true;
}

struct dent {
    char *name;
    bool dir;
};

static int cmp_dent(const void *a, const void *b)
{
    return strcmp(((const struct dent *) a)->name, ((const struct dent *) b)->name);
}

static void dents_free(struct dent *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i].name);
    free(v);
}

/* The entries of directory `path` in bytewise order: all of them, or only subdirectories. */
static int read_dir(const char *path, bool follow, bool all, struct dent **ret, size_t *ret_n)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC | (follow ? 0 : O_NOFOLLOW));
    if (fd < 0)
        return -errno;
    DIR *d = fdopendir(fd);
    if (!d) {
        int r = -errno;
        (void) safe_close(fd);
        return r;
    }
    struct dent *v = NULL;
    size_t n = 0, cap = 0;
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
        bool dir = de->d_type == DT_DIR;
        if (de->d_type == DT_UNKNOWN) {
            struct stat st;
            dir = fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
                  S_ISDIR(st.st_mode);
        }
        if (!dir && !all)
            continue;
        if (n >= WATCH_WALK_MAX_ENTRIES) {
            r = -E2BIG;
            break;
        }
        if (n == cap) {
            cap = cap ? cap * 2 : 32;
            v = xrealloc(v, cap * sizeof(*v));
        }
        v[n++] = (struct dent){.name = xstrdup(de->d_name), .dir = dir};
    }
    (void) closedir(d);
    if (r < 0 && r != -E2BIG) {
        dents_free(v, n);
        return r;
    }
    if (n > 1)
        qsort(v, n, sizeof(*v), cmp_dent);
    *ret = v;
    *ret_n = n;
    return r;
}

/*
 * Watches `abs` (reported as `rel`) and, for recursive watches, every directory below it, in
 * lexical pre-order. The watch is placed before the directory is read, so an entry created
 * meanwhile is either found here or reported by the new watch (or both). Directories that
 * vanished, cannot be read by the user, or became files or symlinks are skipped; limits and
 * failures of the starting point are errors.
 */
static int walk(struct wjob *j, const char *abs, const char *rel, unsigned depth, bool top)
{
    /* The root may be a symlink to a directory (envd follows it); nothing below it is. */
    bool follow = top && j->kind != JOB_SUBTREE;
    int wd = job_add_watch(j, abs, follow);
    if (wd == -EEXIST)
        return 0;
    if (wd == -ERR_LIMIT)
        return job_fail(j, WATCH_STEP_LIMIT, -ENOSPC, abs);
    if (wd == -ENOSPC || wd == -ENOMEM)
        return job_fail(j, WATCH_STEP_ADD, wd, abs);
    if (wd < 0) {
        if (follow)
            return job_fail(j, WATCH_STEP_ADD, wd, abs);
        log_debug("watch: not watching '%s': %s", abs, strerror(-wd));
        return 0;
    }
    job_push_dir(j, wd, rel);
    if (!j->recursive)
        return 0;
    if (depth >= WATCH_MAX_DEPTH) {
        log_debug("watch: '%s' is deeper than %d levels; not watching below it", abs,
                  WATCH_MAX_DEPTH);
        return 0;
    }
    bool all = j->kind == JOB_SUBTREE;
    struct dent *v = NULL;
    size_t n = 0;
    int r = read_dir(abs, follow, all, &v, &n);
    if (r == -E2BIG && all)
        j->entries_overflow = true;
    else if (r == -E2BIG)
        log_debug("watch: '%s' has more than %d subdirectories; watching the first only", abs,
                  WATCH_WALK_MAX_ENTRIES);
    else if (r < 0) {
        log_debug("watch: cannot read '%s': %s", abs, strerror(-r));
        return 0;
    }
    r = 0;
    for (size_t i = 0; i < n && r == 0 && !j->entries_overflow; i++) {
        _cleanup_free_ char *crel = join(rel, v[i].name);
        if (all && !job_push_entry(j, crel))
            break;
        if (!v[i].dir)
            continue;
        _cleanup_free_ char *cabs = join(abs, v[i].name);
        r = walk(j, cabs, crel, depth + 1, false);
    }
    dents_free(v, n);
    return r;
}

static unsigned rel_depth(const char *rel)
{
    unsigned d = *rel ? 1 : 0;
    for (; *rel; rel++)
        d += *rel == '/';
    return d;
}

/* envd's checks, in its order: stat (following symlinks), directory, network mount; then
 * whether the user may list it. */
static int validate_root(struct wjob *j)
{
    struct stat st;
    if (stat(j->root, &st) < 0)
        return job_fail(j, WATCH_STEP_STAT, -errno, j->root);
    if (!S_ISDIR(st.st_mode))
        return job_fail(j, WATCH_STEP_NOT_DIR, -ENOTDIR, j->root);
    if (!j->allow_network) {
        struct statfs sf;
        if (statfs(j->root, &sf) < 0)
            return job_fail(j, WATCH_STEP_STATFS, -errno, j->root);
        switch ((uint32_t) sf.f_type) {
        case MAGIC_NFS:
        case MAGIC_CIFS:
        case MAGIC_SMB:
        case MAGIC_SMB2:
        case MAGIC_FUSE:
            return job_fail(j, WATCH_STEP_NETWORK, -EREMOTE, j->root);
        default:
            break;
        }
    }
    int fd = open(j->root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return job_fail(j, WATCH_STEP_OPEN, -errno, j->root);
    (void) close(fd);
    return 0;
}

static void on_job_work(uv_work_t *work)
{
    struct wjob *j = container_of(work, struct wjob, work);
    struct creds_saved saved;

    if (j->need_groups) {
        gid_t groups[USERS_MAX_GROUPS];
        int n = users_groups(j->user, j->gid, groups, USERS_MAX_GROUPS);
        if (n < 0) {
            (void) job_fail(j, WATCH_STEP_USER, n, j->root);
            return;
        }
        j->groups = xmemdup(groups, (size_t) n * sizeof(gid_t));
        j->n_groups = (size_t) n;
    }
    int r = creds_enter(j->uid, j->gid, j->groups, j->n_groups, &saved);
    if (r < 0) {
        (void) job_fail(j, WATCH_STEP_USER, r, j->root);
        return;
    }
    switch (j->kind) {
    case JOB_INITIAL:
        if (validate_root(j) == 0)
            (void) walk(j, j->root, "", 0, true);
        break;
    case JOB_SUBTREE: {
        _cleanup_free_ char *abs = join(j->root, j->rel);
        (void) walk(j, abs, j->rel, rel_depth(j->rel), true);
        break;
    }
    case JOB_RESYNC:
        r = walk(j, j->root, "", 0, true);
        /* A root that is gone (or is no directory any more) leaves an inert watch, as after
         * its removal; that is not a failure of the resync. */
        if (r < 0 && j->err.step == WATCH_STEP_ADD &&
            (j->err.err == -ENOENT || j->err.err == -ENOTDIR))
            watch_error_done(&j->err);
        break;
    }
    /* Always, whatever the walk returned: this thread serves other jobs next. */
    creds_leave(&saved);
}

static void job_free(struct wjob *j)
{
    free(j->root);
    free(j->rel);
    free(j->user);
    free(j->groups);
    watch_error_done(&j->err);
    for (size_t i = 0; i < j->n_dirs; i++)
        free(j->dirs[i].rel);
    free(j->dirs);
    for (size_t i = 0; i < j->n_entries; i++)
        free(j->entries[i]);
    free(j->entries);
    imap_free(&j->seen);
    free(j);
}

/* --- watches (loop thread) -------------------------------------------------------------------- */

static void engine_reap(struct watch_engine *e);
static bool engine_read(struct watch_engine *e);
static void on_job_done(uv_work_t *work, int status);

static bool busy(const struct watch *w)
{
    return w->job || w->backlog_off < w->backlog.len;
}

static void notify_event(struct watch *w, enum watch_event_type t, const char *name)
{
    if (!w->closing && w->ops->on_event)
        w->ops->on_event(w, t, name, w->userdata);
}

static void notify_overflow(struct watch *w)
{
    if (!w->closing && w->ops->on_overflow)
        w->ops->on_overflow(w, w->userdata);
}

static void notify_error(struct watch *w, const struct watch_error *err)
{
    if (!w->closing && w->ops->on_error)
        w->ops->on_error(w, err, w->userdata);
}

static void sub_drop(struct watch *w, struct sub *s)
{
    imap_del(&w->subs, s->wd);
    ref_release(w->e, s->wd);
    if (s->wd == w->root_wd)
        w->root_wd = -1;
    free(s->rel);
    free(s);
}

/* Forgets `rel` and every directory below it ("" forgets all). */
static void drop_subtree(struct watch *w, const char *rel)
{
    size_t n = 0;
    struct sub **v = w->subs.n ? xcalloc(w->subs.n, sizeof(*v)) : NULL;
    for (size_t i = 0; i < w->subs.cap; i++) {
        struct sub *s = w->subs.s[i].val;
        if (s && rel_under(s->rel, rel))
            v[n++] = s;
    }
    for (size_t i = 0; i < n; i++)
        sub_drop(w, v[i]);
    free(v);
}

/* A directory moved inside the tree: its watches (and those below) get the new name. */
static void repath(struct watch *w, const char *from, const char *to)
{
    size_t fn = strlen(from);
    for (size_t i = 0; i < w->subs.cap; i++) {
        struct sub *s = w->subs.s[i].val;
        if (!s || !rel_under(s->rel, from))
            continue;
        char *rel = join(to, s->rel + fn + (s->rel[fn] == '/'));
        if (s->rel[fn] == '\0') {
            free(rel);
            rel = xstrdup(to);
        }
        free(s->rel);
        s->rel = rel;
    }
}

static struct sub *sub_by_rel(const struct watch *w, const char *rel)
{
    for (size_t i = 0; i < w->subs.cap; i++) {
        struct sub *s = w->subs.s[i].val;
        if (s && streq(s->rel, rel))
            return s;
    }
    return NULL;
}

static void moves_clear(struct watch *w, bool drop)
{
    for (size_t i = 0; i < w->n_moves; i++) {
        if (drop)
            drop_subtree(w, w->moves[i].rel);
        free(w->moves[i].rel);
    }
    w->n_moves = 0;
}

static void move_begin(struct watch *w, uint32_t cookie, const char *rel)
{
    if (!sub_by_rel(w, rel))
        return;
    if (w->n_moves == PENDING_MOVES) {
        /* Give the oldest up: treat it as moved out of the tree. */
        drop_subtree(w, w->moves[0].rel);
        free(w->moves[0].rel);
        memmove(&w->moves[0], &w->moves[1], (PENDING_MOVES - 1) * sizeof(w->moves[0]));
        w->n_moves--;
    }
    w->moves[w->n_moves++] = (struct pending_move){.cookie = cookie, .rel = xstrdup(rel)};
}

/* The MOVED_TO half of a rename inside the tree: re-path. False if no MOVED_FROM matches. */
static bool move_end(struct watch *w, uint32_t cookie, const char *rel)
{
    for (size_t i = 0; i < w->n_moves; i++) {
        if (w->moves[i].cookie != cookie)
            continue;
        repath(w, w->moves[i].rel, rel);
        free(w->moves[i].rel);
        memmove(&w->moves[i], &w->moves[i + 1], (w->n_moves - i - 1) * sizeof(w->moves[0]));
        w->n_moves--;
        return true;
    }
    return false;
}

static bool skip_has(const struct watch *w, const char *name)
{
    const char *s = imap_get(&w->skip, (int64_t) fnv1a(name));
    return s && streq(s, name);
}

static void skip_add(struct watch *w, const char *name)
{
    int64_t k = (int64_t) fnv1a(name);
    if (!imap_get(&w->skip, k))
        imap_put(&w->skip, k, xstrdup(name));
}

static void skip_del(struct watch *w, const char *name)
{
    int64_t k = (int64_t) fnv1a(name);
    const char *s = imap_get(&w->skip, k);
    if (s && streq(s, name))
        free(imap_del(&w->skip, k));
}

static void skip_clear(struct watch *w)
{
    for (size_t i = 0; i < w->skip.cap; i++)
        free(w->skip.s[i].val);
    imap_free(&w->skip);
}

static int job_start(struct watch *w, enum job_kind kind, const char *rel)
{
    struct watch_engine *e = w->e;
    struct wjob *j = xcalloc(1, sizeof(*j));
    j->w = w;
    j->e = e;
    j->kind = kind;
    j->fd = e->inst->fd;
    j->root = xstrdup(w->root);
    j->rel = rel ? xstrdup(rel) : NULL;
    j->recursive = w->recursive;
    j->allow_network = w->allow_network;
    j->uid = w->uid;
    j->gid = w->gid;
    j->user = xstrdup(w->user);
    if (w->have_groups) {
        j->groups = w->n_groups ? xmemdup(w->groups, w->n_groups * sizeof(gid_t)) : NULL;
        j->n_groups = w->n_groups;
    } else {
        j->need_groups = true;
    }
    int r = uv_queue_work(e->loop, &j->work, on_job_work, on_job_done);
    if (r < 0) {
        job_free(j);
        return r;
    }
    w->job = j;
    e->jobs++;
    return 0;
}

/* A new directory in a recursive watch: walk it (the watch holds its records meanwhile). */
static void start_subtree(struct watch *w, const char *rel)
{
    int r = job_start(w, JOB_SUBTREE, rel);
    if (r < 0) {
        struct watch_error err = {.step = WATCH_STEP_ADD, .err = r, .path = join(w->root, rel)};
        notify_error(w, &err);
        watch_error_done(&err);
    }
}

/* Events of one record, in envd's order. */
static void emit_mask(struct watch *w, uint32_t m, const char *name)
{
    static const struct {
        uint32_t bits;
        enum watch_event_type type;
    } order[] = {
            {IN_CREATE | IN_MOVED_TO, WATCH_EVENT_CREATE},
            {IN_MOVED_FROM | IN_MOVE_SELF, WATCH_EVENT_RENAME},
            {IN_ATTRIB, WATCH_EVENT_CHMOD},
            {IN_MODIFY, WATCH_EVENT_WRITE},
            {IN_DELETE | IN_DELETE_SELF, WATCH_EVENT_REMOVE},
    };
    for (size_t i = 0; i < ARRAY_SIZE(order) && !w->closing; i++)
        if (m & order[i].bits)
            notify_event(w, order[i].type, name);
}

/* One record for a watch that is not waiting for a walk. `nm` is NULL for records about a
 * watched directory itself. */
static void watch_process(struct watch *w, const struct inotify_event *ev, const char *nm)
{
    uint32_t m = ev->mask;
    if (m & IN_Q_OVERFLOW) {
        notify_overflow(w);
        return;
    }
    struct sub *s = imap_get(&w->subs, ev->wd);
    if (!s)
        return;
    if (m & IN_IGNORED) {
        sub_drop(w, s);
        return;
    }
    if (!nm) {
        /* A subdirectory's own changes are reported by its parent, with its name. */
        if (ev->wd != w->root_wd)
            return;
        emit_mask(w, m & (IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF), ".");
        /* The root moved away: names relative to its old path would mislead, so the watch
         * stops following it (as envd's watcher does). */
        if ((m & IN_MOVE_SELF) && !w->closing) {
            moves_clear(w, false);
            drop_subtree(w, "");
        }
        return;
    }
    bool dir = m & IN_ISDIR;
    /*
     * guestd's own atomic uploads: the temporary name never shows, and its rename onto the
     * target becomes what envd's in-place write produced, which clients wait for: CREATE and
     * WRITE for a new file, WRITE and CHMOD for a replaced one. The two records of a rename in
     * one directory arrive one after the other on the same watch.
     */
    bool upload_tmp = strncmp(nm, XFER_UPLOAD_TMP_PREFIX, STRLEN(XFER_UPLOAD_TMP_PREFIX)) == 0;
    bool tar_tmp = strncmp(nm, XFER_TAR_TMP_PREFIX, STRLEN(XFER_TAR_TMP_PREFIX)) == 0;
    if (!dir && (upload_tmp || tar_tmp)) {
        if (m & IN_MOVED_FROM) {
            w->upload_cookie = ev->cookie;
            w->upload_kind = upload_tmp ? nm[STRLEN(XFER_UPLOAD_TMP_PREFIX)] : 'n';
        }
        return;
    }
    if (!dir && (m & IN_MOVED_TO) && ev->cookie && ev->cookie == w->upload_cookie) {
        _cleanup_free_ char *target = join(s->rel, nm);
        bool fresh = w->upload_kind == 'n';
        w->upload_cookie = 0;
        emit_mask(w, fresh ? IN_CREATE : IN_MODIFY, target);
        emit_mask(w, fresh ? IN_MODIFY : IN_ATTRIB, target);
        return;
    }
    _cleanup_free_ char *name = join(s->rel, nm);
    bool creates = m & (IN_CREATE | IN_MOVED_TO);
    /* Already reported by the walk that found it (its record was waiting meanwhile). */
    bool known = creates && skip_has(w, name);
    if (m & (IN_DELETE | IN_MOVED_FROM))
        skip_del(w, name);
    if (w->recursive && dir && (m & IN_MOVED_FROM))
        move_begin(w, ev->cookie, name);
    if (w->recursive && dir && (m & IN_MOVED_TO))
        (void) move_end(w, ev->cookie, name);
    emit_mask(w, known ? m & ~(uint32_t) (IN_CREATE | IN_MOVED_TO) : m, name);
    /* A new directory, or one moved in or renamed: walk it for its contents (a renamed one
     * keeps its watches; the walk reports what is inside under the new name, as envd). */
    if (w->recursive && dir && creates && !known && !w->closing)
        start_subtree(w, name);
}

static void backlog_append(struct watch *w, const char *raw, size_t len)
{
    if (w->backlog_lost)
        return;
    if (buf_append(&w->backlog, raw, len) < 0)
        w->backlog_lost = true;
}

/* Parses one raw record at `p` (of `avail` bytes); returns its length, or 0 if incomplete. */
static size_t record_at(const char *p, size_t avail, struct inotify_event *ret_hdr,
                        const char **ret_name)
{
    if (avail < sizeof(*ret_hdr))
        return 0;
    memcpy(ret_hdr, p, sizeof(*ret_hdr));
    size_t len = sizeof(*ret_hdr) + ret_hdr->len;
    if (len > avail)
        return 0;
    const char *name = ret_hdr->len ? p + sizeof(*ret_hdr) : NULL;
    if (name && strnlen(name, ret_hdr->len) == 0)
        name = NULL;
    if (name && strnlen(name, ret_hdr->len) == ret_hdr->len)
        name = NULL; /* not terminated: never from the kernel */
    *ret_name = name;
    return len;
}

/* Replays the records held while a walk ran, until another walk starts or none are left. */
static void watch_replay(struct watch *w)
{
    while (!w->closing && !w->job && w->backlog_off < w->backlog.len) {
        struct inotify_event hdr;
        const char *name;
        size_t len = record_at(w->backlog.data + w->backlog_off, w->backlog.len - w->backlog_off,
                               &hdr, &name);
        if (len == 0) {
            w->backlog_off = w->backlog.len;
            break;
        }
        w->backlog_off += len;
        watch_process(w, &hdr, name);
    }
    if (w->closing)
        return;
    if (w->job) {
        /* Another walk started: keep the rest, drop what was replayed. */
        buf_consume(&w->backlog, w->backlog_off);
        w->backlog_off = 0;
        return;
    }
    buf_reset(&w->backlog);
    w->backlog_off = 0;
    skip_clear(w);
    if (w->backlog_lost) {
        w->backlog_lost = false;
        notify_overflow(w);
    }
}

/* A walk's directories become the watch's. With `full` (initial walk, resync) the walk is the
 * whole truth: directories it did not find are forgotten. */
static void register_found(struct watch *w, struct wjob *j, bool full)
{
    if (full)
        for (size_t i = 0; i < w->subs.cap; i++)
            if (w->subs.s[i].val)
                ((struct sub *) w->subs.s[i].val)->seen = false;
    for (size_t i = 0; i < j->n_dirs; i++) {
        struct found_dir *f = &j->dirs[i];
        struct sub *s = imap_get(&w->subs, f->wd);
        if (s) {
            ref_release(w->e, f->wd); /* the watch holds one already */
            free(s->rel);
        } else {
            s = xcalloc(1, sizeof(*s));
            s->wd = f->wd;
            imap_put(&w->subs, f->wd, s);
        }
        s->rel = TAKE_PTR(f->rel);
        s->seen = true;
        if (s->rel[0] == '\0')
            w->root_wd = s->wd;
    }
    j->n_dirs = 0;
    if (full) {
        size_t n = 0;
        struct sub **v = w->subs.n ? xcalloc(w->subs.n, sizeof(*v)) : NULL;
        for (size_t i = 0; i < w->subs.cap; i++) {
            struct sub *s = w->subs.s[i].val;
            if (s && !s->seen)
                v[n++] = s;
        }
        for (size_t i = 0; i < n; i++)
            sub_drop(w, v[i]);
        free(v);
    }
}

static void release_found(struct watch_engine *e, struct wjob *j)
{
    for (size_t i = 0; i < j->n_dirs; i++) {
        ref_release(e, j->dirs[i].wd);
        free(j->dirs[i].rel);
    }
    j->n_dirs = 0;
}

static void on_job_done(uv_work_t *work, int status)
{
    struct wjob *j = container_of(work, struct wjob, work);
    struct watch *w = j->w;
    struct watch_engine *e = w->e;

    e->depth++;
    /* Records of changes made while the walk ran are all in the kernel's queue by now. Read
     * them while the watch still counts as busy, so that they wait in its backlog and come
     * after the walk's results (deduplicated against its synthetic CREATEs). */
    if (!w->closing && status == 0)
        (void) engine_read(e);
    e->jobs--;
    w->job = NULL;
    if (w->closing || status < 0) {
        release_found(e, j);
        if (!w->closing && j->kind == JOB_INITIAL && w->ops->on_ready) {
            struct watch_error err = {.step = WATCH_STEP_ENGINE, .err = status};
            w->ops->on_ready(w, &err, w->userdata);
        }
        goto out;
    }
    switch (j->kind) {
    case JOB_INITIAL:
        if (j->err.step != WATCH_STEP_NONE) {
            release_found(e, j);
            if (w->ops->on_ready)
                w->ops->on_ready(w, &j->err, w->userdata);
            goto out;
        }
        w->groups = TAKE_PTR(j->groups);
        w->n_groups = j->n_groups;
        w->have_groups = true;
        register_found(w, j, true);
        if (w->ops->on_ready)
            w->ops->on_ready(w, NULL, w->userdata);
        break;
    case JOB_SUBTREE:
        register_found(w, j, false);
        if (j->err.step != WATCH_STEP_NONE) {
            notify_error(w, &j->err);
            break;
        }
        if (j->entries_overflow) {
            notify_overflow(w);
            break;
        }
        for (size_t i = 0; i < j->n_entries && !w->closing; i++) {
            skip_add(w, j->entries[i]);
            notify_event(w, WATCH_EVENT_CREATE, j->entries[i]);
        }
        break;
    case JOB_RESYNC:
        if (j->err.step != WATCH_STEP_NONE) {
            release_found(e, j);
        } else {
            register_found(w, j, true);
            moves_clear(w, false);
        }
        if (!w->closing && w->ops->on_resynced)
            w->ops->on_resynced(w, j->err.step != WATCH_STEP_NONE ? &j->err : NULL, w->userdata);
        break;
    }
    if (!w->closing && w->resync_wanted) {
        w->resync_wanted = false;
        if (job_start(w, JOB_RESYNC, NULL) < 0)
            log_debug("watch: cannot start a resync of '%s'", w->root);
    }
    if (!w->closing)
        watch_replay(w);
out:
    job_free(j);
    e->depth--;
    engine_reap(e);
}

static void watch_destroy(struct watch *w)
{
    struct watch_engine *e = w->e;
    assert(!w->job);
    if (w->prev)
        w->prev->next = w->next;
    else
        e->watches = w->next;
    if (w->next)
        w->next->prev = w->prev;
    e->n_watches--;
    drop_subtree(w, "");
    imap_free(&w->subs);
    moves_clear(w, false);
    skip_clear(w);
    buf_free(&w->backlog);
    free(w->root);
    free(w->user);
    free(w->groups);
    free(w);
}

/* --- the inotify instance --------------------------------------------------------------------- */

static void on_instance_closed(uv_handle_t *h)
{
    struct watch_instance *inst = h->data;
    (void) close(inst->fd);
    free(inst);
}

static void instance_close(struct watch_engine *e)
{
    struct watch_instance *inst = e->inst;
    e->inst = NULL;
    /* No watch is left, so no reference either; closing the fd removes any kernel watch. */
    uv_mutex_lock(&e->lock);
    for (size_t i = 0; i < e->refs.cap; i++)
        free(e->refs.s[i].val);
    imap_free(&e->refs);
    e->n_zombies = 0;
    uv_mutex_unlock(&e->lock);
    uv_close((uv_handle_t *) &inst->poll, on_instance_closed);
}

static void dispatch(struct watch_engine *e, const char *raw, size_t len,
                     const struct inotify_event *hdr, const char *name)
{
    if (hdr->mask & IN_IGNORED) {
        uv_mutex_lock(&e->lock);
        struct wdref *ref = imap_get(&e->refs, hdr->wd);
        if (ref) {
            ref->gone = true;
            if (ref->count == 0) {
                free(imap_del(&e->refs, hdr->wd));
                e->n_zombies--;
            }
        }
        uv_mutex_unlock(&e->lock);
    }
    for (struct watch *w = e->watches; w; w = w->next) {
        if (w->closing)
            continue;
        if (busy(w))
            backlog_append(w, raw, len);
        else
            watch_process(w, hdr, name);
    }
}

static void dispatch_buffer(struct watch_engine *e, const char *buf, size_t n)
{
    size_t off = 0;
    while (off < n) {
        struct inotify_event hdr;
        const char *name;
        size_t len = record_at(buf + off, n - off, &hdr, &name);
        if (len == 0)
            break;
        dispatch(e, buf + off, len, &hdr, name);
        off += len;
    }
}

/* Reads and dispatches what the instance has queued, up to READS_PER_POLL buffers. Returns
 * true if the queue was read empty. */
static bool engine_read(struct watch_engine *e)
{
    for (int i = 0; i < READS_PER_POLL; i++) {
        ssize_t n = read(e->inst->fd, e->rbuf, sizeof(e->rbuf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            if (errno == EAGAIN)
                return true;
            log_debug("watch: reading inotify failed: %m");
            return false;
        }
        if (n == 0)
            return false;
        dispatch_buffer(e, e->rbuf, (size_t) n);
    }
    return false;
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    struct watch_instance *inst = h->data;
    struct watch_engine *e = inst->e;
    (void) events;
    if (status < 0) {
        log_debug("watch: polling inotify failed: %s", uv_strerror(status));
        return;
    }
    e->depth++;
    /* Everything queued has been read: a directory whose MOVED_FROM found no MOVED_TO left
     * the tree (or went somewhere this watch cannot see). */
    if (engine_read(e))
        for (struct watch *w = e->watches; w; w = w->next)
            if (!w->closing && !busy(w) && w->n_moves > 0)
                moves_clear(w, true);
    e->depth--;
    engine_reap(e);
}

static int instance_open(struct watch_engine *e)
{
    int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct watch_instance *inst = xcalloc(1, sizeof(*inst));
    inst->fd = fd;
    inst->e = e;
    int r = uv_poll_init(e->loop, &inst->poll, fd);
    if (r < 0) {
        (void) close(fd);
        free(inst);
        return r;
    }
    inst->poll.data = inst;
    r = uv_poll_start(&inst->poll, UV_READABLE, on_poll);
    if (r < 0) {
        uv_close((uv_handle_t *) &inst->poll, on_instance_closed);
        return r;
    }
    /* Watches never keep guestd's loop alive on their own; their owners' handles do. */
    uv_unref((uv_handle_t *) &inst->poll);
    e->inst = inst;
    return 0;
}

static void engine_reap(struct watch_engine *e)
{
    if (e->depth > 0)
        return;
    struct watch *next;
    for (struct watch *w = e->watches; w; w = next) {
        next = w->next;
        if (w->closing && !w->job)
            watch_destroy(w);
    }
    flush_zombies(e);
    if (!e->watches && e->jobs == 0 && e->inst)
        instance_close(e);
}

/* --- public API ------------------------------------------------------------------------------- */

int watch_engine_new(uv_loop_t *loop, struct watch_engine **ret)
{
    struct watch_engine *e = calloc(1, sizeof(*e));
    if (!e)
        return -ENOMEM;
    int r = uv_mutex_init(&e->lock);
    if (r < 0) {
        free(e);
        return r;
    }
    e->loop = loop;
    e->max_descriptors = WATCH_MAX_DESCRIPTORS;
    *ret = e;
    return 0;
}

void watch_engine_free(struct watch_engine *e)
{
    if (!e)
        return;
    assert(!e->watches && e->jobs == 0 && !e->inst);
    imap_free(&e->refs);
    uv_mutex_destroy(&e->lock);
    free(e);
}

size_t watch_engine_descriptors(struct watch_engine *e)
{
    uv_mutex_lock(&e->lock);
    size_t n = e->refs.n;
    uv_mutex_unlock(&e->lock);
    return n;
}

size_t watch_engine_watches(const struct watch_engine *e)
{
    return e->n_watches;
}

int watch_engine_fd(const struct watch_engine *e)
{
    return e->inst ? e->inst->fd : -1;
}

void watch_engine_set_max_descriptors(struct watch_engine *e, size_t max)
{
    uv_mutex_lock(&e->lock);
    e->max_descriptors = max;
    uv_mutex_unlock(&e->lock);
}

void watch_engine_test_inject(struct watch_engine *e, int wd, uint32_t mask, uint32_t cookie,
                              const char *name)
{
    if (!e->inst)
        return;
    size_t nlen = name ? strlen(name) + 1 : 0;
    size_t padded = (nlen + sizeof(struct inotify_event) - 1) / sizeof(struct inotify_event) *
                    sizeof(struct inotify_event);
    size_t len = sizeof(struct inotify_event) + padded;
    char *raw = xcalloc(1, len);
    struct inotify_event hdr = {.wd = wd, .mask = mask, .cookie = cookie, .len = (uint32_t) padded};
    memcpy(raw, &hdr, sizeof(hdr));
    if (name)
        memcpy(raw + sizeof(hdr), name, nlen - 1);
    e->depth++;
    dispatch_buffer(e, raw, len);
    e->depth--;
    free(raw);
    engine_reap(e);
}

int watch_new(struct watch_engine *e, const struct watch_params *p, const struct watch_ops *ops,
              void *userdata, struct watch **ret, struct watch_error *ret_err)
{
    int r;
    if (!e->inst) {
        r = instance_open(e);
        if (r < 0) {
            *ret_err = (struct watch_error){
                    .step = WATCH_STEP_ENGINE, .err = r, .path = xstrdup(p->root)};
            return r;
        }
    }
    struct watch *w = xcalloc(1, sizeof(*w));
    w->e = e;
    w->ops = ops;
    w->userdata = userdata;
    w->root = xstrdup(p->root);
    w->recursive = p->recursive;
    w->allow_network = p->allow_network_mounts;
    w->uid = p->uid;
    w->gid = p->gid;
    w->user = xstrdup(p->user ? p->user : "");
    w->root_wd = -1;
    buf_init(&w->backlog, WATCH_BACKLOG_BYTES);
    w->next = e->watches;
    if (e->watches)
        e->watches->prev = w;
    e->watches = w;
    e->n_watches++;
    r = job_start(w, JOB_INITIAL, NULL);
    if (r < 0) {
        *ret_err =
                (struct watch_error){.step = WATCH_STEP_ENGINE, .err = r, .path = xstrdup(p->root)};
        w->closing = true;
        engine_reap(e);
        return r;
    }
    *ret = w;
    return 0;
}

int watch_resync(struct watch *w)
{
    if (w->closing)
        return -ECANCELED;
    if (w->resync_wanted || (w->job && w->job->kind == JOB_RESYNC))
        return -EBUSY;
    if (w->job) {
        w->resync_wanted = true;
        return 0;
    }
    return job_start(w, JOB_RESYNC, NULL);
}

void watch_close(struct watch *w)
{
    if (!w || w->closing)
        return;
    w->closing = true;
    engine_reap(w->e);
}

size_t watch_dirs(const struct watch *w)
{
    return w->subs.n;
}

int watch_root_wd(const struct watch *w)
{
    return w->root_wd;
}

const char *watch_root(const struct watch *w)
{
    return w->root;
}

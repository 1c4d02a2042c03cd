/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Directory watches on inotify, for envd's WatchDir and polling watchers and guestd.v1's Watch.
 *
 * One engine serves all of guestd with ONE inotify instance (the kernel allows 128 per user, and
 * every instance costs a file descriptor), opened when the first watch starts and closed when
 * the last one ends. Its poll handle does not keep the loop alive. A kernel watch descriptor is
 * shared by every watch that covers the same directory and reference-counted; the kernel
 * returns the same descriptor for the same inode, so refcounting is what lets one watch end
 * without blinding another.
 *
 * A watch covers a root directory and, when recursive, every directory below it. Events reach
 * the owner as (type, name) with `name` relative to the root ("sub/file.txt", "." for the root
 * itself). One inotify record may yield several events, always in the order CREATE, RENAME,
 * CHMOD, WRITE, REMOVE (envd's). Recursive watches follow the tree: a new directory (created or
 * moved in) is walked, watched, and every entry found inside it is reported as a synthetic
 * CREATE (so `mkdir -p a/b/c` yields CREATE a, a/b, a/b/c); a directory renamed inside the tree
 * keeps its watches under the new name; directories removed or moved out are forgotten. Events
 * of a watched subdirectory about itself (attribute changes, removal, moves) are reported once,
 * through its parent, not twice.
 *
 * Credentials. Every walk (the initial one, one per new directory, a resync) runs on libuv's
 * threadpool with the watch's user's file-system ids (fs/creds.h), and inotify_add_watch() is
 * called right there, under those ids: the kernel then checks read permission on the directory
 * and search permission on every component of its path for that user, on the very inode that
 * gets watched. A user can therefore never watch a directory they could not list; directories
 * below the root that the user cannot read are skipped. (As with any inotify watch, a later
 * chmod does not revoke a watch that was allowed when it was placed.)
 *
 * Ordering. While a walk runs, the watch's records wait in a bounded backlog and are replayed
 * after the walk's results are in, so nothing is reported out of order or lost in between
 * (overflowing the backlog is reported as an overflow of that watch).
 *
 * Threads: everything here is called on the loop thread. Callbacks run on the loop thread; a
 * callback may call watch_close() on its own watch (or any other).
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct uv_loop_s uv_loop_t;
struct watch_engine;
struct watch;

/* Kernel watch descriptors (distinct directories) the engine holds at most. The kernel's own
 * per-user limit (fs.inotify.max_user_watches, at least 8192) applies as well; past either,
 * new watches fail with -ENOSPC rather than watch part of a tree silently. */
#define WATCH_MAX_DESCRIPTORS  65536
/* Directory levels below the root that a recursive watch follows; deeper ones are not watched
 * (a walk holds one open directory per level, and a bind-mount loop stops here at worst). */
#define WATCH_MAX_DEPTH        128
/* Entries one walk of a new directory may report as synthetic CREATEs. A directory tree with
 * more moved into a watched one overflows that watch instead of queuing them all. */
#define WATCH_WALK_MAX_ENTRIES 65536
/* Raw inotify records one watch buffers while a walk of it runs (about 20,000 records). */
#define WATCH_BACKLOG_BYTES    (1024 * 1024)

/* Values match filesystem.EventType. */
enum watch_event_type {
    WATCH_EVENT_CREATE = 1,
    WATCH_EVENT_WRITE = 2,
    WATCH_EVENT_REMOVE = 3,
    WATCH_EVENT_RENAME = 4,
    WATCH_EVENT_CHMOD = 5,
};

/* The step of setting up (or extending) a watch that failed. */
enum watch_step {
    WATCH_STEP_NONE = 0,
    WATCH_STEP_ENGINE,  /* inotify_init1 (err) */
    WATCH_STEP_USER,    /* reading the user's groups or switching to the user (err) */
    WATCH_STEP_STAT,    /* stat of the root (err; -ENOENT: missing) */
    WATCH_STEP_NOT_DIR, /* the root is not a directory */
    WATCH_STEP_STATFS,  /* statfs of the root (err) */
    WATCH_STEP_NETWORK, /* the root is on NFS, CIFS, SMB or FUSE and that was not allowed */
    WATCH_STEP_OPEN,    /* opening the root for reading (err: the user cannot list it) */
    WATCH_STEP_ADD,     /* inotify_add_watch on `path` (err; -ENOSPC: the kernel's limit) */
    WATCH_STEP_LIMIT,   /* WATCH_MAX_DESCRIPTORS reached while adding `path` */
};

struct watch_error {
    enum watch_step step;
    int err;    /* -errno, or 0 */
    char *path; /* the directory concerned (absolute) */
};

struct watch_params {
    const char *root; /* absolute, cleaned; symlinks in it are followed */
    bool recursive;
    bool allow_network_mounts;
    /* The user whose rights every walk and inotify_add_watch() run with. */
    uid_t uid;
    gid_t gid;
    const char *user; /* name, for the supplementary groups */
};

/*
 * Callbacks; `userdata` is the watch's. None runs after watch_close(), and none runs from
 * inside watch_new(), watch_resync() or watch_close().
 */
struct watch_ops {
    /* The initial walk finished: `err` NULL means the watch is live (events may follow at
     * once); otherwise it is dead and only watch_close() remains to be called. */
    void (*on_ready)(struct watch *w, const struct watch_error *err, void *userdata);
    void (*on_event)(struct watch *w, enum watch_event_type type, const char *name, void *userdata);
    /* Events were lost: the kernel queue overflowed (every watch hears of it), or this watch's
     * backlog or a new directory's walk went past its bound. The watch keeps running with
     * what it has; call watch_resync() to bring its set of directories back in line. */
    void (*on_overflow)(struct watch *w, void *userdata);
    /* watch_resync() finished (`err` NULL on success; the root may have gone meanwhile). */
    void (*on_resynced)(struct watch *w, const struct watch_error *err, void *userdata);
    /* The watch cannot follow the tree any more (a limit was reached while adding a new
     * directory). It keeps running with what it has. */
    void (*on_error)(struct watch *w, const struct watch_error *err, void *userdata);
};

int watch_engine_new(uv_loop_t *loop, struct watch_engine **ret);
/* Frees an engine that has no watches left, once the loop has run the close callbacks. */
void watch_engine_free(struct watch_engine *e);
/* Kernel watch descriptors held (distinct directories, shared ones counted once). */
size_t watch_engine_descriptors(struct watch_engine *e);
/* Live watches (closing ones included until they are gone). */
size_t watch_engine_watches(const struct watch_engine *e);
/* The inotify instance's fd, or -1 while no watch exists. */
int watch_engine_fd(const struct watch_engine *e);
/* Lowers WATCH_MAX_DESCRIPTORS (tests). */
void watch_engine_set_max_descriptors(struct watch_engine *e, size_t max);
/*
 * Test hook: feeds one record as if read from the inotify instance (wd -1 with IN_Q_OVERFLOW
 * is a queue overflow). `name` may be NULL. Only while a watch exists.
 */
void watch_engine_test_inject(struct watch_engine *e, int wd, uint32_t mask, uint32_t cookie,
                              const char *name);

/*
 * Starts watching: the engine validates the root and walks it as the user on a worker thread,
 * then calls ops->on_ready. Returns 0, or -errno with *ret_err filled (WATCH_STEP_ENGINE) when
 * the inotify instance cannot be created; free it with watch_error_done().
 */
int watch_new(struct watch_engine *e, const struct watch_params *p, const struct watch_ops *ops,
              void *userdata, struct watch **ret, struct watch_error *ret_err);
/*
 * Walks the tree again after an overflow: watches directories that appeared meanwhile, forgets
 * those that are gone, re-paths moved ones. Events that arrive in the meantime are held and
 * delivered after on_resynced. -EBUSY if a resync is already running.
 */
int watch_resync(struct watch *w);
/* Stops the watch: no callback runs after this. Memory is released as soon as no walk of it
 * is running. */
void watch_close(struct watch *w);
/* Directories watched (tests). */
size_t watch_dirs(const struct watch *w);
/* The root's watch descriptor, or -1 (tests). */
int watch_root_wd(const struct watch *w);
const char *watch_root(const struct watch *w);

void watch_error_done(struct watch_error *e);

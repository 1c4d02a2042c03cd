/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Plain file operations behind envd's filesystem service: entry info (envd's EntryInfo, built
 * from lstat), directory listings, mkdir -p with chown, move, rm -rf, and Go's FileMode
 * string. No libuv: every call is blocking and meant for a worker thread that already runs
 * with the requesting user's file-system credentials (fs/creds.h).
 *
 * Errors are -errno. Functions that take a `struct fsop_err *` also record which system call
 * failed on which path there, so that callers can name it; the record is owned by the caller
 * and released with fsop_err_done(). Output structures are owned by the caller and released
 * with their *_done() function, which also accepts zero-initialised structures.
 */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "base/kv.h"

/* Go's FileMode string: at most 13 type letters, 9 permission letters and the NUL. */
#define FSOP_MODE_STRING_MAX 24
/* Owner and group names as stored (the decimal id when a name is unknown). */
#define FSOP_NAME_MAX        256
/* uid→name and gid→name lookups read the passwd and group files; a listing caches this many
 * of each (a directory tree rarely has more distinct owners), replacing the oldest beyond. */
#define FSOP_NAMES_CACHED    32
/* Directory nesting that rm -rf descends: each level holds one open directory fd while its
 * children are removed, so the limit also bounds the fds a single removal can take. */
#define FSOP_MAX_DEPTH       512
/* The xattr namespace envd reports as EntryInfo.metadata (prefix stripped). */
#define FSOP_METADATA_PREFIX "user.e2b."

enum fsop_type {
    FSOP_TYPE_UNSPECIFIED = 0,
    FSOP_TYPE_FILE,
    FSOP_TYPE_DIRECTORY,
};

/* envd's EntryInfo (protocol-envd.md §6.2). */
struct fsop_entry {
    char *name;          /* the last path element */
    char *path;          /* the path as the caller asked to report it */
    enum fsop_type type; /* of the symlink's target for symlinks */
    mode_t lmode;        /* st_mode from lstat: what the entry itself is */
    int64_t size;        /* lstat size (a symlink: the length of its text) */
    uint32_t mode;       /* permission bits; of the target for symlinks, 0 if dangling */
    char permissions[FSOP_MODE_STRING_MAX];
    char *owner;
    char *group;
    bool has_mtime; /* false when the mtime is the epoch exactly (envd omits it) */
    int64_t mtime_sec;
    int32_t mtime_nsec;
    char *symlink_target; /* symlinks only: realpath of the link, or `path` if that fails */
    struct kv metadata;   /* user.e2b.* xattrs, prefix stripped, valid UTF-8 only */
};

/* What failed: the system call's name (static) and the path(s) it was given. */
struct fsop_err {
    const char *op;
    char *path;
    char *path2; /* rename's destination */
};

struct fsop_name_slot {
    bool used;
    uint32_t id;
    char name[FSOP_NAME_MAX];
};

/* A small id→name cache for one operation. Not shared between threads. */
struct fsop_names {
    struct fsop_name_slot users[FSOP_NAMES_CACHED];
    struct fsop_name_slot groups[FSOP_NAMES_CACHED];
    unsigned next_user, next_group; /* round-robin replacement */
};

struct fsop_list {
    struct fsop_entry *items;
    size_t n;
    size_t cap;
    size_t text_bytes; /* sum of the string lengths in all entries (for size estimates) */
};

struct fsop_list_opts {
    unsigned depth;            /* levels below the root to list (1: the root's children) */
    size_t max_entries;        /* more than this fails with -E2BIG */
    const atomic_bool *cancel; /* optional: set when the result is no longer wanted */
};

void fsop_err_done(struct fsop_err *e);
void fsop_names_init(struct fsop_names *n);

/*
 * Go's os.FileMode.String() of an lstat st_mode: each type letter of "dalTLDpSugct?" whose bit
 * Go sets (S_IFDIR d, S_IFLNK L, S_IFBLK D, S_IFCHR Dc, S_IFIFO p, S_IFSOCK S, S_ISUID u,
 * S_ISGID g, S_ISVTX t) in that order, or '-' if none, then rwxrwxrwx.
 */
void fsop_mode_string(mode_t st_mode, char out[FSOP_MODE_STRING_MAX]);

/*
 * EntryInfo of `path` (lstat; symlinks are described, not followed, except for the target's
 * type and mode). `names` may be NULL (no caching). -errno of lstat on failure.
 */
int fsop_entry_info(const char *path, struct fsop_names *names, struct fsop_entry *ret,
                    struct fsop_err *err);
void fsop_entry_done(struct fsop_entry *e);

/*
 * Resolves every symlink in `path` (realpath). On failure the error names the first
 * component whose lstat fails, as Go's filepath.EvalSymlinks does, when one can be found.
 */
int fsop_resolve(const char *path, char **ret, struct fsop_err *err);

/*
 * Lists the directory `resolved` (already free of symlinks) in lexical depth-first pre-order:
 * names sorted bytewise within each directory, symlinks never followed or descended. Each
 * entry's path is built on `requested` instead of `resolved`. Entries that vanish during the
 * walk are skipped; so are subdirectories below the root that cannot be read (EACCES/EPERM,
 * logged at debug level). -E2BIG past opts->max_entries, -ECANCELED when opts->cancel is set.
 */
int fsop_list(const char *requested, const char *resolved, const struct fsop_list_opts *opts,
              struct fsop_names *names, struct fsop_list *ret, struct fsop_err *err);
void fsop_list_done(struct fsop_list *l);

/*
 * mkdir -p as envd's EnsureDirs: every missing component of the absolute `path` is created
 * 0755 (minus the umask) and chowned to uid:gid, so that a set-group-ID parent does not hand
 * its group down. An existing component that is not a directory (after following symlinks)
 * fails with -ENOTDIR, reported as op "stat".
 */
int fsop_mkdir_p(const char *path, uid_t uid, gid_t gid, struct fsop_err *err);

/*
 * Moves `src` to `dst` with rename(2) after creating dst's missing parents as fsop_mkdir_p
 * does. Like Go's os.Rename, an existing directory at `dst` is never replaced (-EEXIST).
 * No copying: across file systems this fails with -EXDEV.
 */
int fsop_move(const char *src, const char *dst, uid_t uid, gid_t gid, struct fsop_err *err);

/*
 * rm -rf of the absolute `path`: a missing path is success, symlinks are removed and never
 * followed (only the parent components of `path` itself are resolved). Refuses "/" (-EINVAL).
 * Keeps going after a failure and returns the first one. -ELOOP past FSOP_MAX_DEPTH levels.
 */
int fsop_remove(const char *path, struct fsop_err *err);

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * envd's filesystem.Filesystem unary methods.
 *
 * A handler resolves the request's paths on the loop thread (envd's ExpandAndResolve) and
 * copies everything the operation needs into a job, because the call and its request are
 * freed if the client leaves or the deadline passes first. The job runs on libuv's
 * threadpool: it reads the user's groups, switches the worker thread to the user's fs ids,
 * does the file operation, switches back, and prepares the error text. The answer is built
 * and sent back on the loop thread, unless the call is gone by then.
 *
 * Error texts follow envd's (Go's "op path: error" forms) where envd's are known; permission
 * errors, which envd (always root) rarely meets, say "permission denied: open '/root/x'".
 */
#include "rpc/fs.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <uv.h>

#include "agent-limits.h"
#include "base/alloc.h"
#include "base/log.h"
#include "base/macro.h"
#include "base/path.h"
#include "base/users.h"
#include "base/utf8.h"
#include "filesystem/filesystem.pb-c.h"
#include "fs/creds.h"
#include "fs/fsop.h"
#include "http/http.h"
#include "rpc/router.h"
#include "sys/state.h"

/* Entries one ListDir may return. envd has no limit, but every entry costs memory while the
 * walk runs and the answer must fit the response limit; a walk stops as soon as it passes
 * this, so `ListDir / depth 100` cannot pin a worker thread for minutes. */
#define FS_LIST_MAX_ENTRIES     100000
/* Encoded bytes of one entry besides its strings (field names or tags, the type, numbers, the
 * permission string, the timestamp), with some margin: used to refuse a listing whose answer
 * would not fit LIMIT_RPC_MESSAGE_BYTES before building it. With JSON that limit, not
 * FS_LIST_MAX_ENTRIES, is what bounds a listing of short names (about 60,000 entries). */
#define FS_ENTRY_JSON_OVERHEAD  224
#define FS_ENTRY_PROTO_OVERHEAD 80
/* Room for an error message (rpc_end formats at most this much as well). */
#define FS_MESSAGE_MAX          1024

enum fs_op {
    FS_OP_STAT = 0,
    FS_OP_MAKE_DIR,
    FS_OP_MOVE,
    FS_OP_LIST_DIR,
    FS_OP_REMOVE,
};

struct fs_job {
    uv_work_t work;
    struct rpc_call *call; /* NULL once the call ended without us (client gone, deadline) */
    atomic_bool cancelled;
    enum fs_op op;
    bool proto; /* the answer uses the binary codec */
    /* Inputs, owned copies. */
    uid_t uid;
    gid_t gid;
    char *user_name;
    char *path;  /* resolved; Move: the source */
    char *path2; /* Move: the destination */
    uint32_t depth;
    /* Results, written by the worker and read on the loop thread after it finished. */
    enum rpc_code code;
    char message[FS_MESSAGE_MAX];
    struct fsop_entry entry;
    struct fsop_list list;
    struct fsop_names names;
};

static void job_free(struct fs_job *job)
{
    if (!job)
        return;
    free(job->user_name);
    free(job->path);
    free(job->path2);
    fsop_entry_done(&job->entry);
    fsop_list_done(&job->list);
    free(job);
}

static void job_fail(struct fs_job *job, enum rpc_code code, const char *fmt, ...) _printf_(3, 4);
static void job_fail(struct fs_job *job, enum rpc_code code, const char *fmt, ...)
{
    va_list ap;
    job->code = code;
    va_start(ap, fmt);
    (void) vsnprintf(job->message, sizeof(job->message), fmt, ap);
    va_end(ap);
}

/* --- error texts (worker thread) -------------------------------------------------------------- */

/* Go's text for an errno: glibc's, starting in lower case ("no such file or directory"). */
static void go_strerror(int r, char *out, size_t len)
{
    (void) snprintf(out, len, "%s", strerror(-r));
    if (out[0] >= 'A' && out[0] <= 'Z')
        out[0] = (char) (out[0] - 'A' + 'a');
}

/* Go's *PathError / *LinkError text: "lstat /x: no such file or directory". */
static void go_error(const struct fsop_err *e, int r, char *out, size_t len)
{
    char why[128];
    go_strerror(r, why, sizeof(why));
    if (e->path2)
        (void) snprintf(out, len, "%s %s %s: %s", e->op ? e->op : "?", e->path ? e->path : "",
                        e->path2, why);
    else
        (void) snprintf(out, len, "%s %s: %s", e->op ? e->op : "?", e->path ? e->path : "", why);
}

static bool is_permission(int r)
{
    return r == -EACCES || r == -EPERM;
}

/* permission_denied "permission denied: open '/root/x'" (or "… rename '/a' to '/b'"). */
static void fail_permission(struct fs_job *job, int r, const struct fsop_err *e)
{
    char why[128];
    go_strerror(r, why, sizeof(why));
    if (e->path2)
        job_fail(job, RPC_PERMISSION_DENIED, "%s: %s '%s' to '%s'", why, e->op, e->path, e->path2);
    else
        job_fail(job, RPC_PERMISSION_DENIED, "%s: %s '%s'", why, e->op, e->path);
}

/* envd's entryInfo() errors: not_found "file not found: lstat …", else internal. */
static void fail_entry(struct fs_job *job, int r, const struct fsop_err *e)
{
    char msg[FS_MESSAGE_MAX];
    if (is_permission(r)) {
        fail_permission(job, r, e);
        return;
    }
    go_error(e, r, msg, sizeof(msg));
    if (r == -ENOENT)
        job_fail(job, RPC_NOT_FOUND, "file not found: %s", msg);
    else
        job_fail(job, RPC_INTERNAL, "error getting file info: %s", msg);
}

/* envd's EnsureDirs() errors (MakeDir, Move): internal, with the step that failed. */
static void fail_ensure(struct fs_job *job, int r, const struct fsop_err *e)
{
    char msg[FS_MESSAGE_MAX];
    if (is_permission(r)) {
        fail_permission(job, r, e);
        return;
    }
    if (streq(e->op, "stat") && r == -ENOTDIR) {
        job_fail(job, RPC_INTERNAL, "path is a file: %s", e->path);
        return;
    }
    go_error(e, r, msg, sizeof(msg));
    job_fail(job, RPC_INTERNAL, "failed to %s directory: %s",
             streq(e->op, "stat")    ? "stat"
             : streq(e->op, "chown") ? "chown"
                                     : "create",
             msg);
}

/* Go's protojson refuses strings that are not UTF-8, and connect-go turns that into internal.
 * File names can be any bytes, so check before answering. */
static const char *entry_bad_field(const struct fsop_entry *e)
{
#define BAD(s) (!utf8_valid((const uint8_t *) (s), strlen(s)))
    if (BAD(e->name))
        return "name";
    if (BAD(e->path))
        return "path";
    if (BAD(e->owner))
        return "owner";
    if (BAD(e->group))
        return "group";
    if (e->symlink_target && BAD(e->symlink_target))
        return "symlink_target";
#undef BAD
    return NULL;
}

static bool check_utf8(struct fs_job *job, const struct fsop_entry *e)
{
    const char *field = entry_bad_field(e);
    if (!field)
        return true;
    job_fail(job, RPC_INTERNAL,
             "marshal message: proto: field filesystem.EntryInfo.%s contains invalid UTF-8", field);
    return false;
}

/* --- operations (worker thread, with the user's fs ids) --------------------------------------- */

static void op_stat(struct fs_job *job)
{
    struct fsop_err e = {0};
    int r = fsop_entry_info(job->path, &job->names, &job->entry, &e);
    if (r < 0)
        fail_entry(job, r, &e);
    else
        (void) check_utf8(job, &job->entry);
    fsop_err_done(&e);
}

static void op_make_dir(struct fs_job *job)
{
    struct fsop_err e = {0};
    struct stat st;
    char why[128];
    /* envd stats (following symlinks) first: an existing directory is already_exists. */
    if (stat(job->path, &st) == 0) {
        if (S_ISDIR(st.st_mode))
            job_fail(job, RPC_ALREADY_EXISTS, "directory already exists: %s", job->path);
        else
            job_fail(job, RPC_INVALID_ARGUMENT, "path already exists but it is not a directory: %s",
                     job->path);
        return;
    }
    int r = -errno;
    if (r != -ENOENT) {
        e.op = "stat";
        e.path = job->path;
        if (is_permission(r)) {
            fail_permission(job, r, &e);
        } else {
            go_strerror(r, why, sizeof(why));
            job_fail(job, RPC_INTERNAL, "error getting file info: stat %s: %s", job->path, why);
        }
        return;
    }
    r = fsop_mkdir_p(job->path, job->uid, job->gid, &e);
    if (r < 0) {
        fail_ensure(job, r, &e);
        fsop_err_done(&e);
        return;
    }
    r = fsop_entry_info(job->path, &job->names, &job->entry, &e);
    if (r < 0)
        fail_entry(job, r, &e);
    else
        (void) check_utf8(job, &job->entry);
    fsop_err_done(&e);
}

static void op_move(struct fs_job *job)
{
    struct fsop_err e = {0};
    char msg[FS_MESSAGE_MAX];
    int r = fsop_move(job->path, job->path2, job->uid, job->gid, &e);
    if (r < 0) {
        if (!streq(e.op, "rename")) {
            fail_ensure(job, r, &e);
        } else if (is_permission(r)) {
            fail_permission(job, r, &e);
        } else {
            go_error(&e, r, msg, sizeof(msg));
            if (r == -ENOENT)
                job_fail(job, RPC_NOT_FOUND, "source file not found: %s", msg);
            else
                job_fail(job, RPC_INTERNAL, "error renaming: %s", msg);
        }
        fsop_err_done(&e);
        return;
    }
    r = fsop_entry_info(job->path2, &job->names, &job->entry, &e);
    if (r < 0)
        fail_entry(job, r, &e);
    else
        (void) check_utf8(job, &job->entry);
    fsop_err_done(&e);
}

static void op_list_dir(struct fs_job *job)
{
    struct fsop_err e = {0};
    char msg[FS_MESSAGE_MAX];
    char *resolved = NULL;
    struct stat st;

    int r = fsop_resolve(job->path, &resolved, &e);
    if (r < 0) {
        go_error(&e, r, msg, sizeof(msg));
        if (r == -ENOENT)
            job_fail(job, RPC_NOT_FOUND, "path not found: %s", msg);
        else if (r == -ELOOP)
            job_fail(job, RPC_FAILED_PRECONDITION, "cyclic symlink or chain >255 links at \"%s\"",
                     job->path);
        else if (is_permission(r))
            fail_permission(job, r, &e);
        else
            job_fail(job, RPC_INTERNAL, "error resolving symlink: %s", msg);
        goto out;
    }
    if (stat(resolved, &st) < 0) {
        r = -errno;
        fsop_err_done(&e);
        e.op = "stat";
        e.path = xstrdup(resolved);
        go_error(&e, r, msg, sizeof(msg));
        if (r == -ENOENT)
            job_fail(job, RPC_NOT_FOUND, "path not found: %s", msg);
        else if (is_permission(r))
            fail_permission(job, r, &e);
        else
            job_fail(job, RPC_INTERNAL, "error getting file info: %s", msg);
        goto out;
    }
    if (!S_ISDIR(st.st_mode)) {
        job_fail(job, RPC_INVALID_ARGUMENT, "path is not a directory: %s", job->path);
        goto out;
    }

    const struct fsop_list_opts opts = {
            .depth = job->depth,
            .max_entries = FS_LIST_MAX_ENTRIES,
            .cancel = &job->cancelled,
    };
    r = fsop_list(job->path, resolved, &opts, &job->names, &job->list, &e);
    if (r == -E2BIG) {
        job_fail(job, RPC_RESOURCE_EXHAUSTED,
                 "too many entries under '%s': a listing returns at most %d", job->path,
                 FS_LIST_MAX_ENTRIES);
    } else if (r == -ECANCELED) {
        job_fail(job, RPC_CANCELED, "canceled");
    } else if (r < 0 && is_permission(r)) {
        fail_permission(job, r, &e);
    } else if (r < 0) {
        go_error(&e, r, msg, sizeof(msg));
        job_fail(job, RPC_INTERNAL, "error reading directory: %s", msg);
    } else if (job->list.text_bytes + job->list.n * (job->proto ? FS_ENTRY_PROTO_OVERHEAD
                                                                : FS_ENTRY_JSON_OVERHEAD) >
               LIMIT_RPC_MESSAGE_BYTES) {
        job_fail(job, RPC_RESOURCE_EXHAUSTED,
                 "the listing of '%s' is larger than the %d-byte response limit", job->path,
                 LIMIT_RPC_MESSAGE_BYTES);
    } else {
        for (size_t i = 0; i < job->list.n; i++)
            if (!check_utf8(job, &job->list.items[i]))
                break;
    }
out:
    free(resolved);
    fsop_err_done(&e);
}

static void op_remove(struct fs_job *job)
{
    struct fsop_err e = {0};
    char msg[FS_MESSAGE_MAX];
    int r = fsop_remove(job->path, &e);
    if (r == -ELOOP && streq(e.op, "open"))
        job_fail(job, RPC_INTERNAL,
                 "error removing file or directory: '%s' is nested deeper than %d directories",
                 e.path, FSOP_MAX_DEPTH);
    else if (r < 0 && is_permission(r))
        fail_permission(job, r, &e);
    else if (r < 0) {
        go_error(&e, r, msg, sizeof(msg));
        job_fail(job, RPC_INTERNAL, "error removing file or directory: %s", msg);
    }
    fsop_err_done(&e);
}

static void on_work(uv_work_t *w)
{
    struct fs_job *job = container_of(w, struct fs_job, work);
    gid_t groups[USERS_MAX_GROUPS];
    struct creds_saved saved;

    if (atomic_load(&job->cancelled))
        return;
    /* Read as root, before the switch: the group file is readable by all anyway. */
    int n = users_groups(job->user_name, job->gid, groups, USERS_MAX_GROUPS);
    if (n < 0) {
        job_fail(job, RPC_INTERNAL, "cannot read the groups of '%s': %s", job->user_name,
                 strerror(-n));
        return;
    }
    int r = creds_enter(job->uid, job->gid, groups, (size_t) n, &saved);
    if (r < 0) {
        job_fail(job, RPC_INTERNAL, "cannot act as user '%s': %s", job->user_name, strerror(-r));
        return;
    }
    switch (job->op) {
    case FS_OP_STAT:
        op_stat(job);
        break;
    case FS_OP_MAKE_DIR:
        op_make_dir(job);
        break;
    case FS_OP_MOVE:
        op_move(job);
        break;
    case FS_OP_LIST_DIR:
        op_list_dir(job);
        break;
    case FS_OP_REMOVE:
        op_remove(job);
        break;
    }
    /* Always, whatever the operation returned: this thread serves other jobs next. */
    creds_leave(&saved);
}

/* --- answers (loop thread) -------------------------------------------------------------------- */

void fs_pb_entry_fill(struct fs_pb_entry *p, const struct fsop_entry *e)
{
    static const Filesystem__FileType types[] = {
            [FSOP_TYPE_UNSPECIFIED] = FILESYSTEM__FILE_TYPE__FILE_TYPE_UNSPECIFIED,
            [FSOP_TYPE_FILE] = FILESYSTEM__FILE_TYPE__FILE_TYPE_FILE,
            [FSOP_TYPE_DIRECTORY] = FILESYSTEM__FILE_TYPE__FILE_TYPE_DIRECTORY,
    };
    Filesystem__EntryInfo *info = &p->info;
    filesystem__entry_info__init(info);
    info->name = e->name;
    info->type = types[e->type];
    info->path = e->path;
    info->size = e->size;
    info->mode = e->mode;
    info->permissions = (char *) e->permissions;
    info->owner = e->owner;
    info->group = e->group;
    if (e->has_mtime) {
        google__protobuf__timestamp__init(&p->mtime);
        p->mtime.seconds = e->mtime_sec;
        p->mtime.nanos = e->mtime_nsec;
        info->modified_time = &p->mtime;
    }
    if (e->symlink_target) {
        info->_symlink_target_case = FILESYSTEM__ENTRY_INFO___SYMLINK_TARGET_SYMLINK_TARGET;
        info->symlink_target = e->symlink_target;
    }
    p->meta = NULL;
    p->meta_ptrs = NULL;
    if (e->metadata.n > 0) {
        p->meta = xcalloc(e->metadata.n, sizeof(*p->meta));
        p->meta_ptrs = xcalloc(e->metadata.n, sizeof(*p->meta_ptrs));
        for (size_t i = 0; i < e->metadata.n; i++) {
            filesystem__entry_info__metadata_entry__init(&p->meta[i]);
            p->meta[i].key = e->metadata.items[i].key;
            p->meta[i].value = e->metadata.items[i].value;
            p->meta_ptrs[i] = &p->meta[i];
        }
        info->n_metadata = e->metadata.n;
        info->metadata = p->meta_ptrs;
    }
}

void fs_pb_entry_done(struct fs_pb_entry *p)
{
    free(p->meta);
    free(p->meta_ptrs);
}

static void reply(struct rpc_call *call, struct fs_job *job)
{
    struct fs_pb_entry one;
    switch (job->op) {
    case FS_OP_STAT: {
        Filesystem__StatResponse resp = FILESYSTEM__STAT_RESPONSE__INIT;
        fs_pb_entry_fill(&one, &job->entry);
        resp.entry = &one.info;
        (void) rpc_reply(call, &resp.base);
        fs_pb_entry_done(&one);
        break;
    }
    case FS_OP_MAKE_DIR: {
        Filesystem__MakeDirResponse resp = FILESYSTEM__MAKE_DIR_RESPONSE__INIT;
        fs_pb_entry_fill(&one, &job->entry);
        resp.entry = &one.info;
        (void) rpc_reply(call, &resp.base);
        fs_pb_entry_done(&one);
        break;
    }
    case FS_OP_MOVE: {
        Filesystem__MoveResponse resp = FILESYSTEM__MOVE_RESPONSE__INIT;
        fs_pb_entry_fill(&one, &job->entry);
        resp.entry = &one.info;
        (void) rpc_reply(call, &resp.base);
        fs_pb_entry_done(&one);
        break;
    }
    case FS_OP_LIST_DIR: {
        Filesystem__ListDirResponse resp = FILESYSTEM__LIST_DIR_RESPONSE__INIT;
        size_t n = job->list.n;
        struct fs_pb_entry *all = n ? xcalloc(n, sizeof(*all)) : NULL;
        Filesystem__EntryInfo **ptrs = n ? xcalloc(n, sizeof(*ptrs)) : NULL;
        for (size_t i = 0; i < n; i++) {
            fs_pb_entry_fill(&all[i], &job->list.items[i]);
            ptrs[i] = &all[i].info;
        }
        resp.n_entries = n;
        resp.entries = ptrs;
        (void) rpc_reply(call, &resp.base);
        for (size_t i = 0; i < n; i++)
            fs_pb_entry_done(&all[i]);
        free(all);
        free(ptrs);
        break;
    }
    case FS_OP_REMOVE: {
        Filesystem__RemoveResponse resp = FILESYSTEM__REMOVE_RESPONSE__INIT;
        (void) rpc_reply(call, &resp.base);
        break;
    }
    }
}

static void on_work_done(uv_work_t *w, int status)
{
    struct fs_job *job = container_of(w, struct fs_job, work);
    struct rpc_call *call = job->call;
    if (call) {
        rpc_call_set_data(call, NULL);
        if (status == UV_ECANCELED)
            rpc_fail(call, RPC_UNAVAILABLE, "guestd is shutting down");
        else if (job->code != RPC_OK)
            rpc_fail(call, job->code, "%s", job->message);
        else
            reply(call, job);
    }
    job_free(job);
}

/* The call ends without us: the job finishes on its own and is freed in on_work_done. */
static void fs_on_cancel(struct rpc_call *call, enum rpc_code why)
{
    (void) why;
    struct fs_job *job = rpc_call_data(call);
    if (!job)
        return;
    job->call = NULL;
    atomic_store(&job->cancelled, true);
    rpc_call_set_data(call, NULL);
}

/* --- handlers (loop thread) ------------------------------------------------------------------- */

/*
 * envd's ExpandAndResolve: "" → the default workdir if set, else home ("" is refused instead
 * when `allow_empty` is false); "~" and "~/x" → home; relative → under home; then cleaned.
 * Answers the call on failure.
 */
int fs_resolve_path(struct rpc_call *call, const char *p, bool allow_empty, char **ret)
{
    struct rpc_ctx *ctx = rpc_call_ctx(call);
    const char *want = p;
    if (!*want) {
        if (!allow_empty) {
            rpc_fail(call, RPC_INVALID_ARGUMENT, "path is required");
            return -EINVAL;
        }
        want = ctx->state->default_workdir && *ctx->state->default_workdir
                       ? ctx->state->default_workdir
                       : "~";
    }
    int r = path_expand(want, ctx->user.home, ret);
    if (r == -EINVAL)
        rpc_fail(call, RPC_INVALID_ARGUMENT,
                 "failed to expand path '%s' for user '%s': cannot expand user-specific home dir",
                 want, ctx->user.name);
    else if (r == -ENAMETOOLONG)
        rpc_fail(call, RPC_INVALID_ARGUMENT, "path is longer than %d bytes", PATH_MAX_BYTES);
    else if (r < 0)
        rpc_fail(call, RPC_INVALID_ARGUMENT, "invalid path '%s'", want);
    return r;
}

static struct fs_job *job_new(struct rpc_call *call, enum fs_op op)
{
    struct rpc_ctx *ctx = rpc_call_ctx(call);
    struct fs_job *job = xcalloc(1, sizeof(*job));
    job->call = call;
    atomic_init(&job->cancelled, false);
    job->op = op;
    job->proto = rpc_call_is_proto(call);
    job->uid = ctx->user.uid;
    job->gid = ctx->user.gid;
    job->user_name = xstrdup(ctx->user.name);
    job->code = RPC_OK;
    fsop_names_init(&job->names);
    return job;
}

static void job_start(struct rpc_call *call, struct fs_job *job)
{
    uv_loop_t *loop = http_req_loop(rpc_call_http(call));
    rpc_call_set_data(call, job);
    int r = uv_queue_work(loop, &job->work, on_work, on_work_done);
    if (r < 0) {
        rpc_call_set_data(call, NULL);
        rpc_fail(call, RPC_INTERNAL, "cannot queue the operation: %s", uv_strerror(r));
        job_free(job);
    }
}

static void fs_stat(struct rpc_call *call, const ProtobufCMessage *in)
{
    const Filesystem__StatRequest *req = (const Filesystem__StatRequest *) in;
    struct fs_job *job = job_new(call, FS_OP_STAT);
    if (fs_resolve_path(call, req->path, true, &job->path) < 0) {
        job_free(job);
        return;
    }
    job_start(call, job);
}

static void fs_make_dir(struct rpc_call *call, const ProtobufCMessage *in)
{
    const Filesystem__MakeDirRequest *req = (const Filesystem__MakeDirRequest *) in;
    struct fs_job *job = job_new(call, FS_OP_MAKE_DIR);
    if (fs_resolve_path(call, req->path, true, &job->path) < 0) {
        job_free(job);
        return;
    }
    job_start(call, job);
}

static void fs_move(struct rpc_call *call, const ProtobufCMessage *in)
{
    const Filesystem__MoveRequest *req = (const Filesystem__MoveRequest *) in;
    struct fs_job *job = job_new(call, FS_OP_MOVE);
    /* An empty source or destination would move the home directory (envd resolves "" to the
     * default workdir or home); refuse it rather than act on a missing field. */
    if (fs_resolve_path(call, req->source, false, &job->path) < 0 ||
        fs_resolve_path(call, req->destination, false, &job->path2) < 0) {
        job_free(job);
        return;
    }
    job_start(call, job);
}

static void fs_list_dir(struct rpc_call *call, const ProtobufCMessage *in)
{
    const Filesystem__ListDirRequest *req = (const Filesystem__ListDirRequest *) in;
    struct fs_job *job = job_new(call, FS_OP_LIST_DIR);
    job->depth = req->depth ? req->depth : 1;
    if (fs_resolve_path(call, req->path, true, &job->path) < 0) {
        job_free(job);
        return;
    }
    job_start(call, job);
}

static void fs_remove(struct rpc_call *call, const ProtobufCMessage *in)
{
    const Filesystem__RemoveRequest *req = (const Filesystem__RemoveRequest *) in;
    struct fs_job *job = job_new(call, FS_OP_REMOVE);
    /* envd would resolve "" to the default workdir or home and delete it: refuse instead. */
    if (fs_resolve_path(call, req->path, false, &job->path) < 0) {
        job_free(job);
        return;
    }
    if (streq(job->path, "/")) {
        rpc_fail(call, RPC_INVALID_ARGUMENT, "refusing to remove '/'");
        job_free(job);
        return;
    }
    job_start(call, job);
}

const struct rpc_method fs_methods[] = {
        {.path = "/filesystem.Filesystem/Stat",
         .kind = RPC_UNARY,
         .input = &filesystem__stat_request__descriptor,
         .output = &filesystem__stat_response__descriptor,
         .handle = fs_stat,
         .on_cancel = fs_on_cancel},
        {.path = "/filesystem.Filesystem/MakeDir",
         .kind = RPC_UNARY,
         .input = &filesystem__make_dir_request__descriptor,
         .output = &filesystem__make_dir_response__descriptor,
         .handle = fs_make_dir,
         .on_cancel = fs_on_cancel},
        {.path = "/filesystem.Filesystem/Move",
         .kind = RPC_UNARY,
         .input = &filesystem__move_request__descriptor,
         .output = &filesystem__move_response__descriptor,
         .handle = fs_move,
         .on_cancel = fs_on_cancel},
        {.path = "/filesystem.Filesystem/ListDir",
         .kind = RPC_UNARY,
         .input = &filesystem__list_dir_request__descriptor,
         .output = &filesystem__list_dir_response__descriptor,
         .handle = fs_list_dir,
         .on_cancel = fs_on_cancel},
        {.path = "/filesystem.Filesystem/Remove",
         .kind = RPC_UNARY,
         .input = &filesystem__remove_request__descriptor,
         .output = &filesystem__remove_response__descriptor,
         .handle = fs_remove,
         .on_cancel = fs_on_cancel},
};
const size_t fs_methods_count = ARRAY_SIZE(fs_methods);

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Watch methods (see watch.h).
 *
 * Every consumer of a watch is a sink: a WatchDir stream, a guestd.v1 Watch stream or a polling
 * watcher. A sink queues the engine's events in order, bounded. Events that carry an entry
 * (include_entry: CREATE, WRITE and CHMOD) and rescan listings need file-system work as the
 * user; a fetch job does it on the threadpool for a batch of queued items at a time, and items
 * leave the queue strictly in order, each once its work is done. Streams send while their
 * connection is not congested (on_drain resumes them); work for a congested stream waits, so a
 * client that stops reading costs a bounded queue and nothing else.
 *
 * What happens when events are lost or pile up:
 *   - inotify overflow: envd streams end with internal "watcher error: fsnotify: queue or buffer
 *     overflow" (envd's text); polling watchers keep that error for their next poll; guestd.v1
 *     streams resync the watch and send a rescan event;
 *   - a queue past its bound: envd streams end with resource_exhausted; polling watchers stop
 *     and keep internal "too many events: …" for their next poll (envd's GetWatcherEvents has
 *     no way to say that events were dropped, and silently dropping them would be worse);
 *     guestd.v1 streams drop the queue and send a rescan event instead.
 *
 * Polling watchers are guestd's, not a connection's (as envd's): a watcher nobody polled for
 * WATCH_POLL_IDLE_MS is removed (envd keeps them until RemoveWatcher, which leaks watches and
 * memory for every client that forgets). Their ids are capabilities: any caller that knows one
 * may poll or remove it, as with envd.
 */
#include "rpc/watch.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>

#include <uv.h>

#include "agent-limits.h"
#include "base/alloc.h"
#include "base/log.h"
#include "base/macro.h"
#include "base/path.h"
#include "base/users.h"
#include "filesystem/filesystem.pb-c.h"
#include "fs/creds.h"
#include "fs/fsop.h"
#include "fs/watch.h"
#include "guestd/v1/filesystem.pb-c.h"
#include "http/http.h"
#include "rpc/fs.h"
#include "rpc/router.h"
#include "sys/state.h"

/* Events waiting to be sent on one stream. Sending goes on while the client reads, so this
 * bounds only what a slow or stalled client leaves behind (about 100 bytes per event). */
#define WATCH_QUEUE_MAX            16384
/* Events a polling watcher keeps between two GetWatcherEvents. */
#define WATCH_POLL_QUEUE_MAX       16384
/* Watches at once, streams and polling watchers together: every inotify record is offered to
 * each of them, so this also bounds the work per record. */
#define WATCH_MAX_WATCHES          1024
/* Polling watchers at once (they outlive connections, so they are bounded on their own). */
#define WATCH_MAX_POLLERS          256
/* A polling watcher nobody asked for events for this long is removed. */
#define WATCH_POLL_IDLE_MS         (10 * 60 * 1000)
/* How often idle polling watchers are looked for (only while there are any). */
#define WATCH_POLL_GC_MS           (60 * 1000)
/* Characters after the "w" of a watcher id (envd's shape: 20 of [a-z0-9]). */
#define WATCH_ID_CHARS             20
/* Queued items whose file-system work one fetch job does. */
#define WATCH_FETCH_BATCH          256
/* A rescan lists the tree as ListDir would, this deep for recursive watches (1 otherwise)... */
#define WATCH_RESCAN_MAX_DEPTH     WATCH_MAX_DEPTH
/* ...and at most this many entries; a bigger tree ends the stream with resource_exhausted. */
#define WATCH_RESCAN_MAX_ENTRIES   100000
/* Encoded bytes of one listed entry besides its strings (as in rpc/fs.c), to refuse a rescan
 * whose message would not fit LIMIT_RPC_MESSAGE_BYTES before building it. */
#define WATCH_ENTRY_JSON_OVERHEAD  224
#define WATCH_ENTRY_PROTO_OVERHEAD 80
/* Room for an error message. */
#define WATCH_MESSAGE_MAX          1024
/* fsnotify's ErrEventOverflow, as envd reports it. */
#define OVERFLOW_MESSAGE           "watcher error: fsnotify: queue or buffer overflow"

enum sink_kind {
    SINK_ENVD = 0, /* filesystem.Filesystem/WatchDir */
    SINK_GUESTD,   /* guestd.v1.Filesystem/Watch */
    SINK_POLL,     /* CreateWatcher */
};

struct item {
    struct item *next;
    uint64_t id;
    bool rescan;
    enum watch_event_type type;
    char *name;
    bool done;     /* nothing left to fetch */
    bool fetching; /* part of the fetch job in flight */
    bool has_entry;
    struct fsop_entry entry;
    struct fsop_list list; /* rescan */
    enum rpc_code code;    /* rescan: why the listing failed */
    char *message;
};

struct fetch;

struct sink {
    enum sink_kind kind;
    struct watch *w;       /* NULL once stopped */
    struct rpc_call *call; /* streams: the call; pollers: CreateWatcher until answered */
    char *root;
    bool recursive;
    bool include_entry;
    uid_t uid;
    gid_t gid;
    char *user;
    bool ready;
    struct item *head, *tail;
    size_t n;
    size_t n_work; /* items neither done nor being fetched */
    uint64_t next_id;
    struct fetch *fetch;
    uint64_t seq; /* guestd: the last sequence number sent */
    /* Polling watchers. */
    struct sink *prev, *next;
    char id[1 + WATCH_ID_CHARS + 1];
    uint64_t last_poll_ms;
    enum rpc_code fail_code; /* terminal error, RPC_OK while running */
    char *fail_message;
};

/* One item's work in a fetch job. */
struct fetch_item {
    uint64_t id;
    bool rescan;
    char *path;
    bool has_entry;
    struct fsop_entry entry;
    struct fsop_list list;
    enum rpc_code code;
    char message[WATCH_MESSAGE_MAX];
};

struct fetch {
    uv_work_t work;
    struct sink *sink; /* NULL once the sink is gone */
    atomic_bool cancelled;
    uid_t uid;
    gid_t gid;
    char *user;
    char *root;
    bool recursive;
    bool proto;
    struct fetch_item *items;
    size_t n;
};

/* The service's state: one engine for guestd, the polling watchers and their collector. */
static struct {
    uv_loop_t *loop;
    struct watch_engine *engine;
    size_t n_sinks;
    struct sink *pollers;
    size_t n_pollers;
    uv_timer_t *gc; /* only while pollers exist */
} svc;

static void sink_pump(struct sink *s);
static void sink_free(struct sink *s);

/* --- items ------------------------------------------------------------------------------------ */

static void item_free(struct item *it)
{
    free(it->name);
    fsop_entry_done(&it->entry);
    fsop_list_done(&it->list);
    free(it->message);
    free(it);
}

static bool wants_entry(enum watch_event_type t)
{
    return t == WATCH_EVENT_CREATE || t == WATCH_EVENT_WRITE || t == WATCH_EVENT_CHMOD;
}

static void queue_push(struct sink *s, struct item *it)
{
    it->id = ++s->next_id;
    if (!it->done)
        s->n_work++;
    if (s->tail)
        s->tail->next = it;
    else
        s->head = it;
    s->tail = it;
    s->n++;
}

static struct item *queue_pop(struct sink *s)
{
    struct item *it = s->head;
    s->head = it->next;
    if (!s->head)
        s->tail = NULL;
    s->n--;
    it->next = NULL;
    return it;
}

static void queue_clear(struct sink *s)
{
    while (s->head)
        item_free(queue_pop(s));
    s->n_work = 0;
}

/* A rescan: the listing is fetched when the item's turn comes. */
static void queue_rescan(struct sink *s)
{
    struct item *it = xcalloc(1, sizeof(*it));
    it->rescan = true;
    queue_push(s, it);
}

static void pb_event_fill(Filesystem__FilesystemEvent *ev, struct fs_pb_entry *pe, struct item *it)
{
    filesystem__filesystem_event__init(ev);
    ev->name = it->name;
    ev->type = (Filesystem__EventType) it->type;
    if (it->has_entry) {
        fs_pb_entry_fill(pe, &it->entry);
        ev->_entry_case = FILESYSTEM__FILESYSTEM_EVENT___ENTRY_ENTRY;
        ev->entry = &pe->info;
    }
}

/* --- error texts ------------------------------------------------------------------------------ */

/* Go's text for an errno: glibc's, starting in lower case ("no such file or directory"). */
static const char *go_strerror(int r, char *buf, size_t len)
{
    (void) snprintf(buf, len, "%s", strerror(r < 0 ? -r : r));
    if (buf[0] >= 'A' && buf[0] <= 'Z')
        buf[0] = (char) (buf[0] - 'A' + 'a');
    return buf;
}

static bool is_permission(int r)
{
    return r == -EACCES || r == -EPERM;
}

/*
 * The answer to a watch that could not be set up, in envd's words where envd has any: it
 * stats the path (not_found / internal), checks for a directory and a network mount
 * (invalid_argument) and fails to add the watch with internal. envd runs as root and never
 * meets permission errors; guestd checks as the user and answers permission_denied in the
 * form the other filesystem methods use ("permission denied: open '/root/x'").
 */
static enum rpc_code setup_error(const struct watch_error *err, const char *root, char *msg,
                                 size_t len)
{
    char why[128];
    const char *path = err->path ? err->path : root;
    go_strerror(err->err, why, sizeof(why));
    switch (err->step) {
    case WATCH_STEP_STAT:
        if (err->err == -ENOENT) {
            (void) snprintf(msg, len, "path %s not found: stat %s: %s", root, path, why);
            return RPC_NOT_FOUND;
        }
        if (is_permission(err->err)) {
            (void) snprintf(msg, len, "%s: stat '%s'", why, path);
            return RPC_PERMISSION_DENIED;
        }
        (void) snprintf(msg, len, "error statting path %s: stat %s: %s", root, path, why);
        return RPC_INTERNAL;
    case WATCH_STEP_NOT_DIR:
        /* envd wraps a nil error here; Go prints that as "%!w(<nil>)", and so do we. */
        (void) snprintf(msg, len, "path %s not a directory: %%!w(<nil>)", root);
        return RPC_INVALID_ARGUMENT;
    case WATCH_STEP_STATFS:
        (void) snprintf(msg, len, "error checking mount status: failed to statfs %s: %s", path,
                        why);
        return RPC_INTERNAL;
    case WATCH_STEP_NETWORK:
        (void) snprintf(msg, len, "cannot watch path on network filesystem: %s", root);
        return RPC_INVALID_ARGUMENT;
    case WATCH_STEP_OPEN:
        if (is_permission(err->err)) {
            (void) snprintf(msg, len, "%s: open '%s'", why, path);
            return RPC_PERMISSION_DENIED;
        }
        if (err->err == -ENOENT) {
            (void) snprintf(msg, len, "path %s not found: open %s: %s", root, path, why);
            return RPC_NOT_FOUND;
        }
        (void) snprintf(msg, len, "error adding path %s to watcher: open %s: %s", root, path, why);
        return RPC_INTERNAL;
    case WATCH_STEP_ADD:
        if (err->err == -ENOSPC) {
            (void) snprintf(msg, len,
                            "error adding path %s to watcher: %s (the kernel's limit on inotify "
                            "watches, fs.inotify.max_user_watches, is reached)",
                            path, why);
            return RPC_RESOURCE_EXHAUSTED;
        }
        if (is_permission(err->err)) {
            (void) snprintf(msg, len, "%s: inotify_add_watch '%s'", why, path);
            return RPC_PERMISSION_DENIED;
        }
        (void) snprintf(msg, len, "error adding path %s to watcher: %s", path, why);
        return RPC_INTERNAL;
    case WATCH_STEP_LIMIT:
        (void) snprintf(msg, len,
                        "too many watched directories: guestd watches at most %d at once "
                        "(reached at %s)",
                        WATCH_MAX_DESCRIPTORS, path);
        return RPC_RESOURCE_EXHAUSTED;
    case WATCH_STEP_ENGINE:
        (void) snprintf(msg, len, "error creating watcher: %s", why);
        return err->err == -EMFILE || err->err == -ENFILE ? RPC_RESOURCE_EXHAUSTED : RPC_INTERNAL;
    case WATCH_STEP_USER:
        (void) snprintf(msg, len, "cannot act as the user: %s", why);
        return RPC_INTERNAL;
    case WATCH_STEP_NONE:
        break;
    }
    (void) snprintf(msg, len, "watcher error: %s", why);
    return RPC_INTERNAL;
}

/* --- fetch jobs (file-system work as the user) ------------------------------------------------ */

static void fetch_free(struct fetch *f)
{
    for (size_t i = 0; i < f->n; i++) {
        free(f->items[i].path);
        fsop_entry_done(&f->items[i].entry);
        fsop_list_done(&f->items[i].list);
    }
    free(f->items);
    free(f->user);
    free(f->root);
    free(f);
}

static void fetch_fail(struct fetch_item *it, enum rpc_code code, const char *fmt, ...)
        _printf_(3, 4);
static void fetch_fail(struct fetch_item *it, enum rpc_code code, const char *fmt, ...)
{
    va_list ap;
    it->code = code;
    va_start(ap, fmt);
    (void) vsnprintf(it->message, sizeof(it->message), fmt, ap);
    va_end(ap);
}

/* A rescan's listing: the tree as ListDir would list it. A root that is gone lists nothing. */
static void fetch_listing(struct fetch *f, struct fetch_item *it, struct fsop_names *names)
{
    struct fsop_err e = {0};
    char why[128];
    char *resolved = NULL;
    struct stat st;
    int r = fsop_resolve(f->root, &resolved, &e);
    if (r == -ENOENT || r == -ENOTDIR)
        goto out;
    if (r < 0) {
        fetch_fail(it, is_permission(r) ? RPC_PERMISSION_DENIED : RPC_INTERNAL,
                   "cannot rescan '%s': %s", f->root, go_strerror(r, why, sizeof(why)));
        goto out;
    }
    if (stat(resolved, &st) < 0 || !S_ISDIR(st.st_mode))
        goto out;
    const struct fsop_list_opts opts = {
            .depth = f->recursive ? WATCH_RESCAN_MAX_DEPTH : 1,
            .max_entries = WATCH_RESCAN_MAX_ENTRIES,
            .cancel = &f->cancelled,
    };
    r = fsop_list(f->root, resolved, &opts, names, &it->list, &e);
    if (r == -E2BIG)
        fetch_fail(it, RPC_RESOURCE_EXHAUSTED,
                   "too many entries under '%s' to rescan: a rescan lists at most %d", f->root,
                   WATCH_RESCAN_MAX_ENTRIES);
    else if (r == -ENOENT)
        r = 0; /* the root went away meanwhile */
    else if (r < 0)
        fetch_fail(it, is_permission(r) ? RPC_PERMISSION_DENIED : RPC_INTERNAL,
                   "cannot rescan '%s': %s %s: %s", f->root, e.op ? e.op : "list",
                   e.path ? e.path : f->root, go_strerror(r, why, sizeof(why)));
    else if (it->list.text_bytes + it->list.n * (f->proto ? WATCH_ENTRY_PROTO_OVERHEAD
                                                          : WATCH_ENTRY_JSON_OVERHEAD) >
             LIMIT_RPC_MESSAGE_BYTES)
        fetch_fail(it, RPC_RESOURCE_EXHAUSTED,
                   "the rescan of '%s' is larger than the %d-byte message limit", f->root,
                   LIMIT_RPC_MESSAGE_BYTES);
out:
    free(resolved);
    fsop_err_done(&e);
}

static void on_fetch_work(uv_work_t *work)
{
    struct fetch *f = container_of(work, struct fetch, work);
    gid_t groups[USERS_MAX_GROUPS];
    struct creds_saved saved;
    struct fsop_names names;
    char why[128];

    if (atomic_load(&f->cancelled))
        return;
    /* Read as root, before the switch: the group file is readable by all anyway. */
    int n = users_groups(f->user, f->gid, groups, USERS_MAX_GROUPS);
    int r = n < 0 ? n : creds_enter(f->uid, f->gid, groups, (size_t) n, &saved);
    if (r < 0) {
        /* Entries are best effort (as envd's); a rescan cannot be. */
        for (size_t i = 0; i < f->n; i++)
            if (f->items[i].rescan)
                fetch_fail(&f->items[i], RPC_INTERNAL, "cannot act as user '%s': %s", f->user,
                           go_strerror(r, why, sizeof(why)));
        return;
    }
    fsop_names_init(&names);
    for (size_t i = 0; i < f->n && !atomic_load(&f->cancelled); i++) {
        struct fetch_item *it = &f->items[i];
        if (it->rescan) {
            fetch_listing(f, it, &names);
            continue;
        }
        /* envd's eventEntryInfo: the entry if the path still exists, nothing otherwise. */
        struct fsop_err e = {0};
        it->has_entry = fsop_entry_info(it->path, &names, &it->entry, &e) == 0;
        fsop_err_done(&e);
    }
    /* Always, whatever the work returned: this thread serves other jobs next. */
    creds_leave(&saved);
}

static void on_fetch_done(uv_work_t *work, int status)
{
    struct fetch *f = container_of(work, struct fetch, work);
    struct sink *s = f->sink;
    (void) status;
    if (s) {
        s->fetch = NULL;
        /* Both lists are in id order; items dropped meanwhile are simply not found. */
        struct item *it = s->head;
        for (size_t i = 0; i < f->n; i++) {
            struct fetch_item *fi = &f->items[i];
            while (it && it->id < fi->id)
                it = it->next;
            if (!it || it->id != fi->id)
                continue;
            it->fetching = false;
            it->done = true;
            if (fi->has_entry) {
                it->entry = fi->entry;
                memset(&fi->entry, 0, sizeof(fi->entry));
                it->has_entry = true;
            }
            if (it->rescan) {
                it->list = fi->list;
                memset(&fi->list, 0, sizeof(fi->list));
                it->code = fi->code;
                if (fi->code != RPC_OK)
                    it->message = xstrdup(fi->message);
            }
        }
        sink_pump(s);
    }
    fetch_free(f);
}

static char *event_path(const char *root, const char *name)
{
    if (streq(name, "."))
        return xstrdup(root);
    char *p = NULL;
    if (asprintf(&p, "%s%s%s", root, root[strlen(root) - 1] == '/' ? "" : "/", name) < 0)
        alloc_oom();
    return p;
}

/* Starts the work for up to WATCH_FETCH_BATCH queued items that need it. */
static void fetch_start(struct sink *s)
{
    if (s->n_work == 0)
        return;
    size_t n = MIN(s->n_work, (size_t) WATCH_FETCH_BATCH);
    struct fetch *f = xcalloc(1, sizeof(*f));
    f->sink = s;
    atomic_init(&f->cancelled, false);
    f->uid = s->uid;
    f->gid = s->gid;
    f->user = xstrdup(s->user);
    f->root = xstrdup(s->root);
    f->recursive = s->recursive;
    f->proto = s->call && rpc_call_is_proto(s->call);
    f->items = xcalloc(n, sizeof(*f->items));
    for (struct item *it = s->head; it && f->n < n; it = it->next) {
        if (it->done || it->fetching)
            continue;
        struct fetch_item *fi = &f->items[f->n++];
        fi->id = it->id;
        fi->rescan = it->rescan;
        fi->code = RPC_OK;
        if (!it->rescan)
            fi->path = event_path(s->root, it->name);
        it->fetching = true;
        s->n_work--;
    }
    int r = uv_queue_work(svc.loop, &f->work, on_fetch_work, on_fetch_done);
    if (r < 0) {
        /* Cannot happen on a live loop; deliver the items without their work. */
        log_debug("watch: cannot queue entry work: %s", uv_strerror(r));
        for (struct item *it = s->head; it; it = it->next)
            if (it->fetching)
                it->fetching = false, it->done = true;
        fetch_free(f);
        return;
    }
    s->fetch = f;
}

/* --- sending ---------------------------------------------------------------------------------- */

static void send_event(struct sink *s, struct item *it)
{
    Filesystem__FilesystemEvent ev;
    struct fs_pb_entry pe;
    pb_event_fill(&ev, &pe, it);
    if (s->kind == SINK_ENVD) {
        Filesystem__WatchDirResponse r = FILESYSTEM__WATCH_DIR_RESPONSE__INIT;
        r.event_case = FILESYSTEM__WATCH_DIR_RESPONSE__EVENT_FILESYSTEM;
        r.filesystem = &ev;
        (void) rpc_send(s->call, &r.base);
    } else {
        Guestd__V1__FsWatchResponse r = GUESTD__V1__FS_WATCH_RESPONSE__INIT;
        r.event_case = GUESTD__V1__FS_WATCH_RESPONSE__EVENT_FILESYSTEM;
        r.filesystem = &ev;
        r.sequence = ++s->seq;
        (void) rpc_send(s->call, &r.base);
    }
    if (it->has_entry)
        fs_pb_entry_done(&pe);
}

static void send_rescan(struct sink *s, struct item *it)
{
    Guestd__V1__FsWatchResponse r = GUESTD__V1__FS_WATCH_RESPONSE__INIT;
    Guestd__V1__FsWatchResponse__Rescan rs = GUESTD__V1__FS_WATCH_RESPONSE__RESCAN__INIT;
    size_t n = it->list.n;
    struct fs_pb_entry *all = n ? xcalloc(n, sizeof(*all)) : NULL;
    Filesystem__EntryInfo **ptrs = n ? xcalloc(n, sizeof(*ptrs)) : NULL;
    for (size_t i = 0; i < n; i++) {
        fs_pb_entry_fill(&all[i], &it->list.items[i]);
        ptrs[i] = &all[i].info;
    }
    rs.n_entries = n;
    rs.entries = ptrs;
    r.event_case = GUESTD__V1__FS_WATCH_RESPONSE__EVENT_RESCAN;
    r.rescan = &rs;
    r.sequence = ++s->seq;
    int rc = rpc_send(s->call, &r.base);
    if (rc < 0 && rc != -ECANCELED)
        log_debug("watch: cannot send a rescan of '%s': %s", s->root, strerror(-rc));
    for (size_t i = 0; i < n; i++)
        fs_pb_entry_done(&all[i]);
    free(all);
    free(ptrs);
}

/* Ends a stream: the sink goes first, then the call (which may not be touched afterwards). */
static void stream_end(struct sink *s, enum rpc_code code, const char *msg)
{
    struct rpc_call *call = s->call;
    s->call = NULL;
    rpc_call_set_data(call, NULL);
    sink_free(s);
    if (code == RPC_OK)
        rpc_end(call, RPC_OK, NULL);
    else
        rpc_end(call, code, "%s", msg);
}

/* A polling watcher's terminal error: it stops watching and answers the next polls with it. */
static void poller_fail(struct sink *s, enum rpc_code code, const char *msg)
{
    if (s->fail_code != RPC_OK)
        return;
    s->fail_code = code;
    s->fail_message = xstrdup(msg);
    watch_close(s->w);
    s->w = NULL;
    queue_clear(s);
}

/* Sends what is ready, in order, while the connection takes it; starts pending work. */
static void sink_pump(struct sink *s)
{
    if (s->kind != SINK_POLL) {
        while (s->head && s->head->done && !rpc_call_congested(s->call)) {
            struct item *it = queue_pop(s);
            if (it->rescan && it->code != RPC_OK) {
                char msg[WATCH_MESSAGE_MAX];
                (void) snprintf(msg, sizeof(msg), "%s", it->message ? it->message : "");
                enum rpc_code code = it->code;
                item_free(it);
                stream_end(s, code, msg);
                return;
            }
            if (it->rescan)
                send_rescan(s, it);
            else
                send_event(s, it);
            item_free(it);
        }
        if (rpc_call_congested(s->call))
            return; /* on_drain resumes, work included */
    }
    if (!s->fetch)
        fetch_start(s);
}

/* --- engine callbacks ------------------------------------------------------------------------- */

static void on_watch_event(struct watch *w, enum watch_event_type type, const char *name,
                           void *userdata)
{
    struct sink *s = userdata;
    char msg[WATCH_MESSAGE_MAX];
    (void) w;
    size_t max = s->kind == SINK_POLL ? WATCH_POLL_QUEUE_MAX : WATCH_QUEUE_MAX;
    if (s->n >= max) {
        switch (s->kind) {
        case SINK_ENVD:
            (void) snprintf(msg, sizeof(msg),
                            "slow consumer: more than %d filesystem events are waiting to be "
                            "sent; reconnect",
                            WATCH_QUEUE_MAX);
            stream_end(s, RPC_RESOURCE_EXHAUSTED, msg);
            return;
        case SINK_POLL:
            (void) snprintf(msg, sizeof(msg),
                            "too many events: more than %d events were not fetched with "
                            "GetWatcherEvents; the watcher was stopped",
                            WATCH_POLL_QUEUE_MAX);
            poller_fail(s, RPC_INTERNAL, msg);
            return;
        case SINK_GUESTD:
            /* A fresh listing replaces everything not sent yet, this event included. */
            queue_clear(s);
            queue_rescan(s);
            sink_pump(s);
            return;
        }
    }
    struct item *it = xcalloc(1, sizeof(*it));
    it->type = type;
    it->name = xstrdup(name);
    it->done = !(s->include_entry && wants_entry(type));
    queue_push(s, it);
    sink_pump(s);
}

static void on_watch_overflow(struct watch *w, void *userdata)
{
    struct sink *s = userdata;
    switch (s->kind) {
    case SINK_ENVD:
        stream_end(s, RPC_INTERNAL, OVERFLOW_MESSAGE);
        return;
    case SINK_POLL:
        poller_fail(s, RPC_INTERNAL, OVERFLOW_MESSAGE);
        return;
    case SINK_GUESTD: {
        /* Walk the tree again (directories created meanwhile were missed), then list it. */
        int r = watch_resync(w);
        if (r < 0 && r != -EBUSY) {
            char msg[WATCH_MESSAGE_MAX];
            (void) snprintf(msg, sizeof(msg), "cannot resync the watch of '%s': %s", s->root,
                            strerror(-r));
            stream_end(s, RPC_INTERNAL, msg);
        }
        return;
    }
    }
}

static void on_watch_resynced(struct watch *w, const struct watch_error *err, void *userdata)
{
    struct sink *s = userdata;
    char msg[WATCH_MESSAGE_MAX];
    (void) w;
    if (err) {
        enum rpc_code code = setup_error(err, s->root, msg, sizeof(msg));
        stream_end(s, code, msg);
        return;
    }
    if (s->n >= WATCH_QUEUE_MAX)
        queue_clear(s);
    queue_rescan(s);
    sink_pump(s);
}

static void on_watch_error(struct watch *w, const struct watch_error *err, void *userdata)
{
    struct sink *s = userdata;
    char msg[WATCH_MESSAGE_MAX];
    (void) w;
    enum rpc_code code = setup_error(err, s->root, msg, sizeof(msg));
    if (s->kind == SINK_POLL)
        poller_fail(s, code, msg);
    else
        stream_end(s, code, msg);
}

static void stream_ready(struct sink *s)
{
    if (s->kind == SINK_ENVD) {
        Filesystem__WatchDirResponse r = FILESYSTEM__WATCH_DIR_RESPONSE__INIT;
        Filesystem__WatchDirResponse__StartEvent st =
                FILESYSTEM__WATCH_DIR_RESPONSE__START_EVENT__INIT;
        r.event_case = FILESYSTEM__WATCH_DIR_RESPONSE__EVENT_START;
        r.start = &st;
        (void) rpc_send(s->call, &r.base);
    } else {
        Guestd__V1__FsWatchResponse r = GUESTD__V1__FS_WATCH_RESPONSE__INIT;
        Guestd__V1__FsWatchResponse__Started st = GUESTD__V1__FS_WATCH_RESPONSE__STARTED__INIT;
        r.event_case = GUESTD__V1__FS_WATCH_RESPONSE__EVENT_START;
        r.start = &st;
        r.sequence = ++s->seq;
        (void) rpc_send(s->call, &r.base);
    }
}

static void on_watch_ready(struct watch *w, const struct watch_error *err, void *userdata)
{
    struct sink *s = userdata;
    char msg[WATCH_MESSAGE_MAX];
    (void) w;
    if (err) {
        enum rpc_code code = setup_error(err, s->root, msg, sizeof(msg));
        struct rpc_call *call = s->call;
        s->call = NULL;
        rpc_call_set_data(call, NULL);
        sink_free(s);
        rpc_end(call, code, "%s", msg);
        return;
    }
    s->ready = true;
    if (s->kind != SINK_POLL) {
        stream_ready(s);
        return;
    }
    Filesystem__CreateWatcherResponse resp = FILESYSTEM__CREATE_WATCHER_RESPONSE__INIT;
    resp.watcher_id = s->id;
    s->last_poll_ms = uv_now(svc.loop);
    struct rpc_call *call = s->call;
    s->call = NULL;
    rpc_call_set_data(call, NULL);
    (void) rpc_reply(call, &resp.base);
}

static const struct watch_ops sink_ops = {
        .on_ready = on_watch_ready,
        .on_event = on_watch_event,
        .on_overflow = on_watch_overflow,
        .on_resynced = on_watch_resynced,
        .on_error = on_watch_error,
};

/* --- sinks ------------------------------------------------------------------------------------ */

static void on_gc_closed(uv_handle_t *h)
{
    free(h);
}

static void gc_stop(void)
{
    if (!svc.gc)
        return;
    uv_close((uv_handle_t *) svc.gc, on_gc_closed);
    svc.gc = NULL;
}

static void sink_free(struct sink *s)
{
    if (!s)
        return;
    watch_close(s->w);
    if (s->fetch) {
        s->fetch->sink = NULL;
        atomic_store(&s->fetch->cancelled, true);
    }
    queue_clear(s);
    if (s->kind == SINK_POLL) {
        if (s->prev)
            s->prev->next = s->next;
        else
            svc.pollers = s->next;
        if (s->next)
            s->next->prev = s->prev;
        svc.n_pollers--;
        if (svc.n_pollers == 0)
            gc_stop();
    }
    svc.n_sinks--;
    free(s->root);
    free(s->user);
    free(s->fail_message);
    free(s);
}

void watch_service_shutdown(void)
{
    /* Streams end with their connections; polling watchers belong to guestd and go here. */
    struct sink *next;
    for (struct sink *s = svc.pollers; s; s = next) {
        next = s->next;
        sink_free(s);
    }
}

/* Removes polling watchers nobody polled for WATCH_POLL_IDLE_MS. */
static void on_gc(uv_timer_t *t)
{
    uint64_t now = uv_now(t->loop);
    struct sink *next;
    for (struct sink *s = svc.pollers; s; s = next) {
        next = s->next;
        if (s->ready && now - s->last_poll_ms >= WATCH_POLL_IDLE_MS) {
            log_info("removing watcher %s of '%s': not polled for %d minutes", s->id, s->root,
                     WATCH_POLL_IDLE_MS / 60000);
            sink_free(s);
        }
    }
}

static void gc_start(void)
{
    if (svc.gc)
        return;
    svc.gc = xcalloc(1, sizeof(*svc.gc));
    (void) uv_timer_init(svc.loop, svc.gc);
    (void) uv_timer_start(svc.gc, on_gc, WATCH_POLL_GC_MS, WATCH_POLL_GC_MS);
    /* Idle watchers must not keep guestd's loop (and a shutdown) waiting. */
    uv_unref((uv_handle_t *) svc.gc);
}

/* envd's watcher ids: "w" and 20 characters of [a-z0-9], from the kernel's CSPRNG. */
static int make_id(char out[1 + WATCH_ID_CHARS + 1])
{
    static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789";
    const size_t radix = sizeof(alphabet) - 1;
    size_t n = 0;
    out[n++] = 'w';
    while (n < 1 + WATCH_ID_CHARS) {
        uint8_t b[32];
        if (getrandom(b, sizeof(b), 0) != (ssize_t) sizeof(b))
            return -errno ? -errno : -EIO;
        /* Bytes past the largest multiple of 36 are dropped, so every character is uniform. */
        for (size_t i = 0; i < sizeof(b) && n < 1 + WATCH_ID_CHARS; i++)
            if (b[i] < 256 / radix * radix)
                out[n++] = alphabet[b[i] % radix];
    }
    out[n] = '\0';
    return 0;
}

static struct sink *poller_find(const char *id)
{
    for (struct sink *s = svc.pollers; s; s = s->next)
        if (s->ready && streq(s->id, id))
            return s;
    return NULL;
}

/* Starts a watch for `call`; the sink answers the call once the walk is done. */
static void sink_start(struct rpc_call *call, enum sink_kind kind, const char *path, bool recursive,
                       bool include_entry, bool allow_network_mounts)
{
    struct rpc_ctx *ctx = rpc_call_ctx(call);
    char msg[WATCH_MESSAGE_MAX];
    char *root = NULL;
    int r;

    if (fs_resolve_path(call, path, true, &root) < 0)
        return;
    if (svc.n_sinks >= WATCH_MAX_WATCHES) {
        rpc_fail(call, RPC_RESOURCE_EXHAUSTED, "too many watches: guestd keeps at most %d at once",
                 WATCH_MAX_WATCHES);
        free(root);
        return;
    }
    if (kind == SINK_POLL && svc.n_pollers >= WATCH_MAX_POLLERS) {
        rpc_fail(call, RPC_RESOURCE_EXHAUSTED,
                 "too many watchers: guestd keeps at most %d at once; remove unused ones",
                 WATCH_MAX_POLLERS);
        free(root);
        return;
    }
    if (!svc.engine) {
        svc.loop = http_req_loop(rpc_call_http(call));
        r = watch_engine_new(svc.loop, &svc.engine);
        if (r < 0) {
            rpc_fail(call, RPC_INTERNAL, "error creating watcher: %s", strerror(-r));
            free(root);
            return;
        }
    }
    char id[1 + WATCH_ID_CHARS + 1] = "";
    if (kind == SINK_POLL) {
        do {
            r = make_id(id);
        } while (r == 0 && poller_find(id));
        if (r < 0) {
            rpc_fail(call, RPC_INTERNAL, "cannot make a watcher id: %s", strerror(-r));
            free(root);
            return;
        }
    }
    struct sink *s = xcalloc(1, sizeof(*s));
    s->kind = kind;
    s->call = call;
    s->root = root;
    s->recursive = recursive;
    s->include_entry = include_entry;
    s->uid = ctx->user.uid;
    s->gid = ctx->user.gid;
    s->user = xstrdup(ctx->user.name);
    s->fail_code = RPC_OK;
    svc.n_sinks++;
    if (kind == SINK_POLL) {
        memcpy(s->id, id, sizeof(s->id));
        s->next = svc.pollers;
        if (svc.pollers)
            svc.pollers->prev = s;
        svc.pollers = s;
        svc.n_pollers++;
        gc_start();
    }
    const struct watch_params p = {
            .root = s->root,
            .recursive = recursive,
            .allow_network_mounts = allow_network_mounts,
            .uid = s->uid,
            .gid = s->gid,
            .user = s->user,
    };
    struct watch_error err = {0};
    r = watch_new(svc.engine, &p, &sink_ops, s, &s->w, &err);
    if (r < 0) {
        enum rpc_code code = setup_error(&err, s->root, msg, sizeof(msg));
        watch_error_done(&err);
        sink_free(s);
        rpc_fail(call, code, "%s", msg);
        return;
    }
    rpc_call_set_data(call, s);
}

/* --- handlers --------------------------------------------------------------------------------- */

static void envd_watch_dir(struct rpc_call *call, const ProtobufCMessage *in)
{
    const Filesystem__WatchDirRequest *req = (const Filesystem__WatchDirRequest *) in;
    sink_start(call, SINK_ENVD, req->path, req->recursive, req->include_entry,
               req->allow_network_mounts);
}

static void guestd_watch(struct rpc_call *call, const ProtobufCMessage *in)
{
    const Guestd__V1__FsWatchRequest *req = (const Guestd__V1__FsWatchRequest *) in;
    const Filesystem__WatchDirRequest *w = req->watch;
    if (!w) {
        sink_start(call, SINK_GUESTD, "", false, false, false);
        return;
    }
    sink_start(call, SINK_GUESTD, w->path, w->recursive, w->include_entry, w->allow_network_mounts);
}

static void envd_create_watcher(struct rpc_call *call, const ProtobufCMessage *in)
{
    const Filesystem__CreateWatcherRequest *req = (const Filesystem__CreateWatcherRequest *) in;
    sink_start(call, SINK_POLL, req->path, req->recursive, req->include_entry,
               req->allow_network_mounts);
}

static void envd_get_watcher_events(struct rpc_call *call, const ProtobufCMessage *in)
{
    const Filesystem__GetWatcherEventsRequest *req =
            (const Filesystem__GetWatcherEventsRequest *) in;
    struct sink *s = poller_find(req->watcher_id);
    if (!s) {
        rpc_fail(call, RPC_NOT_FOUND, "watcher with id %s not found", req->watcher_id);
        return;
    }
    s->last_poll_ms = uv_now(svc.loop);
    if (s->fail_code != RPC_OK) {
        rpc_fail(call, s->fail_code, "%s", s->fail_message);
        return;
    }
    /* The events whose entry work is done, in order; the rest waits for the next poll. */
    size_t n = 0;
    for (struct item *it = s->head; it && it->done; it = it->next)
        n++;
    Filesystem__GetWatcherEventsResponse resp = FILESYSTEM__GET_WATCHER_EVENTS_RESPONSE__INIT;
    Filesystem__FilesystemEvent *evs = n ? xcalloc(n, sizeof(*evs)) : NULL;
    Filesystem__FilesystemEvent **ptrs = n ? xcalloc(n, sizeof(*ptrs)) : NULL;
    struct fs_pb_entry *pes = n ? xcalloc(n, sizeof(*pes)) : NULL;
    struct item **taken = n ? xcalloc(n, sizeof(*taken)) : NULL;
    for (size_t i = 0; i < n; i++) {
        taken[i] = queue_pop(s);
        pb_event_fill(&evs[i], &pes[i], taken[i]);
        ptrs[i] = &evs[i];
    }
    resp.n_events = n;
    resp.events = ptrs;
    (void) rpc_reply(call, &resp.base);
    for (size_t i = 0; i < n; i++) {
        if (taken[i]->has_entry)
            fs_pb_entry_done(&pes[i]);
        item_free(taken[i]);
    }
    free(evs);
    free(ptrs);
    free(pes);
    free(taken);
}

static void envd_remove_watcher(struct rpc_call *call, const ProtobufCMessage *in)
{
    const Filesystem__RemoveWatcherRequest *req = (const Filesystem__RemoveWatcherRequest *) in;
    Filesystem__RemoveWatcherResponse resp = FILESYSTEM__REMOVE_WATCHER_RESPONSE__INIT;
    struct sink *s = poller_find(req->watcher_id);
    if (!s) {
        rpc_fail(call, RPC_NOT_FOUND, "watcher with id %s not found", req->watcher_id);
        return;
    }
    sink_free(s);
    (void) rpc_reply(call, &resp.base);
}

/* The client left or the deadline passed: the watch ends with the call. For CreateWatcher this
 * only happens before the watcher was answered, and it is not kept either. */
static void watch_on_cancel(struct rpc_call *call, enum rpc_code why)
{
    struct sink *s = rpc_call_data(call);
    (void) why;
    if (!s)
        return;
    rpc_call_set_data(call, NULL);
    s->call = NULL;
    sink_free(s);
}

static void watch_on_drain(struct rpc_call *call)
{
    struct sink *s = rpc_call_data(call);
    if (s && s->ready)
        sink_pump(s);
}

static const Filesystem__WatchDirResponse__KeepAlive ka_envd_inner =
        FILESYSTEM__WATCH_DIR_RESPONSE__KEEP_ALIVE__INIT;
static const Filesystem__WatchDirResponse ka_envd = {
        .base = PROTOBUF_C_MESSAGE_INIT(&filesystem__watch_dir_response__descriptor),
        .event_case = FILESYSTEM__WATCH_DIR_RESPONSE__EVENT_KEEPALIVE,
        .keepalive = (Filesystem__WatchDirResponse__KeepAlive *) &ka_envd_inner,
};
/* Keepalives are not events: they carry no sequence number. */
static const Guestd__V1__FsWatchResponse__KeepAlive ka_guestd_inner =
        GUESTD__V1__FS_WATCH_RESPONSE__KEEP_ALIVE__INIT;
static const Guestd__V1__FsWatchResponse ka_guestd = {
        .base = PROTOBUF_C_MESSAGE_INIT(&guestd__v1__fs_watch_response__descriptor),
        .event_case = GUESTD__V1__FS_WATCH_RESPONSE__EVENT_KEEPALIVE,
        .keepalive = (Guestd__V1__FsWatchResponse__KeepAlive *) &ka_guestd_inner,
};

const struct rpc_method watch_methods[] = {
        {.path = "/filesystem.Filesystem/WatchDir",
         .kind = RPC_SERVER_STREAM,
         .input = &filesystem__watch_dir_request__descriptor,
         .output = &filesystem__watch_dir_response__descriptor,
         .handle = envd_watch_dir,
         .on_cancel = watch_on_cancel,
         .on_drain = watch_on_drain,
         .keepalive = &ka_envd.base},
        {.path = "/filesystem.Filesystem/CreateWatcher",
         .kind = RPC_UNARY,
         .input = &filesystem__create_watcher_request__descriptor,
         .output = &filesystem__create_watcher_response__descriptor,
         .handle = envd_create_watcher,
         .on_cancel = watch_on_cancel},
        {.path = "/filesystem.Filesystem/GetWatcherEvents",
         .kind = RPC_UNARY,
         .input = &filesystem__get_watcher_events_request__descriptor,
         .output = &filesystem__get_watcher_events_response__descriptor,
         .handle = envd_get_watcher_events},
        {.path = "/filesystem.Filesystem/RemoveWatcher",
         .kind = RPC_UNARY,
         .input = &filesystem__remove_watcher_request__descriptor,
         .output = &filesystem__remove_watcher_response__descriptor,
         .handle = envd_remove_watcher},
        {.path = "/guestd.v1.Filesystem/Watch",
         .kind = RPC_SERVER_STREAM,
         .input = &guestd__v1__fs_watch_request__descriptor,
         .output = &guestd__v1__fs_watch_response__descriptor,
         .handle = guestd_watch,
         .on_cancel = watch_on_cancel,
         .on_drain = watch_on_drain,
         .keepalive = &ka_guestd.base},
};
const size_t watch_methods_count = ARRAY_SIZE(watch_methods);

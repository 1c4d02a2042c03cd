/* SPDX-License-Identifier: Apache-2.0 */
/*
 * envd's GET and POST /files (protocol-envd.md §4.5, §4.6) and POST /files/compose (§4.7),
 * with guestd's additions: entity tags, Range and conditional requests on every path, uploads
 * that replace files atomically, upload preconditions, gzip request bodies streamed,
 * Guestd-Durable, and directory transfer as tar (GET with archive=tar, POST with
 * Content-Type: application/x-tar; fs/tar.h).
 *
 * Threads. The loop thread parses the request, checks the signature and resolves the user and
 * the path, then hands the file work to libuv's threadpool, one step at a time per transfer:
 *   - download: one step opens the file as the user (stat, O_NONBLOCK open, fstat: a FIFO or a
 *     device is refused without blocking), hashes it for the ETag and sniffs its type; every
 *     further step reads (and gzips) up to XFER_CHUNK bytes, which the loop queues on the
 *     connection. Past LIMIT_WRITE_HIGH_WATER of queued output the next step waits for the
 *     connection's drain callback.
 *   - upload: body bytes collect on the loop; each step hands what arrived to the worker, which
 *     inflates, splits multipart bodies and writes files as the user. While a step runs and
 *     another XFER_CHUNK has arrived, reading from the client pauses.
 * A transfer's worker-side state is touched by one step at a time; the loop looks at it only
 * between steps. If the client goes away, the request is dropped at once and the transfer
 * ends after its current step (an upload then discards its unfinished file on a worker).
 */
#include "rpc/files.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include <jansson.h>
#include <uv.h>

#include "agent-limits.h"
#include "base/alloc.h"
#include "base/buf.h"
#include "base/cleanup.h"
#include "base/kv.h"
#include "base/log.h"
#include "base/macro.h"
#include "base/parse.h"
#include "base/path.h"
#include "base/users.h"
#include "base/utf8.h"
#include "fs/creds.h"
#include "fs/fsop.h"
#include "fs/tar.h"
#include "fs/xfer.h"
#include "http/http.h"
#include "rpc/router.h"
#include "sec/token.h"
#include "sys/state.h"

/* Upload bytes waiting for the worker at which reading from the client pauses: one step's
 * worth, so the worker has the next piece ready while it writes the current one. */
#define FILES_PAUSE_AT            XFER_CHUNK
/* Upload bytes that may wait for the worker at all. After a pause the connection still hands
 * over what its input buffer holds (LIMIT_INPUT_BUFFER + LIMIT_READ_CHUNK), so this is only
 * a guard: past it the request fails rather than grow without bound. */
#define FILES_PENDING_MAX         (4 * 1024 * 1024)
/* gzip level of downloads: the fastest. A sandbox's CPU is scarcer than its bandwidth, and
 * level 1 keeps most of the gain of Go's default level 6 on text. */
#define FILES_GZIP_LEVEL          1
/* File bytes one gzip step may compress before it hands back whatever output it has: a very
 * compressible file still streams, and a cancelled download stops soon. */
#define FILES_GZIP_STEP_INPUT     (4 * XFER_CHUNK)
/* gzip header and window bits for zlib (15-bit window, +16: gzip wrapper). */
#define FILES_GZIP_WBITS          (15 + 16)
/* Room for one error message; paths are limited to PATH_MAX_BYTES, so long ones are cut. */
#define FILES_MESSAGE_MAX         (2 * PATH_MAX_BYTES + 256)
/* How envd lists its supported encodings in error texts (Go's %v of []string{"gzip"}). */
#define FILES_ENCODINGS           "[gzip]"
/* POST /files/compose: sources one request may concatenate (each is a file opened, copied and
 * deleted in one threadpool job), the infix of its temporary file next to the destination
 * (envd's "<dest>.e2b-compose.<uuid>.tmp") and the mode of a new destination (before umask). */
#define FILES_COMPOSE_MAX_SOURCES 1000
#define FILES_COMPOSE_TMP_INFIX   ".e2b-compose."
#define FILES_COMPOSE_MODE        0644
/* A tar upload writes each file under this name (+ 16 hex digits) next to its final one. */
/* Directory levels a tar download descends; deeper directories are sent without content. */
#define FILES_TAR_MAX_DEPTH       128

/* --- common ----------------------------------------------------------------------------------- */

struct files_params {
    char *path;       /* the `path` query value as given, NULL if absent */
    char *username;   /* NULL if absent */
    char *signature;  /* NULL if absent */
    char *expiration; /* signature_expiration, canonical decimal, NULL if absent */
};

static void params_done(struct files_params *p)
{
    free(p->path);
    free(p->username);
    free(p->signature);
    free(p->expiration);
}

static void rest_errorf(struct http_req *req, int status, const char *fmt, ...) _printf_(3, 4);
static void rest_errorf(struct http_req *req, int status, const char *fmt, ...)
{
    struct buf b;
    va_list ap;
    buf_init(&b, FILES_MESSAGE_MAX);
    va_start(ap, fmt);
    if (buf_vprintf(&b, fmt, ap) < 0)
        (void) buf_append_str(&b, "error");
    va_end(ap);
    router_rest_error(req, status, b.data);
    buf_free(&b);
}

/* Go's text for an errno ("no such file or directory"). */
static void go_strerror(int r, char *out, size_t len)
{
    (void) snprintf(out, len, "%s", strerror(r < 0 ? -r : r));
    if (out[0] >= 'A' && out[0] <= 'Z')
        out[0] = (char) (out[0] - 'A' + 'a');
}

/*
 * The generated envd wrapper binds the query parameters before the handler runs; a value it
 * cannot bind is a 400 with a plain-text body. Returns -EINVAL after answering.
 */
static int params_get(struct http_req *req, struct files_params *p)
{
    static const char *const names[] = {"path", "username", "signature", "signature_expiration"};
    char *vals[ARRAY_SIZE(names)] = {NULL};
    char msg[256];
    for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
        if (http_query_get(req->query, names[i], &vals[i]) < 0) {
            (void) snprintf(msg, sizeof(msg), "Invalid format for parameter %s: invalid URL escape",
                            names[i]);
            goto fail;
        }
    }
    if (vals[3]) {
        int64_t exp;
        if (parse_i64(vals[3], &exp) < 0) {
            (void) snprintf(msg, sizeof(msg),
                            "Invalid format for parameter signature_expiration: error binding "
                            "string parameter: strconv.ParseInt: parsing \"%.64s\": invalid syntax",
                            vals[3]);
            goto fail;
        }
        /* envd signs strconv.FormatInt of the bound value, not the text as sent. */
        free(vals[3]);
        vals[3] = xmalloc(24);
        (void) snprintf(vals[3], 24, "%lld", (long long) exp);
    }
    p->path = vals[0];
    p->username = vals[1];
    p->signature = vals[2];
    p->expiration = vals[3];
    return 0;
fail:
    for (size_t i = 0; i < ARRAY_SIZE(names); i++)
        free(vals[i]);
    (void) strncat(msg, "\n", sizeof(msg) - strlen(msg) - 1);
    (void) http_resp_simple(req, 400, "text/plain; charset=utf-8", msg, strlen(msg));
    return -EINVAL;
}

/*
 * envd's validateSigning (§3.2). With a token set, a non-empty X-Access-Token must match;
 * without one, the signature over the raw path and username values must match (constant
 * time) and must not have expired. Answers 401 with envd's texts and returns false on failure.
 * Secrets never reach a log line.
 */
static bool check_signing(struct http_req *req, const struct files_params *p, const char *op)
{
    char want[TOKEN_SIGNATURE_LEN + 1];
    if (!token_is_set())
        return true;
    const char *tok = http_req_header(req, "x-access-token");
    if (tok && *tok) {
        if (token_matches(tok, strlen(tok)))
            return true;
        router_rest_error(req, 401, "access token present in header but does not match");
        return false;
    }
    if (!p->signature) {
        router_rest_error(req, 401, "missing signature query parameter");
        return false;
    }
    if (token_signature(p->path ? p->path : "", op, p->username ? p->username : "", p->expiration,
                        want) < 0 ||
        !token_streq_ct(want, p->signature)) {
        router_rest_error(req, 401, "invalid signature");
        return false;
    }
    if (p->expiration) {
        int64_t exp = 0;
        (void) parse_i64(p->expiration, &exp);
        if (exp < (int64_t) time(NULL)) {
            router_rest_error(req, 401, "signature is already expired");
            return false;
        }
    }
    return true;
}

/* The user named by `username`, or the default user. Answers 401 on failure (envd's text,
 * which ends in Go's os/user error). */
static int lookup_user(struct http_req *req, const struct agent_state *st, const char *username,
                       struct user_info *ret)
{
    const char *name = username ? username : st->default_user;
    int r = users_by_name(name, ret);
    if (r == -ENOENT)
        rest_errorf(req, 401, "error looking up user '%s': user: unknown user %s", name, name);
    else if (r < 0)
        rest_errorf(req, 401, "error looking up user '%s': %s", name, strerror(-r));
    return r;
}

/*
 * envd's ExpandAndResolve: "" → the default workdir if set, else home; "~" and "~/x" → home;
 * relative → under home; cleaned. On failure writes envd's reason into `err`.
 */
static int resolve_path(const char *default_workdir, const char *home, const char *user_name,
                        const char *p, char **ret, char *err, size_t errlen)
{
    const char *want = p && *p ? p : default_workdir && *default_workdir ? default_workdir : "~";
    int r = path_expand(want, home, ret);
    if (r == -EINVAL)
        (void) snprintf(err, errlen,
                        "failed to expand path '%s' for user '%s': cannot expand user-specific "
                        "home dir",
                        want, user_name);
    else if (r == -ENAMETOOLONG)
        (void) snprintf(err, errlen, "path is longer than %d bytes", PATH_MAX_BYTES);
    else if (r < 0)
        (void) snprintf(err, errlen, "invalid path '%s'", want);
    return r;
}

/* The request's user and its resolved `path`; answers 401 or 400 itself on failure. */
static int request_target(struct http_req *req, const struct agent_state *st,
                          const struct files_params *p, struct user_info *ret_user, char **ret_path)
{
    char err[FILES_MESSAGE_MAX];
    int r = lookup_user(req, st, p->username, ret_user);
    if (r < 0)
        return r;
    r = resolve_path(st->default_workdir, ret_user->home, ret_user->name, p->path, ret_path, err,
                     sizeof(err));
    if (r < 0) {
        rest_errorf(req, 400, "error expanding and resolving path '%s': %s", p->path ? p->path : "",
                    err);
        user_info_done(ret_user);
    }
    return r;
}

/* The user's groups, read once per transfer on its first worker step. */
struct files_user {
    uid_t uid;
    gid_t gid;
    char *name;
    bool have_groups;
    int n_groups;
    gid_t groups[USERS_MAX_GROUPS];
};

static int user_enter(struct files_user *u, struct creds_saved *saved)
{
    if (!u->have_groups) {
        /* Read as root, before the switch: the group file is readable by all anyway. */
        int n = users_groups(u->name, u->gid, u->groups, USERS_MAX_GROUPS);
        if (n < 0)
            return n;
        u->n_groups = n;
        u->have_groups = true;
    }
    return creds_enter(u->uid, u->gid, u->groups, (size_t) u->n_groups, saved);
}

static const char *base_name(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash && slash[1] ? slash + 1 : path;
}

/* --- GET /files ------------------------------------------------------------------------------- */

struct download {
    struct http_req *req; /* NULL once answered or abandoned */
    uv_work_t work;
    bool busy;     /* a step is queued, running, or its completion is being handled */
    bool opened;   /* the open step has run */
    bool waiting;  /* output above the high-water mark: the next step waits for on_drain */
    bool finished; /* everything was produced: finish the response */
    atomic_bool cancel;
    /* Inputs. */
    struct files_user user;
    char *path;      /* resolved */
    char *type_name; /* the path parameter: Go types the content by its extension */
    /* Results of the open step. */
    int status;
    char message[FILES_MESSAGE_MAX];
    int fd;
    struct stat st;
    bool has_hash;
    char hex[XFER_HEX_LEN];
    const char *ext_type;   /* by extension, or NULL */
    const char *sniff_type; /* by content (when there is no extension type) */
    /* Streaming. */
    bool gzip;
    uint64_t offset;    /* next file offset to read */
    uint64_t remaining; /* identity: bytes still to send */
    z_stream z;
    bool z_ready;
    bool input_eof;
    bool poison; /* a read failed mid-gzip: end the stream so that decoders report an error */
    int read_error;
    char *buf; /* XFER_CHUNK: output of a step */
    size_t out_len;
    char *zin; /* XFER_CHUNK: gzip input */
};

static void dl_free(struct download *dl)
{
    if (dl->z_ready)
        (void) deflateEnd(&dl->z);
    (void) safe_close(dl->fd);
    free(dl->user.name);
    free(dl->path);
    free(dl->type_name);
    free(dl->buf);
    free(dl->zin);
    free(dl);
}

static void dl_fail(struct download *dl, int status, const char *fmt, ...) _printf_(3, 4);
static void dl_fail(struct download *dl, int status, const char *fmt, ...)
{
    va_list ap;
    dl->status = status;
    va_start(ap, fmt);
    (void) vsnprintf(dl->message, sizeof(dl->message), fmt, ap);
    va_end(ap);
}

/* Takes the request back from the download before answering it: an answer may end the
 * connection, and the abort callback must then find nothing to do. */
static struct http_req *dl_detach(struct download *dl)
{
    struct http_req *req = dl->req;
    dl->req = NULL;
    if (req)
        req->data = NULL;
    return req;
}

/* Worker, as the user: stat, open without blocking, check the type, hash, sniff. */
static void dl_open_step(struct download *dl)
{
    struct stat st;
    char why[128];
    if (stat(dl->path, &st) < 0) {
        int r = -errno;
        go_strerror(r, why, sizeof(why));
        if (r == -ENOENT)
            dl_fail(dl, 404, "path '%s' does not exist", dl->path);
        else if (r == -EACCES || r == -EPERM)
            dl_fail(dl, 403, "%s: stat '%s'", why, dl->path);
        else
            dl_fail(dl, 500, "error checking if path exists '%s': stat %s: %s", dl->path, dl->path,
                    why);
        return;
    }
    if (S_ISDIR(st.st_mode)) {
        dl_fail(dl, 400, "path '%s' is a directory", dl->path);
        return;
    }
    /* Devices are never opened (opening some has effects); a FIFO swapped in after the stat is
     * caught by the O_NONBLOCK open and the fstat below. */
    if (!S_ISREG(st.st_mode)) {
        dl_fail(dl, 400, "path '%s' is not a regular file", dl->path);
        return;
    }
    int fd = open(dl->path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) {
        int r = -errno;
        go_strerror(r, why, sizeof(why));
        if (r == -ENOENT)
            dl_fail(dl, 404, "path '%s' does not exist", dl->path);
        else if (r == -EACCES || r == -EPERM)
            dl_fail(dl, 403, "%s: open '%s'", why, dl->path);
        else
            dl_fail(dl, 500, "error opening file '%s': open %s: %s", dl->path, dl->path, why);
        return;
    }
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        (void) close(fd);
        dl_fail(dl, 400, "path '%s' is not a regular file", dl->path);
        return;
    }
    dl->fd = fd;
    dl->st = st;
    dl->has_hash = xfer_hash_fd(fd, &st, dl->buf, &dl->cancel, dl->hex) == 0;
    dl->ext_type = xfer_type_by_ext(dl->type_name);
    if (!dl->ext_type) {
        ssize_t n = pread(fd, dl->buf, XFER_SNIFF_LEN, 0);
        dl->sniff_type = xfer_sniff(dl->buf, n > 0 ? (size_t) n : 0);
    }
}

/* Worker: the next piece of the body into dl->buf. */
static void dl_read_step(struct download *dl)
{
    dl->out_len = 0;
    if (!dl->gzip) {
        size_t want = (size_t) MIN((uint64_t) XFER_CHUNK, dl->remaining);
        ssize_t n;
        do
            n = pread(dl->fd, dl->buf, want, (off_t) dl->offset);
        while (n < 0 && errno == EINTR);
        if (n < 0) {
            dl->read_error = -errno;
        } else if (n == 0) {
            dl->read_error = -ENODATA; /* the file shrank under us */
        } else {
            dl->out_len = (size_t) n;
            dl->offset += (uint64_t) n;
            dl->remaining -= (uint64_t) n;
            if (dl->remaining == 0)
                dl->finished = true;
        }
        return;
    }

    z_stream *z = &dl->z;
    z->next_out = (Bytef *) dl->buf;
    z->avail_out = XFER_CHUNK;
    if (dl->poison) {
        /* A sync flush ends on a byte boundary between blocks; 0xFF there starts a final block
         * of the reserved type 3, which every inflater rejects. */
        (void) deflate(z, Z_SYNC_FLUSH);
        if (z->avail_out > 0) {
            *z->next_out++ = 0xFF;
            z->avail_out--;
            dl->finished = true;
        }
        dl->out_len = XFER_CHUNK - z->avail_out;
        return;
    }
    size_t consumed = 0;
    while (z->avail_out > 0 && !dl->finished) {
        if (atomic_load(&dl->cancel))
            break;
        if (z->avail_in == 0 && !dl->input_eof) {
            if (consumed >= FILES_GZIP_STEP_INPUT && z->avail_out < XFER_CHUNK)
                break;
            ssize_t n;
            do
                n = pread(dl->fd, dl->zin, XFER_CHUNK, (off_t) dl->offset);
            while (n < 0 && errno == EINTR);
            if (n < 0) {
                dl->read_error = -errno;
                dl->poison = true;
                break;
            }
            if (n == 0)
                dl->input_eof = true;
            dl->offset += (uint64_t) n;
            consumed += (size_t) n;
            z->next_in = (Bytef *) dl->zin;
            z->avail_in = (uInt) n;
        }
        int zr = deflate(z, dl->input_eof && z->avail_in == 0 ? Z_FINISH : Z_NO_FLUSH);
        if (zr == Z_STREAM_END) {
            dl->finished = true;
        } else if (zr != Z_OK && zr != Z_BUF_ERROR) {
            dl->read_error = -EIO;
            dl->poison = true;
            break;
        }
    }
    dl->out_len = XFER_CHUNK - z->avail_out;
}

static void dl_work(uv_work_t *w)
{
    struct download *dl = container_of(w, struct download, work);
    struct creds_saved saved;
    if (atomic_load(&dl->cancel))
        return;
    if (dl->opened) {
        dl_read_step(dl);
        return;
    }
    int r = user_enter(&dl->user, &saved);
    if (r < 0) {
        dl_fail(dl, 500, "cannot act as user '%s': %s", dl->user.name, strerror(-r));
        return;
    }
    dl_open_step(dl);
    /* Always, whatever the step did: this thread serves other jobs next. */
    creds_leave(&saved);
}

static void dl_work_done(uv_work_t *w, int status);

static void dl_queue(struct download *dl)
{
    dl->busy = true;
    int r = uv_queue_work(http_req_loop(dl->req), &dl->work, dl_work, dl_work_done);
    if (r < 0) {
        dl->busy = false;
        struct http_req *req = dl_detach(dl);
        if (!http_resp_started(req)) {
            rest_errorf(req, 500, "cannot queue the file operation: %s", uv_strerror(r));
        } else {
            req->keep_alive = false;
            (void) http_resp_finish(req);
        }
    }
}

/* Moves the download on; only called while no step is in flight. Frees it when done. */
static void dl_pump(struct download *dl)
{
    if (!dl->req) {
        dl_free(dl);
        return;
    }
    if (dl->finished) {
        struct http_req *req = dl_detach(dl);
        if (dl->read_error) {
            /* The body is short (identity) or its gzip stream poisoned: the client must not
             * take it for the whole file, so the connection ends with it. */
            log_warn("download of '%s' cut short: %s", dl->path, strerror(-dl->read_error));
            req->keep_alive = false;
        }
        (void) http_resp_finish(req);
        dl_free(dl);
        return;
    }
    if (dl->read_error && !dl->gzip) {
        dl->finished = true;
        dl_pump(dl);
        return;
    }
    if (http_req_write_queued(dl->req) > LIMIT_WRITE_HIGH_WATER) {
        dl->waiting = true;
        return;
    }
    dl_queue(dl);
    if (!dl->busy)
        dl_free(dl); /* could not queue: answered */
}

/* Go's checkPreconditions (RFC 9110 13.2.2) for GET and HEAD: 412, 304, or go on (0). */
static int dl_preconditions(struct http_req *req, const char *etag, int64_t mtime)
{
    const char *im = http_req_header(req, "if-match");
    const char *ius = http_req_header(req, "if-unmodified-since");
    const char *inm = http_req_header(req, "if-none-match");
    const char *ims = http_req_header(req, "if-modified-since");
    int64_t t;
    if (im && *im) {
        if (!xfer_etag_match(im, etag, false))
            return 412;
    } else if (ius && *ius && mtime > 0 && xfer_http_date_parse(ius, &t) == 0 && mtime > t) {
        return 412;
    }
    if (inm && *inm) {
        if (xfer_etag_match(inm, etag, true))
            return 304;
    } else if (ims && *ims && mtime > 0 && xfer_http_date_parse(ims, &t) == 0 && mtime <= t) {
        return 304;
    }
    return 0;
}

/* If-Range (Go's checkIfRange): true when the Range header applies. */
static bool dl_if_range(struct http_req *req, const char *etag, int64_t mtime)
{
    const char *ir = http_req_header(req, "if-range");
    int64_t t;
    if (!ir || !*ir)
        return true;
    if (ir[0] == '"' || (ir[0] == 'W' && ir[1] == '/'))
        return etag && xfer_etag_match(ir, etag, false);
    return mtime > 0 && xfer_http_date_parse(ir, &t) == 0 && t == mtime;
}

/* Loop: the file is open; answer the headers and start the body (or answer an error). */
static void dl_opened(struct download *dl)
{
    struct http_req *req = dl->req;
    char date[XFER_DATE_LEN], etag[XFER_HASH_TEXT_LEN + 8];
    struct xfer_accept acc;
    if (dl->status) {
        rest_errorf(dl_detach(dl), dl->status, "%s", dl->message);
        return;
    }
    int64_t mtime = dl->st.st_mtim.tv_sec;
    uint64_t size = (uint64_t) dl->st.st_size;

    /* Content coding: envd answers identity to Range and conditional requests (Go's
     * ServeContent semantics); guestd also to If-Match and If-Unmodified-Since (the gzip
     * variant has only a weak tag, which If-Match never accepts), to HEAD (which then reports
     * the length) and to empty files (the SDK needs "Content-Length: 0"). */
    xfer_accept_encoding(http_req_header(req, "accept-encoding"), &acc);
    bool force_identity =
            http_req_header(req, "range") || http_req_header(req, "if-range") ||
            http_req_header(req, "if-none-match") || http_req_header(req, "if-modified-since") ||
            http_req_header(req, "if-match") || http_req_header(req, "if-unmodified-since") ||
            req->method == HMETHOD_HEAD || size == 0;
    dl->gzip = acc.best == XFER_CODING_GZIP && !force_identity;
    if (acc.best == XFER_CODING_NONE || (!dl->gzip && !acc.identity_ok)) {
        rest_errorf(dl_detach(dl), 406,
                    "error parsing Accept-Encoding: no acceptable encoding found, supported: %s",
                    FILES_ENCODINGS);
        return;
    }

    http_resp_header(req, "Vary", "Accept-Encoding");
    _cleanup_free_ char *disp = xfer_content_disposition("inline", base_name(dl->path));
    http_resp_header(req, "Content-Disposition", disp);
    const char *tag = NULL;
    if (dl->has_hash) {
        /* A strong tag names the identity bytes; the gzip variant shares only a weak one. */
        (void) snprintf(etag, sizeof(etag), "%s\"sha256:%s\"", dl->gzip ? "W/" : "", dl->hex);
        http_resp_header(req, "ETag", etag);
        tag = etag;
    }
    int pre = dl_preconditions(req, tag, mtime);
    /* Go's writeNotModified drops Last-Modified when there is an ETag. */
    if (mtime != 0 && !(pre == 304 && tag)) {
        xfer_http_date(mtime, date);
        http_resp_header(req, "Last-Modified", date);
    }
    if (pre) {
        req = dl_detach(dl);
        (void) http_resp_start(req, pre, pre == 304 ? -1 : 0);
        (void) http_resp_finish(req);
        return;
    }

    if (dl->gzip) {
        http_resp_header(req, "Content-Encoding", "gzip");
        http_resp_header(req, "Content-Type",
                         dl->ext_type ? dl->ext_type : "application/octet-stream");
        if (deflateInit2(&dl->z, FILES_GZIP_LEVEL, Z_DEFLATED, FILES_GZIP_WBITS, 8,
                         Z_DEFAULT_STRATEGY) != Z_OK) {
            rest_errorf(dl_detach(dl), 500, "cannot start gzip compression");
            return;
        }
        dl->z_ready = true;
        dl->zin = xmalloc(XFER_CHUNK);
        (void) http_resp_start(req, 200, -1);
        return; /* dl_pump() queues the first step */
    }

    int status = 200;
    uint64_t start = 0, len = size;
    enum xfer_range rk = XFER_RANGE_FULL;
    if (dl_if_range(req, tag, mtime))
        rk = xfer_parse_range(http_req_header(req, "range"), size, &start, &len);
    if (rk == XFER_RANGE_UNSATISFIABLE || rk == XFER_RANGE_INVALID) {
        static const char overlap[] = "invalid range: failed to overlap\n";
        static const char invalid[] = "invalid range\n";
        char cr[48];
        req = dl_detach(dl);
        if (rk == XFER_RANGE_UNSATISFIABLE) {
            (void) snprintf(cr, sizeof(cr), "bytes */%llu", (unsigned long long) size);
            http_resp_header(req, "Content-Range", cr);
        }
        http_resp_header(req, "X-Content-Type-Options", "nosniff");
        (void) http_resp_simple(req, 416, "text/plain; charset=utf-8",
                                rk == XFER_RANGE_UNSATISFIABLE ? overlap : invalid,
                                rk == XFER_RANGE_UNSATISFIABLE ? STRLEN(overlap) : STRLEN(invalid));
        return;
    }
    if (rk == XFER_RANGE_ONE) {
        char cr[80];
        status = 206;
        (void) snprintf(cr, sizeof(cr), "bytes %llu-%llu/%llu", (unsigned long long) start,
                        (unsigned long long) (start + len - 1), (unsigned long long) size);
        http_resp_header(req, "Content-Range", cr);
    }
    http_resp_header(req, "Content-Type", dl->ext_type ? dl->ext_type : dl->sniff_type);
    http_resp_header(req, "Accept-Ranges", "bytes");
    dl->offset = start;
    dl->remaining = len;
    (void) http_resp_start(req, status, (int64_t) len);
    if (req->method == HMETHOD_HEAD || len == 0)
        dl->finished = true;
}

static void dl_work_done(uv_work_t *w, int status)
{
    struct download *dl = container_of(w, struct download, work);
    if (status == UV_ECANCELED) {
        /* The step never ran. */
        if (!dl->opened) {
            dl_fail(dl, 503, "guestd is shutting down");
        } else {
            dl->read_error = -ECANCELED;
            dl->finished = true;
        }
    }
    if (dl->req && !dl->opened) {
        dl->opened = true;
        dl_opened(dl);
    } else if (dl->req && dl->out_len > 0) {
        /* May end the connection and so abandon the request (dl->req turns NULL). */
        (void) http_resp_write(dl->req, dl->buf, dl->out_len);
    }
    dl->busy = false;
    dl_pump(dl);
}

static void dl_on_drain(struct http_req *req)
{
    struct download *dl = req->data;
    if (!dl || !dl->waiting || dl->busy)
        return;
    dl->waiting = false;
    dl_pump(dl);
}

static void dl_on_abort(struct http_req *req)
{
    struct download *dl = req->data;
    if (!dl)
        return;
    dl->req = NULL;
    req->data = NULL;
    atomic_store(&dl->cancel, true);
    if (!dl->busy)
        dl_free(dl);
}

static const struct http_req_ops dl_ops = {
        .on_drain = dl_on_drain,
        .on_abort = dl_on_abort,
};

static void files_download(struct http_req *req, const struct agent_state *st,
                           const struct files_params *p)
{
    struct user_info u = {0};
    char *resolved = NULL;
    if (request_target(req, st, p, &u, &resolved) < 0)
        return;
    struct download *dl = xcalloc(1, sizeof(*dl));
    dl->req = req;
    dl->fd = -1;
    atomic_init(&dl->cancel, false);
    dl->user.uid = u.uid;
    dl->user.gid = u.gid;
    dl->user.name = xstrdup(u.name);
    dl->path = resolved;
    dl->type_name = xstrdup(p->path ? p->path : "");
    dl->buf = xmalloc(XFER_CHUNK);
    user_info_done(&u);
    req->data = dl;
    http_req_set_ops(req, &dl_ops, 0);
    dl_queue(dl);
    if (!dl->busy)
        dl_free(dl);
}

/* --- GET /files?archive=tar (guestd's) ----------------------------------------------------------
 */

/*
 * The directory tree at `path` as a POSIX tar, walked as the user: regular files, directories
 * and symlinks (as symlinks; nothing is followed below the top), other types skipped, as are
 * entries the user cannot read. Each worker step produces about XFER_CHUNK bytes of archive;
 * the loop sends them as one chunk and, past LIMIT_WRITE_HIGH_WATER of queued output, waits
 * for the connection to drain before the next step.
 */
struct tardl_dir {
    DIR *d;
    size_t rel_len; /* length of `rel` to restore when the directory is done */
};

struct tardl {
    struct http_req *req; /* NULL once answered or abandoned */
    uv_work_t work;
    bool busy;
    bool opened;
    bool waiting;
    bool finished;
    bool head;
    atomic_bool cancel;
    struct files_user user;
    char *path;
    int status;
    char message[FILES_MESSAGE_MAX];
    /* Walk state (worker). */
    struct tardl_dir stack[FILES_TAR_MAX_DEPTH];
    size_t depth;
    struct buf rel; /* relative name of the current directory */
    int fd;         /* file whose content is being sent, -1 if none */
    uint64_t remaining;
    uint64_t size;
    struct buf out; /* one step's output */
    size_t skipped;
};

static void td_free(struct tardl *td)
{
    for (size_t i = 0; i < td->depth; i++)
        (void) closedir(td->stack[i].d);
    (void) safe_close(td->fd);
    buf_free(&td->rel);
    buf_free(&td->out);
    free(td->user.name);
    free(td->path);
    free(td);
}

static struct http_req *td_detach(struct tardl *td)
{
    struct http_req *req = td->req;
    td->req = NULL;
    if (req)
        req->data = NULL;
    return req;
}

static void td_fail(struct tardl *td, int status, const char *fmt, ...) _printf_(3, 4);
static void td_fail(struct tardl *td, int status, const char *fmt, ...)
{
    va_list ap;
    td->status = status;
    va_start(ap, fmt);
    (void) vsnprintf(td->message, sizeof(td->message), fmt, ap);
    va_end(ap);
}

static bool td_push(struct tardl *td, int fd, size_t restore_len)
{
    DIR *d = fdopendir(fd);
    if (!d) {
        (void) close(fd);
        return false;
    }
    td->stack[td->depth].d = d;
    td->stack[td->depth].rel_len = restore_len;
    td->depth++;
    return true;
}

static void td_open_step(struct tardl *td)
{
    char why[128];
    int fd = open(td->path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        int r = -errno;
        go_strerror(r, why, sizeof(why));
        if (r == -ENOENT)
            td_fail(td, 404, "path '%s' does not exist", td->path);
        else if (r == -ENOTDIR)
            td_fail(td, 400, "path '%s' is not a directory", td->path);
        else if (r == -EACCES || r == -EPERM)
            td_fail(td, 403, "%s: open '%s'", why, td->path);
        else
            td_fail(td, 500, "error opening directory: open '%s': %s", td->path, why);
        return;
    }
    if (!td_push(td, fd, 0))
        td_fail(td, 500, "error opening directory '%s'", td->path);
}

/* Appends the next entry's header (and opens its content); false when the walk is over. */
static bool td_next_entry(struct tardl *td)
{
    while (td->depth > 0) {
        struct tardl_dir *top = &td->stack[td->depth - 1];
        errno = 0;
        struct dirent *de = readdir(top->d);
        if (!de) {
            (void) closedir(top->d);
            td->depth--;
            td->rel.len = top->rel_len;
            continue;
        }
        if (streq(de->d_name, ".") || streq(de->d_name, ".."))
            continue;
        int dfd = dirfd(top->d);
        size_t base = td->rel.len;
        if ((base > 0 && buf_append_char(&td->rel, '/') < 0) ||
            buf_append_str(&td->rel, de->d_name) < 0 || buf_append_char(&td->rel, '\0') < 0) {
            td->rel.len = base;
            td->skipped++;
            continue;
        }
        td->rel.len--; /* keep the NUL out of the length */
        const char *name = td->rel.data;
        struct stat st;
        struct tar_entry e = {.name = name};
        char link[PATH_MAX_BYTES + 1];
        int fd = -1;
        bool ok = fstatat(dfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0;
        if (ok && S_ISDIR(st.st_mode)) {
            e.type = TAR_DIR;
        } else if (ok && S_ISLNK(st.st_mode)) {
            ssize_t n = readlinkat(dfd, de->d_name, link, sizeof(link) - 1);
            ok = n > 0;
            if (ok)
                link[n] = '\0';
            e.type = TAR_SYMLINK;
            e.linkname = link;
        } else if (ok && S_ISREG(st.st_mode)) {
            fd = openat(dfd, de->d_name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
            ok = fd >= 0 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
            e.type = TAR_FILE;
            e.size = (uint64_t) st.st_size;
        } else {
            ok = false; /* sockets, FIFOs, devices */
        }
        e.mode = st.st_mode & 07777;
        e.mtime = st.st_mtim.tv_sec;
        if (ok && tar_header(&td->out, &e) < 0)
            ok = false;
        if (!ok) {
            (void) safe_close(fd);
            td->skipped++;
            td->rel.len = base;
            continue;
        }
        if (e.type == TAR_FILE) {
            td->fd = fd;
            td->remaining = td->size = e.size;
        }
        if (e.type == TAR_DIR && td->depth < FILES_TAR_MAX_DEPTH) {
            int sub = openat(dfd, de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (sub >= 0 && td_push(td, sub, base))
                return true; /* rel stays: the new directory's name */
            td->skipped++;
        } else if (e.type == TAR_DIR) {
            td->skipped++;
        }
        td->rel.len = base;
        return true;
    }
    return false;
}

/* Produces about XFER_CHUNK bytes of archive into td->out. */
static void td_read_step(struct tardl *td)
{
    buf_reset(&td->out);
    while (td->out.len < XFER_CHUNK && !td->finished) {
        if (atomic_load(&td->cancel))
            return;
        if (td->fd >= 0) {
            size_t want = (size_t) MIN(td->remaining, (uint64_t) (XFER_CHUNK - td->out.len));
            if (want > 0) {
                if (buf_reserve(&td->out, want) < 0)
                    return;
                ssize_t n = read(td->fd, td->out.data + td->out.len, want);
                if (n < 0 && errno == EINTR)
                    continue;
                if (n <= 0) {
                    /* The file shrank or cannot be read: zeros keep the archive well-formed. */
                    memset(td->out.data + td->out.len, 0, want);
                    n = (ssize_t) want;
                    if (!td->skipped++)
                        log_warn("tar of '%s': a file shrank or failed while read", td->path);
                }
                buf_commit(&td->out, (size_t) n);
                td->remaining -= (uint64_t) n;
                continue;
            }
            char zero[TAR_BLOCK] = {0};
            (void) buf_append(&td->out, zero, tar_padding(td->size));
            td->fd = safe_close(td->fd);
            continue;
        }
        if (!td_next_entry(td)) {
            (void) tar_end(&td->out);
            td->finished = true;
        }
    }
}

static void td_work(uv_work_t *w)
{
    struct tardl *td = container_of(w, struct tardl, work);
    struct creds_saved saved;
    int r = user_enter(&td->user, &saved);
    if (r < 0) {
        td_fail(td, 500, "cannot act as user '%s': %s", td->user.name, strerror(-r));
        return;
    }
    if (!td->opened)
        td_open_step(td);
    else
        td_read_step(td);
    creds_leave(&saved);
}

static void td_work_done(uv_work_t *w, int status);

static void td_pump(struct tardl *td)
{
    if (!td->req) {
        td_free(td);
        return;
    }
    if (td->finished && td->out.len == 0) {
        (void) http_resp_finish(td_detach(td));
        td_free(td);
        return;
    }
    if (http_req_write_queued(td->req) > LIMIT_WRITE_HIGH_WATER) {
        td->waiting = true;
        return;
    }
    td->busy = true;
    int r = uv_queue_work(http_req_loop(td->req), &td->work, td_work, td_work_done);
    if (r < 0) {
        td->busy = false;
        struct http_req *req = td_detach(td);
        if (!http_resp_started(req)) {
            rest_errorf(req, 500, "cannot queue the file operation: %s", uv_strerror(r));
        } else {
            req->keep_alive = false;
            (void) http_resp_finish(req);
        }
        td_free(td);
    }
}

static void td_work_done(uv_work_t *w, int status)
{
    struct tardl *td = container_of(w, struct tardl, work);
    td->busy = false;
    if (status == UV_ECANCELED && td->req)
        td_fail(td, 503, "guestd is shutting down");
    if (td->req && !td->opened) {
        td->opened = true;
        if (td->status) {
            router_rest_error(td_detach(td), td->status, td->message);
        } else {
            char *cd = xfer_content_disposition("attachment", "archive.tar");
            http_resp_header(td->req, "Content-Type", "application/x-tar");
            http_resp_header(td->req, "Content-Disposition", cd);
            free(cd);
            (void) http_resp_start(td->req, 200, -1);
            if (td->head && td->req) {
                (void) http_resp_finish(td_detach(td));
            }
        }
    } else if (td->req && td->status) {
        struct http_req *req = td_detach(td);
        req->keep_alive = false;
        (void) http_resp_finish(req);
    } else if (td->req && td->out.len > 0) {
        (void) http_resp_write(td->req, td->out.data, td->out.len);
        buf_reset(&td->out);
    }
    td_pump(td);
}

static void td_on_drain(struct http_req *req)
{
    struct tardl *td = req->data;
    if (!td || !td->waiting || td->busy)
        return;
    td->waiting = false;
    td_pump(td);
}

static void td_on_abort(struct http_req *req)
{
    struct tardl *td = req->data;
    if (!td)
        return;
    td->req = NULL;
    req->data = NULL;
    atomic_store(&td->cancel, true);
    if (!td->busy)
        td_free(td);
}

static const struct http_req_ops td_ops = {
        .on_drain = td_on_drain,
        .on_abort = td_on_abort,
};

static void files_tar_download(struct http_req *req, const struct agent_state *st,
                               const struct files_params *p)
{
    struct user_info u = {0};
    char *resolved = NULL;
    if (request_target(req, st, p, &u, &resolved) < 0)
        return;
    struct tardl *td = xcalloc(1, sizeof(*td));
    td->req = req;
    td->fd = -1;
    td->head = req->method == HMETHOD_HEAD;
    atomic_init(&td->cancel, false);
    td->user.uid = u.uid;
    td->user.gid = u.gid;
    td->user.name = xstrdup(u.name);
    td->path = resolved;
    buf_init(&td->rel, PATH_MAX_BYTES + 256);
    buf_init(&td->out, 2 * XFER_CHUNK + 64 * 1024);
    user_info_done(&u);
    req->data = td;
    http_req_set_ops(req, &td_ops, 0);
    td_pump(td);
}

/* --- POST /files ------------------------------------------------------------------------------ */

enum ul_kind {
    UL_RAW = 0,   /* application/octet-stream: the body is the file */
    UL_MULTIPART, /* multipart/form-data: every part named "file" is a file */
    UL_TAR,       /* application/x-tar: unpacked under the target directory (guestd's) */
};

enum ul_job {
    UL_JOB_DATA = 0, /* feed ul->input */
    UL_JOB_FINISH,   /* the body is complete */
    UL_JOB_CLEANUP,  /* the request is gone: drop the unfinished file */
};

struct ul_result {
    char *path;
    struct kv metadata; /* read back from the file */
};

struct upload {
    struct http_req *req; /* NULL once answered or abandoned */
    uv_loop_t *loop;
    uv_work_t work;
    enum ul_job job;
    bool busy;      /* a step is queued, running, or its completion is being handled */
    bool paused;    /* reading from the client is paused */
    bool body_done; /* the whole body has arrived */
    bool finish_done;
    struct buf pending; /* loop: body bytes not yet handed to a step */
    struct buf input;   /* the bytes of the current step */

    /* Inputs, fixed before the first step. */
    struct files_user user;
    char *home;
    char *default_workdir; /* a copy: /init may change the state's meanwhile */
    enum ul_kind kind;
    char *path_param; /* the `path` query value, NULL if absent */
    char *raw_target; /* UL_RAW: the resolved path */
    bool gzip;
    bool durable;
    int64_t content_length; /* -1 when unknown (for envd's 507 text) */
    struct kv metadata;
    char *if_match;
    char *if_none_match;
    bool has_ius;
    int64_t ius;

    /* Worker state: touched by one step at a time. */
    bool started;
    z_stream z;
    bool z_ready;
    bool z_seen;        /* some compressed bytes arrived */
    bool z_member_done; /* the last gzip member ended (another may follow) */
    struct xfer_mp *mp;
    struct xfer_writer *w; /* the file being written */
    char *w_path;
    bool skip_part; /* the current multipart part is not a file */
    char *wbuf;     /* XFER_CHUNK: the writer's buffer */
    char *zout;     /* XFER_CHUNK: inflated bytes */
    struct ul_result *results;
    size_t n_results;
    char hex[XFER_HEX_LEN]; /* of the last file written */
    bool xattr_unsupported;
    int status; /* an error to answer, with message */
    char message[FILES_MESSAGE_MAX];
    /* UL_TAR (raw_target is the directory). */
    struct tar_reader *tar;
    int tar_root;   /* the target directory, -1 before it is open */
    int tar_dir;    /* the directory of the entry being made, -1 if none */
    int tar_fd;     /* the file being written under its temporary name, -1 if none */
    char *tar_tmp;  /* that temporary name in tar_dir */
    char *tar_name; /* its final name in tar_dir */
    uint32_t tar_mode;
};

static void ul_free(struct upload *ul)
{
    (void) tar_reader_free(ul->tar);
    (void) safe_close(ul->tar_root);
    (void) safe_close(ul->tar_dir);
    (void) safe_close(ul->tar_fd);
    free(ul->tar_tmp);
    free(ul->tar_name);
    xfer_writer_abort(ul->w);
    (void) xfer_mp_free(ul->mp);
    if (ul->z_ready)
        (void) inflateEnd(&ul->z);
    buf_free(&ul->pending);
    buf_free(&ul->input);
    free(ul->user.name);
    free(ul->home);
    free(ul->default_workdir);
    free(ul->path_param);
    free(ul->raw_target);
    kv_clear(&ul->metadata);
    free(ul->if_match);
    free(ul->if_none_match);
    free(ul->w_path);
    free(ul->wbuf);
    free(ul->zout);
    for (size_t i = 0; i < ul->n_results; i++) {
        free(ul->results[i].path);
        kv_clear(&ul->results[i].metadata);
    }
    free(ul->results);
    free(ul);
}

static bool ul_fail(struct upload *ul, int status, const char *fmt, ...) _printf_(3, 4);
static bool ul_fail(struct upload *ul, int status, const char *fmt, ...)
{
    va_list ap;
    if (ul->status)
        return false; /* the first error is the one answered */
    ul->status = status;
    va_start(ap, fmt);
    (void) vsnprintf(ul->message, sizeof(ul->message), fmt, ap);
    va_end(ap);
    return false;
}

static bool is_permission(int r)
{
    return r == -EACCES || r == -EPERM;
}

static bool is_no_space(int r)
{
    return r == -ENOSPC || r == -EDQUOT;
}

/* envd's EnsureDirs errors, or 403 for permissions (envd, as root, never meets them). */
static bool ul_fail_ensure(struct upload *ul, int r, const struct fsop_err *e)
{
    char why[128];
    go_strerror(r, why, sizeof(why));
    if (is_permission(r))
        return ul_fail(ul, 403, "%s: %s '%s'", why, e->op ? e->op : "mkdir",
                       e->path ? e->path : "");
    if (e->op && streq(e->op, "stat") && r == -ENOTDIR)
        return ul_fail(ul, 500, "error ensuring directories: path is a file: %s", e->path);
    if (is_no_space(r))
        return ul_fail(ul, 507, "error ensuring directories: failed to create directory: %s %s: %s",
                       e->op ? e->op : "mkdir", e->path ? e->path : "", why);
    return ul_fail(ul, 500, "error ensuring directories: failed to %s directory: %s %s: %s",
                   e->op && streq(e->op, "chown")  ? "chown"
                   : e->op && streq(e->op, "stat") ? "stat"
                                                   : "create",
                   e->op ? e->op : "mkdir", e->path ? e->path : "", why);
}

/* The writer's errors in envd's words (processFile). */
static bool ul_fail_write(struct upload *ul, int r, const struct fsop_err *e)
{
    char why[128];
    const char *op = e->op ? e->op : "write";
    const char *path = e->path ? e->path : (ul->w_path ? ul->w_path : "");
    go_strerror(r, why, sizeof(why));
    if (r == -EISDIR)
        return ul_fail(ul, 400, "path is a directory: %s", path);
    if (is_permission(r))
        return ul_fail(ul, 403, "%s: %s '%s'", why, op, path);
    if (streq(op, "open")) {
        if (is_no_space(r))
            return ul_fail(ul, 507, "not enough inodes available: open %s: %s", path, why);
        return ul_fail(ul, 500, "error opening file: open %s: %s", path, why);
    }
    if (streq(op, "setxattr")) {
        if (is_no_space(r))
            return ul_fail(ul, 507, "not enough space for file metadata: setxattr %s: %s", path,
                           why);
        return ul_fail(ul, 500, "error writing file metadata: setxattr %s: %s", path, why);
    }
    if (streq(op, "stat"))
        return ul_fail(ul, 500, "error getting file info: stat %s: %s", path, why);
    if (is_no_space(r)) {
        if (ul->content_length > 0)
            return ul_fail(ul, 507,
                           "attempted to write %lld bytes: not enough disk space available",
                           (long long) ul->content_length);
        return ul_fail(ul, 507, "not enough disk space available");
    }
    return ul_fail(ul, 500, "error writing file: %s %s: %s", op, path, why);
}

/*
 * Upload preconditions against the current target (guestd's): If-Match (strong comparison with
 * the content's SHA-256 tag; a missing file never matches), If-Unmodified-Since (when there is
 * no If-Match), If-None-Match ("*": the file must not exist). 412 before anything is written.
 */
static bool ul_preconditions(struct upload *ul, const char *path)
{
    char etag[XFER_HASH_TEXT_LEN + 4];
    struct stat st;
    bool exists, have_tag = false;
    if (!ul->if_match && !ul->if_none_match && !ul->has_ius)
        return true;
    if (stat(path, &st) == 0) {
        exists = true;
    } else if (errno == ENOENT || errno == ENOTDIR) {
        exists = false;
    } else {
        char why[128];
        go_strerror(-errno, why, sizeof(why));
        if (is_permission(-errno))
            return ul_fail(ul, 403, "%s: stat '%s'", why, path);
        return ul_fail(ul, 500, "error getting file info: stat %s: %s", path, why);
    }
    if (exists && S_ISREG(st.st_mode) && (ul->if_match || ul->if_none_match)) {
        int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
        if (fd < 0 && is_permission(-errno))
            return ul_fail(ul, 403, "permission denied: open '%s'", path);
        if (fd >= 0) {
            char hex[XFER_HEX_LEN];
            struct stat fst;
            if (fstat(fd, &fst) == 0 && S_ISREG(fst.st_mode) &&
                xfer_hash_fd(fd, &fst, ul->wbuf, NULL, hex) == 0) {
                (void) snprintf(etag, sizeof(etag), "\"sha256:%s\"", hex);
                have_tag = true;
            }
            (void) close(fd);
        }
    }
    if (ul->if_match) {
        if (!exists || !xfer_etag_match(ul->if_match, have_tag ? etag : "\"\"", false) ||
            (!have_tag && !streq(ul->if_match, "*")))
            return ul_fail(ul, 412, "precondition failed: If-Match does not match '%s'", path);
    } else if (ul->has_ius && exists && st.st_mtim.tv_sec > ul->ius) {
        return ul_fail(ul, 412, "precondition failed: '%s' was modified after If-Unmodified-Since",
                       path);
    }
    if (ul->if_none_match && exists &&
        xfer_etag_match(ul->if_none_match, have_tag ? etag : "\"\"", true) &&
        (have_tag || streq(ul->if_none_match, "*")))
        return ul_fail(ul, 412, "precondition failed: If-None-Match matches '%s'", path);
    return true;
}

/* Worker: parents, preconditions, then the writer for `path`. */
static bool ul_open_file(struct upload *ul, const char *path)
{
    struct fsop_err e = {0};
    const char *slash = strrchr(path, '/');
    _cleanup_free_ char *dir =
            slash && slash != path ? xstrndup(path, (size_t) (slash - path)) : xstrdup("/");
    int r = fsop_mkdir_p(dir, ul->user.uid, ul->user.gid, &e);
    if (r < 0) {
        ul_fail_ensure(ul, r, &e);
        fsop_err_done(&e);
        return false;
    }
    if (!ul_preconditions(ul, path))
        return false;
    const struct xfer_write_opts opts = {
            .uid = ul->user.uid,
            .gid = ul->user.gid,
            .durable = ul->durable,
            .metadata = &ul->metadata,
    };
    free(ul->w_path);
    ul->w_path = xstrdup(path);
    r = xfer_writer_open(path, &opts, ul->wbuf, &ul->w, &e);
    if (r < 0) {
        ul_fail_write(ul, r, &e);
        fsop_err_done(&e);
        return false;
    }
    log_debug("upload of '%s' %s", path,
              xfer_writer_mode(ul->w) == XFER_WRITE_ATOMIC ? "atomic" : "in place");
    return true;
}

/* Worker: the file is complete; link it in and record it. */
static bool ul_commit(struct upload *ul)
{
    struct fsop_err e = {0};
    bool unsupported = false;
    int r = xfer_writer_commit(ul->w, ul->hex, &unsupported, &e);
    ul->w = NULL;
    if (r < 0) {
        ul_fail_write(ul, r, &e);
        fsop_err_done(&e);
        return false;
    }
    ul->xattr_unsupported |= unsupported;
    ul->results = xrealloc(ul->results, (ul->n_results + 1) * sizeof(*ul->results));
    struct ul_result *res = &ul->results[ul->n_results++];
    res->path = xstrdup(ul->w_path);
    kv_init(&res->metadata);
    /* envd reads the metadata back from disk, so the answer never claims what was not kept. */
    xfer_metadata_read(res->path, &res->metadata);
    return true;
}

static bool ul_write(struct upload *ul, const char *data, size_t len)
{
    struct fsop_err e = {0};
    int r = xfer_writer_write(ul->w, data, len, &e);
    if (r < 0) {
        ul_fail_write(ul, r, &e);
        fsop_err_done(&e);
        return false;
    }
    return true;
}

static int mp_on_begin(void *userdata, const struct xfer_mp *mp)
{
    struct upload *ul = userdata;
    char err[FILES_MESSAGE_MAX];
    _cleanup_free_ char *disp = NULL;
    _cleanup_free_ char *resolved = NULL;
    struct kv params;
    int ret = 0;

    ul->skip_part = true;
    kv_init(&params);
    const char *cd = xfer_mp_header(mp, "content-disposition");
    /* Go's Part.FormName: a part without a valid form-data disposition has no name. */
    if (!cd || xfer_media_type_parse(cd, &disp, &params) < 0 || !streq(disp, "form-data"))
        goto out;
    const char *name = kv_get(&params, "name");
    if (!name || !streq(name, "file"))
        goto out;
    const char *want = ul->path_param;
    if (!want) {
        want = kv_get(&params, "filename");
        if (!want) {
            ul_fail(ul, 400,
                    "error getting multipart custom part file name: filename not found in "
                    "Content-Disposition header");
            ret = -ECANCELED;
            goto out;
        }
    }
    if (resolve_path(ul->default_workdir, ul->home, ul->user.name, want, &resolved, err,
                     sizeof(err)) < 0) {
        ul_fail(ul, 400, "error resolving path: %s", err);
        ret = -ECANCELED;
        goto out;
    }
    for (size_t i = 0; i < ul->n_results; i++) {
        if (!streq(ul->results[i].path, resolved))
            continue;
        struct buf b;
        size_t others = 0;
        buf_init(&b, FILES_MESSAGE_MAX);
        (void) buf_printf(&b,
                          "you cannot upload multiple files to the same path '%s' in one upload "
                          "request, only the first specified file was uploaded",
                          resolved);
        for (size_t j = 0; j < ul->n_results; j++)
            others += !streq(ul->results[j].path, resolved);
        if (others > 1) {
            (void) buf_append_str(&b, ", also the following files were uploaded: ");
            for (size_t j = 0, k = 0; j < ul->n_results; j++) {
                if (streq(ul->results[j].path, resolved))
                    continue;
                (void) buf_printf(&b, "%s%s", k++ ? ", " : "", ul->results[j].path);
            }
        }
        ul_fail(ul, 400, "%s", b.data ? b.data : "");
        buf_free(&b);
        ret = -ECANCELED;
        goto out;
    }
    if (!ul_open_file(ul, resolved)) {
        ret = -ECANCELED;
        goto out;
    }
    ul->skip_part = false;
out:
    kv_clear(&params);
    return ret;
}

static int mp_on_data(void *userdata, const char *data, size_t len)
{
    struct upload *ul = userdata;
    if (ul->skip_part)
        return 0;
    return ul_write(ul, data, len) ? 0 : -ECANCELED;
}

static int mp_on_end(void *userdata)
{
    struct upload *ul = userdata;
    if (ul->skip_part)
        return 0;
    return ul_commit(ul) ? 0 : -ECANCELED;
}

static const struct xfer_mp_ops mp_ops = {
        .on_part_begin = mp_on_begin,
        .on_part_data = mp_on_data,
        .on_part_end = mp_on_end,
};

/* --- POST /files with a tar body (guestd's) ----------------------------------------------------
 */

/*
 * The archive unpacks under the target directory as the user. Every entry's parents are walked
 * one component at a time with O_NOFOLLOW from the target, so an entry can never reach through
 * a symlink (one the archive made or one already there) or outside the target. A file is
 * written under a temporary name and renamed into place when complete: a failure leaves no
 * partial file under a final name.
 */
static int tx_fail(struct upload *ul, int status, int r, const char *what, const char *name)
{
    char why[128];
    go_strerror(r, why, sizeof(why));
    if (is_permission(r))
        status = 403;
    else if (is_no_space(r))
        status = 507;
    ul_fail(ul, status, "error unpacking archive: %s '%s': %s", what, name, why);
    return -ECANCELED;
}

/* The directory holding `name` (cleaned, relative), parents created as needed; `ret_last` gets
 * the final component. Returns an fd or -ECANCELED after failing the upload. */
static int tx_parent(struct upload *ul, const char *name, const char **ret_last)
{
    _cleanup_close_ int cur = fcntl(ul->tar_root, F_DUPFD_CLOEXEC, 3);
    if (cur < 0)
        return tx_fail(ul, 500, -errno, "dup", name);
    const char *p = name;
    for (const char *slash; (slash = strchr(p, '/'));) {
        _cleanup_free_ char *comp = xstrndup(p, (size_t) (slash - p));
        int fd = openat(cur, comp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0 && errno == ENOENT) {
            if (mkdirat(cur, comp, 0755) < 0 && errno != EEXIST)
                return tx_fail(ul, 500, -errno, "mkdir", name);
            fd = openat(cur, comp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        }
        if (fd < 0 && (errno == ELOOP || errno == ENOTDIR)) {
            ul_fail(ul, 400, "error unpacking archive: '%s' goes through a symlink or a file",
                    name);
            return -ECANCELED;
        }
        if (fd < 0)
            return tx_fail(ul, 500, -errno, "open", name);
        (void) safe_close(cur);
        cur = fd;
        p = slash + 1;
    }
    *ret_last = p;
    return TAKE_FD(cur);
}

/* Makes room for a non-directory at `last`: refuses a directory there, removes anything else. */
static int tx_clear(struct upload *ul, int dir, const char *last, const char *name)
{
    struct stat st;
    if (fstatat(dir, last, &st, AT_SYMLINK_NOFOLLOW) < 0)
        return errno == ENOENT ? 0 : tx_fail(ul, 500, -errno, "stat", name);
    if (S_ISDIR(st.st_mode)) {
        ul_fail(ul, 400, "error unpacking archive: '%s' is a directory", name);
        return -ECANCELED;
    }
    if (S_ISLNK(st.st_mode) && unlinkat(dir, last, 0) < 0)
        return tx_fail(ul, 500, -errno, "unlink", name);
    return 0;
}

static void tx_close_file(struct upload *ul, bool keep)
{
    if (ul->tar_fd >= 0) {
        ul->tar_fd = safe_close(ul->tar_fd);
        if (!keep)
            (void) unlinkat(ul->tar_dir, ul->tar_tmp, 0);
    }
    ul->tar_dir = safe_close(ul->tar_dir);
    free(ul->tar_tmp);
    free(ul->tar_name);
    ul->tar_tmp = ul->tar_name = NULL;
}

static int tx_on_entry(void *userdata, const struct tar_entry *e)
{
    struct upload *ul = userdata;
    const char *last = NULL;
    int dir = tx_parent(ul, e->name, &last);
    if (dir < 0)
        return dir;
    ul->tar_dir = dir;
    if (e->type == TAR_DIR) {
        struct stat st;
        if (mkdirat(dir, last, (e->mode & 07777) | 0700) < 0) {
            if (errno != EEXIST)
                return tx_fail(ul, 500, -errno, "mkdir", e->name);
            if (fstatat(dir, last, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISDIR(st.st_mode)) {
                ul_fail(ul, 400, "error unpacking archive: '%s' exists and is not a directory",
                        e->name);
                return -ECANCELED;
            }
        }
        return 0;
    }
    int r = tx_clear(ul, dir, last, e->name);
    if (r < 0)
        return r;
    if (e->type == TAR_SYMLINK) {
        if (symlinkat(e->linkname, dir, last) < 0)
            return tx_fail(ul, 500, -errno, "symlink", e->name);
        return 0;
    }
    uint8_t rnd[8];
    if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t) sizeof(rnd))
        return tx_fail(ul, 500, -errno, "getrandom", e->name);
    ul->tar_tmp = xmalloc(64);
    (void) snprintf(ul->tar_tmp, 64, "%s%02x%02x%02x%02x%02x%02x%02x%02x", XFER_TAR_TMP_PREFIX,
                    rnd[0], rnd[1], rnd[2], rnd[3], rnd[4], rnd[5], rnd[6], rnd[7]);
    ul->tar_name = xstrdup(last);
    ul->tar_mode = e->mode & 07777;
    ul->tar_fd =
            openat(dir, ul->tar_tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (ul->tar_fd < 0)
        return tx_fail(ul, 500, -errno, "open", e->name);
    return 0;
}

static int tx_on_data(void *userdata, const char *data, size_t len)
{
    struct upload *ul = userdata;
    while (len > 0) {
        ssize_t n = write(ul->tar_fd, data, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return tx_fail(ul, 500, -errno, "write", ul->tar_name);
        data += n;
        len -= (size_t) n;
    }
    return 0;
}

static int tx_on_entry_end(void *userdata)
{
    struct upload *ul = userdata;
    if (ul->tar_fd >= 0) {
        if (fchmod(ul->tar_fd, ul->tar_mode) < 0)
            return tx_fail(ul, 500, -errno, "chmod", ul->tar_name);
        if (ul->durable && fsync(ul->tar_fd) < 0)
            return tx_fail(ul, 500, -errno, "fsync", ul->tar_name);
        if (renameat(ul->tar_dir, ul->tar_tmp, ul->tar_dir, ul->tar_name) < 0)
            return tx_fail(ul, 500, -errno, "rename", ul->tar_name);
    }
    tx_close_file(ul, true);
    return 0;
}

static const struct tar_reader_ops tx_ops = {
        .on_entry = tx_on_entry,
        .on_data = tx_on_data,
        .on_entry_end = tx_on_entry_end,
};

/* Worker: the target directory (created if missing) and the reader. */
static bool tx_begin(struct upload *ul)
{
    struct fsop_err e = {0};
    int r = fsop_mkdir_p(ul->raw_target, ul->user.uid, ul->user.gid, &e);
    if (r < 0) {
        ul_fail_ensure(ul, r, &e);
        fsop_err_done(&e);
        return false;
    }
    ul->tar_root = open(ul->raw_target, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (ul->tar_root < 0) {
        tx_fail(ul, 500, -errno, "open", ul->raw_target);
        return false;
    }
    (void) tar_reader_new(&tx_ops, ul, &ul->tar);
    return true;
}

static void tx_feed(struct upload *ul, const char *data, size_t len)
{
    int r = tar_reader_feed(ul->tar, data, len);
    if (r < 0 && !ul->status)
        ul_fail(ul, 400, "invalid tar archive: %s", tar_reader_error(ul->tar));
}

static void tx_finish(struct upload *ul)
{
    if (tar_reader_finish(ul->tar) < 0 && !ul->status)
        ul_fail(ul, 400, "invalid tar archive: %s", tar_reader_error(ul->tar));
}

/* Worker: decoded body bytes to the file or the multipart parser. */
static void ul_sink(struct upload *ul, const char *data, size_t len)
{
    if (ul->status || len == 0)
        return;
    if (ul->kind == UL_RAW) {
        (void) ul_write(ul, data, len);
        return;
    }
    if (ul->kind == UL_TAR) {
        tx_feed(ul, data, len);
        return;
    }
    int r = xfer_mp_feed(ul->mp, data, len);
    if (r < 0 && !ul->status)
        ul_fail(ul, r == -E2BIG ? 400 : 500, "error reading form: %s", xfer_mp_error(ul->mp));
}

/* Worker: gzip body bytes (concatenated members are read one after the other, as Go does). */
static void ul_inflate(struct upload *ul, const char *data, size_t len)
{
    z_stream *z = &ul->z;
    z->next_in = (Bytef *) data;
    z->avail_in = (uInt) len;
    if (len)
        ul->z_seen = true;
    while (!ul->status) {
        if (ul->z_member_done) {
            if (z->avail_in == 0)
                break;
            (void) inflateReset(z);
            ul->z_member_done = false;
        }
        z->next_out = (Bytef *) ul->zout;
        z->avail_out = XFER_CHUNK;
        int zr = inflate(z, Z_NO_FLUSH);
        ul_sink(ul, ul->zout, XFER_CHUNK - z->avail_out);
        if (zr == Z_STREAM_END) {
            ul->z_member_done = true;
        } else if (zr == Z_BUF_ERROR || (zr == Z_OK && z->avail_in == 0 && z->avail_out > 0)) {
            break; /* needs more input */
        } else if (zr != Z_OK) {
            ul_fail(ul, 400, "error decompressing request body: %s",
                    z->msg ? z->msg : "invalid gzip data");
        }
    }
}

static bool ul_begin(struct upload *ul)
{
    ul->started = true;
    if (ul->kind == UL_RAW)
        return ul_open_file(ul, ul->raw_target);
    if (ul->kind == UL_TAR)
        return tx_begin(ul);
    return true;
}

static void ul_feed(struct upload *ul)
{
    if (ul->status || (!ul->started && !ul_begin(ul)))
        return;
    if (ul->gzip)
        ul_inflate(ul, ul->input.data, ul->input.len);
    else
        ul_sink(ul, ul->input.data, ul->input.len);
}

static void ul_finish(struct upload *ul)
{
    if (ul->status || (!ul->started && !ul_begin(ul)))
        return;
    if (ul->gzip) {
        if (!ul->z_seen) {
            ul_fail(ul, 400, "error decompressing request body: failed to create gzip reader: EOF");
            return;
        }
        if (!ul->z_member_done) {
            ul_fail(ul, 400, "error decompressing request body: unexpected EOF");
            return;
        }
    }
    if (ul->kind == UL_RAW) {
        (void) ul_commit(ul);
        return;
    }
    if (ul->kind == UL_TAR) {
        tx_finish(ul);
        return;
    }
    if (xfer_mp_finish(ul->mp) < 0 && !ul->status) {
        if (ul->w)
            ul_fail(ul, 500, "error writing file: unexpected EOF");
        else
            ul_fail(ul, 500, "error reading form: %s", xfer_mp_error(ul->mp));
    }
}

static void ul_work(uv_work_t *w)
{
    struct upload *ul = container_of(w, struct upload, work);
    struct creds_saved saved;
    int r = user_enter(&ul->user, &saved);
    if (r < 0) {
        ul_fail(ul, 500, "cannot act as user '%s': %s", ul->user.name, strerror(-r));
        xfer_writer_abort(ul->w);
        ul->w = NULL;
        return;
    }
    switch (ul->job) {
    case UL_JOB_DATA:
        ul_feed(ul);
        break;
    case UL_JOB_FINISH:
        ul_finish(ul);
        break;
    case UL_JOB_CLEANUP:
        break;
    }
    /* A failed or abandoned upload leaves nothing behind: an unnamed file just goes away. */
    if (ul->status || ul->job == UL_JOB_CLEANUP) {
        xfer_writer_abort(ul->w);
        ul->w = NULL;
        tx_close_file(ul, false);
    }
    /* Always, whatever the step did: this thread serves other jobs next. */
    creds_leave(&saved);
}

static struct http_req *ul_detach(struct upload *ul)
{
    struct http_req *req = ul->req;
    ul->req = NULL;
    if (req)
        req->data = NULL;
    return req;
}

/* Go's encoding/json string: <, > and & escaped, invalid UTF-8 replaced by U+FFFD. */
static void json_str(struct buf *b, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    const uint8_t *p = (const uint8_t *) s;
    size_t n = strlen(s);
    (void) buf_append_char(b, '"');
    for (size_t i = 0; i < n;) {
        uint8_t c = p[i];
        if (c < 0x80) {
            if (c == '"' || c == '\\') {
                (void) buf_append_char(b, '\\');
                (void) buf_append_char(b, (char) c);
            } else if (c == '\n') {
                (void) buf_append_str(b, "\\n");
            } else if (c == '\r') {
                (void) buf_append_str(b, "\\r");
            } else if (c == '\t') {
                (void) buf_append_str(b, "\\t");
            } else if (c < 0x20 || c == '<' || c == '>' || c == '&') {
                char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
                (void) buf_append(b, e, 6);
            } else {
                (void) buf_append_char(b, (char) c);
            }
            i++;
            continue;
        }
        size_t k = utf8_seq_len(p + i, n - i);
        if (k == 0) {
            (void) buf_append_str(b, "\\ufffd");
            i++;
        } else if (k == 3 && p[i] == 0xe2 && p[i + 1] == 0x80 && (p[i + 2] & 0xfe) == 0xa8) {
            (void) buf_append_str(b, p[i + 2] == 0xa8 ? "\\u2028" : "\\u2029");
            i += 3;
        } else {
            (void) buf_append(b, p + i, k);
            i += k;
        }
    }
    (void) buf_append_char(b, '"');
}

/* envd's UploadSuccess: a JSON array of EntryInfo, fields in the order Go marshals them. */
static void ul_answer_ok(struct upload *ul)
{
    struct buf b;
    char etag[XFER_HASH_TEXT_LEN + 4];
    buf_init(&b, SIZE_MAX);
    if (ul->kind == UL_TAR) {
        (void) buf_append_str(&b, "[{\"name\":");
        json_str(&b, base_name(ul->raw_target));
        (void) buf_append_str(&b, ",\"path\":");
        json_str(&b, ul->raw_target);
        (void) buf_append_str(&b, ",\"type\":\"dir\"}]");
        (void) http_resp_simple(ul_detach(ul), 200, "application/json", b.data, b.len);
        buf_free(&b);
        return;
    }
    (void) buf_append_char(&b, '[');
    for (size_t i = 0; i < ul->n_results; i++) {
        const struct ul_result *res = &ul->results[i];
        (void) buf_append_str(&b, i ? ",{" : "{");
        if (res->metadata.n > 0) {
            (void) buf_append_str(&b, "\"metadata\":{");
            for (size_t k = 0; k < res->metadata.n; k++) {
                if (k)
                    (void) buf_append_char(&b, ',');
                json_str(&b, res->metadata.items[k].key);
                (void) buf_append_char(&b, ':');
                json_str(&b, res->metadata.items[k].value);
            }
            (void) buf_append_str(&b, "},");
        }
        (void) buf_append_str(&b, "\"name\":");
        json_str(&b, base_name(res->path));
        (void) buf_append_str(&b, ",\"path\":");
        json_str(&b, res->path);
        (void) buf_append_str(&b, ",\"type\":\"file\"}");
    }
    (void) buf_append_char(&b, ']');
    if (ul->xattr_unsupported)
        log_warn("upload: the file system does not support xattrs; metadata not kept");
    struct http_req *req = ul_detach(ul);
    if (ul->n_results == 1) {
        (void) snprintf(etag, sizeof(etag), "\"sha256:%s\"", ul->hex);
        http_resp_header(req, "ETag", etag);
    }
    /* envd writes the JSON without a Content-Type; Go then sniffs text/plain. */
    (void) http_resp_simple(req, 200, "text/plain; charset=utf-8", b.data, b.len);
    buf_free(&b);
}

static void ul_work_done(uv_work_t *w, int status);

static void ul_queue(struct upload *ul, enum ul_job job)
{
    ul->job = job;
    ul->busy = true;
    int r = uv_queue_work(ul->loop, &ul->work, ul_work, ul_work_done);
    if (r < 0) {
        /* Nothing ran; the unfinished file (if any) is closed here instead. */
        ul->busy = false;
        xfer_writer_abort(ul->w);
        ul->w = NULL;
        if (ul->req)
            rest_errorf(ul_detach(ul), 500, "cannot queue the file operation: %s", uv_strerror(r));
    }
}

/* Moves the upload on; only called while no step is in flight. Frees it when done. */
static void ul_pump(struct upload *ul)
{
    if (!ul->req) {
        if (ul->w || ul->tar_fd >= 0) {
            ul_queue(ul, UL_JOB_CLEANUP);
            if (ul->busy)
                return;
        }
        ul_free(ul);
        return;
    }
    if (ul->status) {
        log_debug("upload failed: %d %s", ul->status, ul->message);
        rest_errorf(ul_detach(ul), ul->status, "%s", ul->message);
        ul_pump(ul);
        return;
    }
    if (ul->pending.len > 0) {
        struct buf t = ul->input;
        ul->input = ul->pending;
        ul->pending = t;
        buf_reset(&ul->pending);
        ul_queue(ul, UL_JOB_DATA);
        if (ul->busy && ul->paused && ul->req) {
            ul->paused = false;
            http_req_resume(ul->req);
        }
        if (!ul->busy)
            ul_pump(ul);
        return;
    }
    if (!ul->body_done)
        return;
    if (!ul->finish_done) {
        ul_queue(ul, UL_JOB_FINISH);
        if (!ul->busy)
            ul_pump(ul);
        return;
    }
    ul_answer_ok(ul);
    ul_free(ul);
}

static void ul_work_done(uv_work_t *w, int status)
{
    struct upload *ul = container_of(w, struct upload, work);
    if (status == UV_ECANCELED)
        ul_fail(ul, 503, "guestd is shutting down");
    else if (ul->job == UL_JOB_FINISH)
        ul->finish_done = true;
    ul->busy = false;
    ul_pump(ul);
}

static int ul_on_body(struct http_req *req, const char *data, size_t len)
{
    struct upload *ul = req->data;
    if (!ul)
        return 0;
    if (buf_append(&ul->pending, data, len) < 0)
        return -ENOBUFS; /* the connection answers 400 and aborts the request */
    if (!ul->busy)
        ul_pump(ul);
    else if (!ul->paused && ul->pending.len >= FILES_PAUSE_AT) {
        ul->paused = true;
        http_req_pause(req);
    }
    return 0;
}

static void ul_on_complete(struct http_req *req)
{
    struct upload *ul = req->data;
    if (!ul)
        return;
    ul->body_done = true;
    if (!ul->busy)
        ul_pump(ul);
}

static void ul_on_abort(struct http_req *req)
{
    struct upload *ul = req->data;
    if (!ul)
        return;
    ul->req = NULL;
    req->data = NULL;
    if (ul->w || ul->started)
        log_info("upload of '%s' abandoned by the client", ul->w_path ? ul->w_path : "?");
    if (!ul->busy)
        ul_pump(ul);
}

static const struct http_req_ops ul_ops = {
        .on_body = ul_on_body,
        .on_complete = ul_on_complete,
        .on_abort = ul_on_abort,
};

/* X-Metadata-<Key>: <value> → key lower-cased (headers are stored lower-cased); the first value
 * of a repeated header wins; an empty key is ignored. */
static void collect_metadata(const struct http_req *req, struct kv *m)
{
    static const char prefix[] = "x-metadata-";
    for (size_t i = 0; i < req->n_headers; i++) {
        const char *name = req->headers[i].name;
        if (strncmp(name, prefix, STRLEN(prefix)) != 0 || !name[STRLEN(prefix)])
            continue;
        if (!kv_get(m, name + STRLEN(prefix)))
            kv_set(m, name + STRLEN(prefix), req->headers[i].value);
    }
}

/* envd's parseContentEncoding: identity, gzip, or an error (answered). */
static int request_coding(struct http_req *req, bool *ret_gzip)
{
    const char *ce = http_req_header(req, "content-encoding");
    *ret_gzip = false;
    if (!ce || !*ce)
        return 0;
    const char *semi = strchr(ce, ';');
    size_t n = semi ? (size_t) (semi - ce) : strlen(ce);
    while (n > 0 && (ce[n - 1] == ' ' || ce[n - 1] == '\t'))
        n--;
    const char *s = ce;
    while (n > 0 && (*s == ' ' || *s == '\t')) {
        s++;
        n--;
    }
    if (n == 8 && strncasecmp(s, "identity", 8) == 0)
        return 0;
    if (n == 4 && strncasecmp(s, "gzip", 4) == 0) {
        *ret_gzip = true;
        return 0;
    }
    rest_errorf(req, 400,
                "error decompressing request body: unsupported Content-Encoding: %s, supported: %s",
                ce, FILES_ENCODINGS);
    return -EINVAL;
}

static void files_upload(struct http_req *req, const struct agent_state *st,
                         const struct files_params *p)
{
    struct user_info u = {0};
    char err[FILES_MESSAGE_MAX];
    bool gzip;
    struct kv meta;
    _cleanup_free_ char *ctype = NULL;
    struct kv cparams;
    struct upload *ul = NULL;

    kv_init(&meta);
    kv_init(&cparams);
    if (request_coding(req, &gzip) < 0)
        goto out;
    if (lookup_user(req, st, p->username, &u) < 0)
        goto out;
    collect_metadata(req, &meta);
    if (xfer_metadata_validate(&meta, err, sizeof(err)) < 0) {
        rest_errorf(req, 400, "invalid metadata: %s", err);
        goto out;
    }

    ul = xcalloc(1, sizeof(*ul));
    ul->tar_root = ul->tar_dir = ul->tar_fd = -1;
    ul->loop = http_req_loop(req);
    ul->content_length = -1;
    buf_init(&ul->pending, FILES_PENDING_MAX);
    buf_init(&ul->input, FILES_PENDING_MAX);
    kv_init(&ul->metadata);

    const char *ct = http_req_header(req, "content-type");
    int r = xfer_media_type_parse(ct ? ct : "", &ctype, &cparams);
    if (ctype && streq(ctype, "application/octet-stream")) {
        ul->kind = UL_RAW;
        if (!p->path) {
            router_rest_error(req, 400, "path query parameter is required for raw body upload");
            goto out;
        }
        if (resolve_path(st->default_workdir, u.home, u.name, p->path, &ul->raw_target, err,
                         sizeof(err)) < 0) {
            rest_errorf(req, 400, "error resolving path: %s", err);
            goto out;
        }
    } else if (ctype && streq(ctype, "application/x-tar")) {
        ul->kind = UL_TAR;
        if (!p->path) {
            router_rest_error(req, 400, "path query parameter is required for a tar upload");
            goto out;
        }
        if (resolve_path(st->default_workdir, u.home, u.name, p->path, &ul->raw_target, err,
                         sizeof(err)) < 0) {
            rest_errorf(req, 400, "error resolving path: %s", err);
            goto out;
        }
    } else if (ctype && strncmp(ctype, "multipart/", 10) == 0) {
        ul->kind = UL_MULTIPART;
        /* Go's Request.MultipartReader accepts form-data and mixed, with a boundary. */
        const char *boundary = r == 0 ? kv_get(&cparams, "boundary") : NULL;
        if (r < 0 || !(streq(ctype, "multipart/form-data") || streq(ctype, "multipart/mixed"))) {
            router_rest_error(req, 500,
                              "error parsing multipart form: request Content-Type isn't "
                              "multipart/form-data");
            goto out;
        }
        if (!boundary || !*boundary) {
            router_rest_error(req, 500,
                              "error parsing multipart form: no multipart boundary param in "
                              "Content-Type");
            goto out;
        }
        if (xfer_mp_new(boundary, &mp_ops, ul, &ul->mp) < 0) {
            rest_errorf(req, 500, "error parsing multipart form: unusable boundary (1-%d bytes)",
                        XFER_MP_MAX_BOUNDARY);
            goto out;
        }
    } else {
        rest_errorf(req, 400,
                    "unsupported content type: %s, expected multipart/form-data or "
                    "application/octet-stream",
                    ct ? ct : "");
        goto out;
    }

    if (gzip) {
        if (inflateInit2(&ul->z, FILES_GZIP_WBITS) != Z_OK) {
            router_rest_error(req, 500, "cannot start gzip decompression");
            goto out;
        }
        ul->z_ready = true;
        ul->zout = xmalloc(XFER_CHUNK);
    }
    ul->gzip = gzip;
    const char *h = http_req_header(req, "guestd-durable");
    bool durable = false;
    ul->durable = h && parse_bool(h, &durable) == 0 && durable;
    h = http_req_header(req, "content-length");
    uint64_t cl;
    if (h && parse_u64(h, &cl) == 0 && cl <= INT64_MAX)
        ul->content_length = (int64_t) cl;
    h = http_req_header(req, "if-match");
    ul->if_match = h && *h ? xstrdup(h) : NULL;
    h = http_req_header(req, "if-none-match");
    ul->if_none_match = h && *h ? xstrdup(h) : NULL;
    h = http_req_header(req, "if-unmodified-since");
    ul->has_ius = h && xfer_http_date_parse(h, &ul->ius) == 0;

    ul->user.uid = u.uid;
    ul->user.gid = u.gid;
    ul->user.name = xstrdup(u.name);
    ul->home = xstrdup(u.home);
    ul->default_workdir = st->default_workdir ? xstrdup(st->default_workdir) : NULL;
    ul->path_param = p->path ? xstrdup(p->path) : NULL;
    ul->metadata = meta;
    kv_init(&meta);
    ul->wbuf = xmalloc(XFER_CHUNK);
    ul->req = req;
    req->data = ul;
    http_req_set_ops(req, &ul_ops, 0);
    ul = NULL;
out:
    if (ul)
        ul_free(ul);
    kv_clear(&meta);
    kv_clear(&cparams);
    if (u.name)
        user_info_done(&u);
}

/* --- POST /files/compose ---------------------------------------------------------------------- */

/*
 * envd's compose (protocol-envd.md §4.7): the sources, regular files, are concatenated in order
 * into a temporary file next to the destination, which is renamed over it; then the sources
 * are deleted. Everything runs as the user in one threadpool job.
 */
struct compose {
    struct http_req *req; /* NULL once abandoned */
    uv_work_t work;
    bool queued; /* the job owns the compose from here on */
    const struct agent_state *st;
    struct files_user user;
    char **sources; /* resolved */
    size_t n_sources;
    char *dest; /* resolved */
    int status;
    char message[FILES_MESSAGE_MAX];
    char *buf; /* XFER_CHUNK */
};

static void cp_free(struct compose *cp)
{
    if (!cp)
        return;
    for (size_t i = 0; i < cp->n_sources; i++)
        free(cp->sources[i]);
    free(cp->sources);
    free(cp->dest);
    free(cp->user.name);
    free(cp->buf);
    free(cp);
}

static bool cp_fail(struct compose *cp, int status, const char *fmt, ...) _printf_(3, 4);
static bool cp_fail(struct compose *cp, int status, const char *fmt, ...)
{
    va_list ap;
    if (cp->status)
        return false;
    cp->status = status;
    va_start(ap, fmt);
    (void) vsnprintf(cp->message, sizeof(cp->message), fmt, ap);
    va_end(ap);
    return false;
}

/* A system call's failure on `path`: 403 for permissions, 507 for a full file system, else 500. */
static bool cp_fail_errno(struct compose *cp, int r, const char *op, const char *path)
{
    char why[128];
    go_strerror(r, why, sizeof(why));
    if (is_permission(r))
        return cp_fail(cp, 403, "%s: %s '%s'", why, op, path);
    if (is_no_space(r))
        return cp_fail(cp, 507, "not enough disk space available: %s '%s': %s", op, path, why);
    return cp_fail(cp, 500, "error composing file: %s '%s': %s", op, path, why);
}

/* Appends all of `sfd` to `tfd`: copy_file_range (reflinks where the file system can), or
 * read and write where it cannot. */
static int cp_copy(struct compose *cp, int sfd, int tfd, bool *ret_read_failed)
{
    bool plain = false;
    *ret_read_failed = false;
    for (;;) {
        if (!plain) {
            ssize_t n = copy_file_range(sfd, NULL, tfd, NULL, 16 * XFER_CHUNK, 0);
            if (n > 0)
                continue;
            if (n == 0)
                return 0;
            if (errno == EINTR)
                continue;
            if (errno != EXDEV && errno != EINVAL && errno != ENOSYS && errno != EOPNOTSUPP &&
                errno != EBADF)
                return -errno; /* cannot tell which side failed: reported as a write */
            plain = true;
        }
        ssize_t n = read(sfd, cp->buf, XFER_CHUNK);
        if (n == 0)
            return 0;
        if (n < 0) {
            if (errno == EINTR)
                continue;
            *ret_read_failed = true;
            return -errno;
        }
        for (ssize_t off = 0; off < n;) {
            ssize_t k = write(tfd, cp->buf + off, (size_t) (n - off));
            if (k < 0 && errno != EINTR)
                return -errno;
            if (k > 0)
                off += k;
        }
    }
}

/* Worker, as the user. */
static void cp_run(struct compose *cp)
{
    struct stat dst;
    bool dest_exists;
    struct fsop_err e = {0};

    if (stat(cp->dest, &dst) == 0) {
        dest_exists = true;
        if (S_ISDIR(dst.st_mode)) {
            cp_fail(cp, 400, "destination is a directory: '%s'", cp->dest);
            return;
        }
    } else if (errno == ENOENT) {
        dest_exists = false;
    } else {
        cp_fail_errno(cp, -errno, "stat", cp->dest);
        return;
    }
    for (size_t i = 0; i < cp->n_sources; i++) {
        struct stat s;
        if (stat(cp->sources[i], &s) < 0) {
            if (errno == ENOENT || errno == ENOTDIR)
                cp_fail(cp, 404, "source file not found: '%s'", cp->sources[i]);
            else
                cp_fail_errno(cp, -errno, "stat", cp->sources[i]);
            return;
        }
        if (!S_ISREG(s.st_mode)) {
            cp_fail(cp, 400, "source path is not a regular file: '%s'", cp->sources[i]);
            return;
        }
        /* Deleting the source afterwards would delete the result. */
        if (dest_exists && s.st_dev == dst.st_dev && s.st_ino == dst.st_ino) {
            cp_fail(cp, 400, "destination '%s' is the same file as source '%s'", cp->dest,
                    cp->sources[i]);
            return;
        }
    }

    const char *slash = strrchr(cp->dest, '/');
    _cleanup_free_ char *dir = slash && slash != cp->dest
                                       ? xstrndup(cp->dest, (size_t) (slash - cp->dest))
                                       : xstrdup("/");
    int r = fsop_mkdir_p(dir, cp->user.uid, cp->user.gid, &e);
    if (r < 0) {
        cp_fail_errno(cp, r, e.op ? e.op : "mkdir", e.path ? e.path : dir);
        fsop_err_done(&e);
        return;
    }

    uint8_t rnd[16];
    char hex[2 * sizeof(rnd) + 1];
    if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t) sizeof(rnd)) {
        cp_fail_errno(cp, -errno, "getrandom", cp->dest);
        return;
    }
    for (size_t i = 0; i < sizeof(rnd); i++)
        (void) snprintf(hex + 2 * i, 3, "%02x", rnd[i]);
    _cleanup_free_ char *tmp = NULL;
    if (asprintf(&tmp, "%s" FILES_COMPOSE_TMP_INFIX "%s.tmp", cp->dest, hex) < 0)
        abort();
    _cleanup_close_ int tfd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                                   dest_exists ? (dst.st_mode & 07777) : FILES_COMPOSE_MODE);
    if (tfd < 0) {
        cp_fail_errno(cp, -errno, "open", tmp);
        return;
    }
    for (size_t i = 0; i < cp->n_sources && !cp->status; i++) {
        _cleanup_close_ int sfd =
                open(cp->sources[i], O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
        struct stat s;
        bool read_failed;
        if (sfd < 0) {
            if (errno == ENOENT)
                cp_fail(cp, 404, "source file not found: '%s'", cp->sources[i]);
            else
                cp_fail_errno(cp, -errno, "open", cp->sources[i]);
        } else if (fstat(sfd, &s) < 0) {
            cp_fail_errno(cp, -errno, "stat", cp->sources[i]);
        } else if (!S_ISREG(s.st_mode)) {
            cp_fail(cp, 400, "source path is not a regular file: '%s'", cp->sources[i]);
        } else if ((r = cp_copy(cp, sfd, tfd, &read_failed)) < 0) {
            cp_fail_errno(cp, r, read_failed ? "read" : "write",
                          read_failed ? cp->sources[i] : tmp);
        }
    }
    if (!cp->status && dest_exists)
        (void) fchmod(tfd, dst.st_mode & 07777); /* the umask may have taken bits away */
    if (!cp->status) {
        int fd = TAKE_FD(tfd);
        if (close(fd) < 0 && errno != EINTR)
            cp_fail_errno(cp, -errno, "write", tmp);
    }
    if (!cp->status && rename(tmp, cp->dest) < 0)
        cp_fail_errno(cp, -errno, "rename", cp->dest);
    if (cp->status) {
        (void) unlink(tmp);
        return;
    }
    for (size_t i = 0; i < cp->n_sources; i++)
        if (unlink(cp->sources[i]) < 0 && errno != ENOENT)
            log_warn("compose: cannot delete source '%s', ignoring: %m", cp->sources[i]);
}

static void cp_work(uv_work_t *w)
{
    struct compose *cp = container_of(w, struct compose, work);
    struct creds_saved saved;
    int r = user_enter(&cp->user, &saved);
    if (r < 0) {
        cp_fail(cp, 500, "cannot act as user '%s': %s", cp->user.name, strerror(-r));
        return;
    }
    cp_run(cp);
    creds_leave(&saved);
}

static void cp_work_done(uv_work_t *w, int status)
{
    struct compose *cp = container_of(w, struct compose, work);
    struct http_req *req = cp->req;
    if (req) {
        req->data = NULL;
        if (status == UV_ECANCELED) {
            router_rest_error(req, 503, "guestd is shutting down");
        } else if (cp->status) {
            log_debug("compose failed: %d %s", cp->status, cp->message);
            router_rest_error(req, cp->status, cp->message);
        } else {
            struct buf b;
            buf_init(&b, SIZE_MAX);
            (void) buf_append_str(&b, "{\"name\":");
            json_str(&b, base_name(cp->dest));
            (void) buf_append_str(&b, ",\"path\":");
            json_str(&b, cp->dest);
            (void) buf_append_str(&b, ",\"type\":\"file\"}");
            (void) http_resp_simple(req, 200, "application/json", b.data, b.len);
            buf_free(&b);
        }
    }
    cp_free(cp);
}

static void cp_on_abort(struct http_req *req)
{
    struct compose *cp = req->data;
    req->data = NULL;
    if (cp && cp->queued)
        cp->req = NULL; /* the job finishes and frees it */
    else
        cp_free(cp);
}

/* Validates the body and resolves the user and the paths; answers and returns < 0 on error. */
static int cp_parse(struct http_req *req, struct compose *cp)
{
    json_auto_t *root = NULL;
    json_error_t jerr;
    char err[FILES_MESSAGE_MAX];
    struct user_info u = {0};
    int r;

    root = json_loadb(req->body.data, req->body.len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root || !json_is_object(root)) {
        rest_errorf(req, 400, "invalid request body: %s", root ? "not a JSON object" : jerr.text);
        return -EINVAL;
    }
    json_t *srcs = json_object_get(root, "source_paths");
    json_t *dest = json_object_get(root, "destination");
    json_t *user = json_object_get(root, "username");
    if (!json_is_array(srcs) || json_array_size(srcs) == 0) {
        router_rest_error(req, 400, "source_paths must be a non-empty array of paths");
        return -EINVAL;
    }
    if (json_array_size(srcs) > FILES_COMPOSE_MAX_SOURCES) {
        rest_errorf(req, 400, "too many source paths: at most %d", FILES_COMPOSE_MAX_SOURCES);
        return -EINVAL;
    }
    if (!json_is_string(dest) || json_string_length(dest) == 0 ||
        strlen(json_string_value(dest)) != json_string_length(dest)) {
        router_rest_error(req, 400, "destination must be a non-empty path");
        return -EINVAL;
    }
    if (user && !json_is_null(user) &&
        (!json_is_string(user) || strlen(json_string_value(user)) != json_string_length(user))) {
        router_rest_error(req, 400, "username must be a string");
        return -EINVAL;
    }
    const char *uname =
            json_is_string(user) && json_string_length(user) > 0 ? json_string_value(user) : NULL;
    if (lookup_user(req, cp->st, uname, &u) < 0)
        return -EACCES;
    cp->user.uid = u.uid;
    cp->user.gid = u.gid;
    cp->user.name = xstrdup(u.name);

    r = resolve_path(cp->st->default_workdir, u.home, u.name, json_string_value(dest), &cp->dest,
                     err, sizeof(err));
    if (r < 0) {
        rest_errorf(req, 400, "error resolving destination: %s", err);
        goto out;
    }
    cp->sources = xcalloc(json_array_size(srcs), sizeof(char *));
    for (size_t i = 0; i < json_array_size(srcs); i++) {
        json_t *v = json_array_get(srcs, i);
        if (!json_is_string(v) || json_string_length(v) == 0 ||
            strlen(json_string_value(v)) != json_string_length(v)) {
            router_rest_error(req, 400, "source_paths must hold non-empty paths");
            r = -EINVAL;
            goto out;
        }
        r = resolve_path(cp->st->default_workdir, u.home, u.name, json_string_value(v),
                         &cp->sources[i], err, sizeof(err));
        if (r < 0) {
            rest_errorf(req, 400, "error resolving source path: %s", err);
            goto out;
        }
        cp->n_sources = i + 1;
        if (streq(cp->sources[i], cp->dest)) {
            rest_errorf(req, 400, "destination '%s' is also a source path", cp->dest);
            r = -EINVAL;
            goto out;
        }
    }
    r = 0;
out:
    user_info_done(&u);
    return r;
}

static void cp_on_complete(struct http_req *req)
{
    struct compose *cp = req->data;
    if (!cp)
        return;
    if (cp_parse(req, cp) < 0) {
        req->data = NULL;
        cp_free(cp);
        return;
    }
    cp->buf = xmalloc(XFER_CHUNK);
    int r = uv_queue_work(http_req_loop(req), &cp->work, cp_work, cp_work_done);
    cp->queued = r >= 0;
    if (r < 0) {
        req->data = NULL;
        rest_errorf(req, 500, "cannot queue the file operation: %s", uv_strerror(r));
        cp_free(cp);
    }
}

static const struct http_req_ops cp_ops = {
        .on_complete = cp_on_complete,
        .on_abort = cp_on_abort,
};

void files_compose(struct http_req *req, struct agent_state *st)
{
    if (req->method != HMETHOD_POST) {
        http_resp_header(req, "Allow", "POST");
        (void) http_resp_simple(req, 405, NULL, NULL, 0);
        return;
    }
    struct compose *cp = xcalloc(1, sizeof(*cp));
    cp->st = st;
    cp->req = req;
    req->data = cp;
    http_req_set_ops(req, &cp_ops, LIMIT_SMALL_BODY_BYTES);
}

/* --- entry point ------------------------------------------------------------------------------ */

void files_handle(struct http_req *req, struct agent_state *st, bool trusted)
{
    struct files_params p = {0};
    if (req->method != HMETHOD_GET && req->method != HMETHOD_HEAD && req->method != HMETHOD_POST) {
        http_resp_header(req, "Allow", "GET, HEAD, POST");
        (void) http_resp_simple(req, 405, NULL, NULL, 0);
        return;
    }
    if (params_get(req, &p) < 0)
        return;
    /* guestd's directory download: `archive=tar` (envd clients never send it). */
    _cleanup_free_ char *archive = NULL;
    if (req->method != HMETHOD_POST && http_query_get(req->query, "archive", &archive) == 0 &&
        archive && !streq(archive, "tar")) {
        rest_errorf(req, 400, "unsupported archive format '%s' (tar)", archive);
        params_done(&p);
        return;
    }
    if (trusted || check_signing(req, &p, req->method == HMETHOD_POST ? "write" : "read")) {
        if (req->method == HMETHOD_POST)
            files_upload(req, st, &p);
        else if (archive)
            files_tar_download(req, st, &p);
        else
            files_download(req, st, &p);
    }
    params_done(&p);
}

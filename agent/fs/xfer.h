/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Helpers behind envd's /files endpoints: the parts of a transfer that know nothing about
 * sockets or the event loop.
 *
 *   - protocol text: Range, Accept-Encoding, HTTP dates, entity tags, media types and
 *     Content-Disposition (Go's mime.ParseMediaType / FormatMediaType), content types by
 *     extension and by sniffing (a subset of Go's http.DetectContentType), X-Metadata-* checks;
 *   - a streaming multipart/form-data parser that takes its input in pieces of any size;
 *   - blocking file work for worker threads that already run with the requesting user's fs
 *     ids (fs/creds.h): SHA-256 entity tags with a small process-wide cache, and an atomic
 *     file writer (O_TMPFILE + link + rename, or in place where that cannot work).
 *
 * Nothing here logs above debug level; errors are -errno, and file operations record what
 * failed in a struct fsop_err owned by the caller.
 */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "base/buf.h"
#include "base/kv.h"
#include "fs/fsop.h"

/* Every streamed step of a transfer moves at most this much: a file read for a download, a
 * disk write for an upload, one gzip output block. Large enough for few system calls and
 * threadpool round trips per MiB, small enough that a transfer holds little memory. */
/*
 * Atomic uploads appear under this temporary name before they are renamed into place; the
 * character after it says whether the target was new ('n') or replaced ('r'). guestd's watchers
 * hide these names and report the rename as envd's events on the target (fs/watch.c).
 */
#define XFER_UPLOAD_TMP_PREFIX ".guestd-upload-"
/* Files unpacked from a tar are written under this name, then renamed into place; watchers
 * report them as new files (CREATE, WRITE). */
#define XFER_TAR_TMP_PREFIX    ".guestd-tar-"
#define XFER_CHUNK             (256 * 1024)
/* Bytes of content that content-type sniffing looks at (Go's sniffLen). */
#define XFER_SNIFF_LEN         512
/* Length of "sha256:" + 64 hex digits, without quotes or NUL. */
#define XFER_HASH_TEXT_LEN     (7 + 64)
/* Entity tags of recently hashed files, keyed by device, inode, size, mtime and ctime (a
 * change to the content moves mtime or at least ctime). Covers repeated downloads of the
 * same few files; each slot is about 130 bytes. */
#define XFER_ETAG_CACHE_SLOTS  64
/* Files larger than this get no entity tag: hashing them before the first response byte
 * would take seconds. Conditional requests on them behave as if no tag existed. */
#define XFER_ETAG_MAX_BYTES    (1024ULL * 1024 * 1024)
/* An HTTP date ("Sun, 06 Nov 1994 08:49:37 GMT") and its NUL. */
#define XFER_DATE_LEN          30

/* Multipart limits. A part's header section (browsers and SDKs send ~150 bytes) and the
 * header lines in it; the number of parts in one body (each file part is a file written, so
 * this also bounds the work of one request); a boundary's length (RFC 2046 allows 70). */
#define XFER_MP_MAX_HEADER_BYTES (16 * 1024)
#define XFER_MP_MAX_HEADERS      32
#define XFER_MP_MAX_PARTS        1000
#define XFER_MP_MAX_BOUNDARY     200

/* X-Metadata-* → user.e2b.* xattrs (envd's filesystem.ValidateMetadata): a key may be as
 * long as the kernel's 255-byte xattr name limit minus the prefix; the sum over all entries of
 * prefix + key + value must fit in one ext4 block. */
#define XFER_META_PREFIX    "user.e2b."
#define XFER_META_MAX_KEY   (255 - 9)
#define XFER_META_MAX_TOTAL 4096

/* --- content types ------------------------------------------------------------------------ */

/* Content type for the extension of `path` (case-insensitive), or NULL if unknown. */
const char *xfer_type_by_ext(const char *path);
/* Go's http.DetectContentType for the common cases; never NULL. */
const char *xfer_sniff(const void *data, size_t len);

/* --- Content-Disposition and media types -------------------------------------------------- */

/*
 * Go's mime.FormatMediaType(disposition, {"filename": name}): the name is written as a token
 * when it is one, quoted otherwise, and as RFC 2231 `filename*=utf-8''…` when it holds bytes
 * outside printable ASCII (tab allowed). Returns a malloc'd string.
 */
char *xfer_content_disposition(const char *disposition, const char *filename);
/*
 * Go's mime.ParseMediaType: `ret_type` gets the lower-cased media type, `ret_params` the
 * parameters (lower-cased names; RFC 2231 `name*=utf-8''…` values decoded under `name`).
 * Returns 0, or -EINVAL with `ret_type` still set when only the parameters are bad, or
 * -EBADMSG when there is no media type at all (`ret_type` NULL). `ret_params` must be
 * initialised; the caller frees both in every case.
 */
int xfer_media_type_parse(const char *value, char **ret_type, struct kv *ret_params);

/* --- Range, Accept-Encoding, dates, entity tags ------------------------------------------- */

enum xfer_range {
    XFER_RANGE_FULL = 0,      /* no usable range: send everything (also for several ranges) */
    XFER_RANGE_ONE,           /* one satisfiable range */
    XFER_RANGE_UNSATISFIABLE, /* well-formed, but nothing overlaps the content */
    XFER_RANGE_INVALID,       /* malformed */
};

/*
 * Go's parseRange for a file of `size` bytes. A single range gives XFER_RANGE_ONE with its
 * start and length; several ranges, or ranges adding up to more than the file, give
 * XFER_RANGE_FULL (guestd does not send multipart/byteranges). A NULL or empty header is
 * XFER_RANGE_FULL.
 */
enum xfer_range xfer_parse_range(const char *header, uint64_t size, uint64_t *ret_start,
                                 uint64_t *ret_len);

enum xfer_coding {
    XFER_CODING_IDENTITY = 0,
    XFER_CODING_GZIP,
    XFER_CODING_NONE, /* nothing acceptable: 406 */
};

struct xfer_accept {
    enum xfer_coding best;
    bool identity_ok; /* identity is acceptable (not refused by identity;q=0 or *;q=0) */
};

/*
 * Accept-Encoding negotiation as envd does it, plus RFC 9110's "*;q=0" rule: entries are
 * considered by descending q (header order among equals); the first acceptable of identity,
 * gzip (or x-gzip) and "*" decides; otherwise identity unless refused. NULL or "" → identity.
 */
void xfer_accept_encoding(const char *header, struct xfer_accept *ret);

/* Formats seconds since the epoch as an IMF-fixdate. */
void xfer_http_date(int64_t unix_sec, char out[XFER_DATE_LEN]);
/* Parses an IMF-fixdate, RFC 850 or asctime date (Go's http.ParseTime). -EINVAL if none. */
int xfer_http_date_parse(const char *s, int64_t *ret);

/*
 * True if the entity-tag list `list` ("*", or `"a", W/"b"`) matches `etag` (a quoted tag,
 * optionally W/-prefixed; NULL if the resource has none). `weak` selects weak comparison
 * (If-None-Match) over strong comparison (If-Match, If-Range). "*" matches any existing tag.
 */
bool xfer_etag_match(const char *list, const char *etag, bool weak);

/* --- metadata ----------------------------------------------------------------------------- */

/* envd's ValidateMetadata. On failure writes envd's message (without its "invalid metadata: "
 * prefix) and returns -EINVAL. */
int xfer_metadata_validate(const struct kv *m, char *err, size_t errlen);
/*
 * Reads the user.e2b.* xattrs of `path` (following symlinks) into `m`, prefix stripped; values
 * that are not UTF-8 are skipped, as envd does. A file system without xattrs yields none.
 */
void xfer_metadata_read(const char *path, struct kv *m);

/* --- multipart/form-data ------------------------------------------------------------------ */

struct xfer_mp;

struct xfer_mp_ops {
    /* A part's headers are complete (xfer_mp_header() reads them). */
    int (*on_part_begin)(void *userdata, const struct xfer_mp *mp);
    /* The part's content, in pieces of any size (possibly many small ones). */
    int (*on_part_data)(void *userdata, const char *data, size_t len);
    /* The part's content is complete (its closing boundary was seen). */
    int (*on_part_end)(void *userdata);
};

/*
 * Creates a parser for `boundary` (1..XFER_MP_MAX_BOUNDARY bytes, no CR or LF; else -EINVAL).
 * Callbacks returning < 0 stop the parser; their value is returned by xfer_mp_feed().
 */
int xfer_mp_new(const char *boundary, const struct xfer_mp_ops *ops, void *userdata,
                struct xfer_mp **ret);
struct xfer_mp *xfer_mp_free(struct xfer_mp *mp);
/*
 * Feeds the next `len` bytes of the body. Returns 0, a callback's error, or -EBADMSG for a
 * malformed body (-E2BIG past a limit), with the reason in xfer_mp_error(). After an error
 * the parser accepts nothing more.
 */
int xfer_mp_feed(struct xfer_mp *mp, const char *data, size_t len);
/* The body is complete: -EBADMSG unless the closing boundary was seen. */
int xfer_mp_finish(struct xfer_mp *mp);
/* True while a part's content is being delivered (between begin and end). */
bool xfer_mp_in_part(const struct xfer_mp *mp);
/* The reason for the last -EBADMSG/-E2BIG ("" if none), in Go's words where Go has some. */
const char *xfer_mp_error(const struct xfer_mp *mp);
/* A header of the current part by lower-case name (the first one), or NULL. Only valid in
 * and after on_part_begin, until the next part begins. */
const char *xfer_mp_header(const struct xfer_mp *mp, const char *lname);
/* Parts begun so far. */
size_t xfer_mp_parts(const struct xfer_mp *mp);

/* --- hashing (worker threads) ------------------------------------------------------------- */

/* Lower-case hex of a SHA-256 digest and its NUL. */
#define XFER_HEX_LEN 65

/*
 * SHA-256 of the open regular file `fd` whose fstat is `st`, from the cache or by reading it
 * with `buf` (XFER_CHUNK bytes) as scratch space. The result is cached only if the file did
 * not change while it was read. -ECANCELED when *cancel turns true meanwhile; -EFBIG past
 * XFER_ETAG_MAX_BYTES.
 */
int xfer_hash_fd(int fd, const struct stat *st, char *buf, const atomic_bool *cancel,
                 char hex[XFER_HEX_LEN]);
/* Records the hash of a file known by its stat (after an upload). */
void xfer_hash_remember(const struct stat *st, const char hex[XFER_HEX_LEN]);

/* --- atomic file writer (worker threads) -------------------------------------------------- */

struct xfer_writer;

struct xfer_write_opts {
    uid_t uid; /* owner of new files and directories */
    gid_t gid;
    bool durable;              /* fsync the file (and its directory) before reporting success */
    const struct kv *metadata; /* the new user.e2b.* set (prefix stripped); NULL = clear */
};

/* How the writer got its file: atomically, or in place (as envd always does). */
enum xfer_write_mode {
    XFER_WRITE_ATOMIC = 0,
    XFER_WRITE_IN_PLACE,
};

/*
 * Starts writing `path` (absolute, cleaned; its directory must exist: see fsop_mkdir_p()).
 * Refuses a directory at the target (-EISDIR), then opens an unnamed O_TMPFILE file in the
 * target's directory. Falls back to writing the target in place (O_TRUNC) when it is a
 * symlink, has several hard links, is not a regular file, cannot be replaced by this user (a
 * sticky directory), the directory is not writable, or the file system has no O_TMPFILE.
 * `buf` (XFER_CHUNK bytes, borrowed until the writer is gone) buffers small writes.
 */
int xfer_writer_open(const char *path, const struct xfer_write_opts *opts, char *buf,
                     struct xfer_writer **ret, struct fsop_err *err);
int xfer_writer_write(struct xfer_writer *w, const void *data, size_t len, struct fsop_err *err);
/*
 * Finishes the file: flushes, sets mode and owner (the replaced file's, or uid:gid for a new
 * one), replaces the user.e2b.* xattrs, fsyncs when durable, and links the file in place of
 * the target. Frees the writer whatever happens. `ret_hex` receives the content's SHA-256.
 * `ret_xattr_unsupported` is set when the file system refused xattrs (the upload still
 * succeeds, as in envd).
 */
int xfer_writer_commit(struct xfer_writer *w, char ret_hex[XFER_HEX_LEN],
                       bool *ret_xattr_unsupported, struct fsop_err *err);
/* Drops an unfinished file: nothing of it stays behind (in place: what was written stays). */
void xfer_writer_abort(struct xfer_writer *w);
enum xfer_write_mode xfer_writer_mode(const struct xfer_writer *w);

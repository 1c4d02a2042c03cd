/* SPDX-License-Identifier: Apache-2.0 */
/*
 * POSIX tar (ustar with pax extended headers), pure: no file system, no event loop.
 *
 *   - writer: tar_header() appends the header block(s) of one entry to a buffer (a pax 'x'
 *     header first when a name, link target or size does not fit ustar's fields); the caller
 *     appends the content and tar_padding() zero bytes, and tar_end() after the last entry.
 *   - reader: a streaming parser that takes its input in pieces of any size and reports
 *     entries through callbacks. It refuses what an extractor must never see: absolute names,
 *     ".." components, hard links, devices, FIFOs and unknown types, and enforces the limits
 *     below. Names it reports are cleaned: relative, no "." or empty components, no trailing
 *     slash.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"

#define TAR_BLOCK           512
/* Entries one archive may hold (pax and GNU long-name headers do not count). */
#define TAR_MAX_ENTRIES     100000
/* Bytes of a name or link target (PATH_MAX without the NUL). */
#define TAR_MAX_NAME        4095
/* Bytes of one pax extended header's records (names plus a few numbers fit easily). */
#define TAR_MAX_PAX_BYTES   (64 * 1024)
/* Content bytes of all regular files of one archive. */
#define TAR_MAX_TOTAL_BYTES (64ULL * 1024 * 1024 * 1024)

enum tar_type {
    TAR_FILE = 0,
    TAR_DIR,
    TAR_SYMLINK,
};

struct tar_entry {
    enum tar_type type;
    const char *name;     /* relative path */
    const char *linkname; /* symlink target, NULL otherwise */
    uint32_t mode;        /* permission bits (07777) */
    uint64_t size;        /* content bytes (regular files only) */
    int64_t mtime;        /* seconds since the epoch */
};

/* --- writer --------------------------------------------------------------------------------- */

/*
 * Appends the header block(s) of `e` to `out`. Directory names get a trailing slash. Returns
 * -ENAMETOOLONG past TAR_MAX_NAME, -EINVAL for an empty name, or the buffer's error.
 */
int tar_header(struct buf *out, const struct tar_entry *e);
/* Zero bytes that must follow `size` bytes of content. */
size_t tar_padding(uint64_t size);
/* Appends the end-of-archive marker (two zero blocks). */
int tar_end(struct buf *out);

/* --- reader --------------------------------------------------------------------------------- */

struct tar_reader;

struct tar_reader_ops {
    /* An entry begins; for a regular file, its content follows through on_data. */
    int (*on_entry)(void *userdata, const struct tar_entry *e);
    /* Content of the current regular file, in pieces of any size. */
    int (*on_data)(void *userdata, const char *data, size_t len);
    /* The current entry is complete. */
    int (*on_entry_end)(void *userdata);
};

int tar_reader_new(const struct tar_reader_ops *ops, void *userdata, struct tar_reader **ret);
struct tar_reader *tar_reader_free(struct tar_reader *t);
/*
 * Feeds the next `len` bytes. Returns 0, a callback's error, or -EBADMSG for a malformed or
 * refused archive (-E2BIG past a limit), with the reason in tar_reader_error(). After an
 * error the reader accepts nothing more. Bytes after the end-of-archive marker are ignored.
 */
int tar_reader_feed(struct tar_reader *t, const char *data, size_t len);
/* The input is complete: -EBADMSG if it stopped inside an entry or header. A missing
 * end-of-archive marker is accepted when the input ends between entries. */
int tar_reader_finish(struct tar_reader *t);
const char *tar_reader_error(const struct tar_reader *t);
/* Entries reported so far. */
size_t tar_reader_entries(const struct tar_reader *t);

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * A process's output log: reads from stdout, stderr or the PTY become chunks in arrival order
 * (small reads of the same stream are merged into the newest chunk, so that a child writing a
 * byte at a time does not cost a chunk header per byte), addressed by a log offset (bytes since the
 * process started, across streams) and by its offset within its own stream. The log keeps the
 * newest bytes up to its cap; older chunks are dropped whole, so a reader whose cursor points
 * before outlog_start() has lost bytes and must be told (gap event) or cut (envd clients).
 *
 * Readers never hold chunk pointers across appends: they hold log offsets and look chunks up.
 * No libuv and no allocation per read beyond the chunk itself.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum out_stream {
    OUT_STDOUT = 1,
    OUT_STDERR = 2,
    OUT_PTY = 3,
};

struct outlog_chunk {
    uint64_t log_off;    /* log offset of data[0] */
    uint64_t stream_off; /* offset of data[0] within its stream */
    enum out_stream stream;
    size_t len;
    const char *data;
};

struct outlog;

/* Bytes of the output tail kept for results, independent of the cap. */
#define OUTLOG_TAIL_BYTES 4096

int outlog_new(size_t cap, struct outlog **ret);
void outlog_free(struct outlog *l);
/* Appends one read's bytes (copied), dropping the oldest chunks beyond the cap. A single
 * append larger than the cap keeps only its newest `cap` bytes. Returns 0 or -ENOMEM. */
int outlog_append(struct outlog *l, enum out_stream s, const void *data, size_t len);
/* Log offsets: [start, end) is held. */
uint64_t outlog_start(const struct outlog *l);
uint64_t outlog_end(const struct outlog *l);
/* Bytes held now, and the cap. */
size_t outlog_size(const struct outlog *l);
size_t outlog_cap(const struct outlog *l);
/* Lowers or raises the cap, dropping oldest chunks as needed; returns the bytes freed. */
size_t outlog_set_cap(struct outlog *l, size_t cap);
/* Total bytes ever appended to one stream (also after they were dropped). */
uint64_t outlog_stream_total(const struct outlog *l, enum out_stream s);
/*
 * The chunk holding log offset `off`, or else the first chunk after it; false at the end.
 * If `off` lies inside a chunk, ret->data/len/log_off/stream_off describe the remainder from
 * `off` on.
 */
bool outlog_read(const struct outlog *l, uint64_t off, struct outlog_chunk *ret);
/*
 * The log offset of stream byte `stream_off` of stream `s`, or of the first byte of that
 * stream held after it; returns outlog_end() when none is held. *ret_lost gets how many bytes
 * of that stream between stream_off and the returned position are no longer held.
 */
uint64_t outlog_seek_stream(const struct outlog *l, enum out_stream s, uint64_t stream_off,
                            uint64_t *ret_lost);
/* Copies the last up-to-OUTLOG_TAIL_BYTES bytes of output (all streams, in order). */
size_t outlog_tail(const struct outlog *l, char *out, size_t max);

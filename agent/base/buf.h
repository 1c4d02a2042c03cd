/* SPDX-License-Identifier: Apache-2.0 */
/*
 * A growable byte buffer with a hard cap. Growth is fallible: when the cap would be exceeded the
 * call fails with -E2BIG and the buffer is unchanged; when memory runs out, -ENOMEM. `data` is
 * always NUL-terminated past `len` once anything was reserved, so text can be read as a C string.
 * The struct is public so that owners can embed it.
 */
#pragma once

#include <stdarg.h>
#include <stddef.h>

#include "base/macro.h"

struct buf {
    char *data;
    size_t len;
    size_t cap; /* allocated bytes, excluding the trailing NUL slot */
    size_t max; /* hard cap on len */
};

/* Initialises an empty buffer that may hold at most `max` bytes. Allocates nothing. */
void buf_init(struct buf *b, size_t max);
/* Frees the storage; the buffer is empty and usable again afterwards. */
void buf_free(struct buf *b);
/* Empties the buffer, keeping its storage. */
void buf_reset(struct buf *b);
/* Makes room for `n` more bytes. Returns 0, -E2BIG or -ENOMEM. */
int buf_reserve(struct buf *b, size_t n);
/* Pointer to the free space after `len` (valid after a successful buf_reserve). */
static inline char *buf_tail(struct buf *b)
{
    return b->data + b->len;
}
/* Marks `n` bytes after `len` as used (they must have been reserved). */
void buf_commit(struct buf *b, size_t n);
int buf_append(struct buf *b, const void *p, size_t n);
int buf_append_str(struct buf *b, const char *s);
int buf_append_char(struct buf *b, char c);
int buf_printf(struct buf *b, const char *fmt, ...) _printf_(2, 3);
int buf_vprintf(struct buf *b, const char *fmt, va_list ap) _printf_(2, 0);
/* Drops the first `n` bytes. */
void buf_consume(struct buf *b, size_t n);
/* Hands the storage over to the caller (NUL-terminated; never NULL) and empties the buffer. */
char *buf_steal(struct buf *b, size_t *ret_len);

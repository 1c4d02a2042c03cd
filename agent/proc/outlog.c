/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Output log. Chunks live in a power-of-two ring of pointers (oldest at `head`), so appending
 * and dropping the oldest are O(1) (amortised over ring growth) and a lookup by log offset or
 * by stream offset is a binary search over the ring.
 *
 * Each chunk is one allocation: a header and its data. The header records, for every stream,
 * how many bytes of that stream were appended before the chunk's first byte. The chunk's log
 * offset is the sum of the three and its stream offset is its own stream's entry; because those
 * counts are non-decreasing along the ring, "where is byte k of stream s" is a binary search
 * too.
 *
 * The held chunks always cover [start, end) without holes: chunks are dropped oldest first and
 * only a single oversized append skips bytes, and that append evicts everything older.
 *
 * The cap counts data bytes only; headers, ring slots and allocator overhead are not charged.
 * Per chunk the log spends a 33-byte header (LP64), one ring slot (8 bytes) and the allocator's
 * own overhead (8-16 bytes with glibc). So that a child writing a byte at a time does not cost
 * ~60 bytes per byte, a small append of the same stream as the newest chunk is copied into that
 * chunk (grown geometrically) instead of getting its own. Chunk boundaries are therefore not
 * always read boundaries; readers address bytes by offset and must not depend on them. Growing
 * the newest chunk may move it, which the header's rule (no chunk pointers held across
 * appends) already allows.
 *
 * The tail is a separate byte ring, allocated on the first append, that the cap never touches.
 */
#include "proc/outlog.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "base/cleanup.h"
#include "base/macro.h"

/* Number of streams in enum out_stream (values 1..OUTLOG_NSTREAMS). */
#define OUTLOG_NSTREAMS 3

/* Ring slots allocated on the first append; the ring doubles from here. */
#define OUTLOG_RING_MIN 16

/* A chunk grown by coalescing small same-stream appends never exceeds this many bytes... */
#define OUTLOG_COALESCE_MAX 4096

/* ...nor 1/OUTLOG_COALESCE_CAP_DIV of the cap, so whole-chunk eviction stays fine-grained. */
#define OUTLOG_COALESCE_CAP_DIV 8

struct outlog_node {
    /* Bytes of each stream (index stream - 1) appended before data[0]. */
    uint64_t before[OUTLOG_NSTREAMS];
    size_t len;
    uint8_t stream; /* enum out_stream */
    char data[];
};

struct outlog {
    size_t cap;
    size_t size;                     /* data bytes held */
    uint64_t end;                    /* log offset after the last byte ever appended */
    uint64_t total[OUTLOG_NSTREAMS]; /* bytes ever appended, per stream */
    struct outlog_node **ring;       /* NULL until the first chunk */
    size_t ring_cap;                 /* 0 or a power of two */
    size_t head;                     /* slot of the oldest chunk */
    size_t count;                    /* chunks held */
    size_t last_alloc;               /* data capacity of the newest chunk */
    char *tail;                      /* OUTLOG_TAIL_BYTES, NULL until the first append */
    size_t tail_pos;                 /* next byte written in tail */
    size_t tail_len;                 /* valid bytes in tail */
};

static bool outlog_stream_valid(enum out_stream s)
{
    return (int) s >= 1 && (int) s <= OUTLOG_NSTREAMS;
}

static struct outlog_node *outlog_node_at(const struct outlog *l, size_t i)
{
    return l->ring[(l->head + i) & (l->ring_cap - 1)];
}

static struct outlog_node **outlog_slot_at(struct outlog *l, size_t i)
{
    return &l->ring[(l->head + i) & (l->ring_cap - 1)];
}

static uint64_t outlog_node_log_off(const struct outlog_node *n)
{
    uint64_t off = 0;
    for (size_t i = 0; i < OUTLOG_NSTREAMS; i++)
        off += n->before[i];
    return off;
}

/* Bytes of stream index `si` appended up to the end of chunk `n`. */
static uint64_t outlog_node_stream_end(const struct outlog_node *n, size_t si)
{
    return n->before[si] + (n->stream == si + 1 ? n->len : 0);
}

/* Moves the ring into `ncap` slots (a power of two >= count), oldest first; 0 frees it. */
static int outlog_ring_resize(struct outlog *l, size_t ncap)
{
    struct outlog_node **nr = NULL;

    if (ncap > 0) {
        if (ncap > SIZE_MAX / sizeof(*nr))
            return -ENOMEM;
        nr = malloc(ncap * sizeof(*nr));
        if (!nr)
            return -ENOMEM;
        for (size_t i = 0; i < l->count; i++)
            nr[i] = outlog_node_at(l, i);
    }
    free(l->ring);
    l->ring = nr;
    l->ring_cap = ncap;
    l->head = 0;
    return 0;
}

static int outlog_ring_reserve(struct outlog *l)
{
    if (l->count < l->ring_cap)
        return 0;
    if (l->ring_cap > SIZE_MAX / 2)
        return -ENOMEM;
    return outlog_ring_resize(l, l->ring_cap ? l->ring_cap * 2 : OUTLOG_RING_MIN);
}

/* Gives back ring slots after many chunks were dropped; failure just keeps the larger ring. */
static void outlog_ring_compact(struct outlog *l)
{
    if (l->count == 0) {
        (void) outlog_ring_resize(l, 0);
        return;
    }
    size_t want = OUTLOG_RING_MIN;
    while (want < l->count)
        want *= 2;
    if (l->ring_cap >= 4 * want)
        (void) outlog_ring_resize(l, want);
}

static void outlog_drop_oldest(struct outlog *l)
{
    struct outlog_node *n = l->ring[l->head];

    l->size -= n->len;
    free(n);
    l->head = (l->head + 1) & (l->ring_cap - 1);
    l->count--;
    if (l->count == 0)
        l->last_alloc = 0;
}

/* Drops whole oldest chunks until the held bytes fit the cap; returns the bytes freed. */
static size_t outlog_trim(struct outlog *l)
{
    size_t before = l->size;

    while (l->size > l->cap)
        outlog_drop_oldest(l);
    return before - l->size;
}

static void outlog_tail_put(struct outlog *l, const char *p, size_t n)
{
    if (n >= OUTLOG_TAIL_BYTES) {
        memcpy(l->tail, p + n - OUTLOG_TAIL_BYTES, OUTLOG_TAIL_BYTES);
        l->tail_pos = 0;
        l->tail_len = OUTLOG_TAIL_BYTES;
        return;
    }
    size_t first = MIN(n, OUTLOG_TAIL_BYTES - l->tail_pos);
    memcpy(l->tail + l->tail_pos, p, first);
    memcpy(l->tail, p + first, n - first);
    l->tail_pos = (l->tail_pos + n) % OUTLOG_TAIL_BYTES;
    l->tail_len = MIN(l->tail_len + n, (size_t) OUTLOG_TAIL_BYTES);
}

int outlog_new(size_t cap, struct outlog **ret)
{
    _cleanup_free_ struct outlog *l = calloc(1, sizeof(*l));

    if (!l)
        return -ENOMEM;
    l->cap = cap;
    *ret = TAKE_PTR(l);
    return 0;
}

void outlog_free(struct outlog *l)
{
    if (!l)
        return;
    while (l->count > 0)
        outlog_drop_oldest(l);
    free(l->ring);
    free(l->tail);
    free(l);
}

/* Copies `n` bytes of stream `s` into the newest chunk if it may grow by them; 1 if it did. */
static int outlog_coalesce(struct outlog *l, enum out_stream s, const char *p, size_t n)
{
    if (l->count == 0)
        return 0;

    struct outlog_node **slot = outlog_slot_at(l, l->count - 1);
    struct outlog_node *last = *slot;
    size_t limit = MIN((size_t) OUTLOG_COALESCE_MAX, l->cap / OUTLOG_COALESCE_CAP_DIV);

    if (last->stream != s || last->len >= limit || n > limit - last->len)
        return 0;
    if (n > l->last_alloc - last->len) {
        size_t na = MAX(l->last_alloc, (size_t) 1);
        while (na < last->len + n)
            na *= 2;
        na = MIN(na, limit);
        struct outlog_node *nn = realloc(last, offsetof(struct outlog_node, data) + na);
        if (!nn)
            return -ENOMEM;
        *slot = last = nn;
        l->last_alloc = na;
    }
    memcpy(last->data + last->len, p, n);
    last->len += n;
    return 1;
}

/* Gives the newest chunk's unused growth room back before a newer chunk follows it. */
static void outlog_shrink_last(struct outlog *l)
{
    if (l->count == 0)
        return;

    struct outlog_node **slot = outlog_slot_at(l, l->count - 1);
    if (l->last_alloc <= (*slot)->len)
        return;
    struct outlog_node *nn = realloc(*slot, offsetof(struct outlog_node, data) + (*slot)->len);
    if (nn)
        *slot = nn;
}

int outlog_append(struct outlog *l, enum out_stream s, const void *data, size_t len)
{
    const char *p = data;
    size_t si = (size_t) s - 1;
    int r;

    if (!outlog_stream_valid(s))
        return -EINVAL;
    if (len == 0)
        return 0;
    if (!l->tail) {
        l->tail = malloc(OUTLOG_TAIL_BYTES);
        if (!l->tail)
            return -ENOMEM;
    }

    size_t keep = MIN(len, l->cap);
    size_t skip = len - keep;
    if (keep > 0) {
        r = skip == 0 ? outlog_coalesce(l, s, p, len) : 0;
        if (r < 0)
            return r;
        if (r == 0) {
            if (keep > SIZE_MAX - offsetof(struct outlog_node, data))
                return -ENOMEM;
            r = outlog_ring_reserve(l);
            if (r < 0)
                return r;
            struct outlog_node *n = malloc(offsetof(struct outlog_node, data) + keep);
            if (!n)
                return -ENOMEM;
            memcpy(n->before, l->total, sizeof(n->before));
            n->before[si] += skip;
            n->len = keep;
            n->stream = (uint8_t) s;
            memcpy(n->data, p + skip, keep);
            outlog_shrink_last(l);
            *outlog_slot_at(l, l->count) = n;
            l->count++;
            l->last_alloc = keep;
        }
        l->size += keep;
    }

    outlog_tail_put(l, p, len);
    l->total[si] += len;
    l->end += len;
    (void) outlog_trim(l);
    return 0;
}

uint64_t outlog_start(const struct outlog *l)
{
    return l->count > 0 ? outlog_node_log_off(outlog_node_at(l, 0)) : l->end;
}

uint64_t outlog_end(const struct outlog *l)
{
    return l->end;
}

size_t outlog_size(const struct outlog *l)
{
    return l->size;
}

size_t outlog_cap(const struct outlog *l)
{
    return l->cap;
}

size_t outlog_set_cap(struct outlog *l, size_t cap)
{
    l->cap = cap;
    size_t freed = outlog_trim(l);
    if (freed > 0)
        outlog_ring_compact(l);
    return freed;
}

uint64_t outlog_stream_total(const struct outlog *l, enum out_stream s)
{
    return outlog_stream_valid(s) ? l->total[s - 1] : 0;
}

bool outlog_read(const struct outlog *l, uint64_t off, struct outlog_chunk *ret)
{
    if (l->count == 0 || off >= l->end)
        return false;

    /* The last chunk starting at or before off; chunk 0 if off precedes the log. */
    size_t lo = 0, hi = l->count - 1;
    while (lo < hi) {
        size_t mid = lo + (hi - lo + 1) / 2;
        if (outlog_node_log_off(outlog_node_at(l, mid)) <= off)
            lo = mid;
        else
            hi = mid - 1;
    }

    const struct outlog_node *n = outlog_node_at(l, lo);
    uint64_t log_off = outlog_node_log_off(n);
    size_t delta = off > log_off ? (size_t) (off - log_off) : 0;
    ret->log_off = log_off + delta;
    ret->stream_off = n->before[n->stream - 1] + delta;
    ret->stream = (enum out_stream) n->stream;
    ret->len = n->len - delta;
    ret->data = n->data + delta;
    return true;
}

uint64_t outlog_seek_stream(const struct outlog *l, enum out_stream s, uint64_t stream_off,
                            uint64_t *ret_lost)
{
    uint64_t lost = 0, pos = l->end;

    if (!outlog_stream_valid(s))
        goto done;

    size_t si = (size_t) s - 1;
    uint64_t total = l->total[si];
    /* Everything of the stream before the first held chunk is gone. */
    uint64_t want = stream_off;
    if (l->count > 0)
        want = MAX(want, outlog_node_at(l, 0)->before[si]);
    if (l->count == 0 || want >= total) {
        lost = total > stream_off ? total - stream_off : 0;
        goto done;
    }

    /*
     * The first chunk whose end, counted in stream s, lies past `want`. It is a chunk of
     * stream s: `want` is at least the stream's count before chunk 0, and that count only
     * grows at chunks of stream s.
     */
    size_t lo = 0, hi = l->count - 1;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (outlog_node_stream_end(outlog_node_at(l, mid), si) > want)
            hi = mid;
        else
            lo = mid + 1;
    }
    const struct outlog_node *n = outlog_node_at(l, lo);
    pos = outlog_node_log_off(n) + (want - n->before[si]);
    lost = want - stream_off;
done:
    if (ret_lost)
        *ret_lost = lost;
    return pos;
}

size_t outlog_tail(const struct outlog *l, char *out, size_t max)
{
    size_t n = MIN(max, l->tail_len);
    if (n == 0)
        return 0;

    /* The newest n bytes end just before tail_pos. */
    size_t from = (l->tail_pos + OUTLOG_TAIL_BYTES - n) % OUTLOG_TAIL_BYTES;
    size_t first = MIN(n, OUTLOG_TAIL_BYTES - from);
    memcpy(out, l->tail + from, first);
    memcpy(out + first, l->tail, n - first);
    return n;
}

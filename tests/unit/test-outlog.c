/* SPDX-License-Identifier: Apache-2.0 */
#include <errno.h>
#include <malloc.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "base/cleanup.h"
#include "base/macro.h"
#include "harness.h"
#include "proc/outlog.h"

DEFINE_CLEANUP_FUNC(struct outlog *, outlog_free)
#define _cleanup_outlog_ _cleanup_(outlog_freep)

/* Operations in the randomized test, and its fixed seed. */
#define PROP_OPS  10000
#define PROP_SEED 0x9e3779b97f4a7c15ULL

/* The randomized test alternates phases of this many operations: mixed, then tiny appends
 * with frequent stream switches (many small chunks). */
#define PROP_PHASE_OPS 2500

/* Allocation used to find out whether mallinfo2() tracks this process's allocations. */
#define PROBE_BYTES 65536

/* What a log may allocate before its first append. */
#define EMPTY_LOG_MAX_BYTES 256

/* Freed blocks glibc keeps in its per-thread cache, which mallinfo2() still counts in use. */
#define ALLOC_CACHE_SLACK 8192

/* Larger than any coalescing of small appends could make a chunk. */
#define BIG_READ 65536

static struct outlog *new_log(size_t cap)
{
    struct outlog *l = NULL;
    ASSERT_OK(outlog_new(cap, &l));
    ASSERT_NOT_NULL(l);
    return l;
}

static void append_str(struct outlog *l, enum out_stream s, const char *str)
{
    ASSERT_OK(outlog_append(l, s, str, strlen(str)));
}

static void expect_chunk(const struct outlog *l, uint64_t off, uint64_t log_off, enum out_stream s,
                         uint64_t stream_off, const char *data)
{
    struct outlog_chunk c;

    ASSERT_TRUE(outlog_read(l, off, &c));
    ASSERT_UEQ(c.log_off, log_off);
    ASSERT_EQ(c.stream, s);
    ASSERT_UEQ(c.stream_off, stream_off);
    ASSERT_UEQ(c.len, strlen(data));
    ASSERT_MEM_EQ(c.data, data, c.len);
}

static size_t count_chunks(const struct outlog *l)
{
    struct outlog_chunk c;
    size_t n = 0;

    for (uint64_t off = outlog_start(l); outlog_read(l, off, &c); off = c.log_off + c.len)
        n++;
    return n;
}

TEST(empty_log)
{
    _cleanup_outlog_ struct outlog *l = new_log(100);
    struct outlog_chunk c;
    uint64_t lost = 99;
    char buf[16];

    ASSERT_UEQ(outlog_start(l), 0);
    ASSERT_UEQ(outlog_end(l), 0);
    ASSERT_UEQ(outlog_size(l), 0);
    ASSERT_UEQ(outlog_cap(l), 100);
    ASSERT_FALSE(outlog_read(l, 0, &c));
    ASSERT_UEQ(outlog_seek_stream(l, OUT_STDOUT, 0, &lost), 0);
    ASSERT_UEQ(lost, 0);
    ASSERT_UEQ(outlog_tail(l, buf, sizeof(buf)), 0);
    ASSERT_UEQ(outlog_stream_total(l, OUT_STDERR), 0);
    ASSERT_UEQ(outlog_set_cap(l, 0), 0);
    outlog_free(NULL);
}

TEST(append_read_streams)
{
    _cleanup_outlog_ struct outlog *l = new_log(1000);
    struct outlog_chunk c;

    append_str(l, OUT_STDOUT, "hello");
    append_str(l, OUT_STDERR, "ERR");
    append_str(l, OUT_STDOUT, "world");
    append_str(l, OUT_PTY, "tty");
    ASSERT_UEQ(outlog_start(l), 0);
    ASSERT_UEQ(outlog_end(l), 16);
    ASSERT_UEQ(outlog_size(l), 16);
    expect_chunk(l, 0, 0, OUT_STDOUT, 0, "hello");
    expect_chunk(l, 5, 5, OUT_STDERR, 0, "ERR");
    expect_chunk(l, 8, 8, OUT_STDOUT, 5, "world");
    expect_chunk(l, 13, 13, OUT_PTY, 0, "tty");
    ASSERT_FALSE(outlog_read(l, 16, &c));
    ASSERT_FALSE(outlog_read(l, 1000, &c));
    ASSERT_FALSE(outlog_read(l, UINT64_MAX, &c));
    ASSERT_UEQ(outlog_stream_total(l, OUT_STDOUT), 10);
    ASSERT_UEQ(outlog_stream_total(l, OUT_STDERR), 3);
    ASSERT_UEQ(outlog_stream_total(l, OUT_PTY), 3);
}

TEST(read_inside_chunk)
{
    _cleanup_outlog_ struct outlog *l = new_log(1000);

    append_str(l, OUT_STDOUT, "hello");
    append_str(l, OUT_STDERR, "ERR");
    append_str(l, OUT_STDOUT, "world");
    expect_chunk(l, 2, 2, OUT_STDOUT, 2, "llo");
    expect_chunk(l, 4, 4, OUT_STDOUT, 4, "o");
    expect_chunk(l, 6, 6, OUT_STDERR, 1, "RR");
    expect_chunk(l, 12, 12, OUT_STDOUT, 9, "d");
}

TEST(zero_length_and_bad_stream)
{
    _cleanup_outlog_ struct outlog *l = new_log(1000);
    char buf[8];

    ASSERT_OK(outlog_append(l, OUT_STDOUT, "", 0));
    ASSERT_OK(outlog_append(l, OUT_STDOUT, NULL, 0));
    ASSERT_UEQ(outlog_end(l), 0);
    ASSERT_UEQ(count_chunks(l), 0);
    ASSERT_UEQ(outlog_tail(l, buf, sizeof(buf)), 0);
    ASSERT_ERR(outlog_append(l, (enum out_stream) 0, "x", 1), EINVAL);
    ASSERT_ERR(outlog_append(l, (enum out_stream) 4, "x", 1), EINVAL);
    ASSERT_UEQ(outlog_end(l), 0);
    ASSERT_UEQ(outlog_stream_total(l, (enum out_stream) 4), 0);
}

TEST(coalesce_small_same_stream)
{
    _cleanup_outlog_ struct outlog *l = new_log(1 << 20);

    /* A byte at a time on one stream becomes few chunks, with exact offsets. */
    for (int i = 0; i < 1000; i++)
        ASSERT_OK(outlog_append(l, OUT_PTY, &"abcdefghij"[i % 10], 1));
    ASSERT_UEQ(outlog_end(l), 1000);
    ASSERT_TRUE(count_chunks(l) < 10);
    expect_chunk(l, 997, 997, OUT_PTY, 997, "hij");

    /* Another stream starts a chunk of its own; reads never mix streams. */
    append_str(l, OUT_STDERR, "e");
    append_str(l, OUT_PTY, "z");
    expect_chunk(l, 999, 999, OUT_PTY, 999, "j");
    expect_chunk(l, 1000, 1000, OUT_STDERR, 0, "e");
    expect_chunk(l, 1001, 1001, OUT_PTY, 1000, "z");
}

TEST(big_reads_stay_separate)
{
    _cleanup_outlog_ struct outlog *l = new_log(10 * BIG_READ);
    _cleanup_free_ char *a = xmalloc(BIG_READ);
    struct outlog_chunk c;

    memset(a, 'a', BIG_READ);
    ASSERT_OK(outlog_append(l, OUT_STDOUT, a, BIG_READ));
    memset(a, 'b', BIG_READ);
    ASSERT_OK(outlog_append(l, OUT_STDOUT, a, BIG_READ));
    ASSERT_UEQ(count_chunks(l), 2);
    ASSERT_TRUE(outlog_read(l, 0, &c));
    ASSERT_UEQ(c.len, BIG_READ);
    ASSERT_EQ(c.data[BIG_READ - 1], 'a');
    ASSERT_TRUE(outlog_read(l, BIG_READ, &c));
    ASSERT_UEQ(c.stream_off, BIG_READ);
    ASSERT_EQ(c.data[0], 'b');
}

TEST(evict_at_cap)
{
    _cleanup_outlog_ struct outlog *l = new_log(10);
    struct outlog_chunk c;

    append_str(l, OUT_STDOUT, "aaaa");
    append_str(l, OUT_STDERR, "bbb");
    append_str(l, OUT_STDOUT, "cc");
    ASSERT_UEQ(outlog_size(l), 9);
    ASSERT_UEQ(outlog_start(l), 0);

    /* 9 + 4 > 10: "aaaa" goes; 5 + 4 fits. */
    append_str(l, OUT_STDERR, "dddd");
    ASSERT_UEQ(outlog_start(l), 4);
    ASSERT_UEQ(outlog_end(l), 13);
    ASSERT_UEQ(outlog_size(l), 9);
    expect_chunk(l, 4, 4, OUT_STDERR, 0, "bbb");

    /* A reader behind the log gets the first held chunk. */
    expect_chunk(l, 0, 4, OUT_STDERR, 0, "bbb");
    expect_chunk(l, 3, 4, OUT_STDERR, 0, "bbb");

    /* Exactly the cap fits without dropping. */
    append_str(l, OUT_PTY, "e");
    ASSERT_UEQ(outlog_start(l), 4);
    ASSERT_UEQ(outlog_size(l), 10);

    /* One more byte drops the oldest chunk whole, although one byte would do. */
    append_str(l, OUT_STDOUT, "f");
    ASSERT_UEQ(outlog_start(l), 7);
    ASSERT_UEQ(outlog_size(l), 8);
    expect_chunk(l, 7, 7, OUT_STDOUT, 4, "cc");
    ASSERT_UEQ(outlog_end(l), 15);
    ASSERT_TRUE(outlog_read(l, 14, &c));
    ASSERT_UEQ(c.stream_off, 6);
}

TEST(oversized_append)
{
    _cleanup_outlog_ struct outlog *l = new_log(4);
    char tail[16];

    append_str(l, OUT_STDOUT, "ab");
    append_str(l, OUT_STDERR, "xyz");
    ASSERT_UEQ(outlog_start(l), 2);

    append_str(l, OUT_STDOUT, "0123456789");
    ASSERT_UEQ(outlog_end(l), 15);
    ASSERT_UEQ(outlog_start(l), 11);
    ASSERT_UEQ(outlog_size(l), 4);
    ASSERT_UEQ(count_chunks(l), 1);
    expect_chunk(l, 0, 11, OUT_STDOUT, 8, "6789");
    expect_chunk(l, 13, 13, OUT_STDOUT, 10, "89");
    ASSERT_UEQ(outlog_stream_total(l, OUT_STDOUT), 12);
    ASSERT_UEQ(outlog_stream_total(l, OUT_STDERR), 3);
    ASSERT_UEQ(outlog_tail(l, tail, sizeof(tail)), 15);
    ASSERT_MEM_EQ(tail, "abxyz0123456789", 15);

    /* Exactly cap bytes are kept whole. */
    append_str(l, OUT_STDERR, "WXYZ");
    ASSERT_UEQ(outlog_start(l), 15);
    expect_chunk(l, 15, 15, OUT_STDERR, 3, "WXYZ");
}

TEST(set_cap_down_and_up)
{
    _cleanup_outlog_ struct outlog *l = new_log(100);

    append_str(l, OUT_STDOUT, "11111");
    append_str(l, OUT_STDERR, "222");
    append_str(l, OUT_STDOUT, "4444");
    append_str(l, OUT_STDERR, "55");
    ASSERT_UEQ(outlog_size(l), 14);

    ASSERT_UEQ(outlog_set_cap(l, 14), 0);
    ASSERT_UEQ(outlog_set_cap(l, 9), 5);
    ASSERT_UEQ(outlog_cap(l), 9);
    ASSERT_UEQ(outlog_start(l), 5);
    ASSERT_UEQ(outlog_size(l), 9);
    ASSERT_UEQ(outlog_set_cap(l, 6), 3);
    ASSERT_UEQ(outlog_start(l), 8);
    expect_chunk(l, 0, 8, OUT_STDOUT, 5, "4444");

    /* Raising frees nothing and keeps room for more. */
    ASSERT_UEQ(outlog_set_cap(l, 1000), 0);
    ASSERT_UEQ(outlog_size(l), 6);
    append_str(l, OUT_PTY, "0123456789");
    ASSERT_UEQ(outlog_start(l), 8);
    ASSERT_UEQ(outlog_size(l), 16);

    /* Below the newest chunk: everything goes, the offsets stay. */
    ASSERT_UEQ(outlog_set_cap(l, 3), 16);
    ASSERT_UEQ(outlog_size(l), 0);
    ASSERT_UEQ(outlog_start(l), 24);
    ASSERT_UEQ(outlog_end(l), 24);
    ASSERT_UEQ(count_chunks(l), 0);

    /* And the log works again after it was emptied. */
    append_str(l, OUT_STDOUT, "ok");
    expect_chunk(l, 24, 24, OUT_STDOUT, 9, "ok");
}

TEST(set_cap_many_chunks_then_zero)
{
    _cleanup_outlog_ struct outlog *l = new_log(1 << 20);
    char b[64];
    uint64_t lost;

    for (int i = 0; i < 5000; i++) {
        snprintf(b, sizeof(b), "%d,", i);
        ASSERT_OK(outlog_append(l, i % 2 ? OUT_STDERR : OUT_STDOUT, b, strlen(b)));
    }
    uint64_t end = outlog_end(l);
    ASSERT_UEQ(count_chunks(l), 5000);
    size_t size = outlog_size(l);
    ASSERT_UEQ(outlog_set_cap(l, 100), size - outlog_size(l));
    ASSERT_TRUE(outlog_size(l) <= 100);
    ASSERT_TRUE(outlog_size(l) > 90);
    size_t held = outlog_size(l);
    ASSERT_UEQ(outlog_set_cap(l, 0), held);
    ASSERT_UEQ(outlog_size(l), 0);
    ASSERT_UEQ(outlog_end(l), end);
    ASSERT_UEQ(outlog_seek_stream(l, OUT_STDOUT, 0, &lost), end);
    ASSERT_UEQ(lost, outlog_stream_total(l, OUT_STDOUT));
}

/* Bytes the allocator has handed out, or SIZE_MAX when it does not tell (sanitizers). */
static size_t heap_in_use(void)
{
    static int works = -1;

    if (works < 0) {
        size_t before = mallinfo2().uordblks;
        _cleanup_free_ _unused_ char *p = xmalloc(PROBE_BYTES);
        works = mallinfo2().uordblks >= before + PROBE_BYTES;
    }
    return works ? mallinfo2().uordblks : SIZE_MAX;
}

TEST(memory_grows_lazily_and_is_given_back)
{
    size_t base = heap_in_use();
    if (base == SIZE_MAX)
        TEST_SKIP("allocator does not report usage");

    _cleanup_outlog_ struct outlog *l = new_log(1 << 20);
    ASSERT_TRUE(heap_in_use() - base <= EMPTY_LOG_MAX_BYTES);

    for (int i = 0; i < 5000; i++)
        ASSERT_OK(outlog_append(l, i % 2 ? OUT_STDERR : OUT_STDOUT, "x", 1));
    ASSERT_TRUE(heap_in_use() - base > 5000 * 32);

    /* Evicted to nothing, a log keeps only its tail (and itself). */
    ASSERT_UEQ(outlog_set_cap(l, 0), 5000);
    ASSERT_TRUE(heap_in_use() - base <=
                EMPTY_LOG_MAX_BYTES + OUTLOG_TAIL_BYTES + ALLOC_CACHE_SLACK);
}

TEST(seek_stream)
{
    _cleanup_outlog_ struct outlog *l = new_log(100);
    uint64_t lost = 99;

    append_str(l, OUT_STDOUT, "abc");  /* log 0..3, stdout 0..3 */
    append_str(l, OUT_STDERR, "XY");   /* log 3..5, stderr 0..2 */
    append_str(l, OUT_STDOUT, "defg"); /* log 5..9, stdout 3..7 */
    append_str(l, OUT_STDERR, "Z");    /* log 9..10, stderr 2..3 */

    ASSERT_UEQ(outlog_seek_stream(l, OUT_STDOUT, 0, &lost), 0);
    ASSERT_UEQ(lost, 0);
    ASSERT_UEQ(outlog_seek_stream(l, OUT_STDOUT, 2, &lost), 2);
    ASSERT_UEQ(outlog_seek_stream(l, OUT_STDOUT, 3, &lost), 5);
    ASSERT_UEQ(outlog_seek_stream(l, OUT_STDOUT, 6, &lost), 8);
    ASSERT_UEQ(lost, 0);
    ASSERT_UEQ(outlog_seek_stream(l, OUT_STDERR, 0, &lost), 3);
    ASSERT_UEQ(outlog_seek_stream(l, OUT_STDERR, 1, &lost), 4);
    ASSERT_UEQ(outlog_seek_stream(l, OUT_STDERR, 2, &lost), 9);
    ASSERT_UEQ(lost, 0);

    /* At or past a stream's end: the log's end, nothing lost. */
    ASSERT_UEQ(outlog_seek_stream(l, OUT_STDOUT, 7, &lost), 10);
    ASSERT_UEQ(lost, 0);
    ASSERT_UEQ(outlog_seek_stream(l, OUT_STDERR, 50, &lost), 10);
    ASSERT_UEQ(lost, 0);
    ASSERT_UEQ(outlog_seek_stream(l, OUT_PTY, 0, &lost), 10);
    ASSERT_UEQ(lost, 0);
    ASSERT_UEQ(outlog_seek_stream(l, OUT_STDOUT, 1, NULL), 1);
}

TEST(seek_stream_lost)
{
    _cleanup_outlog_ struct outlog *l = new_log(7);
    uint64_t lost = 99;

    append_str(l, OUT_STDOUT, "abc");  /* log 0..3, stdout 0..3 */
    append_str(l, OUT_STDERR, "XY");   /* log 3..5, stderr 0..2 */
    append_str(l, OUT_STDOUT, "defg"); /* log 5..9, stdout 3..7; drops "abc" */
    ASSERT_UEQ(outlog_start(l), 3);

    ASSERT_UEQ(outlog_seek_stream(l, OUT_STDOUT, 0, &lost), 5);
    ASSERT_UEQ(lost, 3);
    ASSERT_UEQ(outlog_seek_stream(l, OUT_STDOUT, 2, &lost), 5);
    ASSERT_UEQ(lost, 1);
    ASSERT_UEQ(outlog_seek_stream(l, OUT_STDOUT, 4, &lost), 6);
    ASSERT_UEQ(lost, 0);
    ASSERT_UEQ(outlog_seek_stream(l, OUT_STDERR, 0, &lost), 3);
    ASSERT_UEQ(lost, 0);

    /* stderr goes entirely: nothing of it is held, all of it from 0 is lost. */
    append_str(l, OUT_PTY, "pp");
    ASSERT_UEQ(outlog_start(l), 5);
    ASSERT_UEQ(outlog_seek_stream(l, OUT_STDERR, 0, &lost), 11);
    ASSERT_UEQ(lost, 2);
    ASSERT_UEQ(outlog_seek_stream(l, OUT_STDERR, 1, &lost), 11);
    ASSERT_UEQ(lost, 1);
    ASSERT_UEQ(outlog_seek_stream(l, OUT_STDERR, 2, &lost), 11);
    ASSERT_UEQ(lost, 0);

    /* Bytes cut from an oversized append count as lost too. */
    append_str(l, OUT_STDOUT, "0123456789"); /* stdout 7..17, keeps 10..17 at log 14 */
    ASSERT_UEQ(outlog_start(l), 14);
    ASSERT_UEQ(outlog_seek_stream(l, OUT_STDOUT, 5, &lost), 14);
    ASSERT_UEQ(lost, 5);
    ASSERT_UEQ(outlog_seek_stream(l, OUT_STDOUT, 12, &lost), 16);
    ASSERT_UEQ(lost, 0);
    ASSERT_UEQ(outlog_seek_stream(l, OUT_PTY, 0, &lost), 21);
    ASSERT_UEQ(lost, 2);
}

TEST(stream_totals_after_eviction)
{
    _cleanup_outlog_ struct outlog *l = new_log(16);
    char b[32];

    for (int i = 0; i < 300; i++) {
        memset(b, 'a' + i % 26, sizeof(b));
        ASSERT_OK(outlog_append(l, (enum out_stream)(1 + i % 3), b, (size_t) (i % 20) + 1));
    }
    uint64_t want[4] = {0};
    for (int i = 0; i < 300; i++)
        want[1 + i % 3] += (uint64_t) (i % 20) + 1;
    ASSERT_UEQ(outlog_stream_total(l, OUT_STDOUT), want[1]);
    ASSERT_UEQ(outlog_stream_total(l, OUT_STDERR), want[2]);
    ASSERT_UEQ(outlog_stream_total(l, OUT_PTY), want[3]);
    ASSERT_UEQ(outlog_end(l), want[1] + want[2] + want[3]);
    ASSERT_TRUE(outlog_size(l) <= 16);
    ASSERT_UEQ(outlog_size(l), outlog_end(l) - outlog_start(l));
}

TEST(tail_many_small_appends)
{
    _cleanup_outlog_ struct outlog *l = new_log(1 << 20);
    _cleanup_free_ char *all = xmalloc(20000);
    char tail[OUTLOG_TAIL_BYTES + 10];
    size_t n = 0;

    for (int i = 0; n < 20000 - 16; i++) {
        char b[16];
        int len = snprintf(b, sizeof(b), "%d;", i);
        ASSERT_OK(outlog_append(l, i % 3 ? OUT_STDOUT : OUT_STDERR, b, (size_t) len));
        memcpy(all + n, b, (size_t) len);
        n += (size_t) len;
        if (i == 10) {
            ASSERT_UEQ(outlog_tail(l, tail, sizeof(tail)), n);
            ASSERT_MEM_EQ(tail, all, n);
        }
    }
    ASSERT_UEQ(outlog_tail(l, tail, sizeof(tail)), OUTLOG_TAIL_BYTES);
    ASSERT_MEM_EQ(tail, all + n - OUTLOG_TAIL_BYTES, OUTLOG_TAIL_BYTES);

    /* A smaller buffer gets the newest bytes. */
    ASSERT_UEQ(outlog_tail(l, tail, 7), 7);
    ASSERT_MEM_EQ(tail, all + n - 7, 7);
    ASSERT_UEQ(outlog_tail(l, tail, 0), 0);
}

TEST(tail_after_eviction_and_cap_zero)
{
    _cleanup_outlog_ struct outlog *l = new_log(8);
    _cleanup_free_ char *big = xmalloc(3 * OUTLOG_TAIL_BYTES);
    char tail[OUTLOG_TAIL_BYTES];

    append_str(l, OUT_STDOUT, "first-");
    append_str(l, OUT_STDERR, "second-");
    append_str(l, OUT_STDOUT, "third");
    ASSERT_UEQ(outlog_size(l), 5);
    ASSERT_UEQ(outlog_tail(l, tail, sizeof(tail)), 18);
    ASSERT_MEM_EQ(tail, "first-second-third", 18);

    /* Evicting the whole log keeps the tail. */
    ASSERT_UEQ(outlog_set_cap(l, 0), 5);
    ASSERT_UEQ(outlog_tail(l, tail, sizeof(tail)), 18);
    ASSERT_MEM_EQ(tail, "first-second-third", 18);

    /* With cap 0 nothing is held, but offsets advance and the tail follows. */
    append_str(l, OUT_PTY, "+more");
    ASSERT_UEQ(outlog_size(l), 0);
    ASSERT_UEQ(outlog_end(l), 23);
    ASSERT_UEQ(outlog_start(l), 23);
    ASSERT_UEQ(outlog_stream_total(l, OUT_PTY), 5);
    ASSERT_UEQ(count_chunks(l), 0);
    ASSERT_UEQ(outlog_tail(l, tail, sizeof(tail)), 23);
    ASSERT_MEM_EQ(tail, "first-second-third+more", 23);

    /* One append larger than the tail replaces it. */
    for (size_t i = 0; i < 3 * OUTLOG_TAIL_BYTES; i++)
        big[i] = (char) ('A' + i % 23);
    ASSERT_OK(outlog_append(l, OUT_STDOUT, big, 3 * OUTLOG_TAIL_BYTES));
    ASSERT_UEQ(outlog_tail(l, tail, sizeof(tail)), OUTLOG_TAIL_BYTES);
    ASSERT_MEM_EQ(tail, big + 2 * OUTLOG_TAIL_BYTES, OUTLOG_TAIL_BYTES);
    append_str(l, OUT_STDERR, "end");
    ASSERT_UEQ(outlog_tail(l, tail, sizeof(tail)), OUTLOG_TAIL_BYTES);
    ASSERT_MEM_EQ(tail, big + 2 * OUTLOG_TAIL_BYTES + 3, OUTLOG_TAIL_BYTES - 3);
    ASSERT_MEM_EQ(tail + OUTLOG_TAIL_BYTES - 3, "end", 3);
}

TEST(cap_zero_from_start)
{
    _cleanup_outlog_ struct outlog *l = new_log(0);
    struct outlog_chunk c;
    uint64_t lost;
    char tail[8];

    append_str(l, OUT_STDOUT, "abc");
    append_str(l, OUT_STDERR, "de");
    ASSERT_UEQ(outlog_end(l), 5);
    ASSERT_UEQ(outlog_start(l), 5);
    ASSERT_UEQ(outlog_size(l), 0);
    ASSERT_FALSE(outlog_read(l, 0, &c));
    ASSERT_UEQ(outlog_seek_stream(l, OUT_STDOUT, 1, &lost), 5);
    ASSERT_UEQ(lost, 2);
    ASSERT_UEQ(outlog_tail(l, tail, sizeof(tail)), 5);
    ASSERT_MEM_EQ(tail, "abcde", 5);

    /* Raising the cap later starts keeping from then on. */
    outlog_set_cap(l, 10);
    append_str(l, OUT_STDOUT, "fg");
    expect_chunk(l, 0, 5, OUT_STDOUT, 3, "fg");
}

/*
 * Randomized comparison with a flat model: every byte ever appended with its stream and stream
 * offset. After each operation the held chunks must be exactly the model's bytes from start to
 * end, and eviction must have dropped no more whole chunks than the cap required.
 */
struct model {
    char *bytes;
    uint8_t *stream;
    uint32_t *stream_off;
    size_t len, alloc;
    uint64_t total[4];
};

struct chunk_list {
    uint64_t *start;
    size_t n, alloc;
};

static uint64_t rng_state;

static uint64_t rng(void)
{
    /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dULL;
}

static size_t rng_range(size_t lo, size_t hi)
{
    return lo + (size_t) (rng() % (hi - lo + 1));
}

static void model_append(struct model *m, enum out_stream s, const char *p, size_t n)
{
    if (m->len + n > m->alloc) {
        m->alloc = MAX(m->alloc * 2, m->len + n);
        m->bytes = xrealloc(m->bytes, m->alloc);
        m->stream = xrealloc(m->stream, m->alloc);
        m->stream_off = xrealloc(m->stream_off, m->alloc * sizeof(*m->stream_off));
    }
    for (size_t i = 0; i < n; i++) {
        m->bytes[m->len + i] = p[i];
        m->stream[m->len + i] = (uint8_t) s;
        m->stream_off[m->len + i] = (uint32_t) (m->total[s] + i);
    }
    m->len += n;
    m->total[s] += n;
}

/* Walks the log comparing each chunk with the model; records the chunks' start offsets. */
static void check_log(const struct outlog *l, const struct model *m, struct chunk_list *cl)
{
    struct outlog_chunk c;
    uint64_t start = outlog_start(l), end = outlog_end(l), off = start;
    size_t held = 0;
    char tail[OUTLOG_TAIL_BYTES];

    ASSERT_UEQ(end, m->len);
    for (int s = 1; s <= 3; s++)
        ASSERT_UEQ(outlog_stream_total(l, (enum out_stream) s), m->total[s]);
    ASSERT_UEQ(outlog_size(l), end - start);
    ASSERT_TRUE(outlog_size(l) <= outlog_cap(l));

    cl->n = 0;
    while (outlog_read(l, off, &c)) {
        ASSERT_UEQ(c.log_off, off);
        ASSERT_TRUE(c.len > 0);
        ASSERT_TRUE(c.log_off + c.len <= end);
        ASSERT_MEM_EQ(c.data, m->bytes + off, c.len);
        for (size_t i = 0; i < c.len; i++) {
            ASSERT_EQ(m->stream[off + i], c.stream);
            ASSERT_UEQ(m->stream_off[off + i], c.stream_off + i);
        }
        if (cl->n == cl->alloc) {
            cl->alloc = MAX(cl->alloc * 2, (size_t) 64);
            cl->start = xrealloc(cl->start, cl->alloc * sizeof(*cl->start));
        }
        cl->start[cl->n++] = off;
        held += c.len;
        off += c.len;
    }
    ASSERT_UEQ(off, end);
    ASSERT_UEQ(held, outlog_size(l));

    size_t tn = outlog_tail(l, tail, sizeof(tail));
    ASSERT_UEQ(tn, MIN(m->len, (size_t) OUTLOG_TAIL_BYTES));
    if (tn > 0)
        ASSERT_MEM_EQ(tail, m->bytes + m->len - tn, tn);
}

/* The newest chunk dropped must have been needed to get under the cap. */
static void check_minimal_eviction(const struct outlog *l, const struct chunk_list *before)
{
    uint64_t start = outlog_start(l), end = outlog_end(l);
    size_t i = before->n;

    while (i > 0 && before->start[i - 1] >= start)
        i--;
    if (i > 0)
        ASSERT_TRUE(end - before->start[i - 1] > outlog_cap(l));
}

/* Returns whether the read came from behind the log. */
static bool check_read(const struct outlog *l, const struct model *m, uint64_t off)
{
    struct outlog_chunk c;
    uint64_t start = outlog_start(l), end = outlog_end(l);

    if (off >= end || start == end) {
        ASSERT_FALSE(outlog_read(l, off, &c));
        return false;
    }
    ASSERT_TRUE(outlog_read(l, off, &c));
    ASSERT_UEQ(c.log_off, MAX(off, start));
    ASSERT_TRUE(c.len > 0 && c.log_off + c.len <= end);
    ASSERT_MEM_EQ(c.data, m->bytes + c.log_off, c.len);
    ASSERT_EQ(c.stream, m->stream[c.log_off]);
    ASSERT_UEQ(c.stream_off, m->stream_off[c.log_off]);
    return off < start;
}

/* Returns the bytes reported lost. */
static uint64_t check_seek(const struct outlog *l, const struct model *m, enum out_stream s,
                           uint64_t k)
{
    uint64_t start = outlog_start(l), end = outlog_end(l), lost = 12345;
    uint64_t want = end, want_lost = m->total[s] > k ? m->total[s] - k : 0;

    for (uint64_t p = start; p < end; p++) {
        if (m->stream[p] == s && m->stream_off[p] >= k) {
            want = p;
            want_lost = m->stream_off[p] - k;
            break;
        }
    }
    ASSERT_UEQ(outlog_seek_stream(l, s, k, &lost), want);
    ASSERT_UEQ(lost, want_lost);
    return lost;
}

static size_t random_cap(void)
{
    switch (rng() % 16) {
    case 0:
        return 0;
    case 1:
        return rng_range(1, 64);
    case 2:
    case 3:
        return rng_range(65, 2048);
    default:
        return rng_range(2049, 65536);
    }
}

/* Mixed phases: reads of all sizes, streams in runs (so small appends coalesce). */
static size_t random_len(void)
{
    unsigned r = (unsigned) (rng() % 100);
    if (r < 4)
        return 0;
    if (r < 60)
        return rng_range(1, 16);
    if (r < 90)
        return rng_range(17, 512);
    if (r < 98)
        return rng_range(513, 4096);
    return rng_range(4097, 40000);
}

TEST(randomized_against_model)
{
    _cleanup_outlog_ struct outlog *l = new_log(4096);
    struct model m = {0};
    struct chunk_list cl = {0};
    _cleanup_free_ char *buf = xmalloc(40000);
    enum out_stream s = OUT_STDOUT;
    size_t appends = 0, oversized = 0, caps = 0, dropped_any = 0, behind = 0, lossy = 0;
    size_t max_chunks = 0;

    rng_state = PROP_SEED;
    check_log(l, &m, &cl);
    for (int op = 0; op < PROP_OPS; op++) {
        unsigned kind = (unsigned) (rng() % 100);
        uint64_t start_before = outlog_start(l);

        if (kind < 70) {
            /* Streams come in runs, as real output does, so small appends coalesce. */
            bool tiny = (op / PROP_PHASE_OPS) % 2 == 1;
            if (tiny || rng() % 3 == 0)
                s = (enum out_stream) rng_range(1, 3);
            size_t len = tiny ? rng_range(1, 8) : random_len();
            for (size_t i = 0; i < len; i++)
                buf[i] = (char) rng();
            oversized += len > outlog_cap(l);
            ASSERT_OK(outlog_append(l, s, buf, len));
            model_append(&m, s, buf, len);
            appends++;
        } else if (kind < 76) {
            size_t size = outlog_size(l);
            size_t freed = outlog_set_cap(l, random_cap());
            ASSERT_UEQ(freed, size - outlog_size(l));
            caps++;
        } else if (kind < 90) {
            uint64_t end = outlog_end(l);
            uint64_t off = rng() % 4 == 0 ? rng_range(0, (size_t) end + 5)
                                          : rng_range((size_t) outlog_start(l), (size_t) end + 1);
            behind += check_read(l, &m, off);
            continue;
        } else {
            enum out_stream ss = (enum out_stream) rng_range(1, 3);
            uint64_t k = rng_range(0, (size_t) m.total[ss] + 3);
            lossy += check_seek(l, &m, ss, k) > 0;
            continue;
        }
        ASSERT_TRUE(outlog_start(l) >= start_before);
        if (outlog_start(l) > start_before)
            dropped_any++;
        check_minimal_eviction(l, &cl);
        check_log(l, &m, &cl);
        max_chunks = MAX(max_chunks, cl.n);
    }
    printf("# appends %zu (oversized %zu), set_cap %zu, evictions %zu, reads behind %zu, "
           "lossy seeks %zu, max chunks %zu\n",
           appends, oversized, caps, dropped_any, behind, lossy, max_chunks);
    fflush(stdout);
    /* The run exercised what it is meant to. */
    ASSERT_TRUE(appends > PROP_OPS / 2);
    ASSERT_TRUE(caps > 100);
    ASSERT_TRUE(dropped_any > 1000);
    ASSERT_TRUE(oversized > 100);
    ASSERT_TRUE(behind > 100);
    ASSERT_TRUE(lossy > 100);
    ASSERT_TRUE(max_chunks > 200);

    free(m.bytes);
    free(m.stream);
    free(m.stream_off);
    free(cl.start);
}

TEST_MAIN()

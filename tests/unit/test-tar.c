/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fs/tar: archives written by the writer read back identically whether fed at once or byte by
 * byte; long and odd names through pax headers; hostile archives (absolute names, "..",
 * hard links, devices, bad checksums, truncation, oversized headers) refused in every split.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "base/macro.h"
#include "fs/tar.h"
#include "harness.h"

/* Everything the reader reported, as text: "<type:name:link:mode:size>", bytes, ".". */
struct tlog {
    struct buf text;
};

static int log_entry(void *userdata, const struct tar_entry *e)
{
    struct tlog *l = userdata;
    static const char types[] = {'f', 'd', 'l'};
    ASSERT_OK(buf_printf(&l->text, "<%c:%s:%s:%o:%llu>", types[e->type], e->name,
                         e->linkname ? e->linkname : "", e->mode, (unsigned long long) e->size));
    return 0;
}

static int log_data(void *userdata, const char *data, size_t len)
{
    struct tlog *l = userdata;
    ASSERT_OK(buf_append(&l->text, data, len));
    return 0;
}

static int log_end(void *userdata)
{
    struct tlog *l = userdata;
    ASSERT_OK(buf_append_char(&l->text, '.'));
    return 0;
}

static const struct tar_reader_ops log_ops = {
        .on_entry = log_entry,
        .on_data = log_data,
        .on_entry_end = log_end,
};

/* Reads `data` in pieces of `step` bytes (0: at once). Returns the reader's result; the log
 * and error text go to `l` and `err`. */
static int read_all(const char *data, size_t len, size_t step, struct tlog *l, char *err,
                    size_t errlen)
{
    struct tar_reader *t;
    int r = 0;
    buf_init(&l->text, SIZE_MAX);
    ASSERT_OK(tar_reader_new(&log_ops, l, &t));
    if (step == 0)
        step = len ? len : 1;
    for (size_t off = 0; off < len && r >= 0; off += step)
        r = tar_reader_feed(t, data + off, MIN(step, len - off));
    if (r >= 0)
        r = tar_reader_finish(t);
    (void) snprintf(err, errlen, "%s", tar_reader_error(t));
    tar_reader_free(t);
    return r;
}

static void add(struct buf *b, enum tar_type type, const char *name, const char *link,
                const char *content)
{
    struct tar_entry e = {.type = type,
                          .name = name,
                          .linkname = link,
                          .mode = type == TAR_DIR ? 0755 : 0644,
                          .size = content ? strlen(content) : 0,
                          .mtime = 1700000000};
    ASSERT_OK(tar_header(b, &e));
    if (content) {
        char zero[TAR_BLOCK] = {0};
        ASSERT_OK(buf_append(b, content, strlen(content)));
        ASSERT_OK(buf_append(b, zero, tar_padding(strlen(content))));
    }
}

/* Reads the archive at once and byte by byte and checks both give `want`. */
static void expect_log(const struct buf *b, const char *want)
{
    static const size_t steps[] = {0, 1, 7, 511, 512, 513};
    char err[200];
    for (size_t i = 0; i < ARRAY_SIZE(steps); i++) {
        struct tlog l;
        int r = read_all(b->data, b->len, steps[i], &l, err, sizeof(err));
        if (r < 0)
            fprintf(stderr, "step %zu: %d %s\n", steps[i], r, err);
        ASSERT_OK(r);
        ASSERT_OK(buf_append_char(&l.text, '\0'));
        ASSERT_STR_EQ(l.text.data, want);
        buf_free(&l.text);
    }
}

/* Every split refuses the archive with `want_err` (a substring of the reason) and reports
 * no entry whose name contains "evil". */
static void expect_refused(const struct buf *b, const char *want_err)
{
    static const size_t steps[] = {0, 1, 3, 512};
    char err[200];
    for (size_t i = 0; i < ARRAY_SIZE(steps); i++) {
        struct tlog l;
        int r = read_all(b->data, b->len, steps[i], &l, err, sizeof(err));
        ASSERT_TRUE(r == -EBADMSG || r == -E2BIG);
        if (!strstr(err, want_err))
            fprintf(stderr, "got '%s', want '%s'\n", err, want_err);
        ASSERT_NOT_NULL(strstr(err, want_err));
        ASSERT_OK(buf_append_char(&l.text, '\0'));
        ASSERT_NULL(strstr(l.text.data, "evil"));
        buf_free(&l.text);
    }
}

/* A raw ustar header with any type, name and size, checksummed. */
static void raw_header(struct buf *b, const char *name, char type, unsigned long long size,
                       const char *link)
{
    char h[TAR_BLOCK] = {0};
    unsigned sum = 0;
    (void) snprintf(h, 100, "%s", name);
    (void) snprintf(h + 100, 8, "%07o", 0644);
    if (size > 077777777777ULL) {
        /* GNU base-256 */
        h[124] = (char) 0x80;
        for (int i = 11; i > 0; i--, size >>= 8)
            h[124 + i] = (char) (size & 0xff);
    } else {
        char tmp[32];
        (void) snprintf(tmp, sizeof(tmp), "%011llo", size);
        memcpy(h + 124, tmp, 12);
    }
    h[156] = type;
    if (link)
        (void) snprintf(h + 157, 100, "%s", link);
    memcpy(h + 257, "ustar", 6);
    memcpy(h + 263, "00", 2);
    memset(h + 148, ' ', 8);
    for (size_t i = 0; i < TAR_BLOCK; i++)
        sum += (unsigned char) h[i];
    (void) snprintf(h + 148, 8, "%06o", sum);
    ASSERT_OK(buf_append(b, h, TAR_BLOCK));
}

TEST(tar_round_trip)
{
    struct buf b;
    buf_init(&b, SIZE_MAX);
    add(&b, TAR_DIR, "top", NULL, NULL);
    add(&b, TAR_FILE, "top/a.txt", NULL, "hello");
    add(&b, TAR_FILE, "top/empty", NULL, "");
    add(&b, TAR_SYMLINK, "top/link", "a.txt", NULL);
    add(&b, TAR_FILE, "top/sp ace\tand\nnewline", NULL, "x");
    add(&b, TAR_FILE, "top/ünïcødé", NULL, "u");
    ASSERT_OK(tar_end(&b));
    ASSERT_EQ(b.len % TAR_BLOCK, 0);
    expect_log(&b, "<d:top::755:0>.<f:top/a.txt::644:5>hello.<f:top/empty::644:0>."
                   "<l:top/link:a.txt:644:0>.<f:top/sp ace\tand\nnewline::644:1>x."
                   "<f:top/ünïcødé::644:1>u.");
    buf_free(&b);
}

TEST(tar_long_names)
{
    char longname[3000], longlink[1000], want[5000];
    struct buf b;
    buf_init(&b, SIZE_MAX);
    /* 150 bytes: fits prefix + name; 3000 bytes and a long link target: pax. */
    char mid[151];
    memset(mid, 'm', 150);
    mid[150] = '\0';
    mid[60] = '/';
    memset(longname, 'n', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    for (size_t i = 100; i < sizeof(longname) - 1; i += 200)
        longname[i] = '/';
    memset(longlink, 'k', sizeof(longlink) - 1);
    longlink[sizeof(longlink) - 1] = '\0';
    add(&b, TAR_FILE, mid, NULL, "1");
    add(&b, TAR_FILE, longname, NULL, "22");
    add(&b, TAR_SYMLINK, "l", longlink, NULL);
    ASSERT_OK(tar_end(&b));
    (void) snprintf(want, sizeof(want), "<f:%s::644:1>1.<f:%s::644:2>22.<l:l:%s:644:0>.", mid,
                    longname, longlink);
    expect_log(&b, want);
    buf_free(&b);

    char toolong[TAR_MAX_NAME + 2];
    memset(toolong, 'x', sizeof(toolong) - 1);
    toolong[sizeof(toolong) - 1] = '\0';
    buf_init(&b, SIZE_MAX);
    struct tar_entry e = {.type = TAR_FILE, .name = toolong};
    ASSERT_ERR(tar_header(&b, &e), ENAMETOOLONG);
    buf_free(&b);
}

TEST(tar_names_cleaned)
{
    struct buf b;
    buf_init(&b, SIZE_MAX);
    raw_header(&b, "./", '5', 0, NULL);
    raw_header(&b, "./d//e/./", '5', 0, NULL);
    raw_header(&b, "./d/f", '0', 0, NULL);
    ASSERT_OK(tar_end(&b));
    expect_log(&b, "<d:d/e::644:0>.<f:d/f::644:0>.");
    /* Without the end marker, ending between entries is accepted. */
    b.len -= 2 * TAR_BLOCK;
    expect_log(&b, "<d:d/e::644:0>.<f:d/f::644:0>.");
    buf_free(&b);
}

TEST(tar_hostile)
{
    struct buf b;
    char pax[256];

    buf_init(&b, SIZE_MAX);
    raw_header(&b, "../evil", '0', 0, NULL);
    expect_refused(&b, "'..'");
    buf_reset(&b);
    raw_header(&b, "ok/../../evil", '5', 0, NULL);
    expect_refused(&b, "'..'");
    buf_reset(&b);
    raw_header(&b, "/etc/evil", '0', 0, NULL);
    expect_refused(&b, "absolute");
    buf_reset(&b);
    raw_header(&b, "evil", '1', 0, "target");
    expect_refused(&b, "hard links");
    buf_reset(&b);
    raw_header(&b, "evil", '3', 0, NULL);
    expect_refused(&b, "device");
    buf_reset(&b);
    raw_header(&b, "evil", '4', 0, NULL);
    expect_refused(&b, "device");
    buf_reset(&b);
    raw_header(&b, "evil", '6', 0, NULL);
    expect_refused(&b, "FIFO");
    buf_reset(&b);
    raw_header(&b, "evil", 'Z', 0, NULL);
    expect_refused(&b, "unsupported");
    buf_reset(&b);
    raw_header(&b, "evil", '2', 0, NULL);
    expect_refused(&b, "without a target");

    /* A pax path overriding a harmless ustar name. */
    buf_reset(&b);
    int n = snprintf(pax, sizeof(pax), "%d path=../evil\n", 16);
    ASSERT_EQ(n, 16);
    raw_header(&b, "././@PaxHeader", 'x', (unsigned long long) n, NULL);
    char blk[TAR_BLOCK] = {0};
    memcpy(blk, pax, (size_t) n);
    ASSERT_OK(buf_append(&b, blk, TAR_BLOCK));
    raw_header(&b, "harmless", '0', 0, NULL);
    expect_refused(&b, "'..'");
    /* A GNU long name, absolute. */
    buf_reset(&b);
    raw_header(&b, "././@LongLink", 'L', 10, NULL);
    memset(blk, 0, sizeof(blk));
    memcpy(blk, "/abs/evil", 10);
    ASSERT_OK(buf_append(&b, blk, TAR_BLOCK));
    raw_header(&b, "harmless", '0', 0, NULL);
    expect_refused(&b, "absolute");

    /* Bad checksum. */
    buf_reset(&b);
    raw_header(&b, "evil", '0', 0, NULL);
    b.data[0] = 'E';
    expect_refused(&b, "checksum");
    /* Malformed pax record. */
    buf_reset(&b);
    raw_header(&b, "././@PaxHeader", 'x', 9, NULL);
    memset(blk, 0, sizeof(blk));
    memcpy(blk, "99 path=x", 9);
    ASSERT_OK(buf_append(&b, blk, TAR_BLOCK));
    raw_header(&b, "evil", '0', 0, NULL);
    expect_refused(&b, "pax");
    /* Oversized extended header. */
    buf_reset(&b);
    raw_header(&b, "././@PaxHeader", 'x', TAR_MAX_PAX_BYTES + 1ULL, NULL);
    expect_refused(&b, "larger");
    /* More content than the total limit. */
    buf_reset(&b);
    raw_header(&b, "evil", '0', TAR_MAX_TOTAL_BYTES + 1, NULL);
    expect_refused(&b, "larger");
    /* Truncated: inside content, inside a header. */
    buf_reset(&b);
    raw_header(&b, "f", '0', 1000, NULL);
    ASSERT_OK(buf_append(&b, blk, 100));
    expect_refused(&b, "truncated");
    buf_reset(&b);
    raw_header(&b, "f", '0', 0, NULL);
    ASSERT_OK(buf_append(&b, blk, 100));
    expect_refused(&b, "truncated");
    buf_free(&b);
}

TEST(tar_entry_limit)
{
    struct buf b;
    char err[200];
    struct tlog l;
    buf_init(&b, SIZE_MAX);
    for (int i = 0; i <= TAR_MAX_ENTRIES; i++)
        raw_header(&b, "d", '5', 0, NULL);
    int r = read_all(b.data, b.len, 0, &l, err, sizeof(err));
    ASSERT_EQ(r, -E2BIG);
    ASSERT_NOT_NULL(strstr(err, "entries"));
    buf_free(&l.text);
    buf_free(&b);
}

TEST(tar_garbage_fuzz)
{
    /* Random bytes after a valid start never crash and never report a hostile name. */
    struct buf b;
    char err[200];
    srand(1);
    for (int round = 0; round < 200; round++) {
        buf_init(&b, SIZE_MAX);
        add(&b, TAR_FILE, "ok", NULL, "data");
        size_t extra = (size_t) (rand() % 2048);
        for (size_t i = 0; i < extra; i++)
            ASSERT_OK(buf_append_char(&b, (char) rand()));
        struct tlog l;
        (void) read_all(b.data, b.len, (size_t) (rand() % 600), &l, err, sizeof(err));
        buf_free(&l.text);
        buf_free(&b);
    }
}

TEST_MAIN()

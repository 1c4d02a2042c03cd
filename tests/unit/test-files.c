/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fs/xfer: the pure helpers behind /files (multipart parser, Range, Accept-Encoding, dates,
 * entity tags, media types, Content-Disposition, content types, metadata checks) and the
 * blocking ones (hashing, the atomic writer) on a temporary directory.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "base/buf.h"
#include "base/cleanup.h"
#include "base/kv.h"
#include "base/macro.h"
#include "fs/fsop.h"
#include "fs/xfer.h"
#include "harness.h"

/* --- multipart -------------------------------------------------------------------------------- */

/* Everything the parser reported, as text: "[name|filename]" at a part's start, its bytes,
 * "." at its end. Adjacent data callbacks merge, so any split of the input gives the same log. */
struct mp_log {
    struct buf text;
    int fail_at_part; /* on_part_begin of this part (1-based) fails, 0: never */
};

static int log_begin(void *userdata, const struct xfer_mp *mp)
{
    struct mp_log *l = userdata;
    const char *cd = xfer_mp_header(mp, "content-disposition");
    const char *ct = xfer_mp_header(mp, "content-type");
    ASSERT_OK(buf_printf(&l->text, "[%s|%s]", cd ? cd : "-", ct ? ct : "-"));
    if (l->fail_at_part && (int) xfer_mp_parts(mp) == l->fail_at_part)
        return -ECANCELED;
    return 0;
}

static int log_data(void *userdata, const char *data, size_t len)
{
    struct mp_log *l = userdata;
    ASSERT_TRUE(len > 0);
    ASSERT_OK(buf_append(&l->text, data, len));
    return 0;
}

static int log_end(void *userdata)
{
    struct mp_log *l = userdata;
    ASSERT_OK(buf_append_char(&l->text, '.'));
    return 0;
}

static const struct xfer_mp_ops log_ops = {
        .on_part_begin = log_begin,
        .on_part_data = log_data,
        .on_part_end = log_end,
};

/* Feeds `body` in pieces of the given lengths (cycled; 0 = all at once). Returns the feed
 * result or the finish result; the log in *out (caller frees). */
static int mp_run(const char *boundary, const char *body, size_t len, const size_t *pieces,
                  size_t n_pieces, char **out)
{
    struct mp_log l = {0};
    struct xfer_mp *mp = NULL;
    buf_init(&l.text, 1 << 20);
    ASSERT_OK(buf_reserve(&l.text, 1));
    ASSERT_OK(xfer_mp_new(boundary, &log_ops, &l, &mp));
    int r = 0;
    size_t off = 0, k = 0;
    while (off < len && r == 0) {
        size_t n = n_pieces ? pieces[k++ % n_pieces] : len;
        if (n == 0 || n > len - off)
            n = len - off;
        r = xfer_mp_feed(mp, body + off, n);
        off += n;
    }
    if (r == 0)
        r = xfer_mp_finish(mp);
    *out = buf_steal(&l.text, NULL);
    xfer_mp_free(mp);
    return r;
}

#define BOUNDARY "----WebKitFormBoundary7MA4YWxkTrZu0gW"
/* The boundary without its last character. */
#define BOUNDAR  "----WebKitFormBoundary7MA4YWxkTrZu0g"

/* A body with a preamble, an epilogue, a field, and files whose content contains everything a
 * boundary scanner can trip over: CR, CRLF, "--", a boundary prefix and the boundary followed by
 * other text. */
static const char mp_body[] =
        "preamble text\r\n--not the boundary\r\n"
        "--" BOUNDARY "\r\n"
        "Content-Disposition: form-data; name=\"other\"\r\n"
        "\r\n"
        "field value\r\n"
        "--" BOUNDARY "\r\n"
        "Content-Disposition: form-data; name=\"file\"; filename=\"dir/a.txt\"\r\n"
        "Content-Type: text/plain\r\n"
        "\r\n"
        "line1\r\nline2\r\r\n\r\n-\r\n--\r\n--" BOUNDARY "x\r\n--" BOUNDARY "-x\r\n--" BOUNDARY
        "-\r\n--" BOUNDAR "\r\nend\r\n"
        "--" BOUNDARY "  \t\r\n"
        "content-disposition: form-data; name=file;\r\n"
        " filename=empty.bin\r\n"
        "\r\n"
        "\r\n--" BOUNDARY "--\r\nepilogue\r\n--" BOUNDARY "\r\nignored";

#define mp_body_len (sizeof(mp_body) - 1)

static const char mp_want[] = "[form-data; name=\"other\"|-]field value."
                              "[form-data; name=\"file\"; filename=\"dir/a.txt\"|text/plain]"
                              "line1\r\nline2\r\r\n\r\n-\r\n--\r\n--" BOUNDARY "x\r\n--" BOUNDARY
                              "-x\r\n--" BOUNDARY "-\r\n--" BOUNDAR "\r\nend."
                              "[form-data; name=file; filename=empty.bin|-].";

TEST(multipart_whole)
{
    _cleanup_free_ char *got = NULL;
    ASSERT_OK(mp_run(BOUNDARY, mp_body, mp_body_len, NULL, 0, &got));
    ASSERT_STR_EQ(got, mp_want);
}

TEST(multipart_byte_by_byte)
{
    static const size_t one[] = {1};
    _cleanup_free_ char *got = NULL;
    ASSERT_OK(mp_run(BOUNDARY, mp_body, mp_body_len, one, 1, &got));
    ASSERT_STR_EQ(got, mp_want);
}

TEST(multipart_every_split_point)
{
    for (size_t cut = 1; cut < mp_body_len; cut++) {
        const size_t pieces[] = {cut, mp_body_len};
        _cleanup_free_ char *got = NULL;
        ASSERT_OK(mp_run(BOUNDARY, mp_body, mp_body_len, pieces, 2, &got));
        if (strcmp(got, mp_want) != 0) {
            fprintf(stderr, "split at %zu\n", cut);
            ASSERT_STR_EQ(got, mp_want);
        }
    }
}

TEST(multipart_odd_piece_sizes)
{
    static const size_t sizes[][3] = {{2, 3, 5}, {7, 1, 13}, {37, 38, 39}, {4, 4, 4}};
    for (size_t i = 0; i < ARRAY_SIZE(sizes); i++) {
        _cleanup_free_ char *got = NULL;
        ASSERT_OK(mp_run(BOUNDARY, mp_body, mp_body_len, sizes[i], 3, &got));
        ASSERT_STR_EQ(got, mp_want);
    }
}

TEST(multipart_body_starts_with_boundary_and_binary_content)
{
    /* No preamble; content with NUL and CR bytes; the shortest boundary. */
    static const char body[] = "--b\r\n"
                               "\r\n"
                               "\x00\r\r\r\n-\r\n-b\r\n--\x00"
                               "\r\n--b--";
    static const char want[] = "[-|-]\x00\r\r\r\n-\r\n-b\r\n--\x00.";
    const size_t len = sizeof(body) - 1;
    /* cut 0: byte by byte; otherwise two pieces split at `cut`. The log holds NUL bytes, so
     * it is compared by length. */
    for (size_t cut = 0; cut < len; cut++) {
        struct mp_log l = {0};
        struct xfer_mp *mp;
        buf_init(&l.text, 4096);
        ASSERT_OK(xfer_mp_new("b", &log_ops, &l, &mp));
        if (cut == 0) {
            for (size_t i = 0; i < len; i++)
                ASSERT_OK(xfer_mp_feed(mp, body + i, 1));
        } else {
            ASSERT_OK(xfer_mp_feed(mp, body, cut));
            ASSERT_OK(xfer_mp_feed(mp, body + cut, len - cut));
        }
        ASSERT_OK(xfer_mp_finish(mp));
        ASSERT_UEQ(l.text.len, sizeof(want) - 1);
        ASSERT_MEM_EQ(l.text.data, want, sizeof(want) - 1);
        xfer_mp_free(mp);
        buf_free(&l.text);
    }
}

TEST(multipart_truncated)
{
    _cleanup_free_ char *a = NULL, *b = NULL, *c = NULL;
    struct xfer_mp *mp;
    /* Inside a part's content: the part never ends. */
    static const char in_part[] = "--b\r\nContent-Disposition: form-data; name=file\r\n\r\nabc";
    ASSERT_ERR(mp_run("b", in_part, sizeof(in_part) - 1, NULL, 0, &a), EBADMSG);
    ASSERT_STR_EQ(a, "[form-data; name=file|-]abc");
    /* Between parts. */
    static const char between[] = "--b\r\n\r\nabc\r\n--b\r\n";
    ASSERT_ERR(mp_run("b", between, sizeof(between) - 1, NULL, 0, &b), EBADMSG);
    /* Nothing but a preamble. */
    ASSERT_ERR(mp_run("b", "hello", 5, NULL, 0, &c), EBADMSG);
    struct mp_log l = {0};
    buf_init(&l.text, 4096);
    ASSERT_OK(xfer_mp_new("b", &log_ops, &l, &mp));
    ASSERT_OK(xfer_mp_feed(mp, in_part, sizeof(in_part) - 1));
    ASSERT_TRUE(xfer_mp_in_part(mp));
    ASSERT_ERR(xfer_mp_finish(mp), EBADMSG);
    ASSERT_STR_EQ(xfer_mp_error(mp), "unexpected EOF");
    xfer_mp_free(mp);
    buf_free(&l.text);
}

TEST(multipart_malformed)
{
    static const char *const bodies[] = {
            "--b\r\nno colon here\r\n\r\nx\r\n--b--",  /* header line without ':' */
            "--b\r\n: empty name\r\n\r\nx\r\n--b--",   /* empty header name */
            "--b\r\n continuation first\r\n\r\n--b--", /* fold with nothing before */
            "--b  x\r\n\r\nx\r\n--b--",                /* text after the boundary's blanks */
            "--b\rX\r\n\r\n--b--",                     /* CR not followed by LF */
            "--b\r\nA: b\n\r\n--b--",                  /* bare LF in the headers */
    };
    for (size_t i = 0; i < ARRAY_SIZE(bodies); i++) {
        _cleanup_free_ char *got = NULL;
        ASSERT_ERR(mp_run("b", bodies[i], strlen(bodies[i]), NULL, 0, &got), EBADMSG);
    }
}

TEST(multipart_limits)
{
    struct xfer_mp *mp = NULL;
    struct mp_log l = {0};
    buf_init(&l.text, SIZE_MAX);
    /* Boundaries: empty, too long, with CR/LF. */
    char longb[XFER_MP_MAX_BOUNDARY + 2];
    memset(longb, 'a', sizeof(longb) - 1);
    longb[sizeof(longb) - 1] = '\0';
    ASSERT_ERR(xfer_mp_new("", &log_ops, &l, &mp), EINVAL);
    ASSERT_ERR(xfer_mp_new(longb, &log_ops, &l, &mp), EINVAL);
    ASSERT_ERR(xfer_mp_new("a\r\nb", &log_ops, &l, &mp), EINVAL);

    /* A header section past the limit. */
    ASSERT_OK(xfer_mp_new("b", &log_ops, &l, &mp));
    ASSERT_OK(xfer_mp_feed(mp, "--b\r\nX-Big: ", 12));
    char chunk[1024];
    memset(chunk, 'v', sizeof(chunk));
    int r = 0;
    for (size_t sent = 0; r == 0 && sent <= XFER_MP_MAX_HEADER_BYTES; sent += sizeof(chunk))
        r = xfer_mp_feed(mp, chunk, sizeof(chunk));
    ASSERT_ERR(r, E2BIG);
    ASSERT_ERR(xfer_mp_feed(mp, "x", 1), EBADMSG); /* nothing more after an error */
    xfer_mp_free(mp);

    /* Too many header lines. */
    struct buf b;
    buf_init(&b, SIZE_MAX);
    ASSERT_OK(buf_append_str(&b, "--b\r\n"));
    for (int i = 0; i <= XFER_MP_MAX_HEADERS; i++)
        ASSERT_OK(buf_printf(&b, "H%d: v\r\n", i));
    ASSERT_OK(buf_append_str(&b, "\r\nx\r\n--b--"));
    _cleanup_free_ char *got = NULL;
    ASSERT_ERR(mp_run("b", b.data, b.len, NULL, 0, &got), E2BIG);

    /* Too many parts. */
    buf_reset(&b);
    for (int i = 0; i <= XFER_MP_MAX_PARTS; i++)
        ASSERT_OK(buf_append_str(&b, "--b\r\n\r\nx\r\n"));
    ASSERT_OK(buf_append_str(&b, "--b--"));
    _cleanup_free_ char *got2 = NULL;
    ASSERT_ERR(mp_run("b", b.data, b.len, NULL, 0, &got2), E2BIG);
    buf_free(&b);
    buf_free(&l.text);
}

TEST(multipart_callback_error_stops)
{
    struct mp_log l = {.fail_at_part = 2};
    struct xfer_mp *mp;
    buf_init(&l.text, SIZE_MAX);
    ASSERT_OK(xfer_mp_new(BOUNDARY, &log_ops, &l, &mp));
    ASSERT_ERR(xfer_mp_feed(mp, mp_body, mp_body_len), ECANCELED);
    ASSERT_EQ(xfer_mp_parts(mp), 2);
    xfer_mp_free(mp);
    buf_free(&l.text);
}

/* --- media types and Content-Disposition ------------------------------------------------------ */

TEST(media_type_parse)
{
    struct kv p;
    char *type = NULL;
    kv_init(&p);
    ASSERT_OK(xfer_media_type_parse("Multipart/Form-Data; Boundary=\"a b\"; x=1;", &type, &p));
    ASSERT_STR_EQ(type, "multipart/form-data");
    ASSERT_STR_EQ(kv_get(&p, "boundary"), "a b");
    ASSERT_STR_EQ(kv_get(&p, "x"), "1");
    free(type);
    kv_clear(&p);

    /* A filename taken as a path; MSIE-style unescaped backslashes stay. */
    ASSERT_OK(xfer_media_type_parse(
            "form-data; name=\"file\"; filename=\"/home/user/a \\\"q\\\".txt\"", &type, &p));
    ASSERT_STR_EQ(type, "form-data");
    ASSERT_STR_EQ(kv_get(&p, "filename"), "/home/user/a \"q\".txt");
    free(type);
    kv_clear(&p);
    ASSERT_OK(xfer_media_type_parse("form-data; filename=\"C:\\dir\\f.txt\"", &type, &p));
    ASSERT_STR_EQ(kv_get(&p, "filename"), "C:\\dir\\f.txt");
    free(type);
    kv_clear(&p);

    /* RFC 2231, single and continued. */
    ASSERT_OK(
            xfer_media_type_parse("attachment; filename*=UTF-8''%E2%82%AC%20rates.txt", &type, &p));
    ASSERT_STR_EQ(kv_get(&p, "filename"), "\xE2\x82\xAC rates.txt");
    free(type);
    kv_clear(&p);
    ASSERT_OK(xfer_media_type_parse("a; f*0*=utf-8''x%41; f*1=\"y z\"", &type, &p));
    ASSERT_STR_EQ(kv_get(&p, "f"), "xAy z");
    free(type);
    kv_clear(&p);

    /* Errors: no type, bad parameter (type kept), duplicate. */
    ASSERT_ERR(xfer_media_type_parse("", &type, &p), EBADMSG);
    ASSERT_NULL(type);
    ASSERT_ERR(xfer_media_type_parse("a/", &type, &p), EBADMSG);
    ASSERT_ERR(xfer_media_type_parse("text/plain; =x", &type, &p), EINVAL);
    ASSERT_STR_EQ(type, "text/plain");
    free(type);
    kv_clear(&p);
    ASSERT_ERR(xfer_media_type_parse("a; x=1; x=2", &type, &p), EINVAL);
    free(type);
    kv_clear(&p);
    ASSERT_ERR(xfer_media_type_parse("a; x=\"open", &type, &p), EINVAL);
    free(type);
    kv_clear(&p);
}

TEST(content_disposition_quoting)
{
    static const struct {
        const char *name;
        const char *want;
    } cases[] = {
            {"a.txt", "inline; filename=a.txt"},
            {"file-1_2.tar.gz", "inline; filename=file-1_2.tar.gz"},
            {"my file.txt", "inline; filename=\"my file.txt\""},
            {"a;b", "inline; filename=\"a;b\""},
            {"q\"uote\\.txt", "inline; filename=\"q\\\"uote\\\\.txt\""},
            {"tab\tname", "inline; filename=\"tab\tname\""},
            {"caf\xC3\xA9.txt", "inline; filename*=utf-8''caf%C3%A9.txt"},
            {"\xE2\x82\xAC 1%*'.txt", "inline; filename*=utf-8''%E2%82%AC%201%25%2A%27.txt"},
            {"new\nline", "inline; filename*=utf-8''new%0Aline"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        _cleanup_free_ char *got = xfer_content_disposition("inline", cases[i].name);
        ASSERT_STR_EQ(got, cases[i].want);
    }
}

/* --- content types ---------------------------------------------------------------------------- */

TEST(content_type_by_extension)
{
    ASSERT_STR_EQ(xfer_type_by_ext("a.txt"), "text/plain; charset=utf-8");
    ASSERT_STR_EQ(xfer_type_by_ext("/x/y/A.HTML"), "text/html; charset=utf-8");
    ASSERT_STR_EQ(xfer_type_by_ext("s.css"), "text/css; charset=utf-8");
    ASSERT_STR_EQ(xfer_type_by_ext("s.js"), "text/javascript; charset=utf-8");
    ASSERT_STR_EQ(xfer_type_by_ext("d.json"), "application/json");
    ASSERT_STR_EQ(xfer_type_by_ext("i.png"), "image/png");
    ASSERT_STR_EQ(xfer_type_by_ext("i.jpg"), "image/jpeg");
    ASSERT_STR_EQ(xfer_type_by_ext("i.jpeg"), "image/jpeg");
    ASSERT_STR_EQ(xfer_type_by_ext("i.gif"), "image/gif");
    ASSERT_STR_EQ(xfer_type_by_ext("i.svg"), "image/svg+xml");
    ASSERT_STR_EQ(xfer_type_by_ext("d.pdf"), "application/pdf");
    ASSERT_STR_EQ(xfer_type_by_ext("a.zip"), "application/zip");
    ASSERT_STR_EQ(xfer_type_by_ext("a.tar.gz"), "application/gzip");
    ASSERT_STR_EQ(xfer_type_by_ext("a.tar"), "application/x-tar");
    ASSERT_STR_EQ(xfer_type_by_ext("m.wasm"), "application/wasm");
    ASSERT_STR_EQ(xfer_type_by_ext("d.xml"), "text/xml; charset=utf-8");
    ASSERT_STR_EQ(xfer_type_by_ext("d.csv"), "text/csv; charset=utf-8");
    ASSERT_STR_EQ(xfer_type_by_ext("README.md"), "text/markdown; charset=utf-8");
    ASSERT_NULL(xfer_type_by_ext("noext"));
    ASSERT_NULL(xfer_type_by_ext("dir.d/noext"));
    ASSERT_NULL(xfer_type_by_ext("trailing."));
    ASSERT_NULL(xfer_type_by_ext("x.unknownext"));
    ASSERT_NULL(xfer_type_by_ext(""));
}

TEST(content_type_sniffing)
{
    ASSERT_STR_EQ(xfer_sniff("", 0), "text/plain; charset=utf-8");
    ASSERT_STR_EQ(xfer_sniff("hello\n", 6), "text/plain; charset=utf-8");
    ASSERT_STR_EQ(xfer_sniff("\xE2\x82\xAC utf-8 text", 14), "text/plain; charset=utf-8");
    ASSERT_STR_EQ(xfer_sniff("a\x00b", 3), "application/octet-stream");
    ASSERT_STR_EQ(xfer_sniff("\x01\x02\x03", 3), "application/octet-stream");
    ASSERT_STR_EQ(xfer_sniff("  <!DOCTYPE html><html>", 23), "text/html; charset=utf-8");
    ASSERT_STR_EQ(xfer_sniff("\n<html>x", 8), "text/html; charset=utf-8");
    ASSERT_STR_EQ(xfer_sniff("<htmlx", 6), "text/plain; charset=utf-8");
    ASSERT_STR_EQ(xfer_sniff("<?xml version", 13), "text/xml; charset=utf-8");
    ASSERT_STR_EQ(xfer_sniff("%PDF-1.7", 8), "application/pdf");
    ASSERT_STR_EQ(xfer_sniff("\x89PNG\r\n\x1a\n\0\0", 10), "image/png");
    ASSERT_STR_EQ(xfer_sniff("GIF89a..", 8), "image/gif");
    ASSERT_STR_EQ(xfer_sniff("\xFF\xD8\xFF\xE0", 4), "image/jpeg");
    ASSERT_STR_EQ(xfer_sniff("PK\x03\x04....", 8), "application/zip");
    ASSERT_STR_EQ(xfer_sniff("\x1F\x8B\x08\x00", 4), "application/x-gzip");
    ASSERT_STR_EQ(xfer_sniff("\0asm\x01\0\0\0", 8), "application/wasm");
    ASSERT_STR_EQ(xfer_sniff("\xEF\xBB\xBFtext", 7), "text/plain; charset=utf-8");
    ASSERT_STR_EQ(xfer_sniff("\xFF\xFEt\0", 4), "text/plain; charset=utf-16le");
    ASSERT_STR_EQ(xfer_sniff("RIFF\0\0\0\0WEBPVP8 ", 16), "image/webp");
    /* Only the first 512 bytes count. */
    char big[600];
    memset(big, 'a', sizeof(big));
    big[550] = '\0';
    ASSERT_STR_EQ(xfer_sniff(big, sizeof(big)), "text/plain; charset=utf-8");
    big[100] = '\0';
    ASSERT_STR_EQ(xfer_sniff(big, sizeof(big)), "application/octet-stream");
}

/* --- Range ------------------------------------------------------------------------------------ */

TEST(range_parsing)
{
    static const struct {
        const char *header;
        uint64_t size;
        enum xfer_range want;
        uint64_t start, len;
    } cases[] = {
            {NULL, 10, XFER_RANGE_FULL, 0, 0},
            {"", 10, XFER_RANGE_FULL, 0, 0},
            {"bytes=0-0", 10, XFER_RANGE_ONE, 0, 1},
            {"bytes=0-4", 10, XFER_RANGE_ONE, 0, 5},
            {"bytes=5-", 10, XFER_RANGE_ONE, 5, 5},
            {"bytes=5-100", 10, XFER_RANGE_ONE, 5, 5},
            {"bytes=-3", 10, XFER_RANGE_ONE, 7, 3},
            {"bytes=-30", 10, XFER_RANGE_ONE, 0, 10},
            {"bytes= 2 - 3 ", 10, XFER_RANGE_ONE, 2, 2},
            {"bytes=9-9", 10, XFER_RANGE_ONE, 9, 1},
            {"bytes=10-", 10, XFER_RANGE_UNSATISFIABLE, 0, 0},
            {"bytes=10-20", 10, XFER_RANGE_UNSATISFIABLE, 0, 0},
            {"bytes=-0", 10, XFER_RANGE_UNSATISFIABLE, 0, 0},
            {"bytes=0-", 0, XFER_RANGE_UNSATISFIABLE, 0, 0},
            {"bytes=-5", 0, XFER_RANGE_UNSATISFIABLE, 0, 0},
            {"bytes=20-30, 2-3", 10, XFER_RANGE_ONE, 2, 2},
            {"bytes=0-1,4-5", 10, XFER_RANGE_FULL, 0, 0},
            {"bytes=0-,0-", 10, XFER_RANGE_FULL, 0, 0},
            {"bytes=5-4", 10, XFER_RANGE_INVALID, 0, 0},
            {"bytes=a-b", 10, XFER_RANGE_INVALID, 0, 0},
            {"bytes=-", 10, XFER_RANGE_INVALID, 0, 0},
            {"bytes=--1", 10, XFER_RANGE_INVALID, 0, 0},
            {"bytes=1", 10, XFER_RANGE_INVALID, 0, 0},
            {"items=0-1", 10, XFER_RANGE_INVALID, 0, 0},
            {"bytes=99999999999999999999-", 10, XFER_RANGE_INVALID, 0, 0},
            {"bytes=,", 10, XFER_RANGE_FULL, 0, 0},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        uint64_t start = 12345, len = 12345;
        enum xfer_range got = xfer_parse_range(cases[i].header, cases[i].size, &start, &len);
        if (got != cases[i].want)
            fprintf(stderr, "case %zu: %s\n", i, cases[i].header ? cases[i].header : "(null)");
        ASSERT_EQ(got, cases[i].want);
        if (got == XFER_RANGE_ONE) {
            ASSERT_UEQ(start, cases[i].start);
            ASSERT_UEQ(len, cases[i].len);
        }
    }
}

/* --- Accept-Encoding -------------------------------------------------------------------------- */

TEST(accept_encoding)
{
    static const struct {
        const char *header;
        enum xfer_coding best;
        bool identity_ok;
    } cases[] = {
            {NULL, XFER_CODING_IDENTITY, true},
            {"", XFER_CODING_IDENTITY, true},
            {"gzip", XFER_CODING_GZIP, true},
            {"GZIP", XFER_CODING_GZIP, true},
            {"x-gzip", XFER_CODING_GZIP, true},
            {"gzip, deflate, br", XFER_CODING_GZIP, true},
            {"br, gzip", XFER_CODING_GZIP, true},
            {"br", XFER_CODING_IDENTITY, true},
            {"identity", XFER_CODING_IDENTITY, true},
            {"identity, gzip", XFER_CODING_IDENTITY, true},
            {"gzip;q=0.5, identity", XFER_CODING_IDENTITY, true},
            {"gzip;q=1.0, identity;q=0.5", XFER_CODING_GZIP, true},
            {"gzip;q=0", XFER_CODING_IDENTITY, true},
            {"gzip;q=0, identity;q=0", XFER_CODING_NONE, false},
            {"identity;q=0", XFER_CODING_NONE, false},
            {"gzip, identity;q=0", XFER_CODING_GZIP, false},
            {"*", XFER_CODING_IDENTITY, true},
            {"*;q=0", XFER_CODING_NONE, false},
            {"gzip, *;q=0", XFER_CODING_GZIP, false},
            {"identity, *;q=0", XFER_CODING_IDENTITY, true},
            {"identity;q=0, *", XFER_CODING_GZIP, false},
            {"identity;q=0, gzip;q=0, *", XFER_CODING_NONE, false},
            {"br;q=0.9, gzip;q=0.8", XFER_CODING_GZIP, true},
            {"gzip;q=bogus", XFER_CODING_GZIP, true},
            {" gzip ; q=0.3 ,identity;q=0.2", XFER_CODING_GZIP, true},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        struct xfer_accept a;
        xfer_accept_encoding(cases[i].header, &a);
        if (a.best != cases[i].best || a.identity_ok != cases[i].identity_ok)
            fprintf(stderr, "case %zu: %s\n", i, cases[i].header ? cases[i].header : "(null)");
        ASSERT_EQ(a.best, cases[i].best);
        ASSERT_EQ(a.identity_ok, cases[i].identity_ok);
    }
}

/* --- dates and entity tags -------------------------------------------------------------------- */

TEST(http_dates)
{
    char out[XFER_DATE_LEN];
    int64_t t;
    xfer_http_date(784111777, out);
    ASSERT_STR_EQ(out, "Sun, 06 Nov 1994 08:49:37 GMT");
    xfer_http_date(0, out);
    ASSERT_STR_EQ(out, "Thu, 01 Jan 1970 00:00:00 GMT");
    xfer_http_date(1700000000, out);
    ASSERT_STR_EQ(out, "Tue, 14 Nov 2023 22:13:20 GMT");
    ASSERT_OK(xfer_http_date_parse("Sun, 06 Nov 1994 08:49:37 GMT", &t));
    ASSERT_EQ(t, 784111777);
    ASSERT_OK(xfer_http_date_parse("Sunday, 06-Nov-94 08:49:37 GMT", &t));
    ASSERT_EQ(t, 784111777);
    ASSERT_OK(xfer_http_date_parse("Sun Nov  6 08:49:37 1994", &t));
    ASSERT_EQ(t, 784111777);
    ASSERT_OK(xfer_http_date_parse("Tue, 14 Nov 2023 22:13:20 GMT", &t));
    ASSERT_EQ(t, 1700000000);
    ASSERT_ERR(xfer_http_date_parse("Sun, 6 Nov 1994 08:49:37 GMT", &t), EINVAL);
    ASSERT_ERR(xfer_http_date_parse("Sun, 31 Feb 1994 08:49:37 GMT", &t), EINVAL);
    ASSERT_ERR(xfer_http_date_parse("Sun, 06 Nov 1994 08:49:37 UTC", &t), EINVAL);
    ASSERT_ERR(xfer_http_date_parse("yesterday", &t), EINVAL);
    ASSERT_ERR(xfer_http_date_parse("", &t), EINVAL);
}

TEST(entity_tags)
{
    const char *tag = "\"sha256:ab\"";
    ASSERT_TRUE(xfer_etag_match("\"sha256:ab\"", tag, false));
    ASSERT_TRUE(xfer_etag_match("\"x\", \"sha256:ab\"", tag, false));
    ASSERT_FALSE(xfer_etag_match("W/\"sha256:ab\"", tag, false)); /* strong: weak never matches */
    ASSERT_TRUE(xfer_etag_match("W/\"sha256:ab\"", tag, true));
    ASSERT_TRUE(xfer_etag_match("\"sha256:ab\"", "W/\"sha256:ab\"", true));
    ASSERT_FALSE(xfer_etag_match("\"sha256:ab\"", "W/\"sha256:ab\"", false));
    ASSERT_FALSE(xfer_etag_match("\"sha256:ac\"", tag, true));
    ASSERT_TRUE(xfer_etag_match("*", tag, false));
    ASSERT_FALSE(xfer_etag_match("*", NULL, false));
    ASSERT_FALSE(xfer_etag_match("\"sha256:ab\"", NULL, true));
    ASSERT_FALSE(xfer_etag_match("sha256:ab", tag, true)); /* unquoted: malformed */
    ASSERT_FALSE(xfer_etag_match("", tag, true));
}

/* --- metadata --------------------------------------------------------------------------------- */

TEST(metadata_validation)
{
    struct kv m;
    char err[512];
    kv_init(&m);
    ASSERT_OK(xfer_metadata_validate(&m, err, sizeof(err)));
    kv_set(&m, "author", "mish");
    kv_set(&m, "purpose", "upload ~ all printable !");
    ASSERT_OK(xfer_metadata_validate(&m, err, sizeof(err)));
    kv_set(&m, "bad", "tab\there");
    ASSERT_ERR(xfer_metadata_validate(&m, err, sizeof(err)), EINVAL);
    ASSERT_STR_EQ(
            err,
            "metadata value for key \"bad\" contains non-printable-ASCII byte 0x09 at offset 3");
    kv_del(&m, "bad");
    kv_set(&m, "u", "caf\xC3\xA9");
    ASSERT_ERR(xfer_metadata_validate(&m, err, sizeof(err)), EINVAL);
    ASSERT_STR_EQ(
            err, "metadata value for key \"u\" contains non-printable-ASCII byte 0xc3 at offset 3");
    kv_del(&m, "u");

    char key[XFER_META_MAX_KEY + 2];
    memset(key, 'k', sizeof(key) - 1);
    key[XFER_META_MAX_KEY] = '\0';
    kv_set(&m, key, "v"); /* exactly at the limit */
    ASSERT_OK(xfer_metadata_validate(&m, err, sizeof(err)));
    kv_del(&m, key);
    key[XFER_META_MAX_KEY] = 'k';
    key[XFER_META_MAX_KEY + 1] = '\0';
    kv_set(&m, key, "v");
    ASSERT_ERR(xfer_metadata_validate(&m, err, sizeof(err)), EINVAL);
    ASSERT_TRUE(strstr(err, "exceeds 246 bytes") != NULL);
    kv_del(&m, key);

    /* The total: prefix + key + value over all entries. */
    kv_clear(&m);
    char val[2000];
    memset(val, 'v', sizeof(val) - 1);
    val[sizeof(val) - 1] = '\0';
    kv_set(&m, "a", val);
    kv_set(&m, "b", val);
    ASSERT_OK(xfer_metadata_validate(&m, err, sizeof(err))); /* 2 * (9 + 1 + 1999) = 4018 */
    val[100] = '\0';
    kv_set(&m, "c", val); /* + 110 = 4128 */
    ASSERT_ERR(xfer_metadata_validate(&m, err, sizeof(err)), EINVAL);
    ASSERT_STR_EQ(err, "total metadata size 4128 exceeds 4096 bytes");
    kv_clear(&m);
}

/* --- files: hashing and the writer --------------------------------------------------------------
 */

static char *tmpdir(void)
{
    char tmpl[] = "/tmp/test-files-XXXXXX";
    ASSERT_NOT_NULL(mkdtemp(tmpl));
    char *real = realpath(tmpl, NULL);
    ASSERT_NOT_NULL(real);
    return real;
}

static void rmrf(const char *dir)
{
    char cmd[PATH_MAX + 32];
    (void) snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    (void) !system(cmd);
}

static char *pjoin(const char *a, const char *b)
{
    char *p = NULL;
    ASSERT_TRUE(asprintf(&p, "%s/%s", a, b) > 0);
    return p;
}

static void put(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    ASSERT_TRUE(fd >= 0);
    ASSERT_EQ(write(fd, text, strlen(text)), (ssize_t) strlen(text));
    close(fd);
}

static char *slurp(const char *path)
{
    static char out[4096];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ASSERT_TRUE(fd >= 0);
    ssize_t n = read(fd, out, sizeof(out) - 1);
    ASSERT_TRUE(n >= 0);
    out[n] = '\0';
    close(fd);
    return out;
}

static void write_file(const char *path, const char *text, const struct kv *meta,
                       enum xfer_write_mode want_mode, char hex[XFER_HEX_LEN])
{
    struct xfer_writer *w = NULL;
    struct fsop_err e = {0};
    bool unsupported = false;
    char *buf = malloc(XFER_CHUNK);
    const struct xfer_write_opts opts = {.uid = getuid(), .gid = getgid(), .metadata = meta};
    ASSERT_OK(xfer_writer_open(path, &opts, buf, &w, &e));
    ASSERT_EQ(xfer_writer_mode(w), want_mode);
    /* In pieces, one of them larger than the buffer. */
    size_t n = strlen(text), half = n / 2;
    ASSERT_OK(xfer_writer_write(w, text, half, &e));
    ASSERT_OK(xfer_writer_write(w, text + half, n - half, &e));
    ASSERT_OK(xfer_writer_commit(w, hex, &unsupported, &e));
    fsop_err_done(&e);
    free(buf);
}

TEST(writer_atomic_replace_and_hash)
{
    _cleanup_free_ char *dir = tmpdir();
    _cleanup_free_ char *path = pjoin(dir, "f.txt");
    char hex[XFER_HEX_LEN], hex2[XFER_HEX_LEN];
    struct stat before, after;
    umask(022);

    /* New file: 0644 after the umask, linked in whole. */
    write_file(path, "hello", NULL, XFER_WRITE_ATOMIC, hex);
    ASSERT_STR_EQ(slurp(path), "hello");
    ASSERT_STR_EQ(hex, "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
    ASSERT_OK(stat(path, &before));
    ASSERT_EQ(before.st_mode & 07777, 0644);

    /* Replacing: a new inode, the old file's mode; no temporary names left. */
    ASSERT_OK(chmod(path, 0600));
    ASSERT_OK(stat(path, &before));
    int old_fd = open(path, O_RDONLY | O_CLOEXEC);
    write_file(path, "world!", NULL, XFER_WRITE_ATOMIC, hex);
    ASSERT_OK(stat(path, &after));
    ASSERT_NE(before.st_ino, after.st_ino);
    ASSERT_EQ(after.st_mode & 07777, 0600);
    ASSERT_STR_EQ(slurp(path), "world!");
    char old[16] = {0};
    ASSERT_EQ(read(old_fd, old, sizeof(old) - 1), 5); /* an open reader keeps the old content */
    ASSERT_STR_EQ(old, "hello");
    close(old_fd);
    _cleanup_free_ char *cmd = NULL;
    ASSERT_TRUE(asprintf(&cmd, "test $(ls -A '%s' | wc -l) -eq 1", dir) > 0);
    ASSERT_EQ(system(cmd), 0);

    /* The hash of the file as it is now comes from the cache or from reading it: the same. */
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    char *buf = malloc(XFER_CHUNK);
    ASSERT_OK(fstat(fd, &after));
    ASSERT_OK(xfer_hash_fd(fd, &after, buf, NULL, hex2));
    ASSERT_STR_EQ(hex2, hex);
    close(fd);
    free(buf);
    rmrf(dir);
}

static void hash_path(const char *path, char hex[XFER_HEX_LEN])
{
    struct stat st;
    char *buf = malloc(XFER_CHUNK);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ASSERT_TRUE(fd >= 0);
    ASSERT_OK(fstat(fd, &st));
    ASSERT_OK(xfer_hash_fd(fd, &st, buf, NULL, hex));
    close(fd);
    free(buf);
}

/* The cache never hands out the hash of an older version: a same-size rewrite with the old
 * mtime put back still moves ctime. */
TEST(hash_cache_follows_changes)
{
    _cleanup_free_ char *dir = tmpdir();
    _cleanup_free_ char *path = pjoin(dir, "h.txt");
    char hex[XFER_HEX_LEN];
    struct stat st;
    put(path, "aaaa");
    usleep(150 * 1000); /* past the racy window: this hash is cached */
    hash_path(path, hex);
    ASSERT_STR_EQ(hex, "61be55a8e2f6b4e172338bddf184d6dbee29c98853e0a0485ecee7f27b9af0b4");
    hash_path(path, hex);
    ASSERT_STR_EQ(hex, "61be55a8e2f6b4e172338bddf184d6dbee29c98853e0a0485ecee7f27b9af0b4");
    ASSERT_OK(stat(path, &st));
    put(path, "bbbb");
    const struct timespec times[2] = {st.st_atim, st.st_mtim};
    ASSERT_OK(utimensat(AT_FDCWD, path, times, 0));
    hash_path(path, hex);
    ASSERT_STR_EQ(hex, "81cc5b17018674b401b42f35ba07bb79e211239c23bffe658da1577e3e646877");
    rmrf(dir);
}

TEST(writer_metadata_replaced)
{
    _cleanup_free_ char *dir = tmpdir();
    _cleanup_free_ char *path = pjoin(dir, "m.txt");
    char hex[XFER_HEX_LEN];
    struct kv m, got;
    kv_init(&m);
    kv_init(&got);
    put(path, "x");
    if (setxattr(path, "user.e2b.old", "1", 1, 0) < 0) {
        rmrf(dir);
        TEST_SKIP("no user xattrs here");
    }
    /* In place (a hard link) keeps the inode: the old key must be removed explicitly. */
    _cleanup_free_ char *link2 = pjoin(dir, "m2.txt");
    ASSERT_OK(link(path, link2));
    ASSERT_OK(setxattr(path, "user.keep", "k", 1, 0));
    kv_set(&m, "new", "v");
    write_file(path, "data", &m, XFER_WRITE_IN_PLACE, hex);
    xfer_metadata_read(path, &got);
    ASSERT_UEQ(got.n, 1);
    ASSERT_STR_EQ(kv_get(&got, "new"), "v");
    char v[8];
    ASSERT_EQ(getxattr(path, "user.keep", v, sizeof(v)), 1); /* other namespaces stay */
    ASSERT_STR_EQ(slurp(link2), "data");                     /* both names see the new data */
    kv_clear(&got);
    /* No metadata: the set is cleared. */
    write_file(path, "again", NULL, XFER_WRITE_IN_PLACE, hex);
    xfer_metadata_read(path, &got);
    ASSERT_UEQ(got.n, 0);
    kv_clear(&m);
    rmrf(dir);
}

TEST(writer_in_place_through_symlink_and_directory_refused)
{
    _cleanup_free_ char *dir = tmpdir();
    _cleanup_free_ char *target = pjoin(dir, "target.txt");
    _cleanup_free_ char *link_path = pjoin(dir, "link.txt");
    _cleanup_free_ char *sub = pjoin(dir, "sub");
    char hex[XFER_HEX_LEN];
    struct stat st;
    put(target, "old");
    ASSERT_OK(symlink("target.txt", link_path));
    write_file(link_path, "via link", NULL, XFER_WRITE_IN_PLACE, hex);
    ASSERT_OK(lstat(link_path, &st));
    ASSERT_TRUE(S_ISLNK(st.st_mode));
    ASSERT_STR_EQ(slurp(target), "via link");

    ASSERT_OK(mkdir(sub, 0755));
    struct xfer_writer *w = NULL;
    struct fsop_err e = {0};
    char *buf = malloc(XFER_CHUNK);
    const struct xfer_write_opts opts = {.uid = getuid(), .gid = getgid()};
    ASSERT_ERR(xfer_writer_open(sub, &opts, buf, &w, &e), EISDIR);
    fsop_err_done(&e);
    /* Aborting leaves nothing: the old content stays, no file appears. */
    _cleanup_free_ char *fresh = pjoin(dir, "fresh.txt");
    ASSERT_OK(xfer_writer_open(fresh, &opts, buf, &w, &e));
    ASSERT_OK(xfer_writer_write(w, "partial", 7, &e));
    xfer_writer_abort(w);
    ASSERT_ERR(access(fresh, F_OK) < 0 ? -errno : 0, ENOENT);
    ASSERT_OK(xfer_writer_open(target, &opts, buf, &w, &e));
    ASSERT_OK(xfer_writer_write(w, "partial", 7, &e));
    xfer_writer_abort(w);
    ASSERT_STR_EQ(slurp(target), "via link");
    free(buf);
    rmrf(dir);
}

TEST_MAIN()

/* SPDX-License-Identifier: Apache-2.0 */
#include "fs/xfer.h"

#include <errno.h>
#include <fcntl.h>
#include <nettle/sha2.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include "base/alloc.h"
#include "base/cleanup.h"
#include "base/log.h"
#include "base/macro.h"
#include "base/timefmt.h"
#include "base/utf8.h"

/* --- content types ---------------------------------------------------------------------------- */

/* Go's built-in table plus the common entries of Debian's /etc/mime.types, which Go also reads;
 * Go adds "charset=utf-8" to every text/ type it loads. Sorted by extension. */
static const struct {
    const char *ext;
    const char *type;
} ext_types[] = {
        {"avif", "image/avif"},
        {"css", "text/css; charset=utf-8"},
        {"csv", "text/csv; charset=utf-8"},
        {"gif", "image/gif"},
        {"gz", "application/gzip"},
        {"htm", "text/html; charset=utf-8"},
        {"html", "text/html; charset=utf-8"},
        {"ico", "image/vnd.microsoft.icon"},
        {"jpeg", "image/jpeg"},
        {"jpg", "image/jpeg"},
        {"js", "text/javascript; charset=utf-8"},
        {"json", "application/json"},
        {"md", "text/markdown; charset=utf-8"},
        {"mjs", "text/javascript; charset=utf-8"},
        {"mp3", "audio/mpeg"},
        {"mp4", "video/mp4"},
        {"pdf", "application/pdf"},
        {"png", "image/png"},
        {"py", "text/x-python; charset=utf-8"},
        {"svg", "image/svg+xml"},
        {"tar", "application/x-tar"},
        {"txt", "text/plain; charset=utf-8"},
        {"wasm", "application/wasm"},
        {"webp", "image/webp"},
        {"xml", "text/xml; charset=utf-8"},
        {"zip", "application/zip"},
};

const char *xfer_type_by_ext(const char *path)
{
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    const char *dot = strrchr(base, '.');
    if (!dot || !dot[1])
        return NULL;
    for (size_t i = 0; i < ARRAY_SIZE(ext_types); i++)
        if (strcasecmp(dot + 1, ext_types[i].ext) == 0)
            return ext_types[i].type;
    return NULL;
}

/* Go's sniff.go: leading white space is skipped for the markup signatures and the text test. */
static bool sniff_ws(uint8_t c)
{
    return c == '\t' || c == '\n' || c == '\x0c' || c == '\r' || c == ' ';
}

/* Go's "binary data byte" (sniff.go isBinary): control bytes other than \t \n \f \r and ESC. */
static bool sniff_binary(uint8_t c)
{
    return c <= 0x08 || c == 0x0b || (c >= 0x0e && c <= 0x1a) || (c >= 0x1c && c <= 0x1f);
}

static bool has_prefix(const uint8_t *d, size_t n, const char *sig, size_t slen)
{
    return n >= slen && memcmp(d, sig, slen) == 0;
}

/* An HTML signature: the tag, case-insensitively, then a space or '>'. */
static bool sniff_html(const uint8_t *d, size_t n, const char *tag)
{
    size_t t = strlen(tag);
    if (n < t + 1)
        return false;
    for (size_t i = 0; i < t; i++) {
        uint8_t c = d[i];
        if (c >= 'a' && c <= 'z')
            c = (uint8_t) (c - 32);
        if (c != (uint8_t) tag[i])
            return false;
    }
    return d[t] == ' ' || d[t] == '>';
}

static bool sniff_mp4(const uint8_t *d, size_t n)
{
    if (n < 12)
        return false;
    uint32_t box = (uint32_t) d[0] << 24 | (uint32_t) d[1] << 16 | (uint32_t) d[2] << 8 | d[3];
    if (n < box || box % 4 != 0 || memcmp(d + 4, "ftyp", 4) != 0)
        return false;
    for (uint32_t st = 8; st + 3 <= box; st += 4) {
        if (st == 12) /* the minor version */
            continue;
        if (memcmp(d + st, "mp4", 3) == 0)
            return true;
    }
    return false;
}

const char *xfer_sniff(const void *data, size_t len)
{
    static const char *const html_tags[] = {
            "<!DOCTYPE HTML", "<HTML", "<HEAD",  "<SCRIPT", "<IFRAME", "<H1",   "<DIV", "<FONT",
            "<TABLE",         "<A",    "<STYLE", "<TITLE",  "<B",      "<BODY", "<BR",  "<P",
            "<!--",
    };
    static const struct {
        const char *sig;
        size_t len;
        const char *type;
    } magic[] = {
            {"%PDF-", 5, "application/pdf"},
            {"%!PS-Adobe-", 11, "application/postscript"},
            {"\xFE\xFF", 2, "text/plain; charset=utf-16be"},
            {"\xFF\xFE", 2, "text/plain; charset=utf-16le"},
            {"\xEF\xBB\xBF", 3, "text/plain; charset=utf-8"},
            {"\x00\x00\x01\x00", 4, "image/x-icon"},
            {"\x00\x00\x02\x00", 4, "image/x-icon"},
            {"BM", 2, "image/bmp"},
            {"GIF87a", 6, "image/gif"},
            {"GIF89a", 6, "image/gif"},
            {"\x89PNG\x0D\x0A\x1A\x0A", 8, "image/png"},
            {"\xFF\xD8\xFF", 3, "image/jpeg"},
            {"\x1A\x45\xDF\xA3", 4, "video/webm"},
            {"OggS\x00", 5, "application/ogg"},
            {"ID3", 3, "audio/mpeg"},
            {"\x1F\x8B\x08", 3, "application/x-gzip"},
            {"PK\x03\x04", 4, "application/zip"},
            {"Rar!\x1A\x07\x00", 7, "application/x-rar-compressed"},
            {"Rar!\x1A\x07\x01\x00", 8, "application/x-rar-compressed"},
            {"\x00\x61\x73\x6D", 4, "application/wasm"},
    };
    const uint8_t *d = data;
    size_t n = MIN(len, (size_t) XFER_SNIFF_LEN);
    size_t ws = 0;
    while (ws < n && sniff_ws(d[ws]))
        ws++;
    for (size_t i = 0; i < ARRAY_SIZE(html_tags); i++)
        if (sniff_html(d + ws, n - ws, html_tags[i]))
            return "text/html; charset=utf-8";
    if (has_prefix(d + ws, n - ws, "<?xml", 5))
        return "text/xml; charset=utf-8";
    for (size_t i = 0; i < ARRAY_SIZE(magic); i++)
        if (has_prefix(d, n, magic[i].sig, magic[i].len))
            return magic[i].type;
    if (n >= 14 && memcmp(d, "RIFF", 4) == 0 && memcmp(d + 8, "WEBPVP", 6) == 0)
        return "image/webp";
    if (sniff_mp4(d, n))
        return "video/mp4";
    for (size_t i = ws; i < n; i++)
        if (sniff_binary(d[i]))
            return "application/octet-stream";
    return "text/plain; charset=utf-8";
}

/* --- media types (Go's mime package) ---------------------------------------------------------- */

static bool tspecial(char c)
{
    return strchr("()<>@,;:\\\"/[]?=", c) != NULL && c != '\0';
}

static bool token_char(char c)
{
    unsigned char u = (unsigned char) c;
    return u > 0x20 && u < 0x7f && !tspecial(c);
}

static bool is_token(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (!token_char(*s))
            return false;
    return true;
}

char *xfer_content_disposition(const char *disposition, const char *filename)
{
    static const char hex[] = "0123456789ABCDEF";
    struct buf b;
    bool encode = false;
    buf_init(&b, SIZE_MAX);
    for (const char *p = disposition; *p; p++)
        (void) buf_append_char(&b, (char) (*p >= 'A' && *p <= 'Z' ? *p + 32 : *p));
    (void) buf_append_str(&b, "; filename");
    for (const unsigned char *p = (const unsigned char *) filename; *p; p++)
        if ((*p < ' ' || *p > '~') && *p != '\t')
            encode = true;
    if (encode) {
        /* RFC 2231: attribute-char is any CHAR but space, CTLs, '*', '\'', '%' and tspecials. */
        (void) buf_append_str(&b, "*=utf-8''");
        for (const unsigned char *p = (const unsigned char *) filename; *p; p++) {
            if (*p <= ' ' || *p >= 0x7f || *p == '*' || *p == '\'' || *p == '%' ||
                tspecial((char) *p)) {
                char e[3] = {'%', hex[*p >> 4], hex[*p & 15]};
                (void) buf_append(&b, e, 3);
            } else {
                (void) buf_append_char(&b, (char) *p);
            }
        }
    } else if (is_token(filename)) {
        (void) buf_append_char(&b, '=');
        (void) buf_append_str(&b, filename);
    } else {
        (void) buf_append_str(&b, "=\"");
        for (const char *p = filename; *p; p++) {
            if (*p == '"' || *p == '\\')
                (void) buf_append_char(&b, '\\');
            (void) buf_append_char(&b, *p);
        }
        (void) buf_append_char(&b, '"');
    }
    return buf_steal(&b, NULL);
}

/* unicode.IsSpace for the ASCII range. */
static bool mime_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

static const char *skip_space(const char *s)
{
    while (mime_space(*s))
        s++;
    return s;
}

/* Leading token characters of `s`: their count. */
static size_t token_len(const char *s)
{
    size_t n = 0;
    while (token_char(s[n]))
        n++;
    return n;
}

/* Go's consumeValue: a token or a quoted-string (backslash escapes only tspecials, as MSIE
 * sends Windows paths unescaped). Returns the length consumed (0: none) and the value. */
static size_t consume_value(const char *s, char **ret)
{
    if (*s != '"') {
        size_t n = token_len(s);
        if (n)
            *ret = xstrndup(s, n);
        return n;
    }
    struct buf b;
    buf_init(&b, SIZE_MAX);
    (void) buf_reserve(&b, 1);
    for (size_t i = 1; s[i]; i++) {
        if (s[i] == '"') {
            *ret = buf_steal(&b, NULL);
            return i + 1;
        }
        if (s[i] == '\\' && s[i + 1] && tspecial(s[i + 1])) {
            (void) buf_append_char(&b, s[i + 1]);
            i++;
            continue;
        }
        if (s[i] == '\r' || s[i] == '\n')
            break;
        (void) buf_append_char(&b, s[i]);
    }
    buf_free(&b);
    return 0;
}

static int unhex(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Go's percentHexUnescape. NULL for a bad escape (a decoded NUL too: values become C strings). */
static char *pct_unescape(const char *s)
{
    char *out = xmalloc(strlen(s) + 1);
    size_t o = 0;
    for (size_t i = 0; s[i]; i++) {
        if (s[i] == '%') {
            int a = s[i + 1] ? unhex(s[i + 1]) : -1;
            int b = a >= 0 && s[i + 2] ? unhex(s[i + 2]) : -1;
            if (a < 0 || b < 0 || (a == 0 && b == 0)) {
                free(out);
                return NULL;
            }
            out[o++] = (char) (a * 16 + b);
            i += 2;
        } else {
            out[o++] = s[i];
        }
    }
    out[o] = '\0';
    return out;
}

/* RFC 2231 "charset'lang'pct-encoded" for us-ascii and utf-8 (Go's decode2231Enc). */
static char *decode_2231(const char *v)
{
    const char *q1 = strchr(v, '\'');
    const char *q2 = q1 ? strchr(q1 + 1, '\'') : NULL;
    if (!q2 || q1 == v)
        return NULL;
    size_t clen = (size_t) (q1 - v);
    if (!((clen == 5 && strncasecmp(v, "utf-8", 5) == 0) ||
          (clen == 8 && strncasecmp(v, "us-ascii", 8) == 0)))
        return NULL;
    return pct_unescape(q2 + 1);
}

/* Longest parameter name whose RFC 2231 pieces are joined; real ones are a few bytes. */
#define MIME_PARAM_NAME_MAX 256

/* Joins RFC 2231 pieces ("name*", or "name*0", "name*1*", …) collected in `stars` into params. */
static void stitch_2231(const struct kv *stars, struct kv *params)
{
    for (size_t i = 0; i < stars->n; i++) {
        const char *key = stars->items[i].key;
        size_t blen = (size_t) (strchr(key, '*') - key);
        /* Handle each base name once: at its first (sorted) key. */
        bool seen = false;
        for (size_t j = 0; j < i; j++)
            if (strncmp(stars->items[j].key, key, blen) == 0 && stars->items[j].key[blen] == '*')
                seen = true;
        if (seen)
            continue;
        _cleanup_free_ char *base = xstrndup(key, blen);
        char name[MIME_PARAM_NAME_MAX + 16]; /* base, '*', a piece number, '*' */
        if (blen > MIME_PARAM_NAME_MAX)
            continue;
        (void) snprintf(name, sizeof(name), "%s*", base);
        const char *single = kv_get(stars, name);
        if (single) {
            _cleanup_free_ char *dec = decode_2231(single);
            if (dec)
                kv_set(params, base, dec);
            continue;
        }
        struct buf b;
        bool valid = false;
        buf_init(&b, SIZE_MAX);
        (void) buf_reserve(&b, 1);
        for (unsigned n = 0;; n++) {
            (void) snprintf(name, sizeof(name), "%s*%u", base, n);
            const char *v = kv_get(stars, name);
            if (v) {
                valid = true;
                (void) buf_append_str(&b, v);
                continue;
            }
            (void) snprintf(name, sizeof(name), "%s*%u*", base, n);
            v = kv_get(stars, name);
            if (!v)
                break;
            valid = true;
            _cleanup_free_ char *dec = n == 0 ? decode_2231(v) : pct_unescape(v);
            if (dec)
                (void) buf_append_str(&b, dec);
        }
        if (valid)
            kv_set(params, base, b.data);
        buf_free(&b);
    }
}

int xfer_media_type_parse(const char *value, char **ret_type, struct kv *ret_params)
{
    const char *semi = strchr(value, ';');
    size_t blen = semi ? (size_t) (semi - value) : strlen(value);
    *ret_type = NULL;
    /* The media type: token or token/token, trimmed and lower-cased. */
    _cleanup_free_ char *base = xstrndup(value, blen);
    const char *b = skip_space(base);
    size_t e = strlen(b);
    while (e > 0 && mime_space(b[e - 1]))
        e--;
    size_t t1 = token_len(b);
    if (t1 == 0)
        return -EBADMSG;
    if (t1 < e) {
        if (b[t1] != '/')
            return -EBADMSG;
        size_t t2 = token_len(b + t1 + 1);
        if (t2 == 0 || t1 + 1 + t2 != e)
            return -EBADMSG;
    }
    char *type = xstrndup(b, e);
    for (char *p = type; *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char) (*p + 32);
    *ret_type = type;

    struct kv stars;
    kv_init(&stars);
    int r = 0;
    const char *v = value + blen;
    while (*v) {
        v = skip_space(v);
        if (!*v)
            break;
        const char *start = v;
        if (*v != ';') {
            r = -EINVAL;
            break;
        }
        v = skip_space(v + 1);
        size_t klen = token_len(v);
        if (klen == 0) {
            /* A trailing ";" is not an error. */
            if (!*skip_space(start + 1))
                break;
            r = -EINVAL;
            break;
        }
        _cleanup_free_ char *key = xstrndup(v, klen);
        for (char *p = key; *p; p++)
            if (*p >= 'A' && *p <= 'Z')
                *p = (char) (*p + 32);
        v = skip_space(v + klen);
        if (*v != '=') {
            r = -EINVAL;
            break;
        }
        v = skip_space(v + 1);
        char *val = NULL;
        size_t used = consume_value(v, &val);
        if (used == 0) {
            r = -EINVAL;
            break;
        }
        v += used;
        struct kv *m = strchr(key, '*') ? &stars : ret_params;
        const char *old = kv_get(m, key);
        if (old && !streq(old, val)) {
            free(val);
            r = -EINVAL; /* "mime: duplicate parameter name" */
            break;
        }
        kv_set(m, key, val);
        free(val);
    }
    if (r == 0)
        stitch_2231(&stars, ret_params);
    kv_clear(&stars);
    return r;
}

/* --- Range ------------------------------------------------------------------------------------ */

static const char *trim_ows(const char *s, const char *end, const char **ret_end)
{
    while (s < end && (*s == ' ' || *s == '\t'))
        s++;
    while (end > s && (end[-1] == ' ' || end[-1] == '\t'))
        end--;
    *ret_end = end;
    return s;
}

/* Decimal digits in [s, end) only; -EINVAL otherwise (Go's ParseInt also takes a sign, but a
 * signed position is refused by parseRange anyway). */
static int parse_dec(const char *s, const char *end, uint64_t *ret)
{
    uint64_t v = 0;
    if (s == end)
        return -EINVAL;
    for (; s < end; s++) {
        if (*s < '0' || *s > '9')
            return -EINVAL;
        if (v > (UINT64_MAX - 9) / 10 || v * 10 + (uint64_t) (*s - '0') > (uint64_t) INT64_MAX)
            return -EINVAL;
        v = v * 10 + (uint64_t) (*s - '0');
    }
    *ret = v;
    return 0;
}

enum xfer_range xfer_parse_range(const char *header, uint64_t size, uint64_t *ret_start,
                                 uint64_t *ret_len)
{
    if (!header || !*header)
        return XFER_RANGE_FULL;
    if (strncmp(header, "bytes=", 6) != 0)
        return XFER_RANGE_INVALID;
    size_t count = 0;
    bool no_overlap = false;
    uint64_t sum = 0, first_start = 0, first_len = 0;
    const char *p = header + 6;
    for (;;) {
        const char *comma = strchr(p, ',');
        const char *end = comma ? comma : p + strlen(p);
        const char *e;
        const char *s = trim_ows(p, end, &e);
        if (s < e) {
            const char *dash = memchr(s, '-', (size_t) (e - s));
            if (!dash)
                return XFER_RANGE_INVALID;
            const char *a_end, *b_end;
            const char *a = trim_ows(s, dash, &a_end);
            const char *b = trim_ows(dash + 1, e, &b_end);
            uint64_t start, len;
            bool ok = true;
            if (a == a_end) {
                /* "-N": the last N bytes. */
                uint64_t n;
                if (parse_dec(b, b_end, &n) < 0)
                    return XFER_RANGE_INVALID;
                if (n > size)
                    n = size;
                start = size - n;
                len = n;
            } else {
                uint64_t first;
                if (parse_dec(a, a_end, &first) < 0)
                    return XFER_RANGE_INVALID;
                if (first >= size) {
                    no_overlap = true;
                    ok = false;
                    start = len = 0;
                } else {
                    start = first;
                    if (b == b_end) {
                        len = size - start;
                    } else {
                        uint64_t last;
                        if (parse_dec(b, b_end, &last) < 0 || start > last)
                            return XFER_RANGE_INVALID;
                        if (last >= size)
                            last = size - 1;
                        len = last - start + 1;
                    }
                }
            }
            /* Go lets "-0" (or any suffix of an empty file) through as an empty range, which it
             * then reports as "bytes 0--1/0"; an empty range satisfies nothing (RFC 9110). */
            if (ok && len == 0) {
                no_overlap = true;
                ok = false;
            }
            if (ok) {
                if (count == 0) {
                    first_start = start;
                    first_len = len;
                }
                count++;
                sum += len;
            }
        }
        if (!comma)
            break;
        p = comma + 1;
    }
    if (count == 0)
        return no_overlap ? XFER_RANGE_UNSATISFIABLE : XFER_RANGE_FULL;
    /* Several ranges (multipart/byteranges is not implemented) or more bytes than the file:
     * the whole file instead, as RFC 9110 permits. */
    if (count > 1 || sum > size)
        return XFER_RANGE_FULL;
    *ret_start = first_start;
    *ret_len = first_len;
    return XFER_RANGE_ONE;
}

/* --- Accept-Encoding -------------------------------------------------------------------------- */

/* Entries of one Accept-Encoding header considered; more is not a browser. */
#define ACCEPT_MAX_ENTRIES 64

/* Longest content-coding name kept ("identity" has 8 bytes); longer ones cannot match. */
#define ACCEPT_CODING_MAX 16

struct coding_q {
    char name[ACCEPT_CODING_MAX];
    double q;
};

/* Go's strconv.ParseFloat on the q value; anything unparsable keeps q = 1 as envd does. */
static double parse_q(const char *s, size_t n)
{
    char tmp[ACCEPT_CODING_MAX]; /* "0.001" at most, in practice */
    if (n == 0 || n >= sizeof(tmp))
        return 1.0;
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    char *end;
    double q = strtod(tmp, &end);
    if (*end || q != q)
        return 1.0;
    return q;
}

void xfer_accept_encoding(const char *header, struct xfer_accept *ret)
{
    struct coding_q list[ACCEPT_MAX_ENTRIES];
    size_t n = 0;
    ret->best = XFER_CODING_IDENTITY;
    ret->identity_ok = true;
    if (!header || !*header)
        return;
    for (const char *p = header; *p && n < ACCEPT_MAX_ENTRIES;) {
        const char *comma = strchr(p, ',');
        const char *end = comma ? comma : p + strlen(p);
        const char *semi = memchr(p, ';', (size_t) (end - p));
        const char *ne;
        const char *name = trim_ows(p, semi ? semi : end, &ne);
        double q = 1.0;
        for (const char *pp = semi; pp && pp < end;) {
            const char *next = memchr(pp + 1, ';', (size_t) (end - pp - 1));
            const char *pe;
            const char *param = trim_ows(pp + 1, next ? next : end, &pe);
            if (pe - param >= 2 && (param[0] == 'q' || param[0] == 'Q') && param[1] == '=')
                q = parse_q(param + 2, (size_t) (pe - param - 2));
            pp = next;
        }
        size_t len = (size_t) (ne - name);
        if (len < sizeof(list[n].name)) {
            for (size_t i = 0; i < len; i++)
                list[n].name[i] =
                        (char) (name[i] >= 'A' && name[i] <= 'Z' ? name[i] + 32 : name[i]);
            list[n].name[len] = '\0';
            list[n].q = q;
            n++;
        }
        if (!comma)
            break;
        p = comma + 1;
    }
    /* Stable sort by descending q (insertion sort: the list is tiny). */
    for (size_t i = 1; i < n; i++) {
        struct coding_q x = list[i];
        size_t j = i;
        while (j > 0 && list[j - 1].q < x.q) {
            list[j] = list[j - 1];
            j--;
        }
        list[j] = x;
    }
    bool identity_listed = false, identity_refused = false, star_refused = false;
    bool gzip_listed = false;
    for (size_t i = 0; i < n; i++) {
        if (streq(list[i].name, "identity")) {
            identity_listed = true;
            identity_refused = list[i].q <= 0;
        } else if (streq(list[i].name, "*")) {
            star_refused = list[i].q <= 0;
        } else if (streq(list[i].name, "gzip") || streq(list[i].name, "x-gzip")) {
            gzip_listed = true;
        }
    }
    /* RFC 9110 12.5.3: "*;q=0" refuses identity too unless identity is listed itself. */
    if (!identity_listed && star_refused)
        identity_refused = true;
    ret->identity_ok = !identity_refused;
    for (size_t i = 0; i < n; i++) {
        if (list[i].q <= 0)
            continue;
        if (streq(list[i].name, "identity")) {
            ret->best = XFER_CODING_IDENTITY;
            return;
        }
        if (streq(list[i].name, "gzip") || streq(list[i].name, "x-gzip")) {
            ret->best = XFER_CODING_GZIP;
            return;
        }
        if (streq(list[i].name, "*")) {
            /* "*" stands for the codings not listed: identity unless refused, else gzip unless
             * it was listed (and so refused, since a listed acceptable gzip came first). */
            if (!identity_refused) {
                ret->best = XFER_CODING_IDENTITY;
                return;
            }
            if (!gzip_listed) {
                ret->best = XFER_CODING_GZIP;
                return;
            }
        }
    }
    ret->best = identity_refused ? XFER_CODING_NONE : XFER_CODING_IDENTITY;
}

/* --- HTTP dates ------------------------------------------------------------------------------- */

static const char *const week_days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
static const char *const long_week_days[] = {"Sunday",   "Monday", "Tuesday", "Wednesday",
                                             "Thursday", "Friday", "Saturday"};
static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                     "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

void xfer_http_date(int64_t unix_sec, char out[XFER_DATE_LEN])
{
    int64_t days = unix_sec / TIMEFMT_SECONDS_PER_DAY;
    int64_t secs = unix_sec % TIMEFMT_SECONDS_PER_DAY;
    if (secs < 0) {
        secs += TIMEFMT_SECONDS_PER_DAY;
        days--;
    }
    int64_t y;
    unsigned m, d;
    civil_from_days(days, &y, &m, &d);
    /* 1970-01-01 was a Thursday. */
    int wd = (int) (((days % 7) + 11) % 7);
    (void) snprintf(out, XFER_DATE_LEN, "%s, %02u %s %04lld %02d:%02d:%02d GMT", week_days[wd], d,
                    months[m - 1], (long long) y, (int) (secs / 3600), (int) (secs / 60 % 60),
                    (int) (secs % 60));
}

/* Reads exactly `n` digits. */
static bool date_num(const char **s, unsigned n, unsigned *ret)
{
    unsigned v = 0;
    for (unsigned i = 0; i < n; i++) {
        char c = (*s)[i];
        if (c < '0' || c > '9')
            return false;
        v = v * 10 + (unsigned) (c - '0');
    }
    *s += n;
    *ret = v;
    return true;
}

static bool date_lit(const char **s, const char *lit)
{
    size_t n = strlen(lit);
    if (strncmp(*s, lit, n) != 0)
        return false;
    *s += n;
    return true;
}

static bool date_month(const char **s, unsigned *ret)
{
    for (unsigned i = 0; i < 12; i++)
        if (strncmp(*s, months[i], 3) == 0) {
            *s += 3;
            *ret = i + 1;
            return true;
        }
    return false;
}

static bool date_word(const char **s, const char *const *names)
{
    for (unsigned i = 0; i < 7; i++)
        if (date_lit(s, names[i]))
            return true;
    return false;
}

static bool date_time(const char **s, unsigned *h, unsigned *mi, unsigned *se)
{
    return date_num(s, 2, h) && date_lit(s, ":") && date_num(s, 2, mi) && date_lit(s, ":") &&
           date_num(s, 2, se) && *h < 24 && *mi < 60 && *se < 61;
}

int xfer_http_date_parse(const char *str, int64_t *ret)
{
    unsigned d = 0, m = 0, y = 0, h = 0, mi = 0, se = 0;
    const char *s = str;
    bool ok = false;
    /* IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT" */
    if (date_word(&s, week_days) && date_lit(&s, ", ") && date_num(&s, 2, &d) &&
        date_lit(&s, " ") && date_month(&s, &m) && date_lit(&s, " ") && date_num(&s, 4, &y) &&
        date_lit(&s, " ") && date_time(&s, &h, &mi, &se) && date_lit(&s, " GMT") && !*s)
        ok = true;
    /* RFC 850: "Sunday, 06-Nov-94 08:49:37 GMT" (two-digit years as Go reads them). */
    s = str;
    if (!ok && date_word(&s, long_week_days) && date_lit(&s, ", ") && date_num(&s, 2, &d) &&
        date_lit(&s, "-") && date_month(&s, &m) && date_lit(&s, "-") && date_num(&s, 2, &y) &&
        date_lit(&s, " ") && date_time(&s, &h, &mi, &se) && date_lit(&s, " GMT") && !*s) {
        y += y >= 69 ? 1900 : 2000;
        ok = true;
    }
    /* asctime: "Sun Nov  6 08:49:37 1994" */
    s = str;
    if (!ok && date_word(&s, week_days) && date_lit(&s, " ") && date_month(&s, &m) &&
        date_lit(&s, " ")) {
        if (*s == ' ') {
            s++;
            ok = date_num(&s, 1, &d);
        } else {
            ok = date_num(&s, 2, &d);
        }
        ok = ok && date_lit(&s, " ") && date_time(&s, &h, &mi, &se) && date_lit(&s, " ") &&
             date_num(&s, 4, &y) && !*s;
    }
    if (!ok || d < 1 || d > days_in_month(y, m))
        return -EINVAL;
    *ret = days_from_civil(y, m, d) * TIMEFMT_SECONDS_PER_DAY + h * 3600 + mi * 60 + se;
    return 0;
}

/* --- entity tags ------------------------------------------------------------------------------ */

/* Scans one entity tag at *s (after white space): sets its opaque part and weakness. */
static bool scan_etag(const char **s, const char **ret_opaque, size_t *ret_len, bool *ret_weak)
{
    const char *p = *s;
    *ret_weak = false;
    if (p[0] == 'W' && p[1] == '/') {
        *ret_weak = true;
        p += 2;
    }
    if (*p != '"')
        return false;
    const char *q = p + 1;
    for (; *q && *q != '"'; q++) {
        unsigned char c = (unsigned char) *q;
        if (!(c == 0x21 || (c >= 0x23 && c <= 0x7e) || c >= 0x80))
            return false;
    }
    if (*q != '"')
        return false;
    *ret_opaque = p;
    *ret_len = (size_t) (q - p + 1);
    *s = q + 1;
    return true;
}

bool xfer_etag_match(const char *list, const char *etag, bool weak)
{
    const char *mine = NULL;
    size_t mine_len = 0;
    bool mine_weak = false;
    if (etag) {
        const char *e = etag;
        if (!scan_etag(&e, &mine, &mine_len, &mine_weak))
            etag = NULL;
    }
    for (const char *s = list;;) {
        while (*s == ' ' || *s == '\t' || *s == ',')
            s++;
        if (!*s)
            return false;
        if (*s == '*') {
            /* "*" matches any current representation. */
            return etag != NULL;
        }
        const char *op;
        size_t olen;
        bool w;
        if (!scan_etag(&s, &op, &olen, &w))
            return false;
        if (etag && olen == mine_len && memcmp(op, mine, olen) == 0 && (weak || (!w && !mine_weak)))
            return true;
    }
}

/* --- metadata --------------------------------------------------------------------------------- */

/* Go's %q for a string of bytes (printable ASCII as is; the rest escaped). */
static void go_quote(const char *s, char *out, size_t len)
{
    struct buf b;
    buf_init(&b, SIZE_MAX);
    (void) buf_append_char(&b, '"');
    for (const unsigned char *p = (const unsigned char *) s; *p; p++) {
        if (*p == '"' || *p == '\\') {
            (void) buf_append_char(&b, '\\');
            (void) buf_append_char(&b, (char) *p);
        } else if (*p < 0x20 || *p >= 0x7f) {
            (void) buf_printf(&b, "\\x%02x", *p);
        } else {
            (void) buf_append_char(&b, (char) *p);
        }
    }
    (void) buf_append_char(&b, '"');
    (void) snprintf(out, len, "%s", b.data);
    buf_free(&b);
}

static int check_printable(const char *label, const char *s, char *err, size_t errlen)
{
    for (size_t i = 0; s[i]; i++) {
        unsigned char c = (unsigned char) s[i];
        if (c < 0x20 || c > 0x7e) {
            (void) snprintf(err, errlen,
                            "metadata %s contains non-printable-ASCII byte 0x%02x at offset %zu",
                            label, c, i);
            return -EINVAL;
        }
    }
    return 0;
}

int xfer_metadata_validate(const struct kv *m, char *err, size_t errlen)
{
    size_t total = 0;
    char quoted[4 * XFER_META_MAX_TOTAL + 3]; /* a key of any length, every byte escaped */
    char label[sizeof(quoted) + 32];
    for (size_t i = 0; i < m->n; i++) {
        const char *k = m->items[i].key, *v = m->items[i].value;
        if (!*k) {
            (void) snprintf(err, errlen, "metadata key must not be empty");
            return -EINVAL;
        }
        go_quote(k, quoted, sizeof(quoted));
        if (strlen(k) > XFER_META_MAX_KEY) {
            (void) snprintf(err, errlen, "metadata key %s exceeds %d bytes", quoted,
                            XFER_META_MAX_KEY);
            return -EINVAL;
        }
        if (check_printable("key", k, err, errlen) < 0)
            return -EINVAL;
        (void) snprintf(label, sizeof(label), "value for key %s", quoted);
        if (check_printable(label, v, err, errlen) < 0)
            return -EINVAL;
        total += STRLEN(XFER_META_PREFIX) + strlen(k) + strlen(v);
    }
    if (total > XFER_META_MAX_TOTAL) {
        (void) snprintf(err, errlen, "total metadata size %zu exceeds %d bytes", total,
                        XFER_META_MAX_TOTAL);
        return -EINVAL;
    }
    return 0;
}

/* Largest xattr name list or value read back; the kernel's own limit is 64 KiB. */
#define META_READ_MAX (64 * 1024)

void xfer_metadata_read(const char *path, struct kv *m)
{
    ssize_t n = listxattr(path, NULL, 0);
    if (n <= 0 || n > META_READ_MAX)
        return;
    _cleanup_free_ char *names = xmalloc((size_t) n + 1);
    n = listxattr(path, names, (size_t) n);
    if (n <= 0)
        return;
    names[n] = '\0';
    for (char *name = names; name < names + n; name += strlen(name) + 1) {
        if (strncmp(name, XFER_META_PREFIX, STRLEN(XFER_META_PREFIX)) != 0)
            continue;
        ssize_t vn = getxattr(path, name, NULL, 0);
        if (vn < 0 || vn > META_READ_MAX)
            continue;
        _cleanup_free_ char *value = xmalloc((size_t) vn + 1);
        vn = getxattr(path, name, value, (size_t) vn);
        if (vn < 0)
            continue;
        value[vn] = '\0';
        const char *key = name + STRLEN(XFER_META_PREFIX);
        if (strlen(value) != (size_t) vn || !utf8_valid((const uint8_t *) key, strlen(key)) ||
            !utf8_valid((const uint8_t *) value, (size_t) vn))
            continue;
        kv_set(m, key, value);
    }
}

/* --- multipart/form-data ---------------------------------------------------------------------- */

enum mp_state {
    MP_PREAMBLE,   /* before the first boundary: bytes are dropped */
    MP_BODY,       /* a part's content */
    MP_DELIM,      /* CRLF "--" boundary seen: what follows decides whether it is one */
    MP_DELIM_DASH, /* ... followed by one '-' */
    MP_PADDING,    /* the rest of a boundary line: blanks, then CRLF */
    MP_PADDING_LF,
    MP_HEADERS,
    MP_END, /* after the closing boundary: the epilogue is dropped */
    MP_ERROR,
};

struct mp_header {
    char *name; /* lower-cased */
    char *value;
};

struct xfer_mp {
    const struct xfer_mp_ops *ops;
    void *userdata;
    char *delim; /* CRLF "--" boundary */
    size_t dlen;
    size_t match; /* bytes of delim matched and held back */
    enum mp_state state;
    enum mp_state data_state; /* MP_PREAMBLE or MP_BODY: where the held bytes belong */
    struct buf hbuf;
    struct mp_header headers[XFER_MP_MAX_HEADERS];
    size_t n_headers;
    size_t parts;
    bool in_part;
    char error[160];
};

static void mp_clear_headers(struct xfer_mp *mp)
{
    for (size_t i = 0; i < mp->n_headers; i++) {
        free(mp->headers[i].name);
        free(mp->headers[i].value);
    }
    mp->n_headers = 0;
}

int xfer_mp_new(const char *boundary, const struct xfer_mp_ops *ops, void *userdata,
                struct xfer_mp **ret)
{
    size_t blen = strlen(boundary);
    if (blen == 0 || blen > XFER_MP_MAX_BOUNDARY || strpbrk(boundary, "\r\n"))
        return -EINVAL;
    struct xfer_mp *mp = xcalloc(1, sizeof(*mp));
    mp->ops = ops;
    mp->userdata = userdata;
    mp->dlen = 4 + blen;
    mp->delim = xmalloc(mp->dlen + 1);
    memcpy(mp->delim, "\r\n--", 4);
    memcpy(mp->delim + 4, boundary, blen + 1);
    /* The body may start with the boundary itself: act as if a CRLF came before it. */
    mp->match = 2;
    mp->state = MP_PREAMBLE;
    mp->data_state = MP_PREAMBLE;
    buf_init(&mp->hbuf, XFER_MP_MAX_HEADER_BYTES);
    *ret = mp;
    return 0;
}

struct xfer_mp *xfer_mp_free(struct xfer_mp *mp)
{
    if (!mp)
        return NULL;
    mp_clear_headers(mp);
    buf_free(&mp->hbuf);
    free(mp->delim);
    free(mp);
    return NULL;
}

static int mp_fail(struct xfer_mp *mp, int r, const char *fmt, ...) _printf_(3, 4);
static int mp_fail(struct xfer_mp *mp, int r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    (void) vsnprintf(mp->error, sizeof(mp->error), fmt, ap);
    va_end(ap);
    mp->state = MP_ERROR;
    return r;
}

/* Content bytes: to the part, or dropped in the preamble. */
static int mp_emit(struct xfer_mp *mp, const char *data, size_t len)
{
    if (len == 0 || mp->data_state != MP_BODY)
        return 0;
    int r = mp->ops->on_part_data(mp->userdata, data, len);
    if (r < 0)
        mp->state = MP_ERROR;
    return r;
}

/* The header section in hbuf is complete (it ends with an empty line): split it. */
static int mp_parse_headers(struct xfer_mp *mp)
{
    mp_clear_headers(mp);
    char *p = mp->hbuf.data;
    char *end = p + mp->hbuf.len - 2; /* drop the final empty line's CRLF */
    while (p < end) {
        char *eol = memmem(p, (size_t) (end - p), "\r\n", 2);
        if (!eol)
            eol = end;
        *eol = '\0';
        if (*p == ' ' || *p == '\t') {
            /* obs-fold: a continuation of the previous value. */
            if (mp->n_headers == 0)
                return mp_fail(mp, -EBADMSG, "multipart: malformed MIME header initial line");
            struct mp_header *h = &mp->headers[mp->n_headers - 1];
            char *cont = p;
            while (*cont == ' ' || *cont == '\t')
                cont++;
            size_t old = strlen(h->value);
            h->value = xrealloc(h->value, old + strlen(cont) + 2);
            h->value[old] = ' ';
            strcpy(h->value + old + 1, cont);
        } else {
            char *colon = strchr(p, ':');
            if (!colon || colon == p)
                return mp_fail(mp, -EBADMSG, "multipart: malformed MIME header line");
            for (char *n = p; n < colon; n++)
                if (!token_char(*n))
                    return mp_fail(mp, -EBADMSG, "multipart: malformed MIME header line");
            if (mp->n_headers >= XFER_MP_MAX_HEADERS)
                return mp_fail(mp, -E2BIG, "multipart: more than %d header lines in a part",
                               XFER_MP_MAX_HEADERS);
            char *v = colon + 1;
            while (*v == ' ' || *v == '\t')
                v++;
            size_t vl = strlen(v);
            while (vl > 0 && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
                vl--;
            struct mp_header *h = &mp->headers[mp->n_headers++];
            h->name = xstrndup(p, (size_t) (colon - p));
            for (char *n = h->name; *n; n++)
                if (*n >= 'A' && *n <= 'Z')
                    *n = (char) (*n + 32);
            h->value = xstrndup(v, vl);
        }
        p = eol + 2;
    }
    return 0;
}

int xfer_mp_feed(struct xfer_mp *mp, const char *data, size_t len)
{
    size_t i = 0;
    int r;
    while (i < len) {
        switch (mp->state) {
        case MP_PREAMBLE:
        case MP_BODY:
            if (mp->match == 0) {
                /* Outside a possible delimiter: everything up to the next CR is content (the
                 * delimiter's only CR is its first byte). */
                const char *cr = memchr(data + i, '\r', len - i);
                size_t run = cr ? (size_t) (cr - (data + i)) : len - i;
                r = mp_emit(mp, data + i, run);
                if (r < 0)
                    return r;
                i += run;
                if (cr) {
                    mp->match = 1;
                    i++;
                }
                break;
            }
            if (data[i] == mp->delim[mp->match]) {
                mp->match++;
                i++;
                if (mp->match == mp->dlen) {
                    mp->match = 0;
                    mp->state = MP_DELIM;
                }
                break;
            }
            /* Not the delimiter after all: what was held back is content. The current byte is
             * looked at again from the start of the delimiter. */
            r = mp_emit(mp, mp->delim, mp->match);
            if (r < 0)
                return r;
            mp->match = 0;
            break;
        case MP_DELIM: {
            char c = data[i];
            if (c == '-') {
                mp->state = MP_DELIM_DASH;
                i++;
            } else if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
                /* A boundary line: the part before it is complete. */
                if (mp->data_state == MP_BODY) {
                    mp->in_part = false;
                    mp->data_state = MP_PREAMBLE;
                    r = mp->ops->on_part_end(mp->userdata);
                    if (r < 0) {
                        mp->state = MP_ERROR;
                        return r;
                    }
                }
                mp->state = MP_PADDING;
            } else {
                /* The boundary text followed by other text is content (Go's matchAfterPrefix). */
                mp->state = mp->data_state;
                r = mp_emit(mp, mp->delim, mp->dlen);
                if (r < 0)
                    return r;
            }
            break;
        }
        case MP_DELIM_DASH:
            if (data[i] == '-') {
                i++;
                if (mp->data_state == MP_BODY) {
                    mp->in_part = false;
                    mp->data_state = MP_PREAMBLE;
                    r = mp->ops->on_part_end(mp->userdata);
                    if (r < 0) {
                        mp->state = MP_ERROR;
                        return r;
                    }
                }
                mp->state = MP_END;
            } else {
                mp->state = mp->data_state;
                r = mp_emit(mp, mp->delim, mp->dlen);
                if (r == 0)
                    r = mp_emit(mp, "-", 1);
                if (r < 0)
                    return r;
            }
            break;
        case MP_PADDING:
            if (data[i] == ' ' || data[i] == '\t') {
                i++;
            } else if (data[i] == '\r') {
                mp->state = MP_PADDING_LF;
                i++;
            } else {
                return mp_fail(mp, -EBADMSG, "multipart: boundary line not ended by CRLF");
            }
            break;
        case MP_PADDING_LF:
            if (data[i] != '\n')
                return mp_fail(mp, -EBADMSG, "multipart: boundary line not ended by CRLF");
            i++;
            buf_reset(&mp->hbuf);
            mp->state = MP_HEADERS;
            break;
        case MP_HEADERS: {
            /* Copy up to the next LF and check for the end of the section there. */
            const char *lf = memchr(data + i, '\n', len - i);
            size_t take = lf ? (size_t) (lf - (data + i)) + 1 : len - i;
            if (buf_append(&mp->hbuf, data + i, take) < 0)
                return mp_fail(mp, -E2BIG, "multipart: part header section larger than %d bytes",
                               XFER_MP_MAX_HEADER_BYTES);
            i += take;
            const char *h = mp->hbuf.data;
            size_t hl = mp->hbuf.len;
            if (!lf)
                break;
            if (hl >= 2 && h[hl - 2] != '\r')
                return mp_fail(mp, -EBADMSG, "multipart: bare LF in part headers");
            if (!((hl == 2) || (hl >= 4 && memcmp(h + hl - 4, "\r\n\r\n", 4) == 0)))
                break;
            if (mp->parts >= XFER_MP_MAX_PARTS)
                return mp_fail(mp, -E2BIG, "multipart: more than %d parts", XFER_MP_MAX_PARTS);
            r = mp_parse_headers(mp);
            if (r < 0)
                return r;
            mp->parts++;
            mp->in_part = true;
            mp->state = MP_BODY;
            mp->data_state = MP_BODY;
            mp->match = 0;
            r = mp->ops->on_part_begin(mp->userdata, mp);
            if (r < 0) {
                mp->state = MP_ERROR;
                return r;
            }
            break;
        }
        case MP_END:
            i = len;
            break;
        case MP_ERROR:
            return mp->error[0] ? -EBADMSG : -ECANCELED;
        }
    }
    return 0;
}

int xfer_mp_finish(struct xfer_mp *mp)
{
    if (mp->state == MP_END)
        return 0;
    if (mp->state == MP_ERROR)
        return -EBADMSG;
    return mp_fail(mp, -EBADMSG, "%s", mp->in_part ? "unexpected EOF" : "multipart: NextPart: EOF");
}

bool xfer_mp_in_part(const struct xfer_mp *mp)
{
    return mp->in_part;
}

const char *xfer_mp_error(const struct xfer_mp *mp)
{
    return mp->error;
}

const char *xfer_mp_header(const struct xfer_mp *mp, const char *lname)
{
    for (size_t i = 0; i < mp->n_headers; i++)
        if (streq(mp->headers[i].name, lname))
            return mp->headers[i].value;
    return NULL;
}

size_t xfer_mp_parts(const struct xfer_mp *mp)
{
    return mp->parts;
}

/* --- hashing ---------------------------------------------------------------------------------- */

/* A cached hash is trusted only if the file's last change (mtime or ctime) happened this long
 * before the hash was recorded. File timestamps advance in steps of one jiffy (at most 10 ms),
 * so a file rewritten in place with the same size within the same step as the hashed version
 * looks unchanged; git calls such entries "racily clean". Those are hashed again instead. */
#define HASH_RACY_NS (100 * 1000 * 1000LL)

struct hash_slot {
    bool used;
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime, ctime;
    int64_t recorded_ns; /* CLOCK_REALTIME when the hash was stored */
    char hex[XFER_HEX_LEN];
};

static int64_t ts_ns(const struct timespec *t)
{
    return (int64_t) t->tv_sec * 1000000000LL + t->tv_nsec;
}

/* Shared by the worker threads; the lock is held only to copy a slot in or out. */
static pthread_mutex_t hash_lock = PTHREAD_MUTEX_INITIALIZER;
static struct hash_slot hash_cache[XFER_ETAG_CACHE_SLOTS];
static unsigned hash_next; /* round-robin replacement */

static bool stat_same(const struct stat *a, const struct stat *b)
{
    return a->st_dev == b->st_dev && a->st_ino == b->st_ino && a->st_size == b->st_size &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec &&
           a->st_ctim.tv_sec == b->st_ctim.tv_sec && a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

static bool same_file(const struct hash_slot *s, const struct stat *st)
{
    if (!(s->used && s->dev == st->st_dev && s->ino == st->st_ino && s->size == st->st_size &&
          s->mtime.tv_sec == st->st_mtim.tv_sec && s->mtime.tv_nsec == st->st_mtim.tv_nsec &&
          s->ctime.tv_sec == st->st_ctim.tv_sec && s->ctime.tv_nsec == st->st_ctim.tv_nsec))
        return false;
    int64_t changed = MAX(ts_ns(&s->mtime), ts_ns(&s->ctime));
    return changed + HASH_RACY_NS <= s->recorded_ns;
}

static bool hash_lookup(const struct stat *st, char hex[XFER_HEX_LEN])
{
    bool found = false;
    pthread_mutex_lock(&hash_lock);
    for (size_t i = 0; i < XFER_ETAG_CACHE_SLOTS && !found; i++)
        if (same_file(&hash_cache[i], st)) {
            memcpy(hex, hash_cache[i].hex, XFER_HEX_LEN);
            found = true;
        }
    pthread_mutex_unlock(&hash_lock);
    return found;
}

void xfer_hash_remember(const struct stat *st, const char hex[XFER_HEX_LEN])
{
    pthread_mutex_lock(&hash_lock);
    struct hash_slot *s = NULL;
    for (size_t i = 0; i < XFER_ETAG_CACHE_SLOTS && !s; i++)
        if (hash_cache[i].used && hash_cache[i].dev == st->st_dev &&
            hash_cache[i].ino == st->st_ino)
            s = &hash_cache[i]; /* a newer version of a cached file replaces it */
    if (!s)
        s = &hash_cache[hash_next++ % XFER_ETAG_CACHE_SLOTS];
    s->used = true;
    s->dev = st->st_dev;
    s->ino = st->st_ino;
    s->size = st->st_size;
    s->mtime = st->st_mtim;
    s->ctime = st->st_ctim;
    struct timespec now;
    (void) clock_gettime(CLOCK_REALTIME, &now);
    s->recorded_ns = ts_ns(&now);
    memcpy(s->hex, hex, XFER_HEX_LEN);
    pthread_mutex_unlock(&hash_lock);
}

static void digest_hex(struct sha256_ctx *ctx, char hex[XFER_HEX_LEN])
{
    static const char digits[] = "0123456789abcdef";
    uint8_t d[SHA256_DIGEST_SIZE];
    sha256_digest(ctx, SHA256_DIGEST_SIZE, d);
    for (size_t i = 0; i < SHA256_DIGEST_SIZE; i++) {
        hex[2 * i] = digits[d[i] >> 4];
        hex[2 * i + 1] = digits[d[i] & 15];
    }
    hex[2 * SHA256_DIGEST_SIZE] = '\0';
}

int xfer_hash_fd(int fd, const struct stat *st, char *buf, const atomic_bool *cancel,
                 char hex[XFER_HEX_LEN])
{
    if ((uint64_t) st->st_size > XFER_ETAG_MAX_BYTES)
        return -EFBIG;
    if (hash_lookup(st, hex))
        return 0;
    struct sha256_ctx ctx;
    sha256_init(&ctx);
    off_t off = 0;
    for (;;) {
        if (cancel && atomic_load(cancel))
            return -ECANCELED;
        ssize_t n = pread(fd, buf, XFER_CHUNK, off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (n == 0)
            break;
        sha256_update(&ctx, (size_t) n, (const uint8_t *) buf);
        off += n;
        if ((uint64_t) off > XFER_ETAG_MAX_BYTES)
            return -EFBIG;
    }
    digest_hex(&ctx, hex);
    /* Cache only what is known to be the content of this version of the file. */
    struct stat now;
    if (fstat(fd, &now) == 0 && off == st->st_size && stat_same(st, &now))
        xfer_hash_remember(&now, hex);
    return 0;
}

/* --- atomic writer ---------------------------------------------------------------------------- */

/* Attempts at finding an unused temporary name before giving up (names are 64 random bits). */
#define WRITER_TMP_TRIES 4

struct xfer_writer {
    int fd;
    enum xfer_write_mode mode;
    char *path;
    char *dir;
    bool existed;    /* something was at the target */
    struct stat old; /* the replaced regular file (atomic mode) */
    bool created;    /* in place: the open created the file */
    struct xfer_write_opts opts;
    struct sha256_ctx sha;
    char *buf;
    size_t blen;
};

static int fail(struct fsop_err *err, const char *op, const char *path, int r)
{
    if (err) {
        fsop_err_done(err);
        err->op = op;
        err->path = xstrdup(path);
    }
    return r;
}

static char *dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        return xstrdup(".");
    if (slash == path)
        return xstrdup("/");
    return xstrndup(path, (size_t) (slash - path));
}

/* In a sticky directory only the owner of a file (or of the directory) may replace it. */
static bool sticky_forbids(const char *dir, const struct stat *old, uid_t uid)
{
    struct stat ds;
    if (uid == 0 || stat(dir, &ds) < 0)
        return false;
    return (ds.st_mode & S_ISVTX) && old->st_uid != uid && ds.st_uid != uid;
}

int xfer_writer_open(const char *path, const struct xfer_write_opts *opts, char *buf,
                     struct xfer_writer **ret, struct fsop_err *err)
{
    _cleanup_free_ char *dir = dir_of(path);
    struct stat lst, st;
    bool existed = false, in_place = false, created = false;
    int fd = -1;

    if (lstat(path, &lst) == 0) {
        existed = true;
        if (S_ISLNK(lst.st_mode)) {
            /* Write through the link, as envd does; a dangling link creates its target. */
            if (stat(path, &st) == 0) {
                if (S_ISDIR(st.st_mode))
                    return fail(err, "stat", path, -EISDIR);
            } else {
                created = true;
            }
            in_place = true;
        } else if (S_ISDIR(lst.st_mode)) {
            return fail(err, "stat", path, -EISDIR);
        } else if (!S_ISREG(lst.st_mode) || lst.st_nlink > 1 ||
                   sticky_forbids(dir, &lst, opts->uid)) {
            in_place = true;
        }
    } else if (errno != ENOENT) {
        return fail(err, "stat", path, -errno);
    }

    if (!in_place) {
        fd = open(dir, O_TMPFILE | O_WRONLY | O_CLOEXEC, 0666);
        if (fd < 0) {
            int e = errno;
            if (e == ENOSPC || e == EDQUOT)
                return fail(err, "open", path, -e);
            /* No O_TMPFILE on this file system (EOPNOTSUPP, or EISDIR/EINVAL on old kernels)
             * or no write permission on the directory: write in place like envd. */
            log_debug("O_TMPFILE in '%s' failed (%s), writing '%s' in place", dir, strerror(e),
                      path);
            in_place = true;
        }
    }
    if (in_place) {
        /* O_NONBLOCK: a FIFO without a reader fails (ENXIO) instead of hanging the thread. */
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOCTTY | O_NONBLOCK, 0666);
        if (fd < 0)
            return fail(err, "open", path, -errno);
        int fl = fcntl(fd, F_GETFL);
        if (fl >= 0)
            (void) fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
        if (!existed)
            created = true;
    }

    struct xfer_writer *w = xcalloc(1, sizeof(*w));
    w->fd = fd;
    w->mode = in_place ? XFER_WRITE_IN_PLACE : XFER_WRITE_ATOMIC;
    w->path = xstrdup(path);
    w->dir = TAKE_PTR(dir);
    w->existed = existed;
    if (existed && !in_place)
        w->old = lst;
    w->created = created;
    w->opts = *opts;
    w->buf = buf;
    sha256_init(&w->sha);
    *ret = w;
    return 0;
}

static int write_full(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t k = write(fd, p, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            return -errno;
        if (k == 0)
            return -EIO;
        p += k;
        n -= (size_t) k;
    }
    return 0;
}

static int writer_flush(struct xfer_writer *w, struct fsop_err *err)
{
    if (w->blen == 0)
        return 0;
    int r = write_full(w->fd, w->buf, w->blen);
    w->blen = 0;
    return r < 0 ? fail(err, "write", w->path, r) : 0;
}

int xfer_writer_write(struct xfer_writer *w, const void *data, size_t len, struct fsop_err *err)
{
    const char *p = data;
    sha256_update(&w->sha, len, (const uint8_t *) data);
    if (w->blen + len <= XFER_CHUNK) {
        memcpy(w->buf + w->blen, p, len);
        w->blen += len;
        return w->blen == XFER_CHUNK ? writer_flush(w, err) : 0;
    }
    int r = writer_flush(w, err);
    if (r < 0)
        return r;
    if (len >= XFER_CHUNK) {
        r = write_full(w->fd, p, len);
        return r < 0 ? fail(err, "write", w->path, r) : 0;
    }
    memcpy(w->buf, p, len);
    w->blen = len;
    return 0;
}

static bool xattr_unsupported(int e)
{
    return e == ENOTSUP || e == EOPNOTSUPP;
}

/* Replaces the file's user.e2b.* set with `m` (NULL: empty). */
static int set_metadata(int fd, const struct kv *m, bool *unsupported)
{
    char name[STRLEN(XFER_META_PREFIX) + XFER_META_MAX_KEY + 1];
    ssize_t n = flistxattr(fd, NULL, 0);
    if (n < 0 && xattr_unsupported(errno)) {
        *unsupported = m && m->n > 0;
        return 0;
    }
    if (n < 0)
        return -errno;
    if (n > 0 && n <= META_READ_MAX) {
        _cleanup_free_ char *names = xmalloc((size_t) n + 1);
        n = flistxattr(fd, names, (size_t) n);
        if (n < 0)
            return -errno;
        names[n] = '\0';
        for (char *s = names; s < names + n; s += strlen(s) + 1) {
            if (strncmp(s, XFER_META_PREFIX, STRLEN(XFER_META_PREFIX)) != 0)
                continue;
            if (m && kv_get(m, s + STRLEN(XFER_META_PREFIX)))
                continue;
            if (fremovexattr(fd, s) < 0 && errno != ENODATA)
                return -errno;
        }
    }
    for (size_t i = 0; m && i < m->n; i++) {
        (void) snprintf(name, sizeof(name), "%s%s", XFER_META_PREFIX, m->items[i].key);
        if (fsetxattr(fd, name, m->items[i].value, strlen(m->items[i].value), 0) < 0) {
            if (xattr_unsupported(errno)) {
                *unsupported = true;
                return 0;
            }
            return -errno;
        }
    }
    return 0;
}

/* Gives the unnamed file `fd` the name `target` (which must not exist). */
static int link_fd(int fd, const char *target)
{
    char proc[64];
    (void) snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
    if (linkat(AT_FDCWD, proc, AT_FDCWD, target, AT_SYMLINK_FOLLOW) == 0)
        return 0;
    int e = errno;
    /* Without /proc (early boot as PID 1), AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH. */
    if (e == ENOENT && access("/proc/self/fd", F_OK) < 0) {
        if (linkat(fd, "", AT_FDCWD, target, AT_EMPTY_PATH) == 0)
            return 0;
        e = errno;
    }
    return -e;
}

/*
 * Ordering: the file gets its final mode, owner, xattrs and (when durable) its data on disk
 * while it is still unnamed; only then does it appear under the target's name, in one step
 * (link to a new name, or link to a temporary name and rename over the old file). A reader of
 * the target sees the old content or the complete new one, never a partial file.
 */
static int link_in(struct xfer_writer *w, struct fsop_err *err)
{
    /* Both a new and a replaced file go through a temporary name and a rename, so that
     * watchers see one rename they can report as envd's events (CREATE+WRITE for a new file,
     * WRITE+CHMOD for a replaced one). A new file is renamed with RENAME_NOREPLACE: if the
     * target appeared meanwhile, the upload replaces it like an existing one. */
    bool fresh = !w->existed;
    for (int attempt = 0; attempt < WRITER_TMP_TRIES; attempt++) {
        uint64_t rnd = 0;
        if (getrandom(&rnd, sizeof(rnd), 0) != sizeof(rnd))
            rnd = (uint64_t) getpid() << 32 ^ (uint64_t) attempt ^ (uint64_t) w->fd;
        _cleanup_free_ char *tmp = xmalloc(strlen(w->dir) + 48);
        (void) sprintf(tmp, "%s/" XFER_UPLOAD_TMP_PREFIX "%c-%016llx",
                       streq(w->dir, "/") ? "" : w->dir, fresh ? 'n' : 'r',
                       (unsigned long long) rnd);
        int r = link_fd(w->fd, tmp);
        if (r == -EEXIST)
            continue;
        if (r < 0)
            return fail(err, "link", tmp, r);
        if (fresh) {
            if (renameat2(AT_FDCWD, tmp, AT_FDCWD, w->path, RENAME_NOREPLACE) == 0)
                return 0;
            r = -errno;
            (void) unlink(tmp);
            if (r == -EEXIST) {
                /* Created meanwhile: replace it like an existing file. */
                fresh = false;
                continue;
            }
            if (r == -EINVAL || r == -ENOSYS) {
                /* No RENAME_NOREPLACE on this file system: link the new name directly. */
                r = link_fd(w->fd, w->path);
                if (r == 0)
                    return 0;
                if (r == -EEXIST) {
                    fresh = false;
                    continue;
                }
            }
            return fail(err, "rename", w->path, r);
        }
        if (rename(tmp, w->path) < 0) {
            r = -errno;
            (void) unlink(tmp);
            return fail(err, "rename", w->path, r);
        }
        return 0;
    }
    return fail(err, "link", w->path, -EEXIST);
}

static void fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return;
    (void) fsync(fd);
    (void) close(fd);
}

int xfer_writer_commit(struct xfer_writer *w, char ret_hex[XFER_HEX_LEN],
                       bool *ret_xattr_unsupported, struct fsop_err *err)
{
    bool unsupported = false;
    int r = writer_flush(w, err);
    if (r < 0)
        goto out;
    if (w->mode == XFER_WRITE_ATOMIC && w->existed) {
        /* The new file takes the place of the old one: same permissions, same owner when
         * this user may give it (a user can only keep its own uid and its groups). The
         * set-id bits go, as they would on a write in place by anyone but root. */
        (void) fchmod(w->fd, w->old.st_mode & 07777 & ~(mode_t) (S_ISUID | S_ISGID));
        if (fchown(w->fd, w->old.st_uid, w->old.st_gid) < 0)
            log_debug("keeping the uploader as the owner of '%s': %s", w->path, strerror(errno));
    } else if (w->mode == XFER_WRITE_ATOMIC || w->created) {
        /* envd chowns new files to the user's primary group, whatever the directory's
         * set-group-id bit would hand down. */
        if (fchown(w->fd, w->opts.uid, w->opts.gid) < 0)
            log_debug("cannot chown '%s' to %u:%u: %s", w->path, (unsigned) w->opts.uid,
                      (unsigned) w->opts.gid, strerror(errno));
    }
    r = set_metadata(w->fd, w->opts.metadata, &unsupported);
    if (r < 0) {
        r = fail(err, "setxattr", w->path, r);
        goto out;
    }
    if (w->opts.durable && fsync(w->fd) < 0) {
        r = fail(err, "fsync", w->path, -errno);
        goto out;
    }
    if (w->mode == XFER_WRITE_ATOMIC) {
        r = link_in(w, err);
        if (r < 0)
            goto out;
        if (w->opts.durable)
            fsync_dir(w->dir);
    }
    digest_hex(&w->sha, ret_hex);
    struct stat st;
    if (fstat(w->fd, &st) == 0 && S_ISREG(st.st_mode))
        xfer_hash_remember(&st, ret_hex);
    if (close(w->fd) < 0 && errno != EINTR) {
        w->fd = -1;
        r = fail(err, "close", w->path, -errno);
        goto out;
    }
    w->fd = -1;
    r = 0;
out:
    *ret_xattr_unsupported = unsupported;
    xfer_writer_abort(w);
    return r;
}

void xfer_writer_abort(struct xfer_writer *w)
{
    if (!w)
        return;
    /* An unnamed O_TMPFILE file vanishes with its last descriptor. */
    (void) safe_close(w->fd);
    free(w->path);
    free(w->dir);
    free(w);
}

enum xfer_write_mode xfer_writer_mode(const struct xfer_writer *w)
{
    return w->mode;
}

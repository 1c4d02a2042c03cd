/* SPDX-License-Identifier: Apache-2.0 */
#include "fs/tar.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"
#include "base/macro.h"

/* ustar header field offsets and sizes. */
#define F_NAME      0
#define F_MODE      100
#define F_UID       108
#define F_GID       116
#define F_SIZE      124
#define F_MTIME     136
#define F_CHKSUM    148
#define F_TYPE      156
#define F_LINKNAME  157
#define F_MAGIC     257
#define F_VERSION   263
#define F_PREFIX    345
#define L_NAME      100
#define L_PREFIX    155
/* Largest value of an 11-digit octal field. */
#define OCTAL11_MAX 077777777777ULL

/* --- writer --------------------------------------------------------------------------------- */

static void put_octal(char *field, size_t width, uint64_t v)
{
    /* width - 1 digits and a NUL */
    char tmp[32];
    (void) snprintf(tmp, sizeof(tmp), "%0*llo", (int) (width - 1), (unsigned long long) v);
    memcpy(field, tmp, width - 1);
    field[width - 1] = '\0';
}

static int pax_record(struct buf *b, const char *key, const char *value)
{
    size_t body = 1 + strlen(key) + 1 + strlen(value) + 1; /* " key=value\n" */
    size_t len = body + 1;
    for (;;) {
        char digits[24];
        size_t n = (size_t) snprintf(digits, sizeof(digits), "%zu", len);
        if (n + body == len)
            break;
        len = n + body;
    }
    return buf_printf(b, "%zu %s=%s\n", len, key, value);
}

static bool is_ascii(const char *s)
{
    for (; *s; s++)
        if ((unsigned char) *s >= 0x80)
            return false;
    return true;
}

static void checksum(char *h)
{
    unsigned sum = 0;
    memset(h + F_CHKSUM, ' ', 8);
    for (size_t i = 0; i < TAR_BLOCK; i++)
        sum += (unsigned char) h[i];
    (void) snprintf(h + F_CHKSUM, 8, "%06o", sum);
    h[F_CHKSUM + 7] = ' ';
}

static void fill_header(char *h, const char *name, char type, uint32_t mode, uint64_t size,
                        int64_t mtime, const char *linkname)
{
    memset(h, 0, TAR_BLOCK);
    size_t n = strlen(name);
    if (n <= L_NAME) {
        memcpy(h + F_NAME, name, n);
    } else {
        /* Split at a slash so that the prefix fits; the caller checked that one exists. */
        const char *s = name + n - L_NAME - 1;
        while (*s != '/')
            s++;
        memcpy(h + F_PREFIX, name, (size_t) (s - name));
        memcpy(h + F_NAME, s + 1, strlen(s + 1));
    }
    put_octal(h + F_MODE, 8, mode & 07777);
    put_octal(h + F_UID, 8, 0);
    put_octal(h + F_GID, 8, 0);
    put_octal(h + F_SIZE, 12, size <= OCTAL11_MAX ? size : 0);
    put_octal(h + F_MTIME, 12, mtime < 0 ? 0 : (uint64_t) mtime & OCTAL11_MAX);
    h[F_TYPE] = type;
    if (linkname && strlen(linkname) <= L_NAME)
        memcpy(h + F_LINKNAME, linkname, strlen(linkname));
    memcpy(h + F_MAGIC, "ustar", 6);
    memcpy(h + F_VERSION, "00", 2);
    checksum(h);
}

/* True if `name` fits ustar's name and prefix fields. */
static bool ustar_fits(const char *name)
{
    size_t n = strlen(name);
    if (n <= L_NAME)
        return true;
    if (n > L_PREFIX + 1 + L_NAME)
        return false;
    /* The last slash at or before index L_PREFIX that leaves at most L_NAME bytes after it. */
    for (const char *s = name + n - L_NAME - 1; *s; s++)
        if (*s == '/')
            return (size_t) (s - name) <= L_PREFIX && s != name;
    return false;
}

int tar_header(struct buf *out, const struct tar_entry *e)
{
    char h[TAR_BLOCK];
    int r;
    if (!e->name || !*e->name)
        return -EINVAL;
    if (strlen(e->name) + 1 > TAR_MAX_NAME || (e->linkname && strlen(e->linkname) > TAR_MAX_NAME))
        return -ENAMETOOLONG;
    size_t nlen = strlen(e->name);
    char *name = xmalloc(nlen + 2);
    memcpy(name, e->name, nlen + 1);
    if (e->type == TAR_DIR && name[nlen - 1] != '/')
        memcpy(name + nlen, "/", 2);
    const char *link = e->type == TAR_SYMLINK ? (e->linkname ? e->linkname : "") : NULL;
    uint64_t size = e->type == TAR_FILE ? e->size : 0;
    char type = e->type == TAR_DIR ? '5' : e->type == TAR_SYMLINK ? '2' : '0';

    struct buf pax;
    buf_init(&pax, TAR_MAX_PAX_BYTES);
    bool name_ok = ustar_fits(name) && is_ascii(name);
    if (!name_ok)
        (void) pax_record(&pax, "path", name);
    if (link && (strlen(link) > L_NAME || !is_ascii(link)))
        (void) pax_record(&pax, "linkpath", link);
    if (size > OCTAL11_MAX) {
        char v[24];
        (void) snprintf(v, sizeof(v), "%llu", (unsigned long long) size);
        (void) pax_record(&pax, "size", v);
    }
    if (pax.len > 0) {
        fill_header(h, "././@PaxHeader", 'x', 0644, pax.len, e->mtime, NULL);
        r = buf_append(out, h, TAR_BLOCK);
        if (r >= 0)
            r = buf_append(out, pax.data, pax.len);
        if (r >= 0) {
            char zero[TAR_BLOCK] = {0};
            r = buf_append(out, zero, tar_padding(pax.len));
        }
        if (r < 0)
            goto out;
    }
    if (!name_ok) {
        /* A truncated stand-in for readers without pax support: the last L_NAME bytes. */
        char stub[L_NAME + 1];
        const char *tail = name + strlen(name) - MIN(strlen(name), (size_t) L_NAME);
        (void) snprintf(stub, sizeof(stub), "%s", tail);
        for (char *c = stub; *c; c++)
            if ((unsigned char) *c >= 0x80)
                *c = '_';
        fill_header(h, stub, type, e->mode, size, e->mtime, link);
    } else {
        fill_header(h, name, type, e->mode, size, e->mtime, link);
    }
    r = buf_append(out, h, TAR_BLOCK);
out:
    buf_free(&pax);
    free(name);
    return r < 0 ? r : 0;
}

size_t tar_padding(uint64_t size)
{
    return (size_t) ((TAR_BLOCK - size % TAR_BLOCK) % TAR_BLOCK);
}

int tar_end(struct buf *out)
{
    char zero[2 * TAR_BLOCK] = {0};
    int r = buf_append(out, zero, sizeof(zero));
    return r < 0 ? r : 0;
}

/* --- reader --------------------------------------------------------------------------------- */

enum tar_state {
    ST_HEADER = 0, /* collecting a header block */
    ST_EXT,        /* collecting a pax or GNU long-name body into `ext` */
    ST_DATA,       /* content of a regular file */
    ST_SKIP,       /* bytes to ignore (a pax global header, a directory's content) */
    ST_PAD,        /* padding after content */
    ST_END,        /* after the end-of-archive marker */
    ST_FAILED,
};

enum ext_kind {
    EXT_PAX = 0,
    EXT_GNU_NAME,
    EXT_GNU_LINK,
};

struct tar_reader {
    const struct tar_reader_ops *ops;
    void *userdata;
    enum tar_state state;
    char hdr[TAR_BLOCK];
    size_t hdr_len;
    int zero_blocks;
    enum ext_kind ext_kind;
    struct buf ext;
    uint64_t remaining; /* content, skip or ext bytes still to come */
    size_t pad;
    bool in_entry; /* on_entry_end is owed */
    /* Overrides from a pax or GNU header, for the next entry. */
    char *next_path;
    char *next_link;
    bool has_next_size;
    uint64_t next_size;
    size_t entries;
    uint64_t total;
    char error[160];
};

int tar_reader_new(const struct tar_reader_ops *ops, void *userdata, struct tar_reader **ret)
{
    struct tar_reader *t = xcalloc(1, sizeof(*t));
    t->ops = ops;
    t->userdata = userdata;
    buf_init(&t->ext, TAR_MAX_PAX_BYTES);
    *ret = t;
    return 0;
}

struct tar_reader *tar_reader_free(struct tar_reader *t)
{
    if (!t)
        return NULL;
    buf_free(&t->ext);
    free(t->next_path);
    free(t->next_link);
    free(t);
    return NULL;
}

const char *tar_reader_error(const struct tar_reader *t)
{
    return t->error;
}

size_t tar_reader_entries(const struct tar_reader *t)
{
    return t->entries;
}

static int fail(struct tar_reader *t, int r, const char *fmt, ...) _printf_(3, 4);
static int fail(struct tar_reader *t, int r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    (void) vsnprintf(t->error, sizeof(t->error), fmt, ap);
    va_end(ap);
    t->state = ST_FAILED;
    return r;
}

/* An octal field (leading spaces, digits, then space or NUL), or base-256 (GNU). */
static int parse_number(const char *f, size_t width, uint64_t *ret)
{
    uint64_t v = 0;
    if ((unsigned char) f[0] & 0x80) {
        if ((unsigned char) f[0] != 0x80)
            return -EINVAL; /* negative, or too large */
        for (size_t i = 1; i < width; i++) {
            if (v >> 55)
                return -ERANGE;
            v = (v << 8) | (unsigned char) f[i];
        }
        *ret = v;
        return 0;
    }
    size_t i = 0;
    while (i < width && f[i] == ' ')
        i++;
    bool any = false;
    for (; i < width && f[i] >= '0' && f[i] <= '7'; i++) {
        if (v >> 60)
            return -ERANGE;
        v = v * 8 + (uint64_t) (f[i] - '0');
        any = true;
    }
    for (; i < width; i++)
        if (f[i] != ' ' && f[i] != '\0')
            return -EINVAL;
    if (!any)
        v = 0;
    *ret = v;
    return 0;
}

/*
 * Cleans `name` into `out` (TAR_MAX_NAME + 1 bytes): refuses absolute names and ".."
 * components, drops "." and empty components. Returns the cleaned length (0 for the archive's
 * root, "." or "./"), or -EBADMSG.
 */
static int clean_name(struct tar_reader *t, const char *name, char *out)
{
    size_t o = 0;
    if (name[0] == '/')
        return fail(t, -EBADMSG, "absolute name in archive: '%.64s'", name);
    if (strlen(name) > TAR_MAX_NAME)
        return fail(t, -E2BIG, "name longer than %d bytes in archive", TAR_MAX_NAME);
    for (const char *p = name; *p;) {
        const char *end = strchrnul(p, '/');
        size_t n = (size_t) (end - p);
        if (n == 2 && p[0] == '.' && p[1] == '.')
            return fail(t, -EBADMSG, "'..' in a name in archive: '%.64s'", name);
        if (n > 0 && !(n == 1 && p[0] == '.')) {
            if (o)
                out[o++] = '/';
            memcpy(out + o, p, n);
            o += n;
        }
        p = *end ? end + 1 : end;
    }
    out[o] = '\0';
    return (int) o;
}

static void take_overrides_done(struct tar_reader *t)
{
    free(t->next_path);
    free(t->next_link);
    t->next_path = t->next_link = NULL;
    t->has_next_size = false;
}

static int parse_pax(struct tar_reader *t)
{
    const char *p = t->ext.data, *end = t->ext.data + t->ext.len;
    while (p < end) {
        uint64_t len = 0;
        const char *q = p;
        while (q < end && *q >= '0' && *q <= '9' && len < TAR_MAX_PAX_BYTES)
            len = len * 10 + (uint64_t) (*q++ - '0');
        if (q == p || q >= end || *q != ' ' || len > (uint64_t) (end - p) ||
            len < (uint64_t) (q - p) + 3 || p[len - 1] != '\n')
            return fail(t, -EBADMSG, "malformed pax extended header");
        const char *kv = q + 1, *rec_end = p + len - 1;
        const char *eq = memchr(kv, '=', (size_t) (rec_end - kv));
        if (!eq)
            return fail(t, -EBADMSG, "malformed pax extended header");
        size_t klen = (size_t) (eq - kv), vlen = (size_t) (rec_end - eq - 1);
        if (memchr(eq + 1, '\0', vlen))
            return fail(t, -EBADMSG, "NUL byte in a pax value");
        if (klen == 4 && memcmp(kv, "path", 4) == 0) {
            free(t->next_path);
            t->next_path = xstrndup(eq + 1, vlen);
        } else if (klen == 8 && memcmp(kv, "linkpath", 8) == 0) {
            free(t->next_link);
            t->next_link = xstrndup(eq + 1, vlen);
        } else if (klen == 4 && memcmp(kv, "size", 4) == 0) {
            uint64_t v = 0;
            if (vlen == 0 || vlen > 19)
                return fail(t, -EBADMSG, "bad size in a pax extended header");
            for (size_t i = 0; i < vlen; i++) {
                char c = eq[1 + i];
                if (c < '0' || c > '9')
                    return fail(t, -EBADMSG, "bad size in a pax extended header");
                v = v * 10 + (uint64_t) (c - '0');
            }
            t->has_next_size = true;
            t->next_size = v;
        }
        p += len;
    }
    return 0;
}

static int header_done(struct tar_reader *t)
{
    const char *h = t->hdr;
    bool zero = true;
    for (size_t i = 0; i < TAR_BLOCK && zero; i++)
        zero = h[i] == 0;
    if (zero) {
        if (t->next_path || t->next_link || t->has_next_size)
            return fail(t, -EBADMSG, "extended header without an entry");
        if (++t->zero_blocks == 2)
            t->state = ST_END;
        return 0;
    }
    if (t->zero_blocks)
        return fail(t, -EBADMSG, "lone zero block inside the archive");

    uint64_t want, size;
    if (parse_number(h + F_CHKSUM, 8, &want) < 0)
        return fail(t, -EBADMSG, "malformed header checksum");
    unsigned sum = 0;
    int ssum = 0;
    for (size_t i = 0; i < TAR_BLOCK; i++) {
        unsigned char c = (i >= F_CHKSUM && i < F_CHKSUM + 8) ? ' ' : (unsigned char) h[i];
        sum += c;
        ssum += (signed char) c;
    }
    if (want != sum && (int64_t) want != ssum)
        return fail(t, -EBADMSG, "header checksum mismatch");
    if (parse_number(h + F_SIZE, 12, &size) < 0)
        return fail(t, -EBADMSG, "malformed size field");
    char type = h[F_TYPE];

    if (type == 'x' || type == 'L' || type == 'K') {
        uint64_t max = type == 'x' ? TAR_MAX_PAX_BYTES : TAR_MAX_NAME + 1;
        if (size > max)
            return fail(t, -E2BIG, "extended header larger than %llu bytes",
                        (unsigned long long) max);
        t->ext_kind = type == 'x' ? EXT_PAX : type == 'L' ? EXT_GNU_NAME : EXT_GNU_LINK;
        buf_reset(&t->ext);
        t->remaining = size;
        t->pad = tar_padding(size);
        t->state = ST_EXT;
        return 0;
    }
    if (type == 'g') {
        if (size > TAR_MAX_PAX_BYTES)
            return fail(t, -E2BIG, "global header larger than %d bytes", TAR_MAX_PAX_BYTES);
        t->remaining = size;
        t->pad = tar_padding(size);
        t->state = ST_SKIP;
        return 0;
    }
    if (type == '1')
        return fail(t, -EBADMSG, "hard links are not supported");
    if (type == '3' || type == '4')
        return fail(t, -EBADMSG, "device entries are refused");
    if (type == '6')
        return fail(t, -EBADMSG, "FIFO entries are refused");
    if (type != '0' && type != '\0' && type != '7' && type != '5' && type != '2')
        return fail(t, -EBADMSG, "unsupported entry type '%c'",
                    type >= 0x20 && type < 0x7f ? type : '?');

    struct tar_entry e = {0};
    char raw[L_PREFIX + 1 + L_NAME + 1];
    if (!t->next_path) {
        size_t nlen = strnlen(h + F_NAME, L_NAME);
        size_t plen = memcmp(h + F_MAGIC, "ustar", 5) == 0 ? strnlen(h + F_PREFIX, L_PREFIX) : 0;
        if (plen)
            (void) snprintf(raw, sizeof(raw), "%.*s/%.*s", (int) plen, h + F_PREFIX, (int) nlen,
                            h + F_NAME);
        else
            (void) snprintf(raw, sizeof(raw), "%.*s", (int) nlen, h + F_NAME);
    }
    char link_raw[L_NAME + 1];
    (void) snprintf(link_raw, sizeof(link_raw), "%.*s", (int) strnlen(h + F_LINKNAME, L_NAME),
                    h + F_LINKNAME);
    if (t->has_next_size)
        size = t->next_size;
    if (type == '5')
        e.type = TAR_DIR;
    else if (type == '2')
        e.type = TAR_SYMLINK;
    else
        e.type = TAR_FILE;

    char *name = xmalloc(TAR_MAX_NAME + 1);
    int r = clean_name(t, t->next_path ? t->next_path : raw, name);
    if (r < 0)
        goto out;
    if (r == 0 && e.type != TAR_DIR) {
        r = fail(t, -EBADMSG, "entry without a name in archive");
        goto out;
    }
    const char *link = t->next_link ? t->next_link : link_raw;
    if (e.type == TAR_SYMLINK) {
        if (!*link) {
            r = fail(t, -EBADMSG, "symlink '%.64s' without a target", name);
            goto out;
        }
        if (strlen(link) > TAR_MAX_NAME) {
            r = fail(t, -E2BIG, "link target longer than %d bytes", TAR_MAX_NAME);
            goto out;
        }
        e.linkname = link;
    }
    if (++t->entries > TAR_MAX_ENTRIES) {
        r = fail(t, -E2BIG, "more than %d entries in archive", TAR_MAX_ENTRIES);
        goto out;
    }
    if (e.type == TAR_FILE) {
        if (size > TAR_MAX_TOTAL_BYTES - t->total) {
            r = fail(t, -E2BIG, "archive content larger than %llu bytes",
                     (unsigned long long) TAR_MAX_TOTAL_BYTES);
            goto out;
        }
        t->total += size;
    }
    uint64_t mode = 0, mtime = 0;
    (void) parse_number(h + F_MODE, 8, &mode);
    (void) parse_number(h + F_MTIME, 12, &mtime);
    e.mode = (uint32_t) (mode & 07777);
    e.mtime = (int64_t) (mtime & OCTAL11_MAX);
    e.size = e.type == TAR_FILE ? size : 0;
    e.name = name;
    t->remaining = size;
    t->pad = tar_padding(size);
    t->state = e.type == TAR_FILE ? ST_DATA : ST_SKIP;
    if (r == 0) {
        /* The archive's root ("." or "./"): nothing to report. */
        take_overrides_done(t);
        r = 0;
        goto out;
    }
    r = t->ops->on_entry(t->userdata, &e);
    if (r < 0) {
        t->state = ST_FAILED;
        goto out;
    }
    t->in_entry = true;
    r = 0;
out:
    free(name);
    take_overrides_done(t);
    return r;
}

static int entry_end(struct tar_reader *t)
{
    if (!t->in_entry)
        return 0;
    t->in_entry = false;
    int r = t->ops->on_entry_end ? t->ops->on_entry_end(t->userdata) : 0;
    if (r < 0)
        t->state = ST_FAILED;
    return r;
}

static int ext_done(struct tar_reader *t)
{
    if (t->ext_kind == EXT_PAX)
        return parse_pax(t);
    size_t n = strnlen(t->ext.data ? t->ext.data : "", t->ext.len);
    char *v = xstrndup(t->ext.data ? t->ext.data : "", n);
    if (t->ext_kind == EXT_GNU_NAME) {
        free(t->next_path);
        t->next_path = v;
    } else {
        free(t->next_link);
        t->next_link = v;
    }
    return 0;
}

int tar_reader_feed(struct tar_reader *t, const char *data, size_t len)
{
    int r;
    while (len > 0) {
        size_t n;
        switch (t->state) {
        case ST_FAILED:
            return -EBADMSG;
        case ST_END:
            return 0;
        case ST_HEADER:
            n = MIN(len, TAR_BLOCK - t->hdr_len);
            memcpy(t->hdr + t->hdr_len, data, n);
            t->hdr_len += n;
            data += n;
            len -= n;
            if (t->hdr_len == TAR_BLOCK) {
                t->hdr_len = 0;
                r = header_done(t);
                if (r < 0)
                    return r;
            }
            break;
        case ST_EXT:
        case ST_DATA:
        case ST_SKIP:
            n = (size_t) MIN((uint64_t) len, t->remaining);
            if (t->state == ST_EXT) {
                if (buf_append(&t->ext, data, n) < 0)
                    return fail(t, -E2BIG, "extended header too large");
            } else if (t->state == ST_DATA && n > 0) {
                r = t->ops->on_data(t->userdata, data, n);
                if (r < 0) {
                    t->state = ST_FAILED;
                    return r;
                }
            }
            data += n;
            len -= n;
            t->remaining -= n;
            if (t->remaining == 0) {
                if (t->state == ST_EXT && (r = ext_done(t)) < 0)
                    return r;
                t->state = ST_PAD;
            }
            break;
        case ST_PAD:
            n = MIN(len, t->pad);
            data += n;
            len -= n;
            t->pad -= n;
            break;
        }
        /* Content and padding complete: the entry ends, the next header follows. */
        if (t->state == ST_PAD && t->pad == 0) {
            t->state = ST_HEADER;
            r = entry_end(t);
            if (r < 0)
                return r;
        }
    }
    /* A zero-length entry ends at once. */
    if ((t->state == ST_DATA || t->state == ST_SKIP) && t->remaining == 0) {
        t->state = t->pad ? ST_PAD : ST_HEADER;
        if (t->state == ST_HEADER) {
            r = entry_end(t);
            if (r < 0)
                return r;
        }
    }
    return 0;
}

int tar_reader_finish(struct tar_reader *t)
{
    if (t->state == ST_FAILED)
        return -EBADMSG;
    (void) tar_reader_feed(t, "", 0);
    if (t->state == ST_END)
        return 0;
    if (t->state != ST_HEADER || t->hdr_len != 0 || t->next_path || t->next_link ||
        t->has_next_size)
        return fail(t, -EBADMSG, "archive truncated");
    return 0;
}

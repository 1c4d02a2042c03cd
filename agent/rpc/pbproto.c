/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Binary protobuf with the checks protobuf-c leaves out. protobuf-c 1.4.1 copies a string field
 * byte for byte and NUL-terminates it, so "ls\0rm -rf /" arrives as "ls" with no error, and it
 * never checks UTF-8. The decoded tree cannot show either problem any more, so after unpacking
 * we walk the original wire bytes alongside the descriptors and look at every string there.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/cleanup.h"
#include "base/macro.h"
#include "base/utf8.h"
#include "rpc/pbjson.h"

/* Longest field path quoted in an error message; longer ones are cut. */
#define PBPROTO_PATH_MAX 256

/* A varint is at most 10 bytes on the wire (64 bits, 7 per byte). */
#define PBPROTO_VARINT_MAX 10

/* Field numbers are 1 .. 2^29 - 1 (the protobuf language guide). */
#define PBPROTO_MAX_FIELD_NUMBER 536870911

/* Wire types (protobuf encoding spec); groups (3, 4) are not supported by protobuf-c. */
#define WIRE_VARINT 0
#define WIRE_64BIT  1
#define WIRE_LEN    2
#define WIRE_32BIT  5

struct scan {
    char *error;
    size_t path_len;
    char path[PBPROTO_PATH_MAX + 1];
};

static void message_free(ProtobufCMessage *m)
{
    protobuf_c_message_free_unpacked(m, NULL);
}
DEFINE_CLEANUP_FUNC(ProtobufCMessage *, message_free)

_printf_(2, 3) static int scan_fail(struct scan *sc, const char *fmt, ...)
{
    if (!sc->error) {
        va_list ap;
        va_start(ap, fmt);
        if (vasprintf(&sc->error, fmt, ap) < 0)
            sc->error = NULL;
        va_end(ap);
    }
    return -EINVAL;
}

/* Appends ".jsonName" or "jsonName[i]" to the path; returns the length to restore. */
static size_t path_push(struct scan *sc, const char *name, bool indexed, size_t index)
{
    size_t old = sc->path_len;
    if (old >= PBPROTO_PATH_MAX)
        return old;
    char *p = sc->path + old, *end = sc->path + PBPROTO_PATH_MAX;
    if (old > 0)
        *p++ = '.';
    /* The same lowerCamelCase names the JSON codec uses, so errors read alike in both. */
    bool upper = false;
    for (const char *c = name; *c && p < end; c++) {
        if (*c == '_') {
            upper = true;
            continue;
        }
        *p++ = upper && *c >= 'a' && *c <= 'z' ? (char) (*c - 'a' + 'A') : *c;
        upper = false;
    }
    if (indexed && p < end)
        p += MIN((size_t) snprintf(p, (size_t) (end - p) + 1, "[%zu]", index), (size_t) (end - p));
    *p = '\0';
    sc->path_len = (size_t) (p - sc->path);
    return old;
}

static void path_pop(struct scan *sc, size_t old)
{
    sc->path_len = old;
    sc->path[old] = '\0';
}

static int read_varint(const uint8_t **p, size_t *len, uint64_t *ret)
{
    uint64_t v = 0;
    for (size_t i = 0; i < PBPROTO_VARINT_MAX && i < *len; i++) {
        uint8_t b = (*p)[i];
        v |= (uint64_t) (b & 0x7f) << (7 * i);
        if (!(b & 0x80)) {
            *p += i + 1;
            *len -= i + 1;
            *ret = v;
            return 0;
        }
    }
    return -EINVAL;
}

static int check_string(struct scan *sc, const uint8_t *s, size_t len)
{
    if (memchr(s, '\0', len))
        return scan_fail(sc, "invalid value for field '%s': string contains NUL", sc->path);
    for (size_t i = 0; i < len;) {
        size_t n = utf8_seq_len(s + i, len - i);
        if (n == 0)
            return scan_fail(sc, "invalid value for field '%s': string is not valid UTF-8",
                             sc->path);
        i += n;
    }
    return 0;
}

/*
 * Walks one message's wire bytes. Only strings and submessages are looked at; everything else
 * was already parsed by protobuf-c, which also rejected wire types that do not match a known
 * field, so a surprise here means the two parsers disagree and the input is refused.
 */
static int scan_message(struct scan *sc, const ProtobufCMessageDescriptor *desc, const uint8_t *p,
                        size_t len, unsigned depth)
{
    if (depth > PBJSON_MAX_DEPTH)
        return scan_fail(sc, "invalid protobuf: nested deeper than %d levels", PBJSON_MAX_DEPTH);

    /* Occurrences per repeated field so far, to name "args[2]" rather than just "args". */
    _cleanup_free_ size_t *counts = NULL;

    while (len > 0) {
        uint64_t tag, v;
        if (read_varint(&p, &len, &tag) < 0)
            return scan_fail(sc, "invalid protobuf: truncated tag");
        uint64_t number = tag >> 3;
        unsigned wire = (unsigned) (tag & 7);
        /*
         * protobuf-c 1.4.1 keeps field 0 as an unknown field when its tag is written in more than
         * one byte, then packs it back in one byte that it refuses to read: refuse it up front.
         */
        if (number == 0 || number > PBPROTO_MAX_FIELD_NUMBER)
            return scan_fail(sc, "invalid protobuf: field number %" PRIu64 " out of range", number);
        switch (wire) {
        case WIRE_VARINT:
            if (read_varint(&p, &len, &v) < 0)
                return scan_fail(sc, "invalid protobuf: truncated varint");
            continue;
        case WIRE_64BIT:
        case WIRE_32BIT: {
            size_t n = wire == WIRE_64BIT ? 8 : 4;
            if (len < n)
                return scan_fail(sc, "invalid protobuf: truncated fixed-width value");
            p += n;
            len -= n;
            continue;
        }
        case WIRE_LEN:
            break;
        default:
            return scan_fail(sc, "invalid protobuf: unsupported wire type %u", wire);
        }

        if (read_varint(&p, &len, &v) < 0 || v > len)
            return scan_fail(sc, "invalid protobuf: truncated length-delimited field");
        const uint8_t *payload = p;
        size_t plen = (size_t) v;
        p += plen;
        len -= plen;

        const ProtobufCFieldDescriptor *f =
                number > 0 && number <= UINT32_MAX
                        ? protobuf_c_message_descriptor_get_field(desc, (unsigned) number)
                        : NULL;
        if (!f || (f->type != PROTOBUF_C_TYPE_STRING && f->type != PROTOBUF_C_TYPE_MESSAGE))
            continue;

        bool repeated = f->label == PROTOBUF_C_LABEL_REPEATED;
        size_t index = 0;
        if (repeated) {
            if (!counts) {
                counts = calloc(desc->n_fields, sizeof(*counts));
                if (!counts)
                    return -ENOMEM;
            }
            index = counts[f - desc->fields]++;
        }
        size_t old = path_push(sc, f->name, repeated, index);
        int r = f->type == PROTOBUF_C_TYPE_STRING
                        ? check_string(sc, payload, plen)
                        : scan_message(sc, f->descriptor, payload, plen, depth + 1);
        if (r < 0)
            return r;
        path_pop(sc, old);
    }
    return 0;
}

int pbproto_decode(const ProtobufCMessageDescriptor *desc, const uint8_t *data, size_t len,
                   ProtobufCMessage **ret_msg, char **ret_error)
{
    struct scan sc = {0};
    /* protobuf-c reports malformed input and out-of-memory alike, as NULL. */
    _cleanup_(message_freep) ProtobufCMessage *msg =
            protobuf_c_message_unpack(desc, NULL, len, data);
    int r = msg ? scan_message(&sc, desc, data, len, 1)
                : scan_fail(&sc, "invalid protobuf: cannot parse %s", desc->name);
    if (r < 0) {
        if (ret_error)
            *ret_error = TAKE_PTR(sc.error);
        free(sc.error);
        return r;
    }
    *ret_msg = TAKE_PTR(msg);
    return 0;
}

int pbproto_encode(const ProtobufCMessage *msg, struct buf *out)
{
    size_t n = protobuf_c_message_get_packed_size(msg);
    int r = buf_reserve(out, n);
    if (r < 0)
        return r;
    size_t written = protobuf_c_message_pack(msg, (uint8_t *) buf_tail(out));
    buf_commit(out, written);
    return 0;
}

/* SPDX-License-Identifier: Apache-2.0 */
#include "rpc/pbjson.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <nettle/base64.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "base/cleanup.h"
#include "base/macro.h"
#include "base/parse.h"
#include "base/timefmt.h"
#include "base/utf8.h"

/*
 * Longest field path quoted in an error message ("process.envs[\"PATH\"]"). A deeper or longer
 * path is cut: the message only has to point the client at the right place.
 */
#define PBJSON_PATH_MAX 256

/* Longest map key quoted inside a field path; keys come from the client and may be huge. */
#define PBJSON_PATH_KEY_MAX 48

/* Longest enum name quoted back in an "unknown enum value" error, for the same reason. */
#define PBJSON_QUOTE_MAX 64

/*
 * Digits tried when looking for the shortest decimal form of a float or double that reads back
 * to the same value (FLT_DECIMAL_DIG and DBL_DECIMAL_DIG always round-trip).
 */
#define PBJSON_FLOAT_DIGITS  9
#define PBJSON_DOUBLE_DIGITS 17

/* Decimal digits in UINT64_MAX: longer digit strings cannot be a 64-bit integer. */
#define PBJSON_U64_DIGITS 20

/* Room for any formatted number: "-1.2345678901234567e-308" plus quotes and NUL. */
#define PBJSON_NUM_MAX 40

#define NANOS_PER_SECOND 1000000000

/* "2026-08-22T10:00:00.123456789Z" is the longest Timestamp we write (30 bytes) plus quotes. */
#define TIMESTAMP_JSON_MAX 34

#define TIMESTAMP_FULL_NAME "google.protobuf.Timestamp"

static void message_free(ProtobufCMessage *m)
{
    protobuf_c_message_free_unpacked(m, NULL);
}
DEFINE_CLEANUP_FUNC(ProtobufCMessage *, message_free)

/* ---- descriptor helpers (shared by both directions) ---- */

static void *member_ptr(const ProtobufCMessage *msg, unsigned offset)
{
    return (char *) msg + offset;
}

/* Size of one element of a repeated field, as protobuf-c lays the array out. */
static size_t element_size(ProtobufCType type)
{
    switch (type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_FLOAT:
    case PROTOBUF_C_TYPE_ENUM:
        return 4;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
    case PROTOBUF_C_TYPE_DOUBLE:
        return 8;
    case PROTOBUF_C_TYPE_BOOL:
        return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_STRING:
        return sizeof(char *);
    case PROTOBUF_C_TYPE_BYTES:
        return sizeof(ProtobufCBinaryData);
    case PROTOBUF_C_TYPE_MESSAGE:
        return sizeof(ProtobufCMessage *);
    }
    return 0;
}

/*
 * protoc-c 1.4.1 keeps no map flag: a map is a repeated `…Entry` message with exactly key = 1 and
 * value = 2, which is what protoc generates for `map<K, V>`.
 */
static bool field_is_map(const ProtobufCFieldDescriptor *f)
{
    if (f->type != PROTOBUF_C_TYPE_MESSAGE || f->label != PROTOBUF_C_LABEL_REPEATED)
        return false;
    const ProtobufCMessageDescriptor *d = f->descriptor;
    size_t n = strlen(d->name);
    if (n < STRLEN("Entry") || !streq(d->name + n - STRLEN("Entry"), "Entry"))
        return false;
    return d->n_fields == 2 && d->fields[0].id == 1 && streq(d->fields[0].name, "key") &&
           d->fields[1].id == 2 && streq(d->fields[1].name, "value");
}

/* Finds seconds (1, int64) and nanos (2, int32) if `d` is google.protobuf.Timestamp. */
static bool timestamp_fields(const ProtobufCMessageDescriptor *d,
                             const ProtobufCFieldDescriptor **ret_seconds,
                             const ProtobufCFieldDescriptor **ret_nanos)
{
    if (!streq(d->name, TIMESTAMP_FULL_NAME))
        return false;
    const ProtobufCFieldDescriptor *s = protobuf_c_message_descriptor_get_field(d, 1);
    const ProtobufCFieldDescriptor *n = protobuf_c_message_descriptor_get_field(d, 2);
    if (!s || !n || s->type != PROTOBUF_C_TYPE_INT64 || n->type != PROTOBUF_C_TYPE_INT32 ||
        s->label == PROTOBUF_C_LABEL_REPEATED || n->label == PROTOBUF_C_LABEL_REPEATED)
        return false;
    *ret_seconds = s;
    *ret_nanos = n;
    return true;
}

/*
 * protoc's json_name rule: drop every '_' and upper-case the letter after it. The first letter
 * keeps its case. Writes at most strlen(name) bytes (no NUL) and returns the count.
 */
static size_t json_name(const char *name, char *out)
{
    size_t n = 0;
    bool upper = false;
    for (const char *p = name; *p; p++) {
        if (*p == '_') {
            upper = true;
            continue;
        }
        out[n++] = upper && *p >= 'a' && *p <= 'z' ? (char) (*p - 'a' + 'A') : *p;
        upper = false;
    }
    return n;
}

/* Compares `key` with the json_name of `name` without building it. */
static bool json_name_eq(const char *name, const char *key)
{
    bool upper = false;
    for (const char *p = name; *p; p++) {
        if (*p == '_') {
            upper = true;
            continue;
        }
        char c = upper && *p >= 'a' && *p <= 'z' ? (char) (*p - 'a' + 'A') : *p;
        if (*key++ != c)
            return false;
        upper = false;
    }
    return *key == '\0';
}

/* ======================================================================================== */
/* Decoding                                                                                 */
/* ======================================================================================== */

struct dec {
    char *error;
    unsigned depth;
    size_t path_len;
    char path[PBJSON_PATH_MAX + 1];
};

_printf_(2, 3) static int dec_fail(struct dec *d, const char *fmt, ...)
{
    if (!d->error) {
        va_list ap;
        va_start(ap, fmt);
        if (vasprintf(&d->error, fmt, ap) < 0)
            d->error = NULL;
        va_end(ap);
    }
    return -EINVAL;
}

_printf_(2, 3) static int dec_fail_field(struct dec *d, const char *fmt, ...)
{
    char what[PBJSON_PATH_MAX];
    va_list ap;
    va_start(ap, fmt);
    (void) vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    return dec_fail(d, "invalid value for field '%s': %s", d->path, what);
}

/* Appends a path segment; returns the length to restore with path_pop(). */
_printf_(2, 3) static size_t path_push(struct dec *d, const char *fmt, ...)
{
    size_t old = d->path_len;
    if (old < PBJSON_PATH_MAX) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(d->path + old, sizeof(d->path) - old, fmt, ap);
        va_end(ap);
        d->path_len = n < 0 ? old : MIN(old + (size_t) n, (size_t) PBJSON_PATH_MAX);
    }
    return old;
}

static void path_pop(struct dec *d, size_t old)
{
    d->path_len = old;
    d->path[old] = '\0';
}

static size_t path_push_field(struct dec *d, const char *key)
{
    return d->path_len ? path_push(d, ".%s", key) : path_push(d, "%s", key);
}

static const char *json_kind(const json_t *j)
{
    switch (json_typeof(j)) {
    case JSON_OBJECT:
        return "object";
    case JSON_ARRAY:
        return "array";
    case JSON_STRING:
        return "string";
    case JSON_INTEGER:
    case JSON_REAL:
        return "number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "boolean";
    case JSON_NULL:
        return "null";
    }
    return "value";
}

/*
 * Nesting is checked on the raw text before jansson builds anything, so that unknown fields
 * cannot smuggle deep structures past the limit either. Brackets inside strings do not count.
 */
static bool json_too_deep(const char *s, size_t len)
{
    unsigned depth = 0;
    bool in_string = false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (in_string) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_string = false;
        } else if (c == '"') {
            in_string = true;
        } else if (c == '{' || c == '[') {
            if (++depth > PBJSON_MAX_DEPTH)
                return true;
        } else if ((c == '}' || c == ']') && depth > 0) {
            depth--;
        }
    }
    return false;
}

/* Strict JSON number grammar: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? */
static bool is_json_number(const char *s, size_t len)
{
    size_t i = 0;
    if (i < len && s[i] == '-')
        i++;
    if (i >= len)
        return false;
    if (s[i] == '0') {
        i++;
    } else if (s[i] >= '1' && s[i] <= '9') {
        while (i < len && s[i] >= '0' && s[i] <= '9')
            i++;
    } else {
        return false;
    }
    if (i < len && s[i] == '.') {
        size_t start = ++i;
        while (i < len && s[i] >= '0' && s[i] <= '9')
            i++;
        if (i == start)
            return false;
    }
    if (i < len && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < len && (s[i] == '+' || s[i] == '-'))
            i++;
        size_t start = i;
        while (i < len && s[i] >= '0' && s[i] <= '9')
            i++;
        if (i == start)
            return false;
    }
    return i == len;
}

/* Splits an integral double into sign and magnitude; -EINVAL for fractions, -ERANGE if huge. */
static int double_to_integer(double x, bool *ret_neg, uint64_t *ret_mag)
{
    /* No trunc()/fabs(): agentcore does not link libm, and these two are easy without it. */
    if (!isfinite(x))
        return -EINVAL;
    double a = x < 0 ? -x : x;
    /* 2^64 is exact as a double; anything at or above it does not fit a uint64. */
    if (a >= 18446744073709551616.0)
        return -ERANGE;
    uint64_t mag = (uint64_t) a;
    if ((double) mag != a)
        return -EINVAL;
    *ret_neg = x < 0;
    *ret_mag = mag;
    return 0;
}

/*
 * Reads a JSON number or a string holding one as sign and magnitude. Integers, integral
 * fractions and exponents ("1.0", "1e3") are accepted as protojson does; "1.5" is not.
 */
static int json_to_integer(const json_t *j, bool *ret_neg, uint64_t *ret_mag)
{
    if (json_is_integer(j)) {
        json_int_t v = json_integer_value(j);
        *ret_neg = v < 0;
        *ret_mag = v < 0 ? -(uint64_t) v : (uint64_t) v;
        return 0;
    }
    if (json_is_real(j))
        return double_to_integer(json_real_value(j), ret_neg, ret_mag);
    if (!json_is_string(j))
        return -EINVAL;

    const char *s = json_string_value(j);
    size_t len = json_string_length(j);
    bool neg = len > 0 && s[0] == '-';
    uint64_t mag;
    int r = parse_u64_digits(s + neg, len - neg, PBJSON_U64_DIGITS, &mag);
    if (r == -ERANGE)
        return r;
    if (r == 0 && (len - neg == 1 || s[neg] != '0')) {
        *ret_neg = neg;
        *ret_mag = mag;
        return 0;
    }
    if (!is_json_number(s, len))
        return -EINVAL;
    return double_to_integer(strtod(s, NULL), ret_neg, ret_mag);
}

static int fail_not_integer(struct dec *d, const json_t *j, const char *type)
{
    if (json_is_string(j))
        return dec_fail_field(d, "expected %s, got string '%.*s'", type, PBJSON_QUOTE_MAX,
                              json_string_value(j));
    if (json_is_number(j))
        return dec_fail_field(d, "expected %s, got a fractional number", type);
    return dec_fail_field(d, "expected %s, got %s", type, json_kind(j));
}

static int decode_int(struct dec *d, const json_t *j, int64_t min, int64_t max, const char *type,
                      int64_t *ret)
{
    bool neg;
    uint64_t mag;
    int r = json_to_integer(j, &neg, &mag);
    if (r == -EINVAL)
        return fail_not_integer(d, j, type);
    if (r == 0 && neg && mag <= (uint64_t) - (min + 1) + 1) {
        *ret = mag == (uint64_t) - (min + 1) + 1 ? min : -(int64_t) mag;
        return 0;
    }
    if (r == 0 && !neg && mag <= (uint64_t) max) {
        *ret = (int64_t) mag;
        return 0;
    }
    return dec_fail_field(d, "value out of range for %s", type);
}

static int decode_uint(struct dec *d, const json_t *j, uint64_t max, const char *type,
                       uint64_t *ret)
{
    bool neg;
    uint64_t mag;
    int r = json_to_integer(j, &neg, &mag);
    if (r == -EINVAL)
        return fail_not_integer(d, j, type);
    if (r == 0 && (!neg || mag == 0) && mag <= max) {
        *ret = mag;
        return 0;
    }
    return dec_fail_field(d, "value out of range for %s", type);
}

static int decode_float(struct dec *d, const json_t *j, bool single, double *ret)
{
    const char *type = single ? "float" : "double";
    double x;
    if (json_is_integer(j)) {
        x = (double) json_integer_value(j);
    } else if (json_is_real(j)) {
        x = json_real_value(j);
    } else if (json_is_string(j)) {
        const char *s = json_string_value(j);
        size_t len = json_string_length(j);
        if (streq(s, "NaN")) {
            *ret = NAN;
            return 0;
        }
        if (streq(s, "Infinity") || streq(s, "-Infinity")) {
            *ret = s[0] == '-' ? -INFINITY : INFINITY;
            return 0;
        }
        if (!is_json_number(s, len))
            return dec_fail_field(d, "expected %s, got string '%.*s'", type, PBJSON_QUOTE_MAX, s);
        x = strtod(s, NULL);
        if (isinf(x))
            return dec_fail_field(d, "value out of range for %s", type);
    } else {
        return dec_fail_field(d, "expected %s, got %s", type, json_kind(j));
    }
    /* Judged after rounding: "3.4028235e+38" is how FLT_MAX itself is written. */
    if (single && isinf((float) x))
        return dec_fail_field(d, "value out of range for %s", type);
    *ret = x;
    return 0;
}

static int decode_enum(struct dec *d, const ProtobufCEnumDescriptor *ed, const json_t *j, int *ret)
{
    if (json_is_string(j)) {
        const char *s = json_string_value(j);
        const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value_by_name(ed, s);
        if (!v)
            return dec_fail_field(d, "unknown value '%.*s' for enum %s", PBJSON_QUOTE_MAX, s,
                                  ed->name);
        *ret = v->value;
        return 0;
    }
    if (json_is_number(j)) {
        /* proto3 enums are open: any int32 is kept, even one without a name. */
        int64_t v;
        int r = decode_int(d, j, INT32_MIN, INT32_MAX, "enum", &v);
        if (r < 0)
            return r;
        *ret = (int) v;
        return 0;
    }
    return dec_fail_field(d, "expected enum %s as a name or number, got %s", ed->name,
                          json_kind(j));
}

static int base64_value(unsigned char c, bool url)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == (url ? '-' : '+'))
        return 62;
    if (c == (url ? '_' : '/'))
        return 63;
    return -1;
}

/*
 * Standard or URL-safe base64 (not a mix), padded or not, as protojson accepts it: padding only
 * when the length is a multiple of four, and then it must be right. The result is malloc'd
 * (NULL when empty) for protobuf_c_message_free_unpacked().
 */
static int base64_decode(const char *s, size_t len, ProtobufCBinaryData *ret)
{
    bool url = strpbrk(s, "-_") != NULL;
    if (len % 4 == 0 && len > 0 && s[len - 1] == '=')
        len -= len >= 2 && s[len - 2] == '=' ? 2 : 1;
    if (len % 4 == 1)
        return -EINVAL;
    size_t out_len = len / 4 * 3 + (len % 4 ? len % 4 - 1 : 0);
    _cleanup_free_ uint8_t *out = NULL;
    if (out_len > 0) {
        out = malloc(out_len);
        if (!out)
            return -ENOMEM;
    }
    uint32_t acc = 0;
    size_t bits = 0, o = 0;
    for (size_t i = 0; i < len; i++) {
        int v = base64_value((unsigned char) s[i], url);
        if (v < 0)
            return -EINVAL;
        acc = (acc << 6) | (uint32_t) v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t) (acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    ret->len = out_len;
    ret->data = TAKE_PTR(out);
    return 0;
}

static int decode_message(struct dec *d, const ProtobufCMessageDescriptor *desc, const json_t *j,
                          ProtobufCMessage **ret);

/* A new message as protobuf-c's unpack makes it: malloc'd and initialised from the descriptor. */
static int message_new(const ProtobufCMessageDescriptor *desc, ProtobufCMessage **ret)
{
    ProtobufCMessage *m = malloc(desc->sizeof_message);
    if (!m)
        return -ENOMEM;
    protobuf_c_message_init(desc, m);
    *ret = m;
    return 0;
}

static int decode_timestamp(struct dec *d, const ProtobufCMessageDescriptor *desc,
                            const ProtobufCFieldDescriptor *fs, const ProtobufCFieldDescriptor *fn,
                            const json_t *j, ProtobufCMessage **ret)
{
    if (!json_is_string(j))
        return dec_fail_field(d, "expected an RFC 3339 timestamp string, got %s", json_kind(j));
    int64_t secs;
    int32_t nanos;
    int r = rfc3339_parse(json_string_value(j), json_string_length(j), &secs, &nanos);
    if (r == -ERANGE)
        return dec_fail_field(d, "timestamp out of range (years 0001 to 9999)");
    if (r < 0)
        return dec_fail_field(d, "expected an RFC 3339 timestamp such as "
                                 "'2006-01-02T15:04:05.999999999Z'");
    ProtobufCMessage *m;
    r = message_new(desc, &m);
    if (r < 0)
        return r;
    *(int64_t *) member_ptr(m, fs->offset) = secs;
    *(int32_t *) member_ptr(m, fn->offset) = nanos;
    *ret = m;
    return 0;
}

/*
 * Decodes one value of field `f` (a singular field, a repeated element or a map value) into
 * `dst`, laid out as protobuf-c stores that type. Allocations are made only once the value is
 * known to be good, so `dst` is either untouched or fully owned by the message.
 */
static int decode_value(struct dec *d, const ProtobufCFieldDescriptor *f, const json_t *j,
                        void *dst)
{
    int64_t i = 0;
    uint64_t u = 0;
    double x = 0;
    int e = 0, r;

    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        r = decode_int(d, j, INT32_MIN, INT32_MAX, "int32", &i);
        if (r >= 0)
            *(int32_t *) dst = (int32_t) i;
        return r;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        r = decode_int(d, j, INT64_MIN, INT64_MAX, "int64", &i);
        if (r >= 0)
            *(int64_t *) dst = i;
        return r;
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        r = decode_uint(d, j, UINT32_MAX, "uint32", &u);
        if (r >= 0)
            *(uint32_t *) dst = (uint32_t) u;
        return r;
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        r = decode_uint(d, j, UINT64_MAX, "uint64", &u);
        if (r >= 0)
            *(uint64_t *) dst = u;
        return r;
    case PROTOBUF_C_TYPE_FLOAT:
        r = decode_float(d, j, true, &x);
        if (r >= 0)
            *(float *) dst = (float) x;
        return r;
    case PROTOBUF_C_TYPE_DOUBLE:
        r = decode_float(d, j, false, &x);
        if (r >= 0)
            *(double *) dst = x;
        return r;
    case PROTOBUF_C_TYPE_BOOL:
        if (!json_is_boolean(j))
            return dec_fail_field(d, "expected boolean, got %s", json_kind(j));
        *(protobuf_c_boolean *) dst = json_is_true(j);
        return 0;
    case PROTOBUF_C_TYPE_ENUM:
        r = decode_enum(d, f->descriptor, j, &e);
        if (r >= 0)
            *(int *) dst = e;
        return r;
    case PROTOBUF_C_TYPE_STRING: {
        if (!json_is_string(j))
            return dec_fail_field(d, "expected string, got %s", json_kind(j));
        /* jansson has already rejected \u0000 and invalid UTF-8 in the input. */
        size_t len = json_string_length(j);
        char *s = malloc(len + 1);
        if (!s)
            return -ENOMEM;
        memcpy(s, json_string_value(j), len + 1);
        *(char **) dst = s;
        return 0;
    }
    case PROTOBUF_C_TYPE_BYTES:
        if (!json_is_string(j))
            return dec_fail_field(d, "expected base64 string, got %s", json_kind(j));
        r = base64_decode(json_string_value(j), json_string_length(j), dst);
        if (r == -EINVAL)
            return dec_fail_field(d, "invalid base64");
        return r;
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessageDescriptor *md = f->descriptor;
        const ProtobufCFieldDescriptor *fs, *fn;
        if (timestamp_fields(md, &fs, &fn))
            return decode_timestamp(d, md, fs, fn, j, dst);
        return decode_message(d, md, j, dst);
    }
    }
    return dec_fail_field(d, "unsupported field type");
}

/* Map keys are always JSON strings; integer and bool keys are spelled out in them. */
static int decode_map_key(struct dec *d, const ProtobufCFieldDescriptor *kf, const char *key,
                          void *dst)
{
    if (kf->type == PROTOBUF_C_TYPE_STRING) {
        char *s = strdup(key);
        if (!s)
            return -ENOMEM;
        *(char **) dst = s;
        return 0;
    }
    /* Integer keys go through the same parser as quoted integer values. */
    json_t *j = json_string(key);
    if (!j)
        return -ENOMEM;
    int r;
    switch (kf->type) {
    case PROTOBUF_C_TYPE_BOOL:
        if (!streq(key, "true") && !streq(key, "false"))
            r = dec_fail_field(d, "map key must be 'true' or 'false'");
        else
            r = 0, *(protobuf_c_boolean *) dst = streq(key, "true");
        break;
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        r = decode_value(d, kf, j, dst);
        break;
    default:
        r = dec_fail_field(d, "unsupported map key type");
        break;
    }
    json_decref(j);
    return r;
}

static int decode_map(struct dec *d, ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f,
                      const json_t *j)
{
    if (!json_is_object(j))
        return dec_fail_field(d, "expected object, got %s", json_kind(j));
    size_t n = json_object_size(j);
    if (n == 0)
        return 0;
    const ProtobufCMessageDescriptor *ed = f->descriptor;
    const ProtobufCFieldDescriptor *kf = &ed->fields[0], *vf = &ed->fields[1];
    ProtobufCMessage **entries = calloc(n, sizeof(*entries));
    if (!entries)
        return -ENOMEM;
    /* The message owns the array from here on; the count grows with each complete entry. */
    size_t *count = member_ptr(msg, f->quantifier_offset);
    *(ProtobufCMessage ***) member_ptr(msg, f->offset) = entries;
    *count = 0;

    const char *key;
    json_t *v;
    json_object_foreach((json_t *) j, key, v)
    {
        size_t old = path_push(d, "[\"%.*s\"]", PBJSON_PATH_KEY_MAX, key);
        ProtobufCMessage *entry;
        int r = message_new(ed, &entry);
        if (r < 0)
            return r;
        entries[(*count)++] = entry;
        r = decode_map_key(d, kf, key, member_ptr(entry, kf->offset));
        if (r < 0)
            return r;
        if (json_is_null(v))
            return dec_fail_field(d, "map values must not be null");
        r = decode_value(d, vf, v, member_ptr(entry, vf->offset));
        if (r < 0)
            return r;
        path_pop(d, old);
    }
    return 0;
}

static int decode_repeated(struct dec *d, ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f,
                           const json_t *j)
{
    if (!json_is_array(j))
        return dec_fail_field(d, "expected array, got %s", json_kind(j));
    size_t n = json_array_size(j);
    if (n == 0)
        return 0;
    size_t esize = element_size(f->type);
    char *arr = calloc(n, esize);
    if (!arr)
        return -ENOMEM;
    size_t *count = member_ptr(msg, f->quantifier_offset);
    *(void **) member_ptr(msg, f->offset) = arr;
    *count = 0;

    for (size_t i = 0; i < n; i++) {
        size_t old = path_push(d, "[%zu]", i);
        json_t *v = json_array_get(j, i);
        if (json_is_null(v))
            return dec_fail_field(d, "list elements must not be null");
        int r = decode_value(d, f, v, arr + i * esize);
        if (r < 0)
            return r;
        (*count)++;
        path_pop(d, old);
    }
    return 0;
}

static int decode_field(struct dec *d, ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f,
                        const json_t *j)
{
    /* null means "the default", for every field type (no google.protobuf.Value here). */
    if (json_is_null(j))
        return 0;
    if (field_is_map(f))
        return decode_map(d, msg, f, j);
    if (f->label == PROTOBUF_C_LABEL_REPEATED)
        return decode_repeated(d, msg, f, j);

    void *dst = member_ptr(msg, f->offset);
    if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
        uint32_t *which = member_ptr(msg, f->quantifier_offset);
        if (*which != 0 && *which != f->id)
            return dec_fail_field(d, "another field of the same oneof is already set");
        int r = decode_value(d, f, j, dst);
        if (r < 0)
            return r;
        /* Set the case only now: free_unpacked looks at the member only when it is selected. */
        *which = f->id;
        return 0;
    }
    int r = decode_value(d, f, j, dst);
    if (r < 0)
        return r;
    /* proto2-style optional scalars keep a has_ flag; strings and messages are pointers. */
    if (f->label == PROTOBUF_C_LABEL_OPTIONAL && f->type != PROTOBUF_C_TYPE_STRING &&
        f->type != PROTOBUF_C_TYPE_MESSAGE)
        *(protobuf_c_boolean *) member_ptr(msg, f->quantifier_offset) = 1;
    return 0;
}

/* The field a JSON key names, by proto name first, then by JSON name. */
static const ProtobufCFieldDescriptor *find_field(const ProtobufCMessageDescriptor *desc,
                                                  const char *key)
{
    const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field_by_name(desc, key);
    if (f)
        return f;
    for (unsigned i = 0; i < desc->n_fields; i++)
        if (json_name_eq(desc->fields[i].name, key))
            return &desc->fields[i];
    return NULL;
}

static int decode_fields(struct dec *d, ProtobufCMessage *msg, const json_t *j)
{
    const ProtobufCMessageDescriptor *desc = msg->descriptor;
    if (desc->n_fields == 0)
        return 0;
    /* Which fields were given, to catch one field given under both of its names. */
    _cleanup_free_ bool *seen = calloc(desc->n_fields, sizeof(bool));
    if (!seen)
        return -ENOMEM;

    const char *key;
    json_t *v;
    json_object_foreach((json_t *) j, key, v)
    {
        const ProtobufCFieldDescriptor *f = find_field(desc, key);
        if (!f)
            continue; /* unknown fields are ignored, as connect-go does */
        size_t idx = (size_t) (f - desc->fields);
        size_t old = path_push_field(d, key);
        if (seen[idx]) {
            char other[PBJSON_PATH_MAX];
            if (streq(key, f->name) && strlen(f->name) < sizeof(other))
                other[json_name(f->name, other)] = '\0';
            else
                snprintf(other, sizeof(other), "%s", f->name);
            return dec_fail(d, "invalid value for field '%s': the same field is also given as '%s'",
                            d->path, other);
        }
        seen[idx] = true;
        int r = decode_field(d, msg, f, v);
        if (r < 0)
            return r;
        path_pop(d, old);
    }
    return 0;
}

static int decode_message(struct dec *d, const ProtobufCMessageDescriptor *desc, const json_t *j,
                          ProtobufCMessage **ret)
{
    if (!json_is_object(j))
        return dec_fail_field(d, "expected object, got %s", json_kind(j));
    /* The text was depth-checked already; this keeps the recursion bounded on its own terms. */
    if (d->depth >= PBJSON_MAX_DEPTH)
        return dec_fail_field(d, "nested deeper than %d levels", PBJSON_MAX_DEPTH);

    _cleanup_(message_freep) ProtobufCMessage *msg = NULL;
    int r = message_new(desc, &msg);
    if (r < 0)
        return r;
    d->depth++;
    r = decode_fields(d, msg, j);
    d->depth--;
    if (r < 0)
        return r;
    *ret = TAKE_PTR(msg);
    return 0;
}

int pbjson_decode(const ProtobufCMessageDescriptor *desc, const char *json, size_t len,
                  ProtobufCMessage **ret_msg, char **ret_error)
{
    struct dec d = {0};
    ProtobufCMessage *msg = NULL;
    int r;

    if (len == 0) {
        r = dec_fail(&d, "invalid JSON: empty body");
    } else if (json_too_deep(json, len)) {
        r = dec_fail(&d, "invalid JSON: nested deeper than %d levels", PBJSON_MAX_DEPTH);
    } else {
        json_error_t jerr;
        _cleanup_(json_decrefp) json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
        if (!root) {
            enum json_error_code code = json_error_code(&jerr);
            if (code == json_error_out_of_memory)
                r = -ENOMEM;
            else if (code == json_error_null_character || code == json_error_null_byte_in_key)
                r = dec_fail(&d,
                             "invalid JSON: strings must not contain NUL (\\u0000) at line "
                             "%d column %d",
                             jerr.line, jerr.column);
            else
                r = dec_fail(&d, "invalid JSON: %s at line %d column %d", jerr.text, jerr.line,
                             jerr.column);
        } else if (!json_is_object(root)) {
            r = dec_fail(&d, "invalid JSON: expected an object at the top level, got %s",
                         json_kind(root));
        } else {
            r = decode_message(&d, desc, root, &msg);
        }
    }

    if (r < 0) {
        if (ret_error)
            *ret_error = TAKE_PTR(d.error);
        free(d.error);
        return r;
    }
    *ret_msg = msg;
    return 0;
}

/* ======================================================================================== */
/* Encoding                                                                                 */
/* ======================================================================================== */

/*
 * The writer keeps the first error and turns later writes into no-ops, so the walk stays
 * readable; pbjson_encode() checks once at the end.
 */
struct writer {
    struct buf *out;
    int err;
};

static char *w_reserve(struct writer *w, size_t n)
{
    if (w->err < 0)
        return NULL;
    int r = buf_reserve(w->out, n);
    if (r < 0) {
        w->err = r;
        return NULL;
    }
    return buf_tail(w->out);
}

static void w_put(struct writer *w, const void *p, size_t n)
{
    char *t = w_reserve(w, n);
    if (t) {
        memcpy(t, p, n);
        buf_commit(w->out, n);
    }
}

static void w_str(struct writer *w, const char *s)
{
    w_put(w, s, strlen(s));
}

static void w_char(struct writer *w, char c)
{
    w_put(w, &c, 1);
}

/*
 * A JSON string. Bytes that are not valid UTF-8 (a file name can be anything) become U+FFFD,
 * as encoding/json does, so the output always parses; encoding has no error channel for them.
 */
static void w_string(struct writer *w, const char *str, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *s = (const unsigned char *) str;
    size_t start = 0, i = 0;

    w_char(w, '"');
    while (i < len) {
        unsigned char c = s[i];
        if (c >= 0x20 && c != '"' && c != '\\' && c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0x80) {
            size_t n = utf8_seq_len(s + i, len - i);
            if (n > 0) {
                i += n;
                continue;
            }
        }
        w_put(w, s + start, i - start);
        switch (c) {
        case '"':
            w_put(w, "\\\"", 2);
            break;
        case '\\':
            w_put(w, "\\\\", 2);
            break;
        case '\n':
            w_put(w, "\\n", 2);
            break;
        case '\r':
            w_put(w, "\\r", 2);
            break;
        case '\t':
            w_put(w, "\\t", 2);
            break;
        case '\b':
            w_put(w, "\\b", 2);
            break;
        case '\f':
            w_put(w, "\\f", 2);
            break;
        default:
            if (c < 0x20) {
                char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 0xf]};
                w_put(w, esc, sizeof(esc));
            } else {
                w_put(w, "\xef\xbf\xbd", 3);
            }
            break;
        }
        start = ++i;
    }
    w_put(w, s + start, i - start);
    w_char(w, '"');
}

/* "name": with the lowerCamelCase JSON name, built straight into the buffer. */
static void w_key(struct writer *w, const char *name)
{
    size_t n = strlen(name);
    char *t = w_reserve(w, n + 3);
    if (!t)
        return;
    t[0] = '"';
    size_t k = json_name(name, t + 1);
    t[k + 1] = '"';
    t[k + 2] = ':';
    buf_commit(w->out, k + 3);
}

_printf_(2, 3) static void w_fmt(struct writer *w, const char *fmt, ...)
{
    char tmp[PBJSON_NUM_MAX];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n > 0)
        w_put(w, tmp, MIN((size_t) n, sizeof(tmp) - 1));
}

/* The shortest decimal that reads back as the same float or double. */
static void w_float(struct writer *w, double x, bool single)
{
    if (isnan(x)) {
        w_str(w, "\"NaN\"");
        return;
    }
    if (isinf(x)) {
        w_str(w, x < 0 ? "\"-Infinity\"" : "\"Infinity\"");
        return;
    }
    char tmp[PBJSON_NUM_MAX];
    int max = single ? PBJSON_FLOAT_DIGITS : PBJSON_DOUBLE_DIGITS;
    for (int prec = 1; prec <= max; prec++) {
        snprintf(tmp, sizeof(tmp), "%.*g", prec, x);
        if (single ? strtof(tmp, NULL) == (float) x : strtod(tmp, NULL) == x)
            break;
    }
    w_str(w, tmp);
}

static void w_bytes(struct writer *w, const ProtobufCBinaryData *b)
{
    /* Base64 goes straight into the output buffer: no temporary copy of large payloads. */
    size_t n = BASE64_ENCODE_RAW_LENGTH(b->len);
    char *t = w_reserve(w, n + 2);
    if (!t)
        return;
    t[0] = '"';
    if (b->len > 0)
        base64_encode_raw(t + 1, b->len, b->data);
    t[n + 1] = '"';
    buf_commit(w->out, n + 2);
}

static void w_timestamp(struct writer *w, int64_t secs, int32_t nanos)
{
    /*
     * Out-of-range values can only come from our own code (say, a file with an mtime in year
     * 30000); clamping keeps the response valid where protojson would fail the whole call.
     */
    if (secs < TIMEFMT_MIN_SECONDS) {
        secs = TIMEFMT_MIN_SECONDS;
        nanos = 0;
    } else if (secs > TIMEFMT_MAX_SECONDS) {
        secs = TIMEFMT_MAX_SECONDS;
        nanos = NANOS_PER_SECOND - 1;
    }
    if (nanos < 0)
        nanos = 0;
    else if (nanos >= NANOS_PER_SECOND)
        nanos = NANOS_PER_SECOND - 1;

    int64_t days = secs / TIMEFMT_SECONDS_PER_DAY, rem = secs % TIMEFMT_SECONDS_PER_DAY;
    if (rem < 0) {
        rem += TIMEFMT_SECONDS_PER_DAY;
        days--;
    }
    int64_t y;
    unsigned m, d;
    civil_from_days(days, &y, &m, &d);

    char tmp[TIMESTAMP_JSON_MAX + 1];
    int n = snprintf(tmp, sizeof(tmp), "\"%04d-%02u-%02uT%02d:%02d:%02d", (int) y, m, d,
                     (int) (rem / 3600), (int) (rem / 60 % 60), (int) (rem % 60));
    /* 0, 3, 6 or 9 digits: the fewest that are exact, as protojson writes them. */
    if (nanos % 1000000 == 0 && nanos != 0)
        n += snprintf(tmp + n, sizeof(tmp) - (size_t) n, ".%03d", nanos / 1000000);
    else if (nanos % 1000 == 0 && nanos != 0)
        n += snprintf(tmp + n, sizeof(tmp) - (size_t) n, ".%06d", nanos / 1000);
    else if (nanos != 0)
        n += snprintf(tmp + n, sizeof(tmp) - (size_t) n, ".%09d", nanos);
    n += snprintf(tmp + n, sizeof(tmp) - (size_t) n, "Z\"");
    w_put(w, tmp, (size_t) n);
}

static void w_message(struct writer *w, const ProtobufCMessage *msg, unsigned depth);

static void w_value(struct writer *w, const ProtobufCFieldDescriptor *f, const void *v,
                    unsigned depth)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        w_fmt(w, "%" PRId32, *(const int32_t *) v);
        break;
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        w_fmt(w, "%" PRIu32, *(const uint32_t *) v);
        break;
    /* 64-bit integers are strings: JavaScript numbers lose precision beyond 2^53. */
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        w_fmt(w, "\"%" PRId64 "\"", *(const int64_t *) v);
        break;
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        w_fmt(w, "\"%" PRIu64 "\"", *(const uint64_t *) v);
        break;
    case PROTOBUF_C_TYPE_FLOAT:
        w_float(w, *(const float *) v, true);
        break;
    case PROTOBUF_C_TYPE_DOUBLE:
        w_float(w, *(const double *) v, false);
        break;
    case PROTOBUF_C_TYPE_BOOL:
        w_str(w, *(const protobuf_c_boolean *) v ? "true" : "false");
        break;
    case PROTOBUF_C_TYPE_ENUM: {
        int e = *(const int *) v;
        const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(f->descriptor, e);
        if (ev) {
            w_char(w, '"');
            w_str(w, ev->name);
            w_char(w, '"');
        } else {
            w_fmt(w, "%d", e); /* an open enum value without a name */
        }
        break;
    }
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(char *const *) v;
        w_string(w, s ? s : "", s ? strlen(s) : 0);
        break;
    }
    case PROTOBUF_C_TYPE_BYTES:
        w_bytes(w, v);
        break;
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessage *sub = *(ProtobufCMessage *const *) v;
        const ProtobufCFieldDescriptor *fs, *fn;
        if (sub)
            w_message(w, sub, depth + 1);
        else if (timestamp_fields(f->descriptor, &fs, &fn))
            w_timestamp(w, 0, 0);
        else
            w_str(w, "{}");
        break;
    }
    }
}

static void w_map_key(struct writer *w, const ProtobufCFieldDescriptor *kf, const void *v)
{
    if (kf->type == PROTOBUF_C_TYPE_STRING) {
        w_value(w, kf, v, 0);
        return;
    }
    if (kf->type == PROTOBUF_C_TYPE_BOOL) {
        w_str(w, *(const protobuf_c_boolean *) v ? "\"true\"" : "\"false\"");
        return;
    }
    bool quoted = kf->type == PROTOBUF_C_TYPE_INT64 || kf->type == PROTOBUF_C_TYPE_SINT64 ||
                  kf->type == PROTOBUF_C_TYPE_SFIXED64 || kf->type == PROTOBUF_C_TYPE_UINT64 ||
                  kf->type == PROTOBUF_C_TYPE_FIXED64;
    if (!quoted)
        w_char(w, '"');
    w_value(w, kf, v, 0);
    if (!quoted)
        w_char(w, '"');
}

static void w_repeated(struct writer *w, const ProtobufCFieldDescriptor *f, const void *arr,
                       size_t n, unsigned depth)
{
    size_t esize = element_size(f->type);
    bool map = field_is_map(f);
    w_char(w, map ? '{' : '[');
    for (size_t i = 0; i < n && w->err == 0; i++) {
        if (i > 0)
            w_char(w, ',');
        const void *elt = (const char *) arr + i * esize;
        if (!map) {
            w_value(w, f, elt, depth);
            continue;
        }
        const ProtobufCMessage *entry = *(ProtobufCMessage *const *) elt;
        const ProtobufCMessageDescriptor *ed = f->descriptor;
        if (!entry) {
            /* Not something protobuf-c would build; write the zero entry rather than crash. */
            w_str(w, "\"\":null");
            continue;
        }
        w_map_key(w, &ed->fields[0], member_ptr(entry, ed->fields[0].offset));
        w_char(w, ':');
        /* Map values are written even at their default: the key alone says they exist. */
        w_value(w, &ed->fields[1], member_ptr(entry, ed->fields[1].offset), depth + 1);
    }
    w_char(w, map ? '}' : ']');
}

static bool is_zero(const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i])
            return false;
    return true;
}

/* Whether a singular or repeated field is written at all. */
static bool field_present(const ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f)
{
    const void *v = member_ptr(msg, f->offset);
    if (f->label == PROTOBUF_C_LABEL_REPEATED)
        return *(const size_t *) member_ptr(msg, f->quantifier_offset) > 0;
    /* Oneof members, and the one-field oneofs that stand for proto3 `optional`: the case. */
    if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)
        return *(const uint32_t *) member_ptr(msg, f->quantifier_offset) == f->id;
    if (f->label == PROTOBUF_C_LABEL_REQUIRED)
        return true;
    if (f->type == PROTOBUF_C_TYPE_MESSAGE)
        return *(ProtobufCMessage *const *) v != NULL;
    if (f->label == PROTOBUF_C_LABEL_OPTIONAL) {
        if (f->type == PROTOBUF_C_TYPE_STRING) {
            const char *s = *(char *const *) v;
            return s && s != f->default_value;
        }
        return *(const protobuf_c_boolean *) member_ptr(msg, f->quantifier_offset);
    }
    /* Implicit presence: written unless at the default (all-zero bits, so -0.0 counts). */
    switch (f->type) {
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(char *const *) v;
        return s && s[0];
    }
    case PROTOBUF_C_TYPE_BYTES:
        return ((const ProtobufCBinaryData *) v)->len > 0;
    default:
        return !is_zero(v, element_size(f->type));
    }
}

static void w_message(struct writer *w, const ProtobufCMessage *msg, unsigned depth)
{
    const ProtobufCMessageDescriptor *desc = msg->descriptor;
    /*
     * None of our schemas nests this deep; a tree that does is built wrongly. Encoding has only
     * the size error to report it with, and no client could have decoded the result anyway.
     */
    if (depth > PBJSON_MAX_DEPTH) {
        if (w->err == 0)
            w->err = -E2BIG;
        return;
    }
    const ProtobufCFieldDescriptor *fs, *fn;
    if (timestamp_fields(desc, &fs, &fn)) {
        w_timestamp(w, *(const int64_t *) member_ptr(msg, fs->offset),
                    *(const int32_t *) member_ptr(msg, fn->offset));
        return;
    }

    bool first = true;
    w_char(w, '{');
    for (unsigned i = 0; i < desc->n_fields && w->err == 0; i++) {
        const ProtobufCFieldDescriptor *f = &desc->fields[i];
        if (!field_present(msg, f))
            continue;
        if (!first)
            w_char(w, ',');
        first = false;
        w_key(w, f->name);
        if (f->label == PROTOBUF_C_LABEL_REPEATED)
            w_repeated(w, f, *(void *const *) member_ptr(msg, f->offset),
                       *(const size_t *) member_ptr(msg, f->quantifier_offset), depth);
        else
            w_value(w, f, member_ptr(msg, f->offset), depth);
    }
    w_char(w, '}');
}

int pbjson_encode(const ProtobufCMessage *msg, struct buf *out)
{
    struct writer w = {.out = out, .err = 0};
    size_t start = out->len;

    w_message(&w, msg, 1);
    if (w.err < 0) {
        /* Leave the buffer as we found it rather than with half a document in it. */
        out->len = start;
        if (out->data)
            out->data[start] = '\0';
        return w.err;
    }
    return 0;
}

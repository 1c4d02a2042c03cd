/* SPDX-License-Identifier: Apache-2.0 */
#include "base/parse.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>

#include "base/macro.h"

int parse_u64_digits(const char *s, size_t len, size_t max_digits, uint64_t *ret)
{
    uint64_t v = 0;
    if (len == 0 || len > max_digits)
        return -EINVAL;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -EINVAL;
        unsigned d = (unsigned) (s[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -ERANGE;
        v = v * 10 + d;
    }
    *ret = v;
    return 0;
}

int parse_u64(const char *s, uint64_t *ret)
{
    size_t len = 0;
    while (s[len])
        len++;
    return parse_u64_digits(s, len, 20, ret);
}

int parse_u32(const char *s, uint32_t *ret)
{
    uint64_t v;
    int r = parse_u64(s, &v);
    if (r < 0)
        return r;
    if (v > UINT32_MAX)
        return -ERANGE;
    *ret = (uint32_t) v;
    return 0;
}

int parse_i64(const char *s, int64_t *ret)
{
    bool neg = s[0] == '-';
    uint64_t v;
    int r = parse_u64(neg ? s + 1 : s, &v);
    if (r < 0)
        return r;
    if (neg) {
        if (v > (uint64_t) INT64_MAX + 1)
            return -ERANGE;
        *ret = v == (uint64_t) INT64_MAX + 1 ? INT64_MIN : -(int64_t) v;
    } else {
        if (v > INT64_MAX)
            return -ERANGE;
        *ret = (int64_t) v;
    }
    return 0;
}

int parse_bool(const char *s, bool *ret)
{
    static const char *const yes[] = {"1", "true", "yes", "on"};
    static const char *const no[] = {"0", "false", "no", "off"};
    for (size_t i = 0; i < ARRAY_SIZE(yes); i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *ret = true;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *ret = false;
            return 0;
        }
    }
    return -EINVAL;
}

int parse_port(const char *s, uint16_t *ret)
{
    uint32_t v;
    int r = parse_u32(s, &v);
    if (r < 0)
        return r;
    if (v == 0 || v > 65535)
        return -ERANGE;
    *ret = (uint16_t) v;
    return 0;
}

bool parse_list_has_token(const char *value, const char *token)
{
    size_t tlen = strlen(token);
    const char *p = value;
    while (*p) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        const char *start = p;
        while (*p && *p != ',' && *p != ';')
            p++;
        const char *end = p;
        while (end > start && (end[-1] == ' ' || end[-1] == '\t'))
            end--;
        if ((size_t) (end - start) == tlen && strncasecmp(start, token, tlen) == 0)
            return true;
        while (*p && *p != ',')
            p++;
    }
    return false;
}

/* SPDX-License-Identifier: Apache-2.0 */
/* HTTP helpers with no connection state: status texts, query strings, header tokens. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base/alloc.h"
#include "base/buf.h"
#include "base/macro.h"
#include "base/parse.h"
#include "base/transport.h"
#include "http/http.h"

const char *transport_name(enum transport t)
{
    switch (t) {
    case TRANSPORT_TCP:
        return "tcp";
    case TRANSPORT_UNIX:
        return "unix";
    case TRANSPORT_VSOCK:
        return "vsock";
    }
    return "?";
}

const char *http_status_text(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 204:
        return "No Content";
    case 206:
        return "Partial Content";
    case 304:
        return "Not Modified";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 406:
        return "Not Acceptable";
    case 407:
        return "Proxy Authentication Required";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 411:
        return "Length Required";
    case 412:
        return "Precondition Failed";
    case 413:
        return "Payload Too Large";
    case 414:
        return "URI Too Long";
    case 415:
        return "Unsupported Media Type";
    case 416:
        return "Range Not Satisfiable";
    case 417:
        return "Expectation Failed";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 499:
        return "Client Closed Request";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 507:
        return "Insufficient Storage";
    default:
        return "Unknown";
    }
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Percent-decodes [s, s+len) with '+' as space (form encoding, as Go's url.ParseQuery). */
static int query_unescape(const char *s, size_t len, char **ret)
{
    char *out = xmalloc(len + 1);
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '%') {
            if (i + 2 >= len) {
                free(out);
                return -EINVAL;
            }
            int a = hexval(s[i + 1]), b = hexval(s[i + 2]);
            if (a < 0 || b < 0 || (a == 0 && b == 0)) {
                free(out);
                return -EINVAL;
            }
            out[o++] = (char) (a * 16 + b);
            i += 2;
        } else if (s[i] == '+') {
            out[o++] = ' ';
        } else {
            out[o++] = s[i];
        }
    }
    out[o] = '\0';
    *ret = out;
    return 0;
}

int http_query_get(const char *query, const char *name, char **ret_value)
{
    size_t nlen = strlen(name);
    *ret_value = NULL;
    if (!query)
        return 0;
    for (const char *p = query; *p;) {
        const char *amp = strchr(p, '&');
        size_t plen = amp ? (size_t) (amp - p) : strlen(p);
        const char *eq = memchr(p, '=', plen);
        size_t klen = eq ? (size_t) (eq - p) : plen;
        char *key;
        int r = query_unescape(p, klen, &key);
        if (r < 0)
            return r;
        bool match = strlen(key) == nlen && memcmp(key, name, nlen) == 0;
        free(key);
        if (match) {
            if (!eq)
                return query_unescape("", 0, ret_value);
            return query_unescape(eq + 1, plen - klen - 1, ret_value);
        }
        p += plen;
        if (*p == '&')
            p++;
    }
    return 0;
}

bool http_header_has_token(const char *value, const char *token)
{
    return parse_list_has_token(value, token);
}

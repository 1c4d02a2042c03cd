/* SPDX-License-Identifier: Apache-2.0 */
#include "base/path.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"

char *path_clean(const char *p)
{
    size_t n = strlen(p);
    if (n == 0)
        return xstrdup(".");
    bool rooted = p[0] == '/';
    char *out = xmalloc(n + 2);
    size_t o = 0, r = 0, dotdot = 0;
    if (rooted) {
        out[o++] = '/';
        r = 1;
        dotdot = 1;
    }
    while (r < n) {
        if (p[r] == '/') {
            r++;
        } else if (p[r] == '.' && (r + 1 == n || p[r + 1] == '/')) {
            r++;
        } else if (p[r] == '.' && p[r + 1] == '.' && (r + 2 == n || p[r + 2] == '/')) {
            r += 2;
            if (o > dotdot) {
                /* Back up over the last element. */
                o--;
                while (o > dotdot && out[o] != '/')
                    o--;
            } else if (!rooted) {
                if (o > 0)
                    out[o++] = '/';
                out[o++] = '.';
                out[o++] = '.';
                dotdot = o;
            }
        } else {
            if ((rooted && o != 1) || (!rooted && o != 0))
                out[o++] = '/';
            for (; r < n && p[r] != '/'; r++)
                out[o++] = p[r];
        }
    }
    if (o == 0)
        out[o++] = '.';
    out[o] = '\0';
    return out;
}

int path_expand(const char *p, const char *home, char **ret)
{
    char *joined;
    if (!*p)
        return -ENOENT;
    if (strlen(p) > PATH_MAX_BYTES)
        return -ENAMETOOLONG;
    if (p[0] == '~') {
        if (p[1] != '\0' && p[1] != '/')
            return -EINVAL;
        joined = xmalloc(strlen(home) + strlen(p) + 2);
        strcpy(joined, home);
        strcat(joined, "/");
        strcat(joined, p + 1);
    } else if (p[0] == '/') {
        joined = xstrdup(p);
    } else {
        joined = xmalloc(strlen(home) + strlen(p) + 2);
        strcpy(joined, home);
        strcat(joined, "/");
        strcat(joined, p);
    }
    *ret = path_clean(joined);
    free(joined);
    if (strlen(*ret) > PATH_MAX_BYTES) {
        free(*ret);
        *ret = NULL;
        return -ENAMETOOLONG;
    }
    return 0;
}

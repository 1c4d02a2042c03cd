/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Scope-based cleanup for plain resources (memory, fds, FILE*). Objects that own libuv handles
 * are never managed this way: they close asynchronously and free themselves in the last close
 * callback. TAKE_PTR/TAKE_FD hand ownership on by returning the value and resetting the variable.
 */
#pragma once

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define _cleanup_(f) __attribute__((cleanup(f)))

static inline void freep(void *p)
{
    free(*(void **) p);
}

/* Closes *fd if it is valid, keeping errno so that `return -errno` after it stays right. */
static inline int safe_close(int fd)
{
    if (fd >= 0) {
        int saved = errno;
        (void) close(fd);
        errno = saved;
    }
    return -1;
}

static inline void closep(int *fd)
{
    *fd = safe_close(*fd);
}

static inline void fclosep(FILE **f)
{
    if (*f) {
        int saved = errno;
        (void) fclose(*f);
        errno = saved;
    }
}

#define _cleanup_free_   _cleanup_(freep)
#define _cleanup_close_  _cleanup_(closep)
#define _cleanup_fclose_ _cleanup_(fclosep)

#define DEFINE_CLEANUP_FUNC(type, func) \
    static inline void func##p(type *p) \
    {                                   \
        if (*p)                         \
            func(*p);                   \
    }

#define TAKE_PTR(p)              \
    ({                           \
        __typeof__(p) _tp = (p); \
        (p) = NULL;              \
        _tp;                     \
    })

#define TAKE_FD(fd)     \
    ({                  \
        int _tf = (fd); \
        (fd) = -1;      \
        _tf;            \
    })

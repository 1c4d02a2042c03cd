/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Allocation for small internal objects. These abort on out-of-memory, as crun and h2o do:
 * sizes here never come from a client. Anything sized by a client is limit-checked first and
 * uses a fallible allocator that returns -ENOMEM.
 */
#pragma once

#include <stddef.h>

void *xmalloc(size_t n);
void *xcalloc(size_t nmemb, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
void *xmemdup(const void *p, size_t n);
_Noreturn void alloc_oom(void);

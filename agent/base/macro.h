/* SPDX-License-Identifier: Apache-2.0 */
/* Small language helpers shared by every module. No dependencies. */
#pragma once

#include <stddef.h>

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#define container_of(ptr, type, member) ((type *) ((char *) (ptr) -offsetof(type, member)))

#define _printf_(a, b) __attribute__((format(printf, a, b)))
#define _unused_       __attribute__((unused))
#define _noreturn_     __attribute__((noreturn))
#define _likely_(x)    __builtin_expect(!!(x), 1)
#define _unlikely_(x)  __builtin_expect(!!(x), 0)

#undef MIN
#undef MAX
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

/* Compares a NUL-terminated string with a literal. */
#define streq(a, b) (strcmp((a), (b)) == 0)

/* Length of a string literal, without the NUL. */
#define STRLEN(s) (sizeof(s) - 1)

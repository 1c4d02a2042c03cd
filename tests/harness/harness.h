/* SPDX-License-Identifier: Apache-2.0 */
/*
 * A small TAP test runner. Each test runs in its own forked child with an alarm() timeout
 * (TEST_TIMEOUT_S, scaled by GUESTD_TEST_TIMEOUT_MULTIPLIER). A test passes by returning,
 * fails through an ASSERT (which prints file:line, the expression and both values), and skips
 * with TEST_SKIP("why"). `prog --list` lists tests; `prog NAME…` runs only those.
 *
 *     TEST(buf_grows) { ... }
 *     TEST_MAIN()
 */
#pragma once

#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Per-test wall-clock limit before the runner kills the child. */
#define TEST_TIMEOUT_S 60

/* Exit status a test child uses to report a skip (as automake and meson expect). */
#define TEST_EXIT_SKIP 77

struct test_case {
    const char *name;
    void (*fn)(void);
};

void test_register(const char *name, void (*fn)(void));
int test_main(int argc, char **argv);
_Noreturn void test_fail(const char *file, int line, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));
_Noreturn void test_skip(const char *why);

#define TEST(name)                                                      \
    static void test_##name(void);                                      \
    __attribute__((constructor)) static void test_register_##name(void) \
    {                                                                   \
        test_register(#name, test_##name);                              \
    }                                                                   \
    static void test_##name(void)

#define TEST_MAIN()                   \
    int main(int argc, char **argv)   \
    {                                 \
        return test_main(argc, argv); \
    }

#define TEST_SKIP(why) test_skip(why)

#define ASSERT_TRUE(e)                                            \
    do {                                                          \
        if (!(e))                                                 \
            test_fail(__FILE__, __LINE__, "ASSERT_TRUE(%s)", #e); \
    } while (0)

#define ASSERT_FALSE(e)                                            \
    do {                                                           \
        if (e)                                                     \
            test_fail(__FILE__, __LINE__, "ASSERT_FALSE(%s)", #e); \
    } while (0)

#define ASSERT_EQ(a, b)                                                                     \
    do {                                                                                    \
        intmax_t _a = (intmax_t) (a), _b = (intmax_t) (b);                                  \
        if (_a != _b)                                                                       \
            test_fail(__FILE__, __LINE__, "ASSERT_EQ(%s, %s): %jd != %jd", #a, #b, _a, _b); \
    } while (0)

#define ASSERT_NE(a, b)                                                               \
    do {                                                                              \
        intmax_t _a = (intmax_t) (a), _b = (intmax_t) (b);                            \
        if (_a == _b)                                                                 \
            test_fail(__FILE__, __LINE__, "ASSERT_NE(%s, %s): both %jd", #a, #b, _a); \
    } while (0)

#define ASSERT_UEQ(a, b)                                                                     \
    do {                                                                                     \
        uintmax_t _a = (uintmax_t) (a), _b = (uintmax_t) (b);                                \
        if (_a != _b)                                                                        \
            test_fail(__FILE__, __LINE__, "ASSERT_UEQ(%s, %s): %ju != %ju", #a, #b, _a, _b); \
    } while (0)

#define ASSERT_OK(e)                                                                               \
    do {                                                                                           \
        intmax_t _r = (intmax_t) (e);                                                              \
        if (_r < 0)                                                                                \
            test_fail(__FILE__, __LINE__, "ASSERT_OK(%s): %jd (%s)", #e, _r, strerror((int) -_r)); \
    } while (0)

#define ASSERT_ERR(e, err)                                                                       \
    do {                                                                                         \
        intmax_t _r = (intmax_t) (e);                                                            \
        if (_r != -(intmax_t) (err))                                                             \
            test_fail(__FILE__, __LINE__, "ASSERT_ERR(%s, %s): got %jd, want %jd", #e, #err, _r, \
                      -(intmax_t) (err));                                                        \
    } while (0)

#define ASSERT_NULL(p)                                                    \
    do {                                                                  \
        const void *_p = (p);                                             \
        if (_p)                                                           \
            test_fail(__FILE__, __LINE__, "ASSERT_NULL(%s): %p", #p, _p); \
    } while (0)

#define ASSERT_NOT_NULL(p)                                            \
    do {                                                              \
        if (!(p))                                                     \
            test_fail(__FILE__, __LINE__, "ASSERT_NOT_NULL(%s)", #p); \
    } while (0)

#define ASSERT_STR_EQ(a, b)                                                             \
    do {                                                                                \
        const char *_a = (a), *_b = (b);                                                \
        if (!_a || !_b || strcmp(_a, _b) != 0)                                          \
            test_fail(__FILE__, __LINE__,                                               \
                      "ASSERT_STR_EQ(%s, %s):\n  got:  \"%s\"\n  want: \"%s\"", #a, #b, \
                      _a ? _a : "(null)", _b ? _b : "(null)");                          \
    } while (0)

#define ASSERT_MEM_EQ(a, b, n)                                                               \
    do {                                                                                     \
        size_t _n = (n);                                                                     \
        if (memcmp((a), (b), _n) != 0)                                                       \
            test_fail(__FILE__, __LINE__, "ASSERT_MEM_EQ(%s, %s, %zu): differ", #a, #b, _n); \
    } while (0)

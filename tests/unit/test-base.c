/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The pure helpers under agent/base (buf, parse, kv, users, log), the access token (sec/token),
 * the clock decisions (sys/clock; clock_step_to is never called) and the connection-free HTTP
 * helpers (http/util.c).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <nettle/base64.h>
#include <nettle/sha2.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "base/buf.h"
#include "base/kv.h"
#include "base/log.h"
#include "base/parse.h"
#include "base/users.h"
#include "harness.h"
#include "http/http.h"
#include "sec/token.h"
#include "sys/clock.h"

/* ---- helpers ---- */

/* Provided by the ASan/LSan runtime in sanitizer builds; NULL otherwise. */
extern int __lsan_do_recoverable_leak_check(void) __attribute__((weak));

/* Test children end with _exit(), which skips LeakSanitizer's exit-time check: run it here. */
static void assert_no_leaks(void)
{
    if (__lsan_do_recoverable_leak_check && __lsan_do_recoverable_leak_check() != 0)
        test_fail(__FILE__, __LINE__, "LeakSanitizer found leaks (see above)");
}

static void write_file(const char *path, const char *text, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    ASSERT_OK(fd);
    size_t len = strlen(text);
    ASSERT_EQ(write(fd, text, len), (ssize_t) len);
    ASSERT_OK(fchmod(fd, mode));
    ASSERT_OK(close(fd));
}

static char *make_tmpdir(void)
{
    char tmpl[] = "/tmp/guestd-test-base-XXXXXX";
    ASSERT_NOT_NULL(mkdtemp(tmpl));
    return strdup(tmpl);
}

static void rm_rf(const char *dir)
{
    char cmd[PATH_MAX + 16];
    (void) snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    (void) !system(cmd);
}

/* ---- buf ---- */

TEST(buf_empty_and_steal)
{
    struct buf b;
    buf_init(&b, 100);
    ASSERT_NULL(b.data);
    ASSERT_UEQ(b.len, 0);
    size_t len = 99;
    char *s = buf_steal(&b, &len);
    ASSERT_NOT_NULL(s);
    ASSERT_STR_EQ(s, "");
    ASSERT_UEQ(len, 0);
    free(s);
    buf_free(&b);
    assert_no_leaks();
}

TEST(buf_growth_keeps_content)
{
    struct buf b;
    buf_init(&b, 1 << 20);
    for (int i = 0; i < 10000; i++)
        ASSERT_OK(buf_append_char(&b, (char) ('a' + i % 26)));
    ASSERT_UEQ(b.len, 10000);
    ASSERT_TRUE(b.cap >= b.len);
    ASSERT_EQ(b.data[b.len], '\0');
    for (int i = 0; i < 10000; i++)
        ASSERT_EQ(b.data[i], 'a' + i % 26);
    ASSERT_OK(buf_append(&b, "", 0));
    ASSERT_UEQ(b.len, 10000);
    buf_free(&b);
    ASSERT_NULL(b.data);
    ASSERT_UEQ(b.len, 0);
    /* usable again after buf_free */
    ASSERT_OK(buf_append_str(&b, "again"));
    ASSERT_STR_EQ(b.data, "again");
    buf_free(&b);
    assert_no_leaks();
}

TEST(buf_cap_e2big_leaves_buffer_unchanged)
{
    struct buf b;
    buf_init(&b, 8);
    ASSERT_OK(buf_append_str(&b, "12345"));
    ASSERT_ERR(buf_append_str(&b, "6789"), E2BIG);
    ASSERT_UEQ(b.len, 5);
    ASSERT_STR_EQ(b.data, "12345");
    ASSERT_ERR(buf_printf(&b, "%s", "abcd"), E2BIG);
    ASSERT_STR_EQ(b.data, "12345");
    ASSERT_ERR(buf_reserve(&b, SIZE_MAX), E2BIG);
    ASSERT_ERR(buf_reserve(&b, SIZE_MAX - 2), E2BIG);
    ASSERT_STR_EQ(b.data, "12345");
    /* exactly up to the cap is fine */
    ASSERT_OK(buf_append_str(&b, "678"));
    ASSERT_UEQ(b.len, 8);
    ASSERT_STR_EQ(b.data, "12345678");
    ASSERT_ERR(buf_append_char(&b, 'x'), E2BIG);
    ASSERT_OK(buf_append(&b, "", 0));
    ASSERT_STR_EQ(b.data, "12345678");
    buf_free(&b);

    /* a zero cap accepts nothing but empty appends */
    buf_init(&b, 0);
    ASSERT_ERR(buf_append_char(&b, 'x'), E2BIG);
    ASSERT_NULL(b.data);
    buf_free(&b);
    assert_no_leaks();
}

TEST(buf_reserve_tail_commit)
{
    struct buf b;
    buf_init(&b, 64);
    ASSERT_OK(buf_append_str(&b, "ab"));
    ASSERT_OK(buf_reserve(&b, 10));
    memcpy(buf_tail(&b), "cdef", 4);
    buf_commit(&b, 4);
    ASSERT_UEQ(b.len, 6);
    ASSERT_STR_EQ(b.data, "abcdef");
    buf_free(&b);
    assert_no_leaks();
}

TEST(buf_printf_appends)
{
    struct buf b;
    buf_init(&b, 1024);
    ASSERT_OK(buf_printf(&b, "%d-%s", 42, "x"));
    ASSERT_OK(buf_printf(&b, "|%05u|", 7u));
    ASSERT_OK(buf_printf(&b, "%s", ""));
    ASSERT_STR_EQ(b.data, "42-x|00007|");
    ASSERT_UEQ(b.len, strlen("42-x|00007|"));
    /* longer than the first allocation */
    char big[600];
    memset(big, 'z', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    ASSERT_OK(buf_printf(&b, "<%s>", big));
    ASSERT_UEQ(b.len, 11 + 2 + 599);
    ASSERT_EQ(b.data[11], '<');
    ASSERT_EQ(b.data[b.len - 1], '>');
    ASSERT_EQ(b.data[b.len], '\0');
    buf_free(&b);
    assert_no_leaks();
}

TEST(buf_consume_and_reset)
{
    struct buf b;
    buf_init(&b, 64);
    ASSERT_OK(buf_append_str(&b, "hello world"));
    buf_consume(&b, 0);
    ASSERT_STR_EQ(b.data, "hello world");
    buf_consume(&b, 6);
    ASSERT_UEQ(b.len, 5);
    ASSERT_STR_EQ(b.data, "world");
    buf_consume(&b, 100);
    ASSERT_UEQ(b.len, 0);
    ASSERT_STR_EQ(b.data, "");
    ASSERT_OK(buf_append_str(&b, "xyz"));
    buf_consume(&b, 3);
    ASSERT_UEQ(b.len, 0);
    ASSERT_STR_EQ(b.data, "");
    ASSERT_OK(buf_append_str(&b, "keep"));
    size_t cap = b.cap;
    buf_reset(&b);
    ASSERT_UEQ(b.len, 0);
    ASSERT_UEQ(b.cap, cap);
    ASSERT_STR_EQ(b.data, "");
    buf_free(&b);
    assert_no_leaks();
}

TEST(buf_steal_hands_over)
{
    struct buf b;
    buf_init(&b, 64);
    ASSERT_OK(buf_append(&b, "a\0b", 3));
    size_t len = 0;
    char *s = buf_steal(&b, &len);
    ASSERT_UEQ(len, 3);
    ASSERT_MEM_EQ(s, "a\0b", 4);
    ASSERT_NULL(b.data);
    ASSERT_UEQ(b.len, 0);
    ASSERT_UEQ(b.cap, 0);
    free(s);
    /* the buffer is reusable and keeps its limit */
    ASSERT_OK(buf_append_str(&b, "next"));
    s = buf_steal(&b, NULL);
    ASSERT_STR_EQ(s, "next");
    free(s);
    assert_no_leaks();
}

/* ---- parse ---- */

TEST(parse_u64_values)
{
    uint64_t v = 7;
    ASSERT_OK(parse_u64("0", &v));
    ASSERT_UEQ(v, 0);
    ASSERT_OK(parse_u64("000123", &v));
    ASSERT_UEQ(v, 123);
    ASSERT_OK(parse_u64("18446744073709551615", &v));
    ASSERT_UEQ(v, UINT64_MAX);
    v = 7;
    ASSERT_ERR(parse_u64("18446744073709551616", &v), ERANGE);
    ASSERT_ERR(parse_u64("99999999999999999999", &v), ERANGE);
    ASSERT_UEQ(v, 7); /* never written on failure */
    ASSERT_ERR(parse_u64("", &v), EINVAL);
    ASSERT_ERR(parse_u64("-1", &v), EINVAL);
    ASSERT_ERR(parse_u64("+1", &v), EINVAL);
    ASSERT_ERR(parse_u64(" 1", &v), EINVAL);
    ASSERT_ERR(parse_u64("1 ", &v), EINVAL);
    ASSERT_ERR(parse_u64("12a", &v), EINVAL);
    ASSERT_ERR(parse_u64("0x10", &v), EINVAL);
    ASSERT_ERR(parse_u64("1.0", &v), EINVAL);
    ASSERT_ERR(parse_u64("1e3", &v), EINVAL);
    /* more than 20 digits is not a u64 even with leading zeros */
    ASSERT_NE(parse_u64("000000000000000000001", &v), 0);
    ASSERT_UEQ(v, 7);
}

TEST(parse_u32_values)
{
    uint32_t v = 7;
    ASSERT_OK(parse_u32("4294967295", &v));
    ASSERT_UEQ(v, UINT32_MAX);
    ASSERT_OK(parse_u32("0", &v));
    ASSERT_UEQ(v, 0);
    v = 7;
    ASSERT_ERR(parse_u32("4294967296", &v), ERANGE);
    ASSERT_ERR(parse_u32("18446744073709551615", &v), ERANGE);
    ASSERT_ERR(parse_u32("18446744073709551616", &v), ERANGE);
    ASSERT_ERR(parse_u32("-0", &v), EINVAL);
    ASSERT_ERR(parse_u32("", &v), EINVAL);
    ASSERT_ERR(parse_u32("5x", &v), EINVAL);
    ASSERT_UEQ(v, 7);
}

TEST(parse_i64_values)
{
    int64_t v = 7;
    ASSERT_OK(parse_i64("0", &v));
    ASSERT_EQ(v, 0);
    ASSERT_OK(parse_i64("-0", &v));
    ASSERT_EQ(v, 0);
    ASSERT_OK(parse_i64("-42", &v));
    ASSERT_EQ(v, -42);
    ASSERT_OK(parse_i64("9223372036854775807", &v));
    ASSERT_EQ(v, INT64_MAX);
    ASSERT_OK(parse_i64("-9223372036854775808", &v));
    ASSERT_EQ(v, INT64_MIN);
    v = 7;
    ASSERT_ERR(parse_i64("9223372036854775808", &v), ERANGE);
    ASSERT_ERR(parse_i64("-9223372036854775809", &v), ERANGE);
    ASSERT_ERR(parse_i64("-18446744073709551616", &v), ERANGE);
    ASSERT_ERR(parse_i64("", &v), EINVAL);
    ASSERT_ERR(parse_i64("-", &v), EINVAL);
    ASSERT_ERR(parse_i64("--1", &v), EINVAL);
    ASSERT_ERR(parse_i64("+1", &v), EINVAL);
    ASSERT_ERR(parse_i64("-+1", &v), EINVAL);
    ASSERT_ERR(parse_i64("1-", &v), EINVAL);
    ASSERT_ERR(parse_i64("- 1", &v), EINVAL);
    ASSERT_EQ(v, 7);
}

TEST(parse_u64_digits_limits)
{
    uint64_t v = 7;
    ASSERT_OK(parse_u64_digits("1234567890", 10, 10, &v));
    ASSERT_UEQ(v, 1234567890);
    ASSERT_OK(parse_u64_digits("9999999999", 10, 10, &v));
    ASSERT_UEQ(v, 9999999999ULL);
    /* only `len` bytes are looked at */
    ASSERT_OK(parse_u64_digits("12345xyz", 5, 10, &v));
    ASSERT_UEQ(v, 12345);
    v = 7;
    ASSERT_ERR(parse_u64_digits("12345678901", 11, 10, &v), EINVAL);
    ASSERT_ERR(parse_u64_digits("00000000001", 11, 10, &v), EINVAL);
    ASSERT_ERR(parse_u64_digits("", 0, 10, &v), EINVAL);
    ASSERT_ERR(parse_u64_digits("1", 1, 0, &v), EINVAL);
    ASSERT_ERR(parse_u64_digits("1a", 2, 10, &v), EINVAL);
    ASSERT_ERR(parse_u64_digits("1\0"
                                "2",
                                3, 10, &v),
               EINVAL);
    ASSERT_ERR(parse_u64_digits("99999999999999999999", 20, 30, &v), ERANGE);
    ASSERT_UEQ(v, 7);
}

TEST(parse_bool_spellings)
{
    static const char *const yes[] = {"1", "true", "TRUE", "True", "yes", "YES", "on", "On"};
    static const char *const no[] = {"0", "false", "FALSE", "False", "no", "NO", "off", "OFF"};
    static const char *const bad[] = {"",      "2",     "t",     "f",   "y",  "n",
                                      "truee", " true", "true ", "onn", "-1", "01"};
    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
        bool b = false;
        ASSERT_OK(parse_bool(yes[i], &b));
        ASSERT_TRUE(b);
    }
    for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++) {
        bool b = true;
        ASSERT_OK(parse_bool(no[i], &b));
        ASSERT_FALSE(b);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        bool b = true;
        if (parse_bool(bad[i], &b) != -EINVAL)
            test_fail(__FILE__, __LINE__, "parse_bool(\"%s\") accepted", bad[i]);
        ASSERT_TRUE(b);
    }
}

TEST(parse_port_range)
{
    uint16_t p = 7;
    ASSERT_OK(parse_port("1", &p));
    ASSERT_UEQ(p, 1);
    ASSERT_OK(parse_port("49983", &p));
    ASSERT_UEQ(p, 49983);
    ASSERT_OK(parse_port("65535", &p));
    ASSERT_UEQ(p, 65535);
    p = 7;
    ASSERT_ERR(parse_port("0", &p), ERANGE);
    ASSERT_ERR(parse_port("65536", &p), ERANGE);
    ASSERT_ERR(parse_port("4294967296", &p), ERANGE);
    ASSERT_ERR(parse_port("", &p), EINVAL);
    ASSERT_ERR(parse_port("-1", &p), EINVAL);
    ASSERT_ERR(parse_port("80 ", &p), EINVAL);
    ASSERT_ERR(parse_port("http", &p), EINVAL);
    ASSERT_UEQ(p, 7);
}

/* ---- kv ---- */

TEST(kv_sorted_set_get_del)
{
    struct kv m;
    kv_init(&m);
    ASSERT_NULL(kv_get(&m, "A"));
    ASSERT_EQ(kv_del(&m, "A"), 0);
    static const char *const keys[] = {"PATH", "HOME", "ZED", "A", "E2B_SANDBOX", "a", "M"};
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        kv_set(&m, keys[i], keys[i]);
    ASSERT_UEQ(m.n, 7);
    for (size_t i = 1; i < m.n; i++)
        if (strcmp(m.items[i - 1].key, m.items[i].key) >= 0)
            test_fail(__FILE__, __LINE__, "not sorted at %zu: %s >= %s", i, m.items[i - 1].key,
                      m.items[i].key);
    ASSERT_STR_EQ(m.items[0].key, "A");
    ASSERT_STR_EQ(m.items[m.n - 1].key, "a");
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        ASSERT_STR_EQ(kv_get(&m, keys[i]), keys[i]);
    ASSERT_NULL(kv_get(&m, "path"));
    ASSERT_NULL(kv_get(&m, ""));

    /* replace keeps one entry */
    kv_set(&m, "HOME", "/root");
    kv_set(&m, "HOME", "/home/user");
    ASSERT_UEQ(m.n, 7);
    ASSERT_STR_EQ(kv_get(&m, "HOME"), "/home/user");
    /* an empty value is a value */
    kv_set(&m, "EMPTY", "");
    ASSERT_STR_EQ(kv_get(&m, "EMPTY"), "");

    ASSERT_EQ(kv_del(&m, "ZED"), 1);
    ASSERT_EQ(kv_del(&m, "ZED"), 0);
    ASSERT_EQ(kv_del(&m, "A"), 1); /* first */
    ASSERT_EQ(kv_del(&m, "a"), 1); /* last */
    ASSERT_NULL(kv_get(&m, "ZED"));
    ASSERT_NULL(kv_get(&m, "A"));
    ASSERT_STR_EQ(kv_get(&m, "PATH"), "PATH");
    ASSERT_STR_EQ(kv_get(&m, "M"), "M");
    ASSERT_UEQ(m.n, 5);
    for (size_t i = 1; i < m.n; i++)
        ASSERT_TRUE(strcmp(m.items[i - 1].key, m.items[i].key) < 0);
    kv_clear(&m);
    ASSERT_UEQ(m.n, 0);
    ASSERT_NULL(kv_get(&m, "PATH"));
    /* reusable after clear */
    kv_set(&m, "X", "1");
    ASSERT_STR_EQ(kv_get(&m, "X"), "1");
    kv_clear(&m);
    assert_no_leaks();
}

TEST(kv_many_keys)
{
    struct kv m;
    char k[32], v[32];
    kv_init(&m);
    /* insert in a scrambled order, past the first growth */
    for (unsigned i = 0; i < 1000; i++) {
        unsigned x = (i * 7919u) % 1000u;
        (void) snprintf(k, sizeof(k), "K%04u", x);
        (void) snprintf(v, sizeof(v), "v%u", x);
        kv_set(&m, k, v);
    }
    ASSERT_UEQ(m.n, 1000);
    for (unsigned i = 0; i < 1000; i++) {
        (void) snprintf(k, sizeof(k), "K%04u", i);
        (void) snprintf(v, sizeof(v), "v%u", i);
        ASSERT_STR_EQ(m.items[i].key, k);
        ASSERT_STR_EQ(kv_get(&m, k), v);
    }
    for (unsigned i = 0; i < 1000; i += 2) {
        (void) snprintf(k, sizeof(k), "K%04u", i);
        ASSERT_EQ(kv_del(&m, k), 1);
    }
    ASSERT_UEQ(m.n, 500);
    for (unsigned i = 0; i < 1000; i++) {
        (void) snprintf(k, sizeof(k), "K%04u", i);
        if (i % 2)
            ASSERT_NOT_NULL(kv_get(&m, k));
        else
            ASSERT_NULL(kv_get(&m, k));
    }
    kv_clear(&m);
    assert_no_leaks();
}

/* ---- users ---- */

static const char passwd_fixture[] = "root:x:0:0:root:/root:/bin/bash\n"
                                     "# a comment line\n"
                                     "this line is malformed\n"
                                     "bad:x:notanumber:5::/nowhere:/bin/sh\n"
                                     "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
                                     "user:x:1000:1000:User,,,:/home/user:/bin/bash\n"
                                     "nohome:x:1001:1001:::\n"
                                     "user2:x:1002:1002::/home/user2:/bin/zsh\n"
                                     "shadowed:x:1000:1000::/elsewhere:/bin/sh\n";

static const char group_fixture[] = "root:x:0:\n"
                                    "users:x:100:user,other\n"
                                    "broken line\n"
                                    "wheel:x:10:other,user\n"
                                    "user:x:1000:\n"
                                    "lookalike:x:2000:user2,xuser,use,users\n"
                                    "docker:x:999:user\n"
                                    "dupgid:x:100:user\n"
                                    "primary-again:x:1000:user\n"
                                    "badgid:x:abc:user\n"
                                    "last:x:3000:a,b,user\n";

static char *make_users_root(void)
{
    char *root = make_tmpdir();
    char path[PATH_MAX];
    (void) snprintf(path, sizeof(path), "%s/etc", root);
    ASSERT_OK(mkdir(path, 0755));
    (void) snprintf(path, sizeof(path), "%s/etc/passwd", root);
    write_file(path, passwd_fixture, 0644);
    (void) snprintf(path, sizeof(path), "%s/etc/group", root);
    write_file(path, group_fixture, 0644);
    users_set_root(root);
    return root;
}

TEST(users_lookup_by_name)
{
    char *root = make_users_root();
    struct user_info u;
    ASSERT_OK(users_by_name("user", &u));
    ASSERT_UEQ(u.uid, 1000);
    ASSERT_UEQ(u.gid, 1000);
    ASSERT_STR_EQ(u.name, "user");
    ASSERT_STR_EQ(u.home, "/home/user");
    ASSERT_STR_EQ(u.shell, "/bin/bash");
    user_info_done(&u);
    ASSERT_NULL(u.name);

    ASSERT_OK(users_by_name("root", &u));
    ASSERT_UEQ(u.uid, 0);
    ASSERT_STR_EQ(u.home, "/root");
    user_info_done(&u);

    /* lines after malformed ones are still found */
    ASSERT_OK(users_by_name("daemon", &u));
    ASSERT_UEQ(u.uid, 1);
    ASSERT_STR_EQ(u.shell, "/usr/sbin/nologin");
    user_info_done(&u);

    ASSERT_OK(users_by_name("user2", &u));
    ASSERT_UEQ(u.uid, 1002);
    ASSERT_STR_EQ(u.shell, "/bin/zsh");
    user_info_done(&u);
    rm_rf(root);
    free(root);
    assert_no_leaks();
}

TEST(users_empty_home_and_shell_defaults)
{
    char *root = make_users_root();
    struct user_info u;
    ASSERT_OK(users_by_name("nohome", &u));
    ASSERT_UEQ(u.uid, 1001);
    ASSERT_STR_EQ(u.home, "/");
    ASSERT_STR_EQ(u.shell, "/bin/sh");
    user_info_done(&u);
    rm_rf(root);
    free(root);
    assert_no_leaks();
}

TEST(users_lookup_by_uid)
{
    char *root = make_users_root();
    struct user_info u;
    /* the first entry with the uid wins */
    ASSERT_OK(users_by_uid(1000, &u));
    ASSERT_STR_EQ(u.name, "user");
    ASSERT_STR_EQ(u.home, "/home/user");
    user_info_done(&u);
    ASSERT_OK(users_by_uid(0, &u));
    ASSERT_STR_EQ(u.name, "root");
    user_info_done(&u);
    ASSERT_ERR(users_by_uid(4242, &u), ENOENT);
    rm_rf(root);
    free(root);
    assert_no_leaks();
}

TEST(users_missing_and_malformed)
{
    char *root = make_users_root();
    struct user_info u;
    ASSERT_ERR(users_by_name("nobody-here", &u), ENOENT);
    ASSERT_ERR(users_by_name("", &u), ENOENT);
    ASSERT_ERR(users_by_name("user:x", &u), ENOENT);
    ASSERT_ERR(users_by_name("user\n", &u), ENOENT);
    ASSERT_ERR(users_by_name("use", &u), ENOENT);
    ASSERT_ERR(users_by_name("bad", &u), ENOENT); /* its uid does not parse */
    ASSERT_ERR(users_by_name("this line is malformed", &u), ENOENT);
    ASSERT_ERR(users_by_name("# a comment line", &u), ENOENT);

    /* a root without etc/passwd */
    char *empty = make_tmpdir();
    users_set_root(empty);
    ASSERT_ERR(users_by_name("root", &u), ENOENT);
    ASSERT_ERR(users_by_uid(0, &u), ENOENT);
    rm_rf(empty);
    free(empty);
    rm_rf(root);
    free(root);
    assert_no_leaks();
}

TEST(users_supplementary_groups)
{
    char *root = make_users_root();
    gid_t gids[USERS_MAX_GROUPS];
    /* primary first, then file order, each gid once; "lookalike" lists only similar names */
    int n = users_groups("user", 1000, gids, USERS_MAX_GROUPS);
    ASSERT_EQ(n, 5);
    ASSERT_UEQ(gids[0], 1000);
    ASSERT_UEQ(gids[1], 100);
    ASSERT_UEQ(gids[2], 10);
    ASSERT_UEQ(gids[3], 999);
    ASSERT_UEQ(gids[4], 3000);

    /* a primary group not in the file still comes first */
    n = users_groups("user", 5555, gids, USERS_MAX_GROUPS);
    ASSERT_EQ(n, 6);
    ASSERT_UEQ(gids[0], 5555);
    ASSERT_UEQ(gids[1], 100);
    ASSERT_UEQ(gids[2], 10);
    ASSERT_UEQ(gids[3], 999);
    ASSERT_UEQ(gids[4], 1000);
    ASSERT_UEQ(gids[5], 3000);

    /* the primary listed again as a membership is not repeated */
    n = users_groups("user2", 2000, gids, USERS_MAX_GROUPS);
    ASSERT_EQ(n, 1);
    ASSERT_UEQ(gids[0], 2000);

    n = users_groups("root", 0, gids, USERS_MAX_GROUPS);
    ASSERT_EQ(n, 1);
    ASSERT_UEQ(gids[0], 0);

    ASSERT_ERR(users_groups("user", 1000, gids, 2), E2BIG);
    ASSERT_EQ(users_groups("user", 1000, gids, 5), 5);
    ASSERT_ERR(users_groups("user", 1000, gids, 0), E2BIG);
    rm_rf(root);
    free(root);
    assert_no_leaks();
}

TEST(users_groups_without_group_file)
{
    char *root = make_users_root();
    char path[PATH_MAX];
    (void) snprintf(path, sizeof(path), "%s/etc/group", root);
    ASSERT_OK(unlink(path));
    gid_t gids[4];
    ASSERT_EQ(users_groups("user", 1000, gids, 4), 1);
    ASSERT_UEQ(gids[0], 1000);
    char name[32];
    users_group_name(1000, name, sizeof(name));
    ASSERT_STR_EQ(name, "1000");
    rm_rf(root);
    free(root);
    assert_no_leaks();
}

TEST(users_names_fall_back_to_decimal)
{
    char *root = make_users_root();
    char name[64];
    users_group_name(10, name, sizeof(name));
    ASSERT_STR_EQ(name, "wheel");
    users_group_name(100, name, sizeof(name)); /* the first group with the gid */
    ASSERT_STR_EQ(name, "users");
    users_group_name(3000, name, sizeof(name)); /* after malformed lines */
    ASSERT_STR_EQ(name, "last");
    users_group_name(4242, name, sizeof(name));
    ASSERT_STR_EQ(name, "4242");
    users_group_name(4294967294u, name, sizeof(name));
    ASSERT_STR_EQ(name, "4294967294");
    users_user_name(1002, name, sizeof(name));
    ASSERT_STR_EQ(name, "user2");
    users_user_name(4242, name, sizeof(name));
    ASSERT_STR_EQ(name, "4242");
    /* truncation stays NUL-terminated */
    char small[4];
    users_group_name(10, small, sizeof(small));
    ASSERT_STR_EQ(small, "whe");
    rm_rf(root);
    free(root);
    assert_no_leaks();
}

/* ---- log ---- */

TEST(log_level_parsing)
{
    enum log_level l = LOG_LVL_INFO;
    ASSERT_OK(log_level_from_string("error", &l));
    ASSERT_EQ(l, LOG_LVL_ERROR);
    ASSERT_OK(log_level_from_string("warn", &l));
    ASSERT_EQ(l, LOG_LVL_WARN);
    ASSERT_OK(log_level_from_string("warning", &l));
    ASSERT_EQ(l, LOG_LVL_WARN);
    ASSERT_OK(log_level_from_string("info", &l));
    ASSERT_EQ(l, LOG_LVL_INFO);
    ASSERT_OK(log_level_from_string("debug", &l));
    ASSERT_EQ(l, LOG_LVL_DEBUG);
    l = LOG_LVL_WARN;
    ASSERT_ERR(log_level_from_string("", &l), EINVAL);
    ASSERT_ERR(log_level_from_string("trace", &l), EINVAL);
    ASSERT_ERR(log_level_from_string("verbose", &l), EINVAL);
    ASSERT_ERR(log_level_from_string("info ", &l), EINVAL);
    ASSERT_ERR(log_level_from_string("3", &l), EINVAL);
    ASSERT_EQ(l, LOG_LVL_WARN);

    enum log_format f = LOG_FORMAT_TEXT;
    ASSERT_OK(log_format_from_string("json", &f));
    ASSERT_EQ(f, LOG_FORMAT_JSON);
    ASSERT_OK(log_format_from_string("text", &f));
    ASSERT_EQ(f, LOG_FORMAT_TEXT);
    ASSERT_ERR(log_format_from_string("xml", &f), EINVAL);
    ASSERT_ERR(log_format_from_string("", &f), EINVAL);

    log_setup(LOG_LVL_DEBUG, LOG_FORMAT_TEXT);
    ASSERT_EQ(log_get_level(), LOG_LVL_DEBUG);
    log_setup(LOG_LVL_ERROR, LOG_FORMAT_JSON);
    ASSERT_EQ(log_get_level(), LOG_LVL_ERROR);
}

/* ---- token ---- */

/* envd's signature, computed here independently of token.c. */
static void expected_signature(const char *path, const char *op, const char *user,
                               const char *token, const char *exp, char out[64])
{
    char raw[2048];
    if (exp)
        (void) snprintf(raw, sizeof(raw), "%s:%s:%s:%s:%s", path, op, user, token, exp);
    else
        (void) snprintf(raw, sizeof(raw), "%s:%s:%s:%s", path, op, user, token);
    struct sha256_ctx ctx;
    uint8_t d[SHA256_DIGEST_SIZE];
    sha256_init(&ctx);
    sha256_update(&ctx, strlen(raw), (const uint8_t *) raw);
    sha256_digest(&ctx, sizeof(d), d);
    char b64[BASE64_ENCODE_RAW_LENGTH(SHA256_DIGEST_SIZE) + 1];
    base64_encode_raw(b64, sizeof(d), d);
    size_t n = BASE64_ENCODE_RAW_LENGTH(SHA256_DIGEST_SIZE);
    while (n > 0 && b64[n - 1] == '=')
        n--;
    b64[n] = '\0';
    (void) snprintf(out, 64, "v1_%s", b64);
}

TEST(token_set_match_clear)
{
    (void) token_init(); /* mlock may fail without privileges; the page is usable anyway */
    ASSERT_FALSE(token_is_set());
    ASSERT_FALSE(token_matches("", 0));
    ASSERT_FALSE(token_matches("abc", 3));
    ASSERT_OK(token_set("abc", 3));
    ASSERT_TRUE(token_is_set());
    ASSERT_TRUE(token_matches("abc", 3));
    ASSERT_FALSE(token_matches("abd", 3));
    ASSERT_FALSE(token_matches("ab", 2));
    ASSERT_FALSE(token_matches("abcd", 4));
    ASSERT_FALSE(token_matches("ABC", 3));
    ASSERT_FALSE(token_matches("", 0));
    /* only `len` bytes of the candidate count */
    ASSERT_TRUE(token_matches("abcdef", 3));
    /* replacing */
    ASSERT_OK(token_set("second-token", 12));
    ASSERT_FALSE(token_matches("abc", 3));
    ASSERT_TRUE(token_matches("second-token", 12));
    token_clear();
    ASSERT_FALSE(token_is_set());
    ASSERT_FALSE(token_matches("second-token", 12));
    ASSERT_FALSE(token_matches("", 0));
}

TEST(token_rejects_bad_tokens)
{
    char big[LIMIT_TOKEN_BYTES + 2];
    memset(big, 'k', sizeof(big));
    ASSERT_ERR(token_set("", 0), EINVAL);
    ASSERT_ERR(token_set("a\nb", 3), EINVAL);
    ASSERT_ERR(token_set("a\rb", 3), EINVAL);
    ASSERT_ERR(token_set("a\tb", 3), EINVAL);
    ASSERT_ERR(token_set("a\0b", 3), EINVAL);
    ASSERT_ERR(token_set("ab\x7f", 3), EINVAL);
    ASSERT_ERR(token_set("\x1b[0m", 4), EINVAL);
    ASSERT_ERR(token_set(big, LIMIT_TOKEN_BYTES + 1), E2BIG);
    ASSERT_FALSE(token_is_set());
    ASSERT_OK(token_set(big, LIMIT_TOKEN_BYTES));
    ASSERT_TRUE(token_matches(big, LIMIT_TOKEN_BYTES));
    /* a rejected token leaves the current one in place (never fails open) */
    ASSERT_ERR(token_set("x\ny", 3), EINVAL);
    ASSERT_ERR(token_set(big, LIMIT_TOKEN_BYTES + 1), E2BIG);
    ASSERT_ERR(token_set("", 0), EINVAL);
    ASSERT_TRUE(token_is_set());
    ASSERT_TRUE(token_matches(big, LIMIT_TOKEN_BYTES));
    /* UTF-8 and punctuation are fine */
    static const char utf8[] = "p\xc3\xa4ss w=rd!";
    ASSERT_OK(token_set(utf8, strlen(utf8)));
    ASSERT_TRUE(token_matches(utf8, strlen(utf8)));
    token_clear();
}

TEST(token_signature_matches_envd)
{
    char sig[TOKEN_SIGNATURE_LEN + 1];
    char want[64];
    token_clear();
    ASSERT_ERR(token_signature("/a", "read", "user", NULL, sig), ENOKEY);

    ASSERT_OK(token_set("s3cr3t-token", 12));
    /* vectors computed with Python's hashlib and base64 */
    ASSERT_OK(token_signature("/home/user/file.txt", "read", "user", NULL, sig));
    ASSERT_STR_EQ(sig, "v1_IuJKAYG9SNks4e83OkE5YxnFmNuC85V7you14ziVOgo");
    ASSERT_UEQ(strlen(sig), TOKEN_SIGNATURE_LEN);
    ASSERT_OK(token_signature("/home/user/file.txt", "write", "", "1767225600", sig));
    ASSERT_STR_EQ(sig, "v1_5PW96jQA04CezWuXozJogDBLxvKyoEh01dsVyMfmIaI");

    /* and with nettle, over a few shapes */
    static const struct {
        const char *path, *op, *user, *exp;
    } cases[] = {
            {"/home/user/file.txt", "read", "user", NULL},
            {"/home/user/file.txt", "read", "user", "1700000000"},
            {"relative/p a t h", "write", "root", NULL},
            {"", "read", "", NULL},
            {"/x:y", "write", "u:v", "0"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ASSERT_OK(token_signature(cases[i].path, cases[i].op, cases[i].user, cases[i].exp, sig));
        expected_signature(cases[i].path, cases[i].op, cases[i].user, "s3cr3t-token", cases[i].exp,
                           want);
        ASSERT_STR_EQ(sig, want);
        ASSERT_UEQ(strlen(sig), TOKEN_SIGNATURE_LEN);
        ASSERT_NULL(strchr(sig, '='));
    }
    /* a different token gives a different signature */
    ASSERT_OK(token_set("other", 5));
    ASSERT_OK(token_signature("/home/user/file.txt", "read", "user", NULL, sig));
    ASSERT_TRUE(strcmp(sig, "v1_IuJKAYG9SNks4e83OkE5YxnFmNuC85V7you14ziVOgo") != 0);
    expected_signature("/home/user/file.txt", "read", "user", "other", NULL, want);
    ASSERT_STR_EQ(sig, want);
    token_clear();
}

TEST(token_load_file_permissions)
{
    if (geteuid() != 0)
        TEST_SKIP("needs root (token files must be root-owned)");
    char *dir = make_tmpdir();
    char path[PATH_MAX], link[PATH_MAX];
    (void) snprintf(path, sizeof(path), "%s/token", dir);

    write_file(path, "file-token\n", 0600);
    token_clear();
    ASSERT_OK(token_load_file(path));
    ASSERT_TRUE(token_matches("file-token", 10));
    ASSERT_FALSE(token_matches("file-token\n", 11));

    write_file(path, "crlf-token\r\n\n", 0400);
    ASSERT_OK(token_load_file(path));
    ASSERT_TRUE(token_matches("crlf-token", 10));

    write_file(path, "no-newline", 0600);
    ASSERT_OK(token_load_file(path));
    ASSERT_TRUE(token_matches("no-newline", 10));

    /* group or other bits: refused, and the current token stays */
    write_file(path, "leaky\n", 0644);
    ASSERT_ERR(token_load_file(path), EPERM);
    write_file(path, "leaky\n", 0640);
    ASSERT_ERR(token_load_file(path), EPERM);
    write_file(path, "leaky\n", 0604);
    ASSERT_ERR(token_load_file(path), EPERM);
    ASSERT_TRUE(token_matches("no-newline", 10));

    /* not owned by root */
    write_file(path, "mine\n", 0600);
    ASSERT_OK(chown(path, 1000, 1000));
    ASSERT_ERR(token_load_file(path), EPERM);
    ASSERT_OK(chown(path, 0, 0));

    /* empty, only newlines, or a control byte inside */
    write_file(path, "", 0600);
    ASSERT_ERR(token_load_file(path), EINVAL);
    write_file(path, "\n\n", 0600);
    ASSERT_ERR(token_load_file(path), EINVAL);
    write_file(path, "a\nb\n", 0600);
    ASSERT_ERR(token_load_file(path), EINVAL);

    /* too long */
    char big[LIMIT_TOKEN_BYTES + 3];
    memset(big, 't', LIMIT_TOKEN_BYTES + 1);
    big[LIMIT_TOKEN_BYTES + 1] = '\0';
    write_file(path, big, 0600);
    ASSERT_NE(token_load_file(path), 0);
    big[LIMIT_TOKEN_BYTES] = '\n'; /* exactly the limit plus a newline is fine */
    write_file(path, big, 0600);
    ASSERT_OK(token_load_file(path));
    ASSERT_TRUE(token_matches(big, LIMIT_TOKEN_BYTES));

    /* not a regular file, a symlink, missing */
    ASSERT_ERR(token_load_file(dir), EINVAL);
    (void) snprintf(link, sizeof(link), "%s/link", dir);
    ASSERT_OK(symlink(path, link));
    ASSERT_ERR(token_load_file(link), ELOOP);
    (void) snprintf(link, sizeof(link), "%s/missing", dir);
    ASSERT_ERR(token_load_file(link), ENOENT);

    token_clear();
    rm_rf(dir);
    free(dir);
}

TEST(token_sha512_and_hash_match)
{
    static const char empty512[] =
            "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce"
            "47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e";
    static const char abc512[] = "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
                                 "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f";
    char hex[129];
    memset(hex, 'x', sizeof(hex));
    token_sha512_hex("", 0, hex);
    ASSERT_STR_EQ(hex, empty512);
    token_sha512_hex("abc", 3, hex);
    ASSERT_STR_EQ(hex, abc512);
    token_sha512_hex("abcdef", 3, hex); /* only len bytes */
    ASSERT_STR_EQ(hex, abc512);

    token_clear();
    ASSERT_TRUE(token_hash_matches(empty512));
    ASSERT_FALSE(token_hash_matches(abc512));
    ASSERT_FALSE(token_hash_matches(""));
    ASSERT_OK(token_set("abc", 3));
    ASSERT_TRUE(token_hash_matches(abc512));
    ASSERT_FALSE(token_hash_matches(empty512));
    char trunc[128];
    memcpy(trunc, abc512, 127);
    trunc[127] = '\0';
    ASSERT_FALSE(token_hash_matches(trunc));
    token_clear();
}

TEST(token_streq_ct)
{
    ASSERT_TRUE(token_streq_ct("", ""));
    ASSERT_TRUE(token_streq_ct("abc", "abc"));
    ASSERT_FALSE(token_streq_ct("abc", "abd"));
    ASSERT_FALSE(token_streq_ct("abc", "ab"));
    ASSERT_FALSE(token_streq_ct("", "a"));
}

/* ---- clock ---- */

TEST(clock_needs_step_boundaries)
{
    const int64_t host = 1787392800LL * 1000000000LL;
    ASSERT_FALSE(clock_needs_step(host, host));
    /* behind: more than 50 ms */
    ASSERT_FALSE(clock_needs_step(host - 50000000LL, host));
    ASSERT_TRUE(clock_needs_step(host - 50000001LL, host));
    ASSERT_FALSE(clock_needs_step(host - 49999999LL, host));
    ASSERT_TRUE(clock_needs_step(host - 3600LL * 1000000000LL, host));
    /* ahead: more than 5 s */
    ASSERT_FALSE(clock_needs_step(host + 5000000000LL, host));
    ASSERT_TRUE(clock_needs_step(host + 5000000001LL, host));
    ASSERT_FALSE(clock_needs_step(host + 4999999999LL, host));
    ASSERT_FALSE(clock_needs_step(host + 1000000000LL, host));
    /* a guest at the epoch (no RTC) against a real host time */
    ASSERT_TRUE(clock_needs_step(0, host));
    ASSERT_EQ(CLOCK_MAX_BEHIND_NS, 50000000LL);
    ASSERT_EQ(CLOCK_MAX_AHEAD_NS, 5000000000LL);
}

TEST(clock_realtime_is_sane)
{
    int64_t now = clock_realtime_ns();
    struct timespec ts;
    ASSERT_OK(clock_gettime(CLOCK_REALTIME, &ts));
    int64_t ref = (int64_t) ts.tv_sec * 1000000000LL + ts.tv_nsec;
    ASSERT_TRUE(ref - now >= 0);
    ASSERT_TRUE(ref - now < 5000000000LL);
}

/* Unix seconds of a UTC date, via the C library. */
static int64_t utc(int y, int mon, int d, int h, int mi, int s)
{
    struct tm tm = {.tm_year = y - 1900,
                    .tm_mon = mon - 1,
                    .tm_mday = d,
                    .tm_hour = h,
                    .tm_min = mi,
                    .tm_sec = s};
    return (int64_t) timegm(&tm);
}

#define NS 1000000000LL

TEST(clock_parse_rfc3339_valid)
{
    int64_t ns = 1;
    ASSERT_OK(clock_parse_rfc3339("1970-01-01T00:00:00Z", &ns));
    ASSERT_EQ(ns, 0);
    ASSERT_OK(clock_parse_rfc3339("2026-08-22T10:00:00Z", &ns));
    ASSERT_EQ(ns, 1787392800LL * NS);
    ASSERT_EQ(ns, utc(2026, 8, 22, 10, 0, 0) * NS);

    /* fractions: 1 to 9 digits */
    ASSERT_OK(clock_parse_rfc3339("2026-08-22T10:00:00.123Z", &ns));
    ASSERT_EQ(ns, 1787392800LL * NS + 123000000);
    ASSERT_OK(clock_parse_rfc3339("2026-08-22T10:00:00.5Z", &ns));
    ASSERT_EQ(ns, 1787392800LL * NS + 500000000);
    ASSERT_OK(clock_parse_rfc3339("2026-08-22T10:00:00.000001Z", &ns));
    ASSERT_EQ(ns, 1787392800LL * NS + 1000);
    ASSERT_OK(clock_parse_rfc3339("2026-08-22T10:00:00.123456789Z", &ns));
    ASSERT_EQ(ns, 1787392800LL * NS + 123456789);

    /* offsets */
    ASSERT_OK(clock_parse_rfc3339("2026-08-22T12:00:00+02:00", &ns));
    ASSERT_EQ(ns, 1787392800LL * NS);
    ASSERT_OK(clock_parse_rfc3339("2026-08-22T04:30:00-05:30", &ns));
    ASSERT_EQ(ns, 1787392800LL * NS);
    ASSERT_OK(clock_parse_rfc3339("2026-08-22T10:00:00+00:00", &ns));
    ASSERT_EQ(ns, 1787392800LL * NS);
    ASSERT_OK(clock_parse_rfc3339("2026-08-22T10:00:00-00:00", &ns));
    ASSERT_EQ(ns, 1787392800LL * NS);
    ASSERT_OK(clock_parse_rfc3339("2026-08-23T00:59:59.25+14:59", &ns));
    ASSERT_EQ(ns, utc(2026, 8, 22, 10, 0, 59) * NS + 250000000);
    /* an offset that crosses midnight and a year */
    ASSERT_OK(clock_parse_rfc3339("2025-12-31T23:30:00-01:00", &ns));
    ASSERT_EQ(ns, utc(2026, 1, 1, 0, 30, 0) * NS);

    /* leap years: every 4, not every 100, but every 400 */
    ASSERT_OK(clock_parse_rfc3339("2024-02-29T12:00:00Z", &ns));
    ASSERT_EQ(ns, utc(2024, 2, 29, 12, 0, 0) * NS);
    ASSERT_OK(clock_parse_rfc3339("2000-02-29T00:00:00Z", &ns));
    ASSERT_EQ(ns, utc(2000, 2, 29, 0, 0, 0) * NS);
    ASSERT_OK(clock_parse_rfc3339("2024-03-01T00:00:00Z", &ns));
    ASSERT_EQ(ns, utc(2024, 3, 1, 0, 0, 0) * NS);
    ASSERT_OK(clock_parse_rfc3339("2023-12-31T23:59:59Z", &ns));
    ASSERT_EQ(ns, utc(2023, 12, 31, 23, 59, 59) * NS);
    /* month lengths */
    ASSERT_OK(clock_parse_rfc3339("2026-04-30T00:00:00Z", &ns));
    ASSERT_OK(clock_parse_rfc3339("2026-01-31T00:00:00Z", &ns));
    /* before the epoch */
    ASSERT_OK(clock_parse_rfc3339("1969-12-31T23:59:59Z", &ns));
    ASSERT_EQ(ns, -NS);
    /* a spread of dates against timegm */
    for (int y = 1970; y <= 2261; y += 7) {
        char s[40];
        int mon = 1 + y % 12, d = 1 + y % 28;
        (void) snprintf(s, sizeof(s), "%04d-%02d-%02dT%02d:%02d:%02dZ", y, mon, d, y % 24, y % 60,
                        (y * 7) % 60);
        ASSERT_OK(clock_parse_rfc3339(s, &ns));
        ASSERT_EQ(ns, utc(y, mon, d, y % 24, y % 60, (y * 7) % 60) * NS);
    }
}

/* Parses `s` in a child process: the exit status is 0 for success, 42 for an error return, and
 * anything else (a sanitizer report exits with 1) means the call itself misbehaved. */
static int parse_in_child(const char *s)
{
    fflush(NULL);
    pid_t pid = fork();
    ASSERT_OK(pid);
    if (pid == 0) {
        int64_t ns;
        _exit(clock_parse_rfc3339(s, &ns) == 0 ? 0 : 42);
    }
    int status;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

TEST(clock_parse_rfc3339_out_of_range)
{
    /* Unix nanoseconds in an int64 cover 1677-09-21 to 2262-04-11. */
    int64_t ns = 0;
    ASSERT_OK(clock_parse_rfc3339("2262-04-11T23:47:16.854775807Z", &ns));
    ASSERT_EQ(ns, INT64_MAX);
    ASSERT_OK(clock_parse_rfc3339("1677-09-21T00:12:44Z", &ns));
    ASSERT_EQ(ns, -9223372036LL * NS);
    static const char *const far[] = {
            "2262-04-11T23:47:17Z", "2262-04-12T00:00:00Z", "9999-12-31T23:59:59.999999999Z",
            "1677-09-21T00:12:43Z", "0000-01-01T00:00:00Z",
    };
    char bad[256] = "";
    for (size_t i = 0; i < sizeof(far) / sizeof(far[0]); i++) {
        int st = parse_in_child(far[i]);
        if (st != 42)
            (void) snprintf(bad + strlen(bad), sizeof(bad) - strlen(bad), "%s%s (%s)",
                            bad[0] ? ", " : "", far[i], st == 0 ? "accepted" : "crashed");
    }
    if (bad[0]) {
        char why[512];
        (void) snprintf(why, sizeof(why),
                        "clock_parse_rfc3339 must fail outside the int64 nanosecond range: %s",
                        bad);
        test_fail(__FILE__, __LINE__, "%s", why);
    }
}

TEST(clock_parse_rfc3339_invalid)
{
    static const char *const bad[] = {
            "",
            "2026",
            "2026-08-22",
            "2026-08-22T10:00:00",  /* no zone */
            "2026-08-22T10:00Z",    /* no seconds */
            "2026-08-22 10:00:00Z", /* space instead of T */
            "2026-08-22T10:00:00 Z",
            "2026-8-22T10:00:00Z",
            "26-08-22T10:00:00Z",
            "2026-00-22T10:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-08-00T10:00:00Z",
            "2026-08-32T10:00:00Z",
            "2026-04-31T00:00:00Z",
            "2023-02-29T00:00:00Z", /* not a leap year */
            "1900-02-29T00:00:00Z", /* divisible by 100 */
            "2024-02-30T00:00:00Z",
            "2026-08-22T24:00:00Z",
            "2026-08-22T10:60:00Z",
            "2026-08-22T10:00:61Z",
            "2026-08-22T10:00:00.Z", /* fraction without digits */
            "2026-08-22T10:00:00,5Z",
            "2026-08-22T10:00:00+0200",
            "2026-08-22T10:00:00+02",
            "2026-08-22T10:00:00+2:00",
            "2026-08-22T10:00:00+24:00",
            "2026-08-22T10:00:00+02:60",
            "2026-08-22T10:00:00ZZ",
            "2026-08-22T10:00:00Zjunk",
            "2026-08-22T10:00:00+02:00junk",
            "2026-0a-22T10:00:00Z",
            "2026-08-22T1a:00:00Z",
            "-026-08-22T10:00:00Z",
            "+2026-08-22T10:00:00Z",
            "2026/08/22T10:00:00Z",
            "2026-08-22X10:00:00Z",
            "2026-08-22T10-00-00Z",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int64_t ns = 42;
        int r = clock_parse_rfc3339(bad[i], &ns);
        if (r != -EINVAL)
            test_fail(__FILE__, __LINE__, "clock_parse_rfc3339(\"%s\") = %d, want -EINVAL", bad[i],
                      r);
        ASSERT_EQ(ns, 42);
    }
}

/* ---- http helpers ---- */

static char *query(const char *q, const char *name, int *ret)
{
    char *v = (char *) 0x1;
    *ret = http_query_get(q, name, &v);
    if (*ret < 0)
        ASSERT_NULL(v);
    return v;
}

TEST(http_query_get_decoding)
{
    int r;
    char *v;
    v = query("a=1&b=2", "b", &r);
    ASSERT_OK(r);
    ASSERT_STR_EQ(v, "2");
    free(v);
    v = query("a=1&b=2", "a", &r);
    ASSERT_STR_EQ(v, "1");
    free(v);
    v = query("path=%2Fhome%2fuser%2Ffile%20name.txt&username=user", "path", &r);
    ASSERT_OK(r);
    ASSERT_STR_EQ(v, "/home/user/file name.txt");
    free(v);
    v = query("q=a+b%2Bc", "q", &r);
    ASSERT_STR_EQ(v, "a b+c");
    free(v);
    v = query("u=%C3%A4%e2%82%AC", "u", &r);
    ASSERT_STR_EQ(v, "\xc3\xa4\xe2\x82\xac");
    free(v);
    /* keys are decoded too */
    v = query("my%20key=v&my+other=w", "my key", &r);
    ASSERT_STR_EQ(v, "v");
    free(v);
    v = query("my%20key=v&my+other=w", "my other", &r);
    ASSERT_STR_EQ(v, "w");
    free(v);
    /* the first occurrence wins; a key without '=' has an empty value */
    v = query("a=1&a=2", "a", &r);
    ASSERT_STR_EQ(v, "1");
    free(v);
    v = query("flag&x=1", "flag", &r);
    ASSERT_OK(r);
    ASSERT_STR_EQ(v, "");
    free(v);
    v = query("x=1&empty=", "empty", &r);
    ASSERT_STR_EQ(v, "");
    free(v);
    v = query("x=a=b", "x", &r);
    ASSERT_STR_EQ(v, "a=b");
    free(v);
    v = query("&&x=1&&", "x", &r);
    ASSERT_STR_EQ(v, "1");
    free(v);
    v = query("=v&x=2", "x", &r);
    ASSERT_STR_EQ(v, "2");
    free(v);
    assert_no_leaks();
}

TEST(http_query_get_missing)
{
    int r;
    ASSERT_NULL(query("a=1&b=2", "c", &r));
    ASSERT_EQ(r, 0);
    ASSERT_NULL(query("ab=1", "a", &r));
    ASSERT_EQ(r, 0);
    ASSERT_NULL(query("a=1", "ab", &r));
    ASSERT_EQ(r, 0);
    ASSERT_NULL(query("A=1", "a", &r));
    ASSERT_EQ(r, 0);
    ASSERT_NULL(query("", "a", &r));
    ASSERT_EQ(r, 0);
    ASSERT_NULL(query(NULL, "a", &r));
    ASSERT_EQ(r, 0);
    ASSERT_NULL(query("x=%zz", "a", &r)); /* values of other keys are not decoded */
    ASSERT_EQ(r, 0);
    assert_no_leaks();
}

TEST(http_query_get_bad_escapes)
{
    static const char *const bad[] = {"a=%",   "a=%2",  "a=x%",    "a=%zz",  "a=%g0",
                                      "a=%0g", "a=%00", "a=x%00y", "a=%%41", "a=%2%41"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int r;
        char *v = query(bad[i], "a", &r);
        if (r != -EINVAL)
            test_fail(__FILE__, __LINE__, "http_query_get(\"%s\") = %d (%s), want -EINVAL", bad[i],
                      r, v ? v : "(null)");
    }
    /* a bad escape in a key on the way to the wanted one */
    int r;
    ASSERT_NULL(query("%zz=1&a=2", "a", &r));
    ASSERT_EQ(r, -EINVAL);
    assert_no_leaks();
}

TEST(http_header_has_token)
{
    ASSERT_TRUE(http_header_has_token("close", "close"));
    ASSERT_TRUE(http_header_has_token("Close", "close"));
    ASSERT_TRUE(http_header_has_token("keep-alive, Upgrade", "upgrade"));
    ASSERT_TRUE(http_header_has_token("keep-alive, Upgrade", "keep-alive"));
    ASSERT_TRUE(http_header_has_token("  gzip ,\tchunked\t", "chunked"));
    ASSERT_TRUE(http_header_has_token("a,,b", "b"));
    ASSERT_TRUE(http_header_has_token("100-continue; foo=bar", "100-continue"));
    ASSERT_TRUE(http_header_has_token("x;q=1, gzip;q=0.5", "gzip"));
    ASSERT_FALSE(http_header_has_token("", "close"));
    ASSERT_FALSE(http_header_has_token("keep-alive-x", "keep-alive"));
    ASSERT_FALSE(http_header_has_token("xkeep-alive", "keep-alive"));
    ASSERT_FALSE(http_header_has_token("keep alive", "keep-alive"));
    ASSERT_FALSE(http_header_has_token("foo;close", "close"));
    ASSERT_FALSE(http_header_has_token("chunke, d", "chunked"));
    ASSERT_FALSE(http_header_has_token(",,,", "close"));
}

TEST(http_status_text)
{
    ASSERT_STR_EQ(http_status_text(100), "Continue");
    ASSERT_STR_EQ(http_status_text(200), "OK");
    ASSERT_STR_EQ(http_status_text(204), "No Content");
    ASSERT_STR_EQ(http_status_text(400), "Bad Request");
    ASSERT_STR_EQ(http_status_text(401), "Unauthorized");
    ASSERT_STR_EQ(http_status_text(404), "Not Found");
    ASSERT_STR_EQ(http_status_text(408), "Request Timeout");
    ASSERT_STR_EQ(http_status_text(413), "Payload Too Large");
    ASSERT_STR_EQ(http_status_text(414), "URI Too Long");
    ASSERT_STR_EQ(http_status_text(415), "Unsupported Media Type");
    ASSERT_STR_EQ(http_status_text(429), "Too Many Requests");
    ASSERT_STR_EQ(http_status_text(431), "Request Header Fields Too Large");
    ASSERT_STR_EQ(http_status_text(499), "Client Closed Request");
    ASSERT_STR_EQ(http_status_text(500), "Internal Server Error");
    ASSERT_STR_EQ(http_status_text(503), "Service Unavailable");
    ASSERT_STR_EQ(http_status_text(999), "Unknown");
    ASSERT_STR_EQ(http_status_text(0), "Unknown");
    ASSERT_STR_EQ(http_status_text(-1), "Unknown");
}

TEST_MAIN()

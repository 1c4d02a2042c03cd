/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The connection-free parts of the Connect protocol (agent/rpc/connect.h): error codes and
 * their HTTP statuses (docs/protocol-envd.md §2.3), errno mapping, JSON string quoting and
 * Connect-Timeout-Ms parsing.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "harness.h"
#include "rpc/connect.h"

extern int __lsan_do_recoverable_leak_check(void) __attribute__((weak));

static void assert_no_leaks(void)
{
    if (__lsan_do_recoverable_leak_check && __lsan_do_recoverable_leak_check() != 0)
        test_fail(__FILE__, __LINE__, "LeakSanitizer found leaks (see above)");
}

/* connect-go's connectCodeToHTTP, as listed in protocol-envd.md §2.3. */
static const struct {
    enum rpc_code code;
    const char *name;
    int http;
} codes[] = {
        {RPC_CANCELED, "canceled", 499},
        {RPC_UNKNOWN, "unknown", 500},
        {RPC_INVALID_ARGUMENT, "invalid_argument", 400},
        {RPC_DEADLINE_EXCEEDED, "deadline_exceeded", 504},
        {RPC_NOT_FOUND, "not_found", 404},
        {RPC_ALREADY_EXISTS, "already_exists", 409},
        {RPC_PERMISSION_DENIED, "permission_denied", 403},
        {RPC_RESOURCE_EXHAUSTED, "resource_exhausted", 429},
        {RPC_FAILED_PRECONDITION, "failed_precondition", 400},
        {RPC_ABORTED, "aborted", 409},
        {RPC_OUT_OF_RANGE, "out_of_range", 400},
        {RPC_UNIMPLEMENTED, "unimplemented", 501},
        {RPC_INTERNAL, "internal", 500},
        {RPC_UNAVAILABLE, "unavailable", 503},
        {RPC_DATA_LOSS, "data_loss", 500},
        {RPC_UNAUTHENTICATED, "unauthenticated", 401},
};

TEST(code_names_and_statuses)
{
    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
        ASSERT_STR_EQ(rpc_code_name(codes[i].code), codes[i].name);
        if (rpc_code_http_status(codes[i].code) != codes[i].http)
            test_fail(__FILE__, __LINE__, "%s: HTTP %d, want %d", codes[i].name,
                      rpc_code_http_status(codes[i].code), codes[i].http);
    }
    /* every code in the enum is covered above */
    ASSERT_EQ(RPC_UNAUTHENTICATED, 16);
    ASSERT_EQ(sizeof(codes) / sizeof(codes[0]), 16);
}

TEST(code_values_match_connect_numbering)
{
    /* The enum follows the gRPC/Connect numbering (canceled = 1 … unauthenticated = 16). */
    ASSERT_EQ(RPC_OK, 0);
    ASSERT_EQ(RPC_CANCELED, 1);
    ASSERT_EQ(RPC_UNKNOWN, 2);
    ASSERT_EQ(RPC_INVALID_ARGUMENT, 3);
    ASSERT_EQ(RPC_DEADLINE_EXCEEDED, 4);
    ASSERT_EQ(RPC_NOT_FOUND, 5);
    ASSERT_EQ(RPC_ALREADY_EXISTS, 6);
    ASSERT_EQ(RPC_PERMISSION_DENIED, 7);
    ASSERT_EQ(RPC_RESOURCE_EXHAUSTED, 8);
    ASSERT_EQ(RPC_FAILED_PRECONDITION, 9);
    ASSERT_EQ(RPC_ABORTED, 10);
    ASSERT_EQ(RPC_OUT_OF_RANGE, 11);
    ASSERT_EQ(RPC_UNIMPLEMENTED, 12);
    ASSERT_EQ(RPC_INTERNAL, 13);
    ASSERT_EQ(RPC_UNAVAILABLE, 14);
    ASSERT_EQ(RPC_DATA_LOSS, 15);
}

TEST(code_out_of_range_is_unknown)
{
    ASSERT_STR_EQ(rpc_code_name((enum rpc_code) 17), "unknown");
    ASSERT_STR_EQ(rpc_code_name((enum rpc_code) 1000), "unknown");
    ASSERT_EQ(rpc_code_http_status((enum rpc_code) 17), 500);
    ASSERT_EQ(rpc_code_http_status((enum rpc_code) 1000), 500);
}

TEST(code_from_errno)
{
    static const struct {
        int err;
        enum rpc_code code;
    } map[] = {
            {ENOENT, RPC_NOT_FOUND},
            {ESRCH, RPC_NOT_FOUND},
            {EEXIST, RPC_ALREADY_EXISTS},
            {EACCES, RPC_PERMISSION_DENIED},
            {EPERM, RPC_PERMISSION_DENIED},
            {EINVAL, RPC_INVALID_ARGUMENT},
            {ENOTDIR, RPC_INVALID_ARGUMENT},
            {EISDIR, RPC_INVALID_ARGUMENT},
            {ENAMETOOLONG, RPC_INVALID_ARGUMENT},
            {ELOOP, RPC_INVALID_ARGUMENT},
            {E2BIG, RPC_RESOURCE_EXHAUSTED},
            {ENOSPC, RPC_RESOURCE_EXHAUSTED},
            {EDQUOT, RPC_RESOURCE_EXHAUSTED},
            {EMFILE, RPC_RESOURCE_EXHAUSTED},
            {ENFILE, RPC_RESOURCE_EXHAUSTED},
            {EAGAIN, RPC_RESOURCE_EXHAUSTED},
            {ETIMEDOUT, RPC_DEADLINE_EXCEEDED},
            {ECANCELED, RPC_CANCELED},
            {ENOSYS, RPC_UNIMPLEMENTED},
            {EOPNOTSUPP, RPC_UNIMPLEMENTED},
            {EIO, RPC_INTERNAL},
            {ENOMEM, RPC_INTERNAL},
            {EBADF, RPC_INTERNAL},
    };
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++) {
        enum rpc_code c = rpc_code_from_errno(-map[i].err);
        if (c != map[i].code)
            test_fail(__FILE__, __LINE__, "-%s maps to %s, want %s", strerror(map[i].err),
                      rpc_code_name(c), rpc_code_name(map[i].code));
    }
}

static char *quote(const char *s)
{
    struct buf b;
    buf_init(&b, 1 << 20);
    ASSERT_OK(rpc_json_quote(&b, s));
    return buf_steal(&b, NULL);
}

TEST(json_quote_escaping)
{
    static const struct {
        const char *in, *out;
    } cases[] = {
            {"", "\"\""},
            {"plain text", "\"plain text\""},
            {"a\"b", "\"a\\\"b\""},
            {"back\\slash", "\"back\\\\slash\""},
            {"line\nbreak", "\"line\\u000abreak\""},
            {"\r\t\b\f", "\"\\u000d\\u0009\\u0008\\u000c\""},
            {"\x01\x1f", "\"\\u0001\\u001f\""},
            {" \x7f", "\" \x7f\""},
            {"/path/ok", "\"/path/ok\""},
            {"caf\xc3\xa9 \xe2\x82\xac", "\"caf\xc3\xa9 \xe2\x82\xac\""},
            {"</script>", "\"</script>\""},
            {"\"\\\"", "\"\\\"\\\\\\\"\""},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *q = quote(cases[i].in);
        ASSERT_STR_EQ(q, cases[i].out);
        free(q);
    }
    assert_no_leaks();
}

TEST(json_quote_appends_and_respects_cap)
{
    struct buf b;
    buf_init(&b, 64);
    ASSERT_OK(buf_append_str(&b, "{\"m\":"));
    ASSERT_OK(rpc_json_quote(&b, "x"));
    ASSERT_OK(buf_append_char(&b, '}'));
    ASSERT_STR_EQ(b.data, "{\"m\":\"x\"}");
    buf_free(&b);

    buf_init(&b, 8);
    ASSERT_ERR(rpc_json_quote(&b, "0123456789"), E2BIG);
    ASSERT_TRUE(b.len <= 8);
    buf_free(&b);
    buf_init(&b, 8);
    ASSERT_ERR(rpc_json_quote(&b, "\n\n"), E2BIG); /* 14 bytes escaped */
    buf_free(&b);
    buf_init(&b, 8);
    ASSERT_OK(rpc_json_quote(&b, "123456"));
    ASSERT_STR_EQ(b.data, "\"123456\"");
    buf_free(&b);
    assert_no_leaks();
}

TEST(parse_timeout_digits)
{
    static const struct {
        const char *s;
        uint64_t ms;
    } ok[] = {
            {"0", 0},
            {"1", 1},
            {"250", 250},
            {"0000000001", 1},
            {"1234567890", 1234567890},
            {"9999999999", 9999999999ULL},
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        uint64_t ms = 42;
        ASSERT_OK(rpc_parse_timeout(ok[i].s, &ms));
        ASSERT_UEQ(ms, ok[i].ms);
    }
    static const char *const bad[] = {
            "",    "12345678901", "00000000001",         "-1", "+1", "1a", "abc", " 1", "1 ", "1.5",
            "1e3", "0x10",        "99999999999999999999"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uint64_t ms = 42;
        int r = rpc_parse_timeout(bad[i], &ms);
        if (r != -EINVAL)
            test_fail(__FILE__, __LINE__, "rpc_parse_timeout(\"%s\") = %d, want -EINVAL", bad[i],
                      r);
        ASSERT_UEQ(ms, 42);
    }
}

TEST_MAIN()

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The access token. Its plaintext lives only in one page that is mlock()ed and excluded from
 * core dumps (signed /files URLs need the plaintext to recompute signatures); comparisons are
 * of SHA-256 digests with a constant-time compare, so timing reveals nothing about the token.
 * The token is never logged, and never taken from argv or the kernel command line.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Length of an envd file signature: "v1_" + unpadded base64 of a SHA-256 digest. */
#define TOKEN_SIGNATURE_LEN (3 + 43)

/* Maps and locks the secret page. Returns 0, or -errno if locking failed (the page is still
 * usable, only not locked). */
int token_init(void);
/* Sets the token. -EINVAL for an empty token or one with NUL or control bytes, -E2BIG if long. */
int token_set(const char *tok, size_t len);
void token_clear(void);
bool token_is_set(void);
/* Constant-time check of a presented token against the current one (false if none is set). */
bool token_matches(const char *candidate, size_t len);
/*
 * Reads the token from a file that must be a regular file owned by root and not readable by
 * group or others. Trailing newlines are stripped. Returns 0 or -errno (-EPERM for bad
 * ownership or mode).
 */
int token_load_file(const char *path);
/*
 * envd's file URL signature: "v1_" + base64-nopad(SHA-256(path ":" op ":" user ":" token
 * [":" exp])). `exp` may be NULL. `out` receives TOKEN_SIGNATURE_LEN + 1 bytes.
 * Returns -ENOKEY if no token is set.
 */
int token_signature(const char *path, const char *op, const char *user, const char *exp,
                    char out[TOKEN_SIGNATURE_LEN + 1]);
/* Constant-time comparison of two NUL-terminated strings of possibly different length. */
bool token_streq_ct(const char *a, const char *b);
/* Hex SHA-512 of a string (envd's MMDS accessTokenHash format), into 129 bytes. */
void token_sha512_hex(const char *s, size_t len, char out[129]);
/* True if `hex` equals the SHA-512 hex of the current token (or of "" when none is set). */
bool token_hash_matches(const char *hex);

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Strict number and flag parsing. Callers never use atoi/strtol directly: these reject empty
 * strings, signs where none belong, trailing garbage and overflow with -EINVAL or -ERANGE.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

int parse_u64(const char *s, uint64_t *ret);
int parse_u32(const char *s, uint32_t *ret);
int parse_i64(const char *s, int64_t *ret);
/* Decimal digits only, at most `max_digits` of them (Connect-Timeout-Ms allows 10). */
int parse_u64_digits(const char *s, size_t len, size_t max_digits, uint64_t *ret);
/* true/false, 1/0, yes/no, on/off (case-insensitive). */
int parse_bool(const char *s, bool *ret);
/* Port number 1..65535. */
int parse_port(const char *s, uint16_t *ret);
/* Case-insensitive search of a comma-separated header list ("keep-alive, Upgrade") for a
 * token; parameters after ';' are ignored. */
bool parse_list_has_token(const char *value, const char *token);

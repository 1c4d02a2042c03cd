/* SPDX-License-Identifier: Apache-2.0 */
/* UTF-8 validation (RFC 3629: no overlongs, no surrogates, nothing above U+10FFFF). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Length of the well-formed UTF-8 sequence at s[0] (n bytes available), or 0 if none. */
size_t utf8_seq_len(const uint8_t *s, size_t n);
/* True if all `n` bytes are well-formed UTF-8. */
bool utf8_valid(const uint8_t *s, size_t n);

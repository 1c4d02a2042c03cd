/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The proto3 JSON mapping, driven by protobuf-c descriptors, plus validation of binary-decoded
 * messages. Decoding parses with jansson (duplicate keys rejected) and builds a message that
 * protobuf_c_message_free_unpacked(msg, NULL) frees. Encoding streams JSON straight into a
 * struct buf, with no DOM: bytes are base64-encoded directly into the output.
 *
 * Mapping (as protojson):
 *  - field names: lowerCamelCase by protoc's rule out; either the JSON or the proto name in;
 *    the same field twice under both names is an error;
 *  - maps: repeated `…Entry` messages with key (1) and value (2) fields, as JSON objects;
 *  - enums: value names out; names or integers in;
 *  - 64-bit integers: strings out; strings or numbers in; 32-bit: numbers out, numbers or
 *    decimal strings in; floats and doubles as numbers (NaN/Infinity as strings);
 *  - bytes: standard padded base64 out; standard or URL-safe, padded or not, in;
 *  - google.protobuf.Timestamp: RFC 3339 UTC with Z and 0, 3, 6 or 9 fractional digits out;
 *    any offset in;
 *  - unknown fields ignored; `null` means the default; oneof members and one-field oneofs named
 *    `_x` (proto3 optional) are emitted when set, even at their default; implicit-presence
 *    scalars are omitted at their default.
 * Strings containing NUL, invalid UTF-8 and nesting deeper than PBJSON_MAX_DEPTH are rejected.
 */
#pragma once

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"

/* Maximum nesting of messages/arrays/objects accepted when decoding (and walked when encoding). */
#define PBJSON_MAX_DEPTH 32

/*
 * Decodes `len` bytes of JSON into a new message of type `desc`. On failure returns -EINVAL
 * (or -ENOMEM) and, if ret_error is not NULL, a malloc'd message naming the offending field,
 * e.g. "invalid value for field 'process.cmd': expected string".
 */
int pbjson_decode(const ProtobufCMessageDescriptor *desc, const char *json, size_t len,
                  ProtobufCMessage **ret_msg, char **ret_error);

/* Appends the JSON encoding of `msg` to `out`. Returns 0, -E2BIG (out's cap) or -ENOMEM. */
int pbjson_encode(const ProtobufCMessage *msg, struct buf *out);

/*
 * Decodes binary protobuf `data` into a new message of type `desc`, rejecting (unlike plain
 * protobuf_c_message_unpack) strings that contain NUL or invalid UTF-8 anywhere in the message
 * tree. Errors as for pbjson_decode.
 */
int pbproto_decode(const ProtobufCMessageDescriptor *desc, const uint8_t *data, size_t len,
                   ProtobufCMessage **ret_msg, char **ret_error);

/* Appends the binary encoding of `msg` to `out`. */
int pbproto_encode(const ProtobufCMessage *msg, struct buf *out);

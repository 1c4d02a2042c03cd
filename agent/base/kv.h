/* SPDX-License-Identifier: Apache-2.0 */
/* A small string-to-string map kept sorted by key (environment variables, metadata). */
#pragma once

#include <stddef.h>

struct kv_entry {
    char *key;
    char *value;
};

struct kv {
    struct kv_entry *items;
    size_t n;
    size_t cap;
};

void kv_init(struct kv *m);
void kv_clear(struct kv *m);
/* Sets key to a copy of value, replacing any previous value. */
void kv_set(struct kv *m, const char *key, const char *value);
const char *kv_get(const struct kv *m, const char *key);
/* Returns 1 if removed, 0 if absent. */
int kv_del(struct kv *m, const char *key);

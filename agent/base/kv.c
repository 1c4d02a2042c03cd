/* SPDX-License-Identifier: Apache-2.0 */
#include "base/kv.h"

#include <stdlib.h>
#include <string.h>

#include "base/alloc.h"

void kv_init(struct kv *m)
{
    m->items = NULL;
    m->n = 0;
    m->cap = 0;
}

void kv_clear(struct kv *m)
{
    for (size_t i = 0; i < m->n; i++) {
        free(m->items[i].key);
        free(m->items[i].value);
    }
    free(m->items);
    kv_init(m);
}

/* Index of key, or of where it would be inserted (with *found = 0). */
static size_t kv_find(const struct kv *m, const char *key, int *found)
{
    size_t lo = 0, hi = m->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(m->items[mid].key, key);
        if (c == 0) {
            *found = 1;
            return mid;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = 0;
    return lo;
}

void kv_set(struct kv *m, const char *key, const char *value)
{
    int found;
    size_t i = kv_find(m, key, &found);
    if (found) {
        free(m->items[i].value);
        m->items[i].value = xstrdup(value);
        return;
    }
    if (m->n == m->cap) {
        m->cap = m->cap ? m->cap * 2 : 16;
        m->items = xrealloc(m->items, m->cap * sizeof(*m->items));
    }
    memmove(m->items + i + 1, m->items + i, (m->n - i) * sizeof(*m->items));
    m->items[i].key = xstrdup(key);
    m->items[i].value = xstrdup(value);
    m->n++;
}

const char *kv_get(const struct kv *m, const char *key)
{
    int found;
    size_t i = kv_find(m, key, &found);
    return found ? m->items[i].value : NULL;
}

int kv_del(struct kv *m, const char *key)
{
    int found;
    size_t i = kv_find(m, key, &found);
    if (!found)
        return 0;
    free(m->items[i].key);
    free(m->items[i].value);
    memmove(m->items + i, m->items + i + 1, (m->n - i - 1) * sizeof(*m->items));
    m->n--;
    return 1;
}

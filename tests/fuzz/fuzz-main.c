/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Replays inputs through LLVMFuzzerTestOneInput without libFuzzer (systemd's fuzz-main.c), so
 * every test run replays the committed corpus and any saved crashers. Arguments are files or
 * directories (their regular files, in name order, dot files skipped). Prints TAP: one
 * "ok N - file" per input; a crash or sanitizer report ends the run.
 */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Inputs larger than this are refused rather than replayed (libFuzzer's -max_len is far
 * smaller; a huge file here is a mistake). */
#define FUZZ_MAIN_MAX_INPUT (64u << 20)

struct list {
    char **items;
    size_t n, cap;
};

static void list_add(struct list *l, char *s)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 64;
        l->items = realloc(l->items, l->cap * sizeof(*l->items));
        if (!l->items) {
            perror("realloc");
            exit(2);
        }
    }
    l->items[l->n++] = s;
}

static int skip_dots(const struct dirent *d)
{
    return d->d_name[0] != '.';
}

static void expand(struct list *l, const char *arg)
{
    struct stat st;
    if (stat(arg, &st) == 0 && S_ISDIR(st.st_mode)) {
        struct dirent **names;
        int n = scandir(arg, &names, skip_dots, alphasort);
        if (n < 0) {
            list_add(l, strdup(arg)); /* reported as not ok below */
            return;
        }
        for (int i = 0; i < n; i++) {
            char *path;
            if (asprintf(&path, "%s/%s", arg, names[i]->d_name) < 0)
                exit(2);
            struct stat fst;
            if (stat(path, &fst) == 0 && S_ISREG(fst.st_mode))
                list_add(l, path);
            else
                free(path);
            free(names[i]);
        }
        free(names);
        return;
    }
    list_add(l, strdup(arg));
}

static int read_file(const char *path, uint8_t **ret, size_t *ret_len)
{
    FILE *f = fopen(path, "rbe");
    if (!f)
        return -errno;
    size_t cap = 4096, len = 0;
    uint8_t *buf = malloc(cap);
    int r = 0;
    for (;;) {
        if (!buf) {
            r = -ENOMEM;
            break;
        }
        size_t n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (n == 0) {
            if (ferror(f))
                r = -EIO;
            break;
        }
        if (len == cap) {
            if (cap >= FUZZ_MAIN_MAX_INPUT) {
                r = -EFBIG;
                break;
            }
            cap *= 2;
            uint8_t *nb = realloc(buf, cap);
            if (!nb)
                free(buf);
            buf = nb;
        }
    }
    fclose(f);
    if (r < 0) {
        free(buf);
        return r;
    }
    *ret = buf;
    *ret_len = len;
    return 0;
}

int main(int argc, char **argv)
{
    struct list files = {0};
    int failed = 0;
    for (int i = 1; i < argc; i++)
        expand(&files, argv[i]);
    printf("1..%zu\n", files.n);
    fflush(stdout);
    for (size_t i = 0; i < files.n; i++) {
        uint8_t *data = NULL;
        size_t len = 0;
        int r = read_file(files.items[i], &data, &len);
        if (r < 0) {
            printf("not ok %zu - %s # %s\n", i + 1, files.items[i], strerror(-r));
            failed++;
        } else {
            /* an exact-size copy, so that ASan sees any read past the input */
            uint8_t *copy = malloc(len ? len : 1);
            if (!copy)
                exit(2);
            memcpy(copy, data, len);
            free(data);
            (void) LLVMFuzzerTestOneInput(copy, len);
            free(copy);
            printf("ok %zu - %s\n", i + 1, files.items[i]);
        }
        fflush(stdout);
        free(files.items[i]);
    }
    free(files.items);
    return failed ? 1 : 0;
}

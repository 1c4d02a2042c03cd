/* SPDX-License-Identifier: Apache-2.0 */
#include "sec/token.h"

#include <errno.h>
#include <fcntl.h>
#include <nettle/base64.h>
#include <nettle/memops.h>
#include <nettle/sha2.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent-limits.h"
#include "base/cleanup.h"

struct secret {
    bool set;
    size_t len;
    uint8_t digest[SHA256_DIGEST_SIZE];
    char plain[LIMIT_TOKEN_BYTES + 1];
};

static struct secret *secret;
static struct secret fallback_secret; /* used only if mmap itself failed */

int token_init(void)
{
    if (secret)
        return 0;
    long page = sysconf(_SC_PAGESIZE);
    size_t size = ((sizeof(struct secret) + (size_t) page - 1) / (size_t) page) * (size_t) page;
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        secret = &fallback_secret;
        return -errno;
    }
    secret = p;
    (void) madvise(p, size, MADV_DONTDUMP);
    (void) madvise(p, size, MADV_DONTFORK); /* children never inherit the page */
    if (mlock(p, size) < 0)
        return -errno;
    return 0;
}

static void digest_of(const char *s, size_t len, uint8_t out[SHA256_DIGEST_SIZE])
{
    struct sha256_ctx ctx;
    sha256_init(&ctx);
    sha256_update(&ctx, len, (const uint8_t *) s);
    sha256_digest(&ctx, SHA256_DIGEST_SIZE, out);
}

int token_set(const char *tok, size_t len)
{
    if (!secret)
        (void) token_init();
    if (len == 0)
        return -EINVAL;
    if (len > LIMIT_TOKEN_BYTES)
        return -E2BIG;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char) tok[i] < 0x20 || tok[i] == 0x7f)
            return -EINVAL;
    token_clear();
    memcpy(secret->plain, tok, len);
    secret->plain[len] = '\0';
    secret->len = len;
    digest_of(tok, len, secret->digest);
    secret->set = true;
    return 0;
}

void token_clear(void)
{
    if (!secret)
        (void) token_init();
    explicit_bzero(secret, sizeof(*secret));
}

bool token_is_set(void)
{
    return secret && secret->set;
}

bool token_matches(const char *candidate, size_t len)
{
    uint8_t d[SHA256_DIGEST_SIZE];
    if (!token_is_set())
        return false;
    digest_of(candidate, len, d);
    return memeql_sec(d, secret->digest, sizeof(d)) != 0;
}

int token_load_file(const char *path)
{
    _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    struct stat st;
    char tmp[LIMIT_TOKEN_BYTES + 2];
    if (fd < 0)
        return -errno;
    if (fstat(fd, &st) < 0)
        return -errno;
    if (!S_ISREG(st.st_mode))
        return -EINVAL;
    if (st.st_uid != 0 || (st.st_mode & 0077))
        return -EPERM;
    ssize_t n = read(fd, tmp, sizeof(tmp));
    if (n < 0)
        return -errno;
    if ((size_t) n > LIMIT_TOKEN_BYTES + 1)
        return -E2BIG;
    while (n > 0 && (tmp[n - 1] == '\n' || tmp[n - 1] == '\r'))
        n--;
    int r = token_set(tmp, (size_t) n);
    explicit_bzero(tmp, sizeof(tmp));
    return r;
}

int token_signature(const char *path, const char *op, const char *user, const char *exp,
                    char out[TOKEN_SIGNATURE_LEN + 1])
{
    struct sha256_ctx ctx;
    uint8_t d[SHA256_DIGEST_SIZE];
    char b64[BASE64_ENCODE_RAW_LENGTH(SHA256_DIGEST_SIZE) + 1];
    if (!token_is_set())
        return -ENOKEY;
    sha256_init(&ctx);
    sha256_update(&ctx, strlen(path), (const uint8_t *) path);
    sha256_update(&ctx, 1, (const uint8_t *) ":");
    sha256_update(&ctx, strlen(op), (const uint8_t *) op);
    sha256_update(&ctx, 1, (const uint8_t *) ":");
    sha256_update(&ctx, strlen(user), (const uint8_t *) user);
    sha256_update(&ctx, 1, (const uint8_t *) ":");
    sha256_update(&ctx, secret->len, (const uint8_t *) secret->plain);
    if (exp) {
        sha256_update(&ctx, 1, (const uint8_t *) ":");
        sha256_update(&ctx, strlen(exp), (const uint8_t *) exp);
    }
    sha256_digest(&ctx, SHA256_DIGEST_SIZE, d);
    base64_encode_raw(b64, SHA256_DIGEST_SIZE, d);
    size_t n = BASE64_ENCODE_RAW_LENGTH(SHA256_DIGEST_SIZE);
    while (n > 0 && b64[n - 1] == '=')
        n--;
    memcpy(out, "v1_", 3);
    memcpy(out + 3, b64, n);
    out[3 + n] = '\0';
    return 0;
}

bool token_streq_ct(const char *a, const char *b)
{
    uint8_t da[SHA256_DIGEST_SIZE], db[SHA256_DIGEST_SIZE];
    digest_of(a, strlen(a), da);
    digest_of(b, strlen(b), db);
    return memeql_sec(da, db, sizeof(da)) != 0;
}

void token_sha512_hex(const char *s, size_t len, char out[129])
{
    static const char hex[] = "0123456789abcdef";
    struct sha512_ctx ctx;
    uint8_t d[SHA512_DIGEST_SIZE];
    sha512_init(&ctx);
    sha512_update(&ctx, len, (const uint8_t *) s);
    sha512_digest(&ctx, sizeof(d), d);
    for (size_t i = 0; i < sizeof(d); i++) {
        out[2 * i] = hex[d[i] >> 4];
        out[2 * i + 1] = hex[d[i] & 15];
    }
    out[128] = '\0';
}

bool token_hash_matches(const char *hex)
{
    char mine[129];
    if (token_is_set())
        token_sha512_hex(secret->plain, secret->len, mine);
    else
        token_sha512_hex("", 0, mine);
    return token_streq_ct(mine, hex);
}

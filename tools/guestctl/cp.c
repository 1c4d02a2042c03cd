/* SPDX-License-Identifier: Apache-2.0 */
/*
 * cp: streams files to guestd (POST /files, a chunked application/octet-stream body) and from
 * it (GET /files), checking both against the ETag "sha256:<hex>" guestd sends. Downloads go to
 * a temporary file next to the destination that is renamed into place once the hash matched.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <nettle/sha2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "base/buf.h"
#include "base/cleanup.h"
#include "cli.h"

/* Bytes read from the file or the connection at a time. */
#define CP_CHUNK_BYTES     (256 * 1024)
/* Largest error or upload answer body read. */
#define CP_MAX_REPLY_BYTES (64 * 1024)
/* Least time between two progress redraws. */
#define CP_PROGRESS_NS     200000000LL

struct progress {
    bool on;
    const char *name;
    int64_t total; /* -1 when unknown */
    uint64_t done;
    int64_t start_ns, last_ns;
};

static int64_t now_ns(void)
{
    struct timespec ts;
    (void) clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void format_bytes(double v, char *buf, size_t len)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    size_t u = 0;
    while (v >= 1024 && u + 1 < ARRAY_SIZE(units)) {
        v /= 1024;
        u++;
    }
    (void) snprintf(buf, len, u ? "%.1f %s" : "%.0f %s", v, units[u]);
}

static void progress_draw(struct progress *p, bool final)
{
    if (!p->on)
        return;
    int64_t now = now_ns();
    if (!final && now - p->last_ns < CP_PROGRESS_NS)
        return;
    p->last_ns = now;
    double secs = (double) (now - p->start_ns) / 1e9;
    double rate = secs > 0 ? (double) p->done / secs : 0;
    char done[32], total[32], speed[32], eta[32] = "";
    format_bytes((double) p->done, done, sizeof(done));
    format_bytes(rate, speed, sizeof(speed));
    if (p->total >= 0) {
        format_bytes((double) p->total, total, sizeof(total));
        if (final)
            (void) snprintf(eta, sizeof(eta), "  %.1fs", secs);
        else if (rate > 0)
            (void) snprintf(eta, sizeof(eta), "  ETA %.0fs",
                            (double) ((uint64_t) p->total - p->done) / rate);
    } else {
        (void) snprintf(total, sizeof(total), "?");
    }
    (void) fprintf(stderr, "\r\033[K%s: %s / %s  %s/s%s%s", p->name, done, total, speed, eta,
                   final ? "\n" : "");
    (void) fflush(stderr);
}

static void progress_start(struct progress *p, const char *name, int64_t total)
{
    *p = (struct progress){
            .on = isatty(STDERR_FILENO) == 1,
            .name = name,
            .total = total,
            .start_ns = now_ns(),
    };
    p->last_ns = p->start_ns;
}

/* Appends s percent-encoded (RFC 3986 unreserved and '/' kept). */
static int append_encoded(struct buf *b, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *) s; *p; p++) {
        int r;
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
            strchr("-._~/", *p))
            r = buf_append_char(b, (char) *p);
        else {
            char e[3] = {'%', hex[*p >> 4], hex[*p & 15]};
            r = buf_append(b, e, 3);
        }
        if (r < 0)
            return r;
    }
    return 0;
}

/* "/files?path=…[&username=…]" into b. */
static int files_target(struct buf *b, const char *path)
{
    buf_init(b, 64 * 1024);
    int r = buf_append_str(b, "/files?path=");
    if (r >= 0)
        r = append_encoded(b, path);
    if (r >= 0 && cli.user) {
        r = buf_append_str(b, "&username=");
        if (r >= 0)
            r = append_encoded(b, cli.user);
    }
    if (r >= 0)
        r = buf_append_char(b, '\0');
    return r;
}

/* Reports a non-2xx answer: its JSON "message", its text, or just the status. */
static int fail_http(const char *what, const struct client_response *resp, const struct buf *body)
{
    const char *code = client_code_from_http_status(resp->status);
    json_error_t jerr;
    json_t *root = body->len ? json_loadb(body->data, body->len, 0, &jerr) : NULL;
    const char *msg = NULL;
    if (root && json_is_object(root) && json_is_string(json_object_get(root, "message")))
        msg = json_string_value(json_object_get(root, "message"));
    else if (!root && body->len)
        msg = body->data;
    cli_warnf("%s: %s: HTTP %d%s%.*s%s", what, code, resp->status, msg ? ": " : "",
              msg ? (int) strcspn(msg, "\r\n") : 0, msg ? msg : "",
              streq(code, "unauthenticated") ? " (pass --token or set GUESTCTL_TOKEN)" : "");
    json_decref(root);
    return CLI_EXIT_FAILURE;
}

/* Reads the rest of an error answer and reports it. */
static int fail_response(struct client *cl, const char *what, const struct client_response *resp)
{
    struct buf body;
    buf_init(&body, CP_MAX_REPLY_BYTES);
    (void) client_response_read_all(cl, &body);
    if (buf_append_char(&body, '\0') >= 0)
        body.len--;
    int r = fail_http(what, resp, &body);
    buf_free(&body);
    return r;
}

/* Compares the response's ETag with the digest; "" for a match, else what went wrong. */
static const char *check_etag(const struct client_response *resp, const uint8_t *digest)
{
    char want[80] = "\"sha256:";
    size_t n = strlen(want);
    for (size_t i = 0; i < SHA256_DIGEST_SIZE; i++, n += 2)
        (void) snprintf(want + n, sizeof(want) - n, "%02x", digest[i]);
    (void) snprintf(want + n, sizeof(want) - n, "\"");
    const char *etag = client_response_header(resp, "ETag");
    if (!etag)
        return "guestd sent no ETag to verify the content with";
    if (!streq(etag, want))
        return "content hash mismatch (ETag differs from the sha256 of the bytes)";
    return "";
}

static const char *base_name(const char *p)
{
    size_t n = strlen(p);
    while (n > 1 && p[n - 1] == '/')
        n--;
    const char *s = p + n;
    while (s > p && s[-1] != '/')
        s--;
    return s;
}

static int upload(struct client *cl, const char *local, const char *remote)
{
    char what[64];
    _cleanup_close_ int fd = open(local, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return cli_failf("opening '%s': %s", local, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0)
        return cli_failf("reading '%s': %s", local, strerror(errno));
    if (S_ISDIR(st.st_mode))
        return cli_failf("'%s' is a directory (-r is not supported)", local);

    struct buf target;
    int r = files_target(&target, remote);
    if (r < 0) {
        buf_free(&target);
        return cli_fail_errno("building the request", r);
    }
    (void) snprintf(what, sizeof(what), "uploading to '%.40s'", remote);
    const struct client_header headers[] = {{"Content-Type", "application/octet-stream"}};
    struct client_request req = {
            .method = "POST",
            .target = target.data,
            .headers = headers,
            .n_headers = ARRAY_SIZE(headers),
            .flags = CLIENT_REQUEST_CHUNKED,
    };
    r = client_request_start(cl, &req);
    buf_free(&target);
    if (r < 0)
        return cli_fail_transport(what, r);

    struct sha256_ctx sha;
    sha256_init(&sha);
    struct progress pr;
    progress_start(&pr, local, S_ISREG(st.st_mode) ? (int64_t) st.st_size : -1);
    _cleanup_free_ uint8_t *chunk = malloc(CP_CHUNK_BYTES);
    if (!chunk)
        return cli_fail_errno("allocating", -ENOMEM);
    int wr = 0;
    for (;;) {
        ssize_t n = read(fd, chunk, CP_CHUNK_BYTES);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return cli_failf("reading '%s': %s", local, strerror(errno));
        if (n == 0)
            break;
        sha256_update(&sha, (size_t) n, chunk);
        wr = client_request_write(cl, chunk, (size_t) n);
        if (wr < 0)
            break; /* the server may have answered early: read that answer */
        pr.done += (uint64_t) n;
        progress_draw(&pr, false);
    }
    if (wr >= 0)
        wr = client_request_finish(cl);
    const struct client_response *resp = NULL;
    r = client_response_start(cl, &resp);
    if (r < 0)
        return cli_fail_transport(what, wr < 0 ? wr : r);
    if (resp->status != 200)
        return fail_response(cl, what, resp);
    if (wr < 0)
        return cli_fail_transport(what, wr);
    uint8_t digest[SHA256_DIGEST_SIZE];
    sha256_digest(&sha, sizeof(digest), digest);
    const char *bad = check_etag(resp, digest);
    r = client_response_read_all(cl, NULL);
    if (*bad)
        return cli_failf("%s: %s", what, bad);
    if (r < 0)
        return cli_fail_transport(what, r);
    progress_draw(&pr, true);
    return 0;
}

static int download(struct client *cl, const char *remote, const char *local)
{
    char what[64];
    struct buf target;
    int r = files_target(&target, remote);
    if (r < 0) {
        buf_free(&target);
        return cli_fail_errno("building the request", r);
    }
    (void) snprintf(what, sizeof(what), "downloading '%.40s'", remote);
    struct client_request req = {.method = "GET", .target = target.data};
    r = client_request_start(cl, &req);
    buf_free(&target);
    if (r < 0)
        return cli_fail_transport(what, r);
    const struct client_response *resp = NULL;
    r = client_response_start(cl, &resp);
    if (r < 0)
        return cli_fail_transport(what, r);
    if (resp->status != 200)
        return fail_response(cl, what, resp);

    _cleanup_free_ char *dest = NULL;
    struct stat st;
    if (stat(local, &st) == 0 && S_ISDIR(st.st_mode)) {
        if (asprintf(&dest, "%s/%s", local, base_name(remote)) < 0)
            return cli_fail_errno("allocating", -ENOMEM);
    } else if (!(dest = strdup(local)))
        return cli_fail_errno("allocating", -ENOMEM);
    _cleanup_free_ char *tmp = NULL;
    if (asprintf(&tmp, "%s.guestctl-XXXXXX", dest) < 0)
        return cli_fail_errno("allocating", -ENOMEM);
    _cleanup_close_ int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0)
        return cli_failf("creating '%s': %s", tmp, strerror(errno));
    mode_t mask = umask(0);
    (void) umask(mask);
    (void) fchmod(fd, 0666 & ~mask);

    struct sha256_ctx sha;
    sha256_init(&sha);
    struct progress pr;
    progress_start(&pr, remote, resp->content_length);
    _cleanup_free_ uint8_t *chunk = malloc(CP_CHUNK_BYTES);
    const char *bad = NULL;
    char errbuf[256];
    if (!chunk)
        bad = "out of memory";
    while (!bad) {
        ssize_t n = client_response_read(cl, chunk, CP_CHUNK_BYTES);
        if (n < 0) {
            (void) snprintf(errbuf, sizeof(errbuf), "unavailable: %s", strerror((int) -n));
            bad = errbuf;
            break;
        }
        if (n == 0)
            break;
        sha256_update(&sha, (size_t) n, chunk);
        r = cli_write_all(fd, chunk, (size_t) n);
        if (r < 0) {
            (void) snprintf(errbuf, sizeof(errbuf), "writing '%s': %s", tmp, strerror(-r));
            bad = errbuf;
            break;
        }
        pr.done += (uint64_t) n;
        progress_draw(&pr, false);
    }
    if (!bad) {
        uint8_t digest[SHA256_DIGEST_SIZE];
        sha256_digest(&sha, sizeof(digest), digest);
        bad = check_etag(resp, digest);
        if (!*bad)
            bad = NULL;
    }
    if (!bad && close(fd) < 0) {
        (void) snprintf(errbuf, sizeof(errbuf), "writing '%s': %s", tmp, strerror(errno));
        bad = errbuf;
    }
    fd = -1;
    if (!bad && rename(tmp, dest) < 0) {
        (void) snprintf(errbuf, sizeof(errbuf), "renaming to '%s': %s", dest, strerror(errno));
        bad = errbuf;
    }
    if (bad) {
        (void) unlink(tmp);
        if (pr.on)
            (void) fputc('\n', stderr);
        return cli_failf("%s: %s", what, bad);
    }
    progress_draw(&pr, true);
    return 0;
}

static int cp_run(int argc, char **argv)
{
    static const struct option options[] = {
            CLI_COMMON_LONG_OPTIONS,
            {},
    };
    int c, r;
    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", options, NULL)) != -1) {
        r = cli_common_option(c, argv);
        if (r != CLI_CONTINUE)
            return r;
    }
    int n = argc - optind;
    char **args = argv + optind;
    if (n < 2)
        return cli_usage("expected SOURCE... DEST");
    const char *dest = args[n - 1];

    _cleanup_client_ struct client *cl = NULL;
    if (dest[0] == ':') {
        for (int i = 0; i < n - 1; i++)
            if (args[i][0] == ':')
                return cli_usage("either the sources or the destination is remote, not both");
        if (!dest[1])
            return cli_usage("empty remote path");
        bool into_dir = n > 2 || dest[strlen(dest) - 1] == '/';
        r = cli_client_new(CLIENT_TIMEOUT_INFINITE, &cl);
        if (r != 0)
            return r;
        for (int i = 0; i < n - 1; i++) {
            _cleanup_free_ char *remote = NULL;
            if (into_dir) {
                size_t len = strlen(dest + 1);
                if (asprintf(&remote, "%s%s%s", dest + 1, dest[len] == '/' ? "" : "/",
                             base_name(args[i])) < 0)
                    return cli_fail_errno("allocating", -ENOMEM);
            } else if (!(remote = strdup(dest + 1)))
                return cli_fail_errno("allocating", -ENOMEM);
            r = upload(cl, args[i], remote);
            if (r != 0)
                return r;
        }
        return 0;
    }
    if (n != 2 || args[0][0] != ':')
        return cli_usage("one side must be remote (':PATH')");
    if (!args[0][1])
        return cli_usage("empty remote path");
    r = cli_client_new(CLIENT_TIMEOUT_INFINITE, &cl);
    if (r != 0)
        return r;
    return download(cl, args[0] + 1, dest);
}

const struct cli_command cp_command = {
        .name = "cp",
        .run = cp_run,
        .summary = "copy files to or from the guest",
        .help = "Usage: guestctl cp LOCAL... :REMOTE\n"
                "       guestctl cp :REMOTE LOCAL\n"
                "\n"
                "A ':' prefix marks the guest's side. Uploads stream with POST /files, downloads\n"
                "with GET /files into a temporary file next to LOCAL that is renamed into place.\n"
                "Both directions check the content against guestd's sha256 ETag; a mismatch is\n"
                "an error. With several sources, or REMOTE ending in '/', the files go into the\n"
                "directory REMOTE; a LOCAL directory receives the file under its own name.\n"
                "Shows progress on stderr when it is a terminal. Directories (-r) are not\n"
                "supported yet.\n",
};

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * vm-suite: the in-guest test suite of the VM tier (see tests/vm/README.md). It runs as a plain
 * static program inside a tiny initramfs, drives guestd through agent/client only, and prints
 * TAP on stdout as it goes: `ok N - name` / `not ok N - name` with `# reason` lines, the plan
 * `1..N` at the end, then the exit marker `@@VMTEST-EXIT=<rc>@@`. In pid1 mode it then asks
 * guestd to shut down (guestd.v1.System/Shutdown), which must power the VM off.
 *
 * Usage: vm-suite [--to ADDR] [--child] [--no-shutdown] [--guestd PATH] [--only TEXT]
 *   --to ADDR      guestd's address (default vsock:1:49983)
 *   --child        guestd is not PID 1: PID-1-only checks are skipped, no shutdown
 *   --no-shutdown  do not call System/Shutdown at the end (native runs)
 *   --guestd PATH  the binary for the extra instances of the auth tests (default /sbin/guestd,
 *                  else the binary of the guestd that runs the suite's commands)
 *   --only TEXT    run only the tests whose name contains TEXT (for debugging)
 *
 * The guest is 3-12x slower than a native run (TCG), so every wait is generous and nothing is
 * timed. Extra guestd instances listen on vsock when --to is a vsock address, and on loopback
 * TCP otherwise (native runs must never touch AF_VSOCK).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <nettle/sha2.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "base/buf.h"
#include "base/macro.h"
#include "client/client.h"
#include "guestd/v1/process.pb-c.h"
#include "guestd/v1/system.pb-c.h"
#include "process/process.pb-c.h"

/* How long guestd may take to answer at all after the suite starts (it may still be booting). */
#define STARTUP_WAIT_MS    60000
/* Dialling one connection (vsock_loopback and TCG can be slow). */
#define CONNECT_TIMEOUT_MS 30000
/* Inactivity bound of every wait for guestd; streams also get keepalives. */
#define IO_TIMEOUT_MS      120000
/* Upper bound on one ordinary stream, however many keepalives arrive. */
#define STREAM_DEADLINE_MS 300000
/* Upper bound on the large-output stream. */
#define BIG_DEADLINE_MS    1200000
/* Most output kept from one ordinary process. */
#define RUN_OUTPUT_MAX     (4 * 1024 * 1024)
/* The large-output test's file size. */
#define BIG_BYTES          20000000
/* Extra guestd instances must answer /health within this long. */
#define INSTANCE_WAIT_MS   60000
/* Tests that take longer than this say how long they took (information only). */
#define SLOW_TEST_MS       5000
/* The main instance's default port (also on loopback TCP in pid1 mode). */
#define GUESTD_PORT        49983
/* vsock ports of the extra instances. */
#define AUTH_VSOCK_PORT    5001
#define TRUST_VSOCK_PORT   5002
#define AUTH_TOKEN         "secret"
/* envd's 401 body text. */
#define UNAUTHORIZED_MESSAGE \
    "unauthorized access, please provide a valid access token or method signing if supported"

static struct {
    const char *to;
    const char *guestd_path;
    const char *only; /* run only the tests whose name contains this (debugging) */
    bool child;
    bool no_shutdown;
    bool vsock;    /* --to is a vsock address: extra instances listen on vsock */
    bool pid1;     /* guestd said it is PID 1 */
    char work[64]; /* per-run scratch directory in /tmp */
    char idbase[64];
    struct client *c; /* unary calls */
} S = {
        .to = "vsock:1:49983",
};

/* --- TAP ------------------------------------------------------------------------------------- */

static struct {
    unsigned n;
    unsigned failed;
} tap;

/* The test that is running. */
static struct {
    bool failed;
    const char *skip;
    struct buf diag;
} cur;

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long) (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* Appends a message to the test's diagnostics, one `# ` line per line of text. */
static void vdiag(const char *fmt, va_list ap) _printf_(1, 0);
static void vdiag(const char *fmt, va_list ap)
{
    struct buf tmp;
    buf_init(&tmp, 64 * 1024);
    (void) buf_vprintf(&tmp, fmt, ap);
    const char *p = tmp.data ? tmp.data : "";
    do {
        const char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t) (nl - p) : strlen(p);
        (void) buf_printf(&cur.diag, "# %.*s\n", (int) n, p);
        p = nl ? nl + 1 : p + n;
    } while (*p);
    buf_free(&tmp);
}

static void diag(const char *fmt, ...) _printf_(1, 2);
static void diag(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vdiag(fmt, ap);
    va_end(ap);
}

static void failf(const char *fmt, ...) _printf_(1, 2);
static void failf(const char *fmt, ...)
{
    va_list ap;
    cur.failed = true;
    va_start(ap, fmt);
    vdiag(fmt, ap);
    va_end(ap);
}

#define CHECK(cond, ...) ((cond) ? true : (failf(__VA_ARGS__), false))

static void skip(const char *why)
{
    cur.skip = why;
}

static void run_test(const char *name, void (*fn)(void))
{
    buf_init(&cur.diag, 1024 * 1024);
    cur.failed = false;
    cur.skip = NULL;
    int64_t t0 = mono_ms();
    fn();
    int64_t ms = mono_ms() - t0;
    if (ms >= SLOW_TEST_MS)
        diag("took %" PRId64 " ms", ms);
    tap.n++;
    if (cur.failed) {
        tap.failed++;
        printf("not ok %u - %s\n", tap.n, name);
    } else if (cur.skip) {
        printf("ok %u - %s # SKIP %s\n", tap.n, name, cur.skip);
    } else {
        printf("ok %u - %s\n", tap.n, name);
    }
    if (cur.diag.len)
        fputs(cur.diag.data, stdout);
    fflush(stdout);
    buf_free(&cur.diag);
}

/* Data for a message: C escapes, at most ~300 bytes shown. Rotating static buffers. */
static const char *show(const void *p, size_t n)
{
    static char ring[4][1400];
    static unsigned k;
    char *out = ring[k++ % ARRAY_SIZE(ring)];
    const unsigned char *s = p;
    size_t o = 0, i;
    out[o++] = '"';
    for (i = 0; i < n && o < 1300; i++) {
        unsigned char ch = s[i];
        if (i >= 300)
            break;
        if (ch == '\n')
            o += (size_t) sprintf(out + o, "\\n");
        else if (ch == '\r')
            o += (size_t) sprintf(out + o, "\\r");
        else if (ch == '"' || ch == '\\')
            o += (size_t) sprintf(out + o, "\\%c", ch);
        else if (ch < 0x20 || ch >= 0x7f)
            o += (size_t) sprintf(out + o, "\\x%02x", ch);
        else
            out[o++] = (char) ch;
    }
    out[o++] = '"';
    if (i < n)
        o += (size_t) sprintf(out + o, "... (%zu bytes)", n);
    out[o] = '\0';
    return out;
}

static const char *showb(const struct buf *b)
{
    return show(b->data ? b->data : "", b->len);
}

static bool buf_is(const struct buf *b, const char *s)
{
    size_t n = strlen(s);
    return b->len == n && (n == 0 || memcmp(b->data, s, n) == 0);
}

static bool buf_has(const struct buf *b, const char *s)
{
    return b->data && memmem(b->data, b->len, s, strlen(s)) != NULL;
}

/* --- calls ----------------------------------------------------------------------------------- */

static void fail_call(const char *what, int r, struct client_error *e)
{
    if (r == -EREMOTEIO)
        failf("%s: [%s] %s (HTTP %d)", what, e && e->code ? e->code : "?",
              e && e->message ? e->message : "", e ? e->http_status : 0);
    else if (e && e->code)
        failf("%s: %s ([%s] %s)", what, strerror(-r), e->code, e->message ? e->message : "");
    else
        failf("%s: %s", what, strerror(-r));
    client_error_done(e);
}

static struct client *new_client(const char *addr, const char *token)
{
    struct client_options o = {
            .connect_timeout_ms = CONNECT_TIMEOUT_MS,
            .io_timeout_ms = IO_TIMEOUT_MS,
            .token = token,
    };
    struct client *c = NULL;
    int r = client_new(addr, &o, &c);
    if (r < 0) {
        failf("client_new(%s): %s", addr, strerror(-r));
        return NULL;
    }
    return c;
}

/* A unary call that must succeed; the answer goes to *ret (may be NULL). */
static int unary(struct client *c, const char *proc, enum client_codec codec,
                 const ProtobufCMessage *req, const ProtobufCMessageDescriptor *desc,
                 ProtobufCMessage **ret)
{
    struct client_call_options o = {.codec = codec};
    struct client_error e = {0};
    ProtobufCMessage *m = NULL;
    int r = client_unary(c, proc, &o, req, desc, &e, &m);
    if (r < 0) {
        fail_call(proc, r, &e);
        return r;
    }
    client_error_done(&e);
    if (ret)
        *ret = m;
    else
        protobuf_c_message_free_unpacked(m, NULL);
    return 0;
}

/* GET `target`; the status goes to *status and the body to `body` (may be NULL). */
static int http_get(struct client *c, const char *target, int *status, struct buf *body)
{
    struct client_request rq = {.method = "GET", .target = target};
    const struct client_response *resp = NULL;
    int r = client_fetch(c, &rq, body, &resp);
    if (r < 0)
        return r;
    *status = resp->status;
    return 0;
}

/* Builds a process.StartRequest in place (the struct points into itself: do not copy it). */
struct start_msg {
    Process__StartRequest req;
    Process__ProcessConfig cfg;
    Process__PTY pty;
    Process__PTY__Size size;
    char *args[16];
};

static void start_msg_init(struct start_msg *m, const char *cmd, const char *const *args)
{
    size_t n = 0;
    process__start_request__init(&m->req);
    process__process_config__init(&m->cfg);
    process__pty__init(&m->pty);
    process__pty__size__init(&m->size);
    m->cfg.cmd = (char *) cmd;
    while (args && args[n] && n < ARRAY_SIZE(m->args)) {
        m->args[n] = (char *) args[n];
        n++;
    }
    m->cfg.n_args = n;
    m->cfg.args = n ? m->args : NULL;
    m->req.process = &m->cfg;
}

static void start_msg_sh(struct start_msg *m, const char *script)
{
    const char *args[] = {"-c", script, NULL};
    start_msg_init(m, "sh", args);
}

static void start_msg_pty(struct start_msg *m, uint32_t cols, uint32_t rows)
{
    m->size.cols = cols;
    m->size.rows = rows;
    m->pty.size = &m->size;
    m->req._pty_case = PROCESS__START_REQUEST___PTY_PTY;
    m->req.pty = &m->pty;
}

/* A client-minted id that no earlier run of the suite used. */
static const char *mkid(char *out, size_t n, const char *what)
{
    (void) snprintf(out, n, "%s-%s", S.idbase, what);
    return out;
}

/* --- streams --------------------------------------------------------------------------------- */

enum until {
    UNTIL_END,   /* the end of the stream */
    UNTIL_START, /* the start event */
    UNTIL_TEXT,  /* `want` appears in `watch` */
};

typedef void (*event_fn)(void *ctx, const ProtobufCMessage *msg);
typedef bool (*started_fn)(const void *ctx);

/*
 * Reads messages into `fn` until `until` holds. Returns 1 when the stream ended cleanly, 2 when
 * the condition held, < 0 on failure (reported).
 */
static int pump(struct client_stream *s, event_fn fn, void *ctx, started_fn started,
                enum until until, const struct buf *watch, const char *want, int64_t deadline)
{
    for (;;) {
        if (until == UNTIL_START && started(ctx))
            return 2;
        if (until == UNTIL_TEXT && buf_has(watch, want))
            return 2;
        if (mono_ms() > deadline) {
            failf("timed out waiting for %s", until == UNTIL_END     ? "the end of the stream"
                                              : until == UNTIL_START ? "the start event"
                                                                     : show(want, strlen(want)));
            return -ETIMEDOUT;
        }
        ProtobufCMessage *m = NULL;
        struct client_error e = {0};
        int r = client_stream_recv(s, &e, &m);
        if (r < 0) {
            fail_call("stream", r, &e);
            return r;
        }
        client_error_done(&e);
        if (r == 0) {
            if (until != UNTIL_END) {
                failf("the stream ended before %s",
                      until == UNTIL_START ? "the start event" : show(want, strlen(want)));
                return -EPIPE;
            }
            return 1;
        }
        fn(ctx, m);
        protobuf_c_message_free_unpacked(m, NULL);
    }
}

/* An envd process stream (process.Process/Start), as received. */
struct erun {
    unsigned events;
    bool started, ended, after_end, bad_first, dup_start;
    uint32_t pid;
    struct buf out, err, pty;
    int32_t exit_code;
    bool exited;
    char status[128];
    bool has_error;
    char error[128];
};

static void erun_init(struct erun *r)
{
    memset(r, 0, sizeof(*r));
    buf_init(&r->out, RUN_OUTPUT_MAX);
    buf_init(&r->err, RUN_OUTPUT_MAX);
    buf_init(&r->pty, RUN_OUTPUT_MAX);
}

static void erun_done(struct erun *r)
{
    buf_free(&r->out);
    buf_free(&r->err);
    buf_free(&r->pty);
}

static void erun_event(void *ctx, const ProtobufCMessage *msg)
{
    struct erun *r = ctx;
    const Process__ProcessEvent *ev = ((const Process__StartResponse *) msg)->event;
    if (!ev || ev->event_case == PROCESS__PROCESS_EVENT__EVENT_KEEPALIVE)
        return;
    if (r->events++ == 0 && ev->event_case != PROCESS__PROCESS_EVENT__EVENT_START)
        r->bad_first = true;
    if (r->ended)
        r->after_end = true;
    switch (ev->event_case) {
    case PROCESS__PROCESS_EVENT__EVENT_START:
        if (r->started)
            r->dup_start = true;
        r->started = true;
        r->pid = ev->start ? ev->start->pid : 0;
        break;
    case PROCESS__PROCESS_EVENT__EVENT_DATA: {
        const Process__ProcessEvent__DataEvent *d = ev->data;
        if (!d)
            break;
        if (d->output_case == PROCESS__PROCESS_EVENT__DATA_EVENT__OUTPUT_STDOUT)
            (void) buf_append(&r->out, d->stdout.data, d->stdout.len);
        else if (d->output_case == PROCESS__PROCESS_EVENT__DATA_EVENT__OUTPUT_STDERR)
            (void) buf_append(&r->err, d->stderr.data, d->stderr.len);
        else if (d->output_case == PROCESS__PROCESS_EVENT__DATA_EVENT__OUTPUT_PTY)
            (void) buf_append(&r->pty, d->pty.data, d->pty.len);
        break;
    }
    case PROCESS__PROCESS_EVENT__EVENT_END:
        r->ended = true;
        if (ev->end) {
            r->exit_code = ev->end->exit_code;
            r->exited = ev->end->exited;
            (void) snprintf(r->status, sizeof(r->status), "%s", ev->end->status);
            r->has_error = ev->end->_error_case == PROCESS__PROCESS_EVENT__END_EVENT___ERROR_ERROR;
            if (r->has_error)
                (void) snprintf(r->error, sizeof(r->error), "%s", ev->end->error);
        }
        break;
    default:
        break;
    }
}

static bool erun_started(const void *ctx)
{
    return ((const struct erun *) ctx)->started;
}

static int erun_pump(struct client_stream *s, struct erun *r, enum until until,
                     const struct buf *watch, const char *want, int64_t deadline)
{
    return pump(s, erun_event, r, erun_started, until, watch, want, deadline);
}

/* Checks the shape of a finished envd stream and its end event. */
static bool erun_check_end(const struct erun *r, int32_t code, const char *status)
{
    bool ok = true;
    ok &= CHECK(r->started, "no start event");
    ok &= CHECK(!r->bad_first, "the first event was not the start event");
    ok &= CHECK(!r->dup_start, "two start events");
    ok &= CHECK(r->ended, "no end event");
    ok &= CHECK(!r->after_end, "events after the end event");
    if (!r->ended)
        return false;
    ok &= CHECK(r->exit_code == code, "exit code %d, expected %d", r->exit_code, code);
    ok &= CHECK(streq(r->status, status), "status \"%s\", expected \"%s\"", r->status, status);
    if (!ok)
        diag("stdout %s stderr %s pty %s", showb(&r->out), showb(&r->err), showb(&r->pty));
    return ok;
}

static struct client_stream *envd_open(struct client *c, enum client_codec codec,
                                       const struct start_msg *m)
{
    struct client_call_options o = {.codec = codec};
    struct client_error e = {0};
    struct client_stream *s = NULL;
    int r = client_stream_open_server(c, "/process.Process/Start", &o, &m->req.base,
                                      &process__start_response__descriptor, &e, &s);
    if (r < 0) {
        fail_call("process.Process/Start", r, &e);
        return NULL;
    }
    client_error_done(&e);
    return s;
}

/* Runs a process to its end over a connection of its own. Returns 0 when the stream ended. */
static int envd_run(enum client_codec codec, const struct start_msg *m, struct erun *r)
{
    _cleanup_client_ struct client *c = new_client(S.to, NULL);
    if (!c)
        return -ENOMEM;
    _cleanup_client_stream_ struct client_stream *s = envd_open(c, codec, m);
    if (!s)
        return -EIO;
    int k = erun_pump(s, r, UNTIL_END, NULL, NULL, mono_ms() + STREAM_DEADLINE_MS);
    return k == 1 ? 0 : -EIO;
}

/* Runs `sh -c script`, which must exit 0; its stdout goes to `out` (may be NULL). */
static int sh(const char *script, struct buf *out)
{
    struct start_msg m;
    struct erun r;
    int ret = -EIO;
    start_msg_sh(&m, script);
    erun_init(&r);
    if (envd_run(CLIENT_CODEC_JSON, &m, &r) < 0) {
        diag("while running %s", show(script, strlen(script)));
        goto out;
    }
    if (!r.ended || r.exit_code != 0 || !r.exited) {
        failf("%s ended with \"%s\"; stdout %s stderr %s", show(script, strlen(script)), r.status,
              showb(&r.out), showb(&r.err));
        goto out;
    }
    if (out)
        (void) buf_append(out, r.out.data ? r.out.data : "", r.out.len);
    ret = 0;
out:
    erun_done(&r);
    return ret;
}

/* Like sh() with printf-style script building. */
static int shf(struct buf *out, const char *fmt, ...) _printf_(2, 3);
static int shf(struct buf *out, const char *fmt, ...)
{
    char script[4096];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(script, sizeof(script), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t) n >= sizeof(script)) {
        failf("script too long");
        return -E2BIG;
    }
    return sh(script, out);
}

/* Strips trailing newlines in place. */
static void chomp(struct buf *b)
{
    while (b->len && (b->data[b->len - 1] == '\n' || b->data[b->len - 1] == '\r'))
        b->data[--b->len] = '\0';
}

static Process__ProcessSelector *envd_pid(Process__ProcessSelector *sel, uint32_t pid)
{
    process__process_selector__init(sel);
    sel->selector_case = PROCESS__PROCESS_SELECTOR__SELECTOR_PID;
    sel->pid = pid;
    return sel;
}

static int envd_send_input(enum client_codec codec, uint32_t pid, bool pty, const void *p, size_t n)
{
    Process__SendInputRequest req = PROCESS__SEND_INPUT_REQUEST__INIT;
    Process__ProcessSelector sel;
    Process__ProcessInput in = PROCESS__PROCESS_INPUT__INIT;
    ProtobufCBinaryData bytes = {n, (uint8_t *) p};
    req.process = envd_pid(&sel, pid);
    if (pty) {
        in.input_case = PROCESS__PROCESS_INPUT__INPUT_PTY;
        in.pty = bytes;
    } else {
        in.input_case = PROCESS__PROCESS_INPUT__INPUT_STDIN;
        in.stdin = bytes;
    }
    req.input = &in;
    return unary(S.c, "/process.Process/SendInput", codec, &req.base,
                 &process__send_input_response__descriptor, NULL);
}

/* A guestd.v1 process stream (Start or Attach), as received. */
struct grun {
    unsigned events;
    bool started, ended, after_end, bad_first;
    uint32_t pid;
    char exec_id[160];
    struct buf out, err, pty;
    uint64_t next[4]; /* by Guestd__V1__Stream: the offset the next data event must carry */
    bool offset_error;
    char offset_msg[200];
    unsigned gaps, data_events;
    uint64_t lost;
    bool hash_stdout; /* hash stdout instead of keeping it */
    struct sha256_ctx sha;
    uint64_t hashed;
    Guestd__V1__ExitCause cause;
    int32_t exit_code;
    char status[128];
    bool output_cut;
    uint64_t stdout_bytes, stderr_bytes;
    struct buf tail;
};

static void grun_init(struct grun *r)
{
    memset(r, 0, sizeof(*r));
    buf_init(&r->out, RUN_OUTPUT_MAX);
    buf_init(&r->err, RUN_OUTPUT_MAX);
    buf_init(&r->pty, RUN_OUTPUT_MAX);
    buf_init(&r->tail, 8192);
    sha256_init(&r->sha);
}

static void grun_done(struct grun *r)
{
    buf_free(&r->out);
    buf_free(&r->err);
    buf_free(&r->pty);
    buf_free(&r->tail);
}

static void grun_offset_error(struct grun *r, const char *what, unsigned st, uint64_t got)
{
    if (r->offset_error)
        return;
    r->offset_error = true;
    (void) snprintf(r->offset_msg, sizeof(r->offset_msg),
                    "%s on stream %u at offset %" PRIu64 ", expected %" PRIu64, what, st, got,
                    r->next[st]);
}

static void grun_event(void *ctx, const ProtobufCMessage *msg)
{
    struct grun *r = ctx;
    const Guestd__V1__ProcessEvent *ev = (const Guestd__V1__ProcessEvent *) msg;
    if (ev->event_case == GUESTD__V1__PROCESS_EVENT__EVENT_KEEPALIVE)
        return;
    if (r->events++ == 0 && ev->event_case != GUESTD__V1__PROCESS_EVENT__EVENT_START)
        r->bad_first = true;
    if (r->ended)
        r->after_end = true;
    switch (ev->event_case) {
    case GUESTD__V1__PROCESS_EVENT__EVENT_START:
        r->started = true;
        if (ev->start) {
            r->pid = ev->start->pid;
            (void) snprintf(r->exec_id, sizeof(r->exec_id), "%s", ev->start->exec_id);
        }
        break;
    case GUESTD__V1__PROCESS_EVENT__EVENT_DATA: {
        const Guestd__V1__ProcessEvent__Data *d = ev->data;
        if (!d || d->stream < 1 || d->stream > 3) {
            grun_offset_error(r, "data event without a stream", 0, 0);
            break;
        }
        unsigned st = (unsigned) d->stream;
        r->data_events++;
        if (d->offset != r->next[st])
            grun_offset_error(r, "discontiguous data", st, d->offset);
        r->next[st] = d->offset + d->data.len;
        if (st == GUESTD__V1__STREAM__STREAM_STDOUT && r->hash_stdout) {
            sha256_update(&r->sha, d->data.len, d->data.data);
            r->hashed += d->data.len;
        } else {
            struct buf *b = st == GUESTD__V1__STREAM__STREAM_STDOUT   ? &r->out
                            : st == GUESTD__V1__STREAM__STREAM_STDERR ? &r->err
                                                                      : &r->pty;
            (void) buf_append(b, d->data.data, d->data.len);
        }
        break;
    }
    case GUESTD__V1__PROCESS_EVENT__EVENT_GAP: {
        const Guestd__V1__ProcessEvent__Gap *g = ev->gap;
        r->gaps++;
        if (!g || g->stream < 1 || g->stream > 3)
            break;
        unsigned st = (unsigned) g->stream;
        if (g->offset != r->next[st])
            grun_offset_error(r, "gap at an unexpected offset", st, g->offset);
        r->lost += g->lost;
        r->next[st] = g->offset + g->lost;
        break;
    }
    case GUESTD__V1__PROCESS_EVENT__EVENT_END:
        r->ended = true;
        if (ev->end) {
            r->cause = ev->end->cause;
            r->exit_code = ev->end->exit_code;
            (void) snprintf(r->status, sizeof(r->status), "%s", ev->end->status);
            r->output_cut = ev->end->output_cut;
            r->stdout_bytes = ev->end->stdout_bytes;
            r->stderr_bytes = ev->end->stderr_bytes;
            buf_reset(&r->tail);
            (void) buf_append(&r->tail, ev->end->tail.data, ev->end->tail.len);
        }
        break;
    default:
        break;
    }
}

static bool grun_started(const void *ctx)
{
    return ((const struct grun *) ctx)->started;
}

static int grun_pump(struct client_stream *s, struct grun *r, enum until until,
                     const struct buf *watch, const char *want, int64_t deadline)
{
    return pump(s, grun_event, r, grun_started, until, watch, want, deadline);
}

static bool grun_check_end(const struct grun *r, int32_t code, const char *status)
{
    bool ok = true;
    ok &= CHECK(r->started, "no start event");
    ok &= CHECK(!r->bad_first, "the first event was not the start event");
    ok &= CHECK(r->ended, "no end event");
    ok &= CHECK(!r->after_end, "events after the end event");
    ok &= CHECK(!r->offset_error, "%s", r->offset_msg);
    if (!r->ended)
        return false;
    ok &= CHECK(r->exit_code == code, "exit code %d, expected %d", r->exit_code, code);
    ok &= CHECK(streq(r->status, status), "status \"%s\", expected \"%s\"", r->status, status);
    if (!ok)
        diag("stdout %s stderr %s tail %s", showb(&r->out), showb(&r->err), showb(&r->tail));
    return ok;
}

static Guestd__V1__Selector *guestd_exec_id(Guestd__V1__Selector *sel, const char *exec_id)
{
    guestd__v1__selector__init(sel);
    sel->selector_case = GUESTD__V1__SELECTOR__SELECTOR_EXEC_ID;
    sel->exec_id = (char *) exec_id;
    return sel;
}

/* guestd.v1.Process/Start of `m` under `exec_id`. */
static struct client_stream *guestd_open(struct client *c, enum client_codec codec,
                                         struct start_msg *m, const char *exec_id,
                                         Guestd__V1__OutputPolicy policy,
                                         struct client_error *ret_e)
{
    Guestd__V1__StartRequest req = GUESTD__V1__START_REQUEST__INIT;
    struct client_call_options o = {.codec = codec};
    struct client_error e = {0};
    struct client_stream *s = NULL;
    req.start = &m->req;
    req.exec_id = (char *) exec_id;
    req.output_policy = policy;
    int r = client_stream_open_server(c, "/guestd.v1.Process/Start", &o, &req.base,
                                      &guestd__v1__process_event__descriptor, &e, &s);
    if (r < 0) {
        if (ret_e) {
            *ret_e = e;
            return NULL;
        }
        fail_call("guestd.v1.Process/Start", r, &e);
        return NULL;
    }
    client_error_done(&e);
    return s;
}

static struct client_stream *guestd_attach(struct client *c, enum client_codec codec,
                                           const char *exec_id, uint64_t out_off, uint64_t err_off)
{
    Guestd__V1__AttachRequest req = GUESTD__V1__ATTACH_REQUEST__INIT;
    Guestd__V1__Selector sel;
    struct client_call_options o = {.codec = codec};
    struct client_error e = {0};
    struct client_stream *s = NULL;
    req.process = guestd_exec_id(&sel, exec_id);
    req.stdout_offset = out_off;
    req.stderr_offset = err_off;
    int r = client_stream_open_server(c, "/guestd.v1.Process/Attach", &o, &req.base,
                                      &guestd__v1__process_event__descriptor, &e, &s);
    if (r < 0) {
        fail_call("guestd.v1.Process/Attach", r, &e);
        return NULL;
    }
    client_error_done(&e);
    return s;
}

/* Starts `m` under `exec_id`, reads only the start event and leaves (the process goes on). */
static int guestd_launch(struct start_msg *m, const char *exec_id, uint32_t *ret_pid)
{
    _cleanup_client_ struct client *c = new_client(S.to, NULL);
    if (!c)
        return -ENOMEM;
    _cleanup_client_stream_ struct client_stream *s =
            guestd_open(c, CLIENT_CODEC_PROTO, m, exec_id, 0, NULL);
    if (!s)
        return -EIO;
    struct grun r;
    grun_init(&r);
    int k = grun_pump(s, &r, UNTIL_START, NULL, NULL, mono_ms() + STREAM_DEADLINE_MS);
    if (ret_pid)
        *ret_pid = r.pid;
    grun_done(&r);
    return k == 2 ? 0 : -EIO;
}

/* Waits for the end of the process `exec_id` (Attach from 0) and collects it into `r`. */
static int guestd_wait(const char *exec_id, struct grun *r, int64_t timeout_ms)
{
    _cleanup_client_ struct client *c = new_client(S.to, NULL);
    if (!c)
        return -ENOMEM;
    _cleanup_client_stream_ struct client_stream *s =
            guestd_attach(c, CLIENT_CODEC_PROTO, exec_id, 0, 0);
    if (!s)
        return -EIO;
    return grun_pump(s, r, UNTIL_END, NULL, NULL, mono_ms() + timeout_ms) == 1 ? 0 : -EIO;
}

static int guestd_signal(const char *exec_id, int sig, Guestd__V1__SignalScope scope)
{
    Guestd__V1__SignalRequest req = GUESTD__V1__SIGNAL_REQUEST__INIT;
    Guestd__V1__Selector sel;
    req.process = guestd_exec_id(&sel, exec_id);
    req.signal = (uint32_t) sig;
    req.scope = scope;
    return unary(S.c, "/guestd.v1.Process/Signal", CLIENT_CODEC_JSON, &req.base,
                 &guestd__v1__signal_response__descriptor, NULL);
}

/* guestd.v1.Process/Result of `exec_id`; the answer must be freed by the caller. */
static Guestd__V1__ResultResponse *guestd_result(const char *exec_id)
{
    Guestd__V1__ResultRequest req = GUESTD__V1__RESULT_REQUEST__INIT;
    Guestd__V1__Selector sel;
    ProtobufCMessage *m = NULL;
    req.process = guestd_exec_id(&sel, exec_id);
    if (unary(S.c, "/guestd.v1.Process/Result", CLIENT_CODEC_PROTO, &req.base,
              &guestd__v1__result_response__descriptor, &m) < 0)
        return NULL;
    return (Guestd__V1__ResultResponse *) m;
}

/* --- tests: basics --------------------------------------------------------------------------- */

static void test_health(void)
{
    int status = 0;
    int r = http_get(S.c, "/health", &status, NULL);
    if (!CHECK(r == 0, "GET /health: %s", strerror(-r)))
        return;
    CHECK(status == 204, "GET /health answered %d, expected 204", status);
}

static void test_info(void)
{
    Guestd__V1__InfoRequest req = GUESTD__V1__INFO_REQUEST__INIT;
    ProtobufCMessage *m1 = NULL, *m2 = NULL;
    if (unary(S.c, "/guestd.v1.System/Info", CLIENT_CODEC_PROTO, &req.base,
              &guestd__v1__info_response__descriptor, &m1) < 0)
        return;
    Guestd__V1__InfoResponse *info = (Guestd__V1__InfoResponse *) m1;
    S.pid1 = info->pid1;
    diag("guestd %s (envd %s), boot id %s, pid1 %s, generation %" PRIu64, info->version,
         info->envd_version, info->boot_id, info->pid1 ? "true" : "false", info->generation);
    CHECK(*info->version, "empty version");
    CHECK(*info->boot_id, "empty boot id");
    if (S.child)
        CHECK(!info->pid1, "pid1 is true but guestd runs as a child (--child)");
    else
        CHECK(info->pid1, "pid1 is false in pid1 mode");
    /* The same over JSON. */
    if (unary(S.c, "/guestd.v1.System/Info", CLIENT_CODEC_JSON, &req.base,
              &guestd__v1__info_response__descriptor, &m2) == 0) {
        Guestd__V1__InfoResponse *j = (Guestd__V1__InfoResponse *) m2;
        CHECK(streq(j->boot_id, info->boot_id), "boot id over JSON %s differs from proto %s",
              j->boot_id, info->boot_id);
        CHECK(j->pid1 == info->pid1, "pid1 differs between codecs");
        protobuf_c_message_free_unpacked(m2, NULL);
    }
    protobuf_c_message_free_unpacked(m1, NULL);
}

static void process_run(enum client_codec codec)
{
    struct start_msg m;
    struct erun r;
    start_msg_sh(&m, "echo out; echo err >&2; exit 3");
    erun_init(&r);
    if (envd_run(codec, &m, &r) == 0) {
        erun_check_end(&r, 3, "exit status 3");
        CHECK(r.pid > 0, "start event without a pid");
        CHECK(buf_is(&r.out, "out\n"), "stdout %s, expected \"out\\n\"", showb(&r.out));
        CHECK(buf_is(&r.err, "err\n"), "stderr %s, expected \"err\\n\"", showb(&r.err));
        CHECK(r.exited, "exited is false");
        CHECK(r.has_error && streq(r.error, "exit status 3"), "error %s%s%s, expected \"%s\"",
              r.has_error ? "\"" : "", r.has_error ? r.error : "absent", r.has_error ? "\"" : "",
              "exit status 3");
    }
    erun_done(&r);
}

static void test_process_run_json(void)
{
    process_run(CLIENT_CODEC_JSON);
}

static void test_process_run_proto(void)
{
    process_run(CLIENT_CODEC_PROTO);
}

static void test_stdin(void)
{
    struct start_msg m;
    struct erun r;
    const char *args[] = {NULL};
    start_msg_init(&m, "cat", args);
    m.req._stdin_case = PROCESS__START_REQUEST___STDIN_STDIN;
    m.req.stdin = true;
    erun_init(&r);
    _cleanup_client_ struct client *c = new_client(S.to, NULL);
    _cleanup_client_stream_ struct client_stream *s =
            c ? envd_open(c, CLIENT_CODEC_JSON, &m) : NULL;
    int64_t deadline = mono_ms() + STREAM_DEADLINE_MS;
    if (!s || erun_pump(s, &r, UNTIL_START, NULL, NULL, deadline) != 2)
        goto out;
    if (envd_send_input(CLIENT_CODEC_JSON, r.pid, false, "hello\n", 6) < 0)
        goto out;
    Process__CloseStdinRequest creq = PROCESS__CLOSE_STDIN_REQUEST__INIT;
    Process__ProcessSelector sel;
    creq.process = envd_pid(&sel, r.pid);
    if (unary(S.c, "/process.Process/CloseStdin", CLIENT_CODEC_JSON, &creq.base,
              &process__close_stdin_response__descriptor, NULL) < 0)
        goto out;
    if (erun_pump(s, &r, UNTIL_END, NULL, NULL, deadline) != 1)
        goto out;
    erun_check_end(&r, 0, "exit status 0");
    CHECK(buf_is(&r.out, "hello\n"), "stdout %s, expected \"hello\\n\"", showb(&r.out));
    CHECK(!r.has_error, "error set on success: %s", r.error);
out:
    erun_done(&r);
}

static void test_pty_size(void)
{
    struct start_msg m;
    struct erun r;
    start_msg_sh(&m, "stty size");
    start_msg_pty(&m, 100, 30);
    erun_init(&r);
    if (envd_run(CLIENT_CODEC_JSON, &m, &r) == 0) {
        erun_check_end(&r, 0, "exit status 0");
        CHECK(buf_is(&r.pty, "30 100\r\n"), "pty output %s, expected \"30 100\\r\\n\"",
              showb(&r.pty));
        CHECK(r.out.len == 0 && r.err.len == 0, "stdout/stderr data on a PTY: %s %s", showb(&r.out),
              showb(&r.err));
    }
    erun_done(&r);
}

static void test_pty_echo(void)
{
    struct start_msg m;
    struct erun r;
    const char *args[] = {NULL};
    start_msg_init(&m, "cat", args);
    start_msg_pty(&m, 80, 24);
    erun_init(&r);
    _cleanup_client_ struct client *c = new_client(S.to, NULL);
    _cleanup_client_stream_ struct client_stream *s =
            c ? envd_open(c, CLIENT_CODEC_PROTO, &m) : NULL;
    int64_t deadline = mono_ms() + STREAM_DEADLINE_MS;
    if (!s || erun_pump(s, &r, UNTIL_START, NULL, NULL, deadline) != 2)
        goto out;
    if (envd_send_input(CLIENT_CODEC_PROTO, r.pid, true, "hello\n", 6) < 0)
        goto out;
    /* The terminal echoes the line, then cat writes it back. */
    if (erun_pump(s, &r, UNTIL_TEXT, &r.pty, "hello\r\nhello\r\n", deadline) != 2) {
        diag("pty output so far %s", showb(&r.pty));
        goto out;
    }
    /* ^D at the start of a line: EOF for cat. */
    if (envd_send_input(CLIENT_CODEC_JSON, r.pid, true, "\x04", 1) < 0)
        goto out;
    if (erun_pump(s, &r, UNTIL_END, NULL, NULL, deadline) != 1)
        goto out;
    erun_check_end(&r, 0, "exit status 0");
out:
    erun_done(&r);
}

static void test_pty_resize(void)
{
    struct start_msg m;
    struct erun r;
    start_msg_sh(&m, "read x; stty size");
    start_msg_pty(&m, 100, 30);
    erun_init(&r);
    _cleanup_client_ struct client *c = new_client(S.to, NULL);
    _cleanup_client_stream_ struct client_stream *s =
            c ? envd_open(c, CLIENT_CODEC_JSON, &m) : NULL;
    int64_t deadline = mono_ms() + STREAM_DEADLINE_MS;
    if (!s || erun_pump(s, &r, UNTIL_START, NULL, NULL, deadline) != 2)
        goto out;
    Process__UpdateRequest up = PROCESS__UPDATE_REQUEST__INIT;
    Process__ProcessSelector sel;
    Process__PTY pty = PROCESS__PTY__INIT;
    Process__PTY__Size size = PROCESS__PTY__SIZE__INIT;
    size.cols = 120;
    size.rows = 40;
    pty.size = &size;
    up.process = envd_pid(&sel, r.pid);
    up._pty_case = PROCESS__UPDATE_REQUEST___PTY_PTY;
    up.pty = &pty;
    if (unary(S.c, "/process.Process/Update", CLIENT_CODEC_JSON, &up.base,
              &process__update_response__descriptor, NULL) < 0)
        goto out;
    if (envd_send_input(CLIENT_CODEC_JSON, r.pid, true, "\n", 1) < 0)
        goto out;
    if (erun_pump(s, &r, UNTIL_END, NULL, NULL, deadline) != 1)
        goto out;
    erun_check_end(&r, 0, "exit status 0");
    CHECK(buf_has(&r.pty, "40 120\r\n"), "pty output %s does not report 40 rows, 120 cols",
          showb(&r.pty));
out:
    erun_done(&r);
}

static void test_sigkill(void)
{
    struct start_msg m;
    struct erun r;
    const char *args[] = {"100", NULL};
    start_msg_init(&m, "sleep", args);
    erun_init(&r);
    _cleanup_client_ struct client *c = new_client(S.to, NULL);
    _cleanup_client_stream_ struct client_stream *s =
            c ? envd_open(c, CLIENT_CODEC_PROTO, &m) : NULL;
    int64_t deadline = mono_ms() + STREAM_DEADLINE_MS;
    if (!s || erun_pump(s, &r, UNTIL_START, NULL, NULL, deadline) != 2)
        goto out;
    Process__SendSignalRequest req = PROCESS__SEND_SIGNAL_REQUEST__INIT;
    Process__ProcessSelector sel;
    req.process = envd_pid(&sel, r.pid);
    req.signal = PROCESS__SIGNAL__SIGNAL_SIGKILL;
    if (unary(S.c, "/process.Process/SendSignal", CLIENT_CODEC_PROTO, &req.base,
              &process__send_signal_response__descriptor, NULL) < 0)
        goto out;
    if (erun_pump(s, &r, UNTIL_END, NULL, NULL, deadline) != 1)
        goto out;
    CHECK(r.ended && streq(r.status, "signal: killed"),
          "status \"%s\", expected \"signal: killed\"", r.status);
    CHECK(!r.exited, "exited is true for a killed process");
    CHECK(!r.bad_first && !r.after_end, "bad event order");
out:
    erun_done(&r);
}

static void test_sigterm_group(void)
{
    char id[128];
    struct start_msg m;
    struct grun r;
    start_msg_sh(&m, "sleep 100 & echo $!; wait");
    mkid(id, sizeof(id), "sigterm-group");
    grun_init(&r);
    _cleanup_client_ struct client *c = new_client(S.to, NULL);
    _cleanup_client_stream_ struct client_stream *s =
            c ? guestd_open(c, CLIENT_CODEC_JSON, &m, id, 0, NULL) : NULL;
    int64_t deadline = mono_ms() + STREAM_DEADLINE_MS;
    if (!s || grun_pump(s, &r, UNTIL_TEXT, &r.out, "\n", deadline) != 2)
        goto out;
    long bg = strtol(r.out.data, NULL, 10);
    if (!CHECK(bg > 1, "the shell printed %s instead of a pid", showb(&r.out)))
        goto out;
    if (guestd_signal(id, 15, GUESTD__V1__SIGNAL_SCOPE__SIGNAL_SCOPE_GROUP) < 0)
        goto out;
    if (grun_pump(s, &r, UNTIL_END, NULL, NULL, deadline) != 1)
        goto out;
    CHECK(r.ended && streq(r.status, "signal: terminated"),
          "status \"%s\", expected \"signal: terminated\"", r.status);
    CHECK(r.cause == GUESTD__V1__EXIT_CAUSE__EXIT_CAUSE_SIGNALED_BY_CLIENT,
          "cause %d, expected EXIT_CAUSE_SIGNALED_BY_CLIENT", (int) r.cause);
    /* The background sleep was in the group: it must be gone (or a zombie awaiting its reaper). */
    struct buf o;
    buf_init(&o, 4096);
    if (shf(&o,
            "i=0; while [ $i -lt 100 ]; do "
            "[ -e /proc/%ld ] || exit 0; "
            "{ read -r l < /proc/%ld/stat; } 2>/dev/null || exit 0; "
            "r=${l##*) }; set -- $r; [ \"$1\" = Z ] && exit 0; "
            "sleep 0.1; i=$((i+1)); done; echo \"still alive: $l\"; exit 0",
            bg, bg) == 0)
        CHECK(o.len == 0, "the group's background sleep (pid %ld) survived SIGTERM: %s", bg,
              showb(&o));
    buf_free(&o);
out:
    grun_done(&r);
}

/* --- tests: reconnect, replay, idempotency ------------------------------------------------- */

static struct {
    char id[128];
    char runs[128];
    char script[256];
    uint32_t pid;
    bool launched;
} replay;

static void replay_msg(struct start_msg *m)
{
    start_msg_sh(m, replay.script);
}

static void test_replay(void)
{
    struct start_msg m;
    struct grun r;
    mkid(replay.id, sizeof(replay.id), "replay");
    (void) snprintf(replay.runs, sizeof(replay.runs), "%s/runs", S.work);
    (void) snprintf(replay.script, sizeof(replay.script),
                    "echo x >> %s; echo one; sleep 1; echo two", replay.runs);
    replay_msg(&m);
    grun_init(&r);
    {
        /* Start, read only the start event, drop the connection. */
        _cleanup_client_ struct client *c = new_client(S.to, NULL);
        _cleanup_client_stream_ struct client_stream *s =
                c ? guestd_open(c, CLIENT_CODEC_JSON, &m, replay.id, 0, NULL) : NULL;
        if (!s || grun_pump(s, &r, UNTIL_START, NULL, NULL, mono_ms() + STREAM_DEADLINE_MS) != 2)
            goto out;
        replay.launched = true;
        replay.pid = r.pid;
        CHECK(r.pid > 0, "start event without a pid");
        CHECK(streq(r.exec_id, replay.id), "start event exec id \"%s\", expected \"%s\"", r.exec_id,
              replay.id);
        s = client_stream_free(s);
        client_disconnect(c);
    }
    grun_done(&r);
    grun_init(&r);
    {
        _cleanup_client_ struct client *c = new_client(S.to, NULL);
        _cleanup_client_stream_ struct client_stream *s =
                c ? guestd_attach(c, CLIENT_CODEC_PROTO, replay.id, 0, 0) : NULL;
        if (!s || grun_pump(s, &r, UNTIL_END, NULL, NULL, mono_ms() + STREAM_DEADLINE_MS) != 1)
            goto out;
        grun_check_end(&r, 0, "exit status 0");
        CHECK(buf_is(&r.out, "one\ntwo\n"), "Attach from 0 replayed stdout %s", showb(&r.out));
        CHECK(r.gaps == 0, "%u gap events", r.gaps);
        CHECK(r.pid == replay.pid, "Attach start event pid %u, Start said %u", r.pid, replay.pid);
        CHECK(r.cause == GUESTD__V1__EXIT_CAUSE__EXIT_CAUSE_EXITED, "cause %d, expected EXITED",
              (int) r.cause);
        CHECK(r.stdout_bytes == 8, "result stdout_bytes %" PRIu64 ", expected 8", r.stdout_bytes);
    }
    grun_done(&r);
    grun_init(&r);
    {
        /* From an offset: only "two\n", at offset 4. */
        _cleanup_client_ struct client *c = new_client(S.to, NULL);
        _cleanup_client_stream_ struct client_stream *s =
                c ? guestd_attach(c, CLIENT_CODEC_JSON, replay.id, 4, 0) : NULL;
        r.next[GUESTD__V1__STREAM__STREAM_STDOUT] = 4;
        if (!s || grun_pump(s, &r, UNTIL_END, NULL, NULL, mono_ms() + STREAM_DEADLINE_MS) != 1)
            goto out;
        grun_check_end(&r, 0, "exit status 0");
        CHECK(buf_is(&r.out, "two\n"), "Attach from offset 4 replayed stdout %s", showb(&r.out));
    }
out:
    grun_done(&r);
}

static void test_retry(void)
{
    struct start_msg m;
    struct grun r;
    if (!CHECK(replay.launched, "needs the process of the replay test, which did not start"))
        return;
    replay_msg(&m);
    grun_init(&r);
    {
        _cleanup_client_ struct client *c = new_client(S.to, NULL);
        _cleanup_client_stream_ struct client_stream *s =
                c ? guestd_open(c, CLIENT_CODEC_PROTO, &m, replay.id, 0, NULL) : NULL;
        if (!s || grun_pump(s, &r, UNTIL_END, NULL, NULL, mono_ms() + STREAM_DEADLINE_MS) != 1)
            goto out;
        grun_check_end(&r, 0, "exit status 0");
        CHECK(buf_is(&r.out, "one\ntwo\n"), "the retry replayed stdout %s", showb(&r.out));
        CHECK(r.pid == replay.pid, "the retry's start event has pid %u, the original %u", r.pid,
              replay.pid);
    }
    struct buf o;
    buf_init(&o, 4096);
    if (shf(&o, "cat %s", replay.runs) == 0)
        CHECK(buf_is(&o, "x\n"), "the command ran more than once: %s holds %s", replay.runs,
              showb(&o));
    buf_free(&o);
    {
        /* The same exec id with another command is refused. */
        struct start_msg other;
        struct client_error e = {0};
        start_msg_sh(&other, "echo other");
        _cleanup_client_ struct client *c = new_client(S.to, NULL);
        _cleanup_client_stream_ struct client_stream *s =
                c ? guestd_open(c, CLIENT_CODEC_JSON, &other, replay.id, 0, &e) : NULL;
        if (s) {
            /* An error may also come as the end of the stream. */
            ProtobufCMessage *msg = NULL;
            int k;
            while ((k = client_stream_recv(s, &e, &msg)) == 1)
                protobuf_c_message_free_unpacked(msg, NULL);
            CHECK(k == -EREMOTEIO, "a different command under a used exec id was accepted");
        }
        CHECK(!e.code || streq(e.code, "failed_precondition"),
              "a different command under a used exec id failed with %s (%s), expected "
              "failed_precondition",
              e.code, e.message ? e.message : "");
        client_error_done(&e);
    }
out:
    grun_done(&r);
}

/* --- tests: large output --------------------------------------------------------------------- */

static char big_path[128];

static void test_large_output(void)
{
    struct buf o;
    struct start_msg m;
    struct grun r;
    char want[SHA256_DIGEST_SIZE * 2 + 1], got[SHA256_DIGEST_SIZE * 2 + 1], id[128];
    uint8_t d[SHA256_DIGEST_SIZE];
    (void) snprintf(big_path, sizeof(big_path), "%s/big", S.work);
    buf_init(&o, 4096);
    grun_init(&r);
    if (shf(NULL, "head -c %d /dev/urandom > %s", BIG_BYTES, big_path) < 0)
        goto out;
    if (shf(&o, "sha256sum %s", big_path) < 0)
        goto out;
    if (!CHECK(o.len >= 64, "sha256sum printed %s", showb(&o)))
        goto out;
    memcpy(want, o.data, 64);
    want[64] = '\0';

    /* Every byte must arrive: guestd.v1 with the block policy never drops output. */
    const char *args[] = {big_path, NULL};
    start_msg_init(&m, "cat", args);
    r.hash_stdout = true;
    int64_t t0 = mono_ms();
    {
        _cleanup_client_ struct client *c = new_client(S.to, NULL);
        _cleanup_client_stream_ struct client_stream *s =
                c ? guestd_open(c, CLIENT_CODEC_PROTO, &m, mkid(id, sizeof(id), "big"),
                                GUESTD__V1__OUTPUT_POLICY__OUTPUT_POLICY_BLOCK, NULL)
                  : NULL;
        if (!s || grun_pump(s, &r, UNTIL_END, NULL, NULL, mono_ms() + BIG_DEADLINE_MS) != 1)
            goto out;
    }
    int64_t ms = mono_ms() - t0;
    diag("%d bytes in %" PRId64 " ms, %u data events", BIG_BYTES, ms, r.data_events);
    grun_check_end(&r, 0, "exit status 0");
    CHECK(r.gaps == 0, "%u gap events, %" PRIu64 " bytes lost", r.gaps, r.lost);
    CHECK(r.hashed == BIG_BYTES, "received %" PRIu64 " bytes, expected %d", r.hashed, BIG_BYTES);
    CHECK(r.stdout_bytes == BIG_BYTES, "result stdout_bytes %" PRIu64, r.stdout_bytes);
    sha256_digest(&r.sha, sizeof(d), d);
    for (size_t i = 0; i < sizeof(d); i++)
        (void) sprintf(got + 2 * i, "%02x", d[i]);
    CHECK(streq(got, want), "sha256 of the stream %s, of the file %s", got, want);
out:
    buf_free(&o);
    grun_done(&r);
}

/* --- tests: abrupt client resets ------------------------------------------------------------- */

static int raw_connect(void)
{
    struct client_addr a;
    if (client_addr_parse(S.to, &a) < 0 || a.kind == CLIENT_ADDR_FC) {
        failf("cannot open a raw connection to %s", S.to);
        return -1;
    }
    int fd = socket(a.sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        failf("socket: %s", strerror(errno));
        return -1;
    }
    struct timeval tv = {IO_TIMEOUT_MS / 1000, 0};
    (void) setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    (void) setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (connect(fd, (struct sockaddr *) &a.sa, a.sa_len) < 0) {
        failf("connect %s: %s", S.to, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

/* Closes with a reset (SO_LINGER 0) where the transport has one. */
static void raw_reset(int fd)
{
    struct linger l = {1, 0};
    (void) setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
    close(fd);
}

static bool raw_send(int fd, const void *p, size_t n)
{
    const char *s = p;
    while (n) {
        ssize_t k = send(fd, s, n, MSG_NOSIGNAL);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            failf("send: %s", strerror(errno));
            return false;
        }
        s += k;
        n -= (size_t) k;
    }
    return true;
}

/*
 * Reads until `want` bytes came, the text `until` appeared, the peer closed or `max_ms` passed;
 * returns the count read. Nothing here is an assertion: callers reset the connection anyway.
 */
static size_t raw_recv(int fd, size_t want, const char *until, int max_ms)
{
    struct buf b;
    buf_init(&b, 16 * 1024 * 1024);
    size_t total = 0;
    char tmp[65536];
    int64_t deadline = mono_ms() + max_ms;
    while (total < want) {
        int64_t left = deadline - mono_ms();
        struct pollfd pfd = {fd, POLLIN, 0};
        if (left <= 0)
            break;
        int k = poll(&pfd, 1, (int) left);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            break;
        ssize_t n = recv(fd, tmp, sizeof(tmp), MSG_DONTWAIT);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n <= 0)
            break;
        total += (size_t) n;
        if (until) {
            (void) buf_append(&b, tmp, (size_t) n);
            if (buf_has(&b, until))
                break;
        }
    }
    buf_free(&b);
    return total;
}

/* A Connect server-stream request for process.Process/Start with a JSON body, framed. */
static void raw_start_request(struct buf *b, const char *json)
{
    size_t n = strlen(json);
    (void) buf_printf(b,
                      "POST /process.Process/Start HTTP/1.1\r\n"
                      "Host: localhost\r\n"
                      "Content-Type: application/connect+json\r\n"
                      "Connect-Protocol-Version: 1\r\n"
                      "Content-Length: %zu\r\n\r\n",
                      n + 5);
    uint8_t env[5] = {0, (uint8_t) (n >> 24), (uint8_t) (n >> 16), (uint8_t) (n >> 8), (uint8_t) n};
    (void) buf_append(b, env, sizeof(env));
    (void) buf_append(b, json, n);
}

static void kill_tag(const char *tag)
{
    Process__SendSignalRequest req = PROCESS__SEND_SIGNAL_REQUEST__INIT;
    Process__ProcessSelector sel = PROCESS__PROCESS_SELECTOR__INIT;
    struct client_call_options o = {.codec = CLIENT_CODEC_JSON};
    struct client_error e = {0};
    ProtobufCMessage *resp = NULL;
    sel.selector_case = PROCESS__PROCESS_SELECTOR__SELECTOR_TAG;
    sel.tag = (char *) tag;
    req.process = &sel;
    req.signal = PROCESS__SIGNAL__SIGNAL_SIGKILL;
    int r = client_unary(S.c, "/process.Process/SendSignal", &o, &req.base,
                         &process__send_signal_response__descriptor, &e, &resp);
    if (r == 0)
        protobuf_c_message_free_unpacked(resp, NULL);
    else if (!(e.code && streq(e.code, "not_found")))
        fail_call("SendSignal by tag", r, &e);
    client_error_done(&e);
}

static void test_resets(void)
{
    char tick[128], flood[128], json[512];
    struct buf req;
    int fd;
    unsigned done = 0;
    mkid(tick, sizeof(tick), "reset-tick");
    mkid(flood, sizeof(flood), "reset-flood");
    buf_init(&req, 64 * 1024);

    /* 1. Connect and reset at once, several times. */
    for (int i = 0; i < 5; i++) {
        if ((fd = raw_connect()) < 0)
            goto out;
        raw_reset(fd);
    }
    done++;
    /* 2. Half a request line; 3. half the headers. */
    static const char *partial[] = {
            "GET /hea",
            "POST /process.Process/List HTTP/1.1\r\nHost: localhost\r\nContent-Ty",
    };
    for (size_t i = 0; i < ARRAY_SIZE(partial); i++) {
        if ((fd = raw_connect()) < 0)
            goto out;
        bool ok = raw_send(fd, partial[i], strlen(partial[i]));
        raw_reset(fd);
        if (!ok)
            goto out;
    }
    done++;
    /* 4. A unary call with half of its body. */
    if ((fd = raw_connect()) < 0)
        goto out;
    {
        static const char h[] = "POST /process.Process/List HTTP/1.1\r\nHost: localhost\r\n"
                                "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"";
        bool ok = raw_send(fd, h, STRLEN(h));
        raw_reset(fd);
        if (!ok)
            goto out;
    }
    done++;
    /* 5. Two pipelined requests, reset before reading the answers. */
    if ((fd = raw_connect()) < 0)
        goto out;
    {
        static const char h[] = "GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n"
                                "GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n";
        bool ok = raw_send(fd, h, STRLEN(h));
        raw_reset(fd);
        if (!ok)
            goto out;
    }
    done++;
    /* 6. A live stream of a slow process, reset after its first output. */
    if ((fd = raw_connect()) < 0)
        goto out;
    (void) snprintf(json, sizeof(json),
                    "{\"process\":{\"cmd\":\"sh\",\"args\":[\"-c\",\"while :; do echo tick; sleep "
                    "0.2; done\"]},\"tag\":\"%s\"}",
                    tick);
    raw_start_request(&req, json);
    if (!raw_send(fd, req.data, req.len)) {
        raw_reset(fd);
        goto out;
    }
    size_t got = raw_recv(fd, 1 << 20, "dGljawo", 60000); /* base64 of "tick\n" */
    raw_reset(fd);
    if (!CHECK(got > 0, "no answer on the tick stream"))
        goto out;
    done++;
    /* 7. A stream of a fast producer, reset while guestd is writing. */
    if ((fd = raw_connect()) < 0)
        goto out;
    (void) snprintf(json, sizeof(json),
                    "{\"process\":{\"cmd\":\"head\",\"args\":[\"-c\",\"50000000\",\"/dev/zero\"]},"
                    "\"tag\":\"%s\"}",
                    flood);
    buf_reset(&req);
    raw_start_request(&req, json);
    if (!raw_send(fd, req.data, req.len)) {
        raw_reset(fd);
        goto out;
    }
    got = raw_recv(fd, 256 * 1024, NULL, 60000);
    raw_reset(fd);
    if (!CHECK(got > 0, "no answer on the flood stream"))
        goto out;
    done++;
    /* 8. A client stream (StreamInput) cut in the middle of its chunked body. */
    if ((fd = raw_connect()) < 0)
        goto out;
    {
        static const char h[] = "POST /process.Process/StreamInput HTTP/1.1\r\nHost: localhost\r\n"
                                "Content-Type: application/connect+json\r\n"
                                "Transfer-Encoding: chunked\r\n\r\n"
                                "40\r\n\x00\x00\x00";
        bool ok = raw_send(fd, h, STRLEN(h));
        raw_reset(fd);
        if (!ok)
            goto out;
    }
    done++;
    /* 9. A download, reset after its first bytes. */
    if (big_path[0]) {
        if ((fd = raw_connect()) < 0)
            goto out;
        buf_reset(&req);
        (void) buf_printf(&req, "GET /files?path=%s HTTP/1.1\r\nHost: localhost\r\n\r\n", big_path);
        bool ok = raw_send(fd, req.data, req.len);
        if (ok)
            (void) raw_recv(fd, 128 * 1024, NULL, 3000);
        raw_reset(fd);
        if (!ok)
            goto out;
    }
    done++;
out:
    diag("%u of 8 reset scenarios ran", done);
    kill_tag(tick);
    kill_tag(flood);
    buf_free(&req);
    /* The listener and the existing keep-alive connection must both still work. */
    _cleanup_client_ struct client *c = new_client(S.to, NULL);
    int status = 0;
    int r = c ? http_get(c, "/health", &status, NULL) : -ENOMEM;
    if (CHECK(r == 0, "GET /health on a new connection after the resets: %s", strerror(-r)))
        CHECK(status == 204, "GET /health answered %d after the resets", status);
    Guestd__V1__InfoRequest ireq = GUESTD__V1__INFO_REQUEST__INIT;
    (void) unary(S.c, "/guestd.v1.System/Info", CLIENT_CODEC_JSON, &ireq.base,
                 &guestd__v1__info_response__descriptor, NULL);
    struct buf o;
    buf_init(&o, 4096);
    if (sh("echo alive", &o) == 0)
        CHECK(buf_is(&o, "alive\n"), "a process after the resets printed %s", showb(&o));
    buf_free(&o);
}

/* --- tests: auth over vsock ------------------------------------------------------------------ */

static struct {
    bool ready; /* work dir and token written */
    char tok[128];
    char id2[128], id3[128];
    bool started2, started3;
    bool stopped2, stopped3;
    char addr2[64], addr3[64];
} auth;

/* A free loopback TCP port (native runs only). */
static int free_tcp_port(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (bind(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0 ||
        getsockname(fd, (struct sockaddr *) &sa, &len) < 0) {
        close(fd);
        return -1;
    }
    close(fd);
    return ntohs(sa.sin_port);
}

/* Picks where an extra instance listens and how the suite reaches it. */
static int instance_addr(unsigned vsock_port, char *listen, size_t llen, char *addr, size_t alen)
{
    if (S.vsock) {
        (void) snprintf(listen, llen, "vsock:%u", vsock_port);
        (void) snprintf(addr, alen, "vsock:1:%u", vsock_port);
        return 0;
    }
    int port = free_tcp_port();
    if (port <= 0) {
        failf("no free loopback port: %s", strerror(errno));
        return -1;
    }
    (void) snprintf(listen, llen, "tcp:127.0.0.1:%d", port);
    (void) snprintf(addr, alen, "tcp:127.0.0.1:%d", port);
    return 0;
}

/* The guestd binary for extra instances. */
static const char *guestd_binary(void)
{
    static char path[512];
    if (path[0])
        return path;
    if (S.guestd_path) {
        (void) snprintf(path, sizeof(path), "%s", S.guestd_path);
        return path;
    }
    struct buf o;
    buf_init(&o, 4096);
    /* /sbin/guestd in the guest; natively the binary of the guestd that spawned the shell
     * (through /proc when it was rebuilt since: the running one is the one under test). */
    if (sh("if [ -x /sbin/guestd ]; then echo /sbin/guestd; else p=$(readlink /proc/$PPID/exe); "
           "case $p in *' (deleted)') echo /proc/$PPID/exe ;; *) echo \"$p\" ;; esac; fi",
           &o) == 0) {
        chomp(&o);
        if (o.len && o.len < sizeof(path))
            memcpy(path, o.data, o.len + 1);
    }
    buf_free(&o);
    if (!path[0])
        (void) snprintf(path, sizeof(path), "/sbin/guestd");
    return path;
}

/* Waits until `addr` answers /health while process `exec_id` runs. */
static bool wait_instance(const char *addr, const char *exec_id)
{
    _cleanup_client_ struct client *c = new_client(addr, NULL);
    if (!c)
        return false;
    int64_t deadline = mono_ms() + INSTANCE_WAIT_MS;
    int last = 0, status = 0;
    while (mono_ms() < deadline) {
        last = http_get(c, "/health", &status, NULL);
        if (last == 0 && status == 204)
            return true;
        Guestd__V1__ResultResponse *res = guestd_result(exec_id);
        if (!res)
            return false;
        if (res->result && res->result->cause != GUESTD__V1__EXIT_CAUSE__EXIT_CAUSE_RUNNING) {
            const Guestd__V1__Result *x = res->result;
            char why[160] = "";
            if (*x->spawn_step)
                (void) snprintf(why, sizeof(why), " (spawn step %s: %s)", x->spawn_step,
                                strerror(x->spawn_errno));
            failf("the instance on %s ended: %s%s\noutput: %s", addr, x->status, why,
                  show(x->tail.data, x->tail.len));
            protobuf_c_message_free_unpacked(&res->base, NULL);
            return false;
        }
        protobuf_c_message_free_unpacked(&res->base, NULL);
        sleep_ms(250);
    }
    failf("the instance on %s did not answer /health within %d s (last: %s, HTTP %d)", addr,
          INSTANCE_WAIT_MS / 1000, last < 0 ? strerror(-last) : "answered", status);
    return false;
}

/* Starts an extra guestd; `extra` are more arguments (NULL-terminated). */
static bool start_instance(const char *exec_id, const char *listen, const char *run_dir,
                           const char *const *extra)
{
    const char *args[16];
    size_t n = 0;
    struct start_msg m;
    args[n++] = "--listen";
    args[n++] = listen;
    args[n++] = "--run-dir";
    args[n++] = run_dir;
    args[n++] = "--access-token-file";
    args[n++] = auth.tok;
    for (size_t i = 0; extra && extra[i] && n < ARRAY_SIZE(args) - 3; i++)
        args[n++] = extra[i];
    args[n++] = "--config";
    args[n++] = "/dev/null";
    args[n] = NULL;
    start_msg_init(&m, guestd_binary(), args);
    return guestd_launch(&m, exec_id, NULL) == 0;
}

static bool auth_prepare(void)
{
    if (auth.ready)
        return true;
    (void) snprintf(auth.tok, sizeof(auth.tok), "%s/tok", S.work);
    if (shf(NULL, "umask 077; printf %s > %s", AUTH_TOKEN, auth.tok) < 0)
        return false;
    auth.ready = true;
    return true;
}

/* GET /envs must be refused with envd's 401 body. */
static void expect_401(struct client *c, const char *what)
{
    struct buf body;
    int status = 0;
    buf_init(&body, 64 * 1024);
    int r = http_get(c, "/envs", &status, &body);
    if (!CHECK(r == 0, "GET /envs %s: %s", what, strerror(-r)))
        goto out;
    if (!CHECK(status == 401, "GET /envs %s answered %d, expected 401; body %s", what, status,
               showb(&body)))
        goto out;
    json_error_t je;
    json_t *j = json_loadb(body.data ? body.data : "", body.len, 0, &je);
    if (CHECK(j && json_is_object(j), "401 body is not a JSON object: %s", showb(&body))) {
        json_t *code = json_object_get(j, "code");
        json_t *msg = json_object_get(j, "message");
        CHECK(json_is_integer(code) && json_integer_value(code) == 401, "401 body code: %s",
              showb(&body));
        CHECK(json_is_string(msg) && streq(json_string_value(msg), UNAUTHORIZED_MESSAGE),
              "401 body message differs from envd's: %s", showb(&body));
    }
    json_decref(j);
out:
    buf_free(&body);
}

static void test_auth_token(void)
{
    char listen[64], rundir[128];
    if (!auth_prepare())
        return;
    if (instance_addr(AUTH_VSOCK_PORT, listen, sizeof(listen), auth.addr2, sizeof(auth.addr2)) < 0)
        return;
    (void) snprintf(rundir, sizeof(rundir), "%s/g2", S.work);
    mkid(auth.id2, sizeof(auth.id2), "guestd2");
    auth.started2 = start_instance(auth.id2, listen, rundir, NULL);
    if (!auth.started2 || !wait_instance(auth.addr2, auth.id2))
        return;
    _cleanup_client_ struct client *c = new_client(auth.addr2, NULL);
    if (!c)
        return;
    expect_401(c, "without a token");
    if (client_set_token(c, "wrong") == 0)
        expect_401(c, "with a wrong token");
    if (client_set_token(c, AUTH_TOKEN) < 0)
        return;
    struct buf body;
    int status = 0;
    buf_init(&body, 64 * 1024);
    int r = http_get(c, "/envs", &status, &body);
    if (CHECK(r == 0, "GET /envs with the token: %s", strerror(-r)))
        CHECK(status == 200, "GET /envs with the token answered %d, body %s", status, showb(&body));
    buf_free(&body);
}

static void test_auth_trusted_host(void)
{
    char listen[64], rundir[128];
    if (!auth_prepare())
        return;
    if (instance_addr(TRUST_VSOCK_PORT, listen, sizeof(listen), auth.addr3, sizeof(auth.addr3)) < 0)
        return;
    (void) snprintf(rundir, sizeof(rundir), "%s/g3", S.work);
    mkid(auth.id3, sizeof(auth.id3), "guestd3");
    /* Over vsock the test knob makes CID 1 (our loopback peer) the host. Natively there is no
     * vsock peer: the same flag must not make a loopback TCP peer trusted. */
    const char *vs_extra[] = {"--trust-host-vsock", "--test-host-cid", "1", NULL};
    const char *tcp_extra[] = {"--trust-host-vsock", NULL};
    auth.started3 = start_instance(auth.id3, listen, rundir, S.vsock ? vs_extra : tcp_extra);
    if (!auth.started3 || !wait_instance(auth.addr3, auth.id3))
        return;
    _cleanup_client_ struct client *c = new_client(auth.addr3, NULL);
    if (!c)
        return;
    if (!S.vsock) {
        diag("native run (no vsock): a loopback TCP peer must still need the token");
        expect_401(c, "from loopback TCP with --trust-host-vsock");
        return;
    }
    struct buf body;
    int status = 0;
    buf_init(&body, 64 * 1024);
    int r = http_get(c, "/envs", &status, &body);
    if (CHECK(r == 0, "GET /envs from the host CID: %s", strerror(-r)))
        CHECK(status == 200,
              "GET /envs without a token from the trusted host CID answered %d, "
              "body %s",
              status, showb(&body));
    buf_free(&body);
}

/* SIGTERM to an extra instance; true when it ended (with whatever status). */
static bool stop_instance(const char *exec_id, const char *name)
{
    struct grun r;
    bool ended = false;
    Guestd__V1__ResultResponse *res = guestd_result(exec_id);
    if (!res)
        return false;
    if (res->result && res->result->cause != GUESTD__V1__EXIT_CAUSE__EXIT_CAUSE_RUNNING) {
        failf("%s had already ended: %s", name, res->result->status);
        protobuf_c_message_free_unpacked(&res->base, NULL);
        return true;
    }
    protobuf_c_message_free_unpacked(&res->base, NULL);
    if (guestd_signal(exec_id, 15, GUESTD__V1__SIGNAL_SCOPE__SIGNAL_SCOPE_PROCESS) < 0)
        return false;
    grun_init(&r);
    if (guestd_wait(exec_id, &r, STREAM_DEADLINE_MS) == 0) {
        ended = r.ended;
        if (!CHECK(r.ended && r.exit_code == 0 && streq(r.status, "exit status 0"),
                   "%s ended with \"%s\" (exit code %d) after SIGTERM, expected exit status 0",
                   name, r.status, r.exit_code))
            diag("%s output: %s%s", name, showb(&r.out), showb(&r.err));
    }
    grun_done(&r);
    return ended;
}

static void test_auth_stop(void)
{
    if (!auth.started2 && !auth.started3) {
        failf("no instance was started");
        return;
    }
    if (auth.started2)
        auth.stopped2 = stop_instance(auth.id2, "the second instance");
    if (auth.started3)
        auth.stopped3 = stop_instance(auth.id3, "the third instance");
}

/* --- tests: PID 1 ---------------------------------------------------------------------------- */

static bool pid1_only(void)
{
    if (S.child || !S.pid1) {
        skip("not PID 1");
        return false;
    }
    return true;
}

static bool has_mount(const struct buf *mounts, const char *type, const char *dir)
{
    const char *p = mounts->data ? mounts->data : "";
    while (*p) {
        char dev[256], mnt[512], fstype[128];
        const char *nl = strchr(p, '\n');
        if (sscanf(p, "%255s %511s %127s", dev, mnt, fstype) == 3 && streq(mnt, dir) &&
            streq(fstype, type))
            return true;
        if (!nl)
            break;
        p = nl + 1;
    }
    return false;
}

static void test_pid1_mounts(void)
{
    static const struct {
        const char *type, *dir;
    } want[] = {
            {"proc", "/proc"},     {"sysfs", "/sys"}, {"devtmpfs", "/dev"}, {"devpts", "/dev/pts"},
            {"tmpfs", "/dev/shm"}, {"tmpfs", "/run"}, {"tmpfs", "/tmp"},
    };
    struct buf mounts, fs;
    if (!pid1_only())
        return;
    buf_init(&mounts, 1024 * 1024);
    buf_init(&fs, 1024 * 1024);
    if (sh("cat /proc/mounts", &mounts) < 0 || sh("cat /proc/filesystems", &fs) < 0)
        goto out;
    for (size_t i = 0; i < ARRAY_SIZE(want); i++)
        CHECK(has_mount(&mounts, want[i].type, want[i].dir), "no %s on %s", want[i].type,
              want[i].dir);
    if (buf_has(&fs, "\tcgroup2\n"))
        CHECK(has_mount(&mounts, "cgroup2", "/sys/fs/cgroup"), "no cgroup2 on /sys/fs/cgroup");
    else
        diag("the kernel has no cgroup2");
    if (cur.failed)
        diag("/proc/mounts:\n%s", mounts.data ? mounts.data : "");
out:
    buf_free(&mounts);
    buf_free(&fs);
}

/* Lists zombies whose parent is PID 1 (nobody else will ever reap them). */
static int pid1_zombies(struct buf *out)
{
    return sh("for f in /proc/[0-9]*/stat; do "
              "{ read -r l < \"$f\"; } 2>/dev/null || continue; "
              "r=${l##*) }; set -- $r; "
              "[ \"$1\" = Z ] && [ \"$2\" = 1 ] && echo \"$l\"; "
              "done; exit 0",
              out);
}

static void test_pid1_zombies(void)
{
    struct buf z;
    if (!pid1_only())
        return;
    buf_init(&z, 1024 * 1024);
    if (sh("(sleep 1 &) ; exit 0", NULL) < 0)
        goto out;
    sleep_ms(3000);
    /* The orphan sleeps 1 s; a slow guest gets a few more seconds before it counts. */
    int64_t deadline = mono_ms() + 10000;
    for (;;) {
        buf_reset(&z);
        if (pid1_zombies(&z) < 0)
            goto out;
        if (z.len == 0 || mono_ms() > deadline)
            break;
        sleep_ms(500);
    }
    CHECK(z.len == 0, "zombies left with PID 1 as their parent:\n%s", z.data);
out:
    buf_free(&z);
}

static void test_pid1_status_not_stolen(void)
{
    if (!pid1_only())
        return;
    for (int i = 0; i < 3 && !cur.failed; i++) {
        struct start_msg m;
        struct erun r;
        start_msg_sh(&m, "for i in 1 2 3 4 5 6 7 8; do (sleep 0.2 &); done; exit 7");
        erun_init(&r);
        if (envd_run(i % 2 ? CLIENT_CODEC_PROTO : CLIENT_CODEC_JSON, &m, &r) == 0)
            erun_check_end(&r, 7, "exit status 7");
        erun_done(&r);
    }
}

static void test_pid1_hostname(void)
{
    struct buf cmdline, host, host2;
    char want[256] = "guestd-vm";
    if (!pid1_only())
        return;
    buf_init(&cmdline, 64 * 1024);
    buf_init(&host, 4096);
    buf_init(&host2, 4096);
    if (sh("cat /proc/cmdline", &cmdline) < 0)
        goto out;
    chomp(&cmdline);
    /* The runner passes hostname= or guestd.hostname=. As guestd reads them: the last
     * guestd.hostname= wins, else the first hostname=. */
    bool found = false;
    for (char *tok = strtok(cmdline.data ? cmdline.data : (char[]){""}, " \t"); tok;
         tok = strtok(NULL, " \t")) {
        const char *v = NULL;
        if (strncmp(tok, "guestd.hostname=", 16) == 0)
            v = tok + 16;
        else if (strncmp(tok, "hostname=", 9) == 0 && !found)
            v = tok + 9;
        if (v && *v && strlen(v) < sizeof(want)) {
            (void) snprintf(want, sizeof(want), "%s", v);
            found = true;
        }
    }
    if (!found)
        diag("no hostname= on the kernel command line; expecting %s", want);
    if (sh("cat /proc/sys/kernel/hostname", &host) < 0)
        goto out;
    chomp(&host);
    CHECK(buf_is(&host, want), "/proc/sys/kernel/hostname is %s, expected %s", showb(&host), want);
    if (sh("hostname", &host2) == 0) {
        chomp(&host2);
        CHECK(buf_is(&host2, want), "hostname prints %s, expected %s", showb(&host2), want);
    }
out:
    buf_free(&cmdline);
    buf_free(&host);
    buf_free(&host2);
}

static void test_pid1_loopback(void)
{
    struct buf o;
    char addr[64];
    if (!pid1_only())
        return;
    buf_init(&o, 4096);
    if (sh("cat /sys/class/net/lo/operstate", &o) == 0) {
        chomp(&o);
        CHECK(buf_is(&o, "unknown") || buf_is(&o, "up"), "lo operstate is %s", showb(&o));
    }
    buf_free(&o);
    (void) snprintf(addr, sizeof(addr), "tcp:127.0.0.1:%d", GUESTD_PORT);
    _cleanup_client_ struct client *c = new_client(addr, NULL);
    int status = 0;
    int r = c ? http_get(c, "/health", &status, NULL) : -ENOMEM;
    if (CHECK(r == 0, "GET /health over %s: %s", addr, strerror(-r)))
        CHECK(status == 204, "GET /health over %s answered %d", addr, status);
}

/* eth0 configured by guestd (PID 1) from the kernel's ip= argument, when the runner gives one
 * (run-vm --net with ip=ADDR::GW:MASK::eth0:off on the command line). */
static void test_pid1_eth0(void)
{
    struct buf o;
    if (!pid1_only())
        return;
    buf_init(&o, 8192);
    if (sh("cat /proc/cmdline", &o) != 0) {
        buf_free(&o);
        return;
    }
    const char *ip = strstr(o.data ? o.data : "", "ip=");
    if (!ip) {
        printf("# no ip= on the kernel command line: nothing to check\n");
        buf_free(&o);
        return;
    }
    char want[32] = "", gw[32] = "";
    (void) sscanf(ip + 3, "%31[0-9.]::%31[0-9.]", want, gw);
    buf_reset(&o);
    if (sh("ip -4 addr show dev eth0; ip -4 route", &o) == 0) {
        char inet[64], route[64];
        (void) snprintf(inet, sizeof(inet), "inet %s/", want);
        (void) snprintf(route, sizeof(route), "default via %s dev eth0", gw);
        CHECK(strstr(o.data ? o.data : "", inet) != NULL, "eth0 lacks %s: %s", want, showb(&o));
        if (gw[0])
            CHECK(strstr(o.data ? o.data : "", route) != NULL, "no default route via %s: %s", gw,
                  showb(&o));
    }
    buf_free(&o);
}

/* --- main ------------------------------------------------------------------------------------ */

static _Noreturn void usage(int rc)
{
    fprintf(rc ? stderr : stdout, "Usage: vm-suite [--to ADDR] [--child] [--no-shutdown] [--guestd "
                                  "PATH] [--only TEXT]\n");
    exit(rc);
}

static void parse_args(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (streq(a, "--to") && i + 1 < argc)
            S.to = argv[++i];
        else if (strncmp(a, "--to=", 5) == 0)
            S.to = a + 5;
        else if (streq(a, "--guestd") && i + 1 < argc)
            S.guestd_path = argv[++i];
        else if (strncmp(a, "--guestd=", 9) == 0)
            S.guestd_path = a + 9;
        else if (streq(a, "--only") && i + 1 < argc)
            S.only = argv[++i];
        else if (streq(a, "--child"))
            S.child = true;
        else if (streq(a, "--no-shutdown"))
            S.no_shutdown = true;
        else if (streq(a, "--help") || streq(a, "-h"))
            usage(0);
        else {
            fprintf(stderr, "vm-suite: unknown argument '%s'\n", a);
            usage(2);
        }
    }
}

/* Waits for guestd to answer /health. */
static bool wait_guestd(void)
{
    int64_t deadline = mono_ms() + STARTUP_WAIT_MS;
    int last = 0, status = 0;
    while (mono_ms() < deadline) {
        last = http_get(S.c, "/health", &status, NULL);
        if (last == 0 && status == 204)
            return true;
        client_disconnect(S.c);
        sleep_ms(250);
    }
    printf("# guestd did not answer /health on %s within %d s (last: %s, HTTP %d)\n", S.to,
           STARTUP_WAIT_MS / 1000, last < 0 ? strerror(-last) : "answered", status);
    return false;
}

static void finish(int rc)
{
    printf("1..%u\n", tap.n);
    printf("@@VMTEST-EXIT=%d@@\n", rc);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    struct client_addr a;
    parse_args(argc, argv);
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (client_addr_parse(S.to, &a) < 0) {
        fprintf(stderr, "vm-suite: bad address '%s'\n", S.to);
        return 2;
    }
    S.vsock = a.kind == CLIENT_ADDR_VSOCK;
    (void) snprintf(S.work, sizeof(S.work), "/tmp/vm-suite.%d", (int) getpid());
    (void) snprintf(S.idbase, sizeof(S.idbase), "vm-suite-%d-%lld", (int) getpid(),
                    (long long) time(NULL));
    printf("# vm-suite: guestd at %s, %s mode%s\n", S.to, S.child ? "child" : "pid1",
           S.no_shutdown ? ", no shutdown" : "");

    struct client_options o = {.connect_timeout_ms = CONNECT_TIMEOUT_MS,
                               .io_timeout_ms = IO_TIMEOUT_MS};
    if (client_new(S.to, &o, &S.c) < 0) {
        fprintf(stderr, "vm-suite: cannot create a client\n");
        return 2;
    }
    if (!wait_guestd()) {
        tap.n = 1;
        printf("not ok 1 - guestd answers\n");
        finish(1);
        client_free(S.c);
        return 1;
    }

    static const struct {
        const char *name;
        void (*fn)(void);
    } tests[] = {
            {"health: GET /health answers 204", test_health},
            {"info: System/Info answers", test_info},
            {"process run (JSON): output, exit code and status", test_process_run_json},
            {"process run (proto): the same over the binary codec", test_process_run_proto},
            {"stdin: SendInput and CloseStdin reach cat", test_stdin},
            {"pty: stty size sees the requested size", test_pty_size},
            {"pty: cat echoes PTY input", test_pty_echo},
            {"pty: Update resizes the terminal", test_pty_resize},
            {"signals: SendSignal SIGKILL", test_sigkill},
            {"signals: guestd.v1 Signal SIGTERM to the group", test_sigterm_group},
            {"reconnect: Attach replays with offsets after a disconnect", test_replay},
            {"idempotency: a retried Start with the same exec id replays, runs once", test_retry},
            {"large output: 20 MB arrive intact", test_large_output},
            {"listener survives client resets", test_resets},
            {"auth: an instance with a token answers 401 without it", test_auth_token},
            {"auth: a trusted host vsock peer needs no token", test_auth_trusted_host},
            {"auth: the extra instances exit 0 on SIGTERM", test_auth_stop},
            {"pid1: mounts", test_pid1_mounts},
            {"pid1: no zombie after a double fork", test_pid1_zombies},
            {"pid1: orphan reaping does not steal a child's status", test_pid1_status_not_stolen},
            {"pid1: hostname from the kernel command line", test_pid1_hostname},
            {"pid1: loopback is up", test_pid1_loopback},
            {"pid1: eth0 from the kernel's ip= argument", test_pid1_eth0},
    };

    buf_init(&cur.diag, 1024 * 1024);
    if (shf(NULL, "rm -rf %s && mkdir -p %s", S.work, S.work) < 0) {
        if (cur.diag.len)
            fputs(cur.diag.data, stdout);
        printf("# cannot create %s; tests that need it will fail\n", S.work);
    }
    buf_free(&cur.diag);

    for (size_t i = 0; i < ARRAY_SIZE(tests); i++)
        if (!S.only || strstr(tests[i].name, S.only))
            run_test(tests[i].name, tests[i].fn);

    /* Best-effort cleanup: the extra instances (if a test stopped early) and the work dir. */
    buf_init(&cur.diag, 1024 * 1024);
    cur.failed = false;
    if (auth.started2 && !auth.stopped2)
        (void) guestd_signal(auth.id2, 9, GUESTD__V1__SIGNAL_SCOPE__SIGNAL_SCOPE_PROCESS);
    if (auth.started3 && !auth.stopped3)
        (void) guestd_signal(auth.id3, 9, GUESTD__V1__SIGNAL_SCOPE__SIGNAL_SCOPE_PROCESS);
    cur.failed = false;
    buf_reset(&cur.diag);
    if (shf(NULL, "rm -rf %s", S.work) < 0 && cur.diag.len)
        fputs(cur.diag.data, stdout);
    buf_free(&cur.diag);

    int rc = tap.failed ? 1 : 0;
    printf("# %u tests, %u failed\n", tap.n, tap.failed);
    finish(rc);

    if (!S.child && !S.no_shutdown) {
        Guestd__V1__ShutdownRequest req = GUESTD__V1__SHUTDOWN_REQUEST__INIT;
        struct client_error e = {0};
        ProtobufCMessage *resp = NULL;
        int r = client_unary(S.c, "/guestd.v1.System/Shutdown", NULL, &req.base,
                             &guestd__v1__shutdown_response__descriptor, &e, &resp);
        if (r == 0) {
            printf("# shutdown requested\n");
            protobuf_c_message_free_unpacked(resp, NULL);
        } else {
            printf("# System/Shutdown failed: %s [%s] %s\n", strerror(-r), e.code ? e.code : "",
                   e.message ? e.message : "");
        }
        client_error_done(&e);
        fflush(stdout);
    }
    client_free(S.c);
    return rc;
}

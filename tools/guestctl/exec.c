/* SPDX-License-Identifier: Apache-2.0 */
/*
 * exec and shell: run a process in the guest through guestd.v1.Process/Start and connect it to
 * the local terminal or pipes.
 *
 * The client library is blocking and one client serves one thread, so a session has three:
 *  - the main thread owns the Start stream and writes output to stdout/stderr as it arrives;
 *  - an input thread (started once the process has a pid) reads local stdin and sends it over
 *    process.Process/StreamInput, then CloseStdin at EOF (Ctrl-D, 0x04, for a PTY);
 *  - a signal thread takes SIGINT, SIGTERM, SIGHUP, SIGQUIT and SIGWINCH with sigwait()
 *    (they are blocked in every thread) and forwards them with guestd.v1.Process/Signal and
 *    process.Process/Update.
 * The session ends when the main thread has the end event: guestctl exits with the remote
 * status, and atexit puts the local terminal back.
 */
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "base/kv.h"
#include "base/parse.h"
#include "cli.h"
#include "events.h"
#include "guestd/v1/process.pb-c.h"
#include "process/process.pb-c.h"
#include "term.h"

/* Bytes of local stdin read and sent as one input message. */
#define EXEC_INPUT_CHUNK_BYTES (64 * 1024)
/*
 * How long a signal that arrives before the start event waits for it (the event may be in
 * flight) before it ends guestctl instead: nothing runs yet that it could be passed on to.
 */
#define EXEC_START_WAIT_MS     1000
/* The terminal size sent when the local side is not a terminal. */
#define EXEC_DEFAULT_COLS      80
#define EXEC_DEFAULT_ROWS      24
/* Largest --timeout in seconds: Connect-Timeout-Ms is sent as milliseconds in 32 bits here. */
#define EXEC_MAX_TIMEOUT_S     (UINT32_MAX / 1000)
/* The byte that ends input on a terminal (Ctrl-D), sent for a PTY at local EOF. */
#define EXEC_PTY_EOF           0x04
/* Random bytes in a minted exec id, and the id's buffer size (prefix, hex digits, NUL). */
#define EXEC_ID_RANDOM_BYTES   16
#define EXEC_ID_BYTES          (STRLEN("guestctl-") + 2 * EXEC_ID_RANDOM_BYTES + 1)
/* The terminal type for a remote PTY when the local environment has none. */
#define EXEC_DEFAULT_TERM      "xterm-256color"

struct exec_spec {
    const char *cmd;
    char **args;
    size_t n_args;
    struct kv env;
    const char *cwd;
    const char *tag;
    const char *exec_id;
    uint32_t timeout_s;
    bool tty;
    bool no_stdin;
};

struct session {
    bool pty;
    bool raw;   /* the local terminal is in raw mode */
    bool stdin; /* forward local stdin */
    sigset_t sigs;

    pthread_mutex_t lock;
    pthread_cond_t cond;
    uint32_t pid;  /* 0 until the start event named it */
    bool started;  /* the start event arrived (pid may still be 0: spawn failed) */
    bool finished; /* the stream ended: nobody will set pid any more */
};

/*
 * The one session of this process. It is static because the session's threads keep using it
 * until the process exits, after exec_run() or shell_run() has returned.
 */
static struct session session;

static void exec_spec_done(struct exec_spec *spec)
{
    kv_clear(&spec->env);
}

/* --- signals --------------------------------------------------------------------------------- */

/* Blocks the signals the session forwards, in this thread and all threads it creates. */
static void session_block_signals(struct session *s)
{
    (void) sigemptyset(&s->sigs);
    (void) sigaddset(&s->sigs, SIGINT);
    (void) sigaddset(&s->sigs, SIGTERM);
    (void) sigaddset(&s->sigs, SIGHUP);
    (void) sigaddset(&s->sigs, SIGQUIT);
    (void) sigaddset(&s->sigs, SIGWINCH);
    if (s->raw) {
        /* Suspending with the terminal raw would leave the shell unusable: restore first. */
        (void) sigaddset(&s->sigs, SIGTSTP);
        (void) sigaddset(&s->sigs, SIGCONT);
    }
    (void) pthread_sigmask(SIG_BLOCK, &s->sigs, NULL);
}

/* The pid once the start event named it; 0 if the process never started or we gave up. */
static uint32_t session_wait_pid(struct session *s, int timeout_ms)
{
    struct timespec until;
    (void) clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += timeout_ms / 1000;
    until.tv_nsec += (long) (timeout_ms % 1000) * 1000000;
    if (until.tv_nsec >= 1000000000) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000;
    }
    (void) pthread_mutex_lock(&s->lock);
    while (!s->started && !s->finished)
        if (pthread_cond_timedwait(&s->cond, &s->lock, &until) == ETIMEDOUT)
            break;
    uint32_t pid = s->pid;
    (void) pthread_mutex_unlock(&s->lock);
    return pid;
}

static void forward_signal(struct session *s, struct client *c, int sig)
{
    uint32_t pid = session_wait_pid(s, EXEC_START_WAIT_MS);
    if (pid == 0) {
        bool started;
        (void) pthread_mutex_lock(&s->lock);
        started = s->started || s->finished;
        (void) pthread_mutex_unlock(&s->lock);
        /* Nothing runs (yet) that the signal could reach: it ends guestctl instead. */
        if (!started)
            exit(CLI_EXIT_SIGNAL_BASE + sig);
        return;
    }
    Guestd__V1__Selector sel = GUESTD__V1__SELECTOR__INIT;
    sel.selector_case = GUESTD__V1__SELECTOR__SELECTOR_PID;
    sel.pid = pid;
    Guestd__V1__SignalRequest req = GUESTD__V1__SIGNAL_REQUEST__INIT;
    req.process = &sel;
    req.signal = (uint32_t) sig;
    /* As a terminal would: the whole foreground job (the process's group) gets it. */
    req.scope = GUESTD__V1__SIGNAL_SCOPE__SIGNAL_SCOPE_GROUP;
    struct client_call_options o = cli_call_options(0);
    struct client_error e = {0};
    ProtobufCMessage *resp = NULL;
    int r = client_unary(c, "/guestd.v1.Process/Signal", &o, &req.base,
                         &guestd__v1__signal_response__descriptor, &e, &resp);
    if (r < 0) {
        /* A process that just ended is no failure: its end event is on the way. */
        if (!(e.code && streq(e.code, "failed_precondition"))) {
            char what[64];
            (void) snprintf(what, sizeof(what), "forwarding SIG%s to process %u",
                            cli_signal_name(sig), pid);
            (void) cli_fail(what, r, &e);
        }
        client_error_done(&e);
        return;
    }
    protobuf_c_message_free_unpacked(resp, NULL);
}

static void pty_size(unsigned *cols, unsigned *rows)
{
    if (term_size(STDOUT_FILENO, cols, rows) || term_size(STDIN_FILENO, cols, rows))
        return;
    *cols = EXEC_DEFAULT_COLS;
    *rows = EXEC_DEFAULT_ROWS;
}

static void forward_resize(struct session *s, struct client *c)
{
    unsigned cols, rows;
    uint32_t pid;
    (void) pthread_mutex_lock(&s->lock);
    pid = s->pid;
    (void) pthread_mutex_unlock(&s->lock);
    if (!s->pty || pid == 0)
        return;
    pty_size(&cols, &rows);
    Process__ProcessSelector sel = PROCESS__PROCESS_SELECTOR__INIT;
    sel.selector_case = PROCESS__PROCESS_SELECTOR__SELECTOR_PID;
    sel.pid = pid;
    Process__PTY__Size size = PROCESS__PTY__SIZE__INIT;
    size.cols = cols;
    size.rows = rows;
    Process__PTY pty = PROCESS__PTY__INIT;
    pty.size = &size;
    Process__UpdateRequest req = PROCESS__UPDATE_REQUEST__INIT;
    req.process = &sel;
    req._pty_case = PROCESS__UPDATE_REQUEST___PTY_PTY;
    req.pty = &pty;
    struct client_call_options o = cli_call_options(0);
    ProtobufCMessage *resp = NULL;
    /* Best effort: a resize racing with the end of the process may fail, and that is fine. */
    if (client_unary(c, "/process.Process/Update", &o, &req.base,
                     &process__update_response__descriptor, NULL, &resp) == 0)
        protobuf_c_message_free_unpacked(resp, NULL);
}

static void *signal_thread(void *userdata)
{
    struct session *s = userdata;
    _cleanup_client_ struct client *c = NULL;
    unsigned n_int = 0, n_term = 0;

    if (cli_client_new(0, &c) != 0)
        return NULL;
    for (;;) {
        int sig;
        if (sigwait(&s->sigs, &sig) != 0)
            continue;
        switch (sig) {
        case SIGWINCH:
            forward_resize(s, c);
            break;
        case SIGTSTP:
            term_restore();
            (void) kill(getpid(), SIGSTOP);
            break;
        case SIGCONT:
            if (s->raw)
                (void) term_reraw();
            forward_resize(s, c);
            break;
        case SIGINT:
            /* Ctrl-C once asks the process to stop; pressed again, it kills it. */
            forward_signal(s, c, ++n_int == 1 ? SIGINT : SIGKILL);
            break;
        default:
            /* TERM, HUP, QUIT: passed on once; a second one ends guestctl itself. */
            if (++n_term > 1)
                exit(CLI_EXIT_SIGNAL_BASE + sig);
            forward_signal(s, c, sig);
            break;
        }
    }
    return NULL;
}

/* --- input ----------------------------------------------------------------------------------- */

static int input_send(struct client_stream *st, bool pty, const void *p, size_t n)
{
    Process__ProcessInput in = PROCESS__PROCESS_INPUT__INIT;
    if (pty) {
        in.input_case = PROCESS__PROCESS_INPUT__INPUT_PTY;
        in.pty.data = (uint8_t *) p;
        in.pty.len = n;
    } else {
        in.input_case = PROCESS__PROCESS_INPUT__INPUT_STDIN;
        in.stdin.data = (uint8_t *) p;
        in.stdin.len = n;
    }
    Process__StreamInputRequest__DataEvent data = PROCESS__STREAM_INPUT_REQUEST__DATA_EVENT__INIT;
    data.input = &in;
    Process__StreamInputRequest req = PROCESS__STREAM_INPUT_REQUEST__INIT;
    req.event_case = PROCESS__STREAM_INPUT_REQUEST__EVENT_DATA;
    req.data = &data;
    return client_stream_send(st, &req.base, NULL);
}

static int input_open(struct client *c, uint32_t pid, struct client_stream **ret)
{
    struct client_call_options o = cli_call_options(0);
    _cleanup_client_stream_ struct client_stream *st = NULL;
    int r = client_stream_open_client(c, "/process.Process/StreamInput", &o,
                                      &process__stream_input_response__descriptor, NULL, &st);
    if (r < 0)
        return r;
    Process__ProcessSelector sel = PROCESS__PROCESS_SELECTOR__INIT;
    sel.selector_case = PROCESS__PROCESS_SELECTOR__SELECTOR_PID;
    sel.pid = pid;
    Process__StreamInputRequest__StartEvent start =
            PROCESS__STREAM_INPUT_REQUEST__START_EVENT__INIT;
    start.process = &sel;
    Process__StreamInputRequest req = PROCESS__STREAM_INPUT_REQUEST__INIT;
    req.event_case = PROCESS__STREAM_INPUT_REQUEST__EVENT_START;
    req.start = &start;
    r = client_stream_send(st, &req.base, NULL);
    if (r < 0)
        return r;
    *ret = TAKE_PTR(st);
    return 0;
}

static int close_stdin(struct client *c, uint32_t pid)
{
    Process__ProcessSelector sel = PROCESS__PROCESS_SELECTOR__INIT;
    sel.selector_case = PROCESS__PROCESS_SELECTOR__SELECTOR_PID;
    sel.pid = pid;
    Process__CloseStdinRequest req = PROCESS__CLOSE_STDIN_REQUEST__INIT;
    req.process = &sel;
    struct client_call_options o = cli_call_options(0);
    ProtobufCMessage *resp = NULL;
    int r = client_unary(c, "/process.Process/CloseStdin", &o, &req.base,
                         &process__close_stdin_response__descriptor, NULL, &resp);
    if (r == 0)
        protobuf_c_message_free_unpacked(resp, NULL);
    return r;
}

/* Reads once from stdin: the count, 0 at EOF (or when stdin is unusable), never EINTR. */
static ssize_t read_stdin(void *buf, size_t n)
{
    for (;;) {
        ssize_t k = read(STDIN_FILENO, buf, n);
        if (k >= 0)
            return k;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            struct pollfd p = {.fd = STDIN_FILENO, .events = POLLIN};
            (void) poll(&p, 1, -1);
            continue;
        }
        return 0;
    }
}

/*
 * Failures here are quiet on purpose: input that the process no longer takes (it closed stdin
 * or ended) is normal (`yes | guestctl exec -- head -1`), and the end event tells the outcome.
 */
static void *input_thread(void *userdata)
{
    struct session *s = userdata;
    _cleanup_client_ struct client *c = NULL;
    _cleanup_client_stream_ struct client_stream *st = NULL;
    _cleanup_free_ char *buf = malloc(EXEC_INPUT_CHUNK_BYTES);
    uint32_t pid;

    if (!buf || cli_client_new(CLIENT_TIMEOUT_INFINITE, &c) != 0)
        return NULL;
    (void) pthread_mutex_lock(&s->lock);
    pid = s->pid;
    (void) pthread_mutex_unlock(&s->lock);

    for (;;) {
        ssize_t n = read_stdin(buf, EXEC_INPUT_CHUNK_BYTES);
        if (n == 0)
            break;
        if (!st && input_open(c, pid, &st) < 0)
            return NULL;
        if (input_send(st, s->pty, buf, (size_t) n) < 0)
            return NULL;
    }
    if (s->pty) {
        char eof = EXEC_PTY_EOF;
        if (!st && input_open(c, pid, &st) < 0)
            return NULL;
        if (input_send(st, true, &eof, 1) < 0)
            return NULL;
    }
    if (st) {
        ProtobufCMessage *resp = NULL;
        if (client_stream_close_and_recv(st, NULL, &resp) < 0)
            return NULL;
        protobuf_c_message_free_unpacked(resp, NULL);
        st = client_stream_free(st);
    }
    if (!s->pty)
        (void) close_stdin(c, pid);
    return NULL;
}

static int start_thread(void *(*fn)(void *), struct session *s)
{
    pthread_t t;
    pthread_attr_t attr;
    int r = pthread_attr_init(&attr);
    if (r != 0)
        return -r;
    (void) pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    r = pthread_create(&t, &attr, fn, s);
    (void) pthread_attr_destroy(&attr);
    return -r;
}

static void on_start(uint32_t pid, void *userdata)
{
    struct session *s = userdata;
    (void) pthread_mutex_lock(&s->lock);
    s->pid = pid;
    s->started = true;
    (void) pthread_cond_broadcast(&s->cond);
    (void) pthread_mutex_unlock(&s->lock);
    if (pid != 0 && s->stdin) {
        int r = start_thread(input_thread, s);
        if (r < 0)
            cli_warnf("cannot forward stdin: %s", strerror(-r));
    }
}

/* "guestctl-" and 32 hex digits of randomness: unique enough never to meet a retry's id. */
static void mint_exec_id(char out[EXEC_ID_BYTES])
{
    static const char hex[] = "0123456789abcdef";
    uint8_t rnd[EXEC_ID_RANDOM_BYTES];
    size_t got = 0;
    while (got < sizeof(rnd)) {
        ssize_t k = getrandom(rnd + got, sizeof(rnd) - got, 0);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            /* No getrandom (very old kernels): time and pid still make a distinct id. */
            struct timespec ts;
            (void) clock_gettime(CLOCK_REALTIME, &ts);
            uint64_t mix = (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
            mix ^= (uint64_t) getpid() << 32;
            for (size_t i = got; i < sizeof(rnd); i++)
                rnd[i] = (uint8_t) (mix >> (8 * (i % 8)));
            break;
        }
        got += (size_t) k;
    }
    size_t n = (size_t) snprintf(out, EXEC_ID_BYTES, "guestctl-");
    for (size_t i = 0; i < sizeof(rnd); i++) {
        out[n++] = hex[rnd[i] >> 4];
        out[n++] = hex[rnd[i] & 15];
    }
    out[n] = '\0';
}

/* --- the session ----------------------------------------------------------------------------- */

static int session_init(struct session *s, bool pty, bool forward_stdin)
{
    pthread_condattr_t ca;
    *s = (struct session){.pty = pty, .stdin = forward_stdin};
    if (pthread_condattr_init(&ca) != 0)
        return -ENOMEM;
    (void) pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    (void) pthread_cond_init(&s->cond, &ca);
    (void) pthread_condattr_destroy(&ca);
    (void) pthread_mutex_init(&s->lock, NULL);

    /* SIGPIPE would end guestctl without a word (and with the terminal raw): writes report
     * EPIPE instead. */
    (void) signal(SIGPIPE, SIG_IGN);
    if (pty && isatty(STDIN_FILENO)) {
        s->raw = true;
        session_block_signals(s);
        int r = term_raw(STDIN_FILENO);
        if (r < 0) {
            s->raw = false;
            cli_warnf("cannot put the terminal into raw mode: %s", strerror(-r));
        }
    } else {
        session_block_signals(s);
    }
    int r = start_thread(signal_thread, s);
    if (r < 0)
        return cli_fail_errno("starting the signal thread", r);
    return 0;
}

/* Builds the request for `spec` and runs it to the end event (returned in *ret_end). */
static int session_run(struct session *s, const struct exec_spec *spec,
                       Guestd__V1__ProcessEvent **ret_end)
{
    _cleanup_client_ struct client *c = NULL;
    _cleanup_client_stream_ struct client_stream *st = NULL;
    _cleanup_free_ Process__ProcessConfig__EnvsEntry *entries = NULL;
    _cleanup_free_ Process__ProcessConfig__EnvsEntry **envs = NULL;
    char what[128];

    int r = cli_client_new(CLIENT_TIMEOUT_INFINITE, &c);
    if (r != 0)
        return r;

    Process__ProcessConfig cfg = PROCESS__PROCESS_CONFIG__INIT;
    cfg.cmd = (char *) spec->cmd;
    cfg.args = spec->args;
    cfg.n_args = spec->n_args;
    if (spec->env.n > 0) {
        entries = calloc(spec->env.n, sizeof(*entries));
        envs = calloc(spec->env.n, sizeof(*envs));
        if (!entries || !envs)
            return cli_fail_errno("building the request", -ENOMEM);
        for (size_t i = 0; i < spec->env.n; i++) {
            process__process_config__envs_entry__init(&entries[i]);
            entries[i].key = spec->env.items[i].key;
            entries[i].value = spec->env.items[i].value;
            envs[i] = &entries[i];
        }
        cfg.envs = envs;
        cfg.n_envs = spec->env.n;
    }
    if (spec->cwd) {
        cfg._cwd_case = PROCESS__PROCESS_CONFIG___CWD_CWD;
        cfg.cwd = (char *) spec->cwd;
    }

    Process__StartRequest start = PROCESS__START_REQUEST__INIT;
    Process__PTY pty = PROCESS__PTY__INIT;
    Process__PTY__Size size = PROCESS__PTY__SIZE__INIT;
    start.process = &cfg;
    if (s->pty) {
        pty_size(&size.cols, &size.rows);
        pty.size = &size;
        start._pty_case = PROCESS__START_REQUEST___PTY_PTY;
        start.pty = &pty;
    }
    if (spec->tag) {
        start._tag_case = PROCESS__START_REQUEST___TAG_TAG;
        start.tag = (char *) spec->tag;
    }
    if (!s->stdin) {
        start._stdin_case = PROCESS__START_REQUEST___STDIN_STDIN;
        start.stdin = false;
    }
    Guestd__V1__StartRequest req = GUESTD__V1__START_REQUEST__INIT;
    char exec_id[EXEC_ID_BYTES];
    req.start = &start;
    if (spec->exec_id) {
        req.exec_id = (char *) spec->exec_id;
    } else {
        /* guestd reports a spawn failure as a typed result only for starts with an exec id. */
        mint_exec_id(exec_id);
        req.exec_id = exec_id;
    }

    struct client_call_options o = cli_call_options(spec->timeout_s * 1000);
    struct client_error e = {0};
    (void) snprintf(what, sizeof(what), "starting '%s'", spec->cmd);
    r = client_stream_open_server(c, "/guestd.v1.Process/Start", &o, &req.base,
                                  &guestd__v1__process_event__descriptor, &e, &st);
    if (r < 0) {
        r = cli_fail(what, r, &e);
        client_error_done(&e);
        return r;
    }

    struct events_handler h = {.on_start = on_start, .userdata = s};
    r = events_pump(st, &h, &e, ret_end);
    (void) pthread_mutex_lock(&s->lock);
    s->finished = true;
    (void) pthread_cond_broadcast(&s->cond);
    (void) pthread_mutex_unlock(&s->lock);
    if (r < 0) {
        term_restore(); /* so that the message below is readable */
        if (spec->timeout_s && e.code && streq(e.code, "deadline_exceeded")) {
            (void) snprintf(what, sizeof(what), "'%s' ran past its --timeout of %u s", spec->cmd,
                            spec->timeout_s);
            (void) cli_fail(what, r, &e);
            r = CLI_EXIT_TIMEOUT;
        } else {
            (void) pthread_mutex_lock(&s->lock);
            uint32_t pid = s->pid;
            (void) pthread_mutex_unlock(&s->lock);
            if (pid)
                (void) snprintf(what, sizeof(what),
                                "the stream of process %u ended early (it may still run: "
                                "'guestctl attach %u')",
                                pid, pid);
            else
                (void) snprintf(what, sizeof(what), "running '%s'", spec->cmd);
            r = events_fail(what, r, &h, &e);
        }
        client_error_done(&e);
        return r;
    }
    return 0;
}

static int session_exit_status(Guestd__V1__ProcessEvent *end, const char *cmd)
{
    term_restore();
    int r = events_exit_status(end->end, cmd);
    protobuf_c_message_free_unpacked(&end->base, NULL);
    return r;
}

/* --- option parsing ------------------------------------------------------------------------ */

enum {
    OPT_TIMEOUT = CLI_OPT_FIRST_COMMAND_OPTION,
    OPT_TAG,
    OPT_EXEC_ID,
};

static int parse_env(struct exec_spec *spec, const char *kv)
{
    const char *eq = strchr(kv, '=');
    if (!eq || eq == kv)
        return cli_usage("--env needs NAME=VALUE, not '%s'", kv);
    _cleanup_free_ char *name = strndup(kv, (size_t) (eq - kv));
    if (!name)
        return cli_fail_errno("parsing --env", -ENOMEM);
    kv_set(&spec->env, name, eq + 1);
    return CLI_CONTINUE;
}

/* The remote terminal type: the local one, so that full-screen programs draw correctly. */
static void set_term(struct exec_spec *spec)
{
    if (kv_get(&spec->env, "TERM"))
        return;
    const char *term = getenv("TERM");
    kv_set(&spec->env, "TERM", term && *term ? term : EXEC_DEFAULT_TERM);
}

static int exec_run(int argc, char **argv)
{
    static const struct option options[] = {
            {"tty", no_argument, NULL, 't'},
            {"env", required_argument, NULL, 'e'},
            {"cwd", required_argument, NULL, 'w'},
            {"no-stdin", no_argument, NULL, 'n'},
            {"timeout", required_argument, NULL, OPT_TIMEOUT},
            {"tag", required_argument, NULL, OPT_TAG},
            {"exec-id", required_argument, NULL, OPT_EXEC_ID},
            CLI_COMMON_LONG_OPTIONS,
            {},
    };
    _cleanup_(exec_spec_done) struct exec_spec spec = {0};
    int c, r;

    kv_init(&spec.env);
    optind = 0;
    opterr = 0;
    /* '+': options end at the command, so its own flags are left alone. */
    while ((c = getopt_long(argc, argv, "+:te:w:nu:h", options, NULL)) != -1) {
        r = CLI_CONTINUE;
        switch (c) {
        case 't':
            spec.tty = true;
            break;
        case 'e':
            r = parse_env(&spec, optarg);
            break;
        case 'w':
            spec.cwd = optarg;
            break;
        case 'n':
            spec.no_stdin = true;
            break;
        case 'u':
            r = cli_common_option(CLI_OPT_USER, argv);
            break;
        case OPT_TIMEOUT:
            if (parse_u32(optarg, &spec.timeout_s) < 0 || spec.timeout_s == 0 ||
                spec.timeout_s > EXEC_MAX_TIMEOUT_S)
                r = cli_usage("--timeout needs a number of seconds between 1 and %u, not '%s'",
                              EXEC_MAX_TIMEOUT_S, optarg);
            break;
        case OPT_TAG:
            spec.tag = optarg;
            break;
        case OPT_EXEC_ID:
            spec.exec_id = optarg;
            break;
        default:
            r = cli_common_option(c, argv);
            break;
        }
        if (r != CLI_CONTINUE)
            return r;
    }
    if (optind >= argc)
        return cli_usage("missing the command to run");
    spec.cmd = argv[optind];
    spec.args = argv + optind + 1;
    spec.n_args = (size_t) (argc - optind - 1);
    if (!*spec.cmd)
        return cli_usage("the command must not be empty");
    if (spec.tty)
        set_term(&spec);

    struct session *s = &session;
    r = session_init(s, spec.tty, !spec.no_stdin);
    if (r != 0)
        return r;
    Guestd__V1__ProcessEvent *end = NULL;
    r = session_run(s, &spec, &end);
    if (r != 0)
        return r;
    return session_exit_status(end, spec.cmd);
}

static int shell_run(int argc, char **argv)
{
    static const struct option options[] = {
            {"cwd", required_argument, NULL, 'w'},
            {"env", required_argument, NULL, 'e'},
            CLI_COMMON_LONG_OPTIONS,
            {},
    };
    static char *login_args[] = {"-i", "-l"};
    _cleanup_(exec_spec_done) struct exec_spec spec = {0};
    int c, r;

    kv_init(&spec.env);
    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "+:w:e:u:h", options, NULL)) != -1) {
        r = CLI_CONTINUE;
        switch (c) {
        case 'w':
            spec.cwd = optarg;
            break;
        case 'e':
            r = parse_env(&spec, optarg);
            break;
        case 'u':
            r = cli_common_option(CLI_OPT_USER, argv);
            break;
        default:
            r = cli_common_option(c, argv);
            break;
        }
        if (r != CLI_CONTINUE)
            return r;
    }
    if (optind < argc)
        return cli_usage("unexpected argument '%s' (use 'guestctl exec --tty' for a command)",
                         argv[optind]);
    spec.tty = true;
    spec.cmd = "/bin/bash";
    spec.args = login_args;
    spec.n_args = ARRAY_SIZE(login_args);
    set_term(&spec);

    struct session *s = &session;
    r = session_init(s, true, true);
    if (r != 0)
        return r;
    Guestd__V1__ProcessEvent *end = NULL;
    r = session_run(s, &spec, &end);
    if (r != 0)
        return r;
    const Guestd__V1__Result *res = end->end;
    /* No bash in the guest (busybox images): the spawn error says so, and sh takes over. */
    if (res->cause == GUESTD__V1__EXIT_CAUSE__EXIT_CAUSE_SPAWN_FAILED &&
        res->spawn_errno == ENOENT) {
        protobuf_c_message_free_unpacked(&end->base, NULL);
        end = NULL;
        spec.cmd = "/bin/sh";
        (void) pthread_mutex_lock(&s->lock);
        s->started = s->finished = false;
        (void) pthread_mutex_unlock(&s->lock);
        r = session_run(s, &spec, &end);
        if (r != 0)
            return r;
    }
    return session_exit_status(end, spec.cmd);
}

const struct cli_command exec_command = {
        .name = "exec",
        .run = exec_run,
        .summary = "run a command in the guest, connected to local stdin, stdout and stderr",
        .help = "Usage: guestctl exec [OPTIONS] [--] CMD [ARG...]\n"
                "\n"
                "Runs CMD in the guest (guestd.v1.Process/Start). Its stdout and stderr are "
                "copied\n"
                "byte for byte to the local ones, local stdin is forwarded (EOF closes the remote\n"
                "stdin), and guestctl exits with the remote exit status, or 128+N when signal N\n"
                "ended the process. Ctrl-C sends SIGINT to the remote process group; a second\n"
                "Ctrl-C sends SIGKILL. SIGTERM, SIGHUP and SIGQUIT are passed on once.\n"
                "A command that cannot be started exits 127 (126 for a permission problem),\n"
                "after a message naming the failed step and errno.\n"
                "\n"
                "Options:\n"
                "  -t, --tty             run in a pseudo-terminal (local terminal in raw mode)\n"
                "  -e, --env NAME=VALUE  set an environment variable (repeatable)\n"
                "  -w, --cwd DIR         working directory (default: the user's home)\n"
                "  -u, --user USER       run as USER (default: guestd's default user)\n"
                "  -n, --no-stdin        do not forward local stdin (the remote one is empty)\n"
                "      --timeout SECONDS kill the process after SECONDS; guestctl then exits 124\n"
                "      --tag TAG         tag the process (for ps, attach, kill, result)\n"
                "      --exec-id ID      idempotency key: a retry with the same ID attaches to "
                "the\n"
                "                        first run instead of starting the command again\n",
};

const struct cli_command shell_command = {
        .name = "shell",
        .run = shell_run,
        .summary = "open an interactive login shell in a pseudo-terminal",
        .help = "Usage: guestctl shell [OPTIONS]\n"
                "\n"
                "Opens '/bin/bash -i -l' in a pseudo-terminal in the guest ('/bin/sh -i -l' when\n"
                "the guest has no bash), with the local terminal in raw mode. Window size changes\n"
                "are forwarded; the terminal is restored however guestctl ends. Exits with the\n"
                "shell's exit status.\n"
                "\n"
                "Options:\n"
                "  -u, --user USER       log in as USER\n"
                "  -w, --cwd DIR         start in DIR\n"
                "  -e, --env NAME=VALUE  set an environment variable (repeatable)\n",
};

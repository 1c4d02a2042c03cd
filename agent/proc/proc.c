/* SPDX-License-Identifier: Apache-2.0 */
#include "proc/proc.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

#include "base/alloc.h"
#include "base/cleanup.h"
#include "base/log.h"
#include "base/macro.h"
#include "proc/reaper.h"

/* Bytes read from a child's pipe at once; one read becomes one output chunk (as envd). */
#define PROC_READ_CHUNK (32 * 1024)

enum pipe_slot {
    SLOT_OUT = 0, /* stdout, or the PTY master (read and write) */
    SLOT_ERR,
    SLOT_IN,
    SLOT_COUNT,
};

struct proc {
    struct proc_table *t;
    int refs;
    struct proc *prev, *next; /* live or ended list */
    bool in_live, in_ended;
    char *tag, *exec_id, *fingerprint;
    void *config;
    void (*config_free)(void *);
    bool pty;
    int pty_fd; /* borrowed from the SLOT_OUT handle, for resizes */
    uv_pipe_t pipes[SLOT_COUNT];
    bool pipe_open[SLOT_COUNT];
    bool pipe_eof[SLOT_COUNT];
    size_t in_writes; /* stdin writes in flight */
    bool in_close_pending;
    uv_timer_t drain_timer;
    uv_timer_t stall_timer;    /* owner-paced policy: releases the child from a stalled owner */
    uv_timer_t deadline_timer; /* Connect-Timeout-Ms of the start */
    bool owner_released;
    int pending_closes;
    bool leader_exited;
    bool ended;
    bool reading_paused;
    enum proc_policy policy;
    enum proc_cause pending_cause;
    int wait_status;
    uint64_t ended_ms;
    struct outlog *log;
    struct proc_sub *subs;
    struct proc_result res;
};

struct proc_table {
    uv_loop_t *loop;
    struct proc_limits lim;
    struct proc *live_head, *live_tail;
    struct proc *ended_head, *ended_tail;
    size_t n_live, n_ended;
    size_t log_total;
    uv_timer_t expiry_timer;
    uv_timer_t shutdown_timer;
    int pending_closes;
    bool shutting_down;
    void (*shutdown_done)(void *);
    void *shutdown_data;
    char read_buf[PROC_READ_CHUNK];
};

static int64_t realtime_ns(void)
{
    struct timespec ts;
    (void) clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t) ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* --- lists ----------------------------------------------------------------------------------- */

static void list_remove(struct proc **head, struct proc **tail, struct proc *p)
{
    if (p->prev)
        p->prev->next = p->next;
    else
        *head = p->next;
    if (p->next)
        p->next->prev = p->prev;
    else
        *tail = p->prev;
    p->prev = p->next = NULL;
}

static void list_append(struct proc **head, struct proc **tail, struct proc *p)
{
    p->prev = *tail;
    p->next = NULL;
    if (*tail)
        (*tail)->next = p;
    else
        *head = p;
    *tail = p;
}

/* --- lifetime -------------------------------------------------------------------------------- */

static void proc_maybe_free(struct proc *p)
{
    if (p->refs > 0 || p->pending_closes > 0)
        return;
    if (p->t)
        p->t->log_total -= outlog_size(p->log);
    outlog_free(p->log);
    if (p->config_free)
        p->config_free(p->config);
    free(p->tag);
    free(p->exec_id);
    free(p->fingerprint);
    free(p);
}

static void on_handle_closed(uv_handle_t *h)
{
    struct proc *p = h->data;
    p->pending_closes--;
    proc_maybe_free(p);
}

static void close_pipe(struct proc *p, enum pipe_slot s)
{
    if (!p->pipe_open[s])
        return;
    p->pipe_open[s] = false;
    uv_close((uv_handle_t *) &p->pipes[s], on_handle_closed);
}

static void close_timers(struct proc *p)
{
    uv_timer_t *timers[] = {&p->drain_timer, &p->stall_timer, &p->deadline_timer};
    for (size_t i = 0; i < ARRAY_SIZE(timers); i++)
        if (!uv_is_closing((uv_handle_t *) timers[i]))
            uv_close((uv_handle_t *) timers[i], on_handle_closed);
}

void proc_ref(struct proc *p)
{
    p->refs++;
}

void proc_unref(struct proc *p)
{
    if (!p)
        return;
    p->refs--;
    proc_maybe_free(p);
}

/* --- results --------------------------------------------------------------------------------- */

const char *proc_signal_text(int sig)
{
    /* The texts Go prints for syscall.Signal (and so envd in "signal: …" status strings). */
    static const char *const texts[] = {
            [SIGHUP] = "hangup",
            [SIGINT] = "interrupt",
            [SIGQUIT] = "quit",
            [SIGILL] = "illegal instruction",
            [SIGTRAP] = "trace/breakpoint trap",
            [SIGABRT] = "aborted",
            [SIGBUS] = "bus error",
            [SIGFPE] = "floating point exception",
            [SIGKILL] = "killed",
            [SIGUSR1] = "user defined signal 1",
            [SIGSEGV] = "segmentation fault",
            [SIGUSR2] = "user defined signal 2",
            [SIGPIPE] = "broken pipe",
            [SIGALRM] = "alarm clock",
            [SIGTERM] = "terminated",
            [SIGSTKFLT] = "stack fault",
            [SIGCHLD] = "child exited",
            [SIGCONT] = "continued",
            [SIGSTOP] = "stopped (signal)",
            [SIGTSTP] = "stopped",
            [SIGTTIN] = "stopped (tty input)",
            [SIGTTOU] = "stopped (tty output)",
            [SIGURG] = "urgent I/O condition",
            [SIGXCPU] = "CPU time limit exceeded",
            [SIGXFSZ] = "file size limit exceeded",
            [SIGVTALRM] = "virtual timer expired",
            [SIGPROF] = "profiling timer expired",
            [SIGWINCH] = "window changed",
            [SIGIO] = "I/O possible",
            [SIGPWR] = "power failure",
            [SIGSYS] = "bad system call",
    };
    if (sig > 0 && (size_t) sig < ARRAY_SIZE(texts) && texts[sig])
        return texts[sig];
    return NULL;
}

void proc_status_string(const struct proc_result *r, char *out, size_t len)
{
    if (r->exited) {
        (void) snprintf(out, len, "exit status %d", r->exit_code);
        return;
    }
    if (r->signal) {
        const char *text = proc_signal_text(r->signal);
        char num[32];
        if (!text) {
            (void) snprintf(num, sizeof(num), "signal %d", r->signal);
            text = num;
        }
        (void) snprintf(out, len, "signal: %s%s", text, r->core_dumped ? " (core dumped)" : "");
        return;
    }
    (void) snprintf(out, len, "%s",
                    r->cause == PROC_CAUSE_SPAWN_FAILED ? "spawn failed" : "running");
}

const char *proc_cause_name(enum proc_cause c)
{
    switch (c) {
    case PROC_CAUSE_RUNNING:
        return "running";
    case PROC_CAUSE_EXITED:
        return "exited";
    case PROC_CAUSE_SIGNALED:
        return "signaled";
    case PROC_CAUSE_SIGNALED_BY_CLIENT:
        return "signaled_by_client";
    case PROC_CAUSE_DEADLINE:
        return "deadline";
    case PROC_CAUSE_SHUTDOWN:
        return "shutdown";
    case PROC_CAUSE_SPAWN_FAILED:
        return "spawn_failed";
    case PROC_CAUSE_OOM_KILLED:
        return "oom_killed";
    }
    return "unknown";
}

/* --- subscribers ----------------------------------------------------------------------------- */

static void wake_all(struct proc *p)
{
    for (struct proc_sub *s = p->subs, *next; s; s = next) {
        next = s->next; /* wake may unsubscribe s itself */
        s->wake(s);
    }
}

static struct proc_sub *owner_of(struct proc *p)
{
    for (struct proc_sub *s = p->subs; s; s = s->next)
        if (s->owner)
            return s;
    return NULL;
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);

/* Whether the owner currently paces the child. */
static bool flow_controlled(const struct proc *p)
{
    return p->policy == PROC_POLICY_BLOCK ||
           (p->policy == PROC_POLICY_OWNER_PACED && !p->owner_released);
}

/* Bytes the log can take before it would drop something the pacing owner has not read. */
static size_t owner_room(struct proc *p)
{
    struct proc_sub *o = owner_of(p);
    if (!o || !flow_controlled(p))
        return SIZE_MAX;
    uint64_t behind = outlog_end(p->log) - o->cursor;
    size_t cap = outlog_cap(p->log);
    return behind >= cap ? 0 : cap - (size_t) behind;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct proc *p = h->data;
    (void) suggested;
    /* Reads are handled synchronously in on_read, so one buffer per table is enough. A paced
     * child is read no further than the owner's room, so nothing unread is ever dropped. */
    size_t room = owner_room(p);
    size_t n = MIN(sizeof(p->t->read_buf), room);
    *buf = uv_buf_init(p->t->read_buf, (unsigned) (n ? n : 1));
}

static void set_reading(struct proc *p, bool on)
{
    for (enum pipe_slot s = SLOT_OUT; s <= SLOT_ERR; s++) {
        if (!p->pipe_open[s] || p->pipe_eof[s])
            continue;
        if (on)
            (void) uv_read_start((uv_stream_t *) &p->pipes[s], on_alloc, on_read);
        else
            (void) uv_read_stop((uv_stream_t *) &p->pipes[s]);
    }
    p->reading_paused = !on;
}

static void apply_flow(struct proc *p);

static void on_owner_stalled(uv_timer_t *t)
{
    struct proc *p = t->data;
    log_debug("process %d: its owner stopped reading; output is no longer paced", (int) p->res.pid);
    p->owner_released = true;
    apply_flow(p);
}

/*
 * Pacing: the child is not read while the owner has no room left (a full pipe then blocks the
 * child), and is read again once the owner has consumed half the log. With the owner-paced
 * policy a stall timer runs while the child waits; an owner that makes no progress before it
 * fires releases the child for good.
 */
static void apply_flow(struct proc *p)
{
    size_t room = owner_room(p);
    size_t cap = outlog_cap(p->log);
    if (room == 0 && !p->reading_paused) {
        set_reading(p, false);
        if (p->policy == PROC_POLICY_OWNER_PACED)
            (void) uv_timer_start(&p->stall_timer, on_owner_stalled, p->t->lim.owner_stall_ms, 0);
    } else if (p->reading_paused && (room == SIZE_MAX || room >= cap / 2)) {
        (void) uv_timer_stop(&p->stall_timer);
        set_reading(p, true);
    }
}

void proc_subscribe(struct proc *p, struct proc_sub *s, uint64_t from)
{
    s->proc = p;
    s->cursor = from;
    s->next = p->subs;
    p->subs = s;
    proc_ref(p);
}

void proc_unsubscribe(struct proc_sub *s)
{
    struct proc *p = s->proc;
    if (!p)
        return;
    for (struct proc_sub **pp = &p->subs; *pp; pp = &(*pp)->next)
        if (*pp == s) {
            *pp = s->next;
            break;
        }
    s->proc = NULL;
    s->next = NULL;
    if (p->reading_paused)
        apply_flow(p);
    proc_unref(p);
}

void proc_sub_advanced(struct proc_sub *s)
{
    struct proc *p = s->proc;
    if (!p)
        return;
    /* Progress by the owner restarts the stall clock. */
    if (s->owner && uv_is_active((uv_handle_t *) &p->stall_timer))
        (void) uv_timer_again(&p->stall_timer);
    if (p->reading_paused)
        apply_flow(p);
}

/* --- the global cap -------------------------------------------------------------------------- */

/* Keeps all logs together under the global cap: ended processes' logs go first (oldest
 * first), then the oldest running processes' logs are halved until the total fits. */
static void enforce_global_cap(struct proc_table *t)
{
    for (struct proc *p = t->ended_head; p && t->log_total > t->lim.global_cap; p = p->next)
        t->log_total -= outlog_set_cap(p->log, 0);
    for (struct proc *p = t->live_head; p && t->log_total > t->lim.global_cap; p = p->next) {
        size_t size = outlog_size(p->log);
        if (size > 0)
            t->log_total -= outlog_set_cap(p->log, size / 2);
    }
}

/* --- ending ---------------------------------------------------------------------------------- */

static void expiry_schedule(struct proc_table *t);

static void proc_end(struct proc *p)
{
    struct proc_table *t = p->t;
    if (p->ended)
        return;
    p->ended = true;
    (void) uv_timer_stop(&p->drain_timer);
    (void) uv_timer_stop(&p->stall_timer);
    (void) uv_timer_stop(&p->deadline_timer);
    /* Readers left open after the drain period: a grandchild holds the pipe. */
    for (enum pipe_slot s = SLOT_OUT; s <= SLOT_ERR; s++) {
        if (p->pipe_open[s] && !p->pipe_eof[s])
            p->res.output_cut = true;
        close_pipe(p, s);
    }
    close_pipe(p, SLOT_IN);
    if (p->res.cause != PROC_CAUSE_SPAWN_FAILED) {
        int st = p->wait_status;
        if (WIFEXITED(st)) {
            p->res.exited = true;
            p->res.exit_code = WEXITSTATUS(st);
            p->res.cause = PROC_CAUSE_EXITED;
        } else if (WIFSIGNALED(st)) {
            p->res.exit_code = -1;
            p->res.signal = WTERMSIG(st);
            p->res.core_dumped = WCOREDUMP(st);
            p->res.cause =
                    p->pending_cause != PROC_CAUSE_RUNNING ? p->pending_cause : PROC_CAUSE_SIGNALED;
        }
    }
    p->res.ended_ns = realtime_ns();
    p->ended_ms = uv_now(t->loop);
    if (p->in_live) {
        list_remove(&t->live_head, &t->live_tail, p);
        p->in_live = false;
        t->n_live--;
    }
    list_append(&t->ended_head, &t->ended_tail, p);
    p->in_ended = true;
    t->n_ended++;
    /* Bounded results: the oldest go first. */
    while (t->n_ended > t->lim.max_results) {
        struct proc *old = t->ended_head;
        list_remove(&t->ended_head, &t->ended_tail, old);
        old->in_ended = false;
        t->n_ended--;
        proc_unref(old);
    }
    expiry_schedule(t);
    log_debug("process %d ended: %s", (int) p->res.pid, proc_cause_name(p->res.cause));
    proc_ref(p);
    wake_all(p);
    if (t->shutting_down && t->n_live == 0 && t->shutdown_done) {
        void (*done)(void *) = t->shutdown_done;
        t->shutdown_done = NULL;
        (void) uv_timer_stop(&t->shutdown_timer);
        done(t->shutdown_data);
    }
    proc_unref(p);
}

static bool output_done(const struct proc *p)
{
    for (enum pipe_slot s = SLOT_OUT; s <= SLOT_ERR; s++)
        if (p->pipe_open[s] && !p->pipe_eof[s])
            return false;
    return true;
}

static void on_drain_timeout(uv_timer_t *timer)
{
    struct proc *p = timer->data;
    proc_end(p);
}

static void on_leader_exit(pid_t pid, int status, void *data)
{
    struct proc *p = data;
    (void) pid;
    p->leader_exited = true;
    p->wait_status = status;
    if (output_done(p)) {
        proc_end(p);
        return;
    }
    /* Exit comes after EOF on stdout and stderr, or after a bounded drain: a background
     * grandchild may hold the pipe forever. */
    (void) uv_timer_start(&p->drain_timer, on_drain_timeout, p->t->lim.drain_ms, 0);
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct proc *p = stream->data;
    enum pipe_slot slot = (uv_pipe_t *) stream == &p->pipes[SLOT_ERR] ? SLOT_ERR : SLOT_OUT;
    if (nread > 0) {
        enum out_stream s = slot == SLOT_ERR ? OUT_STDERR : p->pty ? OUT_PTY : OUT_STDOUT;
        size_t before = outlog_size(p->log);
        if (outlog_append(p->log, s, buf->base, (size_t) nread) < 0)
            log_warn("process %d: output dropped: out of memory", (int) p->res.pid);
        p->t->log_total = p->t->log_total - before + outlog_size(p->log);
        if (p->t->log_total > p->t->lim.global_cap)
            enforce_global_cap(p->t);
        apply_flow(p);
        wake_all(p);
        return;
    }
    if (nread == 0)
        return;
    /* EOF, or EIO on a PTY master once the slave side is gone: the end of this stream. */
    p->pipe_eof[slot] = true;
    (void) uv_read_stop(stream);
    /* A PTY master stays open until the process ends: closing it hangs up the terminal, and
     * the kernel would SIGHUP a child that closed its descriptors but has not exited yet. */
    if (!(slot == SLOT_OUT && p->pty))
        close_pipe(p, slot);
    if (p->leader_exited && output_done(p))
        proc_end(p);
}

/* --- starting -------------------------------------------------------------------------------- */

static struct proc *proc_alloc(struct proc_table *t, const struct proc_spec *spec)
{
    struct proc *p = xcalloc(1, sizeof(*p));
    p->t = t;
    p->refs = 1; /* the table's */
    p->pty_fd = -1;
    p->policy = spec->policy;
    p->pty = spec->pty;
    p->tag = spec->tag ? xstrdup(spec->tag) : NULL;
    p->exec_id = spec->exec_id && *spec->exec_id ? xstrdup(spec->exec_id) : NULL;
    p->fingerprint = spec->fingerprint ? xstrdup(spec->fingerprint) : NULL;
    p->config = spec->config;
    p->config_free = spec->config_free;
    p->res.pid = -1;
    p->res.started_ns = realtime_ns();
    (void) uv_timer_init(t->loop, &p->drain_timer);
    p->drain_timer.data = p;
    (void) uv_timer_init(t->loop, &p->stall_timer);
    p->stall_timer.data = p;
    (void) uv_timer_init(t->loop, &p->deadline_timer);
    p->deadline_timer.data = p;
    /* The timers, closed when the process is dropped (close_timers). */
    p->pending_closes = 3;
    return p;
}

/* Wraps an fd we own in a pipe handle of slot s. Takes ownership of fd on success. */
static int open_pipe(struct proc *p, enum pipe_slot s, int fd)
{
    int r = uv_pipe_init(p->t->loop, &p->pipes[s], 0);
    if (r < 0)
        return r;
    p->pipes[s].data = p;
    p->pending_closes++;
    p->pipe_open[s] = true;
    r = uv_pipe_open(&p->pipes[s], fd);
    if (r < 0)
        close_pipe(p, s);
    return r;
}

/* Drops a process that never became live (spawn failed). */
static void proc_discard(struct proc *p)
{
    for (enum pipe_slot s = SLOT_OUT; s < SLOT_COUNT; s++)
        close_pipe(p, s);
    close_timers(p);
    proc_unref(p);
}

/* proc_start owns spec->config from the start: early failures free it here. */
static int drop_config(const struct proc_spec *spec, int r)
{
    if (spec->config_free)
        spec->config_free(spec->config);
    return r;
}

static void on_spawn_failure_exit(pid_t pid, int status, void *data)
{
    (void) pid;
    (void) status;
    (void) data;
}

int proc_start(struct proc_table *t, const struct proc_spec *spec, struct proc **ret,
               struct spawn_error *ret_err)
{
    _cleanup_close_ int out_r = -1, out_w = -1, err_r = -1, err_w = -1, in_r = -1, in_w = -1;
    _cleanup_close_ int master = -1, slave = -1;
    struct spawn_plan plan = spec->plan;
    int fds[2];
    int r;

    if (t->shutting_down)
        return drop_config(spec, -ESHUTDOWN);
    if (t->n_live >= t->lim.max_processes)
        return drop_config(spec, -EAGAIN);
    if (spec->pty) {
        r = spawn_openpty(spec->cols, spec->rows, &master, &slave);
        if (r < 0) {
            *ret_err = (struct spawn_error){SPAWN_STEP_CTTY, -r};
            return drop_config(spec, r);
        }
        plan.stdin_fd = plan.stdout_fd = plan.stderr_fd = slave;
        plan.pty = true;
    } else {
        if (pipe2(fds, O_CLOEXEC) < 0)
            goto pipe_fail;
        out_r = fds[0], out_w = fds[1];
        if (pipe2(fds, O_CLOEXEC) < 0)
            goto pipe_fail;
        err_r = fds[0], err_w = fds[1];
        if (spec->stdin_pipe) {
            if (pipe2(fds, O_CLOEXEC) < 0)
                goto pipe_fail;
            in_r = fds[0], in_w = fds[1];
        }
        plan.stdin_fd = in_r;
        plan.stdout_fd = out_w;
        plan.stderr_fd = err_w;
        plan.pty = false;
    }

    struct proc *p = proc_alloc(t, spec);
    r = outlog_new(t->lim.log_cap, &p->log);
    if (r < 0) {
        proc_discard(p);
        return r;
    }
    pid_t pid = -1;
    struct spawn_error serr = {SPAWN_STEP_NONE, 0};
    r = spawn_start(&plan, &pid, &serr);
    if (r < 0) {
        if (pid > 0)
            (void) reaper_watch(pid, on_spawn_failure_exit, NULL);
        *ret_err = serr;
        if (p->exec_id) {
            /* Keep the failure as a result so that a retried start sees it. No process ran,
             * so the result has no pid (the forked child never ran the command). */
            p->res.pid = 0;
            p->res.cause = PROC_CAUSE_SPAWN_FAILED;
            p->res.spawn_step = serr.step;
            p->res.spawn_errno = serr.err;
            p->res.exit_code = -1;
            p->leader_exited = true;
            proc_ref(p);
            proc_end(p);
            *ret = p;
            return r;
        }
        proc_discard(p);
        return r;
    }
    p->res.pid = pid;
    (void) reaper_watch(pid, on_leader_exit, p);

    /* The parent keeps the read ends (and the master); the child's ends close here. */
    if (spec->pty) {
        p->pty_fd = master;
        r = open_pipe(p, SLOT_OUT, master);
        if (r == 0)
            TAKE_FD(master);
        p->pipe_eof[SLOT_ERR] = true;
    } else {
        r = open_pipe(p, SLOT_OUT, out_r);
        if (r == 0) {
            TAKE_FD(out_r);
            r = open_pipe(p, SLOT_ERR, err_r);
        }
        if (r == 0)
            TAKE_FD(err_r);
        if (r == 0 && in_w >= 0) {
            r = open_pipe(p, SLOT_IN, in_w);
            if (r == 0)
                TAKE_FD(in_w);
        }
    }
    if (r < 0) {
        /* The child runs but cannot be watched properly: stop it rather than leak it. */
        (void) kill(pid, SIGKILL);
        log_warn("process %d: cannot watch its output: %s", (int) pid, uv_strerror(r));
    }
    list_append(&t->live_head, &t->live_tail, p);
    p->in_live = true;
    t->n_live++;
    set_reading(p, true);
    proc_ref(p);
    *ret = p;
    return 0;

pipe_fail:
    r = -errno;
    *ret_err = (struct spawn_error){SPAWN_STEP_STDIO, -r};
    return drop_config(spec, r);
}

/* --- input, signals, resize ------------------------------------------------------------------ */

struct input_req {
    uv_write_t w;
    struct proc *p;
    char data[];
};

static void on_input_written(uv_write_t *w, int status)
{
    struct input_req *req = container_of(w, struct input_req, w);
    struct proc *p = req->p;
    (void) status; /* a child that stopped reading is its own business */
    p->in_writes--;
    if (p->in_writes == 0 && p->in_close_pending) {
        p->in_close_pending = false;
        close_pipe(p, SLOT_IN);
    }
    free(req);
    proc_unref(p);
}

int proc_write_input(struct proc *p, const void *data, size_t len)
{
    enum pipe_slot s = p->pty ? SLOT_OUT : SLOT_IN;
    if (!p->pipe_open[s] || p->in_close_pending || p->ended)
        return -EPIPE;
    if (len == 0)
        return 0;
    struct input_req *req = malloc(sizeof(*req) + len);
    if (!req)
        return -ENOMEM;
    memcpy(req->data, data, len);
    req->p = p;
    uv_buf_t b = uv_buf_init(req->data, (unsigned) len);
    int r = uv_write(&req->w, (uv_stream_t *) &p->pipes[s], &b, 1, on_input_written);
    if (r < 0) {
        free(req);
        return r;
    }
    p->in_writes++;
    proc_ref(p);
    return 0;
}

int proc_close_stdin(struct proc *p)
{
    if (p->pty)
        return -ENOTTY;
    if (!p->pipe_open[SLOT_IN])
        return 0;
    if (p->in_writes > 0)
        p->in_close_pending = true; /* close once queued input has been written */
    else
        close_pipe(p, SLOT_IN);
    return 0;
}

static void on_deadline(uv_timer_t *t)
{
    struct proc *p = t->data;
    (void) proc_signal(p, SIGKILL, true, PROC_CAUSE_DEADLINE);
}

void proc_set_deadline(struct proc *p, uint64_t ms)
{
    if (!p->ended)
        (void) uv_timer_start(&p->deadline_timer, on_deadline, ms, 0);
}

int proc_resize(struct proc *p, unsigned short cols, unsigned short rows)
{
    if (!p->pty)
        return -ENOTTY;
    if (!p->pipe_open[SLOT_OUT])
        return -EPIPE;
    return spawn_pty_resize(p->pty_fd, cols, rows);
}

int proc_signal(struct proc *p, int sig, bool group, enum proc_cause cause)
{
    if (p->leader_exited && !group)
        return -ESRCH;
    if (p->ended)
        return -ESRCH;
    if (kill(group ? -p->res.pid : p->res.pid, sig) < 0)
        return -errno;
    bool terminating = sig == SIGKILL || sig == SIGTERM || sig == SIGINT || sig == SIGHUP ||
                       sig == SIGQUIT || sig == SIGABRT;
    if (terminating && p->pending_cause == PROC_CAUSE_RUNNING)
        p->pending_cause = cause;
    return 0;
}

/* --- accessors ------------------------------------------------------------------------------- */

pid_t proc_pid(const struct proc *p)
{
    return p->res.pid;
}

const char *proc_tag(const struct proc *p)
{
    return p->tag;
}

const char *proc_exec_id(const struct proc *p)
{
    return p->exec_id;
}

const char *proc_fingerprint(const struct proc *p)
{
    return p->fingerprint;
}

void *proc_config(const struct proc *p)
{
    return p->config;
}

bool proc_is_pty(const struct proc *p)
{
    return p->pty;
}

bool proc_has_ended(const struct proc *p)
{
    return p->ended;
}

const struct proc_result *proc_result(const struct proc *p)
{
    return &p->res;
}

const struct outlog *proc_log(const struct proc *p)
{
    return p->log;
}

/* --- the table ------------------------------------------------------------------------------- */

static void expire(struct proc_table *t)
{
    uint64_t now = uv_now(t->loop);
    while (t->ended_head && now - t->ended_head->ended_ms >= t->lim.result_ttl_ms) {
        struct proc *p = t->ended_head;
        list_remove(&t->ended_head, &t->ended_tail, p);
        p->in_ended = false;
        t->n_ended--;
        close_timers(p);
        proc_unref(p);
    }
}

static void on_expiry(uv_timer_t *timer)
{
    struct proc_table *t = timer->data;
    expire(t);
    expiry_schedule(t);
}

static void expiry_schedule(struct proc_table *t)
{
    if (!t->ended_head) {
        (void) uv_timer_stop(&t->expiry_timer);
        return;
    }
    uint64_t now = uv_now(t->loop);
    uint64_t due = t->ended_head->ended_ms + t->lim.result_ttl_ms;
    (void) uv_timer_start(&t->expiry_timer, on_expiry, due > now ? due - now : 0, 0);
}

int proc_table_new(uv_loop_t *loop, const struct proc_limits *limits, struct proc_table **ret)
{
    struct proc_table *t = calloc(1, sizeof(*t));
    if (!t)
        return -ENOMEM;
    t->loop = loop;
    t->lim = *limits;
    (void) uv_timer_init(loop, &t->expiry_timer);
    t->expiry_timer.data = t;
    (void) uv_timer_init(loop, &t->shutdown_timer);
    t->shutdown_timer.data = t;
    *ret = t;
    return 0;
}

static void on_shutdown_grace(uv_timer_t *timer)
{
    struct proc_table *t = timer->data;
    for (struct proc *p = t->live_head; p; p = p->next)
        if (!p->leader_exited || !p->ended)
            (void) proc_signal(p, SIGKILL, true, PROC_CAUSE_SHUTDOWN);
}

void proc_table_shutdown(struct proc_table *t, uint64_t grace_ms, void (*done)(void *), void *data)
{
    t->shutting_down = true;
    t->shutdown_done = done;
    t->shutdown_data = data;
    if (t->n_live == 0) {
        t->shutdown_done = NULL;
        if (done)
            done(data);
        return;
    }
    for (struct proc *p = t->live_head; p; p = p->next)
        (void) proc_signal(p, SIGTERM, true, PROC_CAUSE_SHUTDOWN);
    (void) uv_timer_start(&t->shutdown_timer, on_shutdown_grace, grace_ms, 0);
}

static void on_table_timer_closed(uv_handle_t *h)
{
    struct proc_table *t = h->data;
    if (--t->pending_closes == 0)
        free(t);
}

void proc_table_free(struct proc_table *t)
{
    if (!t)
        return;
    while (t->ended_head) {
        struct proc *p = t->ended_head;
        list_remove(&t->ended_head, &t->ended_tail, p);
        p->in_ended = false;
        close_timers(p);
        p->t = NULL;
        proc_unref(p);
    }
    for (struct proc *p = t->live_head, *next; p; p = next) {
        next = p->next;
        reaper_unwatch(p->res.pid);
        for (enum pipe_slot s = SLOT_OUT; s < SLOT_COUNT; s++)
            close_pipe(p, s);
        close_timers(p);
        p->t = NULL;
        proc_unref(p);
    }
    /* The timers are embedded: the table is freed in the last close callback. */
    t->pending_closes = 2;
    uv_close((uv_handle_t *) &t->expiry_timer, on_table_timer_closed);
    uv_close((uv_handle_t *) &t->shutdown_timer, on_table_timer_closed);
}

size_t proc_table_live_count(const struct proc_table *t)
{
    return t->n_live;
}

struct proc *proc_find_pid(struct proc_table *t, pid_t pid, bool include_ended)
{
    for (struct proc *p = t->live_tail; p; p = p->prev)
        if (p->res.pid == pid) {
            proc_ref(p);
            return p;
        }
    if (include_ended)
        for (struct proc *p = t->ended_tail; p; p = p->prev)
            if (p->res.pid == pid) {
                proc_ref(p);
                return p;
            }
    return NULL;
}

struct proc *proc_find_tag(struct proc_table *t, const char *tag, bool include_ended)
{
    /* The newest first: tags are not unique, and clients mean the latest. */
    for (struct proc *p = t->live_tail; p; p = p->prev)
        if (p->tag && streq(p->tag, tag)) {
            proc_ref(p);
            return p;
        }
    if (include_ended)
        for (struct proc *p = t->ended_tail; p; p = p->prev)
            if (p->tag && streq(p->tag, tag)) {
                proc_ref(p);
                return p;
            }
    return NULL;
}

struct proc *proc_find_exec_id(struct proc_table *t, const char *exec_id)
{
    for (struct proc *p = t->live_tail; p; p = p->prev)
        if (p->exec_id && streq(p->exec_id, exec_id)) {
            proc_ref(p);
            return p;
        }
    for (struct proc *p = t->ended_tail; p; p = p->prev)
        if (p->exec_id && streq(p->exec_id, exec_id)) {
            proc_ref(p);
            return p;
        }
    return NULL;
}

void proc_table_foreach_live(struct proc_table *t, void (*fn)(struct proc *p, void *data),
                             void *data)
{
    for (struct proc *p = t->live_head; p; p = p->next)
        fn(p, data);
}

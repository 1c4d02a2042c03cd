/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The one reaper: a uv_signal_t for SIGCHLD and a pid → callback table kept as an array sorted
 * by pid (binary search; inserts and removals move the tail). The table has no limit of its
 * own: it holds one 24-byte entry per watched child, so its size is bounded by the cap on
 * concurrent processes that callers enforce, and it is freed whenever it becomes empty.
 *
 * Reentrancy: an entry is removed from the table before its callback runs and nothing iterates
 * the table across a callback, so callbacks may watch, unwatch or reap freely. A reap requested
 * from inside a reap (a callback calling reaper_reap_now) returns at once: the outer waitpid
 * loop runs until nothing is left and collects whatever the inner one would have.
 */
#include "proc/reaper.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <uv.h>

#include "base/log.h"

/* First allocation of the watch table; it doubles from there. */
#define REAPER_TABLE_MIN 16

struct reaper_watch {
    pid_t pid;
    reaper_exit_cb cb;
    void *userdata;
};

static struct {
    uv_signal_t sig;
    bool running; /* sig is initialised and started */
    bool closing; /* uv_close(sig) was called; on_close has not run yet */
    bool reaping; /* inside the waitpid loop */
    struct reaper_watch *watches;
    size_t n_watches;
    size_t cap_watches;
    uint64_t orphans;
} reaper;

/* Index of pid in the table, or -(insertion point) - 1 when absent. */
static ssize_t watch_find(pid_t pid)
{
    size_t lo = 0, hi = reaper.n_watches;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (reaper.watches[mid].pid == pid)
            return (ssize_t) mid;
        if (reaper.watches[mid].pid < pid)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -(ssize_t) lo - 1;
}

static void watch_remove_at(size_t i)
{
    memmove(&reaper.watches[i], &reaper.watches[i + 1],
            (reaper.n_watches - i - 1) * sizeof(reaper.watches[0]));
    reaper.n_watches--;
    if (reaper.n_watches == 0) {
        free(reaper.watches);
        reaper.watches = NULL;
        reaper.cap_watches = 0;
    }
}

int reaper_watch(pid_t pid, reaper_exit_cb cb, void *userdata)
{
    if (pid <= 0 || !cb)
        return -EINVAL;
    ssize_t at = watch_find(pid);
    if (at >= 0)
        return -EEXIST;
    size_t ins = (size_t) (-at - 1);

    if (reaper.n_watches == reaper.cap_watches) {
        size_t ncap = reaper.cap_watches ? reaper.cap_watches * 2 : REAPER_TABLE_MIN;
        struct reaper_watch *n = reallocarray(reaper.watches, ncap, sizeof(*n));
        if (!n)
            return -ENOMEM;
        reaper.watches = n;
        reaper.cap_watches = ncap;
    }
    memmove(&reaper.watches[ins + 1], &reaper.watches[ins],
            (reaper.n_watches - ins) * sizeof(reaper.watches[0]));
    reaper.watches[ins] = (struct reaper_watch){.pid = pid, .cb = cb, .userdata = userdata};
    reaper.n_watches++;
    return 0;
}

void reaper_unwatch(pid_t pid)
{
    ssize_t at = watch_find(pid);
    if (at >= 0)
        watch_remove_at((size_t) at);
}

static void reaper_dispatch(pid_t pid, int status)
{
    ssize_t at = watch_find(pid);
    if (at < 0) {
        reaper.orphans++;
        if (WIFSIGNALED(status))
            log_debug("reaped unwatched child %d: killed by signal %d", (int) pid,
                      WTERMSIG(status));
        else
            log_debug("reaped unwatched child %d: exited with status %d", (int) pid,
                      WEXITSTATUS(status));
        return;
    }
    /* Remove before calling: the callback may free userdata, watch or unwatch. */
    struct reaper_watch w = reaper.watches[at];
    watch_remove_at((size_t) at);
    w.cb(pid, status, w.userdata);
}

void reaper_reap_now(void)
{
    if (reaper.reaping)
        return;
    reaper.reaping = true;
    /* SIGCHLD coalesces: one signal may stand for many exits, so collect until none is left
     * (0: children remain but none has exited; ECHILD: no children at all). */
    for (;;) {
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid < 0 && errno == EINTR)
            continue;
        if (pid <= 0) {
            if (pid < 0 && errno != ECHILD)
                log_debug("waitpid: %m");
            break;
        }
        reaper_dispatch(pid, status);
    }
    reaper.reaping = false;
}

uint64_t reaper_orphans_reaped(void)
{
    return reaper.orphans;
}

static void on_sigchld(uv_signal_t *handle, int signum)
{
    (void) handle;
    (void) signum;
    reaper_reap_now();
}

static void on_close(uv_handle_t *handle)
{
    (void) handle;
    reaper.closing = false;
}

int reaper_start(uv_loop_t *loop)
{
    if (reaper.running || reaper.closing)
        return -EBUSY;

    int r = uv_signal_init(loop, &reaper.sig);
    if (r < 0)
        return r;
    r = uv_signal_start(&reaper.sig, on_sigchld, SIGCHLD);
    if (r < 0) {
        reaper.closing = true;
        uv_close((uv_handle_t *) &reaper.sig, on_close);
        return r;
    }
    reaper.running = true;

    /* Orphans of our children are re-parented to PID 1 otherwise, and `cmd &` in a shell would
     * leave its exit unobserved by guestd. PID 1 gets them anyway. Without the subreaper role
     * guestd still works; only orphans escape it, hence a warning and no failure. */
    if (getpid() != 1 && prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) < 0)
        log_warn("prctl(PR_SET_CHILD_SUBREAPER): %m, orphans will not be reaped by guestd");

    /* Children that exited before the handle existed sent a SIGCHLD nobody saw. */
    reaper_reap_now();
    return 0;
}

void reaper_stop(void)
{
    /* Pending watches are dropped without a callback: stopping means nobody waits any more. */
    free(reaper.watches);
    reaper.watches = NULL;
    reaper.n_watches = 0;
    reaper.cap_watches = 0;

    if (!reaper.running)
        return;
    reaper.running = false;
    reaper.closing = true;
    uv_close((uv_handle_t *) &reaper.sig, on_close);
}

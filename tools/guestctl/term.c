/* SPDX-License-Identifier: Apache-2.0 */
#include "term.h"

#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include "base/macro.h"

static struct termios saved;
static int saved_fd = -1;
static atomic_bool raw_now;

/*
 * Signals whose default action ends the process without atexit and that the session does not
 * take itself: a handler restores the terminal first, then lets the signal do what it does.
 */
static const int fatal_signals[] = {
        SIGSEGV, SIGBUS,  SIGFPE,  SIGILL,    SIGABRT, SIGTRAP, SIGSYS,    SIGALRM, SIGUSR1,
        SIGUSR2, SIGXCPU, SIGXFSZ, SIGVTALRM, SIGPROF, SIGIO,   SIGSTKFLT, SIGPWR,
};

void term_restore(void)
{
    if (saved_fd >= 0 && atomic_exchange(&raw_now, false)) {
        int saved_errno = errno;
        (void) tcsetattr(saved_fd, TCSADRAIN, &saved);
        errno = saved_errno;
    }
}

bool term_is_raw(void)
{
    return atomic_load(&raw_now);
}

static void on_fatal_signal(int sig)
{
    term_restore();
    /* The handler was installed with SA_RESETHAND: re-raising takes the default action. */
    (void) raise(sig);
}

static int make_raw(void)
{
    struct termios t = saved;
    /* Output post-processing goes too: the remote PTY already turned "\n" into "\r\n". */
    cfmakeraw(&t);
    t.c_cc[VMIN] = 1;
    t.c_cc[VTIME] = 0;
    if (tcsetattr(saved_fd, TCSADRAIN, &t) < 0)
        return -errno;
    atomic_store(&raw_now, true);
    return 0;
}

int term_raw(int fd)
{
    static bool registered;
    if (saved_fd < 0) {
        if (tcgetattr(fd, &saved) < 0)
            return -errno;
        saved_fd = fd;
    }
    if (!registered) {
        registered = true;
        (void) atexit(term_restore);
        struct sigaction sa = {.sa_handler = on_fatal_signal, .sa_flags = SA_RESETHAND};
        (void) sigemptyset(&sa.sa_mask);
        for (size_t i = 0; i < ARRAY_SIZE(fatal_signals); i++) {
            struct sigaction old;
            /* Leave signals alone that were ignored when we started (nohup and friends). */
            if (sigaction(fatal_signals[i], NULL, &old) == 0 && old.sa_handler == SIG_IGN)
                continue;
            (void) sigaction(fatal_signals[i], &sa, NULL);
        }
    }
    return make_raw();
}

int term_reraw(void)
{
    if (saved_fd < 0)
        return -EBADF;
    return make_raw();
}

bool term_size(int fd, unsigned *ret_cols, unsigned *ret_rows)
{
    struct winsize ws;
    if (ioctl(fd, TIOCGWINSZ, &ws) < 0 || ws.ws_col == 0 || ws.ws_row == 0)
        return false;
    *ret_cols = ws.ws_col;
    *ret_rows = ws.ws_row;
    return true;
}

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The spawn path. spawn_start() does every allocation, lookup and formatting in the parent and
 * then forks; the child (see child_run) only makes async-signal-safe calls, because guestd may
 * already run libuv threadpool threads whose locks (malloc's, stdio's, the loader's) can be held
 * at the instant of the fork and would never be released in the child.
 */
#include "proc/spawn.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <termios.h>
#include <unistd.h>

#include "base/cleanup.h"
#include "base/macro.h"

/* PATH used when the child's environment has none: the one Debian's login and sudo set. */
#define SPAWN_DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

/* Window size of a PTY opened or resized with 0 columns or rows: the VT100 default. */
#define SPAWN_PTY_DEFAULT_COLS 80
#define SPAWN_PTY_DEFAULT_ROWS 24

/* Highest fd the close() fallback walks when RLIMIT_NOFILE is unlimited or larger: the kernel's
 * default fs.nr_open, beyond which no fd can exist without raising that sysctl. The fallback
 * only runs on kernels without close_range(2) (before 5.9). */
#define SPAWN_CLOSE_LOOP_MAX (1024 * 1024)

/* Longest decimal oom_score_adj ("-1000" … "1000"), with a newline and room to spare. */
#define SPAWN_OOM_BUF 16

/* close_range(2) is number 436 on every architecture that has the unified syscall table. */
#ifndef SYS_close_range
#define SYS_close_range 436
#endif

/* Where the kernel has both, the 32-bit-id calls are the right ones (i386, arm EABI). */
#ifdef SYS_setgroups32
#define SPAWN_SYS_SETGROUPS SYS_setgroups32
#define SPAWN_SYS_SETRESGID SYS_setresgid32
#define SPAWN_SYS_SETRESUID SYS_setresuid32
#else
#define SPAWN_SYS_SETGROUPS SYS_setgroups
#define SPAWN_SYS_SETRESGID SYS_setresgid
#define SPAWN_SYS_SETRESUID SYS_setresuid
#endif

/* A switch without default: -Wswitch flags a step added to the enum but not named here. */
const char *spawn_step_name(enum spawn_step step)
{
    switch (step) {
    case SPAWN_STEP_NONE:
        return "none";
    case SPAWN_STEP_FORK:
        return "fork";
    case SPAWN_STEP_SIGNALS:
        return "signals";
    case SPAWN_STEP_SETSID:
        return "setsid";
    case SPAWN_STEP_CTTY:
        return "ctty";
    case SPAWN_STEP_STDIO:
        return "stdio";
    case SPAWN_STEP_CLOSE_FDS:
        return "close-fds";
    case SPAWN_STEP_RLIMIT:
        return "rlimit";
    case SPAWN_STEP_OOM_SCORE:
        return "oom-score";
    case SPAWN_STEP_SETGROUPS:
        return "setgroups";
    case SPAWN_STEP_SETGID:
        return "setgid";
    case SPAWN_STEP_SETUID:
        return "setuid";
    case SPAWN_STEP_CHDIR:
        return "chdir";
    case SPAWN_STEP_EXEC:
        return "exec";
    }
    return "unknown";
}

/* --- candidates ------------------------------------------------------------------------------ */

void spawn_candidates_free(char **c)
{
    if (!c)
        return;
    for (char **p = c; *p; p++)
        free(*p);
    free(c);
}

static void spawn_candidates_freep(char ***c)
{
    spawn_candidates_free(*c);
}

/* Joins dir and cmd into a new string; dir "" (an empty PATH entry) means ".". */
static char *candidate_join(const char *dir, size_t dir_len, const char *cmd, size_t cmd_len)
{
    if (dir_len == 0) {
        dir = ".";
        dir_len = 1;
    }
    bool slash = dir[dir_len - 1] != '/';
    char *s = malloc(dir_len + slash + cmd_len + 1);
    if (!s)
        return NULL;
    memcpy(s, dir, dir_len);
    if (slash)
        s[dir_len] = '/';
    memcpy(s + dir_len + slash, cmd, cmd_len + 1);
    return s;
}

int spawn_candidates(const char *cmd, const char *path_env, char ***ret)
{
    if (!cmd || !*cmd)
        return -ENOENT;

    /* Sizes come from the client, so allocations are fallible and bounded by what execve
     * accepts: a longer path would only fail there with ENAMETOOLONG. */
    size_t cmd_len = strlen(cmd);
    if (cmd_len >= PATH_MAX)
        return -ENAMETOOLONG;

    _cleanup_(spawn_candidates_freep) char **c = calloc(SPAWN_MAX_CANDIDATES + 1, sizeof(char *));
    if (!c)
        return -ENOMEM;

    /* A name with a slash is used as it is, like execvp. */
    if (strchr(cmd, '/')) {
        c[0] = strdup(cmd);
        if (!c[0])
            return -ENOMEM;
        *ret = TAKE_PTR(c);
        return 1;
    }
    /* execvp's rule too: a bare name longer than a path component cannot exist anywhere. */
    if (cmd_len > NAME_MAX)
        return -ENAMETOOLONG;

    if (!path_env)
        path_env = SPAWN_DEFAULT_PATH;

    size_t n = 0;
    for (const char *p = path_env;;) {
        const char *end = strchrnul(p, ':');
        size_t dir_len = (size_t) (end - p);
        /* Entries that cannot form a valid path are skipped rather than tried: execve would
         * fail on them with ENAMETOOLONG, which would end the search. */
        if (dir_len + 1 + cmd_len < PATH_MAX) {
            /* Entries past SPAWN_MAX_CANDIDATES are ignored. */
            if (n == SPAWN_MAX_CANDIDATES)
                break;
            c[n] = candidate_join(p, dir_len, cmd, cmd_len);
            if (!c[n])
                return -ENOMEM;
            n++;
        }
        if (!*end)
            break;
        p = end + 1;
    }
    if (n == 0)
        return -ENOENT;

    *ret = TAKE_PTR(c);
    return (int) n;
}

/* --- the child ------------------------------------------------------------------------------- */

/* Everything the child needs, prepared by the parent, so that the child never allocates, never
 * formats and never takes a lock. */
struct child_ctx {
    const struct spawn_plan *plan;
    int stdio[3];    /* sources for fds 0, 1, 2 (/dev/null already substituted) */
    int err_fd;      /* write end of the CLOEXEC error pipe, >= 3 */
    int close_limit; /* the close() fallback closes fds [3, close_limit) */
    bool set_nofile;
    struct rlimit nofile;
    char oom[SPAWN_OOM_BUF];
    size_t oom_len; /* 0: leave oom_score_adj alone */
    bool oom_strict;
};

/* Async-signal-safe: reports {step, err} to the parent and exits. 127 is what shells use for
 * "command not found"; the parent learns the real reason from the pipe, never the code. */
_noreturn_ static void child_fail(const struct child_ctx *c, enum spawn_step step, int err)
{
    struct spawn_error e = {.step = step, .err = err};
    ssize_t n;
    do {
        n = write(c->err_fd, &e, sizeof(e));
    } while (n < 0 && errno == EINTR);
    _exit(127);
}

static void child_close_fds(const struct child_ctx *c)
{
    /* Keep the error pipe (>= 3, as the parent arranged): it closes itself at execve
     * (CLOEXEC), which is how the parent learns that exec succeeded. */
    unsigned int e = (unsigned int) c->err_fd;
    int r = 0;
    if (e > 3)
        r = (int) syscall(SYS_close_range, 3U, e - 1, 0U);
    if (r == 0)
        r = (int) syscall(SYS_close_range, e + 1, ~0U, 0U);
    if (r == 0)
        return;
    /* FIXME(kernel 5.9): close_range is missing (ENOSYS), or a container's seccomp profile
     * denies it (EPERM). close() in a loop is async-signal-safe; /proc/self/fd is not an option
     * since opendir allocates. EBADF for unused numbers is expected. */
    for (int fd = 3; fd < c->close_limit; fd++)
        if (fd != c->err_fd)
            (void) close(fd);
}

static void child_write_oom_score(const struct child_ctx *c)
{
    int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    int err = 0;
    if (fd < 0)
        err = errno;
    else {
        ssize_t n;
        do {
            n = write(fd, c->oom, c->oom_len);
        } while (n < 0 && errno == EINTR);
        if (n < 0)
            err = errno;
        else if ((size_t) n != c->oom_len)
            err = EIO;
        (void) close(fd);
    }
    if (err == 0)
        return;
    /* Without root, guestd may not lower a child's score below its own minimum (EACCES) and the
     * write can only fail; the score protects guestd from the OOM killer and is not something
     * the child needs to run, so a non-root guestd (development, tests) skips it. As root the
     * write is expected to work, and a failure means the promised protection is missing: that
     * is reported. Other errors (no /proc mounted, …) are always reported. */
    if (!c->oom_strict && (err == EACCES || err == EPERM))
        return;
    child_fail(c, SPAWN_STEP_OOM_SCORE, err);
}

/* Runs in the forked child. Only async-signal-safe calls from here on: the parent's other
 * threads did not survive the fork, and any lock they held stays held forever. */
_noreturn_ static void child_run(struct child_ctx *c)
{
    const struct spawn_plan *plan = c->plan;

    /* 1. Default dispositions first, then the empty mask: unblocking while a parent handler is
     *    still installed could run that handler here (libuv's writes to the parent loop's
     *    signal pipe). Handled signals are reset by execve anyway; ignored ones are not, so
     *    this loop is what undoes SIG_IGN. glibc refuses its two internal signals with EINVAL;
     *    they have no disposition the child could inherit through execve, so that is ignored. */
    struct sigaction dfl = {.sa_handler = SIG_DFL};
    sigemptyset(&dfl.sa_mask);
    for (int sig = 1; sig < NSIG; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP)
            continue;
        if (sigaction(sig, &dfl, NULL) < 0 && errno != EINVAL)
            child_fail(c, SPAWN_STEP_SIGNALS, errno);
    }
    sigset_t empty;
    sigemptyset(&empty);
    if (sigprocmask(SIG_SETMASK, &empty, NULL) < 0)
        child_fail(c, SPAWN_STEP_SIGNALS, errno);

    /* 2. A session of its own, so that job-control signals and `kill -- -pgid` from inside never
     *    reach guestd. A PTY becomes the controlling terminal only after setsid (the caller must
     *    be a session leader without one), and the slave was opened O_NOCTTY. */
    if (setsid() < 0)
        child_fail(c, SPAWN_STEP_SETSID, errno);
    if (plan->pty && ioctl(plan->stdin_fd, TIOCSCTTY, 0) < 0)
        child_fail(c, SPAWN_STEP_CTTY, errno);

    /* 3. stdio. A source that is itself one of 0..2 would be overwritten by an earlier dup2
     *    (e.g. stdout_fd == 0), so move those above 2 first; the copies are CLOEXEC and closed
     *    with everything else below. dup2 clears CLOEXEC on the targets. */
    for (int i = 0; i < 3; i++) {
        if (c->stdio[i] < 3) {
            c->stdio[i] = fcntl(c->stdio[i], F_DUPFD_CLOEXEC, 3);
            if (c->stdio[i] < 0)
                child_fail(c, SPAWN_STEP_STDIO, errno);
        }
    }
    for (int i = 0; i < 3; i++)
        if (dup2(c->stdio[i], i) < 0)
            child_fail(c, SPAWN_STEP_STDIO, errno);
    /* Then everything else, after dup2 (the sources are among "everything else"). */
    child_close_fds(c);

    /* 4. umask and the fd limit. */
    (void) umask(plan->umask);
    if (c->set_nofile && setrlimit(RLIMIT_NOFILE, &c->nofile) < 0)
        child_fail(c, SPAWN_STEP_RLIMIT, errno);

    /* 5. oom_score_adj while still root: after the uid change below the child is not dumpable,
     *    its /proc files belong to root, and opening this one fails with EACCES. */
    if (c->oom_len > 0)
        child_write_oom_score(c);

    /* 6. Credentials: groups first, then gid, then uid, since each later step gives up the
     *    privilege the earlier ones need. Raw syscalls: they change this thread only, which in
     *    the child is the whole process, and they skip glibc's all-threads broadcast, whose
     *    locking is not async-signal-safe. */
    if (plan->change_ids) {
        if (syscall(SPAWN_SYS_SETGROUPS, plan->n_groups, plan->groups) < 0)
            child_fail(c, SPAWN_STEP_SETGROUPS, errno);
        if (syscall(SPAWN_SYS_SETRESGID, plan->gid, plan->gid, plan->gid) < 0)
            child_fail(c, SPAWN_STEP_SETGID, errno);
        if (syscall(SPAWN_SYS_SETRESUID, plan->uid, plan->uid, plan->uid) < 0)
            child_fail(c, SPAWN_STEP_SETUID, errno);
    }

    /* 7. chdir after the uid change, so that the user's own permissions decide. */
    if (plan->cwd && chdir(plan->cwd) < 0)
        child_fail(c, SPAWN_STEP_CHDIR, errno);

    /* 8. execve each candidate like execvp: a miss (ENOENT, ENOTDIR) or a denied entry (EACCES)
     *    moves on; any other error means the file was found but cannot run, and ends the
     *    search. EACCES wins over later misses. No ENOEXEC fallback to /bin/sh (envd's Go
     *    exec has none either). */
    int err = ENOENT;
    bool saw_eacces = false;
    for (size_t i = 0; i < plan->n_candidates; i++) {
        (void) execve(plan->candidates[i], plan->argv, plan->envp);
        err = errno;
        if (err == EACCES)
            saw_eacces = true;
        else if (err != ENOENT && err != ENOTDIR)
            break;
    }
    if (saw_eacces && (err == ENOENT || err == ENOTDIR || err == EACCES))
        err = EACCES;
    child_fail(c, SPAWN_STEP_EXEC, err);
}

/* --- the parent ------------------------------------------------------------------------------ */

/* Returns fd itself if it is above stdio, else a CLOEXEC copy >= 3 (closing the original), so
 * that the child's dup2 onto 0..2 cannot overwrite it. */
static int fd_move_above_stdio(int fd)
{
    if (fd >= 3)
        return fd;
    int n = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    if (n < 0)
        return -errno;
    (void) close(fd);
    return n;
}

static void spawn_report(struct spawn_error *ret_err, enum spawn_step step, int err)
{
    if (ret_err) {
        ret_err->step = step;
        ret_err->err = err;
    }
}

/* Reports a parent-side failure (r is -errno) and returns r. */
static int spawn_fail(struct spawn_error *ret_err, enum spawn_step step, int r)
{
    spawn_report(ret_err, step, -r);
    return r;
}

int spawn_start(const struct spawn_plan *plan, pid_t *ret_pid, struct spawn_error *ret_err)
{
    assert(plan && ret_pid);
    assert(plan->candidates && plan->n_candidates > 0);
    assert(plan->argv && plan->argv[0] && plan->envp);
    assert(!plan->pty || (plan->stdin_fd >= 0 && plan->stdin_fd == plan->stdout_fd &&
                          plan->stdin_fd == plan->stderr_fd));
    assert(!plan->change_ids || plan->n_groups == 0 || plan->groups);

    *ret_pid = -1;
    spawn_report(ret_err, SPAWN_STEP_NONE, 0);

    struct child_ctx c = {.plan = plan};
    _cleanup_close_ int devnull = -1, err_r = -1, err_w = -1;
    int r;

    /* /dev/null is opened here: open() in the child would be fine, but a failure there is
     * better reported before forking. */
    if (plan->stdin_fd < 0 || plan->stdout_fd < 0 || plan->stderr_fd < 0) {
        devnull = open("/dev/null", O_RDWR | O_CLOEXEC | O_NOCTTY);
        if (devnull < 0)
            return spawn_fail(ret_err, SPAWN_STEP_STDIO, -errno);
    }
    c.stdio[0] = plan->stdin_fd >= 0 ? plan->stdin_fd : devnull;
    c.stdio[1] = plan->stdout_fd >= 0 ? plan->stdout_fd : devnull;
    c.stdio[2] = plan->stderr_fd >= 0 ? plan->stderr_fd : devnull;

    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0)
        return spawn_fail(ret_err, SPAWN_STEP_FORK, -errno);
    err_r = p[0];
    err_w = p[1];
    /* The child dup2s onto 0..2 before closing the rest, so the error pipe must live above. */
    r = fd_move_above_stdio(err_w);
    if (r < 0)
        return spawn_fail(ret_err, SPAWN_STEP_FORK, r);
    err_w = r;
    c.err_fd = err_w;

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return spawn_fail(ret_err, SPAWN_STEP_RLIMIT, -errno);
    c.close_limit = rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > SPAWN_CLOSE_LOOP_MAX
                            ? SPAWN_CLOSE_LOOP_MAX
                            : (int) rl.rlim_cur;
    if (plan->nofile_soft > 0) {
        /* The hard limit stays; a soft limit above it is clamped rather than refused. */
        c.set_nofile = true;
        c.nofile.rlim_max = rl.rlim_max;
        c.nofile.rlim_cur = (rlim_t) plan->nofile_soft;
        if (rl.rlim_max != RLIM_INFINITY && c.nofile.rlim_cur > rl.rlim_max)
            c.nofile.rlim_cur = rl.rlim_max;
    }

    if (plan->oom_score_adj != SPAWN_NO_OOM_SCORE) {
        int n = snprintf(c.oom, sizeof(c.oom), "%d\n", plan->oom_score_adj);
        assert(n > 0 && (size_t) n < sizeof(c.oom));
        c.oom_len = (size_t) n;
        c.oom_strict = geteuid() == 0;
    }

    /* Block signals across fork so that no handler of guestd's (libuv's signal pipe writer)
     * runs in the child before it has reset the dispositions. Only this thread's mask changes,
     * and only for the duration of fork(); pending signals are delivered on restore, so libuv
     * misses nothing. Synchronous fault signals stay unblocked (as uv_spawn does): blocking
     * them would turn a crash into a hang. */
    sigset_t all, old;
    sigfillset(&all);
    static const int keep[] = {SIGKILL, SIGSTOP, SIGTRAP, SIGSEGV, SIGBUS,
                               SIGILL,  SIGFPE,  SIGSYS,  SIGABRT};
    for (size_t i = 0; i < ARRAY_SIZE(keep); i++)
        sigdelset(&all, keep[i]);
    r = pthread_sigmask(SIG_BLOCK, &all, &old);
    if (r != 0)
        return spawn_fail(ret_err, SPAWN_STEP_SIGNALS, -r);

    pid_t pid = fork();
    if (pid == 0)
        child_run(&c);
    int fork_errno = errno;
    (void) pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (pid < 0)
        return spawn_fail(ret_err, SPAWN_STEP_FORK, -fork_errno);
    *ret_pid = pid;

    /* Our copy of the write end must go before reading, or EOF never comes. */
    err_w = safe_close(err_w);
    devnull = safe_close(devnull);

    /* EOF: the write end closed at a successful execve. A full struct: the child failed and
     * _exit()s; the reaper collects it. Writes up to PIPE_BUF are atomic, so a short read can
     * only be the child dying in the middle of nothing; that is reported as EIO. */
    struct spawn_error e;
    size_t got = 0;
    while (got < sizeof(e)) {
        ssize_t n = read(err_r, (char *) &e + got, sizeof(e) - got);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return spawn_fail(ret_err, SPAWN_STEP_FORK, -errno);
        }
        if (n == 0)
            break;
        got += (size_t) n;
    }
    if (got == 0)
        return 0;
    if (got < sizeof(e) || e.err <= 0)
        return spawn_fail(ret_err, got < sizeof(e) ? SPAWN_STEP_FORK : e.step, -EIO);
    return spawn_fail(ret_err, e.step, -e.err);
}

/* --- PTYs ------------------------------------------------------------------------------------ */

static int pty_set_size(int fd, unsigned short cols, unsigned short rows)
{
    struct winsize ws = {
            .ws_col = cols ? cols : SPAWN_PTY_DEFAULT_COLS,
            .ws_row = rows ? rows : SPAWN_PTY_DEFAULT_ROWS,
    };
    if (ioctl(fd, TIOCSWINSZ, &ws) < 0)
        return -errno;
    return 0;
}

int spawn_openpty(unsigned short cols, unsigned short rows, int *ret_master, int *ret_slave)
{
    _cleanup_close_ int master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (master < 0)
        return -errno;
    if (grantpt(master) < 0 || unlockpt(master) < 0)
        return -errno;

    char name[PATH_MAX];
    int r = ptsname_r(master, name, sizeof(name));
    if (r != 0)
        return -r;
    _cleanup_close_ int slave = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (slave < 0)
        return -errno;

    r = pty_set_size(master, cols, rows);
    if (r < 0)
        return r;

    /* The master is read through libuv (uv_pipe_open), which wants non-blocking fds; the slave
     * stays blocking, as programs on a terminal expect. */
    int fl = fcntl(master, F_GETFL);
    if (fl < 0 || fcntl(master, F_SETFL, fl | O_NONBLOCK) < 0)
        return -errno;

    *ret_master = TAKE_FD(master);
    *ret_slave = TAKE_FD(slave);
    return 0;
}

int spawn_pty_resize(int master, unsigned short cols, unsigned short rows)
{
    return pty_set_size(master, cols, rows);
}

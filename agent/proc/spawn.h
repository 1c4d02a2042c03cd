/* SPDX-License-Identifier: Apache-2.0 */
/*
 * guestd's own spawn path (never uv_spawn): the parent prepares everything (argv, envp, the
 * executable candidates, ids, groups, fds, limits); the forked child only makes syscalls, then
 * execve. A failure in the child is reported through a CLOEXEC pipe as {step, errno}, so spawn
 * errors are typed, never disguised as exit codes.
 *
 * Order in the child (each step written down where it runs):
 *   1. default signal dispositions and an empty signal mask;
 *   2. setsid (every child gets its own session); for a PTY, TIOCSCTTY on the slave;
 *   3. dup2 stdio; close every other fd except the error pipe;
 *   4. umask, RLIMIT_NOFILE soft limit;
 *   5. oom_score_adj, while still root (after the uid drop a non-dumpable child cannot open it);
 *   6. setgroups, setresgid, setresuid (raw ids from the passwd/group files, never initgroups);
 *   7. chdir;
 *   8. execve of each candidate path in turn (a PATH search prepared by the parent).
 * The isolation issue inserts capability and seccomp steps between 5 and 8.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

enum spawn_step {
    SPAWN_STEP_NONE = 0,
    SPAWN_STEP_FORK,
    SPAWN_STEP_SIGNALS,
    SPAWN_STEP_SETSID,
    SPAWN_STEP_CTTY,
    SPAWN_STEP_STDIO,
    SPAWN_STEP_CLOSE_FDS,
    SPAWN_STEP_RLIMIT,
    SPAWN_STEP_OOM_SCORE,
    SPAWN_STEP_SETGROUPS,
    SPAWN_STEP_SETGID,
    SPAWN_STEP_SETUID,
    SPAWN_STEP_CHDIR,
    SPAWN_STEP_EXEC,
};

/* "fork", "setsid", "exec", … for results and messages. */
const char *spawn_step_name(enum spawn_step step);

/* Most executable candidates tried for one command (PATH entries). */
#define SPAWN_MAX_CANDIDATES 64

struct spawn_plan {
    /* Paths to try with execve, in order; the first that is not ENOENT/ENOTDIR/EACCES wins or
     * fails. Built by spawn_candidates(). */
    char **candidates;
    size_t n_candidates;
    char *const *argv;
    char *const *envp;
    /* Credentials; applied only when change_ids is true (guestd runs as root). */
    bool change_ids;
    uid_t uid;
    gid_t gid;
    const gid_t *groups;
    size_t n_groups;
    const char *cwd; /* NULL: stay */
    /* Child ends of stdio; -1 means /dev/null. With pty true, all three are the PTY slave. */
    int stdin_fd;
    int stdout_fd;
    int stderr_fd;
    bool pty;
    /* Written to /proc/self/oom_score_adj unless SPAWN_NO_OOM_SCORE. */
    int oom_score_adj;
    /* Soft RLIMIT_NOFILE (the hard limit is kept); 0 keeps the inherited one. */
    unsigned long nofile_soft;
    mode_t umask;
};

#define SPAWN_NO_OOM_SCORE (-10000)

struct spawn_error {
    enum spawn_step step;
    int err; /* errno */
};

/*
 * Builds the execve candidates for `cmd`: itself if it contains a '/', else each directory of
 * `path_env` (the child's PATH; empty entries mean "."), joined with cmd. Returns the count or
 * -errno (-ENOENT for an empty cmd). Free with spawn_candidates_free().
 */
int spawn_candidates(const char *cmd, const char *path_env, char ***ret);
void spawn_candidates_free(char **c);

/*
 * Forks and executes the plan. On success returns 0 with *ret_pid (the child has exec'ed: the
 * error pipe reached EOF). If the child failed before exec, reaps nothing (the caller's reaper
 * gets the exit), and returns -errno of the failure with *ret_err saying which step; *ret_pid is
 * still set so the caller can account for the child. Fork failure: -errno, step FORK, pid -1.
 */
int spawn_start(const struct spawn_plan *plan, pid_t *ret_pid, struct spawn_error *ret_err);

/*
 * Opens a PTY pair (master O_RDWR|O_NOCTTY|O_CLOEXEC, non-blocking; slave CLOEXEC) with the
 * given size. Returns 0 or -errno.
 */
int spawn_openpty(unsigned short cols, unsigned short rows, int *ret_master, int *ret_slave);
/* Resizes a PTY through its master (TIOCSWINSZ). */
int spawn_pty_resize(int master, unsigned short cols, unsigned short rows);

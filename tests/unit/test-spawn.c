/* SPDX-License-Identifier: Apache-2.0 */
/*
 * proc/spawn and proc/reaper. Each test runs in its own forked child (harness), so tests may
 * change their own signal mask, limits, credentials or seccomp filter, and may become a child
 * subreaper, without affecting the others. Tests without a reaper wait for their children
 * themselves.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

#include "base/macro.h"
#include "harness.h"
#include "proc/reaper.h"
#include "proc/spawn.h"

/* Output any single test reads from a child. */
#define OUT_MAX     8192
/* How long to wait for one PTY read before failing (the harness alarm is the outer bound). */
#define PTY_POLL_MS 10000

static char *const test_envp[] = {"PATH=/usr/bin:/bin", NULL};

/* A plan with the guestd defaults the design asks for, no ids, stdio on /dev/null. */
static void plan_init(struct spawn_plan *p, char **cands, size_t n, char *const *argv)
{
    *p = (struct spawn_plan){
            .candidates = cands,
            .n_candidates = n,
            .argv = argv,
            .envp = test_envp,
            .stdin_fd = -1,
            .stdout_fd = -1,
            .stderr_fd = -1,
            .oom_score_adj = SPAWN_NO_OOM_SCORE,
            .nofile_soft = 1024,
            .umask = 022,
    };
}

static int wait_status(pid_t pid)
{
    int st;
    pid_t r;
    do {
        r = waitpid(pid, &st, 0);
    } while (r < 0 && errno == EINTR);
    ASSERT_EQ(r, pid);
    return st;
}

static size_t read_all(int fd, char *buf, size_t size)
{
    size_t len = 0;
    for (;;) {
        ASSERT_TRUE(len < size - 1);
        ssize_t n = read(fd, buf + len, size - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        ASSERT_TRUE(n >= 0);
        if (n == 0)
            break;
        len += (size_t) n;
    }
    buf[len] = '\0';
    return len;
}

/*
 * Spawns the plan with stdout and stderr on one pipe, reads until EOF and waits for the child.
 * Returns spawn_start's result; *ret_status is the wait status.
 */
static int run_capture(struct spawn_plan *p, char *out, size_t size, int *ret_status,
                       struct spawn_error *ret_err)
{
    int fds[2];
    ASSERT_OK(pipe2(fds, O_CLOEXEC));
    p->stdout_fd = fds[1];
    p->stderr_fd = fds[1];
    pid_t pid = -1;
    int r = spawn_start(p, &pid, ret_err);
    ASSERT_TRUE(pid > 0);
    close(fds[1]);
    read_all(fds[0], out, size);
    close(fds[0]);
    *ret_status = wait_status(pid);
    return r;
}

/* Runs argv[0] (a path) with the default plan and returns its output; asserts exit 0. */
static void run_ok(char *const *argv, char *out, size_t size)
{
    char *cands[] = {argv[0], NULL};
    struct spawn_plan p;
    plan_init(&p, cands, 1, argv);
    int st;
    struct spawn_error e;
    ASSERT_OK(run_capture(&p, out, size, &st, &e));
    ASSERT_EQ(e.step, SPAWN_STEP_NONE);
    ASSERT_TRUE(WIFEXITED(st));
    ASSERT_EQ(WEXITSTATUS(st), 0);
}

/* Value of a "Key:\tvalue" line of /proc/<pid>/status text, copied into val. */
static void status_field(const char *text, const char *key, char *val, size_t size)
{
    size_t klen = strlen(key);
    for (const char *l = text; l && *l; l = strchr(l, '\n'), l = l ? l + 1 : NULL) {
        if (strncmp(l, key, klen) == 0 && l[klen] == ':') {
            const char *v = l + klen + 1;
            while (*v == '\t' || *v == ' ')
                v++;
            size_t n = strcspn(v, "\n");
            ASSERT_TRUE(n < size);
            memcpy(val, v, n);
            val[n] = '\0';
            return;
        }
    }
    test_fail(__FILE__, __LINE__, "no %s line in status", key);
}

/* Fields 3..6 of /proc/<pid>/stat text (after the parenthesised command name). */
static void parse_stat(const char *text, char *state, int *ppid, int *pgrp, int *session)
{
    const char *rp = strrchr(text, ')');
    ASSERT_NOT_NULL(rp);
    ASSERT_EQ(sscanf(rp + 1, " %c %d %d %d", state, ppid, pgrp, session), 4);
}

static int count_open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    ASSERT_NOT_NULL(d);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        if (de->d_name[0] != '.')
            n++;
    closedir(d);
    return n - 1; /* the directory's own fd */
}

/* Waits until pid is a zombie (exited, not yet reaped). */
static void wait_zombie(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int) pid);
    for (;;) {
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        ASSERT_TRUE(fd >= 0);
        read_all(fd, buf, sizeof(buf));
        close(fd);
        char state;
        int ppid, pgrp, sid;
        parse_stat(buf, &state, &ppid, &pgrp, &sid);
        if (state == 'Z')
            return;
        struct timespec ts = {.tv_nsec = 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

/* Counts our children in /proc, and how many of them are zombies. */
static void scan_children(int *ret_children, int *ret_zombies)
{
    DIR *d = opendir("/proc");
    ASSERT_NOT_NULL(d);
    int children = 0, zombies = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] < '0' || de->d_name[0] > '9')
            continue;
        char path[300], buf[512];
        snprintf(path, sizeof(path), "/proc/%s/stat", de->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue; /* exited meanwhile */
        ssize_t n = read(fd, buf, sizeof(buf) - 1);
        close(fd);
        if (n <= 0)
            continue;
        buf[n] = '\0';
        char state;
        int ppid, pgrp, sid;
        parse_stat(buf, &state, &ppid, &pgrp, &sid);
        if (ppid == getpid()) {
            children++;
            if (state == 'Z')
                zombies++;
        }
    }
    closedir(d);
    *ret_children = children;
    *ret_zombies = zombies;
}

/* --- spawn_step_name, spawn_candidates ---------------------------------------------------------
 */

TEST(step_names)
{
    ASSERT_STR_EQ(spawn_step_name(SPAWN_STEP_FORK), "fork");
    ASSERT_STR_EQ(spawn_step_name(SPAWN_STEP_SIGNALS), "signals");
    ASSERT_STR_EQ(spawn_step_name(SPAWN_STEP_SETSID), "setsid");
    ASSERT_STR_EQ(spawn_step_name(SPAWN_STEP_CTTY), "ctty");
    ASSERT_STR_EQ(spawn_step_name(SPAWN_STEP_STDIO), "stdio");
    ASSERT_STR_EQ(spawn_step_name(SPAWN_STEP_CLOSE_FDS), "close-fds");
    ASSERT_STR_EQ(spawn_step_name(SPAWN_STEP_RLIMIT), "rlimit");
    ASSERT_STR_EQ(spawn_step_name(SPAWN_STEP_OOM_SCORE), "oom-score");
    ASSERT_STR_EQ(spawn_step_name(SPAWN_STEP_SETGROUPS), "setgroups");
    ASSERT_STR_EQ(spawn_step_name(SPAWN_STEP_SETGID), "setgid");
    ASSERT_STR_EQ(spawn_step_name(SPAWN_STEP_SETUID), "setuid");
    ASSERT_STR_EQ(spawn_step_name(SPAWN_STEP_CHDIR), "chdir");
    ASSERT_STR_EQ(spawn_step_name(SPAWN_STEP_EXEC), "exec");
    ASSERT_STR_EQ(spawn_step_name((enum spawn_step) 999), "unknown");
}

TEST(candidates_path_search)
{
    char **c = NULL;
    ASSERT_EQ(spawn_candidates("ls", "/a::/b/", &c), 3);
    ASSERT_STR_EQ(c[0], "/a/ls");
    ASSERT_STR_EQ(c[1], "./ls");
    ASSERT_STR_EQ(c[2], "/b/ls");
    ASSERT_NULL(c[3]);
    spawn_candidates_free(c);

    ASSERT_EQ(spawn_candidates("ls", "", &c), 1);
    ASSERT_STR_EQ(c[0], "./ls");
    spawn_candidates_free(c);

    ASSERT_EQ(spawn_candidates("ls", ":", &c), 2);
    ASSERT_STR_EQ(c[0], "./ls");
    ASSERT_STR_EQ(c[1], "./ls");
    spawn_candidates_free(c);

    ASSERT_EQ(spawn_candidates("ls", NULL, &c), 6);
    ASSERT_STR_EQ(c[0], "/usr/local/sbin/ls");
    ASSERT_STR_EQ(c[5], "/bin/ls");
    spawn_candidates_free(c);
}

TEST(candidates_slash_and_errors)
{
    char **c = NULL;
    ASSERT_EQ(spawn_candidates("/bin/ls", "/x", &c), 1);
    ASSERT_STR_EQ(c[0], "/bin/ls");
    ASSERT_NULL(c[1]);
    spawn_candidates_free(c);
    ASSERT_EQ(spawn_candidates("./a/b", NULL, &c), 1);
    ASSERT_STR_EQ(c[0], "./a/b");
    spawn_candidates_free(c);

    c = NULL;
    ASSERT_ERR(spawn_candidates("", "/bin", &c), ENOENT);
    ASSERT_ERR(spawn_candidates(NULL, "/bin", &c), ENOENT);
    ASSERT_NULL(c);

    char longname[NAME_MAX + 2];
    memset(longname, 'x', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    ASSERT_ERR(spawn_candidates(longname, "/bin", &c), ENAMETOOLONG);
    ASSERT_NULL(c);
    spawn_candidates_free(NULL);
}

TEST(candidates_capped)
{
    char path[2048] = "";
    for (int i = 0; i < 100; i++) {
        char d[16];
        snprintf(d, sizeof(d), "%s/d%d", i ? ":" : "", i);
        strcat(path, d);
    }
    char **c = NULL;
    ASSERT_EQ(spawn_candidates("x", path, &c), SPAWN_MAX_CANDIDATES);
    ASSERT_STR_EQ(c[0], "/d0/x");
    ASSERT_STR_EQ(c[SPAWN_MAX_CANDIDATES - 1], "/d63/x");
    ASSERT_NULL(c[SPAWN_MAX_CANDIDATES]);
    spawn_candidates_free(c);
}

/* --- spawn_start -------------------------------------------------------------------------------
 */

TEST(echo_through_pipe)
{
    char *const argv[] = {"/bin/echo", "hello", "world", NULL};
    char out[OUT_MAX];
    int before = count_open_fds();
    run_ok(argv, out, sizeof(out));
    ASSERT_STR_EQ(out, "hello world\n");
    /* Neither the error pipe nor /dev/null stays open in the parent. */
    ASSERT_EQ(count_open_fds(), before);
}

TEST(stdin_from_pipe)
{
    char *const argv[] = {"/bin/cat", NULL};
    char *cands[] = {"/bin/cat", NULL};
    struct spawn_plan p;
    plan_init(&p, cands, 1, argv);
    int in[2], out[2];
    ASSERT_OK(pipe2(in, O_CLOEXEC));
    ASSERT_OK(pipe2(out, O_CLOEXEC));
    p.stdin_fd = in[0];
    p.stdout_fd = out[1];
    pid_t pid;
    ASSERT_OK(spawn_start(&p, &pid, NULL));
    close(in[0]);
    close(out[1]);
    ASSERT_EQ(write(in[1], "abc", 3), 3);
    close(in[1]);
    char buf[OUT_MAX];
    read_all(out[0], buf, sizeof(buf));
    close(out[0]);
    ASSERT_STR_EQ(buf, "abc");
    int st = wait_status(pid);
    ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* Child stdio sources among 0..2 must survive the dup2 sequence (stdout_fd == 0 here). */
TEST(stdio_sources_below_three)
{
    int fds[2];
    ASSERT_OK(pipe2(fds, O_CLOEXEC));
    ASSERT_EQ(dup2(fds[1], 0), 0);
    close(fds[1]);
    char *const argv[] = {"/bin/sh", "-c", "echo out; echo err >&2", NULL};
    char *cands[] = {"/bin/sh", NULL};
    struct spawn_plan p;
    plan_init(&p, cands, 1, argv);
    p.stdout_fd = 0;
    p.stderr_fd = 0;
    pid_t pid;
    ASSERT_OK(spawn_start(&p, &pid, NULL));
    close(0);
    char buf[OUT_MAX];
    read_all(fds[0], buf, sizeof(buf));
    ASSERT_STR_EQ(buf, "out\nerr\n");
    int st = wait_status(pid);
    ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

TEST(path_search_finds_sh)
{
    char **c = NULL;
    int n = spawn_candidates("sh", "/usr/bin:/bin", &c);
    ASSERT_EQ(n, 2);
    char *const argv[] = {"sh", "-c", "echo found", NULL};
    struct spawn_plan p;
    plan_init(&p, c, (size_t) n, argv);
    char out[OUT_MAX];
    int st;
    ASSERT_OK(run_capture(&p, out, sizeof(out), &st, NULL));
    ASSERT_STR_EQ(out, "found\n");
    ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    spawn_candidates_free(c);
}

static void expect_failure(struct spawn_plan *p, int err, enum spawn_step step)
{
    char out[OUT_MAX];
    int st;
    struct spawn_error e = {0};
    ASSERT_ERR(run_capture(p, out, sizeof(out), &st, &e), err);
    ASSERT_EQ(e.step, step);
    ASSERT_EQ(e.err, err);
    /* Typed errors, not exit codes: the child said nothing and exited 127. */
    ASSERT_STR_EQ(out, "");
    ASSERT_TRUE(WIFEXITED(st));
    ASSERT_EQ(WEXITSTATUS(st), 127);
}

TEST(missing_command_enoent)
{
    char **c = NULL;
    int n = spawn_candidates("guestd-no-such-command", "/usr/bin:/bin:", &c);
    ASSERT_EQ(n, 3);
    char *const argv[] = {"guestd-no-such-command", NULL};
    struct spawn_plan p;
    plan_init(&p, c, (size_t) n, argv);
    expect_failure(&p, ENOENT, SPAWN_STEP_EXEC);
    spawn_candidates_free(c);

    char *cands[] = {"/etc/passwd/x", NULL};
    plan_init(&p, cands, 1, argv);
    expect_failure(&p, ENOTDIR, SPAWN_STEP_EXEC);
}

/* Makes a temporary directory holding `name` with the given content and mode. */
static void make_file(char *dir, const char *name, const char *content, mode_t mode)
{
    strcpy(dir, "/tmp/test-spawn-XXXXXX");
    ASSERT_NOT_NULL(mkdtemp(dir));
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    ASSERT_TRUE(fd >= 0);
    ASSERT_EQ(write(fd, content, strlen(content)), (ssize_t) strlen(content));
    ASSERT_OK(fchmod(fd, mode));
    close(fd);
}

static void remove_file(const char *dir, const char *name)
{
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    unlink(path);
    rmdir(dir);
}

TEST(directory_or_noexec_eacces)
{
    char *const argv[] = {"x", NULL};
    struct spawn_plan p;
    char *dir_cands[] = {"/tmp", NULL};
    plan_init(&p, dir_cands, 1, argv);
    expect_failure(&p, EACCES, SPAWN_STEP_EXEC);

    char dir[64];
    make_file(dir, "true", "#!/bin/sh\nexit 0\n", 0644);
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/true", dir);
    char *file_cands[] = {path, NULL};
    plan_init(&p, file_cands, 1, argv);
    expect_failure(&p, EACCES, SPAWN_STEP_EXEC);

    /* Like execvp: EACCES is remembered while the search goes on to a later miss… */
    char path_env[PATH_MAX];
    snprintf(path_env, sizeof(path_env), "%s:/nonexistent", dir);
    char **c = NULL;
    int n = spawn_candidates("true", path_env, &c);
    ASSERT_EQ(n, 2);
    plan_init(&p, c, (size_t) n, argv);
    expect_failure(&p, EACCES, SPAWN_STEP_EXEC);
    spawn_candidates_free(c);

    /* …and a later candidate that runs wins. */
    snprintf(path_env, sizeof(path_env), "%s:/usr/bin", dir);
    n = spawn_candidates("true", path_env, &c);
    ASSERT_EQ(n, 2);
    plan_init(&p, c, (size_t) n, argv);
    char out[OUT_MAX];
    int st;
    ASSERT_OK(run_capture(&p, out, sizeof(out), &st, NULL));
    ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    spawn_candidates_free(c);
    remove_file(dir, "true");
}

/* A file that exists and is executable but cannot run ends the search (no fallback). */
TEST(enoexec_stops_search)
{
    char dir[64];
    make_file(dir, "true", "not a program\n", 0755);
    char path_env[PATH_MAX];
    snprintf(path_env, sizeof(path_env), "%s:/usr/bin", dir);
    char **c = NULL;
    int n = spawn_candidates("true", path_env, &c);
    ASSERT_EQ(n, 2);
    char *const argv[] = {"true", NULL};
    struct spawn_plan p;
    plan_init(&p, c, (size_t) n, argv);
    expect_failure(&p, ENOEXEC, SPAWN_STEP_EXEC);
    spawn_candidates_free(c);
    remove_file(dir, "true");
}

TEST(cwd)
{
    char *const argv[] = {"/bin/pwd", NULL};
    char *cands[] = {"/bin/pwd", NULL};
    struct spawn_plan p;
    plan_init(&p, cands, 1, argv);
    p.cwd = "/usr/share";
    char out[OUT_MAX];
    int st;
    ASSERT_OK(run_capture(&p, out, sizeof(out), &st, NULL));
    ASSERT_STR_EQ(out, "/usr/share\n");

    p.cwd = "/nonexistent/dir";
    expect_failure(&p, ENOENT, SPAWN_STEP_CHDIR);
}

TEST(env_exact)
{
    char *const argv[] = {"/usr/bin/env", NULL};
    char *cands[] = {"/usr/bin/env", NULL};
    char *const envp[] = {"A=1", "B=two words", "EMPTY=", NULL};
    struct spawn_plan p;
    plan_init(&p, cands, 1, argv);
    p.envp = envp;
    char out[OUT_MAX];
    int st;
    ASSERT_OK(run_capture(&p, out, sizeof(out), &st, NULL));
    ASSERT_STR_EQ(out, "A=1\nB=two words\nEMPTY=\n");

    char *const none[] = {NULL};
    p.envp = none;
    ASSERT_OK(run_capture(&p, out, sizeof(out), &st, NULL));
    ASSERT_STR_EQ(out, "");
}

TEST(argv_passed)
{
    char *const argv[] = {"/bin/sh", "-c", "printf '%s|' \"$0\" \"$@\"", "zero", "a b", "", NULL};
    char out[OUT_MAX];
    run_ok(argv, out, sizeof(out));
    ASSERT_STR_EQ(out, "zero|a b||");
}

TEST(new_session)
{
    char *const argv[] = {"/bin/sh", "-c", "cat /proc/$$/stat", NULL};
    char *cands[] = {"/bin/sh", NULL};
    struct spawn_plan p;
    plan_init(&p, cands, 1, argv);
    int fds[2];
    ASSERT_OK(pipe2(fds, O_CLOEXEC));
    p.stdout_fd = fds[1];
    pid_t pid;
    ASSERT_OK(spawn_start(&p, &pid, NULL));
    close(fds[1]);
    char out[OUT_MAX];
    read_all(fds[0], out, sizeof(out));
    close(fds[0]);
    wait_status(pid);

    char state;
    int ppid, pgrp, sid;
    parse_stat(out, &state, &ppid, &pgrp, &sid);
    ASSERT_EQ(ppid, getpid());
    ASSERT_EQ(sid, pid);
    ASSERT_EQ(pgrp, pid);
    ASSERT_NE(getsid(0), pid);
}

TEST(signals_reset)
{
    /* The parent ignores SIGINT and blocks SIGTERM (the harness also ignores SIGPIPE). */
    ASSERT_TRUE(signal(SIGINT, SIG_IGN) != SIG_ERR);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    ASSERT_OK(sigprocmask(SIG_BLOCK, &set, NULL));

    char *const argv[] = {"/bin/cat", "/proc/self/status", NULL};
    char out[OUT_MAX], v[64];
    run_ok(argv, out, sizeof(out));
    status_field(out, "SigIgn", v, sizeof(v));
    ASSERT_STR_EQ(v, "0000000000000000");
    status_field(out, "SigBlk", v, sizeof(v));
    ASSERT_STR_EQ(v, "0000000000000000");

    /* The parent's own mask is what it was before spawn_start. */
    sigset_t now;
    ASSERT_OK(sigprocmask(SIG_SETMASK, NULL, &now));
    ASSERT_TRUE(sigismember(&now, SIGTERM));
    ASSERT_FALSE(sigismember(&now, SIGCHLD));
}

TEST(umask_applied)
{
    umask(077);
    char *const argv[] = {"/bin/sh", "-c", "umask", NULL};
    char out[OUT_MAX];
    run_ok(argv, out, sizeof(out));
    ASSERT_STR_EQ(out, "0022\n");
}

TEST(nofile_soft_limit)
{
    char *const argv[] = {"/bin/sh", "-c", "ulimit -Sn; ulimit -Hn", NULL};
    char out[OUT_MAX];
    struct rlimit rl;
    ASSERT_OK(getrlimit(RLIMIT_NOFILE, &rl));
    char want[128];
    if (rl.rlim_max == RLIM_INFINITY)
        snprintf(want, sizeof(want), "1024\nunlimited\n");
    else
        snprintf(want, sizeof(want), "1024\n%ju\n", (uintmax_t) rl.rlim_max);
    run_ok(argv, out, sizeof(out));
    ASSERT_STR_EQ(out, want);

    /* A soft limit above the hard one is clamped to it. */
    rl.rlim_cur = rl.rlim_max = 512;
    ASSERT_OK(setrlimit(RLIMIT_NOFILE, &rl));
    char *cands[] = {"/bin/sh", NULL};
    struct spawn_plan p;
    plan_init(&p, cands, 1, argv);
    p.nofile_soft = 100000;
    int st;
    ASSERT_OK(run_capture(&p, out, sizeof(out), &st, NULL));
    ASSERT_STR_EQ(out, "512\n512\n");

    /* 0 keeps the inherited limit. */
    rl.rlim_cur = 100;
    ASSERT_OK(setrlimit(RLIMIT_NOFILE, &rl));
    p.nofile_soft = 0;
    ASSERT_OK(run_capture(&p, out, sizeof(out), &st, NULL));
    ASSERT_STR_EQ(out, "100\n512\n");
}

TEST(oom_score_adj)
{
    char *const argv[] = {"/bin/cat", "/proc/self/oom_score_adj", NULL};
    char *cands[] = {"/bin/cat", NULL};
    struct spawn_plan p;
    plan_init(&p, cands, 1, argv);
    p.oom_score_adj = 100;
    char out[OUT_MAX];
    int st;
    ASSERT_OK(run_capture(&p, out, sizeof(out), &st, NULL));
    ASSERT_STR_EQ(out, "100\n");

    /* SPAWN_NO_OOM_SCORE leaves the inherited value. */
    char own[32];
    int fd = open("/proc/self/oom_score_adj", O_RDONLY | O_CLOEXEC);
    ASSERT_TRUE(fd >= 0);
    read_all(fd, own, sizeof(own));
    close(fd);
    p.oom_score_adj = SPAWN_NO_OOM_SCORE;
    ASSERT_OK(run_capture(&p, out, sizeof(out), &st, NULL));
    ASSERT_STR_EQ(out, own);

    /* Out of range is the kernel's EINVAL, reported. */
    p.oom_score_adj = 5000;
    expect_failure(&p, EINVAL, SPAWN_STEP_OOM_SCORE);
}

static void expect_only_stdio_fds(void)
{
    /* ls opens /proc/self/fd as 3; anything else was leaked into the child. */
    char *const argv[] = {"/bin/ls", "/proc/self/fd", NULL};
    char out[OUT_MAX];
    run_ok(argv, out, sizeof(out));
    ASSERT_STR_EQ(out, "0\n1\n2\n3\n");
}

TEST(no_fd_leak)
{
    int fd = open("/dev/null", O_RDONLY); /* deliberately without O_CLOEXEC */
    ASSERT_TRUE(fd >= 0);
    ASSERT_EQ(fcntl(fd, F_DUPFD, 40) >= 40, 1);
    expect_only_stdio_fds();
}

/* The close() fallback for kernels without close_range: a seccomp filter makes it ENOSYS. */
TEST(no_fd_leak_without_close_range)
{
#if defined(__x86_64__)
    const unsigned arch = AUDIT_ARCH_X86_64;
#elif defined(__aarch64__)
    const unsigned arch = AUDIT_ARCH_AARCH64;
#else
    const unsigned arch = 0;
    TEST_SKIP("no seccomp arch constant for this architecture");
#endif
    struct sock_filter insns[] = {
            BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, arch, 0, 3),
            BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_close_range, 0, 1),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {.len = ARRAY_SIZE(insns), .filter = insns};
    ASSERT_OK(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0));
    ASSERT_OK(prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0));
    ASSERT_EQ(syscall(SYS_close_range, 1000U, 1001U, 0U), -1);
    ASSERT_EQ(errno, ENOSYS);

    int fd = open("/dev/null", O_RDONLY);
    ASSERT_TRUE(fd >= 0);
    ASSERT_EQ(fcntl(fd, F_DUPFD, 40) >= 40, 1);
    expect_only_stdio_fds();
}

TEST(credentials)
{
    if (geteuid() != 0)
        TEST_SKIP("needs root");
    char *const argv[] = {"/bin/cat", "/proc/self/status", NULL};
    char *cands[] = {"/bin/cat", NULL};
    static const gid_t groups[] = {65534, 100};
    struct spawn_plan p;
    plan_init(&p, cands, 1, argv);
    p.change_ids = true;
    p.uid = 65534;
    p.gid = 65534;
    p.groups = groups;
    p.n_groups = ARRAY_SIZE(groups);
    /* oom_score_adj together with the uid drop: it must be written before the drop. */
    p.oom_score_adj = 200;
    char out[OUT_MAX], v[128];
    int st;
    ASSERT_OK(run_capture(&p, out, sizeof(out), &st, NULL));
    ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    status_field(out, "Uid", v, sizeof(v));
    ASSERT_STR_EQ(v, "65534\t65534\t65534\t65534");
    status_field(out, "Gid", v, sizeof(v));
    ASSERT_STR_EQ(v, "65534\t65534\t65534\t65534");
    status_field(out, "Groups", v, sizeof(v));
    /* The kernel sorts groups; the line may end with a space. */
    size_t n = strlen(v);
    while (n > 0 && v[n - 1] == ' ')
        v[--n] = '\0';
    ASSERT_STR_EQ(v, "100 65534");

    /* No supplementary groups at all. */
    p.n_groups = 0;
    p.groups = NULL;
    ASSERT_OK(run_capture(&p, out, sizeof(out), &st, NULL));
    status_field(out, "Groups", v, sizeof(v));
    ASSERT_TRUE(strspn(v, " ") == strlen(v));
}

/* A non-root guestd: id changes fail at setgroups, and an oom_score_adj it may not set is
 * skipped rather than reported. */
TEST(unprivileged_parent)
{
    if (geteuid() != 0)
        TEST_SKIP("needs root to become an unprivileged user");
    ASSERT_OK(setgroups(0, NULL));
    ASSERT_OK(setresgid(65534, 65534, 65534));
    ASSERT_OK(setresuid(65534, 65534, 65534));

    char own[32];
    int fd = open("/proc/self/oom_score_adj", O_RDONLY | O_CLOEXEC);
    ASSERT_TRUE(fd >= 0);
    read_all(fd, own, sizeof(own));
    close(fd);

    char *const argv[] = {"/bin/cat", "/proc/self/oom_score_adj", NULL};
    char *cands[] = {"/bin/cat", NULL};
    struct spawn_plan p;
    plan_init(&p, cands, 1, argv);
    p.oom_score_adj = -500;
    char out[OUT_MAX];
    int st;
    ASSERT_OK(run_capture(&p, out, sizeof(out), &st, NULL));
    ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    ASSERT_STR_EQ(out, own);

    p.oom_score_adj = SPAWN_NO_OOM_SCORE;
    p.change_ids = true;
    p.uid = 0;
    p.gid = 0;
    expect_failure(&p, EPERM, SPAWN_STEP_SETGROUPS);
}

/* --- PTYs --------------------------------------------------------------------------------------
 */

/* Reads from the non-blocking master until `want` appears (want NULL: until EIO). Returns the
 * errno that ended the read (0 when want was found). */
static int pty_read(int master, char *buf, size_t size, size_t *len, const char *want)
{
    for (;;) {
        if (want && strstr(buf, want))
            return 0;
        struct pollfd pfd = {.fd = master, .events = POLLIN};
        int r = poll(&pfd, 1, PTY_POLL_MS);
        ASSERT_TRUE(r > 0);
        ASSERT_TRUE(*len < size - 1);
        ssize_t n = read(master, buf + *len, size - 1 - *len);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (n < 0)
            return errno;
        ASSERT_TRUE(n > 0);
        *len += (size_t) n;
        buf[*len] = '\0';
    }
}

static pid_t spawn_on_pty(int slave, char *const *argv)
{
    char *cands[] = {argv[0], NULL};
    struct spawn_plan p;
    plan_init(&p, cands, 1, argv);
    p.pty = true;
    p.stdin_fd = p.stdout_fd = p.stderr_fd = slave;
    pid_t pid;
    ASSERT_OK(spawn_start(&p, &pid, NULL));
    return pid;
}

TEST(pty_size_and_ctty)
{
    int master, slave;
    ASSERT_OK(spawn_openpty(100, 30, &master, &slave));
    ASSERT_TRUE(fcntl(master, F_GETFL) & O_NONBLOCK);
    ASSERT_TRUE(fcntl(master, F_GETFD) & FD_CLOEXEC);
    ASSERT_TRUE(fcntl(slave, F_GETFD) & FD_CLOEXEC);
    char name[PATH_MAX];
    ASSERT_EQ(ptsname_r(master, name, sizeof(name)), 0);

    char *const argv[] = {"/bin/sh", "-c", "stty size; tty; cat /proc/$$/stat", NULL};
    pid_t pid = spawn_on_pty(slave, argv);
    /* The caller's slave copy must go, or the master never sees the end (EIO). */
    close(slave);
    int st = wait_status(pid);
    ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);

    /* Output goes through the line discipline (\n becomes \r\n). Once the child is gone and
     * the last slave fd is closed, the master reads the buffered output and then EIO, not 0:
     * callers treat EIO as end of stream for PTYs. */
    char out[OUT_MAX] = "";
    size_t len = 0;
    ASSERT_EQ(pty_read(master, out, sizeof(out), &len, NULL), EIO);
    char want[PATH_MAX + 32];
    snprintf(want, sizeof(want), "30 100\r\n%s\r\n", name);
    ASSERT_EQ(strncmp(out, want, strlen(want)), 0);
    ASSERT_EQ(strncmp(name, "/dev/pts/", 9), 0);

    /* The shell's stat: its tty_nr (field 7) is set, i.e. the slave is its controlling
     * terminal, and its process group is the terminal's foreground group (field 8). */
    const char *rp = strrchr(out, ')');
    ASSERT_NOT_NULL(rp);
    char state;
    int ppid, pgrp, sid, tty_nr, tpgid;
    ASSERT_EQ(sscanf(rp + 1, " %c %d %d %d %d %d", &state, &ppid, &pgrp, &sid, &tty_nr, &tpgid), 6);
    ASSERT_EQ(sid, pid);
    ASSERT_NE(tty_nr, 0);
    ASSERT_EQ(tpgid, pid);
    close(master);
}

TEST(pty_resize)
{
    int master, slave;
    ASSERT_OK(spawn_openpty(0, 0, &master, &slave));
    char *const argv[] = {"/bin/sh", "-c", "stty size; read x; stty size", NULL};
    pid_t pid = spawn_on_pty(slave, argv);
    close(slave);

    char out[OUT_MAX] = "";
    size_t len = 0;
    ASSERT_EQ(pty_read(master, out, sizeof(out), &len, "24 80\r\n"), 0);
    ASSERT_OK(spawn_pty_resize(master, 132, 50));
    ASSERT_EQ(write(master, "go\n", 3), 3);
    ASSERT_EQ(pty_read(master, out, sizeof(out), &len, "50 132\r\n"), 0);
    int st = wait_status(pid);
    ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    ASSERT_EQ(pty_read(master, out, sizeof(out), &len, NULL), EIO);
    close(master);

    ASSERT_ERR(spawn_pty_resize(-1, 80, 24), EBADF);
}

/* --- reaper ------------------------------------------------------------------------------------
 */

struct exit_rec {
    pid_t pid;
    int status;
    int calls;
};

static void on_exit_record(pid_t pid, int status, void *userdata)
{
    struct exit_rec *e = userdata;
    e->pid = pid;
    e->status = status;
    e->calls++;
}

static pid_t spawn_sh_stdin(const char *script, int stdin_fd)
{
    char *const argv[] = {"/bin/sh", "-c", (char *) script, NULL};
    char *cands[] = {"/bin/sh", NULL};
    struct spawn_plan p;
    plan_init(&p, cands, 1, argv);
    p.stdin_fd = stdin_fd;
    pid_t pid;
    ASSERT_OK(spawn_start(&p, &pid, NULL));
    return pid;
}

static pid_t spawn_sh(const char *script)
{
    return spawn_sh_stdin(script, -1);
}

static void loop_finish(uv_loop_t *loop)
{
    reaper_stop();
    ASSERT_EQ(uv_run(loop, UV_RUN_DEFAULT), 0);
    ASSERT_EQ(uv_loop_close(loop), 0);
}

TEST(reaper_exit_status)
{
    uv_loop_t loop;
    ASSERT_OK(uv_loop_init(&loop));
    ASSERT_OK(reaper_start(&loop));
    ASSERT_ERR(reaper_start(&loop), EBUSY);

    struct exit_rec a = {0}, b = {0};
    pid_t pa = spawn_sh("exit 3");
    ASSERT_OK(reaper_watch(pa, on_exit_record, &a));
    pid_t pb = spawn_sh("kill -TERM $$");
    ASSERT_OK(reaper_watch(pb, on_exit_record, &b));
    while (a.calls == 0 || b.calls == 0)
        uv_run(&loop, UV_RUN_ONCE);
    ASSERT_EQ(a.calls, 1);
    ASSERT_EQ(a.pid, pa);
    ASSERT_TRUE(WIFEXITED(a.status));
    ASSERT_EQ(WEXITSTATUS(a.status), 3);
    ASSERT_EQ(b.calls, 1);
    ASSERT_TRUE(WIFSIGNALED(b.status));
    ASSERT_EQ(WTERMSIG(b.status), SIGTERM);
    ASSERT_EQ(reaper_orphans_reaped(), 0);
    loop_finish(&loop);
}

TEST(reaper_watch_api)
{
    ASSERT_ERR(reaper_watch(0, on_exit_record, NULL), EINVAL);
    ASSERT_ERR(reaper_watch(-5, on_exit_record, NULL), EINVAL);
    ASSERT_ERR(reaper_watch(100, NULL, NULL), EINVAL);
    /* Many entries in scrambled order: the table stays sorted and findable. */
    for (int i = 0; i < 200; i++)
        ASSERT_OK(reaper_watch(1000 + (i * 37) % 200, on_exit_record, NULL));
    for (int i = 0; i < 200; i++)
        ASSERT_ERR(reaper_watch(1000 + i, on_exit_record, NULL), EEXIST);
    for (int i = 0; i < 200; i += 2)
        reaper_unwatch(1000 + i);
    for (int i = 0; i < 200; i++) {
        if (i % 2)
            ASSERT_ERR(reaper_watch(1000 + i, on_exit_record, NULL), EEXIST);
        else
            ASSERT_OK(reaper_watch(1000 + i, on_exit_record, NULL));
    }
    reaper_unwatch(4242); /* not watched: no-op */
    for (int i = 0; i < 200; i++)
        reaper_unwatch(1000 + i);
    /* Stop without start is harmless and frees nothing twice. */
    reaper_stop();
}

/* Many children that have all exited before the loop runs: SIGCHLDs coalesce into one, and the
 * waitpid loop must still collect every one of them, each for its own watcher. */
TEST(reaper_many_at_once)
{
    uv_loop_t loop;
    ASSERT_OK(uv_loop_init(&loop));
    ASSERT_OK(reaper_start(&loop));
    enum { N = 20 };
    struct exit_rec rec[N] = {{0}};
    pid_t pids[N];
    for (int i = 0; i < N; i++) {
        char script[32];
        snprintf(script, sizeof(script), "exit %d", i + 1);
        pids[i] = spawn_sh(script);
        ASSERT_OK(reaper_watch(pids[i], on_exit_record, &rec[i]));
    }
    for (int i = 0; i < N; i++)
        wait_zombie(pids[i]);
    int done = 0;
    while (done < N) {
        uv_run(&loop, UV_RUN_ONCE);
        done = 0;
        for (int i = 0; i < N; i++)
            done += rec[i].calls;
    }
    for (int i = 0; i < N; i++) {
        ASSERT_EQ(rec[i].calls, 1);
        ASSERT_EQ(rec[i].pid, pids[i]);
        ASSERT_TRUE(WIFEXITED(rec[i].status));
        ASSERT_EQ(WEXITSTATUS(rec[i].status), i + 1);
    }
    int children, zombies;
    scan_children(&children, &zombies);
    ASSERT_EQ(children, 0);
    loop_finish(&loop);
}

TEST(reaper_orphan_double_fork)
{
    uv_loop_t loop;
    ASSERT_OK(uv_loop_init(&loop));
    ASSERT_OK(reaper_start(&loop));
    int sub = 0;
    ASSERT_OK(prctl(PR_GET_CHILD_SUBREAPER, &sub));
    ASSERT_EQ(sub, 1);

    /* The shell exits at once; its background sleep is re-parented to us and exits later. */
    struct exit_rec leader = {0};
    pid_t pid = spawn_sh("/bin/sleep 0.3 & exit 0");
    ASSERT_OK(reaper_watch(pid, on_exit_record, &leader));
    while (leader.calls == 0 || reaper_orphans_reaped() == 0)
        uv_run(&loop, UV_RUN_ONCE);
    ASSERT_EQ(leader.calls, 1);
    ASSERT_EQ(WEXITSTATUS(leader.status), 0);
    ASSERT_EQ(reaper_orphans_reaped(), 1);

    int children, zombies;
    scan_children(&children, &zombies);
    ASSERT_EQ(zombies, 0);
    ASSERT_EQ(children, 0);
    loop_finish(&loop);
}

/* Children that exited before reaper_start are reaped by it. */
TEST(reaper_start_reaps_earlier_exits)
{
    pid_t pid = spawn_sh("exit 0");
    wait_zombie(pid);
    uv_loop_t loop;
    ASSERT_OK(uv_loop_init(&loop));
    ASSERT_OK(reaper_start(&loop));
    ASSERT_EQ(reaper_orphans_reaped(), 1);
    int children, zombies;
    scan_children(&children, &zombies);
    ASSERT_EQ(children, 0);
    loop_finish(&loop);
}

/* A spawn failure leaves a child that exits 127; the caller watches it like any other. */
TEST(reaper_after_spawn_failure)
{
    uv_loop_t loop;
    ASSERT_OK(uv_loop_init(&loop));
    ASSERT_OK(reaper_start(&loop));
    char *const argv[] = {"nope", NULL};
    char *cands[] = {"/nonexistent/nope", NULL};
    struct spawn_plan p;
    plan_init(&p, cands, 1, argv);
    pid_t pid = -1;
    struct spawn_error e;
    ASSERT_ERR(spawn_start(&p, &pid, &e), ENOENT);
    ASSERT_TRUE(pid > 0);
    struct exit_rec rec = {0};
    ASSERT_OK(reaper_watch(pid, on_exit_record, &rec));
    reaper_reap_now();
    while (rec.calls == 0)
        uv_run(&loop, UV_RUN_ONCE);
    ASSERT_EQ(WEXITSTATUS(rec.status), 127);
    ASSERT_EQ(reaper_orphans_reaped(), 0);
    loop_finish(&loop);
}

struct reentry {
    struct exit_rec rec;
    pid_t unwatch;
    pid_t watch;
    struct exit_rec *watch_rec;
    int release_fd; /* closing it lets the other two children exit */
};

static void on_exit_reenter(pid_t pid, int status, void *userdata)
{
    struct reentry *r = userdata;
    on_exit_record(pid, status, &r->rec);
    /* Reaping from inside a reap returns at once; the outer loop carries on. */
    reaper_reap_now();
    reaper_unwatch(r->unwatch);
    ASSERT_OK(reaper_watch(r->watch, on_exit_record, r->watch_rec));
    ASSERT_ERR(reaper_watch(r->watch, on_exit_record, r->watch_rec), EEXIST);
    /* The pid being reported is no longer watched, so it may be watched again. */
    ASSERT_OK(reaper_watch(pid, on_exit_record, &r->rec));
    reaper_unwatch(pid);
    close(r->release_fd);
}

TEST(reaper_reentrant_callbacks)
{
    uv_loop_t loop;
    ASSERT_OK(uv_loop_init(&loop));
    ASSERT_OK(reaper_start(&loop));
    /* b and c block on reading a pipe that a's callback closes, so they exit only after it. */
    int fds[2];
    ASSERT_OK(pipe2(fds, O_CLOEXEC));
    struct exit_rec b = {0}, c = {0};
    struct reentry a = {.watch_rec = &c, .release_fd = fds[1]};
    pid_t pa = spawn_sh("exit 0");
    pid_t pb = spawn_sh_stdin("read x", fds[0]);
    pid_t pc = spawn_sh_stdin("read x; exit 9", fds[0]);
    close(fds[0]);
    a.unwatch = pb;
    a.watch = pc;
    ASSERT_OK(reaper_watch(pa, on_exit_reenter, &a));
    ASSERT_OK(reaper_watch(pb, on_exit_record, &b));
    while (c.calls == 0 || reaper_orphans_reaped() == 0)
        uv_run(&loop, UV_RUN_ONCE);
    ASSERT_EQ(a.rec.calls, 1);
    ASSERT_EQ(b.calls, 0); /* unwatched by a's callback: counted as an orphan instead */
    ASSERT_EQ(c.calls, 1);
    ASSERT_EQ(c.pid, pc);
    ASSERT_EQ(WEXITSTATUS(c.status), 9);
    ASSERT_EQ(reaper_orphans_reaped(), 1);
    loop_finish(&loop);
}

TEST_MAIN()

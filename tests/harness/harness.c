/* SPDX-License-Identifier: Apache-2.0 */
#include "harness.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/wait.h>
#include <unistd.h>

/* Upper bound on tests in one binary; registering more aborts loudly. */
#define TEST_MAX 1024

static struct test_case tests[TEST_MAX];
static size_t n_tests;

void test_register(const char *name, void (*fn)(void))
{
    if (n_tests >= TEST_MAX) {
        fprintf(stderr, "harness: too many tests (max %d)\n", TEST_MAX);
        abort();
    }
    tests[n_tests].name = name;
    tests[n_tests].fn = fn;
    n_tests++;
}

void test_fail(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "# %s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
    _exit(1);
}

void test_skip(const char *why)
{
    fprintf(stdout, "# skip reason: %s\n", why);
    fflush(stdout);
    _exit(TEST_EXIT_SKIP);
}

static unsigned timeout_seconds(void)
{
    const char *m = getenv("GUESTD_TEST_TIMEOUT_MULTIPLIER");
    unsigned mult = 1;
    if (m && *m) {
        char *end;
        unsigned long v = strtoul(m, &end, 10); /* test code: plain strtoul is fine here */
        if (*end == '\0' && v > 0 && v < 100)
            mult = (unsigned) v;
    }
    return TEST_TIMEOUT_S * mult;
}

/* Runs one test in a child; returns 0 pass, 1 fail, 77 skip. */
static int run_one(const struct test_case *t)
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "# fork: %s\n", strerror(errno));
        return 1;
    }
    if (pid == 0) {
        signal(SIGPIPE, SIG_IGN);
        alarm(timeout_seconds());
        t->fn();
        fflush(stdout);
        /* exit(), not _exit(): LeakSanitizer checks at exit, so leaks fail the test. */
        exit(0);
    }
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return 1;
    if (WIFEXITED(status))
        return WEXITSTATUS(status) == 0 ? 0 : WEXITSTATUS(status) == TEST_EXIT_SKIP ? 77 : 1;
    if (WIFSIGNALED(status))
        fprintf(stderr, "# %s: killed by signal %d%s\n", t->name, WTERMSIG(status),
                WTERMSIG(status) == SIGALRM ? " (timeout)" : "");
    return 1;
}

int test_main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--list") == 0) {
        for (size_t i = 0; i < n_tests; i++)
            printf("%s\n", tests[i].name);
        return 0;
    }
    const struct test_case *sel[TEST_MAX];
    size_t n_sel = 0;
    for (size_t i = 0; i < n_tests; i++) {
        bool want = argc <= 1;
        for (int a = 1; a < argc && !want; a++)
            want = strcmp(argv[a], tests[i].name) == 0;
        if (want)
            sel[n_sel++] = &tests[i];
    }
    if (argc > 1 && n_sel == 0) {
        fprintf(stderr, "no test matches\n");
        return 1;
    }
    printf("1..%zu\n", n_sel);
    int failed = 0;
    for (size_t i = 0; i < n_sel; i++) {
        int r = run_one(sel[i]);
        if (r == 0)
            printf("ok %zu - %s\n", i + 1, sel[i]->name);
        else if (r == 77)
            printf("ok %zu - %s # SKIP\n", i + 1, sel[i]->name);
        else {
            printf("not ok %zu - %s\n", i + 1, sel[i]->name);
            failed++;
        }
        fflush(stdout);
    }
    return failed ? 1 : 0;
}

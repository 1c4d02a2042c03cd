/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fs/watch: the inotify engine on a private loop with a temporary tree. Event mapping and
 * order, names relative to the root, recursive watches (mkdir -p, trees moved in, renames,
 * removals, trees moved out), shared descriptors, overflows (injected through the engine's
 * test hook: nothing global is lowered), limits and validation. Every test ends with
 * uv_loop_close() == 0.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <uv.h>

#include "base/macro.h"
#include "base/users.h"
#include "fs/watch.h"
#include "harness.h"

/* The unprivileged account the permission tests act as (as in test-fs.c). */
#define TEST_USER  "user"
#define TEST_UID   1001
#define TEST_GID   1001
/* Events one recorder keeps. */
#define MAX_EVENTS 1024
/* How long to wait for events that must come, and for ones that must not. */
#define WAIT_MS    5000
#define SETTLE_MS  150

static const char *type_names[] = {
        [WATCH_EVENT_CREATE] = "CREATE", [WATCH_EVENT_WRITE] = "WRITE",
        [WATCH_EVENT_REMOVE] = "REMOVE", [WATCH_EVENT_RENAME] = "RENAME",
        [WATCH_EVENT_CHMOD] = "CHMOD",
};

/* What one watch reported. */
struct rec {
    char *events[MAX_EVENTS]; /* "TYPE name" */
    size_t n;
    int ready; /* 0 waiting, 1 live, -1 failed */
    enum watch_step fail_step;
    int fail_err;
    int overflows;
    int resynced;
    int errors;
    bool close_on_event; /* closes its watch from inside the first event callback */
    struct watch *w;
};

static uv_loop_t loop;
static struct watch_engine *engine;
static uv_timer_t tick;

static void on_ready(struct watch *w, const struct watch_error *err, void *userdata)
{
    struct rec *r = userdata;
    (void) w;
    r->ready = err ? -1 : 1;
    if (err) {
        r->fail_step = err->step;
        r->fail_err = err->err;
    }
}

static void on_event(struct watch *w, enum watch_event_type type, const char *name, void *userdata)
{
    struct rec *r = userdata;
    ASSERT_TRUE(r->n < MAX_EVENTS);
    char *s = NULL;
    ASSERT_TRUE(asprintf(&s, "%s %s", type_names[type], name) > 0);
    r->events[r->n++] = s;
    if (r->close_on_event) {
        watch_close(w);
        r->w = NULL;
    }
}

static void on_overflow(struct watch *w, void *userdata)
{
    struct rec *r = userdata;
    (void) w;
    r->overflows++;
}

static void on_resynced(struct watch *w, const struct watch_error *err, void *userdata)
{
    struct rec *r = userdata;
    (void) w;
    ASSERT_NULL(err);
    r->resynced++;
}

static void on_error(struct watch *w, const struct watch_error *err, void *userdata)
{
    struct rec *r = userdata;
    (void) w;
    r->errors++;
    r->fail_step = err->step;
}

static const struct watch_ops ops = {
        .on_ready = on_ready,
        .on_event = on_event,
        .on_overflow = on_overflow,
        .on_resynced = on_resynced,
        .on_error = on_error,
};

static void on_tick(uv_timer_t *t)
{
    (void) t;
}

static void setup(void)
{
    ASSERT_OK(uv_loop_init(&loop));
    ASSERT_OK(watch_engine_new(&loop, &engine));
    /* The engine's handle does not keep a loop alive: this timer does while tests wait. */
    ASSERT_OK(uv_timer_init(&loop, &tick));
    ASSERT_OK(uv_timer_start(&tick, on_tick, 10, 10));
}

static void rec_done(struct rec *r)
{
    for (size_t i = 0; i < r->n; i++)
        free(r->events[i]);
    r->n = 0;
}

/* Closes what is left, lets every close callback run and checks that nothing leaked. */
static void teardown(struct rec **recs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (recs[i]->w)
            watch_close(recs[i]->w);
        recs[i]->w = NULL;
    }
    uv_close((uv_handle_t *) &tick, NULL);
    ASSERT_OK(uv_run(&loop, UV_RUN_DEFAULT));
    ASSERT_EQ(watch_engine_fd(engine), -1);
    ASSERT_EQ(watch_engine_watches(engine), 0);
    ASSERT_EQ(watch_engine_descriptors(engine), 0);
    watch_engine_free(engine);
    ASSERT_EQ(uv_loop_close(&loop), 0);
    for (size_t i = 0; i < n; i++)
        rec_done(recs[i]);
}

static void run_for(uint64_t ms)
{
    uv_update_time(&loop);
    uint64_t end = uv_now(&loop) + ms;
    while (uv_now(&loop) < end)
        (void) uv_run(&loop, UV_RUN_ONCE);
}

static bool wait_ready(struct rec *r)
{
    uv_update_time(&loop);
    uint64_t end = uv_now(&loop) + WAIT_MS;
    while (r->ready == 0 && uv_now(&loop) < end)
        (void) uv_run(&loop, UV_RUN_ONCE);
    return r->ready != 0;
}

/* Runs until `r` holds at least `n` events (or the time is up), then a little longer so that
 * events which must not come have their chance. */
static void wait_events(struct rec *r, size_t n)
{
    uv_update_time(&loop);
    uint64_t end = uv_now(&loop) + WAIT_MS;
    while (r->n < n && uv_now(&loop) < end)
        (void) uv_run(&loop, UV_RUN_ONCE);
    run_for(SETTLE_MS);
}

static size_t count(const struct rec *r, const char *ev)
{
    size_t c = 0;
    for (size_t i = 0; i < r->n; i++)
        c += streq(r->events[i], ev);
    return c;
}

static ssize_t index_of(const struct rec *r, const char *ev)
{
    for (size_t i = 0; i < r->n; i++)
        if (streq(r->events[i], ev))
            return (ssize_t) i;
    return -1;
}

static void dump(const struct rec *r)
{
    for (size_t i = 0; i < r->n; i++)
        fprintf(stderr, "#   event %zu: %s\n", i, r->events[i]);
}

/* Exactly these events, in this order (NULL-terminated). */
static void expect_exact(struct rec *r, ...)
{
    va_list ap;
    size_t i = 0;
    va_start(ap, r);
    for (const char *want; (want = va_arg(ap, const char *)); i++) {
        if (i >= r->n || !streq(r->events[i], want)) {
            dump(r);
            test_fail(__FILE__, __LINE__, "event %zu: want \"%s\", got \"%s\"", i, want,
                      i < r->n ? r->events[i] : "(none)");
        }
    }
    va_end(ap);
    if (r->n != i) {
        dump(r);
        test_fail(__FILE__, __LINE__, "%zu events, want %zu", r->n, i);
    }
}

static char *tmpdir(void)
{
    char tmpl[] = "/tmp/test-watch-XXXXXX";
    ASSERT_NOT_NULL(mkdtemp(tmpl));
    ASSERT_OK(chmod(tmpl, 0755));
    char *real = realpath(tmpl, NULL);
    ASSERT_NOT_NULL(real);
    return real;
}

static void rmrf(const char *dir)
{
    char cmd[PATH_MAX + 32];
    (void) snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    (void) !system(cmd);
}

static char *pjoin(const char *a, const char *b)
{
    char *p = NULL;
    ASSERT_TRUE(asprintf(&p, "%s/%s", a, b) > 0);
    return p;
}

static void mkdir_in(const char *root, const char *rel)
{
    char *p = pjoin(root, rel);
    ASSERT_OK(mkdir(p, 0755));
    free(p);
}

static void write_in(const char *root, const char *rel, const char *text)
{
    char *p = pjoin(root, rel);
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    ASSERT_TRUE(fd >= 0);
    ASSERT_EQ(write(fd, text, strlen(text)), (ssize_t) strlen(text));
    ASSERT_OK(close(fd));
    free(p);
}

static void start(struct rec *r, const char *root, bool recursive)
{
    const struct watch_params p = {
            .root = root,
            .recursive = recursive,
            .uid = geteuid(),
            .gid = getegid(),
            .user = geteuid() == 0 ? "root" : "nobody",
    };
    struct watch_error err = {0};
    ASSERT_OK(watch_new(engine, &p, &ops, r, &r->w, &err));
    ASSERT_TRUE(wait_ready(r));
}

static void start_ok(struct rec *r, const char *root, bool recursive)
{
    start(r, root, recursive);
    ASSERT_EQ(r->ready, 1);
}

/* --- mapping and names ------------------------------------------------------------------------ */

TEST(file_operations_map_to_envd_events)
{
    setup();
    char *root = tmpdir();
    struct rec r = {0};
    start_ok(&r, root, false);
    ASSERT_EQ(watch_dirs(r.w), 1);

    write_in(root, "f.txt", "hello");
    wait_events(&r, 2);
    expect_exact(&r, "CREATE f.txt", "WRITE f.txt", NULL);
    rec_done(&r);

    char *f = pjoin(root, "f.txt"), *g = pjoin(root, "g.txt");
    ASSERT_OK(chmod(f, 0600));
    wait_events(&r, 1);
    expect_exact(&r, "CHMOD f.txt", NULL);
    rec_done(&r);

    ASSERT_OK(rename(f, g));
    wait_events(&r, 2);
    expect_exact(&r, "RENAME f.txt", "CREATE g.txt", NULL);
    rec_done(&r);

    ASSERT_OK(unlink(g));
    wait_events(&r, 1);
    expect_exact(&r, "REMOVE g.txt", NULL);

    struct rec *all[] = {&r};
    teardown(all, 1);
    rmrf(root);
    free(f);
    free(g);
    free(root);
}

TEST(one_record_yields_events_in_envd_order)
{
    setup();
    char *root = tmpdir();
    struct rec r = {0};
    start_ok(&r, root, false);
    int wd = watch_root_wd(r.w);
    ASSERT_TRUE(wd >= 0);
    watch_engine_test_inject(engine, wd,
                             IN_DELETE | IN_MODIFY | IN_ATTRIB | IN_MOVED_FROM | IN_CREATE, 0, "x");
    expect_exact(&r, "CREATE x", "RENAME x", "CHMOD x", "WRITE x", "REMOVE x", NULL);
    rec_done(&r);
    /* Records about the root itself are named "." */
    watch_engine_test_inject(engine, wd, IN_ATTRIB, 0, NULL);
    expect_exact(&r, "CHMOD .", NULL);
    rec_done(&r);
    /* Records for descriptors the watch does not hold are not its business. */
    watch_engine_test_inject(engine, wd + 1000, IN_CREATE, 0, "y");
    ASSERT_EQ(r.n, 0);

    struct rec *all[] = {&r};
    teardown(all, 1);
    rmrf(root);
    free(root);
}

TEST(non_recursive_watches_only_the_root)
{
    setup();
    char *root = tmpdir();
    mkdir_in(root, "old");
    struct rec r = {0};
    start_ok(&r, root, false);
    ASSERT_EQ(watch_dirs(r.w), 1);
    mkdir_in(root, "d");
    write_in(root, "d/f", "x");
    write_in(root, "old/f", "x");
    wait_events(&r, 1);
    expect_exact(&r, "CREATE d", NULL);
    ASSERT_EQ(watch_dirs(r.w), 1);

    struct rec *all[] = {&r};
    teardown(all, 1);
    rmrf(root);
    free(root);
}

/* --- recursive watches ------------------------------------------------------------------------ */

TEST(recursive_names_are_relative_to_the_root)
{
    setup();
    char *root = tmpdir();
    mkdir_in(root, "sub");
    mkdir_in(root, "sub/deeper");
    struct rec r = {0};
    start_ok(&r, root, true);
    ASSERT_EQ(watch_dirs(r.w), 3);
    write_in(root, "sub/deeper/file.txt", "x");
    wait_events(&r, 2);
    expect_exact(&r, "CREATE sub/deeper/file.txt", "WRITE sub/deeper/file.txt", NULL);

    struct rec *all[] = {&r};
    teardown(all, 1);
    rmrf(root);
    free(root);
}

TEST(mkdir_p_reports_every_level_once)
{
    setup();
    char *root = tmpdir();
    struct rec r = {0};
    start_ok(&r, root, true);
    mkdir_in(root, "a");
    mkdir_in(root, "a/b");
    mkdir_in(root, "a/b/c");
    wait_events(&r, 3);
    ASSERT_EQ(count(&r, "CREATE a"), 1);
    ASSERT_EQ(count(&r, "CREATE a/b"), 1);
    ASSERT_EQ(count(&r, "CREATE a/b/c"), 1);
    ASSERT_TRUE(index_of(&r, "CREATE a") < index_of(&r, "CREATE a/b"));
    ASSERT_TRUE(index_of(&r, "CREATE a/b") < index_of(&r, "CREATE a/b/c"));
    ASSERT_EQ(r.n, 3);
    ASSERT_EQ(watch_dirs(r.w), 4);
    rec_done(&r);

    write_in(root, "a/b/c/f", "x");
    wait_events(&r, 2);
    expect_exact(&r, "CREATE a/b/c/f", "WRITE a/b/c/f", NULL);

    struct rec *all[] = {&r};
    teardown(all, 1);
    rmrf(root);
    free(root);
}

TEST(a_tree_moved_in_is_walked_with_synthetic_creates)
{
    setup();
    char *root = tmpdir();
    char *outside = tmpdir();
    mkdir_in(outside, "t");
    mkdir_in(outside, "t/b");
    mkdir_in(outside, "t/b/c");
    write_in(outside, "t/b/c/f", "x");
    write_in(outside, "t/top.txt", "x");
    struct rec r = {0};
    start_ok(&r, root, true);

    char *from = pjoin(outside, "t"), *to = pjoin(root, "t");
    ASSERT_OK(rename(from, to));
    wait_events(&r, 5);
    /* The moved directory itself, then what was found inside, in lexical pre-order. */
    expect_exact(&r, "CREATE t", "CREATE t/b", "CREATE t/b/c", "CREATE t/b/c/f", "CREATE t/top.txt",
                 NULL);
    ASSERT_EQ(watch_dirs(r.w), 4);
    rec_done(&r);

    write_in(root, "t/b/c/g", "x");
    wait_events(&r, 2);
    expect_exact(&r, "CREATE t/b/c/g", "WRITE t/b/c/g", NULL);

    struct rec *all[] = {&r};
    teardown(all, 1);
    rmrf(root);
    rmrf(outside);
    free(from);
    free(to);
    free(root);
    free(outside);
}

TEST(a_renamed_directory_keeps_its_watches_under_the_new_name)
{
    setup();
    char *root = tmpdir();
    mkdir_in(root, "a");
    mkdir_in(root, "a/b");
    mkdir_in(root, "a/b/c");
    struct rec r = {0};
    start_ok(&r, root, true);
    ASSERT_EQ(watch_dirs(r.w), 4);
    size_t fds = watch_engine_descriptors(engine);

    char *a = pjoin(root, "a"), *z = pjoin(root, "z");
    ASSERT_OK(rename(a, z));
    wait_events(&r, 4);
    /* envd's sequence: the rename, the new name, and what lives under it. */
    expect_exact(&r, "RENAME a", "CREATE z", "CREATE z/b", "CREATE z/b/c", NULL);
    ASSERT_EQ(watch_dirs(r.w), 4);
    ASSERT_EQ(watch_engine_descriptors(engine), fds);
    rec_done(&r);

    write_in(root, "z/b/c/f", "x");
    wait_events(&r, 2);
    expect_exact(&r, "CREATE z/b/c/f", "WRITE z/b/c/f", NULL);

    struct rec *all[] = {&r};
    teardown(all, 1);
    rmrf(root);
    free(a);
    free(z);
    free(root);
}

TEST(removed_directories_drop_their_watches)
{
    setup();
    char *root = tmpdir();
    mkdir_in(root, "a");
    mkdir_in(root, "a/b");
    write_in(root, "a/b/f", "x");
    struct rec r = {0};
    start_ok(&r, root, true);
    ASSERT_EQ(watch_dirs(r.w), 3);
    ASSERT_EQ(watch_engine_descriptors(engine), 3);

    char *a = pjoin(root, "a");
    rmrf(a);
    wait_events(&r, 3);
    expect_exact(&r, "REMOVE a/b/f", "REMOVE a/b", "REMOVE a", NULL);
    ASSERT_EQ(watch_dirs(r.w), 1);
    ASSERT_EQ(watch_engine_descriptors(engine), 1);

    struct rec *all[] = {&r};
    teardown(all, 1);
    rmrf(root);
    free(a);
    free(root);
}

TEST(a_directory_moved_out_is_forgotten)
{
    setup();
    char *root = tmpdir();
    char *outside = tmpdir();
    mkdir_in(root, "a");
    mkdir_in(root, "a/b");
    struct rec r = {0};
    start_ok(&r, root, true);
    ASSERT_EQ(watch_dirs(r.w), 3);

    char *a = pjoin(root, "a"), *away = pjoin(outside, "a");
    ASSERT_OK(rename(a, away));
    wait_events(&r, 1);
    expect_exact(&r, "RENAME a", NULL);
    ASSERT_EQ(watch_dirs(r.w), 1);
    ASSERT_EQ(watch_engine_descriptors(engine), 1);
    rec_done(&r);

    write_in(outside, "a/b/f", "x");
    write_in(root, "here", "x");
    wait_events(&r, 2);
    expect_exact(&r, "CREATE here", "WRITE here", NULL);

    struct rec *all[] = {&r};
    teardown(all, 1);
    rmrf(root);
    rmrf(outside);
    free(a);
    free(away);
    free(root);
    free(outside);
}

TEST(the_root_itself)
{
    setup();
    char *parent = tmpdir();
    char *root = pjoin(parent, "root");
    ASSERT_OK(mkdir(root, 0755));
    struct rec r = {0};
    start_ok(&r, root, true);

    ASSERT_OK(chmod(root, 0700));
    wait_events(&r, 1);
    expect_exact(&r, "CHMOD .", NULL);
    rec_done(&r);

    ASSERT_OK(rmdir(root));
    wait_events(&r, 1);
    expect_exact(&r, "REMOVE .", NULL);
    ASSERT_EQ(watch_dirs(r.w), 0);

    struct rec *all[] = {&r};
    teardown(all, 1);
    rmrf(parent);
    free(root);
    free(parent);
}

TEST(a_moved_root_is_no_longer_followed)
{
    setup();
    char *parent = tmpdir();
    char *root = pjoin(parent, "root"), *moved = pjoin(parent, "moved");
    ASSERT_OK(mkdir(root, 0755));
    mkdir_in(root, "sub");
    struct rec r = {0};
    start_ok(&r, root, true);
    ASSERT_OK(rename(root, moved));
    wait_events(&r, 1);
    expect_exact(&r, "RENAME .", NULL);
    ASSERT_EQ(watch_dirs(r.w), 0);
    rec_done(&r);
    write_in(moved, "sub/f", "x");
    wait_events(&r, 0);
    ASSERT_EQ(r.n, 0);

    struct rec *all[] = {&r};
    teardown(all, 1);
    rmrf(parent);
    free(root);
    free(moved);
    free(parent);
}

/* --- sharing, closing, limits ----------------------------------------------------------------- */

TEST(watches_of_one_directory_share_descriptors)
{
    setup();
    char *root = tmpdir();
    mkdir_in(root, "sub");
    struct rec r1 = {0}, r2 = {0};
    start_ok(&r1, root, true);
    int fd = watch_engine_fd(engine);
    ASSERT_TRUE(fd >= 0);
    start_ok(&r2, root, true);
    /* One inotify instance for everything, one descriptor per directory. */
    ASSERT_EQ(watch_engine_fd(engine), fd);
    ASSERT_EQ(watch_engine_descriptors(engine), 2);
    ASSERT_EQ(watch_root_wd(r1.w), watch_root_wd(r2.w));

    write_in(root, "sub/f", "x");
    wait_events(&r1, 2);
    wait_events(&r2, 2);
    expect_exact(&r1, "CREATE sub/f", "WRITE sub/f", NULL);
    expect_exact(&r2, "CREATE sub/f", "WRITE sub/f", NULL);
    rec_done(&r1);
    rec_done(&r2);

    /* One watch ending does not blind the other. */
    watch_close(r1.w);
    r1.w = NULL;
    run_for(SETTLE_MS);
    ASSERT_EQ(watch_engine_descriptors(engine), 2);
    write_in(root, "sub/g", "x");
    wait_events(&r2, 2);
    expect_exact(&r2, "CREATE sub/g", "WRITE sub/g", NULL);
    ASSERT_EQ(r1.n, 0);

    /* The last one ending releases everything, the instance included. */
    watch_close(r2.w);
    r2.w = NULL;
    run_for(SETTLE_MS);
    ASSERT_EQ(watch_engine_descriptors(engine), 0);
    ASSERT_EQ(watch_engine_fd(engine), -1);

    struct rec *all[] = {&r1, &r2};
    teardown(all, 2);
    rmrf(root);
    free(root);
}

TEST(a_watch_may_close_itself_from_a_callback)
{
    setup();
    char *root = tmpdir();
    struct rec r = {0}, other = {0};
    start_ok(&r, root, true);
    start_ok(&other, root, true);
    r.close_on_event = true;
    mkdir_in(root, "d");
    write_in(root, "d/f", "x");
    wait_events(&other, 2);
    ASSERT_EQ(r.n, 1);
    ASSERT_NULL(r.w);
    ASSERT_EQ(count(&other, "CREATE d"), 1);
    ASSERT_EQ(count(&other, "CREATE d/f"), 1);

    struct rec *all[] = {&r, &other};
    teardown(all, 2);
    rmrf(root);
    free(root);
}

TEST(the_descriptor_limit_fails_cleanly)
{
    setup();
    char *root = tmpdir();
    mkdir_in(root, "a");
    mkdir_in(root, "b");
    watch_engine_set_max_descriptors(engine, 2);
    struct rec r = {0};
    start(&r, root, true);
    ASSERT_EQ(r.ready, -1);
    ASSERT_EQ(r.fail_step, WATCH_STEP_LIMIT);
    watch_close(r.w);
    r.w = NULL;
    run_for(SETTLE_MS);
    ASSERT_EQ(watch_engine_descriptors(engine), 0);

    /* A watch that fits works; a new directory past the limit is an error of that watch. */
    struct rec ok = {0};
    char *b = pjoin(root, "b");
    rmrf(b);
    start_ok(&ok, root, true);
    ASSERT_EQ(watch_dirs(ok.w), 2);
    mkdir_in(root, "c");
    wait_events(&ok, 1);
    ASSERT_EQ(count(&ok, "CREATE c"), 1);
    ASSERT_EQ(ok.errors, 1);
    ASSERT_EQ(ok.fail_step, WATCH_STEP_LIMIT);
    ASSERT_EQ(watch_dirs(ok.w), 2);

    struct rec *all[] = {&r, &ok};
    teardown(all, 2);
    rmrf(root);
    free(b);
    free(root);
}

/* --- overflow --------------------------------------------------------------------------------- */

TEST(an_overflow_reaches_every_watch_and_a_resync_recovers)
{
    setup();
    char *root = tmpdir();
    char *other_root = tmpdir();
    mkdir_in(root, "a");
    struct rec r = {0}, other = {0};
    start_ok(&r, root, true);
    start_ok(&other, other_root, false);

    /* Pretend the kernel dropped the root's watch and then overflowed (the IN_IGNORED of a
     * directory removed during an overflow is lost the same way). */
    int wd = watch_root_wd(r.w);
    watch_engine_test_inject(engine, wd, IN_IGNORED, 0, NULL);
    ASSERT_EQ(watch_dirs(r.w), 1);
    watch_engine_test_inject(engine, -1, IN_Q_OVERFLOW, 0, NULL);
    ASSERT_EQ(r.overflows, 1);
    ASSERT_EQ(other.overflows, 1);

    ASSERT_OK(watch_resync(r.w));
    ASSERT_ERR(watch_resync(r.w), EBUSY);
    uv_update_time(&loop);
    uint64_t end = uv_now(&loop) + WAIT_MS;
    while (r.resynced == 0 && uv_now(&loop) < end)
        (void) uv_run(&loop, UV_RUN_ONCE);
    ASSERT_EQ(r.resynced, 1);
    ASSERT_EQ(watch_dirs(r.w), 2);
    ASSERT_TRUE(watch_root_wd(r.w) >= 0);

    write_in(root, "after", "x");
    write_in(root, "a/after", "x");
    wait_events(&r, 4);
    expect_exact(&r, "CREATE after", "WRITE after", "CREATE a/after", "WRITE a/after", NULL);

    struct rec *all[] = {&r, &other};
    teardown(all, 2);
    rmrf(root);
    rmrf(other_root);
    free(root);
    free(other_root);
}

TEST(records_arriving_during_a_walk_wait_for_it)
{
    setup();
    char *root = tmpdir();
    struct rec r = {0};
    start_ok(&r, root, true);
    /* An injected directory creation starts a walk; a record that arrives meanwhile is
     * delivered after the walk's results, not before. */
    mkdir_in(root, "n");
    write_in(root, "n/inside", "x");
    int wd = watch_root_wd(r.w);
    watch_engine_test_inject(engine, wd, IN_CREATE | IN_ISDIR, 0, "n");
    watch_engine_test_inject(engine, wd, IN_ATTRIB, 0, "later");
    wait_events(&r, 3);
    /* Whatever inotify itself reported for n comes first; the injected records follow in
     * order, and the walk's synthetic CREATE precedes the record that waited for it. */
    ssize_t walk_create = index_of(&r, "CREATE n/inside"), later = index_of(&r, "CHMOD later");
    ASSERT_TRUE(later >= 0);
    ASSERT_TRUE(walk_create >= 0);
    ASSERT_TRUE(walk_create < later);

    struct rec *all[] = {&r};
    teardown(all, 1);
    rmrf(root);
    free(root);
}

/* --- validation and permissions -----------------------------------------------------------------
 */

TEST(validation_errors)
{
    setup();
    char *root = tmpdir();
    char *missing = pjoin(root, "missing"), *file = pjoin(root, "file");
    write_in(root, "file", "x");

    struct rec r1 = {0}, r2 = {0};
    start(&r1, missing, true);
    ASSERT_EQ(r1.ready, -1);
    ASSERT_EQ(r1.fail_step, WATCH_STEP_STAT);
    ASSERT_EQ(r1.fail_err, -ENOENT);
    start(&r2, file, false);
    ASSERT_EQ(r2.ready, -1);
    ASSERT_EQ(r2.fail_step, WATCH_STEP_NOT_DIR);

    struct rec *all[] = {&r1, &r2};
    teardown(all, 2);
    rmrf(root);
    free(missing);
    free(file);
    free(root);
}

static void need_user(void)
{
    struct user_info u;
    if (geteuid() != 0)
        TEST_SKIP("needs root");
    if (users_by_name(TEST_USER, &u) < 0)
        TEST_SKIP("needs the user '" TEST_USER "'");
    if (u.uid != TEST_UID || u.gid != TEST_GID) {
        user_info_done(&u);
        TEST_SKIP("'" TEST_USER "' is not uid/gid 1001");
    }
    user_info_done(&u);
}

static void start_as_user(struct rec *r, const char *root, bool recursive)
{
    const struct watch_params p = {
            .root = root,
            .recursive = recursive,
            .uid = TEST_UID,
            .gid = TEST_GID,
            .user = TEST_USER,
    };
    struct watch_error err = {0};
    ASSERT_OK(watch_new(engine, &p, &ops, r, &r->w, &err));
    ASSERT_TRUE(wait_ready(r));
}

TEST(a_user_cannot_watch_what_they_cannot_list)
{
    need_user();
    setup();
    char *root = tmpdir();
    mkdir_in(root, "private");
    mkdir_in(root, "open");
    mkdir_in(root, "private/inside");
    char *private = pjoin(root, "private");
    ASSERT_OK(chmod(private, 0700));

    /* The root is not listable: refused. */
    struct rec denied = {0};
    start_as_user(&denied, private, false);
    ASSERT_EQ(denied.ready, -1);
    ASSERT_EQ(denied.fail_step, WATCH_STEP_OPEN);
    ASSERT_EQ(denied.fail_err, -EACCES);

    /* Below a listable root, unreadable directories are skipped. */
    struct rec r = {0};
    start_as_user(&r, root, true);
    ASSERT_EQ(r.ready, 1);
    ASSERT_EQ(watch_dirs(r.w), 2); /* the root and open/ */
    write_in(root, "private/inside/f", "x");
    write_in(root, "open/f", "x");
    wait_events(&r, 2);
    expect_exact(&r, "CREATE open/f", "WRITE open/f", NULL);
    rec_done(&r);

    /* A private directory moved in is not walked for the user either. */
    char *moved = pjoin(root, "open/private");
    ASSERT_OK(rename(private, moved));
    wait_events(&r, 2);
    expect_exact(&r, "RENAME private", "CREATE open/private", NULL);
    ASSERT_EQ(watch_dirs(r.w), 2);

    struct rec *all[] = {&denied, &r};
    teardown(all, 2);
    rmrf(root);
    free(private);
    free(moved);
    free(root);
}

TEST_MAIN()

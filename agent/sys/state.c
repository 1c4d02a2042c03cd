/* SPDX-License-Identifier: Apache-2.0 */
#include "sys/state.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "base/alloc.h"
#include "base/cleanup.h"

static void make_boot_id(char out[40])
{
    uint8_t r[16];
    if (getrandom(r, sizeof(r), GRND_NONBLOCK) != (ssize_t) sizeof(r)) {
        struct timespec ts;
        (void) clock_gettime(CLOCK_MONOTONIC, &ts);
        for (size_t i = 0; i < sizeof(r); i++)
            r[i] = (uint8_t) ((ts.tv_nsec >> (i % 8)) ^ (getpid() >> (i % 4)) ^ (int) i);
    }
    r[6] = (uint8_t) ((r[6] & 0x0f) | 0x40); /* version 4 */
    r[8] = (uint8_t) ((r[8] & 0x3f) | 0x80); /* variant 1 */
    (void) snprintf(out, 40, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
                    r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12],
                    r[13], r[14], r[15]);
}

uint64_t state_now_ms(void)
{
    struct timespec ts;
    (void) clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000 + (uint64_t) ts.tv_nsec / 1000000;
}

void state_init(struct agent_state *st)
{
    struct timespec ts;
    memset(st, 0, sizeof(*st));
    kv_init(&st->env_internal);
    kv_init(&st->env_user);
    kv_set(&st->env_internal, "E2B_SANDBOX", "true");
    st->default_user = xstrdup("root");
    st->generation = 1;
    make_boot_id(st->boot_id);
    st->started_mono_ms = state_now_ms();
    st->last_activity_mono_ms = st->started_mono_ms;
    (void) clock_gettime(CLOCK_REALTIME, &ts);
    st->started_real_ns = (int64_t) ts.tv_sec * 1000000000 + ts.tv_nsec;
    st->pid1 = getpid() == 1;
    st->host_cid = 2; /* VMADDR_CID_HOST */
    st->run_dir = xstrdup("/run/e2b");
}

void state_done(struct agent_state *st)
{
    kv_clear(&st->env_internal);
    kv_clear(&st->env_user);
    free(st->default_user);
    free(st->default_workdir);
    free(st->run_dir);
    st->default_user = st->default_workdir = st->run_dir = NULL;
}

void state_touch(struct agent_state *st)
{
    st->last_activity_mono_ms = state_now_ms();
}

int state_write_run_files(const struct agent_state *st)
{
    char path[4096];
    if (mkdir(st->run_dir, 0755) < 0 && errno != EEXIST)
        return -errno;
    (void) snprintf(path, sizeof(path), "%s/.E2B_SANDBOX", st->run_dir);
    const char *v = kv_get(&st->env_internal, "E2B_SANDBOX");
    (void) unlink(path); /* the file is 0444: replace it rather than write through */
    _cleanup_close_ int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0444);
    if (fd < 0)
        return -errno;
    size_t len = strlen(v);
    if (write(fd, v, len) != (ssize_t) len)
        return -EIO;
    return 0;
}

bool state_clock_step_allowed(const struct agent_state *st)
{
    switch (st->clock_sync) {
    case CLOCK_SYNC_ON:
        return true;
    case CLOCK_SYNC_OFF:
        return false;
    case CLOCK_SYNC_AUTO:
        return st->pid1;
    }
    return false;
}

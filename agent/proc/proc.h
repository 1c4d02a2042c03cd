/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The process table: processes started through the API, their output logs, their subscribers
 * and their durable results.
 *
 * Life of a process: spawned (leader running, output read at full speed into its log) →
 * leader reaped → output drained (stdout and stderr at EOF, or the drain period elapsed, after
 * which guestd closes its read ends and marks the output cut) → ended: the result is final and
 * every subscriber is told, after all output. Ended processes stay in the table as results for
 * a configurable time (bounded in count); they no longer appear in proc_table_foreach_live().
 *
 * Subscribers pull: they hold a log cursor, are woken when there is new output or the end, and
 * read chunks with outlog_read() at their own pace, so one slow reader never slows the child or
 * the others. With the block policy the child instead waits while its owner subscriber is
 * behind. Objects own libuv handles: they are freed after their last close callback, once the
 * table and every subscriber let go (reference counts).
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "proc/outlog.h"
#include "proc/spawn.h"

typedef struct uv_loop_s uv_loop_t;

struct proc;
struct proc_table;

enum proc_cause {
    PROC_CAUSE_RUNNING = 0,
    PROC_CAUSE_EXITED,
    PROC_CAUSE_SIGNALED,
    PROC_CAUSE_SIGNALED_BY_CLIENT,
    PROC_CAUSE_DEADLINE,
    PROC_CAUSE_SHUTDOWN,
    PROC_CAUSE_SPAWN_FAILED,
    PROC_CAUSE_OOM_KILLED,
};

enum proc_policy {
    /* The default: the child waits while the stream that started it (the owner) is behind but
     * still reading; an owner that makes no progress for owner_stall_ms releases the child, and
     * from then on the log keeps the newest bytes (the owner is cut or sees a gap). Other
     * subscribers never slow the child. */
    PROC_POLICY_OWNER_PACED = 0,
    PROC_POLICY_DROP_OLDEST, /* the log keeps the newest bytes; late readers see a gap */
    PROC_POLICY_BLOCK,       /* the child waits while the owner is behind, however long */
};

struct proc_limits {
    size_t log_cap;          /* per-process output log */
    size_t global_cap;       /* all logs together */
    uint64_t drain_ms;       /* output drain after the leader exits */
    uint64_t owner_stall_ms; /* an owner this long without progress releases the child */
    uint64_t result_ttl_ms;  /* how long results of ended processes are kept */
    size_t max_results;      /* ended processes kept at most */
    size_t max_processes;    /* live processes at most */
};

/* Defaults; each is also a config key (see config.c). */
#define PROC_DEFAULT_LOG_CAP        (1024 * 1024)
#define PROC_DEFAULT_GLOBAL_CAP     (64 * 1024 * 1024)
#define PROC_DEFAULT_DRAIN_MS       2000
/* Long enough for any client that is reading at all; short enough that a client that stopped
 * does not hold a child for long. */
#define PROC_DEFAULT_OWNER_STALL_MS 10000
#define PROC_DEFAULT_RESULT_TTL_MS  (5 * 60 * 1000)
/* Results kept at most: each holds a 4 KiB tail, so 1024 results cost about 5 MiB. */
#define PROC_DEFAULT_MAX_RESULTS    1024
/* Live processes at most: each costs a few handles and fds in guestd. */
#define PROC_DEFAULT_MAX_PROCESSES  4096

struct proc_spec {
    struct spawn_plan plan; /* stdio fields are filled in by proc_start */
    bool pty;
    unsigned short cols, rows;
    bool stdin_pipe; /* false: stdin is /dev/null (ignored with a PTY) */
    const char *tag; /* may be NULL */
    const char *exec_id;
    const char *fingerprint; /* identifies the command for exec-id retries */
    enum proc_policy policy;
    /* The caller's description of the process (envd's original ProcessConfig), kept for
     * listings and freed with the process. */
    void *config;
    void (*config_free)(void *config);
};

struct proc_result {
    pid_t pid;
    enum proc_cause cause;
    bool exited;   /* normal exit */
    int exit_code; /* exit status, or -1 when signalled */
    int signal;    /* terminating signal, 0 if none */
    bool core_dumped;
    bool output_cut; /* output readers closed after the drain period */
    enum spawn_step spawn_step;
    int spawn_errno;
    int64_t started_ns; /* CLOCK_REALTIME */
    int64_t ended_ns;
};

struct proc_sub {
    struct proc *proc;
    uint64_t cursor; /* log offset of the next byte this subscriber wants */
    bool owner;      /* the stream that started the process (for the block policy) */
    void (*wake)(struct proc_sub *s);
    void *data;
    struct proc_sub *next;
};

int proc_table_new(uv_loop_t *loop, const struct proc_limits *limits, struct proc_table **ret);
/* Signals every live process group (SIGTERM, then SIGKILL after `grace_ms`); calls done once
 * none is live. */
void proc_table_shutdown(struct proc_table *t, uint64_t grace_ms, void (*done)(void *), void *data);
/* Closes the table's handles; memory is freed once the loop has run the close callbacks. */
void proc_table_free(struct proc_table *t);
size_t proc_table_live_count(const struct proc_table *t);

/*
 * Starts a process. On a spawn failure returns -errno with *ret_err set; when an exec id was
 * given the failure is also recorded as a result (cause spawn_failed) and *ret is set to it.
 * The returned process holds one reference for the caller (drop it with proc_unref). The
 * table takes ownership of spec->config in every case.
 */
int proc_start(struct proc_table *t, const struct proc_spec *spec, struct proc **ret,
               struct spawn_error *ret_err);

/* Lookups; each returns a new reference or NULL. Tags pick the newest live process. */
struct proc *proc_find_pid(struct proc_table *t, pid_t pid, bool include_ended);
struct proc *proc_find_tag(struct proc_table *t, const char *tag, bool include_ended);
struct proc *proc_find_exec_id(struct proc_table *t, const char *exec_id);
/* Calls fn for each live (not ended) process, oldest first. */
void proc_table_foreach_live(struct proc_table *t, void (*fn)(struct proc *p, void *data),
                             void *data);

void proc_ref(struct proc *p);
void proc_unref(struct proc *p);

pid_t proc_pid(const struct proc *p);
const char *proc_tag(const struct proc *p);
const char *proc_exec_id(const struct proc *p);
const char *proc_fingerprint(const struct proc *p);
void *proc_config(const struct proc *p);
bool proc_is_pty(const struct proc *p);
bool proc_has_ended(const struct proc *p);
const struct proc_result *proc_result(const struct proc *p);
const struct outlog *proc_log(const struct proc *p);

/* Writes input (copied) to stdin or the PTY. -EPIPE if stdin is closed or was not enabled. */
int proc_write_input(struct proc *p, const void *data, size_t len);
/* Closes stdin (EOF for the child). -ENOTTY for a PTY process. Closing twice is fine. */
int proc_close_stdin(struct proc *p);
/* Kills the process group (cause deadline) after `ms`, whoever is still listening. */
void proc_set_deadline(struct proc *p, uint64_t ms);
/* Resizes the PTY. -ENOTTY if the process has none. */
int proc_resize(struct proc *p, unsigned short cols, unsigned short rows);
/*
 * Sends a signal to the process (group: its process group, which is its session) and records
 * the cause for a terminating signal: by client, at the deadline or at shutdown.
 */
int proc_signal(struct proc *p, int sig, bool group, enum proc_cause cause);

/* Attaches a subscriber whose cursor starts at `from` (a log offset; outlog_end() for live). */
void proc_subscribe(struct proc *p, struct proc_sub *s, uint64_t from);
void proc_unsubscribe(struct proc_sub *s);
/* The subscriber consumed output up to its cursor: lets a blocked child go on. */
void proc_sub_advanced(struct proc_sub *s);

/* Go's ProcessState.String(): "exit status 3", "signal: killed", "… (core dumped)". */
void proc_status_string(const struct proc_result *r, char *out, size_t len);
/* Go's signal names as used in status strings ("killed", "terminated", …). */
const char *proc_signal_text(int sig);
const char *proc_cause_name(enum proc_cause c);

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Processes that already run: attach (guestd.v1.Process/Attach), ps (process.Process/List),
 * kill (guestd.v1.Process/Signal) and result (guestd.v1.Process/Result).
 */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/parse.h"
#include "cli.h"
#include "events.h"
#include "guestd/v1/process.pb-c.h"
#include "process/process.pb-c.h"

enum {
    OPT_JSON = CLI_OPT_FIRST_COMMAND_OPTION,
    OPT_FROM,
    OPT_EXEC_ID,
    OPT_SCOPE,
};

/* A process selector from PID|TAG or --exec-id, with a printable name for messages. */
struct target {
    Guestd__V1__Selector sel;
    char name[160];
};

static int target_parse(struct target *t, const char *arg, const char *exec_id)
{
    guestd__v1__selector__init(&t->sel);
    if (exec_id && arg)
        return cli_usage("give either PID|TAG or --exec-id, not both");
    if (exec_id) {
        if (!*exec_id)
            return cli_usage("--exec-id must not be empty");
        t->sel.selector_case = GUESTD__V1__SELECTOR__SELECTOR_EXEC_ID;
        t->sel.exec_id = (char *) exec_id;
        (void) snprintf(t->name, sizeof(t->name), "exec id '%s'", exec_id);
        return CLI_CONTINUE;
    }
    if (!arg)
        return cli_usage("missing the process (PID, TAG or --exec-id ID)");
    uint32_t pid;
    const char *tag;
    if (cli_parse_target(arg, &pid, &tag) < 0)
        return cli_usage("the process must not be empty");
    if (tag) {
        t->sel.selector_case = GUESTD__V1__SELECTOR__SELECTOR_TAG;
        t->sel.tag = (char *) tag;
        (void) snprintf(t->name, sizeof(t->name), "tag '%s'", tag);
    } else {
        t->sel.selector_case = GUESTD__V1__SELECTOR__SELECTOR_PID;
        t->sel.pid = pid;
        (void) snprintf(t->name, sizeof(t->name), "process %" PRIu32, pid);
    }
    return CLI_CONTINUE;
}

/* The one positional argument of attach, kill and result (NULL when absent). */
static int one_target_arg(int argc, char **argv, const char **ret)
{
    if (optind < argc - 1)
        return cli_usage("unexpected argument '%s'", argv[optind + 1]);
    *ret = optind < argc ? argv[optind] : NULL;
    return CLI_CONTINUE;
}

/* --- attach ---------------------------------------------------------------------------------- */

static int attach_run(int argc, char **argv)
{
    static const struct option options[] = {
            {"from", required_argument, NULL, OPT_FROM},
            {"exec-id", required_argument, NULL, OPT_EXEC_ID},
            CLI_COMMON_LONG_OPTIONS,
            {},
    };
    const char *exec_id = NULL, *arg = NULL;
    uint64_t from = 0;
    struct target t;
    int c, r;

    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", options, NULL)) != -1) {
        r = CLI_CONTINUE;
        switch (c) {
        case OPT_FROM:
            if (parse_u64(optarg, &from) < 0)
                r = cli_usage("--from needs a byte offset, not '%s'", optarg);
            break;
        case OPT_EXEC_ID:
            exec_id = optarg;
            break;
        default:
            r = cli_common_option(c, argv);
            break;
        }
        if (r != CLI_CONTINUE)
            return r;
    }
    r = one_target_arg(argc, argv, &arg);
    if (r != CLI_CONTINUE)
        return r;
    r = target_parse(&t, arg, exec_id);
    if (r != CLI_CONTINUE)
        return r;

    (void) signal(SIGPIPE, SIG_IGN);
    _cleanup_client_ struct client *cl = NULL;
    r = cli_client_new(CLIENT_TIMEOUT_INFINITE, &cl);
    if (r != 0)
        return r;
    Guestd__V1__AttachRequest req = GUESTD__V1__ATTACH_REQUEST__INIT;
    req.process = &t.sel;
    req.stdout_offset = req.stderr_offset = req.pty_offset = from;

    _cleanup_client_stream_ struct client_stream *st = NULL;
    struct client_call_options o = cli_call_options(0);
    struct client_error e = {0};
    char what[200];
    (void) snprintf(what, sizeof(what), "attaching to %s", t.name);
    r = client_stream_open_server(cl, "/guestd.v1.Process/Attach", &o, &req.base,
                                  &guestd__v1__process_event__descriptor, &e, &st);
    if (r < 0) {
        r = cli_fail(what, r, &e);
        client_error_done(&e);
        return r;
    }
    struct events_handler h = {0};
    Guestd__V1__ProcessEvent *end = NULL;
    r = events_pump(st, &h, &e, &end);
    if (r < 0) {
        r = events_fail(what, r, &h, &e);
        client_error_done(&e);
        return r;
    }
    r = events_exit_status(end->end, t.name);
    protobuf_c_message_free_unpacked(&end->base, NULL);
    return r;
}

/* --- ps -------------------------------------------------------------------------------------- */

/* Appends `s` to a command line, single-quoted when the shell would split or expand it. */
static void print_word(FILE *f, const char *s)
{
    bool plain = *s != '\0';
    for (const char *p = s; *p && plain; p++)
        plain = isalnum((unsigned char) *p) || strchr("%+,-./:=@_^", *p);
    if (plain) {
        (void) fputs(s, f);
        return;
    }
    (void) fputc('\'', f);
    for (const char *p = s; *p; p++) {
        if (*p == '\'')
            (void) fputs("'\\''", f);
        else
            (void) fputc(*p, f);
    }
    (void) fputc('\'', f);
}

static int cmp_pid(const void *a, const void *b)
{
    const Process__ProcessInfo *x = *(Process__ProcessInfo *const *) a;
    const Process__ProcessInfo *y = *(Process__ProcessInfo *const *) b;
    return x->pid < y->pid ? -1 : x->pid > y->pid;
}

static const char *info_tag(const Process__ProcessInfo *p)
{
    return p->_tag_case == PROCESS__PROCESS_INFO___TAG_TAG ? p->tag : "";
}

static int ps_run(int argc, char **argv)
{
    static const struct option options[] = {
            {"json", no_argument, NULL, OPT_JSON},
            CLI_COMMON_LONG_OPTIONS,
            {},
    };
    bool json = false;
    int c, r;

    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", options, NULL)) != -1) {
        if (c == OPT_JSON) {
            json = true;
            continue;
        }
        r = cli_common_option(c, argv);
        if (r != CLI_CONTINUE)
            return r;
    }
    if (optind < argc)
        return cli_usage("unexpected argument '%s'", argv[optind]);

    _cleanup_client_ struct client *cl = NULL;
    r = cli_client_new(0, &cl);
    if (r != 0)
        return r;
    Process__ListRequest req = PROCESS__LIST_REQUEST__INIT;
    ProtobufCMessage *m = NULL;
    r = cli_unary(cl, "listing processes", "/process.Process/List", &req.base,
                  &process__list_response__descriptor, &m);
    if (r != 0)
        return r;
    Process__ListResponse *resp = (Process__ListResponse *) m;
    if (resp->n_processes > 1)
        qsort(resp->processes, resp->n_processes, sizeof(*resp->processes), cmp_pid);
    if (json) {
        r = cli_print_json(m);
        protobuf_c_message_free_unpacked(m, NULL);
        return r;
    }
    int tag_width = 3;
    for (size_t i = 0; i < resp->n_processes; i++)
        tag_width = MAX(tag_width, (int) MIN(strlen(info_tag(resp->processes[i])), 40u));
    (void) printf("%-8s %-*s %s\n", "PID", tag_width, "TAG", "COMMAND");
    for (size_t i = 0; i < resp->n_processes; i++) {
        const Process__ProcessInfo *p = resp->processes[i];
        (void) printf("%-8" PRIu32 " %-*s ", p->pid, tag_width, info_tag(p));
        if (p->config) {
            print_word(stdout, p->config->cmd);
            for (size_t j = 0; j < p->config->n_args; j++) {
                (void) putchar(' ');
                print_word(stdout, p->config->args[j]);
            }
        }
        (void) putchar('\n');
    }
    protobuf_c_message_free_unpacked(m, NULL);
    return 0;
}

/* --- kill ------------------------------------------------------------------------------------ */

static int kill_run(int argc, char **argv)
{
    static const struct option options[] = {
            {"signal", required_argument, NULL, 's'},
            {"scope", required_argument, NULL, OPT_SCOPE},
            {"exec-id", required_argument, NULL, OPT_EXEC_ID},
            CLI_COMMON_LONG_OPTIONS,
            {},
    };
    Guestd__V1__SignalScope scope = GUESTD__V1__SIGNAL_SCOPE__SIGNAL_SCOPE_PROCESS;
    const char *exec_id = NULL, *arg = NULL;
    int sig = SIGTERM, c, r;
    struct target t;

    /* kill(1)'s shorthand: `guestctl kill -9 PID`, `guestctl kill -KILL PID`. */
    if (argc > 1 && argv[1][0] == '-' && argv[1][1] && argv[1][1] != '-' &&
        cli_parse_signal(argv[1] + 1, &sig) == 0) {
        argv[1] = argv[0];
        argv++;
        argc--;
    }
    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":s:h", options, NULL)) != -1) {
        r = CLI_CONTINUE;
        switch (c) {
        case 's':
            if (cli_parse_signal(optarg, &sig) < 0)
                r = cli_usage("unknown signal '%s'", optarg);
            break;
        case OPT_SCOPE:
            if (streq(optarg, "process"))
                scope = GUESTD__V1__SIGNAL_SCOPE__SIGNAL_SCOPE_PROCESS;
            else if (streq(optarg, "group"))
                scope = GUESTD__V1__SIGNAL_SCOPE__SIGNAL_SCOPE_GROUP;
            else
                r = cli_usage("--scope is 'process' or 'group', not '%s'", optarg);
            break;
        case OPT_EXEC_ID:
            exec_id = optarg;
            break;
        default:
            r = cli_common_option(c, argv);
            break;
        }
        if (r != CLI_CONTINUE)
            return r;
    }
    r = one_target_arg(argc, argv, &arg);
    if (r != CLI_CONTINUE)
        return r;
    r = target_parse(&t, arg, exec_id);
    if (r != CLI_CONTINUE)
        return r;

    _cleanup_client_ struct client *cl = NULL;
    r = cli_client_new(0, &cl);
    if (r != 0)
        return r;
    Guestd__V1__SignalRequest req = GUESTD__V1__SIGNAL_REQUEST__INIT;
    req.process = &t.sel;
    req.signal = (uint32_t) sig;
    req.scope = scope;
    char what[220];
    const char *name = cli_signal_name(sig);
    if (name)
        (void) snprintf(what, sizeof(what), "sending SIG%s to %s", name, t.name);
    else
        (void) snprintf(what, sizeof(what), "sending signal %d to %s", sig, t.name);
    ProtobufCMessage *m = NULL;
    r = cli_unary(cl, what, "/guestd.v1.Process/Signal", &req.base,
                  &guestd__v1__signal_response__descriptor, &m);
    if (r != 0)
        return r;
    protobuf_c_message_free_unpacked(m, NULL);
    return 0;
}

/* --- result ---------------------------------------------------------------------------------- */

/* "exited" for EXIT_CAUSE_EXITED, from the descriptor so that new causes print too. */
static void cause_name(Guestd__V1__ExitCause cause, char *buf, size_t len)
{
    const ProtobufCEnumValue *v =
            protobuf_c_enum_descriptor_get_value(&guestd__v1__exit_cause__descriptor, (int) cause);
    const char *name = v ? v->name : "EXIT_CAUSE_UNSPECIFIED";
    if (strncmp(name, "EXIT_CAUSE_", 11) == 0)
        name += 11;
    size_t i = 0;
    for (; name[i] && i + 1 < len; i++)
        buf[i] = (char) tolower((unsigned char) name[i]);
    buf[i] = '\0';
}

static void print_time(const char *label, const Google__Protobuf__Timestamp *t)
{
    char when[40];
    if (!t)
        return;
    cli_format_time(t->seconds, when, sizeof(when));
    (void) printf("%-12s %s.%03d UTC\n", label, when, t->nanos / 1000000);
}

static void print_result(const Guestd__V1__Result *r)
{
    char buf[256];
    (void) printf("%-12s %" PRIu32 "\n", "pid", r->pid);
    if (*r->exec_id)
        (void) printf("%-12s %s\n", "exec id", r->exec_id);
    cause_name(r->cause, buf, sizeof(buf));
    (void) printf("%-12s %s\n", "state", buf);
    events_describe(r, buf, sizeof(buf));
    (void) printf("%-12s %s\n", "status", buf);
    if (r->cause != GUESTD__V1__EXIT_CAUSE__EXIT_CAUSE_RUNNING &&
        r->cause != GUESTD__V1__EXIT_CAUSE__EXIT_CAUSE_SPAWN_FAILED) {
        if (r->signal) {
            const char *name = cli_signal_name((int) r->signal);
            (void) printf("%-12s %s%s (%" PRIu32 ")\n", "signal", name ? "SIG" : "",
                          name ? name : "", r->signal);
        } else {
            (void) printf("%-12s %d\n", "exit code", r->exit_code);
        }
    }
    print_time("started", r->started_at);
    print_time("ended", r->ended_at);
    if (r->started_at && r->ended_at) {
        int64_t ms = (r->ended_at->seconds - r->started_at->seconds) * 1000 +
                     (r->ended_at->nanos - r->started_at->nanos) / 1000000;
        (void) printf("%-12s %lld.%03lld s\n", "duration", (long long) (ms / 1000),
                      (long long) (ms % 1000));
    }
    (void) printf("%-12s %" PRIu64 " bytes\n", "stdout", r->stdout_bytes);
    (void) printf("%-12s %" PRIu64 " bytes\n", "stderr", r->stderr_bytes);
    if (r->pty_bytes)
        (void) printf("%-12s %" PRIu64 " bytes\n", "pty", r->pty_bytes);
    if (r->output_cut)
        (void) printf("%-12s %s\n", "output cut", "yes (a background process held the output)");
    if (r->peak_memory_bytes)
        (void) printf("%-12s %" PRIu64 " bytes\n", "peak memory", r->peak_memory_bytes);
    if (r->cpu_usec)
        (void) printf("%-12s %" PRIu64 " us\n", "cpu", r->cpu_usec);
    for (size_t i = 0; i < r->n_seccomp_denials; i++)
        (void) printf("%-12s %s x%" PRIu64 "\n", "denied", r->seccomp_denials[i]->key,
                      r->seccomp_denials[i]->value);
}

static int result_run(int argc, char **argv)
{
    static const struct option options[] = {
            {"json", no_argument, NULL, OPT_JSON},
            {"exec-id", required_argument, NULL, OPT_EXEC_ID},
            CLI_COMMON_LONG_OPTIONS,
            {},
    };
    const char *exec_id = NULL, *arg = NULL;
    bool json = false;
    struct target t;
    int c, r;

    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", options, NULL)) != -1) {
        r = CLI_CONTINUE;
        if (c == OPT_JSON)
            json = true;
        else if (c == OPT_EXEC_ID)
            exec_id = optarg;
        else
            r = cli_common_option(c, argv);
        if (r != CLI_CONTINUE)
            return r;
    }
    r = one_target_arg(argc, argv, &arg);
    if (r != CLI_CONTINUE)
        return r;
    r = target_parse(&t, arg, exec_id);
    if (r != CLI_CONTINUE)
        return r;

    _cleanup_client_ struct client *cl = NULL;
    r = cli_client_new(0, &cl);
    if (r != 0)
        return r;
    Guestd__V1__ResultRequest req = GUESTD__V1__RESULT_REQUEST__INIT;
    req.process = &t.sel;
    char what[200];
    (void) snprintf(what, sizeof(what), "getting the result of %s", t.name);
    ProtobufCMessage *m = NULL;
    r = cli_unary(cl, what, "/guestd.v1.Process/Result", &req.base,
                  &guestd__v1__result_response__descriptor, &m);
    if (r != 0)
        return r;
    const Guestd__V1__ResultResponse *resp = (const Guestd__V1__ResultResponse *) m;
    if (json)
        r = cli_print_json(m);
    else if (resp->result)
        print_result(resp->result);
    else
        r = cli_failf("%s: the answer carries no result", what);
    protobuf_c_message_free_unpacked(m, NULL);
    return r;
}

const struct cli_command attach_command = {
        .name = "attach",
        .run = attach_run,
        .summary = "replay and follow the output of a running or exited process",
        .help = "Usage: guestctl attach [--from OFFSET] PID|TAG\n"
                "       guestctl attach [--from OFFSET] --exec-id ID\n"
                "\n"
                "Replays the output guestd still holds for the process, from byte OFFSET of each\n"
                "stream (default 0), then follows it live (guestd.v1.Process/Attach). Output the\n"
                "bounded log has dropped is reported on stderr as 'guestctl: N bytes of stdout\n"
                "were lost'. Exits with the process's status once it ends; Ctrl-C detaches and\n"
                "leaves the process running. A PID|TAG made of digits only is taken as a pid.\n"
                "\n"
                "Options:\n"
                "      --from OFFSET     start at this byte offset of stdout, stderr and pty\n"
                "      --exec-id ID      select the process by the exec id it was started with\n",
};

const struct cli_command ps_command = {
        .name = "ps",
        .run = ps_run,
        .summary = "list running processes",
        .help = "Usage: guestctl ps [--json]\n"
                "\n"
                "Lists the processes guestd started that still run (process.Process/List): pid,\n"
                "tag and command line.\n"
                "\n"
                "Options:\n"
                "      --json            print the ListResponse as JSON\n",
};

const struct cli_command kill_command = {
        .name = "kill",
        .run = kill_run,
        .summary = "send a signal to a process or its process group",
        .help = "Usage: guestctl kill [-s SIG | -SIG] [--scope process|group] PID|TAG\n"
                "       guestctl kill [-s SIG] [--scope process|group] --exec-id ID\n"
                "\n"
                "Sends SIG (default TERM) to the process (guestd.v1.Process/Signal). SIG is a\n"
                "name (TERM, SIGTERM, term) or a number.\n"
                "\n"
                "Options:\n"
                "  -s, --signal SIG      the signal to send\n"
                "      --scope SCOPE     'process' (default) or 'group' (its process group)\n"
                "      --exec-id ID      select the process by its exec id\n",
};

const struct cli_command result_command = {
        .name = "result",
        .run = result_run,
        .summary = "show how a process ended (or that it still runs)",
        .help = "Usage: guestctl result [--json] PID|TAG\n"
                "       guestctl result [--json] --exec-id ID\n"
                "\n"
                "Shows the durable record of a process (guestd.v1.Process/Result): state, exit\n"
                "status or signal, spawn failure, times and output sizes. guestd keeps it for a\n"
                "while after the process ended.\n"
                "\n"
                "Options:\n"
                "      --json            print the ResultResponse as JSON\n"
                "      --exec-id ID      select the process by its exec id\n",
};

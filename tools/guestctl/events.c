/* SPDX-License-Identifier: Apache-2.0 */
#include "events.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

static const char *stream_name(Guestd__V1__Stream s)
{
    switch (s) {
    case GUESTD__V1__STREAM__STREAM_STDOUT:
        return "stdout";
    case GUESTD__V1__STREAM__STREAM_STDERR:
        return "stderr";
    case GUESTD__V1__STREAM__STREAM_PTY:
        return "terminal output";
    default:
        return "output";
    }
}

/* Output goes straight to the local fds (no stdio buffering), so it arrives byte-exact. */
static int write_data(const Guestd__V1__ProcessEvent__Data *d)
{
    int fd = d->stream == GUESTD__V1__STREAM__STREAM_STDERR ? STDERR_FILENO : STDOUT_FILENO;
    if (d->data.len == 0)
        return 0;
    return cli_write_all(fd, d->data.data, d->data.len);
}

int events_pump(struct client_stream *s, struct events_handler *h, struct client_error *err,
                Guestd__V1__ProcessEvent **ret_event)
{
    Guestd__V1__ProcessEvent *end = NULL;
    for (;;) {
        ProtobufCMessage *m = NULL;
        int r = client_stream_recv(s, err, &m);
        if (r < 0) {
            if (end)
                protobuf_c_message_free_unpacked(&end->base, NULL);
            return r;
        }
        if (r == 0)
            break;
        Guestd__V1__ProcessEvent *ev = (Guestd__V1__ProcessEvent *) m;
        switch (ev->event_case) {
        case GUESTD__V1__PROCESS_EVENT__EVENT_START:
            if (h->on_start)
                h->on_start(ev->start ? ev->start->pid : 0, h->userdata);
            break;
        case GUESTD__V1__PROCESS_EVENT__EVENT_DATA:
            r = ev->data ? write_data(ev->data) : 0;
            if (r < 0) {
                h->write_error = r;
                protobuf_c_message_free_unpacked(m, NULL);
                if (end)
                    protobuf_c_message_free_unpacked(&end->base, NULL);
                return -EPIPE;
            }
            break;
        case GUESTD__V1__PROCESS_EVENT__EVENT_GAP:
            if (ev->gap) {
                char line[128];
                int n = snprintf(line, sizeof(line),
                                 "guestctl: %" PRIu64 " bytes of %s were lost\n", ev->gap->lost,
                                 stream_name(ev->gap->stream));
                if (n > 0)
                    (void) cli_write_all(STDERR_FILENO, line, MIN((size_t) n, sizeof(line) - 1));
            }
            break;
        case GUESTD__V1__PROCESS_EVENT__EVENT_END:
            if (!end && ev->end) {
                end = ev;
                m = NULL;
            }
            break;
        default: /* keepalives, and events of newer servers */
            break;
        }
        if (m)
            protobuf_c_message_free_unpacked(m, NULL);
    }
    if (!end) {
        if (err) {
            client_error_done(err);
            err->code = strdup("internal");
            err->message = strdup("the stream ended without the process's result");
        }
        return -EPROTO;
    }
    *ret_event = end;
    return 0;
}

void events_describe(const Guestd__V1__Result *r, char *buf, size_t len)
{
    const char *sig = cli_signal_name((int) r->signal);
    switch (r->cause) {
    case GUESTD__V1__EXIT_CAUSE__EXIT_CAUSE_RUNNING:
        (void) snprintf(buf, len, "running");
        return;
    case GUESTD__V1__EXIT_CAUSE__EXIT_CAUSE_SPAWN_FAILED:
        (void) snprintf(buf, len, "spawn failed: %s: %s", r->spawn_step, strerror(r->spawn_errno));
        return;
    default:
        break;
    }
    if (r->signal) {
        const char *why = "";
        if (r->cause == GUESTD__V1__EXIT_CAUSE__EXIT_CAUSE_SIGNALED_BY_CLIENT)
            why = " (sent by a client)";
        else if (r->cause == GUESTD__V1__EXIT_CAUSE__EXIT_CAUSE_DEADLINE)
            why = " (deadline)";
        else if (r->cause == GUESTD__V1__EXIT_CAUSE__EXIT_CAUSE_SHUTDOWN)
            why = " (guestd shut down)";
        else if (r->cause == GUESTD__V1__EXIT_CAUSE__EXIT_CAUSE_OOM_KILLED)
            why = " (out of memory)";
        if (sig)
            (void) snprintf(buf, len, "killed by SIG%s%s", sig, why);
        else
            (void) snprintf(buf, len, "killed by signal %u%s", r->signal, why);
        return;
    }
    (void) snprintf(buf, len, "exit status %d", r->exit_code);
}

int events_exit_status(const Guestd__V1__Result *r, const char *cmd)
{
    switch (r->cause) {
    case GUESTD__V1__EXIT_CAUSE__EXIT_CAUSE_SPAWN_FAILED:
        cli_warnf("cannot run '%s': %s: %s", cmd, r->spawn_step, strerror(r->spawn_errno));
        /* As a shell: 126 when the file is there but may not be executed, 127 otherwise. */
        return r->spawn_errno == EACCES || r->spawn_errno == ENOEXEC ? CLI_EXIT_CANNOT_EXEC
                                                                     : CLI_EXIT_NOT_FOUND;
    case GUESTD__V1__EXIT_CAUSE__EXIT_CAUSE_RUNNING:
    case GUESTD__V1__EXIT_CAUSE__EXIT_CAUSE_UNSPECIFIED:
        return cli_failf("the stream ended while '%s' was still running", cmd);
    case GUESTD__V1__EXIT_CAUSE__EXIT_CAUSE_DEADLINE:
        cli_warnf("'%s' was killed at its deadline", cmd);
        return CLI_EXIT_TIMEOUT;
    case GUESTD__V1__EXIT_CAUSE__EXIT_CAUSE_OOM_KILLED:
        cli_warnf("'%s' was killed: out of memory", cmd);
        break;
    default:
        break;
    }
    if (r->signal)
        return CLI_EXIT_SIGNAL_BASE + (int) (r->signal & 0x7f);
    return r->exit_code & 0xff;
}

int events_fail(const char *what, int r, const struct events_handler *h,
                const struct client_error *e)
{
    if (h->write_error == -EPIPE)
        return CLI_EXIT_SIGNAL_BASE + SIGPIPE; /* quietly, as a pipeline member would end */
    if (h->write_error < 0)
        return cli_fail_errno("writing output", h->write_error);
    return cli_fail(what, r, e);
}

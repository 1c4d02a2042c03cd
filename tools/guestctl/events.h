/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Reading a guestd.v1.ProcessEvent stream (Start and Attach): output goes byte-exact to the
 * local stdout and stderr (PTY output to stdout), gap events are reported on stderr, and the
 * end event's Result becomes guestctl's exit status the way a shell would report it.
 */
#pragma once

#include <stdint.h>

#include "client/client.h"
#include "guestd/v1/process.pb-c.h"

struct events_handler {
    /* Called for the start event (pid 0 when the spawn failed). */
    void (*on_start)(uint32_t pid, void *userdata);
    void *userdata;
    /* Set by events_pump() when writing to the local stdout or stderr failed. */
    int write_error;
};

/*
 * Reads events until the end of the stream. On success returns 0 and the end event (free it
 * with protobuf_c_message_free_unpacked). Returns -EPROTO (message in `err`) when the stream
 * ended without a result, or the client's error (with `err` filled in). A closed local stream (`… |
 * head`) returns -EPIPE with h->write_error set to the write's error.
 */
int events_pump(struct client_stream *s, struct events_handler *h, struct client_error *err,
                Guestd__V1__ProcessEvent **ret_event);

/*
 * The exit status for a Result: the exit code, CLI_EXIT_SIGNAL_BASE + signal, or for a spawn
 * failure CLI_EXIT_NOT_FOUND / CLI_EXIT_CANNOT_EXEC after reporting the failed step and errno
 * for `cmd`. Reports results that are not an end (running) as failures.
 */
int events_exit_status(const Guestd__V1__Result *r, const char *cmd);

/* Fills `buf` with a one-line description of a Result ("exit status 3", "killed by KILL"). */
void events_describe(const Guestd__V1__Result *r, char *buf, size_t len);

/*
 * Reports a failed events_pump() and returns the exit status: 128 + SIGPIPE without a message
 * when the local reader went away, CLI_EXIT_FAILURE otherwise.
 */
int events_fail(const char *what, int r, const struct events_handler *h,
                const struct client_error *e);

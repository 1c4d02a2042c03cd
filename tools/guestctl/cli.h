/* SPDX-License-Identifier: Apache-2.0 */
/*
 * guestctl's shared plumbing: the options every command accepts (where to connect, token,
 * user, codec), creating clients from them, the command table entry, exit codes, and how
 * errors are reported. Every error goes to stderr as
 *
 *     guestctl: <command>: <what>: <Connect code>: <message>
 *
 * and makes the command exit non-zero: CLI_EXIT_FAILURE for anything the server or the
 * transport refused, CLI_EXIT_USAGE for bad command lines. The client library does all HTTP
 * and Connect work; nothing here speaks the wire itself.
 */
#pragma once

#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>
#include <stdint.h>

#include "base/macro.h"
#include "client/client.h"

/* Where guestctl connects when neither --to nor GUESTCTL_ADDR says otherwise. */
#define CLI_DEFAULT_ADDR "unix:/run/guestd/guestd.sock"

/* Largest JSON document guestctl prints for --json (a ListDir of a big tree fits easily). */
#define CLI_MAX_JSON_BYTES (256 * 1024 * 1024)

enum {
    CLI_EXIT_OK = 0,
    CLI_EXIT_FAILURE = 1,       /* the server, the transport or the local system said no */
    CLI_EXIT_USAGE = 2,         /* bad command line */
    CLI_EXIT_TIMEOUT = 124,     /* exec --timeout expired and the process was killed (timeout(1)) */
    CLI_EXIT_CANNOT_EXEC = 126, /* the command exists but could not be executed (EACCES) */
    CLI_EXIT_NOT_FOUND = 127,   /* any other spawn failure, as a shell reports it */
    CLI_EXIT_SIGNAL_BASE = 128, /* + signal number for a process that a signal ended */
};

/*
 * Returned by cli_common_option() when the option was handled and parsing goes on (every
 * other value is an exit status).
 */
#define CLI_CONTINUE (-1)

/* Option codes of the options that every command accepts (beyond any short option). */
enum {
    CLI_OPT_TO = 0x1000,
    CLI_OPT_TOKEN,
    CLI_OPT_USER,
    CLI_OPT_PROTO,
    CLI_OPT_FIRST_COMMAND_OPTION, /* commands number their long-only options from here */
};

/* To be appended to every command's `struct option` table (before the terminating zero). */
/* clang-format off */
#define CLI_COMMON_LONG_OPTIONS                          \
    {"to", required_argument, NULL, CLI_OPT_TO},         \
    {"token", required_argument, NULL, CLI_OPT_TOKEN},   \
    {"user", required_argument, NULL, CLI_OPT_USER},     \
    {"proto", no_argument, NULL, CLI_OPT_PROTO},         \
    {"help", no_argument, NULL, 'h'}
/* clang-format on */

struct cli_command {
    const char *name;
    /* argv[0] is the command name; returns the exit status. */
    int (*run)(int argc, char **argv);
    const char *summary;
    /* Full help: synopsis, description and the command's own options. */
    const char *help;
};

/* The options shared by all commands, filled from the environment and then argv. */
struct cli_options {
    const char *to;
    const char *token;
    const char *user;
    bool proto;
    /* The command that runs (for messages and --help). */
    const struct cli_command *command;
};

extern struct cli_options cli;

/* The commands, one group per file. */
extern const struct cli_command exec_command, shell_command;
extern const struct cli_command attach_command, ps_command, kill_command, result_command;
extern const struct cli_command ls_command, stat_command, mkdir_command, mv_command, rm_command;
extern const struct cli_command init_command, health_command, version_command;
extern const struct cli_command metrics_command, cp_command;

/* Prints `help` for a command (or the command list for NULL) to stdout. */
void cli_print_help(const struct cli_command *cmd);

/*
 * Handles option `c` as returned by getopt_long for the current command: the common options,
 * -h/--help, unknown options and missing arguments (opterr must be 0 and the short-option
 * string must start with "+:" or ":"). Returns CLI_CONTINUE or the exit status to return.
 */
int cli_common_option(int c, char **argv);

/* Reports a usage problem ("guestctl: ls: …", then a hint) and returns CLI_EXIT_USAGE. */
int cli_usage(const char *fmt, ...) _printf_(1, 2);

/*
 * Reports a failed call: "guestctl: <command>: <what>: <code>: <message>", with a hint for
 * unauthenticated. Uses `e` when it carries a code, strerror(-r) otherwise. Returns
 * CLI_EXIT_FAILURE.
 */
int cli_fail(const char *what, int r, const struct client_error *e);
/*
 * Reports a failed plain HTTP request (no Connect error to show) with the Connect code a
 * Connect client would use: "<what>: unavailable: <address>: <strerror>"; CLI_EXIT_FAILURE.
 */
int cli_fail_transport(const char *what, int r);
/* Reports a local failure "guestctl: <command>: <what>: <strerror>"; CLI_EXIT_FAILURE. */
int cli_fail_errno(const char *what, int r);
/* Reports "guestctl: <command>: <message>"; CLI_EXIT_FAILURE. */
int cli_failf(const char *fmt, ...) _printf_(1, 2);
/* Prints "guestctl: <command>: <message>" to stderr (warnings; no exit status). */
void cli_warnf(const char *fmt, ...) _printf_(1, 2);

/*
 * A client for the common options with the given I/O timeout (0: the library's default,
 * CLIENT_TIMEOUT_INFINITE for streams). Reports failures itself; returns 0 or CLI_EXIT_*.
 */
int cli_client_new(int io_timeout_ms, struct client **ret);

/* Call options for the chosen codec, with an optional deadline. */
struct client_call_options cli_call_options(uint32_t timeout_ms);

/*
 * A unary call with the common codec. On failure reports it with `what` and returns
 * CLI_EXIT_FAILURE; on success returns 0 and the decoded response.
 */
int cli_unary(struct client *c, const char *what, const char *procedure,
              const ProtobufCMessage *req, const ProtobufCMessageDescriptor *resp_desc,
              ProtobufCMessage **ret_resp);

/* Prints a message as one line of protobuf JSON on stdout. Returns 0 or CLI_EXIT_FAILURE. */
int cli_print_json(const ProtobufCMessage *msg);

/* Writes all of p[0..n) to fd, waiting if fd is non-blocking. Returns 0 or -errno. */
int cli_write_all(int fd, const void *p, size_t n);

/*
 * A process named on the command line: a decimal number is a pid, anything else a tag.
 * Returns -EINVAL for an empty string.
 */
int cli_parse_target(const char *s, uint32_t *ret_pid, const char **ret_tag);

/* A signal by name (TERM, SIGTERM, sigterm) or number. Returns -EINVAL if unknown. */
int cli_parse_signal(const char *s, int *ret);
/* The short name of a signal ("TERM"), or NULL for one without a name. */
const char *cli_signal_name(int sig);

/* Formats a protobuf Timestamp as "YYYY-MM-DD HH:MM:SS" UTC into buf (at least 32 bytes). */
void cli_format_time(int64_t seconds, char *buf, size_t len);

/* SPDX-License-Identifier: Apache-2.0 */
#include "cli.h"

#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "base/buf.h"
#include "base/parse.h"
#include "base/timefmt.h"
#include "rpc/pbjson.h"

struct cli_options cli;

static const char *command_name(void)
{
    return cli.command ? cli.command->name : NULL;
}

static void vreport(const char *fmt, va_list ap)
{
    const char *name = command_name();
    /* One write per message, so that the threads of a session never interleave lines. */
    char line[4096];
    int n = name ? snprintf(line, sizeof(line), "guestctl: %s: ", name)
                 : snprintf(line, sizeof(line), "guestctl: ");
    if (n < 0 || (size_t) n >= sizeof(line))
        n = 0;
    int m = vsnprintf(line + n, sizeof(line) - (size_t) n, fmt, ap);
    size_t len = m < 0 ? (size_t) n : MIN((size_t) n + (size_t) m, sizeof(line) - 2);
    line[len++] = '\n';
    (void) cli_write_all(STDERR_FILENO, line, len);
}

void cli_warnf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vreport(fmt, ap);
    va_end(ap);
}

int cli_failf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vreport(fmt, ap);
    va_end(ap);
    return CLI_EXIT_FAILURE;
}

int cli_usage(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vreport(fmt, ap);
    va_end(ap);
    if (cli.command)
        (void) fprintf(stderr, "Try 'guestctl help %s'.\n", cli.command->name);
    else
        (void) fprintf(stderr, "Try 'guestctl help'.\n");
    return CLI_EXIT_USAGE;
}

int cli_fail(const char *what, int r, const struct client_error *e)
{
    if (e && e->code) {
        /* A missing or wrong token; not an unknown user, which is unauthenticated too. */
        bool auth = streq(e->code, "unauthenticated") && e->message && strstr(e->message, "token");
        cli_warnf("%s: %s: %s%s", what, e->code, e->message ? e->message : "",
                  auth ? " (pass --token or set GUESTCTL_TOKEN)" : "");
    } else {
        cli_warnf("%s: %s", what, strerror(r < 0 ? -r : EIO));
    }
    return CLI_EXIT_FAILURE;
}

int cli_fail_transport(const char *what, int r)
{
    const char *code = r == -ETIMEDOUT ? "deadline_exceeded"
                       : r == -E2BIG   ? "resource_exhausted"
                       : r == -EPROTO  ? "internal"
                       : r == -EINVAL  ? "invalid_argument"
                                       : "unavailable";
    cli_warnf("%s: %s: %s: %s", what, code, cli.to, strerror(r < 0 ? -r : EIO));
    return CLI_EXIT_FAILURE;
}

int cli_fail_errno(const char *what, int r)
{
    cli_warnf("%s: %s", what, strerror(r < 0 ? -r : EIO));
    return CLI_EXIT_FAILURE;
}

int cli_common_option(int c, char **argv)
{
    switch (c) {
    case CLI_OPT_TO:
        cli.to = optarg;
        return CLI_CONTINUE;
    case CLI_OPT_TOKEN:
        cli.token = optarg;
        return CLI_CONTINUE;
    case CLI_OPT_USER:
        if (!*optarg)
            return cli_usage("--user needs a user name");
        cli.user = optarg;
        return CLI_CONTINUE;
    case CLI_OPT_PROTO:
        cli.proto = true;
        return CLI_CONTINUE;
    case 'h':
        cli_print_help(cli.command);
        return CLI_EXIT_OK;
    case ':':
        return cli_usage("option '%s' needs an argument", argv[optind - 1]);
    case '?':
        if (optopt && optopt < CLI_OPT_TO)
            return cli_usage("unknown option '-%c'", optopt);
        return cli_usage("unknown option '%s'", argv[optind - 1]);
    default:
        return cli_usage("unexpected option");
    }
}

int cli_client_new(int io_timeout_ms, struct client **ret)
{
    struct client_options o = {
            .io_timeout_ms = io_timeout_ms,
            .token = cli.token && *cli.token ? cli.token : NULL,
            .user = cli.user,
    };
    struct client_addr addr;
    if (client_addr_parse(cli.to, &addr) < 0)
        return cli_usage("invalid address '%s' (forms: unix:PATH, tcp:HOST:PORT, vsock:CID:PORT, "
                         "fc:UDS_PATH:PORT)",
                         cli.to);
    int r = client_new(cli.to, &o, ret);
    if (r == -EINVAL)
        return cli_usage("invalid token or user (control characters, or ':' in a user name)");
    if (r < 0)
        return cli_fail_errno("creating the client", r);
    return 0;
}

struct client_call_options cli_call_options(uint32_t timeout_ms)
{
    return (struct client_call_options){
            .codec = cli.proto ? CLIENT_CODEC_PROTO : CLIENT_CODEC_JSON,
            .timeout_ms = timeout_ms,
    };
}

int cli_unary(struct client *c, const char *what, const char *procedure,
              const ProtobufCMessage *req, const ProtobufCMessageDescriptor *resp_desc,
              ProtobufCMessage **ret_resp)
{
    struct client_call_options o = cli_call_options(0);
    struct client_error e = {0};
    int r = client_unary(c, procedure, &o, req, resp_desc, &e, ret_resp);
    if (r < 0) {
        (void) cli_fail(what, r, &e);
        client_error_done(&e);
        return CLI_EXIT_FAILURE;
    }
    return 0;
}

int cli_print_json(const ProtobufCMessage *msg)
{
    struct buf b;
    buf_init(&b, CLI_MAX_JSON_BYTES);
    int r = pbjson_encode(msg, &b);
    if (r >= 0)
        r = buf_append_char(&b, '\n');
    if (r >= 0)
        r = cli_write_all(STDOUT_FILENO, b.data, b.len);
    buf_free(&b);
    if (r < 0)
        return cli_fail_errno("writing JSON", r);
    return 0;
}

int cli_write_all(int fd, const void *p, size_t n)
{
    const char *s = p;
    while (n > 0) {
        ssize_t k = write(fd, s, n);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                /* Someone made our stdout non-blocking (a shared terminal): wait, then retry. */
                struct pollfd pfd = {.fd = fd, .events = POLLOUT};
                (void) poll(&pfd, 1, -1);
                continue;
            }
            return -errno;
        }
        s += k;
        n -= (size_t) k;
    }
    return 0;
}

int cli_parse_target(const char *s, uint32_t *ret_pid, const char **ret_tag)
{
    uint32_t pid;
    if (!*s)
        return -EINVAL;
    if (parse_u32(s, &pid) == 0) {
        *ret_pid = pid;
        *ret_tag = NULL;
    } else {
        *ret_pid = 0;
        *ret_tag = s;
    }
    return 0;
}

const char *cli_signal_name(int sig)
{
    if (sig <= 0 || sig >= NSIG)
        return NULL;
    return sigabbrev_np(sig);
}

int cli_parse_signal(const char *s, int *ret)
{
    uint32_t n;
    if (parse_u32(s, &n) == 0) {
        if (n == 0 || n >= (uint32_t) NSIG)
            return -EINVAL;
        *ret = (int) n;
        return 0;
    }
    if (strncasecmp(s, "SIG", 3) == 0)
        s += 3;
    for (int sig = 1; sig < NSIG; sig++) {
        const char *name = cli_signal_name(sig);
        if (name && strcasecmp(name, s) == 0) {
            *ret = sig;
            return 0;
        }
    }
    return -EINVAL;
}

void cli_format_time(int64_t seconds, char *buf, size_t len)
{
    int64_t days = seconds / TIMEFMT_SECONDS_PER_DAY;
    int64_t rem = seconds % TIMEFMT_SECONDS_PER_DAY;
    if (rem < 0) {
        rem += TIMEFMT_SECONDS_PER_DAY;
        days--;
    }
    int64_t y;
    unsigned m, d;
    civil_from_days(days, &y, &m, &d);
    (void) snprintf(buf, len, "%04lld-%02u-%02u %02u:%02u:%02u", (long long) y, m, d,
                    (unsigned) (rem / 3600), (unsigned) (rem % 3600 / 60), (unsigned) (rem % 60));
}

/* SPDX-License-Identifier: Apache-2.0 */
/* guestctl: the operator's CLI for guestd. Parses the common options and runs one command. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "build-config.h"
#include "cli.h"

static const struct cli_command *const commands[] = {
        &exec_command,  &shell_command,  &attach_command,  &ps_command,
        &kill_command,  &result_command, &ls_command,      &stat_command,
        &mkdir_command, &mv_command,     &rm_command,      &cp_command,
        &init_command,  &health_command, &metrics_command, &version_command,
};

static const char common_help[] =
        "Options for every command (before or after its name):\n"
        "      --to ADDR         where guestd listens (env GUESTCTL_ADDR; default\n"
        "                        " CLI_DEFAULT_ADDR "):\n"
        "                          unix:PATH        a Unix socket (unix:@NAME: abstract)\n"
        "                          tcp:HOST:PORT    HOST numeric, [IPv6] or localhost\n"
        "                          vsock:CID:PORT   AF_VSOCK\n"
        "                          fc:UDS_PATH:PORT Firecracker/Cloud Hypervisor hybrid vsock\n"
        "      --token TOKEN     access token (env GUESTCTL_TOKEN, which keeps it out of ps)\n"
        "      --user USER       act as this guest user\n"
        "      --proto           use the binary protobuf codec instead of JSON\n"
        "  -h, --help            show help\n";

static const struct cli_command *find_command(const char *name)
{
    for (size_t i = 0; i < ARRAY_SIZE(commands); i++)
        if (streq(commands[i]->name, name))
            return commands[i];
    return NULL;
}

void cli_print_help(const struct cli_command *cmd)
{
    if (cmd) {
        (void) printf("%s\n%s", cmd->help, common_help);
        return;
    }
    (void) printf("Usage: guestctl [OPTIONS] COMMAND [ARGS...]\n"
                  "\n"
                  "Operates a guestd agent inside a VM, over a Unix socket, TCP or vsock.\n"
                  "\n"
                  "Commands:\n");
    for (size_t i = 0; i < ARRAY_SIZE(commands); i++)
        (void) printf("  %-8s %s\n", commands[i]->name, commands[i]->summary);
    (void) printf("  %-8s %s\n", "help", "show help for guestctl or a command");
    (void) printf(
            "\n%s\n"
            "Errors are reported as 'guestctl: COMMAND: WHAT: CODE: MESSAGE'. Exit status: 0,\n"
            "1 when guestd or the connection refused, 2 for usage errors; exec, shell and\n"
            "attach exit with the remote process's status.\n"
            "Run 'guestctl help COMMAND' for a command's options.\n",
            common_help);
}

static int help_run(int argc, char **argv)
{
    if (argc > 2)
        return cli_usage("'help' takes at most one command");
    if (argc == 2) {
        const struct cli_command *cmd = find_command(argv[1]);
        if (!cmd)
            return cli_usage("unknown command '%s'", argv[1]);
        cli_print_help(cmd);
        return 0;
    }
    cli_print_help(NULL);
    return 0;
}

static const struct cli_command help_command = {
        .name = "help",
        .run = help_run,
        .summary = "show help",
        .help = "Usage: guestctl help [COMMAND]\n",
};

/* Ends like every exit should: output flushed, and a failed write is no success. */
static int finish(int status)
{
    if (fflush(stdout) != 0 || ferror(stdout)) {
        int r = errno ? -errno : -EIO;
        if (status == 0)
            status = cli_fail_errno("writing output", r);
    }
    return status;
}

int main(int argc, char **argv)
{
    static const struct option options[] = {
            CLI_COMMON_LONG_OPTIONS,
            {"version", no_argument, NULL, 'V'},
            {},
    };
    int c;

    cli.to = getenv("GUESTCTL_ADDR");
    if (!cli.to || !*cli.to)
        cli.to = CLI_DEFAULT_ADDR;
    cli.token = getenv("GUESTCTL_TOKEN");
    opterr = 0;
    /* '+': the common options before the command; the command parses its own argv. */
    while ((c = getopt_long(argc, argv, "+:hV", options, NULL)) != -1) {
        if (c == 'V') {
            (void) printf("guestctl %s\n", GUESTD_VERSION);
            return finish(0);
        }
        if (c == 'h') {
            cli_print_help(NULL);
            return finish(0);
        }
        int r = cli_common_option(c, argv);
        if (r != CLI_CONTINUE)
            return finish(r);
    }
    if (optind >= argc)
        return cli_usage("missing COMMAND");

    const struct cli_command *cmd =
            streq(argv[optind], "help") ? &help_command : find_command(argv[optind]);
    if (!cmd)
        return cli_usage("unknown command '%s'", argv[optind]);
    cli.command = cmd;
    return finish(cmd->run(argc - optind, argv + optind));
}

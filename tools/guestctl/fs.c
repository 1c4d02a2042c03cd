/* SPDX-License-Identifier: Apache-2.0 */
/* The guest's filesystem through filesystem.Filesystem: ls, stat, mkdir, mv and rm. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/parse.h"
#include "cli.h"
#include "filesystem/filesystem.pb-c.h"

/* Deepest --depth accepted; guestd bounds the entries it returns in any case. */
#define FS_MAX_DEPTH  1024
/* Room for a description of an operation on a path ("listing '…'"); longer paths are cut. */
#define FS_WHAT_BYTES (4096 + 64)

enum {
    OPT_JSON = CLI_OPT_FIRST_COMMAND_OPTION,
    OPT_DEPTH,
};

static const char *type_name(Filesystem__FileType t)
{
    switch (t) {
    case FILESYSTEM__FILE_TYPE__FILE_TYPE_FILE:
        return "file";
    case FILESYSTEM__FILE_TYPE__FILE_TYPE_DIRECTORY:
        return "directory";
    case FILESYSTEM__FILE_TYPE__FILE_TYPE_SYMLINK:
        return "symlink";
    default:
        return "unknown";
    }
}

static bool has_symlink_target(const Filesystem__EntryInfo *e)
{
    return e->_symlink_target_case == FILESYSTEM__ENTRY_INFO___SYMLINK_TARGET_SYMLINK_TARGET;
}

/*
 * Parses options that take no argument: each letter of `letters` sets the flag at its index,
 * --json sets *json (when not NULL); the rest are the common options.
 */
static int parse_flags(int argc, char **argv, const char *shortopts, const struct option *options,
                       const char *letters, bool *flags, bool *json)
{
    int c;
    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, shortopts, options, NULL)) != -1) {
        const char *at = c > 0 && c < 256 && c != 'h' ? strchr(letters, c) : NULL;
        if (at) {
            flags[at - letters] = true;
            continue;
        }
        if (c == OPT_JSON && json) {
            *json = true;
            continue;
        }
        int r = cli_common_option(c, argv);
        if (r != CLI_CONTINUE)
            return r;
    }
    return CLI_CONTINUE;
}

/* --- ls -------------------------------------------------------------------------------------- */

static int cmp_path(const void *a, const void *b)
{
    const Filesystem__EntryInfo *x = *(Filesystem__EntryInfo *const *) a;
    const Filesystem__EntryInfo *y = *(Filesystem__EntryInfo *const *) b;
    return strcmp(x->path, y->path);
}

static void print_long(const Filesystem__EntryInfo *e, const char *name, int owner_w, int group_w,
                       int size_w)
{
    char when[40] = "-";
    if (e->modified_time)
        cli_format_time(e->modified_time->seconds, when, sizeof(when));
    (void) printf("%-10s %-*s %-*s %*" PRId64 " %s %s", *e->permissions ? e->permissions : "?",
                  owner_w, e->owner, group_w, e->group, size_w, e->size, when, name);
    if (has_symlink_target(e))
        (void) printf(" -> %s", e->symlink_target);
    (void) putchar('\n');
}

static int ls_run(int argc, char **argv)
{
    static const struct option options[] = {
            {"long", no_argument, NULL, 'l'},
            {"depth", required_argument, NULL, OPT_DEPTH},
            {"json", no_argument, NULL, OPT_JSON},
            CLI_COMMON_LONG_OPTIONS,
            {},
    };
    bool json = false, long_format = false;
    uint32_t depth = 1;
    int c, r;

    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":lh", options, NULL)) != -1) {
        r = CLI_CONTINUE;
        switch (c) {
        case 'l':
            long_format = true;
            break;
        case OPT_JSON:
            json = true;
            break;
        case OPT_DEPTH:
            if (parse_u32(optarg, &depth) < 0 || depth == 0 || depth > FS_MAX_DEPTH)
                r = cli_usage("--depth needs a number between 1 and %d, not '%s'", FS_MAX_DEPTH,
                              optarg);
            break;
        default:
            r = cli_common_option(c, argv);
            break;
        }
        if (r != CLI_CONTINUE)
            return r;
    }
    if (optind < argc - 1)
        return cli_usage("unexpected argument '%s'", argv[optind + 1]);
    /* No PATH: the user's home (or /init's default workdir), as guestd resolves "". */
    const char *path = optind < argc ? argv[optind] : "";

    _cleanup_client_ struct client *cl = NULL;
    r = cli_client_new(0, &cl);
    if (r != 0)
        return r;
    Filesystem__ListDirRequest req = FILESYSTEM__LIST_DIR_REQUEST__INIT;
    req.path = (char *) path;
    req.depth = depth;
    char what[FS_WHAT_BYTES];
    (void) snprintf(what, sizeof(what), "listing '%s'", path);
    ProtobufCMessage *m = NULL;
    r = cli_unary(cl, what, "/filesystem.Filesystem/ListDir", &req.base,
                  &filesystem__list_dir_response__descriptor, &m);
    if (r != 0)
        return r;
    Filesystem__ListDirResponse *resp = (Filesystem__ListDirResponse *) m;
    if (resp->n_entries > 1)
        qsort(resp->entries, resp->n_entries, sizeof(*resp->entries), cmp_path);
    if (json) {
        r = cli_print_json(m);
        protobuf_c_message_free_unpacked(m, NULL);
        return r;
    }
    int owner_w = 1, group_w = 1, size_w = 1;
    for (size_t i = 0; i < resp->n_entries; i++) {
        const Filesystem__EntryInfo *e = resp->entries[i];
        char size[32];
        owner_w = MAX(owner_w, (int) MIN(strlen(e->owner), 32u));
        group_w = MAX(group_w, (int) MIN(strlen(e->group), 32u));
        size_w = MAX(size_w, snprintf(size, sizeof(size), "%" PRId64, e->size));
    }
    for (size_t i = 0; i < resp->n_entries; i++) {
        const Filesystem__EntryInfo *e = resp->entries[i];
        /* Deeper listings name entries by path: names alone would be ambiguous. */
        const char *name = depth > 1 ? e->path : e->name;
        if (long_format)
            print_long(e, name, owner_w, group_w, size_w);
        else
            (void) printf("%s\n", name);
    }
    protobuf_c_message_free_unpacked(m, NULL);
    return 0;
}

/* --- stat ------------------------------------------------------------------------------------ */

static int stat_path(struct client *cl, const char *path, Filesystem__StatResponse **ret)
{
    Filesystem__StatRequest req = FILESYSTEM__STAT_REQUEST__INIT;
    req.path = (char *) path;
    char what[FS_WHAT_BYTES];
    (void) snprintf(what, sizeof(what), "stat '%s'", path);
    return cli_unary(cl, what, "/filesystem.Filesystem/Stat", &req.base,
                     &filesystem__stat_response__descriptor, (ProtobufCMessage **) ret);
}

static void print_entry(const Filesystem__EntryInfo *e)
{
    char when[40];
    (void) printf("%-12s %s\n", "path", e->path);
    (void) printf("%-12s %s\n", "name", e->name);
    (void) printf("%-12s %s\n", "type", has_symlink_target(e) ? "symlink" : type_name(e->type));
    if (has_symlink_target(e))
        (void) printf("%-12s %s (%s)\n", "target", e->symlink_target, type_name(e->type));
    (void) printf("%-12s %" PRId64 "\n", "size", e->size);
    (void) printf("%-12s %04o (%s)\n", "mode", e->mode & 07777, e->permissions);
    (void) printf("%-12s %s\n", "owner", e->owner);
    (void) printf("%-12s %s\n", "group", e->group);
    if (e->modified_time) {
        cli_format_time(e->modified_time->seconds, when, sizeof(when));
        (void) printf("%-12s %s.%09d UTC\n", "modified", when, e->modified_time->nanos);
    }
    for (size_t i = 0; i < e->n_metadata; i++)
        (void) printf("%-12s %s=%s\n", "metadata", e->metadata[i]->key, e->metadata[i]->value);
}

static int stat_run(int argc, char **argv)
{
    static const struct option options[] = {
            {"json", no_argument, NULL, OPT_JSON},
            CLI_COMMON_LONG_OPTIONS,
            {},
    };
    bool json = false;
    int r = parse_flags(argc, argv, ":h", options, "", NULL, &json);
    if (r != CLI_CONTINUE)
        return r;
    if (optind != argc - 1)
        return optind >= argc ? cli_usage("missing PATH")
                              : cli_usage("unexpected argument '%s'", argv[optind + 1]);

    _cleanup_client_ struct client *cl = NULL;
    r = cli_client_new(0, &cl);
    if (r != 0)
        return r;
    Filesystem__StatResponse *resp = NULL;
    r = stat_path(cl, argv[optind], &resp);
    if (r != 0)
        return r;
    if (json)
        r = cli_print_json(&resp->base);
    else if (resp->entry)
        print_entry(resp->entry);
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return r;
}

/* --- mkdir, mv, rm --------------------------------------------------------------------------- */

static int mkdir_run(int argc, char **argv)
{
    static const struct option options[] = {
            {"parents", no_argument, NULL, 'p'},
            CLI_COMMON_LONG_OPTIONS,
            {},
    };
    bool parents[1] = {false};
    int r = parse_flags(argc, argv, ":ph", options, "p", parents, NULL);
    if (r != CLI_CONTINUE)
        return r;
    if (optind >= argc)
        return cli_usage("missing PATH");

    _cleanup_client_ struct client *cl = NULL;
    r = cli_client_new(0, &cl);
    if (r != 0)
        return r;
    int status = 0;
    for (int i = optind; i < argc; i++) {
        Filesystem__MakeDirRequest req = FILESYSTEM__MAKE_DIR_REQUEST__INIT;
        req.path = argv[i];
        struct client_call_options o = cli_call_options(0);
        struct client_error e = {0};
        ProtobufCMessage *m = NULL;
        r = client_unary(cl, "/filesystem.Filesystem/MakeDir", &o, &req.base,
                         &filesystem__make_dir_response__descriptor, &e, &m);
        if (r == 0) {
            protobuf_c_message_free_unpacked(m, NULL);
            continue;
        }
        /* guestd creates missing parents anyway; -p only makes an existing directory fine. */
        if (!(parents[0] && e.code && streq(e.code, "already_exists"))) {
            char what[FS_WHAT_BYTES];
            (void) snprintf(what, sizeof(what), "creating directory '%s'", argv[i]);
            status = cli_fail(what, r, &e);
        }
        client_error_done(&e);
    }
    return status;
}

static int mv_run(int argc, char **argv)
{
    static const struct option options[] = {
            CLI_COMMON_LONG_OPTIONS,
            {},
    };
    int r = parse_flags(argc, argv, ":h", options, "", NULL, NULL);
    if (r != CLI_CONTINUE)
        return r;
    if (argc - optind != 2)
        return cli_usage(argc - optind < 2 ? "missing SRC or DST" : "too many arguments");

    _cleanup_client_ struct client *cl = NULL;
    r = cli_client_new(0, &cl);
    if (r != 0)
        return r;
    Filesystem__MoveRequest req = FILESYSTEM__MOVE_REQUEST__INIT;
    req.source = argv[optind];
    req.destination = argv[optind + 1];
    char what[2 * FS_WHAT_BYTES];
    (void) snprintf(what, sizeof(what), "moving '%s' to '%s'", req.source, req.destination);
    ProtobufCMessage *m = NULL;
    r = cli_unary(cl, what, "/filesystem.Filesystem/Move", &req.base,
                  &filesystem__move_response__descriptor, &m);
    if (r != 0)
        return r;
    protobuf_c_message_free_unpacked(m, NULL);
    return 0;
}

static int rm_one(struct client *cl, const char *path, bool recursive, bool force)
{
    char what[FS_WHAT_BYTES];
    struct client_call_options o = cli_call_options(0);
    struct client_error e = {0};
    ProtobufCMessage *m = NULL;
    int r;

    /* guestd's Remove deletes trees; a plain `rm` must not, so directories are checked here. */
    if (!recursive) {
        Filesystem__StatRequest sreq = FILESYSTEM__STAT_REQUEST__INIT;
        sreq.path = (char *) path;
        r = client_unary(cl, "/filesystem.Filesystem/Stat", &o, &sreq.base,
                         &filesystem__stat_response__descriptor, &e, &m);
        if (r < 0) {
            if (force && e.code && streq(e.code, "not_found")) {
                client_error_done(&e);
                return 0;
            }
            (void) snprintf(what, sizeof(what), "stat '%s'", path);
            r = cli_fail(what, r, &e);
            client_error_done(&e);
            return r;
        }
        const Filesystem__EntryInfo *entry = ((Filesystem__StatResponse *) m)->entry;
        bool dir = entry && entry->type == FILESYSTEM__FILE_TYPE__FILE_TYPE_DIRECTORY &&
                   !has_symlink_target(entry);
        protobuf_c_message_free_unpacked(m, NULL);
        m = NULL;
        if (dir)
            return cli_failf("cannot remove '%s': is a directory (use -r)", path);
    }
    Filesystem__RemoveRequest req = FILESYSTEM__REMOVE_REQUEST__INIT;
    req.path = (char *) path;
    r = client_unary(cl, "/filesystem.Filesystem/Remove", &o, &req.base,
                     &filesystem__remove_response__descriptor, &e, &m);
    if (r < 0) {
        if (force && e.code && streq(e.code, "not_found")) {
            client_error_done(&e);
            return 0;
        }
        (void) snprintf(what, sizeof(what), "removing '%s'", path);
        r = cli_fail(what, r, &e);
        client_error_done(&e);
        return r;
    }
    protobuf_c_message_free_unpacked(m, NULL);
    return 0;
}

static int rm_run(int argc, char **argv)
{
    static const struct option options[] = {
            {"recursive", no_argument, NULL, 'r'},
            {"force", no_argument, NULL, 'f'},
            CLI_COMMON_LONG_OPTIONS,
            {},
    };
    /* -r and -R mean the same, as in rm(1). */
    bool flags[3] = {false, false, false};
    int r = parse_flags(argc, argv, ":rRfh", options, "rRf", flags, NULL);
    if (r != CLI_CONTINUE)
        return r;
    if (optind >= argc)
        return cli_usage("missing PATH");

    _cleanup_client_ struct client *cl = NULL;
    r = cli_client_new(0, &cl);
    if (r != 0)
        return r;
    int status = 0;
    for (int i = optind; i < argc; i++)
        if (rm_one(cl, argv[i], flags[0] || flags[1], flags[2]) != 0)
            status = CLI_EXIT_FAILURE;
    return status;
}

const struct cli_command ls_command = {
        .name = "ls",
        .run = ls_run,
        .summary = "list a directory",
        .help = "Usage: guestctl ls [-l] [--depth N] [--json] [PATH]\n"
                "\n"
                "Lists the entries of PATH (default: the user's home) sorted by path\n"
                "(filesystem.Filesystem/ListDir). Relative paths are taken from the user's home.\n"
                "With --depth above 1, entries are named by their full path. Times are UTC.\n"
                "\n"
                "Options:\n"
                "  -l, --long            permissions, owner, group, size, modification time\n"
                "      --depth N         descend N levels (default 1)\n"
                "      --json            print the ListDirResponse as JSON\n",
};

const struct cli_command stat_command = {
        .name = "stat",
        .run = stat_run,
        .summary = "show a file's type, size, mode, owner and times",
        .help = "Usage: guestctl stat [--json] PATH\n"
                "\n"
                "Shows what filesystem.Filesystem/Stat knows about PATH.\n"
                "\n"
                "Options:\n"
                "      --json            print the StatResponse as JSON\n",
};

const struct cli_command mkdir_command = {
        .name = "mkdir",
        .run = mkdir_run,
        .summary = "create directories (with their parents)",
        .help = "Usage: guestctl mkdir [-p] PATH...\n"
                "\n"
                "Creates each PATH and any missing parents (filesystem.Filesystem/MakeDir), owned\n"
                "by the user. An existing directory is an error unless -p is given.\n"
                "\n"
                "Options:\n"
                "  -p, --parents         no error if a directory exists already\n",
};

const struct cli_command mv_command = {
        .name = "mv",
        .run = mv_run,
        .summary = "move or rename a file or directory",
        .help = "Usage: guestctl mv SRC DST\n"
                "\n"
                "Renames SRC to DST (filesystem.Filesystem/Move), creating DST's parents.\n",
};

const struct cli_command rm_command = {
        .name = "rm",
        .run = rm_run,
        .summary = "remove files or directory trees",
        .help = "Usage: guestctl rm [-r] [-f] PATH...\n"
                "\n"
                "Removes each PATH (filesystem.Filesystem/Remove). Without -r a directory is\n"
                "refused (checked with a Stat first).\n"
                "\n"
                "Options:\n"
                "  -r, -R, --recursive   remove directories and their contents\n"
                "  -f, --force           no error for paths that do not exist\n",
};

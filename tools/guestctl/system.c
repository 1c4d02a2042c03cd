/* SPDX-License-Identifier: Apache-2.0 */
/* The agent itself: init (POST /init), health (GET /health) and version (with System/Info). */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "base/buf.h"
#include "base/cleanup.h"
#include "build-config.h"
#include "cli.h"
#include "guestd/v1/system.pb-c.h"

/* Largest token file read; tokens are short, anything bigger is a wrong file. */
#define SYSTEM_MAX_TOKEN_BYTES   4096
/* Largest /init response body or /health body read (guestd sends short texts). */
#define SYSTEM_MAX_REPLY_BYTES   (64 * 1024)
/* Longest server version string kept from a response header. */
#define SYSTEM_MAX_VERSION_BYTES 64

enum {
    OPT_TOKEN_FILE = CLI_OPT_FIRST_COMMAND_OPTION,
    OPT_WORKDIR,
};

/* Reports a non-2xx REST answer: its JSON "message", its text, or just the status. */
static int fail_http(const char *what, const struct client_response *resp, const struct buf *body)
{
    const char *code = client_code_from_http_status(resp->status);
    json_error_t jerr;
    json_t *root = body->len ? json_loadb(body->data, body->len, 0, &jerr) : NULL;
    const char *msg = NULL;
    if (root && json_is_object(root) && json_is_string(json_object_get(root, "message")))
        msg = json_string_value(json_object_get(root, "message"));
    else if (!root && body->len)
        msg = body->data;
    cli_warnf("%s: %s: HTTP %d%s%.*s%s", what, code, resp->status, msg ? ": " : "",
              msg ? (int) strcspn(msg, "\r\n") : 0, msg ? msg : "",
              streq(code, "unauthenticated") ? " (pass --token or set GUESTCTL_TOKEN)" : "");
    json_decref(root);
    return CLI_EXIT_FAILURE;
}

/* Reads a token from a file ("-" for stdin), without its line ending. */
static int read_token_file(const char *path, char **ret)
{
    _cleanup_close_ int fd = -1;
    char tmp[SYSTEM_MAX_TOKEN_BYTES + 1];
    size_t len = 0;
    int r = 0;

    if (streq(path, "-"))
        fd = fcntl(STDIN_FILENO, F_DUPFD_CLOEXEC, 3);
    else
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return -errno;
    while (len < sizeof(tmp)) {
        ssize_t k = read(fd, tmp + len, sizeof(tmp) - len);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0) {
            r = -errno;
            break;
        }
        if (k == 0)
            break;
        len += (size_t) k;
    }
    if (r == 0 && len == sizeof(tmp))
        r = -E2BIG;
    while (r == 0 && len > 0 && (tmp[len - 1] == '\n' || tmp[len - 1] == '\r'))
        len--;
    if (r == 0 && (len == 0 || memchr(tmp, '\0', len)))
        r = -EINVAL;
    if (r == 0) {
        *ret = strndup(tmp, len);
        if (!*ret)
            r = -ENOMEM;
    }
    /* The stack copy of the secret must not linger. */
    explicit_bzero(tmp, sizeof(tmp));
    return r;
}

static void free_secret(char **p)
{
    if (*p) {
        explicit_bzero(*p, strlen(*p));
        free(*p);
    }
}

/* Sets body[key] to a string; -EINVAL when it is not UTF-8 (jansson refuses those). */
static int set_string(json_t *obj, const char *key, const char *value)
{
    json_t *v = json_string(value);
    if (!v || json_object_set_new(obj, key, v) < 0)
        return -EINVAL;
    return 0;
}

static int init_run(int argc, char **argv)
{
    static const struct option options[] = {
            {"token-file", required_argument, NULL, OPT_TOKEN_FILE},
            {"env", required_argument, NULL, 'e'},
            {"workdir", required_argument, NULL, OPT_WORKDIR},
            CLI_COMMON_LONG_OPTIONS,
            {},
    };
    const char *token_file = NULL, *workdir = NULL;
    _cleanup_(free_secret) char *token = NULL;
    json_auto_t *body = json_object(); /* jansson's own cleanup attribute */
    json_auto_t *envs = json_object();
    int c, r;

    if (!body || !envs)
        return cli_fail_errno("building the request", -ENOMEM);
    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":e:h", options, NULL)) != -1) {
        r = CLI_CONTINUE;
        switch (c) {
        case OPT_TOKEN_FILE:
            token_file = optarg;
            break;
        case 'e': {
            const char *eq = strchr(optarg, '=');
            _cleanup_free_ char *name = eq ? strndup(optarg, (size_t) (eq - optarg)) : NULL;
            if (!eq || eq == optarg)
                r = cli_usage("--env needs NAME=VALUE, not '%s'", optarg);
            else if (!name || set_string(envs, name, eq + 1) < 0)
                r = cli_usage("invalid --env '%s' (names and values must be UTF-8)", optarg);
            break;
        }
        case OPT_WORKDIR:
            workdir = optarg;
            break;
        default:
            r = cli_common_option(c, argv);
            break;
        }
        if (r != CLI_CONTINUE)
            return r;
    }
    if (optind < argc)
        return cli_usage("unexpected argument '%s'", argv[optind]);
    if (token_file) {
        r = read_token_file(token_file, &token);
        if (r == -EINVAL)
            return cli_failf("reading the token from '%s': the file holds no token (or a NUL "
                             "byte)",
                             token_file);
        if (r == -E2BIG)
            return cli_failf("reading the token from '%s': the file is too large for a token",
                             token_file);
        if (r < 0)
            return cli_failf("reading the token from '%s': %s", token_file, strerror(-r));
    } else if (cli.token && *cli.token) {
        /* /init without accessToken clears the token: keep the one we authenticate with. */
        token = strdup(cli.token);
        if (!token)
            return cli_fail_errno("building the request", -ENOMEM);
    }
    /* A value that cannot go into the body must fail loudly: a token left out clears it. */
    if (token && set_string(body, "accessToken", token) < 0)
        return cli_failf("the token is not valid UTF-8");
    if (cli.user && set_string(body, "defaultUser", cli.user) < 0)
        return cli_usage("--user is not valid UTF-8");
    if (workdir && set_string(body, "defaultWorkdir", workdir) < 0)
        return cli_usage("--workdir is not valid UTF-8");
    if (json_object_size(envs) > 0 && json_object_set(body, "envVars", envs) < 0)
        return cli_fail_errno("building the request", -ENOMEM);
    char *text = json_dumps(body, JSON_COMPACT);
    if (!text)
        return cli_fail_errno("building the request", -ENOMEM);

    _cleanup_client_ struct client *cl = NULL;
    r = cli_client_new(0, &cl);
    if (r != 0) {
        explicit_bzero(text, strlen(text));
        free(text);
        return r;
    }
    /* --user is the body's defaultUser here; /init does not read Authorization. */
    (void) client_set_user(cl, NULL);
    const struct client_header headers[] = {{"Content-Type", "application/json"}};
    struct client_request req = {
            .method = "POST",
            .target = "/init",
            .headers = headers,
            .n_headers = ARRAY_SIZE(headers),
            .body = text,
            .body_len = strlen(text),
    };
    const struct client_response *resp = NULL;
    struct buf reply;
    buf_init(&reply, SYSTEM_MAX_REPLY_BYTES);
    r = client_fetch(cl, &req, &reply, &resp);
    explicit_bzero(text, strlen(text));
    free(text);
    if (r < 0)
        r = cli_fail_transport("POST /init", r);
    else if (resp->status / 100 != 2)
        r = fail_http("POST /init", resp, &reply);
    buf_free(&reply);
    return r;
}

static int health_run(int argc, char **argv)
{
    static const struct option options[] = {
            CLI_COMMON_LONG_OPTIONS,
            {},
    };
    int c, r;
    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", options, NULL)) != -1) {
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
    struct client_request req = {.method = "GET", .target = "/health"};
    const struct client_response *resp = NULL;
    struct buf body;
    buf_init(&body, SYSTEM_MAX_REPLY_BYTES);
    r = client_fetch(cl, &req, &body, &resp);
    if (r < 0)
        r = cli_fail_transport("GET /health", r);
    else if (resp->status != 204)
        r = fail_http("GET /health", resp, &body);
    else
        (void) printf("ok\n");
    buf_free(&body);
    return r;
}

static int metrics_run(int argc, char **argv)
{
    enum { OPT_PROMETHEUS = CLI_OPT_FIRST_COMMAND_OPTION };
    static const struct option options[] = {
            {"prometheus", no_argument, NULL, OPT_PROMETHEUS},
            CLI_COMMON_LONG_OPTIONS,
            {},
    };
    bool prometheus = false;
    int c, r;
    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", options, NULL)) != -1) {
        if (c == OPT_PROMETHEUS) {
            prometheus = true;
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
    const char *what = prometheus ? "GET /metrics?format=prometheus" : "GET /metrics";
    struct client_request req = {.method = "GET", .target = what + 4};
    const struct client_response *resp = NULL;
    struct buf body;
    buf_init(&body, SYSTEM_MAX_REPLY_BYTES);
    r = client_fetch(cl, &req, &body, &resp);
    if (r < 0)
        r = cli_fail_transport(what, r);
    else if (resp->status != 200)
        r = fail_http(what, resp, &body);
    else {
        if (body.len > 0)
            (void) fwrite(body.data, 1, body.len, stdout);
        if (body.len > 0 && body.data[body.len - 1] != '\n')
            (void) putchar('\n');
    }
    buf_free(&body);
    return r;
}

static void copy_header(const struct client_response *resp, const char *name, char *out, size_t len)
{
    const char *v = client_response_header(resp, name);
    (void) snprintf(out, len, "%s", v && *v ? v : "unknown");
}

static int version_run(int argc, char **argv)
{
    static const struct option options[] = {
            CLI_COMMON_LONG_OPTIONS,
            {},
    };
    char guestd_version[SYSTEM_MAX_VERSION_BYTES], envd_version[SYSTEM_MAX_VERSION_BYTES];
    int c, r;
    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", options, NULL)) != -1) {
        r = cli_common_option(c, argv);
        if (r != CLI_CONTINUE)
            return r;
    }
    if (optind < argc)
        return cli_usage("unexpected argument '%s'", argv[optind]);

    /* Our own version first: it is worth having even when the server cannot be reached. */
    (void) printf("guestctl %s\n", GUESTD_VERSION);
    (void) fflush(stdout);

    _cleanup_client_ struct client *cl = NULL;
    r = cli_client_new(0, &cl);
    if (r != 0)
        return r;
    struct client_request req = {.method = "GET", .target = "/health"};
    const struct client_response *resp = NULL;
    r = client_fetch(cl, &req, NULL, &resp);
    if (r < 0)
        return cli_fail_transport("GET /health", r);
    copy_header(resp, "X-Guestd-Version", guestd_version, sizeof(guestd_version));
    copy_header(resp, "X-Envd-Version", envd_version, sizeof(envd_version));
    (void) printf("server   guestd %s (envd-compatible %s) at %s\n", guestd_version, envd_version,
                  cli.to);

    Guestd__V1__InfoRequest ireq = GUESTD__V1__INFO_REQUEST__INIT;
    ProtobufCMessage *m = NULL;
    r = cli_unary(cl, "System/Info", "/guestd.v1.System/Info", &ireq.base,
                  &guestd__v1__info_response__descriptor, &m);
    if (r != 0)
        return r;
    const Guestd__V1__InfoResponse *info = (const Guestd__V1__InfoResponse *) m;
    (void) printf("boot id  %s\n", info->boot_id);
    (void) printf("vm gen   %" PRIu64 "\n", info->generation);
    (void) printf("uptime   %" PRIu64 ".%03" PRIu64 " s (idle %" PRIu64 ".%03" PRIu64 " s)\n",
                  info->uptime_ms / 1000, info->uptime_ms % 1000, info->idle_ms / 1000,
                  info->idle_ms % 1000);
    (void) printf("pid 1    %s\n", info->pid1 ? "yes" : "no");
    (void) printf("features");
    for (size_t i = 0; i < info->n_features; i++)
        (void) printf(" %s", info->features[i]);
    (void) printf("\n");
    protobuf_c_message_free_unpacked(m, NULL);
    return 0;
}

const struct cli_command init_command = {
        .name = "init",
        .run = init_run,
        .summary = "configure guestd: access token, environment, default user and workdir",
        .help = "Usage: guestctl init [--token-file FILE] [--env NAME=VALUE]... [--user USER]\n"
                "                     [--workdir DIR]\n"
                "\n"
                "POSTs /init as the orchestrator does after boot or resume. Prints nothing on\n"
                "success. guestd replaces its environment variables with the --env set given.\n"
                "\n"
                "The token in FILE ('-' for stdin) becomes the one every request needs (except\n"
                "from root on the Unix socket). Without --token-file, the token guestctl\n"
                "authenticates with (--token, GUESTCTL_TOKEN) is sent again so that it stays;\n"
                "with neither, guestd clears its token.\n"
                "\n"
                "Options:\n"
                "      --token-file FILE new access token (never given on the command line)\n"
                "  -e, --env NAME=VALUE  environment variable for every process (repeatable)\n"
                "      --user USER       default user for processes and files\n"
                "      --workdir DIR     default working directory\n",
};

const struct cli_command health_command = {
        .name = "health",
        .run = health_run,
        .summary = "check that guestd answers (GET /health)",
        .help = "Usage: guestctl health\n"
                "\n"
                "GETs /health and prints 'ok' when guestd answers 204; exits 1 otherwise.\n",
};

const struct cli_command metrics_command = {
        .name = "metrics",
        .run = metrics_run,
        .summary = "show the guest's CPU, memory and disk use (GET /metrics)",
        .help = "Usage: guestctl metrics [--prometheus]\n"
                "\n"
                "GETs /metrics and prints the body: one JSON object, or with --prometheus the\n"
                "Prometheus text exposition format.\n"
                "\n"
                "Options:\n"
                "      --prometheus      ask for ?format=prometheus\n",
};

const struct cli_command version_command = {
        .name = "version",
        .run = version_run,
        .summary = "show guestctl's and the server's versions",
        .help = "Usage: guestctl version\n"
                "\n"
                "Prints guestctl's version, then the server's (X-Guestd-Version and\n"
                "X-Envd-Version) and what guestd.v1.System/Info reports: boot id, VM generation,\n"
                "uptime, idle time, whether it runs as PID 1, and its features.\n",
};

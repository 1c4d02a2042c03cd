/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Configuration: envd's Go-style flags, guestd's own flags, the key = value file, their
 * precedence, default listeners, and listen address parsing (net/net.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "harness.h"
#include "net/net.h"

#define ERRLEN 512

/* ---- helpers ---- */

extern int __lsan_do_recoverable_leak_check(void) __attribute__((weak));

static void assert_no_leaks(void)
{
    if (__lsan_do_recoverable_leak_check && __lsan_do_recoverable_leak_check() != 0)
        test_fail(__FILE__, __LINE__, "LeakSanitizer found leaks (see above)");
}

static int parse_argv(struct guestd_config *c, char *err, const char **args)
{
    int n = 0;
    while (args[n])
        n++;
    err[0] = '\0';
    return config_parse_args(c, n, (char *const *) args, err, ERRLEN);
}

/* PARSE(&cfg, err, "-port", "80") parses the given arguments (argv without argv[0]). */
#define PARSE(c, err, ...) parse_argv((c), (err), (const char *[]){__VA_ARGS__, NULL})

/* Parses one argument list on a fresh config that must succeed, and returns the config. */
#define PARSE_OK(c, ...)                                                     \
    do {                                                                     \
        char _err[ERRLEN];                                                   \
        config_done(c);                                                      \
        config_init(c);                                                      \
        int _r = PARSE((c), _err, __VA_ARGS__);                              \
        if (_r != 0)                                                         \
            test_fail(__FILE__, __LINE__, "parse failed: %d: %s", _r, _err); \
    } while (0)

/* Parses an argument list that must fail with -EINVAL and a message containing `want`. */
#define PARSE_ERR(want, ...)                                                            \
    do {                                                                                \
        struct guestd_config _c;                                                        \
        char _err[ERRLEN];                                                              \
        config_init(&_c);                                                               \
        int _r = PARSE(&_c, _err, __VA_ARGS__);                                         \
        if (_r != -EINVAL)                                                              \
            test_fail(__FILE__, __LINE__, "parse: got %d, want -EINVAL", _r);           \
        if (!strstr(_err, (want)))                                                      \
            test_fail(__FILE__, __LINE__, "message \"%s\" lacks \"%s\"", _err, (want)); \
        config_done(&_c);                                                               \
    } while (0)

static void assert_text_err(const char *text, const char *want)
{
    struct guestd_config c;
    char err[ERRLEN] = "";
    config_init(&c);
    int r = config_load_text(&c, text, err, sizeof(err));
    if (r != -EINVAL)
        test_fail(__FILE__, __LINE__, "config_load_text(\"%s\"): got %d, want -EINVAL", text, r);
    if (!strstr(err, want))
        test_fail(__FILE__, __LINE__, "config_load_text(\"%s\"): message \"%s\" lacks \"%s\"", text,
                  err, want);
    config_done(&c);
}

static void assert_addr(const struct net_addr *a, const char *want)
{
    char s[NET_ADDR_MAX];
    net_addr_format(a, s, sizeof(s));
    ASSERT_STR_EQ(s, want);
}

/* ---- defaults ---- */

TEST(config_defaults)
{
    struct guestd_config c;
    config_init(&c);
    ASSERT_UEQ(c.n_listen, 0);
    ASSERT_FALSE(c.listen_from_flags);
    ASSERT_STR_EQ(c.default_user, "root");
    ASSERT_NULL(c.default_workdir);
    ASSERT_EQ(c.log_level, LOG_LVL_INFO);
    ASSERT_EQ(c.log_format, LOG_FORMAT_TEXT);
    ASSERT_EQ(c.clock_sync, CLOCK_SYNC_AUTO);
    ASSERT_STR_EQ(c.config_path, CONFIG_DEFAULT_PATH);
    ASSERT_FALSE(c.config_path_explicit);
    ASSERT_STR_EQ(c.cgroup_root, "/sys/fs/cgroup");
    ASSERT_STR_EQ(c.run_dir, "/run/e2b");
    ASSERT_NULL(c.access_token_file);
    ASSERT_UEQ(c.port, 0);
    ASSERT_FALSE(c.isnotfc);
    ASSERT_FALSE(c.verbose);
    ASSERT_FALSE(c.no_cgroups);
    ASSERT_FALSE(c.show_version);
    ASSERT_FALSE(c.show_help);
    ASSERT_FALSE(c.require_token);
    ASSERT_FALSE(c.trust_host_vsock);
    ASSERT_UEQ(c.header_timeout_ms, 0);
    ASSERT_UEQ(c.idle_timeout_ms, 0);
    ASSERT_UEQ(c.max_connections, 0);
    char err[ERRLEN];
    ASSERT_EQ(PARSE(&c, err, NULL), 0); /* no arguments: nothing changes */
    ASSERT_UEQ(c.n_listen, 0);
    ASSERT_STR_EQ(c.default_user, "root");
    config_done(&c);
    assert_no_leaks();
}

/* ---- envd's flags in every Go spelling ---- */

TEST(flag_port_spellings)
{
    struct guestd_config c;
    config_init(&c);
    PARSE_OK(&c, "-port", "8080");
    ASSERT_UEQ(c.port, 8080);
    PARSE_OK(&c, "-port=8081");
    ASSERT_UEQ(c.port, 8081);
    PARSE_OK(&c, "--port", "8082");
    ASSERT_UEQ(c.port, 8082);
    PARSE_OK(&c, "--port=8083");
    ASSERT_UEQ(c.port, 8083);
    PARSE_OK(&c, "-port", "1", "-port", "65535");
    ASSERT_UEQ(c.port, 65535);
    config_done(&c);

    PARSE_ERR("invalid port '0'", "-port=0");
    PARSE_ERR("invalid port '65536'", "-port", "65536");
    PARSE_ERR("invalid port 'http'", "--port=http");
    PARSE_ERR("invalid port ''", "-port=");
    PARSE_ERR("invalid port '-1'", "-port", "-1");
    assert_no_leaks();
}

TEST(flag_isnotfc_spellings)
{
    struct guestd_config c;
    config_init(&c);
    PARSE_OK(&c, "-isnotfc");
    ASSERT_TRUE(c.isnotfc);
    PARSE_OK(&c, "--isnotfc");
    ASSERT_TRUE(c.isnotfc);
    PARSE_OK(&c, "-isnotfc=true");
    ASSERT_TRUE(c.isnotfc);
    PARSE_OK(&c, "-isnotfc=1");
    ASSERT_TRUE(c.isnotfc);
    PARSE_OK(&c, "-isnotfc=false");
    ASSERT_FALSE(c.isnotfc);
    PARSE_OK(&c, "-isnotfc", "-isnotfc=false");
    ASSERT_FALSE(c.isnotfc);
    PARSE_OK(&c, "--isnotfc=FALSE");
    ASSERT_FALSE(c.isnotfc);
    config_done(&c);
    PARSE_ERR("invalid boolean value 'maybe' for isnotfc", "-isnotfc=maybe");
    PARSE_ERR("invalid boolean value '' for isnotfc", "-isnotfc=");
    assert_no_leaks();
}

TEST(flag_verbose_sets_debug)
{
    struct guestd_config c;
    config_init(&c);
    PARSE_OK(&c, "-verbose");
    ASSERT_TRUE(c.verbose);
    ASSERT_EQ(c.log_level, LOG_LVL_DEBUG);
    PARSE_OK(&c, "--verbose=true");
    ASSERT_EQ(c.log_level, LOG_LVL_DEBUG);
    PARSE_OK(&c, "-verbose=false");
    ASSERT_FALSE(c.verbose);
    ASSERT_EQ(c.log_level, LOG_LVL_INFO);
    config_done(&c);
    assert_no_leaks();
}

TEST(flag_cgroups)
{
    struct guestd_config c;
    config_init(&c);
    PARSE_OK(&c, "-cgroup-root", "/sys/fs/cgroup/guest");
    ASSERT_STR_EQ(c.cgroup_root, "/sys/fs/cgroup/guest");
    PARSE_OK(&c, "-cgroup-root=/cg");
    ASSERT_STR_EQ(c.cgroup_root, "/cg");
    PARSE_OK(&c, "--cgroup-root", "/a", "--cgroup-root=/b");
    ASSERT_STR_EQ(c.cgroup_root, "/b");
    PARSE_OK(&c, "-no-cgroups");
    ASSERT_TRUE(c.no_cgroups);
    PARSE_OK(&c, "--no-cgroups=false");
    ASSERT_FALSE(c.no_cgroups);
    config_done(&c);
    PARSE_ERR("flag '-cgroup-root' needs a value", "-cgroup-root");
    assert_no_leaks();
}

TEST(flag_version_and_help)
{
    struct guestd_config c;
    config_init(&c);
    PARSE_OK(&c, "-version");
    ASSERT_TRUE(c.show_version);
    ASSERT_FALSE(c.show_help);
    PARSE_OK(&c, "--version");
    ASSERT_TRUE(c.show_version);
    PARSE_OK(&c, "-commit");
    ASSERT_TRUE(c.show_version);
    PARSE_OK(&c, "-h");
    ASSERT_TRUE(c.show_help);
    ASSERT_FALSE(c.show_version);
    PARSE_OK(&c, "--help");
    ASSERT_TRUE(c.show_help);
    PARSE_OK(&c, "-help");
    ASSERT_TRUE(c.show_help);
    PARSE_OK(&c, "--h");
    ASSERT_TRUE(c.show_help);
    config_done(&c);
    const char *u = config_usage();
    ASSERT_NOT_NULL(strstr(u, "--listen"));
    ASSERT_NOT_NULL(strstr(u, "-port"));
    assert_no_leaks();
}

TEST(flag_envd_command_line)
{
    /* how E2B templates start envd */
    struct guestd_config c;
    config_init(&c);
    PARSE_OK(&c, "-isnotfc", "-port", "49982", "-cgroup-root=/sys/fs/cgroup", "-verbose");
    ASSERT_TRUE(c.isnotfc);
    ASSERT_UEQ(c.port, 49982);
    ASSERT_TRUE(c.verbose);
    ASSERT_EQ(c.log_level, LOG_LVL_DEBUG);
    config_done(&c);
    assert_no_leaks();
}

/* ---- guestd's flags ---- */

TEST(flag_misc_values)
{
    struct guestd_config c;
    config_init(&c);
    PARSE_OK(&c, "--default-user", "user", "--default-workdir=/home/user", "--log-level", "warn",
             "--log-format=json", "--run-dir", "/tmp/run", "--access-token-file", "/etc/tok",
             "--require-token", "--trust-host-vsock=true");
    ASSERT_STR_EQ(c.default_user, "user");
    ASSERT_STR_EQ(c.default_workdir, "/home/user");
    ASSERT_EQ(c.log_level, LOG_LVL_WARN);
    ASSERT_EQ(c.log_format, LOG_FORMAT_JSON);
    ASSERT_STR_EQ(c.run_dir, "/tmp/run");
    ASSERT_STR_EQ(c.access_token_file, "/etc/tok");
    ASSERT_TRUE(c.require_token);
    ASSERT_TRUE(c.trust_host_vsock);
    config_done(&c);
    PARSE_ERR("default-user must not be empty", "--default-user=");
    PARSE_ERR("invalid log level 'loud'", "--log-level", "loud");
    PARSE_ERR("invalid log format 'xml'", "--log-format=xml");
    PARSE_ERR("invalid boolean value 'please' for require-token", "--require-token=please");
    assert_no_leaks();
}

TEST(flag_clock_sync)
{
    struct guestd_config c;
    config_init(&c);
    PARSE_OK(&c, "--clock-sync", "on");
    ASSERT_EQ(c.clock_sync, CLOCK_SYNC_ON);
    PARSE_OK(&c, "--clock-sync=off");
    ASSERT_EQ(c.clock_sync, CLOCK_SYNC_OFF);
    PARSE_OK(&c, "--clock-sync=off", "-clock-sync", "auto");
    ASSERT_EQ(c.clock_sync, CLOCK_SYNC_AUTO);
    config_done(&c);
    PARSE_ERR("invalid clock-sync 'sometimes' (auto, on, off)", "--clock-sync=sometimes");
    PARSE_ERR("invalid clock-sync 'ON'", "--clock-sync=ON");
    PARSE_ERR("invalid clock-sync ''", "--clock-sync=");
    PARSE_ERR("flag '--clock-sync' needs a value", "--clock-sync");
    assert_no_leaks();
}

TEST(flag_timeouts_and_connections)
{
    struct guestd_config c;
    config_init(&c);
    PARSE_OK(&c, "--header-timeout-ms", "1", "--idle-timeout-ms=86400000", "--max-connections=1");
    ASSERT_UEQ(c.header_timeout_ms, 1);
    ASSERT_UEQ(c.idle_timeout_ms, 86400000);
    ASSERT_UEQ(c.max_connections, 1);
    PARSE_OK(&c, "--header-timeout-ms=86400000", "--idle-timeout-ms", "640000", "--max-connections",
             "1000000");
    ASSERT_UEQ(c.header_timeout_ms, 86400000);
    ASSERT_UEQ(c.idle_timeout_ms, 640000);
    ASSERT_UEQ(c.max_connections, 1000000);
    config_done(&c);
    PARSE_ERR("invalid header-timeout-ms '0' (1 ms to 24 h)", "--header-timeout-ms=0");
    PARSE_ERR("invalid header-timeout-ms '86400001'", "--header-timeout-ms=86400001");
    PARSE_ERR("invalid header-timeout-ms '-5'", "--header-timeout-ms=-5");
    PARSE_ERR("invalid header-timeout-ms '10s'", "--header-timeout-ms=10s");
    PARSE_ERR("invalid idle-timeout-ms '0'", "--idle-timeout-ms", "0");
    PARSE_ERR("invalid idle-timeout-ms '99999999999999999999999'",
              "--idle-timeout-ms=99999999999999999999999");
    PARSE_ERR("invalid max-connections '0'", "--max-connections=0");
    PARSE_ERR("invalid max-connections '1000001'", "--max-connections=1000001");
    PARSE_ERR("invalid max-connections 'many'", "--max-connections=many");
    PARSE_ERR("invalid max-connections '4294967296'", "--max-connections=4294967296");
    assert_no_leaks();
}

/* ---- errors ---- */

TEST(flag_unknown_and_missing_value)
{
    PARSE_ERR("unknown flag '--bogus' (see --help)", "--bogus");
    PARSE_ERR("unknown flag '-bogus=1'", "-bogus=1");
    PARSE_ERR("unknown flag '-portx'", "-portx", "1");
    PARSE_ERR("unknown flag '--Port=1'", "--Port=1");
    PARSE_ERR("unknown flag '--isnotfc-x'", "-port", "1", "--isnotfc-x");
    PARSE_ERR("flag '-port' needs a value", "-port");
    PARSE_ERR("flag '--listen' needs a value", "--isnotfc", "--listen");
    PARSE_ERR("flag '--default-user' needs a value", "--default-user");
    PARSE_ERR("unexpected argument 'serve'", "serve");
    PARSE_ERR("unexpected argument 'true'", "-isnotfc", "true");
    PARSE_ERR("unexpected argument '---port=1'", "---port=1");
    PARSE_ERR("unexpected argument '-=x'", "-=x");
    PARSE_ERR("unexpected argument '--=x'", "--=x");

    /* "--" and "-" end the flags, as in Go */
    struct guestd_config c;
    char err[ERRLEN];
    config_init(&c);
    ASSERT_OK(PARSE(&c, err, "-port=1", "--", "--bogus"));
    ASSERT_UEQ(c.port, 1);
    ASSERT_OK(PARSE(&c, err, "-port=2", "-", "--bogus"));
    ASSERT_UEQ(c.port, 2);
    config_done(&c);
    assert_no_leaks();
}

TEST(access_token_never_from_argv)
{
    static const char secret[] = "hunter2-very-secret";
    struct guestd_config c;
    char err[ERRLEN];
    config_init(&c);
    ASSERT_ERR(PARSE(&c, err, "--access-token", secret), EINVAL);
    ASSERT_NOT_NULL(strstr(err, "never taken from the command line"));
    ASSERT_NULL(strstr(err, secret)); /* never echoed */
    ASSERT_ERR(PARSE(&c, err, "-access-token=hunter2-very-secret"), EINVAL);
    ASSERT_NOT_NULL(strstr(err, "never taken from the command line"));
    ASSERT_NULL(strstr(err, secret));
    ASSERT_ERR(PARSE(&c, err, "--access-token"), EINVAL);
    config_done(&c);

    config_init(&c);
    ASSERT_ERR(config_load_text(&c, "access-token = hunter2-very-secret\n", err, sizeof(err)),
               EINVAL);
    ASSERT_NOT_NULL(strstr(err, "line 1: "));
    ASSERT_NOT_NULL(strstr(err, "config file"));
    ASSERT_NULL(strstr(err, secret));
    config_done(&c);
    assert_no_leaks();
}

TEST(file_refuses_argv_only_keys)
{
    assert_text_err("config = /etc/other.conf\n",
                    "line 1: 'config' cannot be set in the config file");
    assert_text_err("log-level = info\nversion = true\n",
                    "line 2: 'version' cannot be set in the config file");
    assert_text_err("help = true\n", "'help' cannot be set in the config file");
    assert_text_err("h = true\n", "'h' cannot be set in the config file");
    assert_text_err("test-host-cid = 3\n", "'test-host-cid' cannot be set in the config file");
    assert_no_leaks();
}

/* ---- listen ---- */

TEST(flag_listen_repeatable)
{
    struct guestd_config c;
    config_init(&c);
    PARSE_OK(&c, "--listen", "tcp:127.0.0.1:8080", "--listen=unix:/tmp/guestd.sock", "-listen",
             "vsock:1024", "-listen=tcp:[::1]:9000");
    ASSERT_TRUE(c.listen_from_flags);
    ASSERT_UEQ(c.n_listen, 4);
    ASSERT_EQ(c.listen[0].transport, TRANSPORT_TCP);
    ASSERT_STR_EQ(c.listen[0].host, "127.0.0.1");
    ASSERT_UEQ(c.listen[0].port, 8080);
    ASSERT_EQ(c.listen[1].transport, TRANSPORT_UNIX);
    ASSERT_STR_EQ(c.listen[1].path, "/tmp/guestd.sock");
    ASSERT_EQ(c.listen[2].transport, TRANSPORT_VSOCK);
    ASSERT_UEQ(c.listen[2].vport, 1024);
    ASSERT_EQ(c.listen[3].transport, TRANSPORT_TCP);
    ASSERT_STR_EQ(c.listen[3].host, "::1");
    ASSERT_UEQ(c.listen[3].port, 9000);
    config_done(&c);
    assert_no_leaks();
}

TEST(flag_listen_bad_forms)
{
    static const char *const bad[] = {
            "",
            "tcp:",
            "tcp:127.0.0.1",
            "tcp:127.0.0.1:",
            "tcp::80",
            "tcp:[::1]",
            "tcp:[::1]:",
            "tcp:[::1]80",
            "tcp:[]:80",
            "tcp:[::1:80",
            "tcp:::1:80",
            "tcp:example.com:80",
            "tcp:1.2.3.4:65536",
            "tcp:1.2.3.4:-1",
            "tcp:1.2.3.4:+1",
            "tcp:1.2.3.4:8o",
            "tcp:256.1.1.1:80",
            "tcp: 1.2.3.4:80",
            "unix:",
            "vsock:",
            "vsock:-1",
            "vsock:abc",
            "vsock:4294967296",
            "udp:1.2.3.4:5",
            "TCP:1.2.3.4:5",
            "1.2.3.4:5",
            "/run/x.sock",
            "tcp:[::1]:80x",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct guestd_config c;
        char err[ERRLEN], want[ERRLEN];
        config_init(&c);
        int r = PARSE(&c, err, "--listen", bad[i]);
        if (r != -EINVAL)
            test_fail(__FILE__, __LINE__, "--listen '%s' accepted", bad[i]);
        (void) snprintf(want, sizeof(want), "invalid listen address '%s'", bad[i]);
        if (!strstr(err, want))
            test_fail(__FILE__, __LINE__, "message \"%s\" lacks \"%s\"", err, want);
        config_done(&c);
    }
    assert_no_leaks();
}

TEST(flag_listen_too_many)
{
    struct guestd_config c;
    char err[ERRLEN];
    const char *args[2 * (CONFIG_MAX_LISTENERS + 1) + 1];
    char addrs[CONFIG_MAX_LISTENERS + 1][32];
    for (int i = 0; i <= CONFIG_MAX_LISTENERS; i++) {
        (void) snprintf(addrs[i], sizeof(addrs[i]), "vsock:%d", 1000 + i);
        args[2 * i] = "--listen";
        args[2 * i + 1] = addrs[i];
    }
    config_init(&c);
    args[2 * CONFIG_MAX_LISTENERS] = NULL;
    ASSERT_OK(parse_argv(&c, err, args));
    ASSERT_UEQ(c.n_listen, CONFIG_MAX_LISTENERS);
    config_done(&c);

    config_init(&c);
    args[2 * CONFIG_MAX_LISTENERS] = "--listen";
    args[2 * (CONFIG_MAX_LISTENERS + 1)] = NULL;
    ASSERT_ERR(parse_argv(&c, err, args), EINVAL);
    ASSERT_NOT_NULL(strstr(err, "too many listeners"));
    config_done(&c);
    assert_no_leaks();
}

TEST(flags_override_file)
{
    struct guestd_config c;
    char err[ERRLEN];
    config_init(&c);
    ASSERT_OK(config_load_text(&c,
                               "listen = tcp:10.0.0.1:1\n"
                               "listen = unix:/run/a.sock\n"
                               "log-level = warn\n"
                               "isnotfc = true\n"
                               "port = 7000\n"
                               "default-user = user\n",
                               err, sizeof(err)));
    ASSERT_UEQ(c.n_listen, 2);
    ASSERT_FALSE(c.listen_from_flags);
    ASSERT_EQ(c.log_level, LOG_LVL_WARN);
    ASSERT_TRUE(c.isnotfc);
    ASSERT_UEQ(c.port, 7000);
    /* flags without --listen keep the file's listeners */
    ASSERT_OK(PARSE(&c, err, "--log-level=debug", "-isnotfc=false"));
    ASSERT_UEQ(c.n_listen, 2);
    ASSERT_EQ(c.log_level, LOG_LVL_DEBUG);
    ASSERT_FALSE(c.isnotfc);
    ASSERT_UEQ(c.port, 7000);
    ASSERT_STR_EQ(c.default_user, "user");
    /* the first --listen replaces the file's list, later ones add to it */
    ASSERT_OK(PARSE(&c, err, "--listen", "vsock:5", "--listen=tcp:127.0.0.1:6"));
    ASSERT_TRUE(c.listen_from_flags);
    ASSERT_UEQ(c.n_listen, 2);
    assert_addr(&c.listen[0], "vsock:5");
    assert_addr(&c.listen[1], "tcp:127.0.0.1:6");
    config_done(&c);

    /* the same with one flag */
    config_init(&c);
    ASSERT_OK(config_load_text(&c, "listen = tcp:10.0.0.1:1\nlisten = unix:/run/a.sock\n", err,
                               sizeof(err)));
    ASSERT_OK(PARSE(&c, err, "--listen=unix:/run/b.sock"));
    ASSERT_UEQ(c.n_listen, 1);
    assert_addr(&c.listen[0], "unix:/run/b.sock");
    config_done(&c);
    assert_no_leaks();
}

TEST(config_find_path_only_reads_config)
{
    struct guestd_config c;
    char err[ERRLEN];
    char *const args[] = {"-port", "1", "--config", "/tmp/x.conf", "-isnotfc", NULL};
    config_init(&c);
    ASSERT_OK(config_find_path(&c, 5, args, err, sizeof(err)));
    ASSERT_STR_EQ(c.config_path, "/tmp/x.conf");
    ASSERT_TRUE(c.config_path_explicit);
    ASSERT_UEQ(c.port, 0);
    ASSERT_FALSE(c.isnotfc);
    config_done(&c);

    char *const args2[] = {"-config=/etc/y.conf", NULL};
    config_init(&c);
    ASSERT_OK(config_find_path(&c, 1, args2, err, sizeof(err)));
    ASSERT_STR_EQ(c.config_path, "/etc/y.conf");
    config_done(&c);

    char *const args3[] = {"--config", NULL};
    config_init(&c);
    ASSERT_ERR(config_find_path(&c, 1, args3, err, sizeof(err)), EINVAL);
    ASSERT_NOT_NULL(strstr(err, "flag '--config' needs a value"));
    config_done(&c);
    assert_no_leaks();
}

/* ---- default listeners ---- */

TEST(default_listeners)
{
    struct guestd_config c;
    config_init(&c);
    config_default_listeners(&c, false);
    ASSERT_UEQ(c.n_listen, 2);
    assert_addr(&c.listen[0], "tcp:0.0.0.0:49983");
    assert_addr(&c.listen[1], "unix:/run/guestd/guestd.sock");
    config_done(&c);

    config_init(&c);
    config_default_listeners(&c, true);
    ASSERT_UEQ(c.n_listen, 3);
    assert_addr(&c.listen[0], "vsock:49983");
    assert_addr(&c.listen[1], "tcp:0.0.0.0:49983");
    assert_addr(&c.listen[2], "unix:/run/guestd/guestd.sock");
    config_done(&c);

    /* -port moves the defaults */
    config_init(&c);
    PARSE_OK(&c, "-port", "49982");
    config_default_listeners(&c, false);
    ASSERT_UEQ(c.n_listen, 2);
    assert_addr(&c.listen[0], "tcp:0.0.0.0:49982");
    assert_addr(&c.listen[1], "unix:/run/guestd/guestd.sock");
    PARSE_OK(&c, "-port=8000");
    config_default_listeners(&c, true);
    ASSERT_UEQ(c.n_listen, 3);
    assert_addr(&c.listen[0], "vsock:8000");
    assert_addr(&c.listen[1], "tcp:0.0.0.0:8000");
    config_done(&c);
    assert_no_leaks();
}

TEST(default_listeners_keep_explicit_ones)
{
    struct guestd_config c;
    config_init(&c);
    PARSE_OK(&c, "--listen", "unix:/tmp/a.sock");
    config_default_listeners(&c, true);
    ASSERT_UEQ(c.n_listen, 1);
    assert_addr(&c.listen[0], "unix:/tmp/a.sock");

    /* with -port, explicit TCP listeners move to that port; others stay */
    PARSE_OK(&c, "--listen", "tcp:127.0.0.1:1", "--listen", "vsock:7", "--listen",
             "unix:/tmp/b.sock", "-port", "5555");
    config_default_listeners(&c, false);
    ASSERT_UEQ(c.n_listen, 3);
    assert_addr(&c.listen[0], "tcp:127.0.0.1:5555");
    assert_addr(&c.listen[1], "vsock:7");
    assert_addr(&c.listen[2], "unix:/tmp/b.sock");
    config_done(&c);
    assert_no_leaks();
}

/* ---- the file ---- */

TEST(file_comments_blank_lines_and_trimming)
{
    struct guestd_config c;
    char err[ERRLEN];
    config_init(&c);
    ASSERT_OK(config_load_text(&c,
                               "# guestd.conf\n"
                               "\n"
                               "   \n"
                               "\t# indented comment\n"
                               "log-level = debug\r\n"
                               "  default-user=alice  \n"
                               "default-workdir\t=\t/home/alice\t\n"
                               "listen=tcp:[::1]:5000\n"
                               "require-token = yes\n"
                               "trust-host-vsock = off\n"
                               "clock-sync = off\n"
                               "cgroup-root = /cg\n"
                               "no-cgroups = 1\n"
                               "header-timeout-ms = 2500\n"
                               "max-connections = 64",
                               err, sizeof(err)));
    ASSERT_EQ(c.log_level, LOG_LVL_DEBUG);
    ASSERT_STR_EQ(c.default_user, "alice");
    ASSERT_STR_EQ(c.default_workdir, "/home/alice");
    ASSERT_UEQ(c.n_listen, 1);
    assert_addr(&c.listen[0], "tcp:[::1]:5000");
    ASSERT_TRUE(c.require_token);
    ASSERT_FALSE(c.trust_host_vsock);
    ASSERT_EQ(c.clock_sync, CLOCK_SYNC_OFF);
    ASSERT_STR_EQ(c.cgroup_root, "/cg");
    ASSERT_TRUE(c.no_cgroups);
    ASSERT_UEQ(c.header_timeout_ms, 2500);
    ASSERT_UEQ(c.max_connections, 64);
    config_done(&c);

    config_init(&c);
    ASSERT_OK(config_load_text(&c, "", err, sizeof(err)));
    ASSERT_OK(config_load_text(&c, "\n\n# only comments\n", err, sizeof(err)));
    ASSERT_UEQ(c.n_listen, 0);
    config_done(&c);
    assert_no_leaks();
}

TEST(file_errors_name_the_line)
{
    assert_text_err("bogus = 1\n", "line 1: unknown key 'bogus'");
    assert_text_err("log-level = info\nbogus = 1\n", "line 2: unknown key 'bogus'");
    assert_text_err("log-level = info\njust-a-key\n", "line 2: expected key = value");
    assert_text_err("isnotfc\n", "line 1: expected key = value");
    assert_text_err("# c\nport = 0\n", "line 2: invalid port '0'");
    assert_text_err("isnotfc = maybe\n", "line 1: invalid boolean value 'maybe' for isnotfc");
    assert_text_err("listen = tcp:nowhere:1\n", "line 1: invalid listen address 'tcp:nowhere:1'");
    assert_text_err("--port = 1\n", "line 1: unknown key '--port'");
    assert_text_err(" = 1\n", "line 1: unknown key ''");
    assert_text_err("clock-sync = maybe\n", "line 1: invalid clock-sync 'maybe'");
    assert_text_err("max-connections = 0\n", "line 1: invalid max-connections '0'");
    char longline[5000];
    memset(longline, 'x', sizeof(longline) - 1);
    longline[sizeof(longline) - 1] = '\0';
    memcpy(longline, "run-dir=", 8);
    assert_text_err(longline, "line 1: too long");
    assert_no_leaks();
}

TEST(file_line_numbers_count_blank_lines)
{
    /* Blank lines count: an operator looks for the line number the editor shows. */
    struct guestd_config c;
    char err[ERRLEN] = "";
    config_init(&c);
    int r = config_load_text(&c, "# comment\n\nlog-level = info\n\n\nbogus = 1\n", err,
                             sizeof(err));
    config_done(&c);
    ASSERT_ERR(r, EINVAL);
    if (!strstr(err, "line 6: unknown key 'bogus'"))
        test_fail(__FILE__, __LINE__, "message \"%s\" lacks \"line 6: unknown key 'bogus'\"", err);
    assert_no_leaks();
}

TEST(file_load_from_disk)
{
    char dir[] = "/tmp/guestd-test-config-XXXXXX";
    ASSERT_NOT_NULL(mkdtemp(dir));
    char path[PATH_MAX], err[ERRLEN];
    (void) snprintf(path, sizeof(path), "%s/guestd.conf", dir);
    struct guestd_config c;
    config_init(&c);

    ASSERT_ERR(config_load_file(&c, path, err, sizeof(err)), ENOENT);

    FILE *f = fopen(path, "we");
    ASSERT_NOT_NULL(f);
    fputs("# test\nport = 6000\nlisten = vsock:6000\n", f);
    ASSERT_OK(fclose(f));
    ASSERT_OK(config_load_file(&c, path, err, sizeof(err)));
    ASSERT_UEQ(c.port, 6000);
    ASSERT_UEQ(c.n_listen, 1);

    f = fopen(path, "we");
    ASSERT_NOT_NULL(f);
    fputs("port = 6001\nbogus = 1\n", f);
    ASSERT_OK(fclose(f));
    ASSERT_ERR(config_load_file(&c, path, err, sizeof(err)), EINVAL);
    ASSERT_NOT_NULL(strstr(err, path));
    ASSERT_NOT_NULL(strstr(err, "line 2: unknown key 'bogus'"));

    f = fopen(path, "we");
    ASSERT_NOT_NULL(f);
    fwrite("port = 1\n\0port = 2\n", 1, 19, f);
    ASSERT_OK(fclose(f));
    ASSERT_ERR(config_load_file(&c, path, err, sizeof(err)), EINVAL);
    ASSERT_NOT_NULL(strstr(err, "NUL"));
    config_done(&c);

    (void) unlink(path);
    (void) rmdir(dir);
    assert_no_leaks();
}

/* ---- net_addr ---- */

TEST(net_addr_round_trips)
{
    static const char *const canon[] = {
            "tcp:127.0.0.1:49983",
            "tcp:0.0.0.0:0",
            "tcp:0.0.0.0:65535",
            "tcp:[::1]:8080",
            "tcp:[::]:49983",
            "tcp:[fe80::1]:1",
            "tcp:[2001:db8::ff00:42:8329]:443",
            "unix:/run/guestd/guestd.sock",
            "unix:relative.sock",
            "unix:/tmp/with space",
            "vsock:49983",
            "vsock:0",
            "vsock:4294967295",
    };
    for (size_t i = 0; i < sizeof(canon) / sizeof(canon[0]); i++) {
        struct net_addr a, b;
        char s[NET_ADDR_MAX];
        if (net_addr_parse(canon[i], &a) != 0)
            test_fail(__FILE__, __LINE__, "net_addr_parse(\"%s\") failed", canon[i]);
        net_addr_format(&a, s, sizeof(s));
        ASSERT_STR_EQ(s, canon[i]);
        ASSERT_OK(net_addr_parse(s, &b));
        ASSERT_EQ(a.transport, b.transport);
        ASSERT_MEM_EQ(&a, &b, sizeof(a));
    }

    struct net_addr a;
    ASSERT_OK(net_addr_parse("tcp:localhost:80", &a));
    assert_addr(&a, "tcp:127.0.0.1:80");
    ASSERT_OK(net_addr_parse("tcp:127.0.0.1:00080", &a));
    ASSERT_UEQ(a.port, 80);
    assert_addr(&a, "tcp:127.0.0.1:80");

    /* the longest Unix path that fits sun_path with its NUL */
    char path[6 + 108];
    memcpy(path, "unix:/", 6);
    memset(path + 6, 'p', 106);
    path[112] = '\0';
    ASSERT_OK(net_addr_parse(path, &a));
    ASSERT_UEQ(strlen(a.path), 107);
    path[112] = 'p';
    path[113] = '\0';
    ASSERT_ERR(net_addr_parse(path, &a), EINVAL);

    /* overlong strings */
    char big[NET_ADDR_MAX + 8];
    memcpy(big, "unix:", 5);
    memset(big + 5, 'x', sizeof(big) - 6);
    big[sizeof(big) - 1] = '\0';
    ASSERT_ERR(net_addr_parse(big, &a), EINVAL);
}

TEST(net_addr_bad_forms)
{
    static const char *const bad[] = {
            "",
            "tcp",
            "tcp:",
            "tcp:127.0.0.1",
            "tcp::80",
            "tcp:[::1]80",
            "tcp:[]:80",
            "tcp:[::1:80",
            "tcp:::1:80",
            "tcp:a.b:80",
            "tcp:1.2.3.4:65536",
            "tcp:1.2.3.4:",
            "unix:",
            "vsock:",
            "vsock:1.5",
            "vsock:4294967296",
            "udp:1.2.3.4:5",
            "tcp:[::1]:99999",
            "tcp:[fe80::1%eth0]:80",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct net_addr a;
        memset(&a, 0x5a, sizeof(a));
        if (net_addr_parse(bad[i], &a) != -EINVAL)
            test_fail(__FILE__, __LINE__, "net_addr_parse(\"%s\") accepted", bad[i]);
        ASSERT_EQ(((unsigned char *) &a)[0], 0x5a); /* never written on failure */
    }
}

TEST_MAIN()

/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The PID-1 guard: outside PID 1, guestd must never mount, kill everything or power off. These
 * tests call every system-changing function on the development machine and check that each one
 * refuses and that nothing changed. The command-line parser is pure and tested directly.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "sys/pid1.h"

/* Reads /proc/self/mountinfo into a malloc'd string. */
static char *mountinfo(void)
{
    FILE *f = fopen("/proc/self/mountinfo", "re");
    ASSERT_NOT_NULL(f);
    size_t cap = 1 << 16, len = 0;
    char *s = malloc(cap);
    size_t n;
    while ((n = fread(s + len, 1, cap - len - 1, f)) > 0) {
        len += n;
        if (len + 1 >= cap)
            s = realloc(s, cap *= 2);
    }
    s[len] = '\0';
    fclose(f);
    return s;
}

TEST(not_pid1_here)
{
    /* Every test below relies on this: the suite never runs as PID 1. */
    ASSERT_NE(getpid(), 1);
    ASSERT_FALSE(pid1_is());
}

TEST(setup_refuses_outside_pid1)
{
    char *before = mountinfo();
    char host_before[256], host_after[256];
    ASSERT_OK(gethostname(host_before, sizeof(host_before)));
    ASSERT_ERR(pid1_setup(), EPERM);
    char *after = mountinfo();
    ASSERT_STR_EQ(after, before);
    ASSERT_OK(gethostname(host_after, sizeof(host_after)));
    ASSERT_STR_EQ(host_after, host_before);
    free(before);
    free(after);
}

TEST(kill_all_refuses_outside_pid1)
{
    /* Only harmless signals (0 and SIGCONT), so that even a broken guard could hurt nothing. */
    ASSERT_ERR(pid1_kill_all(0), EPERM);
    ASSERT_ERR(pid1_kill_all(SIGCONT), EPERM);
}

TEST(final_action_refuses_outside_pid1)
{
    ASSERT_ERR(pid1_final_action(PID1_HALT), EPERM);
    ASSERT_ERR(pid1_final_action(PID1_REBOOT), EPERM);
    ASSERT_ERR(pid1_final_action(PID1_POWEROFF), EPERM);
}

TEST(action_names)
{
    enum pid1_action a;
    ASSERT_OK(pid1_action_from_string("poweroff", &a));
    ASSERT_EQ(a, PID1_POWEROFF);
    ASSERT_OK(pid1_action_from_string("reboot", &a));
    ASSERT_EQ(a, PID1_REBOOT);
    ASSERT_OK(pid1_action_from_string("halt", &a));
    ASSERT_EQ(a, PID1_HALT);
    ASSERT_ERR(pid1_action_from_string("shutdown", &a), EINVAL);
    ASSERT_STR_EQ(pid1_action_name(PID1_REBOOT), "reboot");
}

TEST(cmdline_hostname)
{
    struct pid1_boot b;
    ASSERT_OK(pid1_parse_cmdline("console=ttyS0 quiet guestd.hostname=vm-1 panic=-1\n", &b));
    ASSERT_STR_EQ(b.hostname, "vm-1");
    ASSERT_FALSE(b.has_ip);
    ASSERT_OK(pid1_parse_cmdline("hostname=plain", &b));
    ASSERT_STR_EQ(b.hostname, "plain");
    /* guestd's own spelling wins over the generic one, whatever the order. */
    ASSERT_OK(pid1_parse_cmdline("guestd.hostname=mine hostname=other", &b));
    ASSERT_STR_EQ(b.hostname, "mine");
    ASSERT_OK(pid1_parse_cmdline("hostname=other guestd.hostname=mine", &b));
    ASSERT_STR_EQ(b.hostname, "mine");
    /* Too long for a hostname: ignored. */
    char longline[200];
    snprintf(longline, sizeof(longline), "hostname=%0120d", 0);
    ASSERT_OK(pid1_parse_cmdline(longline, &b));
    ASSERT_STR_EQ(b.hostname, "");
}

TEST(cmdline_ip)
{
    struct pid1_boot b;
    ASSERT_OK(pid1_parse_cmdline("ip=10.0.2.15::10.0.2.2:255.255.255.0:guest:eth0:off", &b));
    ASSERT_TRUE(b.has_ip);
    ASSERT_STR_EQ(b.ip, "10.0.2.15");
    ASSERT_STR_EQ(b.gateway, "10.0.2.2");
    ASSERT_STR_EQ(b.netmask, "255.255.255.0");
    ASSERT_STR_EQ(b.device, "eth0");
    ASSERT_STR_EQ(b.hostname, "guest");
    /* Device defaults to eth0; missing fields stay empty. */
    ASSERT_OK(pid1_parse_cmdline("ip=192.168.1.2", &b));
    ASSERT_TRUE(b.has_ip);
    ASSERT_STR_EQ(b.device, "eth0");
    ASSERT_STR_EQ(b.gateway, "");
    /* dhcp and garbage are not static addresses. */
    ASSERT_OK(pid1_parse_cmdline("ip=dhcp", &b));
    ASSERT_FALSE(b.has_ip);
    ASSERT_OK(pid1_parse_cmdline("ip=10.0.2.15::bogus:also-bogus", &b));
    ASSERT_TRUE(b.has_ip);
    ASSERT_STR_EQ(b.gateway, "");
    ASSERT_STR_EQ(b.netmask, "");
}

TEST_MAIN()

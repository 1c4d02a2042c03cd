/* SPDX-License-Identifier: Apache-2.0 */
#include "sys/pid1.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/cleanup.h"
#include "base/log.h"
#include "base/macro.h"

/* Longest kernel command line read (the kernel's own limit on x86 is 2 KiB; be generous). */
#define PID1_CMDLINE_MAX 8192

bool pid1_is(void)
{
    return getpid() == 1;
}

int pid1_action_from_string(const char *s, enum pid1_action *ret)
{
    if (streq(s, "poweroff"))
        *ret = PID1_POWEROFF;
    else if (streq(s, "reboot"))
        *ret = PID1_REBOOT;
    else if (streq(s, "halt"))
        *ret = PID1_HALT;
    else
        return -EINVAL;
    return 0;
}

const char *pid1_action_name(enum pid1_action a)
{
    switch (a) {
    case PID1_POWEROFF:
        return "poweroff";
    case PID1_REBOOT:
        return "reboot";
    case PID1_HALT:
        return "halt";
    }
    return "?";
}

/* Copies field `n` (0-based) of a ':'-separated list into out; empty if missing. */
static void ip_field(const char *v, int n, char *out, size_t len)
{
    const char *p = v;
    for (int i = 0; i < n && p; i++) {
        p = strchr(p, ':');
        if (p)
            p++;
    }
    out[0] = '\0';
    if (!p)
        return;
    size_t k = strcspn(p, ":");
    if (k >= len)
        k = len - 1;
    memcpy(out, p, k);
    out[k] = '\0';
}

static bool valid_ipv4(const char *s)
{
    struct in_addr a;
    return inet_pton(AF_INET, s, &a) == 1;
}

int pid1_parse_cmdline(const char *cmdline, struct pid1_boot *ret)
{
    memset(ret, 0, sizeof(*ret));
    const char *p = cmdline;
    while (*p) {
        while (*p == ' ' || *p == '\t' || *p == '\n')
            p++;
        size_t n = strcspn(p, " \t\n");
        if (n == 0)
            break;
        char word[512];
        if (n < sizeof(word)) {
            memcpy(word, p, n);
            word[n] = '\0';
            const char *v = NULL;
            if (strncmp(word, "guestd.hostname=", 16) == 0)
                v = word + 16;
            else if (strncmp(word, "hostname=", 9) == 0 && !ret->hostname[0])
                v = word + 9;
            if (v && strlen(v) < sizeof(ret->hostname))
                strcpy(ret->hostname, v);
            if (strncmp(word, "ip=", 3) == 0) {
                const char *ip = word + 3;
                char host[65];
                ip_field(ip, 0, ret->ip, sizeof(ret->ip));
                ip_field(ip, 2, ret->gateway, sizeof(ret->gateway));
                ip_field(ip, 3, ret->netmask, sizeof(ret->netmask));
                ip_field(ip, 4, host, sizeof(host));
                ip_field(ip, 5, ret->device, sizeof(ret->device));
                ret->has_ip = valid_ipv4(ret->ip);
                if (ret->has_ip && !ret->device[0])
                    strcpy(ret->device, "eth0");
                if (ret->gateway[0] && !valid_ipv4(ret->gateway))
                    ret->gateway[0] = '\0';
                if (ret->netmask[0] && !valid_ipv4(ret->netmask))
                    ret->netmask[0] = '\0';
                if (host[0] && !ret->hostname[0])
                    strcpy(ret->hostname, host);
            }
        }
        p += n;
    }
    return 0;
}

/* --- setup ----------------------------------------------------------------------------------- */

struct mount_spec {
    const char *source, *target, *fstype;
    unsigned long flags;
    const char *data;
    mode_t mode;
};

static bool is_mountpoint(const char *target)
{
    struct stat a, b;
    char parent[256];
    if (stat(target, &a) < 0)
        return false;
    (void) snprintf(parent, sizeof(parent), "%s/..", target);
    if (stat(parent, &b) < 0)
        return false;
    return a.st_dev != b.st_dev || a.st_ino == b.st_ino;
}

static bool have_filesystem(const char *fstype)
{
    _cleanup_fclose_ FILE *f = fopen("/proc/filesystems", "re");
    char line[128];
    if (!f)
        return false;
    while (fgets(line, sizeof(line), f)) {
        char *tab = strrchr(line, '\t');
        const char *name = tab ? tab + 1 : line;
        size_t n = strcspn(name, "\n");
        if (strlen(fstype) == n && strncmp(name, fstype, n) == 0)
            return true;
    }
    return false;
}

static void setup_mounts(void)
{
    static const struct mount_spec mounts[] = {
            {"proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL, 0555},
            {"sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL, 0555},
            {"devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755", 0755},
            {"devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "gid=5,mode=620,ptmxmode=666",
             0755},
            {"tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777", 01777},
            {"tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755", 0755},
            {"tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777", 01777},
            {"cgroup2", "/sys/fs/cgroup", "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL, 0755},
    };
    for (size_t i = 0; i < ARRAY_SIZE(mounts); i++) {
        const struct mount_spec *m = &mounts[i];
        /* cgroup2 only where the kernel has it (needs /proc for the check). */
        if (streq(m->fstype, "cgroup2") && !have_filesystem("cgroup2"))
            continue;
        if (mkdir(m->target, m->mode) < 0 && errno != EEXIST) {
            log_warn("pid1: cannot create %s: %s", m->target, strerror(errno));
            continue;
        }
        if (is_mountpoint(m->target))
            continue;
        if (mount(m->source, m->target, m->fstype, m->flags, m->data) < 0)
            log_warn("pid1: cannot mount %s on %s: %s", m->fstype, m->target, strerror(errno));
        else
            log_debug("pid1: mounted %s on %s", m->fstype, m->target);
    }
    /* Programs open /dev/ptmx; with a devpts instance it must point there. */
    struct stat st;
    if (lstat("/dev/ptmx", &st) < 0 && symlink("pts/ptmx", "/dev/ptmx") < 0)
        log_warn("pid1: cannot create /dev/ptmx: %s", strerror(errno));
}

/* Makes sure fds 0-2 exist (the console), so that logs reach it and children inherit it. */
static void setup_console(void)
{
    for (int fd = 0; fd < 3; fd++) {
        if (fcntl(fd, F_GETFD) >= 0)
            continue;
        int c = open("/dev/console", O_RDWR | O_NOCTTY);
        if (c < 0)
            c = open("/dev/null", O_RDWR);
        if (c >= 0 && c != fd) {
            (void) dup2(c, fd);
            (void) close(c);
        }
    }
}

static int ifreq_socket(void)
{
    return socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
}

static int if_up(int s, const char *dev)
{
    struct ifreq ifr;
    memset(&ifr, 0, sizeof(ifr));
    (void) snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", dev);
    if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0)
        return -errno;
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
        return -errno;
    return 0;
}

static int set_addr(int s, const char *dev, unsigned long req, const char *addr)
{
    struct ifreq ifr;
    struct sockaddr_in *sin = (struct sockaddr_in *) &ifr.ifr_addr;
    memset(&ifr, 0, sizeof(ifr));
    (void) snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", dev);
    sin->sin_family = AF_INET;
    if (inet_pton(AF_INET, addr, &sin->sin_addr) != 1)
        return -EINVAL;
    return ioctl(s, req, &ifr) < 0 ? -errno : 0;
}

static int add_default_route(int s, const char *dev, const char *gw)
{
    struct rtentry rt;
    char devname[IFNAMSIZ];
    memset(&rt, 0, sizeof(rt));
    struct sockaddr_in *dst = (struct sockaddr_in *) &rt.rt_dst;
    struct sockaddr_in *mask = (struct sockaddr_in *) &rt.rt_genmask;
    struct sockaddr_in *gate = (struct sockaddr_in *) &rt.rt_gateway;
    dst->sin_family = mask->sin_family = gate->sin_family = AF_INET;
    if (inet_pton(AF_INET, gw, &gate->sin_addr) != 1)
        return -EINVAL;
    (void) snprintf(devname, sizeof(devname), "%s", dev);
    rt.rt_dev = devname;
    rt.rt_flags = RTF_UP | RTF_GATEWAY;
    return ioctl(s, SIOCADDRT, &rt) < 0 ? -errno : 0;
}

static void setup_network(const struct pid1_boot *boot)
{
    _cleanup_close_ int s = ifreq_socket();
    if (s < 0) {
        log_warn("pid1: no socket for network setup: %s", strerror(errno));
        return;
    }
    int r = if_up(s, "lo");
    if (r < 0)
        log_warn("pid1: cannot bring up lo: %s", strerror(-r));
    if (!boot->has_ip)
        return;
    r = set_addr(s, boot->device, SIOCSIFADDR, boot->ip);
    if (r == 0 && boot->netmask[0])
        r = set_addr(s, boot->device, SIOCSIFNETMASK, boot->netmask);
    if (r == 0)
        r = if_up(s, boot->device);
    if (r == 0 && boot->gateway[0])
        r = add_default_route(s, boot->device, boot->gateway);
    if (r < 0)
        log_warn("pid1: cannot configure %s from ip=: %s", boot->device, strerror(-r));
    else
        log_info("pid1: %s is %s%s%s", boot->device, boot->ip, boot->gateway[0] ? " via " : "",
                 boot->gateway);
}

int pid1_setup(void)
{
    if (!pid1_is())
        return -EPERM;
    setup_mounts();
    setup_console();
    char cmdline[PID1_CMDLINE_MAX] = "";
    _cleanup_close_ int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, cmdline, sizeof(cmdline) - 1);
        cmdline[n > 0 ? n : 0] = '\0';
    }
    struct pid1_boot boot;
    (void) pid1_parse_cmdline(cmdline, &boot);
    if (boot.hostname[0] && sethostname(boot.hostname, strlen(boot.hostname)) < 0)
        log_warn("pid1: cannot set the hostname: %s", strerror(errno));
    setup_network(&boot);
    return 0;
}

int pid1_kill_all(int sig)
{
    if (!pid1_is())
        return -EPERM;
    /* As PID 1, kill(-1) reaches every process except guestd itself. */
    if (kill(-1, sig) < 0 && errno != ESRCH)
        return -errno;
    return 0;
}

int pid1_final_action(enum pid1_action a)
{
    if (!pid1_is())
        return -EPERM;
    sync();
    int cmd = a == PID1_REBOOT ? RB_AUTOBOOT : a == PID1_HALT ? RB_HALT_SYSTEM : RB_POWER_OFF;
    if (reboot(cmd) < 0)
        return -errno;
    return 0;
}

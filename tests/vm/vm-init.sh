#!/bin/busybox sh
# SPDX-License-Identifier: Apache-2.0
#
# /init of the VM test initramfs (tests/vm/README.md). run-vm copies this file verbatim and
# writes /etc/vm-init.conf next to it:
#   VM_MODE         pid1 | child
#   VM_MODULES      the modules under /lib/modules, in load order
#   VM_NET          1: configure eth0 for QEMU's user network (10.0.2.15/24 via 10.0.2.2)
#   VM_SUITE_ARGS   vm-suite's arguments, shell-quoted (for eval)
#   VM_GUESTD_ARGS  extra guestd arguments, shell-quoted (for eval)
# Output goes to the serial console; the runner reads the suite's TAP lines and the exit marker
# @@VMTEST-EXIT=<rc>@@ from there.

/bin/busybox mkdir -p /proc /sys /dev /bin /sbin /usr/bin /usr/sbin
/bin/busybox mount -t proc -o nosuid,nodev,noexec proc /proc
/bin/busybox mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
/bin/busybox mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev
# Without a /dev/console in the archive the kernel may have started us without fds 0-2.
[ -t 1 ] || exec </dev/console >/dev/console 2>&1
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin HOME=/root

vm_fail() {
    echo "vm-init: $*"
    sync
    poweroff -f
    sleep 60
}

# shellcheck source=/dev/null
. /etc/vm-init.conf || vm_fail "cannot read /etc/vm-init.conf"

for m in $VM_MODULES; do
    insmod "/lib/modules/$m" || vm_fail "insmod $m failed"
done
chown 1000:1000 /home/user

ip link set lo up || echo "vm-init: cannot bring lo up"
if [ "$VM_NET" = 1 ]; then
    i=0
    while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 50 ]; do
        sleep 0.1
        i=$((i + 1))
    done
    if ! { ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 &&
        ip route add default via 10.0.2.2; }; then
        vm_fail "cannot configure eth0"
    fi
fi

eval "set -- $VM_SUITE_ARGS"
case $VM_MODE in
pid1)
    # The suite runs in the background; guestd replaces this shell as PID 1, mounts the rest
    # itself, and must power the VM off when the suite asks. A small subshell waits for the
    # suite, so that a crash is reported at once (with a marker) instead of at the timeout.
    (
        /bin/vm-suite "$@"
        rc=$?
        echo "vm-init: vm-suite exited with status $rc"
        [ $rc -lt 128 ] || echo "@@VMTEST-EXIT=$rc@@"
    ) &
    eval "exec /sbin/guestd --log-level info $VM_GUESTD_ARGS"
    ;;
child)
    # What guestd mounts as PID 1 (agent/sys/pid1.c), since here it is an ordinary child.
    mkdir -p /dev/pts /dev/shm /run /tmp /sys/fs/cgroup
    mount -t devpts -o nosuid,noexec,gid=5,mode=620,ptmxmode=666 devpts /dev/pts
    mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /dev/shm
    mount -t tmpfs -o nosuid,nodev,mode=0755 tmpfs /run
    mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /tmp
    if grep -qw cgroup2 /proc/filesystems; then
        mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup
    fi
    [ -e /dev/ptmx ] || ln -s pts/ptmx /dev/ptmx
    mkdir -p /run/guestd
    eval "/sbin/guestd --listen vsock:49983 --listen unix:/run/guestd/guestd.sock $VM_GUESTD_ARGS &"
    /bin/vm-suite "$@"
    rc=$?
    echo "vm-init: vm-suite exited with status $rc"
    # A suite killed by a signal never printed its marker: print one for it (the runner
    # takes the last marker, so a crash after the suite's own marker still counts).
    [ $rc -lt 128 ] || echo "@@VMTEST-EXIT=$rc@@"
    sync
    poweroff -f
    sleep 60
    ;;
*)
    vm_fail "unknown VM_MODE '$VM_MODE'"
    ;;
esac

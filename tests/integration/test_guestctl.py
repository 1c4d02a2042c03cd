# SPDX-License-Identifier: Apache-2.0
"""guestctl, the operator CLI, against a real guestd over the Unix socket and TCP: exec (exit
codes, byte-exact output, stdin, env, cwd, user, timeout, spawn failures, Ctrl-C), shell in a
pseudo-terminal, ps/kill/result/attach, ls/stat/mkdir/mv/rm, init with a token, health,
version, --json and --proto, and usage errors."""
import fcntl
import hashlib
import json
import os
import pty
import select
import signal
import struct
import subprocess
import termios
import time

import pytest

from conftest import GUESTD, wait_until

HERE = os.path.dirname(os.path.abspath(__file__))


def find_guestctl():
    """guestctl sits in the build tree's tools/ directory, next to agent/ with guestd."""
    candidates = []
    if os.environ.get("GUESTCTL_BIN"):
        candidates.append(os.environ["GUESTCTL_BIN"])
    if os.environ.get("GUESTD_BUILD_ROOT"):
        candidates.append(os.path.join(os.environ["GUESTD_BUILD_ROOT"], "tools", "guestctl"))
    candidates.append(os.path.join(os.path.dirname(os.path.abspath(GUESTD)), "..", "tools",
                                   "guestctl"))
    candidates.append(os.path.join(HERE, "..", "..", "build", "tools", "guestctl"))
    for c in candidates:
        if os.path.isfile(c) and os.access(c, os.X_OK):
            return os.path.realpath(c)
    raise AssertionError("guestctl not found (build it with ninja, or set GUESTCTL_BIN); "
                         f"looked at {candidates}")


GUESTCTL = find_guestctl()
TOKEN = hashlib.sha256(b"guestctl-token").hexdigest()
ROOT = os.geteuid() == 0


def have_user():
    try:
        import pwd
        pwd.getpwnam("user")
        return True
    except KeyError:
        return False


class Ctl:
    """Runs guestctl against one guestd over one transport."""

    def __init__(self, g, transport):
        self.g = g
        self.transport = transport
        self.addr = f"unix:{g.sock}" if transport == "unix" else f"tcp:127.0.0.1:{g.port}"

    def env(self, extra=None):
        env = {k: v for k, v in os.environ.items()
               if k not in ("GUESTCTL_ADDR", "GUESTCTL_TOKEN")}
        env["GUESTCTL_ADDR"] = self.addr
        env.update(extra or {})
        return env

    def argv(self, *args):
        return [GUESTCTL, *args]

    def run(self, *args, input=None, timeout=30, env=None, stdin=None):
        kw = {"input": input} if input is not None else {
            "stdin": stdin if stdin is not None else subprocess.DEVNULL}
        return subprocess.run(self.argv(*args), capture_output=True, timeout=timeout,
                              env=self.env(env), **kw)

    def popen(self, *args, env=None, **kw):
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        return subprocess.Popen(self.argv(*args), env=self.env(env), **kw)

    def ok(self, *args, **kw):
        r = self.run(*args, **kw)
        assert r.returncode == 0, (args, r.returncode, r.stdout[-2000:], r.stderr)
        return r

    def json(self, *args, **kw):
        return json.loads(self.ok(*args, **kw).stdout)


@pytest.fixture(params=["unix", "tcp"])
def ctl(request, guestd):
    return Ctl(guestd, request.param)


@pytest.fixture
def uctl(guestd):
    """Over the Unix socket only (for cases where the transport does not matter)."""
    return Ctl(guestd, "unix")


def err_text(r):
    return r.stderr.decode(errors="replace")


# --- exec: status, output, input -------------------------------------------------------------

def test_exit_code_passes_through(ctl):
    assert ctl.run("exec", "--", "sh", "-c", "exit 7").returncode == 7
    assert ctl.run("exec", "--", "true").returncode == 0
    assert ctl.run("exec", "--", "sh", "-c", "exit 255").returncode == 255


def test_signal_exit_is_128_plus_signal(ctl):
    r = ctl.run("exec", "--", "sh", "-c", "kill -9 $$")
    assert r.returncode == 137, r
    r = ctl.run("exec", "--", "sh", "-c", "kill -TERM $$")
    assert r.returncode == 143, r


def test_stdout_binary_exact(ctl, tmp_path):
    f = tmp_path / "rand.bin"
    r = ctl.ok("exec", "--", "sh", "-c", f"head -c 1000000 /dev/urandom | tee {f}")
    assert len(r.stdout) == 1000000
    assert r.stdout == f.read_bytes()
    assert r.stderr == b""


def test_all_byte_values(ctl):
    script = "printf '" + "".join(f"\\{b:03o}" for b in range(256)) + "'"
    r = ctl.ok("exec", "--", "sh", "-c", script)
    assert r.stdout == bytes(range(256))


def test_stderr_separate(ctl):
    r = ctl.ok("exec", "--", "sh", "-c", "echo out; echo err >&2; echo out2")
    assert r.stdout == b"out\nout2\n"
    assert r.stderr == b"err\n"


def test_stdin_piped(ctl):
    r = ctl.ok("exec", "--", "cat", input=b"hello\n")
    assert r.stdout == b"hello\n"


def test_stdin_large_binary(ctl, tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 17)
    r = ctl.ok("exec", "--", "sha256sum", input=data, timeout=60)
    assert r.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()


def test_stdin_eof_closes_remote_stdin(ctl):
    # /dev/null: cat sees EOF at once and ends.
    r = ctl.run("exec", "--", "cat", timeout=15)
    assert r.returncode == 0 and r.stdout == b""


def test_no_stdin_flag(uctl):
    p = uctl.popen("exec", "-n", "--", "sh", "-c", "cat; echo done", stdin=subprocess.PIPE)
    out, _ = p.communicate(timeout=15)  # stdin stays open locally: -n must not wait for it
    assert p.returncode == 0 and out == b"done\n"


def test_env_and_cwd(ctl, tmp_path):
    r = ctl.ok("exec", "--env", "A=1", "-e", "B=x y", "--env", "C=", "--cwd", str(tmp_path),
               "--", "sh", "-c", 'printf "%s|%s|%s|%s" "$A" "$B" "${C-unset}" "$(pwd)"')
    assert r.stdout.decode() == f"1|x y||{tmp_path}"


def test_command_flags_are_not_parsed(uctl):
    r = uctl.ok("exec", "ls", "-la", "/")
    assert b".." in r.stdout
    r = uctl.ok("exec", "--", "sh", "-c", 'echo "$@"', "sh", "--help", "-x")
    assert r.stdout == b"--help -x\n"


@pytest.mark.skipif(not ROOT or not have_user(), reason="needs root and the user 'user'")
def test_user(ctl):
    assert ctl.ok("exec", "--user", "user", "--", "id", "-un").stdout == b"user\n"
    assert ctl.ok("--user", "user", "exec", "--", "id", "-un").stdout == b"user\n"
    assert ctl.ok("exec", "-u", "root", "--", "id", "-un").stdout == b"root\n"


def test_unknown_user(uctl):
    r = uctl.run("exec", "--user", "no-such-user-x", "--", "true")
    assert r.returncode == 1
    assert "guestctl: exec: " in err_text(r) and "unauthenticated" in err_text(r)


def test_timeout_kills(ctl):
    t0 = time.monotonic()
    r = ctl.run("exec", "--timeout", "1", "--", "sleep", "10", timeout=20)
    assert time.monotonic() - t0 < 8
    assert r.returncode != 0
    assert r.returncode == 124
    assert "deadline" in err_text(r), err_text(r)


def test_spawn_failure_127(ctl):
    r = ctl.run("exec", "--", "/nonexistent/cmd", "x")
    assert r.returncode == 127, r
    e = err_text(r)
    assert e.startswith("guestctl: exec: ") and "No such file or directory" in e, e
    assert "exec" in e


def test_spawn_failure_not_executable_126(uctl, tmp_path):
    f = tmp_path / "noexec.sh"
    f.write_text("#!/bin/sh\necho hi\n")
    f.chmod(0o644)
    r = uctl.run("exec", "--", str(f))
    assert r.returncode == 126, r
    assert "Permission denied" in err_text(r)


def test_bad_cwd_is_remote_error(uctl):
    r = uctl.run("exec", "--cwd", "/nonexistent/dir", "--", "true")
    assert r.returncode == 1
    e = err_text(r)
    assert e.startswith("guestctl: exec: ") and "invalid_argument" in e, e


def test_proto_codec(ctl, tmp_path):
    f = tmp_path / "rand.bin"
    r = ctl.ok("--proto", "exec", "--", "sh", "-c", f"head -c 300000 /dev/urandom | tee {f}")
    assert r.stdout == f.read_bytes()
    r = ctl.ok("exec", "--proto", "--", "cat", input=b"\x00\xff binary \n")
    assert r.stdout == b"\x00\xff binary \n"
    assert ctl.run("exec", "--proto", "--", "sh", "-c", "exit 9").returncode == 9


def test_closed_local_stdout_ends_guestctl(uctl):
    r = subprocess.run(["sh", "-c", f"{GUESTCTL} exec -n -- yes | head -n 2"],
                       capture_output=True, timeout=30, env=uctl.env())
    assert r.stdout == b"y\ny\n"


def test_exec_id_and_result(uctl):
    r = uctl.run("exec", "--exec-id", "gctl-id-1", "--", "sh", "-c", "echo once; exit 3")
    assert r.returncode == 3 and r.stdout == b"once\n"
    res = uctl.json("result", "--exec-id", "gctl-id-1", "--json")["result"]
    assert res["execId"] == "gctl-id-1"
    assert res["cause"] == "EXIT_CAUSE_EXITED" and res["exitCode"] == 3
    # A retry with the same id does not run the command again: it replays the first run.
    r = uctl.run("exec", "--exec-id", "gctl-id-1", "--", "sh", "-c", "echo once; exit 3")
    assert r.returncode == 3 and r.stdout == b"once\n"


# --- Ctrl-C ------------------------------------------------------------------------------------

def wait_for_line(p, needle, timeout=15):
    """Reads p.stdout until needle appears (returns what was read)."""
    buf = b""
    deadline = time.monotonic() + timeout
    fd = p.stdout.fileno()
    while needle not in buf:
        left = deadline - time.monotonic()
        assert left > 0, f"timed out waiting for {needle!r}; got {buf!r}"
        r, _, _ = select.select([fd], [], [], left)
        if r:
            chunk = os.read(fd, 65536)
            assert chunk, f"EOF before {needle!r}; got {buf!r}"
            buf += chunk
    return buf


def test_ctrl_c_forwards_sigint(ctl):
    p = ctl.popen("exec", "--", "sh", "-c",
                  'trap "echo got-int; exit 5" INT; echo ready; while :; do sleep 0.1; done')
    wait_for_line(p, b"ready")
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=15)
    assert p.returncode == 5
    assert b"got-int" in out


def test_second_ctrl_c_kills(uctl):
    p = uctl.popen("exec", "--", "sh", "-c",
                   'trap "echo ignored" INT; echo ready; while :; do sleep 0.1; done')
    wait_for_line(p, b"ready")
    p.send_signal(signal.SIGINT)
    wait_for_line(p, b"ignored")
    p.send_signal(signal.SIGINT)
    p.communicate(timeout=15)
    assert p.returncode == 137


def test_ctrl_c_plain_command_130(uctl):
    p = uctl.popen("exec", "--", "sh", "-c", "echo ready; exec sleep 30")
    wait_for_line(p, b"ready")
    p.send_signal(signal.SIGINT)
    p.communicate(timeout=15)
    assert p.returncode == 130


# --- ps, kill, result, attach ------------------------------------------------------------------

def start_tagged(c, tag, script):
    p = c.popen("exec", "--tag", tag, "-n", "--", "sh", "-c", script)
    p.early = wait_for_line(p, b"started")

    def listed():
        return [x for x in c.json("ps", "--json").get("processes", []) if x.get("tag") == tag]
    info = wait_until(listed, what=f"process {tag} in ps")[0]
    return p, info["pid"]


def test_ps_kill_result_attach(ctl):
    p, pid = start_tagged(ctl, "bg1", "echo started; echo to-err >&2; exec sleep 60")
    try:
        table = ctl.ok("ps").stdout.decode()
        assert table.splitlines()[0].split() == ["PID", "TAG", "COMMAND"]
        line = [x for x in table.splitlines() if x.split()[0] == str(pid)][0]
        assert "bg1" in line and "sh -c" in line and "'echo started;" in line

        res = ctl.json("result", "bg1", "--json")["result"]
        assert res["cause"] == "EXIT_CAUSE_RUNNING" and res["pid"] == pid
        human = ctl.ok("result", str(pid)).stdout.decode()
        assert "running" in human and str(pid) in human

        a = ctl.popen("attach", "bg1")
        a.early = wait_for_line(a, b"started")

        r = ctl.run("kill", "-s", "TERM", "--scope", "group", "bg1")
        assert r.returncode == 0, r
        out, err = p.communicate(timeout=15)
        assert p.returncode == 143
        assert p.early + out == b"started\n" and err == b"to-err\n"
        aout, aerr = a.communicate(timeout=15)
        assert a.returncode == 143
        assert a.early + aout == b"started\n" and aerr == b"to-err\n"

        res = ctl.json("result", "--json", str(pid))["result"]
        assert res["cause"] == "EXIT_CAUSE_SIGNALED_BY_CLIENT" and res["signal"] == 15
        assert res["stdoutBytes"] == "8"
        human = ctl.ok("result", "bg1").stdout.decode()
        assert "SIGTERM" in human

        # Replay after the end, from an offset.
        r = ctl.run("attach", "--from", "3", "bg1")
        assert r.returncode == 143 and r.stdout == b"rted\n" and r.stderr == b"err\n"
        # Not running any more: ps no longer lists it and kill says so.
        assert str(pid) not in ctl.ok("ps").stdout.decode().split()
        r = ctl.run("kill", "bg1")
        assert r.returncode == 1 and "failed_precondition" in err_text(r)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_kill_shorthand_and_numbers(uctl):
    p, pid = start_tagged(uctl, "bg2", "echo started; exec sleep 60")
    try:
        uctl.ok("kill", "-9", str(pid))
        p.communicate(timeout=15)
        assert p.returncode == 137
    finally:
        if p.poll() is None:
            p.kill()
    p, pid = start_tagged(uctl, "bg3", "echo started; exec sleep 60")
    try:
        uctl.ok("kill", "-s", "sigusr1", "bg3")
        p.communicate(timeout=15)
        assert p.returncode == 128 + signal.SIGUSR1
    finally:
        if p.poll() is None:
            p.kill()


def test_not_found_targets(ctl):
    for args in (["result", "no-such-tag"], ["kill", "no-such-tag"], ["attach", "4000000"],
                 ["result", "--exec-id", "nope"]):
        r = ctl.run(*args)
        assert r.returncode == 1, (args, r)
        assert f"guestctl: {args[0]}: " in err_text(r) and "not_found" in err_text(r), r


def test_attach_reports_gaps(guestd_factory, tmp_path):
    g = guestd_factory("--output-log-cap", "65536")
    c = Ctl(g, "unix")
    n = 1024 * 1024
    data = os.urandom(n)
    f = tmp_path / "big.bin"
    f.write_bytes(data)
    r = c.run("exec", "--tag", "gap", "--", "cat", str(f))
    assert r.returncode == 0 and r.stdout == data
    r = c.run("attach", "gap")
    assert r.returncode == 0
    msg = err_text(r).strip()
    lost = n - len(r.stdout)
    assert 0 < len(r.stdout) <= 65536
    assert msg == f"guestctl: {lost} bytes of stdout were lost", msg
    assert r.stdout == data[lost:]


# --- filesystem --------------------------------------------------------------------------------

def test_fs_commands(ctl, tmp_path):
    d = tmp_path / "fs"
    ctl.ok("mkdir", str(d / "a" / "b"))
    assert (d / "a" / "b").is_dir()
    r = ctl.run("mkdir", str(d / "a"))
    assert r.returncode == 1 and "already_exists" in err_text(r)
    ctl.ok("mkdir", "-p", str(d / "a"), str(d / "c"))
    assert (d / "c").is_dir()
    (d / "f.txt").write_bytes(b"12345")
    os.symlink("a", d / "link")

    assert ctl.ok("ls", str(d)).stdout.decode().split("\n") == ["a", "c", "f.txt", "link", ""]
    long = ctl.ok("ls", "-l", str(d)).stdout.decode().splitlines()
    f_line = [x for x in long if x.endswith(" f.txt")][0]
    assert f_line.startswith("-rw") and " 5 " in f_line
    assert [x for x in long if x.endswith(f"link -> {d / 'a'}")]
    deep = ctl.ok("ls", "--depth", "2", str(d)).stdout.decode().split()
    assert str(d / "a" / "b") in deep
    listing = ctl.json("ls", "--json", str(d))
    names = sorted(e["name"] for e in listing["entries"])
    assert names == ["a", "c", "f.txt", "link"]

    st = ctl.json("stat", "--json", str(d / "f.txt"))["entry"]
    assert st["type"] == "FILE_TYPE_FILE" and st["size"] == "5" and st["path"] == str(d / "f.txt")
    human = ctl.ok("stat", str(d / "a")).stdout.decode()
    assert "directory" in human and str(d / "a") in human

    ctl.ok("mv", str(d / "f.txt"), str(d / "g.txt"))
    assert not (d / "f.txt").exists() and (d / "g.txt").read_bytes() == b"12345"

    r = ctl.run("rm", str(d / "a"))
    assert r.returncode == 1 and "is a directory" in err_text(r)
    assert (d / "a").is_dir()
    ctl.ok("rm", str(d / "link"))  # a symlink to a directory is not a directory
    assert (d / "a").is_dir() and not os.path.lexists(d / "link")
    ctl.ok("rm", str(d / "g.txt"))
    ctl.ok("rm", "-r", str(d / "a"))
    assert not (d / "a").exists()
    r = ctl.run("rm", str(d / "nope"))
    assert r.returncode == 1 and "not_found" in err_text(r)
    ctl.ok("rm", "-f", str(d / "nope"))
    r = ctl.run("ls", str(d / "nope"))
    assert r.returncode == 1
    assert err_text(r).startswith(f"guestctl: ls: listing '{d / 'nope'}': not_found: ")


def test_fs_proto_codec(ctl, tmp_path):
    d = tmp_path / "p"
    d.mkdir()
    (d / "x").write_text("x")
    listing = ctl.json("--proto", "ls", "--json", str(d))
    assert [e["name"] for e in listing["entries"]] == ["x"]


# --- init, token, health, version ------------------------------------------------------------

def test_init_token_env_user(guestd, tmp_path):
    tcp = Ctl(guestd, "tcp")
    unix = Ctl(guestd, "unix")
    tf = tmp_path / "token"
    tf.write_text(TOKEN + "\n")
    r = tcp.run("init", "--token-file", str(tf), "--env", "FROM_INIT=yes")
    assert r.returncode == 0 and r.stdout == b"" and r.stderr == b"", r

    r = tcp.run("exec", "--", "true")
    assert r.returncode == 1
    e = err_text(r)
    assert e.startswith("guestctl: exec: ") and "unauthenticated" in e and "--token" in e, e
    r = tcp.run("ls", "/", env={"GUESTCTL_TOKEN": "wrong"})
    assert r.returncode == 1 and "unauthenticated" in err_text(r)

    assert tcp.ok("--token", TOKEN, "exec", "--", "sh", "-c",
                  "echo $FROM_INIT").stdout == b"yes\n"
    assert tcp.ok("exec", "--", "true", env={"GUESTCTL_TOKEN": TOKEN}).returncode == 0
    # /health stays open, as in envd.
    tcp.ok("health")
    if ROOT:
        # root on the Unix socket is trusted by construction.
        unix.ok("exec", "--", "true")

    # A second init with the token kept (it is sent again) changes the env only.
    tcp.ok("init", "--env", "OTHER=1", env={"GUESTCTL_TOKEN": TOKEN})
    assert tcp.run("exec", "--", "true").returncode == 1
    assert tcp.ok("exec", "--", "sh", "-c", 'echo "${FROM_INIT-unset} $OTHER"',
                  env={"GUESTCTL_TOKEN": TOKEN}).stdout == b"unset 1\n"

    if ROOT and have_user():
        tcp.ok("init", "--user", "user", "--workdir", "/tmp", env={"GUESTCTL_TOKEN": TOKEN})
        r = tcp.ok("exec", "--", "sh", "-c", "id -un; pwd", env={"GUESTCTL_TOKEN": TOKEN})
        assert r.stdout == b"user\n/tmp\n"

    # A wrong token cannot replace the token.
    bad = tmp_path / "bad"
    bad.write_text("x" * 64)
    r = tcp.run("init", "--token-file", str(bad), env={"GUESTCTL_TOKEN": "nope"})
    assert r.returncode == 1
    assert err_text(r).startswith("guestctl: init: POST /init: unauthenticated: HTTP 401")


def test_init_token_file_problems(uctl, tmp_path):
    r = uctl.run("init", "--token-file", str(tmp_path / "missing"))
    assert r.returncode == 1 and "No such file" in err_text(r)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    r = uctl.run("init", "--token-file", str(empty))
    assert r.returncode == 1 and "no token" in err_text(r)


def test_init_token_from_stdin(guestd):
    tcp = Ctl(guestd, "tcp")
    tcp.ok("init", "--token-file", "-", input=TOKEN.encode())
    assert tcp.run("exec", "--", "true").returncode == 1
    tcp.ok("exec", "--", "true", env={"GUESTCTL_TOKEN": TOKEN})


def test_health(ctl):
    r = ctl.ok("health")
    assert r.stdout == b"ok\n"


def test_health_down(guestd_factory):
    g = guestd_factory()
    c = Ctl(g, "unix")
    g.stop()
    r = c.run("health")
    assert r.returncode == 1
    assert err_text(r).startswith("guestctl: health: GET /health: unavailable: "), err_text(r)


def test_version(ctl):
    out = ctl.ok("version").stdout.decode()
    assert out.startswith("guestctl 0.1.0\n")
    assert "guestd 0.1.0" in out and "envd-compatible 0.6.13" in out
    assert "boot id" in out and "features" in out
    assert ctl.ok("--version").stdout == b"guestctl 0.1.0\n"


def test_version_without_server(tmp_path):
    r = subprocess.run([GUESTCTL, "--to", f"unix:{tmp_path}/none.sock", "version"],
                       capture_output=True, timeout=30)
    assert r.returncode == 1
    assert r.stdout == b"guestctl 0.1.0\n"
    assert err_text(r).startswith("guestctl: version: ")


def test_metrics(ctl):
    m = json.loads(ctl.ok("metrics").stdout)
    assert m["cpu_count"] >= 1 and m["mem_total"] > 0 and "disk_total" in m
    out = ctl.ok("metrics", "--prometheus").stdout.decode()
    assert "# TYPE guestd_host_cpu_count gauge\n" in out
    assert "guestd_host_memory_total_bytes " in out and out.endswith("\n")


def test_metrics_errors(guestd_factory):
    g = guestd_factory()
    c = Ctl(g, "unix")
    assert c.run("metrics", "extra").returncode == 2
    g.stop()
    r = c.run("metrics")
    assert r.returncode == 1 and r.stdout == b""
    assert err_text(r).startswith("guestctl: metrics: GET /metrics: unavailable: "), err_text(r)


@pytest.mark.parametrize("size", [0, 1, 50 * 1024 * 1024])
def test_cp_both_ways(ctl, tmp_path, size):
    tmp_path = tmp_path / "cp"
    tmp_path.mkdir()
    data = os.urandom(size)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    remote = tmp_path / "remote.bin"
    r = ctl.ok("cp", str(src), ":" + str(remote), timeout=120)
    assert r.stderr == b"" and r.stdout == b""  # no progress when stderr is a pipe
    assert hashlib.sha256(remote.read_bytes()).digest() == hashlib.sha256(data).digest()
    back = tmp_path / "back.bin"
    r = ctl.ok("cp", ":" + str(remote), str(back), timeout=120)
    assert r.stderr == b"" and r.stdout == b""
    assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert sorted(os.listdir(tmp_path)) == ["back.bin", "remote.bin", "src.bin"]


def test_cp_into_directories(uctl, tmp_path):
    (tmp_path / "a.txt").write_bytes(b"a")
    (tmp_path / "b.txt").write_bytes(b"bb")
    rdir = tmp_path / "rdir"
    rdir.mkdir()
    uctl.ok("cp", str(tmp_path / "a.txt"), str(tmp_path / "b.txt"), ":" + str(rdir))
    assert (rdir / "a.txt").read_bytes() == b"a" and (rdir / "b.txt").read_bytes() == b"bb"
    ldir = tmp_path / "ldir"
    ldir.mkdir()
    uctl.ok("cp", ":" + str(rdir / "b.txt"), str(ldir))
    assert os.listdir(ldir) == ["b.txt"] and (ldir / "b.txt").read_bytes() == b"bb"


def test_cp_errors(uctl, tmp_path):
    tmp_path = tmp_path / "cp"
    tmp_path.mkdir()
    dest = tmp_path / "out"
    r = uctl.run("cp", ":" + str(tmp_path / "missing"), str(dest))
    assert r.returncode == 1
    assert err_text(r).startswith("guestctl: cp: downloading "), err_text(r)
    assert "not_found" in err_text(r) or "HTTP 404" in err_text(r), err_text(r)
    assert os.listdir(tmp_path) == []
    r = uctl.run("cp", str(tmp_path / "missing"), ":" + str(dest))
    assert r.returncode == 1 and "opening" in err_text(r)
    for args in (["cp", "a"], ["cp", "a", "b"], ["cp", ":a", ":b"], ["cp", ":a", "b", "c"]):
        assert uctl.run(*args).returncode == 2, args


def test_json_outputs_parse(ctl, tmp_path):
    for args in (["ps", "--json"], ["ls", "--json", str(tmp_path)],
                 ["stat", "--json", str(tmp_path)]):
        r = ctl.ok(*args)
        assert isinstance(json.loads(r.stdout), dict)
        assert r.stdout.endswith(b"\n") and r.stdout.count(b"\n") == 1


# --- usage ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    [], ["bogus"], ["exec"], ["exec", "--bogus", "x"], ["exec", "--timeout", "x", "--", "true"],
    ["exec", "--env", "NOEQUALS", "--", "true"], ["ls", "--depth"], ["ls", "--depth", "0", "/"],
    ["ls", "/", "/tmp"], ["kill", "-s", "NOSIG", "1"], ["kill"], ["kill", "--scope", "x", "1"],
    ["result"], ["result", "1", "--exec-id", "x"], ["attach", "--from", "-1", "1"], ["mv", "a"],
    ["rm"], ["mkdir"], ["stat"], ["--to", "bogus:addr", "ps"], ["--to", "tcp:nohost:1", "ps"],
    ["help", "bogus"], ["shell", "extra"], ["health", "x"], ["ps", "-z"],
])
def test_usage_errors_exit_2(uctl, args):
    r = uctl.run(*args)
    assert r.returncode == 2, (args, r)
    assert err_text(r).startswith("guestctl: "), r
    assert "Try 'guestctl help" in err_text(r)


@pytest.mark.parametrize("args", [["help"], ["--help"], ["help", "exec"], ["exec", "--help"],
                                  ["ls", "-h"], ["kill", "--help"], ["shell", "--help"]])
def test_help(args):
    r = subprocess.run([GUESTCTL, *args], capture_output=True, timeout=10)
    assert r.returncode == 0, r
    assert r.stdout.startswith(b"Usage: guestctl")
    assert b"--to ADDR" in r.stdout


def test_unreachable_is_error(tmp_path):
    r = subprocess.run([GUESTCTL, "--to", f"unix:{tmp_path}/none.sock", "ps"],
                       capture_output=True, timeout=30)
    assert r.returncode == 1
    assert err_text(r).startswith("guestctl: ps: listing processes: unavailable: ")


def test_bash_completion_lists_commands():
    path = os.path.join(HERE, "..", "..", "tools", "guestctl", "guestctl.bash-completion")
    script = f"""
source {path}
COMP_WORDS=(guestctl ''); COMP_CWORD=1; _guestctl; echo "${{COMPREPLY[*]}}"
COMP_WORDS=(guestctl exec --t); COMP_CWORD=2; _guestctl; echo "${{COMPREPLY[*]}}"
COMP_WORDS=(guestctl kill -s T); COMP_CWORD=3; _guestctl; echo "${{COMPREPLY[*]}}"
"""
    r = subprocess.run(["bash", "--norc", "-c", script], capture_output=True, timeout=10)
    assert r.returncode == 0, r
    lines = r.stdout.decode().splitlines()
    cmds = lines[0].split()
    for c in ("exec", "shell", "attach", "ps", "kill", "result", "ls", "stat", "mkdir", "mv",
              "rm", "init", "health", "metrics", "version", "help"):
        assert c in cmds, (c, cmds)
    assert set(lines[1].split()) >= {"--tty", "--timeout", "--tag", "--to", "--token"}
    assert "TERM" in lines[2].split()


# --- terminals -------------------------------------------------------------------------------

def run_in_pty(argv, env, script, cols=100, rows=30, timeout=30, on_output=None):
    """Runs argv under a new pseudo-terminal; feeds it `script` once something was printed.
    Returns (exit status, output). on_output(fd, output) may drive the session further."""
    pid, fd = pty.fork()
    if pid == 0:
        try:
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    out = b""
    sent = False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            r, _, _ = select.select([fd], [], [], 0.2)
            if r:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
            if not sent and out:
                os.write(fd, script)
                sent = True
            if on_output:
                on_output(fd, out)
        else:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    return os.waitstatus_to_exitcode(status), out


def shell_wrapper(tmp_path, inner):
    """sh script that records `stty -g` before and after running guestctl in the terminal."""
    return ["/bin/sh", "-c",
            f"stty -g > {tmp_path}/before; echo wrapper-ready; {inner}; rc=$?; "
            f"stty -g > {tmp_path}/after; exit $rc"]


def test_shell_in_pty(ctl, tmp_path):
    argv = shell_wrapper(tmp_path, f"{GUESTCTL} shell")
    status, out = run_in_pty(argv, ctl.env(), b"echo hi-$((40+2)); exit 3\n")
    assert status == 3, out
    assert b"hi-42" in out, out
    before = (tmp_path / "before").read_text()
    assert before and before == (tmp_path / "after").read_text()


def test_exec_tty_and_resize(uctl, tmp_path):
    state = {"resized": False}

    def resize(fd, out):
        if not state["resized"] and b"size1=" in out:
            state["resized"] = True
            lflag = termios.tcgetattr(fd)[3]
            state["raw"] = not lflag & (termios.ICANON | termios.ECHO)
            fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 132, 0, 0))
            time.sleep(0.5)
            os.write(fd, b"go\n")

    argv = shell_wrapper(
        tmp_path, f"{GUESTCTL} exec --tty -- sh -c 'echo size1=$(stty size); [ -t 0 ] && "
                  "echo is-tty; read x; echo size2=$(stty size); exit 4'")
    status, out = run_in_pty(argv, uctl.env(), b"", on_output=resize)
    assert status == 4, out
    assert state["raw"], "the local terminal was not in raw mode during the session"
    assert b"size1=30 100" in out and b"is-tty" in out, out
    assert b"size2=40 132" in out, out
    assert (tmp_path / "before").read_text() == (tmp_path / "after").read_text()


def test_terminal_restored_after_sigterm(uctl, tmp_path):
    """guestctl ended by signals (TERM passed on once, then TERM again) restores the tty."""
    state = {"killed": False}

    def kill_it(fd, out):
        if not state["killed"] and b"trap-ready" in out:
            state["killed"] = True
            # While the session runs, the terminal is raw (no line editing, no echo).
            lflag = termios.tcgetattr(fd)[3]
            state["raw"] = not lflag & (termios.ICANON | termios.ECHO)
            pid = int((tmp_path / "ctlpid").read_text())
            os.kill(pid, signal.SIGTERM)
            time.sleep(0.5)
            os.kill(pid, signal.SIGTERM)

    # The remote shell and its sleep ignore TERM, so only the second TERM ends guestctl.
    inner = (f"sh -c 'echo $$ > {tmp_path}/ctlpid; exec {GUESTCTL} exec --tty -- "
             f"sh -c \"trap \\\"\\\" TERM; echo trap-ready; sleep 20\"'")
    status, out = run_in_pty(shell_wrapper(tmp_path, inner), uctl.env(), b"",
                             on_output=kill_it)
    assert state["killed"] and state["raw"], out
    assert status == 128 + signal.SIGTERM, out
    before = (tmp_path / "before").read_text()
    assert before and before == (tmp_path / "after").read_text()

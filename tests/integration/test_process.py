# SPDX-License-Identifier: Apache-2.0
"""envd's process.Process service on the wire: Start over both codecs, exit statuses, stdin,
PTYs, users and environment, spawn failures, deadlines and keepalives, signals, Connect, List,
client disconnects, the output model (large and binary output, slow consumers), exit ordering,
exec ids on envd's Start, many concurrent processes and graceful shutdown.

guestd.v1.Process is only used here to observe results; its own tests are in
test_process_guestd.py.
"""
import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import (EventStream, Reader, b64, build_request, envelope, init, kill_if_running,
                      parse_envelopes, pb_bytes, pid_alive, proto_fields,
                      read_stream, request, stream_open, unary, unb64, wait_until,
                      zigzag_decode)

START = "/process.Process/Start"
CONNECT = "/process.Process/Connect"
LIST = "/process.Process/List"
SEND_INPUT = "/process.Process/SendInput"
STREAM_INPUT = "/process.Process/StreamInput"
SEND_SIGNAL = "/process.Process/SendSignal"
UPDATE = "/process.Process/Update"
CLOSE_STDIN = "/process.Process/CloseStdin"
G_RESULT = "/guestd.v1.Process/Result"

PTY_CTRL_D_MSG = "cannot close stdin for PTY process \u2014 send Ctrl+D (0x04) instead"
USER_AUTH = {"Authorization": "Basic " + b64("user:")}


# --- helpers --------------------------------------------------------------------------------

class Proc(EventStream):
    """A Start stream whose first message (checked to be start) has been read."""

    def __init__(self, g, msg, headers=None, path=START, unix=False, timeout=30):
        super().__init__(g, path, msg, headers, unix=unix, timeout=timeout)
        assert self.status == 200, self.status
        first = self.next()
        assert first is not None, f"stream ended before the start event: {self.end}"
        assert list(first) == ["event"] and list(first["event"]) == ["start"], first
        self.pid = first["event"]["start"]["pid"]
        assert isinstance(self.pid, int) and self.pid > 0, first


def req(cmd, *args, **extra):
    """A StartRequest; extra keys go to the request (pty, tag, stdin) unless they are
    ProcessConfig fields (envs, cwd)."""
    process = {"cmd": cmd}
    if args:
        process["args"] = list(args)
    for k in ("envs", "cwd"):
        if k in extra:
            process[k] = extra.pop(k)
    return {"process": process, **extra}


def sh(script, **extra):
    return req("sh", "-c", script, **extra)


def start(g, msg, headers=None, **kw):
    return Proc(g, msg, headers, **kw)


def run(g, msg, headers=None, **kw):
    """Runs a process to completion: returns (pid, messages after start, end-of-stream
    JSON)."""
    with Proc(g, msg, headers, **kw) as p:
        msgs = p.rest()
        return p.pid, msgs, p.end


def split_output(msgs):
    """Concatenated output per kind, and the end event (checked to be the last message)."""
    out = {"stdout": b"", "stderr": b"", "pty": b""}
    end = None
    for m in msgs:
        ev = m["event"]
        if "data" in ev:
            assert end is None, "data after the end event"
            (kind, data), = ev["data"].items()
            out[kind] += unb64(data)
        elif "end" in ev:
            assert end is None, "two end events"
            end = ev["end"]
        else:
            assert list(ev) == ["keepalive"] and ev["keepalive"] == {}, m
    assert end is not None, f"no end event in {msgs!r}"
    assert "end" in msgs[-1]["event"], "the end event is not the last message"
    return out, end


def run_output(g, msg, headers=None, **kw):
    pid, msgs, endframe = run(g, msg, headers, **kw)
    assert endframe == {}, endframe
    out, end = split_output(msgs)
    return pid, out, end


def rpc(g, path, msg, headers=None, status=200):
    r = unary(g, path, msg, headers)
    assert r.status == status, r
    return r.json()


def rpc_error(g, path, msg, status, code, message=None, headers=None):
    r = unary(g, path, msg, headers)
    assert r.status == status, r
    assert r.header("content-type") == "application/json"
    body = r.json()
    assert body["code"] == code, body
    if message is not None:
        assert body["message"] == message, body
    return body


def send_input(g, pid, data, kind="stdin"):
    return rpc(g, SEND_INPUT, {"process": {"pid": pid}, "input": {kind: b64(data)}})


def close_stdin(g, pid):
    return rpc(g, CLOSE_STDIN, {"process": {"pid": pid}})


def listed(g):
    return {p["pid"]: p for p in rpc(g, LIST, {}).get("processes", [])}


def result(g, selector):
    r = unary(g, G_RESULT, {"process": selector})
    return r.status, r.json()


def read_until(p, kind, want):
    """Reads data messages of p until the collected output of `kind` contains want."""
    got = b""
    while want not in got:
        m = p.next()
        assert m is not None, f"stream ended before {want!r}; got {got!r}; end {p.end}"
        ev = m["event"]
        if "data" in ev and kind in ev["data"]:
            got += unb64(ev["data"][kind])
        else:
            assert "keepalive" in ev or "data" in ev, m
    return got


# --- Start: events and exit statuses ----------------------------------------------------------

def test_start_json_events_and_exit_status(guestd):
    with start(guestd, sh("echo out; echo err >&2; exit 3")) as p:
        assert p.headers and dict(p.headers)["content-type"] == "application/connect+json"
        msgs = p.rest()
        assert p.end == {}
    out, end = split_output(msgs)
    assert out["stdout"] == b"out\n"
    assert out["stderr"] == b"err\n"
    # Data arrives as standard base64 strings.
    for m in msgs[:-1]:
        (data,) = m["event"]["data"].values()
        assert isinstance(data, str) and unb64(data)
    assert end == {"exitCode": 3, "exited": True, "status": "exit status 3",
                   "error": "exit status 3"}


def test_start_success_has_no_error_and_no_exit_code(guestd):
    _, out, end = run_output(guestd, req("true"))
    assert out == {"stdout": b"", "stderr": b"", "pty": b""}
    assert end == {"exited": True, "status": "exit status 0"}


@pytest.mark.parametrize("sig,status", [("KILL", "signal: killed"), ("TERM", "signal: terminated")])
def test_start_killed_by_signal_status(guestd, sig, status):
    _, _, end = run_output(guestd, sh(f"kill -{sig} $$"))
    assert end == {"exitCode": -1, "status": status, "error": status}


def test_start_stdout_stderr_base64_exact(guestd):
    _, out, _ = run_output(guestd, sh("printf '\\000\\377\\033[31mX\\n'; printf 'e\\001' >&2"))
    assert out["stdout"] == b"\x00\xff\x1b[31mX\n"
    assert out["stderr"] == b"e\x01"


def proto_start_request(cmd, *args):
    config = pb_bytes(1, cmd) + b"".join(pb_bytes(2, a) for a in args)
    return pb_bytes(1, config)


def proto_events(envs):
    """Decodes StartResponse/ConnectResponse envelopes by hand: [(kind, fields)]."""
    out = []
    for flags, payload in envs:
        assert flags == 0, flags
        resp = proto_fields(payload)
        assert list(resp) == [1], resp
        (event,) = resp[1]
        ev = proto_fields(event)
        assert len(ev) == 1, ev
        (num, (body,)), = ev.items()
        kind = {1: "start", 2: "data", 3: "end", 4: "keepalive"}[num]
        out.append((kind, proto_fields(body)))
    return out


def test_start_proto_codec(guestd):
    body = proto_start_request("sh", "-c", "echo out; echo err >&2; exit 3")
    s, r, status, headers = stream_open(guestd, START, body, proto=True)
    with s:
        assert status == 200
        assert dict(headers)["content-type"] == "application/connect+proto"
        envs = read_stream(r)
    # The end-of-stream frame is JSON even with the proto codec.
    assert envs[-1] == (2, b"{}")
    events = proto_events(envs[:-1])
    assert events[0][0] == "start"
    pid = events[0][1][1][0]
    assert pid > 0
    out = {1: b"", 2: b""}
    for kind, f in events[1:-1]:
        assert kind == "data", events
        (num, (data,)), = f.items()
        out[num] += data
    assert out == {1: b"out\n", 2: b"err\n"}
    kind, end = events[-1]
    assert kind == "end"
    # exit_code is sint32: zigzag-encoded 3 is 6.
    assert end[1] == [6] and zigzag_decode(end[1][0]) == 3
    assert end[2] == [1]
    assert end[3] == [b"exit status 3"]
    assert end[4] == [b"exit status 3"]


def test_start_proto_codec_signal_exit_code_is_minus_one(guestd):
    s, r, status, _ = stream_open(guestd, START, proto_start_request("sh", "-c", "kill -9 $$"),
                                  proto=True)
    with s:
        envs = read_stream(r)
    assert envs[-1] == (2, b"{}")
    kind, end = proto_events(envs[:-1])[-1]
    assert kind == "end"
    assert zigzag_decode(end[1][0]) == -1
    assert 2 not in end  # exited false is not encoded
    assert end[3] == [b"signal: killed"]


def test_list_proto_codec(guestd):
    with start(guestd, req("sleep", "30", tag="pt")) as p:
        r = request(guestd, "POST", LIST, b"",
                    {"Content-Type": "application/proto", "Connect-Protocol-Version": "1"})
        assert r.status == 200, r
        assert r.header("content-type") == "application/proto"
        infos = [proto_fields(i) for i in proto_fields(r.body).get(1, [])]
        mine = [i for i in infos if i[2] == [p.pid]]
        assert len(mine) == 1, infos
        config = proto_fields(mine[0][1][0])
        assert config[1] == [b"sleep"] and config[2] == [b"30"]
        assert mine[0][3] == [b"pt"]
        rpc(guestd, SEND_SIGNAL, {"process": {"pid": p.pid}, "signal": "SIGNAL_SIGKILL"})
        p.rest()


# --- stdin ------------------------------------------------------------------------------------

@pytest.mark.parametrize("stdin", [None, True], ids=["absent", "true"])
def test_stdin_pipe_send_input_and_close(guestd, stdin):
    extra = {} if stdin is None else {"stdin": stdin}
    with start(guestd, sh("cat; echo eof; exec sleep 30", **extra)) as p:
        assert send_input(guestd, p.pid, b"hello\n") == {}
        assert read_until(p, "stdout", b"hello\n") == b"hello\n"
        assert close_stdin(guestd, p.pid) == {}
        assert read_until(p, "stdout", b"eof\n") == b"eof\n"
        # Closing again is fine while the process lives.
        assert close_stdin(guestd, p.pid) == {}
        # Input after close is refused.
        rpc_error(guestd, SEND_INPUT, {"process": {"pid": p.pid}, "input": {"stdin": b64("x")}},
                  500, "internal", "stdin not enabled or closed")
        rpc(guestd, SEND_SIGNAL, {"process": {"pid": p.pid}, "signal": "SIGNAL_SIGKILL"})
        out, end = split_output(p.rest())
        assert p.end == {}
    assert end["status"] == "signal: killed"


def test_stdin_false_is_dev_null(guestd):
    # cat reads EOF at once: /dev/null, not a pipe that stays open.
    _, out, end = run_output(guestd, sh("cat; ls -l /proc/self/fd/0 | grep -o '/dev/null'",
                                        stdin=False))
    assert out["stdout"] == b"/dev/null\n"
    assert end == {"exited": True, "status": "exit status 0"}


def test_stdin_false_send_input_refused(guestd):
    with start(guestd, req("sleep", "30", stdin=False)) as p:
        rpc_error(guestd, SEND_INPUT, {"process": {"pid": p.pid}, "input": {"stdin": b64("x")}},
                  500, "internal", "stdin not enabled or closed")
        # CloseStdin without a pipe is a no-op.
        assert close_stdin(guestd, p.pid) == {}
        rpc(guestd, SEND_SIGNAL, {"process": {"pid": p.pid}, "signal": "SIGNAL_SIGKILL"})
        p.rest()


def test_send_input_without_input_unimplemented(guestd):
    with start(guestd, req("cat")) as p:
        rpc_error(guestd, SEND_INPUT, {"process": {"pid": p.pid}}, 501, "unimplemented")
        close_stdin(guestd, p.pid)
        p.rest()


def test_send_input_unknown_or_finished_pid_not_found(guestd):
    pid, _, _ = run_output(guestd, req("true"))
    for target in (pid, 999999999):
        for path, body in ((SEND_INPUT, {"input": {"stdin": b64("x")}}), (CLOSE_STDIN, {}),
                           (UPDATE, {})):
            rpc_error(guestd, path, {"process": {"pid": target}, **body}, 404, "not_found",
                      f"process with pid {target} not found")


def chunked(data):
    return b"%x\r\n" % len(data) + data + b"\r\n"


def stream_input(g, messages, splits=None):
    """Sends a client stream of JSON messages in a chunked body, split at the given byte
    counts (the rest goes in one chunk); returns the response envelopes."""
    body = b"".join(envelope(json.dumps(m).encode()) for m in messages)
    h = {"Content-Type": "application/connect+json", "Connect-Protocol-Version": "1",
         "Transfer-Encoding": "chunked"}
    with g.connect() as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(build_request("POST", STREAM_INPUT, None, h))
        for n in splits or []:
            part, body = body[:n], body[n:]
            if part:
                s.sendall(chunked(part))
        if body:
            s.sendall(chunked(body))
        s.sendall(b"0\r\n\r\n")
        r = Reader(s).response("POST")
    assert r.status == 200, r
    assert r.header("content-type") == "application/connect+json"
    return parse_envelopes(r.body)


def test_stream_input_in_order_with_odd_splits(guestd):
    pieces = [b"hello ", b"stream", b"ing\n", b"", b"\x00\xffbin\n", b"x" * 70000, b"\nlast\n"]
    with start(guestd, req("cat")) as p:
        msgs = [{"start": {"process": {"pid": p.pid}}}]
        for i, piece in enumerate(pieces):
            msgs.append({"data": {"input": {"stdin": b64(piece)}}})
            if i == 2:
                msgs.append({"keepalive": {}})
        body_len = len(b"".join(envelope(json.dumps(m).encode()) for m in msgs))
        rnd = random.Random(7)
        splits = [1, 3, 2, 7, 5]  # inside the first envelope's header and payload
        while sum(splits) < body_len - 50:
            splits.append(rnd.randint(1, 5000))
        resp = stream_input(guestd, msgs, splits)
        assert resp == [(0, b"{}"), (2, b"{}")]
        close_stdin(guestd, p.pid)
        out, end = split_output(p.rest())
    assert out["stdout"] == b"".join(pieces)
    assert end["status"] == "exit status 0"


def test_stream_input_data_before_start_failed_precondition(guestd):
    with start(guestd, req("cat")) as p:
        resp = stream_input(guestd, [{"data": {"input": {"stdin": b64("x")}}},
                                     {"start": {"process": {"pid": p.pid}}}])
        assert resp[-1][0] == 0x02
        err = json.loads(resp[-1][1])["error"]
        assert err["code"] == "failed_precondition", err
        # Nothing was written.
        close_stdin(guestd, p.pid)
        out, _ = split_output(p.rest())
    assert out["stdout"] == b""


def test_stream_input_unknown_pid_not_found(guestd):
    resp = stream_input(guestd, [{"start": {"process": {"pid": 999999999}}},
                                 {"data": {"input": {"stdin": b64("x")}}}])
    assert resp[-1][0] == 0x02
    err = json.loads(resp[-1][1])["error"]
    assert err == {"code": "not_found", "message": "process with pid 999999999 not found"}


# --- PTY --------------------------------------------------------------------------------------

def pty_req(cmd, *args, cols=80, rows=24, **extra):
    return req(cmd, *args, pty={"size": {"cols": cols, "rows": rows}}, **extra)


def test_pty_initial_size(guestd):
    _, out, end = run_output(guestd, pty_req("stty", "size", cols=90, rows=33))
    assert out == {"stdout": b"", "stderr": b"", "pty": b"33 90\r\n"}
    assert end["status"] == "exit status 0"


def test_pty_is_controlling_tty_and_new_session(guestd):
    _, out, _ = run_output(guestd, pty_req(
        "sh", "-c", "tty; ps -o sid= -p $$; echo $$"))
    lines = out["pty"].decode().split("\r\n")
    assert lines[0].startswith("/dev/pts/"), lines
    assert lines[1].strip() == lines[2].strip(), lines  # session leader


def test_pty_child_closing_its_terminal_is_not_hung_up(guestd):
    # The child closes every descriptor of its terminal, then goes on running. guestd sees EIO
    # on the master at once; it must not close the master then, or the kernel hangs up the
    # terminal and SIGHUPs the child (which would end as "signal: hangup").
    _, out, end = run_output(guestd, pty_req(
        "sh", "-c", "echo before; exec 0<&- 1>&- 2>&-; sleep 0.5; exit 4"))
    assert out["pty"] == b"before\r\n"
    assert end.get("exitCode") == 4, end
    assert end["status"] == "exit status 4", end


def test_pty_input_is_echoed(guestd):
    with start(guestd, pty_req("cat")) as p:
        send_input(guestd, p.pid, b"hello\n", kind="pty")
        # The tty echoes the line, then cat writes it back: both with \n -> \r\n.
        assert read_until(p, "pty", b"hello\r\nhello\r\n") == b"hello\r\nhello\r\n"
        # Stdin input to a PTY process is the wrong kind.
        rpc_error(guestd, SEND_INPUT, {"process": {"pid": p.pid}, "input": {"stdin": b64("x")}},
                  500, "internal")
        rpc_error(guestd, CLOSE_STDIN, {"process": {"pid": p.pid}}, 500, "unknown",
                  PTY_CTRL_D_MSG)
        send_input(guestd, p.pid, b"\x04", kind="pty")  # Ctrl+D ends cat
        out, end = split_output(p.rest())
        assert p.end == {}
    assert end == {"exited": True, "status": "exit status 0"}


def test_pty_resize(guestd):
    with start(guestd, pty_req("sh", "-c", "read x; stty size", cols=80, rows=24)) as p:
        assert rpc(guestd, UPDATE, {"process": {"pid": p.pid},
                                    "pty": {"size": {"cols": 100, "rows": 40}}}) == {}
        send_input(guestd, p.pid, b"\n", kind="pty")
        out, end = split_output(p.rest())
    assert out["pty"] == b"\r\n40 100\r\n"
    assert end["status"] == "exit status 0"


def test_pty_resize_delivers_sigwinch(guestd):
    script = "trap 'stty size' WINCH; echo ready; while :; do sleep 0.05; done"
    with start(guestd, pty_req("sh", "-c", script, cols=80, rows=24)) as p:
        read_until(p, "pty", b"ready\r\n")
        rpc(guestd, UPDATE, {"process": {"pid": p.pid}, "pty": {"size": {"cols": 132,
                                                                         "rows": 50}}})
        assert b"50 132\r\n" in read_until(p, "pty", b"50 132\r\n")
        rpc(guestd, SEND_SIGNAL, {"process": {"pid": p.pid}, "signal": "SIGNAL_SIGKILL"})
        p.rest()


def test_update_non_pty_internal(guestd):
    with start(guestd, req("cat")) as p:
        rpc_error(guestd, UPDATE, {"process": {"pid": p.pid},
                                   "pty": {"size": {"cols": 10, "rows": 10}}},
                  500, "internal", "tty not assigned to process")
        # Without a pty field Update is a no-op.
        assert rpc(guestd, UPDATE, {"process": {"pid": p.pid}}) == {}
        close_stdin(guestd, p.pid)
        p.rest()


def test_pty_raw_bytes_exact(guestd):
    _, out, _ = run_output(guestd, pty_req("sh", "-c", "printf '\\000\\377\\033[31mX\\n'"))
    # Byte-exact, except the tty's output processing turns \n into \r\n.
    assert out["pty"] == b"\x00\xff\x1b[31mX\r\n"


# --- users, working directory, environment -----------------------------------------------------

ENV_SCRIPT = 'id -u; echo "$HOME"; echo "$USER"; echo "$LOGNAME"; echo "$SHELL"; pwd; echo "$PATH"'


def env_lines(g, headers=None, **extra):
    _, out, end = run_output(g, sh(ENV_SCRIPT, **extra), headers)
    assert end["status"] == "exit status 0", (out, end)
    return out["stdout"].decode().splitlines()


def check_sane_path(path):
    parts = path.split(":")
    assert "/usr/bin" in parts and "/bin" in parts, path


def test_default_user_is_root(guestd):
    uid, home, user, logname, shell, cwd, path = env_lines(guestd)
    assert (uid, home, user, logname, shell, cwd) == ("0", "/root", "root", "root",
                                                      "/bin/bash", "/root")
    check_sane_path(path)


def test_basic_auth_user(guestd):
    uid, home, user, logname, shell, cwd, path = env_lines(guestd, USER_AUTH)
    assert (uid, home, user, logname, shell, cwd) == ("1001", "/home/user", "user", "user",
                                                      "/bin/bash", "/home/user")
    check_sane_path(path)


def test_default_user_flag(guestd_factory):
    g = guestd_factory("--default-user", "user")
    uid, home, user, logname, _, cwd, _ = env_lines(g)
    assert (uid, home, user, logname, cwd) == ("1001", "/home/user", "user", "user",
                                               "/home/user")
    # Basic auth still picks another user.
    assert env_lines(g, {"Authorization": "Basic " + b64("root:")})[0] == "0"


def test_unknown_basic_auth_user_unauthenticated(guestd):
    s = EventStream(guestd, START, req("true"), {"Authorization": "Basic " + b64("nosuch:")})
    with s:
        assert s.rest() == []
    assert s.end["error"]["code"] == "unauthenticated"


def test_supplementary_groups(guestd):
    group = f"gdt{os.getpid()}"
    subprocess.run(["groupadd", group], check=True, capture_output=True)
    try:
        subprocess.run(["gpasswd", "-a", "user", group], check=True, capture_output=True)
        gid = subprocess.run(["getent", "group", group], check=True, capture_output=True,
                             text=True).stdout.split(":")[2]
        _, out, _ = run_output(guestd, req("id", "-G"), USER_AUTH)
        groups = out["stdout"].decode().split()
        assert groups[0] == "1001"  # the primary group
        assert gid in groups, (gid, groups)
        # Root's groups do not leak into the user's.
        assert "0" not in groups
    finally:
        subprocess.run(["groupdel", group], capture_output=True)


@pytest.mark.parametrize("cwd", [".", "~", "~/", ""])
def test_cwd_resolves_against_home(guestd, cwd):
    _, out, _ = run_output(guestd, req("pwd", cwd=cwd), USER_AUTH)
    assert out["stdout"] == b"/home/user\n"


def test_cwd_absolute(guestd, tmp_path):
    d = tmp_path / "work dir"
    d.mkdir()
    _, out, _ = run_output(guestd, req("pwd", cwd=str(d)))
    assert out["stdout"] == str(d).encode() + b"\n"


def test_cwd_missing_invalid_argument(guestd):
    s = EventStream(guestd, START, req("pwd", cwd="/nope"))
    with s:
        assert s.rest() == []
    assert s.end == {"error": {"code": "invalid_argument",
                               "message": "cwd '/nope' does not exist"}}


def test_env_precedence(guestd_factory):
    g = guestd_factory(env=dict(os.environ, GUESTD_TEST_LEAK="leaked"))
    assert init(g, {"envVars": {"FROM_INIT": "init", "BOTH": "init", "HOME": "/init-home"}}
                ).status == 204
    script = ('echo "$FROM_INIT|$BOTH|$FROM_REQ|$HOME|$E2B_SANDBOX|${GUESTD_TEST_LEAK-unset}"')
    _, out, _ = run_output(g, sh(script, envs={"BOTH": "req", "FROM_REQ": "req"}))
    # /init's envVars are visible and win over the user defaults; the request's envs win over
    # /init's; guestd's own environment is not inherited.
    assert out["stdout"] == b"init|req|req|/init-home|true|unset\n"


def test_umask_and_nofile(guestd):
    _, out, _ = run_output(guestd, sh("umask; ulimit -n"))
    assert out["stdout"].split() == [b"0022", b"1024"]


# --- spawn failures ---------------------------------------------------------------------------

def test_spawn_missing_binary(guestd):
    s = EventStream(guestd, START, req("/nonexistent/bin"))
    with s:
        assert s.rest() == []  # no start event
    err = s.end["error"]
    assert err["code"] == "invalid_argument"
    assert "exec" in err["message"] and "No such file" in err["message"], err


def test_spawn_missing_binary_in_path(guestd):
    s = EventStream(guestd, START, req("no-such-command-guestd"))
    with s:
        assert s.rest() == []
    assert s.end["error"]["code"] == "invalid_argument"
    assert "No such file" in s.end["error"]["message"]


def test_spawn_not_executable(guestd, tmp_path):
    f = tmp_path / "script"
    f.write_text("#!/bin/sh\necho hi\n")
    f.chmod(0o644)
    s = EventStream(guestd, START, req(str(f)))
    with s:
        assert s.rest() == []
    err = s.end["error"]
    assert err["code"] == "invalid_argument"
    assert "Permission denied" in err["message"], err


def test_empty_cmd_invalid_argument(guestd):
    s = EventStream(guestd, START, {"process": {"cmd": ""}})
    with s:
        assert s.rest() == []
    assert s.end["error"]["code"] == "invalid_argument"


# --- deadlines and keepalives -----------------------------------------------------------------

def test_deadline_kills_process(guestd):
    with start(guestd, req("sleep", "30"), {"Connect-Timeout-Ms": "500"}) as p:
        msgs = p.rest()
    assert msgs == []  # no end event: the stream ends with the deadline error
    assert p.end["error"]["code"] == "deadline_exceeded", p.end
    wait_until(lambda: p.pid not in listed(guestd), what="the process to leave List")
    wait_until(lambda: not pid_alive(p.pid), what="the process to be killed and reaped")
    status, body = result(guestd, {"pid": p.pid})
    assert status == 200
    assert body["result"]["cause"] == "EXIT_CAUSE_DEADLINE"
    assert body["result"]["status"] == "signal: killed"


def test_deadline_kills_process_after_client_left(guestd):
    p = start(guestd, req("sleep", "30"), {"Connect-Timeout-Ms": "500"})
    p.close()
    try:
        wait_until(lambda: not pid_alive(p.pid), timeout=5,
                   what="the process to be killed at the deadline")
    finally:
        # Do not leave it running if the deadline did not kill it.
        unary(guestd, SEND_SIGNAL, {"process": {"pid": p.pid}, "signal": "SIGNAL_SIGKILL"})
    assert result(guestd, {"pid": p.pid})[1]["result"]["cause"] == "EXIT_CAUSE_DEADLINE"


def test_keepalives(guestd):
    with start(guestd, req("sleep", "3"), {"Keepalive-Ping-Interval": "1"}) as p:
        msgs = p.rest()
        assert p.end == {}
    kas = msgs[:-1]
    assert len(kas) >= 2, msgs
    assert all(m == {"event": {"keepalive": {}}} for m in kas), msgs
    assert msgs[-1]["event"]["end"]["status"] == "exit status 0"


# --- signals ----------------------------------------------------------------------------------

@pytest.mark.parametrize("sig,status", [("SIGNAL_SIGKILL", "signal: killed"),
                                        ("SIGNAL_SIGTERM", "signal: terminated"),
                                        (9, "signal: killed")])
def test_send_signal(guestd, sig, status):
    with start(guestd, req("sleep", "30")) as p:
        assert rpc(guestd, SEND_SIGNAL, {"process": {"pid": p.pid}, "signal": sig}) == {}
        out, end = split_output(p.rest())
        assert p.end == {}
    assert end == {"exitCode": -1, "status": status, "error": status}
    wait_until(lambda: not pid_alive(p.pid), what="reaping")
    assert result(guestd, {"pid": p.pid})[1]["result"]["cause"] == \
        "EXIT_CAUSE_SIGNALED_BY_CLIENT"


def test_send_signal_invalid(guestd):
    with start(guestd, req("sleep", "30")) as p:
        for sig in ("SIGNAL_UNSPECIFIED", 0, 10):
            rpc_error(guestd, SEND_SIGNAL, {"process": {"pid": p.pid}, "signal": sig},
                      501, "unimplemented", "invalid signal")
        assert p.pid in listed(guestd)  # still running
        rpc(guestd, SEND_SIGNAL, {"process": {"pid": p.pid}, "signal": "SIGNAL_SIGKILL"})
        p.rest()


def test_send_signal_unknown_pid_not_found(guestd):
    rpc_error(guestd, SEND_SIGNAL, {"process": {"pid": 999999999}, "signal": "SIGNAL_SIGKILL"},
              404, "not_found", "process with pid 999999999 not found")
    rpc_error(guestd, SEND_SIGNAL, {"process": {"tag": "nope"}, "signal": "SIGNAL_SIGKILL"},
              404, "not_found")


# --- Connect ----------------------------------------------------------------------------------

def test_connect_by_pid_live_without_replay(guestd):
    with start(guestd, sh("echo early; read x; echo late")) as p:
        read_until(p, "stdout", b"early\n")
        with EventStream(guestd, CONNECT, {"process": {"pid": p.pid}}) as c:
            assert c.status == 200
            assert c.next() == {"event": {"start": {"pid": p.pid}}}
            send_input(guestd, p.pid, b"\n")
            cout, cend = split_output(c.rest())
            assert c.end == {}
        out, end = split_output(p.rest())
    assert cout["stdout"] == b"late\n"  # no replay of "early"
    assert out["stdout"] == b"late\n"
    assert cend == end == {"exited": True, "status": "exit status 0"}


def test_connect_by_tag_picks_newest(guestd):
    with start(guestd, req("cat", tag="dup")) as a, start(guestd, req("cat", tag="dup")) as b:
        with EventStream(guestd, CONNECT, {"process": {"tag": "dup"}}) as c:
            assert c.next() == {"event": {"start": {"pid": b.pid}}}
            send_input(guestd, b.pid, b"to-b\n")
            assert read_until(c, "stdout", b"to-b\n") == b"to-b\n"
            close_stdin(guestd, b.pid)
            _, cend = split_output(c.rest())
            assert cend["status"] == "exit status 0"
        close_stdin(guestd, a.pid)
        a.rest()
        b.rest()


def test_connect_to_recently_ended(guestd):
    pid, _, _ = run_output(guestd, sh("echo x; exit 4", tag="ended"))
    for sel in ({"pid": pid}, {"tag": "ended"}):
        with EventStream(guestd, CONNECT, {"process": sel}) as c:
            msgs = c.rest()
        assert msgs == [{"event": {"start": {"pid": pid}}},
                        {"event": {"end": {"exitCode": 4, "exited": True,
                                           "status": "exit status 4",
                                           "error": "exit status 4"}}}]
        assert c.end == {}


@pytest.mark.parametrize("sel,code,message", [
    ({"pid": 999999999}, "not_found", "process with pid 999999999 not found"),
    ({"tag": "no-such-tag"}, "not_found", "process with tag no-such-tag not found"),
    ({}, "unimplemented", None),
], ids=["pid", "tag", "empty"])
def test_connect_errors(guestd, sel, code, message):
    with EventStream(guestd, CONNECT, {"process": sel}) as c:
        assert c.status == 200
        assert c.rest() == []
    assert c.end["error"]["code"] == code, c.end
    if message:
        assert c.end["error"]["message"] == message


# --- List -------------------------------------------------------------------------------------

def test_list_live_processes_with_original_config(guestd):
    run_output(guestd, req("true", tag="gone"))
    config = {"cmd": "sleep", "args": ["30"], "envs": {"A": "1", "B": "two"}, "cwd": "~"}
    with start(guestd, {"process": config, "tag": "lt"}) as p, \
            start(guestd, req("sleep", "30")) as q:
        procs = listed(guestd)
        assert procs[p.pid] == {"config": config, "pid": p.pid, "tag": "lt"}
        assert procs[q.pid] == {"config": {"cmd": "sleep", "args": ["30"]}, "pid": q.pid}
        assert not any(x.get("tag") == "gone" for x in procs.values())
        rpc(guestd, SEND_SIGNAL, {"process": {"pid": p.pid}, "signal": "SIGNAL_SIGKILL"})
        p.rest()
        # Once the end event is out, the process is no longer listed.
        procs = listed(guestd)
        assert p.pid not in procs and q.pid in procs
        rpc(guestd, SEND_SIGNAL, {"process": {"pid": q.pid}, "signal": "SIGNAL_SIGKILL"})
        q.rest()
    assert listed(guestd) == {}


# --- client disconnect --------------------------------------------------------------------------

def test_client_disconnect_does_not_stop_process(guestd):
    p = start(guestd, sh("sleep 1; echo done; sleep 1"))
    p.close()

    def ended():
        status, body = result(guestd, {"pid": p.pid})
        assert status == 200, body
        return body["result"] if body["result"]["cause"] != "EXIT_CAUSE_RUNNING" else None

    r = wait_until(ended, what="the process to end")
    assert r["cause"] == "EXIT_CAUSE_EXITED" and r["status"] == "exit status 0", r
    assert unb64(r["tail"]) == b"done\n"
    # A later Connect reports the exit.
    with EventStream(guestd, CONNECT, {"process": {"pid": p.pid}}) as c:
        msgs = c.rest()
    assert msgs[-1] == {"event": {"end": {"exited": True, "status": "exit status 0"}}}


def test_client_disconnect_mid_output_keeps_running(guestd):
    # The child writes far more than the socket holds while nobody reads.
    p = start(guestd, sh("head -c 20000000 /dev/zero; echo end"))
    p.close()

    def ended():
        body = result(guestd, {"pid": p.pid})[1]["result"]
        return body if body["cause"] != "EXIT_CAUSE_RUNNING" else None

    r = wait_until(ended, what="the process to end")
    assert r["status"] == "exit status 0"
    assert r["stdoutBytes"] == str(20000000 + 4)


# --- output model -------------------------------------------------------------------------------

def seq_text(n):
    return "".join(f"{i}\n" for i in range(1, n + 1)).encode()


def read_stdout(p, pause=0):
    """Reads a Start stream to its end: (stdout bytes, end event), pausing after each
    message."""
    out = bytearray()
    end = None
    while True:
        m = p.next()
        if m is None:
            return out, end
        ev = m["event"]
        assert end is None, f"message after the end event: {m}"
        if "data" in ev:
            out += unb64(ev["data"]["stdout"])
        elif "end" in ev:
            end = ev["end"]
        if pause:
            time.sleep(pause)


def test_text_output_within_log_cap_complete_and_in_order(guestd):
    # 588,895 bytes: less than the per-process log (1 MiB), so even a reader that reads
    # nothing until the process has ended gets every byte, in order.
    expected = seq_text(100000)
    with start(guestd, req("seq", "1", "100000", tag="seq"), unix=True) as p:
        def ended():
            r = result(guestd, {"tag": "seq"})[1]["result"]
            return r if r["cause"] != "EXIT_CAUSE_RUNNING" else None
        assert wait_until(ended, what="seq to end")["stdoutBytes"] == str(len(expected))
        out, end = read_stdout(p)
        assert p.end == {}, p.end
    assert out == expected
    assert end == {"exited": True, "status": "exit status 0"}


def test_seq_million_complete_and_in_order(guestd):
    expected = seq_text(1000000)
    with start(guestd, req("seq", "1", "1000000"), unix=True, timeout=60) as p:
        out, end = read_stdout(p, pause=0.002)
        assert p.end == {}, p.end
    assert len(out) == len(expected)
    assert out == expected
    assert end == {"exited": True, "status": "exit status 0"}


def test_50mib_binary_output_byte_exact(guestd, tmp_path):
    f = tmp_path / "random.bin"
    size = 50 * 1024 * 1024
    h = hashlib.sha256()
    with open(f, "wb") as fh:
        for _ in range(50):
            block = os.urandom(1024 * 1024)
            h.update(block)
            fh.write(block)
    got = hashlib.sha256()
    n = 0
    try:
        with start(guestd, req("cat", str(f)), timeout=60) as p:
            while True:
                m = p.next()
                if m is None:
                    break
                ev = m["event"]
                if "data" in ev:
                    data = unb64(ev["data"]["stdout"])
                    got.update(data)
                    n += len(data)
                else:
                    assert ev["end"]["status"] == "exit status 0", ev
            assert p.end == {}
    finally:
        f.unlink()
    assert n == size
    assert got.hexdigest() == h.hexdigest()


def test_envd_slow_consumer_cut_with_resource_exhausted(guestd_factory):
    g = guestd_factory("--output-log-cap", "65536")
    total = 200_000_000
    # A Unix socket keeps the kernel's buffering small; the client reads nothing until the
    # child has written everything.
    with start(g, req("head", "-c", str(total), "/dev/zero", tag="slow"), unix=True) as p:
        def ended():
            r = result(g, {"tag": "slow"})[1]["result"]
            return r if r["cause"] != "EXIT_CAUSE_RUNNING" else None
        r = wait_until(ended, timeout=60, what="the writer to finish")
        assert r["stdoutBytes"] == str(total)
        got = 0
        msgs = 0
        while True:
            m = p.next()
            if m is None:
                break
            msgs += 1
            if "data" in m["event"]:
                got += len(unb64(m["event"]["data"]["stdout"]))
    if p.end == {}:
        # Only possible if the kernel absorbed everything: then nothing may be missing.
        assert got == total
    else:
        err = p.end["error"]
        assert err["code"] == "resource_exhausted", err
        assert "slow consumer" in err["message"], err
        assert got < total


def test_envd_slow_connect_client_cut_with_resource_exhausted(guestd_factory):
    g = guestd_factory("--output-log-cap", "65536")
    total = 200_000_000
    p = start(g, sh(f"read x; exec head -c {total} /dev/zero"))
    p.close()  # the process keeps running without its Start client
    with EventStream(g, CONNECT, {"process": {"pid": p.pid}}, unix=True) as c:
        assert c.next() == {"event": {"start": {"pid": p.pid}}}
        send_input(g, p.pid, b"\n")

        def ended():
            r = result(g, {"pid": p.pid})[1]["result"]
            return r if r["cause"] != "EXIT_CAUSE_RUNNING" else None
        assert wait_until(ended, timeout=60, what="the writer to finish")["stdoutBytes"] == \
            str(total)
        got = sum(len(unb64(m["event"]["data"]["stdout"])) for m in c.rest()
                  if "data" in m["event"])
    if c.end == {}:
        assert got == total
    else:
        assert c.end["error"]["code"] == "resource_exhausted", c.end
        assert c.end["error"]["message"].startswith("slow consumer"), c.end
        assert got < total
    # The cut subscriber can reconnect: the process ended, so it gets start and end.
    with EventStream(g, CONNECT, {"process": {"pid": p.pid}}) as c:
        msgs = c.rest()
    assert msgs[-1] == {"event": {"end": {"exited": True, "status": "exit status 0"}}}


# --- exit ordering ------------------------------------------------------------------------------

def test_end_comes_after_all_output(guestd):
    for _ in range(20):
        _, msgs, endframe = run(guestd, sh("echo a; echo b >&2; echo c; exit 5"))
        assert endframe == {}
        out, end = split_output(msgs)  # checks: nothing after end
        assert out["stdout"] == b"a\nc\n" and out["stderr"] == b"b\n"
        assert end["exitCode"] == 5


def test_grandchild_holding_pipe_bounded_drain(guestd_factory):
    g = guestd_factory("--output-drain-ms", "500")
    gpid = None
    try:
        with start(g, sh("sleep 30 & echo $!")) as p:
            got = read_until(p, "stdout", b"\n")
            gpid = int(got)
            msgs = p.rest()
            assert p.end == {}
        out, end = split_output(msgs)
        assert end == {"exited": True, "status": "exit status 0"}
        assert pid_alive(gpid)  # the grandchild still runs; only the stream was cut
        r = result(g, {"pid": p.pid})[1]["result"]
        assert r["outputCut"] is True
        assert r["cause"] == "EXIT_CAUSE_EXITED"
    finally:
        if gpid:
            kill_if_running(gpid, "sleep")


def test_no_output_cut_without_grandchild(guestd):
    pid, _, _ = run_output(guestd, sh("echo hi"))
    assert "outputCut" not in result(guestd, {"pid": pid})[1]["result"]


# --- exec id header -----------------------------------------------------------------------------

def test_exec_id_header_idempotent(guestd, tmp_path):
    f = tmp_path / "ran.txt"
    msg = sh(f"echo once >> '{f}'; echo ran")
    hdr = {"Guestd-Exec-Id": "job-h"}
    pid, out, end = run_output(guestd, msg, hdr)
    assert out["stdout"] == b"ran\n"
    pid2, out2, end2 = run_output(guestd, msg, hdr)
    assert pid2 == pid
    assert out2["stdout"] == b"ran\n"  # replayed
    assert end2 == end == {"exited": True, "status": "exit status 0"}
    assert f.read_text() == "once\n"
    # The same id with another command is refused; without the header it runs again.
    s = EventStream(guestd, START, sh("echo other"), hdr)
    with s:
        assert s.rest() == []
    assert s.end["error"]["code"] == "failed_precondition", s.end
    run_output(guestd, msg)
    assert f.read_text() == "once\nonce\n"


# --- many processes -----------------------------------------------------------------------------

def test_200_concurrent_processes(guestd):
    n = 200
    results = [None] * n
    errors = []

    def one(i):
        try:
            with start(guestd, sh("echo $$; sleep 1"), timeout=60) as p:
                out, end = split_output(p.rest())
                results[i] = (p.pid, out["stdout"], end, p.end)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:5]
    pids = set()
    for pid, stdout, end, endframe in results:
        assert endframe == {}
        assert end == {"exited": True, "status": "exit status 0"}
        assert stdout == f"{pid}\n".encode()
        pids.add(pid)
    assert len(pids) == n


# --- graceful shutdown --------------------------------------------------------------------------

def test_shutdown_terminates_children(guestd_factory):
    g = guestd_factory()
    with start(g, req("sleep", "100")) as p:
        g.proc.send_signal(signal.SIGTERM)
        out, end = split_output(p.rest())
        assert p.end == {}
    assert end == {"exitCode": -1, "status": "signal: terminated", "error": "signal: terminated"}
    assert g.wait_exit() == 0
    assert not pid_alive(p.pid)


def test_shutdown_kills_children_ignoring_sigterm(guestd_factory):
    g = guestd_factory("--shutdown-grace-ms", "500")
    # The ignored disposition survives exec: sleep itself ignores SIGTERM.
    with start(g, sh("trap '' TERM; echo ready; exec sleep 100")) as p:
        read_until(p, "stdout", b"ready\n")
        g.proc.send_signal(signal.SIGTERM)
        out, end = split_output(p.rest())
        assert p.end == {}
    assert end == {"exitCode": -1, "status": "signal: killed", "error": "signal: killed"}
    assert g.wait_exit() == 0
    assert not pid_alive(p.pid)

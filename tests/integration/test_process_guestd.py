# SPDX-License-Identifier: Apache-2.0
"""guestd.v1.Process on the wire: Start with exec ids (idempotent retries) and typed spawn
failures, Attach replay from offsets and gap events, the block output policy, Result (by pid,
tag and exec id; expiry) and Signal (any signal, process or group scope)."""
import hashlib
import os
import time

import pytest

from conftest import (EventStream, b64, kill_if_running, pb_bytes, pid_alive, proto_fields,
                      read_stream, stream_open, unary, unb64, wait_until)

G_START = "/guestd.v1.Process/Start"
G_ATTACH = "/guestd.v1.Process/Attach"
G_RESULT = "/guestd.v1.Process/Result"
G_SIGNAL = "/guestd.v1.Process/Signal"
E_START = "/process.Process/Start"
E_CONNECT = "/process.Process/Connect"
E_SEND_INPUT = "/process.Process/SendInput"

KINDS = {"STREAM_STDOUT": "stdout", "STREAM_STDERR": "stderr", "STREAM_PTY": "pty"}


# --- helpers --------------------------------------------------------------------------------

def sh(script, **extra):
    return {"process": {"cmd": "sh", "args": ["-c", script]}, **extra}


def cmd(*argv, **extra):
    process = {"cmd": argv[0]}
    if len(argv) > 1:
        process["args"] = list(argv[1:])
    return {"process": process, **extra}


class GStream(EventStream):
    """A guestd.v1 event stream whose first message (checked to be start) has been read."""

    def __init__(self, g, path, msg, headers=None, unix=False, timeout=30):
        super().__init__(g, path, msg, headers, unix=unix, timeout=timeout)
        assert self.status == 200, self.status
        first = self.next()
        assert first is not None, f"stream ended before the start event: {self.end}"
        assert set(first) == {"start", "generation"}, first
        assert first["generation"] == "1", first
        self.started = first["start"]
        self.pid = self.started.get("pid", 0)


class Collected:
    """Output of a guestd.v1 stream, with offsets checked to be contiguous per stream."""

    def __init__(self, start_offsets=None):
        self.data = {"stdout": bytearray(), "stderr": bytearray(), "pty": bytearray()}
        self.base = dict(start_offsets or {"stdout": 0, "stderr": 0, "pty": 0})
        self.next_off = dict(self.base)
        self.gaps = []
        self.end = None
        self.events = 0

    def add(self, m):
        assert m.get("generation") == "1", m
        self.events += 1
        (kind,) = [k for k in m if k != "generation"]
        assert self.end is None, f"{kind} after the end event"
        ev = m[kind]
        if kind == "data":
            name = KINDS[ev["stream"]]
            off = int(ev.get("offset", "0"))
            assert off == self.next_off[name], (name, off, self.next_off[name])
            chunk = unb64(ev["data"])
            assert chunk, m
            self.data[name] += chunk
            self.next_off[name] = off + len(chunk)
        elif kind == "gap":
            name = KINDS[ev["stream"]]
            off = int(ev.get("offset", "0"))
            lost = int(ev["lost"])
            assert off == self.next_off[name], (name, off, self.next_off[name])
            assert lost > 0, m
            self.gaps.append((name, off, lost))
            self.next_off[name] = off + lost
        elif kind == "end":
            self.end = ev
        else:
            assert kind == "keepalive" and ev == {}, m

    def read_all(self, s, pause=0):
        while True:
            m = s.next()
            if m is None:
                assert self.end is not None, f"no end event; end frame {s.end}"
                return self
            self.add(m)
            if pause:
                time.sleep(pause)

    def read_until(self, s, name, nbytes):
        while len(self.data[name]) < nbytes:
            m = s.next()
            assert m is not None, f"stream ended early: {s.end}"
            self.add(m)


def run_g(g, msg, **kw):
    """A whole guestd.v1 Start: (start event, Collected)."""
    with GStream(g, G_START, msg, **kw) as s:
        c = Collected().read_all(s)
        assert s.end == {}, s.end
        return s.started, c


def result(g, selector):
    r = unary(g, G_RESULT, {"process": selector})
    return r.status, r.json()


def result_of(g, selector):
    status, body = result(g, selector)
    assert status == 200, body
    return body["result"]


def wait_ended(g, selector, timeout=30):
    def ended():
        r = result_of(g, selector)
        return r if r["cause"] != "EXIT_CAUSE_RUNNING" else None
    return wait_until(ended, timeout=timeout, what=f"{selector} to end")


def signal_rpc(g, selector, sig, scope=None):
    msg = {"process": selector, "signal": sig}
    if scope:
        msg["scope"] = scope
    return unary(g, G_SIGNAL, msg)


def ts_ns(text):
    """RFC 3339 UTC timestamp with 0-9 fractional digits -> (seconds string, nanoseconds)."""
    assert text.endswith("Z"), text
    base, _, frac = text[:-1].partition(".")
    assert len(base) == 19 and base[10] == "T", text
    return base, int((frac or "0").ljust(9, "0"))


def pattern(n, seed=0):
    """n deterministic, position-dependent bytes."""
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(b"%d:%d" % (seed, i)).digest()
        i += 1
    return bytes(out[:n])


# --- Start ------------------------------------------------------------------------------------

def test_start_events_offsets_and_result(guestd):
    started, c = run_g(guestd, {"start": sh("printf abc; printf de >&2; printf fgh; exit 2"),
                                "execId": "e-1"})
    assert started["execId"] == "e-1" and started["pid"] > 0
    assert c.data["stdout"] == b"abcfgh" and c.data["stderr"] == b"de"
    assert c.gaps == []
    r = c.end
    assert r["pid"] == started["pid"] and r["execId"] == "e-1"
    assert r["cause"] == "EXIT_CAUSE_EXITED"
    assert r["exitCode"] == 2 and r["status"] == "exit status 2"
    assert r["stdoutBytes"] == "6" and r["stderrBytes"] == "2"
    assert "ptyBytes" not in r and "outputCut" not in r and "signal" not in r
    assert ts_ns(r["startedAt"]) <= ts_ns(r["endedAt"])
    assert sorted(unb64(r["tail"])) == sorted(b"abcfghde")


def test_start_without_exec_id(guestd):
    started, c = run_g(guestd, {"start": cmd("echo", "hi")})
    assert "execId" not in started
    assert c.data["stdout"] == b"hi\n"
    assert c.end["cause"] == "EXIT_CAUSE_EXITED" and "execId" not in c.end


def test_start_proto_codec(guestd):
    config = pb_bytes(1, "sh") + pb_bytes(2, "-c") + pb_bytes(2, "printf hi; exit 1")
    body = pb_bytes(1, pb_bytes(1, config)) + pb_bytes(2, "px-1")
    s, r, status, headers = stream_open(guestd, G_START, body, proto=True)
    with s:
        assert status == 200
        assert dict(headers)["content-type"] == "application/connect+proto"
        envs = read_stream(r)
    assert envs[-1] == (2, b"{}")
    events = [proto_fields(p) for f, p in envs[:-1]]
    assert all(e[6] == [1] for e in events)  # generation
    start = proto_fields(events[0][1][0])
    assert start[1][0] > 0 and start[2] == [b"px-1"]
    data = proto_fields(events[1][2][0])
    assert data[1] == [1] and 2 not in data and data[3] == [b"hi"]  # STDOUT, offset 0
    end = proto_fields(events[-1][4][0])
    assert end[1] == start[1] and end[2] == [b"px-1"]
    assert end[3] == [2]  # EXIT_CAUSE_EXITED
    assert end[4] == [2]  # sint32 zigzag of 1
    assert end[6] == [b"exit status 1"]
    assert end[12] == [2]


def test_spawn_failure_is_typed(guestd):
    with GStream(guestd, G_START, {"start": cmd("/nonexistent/bin"), "execId": "sf-1"}) as s:
        c = Collected().read_all(s)
        assert s.end == {}
    assert c.events == 1  # only the end event follows start
    r = c.end
    assert r["cause"] == "EXIT_CAUSE_SPAWN_FAILED"
    assert r["spawnStep"] == "exec" and r["spawnErrno"] == 2
    assert r["execId"] == "sf-1"
    assert r["status"] == "spawn failed"
    # The retained failure: Result by exec id, and envd's Start with the same id fails again
    # without spawning.
    assert result_of(guestd, {"execId": "sf-1"})["cause"] == "EXIT_CAUSE_SPAWN_FAILED"
    e = EventStream(guestd, E_START, cmd("/nonexistent/bin"), {"Guestd-Exec-Id": "sf-1"})
    with e:
        assert e.rest() == []
    assert e.end["error"]["code"] == "invalid_argument"
    assert "exec" in e.end["error"]["message"]


def test_spawn_failure_start_has_no_pid(guestd):
    with GStream(guestd, G_START, {"start": cmd("/nonexistent/bin"), "execId": "sf-2"}) as s:
        assert s.started == {"execId": "sf-2"}
        s.rest()


def test_unknown_profile_invalid_argument(guestd):
    s = EventStream(guestd, G_START, {"start": cmd("true"), "profile": "no-such-profile"})
    with s:
        assert s.rest() == []
    assert s.end["error"]["code"] == "invalid_argument"


def test_missing_start_invalid_argument(guestd):
    s = EventStream(guestd, G_START, {"execId": "x"})
    with s:
        assert s.rest() == []
    assert s.end["error"]["code"] == "invalid_argument"


# --- exec ids ---------------------------------------------------------------------------------

def test_exec_id_retry_does_not_run_again(guestd, tmp_path):
    f = tmp_path / "once.txt"
    msg = {"start": sh(f"echo once >> '{f}'; echo ran"), "execId": "job-1"}
    started, c = run_g(guestd, msg)
    assert c.data["stdout"] == b"ran\n"
    started2, c2 = run_g(guestd, msg)
    assert started2 == started  # same pid, same exec id
    assert c2.data["stdout"] == b"ran\n"  # output replayed from offset 0
    assert c2.end == c.end
    assert f.read_text() == "once\n"
    # The same id for a different command.
    s = EventStream(guestd, G_START, {"start": sh("echo other"), "execId": "job-1"})
    with s:
        assert s.rest() == []
    assert s.end == {"error": {"code": "failed_precondition",
                               "message": "exec id 'job-1' was already used for a different "
                                          "command"}}
    assert f.read_text() == "once\n"
    assert result_of(guestd, {"execId": "job-1"}) == c.end


def test_exec_id_retry_while_running_attaches(guestd, tmp_path):
    f = tmp_path / "once.txt"
    msg = {"start": sh(f"echo once >> '{f}'; echo first; read x; echo bye"), "execId": "job-2"}
    with GStream(guestd, G_START, msg) as a:
        ca = Collected()
        ca.read_until(a, "stdout", len(b"first\n"))
        with GStream(guestd, G_START, msg) as b:
            assert b.started == a.started
            cb = Collected()
            cb.read_until(b, "stdout", len(b"first\n"))
            assert unary(guestd, E_SEND_INPUT, {"process": {"pid": a.pid},
                                                "input": {"stdin": b64("\n")}}).status == 200
            cb.read_all(b)
        ca.read_all(a)
    assert ca.data["stdout"] == cb.data["stdout"] == b"first\nbye\n"
    assert ca.end == cb.end and ca.end["cause"] == "EXIT_CAUSE_EXITED"
    assert f.read_text() == "once\n"


def test_exec_id_too_long_invalid_argument(guestd):
    s = EventStream(guestd, G_START, {"start": cmd("true"), "execId": "x" * 129})
    with s:
        assert s.rest() == []
    assert s.end["error"]["code"] == "invalid_argument"


# --- Attach -----------------------------------------------------------------------------------

def test_attach_replays_from_offsets(guestd, tmp_path):
    n = 100_000
    content = pattern(n)
    f = tmp_path / "out.bin"
    f.write_bytes(content)
    with GStream(guestd, G_START, {"start": sh(f"cat '{f}'; printf err >&2; read x; "
                                               "printf tail"), "execId": "att"}) as owner:
        wait_until(lambda: result_of(guestd, {"execId": "att"}).get("stdoutBytes") == str(n) and
                   result_of(guestd, {"execId": "att"}).get("stderrBytes") == "3",
                   what="the output to be written")
        # From offset 0: everything so far, then live output.
        with GStream(guestd, G_ATTACH, {"process": {"pid": owner.pid},
                                        "stdoutOffset": "0"}) as a:
            assert a.started["pid"] == owner.pid
            c = Collected()
            c.read_until(a, "stdout", n)
            c.read_until(a, "stderr", 3)
            assert c.data["stdout"] == content and c.data["stderr"] == b"err"
            assert unary(guestd, E_SEND_INPUT, {"process": {"pid": owner.pid},
                                                "input": {"stdin": b64("\n")}}).status == 200
            c.read_all(a)
            assert a.end == {}
        assert c.data["stdout"] == content + b"tail"
        assert c.gaps == []
        assert c.end["stdoutBytes"] == str(n + 4)
        Collected().read_all(owner)
    # From the middle (not on a chunk boundary), after the end, stderr skipped entirely.
    mid = n // 2 + 123
    with GStream(guestd, G_ATTACH, {"process": {"execId": "att"}, "stdoutOffset": str(mid),
                                    "stderrOffset": "3"}) as a:
        c = Collected({"stdout": mid, "stderr": 3, "pty": 0}).read_all(a)
        assert a.end == {}
    assert c.data["stdout"] == content[mid:] + b"tail"
    assert c.data["stderr"] == b""
    assert c.gaps == []
    assert c.end["cause"] == "EXIT_CAUSE_EXITED"


def test_attach_by_tag_and_errors(guestd):
    started, _ = run_g(guestd, {"start": sh("echo x", tag="at")})
    with GStream(guestd, G_ATTACH, {"process": {"tag": "at"}}) as a:
        c = Collected().read_all(a)
    assert a.started["pid"] == started["pid"]
    assert c.data["stdout"] == b"x\n"
    for sel, code in (({"pid": 999999999}, "not_found"), ({"execId": "nope"}, "not_found"),
                      ({"tag": "nope"}, "not_found"), ({}, "invalid_argument")):
        s = EventStream(guestd, G_ATTACH, {"process": sel})
        with s:
            assert s.rest() == []
        assert s.end["error"]["code"] == code, (sel, s.end)


def test_gap_event_when_log_dropped_output(guestd_factory, tmp_path):
    g = guestd_factory("--output-log-cap", "65536")
    n = 1024 * 1024
    content = pattern(n, seed=1)
    f = tmp_path / "big.bin"
    f.write_bytes(content)
    # Nobody reads while the process writes: its envd Start client leaves at once.
    s = EventStream(g, E_START, cmd("cat", str(f), tag="gap"))
    s.close()
    r = wait_ended(g, {"tag": "gap"})
    assert r["stdoutBytes"] == str(n)
    with GStream(g, G_ATTACH, {"process": {"tag": "gap"}, "stdoutOffset": "0"}) as a:
        c = Collected().read_all(a)
        assert a.end == {}
    assert len(c.gaps) == 1, c.gaps
    name, off, lost = c.gaps[0]
    assert (name, off) == ("stdout", 0)
    kept = c.data["stdout"]
    assert 0 < len(kept) <= 65536
    assert lost + len(kept) == n
    assert kept == content[lost:]
    assert c.end["stdoutBytes"] == str(n)


# --- output policies --------------------------------------------------------------------------

def write_random(path, size):
    h = hashlib.sha256()
    with open(path, "wb") as fh:
        left = size
        while left:
            block = os.urandom(min(left, 1 << 20))
            h.update(block)
            fh.write(block)
            left -= len(block)
    return h.hexdigest()


def block_policy_run(g, f, total, digest, exec_id):
    with GStream(g, G_START, {"start": cmd("cat", str(f)), "execId": exec_id,
                              "outputPolicy": "OUTPUT_POLICY_BLOCK"}, unix=True,
                 timeout=60) as s:
        # The client reads nothing for a while: the child must wait, not run ahead.
        time.sleep(1.0)
        r = result_of(g, {"execId": exec_id})
        assert r["cause"] == "EXIT_CAUSE_RUNNING", r
        assert int(r.get("stdoutBytes", "0")) < total
        # Then a slow reader.
        c = Collected().read_all(s, pause=0.001)
        assert s.end == {}
    assert c.gaps == []
    assert len(c.data["stdout"]) == total
    assert hashlib.sha256(c.data["stdout"]).hexdigest() == digest
    assert c.end["stdoutBytes"] == str(total)


def test_block_policy_loses_nothing(guestd_factory, tmp_path):
    g = guestd_factory("--output-log-cap", "262144")
    total = 10_000_000
    f = tmp_path / "rand.bin"
    digest = write_random(f, total)
    block_policy_run(g, f, total, digest, "blk-1")


def test_block_policy_small_log_cap(guestd_factory, tmp_path):
    g = guestd_factory("--output-log-cap", "65536")
    total = 10_000_000
    f = tmp_path / "rand.bin"
    digest = write_random(f, total)
    block_policy_run(g, f, total, digest, "blk-2")


def test_block_policy_text_complete_and_in_order(guestd):
    # The same output that an envd reader at this pace loses (see test_process.py), with the
    # block policy: complete and in order.
    expected = "".join(f"{i}\n" for i in range(1, 1000001)).encode()
    with GStream(guestd, G_START, {"start": cmd("seq", "1", "1000000"),
                                   "outputPolicy": "OUTPUT_POLICY_BLOCK"}, unix=True,
                 timeout=60) as s:
        c = Collected().read_all(s, pause=0.002)
        assert s.end == {}
    assert c.gaps == []
    assert c.data["stdout"] == expected
    assert c.end["status"] == "exit status 0"


def test_block_policy_50mib_byte_exact(guestd, tmp_path):
    total = 50 * 1024 * 1024
    f = tmp_path / "rand.bin"
    digest = write_random(f, total)
    try:
        with GStream(guestd, G_START, {"start": cmd("cat", str(f)),
                                       "outputPolicy": "OUTPUT_POLICY_BLOCK"},
                     timeout=60) as s:
            h = hashlib.sha256()
            n = 0
            nxt = 0
            end = None
            while True:
                m = s.next()
                if m is None:
                    break
                assert "gap" not in m, m
                if "data" in m:
                    assert int(m["data"].get("offset", "0")) == nxt
                    chunk = unb64(m["data"]["data"])
                    h.update(chunk)
                    n += len(chunk)
                    nxt += len(chunk)
                elif "end" in m:
                    end = m["end"]
            assert s.end == {}
    finally:
        f.unlink()
    assert n == total
    assert h.hexdigest() == digest
    assert end["stdoutBytes"] == str(total) and end["status"] == "exit status 0"


def test_default_policy_stopped_reader_gets_gaps(guestd_factory, tmp_path):
    g = guestd_factory("--output-log-cap", "262144")
    total = 10_000_000
    f = tmp_path / "rand.bin"
    write_random(f, total)
    content = f.read_bytes()
    with GStream(g, G_START, {"start": cmd("cat", str(f)), "execId": "drop-1"}, unix=True,
                 timeout=60) as s:
        r = wait_ended(g, {"execId": "drop-1"})  # the child never waits for the reader
        assert r["stdoutBytes"] == str(total)
        c = Collected().read_all(s)
        assert s.end == {}  # guestd.v1 readers are never cut: they get gaps
    assert c.gaps, "expected gap events"
    lost = sum(x[2] for x in c.gaps)
    assert lost + len(c.data["stdout"]) == total
    assert c.next_off["stdout"] == total
    # What arrived is byte-exact at its offsets.
    pos = 0
    got = c.data["stdout"]
    gaps = {off: n for _, off, n in c.gaps}
    src = 0
    while src < total:
        if src in gaps:
            src += gaps[src]
            continue
        nxt = min([o for o in gaps if o > src] + [total])
        assert got[pos:pos + nxt - src] == content[src:nxt]
        pos += nxt - src
        src = nxt
    assert pos == len(got)


# --- Result -----------------------------------------------------------------------------------

def test_result_by_pid_tag_and_exec_id(guestd):
    started, c = run_g(guestd, {"start": sh("printf out; printf err >&2; exit 7", tag="res"),
                                "execId": "res-1"})
    by = [result_of(guestd, sel) for sel in ({"pid": started["pid"]}, {"tag": "res"},
                                             {"execId": "res-1"})]
    assert by[0] == by[1] == by[2] == c.end
    r = by[0]
    assert r["pid"] == started["pid"] and r["execId"] == "res-1"
    assert r["cause"] == "EXIT_CAUSE_EXITED" and r["exitCode"] == 7
    assert r["status"] == "exit status 7"
    assert r["stdoutBytes"] == "3" and r["stderrBytes"] == "3"
    assert unb64(r["tail"]) in (b"outerr", b"errout")
    assert ts_ns(r["startedAt"]) <= ts_ns(r["endedAt"])


def test_result_tail_is_last_4kib(guestd, tmp_path):
    content = pattern(10000, seed=2)
    f = tmp_path / "t.bin"
    f.write_bytes(content)
    started, _ = run_g(guestd, {"start": cmd("cat", str(f))})
    r = result_of(guestd, {"pid": started["pid"]})
    assert r["stdoutBytes"] == "10000"
    assert unb64(r["tail"]) == content[-4096:]


def test_result_of_running_process(guestd):
    with GStream(guestd, G_START, {"start": cmd("sleep", "30"), "execId": "run-1"}) as s:
        r = result_of(guestd, {"execId": "run-1"})
        assert r["cause"] == "EXIT_CAUSE_RUNNING"
        assert r["pid"] == s.pid and "startedAt" in r and "endedAt" not in r
        assert signal_rpc(guestd, {"pid": s.pid}, 9).status == 200
        c = Collected().read_all(s)
    assert c.end["cause"] == "EXIT_CAUSE_SIGNALED_BY_CLIENT"
    assert c.end["signal"] == 9 and c.end["exitCode"] == -1
    assert c.end["status"] == "signal: killed"


def test_result_signaled_by_itself(guestd):
    _, c = run_g(guestd, {"start": sh("kill -TERM $$")})
    assert c.end["cause"] == "EXIT_CAUSE_SIGNALED"
    assert c.end["signal"] == 15 and c.end["status"] == "signal: terminated"


def test_result_errors(guestd):
    for sel, status, code in (({"pid": 999999999}, 404, "not_found"),
                              ({"tag": "nope"}, 404, "not_found"),
                              ({"execId": "nope"}, 404, "not_found"),
                              ({}, 400, "invalid_argument")):
        st, body = result(guestd, sel)
        assert (st, body["code"]) == (status, code), (sel, body)


def test_result_expires(guestd_factory):
    g = guestd_factory("--result-ttl-ms", "1000")
    started, c = run_g(g, {"start": cmd("true"), "execId": "ttl-1"})
    pid = started["pid"]
    assert result_of(g, {"execId": "ttl-1"}) == c.end  # kept right after the end
    wait_until(lambda: result(g, {"pid": pid})[0] == 404, what="the result to expire")
    status, body = result(g, {"execId": "ttl-1"})
    assert (status, body["code"]) == (404, "not_found")
    s = EventStream(g, E_CONNECT, {"process": {"pid": pid}})
    with s:
        assert s.rest() == []
    assert s.end["error"] == {"code": "not_found", "message": f"process with pid {pid} not found"}


# --- Signal -----------------------------------------------------------------------------------

def test_signal_usr1_handled_process_continues(guestd):
    script = 'trap "echo usr1" USR1; echo ready; while :; do sleep 0.05; done'
    with GStream(guestd, G_START, {"start": sh(script), "execId": "usr"}) as s:
        c = Collected()
        c.read_until(s, "stdout", len(b"ready\n"))
        r = signal_rpc(guestd, {"execId": "usr"}, 10)
        assert r.status == 200 and r.json() == {}, r
        c.read_until(s, "stdout", len(b"ready\nusr1\n"))
        assert c.data["stdout"] == b"ready\nusr1\n"
        assert result_of(guestd, {"execId": "usr"})["cause"] == "EXIT_CAUSE_RUNNING"
        r = signal_rpc(guestd, {"pid": s.pid}, 9, "SIGNAL_SCOPE_GROUP")
        assert r.status == 200, r
        c.read_all(s)
    assert c.end["cause"] == "EXIT_CAUSE_SIGNALED_BY_CLIENT"
    assert c.end["status"] == "signal: killed"
    # Signalling an ended process.
    r = signal_rpc(guestd, {"execId": "usr"}, 15)
    assert r.status == 400 and r.json()["code"] == "failed_precondition", r


def start_two_sleepers(g, exec_id):
    s = GStream(g, G_START, {"start": sh("sleep 100 & echo $!; sleep 100 & echo $!; wait"),
                             "execId": exec_id})
    c = Collected()
    while c.data["stdout"].count(b"\n") < 2:
        m = s.next()
        assert m is not None, s.end
        c.add(m)
    return s, c, [int(x) for x in c.data["stdout"].split()]


def test_signal_group_scope_kills_process_group(guestd):
    s, c, kids = start_two_sleepers(guestd, "grp")
    try:
        with s:
            r = signal_rpc(guestd, {"pid": s.pid}, 15, "SIGNAL_SCOPE_GROUP")
            assert r.status == 200, r
            c.read_all(s)
        assert c.end["cause"] == "EXIT_CAUSE_SIGNALED_BY_CLIENT"
        assert c.end["status"] == "signal: terminated"
        # The whole group died, so the pipes closed: the output was not cut.
        assert "outputCut" not in c.end
        for k in kids:
            wait_until(lambda: not pid_alive(k), what=f"sleeper {k} to die")
    finally:
        for k in kids:
            kill_if_running(k, "sleep")


def test_signal_process_scope_spares_the_group(guestd_factory):
    g = guestd_factory("--output-drain-ms", "300")
    s, c, kids = start_two_sleepers(g, "proc")
    try:
        with s:
            r = signal_rpc(g, {"pid": s.pid}, 15, "SIGNAL_SCOPE_PROCESS")
            assert r.status == 200, r
            c.read_all(s)
        assert c.end["status"] == "signal: terminated"
        assert c.end["outputCut"] is True  # the sleepers still hold the pipes
        assert all(pid_alive(k) for k in kids)
    finally:
        for k in kids:
            kill_if_running(k, "sleep")


def test_signal_errors(guestd):
    with GStream(guestd, G_START, {"start": cmd("sleep", "30"), "execId": "se"}) as s:
        for sig, scope, status, code in ((0, None, 400, "invalid_argument"),
                                         (65, None, 400, "invalid_argument"),
                                         (15, "SIGNAL_SCOPE_CGROUP", 501, "unimplemented")):
            r = signal_rpc(guestd, {"pid": s.pid}, sig, scope)
            assert r.status == status and r.json()["code"] == code, (sig, scope, r)
        r = signal_rpc(guestd, {"pid": 999999999}, 15)
        assert r.status == 404 and r.json()["code"] == "not_found", r
        r = signal_rpc(guestd, {}, 15)
        assert r.status == 400 and r.json()["code"] == "invalid_argument", r
        assert result_of(guestd, {"execId": "se"})["cause"] == "EXIT_CAUSE_RUNNING"
        assert signal_rpc(guestd, {"execId": "se"}, 9).status == 200
        Collected().read_all(s)

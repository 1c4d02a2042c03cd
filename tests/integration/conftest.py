# SPDX-License-Identifier: Apache-2.0
"""Fixtures for black-box tests of the built guestd binary.

Each test gets its own guestd on a free loopback TCP port and a Unix socket in a temp
directory. The helpers below speak raw HTTP/1.1 and Connect framing on purpose: these tests
assert wire bytes, so they must not depend on guestd's own client library.
"""
import json
import os
import socket
import struct
import subprocess
import time

import pytest

GUESTD = os.environ.get("GUESTD_BIN") or os.path.join(
    os.path.dirname(__file__), "..", "..", "build", "agent", "guestd")

# How long guestd may take to start listening (generous: CI machines are shared).
START_TIMEOUT_S = 20


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Guestd:
    """One guestd process.

    listen=False leaves out the default --listen/--config flags (the caller's args choose the
    listeners; pass port= for the TCP port to wait for). prefix is a command (for example
    setpriv) that guestd is started under.
    """

    def __init__(self, tmp_path, args=(), env=None, prefix=(), listen=True, port=None):
        self.tmp = tmp_path
        self.port = port if port is not None else free_port()
        self.sock = str(tmp_path / "guestd.sock")
        self.run_dir = str(tmp_path / "run")
        self.log_path = tmp_path / "guestd.log"
        self.listen = listen
        if listen:
            self.args = [*prefix, GUESTD, "--listen", f"tcp:127.0.0.1:{self.port}",
                         "--listen", f"unix:{self.sock}", "--run-dir", self.run_dir,
                         "--config", str(tmp_path / "none.conf"),
                         "--log-level", "debug", *args]
            (tmp_path / "none.conf").write_text("# empty\n")
        else:
            self.args = [*prefix, GUESTD, "--run-dir", self.run_dir, *args]
        self.env = env
        self.proc = None

    def start(self):
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=self.env)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("guestd exited early:\n" + self.log_text())
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    if not self.listen or os.path.exists(self.sock):
                        return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("guestd did not start:\n" + self.log_text())

    def log_text(self):
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self.log.close()
        return self.proc.returncode if self.proc else None

    def wait_exit(self, timeout=20):
        """Waits for guestd to exit on its own; returns the exit status (None if it did not)."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def connect(self, unix=False, timeout=10):
        if unix:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(timeout)
            s.connect(self.sock)
            return s
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)


@pytest.fixture
def guestd_factory(tmp_path):
    started = []

    def make(*args, env=None, prefix=(), listen=True, port=None):
        d = tmp_path / f"g{len(started)}"
        d.mkdir()
        g = Guestd(d, args, env, prefix=prefix, listen=listen, port=port)
        started.append(g)
        return g.start()

    yield make
    for g in started:
        g.stop()


@pytest.fixture
def guestd(guestd_factory):
    return guestd_factory()


# --- raw HTTP -------------------------------------------------------------------------------

class Response:
    def __init__(self, status, reason, headers, body):
        self.status = status
        self.reason = reason
        self.headers = headers  # list of (lower-name, value)
        self.body = body

    def header(self, name):
        for k, v in self.headers:
            if k == name.lower():
                return v
        return None

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<Response {self.status} {self.headers} {self.body[:200]!r}>"


class Reader:
    """Reads HTTP/1.1 responses from a socket (Content-Length, chunked or to EOF)."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("connection closed")
        self.buf += data

    def line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def exact(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def head(self):
        status_line = self.line().decode()
        _, status, *reason = status_line.split(" ", 2)
        headers = []
        while True:
            line = self.line()
            if not line:
                break
            k, v = line.decode().split(":", 1)
            headers.append((k.strip().lower(), v.strip()))
        return int(status), (reason[0] if reason else ""), headers

    def chunks(self):
        """Yields the chunks of a chunked body as they arrive."""
        while True:
            size = int(self.line().split(b";")[0], 16)
            if size == 0:
                while self.line():
                    pass
                return
            data = self.exact(size)
            assert self.exact(2) == b"\r\n"
            yield data

    def response(self, method="GET"):
        status, reason, headers = self.head()
        if status == 100:
            return self.response(method)
        hd = dict(headers)
        if method == "HEAD" or status in (204, 304):
            body = b""
        elif "content-length" in hd:
            body = self.exact(int(hd["content-length"]))
        elif hd.get("transfer-encoding") == "chunked":
            body = b"".join(self.chunks())
        else:
            while True:
                try:
                    self._fill()
                except EOFError:
                    break
            body, self.buf = self.buf, b""
        return Response(status, reason, headers, body)

    def closed(self, timeout=5):
        """True if the peer closes the connection (EOF) within timeout."""
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
                self.buf += data
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False


def build_request(method, path, body=b"", headers=None, host="localhost"):
    headers = dict(headers or {})
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    if body is not None and (body or method in ("POST", "PUT")) and \
            "Transfer-Encoding" not in headers:
        headers.setdefault("Content-Length", str(len(body)))
    for k, v in headers.items():
        lines.append(f"{k}: {v}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def request(g, method, path, body=b"", headers=None, unix=False):
    with g.connect(unix=unix) as s:
        s.sendall(build_request(method, path, body, headers))
        return Reader(s).response(method)


# --- Connect --------------------------------------------------------------------------------

def envelope(payload, flags=0):
    return struct.pack(">BI", flags, len(payload)) + payload


def parse_envelopes(data):
    out = []
    while data:
        flags, n = struct.unpack(">BI", data[:5])
        out.append((flags, data[5:5 + n]))
        data = data[5 + n:]
    return out


def unary(g, procedure, msg, headers=None, unix=False):
    h = {"Content-Type": "application/json", "Connect-Protocol-Version": "1"}
    h.update(headers or {})
    return request(g, "POST", procedure, json.dumps(msg).encode(), h, unix=unix)


def stream_open(g, procedure, msg, headers=None, unix=False, proto=False):
    """Starts a server stream; returns (socket, reader, status, headers)."""
    h = {"Content-Type": "application/connect+proto" if proto else "application/connect+json",
         "Connect-Protocol-Version": "1"}
    h.update(headers or {})
    payload = msg if isinstance(msg, bytes) else json.dumps(msg).encode()
    s = g.connect(unix=unix)
    s.sendall(build_request("POST", procedure, envelope(payload), h))
    r = Reader(s)
    status, _, hdrs = r.head()
    return s, r, status, hdrs


def stream_messages(reader):
    """Yields (flags, payload) envelopes from a chunked Connect stream as they arrive."""
    pending = b""
    for chunk in reader.chunks():
        pending += chunk
        while len(pending) >= 5:
            flags, n = struct.unpack(">BI", pending[:5])
            if len(pending) < 5 + n:
                break
            yield flags, pending[5:5 + n]
            pending = pending[5 + n:]
    assert pending == b"", "stream ended inside an envelope"


# --- more raw helpers -----------------------------------------------------------------------

def raw(g, data, unix=False, method="GET"):
    """Sends raw bytes on a fresh connection and reads one response."""
    with g.connect(unix=unix) as s:
        s.sendall(data)
        return Reader(s).response(method)


def read_to_eof(sock, timeout=10):
    """Reads until the peer closes. Returns (data, closed); closed is False on timeout.
    A reset counts as closed."""
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                return data, True
            data += chunk
    except (ConnectionResetError, BrokenPipeError):
        return data, True
    except socket.timeout:
        pass
    return data, False


def send_ignoring_reset(sock, data):
    """sendall that tolerates the server closing early (it may answer before reading all)."""
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


def health_ok(g, unix=False):
    """A fresh connection is still served."""
    r = request(g, "GET", "/health", unix=unix)
    return r.status == 204


def run_cli(*args, timeout=20):
    """Runs guestd with exactly these arguments (for flags that exit at once)."""
    return subprocess.run([GUESTD, *args], capture_output=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def envs(g, token=None, unix=False, headers=None):
    h = dict(headers or {})
    if token is not None:
        h["X-Access-Token"] = token
    return request(g, "GET", "/envs", headers=h, unix=unix)


def init(g, body, headers=None, unix=False):
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    return request(g, "POST", "/init", payload, h, unix=unix)


# --- protobuf wire format (decoded by hand on purpose) --------------------------------------

def read_varint(data, i):
    shift = value = 0
    while True:
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7
        assert shift < 64, "varint too long"


def decode_proto(data):
    """Returns a list of (field number, wire type, value) for a serialized message."""
    out = []
    i = 0
    while i < len(data):
        key, i = read_varint(data, i)
        field, wt = key >> 3, key & 7
        if wt == 0:
            v, i = read_varint(data, i)
        elif wt == 1:
            v, i = data[i:i + 8], i + 8
        elif wt == 2:
            n, i = read_varint(data, i)
            v, i = data[i:i + n], i + n
            assert i <= len(data), "truncated length-delimited field"
        elif wt == 5:
            v, i = data[i:i + 4], i + 4
        else:
            raise AssertionError(f"unexpected wire type {wt}")
        out.append((field, wt, v))
    assert i == len(data)
    return out


def proto_fields(data):
    """{field number: [values]} of a serialized message."""
    d = {}
    for f, _, v in decode_proto(data):
        d.setdefault(f, []).append(v)
    return d


# --- streams --------------------------------------------------------------------------------

def read_stream(reader):
    """Reads a whole Connect server stream: returns the list of (flags, payload) envelopes.
    Asserts that the chunked body ended cleanly (the terminating zero-size chunk arrived)."""
    return list(stream_messages(reader))


def end_frame(envelopes):
    """The last envelope, checked to be the end-of-stream frame; returns its JSON."""
    assert envelopes, "stream had no envelopes"
    flags, payload = envelopes[-1]
    assert flags == 0x02, f"last envelope flags {flags:#x}, expected end-stream (0x02)"
    return json.loads(payload)


def token_hex(seed):
    """A 64-hex-digit token, distinct per seed."""
    import hashlib
    return hashlib.sha256(seed.encode()).hexdigest()


# --- protobuf encoding (by hand, for proto-codec requests) ----------------------------------

def pb_varint(n):
    """Encodes a non-negative integer as a protobuf varint."""
    assert n >= 0
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def pb_uint(field, n):
    """A varint field (wire type 0)."""
    return pb_varint(field << 3) + pb_varint(n)


def pb_bytes(field, data):
    """A length-delimited field (wire type 2): bytes, strings (str is UTF-8 encoded) or
    sub-messages."""
    if isinstance(data, str):
        data = data.encode()
    return pb_varint(field << 3 | 2) + pb_varint(len(data)) + data


def zigzag_decode(n):
    """The value of a sint32/sint64 varint."""
    return (n >> 1) ^ -(n & 1)


# --- JSON server streams ---------------------------------------------------------------------

class EventStream:
    """A Connect server stream with the JSON codec, read message by message.

    next() returns the next message (parsed JSON) or None once the end-of-stream frame
    arrived; that frame's JSON is then in .end. Use as a context manager to close the socket.
    """

    def __init__(self, g, path, msg, headers=None, unix=False, timeout=30):
        self.sock, self.reader, self.status, self.headers = stream_open(
            g, path, msg, headers, unix=unix)
        self.sock.settimeout(timeout)
        self._it = stream_messages(self.reader)
        self.end = None

    def next(self):
        if self.end is not None:
            return None
        flags, payload = next(self._it)
        if flags & 0x02:
            self.end = json.loads(payload)
            # Nothing may follow the end-of-stream frame: the chunked body ends here.
            rest = list(self._it)
            assert rest == [], f"messages after the end-of-stream frame: {rest!r}"
            return None
        assert flags == 0, f"unexpected envelope flags {flags:#x}"
        return json.loads(payload)

    def rest(self):
        """All remaining messages up to the end-of-stream frame (which goes to .end)."""
        out = []
        while True:
            m = self.next()
            if m is None:
                return out
            out.append(m)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def b64(data):
    import base64
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode()


def unb64(text):
    import base64
    return base64.b64decode(text or "")


def wait_until(predicate, timeout=20, interval=0.05, what="condition"):
    """Polls predicate() until it returns a true value (returned); fails after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        v = predicate()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def pid_alive(pid):
    """True while pid exists (a zombie counts as alive: it has not been reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_if_running(pid, needle):
    """SIGKILLs pid if it is still a process whose command line contains needle (guards
    against pid reuse); for cleaning up grandchildren that tests started."""
    import signal as _signal
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return
    if needle.encode() in cmdline:
        try:
            os.kill(pid, _signal.SIGKILL)
        except ProcessLookupError:
            return
        # Give guestd (a child subreaper) the chance to reap it before it is stopped, so that
        # no zombie is handed to the machine's init. Best effort: cleanup must not fail a test.
        deadline = time.monotonic() + 10
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)

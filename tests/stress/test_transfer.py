# SPDX-License-Identifier: Apache-2.0
"""Stress: one 1 GiB upload and one 1 GiB download through /files (application/octet-stream),
content checked by SHA-256 on both ends, and guestd's memory bounded: its peak resident set
(VmHWM, from /proc/<pid>/status) may exceed its resident set before the transfers (after a
warm-up) by at most 16 MiB.

Uses the integration suite's fixtures and helpers (tests/integration/conftest.py). Needs root
and the user 'user' (1001, /home/user), like the integration suite, and ~1 GiB of free disk.
"""
import hashlib
import os
import pwd
import shutil
import sys
import tempfile
import urllib.parse

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
from conftest import Reader, build_request, guestd_factory  # noqa: E402,F401 (fixture)

USER = "user"
UID = 1001
HOME = "/home/user"
MiB = 1024 * 1024
SIZE = 1024 * MiB
RSS_BUDGET_KIB = 16 * 1024
TIMEOUT_S = 600


def have_user():
    try:
        pw = pwd.getpwnam(USER)
    except KeyError:
        return False
    return pw.pw_uid == UID and pw.pw_dir == HOME and os.path.isdir(HOME)


pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (guestd switches to the user)"),
    pytest.mark.skipif(not have_user(), reason="needs the user 'user' (1001, /home/user)"),
]


@pytest.fixture
def d():
    path = tempfile.mkdtemp(prefix="stress-", dir=HOME)
    os.chown(path, UID, UID)
    if shutil.disk_usage(path).free < SIZE + 256 * MiB:
        shutil.rmtree(path, ignore_errors=True)
        pytest.skip("needs more than 1 GiB of free disk under /home/user")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def q(**params):
    return "/files?" + urllib.parse.urlencode(params, quote_via=urllib.parse.quote)


def status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError("no " + field)


def upload(g, path, size, block):
    want = hashlib.sha256()
    with g.connect(timeout=TIMEOUT_S) as s:
        s.sendall(build_request("POST", q(path=path), None,
                                {"Content-Type": "application/octet-stream",
                                 "Content-Length": str(size)}))
        for i in range(size // len(block)):
            chunk = i.to_bytes(8, "big") + block[8:]  # no two blocks alike
            want.update(chunk)
            s.sendall(chunk)
        r = Reader(s).response()
    assert r.status == 200, r
    return want.hexdigest(), r


def download(g, path):
    got = hashlib.sha256()
    with g.connect(timeout=TIMEOUT_S) as s:
        s.sendall(build_request("GET", q(path=path)))
        rd = Reader(s)
        status, _, headers = rd.head()
        assert status == 200
        length = int(dict(headers)["content-length"])
        got.update(rd.buf)
        left = length - len(rd.buf)
        while left > 0:
            data = s.recv(min(left, 1 << 20))
            assert data, "connection closed early"
            got.update(data)
            left -= len(data)
    return length, got.hexdigest()


def test_1gib_each_way_bounded_memory(guestd_factory, d):
    g = guestd_factory("--default-user", USER)
    pid = g.proc.pid
    block = os.urandom(MiB)
    # Warm up: the first transfer allocates the buffers that later ones reuse.
    upload(g, os.path.join(d, "warm.bin"), 8 * MiB, block)
    assert download(g, os.path.join(d, "warm.bin"))[0] == 8 * MiB
    rss_before = status_kib(pid, "VmRSS")

    target = os.path.join(d, "big.bin")
    want, r = upload(g, target, SIZE, block)
    assert r.header("etag") == f'"sha256:{want}"'
    assert os.path.getsize(target) == SIZE
    rss_up = status_kib(pid, "VmRSS")

    length, got = download(g, target)
    assert length == SIZE
    assert got == want
    rss_down = status_kib(pid, "VmRSS")
    peak = status_kib(pid, "VmHWM")
    growth = max(peak, rss_up, rss_down) - rss_before
    assert growth <= RSS_BUDGET_KIB, \
        f"RSS grew by {growth} KiB (before {rss_before}, after upload {rss_up}, " \
        f"after download {rss_down}, peak {peak})"

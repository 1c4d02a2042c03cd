# SPDX-License-Identifier: Apache-2.0
"""POST /files/compose (protocol-envd.md §4.7): concatenation as the user, rename over the
destination, sources deleted; 400/401/404/507 and the token gate.

guestd runs as root with `--default-user user`; files live in a temporary directory under
/home/user owned by `user` (uid 1001).
"""
import json
import os
import pwd
import shutil
import subprocess
import tempfile

import pytest

from conftest import init, request, token_hex

USER = "user"
UID = 1001
HOME = "/home/user"


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
def g(guestd_factory):
    return guestd_factory("--default-user", USER)


@pytest.fixture
def d():
    path = tempfile.mkdtemp(prefix="compose-test-", dir=HOME)
    os.chown(path, UID, UID)
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def make(path, data, uid=UID):
    with open(path, "wb") as f:
        f.write(data)
    os.chown(path, uid, uid)
    return path


def compose(g, body, headers=None):
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return request(g, "POST", "/files/compose", raw, h)


def err(r, status):
    assert r.status == status, r
    body = json.loads(r.body)
    assert body["code"] == status
    return body["message"]


def test_compose_concatenates(g, d):
    parts = [os.urandom(n) for n in (0, 1, 300 * 1024, 7)]
    srcs = [make(os.path.join(d, f"p{i}"), p) for i, p in enumerate(parts)]
    dest = os.path.join(d, "out.bin")
    r = compose(g, {"source_paths": srcs, "destination": dest})
    assert r.status == 200, r
    assert json.loads(r.body) == {"name": "out.bin", "path": dest, "type": "file"}
    with open(dest, "rb") as f:
        assert f.read() == b"".join(parts)
    st = os.stat(dest)
    assert st.st_uid == UID and st.st_gid == UID
    assert sorted(os.listdir(d)) == ["out.bin"]  # sources deleted, no temporary left


def test_compose_replaces_and_relative_paths(g, d):
    rel = os.path.relpath(d, HOME)
    make(os.path.join(d, "a"), b"hello ")
    make(os.path.join(d, "b"), b"world")
    dest = make(os.path.join(d, "dest.txt"), b"old content")
    os.chmod(dest, 0o640)
    r = compose(g, {"source_paths": [f"{rel}/a", f"~/{rel}/b"], "destination": f"{rel}/dest.txt",
                    "username": USER})
    assert r.status == 200, r
    assert json.loads(r.body)["path"] == dest
    with open(dest, "rb") as f:
        assert f.read() == b"hello world"
    assert os.stat(dest).st_mode & 0o777 == 0o640
    assert sorted(os.listdir(d)) == ["dest.txt"]


def test_compose_creates_parents(g, d):
    src = make(os.path.join(d, "a"), b"x")
    dest = os.path.join(d, "new", "sub", "f")
    r = compose(g, {"source_paths": [src], "destination": dest})
    assert r.status == 200, r
    assert os.stat(os.path.join(d, "new")).st_uid == UID
    with open(dest, "rb") as f:
        assert f.read() == b"x"


@pytest.mark.parametrize("body", [
    b"not json",
    b"[]",
    {},
    {"source_paths": [], "destination": "x"},
    {"source_paths": "a", "destination": "x"},
    {"source_paths": ["a"]},
    {"source_paths": ["a"], "destination": ""},
    {"source_paths": ["a"], "destination": 5},
    {"source_paths": [""], "destination": "x"},
    {"source_paths": [1], "destination": "x"},
    {"source_paths": ["a"], "destination": "x", "username": 3},
])
def test_compose_bad_input(g, body):
    err(compose(g, body), 400)


def test_compose_too_many_sources(g, d):
    r = compose(g, {"source_paths": [f"{d}/s{i}" for i in range(1001)], "destination": f"{d}/x"})
    assert "too many" in err(r, 400)


def test_compose_same_path(g, d):
    a = make(os.path.join(d, "a"), b"a")
    b = make(os.path.join(d, "b"), b"b")
    assert "also a source" in err(compose(g, {"source_paths": [a, b], "destination": b}), 400)
    # The same file under another name (a symlinked directory) is refused too.
    os.symlink(d, os.path.join(d, "link"))
    r = compose(g, {"source_paths": [a, os.path.join(d, "link", "b")], "destination": b})
    assert "same file" in err(r, 400)
    with open(a, "rb") as f:
        assert f.read() == b"a"
    with open(b, "rb") as f:
        assert f.read() == b"b"


def test_compose_not_regular(g, d):
    a = make(os.path.join(d, "a"), b"a")
    sub = os.path.join(d, "sub")
    os.mkdir(sub)
    fifo = os.path.join(d, "fifo")
    os.mkfifo(fifo)
    for bad in (sub, fifo, "/dev/null"):
        r = compose(g, {"source_paths": [a, bad], "destination": os.path.join(d, "out")})
        assert "not a regular file" in err(r, 400)
    assert "directory" in err(compose(g, {"source_paths": [a], "destination": sub}), 400)
    assert sorted(os.listdir(d)) == ["a", "fifo", "sub"]


def test_compose_missing_source(g, d):
    a = make(os.path.join(d, "a"), b"a")
    r = compose(g, {"source_paths": [a, os.path.join(d, "nope")], "destination": f"{d}/out"})
    assert "not found" in err(r, 404)
    assert sorted(os.listdir(d)) == ["a"]


def test_compose_unknown_user(g, d):
    a = make(os.path.join(d, "a"), b"a")
    r = compose(g, {"source_paths": [a], "destination": f"{d}/out", "username": "nobody-here"})
    assert "unknown user" in err(r, 401)
    assert os.path.exists(a)


def test_compose_runs_as_user(g, d):
    secret = make(os.path.join(d, "secret"), b"root only", uid=0)
    os.chmod(secret, 0o600)
    r = compose(g, {"source_paths": [secret], "destination": f"{d}/out"})
    assert r.status == 403, r
    assert sorted(os.listdir(d)) == ["secret"]
    # As root it works, and the result belongs to root.
    r = compose(g, {"source_paths": [secret], "destination": f"{d}/out", "username": "root"})
    assert r.status == 200, r
    assert os.stat(f"{d}/out").st_uid == 0


def test_compose_no_space(g, d):
    mnt = os.path.join(d, "small")
    os.mkdir(mnt)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755,uid=1001,gid=1001",
                          "tmpfs", mnt], capture_output=True)
    if res.returncode != 0:
        pytest.skip("cannot mount a tmpfs: " + res.stderr.decode(errors="replace"))
    try:
        a = make(os.path.join(mnt, "a"), os.urandom(600 * 1024))
        b = make(os.path.join(d, "b"), os.urandom(600 * 1024))
        r = compose(g, {"source_paths": [a, b], "destination": os.path.join(mnt, "out")})
        err(r, 507)
        assert sorted(os.listdir(mnt)) == ["a"]
        assert os.path.exists(b)
    finally:
        subprocess.run(["umount", mnt], check=False)


def test_compose_method_and_token(g, d):
    r = request(g, "GET", "/files/compose")
    assert r.status == 405 and r.header("allow") == "POST", r
    t = token_hex("compose-T")
    assert init(g, {"accessToken": t}, unix=True).status == 204
    a = make(os.path.join(d, "a"), b"a")
    body = {"source_paths": [a], "destination": f"{d}/out"}
    err(compose(g, body), 401)
    assert os.path.exists(a)
    r = compose(g, body, headers={"X-Access-Token": t})
    assert r.status == 200, r

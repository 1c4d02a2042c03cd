# SPDX-License-Identifier: Apache-2.0
"""guestd's directory transfer through /files: `GET /files?path=DIR&archive=tar` streams the tree
as a POSIX tar, `POST /files?path=DIR` with `Content-Type: application/x-tar` unpacks one safely.

guestd runs as root with `--default-user user`; trees live under /home/user, owned by `user`.
"""
import hashlib
import io
import json
import os
import pwd
import shutil
import tarfile
import tempfile
import urllib.parse

import pytest

from conftest import request

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
    path = tempfile.mkdtemp(prefix="tar-test-", dir=HOME)
    os.chown(path, UID, UID)
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def q(**params):
    return "/files?" + urllib.parse.urlencode(params, quote_via=urllib.parse.quote)


def get_tar(g, path):
    return request(g, "GET", q(path=path, archive="tar"))


def put_tar(g, path, body):
    return request(g, "POST", q(path=path), body, {"Content-Type": "application/x-tar"})


def err(r, status):
    assert r.status == status, r
    body = json.loads(r.body)
    assert body["code"] == status
    return body["message"]


ODD = ["sp ace", "new\nline", "tab\tand 'quotes' \"", "ünïcødé ✓", "x" * 200,
       "-leading-dash", "trailing space "]


def make_tree(root):
    """A tree with odd names; returns {relative name: description} of what a tar must hold."""
    os.makedirs(os.path.join(root, "a", "b", "c"))
    deep = os.path.join(root, *(["d" * 60] * 4))  # a path far beyond ustar's 100 bytes
    os.makedirs(deep)
    os.mkdir(os.path.join(root, "empty dir"))
    files = {"a/b/c/plain.txt": b"hello\n", "empty": b"",
             "big.bin": os.urandom(3 * 1024 * 1024 + 17)}
    for i, n in enumerate(ODD):
        files[f"a/{n}"] = f"odd {i}".encode()
    files[os.path.relpath(os.path.join(deep, "f" * 150), root)] = b"deep"
    for rel, data in files.items():
        with open(os.path.join(root, rel), "wb") as f:
            f.write(data)
    os.chmod(os.path.join(root, "a/b/c/plain.txt"), 0o600)
    os.symlink("b/c/plain.txt", os.path.join(root, "a", "rel link"))
    os.symlink("/etc/passwd", os.path.join(root, "abs-link"))
    os.symlink("l" * 300, os.path.join(root, "long-target"))
    os.mkfifo(os.path.join(root, "fifo"))  # skipped
    for dp, dns, fns in os.walk(root):
        for n in dns + fns:
            os.lchown(os.path.join(dp, n), UID, UID)
    return files


def snapshot(root):
    out = {}
    for dp, dns, fns in os.walk(root):
        for n in dns + fns:
            p = os.path.join(dp, n)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            if os.path.islink(p):
                out[rel] = ("l", os.readlink(p))
            elif os.path.isdir(p):
                out[rel] = ("d",)
            elif os.path.isfile(p):
                with open(p, "rb") as f:
                    out[rel] = ("f", hashlib.sha256(f.read()).hexdigest(), st.st_mode & 0o777)
    return out


def test_tar_round_trip(g, d):
    src = os.path.join(d, "src")
    os.mkdir(src)
    os.chown(src, UID, UID)
    files = make_tree(src)
    r = get_tar(g, src)
    assert r.status == 200, r
    assert r.header("content-type") == "application/x-tar"
    assert r.header("transfer-encoding") == "chunked"
    with tarfile.open(fileobj=io.BytesIO(r.body), mode="r:") as t:
        members = {m.name: m for m in t.getmembers()}
        for rel, data in files.items():
            assert members[rel].isfile()
            assert t.extractfile(members[rel]).read() == data
    assert members["a/rel link"].issym() and members["a/rel link"].linkname == "b/c/plain.txt"
    assert members["long-target"].linkname == "l" * 300
    assert members["empty dir"].isdir()
    assert "fifo" not in members
    assert members["a/b/c/plain.txt"].mode & 0o777 == 0o600

    dst = os.path.join(d, "dst", "new")  # created, parents too
    r = put_tar(g, dst, r.body)
    assert r.status == 200, r
    assert json.loads(r.body) == [{"name": "new", "path": dst, "type": "dir"}]
    want = snapshot(src)
    assert snapshot(dst) == want
    st = os.stat(os.path.join(dst, "big.bin"))
    assert st.st_uid == UID
    # Unpacking again over the same tree replaces files and links.
    r = put_tar(g, dst, get_tar(g, src).body)
    assert r.status == 200, r
    assert snapshot(dst) == want


def test_tar_download_errors(g, d):
    f = os.path.join(d, "file")
    open(f, "w").close()
    assert "not a directory" in err(get_tar(g, f), 400)
    err(get_tar(g, os.path.join(d, "missing")), 404)
    err(request(g, "GET", q(path=d, archive="zip")), 400)


def test_tar_download_as_user(g, d):
    os.makedirs(os.path.join(d, "t", "secret"))
    with open(os.path.join(d, "t", "ok"), "w") as f:
        f.write("ok")
    with open(os.path.join(d, "t", "secret", "s"), "w") as f:
        f.write("s")
    os.chmod(os.path.join(d, "t", "secret"), 0o700)  # root's: the user cannot enter it
    r = get_tar(g, os.path.join(d, "t"))
    assert r.status == 200, r
    with tarfile.open(fileobj=io.BytesIO(r.body)) as t:
        names = t.getnames()
    assert "ok" in names and "secret/s" not in names


def build(entries):
    """A tar from (TarInfo kwargs, data) pairs; names are taken literally."""
    bio = io.BytesIO()
    with tarfile.open(fileobj=bio, mode="w", format=tarfile.PAX_FORMAT) as t:
        for kw, data in entries:
            ti = tarfile.TarInfo(kw.pop("name"))
            for k, v in kw.items():
                setattr(ti, k, v)
            if data is not None:
                ti.size = len(data)
                t.addfile(ti, io.BytesIO(data))
            else:
                t.addfile(ti)
    return bio.getvalue()


def no_temporaries(root):
    for dp, dns, fns in os.walk(root):
        for n in fns:
            assert not n.startswith(".guestd-tar-"), os.path.join(dp, n)


@pytest.mark.parametrize("entries,why", [
    ([({"name": "ok"}, b"fine"), ({"name": "../escape"}, b"evil")], "'..'"),
    ([({"name": "sub/../../escape"}, b"evil")], "'..'"),
    ([({"name": "/tmp/guestd-abs-evil"}, b"evil")], "absolute"),
    ([({"name": "ok"}, b"fine"),
      ({"name": "hl", "type": tarfile.LNKTYPE, "linkname": "ok"}, None)], "hard link"),
    ([({"name": "dev", "type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3}, None)], "device"),
])
def test_tar_hostile(g, d, entries, why):
    dst = os.path.join(d, "x")
    msg = err(put_tar(g, dst, build(entries)), 400)
    assert why in msg
    assert not os.path.exists(os.path.join(d, "escape"))
    assert not os.path.exists("/tmp/guestd-abs-evil")
    assert not os.path.exists(os.path.join(dst, "hl"))
    no_temporaries(d)


def test_tar_symlink_then_file_through_it(g, d):
    outside = os.path.join(d, "outside")
    os.mkdir(outside)
    os.chown(outside, UID, UID)
    dst = os.path.join(d, "x")
    body = build([({"name": "link", "type": tarfile.SYMTYPE, "linkname": outside}, None),
                   ({"name": "link/evil"}, b"evil")])
    assert "symlink" in err(put_tar(g, dst, body), 400)
    assert os.listdir(outside) == []
    # A symlink already in the target is not followed either, nor is the final component.
    os.symlink(outside, os.path.join(dst, "pre"))
    body = build([({"name": "pre/evil"}, b"evil")])
    assert "symlink" in err(put_tar(g, dst, body), 400)
    assert os.listdir(outside) == []
    with open(os.path.join(outside, "t"), "w") as f:
        f.write("keep")
    os.symlink(os.path.join(outside, "t"), os.path.join(dst, "flink"))
    r = put_tar(g, dst, build([({"name": "flink"}, b"replaced")]))
    assert r.status == 200, r
    with open(os.path.join(outside, "t")) as f:
        assert f.read() == "keep"
    assert not os.path.islink(os.path.join(dst, "flink"))
    no_temporaries(d)


def test_tar_failure_leaves_no_partial_file(g, d):
    dst = os.path.join(d, "x")
    body = build([({"name": "done"}, b"complete"), ({"name": "partial"}, os.urandom(100000))])
    cut = body[:len(body) - 1024 - 50000]  # inside the second file's content
    msg = err(put_tar(g, dst, cut), 400)
    assert "truncated" in msg
    assert sorted(os.listdir(dst)) == ["done"]
    no_temporaries(d)
    # Garbage is a clear 400 too.
    assert "invalid tar archive" in err(put_tar(g, dst, b"\x01" * 1024), 400)
    # A tar upload needs a path.
    r = request(g, "POST", "/files", b"", {"Content-Type": "application/x-tar"})
    err(r, 400)

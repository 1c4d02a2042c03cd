# SPDX-License-Identifier: Apache-2.0
"""envd's filesystem.Filesystem unary methods on the wire: Stat, MakeDir, Move, ListDir and
Remove with exact JSON shapes (int64 size as a string, Go's permission strings, RFC 3339
times), symlinks, odd names, depth, users and their credentials, path rules and errors.

guestd runs as root with `--default-user user`, so requests act as the user `user` (uid 1001,
home /home/user) unless they send Basic auth for root. guestd does the file work with the
user's file-system ids, so unlike envd the user cannot read root's private files.
"""
import base64
import concurrent.futures
import json
import os
import pathlib
import pwd
import shutil
import uuid

import pytest

from conftest import pb_bytes, pb_uint, proto_fields, request, unary, init

PREFIX = "/filesystem.Filesystem/"
USER = "user"
HOME = "/home/user"
ROOT_AUTH = {"Authorization": "Basic " + base64.b64encode(b"root:").decode()}
USER_AUTH = {"Authorization": "Basic " + base64.b64encode(b"user:").decode()}
# 2023-11-14T22:13:20.123456789Z
MTIME_NS = 1700000000123456789
MTIME_TEXT = "2023-11-14T22:13:20.123456789Z"


def have_user():
    try:
        pw = pwd.getpwnam(USER)
    except KeyError:
        return False
    return pw.pw_uid == 1001 and pw.pw_dir == HOME and os.path.isdir(HOME)


pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (guestd switches to the user)"),
    pytest.mark.skipif(not have_user(), reason="needs the user 'user' (1001, /home/user)"),
]


def fs(g, method, body, headers=None):
    return unary(g, PREFIX + method, body, headers)


def ok(r):
    assert r.status == 200, r
    assert r.header("content-type") == "application/json"
    return r.json()


def err(r, status, code):
    assert r.status == status, r
    assert r.header("content-type") == "application/json"
    body = r.json()
    assert body["code"] == code, body
    return body["message"]


def chown_user(path):
    os.lchown(path, 1001, 1001)


def write(path, data=b"", mode=0o644, owner_user=True):
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    if owner_user:
        chown_user(path)


@pytest.fixture
def g(guestd_factory):
    return guestd_factory("--default-user", USER)


@pytest.fixture
def home_dir():
    """A fresh directory in the user's home, owned by the user: (relative name, absolute)."""
    name = "guestd-fs-" + uuid.uuid4().hex[:10]
    path = os.path.join(HOME, name)
    os.mkdir(path, 0o755)
    chown_user(path)
    yield name, path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def shared_tmp():
    """A root-owned 0755 directory under /tmp that the user can enter (pytest's own temp
    directories are 0700)."""
    path = f"/tmp/guestd-fs-{uuid.uuid4().hex[:10]}"
    os.mkdir(path)
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def root_private(shared_tmp):
    """A root-only directory (0700) with a file inside: another user's private data."""
    d = os.path.join(shared_tmp, "root-private")
    os.mkdir(d)
    os.chmod(d, 0o700)
    with open(os.path.join(d, "secret.txt"), "w") as f:
        f.write("secret")
    return d


def test_listdir_envd_example_shape(g, home_dir):
    rel, base = home_dir
    d = os.path.join(base, "test_directory")
    os.mkdir(d)
    chown_user(d)
    f = os.path.join(d, "file1.txt")
    write(f, b"Hello, world!")
    os.utime(f, ns=(MTIME_NS, MTIME_NS))

    r = fs(g, "ListDir", {"path": f"{rel}/test_directory", "depth": 1})
    body = ok(r)
    assert body == {"entries": [{
        "name": "file1.txt",
        "type": "FILE_TYPE_FILE",
        "path": f"{HOME}/{rel}/test_directory/file1.txt",
        "size": "13",
        "mode": 420,
        "permissions": "-rw-r--r--",
        "owner": "user",
        "group": "user",
        "modifiedTime": MTIME_TEXT,
    }]}
    # int64 as a JSON string, exactly as protojson writes it.
    assert b'"size":"13"' in r.body

    # An empty directory: no entries field at all (protojson omits empty repeated fields).
    os.remove(f)
    assert ok(fs(g, "ListDir", {"path": f"{rel}/test_directory"})) == {}


def test_stat_file_dir_home_and_path_forms(g, home_dir):
    rel, base = home_dir
    f = os.path.join(base, "a.txt")
    write(f, b"abc", 0o640)
    os.utime(f, ns=(MTIME_NS, MTIME_NS))
    want = {
        "name": "a.txt", "type": "FILE_TYPE_FILE", "path": f, "size": "3", "mode": 0o640,
        "permissions": "-rw-r-----", "owner": "user", "group": "user",
        "modifiedTime": MTIME_TEXT,
    }
    # Absolute, relative to home, "~/…", and unclean forms all resolve to the same entry.
    for p in (f, f"{rel}/a.txt", f"~/{rel}/a.txt", f"./{rel}//x/../a.txt", f"{base}/./a.txt"):
        assert ok(fs(g, "Stat", {"path": p})) == {"entry": want}, p

    e = ok(fs(g, "Stat", {"path": rel}))["entry"]
    assert e["type"] == "FILE_TYPE_DIRECTORY"
    assert e["permissions"] == "drwxr-xr-x" and e["mode"] == 0o755
    assert e["path"] == base and e["name"] == rel

    # "" and "~" are the home directory (no default workdir set).
    for p in ("", "~", "~/"):
        e = ok(fs(g, "Stat", {"path": p}))["entry"]
        assert e["path"] == HOME and e["name"] == "user", p
        assert e["owner"] == "user"


def test_stat_special_files(g):
    e = ok(fs(g, "Stat", {"path": "/dev/null"}))["entry"]
    assert e["permissions"] == "Dcrw-rw-rw-"
    assert e["mode"] == 0o666
    assert "type" not in e  # FILE_TYPE_UNSPECIFIED is the default: omitted
    assert e["owner"] == "root" and e["group"] == "root"
    assert "symlinkTarget" not in e

    e = ok(fs(g, "Stat", {"path": "/tmp"}))["entry"]
    assert e["permissions"] == "dtrwxrwxrwx"


def test_stat_errors(g, home_dir):
    rel, base = home_dir
    msg = err(fs(g, "Stat", {"path": f"{rel}/missing.txt"}), 404, "not_found")
    assert msg == f"file not found: lstat {base}/missing.txt: no such file or directory"

    msg = err(fs(g, "Stat", {"path": "~root/x"}), 400, "invalid_argument")
    assert msg == ("failed to expand path '~root/x' for user 'user': "
                   "cannot expand user-specific home dir")

    write(os.path.join(base, "file"))
    msg = err(fs(g, "Stat", {"path": f"{rel}/file/below"}), 500, "internal")
    assert msg == f"error getting file info: lstat {base}/file/below: not a directory"


def test_symlinks(g, home_dir):
    rel, base = home_dir
    target = os.path.join(base, "target.txt")
    write(target, b"12345", 0o600)
    sub = os.path.join(base, "sub")
    os.mkdir(sub, 0o750)
    chown_user(sub)
    os.chmod(sub, 0o750)
    write(os.path.join(sub, "inner.txt"))
    os.symlink("target.txt", os.path.join(base, "link-file"))
    os.symlink(sub, os.path.join(base, "link-dir"))
    os.symlink("nowhere", os.path.join(base, "dangling"))
    os.symlink("link-file", os.path.join(base, "chain"))

    e = ok(fs(g, "Stat", {"path": f"{rel}/link-file"}))["entry"]
    assert e["name"] == "link-file"
    assert e["path"] == f"{base}/link-file"  # the link itself, not its target
    assert e["type"] == "FILE_TYPE_FILE"      # the target's type
    assert e["mode"] == 0o600                 # the target's permission bits
    assert e["permissions"] == "Lrwxrwxrwx"   # the link's own mode
    assert e["size"] == str(len("target.txt"))
    assert e["symlinkTarget"] == target       # absolute and resolved

    e = ok(fs(g, "Stat", {"path": f"{rel}/chain"}))["entry"]
    assert e["symlinkTarget"] == target and e["type"] == "FILE_TYPE_FILE"

    e = ok(fs(g, "Stat", {"path": f"{rel}/link-dir"}))["entry"]
    assert e["type"] == "FILE_TYPE_DIRECTORY" and e["mode"] == 0o750
    assert e["symlinkTarget"] == sub

    e = ok(fs(g, "Stat", {"path": f"{rel}/dangling"}))["entry"]
    assert "type" not in e and "mode" not in e  # unspecified, 0: omitted
    assert e["permissions"] == "Lrwxrwxrwx"
    assert e["symlinkTarget"] == f"{base}/dangling"

    # ListDir of a symlinked directory walks the target but reports the requested path.
    entries = ok(fs(g, "ListDir", {"path": f"{rel}/link-dir"}))["entries"]
    assert [(x["name"], x["path"]) for x in entries] == [
        ("inner.txt", f"{base}/link-dir/inner.txt")]

    # Inside a listing, symlinks are listed with their target's type but never descended.
    entries = ok(fs(g, "ListDir", {"path": rel, "depth": 5}))["entries"]
    names = [x["path"][len(base) + 1:] for x in entries]
    assert names == ["chain", "dangling", "link-dir", "link-file", "sub", "sub/inner.txt",
                     "target.txt"]
    by_name = {x["name"]: x for x in entries}
    assert by_name["link-dir"]["type"] == "FILE_TYPE_DIRECTORY"
    assert by_name["link-dir"]["symlinkTarget"] == sub
    assert "type" not in by_name["dangling"]
    assert "symlinkTarget" not in by_name["sub"]


ODD_NAMES = ["with space", "quote\"and'apostrophe", "new\nline", "tab\there", "back\\slash",
             "unicode-é✓", "emoji-🙂", "-dash", "#hash", "%percent", "a" * 200]


def test_odd_names(g, home_dir):
    rel, base = home_dir
    for n in ODD_NAMES:
        write(os.path.join(base, n), n.encode())
    entries = ok(fs(g, "ListDir", {"path": rel}))["entries"]
    got = [x["name"] for x in entries]
    assert got == sorted(ODD_NAMES, key=lambda s: s.encode())  # bytewise order
    for x in entries:
        assert x["path"] == f"{base}/{x['name']}"
        assert x["size"] == str(len(x["name"].encode()))
    for n in ODD_NAMES:
        e = ok(fs(g, "Stat", {"path": f"{rel}/{n}"}))["entry"]
        assert e["name"] == n


def test_name_not_utf8_fails_listing(g, home_dir):
    rel, base = home_dir
    bad = os.path.join(base.encode(), b"bad-\xff-name")
    with open(bad, "wb"):
        pass
    msg = err(fs(g, "ListDir", {"path": rel}), 500, "internal")
    assert "invalid UTF-8" in msg


def test_listdir_depth_and_order(g, home_dir):
    rel, base = home_dir
    layout = ["B", "a/", "a/y/", "a/y/deep/", "a/y/deep/bottom", "a/z", "b.txt", "c/", "c/c1"]
    for p in layout:
        full = os.path.join(base, p)
        if p.endswith("/"):
            os.mkdir(full)
            chown_user(full)
        else:
            write(full, b"x")

    def listing(depth):
        body = {"path": rel} if depth is None else {"path": rel, "depth": depth}
        entries = ok(fs(g, "ListDir", body)).get("entries", [])
        for x in entries:
            assert x["path"].startswith(base + "/")
        return [x["path"][len(base) + 1:] for x in entries]

    d1 = ["B", "a", "b.txt", "c"]
    assert listing(None) == d1
    assert listing(0) == d1  # 0 means 1
    assert listing(1) == d1
    assert listing(2) == ["B", "a", "a/y", "a/z", "b.txt", "c", "c/c1"]
    full = ["B", "a", "a/y", "a/y/deep", "a/y/deep/bottom", "a/z", "b.txt", "c", "c/c1"]
    assert listing(3) == full[:4] + full[5:]
    assert listing(4) == full
    assert listing(1000) == full
    # The name is the last element; directories are typed as such.
    entries = ok(fs(g, "ListDir", {"path": rel, "depth": 4}))["entries"]
    assert entries[3]["name"] == "deep" and entries[3]["type"] == "FILE_TYPE_DIRECTORY"
    assert entries[4]["name"] == "bottom" and entries[4]["type"] == "FILE_TYPE_FILE"


def test_listdir_errors(g, home_dir):
    rel, base = home_dir
    msg = err(fs(g, "ListDir", {"path": f"{rel}/nope/deeper"}), 404, "not_found")
    assert msg == f"path not found: lstat {base}/nope: no such file or directory"

    write(os.path.join(base, "file.txt"))
    msg = err(fs(g, "ListDir", {"path": f"{rel}/file.txt"}), 400, "invalid_argument")
    assert msg == f"path is not a directory: {base}/file.txt"

    os.symlink("loop", os.path.join(base, "loop"))
    msg = err(fs(g, "ListDir", {"path": f"{rel}/loop"}), 400, "failed_precondition")
    assert msg.startswith("cyclic symlink or chain >255 links at")

    err(fs(g, "ListDir", {"path": "~nobody"}), 400, "invalid_argument")


def test_listdir_skips_unreadable_subdirectory(g, home_dir):
    rel, base = home_dir
    # A root-only directory inside the user's tree: listed, but not entered (guestd skips it;
    # envd, running everything as root, never meets it).
    priv = os.path.join(base, "priv")
    os.mkdir(priv, 0o700)
    write(os.path.join(priv, "hidden"), owner_user=False)
    write(os.path.join(base, "z.txt"))
    entries = ok(fs(g, "ListDir", {"path": rel, "depth": 3}))["entries"]
    assert [x["name"] for x in entries] == ["priv", "z.txt"]
    assert entries[0]["owner"] == "root"


@pytest.fixture
def many_dir(shared_tmp):
    """An empty directory for 100,001 files: on tmpfs when there is one (creating them on a
    disk file system takes seconds)."""
    base = shared_tmp
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        base = f"/dev/shm/guestd-fs-{uuid.uuid4().hex[:10]}"
        os.mkdir(base)
        os.chmod(base, 0o755)
    d = os.path.join(base, "many")
    os.mkdir(d)
    yield d
    if base != shared_tmp:
        shutil.rmtree(base, ignore_errors=True)


def test_listdir_entry_limit(g, many_dir):
    # One more entry than a listing may return (FS_LIST_MAX_ENTRIES in agent/rpc/fs.c).
    d = many_dir
    for i in range(100001):
        os.close(os.open(os.path.join(d, str(i)), os.O_CREAT | os.O_WRONLY, 0o644))
    msg = err(fs(g, "ListDir", {"path": d}), 429, "resource_exhausted")
    assert msg == f"too many entries under '{d}': a listing returns at most 100000"
    os.remove(os.path.join(d, "0"))
    # 100,000 entries fit the 16 MiB response limit with the binary codec...
    r = request(g, "POST", PREFIX + "ListDir", pb_bytes(1, d),
                {"Content-Type": "application/proto"})
    assert r.status == 200
    assert len(proto_fields(r.body)[1]) == 100000
    # ...but not as JSON: refused before encoding, with the reason.
    msg = err(fs(g, "ListDir", {"path": d}), 429, "resource_exhausted")
    assert msg == f"the listing of '{d}' is larger than the 16777216-byte response limit"


def test_other_users_private_files(g, root_private):
    secret = os.path.join(root_private, "secret.txt")
    msg = err(fs(g, "Stat", {"path": secret}), 403, "permission_denied")
    assert msg == f"permission denied: lstat '{secret}'"
    msg = err(fs(g, "ListDir", {"path": root_private}), 403, "permission_denied")
    assert msg == f"permission denied: open '{root_private}'"
    msg = err(fs(g, "Remove", {"path": secret}), 403, "permission_denied")
    assert root_private in msg
    assert os.path.exists(secret)
    msg = err(fs(g, "MakeDir", {"path": os.path.join(root_private, "new")}), 403,
              "permission_denied")
    assert msg.startswith("permission denied: stat '")
    msg = err(fs(g, "Move", {"source": secret, "destination": "/tmp/stolen-secret"}), 403,
              "permission_denied")
    assert not os.path.exists("/tmp/stolen-secret")
    # /root itself is 0700 root: the user cannot look inside (envd could, as root).
    err(fs(g, "ListDir", {"path": "/root"}), 403, "permission_denied")

    # The same requests as root succeed.
    e = ok(fs(g, "Stat", {"path": secret}, ROOT_AUTH))["entry"]
    assert e["owner"] == "root" and e["size"] == "6"
    entries = ok(fs(g, "ListDir", {"path": root_private}, ROOT_AUTH))["entries"]
    assert [x["name"] for x in entries] == ["secret.txt"]


def test_makedir(g, home_dir):
    rel, base = home_dir
    r = fs(g, "MakeDir", {"path": f"{rel}/a/b/c"})
    e = ok(r)["entry"]
    assert e["name"] == "c" and e["path"] == f"{base}/a/b/c"
    assert e["type"] == "FILE_TYPE_DIRECTORY"
    assert e["permissions"] == "drwxr-xr-x" and e["mode"] == 0o755
    assert e["owner"] == "user" and e["group"] == "user"
    for p in ("a", "a/b", "a/b/c"):
        st = os.stat(os.path.join(base, p))
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1001, 1001, 0o755), p

    msg = err(fs(g, "MakeDir", {"path": f"{rel}/a/b/c"}), 409, "already_exists")
    assert msg == f"directory already exists: {base}/a/b/c"
    msg = err(fs(g, "MakeDir", {"path": f"~/{rel}/a"}), 409, "already_exists")

    write(os.path.join(base, "f"))
    msg = err(fs(g, "MakeDir", {"path": f"{rel}/f"}), 400, "invalid_argument")
    assert msg == f"path already exists but it is not a directory: {base}/f"
    msg = err(fs(g, "MakeDir", {"path": f"{rel}/f/sub"}), 500, "internal")
    assert "not a directory" in msg

    # As root, new directories belong to root.
    e = ok(fs(g, "MakeDir", {"path": f"{base}/rootdir/x"}, ROOT_AUTH))["entry"]
    assert e["owner"] == "root"

    # In a directory the user may not write to.
    err(fs(g, "MakeDir", {"path": "/usr/guestd-should-not-exist"}), 403, "permission_denied")
    assert not os.path.exists("/usr/guestd-should-not-exist")


def test_move(g, home_dir):
    rel, base = home_dir
    src = os.path.join(base, "src.txt")
    write(src, b"moved data")
    os.utime(src, ns=(MTIME_NS, MTIME_NS))
    e = ok(fs(g, "Move", {"source": f"{rel}/src.txt",
                          "destination": f"{rel}/new/parents/dst.txt"}))["entry"]
    dst = f"{base}/new/parents/dst.txt"
    assert e == {"name": "dst.txt", "type": "FILE_TYPE_FILE", "path": dst, "size": "10",
                 "mode": 420, "permissions": "-rw-r--r--", "owner": "user", "group": "user",
                 "modifiedTime": MTIME_TEXT}
    assert not os.path.exists(src) and open(dst, "rb").read() == b"moved data"
    st = os.stat(os.path.join(base, "new"))
    assert (st.st_uid, st.st_gid) == (1001, 1001)

    msg = err(fs(g, "Move", {"source": f"{rel}/src.txt", "destination": f"{rel}/x"}),
              404, "not_found")
    assert msg == (f"source file not found: rename {base}/src.txt {base}/x: "
                   "no such file or directory")

    # A directory moves with its contents; an existing directory is never replaced.
    os.makedirs(os.path.join(base, "d1/inner"))
    os.mkdir(os.path.join(base, "d2"))
    msg = err(fs(g, "Move", {"source": f"{rel}/d1", "destination": f"{rel}/d2"}),
              500, "internal")
    assert msg == f"error renaming: rename {base}/d1 {base}/d2: file exists"
    e = ok(fs(g, "Move", {"source": f"~/{rel}/d1", "destination": f"{rel}/d3"}))["entry"]
    assert e["type"] == "FILE_TYPE_DIRECTORY" and e["path"] == f"{base}/d3"
    assert os.path.isdir(os.path.join(base, "d3/inner"))

    err(fs(g, "Move", {"source": "", "destination": f"{rel}/x"}), 400, "invalid_argument")
    err(fs(g, "Move", {"source": f"{rel}/d3", "destination": "~other/x"}), 400,
        "invalid_argument")


def test_move_across_file_systems_fails(g, home_dir):
    rel, base = home_dir
    if os.stat("/dev/shm").st_dev == os.stat(base).st_dev:
        pytest.skip("/dev/shm is on the same file system")
    write(os.path.join(base, "x.txt"), b"x")
    dest = f"/dev/shm/guestd-fs-{uuid.uuid4().hex[:8]}.txt"
    msg = err(fs(g, "Move", {"source": f"{rel}/x.txt", "destination": dest}), 500, "internal")
    assert msg == f"error renaming: rename {base}/x.txt {dest}: invalid cross-device link"
    assert os.path.exists(os.path.join(base, "x.txt")) and not os.path.exists(dest)


def test_remove(g, home_dir, shared_tmp):
    rel, base = home_dir
    outside = pathlib.Path(shared_tmp) / "outside"
    outside.mkdir()
    os.chmod(outside, 0o777)  # the user could delete in here if it followed the link
    (outside / "keep.txt").write_text("keep")
    os.makedirs(os.path.join(base, "tree/a/b"))
    write(os.path.join(base, "tree/a/b/f"))
    os.symlink(str(outside), os.path.join(base, "tree/a/to-outside"))
    os.symlink(str(outside / "keep.txt"), os.path.join(base, "tree/keep-link"))
    for root, dirs, files in os.walk(os.path.join(base, "tree")):
        for n in dirs + files:
            chown_user(os.path.join(root, n))
    chown_user(os.path.join(base, "tree"))

    assert ok(fs(g, "Remove", {"path": f"{rel}/tree"})) == {}
    assert not os.path.lexists(os.path.join(base, "tree"))
    assert (outside / "keep.txt").read_text() == "keep"  # symlinks were not followed

    # Missing paths are success; a single file goes.
    assert ok(fs(g, "Remove", {"path": f"{rel}/tree"})) == {}
    assert ok(fs(g, "Remove", {"path": f"{rel}/no/such/path"})) == {}
    write(os.path.join(base, "f.txt"))
    assert ok(fs(g, "Remove", {"path": f"~/{rel}/f.txt"})) == {}
    assert not os.path.exists(os.path.join(base, "f.txt"))

    msg = err(fs(g, "Remove", {"path": "/"}), 400, "invalid_argument")
    assert msg == "refusing to remove '/'"
    err(fs(g, "Remove", {"path": "/.."}), 400, "invalid_argument")
    err(fs(g, "Remove", {"path": ""}), 400, "invalid_argument")
    err(fs(g, "Remove", {"path": "~root"}), 400, "invalid_argument")


def test_default_workdir_for_empty_path(g, home_dir):
    rel, base = home_dir
    write(os.path.join(base, "in-workdir.txt"))
    assert init(g, {"defaultWorkdir": base}).status == 204
    entries = ok(fs(g, "ListDir", {"path": ""}))["entries"]
    assert [x["path"] for x in entries] == [f"{base}/in-workdir.txt"]
    assert ok(fs(g, "Stat", {}))["entry"]["path"] == base
    # Relative paths still resolve against home, not the workdir.
    assert ok(fs(g, "Stat", {"path": rel}))["entry"]["path"] == base


def test_proto_codec(g, home_dir):
    rel, base = home_dir
    write(os.path.join(base, "p.bin"), b"12345678", 0o600)
    r = request(g, "POST", PREFIX + "Stat", pb_bytes(1, f"{rel}/p.bin"),
                {"Content-Type": "application/proto"})
    assert r.status == 200 and r.header("content-type") == "application/proto"
    entry = proto_fields(proto_fields(r.body)[1][0])
    assert entry[1] == [b"p.bin"]
    assert entry[2] == [1]                       # FILE_TYPE_FILE
    assert entry[3] == [f"{base}/p.bin".encode()]
    assert entry[4] == [8]                       # size
    assert entry[5] == [0o600]
    assert entry[6] == [b"-rw-------"]
    assert entry[7] == [b"user"] and entry[8] == [b"user"]
    assert 10 not in entry                       # not a symlink

    r = request(g, "POST", PREFIX + "ListDir", pb_bytes(1, rel) + pb_uint(2, 1),
                {"Content-Type": "application/proto"})
    assert r.status == 200
    entries = proto_fields(r.body)[1]
    assert [proto_fields(x)[1] for x in entries] == [[b"p.bin"]]

    r = request(g, "POST", PREFIX + "Stat", pb_bytes(1, f"{rel}/missing"),
                {"Content-Type": "application/proto"})
    assert r.status == 404 and r.json()["code"] == "not_found"


def test_basic_auth_user_matches_default(g, home_dir):
    rel, base = home_dir
    write(os.path.join(base, "x"))
    e = ok(fs(g, "Stat", {"path": f"{rel}/x"}, USER_AUTH))["entry"]
    assert e["path"] == f"{base}/x"
    # Root's home is /root: relative paths follow the requesting user.
    e = ok(fs(g, "Stat", {"path": ""}, ROOT_AUTH))["entry"]
    assert e["path"] == "/root"


def test_unknown_methods_are_not_found(g):
    r = fs(g, "Chmod", {"path": "/tmp"})
    assert r.status == 404
    assert r.json()["code"] == "unimplemented"


def test_many_requests_keep_credentials_straight(g, home_dir, root_private):
    """Concurrent root and user requests on libuv's shared worker threads: every user request
    is denied and every root request allowed, so no thread kept another's credentials, and
    files the user creates meanwhile are the user's."""
    rel, base = home_dir
    secret = os.path.join(root_private, "secret.txt")

    def one(i):
        if i % 3 == 0:
            return fs(g, "Stat", {"path": secret}, ROOT_AUTH).status == 200
        if i % 3 == 1:
            return fs(g, "Stat", {"path": secret}).status == 403
        r = fs(g, "MakeDir", {"path": f"{rel}/d{i}"})
        return r.status == 200 and r.json()["entry"]["owner"] == "user"

    with concurrent.futures.ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(one, range(150)))
    assert all(results), [i for i, ok_ in enumerate(results) if not ok_]
    for n in os.listdir(base):
        assert os.stat(os.path.join(base, n)).st_uid == 1001, n


def test_metadata_from_xattrs(g, home_dir):
    rel, base = home_dir
    f = os.path.join(base, "meta.txt")
    write(f, b"m")
    try:
        os.setxattr(f, "user.e2b.owner", b"team-a")
    except OSError:
        pytest.skip("no user xattrs on this file system")
    os.setxattr(f, "user.e2b.empty", b"")
    os.setxattr(f, "user.other", b"ignored")
    os.setxattr(f, "user.e2b.binary", b"\xff\xfe")  # not UTF-8: left out
    e = ok(fs(g, "Stat", {"path": f}))["entry"]
    assert e["metadata"] == {"owner": "team-a", "empty": ""}
    entries = ok(fs(g, "ListDir", {"path": rel}))["entries"]
    assert entries[0]["metadata"] == {"owner": "team-a", "empty": ""}
    # No xattrs: no metadata field.
    write(os.path.join(base, "plain.txt"))
    assert "metadata" not in ok(fs(g, "Stat", {"path": f"{rel}/plain.txt"}))["entry"]

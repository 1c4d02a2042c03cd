# SPDX-License-Identifier: Apache-2.0
"""Directory watches on the wire: filesystem.Filesystem/WatchDir (start event, the events of
the usual file operations with names relative to the root, recursion, include_entry,
keepalives, errors), the polling watchers (CreateWatcher, GetWatcherEvents, RemoveWatcher),
guestd.v1.Filesystem/Watch (sequence numbers, rescan after a real inotify overflow), and that
guestd keeps one inotify instance whose watches go away with their clients.

guestd runs as root with `--default-user user`, so watches act as the user `user` (uid 1001,
home /home/user): the user must be able to list what they watch.
"""
import base64
import json
import os
import pwd
import re
import shutil
import signal
import time
import uuid

import pytest

from conftest import (EventStream, Reader, build_request, pb_bytes, pb_uint, proto_fields,
                      request, stream_messages, stream_open, unary, wait_until)

FS = "/filesystem.Filesystem/"
WATCH_DIR = FS + "WatchDir"
G_WATCH = "/guestd.v1.Filesystem/Watch"
USER = "user"
HOME = "/home/user"
ROOT_AUTH = {"Authorization": "Basic " + base64.b64encode(b"root:").decode()}
# Error text envd sends when inotify's queue overflows (fsnotify's ErrEventOverflow).
OVERFLOW_TEXT = "watcher error: fsnotify: queue or buffer overflow"


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


@pytest.fixture
def g(guestd_factory):
    return guestd_factory("--default-user", USER)


def chown_user(path):
    os.lchown(path, 1001, 1001)


@pytest.fixture
def home_dir():
    """A fresh directory in the user's home, owned by the user: (relative name, absolute)."""
    name = "guestd-watch-" + uuid.uuid4().hex[:10]
    path = os.path.join(HOME, name)
    os.mkdir(path, 0o755)
    chown_user(path)
    yield name, path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def shared_tmp():
    """A root-owned 0755 directory under /tmp that the user can enter."""
    path = f"/tmp/guestd-watch-{uuid.uuid4().hex[:10]}"
    os.mkdir(path)
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def write(path, data=b"x"):
    with open(path, "wb") as f:
        f.write(data)


def touch(path):
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))


class Watch(EventStream):
    """A watch stream whose first message (checked) has been read."""

    def __init__(self, g, body, path=WATCH_DIR, headers=None, timeout=20):
        super().__init__(g, path, body, headers=headers, timeout=timeout)
        assert self.status == 200, self.status
        first = self.next()
        assert first is not None, f"stream ended before the start event: {self.end}"
        self.first = first

    def until(self, name):
        """Reads messages up to and including the filesystem event for `name` (a marker the
        test created after the operations under test); returns the events before it. Every
        test action is followed by a marker, so nothing relies on timeouts."""
        out = []
        while True:
            m = self.next()
            assert m is not None, f"stream ended: {self.end}"
            if "keepalive" in m:
                continue
            assert "filesystem" in m, m
            if m["filesystem"]["name"] == name:
                return out
            out.append(m["filesystem"])


def pairs(events):
    return [(e["name"], e["type"].removeprefix("EVENT_TYPE_")) for e in events]


def no_chmod(events):
    """MakeDir chowns what it creates (as envd's EnsureDirs), which inotify reports as CHMOD."""
    return [p for p in pairs(events) if p[1] != "CHMOD"]


def marker(base, rel="marker"):
    """Creates a marker file and returns its name relative to the watched root."""
    name = f"{rel}-{uuid.uuid4().hex[:6]}"
    touch(os.path.join(base, name))
    return name


# --- WatchDir --------------------------------------------------------------------------------

def test_start_event_comes_first(g, home_dir):
    rel, base = home_dir
    with Watch(g, {"path": rel}) as w:
        assert w.first == {"start": {}}
        assert dict(w.headers)["content-type"] == "application/connect+json"


def test_usual_file_operations(g, home_dir):
    rel, base = home_dir
    f, f2 = os.path.join(base, "f.txt"), os.path.join(base, "g.txt")
    with Watch(g, {"path": rel}) as w:
        write(f, b"hello")
        assert pairs(w.until(marker(base))) == [("f.txt", "CREATE"), ("f.txt", "WRITE")]
        # Writing an existing file again.
        with open(f, "ab") as fh:
            fh.write(b" world")
        assert pairs(w.until(marker(base))) == [("f.txt", "WRITE")]
        os.chmod(f, 0o600)
        assert pairs(w.until(marker(base))) == [("f.txt", "CHMOD")]
        os.rename(f, f2)
        assert pairs(w.until(marker(base))) == [("f.txt", "RENAME"), ("g.txt", "CREATE")]
        os.unlink(f2)
        assert pairs(w.until(marker(base))) == [("g.txt", "REMOVE")]
        os.mkdir(os.path.join(base, "d"))
        os.rmdir(os.path.join(base, "d"))
        assert pairs(w.until(marker(base))) == [("d", "CREATE"), ("d", "REMOVE")]


def test_paths_relative_and_absolute_and_home(g, home_dir):
    rel, base = home_dir
    for path in (base, "~/" + rel, rel + "/", rel + "/./"):
        with Watch(g, {"path": path}) as w:
            touch(os.path.join(base, "x"))
            os.unlink(os.path.join(base, "x"))
            assert pairs(w.until(marker(base))) == [("x", "CREATE"), ("x", "REMOVE")]


def test_recursive_nested_events(g, home_dir):
    rel, base = home_dir
    with Watch(g, {"path": rel, "recursive": True}) as w:
        # The SDK's makeDir of a nested directory, then a file written in it.
        r = unary(g, FS + "MakeDir", {"path": f"{rel}/nested"})
        assert r.status == 200, r
        assert no_chmod(w.until(marker(base))) == [("nested", "CREATE")]
        write(os.path.join(base, "nested", "file"), b"data")
        assert pairs(w.until(marker(base))) == [("nested/file", "CREATE"),
                                                ("nested/file", "WRITE")]
        os.unlink(os.path.join(base, "nested", "file"))
        assert pairs(w.until(marker(base))) == [("nested/file", "REMOVE")]


def test_non_recursive_ignores_nested_changes(g, home_dir):
    rel, base = home_dir
    os.mkdir(os.path.join(base, "sub"))
    with Watch(g, {"path": rel}) as w:
        write(os.path.join(base, "sub", "file"))
        os.mkdir(os.path.join(base, "new"))
        write(os.path.join(base, "new", "file"))
        assert pairs(w.until(marker(base))) == [("new", "CREATE")]


def test_mkdir_p_reports_every_level(g, home_dir):
    rel, base = home_dir
    with Watch(g, {"path": rel, "recursive": True}) as w:
        r = unary(g, FS + "MakeDir", {"path": f"{rel}/a/b/c"})
        assert r.status == 200, r
        got = no_chmod(w.until(marker(base)))
        assert got == [("a", "CREATE"), ("a/b", "CREATE"), ("a/b/c", "CREATE")], got
        write(os.path.join(base, "a", "b", "c", "deep"))
        assert pairs(w.until(marker(base))) == [("a/b/c/deep", "CREATE"),
                                                ("a/b/c/deep", "WRITE")]


def test_recursive_rename_and_removal_of_a_tree(g, home_dir):
    rel, base = home_dir
    os.makedirs(os.path.join(base, "a", "b"))
    with Watch(g, {"path": rel, "recursive": True}) as w:
        os.rename(os.path.join(base, "a"), os.path.join(base, "z"))
        assert pairs(w.until(marker(base))) == [("a", "RENAME"), ("z", "CREATE"),
                                                ("z/b", "CREATE")]
        write(os.path.join(base, "z", "b", "f"))
        assert pairs(w.until(marker(base))) == [("z/b/f", "CREATE"), ("z/b/f", "WRITE")]
        shutil.rmtree(os.path.join(base, "z"))
        assert pairs(w.until(marker(base))) == [("z/b/f", "REMOVE"), ("z/b", "REMOVE"),
                                                ("z", "REMOVE")]


def test_include_entry(g, home_dir):
    rel, base = home_dir
    with Watch(g, {"path": rel, "recursive": True, "includeEntry": True}) as w:
        f = os.path.join(base, "e.txt")
        write(f, b"12345")
        chown_user(f)
        os.rename(f, os.path.join(base, "e2.txt"))
        os.unlink(os.path.join(base, "e2.txt"))
        evs = w.until(marker(base))
        assert pairs(evs) == [("e.txt", "CREATE"), ("e.txt", "WRITE"), ("e.txt", "CHMOD"),
                              ("e.txt", "RENAME"), ("e2.txt", "CREATE"), ("e2.txt", "REMOVE")]
        by = {(e["name"], e["type"]): e for e in evs}
        # The entry is the file's state when it is looked at (after the event), if it is still
        # there; never for REMOVE and RENAME.
        for key in [("e.txt", "EVENT_TYPE_RENAME"), ("e2.txt", "EVENT_TYPE_REMOVE")]:
            assert "entry" not in by[key], by[key]
        # Entries of paths that exist at the time they are fetched look like Stat's.
        os.mkdir(os.path.join(base, "dir"))
        evs = w.until(marker(base))
        assert pairs(evs) == [("dir", "CREATE")]
        d = evs[0]["entry"]
        assert d["name"] == "dir" and d["type"] == "FILE_TYPE_DIRECTORY", d
        assert d["path"] == os.path.join(base, "dir")
        assert d["permissions"] == "drwxr-xr-x" and d["owner"] == "root", d
        write(os.path.join(base, "dir", "kept"), b"abc")
        evs = w.until(marker(base))
        assert pairs(evs) == [("dir/kept", "CREATE"), ("dir/kept", "WRITE")]
        k = [e for e in evs if e["name"] == "dir/kept" and e["type"] == "EVENT_TYPE_WRITE"]
        assert k and k[-1]["entry"]["size"] == "3", evs
        assert k[-1]["entry"]["path"] == os.path.join(base, "dir", "kept")
        stat = unary(g, FS + "Stat", {"path": os.path.join(base, "dir", "kept")}).json()
        assert k[-1]["entry"] == stat["entry"]


def test_sdk_write_sequences_through_files(g, home_dir):
    """The upstream SDK's watch tests: POST /files of a new file in a recursive watch, and onto
    an existing file, must each produce a WRITE named after the file. guestd replaces files
    atomically (a temporary name, then a rename); its watchers hide the temporary name and
    report envd's in-place sequences: CREATE, WRITE for a new file; WRITE, CHMOD for a
    replaced one."""
    rel, base = home_dir
    r = request(g, "POST", f"/files?path={base}/probe", b"x",
                {"Content-Type": "application/octet-stream"})
    assert r.status == 200, r
    os.mkdir(os.path.join(base, "nested"))
    chown_user(os.path.join(base, "nested"))
    with Watch(g, {"path": rel, "recursive": True}) as w:
        everything = []
        seen = []
        for target in ("nested/new.txt", "nested/new.txt", "probe"):
            r = request(g, "POST", f"/files?path={base}/{target}", b"content",
                        {"Content-Type": "application/octet-stream"})
            assert r.status == 200, r
            evs = pairs(w.until(marker(base)))
            everything += evs
            seen.append([t for n, t in evs if n == target])
        assert seen[0] == ["CREATE", "WRITE"], seen
        assert seen[1] == ["WRITE", "CHMOD"], seen
        assert seen[2] == ["WRITE", "CHMOD"], seen
        assert not [n for n, _ in everything if ".guestd-upload-" in n], everything


def test_tar_unpack_hides_temporary_names(g, home_dir):
    """Files unpacked from a tar are written under a temporary name and renamed into place;
    watchers see each as a new file and never the temporary name."""
    import io
    import tarfile
    rel, base = home_dir
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for name in ("t1.txt", "t2.txt"):
            info = tarfile.TarInfo(name)
            info.size = 3
            t.addfile(info, io.BytesIO(b"abc"))
    with Watch(g, {"path": rel, "recursive": True}) as w:
        # Into the watched directory itself: each file is renamed into place there.
        r = request(g, "POST", f"/files?path={base}", data.getvalue(),
                    {"Content-Type": "application/x-tar"})
        assert r.status == 200, r
        evs = pairs(w.until(marker(base)))
    assert not [n for n, _ in evs if ".guestd-tar-" in n], evs
    for name in ("t1.txt", "t2.txt"):
        assert [t for n, t in evs if n == name][:2] == ["CREATE", "WRITE"], evs


def test_keepalives(g, home_dir):
    rel, base = home_dir
    with Watch(g, {"path": rel}, headers={"Keepalive-Ping-Interval": "1"}) as w:
        t0 = time.monotonic()
        m = w.next()
        assert m == {"keepalive": {}}, m
        assert time.monotonic() - t0 < 5
        touch(os.path.join(base, "k"))
        m = w.next()
        while "keepalive" in m:
            m = w.next()
        assert m == {"filesystem": {"name": "k", "type": "EVENT_TYPE_CREATE"}}, m


def test_proto_codec(g, home_dir):
    rel, base = home_dir
    body = pb_bytes(1, rel) + pb_uint(2, 1)
    s, reader, status, headers = stream_open(g, WATCH_DIR, body, proto=True)
    with s:
        s.settimeout(20)
        assert status == 200
        assert dict(headers)["content-type"] == "application/connect+proto"
        it = stream_messages(reader)
        flags, payload = next(it)
        assert flags == 0 and proto_fields(payload) == {1: [b""]}  # start {}
        write(os.path.join(base, "sub.bin"))
        flags, payload = next(it)
        ev = proto_fields(proto_fields(payload)[2][0])
        assert ev == {1: [b"sub.bin"], 2: [1]}, ev  # CREATE


# --- errors ----------------------------------------------------------------------------------

def stream_error(g, body, path=WATCH_DIR, headers=None):
    with EventStream(g, path, body, headers=headers) as st:
        assert st.status == 200
        assert st.next() is None, "expected the stream to end at once"
        return st.end["error"]


def test_not_a_directory(g, home_dir):
    rel, base = home_dir
    write(os.path.join(base, "file"))
    err = stream_error(g, {"path": f"{rel}/file"})
    assert err["code"] == "invalid_argument"
    # envd's text, Go's rendering of a nil wrapped error included.
    assert err["message"] == f"path {base}/file not a directory: %!w(<nil>)"


def test_missing_path(g, home_dir):
    rel, base = home_dir
    err = stream_error(g, {"path": f"{rel}/missing"})
    assert err == {"code": "not_found",
                   "message": f"path {base}/missing not found: stat {base}/missing: "
                              "no such file or directory"}
    r = unary(g, FS + "CreateWatcher", {"path": f"{rel}/missing"})
    assert r.status == 404 and r.json()["code"] == "not_found", r


def test_unreadable_directory_as_the_user(g, shared_tmp):
    """envd (root) would watch anything; guestd checks as the user, who cannot list a 0700
    root directory: permission_denied, as the other filesystem methods answer."""
    private = os.path.join(shared_tmp, "private")
    os.mkdir(private, 0o700)
    err = stream_error(g, {"path": private})
    assert err == {"code": "permission_denied",
                   "message": f"permission denied: open '{private}'"}, err
    r = unary(g, FS + "CreateWatcher", {"path": private})
    assert r.status == 403 and r.json()["code"] == "permission_denied", r
    # Root may.
    with Watch(g, {"path": private}, headers=ROOT_AUTH) as w:
        assert w.first == {"start": {}}


def test_unreadable_subdirectories_are_skipped(g, shared_tmp):
    os.mkdir(os.path.join(shared_tmp, "open"), 0o755)
    os.mkdir(os.path.join(shared_tmp, "private"), 0o700)
    with Watch(g, {"path": shared_tmp, "recursive": True}) as w:
        write(os.path.join(shared_tmp, "private", "secret"))
        write(os.path.join(shared_tmp, "open", "visible"))
        assert pairs(w.until(marker(shared_tmp))) == [("open/visible", "CREATE"),
                                                      ("open/visible", "WRITE")]


def test_bad_requests(g):
    err = stream_error(g, {"path": "~other/x"})
    assert err["code"] == "invalid_argument", err
    # Not a stream content type.
    r = unary(g, WATCH_DIR, {"path": "/"})
    assert r.status == 415, r


# --- polling watchers ------------------------------------------------------------------------

def poll(g, wid):
    r = unary(g, FS + "GetWatcherEvents", {"watcherId": wid})
    assert r.status == 200, r
    return r.json().get("events", [])


def poll_until(g, wid, name):
    """Polls until the CREATE of marker `name` arrives; returns the events before it."""
    got = []
    wait_until(lambda: got.extend(poll(g, wid)) or any(e["name"] == name for e in got),
               what=f"the marker {name}")
    i = [e["name"] for e in got].index(name)
    assert got[i + 1:] == [], got
    return got[:i]


def test_polling_watcher_lifecycle(g, home_dir):
    rel, base = home_dir
    r = unary(g, FS + "CreateWatcher", {"path": rel, "recursive": True})
    assert r.status == 200, r
    wid = r.json()["watcherId"]
    assert re.fullmatch(r"w[a-z0-9]{20}", wid), wid
    assert poll(g, wid) == []

    os.mkdir(os.path.join(base, "d"))
    assert pairs(poll_until(g, wid, marker(base))) == [("d", "CREATE")]
    write(os.path.join(base, "d", "f"))
    assert pairs(poll_until(g, wid, marker(base))) == [("d/f", "CREATE"), ("d/f", "WRITE")]
    # Drained.
    assert poll(g, wid) == []

    # Two watchers are independent; ids differ.
    r2 = unary(g, FS + "CreateWatcher", {"path": rel, "includeEntry": True}).json()["watcherId"]
    assert r2 != wid
    touch(os.path.join(base, "both"))
    got2 = []
    wait_until(lambda: got2.extend(poll(g, r2)) or got2, what="events")
    assert got2[0]["name"] == "both" and got2[0]["entry"]["name"] == "both", got2
    got = []
    wait_until(lambda: got.extend(poll(g, wid)) or got, what="events")
    assert pairs(got) == [("both", "CREATE")] and "entry" not in got[0]

    for w in (wid, r2):
        r = unary(g, FS + "RemoveWatcher", {"watcherId": w})
        assert r.status == 200 and r.json() == {}, r
    r = unary(g, FS + "GetWatcherEvents", {"watcherId": wid})
    assert r.status == 404
    assert r.json() == {"code": "not_found", "message": f"watcher with id {wid} not found"}
    r = unary(g, FS + "RemoveWatcher", {"watcherId": wid})
    assert r.status == 404 and r.json()["code"] == "not_found"


def test_unknown_watcher_ids(g):
    for method in ("GetWatcherEvents", "RemoveWatcher"):
        r = unary(g, FS + method, {"watcherId": "wnope"})
        assert r.status == 404, r
        assert r.json() == {"code": "not_found", "message": "watcher with id wnope not found"}


def test_polling_watchers_outlive_their_connection(g, home_dir):
    rel, base = home_dir
    with g.connect() as s:
        s.sendall(build_request("POST", FS + "CreateWatcher", json.dumps({"path": rel}).encode(),
                                {"Content-Type": "application/json"}))
        wid = Reader(s).response().json()["watcherId"]
    touch(os.path.join(base, "later"))
    got = []
    wait_until(lambda: got.extend(poll(g, wid)) or got, what="events")
    assert pairs(got) == [("later", "CREATE")]
    assert unary(g, FS + "RemoveWatcher", {"watcherId": wid}).status == 200


# --- guestd.v1.Filesystem/Watch --------------------------------------------------------------

def test_guestd_watch_sequences(g, home_dir):
    rel, base = home_dir
    with Watch(g, {"watch": {"path": rel, "recursive": True}}, path=G_WATCH,
               headers={"Keepalive-Ping-Interval": "1"}) as w:
        assert w.first == {"start": {}, "sequence": "1"}, w.first
        seqs, evs = [], []

        def until(name):
            while True:
                m = w.next()
                assert m is not None, w.end
                if "keepalive" in m:
                    # Keepalives are not events: no sequence number.
                    assert m == {"keepalive": {}}, m
                    continue
                seqs.append(int(m["sequence"]))
                if m["filesystem"]["name"] == name:
                    return
                evs.append(m["filesystem"])

        os.mkdir(os.path.join(base, "n"))
        until(marker(base))
        write(os.path.join(base, "n", "f"))
        time.sleep(1.5)  # a keepalive in between
        until(marker(base))
        assert seqs == list(range(2, 2 + len(seqs))), seqs
        assert pairs(evs) == [("n", "CREATE"), ("n/f", "CREATE"), ("n/f", "WRITE")]


def inotify_fds(pid):
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify":
                out.append(int(fd))
        except OSError:
            pass
    return out


def inotify_watches(pid):
    """Kernel watches of guestd's inotify instance (0 when it has none open)."""
    fds = inotify_fds(pid)
    assert len(fds) <= 1, f"more than one inotify instance: {fds}"
    if not fds:
        return 0
    with open(f"/proc/{pid}/fdinfo/{fds[0]}") as f:
        return sum(1 for line in f if line.startswith("inotify wd:"))


def test_real_overflow(g, shared_tmp):
    """Stops guestd, makes more changes than inotify queues, resumes it: the envd stream ends
    with envd's overflow error, a polling watcher reports it, and the guestd.v1 stream sends a
    rescan with a fresh listing and goes on."""
    base = shared_tmp
    with open("/proc/sys/fs/inotify/max_queued_events") as f:
        max_queued = int(f.read())
    if max_queued > 100000:
        pytest.skip(f"max_queued_events is {max_queued}: overflowing it takes too long")
    flood = os.path.join(base, "flood")
    os.mkdir(flood)
    wid = unary(g, FS + "CreateWatcher", {"path": base, "recursive": True}).json()["watcherId"]
    with Watch(g, {"path": base, "recursive": True}) as envd, \
            Watch(g, {"watch": {"path": base, "recursive": True}}, path=G_WATCH) as gw:
        n = max_queued + 2000
        os.kill(g.proc.pid, signal.SIGSTOP)
        try:
            for i in range(n):
                touch(os.path.join(flood, f"f{i:06d}"))
        finally:
            os.kill(g.proc.pid, signal.SIGCONT)
        # envd's stream: whatever it managed to send, then internal.
        while envd.next() is not None:
            pass
        assert envd.end["error"] == {"code": "internal", "message": OVERFLOW_TEXT}, envd.end
        # guestd.v1: events, then a rescan that lists the tree, then life goes on.
        last = 1
        rescan = None
        while rescan is None:
            m = gw.next()
            assert m is not None, gw.end
            if "keepalive" in m:
                continue
            seq = int(m["sequence"])
            assert seq == last + 1, (seq, last)
            last = seq
            rescan = m.get("rescan")
        paths = {e["path"] for e in rescan["entries"]}
        assert os.path.join(flood, f"f{n - 1:06d}") in paths
        assert len(paths) == n + 1  # the files and flood/ itself
        name = marker(base)
        while True:
            m = gw.next()
            assert m is not None, gw.end
            if "keepalive" in m:
                continue
            assert int(m["sequence"]) == last + 1
            last += 1
            if m.get("filesystem", {}).get("name") == name:
                break
    r = unary(g, FS + "GetWatcherEvents", {"watcherId": wid})
    assert r.status == 500, r
    msg = r.json()["message"]
    assert r.json()["code"] == "internal"
    assert msg == OVERFLOW_TEXT or msg.startswith("too many events"), msg
    # The error sticks until the watcher is removed.
    assert unary(g, FS + "GetWatcherEvents", {"watcherId": wid}).status == 500
    assert unary(g, FS + "RemoveWatcher", {"watcherId": wid}).status == 200


# --- resources -------------------------------------------------------------------------------

def test_one_inotify_instance_and_shared_watches(g, home_dir):
    rel, base = home_dir
    pid = g.proc.pid
    assert inotify_fds(pid) == []
    os.makedirs(os.path.join(base, "a", "b"))
    streams = [Watch(g, {"path": rel, "recursive": True}) for _ in range(5)]
    try:
        assert len(inotify_fds(pid)) == 1
        # Five watches of the same three directories share three kernel watches.
        assert inotify_watches(pid) == 3
        touch(os.path.join(base, "a", "b", "x"))
        for st in streams:
            m = st.next()
            assert m["filesystem"]["name"] == "a/b/x", m
    finally:
        for st in streams:
            st.close()
    # The last client gone, the instance goes too.
    wait_until(lambda: inotify_fds(pid) == [], what="the inotify instance to close")


def test_disconnects_free_their_watches(g, home_dir, shared_tmp):
    rel, base = home_dir
    pid = g.proc.pid
    os.makedirs(os.path.join(base, "keep", "one"))
    for sub in ("x", "y"):
        os.makedirs(os.path.join(shared_tmp, sub))
    with Watch(g, {"path": rel, "recursive": True}) as kept:
        assert inotify_watches(pid) == 3
        for i in range(200):
            body = {"path": shared_tmp, "recursive": True}
            # Each stream is started (its walk done) and then dropped by the client.
            Watch(g, body, path=G_WATCH if i % 2 else WATCH_DIR).close()
        wait_until(lambda: inotify_watches(pid) == 3, what="watches of closed streams to go")
        # A polling watcher removed frees its watches as well.
        wid = unary(g, FS + "CreateWatcher",
                    {"path": shared_tmp, "recursive": True}).json()["watcherId"]
        assert inotify_watches(pid) == 6
        assert unary(g, FS + "RemoveWatcher", {"watcherId": wid}).status == 200
        assert inotify_watches(pid) == 3
        # The kept watch still works.
        touch(os.path.join(base, "keep", "one", "still"))
        assert kept.next() == {"filesystem": {"name": "keep/one/still",
                                              "type": "EVENT_TYPE_CREATE"}}
    wait_until(lambda: inotify_fds(pid) == [], what="the inotify instance to close")

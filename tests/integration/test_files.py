# SPDX-License-Identifier: Apache-2.0
"""envd's GET and POST /files on the wire, with guestd's additions.

Downloads: exact headers (type by extension or sniffed, Content-Disposition, Content-Length,
Last-Modified, Accept-Ranges, Vary, a SHA-256 ETag), HEAD, Range (206/416), conditionals
(304/412), gzip, refusals (FIFO, device, directory, missing, permissions). Uploads: raw and
multipart bodies, gzip bodies, metadata xattrs, parents owned by the user, atomic replacement
(and the in-place fallbacks: symlinks, hard links, read-only directories), interrupted uploads,
507 on a full file system, preconditions. Signed URLs with envd's 401 texts. A 200 MiB round
trip with guestd's RSS bounded.

guestd runs as root with `--default-user user`; files are made under a temporary directory in
/home/user owned by `user` (uid 1001), and removed afterwards.
"""
import base64
import email.utils
import gzip
import hashlib
import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
import urllib.parse
import zlib

import pytest

from conftest import Reader, build_request, init, request, token_hex

USER = "user"
UID = 1001
HOME = "/home/user"
MiB = 1024 * 1024


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
    """A fresh directory under /home/user owned by the user; removed afterwards."""
    path = tempfile.mkdtemp(prefix="files-test-", dir=HOME)
    os.chown(path, UID, UID)
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def q(**params):
    return "/files?" + urllib.parse.urlencode(params, quote_via=urllib.parse.quote)


def get(g, path=None, headers=None, method="GET", **params):
    if path is not None:
        params["path"] = path
    return request(g, method, q(**params), b"", headers)


def post(g, body, content_type="application/octet-stream", headers=None, path=None, **params):
    if path is not None:
        params["path"] = path
    h = {"Content-Type": content_type}
    h.update(headers or {})
    return request(g, "POST", q(**params), body, h)


def make(path, data=b"", mode=0o644, uid=UID):
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    os.chown(path, uid, uid)
    return path


def etag_of(data):
    return '"sha256:' + hashlib.sha256(data).hexdigest() + '"'


def err(r, status):
    assert r.status == status, r
    assert r.header("content-type") == "application/json; charset=utf-8", r
    body = json.loads(r.body)
    assert body["code"] == status
    return body["message"]


def multipart(parts, boundary="----guestdTestBoundary7MA4YWxk"):
    """parts: (name, filename or None, bytes). Returns (content type, body)."""
    out = b""
    for name, filename, data in parts:
        out += b"--" + boundary.encode() + b"\r\n"
        cd = f'form-data; name="{name}"'
        if filename is not None:
            cd += f'; filename="{filename}"'
        out += f"Content-Disposition: {cd}\r\n".encode()
        if filename is not None:
            out += b"Content-Type: application/octet-stream\r\n"
        out += b"\r\n" + data + b"\r\n"
    out += b"--" + boundary.encode() + b"--\r\n"
    return f"multipart/form-data; boundary={boundary}", out


def no_temp_files(directory):
    return [n for n in os.listdir(directory) if n.startswith(".guestd-upload-")] == []


# --- downloads ----------------------------------------------------------------------------------

def test_download_text_exact_headers(g, d):
    p = make(os.path.join(d, "a.txt"), b"hello\n")
    os.utime(p, ns=(1700000000_123456789, 1700000000_123456789))
    r = get(g, p)
    assert r.status == 200, r
    assert r.body == b"hello\n"
    assert r.header("content-type") == "text/plain; charset=utf-8"
    assert r.header("content-length") == "6"
    assert r.header("accept-ranges") == "bytes"
    assert r.header("vary") == "Accept-Encoding"
    assert r.header("content-disposition") == "inline; filename=a.txt"
    assert r.header("last-modified") == "Tue, 14 Nov 2023 22:13:20 GMT"
    assert r.header("etag") == etag_of(b"hello\n")
    assert r.header("content-encoding") is None


def test_download_relative_and_tilde_paths(g, d):
    make(os.path.join(d, "rel.txt"), b"rel")
    name = os.path.basename(d)
    assert get(g, f"{name}/rel.txt").body == b"rel"
    assert get(g, f"~/{name}/rel.txt").body == b"rel"
    assert get(g, f"{name}/../{name}/./rel.txt").body == b"rel"


def test_download_binary_and_types(g, d):
    data = bytes(range(256)) * 8
    make(os.path.join(d, "blob"), data)
    r = get(g, os.path.join(d, "blob"))
    assert r.status == 200 and r.body == data
    assert r.header("content-type") == "application/octet-stream"
    assert r.header("content-length") == str(len(data))
    make(os.path.join(d, "image.png"), b"not really a png")
    assert get(g, os.path.join(d, "image.png")).header("content-type") == "image/png"
    make(os.path.join(d, "page"), b"  <!DOCTYPE html><html></html>")
    assert get(g, os.path.join(d, "page")).header("content-type") == "text/html; charset=utf-8"
    make(os.path.join(d, "data.json"), b"{}")
    assert get(g, os.path.join(d, "data.json")).header("content-type") == "application/json"
    make(os.path.join(d, "my report.txt"), b"x")
    assert get(g, os.path.join(d, "my report.txt")).header("content-disposition") == \
        'inline; filename="my report.txt"'
    make(os.path.join(d, "café.txt"), b"x")
    assert get(g, os.path.join(d, "café.txt")).header("content-disposition") == \
        "inline; filename*=utf-8''caf%C3%A9.txt"


def test_download_empty_file(g, d):
    p = make(os.path.join(d, "empty"))
    for headers in ({}, {"Accept-Encoding": "gzip"}):
        r = get(g, p, headers)
        assert r.status == 200, r
        assert r.header("content-length") == "0"
        assert r.header("content-encoding") is None
        assert r.body == b""
        assert r.header("content-type") == "text/plain; charset=utf-8"


def test_head(g, d):
    p = make(os.path.join(d, "h.txt"), b"0123456789")
    with g.connect() as s:
        s.sendall(build_request("HEAD", q(path=p)))
        s.sendall(build_request("GET", q(path=p)))  # the connection stays usable after HEAD
        rd = Reader(s)
        r = rd.response("HEAD")
        assert r.status == 200, r
        assert r.header("content-length") == "10"
        assert r.header("etag") == etag_of(b"0123456789")
        assert r.body == b""
        r2 = rd.response()
        assert r2.body == b"0123456789"


def test_range(g, d):
    data = b"0123456789"
    p = make(os.path.join(d, "r.txt"), data)
    r = get(g, p, {"Range": "bytes=2-5"})
    assert r.status == 206, r
    assert r.body == b"2345"
    assert r.header("content-range") == "bytes 2-5/10"
    assert r.header("content-length") == "4"
    r = get(g, p, {"Range": "bytes=-3"})
    assert (r.status, r.body, r.header("content-range")) == (206, b"789", "bytes 7-9/10")
    r = get(g, p, {"Range": "bytes=7-"})
    assert (r.status, r.body) == (206, b"789")
    # Several ranges: the whole file (multipart/byteranges is not implemented).
    r = get(g, p, {"Range": "bytes=0-1,4-5"})
    assert (r.status, r.body) == (200, data)
    r = get(g, p, {"Range": "bytes=10-"})
    assert r.status == 416, r
    assert r.header("content-range") == "bytes */10"
    assert r.body == b"invalid range: failed to overlap\n"
    r = get(g, p, {"Range": "bytes=5-2"})
    assert r.status == 416, r
    # If-Range with the current tag applies the range; a stale one gets the whole file.
    r = get(g, p, {"Range": "bytes=0-0", "If-Range": etag_of(data)})
    assert (r.status, r.body) == (206, b"0")
    r = get(g, p, {"Range": "bytes=0-0", "If-Range": '"sha256:stale"'})
    assert (r.status, r.body) == (200, data)
    # Range wins over gzip: identity.
    r = get(g, p, {"Range": "bytes=0-1", "Accept-Encoding": "gzip"})
    assert (r.status, r.body, r.header("content-encoding")) == (206, b"01", None)


def test_conditionals(g, d):
    data = b"conditional"
    p = make(os.path.join(d, "c.txt"), data)
    tag = etag_of(data)
    r = get(g, p, {"If-None-Match": tag})
    assert r.status == 304, r
    assert r.body == b""
    assert r.header("etag") == tag
    assert r.header("content-length") is None
    assert get(g, p, {"If-None-Match": "W/" + tag}).status == 304
    assert get(g, p, {"If-None-Match": '"sha256:other"'}).status == 200
    assert get(g, p, {"If-None-Match": "*"}).status == 304
    lm = get(g, p).header("last-modified")
    assert get(g, p, {"If-Modified-Since": lm}).status == 304
    assert get(g, p, {"If-Modified-Since": "Thu, 01 Jan 1998 00:00:00 GMT"}).status == 200
    assert get(g, p, {"If-Match": tag}).status == 200
    r = get(g, p, {"If-Match": '"sha256:other"'})
    assert r.status == 412, r
    assert r.body == b""
    assert get(g, p, {"If-Unmodified-Since": "Thu, 01 Jan 1998 00:00:00 GMT"}).status == 412
    assert get(g, p, {"If-Unmodified-Since": lm}).status == 200


def test_gzip_download(g, d):
    data = (b"line of text that compresses well\n" * 20000) + os.urandom(300000)
    p = make(os.path.join(d, "big.txt"), data)
    r = get(g, p, {"Accept-Encoding": "gzip"})
    assert r.status == 200, r
    assert r.header("content-encoding") == "gzip"
    assert r.header("transfer-encoding") == "chunked"
    assert r.header("content-length") is None
    assert r.header("content-type") == "text/plain; charset=utf-8"
    assert r.header("vary") == "Accept-Encoding"
    assert r.header("etag") == "W/" + etag_of(data)
    assert gzip.decompress(r.body) == data
    assert len(r.body) < len(data)
    # q-values: identity preferred → identity; gzip refused → identity.
    r = get(g, p, {"Accept-Encoding": "gzip;q=0.5, identity"})
    assert r.header("content-encoding") is None and r.body == data
    r = get(g, p, {"Accept-Encoding": "gzip;q=0"})
    assert r.header("content-encoding") is None and r.body == data
    # Without an extension type, gzip answers octet-stream (envd), identity sniffs.
    make(os.path.join(d, "noext"), b"plain words")
    r = get(g, os.path.join(d, "noext"), {"Accept-Encoding": "gzip"})
    assert r.header("content-type") == "application/octet-stream"
    assert gzip.decompress(r.body) == b"plain words"


def test_not_acceptable(g, d):
    p = make(os.path.join(d, "n.txt"), b"data")
    for ae in ("identity;q=0, gzip;q=0", "*;q=0", "br, identity;q=0"):
        msg = err(get(g, p, {"Accept-Encoding": ae}), 406)
        assert msg == ("error parsing Accept-Encoding: no acceptable encoding found, "
                       "supported: [gzip]")
    # identity refused but gzip fine: gzip; with a Range (identity only): 406.
    r = get(g, p, {"Accept-Encoding": "gzip, identity;q=0"})
    assert r.status == 200 and r.header("content-encoding") == "gzip"
    err(get(g, p, {"Accept-Encoding": "gzip, identity;q=0", "Range": "bytes=0-1"}), 406)


def test_fifo_and_device_refused_quickly(g, d):
    fifo = os.path.join(d, "fifo")
    os.mkfifo(fifo)
    os.chown(fifo, UID, UID)
    for p in (fifo, "/dev/zero"):
        t0 = time.monotonic()
        msg = err(get(g, p), 400)
        assert time.monotonic() - t0 < 5
        assert msg == f"path '{p}' is not a regular file"
    assert get(g, os.path.join(d, "nothing-here")).status == 404  # guestd still serves


def test_directory_missing_and_permissions(g, d):
    assert err(get(g, d), 400) == f"path '{d}' is a directory"
    missing = os.path.join(d, "missing.txt")
    assert err(get(g, missing), 404) == f"path '{missing}' does not exist"
    # Another user's private file: the user cannot open it.
    private = make(os.path.join(d, "private"), b"secret", mode=0o600, uid=0)
    msg = err(get(g, private), 403)
    assert f"'{private}'" in msg and "permission denied" in msg
    # Root can (username=root), and the request does not need Basic auth.
    assert get(g, private, username="root").body == b"secret"
    # Inside a directory the user cannot search.
    closed = os.path.join(d, "closed")
    os.mkdir(closed, 0o700)
    make(os.path.join(closed, "f"), b"x", uid=0)
    msg = err(get(g, os.path.join(closed, "f")), 403)
    assert "permission denied" in msg


def test_user_selection(g, d):
    msg = err(get(g, "/etc/hostname", username="no-such-user-x"), 401)
    assert msg == "error looking up user 'no-such-user-x': user: unknown user no-such-user-x"
    # Basic auth plays no part in /files: an unknown Basic user is not an error here.
    r = get(g, "/etc/hostname", {"Authorization": "Basic " + base64.b64encode(b"nobody-x:")
                                 .decode()})
    assert r.status == 200, r
    # ~other is refused like envd.
    msg = err(get(g, "~root/x"), 400)
    assert "cannot expand user-specific home dir" in msg


def test_method_not_allowed(g):
    r = request(g, "DELETE", "/files?path=/etc/hostname")
    assert r.status == 405
    assert r.header("allow") == "GET, HEAD, POST"


# --- uploads ------------------------------------------------------------------------------------

def test_upload_octet_stream(g, d):
    target = os.path.join(d, "up.txt")
    r = post(g, b"uploaded", path=target)
    assert r.status == 200, r
    assert r.body == json.dumps([{"name": "up.txt", "path": target, "type": "file"}],
                                separators=(",", ":")).encode()
    assert r.header("content-type") == "text/plain; charset=utf-8"
    assert r.header("etag") == etag_of(b"uploaded")
    st = os.stat(target)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (UID, UID, 0o644)
    with open(target, "rb") as f:
        assert f.read() == b"uploaded"
    # The ETag of the upload is what a download reports.
    assert get(g, target).header("etag") == etag_of(b"uploaded")
    # Relative to the user's home.
    r = post(g, b"rel", path=f"{os.path.basename(d)}/rel.txt")
    assert r.json()[0]["path"] == os.path.join(d, "rel.txt")
    # Empty body: an empty file.
    r = post(g, b"", path=os.path.join(d, "empty"))
    assert r.status == 200 and os.path.getsize(os.path.join(d, "empty")) == 0


def test_upload_errors(g, d):
    msg = err(post(g, b"x"), 400)
    assert msg == "path query parameter is required for raw body upload"
    msg = err(post(g, b"x", content_type="text/plain", path=os.path.join(d, "t")), 400)
    assert msg == ("unsupported content type: text/plain, expected multipart/form-data or "
                   "application/octet-stream")
    msg = err(post(g, b"x", path=os.path.join(d, "t"), headers={"Content-Encoding": "br"}), 400)
    assert msg == ("error decompressing request body: unsupported Content-Encoding: br, "
                   "supported: [gzip]")
    msg = err(post(g, b"x", path=d), 400)
    assert msg == f"path is a directory: {d}"
    make(os.path.join(d, "file"), b"f")
    msg = err(post(g, b"x", path=os.path.join(d, "file", "below.txt")), 500)
    assert msg == f"error ensuring directories: path is a file: {os.path.join(d, 'file')}"
    msg = err(post(g, b"x", path=os.path.join(d, "u"), username="no-such-user-x"), 401)
    assert msg.startswith("error looking up user 'no-such-user-x'")
    msg = err(post(g, b"not gzip", path=os.path.join(d, "gz"),
                   headers={"Content-Encoding": "gzip"}), 400)
    assert msg.startswith("error decompressing request body")
    assert not os.path.exists(os.path.join(d, "gz"))


def test_upload_multipart_several_parts(g, d):
    name = os.path.basename(d)
    ct, body = multipart([
        ("file", f"{name}/one.txt", b"first\r\n--not a boundary\r\n"),
        ("other", None, b"ignored field"),
        ("file", os.path.join(d, "sub", "two.bin"), bytes(range(256)) * 100),
        ("file", f"~/{name}/three.txt", b""),
    ])
    r = post(g, body, ct)
    assert r.status == 200, r
    assert r.json() == [
        {"name": "one.txt", "path": os.path.join(d, "one.txt"), "type": "file"},
        {"name": "two.bin", "path": os.path.join(d, "sub", "two.bin"), "type": "file"},
        {"name": "three.txt", "path": os.path.join(d, "three.txt"), "type": "file"},
    ]
    assert r.header("etag") is None  # several files: no single tag
    with open(os.path.join(d, "one.txt"), "rb") as f:
        assert f.read() == b"first\r\n--not a boundary\r\n"
    with open(os.path.join(d, "sub", "two.bin"), "rb") as f:
        assert f.read() == bytes(range(256)) * 100
    assert os.path.getsize(os.path.join(d, "three.txt")) == 0
    st = os.stat(os.path.join(d, "sub"))
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (UID, UID, 0o755)


def test_upload_multipart_path_param_and_duplicates(g, d):
    target = os.path.join(d, "named.txt")
    ct, body = multipart([("file", "ignored-name.txt", b"by path")])
    r = post(g, body, ct, path=target)
    assert r.status == 200, r
    assert r.json() == [{"name": "named.txt", "path": target, "type": "file"}]
    assert r.header("etag") == etag_of(b"by path")
    ct, body = multipart([("file", "a.txt", b"1"), ("file", "b.txt", b"2"),
                          ("file", "a.txt", b"3")])
    r = post(g, body, ct, path=None)
    msg = err(r, 400)
    a = os.path.join(HOME, "a.txt")
    b = os.path.join(HOME, "b.txt")
    try:
        assert msg == (f"you cannot upload multiple files to the same path '{a}' in one upload "
                       f"request, only the first specified file was uploaded")
    finally:
        for p in (a, b):
            if os.path.exists(p):
                os.unlink(p)
    ct, body = multipart([("file", None, b"no filename")])
    msg = err(post(g, body, ct), 400)
    assert msg == ("error getting multipart custom part file name: filename not found in "
                   "Content-Disposition header")


def test_upload_multipart_malformed(g, d):
    msg = err(post(g, b"--b\r\n\r\nno end", "multipart/form-data; boundary=b"), 500)
    assert msg.startswith("error reading form: ") or msg == "error writing file: unexpected EOF"
    msg = err(post(g, b"x", "multipart/form-data"), 500)
    assert msg == "error parsing multipart form: no multipart boundary param in Content-Type"
    # A truncated file part leaves no file.
    ct, body = multipart([("file", os.path.join(d, "cut.txt"), b"abc")])
    r = post(g, body[:-20], ct)
    assert r.status == 500, r
    assert not os.path.exists(os.path.join(d, "cut.txt"))


def test_upload_gzip(g, d):
    data = b"compressed upload\n" * 5000
    target = os.path.join(d, "gz.txt")
    r = post(g, gzip.compress(data), path=target, headers={"Content-Encoding": "gzip"})
    assert r.status == 200, r
    with open(target, "rb") as f:
        assert f.read() == data
    assert r.header("etag") == etag_of(data)
    # Concatenated gzip members are one stream (as Go reads them).
    r = post(g, gzip.compress(b"ab") + gzip.compress(b"cd"), path=target,
             headers={"Content-Encoding": "gzip"})
    assert r.status == 200, r
    with open(target, "rb") as f:
        assert f.read() == b"abcd"
    # A gzipped multipart body.
    ct, body = multipart([("file", os.path.join(d, "mp.txt"), data)])
    r = post(g, gzip.compress(body), ct, headers={"Content-Encoding": "gzip"})
    assert r.status == 200, r
    with open(os.path.join(d, "mp.txt"), "rb") as f:
        assert f.read() == data
    # Truncated gzip: refused, the old content stays.
    r = post(g, gzip.compress(b"new")[:-4], path=target, headers={"Content-Encoding": "gzip"})
    assert r.status == 400, r
    with open(target, "rb") as f:
        assert f.read() == b"abcd"


def test_upload_metadata(g, d):
    target = os.path.join(d, "meta.txt")
    r = post(g, b"m", path=target, headers={"X-Metadata-Author": "mish",
                                            "x-metadata-PURPOSE": "upload test"})
    assert r.status == 200, r
    assert r.json() == [{"metadata": {"author": "mish", "purpose": "upload test"},
                         "name": "meta.txt", "path": target, "type": "file"}]
    assert r.body.startswith(b'[{"metadata":{"author":"mish","purpose":"upload test"},')
    assert os.getxattr(target, "user.e2b.author") == b"mish"
    assert os.getxattr(target, "user.e2b.purpose") == b"upload test"
    os.setxattr(target, "user.other", b"kept")
    # Each upload replaces the set.
    r = post(g, b"m2", path=target, headers={"X-Metadata-Author": "other"})
    assert r.json()[0]["metadata"] == {"author": "other"}
    names = sorted(n for n in os.listxattr(target) if n.startswith("user.e2b."))
    assert names == ["user.e2b.author"]
    # No headers: cleared.
    r = post(g, b"m3", path=target)
    assert "metadata" not in r.json()[0]
    assert [n for n in os.listxattr(target) if n.startswith("user.e2b.")] == []
    # Invalid metadata: 400 before anything is written.
    msg = err(post(g, b"x", path=os.path.join(d, "bad"),
                   headers={"X-Metadata-K": "caf\u00e9".encode().decode("latin-1")}), 400)
    assert msg.startswith('invalid metadata: metadata value for key "k" contains '
                          "non-printable-ASCII byte 0xc3")
    msg = err(post(g, b"x", path=os.path.join(d, "bad"),
                   headers={"X-Metadata-K": "v" * 5000}), 400)
    assert msg == "invalid metadata: total metadata size 5010 exceeds 4096 bytes"
    assert not os.path.exists(os.path.join(d, "bad"))
    # Multipart: every file gets the metadata.
    ct, body = multipart([("file", os.path.join(d, "m1"), b"1"), ("file", os.path.join(d, "m2"),
                                                                  b"2")])
    r = post(g, body, ct, headers={"X-Metadata-Tag": "both"})
    assert [e["metadata"] for e in r.json()] == [{"tag": "both"}, {"tag": "both"}]


def test_upload_parents_created_as_user(g, d):
    target = os.path.join(d, "a", "b", "c", "f.txt")
    r = post(g, b"deep", path=target)
    assert r.status == 200, r
    for sub in ("a", "a/b", "a/b/c"):
        st = os.stat(os.path.join(d, sub))
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (UID, UID, 0o755), sub
    st = os.stat(target)
    assert (st.st_uid, st.st_gid) == (UID, UID)
    # The user cannot create directories where it has no right to.
    msg = err(post(g, b"x", path="/root/guestd-files-test/x.txt"), 403)
    assert "permission denied" in msg
    assert not os.path.exists("/root/guestd-files-test")


def test_upload_atomic_replace(g, d):
    target = make(os.path.join(d, "atomic.txt"), b"old content", mode=0o640)
    before = os.stat(target)
    reader = open(target, "rb")
    body = os.urandom(3 * MiB)
    with g.connect() as s:
        s.sendall(build_request("POST", q(path=target), None,
                                {"Content-Type": "application/octet-stream",
                                 "Content-Length": str(len(body))}))
        s.sendall(body[:MiB])
        time.sleep(0.3)
        # Half-way: the target still is the old file, whole.
        with open(target, "rb") as f:
            assert f.read() == b"old content"
        assert os.stat(target).st_ino == before.st_ino
        assert no_temp_files(d)
        s.sendall(body[MiB:])
        r = Reader(s).response()
    assert r.status == 200, r
    after = os.stat(target)
    assert after.st_ino != before.st_ino
    assert stat.S_IMODE(after.st_mode) == 0o640  # the replaced file's mode
    assert (after.st_uid, after.st_gid) == (UID, UID)
    with open(target, "rb") as f:
        assert f.read() == body
    assert reader.read() == b"old content"  # an open reader keeps the old file
    reader.close()
    assert no_temp_files(d)


@pytest.mark.parametrize("how", ["close", "reset"])
def test_upload_interrupted_keeps_old_content(g, d, how):
    target = make(os.path.join(d, "keep.txt"), b"precious")
    fresh = os.path.join(d, "fresh.txt")
    for path in (target, fresh):
        s = g.connect()
        s.sendall(build_request("POST", q(path=path), None,
                                {"Content-Type": "application/octet-stream",
                                 "Content-Length": str(4 * MiB)}))
        s.sendall(os.urandom(MiB + 12345))
        time.sleep(0.2)
        if how == "reset":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
    time.sleep(0.5)
    # guestd noticed and dropped the unfinished files.
    assert request(g, "GET", "/health").status == 204
    with open(target, "rb") as f:
        assert f.read() == b"precious"
    assert not os.path.exists(fresh)
    assert sorted(os.listdir(d)) == ["keep.txt"]
    assert "abandoned by the client" in g.log_text()


def test_upload_symlink_written_in_place(g, d):
    real = make(os.path.join(d, "real.txt"), b"old")
    link = os.path.join(d, "link.txt")
    os.symlink("real.txt", link)
    ino = os.stat(real).st_ino
    r = post(g, b"through the link", path=link)
    assert r.status == 200, r
    assert r.json()[0]["path"] == link
    assert os.path.islink(link)
    assert os.stat(real).st_ino == ino
    with open(real, "rb") as f:
        assert f.read() == b"through the link"


def test_upload_hard_link_written_in_place(g, d):
    a = make(os.path.join(d, "a.txt"), b"old")
    b = os.path.join(d, "b.txt")
    os.link(a, b)
    ino = os.stat(a).st_ino
    r = post(g, b"shared", path=a)
    assert r.status == 200, r
    assert os.stat(a).st_ino == ino and os.stat(b).st_ino == ino
    with open(b, "rb") as f:
        assert f.read() == b"shared"


def test_upload_read_only_directory_falls_back(g, d):
    ro = os.path.join(d, "ro")
    os.mkdir(ro, 0o755)  # root's: the user cannot create files here
    f = make(os.path.join(ro, "writable.txt"), b"old")
    ino = os.stat(f).st_ino
    r = post(g, b"in place", path=f)
    assert r.status == 200, r
    assert os.stat(f).st_ino == ino
    with open(f, "rb") as fh:
        assert fh.read() == b"in place"
    msg = err(post(g, b"x", path=os.path.join(ro, "new.txt")), 403)
    assert "permission denied" in msg
    assert os.listdir(ro) == ["writable.txt"]


def test_upload_no_space(g, d):
    mnt = os.path.join(d, "small")
    os.mkdir(mnt)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755,uid=1001,gid=1001",
                          "tmpfs", mnt], capture_output=True)
    if res.returncode != 0:
        pytest.skip("cannot mount a tmpfs: " + res.stderr.decode(errors="replace"))
    try:
        make(os.path.join(mnt, "keep.txt"), b"kept")
        body = os.urandom(MiB + MiB // 2)
        target = os.path.join(mnt, "big.bin")
        r = post(g, body, path=target)
        msg = err(r, 507)
        assert msg == f"attempted to write {len(body)} bytes: not enough disk space available"
        assert sorted(os.listdir(mnt)) == ["keep.txt"]
        # Replacing a file: the old one stays whole.
        r = post(g, body, path=os.path.join(mnt, "keep.txt"))
        assert r.status == 507, r
        with open(os.path.join(mnt, "keep.txt"), "rb") as f:
            assert f.read() == b"kept"
        assert sorted(os.listdir(mnt)) == ["keep.txt"]
        # Multipart too.
        ct, mp = multipart([("file", target, body)])
        msg = err(post(g, mp, ct), 507)
        assert "not enough disk space available" in msg
        assert sorted(os.listdir(mnt)) == ["keep.txt"]
    finally:
        subprocess.run(["umount", mnt], check=False)


def test_upload_preconditions(g, d):
    target = make(os.path.join(d, "pre.txt"), b"version 1")
    msg = err(post(g, b"version 2", path=target, headers={"If-Match": '"sha256:nope"'}), 412)
    assert "If-Match" in msg
    with open(target, "rb") as f:
        assert f.read() == b"version 1"
    r = post(g, b"version 2", path=target, headers={"If-Match": etag_of(b"version 1")})
    assert r.status == 200, r
    # The tag of the new content is the next precondition.
    r = post(g, b"version 3", path=target, headers={"If-Match": r.header("etag")})
    assert r.status == 200, r
    assert err(post(g, b"x", path=os.path.join(d, "absent"),
                    headers={"If-Match": "*"}), 412)
    assert err(post(g, b"x", path=target, headers={"If-None-Match": "*"}), 412)
    assert post(g, b"x", path=os.path.join(d, "new"), headers={"If-None-Match": "*"}).status == 200
    assert err(post(g, b"x", path=target,
                    headers={"If-Unmodified-Since": "Thu, 01 Jan 1998 00:00:00 GMT"}), 412)
    with open(target, "rb") as f:
        assert f.read() == b"version 3"


def test_upload_durable(g, d):
    r = post(g, b"synced", path=os.path.join(d, "durable.txt"), headers={"Guestd-Durable": "1"})
    assert r.status == 200, r
    with open(os.path.join(d, "durable.txt"), "rb") as f:
        assert f.read() == b"synced"


# --- signed URLs --------------------------------------------------------------------------------

T = token_hex("files-T")


def sign(path, op, user="", exp=None, token=T):
    raw = f"{path}:{op}:{user}:{token}" + (f":{exp}" if exp is not None else "")
    return "v1_" + base64.b64encode(hashlib.sha256(raw.encode()).digest()).decode().rstrip("=")


@pytest.fixture
def locked(g):
    r = init(g, {"accessToken": T}, unix=True)  # as root over the Unix socket: trusted
    assert r.status == 204, r
    return g


def test_signed_download(locked, d):
    g = locked
    p = make(os.path.join(d, "s.txt"), b"signed")
    assert get(g, p, signature=sign(p, "read")).body == b"signed"
    exp = int(time.time()) + 60
    r = get(g, p, signature=sign(p, "read", exp=exp), signature_expiration=str(exp))
    assert r.status == 200 and r.body == b"signed"
    r = get(g, p, signature=sign(p, "read", USER), username=USER)
    assert r.status == 200, r
    assert err(get(g, p, signature=sign(p, "read", USER)), 401) == "invalid signature"
    assert err(get(g, p, signature=sign(p, "write")), 401) == "invalid signature"
    assert err(get(g, p, signature=sign(p + "x", "read")), 401) == "invalid signature"
    assert err(get(g, p, signature=sign(p, "read", token=token_hex("x"))), 401) == \
        "invalid signature"
    old = int(time.time()) - 10
    assert err(get(g, p, signature=sign(p, "read", exp=old), signature_expiration=str(old)),
               401) == "signature is already expired"
    assert err(get(g, p), 401) == "missing signature query parameter"
    assert err(get(g, p, {"X-Access-Token": token_hex("wrong")}), 401) == \
        "access token present in header but does not match"
    # A wrong header token fails even with a valid signature.
    assert err(get(g, p, {"X-Access-Token": token_hex("wrong")}, signature=sign(p, "read")),
               401) == "access token present in header but does not match"
    assert get(g, p, {"X-Access-Token": T}).body == b"signed"
    # root on the Unix socket is trusted by construction.
    r = request(g, "GET", q(path=p), unix=True)
    assert r.status == 200 and r.body == b"signed"


def test_signed_upload(locked, d):
    g = locked
    target = os.path.join(d, "signed-up.txt")
    r = post(g, b"w", path=target, signature=sign(target, "write"))
    assert r.status == 200, r
    assert err(post(g, b"w", path=target, signature=sign(target, "read")), 401) == \
        "invalid signature"
    assert err(post(g, b"w", path=target), 401) == "missing signature query parameter"
    exp = int(time.time()) - 1
    assert err(post(g, b"w", path=target, signature=sign(target, "write", exp=exp),
                    signature_expiration=str(exp)), 401) == "signature is already expired"
    assert post(g, b"w", path=target, headers={"X-Access-Token": T}).status == 200
    r = request(g, "POST", q(path=target, signature_expiration="soon"), b"x",
                {"Content-Type": "application/octet-stream"})
    assert r.status == 400
    assert r.body.startswith(b"Invalid format for parameter signature_expiration")


# --- large transfers ----------------------------------------------------------------------------

def vm_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_200mib_round_trip_bounded_memory(g, d):
    target = os.path.join(d, "big.bin")
    block = os.urandom(MiB)
    n_blocks = 200
    # Warm up: the first transfer allocates the buffers that later ones reuse.
    assert post(g, block, path=os.path.join(d, "warm.bin")).status == 200
    assert get(g, os.path.join(d, "warm.bin")).status == 200
    pid = g.proc.pid
    rss_before = vm_rss_kib(pid)
    want = hashlib.sha256()
    with g.connect(timeout=120) as s:
        s.sendall(build_request("POST", q(path=target), None,
                                {"Content-Type": "application/octet-stream",
                                 "Content-Length": str(n_blocks * MiB)}))
        for i in range(n_blocks):
            chunk = block[:-4] + i.to_bytes(4, "big")
            want.update(chunk)
            s.sendall(chunk)
        r = Reader(s).response()
    assert r.status == 200, r
    assert r.header("etag") == '"sha256:' + want.hexdigest() + '"'
    assert os.path.getsize(target) == n_blocks * MiB
    rss_mid = vm_rss_kib(pid)

    got = hashlib.sha256()
    with g.connect(timeout=120) as s:
        s.sendall(build_request("GET", q(path=target)))
        rd = Reader(s)
        status, _, headers = rd.head()
        assert status == 200
        length = int(dict(headers)["content-length"])
        assert length == n_blocks * MiB
        got.update(rd.buf)
        left = length - len(rd.buf)
        s.settimeout(120)
        while left > 0:
            data = s.recv(min(left, 1 << 20))
            assert data
            got.update(data)
            left -= len(data)
    assert got.hexdigest() == want.hexdigest()
    rss_after = vm_rss_kib(pid)
    growth = max(rss_mid, rss_after) - rss_before
    # AddressSanitizer keeps freed memory in quarantine (up to 256 MiB) to catch use after
    # free, so RSS says nothing about guestd there; the bound is checked in the other builds.
    with open(f"/proc/{pid}/maps") as maps:
        if "libasan" in maps.read():
            return
    assert growth < 16 * 1024, f"RSS grew by {growth} KiB ({rss_before} → {rss_mid} → {rss_after})"


def test_slow_reader_download_backpressure(g, d):
    """A client that reads slowly makes guestd wait, not buffer: RSS stays flat while 64 MiB
    are pending."""
    target = make(os.path.join(d, "slow.bin"), os.urandom(64 * MiB))
    pid = g.proc.pid
    assert get(g, os.path.join(d, "slow.bin"), {"Range": "bytes=0-0"}).status == 206
    rss_before = vm_rss_kib(pid)
    with g.connect(timeout=60) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        s.sendall(build_request("GET", q(path=target)))
        time.sleep(1.0)  # guestd fills the socket and its write queue, then must stop
        rss_stalled = vm_rss_kib(pid)
        total = 0
        h = hashlib.sha256()
        rd = Reader(s)
        status, _, headers = rd.head()
        length = int(dict(headers)["content-length"])
        h.update(rd.buf)
        total = len(rd.buf)
        while total < length:
            data = s.recv(1 << 20)
            assert data
            h.update(data)
            total += len(data)
    assert rss_stalled - rss_before < 8 * 1024, (rss_before, rss_stalled)
    with open(target, "rb") as f:
        assert h.hexdigest() == hashlib.sha256(f.read()).hexdigest()

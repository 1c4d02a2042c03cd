# SPDX-License-Identifier: Apache-2.0
"""HTTP/1.1 engine: keep-alive, pipelining, bodies, limits, smuggling defences, timeouts,
the connection cap, routing errors and the version headers."""
import json
import threading
import time

import pytest

from conftest import (Reader, build_request, envelope, health_ok, raw, read_to_eof, request,
                      send_ignoring_reset, stream_messages, stream_open, unary)

ENVD_VERSION = "0.6.13"


def expect_error_and_close(g, data, status, method="GET"):
    """Sends `data`, expects `status` with Connection: close, then EOF; and a new connection
    is still served."""
    with g.connect() as s:
        send_ignoring_reset(s, data)
        r = Reader(s)
        resp = r.response(method)
        assert resp.status == status, resp
        assert (resp.header("connection") or "").lower() == "close", resp
        rest, closed = read_to_eof(s, timeout=10)
        assert closed, "server kept the connection open after an error response"
        assert rest == b"" and r.buf == b"", f"unexpected bytes after the error: {r.buf + rest!r}"
    assert health_ok(g)
    return resp


# --- keep-alive and pipelining --------------------------------------------------------------

def test_keep_alive_two_requests(guestd):
    with guestd.connect() as s:
        r = Reader(s)
        s.sendall(build_request("GET", "/health"))
        first = r.response()
        assert first.status == 204
        assert (first.header("connection") or "").lower() != "close"
        s.sendall(build_request("GET", "/envs"))
        second = r.response()
        assert second.status == 200, second
        assert "E2B_SANDBOX" in second.json()


def test_pipelining_in_order(guestd):
    reqs = (build_request("GET", "/health") +
            build_request("GET", "/no/such/path") +
            build_request("POST", "/init", b"{}", {"Content-Type": "application/json"}) +
            build_request("GET", "/envs"))
    with guestd.connect() as s:
        s.sendall(reqs)
        r = Reader(s)
        got = [r.response("GET") for _ in range(4)]
        assert [x.status for x in got] == [204, 404, 204, 200], got
        assert got[1].body == b"404 page not found\n"
        assert "E2B_SANDBOX" in got[3].json()
        # The connection is still usable afterwards.
        s.sendall(build_request("HEAD", "/health"))
        assert r.response("HEAD").status == 204


def test_pipelining_three_health(guestd):
    with guestd.connect() as s:
        s.sendall(build_request("GET", "/health") * 3)
        r = Reader(s)
        for _ in range(3):
            resp = r.response()
            assert resp.status == 204
            assert resp.body == b""


def test_http10_closes(guestd):
    with guestd.connect() as s:
        s.sendall(b"GET /health HTTP/1.0\r\n\r\n")
        resp = Reader(s).response()
        assert resp.status == 204
        _, closed = read_to_eof(s)
        assert closed


# --- methods and bodies ---------------------------------------------------------------------

def test_head_health(guestd):
    with guestd.connect() as s:
        s.sendall(build_request("HEAD", "/health") + build_request("GET", "/health"))
        r = Reader(s)
        resp = r.response("HEAD")
        assert resp.status == 204
        # No body bytes between the two responses: the next thing is the second status line.
        assert r.response().status == 204
        assert r.buf == b""


def test_post_health_405(guestd):
    r = request(guestd, "POST", "/health", b"")
    assert r.status == 405
    allow = r.header("allow") or ""
    assert "GET" in allow


def test_chunked_init(guestd):
    head = (b"POST /init HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    with guestd.connect() as s:
        s.sendall(head + b"1\r\n{\r\n")
        time.sleep(0.05)
        s.sendall(b"1;ext=1\r\n}\r\n")
        s.sendall(b"0\r\n\r\n")
        r = Reader(s)
        resp = r.response("POST")
        assert resp.status == 204, resp
        # Keep-alive after a chunked body.
        s.sendall(build_request("GET", "/health"))
        assert r.response().status == 204


def test_chunked_init_bad_json_is_read(guestd):
    """The chunked body is really decoded: a chunked non-JSON body is refused."""
    body = b"3\r\n{no\r\n0\r\n\r\n"
    resp = raw(guestd, b"POST /init HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               + body)
    assert resp.status == 400


def test_expect_100_continue(guestd):
    with guestd.connect() as s:
        s.sendall(b"POST /init HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 2\r\nExpect: 100-continue\r\n\r\n")
        r = Reader(s)
        status, reason, headers = r.head()
        assert status == 100, (status, reason, headers)
        s.sendall(b"{}")
        status, _, headers = r.head()
        assert status == 204
        # Still usable.
        s.sendall(build_request("GET", "/health"))
        assert r.response().status == 204


def expect_refused(guestd):
    from conftest import init, token_hex
    assert init(guestd, {"accessToken": token_hex("expect")}).status == 204
    s = guestd.connect()
    s.sendall(b"POST /guestd.v1.System/Info HTTP/1.1\r\nHost: x\r\n"
              b"Content-Type: application/json\r\nContent-Length: 2\r\n"
              b"Expect: 100-continue\r\n\r\n")
    r = Reader(s)
    status, _, headers = r.head()
    h = dict(headers)
    r.exact(int(h["content-length"]))
    return s, r, status, h


def test_expect_100_continue_refused_up_front(guestd):
    """A request refused before its body is read gets its final answer without 100
    Continue (the client never has to send the body)."""
    s, r, status, h = expect_refused(guestd)
    with s:
        assert status == 401, (status, h)


def test_expect_100_continue_refused_then_closed(guestd):
    s, r, status, h = expect_refused(guestd)
    with s:
        if h.get("connection", "").lower() == "close":
            _, closed = read_to_eof(s, timeout=5)
            assert closed, "server sent Connection: close but kept the connection open"
        else:
            # Kept open: then the server must still expect the 2 body bytes first.
            s.sendall(b"{}" + build_request("GET", "/health"))
            assert r.response().status == 204


def test_connection_close_request_header(guestd):
    with guestd.connect() as s:
        s.sendall(build_request("GET", "/health", headers={"Connection": "close"}))
        r = Reader(s)
        resp = r.response()
        assert resp.status == 204
        assert (resp.header("connection") or "").lower() == "close"
        _, closed = read_to_eof(s)
        assert closed


def test_chunked_trailers_accepted(guestd):
    resp = raw(guestd, b"POST /init HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"2\r\n{}\r\n0\r\nX-Trailer: 1\r\n\r\n")
    assert resp.status == 204, resp


def test_request_pipelined_behind_stream(guestd):
    """A request pipelined behind a server stream is answered after the stream ends."""
    ev = build_request("POST", "/guestd.v1.System/Events", envelope(b"{}"),
                       {"Content-Type": "application/connect+json",
                        "Connect-Timeout-Ms": "300"})
    with guestd.connect() as s:
        s.sendall(ev + build_request("GET", "/health"))
        r = Reader(s)
        status, _, _ = r.head()
        assert status == 200
        got = list(stream_messages(r))
        assert got[-1][0] == 0x02
        assert r.response().status == 204


def test_expect_100_continue_connect(guestd):
    with guestd.connect() as s:
        s.sendall(b"POST /guestd.v1.System/Info HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Type: application/json\r\nContent-Length: 2\r\n"
                  b"Expect: 100-continue\r\n\r\n")
        r = Reader(s)
        status, _, _ = r.head()
        assert status == 100
        s.sendall(b"{}")
        resp = r.response("POST")
        assert resp.status == 200, resp
        assert resp.json()["envdVersion"] == ENVD_VERSION


def test_unwanted_body_discarded_keep_alive(guestd):
    """A body sent to a route that does not read one is skipped, not parsed as a request."""
    smuggle = b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
    with guestd.connect() as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                  % len(smuggle) + smuggle + build_request("GET", "/envs"))
        r = Reader(s)
        assert r.response().status == 204
        second = r.response()
        assert second.status == 200, second  # /envs, not the /nope hidden in the body


def test_many_pipelined_requests(guestd):
    n = 300
    with guestd.connect(timeout=30) as s:
        t = threading.Thread(target=s.sendall,
                             args=(b"".join(build_request("GET", "/health" if i % 2 else "/x%d" % i)
                                            for i in range(n)),), daemon=True)
        t.start()
        r = Reader(s)
        for i in range(n):
            resp = r.response()
            if i % 2:
                assert resp.status == 204, (i, resp)
            else:
                assert resp.status == 404, (i, resp)
        t.join(10)


# --- limits ---------------------------------------------------------------------------------

def test_url_too_long_414(guestd):
    data = b"GET /" + b"a" * (16 * 1024 + 10) + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    expect_error_and_close(guestd, data, 414)


def test_url_at_limit_ok(guestd):
    """A long target below the limit is routed normally (404 for an unknown path)."""
    path = "/" + "a" * (16 * 1024 - 200)
    r = request(guestd, "GET", path)
    assert r.status == 404


def test_header_section_too_large_431(guestd):
    headers = b"".join(b"X-Big-%d: %s\r\n" % (i, b"v" * 20000) for i in range(4))
    data = b"GET /health HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n"
    expect_error_and_close(guestd, data, 431)


def test_one_huge_header_431(guestd):
    data = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Huge: " + b"v" * (70 * 1024) + b"\r\n\r\n"
    expect_error_and_close(guestd, data, 431)


def test_too_many_header_fields_431(guestd):
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(130))
    data = b"GET /health HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n"
    expect_error_and_close(guestd, data, 431)


def test_many_header_fields_below_limit_ok(guestd):
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(100))
    resp = raw(guestd, b"GET /health HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    assert resp.status == 204


def test_init_body_too_large_413(guestd):
    body = b" " * (1024 * 1024 + 4096)
    data = (b"POST /init HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)) + body
    with guestd.connect() as s:
        # Send from another thread: the server may answer before it has read everything.
        t = threading.Thread(target=send_ignoring_reset, args=(s, data), daemon=True)
        t.start()
        resp = Reader(s).response("POST")
        assert resp.status == 413, resp
        assert (resp.header("connection") or "").lower() == "close"
        _, closed = read_to_eof(s)
        assert closed
        t.join(10)
    assert health_ok(guestd)


def test_init_body_below_limit_ok(guestd):
    body = b"{}" + b" " * (1024 * 1024 - 100)
    r = request(guestd, "POST", "/init", body, {"Content-Type": "application/json"})
    assert r.status == 204, r


# --- request smuggling ----------------------------------------------------------------------

SMUGGLING = {
    "obs-fold": b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: b\r\n c\r\n\r\n",
    "chunk-data-without-crlf":
        b"POST /init HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabcXX0\r\n\r\n",
    "content-length-and-transfer-encoding":
        b"POST /init HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "two-content-lengths":
        b"POST /init HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    "bare-lf": b"GET /health HTTP/1.1\nHost: x\nX-A: b\n\n",
    "bare-lf-in-header-section": b"GET /health HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n",
    "bare-cr": b"GET /health HTTP/1.1\r\nHost: x\rX-A: b\r\n\r\n",
    "content-length-with-sign":
        b"POST /init HTTP/1.1\r\nHost: x\r\nContent-Length: +2\r\n\r\n{}",
    "space-before-colon":
        b"POST /init HTTP/1.1\r\nHost: x\r\nContent-Length : 2\r\n\r\n{}",
    "transfer-encoding-not-chunked-last":
        b"POST /init HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n"
        b"0\r\n\r\n",
    "chunk-size-overflow":
        b"POST /init HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"ffffffffffffffffff\r\n{}\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("name", list(SMUGGLING))
def test_smuggling_rejected(guestd, name):
    expect_error_and_close(guestd, SMUGGLING[name], 400)


def test_bare_lf_after_request_line_rejected(guestd):
    expect_error_and_close(guestd, b"GET /health HTTP/1.1\nHost: x\r\n\r\n", 400)


def test_bare_lf_ending_header_section_rejected(guestd):
    expect_error_and_close(guestd, b"GET /health HTTP/1.1\r\nHost: x\r\n\n", 400)


def test_smuggled_request_not_executed(guestd):
    """The bytes after a rejected chunked body are never parsed as a second request."""
    with guestd.connect() as s:
        send_ignoring_reset(
            s, b"POST /init HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"3\r\nabcXX0\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        r = Reader(s)
        assert r.response().status == 400
        rest, closed = read_to_eof(s)
        assert closed and rest == b"" and r.buf == b""


# --- timeouts -------------------------------------------------------------------------------

@pytest.fixture
def quick(guestd_factory):
    return guestd_factory("--header-timeout-ms", "300", "--idle-timeout-ms", "400")


def test_header_timeout_partial_request_line(quick):
    with quick.connect() as s:
        s.sendall(b"GET /hea")
        resp = Reader(s).response()
        assert resp.status == 408, resp
        _, closed = read_to_eof(s)
        assert closed
    assert health_ok(quick)


def test_header_timeout_partial_headers(quick):
    with quick.connect() as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: ")
        resp = Reader(s).response()
        assert resp.status == 408, resp
        _, closed = read_to_eof(s)
        assert closed


def test_header_timeout_slowloris(quick):
    """Trickling bytes does not extend the header deadline."""
    data = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 200 + b"\r\n\r\n"
    stop = threading.Event()

    def trickle(s):
        for i in range(len(data)):
            if stop.is_set():
                return
            try:
                s.sendall(data[i:i + 1])
            except OSError:
                return
            time.sleep(0.05)

    with quick.connect(timeout=30) as s:
        t = threading.Thread(target=trickle, args=(s,), daemon=True)
        t.start()
        try:
            resp = Reader(s).response()
        finally:
            stop.set()
        assert resp.status == 408, resp
        t.join(10)


def test_idle_connection_closed_without_response(quick):
    with quick.connect() as s:
        data, closed = read_to_eof(s, timeout=15)
        assert closed
        assert data == b""


def test_idle_after_keepalive_request_closed(quick):
    with quick.connect() as s:
        s.sendall(build_request("GET", "/health"))
        r = Reader(s)
        assert r.response().status == 204
        data, closed = read_to_eof(s, timeout=15)
        assert closed
        assert data == b"" and r.buf == b""


def test_stream_in_progress_not_idle_closed(quick):
    """A silent stream outlives the idle and header timeouts; its own deadline ends it."""
    s, r, status, _ = stream_open(quick, "/guestd.v1.System/Events", {},
                                  {"Connect-Timeout-Ms": "2000"})
    with s:
        assert status == 200
        got = list(stream_messages(r))
        assert len(got) == 2, got
        assert got[0][0] == 0 and "start" in json.loads(got[0][1])
        assert got[1][0] == 0x02
        assert json.loads(got[1][1])["error"]["code"] == "deadline_exceeded"


# --- connection cap -------------------------------------------------------------------------

def test_connection_cap(guestd_factory):
    g = guestd_factory("--max-connections", "20")
    held = []
    try:
        for _ in range(20):
            s = g.connect()
            s.sendall(build_request("GET", "/health"))
            r = Reader(s)
            assert r.response().status == 204
            held.append(s)
        for _ in range(2):
            extra = g.connect()
            data, closed = read_to_eof(extra, timeout=10)
            extra.close()
            assert closed, "a connection over the cap was kept open"
            assert data == b""
        # The held connections are still served.
        held[0].sendall(build_request("GET", "/health"))
        assert Reader(held[0]).response().status == 204
        for s in held[:5]:
            s.close()
        held = held[5:]
        # Once the server has seen those closes, new connections are served again.
        deadline = time.monotonic() + 20
        while True:
            try:
                if health_ok(g):
                    break
            except (EOFError, OSError):
                pass
            assert time.monotonic() < deadline, "no connection served after closing some"
            time.sleep(0.1)
    finally:
        for s in held:
            s.close()


# --- routing errors -------------------------------------------------------------------------

def test_unknown_path_404(guestd):
    r = request(guestd, "GET", "/nope")
    assert r.status == 404
    assert r.body == b"404 page not found\n"
    assert r.header("content-type").startswith("text/plain")


def test_unknown_procedure_404(guestd):
    r = unary(guestd, "/guestd.v1.System/Nope", {})
    assert r.status == 404, r
    assert r.header("content-type") == "application/json"
    body = r.json()
    assert body["code"] == "unimplemented"
    assert "message" in body


def test_unknown_service_404(guestd):
    r = unary(guestd, "/guestd.v1.NoSuchService/Info", {})
    assert r.status == 404
    assert r.json()["code"] == "unimplemented"


def test_connect_get_405(guestd):
    r = request(guestd, "GET", "/guestd.v1.System/Info")
    assert r.status == 405, r


def test_connect_wrong_content_type_415(guestd):
    r = request(guestd, "POST", "/guestd.v1.System/Info", b"{}", {"Content-Type": "text/plain"})
    assert r.status == 415, r


def test_connect_missing_content_type_415(guestd):
    r = request(guestd, "POST", "/guestd.v1.System/Info", b"{}")
    assert r.status == 415, r


def test_unary_content_type_on_stream_415(guestd):
    r = request(guestd, "POST", "/guestd.v1.System/Events", b"{}",
                {"Content-Type": "application/json"})
    assert r.status == 415, r


def test_stream_content_type_on_unary_415(guestd):
    r = request(guestd, "POST", "/guestd.v1.System/Info", envelope(b"{}"),
                {"Content-Type": "application/connect+json"})
    assert r.status == 415, r


def test_content_type_params_and_case(guestd):
    r = request(guestd, "POST", "/guestd.v1.System/Info", b"{}",
                {"Content-Type": "Application/JSON; charset=utf-8"})
    assert r.status == 200, r


def test_error_keeps_connection(guestd):
    """Routing errors are ordinary responses: the connection stays usable."""
    with guestd.connect() as s:
        r = Reader(s)
        for path in ("/nope", "/guestd.v1.System/Nope"):
            s.sendall(build_request("GET", path))
            assert r.response().status in (404, 405)
        s.sendall(build_request("GET", "/health"))
        assert r.response().status == 204


# --- version headers ------------------------------------------------------------------------

VERSIONED = [
    ("GET", "/health", b"", {}),
    ("HEAD", "/health", b"", {}),
    ("POST", "/health", b"", {}),
    ("GET", "/envs", b"", {}),
    ("POST", "/init", b"{}", {"Content-Type": "application/json"}),
    ("POST", "/init", b"{bad", {"Content-Type": "application/json"}),
    ("GET", "/nope", b"", {}),
    ("POST", "/guestd.v1.System/Info", b"{}", {"Content-Type": "application/json"}),
    ("POST", "/guestd.v1.System/Info", b"[", {"Content-Type": "application/json"}),
    ("POST", "/guestd.v1.System/Info", b"{}", {"Content-Type": "text/plain"}),
    ("GET", "/guestd.v1.System/Info", b"", {}),
    ("POST", "/guestd.v1.System/Nope", b"{}", {"Content-Type": "application/json"}),
    ("OPTIONS", "/envs", b"", {"Origin": "https://x", "Access-Control-Request-Method": "GET"}),
]


@pytest.mark.parametrize("method,path,body,headers", VERSIONED,
                         ids=[f"{m} {p} {i}" for i, (m, p, _, _) in enumerate(VERSIONED)])
def test_version_headers(guestd, method, path, body, headers):
    r = request(guestd, method, path, body, headers)
    assert r.header("x-envd-version") == ENVD_VERSION, r
    assert r.header("x-guestd-version"), r


def test_version_headers_on_stream(guestd):
    s, r, status, hdrs = stream_open(guestd, "/guestd.v1.System/Events", {},
                                     {"Connect-Timeout-Ms": "1"})
    with s:
        h = dict(hdrs)
        assert h.get("x-envd-version") == ENVD_VERSION
        assert h.get("x-guestd-version")


def test_version_headers_on_401(guestd):
    from conftest import init, token_hex
    assert init(guestd, {"accessToken": token_hex("v")}).status == 204
    r = request(guestd, "GET", "/envs")
    assert r.status == 401
    assert r.header("x-envd-version") == ENVD_VERSION
    assert r.header("x-guestd-version")


def test_guestd_version_matches_info(guestd):
    r = unary(guestd, "/guestd.v1.System/Info", {})
    assert r.header("x-guestd-version") == r.json()["version"]


# --- RFC 9112 requirements beyond the brief -------------------------------------------------

def test_http11_without_host_400(guestd):
    expect_error_and_close(guestd, b"GET /health HTTP/1.1\r\n\r\n", 400)


@pytest.mark.parametrize("line", [b"X-Empty:", b"X-Empty: "], ids=["no-space", "space"])
def test_empty_header_value_accepted(guestd, line):
    resp = raw(guestd, b"GET /health HTTP/1.1\r\nHost: x\r\n" + line + b"\r\nX-B: 1\r\n\r\n")
    assert resp.status == 204, resp


def test_socket_fresh_after_many_errors(guestd):
    """A burst of bad connections leaves the server healthy."""
    for name in SMUGGLING:
        with guestd.connect() as s:
            send_ignoring_reset(s, SMUGGLING[name])
            read_to_eof(s)
    assert health_ok(guestd)
    assert health_ok(guestd, unix=True)

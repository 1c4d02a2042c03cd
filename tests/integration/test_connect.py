# SPDX-License-Identifier: Apache-2.0
"""Connect protocol: unary JSON and proto, errors, server streams (framing, keepalives,
deadlines, protocol errors) and the System service's Shutdown."""
import json
import os
import signal
import time

import pytest

from conftest import (Reader, build_request, end_frame, envelope, parse_envelopes,
                      proto_fields, read_stream, read_to_eof, request, stream_messages,
                      stream_open, unary)

ENVD_VERSION = "0.6.13"
INFO = "/guestd.v1.System/Info"
EVENTS = "/guestd.v1.System/Events"
SHUTDOWN = "/guestd.v1.System/Shutdown"


def post(g, path, body, content_type, headers=None):
    h = {"Content-Type": content_type, "Connect-Protocol-Version": "1"}
    h.update(headers or {})
    return request(g, "POST", path, body, h)


# --- unary ----------------------------------------------------------------------------------

def test_info_json(guestd):
    r = unary(guestd, INFO, {})
    assert r.status == 200, r
    assert r.header("content-type") == "application/json"
    info = r.json()
    assert info["envdVersion"] == ENVD_VERSION
    assert info["version"] == r.header("x-guestd-version")
    assert isinstance(info.get("features"), list)
    assert info["bootId"]
    # uint64 fields are JSON strings (protojson).
    assert info["generation"] == "1"
    assert isinstance(info.get("uptimeMs", "0"), str)
    # Timestamps are RFC 3339 UTC strings.
    assert info["startedAt"].endswith("Z")


def test_info_json_unknown_fields_ignored(guestd):
    r = unary(guestd, INFO, {"noSuchField": 1, "other": {"x": [1, 2]}})
    assert r.status == 200, r


def test_info_proto(guestd):
    r = post(guestd, INFO, b"", "application/proto")
    assert r.status == 200, r
    assert r.header("content-type") == "application/proto"
    body = r.body
    # Field 1 (version) comes first as a length-delimited field: tag 0x0a.
    assert body[0] == 0x0A
    f = proto_fields(body)
    assert f[1] == [r.header("x-guestd-version").encode()]
    assert f[2] == [ENVD_VERSION.encode()]
    # Same identity over both codecs.
    js = unary(guestd, INFO, {}).json()
    assert f[4] == [js["bootId"].encode()]
    assert f[5] == [1]  # generation, varint
    assert [x.decode() for x in f[3]] == js["features"]


def test_info_proto_garbage_invalid_argument(guestd):
    r = post(guestd, INFO, b"\x0a\xff", "application/proto")
    assert r.status == 400, r
    assert r.header("content-type") == "application/json"
    assert r.json()["code"] == "invalid_argument"


@pytest.mark.parametrize("body", [b"{not json", b"", b"[]", b"[{}]", b"\"x\"", b"null", b"{}{}"],
                         ids=["malformed", "empty", "array", "array-of-object", "string",
                              "null", "trailing"])
def test_info_bad_json_invalid_argument(guestd, body):
    r = post(guestd, INFO, body, "application/json")
    assert r.status == 400, r
    assert r.header("content-type") == "application/json"
    err = r.json()
    assert err["code"] == "invalid_argument"
    assert err.get("message")


def test_unary_unsupported_request_compression(guestd):
    import gzip
    r = post(guestd, INFO, gzip.compress(b"{}"), "application/json",
             {"Content-Encoding": "gzip"})
    assert r.status in (200, 501), r
    if r.status == 501:
        assert r.json()["code"] == "unimplemented"


def test_unary_identity_content_encoding(guestd):
    r = post(guestd, INFO, b"{}", "application/json", {"Content-Encoding": "identity"})
    assert r.status == 200, r


def test_protocol_version_2_rejected(guestd):
    r = unary(guestd, INFO, {}, {"Connect-Protocol-Version": "2"})
    assert r.status == 400, r
    assert r.json()["code"] == "invalid_argument"


def test_protocol_version_header_optional(guestd):
    r = request(guestd, "POST", INFO, b"{}", {"Content-Type": "application/json"})
    assert r.status == 200, r


def test_unary_with_timeout_ok(guestd):
    r = unary(guestd, INFO, {}, {"Connect-Timeout-Ms": "60000"})
    assert r.status == 200, r


@pytest.mark.parametrize("value", ["12345678901", "abc", "-5", "1.5"])
def test_unary_bad_timeout(guestd, value):
    r = unary(guestd, INFO, {}, {"Connect-Timeout-Ms": value})
    assert r.status == 400, r
    assert r.header("content-type") == "application/json"
    assert r.json()["code"] == "invalid_argument"


def test_unary_ten_digit_timeout_ok(guestd):
    r = unary(guestd, INFO, {}, {"Connect-Timeout-Ms": "9999999999"})
    assert r.status == 200, r


# --- server streams -------------------------------------------------------------------------

def test_events_json_first_envelope(guestd):
    s, r, status, hdrs = stream_open(guestd, EVENTS, {})
    with s:
        h = dict(hdrs)
        assert status == 200
        assert h.get("content-type") == "application/connect+json"
        assert h.get("transfer-encoding") == "chunked"
        flags, payload = next(stream_messages(r))
        assert flags == 0
        msg = json.loads(payload)
        assert msg["start"] == {}
        assert msg["generation"] == "1"


def test_events_keepalive(guestd):
    s, r, status, _ = stream_open(guestd, EVENTS, {}, {"Keepalive-Ping-Interval": "1"})
    with s:
        s.settimeout(30)
        assert status == 200
        it = stream_messages(r)
        first = json.loads(next(it)[1])
        assert "start" in first
        keepalives = 0
        # Generous: two 1 s keepalives must come well before the 90 s default would.
        deadline = time.monotonic() + 20
        while keepalives < 2:
            assert time.monotonic() < deadline, "keepalives did not arrive"
            flags, payload = next(it)
            assert flags == 0
            msg = json.loads(payload)
            if "keepalive" in msg:
                assert msg["keepalive"] == {}
                keepalives += 1
        assert keepalives >= 2


def test_events_deadline(guestd):
    s, r, status, _ = stream_open(guestd, EVENTS, {}, {"Connect-Timeout-Ms": "500"})
    with s:
        assert status == 200
        got = read_stream(r)  # returns only once the chunked body has ended
        assert "start" in json.loads(got[0][1])
        end = end_frame(got)
        assert end == {"error": {"code": "deadline_exceeded",
                                 "message": "context deadline exceeded"}}
        # The connection is reusable after the stream.
        s.sendall(build_request("GET", "/health"))
        assert r.response().status == 204


@pytest.mark.parametrize("value", ["12345678901", "abc"])
def test_stream_bad_timeout(guestd, value):
    s, r, status, hdrs = stream_open(guestd, EVENTS, {}, {"Connect-Timeout-Ms": value})
    with s:
        assert status == 200
        assert dict(hdrs).get("content-type") == "application/connect+json"
        got = read_stream(r)
        assert len(got) == 1, got
        assert end_frame(got)["error"]["code"] == "invalid_argument"


def test_events_proto(guestd):
    s, r, status, hdrs = stream_open(guestd, EVENTS, b"", proto=True,
                                     headers={"Connect-Timeout-Ms": "500"})
    with s:
        assert status == 200
        assert dict(hdrs).get("content-type") == "application/connect+proto"
        got = read_stream(r)
        flags, first = got[0]
        assert flags == 0
        f = proto_fields(first)
        assert f[1] == [b""]   # start: empty submessage
        assert f[6] == [1]     # generation
        # The end frame is JSON even with the proto codec.
        assert end_frame(got)["error"]["code"] == "deadline_exceeded"


def test_events_proto_end_frame_on_error_is_json(guestd):
    s, r, status, _ = stream_open(guestd, EVENTS, b"", proto=True,
                                  headers={"Connect-Timeout-Ms": "abc"})
    with s:
        got = read_stream(r)
        assert end_frame(got)["error"]["code"] == "invalid_argument"


def stream_raw_body(g, body, proto=False, headers=None):
    h = {"Content-Type": "application/connect+proto" if proto else "application/connect+json",
         "Connect-Protocol-Version": "1"}
    h.update(headers or {})
    with g.connect() as s:
        s.sendall(build_request("POST", EVENTS, body, h))
        r = Reader(s)
        resp = r.response("POST")
    return resp


def test_compressed_request_envelope_rejected(guestd):
    resp = stream_raw_body(guestd, envelope(b"{}", flags=0x01))
    assert resp.status == 200
    got = parse_envelopes(resp.body)
    assert len(got) == 1, got  # no start event: the handler never ran
    err = end_frame(got)["error"]
    assert err["code"] in ("internal", "invalid_argument", "unimplemented")
    assert err.get("message")


def test_two_request_envelopes_rejected(guestd):
    resp = stream_raw_body(guestd, envelope(b"{}") + envelope(b"{}"))
    assert resp.status == 200
    got = parse_envelopes(resp.body)
    assert len(got) == 1, got
    assert end_frame(got)["error"]["code"] == "invalid_argument"


def test_truncated_request_envelope_rejected(guestd):
    resp = stream_raw_body(guestd, envelope(b"{}")[:-1])
    got = parse_envelopes(resp.body)
    assert len(got) == 1
    assert end_frame(got)["error"]["code"] == "invalid_argument"


def test_empty_stream_request_body_rejected(guestd):
    resp = stream_raw_body(guestd, b"")
    assert resp.status == 200
    got = parse_envelopes(resp.body)
    assert len(got) == 1
    assert end_frame(got)["error"]["code"] == "invalid_argument"


def test_stream_bad_json_message(guestd):
    resp = stream_raw_body(guestd, envelope(b"{nope"))
    got = parse_envelopes(resp.body)
    assert len(got) == 1
    assert end_frame(got)["error"]["code"] == "invalid_argument"


def test_client_disconnect_then_server_healthy(guestd):
    for _ in range(5):
        s, r, status, _ = stream_open(guestd, EVENTS, {})
        assert status == 200
        next(stream_messages(r))
        s.close()
    r = unary(guestd, INFO, {})
    assert r.status == 200


# --- shutdown -------------------------------------------------------------------------------

def open_events(g):
    s, r, status, _ = stream_open(g, EVENTS, {})
    assert status == 200
    it = stream_messages(r)
    assert "start" in json.loads(next(it)[1])
    return s, r, it


def expect_shutdown_events(it):
    rest = list(it)  # to the end of the chunked body
    assert len(rest) == 2, rest
    flags, payload = rest[0]
    assert flags == 0
    msg = json.loads(payload)
    assert "shuttingDown" in msg, msg
    assert isinstance(msg["shuttingDown"].get("reason"), str)
    assert msg["shuttingDown"]["reason"]
    assert end_frame(rest) == {}
    return msg["shuttingDown"]["reason"]


def test_shutdown_rpc(guestd):
    s, r, it = open_events(guestd)
    with s:
        resp = unary(guestd, SHUTDOWN, {})
        assert resp.status == 200, resp
        assert resp.json() == {}
        expect_shutdown_events(it)
        _, closed = read_to_eof(s, timeout=20)
        assert closed
    assert guestd.wait_exit(timeout=20) == 0
    assert not os.path.exists(guestd.sock)


def test_shutdown_rpc_proto(guestd):
    resp = post(guestd, SHUTDOWN, b"", "application/proto")
    assert resp.status == 200, resp
    assert resp.header("content-type") == "application/proto"
    assert resp.body == b""
    assert guestd.wait_exit(timeout=20) == 0


def test_sigterm(guestd):
    s, r, it = open_events(guestd)
    with s:
        guestd.proc.send_signal(signal.SIGTERM)
        reason = expect_shutdown_events(it)
        assert "SIGTERM" in reason
    assert guestd.wait_exit(timeout=20) == 0
    assert not os.path.exists(guestd.sock)


def test_sigterm_idle_connections(guestd):
    """Idle keep-alive connections do not hold up the exit."""
    held = [guestd.connect() for _ in range(3)]
    try:
        for s in held:
            s.sendall(build_request("GET", "/health"))
            assert Reader(s).response().status == 204
        guestd.proc.send_signal(signal.SIGTERM)
        assert guestd.wait_exit(timeout=20) == 0
        for s in held:
            _, closed = read_to_eof(s, timeout=10)
            assert closed
    finally:
        for s in held:
            s.close()


def test_sigterm_ends_every_stream(guestd):
    streams = [open_events(guestd) for _ in range(3)]
    unix_s, unix_r, status, _ = stream_open(guestd, EVENTS, {}, unix=True)
    assert status == 200
    unix_it = stream_messages(unix_r)
    assert "start" in json.loads(next(unix_it)[1])
    try:
        guestd.proc.send_signal(signal.SIGTERM)
        for _, _, it in streams:
            expect_shutdown_events(it)
        expect_shutdown_events(unix_it)
        assert guestd.wait_exit(timeout=20) == 0
    finally:
        for s, _, _ in streams:
            s.close()
        unix_s.close()

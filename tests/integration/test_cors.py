# SPDX-License-Identifier: Apache-2.0
"""CORS as envd's rs/cors setup: preflights answered before the token gate, '*' origins."""

from conftest import init, request, token_hex, unary

T = token_hex("cors-T")
PREFLIGHT = {"Origin": "https://x", "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "content-type,x-access-token"}


def assert_preflight_ok(r, method="POST", headers="content-type,x-access-token"):
    assert r.status == 204, r
    assert r.body == b""
    assert r.header("access-control-allow-origin") == "*"
    assert r.header("access-control-allow-methods") == method
    assert r.header("access-control-allow-headers") == headers
    assert r.header("access-control-max-age") == "7200"


def test_preflight(guestd):
    r = request(guestd, "OPTIONS", "/process.Process/Start", headers=PREFLIGHT)
    assert_preflight_ok(r)


def test_preflight_before_token_gate(guestd):
    assert init(guestd, {"accessToken": T}).status == 204
    r = request(guestd, "OPTIONS", "/process.Process/Start", headers=PREFLIGHT)
    assert_preflight_ok(r)
    r = request(guestd, "OPTIONS", "/envs", headers=PREFLIGHT)
    assert_preflight_ok(r)


def test_preflight_before_require_token(guestd_factory):
    g = guestd_factory("--require-token")
    r = request(g, "OPTIONS", "/guestd.v1.System/Info", headers=PREFLIGHT)
    assert_preflight_ok(r)


def test_preflight_lowercase_method(guestd):
    h = dict(PREFLIGHT, **{"Access-Control-Request-Method": "get"})
    r = request(guestd, "OPTIONS", "/files", headers=h)
    assert_preflight_ok(r, method="GET")


def test_preflight_without_request_headers(guestd):
    h = {"Origin": "https://x", "Access-Control-Request-Method": "DELETE"}
    r = request(guestd, "OPTIONS", "/files", headers=h)
    assert r.status == 204
    assert r.header("access-control-allow-origin") == "*"
    assert r.header("access-control-allow-methods") == "DELETE"
    assert r.header("access-control-allow-headers") is None


def test_preflight_disallowed_method(guestd):
    h = dict(PREFLIGHT, **{"Access-Control-Request-Method": "TRACE"})
    r = request(guestd, "OPTIONS", "/files", headers=h)
    assert r.status == 204
    assert r.header("access-control-allow-origin") is None
    assert r.header("access-control-allow-methods") is None


def test_normal_request_with_origin(guestd):
    r = request(guestd, "GET", "/envs", headers={"Origin": "https://x"})
    assert r.status == 200
    assert r.header("access-control-allow-origin") == "*"
    expose = r.header("access-control-expose-headers") or ""
    names = {h.strip().lower() for h in expose.split(",")}
    assert {"x-envd-version", "cache-control", "x-content-type-options"} <= names, expose


def test_connect_with_origin(guestd):
    r = unary(guestd, "/guestd.v1.System/Info", {}, {"Origin": "https://x"})
    assert r.status == 200
    assert r.header("access-control-allow-origin") == "*"
    assert r.header("access-control-expose-headers")


def test_error_with_origin_has_cors(guestd):
    """A browser must be able to read error responses too (the 401 of the gate)."""
    assert init(guestd, {"accessToken": T}).status == 204
    r = request(guestd, "GET", "/envs", headers={"Origin": "https://x"})
    assert r.status == 401
    assert r.header("access-control-allow-origin") == "*"


def test_no_origin_no_cors_headers(guestd):
    r = request(guestd, "GET", "/envs")
    assert r.header("access-control-allow-origin") is None
    r = request(guestd, "OPTIONS", "/envs",
                headers={"Access-Control-Request-Method": "GET"})
    assert r.header("access-control-allow-origin") is None


def test_options_with_origin_but_not_preflight(guestd):
    """OPTIONS without Access-Control-Request-Method is not a preflight: it is routed (and
    gated) like any request."""
    assert init(guestd, {"accessToken": T}).status == 204
    r = request(guestd, "OPTIONS", "/envs", headers={"Origin": "https://x"})
    assert r.status == 401
    assert r.header("access-control-allow-origin") == "*"

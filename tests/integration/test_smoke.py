# SPDX-License-Identifier: Apache-2.0
"""The basics every other suite relies on: guestd starts, answers on both transports."""
from conftest import request, unary


def test_health_tcp(guestd):
    r = request(guestd, "GET", "/health")
    assert r.status == 204
    assert r.body == b""
    assert r.header("cache-control") == "no-store"
    assert r.header("x-envd-version") == "0.6.13"


def test_health_unix(guestd):
    r = request(guestd, "GET", "/health", unix=True)
    assert r.status == 204


def test_info_unary_json(guestd):
    r = unary(guestd, "/guestd.v1.System/Info", {})
    assert r.status == 200, r
    assert r.header("content-type") == "application/json"
    info = r.json()
    assert info["envdVersion"] == "0.6.13"
    assert "bootId" in info

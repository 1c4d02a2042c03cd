# SPDX-License-Identifier: Apache-2.0
"""envd's GET /metrics: its JSON fields and types, the token gate, and Prometheus text."""
import json

from conftest import request


def test_metrics_envd_shape(guestd):
    r = request(guestd, "GET", "/metrics")
    assert r.status == 200, r
    assert r.header("cache-control") == "no-store"
    assert r.header("content-type") == "application/json"
    m = json.loads(r.body)
    assert set(m) == {"ts", "cpu_count", "cpu_used_pct", "mem_total", "mem_used", "mem_cache",
                      "mem_total_mib", "mem_used_mib", "disk_total", "disk_used"}
    for k in ("ts", "cpu_count", "mem_total", "mem_used", "mem_cache", "mem_total_mib",
              "mem_used_mib", "disk_total", "disk_used"):
        assert isinstance(m[k], int) and m[k] >= 0, (k, m[k])
    assert isinstance(m["cpu_used_pct"], (int, float)) and 0 <= m["cpu_used_pct"] <= 100
    assert m["cpu_count"] >= 1
    assert 0 < m["mem_used"] <= m["mem_total"]
    assert m["mem_total_mib"] == m["mem_total"] >> 20
    assert m["mem_used_mib"] == m["mem_used"] >> 20
    assert 0 < m["disk_used"] <= m["disk_total"]
    assert round(m["cpu_used_pct"], 2) == m["cpu_used_pct"]


def test_metrics_needs_the_token(guestd):
    tok = "m" * 64
    r = request(guestd, "POST", "/init", json.dumps({"accessToken": tok}).encode(),
                {"Content-Type": "application/json"})
    assert r.status == 204, r
    assert request(guestd, "GET", "/metrics").status == 401
    assert request(guestd, "GET", "/metrics", headers={"X-Access-Token": tok}).status == 200


def test_metrics_prometheus(guestd):
    r = request(guestd, "GET", "/metrics?format=prometheus")
    assert r.status == 200, r
    assert r.header("content-type").startswith("text/plain; version=0.0.4")
    lines = r.body.decode().splitlines()
    values = {l.split()[0]: float(l.split()[1]) for l in lines if l and not l.startswith("#")}
    for name in ("guestd_host_cpu_count", "guestd_host_memory_total_bytes",
                 "guestd_host_disk_total_bytes", "guestd_host_cpu_used_percent"):
        assert name in values, name
        assert f"# TYPE {name} gauge" in lines
    assert values["guestd_host_cpu_count"] >= 1


def test_metrics_bad_format_and_method(guestd):
    assert request(guestd, "GET", "/metrics?format=xml").status == 400
    assert request(guestd, "POST", "/metrics", b"").status == 405

# SPDX-License-Identifier: Apache-2.0
"""The access-token gate, trusted peers, Basic-auth users, --access-token-file and
--require-token."""
import base64
import os

import pytest

from conftest import (envs, init, read_stream, end_frame, request, run_cli, stream_open,
                      token_hex, unary, free_port)

UNAUTHORIZED_BODY = (b'{"code":401,"message":"unauthorized access, please provide a valid access '
                     b'token or method signing if supported"}\n')
INFO = "/guestd.v1.System/Info"
EVENTS = "/guestd.v1.System/Events"
T = token_hex("auth-T")


def basic(user):
    return "Basic " + base64.b64encode(f"{user}:".encode()).decode()


@pytest.fixture
def locked(guestd):
    """guestd with token T set over TCP."""
    r = init(guestd, {"accessToken": T})
    assert r.status == 204, r
    return guestd


def assert_gate_401(r):
    assert r.status == 401, r
    assert r.header("content-type") == "application/json; charset=utf-8"
    assert r.header("x-content-type-options") == "nosniff"
    assert r.body == UNAUTHORIZED_BODY


def test_open_before_token(guestd):
    assert envs(guestd).status == 200
    assert unary(guestd, INFO, {}).status == 200


def test_envs_without_token_401(locked):
    assert_gate_401(envs(locked))


def test_envs_wrong_token_401(locked):
    assert_gate_401(envs(locked, token=token_hex("wrong")))


@pytest.mark.parametrize("variant", ["prefix", "longer", "case"])
def test_envs_near_miss_tokens_401(locked, variant):
    bad = {"prefix": T[:-1], "longer": T + "0", "case": T.upper()}[variant]
    assert_gate_401(envs(locked, token=bad))


def test_envs_empty_token_401(locked):
    assert_gate_401(envs(locked, token=""))


def test_envs_right_token_200(locked):
    r = envs(locked, token=T)
    assert r.status == 200, r
    assert r.json()["E2B_SANDBOX"] == "true"


def test_health_and_init_exempt(locked):
    r = request(locked, "GET", "/health")
    assert r.status == 204
    # POST /init passes the gate (it authenticates itself): with the current token in the
    # body it is accepted without X-Access-Token.
    r = init(locked, {"accessToken": T})
    assert r.status == 204, r


def test_post_health_gated(locked):
    """envd exempts GET /health by exact method; other methods are gated."""
    assert_gate_401(request(locked, "POST", "/health"))


def test_connect_needs_token(locked):
    assert_gate_401(unary(locked, INFO, {}))
    r = unary(locked, INFO, {}, {"X-Access-Token": T})
    assert r.status == 200, r


def test_stream_needs_token(locked):
    s, r, status, _ = stream_open(locked, EVENTS, {})
    with s:
        assert status == 401
    s, r, status, _ = stream_open(locked, EVENTS, {},
                                  {"X-Access-Token": T, "Connect-Timeout-Ms": "200"})
    with s:
        assert status == 200
        assert end_frame(read_stream(r))["error"]["code"] == "deadline_exceeded"


def test_unknown_paths_gated(locked):
    assert_gate_401(request(locked, "GET", "/nope"))
    assert request(locked, "GET", "/nope", headers={"X-Access-Token": T}).status == 404


def test_unix_root_peer_trusted(locked):
    if os.geteuid() != 0:
        pytest.skip("the Unix-socket peer is trusted only when it is uid 0")
    r = envs(locked, unix=True)
    assert r.status == 200, r
    assert unary(locked, INFO, {}, unix=True).status == 200
    # Even a wrong token does not matter for a trusted peer.
    assert envs(locked, token="wrong", unix=True).status == 200


def test_loopback_tcp_never_trusted(locked):
    # Every TCP request in this suite comes from 127.0.0.1: still gated.
    assert_gate_401(envs(locked))
    assert_gate_401(request(locked, "GET", "/envs", headers={"X-Forwarded-For": "127.0.0.1"}))


def test_token_not_in_logs(locked):
    envs(locked, token=T)
    envs(locked, token="wrong-token-value-xyz")
    log = locked.log_text()
    assert T not in log
    assert "wrong-token-value-xyz" not in log


# --- Basic auth -----------------------------------------------------------------------------

def test_basic_root(guestd):
    r = envs(guestd, headers={"Authorization": basic("root")})
    assert r.status == 200, r
    r = unary(guestd, INFO, {}, {"Authorization": basic("root")})
    assert r.status == 200, r


def test_basic_unknown_user_unary(guestd):
    r = unary(guestd, INFO, {}, {"Authorization": basic("nosuchuser123")})
    assert r.status == 401, r
    assert r.header("content-type") == "application/json"
    assert r.json() == {"code": "unauthenticated",
                        "message": "invalid username: 'nosuchuser123'"}


def test_basic_unknown_user_envs(guestd):
    r = envs(guestd, headers={"Authorization": basic("nosuchuser123")})
    assert r.status == 401, r
    assert r.json()["code"] == "unauthenticated"


def test_basic_unknown_user_stream(guestd):
    s, r, status, hdrs = stream_open(guestd, EVENTS, {},
                                     {"Authorization": basic("nosuchuser123")})
    with s:
        assert status == 200
        assert dict(hdrs).get("content-type") == "application/connect+json"
        got = read_stream(r)
        assert len(got) == 1, got
        err = end_frame(got)["error"]
        assert err["code"] == "unauthenticated"
        assert err["message"] == "invalid username: 'nosuchuser123'"


def test_other_authorization_scheme_ignored(guestd):
    r = unary(guestd, INFO, {}, {"Authorization": "Bearer abc"})
    assert r.status == 200, r


def test_basic_after_token_gate(locked):
    """The token gate comes first: a valid user without the token is still refused."""
    assert_gate_401(envs(locked, headers={"Authorization": basic("root")}))
    r = envs(locked, token=T, headers={"Authorization": basic("root")})
    assert r.status == 200


# --- --access-token-file --------------------------------------------------------------------

def write_token_file(tmp_path, mode, content=T + "\n"):
    p = tmp_path / f"token-{mode:o}"
    p.write_text(content)
    os.chmod(p, mode)
    return p


def test_access_token_file(guestd_factory, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs a root-owned token file")
    p = write_token_file(tmp_path, 0o600)
    g = guestd_factory("--access-token-file", str(p))
    assert_gate_401(envs(g))
    assert_gate_401(envs(g, token=T + " x"))
    assert envs(g, token=T).status == 200
    assert T not in g.log_text()


def test_access_token_file_0400(guestd_factory, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs a root-owned token file")
    p = write_token_file(tmp_path, 0o400)
    g = guestd_factory("--access-token-file", str(p))
    assert envs(g, token=T).status == 200


def safe_args(tmp_path):
    """Flags that keep a guestd that unexpectedly keeps running inside tmp_path."""
    (tmp_path / "empty.conf").write_text("")
    return ["--config", str(tmp_path / "empty.conf"), "--run-dir", str(tmp_path / "run"),
            "--listen", f"tcp:127.0.0.1:{free_port()}",
            "--listen", f"unix:{tmp_path / 'cli.sock'}"]


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_access_token_file_bad_mode(tmp_path, mode):
    p = write_token_file(tmp_path, mode)
    res = run_cli(*safe_args(tmp_path), "--access-token-file", str(p))
    assert res.returncode != 0
    out = (res.stdout + res.stderr).decode()
    assert "0600" in out or "mode" in out, out
    assert "root" in out or "own" in out, out
    assert T not in out


def test_access_token_file_missing(tmp_path):
    res = run_cli(*safe_args(tmp_path), "--access-token-file", str(tmp_path / "nope"))
    assert res.returncode != 0
    assert str(tmp_path / "nope") in (res.stdout + res.stderr).decode()


def test_access_token_flag_refused(tmp_path):
    res = run_cli(*safe_args(tmp_path), "--access-token", "X")
    assert res.returncode == 2
    err = (res.stdout + res.stderr).decode()
    assert "never taken from the command line" in err, err


def test_access_token_flag_refused_go_syntax(tmp_path):
    res = run_cli(*safe_args(tmp_path), "-access-token=X")
    assert res.returncode == 2


# --- --require-token ------------------------------------------------------------------------

def test_require_token(guestd_factory):
    g = guestd_factory("--require-token")
    r = envs(g)
    assert r.status == 401, r
    assert r.header("content-type") == "application/json; charset=utf-8"
    assert r.json()["code"] == 401
    assert unary(g, INFO, {}).status == 401
    assert request(g, "GET", "/nope").status == 401
    assert request(g, "GET", "/health").status == 204
    r = init(g, {"accessToken": T})
    assert r.status == 204, r
    assert envs(g, token=T).status == 200
    assert unary(g, INFO, {}, {"X-Access-Token": T}).status == 200
    assert_gate_401(envs(g))


def test_require_token_init_without_token_keeps_waiting(guestd_factory):
    g = guestd_factory("--require-token")
    assert init(g, {"envVars": {"A": "1"}}).status == 204
    assert envs(g).status == 401


def test_require_token_trusted_unix_peer(guestd_factory):
    if os.geteuid() != 0:
        pytest.skip("the Unix-socket peer is trusted only when it is uid 0")
    g = guestd_factory("--require-token")
    assert envs(g, unix=True).status == 200

# SPDX-License-Identifier: Apache-2.0
"""POST /init: env vars, token set/rotate/clear, timestamps (without touching the host clock),
body validation, default user and the run-dir marker file."""
import datetime
import os
import re
import shutil
import stat
import time

import pytest

from conftest import envs, init, request, token_hex, unary

T = token_hex("init-T")
U = token_hex("init-U")

# guestd runs under this for tests that send timestamps: without CAP_SYS_TIME it could not
# move the host clock even if it tried (it must not: it is not PID 1 and clock-sync is auto).
NO_CLOCK = ("setpriv", "--bounding-set=-sys_time", "--inh-caps=-sys_time")


def rfc3339(dt):
    return dt.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def user_envs(g, token=None):
    r = envs(g, token=token)
    assert r.status == 200, r
    d = r.json()
    return {k: v for k, v in d.items() if not k.startswith("E2B_")}


# --- basics ---------------------------------------------------------------------------------

def test_init_204_headers(guestd):
    r = init(guestd, {})
    assert r.status == 204, r
    assert r.body == b""
    assert r.header("cache-control") == "no-store"
    assert r.header("x-envd-version") == "0.6.13"


def test_init_empty_body(guestd):
    r = request(guestd, "POST", "/init", b"")
    assert r.status == 204, r


def test_init_null_body(guestd):
    r = init(guestd, b"null")
    assert r.status == 204, r


def test_init_get_405(guestd):
    r = request(guestd, "GET", "/init")
    assert r.status == 405, r


def test_env_vars_visible(guestd):
    assert init(guestd, {"envVars": {"FOO": "bar", "EMPTY": "", "UNI": "ü €"}}).status == 204
    r = envs(guestd)
    assert r.status == 200
    assert r.header("cache-control") == "no-store"
    assert r.header("content-type").startswith("application/json")
    d = r.json()
    assert d["FOO"] == "bar"
    assert d["EMPTY"] == ""
    assert d["UNI"] == "ü €"
    assert d["E2B_SANDBOX"] == "true"


def test_env_vars_json_escaping(guestd):
    tricky = 'a"b\\c\n\t\x01</script>'
    assert init(guestd, {"envVars": {"T": tricky}}).status == 204
    assert envs(guestd).json()["T"] == tricky


def test_env_vars_replace_whole_set(guestd):
    assert init(guestd, {"envVars": {"A": "1", "B": "2"}}).status == 204
    assert user_envs(guestd) == {"A": "1", "B": "2"}
    assert init(guestd, {"envVars": {"C": "3"}}).status == 204
    assert user_envs(guestd) == {"C": "3"}


def test_init_without_env_vars_keeps_them(guestd):
    assert init(guestd, {"envVars": {"A": "1"}}).status == 204
    assert init(guestd, {}).status == 204
    assert user_envs(guestd) == {"A": "1"}


def test_env_vars_empty_object_clears(guestd):
    assert init(guestd, {"envVars": {"A": "1"}}).status == 204
    assert init(guestd, {"envVars": {}}).status == 204
    assert user_envs(guestd) == {}


def test_cannot_override_e2b_sandbox(guestd):
    assert init(guestd, {"envVars": {"E2B_SANDBOX": "false", "X": "y"}}).status == 204
    d = envs(guestd).json()
    assert d["E2B_SANDBOX"] == "true"
    assert d["X"] == "y"


@pytest.mark.parametrize("name", ["A=B", ""])
def test_invalid_env_name_400(guestd, name):
    assert init(guestd, {"envVars": {"KEEP": "1"}}).status == 204
    r = init(guestd, {"envVars": {name: "v", "NEW": "2"}})
    assert r.status == 400, r
    # Nothing of the rejected request was applied.
    assert user_envs(guestd) == {"KEEP": "1"}


def test_keys_case_insensitive(guestd):
    assert init(guestd, {"envvars": {"B": "2"}}).status == 204
    assert user_envs(guestd) == {"B": "2"}
    assert init(guestd, {"ENVVARS": {"C": "3"}}).status == 204
    assert user_envs(guestd) == {"C": "3"}


def test_unknown_and_ignored_fields_accepted(guestd):
    r = init(guestd, {"envVars": {"A": "1"}, "hyperloopIP": "10.0.0.1", "lifecycleID": "x",
                      "somethingNew": {"deep": [1]}})
    assert r.status == 204, r
    assert user_envs(guestd) == {"A": "1"}


@pytest.mark.parametrize("body", [b"{bad", b"[]", b"\"str\"", b"{\"envVars\":{}} x",
                                  b"{\"a\":1,\"a\":2}"],
                         ids=["malformed", "array", "string", "trailing", "duplicate-key"])
def test_bad_json_400(guestd, body):
    r = init(guestd, body)
    assert r.status == 400, r
    assert r.header("x-envd-version") == "0.6.13"


@pytest.mark.parametrize("body", [{"envVars": "x"}, {"envVars": {"A": 1}}, {"envVars": ["A"]},
                                  {"accessToken": 5}, {"defaultUser": True},
                                  {"timestamp": 1700000000}],
                         ids=["envvars-string", "envvar-number", "envvars-array",
                              "token-number", "user-bool", "timestamp-number"])
def test_wrong_types_400(guestd, body):
    assert init(guestd, {"envVars": {"KEEP": "1"}}).status == 204
    r = init(guestd, body)
    assert r.status == 400, r
    assert user_envs(guestd) == {"KEEP": "1"}


def test_empty_access_token_400(guestd):
    r = init(guestd, {"accessToken": ""})
    assert r.status == 400, r
    assert envs(guestd).status == 200  # no token got set


# --- token set, rotate, clear ---------------------------------------------------------------

@pytest.fixture
def with_t(guestd):
    assert init(guestd, {"accessToken": T}).status == 204
    assert envs(guestd).status == 401
    return guestd


def test_rotation_without_proof_401(with_t):
    r = init(with_t, {"accessToken": U})
    assert r.status == 401, r
    assert r.body == b"access token validation failed"
    assert r.header("x-envd-version") == "0.6.13"
    # T is still the token.
    assert envs(with_t, token=T).status == 200
    assert envs(with_t, token=U).status == 401


def test_reset_without_proof_401(with_t):
    r = init(with_t, {})
    assert r.status == 401, r
    assert r.body == b"access token reset not authorized"
    assert envs(with_t, token=T).status == 200


def test_rotation_with_wrong_header_401(with_t):
    r = init(with_t, {"accessToken": U}, {"X-Access-Token": token_hex("nope")})
    assert r.status == 401
    assert envs(with_t, token=T).status == 200


def test_unauthorized_init_changes_nothing(with_t):
    assert init(with_t, {"accessToken": T, "envVars": {"A": "1"}}).status == 204
    r = init(with_t, {"accessToken": U, "envVars": {"EVIL": "1"}, "defaultUser": "nosuchuser123"})
    assert r.status == 401
    assert user_envs(with_t, token=T) == {"A": "1"}


def test_rotation_with_header(with_t):
    r = init(with_t, {"accessToken": U}, {"X-Access-Token": T})
    assert r.status == 204, r
    assert envs(with_t, token=U).status == 200
    assert envs(with_t, token=T).status == 401


def test_same_token_in_body_ok(with_t):
    r = init(with_t, {"accessToken": T, "envVars": {"A": "1"}})
    assert r.status == 204, r
    assert user_envs(with_t, token=T) == {"A": "1"}
    assert envs(with_t, token=T).status == 200


def test_rotate_then_same_token(with_t):
    assert init(with_t, {"accessToken": U}, {"X-Access-Token": T}).status == 204
    assert init(with_t, {"accessToken": U}).status == 204
    assert envs(with_t, token=U).status == 200


def test_clear_with_header(with_t):
    r = init(with_t, {}, {"X-Access-Token": T})
    assert r.status == 204
    assert envs(with_t).status == 200


def test_unix_clears_token(with_t):
    if os.geteuid() != 0:
        pytest.skip("the Unix-socket peer is trusted only when it is uid 0")
    r = init(with_t, {}, unix=True)
    assert r.status == 204, r
    assert envs(with_t).status == 200


def test_unix_sets_token_over_existing(with_t):
    if os.geteuid() != 0:
        pytest.skip("the Unix-socket peer is trusted only when it is uid 0")
    assert init(with_t, {"accessToken": U}, unix=True).status == 204
    assert envs(with_t, token=U).status == 200
    assert envs(with_t, token=T).status == 401


# --- timestamps -----------------------------------------------------------------------------

@pytest.fixture
def no_clock(guestd_factory):
    if not shutil.which("setpriv"):
        pytest.skip("setpriv is needed to run guestd without CAP_SYS_TIME")
    return guestd_factory(prefix=NO_CLOCK)


def assert_clock_unmoved(wall0, mono0):
    # A step of the host clock would show as wall time diverging from monotonic time; the
    # step /init asked for is an hour, so a minute of slack cannot hide it.
    drift = (time.time() - wall0) - (time.monotonic() - mono0)
    assert abs(drift) < 60, f"host clock moved by {drift:.1f} s"


def test_future_timestamp_applied_clock_untouched(no_clock):
    wall0, mono0 = time.time(), time.monotonic()
    future = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
    r = init(no_clock, {"timestamp": rfc3339(future), "envVars": {"A": "1"}})
    assert r.status == 204, r
    assert user_envs(no_clock) == {"A": "1"}
    assert_clock_unmoved(wall0, mono0)
    log = no_clock.log_text()
    assert "not stepped" in log, log
    assert not re.search(r"clock stepped by", log)


def test_stale_timestamp_not_applied(no_clock):
    now = datetime.datetime.now(datetime.timezone.utc)
    t1 = now + datetime.timedelta(hours=1)
    assert init(no_clock, {"timestamp": rfc3339(t1), "envVars": {"A": "1"}}).status == 204
    older = t1 - datetime.timedelta(minutes=10)
    r = init(no_clock, {"timestamp": rfc3339(older), "envVars": {"A": "2"}})
    assert r.status == 204, r
    assert user_envs(no_clock) == {"A": "1"}
    # The same timestamp again (a replay) is not applied either.
    r = init(no_clock, {"timestamp": rfc3339(t1), "envVars": {"A": "3"}})
    assert r.status == 204
    assert user_envs(no_clock) == {"A": "1"}
    # A newer one is.
    newer = t1 + datetime.timedelta(seconds=1)
    assert init(no_clock, {"timestamp": rfc3339(newer), "envVars": {"A": "4"}}).status == 204
    assert user_envs(no_clock) == {"A": "4"}


def test_stale_timestamp_does_not_change_token(no_clock):
    now = datetime.datetime.now(datetime.timezone.utc)
    assert init(no_clock, {"timestamp": rfc3339(now)}).status == 204
    older = now - datetime.timedelta(minutes=1)
    assert init(no_clock, {"timestamp": rfc3339(older), "accessToken": T}).status == 204
    assert envs(no_clock).status == 200  # no token was set


def test_timestamp_formats_accepted(no_clock):
    now = datetime.datetime.now(datetime.timezone.utc)
    for i, ts in enumerate([now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                            (now + datetime.timedelta(seconds=2)).strftime(
                                "%Y-%m-%dT%H:%M:%S.123456789Z"),
                            (now + datetime.timedelta(seconds=4)).strftime(
                                "%Y-%m-%dT%H:%M:%S+00:00")]):
        r = init(no_clock, {"timestamp": ts, "envVars": {"I": str(i)}})
        assert r.status == 204, (ts, r)
        assert user_envs(no_clock) == {"I": str(i)}, ts


@pytest.mark.parametrize("ts", ["yesterday", "2024-13-01T00:00:00Z", "2024-02-30T00:00:00Z",
                                "2024-01-01 00:00:00Z", "2024-01-01T00:00:00", ""])
def test_invalid_timestamp_400(no_clock, ts):
    assert init(no_clock, {"envVars": {"KEEP": "1"}}).status == 204
    r = init(no_clock, {"timestamp": ts, "envVars": {"A": "1"}})
    assert r.status == 400, r
    assert user_envs(no_clock) == {"KEEP": "1"}


def test_guestd_runs_without_cap_sys_time(no_clock):
    """The safety net above really holds: guestd has no CAP_SYS_TIME."""
    with open(f"/proc/{no_clock.proc.pid}/status") as f:
        caps = dict(line.split(":", 1) for line in f if line.startswith("Cap"))
    assert not int(caps["CapEff"].strip(), 16) & (1 << 25)
    assert not int(caps["CapBnd"].strip(), 16) & (1 << 25)


# --- default user ---------------------------------------------------------------------------

def test_default_user_unknown_then_restored(guestd):
    assert init(guestd, {"defaultUser": "nosuchuser123"}).status == 204
    r = envs(guestd)
    assert r.status == 401, r
    assert r.json() == {"code": "unauthenticated", "message": "invalid default user"}
    r = unary(guestd, "/guestd.v1.System/Info", {})
    assert r.status == 401
    assert r.json()["code"] == "unauthenticated"
    # An explicit Basic user still works.
    r = envs(guestd, headers={"Authorization": "Basic cm9vdDo="})
    assert r.status == 200
    # /health and /init do not depend on the user.
    assert request(guestd, "GET", "/health").status == 204
    assert init(guestd, {"defaultUser": "root"}).status == 204
    assert envs(guestd).status == 200


def test_empty_default_user_keeps_current(guestd):
    assert init(guestd, {"defaultUser": "nosuchuser123"}).status == 204
    assert init(guestd, {"defaultUser": ""}).status == 204
    assert envs(guestd).status == 401


# --- run-dir marker -------------------------------------------------------------------------

def test_run_dir_marker(guestd):
    p = os.path.join(guestd.run_dir, ".E2B_SANDBOX")
    with open(p) as f:
        assert f.read() == "true"
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o444


def test_run_dir_marker_isnotfc(guestd_factory):
    g = guestd_factory("-isnotfc")
    with open(os.path.join(g.run_dir, ".E2B_SANDBOX")) as f:
        assert f.read() == "false"
    assert envs(g).json()["E2B_SANDBOX"] == "false"


def test_run_dir_marker_replaced(guestd_factory, tmp_path):
    """A stale marker (read-only, other content) is replaced on start."""
    run = tmp_path / "shared-run"
    run.mkdir()
    stale = run / ".E2B_SANDBOX"
    stale.write_text("stale")
    os.chmod(stale, 0o444)
    guestd_factory("--run-dir", str(run))
    assert stale.read_text() == "true"
    assert stat.S_IMODE(os.stat(stale).st_mode) == 0o444

# SPDX-License-Identifier: Apache-2.0
"""Command line and config file: envd's flag spellings, Go flag semantics, exit codes."""
import socket

import pytest

from conftest import envs, free_port, health_ok, run_cli

ENVD_VERSION = "0.6.13"


def safe_args(tmp_path):
    """Flags that keep a guestd that unexpectedly keeps running inside tmp_path."""
    (tmp_path / "empty.conf").write_text("")
    return ["--config", str(tmp_path / "empty.conf"), "--run-dir", str(tmp_path / "run"),
            "--listen", f"tcp:127.0.0.1:{free_port()}",
            "--listen", f"unix:{tmp_path / 'cli.sock'}"]


def empty_conf(tmp_path):
    p = tmp_path / "empty.conf"
    p.write_text("")
    return str(p)


def refused(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return False
    except ConnectionRefusedError:
        return True


# --- version and help -----------------------------------------------------------------------

@pytest.mark.parametrize("flag", ["--version", "-version", "-version=true"])
def test_version(tmp_path, flag):
    res = run_cli(*safe_args(tmp_path), flag)
    assert res.returncode == 0, res
    assert res.stdout == (ENVD_VERSION + "\n").encode()


def test_help(tmp_path):
    res = run_cli(*safe_args(tmp_path), "--help")
    assert res.returncode == 0
    out = res.stdout.decode()
    assert "guestd 0.1.0" in out
    assert "--listen" in out


@pytest.mark.parametrize("args", [["--no-such-flag"], ["-nosuchflag"], ["--no-such-flag=1"],
                                  ["positional"], ["--listen"], ["-port"]],
                         ids=["long", "short", "with-value", "positional", "missing-value",
                              "envd-missing-value"])
def test_bad_command_line_exit_2(tmp_path, args):
    res = run_cli(*safe_args(tmp_path), *args)
    assert res.returncode == 2, res
    assert res.stderr, "no explanation on stderr"


@pytest.mark.parametrize("args", [["-port", "70000"], ["-port", "x"],
                                  ["--listen", "bogus:1"], ["--log-level", "loud"],
                                  ["--clock-sync", "maybe"], ["--header-timeout-ms", "0"],
                                  ["--max-connections", "0"], ["-isnotfc=maybe"]])
def test_bad_values_exit_2(tmp_path, args):
    res = run_cli(*safe_args(tmp_path), *args)
    assert res.returncode == 2, res


# --- envd spellings -------------------------------------------------------------------------

@pytest.mark.parametrize("form", ["-port N", "-port=N", "--port N", "--port=N"])
def test_port_flag(guestd_factory, tmp_path, form):
    port = free_port()
    flag = form.replace("N", str(port)).split(" ")
    g = guestd_factory("--config", empty_conf(tmp_path), "--listen", "tcp:127.0.0.1:0", *flag,
                       listen=False, port=port)
    assert health_ok(g)


@pytest.mark.parametrize("flag", [["-isnotfc"], ["-isnotfc=true"], ["--isnotfc"],
                                  ["-isnotfc=1"]])
def test_isnotfc(guestd_factory, flag):
    g = guestd_factory(*flag)
    assert envs(g).json()["E2B_SANDBOX"] == "false"


def test_isnotfc_false_value(guestd_factory):
    g = guestd_factory("-isnotfc=false")
    assert envs(g).json()["E2B_SANDBOX"] == "true"


def test_isnotfc_space_false_is_positional(tmp_path):
    """Go bool flags never take the next argument: 'false' is a stray positional."""
    res = run_cli(*safe_args(tmp_path), "-isnotfc", "false")
    assert res.returncode == 2, res


@pytest.mark.parametrize("flags", [["-verbose"], ["-cgroup-root", "/sys/fs/cgroup"],
                                   ["-cgroup-root=/sys/fs/cgroup"], ["-no-cgroups"],
                                   ["-isnotfc", "-verbose", "-no-cgroups"]],
                         ids=["verbose", "cgroup-root", "cgroup-root-eq", "no-cgroups", "all"])
def test_envd_flags_accepted(guestd_factory, flags):
    g = guestd_factory(*flags)
    assert health_ok(g)
    assert envs(g).status == 200


def test_double_dash_ends_flags(tmp_path):
    # Anything after "--" is ignored, like Go's flag package (no positional arguments used).
    res = run_cli(*safe_args(tmp_path), "--version", "--", "whatever")
    assert res.returncode == 0
    assert res.stdout == (ENVD_VERSION + "\n").encode()


# --- config file ----------------------------------------------------------------------------

def test_config_file_honoured(guestd_factory, tmp_path):
    port = free_port()
    conf = tmp_path / "guestd.conf"
    conf.write_text(f"# a comment\n\nlisten = tcp:127.0.0.1:{port}\n"
                    "default-user = nosuchuser123\n")
    g = guestd_factory("--config", str(conf), listen=False, port=port)
    assert health_ok(g)
    # The file's default user is in force.
    r = envs(g)
    assert r.status == 401, r
    assert r.json()["message"] == "invalid default user"


def test_config_file_root_user(guestd_factory, tmp_path):
    port = free_port()
    conf = tmp_path / "guestd.conf"
    conf.write_text(f"default-user = root\nlisten = tcp:127.0.0.1:{port}\n")
    g = guestd_factory("--config", str(conf), listen=False, port=port)
    assert envs(g).status == 200


def test_listen_flag_overrides_file(guestd_factory, tmp_path):
    file_port, flag_port = free_port(), free_port()
    conf = tmp_path / "guestd.conf"
    conf.write_text(f"listen = tcp:127.0.0.1:{file_port}\n")
    g = guestd_factory("--config", str(conf), "--listen", f"tcp:127.0.0.1:{flag_port}",
                       listen=False, port=flag_port)
    assert health_ok(g)
    assert refused(file_port)


def test_flags_override_file_values(guestd_factory, tmp_path):
    port = free_port()
    conf = tmp_path / "guestd.conf"
    conf.write_text(f"listen = tcp:127.0.0.1:{port}\ndefault-user = nosuchuser123\n")
    g = guestd_factory("--config", str(conf), "--default-user", "root", listen=False, port=port)
    assert envs(g).status == 200


def test_config_unknown_key(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text("# ok\nno-such-key = 1\n")
    args = safe_args(tmp_path)
    res = run_cli(*args, "--config", str(conf))
    assert res.returncode == 2, res
    err = res.stderr.decode()
    assert "line 2" in err, err
    assert "no-such-key" in err, err


def test_config_line_without_equals(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text("listen tcp:127.0.0.1:1\n")
    res = run_cli(*safe_args(tmp_path), "--config", str(conf))
    assert res.returncode == 2
    assert "line 1" in res.stderr.decode()


def test_config_access_token_refused(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text("access-token = x\n")
    res = run_cli(*safe_args(tmp_path), "--config", str(conf))
    assert res.returncode == 2, res
    err = res.stderr.decode()
    assert "never taken" in err, err
    assert "line 1" in err


def test_config_missing_explicit_file(tmp_path):
    args = safe_args(tmp_path)
    res = run_cli(*args, "--config", str(tmp_path / "nope.conf"))
    assert res.returncode == 2
    assert "nope.conf" in res.stderr.decode()


def test_config_cannot_name_config(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text(f"config = {tmp_path / 'other.conf'}\n")
    res = run_cli(*safe_args(tmp_path), "--config", str(conf))
    assert res.returncode == 2
    assert "line 1" in res.stderr.decode()


def test_config_header_timeout(guestd_factory, tmp_path):
    port = free_port()
    conf = tmp_path / "guestd.conf"
    conf.write_text(f"listen = tcp:127.0.0.1:{port}\nheader-timeout-ms = 300\n")
    g = guestd_factory("--config", str(conf), listen=False, port=port)
    from conftest import Reader
    with g.connect() as s:
        s.sendall(b"GET /hea")
        assert Reader(s).response().status == 408

"""Bad flags and settings: one clear line on stderr, exit status 2; --help everywhere."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SPANREC = [sys.executable, "-m", "cli.main"]


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*SPANREC, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("spanrec: error: "), lines[0]
    assert "Traceback" not in proc.stderr
    return lines[0]


@pytest.mark.parametrize("cmd", [[], ["record"], ["controller"], ["sensor"]])
def test_help_explains_every_option(cmd: list[str]) -> None:
    proc = run(*cmd, "--help")
    assert proc.returncode == 0
    assert "Usage:" in proc.stdout
    import click

    from cli.main import cli
    command = cli
    for name in cmd:
        command = command.commands[name]
    for param in command.params:
        if isinstance(param, click.Option):
            assert param.help, f"{param.opts} has no help text"
            assert param.opts[-1] in proc.stdout


@pytest.mark.parametrize("args,needle", [
    (["record", "--no-such-flag", "x"], "no-such-flag"),
    (["record", "/nonexistent/file.pcap"], "does not exist"),
    (["sensor", "--pcap", "/nonexistent.pcap", "--controller", "h:1", "--sensor-id", "s"], "does not exist"),
    (["sensor", "--controller", "127.0.0.1:1", "--sensor-id", "s1"], "exactly one of --interface or --pcap"),
    (["sensor", "--interface", "lo", "--controller", "nocolon", "--sensor-id", "s1"], "controller"),
    (["sensor", "--interface", "lo", "--controller", "h:1", "--sensor-id", "bad id!"], "sensor_id"),
    (["controller", "--listen", "0.0.0.0:99999"], "listen"),
    (["controller", "--answered-timeout", "-5"], "answered_timeout_s"),
    (["controller", "--answered-timeout", "soon"], "soon"),
    (["controller", "--insecure", "--leg-header", "X Bad"], "not a SIP header name: 'x bad'"),
    (["controller", "--insecure", "--sip-dedup-window", "-1"], "sip_dedup_window_ms"),
    (["bogus-command"], "bogus-command"),
    # no mTLS files and no explicit --insecure: refused before anything starts
    (["controller", "--listen", "127.0.0.1:0"], "give --tls-cert, --tls-key and --tls-ca (mTLS), or --insecure"),
    (["sensor", "--interface", "lo", "--controller", "h:1", "--sensor-id", "s1"], "or --insecure"),
    (["sensor", "--interface", "lo", "--controller", "h:1", "--sensor-id", "s1", "--tls-cert", "c.pem"],
     "missing --tls-key, --tls-ca"),
    (["controller", "--insecure", "--tls-cert", "a", "--tls-key", "b", "--tls-ca", "c"], "exclude each other"),
    (["controller", "--tls-cert", "/nonexistent/c.pem", "--tls-key", "/nonexistent/k.pem",
      "--tls-ca", "/nonexistent/ca.pem"], "--tls-ca /nonexistent/ca.pem: file not found"),
])
def test_bad_flags_give_one_line_and_status_2(args: list[str], needle: str) -> None:
    proc = run(*args)
    assert proc.returncode == 2, proc.stderr
    assert needle in one_error_line(proc)


def test_bad_environment_value(tmp_path: Path) -> None:
    proc = run("controller", env={"SPANREC_SETUP_TIMEOUT_S": "never"})
    assert proc.returncode == 2
    assert "setup_timeout_s" in one_error_line(proc)


def test_config_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("listen = [unclosed\n")
    proc = run("controller", "--config", str(bad))
    assert proc.returncode == 2 and "bad.toml" in one_error_line(proc)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[controller]\nlisten = '127.0.0.1:7600'\nno_such_key = 1\n")
    proc = run("controller", "--config", str(unknown))
    assert proc.returncode == 2 and "no_such_key" in one_error_line(proc)
    proc = run("controller", "--config", str(tmp_path / "missing.toml"))
    assert proc.returncode == 2 and "missing.toml" in one_error_line(proc)


def test_flag_beats_environment_beats_file(tmp_path: Path) -> None:
    from cli.settings import ControllerSettings, load
    cfg = tmp_path / "c.toml"
    cfg.write_text("[controller]\nlisten = '127.0.0.1:1111'\nstorage = '/from/file'\nlinger_s = 7\n")
    os.environ["SPANREC_STORAGE"] = "/from/env"
    try:
        s = load(ControllerSettings, "controller", str(cfg), {"listen": "127.0.0.1:3333"})
    finally:
        del os.environ["SPANREC_STORAGE"]
    assert (s.listen, s.storage, s.linger_s) == ("127.0.0.1:3333", "/from/env", 7.0)


def test_sensor_with_unreachable_controller_fails_cleanly(tmp_path: Path) -> None:
    from tests.conftest import capture
    pcap = capture("sip-rtp-g711.pcap")
    proc = run("sensor", "--pcap", str(pcap), "--controller", "127.0.0.1:9", "--sensor-id", "s1",
               "--connect-timeout", "2", "--insecure", timeout=30)
    assert proc.returncode == 1
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("spanrec: error:")]
    assert line and "127.0.0.1:9" in line[0] and "unreachable" in line[0]
    assert "Traceback" not in proc.stderr

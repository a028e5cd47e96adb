"""`spanrecctl` against a real `spanrec controller` that recorded a capture
replayed by `spanrec sensor --pcap`: every command in every output mode, `get`
byte-identical to the storage folder, and a bounded one-line failure when the
controller cannot be reached."""
from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import click
import pytest

from tests.transport.procs import REPO, SPANRECCTL, Controller, one_error_line, run

SAMPLE = REPO / "samples" / "sample-call.pcap"


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A controller (plain text: mTLS has its own tests) holding one replayed capture."""
    work = tmp_path_factory.mktemp("ctl")
    c = Controller(work, tls=None)
    try:
        proc = c.replay(SAMPLE, "branch-7", None, workdir=work)
        assert proc.returncode == 0, proc.stderr
        # every recording of the replay is written once the sensor is done
        deadline = time.monotonic() + 30
        while True:
            fleet = json.loads(ctl("fleet", c, "-o", "json").stdout)
            if fleet["recordings_written"] and not fleet["active_calls"]:
                break
            assert time.monotonic() < deadline
            time.sleep(0.2)
        c.wait_recordings(fleet["recordings_written"])
        yield c
    finally:
        assert c.stop() == 0, c.log.read_text()


def ctl(cmd: str, c: Controller | None, *args: str, target: str | None = None):
    proc = run(SPANRECCTL, cmd, "--controller", target or c.target, "--insecure", *args, timeout=60)
    return proc


def stored(c: Controller) -> dict[str, Path]:
    """recording id -> its folder in the controller's storage."""
    return {p.parent.name: p.parent for p in c.storage.rglob("call.json")}


def _ok(proc) -> str:
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stdout


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_fleet(recorded: Controller, fmt: str) -> None:
    out = _ok(ctl("fleet", recorded, "-o", fmt))
    if fmt == "json":
        fleet = json.loads(out)
        assert fleet["controller"] == recorded.target
        assert fleet["storage"] == recorded.storage.resolve().as_uri()
        (s,) = fleet["sensors"]
        assert (s["sensor_id"], s["site"], s["mode"], s["state"], s["link"]) == \
            ("branch-7", "lab", "replay", "done", "disconnected")
        assert s["captured"] > 0 and 0 < s["forwarded"] <= s["captured"]
        assert s["identity"] == ""                        # plain text: no certificate
        for key in ("kernel_drops", "queue_drops", "send_queue", "captured_per_s",
                    "forwarded_per_s", "last_heartbeat", "last_seen", "peer"):
            assert key in s
        assert s["last_seen"].endswith("Z")
    else:
        for text in ("branch-7", "lab", "done", "replay", "captured/s", "kernel drops", "spool",
                     recorded.target, f"{len(stored(recorded))} recording(s)"):
            assert text in out, out


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_calls(recorded: Controller, fmt: str) -> None:
    folders = stored(recorded)
    out = _ok(ctl("calls", recorded, "-o", fmt))
    if fmt == "json":
        calls = json.loads(out)
        assert sorted(c["id"] for c in calls) == sorted(folders)
        for c in calls:
            meta = json.loads((folders[c["id"]] / "call.json").read_text())
            assert c["active"] is False
            assert c["location"] == folders[c["id"]].resolve().as_uri()
            assert (c["from_uri"], c["to_uri"], c["status"], c["call_ids"], c["end_reason"]) == \
                (meta["from"], meta["to"], meta["status"], meta["call_ids"], meta["end_reason"])
    else:
        assert f"{len(folders)} call(s)" in out
        for rid in folders:
            assert rid in out
        assert "stored" in out


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_calls_active_only(recorded: Controller, fmt: str) -> None:
    out = _ok(ctl("calls", recorded, "--active", "-o", fmt))
    if fmt == "json":
        assert json.loads(out) == []
    else:
        assert "0 active call(s)" in out


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_call(recorded: Controller, fmt: str) -> None:
    for rid, folder in stored(recorded).items():
        out = _ok(ctl("call", recorded, rid, "-o", fmt))
        meta = json.loads((folder / "call.json").read_text())
        if fmt == "json":
            assert json.loads(out) == meta                # call.json itself
        else:
            for text in (rid, meta["status"], meta["from"], "call.json", "call.pcap", "branch-7"):
                assert text in out, out


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_get_downloads_the_stored_files(recorded: Controller, fmt: str, tmp_path: Path) -> None:
    for rid, folder in stored(recorded).items():
        out = _ok(ctl("get", recorded, rid, "--out", str(tmp_path), "-o", fmt))
        got = tmp_path / rid
        want = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
        assert sorted(p.name for p in got.iterdir()) == want
        for name in want:
            assert (got / name).read_bytes() == (folder / name).read_bytes(), name
        if fmt == "json":
            files = json.loads(out)
            assert sorted(f["name"] for f in files) == want
            for f in files:
                assert f["size"] == (folder / f["name"]).stat().st_size
                assert Path(f["path"]) == got / f["name"]
        else:
            for name in want:
                assert name in out


def test_unknown_and_malformed_ids(recorded: Controller, tmp_path: Path) -> None:
    rid = next(iter(stored(recorded)))
    missing = rid[:-1] + ("0" if rid[-1] != "0" else "1")
    for cmd, extra in (("call", ()), ("get", ("--out", str(tmp_path)))):
        proc = ctl(cmd, recorded, missing, *extra)
        assert proc.returncode == 1
        assert f"recording {missing}" in one_error_line(proc, "spanrecctl")
        proc = ctl(cmd, recorded, "../../etc", *extra)
        assert proc.returncode == 1
        assert "invalid recording id" in one_error_line(proc, "spanrecctl")
    assert not any(tmp_path.iterdir())


def test_unreachable_controller_is_one_line_within_the_deadline() -> None:
    with socket.socket() as refused:            # a port nobody listens on
        refused.bind(("127.0.0.1", 0))
        refused_port = refused.getsockname()[1]
    silent = socket.socket()                     # accepts TCP, never speaks HTTP/2
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        for port, why in ((refused_port, "Connection refused"), (silent.getsockname()[1], "within 2 s")):
            t0 = time.monotonic()
            proc = ctl("fleet", None, "--timeout", "2", target=f"127.0.0.1:{port}")
            assert time.monotonic() - t0 < 10
            assert proc.returncode == 1 and proc.stdout == ""
            line = one_error_line(proc, "spanrecctl")
            assert f"controller 127.0.0.1:{port} unreachable" in line and why in line, line
        t0 = time.monotonic()                    # the default deadline is 5 s
        proc = ctl("calls", None, target=f"127.0.0.1:{silent.getsockname()[1]}")
        assert proc.returncode == 1 and time.monotonic() - t0 < 10
        assert "within 5 s" in one_error_line(proc, "spanrecctl")
    finally:
        silent.close()


def test_usage_errors_exit_2() -> None:
    for args, needle in ((["fleet", "--controller", "nocolon", "--insecure"], "HOST:PORT"),
                         (["fleet"], "or --insecure"),
                         (["nope"], "nope"),
                         (["get", "--insecure"], "ID")):
        proc = run(SPANRECCTL, *args)
        assert proc.returncode == 2, proc.stderr
        assert needle in one_error_line(proc, "spanrecctl")


@pytest.mark.parametrize("cmd", [[], ["fleet"], ["calls"], ["call"], ["get"]])
def test_help_explains_every_option(cmd: list[str]) -> None:
    proc = run(SPANRECCTL, *cmd, "--help")
    assert proc.returncode == 0 and "Usage:" in proc.stdout
    from cli.ctl import ctl as group
    command = group
    for name in cmd:
        command = command.commands[name]
    for param in command.params:
        if isinstance(param, click.Option):
            assert param.help, f"{param.opts} has no help text"
            assert param.opts[-1] in proc.stdout

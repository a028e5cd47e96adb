"""Nothing lost on the sensor side: a real-time replay spools while no controller
listens, is killed with SIGKILL, restarts on the same spool, and once a real
controller comes up every call is recorded with every one of its packets."""
from __future__ import annotations

import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scripts.gencalls import plan, write
from tests.conftest import REPO, require_tool

CALLS = {"calls": 2, "duration": 2.0, "concurrent": 2}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@functools.cache
def _help(command: str) -> str:
    return subprocess.run([sys.executable, "-m", "cli.main", command, "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=60).stdout


def _optional(command: str, *flags: str) -> list[str]:
    """`flags` when `spanrec COMMAND --help` lists the first of them (TLS may require
    --insecure for plain text; --state-dir keeps the controller's state in tmp)."""
    return list(flags) if flags[0] in _help(command) else []


def spanrec(*args: str, log: Path) -> subprocess.Popen:
    with open(log, "ab") as err:
        return subprocess.Popen([sys.executable, "-m", "cli.main", *args], cwd=REPO,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})


def tshark_frames(path: Path, display_filter: str = "") -> list[str]:
    tshark = require_tool("tshark")
    args = [tshark, "-r", str(path), "-T", "fields", "-e", "frame.time_epoch", "-e", "ip.src",
            "-e", "ip.dst", "-e", "ip.id", "-e", "udp.srcport", "-e", "udp.dstport"]
    if display_filter:
        args += ["-Y", display_filter]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=120).stdout
    return sorted(out.splitlines())


def spool_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.seg")) if folder.is_dir() else 0


def wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_kill_9_of_a_realtime_replay_loses_no_packet(tmp_path: Path) -> None:
    require_tool("tshark")
    pcap = tmp_path / "calls.pcap"
    write(pcap, **CALLS)
    plans = plan(**CALLS)
    span_s = (max(p.end_ns for p in plans) - min(p.invite_ns for p in plans)) / 1e9
    port = free_port()
    spool_dir = tmp_path / "spool"
    sensor_args = ["sensor", "--pcap", str(pcap), "--realtime",
                   "--controller", f"127.0.0.1:{port}", "--sensor-id", "durable-1",
                   "--spool-dir", str(spool_dir), "--connect-timeout", "120",
                   "--log-format", "text", "--log-level", "info",
                   *_optional("sensor", "--insecure")]
    log = tmp_path / "sensor.log"

    # 1. no controller listens: the replay runs at capture pace into the spool
    first = spanrec(*sensor_args, log=log)
    mine = spool_dir / "durable-1"
    wait_for(lambda: spool_bytes(mine) > 0 or first.poll() is not None, 60, "the first spooled batch")
    time.sleep(span_s * 0.4)                                # well into the first call's media
    assert first.poll() is None, log.read_text()          # still replaying: killed mid-capture
    spooled = spool_bytes(mine)
    assert spooled > 0
    first.send_signal(signal.SIGKILL)
    first.wait(10)

    # 2. same command, same spool: it resends the spool and continues the file
    second = spanrec(*sensor_args, log=log)
    time.sleep(1.0)
    assert second.poll() is None, log.read_text()
    assert spool_bytes(mine) >= spooled                    # nothing spooled was lost

    # 3. the controller comes up
    rec = tmp_path / "rec"
    ctl_log = tmp_path / "controller.log"
    controller = spanrec("controller", "--listen", f"127.0.0.1:{port}", "--storage", str(rec),
                         *_optional("controller", "--state-dir", str(tmp_path / "state")),
                         *_optional("controller", "--insecure"),
                         "--log-format", "text", log=ctl_log)
    try:
        assert second.wait(60 + span_s) == 0, log.read_text()
        wait_for(lambda: len(list(rec.rglob("call.json"))) == len(plans), 60,
                 "both recordings")
    finally:
        controller.send_signal(signal.SIGTERM)
        try:
            controller.wait(30)
        except subprocess.TimeoutExpired:
            controller.kill()
            controller.wait(10)
        if second.poll() is None:
            second.kill()

    text = log.read_text()
    resumed = [ln for ln in text.splitlines() if "resuming from the spool" in ln]
    assert resumed and "resume_after_frames=0" not in resumed[0], text
    assert not mine.exists()                                # done: the spool cleaned up
    # every packet of every call, each once: call.pcap against tshark on the original
    calls = {json.loads(p.read_text())["call_ids"][0]: p.parent for p in rec.rglob("call.json")}
    assert sorted(calls) == sorted(p.call_id for p in plans)
    for p in plans:
        folder = calls[p.call_id]
        expected = tshark_frames(pcap, f"ip.addr == {p.caller_ip}")
        got = tshark_frames(folder / "call.pcap")
        assert len(got) == len(expected), p.call_id
        assert got == expected, p.call_id
        sip = len(tshark_frames(folder / "call.pcap", "sip"))
        assert sip == len(tshark_frames(pcap, f"sip && ip.addr == {p.caller_ip}")) > 0
        call = json.loads((folder / "call.json").read_text())
        assert call["status"] == "answered"
        assert sum(s["packets"] for s in call["streams"]) > 0

"""Live: a sipp call between two phones on a mirrored bridge is captured by
`spanrec sensor --interface` and recorded by `spanrec controller`."""
from __future__ import annotations

import audioop
import json
import os
import signal
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import require_tool
from tests.netlab import PHONE_A_IP, PHONE_B_IP, SENSOR_IFACE, NetlabUnavailable, netlab_context
from tests.s3server import free_ports

pytestmark = pytest.mark.live

SIPP_G711A = Path("/usr/share/sip-tester/g711a.pcap")  # the pcap/ symlink points at this folder


def reference_alaw(path: Path) -> np.ndarray:
    """What sipp sends: the RTP payloads of its g711a.pcap, decoded by audioop (stdlib)."""
    tshark = require_tool("tshark")
    out = subprocess.run([tshark, "-r", str(path), "-o", "rtp.heuristic_rtp:TRUE", "-Y", "rtp",
                          "-T", "fields", "-e", "rtp.payload"], capture_output=True, text=True,
                         check=True).stdout
    payload = b"".join(bytes.fromhex(line.replace(":", "")) for line in out.split())
    return np.frombuffer(audioop.alaw2lin(payload, 2), dtype="<i2")


def stop(proc: subprocess.Popen, timeout: float = 15) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(5)
    return proc.returncode


def test_live_sipp_call_is_recorded_with_the_audio_sipp_sent(tmp_path: Path) -> None:
    require_tool("sipp")
    if not SIPP_G711A.is_file():
        pytest.skip("sipp's g711a.pcap not installed")
    expected = reference_alaw(SIPP_G711A)
    try:
        ctx = netlab_context(uplink=True)
        lab = ctx.__enter__()
    except NetlabUnavailable as exc:
        pytest.skip(str(exc))
    controller = sensor = None
    try:
        (port,) = free_ports(1)
        listen = f"{lab.uplink_root_ip}:{port}"
        out = tmp_path / "rec"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        controller = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "controller", "--listen", listen, "--storage", str(out), "--state-dir", str(tmp_path / "state"), "--insecure",
             "--log-format", "text"], stdin=subprocess.DEVNULL,
            stdout=open(tmp_path / "controller.log", "wb"), stderr=subprocess.STDOUT, env=env)
        sensor = lab.run_in(
            lab.sensor_ns,
            [sys.executable, "-m", "cli.main", "sensor", "--interface", SENSOR_IFACE,
             "--controller", listen, "--sensor-id", "branch-1", "--site", "lab", "--spool-dir", str(tmp_path / "spool"), "--log-format", "text",
             "--insecure"],
            stdin=subprocess.DEVNULL, stdout=open(tmp_path / "sensor.log", "wb"),
            stderr=subprocess.STDOUT, env=env)
        # the sensor is up when the controller logs its hello
        deadline = time.monotonic() + 30
        while b"sensor connected" not in (tmp_path / "controller.log").read_bytes():
            assert controller.poll() is None, (tmp_path / "controller.log").read_text()
            assert sensor.poll() is None, (tmp_path / "sensor.log").read_text()
            assert time.monotonic() < deadline, "sensor never connected"
            time.sleep(0.2)
        time.sleep(0.5)                                   # capture handle is open
        assert lab.sipp_call(timeout_s=60) == (0, 0)
        deadline = time.monotonic() + 30                  # BYE + linger, then written
        while not list(out.rglob("call.json")):
            assert time.monotonic() < deadline, (tmp_path / "controller.log").read_text()
            time.sleep(0.3)
        time.sleep(0.5)
    finally:
        if sensor is not None:
            stop(sensor)
        if controller is not None:
            assert stop(controller) == 0, (tmp_path / "controller.log").read_text()
        ctx.__exit__(None, None, None)

    (meta_path,) = list(out.rglob("call.json"))
    meta = json.loads(meta_path.read_text())
    assert meta["status"] == "answered" and meta["end_reason"] == "bye"
    assert meta["from"].endswith(f"@{PHONE_A_IP}:5061") or PHONE_A_IP in meta["from"]
    assert PHONE_B_IP in meta["to"]
    assert meta["sensors"] == ["branch-1"]
    caller = [s for s in meta["streams"] if s["direction"] == "caller" and s["used_for_audio"]]
    assert caller and caller[0]["codec"] == "PCMA" and caller[0]["lost"] == 0
    with wave.open(str(meta_path.with_name("audio.wav"))) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, 8000)
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    for channel in (0, 1):                                # caller sent it, callee echoed it
        ch = pcm[:, channel]
        start = int(np.flatnonzero(ch)[0])                # A-law never decodes to 0
        assert np.array_equal(ch[start:start + len(expected)], expected), f"channel {channel}"
    # the call's pcap holds the call: tshark finds the INVITE and the RTP in it
    tshark = require_tool("tshark")
    sip = subprocess.run([tshark, "-r", str(meta_path.with_name("call.pcap")), "-Y", "sip.Method == \"INVITE\"",
                          "-T", "fields", "-e", "frame.number"], capture_output=True, text=True, check=True)
    assert sip.stdout.split()

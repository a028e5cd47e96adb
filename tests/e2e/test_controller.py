"""`spanrec controller` + `spanrec sensor --pcap` as separate processes: the replay
ends, its calls are written without stopping the controller, and the admin API
shows the sensor's counters."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc

from proto import admin_pb2, admin_pb2_grpc
from tests.conftest import capture
from tests.e2e.test_record import tshark_count, tshark_invite_call_ids
from tests.s3server import free_ports


def test_replay_into_a_running_controller(tmp_path: Path) -> None:
    src = capture("SIP-RTP-Normal_Call_two_parties.pcap")
    (port,) = free_ports(1)
    out = tmp_path / "rec"
    log = open(tmp_path / "controller.log", "wb")
    controller = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "controller", "--listen", f"127.0.0.1:{port}",
         "--storage", str(out), "--state-dir", str(tmp_path / "state"), "--insecure"], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=20)
        sensor = subprocess.run(
            [sys.executable, "-m", "cli.main", "sensor", "--pcap", str(src), "--controller",
             f"127.0.0.1:{port}", "--sensor-id", "branch-7", "--site", "lab",
             "--spool-dir", str(tmp_path / "spool"), "--insecure"],
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert sensor.returncode == 0, sensor.stderr
        expected = tshark_invite_call_ids(src)
        deadline = time.monotonic() + 30
        def recorded() -> set[str]:   # B2BUA legs share one recording: count Call-IDs
            return {cid for p in out.rglob("call.json") for cid in json.loads(p.read_text())["call_ids"]}
        while recorded() != set(expected):
            assert time.monotonic() < deadline, (tmp_path / "controller.log").read_text()
            time.sleep(0.2)
        assert controller.poll() is None                      # still running
        admin = admin_pb2_grpc.AdminStub(channel)
        status = admin.GetStatus(admin_pb2.StatusRequest(), timeout=10)
        (s,) = [s for s in status.sensors if s.sensor_id == "branch-7"]
        assert s.site == "lab"
        total = tshark_count(src, "frame")
        voip = tshark_count(src, "(sip or rtp or rtcp) and not icmp")  # not RTCP quoted in ICMP errors
        assert s.counters.captured == total                  # every frame of the file was seen
        assert voip <= s.counters.forwarded < total          # VoIP forwarded, the rest filtered
        assert s.counters.forwarded + s.counters.filtered + s.counters.decode_errors == total
        calls = admin.ListCalls(admin_pb2.ListCallsRequest(), timeout=10)
        assert sorted(cid for c in calls.calls for cid in c.call_ids) == sorted(expected)
        assert all(c.location.startswith("file://") for c in calls.calls)
        channel.close()
    finally:
        controller.send_signal(signal.SIGTERM)
        rc = controller.wait(20)
    assert rc == 0
    assert b"Traceback" not in (tmp_path / "controller.log").read_bytes()

"""A cluster on real processes: etcd, a controller and a sensor that finds the
controller through etcd. Registration shows in `spanrecctl fleet`, disappears
within 10 s of a kill -9, and recording goes on while etcd is down."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.test_record import tshark_invite_call_ids
from tests.etcdserver import EtcdServer, find_etcd
from tests.s3server import free_ports

SPANREC = [sys.executable, "-m", "cli.main"]
CTL = [sys.executable, "-m", "cli.ctl"]


@pytest.fixture
def etcd():
    binary = find_etcd()
    if binary is None:
        pytest.skip("no etcd binary (apt etcd-server)")
    server = EtcdServer(binary)
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def capture_file(tmp_path: Path) -> Path:
    """3 overlapping calls of 4 s, made by the project's generator."""
    from scripts.gencalls import write
    path = tmp_path / "calls.pcap"
    write(path, calls=3, duration=4.0, concurrent=3, seed=7)
    return path


def fleet(port: int) -> dict:
    """`spanrecctl fleet -o json`; an empty view while the controller is not up yet."""
    proc = subprocess.run([*CTL, "fleet", "--controller", f"127.0.0.1:{port}", "--insecure",
                           "-o", "json"], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        assert "unreachable" in proc.stderr, proc.stderr
        return {"registry_state": "", "members": [], "sensors": []}
    return json.loads(proc.stdout)


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


def start_controller(tmp_path: Path, port: int, etcd: EtcdServer) -> subprocess.Popen:
    return subprocess.Popen(
        [*SPANREC, "controller", "--listen", f"127.0.0.1:{port}", "--storage", str(tmp_path / "rec"),
         "--state-dir", str(tmp_path / "state"), "--insecure", "--etcd", etcd.endpoint,
         "--controller-id", "ctl-1", "--site", "hq", "--log-format", "text"],
        stdin=subprocess.DEVNULL, stdout=open(tmp_path / "controller.log", "ab"),
        stderr=subprocess.STDOUT)


def start_sensor(tmp_path: Path, pcap: Path, etcd: EtcdServer, realtime: bool = True) -> subprocess.Popen:
    # no --controller: the sensor looks the controller up in etcd
    return subprocess.Popen(
        [*SPANREC, "sensor", "--pcap", str(pcap), *(["--realtime"] if realtime else []),
         "--etcd", etcd.endpoint, "--sensor-id", "branch-1", "--site", "lab", "--insecure",
         "--spool-dir", str(tmp_path / "spool"), "--connect-timeout", "60", "--log-format", "text"],
        stdin=subprocess.DEVNULL, stdout=open(tmp_path / "sensor.log", "ab"), stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(5)
    return proc.returncode


def test_registration_appears_and_goes_within_10s_of_kill_9(tmp_path: Path, etcd, capture_file) -> None:
    (port,) = free_ports(1)
    controller = start_controller(tmp_path, port, etcd)
    sensor = None
    try:
        wait_for(lambda: fleet(port)["registry_state"] == "ok", 20, "controller registered")
        sensor = start_sensor(tmp_path, capture_file, etcd)

        def both() -> dict | None:
            f = fleet(port)
            roles = {(m["role"], m["id"]) for m in f["members"]}
            rows = {s["sensor_id"]: s for s in f["sensors"]}
            ok = {("controller", "ctl-1"), ("sensor", "branch-1")} <= roles and \
                rows.get("branch-1", {}).get("registered") and rows["branch-1"]["link"] == "connected"
            return f if ok else None

        f = wait_for(both, 30, "controller and sensor in the fleet")
        (ctl,) = [m for m in f["members"] if m["role"] == "controller"]
        assert ctl["address"] == f"127.0.0.1:{port}" and ctl["site"] == "hq"
        # the table view shows both too
        table = subprocess.run([*CTL, "fleet", "--controller", f"127.0.0.1:{port}", "--insecure"],
                               capture_output=True, text=True, timeout=30).stdout
        assert "branch-1" in table and "ctl-1" in table
        # spanrecctl can find the controller through etcd as well
        via_etcd = subprocess.run([*CTL, "fleet", "--etcd", etcd.endpoint, "--insecure", "-o", "json"],
                                  capture_output=True, text=True, timeout=30)
        assert via_etcd.returncode == 0, via_etcd.stderr
        assert json.loads(via_etcd.stdout)["controller_id"] == "ctl-1"
        sensor.kill()                                        # kill -9
        killed = time.monotonic()
        sensor.wait(5)
        wait_for(lambda: ("sensor", "branch-1") not in {(m["role"], m["id"]) for m in fleet(port)["members"]},
                 10, "the killed sensor to leave the registry")
        assert time.monotonic() - killed < 10
    finally:
        if sensor is not None and sensor.poll() is None:
            sensor.kill()
        assert stop(controller) == 0, (tmp_path / "controller.log").read_text()[-3000:]


def test_recording_goes_on_while_etcd_is_down(tmp_path: Path, etcd, capture_file) -> None:
    (port,) = free_ports(1)
    controller = start_controller(tmp_path, port, etcd)
    try:
        wait_for(lambda: fleet(port)["registry_state"] == "ok", 20, "controller registered")
        sensor = start_sensor(tmp_path, capture_file, etcd)
        wait_for(lambda: any(s["sensor_id"] == "branch-1" and s["link"] == "connected"
                             for s in fleet(port)["sensors"]), 30, "sensor connected")
        etcd.stop()                                          # etcd goes away mid-replay
        wait_for(lambda: fleet(port)["registry_state"] == "degraded", 15, "registry degraded")
        assert sensor.wait(60) == 0, (tmp_path / "sensor.log").read_text()[-3000:]
        expected = tshark_invite_call_ids(capture_file)
        wait_for(lambda: len(list((tmp_path / "rec").rglob("call.json"))) == len(expected), 30,
                 "every call recorded while etcd is down")
        etcd.start()                                         # etcd is back
        f = wait_for(lambda: (lambda f: f if f["registry_state"] == "ok" and any(
            m["id"] == "ctl-1" for m in f["members"]) else None)(fleet(port)), 20, "registry recovered")
        assert f["registry_state"] == "ok"
        calls = [json.loads(p.read_text()) for p in (tmp_path / "rec").rglob("call.json")]
        assert sorted(c["call_ids"][0] for c in calls) == sorted(expected)
        assert all(c["status"] == "answered" and c["end_reason"] == "bye" for c in calls)
    finally:
        assert stop(controller) == 0, (tmp_path / "controller.log").read_text()[-3000:]

"""Runtime config in etcd: changing the sensor's capture filter at
/spanrec/config/sensor takes effect on a running live sensor, no restart."""
from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.test_cluster import etcd, fleet, start_controller, stop, wait_for  # noqa: F401
from tests.s3server import free_ports


def etcd_put(endpoint: str, key: str, value: str) -> None:
    """Through etcd's own JSON gateway (independent of spanrec's client)."""
    body = json.dumps({"key": base64.b64encode(key.encode()).decode(),
                       "value": base64.b64encode(value.encode()).decode()}).encode()
    req = urllib.request.Request(f"http://{endpoint}/v3/kv/put", data=body,
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=5).read()


def blast(port: int, n: int = 30) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(n):
            s.sendto(b"x" * 100, ("127.0.0.1", port))
            time.sleep(0.002)


def captured(port: int) -> int:
    rows = [s for s in fleet(port)["sensors"] if s["sensor_id"] == "lo-1"]
    return rows[0]["captured"] if rows else -1


@pytest.mark.live
def test_capture_filter_changes_at_run_time(tmp_path: Path, etcd) -> None:  # noqa: F811
    if os.geteuid() != 0:
        pytest.skip("live capture needs root")
    a, b = free_ports(2)          # two UDP ports nobody listens on
    (port,) = free_ports(1)
    controller = start_controller(tmp_path, port, etcd)
    sensor = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "sensor", "--interface", "lo", "--etcd", etcd.endpoint,
         "--sensor-id", "lo-1", "--bpf", f"udp port {a}", "--insecure", "--spool-dir",
         str(tmp_path / "spool"), "--log-format", "text"],
        stdin=subprocess.DEVNULL, stdout=open(tmp_path / "sensor.log", "wb"), stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: captured(port) >= 0, 30, "sensor connected")
        time.sleep(1.0)
        blast(b)                                     # not matched by the starting filter
        time.sleep(2.5)                              # > one heartbeat
        assert captured(port) == 0
        etcd_put(etcd.endpoint, "/spanrec/config/sensor", json.dumps({"bpf": f"udp port {b}"}))
        time.sleep(1.5)
        blast(b)
        wait_for(lambda: captured(port) >= 30, 15, "packets under the new filter")
        assert "capture filter changed" in (tmp_path / "sensor.log").read_text()
        # a filter libpcap refuses keeps the old one and says so
        etcd_put(etcd.endpoint, "/spanrec/config/sensor", json.dumps({"bpf": "udp port"}))
        wait_for(lambda: "new capture filter refused" in (tmp_path / "sensor.log").read_text(), 15,
                 "the refusal logged")
        before = captured(port)
        blast(b)
        wait_for(lambda: captured(port) >= before + 30, 15, "still capturing with the old filter")
        assert sensor.poll() is None
    finally:
        stop(sensor)
        stop(controller)

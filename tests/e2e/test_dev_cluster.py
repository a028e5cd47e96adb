"""scripts/dev-cluster starts etcd, S3, a controller and sensors, and stops them all."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.etcdserver import find_etcd
from tests.s3server import find_weed

REPO = Path(__file__).resolve().parents[2]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_dev_cluster_runs_and_stops_cleanly(tmp_path: Path) -> None:
    if find_etcd() is None or find_weed() is None:
        pytest.skip("needs etcd and weed")
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, str(REPO / "scripts" / "dev-cluster"), "--sensors", "2",
                             "--dir", str(tmp_path / "dev"), "--ready-file", str(ready)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        port = int(ready.read_text().split()[0])
        pki = tmp_path / "dev" / "pki"
        env = {**os.environ, "SPANREC_TLS_CERT": str(pki / "ops.crt"),
               "SPANREC_TLS_KEY": str(pki / "ops.key"), "SPANREC_TLS_CA": str(pki / "ca.crt")}
        deadline = time.monotonic() + 60
        while True:
            out = subprocess.run([sys.executable, "-m", "cli.ctl", "fleet", "--controller",
                                  f"127.0.0.1:{port}", "-o", "json"], capture_output=True,
                                 text=True, env=env, timeout=30)
            if out.returncode == 0:
                f = json.loads(out.stdout)
                connected = {s["sensor_id"] for s in f["sensors"]
                             if s["link"] == "connected" and s["registered"]}
                if connected == {"sensor-1", "sensor-2"} and f["registry_state"] == "ok":
                    break
            assert time.monotonic() < deadline, out.stdout + out.stderr
            time.sleep(0.5)
        # certificates are real: without one the controller refuses
        plain = subprocess.run([sys.executable, "-m", "cli.ctl", "fleet", "--controller",
                                f"127.0.0.1:{port}", "--insecure"], capture_output=True, text=True,
                               timeout=30)
        assert plain.returncode != 0
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "dev-cluster: stopped" in out
    assert not _port_open(port)
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path / "dev")], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", leftovers.stdout

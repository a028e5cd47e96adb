"""A fake controller registered in etcd (issue #11): the sensor must refuse it, say so, and
record through the real one.

Real processes: etcd, `spanrec controller` (mTLS, --etcd), `spanrec sensor --pcap --etcd`.
The fake is a TLS gRPC server whose certificate comes from another CA, registered under
/spanrec/members/controller/ with a later start time than the real controller, so the
registry's choice ("the most recently started") names it first.
"""
from __future__ import annotations

import json
import signal
import subprocess
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from tests.e2e.test_cluster import SPANREC, capture_file, fleet, wait_for  # noqa: F401 - fixture
from tests.etcdserver import EtcdServer, Pki, find_etcd
from tests.registry.conftest import put
from tests.s3server import free_ports
from tests.transport.procs import identity, make_certs


@pytest.fixture
def etcd():
    binary = find_etcd()
    if binary is None:
        pytest.skip("no etcd binary")
    server = EtcdServer(binary)
    try:
        server.start()
        yield server
    finally:
        server.close()


def test_sensor_refuses_a_fake_controller(tmp_path: Path, etcd: EtcdServer, capture_file: Path) -> None:  # noqa: F811
    pki = tmp_path / "pki"
    make_certs(pki, "ca")
    make_certs(pki, "server", "controller", "--san", "127.0.0.1")
    make_certs(pki, "client", "s1", "--role", "sensor")
    port, fake_port = free_ports(2)
    rec = tmp_path / "rec"

    # the fake: TLS with a certificate of another CA, registered as newer than the real one
    rogue = Pki(tmp_path / "rogue", "rogue-ca")
    crt, key = rogue.server("controller", ["127.0.0.1"])
    fake = grpc.server(futures.ThreadPoolExecutor(2))
    fake.add_secure_port(f"127.0.0.1:{fake_port}",
                         grpc.ssl_server_credentials([(key.read_bytes(), crt.read_bytes())]))
    fake.start()
    log = open(tmp_path / "controller.log", "w")  # noqa: SIM115
    ctl = subprocess.Popen(
        [*SPANREC, "controller", "--listen", f"127.0.0.1:{port}", "--storage", str(rec),
         "--state-dir", str(tmp_path / "state"), "--etcd", etcd.endpoint, "--controller-id", "real",
         "--advertise", f"127.0.0.1:{port}", "--log-format", "text",
         *identity(pki, "controller").flags()],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: (tmp_path / "controller.log").read_text().count("registry: connected") > 0, 30,
                 "controller registered")
        put(etcd.endpoint, "/spanrec/members/controller/zz-fake", json.dumps({
            "id": "zz-fake", "role": "controller", "address": f"127.0.0.1:{fake_port}",
            "started_at": "2030-01-01T00:00:00Z"}))
        t0 = time.monotonic()
        proc = subprocess.run(
            [*SPANREC, "sensor", "--pcap", str(capture_file), "--etcd", etcd.endpoint,
             "--sensor-id", "s1", "--spool-dir", str(tmp_path / "spool"), "--log-format", "text",
             "--connect-timeout", "60", *identity(pki, "s1").flags()],
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        elapsed = time.monotonic() - t0
        print(f"TIMING sensor replay with a fake controller registered {elapsed:.2f}s")
        assert proc.returncode == 0, proc.stderr[-3000:]
        # it tried the fake first (newest), refused it for its certificate, and said so
        assert f"127.0.0.1:{fake_port} refused or unreachable" in proc.stderr, proc.stderr[-3000:]
        assert "CERTIFICATE_VERIFY_FAILED" in proc.stderr or "certificate" in proc.stderr.lower()
        # then recorded through the real controller
        wait_for(lambda: len(list(rec.rglob("call.json"))) == 3, 30, "3 recordings")
    finally:
        fake.stop(0)
        ctl.send_signal(signal.SIGTERM)
        try:
            ctl.wait(20)
        except subprocess.TimeoutExpired:
            ctl.kill()
            ctl.wait(5)
        log.close()

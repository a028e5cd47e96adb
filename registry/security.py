"""How a process talks to etcd: TLS with a client certificate, credentials, or plain text.

etcd holds what the fleet trusts: where the controller is and the recording
rules.  So the registry speaks TLS to etcd (``--etcd-ca`` verifies etcd's
certificate, ``--etcd-cert``/``--etcd-key`` is this process's client
certificate for etcd's ``--client-cert-auth``), and a user/password (from
``SPANREC_ETCD_USER`` and ``SPANREC_ETCD_PASSWORD`` or ``..._PASSWORD_FILE``,
never a flag) is sent only over TLS.  Plain text is allowed to a loopback etcd
(a lab on one machine) or with the explicit ``--etcd-insecure``, which is
warned about; a password over plain text is refused either way.
"""
from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("spanrec.registry")

INSECURE_WARNING = ("etcd: plain text (--etcd-insecure): the registry and the recording rules can "
                    "be read and changed by anyone on the path; use --etcd-ca/--etcd-cert/--etcd-key")


class EtcdSecurityError(ValueError):
    """Bad or unsafe etcd connection settings; the message is one line naming the flag."""


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def split_hostport(endpoint: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``; a ``scheme://`` is dropped) → (host, port)."""
    text = endpoint.split("://", 1)[-1].rstrip("/")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise EtcdSecurityError(f"--etcd: expected HOST:PORT, got {endpoint!r}")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class EtcdSecurity:
    """Checked etcd connection settings.  ``password`` never shows in ``repr``."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    insecure: bool = False
    server_name: str | None = None  # name to verify in etcd's certificate (default: the endpoint's host)
    _pem: tuple[bytes, bytes | None, bytes | None] | None = field(default=None, repr=False, compare=False)

    @property
    def tls(self) -> bool:
        return self.ca is not None

    @classmethod
    def from_options(cls, endpoints: Sequence[str], *, ca: Any = None, cert: Any = None, key: Any = None,
                     insecure: bool | None = None, server_name: str | None = None,
                     user: str | None = None, password: str | None = None,
                     environ: Mapping[str, str] | None = None) -> EtcdSecurity:
        """Flags (arguments) over the environment (``SPANREC_ETCD_CA``, ``_CERT``, ``_KEY``,
        ``_INSECURE``, ``_SERVER_NAME``, ``_USER``, ``_PASSWORD``, ``_PASSWORD_FILE``), then
        ``check(endpoints)``.  Raises ``EtcdSecurityError`` (one line)."""
        env = os.environ if environ is None else environ
        ca = ca or env.get("SPANREC_ETCD_CA") or None
        cert = cert or env.get("SPANREC_ETCD_CERT") or None
        key = key or env.get("SPANREC_ETCD_KEY") or None
        if insecure is None:
            insecure = _truthy(env.get("SPANREC_ETCD_INSECURE"))
        server_name = server_name or env.get("SPANREC_ETCD_SERVER_NAME") or None
        user = user or env.get("SPANREC_ETCD_USER") or None
        if password is None:
            password = env.get("SPANREC_ETCD_PASSWORD") or None
            path = env.get("SPANREC_ETCD_PASSWORD_FILE")
            if password is None and path:
                try:
                    password = Path(path).read_text(encoding="utf-8").strip() or None
                except OSError as exc:
                    raise EtcdSecurityError(f"SPANREC_ETCD_PASSWORD_FILE {path}: cannot read: "
                                            f"{exc.strerror or exc}") from None
        sec = cls(Path(ca) if ca else None, Path(cert) if cert else None, Path(key) if key else None,
                  user, password, bool(insecure), server_name)
        return sec.check(endpoints)

    def check(self, endpoints: Sequence[str]) -> EtcdSecurity:
        """The rules; returns a copy holding the PEM bytes read once (files checked now,
        not at the first handshake)."""
        hosts = [split_hostport(e)[0] for e in endpoints]
        if (self.cert is None) != (self.key is None):
            raise EtcdSecurityError("--etcd-cert and --etcd-key go together")
        if self.cert is not None and self.ca is None:
            raise EtcdSecurityError("--etcd-cert needs --etcd-ca (the CA that signs etcd's certificate)")
        if self.ca is not None:
            if self.insecure:
                raise EtcdSecurityError("--etcd-insecure and --etcd-ca exclude each other")
            return _with_pem(self)
        if self.password is not None or self.user is not None:
            raise EtcdSecurityError("refusing to send the etcd user and password in plain text: "
                                    "give --etcd-ca (and --etcd-cert/--etcd-key) for TLS")
        remote = [h for h in hosts if not is_loopback(h)]
        if remote and not self.insecure:
            raise EtcdSecurityError(f"etcd {','.join(remote)} is not on this host: give --etcd-ca "
                                    "(and --etcd-cert/--etcd-key) for TLS, or --etcd-insecure to "
                                    "accept plain text")
        return self

    def warn(self) -> None:
        """Log the one warning plain text deserves (call once at start-up)."""
        if self.insecure:
            log.warning(INSECURE_WARNING)

    def channel_args(self) -> dict[str, bytes | None]:
        """``Etcd3Client`` keyword arguments (``ca_cert``, ``cert_chain``, ``cert_key``)."""
        if self._pem is None:
            return {}
        ca, chain, key = self._pem
        return {"ca_cert": ca, "cert_chain": chain, "cert_key": key}


def _read_pem(path: Path, flag: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise EtcdSecurityError(f"{flag} {path}: cannot read: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise EtcdSecurityError(f"{flag} {path}: not a PEM file")
    return data


def _with_pem(sec: EtcdSecurity) -> EtcdSecurity:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    assert sec.ca is not None
    ca = _read_pem(sec.ca, "--etcd-ca")
    try:
        x509.load_pem_x509_certificates(ca)
    except ValueError:
        raise EtcdSecurityError(f"--etcd-ca {sec.ca}: no PEM certificate in it") from None
    chain = key = None
    if sec.cert is not None and sec.key is not None:
        chain, key = _read_pem(sec.cert, "--etcd-cert"), _read_pem(sec.key, "--etcd-key")
        try:
            cert = x509.load_pem_x509_certificates(chain)[0]
        except ValueError:
            raise EtcdSecurityError(f"--etcd-cert {sec.cert}: no PEM certificate in it") from None
        try:
            private = serialization.load_pem_private_key(key, password=None)
        except TypeError:
            raise EtcdSecurityError(f"--etcd-key {sec.key}: the key is encrypted; give an "
                                    "unencrypted key readable by this user only") from None
        except ValueError:
            raise EtcdSecurityError(f"--etcd-key {sec.key}: not a PEM private key") from None
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        der = serialization.Encoding.DER
        if private.public_key().public_bytes(der, spki) != cert.public_key().public_bytes(der, spki):
            raise EtcdSecurityError(f"--etcd-key {sec.key} is not the private key of --etcd-cert {sec.cert}")
    return EtcdSecurity(sec.ca, sec.cert, sec.key, sec.user, sec.password, False, sec.server_name,
                        (ca, chain, key))

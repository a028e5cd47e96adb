"""mTLS material for gRPC: PEM files -> server and channel credentials.

Every peer proves itself with a certificate signed by the cluster CA: the
controller requires a client certificate (`require_client_auth=True`);
sensors and spanrecctl check the controller's certificate against the same
CA. Files are checked when loaded (readable, PEM, key matches certificate,
certificate signed by the CA, within its validity) so a mistake is one line
naming the file, not a handshake failure later.

Plain-text gRPC exists only behind an explicit `--insecure`
(`Security.from_settings`); `spanrec record` uses it on loopback.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

INSECURE_WARNING = ("plain-text gRPC (--insecure): peers are not authenticated and traffic "
                    "is not encrypted; use --tls-cert/--tls-key/--tls-ca outside a lab")


class TlsError(Exception):
    """Missing, unreadable or mismatched TLS files, or no security chosen; one line."""


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True)
class TlsMaterial:
    """Checked PEM bytes, ready for gRPC."""
    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes
    common_name: str
    not_after: datetime


def _read(path: Path, flag: str) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TlsError(f"{flag} {path}: file not found") from None
    except IsADirectoryError:
        raise TlsError(f"{flag} {path}: is a directory, expected a PEM file") from None
    except OSError as exc:
        raise TlsError(f"{flag} {path}: cannot read: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise TlsError(f"{flag} {path}: not a PEM file")
    return data


def _certs(data: bytes, path: Path, flag: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TlsError(f"{flag} {path}: no PEM certificate in it") from None
    if not certs:
        raise TlsError(f"{flag} {path}: no PEM certificate in it")
    return certs


def _common_name(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = attrs[0].value if attrs else ""
    return value.decode() if isinstance(value, bytes) else str(value)


def load(files: TlsFiles) -> TlsMaterial:
    """Reads and checks the three files; raises TlsError naming the bad one."""
    ca_pem = _read(files.ca, "--tls-ca")
    cert_pem = _read(files.cert, "--tls-cert")
    key_pem = _read(files.key, "--tls-key")
    cas = _certs(ca_pem, files.ca, "--tls-ca")
    chain = _certs(cert_pem, files.cert, "--tls-cert")
    cert = chain[0]
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise TlsError(f"--tls-key {files.key}: the key is encrypted; give an unencrypted "
                       "key (keep it readable by this user only)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise TlsError(f"--tls-key {files.key}: not a PEM private key") from None
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, pub) != \
            cert.public_key().public_bytes(serialization.Encoding.DER, pub):
        raise TlsError(f"--tls-key {files.key} is not the private key of --tls-cert {files.cert}")
    if not any(_is_ca(c) for c in cas):
        raise TlsError(f"--tls-ca {files.ca}: not a CA certificate")
    if len(chain) == 1 and not any(_issued_by(cert, ca) for ca in cas):
        raise TlsError(f"--tls-cert {files.cert} is not signed by the CA in --tls-ca {files.ca} "
                       f"(issuer {cert.issuer.rfc4514_string()})")
    now = datetime.now(timezone.utc)
    if now > cert.not_valid_after_utc:
        raise TlsError(f"--tls-cert {files.cert} expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    if now < cert.not_valid_before_utc:
        raise TlsError(f"--tls-cert {files.cert} is not valid before "
                       f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    return TlsMaterial(cert_pem, key_pem, ca_pem, _common_name(cert), cert.not_valid_after_utc)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


@dataclass(frozen=True)
class Security:
    """How this process speaks gRPC: mTLS with `tls`, or plain text when `tls` is None."""
    tls: TlsMaterial | None

    @property
    def insecure(self) -> bool:
        return self.tls is None

    @classmethod
    def from_options(cls, cert: Any, key: Any, ca: Any, insecure: bool) -> Security:
        """mTLS when the three files are given, plain text only with `insecure`;
        anything else (nothing, some files, files and --insecure) is a TlsError."""
        given = {"--tls-cert": cert, "--tls-key": key, "--tls-ca": ca}
        if any(given.values()):
            if insecure:
                raise TlsError("--insecure and --tls-cert/--tls-key/--tls-ca exclude each other")
            missing = [flag for flag, v in given.items() if not v]
            if missing:
                raise TlsError(f"mTLS needs --tls-cert, --tls-key and --tls-ca together; "
                               f"missing {', '.join(missing)}")
            return cls(load(TlsFiles(Path(cert), Path(key), Path(ca))))
        if insecure:
            return cls(None)
        raise TlsError("no TLS files: give --tls-cert, --tls-key and --tls-ca (mTLS), "
                       "or --insecure for plain-text gRPC")

    @classmethod
    def from_settings(cls, settings: Any) -> Security:
        """From anything with tls_cert, tls_key, tls_ca and insecure attributes."""
        return cls.from_options(settings.tls_cert, settings.tls_key, settings.tls_ca,
                                bool(settings.insecure))

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """None means plain text. Clients must present a certificate from the CA."""
        if self.tls is None:
            return None
        return grpc.ssl_server_credentials([(self.tls.key_pem, self.tls.cert_pem)],
                                           root_certificates=self.tls.ca_pem,
                                           require_client_auth=True)

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """None means plain text."""
        if self.tls is None:
            return None
        return grpc.ssl_channel_credentials(root_certificates=self.tls.ca_pem,
                                            private_key=self.tls.key_pem,
                                            certificate_chain=self.tls.cert_pem)


def peer_common_name(context: Any) -> str | None:
    """CN of the client certificate of a grpc(.aio) call, or None in plain text."""
    auth = context.auth_context() or {}
    if auth.get("transport_security_type") != [b"ssl"]:
        return None
    names = auth.get("x509_common_name") or []
    return names[0].decode("utf-8", "replace") if names else ""

"""Roles and sites carried by client certificates (least privilege).

`scripts/make-certs client NAME --role R [--site S]` puts two SAN URIs in the
certificate: `spanrec:role:R` and, for sensors, `spanrec:site:S`. The
controller reads them back from the peer's certificate (gRPC auth context
`x509_pem_cert`) with `cryptography`; nothing here knows gRPC beyond that.

Roles: `sensor` streams packets (SensorLink) and nothing else; `operator`
uses the whole Admin API (status, calls, recording files); `auditor` reads
status and call metadata but no recording files (no audio, no pcap).

An operator certificate may be limited to number patterns like a supervisor
of the web player (`--numbers '+4930*'`, SAN URIs `spanrec:numbers:PATTERN`,
percent-encoded): it then sees, searches and downloads only calls where either
party matches one (controller/api/indexadmin.py).

A certificate issued before roles existed carries no role URI: it is treated
as a `sensor` (`legacy=True`), the least privilege that keeps an upgraded
fleet recording. Such a certificate can no longer read recordings: operators
re-issue theirs with `--role operator`.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import unquote

from cryptography import x509
from cryptography.x509.oid import NameOID

ROLES = ("sensor", "operator", "auditor")
ROLE_URI = "spanrec:role:"
SITE_URI = "spanrec:site:"
NUMBERS_URI = "spanrec:numbers:"
LEGACY_ROLE = "sensor"


@dataclass(frozen=True)
class PeerIdentity:
    """Who is on the other end of an mTLS connection."""
    name: str            # certificate CN
    role: str            # one of ROLES, or "" when the certificate's role is invalid
    site: str = ""       # sensors: the site it may speak for ("" = not bound)
    legacy: bool = False  # no role in the certificate (made before roles existed)
    problem: str = ""    # why role is "" (two roles, unknown role)
    numbers: tuple[str, ...] | None = None   # number patterns it is limited to (None: all)


def identity_of(cert: x509.Certificate) -> PeerIdentity:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = str(attrs[0].value) if attrs else ""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    roles = sorted({u[len(ROLE_URI):] for u in uris if u.startswith(ROLE_URI)})
    sites = sorted({u[len(SITE_URI):] for u in uris if u.startswith(SITE_URI)})
    if len(sites) > 1:
        return PeerIdentity(name, "", problem=f"several sites {sites}")
    site = sites[0] if sites else ""
    pats = tuple(sorted(unquote(u[len(NUMBERS_URI):]) for u in uris if u.startswith(NUMBERS_URI)))
    numbers = pats if pats else None
    if not roles:
        return PeerIdentity(name, LEGACY_ROLE, site, legacy=True)
    if len(roles) > 1:
        return PeerIdentity(name, "", site, problem=f"several roles {roles}")
    if roles[0] not in ROLES:
        return PeerIdentity(name, "", site, problem=f"unknown role {roles[0]!r}")
    return PeerIdentity(name, roles[0], site, numbers=numbers)


@lru_cache(maxsize=1024)
def identity_of_pem(pem: bytes) -> PeerIdentity:
    """Parsed once per distinct certificate."""
    try:
        return identity_of(x509.load_pem_x509_certificate(pem))
    except ValueError as exc:
        return PeerIdentity("", "", problem=f"unreadable certificate: {exc}")


def peer_identity(context: Any) -> PeerIdentity | None:
    """The client certificate's identity of a grpc(.aio) call; None in plain text."""
    auth = context.auth_context() or {}
    if auth.get("transport_security_type") != [b"ssl"]:
        return None
    pems = auth.get("x509_pem_cert") or []
    if not pems:
        return PeerIdentity("", "", problem="no client certificate")
    return identity_of_pem(bytes(pems[0]))

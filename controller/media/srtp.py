"""SDES-SRTP keys (RFC 4568) and the decryption of SRTP/SRTCP with them (libsrtp).

An ``a=crypto:<tag> <suite> inline:<base64 key||salt>[|<lifetime>][|<MKI>:<length>]``
line gives the key its author encrypts what it *sends* with.  `sdes_keys` turns
one such line into `SdesKey`s (one per ``inline:``), or says precisely why it
cannot (`KeyError_`: unsupported suite, malformed key).  `Decryptor` holds one
libsrtp session per key (pylibsrtp; no crypto here) and unprotects SRTP and
SRTCP packets with it; MKI bytes (RFC 3711 3.1: not authenticated) are checked
against the key's and removed before libsrtp sees the packet.

Pure with respect to the call: nothing here knows about streams or frames
(controller/media/encrypted.py decides which packets go through which keys).
"""
from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from pylibsrtp import Error as SrtpError
from pylibsrtp import Policy, Session

__all__ = ["SUITES", "SdesKey", "SdesKeyError", "sdes_keys", "Decryptor", "AUTH_FAILED",
           "OK", "REPLAY", "OTHER"]


@dataclass(frozen=True, slots=True)
class _Suite:
    profile: int
    key_len: int            # master key + master salt, bytes
    tag_len: int            # SRTP authentication tag
    rtcp_tag_len: int       # SRTCP authentication tag


#: SDES suite names (RFC 4568, RFC 7714) that libsrtp decrypts through pylibsrtp.
SUITES: dict[str, _Suite] = {
    "AES_CM_128_HMAC_SHA1_80": _Suite(Policy.SRTP_PROFILE_AES128_CM_SHA1_80, 30, 10, 10),
    "AES_CM_128_HMAC_SHA1_32": _Suite(Policy.SRTP_PROFILE_AES128_CM_SHA1_32, 30, 4, 10),
    "AEAD_AES_128_GCM": _Suite(Policy.SRTP_PROFILE_AEAD_AES_128_GCM, 28, 16, 16),
    "AEAD_AES_256_GCM": _Suite(Policy.SRTP_PROFILE_AEAD_AES_256_GCM, 44, 16, 16),
}
_REPLAY_WINDOW = 1024       # reordering tolerated by libsrtp's replay check (packets)
_MAX_PACKET = 1500          # pylibsrtp unprotects into a 1500-byte buffer


class SdesKeyError(ValueError):
    """An a=crypto line whose key cannot be used (the message says why)."""


@dataclass(frozen=True, slots=True)
class SdesKey:
    tag: int
    suite: str
    key: bytes              # master key || master salt
    mki: bytes = b""        # MKI value as sent in each packet (empty: no MKI)

    @property
    def tag_len(self) -> int:
        return SUITES[self.suite].tag_len


def sdes_keys(tag: int, suite: str, params: str) -> list[SdesKey]:
    """The keys of one a=crypto line (``params``: the key-params text, e.g.
    ``inline:BASE64|2^20|1:4``; several ``inline:`` joined by ';').  Raises
    SdesKeyError for a suite libsrtp cannot do here or a malformed key."""
    info = SUITES.get(suite.upper())
    if info is None:
        raise SdesKeyError(f"crypto suite {suite} is not supported")
    params, *session = params.split()
    for p in session:
        # RFC 4568 6.3: UNENCRYPTED_SRTP/SRTCP, UNAUTHENTICATED_SRTP, KDR, FEC_ORDER,
        # FEC_KEY change what the packets are; decrypting them with the default policy
        # would turn clear audio into noise that authenticates. WSH (a window hint) is harmless.
        if not p.upper().startswith("WSH="):
            raise SdesKeyError(f"session parameter {p[:40]} is not supported")
    out = []
    for part in params.split(";"):
        method, _, rest = part.partition(":")
        if method.lower() != "inline":
            raise SdesKeyError(f"key method {method or '?'} is not supported (only inline:)")
        fields = rest.split("|")
        try:
            key = base64.b64decode(fields[0] + "=" * (-len(fields[0]) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise SdesKeyError("key is not valid base64") from None
        if len(key) != info.key_len:
            raise SdesKeyError(f"{suite} needs a {info.key_len}-byte key and salt, got {len(key)}")
        mki = b""
        for f in fields[1:]:
            if ":" in f:                      # MKI:length (the lifetime has no ':')
                value, _, length = f.partition(":")
                if not (value.isdigit() and length.isdigit()) or not 1 <= int(length) <= 128 \
                        or int(value) >= 1 << (8 * int(length)):
                    raise SdesKeyError(f"MKI {f} is malformed")
                mki = int(value).to_bytes(int(length), "big")
        out.append(SdesKey(tag, suite.upper(), key, mki))
    if not out:
        raise SdesKeyError("no key")
    return out


OK = 0
AUTH_FAILED = 1
REPLAY = 2
OTHER = 3


def _error_code(e: SrtpError) -> int:
    text = str(e)
    if "authentication" in text or "cipher" in text:
        return AUTH_FAILED
    if "replay" in text or "too old" in text:
        return REPLAY
    return OTHER


class Decryptor:
    """One key's SRTP and SRTCP receive contexts (any SSRC; libsrtp keeps the
    rollover counter of each SSRC, so packets must come in arrival order).
    Use one Decryptor per stream and key: two copies of one stream (a relay on
    two legs) would otherwise look like replays."""

    __slots__ = ("key", "_rtp", "_rtcp", "_strip")

    def __init__(self, key: SdesKey) -> None:
        self.key = key
        self._rtp: Session | None = None
        self._rtcp: Session | None = None
        self._strip = len(key.mki)

    def _session(self) -> Session:
        info = SUITES[self.key.suite]
        policy = Policy(key=self.key.key, ssrc_type=Policy.SSRC_ANY_INBOUND,
                        srtp_profile=info.profile)
        policy.window_size = _REPLAY_WINDOW
        return Session(policy=policy)

    def _mki(self, packet: bytes, tag_len: int) -> bytes | None:
        """The packet without its MKI (None: another key's MKI, or too short)."""
        n = self._strip
        if not n:
            return packet
        if len(packet) < n + tag_len + 8 or packet[-tag_len - n:-tag_len] != self.key.mki:
            return None
        return packet[:-tag_len - n] + packet[-tag_len:]

    def rtp(self, packet: bytes) -> tuple[int, bytes]:
        """(OK, plaintext RTP packet) or (AUTH_FAILED | REPLAY | OTHER, b"")."""
        p = self._mki(packet, SUITES[self.key.suite].tag_len)
        if p is None or len(p) > _MAX_PACKET:
            return OTHER if p is not None else AUTH_FAILED, b""
        if self._rtp is None:
            self._rtp = self._session()
        try:
            return OK, self._rtp.unprotect(p)
        except SrtpError as e:
            return _error_code(e), b""

    def rtcp(self, packet: bytes) -> tuple[int, bytes]:
        """(OK, plaintext compound RTCP) or (error code, b"")."""
        p = self._mki(packet, SUITES[self.key.suite].rtcp_tag_len)
        if p is None or len(p) > _MAX_PACKET:
            return OTHER if p is not None else AUTH_FAILED, b""
        if self._rtcp is None:
            self._rtcp = self._session()
        try:
            return OK, self._rtcp.unprotect_rtcp(p)
        except SrtpError as e:
            return _error_code(e), b""

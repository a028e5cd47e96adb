"""SDP session descriptions (RFC 4566) as far as a call recorder needs them."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from protocols.errors import SdpError

__all__ = ["SessionDescription", "MediaDescription", "parse_sdp", "STATIC_PAYLOAD_TYPES",
           "DIRECTIONS"]

# RFC 3551 static payload types filled in when no a=rtpmap names them
STATIC_PAYLOAD_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("PCMU", 8000, 1),
    3: ("GSM", 8000, 1),
    4: ("G723", 8000, 1),
    8: ("PCMA", 8000, 1),
    9: ("G722", 8000, 1),
    13: ("CN", 8000, 1),
    18: ("G729", 8000, 1),
}
DIRECTIONS = frozenset(("sendrecv", "sendonly", "recvonly", "inactive"))

_LINE_SPLIT = re.compile(r"\r?\n")
#: a=crypto:<tag> <crypto-suite> <key-params> [<session-params>] (RFC 4568 9.1); the
#: key-params and session-params text is kept as one string (session params after a space)
_CRYPTO_RE = re.compile(r"(\d{1,10})\s+([A-Za-z0-9_]{1,64})\s+(\S{1,1024}(?:\s+\S{1,256}){0,8})")
_RTPMAP_RE = re.compile(r"(\d{1,3})\s+([^/\s]+)/(\d+)(?:/(\d+))?")


@dataclass(slots=True)
class MediaDescription:
    media: str
    port: int
    proto: str
    formats: list[int] = field(default_factory=list)
    connection: str | None = None
    rtpmap: dict[int, tuple[str, int, int]] = field(default_factory=dict)
    direction: str = "sendrecv"
    rtcp_port: int | None = None
    #: SDES keys (RFC 4568): (tag, crypto-suite, key-params text [+ " " session params])
    crypto: list[tuple[int, str, str]] = field(default_factory=list)
    #: DTLS-SRTP certificate fingerprint (RFC 8122 a=fingerprint, media or session level)
    fingerprint: str | None = None
    #: ZRTP announced in signalling (RFC 6189 a=zrtp-hash, media or session level)
    zrtp_hash: str | None = None

    @property
    def secure(self) -> bool:
        """Media encrypted by its transport profile (RTP/SAVP, RTP/SAVPF, UDP/TLS/RTP/SAVP...)."""
        return "SAVP" in self.proto.upper()


@dataclass(slots=True)
class SessionDescription:
    origin: str | None = None  # the o= value text
    connection: str | None = None  # address of the session-level c=
    direction: str = "sendrecv"
    media: list[MediaDescription] = field(default_factory=list)
    fingerprint: str | None = None  # session-level a=fingerprint
    zrtp_hash: str | None = None    # session-level a=zrtp-hash


def _int(text: str) -> int | None:
    """int() of a run of digits, None where Python refuses it (more digits than
    sys.get_int_max_str_digits(), 4300 by default: ValueError)."""
    try:
        return int(text)
    except ValueError:
        return None


def _connection_address(value: str) -> str:
    parts = value.split()
    if len(parts) != 3 or parts[0] != "IN":
        raise SdpError(f"malformed c= line {value!r}")
    addr = parts[2].split("/", 1)[0]  # multicast TTL / count
    if not addr:
        raise SdpError(f"malformed c= line {value!r}")
    return addr


def _media(value: str) -> MediaDescription:
    parts = value.split()
    if len(parts) < 3:
        raise SdpError(f"malformed m= line {value!r}")
    port_text = parts[1].split("/", 1)[0]  # "49170/2" = port count
    port = _int(port_text) if port_text.isdigit() and port_text.isascii() else None
    if port is None or port > 65535:
        raise SdpError(f"malformed m= port in {value[:80]!r}")
    formats = [int(f) for f in parts[3:] if f.isdigit() and f.isascii() and len(f) <= 3]
    return MediaDescription(parts[0], port, parts[2], formats)


def parse_sdp(body: bytes | bytearray | memoryview) -> SessionDescription:
    """Parse an SDP body; SdpError if it is not SDP or an m=/c= line is malformed."""
    text = bytes(body).decode("utf-8", "replace")
    lines = [ln.strip() for ln in _LINE_SPLIT.split(text)]
    lines = [ln for ln in lines if ln]
    if not lines or not lines[0].startswith("v="):
        raise SdpError("not SDP: does not start with a v= line")
    sd = SessionDescription()
    directions: list[str | None] = []  # media-level direction per media, None = inherit
    cur: MediaDescription | None = None
    for line in lines[1:]:
        if len(line) < 2 or line[1] != "=":
            continue  # tolerate junk lines
        kind, value = line[0], line[2:].strip()
        if kind == "m":
            cur = _media(value)
            sd.media.append(cur)
            directions.append(None)
        elif kind == "c":
            addr = _connection_address(value)
            if cur is None:
                sd.connection = addr
            else:
                cur.connection = addr
        elif kind == "o":
            if cur is None:
                sd.origin = value
        elif kind == "a":
            name, _, arg = value.partition(":")
            if name in DIRECTIONS:
                if cur is None:
                    sd.direction = name
                else:
                    directions[-1] = name
            elif name in ("fingerprint", "zrtp-hash"):
                target = cur if cur is not None else sd
                setattr(target, name.replace("-", "_"), arg.strip()[:200])
            elif cur is None:
                continue
            elif name == "crypto":
                c = _CRYPTO_RE.match(arg.strip())
                if c is not None and len(cur.crypto) < 16:
                    tag = _int(c.group(1))
                    if tag is not None:
                        cur.crypto.append((tag, c.group(2).upper(), c.group(3)))
            elif name == "rtpmap":
                m = _RTPMAP_RE.match(arg.strip())
                if m is not None:
                    rate = _int(m.group(3))
                    channels = _int(m.group(4)) if m.group(4) else 1
                    if rate is not None and channels is not None:
                        cur.rtpmap[int(m.group(1))] = (m.group(2).upper(), rate, channels)
            elif name == "rtcp":
                port_text = arg.split(None, 1)[0] if arg.strip() else ""
                port = _int(port_text) if port_text.isdigit() and port_text.isascii() else None
                if port is not None and port <= 65535:
                    cur.rtcp_port = port
    for md, direction in zip(sd.media, directions):
        md.direction = direction or sd.direction
        if md.fingerprint is None:
            md.fingerprint = sd.fingerprint
        if md.zrtp_hash is None:
            md.zrtp_hash = sd.zrtp_hash
        if md.connection is None:
            md.connection = sd.connection
        for pt in md.formats:
            if pt not in md.rtpmap and pt in STATIC_PAYLOAD_TYPES:
                md.rtpmap[pt] = STATIC_PAYLOAD_TYPES[pt]
    return sd

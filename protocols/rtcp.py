"""RTCP compound packets (RFC 3550 section 6): sender and receiver reports, SDES, BYE.

`parse_rtcp` splits a compound packet into its parts and decodes the ones a
call recorder summarises (SR, RR, the SDES CNAME, BYE); APP, feedback
(RTPFB/PSFB) and XR parts are returned with their type and length only.
Malformed input raises `RtcpError` (a `DecodeError`), never anything else.
"""
from __future__ import annotations

import struct
from typing import NamedTuple

from protocols.errors import DecodeError

__all__ = ["RtcpError", "ReportBlock", "RtcpPacket", "parse_rtcp", "ntp_middle",
           "SR", "RR", "SDES", "BYE", "APP", "RTPFB", "PSFB", "XR"]

SR = 200
RR = 201
SDES = 202
BYE = 203
APP = 204
RTPFB = 205
PSFB = 206
XR = 207


class RtcpError(DecodeError):
    """Malformed RTCP packet."""


class ReportBlock(NamedTuple):
    """One reception report (what the reporter received from ``ssrc``)."""

    ssrc: int
    fraction_lost: int      # 0..255, lost fraction since the last report * 256
    cumulative_lost: int    # signed 24-bit
    highest_seq: int        # extended highest sequence number received
    jitter: int             # interarrival jitter, RTP timestamp units
    lsr: int                # middle 32 bits of the last SR's NTP time (0: none)
    dlsr: int               # delay since that SR, 1/65536 s


class RtcpPacket(NamedTuple):
    """One part of a compound RTCP packet.

    ``ssrc`` is the sender's SSRC (SR, RR, APP, feedback, XR), the first
    chunk's SSRC (SDES) or the first SSRC leaving (BYE); None if absent.
    ``ntp``, ``rtp_ts``, ``packets``, ``octets``: the sender info of an SR.
    """

    pt: int
    ssrc: int | None
    reports: tuple[ReportBlock, ...] = ()
    ntp: int | None = None          # 64-bit NTP timestamp (SR)
    rtp_ts: int | None = None
    packets: int | None = None
    octets: int | None = None
    cname: str | None = None        # SDES CNAME of the first chunk
    ssrcs: tuple[int, ...] = ()     # BYE: every SSRC leaving
    length: int = 0                 # bytes of this part, header included


_HEAD = struct.Struct("!BBH")
_U32 = struct.Struct("!I")
_SENDER = struct.Struct("!IIIIII")   # ssrc, ntp msw, ntp lsw, rtp ts, packets, octets
_BLOCK = struct.Struct("!IIIIII")    # ssrc, lost (fraction | cumulative), highest, jitter, lsr, dlsr
_MAX_PARTS = 64


def ntp_middle(ntp: int) -> int:
    """The middle 32 bits of a 64-bit NTP timestamp (what LSR echoes)."""
    return (ntp >> 16) & 0xFFFFFFFF


def _blocks(data: bytes | memoryview, off: int, end: int, count: int) -> tuple[ReportBlock, ...]:
    if off + count * 24 > end:
        raise RtcpError(f"{count} report blocks exceed the packet")
    out = []
    for _ in range(count):
        ssrc, lost, highest, jitter, lsr, dlsr = _BLOCK.unpack_from(data, off)
        cum = lost & 0xFFFFFF
        if cum & 0x800000:
            cum -= 0x1000000
        out.append(ReportBlock(ssrc, lost >> 24, cum, highest, jitter, lsr, dlsr))
        off += 24
    return tuple(out)


def _cname(data: bytes | memoryview, off: int, end: int) -> str | None:
    """CNAME item of the SDES chunk starting at ``off`` (after its SSRC)."""
    while off + 2 <= end:
        kind = data[off]
        if kind == 0:
            return None
        n = data[off + 1]
        if off + 2 + n > end:
            raise RtcpError("SDES item exceeds the packet")
        if kind == 1:
            return bytes(data[off + 2:off + 2 + n]).decode("utf-8", "replace")
        off += 2 + n
    return None


def _part(data: bytes | memoryview, off: int, end: int) -> RtcpPacket:
    b0, pt, _ = _HEAD.unpack_from(data, off)
    count = b0 & 0x1F
    length = end - off
    body = off + 4
    if pt == SR:
        if body + 24 > end:
            raise RtcpError("SR shorter than its sender info")
        ssrc, msw, lsw, rtp_ts, packets, octets = _SENDER.unpack_from(data, body)
        return RtcpPacket(SR, ssrc, _blocks(data, body + 24, end, count), (msw << 32) | lsw,
                          rtp_ts, packets, octets, length=length)
    if pt == RR:
        if body + 4 > end:
            raise RtcpError("RR without its SSRC")
        ssrc = _U32.unpack_from(data, body)[0]
        return RtcpPacket(RR, ssrc, _blocks(data, body + 4, end, count), length=length)
    if pt == SDES:
        if count == 0 or body + 4 > end:
            return RtcpPacket(SDES, None, length=length)
        ssrc = _U32.unpack_from(data, body)[0]
        return RtcpPacket(SDES, ssrc, cname=_cname(data, body + 4, end), length=length)
    if pt == BYE:
        if body + 4 * count > end:
            raise RtcpError(f"BYE with {count} SSRCs exceeds the packet")
        ssrcs = tuple(_U32.unpack_from(data, body + 4 * i)[0] for i in range(count))
        return RtcpPacket(BYE, ssrcs[0] if ssrcs else None, ssrcs=ssrcs, length=length)
    # APP, RTPFB, PSFB, XR (and unknown types 208..): sender SSRC only
    ssrc = _U32.unpack_from(data, body)[0] if body + 4 <= end else None
    return RtcpPacket(pt, ssrc, length=length)


def parse_rtcp(payload: bytes | bytearray | memoryview) -> list[RtcpPacket]:
    """Every part of a compound RTCP packet (a UDP payload); RtcpError if malformed.

    Checked: version 2, the first part's type 200..207 (RFC 5761: how RTCP is
    told from RTP), each part's length inside the datagram, padding only on
    the last part and not longer than it, report blocks inside their part.
    Up to 3 bytes after the last part are ignored, as Wireshark does (some
    phones send them).
    """
    data = payload if isinstance(payload, (bytes, memoryview)) else bytes(payload)
    n = len(data)
    if n < 4:
        raise RtcpError(f"RTCP packet of {n} bytes is shorter than its header")
    if data[0] >> 6 != 2:
        raise RtcpError(f"RTCP version {data[0] >> 6}")
    if not SR <= data[1] <= XR:
        raise RtcpError(f"RTCP packet type {data[1]} is not 200..207")
    parts: list[RtcpPacket] = []
    off = 0
    while off + 4 <= n:   # fewer than 4 trailing bytes (seen in the wild) are ignored
        if len(parts) >= _MAX_PARTS:
            raise RtcpError(f"more than {_MAX_PARTS} parts in one compound packet")
        b0, pt, words = _HEAD.unpack_from(data, off)
        if b0 >> 6 != 2:
            raise RtcpError(f"RTCP part at byte {off}: version {b0 >> 6}")
        end = off + 4 * (words + 1)
        if end > n:
            raise RtcpError(f"RTCP part at byte {off} ({end - off} bytes) exceeds the packet")
        if b0 & 0x20:                       # padding: only the last part may have it
            if end != n:
                raise RtcpError("RTCP padding on a part that is not the last")
            pad = data[end - 1]
            if pad == 0 or pad > end - off - 4:
                raise RtcpError(f"bad RTCP padding count {pad}")
            parts.append(_part(data, off, end - pad))
        else:
            parts.append(_part(data, off, end))
        off = end
    return parts

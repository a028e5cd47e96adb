"""RTP headers (RFC 3550), RTCP detection and RFC 4733 telephone events."""
from __future__ import annotations

import struct
from typing import NamedTuple

from protocols.errors import RtpError

__all__ = ["RtpHeader", "TelephoneEvent", "parse_rtp", "is_rtcp", "looks_like_rtp",
           "parse_telephone_event", "event_to_digit"]


class RtpHeader(NamedTuple):
    version: int
    padding: bool
    extension: bool
    marker: bool
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload_offset: int  # from the start of the RTP packet, after CSRCs and extension
    payload_len: int  # without padding


class TelephoneEvent(NamedTuple):
    event: int
    end: bool
    volume: int
    duration: int


_RTP = struct.Struct("!BBHII")
_U16 = struct.Struct("!H")
_EVENT = struct.Struct("!BBH")
_new = tuple.__new__
_DIGITS = "0123456789*#ABCD"


def parse_rtp(payload: bytes | bytearray | memoryview) -> RtpHeader:
    """Parse the RTP header; RtpError if not version 2, too short, or inconsistent."""
    n = len(payload)
    if n < 12:
        raise RtpError(f"RTP packet of {n} bytes is shorter than its header")
    b0, b1, seq, ts, ssrc = _RTP.unpack_from(payload, 0)
    if b0 >> 6 != 2:
        raise RtpError(f"RTP version {b0 >> 6}")
    off = 12 + (b0 & 0x0F) * 4
    if off > n:
        raise RtpError("RTP CSRC list exceeds the packet")
    ext = (b0 & 0x10) != 0
    if ext:
        if off + 4 > n:
            raise RtpError("RTP header extension exceeds the packet")
        off += 4 + _U16.unpack_from(payload, off + 2)[0] * 4
        if off > n:
            raise RtpError("RTP header extension exceeds the packet")
    pad = (b0 & 0x20) != 0
    plen = n - off
    if pad:
        count = payload[n - 1]
        if count == 0 or count > plen:
            raise RtpError(f"bad RTP padding count {count}")
        plen -= count
    return _new(RtpHeader, (2, pad, ext, (b1 & 0x80) != 0, b1 & 0x7F, seq, ts, ssrc, off, plen))


def is_rtcp(payload: bytes | bytearray | memoryview) -> bool:
    """Version 2 and packet type 200..207 (SR, RR, SDES, BYE, APP, RTPFB, PSFB, XR)."""
    return len(payload) >= 8 and payload[0] >> 6 == 2 and 200 <= payload[1] <= 207


def looks_like_rtp(payload: bytes | bytearray | memoryview) -> bool:
    """Plausible RTP: a valid version 2 header whose payload type is not in the RTCP range."""
    if len(payload) < 12 or payload[0] >> 6 != 2 or 72 <= (payload[1] & 0x7F) <= 79:
        return False
    try:
        parse_rtp(payload)
    except RtpError:
        return False
    return True


def parse_telephone_event(payload: bytes | bytearray | memoryview) -> TelephoneEvent:
    """The RFC 4733 event (first 4 bytes of an RTP payload); RtpError if shorter."""
    if len(payload) < 4:
        raise RtpError(f"telephone-event payload of {len(payload)} bytes (need 4)")
    event, flags, duration = _EVENT.unpack_from(payload, 0)
    return _new(TelephoneEvent, (event, (flags & 0x80) != 0, flags & 0x3F, duration))


def event_to_digit(event: int) -> str:
    """DTMF text of an RFC 4733 event: '0'-'9', '*', '#', 'A'-'D', 16 -> 'flash'.

    RtpError for other event codes (tones etc.).
    """
    if 0 <= event <= 15:
        return _DIGITS[event]
    if event == 16:
        return "flash"
    raise RtpError(f"telephone event {event} is not a DTMF digit")

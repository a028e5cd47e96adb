"""RTP / RTCP / RFC 4733 against tshark's RTP dissector, and edge cases."""
from __future__ import annotations

import struct

import pytest

from protocols.errors import RtpError
from protocols.rtp import (
    event_to_digit, is_rtcp, looks_like_rtp, parse_rtp, parse_telephone_event,
)
from tests.protocols._samples import udp_frames
from tests.protocols._tshark import first


def test_rtp_headers_match_tshark() -> None:
    seen = 0
    for row, _d, payload in udp_frames("MagicJack-_short_call.pcap"):
        if first(row, "rtp.seq") is None:
            continue
        seen += 1
        h = parse_rtp(payload)
        frame = first(row, "frame.number")
        assert h.sequence == int(first(row, "rtp.seq")), frame
        assert h.timestamp == int(first(row, "rtp.timestamp")), frame
        assert h.ssrc == int(first(row, "rtp.ssrc"), 16), frame
        assert h.payload_type == int(first(row, "rtp.p_type")), frame
        assert h.marker == (first(row, "rtp.marker") in ("1", "True")), frame
        assert h.version == 2 and h.payload_offset + h.payload_len <= len(payload)
        assert looks_like_rtp(payload) and not is_rtcp(payload)
    assert seen == 626 + 642  # the two streams of SOURCES.md


def test_rtcp_detection_matches_tshark() -> None:
    rtcp = rtp = 0
    for row, _d, payload in udp_frames("SIP-RTP-Normal_Call_two_parties.pcap"):
        protocols = first(row, "frame.protocols").split(":")
        if "rtcp" in protocols:
            rtcp += 1
            assert is_rtcp(payload) and not looks_like_rtp(payload)
        elif "rtp" in protocols:
            rtp += 1
            assert not is_rtcp(payload) and looks_like_rtp(payload)
    # SOURCES.md counts 34 RTCP packets: one of them is quoted inside an ICMP error
    assert rtcp == 33 and rtp > 5000


def test_telephone_events_match_tshark() -> None:
    digits = []
    seen = 0
    for row, _d, payload in udp_frames("SIP_DTMF2.cap"):
        if first(row, "rtpevent.event_id") is None:
            continue
        seen += 1
        h = parse_rtp(payload)
        ev = parse_telephone_event(payload[h.payload_offset:h.payload_offset + h.payload_len])
        frame = first(row, "frame.number")
        assert ev.event == int(first(row, "rtpevent.event_id")), frame
        assert ev.end == (first(row, "rtpevent.end_of_event") in ("1", "True")), frame
        assert ev.volume == int(first(row, "rtpevent.volume")), frame
        assert ev.duration == int(first(row, "rtpevent.duration")), frame
        if ev.end:
            digits.append(event_to_digit(ev.event))
    assert seen == 35
    assert "".join(digits) == "6789123"


def _rtp(b0: int, b1: int = 0, extra: bytes = b"") -> bytes:
    return struct.pack("!BBHII", b0, b1, 1, 2, 3) + extra


def test_parse_rtp_csrc_extension_padding() -> None:
    pkt = _rtp(0xB2, 0x80 | 96, b"\x00\x00\x00\x01" * 2 + b"\xbe\xde\x00\x01" + b"\x10\xaa\x00\x00"
               + b"payload" + b"\x00\x00\x03")
    h = parse_rtp(pkt)
    assert (h.padding, h.extension, h.marker, h.payload_type) == (True, True, True, 96)
    assert h.payload_offset == 12 + 8 + 8
    assert pkt[h.payload_offset:h.payload_offset + h.payload_len] == b"payload"


@pytest.mark.parametrize("pkt", [
    b"", b"\x80\x00\x00", _rtp(0x40), _rtp(0xC0),  # short, version 1 and 3
    _rtp(0x85),  # 5 CSRCs missing
    _rtp(0x90, 0, b"\xbe\xde"),  # extension header cut
    _rtp(0x90, 0, b"\xbe\xde\x00\x05"),  # extension longer than the packet
    _rtp(0xA0, 0, b"ab\x00"),  # padding count 0
    _rtp(0xA0, 0, b"ab\x09"),  # padding longer than the payload
])
def test_bad_rtp(pkt: bytes) -> None:
    with pytest.raises(RtpError):
        parse_rtp(pkt)
    assert not looks_like_rtp(pkt)


def test_rtcp_and_events_edge_cases() -> None:
    assert is_rtcp(b"\x81\xc8\x00\x0c" + b"\x00" * 4)  # SR
    assert is_rtcp(b"\x80\xcf\x00\x01" + b"\x00" * 4)  # XR (207)
    assert not is_rtcp(b"\x80\xc7\x00\x01" + b"\x00" * 4)  # 199
    assert not is_rtcp(b"\x81\xc8\x00")
    assert not looks_like_rtp(_rtp(0x80, 72))
    ev = parse_telephone_event(b"\x0b\x8a\x03\x20")
    assert ev == (11, True, 10, 800)
    with pytest.raises(RtpError):
        parse_telephone_event(b"\x01\x02\x03")
    assert [event_to_digit(e) for e in range(17)] == list("0123456789*#ABCD") + ["flash"]
    with pytest.raises(RtpError):
        event_to_digit(17)

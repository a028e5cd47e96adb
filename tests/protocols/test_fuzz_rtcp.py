"""Fuzzing the RTCP parser (protocols.rtcp) with hypothesis: random, built and mutated
compound packets may only raise RtcpError, and what parses stays inside the packet."""
from __future__ import annotations

import functools
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.errors import DecodeError
from protocols.layers import decode
from protocols.pcapfile import read_frames
from protocols.rtp import is_rtcp
from tests.conftest import CAPTURES

rtcp = pytest.importorskip("protocols.rtcp")

FUZZ = settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
SOURCES = ["SIP_CALL_RTP_G711", "rtp_conversacion.pcap", "SIP-RTP-Normal_Call_two_parties.pcap"]


@functools.lru_cache(maxsize=None)
def real_rtcp() -> list[bytes]:
    out = []
    for name in SOURCES:
        path = CAPTURES / name
        if not path.is_file():
            continue
        for _, lt, data in read_frames(path):
            try:
                d = decode(lt, data)
            except DecodeError:
                continue
            payload = data[d.payload_offset:d.payload_offset + d.payload_len]
            if d.proto == 17 and is_rtcp(payload):
                out.append(payload)
    if not out:
        pytest.skip("sample captures with RTCP not available")
    return out


@st.composite
def compound(draw: st.DrawFn) -> bytes:
    """Parts with a random header (version, padding, count, type, length) and body."""
    out = b""
    for _ in range(draw(st.integers(1, 4))):
        body = draw(st.binary(max_size=64))
        words = draw(st.one_of(st.just(len(body) // 4), st.integers(0, 0xFFFF)))
        b0 = draw(st.sampled_from([0x80, 0x81, 0x82, 0xA0, 0xA1, 0x9F, 0x40])) | draw(
            st.integers(0, 0x1F))
        out += struct.pack("!BBH", b0, draw(st.integers(195, 210)), words) + body
    return out + draw(st.binary(max_size=3))


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    buf = bytearray(draw(st.sampled_from(real_rtcp())))
    for _ in range(draw(st.integers(1, 5))):
        if not buf:
            break
        i = draw(st.integers(0, len(buf) - 1))
        op = draw(st.integers(0, 3))
        if op == 0:
            buf[i] = draw(st.integers(0, 255))
        elif op == 1:
            del buf[i:i + draw(st.integers(1, 32))]
        elif op == 2:
            buf[i:i] = draw(st.binary(min_size=1, max_size=16))
        else:
            buf[i:i + 2] = struct.pack("!H", draw(st.integers(0, 0xFFFF)))
    return bytes(buf)


def check(data: bytes) -> None:
    try:
        parts = rtcp.parse_rtcp(data)
    except rtcp.RtcpError:
        return
    assert 0 < len(parts) and sum(p.length for p in parts) <= len(data)
    for p in parts:
        assert p.length >= 4 and len(p.reports) * 24 <= p.length and len(p.ssrcs) * 4 <= p.length
        for b in p.reports:
            assert 0 <= b.fraction_lost <= 255 and -(1 << 23) <= b.cumulative_lost < 1 << 23


@FUZZ
@given(st.one_of(st.binary(max_size=120), compound()))
def test_rtcp_random_and_built(data: bytes) -> None:
    check(data)


@FUZZ
@given(mutated())
def test_rtcp_mutated_real_packets(data: bytes) -> None:
    check(data)


def test_real_rtcp_packets_parse() -> None:
    for data in real_rtcp():
        assert rtcp.parse_rtcp(data)

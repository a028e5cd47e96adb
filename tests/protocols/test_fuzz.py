"""Fuzzing: random and mutated input may only raise the parsers' own exceptions."""
from __future__ import annotations

import functools
import os
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.errors import DecodeError
from protocols.layers import decode
from protocols.pcapfile import CaptureFileError, read_frames
from protocols.rtp import (
    event_to_digit, is_rtcp, looks_like_rtp, parse_rtp, parse_telephone_event,
)
from protocols.sdp import parse_sdp
from protocols.sip import looks_like_sip, parse_sip, split_stream
from tests.conftest import CAPTURES

FUZZ = settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
LINKTYPES = [0, 1, 101, 108, 113, 228, 229, 276, 147]
SOURCE_FILES = ["SIP_DTMF2.cap", "ipv6frag.pcap", "erspan_sip_ipv4_udp.pcapng", "sip_ipv4_tcp.pcap"]


@functools.lru_cache(maxsize=None)
def _samples() -> dict[str, list]:
    """Real frames, SIP/SDP/RTP payloads and capture-file heads to mutate."""
    out: dict[str, list] = {"frames": [], "sip": [], "sdp": [], "rtp": [], "files": []}
    for name in SOURCE_FILES:
        path = CAPTURES / name
        if not path.is_file():
            continue
        out["files"].append(path.read_bytes()[:6000])
        for _, lt, data in read_frames(path):
            out["frames"].append((lt, data))
            try:
                d = decode(lt, data)
            except DecodeError:
                continue
            payload = data[d.payload_offset:d.payload_offset + d.payload_len]
            if looks_like_sip(payload):
                out["sip"].append(payload)
                try:
                    msg = parse_sip(payload)
                except DecodeError:
                    continue
                if msg.body.startswith(b"v=0"):
                    out["sdp"].append(msg.body)
            elif looks_like_rtp(payload) and len(out["rtp"]) < 200:
                out["rtp"].append(payload)
    if not all(out.values()):
        pytest.skip("sample captures not available")
    return out


@st.composite
def mutated(draw: st.DrawFn, kind: str) -> bytes | tuple[int, bytes]:
    item = draw(st.sampled_from(_samples()[kind]))
    lt = None
    if isinstance(item, tuple):
        lt, item = item
    buf = bytearray(item)
    for _ in range(draw(st.integers(0, 6))):
        if not buf:
            break
        op = draw(st.integers(0, 3))
        i = draw(st.integers(0, len(buf) - 1))
        if op == 0:
            buf[i] = draw(st.integers(0, 255))
        elif op == 1:
            del buf[i:i + draw(st.integers(1, 64))]
        elif op == 2:
            buf[i:i] = draw(st.binary(min_size=1, max_size=16))
        else:
            buf[i] ^= 1 << draw(st.integers(0, 7))
    if draw(st.booleans()):
        del buf[draw(st.integers(0, len(buf))):]
    return (lt, bytes(buf)) if lt is not None else bytes(buf)


def _decode_checked(lt: int, data: bytes) -> None:
    try:
        d = decode(lt, data)
    except DecodeError:
        return
    assert 0 <= d.payload_offset and d.payload_offset + d.payload_len <= len(data)
    assert len(d.src) == len(d.dst) == (4 if d.ip_version == 4 else 16)


@FUZZ
@given(st.sampled_from(LINKTYPES), st.binary(max_size=300))
def test_decode_random(lt: int, data: bytes) -> None:
    _decode_checked(lt, data)


@FUZZ
@given(st.data())
def test_decode_mutated(data: st.DataObject) -> None:
    lt, frame = data.draw(mutated("frames"))
    _decode_checked(data.draw(st.sampled_from([lt, lt, 101, 113])), frame)


def _sip_checked(payload: bytes) -> None:
    looks_like_sip(payload)
    try:
        msg = parse_sip(payload)
        for prop in ("call_id", "from_uri", "to_uri", "from_tag", "to_tag", "via_branch",
                     "content_type", "cseq"):
            getattr(msg, prop)
    except DecodeError:
        pass


@FUZZ
@given(st.one_of(st.binary(max_size=400),
                 st.text(max_size=300).map(lambda t: ("INVITE sip:a@b SIP/2.0\r\n" + t).encode())))
def test_sip_random(payload: bytes) -> None:
    _sip_checked(payload)


@FUZZ
@given(mutated("sip"))
def test_sip_mutated(payload: bytes) -> None:
    _sip_checked(payload)


@FUZZ
@given(st.lists(mutated("sip"), min_size=1, max_size=3), st.binary(max_size=20))
def test_split_stream_mutated(parts: list[bytes], tail: bytes) -> None:
    buf = b"\r\n".join(parts) + tail
    try:
        msgs, rest = split_stream(buf)
    except DecodeError:
        return
    assert buf.endswith(rest) and all(m in buf for m in msgs)


@FUZZ
@given(st.one_of(st.binary(max_size=400), mutated("sdp"),
                 st.text(max_size=300).map(lambda t: ("v=0\r\n" + t).encode())))
def test_sdp(body: bytes) -> None:
    try:
        parse_sdp(body)
    except DecodeError:
        pass


@FUZZ
@given(st.one_of(st.binary(max_size=80), mutated("rtp")))
def test_rtp(payload: bytes) -> None:
    is_rtcp(payload)
    assert looks_like_rtp(payload) in (True, False)
    try:
        h = parse_rtp(payload)
        assert h.payload_offset + h.payload_len <= len(payload) and h.payload_len >= 0
    except DecodeError:
        pass
    try:
        ev = parse_telephone_event(payload)
        event_to_digit(ev.event)
    except DecodeError:
        pass


def _read_all(content: bytes) -> None:
    fd, name = tempfile.mkstemp(suffix=".pcap")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        try:
            for ts, lt, data in read_frames(name):
                assert isinstance(ts, int) and isinstance(lt, int) and isinstance(data, bytes)
        except CaptureFileError as exc:
            assert 0 <= exc.offset <= len(content)
    finally:
        os.unlink(name)


@FUZZ
@given(st.one_of(
    st.binary(max_size=200),
    st.binary(max_size=200).map(lambda b: bytes.fromhex("d4c3b2a1") + b),
    st.binary(max_size=200).map(lambda b: bytes.fromhex("0a0d0d0a") + b),
))
def test_read_frames_random(content: bytes) -> None:
    _read_all(content)


@FUZZ
@given(mutated("files"))
def test_read_frames_mutated(content: bytes) -> None:
    _read_all(content)

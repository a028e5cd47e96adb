"""Fuzzing IP fragment reassembly (protocols.fragments.Reassembler) with hypothesis.

The reassembler holds state, so its input is a sequence: fragments of IPv4 and
IPv6 datagrams in any order, repeated, overlapping, cut, corrupted, mixed with
other datagrams. It never raises (it counts), stays within its bounds, and a
datagram whose fragments all arrive comes back exactly.
"""
from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.errors import DecodeError
from protocols.fragments import Reassembler
from protocols.layers import decode

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
RAW = 101
SRC4, DST4 = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
SRC6, DST6 = b"\xfd" + bytes(14) + b"\x01", b"\xfd" + bytes(14) + b"\x02"


def ipv4_fragment(ident: int, off: int, mf: bool, data: bytes, src: bytes = SRC4) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(data), ident,
                       (off >> 3) | (0x2000 if mf else 0), 64, 17, 0, src, DST4) + data


def ipv6_fragment(ident: int, off: int, mf: bool, data: bytes, hop_by_hop: bool = False) -> bytes:
    ext = struct.pack("!BB6x", 44, 0) if hop_by_hop else b""
    frag = struct.pack("!BBHI", 17, 0, off | int(mf), ident)
    return struct.pack("!IHBB16s16s", 6 << 28, len(ext) + 8 + len(data), 0 if hop_by_hop else 44,
                       64, SRC6, DST6) + ext + frag + data


def fragments_of(version: int, ident: int, datagram: bytes, cuts: list[int],
                 hop_by_hop: bool = False) -> list[bytes]:
    """Raw IP fragments of `datagram` (the IP payload) cut at the given offsets."""
    bounds = [0, *cuts, len(datagram)]
    out = []
    for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
        mf = i < len(bounds) - 2
        if version == 4:
            out.append(ipv4_fragment(ident, a, mf, datagram[a:b]))
        else:
            out.append(ipv6_fragment(ident, a, mf, datagram[a:b], hop_by_hop))
    return out


@st.composite
def datagrams(draw: st.DrawFn) -> tuple[int, int, bytes, bytes, list[int], bool]:
    """(IP version, id, UDP payload, UDP datagram, fragment offsets, hop-by-hop header)."""
    version = draw(st.sampled_from([4, 6]))
    payload = draw(st.binary(min_size=1, max_size=600))
    udp = struct.pack("!HHHH", 5060, 5060, 8 + len(payload), 0) + payload
    cuts = sorted(set(draw(st.lists(st.integers(1, (len(udp) - 1) // 8), min_size=1,
                                    max_size=8))))
    ident = draw(st.integers(0, 0xFFFF if version == 4 else 0xFFFFFFFF))
    return version, ident, payload, udp, [8 * c for c in cuts], draw(st.booleans())


def feed(r: Reassembler, frames: list[bytes], t0: int = 0, step: int = 1000) -> list:
    out = []
    for i, frame in enumerate(frames):
        try:
            d = decode(RAW, frame)
        except DecodeError:
            continue
        if d.is_fragment:
            g = r.add(t0 + i * step, RAW, frame, d)
            if g is not None:
                out.append(g)
        check_bounds(r)
    return out


def check_bounds(r: Reassembler) -> None:
    pending = r._pending
    assert len(pending) <= r.max_datagrams
    held = sum(p.held for p in pending.values())
    assert r.bytes_held == held <= max(r.max_total_bytes, r.max_bytes)
    for p in pending.values():
        end = 0
        for start, stop, data in p.chunks:
            assert end <= start < stop <= r.max_bytes and len(data) == stop - start
            end = stop
        assert p.total is None or end <= p.total
    assert all(v >= 0 for v in r.counters.values())


@FUZZ
@given(datagrams(), st.data())
def test_fragments_in_any_order_with_repeats_give_the_datagram(dg, data) -> None:
    version, ident, payload, udp, cuts, hbh = dg
    frames = fragments_of(version, ident, udp, cuts, hbh)
    order = data.draw(st.permutations(frames))
    repeats = data.draw(st.lists(st.sampled_from(frames), max_size=3))
    order = list(order)
    for f in repeats:
        order.insert(data.draw(st.integers(0, len(order))), f)
    got = feed(Reassembler(), order)
    assert got, "every fragment arrived but no datagram came back"
    for g in got:  # a repeat after completion may start (and with all parts finish) it again
        assert g.linktype == RAW and g.fragments >= 1
        d = decode(RAW, g.frame)
        assert not d.is_fragment and d.proto == 17 and d.ip_version == version
        assert g.frame[d.payload_offset:d.payload_offset + d.payload_len] == payload


@FUZZ
@given(st.lists(datagrams(), min_size=1, max_size=3), st.data(),
       st.integers(1, 4), st.sampled_from([16, 200, 700, 65535]), st.sampled_from([0, 300, 5000]))
def test_damaged_fragment_sequences_are_counted_and_bounded(dgs, data, max_datagrams, max_bytes,
                                                            max_total) -> None:
    frames = []
    for version, ident, _, udp, cuts, hbh in dgs:
        if data.draw(st.booleans()):   # another datagram with the same id, other boundaries
            other = data.draw(st.lists(st.integers(0, 100), max_size=4))
            frames += fragments_of(version, ident, bytes(len(udp) + 16),
                                   sorted({8 * c for c in other if 0 < 8 * c < len(udp) + 16}))
        frames += fragments_of(version, ident, udp, cuts, hbh)
        frames.append(ipv4_fragment(ident & 0xFFFF, 8 * data.draw(st.integers(1, 9000)),
                                    data.draw(st.booleans()), b""))   # empty fragments
    frames = list(data.draw(st.permutations(frames)))
    for _ in range(data.draw(st.integers(0, 4))):   # damage some: flip, cut, extend bytes
        i = data.draw(st.integers(0, len(frames) - 1))
        f = bytearray(frames[i])
        if not f:
            continue
        pos = data.draw(st.integers(0, len(f) - 1))
        op = data.draw(st.integers(0, 2))
        if op == 0:
            f[pos] = data.draw(st.integers(0, 255))
        elif op == 1:
            del f[pos:]
        else:
            f[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
        frames[i] = bytes(f)
    step = data.draw(st.sampled_from([1000, 10**9]))
    r = Reassembler(timeout_s=2.0, max_datagrams=max_datagrams, max_bytes=max_bytes,
                    max_total_bytes=max_total)
    for g in feed(r, frames, step=step):
        assert g.linktype == RAW and len(g.frame) <= 40 + 8 + max_bytes
        try:
            d = decode(RAW, g.frame)
        except DecodeError:
            continue
        assert not (d.ip_version == 4 and d.is_fragment)
    r.expire(len(frames) * step + 3 * 10**9)
    assert len(r) == 0 and r.bytes_held == 0

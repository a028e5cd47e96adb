"""Ordering across sensors and dedup of mirrored copies."""
from __future__ import annotations

import random
import struct

from controller.ingest.dedup import DedupConfig, Deduplicator
from controller.ingest.order import TimeMerger
from protocols.layers import decode
from protocols.pcapfile import LINKTYPE_ETHERNET


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_merge_holds_fast_sensor_until_slow_one_catches_up() -> None:
    clock = FakeClock()
    m = TimeMerger(clock=clock)
    m.add_source("a")
    m.add_source("b")
    m.push("a", [(t, "a", 1, b"") for t in range(0, 100, 10)])
    assert m.release() == []              # b has said nothing yet: hold a's packets
    m.push("b", [(t, "b", 1, b"") for t in range(5, 50, 10)])
    out = m.release()
    assert [p[0] for p in out] == [0, 5, 10, 15, 20, 25, 30, 35, 40, 45]
    m.remove_source("b")                  # b's replay ended
    assert [p[0] for p in m.release()] == [50, 60, 70, 80, 90]


def test_expected_sources_hold_until_all_said_hello() -> None:
    m = TimeMerger(expected_sources=2)
    m.add_source("a")
    m.push("a", [(1, "a", 1, b"")])
    assert m.release() == []
    m.add_source("b")
    m.heartbeat("b", 10)
    assert [p[0] for p in m.release()] == [1]


def test_stale_source_stops_holding_others() -> None:
    clock = FakeClock()
    m = TimeMerger(clock=clock, stale_after_s=5)
    m.add_source("a")
    m.add_source("b")
    m.push("a", [(100, "a", 1, b"")])
    assert m.release() == []
    clock.t = 6.0                          # b silent for 6 s; a heard again now
    m.heartbeat("a", 200)
    assert [p[0] for p in m.release()] == [100]


def test_drain_random_interleaving_is_sorted() -> None:
    m = TimeMerger()
    rng = random.Random(1)
    seen = []
    for sid in "abc":
        m.add_source(sid)
    for sid in "abc":
        ts = sorted(rng.randrange(10**6) for _ in range(500))
        seen += ts
        for i in range(0, 500, 37):
            m.push(sid, [(t, sid, 1, b"") for t in ts[i:i + 37]])
    out = [p[0] for p in m.release(drain=True)]
    assert out == sorted(seen)


def _udp_frame(ttl: int, ip_id: int, payload: bytes, mac: bytes = b"\x02" * 6) -> bytes:
    """Ethernet/IPv4/UDP built by hand (independent of spanrec's decoder)."""
    udp = struct.pack("!HHHH", 5060, 5060, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), ip_id, 0x4000, ttl, 17, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    csum = 0
    for i in range(0, 20, 2):
        csum += (ip[i] << 8) | ip[i + 1]
    while csum >> 16:
        csum = (csum & 0xFFFF) + (csum >> 16)
    ip = ip[:10] + struct.pack("!H", ~csum & 0xFFFF) + ip[12:]
    return mac + b"\x04" * 6 + b"\x08\x00" + ip + udp


def _check(dd: Deduplicator, ts: int, frame: bytes, sid: str = "s1", sip: bool = True) -> bool:
    return dd.is_duplicate(ts, sid, frame, decode(LINKTYPE_ETHERNET, frame), sip)


def test_copy_from_another_mirror_is_dropped_and_counted() -> None:
    dd = Deduplicator(DedupConfig())
    first = _udp_frame(64, 7, b"INVITE sip:b@x SIP/2.0\r\n\r\n")
    # the copy seen after a router hop: other MACs, TTL 63, other IP checksum
    copy = _udp_frame(63, 7, b"INVITE sip:b@x SIP/2.0\r\n\r\n", mac=b"\x06" * 6)
    assert first != copy
    assert not _check(dd, 1_000_000_000, first, "site1")
    assert _check(dd, 1_000_030_000, copy, "site2")
    assert dd.dropped == 1 and dd.dropped_by_sensor == {"site2": 1}


def test_sip_retransmission_after_500ms_is_kept() -> None:
    dd = Deduplicator(DedupConfig())
    msg = _udp_frame(64, 9, b"INVITE sip:b@x SIP/2.0\r\n\r\n")
    assert not _check(dd, 0, msg)
    # a real retransmission (T1 = 500 ms) is a new datagram; even with the same IP ID it is kept
    assert not _check(dd, 500_000_000, msg)
    assert dd.dropped == 0


def test_different_ip_id_is_not_a_duplicate() -> None:
    dd = Deduplicator(DedupConfig())
    assert not _check(dd, 0, _udp_frame(64, 1, b"x" * 20), sip=False)
    assert not _check(dd, 10, _udp_frame(64, 2, b"x" * 20), sip=False)


def test_table_is_bounded() -> None:
    dd = Deduplicator(DedupConfig(max_entries=100))
    for i in range(1000):
        _check(dd, i, _udp_frame(64, i, b"y" * 20), sip=False)
    assert len(dd) <= 100
    # the newest keys are kept: a copy of the last packet is still dropped
    assert _check(dd, 1000, _udp_frame(64, 999, b"y" * 20), sip=False)


def test_copies_are_found_for_the_whole_window_across_generations() -> None:
    """Continuous media for 3 s (keys rotate every second): a mirror copy 900 ms
    behind its original is still dropped (window 1 s); one 1.1 s behind is kept."""
    dd = Deduplicator(DedupConfig())
    ms = 1_000_000
    for i in range(300):
        ts = 5_000 * ms + i * 10 * ms
        assert not _check(dd, ts, _udp_frame(64, i, b"m" * 40), sip=False)
        if i >= 90:
            assert _check(dd, ts, _udp_frame(63, i - 90, b"m" * 40, mac=b"\x06" * 6), "s2", sip=False)
        if i >= 110:
            assert not _check(dd, ts, _udp_frame(62, i - 110, b"m" * 40, mac=b"\x07" * 6), "s3",
                              sip=False)

"""Classifier: RTP recognised by heuristics on ports no SDP announced, and
media endpoints the controller expects (Expect).

Expectations come from tshark where a capture is involved: it is told to
decode the probed ports as RTP/RTCP ("decode as") and its verdict is the
reference for what is RTP.
"""
from __future__ import annotations

import random
import struct
import subprocess
import threading
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.pcapfile import write_pcap
from sensor.capture import FileReplay
from sensor.classify import Classifier
from tests.conftest import capture, require_tool
from tests.sensor.test_classify import MAC, SDP, invite, tshark_frames, udp

MS = 1_000_000
SEC = 1_000_000_000
T0 = 1_700_000_000 * SEC
A, B = "10.9.0.1", "10.9.0.2"


def rtp(seq: int, ts: int, ssrc: int = 0x11223344, pt: int = 8, size: int = 160,
        marker: bool = False) -> bytes:
    return struct.pack("!BBHII", 0x80, pt | (0x80 if marker else 0), seq & 0xFFFF,
                       ts & 0xFFFFFFFF, ssrc) + b"\xd5" * size


def rtcp_sr(ssrc: int = 0x11223344) -> bytes:
    """A compound RTCP packet: SR (no report blocks) + SDES with one CNAME."""
    sr = struct.pack("!BBHIIIIII", 0x80, 200, 6, ssrc, 1, 2, 3, 4, 5)
    cname = b"\x01\x04abcd\x00\x00"                       # CNAME item, end, pad to 32 bits
    sdes = struct.pack("!BBHI", 0x81, 202, (4 + len(cname)) // 4, ssrc) + cname
    return sr + sdes


def ipv6_udp(src: bytes, sport: int, dst: bytes, dport: int, payload: bytes) -> bytes:
    l4 = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    return MAC + b"\x86\xdd" + struct.pack("!IHBB16s16s", 0x60000000, len(l4), 17, 64, src, dst) + l4


def stream(n: int, src: str = A, sport: int = 30000, dst: str = B, dport: int = 40000,
           start: int = T0, seq0: int = 1000, ssrc: int = 0x11223344) -> list[tuple[int, bytes]]:
    """n RTP packets every 20 ms (G.711: timestamp +160)."""
    return [(start + i * 20 * MS, udp(src, sport, dst, dport, rtp(seq0 + i, 8000 + 160 * i, ssrc)))
            for i in range(n)]


def classify_file(path: Path, clf: Classifier | None = None) -> tuple[set[int], Classifier]:
    """1-based numbers of the frames forwarded, through FileReplay; unlike the
    helper in test_classify, a frame released by a later batch counts too."""
    clf = clf or Classifier()
    source = FileReplay(path)
    numbers: dict[int, int] = {}
    frames = []                   # keeps every frame alive: ids stay unique
    accepted: set[int] = set()
    for batch in source.batches():
        for frame in batch:
            frames.append(frame)
            numbers[id(frame)] = len(frames)
        accepted.update(numbers[id(f)] for f in clf.accept_batch(source.linktype, batch))
    return accepted, clf


def run(clf: Classifier, frames: list[tuple[int, bytes]], size: int) -> list[tuple[int, bytes]]:
    """Everything the classifier forwards, fed in batches of `size`."""
    out: list[tuple[int, bytes]] = []
    for i in range(0, len(frames), size):
        out += clf.accept_batch(1, frames[i:i + size])
    return out


def balanced(clf: Classifier) -> bool:
    c = clf.counters
    return c.seen == c.forwarded + c.filtered + c.decode_errors


def test_rtp_on_unknown_ports_is_forwarded_from_the_first_packet() -> None:
    frames = stream(50)
    for size in (1, 2, 3, 7, 256):
        clf = Classifier()
        out = run(clf, frames, size)
        assert [id(f) for f in out] == [id(f) for f in frames], size   # same frames, same order
        c = clf.counters
        assert c.rtp_heuristic_flows == 1 and c.rtp_heuristic_packets == 50
        assert c.forwarded == 50 and c.filtered == 0 and balanced(clf)
        assert clf.held_packets == 0


def test_held_packets_are_counted_filtered_until_released() -> None:
    frames = stream(3)
    clf = Classifier()
    assert clf.accept_batch(1, frames[:2]) == []
    assert clf.counters.filtered == 2 and clf.held_packets == 2 and balanced(clf)
    assert clf.counters.filtered_settled == 0            # what heartbeats report
    out = clf.accept_batch(1, frames[2:])
    assert out == frames
    assert clf.counters.filtered == 0 and clf.counters.forwarded == 3 and balanced(clf)
    assert clf.counters.filtered_settled == 0
    # held and never confirmed: settled as filtered at the end of the capture
    clf.accept_batch(1, stream(2, sport=31000, dport=41000, start=T0 + SEC))
    assert clf.counters.filtered_settled == 0 and clf.held_packets == 2
    clf.flush()
    assert clf.counters.filtered_settled == clf.counters.filtered == 2 and clf.held_packets == 0


def test_settled_filtered_never_goes_down() -> None:
    """Streams starting at random times on many flows, junk, small batches,
    evictions: `filtered_settled` only grows and equals filtered minus held."""
    rng = random.Random(5)
    frames: list[tuple[int, bytes]] = []
    for k in range(60):
        start = T0 + rng.randrange(0, 5 * SEC)
        n = rng.choice([1, 2, 3, 5, 40])
        frames += stream(n, sport=20000 + k, dport=40000 + k, start=start, ssrc=k,
                         seq0=rng.randrange(65536))
        frames += [(start + i * 7 * MS, udp(A, 50000 + k, B, 60000, rng.randbytes(40)))
                   for i in range(rng.randrange(10))]
    frames.sort(key=lambda f: f[0])
    clf = Classifier(max_probes=8)
    last = 0
    for i in range(0, len(frames), 5):
        clf.accept_batch(1, frames[i:i + 5])
        c = clf.counters
        assert c.filtered_settled >= last
        last = c.filtered_settled
        assert c.filtered_settled == c.filtered - clf.held_packets
        assert clf.held_packets == sum(len(h) for h in clf._probes.values())
        assert balanced(clf)
    clf.flush()
    assert clf.counters.filtered_settled == clf.counters.filtered >= last


def test_released_packets_keep_capture_order_within_and_across_batches() -> None:
    rtps = stream(4)
    sip = (T0 + 5 * MS, udp(A, 5060, B, 5060, b"OPTIONS sip:b SIP/2.0\r\nContent-Length: 0\r\n\r\n"))
    junk = (T0 + 25 * MS, udp(A, 1234, B, 53, b"\x12\x34\x01\x00" + bytes(20)))
    sip2 = (T0 + 45 * MS, udp(B, 5060, A, 5060, b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"))
    one_batch = [rtps[0], sip, rtps[1], junk, rtps[2], sip2, rtps[3]]
    clf = Classifier()
    assert clf.accept_batch(1, one_batch) == [rtps[0], sip, rtps[1], rtps[2], sip2, rtps[3]]
    # held in one batch, released by a later one: they come first
    clf = Classifier()
    assert clf.accept_batch(1, [rtps[0], sip, rtps[1]]) == [sip]
    assert clf.accept_batch(1, [junk, sip2, rtps[2], rtps[3]]) == [rtps[0], rtps[1], sip2, rtps[2],
                                                                    rtps[3]]


def test_both_directions_and_reverse_held_packets_are_released() -> None:
    fwd = stream(10)
    rev = stream(10, src=B, sport=40000, dst=A, dport=30000, start=T0 + 5 * MS, ssrc=0x55667788)
    # the reverse direction has two packets held when the forward one is confirmed
    frames = sorted(fwd + rev, key=lambda f: f[0])
    clf = Classifier()
    out = run(clf, frames, 4)
    assert sorted(id(f) for f in out) == sorted(id(f) for f in frames)
    assert clf.counters.rtp_heuristic_packets == 20 and balanced(clf)
    assert clf.counters.filtered == 0


def test_ipv6_rtp_and_rtp_with_losses_and_reordering_steps() -> None:
    a6, b6 = bytes.fromhex("20010db8" + "00" * 11 + "01"), bytes.fromhex("20010db8" + "00" * 11 + "02")
    seqs = [1, 2, 4, 9, 10, 11]                      # losses of 1 and 4 packets
    frames = [(T0 + i * 20 * MS, ipv6_udp(a6, 20000, b6, 20002, rtp(s, 160 * s)))
              for i, s in enumerate(seqs)]
    clf = Classifier()
    assert run(clf, frames, 2) == frames
    # a gap of 6 in sequence numbers breaks a chain: the next two steps confirm
    frames = [(T0 + i * 20 * MS, udp(A, 30010, B, 40010, rtp(s, 160 * s))) for i, s in
              enumerate([1, 8, 9, 10])]
    clf = Classifier()
    assert clf.accept_batch(1, frames[:3]) == [] and clf.accept_batch(1, frames[3:]) == frames


def test_rtcp_on_port_plus_one_of_a_confirmed_flow() -> None:
    early = (T0 - MS, udp(A, 30001, B, 40001, rtcp_sr()))            # before confirmation
    frames = [early, *stream(5)]
    t = T0 + SEC
    sr_fwd = (t, udp(A, 30001, B, 40001, rtcp_sr()))
    sr_other_side = (t + 1, udp(B, 40001, A, 9999, rtcp_sr()))        # from the far end's port+1
    bad_length = (t + 2, udp(A, 30001, B, 40001, struct.pack("!BBHI", 0x80, 200, 50, 1)))
    other_port = (t + 3, udp(A, 30003, B, 40003, rtcp_sr()))
    app = (t + 4, udp(A, 30001, B, 40001, struct.pack("!BBHI4s", 0x80, 204, 2, 1, b"name")))
    not_rtcp = (t + 5, udp(A, 30001, B, 40001, struct.pack("!BBHI", 0x80, 205, 1, 1)))
    clf = Classifier()
    out = clf.accept_batch(1, frames + [sr_fwd, sr_other_side, bad_length, other_port, app, not_rtcp])
    assert out == frames[1:] + [sr_fwd, sr_other_side, app]
    assert clf.counters.rtp_heuristic_packets == 5 + 3 and balanced(clf)


def test_no_heuristics_when_disabled() -> None:
    clf = Classifier(rtp_heuristics=False)
    assert run(clf, stream(50), 8) == []
    assert clf.counters.filtered == 50 and clf.probing_flows == 0


def test_packets_too_far_apart_or_of_changing_ssrc_are_not_confirmed() -> None:
    far = [(T0 + i * 1500 * MS, udp(A, 30000, B, 40000, rtp(1 + i, 160 * i))) for i in range(5)]
    clf = Classifier()
    assert run(clf, far, 1) == []                # never three within the 2 s window
    hopping = [(T0 + i * 20 * MS, udp(A, 30000, B, 40000, rtp(1 + i, 160 * i, ssrc=i)))
               for i in range(20)]
    clf = Classifier()
    assert run(clf, hopping, 5) == [] and clf.held_packets == 4
    still = [(T0 + i * 20 * MS, udp(A, 30000, B, 40000, rtp(7, 160))) for i in range(20)]
    clf = Classifier()
    assert run(clf, still, 5) == []              # sequence not advancing (copies)
    jump = [(T0 + i * 20 * MS, udp(A, 30000, B, 40000, rtp(1 + i, 40000 * i))) for i in range(20)]
    assert run(Classifier(), jump, 5) == []      # timestamp leaping by 5 s per packet
    rtcp_pt = [(T0 + i * 20 * MS, udp(A, 30000, B, 40000, rtp(1 + i, 160 * i, pt=73)))
               for i in range(20)]
    assert run(Classifier(), rtcp_pt, 5) == []   # payload type in the RTCP range
    odd_pt = [(T0 + i * 20 * MS, udp(A, 30000, B, 40000, rtp(1 + i, 160 * i, pt=50)))
              for i in range(20)]
    assert run(Classifier(), odd_pt, 5) == []    # unassigned payload type


def test_probe_tables_are_bounded_and_expire() -> None:
    clf = Classifier(max_probes=16)
    frames = [(T0 + i * MS, udp(A, 10000 + i, B, 20000, rtp(1, 0))) for i in range(1000)]
    assert run(clf, frames, 64) == []
    assert clf.probing_flows == 16 and clf.held_packets == 16
    # the least recently probed flows were evicted: the newest still confirms
    newest = [(T0 + (1000 + i) * MS, udp(A, 10999, B, 20000, rtp(2 + i, 160 * (1 + i))))
              for i in range(2)]
    assert clf.accept_batch(1, newest) == [frames[-1], *newest]
    # stale probes go with the minute sweep (capture time)
    clf.accept_batch(1, [(T0 + 120 * SEC, udp(A, 1, B, 2, b"x"))])
    assert clf.probing_flows == 0 and clf.held_packets == 0
    assert balanced(clf)


def test_confirmed_flows_expire_without_traffic() -> None:
    clf = Classifier(ttl_s=10)
    run(clf, stream(5), 5)
    later = T0 + 5 * SEC
    assert clf.accept(1, udp(A, 30000, B, 40000, rtp(2000, 0)), later)
    clf.accept(1, udp("10.0.0.7", 1, "10.0.0.8", 2, b"x"), T0 + 200 * SEC)  # time passes, sweep
    assert not clf.accept(1, udp(A, 30000, B, 40000, rtp(5000, 0)), T0 + 201 * SEC)


# -- random and non-RTP traffic ---------------------------------------------------
def dns_query(qid: int, name: bytes = b"\x07example\x03com\x00") -> bytes:
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + name + b"\x00\x01\x00\x01"


def ntp_client(t: int) -> bytes:
    return struct.pack("!BBbb", 0x23, 0, 6, -20) + bytes(36) + struct.pack("!Q", t)


def test_dns_and_ntp_are_not_forwarded() -> None:
    # query ids in 0x8000-0xBFFF read as RTP version 2: the worst case for DNS
    dns = [(T0 + i * MS, udp(A, 5353, B, 53, dns_query(0x8000 + i * 7))) for i in range(500)]
    ntp = [(T0 + i * MS, udp(A, 123, B, 123, ntp_client(i << 32))) for i in range(500)]
    clf = Classifier()
    assert run(clf, dns + ntp, 64) == []
    assert clf.counters.rtp_heuristic_flows == 0 and clf.counters.filtered == 1000


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(min_size=0, max_size=300), min_size=3, max_size=40),
       st.booleans(), st.integers(min_value=1, max_value=4))
def test_random_payloads_are_not_forwarded(payloads: list[bytes], force_v2: bool,
                                           flows: int) -> None:
    """Random datagrams on a few flows; with `force_v2` every one also has the
    RTP version bits and a plausible payload type (the packets that get probed)."""
    frames = []
    for i, p in enumerate(payloads):
        if force_v2 and len(p) >= 2:
            p = bytes([0x80 | (p[0] & 0x3F), p[1] & 0x1F]) + p[2:]
        frames.append((T0 + i * 20 * MS, udp(A, 30000 + i % flows, B, 40000, p)))
    clf = Classifier()
    assert run(clf, frames, 7) == []
    assert balanced(clf) and clf.held_packets <= 4 * flows


def test_random_datagrams_rate() -> None:
    """20,000 random version-2 datagrams over 100 flows: none confirmed."""
    rng = random.Random(7)
    frames = []
    for i in range(20_000):
        p = bytearray(rng.randbytes(rng.randrange(12, 200)))
        p[0] = 0x80 | (p[0] & 0x30)
        p[1] = rng.choice([0, 8, 18, 96, 101, 111])
        frames.append((T0 + i * MS, udp(A, 30000 + i % 100, B, 40000, bytes(p))))
    clf = Classifier()
    assert len(run(clf, frames, 256)) == 0
    assert clf.counters.filtered == 20_000


# -- media the controller expects --------------------------------------------
def test_expected_endpoints_are_forwarded_like_sdp_learned_ones() -> None:
    clf = Classifier(rtp_heuristics=False)
    b = bytes(map(int, B.split(".")))
    clf.expect([(b, 40000), (b, 40001)])
    clf.expect([(b, 40000)])                                   # announced twice: counted once
    assert clf.media_endpoints == 0                            # applied with the next frames
    frames = stream(3) + [(T0 + SEC, udp(A, 30001, B, 40001, rtcp_sr())),
                          (T0 + SEC, udp(B, 40000, A, 30000, rtp(1, 1)))]   # from the endpoint
    assert clf.accept_batch(1, frames) == frames
    assert clf.counters.expected_flows == 2 and clf.media_endpoints == 2
    assert clf.counters.rtp_heuristic_flows == 0
    # same expiry as SDP-learned endpoints, and refreshed by traffic
    clf = Classifier(ttl_s=10, rtp_heuristics=False)
    clf.expect([(b, 40000)])
    assert clf.accept(1, udp(A, 30000, B, 40000, rtp(1, 1)), T0)
    assert clf.accept(1, udp(A, 30000, B, 40000, rtp(2, 2)), T0 + 100 * SEC)
    clf.accept(1, udp("10.0.0.7", 1, "10.0.0.8", 2, b"x"), T0 + 300 * SEC)    # sweep
    assert not clf.accept(1, udp(A, 30000, B, 40000, rtp(3, 3)), T0 + 301 * SEC)


def test_expected_endpoints_share_the_media_bound() -> None:
    clf = Classifier(max_media=100)
    clf.expect([(b"\x0a\x00\x00\x01", 10000 + i) for i in range(500)])
    clf.accept(1, udp(A, 1, B, 2, b"x"), T0)
    assert clf.media_endpoints <= 100 and clf.counters.expected_flows == 500


def test_expect_from_another_thread_while_classifying() -> None:
    clf = Classifier()
    stop = threading.Event()

    def link_thread() -> None:
        for i in range(200):
            clf.expect([(bytes([10, 8, i, j]), 40000) for j in range(50)])
        stop.set()

    th = threading.Thread(target=link_thread)
    th.start()
    i = 0
    while not stop.is_set() or clf._expected_in:
        clf.accept_batch(1, [(T0 + i, udp(A, 1, B, 2, b"x"))])
        i += 1
    th.join()
    assert clf.counters.expected_flows == 200 * 50 and clf.media_endpoints == 200 * 50
    assert balanced(clf)


# -- against tshark --------------------------------------------------------------
def test_constructed_capture_forwards_exactly_what_tshark_decodes_as_rtp(tmp_path: Path) -> None:
    """RTP/RTCP on unannounced ports mixed with SIP+SDP media, DNS, NTP and
    random UDP; tshark, told to decode the probed ports as RTP/RTCP, decides
    what is RTP. The classifier must forward those, SIP and the SDP media, nothing else."""
    rng = random.Random(3)
    frames: list[tuple[int, bytes]] = []
    frames += stream(200)                                                   # A -> B
    frames += stream(200, src=B, sport=40000, dst=A, dport=30000, start=T0 + 7 * MS, ssrc=9)
    frames += stream(100, src="10.9.0.3", sport=31000, dst="10.9.0.4", dport=41000,
                     start=T0 + SEC, seq0=65500, ssrc=77)                   # sequence wraps
    frames += [(T0 + i * SEC + 3 * MS, udp(A, 30001, B, 40001, rtcp_sr())) for i in range(1, 4)]
    frames += [(T0 + i * 100 * MS + 1, udp(A, 5353, "10.9.0.53", 53, dns_query(0x8000 + i)))
               for i in range(40)]
    frames += [(T0 + i * 100 * MS + 2, udp(A, 123, "10.9.0.123", 123, ntp_client(i)))
               for i in range(40)]
    frames += [(T0 + i * 10 * MS + 4, udp(A, 50000 + i % 5, B, 60000, rng.randbytes(rng.randrange(1, 300))))
               for i in range(400)]
    frames += [(T0 + 2 * SEC, udp("10.0.0.1", 5060, "10.0.0.2", 5060, invite(SDP))),
               *[(T0 + 2 * SEC + i * 20 * MS + 5, udp("10.0.0.9", 7000, "10.0.0.1", 4000,
                                                      rtp(i, 160 * i, ssrc=5))) for i in range(1, 50)]]
    frames.sort(key=lambda f: f[0])
    path = tmp_path / "mixed.pcap"
    with open(path, "wb") as fh:
        write_pcap(fh, frames, 1)
    accepted, clf = classify_file(path)
    decode_as = ["-d", "udp.port==40000,rtp", "-d", "udp.port==41000,rtp",
                 "-d", "udp.port==40001,rtcp", "-d", "udp.port==4000,rtp"]
    expected = {int(r[0]) for r in _tshark(path, decode_as, "rtp or rtcp or sip")}
    assert len(expected) == 200 + 200 + 100 + 3 + 1 + 49
    assert accepted == expected
    # the reverse direction of A <-> B rides on the first confirmation (symmetric RTP)
    assert clf.counters.rtp_heuristic_flows == 2 and clf.counters.rtp_heuristic_packets == 503
    assert balanced(clf)


def _tshark(path: Path, decode_as: list[str], display_filter: str) -> list[list[str]]:
    out = subprocess.run([require_tool("tshark"), "-r", str(path), *decode_as, "-Y", display_filter,
                          "-T", "fields", "-e", "frame.number"],
                         capture_output=True, text=True, check=True).stdout
    return [[line] for line in out.splitlines() if line]


def test_public_capture_rtp_without_sip_sdp_is_forwarded() -> None:
    """SIP_CALL_RTP_G711 also holds a call whose RTP (40378 <-> 4800) no SIP SDP
    announces. With the heuristics every frame tshark decodes as RTP there is
    forwarded, and everything forwarded beyond the SDP path is RTP/RTCP."""
    path = capture("SIP_CALL_RTP_G711")
    with_h, clf = classify_file(path)
    without, _ = classify_file(path, Classifier(rtp_heuristics=False))
    decode_as = ["-d", "udp.port==4800,rtp", "-d", "udp.port==4801,rtcp"]
    rtp_4800 = {int(r[0]) for r in _tshark(path, decode_as, "rtp and udp.port==4800")}
    media = {int(r[0]) for r in _tshark(path, decode_as, "rtp or rtcp")}
    assert len(rtp_4800) > 1000
    assert rtp_4800 <= with_h and not rtp_4800 & without
    assert with_h - without <= media
    assert without <= with_h
    assert clf.counters.rtp_heuristic_flows >= 1 and balanced(clf)
    assert tshark_frames(path, "sip") <= with_h

"""SIP over TCP reassembly (controller/calls/tcpstream.py) and its use by the call engine.

Real capture: sip_ipv4_tcp_fragmented.pcap (4 connections, 406 SIP messages, 234
spanning several 1024-byte segments), checked against tshark's own TCP
reassembly (`-d tcp.port==6060,sip`): the messages, the frame each one
completes in, the segments each one spans, and every call's call.pcap.
Synthetic streams built by hand cover what the capture does not have:
reordering, retransmission, gaps, mid-message starts, shared segments.
"""
from __future__ import annotations

import random
import struct
from collections import Counter

import pytest
from hypothesis import given, settings, strategies as st

from controller.calls.engine import CallEngine
from controller.output.finalize import build_recording
from controller.calls.tcpstream import (BROKEN, FIN, MESSAGE, RETRANSMISSION, RST, SYN, TcpLimits,
                                  TcpReassembler, TcpStream, find_start)
from protocols.layers import decode, str_to_ip
from protocols.pcapfile import read_frames
from protocols.sip import looks_like_sip, parse_sip
from tests.conftest import capture, require_tool
from tests.controller import tshark_calls as tc

FRAGMENTED = "sip_ipv4_tcp_fragmented.pcap"
S = 1_000_000_000
ACK = 0x10
PSH = 0x08


# -- helpers -------------------------------------------------------------------

def sip_msg(first: str, call_id: str = "c1", cseq: str = "1 INVITE", body: str = "",
            from_tag: str = "ft", to_tag: str | None = None, branch: str = "z9hG4bK-1") -> bytes:
    to = "<sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else "")
    head = [first, f"Via: SIP/2.0/TCP 10.0.0.1:5060;branch={branch}",
            f"From: <sip:alice@example.com>;tag={from_tag}", f"To: {to}",
            f"Call-ID: {call_id}", f"CSeq: {cseq}", f"Content-Length: {len(body.encode())}"]
    if body:
        head.append("Content-Type: application/sdp")
    return ("\r\n".join(head) + "\r\n\r\n" + body).encode()


BODY = ("v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n"
        "m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
INVITE = sip_msg("INVITE sip:bob@example.com SIP/2.0", body=BODY)
RINGING = sip_msg("SIP/2.0 180 Ringing", to_tag="tt")
OPTIONS = sip_msg("OPTIONS sip:bob@example.com SIP/2.0", call_id="o1", cseq="7 OPTIONS")


class Feeder:
    """One TcpStream fed by (seq offset, bytes, label) with the frame = label."""

    def __init__(self, isn: int = 1000, limits: TcpLimits | None = None) -> None:
        self.stream = TcpStream(limits)
        self.isn = isn
        self.out: list = []

    def send(self, t: float, off: int, data: bytes, label, flags: int = ACK | PSH) -> list:
        got = self.stream.segment(int(t * S), (self.isn + off) & 0xFFFFFFFF, flags, data, label)
        self.out += got
        return got

    def messages(self) -> list:
        return [c for c in self.out if c.kind == MESSAGE]

    def kinds(self, kind: int) -> list:
        return [c for c in self.out if c.kind == kind]


def split(data: bytes, *cuts: int) -> list[tuple[int, bytes]]:
    """(offset, piece) at the given cut points."""
    bounds = [0, *cuts, len(data)]
    return [(a, data[a:b]) for a, b in zip(bounds, bounds[1:])]


# -- synthetic: one stream -------------------------------------------------------

def test_message_split_across_segments_in_order() -> None:
    f = Feeder()
    pieces = split(INVITE, 100, 300)
    for i, (off, piece) in enumerate(pieces):
        got = f.send(i * 0.01, off, piece, f"f{i}")
        assert (got == []) == (i < 2)
    (m,) = f.messages()
    assert m.data == INVITE and m.frames == ["f0", "f1", "f2"] and m.ts_ns == int(0.02 * S)
    assert parse_sip(m.data).call_id == "c1"


def test_two_messages_in_one_segment_and_a_shared_segment() -> None:
    f = Feeder()
    stream = INVITE + RINGING + OPTIONS
    a, b = len(INVITE), len(INVITE) + len(RINGING)
    # f0 = INVITE + RINGING, f1 = first 50 bytes of OPTIONS, f2 = the rest
    f.send(0, 0, stream[:b], "f0")
    f.send(1, b, stream[b:b + 50], "f1")
    f.send(2, b + 50, stream[b + 50:], "f2")
    msgs = f.messages()
    assert [m.data for m in msgs] == [INVITE, RINGING, OPTIONS]
    assert [m.frames for m in msgs] == [["f0"], ["f0"], ["f1", "f2"]]
    # one segment carrying the end of one message and the start of the next: both own it
    g = Feeder()
    g.send(0, 0, stream[:a - 10], "g0")
    g.send(1, a - 10, stream[a - 10:a + 20], "g1")
    g.send(2, a + 20, stream[a + 20:], "g2")
    msgs = g.messages()
    assert [m.data for m in msgs] == [INVITE, RINGING, OPTIONS]
    assert msgs[0].frames == ["g0", "g1"] and msgs[1].frames == ["g1", "g2"]
    assert msgs[2].frames == ["g2"]


def test_keepalive_crlf_between_messages_belongs_to_no_message() -> None:
    f = Feeder()
    f.send(0, 0, b"\r\n\r\n", "ping")
    f.send(1, 4, INVITE, "inv")
    f.send(2, 4 + len(INVITE), b"\r\n", "pong")
    f.send(3, 6 + len(INVITE), RINGING, "ring")
    assert [(m.data, m.frames) for m in f.messages()] == [(INVITE, ["inv"]), (RINGING, ["ring"])]
    assert f.kinds(BROKEN) == [] and f.stream.counters["tcp_resyncs"] == 0


def test_retransmission_adds_no_bytes_but_stays_with_its_message() -> None:
    f = Feeder()
    f.send(0, 0, INVITE[:200], "a")
    f.send(0.3, 0, INVITE[:200], "a-again")           # retransmitted while pending
    f.send(0.5, 100, INVITE[100:300], "overlap")        # half old, half new
    f.send(0.6, 300, INVITE[300:], "b")
    (m,) = f.messages()
    assert m.data == INVITE
    assert m.frames == ["a", "a-again", "overlap", "b"]
    # after delivery: the repeat comes back as a RETRANSMISSION of that message
    m.owner = "call-1"
    got = f.send(1.0, 300, INVITE[300:], "b-again")
    assert len(got) == 1 and got[0].kind == RETRANSMISSION and got[0].frames == ["b-again"]
    assert got[0].of == [m.ref] and got[0].of[0].owner == "call-1"
    # a 1-byte TCP keep-alive probe (seq = next - 1) joins nothing
    assert f.send(2.0, len(INVITE) - 1, INVITE[-1:], "probe") == []
    assert f.stream.counters["tcp_retransmissions"] == 4
    assert len(f.messages()) == 1


def test_out_of_order_segment_is_held_until_the_gap_fills() -> None:
    f = Feeder()
    stream = INVITE + RINGING
    pieces = split(stream, 100, 250, len(INVITE) + 30)
    order = [0, 2, 3, 1]
    for t, i in enumerate(order):
        off, piece = pieces[i]
        got = f.send(t * 0.01, off, piece, f"p{i}")
        if i != 1:
            assert got == []
    assert f.stream.counters["tcp_out_of_order"] == 2
    msgs = f.messages()
    assert [m.data for m in msgs] == [INVITE, RINGING]
    assert msgs[0].frames == ["p0", "p1", "p2"]   # in stream order
    assert msgs[1].frames == ["p2", "p3"]         # p2 holds INVITE's end and RINGING's start
    # both completed when p1 (the last to arrive) filled the gap
    assert msgs[0].ts_ns == int(0.03 * S)
    assert f.stream.counters["tcp_gaps"] == 0 and not f.stream.ooo


def test_gap_that_never_fills_is_skipped_after_the_timeout() -> None:
    f = Feeder(limits=TcpLimits(gap_timeout_s=1.0))
    stream = INVITE + RINGING + OPTIONS
    r0 = len(INVITE)
    f.send(0, 0, stream[:200], "head")                 # INVITE's first 200 bytes
    # 200..r0-20 is lost; then the INVITE tail + RINGING + OPTIONS arrive
    f.send(0.1, r0 - 20, stream[r0 - 20:r0 + 40], "tail")
    f.send(0.2, r0 + 40, stream[r0 + 40:], "rest")
    assert f.messages() == [] and f.stream.ooo
    got = f.send(1.5, len(stream), b"", "ack")         # a bare ACK 1.5 s later: gap skipped
    assert [c.kind for c in got] == [BROKEN, BROKEN, MESSAGE, MESSAGE]
    head, tail, ringing, options = got
    assert head.data == stream[:200] and head.frames == ["head"]   # the cut INVITE
    assert tail.data == stream[r0 - 20:r0]                           # its tail before RINGING
    assert [ringing.data, options.data] == [RINGING, OPTIONS]
    assert ringing.frames == ["tail", "rest"] and options.frames == ["rest"]
    assert ringing.ts_ns == int(0.2 * S)               # when its bytes arrived, not the skip
    c = f.stream.counters
    assert (c["tcp_gaps"], c["tcp_resyncs"], c["tcp_skipped_bytes"]) == (1, 1, r0 - 200)


def test_gap_is_skipped_when_too_much_is_held() -> None:
    f = Feeder(limits=TcpLimits(max_ahead=2000))
    msgs = [sip_msg("OPTIONS sip:x@y SIP/2.0", call_id=f"o{i}", cseq=f"{i} OPTIONS")
            for i in range(12)]
    stream = b"".join(msgs)
    f.send(0, 0, stream[:10], "lost-after")
    off = len(msgs[0])
    for i, m in enumerate(msgs[1:], 1):                # msgs[0] bytes 10.. never come
        f.send(0.001 * i, off, m, f"m{i}")
        off += len(m)
    assert f.stream.ooo_bytes <= 2000
    got = [parse_sip(m.data).call_id for m in f.messages()]
    assert got[0] == "o1" and f.stream.counters["tcp_gaps"] == 1
    f.stream.close(f.out)
    assert [parse_sip(m.data).call_id for m in f.messages()] == [f"o{i}" for i in range(1, 12)]


def test_stream_first_seen_mid_message_starts_at_the_first_start_line() -> None:
    f = Feeder(limits=TcpLimits(gap_timeout_s=1.0))
    stream = INVITE + RINGING + OPTIONS
    # the capture starts inside INVITE's body: held a while in case earlier bytes come
    assert f.send(0, 300, stream[300:len(INVITE) + 50], "first") == []
    assert f.send(0.5, len(INVITE) + 50, stream[len(INVITE) + 50:], "second") == []
    got = f.send(1.2, len(stream), b"", "ack")        # nothing earlier came: start there
    assert [c.kind for c in got] == [BROKEN, MESSAGE, MESSAGE]
    assert got[0].data == INVITE[300:] and got[0].frames == ["first"]
    assert [got[1].data, got[2].data] == [RINGING, OPTIONS]
    assert got[1].frames == ["first", "second"] and got[1].ts_ns == int(0.5 * S)
    c = f.stream.counters
    assert (c["tcp_resyncs"], c["tcp_gaps"], c["tcp_skipped_bytes"]) == (1, 0, len(INVITE) - 300)


def test_first_segment_seen_mid_message_then_the_earlier_one() -> None:
    """Reordering right at the start of what the mirror shows: the segment seen first
    continues a message whose start comes next."""
    f = Feeder()
    stream = INVITE + RINGING
    assert f.send(0, 200, stream[200:], "second") == []
    got = f.send(0.001, 0, stream[:200], "first")
    assert [(c.kind, c.data, c.frames) for c in got] == [
        (MESSAGE, INVITE, ["first", "second"]), (MESSAGE, RINGING, ["second"])]
    c = f.stream.counters
    assert c["tcp_resyncs"] == c["tcp_gaps"] == c["tcp_broken"] == 0


def test_start_line_cut_between_segments_while_searching() -> None:
    f = Feeder()
    stream = b"a=sendrecv\r\n" + RINGING          # tail of some earlier body, then a message
    cut = 12 + 9                                  # "SIP/2.0 1" | "80 Ringing..."
    f.send(0, 0, stream[:cut], "x")
    f.send(0.1, cut, stream[cut:], "y")
    f.stream.close(f.out)
    assert [(c.kind, c.frames) for c in f.out] == [(BROKEN, ["x"]), (MESSAGE, ["x", "y"])]
    assert f.messages()[0].data == RINGING


def test_garbage_between_messages_is_broken_then_resync() -> None:
    f = Feeder()
    stream = INVITE + b"\x16\x03\x01garbage\r\nmore garbage\r\n" + RINGING
    f.send(0, 0, stream, "one")
    assert [c.kind for c in f.out] == [MESSAGE, BROKEN, MESSAGE]
    assert f.messages()[1].data == RINGING
    assert f.stream.counters["tcp_resyncs"] == 1


def test_bad_content_length_and_overflow_are_counted_not_raised() -> None:
    bad = INVITE.replace(b"Content-Length: ", b"Content-Length: x")
    f = Feeder()
    f.send(0, 0, bad + RINGING, "one")
    assert [c.kind for c in f.out] == [BROKEN, MESSAGE] and f.out[1].data == RINGING
    # a Content-Length far beyond the buffer limit: dropped, then resync at the next start
    huge = sip_msg("MESSAGE sip:x@y SIP/2.0", call_id="m1", cseq="1 MESSAGE").replace(
        b"Content-Length: 0", b"Content-Length: 900000")
    g = Feeder(limits=TcpLimits(max_buffer=4096))
    off = 0
    for i, piece in enumerate([huge, b"z" * 3000, b"z" * 3000, RINGING]):
        g.send(i, off, piece, f"s{i}")
        off += len(piece)
    assert g.stream.counters["tcp_overflows"] == 1
    assert [m.data for m in g.messages()] == [RINGING]
    assert len(g.stream.buf) <= 4096


def test_fin_delivers_and_forgets_rst_forgets_both_directions_syn_restarts() -> None:
    r = TcpReassembler()
    a, b = (str_to_ip("10.0.0.1"), 5060, str_to_ip("10.0.0.2"), 5060), None
    b = (a[2], a[3], a[0], a[1])
    out = r.segment(a, 0, 100, ACK, INVITE[:100], "a1")
    out += r.segment(b, 0, 900, ACK, RINGING[:50], "b1")
    out += r.segment(a, 1, 200, ACK | FIN, INVITE[100:], "a2")
    assert [m.data for m in out] == [INVITE] and a not in r and b in r
    out = r.segment(a, 2, 5000, RST, b"", "rst")  # RST of a forgotten direction ends b too
    assert [(c.kind, c.data, c.frames) for c in out] == [(BROKEN, RINGING[:50], ["b1"])]
    assert b not in r and len(r) == 0
    # SYN on a known key: a new connection, the half message of the old one is BROKEN
    r.segment(a, 3, 100, ACK, INVITE[:100], "old")
    out = r.segment(a, 4, 7000, SYN, b"", "syn")
    assert [c.kind for c in out] == [BROKEN]
    out = r.segment(a, 5, 7001, ACK, RINGING, "new")
    assert [(c.kind, c.data) for c in out] == [(MESSAGE, RINGING)]


def test_sequence_number_wraparound() -> None:
    f = Feeder(isn=0xFFFFFFFF - 150)
    for i, (off, piece) in enumerate(split(INVITE + RINGING, 100, 400)):
        f.send(i, off, piece, i)
    assert [m.data for m in f.messages()] == [INVITE, RINGING]


def test_reassembler_bounds_streams_and_expires_idle_ones() -> None:
    r = TcpReassembler(TcpLimits(max_streams=3, idle_s=10, gap_timeout_s=1))
    keys = [(str_to_ip("10.0.0.1"), 1000 + i, str_to_ip("10.0.0.2"), 5060) for i in range(5)]
    out = []
    for i, k in enumerate(keys):
        out += r.segment(k, i * S, 1, ACK, INVITE[:60], f"k{i}")
    assert len(r) == 3 and keys[0] not in r and r.counters["tcp_streams_evicted"] == 2
    assert [c.kind for c in out] == [BROKEN, BROKEN]          # the evicted half messages
    # a held segment with no follow-up: skipped by advance() after the gap timeout
    out = r.segment(keys[4], 5 * S, 200, ACK, RINGING, "late")
    assert out == [] and r.stats()["tcp_buffered_bytes"] == 60 * 3 + len(RINGING)
    out = r.advance(int(6.5 * S))
    assert [c.data for c in out if c.kind == MESSAGE] == [RINGING]
    out = r.advance(20 * S)
    assert len(r) == 0 and r.counters["tcp_streams_expired"] == 3
    assert r.stats()["tcp_buffered_bytes"] == 0
    total = TcpReassembler(TcpLimits(max_total_bytes=1000))
    for i, k in enumerate(keys):
        total.segment(k, i, 1, ACK, INVITE[:300], i)
    assert total.stats()["tcp_buffered_bytes"] == 900 and len(total) == 3


def test_find_start() -> None:
    assert find_start(b"SIP/2.0 200 OK\r\n") == 0
    assert find_start(b"Via: SIP/2.0/TCP x\r\nBYE sip:a@b SIP/2.0\r\n") == 20
    assert find_start(b"body\r\nSIP/2.0 486 Busy\r\n", 1) == 6
    assert find_start(b"v=0\r\na=x\r\nyINVITE sip:b@c SIP/2.0\r\n") == 11  # body without CRLF
    assert find_start(b"xPRACK sip:b@c SIP/2.0\r\n") == 1       # PRACK, not ACK
    # the tail of a request line (a stream or a gap starting inside it) is not one
    assert find_start(b"NVITE sip:b@c SIP/2.0\r\nVia: SIP/2.0/TCP x\r\n") == -1
    assert find_start(b"TIONS sip:b@c SIP/2.0\r\n\r\nBYE sip:b@c SIP/2.0\r\n") == 25
    assert find_start(b"SIP/2.0 200 OK\r\n", 1) == -1


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_any_segmentation_reordering_and_duplication_gives_every_message_once(data) -> None:
    msgs = [sip_msg("OPTIONS sip:x@y SIP/2.0", call_id=f"o{i}", cseq=f"{i} OPTIONS",
                    body="x" * data.draw(st.integers(0, 300))) for i in range(6)]
    stream = b"\r\n".join(msgs)
    cuts = sorted(set(data.draw(st.lists(st.integers(1, len(stream) - 1), max_size=25))))
    segs = split(stream, *cuts)
    order = list(range(len(segs)))
    # local reordering (each segment moves at most 3 places) and duplicates
    # (the first segment stays first: a stream starts at the first segment seen, so an
    # older one after it is taken as a retransmission)
    keys = [i + data.draw(st.floats(0, 3)) if i else -1 for i in order]
    order = [i for _, i in sorted(zip(keys, order))]
    dups = data.draw(st.lists(st.integers(0, len(segs) - 1), max_size=5))
    for d in dups:
        order.insert(data.draw(st.integers(order.index(d) + 1, len(order))), d)
    f = Feeder(isn=data.draw(st.integers(0, 0xFFFFFFFF)))
    for t, i in enumerate(order):
        off, piece = segs[i]
        f.send(t * 0.001, off, piece, i)
    f.stream.close(f.out)
    assert [m.data for m in f.messages()] == msgs
    assert f.kinds(BROKEN) == []
    for m in f.messages():  # each message's frames are exactly the segments holding its bytes
        a = stream.index(m.data)
        b = a + len(m.data)
        want = {i for i, (off, piece) in enumerate(segs) if off < b and a < off + len(piece)}
        assert set(m.frames) == want


# -- synthetic: through the call engine ------------------------------------------------

def tcp_frame(src: str, sport: int, dst: str, dport: int, seq: int, payload: bytes,
              flags: int = ACK | PSH, ip_id: int = 1) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, 0, 5 << 4, flags, 65535, 0, 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + len(payload), ip_id, 0x4000, 64, 6, 0,
                     str_to_ip(src), str_to_ip(dst))
    return b"\x00" * 12 + b"\x08\x00" + ip + tcp + payload


def _pcap_frames(rec, tmp_path) -> list[tuple[int, bytes]]:
    out = tmp_path / "call.pcap"
    out.write_bytes(rec.files["call.pcap"])
    return [(ts, data) for ts, _, data in read_frames(out)]


def test_engine_tcp_call_with_reordering_retransmission_and_shared_segment(tmp_path) -> None:
    a_inv = sip_msg("INVITE sip:bob@example.com SIP/2.0", call_id="A", body=BODY)
    a_200 = sip_msg("SIP/2.0 200 OK", call_id="A", to_tag="tA")
    b_inv = sip_msg("INVITE sip:carol@example.com SIP/2.0", call_id="B", from_tag="fb")
    b_486 = sip_msg("SIP/2.0 486 Busy Here", call_id="B", from_tag="fb", to_tag="tb")
    c2s = a_inv + b_inv
    cut = len(a_inv) - 30                         # segment 2 = end of A's INVITE + start of B's
    segs = [(0, c2s[:200]), (200, c2s[200:cut]), (cut, c2s[cut:cut + 100]),
            (cut + 100, c2s[cut + 100:])]
    A, B = "10.0.0.1", "10.0.0.2"
    frames = [
        (0.00, tcp_frame(A, 40000, B, 5060, 1, segs[0][1], ip_id=1)),
        (0.01, tcp_frame(A, 40000, B, 5060, 1 + segs[2][0], segs[2][1], ip_id=3)),  # early
        (0.02, tcp_frame(A, 40000, B, 5060, 1 + segs[1][0], segs[1][1], ip_id=2)),  # fills
        (0.03, tcp_frame(B, 5060, A, 40000, 1, b"", flags=ACK)),                    # bare ACK
        (0.04, tcp_frame(A, 40000, B, 5060, 1 + segs[3][0], segs[3][1], ip_id=4)),
        (0.50, tcp_frame(B, 5060, A, 40000, 1, a_200 + b_486, ip_id=5)),
        (0.90, tcp_frame(A, 40000, B, 5060, 1 + segs[3][0], segs[3][1], ip_id=6)),  # retrans
    ]
    engine = CallEngine()
    hits = [engine.process(int(t * S), "s1", 1, f, decode(1, f)) for t, f in frames]
    assert hits == [True, True, True, False, True, True, True]
    calls = {c.call_ids[0]: c for c in engine.finish_all()}
    assert (calls["A"].status, calls["A"].final_response) == ("answered", 200)
    assert (calls["B"].status, calls["B"].final_response) == ("busy", 486)
    assert calls["A"].started_ns == int(0.02 * S)   # the INVITE completed when the gap filled
    assert calls["B"].started_ns == int(0.04 * S)
    by_time = {int(t * S): f for t, f in frames}
    want = {"A": [0.00, 0.01, 0.02, 0.50], "B": [0.01, 0.04, 0.50, 0.90]}
    for cid, times in want.items():
        rec = build_recording(calls[cid])
        got = _pcap_frames(rec, tmp_path)
        assert got == [(int(t * S), by_time[int(t * S)]) for t in times], cid
        assert rec.metadata["sip_packets"] == len(times) == rec.metadata["pcap_packets"]
    c = engine.counters
    assert c["internal_errors"] == 0 and c["sip_errors"] == 0
    assert (c["tcp_out_of_order"], c["tcp_retransmissions"], c["tcp_gaps"]) == (1, 1, 0)


def test_engine_ignores_tcp_that_is_not_sip() -> None:
    engine = CallEngine()
    f = tcp_frame("10.0.0.1", 40000, "10.0.0.2", 443, 1, b"\x16\x03\x01" + b"x" * 200)
    assert engine.process(0, "s1", 1, f, decode(1, f)) is False
    assert engine.counters["tcp_streams"] == 0


# -- the real capture against tshark --------------------------------------------------

@pytest.fixture(scope="module")
def fragmented():
    require_tool("tshark")
    return capture(FRAGMENTED)


def _tshark_messages(path) -> list[tuple[int, str, int, str, list[int]]]:
    """(frame, Call-ID, CSeq, method or status, segment frames) per SIP message tshark
    reassembles; several messages in a frame come as separate occurrences."""
    rows = tc.fields(path, "sip", ("frame.number", "sip.Call-ID", "sip.CSeq.seq", "sip.Method",
                                   "sip.Status-Code", "tcp.segment"), occurrence="a")
    out = []
    for r in rows:
        r = r + [""] * (6 - len(r))
        cids, seqs = r[1].split("|"), r[2].split("|")
        methods = [x for x in r[3].split("|") if x]
        codes = [x for x in r[4].split("|") if x]
        kinds = methods + codes
        assert len(cids) == len(seqs) == len(kinds) == 1, r  # (one message per frame here)
        segs = [int(x) for x in r[5].split("|") if x] or [int(r[0])]
        out.append((int(r[0]), cids[0], int(seqs[0]), kinds[0], segs))
    return out


def _reassemble(path) -> tuple[list, dict]:
    r = TcpReassembler()
    chunks = []
    for index, (ts, lt, data) in enumerate(read_frames(path), 1):
        d = decode(lt, data)
        if d.proto != 6:
            continue
        off = d.payload_offset
        chunks += r.segment((d.src, d.sport, d.dst, d.dport), ts, d.tcp_seq, d.tcp_flags,
                            data[off:off + d.payload_len], index)
    chunks += r.flush()
    return chunks, r.stats()


def test_capture_messages_equal_tsharks(fragmented) -> None:
    expected = _tshark_messages(fragmented)
    assert len(expected) == 406 and sum(len(e[4]) > 1 for e in expected) == 234
    chunks, stats = _reassemble(fragmented)
    assert [c for c in chunks if c.kind != MESSAGE] == []
    got = []
    for c in chunks:
        msg = parse_sip(c.data)
        got.append((max(c.frames), msg.call_id, msg.cseq[0], msg.method or str(msg.status),
                    sorted(c.frames)))
    assert Counter((e[1], e[2], e[3]) for e in expected) == Counter((g[1], g[2], g[3]) for g in got)
    # tshark dates a message at the frame with its last segment, and lists its segments
    assert sorted(got) == sorted(expected)
    assert (stats["tcp_gaps"], stats["tcp_resyncs"], stats["tcp_broken"],
            stats["tcp_retransmissions"]) == (0, 0, 0, 0)


def test_capture_call_pcaps_hold_every_segment_of_their_messages(fragmented, tmp_path) -> None:
    frames = {i: (ts, data) for i, (ts, _, data) in enumerate(read_frames(fragmented), 1)}
    by_cid: dict[str, set[int]] = {}
    for frame, cid, _, _, segs in _tshark_messages(fragmented):
        by_cid.setdefault(cid, set()).update([frame, *segs])
    run = tc.engine_run(fragmented)
    assert run.counters["sip_errors"] == 0 and run.counters["internal_errors"] == 0
    assert len(run.calls) == 40
    for call, rec in zip(run.calls, run.recordings):
        got = _pcap_frames(rec, tmp_path)
        want = {frames[i] for cid in call.call_ids for i in by_cid[cid]}
        assert want <= set(got), call.call_ids
        assert len(got) == len(set(got)) == rec.metadata["sip_packets"]  # each frame once
        assert [ts for ts, _ in got] == sorted(ts for ts, _ in got)


def test_capture_resegmented_and_shuffled_gives_the_same_calls(fragmented) -> None:
    """The capture's streams cut into 700-byte segments, neighbours swapped, some sent
    twice: every call still ends as tshark shows for the original capture."""
    rng = random.Random(7)
    streams: dict[tuple, list] = {}
    out = []
    for ts, lt, data in read_frames(fragmented):
        d = decode(lt, data)
        if d.proto != 6 or d.payload_len == 0:
            continue
        key = (d.src, d.sport, d.dst, d.dport)
        st_ = streams.setdefault(key, [d.tcp_seq, bytearray(), []])
        st_[1] += data[d.payload_offset:d.payload_offset + d.payload_len]
        st_[2].append((len(st_[1]), ts))
    for (src, sport, dst, dport), (isn, buf, marks) in streams.items():
        segs = []
        for a in range(0, len(buf), 700):
            b = min(a + 700, len(buf))
            ts = next(t for end, t in marks if end >= b)
            segs.append((ts, a, bytes(buf[a:b])))
        for i in range(0, len(segs) - 1, 5):   # swap some neighbours (sent at one time)
            (_, *s0), (t1, *s1) = segs[i], segs[i + 1]
            segs[i], segs[i + 1] = (t1, *s1), (t1, *s0)
        for ts, a, piece in segs:
            for _ in range(2 if rng.random() < 0.1 else 1):
                out.append((ts, tcp_frame(src=".".join(map(str, src)), sport=sport,
                                          dst=".".join(map(str, dst)), dport=dport,
                                          seq=isn + a, payload=piece)))
    out.sort(key=lambda f: f[0])
    run = tc.run_engine(fragmented, frames=[(ts, 1, f) for ts, f in out])
    expected = tc.expected_calls(fragmented)
    got = {c.call_ids[0]: (c.status, c.final_response) for c in run.calls}
    assert got == {cid: (e.status, e.final_response) for cid, e in expected.items()}
    c = run.counters
    assert c["sip_errors"] == c["tcp_gaps"] == c["tcp_broken"] == c["internal_errors"] == 0
    assert c["tcp_out_of_order"] > 0 and c["tcp_retransmissions"] > 0


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_lost_segments_only_lose_the_messages_they_touch(data) -> None:
    msgs = [sip_msg("OPTIONS sip:x@y SIP/2.0", call_id=f"o{i}", cseq=f"{i} OPTIONS",
                    body="y" * data.draw(st.integers(0, 200))) for i in range(8)]
    stream = b"".join(msgs)
    cuts = sorted(set(data.draw(st.lists(st.integers(1, len(stream) - 1), max_size=20))))
    segs = split(stream, *cuts)
    lost = set(data.draw(st.lists(st.integers(1, len(segs) - 1), max_size=3))) if len(segs) > 1 \
        else set()
    f = Feeder(limits=TcpLimits(gap_timeout_s=0.5))
    for t, (off, piece) in enumerate(segs):
        if t not in lost:
            f.send(t * 0.3, off, piece, t)
    f.stream.close(f.out)
    spans, pos = [], 0
    for m in msgs:
        spans.append((pos, pos + len(m)))
        pos += len(m)
    hit = {i for i, (a, b) in enumerate(spans)
           for t in lost if segs[t][0] < b and a < segs[t][0] + len(segs[t][1])}
    got = [m.data for m in f.messages()]
    # only whole messages, in order, and every message no lost segment touched
    assert all(g in msgs for g in got) and got == sorted(got, key=msgs.index)
    assert {m for i, m in enumerate(msgs) if i not in hit} <= set(got)
    assert len(f.stream.buf) == 0 and not f.stream.ooo


def test_engine_survives_mangled_tcp_sip() -> None:
    rng = random.Random(3)
    engine = CallEngine()
    base = INVITE + RINGING + OPTIONS
    for n in range(400):
        data = bytearray(base)
        for _ in range(rng.randrange(4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        off = rng.randrange(len(data))
        piece = bytes(data[off:off + rng.randrange(1, 400)])
        f = tcp_frame("10.0.0.1", 40000 + n % 7, "10.0.0.2", 5060, rng.randrange(2000) + off,
                      piece, flags=rng.choice([ACK, ACK | PSH, FIN | ACK, RST, SYN]))
        engine.process(n * S // 50, "s1", 1, f, decode(1, f))
        if n % 50 == 0:
            engine.advance(n * S // 50)
    engine.finish_all()
    assert engine.counters["internal_errors"] == 0 and engine.counters["tcp_streams"] == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 0xFFFFFFFF), st.sampled_from([0, ACK, SYN, FIN, RST, ACK | PSH]),
                          st.one_of(st.binary(max_size=300),
                                    st.sampled_from([INVITE, RINGING, b"\r\n\r\n", INVITE[:150],
                                                     INVITE[150:], b"SIP/2.0 200 OK\r\n"]))),
                max_size=40))
def test_arbitrary_segments_never_raise_and_stay_bounded(segments) -> None:
    lim = TcpLimits(max_buffer=2048, max_ahead=2048, max_streams=2, max_total_bytes=3000)
    r = TcpReassembler(lim)
    keys = [(b"\x0a\x00\x00\x01", 1, b"\x0a\x00\x00\x02", 2), (b"\x0a\x00\x00\x02", 2, b"\x0a\x00\x00\x01", 1),
            (b"\x0a\x00\x00\x03", 3, b"\x0a\x00\x00\x02", 2)]
    for i, (seq, flags, payload) in enumerate(segments):
        for c in r.segment(keys[i % 3], i * S // 10, seq, flags, payload, i):
            if c.kind == MESSAGE:          # framed: starts with a start line (parsing may
                assert looks_like_sip(c.data)  # still fail: the engine counts that)
        assert len(r) <= 2 and r.stats()["tcp_buffered_bytes"] <= 3000 + 2048 + 300
        for st_ in r.streams.values():
            assert len(st_.buf) <= 2048 + 300 and st_.ooo_bytes <= 2048 + 300
    r.advance(10**12)
    r.flush()
    assert len(r) == 0 and r.stats()["tcp_buffered_bytes"] == 0

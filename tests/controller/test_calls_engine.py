"""The call engine on synthetic traffic: dialog rules, timing, memory, bad input.

Each scenario is built packet by packet so one rule is exercised at a time;
the real-capture comparisons with tshark are in test_calls_captures.py.
"""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings, strategies as st

from controller.calls.engine import CallConfig, CallEngine
from controller.output.finalize import build_recording
from controller.media.streams import RtpStream
from protocols.layers import decode, str_to_ip

S = 1_000_000_000
CALLER_IP, CALLEE_IP, PROXY_IP = "10.0.0.1", "10.0.0.2", "10.0.0.9"


def udp_frame(src: str, sport: int, dst: str, dport: int, payload: bytes) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), 1, 0, 64, 17, 0,
                     str_to_ip(src), str_to_ip(dst))
    return b"\x00" * 12 + b"\x08\x00" + ip + struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def udp6_frame(src: str, sport: int, dst: str, dport: int, payload: bytes) -> bytes:
    ip = struct.pack("!IHBB16s16s", 6 << 28, 8 + len(payload), 17, 64, str_to_ip(src), str_to_ip(dst))
    return ip + struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def sdp(ip: str, port: int, pt: int = 0, name: str = "PCMU") -> str:
    fam = "IP6" if ":" in ip else "IP4"
    return (f"v=0\r\no=- 1 1 IN {fam} {ip}\r\ns=-\r\nc=IN {fam} {ip}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP {pt} 101\r\na=rtpmap:{pt} {name}/8000\r\n"
            f"a=rtpmap:101 telephone-event/8000\r\n")


def sip(first: str, call_id: str = "call-1", cseq: str = "1 INVITE", to_tag: str | None = None,
        from_tag: str = "ftag", branch: str = "z9hG4bK-1", body: str = "") -> bytes:
    to = "<sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else "")
    head = [first,
            f"Via: SIP/2.0/UDP {CALLER_IP}:5060;branch={branch}",
            f'From: "Alice" <sip:alice@example.com>;tag={from_tag}',
            f"To: {to}",
            f"Call-ID: {call_id}",
            f"CSeq: {cseq}",
            f"Content-Length: {len(body.encode())}"]
    if body:
        head.append("Content-Type: application/sdp")
    return ("\r\n".join(head) + "\r\n\r\n" + body).encode()


def rtp(seq: int, ts: int, ssrc: int, pt: int = 0, payload: bytes = b"\x55" * 160) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


class Feed:
    """Feeds frames to an engine and collects what advance() returns."""

    def __init__(self, config: CallConfig | None = None) -> None:
        self.engine = CallEngine(config)
        self.finished: list = []

    def send(self, t: float, src: str, sport: int, dst: str, dport: int, payload: bytes,
             linktype: int = 1, sensor: str = "s1") -> bool:
        ts = int(t * S)
        frame = (udp6_frame if ":" in src else udp_frame)(src, sport, dst, dport, payload)
        lt = 101 if ":" in src else linktype
        hit = self.engine.process(ts, sensor, lt, frame, decode(lt, frame))
        self.finished += self.engine.advance(ts)
        return hit

    def invite(self, t: float, **kw) -> bool:
        return self.send(t, CALLER_IP, 5060, CALLEE_IP, 5060,
                         sip("INVITE sip:bob@example.com SIP/2.0", **kw))

    def response(self, t: float, code: int, **kw) -> bool:
        return self.send(t, CALLEE_IP, 5060, CALLER_IP, 5060, sip(f"SIP/2.0 {code} X", **kw))

    def request(self, t: float, method: str, cseq: int, **kw) -> bool:
        return self.send(t, CALLER_IP, 5060, CALLEE_IP, 5060,
                         sip(f"{method} sip:bob@example.com SIP/2.0", cseq=f"{cseq} {method}", **kw))

    def done(self) -> list[dict]:
        self.finished += self.engine.finish_all()
        return [build_recording(c).metadata for c in self.finished]


def answered_call(f: Feed, t: float = 0.0) -> None:
    f.invite(t, body=sdp(CALLER_IP, 4000))
    f.response(t + 0.01, 100)
    f.response(t + 1, 180, to_tag="tt")
    f.response(t + 2, 200, to_tag="tt", body=sdp(CALLEE_IP, 5000))
    f.request(t + 2.1, "ACK", 1, to_tag="tt", branch="z9hG4bK-ack")


def test_answered_call_with_bye_and_linger() -> None:
    f = Feed()
    answered_call(f)
    for i in range(50):
        f.send(2.2 + i * 0.02, CALLER_IP, 4000, CALLEE_IP, 5000, rtp(i, i * 160, 0xA))
        f.send(2.2 + i * 0.02, CALLEE_IP, 5000, CALLER_IP, 4000, rtp(i, i * 160, 0xB))
    f.request(10, "BYE", 2, to_tag="tt", branch="z9hG4bK-bye")
    f.send(10.5, CALLEE_IP, 5000, CALLER_IP, 4000, rtp(50, 50 * 160, 0xB))  # in flight
    f.send(11.9, "10.9.9.9", 1, "10.9.9.8", 2, b"x")                       # time passes
    assert f.finished == [] and len(f.engine.active()) == 1
    f.send(12.1, "10.9.9.9", 1, "10.9.9.8", 2, b"x")
    (meta,) = [build_recording(c).metadata for c in f.finished]
    assert (meta["status"], meta["final_response"], meta["end_reason"]) == ("answered", 200, "bye")
    assert meta["ended_at"].endswith(":10.000000Z") and meta["answered_at"].endswith(":02.000000Z")
    assert (meta["from"], meta["to"]) == ("sip:alice@example.com", "sip:bob@example.com")
    by_dir = {s["direction"]: s for s in meta["streams"]}
    assert by_dir["caller"]["packets"] == 50 and by_dir["callee"]["packets"] == 51
    sources = meta["audio"].pop("sources")
    assert meta["audio"] == {"file": "audio.wav", "sample_rate": 8000, "channels": 2}
    assert sources["caller"]["ssrc"] == 0xA and sources["callee"]["ssrc"] == 0xB
    assert sources["callee"]["packets"] == 51 and sources["callee"]["candidates"] == 1
    assert f.engine.active() == [] and not f.engine.table.media and not f.engine.table.by_call_id


def test_auth_challenge_then_new_invite_is_one_call() -> None:
    f = Feed()
    f.invite(0)
    f.response(0.1, 407, to_tag="x1")
    f.request(0.2, "ACK", 1, to_tag="x1")
    answered_call(f, 0.3)  # same Call-ID, CSeq 1 again would be a repeat: use CSeq 2
    f2 = Feed()
    f2.invite(0)
    f2.response(0.1, 401, to_tag="x1")
    f2.request(0.2, "ACK", 1, to_tag="x1")
    f2.send(0.3, CALLER_IP, 5060, CALLEE_IP, 5060, sip("INVITE sip:bob@example.com SIP/2.0",
                                                       cseq="2 INVITE", branch="z9hG4bK-2"))
    f2.response(0.5, 401, to_tag="x1")   # late retransmission of the first challenge
    f2.response(1.0, 200, to_tag="tt", cseq="2 INVITE", branch="z9hG4bK-2")
    (meta,) = f2.done()
    assert (meta["status"], meta["final_response"]) == ("answered", 200)


@pytest.mark.parametrize("finish", ["capture-end", "timeout"])
def test_challenge_without_new_invite_is_rejected_with_the_challenge(finish: str) -> None:
    f = Feed(CallConfig(setup_timeout_s=30))
    f.invite(0)
    f.response(0.1, 401, to_tag="x1")
    f.request(0.2, "ACK", 1, to_tag="x1")
    if finish == "timeout":
        f.send(29, "10.9.9.9", 1, "10.9.9.8", 2, b"x")
        assert f.finished == []
        f.send(31, "10.9.9.9", 1, "10.9.9.8", 2, b"x")
        assert len(f.finished) == 1
    (meta,) = f.done()
    assert (meta["status"], meta["final_response"], meta["end_reason"]) == ("rejected", 401, finish)
    assert meta["ended_at"].endswith(":00.200000Z")  # last packet of the call


@pytest.mark.parametrize("code,status", [(486, "busy"), (600, "busy"), (603, "rejected"),
                                         (404, "rejected"), (487, "cancelled")])
def test_final_error_responses(code: int, status: str) -> None:
    f = Feed()
    f.invite(0)
    f.response(1, code, to_tag="t")
    (meta,) = f.done()
    reason = "cancel" if code == 487 else "final-response"
    assert (meta["status"], meta["final_response"], meta["end_reason"]) == (status, code, reason)


def test_cancel_then_error_is_cancelled_and_cancel_crossing_200_is_answered() -> None:
    f = Feed()
    f.invite(0)
    f.request(1, "CANCEL", 1)
    f.response(1.1, 408, to_tag="t")
    (meta,) = f.done()
    assert (meta["status"], meta["final_response"], meta["end_reason"]) == ("cancelled", 408, "cancel")

    f = Feed()
    f.invite(0)
    f.request(1, "CANCEL", 1)
    f.response(1.01, 200, to_tag="t")                       # crosses the CANCEL
    f.response(1.02, 200, to_tag="t", cseq="1 CANCEL")
    f.response(1.03, 487, to_tag="t")                       # stray, after the answer
    f.request(5, "BYE", 2, to_tag="t", branch="z9hG4bK-bye")
    (meta,) = f.done()
    assert (meta["status"], meta["final_response"], meta["end_reason"]) == ("answered", 200, "bye")


def test_retransmissions_and_proxy_hops_are_not_new_messages() -> None:
    f = Feed()
    f.invite(0)
    f.invite(0.5)      # retransmission
    f.response(1, 486, to_tag="t")
    f.response(1.5, 486, to_tag="t")
    (meta,) = f.done()
    assert (meta["sip_messages"], meta["sip_packets"], meta["pcap_packets"]) == (2, 4, 4)
    assert (meta["status"], meta["ended_at"][-10:]) == ("busy", "01.000000Z")


def test_non_call_dialogs_and_unknown_in_dialog_requests_are_ignored() -> None:
    f = Feed()
    assert not f.request(0, "REGISTER", 1, call_id="r1")
    assert not f.request(0, "OPTIONS", 1, call_id="o1")
    assert not f.request(0, "BYE", 2, call_id="b1", to_tag="t")
    assert f.done() == []
    assert f.engine.counters["sip_ignored"] == 3


def test_capture_starting_mid_setup_gives_a_call() -> None:
    f = Feed()
    assert f.response(0, 180, to_tag="t")
    f.response(1, 200, to_tag="t", body=sdp(CALLEE_IP, 5000))
    assert f.send(1.1, CALLER_IP, 4000, CALLEE_IP, 5000, rtp(1, 160, 7))
    (meta,) = f.done()
    assert (meta["status"], meta["end_reason"], meta["from"]) == ("answered", "capture-end",
                                                                 "sip:alice@example.com")
    assert meta["streams"][0]["direction"] == "caller"


def test_late_retransmission_after_finish_creates_no_phantom_call() -> None:
    f = Feed(CallConfig(linger_s=1))
    answered_call(f)
    f.request(3, "BYE", 2, to_tag="tt", branch="z9hG4bK-bye")
    f.send(5, "10.9.9.9", 1, "10.9.9.8", 2, b"x")
    assert len(f.finished) == 1
    # a 200 retransmitted after the call ended: kept as a late packet of that
    # call's recording (controller/calls/late.py), never a second call
    assert f.response(6, 200, to_tag="tt", body=sdp(CALLEE_IP, 5000))
    assert len(f.done()) == 1 and f.engine.counters["sip_after_end"] == 1
    (late,) = f.engine.late_due(0, everything=True)
    assert len(late.frames) == 1 and f.engine.counters["late_packets"] == 1


def test_answered_call_times_out_after_inactivity() -> None:
    f = Feed(CallConfig(answered_timeout_s=60, setup_timeout_s=10))
    answered_call(f)
    f.send(30, CALLER_IP, 4000, CALLEE_IP, 5000, rtp(1, 160, 7))   # longer than setup timeout
    f.send(89, "10.9.9.9", 1, "10.9.9.8", 2, b"x")
    assert f.finished == []
    f.send(91, "10.9.9.9", 1, "10.9.9.8", 2, b"x")
    (meta,) = [build_recording(c).metadata for c in f.finished]
    assert (meta["end_reason"], meta["ended_at"][-10:]) == ("timeout", "30.000000Z")


def test_reinvite_moves_media_and_port_reuse_by_next_call() -> None:
    f = Feed(CallConfig(linger_s=2))
    answered_call(f)
    f.send(3, CALLEE_IP, 5060, CALLER_IP, 5060,
           sip("INVITE sip:alice@example.com SIP/2.0", cseq="1 INVITE", from_tag="tt", to_tag="ftag",
               branch="z9hG4bK-re", body=sdp(CALLEE_IP, 6000)))
    f.send(3.1, CALLER_IP, 5060, CALLEE_IP, 5060,
           sip("SIP/2.0 200 OK", cseq="1 INVITE", from_tag="tt", to_tag="ftag", branch="z9hG4bK-re",
               body=sdp(CALLER_IP, 4000)))
    assert f.send(3.2, CALLER_IP, 4000, CALLEE_IP, 6000, rtp(1, 160, 7))   # new port
    assert f.send(3.3, CALLER_IP, 4000, CALLEE_IP, 5000, rtp(2, 320, 7))   # old port, late
    f.request(4, "BYE", 2, to_tag="tt", branch="z9hG4bK-bye")
    # next call reuses the caller's port 4000 while the first one lingers
    f.invite(4.5, call_id="call-2", from_tag="f2", branch="z9hG4bK-c2", body=sdp(CALLER_IP, 4000))
    f.send(7, "10.9.9.9", 1, "10.9.9.8", 2, b"x")
    assert [c.call_ids for c in f.finished] == [["call-1"]]
    assert f.send(7.1, CALLEE_IP, 5000, CALLER_IP, 4000, rtp(1, 160, 9))   # belongs to call-2
    metas = f.done()
    assert metas[0]["status"] == "answered" and len(metas[0]["streams"]) == 2
    assert metas[0]["streams"][0]["direction"] == "caller"
    assert metas[1]["call_ids"] == ["call-2"] and metas[1]["streams"][0]["direction"] == "callee"


def test_malformed_input_is_counted_never_raised() -> None:
    f = Feed()
    answered_call(f)
    cut = sip("INFO sip:bob@example.com SIP/2.0", cseq="2 INFO", to_tag="tt", body=sdp(CALLER_IP, 1))
    assert f.send(3, CALLER_IP, 5060, CALLEE_IP, 5060, cut[:len(cut) // 2 + 40])  # cut in half
    assert f.send(3.1, CALLER_IP, 4000, CALLEE_IP, 5000, b"\x00garbage on a media port")
    assert f.send(3.2, CALLER_IP, 4000, CALLEE_IP, 5000, b"\x80\x00\x00")         # short RTP
    assert f.send(3.3, CALLER_IP, 4000, CALLEE_IP, 5000, b"\x9f" + b"\x00" * 11)  # CSRCs past end
    assert not f.send(3.4, CALLER_IP, 5060, CALLEE_IP, 5060, b"INVITE sip:x SIP/2.0\r\n\r\n")
    assert not f.send(3.5, CALLER_IP, 5060, CALLEE_IP, 5060, b"SIP/2.0 200 OK\r\nCSeq: x\r\n\r\n")
    bad_sdp = sip("SIP/2.0 200 OK", to_tag="tt", body="v=0\r\nm=audio x RTP/AVP 0\r\n")
    assert f.send(3.6, CALLEE_IP, 5060, CALLER_IP, 5060, bad_sdp)
    c = f.engine.counters
    # garbage on an audio (RTP) port is not media: counted as refused, not kept
    assert c["sip_errors"] >= 3 and c["media_refused"] == 1 and c["rtp_errors"] == 2
    assert c["sdp_errors"] == 1 and c["internal_errors"] == 0
    (meta,) = f.done()
    assert meta["sip_errors"] == 1 and meta["media_refused"] == 1 and meta["status"] == "answered"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([5060, 4000, 4001, 5000, 9999]))
def test_random_payloads_never_raise(payload: bytes, port: int) -> None:
    f = Feed()
    answered_call(f)
    f.send(3, CALLER_IP, 5060, CALLEE_IP, port, payload)
    f.send(3, CALLER_IP, port, CALLEE_IP, 5060, b"SIP/2.0 200 OK\r\n" + payload)
    f.done()
    assert f.engine.counters["internal_errors"] == 0


def test_ipv6_and_other_linktypes_in_call_json() -> None:
    f = Feed()
    a, b = "fd00::1", "fd00::2"
    f.send(0, a, 5060, b, 5060, sip("INVITE sip:bob@example.com SIP/2.0", body=sdp(a, 4000)))
    f.send(1, b, 5060, a, 5060, sip("SIP/2.0 200 OK", to_tag="t", body=sdp(b, 5000)))
    f.send(1.1, b, 5000, a, 4000, rtp(1, 160, 5))
    f.send(1.2, CALLER_IP, 5060, CALLEE_IP, 5060,   # a second sensor on Ethernet
           sip("INFO sip:bob@example.com SIP/2.0", cseq="2 INFO", to_tag="t"), sensor="s2")
    (meta,) = f.done()
    assert meta["streams"][0]["src"] == "[fd00::2]:5000" and meta["streams"][0]["dst"] == "[fd00::1]:4000"
    assert meta["sensors"] == ["s1", "s2"] and meta["pcap_skipped"] == 1 and meta["pcap_packets"] == 3


def test_rtp_stream_sequence_accounting() -> None:
    s = RtpStream(b"a", 1, b"b", 2, 3, 0, {}, 0, 65530)
    seqs = [65530, 65531, 65533, 65532, 65532, 65535, 0, 1, 4, 2, 2]  # wrap, reorder, dup, gap
    for i, q in enumerate(seqs):
        s.add(i, 0, q, i * 160, -1)
    assert (s.packets, s.duplicates, s.lost) == (11, 2, 2)   # 65534 and 3 missing
    s.add(20, 0, 30000, 0, -1)   # a big jump alone is not trusted ...
    s.add(21, 0, 30001, 0, -1)   # ... until the next packet confirms it: new run
    s.add(22, 0, 30003, 0, -1)
    assert (s.packets, s.lost) == (14, 3)


def test_active_summary() -> None:
    f = Feed()
    f.invite(0)
    f.response(1, 180, to_tag="t")
    (row,) = f.engine.active()
    assert row["call_ids"] == ["call-1"] and row["status"] == "ringing"
    assert row["from"] == "sip:alice@example.com" and row["started_at"].startswith("1970-01-01T00:00:00")

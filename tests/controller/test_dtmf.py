"""DTMF in call.json: RFC 2833/4733 events and SIP INFO, on the public captures (digits
exact, times and durations from tshark) and on constructed calls (repeated end
packets, relayed copies, retransmitted INFO, both directions)."""
from __future__ import annotations

import re
import struct

import pytest

from controller.media.dtmf import parse_info_body
from tests.conftest import capture, require_tool
from tests.controller import tshark_calls as tc
from tests.controller.test_calls_engine import CALLEE_IP, CALLER_IP, Feed, answered_call, rtp, sip

S = 1_000_000_000


@pytest.fixture(scope="module", autouse=True)
def _tshark() -> None:
    require_tool("tshark")


def _call(name: str, call_id_part: str) -> tuple:
    run = tc.engine_run(capture(name))
    ((call, rec),) = [(c, r) for c, r in zip(run.calls, run.recordings)
                      if any(call_id_part in cid for cid in c.call_ids)]
    return call, rec.metadata


def test_rfc2833_digits_of_sip_dtmf2_once_each_at_tsharks_times() -> None:
    path = capture("SIP_DTMF2.cap")
    call, meta = _call("SIP_DTMF2.cap", "25672@")
    start = tc.expected_calls(path)[call.call_ids[0]].first_ns
    # tshark: one key press = the packets of one SSRC with one RTP timestamp
    presses: dict[tuple[int, int], list] = {}
    for r in tc.fields(path, "rtpevent", ("frame.time_epoch", "rtp.ssrc", "rtp.timestamp",
                                           "rtpevent.event_id", "rtpevent.duration"),
                       tc.RTP_HEURISTICS):
        hit = presses.setdefault((int(r[1], 16), int(r[2])), [tc.epoch_ns(r[0]), int(r[3]), 0])
        hit[2] = max(hit[2], int(r[4]))
    expected = sorted(presses.values())
    assert "".join(str(e[1]) for e in expected) == "6789123"
    got = meta["dtmf"]
    assert "".join(d["digit"] for d in got) == "6789123"
    for d, (t, _, duration) in zip(got, expected):
        assert abs(d["at_s"] - (t - start) / S) <= 0.0005
        assert d["duration_ms"] == duration // 8 == 120
        assert (d["source"], d["direction"]) == ("rfc4733", "caller")


def test_sip_info_digits_of_dtmfsipinfo_at_tsharks_times() -> None:
    path = capture("DTMFsipinfo.pcap")
    call, meta = _call("DTMFsipinfo.pcap", "2091060b")
    start = tc.expected_calls(path)[call.call_ids[0]].first_ns
    rows = tc.fields(path, 'sip.Method == "INFO"', ("frame.time_epoch", "sip.Content-Type", "text"),
                     occurrence="a")   # the body lines are "text" items of the message body
    expected = []
    for t, ctype, text in rows:
        assert ctype == "application/dtmf-relay"
        signal = re.search(r"Signal=\s*(\S+?)\\r\\n", text).group(1)
        duration = int(re.search(r"Duration=\s*(\d+)", text).group(1))
        expected.append((tc.epoch_ns(t), signal, duration))
    assert [e[1] for e in expected] == ["1", "3", "4", "2"]
    assert [d["digit"] for d in meta["dtmf"]] == ["1", "3", "4", "2"]
    for d, (t, _, duration) in zip(meta["dtmf"], expected):
        assert abs(d["at_s"] - (t - start) / S) <= 0.0005
        assert (d["duration_ms"], d["source"], d["direction"]) == (duration, "sip-info", "caller")


def test_captures_without_dtmf_have_none() -> None:
    for name in ("MagicJack-_short_call.pcap", "rtp_conversacion.pcap", "aaa.pcap"):
        for rec in tc.engine_run(capture(name)).recordings:
            assert rec.metadata["dtmf"] == []


# -- constructed --------------------------------------------------------------------------

def event(code: int, end: bool, duration: int) -> bytes:
    return struct.pack("!BBH", code, (0x80 if end else 0) | 10, duration)


def press(f: Feed, t: float, seq: int, ts: int, code: int, src=(CALLER_IP, 4000),
          dst=(CALLEE_IP, 5000), ssrc: int = 0xA, ends: int = 3) -> int:
    """One key press as phones send it: start (marker), updates every 50 ms, the end
    packet `ends` times (same timestamp, same duration); returns the next seq."""
    for i in range(3):
        pkt = bytearray(rtp(seq, ts, ssrc, 101, event(code, False, 400 * (i + 1))))
        if i == 0:
            pkt[1] |= 0x80
        f.send(t + 0.05 * i, *src, *dst, bytes(pkt))
        seq += 1
    for i in range(ends):
        f.send(t + 0.15 + 0.02 * i, *src, *dst, rtp(seq, ts, ssrc, 101, event(code, True, 1280)))
        seq += 1
    return seq


def test_repeated_end_packets_and_a_resent_packet_give_one_digit_each() -> None:
    f = Feed()
    answered_call(f)
    seq = press(f, 3.0, 10, 8000, 5)
    f.send(3.01, CALLER_IP, 4000, CALLEE_IP, 5000, rtp(10, 8000, 0xA, 101, event(5, False, 400)))
    seq = press(f, 4.0, seq, 16000, 5)              # the same key again: a new press
    seq = press(f, 5.0, seq, 24000, 11, ends=1)     # '#', one end packet only
    press(f, 6.0, 0, 32000, 10, src=(CALLEE_IP, 5000), dst=(CALLER_IP, 4000), ssrc=0xB)  # '*'
    (meta,) = f.done()
    assert [(d["digit"], d["at_s"], d["duration_ms"], d["direction"]) for d in meta["dtmf"]] == [
        ("5", 3.0, 160, "caller"), ("5", 4.0, 160, "caller"), ("#", 5.0, 160, "caller"),
        ("*", 6.0, 160, "callee")]
    assert {d["source"] for d in meta["dtmf"]} == {"rfc4733"}


def test_a_press_relayed_on_a_second_stream_is_one_digit() -> None:
    """A media relay (same SSRC on two legs of the call) shows each event twice."""
    f = Feed()
    answered_call(f)
    press(f, 3.0, 10, 8000, 7)
    press(f, 3.02, 200, 8000, 7, src=("10.0.0.5", 6000), ssrc=0xC)   # the relay's copy
    press(f, 4.0, 20, 16000, 7)                                      # a second press
    (meta,) = f.done()
    assert len(meta["streams"]) == 2
    assert [(d["digit"], d["at_s"]) for d in meta["dtmf"]] == [("7", 3.0), ("7", 4.0)]


def info(digit_body: str, cseq: int, ctype: str = "application/dtmf-relay", from_callee: bool = False,
         branch: str = "") -> bytes:
    msg = sip("INFO sip:bob@example.com SIP/2.0", cseq=f"{cseq} INFO", to_tag="tt",
              branch=branch or f"z9hG4bK-info{cseq}", from_tag="tt" if from_callee else "ftag")
    head, _, _ = msg.partition(b"\r\n\r\n")
    head = re.sub(rb"Content-Length: \d+", f"Content-Length: {len(digit_body)}".encode(), head)
    return head + f"\r\nContent-Type: {ctype}".encode() + b"\r\n\r\n" + digit_body.encode()


def test_sip_info_both_types_both_directions_retransmission_once() -> None:
    f = Feed()
    answered_call(f)
    f.send(3, CALLER_IP, 5060, CALLEE_IP, 5060, info("Signal=9\r\nDuration=250\r\n", 2))
    f.send(3.5, CALLER_IP, 5060, CALLEE_IP, 5060, info("Signal=9\r\nDuration=250\r\n", 2))  # resent
    f.send(4, CALLER_IP, 5060, CALLEE_IP, 5060, info("Signal=9\r\nDuration=250\r\n", 3))   # again
    f.send(5, CALLEE_IP, 5060, CALLER_IP, 5060, info("#", 7, "application/dtmf", from_callee=True))
    f.send(6, CALLER_IP, 5060, CALLEE_IP, 5060, info("hello", 4, "text/plain"))
    (meta,) = f.done()
    assert [(d["digit"], d["at_s"], d["duration_ms"], d["source"], d["direction"])
            for d in meta["dtmf"]] == [("9", 3.0, 250, "sip-info", "caller"),
                                       ("9", 4.0, 250, "sip-info", "caller"),
                                       ("#", 5.0, None, "sip-info", "callee")]


@pytest.mark.parametrize("ctype, body, expected", [
    ("application/dtmf-relay", b"Signal=5\r\nDuration=160\r\n", ("5", 160)),
    ("application/dtmf-relay", b"signal = *\nduration= 100", ("*", 100)),
    ("application/dtmf-relay", b"Signal=11\r\n", ("#", None)),
    ("application/dtmf-relay", b"Signal=d\r\nDuration=x\r\n", ("D", None)),
    ("application/dtmf", b"7", ("7", None)),
    ("application/dtmf", b" # \r\n", ("#", None)),
    ("application/dtmf", b"Signal=3\r\nDuration=90", ("3", 90)),
    ("application/dtmf-relay", b"Duration=160\r\n", None),
    ("application/dtmf-relay", b"Signal=Z\r\n", None),
    ("application/dtmf", b"12345", None),
])
def test_info_bodies(ctype: str, body: bytes, expected) -> None:
    assert parse_info_body(ctype, body) == expected


def test_unrecorded_call_has_no_digits() -> None:
    """Recording rules that leave a call's media out leave its digits out too."""
    f = Feed()
    answered_call(f)
    f.send(3, CALLER_IP, 5060, CALLEE_IP, 5060, info("Signal=9\r\nDuration=250\r\n", 2))
    f.finished += f.engine.finish_all()
    (call,) = f.finished
    call.recorded = False
    from controller.output.finalize import build_recording
    assert build_recording(call).metadata["dtmf"] == []


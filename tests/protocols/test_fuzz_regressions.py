"""Inputs that broke a parser's contract under scripts/fuzz, kept inline as regressions.

Each test names the target, seed and index that found it and what was wrong. The
inputs are inline (in their smallest form), since `scripts/fuzz TARGET --seed S --index I`
rebuilds an input only while the generators stay as they were.
"""
from __future__ import annotations

import time

import pytest

from controller.calls.tcpstream import BROKEN, MESSAGE, SYN, TcpStream, find_start
from protocols.errors import SdpError, SipError
from protocols.fragments import Reassembler
from protocols.layers import decode
from protocols.sdp import parse_sdp
from protocols.sip import frame_stream, parse_sip, split_stream

RAW = 101


def _add(r: Reassembler, ts: int, hexframe: str):
    frame = bytes.fromhex(hexframe)
    return r.add(ts, RAW, frame, decode(RAW, frame))


def test_fragments_empty_last_fragments_stay_within_max_datagrams() -> None:
    """fragments, seed 1, index 466: "3 datagrams pending, limit 2". A last fragment
    without data (offset 1280, MF 0, 20-byte IPv4 packet) of a datagram not seen yet
    stored a pending datagram and returned before the bounds were applied, so any
    number of them were kept until the timeout."""
    r = Reassembler(max_datagrams=2)
    for ident in range(10):
        # IPv4, total length 20, id, offset 1280 / MF 0, UDP, 10.0.0.1 -> 10.0.0.2
        _add(r, ident, f"45000014{ident:04x}00a0401100000a0000010a000002")
        assert len(r) <= 2
    assert r.counters["evicted"] == 8


def test_fragments_a_fragment_adding_no_bytes_can_complete_the_datagram() -> None:
    """Found beside the previous one (same code path): a last fragment whose bytes were
    all held already (an empty one, or one an overlapping fragment covered) set the
    datagram's length but returned before the completion check, so a datagram whose
    bytes had all arrived waited for the timeout and was lost."""
    first = "4500002400072000401100000a0000010a00000213c413c4001800005245474953544552"
    middle = "4500001c00072002401100000a0000010a000002207369703a782053"   # [16, 24), MF
    empty_last = "4500001400070003401100000a0000010a000002"                # [24, 24), MF 0
    overlap = "4500002400072001401100000a0000010a0000025245474953544552207369703a782053"
    last = "4500001c00070002401100000a0000010a000002207369703a782053"     # [16, 24), MF 0
    want = bytes.fromhex("13c413c4001800005245474953544552207369703a782053")

    r = Reassembler()
    assert _add(r, 1, first) is None and _add(r, 2, middle) is None
    g = _add(r, 3, empty_last)
    assert g is not None and g.frame[20:] == want and len(r) == 0

    r = Reassembler()
    assert _add(r, 1, first) is None and _add(r, 2, overlap) is None
    g = _add(r, 3, last)                   # every byte already held: only the length is new
    assert g is not None and g.frame[20:] == want and len(r) == 0
    d = decode(RAW, g.frame)
    assert not d.is_fragment and d.payload_len == 16


# -- controller.calls.tcpstream: SIP over TCP ------------------------------------------------
# Found by scripts/fuzz tcp (seed 5150, index 528: a 35 KB stream of repeated start
# lines and header pieces took 2.7 s, over the 1 s bound per input). Two quadratic
# paths, each a hang for a larger segment; the inputs below are their smallest forms.

def _one_segment(payload: bytes) -> tuple[list, TcpStream, float]:
    st = TcpStream()
    st.segment(0, 99, SYN, b"", "syn")
    t = time.perf_counter()
    out = st.segment(1, 100, 0x18, payload, "seg")
    return out, st, time.perf_counter() - t


def test_tcp_find_start_is_linear_on_a_line_of_repeated_versions() -> None:
    """find_start searched again from the line start at every "SIP/2.0": 63 KB of
    them on one line took 34 s."""
    t = time.perf_counter()
    assert find_start(b"SIP/2.0" * 9000 + b"\r\nSIP/2.0 200 OK\r\n") == 63002
    assert time.perf_counter() - t < 1.0


def test_tcp_start_lines_in_a_header_section_with_a_bad_content_length() -> None:
    """Each start line inside a header section with a bad Content-Length was framed
    again, scanning to the header end each time: this 132 KB segment took 22 s. The
    chunks are the same as before: one BROKEN per start line, then the message."""
    ringing = b"SIP/2.0 180 Ringing\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    out, st, dt = _one_segment(b"SIP/2.0 200 OK\r\nl: x\r\n" * 6000 + b"\r\n" + ringing)
    assert dt < 2.0
    assert [c.kind for c in out] == [BROKEN] * 6000 + [MESSAGE] and out[-1].data == ringing
    assert {b.data for b in out[:-2]} == {b"SIP/2.0 200 OK\r\nl: x\r\n"}
    assert st.counters["tcp_resyncs"] == 6000 and st.counters["tcp_broken"] == 6000


def test_tcp_start_lines_without_a_header_end() -> None:
    """96 KB of start lines and no empty line: each start line more than 64 KB from the
    end was framed again, scanning the whole buffer: 4.5 s. The first 1904 lines come
    back as BROKEN, the last 64 KB wait for their header end, as before."""
    out, st, dt = _one_segment(b"SIP/2.0 200 OK\r\n" * 6000)
    assert dt < 2.0
    assert [c.kind for c in out] == [BROKEN] * 1904
    assert st.counters["tcp_skipped_bytes"] == 1904 * 16 and len(st.buf) == 65536 and st.synced


# -- numbers longer than int() converts ---------------------------------------------------
# Python refuses int() of more than 4300 digits (sys.get_int_max_str_digits) with a plain
# ValueError, which escaped the parsers. Found by scripts/fuzz tcp (seed 5150, index 15:
# "l: " and 4301 nines in a SIP-over-TCP stream, ValueError out of frame_stream and so out
# of TcpReassembler.segment), sip and sdp (the runs after the digit tokens were added).

DIGITS = "9" * 4301


def test_sip_content_length_with_too_many_digits() -> None:
    msg = f"SIP/2.0 200 OK\r\nCall-ID: a\r\nContent-Length: {DIGITS}\r\n\r\n".encode()
    with pytest.raises(SipError, match="bad Content-Length"):
        parse_sip(msg)
    with pytest.raises(SipError):
        split_stream(msg)
    spans, rest, error = frame_stream(msg)
    assert spans == [] and rest == 0 and error.startswith("bad Content-Length")


def test_sip_cseq_with_too_many_digits() -> None:
    msg = parse_sip(f"SIP/2.0 200 OK\r\nCSeq: {DIGITS} INVITE\r\n\r\n".encode())
    with pytest.raises(SipError, match="bad CSeq"):
        msg.cseq


def test_tcp_stream_with_a_content_length_of_too_many_digits() -> None:
    ringing = b"SIP/2.0 180 Ringing\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    out, st, _ = _one_segment(b"SIP/2.0 200 OK\r\nl: " + DIGITS.encode() + b"\r\n\r\n" + ringing)
    assert [c.kind for c in out] == [BROKEN, MESSAGE] and out[1].data == ringing


@pytest.mark.parametrize("line", [f"m=audio {DIGITS} RTP/AVP 0", f"m=audio {DIGITS}/2 RTP/AVP 0"])
def test_sdp_media_port_with_too_many_digits(line: str) -> None:
    with pytest.raises(SdpError, match="malformed m= port"):
        parse_sdp(f"v=0\r\n{line}\r\n".encode())


def test_sdp_attributes_with_too_many_digits_are_ignored() -> None:
    body = ("v=0\r\nm=audio 4000 RTP/AVP 0 96 97\r\n"
            f"a=rtpmap:96 telephone-event/{DIGITS}\r\na=rtpmap:97 opus/48000/{DIGITS}\r\n"
            f"a=rtcp:{DIGITS}\r\n").encode()
    md = parse_sdp(body).media[0]
    assert md.rtpmap == {0: ("PCMU", 8000, 1)} and md.rtcp_port is None


# -- the Content-Length pattern of frame_stream -------------------------------------------
# Its lazy value followed by optional blanks backtracked over runs of blanks: found by
# scripts/fuzz sip (seed 7070, index 70881: "l:", zeros, 11,500 spaces, 3.6 s) and tcp
# (seed 7070, index 102604: "l: ", 4301 nines, 17,000 tabs in a segment: killed as a hang
# after 10 s). A lone CR in the line made it worse: 2,000 spaces took 35 s.

def _framed_quickly(buf: bytes) -> tuple[list, int, str | None]:
    t = time.perf_counter()
    got = frame_stream(buf)
    assert time.perf_counter() - t < 1.0
    return got


def test_sip_content_length_with_a_long_run_of_blanks() -> None:
    spans, rest, error = _framed_quickly(
        b"SIP/2.0 200 OK\r\nl:" + b"0" * 50 + b" " * 11500 + b"1\r\n\r\n")
    assert spans == [] and rest == 0 and error.startswith("bad Content-Length")
    msg = b"SIP/2.0 200 OK\r\nContent-Length: 0" + b"\t" * 20000 + b"\r\n\r\n"
    assert _framed_quickly(msg) == ([(0, len(msg))], len(msg), None)


def test_sip_content_length_line_with_blanks_and_a_lone_cr() -> None:
    msg = b"SIP/2.0 200 OK\r\nl:" + b" " * 2000 + b"5\rX\r\n\r\n"   # not a Content-Length line
    assert _framed_quickly(msg) == ([(0, len(msg))], len(msg), None)


def test_tcp_segment_with_a_long_run_of_tabs_in_a_content_length() -> None:
    out, _, dt = _one_segment(b"SIP/2.0 200 OK\r\nl: " + b"9" * 4301 + b"\t" * 17000 + b"x\r\n\r\n")
    assert dt < 1.0 and [c.kind for c in out] == [BROKEN]

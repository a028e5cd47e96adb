"""SIP parsing against tshark's SIP dissector, and edge cases."""
from __future__ import annotations

import re

import pytest

from protocols.errors import DecodeError, SipError
from protocols.layers import decode, ip_to_str
from protocols.pcapfile import read_frames
from protocols.sip import looks_like_sip, parse_sip, split_stream
from tests.conftest import capture
from tests.protocols._samples import udp_frames
from tests.protocols._tshark import first, table

UDP_CAPTURES = [
    "SIP_DTMF2.cap", "aaa.pcap", "MagicJack-_short_call.pcap", "ipv6frag.pcap",
    "SIP-RTP-Normal_Call_two_parties.pcap", "SIP_CALL_RTP_G711", "DTMFsipinfo.pcap",
    "FAX-Call-t38-CA-TDM-SIP-FB-1.pcap",
]


@pytest.mark.parametrize("name", UDP_CAPTURES)
def test_sip_fields_match_tshark(name: str) -> None:
    seen = 0
    for row, _d, payload in udp_frames(name):
        frame = first(row, "frame.number")
        expected = first(row, "sip.Call-ID")
        mine = looks_like_sip(payload)
        assert mine == (expected is not None), f"frame {frame}"
        if not mine:
            continue
        seen += 1
        msg = parse_sip(payload)
        assert msg.call_id == expected, frame
        assert msg.cseq == (int(first(row, "sip.CSeq.seq")), first(row, "sip.CSeq.method")), frame
        if msg.is_request:
            assert msg.method == first(row, "sip.Method"), frame
            assert msg.request_uri == first(row, "sip.r-uri"), frame
            assert msg.status is None
        else:
            assert msg.status == int(first(row, "sip.Status-Code")), frame
            assert msg.method is None
        assert msg.from_tag == first(row, "sip.from.tag"), frame
        assert msg.to_tag == first(row, "sip.to.tag"), frame
        assert msg.via_branch == first(row, "sip.Via.branch"), frame
        user, host = first(row, "sip.from.user"), first(row, "sip.from.host")
        assert msg.from_uri is not None
        hostport = msg.from_uri.split(":", 1)[1]
        assert re.fullmatch(re.escape(f"{user}@{host}" if user else host) + r"(:\d+)?", hostport), frame
        if first(row, "sip.to.user"):
            assert (msg.to_uri or "").split(":", 1)[1].startswith(first(row, "sip.to.user") + "@")
    assert seen > 0


def _tcp_flows(name: str) -> tuple[dict, list[tuple[tuple, int]]]:
    """Per-flow payload segments in capture order (retransmissions dropped)."""
    path = capture(name)
    flows: dict[tuple, list[tuple[int, bytes]]] = {}
    nxt: dict[tuple, int] = {}
    order = []
    for n, (_, lt, data) in enumerate(read_frames(path), 1):
        try:
            d = decode(lt, data)
        except DecodeError:
            continue
        if d.proto != 6 or d.payload_len == 0:
            continue
        key = (d.src, d.sport, d.dst, d.dport)
        if key in nxt and d.tcp_seq < nxt[key]:
            continue  # retransmission
        nxt[key] = d.tcp_seq + d.payload_len
        flows.setdefault(key, []).append((n, data[d.payload_offset:d.payload_offset + d.payload_len]))
        order.append((key, n))
    return flows, order


@pytest.mark.parametrize("name,count", [("sip_ipv4_tcp.pcap", 7),
                                        ("sip_ipv4_tcp_fragmented.pcap", 406)])
def test_split_stream_over_tcp_matches_tshark(name: str, count: int) -> None:
    flows, _ = _tcp_flows(name)
    rows = table(capture(name))
    total = 0
    for key, segments in flows.items():
        src, sport, dst, dport = key
        # tshark (with TCP reassembly) reports each message at its last segment
        expected = []
        for row in rows:
            if (first(row, "ip.src"), first(row, "ip.dst")) == (ip_to_str(src), ip_to_str(dst)) \
                    and first(row, "tcp.srcport") == str(sport) and first(row, "tcp.dstport") == str(dport):
                expected += list(zip(row["sip.Call-ID"], row["sip.CSeq.seq"]))
        got = []
        buf = b""
        for _, payload in segments:
            msgs, buf = split_stream(buf + payload)
            for m in msgs:
                msg = parse_sip(m)
                got.append((msg.call_id, str(msg.cseq[0])))
        assert buf == b""
        assert got == expected, key
        total += len(got)
    assert total == count


INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds ;received=10.0.0.1,"
    b" SIP/2.0/UDP proxy.example.com;branch=z9hG4bKother\r\n"
    b"Max-Forwards: 70\r\n"
    b'To: "Bob, the <builder>" <sip:bob@biloxi.example.com;user=phone?x=y>\r\n'
    b"From: Alice <sip:+1555;npdi@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
    b"Subject: a folded\r\n"
    b"   subject line\r\n"
    b"Content-Type: Application/SDP; charset=utf-8\r\n"
    b"Content-Length: 10\r\n\r\n"
    b"v=0\r\no=- 1\r\n"
)


def test_parse_full_request() -> None:
    msg = parse_sip(INVITE + b"trailing junk")
    assert msg.is_request and msg.method == "INVITE"
    assert msg.request_uri == "sip:bob@biloxi.example.com"
    assert msg.body == b"v=0\r\no=- 1"
    assert msg.cseq == (314159, "INVITE")
    assert msg.call_id == "a84b4c76e66710@pc33.atlanta.example.com"
    assert msg.from_uri == "sip:+1555;npdi@atlanta.example.com"
    assert msg.to_uri == "sip:bob@biloxi.example.com"
    assert msg.from_tag == "1928301774"
    assert msg.to_tag is None
    assert msg.via_branch == "z9hG4bK776asdhds"
    assert msg.content_type == "application/sdp"
    assert msg.header("SUBJECT") == "a folded subject line"
    assert msg.header("s") == "a folded subject line"
    assert msg.header("x-missing") is None
    assert len(msg.headers["via"]) == 1


def test_compact_forms_and_lf_only() -> None:
    raw = (b"SIP/2.0 180 Ringing\n"
           b"v: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKabc\n"
           b"v: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKdef\n"
           b"f: sip:a@x;tag=aa\nt: <sip:b@y>;tag=bb\ni: cid-1\nCSeq: 2 INVITE\n"
           b"m: <sip:a@10.0.0.1>\nk: 100rel\nc: application/sdp\no: refer\nr: <sip:c@z>\n"
           b"b: <sip:d@z>\nx: 1800;refresher=uac\nu: talk\ne: gzip\nl: 3\n\nabcdef")
    msg = parse_sip(raw)
    assert not msg.is_request and msg.status == 180 and msg.reason == "Ringing"
    assert msg.headers["via"] == ["SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKabc",
                                  "SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKdef"]
    assert msg.via_branch == "z9hG4bKabc"
    assert (msg.from_uri, msg.from_tag, msg.to_uri, msg.to_tag) == ("sip:a@x", "aa", "sip:b@y", "bb")
    assert msg.call_id == "cid-1"
    for name in ("contact", "supported", "content-type", "event", "refer-to", "referred-by",
                 "session-expires", "allow-events", "content-encoding", "content-length"):
        assert name in msg.headers, name
    assert msg.body == b"abc"


def test_response_without_reason_and_no_content_length() -> None:
    msg = parse_sip(b"SIP/2.0 200\r\nCall-ID: x\r\n\r\nbody")
    assert (msg.status, msg.reason, msg.body) == (200, "", b"body")


@pytest.mark.parametrize("raw", [
    INVITE[:len(INVITE) - 5],  # body cut in half
    INVITE[:200],  # no end of headers
    b"",
    b"HELLO WORLD\r\n\r\n",
    b"INVITE sip:x SIP/3.0\r\n\r\n",
    b"SIP/2.0 2000 OK\r\n\r\n",
    b"SIP/2.0 200 OK\r\nContent-Length: ten\r\n\r\n",
    b"SIP/2.0 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"SIP/2.0 200 OK\r\nno colon here\r\n\r\n",
    b"SIP/2.0 200 OK\r\n continuation first\r\n\r\n",
])
def test_malformed_raises_sip_error(raw: bytes) -> None:
    with pytest.raises(SipError):
        parse_sip(raw)


def test_cseq_errors() -> None:
    with pytest.raises(SipError):
        parse_sip(b"SIP/2.0 200 OK\r\n\r\n").cseq
    with pytest.raises(SipError):
        parse_sip(b"SIP/2.0 200 OK\r\nCSeq: INVITE\r\n\r\n").cseq


@pytest.mark.parametrize("payload,expected", [
    (b"INVITE sip:bob@x SIP/2.0\r\n", True),
    (b"MESSAGE sips:bob@x SIP/2.0\n", True),
    (b"INVITE tel:+15551234 SIP/2.0\r\n", True),
    (b"SIP/2.0 100 Trying\r\n", True),
    (memoryview(b"SIP/2.0 486 Busy Here\r\n"), True),
    (b"SIP/2.0 099 Odd\r\n", False),
    (b"GET / HTTP/1.1\r\n", False),
    (b"INVITE http://x SIP/2.0\r\n", False),
    (b"\x80\x08\x00\x01", False),
    (b"", False),
])
def test_looks_like_sip(payload: bytes, expected: bool) -> None:
    assert looks_like_sip(payload) is expected


def test_split_stream_two_messages_and_partial_third() -> None:
    m1 = b"SIP/2.0 100 Trying\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    m2 = INVITE[:-2]  # exactly Content-Length bytes of body
    m3 = b"BYE sip:x@y SIP/2.0\r\nl: 4\r\n\r\nab"
    msgs, rest = split_stream(b"\r\n\r\n" + m1 + b"\r\n" + m2 + m3)
    assert msgs == [m1, m2]
    assert rest == m3
    msgs, rest = split_stream(rest + b"cd")
    assert msgs == [m3 + b"cd"] and rest == b""
    for partial in (b"INV", b"INVITE sip:x@y SIP/2.0\r", b"SIP/2.0 200 OK\r\nCSeq: 1"):
        assert split_stream(partial) == ([], partial)
    assert split_stream(b"\r\n\r\n") == ([], b"")


@pytest.mark.parametrize("buf", [b"\x16\x03\x01\x02\x00", b"GET / HTTP/1.1\r\n\r\n",
                                 b"SIP/2.0 200 OK\r\nContent-Length: x\r\n\r\n"])
def test_split_stream_rejects_non_sip(buf: bytes) -> None:
    with pytest.raises(SipError):
        split_stream(buf)

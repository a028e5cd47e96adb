"""Packets built byte by byte for the flood / SDP-steering tests (Ethernet, IPv4, UDP)."""
from __future__ import annotations

import struct

from protocols.layers import str_to_ip

S = 1_000_000_000


def udp_frame(src: str, sport: int, dst: str, dport: int, payload: bytes) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), 1, 0, 64, 17, 0,
                     str_to_ip(src), str_to_ip(dst))
    return b"\x00" * 12 + b"\x08\x00" + ip + struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def sdp(ip: str, lines: list[str]) -> str:
    return (f"v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n" + "".join(lines))


def audio_line(port: int) -> str:
    return f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"


def sip(first: str, call_id: str, cseq: str, from_tag: str, to_tag: str | None, via: str,
        body: str = "") -> bytes:
    to = "<sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else "")
    head = [first, f"Via: SIP/2.0/UDP {via}:5060;branch=z9hG4bK-{call_id}-{cseq.split()[0]}-{first[:3]}",
            f"From: <sip:alice@example.com>;tag={from_tag}", f"To: {to}", f"Call-ID: {call_id}",
            f"CSeq: {cseq}", f"Contact: <sip:x@{via}:5060>", f"Content-Length: {len(body.encode())}"]
    if body:
        head.append("Content-Type: application/sdp")
    return ("\r\n".join(head) + "\r\n\r\n" + body).encode()


def rtp(seq: int, ts: int, ssrc: int, payload: bytes = b"\xff" * 160, pt: int = 0) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


def dns_query(qid: int, name: bytes = b"\x07example\x03com\x00") -> bytes:
    """A DNS query whose ID makes it start like RTP version 2 when qid >= 0x8000."""
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + name + b"\x00\x01\x00\x01"

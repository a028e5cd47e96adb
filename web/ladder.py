"""The SIP ladder (call-flow) of a recording: its call.pcap bytes in, diagram data out.

`ladder(pcap)` reads a classic pcap (or pcapng) file from memory with the
project's own parsers: link layer, VLAN and mirror tunnels (`protocols.layers`),
IPv4/IPv6 fragment reassembly (`protocols.fragments`), SIP over UDP and SIP over
TCP (each direction of a connection rebuilt in sequence order and framed by
Content-Length, `protocols.sip.frame_stream`).  A message carried by several TCP
segments is dated and placed at the segment that completes it, as tshark does.

The result is data only (no HTML): `Ladder.hosts` are the diagram's columns, one
per "IP:port" endpoint ("[v6addr]:port" for IPv6) in order of first appearance,
and `Ladder.messages` its arrows in capture order.  Bad packets are skipped and
counted (`Ladder.skipped`), a file cut short keeps what came before the cut
(`Ladder.error` says where), and at most `MAX_MESSAGES` arrows are kept
(`Ladder.truncated`).  Only bytes that are no capture file at all raise
`LadderError`.
"""
from __future__ import annotations

import io
import ipaddress
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from protocols.fragments import Reassembler
from protocols.layers import decode
# the reader of read_frames(path), on bytes in memory (no public bytes reader yet)
from protocols.pcapfile import CaptureFileError, read_frames_from
from protocols.sip import SipMessage, frame_stream, looks_like_sip, parse_sip

__all__ = ["MAX_MESSAGES", "Ladder", "LadderError", "LadderMessage", "ladder"]

MAX_MESSAGES = 5000          # arrows kept; the rest of a huge call is cut (`truncated`)
MAX_STREAM_BUFFER = 256 * 1024  # bytes of one unfinished SIP-over-TCP message
MAX_AHEAD_SEGMENTS = 64      # out-of-order TCP segments held per direction
_SUMMARY_MAX = 200
_UDP, _TCP = 17, 6
_SYN = 0x02
_MASK, _HALF = 0xFFFFFFFF, 0x80000000
_EPOCH = datetime(1970, 1, 1)
_PCAP_LE = (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1")
_PCAP_BE = (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d")
_PCAPNG = b"\x0a\x0d\x0d\x0a"
_NAME = "call.pcap"
# what a malformed packet may raise in the parsers (DecodeError and SipError are ValueErrors)
_BAD_PACKET = (ValueError, IndexError, struct.error, OverflowError)


class LadderError(ValueError):
    """The bytes are not a pcap/pcapng capture file at all."""


@dataclass(frozen=True, slots=True)
class LadderMessage:
    """One arrow of the ladder: a SIP message from hosts[src] to hosts[dst]."""

    t: float                 # seconds since the first SIP message
    at: str                  # capture time, ISO 8601 UTC: "2024-05-01T12:00:00.123456Z"
    src: int                 # index into Ladder.hosts
    dst: int
    label: str               # request: "INVITE"; response: "200 OK"
    is_request: bool
    call_id: str             # "" when absent
    cseq: str                # "1 INVITE" ("" when absent)
    retransmission: bool     # same Call-ID, CSeq, method/status, Via branch and direction seen before
    has_sdp: bool
    transport: str           # "UDP" or "TCP"
    summary: str             # the start line, for a tooltip


@dataclass(slots=True)
class Ladder:
    """The SIP ladder of a capture."""

    hosts: list[str] = field(default_factory=list)
    messages: list[LadderMessage] = field(default_factory=list)
    # frames that did not decode (malformed, or not IP: ARP...), SIP messages that did not
    # parse, and pieces of SIP-over-TCP streams lost to gaps or unframable bytes
    skipped: int = 0
    truncated: bool = False  # more than MAX_MESSAGES SIP messages: the rest is left out
    error: str | None = None  # why reading stopped early (a file cut short), else None


def _frames(pcap: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(ts_ns, linktype, frame) of the capture; LadderError when it is no capture file."""
    magic = bytes(pcap[:4])
    if magic in _PCAP_LE or magic in _PCAP_BE:
        if len(pcap) < 24:
            raise LadderError("not a pcap file: truncated pcap file header")
    elif magic != _PCAPNG:
        raise LadderError(f"not a pcap file: unknown file magic {magic.hex() or '(empty)'}")
    return read_frames_from(io.BytesIO(pcap), _NAME)


def _host(ip: bytes, port: int) -> str:
    addr = ipaddress.ip_address(ip)
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"


def _iso(ts_ns: int) -> str:
    return (_EPOCH + timedelta(microseconds=ts_ns // 1000)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _at_boundary(payload: bytes) -> bool:
    """Does a TCP segment start a SIP message (after CRLF keep-alives), or only hold CRLFs?"""
    rest = payload.lstrip(b"\r\n")
    return not rest or looks_like_sip(rest)


class _Stream:
    """One direction of one TCP connection: segments in sequence order -> SIP messages."""

    __slots__ = ("next", "buf", "ahead", "sip")

    def __init__(self) -> None:
        self.next: int | None = None     # sequence number of the next expected byte
        self.buf = bytearray()           # bytes from a message boundary up to `next`
        self.ahead: dict[int, bytes] = {}  # out-of-order segments by sequence number
        self.sip = False                 # has carried SIP (losses of other streams don't count)

    def _reset(self) -> None:
        self.next = None
        self.buf.clear()
        self.ahead.clear()

    def _append(self, seq: int, payload: bytes) -> None:
        """Adds what `payload` (starting at or before `next`) holds past `next`."""
        assert self.next is not None
        over = (self.next - seq) & _MASK
        if over < len(payload):
            self.buf += payload[over:]
            self.next = (seq + len(payload)) & _MASK

    def feed(self, seq: int, flags: int, payload: bytes) -> tuple[list[bytes], int]:
        """The SIP messages this segment completes, and how many pieces of SIP were lost."""
        if flags & _SYN:
            self._reset()
            self.next = seq = (seq + 1) & _MASK
        if not payload:
            return [], 0
        lost = 0
        if self.next is None:
            if not _at_boundary(payload):   # mid-message, or not SIP: wait for a start line
                return [], 0
            self.next = seq
        if ((seq - self.next) & _MASK) >= _HALF or seq == self.next:
            self._append(seq, payload)       # in order, or overlaps bytes already seen
        else:
            self.ahead[seq] = payload
            if len(self.ahead) <= MAX_AHEAD_SEGMENTS:
                return [], 0
            # a gap that does not fill: skip to the earliest held segment
            nxt = self.next
            self.buf.clear()
            self.next = min(self.ahead, key=lambda s: (s - nxt) & _MASK)
            lost += 1
        while self.ahead:                    # held segments the new bytes reach
            nxt = self.next
            due = [s for s in self.ahead if ((s - nxt) & _MASK) >= _HALF or s == nxt]
            if not due:
                break
            for s in sorted(due, key=lambda s: (s - nxt) & _MASK):
                self._append(s, self.ahead.pop(s))
        spans, rest, err = frame_stream(self.buf)
        messages = [bytes(self.buf[a:b]) for a, b in spans]
        if err is not None or len(self.buf) - rest > MAX_STREAM_BUFFER:
            self._reset()                    # not SIP: resynchronise at a later start line
            lost += 1
        else:
            del self.buf[:rest]
        self.sip = self.sip or bool(messages)
        return messages, lost if self.sip else 0


def _has_sdp(msg: SipMessage) -> bool:
    ctype = msg.content_type or ""
    if not msg.body.strip():
        return False
    return ctype == "application/sdp" or (
        ctype.startswith("multipart/") and b"application/sdp" in msg.body.lower())


class _Builder:
    """Accumulates the ladder, message by message."""

    def __init__(self) -> None:
        self.result = Ladder()
        self._hosts: dict[str, int] = {}
        self._seen: set[tuple[str, str, str, str, int, int]] = set()
        self._t0: int | None = None

    def _index(self, host: str) -> int:
        i = self._hosts.get(host)
        if i is None:
            i = self._hosts[host] = len(self.result.hosts)
            self.result.hosts.append(host)
        return i

    def add(self, ts_ns: int, src: str, dst: str, raw: bytes, transport: str) -> bool:
        """Adds one SIP message; False once the cap is reached (stop reading)."""
        res = self.result
        try:
            msg = parse_sip(raw)
            at = _iso(ts_ns)
        except _BAD_PACKET:
            res.skipped += 1
            return True
        if len(res.messages) >= MAX_MESSAGES:
            res.truncated = True
            return False
        if self._t0 is None:
            self._t0 = ts_ns
        si, di = self._index(src), self._index(dst)
        call_id = msg.call_id or ""
        cseq = " ".join((msg.header("cseq") or "").split())
        if msg.is_request:
            label = kind = msg.method or ""
        else:
            kind = str(msg.status)
            label = f"{msg.status} {msg.reason}" if msg.reason else kind
        key = (call_id, cseq, kind, msg.via_branch or "", si, di)
        retrans = key in self._seen
        self._seen.add(key)
        first = raw.split(b"\n", 1)[0].rstrip(b"\r")[:_SUMMARY_MAX]
        res.messages.append(LadderMessage(
            t=(ts_ns - self._t0) / 1e9, at=at, src=si, dst=di, label=label,
            is_request=msg.is_request, call_id=call_id, cseq=cseq, retransmission=retrans,
            has_sdp=_has_sdp(msg), transport=transport,
            summary=first.decode("utf-8", "replace")))
        return True


def ladder(pcap: bytes) -> Ladder:
    """The SIP ladder of a capture file's bytes; LadderError if they are no capture file."""
    frames = _frames(pcap)
    out = _Builder()
    res = out.result
    reasm = Reassembler()
    streams: dict[tuple[bytes, int, bytes, int], _Stream] = {}
    count = 0
    try:
        for ts_ns, linktype, data in frames:
            count += 1
            try:
                d = decode(linktype, data)
                if d.is_fragment:
                    dg = reasm.add(ts_ns, linktype, data, d)
                    if dg is None:
                        continue
                    data = dg.frame
                    d = decode(dg.linktype, data)
                if d.proto not in (_UDP, _TCP):
                    continue
                payload = data[d.payload_offset:d.payload_offset + d.payload_len]
                if d.proto == _UDP:
                    if not looks_like_sip(payload):     # RTP, RTCP, keep-alives...
                        continue
                    messages, lost, transport = [payload], 0, "UDP"
                else:
                    stream = streams.setdefault((d.src, d.sport, d.dst, d.dport), _Stream())
                    messages, lost = stream.feed(d.tcp_seq, d.tcp_flags, payload)
                    transport = "TCP"
                res.skipped += lost
                if messages:
                    src, dst = _host(d.src, d.sport), _host(d.dst, d.dport)
                    if not all(out.add(ts_ns, src, dst, m, transport) for m in messages):
                        break
            except _BAD_PACKET:
                res.skipped += 1
    except CaptureFileError as exc:
        if count == 0 and exc.offset == 0:
            raise LadderError(f"not a pcap file: {exc.reason}") from None
        res.error = f"capture cut short: {exc.reason} at byte offset {exc.offset}"
    return res

"""RTP/RTCP stream accounting for one call, and the media endpoints SDP announces.

Why the shapes here look the way they do: RTP is >99 % of the packets, so the
per-packet work (`RtpStream.add`) is a handful of integer operations and
appends to lists that already exist.  A stream never copies payload bytes: it
keeps a packed reference (frame index, payload start, payload end) into the
frames its call keeps anyway for call.pcap, and audio is decoded once per
stream when the call is finalized.

Loss and duplicates are counted on extended sequence numbers (RFC 3550 A.1,
MAX_DROPOUT/MAX_MISORDER): a bytearray holds one byte per expected sequence
number of the current run, so a late (reordered) packet or a duplicate is
recognised exactly with O(1) work and one byte of memory per packet.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from protocols.errors import SdpError
from protocols.layers import str_to_ip
from protocols.sdp import STATIC_PAYLOAD_TYPES, parse_sdp

if TYPE_CHECKING:
    from controller.calls import Call

CALLER = 0
CALLEE = 1
SIDE_NAMES = ("caller", "callee")

MAX_DROPOUT = 3000
MAX_MISORDER = 100
SEQ_MOD = 1 << 16

#: Encodings that are not audio: kept and counted, never decoded.
NON_AUDIO_ENCODINGS = frozenset(("CN", "TELEPHONE-EVENT", "COMFORT-NOISE"))
NON_AUDIO_STATIC = frozenset((13, 19))  # CN (RFC 3389) and the old reserved CN

# A payload reference packs (frame index, payload start, payload end) in one int:
# start/end are offsets inside the frame (< 2**17, pcap frames are <= 262144 bytes).
_REF_SHIFT = 17
_REF_MASK = (1 << _REF_SHIFT) - 1
MAX_REF_OFFSET = _REF_MASK


def pack_ref(frame_index: int, start: int, end: int) -> int:
    return (frame_index << (2 * _REF_SHIFT)) | (start << _REF_SHIFT) | end


def unpack_ref(ref: int) -> tuple[int, int, int]:
    return ref >> (2 * _REF_SHIFT), (ref >> _REF_SHIFT) & _REF_MASK, ref & _REF_MASK


class MediaEndpoint:
    """Where one side of a call receives RTP (or RTCP), as announced in its SDP.

    ``side`` is the side that *receives* here.  ``rtpmap`` maps the payload
    types of that SDP media.  The ``c_*`` fields cache the last stream seen on
    this endpoint so a packet of an ongoing stream costs no tuple and no dict
    lookup to find its stream.
    """

    __slots__ = ("call", "side", "rtcp", "rtpmap",
                 "c_src", "c_sport", "c_dst", "c_dport", "c_ssrc", "c_stream")

    def __init__(self, call: Call, side: int, rtcp: bool, rtpmap: dict[int, tuple[str, int, int]]) -> None:
        self.call = call
        self.side = side
        self.rtcp = rtcp
        self.rtpmap = rtpmap
        self.c_src = b""
        self.c_sport = -1
        self.c_dst = b""
        self.c_dport = -1
        self.c_ssrc = -1
        self.c_stream: RtpStream | None = None


class PayloadRun:
    """The packets of one payload type inside a stream (what audio decode needs)."""

    __slots__ = ("first_ns", "timestamps", "refs")

    def __init__(self, first_ns: int) -> None:
        self.first_ns = first_ns
        self.timestamps: list[int] = []
        self.refs: list[int] = []


class RtpStream:
    """One RTP stream = (src ip, src port, dst ip, dst port, SSRC) inside a call."""

    __slots__ = ("src", "sport", "dst", "dport", "ssrc", "sender", "rtpmap",
                 "first_ns", "last_ns", "packets", "duplicates",
                 "max_ext", "base_ext", "bits", "bad_seq", "expected_prior", "received_prior",
                 "by_pt", "cur_pt", "cur_run")

    def __init__(self, src: bytes, sport: int, dst: bytes, dport: int, ssrc: int,
                 sender: int, rtpmap: dict[int, tuple[str, int, int]], ts_ns: int, seq: int) -> None:
        self.src = src
        self.sport = sport
        self.dst = dst
        self.dport = dport
        self.ssrc = ssrc
        self.sender = sender
        self.rtpmap = rtpmap
        self.first_ns = ts_ns
        self.last_ns = ts_ns
        self.packets = 0
        self.duplicates = 0
        # extended sequence numbers: the first packet is seq itself (+ 2**16 so
        # that a late packet from before it never goes negative)
        self.max_ext = SEQ_MOD + seq - 1
        self.base_ext = SEQ_MOD + seq
        self.bits = bytearray()
        self.bad_seq = -1
        self.expected_prior = 0
        self.received_prior = 0
        self.by_pt: dict[int, PayloadRun] = {}
        self.cur_pt = -1
        self.cur_run: PayloadRun | None = None

    def add(self, ts_ns: int, pt: int, seq: int, rtp_ts: int, ref: int) -> None:
        """Count one packet and remember where its payload is."""
        self.packets += 1
        self.last_ns = ts_ns
        max_ext = self.max_ext
        udelta = (seq - max_ext) & 0xFFFF
        if udelta == 1:                       # the common case: next in order
            self.bits.append(1)
            self.max_ext = max_ext + 1
        elif udelta == 0:
            self.duplicates += 1
            return
        elif udelta < MAX_DROPOUT:            # a gap (loss): mark the missing ones
            self.bits += bytes(udelta - 1)
            self.bits.append(1)
            self.max_ext = max_ext + udelta
        elif udelta <= SEQ_MOD - MAX_MISORDER:  # a very large jump
            if seq != self.bad_seq:
                self.bad_seq = (seq + 1) & 0xFFFF
                # RFC 3550: not part of the run until a second packet confirms
                self._store(ts_ns, pt, rtp_ts, ref)
                return
            self._restart(seq)
        else:                                 # late (reordered) or duplicate
            ext = max_ext - (SEQ_MOD - udelta)
            i = ext - self.base_ext
            if i < 0:
                self.bits[0:0] = bytes(-i)
                self.base_ext = ext
                i = 0
            elif self.bits[i]:
                self.duplicates += 1
                return
            self.bits[i] = 1
        self._store(ts_ns, pt, rtp_ts, ref)

    def _store(self, ts_ns: int, pt: int, rtp_ts: int, ref: int) -> None:
        if pt == self.cur_pt:
            run = self.cur_run
        else:
            run = self.by_pt.get(pt)
            if run is None:
                run = self.by_pt[pt] = PayloadRun(ts_ns)
            self.cur_pt = pt
            self.cur_run = run
        run.timestamps.append(rtp_ts)
        run.refs.append(ref)

    def _restart(self, seq: int) -> None:
        """The sender restarted its sequence: close the run, start a new one
        that includes the packet which announced the jump (seq - 1)."""
        bits = self.bits
        self.expected_prior += len(bits) + 1
        self.received_prior += bits.count(1) + 1
        self.max_ext = SEQ_MOD + seq
        self.base_ext = SEQ_MOD + seq
        self.bits = bytearray(b"\x01")
        self.bad_seq = -1

    @property
    def lost(self) -> int:
        """Expected minus received (unique) packets, never negative."""
        bits = self.bits
        return max(0, len(bits) - bits.count(1) + self.expected_prior - self.received_prior)

    # -- payload types ---------------------------------------------------
    def encoding(self, pt: int, fallback: dict[int, tuple[str, int, int]] | None = None
                 ) -> tuple[str, int, int] | None:
        """(encoding, clock rate, channels) of a payload type, or None if unknown."""
        enc = self.rtpmap.get(pt)
        if enc is None and fallback:
            enc = fallback.get(pt)
        if enc is None:
            enc = STATIC_PAYLOAD_TYPES.get(pt)
        return enc

    def is_audio_pt(self, pt: int, fallback: dict[int, tuple[str, int, int]] | None = None) -> bool:
        if pt in NON_AUDIO_STATIC:
            return False
        enc = self.encoding(pt, fallback)
        return enc is None or enc[0] not in NON_AUDIO_ENCODINGS

    def audio_pt(self, fallback: dict[int, tuple[str, int, int]] | None = None) -> int | None:
        """The payload type carrying most audio packets (CN and DTMF events excluded)."""
        best: int | None = None
        best_n = 0
        for pt, run in self.by_pt.items():
            n = len(run.refs)
            if n > best_n and self.is_audio_pt(pt, fallback):
                best, best_n = pt, n
        return best

    def audio_packets(self, fallback: dict[int, tuple[str, int, int]] | None = None) -> int:
        pt = self.audio_pt(fallback)
        return 0 if pt is None else len(self.by_pt[pt].refs)

    def first_pt(self) -> int | None:
        return next(iter(self.by_pt), None)


@dataclass(frozen=True, slots=True)
class SdpMedia:
    """One receive address announced by an SDP media line."""

    addr: bytes
    port: int
    rtcp: bool
    rtpmap: dict[int, tuple[str, int, int]]


def sdp_media(body: bytes) -> list[SdpMedia]:
    """The audio receive endpoints (RTP and RTCP) of an SDP body; SdpError if malformed.

    Port 0 (media refused), a null address (hold, c=0.0.0.0 / ::) and non-IP
    connection addresses announce nothing.  Non-audio media (video, T.38
    image) are not registered: their packets are not part of the recording
    unless they share an audio port.
    """
    sd = parse_sdp(body)
    out: list[SdpMedia] = []
    for md in sd.media:
        if md.media.lower() != "audio" or md.port == 0 or not md.connection:
            continue
        try:
            addr = str_to_ip(md.connection)
        except ValueError:
            continue
        if not any(addr):
            continue
        out.append(SdpMedia(addr, md.port, False, md.rtpmap))
        rtcp_port = md.rtcp_port if md.rtcp_port is not None else md.port + 1
        if rtcp_port != md.port and rtcp_port <= 0xFFFF:
            out.append(SdpMedia(addr, rtcp_port, True, md.rtpmap))
    return out


def sdp_body(content_type: str | None, body: bytes) -> bytes | None:
    """The SDP inside a SIP body: the body itself or its application/sdp MIME part."""
    if not body:
        return None
    if content_type is None or content_type == "application/sdp":
        return body if body.lstrip().startswith(b"v=") else None
    if content_type.startswith("multipart/"):
        start = body.find(b"\nv=0")
        if start < 0:
            return None
        rest = body[start + 1:]
        end = rest.find(b"\r\n--")
        if end < 0:
            end = rest.find(b"\n--")
        return rest if end < 0 else rest[:end + 2]
    return None


__all__ = ["CALLER", "CALLEE", "SIDE_NAMES", "MediaEndpoint", "PayloadRun", "RtpStream",
           "SdpMedia", "sdp_media", "sdp_body", "pack_ref", "unpack_ref", "MAX_REF_OFFSET",
           "SdpError"]

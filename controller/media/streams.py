"""RTP/RTCP stream accounting for one call, and the media endpoints SDP announces.

Why the shapes here look the way they do: RTP is >99 % of the packets, so the
per-packet work (`MediaEndpoint.packet`) is one method call, a cached-stream
check, a handful of integer operations and two appends to lists that already
exist (`RtpStream.add` is the slow path: loss, reordering, payload changes).
A stream never copies payload bytes: it keeps a packed reference (frame
index, payload start, payload end) into the frames its call keeps anyway for
call.pcap, and audio is decoded once per stream when the call is finalized.

Loss and duplicates are counted on extended sequence numbers (RFC 3550 A.1,
MAX_DROPOUT/MAX_MISORDER): a bytearray holds one byte per expected sequence
number of the current run (filled lazily: in-order packets only move a
counter), so a late (reordered) packet or a duplicate is recognised exactly
with O(1) work and at most one byte of memory per packet.
"""
from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass
from typing import TYPE_CHECKING

from protocols.layers import Decoded, str_to_ip
from protocols.mediaports import MAX_MEDIA_LINES, media_port_ok
from protocols.sdp import STATIC_PAYLOAD_TYPES, parse_sdp

if TYPE_CHECKING:
    from controller.calls.engine import Call

CALLER = 0
CALLEE = 1
SIDE_NAMES = ("caller", "callee")

MAX_DUPS_KEPT = 256      # duplicates remembered per stream for the conflict check
MAX_DROPOUT = 3000
MAX_MISORDER = 100
SEQ_MOD = 1 << 16

#: Encodings that are not audio: kept and counted, never decoded.
NON_AUDIO_ENCODINGS = frozenset(("CN", "TELEPHONE-EVENT", "COMFORT-NOISE"))
NON_AUDIO_STATIC = frozenset((13, 19))  # CN (RFC 3389) and the old reserved CN

_RTP_TAIL = struct.Struct("!HII")  # seq, timestamp, ssrc (after the first two bytes)

# A payload reference packs (frame index, payload start, payload end) in one int:
# start/end are offsets inside the frame (< 2**17, pcap frames are <= 262144 bytes).
_REF_SHIFT = 17
_REF_MASK = (1 << _REF_SHIFT) - 1
MAX_REF_OFFSET = _REF_MASK


def pack_ref(frame_index: int, start: int, end: int) -> int:
    return (frame_index << (2 * _REF_SHIFT)) | (start << _REF_SHIFT) | end


def unpack_ref(ref: int) -> tuple[int, int, int]:
    return ref >> (2 * _REF_SHIFT), (ref >> _REF_SHIFT) & _REF_MASK, ref & _REF_MASK


#: What `MediaEndpoint.packet` saw (0 = an RTP packet of a known stream: nothing to do).
RTP = 0
RTP_NEW_STREAM = 1
RTCP = 2
NOT_RTP = 3
BAD_RTP = 4


class MediaEndpoint:
    """Where one side of a call receives RTP (or RTCP), as announced in its SDP.

    ``side`` is the side that *receives* here.  ``rtpmap`` maps the payload
    types of that SDP media.  The ``c_*`` fields cache the last stream seen on
    this endpoint so a packet of an ongoing stream costs no tuple and no dict
    lookup to find its stream.
    """

    __slots__ = ("call", "side", "rtcp", "rtpmap", "leg", "kind", "c_addr", "c_port", "c_ssrc",
                 "c_by_dst", "c_sensor", "c_stream")

    def __init__(self, call: Call, side: int, rtcp: bool, rtpmap: dict[int, tuple[str, int, int]],
                 leg: str = "", kind: str = "audio") -> None:
        self.call = call
        self.side = side
        self.rtcp = rtcp
        self.rtpmap = rtpmap
        self.leg = leg          # Call-ID of the leg whose SDP announced it
        self.kind = kind        # the SDP m= media type: audio, video, image, application...
        self.c_addr = b""
        self.c_port = -1
        self.c_ssrc = -1
        self.c_by_dst = False
        self.c_sensor = ""
        self.c_stream: RtpStream | None = None

    def packet(self, ts_ns: int, sensor_id: str, linktype: int, data: bytes, d: Decoded,
               by_dst: bool) -> int:
        """Keep one UDP packet sent to (``by_dst``) or from this endpoint in its call
        and account it to its RTP stream.  The hot path of the controller: one
        call, no tuple, no dict lookup for a packet of the stream seen last here."""
        call = self.call
        frames = call.frame_data
        idx = call.frame_base + len(frames)
        frames.append(data)
        call.frame_ts.append(ts_ns)
        call.last_ns = ts_ns
        if sensor_id != call.last_sensor:
            call.sensors.add(sensor_id)
            call.last_sensor = sensor_id
        if linktype != call.linktype:
            call.other_linktype.append(idx)
        off = d.payload_offset
        end = off + d.payload_len
        if end - off < 12:
            if end - off >= 8 and data[off] >> 6 == 2 and 200 <= data[off + 1] <= 207:
                return RTCP
            return NOT_RTP if end == off or data[off] >> 6 != 2 else BAD_RTP
        b0 = data[off]
        b1 = data[off + 1]
        if b0 >> 6 != 2:               # T.38 UDPTL, STUN, junk on a media port
            return NOT_RTP
        if 200 <= b1 <= 207:           # RTCP (also multiplexed on the RTP port, RFC 5761)
            return RTCP
        seq, rtp_ts, ssrc = _RTP_TAIL.unpack_from(data, off + 2)
        start = off + 12 + ((b0 & 0x0F) << 2)
        if b0 & 0x30:                  # header extension or padding: the rare slow path
            if b0 & 0x10:
                if start + 4 > end:
                    return BAD_RTP
                start += 4 + (((data[start + 2] << 8) | data[start + 3]) << 2)
            if b0 & 0x20 and end > start:
                end -= data[end - 1]
        if start > end:
            return BAD_RTP
        code = RTP
        if by_dst:
            addr = d.src
            port = d.sport
        else:
            addr = d.dst
            port = d.dport
        if ssrc == self.c_ssrc and port == self.c_port and by_dst == self.c_by_dst \
                and addr == self.c_addr and sensor_id == self.c_sensor:
            stream = self.c_stream
        else:
            src, sport, dst, dport = d.src, d.sport, d.dst, d.dport
            key = (src, sport, dst, dport, ssrc)
            stream = call.streams.get(key)
            if stream is None:
                sender = 1 - self.side if by_dst else self.side
                stream = call.streams[key] = RtpStream(src, sport, dst, dport, ssrc, sender,
                                                       self.rtpmap, ts_ns, seq)
                stream.leg = self.leg
                stream.kind = self.kind
                code = RTP_NEW_STREAM
            stream.sensors.add(sensor_id)
            if sensor_id not in stream.by_sensor:
                stream.by_sensor[sensor_id] = 0
            self.c_addr, self.c_port, self.c_ssrc, self.c_by_dst = addr, port, ssrc, by_dst
            self.c_sensor = sensor_id
            self.c_stream = stream
        ref = (idx << 34) | (start << 17) | end if end <= MAX_REF_OFFSET else -1  # = pack_ref()
        stream.by_sensor[sensor_id] += 1          # provenance: kept packets per sensor
        pt = b1 & 0x7F
        max_ext = stream.max_ext
        if (seq - max_ext) & 0xFFFF == 1 and pt == stream.cur_pt:  # next in order
            stream.max_ext = max_ext + 1
            run = stream.cur_run
            run.timestamps.append(rtp_ts)
            run.refs.append(ref)
        else:
            stream.add(ts_ns, pt, seq, rtp_ts, ref, sensor_id)
        return code


class PayloadRun:
    """The packets of one payload type inside a stream (what audio decode needs)."""

    __slots__ = ("first_ns", "timestamps", "refs", "probed", "n_spilled", "spilled")

    def __init__(self, first_ns: int) -> None:
        self.first_ns = first_ns
        # int64 arrays, not lists: 8 bytes a packet instead of ~40 (long calls)
        self.timestamps = array("q")
        self.refs = array("q")
        self.probed = 0         # refs already looked at by legs.MediaCorrelator
        self.n_spilled = 0      # packets whose refs went to the call's spill file
        self.spilled: list[tuple[int, int, int]] = []  # (offset, count, frame shift) chunks

    @property
    def count(self) -> int:
        """Packets of this run (in memory and spilled)."""
        return len(self.refs) + self.n_spilled


class RtpStream:
    """One RTP stream = (src ip, src port, dst ip, dst port, SSRC) inside a call.

    ``bits`` has one byte per extended sequence number from ``base_ext`` (1 =
    received); it is filled lazily: every number after its end up to
    ``max_ext`` was received in order, so the in-order fast path in
    `MediaEndpoint.packet` only moves ``max_ext``.
    """

    __slots__ = ("src", "sport", "dst", "dport", "ssrc", "sender", "rtpmap", "first_ns",
                 "duplicates", "max_ext", "base_ext", "bits", "bad_seq", "expected_prior",
                 "received_prior", "by_pt", "cur_pt", "cur_run", "leg", "sensors", "copies",
                 "probe_done", "probe_samples", "kind", "by_sensor", "dups")

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
        self.duplicates = 0
        # extended sequence numbers start at 2**16 + the first seq, so a late
        # packet from before the first one never goes negative
        self.base_ext = SEQ_MOD + seq
        self.max_ext = self.base_ext - 1
        self.bits = bytearray()
        self.bad_seq = -1
        self.expected_prior = 0
        self.received_prior = 0
        self.by_pt: dict[int, PayloadRun] = {}
        self.cur_pt = -1
        self.cur_run: PayloadRun | None = None
        self.leg = ""                       # Call-ID of the leg whose SDP it was matched by
        self.kind = "audio"                 # SDP media type of the m= line it was matched by
        self.sensors: set[str] = set()      # sensors whose copy of a packet was kept
        self.copies: dict[str, int] = {}    # sensor -> mirror copies dropped by dedup
        self.by_sensor: dict[str, int] = {}  # sensor -> packets of it kept (provenance)
        #: (seq, payload ref, sensor) of duplicates (same sequence number again), bounded:
        #: a copy whose payload differs is a conflict (controller/calls/provenance.py)
        self.dups: list[tuple[int, int, str]] = []
        self.probe_done = False             # legs.MediaCorrelator is done with it
        self.probe_samples = 0

    def add(self, ts_ns: int, pt: int, seq: int, rtp_ts: int, ref: int, sensor: str = "") -> None:
        """Count one packet and remember where its payload is (all cases)."""
        max_ext = self.max_ext
        udelta = (seq - max_ext) & 0xFFFF
        if udelta == 1:                       # next in order
            self.max_ext = max_ext + 1
        elif udelta == 0:
            self.duplicates += 1
            if len(self.dups) < MAX_DUPS_KEPT:
                self.dups.append((seq, ref, sensor))
            return
        elif udelta < MAX_DROPOUT:            # a gap (loss): mark the missing ones
            self._sync()
            self.bits += bytes(udelta - 1)
            self.bits.append(1)
            self.max_ext = max_ext + udelta
        elif udelta <= SEQ_MOD - MAX_MISORDER:  # a very large jump
            if seq != self.bad_seq:
                # RFC 3550: not part of the run until a second packet confirms it
                self.bad_seq = (seq + 1) & 0xFFFF
                self._store(ts_ns, pt, rtp_ts, ref)
                return
            self._restart(seq)
        else:                                 # late (reordered) or duplicate
            self._sync()
            ext = max_ext - (SEQ_MOD - udelta)
            i = ext - self.base_ext
            if i < 0:
                self.bits[0:0] = bytes(-i)
                self.base_ext = ext
                i = 0
            elif self.bits[i]:
                self.duplicates += 1
                if len(self.dups) < MAX_DUPS_KEPT:
                    self.dups.append((seq, ref, sensor))
                return
            self.bits[i] = 1
        self._store(ts_ns, pt, rtp_ts, ref)

    def _sync(self) -> None:
        """Materialize the in-order packets the fast path only counted."""
        k = self.max_ext - self.base_ext + 1 - len(self.bits)
        if k > 0:
            self.bits += b"\x01" * k

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

    def compact(self, keep: int = 4096) -> None:
        """Fold the loss accounting of all but the last `keep` sequence numbers into
        the totals (a long call): a late packet is at most MAX_MISORDER behind,
        so it always lands in what is kept."""
        self._sync()
        k = len(self.bits) - keep
        if k > 0:
            self.expected_prior += k
            self.received_prior += self.bits.count(1, 0, k)
            del self.bits[:k]
            self.base_ext += k

    def _restart(self, seq: int) -> None:
        """The sender restarted its sequence: close the run, start a new one
        (the packet that announced the jump counts as expected and received)."""
        self._sync()
        self.expected_prior += len(self.bits) + 1
        self.received_prior += self.bits.count(1) + 1
        self.base_ext = SEQ_MOD + seq
        self.max_ext = self.base_ext  # this packet: received (lazily, see _sync)
        self.bits = bytearray()
        self.bad_seq = -1

    @property
    def packets(self) -> int:
        """Every packet of the stream, duplicates included (as tshark counts them)."""
        return sum(run.count for run in self.by_pt.values()) + self.duplicates

    @property
    def lost(self) -> int:
        """Expected minus received (unique) packets, never negative."""
        self._sync()
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
            n = run.count
            if n > best_n and self.is_audio_pt(pt, fallback):
                best, best_n = pt, n
        return best

    def audio_packets(self, fallback: dict[int, tuple[str, int, int]] | None = None) -> int:
        pt = self.audio_pt(fallback)
        return 0 if pt is None else self.by_pt[pt].count

    def first_pt(self) -> int | None:
        return next(iter(self.by_pt), None)


@dataclass(frozen=True, slots=True)
class MediaSecurity:
    """What one SDP media line says about how its author encrypts what it *sends*
    (RFC 4568: each side encrypts with the key in its own SDP)."""

    profile: str                                  # m= transport: RTP/AVP, RTP/SAVP, UDP/TLS/RTP/SAVP...
    crypto: tuple[tuple[int, str, str], ...] = ()  # a=crypto (tag, suite, key params)
    dtls: bool = False                            # a=fingerprint: keys from a DTLS handshake
    zrtp: bool = False                            # a=zrtp-hash: keys from an in-band ZRTP handshake

    @property
    def encrypted(self) -> bool:
        return "SAVP" in self.profile.upper() or bool(self.crypto)


@dataclass(frozen=True, slots=True)
class SdpMedia:
    """One receive address announced by an SDP media line."""

    addr: bytes
    port: int
    rtcp: bool
    rtpmap: dict[int, tuple[str, int, int]]
    kind: str = "audio"                 # m= media type, lower case
    security: MediaSecurity | None = None


def sdp_media(body: bytes) -> list[SdpMedia]:
    """The receive endpoints (RTP and RTCP) of an SDP body (`sdp_media_checked`
    without the count of what was refused); SdpError if malformed."""
    return sdp_media_checked(body)[0]


def sdp_media_checked(body: bytes) -> tuple[list[SdpMedia], int]:
    """(the receive endpoints (RTP and RTCP) of every media line of an SDP body,
    the number of endpoints refused); SdpError if malformed.

    Port 0 (media refused), a null address (hold, c=0.0.0.0 / ::) and non-IP
    connection addresses announce nothing.  Every media type is registered
    (audio, video, image/T.38, application...): all of the call's media goes
    to its call.pcap and streams; only audio is decoded.  An SDP cannot steer
    capture into other services (protocols/mediaports.py): ports below 1024
    and well-known service ports are refused, and only the first
    `MAX_MEDIA_LINES` m= lines count; the refused endpoints are counted.
    """
    sd = parse_sdp(body)
    out: list[SdpMedia] = []
    refused = 0
    lines = 0
    for md in sd.media:
        if md.port == 0 or not md.connection:
            continue
        try:
            addr = str_to_ip(md.connection)
        except ValueError:
            continue
        if not any(addr):
            continue
        tcp = "TCP" in md.proto.upper()
        rtcp_port = md.rtcp_port if md.rtcp_port is not None else md.port + 1
        ports = [md.port] if tcp or rtcp_port == md.port or rtcp_port > 0xFFFF else [md.port, rtcp_port]
        lines += 1
        if lines > MAX_MEDIA_LINES:
            refused += len(ports)
            continue
        kind = md.media.lower()
        sec = MediaSecurity(md.proto, tuple(md.crypto), md.fingerprint is not None,
                            md.zrtp_hash is not None)
        for i, port in enumerate(ports):   # BFCP/MSRP over TCP: one port, no RTCP
            if not media_port_ok(port):
                refused += 1
                continue
            out.append(SdpMedia(addr, port, i == 1, md.rtpmap, kind, sec))
    return out, refused


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


__all__ = ["CALLER", "CALLEE", "SIDE_NAMES", "MediaEndpoint", "MediaSecurity", "PayloadRun",
           "RtpStream", "SdpMedia", "sdp_media", "sdp_media_checked", "sdp_body", "pack_ref", "unpack_ref", "MAX_REF_OFFSET",
           "RTP", "RTP_NEW_STREAM", "RTCP", "NOT_RTP", "BAD_RTP"]

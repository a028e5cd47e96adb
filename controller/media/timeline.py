"""Which RTP packets make each audio channel of a call, and where they go.

Channel 0 is what the caller sent, channel 1 what the callee sent.  The rules
(docs/DECISIONS.md, "Audio"):

1. **Streams.**  The candidates of a direction are its streams with audio
   packets (CN and telephone-event are not audio).  They are taken best first
   — most audio packets, then fewest lost, then earliest — and a stream whose
   capture-time span overlaps an already taken one by more than
   ``OVERLAP_S`` (or half the shorter one) is a *copy* of the same audio (a
   relay leg, another sensor) and is left out; one that does not overlap
   *continues* the channel (SSRC change, transfer, media relay restart).
2. **Segments.**  A stream is cut where the RTP clock rate changes, and where
   its RTP timestamps jump against the capture clock: a step (in timestamp or
   in capture time) of more than ``JUMP_S`` where the two disagree by more
   than ``DISAGREE_S`` — and still disagree when the least network delay
   (capture time minus RTP time) over ``PERSIST_S`` before the step is
   compared with that over ``PERSIST_S`` after it, so a late burst of packets
   (jitter) does not cut while a restarted or paused source does.  A segment is placed
   at the capture time of its first packet (the earliest timestamp of the
   segment lies that far before it); within it, packets go by RTP timestamp.
3. **Pieces.**  Inside a segment packets are ordered by unwrapped timestamp
   (32-bit wrap and reordering handled; the first copy of a timestamp wins)
   and cut where the payload type changes (re-INVITE to another codec): each
   piece is decoded by its own decoder at its codec's rate.

Everything here works on numpy arrays of a stream's packets; payload bytes
are only fetched (by reference into the call's frames) while rendering.  Each
channel's decoded samples are also judged by controller/media/noise.py on the way
(at the codec's rate): audio made from ciphertext is flagged, never trusted.
"""
from __future__ import annotations

import logging

from dataclasses import dataclass, field
from functools import cached_property, partial
from collections.abc import Sequence
from typing import Any

import numpy as np

from controller.media.audio import PacketReader, ResampledReader, Track, output_rate, write_audio
from controller.media.codecs import CodecInfo, codec_for
from controller.media.jitter import CallBytes

_log = logging.getLogger("spanrec.controller")
from controller.media.noise import NoiseMeter
from controller.media.streams import MAX_REF_OFFSET, RtpStream

__all__ = ["Piece", "Segment", "Channel", "plan_audio", "render_audio", "Rendered"]

_NS = 1_000_000_000
_SHIFT = MAX_REF_OFFSET.bit_length()          # payload reference layout (streams.pack_ref)
_MASK = MAX_REF_OFFSET
JUMP_S = 1.0
DISAGREE_S = 0.3
PERSIST_S = 2.0
OVERLAP_S = 0.5
PACKET_NS = 20_000_000      # a stream's span is its packets' capture times + one packet
MARGIN_S = 30               # the file never runs longer than the last packet + this
MAX_PACKET_S = 0.12         # the longest Opus packet


@dataclass
class Piece:
    """Packets of one payload type, consecutive in RTP time, inside a segment."""

    pt: int
    encoding: str | None            # SDP/static name, None when unknown
    codec: CodecInfo | None         # None: cannot be decoded
    ts_offset: int                  # RTP ticks from the segment's origin
    positions: np.ndarray           # codec-rate sample of each packet, from the piece's start
    refs: np.ndarray                # payload references, same order
    length: int                     # codec-rate samples (0 if not decodable)
    packets: int


@dataclass
class Segment:
    stream: int                     # index in call.streams
    start_ns: int                   # capture time of the segment's earliest timestamp
    clock_rate: int
    last_ns: int                    # capture time of its last packet
    pieces: list[Piece]

    def piece_start_ns(self, piece: Piece) -> int:
        return self.start_ns + piece.ts_offset * _NS // self.clock_rate

    @property
    def decodable(self) -> bool:
        return any(p.codec is not None and p.length for p in self.pieces)


@dataclass
class Channel:
    side: int
    streams: list[int]              # streams used, in time order
    main: int                       # the used stream with the most audio packets
    candidates: int                 # streams of this direction with audio
    packets: dict[int, int]         # audio packets per used stream
    segments: list[Segment]

    def decoded_streams(self) -> set[int]:
        return {seg.stream for seg in self.segments if seg.decodable}


@dataclass
class _Packets:
    """A stream's audio packets in arrival order."""

    index: int
    stream: RtpStream
    ts: np.ndarray          # 32-bit RTP timestamps
    pt: np.ndarray
    refs: np.ndarray
    cap: np.ndarray         # capture ns
    clock: np.ndarray       # RTP clock rate of each packet's payload type
    encodings: dict[int, tuple[str, int, int] | None]
    frames: Any             # the call's frame_data, where refs point

    @cached_property
    def first_ns(self) -> int:
        return int(self.cap.min())

    @cached_property
    def last_ns(self) -> int:
        return int(self.cap.max())


def _packets(index: int, s: RtpStream, rtpmap: dict, frame_ts: np.ndarray,
             frames: Any, lo_ns: int | None = None, hi_ns: int | None = None,
             outside: dict[int, int] | None = None) -> _Packets | None:
    ts_parts, pt_parts, ref_parts = [], [], []
    encodings: dict[int, tuple[str, int, int] | None] = {}
    for pt, run in s.by_pt.items():
        if not run.refs or not s.is_audio_pt(pt, rtpmap):
            continue
        refs = np.asarray(run.refs, dtype=np.int64)
        ok = refs >= 0
        ref_parts.append(refs[ok])
        ts_parts.append(np.asarray(run.timestamps, dtype=np.int64)[ok])
        pt_parts.append(np.full(int(ok.sum()), pt, dtype=np.int64))
        encodings[pt] = s.encoding(pt, rtpmap)
    if not ref_parts:
        return None
    refs = np.concatenate(ref_parts)
    if not refs.size:
        return None
    order = np.argsort(refs >> (2 * _SHIFT), kind="stable")      # frame index = arrival
    refs = refs[order]
    pt = np.concatenate(pt_parts)[order]
    kinds = np.unique(pt)
    rates = np.array([(e[1] if e and e[1] > 0 else 8000)
                      for e in (encodings[int(k)] for k in kinds)], dtype=np.int64)
    clock = rates[np.searchsorted(kinds, pt)]
    rtp_ts = np.concatenate(ts_parts)[order] & 0xFFFFFFFF
    cap = frame_ts[refs >> (2 * _SHIFT)]
    early = lo_ns is not None and int(cap.min()) < lo_ns
    late = hi_ns is not None and int(cap.max()) > hi_ns
    if early or late:
        # the call's window: packets stamped more than MARGIN_S before its signalled
        # start or after its signalled end are not audio (they stay in call.pcap);
        # a forged or mis-stamped packet cannot stretch the audio file
        keep = np.ones(cap.size, dtype=bool)
        if early:
            keep &= cap >= lo_ns
        if late:
            keep &= cap <= hi_ns
        n = int((~keep).sum())
        if outside is not None:
            outside[index] = n
        _log.warning("audio packets stamped outside the call's signalled time left out of the audio",
                     extra={"stream": index, "packets": n})
        if not keep.any():
            return None
        rtp_ts, pt, refs, cap, clock = rtp_ts[keep], pt[keep], refs[keep], cap[keep], clock[keep]
    return _Packets(index, s, rtp_ts, pt, refs, cap, clock, encodings, frames)


def _copies(a: _Packets, b: _Packets) -> bool:
    """Do two streams of one direction overlap so much in time that they are one audio?"""
    overlap = min(a.last_ns, b.last_ns) + PACKET_NS - max(a.first_ns, b.first_ns)
    shorter = min(a.last_ns - a.first_ns, b.last_ns - b.first_ns) + PACKET_NS
    return overlap > min(int(OVERLAP_S * _NS), shorter // 2)


def _cuts(pk: _Packets) -> tuple[np.ndarray, np.ndarray]:
    """Unwrapped timestamps (relative, arrival order) and where segments begin."""
    n = pk.ts.size
    steps = ((np.diff(pk.ts) + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)
    tsu = np.zeros(n, dtype=np.int64)
    np.cumsum(steps, out=tsu[1:])
    cut = np.zeros(n, dtype=bool)
    cut[0] = True
    cut[1:] = pk.clock[1:] != pk.clock[:-1]
    if n < 2:
        return tsu, cut
    cap = np.maximum.accumulate(pk.cap - pk.cap[0])             # for searching
    # how far the packet's RTP time lies behind its capture time (s), up to a constant
    delay = cap / _NS - tsu / pk.clock
    gap = np.diff(cap)
    jump = (np.abs(steps / pk.clock[1:]) > JUMP_S) | (gap > JUMP_S * _NS)
    cand = np.flatnonzero(jump & (np.abs(np.diff(delay)) > DISAGREE_S) & ~cut[1:]) + 1
    if cand.size:
        clock_cuts = np.flatnonzero(cut)
        persist = int(PERSIST_S * _NS)
        last = 0                                    # the latest cut before i
        for i in cand.tolist():                     # in order
            k = int(np.searchsorted(clock_cuts, i, side="right"))
            lo = max(last, int(clock_cuts[k - 1]),
                     int(np.searchsorted(cap, cap[i - 1] - persist, side="left")))
            hi = int(np.searchsorted(cap, cap[i] + persist, side="right"))
            if k < clock_cuts.size:
                hi = min(hi, int(clock_cuts[k]))
            if lo < i < hi and abs(delay[i:hi].min() - delay[lo:i].min()) > DISAGREE_S:
                cut[i] = True
                last = i
    return tsu, cut


def _segments(pk: _Packets) -> list[Segment]:
    tsu, cut = _cuts(pk)
    bounds = np.append(np.flatnonzero(cut), pk.ts.size).tolist()
    out = []
    for a, b in zip(bounds, bounds[1:]):
        seg_ts = tsu[a:b]
        origin = int(seg_ts.min())
        clock = int(pk.clock[a])
        start_ns = int(pk.cap[a]) - (int(seg_ts[0]) - origin) * _NS // clock
        order = np.argsort(seg_ts, kind="stable")
        ts = seg_ts[order]
        first = np.ones(ts.size, dtype=bool)
        first[1:] = ts[1:] != ts[:-1]                   # the first copy of a timestamp wins
        sel = order[first]
        ts = ts[first] - origin
        pts = pk.pt[a:b][sel]
        refs = pk.refs[a:b][sel]
        change = np.append(np.flatnonzero(np.diff(pts)) + 1, [0, pts.size])
        change.sort()
        pieces = [_piece(pk, int(pts[p]), ts[p:q], refs[p:q], clock)
                  for p, q in zip(change.tolist(), change[1:].tolist())]
        out.append(Segment(pk.index, start_ns, clock, int(pk.cap[a:b].max()), pieces))
    return out


def _piece(pk: _Packets, pt: int, ts: np.ndarray, refs: np.ndarray, clock: int) -> Piece:
    enc = pk.encodings.get(pt)
    codec = codec_for(enc)
    ts0 = int(ts[0])
    if codec is None:
        return Piece(pt, enc[0] if enc else None, None, ts0, ts - ts0, refs, 0, int(ts.size))
    positions = (ts - ts0) * codec.sample_rate // clock
    if codec.per_octet:
        nominal = ((refs & _MASK) - ((refs >> _SHIFT) & _MASK)) * codec.per_octet
        length = int((positions + nominal).max())
    else:   # read the last packets only: none is longer than MAX_PACKET_S
        k = int(np.searchsorted(positions, positions[-1] - MAX_PACKET_S * codec.sample_rate))
        length = max(int(p) + codec.nominal(x) for p, x in
                     zip(positions[k:].tolist(), _fetch(pk.frames, refs, k, refs.size)))
    return Piece(pt, enc[0] if enc else None, codec, ts0, positions, refs, length, int(ts.size))


class JoinedPayloads(Sequence[bytes]):
    """Payloads gathered in one buffer (``octets``) with their ``lengths``: what a
    per-octet decoder (G.711) takes as is; others index or iterate it."""

    def __init__(self, octets: bytes, lengths: np.ndarray) -> None:
        self.octets = octets
        self.lengths = lengths
        self._ends = np.cumsum(lengths)

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, k):  # type: ignore[override]
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        end = int(self._ends[k])
        return self.octets[end - int(self.lengths[k]):end]


def _fetch(frames, refs: np.ndarray, i: int, j: int, cb: CallBytes | None = None) -> Sequence[bytes]:
    """Payloads of packets i..j-1: gathered with numpy from the call's frames in one
    buffer (`cb`, a call in memory), else sliced frame by frame."""
    if cb is not None and j - i > 8:
        got = cb.payloads(refs[i:j])
        if got is not None:
            return JoinedPayloads(*got)
    out = []
    for r in refs[i:j].tolist():
        out.append(frames[r >> (2 * _SHIFT)][(r >> _SHIFT) & _MASK:r & _MASK])
    return out


def plan_audio(call: Any, outside: dict[int, int] | None = None) -> dict[int, Channel]:
    """The streams, segments and pieces of each side (0 caller, 1 callee) that has audio
    packets; ``call`` is a finalize.FinishedCall (streams, rtpmap, frame_ts, frame_data,
    started_ns, ended_ns).  Audio packets stamped more than MARGIN_S outside the call's
    signalled start and end are left out and counted per stream in ``outside``."""
    frame_ts = np.fromiter(call.frame_ts, dtype=np.int64, count=len(call.frame_ts))
    start = getattr(call, "started_ns", None)
    end = getattr(call, "ended_ns", None)
    lo = None if start is None else start - MARGIN_S * _NS
    hi = None if end is None else end + MARGIN_S * _NS
    by_side: dict[int, list[_Packets]] = {}
    for i, s in enumerate(call.streams):
        if s.kind != "audio":
            continue            # video, T.38, application: kept in call.pcap, never decoded
        pk = _packets(i, s, call.rtpmap, frame_ts, call.frame_data, lo, hi, outside)
        if pk is not None:
            by_side.setdefault(s.sender, []).append(pk)
    channels: dict[int, Channel] = {}
    for side, cands in sorted(by_side.items()):
        ranked = sorted(cands, key=lambda c: (-c.ts.size, c.stream.lost, c.index))
        picked: list[_Packets] = []
        for c in ranked:
            if not any(_copies(c, p) for p in picked):
                picked.append(c)
        main = picked[0].index
        picked.sort(key=lambda c: (c.first_ns, c.index))
        segments = sorted((seg for c in picked for seg in _segments(c)),
                          key=lambda seg: (seg.start_ns, seg.stream))
        channels[side] = Channel(side, [c.index for c in picked], main, len(cands),
                                 {c.index: int(c.ts.size) for c in picked}, segments)
    return channels


@dataclass
class Rendered:
    rate: int
    t0_ns: int
    frames: int
    offsets: dict[int, int]         # id(piece) -> output sample where it starts
    noise: dict[int, NoiseMeter] = field(default_factory=dict)   # side -> its verdict


class _Tap:
    """A piece's reader whose samples also go to its channel's `NoiseMeter`."""

    def __init__(self, reader: PacketReader, meter: NoiseMeter, rate: int) -> None:
        self.reader = reader
        self.meter = meter
        self.rate = rate

    def read(self, n: int) -> np.ndarray:
        out = self.reader.read(n)
        self.meter.feed(out, self.rate)
        return out


def _open(frames, piece: Piece, rate: int, cb: CallBytes | None = None,
          meter: NoiseMeter | None = None):
    reader = PacketReader(piece.codec.new_decoder(), piece.positions,
                          partial(_fetch, frames, piece.refs, cb=cb))
    if meter is not None:
        reader = _Tap(reader, meter, piece.codec.sample_rate)
    if piece.codec.sample_rate != rate:
        reader = ResampledReader(reader, piece.length, piece.codec.sample_rate, rate)
    return reader


def render_audio(call: Any, channels: dict[int, Channel], fmt: str, target) -> Rendered | None:
    """Write both channels into ``target`` (path or binary file) as ``fmt``; None when
    no side has decodable audio (nothing written)."""
    segs = [seg for ch in channels.values() for seg in ch.segments if seg.decodable]
    if not segs:
        return None
    rate = output_rate([p.codec.sample_rate for seg in segs for p in seg.pieces if p.codec], fmt)
    t0 = min(seg.start_ns for seg in segs)
    last = max(seg.last_ns for seg in segs)
    offsets: dict[int, int] = {}
    tracks: list[list[Track]] = [[], []]
    # a call in memory: its frames in one buffer, payloads gathered with numpy
    cb = None           # a spilled call's payloads are read frame by frame
    if isinstance(call.frame_data, list):
        cb = getattr(call, "cb", None) or CallBytes((), call.frame_data, times=False)
    meters = {side: NoiseMeter() for side in channels}
    for side, ch in channels.items():
        for seg in ch.segments:
            seg_off = ((seg.start_ns - t0) * rate + _NS // 2) // _NS
            for p in seg.pieces:
                if p.codec is None or not p.length:
                    continue
                off = seg_off + p.ts_offset * rate // seg.clock_rate
                offsets[id(p)] = off
                length = -(-p.length * rate // p.codec.sample_rate)
                tracks[side].append(Track(off, length, partial(_open, call.frame_data, p, rate, cb,
                                                               meters[side])))
    limit = ((last - t0) // _NS + MARGIN_S) * rate
    frames = write_audio(tracks, rate, fmt, target, max_frames=limit)
    return Rendered(rate, t0, frames, offsets, meters) if frames else None

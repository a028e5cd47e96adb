"""Turns a finished call into its recording files: call.json, call.pcap, audio.wav.

Runs off the packet path (the controller's writer thread), so this is where
the per-stream work happens: each stream chosen for audio is decoded once,
with numpy, from payload references into the frames kept for call.pcap.

Audio convention (what users rely on): channel 0 = what the original caller
sent, channel 1 = what the final callee sent.  When several streams carry one
direction (a media relay or a B2BUA shows the same audio on two legs, seen by
one sensor or several), the one that was received best is used — most audio
packets, then fewest lost, then earliest — marked ``used_for_audio``, and the
choice is written in ``audio.sources``.  A direction whose codec cannot be
decoded is silent; with no decodable direction there is no audio.wav.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from protocols.layers import ip_to_str
from protocols.pcapfile import pcap_bytes
from storage.layout import (AUDIO_WAV, CALL_JSON, CALL_PCAP, prefix_date, recording_id,
                            recording_prefix)

from controller.audio import CODECS, DecodedStream, build_stereo, decode_stream, wav_bytes
from controller.legs import Leg
from controller.streams import CALLEE, CALLER, SIDE_NAMES, RtpStream, unpack_ref

__all__ = ["FinishedCall", "Recording", "build_recording", "iso_time"]

SAMPLE_RATE = 8000
_NS = 1_000_000_000


@dataclass
class FinishedCall:
    """A call that is over (made by calls.CallEngine): everything a recording needs,
    and nothing shared with the engine any more."""

    call_ids: list[str]
    from_uri: str | None
    to_uri: str | None
    status: str
    final_response: int | None
    end_reason: str
    started_ns: int
    answered_ns: int | None
    ended_ns: int | None
    sensors: list[str]
    linktype: int
    frame_ts: list[int]
    frame_data: list[bytes]
    other_linktype: list[int]
    streams: list[RtpStream]
    rtpmap: dict[int, tuple[str, int, int]]  # every payload type the call's SDPs named
    counts: dict[str, int] = field(default_factory=dict)
    legs: list[Leg] = field(default_factory=list)      # root leg first
    copies: dict[str, int] = field(default_factory=dict)  # sensor -> mirror copies dropped
    sites: dict[str, str] = field(default_factory=dict)   # sensor -> site (set by the Recorder)


@dataclass
class Recording:
    recording_id: str
    prefix: str
    started_at: datetime
    files: dict[str, bytes]
    metadata: dict[str, Any]


def iso_time(ns: int | None) -> str | None:
    """ISO 8601 UTC with microseconds and 'Z' (exact: no float on the way)."""
    if ns is None:
        return None
    sec, rem = divmod(ns, _NS)
    day = datetime.fromtimestamp(sec, tz=timezone.utc)
    return f"{day:%Y-%m-%dT%H:%M:%S}.{rem // 1000:06d}Z"


def _endpoint(addr: bytes, port: int) -> str:
    text = ip_to_str(addr)
    return f"[{text}]:{port}" if len(addr) == 16 else f"{text}:{port}"


@dataclass
class _Channel:
    stream: RtpStream
    pt: int
    codec: str | None
    decoded: DecodedStream | None = None
    start_ns: int | None = None


def _pick_streams(call: FinishedCall) -> dict[int, RtpStream]:
    """Per direction, the stream received best: most audio packets, then fewest
    lost, then the earliest (streams are sorted by first packet)."""
    best: dict[int, tuple[tuple[int, int], RtpStream]] = {}
    for s in call.streams:
        n = s.audio_packets(call.rtpmap)
        if not n:
            continue
        score = (n, -s.lost)
        if s.sender not in best or score > best[s.sender][0]:
            best[s.sender] = (score, s)
    return {side: s for side, (_, s) in best.items()}


def _decode(call: FinishedCall, ch: _Channel) -> None:
    """Decode one channel's stream if its codec is known; leaves decoded=None otherwise."""
    enc = ch.stream.encoding(ch.pt, call.rtpmap)
    if enc is None or ch.codec is None:
        return
    spec = CODECS.get(ch.codec)
    if spec is None or enc[1] != spec.clock_rate or spec.sample_rate != SAMPLE_RATE:
        return
    run = ch.stream.by_pt[ch.pt]
    frames = call.frame_data
    timestamps: list[int] = []
    payloads: list[bytes] = []
    for ts, ref in zip(run.timestamps, run.refs):
        if ref < 0:
            continue
        idx, start, end = unpack_ref(ref)
        timestamps.append(ts)
        payloads.append(frames[idx][start:end])
    if not payloads:
        return
    try:
        ds = decode_stream(ch.codec, timestamps, payloads, spec.clock_rate)
    except (ValueError, KeyError):
        return
    # capture time of sample 0: the first packet's time minus how far its
    # timestamp lies after the stream's earliest one
    ahead = (timestamps[0] - ds.origin_ts) * _NS // spec.clock_rate
    ch.decoded = ds
    ch.start_ns = run.first_ns - ahead


def _audio(call: FinishedCall) -> tuple[dict[int, _Channel], bytes | None]:
    channels: dict[int, _Channel] = {}
    for side, stream in _pick_streams(call).items():
        pt = stream.audio_pt(call.rtpmap)
        if pt is None:
            continue
        enc = stream.encoding(pt, call.rtpmap)
        ch = _Channel(stream, pt, enc[0].upper() if enc else None)
        _decode(call, ch)
        channels[side] = ch
    left = channels.get(CALLER)
    right = channels.get(CALLEE)
    have_left = left is not None and left.decoded is not None
    have_right = right is not None and right.decoded is not None
    if not (have_left or have_right):
        return channels, None
    stereo = build_stereo(left.decoded if have_left else None, left.start_ns if have_left else None,
                          right.decoded if have_right else None, right.start_ns if have_right else None,
                          SAMPLE_RATE)
    return channels, wav_bytes(stereo, SAMPLE_RATE)


def _stream_meta(call: FinishedCall, s: RtpStream, channels: dict[int, _Channel]) -> dict[str, Any]:
    ch = channels.get(s.sender)
    used = ch is not None and ch.stream is s
    pt = s.audio_pt(call.rtpmap)
    if pt is None:
        pt = s.first_pt()
    enc = None if pt is None else s.encoding(pt, call.rtpmap)
    return {
        "src": _endpoint(s.src, s.sport),
        "dst": _endpoint(s.dst, s.dport),
        "ssrc": s.ssrc,
        "payload_type": pt,
        "codec": enc[0] if enc else None,
        "direction": SIDE_NAMES[s.sender],
        "packets": s.packets,
        "lost": s.lost,
        "duplicates": s.duplicates,
        "decoded": bool(used and ch is not None and ch.decoded is not None),
        "used_for_audio": bool(used and ch is not None and ch.decoded is not None),
        "call_id": s.leg or None,
        "sensors": sorted(s.sensors),
        "copies_dropped": sum(s.copies.values()),
        "copies_dropped_by_sensor": dict(sorted(s.copies.items())),
    }


def _audio_sources(call: FinishedCall, channels: dict[int, _Channel]) -> dict[str, Any]:
    """Which stream each channel was taken from, among how many candidates, and why."""
    out: dict[str, Any] = {}
    for side, ch in sorted(channels.items()):
        if ch.decoded is None:
            continue
        s = ch.stream
        candidates = sum(1 for o in call.streams if o.sender == side and o.audio_packets(call.rtpmap))
        out[SIDE_NAMES[side]] = {
            "stream": call.streams.index(s),
            "call_id": s.leg or None,
            "src": _endpoint(s.src, s.sport),
            "ssrc": s.ssrc,
            "sensors": sorted(s.sensors),
            "packets": s.audio_packets(call.rtpmap),
            "lost": s.lost,
            "candidates": candidates,
            "reason": "only stream" if candidates == 1 else "most packets received, fewest lost",
        }
    return out


def _legs_meta(call: FinishedCall) -> list[dict[str, Any]]:
    out = []
    for leg in call.legs:
        d = leg.dialog
        out.append({
            "call_id": leg.call_id,
            "from": d.from_uri,
            "to": d.to_uri,
            "status": d.status,
            "final_response": d.final_response,
            "started_at": iso_time(leg.started_ns),
            "answered_at": iso_time(d.answered_ns),
            "ended_at": iso_time(d.ended_ns),
            "end_reason": d.end_reason,
            "sensors": sorted(leg.sensors),
            "sites": sorted({call.sites[s] for s in leg.sensors if call.sites.get(s)}),
            "sip_packets": leg.sip_packets,
            "relation": None if leg.relation is None else {"to": leg.relation[0], "by": leg.relation[1]},
        })
    return out


def _pcap(call: FinishedCall) -> tuple[bytes, int]:
    skip = set(call.other_linktype)
    ts = call.frame_ts
    frames = [(ts[i], data) for i, data in enumerate(call.frame_data) if i not in skip] if skip \
        else list(zip(ts, call.frame_data))
    if any(frames[i][0] > frames[i + 1][0] for i in range(len(frames) - 1)):
        frames.sort(key=lambda f: f[0])  # stable: equal times keep arrival order
    return pcap_bytes(frames, call.linktype), len(frames)


def build_recording(call: FinishedCall) -> Recording:
    """call.json + call.pcap (+ audio.wav when a direction was decoded)."""
    rid = recording_id(call.call_ids[0], call.started_ns)
    started_at = prefix_date(call.started_ns)
    channels, wav = _audio(call)
    pcap, pcap_packets = _pcap(call)
    meta: dict[str, Any] = {
        "id": rid,
        "call_ids": list(call.call_ids),
        "from": call.from_uri,
        "to": call.to_uri,
        "status": call.status,
        "final_response": call.final_response,
        "end_reason": call.end_reason,
        "started_at": iso_time(call.started_ns),
        "answered_at": iso_time(call.answered_ns),
        "ended_at": iso_time(call.ended_ns),
        "sensors": list(call.sensors),
        "sites": sorted({site for site in call.sites.values() if site}),
        "legs": _legs_meta(call),
        "streams": [_stream_meta(call, s, channels) for s in call.streams],
        "dtmf": [],
        "audio": {"file": AUDIO_WAV, "sample_rate": SAMPLE_RATE, "channels": 2,
                  "sources": _audio_sources(call, channels)} if wav else None,
        "copies_dropped": sum(call.copies.values()),
        "copies_dropped_by_sensor": dict(sorted(call.copies.items())),
        "pcap": CALL_PCAP,
        "pcap_packets": pcap_packets,
        "pcap_skipped": len(call.other_linktype),
    }
    meta.update(call.counts)
    files = {CALL_JSON: json.dumps(meta, indent=2, sort_keys=False, ensure_ascii=False).encode("utf-8"),
             CALL_PCAP: pcap}
    if wav:
        files[AUDIO_WAV] = wav
    return Recording(rid, recording_prefix(started_at, rid), started_at, files, meta)

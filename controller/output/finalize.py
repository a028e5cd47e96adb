"""Turns a finished call into its recording files: call.json, call.pcap, audio.wav.

Runs off the packet path (the controller's writer thread), so this is where
the per-stream work happens: the streams chosen for audio are decoded, from
payload references into the frames kept for call.pcap, and written chunk by
chunk (controller/media/timeline.py, controller/media/audio.py, controller/media/codecs.py).

Audio convention (what users rely on): channel 0 = what the original caller
sent, channel 1 = what the final callee sent.  When several streams carry the
same audio of one direction (a media relay or a B2BUA shows it on two legs,
seen by one sensor or several), the one that was received best is used — most
audio packets, then fewest lost, then earliest; streams that follow each other
in time (SSRC change, transfer) continue the channel.  Those used are marked
``used_for_audio`` and listed in ``audio.sources``.  A stream whose codec
cannot be decoded is ``"decoded": false`` and silent; with no decodable
direction there is no audio file.  The file is audio.wav (16-bit PCM) unless
``audio_format`` asks for audio.flac or audio.opus.

Encrypted media (controller/media/encrypted.py, srtp.py): SRTP whose keys the
signalling showed (SDES) is decrypted first and decoded like RTP; media
encrypted with keys the recorder cannot see (DTLS-SRTP, ZRTP, unsupported
suites) is ``"encrypted": true, "decoded": false`` with the reason in
``streams[].encryption`` and ``warnings``, and never decoded.  A decoded
channel that is statistically random noise (controller/media/noise.py) is flagged in
``audio.sources`` and ``warnings``.
"""
from __future__ import annotations

import heapq
import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from protocols.errors import DecodeError
from protocols.layers import decode, ip_to_str
from protocols.pcapfile import pcap_bytes_of, write_pcap
from protocols.sip import looks_like_sip
from storage.layout import (CALL_JSON, CALL_PCAP, audio_file_name, prefix_date, recording_id,
                            recording_prefix)

from controller.media.dtmf import call_dtmf
from controller.media.encrypted import SecureMedia, StreamSecurity, secure_media
from controller.media.hold import call_hold
from controller.media.jitter import CallBytes
from controller.calls.finished import FinishedCall, iso_time
from controller.calls.provenance import call_conflicts, conflict_warnings
from controller.media.quality import call_quality
from controller.calls.spill import load_runs
from controller.media.streams import SIDE_NAMES, RtpStream
from controller.media.timeline import MARGIN_S, Channel, Rendered, plan_audio, render_audio

__all__ = ["Recording", "build_recording"]

_NS = 1_000_000_000
_MAX_SEGMENTS = 100     # audio.sources lists at most this many segments per channel
log = logging.getLogger("spanrec.finalize")


@dataclass
class Recording:
    recording_id: str
    prefix: str
    started_at: datetime
    files: dict[str, bytes | Path]   # a Path: a (large) file to store, deleted with the spill
    metadata: dict[str, Any]


def _endpoint(addr: bytes, port: int) -> str:
    text = ip_to_str(addr)
    return f"[{text}]:{port}" if len(addr) == 16 else f"{text}:{port}"


@dataclass
class _Audio:
    """What the audio of a call came out as (controller/media/timeline.py has the rules)."""

    channels: dict[int, Channel]        # side -> streams, segments and pieces used
    rendered: Rendered | None = None    # None: nothing decodable, no audio file
    name: str | None = None
    data: bytes | Path | None = None
    used: set[int] = field(default_factory=set)     # indexes of the streams heard in the file
    outside: dict[int, int] = field(default_factory=dict)   # stream -> audio packets outside the call's time


def _audio(call: FinishedCall, fmt: str, media: SecureMedia, cb: CallBytes | None = None) -> _Audio:
    """Decode and write the call's audio (channel 0 caller, 1 callee) as `fmt`: into
    memory, or for a long call (spilled) into a file beside its spill files.  The
    streams and frames are `media`'s: SRTP decrypted, what stays encrypted left out."""
    clear = SimpleNamespace(streams=media.streams, rtpmap=call.rtpmap, frame_ts=media.frame_ts,
                            frame_data=media.frame_data, started_ns=call.started_ns,
                            ended_ns=call.ended_ns, cb=cb)
    outside: dict[int, int] = {}
    out = _Audio(plan_audio(clear, outside), outside=outside)
    if not out.channels:
        return out
    name = audio_file_name(fmt)
    try:
        if call.spill is not None:
            path = call.spill.path.with_suffix(Path(name).suffix)
            call.spill.outputs.append(path)
            out.rendered = render_audio(clear, out.channels, fmt, str(path))
            out.data = path
        else:
            buf = io.BytesIO()
            out.rendered = render_audio(clear, out.channels, fmt, buf)
            out.data = buf.getvalue()
    except Exception:  # noqa: BLE001 - the call is still recorded, without audio
        log.exception("audio not written", extra={"call_id": (call.call_ids or [call.key])[0]})
        out.rendered = None
    if out.rendered is None:
        out.data = None
    else:
        out.name = name
        out.used = {i for ch in out.channels.values() for i in ch.decoded_streams()}
    return out


def _stream_meta(call: FinishedCall, i: int, s: RtpStream, audio: _Audio,
                 sec: StreamSecurity) -> dict[str, Any]:
    used = i in audio.used
    pt = s.audio_pt(call.rtpmap)
    if pt is None:
        pt = s.first_pt()
    enc = None if pt is None else s.encoding(pt, call.rtpmap)
    return {
        "kind": s.kind,
        "src": _endpoint(s.src, s.sport),
        "dst": _endpoint(s.dst, s.dport),
        "ssrc": s.ssrc,
        "payload_type": pt,
        "codec": enc[0] if enc else None,
        "direction": SIDE_NAMES[s.sender],
        "packets": s.packets,
        "lost": s.lost,
        "duplicates": s.duplicates,
        "decoded": used,
        "used_for_audio": used,
        "encrypted": sec.encrypted,
        "encryption": sec.as_json(),
        "call_id": s.leg or None,
        "sensors": sorted(s.sensors),
        "packets_by_sensor": dict(sorted(s.by_sensor.items())),
        "copies_dropped": sum(s.copies.values()),
        "copies_dropped_by_sensor": dict(sorted(s.copies.items())),
        "outside_call_window": audio.outside.get(i, 0),
    }


def _audio_sources(call: FinishedCall, audio: _Audio) -> dict[str, Any]:
    """Per channel: the stream it was mainly taken from (most packets), among how many
    candidates and why, and every segment in time order (SSRC/codec changes)."""
    out: dict[str, Any] = {}
    r = audio.rendered
    assert r is not None
    for side, ch in sorted(audio.channels.items()):
        decoded = ch.decoded_streams()
        if not decoded:
            continue
        main = ch.main if ch.main in decoded else max(decoded, key=lambda i: (ch.packets[i], -i))
        s = call.streams[main]
        n = ch.candidates
        reason = "only stream" if n == 1 else "most packets received, fewest lost"
        if len(ch.streams) > 1:
            reason += "; streams that follow it in time continue the channel"
        segments = []
        for seg in ch.segments:
            st = call.streams[seg.stream]
            for p in seg.pieces:
                off = r.offsets.get(id(p))
                segments.append({
                    "stream": seg.stream,
                    "ssrc": st.ssrc,
                    "src": _endpoint(st.src, st.sport),
                    "call_id": st.leg or None,
                    "payload_type": p.pt,
                    "codec": p.encoding,
                    "decoded": off is not None,
                    "packets": p.packets,
                    "start": iso_time(seg.piece_start_ns(p)),
                    "offset_s": None if off is None else round(off / r.rate, 6),
                    "duration_s": None if off is None else round(p.length / p.codec.sample_rate, 6),
                })
        out[SIDE_NAMES[side]] = {
            "stream": main,
            "call_id": s.leg or None,
            "src": _endpoint(s.src, s.sport),
            "ssrc": s.ssrc,
            "sensors": sorted(s.sensors),
            "packets": ch.packets[main],
            "lost": s.lost,
            "candidates": n,
            "reason": reason,
            "noise": r.noise[side].verdict() if side in r.noise else None,
            "segments": segments[:_MAX_SEGMENTS],
        }
        if len(segments) > _MAX_SEGMENTS:
            out[SIDE_NAMES[side]]["segments_not_listed"] = len(segments) - _MAX_SEGMENTS
    return out


def _media_warnings(call: FinishedCall, media: SecureMedia, audio: _Audio) -> list[str]:
    """What the operator must know about encrypted or noise-like media, one sentence each."""
    out: list[str] = []
    hidden: dict[str, list[int]] = {}
    for i, sec in enumerate(media.security):
        if sec.encrypted and sec.not_decrypted:
            hidden.setdefault(sec.method or "unknown", []).append(i)
    for method, idx in sorted(hidden.items()):
        out.append(f"Stream(s) {', '.join(map(str, idx))} are encrypted ({method}) with keys "
                   "the recorder cannot use: their encrypted packets are not decoded.")
    failed = [(i, sec.auth_failures) for i, sec in enumerate(media.security) if sec.auth_failures]
    if failed:
        out.append("SRTP authentication failed for " + ", ".join(
            f"{n} packet(s) of stream {i}" for i, n in failed) + "; they are not decoded.")
    if media.rtcp_dropped:
        out.append(f"{media.rtcp_dropped} SRTCP packet(s) could not be decrypted and are left "
                   "out of the RTCP figures.")
    audio_streams = [i for i, s in enumerate(call.streams) if s.kind == "audio" and s.packets]
    if audio.rendered is None and audio_streams and \
            all(media.security[i].encrypted and not media.security[i].decrypted for i in audio_streams):
        out.append("No audio file: all of the call's audio is encrypted with keys the recorder "
                   "cannot use.")
    if audio.outside:
        out.append(f"{sum(audio.outside.values())} audio packet(s) of stream(s) "
                   f"{', '.join(map(str, sorted(audio.outside)))} were stamped more than "
                   f"{MARGIN_S} s before the call's signalled start or after its end: they are "
                   "in call.pcap but not in the audio.")
    if audio.rendered is not None:
        for side, meter in sorted(audio.rendered.noise.items()):
            if meter.noise_like:
                out.append(f"The {SIDE_NAMES[side]} audio channel is statistically random noise "
                           f"for {meter.seconds:.1f} s, as encrypted media decoded as audio is: "
                           "do not trust it.")
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
            "sip_packets_by_sensor": dict(sorted(leg.sip_by_sensor.items())),
            "relation": None if leg.relation is None else {"to": leg.relation[0], "by": leg.relation[1]},
        })
    return out


def _pcap(call: FinishedCall, cb: CallBytes | None) -> tuple[bytes, int]:
    """call.pcap of a call in memory, in time order (a stable sort: equal times keep
    arrival order); `cb`: its frames' times and lengths, already as arrays."""
    data: Sequence[bytes] = call.frame_data
    if cb is not None and cb.ts is not None and not cb.n_spilled:
        t, lens = cb.ts, np.diff(cb.offsets)
    else:
        t = np.fromiter(call.frame_ts, dtype=np.int64, count=len(call.frame_ts))
        lens = None
    if call.other_linktype:
        keep = np.ones(len(data), dtype=bool)
        keep[np.asarray(call.other_linktype, dtype=np.int64)] = False
        rows = np.flatnonzero(keep)
        t = t[rows]
        lens = None if lens is None else lens[rows]
        data = [data[i] for i in rows.tolist()]
    if len(t) > 1 and bool((t[1:] < t[:-1]).any()):
        order = np.argsort(t, kind="stable")
        t = t[order]
        lens = None if lens is None else lens[order]
        data = [data[i] for i in order.tolist()]
    return pcap_bytes_of(t, data, call.linktype, lengths=lens), len(data)


def _pcap_file(call: FinishedCall, window: int = 50_000) -> tuple[Path, int]:
    """call.pcap of a long call, written to a file beside its spill file frame by
    frame (never all in memory): in time order, sorted within a window of
    `window` frames (frames are appended in capture order except SIP-over-TCP
    messages and merged legs, which are seldom that far behind)."""
    assert call.spill is not None
    path = call.spill.path.with_suffix(".pcap")
    skip = set(call.other_linktype)
    heap: list[tuple[int, int, bytes]] = []

    def ordered():
        for i, (ts, data) in enumerate(zip(call.frame_ts, call.frame_data)):
            if i in skip:
                continue
            heapq.heappush(heap, (ts, i, data))
            if len(heap) > window:
                t, _, d = heapq.heappop(heap)
                yield t, d
        while heap:
            t, _, d = heapq.heappop(heap)
            yield t, d

    with open(path, "wb") as fh:
        n = write_pcap(fh, ordered(), call.linktype)
    call.spill.outputs.append(path)
    return path, n


def _is_signalling(linktype: int, data: bytes) -> bool:
    """A frame of call.pcap that carries SIP: SIP over UDP (or its first IP
    fragment), a later IP fragment (only SIP datagrams' fragments join a call),
    any TCP segment (only SIP connections are followed)."""
    try:
        d = decode(linktype, data)
    except DecodeError:
        return False
    if d.proto == 6:
        return True
    if d.proto != 17:
        return False
    if d.is_fragment and d.sport == 0 and d.dport == 0:
        return True
    off = d.payload_offset
    return looks_like_sip(data[off:off + d.payload_len])


def _signalling_only(call: FinishedCall) -> None:
    """A call the recording rules left unrecorded (controller/calls/rules.py): no media
    in its recording — no streams (so no audio.wav and no DTMF) and only SIP in
    call.pcap.  Its media was normally never kept; what was (a root leg that said
    "no" joined later) is dropped here."""
    skip = set(call.other_linktype)
    frame_ts: list[int] = []
    frame_data: list[bytes] = []
    other: list[int] = []
    for i, (ts, data) in enumerate(zip(call.frame_ts, call.frame_data)):
        if i in skip:
            other.append(len(frame_data))   # not written anyway (another link type)
        elif not _is_signalling(call.linktype, data):
            continue
        frame_ts.append(ts)
        frame_data.append(data)
    call.frame_ts, call.frame_data, call.other_linktype = frame_ts, frame_data, other
    call.streams = []


def build_recording(call: FinishedCall, audio_format: str = "wav", retention: Any = None) -> Recording:
    """call.json + call.pcap (+ audio.wav, .flac or .opus when a direction was decoded)."""
    rid = recording_id(call.call_ids[0] if call.call_ids else call.key or "", call.started_ns)
    started_at = prefix_date(call.started_ns)
    if not call.recorded:
        _signalling_only(call)
    load_runs(call.streams, call.spill)
    # encrypted media: SRTP/SRTCP decrypted where keys were visible, the rest left out
    # of audio and DTMF (controller/media/encrypted.py); call.pcap stays as captured
    media = secure_media(call)
    # the call's frames as numpy buffers, built once for audio, quality and call.pcap
    # (a spilled long call's read in place from its spill file's map)
    cb = CallBytes(call.frame_ts, call.frame_data) if call.frame_data else None
    try:
        audio = _audio(call, audio_format, media, cb if media.frame_data is call.frame_data else None)
        dtmf = call_dtmf(call.started_ns, media.frame_ts, media.frame_data, media.streams,
                         call.rtpmap, call.legs) if call.recorded else []
    finally:
        media.close()
    pcap, pcap_packets = _pcap(call, cb) if call.spill is None else _pcap_file(call)
    # call features (issue #5): quality per stream, DTMF, hold — controller/{quality,dtmf,hold}.py
    quality = call_quality(call.frame_ts, call.frame_data, call.streams, call.rtpmap,
                           call.rtcp_frames if call.recorded else [], call.linktype,
                           call.other_linktype, media.rtcp, cb)
    hold = call_hold(call.started_ns, call.ended_ns if call.ended_ns is not None else call.started_ns,
                     call.legs)
    conflicts = call_conflicts(call.frame_data, call.streams, call.legs, call.sites)
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
        "streams": [_stream_meta(call, i, s, audio, media.security[i])
                    for i, s in enumerate(call.streams)],
        "dtmf": dtmf,
        "hold": hold,
        "audio": {"file": audio.name, "sample_rate": audio.rendered.rate, "channels": 2,
                  "sources": _audio_sources(call, audio)} if audio.rendered else None,
        "encrypted": media.encrypted,                  # controller/media/encrypted.py
        "recorded": call.recorded,                     # recording rules (controller/calls/rules.py)
        "not_recorded_reason": call.not_recorded_reason,
        "signalling": call.signalling,
        "copies_dropped": sum(call.copies.values()),
        "copies_dropped_by_sensor": dict(sorted(call.copies.items())),
        "pcap": CALL_PCAP,
        "pcap_packets": pcap_packets,
        "pcap_skipped": len(call.other_linktype),
        "clock": call.clock,
        "conflicts": conflicts,                         # controller/calls/provenance.py
        "warnings": call.warnings + _media_warnings(call, media, audio) + conflict_warnings(conflicts),
    }
    for entry, q in zip(meta["streams"], quality):  # issue #5: quality fields per stream
        entry.update(q)
    meta.update(call.counts)
    # issue #15: how long it is kept (storage/retention.py); None: until erased
    meta["retention"] = retention.decide(meta) if retention is not None else None
    files = {CALL_JSON: json.dumps(meta, indent=2, sort_keys=False, ensure_ascii=False).encode("utf-8"),
             CALL_PCAP: pcap}
    if audio.rendered is not None:
        files[audio.name] = audio.data
    return Recording(rid, recording_prefix(started_at, rid), started_at, files, meta)

"""Per-stream quality for call.json: jitter, delta, reordering, RTCP reports, R-factor/MOS.

Runs at finalize time only, from what the call kept anyway: the payload
references of each stream (frame index, payload start, end) and the frames
(`frame_data[idx]`, `frame_ts[idx]`).  The RTP header in front of each
payload gives the sequence number and marker bit; the RTP timestamp is kept
by the stream.  Nothing here touches the packet path.

Jitter and delta follow Wireshark's RTP stream analysis (tshark 4.0,
`-z rtp,streams`), which is RFC 3550 A.8 in milliseconds, so the figures can
be checked against tshark packet for packet:

* D(i) = |arrival(i) - (arrival(i-1) + (nominal(i) - last nominal))| where
  nominal = (RTP timestamp - the stream's first timestamp, signed 32-bit) /
  (clock rate // 1000); J(i) = J(i-1) + (D(i) - J(i-1)) / 16;
* packets of a payload type without a clock rate (telephone-event, unknown
  dynamic types) update the arrival reference but not the nominal one;
* max delta, max and mean jitter are taken over "regular" packets only (not
  the first, not marked, not comfort noise or right after it, timestamp not
  going back); mean jitter is the running mean of J over those packets.

R-factor and MOS: ITU-T G.107 E-model, simplified as VoIP recorders do
(docs/DECISIONS.md "Call features"): R = 93.2 - Id - Ie,eff with
Ie,eff = Ie + (95 - Ie) * Ppl / (Ppl / BurstR + Bpl) (Ie, Bpl per codec from
G.113 Appendix I), Id from the RTCP round-trip time when one was measured
(else 0), MOS from R by G.107 Annex B.
"""
from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from protocols.errors import DecodeError
from protocols.layers import decode
from protocols.rtcp import RR, SR, ntp_middle, parse_rtcp

from controller.media.jitter import CallBytes, analyse_arrays, stream_arrays
from controller.media.streams import RtpStream

__all__ = ["stream_packets", "rtp_header_offset", "analyse", "stream_quality", "rtcp_reports",
           "rtcp_summary", "r_factor", "mos_from_r", "CODEC_IMPAIRMENT"]

_NS_PER_MS = 1_000_000
_REF_MASK = (1 << 17) - 1
_U32 = struct.Struct("!I")

#: Wireshark's clock rates of the static payload types (tap-rtp-analysis.c): a
#: static type not listed has no clock rate and is left out of the jitter.
STATIC_CLOCK = {0: 8000, 1: 8000, 2: 8000, 3: 8000, 4: 8000, 5: 8000, 6: 16000, 7: 8000, 8: 8000,
                9: 8000, 10: 44100, 11: 44100, 12: 8000, 13: 8000, 14: 90000, 15: 8000, 16: 11025,
                17: 22050, 18: 8000, 19: 8000, 25: 90000, 26: 90000, 28: 90000, 31: 90000,
                32: 90000, 33: 90000, 34: 90000}
_CN = (13, 19)

#: E-model codec figures (Ie, Bpl): ITU-T G.113 Appendix I.  G.711 with packet
#: loss concealment (what phones do); codecs G.113 does not rate are taken as
#: G.711 (docs/DECISIONS.md).
CODEC_IMPAIRMENT: dict[str, tuple[float, float]] = {
    "PCMU": (0.0, 25.1), "PCMA": (0.0, 25.1), "G711": (0.0, 25.1),
    "G722": (0.0, 25.1),
    "G729": (11.0, 19.0), "G729A": (11.0, 19.0), "G729AB": (11.0, 19.0),
    "G723": (15.0, 16.1),
    "GSM": (20.0, 10.0), "GSM-EFR": (5.0, 10.0),
    "G726-32": (7.0, 10.0), "G728": (7.0, 10.0),
}
_DEFAULT_IMPAIRMENT = (0.0, 25.1)
R_BASE = 93.2          # G.107 default R (Ro - Is) with every other impairment at its default


# -- reading the stream back from the frames -------------------------------------------

def _rtp_header(data: bytes, start: int, ssrc: int) -> int:
    """Offset of the RTP header whose payload starts at ``start`` (-1 if not found)."""
    p = start - 12
    if p >= 0 and data[p] & 0xDF == 0x80 and _U32.unpack_from(data, p + 8)[0] == ssrc:
        return p                                  # the common case: no CSRC, no extension
    for cc in range(1, 16):                       # CSRCs, no extension
        p = start - 12 - 4 * cc
        if p < 0:
            break
        if data[p] & 0xDF == 0x80 | cc and _U32.unpack_from(data, p + 8)[0] == ssrc:
            return p
    for p in range(start - 16, max(-1, start - 1100), -1):  # a header extension (rare)
        b0 = data[p]
        if b0 & 0xD0 != 0x90 or _U32.unpack_from(data, p + 8)[0] != ssrc:
            continue
        x = p + 12 + 4 * (b0 & 0x0F)
        if x + 4 <= start and x + 4 + 4 * int.from_bytes(data[x + 2:x + 4], "big") == start:
            return p
    return -1


rtp_header_offset = _rtp_header


def stream_packets(frame_ts: Sequence[int], frame_data: Sequence[bytes], stream: RtpStream
                   ) -> list[tuple[int, int, int, int, bool]]:
    """Every packet the stream kept, in arrival order: (capture ns, sequence number,
    RTP timestamp, payload type, marker).  Mirror copies and packets sent twice
    with one sequence number are not kept by the stream, so they are not here."""
    items: list[tuple[int, int, int]] = []
    for pt, run in stream.by_pt.items():
        items.extend((ref, ts, pt) for ts, ref in zip(run.timestamps, run.refs) if ref >= 0)
    if len(stream.by_pt) > 1:
        items.sort()     # one run alone is in arrival order already (refs grow with the frame)
    out: list[tuple[int, int, int, int, bool]] = []
    ssrc = stream.ssrc
    for ref, ts, pt in items:
        idx = ref >> 34
        data = frame_data[idx]
        p = _rtp_header(data, (ref >> 17) & _REF_MASK, ssrc)
        if p < 0:
            continue
        out.append((frame_ts[idx], (data[p + 2] << 8) | data[p + 3], ts, pt, data[p + 1] >= 0x80))
    return out


def _clock_rate(stream: RtpStream, pt: int, rtpmap: dict) -> int:
    """Wireshark's choice: static types by table, dynamic ones by SDP; no clock
    rate for telephone-event (its timestamp stays at the event's start)."""
    if pt < 96:
        return STATIC_CLOCK.get(pt, 0)
    enc = stream.encoding(pt, rtpmap)
    if enc is None or enc[0].upper().startswith("TELEPHONE-EVENT"):
        return 0
    return enc[1]


# -- the analysis -----------------------------------------------------------------------

def analyse(packets: Sequence[tuple[int, int, int, int, bool]], clock_of: dict[int, int]
            ) -> dict[str, Any]:
    """Jitter, delta and reordering of one stream's packets (arrival order).

    ``clock_of`` maps payload type -> clock rate (0: no jitter for it)."""
    out = {"out_of_order": 0, "max_delta_ms": None, "jitter_ms": None, "max_jitter_ms": None,
           "last_jitter_ms": None}
    if not packets:
        return out
    t0, seq0, first_ts, prev_pt, _ = packets[0]
    time = 0.0
    jitter = 0.0
    last_nominal = 0.0
    max_delta = max_jitter = mean_jitter = 0.0
    have_delta = have_jitter = False
    prev_ts = first_ts
    delta = 0.0
    total = 1
    max_ext = 0x10000 + seq0
    ooo = 0
    for arrival, seq, ts, pt, marker in packets[1:]:
        # reordering: extended sequence number against the highest so far
        d = (seq - max_ext) & 0xFFFF
        if d >= 0x8000:
            d -= 0x10000
        ext = max_ext + d
        if ext > max_ext or d < -3000:        # in order, or a restart of the sequence
            max_ext = ext
        elif ext < max_ext:
            ooo += 1
        now = (arrival - t0) / _NS_PER_MS
        clock = clock_of.get(pt, 0)
        follow_cn = prev_pt in _CN
        prev_pt = pt
        cur_jitter = 0.0
        if clock:
            nominal = (((ts - first_ts) + 0x80000000) & 0xFFFFFFFF) - 0x80000000
            nominal /= clock // 1000
            diff = abs(now - (time + nominal - last_nominal))
            cur_jitter = (15 * jitter + diff) / 16
            jitter = cur_jitter
            last_nominal = nominal
        delta = now - time
        back = ((ts - prev_ts) & 0xFFFFFFFF) >= 0x80000000
        if not (marker or pt in _CN or back or follow_cn):
            if delta > max_delta:
                max_delta = delta
            have_delta = True
            if clock:
                if jitter > max_jitter:
                    max_jitter = jitter
                mean_jitter = (mean_jitter * (total - 1) + cur_jitter) / total
                have_jitter = True
        time = now
        prev_ts = ts
        total += 1
    out["out_of_order"] = ooo
    if have_delta:
        out["max_delta_ms"] = round(max_delta, 3)
    if have_jitter:
        out["jitter_ms"] = round(mean_jitter, 3)
        out["max_jitter_ms"] = round(max_jitter, 3)
        out["last_jitter_ms"] = round(jitter, 3)
    return out


def _burst_ratio(packets: Sequence[tuple[int, int, int, int, bool]], lost: int) -> float:
    """G.107 BurstR from the loss pattern: mean observed loss run over the mean run
    random loss at the same rate would give (1 / (1 - p)); at least 1."""
    if lost <= 0 or len(packets) < 2:
        return 1.0
    seqs = sorted({p[1] for p in packets})
    runs = 0
    gaps = 0
    for a, b in zip(seqs, seqs[1:]):
        g = b - a - 1
        if 0 < g < 3000:
            runs += 1
            gaps += g
    if not runs:
        return 1.0
    p = lost / (lost + len(packets))
    return max(1.0, gaps / runs * (1 - p))


def r_factor(codec: str | None, loss_pct: float, burst_ratio: float = 1.0,
             rtt_ms: float | None = None) -> float:
    """Simplified E-model R (docs/DECISIONS.md "Call features"), 0..100."""
    ie, bpl = CODEC_IMPAIRMENT.get((codec or "").upper(), _DEFAULT_IMPAIRMENT)
    ppl = max(0.0, loss_pct)
    ie_eff = ie + (95 - ie) * ppl / (ppl / max(burst_ratio, 1.0) + bpl) if ppl else ie
    idd = 0.0
    if rtt_ms is not None and rtt_ms > 0:
        ta = rtt_ms / 2
        idd = 0.024 * ta + (0.11 * (ta - 177.3) if ta > 177.3 else 0.0)
    return max(0.0, min(100.0, R_BASE - idd - ie_eff))


def mos_from_r(r: float) -> float:
    """G.107 Annex B: MOS-CQE from R."""
    if r <= 0:
        return 1.0
    if r >= 100:
        return 4.5
    return 1 + 0.035 * r + r * (r - 60) * (100 - r) * 7e-6


def _burst_ratio_np(seq: np.ndarray, lost: int) -> float:
    """`_burst_ratio` on an array of sequence numbers."""
    if lost <= 0 or len(seq) < 2:
        return 1.0
    g = np.diff(np.unique(seq)) - 1
    g = g[(g > 0) & (g < 3000)]
    if not len(g):
        return 1.0
    p = lost / (lost + len(seq))
    return max(1.0, float(g.sum()) / len(g) * (1 - p))


def stream_quality(frame_ts: Sequence[int], frame_data: Sequence[bytes], stream: RtpStream,
                   rtpmap: dict, rtt_ms: float | None = None,
                   cb: CallBytes | None = None) -> dict[str, Any]:
    """The call.json quality fields of one stream (besides packets/lost/duplicates).
    With `cb` (the call's frames in one buffer) the vectorised analysis
    (controller/media/jitter.py) runs; the per-packet loop when it cannot."""
    clocks = {pt: _clock_rate(stream, pt, rtpmap) for pt in stream.by_pt}
    arrays = stream_arrays(cb, stream) if cb is not None else None
    q = analyse_arrays(*arrays, clocks) if arrays is not None else None
    if q is not None:
        received = len(arrays[0])
        burst = lambda lost: _burst_ratio_np(arrays[1], lost)  # noqa: E731
    else:
        packets = stream_packets(frame_ts, frame_data, stream)
        q = analyse(packets, clocks)
        received = len(packets)
        burst = lambda lost: _burst_ratio(packets, lost)  # noqa: E731
    q.pop("last_jitter_ms")
    audio_pt = stream.audio_pt(rtpmap)
    if audio_pt is None:
        q["r_factor"] = q["mos"] = None
        return q
    enc = stream.encoding(audio_pt, rtpmap)
    lost = stream.lost
    loss_pct = 100.0 * lost / (lost + received) if lost + received else 0.0
    r = r_factor(enc[0] if enc else None, loss_pct, burst(lost), rtt_ms)
    q["r_factor"] = round(r, 1)
    q["mos"] = round(mos_from_r(r), 2)
    return q


# -- RTCP -------------------------------------------------------------------------------

def rtcp_reports(frame_ts: Sequence[int], frame_data: Sequence[bytes], indexes: Sequence[int],
                 linktype: int, skip: set[int] | frozenset = frozenset(),
                 clear: Mapping[int, bytes | None] | None = None) -> tuple[list, int]:
    """The RTCP packets of a call: ([(capture ns, src ip, dst ip, parts)], malformed).
    Frames of another link type (``skip``) cannot be decoded and are left out.
    ``clear``: SRTCP decrypted (controller/media/encrypted.py), frame index -> the RTCP in
    clear, or None for SRTCP no visible key opens (left out)."""
    out = []
    bad = 0
    clear = clear or {}
    for idx in indexes:
        if idx in skip:
            continue
        data = frame_data[idx]
        plain = clear.get(idx, b"")
        if plain is None:
            continue
        try:
            d = decode(linktype, data)
            parts = parse_rtcp(plain or data[d.payload_offset:d.payload_offset + d.payload_len])
        except DecodeError:
            bad += 1
            continue
        out.append((frame_ts[idx], d.src, d.dst, parts))
    return out, bad


def rtcp_summary(reports: list, streams: Sequence[RtpStream], clock_of_ssrc: dict[int, int]
                 ) -> dict[int, dict[str, Any]]:
    """Per stream (index into ``streams``): what the RTCP of the call said about it.

    A sender report counts for the stream whose SSRC sent it, a report block
    for the stream it reports on.  When a stream's addresses match the RTCP's
    (SR from the stream's source, RR from its destination), only those count,
    so a relayed stream (same SSRC on two legs) gets its own leg's reports.
    Round-trip time: a report block whose LSR names a sender report this call
    also captured gives RTT = (block capture time - SR capture time) - DLSR:
    the round trip from the capture point to the reporter and back; samples
    below -1 ms are dropped (the LSR matched the wrong report), the mean of the
    others (small negative ones included: DLSR noise) is floored at 0.
    """
    srs = []        # (ts, src, dst, part)
    blocks = []     # (ts, src, dst, block)
    sr_seen: dict[tuple[int, int], int] = {}
    for ts, src, dst, parts in reports:
        for part in parts:
            if part.pt == SR:
                srs.append((ts, src, dst, part))
                sr_seen.setdefault((part.ssrc, ntp_middle(part.ntp)), ts)
            if part.pt in (SR, RR):
                blocks.extend((ts, src, dst, b) for b in part.reports)
    out: dict[int, dict[str, Any]] = {}
    for i, s in enumerate(streams):
        mine = [r for r in srs if r[3].ssrc == s.ssrc]
        near = [r for r in mine if r[1] == s.src and r[2] == s.dst]
        mine = near or mine
        about = [b for b in blocks if b[3].ssrc == s.ssrc]
        near_b = [b for b in about if b[1] == s.dst and b[2] == s.src]
        about = near_b or about
        if not mine and not about:
            continue
        clock = clock_of_ssrc.get(s.ssrc) or 8000
        summary: dict[str, Any] = {"sender_reports": len(mine), "packets": None, "octets": None,
                                   "receiver_reports": len(about), "fraction_lost": None,
                                   "max_fraction_lost": None, "cumulative_lost": None,
                                   "jitter_ms": None, "max_jitter_ms": None,
                                   "rtt_ms": None, "max_rtt_ms": None}
        if mine:
            last = max(mine, key=lambda r: r[0])[3]
            summary["packets"] = last.packets
            summary["octets"] = last.octets
        if about:
            about.sort(key=lambda b: b[0])
            last_b = about[-1][3]
            summary["fraction_lost"] = round(last_b.fraction_lost / 256, 4)
            summary["max_fraction_lost"] = round(max(b[3].fraction_lost for b in about) / 256, 4)
            summary["cumulative_lost"] = last_b.cumulative_lost
            summary["jitter_ms"] = round(last_b.jitter * 1000 / clock, 3)
            summary["max_jitter_ms"] = round(max(b[3].jitter for b in about) * 1000 / clock, 3)
            rtts = []
            for ts, _, _, b in about:
                sent = sr_seen.get((s.ssrc, b.lsr)) if b.lsr else None
                if sent is not None and sent <= ts:
                    rtt = (ts - sent) / _NS_PER_MS - b.dlsr * 1000 / 65536
                    # a phone's DLSR is not exact: a sample slightly below 0 is noise and
                    # kept (the mean stays unbiased); far below, the LSR named another SR
                    if rtt >= -1.0:
                        rtts.append(rtt)
            if rtts:
                summary["rtt_ms"] = round(max(0.0, sum(rtts) / len(rtts)), 3)
                summary["max_rtt_ms"] = round(max(0.0, max(rtts)), 3)
        out[i] = summary
    return out


def call_quality(frame_ts: Sequence[int], frame_data: Sequence[bytes], streams: Sequence[RtpStream],
                 rtpmap: dict, rtcp_frames: Sequence[int], linktype: int,
                 other_linktype: Sequence[int], clear_rtcp: Mapping[int, bytes | None] | None = None,
                 cb: CallBytes | None = None) -> list[dict[str, Any]]:
    """The quality fields of every stream of a call, in ``streams`` order (``clear_rtcp``:
    SRTCP in clear, see `rtcp_reports`)."""
    clock_of_ssrc: dict[int, int] = {}
    for s in streams:
        pt = s.audio_pt(rtpmap)
        enc = None if pt is None else s.encoding(pt, rtpmap)
        if enc and enc[1]:
            clock_of_ssrc.setdefault(s.ssrc, enc[1])
    rtcp: dict[int, dict[str, Any]] = {}
    if rtcp_frames:
        reports, _bad = rtcp_reports(frame_ts, frame_data, rtcp_frames, linktype,
                                     set(other_linktype), clear_rtcp)
        rtcp = rtcp_summary(reports, streams, clock_of_ssrc)
    rtts = [r["rtt_ms"] for r in rtcp.values() if r.get("rtt_ms") is not None]
    call_rtt = sum(rtts) / len(rtts) if rtts else None
    out = []
    # the call's frames as numpy buffers for the vectorised analysis (a spilled
    # long call's from its spill file's map, never copied)
    if cb is None and streams:
        cb = CallBytes(frame_ts, frame_data)
    for i, s in enumerate(streams):
        summary = rtcp.get(i)
        rtt = summary["rtt_ms"] if summary and summary["rtt_ms"] is not None else call_rtt
        q = stream_quality(frame_ts, frame_data, s, rtpmap, rtt, cb)
        q["rtcp"] = summary
        out.append(q)
    return out

#!/usr/bin/env python3
"""Synthetic VoIP captures: N SIP/RTP calls over UDP on Ethernet, as classic pcap.

Used for the README demo (``samples/sample-call.pcap``), tests and benchmarks
(``frames()`` streams packets lazily, so 2,000 concurrent calls need no big
memory).  Each call is INVITE (SDP) -> 100 -> 180 -> 200 (SDP) -> ACK, then
20 ms G.711 RTP both ways with a tone per direction (so recordings are not
silence), RTCP SR every 5 s, then BYE -> 200; or INVITE -> 100 -> 486 -> ACK
for a busy call.  Output is deterministic for a given seed: every random
choice comes from generators seeded with (seed, call index).

Speed: RTP headers are prebuilt per stream with ``struct``; the per-packet work
is one ``Struct.pack`` plus incremental IPv4 and UDP checksums (payload sums
are precomputed for the 50 frames of the looping tone).

    python scripts/gencalls.py OUT.pcap --calls 2000 --duration 10 --concurrent 2000
"""
from __future__ import annotations

import argparse
import ipaddress
import random
import struct
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controller.audio import alaw_encode, ulaw_encode  # noqa: E402
from protocols.pcapfile import LINKTYPE_ETHERNET, write_pcap  # noqa: E402

MS = 1_000_000
SEC = 1_000_000_000
PTIME_NS = 20 * MS
FRAME = 160                                   # G.711 octets (= samples) per 20 ms
DEFAULT_START_NS = int(datetime(2024, 1, 15, 10, 0, tzinfo=timezone.utc).timestamp()) * SEC
PAYLOAD_TYPES = {"PCMU": 0, "PCMA": 8}
SIP_PORT = 5060
RTCP_INTERVAL_NS = 5 * SEC

_HDR = struct.Struct(">18sH4sH14sHBBHII")     # Ethernet + IPv4 + UDP + RTP = 54 bytes


@dataclass(frozen=True)
class CallPlan:
    """Everything a test needs to know about one generated call."""

    index: int
    call_id: str
    codec: str
    answered: bool
    caller_ip: str
    callee_ip: str
    caller_rtp_port: int
    callee_rtp_port: int
    caller_ssrc: int
    callee_ssrc: int
    invite_ns: int
    answer_ns: int | None          # 200 OK (None when busy)
    end_ns: int                    # BYE, or the ACK of the 486
    rtp_packets: int               # per direction
    caller_hangs_up: bool


def _phone_ip(side: int, index: int) -> str:
    """Caller ``10.1.x.y`` / callee ``10.2.x.y``, distinct per call (65k calls per side)."""
    return f"10.{side + (index // 65024) * 2}.{(index // 254) % 256}.{index % 254 + 1}"


def plan(calls: int = 2, duration: float = 10.0, concurrent: int = 2, seed: int = 1, *,
         start_ns: int = DEFAULT_START_NS, codecs: Sequence[str] = ("PCMU", "PCMA"),
         busy_every: int = 0) -> list[CallPlan]:
    """Plan ``calls`` calls with ``duration`` s of talk, about ``concurrent`` at a time.

    Calls start every (ring + talk) / concurrent seconds, so at the peak
    ``concurrent`` calls overlap.  Every ``busy_every``-th call (1-based) is
    rejected with 486 when ``busy_every`` > 0.
    """
    packets = max(1, round(duration * SEC / PTIME_NS))
    spacing = int((2.0 + duration) * SEC / max(1, concurrent))
    out = []
    for i in range(calls):
        rng = random.Random(f"gencalls:{seed}:{i}")
        invite = start_ns + i * spacing + rng.randrange(0, max(1, spacing // 4))
        busy = busy_every > 0 and (i + 1) % busy_every == 0
        answer = None if busy else invite + rng.randrange(1 * SEC, 3 * SEC)
        end = invite + rng.randrange(SEC // 2, 3 * SEC // 2) if busy else (
            answer + 40 * MS + packets * PTIME_NS + 15 * MS)  # type: ignore[operator]
        out.append(CallPlan(
            index=i, call_id=f"{rng.getrandbits(64):016x}@{_phone_ip(1, i)}",
            codec=codecs[i % len(codecs)].upper(), answered=not busy,
            caller_ip=_phone_ip(1, i), callee_ip=_phone_ip(2, i),
            caller_rtp_port=rng.randrange(8192, 16383) * 2, callee_rtp_port=rng.randrange(8192, 16383) * 2,
            caller_ssrc=rng.getrandbits(32), callee_ssrc=rng.getrandbits(32),
            invite_ns=invite, answer_ns=answer, end_ns=end, rtp_packets=0 if busy else packets,
            caller_hangs_up=rng.random() < 0.5,
        ))
    return out


# -- packet building ---------------------------------------------------------

def _fold(s: int) -> int:
    s = (s & 0xFFFF) + (s >> 16)
    return (s & 0xFFFF) + (s >> 16)


def _wordsum(data: bytes) -> int:
    if len(data) & 1:
        data += b"\0"
    return sum(struct.unpack(f"!{len(data) // 2}H", data))


def _mac(ip: bytes) -> bytes:
    return b"\x02\x00" + ip  # locally administered, derived from the address


def udp_frame(src: str, dst: str, sport: int, dport: int, payload: bytes, ip_id: int, tos: int = 0x68) -> bytes:
    """One Ethernet/IPv4/UDP frame with correct IP and UDP checksums (slow path: SIP, RTCP)."""
    s, d = ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed
    ulen = 8 + len(payload)
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, tos, 20 + ulen, ip_id & 0xFFFF, 0x4000, 64, 17, 0, s, d)
    ip = ip[:10] + struct.pack(">H", ~_fold(_wordsum(ip)) & 0xFFFF) + ip[12:]
    csum = ~_fold(_wordsum(s + d) + 17 + ulen + sport + dport + ulen + _wordsum(payload)) & 0xFFFF
    udp = struct.pack(">HHHH", sport, dport, ulen, csum or 0xFFFF)
    return _mac(d) + _mac(s) + b"\x08\x00" + ip + udp + payload


@lru_cache(maxsize=256)
def _tone_frames(codec: str, freq: int) -> tuple[tuple[bytes, ...], tuple[int, ...]]:
    """One second (50 frames) of a tone with a 2 Hz envelope: loops seamlessly
    because both frequencies are whole numbers of cycles per second."""
    t = np.arange(8000) / 8000.0
    pcm = (9000 * (0.55 + 0.45 * np.sin(2 * np.pi * 2 * t)) * np.sin(2 * np.pi * freq * t)).astype(np.int16)
    octets = (ulaw_encode if codec == "PCMU" else alaw_encode)(pcm).tobytes()
    frames = tuple(octets[k * FRAME:(k + 1) * FRAME] for k in range(50))
    return frames, tuple(_wordsum(f) for f in frames)


def _rtp_stream(p: CallPlan, caller_side: bool, first_ns: int, seed: int, rtcp: bool) -> Iterator[tuple[int, bytes]]:
    """RTP (and RTCP) of one direction, in time order."""
    rng = np.random.default_rng([seed, p.index, int(caller_side)])
    src, dst = (p.caller_ip, p.callee_ip) if caller_side else (p.callee_ip, p.caller_ip)
    sport, dport = (p.caller_rtp_port, p.callee_rtp_port) if caller_side else (p.callee_rtp_port, p.caller_rtp_port)
    ssrc = p.caller_ssrc if caller_side else p.callee_ssrc
    pt = PAYLOAD_TYPES[p.codec]
    freq = (400 if caller_side else 700) + 20 * (p.index % 20)
    payloads, paysums = _tone_frames(p.codec, freq)
    seq0, ts0, id0 = (int(x) for x in rng.integers(0, [1 << 16, 1 << 32, 1 << 16]))
    s, d = ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed
    ulen, tot = 8 + 12 + FRAME, 20 + 8 + 12 + FRAME
    pre = _mac(d) + _mac(s) + b"\x08\x00" + struct.pack(">BBH", 0x45, 0xB8, tot)
    mid = struct.pack(">HBB", 0x4000, 64, 17)
    addr = s + d + struct.pack(">HHH", sport, dport, ulen)
    ip_base = _wordsum(pre[14:] + mid + s + d)
    udp_base = _wordsum(s + d) + 17 + ulen + sport + dport + ulen + (0x8000 | pt) + (ssrc >> 16) + (ssrc & 0xFFFF)
    # Sender jitter: ±2 ms at most so packets stay in order.
    times = (first_ns + np.arange(p.rtp_packets, dtype=np.int64) * PTIME_NS
             + np.clip(rng.normal(0, 300_000, p.rtp_packets), -2 * MS, 2 * MS).astype(np.int64)).tolist()
    pack, next_rtcp, octets = _HDR.pack, first_ns + RTCP_INTERVAL_NS, 0
    for i, t in enumerate(times):
        if rtcp and t >= next_rtcp:
            yield next_rtcp, _rtcp(src, dst, sport + 1, dport + 1, ssrc, next_rtcp, (ts0 + i * FRAME) & 0xFFFFFFFF,
                                   i, octets, id0 + i + 30000)
            next_rtcp += RTCP_INTERVAL_NS
        seq, ts, ip_id, k = (seq0 + i) & 0xFFFF, (ts0 + i * FRAME) & 0xFFFFFFFF, (id0 + i) & 0xFFFF, i % 50
        marker = 0x80 if i == 0 else 0
        ucs = ~_fold(udp_base + marker + seq + (ts >> 16) + (ts & 0xFFFF) + paysums[k]) & 0xFFFF
        yield t, pack(pre, ip_id, mid, ~_fold(ip_base + ip_id) & 0xFFFF, addr, ucs or 0xFFFF,
                      0x80, pt | marker, seq, ts, ssrc) + payloads[k]
        octets += FRAME


def _rtcp(src: str, dst: str, sport: int, dport: int, ssrc: int, t_ns: int, rtp_ts: int,
          packets: int, octets: int, ip_id: int) -> bytes:
    """RTCP compound packet: sender report + SDES CNAME."""
    secs, frac = divmod(t_ns, SEC)
    ntp_hi, ntp_lo = secs + 2_208_988_800, (frac << 32) // SEC
    sr = struct.pack(">BBHIIIIII", 0x80, 200, 6, ssrc, ntp_hi, ntp_lo, rtp_ts, packets, octets)
    cname = f"gencalls@{src}".encode()
    item = bytes([1, len(cname)]) + cname + b"\0"
    item += b"\0" * (-(4 + len(item)) % 4)
    sdes = struct.pack(">BBHI", 0x81, 202, (4 + len(item)) // 4, ssrc) + item
    return udp_frame(src, dst, sport, dport, sr + sdes, ip_id, tos=0xB8)


def _sdp(ip: str, port: int, codec: str, sess: int) -> str:
    pt = PAYLOAD_TYPES[codec]
    return (f"v=0\r\no=- {sess} {sess} IN IP4 {ip}\r\ns=spanrec-gencalls\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP {pt} 101\r\na=rtpmap:{pt} {codec}/8000\r\n"
            f"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n")


def _sip(first: str, headers: list[tuple[str, str]], body: str = "") -> bytes:
    lines = [first, *(f"{k}: {v}" for k, v in headers)]
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body.encode())}")
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def _signalling(p: CallPlan, seed: int) -> list[tuple[int, bytes]]:
    """All SIP messages of a call, as frames in time order."""
    rng = random.Random(f"gencalls-sip:{seed}:{p.index}")
    a, b = p.caller_ip, p.callee_ip
    ua, ub = f"1{p.index:04d}", f"2{p.index:04d}"
    ftag, ttag = f"{rng.getrandbits(32):08x}", f"{rng.getrandbits(32):08x}"
    br = [f"z9hG4bK{rng.getrandbits(48):012x}" for _ in range(3)]
    frm, to = f'"Phone {ua}" <sip:{ua}@{a}>;tag={ftag}', f"<sip:{ub}@{b}>"
    to_t = f"{to};tag={ttag}"
    via_a = f"SIP/2.0/UDP {a}:{SIP_PORT};branch={br[0]};rport"
    common = [("From", frm), ("Call-ID", p.call_id)]
    agent = ("User-Agent", "spanrec-gencalls/1.0")
    contact_a, contact_b = f"<sip:{ua}@{a}:{SIP_PORT}>", f"<sip:{ub}@{b}:{SIP_PORT}>"
    ip_id = rng.randrange(1 << 16)
    msgs: list[tuple[int, str, str, bytes]] = []

    def req_a(t: int, first: str, hdrs: list[tuple[str, str]], body: str = "") -> None:
        msgs.append((t, a, b, _sip(first, hdrs, body)))

    def resp_b(t: int, status: str, to_hdr: str, cseq: str, extra: list[tuple[str, str]], body: str = "") -> None:
        msgs.append((t, b, a, _sip(f"SIP/2.0 {status}", [("Via", f"{via_a};received={a}"), common[0],
                                   ("To", to_hdr), common[1], ("CSeq", cseq), *extra], body)))

    t = p.invite_ns
    req_a(t, f"INVITE sip:{ub}@{b}:{SIP_PORT} SIP/2.0",
          [("Via", via_a), ("Max-Forwards", "70"), common[0], ("To", to), common[1], ("CSeq", "1 INVITE"),
           ("Contact", contact_a), ("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS"), agent],
          _sdp(a, p.caller_rtp_port, p.codec, rng.getrandbits(31)))
    resp_b(t + 2 * MS, "100 Trying", to, "1 INVITE", [agent])
    if not p.answered:
        resp_b(p.end_ns - 2 * MS, "486 Busy Here", to_t, "1 INVITE", [agent])
        req_a(p.end_ns, f"ACK sip:{ub}@{b}:{SIP_PORT} SIP/2.0",
              [("Via", via_a), ("Max-Forwards", "70"), common[0], ("To", to_t), common[1], ("CSeq", "1 ACK")])
    else:
        assert p.answer_ns is not None
        resp_b(t + 60 * MS, "180 Ringing", to_t, "1 INVITE", [("Contact", contact_b), agent])
        resp_b(p.answer_ns, "200 OK", to_t, "1 INVITE", [("Contact", contact_b), agent],
               _sdp(b, p.callee_rtp_port, p.codec, rng.getrandbits(31)))
        via_ack = f"SIP/2.0/UDP {a}:{SIP_PORT};branch={br[1]};rport"
        req_a(p.answer_ns + 30 * MS, f"ACK sip:{ub}@{b}:{SIP_PORT} SIP/2.0",
              [("Via", via_ack), ("Max-Forwards", "70"), common[0], ("To", to_t), common[1], ("CSeq", "1 ACK")])
        if p.caller_hangs_up:
            via_bye = f"SIP/2.0/UDP {a}:{SIP_PORT};branch={br[2]};rport"
            hdrs = [common[0], ("To", to_t), common[1]]
            req_a(p.end_ns, f"BYE sip:{ub}@{b}:{SIP_PORT} SIP/2.0",
                  [("Via", via_bye), ("Max-Forwards", "70"), *hdrs, ("CSeq", "2 BYE"), agent])
            msgs.append((p.end_ns + 20 * MS, b, a, _sip("SIP/2.0 200 OK", [("Via", f"{via_bye};received={a}"),
                                                                         *hdrs, ("CSeq", "2 BYE")])))
        else:  # callee hangs up: its own From/To and CSeq space
            via_bye = f"SIP/2.0/UDP {b}:{SIP_PORT};branch={br[2]};rport"
            hdrs = [("From", f"{to_t}"), ("To", frm), common[1]]
            msgs.append((p.end_ns, b, a, _sip(f"BYE sip:{ua}@{a}:{SIP_PORT} SIP/2.0",
                                              [("Via", via_bye), ("Max-Forwards", "70"), *hdrs, ("CSeq", "1 BYE"), agent])))
            msgs.append((p.end_ns + 20 * MS, a, b, _sip("SIP/2.0 200 OK", [("Via", f"{via_bye};received={b}"),
                                                                         *hdrs, ("CSeq", "1 BYE")])))
    return [(t, udp_frame(s, d, SIP_PORT, SIP_PORT, m, ip_id + n)) for n, (t, s, d, m) in enumerate(msgs)]


Source = tuple[int, Iterator[tuple[int, bytes]]]   # (no frame earlier than this ns, frames in time order)


def call_frames(p: CallPlan, seed: int = 1, rtcp: bool = True) -> list[Source]:
    """Time-ordered frame sources of one call (SIP, and RTP per direction), each
    with a lower bound of its first timestamp so it can be started lazily."""
    sources: list[Source] = [(p.invite_ns, iter(_signalling(p, seed)))]
    if p.answered and p.answer_ns is not None:
        for caller_side, first in ((False, p.answer_ns + 10 * MS), (True, p.answer_ns + 35 * MS)):
            # callee sends after its 200 OK, caller after its ACK; jitter is at most 2 ms early
            sources.append((first - 2 * MS, _rtp_stream(p, caller_side, first, seed, rtcp)))
    return sources


def merge_sources(sources: Sequence[Source], window_ns: int = 100 * MS) -> Iterator[tuple[int, bytes]]:
    """Merge time-ordered sources by timestamp, a time window at a time.

    A heap merge costs ~4 µs per packet with thousands of sources; here every
    active source is drained up to the window's end, the window is sorted once
    (C speed) and emitted.  Sources are started only when their window comes,
    so memory stays bounded by the active calls.  The sort is stable and the
    sources are visited in a fixed order, so equal timestamps come out the same
    way every run.
    """
    waiting = sorted(range(len(sources)), key=lambda k: sources[k][0], reverse=True)  # pop() = earliest
    active: list[list] = []   # [head frame, iterator]
    key = _ts_key
    t_end = sources[waiting[-1]][0] + window_ns if waiting else 0
    while waiting or active:
        if not active and waiting and sources[waiting[-1]][0] >= t_end:
            t_end = sources[waiting[-1]][0] + window_ns  # skip an idle gap
        while waiting and sources[waiting[-1]][0] < t_end:
            it = sources[waiting.pop()][1]
            head = next(it, None)
            if head is not None:
                active.append([head, it])
        batch: list[tuple[int, bytes]] = []
        append = batch.append
        still: list[list] = []
        for entry in active:
            head, it = entry
            while head is not None and head[0] < t_end:
                append(head)
                head = next(it, None)
            if head is not None:
                entry[0] = head
                still.append(entry)
        active = still
        batch.sort(key=key)
        yield from batch
        t_end += window_ns


def _ts_key(frame: tuple[int, bytes]) -> int:
    return frame[0]


def frames(calls: int = 2, duration: float = 10.0, concurrent: int = 2, seed: int = 1, *,
           start_ns: int = DEFAULT_START_NS, codecs: Sequence[str] = ("PCMU", "PCMA"),
           busy_every: int = 0, rtcp: bool = True) -> Iterator[tuple[int, bytes]]:
    """``(ts_ns, ethernet_frame)`` of all calls merged in time order, generated lazily."""
    plans = plan(calls, duration, concurrent, seed, start_ns=start_ns, codecs=codecs, busy_every=busy_every)
    yield from frames_for(plans, seed, rtcp=rtcp)


def frames_for(plans: Sequence[CallPlan], seed: int = 1, *, rtcp: bool = True) -> Iterator[tuple[int, bytes]]:
    """Frames of planned calls merged by time (ties keep a fixed order: deterministic)."""
    return merge_sources([src for p in plans for src in call_frames(p, seed, rtcp)])


def write(path: str | Path, **kwargs: object) -> int:
    """Write ``frames(**kwargs)`` to a pcap file; returns the number of frames."""
    with open(path, "wb", buffering=1 << 20) as fh:
        return write_pcap(fh, frames(**kwargs), LINKTYPE_ETHERNET)  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="pcap file to write")
    ap.add_argument("--calls", type=int, default=2)
    ap.add_argument("--duration", type=float, default=10.0, help="talk time per answered call, s")
    ap.add_argument("--concurrent", type=int, default=2, help="calls overlapping at the peak")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--codecs", default="PCMU,PCMA", help="comma list, used in turn")
    ap.add_argument("--busy-every", type=int, default=0, help="every Nth call gets 486 Busy (0: none)")
    ap.add_argument("--no-rtcp", action="store_true")
    args = ap.parse_args(argv)
    codecs = [c.strip().upper() for c in args.codecs.split(",") if c.strip()]
    unknown = [c for c in codecs if c not in PAYLOAD_TYPES]
    if unknown or not codecs or args.calls < 0 or args.duration <= 0 or args.concurrent < 1:
        ap.error(f"bad arguments (codecs must be among {sorted(PAYLOAD_TYPES)})")
    t0 = time.perf_counter()
    n = write(args.out, calls=args.calls, duration=args.duration, concurrent=args.concurrent, seed=args.seed,
              codecs=codecs, busy_every=args.busy_every, rtcp=not args.no_rtcp)
    dt = time.perf_counter() - t0
    print(f"{args.out}: {args.calls} calls, {n} packets, {args.out.stat().st_size} bytes "
          f"in {dt:.2f} s ({n / dt:,.0f} packets/s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Synthetic VoIP captures: N SIP/RTP calls over UDP on Ethernet, as classic pcap.

Used for the README demo (``samples/sample-call.pcap``), tests and benchmarks
(``frames()`` streams packets lazily, so 2,000 concurrent calls need no big
memory).  Each call is INVITE (SDP) -> 100 -> 180 -> 200 (SDP) -> ACK, then
20 ms G.711 RTP both ways with a tone per direction (so recordings are not
silence), RTCP SR every 5 s, then BYE -> 200; or INVITE -> 100 -> 486 -> ACK
for a busy call.  Output is deterministic for a given seed: every random
choice comes from generators seeded with (seed, call index).

Speed: RTP frames are built in numpy chunks from a template row per stream
with incremental IPv4/UDP checksums, and calls are merged a time window at a
time (see ``merge_sources``), so Python does little per packet.

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


_ROW = 54 + FRAME                              # bytes of one RTP frame
_CHUNK = 100                                   # RTP frames built per numpy pass (2 s)


def _be(values: np.ndarray, dtype: str) -> np.ndarray:
    """Big-endian bytes of each value, one row per value."""
    return values.astype(dtype).view(np.uint8).reshape(len(values), -1)


def _vfold(s: np.ndarray) -> np.ndarray:
    s = (s & 0xFFFF) + (s >> 16)
    return (s & 0xFFFF) + (s >> 16)


class _RtpSource:
    """RTP (and RTCP) of one direction.

    Frames are built ``_CHUNK`` at a time with numpy on one template row:
    only IP ID, both checksums, sequence number, timestamp, marker and payload
    change per packet, and the checksums are updated incrementally from
    precomputed sums (the payload sums come with the looping tone).  Python
    then only slices the chunk per packet.
    """

    def __init__(self, p: CallPlan, caller_side: bool, first_ns: int, seed: int, rtcp: bool) -> None:
        rng = np.random.default_rng([seed, p.index, int(caller_side)])
        self.src, self.dst = (p.caller_ip, p.callee_ip) if caller_side else (p.callee_ip, p.caller_ip)
        self.sport, self.dport = ((p.caller_rtp_port, p.callee_rtp_port) if caller_side
                                  else (p.callee_rtp_port, p.caller_rtp_port))
        self.ssrc = ssrc = p.caller_ssrc if caller_side else p.callee_ssrc
        self.pt = pt = PAYLOAD_TYPES[p.codec]
        payloads, paysums = _tone_frames(p.codec, (400 if caller_side else 700) + 20 * (p.index % 20))
        self.paymat = np.frombuffer(b"".join(payloads), np.uint8).reshape(len(payloads), FRAME)
        self.paysums = np.array(paysums, dtype=np.int64)
        self.seq0, self.ts0, self.id0 = (int(x) for x in rng.integers(0, [1 << 16, 1 << 32, 1 << 16]))
        s, d = ipaddress.IPv4Address(self.src).packed, ipaddress.IPv4Address(self.dst).packed
        ulen = 8 + 12 + FRAME
        row = (_mac(d) + _mac(s) + b"\x08\x00" + struct.pack(">BBHHHBBH", 0x45, 0xB8, 20 + ulen, 0, 0x4000, 64, 17, 0)
               + s + d + struct.pack(">HHHHBBHII", self.sport, self.dport, ulen, 0, 0x80, pt, 0, 0, ssrc))
        self.template = np.frombuffer(row + bytes(FRAME), np.uint8)
        self.ip_base = _wordsum(row[14:34])
        self.udp_base = (_wordsum(s + d) + 17 + ulen + self.sport + self.dport + ulen
                         + (0x8000 | pt) + (ssrc >> 16) + (ssrc & 0xFFFF))
        # Sender jitter: +-2 ms at most, so packets of a stream stay in order.
        n = p.rtp_packets
        self.times = (first_ns + np.arange(n, dtype=np.int64) * PTIME_NS
                      + np.clip(rng.normal(0, 300_000, n), -2 * MS, 2 * MS).astype(np.int64))
        self.start_ns = first_ns - 2 * MS
        self.pos, self.chunk_at, self.chunk = 0, -1, b""
        self.next_rtcp = first_ns + RTCP_INTERVAL_NS if rtcp else None
        self.done = n == 0

    def _build(self, a: int, b: int) -> bytes:
        i = np.arange(a, b, dtype=np.int64)
        seq, ts, ip_id, k = (self.seq0 + i) & 0xFFFF, (self.ts0 + i * FRAME) & 0xFFFFFFFF, (self.id0 + i) & 0xFFFF, i % 50
        marker = np.where(i == 0, 0x80, 0)
        ucs = ~_vfold(self.udp_base + marker + seq + (ts >> 16) + (ts & 0xFFFF) + self.paysums[k]) & 0xFFFF
        arr = np.empty((b - a, _ROW), np.uint8)
        arr[:] = self.template
        arr[:, 18:20] = _be(ip_id, ">u2")
        arr[:, 24:26] = _be(~_vfold(self.ip_base + ip_id) & 0xFFFF, ">u2")
        arr[:, 40:42] = _be(np.where(ucs == 0, 0xFFFF, ucs), ">u2")
        arr[:, 43] = self.pt | marker
        arr[:, 44:46] = _be(seq, ">u2")
        arr[:, 46:50] = _be(ts, ">u4")
        arr[:, 54:] = self.paymat[k]
        return arr.tobytes()

    def until(self, t_end: int) -> list[tuple[int, bytes]]:
        """Frames earlier than ``t_end`` not returned yet (unordered: the merge sorts)."""
        times, n = self.times, len(self.times)
        j = int(np.searchsorted(times, t_end))
        out: list[tuple[int, bytes]] = []
        while self.next_rtcp is not None and self.next_rtcp < t_end:
            t = self.next_rtcp
            if n == 0 or t > times[-1]:
                self.next_rtcp = None
                break
            i = int(np.searchsorted(times, t))  # packets sent before this report
            out.append((t, _rtcp(self.src, self.dst, self.sport + 1, self.dport + 1, self.ssrc, t,
                                 (self.ts0 + i * FRAME) & 0xFFFFFFFF, i, i * FRAME, self.id0 + i + 30000)))
            self.next_rtcp = t + RTCP_INTERVAL_NS
        while self.pos < j:
            if not self.chunk_at <= self.pos < self.chunk_at + _CHUNK:
                self.chunk_at = self.pos
                self.chunk = self._build(self.pos, min(n, self.pos + _CHUNK))
            e = min(j, self.chunk_at + _CHUNK)
            buf, base = self.chunk, (self.pos - self.chunk_at) * _ROW
            out.extend(zip(times[self.pos:e].tolist(),
                           [buf[o:o + _ROW] for o in range(base, base + (e - self.pos) * _ROW, _ROW)]))
            self.pos = e
        if self.pos >= n and self.next_rtcp is None:
            self.done, self.chunk = True, b""
        return out


class _ListSource:
    """Frames known up front (a call's SIP messages), in time order."""

    def __init__(self, frames: list[tuple[int, bytes]]) -> None:
        self.frames, self.pos = frames, 0
        self.start_ns = frames[0][0] if frames else 0
        self.done = not frames

    def until(self, t_end: int) -> list[tuple[int, bytes]]:
        j = self.pos
        while j < len(self.frames) and self.frames[j][0] < t_end:
            j += 1
        out, self.pos = self.frames[self.pos:j], j
        self.done = j >= len(self.frames)
        return out


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


Source = _RtpSource | _ListSource


def call_frames(p: CallPlan, seed: int = 1, rtcp: bool = True) -> list[Source]:
    """Frame sources of one call: its SIP messages, and RTP per direction."""
    sources: list[Source] = [_ListSource(_signalling(p, seed))]
    if p.answered and p.answer_ns is not None:
        # The callee sends after its 200 OK, the caller after its ACK.
        sources.append(_RtpSource(p, False, p.answer_ns + 10 * MS, seed, rtcp))
        sources.append(_RtpSource(p, True, p.answer_ns + 35 * MS, seed, rtcp))
    return sources


def merge_sources(sources: Sequence[Source], window_ns: int = 250 * MS) -> Iterator[tuple[int, bytes]]:
    """Merge sources by timestamp, one time window at a time.

    A heap merge costs ~4 µs per packet with thousands of sources; here each
    active source hands over its frames before the window's end, the window is
    sorted once (C speed) and emitted.  Sources are visited in a fixed order
    and the sort is stable, so equal timestamps come out the same way every run;
    memory is bounded by the active calls' current chunks.
    """
    waiting = sorted(sources, key=lambda src: src.start_ns, reverse=True)  # pop() = earliest
    active: list[Source] = []
    t_end = waiting[-1].start_ns + window_ns if waiting else 0
    while waiting or active:
        if not active and waiting[-1].start_ns >= t_end:
            t_end = waiting[-1].start_ns + window_ns  # skip an idle gap
        while waiting and waiting[-1].start_ns < t_end:
            active.append(waiting.pop())
        batch: list[tuple[int, bytes]] = []
        for src in active:
            batch += src.until(t_end)
        active = [src for src in active if not src.done]
        batch.sort(key=_ts_key)
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

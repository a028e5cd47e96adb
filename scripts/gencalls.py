#!/usr/bin/env python3
"""Synthetic VoIP captures: N SIP/RTP calls over UDP on Ethernet, as classic pcap.

Used for the README demo (``samples/sample-call.pcap``), tests and benchmarks
(``frames()`` streams packets lazily, so 2,000 concurrent calls need no big
memory).  Each call is INVITE (SDP) -> 100 -> 180 -> 200 (SDP) -> ACK, then
20 ms G.711 RTP both ways with a tone per direction (so recordings are not
silence), RTCP SR every 5 s, then BYE -> 200; or INVITE -> 100 -> 486 -> ACK
for a busy call.  Output is deterministic for a given seed: every random
choice comes from generators seeded with (seed, call index).

Speed: RTP frames are built in numpy chunks (``gencalls_packets.RtpSource``)
and calls are merged a time window at a time (``merge_sources``), so Python
does little per packet.

    python scripts/gencalls.py OUT.pcap --calls 2000 --duration 10 --concurrent 2000
"""
from __future__ import annotations

import argparse
import bisect
import random
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from operator import itemgetter
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from protocols.pcapfile import LINKTYPE_ETHERNET, write_pcap  # noqa: E402
from scripts.gencalls_packets import MS, PAYLOAD_TYPES, PTIME_NS, SEC, RtpSource, udp_frame  # noqa: E402

DEFAULT_START_NS = int(datetime(2024, 1, 15, 10, 0, tzinfo=timezone.utc).timestamp()) * SEC
SIP_PORT = 5060


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


class _ListSource:
    """Frames known up front (a call's SIP messages), in time order."""

    def __init__(self, frames: list[tuple[int, bytes]]) -> None:
        self.frames, self.pos = frames, 0
        self.start_ns = frames[0][0] if frames else 0
        self.done = not frames

    def until(self, t_end: int) -> list[tuple[int, bytes]]:
        j = bisect.bisect_left(self.frames, t_end, lo=self.pos, key=itemgetter(0))
        out, self.pos = self.frames[self.pos:j], j
        self.done = j >= len(self.frames)
        return out


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
    """All SIP messages of a call, as frames in time order.

    Phones talk directly (no proxy): requests carry one Via, responses echo
    it with ``received``, a 2xx is ACKed in a new transaction and a 486 in the
    INVITE's, and whoever hangs up uses its own From/To and CSeq.
    """
    rng = random.Random(f"gencalls-sip:{seed}:{p.index}")
    a, b, ua, ub = p.caller_ip, p.callee_ip, f"1{p.index:04d}", f"2{p.index:04d}"
    ftag, ttag = f"{rng.getrandbits(32):08x}", f"{rng.getrandbits(32):08x}"
    br = [f"z9hG4bK{rng.getrandbits(48):012x}" for _ in range(3)]
    caller, callee = f'"Phone {ua}" <sip:{ua}@{a}>;tag={ftag}', f"<sip:{ub}@{b}>"
    callee_t = f"{callee};tag={ttag}"
    uri = {a: f"sip:{ua}@{a}:{SIP_PORT}", b: f"sip:{ub}@{b}:{SIP_PORT}"}
    agent, ip_id = ("User-Agent", "spanrec-gencalls/1.0"), rng.randrange(1 << 16)
    msgs: list[tuple[int, str, str, bytes]] = []

    def request(t: int, method: str, src: str, branch: str, frm: str, to: str, cseq: str,
                extra: list[tuple[str, str]] = [], body: str = "") -> str:  # noqa: B006 - never mutated
        dst = b if src == a else a
        via = f"SIP/2.0/UDP {src}:{SIP_PORT};branch={branch};rport"
        msgs.append((t, src, dst, _sip(f"{method} {uri[dst]} SIP/2.0", [
            ("Via", via), ("Max-Forwards", "70"), ("From", frm), ("To", to), ("Call-ID", p.call_id),
            ("CSeq", cseq), *extra], body)))
        return via

    def response(t: int, status: str, via: str, frm: str, to: str, cseq: str,
                 extra: list[tuple[str, str]] = [], body: str = "") -> None:  # noqa: B006
        dst = via.split()[1].rsplit(":", 1)[0]  # back to the request's sender
        src = b if dst == a else a
        msgs.append((t, src, dst, _sip(f"SIP/2.0 {status}", [
            ("Via", f"{via};received={dst}"), ("From", frm), ("To", to), ("Call-ID", p.call_id),
            ("CSeq", cseq), *extra], body)))

    via = request(p.invite_ns, "INVITE", a, br[0], caller, callee, "1 INVITE",
                  [("Contact", f"<{uri[a]}>"), ("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS"), agent],
                  _sdp(a, p.caller_rtp_port, p.codec, rng.getrandbits(31)))
    response(p.invite_ns + 2 * MS, "100 Trying", via, caller, callee, "1 INVITE", [agent])
    if not p.answered:
        response(p.end_ns - 2 * MS, "486 Busy Here", via, caller, callee_t, "1 INVITE", [agent])
        request(p.end_ns, "ACK", a, br[0], caller, callee_t, "1 ACK")
    else:
        assert p.answer_ns is not None
        contact = [("Contact", f"<{uri[b]}>"), agent]
        response(p.invite_ns + 60 * MS, "180 Ringing", via, caller, callee_t, "1 INVITE", contact)
        response(p.answer_ns, "200 OK", via, caller, callee_t, "1 INVITE", contact,
                 _sdp(b, p.callee_rtp_port, p.codec, rng.getrandbits(31)))
        request(p.answer_ns + 30 * MS, "ACK", a, br[1], caller, callee_t, "1 ACK")
        if p.caller_hangs_up:
            via = request(p.end_ns, "BYE", a, br[2], caller, callee_t, "2 BYE", [agent])
            response(p.end_ns + 20 * MS, "200 OK", via, caller, callee_t, "2 BYE")
        else:
            via = request(p.end_ns, "BYE", b, br[2], callee_t, caller, "1 BYE", [agent])
            response(p.end_ns + 20 * MS, "200 OK", via, callee_t, caller, "1 BYE")
    return [(t, udp_frame(s, d, SIP_PORT, SIP_PORT, m, ip_id + n)) for n, (t, s, d, m) in enumerate(msgs)]


Source = RtpSource | _ListSource


def call_frames(p: CallPlan, seed: int = 1, rtcp: bool = True) -> list[Source]:
    """Frame sources of one call: its SIP messages, and RTP per direction."""
    sources: list[Source] = [_ListSource(_signalling(p, seed))]
    if p.answered and p.answer_ns is not None:
        # The callee sends after its 200 OK, the caller after its ACK; a tone per direction.
        tone = 20 * (p.index % 20)
        sources.append(RtpSource(p.callee_ip, p.caller_ip, p.callee_rtp_port, p.caller_rtp_port, p.callee_ssrc,
                                 p.codec, 700 + tone, p.rtp_packets, p.answer_ns + 10 * MS, [seed, p.index, 0], rtcp))
        sources.append(RtpSource(p.caller_ip, p.callee_ip, p.caller_rtp_port, p.callee_rtp_port, p.caller_ssrc,
                                 p.codec, 400 + tone, p.rtp_packets, p.answer_ns + 35 * MS, [seed, p.index, 1], rtcp))
    return sources


def merge_sources(sources: Sequence[Source], window_ns: int = 500 * MS) -> Iterator[tuple[int, bytes]]:
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
        batch.sort(key=itemgetter(0))
        yield from batch
        t_end += window_ns


def frames(calls: int = 2, duration: float = 10.0, concurrent: int = 2, seed: int = 1, *,
           start_ns: int = DEFAULT_START_NS, codecs: Sequence[str] = ("PCMU", "PCMA"),
           busy_every: int = 0, rtcp: bool = True) -> Iterator[tuple[int, bytes]]:
    """``(ts_ns, ethernet_frame)`` of all calls merged in time order, generated lazily."""
    plans = plan(calls, duration, concurrent, seed, start_ns=start_ns, codecs=codecs, busy_every=busy_every)
    return frames_for(plans, seed, rtcp=rtcp)


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

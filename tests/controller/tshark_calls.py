"""What a capture's calls should look like, derived from tshark only (never from spanrec).

The call rules are the documented contract (docs/ARCHITECTURE.md, call.json),
written here independently and on whole sets of messages rather than as a
state machine:

* a call = a Call-ID with at least one message whose CSeq method is INVITE;
* initial-INVITE final responses = final responses with CSeq method INVITE
  whose (From-tag, CSeq) is not that of an INVITE request carrying a To-tag
  (a re-INVITE), and whose From-tag is the caller's (From-tag of the first
  INVITE-CSeq message of the Call-ID);
* any 2xx among them -> "answered", final_response = code of the first 2xx;
* otherwise only the attempt with the highest CSeq counts (401/407 followed
  by a new INVITE are not final); its last final response decides:
  487, or any code after a CANCEL request was seen -> "cancelled";
  486/600 -> "busy"; other -> "rejected"; none -> "incomplete" (null).

tshark output is cached per (file, query) for the session.
"""
from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

#: SIP on a non-standard TCP port needs a decode-as rule.
DECODE_AS: dict[str, tuple[str, ...]] = {
    "sip_ipv4_tcp_fragmented.pcap": ("-d", "tcp.port==6060,sip"),
}
RTP_HEURISTICS = ("-o", "rtp.heuristic_rtp:TRUE", "-o", "rtcp.heuristic_rtcp:TRUE")

_SIP_FIELDS = ("frame.number", "frame.time_epoch", "sip.Call-ID", "sip.Method", "sip.Status-Code",
               "sip.CSeq.method", "sip.CSeq.seq", "sip.from.tag", "sip.to.tag", "ip.src", "ipv6.src")


def epoch_ns(text: str) -> int:
    """'1334245215.711324000' -> exact integer nanoseconds."""
    sec, _, frac = text.partition(".")
    return int(sec) * 1_000_000_000 + int((frac + "000000000")[:9])


def _tshark(path: Path, args: tuple[str, ...]) -> str:
    cmd = ["tshark", "-n", "-r", str(path), *DECODE_AS.get(path.name, ()), *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)
    return res.stdout


@lru_cache(maxsize=None)
def fields(path: Path, display_filter: str, names: tuple[str, ...],
           extra: tuple[str, ...] = (), occurrence: str = "f") -> list[list[str]]:
    """Rows of `tshark -T fields` (first occurrence of each field unless occurrence="a",
    then all occurrences joined by '|')."""
    args = [*extra, "-Y", display_filter, "-T", "fields", "-E", f"occurrence={occurrence}",
            "-E", "aggregator=|"]
    for n in names:
        args += ["-e", n]
    out = _tshark(path, tuple(args))
    return [line.split("\t") for line in out.splitlines() if line.strip()]


@dataclass
class SipRow:
    frame: int
    ts_ns: int
    call_id: str
    method: str           # "" for responses
    status: int | None
    cseq_method: str
    cseq: int
    from_tag: str
    to_tag: str
    src: str


def sip_rows(path: Path) -> list[SipRow]:
    rows = []
    for r in fields(path, "sip", _SIP_FIELDS):
        r = r + [""] * (len(_SIP_FIELDS) - len(r))
        if not r[2] or not r[6]:
            continue
        rows.append(SipRow(int(r[0]), epoch_ns(r[1]), r[2], r[3], int(r[4]) if r[4] else None,
                           r[5], int(r[6]), r[7], r[8], r[9] or r[10]))
    return rows


@dataclass
class ExpectedCall:
    call_id: str
    status: str
    final_response: int | None
    first_ns: int                   # first SIP message of the Call-ID
    answered_ns: int | None         # first 2xx to the initial INVITE
    bye_ns: int | None              # first BYE request
    caller_src: str | None          # IP source of the first INVITE request
    rows: list[SipRow] = field(default_factory=list)


def _expected(call_id: str, rows: list[SipRow]) -> ExpectedCall:
    invite_rows = [r for r in rows if r.cseq_method == "INVITE"]
    caller_tag = invite_rows[0].from_tag
    reinvites = {(r.from_tag, r.cseq) for r in rows if r.method == "INVITE" and r.to_tag}
    finals = [r for r in rows if not r.method and r.cseq_method == "INVITE" and r.status
              and r.status >= 200 and r.from_tag == caller_tag
              and (r.from_tag, r.cseq) not in reinvites]
    initial_requests = [r for r in rows if r.method == "INVITE" and not r.to_tag]
    first_invite = initial_requests[0] if initial_requests else None
    byes = [r.ts_ns for r in rows if r.method == "BYE"]
    ok = [r for r in finals if r.status < 300]
    status: str
    code: int | None
    answered = None
    if ok:
        status, code, answered = "answered", ok[0].status, ok[0].ts_ns
    else:
        top = max((r.cseq for r in initial_requests), default=None)
        if top is None:
            top = max((r.cseq for r in finals), default=None)
        last = [r for r in finals if r.cseq == top]
        if not last:
            status, code = "incomplete", None
        else:
            final = last[-1]
            code = final.status
            cancelled = any(r.method == "CANCEL" and r.ts_ns <= final.ts_ns for r in rows)
            if code == 487 or cancelled:
                status = "cancelled"
            elif code in (486, 600):
                status = "busy"
            else:
                status = "rejected"
    return ExpectedCall(call_id, status, code, rows[0].ts_ns, answered, byes[0] if byes else None,
                        first_invite.src if first_invite else None, rows)


@lru_cache(maxsize=None)
def expected_calls(path: Path) -> dict[str, ExpectedCall]:
    by_id: dict[str, list[SipRow]] = {}
    for r in sip_rows(path):
        by_id.setdefault(r.call_id, []).append(r)
    return {cid: _expected(cid, rows) for cid, rows in by_id.items()
            if any(r.cseq_method == "INVITE" for r in rows)}


@dataclass(frozen=True)
class TsharkStream:
    src: str
    sport: int
    dst: str
    dport: int
    ssrc: int
    payload: str
    packets: int
    lost: int


_STREAM_RE = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+(\S+)\s+(\d+)\s+(\S+)\s+(\d+)\s+0x([0-9A-Fa-f]+)"
                        r"\s+(.*?)\s+(\d+)\s+(-?\d+)\s+\(")


@lru_cache(maxsize=None)
def rtp_streams(path: Path) -> list[TsharkStream]:
    """`tshark -z rtp,streams` with RTP/RTCP heuristics on."""
    out = _tshark(path, (*RTP_HEURISTICS, "-q", "-z", "rtp,streams"))
    streams = []
    for line in out.splitlines():
        m = _STREAM_RE.match(line)
        if m:
            streams.append(TsharkStream(m.group(1), int(m.group(2)), m.group(3), int(m.group(4)),
                                        int(m.group(5), 16), m.group(6), int(m.group(7)),
                                        int(m.group(8))))
    return streams


@dataclass(frozen=True)
class RtpPacket:
    frame: int
    ts_ns: int
    src: str
    sport: int
    dst: str
    dport: int
    ssrc: int
    seq: int
    timestamp: int
    pt: int
    payload: bytes


_RTP_FIELDS = ("frame.number", "frame.time_epoch", "ip.src", "udp.srcport", "ip.dst", "udp.dstport",
               "rtp.ssrc", "rtp.seq", "rtp.timestamp", "rtp.p_type", "rtp.payload")


@lru_cache(maxsize=None)
def rtp_packets(path: Path) -> list[RtpPacket]:
    """Every RTP packet tshark finds (heuristics on), in capture order."""
    out = []
    for r in fields(path, "rtp && !rtcp", _RTP_FIELDS, RTP_HEURISTICS):
        if len(r) < len(_RTP_FIELDS) or not r[6]:
            continue
        out.append(RtpPacket(int(r[0]), epoch_ns(r[1]), r[2], int(r[3]), r[4], int(r[5]),
                             int(r[6], 16), int(r[7]), int(r[8]), int(r[9]),
                             bytes.fromhex(r[10].replace(":", ""))))
    return out


def stream_packets(path: Path, src: str, sport: int, ssrc: int) -> list[RtpPacket]:
    return [p for p in rtp_packets(path) if p.src == src and p.sport == sport and p.ssrc == ssrc]


@dataclass(frozen=True)
class SdpAnnouncement:
    ts_ns: int
    call_id: str
    addr: str
    port: int
    side: str        # who receives there: "caller" or "callee"


@lru_cache(maxsize=None)
def sdp_announcements(path: Path) -> list[SdpAnnouncement]:
    """Audio receive addresses from every SIP message with SDP, with the side that sent it
    (requests from the caller's From-tag come from the caller, responses to them from the
    callee).  Every c= address of a message is paired with every audio m= port."""
    calls = expected_calls(path)
    rows = fields(path, "sip && sdp", ("frame.time_epoch", "sip.Call-ID", "sip.Method",
                                        "sip.from.tag", "sdp.connection_info", "sdp.media"),
                  occurrence="a")
    out = []
    for r in rows:
        r = r + [""] * (6 - len(r))
        cid = r[1].split("|")[0]
        if cid not in calls:
            continue
        exp = calls[cid]
        caller_tag = [x for x in exp.rows if x.cseq_method == "INVITE"][0].from_tag
        from_caller = r[3].split("|")[0] == caller_tag
        is_request = bool(r[2])
        side = "caller" if from_caller == is_request else "callee"
        addrs = {c.split()[-1] for c in r[4].split("|") if c.strip()}
        ports = {int(m.split()[1]) for m in r[5].split("|") if m.startswith("audio ")}
        for a in addrs:
            for p in ports:
                if p:
                    out.append(SdpAnnouncement(epoch_ns(r[0]), cid, a, p, side))
    return out


# -- the engine side of the comparison (kept here so every test module shares one run) --

@dataclass
class EngineRun:
    calls: list            # list[FinishedCall], in the order they finished
    recordings: list       # list[finalize.Recording], same order
    counters: dict[str, int]

    def by_call_id(self) -> dict[str, tuple]:
        return {c.call_ids[0]: (c, r) for c, r in zip(self.calls, self.recordings)}


def run_engine(path: Path, frames=None, advance_every_ns: int = 1_000_000_000,
               reassemble: bool = True) -> EngineRun:
    """Feed a capture (or given frames) through layers.decode + CallEngine.process, calling
    advance() once per second of capture time as the controller does, then finish_all().
    IP fragments also go through protocols.fragments as in the controller (Recorder._process):
    each completed datagram is given to CallEngine.reassembled."""
    from controller.calls.engine import CallEngine
    from controller.output.finalize import build_recording
    from protocols.errors import DecodeError
    from protocols.fragments import Reassembler
    from protocols.layers import decode
    from protocols.pcapfile import read_frames

    engine = CallEngine()
    frags = Reassembler()
    finished = []
    next_advance = 0
    for ts, lt, data in (frames if frames is not None else read_frames(path)):
        try:
            d = decode(lt, data)
        except DecodeError:
            continue
        engine.process(ts, "sensor-a", lt, data, d)
        if d.is_fragment and reassemble:
            done = frags.add(ts, lt, data, d)
            if done is not None:
                engine.reassembled(ts, "sensor-a", lt, done.frame, decode(done.linktype, done.frame))
        if ts >= next_advance:
            next_advance = ts + advance_every_ns
            finished += engine.advance(ts)
    finished += engine.finish_all()
    return EngineRun(finished, [build_recording(c) for c in finished], engine.counters)


@lru_cache(maxsize=None)
def engine_run(path: Path) -> EngineRun:
    return run_engine(path)


#: B2BUA/SBC legs that are one call (from ../shared/captures/SOURCES.md, which
#: describes them from tshark): the recording is named after the earliest leg.
LEG_GROUPS = {
    "FAX-Call-t38-CA-TDM-SIP-FB-1.pcap": [("00e9d4a500e9d48-0015-0001-0000-0000@10.35.40.25",
                                           "SD4909701-9ff11bf72eb4a347c92974d8fbbc2668-ao8o3i1")],
    "SIP-RTP-Normal_Call_two_parties.pcap": [("3cfe1c77155241bb89eb003ab8e2f87b",
                                              "54be7fcc-b009-4326-a81e-371a5a93c4b6")],
}


def expected_recordings(name: str, expected: dict) -> dict[str, list[str]]:
    """Root Call-ID (earliest leg) -> the Call-IDs of its recording."""
    groups = [list(g) for g in LEG_GROUPS.get(name, [])]
    grouped = {cid for g in groups for cid in g}
    groups += [[cid] for cid in expected if cid not in grouped]
    return {min(g, key=lambda c: expected[c].first_ns): g for g in groups}

"""tshark as the independent reference: per-frame field tables, cached per file."""
from __future__ import annotations

import functools
import subprocess
from decimal import Decimal
from pathlib import Path

from tests.conftest import require_tool

SEP = "\x1e"  # aggregator between occurrences of one field

# Options for the per-frame tables: no IP reassembly (one row = one frame as
# captured), RTP/RTCP found by heuristics, SIP on 6060/TCP.
TABLE_OPTS = (
    "-o", "ip.defragment:FALSE",
    "-o", "ipv6.defragment:FALSE",
    "-o", "rtp.heuristic_rtp:TRUE",
    "-o", "rtcp.heuristic_rtcp:TRUE",
)

FRAME_FIELDS = (
    "frame.number", "frame.time_epoch", "frame.cap_len", "frame.len", "frame.protocols",
    "ip.src", "ip.dst", "ip.proto", "ip.id", "ip.flags.mf", "ip.frag_offset",
    "ipv6.src", "ipv6.dst", "ipv6.nxt", "ipv6.fraghdr.ident", "ipv6.fraghdr.offset",
    "ipv6.fraghdr.more", "ipv6.fraghdr.nxt", "udp.srcport", "udp.dstport", "udp.length", "tcp.srcport", "tcp.dstport",
    "tcp.seq_raw", "tcp.flags", "tcp.len", "gre",
)

SIP_FIELDS = (
    "frame.number", "sip.Call-ID", "sip.CSeq.seq", "sip.CSeq.method", "sip.Method",
    "sip.Status-Code", "sip.from.tag", "sip.to.tag", "sip.r-uri",
    "sdp.media", "sdp.media.port", "sdp.connection_info.address",
)

RTP_FIELDS = (
    "frame.number", "rtp.seq", "rtp.timestamp", "rtp.ssrc", "rtp.p_type", "rtp.marker",
    "rtpevent.event_id", "rtpevent.end_of_event", "rtpevent.volume", "rtpevent.duration",
)


@functools.lru_cache(maxsize=None)
def _run(path: str, fields: tuple[str, ...], opts: tuple[str, ...]) -> tuple[dict[str, list[str]], ...]:
    tshark = require_tool("tshark")
    cmd = [tshark, "-n", "-r", path, *opts, "-T", "fields", "-E", "separator=\t",
           "-E", "occurrence=a", "-E", f"aggregator={SEP}"]
    for f in fields:
        cmd += ["-e", f]
    proc = subprocess.run(cmd, capture_output=True, check=True, timeout=120)
    out = proc.stdout.decode("utf-8", "replace")
    rows = []
    for line in out.split("\n"):
        if not line:
            continue
        cols = line.split("\t")
        assert len(cols) == len(fields), line
        rows.append({f: (c.split(SEP) if c else []) for f, c in zip(fields, cols)})
    return tuple(rows)


def table(path: Path, fields: tuple[str, ...], opts: tuple[str, ...] = TABLE_OPTS) -> tuple[dict[str, list[str]], ...]:
    """One dict per frame: field name -> list of occurrences (empty if absent). Cached."""
    return _run(str(path), fields, opts)


def first(row: dict[str, list[str]], field: str) -> str | None:
    values = row[field]
    return values[0] if values else None


def epoch_ns(text: str) -> int:
    """frame.time_epoch text ('1105725482.965944000') as exact integer ns."""
    return int(Decimal(text) * 1_000_000_000)

"""tshark as the independent reference: one per-frame field table per file, cached.

tshark costs ~0.4 s to start, so every test asks for the same wide table
(`FIELDS` with `TABLE_OPTS`), computed once per file; `prefetch` starts the
tables of the sample captures in the background at session start.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import pytest

SEP = "\x1e"  # aggregator between occurrences of one field

# No IP reassembly (one row = one frame as captured), RTP/RTCP found by
# heuristics, SIP on 6060/TCP too.
TABLE_OPTS = (
    "-o", "ip.defragment:FALSE",
    "-o", "ipv6.defragment:FALSE",
    "-o", "rtp.heuristic_rtp:TRUE",
    "-o", "rtcp.heuristic_rtcp:TRUE",
    "-d", "tcp.port==6060,sip",
)

FIELDS = (
    "frame.number", "frame.time_epoch", "frame.cap_len", "frame.len", "frame.protocols",
    "ip.src", "ip.dst", "ip.proto", "ip.id", "ip.flags.mf", "ip.frag_offset",
    "ipv6.src", "ipv6.dst", "ipv6.nxt", "ipv6.fraghdr.ident", "ipv6.fraghdr.offset",
    "ipv6.fraghdr.more", "ipv6.fraghdr.nxt", "udp.srcport", "udp.dstport", "udp.length",
    "tcp.srcport", "tcp.dstport", "tcp.seq_raw", "tcp.flags", "tcp.len", "gre",
    "sip.Call-ID", "sip.CSeq.seq", "sip.CSeq.method", "sip.Method", "sip.Status-Code",
    "sip.from.tag", "sip.to.tag", "sip.r-uri", "sip.Via.branch", "sip.from.user",
    "sip.from.host", "sip.to.user",
    "sdp.media", "sdp.media.port", "sdp.connection_info.address",
    "rtp.seq", "rtp.timestamp", "rtp.ssrc", "rtp.p_type", "rtp.marker",
    "rtpevent.event_id", "rtpevent.end_of_event", "rtpevent.volume", "rtpevent.duration",
)

Row = dict[str, list[str]]

_ENV = dict(os.environ)
_lock = threading.Lock()
_tables: dict[str, Future[tuple[Row, ...]]] = {}
_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tshark")


def _run(path: str) -> tuple[Row, ...]:
    tshark = shutil.which("tshark")
    if tshark is None:
        raise FileNotFoundError("tshark")
    cmd = [tshark, "-n", "-r", path, *TABLE_OPTS, "-T", "fields", "-E", "separator=\t",
           "-E", "occurrence=a", "-E", f"aggregator={SEP}"]
    for f in FIELDS:
        cmd += ["-e", f]
    # env given explicitly (taken at import, on the main thread): this runs on a
    # background thread while tests change the environment (monkeypatch.setenv);
    # with env=None the vfork'ed child execs with the process's live `environ`
    # array, which a concurrent setenv may move (seen once in CI: OSError EFAULT,
    # "Bad address", from execve of tshark)
    proc = subprocess.run(cmd, capture_output=True, check=True, timeout=120, env=_ENV)
    rows = []
    for line in proc.stdout.decode("utf-8", "replace").split("\n"):
        if line:
            cols = line.split("\t")
            assert len(cols) == len(FIELDS), line
            rows.append({f: (c.split(SEP) if c else []) for f, c in zip(FIELDS, cols)})
    return tuple(rows)


def _future(path: Path, background: bool) -> Future[tuple[Row, ...]]:
    key = str(path)
    with _lock:
        fut = _tables.get(key)
        if fut is None:
            if background:
                fut = _pool.submit(_run, key)
            else:
                fut = Future()
                fut.set_running_or_notify_cancel()
            _tables[key] = fut
            run_here = not background
        else:
            run_here = False
    if run_here:
        try:
            fut.set_result(_run(key))
        except BaseException as exc:  # noqa: BLE001 - handed to every waiter
            fut.set_exception(exc)
    return fut


def prefetch(paths: list[Path]) -> None:
    """Start tshark on these files in the background (2 at a time)."""
    if shutil.which("tshark") is None:
        return
    for p in paths:
        if p.is_file():
            _future(p, background=True)


def table(path: Path) -> tuple[Row, ...]:
    """One dict per frame: field name -> list of occurrences (empty if absent)."""
    if shutil.which("tshark") is None:
        pytest.skip("tshark not installed")
    return _future(path, background=False).result()


def first(row: Row, field: str) -> str | None:
    values = row[field]
    return values[0] if values else None


def epoch_ns(text: str) -> int:
    """frame.time_epoch text ('1105725482.965944000') as exact integer ns."""
    return int(Decimal(text) * 1_000_000_000)

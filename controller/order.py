"""Merges packets from several sensors into one capture-time order.

Each sensor's stream is (nearly) in time order, but sensors run at different
speeds: a replay can be minutes ahead of another, a live sensor is a few
hundred ms behind real time. Calls must be followed in capture time, and the
second copy of a packet must meet the first within the dedup window, so the
controller holds packets until every source has reached their time.

A source's watermark is the newest packet it sent, or the clock in its last
heartbeat. Packets up to the lowest watermark among active sources are
released, merged by timestamp. A source that stopped talking (no batch and no
heartbeat for `stale_after_s` of wall time) no longer holds the others back;
a source that ended (EndOfCapture) is removed.

Packets that arrive older than what was already released (a late live packet)
are released on the next call, out of order by at most that lateness.
"""
from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Callable

# (ts_ns, sensor_id, linktype, data)
Packet = tuple[int, str, int, bytes]

_ts = itemgetter(0)


@dataclass(slots=True)
class _Source:
    pending: list[Packet] = field(default_factory=list)
    start: int = 0               # index of the first unreleased packet in `pending`
    watermark: int = -1
    last_heard: float = 0.0      # monotonic wall time


class TimeMerger:
    """Releases packets in capture-time order across sources."""

    def __init__(self, *, stale_after_s: float = 5.0, expected_sources: int = 0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._sources: dict[str, _Source] = {}
        self.stale_after_s = stale_after_s
        # Hold everything until this many sources said hello (spanrec record
        # starts all its replays at once and knows how many there are).
        self.expected_sources = expected_sources
        self._seen_sources: set[str] = set()
        self._clock = clock
        self.released_until = -1

    def add_source(self, sid: str) -> None:
        self._sources.setdefault(sid, _Source(last_heard=self._clock()))
        self._seen_sources.add(sid)

    def remove_source(self, sid: str) -> None:
        """The source ended: its pending packets stay and are released in order."""
        src = self._sources.get(sid)
        if src is not None:
            src.watermark = 1 << 62
            src.last_heard = float("inf")

    def push(self, sid: str, packets: list[Packet]) -> None:
        if not packets:
            return
        src = self._sources.get(sid)
        if src is None:
            self.add_source(sid)
            src = self._sources[sid]
        src.pending.extend(packets)
        last = packets[-1][0]
        if last > src.watermark:
            src.watermark = last
        src.last_heard = self._clock()

    def heartbeat(self, sid: str, clock_ns: int) -> None:
        src = self._sources.get(sid)
        if src is None:
            return
        if clock_ns > src.watermark:
            src.watermark = clock_ns
        src.last_heard = self._clock()

    def pending(self) -> int:
        return sum(len(s.pending) - s.start for s in self._sources.values())

    def watermark(self) -> int:
        if len(self._seen_sources) < self.expected_sources:
            return -1
        now = self._clock()
        marks = [s.watermark for s in self._sources.values()
                 if now - s.last_heard <= self.stale_after_s]
        if not marks:
            # every source is stale or ended: nothing more is coming soon
            marks = [s.watermark for s in self._sources.values()]
        return min(marks) if marks else -1

    def release(self, drain: bool = False) -> list[Packet]:
        """Packets with ts <= watermark (all of them with `drain`), in time order."""
        limit = (1 << 63) if drain else self.watermark()
        if limit < 0:
            return []
        chunks: list[list[Packet]] = []
        for sid, src in list(self._sources.items()):
            pending = src.pending
            if src.start >= len(pending):
                continue
            # bisect on the (nearly) sorted tail; late packets before `start`
            # cannot exist, and a disordered tail is released up to the cut.
            lo, hi = src.start, len(pending)
            if pending[-1][0] <= limit:
                cut = hi
            else:
                while lo < hi:
                    mid = (lo + hi) // 2
                    if pending[mid][0] <= limit:
                        lo = mid + 1
                    else:
                        hi = mid
                cut = lo
            if cut > src.start:
                chunks.append(pending[src.start:cut])
                src.start = cut
            if src.start == len(pending):
                pending.clear()
                src.start = 0
            elif src.start > 4096:
                del pending[:src.start]
                src.start = 0
            if src.watermark >= (1 << 62) and not pending:
                del self._sources[sid]
        if limit > self.released_until:
            self.released_until = limit
        if not chunks:
            return []
        if len(chunks) == 1:
            return chunks[0]
        return list(heapq.merge(*chunks, key=_ts))

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

No source holds the others back for long (issue #11):
* a source whose watermark has not *advanced* for `stale_after_s` of wall time
  is cut out of the merge (`stalled`), even if it keeps heartbeating the same
  clock (a stopped or zero clock), until it advances again;
* a source more than `max_lag_s` of capture time behind the newest active
  source is not waited for (`lagging`): it is on another timeline (an old
  capture replayed beside live traffic) and its packets are released as they
  come, in its own order;
* packets held are bounded (`max_held` packets, `max_held_bytes` bytes): past
  that, the oldest are released regardless of the watermark, counted in
  `overflow_packets` and logged by the caller.
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
    advanced: float = 0.0        # monotonic wall time the watermark last moved forward
    held_bytes: int = 0          # bytes of pending[start:]
    stalls: int = 0              # times cut out of the merge for not advancing
    lags: int = 0                # times not waited for: too far behind the others
    excluded: str = ""           # "" / "stalled" / "lagging" (as of the last watermark())


class TimeMerger:
    """Releases packets in capture-time order across sources."""

    def __init__(self, *, stale_after_s: float = 5.0, expected_sources: int = 0,
                 clock: Callable[[], float] = time.monotonic, max_lag_s: float = 300.0,
                 max_held: int = 200_000, max_held_bytes: int = 64 << 20) -> None:
        self._sources: dict[str, _Source] = {}
        self.stale_after_s = stale_after_s
        self.max_lag_ns = int(max_lag_s * 1e9)
        self.max_held = max_held
        self.max_held_bytes = max_held_bytes
        # `spanrec record` (expected_sources > 0) knows its sources, all finite
        # replays merged by capture time: it waits for every one of them as
        # before (no stall, lag or timeline rules), so its results do not change
        self.timelines = expected_sources == 0
        self.held = 0                # packets held, all sources
        self.held_bytes = 0
        self.overflow_packets = 0    # released early because the bound was reached
        self.overflows = 0           # times the bound was reached
        # Hold everything until this many sources said hello (spanrec record
        # starts all its replays at once and knows how many there are).
        self.expected_sources = expected_sources
        self._seen_sources: set[str] = set()
        self._clock = clock
        self.released_until = -1

    def add_source(self, sid: str) -> None:
        now = self._clock()
        self._sources.setdefault(sid, _Source(last_heard=now, advanced=now))
        self._seen_sources.add(sid)

    def remove_source(self, sid: str) -> None:
        """The source ended: its pending packets stay and are released in order."""
        src = self._sources.get(sid)
        if src is not None:
            src.watermark = 1 << 62
            src.last_heard = float("inf")

    def push(self, sid: str, packets: list[Packet], nbytes: int | None = None) -> None:
        """`nbytes`: the packets' total size when the caller knows it (a batch)."""
        if not packets:
            return
        src = self._sources.get(sid)
        if src is None:
            self.add_source(sid)
            src = self._sources[sid]
        src.pending.extend(packets)
        if nbytes is None:
            nbytes = 0
            for p in packets:
                nbytes += len(p[3])
        size = nbytes
        src.held_bytes += size
        self.held += len(packets)
        self.held_bytes += size
        last = packets[-1][0]
        now = self._clock()
        if last > src.watermark:
            src.watermark = last
            src.advanced = now
        src.last_heard = now

    def heartbeat(self, sid: str, clock_ns: int) -> None:
        src = self._sources.get(sid)
        if src is None:
            return
        now = self._clock()
        if clock_ns > src.watermark:
            src.watermark = clock_ns
            src.advanced = now
        src.last_heard = now

    def pending(self) -> int:
        return sum(len(s.pending) - s.start for s in self._sources.values())

    def source_state(self, sid: str) -> dict[str, int | str]:
        """What the merge does with a source: excluded ("", stalled, lagging), counts."""
        src = self._sources.get(sid)
        if src is None:
            return {"merge": "", "merge_stalls": 0, "merge_lags": 0, "held": 0}
        return {"merge": src.excluded, "merge_stalls": src.stalls, "merge_lags": src.lags,
                "held": len(src.pending) - src.start}

    def watermark(self) -> int:
        if len(self._seen_sources) < self.expected_sources:
            return -1
        now = self._clock()
        stale = self.stale_after_s
        active = []
        for s in self._sources.values():
            if now - s.last_heard > stale:
                s.excluded = ""     # silent: stale as before (not a stall)
                continue
            if self.timelines and now - s.advanced > stale and s.watermark < (1 << 62):
                if s.excluded != "stalled":
                    s.stalls += 1
                    s.excluded = "stalled"
                continue
            active.append(s)
        if active:
            lead = max(s.watermark for s in active)
            if lead < (1 << 62) and self.timelines:
                marks = []
                for s in active:
                    if lead - s.watermark > self.max_lag_ns:
                        if s.excluded != "lagging":
                            s.lags += 1
                            s.excluded = "lagging"
                        continue
                    s.excluded = ""
                    marks.append(s.watermark)
                if marks:
                    return min(marks)
            else:
                for s in active:
                    s.excluded = ""
                return min(s.watermark for s in active)
        # every source is stale, stalled or ended: nothing more is coming soon
        marks = [s.watermark for s in self._sources.values()]
        return min(marks) if marks else -1

    def apart(self, now_ns: int) -> frozenset[str]:
        """Sources whose clock is more than `max_lag_s` away from `now_ns`: a time
        taken from another timeline must not end their calls."""
        if not self.timelines:
            return frozenset()
        lag = self.max_lag_ns
        return frozenset(sid for sid, s in self._sources.items()
                         if 0 <= s.watermark < (1 << 62) and abs(s.watermark - now_ns) > lag)

    def _overflow_limit(self) -> int:
        """A capture time up to which releasing brings the held packets back under
        both bounds (the oldest go first), or -1 when within bounds."""
        if self.held <= self.max_held and self.held_bytes <= self.max_held_bytes:
            return -1
        over_n = self.held - self.max_held // 2
        over_b = self.held_bytes - self.max_held_bytes // 2
        ts: list[int] = []
        for src in self._sources.values():
            ts.extend(p[0] for p in src.pending[src.start:])
        ts.sort()
        # the n oldest packets hold about n * mean bytes: release enough for both
        mean = max(1, self.held_bytes // max(1, self.held))
        k = max(over_n, -(-over_b // mean), 1)
        return ts[min(k, len(ts)) - 1]

    def release(self, drain: bool = False) -> list[Packet]:
        """Packets with ts <= watermark (all of them with `drain`), in time order."""
        limit = (1 << 63) if drain else self.watermark()
        forced = -1 if drain else self._overflow_limit()
        if forced > limit:
            before = self.held
            self.overflows += 1
            limit_forced = forced
        else:
            limit_forced = -1
        if limit_forced >= 0:
            limit = limit_forced
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
                chunk = pending[src.start:cut]
                chunks.append(chunk)
                # bytes released: the source's mean held size (exact when all go)
                left = len(pending) - cut
                size = src.held_bytes if not left else \
                    src.held_bytes * len(chunk) // (len(pending) - src.start)
                src.held_bytes -= size
                self.held -= len(chunk)
                self.held_bytes -= size
                src.start = cut
            if src.start == len(pending):
                pending.clear()
                src.start = 0
            elif src.start > 4096:
                del pending[:src.start]
                src.start = 0
            if src.watermark >= (1 << 62) and not pending:
                del self._sources[sid]
        if limit_forced >= 0:
            self.overflow_packets += before - self.held
        if limit > self.released_until:
            self.released_until = limit
        if not chunks:
            return []
        if len(chunks) == 1:
            return chunks[0]
        return list(heapq.merge(*chunks, key=_ts))

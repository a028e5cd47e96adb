"""Packets that arrive after their call was finished: appended, never lost.

A call ends on BYE + linger, a final response or a timeout; its recording is
then written.  A packet of it can still come later: a sensor that reconnects
and sends what it spooled, a retransmission after the linger, a slow site
behind the watermark.  For `window_ns` after a call is finished, its Call-IDs
and media endpoints stay known here; packets matching them (and no active
call) are collected per recording and handed to the writer as `LateFrames`:
it adds them to the recording as ``late-N.pcap`` and counts them in call.json
(``late_packets``, ``late_files``).

Grouping: late packets come in series — a BYE or 200 retransmitted by timer
E/G (every 4 s at T2) until timer F/H (64·T1 = 32 s), a spool replayed in
batches — and each file is a store round trip and a call.json rewrite.  So a
recording's late packets are collected from the first one for `group_ns`
(32 s, the longest a SIP transaction retransmits) and then until `quiet_ns`
passed without another, and written as one file; the end of the late window
writes whatever is held.  A recording therefore gets one late file per window
of late traffic — one for a retransmission series.  Bounded: at most
`max_frames` buffered per recording (the rest counted as ``late_dropped``),
entries expire with the window.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import ClassVar

__all__ = ["LateCatcher", "LateFrames"]


@dataclass
class LateFrames:
    """Late packets of one stored recording, to append to it."""

    #: the writer's queue (admission.PriorityLanes) takes them in its low lane: after every
    #: call submitted before them in either lane, so never before their own recording
    low_priority: ClassVar[bool] = True

    recording_id: str
    prefix: str
    linktype: int
    frames: list[tuple[int, bytes]] = field(default_factory=list)
    dropped: int = 0


@dataclass
class _Entry:
    until_ns: int
    late: LateFrames
    last_ns: int = -1
    first_ns: int = -1       # capture time of the first late packet now held


class LateCatcher:
    def __init__(self, window_ns: int, quiet_ns: int, max_frames: int = 100_000,
                 group_ns: int = 32_000_000_000) -> None:
        self.window_ns = window_ns
        self.quiet_ns = quiet_ns
        self.group_ns = min(group_ns, window_ns)
        self.max_frames = max_frames
        self._by_call_id: dict[str, _Entry] = {}
        self._by_endpoint: dict[tuple[bytes, int], _Entry] = {}
        self._order: deque[tuple[int, list[str], list[tuple[bytes, int]], _Entry]] = deque()
        self._pending: dict[int, _Entry] = {}      # id -> entry holding frames
        self._ready: list[LateFrames] = []          # groups closed by a later packet
        self.packets = 0
        self.dropped = 0

    def __bool__(self) -> bool:
        return bool(self._by_call_id or self._by_endpoint or self._pending or self._ready)

    def register(self, recording_id: str, prefix: str, linktype: int, call_ids: list[str],
                 endpoints: list[tuple[bytes, int]], now_ns: int) -> None:
        entry = _Entry(now_ns + self.window_ns, LateFrames(recording_id, prefix, linktype))
        for cid in call_ids:
            self._by_call_id[cid] = entry
        for ep in endpoints:
            self._by_endpoint[ep] = entry
        self._order.append((entry.until_ns, list(call_ids), list(endpoints), entry))

    def by_call_id(self, call_id: str) -> _Entry | None:
        return self._by_call_id.get(call_id)

    def by_endpoint(self, dst: bytes, dport: int, src: bytes, sport: int) -> _Entry | None:
        return self._by_endpoint.get((dst, dport)) or self._by_endpoint.get((src, sport))

    def add(self, entry: _Entry, ts_ns: int, data: bytes) -> None:
        if id(entry) in self._pending and entry.first_ns + self.group_ns <= ts_ns \
                and entry.last_ns + self.quiet_ns <= ts_ns:
            # the group held would be due by this packet's time: it closes here,
            # whenever `due` runs (the files do not depend on when that is)
            self._flush(entry, self._ready)
        late = entry.late
        self.packets += 1
        if len(late.frames) >= self.max_frames:
            late.dropped += 1
            self.dropped += 1
        else:
            late.frames.append((ts_ns, data))
        entry.last_ns = max(entry.last_ns, ts_ns)
        if id(entry) not in self._pending:
            entry.first_ns = ts_ns
            self._pending[id(entry)] = entry
        elif ts_ns < entry.first_ns:
            entry.first_ns = ts_ns

    def oldest(self) -> int:
        return min((e.late.frames[0][0] for e in self._pending.values() if e.late.frames),
                   default=1 << 62)

    def due(self, now_ns: int, everything: bool = False) -> list[LateFrames]:
        """Late packets held for `group_ns` and then quiet for `quiet_ns` (or whose
        window is over; all of them with `everything`), and forget entries whose
        window is over."""
        out, self._ready = self._ready, []
        order = self._order
        while order and (everything or order[0][0] <= now_ns):
            _, cids, eps, entry = order.popleft()
            self._flush(entry, out)
            for cid in cids:
                if self._by_call_id.get(cid) is entry:
                    del self._by_call_id[cid]
            for ep in eps:
                if self._by_endpoint.get(ep) is entry:
                    del self._by_endpoint[ep]
        for entry in list(self._pending.values()):
            if everything or (entry.first_ns + self.group_ns <= now_ns
                              and entry.last_ns + self.quiet_ns <= now_ns):
                self._flush(entry, out)
        return out

    def _flush(self, entry: _Entry, out: list[LateFrames]) -> None:
        if self._pending.pop(id(entry), None) is None:
            return
        late = entry.late
        out.append(LateFrames(late.recording_id, late.prefix, late.linktype,
                              sorted(late.frames, key=lambda f: f[0]), late.dropped))
        late.frames, late.dropped = [], 0

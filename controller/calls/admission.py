"""INVITE floods: pending calls bounded, failed attempts summarised, real calls first.

A scanner or a broken trunk sends 100,000 INVITEs nobody answers.  Held as
calls until their setup timeout (180 s) they cost ~7 KiB each (742 MiB for
100 k), and written one by one at ~330/s they put minutes of backlog in front
of the recordings of real calls.  Three rules (docs/DECISIONS.md "Floods"):

* **Pending calls are bounded.**  A call is *pending* from its first INVITE
  until it is answered, carries media (a new RTP stream), or ends.  At most
  `max_pending` are held; one more evicts the oldest pending call of the
  source address holding the most pending calls (a flood comes from few
  sources; a real caller holds one or two), which is then summarised, never
  written.  Counted: ``pending_evicted``.
* **Signalling-only attempts are summarised beyond a budget.**  A call that
  ends never answered and without media is a failed attempt.  Each source
  gets `attempts_per_window` individual recordings per `window_ns` of capture
  time (a busy or cancelled call from a phone stays a recording, with its
  call.pcap); beyond that its attempts are only counted into a summary by
  (source address, destination = To URI), logged once per window as one
  ``signalling-only attempts summarised`` line (top 50 pairs, the rest in a
  total) and counted (``attempts_summarised``).
* **Real calls first.**  A failed attempt that is written is marked
  ``low_priority``: the writer (controller/core.py) takes every answered or
  media-carrying call, and late packets, before it.

Transport-free and O(1) per INVITE: a dict per source, and sources bucketed
by how many pending calls they hold so the heaviest is found without a scan.
"""
from __future__ import annotations

import logging
import queue
from collections import Counter, deque
from typing import Any

from protocols.layers import ip_to_str

__all__ = ["Admission", "PriorityLanes"]

log = logging.getLogger("spanrec.admission")

_NS = 1_000_000_000
_MAX_PAIRS = 4096         # (source, destination) pairs kept in one window's summary
_LOG_PAIRS = 50


class Admission:
    """Pending-call bound and failed-attempt summary of one call engine."""

    def __init__(self, max_pending: int = 10_000, attempts_per_window: int = 120,
                 window_s: float = 60.0) -> None:
        self.max_pending = max(1, max_pending)
        self.attempts_per_window = attempts_per_window
        self.window_ns = int(window_s * _NS)
        self._by_src: dict[bytes, dict[int, Any]] = {}     # source -> {id(call): call}, oldest first
        self._src_of: dict[int, bytes] = {}                 # id(call) -> source
        self._buckets: dict[int, dict[bytes, None]] = {}    # n pending -> sources holding n
        self._top = 0
        self._dest: dict[int, str] = {}                     # id(pending call) -> destination
        self._window_end = 0
        self._budget: dict[bytes, int] = {}                 # source -> attempts written this window
        self._pairs: Counter[tuple[bytes, str]] = Counter()
        self._other = 0                                     # summarised beyond _MAX_PAIRS pairs
        self.counters = {"pending_evicted": 0, "attempts_summarised": 0, "attempts_written": 0,
                         "attempt_summaries": 0}

    def __len__(self) -> int:
        return len(self._src_of)

    # -- pending calls -----------------------------------------------------
    def admit(self, call: Any, src: bytes, dest: str) -> list[Any]:
        """A new call started by an INVITE from `src`: pending.  Returns the
        pending calls evicted to make room (the engine drops them)."""
        evicted = []
        while len(self._src_of) >= self.max_pending:
            victim = self._heaviest_oldest()
            self._remove(victim)
            self.counters["pending_evicted"] += 1
            evicted.append(victim)
        key = id(call)
        calls = self._by_src.get(src)
        if calls is None:
            calls = self._by_src[src] = {}
        self._move(src, len(calls), len(calls) + 1)
        calls[key] = call
        self._src_of[key] = src
        self._dest[key] = dest
        return evicted

    def settle(self, call: Any) -> None:
        """Answered, carrying media, or over: no longer pending."""
        if id(call) in self._src_of:
            self._remove(call)

    def is_pending(self, call: Any) -> bool:
        return id(call) in self._src_of

    def _heaviest_oldest(self) -> Any:
        while not self._buckets.get(self._top):
            self._top -= 1
        src = next(iter(self._buckets[self._top]))
        return next(iter(self._by_src[src].values()))

    def _move(self, src: bytes, old: int, new: int) -> None:
        if old:
            bucket = self._buckets[old]
            del bucket[src]
            if not bucket:
                del self._buckets[old]
        if new:
            self._buckets.setdefault(new, {})[src] = None
            if new > self._top:
                self._top = new

    def _remove(self, call: Any) -> None:
        key = id(call)
        src = self._src_of.pop(key)
        calls = self._by_src[src]
        del calls[key]
        n = len(calls)
        self._move(src, n + 1, n)
        if not n:
            del self._by_src[src]

    # -- failed attempts ---------------------------------------------------
    def failed_attempt(self, call: Any, src: bytes, dest: str, now_ns: int) -> bool:
        """A call over that was never answered and carried no media: True if it
        is summarised (not written), False if it is written (at low priority)."""
        self._roll(now_ns)
        n = self._budget.get(src, 0)
        if n < self.attempts_per_window:
            self._budget[src] = n + 1
            self.counters["attempts_written"] += 1
            return False
        self.summarise(src, dest)
        return True

    def summarise(self, src: bytes, dest: str) -> None:
        """Count one attempt into the window's summary instead of a recording."""
        self.counters["attempts_summarised"] += 1
        pair = (src, dest)
        if pair in self._pairs or len(self._pairs) < _MAX_PAIRS:
            self._pairs[pair] += 1
        else:
            self._other += 1

    def source_of(self, call: Any) -> tuple[bytes, str]:
        """(source, destination) recorded when the pending call was admitted."""
        key = id(call)
        return self._src_of.get(key, b""), self._dest.get(key, "")

    def forget(self, call: Any) -> None:
        """The call is gone (written, summarised or evicted)."""
        self.settle(call)
        self._dest.pop(id(call), None)

    def _roll(self, now_ns: int) -> None:
        if now_ns >= self._window_end:
            self.flush()
            self._window_end = now_ns + self.window_ns
            self._budget.clear()

    def flush(self) -> dict[str, Any] | None:
        """Log (and return) the summary of the attempts summarised since the last
        flush; None when there were none."""
        if not self._pairs and not self._other:
            return None
        total = sum(self._pairs.values()) + self._other
        top = [{"source": ip_to_str(src) if src else "", "destination": dest, "attempts": n}
               for (src, dest), n in self._pairs.most_common(_LOG_PAIRS)]
        summary = {"attempts": total, "pairs": len(self._pairs), "top": top,
                   "not_itemised": total - sum(t["attempts"] for t in top)}
        self._pairs.clear()
        self._other = 0
        self.counters["attempt_summaries"] += 1
        log.warning("signalling-only attempts summarised", extra={"summary": summary})
        return summary


class PriorityLanes(queue.Queue):
    """The recording writer's queue: items marked ``low_priority`` (failed
    attempts, see above) are taken only when no other item waits; each lane
    stays in submission order.  `join`/`task_done` as `queue.Queue`."""

    def _init(self, maxsize: int) -> None:
        self._high: deque[Any] = deque()
        self._low: deque[Any] = deque()

    def _qsize(self) -> int:
        return len(self._high) + len(self._low)

    def _put(self, item: Any) -> None:
        (self._low if getattr(item, "low_priority", False) else self._high).append(item)

    def _get(self) -> Any:
        return self._high.popleft() if self._high else self._low.popleft()

    def lanes(self) -> tuple[int, int]:
        """(items waiting in the high lane, in the low lane)"""
        with self.mutex:
            return len(self._high), len(self._low)

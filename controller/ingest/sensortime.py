"""A live sensor's clock against the controller's: offset estimate and correction.

A live sensor's capture timestamps are its host clock. A host one hour behind,
one in the future, or one that heartbeats `clock_ns=0` must not delay, end or
split calls seen by other sensors, so each live sensor's timestamps are put on
the controller's clock before anything else sees them.

Samples: `wall_ns - sensor_clock_ns`, taken from each heartbeat (the sensor's
clock when it sent it) and each batch (its newest packet). A sample is the
sensor's offset plus a delay (network, batching, a spool backlog), never less:
so the estimate is the *smallest* recent batch sample (heartbeat samples only
while no batch came), and a heartbeat whose sample is
more than `tolerance_s` *above* the smallest batch sample is a lie (it claims
the clock is behind packets the sensor already sent: `clock_ns=0`, a stuck
clock) and is refused (counted). Heartbeats dated before 2000-01-01 are refused
outright.

Correction: the offset changes only when at least `confirm` recent samples
(heartbeats and batches) lie within `tolerance_s` of the estimate and it is
more than `tolerance_s` away from the offset in force (so one late batch, one
odd heartbeat or a spool backlog draining changes nothing; heartbeats, sent
every second with the sensor's current clock, decide within a few seconds).
Until that first decision, a heartbeat off the controller's clock moves no
watermark, and a batch entirely in the future decides at once (delays only
make packets older). An offset within `tolerance_s` of zero is zero (a
well-synchronised sensor's timestamps are
never touched). Replays are never corrected: they keep capture time.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any, Callable

__all__ = ["WallOffset", "MIN_PLAUSIBLE_NS", "REFUSE_BEYOND_S"]

log = logging.getLogger("spanrec.controller")

_S = 1_000_000_000
MIN_PLAUSIBLE_NS = 946_684_800 * _S     # 2000-01-01: a clock before that is not a clock
#: a live packet further than this from the controller's clock (its sensor's
#: offset applied) is refused: no spool backlog is that old, no clock that wrong
#: once corrected (ClockSanitizer's max_gap_s is the same day)
REFUSE_BEYOND_S = 86_400


class WallOffset:
    """One live sensor's offset onto the controller clock (ns to add)."""

    def __init__(self, sensor_id: str, *, tolerance_s: float = 2.0, window: int = 16,
                 confirm: int = 3, wall: Callable[[], int] | None = None) -> None:
        self.sensor_id = sensor_id
        self.tol = int(tolerance_s * _S)
        self.confirm = confirm
        self.wall = wall or (lambda: time.time_ns())
        self.offset = 0                 # applied: added to every timestamp of the sensor
        self.estimate: int | None = None
        self.changes = 0                # times the applied offset changed
        self.corrected = 0              # packets whose timestamps were shifted
        self.refused_heartbeats = 0     # implausible heartbeat clocks ignored
        self.refused_packets = 0        # packets stamped beyond REFUSE_BEYOND_S, dropped
        self._batch: deque[int] = deque(maxlen=window)
        self._beat: deque[int] = deque(maxlen=window)
        self._logged = float("-inf")
        self.decided = False            # confirm samples agreed once (or a batch from the future)

    def state(self) -> dict[str, Any]:
        return {"offset": self.offset, "changes": self.changes, "corrected": self.corrected,
                "refused_heartbeats": self.refused_heartbeats,
                "refused_packets": self.refused_packets}

    def batch(self, newest_ns: int, count: int, oldest_ns: int | None = None) -> int:
        """A batch whose newest packet is `newest_ns` arrived: the offset to add.
        Before the first decision, a batch whose *oldest* packet is more than
        `tolerance_s` in the controller's future decides at once: delays only
        make packets older, so the sensor's clock is ahead."""
        if newest_ns >= MIN_PLAUSIBLE_NS:
            now = self.wall()
            self._batch.append(now - newest_ns)
            if not self.decided and oldest_ns is not None and \
                    now - oldest_ns < self.offset - self.tol:
                self._set(now - newest_ns)
                self.decided = True
            else:
                self._update()
        if self.offset:
            self.corrected += count
        return self.offset

    def refuse(self, timestamps: list[int], lengths: list[int], data: bytes,
               oldest_ns: int, newest_ns: int) -> tuple[list[int], list[int], bytes]:
        """The batch (offset applied; its oldest and newest times) without packets
        stamped more than REFUSE_BEYOND_S from the controller's clock; counted
        and logged."""
        now = self.wall()
        lo, hi = now - REFUSE_BEYOND_S * _S, now + REFUSE_BEYOND_S * _S
        if lo <= oldest_ns and newest_ns <= hi:
            return timestamps, lengths, data
        ts_out, len_out, parts = [], [], []
        off = 0
        for t, n in zip(timestamps, lengths):
            if lo <= t <= hi:
                ts_out.append(t)
                len_out.append(n)
                parts.append(data[off:off + n])
            off += n
        refused = len(timestamps) - len(ts_out)
        self.refused_packets += refused
        log.warning("packets stamped far from the controller's clock refused", extra={
            "sensor_id": self.sensor_id, "packets": refused, "total": self.refused_packets,
            "bound_s": REFUSE_BEYOND_S})
        return ts_out, len_out, b"".join(parts)

    def hello(self, clock_ns: int) -> None:
        """The sensor's clock when it said Hello (sent as the stream opens, before
        any batch: no queue, no spool in the way). Before the first decision, one
        more than `tolerance_s` off decides at once: without it the first batches
        of a sensor an hour behind would go in uncorrected (its first INVITE an
        hour before the rest of its call, which would then end the call). A
        spool backlog sent after it keeps its times: the Hello clock is current."""
        if clock_ns < MIN_PLAUSIBLE_NS:
            self.refused_heartbeats += 1
            return
        sample = self.wall() - clock_ns
        self._beat.append(sample)
        if not self.decided:
            self._set(sample)
            self.decided = True

    def heartbeat(self, clock_ns: int) -> int | None:
        """The heartbeat's clock on the controller's scale, or None when refused."""
        if clock_ns < MIN_PLAUSIBLE_NS:
            self.refused_heartbeats += 1
            return None
        sample = self.wall() - clock_ns
        if self._batch and sample > min(self._batch) + self.tol:
            self.refused_heartbeats += 1     # behind the packets it already sent
            return None
        self._beat.append(sample)
        self._update()
        if not self.decided and abs(sample - self.offset) > self.tol:
            return None     # not on the controller's clock yet: moves no watermark
        return clock_ns + self.offset

    def _update(self) -> None:
        samples = list(self._beat) + list(self._batch)
        if len(samples) < self.confirm:
            return
        est = min(samples)
        self.estimate = est
        # the floor must be hit by `confirm` samples: a spool backlog draining
        # (each batch fresher than the last) or one odd sample moves nothing
        if sum(1 for x in samples if x - est <= self.tol) < self.confirm:
            return
        self.decided = True
        self._set(est)

    def _set(self, est: int) -> None:
        new = 0 if abs(est) <= self.tol else est
        if abs(new - self.offset) <= self.tol:
            return
        self.changes += 1
        now = time.monotonic()
        if now - self._logged >= 10.0:
            self._logged = now
            log.warning("sensor clock differs from the controller's: timestamps corrected",
                        extra={"sensor_id": self.sensor_id, "offset_s": round(new / _S, 3),
                               "previous_s": round(self.offset / _S, 3),
                               "changes": self.changes})
        self.offset = new

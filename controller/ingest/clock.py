"""One sensor's capture clock made monotonic enough to follow calls by.

Capture timestamps come from the sensor host's clock (or a capture file's
records). That clock can step back (NTP step, a VM restored, files merged
with wrong clocks) or carry single records that are off by years (a broken
writer). Downstream — cross-sensor merge, dedup windows, call timeouts,
linger after BYE — everything assumes capture time runs forward, so one
packet stamped five years ahead would time out every call, and a step back
would date an answer before its INVITE.

`ClockSanitizer.correct(timestamps)` takes one batch of a sensor (in the
order the sensor saw the packets) and returns corrected timestamps plus the
events it found. A packet whose time differs from the running clock (the
newest corrected time so far) by more than a tolerance — backwards beyond a
plausible reordering, or forwards by more than `forward_tolerance_s` — is a
*candidate*. If the next packets (`confirm` packets in all, the candidate
included) agree with it, the clock stepped: a backwards step becomes an offset
added from then on, so corrected time continues from where it was; a forward
step is taken as real time (a capture may be idle for hours) and is not
reported. If they agree with the old clock instead, the candidate packets were
outliers and are restamped to the running clock. Packets awaiting a decision
are given the running clock (what a backwards step would give them anyway).

A batch with no anomaly (nearly all of them) is checked with a few numpy
operations; only anomalies go through Python. The state carries across
batches; a forward jump at the very end of a batch, with no packet after it to
confirm it, is accepted when it is at most `max_gap_s` (an idle gap between
live batches), else it waits for the next batch like any candidate.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np

__all__ = ["ClockEvent", "ClockSanitizer", "SensorClock", "call_clock"]

log = logging.getLogger("spanrec.controller")

_S = 1_000_000_000


@dataclass(frozen=True, slots=True)
class ClockEvent:
    """`step`: the clock went back by `jump_ns` and stayed (0 packets restamped);
    `outlier`: `packets` packets off the clock by about `jump_ns`, restamped.
    `at_ns` is the corrected time at which it happened."""

    kind: str
    at_ns: int
    jump_ns: int
    packets: int


class ClockSanitizer:
    """Per-sensor clock correction; see the module docstring."""

    def __init__(self, back_tolerance_s: float = 2.0, forward_tolerance_s: float = 2.0,
                 confirm: int = 3, max_gap_s: float = 86_400.0) -> None:
        if confirm < 2:
            raise ValueError("confirm must be at least 2 (the candidate and one packet after it)")
        self.back_ns = int(back_tolerance_s * _S)
        self.fwd_ns = int(forward_tolerance_s * _S)
        self.confirm = confirm
        self.max_gap_ns = int(max_gap_s * _S)
        self.offset = 0             # ns added to every raw timestamp (sum of backwards steps)
        self.last: int | None = None    # running clock: newest corrected time handed out
        self.steps = 0              # backwards steps confirmed
        self.restamped = 0          # packets given the running clock instead of their own time
        # candidate (an anomaly waiting for confirmation)
        self._cand_n = 0            # packets agreeing with it so far (0: none)
        self._cand_first = 0        # its first packet's time (current offset applied)
        self._cand_last = 0         # newest time among them
        self._cand_carried = 0      # of them, handed out in earlier batches

    # -- state for the write-ahead log snapshot ------------------------------
    def state(self) -> dict[str, Any]:
        return {"offset": self.offset, "last": self.last, "steps": self.steps,
                "restamped": self.restamped}

    def restore(self, state: dict[str, Any]) -> None:
        self.offset = int(state.get("offset", 0))
        last = state.get("last")
        self.last = None if last is None else int(last)
        self.steps = int(state.get("steps", 0))
        self.restamped = int(state.get("restamped", 0))
        self._cand_n = 0

    def rebase(self, delta_ns: int) -> None:
        """The raw timestamps moved by `delta_ns` on purpose (a live sensor put on
        the controller's clock, controller/ingest/sensortime.py): the running clock
        moves with them, so the change is neither a step nor outliers."""
        if self.last is not None:
            self.last += delta_ns
        if self._cand_n:
            self._cand_first += delta_ns
            self._cand_last += delta_ns

    # -- the batch ------------------------------------------------------------
    def correct(self, timestamps: Iterable[int] | np.ndarray) -> tuple[np.ndarray, list[ClockEvent]]:
        """Corrected timestamps (int64, same length and order) and the events found."""
        raw = np.asarray(timestamps if isinstance(timestamps, np.ndarray) else list(timestamps),
                         dtype=np.int64)
        out = raw + self.offset
        events: list[ClockEvent] = []
        n = len(out)
        if n == 0:
            return out, events
        if self.last is None:
            self.last = self._first_clock(out, events)
        provisional: list[int] = []     # indexes in this batch given the running clock
        i = 0
        while i < n:
            if self._cand_n:
                self._pending(raw, out, i, provisional, events)
                i += 1
                continue
            j = self._first_anomaly(out, i)
            if j > i:
                top = int(out[i:j].max())
                if top > self.last:
                    self.last = top
            if j >= n:
                break
            v = int(out[j])
            self._cand_n, self._cand_first, self._cand_last, self._cand_carried = 1, v, v, 0
            provisional = [j]
            out[j] = self.last
            i = j + 1
        if self._cand_n:
            if 0 < self._cand_first - self.last <= self.max_gap_ns:
                self._confirm(raw, out, n, provisional, events)   # an idle gap at the batch end
            else:
                self._cand_carried += len(provisional)
        return out, events

    def _first_clock(self, out: np.ndarray, events: list[ClockEvent]) -> int:
        """The running clock starts at the first packet, unless the packets after
        it agree with each other and not with it: then it was an outlier."""
        first = int(out[0])
        after = out[1:self.confirm]
        if len(after) == self.confirm - 1 and len(after) > 0:
            ref = int(after[0])
            near_ref = np.all((after >= ref - self.back_ns) & (after <= ref + self.fwd_ns))
            near_first = np.any((after >= first - self.back_ns) & (after <= first + self.fwd_ns))
            if near_ref and not near_first:
                out[0] = ref
                self.restamped += 1
                events.append(ClockEvent("outlier", ref, first - ref, 1))
                return ref
        return first

    def _first_anomaly(self, out: np.ndarray, start: int) -> int:
        """Index of the first packet from `start` off the running clock, or len(out)."""
        seg = out[start:]
        prev = np.empty_like(seg)
        prev[0] = self.last
        if len(seg) > 1:
            np.maximum(np.maximum.accumulate(seg[:-1]), self.last, out=prev[1:])
        bad = (seg < prev - self.back_ns) | (seg > prev + self.fwd_ns)
        k = int(np.argmax(bad))
        return start + k if bad[k] else len(out)

    def _pending(self, raw: np.ndarray, out: np.ndarray, i: int, provisional: list[int],
                 events: list[ClockEvent]) -> None:
        """One packet while a candidate waits: it agrees with the candidate, with the
        old clock (the candidate was an outlier), or with neither (a new candidate).
        Agreeing allows time to move on from the candidate (an idle gap after it),
        as long as it does not come back to the old clock."""
        v = int(out[i])
        last = self.last
        assert last is not None
        near_old = last - self.back_ns <= v <= last + self.fwd_ns
        if self._cand_first > last:     # ahead of the old clock
            agrees = not near_old and v >= self._cand_last - self.back_ns
        else:                           # behind it
            agrees = self._cand_last - self.back_ns <= v < last - self.back_ns
        if agrees:
            self._cand_n += 1
            if v > self._cand_last:
                self._cand_last = v
            provisional.append(i)
            out[i] = last
            if self._cand_n >= self.confirm:
                self._confirm(raw, out, i + 1, provisional, events)
            return
        self._outliers(events)
        provisional.clear()
        if near_old:
            if v > last:
                self.last = v
            return
        self._cand_n, self._cand_first, self._cand_last, self._cand_carried = 1, v, v, 0
        provisional.append(i)
        out[i] = last

    def _outliers(self, events: list[ClockEvent]) -> None:
        """The candidate's packets were off the clock: they keep the running clock."""
        assert self.last is not None
        n = self._cand_n
        self.restamped += n
        events.append(ClockEvent("outlier", self.last, self._cand_first - self.last, n))
        self._cand_n = 0

    def _confirm(self, raw: np.ndarray, out: np.ndarray, upto: int, provisional: list[int],
                 events: list[ClockEvent]) -> None:
        """The clock stepped to the candidate's time. `upto`: packets from there on
        in this batch are not corrected yet (they get the new offset)."""
        last = self.last
        assert last is not None
        jump = self._cand_first - last
        if jump < 0:
            delta = last - self._cand_first
            self.offset += delta
            self.steps += 1
            events.append(ClockEvent("step", last, jump, 0))
            out[upto:] += delta
        elif self._cand_carried:
            # a forward step whose first packets went out in an earlier batch, on the old clock
            self.restamped += self._cand_carried
            events.append(ClockEvent("outlier", last, jump, self._cand_carried))
        for k in provisional:
            out[k] = max(int(raw[k]) + self.offset, last)
        if provisional:
            self.last = max(last, int(out[provisional].max()))
        elif jump > 0:
            self.last = self._cand_last
        self._cand_n = 0
        provisional.clear()


class SensorClock:
    """A sensor's sanitizer plus what the Recorder needs around it: a bounded
    list of recent events (to tell finished calls), and rate-limited warnings."""

    def __init__(self, sensor_id: str, sanitizer: ClockSanitizer | None = None,
                 keep_events: int = 1000, log_every_s: float = 10.0) -> None:
        self.sensor_id = sensor_id
        self.sanitizer = sanitizer or ClockSanitizer()
        self.events: deque[ClockEvent] = deque(maxlen=keep_events)
        self.log_every_s = log_every_s
        self._logged = float("-inf")
        self._unlogged = 0

    @property
    def last(self) -> int | None:
        return self.sanitizer.last

    @property
    def steps(self) -> int:
        return self.sanitizer.steps

    @property
    def restamped(self) -> int:
        return self.sanitizer.restamped

    def correct(self, timestamps: Iterable[int] | np.ndarray) -> list[int]:
        corrected, events = self.sanitizer.correct(timestamps)
        if events:
            self.events.extend(events)
            self._unlogged += len(events)
            now = time.monotonic()
            if now - self._logged >= self.log_every_s:
                ev = events[-1]
                log.warning("capture clock stepped back" if ev.kind == "step"
                            else "capture timestamps off the clock restamped", extra={
                                "sensor_id": self.sensor_id, "at_ns": ev.at_ns,
                                "jump_s": round(ev.jump_ns / _S, 3), "events": self._unlogged,
                                "steps": self.steps, "packets_restamped": self.restamped})
                self._logged, self._unlogged = now, 0
        return corrected.tolist()

    def heartbeat(self, clock_ns: int) -> int | None:
        """A heartbeat's clock on the corrected scale, or None when it is more
        than `max_gap_s` ahead of the packets (a replay's heartbeat is the
        newest record read, which may be an outlier; a live one is the sensor's
        clock, stepped with it)."""
        san = self.sanitizer
        v = clock_ns + san.offset
        if san.last is not None and v > san.last + san.max_gap_ns:
            return None
        return v

    def during(self, lo_ns: int, hi_ns: int) -> tuple[list[ClockEvent], int]:
        """Steps, and packets restamped, between two corrected times."""
        steps, restamped = [], 0
        for ev in self.events:
            if lo_ns <= ev.at_ns <= hi_ns:
                if ev.kind == "step":
                    steps.append(ev)
                restamped += ev.packets
        return steps, restamped


def call_clock(clocks: dict[str, SensorClock], sensors: Iterable[str], lo_ns: int, hi_ns: int,
               iso: Callable[[int], str | None]) -> tuple[dict[str, Any] | None, str | None]:
    """call.json `clock` and a one-sentence warning for a call that lasted from
    `lo_ns` to `hi_ns` (corrected time) and was seen by `sensors`; (None, None)
    when none of their clocks stepped back or had packets restamped then."""
    steps: list[dict[str, Any]] = []
    restamped = 0
    names: list[str] = []
    for sid in sensors:
        clock = clocks.get(sid)
        if clock is None or not clock.events:
            continue
        found, n = clock.during(lo_ns, hi_ns)
        if found or n:
            names.append(sid)
        steps += [{"sensor": sid, "at": iso(ev.at_ns), "jump_s": round(ev.jump_ns / _S, 3)}
                  for ev in found]
        restamped += n
    if not names:
        return None, None
    return ({"steps": steps, "packets_restamped": restamped},
            f"The capture clock of {', '.join(names)} stepped back {len(steps)} time(s) and "
            f"{restamped} packet(s) off the clock were restamped during this call; its times "
            f"and call.pcap use the corrected clock.")

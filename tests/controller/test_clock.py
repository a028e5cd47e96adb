"""The per-sensor clock sanitizer on timestamp arrays written by hand.

Each case is a sequence whose true clock the test knows (the packets were
"sent" every 20 ms); the corrected times must be ordered, keep real gaps and
reorderings, and the events must say what happened.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from controller.ingest.clock import ClockSanitizer

S = 1_000_000_000
MS = 1_000_000
T0 = 1_700_000_000 * S
YEAR = 365 * 86_400 * S


def steady(n: int, start: int = T0, step: int = 20 * MS) -> np.ndarray:
    return start + np.arange(n, dtype=np.int64) * step


def test_clean_clock_and_small_reordering_are_left_alone() -> None:
    ts = steady(500)
    ts[[10, 11]] = ts[[11, 10]]            # two packets swapped
    ts[200] -= 1500 * MS                    # one late by 1.5 s (within the 2 s tolerance)
    ts[300:] += 3 * 3600 * S                # an idle gap of three hours: real time
    san = ClockSanitizer()
    out, events = san.correct(ts)
    assert np.array_equal(out, ts) and events == []
    assert (san.steps, san.restamped) == (0, 0)


def test_isolated_outliers_years_away_are_restamped() -> None:
    ts = steady(100)
    true = ts.copy()
    ts[20] += 5 * YEAR                      # one record years ahead
    ts[50] -= 7 * YEAR                      # one years behind
    ts[70:72] += 3 * YEAR                   # two in a row (fewer than the 3 that confirm a step)
    san = ClockSanitizer()
    out, events = san.correct(ts)
    assert np.all(np.diff(out) >= 0)
    good = np.ones(100, bool)
    good[[20, 50, 70, 71]] = False
    assert np.array_equal(out[good], true[good])            # everything else untouched
    assert out[20] == true[19] and out[50] == true[49] and out[70] == out[71] == true[69]
    assert [(e.kind, e.packets) for e in events] == [("outlier", 1), ("outlier", 1), ("outlier", 2)]
    assert (san.steps, san.restamped) == (0, 4)


def test_step_back_becomes_an_offset_and_time_continues() -> None:
    ts = steady(100)
    ts[40:] -= 2 * YEAR                     # the clock was set back two years and stayed
    san = ClockSanitizer()
    out, events = san.correct(ts)
    assert np.all(np.diff(out) >= 0)
    assert np.array_equal(out[:40], ts[:40])
    # from the step on, time continues from where it was, spacing kept
    assert out[40] == ts[39]
    assert np.array_equal(np.diff(out[40:]), np.diff(ts[40:]))
    assert [(e.kind, e.jump_ns // S) for e in events] == [("step", (ts[40] - ts[39]) // S)]
    assert san.steps == 1 and san.restamped == 0


def test_step_forward_is_real_time() -> None:
    ts = steady(60)
    ts[30:] += 2 * YEAR
    san = ClockSanitizer()
    out, events = san.correct(ts)
    assert np.array_equal(out, ts) and events == []


def test_state_carries_across_batches_even_one_packet_each() -> None:
    """A live sensor sends tiny batches: a step back split over them is still one step."""
    ts = steady(30)
    ts[10:] -= YEAR
    ts[20] += 3 * YEAR                      # and an outlier later
    san = ClockSanitizer()
    out = np.concatenate([san.correct([int(t)])[0] for t in ts])
    assert np.all(np.diff(out) >= 0)
    assert san.steps == 1
    assert san.restamped == 1
    # after the step, spacing is the true one (packets 10 and 11 waited for confirmation)
    assert np.array_equal(np.diff(out[12:20]), np.diff(ts[12:20]))
    assert out[-1] - out[9] == (ts[-1] - ts[10]) + 0     # time continued from packet 9


def test_idle_gap_between_tiny_batches_is_not_restamped() -> None:
    san = ClockSanitizer()
    a, _ = san.correct([T0, T0 + 20 * MS])
    b, events = san.correct([T0 + 600 * S])             # ten minutes later, alone in its batch
    assert b[0] == T0 + 600 * S and events == []


def test_first_packet_outlier() -> None:
    ts = steady(10)
    true = ts.copy()
    ts[0] += 30 * YEAR
    out, events = ClockSanitizer().correct(ts)
    assert np.array_equal(out[1:], true[1:]) and out[0] == true[1]
    assert [e.kind for e in events] == ["outlier"]


def test_snapshot_state_restores_the_offset() -> None:
    san = ClockSanitizer()
    san.correct(np.concatenate([steady(10), steady(10) - YEAR + 200 * MS]))
    again = ClockSanitizer()
    again.restore(san.state())
    nxt = [int(T0 - YEAR + 5 * S)]
    assert np.array_equal(again.correct(nxt)[0], san.correct(nxt)[0])


def test_confirm_must_be_meaningful() -> None:
    with pytest.raises(ValueError):
        ClockSanitizer(confirm=1)


def test_heartbeat_clock_follows_the_offset_and_ignores_years_ahead() -> None:
    from controller.ingest.clock import SensorClock
    clock = SensorClock("s1")
    clock.correct(np.concatenate([steady(10), steady(10, T0 - YEAR)]))
    assert clock.heartbeat(int(T0 - YEAR + 5 * S)) == T0 - YEAR + 5 * S + clock.sanitizer.offset
    assert clock.sanitizer.offset > 0
    assert clock.heartbeat(int(T0 + 5 * YEAR)) is None


def test_real_captures_have_no_clock_event(captures_dir: Path) -> None:
    """Every public capture, fed in the sensor's batches of 256 records: nothing to
    correct. (What a sensor forwards is a subset in the same order, so it cannot
    show a jump back that the whole file does not.)"""
    from protocols.pcapfile import CaptureFileError, read_frames
    files = [p for p in sorted(captures_dir.iterdir()) if p.is_file() and p.name != "SOURCES.md"]
    assert files
    for path in files:
        san = ClockSanitizer()
        ts = []
        try:
            ts = [t for t, _, _ in read_frames(path)]
        except CaptureFileError:
            pass
        assert len(ts) > 10, path.name
        found = [san.correct(ts[i:i + 256])[1] for i in range(0, len(ts), 256)]
        assert [e for batch in found for e in batch] == [], path.name
        assert (san.steps, san.restamped) == (0, 0)


def test_idle_gaps_one_after_another_are_real_time() -> None:
    """SIP INFO every few seconds (DTMFsipinfo.pcap's pattern): gaps after gaps."""
    ts = np.array([T0, T0 + 20 * MS, T0 + 6800 * MS, T0 + 6850 * MS, T0 + 10_500 * MS,
                   T0 + 10_520 * MS, T0 + 30_000 * MS, T0 + 60_000 * MS, T0 + 60_010 * MS],
                  dtype=np.int64)
    out, events = ClockSanitizer().correct(ts)
    assert np.array_equal(out, ts) and events == []


def test_step_back_followed_by_idle_gaps_is_still_one_step() -> None:
    ts = np.concatenate([steady(10), T0 - YEAR + np.array([0, 5, 9, 30, 31], dtype=np.int64) * S])
    san = ClockSanitizer()
    out, events = san.correct(ts)
    assert [e.kind for e in events] == ["step"] and san.restamped == 0
    assert np.array_equal(np.diff(out[10:]), np.diff(ts[10:]))

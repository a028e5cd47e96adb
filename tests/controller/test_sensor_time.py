"""Time is per sensor (issue #11): no sensor's clock delays, ends or splits the
calls of the others; live calls end on the controller's clock; a packet stamped
far from its call costs nothing. Transport-free: Recorder with wall_clock=True
(as the controller process builds it) and the wall clock simulated."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import soundfile

from controller.calls.engine import CallConfig
from controller.core import Recorder
from scripts.gencalls import frames as gen_frames
from storage.local import LocalStore

SEC = 1_000_000_000
HOUR = 3600 * SEC


class Wall:
    """The controller's wall clock in the test: follows the traffic fed."""

    def __init__(self, ns: int) -> None:
        self.ns = ns

    def __call__(self) -> int:
        return self.ns


@pytest.fixture
def wall(monkeypatch) -> Wall:
    w = Wall(time.time_ns())
    monkeypatch.setattr(time, "time_ns", w)
    return w


def _calls(seed: int, start_ns: int, calls: int = 2, duration: float = 6.0):
    return list(gen_frames(calls=calls, duration=duration, concurrent=calls, seed=seed,
                           start_ns=start_ns))


def _ingest(rec: Recorder, sid: str, seqs: dict, frames) -> None:
    seqs[sid] = seqs.get(sid, 0) + 1
    rec.ingest(sid, seqs[sid], 1, [f[0] for f in frames], [len(f[1]) for f in frames],
               b"".join(f[1] for f in frames))


def _call_ids(frames) -> int:
    """Distinct Call-IDs in generated traffic: the recordings to expect."""
    return len({d[d.find(b"Call-ID:"):].split(b"\r\n")[0] for _, d in frames
                if b"Call-ID:" in d})


def _written(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(root.rglob("call.json"))]


def _recorder(tmp_path: Path, answered_timeout_s: float = 5.0) -> Recorder:
    return Recorder(LocalStore(tmp_path / "rec", fsync=False), wall_clock=True,
                    call_config=CallConfig(answered_timeout_s=answered_timeout_s))


def _live(rec: Recorder, wall: Wall, feeds: dict[str, tuple[int, list]], step: int = 16,
          seqs: dict | None = None) -> dict:
    """Feeds each sensor's frames as a live sensor would: in true time order, the
    controller's wall clock 20 ms after the packets' true time; a heartbeat
    (the sensor's own clock) every simulated second; ticks every second."""
    seqs = {} if seqs is None else seqs
    events = []
    for sid, (skew, frames) in feeds.items():
        rec.sensor_hello(sid, session="x", mode="live")
        for i in range(0, len(frames), step):
            chunk = frames[i:i + step]
            events.append((chunk[-1][0], sid, [(ts + skew, d) for ts, d in chunk]))
    events.sort(key=lambda e: e[0])
    next_tick = events[0][0]
    for true_ns, sid, chunk in events:
        wall.ns = true_ns + 20_000_000
        _ingest(rec, sid, seqs, chunk)
        if true_ns >= next_tick:
            next_tick = true_ns + SEC
            for s, (skew, _) in feeds.items():
                rec.heartbeat(s, true_ns + skew, {})
            rec.tick()
    return seqs


@pytest.mark.parametrize("skew", [0, 5 * SEC, -10 * 60 * SEC, -HOUR, HOUR])
def test_skewed_sensor_beside_a_correct_one(tmp_path: Path, wall: Wall, skew: int) -> None:
    """A live sensor whose clock is off by `skew` beside a correct live sensor:
    every call of both is recorded whole while traffic flows (not at stop), and
    the offset is shown in status."""
    t0 = wall.ns
    good, odd = _calls(1, t0), _calls(7, t0 + 3_300_000_000)
    # the expectation: distinct Call-IDs in the traffic generated
    expected = _call_ids(good + odd)
    rec = _recorder(tmp_path)
    _live(rec, wall, {"good": (0, good), "odd": (skew, odd)})
    # the traffic is over: 30 s of controller time pass with nobody sending
    for _ in range(30):
        wall.ns += SEC
        rec.tick()
    rec.writer.join()
    docs = _written(tmp_path / "rec")
    assert len(docs) == expected, [d.get("end_reason") for d in docs]
    assert all(d["status"] != "incomplete" for d in docs)
    st = {s["sensor_id"]: s for s in rec.status()["sensors"]}
    assert abs(st["odd"]["clock_offset_ns"] + skew) < 2 * SEC
    assert st["good"]["clock_offset_ns"] == 0
    assert (st["odd"]["clock_corrected"] > 0) == (skew != 0)
    # the corrected call is dated on the controller's clock, like the good one
    from datetime import datetime
    starts = sorted(datetime.fromisoformat(d["started_at"]) for d in docs)
    assert (starts[-1] - starts[0]).total_seconds() < 30, starts      # not an hour apart
    rec.shutdown()


def test_zero_clock_heartbeats_hold_nobody(tmp_path: Path, wall: Wall) -> None:
    """A connected sensor heartbeating clock_ns=0 and sending nothing: the other
    sensor's calls are written while it is still connected; refusals counted."""
    good = _calls(1, wall.ns)
    rec = _recorder(tmp_path)
    rec.sensor_hello("zero", session="z", mode="live")
    seqs: dict[str, int] = {}
    rec.sensor_hello("good", session="g", mode="live")
    nxt = good[0][0]
    for i in range(0, len(good), 16):
        chunk = good[i:i + 16]
        wall.ns = chunk[-1][0] + 20_000_000
        _ingest(rec, "good", seqs, chunk)
        if chunk[-1][0] >= nxt:
            nxt += SEC
            rec.heartbeat("zero", 0, {})
            rec.heartbeat("good", chunk[-1][0], {})
            rec.tick()
    for _ in range(30):
        wall.ns += SEC
        rec.heartbeat("zero", 0, {})
        rec.tick()
    rec.writer.join()
    assert len(_written(tmp_path / "rec")) == 2
    zero = next(s for s in rec.status()["sensors"] if s["sensor_id"] == "zero")
    assert zero["heartbeats_refused"] > 0
    rec.shutdown()


def test_only_sensor_dies_calls_end_on_controller_clock(tmp_path: Path, wall: Wall) -> None:
    """The only sensor goes silent mid-call: with a 5 s answered timeout the
    calls are written within seconds of controller time, ended by timeout."""
    frames = _calls(1, wall.ns, duration=20.0)
    half = [f for f in frames if f[0] < frames[0][0] + 10 * SEC]
    rec = _recorder(tmp_path)
    _live(rec, wall, {"only": (0, half)})
    for _ in range(20):           # 20 s of controller time, no packet, no heartbeat
        wall.ns += SEC
        rec.tick()
    rec.writer.join()
    docs = _written(tmp_path / "rec")
    assert len(docs) == _call_ids(half) and {d["end_reason"] for d in docs} == {"timeout"}
    rec.shutdown()


@pytest.mark.parametrize("stamp", ["epoch", "hour-early"])
def test_far_stamped_packet_costs_nothing(tmp_path: Path, wall: Wall, stamp: str) -> None:
    """One RTP packet of a live call, stamped 1 ns after the epoch or one hour
    early by another sensor: the call's audio stays as long as the call."""
    frames = _calls(1, wall.ns, calls=1, duration=6.0)
    mid = frames[0][0] + 4 * SEC            # answered at ~2.3 s: media flowing
    rec = _recorder(tmp_path)
    seqs: dict = {}
    _live(rec, wall, {"s1": (0, [f for f in frames if f[0] < mid])}, seqs=seqs)
    # a packet of the call's media not sent yet (its own RTP sequence number),
    # from another sensor, stamped far from the call
    k = next(i for i, (ts, d) in enumerate(frames) if len(d) > 150 and ts > mid + SEC)
    rtp = frames[k][1]
    ts = 1 if stamp == "epoch" else mid - HOUR
    rec.sensor_hello("evil", session="e", mode="live")
    rec.ingest("evil", 1, 1, [ts], [len(rtp)], rtp)
    _live(rec, wall, {"s1": (0, [f for i, f in enumerate(frames) if f[0] >= mid and i != k])},
          seqs=seqs)
    for _ in range(30):
        wall.ns += SEC
        rec.tick()
    rec.writer.join()
    evil = next(s for s in rec.status()["sensors"] if s["sensor_id"] == "evil")
    # the epoch stamp is refused at ingest (counted); the hour-early one reaches
    # the call but not its audio (the audio's start bound)
    assert evil["packets_refused"] == (1 if stamp == "epoch" else 0)
    rec.shutdown()
    wavs = list((tmp_path / "rec").rglob("audio.wav"))
    assert len(wavs) == 1
    info = soundfile.info(str(wavs[0]))
    assert info.duration < 6.0 + 30 + 5
    # and the recording says so: counted on its stream, one warning sentence
    (doc,) = _written(tmp_path / "rec")
    outside = {i: st["outside_call_window"] for i, st in enumerate(doc["streams"])}
    if stamp == "epoch":
        assert set(outside.values()) == {0}
        assert not any("signalled start" in w for w in doc["warnings"])
    else:
        assert sorted(outside.values()) == [0] * (len(outside) - 1) + [1], outside
        assert any("signalled start" in w for w in doc["warnings"]), doc["warnings"]


def _replay(rec: Recorder, feeds: dict[str, list], step: int = 64) -> None:
    """Replays side by side, batches interleaved by arrival (not by capture time):
    each replay goes at its own pace, as `spanrec record` or a replaying sensor."""
    seqs: dict[str, int] = {}
    for sid in feeds:
        rec.sensor_hello(sid, session=sid, mode="replay")
    chunks = {sid: [f[i:i + step] for i in range(0, len(f), step)] for sid, f in feeds.items()}
    for k in range(max(len(c) for c in chunks.values())):
        for sid, c in chunks.items():
            if k < len(c):
                _ingest(rec, sid, seqs, c[k])
                rec.heartbeat(sid, c[k][-1][0], {})
    for sid in feeds:
        rec.end_of_capture(sid, {}, "")


def _dt(y: int) -> int:
    from datetime import datetime, timezone
    return int(datetime(y, 3, 1, 12, tzinfo=timezone.utc).timestamp()) * SEC


def test_2010_replay_beside_2025_replay(tmp_path: Path) -> None:
    """Two replaying sensors fifteen years apart; the 2010 one pauses 6 s (wall)
    mid-call while the 2025 one sends everything: each call is recorded whole
    with its own capture times (not ended by the other capture's clock, no late
    files)."""
    old, new = _calls(1, _dt(2010), calls=1, duration=8.0), _calls(7, _dt(2025), calls=1,
                                                                   duration=8.0)
    rec = Recorder(LocalStore(tmp_path / "rec", fsync=False))
    mono = [1000.0]
    rec.merger._clock = lambda: mono[0]
    seqs: dict[str, int] = {}
    for sid in ("old", "new"):
        rec.sensor_hello(sid, session=sid, mode="replay")
    half = len(old) // 2
    for i in range(0, half, 32):
        _ingest(rec, "old", seqs, old[i:min(i + 32, half)])
    mono[0] += 6.0                          # the old replay pauses
    for i in range(0, len(new), 32):
        _ingest(rec, "new", seqs, new[i:i + 32])
        rec.heartbeat("new", new[min(i + 31, len(new) - 1)][0], {})
        rec.tick()
    for i in range(half, len(old), 32):
        _ingest(rec, "old", seqs, old[i:i + 32])
    rec.end_of_capture("old", {}, "")
    rec.end_of_capture("new", {}, "")
    rec.writer.join()
    docs = {d["started_at"][:4]: d for d in _written(tmp_path / "rec")}
    assert sorted(docs) == ["2010", "2025"]
    for year, frames in (("2010", old), ("2025", new)):
        d = docs[year]
        assert d["end_reason"] == "bye" and not d.get("late_files"), d["end_reason"]
        pcap = next(p for p in (tmp_path / "rec").rglob("call.pcap") if d["id"] in str(p))
        # every frame of the call is in its call.pcap (16-byte record headers)
        assert pcap.stat().st_size == 24 + sum(16 + len(f[1]) for f in frames)
    rec.shutdown()


def test_old_replay_beside_live_traffic(tmp_path: Path, wall: Wall) -> None:
    """A sensor replaying a 2010 capture into a live controller: its call is
    whole, and the live sensor's calls are written while the replay runs."""
    old = _calls(1, _dt(2010), calls=1, duration=8.0)
    live = _calls(7, wall.ns, calls=2, duration=4.0)
    rec = _recorder(tmp_path)
    rec.sensor_hello("old", session="o", mode="replay")
    seqs: dict[str, int] = {}
    rec.sensor_hello("live", session="l", mode="live")
    old_chunks = [old[i:i + 8] for i in range(0, len(old), 8)]
    nxt = live[0][0]
    for i in range(0, len(live), 16):
        chunk = live[i:i + 16]
        wall.ns = chunk[-1][0] + 20_000_000
        _ingest(rec, "live", seqs, chunk)
        if old_chunks:                      # the replay goes at its own (slow) pace
            c = old_chunks.pop(0)
            _ingest(rec, "old", seqs, c)
            rec.heartbeat("old", c[-1][0], {})
        if chunk[-1][0] >= nxt:
            nxt += SEC
            rec.heartbeat("live", chunk[-1][0], {})
            rec.tick()
    for _ in range(15):
        wall.ns += SEC
        rec.heartbeat("live", wall.ns, {})
        rec.tick()
    rec.writer.join()
    assert len(_written(tmp_path / "rec")) == _call_ids(live)     # while the replay is not over
    for c in old_chunks:
        _ingest(rec, "old", seqs, c)
    rec.end_of_capture("old", {}, "")
    rec.writer.join()
    docs = [d for d in _written(tmp_path / "rec") if d["started_at"].startswith("2010")]
    assert len(docs) == 1 and docs[0]["end_reason"] == "bye" and not docs[0].get("late_files")
    rec.shutdown()


def test_merge_cuts_out_a_source_whose_clock_stops() -> None:
    """A connected source that keeps heartbeating the same clock (stopped) no
    longer holds the others after stale_after_s; visible, counted; it is waited
    for again once it advances."""
    from controller.ingest.order import TimeMerger
    now = [0.0]
    m = TimeMerger(clock=lambda: now[0], stale_after_s=5)
    m.add_source("stuck")
    m.heartbeat("stuck", 100 * SEC)
    m.push("live", [(t * SEC, "live", 1, b"x") for t in range(101, 111)])
    assert m.release() == []                     # held behind the stuck clock
    for _ in range(6):
        now[0] += 1.0
        m.heartbeat("stuck", 100 * SEC)          # heard, not advancing
        m.push("live", [(int((111 + now[0]) * SEC), "live", 1, b"x")])
    out = m.release()
    assert len(out) == 16 and [p[0] for p in out] == sorted(p[0] for p in out)
    assert m.source_state("stuck")["merge"] == "stalled"
    assert m.source_state("stuck")["merge_stalls"] == 1
    m.heartbeat("stuck", 200 * SEC)              # advances: waited for again
    m.release()
    assert m.source_state("stuck")["merge"] == ""


def test_held_packets_are_bounded() -> None:
    """A source far ahead of a slow one: packets held for ordering never exceed
    the bound; the oldest go first, counted."""
    from controller.ingest.order import TimeMerger
    m = TimeMerger(max_held=1000, max_held_bytes=1 << 30)
    m.add_source("slow")
    m.heartbeat("slow", 0)
    released = []
    for k in range(50):
        m.push("fast", [((k * 100 + i) * 1000, "fast", 1, b"y" * 200) for i in range(100)])
        released += m.release()
        assert m.held <= 1000
    # (the packet at ts 0 is within the slow source's clock: released normally)
    assert m.overflow_packets == len(released) - 1 > 0
    assert [p[0] for p in released] == sorted(p[0] for p in released)
    assert len(released) + m.held == 5000


def test_merge_bound_in_bytes() -> None:
    from controller.ingest.order import TimeMerger
    m = TimeMerger(max_held=10**9, max_held_bytes=100_000)
    m.add_source("slow")
    m.heartbeat("slow", 0)
    for k in range(100):
        m.push("fast", [(k * 10 + i + 1, "fast", 1, b"z" * 1000) for i in range(10)])
        m.release()
        assert m.held_bytes <= 100_000
    assert m.overflows > 0

"""Time is per sensor (issue #11), with a real `spanrec controller` process and
live test sensors speaking the wire protocol on loopback: a sensor whose clock
is an hour off, or heartbeats clock_ns=0, holds nobody back; the only sensor
dying mid-call still gets its calls written on the controller's clock."""
from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import grpc
import pytest

from proto import admin_pb2, admin_pb2_grpc, sensor_pb2, sensor_pb2_grpc
from scripts.gencalls import frames as gen_frames
from tests.s3server import free_ports

SEC = 1_000_000_000


class LiveSensor(threading.Thread):
    """Sends `frames` (generated from time 0) in real time as a live sensor whose
    clock is `skew_ns` off; heartbeats every 0.5 s with its clock (or 0)."""

    def __init__(self, channel: grpc.Channel, sid: str, frames: list, skew_ns: int = 0,
                 zero_clock: bool = False, stop_after_s: float | None = None,
                 silent_after_s: float | None = None, frozen_after_s: float | None = None) -> None:
        super().__init__(daemon=True)
        self.channel = channel
        self.sid, self.frames, self.skew = sid, frames, skew_ns
        self.zero_clock, self.stop_after_s = zero_clock, stop_after_s
        self.silent_after_s = silent_after_s      # then connected, sending nothing (stuck)
        self.frozen_after_s = frozen_after_s      # then no packets, heartbeats with a clock that stopped
        self.frozen_at: int | None = None
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def _messages(self):
        yield sensor_pb2.SensorMessage(hello=sensor_pb2.Hello(
            sensor_id=self.sid, session=uuid.uuid4().hex, mode="live", version="test",
            clock_ns=0 if self.zero_clock else time.time_ns() + self.skew))   # as a real sensor
        t0 = time.time_ns()
        base = self.frames[0][0] if self.frames else 0
        seq, i, beat = 0, 0, 0.0
        while not self.stop.is_set():
            el = time.time_ns() - t0
            if self.stop_after_s is not None and el > self.stop_after_s * SEC:
                return                          # the sensor dies: the stream just ends
            if self.silent_after_s is not None and el > self.silent_after_s * SEC:
                time.sleep(0.05)                # stuck: the stream stays open, nothing comes
                continue
            if self.frozen_after_s is not None and el > self.frozen_after_s * SEC:
                if self.frozen_at is None:
                    self.frozen_at = time.time_ns() + self.skew
                if time.monotonic() - beat >= 0.5:
                    beat = time.monotonic()
                    yield sensor_pb2.SensorMessage(heartbeat=sensor_pb2.Heartbeat(
                        sensor_id=self.sid, clock_ns=self.frozen_at))
                time.sleep(0.02)
                continue
            batch = []
            while i < len(self.frames) and self.frames[i][0] - base <= el:
                batch.append(self.frames[i])
                i += 1
            if batch:
                seq += 1
                yield sensor_pb2.SensorMessage(batch=sensor_pb2.Batch(
                    seq=seq, sensor_id=self.sid, linktype=1,
                    timestamps_ns=[t0 + (ts - base) + self.skew for ts, _ in batch],
                    lengths=[len(d) for _, d in batch], data=b"".join(d for _, d in batch)))
            if time.monotonic() - beat >= 0.5:
                beat = time.monotonic()
                yield sensor_pb2.SensorMessage(heartbeat=sensor_pb2.Heartbeat(
                    sensor_id=self.sid, clock_ns=0 if self.zero_clock else time.time_ns() + self.skew))
            time.sleep(0.02)

    def run(self) -> None:
        try:
            stub = sensor_pb2_grpc.SensorLinkStub(self.channel)
            for _ in stub.Stream(self._messages()):
                pass
        except grpc.RpcError as exc:
            if not self.stop.is_set() and self.stop_after_s is None:
                self.error = exc


def _controller(tmp_path: Path, *extra: str):
    (port,) = free_ports(1)
    log = open(tmp_path / "controller.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "controller", "--listen", f"127.0.0.1:{port}",
         "--storage", str(tmp_path / "rec"), "--state-dir", str(tmp_path / "state"),
         "--insecure", *extra], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(channel).result(timeout=20)
    return proc, channel


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def _written(tmp_path: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in (tmp_path / "rec").rglob("call.json")]


def _call_ids(frames) -> int:
    return len({d[d.find(b"Call-ID:"):].split(b"\r\n")[0] for _, d in frames if b"Call-ID:" in d})


def _wait(pred, timeout: float, what: str, tmp_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, what + "\n" + (tmp_path / "controller.log").read_text()[-3000:]
        time.sleep(0.25)


def test_skewed_and_zero_clock_sensors_hold_nobody(tmp_path: Path) -> None:
    """Beside a correct live sensor: one an hour behind, one heartbeating
    clock_ns=0 and sending nothing. Every call of the first two is written while
    all three are still connected; status shows the offset and the refusals."""
    good = list(gen_frames(calls=2, duration=4.0, concurrent=2, seed=1, start_ns=0))
    slow = list(gen_frames(calls=2, duration=4.0, concurrent=2, seed=7, start_ns=0))
    proc, channel = _controller(tmp_path, "--answered-timeout", "5")
    sensors = [LiveSensor(channel, "good", good), LiveSensor(channel, "slow", slow, -3600 * SEC),
               LiveSensor(channel, "zero", [], zero_clock=True)]
    try:
        for s in sensors:
            s.start()
        expected = _call_ids(good) + _call_ids(slow)
        _wait(lambda: len(_written(tmp_path)) >= expected, 40, "recordings", tmp_path)
        docs = _written(tmp_path)
        assert len(docs) == expected and all(d["status"] != "incomplete" for d in docs)
        status = admin_pb2_grpc.AdminStub(channel).GetStatus(admin_pb2.StatusRequest(), timeout=10)
        st = {s.sensor_id: s for s in status.sensors}
        assert abs(st["slow"].clock_offset_ns - 3600 * SEC) < 2 * SEC
        assert st["good"].clock_offset_ns == 0
        assert st["zero"].heartbeats_refused > 0
        assert all(s.is_alive() for s in sensors)             # nobody disconnected
    finally:
        for s in sensors:
            s.stop.set()
        _stop(proc)
        channel.close()


def test_only_sensor_dies_mid_call(tmp_path: Path) -> None:
    """The controller's only sensor dies 4 s into 20 s calls; with
    --answered-timeout 5 the calls are written on the controller's clock, well
    before any stop."""
    frames = list(gen_frames(calls=2, duration=20.0, concurrent=2, seed=1, start_ns=0))
    proc, channel = _controller(tmp_path, "--answered-timeout", "5")
    sensor = LiveSensor(channel, "only", frames, stop_after_s=4.0)
    try:
        sensor.start()
        started = [f for f in frames if f[0] - frames[0][0] <= 4 * SEC]
        expected = _call_ids(started)
        _wait(lambda: len(_written(tmp_path)) >= expected, 30, "recordings", tmp_path)
        assert {d["end_reason"] for d in _written(tmp_path)} == {"timeout"}
        assert proc.poll() is None
    finally:
        sensor.stop.set()
        _stop(proc)
        channel.close()


def _first_written_after(tmp_path: Path, expected: int, t0: float) -> float:
    _wait(lambda: len(_written(tmp_path)) >= expected, 60, "recordings", tmp_path)
    return time.monotonic() - t0


@pytest.mark.parametrize("how", ["silent", "frozen-clock"])
def test_stuck_sensor_holds_others_back_a_bounded_time(tmp_path: Path, how: str) -> None:
    """A connected sensor that stops sending packets — silent (no heartbeats
    either) or still heartbeating a clock that stopped — is cut out of the merge
    after a bounded wait (stale, or merge "stalled" after 5 s): the calls of a
    good sensor beside it are written at most a few seconds later than without
    it. The figure printed is the hold time measured."""
    good = list(gen_frames(calls=2, duration=3.0, concurrent=2, seed=3, start_ns=0))
    expected = _call_ids(good)
    runs = {}
    for name in ("alone", "beside-stuck"):
        work = tmp_path / name
        work.mkdir()
        proc, channel = _controller(work, "--answered-timeout", "3")
        sensors = [LiveSensor(channel, "good", good)]
        if name == "beside-stuck":
            stuck_frames = list(gen_frames(calls=1, duration=30.0, concurrent=1, seed=9, start_ns=0))
            after = {"silent_after_s": 0.5} if how == "silent" else {"frozen_after_s": 0.5}
            sensors.append(LiveSensor(channel, "stuck", stuck_frames, **after))
        try:
            t0 = time.monotonic()
            for s in sensors:
                s.start()
            runs[name] = _first_written_after(work, expected, t0)
            if name == "beside-stuck":
                status = admin_pb2_grpc.AdminStub(channel).GetStatus(admin_pb2.StatusRequest(), timeout=10)
                st = {s.sensor_id: s for s in status.sensors}
                # no heartbeat for a while: the sensor is "stale" (out of the merge),
                # or, if it still heartbeated, its merge state would be "stalled"
                if how == "silent":
                    assert st["stuck"].state == "stale", st["stuck"]
                else:
                    assert st["stuck"].merge == "stalled" and st["stuck"].merge_stalls >= 1, st["stuck"]
                assert st["stuck"].link == "connected"
                assert sensors[1].is_alive()                  # still connected throughout
            docs = _written(work)
            assert sum(1 for d in docs if "good" in d["sensors"]) == expected
        finally:
            for s in sensors:
                s.stop.set()
            _stop(proc)
            channel.close()
    held = runs["beside-stuck"] - runs["alone"]
    print(f"{how} sensor held the others back {held:.1f} s "
          f"(recordings after {runs['alone']:.1f} s alone, {runs['beside-stuck']:.1f} s beside it)")
    assert held < 5 + 3, runs

"""Real-time replay pacing, and a replay that resumes from its spool."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from controller.core import Recorder
from protocols.pcapfile import LINKTYPE_ETHERNET, write_pcap
from scripts.gencalls import write
from sensor.capture import FileReplay
from sensor.pipeline import SensorFailed, SensorOptions, run_sensor
from storage.local import LocalStore
from tests.link.test_resend import ServerThread, free_port

T0 = 1_700_000_000_000_000_000
MS = 1_000_000


def pcap(path: Path, offsets_ms: list[int]) -> Path:
    with open(path, "wb") as fh:
        write_pcap(fh, [(T0 + o * MS, bytes([i % 256]) * 60) for i, o in enumerate(offsets_ms)],
                   LINKTYPE_ETHERNET)
    return path


def test_realtime_replay_keeps_the_capture_pace(tmp_path: Path) -> None:
    src = FileReplay(pcap(tmp_path / "a.pcap", [0, 0, 100, 700]), realtime=True)
    start = time.monotonic()
    seen: list[tuple[float, int, int]] = []          # (elapsed s, frames, clock offset ms)
    for batch in src.batches():
        seen.append((time.monotonic() - start, len(batch), (src.clock_ns - T0) // MS))
    frames = [(t, n) for t, n, _ in seen if n]
    assert [n for _, n in frames] == [2, 1, 1]
    assert frames[0][0] < 0.05
    assert frames[1][0] == pytest.approx(0.1, abs=0.05)
    assert frames[2][0] == pytest.approx(0.7, abs=0.05)
    idle = [(t, c) for t, n, c in seen if n == 0]
    assert len(idle) >= 2                             # idle file: [] at least every 200 ms
    gaps = [b[0] - a[0] for a, b in zip(seen, seen[1:])]
    assert max(gaps) < 0.25
    # the replay clock moves on while idle, and never passes the next frame
    assert all(100 <= c < 700 for _, c in idle)
    assert idle[-1][1] > idle[0][1]


def test_fast_frames_are_not_paced_and_not_mixed(tmp_path: Path) -> None:
    src = FileReplay(pcap(tmp_path / "a.pcap", [0, 500, 1000, 1100, 1200]), realtime=True,
                     fast_frames=3)
    start = time.monotonic()
    batches = [(time.monotonic() - start, [ts for ts, _ in b]) for b in src.batches() if b]
    assert batches[0][1] == [T0, T0 + 500 * MS, T0 + 1000 * MS] and batches[0][0] < 0.05
    assert batches[-1][0] == pytest.approx(0.1, abs=0.05)   # paced from the first paced frame (1100)
    unpaced = FileReplay(tmp_path / "a.pcap", fast_frames=2)
    assert [len(b) for b in unpaced.batches()] == [2, 3]


def test_replay_resumes_from_its_spool_and_a_finished_replay_starts_over(tmp_path: Path) -> None:
    capture = tmp_path / "calls.pcap"
    frames = write(capture, calls=2, duration=1.0, concurrent=2)
    port = free_port()
    opts = SensorOptions(sensor_id="r1", controller=f"127.0.0.1:{port}", pcap=str(capture),
                         spool_dir=str(tmp_path / "spool"), connect_timeout_s=1.0, insecure=True)
    with pytest.raises(SensorFailed, match="kept in .* for the next run"):
        run_sensor(opts)                                # no controller: all of it spooled
    assert list((tmp_path / "spool" / "r1").glob("*.seg"))
    recorder = Recorder(LocalStore(tmp_path / "rec"))
    server = ServerThread(recorder, port)
    try:
        opts.connect_timeout_s = 20
        assert run_sensor(opts) == ""                   # resent from the spool, file not re-sent
        assert recorder.sensors["r1"].packets_received == frames
        assert not (tmp_path / "spool").exists()        # finished: nothing left behind
        assert run_sensor(opts) == ""                   # the same replay again: from the start
        assert recorder.sensors["r1"].packets_received == frames
    finally:
        server.stop()

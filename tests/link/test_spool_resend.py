"""Sender with the disk spool: batches wait on disk while the controller is away,
survive a sensor restart (new session), and come out once each, in order."""
from __future__ import annotations

import threading
import time
from pathlib import Path

from controller.core import Recorder
from protocols.pcapfile import read_frames
from sensor.sender import Sender
from sensor.spool import Spool
from storage.local import LocalStore
from tests.conftest import capture
from tests.link.test_resend import ServerThread, free_port


def frames_of(name: str) -> list[tuple[int, bytes]]:
    return [(ts, data) for ts, _lt, data in read_frames(capture(name))]


def wait_for(cond, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_spooled_batches_survive_a_sensor_restart(tmp_path: Path) -> None:
    frames = frames_of("MagicJack-_short_call.pcap")
    batches = [frames[i:i + 50] for i in range(0, len(frames), 50)]
    half = len(batches) // 2
    port = free_port()
    spool = Spool(tmp_path / "spool", 1 << 26)
    first = Sender(f"127.0.0.1:{port}", "s1", mode="replay", spool=spool)
    first.start()
    for b in batches[:half]:                 # no controller yet: all of it goes to disk
        first.submit(1, b)
    assert len(spool) == half and spool.depth_bytes > 0
    first.stop()                             # the sensor dies (its memory is gone)
    first._thread.join(10)                   # and never talks to the controller below
    assert not first._thread.is_alive()
    spool.close()

    spool = Spool(tmp_path / "spool", 1 << 26)
    assert len(spool) == half                # what the first run spooled
    recorder = Recorder(LocalStore(tmp_path / "rec"))
    server = ServerThread(recorder, port)
    try:
        second = Sender(f"127.0.0.1:{port}", "s1", mode="replay", spool=spool,
                        connect_timeout_s=20)
        assert second.session != first.session
        second.start()
        for b in batches[half:]:
            second.submit(1, b)
        second.finish()
        assert second.wait_done(20)
    finally:
        server.stop()
    st = recorder.sensors["s1"]
    assert st.batches_received == len(batches)       # each batch once
    assert st.packets_received == len(frames)
    assert st.acked_seq == len(batches)              # new session: seqs 1..n, spooled first
    assert len(spool) == 0
    spool.close(remove_if_empty=True)
    assert not (tmp_path / "spool").exists()


def test_live_sensor_drops_oldest_when_the_spool_is_full(tmp_path: Path) -> None:
    port = free_port()
    spool = Spool(tmp_path / "spool", 64 << 10, segment_bytes=8 << 10)
    sender = Sender(f"127.0.0.1:{port}", "live1", mode="live", spool=spool)
    sender.start()
    pkt = b"\x00" * 1000
    for i in range(200):                      # 200 batches of 4 packets, ~4 KiB each
        sender.submit(1, [(i * 10 + k, pkt) for k in range(4)])
    c = sender.counters_pb()
    assert spool.disk_bytes <= 64 << 10
    assert c.queue_drops == 4 * spool.dropped_batches > 0     # dropped packets, counted
    assert c.send_queue == len(spool) == 200 - spool.dropped_batches
    assert c.forwarded == 800
    sender.stop()
    spool.close()


def test_replay_waits_for_room_in_the_spool(tmp_path: Path) -> None:
    port = free_port()
    spool = Spool(tmp_path / "spool", 64 << 10, segment_bytes=8 << 10)
    sender = Sender(f"127.0.0.1:{port}", "r1", mode="replay", spool=spool, connect_timeout_s=30)
    sender.start()
    pkt = b"\x01" * 1000
    done = threading.Event()

    def produce() -> None:
        for i in range(100):
            sender.submit(1, [(i * 10 + k, pkt) for k in range(4)])
        sender.finish()
        done.set()

    t = threading.Thread(target=produce, daemon=True)
    t.start()
    time.sleep(1.0)
    assert not done.is_set()                  # blocked on a full spool, nothing dropped
    assert spool.dropped_batches == 0
    recorder = Recorder(LocalStore(tmp_path / "rec"))
    server = ServerThread(recorder, port)
    try:
        assert done.wait(20)
        assert sender.wait_done(20)
    finally:
        server.stop()
    assert recorder.sensors["r1"].packets_received == 400
    spool.close()


def test_heartbeat_clock_never_passes_an_unsent_batch(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", 1 << 20)
    sender = Sender("127.0.0.1:1", "s", mode="live", spool=spool)
    sender.submit(1, [(5_000, b"a"), (6_000, b"b")])
    sender.submit(1, [(7_000, b"c")])
    assert sender._heartbeat(0).heartbeat.clock_ns == 4_999     # backlog from the spool first
    assert sender._heartbeat(1).heartbeat.clock_ns == 6_999
    assert sender._heartbeat(2).heartbeat.clock_ns > 7_000      # nothing unsent: now - 200 ms
    spool.close()

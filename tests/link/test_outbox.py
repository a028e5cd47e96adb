"""The sensor's outbox: bounded, live capture drops the oldest (counted), replay waits."""
from __future__ import annotations

import threading
import time

from proto import sensor_pb2
from sensor.sender import Outbox


def _msg(seq: int) -> sensor_pb2.SensorMessage:
    return sensor_pb2.SensorMessage(batch=sensor_pb2.Batch(seq=seq))


def test_live_drops_oldest_and_counts_packets() -> None:
    box = Outbox(max_batches=3)
    stop = threading.Event()
    for _ in range(5):
        box.add(_msg, packets=10, size=100, block=False, stop=stop)
    assert [p.seq for p in box.items] == [3, 4, 5]      # the newest are kept
    assert box.dropped_packets == 20


def test_byte_bound() -> None:
    box = Outbox(max_batches=100, max_bytes=250)
    stop = threading.Event()
    for _ in range(4):
        box.add(_msg, packets=1, size=100, block=False, stop=stop)
    assert len(box) == 3 and box.bytes == 300
    assert box.dropped_packets == 1


def test_replay_waits_for_acks_instead_of_dropping() -> None:
    box = Outbox(max_batches=2)
    stop = threading.Event()
    box.add(_msg, 1, 1, block=True, stop=stop)
    box.add(_msg, 1, 1, block=True, stop=stop)
    done = threading.Event()

    def producer() -> None:
        box.add(_msg, 1, 1, block=True, stop=stop)
        done.set()

    t = threading.Thread(target=producer)
    t.start()
    time.sleep(0.3)
    assert not done.is_set()                            # blocked: nothing lost
    assert box.ack(1) == 1
    assert done.wait(2)
    t.join()
    assert [p.seq for p in box.items] == [2, 3] and box.dropped_packets == 0


def test_after_returns_unsent_in_order() -> None:
    box = Outbox()
    stop = threading.Event()
    for _ in range(10):
        box.add(_msg, 1, 1, block=False, stop=stop)
    box.ack(4)
    assert [p.seq for p in box.after(6, limit=3)] == [7, 8, 9]
    assert [p.seq for p in box.after(0)] == [5, 6, 7, 8, 9, 10]

"""The sensor keeps unacknowledged batches and resends them after a reconnect;
the controller keeps each batch once."""
from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path

import pytest

from controller.core import Recorder
from controller.api.link import serve
from protocols.pcapfile import read_frames
from sensor.sender import ControllerUnreachable, Sender
from storage.local import LocalStore
from tests.conftest import capture


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """A real grpc.aio controller server on its own event loop thread."""

    def __init__(self, recorder: Recorder, port: int) -> None:
        self.recorder, self.port = recorder, port
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self):
        server, _ = await serve(self.recorder, f"127.0.0.1:{self.port}")
        return server

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.server._spanrec_ticker.cancel)
        asyncio.run_coroutine_threadsafe(self.server.stop(0), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def test_batches_survive_a_controller_restart(tmp_path: Path) -> None:
    frames = [(ts, data) for ts, _lt, data in read_frames(capture("MagicJack-_short_call.pcap"))]
    recorder = Recorder(LocalStore(tmp_path))
    port = free_port()
    server = ServerThread(recorder, port)
    sender = Sender(f"127.0.0.1:{port}", "s1", mode="replay", connect_timeout_s=20)
    sender.start()
    batches = [frames[i:i + 50] for i in range(0, len(frames), 50)]
    half = len(batches) // 2
    for b in batches[:half]:
        sender.submit(1, b)
    deadline = time.monotonic() + 10
    while recorder.sensors.get("s1") is None or recorder.sensors["s1"].batches_received < half:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    server.stop()                       # controller goes away mid-stream
    for b in batches[half:]:            # the sensor keeps capturing meanwhile
        sender.submit(1, b)
    time.sleep(0.5)
    assert len(sender.outbox) == len(batches) - half   # kept, not acknowledged
    server = ServerThread(recorder, port)               # controller is back
    sender.finish()
    assert sender.wait_done(20)
    server.stop()
    st = recorder.sensors["s1"]
    assert st.batches_received == len(batches)          # every batch exactly once
    assert st.packets_received == len(frames)
    assert sender.counters.reconnects >= 1
    assert len(sender.outbox) == 0


def test_unreachable_controller_gives_a_clear_error() -> None:
    port = free_port()
    sender = Sender(f"127.0.0.1:{port}", "s1", mode="replay", connect_timeout_s=1.5)
    sender.start()
    sender.submit(1, [(1, b"x")])
    sender.finish()
    t0 = time.monotonic()
    with pytest.raises(ControllerUnreachable, match=f"127.0.0.1:{port} unreachable"):
        sender.wait_done(15)
    assert time.monotonic() - t0 < 10


def test_malformed_batch_is_refused_and_the_controller_keeps_running(tmp_path: Path) -> None:
    import grpc

    from proto import sensor_pb2, sensor_pb2_grpc
    recorder = Recorder(LocalStore(tmp_path))
    port = free_port()
    server = ServerThread(recorder, port)
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = sensor_pb2_grpc.SensorLinkStub(channel)
        msgs = [sensor_pb2.SensorMessage(hello=sensor_pb2.Hello(sensor_id="evil", session="s1")),
                sensor_pb2.SensorMessage(batch=sensor_pb2.Batch(
                    seq=1, sensor_id="evil", linktype=1, timestamps_ns=[1, 2], lengths=[10, 999],
                    data=b"x" * 20))]
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Stream(iter(msgs), timeout=10))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "lengths do not match" in err.value.details()
        assert recorder.bad_batches == 1 and recorder.packets_in == 0
        # a well-formed sensor is still served
        good = [sensor_pb2.SensorMessage(hello=sensor_pb2.Hello(sensor_id="ok", session="s2")),
                sensor_pb2.SensorMessage(batch=sensor_pb2.Batch(
                    seq=1, sensor_id="ok", linktype=1, timestamps_ns=[1], lengths=[3], data=b"abc"))]
        replies = list(stub.Stream(iter(good), timeout=10))
        assert replies[-1].ack.seq == 1
        channel.close()
    finally:
        server.stop()

"""Batches accepted frames and streams them to the controller over gRPC.

Every batch gets a sequence number and stays in `Outbox` until the controller
acknowledges it (cumulative acks). When the stream breaks, the sender
reconnects with exponential back-off (tenacity) and resends, in order, every
batch not yet acknowledged; the controller drops the ones it already has.

Threads: the producer (the sensor pipeline) calls `submit()`; one link thread
runs the gRPC stream (a request generator that reads the outbox, and the
response loop that applies acks).
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterator

import grpc
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    stop_never,
    wait_exponential,
)

from proto import sensor_pb2, sensor_pb2_grpc

log = logging.getLogger("spanrec.sensor.sender")

VERSION = "0.1.0"


class LinkDown(Exception):
    """The stream to the controller broke or could not be opened."""


class ControllerUnreachable(Exception):
    """The controller could not be reached within the configured time."""


@dataclass(slots=True)
class SenderCounters:
    """Counters the sender owns; the sensor adds capture counters to heartbeats."""

    forwarded: int = 0
    queue_drops: int = 0
    batches_sent: int = 0
    batches_acked: int = 0
    reconnects: int = 0


@dataclass(slots=True)
class _Pending:
    seq: int
    message: sensor_pb2.SensorMessage
    packets: int
    size: int


@dataclass
class Outbox:
    """Unacknowledged batches in seq order, bounded by count.

    When full, `block=True` (replay) makes the producer wait for acks; with
    `block=False` (live capture) the oldest batch is dropped and counted, so a
    dead controller never stalls the capture thread.
    """

    max_batches: int = 4096
    max_bytes: int = 64 << 20
    items: deque[_Pending] = field(default_factory=deque)
    bytes: int = 0
    cond: threading.Condition = field(default_factory=threading.Condition)
    acked_seq: int = 0
    next_seq: int = 1
    dropped_packets: int = 0

    def full(self) -> bool:
        return bool(self.items) and (len(self.items) >= self.max_batches
                                     or self.bytes >= self.max_bytes)

    def add(self, make: Callable[[int], sensor_pb2.SensorMessage], packets: int, size: int,
            block: bool, stop: threading.Event) -> None:
        with self.cond:
            while self.full():
                if not block:
                    lost = self.items.popleft()
                    self.bytes -= lost.size
                    self.dropped_packets += lost.packets
                    continue
                if stop.is_set():
                    return
                self.cond.wait(0.2)
            seq = self.next_seq
            self.next_seq += 1
            self.items.append(_Pending(seq, make(seq), packets, size))
            self.bytes += size
            self.cond.notify_all()

    def ack(self, seq: int) -> int:
        """Forget every batch up to `seq`; returns how many were released."""
        released = 0
        with self.cond:
            if seq > self.acked_seq:
                self.acked_seq = seq
            while self.items and self.items[0].seq <= seq:
                self.bytes -= self.items.popleft().size
                released += 1
            self.cond.notify_all()
        return released

    def after(self, seq: int, limit: int = 64) -> list[_Pending]:
        """Up to `limit` batches with a seq above `seq` (items are in seq order)."""
        with self.cond:
            if not self.items:
                return []
            start = max(0, seq + 1 - self.items[0].seq)
            end = min(len(self.items), start + limit)
            return [self.items[i] for i in range(start, end)]

    def __len__(self) -> int:
        return len(self.items)


class Sender:
    """Streams batches to one controller and keeps them until acknowledged."""

    def __init__(
        self,
        target: str,
        sensor_id: str,
        *,
        site: str = "",
        mode: str = "live",
        interfaces: tuple[str, ...] = (),
        heartbeat_s: float = 1.0,
        connect_timeout_s: float | None = None,
        max_batches: int = 4096,
        stats: Callable[[], sensor_pb2.Counters] | None = None,
        progress: Callable[[], tuple[int, int]] | None = None,
        channel_credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.target = target
        self.sensor_id = sensor_id
        self.site = site
        self.mode = mode
        self.interfaces = interfaces
        self.heartbeat_s = heartbeat_s
        self.connect_timeout_s = connect_timeout_s
        self.session = uuid.uuid4().hex
        self.outbox = Outbox(max_batches=max_batches)
        self.counters = SenderCounters()
        self._stats = stats
        self._progress = progress
        self._credentials = channel_credentials
        self._stop = threading.Event()
        self._finished = threading.Event()   # producer is done (replay end)
        self._end_error = ""
        self._done = threading.Event()       # controller confirmed the end
        self._failure: BaseException | None = None
        self._clock_ns = 0
        self._thread = threading.Thread(target=self._run, name="spanrec-link", daemon=True)

    # -- producer side -------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(self, linktype: int, frames: list[tuple[int, bytes]]) -> None:
        """Queue one batch of (ts_ns, data) frames; blocks in replay mode when full."""
        if not frames:
            return
        self._clock_ns = frames[-1][0]

        def make(seq: int) -> sensor_pb2.SensorMessage:
            return sensor_pb2.SensorMessage(batch=sensor_pb2.Batch(
                seq=seq,
                sensor_id=self.sensor_id,
                linktype=linktype,
                timestamps_ns=[f[0] for f in frames],
                lengths=[len(f[1]) for f in frames],
                data=b"".join([f[1] for f in frames]),
            ))

        size = sum(len(f[1]) for f in frames)
        self.outbox.add(make, len(frames), size, block=self.mode != "live", stop=self._stop)
        self.counters.forwarded += len(frames)

    def finish(self, error: str = "") -> None:
        """The source ended: send EndOfCapture after the last batch."""
        self._end_error = error
        self._finished.set()
        with self.outbox.cond:
            self.outbox.cond.notify_all()

    def wait_done(self, timeout: float | None = None) -> bool:
        """Wait until the controller confirmed the end (replay) or the link failed."""
        self._done.wait(timeout)
        if self._failure is not None:
            raise self._failure
        return self._done.is_set()

    def stop(self) -> None:
        self._stop.set()
        with self.outbox.cond:
            self.outbox.cond.notify_all()

    def counters_pb(self) -> sensor_pb2.Counters:
        base = self._stats() if self._stats else sensor_pb2.Counters()
        c = self.counters
        base.forwarded = c.forwarded
        base.queue_drops = self.outbox.dropped_packets
        base.send_queue = len(self.outbox)
        base.batches_sent = c.batches_sent
        base.batches_acked = c.batches_acked
        base.reconnects = c.reconnects
        return base

    # -- link side -----------------------------------------------------
    def _run(self) -> None:
        stop = stop_never if self.connect_timeout_s is None else stop_after_delay(self.connect_timeout_s)
        retrying = Retrying(
            retry=retry_if_exception_type(LinkDown),
            wait=wait_exponential(multiplier=0.1, min=0.1, max=5.0),
            stop=stop,
            reraise=False,
            before_sleep=self._before_sleep,
        )
        try:
            for attempt in retrying:
                with attempt:
                    self._session()
        except RetryError as exc:
            cause = exc.last_attempt.exception()
            self._failure = ControllerUnreachable(
                f"controller {self.target} unreachable for {self.connect_timeout_s:g} s: {cause}")
        except BaseException as exc:  # noqa: BLE001 - reported to the producer, never lost
            self._failure = exc
        finally:
            if self._failure is not None:
                self._stop.set()   # unblock a producer waiting for room in the outbox
            self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def _before_sleep(self, state) -> None:  # tenacity RetryCallState
        self.counters.reconnects += 1
        exc = state.outcome.exception() if state.outcome else None
        log.warning("link to controller down, retrying", extra={
            "controller": self.target, "error": str(exc), "attempt": state.attempt_number,
            "unacked_batches": len(self.outbox)})

    def _channel(self) -> grpc.Channel:
        options = [("grpc.max_send_message_length", 64 << 20),
                   ("grpc.max_receive_message_length", 64 << 20),
                   ("grpc.keepalive_time_ms", 10_000)]
        if self._credentials is not None:
            return grpc.secure_channel(self.target, self._credentials, options=options)
        return grpc.insecure_channel(self.target, options=options)

    def _session(self) -> None:
        """One stream: hello, resend what is unacked, then new batches. Raises LinkDown."""
        if self._stop.is_set():
            return
        channel = self._channel()
        try:
            try:
                grpc.channel_ready_future(channel).result(timeout=2.0)
            except grpc.FutureTimeoutError as exc:
                raise LinkDown(f"cannot connect to {self.target}") from exc
            stub = sensor_pb2_grpc.SensorLinkStub(channel)
            call = stub.Stream(self._requests())
            try:
                for reply in call:
                    kind = reply.WhichOneof("kind")
                    if kind == "ack":
                        released = self.outbox.ack(reply.ack.seq)
                        self.counters.batches_acked += released
                    elif kind == "notice":
                        if reply.notice.text:
                            log.info("controller notice", extra={"text": reply.notice.text})
                        if reply.notice.capture_done:
                            self._done.set()
                            call.cancel()
                            return
                if self._stop.is_set():
                    return
                raise LinkDown("controller closed the stream")
            except grpc.RpcError as exc:
                if self._done.is_set() or self._stop.is_set():
                    return
                raise LinkDown(f"{exc.code().name}: {exc.details()}") from exc
        finally:
            channel.close()

    def _requests(self) -> Iterator[sensor_pb2.SensorMessage]:
        hello = sensor_pb2.Hello(sensor_id=self.sensor_id, site=self.site, version=VERSION,
                                 interfaces=list(self.interfaces), session=self.session,
                                 mode=self.mode, acked_seq=self.outbox.acked_seq)
        yield sensor_pb2.SensorMessage(hello=hello)
        sent_upto = self.outbox.acked_seq
        next_beat = time.monotonic() + self.heartbeat_s
        end_sent = False
        while not self._stop.is_set() and not self._done.is_set():
            pending = self.outbox.after(sent_upto)
            for item in pending:
                yield item.message
                sent_upto = item.seq
                self.counters.batches_sent += 1
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + self.heartbeat_s
                yield self._heartbeat()
            if self._finished.is_set() and not end_sent and not self.outbox.after(sent_upto):
                end_sent = True
                yield sensor_pb2.SensorMessage(end=sensor_pb2.EndOfCapture(
                    sensor_id=self.sensor_id, last_seq=sent_upto,
                    counters=self.counters_pb(), error=self._end_error))
            with self.outbox.cond:
                if not self.outbox.after(sent_upto) and not self._stop.is_set():
                    self.outbox.cond.wait(max(0.0, min(0.2, next_beat - time.monotonic())))

    def _heartbeat(self) -> sensor_pb2.SensorMessage:
        # A live sensor promises nothing older than now minus what may still sit
        # between the capture thread and submit(); late packets are still merged.
        clock = time.time_ns() - 200_000_000 if self.mode == "live" else self._clock_ns
        beat = sensor_pb2.Heartbeat(sensor_id=self.sensor_id, clock_ns=clock,
                                    counters=self.counters_pb())
        if self._progress is not None:
            beat.replay_bytes, beat.replay_total = self._progress()
        return sensor_pb2.SensorMessage(heartbeat=beat)

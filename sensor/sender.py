"""Batches accepted frames and streams them to the controller over gRPC.

Every batch gets a sequence number and stays in `Outbox` until the controller
acknowledges it (cumulative acks). When the stream breaks, the sender
reconnects with exponential back-off (tenacity) and resends, in order, every
batch not yet acknowledged; the controller drops the ones it already has.

With a `Spool` (sensor/spool.py) the outbox is on disk: every batch is
written through to the spool before `submit()` returns, so a `kill -9` of the
sensor loses nothing already submitted, and a restarted sensor resends what
the spool still holds, in order, as the first batches of its new session
(seq numbers restart at 1 with every session; the spool keeps its own). A
replay waits when the spool is full; live capture drops the oldest segment
and counts it (`queue_drops`). Without a spool, `Outbox` keeps the
unacknowledged batches in memory, bounded by count and bytes.

Batches are serialized once, in `submit()`, without their seq; the wire
message is that payload with the session seq prepended (protobuf fields may
come in any order), so resending from disk never parses or re-encodes.

Threads: the producer (the sensor pipeline) calls `submit()`; one link thread
runs the gRPC stream (a request generator that reads the outbox, and the
response loop that applies acks and hands `Expect` media endpoints to the
`on_expect` callback, which only queues them for the classifier).
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
    stop_never,
    wait_exponential,
)

from proto import sensor_pb2
from sensor.spool import Spool, SpoolError, SpoolFull
from transport.batches import COMPRESSIONS, pack

log = logging.getLogger("spanrec.sensor.sender")

VERSION = "0.1.0"
STREAM_METHOD = "/spanrec.v1.SensorLink/Stream"


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def batch_message(seq: int, payload: bytes) -> bytes:
    """Serialized `SensorMessage{batch: Batch{seq, ...payload}}`; `payload` is a
    serialized Batch without its seq (field 1, varint; SensorMessage.batch is
    field 2, length-delimited)."""
    seq_field = b"\x08" + _varint(seq)
    return b"".join((b"\x12", _varint(len(seq_field) + len(payload)), seq_field, payload))


def _connect_error(channel: grpc.Channel) -> str:
    """Why a channel is not ready, in gRPC's words (e.g. ``CERTIFICATE_VERIFY_FAILED`` for
    a controller whose certificate our CA did not sign): one unary call that fails fast."""
    try:
        channel.unary_unary("/grpc.health.v1.Health/Check")(b"", timeout=1.0, wait_for_ready=False)
    except grpc.RpcError as exc:
        return (exc.details() or exc.code().name)[:400]  # type: ignore[attr-defined]
    return "not ready within 2 s"


class LinkDown(Exception):
    """The stream to the controller broke or could not be opened."""


class ControllerRefused(Exception):
    """The controller answered and said no (e.g. certificate name != sensor id)."""


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
    message: bytes | sensor_pb2.SensorMessage
    packets: int
    size: int
    first_ts: int = 0        # capture time of the batch's first packet (0: unknown)


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

    def add(self, make: Callable[[int], bytes | sensor_pb2.SensorMessage], packets: int, size: int,
            block: bool, stop: threading.Event, first_ts: int = 0) -> None:
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
            self.items.append(_Pending(seq, make(seq), packets, size, first_ts))
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

    def has_after(self, seq: int) -> bool:
        with self.cond:
            return bool(self.items) and self.items[-1].seq > seq

    def first_ts_after(self, seq: int) -> int | None:
        pending = self.after(seq, limit=1)
        return pending[0].first_ts if pending else None

    def __len__(self) -> int:
        return len(self.items)


class SpoolOutbox:
    """The outbox on disk: the same interface as `Outbox` over a `Spool`.

    Session seqs are spool seqs minus `base`, fixed when the sender starts: a
    restarted sensor's new session numbers the spooled batches 1, 2, ... in
    their original order, then continues with new ones.
    """

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.cond = threading.Condition()
        self.base = spool.first_seq() - 1
        self.write_drops = 0     # packets lost because the spool could not be written (live)

    @property
    def acked_seq(self) -> int:
        return max(0, self.spool.acked_seq - self.base)

    @property
    def dropped_packets(self) -> int:
        return self.spool.dropped_packets + self.write_drops

    @property
    def bytes(self) -> int:
        return self.spool.depth_bytes

    def add_payload(self, payload: bytes, packets: int, first_ts: int, cursor: int,
                    block: bool, stop: threading.Event) -> None:
        while True:
            try:
                self.spool.append(payload, packets=packets, first_ts=first_ts, cursor=cursor,
                                  on_full="raise" if block else "drop")
                break
            except SpoolFull:
                if stop.is_set():
                    return
                with self.cond:
                    self.cond.wait(0.2)
            except SpoolError:
                if block:
                    raise
                self.write_drops += packets   # live: count it and keep capturing
                log.error("spool write failed; batch dropped", exc_info=True)
                return
        with self.cond:
            self.cond.notify_all()

    def ack(self, seq: int) -> int:
        released = self.spool.ack(seq + self.base)
        with self.cond:
            self.cond.notify_all()
        return released

    def after(self, seq: int, limit: int = 64) -> list[_Pending]:
        base = self.base
        return [_Pending(r.seq - base, batch_message(r.seq - base, r.payload), r.packets,
                         len(r.payload), r.first_ts)
                for r in self.spool.read(seq + base, limit)]

    def has_after(self, seq: int) -> bool:
        return self.spool.has_after(seq + self.base)

    def first_ts_after(self, seq: int) -> int | None:
        return self.spool.first_ts_after(seq + self.base)

    def __len__(self) -> int:
        return len(self.spool)


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
        spool: Spool | None = None,
        resolve: Callable[[], str | None] | None = None,
        on_unusable: Callable[[str, str], object] | None = None,
        on_expect: Callable[[list[tuple[bytes, int]]], None] | None = None,
        ring: tuple[str, ...] | Callable[[], tuple[str, ...]] = (),
        compression: str = "none",
    ) -> None:
        self.target = target
        # --compression (docs/BENCHMARK.md "WAN"): gzip is gRPC's compression of the
        # stream, zstd compresses each batch once when it is made (transport/batches.py),
        # so the spool holds it compressed too
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression {compression!r}: one of {', '.join(COMPRESSIONS)}")
        self._compression = grpc.Compression.Gzip if compression == "gzip" else grpc.Compression.NoCompression
        self._batch_compression = compression
        # Sharded controller: the sorted shard ids this sensor routes over, sent in
        # every Hello (sensor/route.py); empty with one controller.  A callable for a
        # ring kept in etcd: asked again for every new stream, so a sensor refused
        # while a membership change propagates (UNAVAILABLE) retries with the new one.
        self.ring = ring if callable(ring) else tuple(ring)
        # Media endpoints the controller expects (Expect messages), handed over
        # from the link thread: the callback must be thread-safe and quick.
        self._on_expect = on_expect
        # With a registry, the controller's address is looked up before each
        # (re)connect, so a sensor follows a controller that moved or restarted.
        self._resolve = resolve
        # ... and told when an address could not be used (no TLS handshake: a certificate our
        # CA does not vouch for, or nobody there), so it can offer another registered one.
        self._on_unusable = on_unusable
        self.sensor_id = sensor_id
        self.site = site
        self.mode = mode
        self.interfaces = interfaces
        self.heartbeat_s = heartbeat_s
        self.connect_timeout_s = connect_timeout_s
        self.session = uuid.uuid4().hex
        self.spool = spool
        self.outbox: Outbox | SpoolOutbox = (
            SpoolOutbox(spool) if spool is not None else Outbox(max_batches=max_batches))
        self.counters = SenderCounters()
        self._stats = stats
        self._progress = progress
        self._credentials = channel_credentials
        self._stop = threading.Event()
        self._finished = threading.Event()   # producer is done (replay end)
        self._end_error = ""
        self._end_seq = 0                    # last_seq of the EndOfCapture sent
        self._done = threading.Event()       # controller confirmed the end
        self._failure: BaseException | None = None
        self._clock_ns = 0
        self._link_lost = time.monotonic()   # connect timeout counts from here
        self._thread = threading.Thread(target=self._run, name="spanrec-link", daemon=True)

    # -- producer side -------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(self, linktype: int, frames: list[tuple[int, bytes]], cursor: int = 0,
               broadcast: bool = False) -> None:
        """Queue one batch of (ts_ns, data) frames; blocks in replay mode when full.

        `cursor` is stored with the batch in the spool: how far the source had
        got (a restarted replay continues after the last spooled cursor).
        `broadcast`: the batch goes to every shard of a sharded controller
        (Batch.broadcast; sensor/route.py). Batches keep submission order."""
        if not frames:
            return
        payload = pack(self.sensor_id, linktype, frames, broadcast, self._batch_compression)
        block = self.mode != "live"
        if isinstance(self.outbox, SpoolOutbox):
            self.outbox.add_payload(payload, len(frames), frames[0][0], cursor, block, self._stop)
        else:
            self.outbox.add(lambda seq: batch_message(seq, payload), len(frames), len(payload),
                            block=block, stop=self._stop, first_ts=frames[0][0])
        if frames[-1][0] > self._clock_ns:
            self._clock_ns = frames[-1][0]
        self.counters.forwarded += len(frames)

    def advance_clock(self, clock_ns: int) -> None:
        """Replay: no packet older than `clock_ns` is still to come from the source
        (a real-time replay moves its clock on while the file is idle)."""
        if clock_ns > self._clock_ns:
            self._clock_ns = clock_ns

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
        base.queue_drops = self.outbox.dropped_packets   # memory outbox or spool: oldest dropped
        base.send_queue = len(self.outbox)
        base.batches_sent = c.batches_sent
        base.batches_acked = c.batches_acked
        base.reconnects = c.reconnects
        return base

    # -- link side -----------------------------------------------------
    def _run(self) -> None:
        stop = stop_never if self.connect_timeout_s is None else self._give_up
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

    def _give_up(self, state) -> bool:  # tenacity RetryCallState
        # counted from when the link was last up, not from the sensor's start:
        # a replay that ran for an hour gets the same grace after a break
        return time.monotonic() - self._link_lost >= (self.connect_timeout_s or 0)

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
                   ("grpc.keepalive_time_ms", 10_000),
                   # a restarted controller (shard) is dialled again within ~0.1-1 s,
                   # not after gRPC's default 1 s / 1.6x backoff that our 2 s wait
                   # for the channel then outlasts (scripts/bench-failover)
                   ("grpc.initial_reconnect_backoff_ms", 100),
                   ("grpc.min_reconnect_backoff_ms", 100),
                   ("grpc.max_reconnect_backoff_ms", 1000)]
        if self._credentials is not None:
            return grpc.secure_channel(self.target, self._credentials, options=options,
                                       compression=self._compression)
        return grpc.insecure_channel(self.target, options=options, compression=self._compression)

    def _session(self) -> None:
        """One stream: hello, resend what is unacked, then new batches. Raises LinkDown."""
        if self._stop.is_set():
            return
        if self._resolve is not None:
            found = self._resolve()
            if not found:
                raise LinkDown("no controller registered in etcd")
            self.target = found
        channel = self._channel()
        connected = False
        try:
            try:
                grpc.channel_ready_future(channel).result(timeout=2.0)
            except grpc.FutureTimeoutError as exc:
                reason = _connect_error(channel)
                if self._on_unusable is not None:
                    self._on_unusable(self.target, reason)
                raise LinkDown(f"cannot connect to {self.target}: {reason}") from exc
            connected = True
            if self._stop.is_set():
                return
            # requests are serialized by us (batches straight from the outbox/spool)
            stream = channel.stream_stream(
                STREAM_METHOD, request_serializer=None,
                response_deserializer=sensor_pb2.ControllerMessage.FromString)
            call = stream(self._requests())
            try:
                for reply in call:
                    kind = reply.WhichOneof("kind")
                    if kind == "ack":
                        released = self.outbox.ack(reply.ack.seq)
                        self.counters.batches_acked += released
                    elif kind == "expect":
                        self._expect(reply.expect)
                    elif kind == "notice":
                        if reply.notice.text:
                            log.info("controller notice", extra={"text": reply.notice.text})
                        if reply.notice.capture_done:
                            # the controller made everything up to EndOfCapture.last_seq
                            # durable before answering (a WAL may ack lazily): forget it
                            self.counters.batches_acked += self.outbox.ack(self._end_seq)
                            self._done.set()
                            call.cancel()
                            return
                if self._stop.is_set():
                    return
                raise LinkDown("controller closed the stream")
            except grpc.RpcError as exc:
                if self._done.is_set() or self._stop.is_set():
                    return
                if exc.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED,
                                  grpc.StatusCode.INVALID_ARGUMENT):
                    # refused, not down: retrying cannot help (wrong certificate name, bad data)
                    raise ControllerRefused(
                        f"controller {self.target} refused this sensor: {exc.details()}") from None
                raise LinkDown(f"{exc.code().name}: {exc.details()}") from exc
        finally:
            if connected:
                self._link_lost = time.monotonic()
            channel.close()

    def _expect(self, msg: sensor_pb2.Expect) -> None:
        if self._on_expect is None:
            return
        flows = [(f.addr, f.port) for f in msg.flows
                 if len(f.addr) in (4, 16) and 0 < f.port < 65536]
        if flows:
            self._on_expect(flows)

    def _requests(self) -> Iterator[bytes]:
        hello = sensor_pb2.Hello(sensor_id=self.sensor_id, site=self.site, version=VERSION,
                                 interfaces=list(self.interfaces), session=self.session,
                                 mode=self.mode, acked_seq=self.outbox.acked_seq,
                                 ring=sorted(self.ring() if callable(self.ring) else self.ring),
                                 # a live sensor's clock now: its first packets are corrected too
                                 clock_ns=time.time_ns() if self.mode == "live" else 0)
        yield sensor_pb2.SensorMessage(hello=hello).SerializeToString()
        self._link_lost = time.monotonic()
        sent_upto = self.outbox.acked_seq
        next_beat = time.monotonic() + self.heartbeat_s
        end_sent = False
        while not self._stop.is_set() and not self._done.is_set():
            pending = self.outbox.after(sent_upto)
            for item in pending:
                msg = item.message
                yield msg if isinstance(msg, bytes) else msg.SerializeToString()
                sent_upto = item.seq
                self.counters.batches_sent += 1
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + self.heartbeat_s
                yield self._heartbeat(sent_upto).SerializeToString()
            if self._finished.is_set() and not end_sent and not self.outbox.has_after(sent_upto):
                end_sent = True
                self._end_seq = sent_upto
                yield sensor_pb2.SensorMessage(end=sensor_pb2.EndOfCapture(
                    sensor_id=self.sensor_id, last_seq=sent_upto,
                    counters=self.counters_pb(), error=self._end_error)).SerializeToString()
            with self.outbox.cond:
                if not self.outbox.has_after(sent_upto) and not self._stop.is_set():
                    self.outbox.cond.wait(max(0.0, min(0.2, next_beat - time.monotonic())))

    def _heartbeat(self, sent_upto: int = 0) -> sensor_pb2.SensorMessage:
        # A live sensor promises nothing older than now minus what may still sit
        # between the capture thread and submit(); late packets are still merged.
        clock = time.time_ns() - 200_000_000 if self.mode == "live" else self._clock_ns
        # Never promise past a batch still waiting to be sent (a backlog resent
        # from the spool after an outage or a restart is older than "now").
        first = self.outbox.first_ts_after(sent_upto)
        if first:
            clock = min(clock, first - 1)
        beat = sensor_pb2.Heartbeat(sensor_id=self.sensor_id, clock_ns=clock,
                                    counters=self.counters_pb())
        if self._progress is not None:
            beat.replay_bytes, beat.replay_total = self._progress()
        return sensor_pb2.SensorMessage(heartbeat=beat)

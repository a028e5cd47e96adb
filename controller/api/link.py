"""Thin grpc.aio servicers: convert protobuf to calls on `core.Recorder`.

No call logic lives here. `serve()` builds the server with the sensor link,
the admin API, gRPC health checking and server reflection. What only the
transport knows (is a sensor's stream open, from where, with which
certificate, and its packet rates from successive heartbeats) is kept in
`LinkTable`.

Media hints: each sensor stream remembers the `MediaHints` generation it has
sent and, after every incoming message and every 200 ms while the sensor is
quiet, sends `Expect` with the media endpoints SDP announced since (so a
sensor that saw no signalling still forwards a call's media).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import grpc
from google.protobuf.json_format import MessageToDict
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from controller.api.admin import AdminServicer
from controller.core import Recorder
from proto import admin_pb2, admin_pb2_grpc, sensor_pb2, sensor_pb2_grpc
from transport.batches import BatchFormatError, unpack as unpack_batch
from transport.channels import add_port
from transport.limits import HANDSHAKE_TIMEOUT_MS
from controller.api.authz import Authorizer, AuthzInterceptor
from transport.roles import PeerIdentity, peer_identity

_PLAIN = PeerIdentity("", "")
from transport.tls import peer_common_name

log = logging.getLogger("spanrec.controller.api.link")


def _counters(c: sensor_pb2.Counters) -> dict[str, int]:
    return {k: int(v) for k, v in MessageToDict(
        c, preserving_proto_field_name=True, always_print_fields_with_no_presence=True).items()}


RATE_WINDOW_S = 10.0     # packet rates are averaged over the heartbeats of this window
RATE_STALE_S = 5.0       # no heartbeat for this long: the rate is shown as 0


@dataclass
class _Link:
    streams: int = 0                      # open streams (a reconnect may overlap the old one)
    peer: str = ""
    identity: str = ""
    connected_since: float = 0.0          # wall clock
    last_heartbeat: float = 0.0           # wall clock
    samples: deque = field(default_factory=lambda: deque(maxlen=64))  # (monotonic, captured, forwarded)


class LinkTable:
    """Per sensor: stream state, peer, certificate CN, and rates from heartbeats."""

    def __init__(self) -> None:
        self._links: dict[str, _Link] = {}

    def opened(self, sensor_id: str, peer: str, identity: str) -> None:
        link = self._links.setdefault(sensor_id, _Link())
        if link.streams == 0:
            link.connected_since = time.time()
        link.streams += 1
        link.peer, link.identity = peer, identity

    def closed(self, sensor_id: str) -> None:
        link = self._links.get(sensor_id)
        if link is not None:
            link.streams = max(0, link.streams - 1)

    def heartbeat(self, sensor_id: str, captured: int, forwarded: int) -> None:
        link = self._links.setdefault(sensor_id, _Link())
        now = time.monotonic()
        link.last_heartbeat = time.time()
        if link.samples and (captured < link.samples[-1][1] or forwarded < link.samples[-1][2]):
            link.samples.clear()          # a new sensor process: counters restarted
        link.samples.append((now, captured, forwarded))
        while link.samples and now - link.samples[0][0] > RATE_WINDOW_S:
            link.samples.popleft()

    def view(self, sensor_id: str) -> dict[str, Any]:
        link = self._links.get(sensor_id) or _Link()
        captured_rate = forwarded_rate = 0.0
        s = link.samples
        if len(s) >= 2 and time.monotonic() - s[-1][0] < RATE_STALE_S and s[-1][0] > s[0][0]:
            dt = s[-1][0] - s[0][0]
            captured_rate = (s[-1][1] - s[0][1]) / dt
            forwarded_rate = (s[-1][2] - s[0][2]) / dt
        return {"link": "connected" if link.streams else "disconnected", "peer": link.peer,
                "identity": link.identity, "connected_since": link.connected_since,
                "last_heartbeat": link.last_heartbeat,
                "captured_per_s": captured_rate, "forwarded_per_s": forwarded_rate}


EXPECT_EVERY_S = 0.2     # media hints reach a quiet sensor within this time
EXPECT_CHUNK = 1000      # flows per Expect message
_END = object()


class _Failed:
    """The request stream raised: re-raised in the servicer."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _Incoming:
    """The requests of one stream, read by a task of their own into a small
    queue, with a None put in every `tick_s` while the queue is empty: the
    servicer can also send while a sensor is quiet. (A read with a timeout per
    message cost ~30 µs; a queue get costs a few.)"""

    def __init__(self, requests: AsyncIterator[sensor_pb2.SensorMessage], tick_s: float) -> None:
        self._queue: asyncio.Queue = asyncio.Queue(maxsize=4)
        self._tasks = (asyncio.ensure_future(self._read(requests)),
                       asyncio.ensure_future(self._tick(tick_s)))

    async def _read(self, requests: AsyncIterator[sensor_pb2.SensorMessage]) -> None:
        item: Any = _END
        try:
            async for msg in requests:
                await self._queue.put(msg)
        except Exception as exc:  # noqa: BLE001 - handed to the servicer
            item = _Failed(exc)
        await self._queue.put(item)

    async def _tick(self, tick_s: float) -> None:
        while True:
            await asyncio.sleep(tick_s)
            if self._queue.empty():
                self._queue.put_nowait(None)

    async def next(self) -> Any:
        """The next message; None after a quiet tick; `_END` at the end."""
        item = await self._queue.get()
        if isinstance(item, _Failed):
            raise item.exc
        return item

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()


def _expect_messages(hints: Any, gen: int) -> tuple[int, list[sensor_pb2.ControllerMessage]]:
    """Expect messages with the media endpoints logged after generation `gen`."""
    gen, flows = hints.since(gen)
    out = []
    for i in range(0, len(flows), EXPECT_CHUNK):
        out.append(sensor_pb2.ControllerMessage(expect=sensor_pb2.Expect(flows=[
            sensor_pb2.MediaFlow(addr=addr, port=port) for addr, port in flows[i:i + EXPECT_CHUNK]])))
    return gen, out


class SensorLinkServicer(sensor_pb2_grpc.SensorLinkServicer):
    """With mTLS, a sensor's certificate CN must equal its Hello.sensor_id: one
    sensor's key cannot feed (or take over the session of) another sensor."""

    def __init__(self, recorder: Recorder, links: LinkTable | None = None,
                 registry: Any = None, authorizer: Authorizer | None = None) -> None:
        self.recorder = recorder
        self.links = links or LinkTable()
        self.registry = registry    # registry.Registry or None (no etcd)
        self.authorizer = authorizer or Authorizer()

    async def Stream(self, request_iterator: AsyncIterator[sensor_pb2.SensorMessage],
                     context: grpc.aio.ServicerContext) -> AsyncIterator[sensor_pb2.ControllerMessage]:
        rec = self.recorder
        sensor_id = ""
        hints = getattr(rec, "hints", None)
        hint_gen = 0                     # MediaHints generation this stream has sent
        incoming = _Incoming(request_iterator, EXPECT_EVERY_S)
        try:
            while True:
                msg = await incoming.next()
                if msg is _END:
                    break
                if msg is None:          # quiet stream: only media hints to send
                    if sensor_id and hints is not None:
                        hint_gen, out = _expect_messages(hints, hint_gen)
                        for m in out:
                            yield m
                    continue
                kind = msg.WhichOneof("kind")
                if kind == "batch":
                    b = msg.batch
                    if not sensor_id:
                        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "Hello must come first")
                    try:
                        f = unpack_batch(b)     # times as deltas, zstd (transport/batches.py)
                    except BatchFormatError as exc:
                        rec.bad_batches += 1
                        log.error("malformed batch", extra={"sensor_id": sensor_id, "seq": b.seq,
                                                            "error": str(exc)})
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"batch {b.seq}: {exc}")
                    acked = rec.ingest(sensor_id, b.seq, f.linktype, f.timestamps, f.lengths, f.data,
                                       broadcast=f.broadcast)
                    yield sensor_pb2.ControllerMessage(ack=sensor_pb2.Ack(seq=acked))
                elif kind == "heartbeat":
                    h = msg.heartbeat
                    if sensor_id:
                        self.links.heartbeat(sensor_id, h.counters.captured, h.counters.forwarded)
                        rec.heartbeat(sensor_id, h.clock_ns, _counters(h.counters),
                                      h.replay_bytes, h.replay_total)
                elif kind == "hello":
                    h = msg.hello
                    if not h.sensor_id:
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "sensor_id is empty")
                    if sensor_id and h.sensor_id != sensor_id:
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                            "a stream carries one sensor: second Hello differs")
                    identity = peer_common_name(context)
                    if identity is not None and identity != h.sensor_id:
                        log.warning("sensor refused: certificate does not match sensor_id", extra={
                            "sensor_id": h.sensor_id, "certificate_cn": identity,
                            "peer": context.peer()})
                        await context.abort(
                            grpc.StatusCode.PERMISSION_DENIED,
                            f"certificate CN {identity!r} does not match sensor_id {h.sensor_id!r}")
                    peer = peer_identity(context)
                    refusal = self.authorizer.check_site(peer, h.sensor_id, h.site)
                    if refusal is not None:
                        self.authorizer.refused(peer or _PLAIN, "site", refusal, context.peer())
                        await context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal)
                    # a sharded controller (issue #12): the sensor must route over this
                    # shard's ring, or calls would be split silently (logged, counted)
                    refusal = rec.ring_refusal(h.sensor_id, list(h.ring))
                    if refusal is not None:
                        # shards in etcd: the lists differ only while a change propagates;
                        # UNAVAILABLE makes the sensor retry (with its next etcd update)
                        shard = getattr(rec, "shard", None)
                        retry = shard is not None and shard.refusal_retriable(list(h.ring))
                        await context.abort(grpc.StatusCode.UNAVAILABLE if retry else
                                            grpc.StatusCode.FAILED_PRECONDITION, refusal)
                    if not sensor_id:
                        self.links.opened(h.sensor_id, context.peer(), identity or "")
                    sensor_id = h.sensor_id
                    acked = rec.sensor_hello(sensor_id, session=h.session, site=h.site,
                                             version=h.version, mode=h.mode or "live",
                                             clock_ns=h.clock_ns)
                    log.info("sensor connected", extra={"sensor_id": sensor_id, "site": h.site,
                                                        "mode": h.mode, "acked_seq": acked})
                    yield sensor_pb2.ControllerMessage(ack=sensor_pb2.Ack(seq=acked))
                elif kind == "end":
                    e = msg.end
                    rec.end_of_capture(sensor_id, _counters(e.counters), e.error)
                    log.info("sensor capture ended", extra={"sensor_id": sensor_id, "error": e.error})
                    yield sensor_pb2.ControllerMessage(notice=sensor_pb2.Notice(capture_done=True))
                if sensor_id and hints is not None and kind != "end":
                    hint_gen, out = _expect_messages(hints, hint_gen)
                    for m in out:
                        yield m
        finally:
            incoming.close()
            if sensor_id:
                self.links.closed(sensor_id)
                rec.sensor_disconnected(sensor_id)

    async def Members(self, request: sensor_pb2.MembersRequest,
                      context: grpc.aio.ServicerContext) -> sensor_pb2.RingMembers:
        """The shards a sensor given this controller's address must route over
        (none: one controller), and the routing leg headers."""
        rec = self.recorder
        shard = getattr(rec, "shard", None)
        if shard is None:
            return sensor_pb2.RingMembers()
        return sensor_pb2.RingMembers(
            members=[sensor_pb2.RingMember(shard_id=s.shard_id, address=s.address, state=s.state)
                     for s in shard.members()],
            dynamic=shard.dynamic, leg_headers=list(shard.leg_headers))


HEALTH_SERVICES = ("", "spanrec.v1.SensorLink", "spanrec.v1.Admin")


async def serve_health(health_servicer: Any, listen: str) -> tuple[grpc.aio.Server, int]:
    """A plain-text server with only gRPC health checking (no data, no admin), for
    probes that cannot speak mTLS (Kubernetes' grpc probe)."""
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    return server, port


async def serve(recorder: Recorder, listen: str, *, tick_s: float = 1.0,
                server_credentials: grpc.ServerCredentials | None = None,
                registry: Any = None, health_listen: str | None = None,
                authorizer: Authorizer | None = None,
                max_connections: int | None = None) -> tuple[grpc.aio.Server, int]:
    """Starts the server; returns it and the bound port (listen may use port 0).

    `server_credentials` None means plain text: the CLI allows that only with
    --insecure (or on loopback for `spanrec record`).  `health_listen`: also
    serve gRPC health checking alone, in plain text, there (probes).
    `authorizer`: certificate roles and sites (controller/api/authz.py); checked
    on every RPC by an interceptor whenever the peer has a certificate.
    `max_connections`: TCP connections accepted at once (transport/limits.py);
    a connection that has not finished its TLS handshake in
    HANDSHAKE_TIMEOUT_MS is closed either way."""
    authorizer = authorizer or Authorizer()
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", 64 << 20),
        ("grpc.max_send_message_length", 64 << 20),
        ("grpc.server_handshake_timeout_ms", HANDSHAKE_TIMEOUT_MS),
    ]
    if max_connections:
        options.append(("grpc.max_allowed_incoming_connections", max_connections))
    server = grpc.aio.server(interceptors=[AuthzInterceptor(authorizer)], options=options)
    links = LinkTable()
    sensor_pb2_grpc.add_SensorLinkServicer_to_server(
        SensorLinkServicer(recorder, links, authorizer=authorizer), server)
    server._spanrec_authz = authorizer  # type: ignore[attr-defined]
    admin = AdminServicer(recorder, links, registry, authorizer=authorizer)
    admin_pb2_grpc.add_AdminServicer_to_server(admin, server)
    server._spanrec_admin = admin  # type: ignore[attr-defined]  # registry attached after start
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((
        sensor_pb2.DESCRIPTOR.services_by_name["SensorLink"].full_name,
        admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME), server)
    port = add_port(server, listen, server_credentials)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    for name in HEALTH_SERVICES:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    server._spanrec_health = health_servicer  # type: ignore[attr-defined]
    server._spanrec_health_server = None  # type: ignore[attr-defined]
    if health_listen:
        server._spanrec_health_server = (await serve_health(health_servicer, health_listen))[0]  # type: ignore[attr-defined]

    async def ticker() -> None:
        while True:
            await asyncio.sleep(tick_s)
            try:
                recorder.tick()
            except Exception:  # noqa: BLE001 - calls must keep ending on time whatever one tick hit
                log.exception("recorder tick failed; the next one runs in %s s", tick_s)

    server._spanrec_ticker = asyncio.get_running_loop().create_task(ticker())  # type: ignore[attr-defined]
    return server, port

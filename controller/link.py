"""Thin grpc.aio servicers: convert protobuf to calls on `core.Recorder`.

No call logic lives here. `serve()` builds the server with the sensor link and
the admin API.
"""
from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator

import grpc
from google.protobuf.json_format import MessageToDict

from controller.core import Recorder
from proto import admin_pb2, admin_pb2_grpc, sensor_pb2, sensor_pb2_grpc

log = logging.getLogger("spanrec.controller.link")


def _counters(c: sensor_pb2.Counters) -> dict[str, int]:
    return {k: int(v) for k, v in MessageToDict(
        c, preserving_proto_field_name=True, always_print_fields_with_no_presence=True).items()}


class SensorLinkServicer(sensor_pb2_grpc.SensorLinkServicer):
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def Stream(self, request_iterator: AsyncIterator[sensor_pb2.SensorMessage],
                     context: grpc.aio.ServicerContext) -> AsyncIterator[sensor_pb2.ControllerMessage]:
        rec = self.recorder
        sensor_id = ""
        try:
            async for msg in request_iterator:
                kind = msg.WhichOneof("kind")
                if kind == "batch":
                    b = msg.batch
                    if not sensor_id:
                        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "Hello must come first")
                    if len(b.timestamps_ns) != len(b.lengths) or sum(b.lengths) != len(b.data):
                        rec.bad_batches += 1
                        log.error("malformed batch", extra={"sensor_id": sensor_id, "seq": b.seq})
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                            f"batch {b.seq}: lengths do not match data")
                    acked = rec.ingest(sensor_id, b.seq, b.linktype, b.timestamps_ns, b.lengths, b.data)
                    yield sensor_pb2.ControllerMessage(ack=sensor_pb2.Ack(seq=acked))
                elif kind == "heartbeat":
                    h = msg.heartbeat
                    if sensor_id:
                        rec.heartbeat(sensor_id, h.clock_ns, _counters(h.counters),
                                      h.replay_bytes, h.replay_total)
                elif kind == "hello":
                    h = msg.hello
                    if not h.sensor_id:
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "sensor_id is empty")
                    sensor_id = h.sensor_id
                    acked = rec.sensor_hello(sensor_id, session=h.session, site=h.site,
                                             version=h.version, mode=h.mode or "live")
                    log.info("sensor connected", extra={"sensor_id": sensor_id, "site": h.site,
                                                        "mode": h.mode, "acked_seq": acked})
                    yield sensor_pb2.ControllerMessage(ack=sensor_pb2.Ack(seq=acked))
                elif kind == "end":
                    e = msg.end
                    rec.end_of_capture(sensor_id, _counters(e.counters), e.error)
                    log.info("sensor capture ended", extra={"sensor_id": sensor_id, "error": e.error})
                    yield sensor_pb2.ControllerMessage(notice=sensor_pb2.Notice(capture_done=True))
        finally:
            if sensor_id:
                rec.sensor_disconnected(sensor_id)


class AdminServicer(admin_pb2_grpc.AdminServicer):
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def GetStatus(self, request: admin_pb2.StatusRequest,
                        context: grpc.aio.ServicerContext) -> admin_pb2.Status:
        st = self.recorder.status()
        out = admin_pb2.Status(
            controller_id=st["controller_id"], version="0.1.0",
            active_calls=st["active_calls"], recordings_written=st["recordings_written"],
            storage_errors=st["storage_errors"], decode_errors=st["decode_errors"],
            duplicates_dropped=st["duplicates_dropped"])
        for s in st["sensors"]:
            counters = sensor_pb2.Counters(**{k: v for k, v in s["counters"].items()
                                              if k in sensor_pb2.Counters.DESCRIPTOR.fields_by_name})
            out.sensors.append(admin_pb2.SensorStatus(
                sensor_id=s["sensor_id"], site=s["site"], version=s["version"], state=s["state"],
                last_seen_ns=int(s["last_seen"] * 1e9), counters=counters,
                duplicates_dropped=s["duplicates_dropped"]))
        return out

    async def ListCalls(self, request: admin_pb2.ListCallsRequest,
                        context: grpc.aio.ServicerContext) -> admin_pb2.CallList:
        out = admin_pb2.CallList()
        for c in self.recorder.engine.active():
            out.calls.append(_summary(c, active=True))
        if not request.active_only:
            for c in reversed(self.recorder.writer.recent):
                out.calls.append(_summary(c, active=False))
        if request.limit:
            del out.calls[request.limit:]
        return out


def _summary(c: dict, active: bool) -> admin_pb2.CallSummary:
    return admin_pb2.CallSummary(
        id=str(c.get("id", "")), call_ids=list(c.get("call_ids", [])),
        from_uri=str(c.get("from") or ""), to_uri=str(c.get("to") or ""),
        status=str(c.get("status") or ""), started_at=str(c.get("started_at") or ""),
        ended_at=str(c.get("ended_at") or ""), active=active, location=str(c.get("location") or ""))


async def serve(recorder: Recorder, listen: str, *, tick_s: float = 1.0,
                server_credentials: grpc.ServerCredentials | None = None) -> tuple[grpc.aio.Server, int]:
    """Starts the server; returns it and the bound port (listen may use port 0)."""
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", 64 << 20),
        ("grpc.max_send_message_length", 64 << 20),
    ])
    sensor_pb2_grpc.add_SensorLinkServicer_to_server(SensorLinkServicer(recorder), server)
    admin_pb2_grpc.add_AdminServicer_to_server(AdminServicer(recorder), server)
    if server_credentials is not None:
        port = server.add_secure_port(listen, server_credentials)
    else:
        port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    await server.start()

    async def ticker() -> None:
        while True:
            await asyncio.sleep(tick_s)
            recorder.tick()

    server._spanrec_ticker = asyncio.get_running_loop().create_task(ticker())  # type: ignore[attr-defined]
    return server, port

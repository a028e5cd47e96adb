"""The Admin API servicer (read by `spanrecctl` and the web player): status,
calls, recording files, and — over the call index (issue #14/#15) — search,
the audit trail, legal hold, erasure and verification. Thin: the work is in
`core.Recorder`, controller/api/callpages.py and controller/api/indexadmin.py;
this converts and maps errors to status codes (`_abort`).
"""
from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any, AsyncIterator

import grpc

from controller.api.authz import Authorizer
from controller.api.callpages import PageError, call_page, find_active
from controller.api.indexadmin import IndexAdmin, LifecycleAdmin, Refused
from controller.calls.unsignalled import summarize as summarize_unsignalled
from controller.core import Recorder
from proto import admin_pb2, admin_pb2_grpc, sensor_pb2
from storage.base import StorageError
from storage.layout import CALL_JSON, prefix_of_id
from transport import handshakes
from transport.roles import peer_identity

if TYPE_CHECKING:
    from controller.api.link import LinkTable


CHUNK = 256 << 10


class AdminError(Exception):
    """An admin request that cannot be served; mapped to a status code in `_abort`."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def recording_prefix_of(recording_id: str) -> str:
    """`YYYY/MM/DD/<id>`: the id starts with the call's UTC start second, which
    is where storage.layout puts the recording (date of the start, UTC)."""
    prefix = prefix_of_id(recording_id)
    if prefix is None:
        raise AdminError(grpc.StatusCode.INVALID_ARGUMENT,
                         f"invalid recording id {recording_id!r} (expected YYYYMMDDTHHMMSSZ-<12 hex>)")
    return prefix


class AdminServicer(admin_pb2_grpc.AdminServicer):
    """Read-only: status, calls, and the files of stored recordings (read
    through the recorder's store, off the event loop)."""

    def __init__(self, recorder: Recorder, links: LinkTable | None = None,
                 registry: Any = None, authorizer: Authorizer | None = None) -> None:
        self.recorder = recorder
        if links is None:
            from controller.api.link import LinkTable
            links = LinkTable()
        self.links = links
        self.registry = registry    # registry.Registry or None (no etcd)
        self.authorizer = authorizer   # its refusal counts go into the status
        self.index_admin = IndexAdmin(recorder.writer.store)   # search, audit, number limits
        self.lifecycle = LifecycleAdmin(self.index_admin, recorder.writer.store,
                                        lambda: getattr(recorder.writer, "verify_keys", None))

    async def GetStatus(self, request: admin_pb2.StatusRequest,
                        context: grpc.aio.ServicerContext) -> admin_pb2.Status:
        st = await asyncio.to_thread(self._status)    # walks every call: off the loop
        out = admin_pb2.Status(
            controller_id=st["controller_id"], version="0.1.0",
            active_calls=st["active_calls"], recordings_written=st["recordings_written"],
            storage_errors=st["storage_errors"], decode_errors=st["decode_errors"],
            duplicates_dropped=st["duplicates_dropped"], packets_in=st.get("packets_in", 0),
            bad_batches=st.get("bad_batches", 0), storage=self.recorder.writer.store.url,
            storage_pending=st.get("storage_pending", 0), storage_retries=st.get("storage_retries", 0),
            authz_refused=sum(self.authorizer.counts().values()) if self.authorizer else 0,
            tls_handshakes_failed=handshakes.failed_total(),
            shard_id=st.get("shard", {}).get("shard_id", ""), ring=st.get("shard", {}).get("ring", []),
            not_owned_packets=st.get("not_owned_packets", 0), ring_refused=st.get("ring_refused", 0),
            index=st.get("index", ""), indexed=st.get("indexed", 0),
            index_pending=st.get("index_pending", 0), index_errors=st.get("index_errors", 0),
            late_for_deleted=st.get("late_for_deleted", 0))
        u = summarize_unsignalled(st)
        out.unsignalled_media.CopyFrom(admin_pb2.UnsignalledMedia(
            flows=u.flows, packets=u.packets, ambiguous_packets=u.ambiguous_packets,
            sip_tls_packets=u.sip_tls_packets, sip_tls_flows=u.sip_tls_flows,
            likely_cause=u.likely_cause))
        shard = getattr(self.recorder, "shard", None)
        if shard is not None:   # every shard and its address: spanrecctl's one view (issue #12)
            out.shard_members.extend(admin_pb2.ShardMember(shard_id=m.shard_id, address=m.address)
                                     for m in shard.members())
        members = self._members(out)
        for s in st["sensors"]:
            row = _sensor_status(s, self.links.view(s["sensor_id"]))
            row.registered = ("sensor", s["sensor_id"]) in members
            out.sensors.append(row)
        known = {s["sensor_id"] for s in st["sensors"]}
        for (role, mid), m in sorted(members.items()):
            if role == "sensor" and mid not in known:   # registered, never connected here
                out.sensors.append(admin_pb2.SensorStatus(
                    sensor_id=mid, site=m.site, version=m.version, state="registered",
                    link="none", registered=True))
        return out

    def _members(self, out: admin_pb2.Status) -> dict:
        """Registry members by (role, id); fills the registry part of `out`."""
        if self.registry is None:
            return {}
        out.registry_state = str(getattr(self.registry.state, "value", self.registry.state))
        members = {}
        for m in self.registry.members().values():
            members[(m.role, m.id)] = m
            out.members.append(admin_pb2.Member(
                role=m.role, id=m.id, site=m.site, version=m.version, address=m.address,
                started_at=m.started_at, interfaces=list(m.interfaces)))
        return members

    async def ListCalls(self, request: admin_pb2.ListCallsRequest,
                        context: grpc.aio.ServicerContext) -> admin_pb2.CallList:
        try:   # off the loop, one bounded page (controller/api/callpages.py)
            rows, token, total = await asyncio.to_thread(
                call_page, self.recorder, request.limit, request.page_token, request.active_only)
        except PageError as exc:
            await _abort(context, AdminError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)))
            raise AssertionError("unreachable") from None
        out = admin_pb2.CallList(next_page_token=token, active_total=total)
        peer = peer_identity(context)
        for c, active in rows:
            if self.index_admin.may_see(peer, c):     # an operator limited to numbers
                out.calls.append(_summary(c, active=active))
        return out

    async def SearchCalls(self, request: admin_pb2.SearchRequest,
                          context: grpc.aio.ServicerContext) -> admin_pb2.SearchResult:
        try:
            return await asyncio.to_thread(self.index_admin.search, request, peer_identity(context),
                                           context.peer())
        except Refused as exc:
            await _abort(context, AdminError(exc.code, str(exc)))
            raise AssertionError("unreachable") from None

    async def ListAudit(self, request: admin_pb2.AuditRequest,
                        context: grpc.aio.ServicerContext) -> admin_pb2.AuditList:
        try:
            return await asyncio.to_thread(self.index_admin.list_audit, request)
        except Refused as exc:
            await _abort(context, AdminError(exc.code, str(exc)))
            raise AssertionError("unreachable") from None

    async def HoldRecordings(self, request: admin_pb2.HoldRequest,
                             context: grpc.aio.ServicerContext) -> admin_pb2.LifecycleResult:
        return await self._lifecycle(self.lifecycle.hold, request, context)

    async def EraseRecordings(self, request: admin_pb2.EraseRequest,
                              context: grpc.aio.ServicerContext) -> admin_pb2.LifecycleResult:
        return await self._lifecycle(self.lifecycle.erase, request, context)

    async def VerifyRecordings(self, request: admin_pb2.VerifyRequest,
                               context: grpc.aio.ServicerContext) -> admin_pb2.VerifyResult:
        return await self._lifecycle(self.lifecycle.verify, request, context)

    async def _lifecycle(self, fn, request, context):
        try:
            return await asyncio.to_thread(fn, request, peer_identity(context), context.peer())
        except Refused as exc:
            await _abort(context, AdminError(exc.code, str(exc)))
            raise AssertionError("unreachable") from None

    async def _allow(self, context: grpc.aio.ServicerContext, action: str, recording_id: str,
                     call: dict | None, detail: dict | None = None) -> None:
        """A limited certificate sees only its numbers' calls; what is served is audited."""
        peer = peer_identity(context)
        if call is not None and not self.index_admin.may_see(peer, call):
            raise AdminError(grpc.StatusCode.PERMISSION_DENIED,
                             f"recording {recording_id}: not a call of this certificate's numbers")
        try:
            await asyncio.to_thread(self.index_admin.audit, peer, context.peer(), action,
                                    recording_id=recording_id, detail=detail)
        except Refused as exc:
            raise AdminError(exc.code, str(exc)) from None

    def _status(self) -> dict:
        with self.recorder._lock:   # consistent counters; the packet path waits ms, not the loop
            return self.recorder.status()

    async def GetCall(self, request: admin_pb2.GetCallRequest,
                      context: grpc.aio.ServicerContext) -> admin_pb2.CallDetail:
        try:
            prefix = recording_prefix_of(request.id)
            c = await asyncio.to_thread(find_active, self.recorder, request.id)
            if c is not None:
                await self._allow(context, "view", request.id, c)
                return admin_pb2.CallDetail(summary=_summary(c, active=True),
                                            call_json=json.dumps(c, default=str))
            raw = await self._read(prefix, request.id, CALL_JSON)
            try:
                meta = json.loads(raw)
            except ValueError:
                raise AdminError(grpc.StatusCode.DATA_LOSS,
                                 f"recording {request.id}: call.json is not JSON") from None
            meta.setdefault("location", self._location(request.id, prefix))
            await self._allow(context, "view", request.id, meta)
            return admin_pb2.CallDetail(summary=_summary(meta, active=False),
                                        call_json=raw.decode("utf-8"), files=_files(meta))
        except AdminError as exc:
            await _abort(context, exc)
            raise AssertionError("unreachable")  # context.abort raises

    async def GetRecordingFile(self, request: admin_pb2.GetRecordingFileRequest,
                               context: grpc.aio.ServicerContext) -> AsyncIterator[admin_pb2.FileChunk]:
        try:
            prefix = recording_prefix_of(request.id)
            meta = None
            if self.index_admin.limited(peer_identity(context)) is not None:
                try:
                    meta = json.loads(await self._read(prefix, request.id, CALL_JSON))
                except ValueError:
                    raise AdminError(grpc.StatusCode.DATA_LOSS,
                                     f"recording {request.id}: call.json is not JSON") from None
            data = await self._read(prefix, request.id, request.name)
            await self._allow(context, "download", request.id, meta, {"file": request.name})
        except AdminError as exc:
            await _abort(context, exc)
            return
        size = len(data)
        if size == 0:
            yield admin_pb2.FileChunk(data=b"", offset=0, size=0)
        for off in range(0, size, CHUNK):
            yield admin_pb2.FileChunk(data=data[off:off + CHUNK], offset=off, size=size)

    async def _read(self, prefix: str, recording_id: str, name: str) -> bytes:
        try:
            return await asyncio.to_thread(self.recorder.writer.store.get, prefix, name)
        except StorageError as exc:
            # The store's message says whether the file is absent or the store failed.
            raise AdminError(grpc.StatusCode.NOT_FOUND, f"recording {recording_id}: {exc}") from None

    def _location(self, recording_id: str, prefix: str) -> str:
        for c in list(self.recorder.writer.recent):
            if c.get("id") == recording_id and c.get("location"):
                return str(c["location"])
        return f"{self.recorder.writer.store.url.rstrip('/')}/{prefix}"


async def _abort(context: grpc.aio.ServicerContext, exc: AdminError) -> None:
    """The one place admin errors become gRPC status codes."""
    await context.abort(exc.code, str(exc))


# -- converters: Recorder dicts -> protobuf ---------------------------------
def _ns(wall_s: float) -> int:
    return int(wall_s * 1e9) if wall_s else 0


def _sensor_status(s: dict, link: dict) -> admin_pb2.SensorStatus:
    counters = sensor_pb2.Counters(**{k: v for k, v in s["counters"].items()
                                      if k in sensor_pb2.Counters.DESCRIPTOR.fields_by_name})
    return admin_pb2.SensorStatus(
        sensor_id=s["sensor_id"], site=s["site"], version=s["version"], state=s["state"],
        last_seen_ns=_ns(s["last_seen"]), counters=counters,
        duplicates_dropped=s["duplicates_dropped"], mode=s.get("mode", ""),
        link=link["link"], peer=link["peer"], identity=link["identity"],
        connected_since_ns=_ns(link["connected_since"]),
        last_heartbeat_ns=_ns(link["last_heartbeat"]),
        captured_per_s=link["captured_per_s"], forwarded_per_s=link["forwarded_per_s"],
        packets_received=s.get("packets_received", 0), replay_bytes=s.get("replay_bytes", 0),
        replay_total=s.get("replay_total", 0), error=s.get("error") or "",
        clock_offset_ns=s.get("clock_offset_ns", 0), clock_corrected=s.get("clock_corrected", 0),
        heartbeats_refused=s.get("heartbeats_refused", 0),
        packets_refused=s.get("packets_refused", 0), merge=s.get("merge", ""),
        merge_stalls=s.get("merge_stalls", 0), merge_held=s.get("held", 0),
        clock_steps=s.get("clock_steps", 0), clock_restamped=s.get("clock_restamped", 0),
        outside_site=s.get("outside_site", 0))


def _summary(c: dict, active: bool) -> admin_pb2.CallSummary:
    final = c.get("final_response")
    return admin_pb2.CallSummary(
        id=str(c.get("id", "")), call_ids=list(c.get("call_ids", [])),
        from_uri=str(c.get("from") or ""), to_uri=str(c.get("to") or ""),
        status=str(c.get("status") or ""), started_at=str(c.get("started_at") or ""),
        ended_at=str(c.get("ended_at") or ""), active=active, location=str(c.get("location") or ""),
        answered_at=str(c.get("answered_at") or ""), end_reason=str(c.get("end_reason") or ""),
        final_response=int(final) if isinstance(final, int) else 0,
        packets=int(c.get("packets") or 0))


def _files(meta: dict) -> list[str]:
    """Files of a stored recording, as call.json names them."""
    files = [CALL_JSON]
    if meta.get("pcap"):
        files.append(str(meta["pcap"]))
    audio = meta.get("audio")
    if isinstance(audio, dict) and audio.get("file"):
        files.append(str(audio["file"]))
    return files

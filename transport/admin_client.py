"""A small client of the controller's Admin API that returns dataclasses.

`spanrecctl` commands use this and never see protobuf. Every failure is an
`AdminUnavailable` (the controller cannot be reached or refused us) or an
`AdminFailed` (it answered with an error), each with a one-line message.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import grpc

from google.protobuf.json_format import MessageToDict

from proto import admin_pb2, admin_pb2_grpc
from transport.channels import open_channel
from transport.tls import Security

DEFAULT_TIMEOUT_S = 5.0
DOWNLOAD_TIMEOUT_S = 600.0


class AdminFailed(Exception):
    """The controller answered with an error (e.g. no such recording)."""


class AdminUnavailable(AdminFailed):
    """The controller could not be reached in time, or refused the connection."""


class AdminNotFound(AdminFailed):
    """The controller has no such call or recording (another shard may have it)."""


@dataclass
class SensorInfo:
    sensor_id: str
    site: str
    version: str
    mode: str
    state: str                 # up / stale / gone / done
    link: str                  # connected / disconnected
    peer: str
    identity: str              # certificate CN ("" in plain text)
    last_seen: str             # ISO 8601 UTC, "" if never
    last_heartbeat: str
    connected_since: str
    captured_per_s: float
    forwarded_per_s: float
    captured: int
    forwarded: int
    filtered: int
    decode_errors: int
    kernel_drops: int
    interface_drops: int
    backlog_drops: int
    queue_drops: int
    send_queue: int            # spool depth: batches not yet acknowledged
    reconnects: int
    packets_received: int
    duplicates_dropped: int
    error: str
    registered: bool = False   # has a live record in the etcd registry
    sip_tls_flows: int = 0     # SIP-over-TLS connections seen (encrypted: not forwarded)
    sip_tls_packets: int = 0
    sdp_endpoints_refused: int = 0   # SDP media endpoints the sensor refused (port 53, too many m=)
    media_not_rtp: int = 0           # datagrams on SDP media ports that were not RTP-shaped
    # time per sensor (admin.proto SensorStatus 21-29)
    clock_offset_ns: int = 0         # controller clock - sensor clock
    clock_corrected: int = 0         # packets shifted by that offset
    packets_refused: int = 0         # packets over a day off, dropped
    outside_site: int = 0            # packets outside its site's address ranges, dropped
    heartbeats_refused: int = 0      # heartbeat clocks ignored
    merge: str = ""                  # "" / stalled / lagging
    merge_stalls: int = 0
    merge_held: int = 0
    clock_steps: int = 0
    clock_restamped: int = 0


@dataclass
class MemberInfo:
    role: str
    id: str
    site: str
    version: str
    address: str
    started_at: str


@dataclass
class ShardMemberInfo:
    """One shard of a sharded controller's ring (Status.shard_members)."""
    shard_id: str
    address: str


@dataclass
class UnsignalledMediaInfo:
    """Media the controller saw without signalling (admin.proto UnsignalledMedia)."""
    flows: int = 0
    packets: int = 0
    ambiguous_packets: int = 0
    sip_tls_flows: int = 0
    sip_tls_packets: int = 0
    likely_cause: str = ""


@dataclass
class Fleet:
    controller: str            # the HOST:PORT asked
    controller_id: str
    version: str
    storage: str
    active_calls: int
    recordings_written: int
    storage_errors: int
    decode_errors: int
    duplicates_dropped: int
    packets_in: int
    sensors: list[SensorInfo] = field(default_factory=list)
    bad_batches: int = 0       # batches refused by the link (malformed)
    registry_state: str = ""   # "" when the controller runs without etcd
    members: list[MemberInfo] = field(default_factory=list)
    storage_pending: int = 0
    storage_retries: int = 0
    authz_refused: int = 0     # RPCs refused by certificate role or site, all certificates
    tls_handshakes_failed: int = 0   # on the controller's ports (transport/handshakes.py)
    shard_id: str = ""         # a sharded controller: this shard's id and its ring (issue #12)
    ring: list[str] = field(default_factory=list)
    not_owned_packets: int = 0     # broadcast packets of other shards' calls, dropped
    ring_refused: int = 0          # sensor streams refused: routing over another shard list
    unsignalled_media: UnsignalledMediaInfo = field(default_factory=UnsignalledMediaInfo)
    # every shard of the ring and its address (empty when not sharded; not printed then)
    shard_members: list[ShardMemberInfo] = field(default_factory=list)


@dataclass
class CallInfo:
    id: str
    active: bool
    call_ids: list[str]
    from_uri: str
    to_uri: str
    status: str
    final_response: int | None
    end_reason: str
    started_at: str
    answered_at: str
    ended_at: str
    location: str
    packets: int               # active calls: packets so far


@dataclass
class CallDetail:
    summary: CallInfo
    call: dict[str, Any]       # call.json (or the live summary of an active call)
    files: list[str]


@dataclass
class DownloadedFile:
    name: str
    path: str
    size: int
    sha256: str


def _iso(ns: int) -> str:
    if not ns:
        return ""
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).isoformat(timespec="seconds") \
        .replace("+00:00", "Z")


def _sensor(s: admin_pb2.SensorStatus) -> SensorInfo:
    c = s.counters
    return SensorInfo(
        sensor_id=s.sensor_id, site=s.site, version=s.version, mode=s.mode, state=s.state,
        link=s.link, peer=s.peer, identity=s.identity, last_seen=_iso(s.last_seen_ns),
        last_heartbeat=_iso(s.last_heartbeat_ns), connected_since=_iso(s.connected_since_ns),
        captured_per_s=round(s.captured_per_s, 1), forwarded_per_s=round(s.forwarded_per_s, 1),
        captured=c.captured, forwarded=c.forwarded, filtered=c.filtered,
        decode_errors=c.decode_errors, kernel_drops=c.kernel_drops,
        interface_drops=c.interface_drops, backlog_drops=c.backlog_drops,
        queue_drops=c.queue_drops, send_queue=c.send_queue, reconnects=c.reconnects,
        packets_received=s.packets_received, duplicates_dropped=s.duplicates_dropped,
        error=s.error, registered=s.registered,
        sip_tls_flows=c.sip_tls_flows, sip_tls_packets=c.sip_tls_packets,
        sdp_endpoints_refused=c.sdp_endpoints_refused, media_not_rtp=c.media_not_rtp,
        clock_offset_ns=s.clock_offset_ns, clock_corrected=s.clock_corrected,
        packets_refused=s.packets_refused, heartbeats_refused=s.heartbeats_refused,
        merge=s.merge, merge_stalls=s.merge_stalls, merge_held=s.merge_held,
        clock_steps=s.clock_steps, clock_restamped=s.clock_restamped, outside_site=s.outside_site)


def _call(c: admin_pb2.CallSummary) -> CallInfo:
    return CallInfo(
        id=c.id, active=c.active, call_ids=list(c.call_ids), from_uri=c.from_uri, to_uri=c.to_uri,
        status=c.status, final_response=c.final_response or None, end_reason=c.end_reason,
        started_at=c.started_at, answered_at=c.answered_at, ended_at=c.ended_at,
        location=c.location, packets=c.packets)


def _one_line(text: str) -> str:
    return " ".join((text or "").split())


def _outcome_dicts(res: Any) -> list[dict]:
    return [{"recording_id": o.recording_id, "done": o.done, "what": o.what, "reason": o.reason}
            for o in res.outcomes]


class AdminClient:
    """`with AdminClient("host:7600", security) as admin: admin.fleet()`."""

    def __init__(self, target: str, security: Security, *,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.target = target
        self.security = security
        self.timeout_s = timeout_s
        self._channel = open_channel(target, security)
        self._stub = admin_pb2_grpc.AdminStub(self._channel)

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _error(self, exc: grpc.RpcError) -> AdminFailed:
        code, details = exc.code(), _one_line(exc.details())
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            if code is grpc.StatusCode.DEADLINE_EXCEEDED:
                details = f"no answer within {self.timeout_s:g} s"
            return AdminUnavailable(f"controller {self.target} unreachable: {details}")
        if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
            return AdminUnavailable(f"controller {self.target} refused us: {details}")
        if code is grpc.StatusCode.NOT_FOUND:
            return AdminNotFound(details)
        if code is grpc.StatusCode.INVALID_ARGUMENT:
            return AdminFailed(details)
        return AdminFailed(f"controller {self.target}: {code.name.lower()}: {details}")

    def _unary(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise self._error(exc) from None

    def fleet(self) -> Fleet:
        st = self._unary(self._stub.GetStatus, admin_pb2.StatusRequest())
        return Fleet(
            controller=self.target, controller_id=st.controller_id, version=st.version,
            storage=st.storage, active_calls=st.active_calls,
            recordings_written=st.recordings_written, storage_errors=st.storage_errors,
            decode_errors=st.decode_errors, duplicates_dropped=st.duplicates_dropped,
            packets_in=st.packets_in,
            sensors=sorted((_sensor(s) for s in st.sensors), key=lambda s: s.sensor_id),
            registry_state=st.registry_state, storage_pending=st.storage_pending,
            bad_batches=st.bad_batches, storage_retries=st.storage_retries,
            authz_refused=st.authz_refused, tls_handshakes_failed=st.tls_handshakes_failed,
            shard_id=st.shard_id, ring=list(st.ring), not_owned_packets=st.not_owned_packets,
            ring_refused=st.ring_refused,
            unsignalled_media=UnsignalledMediaInfo(
                flows=st.unsignalled_media.flows, packets=st.unsignalled_media.packets,
                ambiguous_packets=st.unsignalled_media.ambiguous_packets,
                sip_tls_flows=st.unsignalled_media.sip_tls_flows,
                sip_tls_packets=st.unsignalled_media.sip_tls_packets,
                likely_cause=st.unsignalled_media.likely_cause),
            members=sorted((MemberInfo(m.role, m.id, m.site, m.version, m.address, m.started_at)
                            for m in st.members), key=lambda m: (m.role, m.id)),
            shard_members=[ShardMemberInfo(m.shard_id, m.address) for m in st.shard_members])

    def calls_page(self, *, active_only: bool = False, limit: int = 0,
                   page_token: str = "") -> tuple[list[CallInfo], str]:
        """One page (at most `limit`, the server caps it at 1000) and the token of
        the next page ("" after the last)."""
        lst = self._unary(self._stub.ListCalls, admin_pb2.ListCallsRequest(
            active_only=active_only, limit=limit, page_token=page_token))
        return [_call(c) for c in lst.calls], lst.next_page_token

    def calls(self, *, active_only: bool = False, limit: int = 0) -> list[CallInfo]:
        """At most `limit` calls (0: every one), following the pages."""
        out: list[CallInfo] = []
        token = ""
        while True:
            want = limit - len(out) if limit else 0
            page, token = self.calls_page(active_only=active_only, limit=want, page_token=token)
            out += page
            if not token or not page or (limit and len(out) >= limit):
                return out[:limit] if limit else out

    def search(self, **fields: Any) -> dict[str, Any]:
        """One page of the call index (fields as admin.proto SearchRequest; None = unset)."""
        req = admin_pb2.SearchRequest(**{k: v for k, v in fields.items() if v is not None})
        res = self._unary(self._stub.SearchCalls, req)
        calls = []
        for c in res.calls:
            d = MessageToDict(c, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
            d["from"] = d.pop("from_uri", "")
            d["to"] = d.pop("to_uri", "")
            calls.append(d)
        return {"calls": calls, "total": res.total, "offset": res.offset, "limit": res.limit}

    def audit(self, *, since: str | None = None, limit: int = 100, offset: int = 0,
              recording_id: str | None = None) -> dict[str, Any]:
        """Audit entries, newest first, and the hash chain's verdict."""
        req = admin_pb2.AuditRequest(limit=limit, offset=offset)
        if since is not None:
            req.since = since
        if recording_id is not None:
            req.recording_id = recording_id
        res = self._unary(self._stub.ListAudit, req)
        entries = [{"seq": e.seq, "at": e.at, "actor": e.actor, "role": e.role, "action": e.action,
                    "recording_id": e.recording_id or None, "address": e.address,
                    "detail": json.loads(e.detail_json or "{}")} for e in res.entries]
        return {"entries": entries, "checked": res.checked,
                "verified": res.broken_at == 0, "broken_at": res.broken_at or None}

    def hold(self, *, ids: list[str] = (), number: str | None = None, since: str | None = None,
             until: str | None = None, reason: str = "", release: bool = False) -> list[dict]:
        req = admin_pb2.HoldRequest(ids=list(ids), reason=reason, release=release)
        for k, v in (("number", number), ("since", since), ("until", until)):
            if v is not None:
                setattr(req, k, v)
        return _outcome_dicts(self._unary(self._stub.HoldRecordings, req))

    def erase(self, *, ids: list[str] = (), number: str | None = None, reason: str = "") -> list[dict]:
        req = admin_pb2.EraseRequest(ids=list(ids), reason=reason)
        if number is not None:
            req.number = number
        return _outcome_dicts(self._unary(self._stub.EraseRecordings, req))

    def verify(self, *, ids: list[str] = (), since: str | None = None) -> dict:
        req = admin_pb2.VerifyRequest(ids=list(ids))
        if since is not None:
            req.since = since
        res = self._unary(self._stub.VerifyRecordings, req)
        return {"checked": res.checked, "failed": res.failed,
                "checks": [{"recording_id": c.recording_id, "ok": c.ok, "problems": list(c.problems),
                            "key_id": c.key_id} for c in res.checks]}

    def call(self, recording_id: str) -> CallDetail:
        d = self._unary(self._stub.GetCall, admin_pb2.GetCallRequest(id=recording_id))
        try:
            body = json.loads(d.call_json) if d.call_json else {}
        except ValueError:
            raise AdminFailed(f"recording {recording_id}: the controller sent invalid JSON") from None
        return CallDetail(summary=_call(d.summary), call=body, files=list(d.files))

    def download(self, recording_id: str, out_dir: Path) -> list[DownloadedFile]:
        """Writes every file of a stored recording into `out_dir/<id>/` (each file
        written whole to a temporary name, then renamed)."""
        detail = self.call(recording_id)
        if detail.summary.active:
            raise AdminFailed(f"recording {recording_id} is still active; nothing stored yet")
        folder = Path(out_dir) / recording_id
        folder.mkdir(parents=True, exist_ok=True)
        return [self._fetch(recording_id, name, folder) for name in detail.files]

    def _fetch(self, recording_id: str, name: str, folder: Path) -> DownloadedFile:
        path = folder / name
        tmp = folder / f".{name}.part"
        digest, size, expected = hashlib.sha256(), 0, None
        try:
            with open(tmp, "wb") as f:
                stream = self._stub.GetRecordingFile(
                    admin_pb2.GetRecordingFileRequest(id=recording_id, name=name),
                    timeout=DOWNLOAD_TIMEOUT_S)
                for chunk in stream:
                    if chunk.offset != size:
                        raise AdminFailed(f"{name}: chunk at offset {chunk.offset}, expected {size}")
                    expected = chunk.size
                    f.write(chunk.data)
                    digest.update(chunk.data)
                    size += len(chunk.data)
                f.flush()
                os.fsync(f.fileno())
            if expected is not None and size != expected:
                raise AdminFailed(f"{name}: got {size} bytes of {expected}")
            os.replace(tmp, path)
        except grpc.RpcError as exc:
            raise self._error(exc) from None
        except OSError as exc:
            raise AdminFailed(f"cannot write {path}: {exc.strerror or exc}") from None
        finally:
            if tmp.exists():
                tmp.unlink()
        return DownloadedFile(name=name, path=str(path), size=size, sha256=digest.hexdigest())


# -- a sharded controller: one view over every shard (issue #12) ---------------

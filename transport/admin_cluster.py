"""One view of a sharded controller: every shard's Admin API asked in parallel.

`Cluster` wraps the `AdminClient` of the shard a command was given and asks
the others it names (Status.shard_members): fleet, calls, a call or its files
wherever they are, and erasure on every shard. The merge rules (each sensor
once, totals) are here too.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transport.admin_client import (
    AdminClient, AdminFailed, AdminNotFound, AdminUnavailable, CallDetail, CallInfo, DownloadedFile,
    Fleet, MemberInfo, SensorInfo, ShardMemberInfo, UnsignalledMediaInfo, _one_line,
)

__all__ = ["Cluster", "ClusterFleet", "ClusterSensorInfo", "SensorShare", "ShardInfo", "merge_sensor"]


# Each shard of `spanrec controller --shards N` answers for its own calls and
# streams only; its Status names every shard (Status.shard_members).  `Cluster`
# asks them all in parallel, each on its own channel with the asked client's
# security and timeout, so a shard that does not answer costs one timeout and
# is reported as unreachable, never a hang.

@dataclass
class SensorShare:
    """One shard's view of a sensor's stream to it."""
    shard_id: str
    state: str
    link: str
    packets_received: int      # what this shard received of the sensor
    forwarded: int             # what the sensor sent on this stream
    forwarded_per_s: float
    duplicates_dropped: int


@dataclass
class ClusterSensorInfo(SensorInfo):
    """A sensor once, whichever shards it streams to: capture counters taken
    once (every stream carries the same), stream counters summed."""
    shards: list[SensorShare] = field(default_factory=list)


@dataclass
class ShardInfo:
    shard_id: str
    address: str
    state: str                 # up / unreachable
    error: str = ""            # why it is unreachable (one line)
    controller_id: str = ""
    version: str = ""
    sensors: int = 0           # sensor streams connected to it now
    active_calls: int = 0      # its share of the calls
    recordings_written: int = 0
    packets_in: int = 0
    packets_per_s: float = 0.0     # its sensor streams' forwarded/s, summed
    duplicates_dropped: int = 0
    not_owned_packets: int = 0     # broadcast packets of other shards' calls, dropped
    decode_errors: int = 0
    bad_batches: int = 0
    ring_refused: int = 0
    storage_errors: int = 0
    storage_pending: int = 0
    storage_retries: int = 0
    authz_refused: int = 0
    tls_handshakes_failed: int = 0


#: ShardInfo counters the cluster view adds up (its totals)
SHARD_TOTALS = ("active_calls", "recordings_written", "packets_in", "packets_per_s",
                "duplicates_dropped", "not_owned_packets", "decode_errors", "bad_batches",
                "ring_refused", "storage_errors", "storage_pending", "storage_retries",
                "authz_refused", "tls_handshakes_failed")


@dataclass
class ClusterFleet:
    controller: str            # the HOST:PORT asked
    shard_id: str              # the shard that answered there
    ring: list[str]
    storage: str
    shards: list[ShardInfo]
    sensors: list[ClusterSensorInfo]
    totals: dict[str, float]   # SHARD_TOTALS over the shards that answered
    unreachable: list[str]     # shard ids that did not answer
    registry_state: str = ""
    members: list[MemberInfo] = field(default_factory=list)
    unsignalled_media: UnsignalledMediaInfo = field(default_factory=UnsignalledMediaInfo)


# A sensor's capture counters are the same on every stream (sensor/pipeline.py
# `stats`): the highest (the freshest heartbeat's) is taken.  Stream and
# per-shard counters add up.  Events every stream sees once each: the highest.
_SENSOR_ONCE = ("captured", "filtered", "decode_errors", "kernel_drops", "interface_drops",
                "backlog_drops", "sip_tls_flows", "sip_tls_packets", "sdp_endpoints_refused",
                "media_not_rtp", "captured_per_s", "heartbeats_refused", "merge_stalls",
                "clock_steps")
_SENSOR_SUM = ("forwarded", "forwarded_per_s", "queue_drops", "send_queue", "reconnects",
               "packets_received", "duplicates_dropped", "clock_corrected", "packets_refused",
               "outside_site", "clock_restamped", "merge_held")
# the state of a sensor over its streams: the first of these any stream has
_STATE_ORDER = ("gone", "stale", "up", "registered", "done")


def merge_sensor(copies: list[tuple[str, SensorInfo]]) -> ClusterSensorInfo:
    """One sensor from the (shard id, SensorInfo) of every shard that knows it."""
    fresh = max(copies, key=lambda c: (c[1].last_heartbeat or c[1].last_seen, c[0]))[1]
    out = ClusterSensorInfo(**{f.name: getattr(fresh, f.name)
                               for f in SensorInfo.__dataclass_fields__.values()})
    infos = [s for _, s in copies]
    for name in _SENSOR_ONCE:
        setattr(out, name, max(getattr(s, name) for s in infos))
    for name in _SENSOR_SUM:
        setattr(out, name, sum(getattr(s, name) for s in infos))
    out.forwarded_per_s = round(out.forwarded_per_s, 1)
    states = {s.state for s in infos}
    out.state = next((st for st in _STATE_ORDER if st in states), fresh.state)
    links = {s.link for s in infos}
    out.link = links.pop() if len(links) == 1 else "partial"
    out.last_seen = max(s.last_seen for s in infos)
    out.registered = any(s.registered for s in infos)
    out.error = next((s.error for s in infos if s.error), "")
    out.merge = ", ".join(sorted({s.merge for s in infos if s.merge}))
    out.shards = [SensorShare(sid, s.state, s.link, s.packets_received, s.forwarded,
                              s.forwarded_per_s, s.duplicates_dropped) for sid, s in copies]
    return out


def _shard_info(member: ShardMemberInfo, f: Fleet) -> ShardInfo:
    return ShardInfo(
        shard_id=member.shard_id, address=member.address, state="up",
        controller_id=f.controller_id, version=f.version,
        sensors=sum(1 for s in f.sensors if s.link == "connected"),
        active_calls=f.active_calls, recordings_written=f.recordings_written,
        packets_in=f.packets_in, packets_per_s=round(sum(s.forwarded_per_s for s in f.sensors), 1),
        duplicates_dropped=f.duplicates_dropped, not_owned_packets=f.not_owned_packets,
        decode_errors=f.decode_errors, bad_batches=f.bad_batches, ring_refused=f.ring_refused,
        storage_errors=f.storage_errors, storage_pending=f.storage_pending,
        storage_retries=f.storage_retries, authz_refused=f.authz_refused,
        tls_handshakes_failed=f.tls_handshakes_failed)


def _in_order(calls: list[CallInfo]) -> list[CallInfo]:
    """As one controller lists them: active calls by start (then Call-ID), then
    stored recordings, the most recently ended first."""
    active = sorted((c for c in calls if c.active),
                    key=lambda c: (c.started_at, c.call_ids[0] if c.call_ids else c.id))
    stored = sorted((c for c in calls if not c.active),
                    key=lambda c: (c.ended_at or c.started_at, c.id), reverse=True)
    return active + stored


class Cluster:
    """Every shard of the controller `admin` talks to (Status.shard_members).
    With a controller that is not sharded, it is that controller alone."""

    def __init__(self, admin: AdminClient, status: Fleet | None = None) -> None:
        self.admin = admin
        self._status = status

    def status(self) -> Fleet:
        if self._status is None:
            self._status = self.admin.fleet()
        return self._status

    @property
    def members(self) -> list[ShardMemberInfo]:
        return self.status().shard_members

    def _each(self, members: list[ShardMemberInfo], fn: Any) -> dict[str, Any]:
        """shard id -> fn(client of that shard), or the AdminFailed it raised; in
        parallel, each RPC bounded by the asked client's timeout."""
        asked = self.status().shard_id

        def one(m: ShardMemberInfo) -> Any:
            if m.shard_id == asked:
                return fn(self.admin)
            if not m.address:
                return AdminUnavailable(f"shard {m.shard_id} unreachable: the ring has no address for it")
            try:
                client = AdminClient(m.address, self.admin.security, timeout_s=self.admin.timeout_s)
            except Exception as exc:  # noqa: BLE001 - a bad address is that shard's failure
                return AdminUnavailable(f"controller {m.address} unreachable: {_one_line(str(exc))}")
            try:
                return fn(client)
            except AdminFailed as exc:
                return exc
            finally:
                client.close()

        def guarded(m: ShardMemberInfo) -> Any:
            try:
                return one(m)
            except AdminFailed as exc:
                return exc

        if not members:
            return {}
        with ThreadPoolExecutor(max_workers=min(len(members), 32)) as pool:
            return dict(zip((m.shard_id for m in members), pool.map(guarded, members)))

    def erase(self, *, ids: list[str] = (), number: str | None = None,
              reason: str = "") -> tuple[list[dict], list[str]]:
        """Erase through the asked shard (storage and the index), then ask every
        other shard to erase what it still holds of the erased recordings (a
        version waiting in its outbox would otherwise be uploaded later):
        (outcomes - another shard's only where it found something -, shards
        that did not answer)."""
        found = self.admin.erase(ids=list(ids), number=number, reason=reason)
        done = [o["recording_id"] for o in found if o["done"]]
        asked = self.status().shard_id
        others = [m for m in self.members if m.shard_id != asked]
        missing: list[str] = []
        if not done or not others:
            return found, missing
        got = self._each(others, lambda c: c.erase(ids=done, reason=reason))
        for sid, res in got.items():
            if isinstance(res, Exception):
                missing.append(sid)
                continue
            for o in res:
                if o["done"]:
                    found.append({**o, "what": f"{o['what']} on shard {sid}",
                                  "reason": o["reason"] or "it still held a copy (outbox)"})
                elif o["what"] != "not found":
                    found.append({**o, "reason": f"shard {sid}: {o['reason']}"})
        return found, missing

    def fleet(self) -> ClusterFleet:
        first = self.status()
        got = self._each(self.members, lambda c: first if c is self.admin else c.fleet())
        shards, answered, unreachable = [], [], []
        for m in self.members:
            r = got[m.shard_id]
            if isinstance(r, Fleet):
                shards.append(_shard_info(m, r))
                answered.append((m.shard_id, r))
            else:
                shards.append(ShardInfo(m.shard_id, m.address, "unreachable", error=str(r)))
                unreachable.append(m.shard_id)
        by_sensor: dict[str, list[tuple[str, SensorInfo]]] = {}
        for sid, f in answered:
            for s in f.sensors:
                by_sensor.setdefault(s.sensor_id, []).append((sid, s))
        um = [f.unsignalled_media for _, f in answered]
        return ClusterFleet(
            controller=self.admin.target, shard_id=first.shard_id, ring=list(first.ring),
            storage=first.storage, shards=shards,
            sensors=[merge_sensor(by_sensor[k]) for k in sorted(by_sensor)],
            totals={k: (round(sum(getattr(s, k) for s in shards), 1) if k == "packets_per_s"
                        else sum(getattr(s, k) for s in shards)) for k in SHARD_TOTALS},
            unreachable=unreachable, registry_state=first.registry_state, members=first.members,
            unsignalled_media=UnsignalledMediaInfo(
                flows=sum(u.flows for u in um), packets=sum(u.packets for u in um),
                ambiguous_packets=sum(u.ambiguous_packets for u in um),
                sip_tls_flows=max(u.sip_tls_flows for u in um),      # the sensors' counters:
                sip_tls_packets=max(u.sip_tls_packets for u in um),  # the same on every shard
                likely_cause=next((u.likely_cause for u in um if u.likely_cause), "")))

    def calls(self, *, active_only: bool = False, limit: int = 0
              ) -> tuple[list[CallInfo], list[str]]:
        """Every shard's calls (each followed over its pages), merged in one
        controller's order, at most `limit`; and the shards that did not answer.
        Raises the asked shard's error when no shard answered."""
        if not self.members:
            return self.admin.calls(active_only=active_only, limit=limit), []
        got = self._each(self.members, lambda c: c.calls(active_only=active_only, limit=limit))
        failed = {sid: r for sid, r in got.items() if isinstance(r, AdminFailed)}
        if len(failed) == len(got):
            raise failed.get(self.status().shard_id) or next(iter(failed.values()))
        seen: dict[str, CallInfo] = {}
        for r in got.values():
            if not isinstance(r, AdminFailed):
                for c in r:
                    if c.id not in seen or (c.active and not seen[c.id].active):
                        seen[c.id] = c
        merged = _in_order(list(seen.values()))
        return (merged[:limit] if limit else merged), sorted(failed)

    def locate(self, recording_id: str) -> tuple[ShardMemberInfo | None, CallDetail]:
        """The call on the shard asked, else on the first other shard that has it
        (active there, or stored): (that shard, None for the one asked; its detail)."""
        try:
            return None, self.admin.call(recording_id)
        except AdminNotFound as miss:
            try:
                members = self.members
            except AdminFailed:
                raise miss from None
            asked = self.status().shard_id
            others = [m for m in members if m.shard_id != asked]
            if not others:
                raise
            got = self._each(others, lambda c: c.call(recording_id))
            for m in others:
                if isinstance(got[m.shard_id], CallDetail):
                    return m, got[m.shard_id]
            down = [f"{sid}: {r}" for sid, r in got.items() if not isinstance(r, AdminNotFound)]
            if down:
                raise AdminFailed(f"{miss}; not on any shard that answered, and "
                                  f"{len(down)} did not ({'; '.join(down)})") from None
            raise miss from None

    def call(self, recording_id: str) -> CallDetail:
        return self.locate(recording_id)[1]

    def download(self, recording_id: str, out_dir: Path) -> list[DownloadedFile]:
        """The files of a stored recording, from the shard that has it."""
        where, detail = self.locate(recording_id)
        if where is None:
            return self.admin.download(recording_id, out_dir)
        with AdminClient(where.address, self.admin.security, timeout_s=self.admin.timeout_s) as c:
            return c.download(recording_id, out_dir)

"""Controller shards in etcd (issue #12): their records and the ring built from them.

A shard process started with ``--etcd`` registers ``<prefix>shards/<shard_id>``
on the lease of its member record (registry/etcd.py keeps it alive, writes it
again under a new lease after an etcd outage, and it vanishes with the lease)::

    {"shard_id": "A-0", "address": "10.0.0.5:7600", "state": "active",
     "controller_id": "A-0", "version": "0.1.0"}

``state`` is ``active`` or ``leaving`` (SIGTERM: it owns no new call and
drains the ones it has); a shard whose drain is over writes ``drained: true``
and deletes its record.  Records are validated when read (a bad one is logged,
counted and ignored), like member records (registry/schema.py).

Sensors and shards turn the records into the same membership
(`ShardMembership`), with the same rules, so both sides build the same `Ring`:

* a record present: the shard, ``active`` or ``leaving`` as it says;
* a record that vanished after ``drained: true``: removed at once (its calls
  are over);
* a record that vanished otherwise (lease expired: killed, machine down, or a
  ``--keep-calls-on-stop`` restart): kept for ``grace_s`` as *leaving* (it owns
  no new call, its calls in progress still go to it: the sensor's spool keeps
  them until it is back with the same id and state folder), then removed with
  a warning (its calls' keys are placed again).
"""
from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from etcd3aio import Etcd3Client, prefix_range_end
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator

from .members import normalize_prefix
from .ring import ACTIVE, LEAVING, Shard
from .schema import SchemaError, check_address

log = logging.getLogger("spanrec.registry")

__all__ = ["ShardRecord", "ShardMembership", "ShardsWatch", "shards_prefix", "shard_key",
           "DEFAULT_GRACE_S"]

DEFAULT_GRACE_S = 300.0
_DELETE = 1  # mvccpb.Event.EventType.DELETE


def shards_prefix(prefix: str) -> str:
    return normalize_prefix(prefix) + "shards/"


def shard_key(prefix: str, shard_id: str) -> str:
    return shards_prefix(prefix) + shard_id


class _ShardSchema(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    shard_id: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")
    address: str = Field(min_length=3, max_length=262)
    state: Literal["active", "leaving"]
    controller_id: str = Field("", max_length=128)
    version: str = Field("", max_length=64)
    drained: StrictBool = False

    _addr = field_validator("address")(lambda cls, v: check_address(v))


@dataclass(frozen=True)
class ShardRecord:
    shard_id: str
    address: str
    state: str = ACTIVE
    controller_id: str = ""
    version: str = ""
    drained: bool = False     # written once, just before the record is deleted after a drain

    def to_json(self) -> bytes:
        out: dict[str, Any] = {"shard_id": self.shard_id, "address": self.address, "state": self.state,
                               "controller_id": self.controller_id, "version": self.version}
        if self.drained:
            out["drained"] = True
        return json.dumps(out, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> ShardRecord:
        """Checked; ``ValueError`` (SchemaError, JSONDecodeError) when it is not a shard record."""
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise SchemaError("shard record is not a JSON object")
        try:
            d = _ShardSchema.model_validate(data).model_dump()
        except ValidationError as exc:
            err = exc.errors()[0]
            raise SchemaError(f"{'.'.join(str(p) for p in err['loc']) or 'value'}: {err['msg']}") from None
        return cls(**d)

    def shard(self) -> Shard:
        return Shard(self.shard_id, self.address, LEAVING if self.state == LEAVING or self.drained else ACTIVE)


class ShardMembership:
    """The shards of the ring from the records seen (pure; not thread-safe; time given).

    ``version`` grows with every change of `shards()`; a grace period running
    out is a change too (seen by the next `shards(now)`)."""

    def __init__(self, grace_s: float = DEFAULT_GRACE_S) -> None:
        self.grace_s = grace_s
        self._present: dict[str, ShardRecord] = {}
        self._absent: dict[str, tuple[ShardRecord, float]] = {}   # vanished: record, since
        self.version = 0
        self.expired = 0        # shards removed after their grace period
        self.drained = 0        # shards removed at once after their drain

    def put(self, rec: ShardRecord, now: float) -> None:
        back = self._absent.pop(rec.shard_id, None)
        if back is not None:
            log.info("registry: shard %s is back (%s, after %.0f s)", rec.shard_id, rec.address,
                     now - back[1])
        if back is not None or self._present.get(rec.shard_id) != rec:
            if rec.shard_id not in self._present and back is None:
                log.info("registry: shard %s joined (%s, %s)", rec.shard_id, rec.address, rec.state)
            self._present[rec.shard_id] = rec
            self.version += 1

    def delete(self, shard_id: str, now: float) -> None:
        rec = self._present.pop(shard_id, None)
        if rec is None:
            return
        self.version += 1
        if rec.drained or self.grace_s <= 0:
            self.drained += rec.drained
            log.info("registry: shard %s left after its drain: removed from the ring", shard_id)
            return
        self._absent[shard_id] = (rec, now)
        log.warning("registry: shard %s (%s) vanished from etcd (lease expired); its calls in "
                    "progress still go to it for %g s (no new call), waiting for it to come back",
                    shard_id, rec.address, self.grace_s)

    def snapshot(self, records: dict[str, ShardRecord], now: float) -> None:
        for sid in [s for s in self._present if s not in records]:
            self.delete(sid, now)
        for rec in records.values():
            self.put(rec, now)

    def expire(self, now: float) -> None:
        for sid, (rec, since) in list(self._absent.items()):
            if now - since >= self.grace_s:
                del self._absent[sid]
                self.version += 1
                self.expired += 1
                log.warning("registry: shard %s (%s) did not come back within %g s: removed from the "
                            "ring; the calls it had are placed on other shards", sid, rec.address,
                            self.grace_s)

    def next_expiry(self) -> float | None:
        return min((since + self.grace_s for _, since in self._absent.values()), default=None)

    def shards(self, now: float) -> list[Shard]:
        """Every shard of the ring, sorted by id: present ones as their record says,
        absent ones (in their grace period) as leaving."""
        self.expire(now)
        out = [r.shard() for r in self._present.values()]
        out += [Shard(r.shard_id, r.address, LEAVING) for r, _ in self._absent.values()]
        return sorted(out, key=lambda s: s.shard_id)

    def records(self) -> dict[str, ShardRecord]:
        return dict(self._present)


class ShardsWatch:
    """Watches ``<prefix>shards/`` (a registry Watcher) and keeps a `ShardMembership`.

    Thread-safe: ``current()`` from any thread gives (version, shards); the last
    known state is kept while etcd is away."""

    def __init__(self, prefix: str, grace_s: float = DEFAULT_GRACE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.key = shards_prefix(prefix)
        self.membership = ShardMembership(grace_s)
        self._clock = clock
        self._cond = threading.Condition()
        self._synced = False
        self._next_expiry: float | None = None
        self._cache: tuple[int, list[Shard]] = (0, [])
        self.refused = 0

    def __repr__(self) -> str:
        return f"ShardsWatch({self.key!r})"

    # -- any thread ------------------------------------------------------------------
    def current(self) -> tuple[int, list[Shard]]:
        """(version, shards sorted by id); the version changes whenever the shards do."""
        with self._cond:
            m = self.membership
            if self._next_expiry is not None and self._clock() >= self._next_expiry:
                m.expire(self._clock())
                self._next_expiry = m.next_expiry()
            if self._cache[0] != m.version:
                self._cache = (m.version, m.shards(self._clock()))
            return self._cache

    def ids(self) -> tuple[str, ...]:
        return tuple(s.shard_id for s in self.current()[1])

    def records(self) -> dict[str, ShardRecord]:
        with self._cond:
            return self.membership.records()

    def wait_synced(self, timeout: float | None = None) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._synced, timeout)

    def wait_for(self, cond: Callable[[list[Shard]], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if cond(self.membership.shards(self._clock())):
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.2))

    # -- registry loop -----------------------------------------------------------------
    def _parse(self, key: str, raw: bytes) -> ShardRecord | None:
        try:
            rec = ShardRecord.from_json(raw)
            if key[len(self.key):] != rec.shard_id:
                raise ValueError(f"it names shard {rec.shard_id}")
            return rec
        except ValueError as exc:
            with self._cond:
                self.refused += 1
            log.warning("registry: refusing shard record at %s: %s", key, str(exc)[:200])
            return None

    def _changed(self, fn: Callable[[float], None]) -> None:
        with self._cond:
            fn(self._clock())
            self._next_expiry = self.membership.next_expiry()
            self._synced = True
            self._cond.notify_all()

    async def run(self, client: Etcd3Client, op_timeout: float) -> None:
        from .watch import watch_stream
        end = prefix_range_end(self.key)
        resp = await client.kv.get(self.key, end, timeout=op_timeout)
        snapshot: dict[str, ShardRecord] = {}
        for kv in resp.kvs:
            rec = self._parse(kv.key.decode(), kv.value)
            if rec is not None:
                snapshot[rec.shard_id] = rec
        self._changed(lambda now: self.membership.snapshot(snapshot, now))
        stream = watch_stream(client, self.key, end, resp.header.revision + 1)
        async with contextlib.aclosing(stream):
            async for wr in stream:
                if wr.canceled or wr.compact_revision:
                    return  # the core restarts us, which re-reads
                for ev in wr.events:
                    key = ev.kv.key.decode()
                    if ev.type == _DELETE:
                        sid = key[len(self.key):]
                        self._changed(lambda now, sid=sid: self.membership.delete(sid, now))
                    else:
                        rec = self._parse(key, ev.kv.value)
                        if rec is not None:
                            self._changed(lambda now, rec=rec: self.membership.put(rec, now))

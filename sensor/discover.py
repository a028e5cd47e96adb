"""Shards learnt from one controller address (issue #12), without etcd.

`spanrec controller` runs one shard per core by default, so a sensor given one
controller address (`--controller HOST:PORT`, the install script's setting)
may be talking to one shard of several. It asks that controller
(`SensorLink.Members`) which shards there are, before it captures, and again
every `interval_s` while it runs:

* no members (one controller, or an older controller answering
  UNIMPLEMENTED): the sensor sends everything to it, as ever;
* two or more: the sensor routes each call to the shard that owns it
  (sensor/route.py), over the same ring the shards build, with their leg
  headers; a later change (a controller restarted with another shard count)
  is applied like an etcd membership change (`ShardedSender.sync`).

When the controller does not answer at start (down, restarting), a live
sensor uses the member list it last learnt, kept in its spool folder
(`<spool_dir>/<sensor_id>/members.json`); without one it starts towards the
address alone and spools. A sensor that learns only later that the
controller is sharded exits with a clear error (the service manager restarts
it; what it spooled is routed then: sensor/pipeline.py `reroute_stranded`).
"""
from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

import grpc

from proto import sensor_pb2, sensor_pb2_grpc
from registry.ring import ACTIVE, Shard, ShardListError, parse_members

log = logging.getLogger("spanrec.sensor")

_WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]"}
MEMBERS_FILE = "members.json"


class SeedMembership:
    """The member list of the controller at `address` (thread-safe `current()`)."""

    def __init__(self, address: str, credentials: grpc.ChannelCredentials | None, *,
                 interval_s: float = 10.0, timeout_s: float = 3.0,
                 saved: Path | None = None) -> None:
        self.address = address
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.saved = saved
        self.leg_headers: tuple[str, ...] = ()
        self.dynamic = False
        self._credentials = credentials
        self._lock = threading.Lock()
        self._version = 0
        self._shards: list[Shard] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"SeedMembership({self.address})"

    # -- asking ------------------------------------------------------------
    def _channel(self) -> grpc.Channel:
        if self._credentials is not None:
            return grpc.secure_channel(self.address, self._credentials)
        return grpc.insecure_channel(self.address)

    def ask(self, timeout_s: float | None = None) -> list[Shard] | None:
        """The controller's shards now ([] for one controller), None when it
        did not answer. A malformed answer counts as no answer (logged)."""
        with self._channel() as channel:
            try:
                reply = sensor_pb2_grpc.SensorLinkStub(channel).Members(
                    sensor_pb2.MembersRequest(), timeout=timeout_s or self.timeout_s,
                    wait_for_ready=True)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                    return []            # a controller from before sharding: one controller
                return None
        try:
            shards = self._shards_of(reply)
        except ShardListError as exc:
            log.warning("controller sent an unusable shard list; ignored",
                        extra={"controller": self.address, "error": str(exc)})
            return None
        self.leg_headers = tuple(h.lower() for h in reply.leg_headers)
        self.dynamic = reply.dynamic
        return shards

    def _shards_of(self, reply: sensor_pb2.RingMembers) -> list[Shard]:
        """Members with a wildcard host are reached on the host of `address`."""
        seed_host = self.address.rpartition(":")[0]
        entries = []
        for m in reply.members:
            host, _, port = m.address.rpartition(":")
            addr = f"{seed_host}:{port}" if host in _WILDCARD_HOSTS else m.address
            entries.append((m.shard_id, addr, m.state))
        return _members(entries)

    # -- at start ----------------------------------------------------------
    def first(self, timeout_s: float) -> list[Shard]:
        """The member list to start with: the controller's answer (saved for
        the next start), else the one saved last time, else [] (one controller)."""
        shards = self.ask(timeout_s)
        if shards is not None:
            self._set(shards)
            self._save(shards)
            return shards
        shards = self._load()
        if shards:
            log.warning("controller did not answer; routing over the shards it had last time",
                        extra={"controller": self.address,
                               "shards": {s.shard_id: s.address for s in shards}})
            self._set(shards)
        return shards

    def _set(self, shards: list[Shard]) -> bool:
        with self._lock:
            if [(s.shard_id, s.address, s.state) for s in shards] == \
                    [(s.shard_id, s.address, s.state) for s in self._shards]:
                return False
            self._shards = list(shards)
            self._version += 1
            return True

    def _save(self, shards: list[Shard]) -> None:
        if self.saved is None:
            return
        data = {"controller": self.address, "leg_headers": list(self.leg_headers),
                "members": [{"shard_id": s.shard_id, "address": s.address, "state": s.state}
                            for s in shards]}
        tmp = self.saved.with_suffix(".tmp")
        try:
            self.saved.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh)
            os.replace(tmp, self.saved)
        except OSError as exc:
            log.warning("cannot keep the controller's shard list",
                        extra={"path": str(self.saved), "error": exc.strerror or str(exc)})

    def _load(self) -> list[Shard]:
        if self.saved is None:
            return []
        try:
            data = json.loads(self.saved.read_text())
            if data.get("controller") != self.address:
                return []
            self.leg_headers = tuple(str(h).lower() for h in data.get("leg_headers", ()))
            return _members([(m["shard_id"], m["address"], m.get("state"))
                             for m in data["members"]])
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError, AttributeError, ShardListError) as exc:
            log.warning("ignoring an unreadable saved shard list",
                        extra={"path": str(self.saved), "error": str(exc)})
            return []

    # -- while running -----------------------------------------------------
    def current(self) -> tuple[int, list[Shard]]:
        """(version, shards): the version changes whenever the list does."""
        with self._lock:
            return self._version, list(self._shards)

    def ids(self) -> tuple[str, ...]:
        return tuple(s.shard_id for s in self.current()[1])

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="spanrec-members", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            shards = self.ask()
            # no answer keeps the last list; an empty one (one controller now) too:
            # the shards' Senders keep their links until a list with members comes
            if shards and self._set(shards):
                self._save(shards)
                log.info("controller shard list changed", extra={
                    "controller": self.address,
                    "shards": {s.shard_id: s.address for s in shards}})
            elif shards == [] and self.current()[1]:
                log.warning("the controller answers as one controller now; keeping the shard "
                            "list until the sensor restarts", extra={"controller": self.address})


def _members(entries: list[tuple[str, str, str | None]]) -> list[Shard]:
    """(shard id, HOST:PORT, state) checked as any member list is
    (`parse_members`: ShardListError when malformed), sorted by id."""
    if not entries:
        return []
    states = {sid: state or ACTIVE for sid, _addr, state in entries}
    return sorted((Shard(s.shard_id, s.address, states[s.shard_id])
                   for s in parse_members(",".join(f"{sid}={addr}" for sid, addr, _ in entries))),
                  key=lambda s: s.shard_id)

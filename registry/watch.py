"""Watchers: the members of the fleet, the controller to dial, runtime config.

Each watcher runs on the registry's event loop (``run(client, op_timeout)``:
read the key or prefix, then watch from the next revision; the core restarts
it after every reconnection, so it re-reads and reports what changed while
etcd was away).  What it knows is kept when etcd is down, and every accessor
is safe to call from any thread.  Callbacks run on the registry thread: they
must be quick and must not block (hand work to a queue or a loop).
"""
from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Generic, TypeVar

import grpc.aio
from etcd3aio import Etcd3Client, prefix_range_end
from etcd3aio._protobuf import WatchCreateRequest, WatchRequest

from .members import EventKind, MemberEvent, MemberRecord, members_prefix
from .schema import check_config

log = logging.getLogger("spanrec.registry")
T = TypeVar("T")
_UNSET: Any = object()
_DELETE = 1  # mvccpb.Event.EventType.DELETE


async def watch_stream(client: Etcd3Client, key: str, range_end: bytes | None, start_revision: int
                       ) -> AsyncIterator[Any]:
    """One etcd watch as an async iterator of ``WatchResponse``; errors are raised, not retried.

    ``client.watch.watch()`` is not used: it retries forever by itself (the
    session already does) and feeds grpc from a never-ending request generator
    that, once the call is cancelled, leaves "Task was destroyed but it is
    pending" and "aclose(): asynchronous generator is already running" errors
    in the log.  Writing the one create request on the call has no generator.
    """
    create = WatchCreateRequest(key=key.encode(), range_end=range_end or b"", start_revision=start_revision)
    call = client.watch._stub.Watch(metadata=client.watch._metadata or None)  # noqa: SLF001 - etcd3aio 0.3
    try:
        await call.write(WatchRequest(create_request=create))
        while True:
            resp = await call.read()
            if resp is grpc.aio.EOF:
                return
            yield resp
    finally:
        call.cancel()


class _Notifier(Generic[T]):
    """Thread-safe value + version, waiters and callbacks."""

    def __init__(self, initial: T) -> None:
        self._cond = threading.Condition()
        self._value = initial
        self._version = 0
        self._synced = False
        self._callbacks: list[Callable[[T], None]] = []

    def _publish(self, value: T) -> None:
        with self._cond:
            self._value = value
            self._version += 1
            self._synced = True
            self._cond.notify_all()
            callbacks = list(self._callbacks)
        for cb in callbacks:
            try:
                cb(value)
            except Exception:  # noqa: BLE001
                log.exception("registry: change callback failed")

    def _mark_synced(self) -> None:
        with self._cond:
            self._synced = True
            self._cond.notify_all()

    def on_change(self, callback: Callable[[T], None]) -> None:
        with self._cond:
            self._callbacks.append(callback)

    def wait_synced(self, timeout: float | None = None) -> bool:
        """True once the first read from etcd was done (False on timeout)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._synced, timeout)


class MembersWatch(_Notifier[MemberEvent]):
    """Every member record under ``<prefix>members/`` (or one role), as join/update/leave."""

    def __init__(self, prefix: str, role: str | None = None) -> None:
        super().__init__(None)  # type: ignore[arg-type]
        self.key = members_prefix(prefix, role)
        self._root = members_prefix(prefix)
        self._members: dict[str, MemberRecord] = {}
        self.refused = 0  # records refused by the schema (logged each)

    def __repr__(self) -> str:
        return f"MembersWatch({self.key!r})"

    def members(self) -> dict[str, MemberRecord]:
        """``{"sensor/s1": MemberRecord, ...}``: the last known members."""
        with self._cond:
            return dict(self._members)

    def subscribe(self, maxsize: int = 10000) -> queue.Queue[MemberEvent]:
        """A queue that receives every event from now on (dropped when full)."""
        q: queue.Queue[MemberEvent] = queue.Queue(maxsize)

        def put(ev: MemberEvent) -> None:
            try:
                q.put_nowait(ev)
            except queue.Full:
                log.warning("registry: event queue full, dropping %s %s", ev.kind.value, ev.key)

        self.on_change(put)
        return q

    def _parse(self, key: str, raw: bytes) -> MemberRecord | None:
        try:
            rec = MemberRecord.from_json(raw)
            if self._name(key) != f"{rec.role}/{rec.id}":
                raise ValueError(f"it names {rec.role}/{rec.id}")
            return rec
        except ValueError as exc:
            with self._cond:
                self.refused += 1
            log.warning("registry: refusing member record at %s: %s", key, str(exc)[:200])
            return None

    def _name(self, key: str) -> str:
        return key[len(self._root):]

    async def run(self, client: Etcd3Client, op_timeout: float) -> None:
        end = prefix_range_end(self.key)
        resp = await client.kv.get(self.key, end, timeout=op_timeout)
        snapshot = {}
        for kv in resp.kvs:
            key = kv.key.decode()
            rec = self._parse(key, kv.value)
            if rec is not None:
                snapshot[self._name(key)] = rec
        self._apply_snapshot(snapshot)
        stream = watch_stream(client, self.key, end, resp.header.revision + 1)
        async with contextlib.aclosing(stream):
            async for wr in stream:
                if wr.canceled or wr.compact_revision:
                    return  # history gone: the core restarts us, which re-reads
                self._apply_events(wr.events)

    def _apply_events(self, events: Any) -> None:
        for ev in events:
            key = ev.kv.key.decode()
            if ev.type == _DELETE:
                self._apply(self._name(key), None)
            else:
                rec = self._parse(key, ev.kv.value)
                if rec is not None:
                    self._apply(self._name(key), rec)

    def _apply_snapshot(self, snapshot: dict[str, MemberRecord]) -> None:
        with self._cond:
            gone = [n for n in self._members if n not in snapshot]
        for name in gone:
            self._apply(name, None)
        for name, rec in snapshot.items():
            self._apply(name, rec)
        self._mark_synced()

    def _apply(self, name: str, rec: MemberRecord | None) -> None:
        with self._cond:
            old = self._members.get(name)
            if rec is None:
                if old is None:
                    return
                del self._members[name]
                event = MemberEvent(EventKind.LEAVE, old)
            else:
                if old is not None and old.to_json() == rec.to_json():
                    return
                self._members[name] = rec
                event = MemberEvent(EventKind.JOIN if old is None else EventKind.UPDATE, rec)
        self._publish(event)


def choose_controller(controllers: dict[str, MemberRecord], avoid: frozenset[str] = frozenset()) -> str | None:
    """The address of the most recently started controller that has one, preferring
    addresses not in ``avoid`` (those that just failed) while another exists."""
    usable = [c for c in controllers.values() if c.address]
    preferred = [c for c in usable if c.address not in avoid] or usable
    best = max(preferred, key=lambda c: (c.started_at, c.id), default=None)
    return best.address if best else None


class ControllerLocator(_Notifier["str | None"]):
    """Where the controller is: ``current()`` and ``wait_change()`` for a plain thread.

    A sensor's link thread calls ``current()`` before each (re)connect and,
    when it is None, ``wait_change(timeout)``.  While etcd is down the last
    known address stays; when the controller's lease expires (it died) it
    becomes None until one registers again.
    """

    #: how long an address that failed (handshake refused, unreachable) is passed over
    AVOID_S = 30.0

    def __init__(self, prefix: str) -> None:
        super().__init__(None)
        self._watch = MembersWatch(prefix, "controller")
        self._watch.on_change(self._changed)
        self._failed: dict[str, float] = {}  # address -> monotonic time of its last failure
        self.failures = 0

    def report_failure(self, address: str, reason: str = "") -> str | None:
        """A sensor could not use ``address`` (TLS handshake refused: its certificate is not
        from our CA; or unreachable).  It is passed over for ``AVOID_S`` while another
        controller is registered; returns the address to try next."""
        with self._cond:
            self.failures += 1
            self._failed[address] = time.monotonic()
        log.warning("registry: controller %s refused or unreachable (%s); trying another registered "
                    "controller if there is one", address, reason[:300] or "?")
        self._changed(None)
        return self.current()

    def _avoid(self) -> frozenset[str]:
        now = time.monotonic()
        with self._cond:
            self._failed = {a: t for a, t in self._failed.items() if now - t < self.AVOID_S}
            return frozenset(self._failed)

    def __repr__(self) -> str:
        return f"ControllerLocator({self._watch.key!r})"

    def current(self) -> str | None:
        with self._cond:
            return self._value

    def controllers(self) -> dict[str, MemberRecord]:
        return self._watch.members()

    def wait_synced(self, timeout: float | None = None) -> bool:
        return self._watch.wait_synced(timeout)

    def wait_change(self, timeout: float | None = None, since: str | None = _UNSET) -> str | None:
        """Block until the address differs from ``since`` (default: the current one); return it."""
        with self._cond:
            ref = self._value if since is _UNSET else since
            self._cond.wait_for(lambda: self._value != ref, timeout)
            return self._value

    def _changed(self, _event: MemberEvent | None) -> None:
        members = self._watch.members()
        address = choose_controller(members, self._avoid())
        old = self.current()
        if address != old:
            if old and address:  # sensors follow this: say it loudly, with who claims it
                who = [f"{c.id} (site {c.site or '-'}, started {c.started_at})"
                       for c in members.values() if c.address == address]
                log.warning("registry: controller MOVED from %s to %s, registered by %s", old, address,
                            ", ".join(who) or "?")
            else:
                log.info("registry: controller address now %s", address or "unknown")
            self._publish(address)

    async def run(self, client: Etcd3Client, op_timeout: float) -> None:
        await self._watch.run(client, op_timeout)


class ConfigWatcher(_Notifier[dict]):
    """A JSON object at one key (``/spanrec/config/sensor``): ``current()`` + ``on_change``.

    A deleted key reads as ``{}`` (defaults apply); a value that is not a JSON
    object is logged and ignored (the previous config stays).
    """

    def __init__(self, key: str, name: str = "",
                 validate: Callable[[dict[str, Any]], object] | None = None) -> None:
        super().__init__({})
        self.key = key
        self.name = name  # "sensor", "controller": its schema (registry.schema)
        self._validators: list[Callable[[dict[str, Any]], object]] = [validate] if validate else []
        self.refused = 0  # values refused (logged each); the last good config stayed

    def add_validator(self, validate: Callable[[dict[str, Any]], object]) -> None:
        """``validate(config)`` raises ``ValueError`` to refuse a new value (the last good
        one stays).  Also applied to the value in force now: if that one fails, it is
        refused too and the defaults apply."""
        with self._cond:
            self._validators.append(validate)
            current = dict(self._value)
        try:
            validate(current)
        except ValueError as exc:
            self._refuse(f"{exc}")
            self._publish({})

    def __repr__(self) -> str:
        return f"ConfigWatcher({self.key!r})"

    def current(self) -> dict[str, Any]:
        with self._cond:
            return dict(self._value)

    def get(self, name: str, default: Any = None) -> Any:
        with self._cond:
            return self._value.get(name, default)

    def wait_change(self, timeout: float | None = None) -> dict[str, Any]:
        with self._cond:
            version = self._version
            self._cond.wait_for(lambda: self._version != version, timeout)
            return dict(self._value)

    def _set(self, raw: bytes | None) -> None:
        if raw is None:
            value: dict[str, Any] = {}
        else:
            try:
                value = json.loads(raw)
            except ValueError as exc:
                self._refuse(f"not JSON ({exc})")
                return
            if not isinstance(value, dict):
                self._refuse("not a JSON object")
                return
            try:
                check_config(self.name, value)
                for validate in list(self._validators):
                    validate(value)
            except ValueError as exc:
                self._refuse(str(exc))
                return
        if value != self.current():
            log.info("registry: config %s changed: %s", self.key, sorted(value))
            self._publish(value)
        else:
            self._mark_synced()

    def _refuse(self, why: str) -> None:
        with self._cond:
            self.refused += 1
        self._mark_synced()
        log.warning("registry: refusing config at %s: %s; keeping the last good config", self.key, why[:300])

    async def run(self, client: Etcd3Client, op_timeout: float) -> None:
        resp = await client.kv.get(self.key, timeout=op_timeout)
        self._set(resp.kvs[0].value if resp.kvs else None)
        stream = watch_stream(client, self.key, None, resp.header.revision + 1)
        async with contextlib.aclosing(stream):
            async for wr in stream:
                if wr.canceled or wr.compact_revision:
                    return
                for ev in wr.events:
                    self._set(None if ev.type == _DELETE else ev.kv.value)

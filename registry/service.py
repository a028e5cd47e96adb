"""``Registry``: the synchronous facade over the asyncio core.

The core (``registry.etcd.RegistryCore``) runs on its own event loop in a
daemon thread, so neither the sensor's plain threads nor the controller's
grpc.aio loop ever wait on etcd.  Nothing here raises because etcd is down:
``start()`` returns at once, ``state`` says ``degraded``, accessors answer
from the last known state, and the core retries with back-off.

Credentials are passed in by the caller (from its environment or files) and
are never logged nor put in an exception message.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any

from .etcd import RegistryCore, Watcher
from .security import EtcdSecurity
from .members import DEFAULT_PREFIX, MemberEvent, MemberRecord, RegistryState, config_key, normalize_prefix
from .watch import ConfigWatcher, ControllerLocator, MembersWatch

log = logging.getLogger("spanrec.registry")


class Registry:
    """Register ``member`` (if given) under a lease and watch the fleet.

    ``watch_members`` defaults to True for a controller or when no member is
    given (a viewer); a sensor does not receive every other sensor's updates
    unless it asks (``on_change``, ``members``, ``events`` turn it on).
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        prefix: str = DEFAULT_PREFIX,
        member: MemberRecord | None = None,
        user: str | None = None,
        password: str | None = None,
        *,
        security: EtcdSecurity | None = None,
        ttl: int = 5,
        watch_members: bool | None = None,
        op_timeout: float = 2.0,
        retry_max: float = 5.0,
        update_interval: float = 2.0,
    ) -> None:
        self.prefix = normalize_prefix(prefix)
        self.member = member
        self._state_cond = threading.Condition()
        self._state_callbacks: list[Callable[[RegistryState], None]] = []
        if security is None:  # plain text: refused for a password or a remote etcd (EtcdSecurityError)
            security = EtcdSecurity(user=user, password=password).check(endpoints)
        elif user is not None or password is not None:
            raise ValueError("give the etcd user and password inside security=EtcdSecurity(...)")
        self._core = RegistryCore(
            endpoints, self.prefix, member, ttl=ttl, security=security, op_timeout=op_timeout,
            retry_max=retry_max, update_interval=update_interval, on_state=self._state_changed,
        )
        self._members = MembersWatch(self.prefix)
        self._watching_members = False
        self._locator: ControllerLocator | None = None
        self._shards: Any = None
        self._configs: dict[str, ConfigWatcher] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._task: asyncio.Task[None] | None = None
        self._future: concurrent.futures.Future[None] | None = None
        if watch_members or (watch_members is None and (member is None or member.role == "controller")):
            self._watch_members()

    def __repr__(self) -> str:  # no credentials
        who = self.member.key(self.prefix) if self.member else "viewer"
        return f"Registry({','.join(self._core.endpoints)} {who} {self.state.value})"

    # ---- lifecycle -------------------------------------------------------------------
    def start(self, wait: float = 0.0, *, loop: asyncio.AbstractEventLoop | None = None) -> bool:
        """Start in the background; with ``wait``, block up to that long for ``ok``.

        By default the core gets its own event loop in a daemon thread.  A
        process that already runs grpc.aio (the controller) may pass its
        running ``loop`` instead, so that grpc.aio serves one loop only; the
        registry then never blocks that loop either.
        """
        if self._thread is None and self._future is None:
            if loop is not None:
                self._loop = loop
                self._future = asyncio.run_coroutine_threadsafe(self._core.run(), loop)
            else:
                ready = threading.Event()
                self._thread = threading.Thread(target=self._main, args=(ready,), name="spanrec-registry",
                                                daemon=True)
                self._thread.start()
                ready.wait()
        return self.wait_state(RegistryState.OK, wait) if wait > 0 else self.state is RegistryState.OK

    def _main(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            self._task = loop.create_task(self._core.run())
            loop.call_soon(ready.set)
            loop.run_until_complete(self._task)
        except BaseException:  # noqa: BLE001 - cancelled by stop(); never let the thread die loudly
            log.debug("registry: loop ended", exc_info=True)
        finally:
            ready.set()
            _close_loop(loop)

    def stop(self, timeout: float = 3.0) -> None:
        """Revoke the lease (the record goes at once) and end the core, within ``timeout``."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if self._future is not None and _on_loop(loop):
            raise RuntimeError("Registry.stop() on its own event loop would block it: await stop_async()")
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._core.request_stop)
        if self._future is not None:  # on the caller's loop
            with contextlib.suppress(BaseException):
                self._future.result(timeout)
            self._future.cancel()
            return
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive() and self._task is not None:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(self._task.cancel)
                thread.join(1.0)

    async def stop_async(self, timeout: float = 3.0) -> None:
        """``stop()`` for code running on the loop given to ``start(loop=...)``."""
        if self._future is None or not _on_loop(self._loop):
            self.stop(timeout)
            return
        self._core.request_stop()
        future = asyncio.wrap_future(self._future)
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout)
        except BaseException:  # noqa: BLE001 - timeout: cancel the core
            future.cancel()

    def __enter__(self) -> Registry:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- state -----------------------------------------------------------------------
    @property
    def state(self) -> RegistryState:
        return self._core.state

    @property
    def lease_id(self) -> int:
        """The lease the record is on now (a new one after each reconnection)."""
        return self._core.lease_id

    def on_state(self, callback: Callable[[RegistryState], None]) -> None:
        with self._state_cond:
            self._state_callbacks.append(callback)

    def wait_state(self, state: RegistryState, timeout: float | None = None) -> bool:
        with self._state_cond:
            return self._state_cond.wait_for(lambda: self._core.state is state, timeout)

    def _state_changed(self, state: RegistryState) -> None:
        with self._state_cond:
            self._state_cond.notify_all()
            callbacks = list(self._state_callbacks)
        log.info("registry: state %s", state.value)
        for cb in callbacks:
            try:
                cb(state)
            except Exception:  # noqa: BLE001
                log.exception("registry: state callback failed")

    # ---- members ---------------------------------------------------------------------
    def members(self) -> dict[str, MemberRecord]:
        """Last known members, ``{"sensor/<id>": record, "controller/<id>": record}``."""
        self._watch_members()
        return self._members.members()

    def on_change(self, callback: Callable[[MemberEvent], None]) -> None:
        """``callback(MemberEvent)`` on join/update/leave; runs on the registry thread."""
        self._members.on_change(callback)
        self._watch_members()

    def events(self, maxsize: int = 10000) -> queue.Queue[MemberEvent]:
        """A queue of every member event from now on."""
        q = self._members.subscribe(maxsize)
        self._watch_members()
        return q

    def wait_members_synced(self, timeout: float | None = None) -> bool:
        self._watch_members()
        return self._members.wait_synced(timeout)

    def refusals(self) -> dict[str, int]:
        """Values refused so far (each was logged): member records, config, failed controllers."""
        out = {"member_records": self._members.refused}
        if self._locator is not None:
            out["member_records"] += self._locator._watch.refused  # noqa: SLF001
            out["controller_failures"] = self._locator.failures
        for key, watcher in self._configs.items():
            out[f"config:{key}"] = watcher.refused
        return out

    def update(self, **live_fields: Any) -> None:
        """Merge fields into the record's ``live`` part; written at most every ``update_interval``."""
        if self.member is None:
            raise RuntimeError("update() needs a registered member")
        self._call(self._core.set_live, dict(live_fields))

    def put_record(self, key: str, value: bytes | None) -> concurrent.futures.Future[bool]:
        """Keep another record on this member's lease (``None``: delete it): written
        now, again under every new lease, gone with the lease.  The future is done
        once etcd has the write."""
        if self.member is None:
            raise RuntimeError("put_record() needs a registered member")
        done: concurrent.futures.Future[bool] = concurrent.futures.Future()
        self._call(self._core.put_record, key, value, done)
        return done

    # ---- watchers --------------------------------------------------------------------
    def shards(self, grace_s: float | None = None) -> Any:
        """The (one) registry.shards.ShardsWatch: the controller shards in etcd."""
        if self._shards is None:
            from .shards import DEFAULT_GRACE_S, ShardsWatch
            self._shards = ShardsWatch(self.prefix, DEFAULT_GRACE_S if grace_s is None else grace_s)
            self._add(self._shards)
        return self._shards

    def locator(self) -> ControllerLocator:
        """The (one) ControllerLocator of this registry."""
        if self._locator is None:
            self._locator = ControllerLocator(self.prefix)
            self._add(self._locator)
        return self._locator

    def config(self, name: str) -> ConfigWatcher:
        """Watch ``<prefix>config/<name>`` (``sensor``, ``controller``) or a full key."""
        key = config_key(self.prefix, name)
        if key not in self._configs:
            self._configs[key] = ConfigWatcher(key, name if not name.startswith("/") else "")
            self._add(self._configs[key])
        return self._configs[key]

    def _watch_members(self) -> None:
        if not self._watching_members:
            self._watching_members = True
            self._add(self._members)

    def _add(self, watcher: Watcher) -> None:
        self._call(self._core.add_watcher, watcher)

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(fn, *args)
        else:
            fn(*args)


def _on_loop(loop: asyncio.AbstractEventLoop | None) -> bool:
    try:
        return loop is not None and asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """What ``asyncio.run`` does at the end, plus a short drain.

    grpc.aio dispatches completions to a call's loop from whichever loop reads
    its shared notification socket: a loop closed with calls still in flight
    makes *other* loops log "Event loop is closed".  So every task (grpc's own
    request-iterator tasks too) is cancelled and the loop runs a moment more.
    """
    try:
        tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(asyncio.sleep(0.05))
    except Exception:  # noqa: BLE001
        log.debug("registry: loop cleanup", exc_info=True)
    finally:
        loop.close()

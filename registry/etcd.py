"""The asyncio core: one etcd session at a time, re-made whenever etcd fails.

A *session* is a fresh ``etcd3aio`` client (a new gRPC channel), an optional
authentication, a new lease with the member record put on it, the watchers
running on that client, and a keep-alive loop.  Any failure (etcd down,
timeout, lease expired, token rejected) ends the session: the state becomes
``degraded``, watchers stop (their last known state is kept), and a new
session is tried with tenacity back-off until etcd answers again, which
re-registers the member under a *new* lease.

Why not ``LeaseService.keep_alive_context``: measured here with etcd stopped
for 6 s, it logs a traceback every second, keeps ``alive == True`` and never
tells anyone; and the gRPC channel it uses needed ~3 s after etcd was healthy
again to reconnect (grpc's own reconnect back-off, which grows to 120 s over a
long outage).  A fresh channel per session and our own one-shot keep-alive
with a deadline give a prompt ``degraded`` and a prompt recovery.  (A lease
survives an etcd restart: etcd extends all leases when it starts.  We still
take a new lease per session and revoke the previous one after the new record
is in place, so a watcher sees an update, never a leave, for a mere blip.)
"""
from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import grpc.aio
from etcd3aio import Etcd3Client
from tenacity import AsyncRetrying, retry_if_exception, wait_exponential_jitter

from .members import MemberRecord, RegistryState, normalize_prefix
from .security import EtcdSecurity, split_hostport

log = logging.getLogger("spanrec.registry")


class SessionLost(Exception):
    """An established session ended (etcd unreachable, lease gone)."""


class Watcher(Protocol):
    async def run(self, client: Etcd3Client, op_timeout: float) -> None:
        """Sync and watch with ``client`` until cancelled (or raise to be restarted)."""


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _short(exc: BaseException | None) -> str:
    if exc is None:
        return "?"
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {(exc.details() or '')[:160]}"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__


class RegistryCore:
    """Lives on one event loop; every method but ``__init__`` runs on that loop."""

    def __init__(
        self,
        endpoints: Sequence[str],
        prefix: str,
        member: MemberRecord | None,
        *,
        ttl: int = 5,
        security: EtcdSecurity | None = None,
        op_timeout: float = 2.0,
        retry_max: float = 5.0,
        update_interval: float = 2.0,
        token_refresh: float = 240.0,
        on_state: Callable[[RegistryState], None] | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoints given")
        self.endpoints = [e.split("://", 1)[-1].rstrip("/") for e in endpoints]
        self.prefix = normalize_prefix(prefix)
        self.member = member
        self.ttl = max(1, int(ttl))
        self.security = security if security is not None else EtcdSecurity().check(self.endpoints)
        self._user, self._password = self.security.user, self.security.password
        self.op_timeout = op_timeout
        self.retry_max = retry_max
        self.update_interval = update_interval
        self.token_refresh = token_refresh
        self._on_state = on_state
        self.state = RegistryState.CONNECTING
        self.lease_id = 0
        self.sessions = 0  # sessions that reached OK
        self._live: dict[str, Any] = {}
        self._live_dirty = False
        self._watchers: list[Watcher] = []
        self._tasks: dict[Watcher, asyncio.Task[None]] = {}
        self._client: Etcd3Client | None = None
        self._stop = asyncio.Event()
        # other records on the member's lease (registry/shards.py): key -> value, and the
        # writes not yet done in order (value None: delete), each with a future to resolve
        self._records: dict[str, bytes] = {}
        self._record_ops: list[tuple[str, bytes | None, Any]] = []
        self._wake = asyncio.Event()

    # ---- called on the loop by the facade -------------------------------------------
    def request_stop(self) -> None:
        self._stop.set()

    def set_live(self, fields: dict[str, Any]) -> None:
        self._live.update(fields)
        self._live_dirty = True

    def put_record(self, key: str, value: bytes | None, done: Any = None) -> None:
        """Keep ``key`` = ``value`` on the member's lease (None: delete it); ``done``
        (a concurrent.futures.Future) is resolved once etcd has it."""
        if value is None:
            self._records.pop(key, None)
        else:
            self._records[key] = value
        self._record_ops.append((key, value, done))
        self._wake.set()

    def _resolve_ops(self, upto: int) -> None:
        ops, self._record_ops = self._record_ops[:upto], self._record_ops[upto:]
        for _key, _value, done in ops:
            if done is not None and not done.done():
                done.set_result(True)

    async def _flush_records(self, client: Etcd3Client) -> None:
        while self._record_ops:
            key, value, _done = self._record_ops[0]
            if value is None:
                await client.kv.delete(key, timeout=self.op_timeout)
            else:
                await client.kv.put(key, value, lease=self.lease_id, timeout=self.op_timeout)
            self._resolve_ops(1)

    async def _idle(self, seconds: float) -> None:
        """Sleep ``seconds``, or less when stopping or a record is to be written."""
        if self._wake.is_set() or self._stop.is_set():
            return
        waits = [asyncio.ensure_future(self._stop.wait()), asyncio.ensure_future(self._wake.wait())]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    def add_watcher(self, watcher: Watcher) -> None:
        if watcher not in self._watchers:
            self._watchers.append(watcher)
            if self._client is not None:
                self._spawn(watcher, self._client)

    # ---- main loop -------------------------------------------------------------------
    async def run(self) -> None:
        try:
            while not self._stop.is_set():
                retrying = AsyncRetrying(
                    wait=wait_exponential_jitter(multiplier=0.2, max=self.retry_max, jitter=0.2),
                    retry=retry_if_exception(lambda e: isinstance(e, Exception) and not isinstance(e, SessionLost)),
                    stop=lambda _rs: self._stop.is_set(),
                    sleep=self._sleep,
                    before_sleep=self._before_sleep,
                    reraise=True,
                )
                try:
                    async for attempt in retrying:
                        with attempt:
                            await self._session()
                except SessionLost:
                    continue  # a session that had worked: start again with a fresh back-off
                except Exception as exc:  # noqa: BLE001 - only when stopping
                    log.debug("registry: stopping after %s", _short(exc))
        finally:
            self._set_state(RegistryState.STOPPED)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    def _before_sleep(self, rs: Any) -> None:
        exc = rs.outcome.exception() if rs.outcome else None
        if self.state is not RegistryState.DEGRADED:
            log.warning("registry: etcd %s not usable (%s), retrying with back-off", ",".join(self.endpoints),
                        _short(exc))
        self._set_state(RegistryState.DEGRADED)
        log.debug("registry: attempt %d failed (%s), next in %.2f s", rs.attempt_number, _short(exc),
                  rs.next_action.sleep if rs.next_action else 0)

    def _set_state(self, state: RegistryState) -> None:
        if state is self.state:
            return
        self.state = state
        if self._on_state is not None:
            try:
                self._on_state(state)
            except Exception:  # noqa: BLE001
                log.exception("registry: state callback failed")

    # ---- one session -----------------------------------------------------------------
    async def _session(self) -> None:
        client = await self._new_client()
        await client.connect()
        established = False
        try:
            await self._authenticate(client)
            if self.member is not None:
                await self._register(client)
            else:
                await self._ping(client)
            established = True
            self.sessions += 1
            self._client = client
            for watcher in self._watchers:
                self._spawn(watcher, client)
            self._set_state(RegistryState.OK)
            log.info("registry: connected to etcd%s", f", registered {self.member.key(self.prefix)} "
                     f"(lease {self.lease_id:x})" if self.member else "")
            await self._keepalive(client)
            if self.member is not None:  # stopping: remove the record now, not at lease expiry
                with contextlib.suppress(Exception):
                    await client.lease.revoke(self.lease_id, timeout=self.op_timeout)
        except Exception as exc:
            if established and not self._stop.is_set():
                log.warning("registry: lost etcd (%s), keeping last known state", _short(exc))
                self._set_state(RegistryState.DEGRADED)
                raise SessionLost(_short(exc)) from exc
            raise
        finally:
            self._client = None
            tasks = list(self._tasks.values())
            self._tasks.clear()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await client.close()

    async def _resolve(self) -> list[str]:
        """etcd3aio dials ``ipv4:`` addresses only: names (``etcd:2379`` in Kubernetes) are
        resolved here, once per session, so a moved etcd is found again."""
        loop = asyncio.get_running_loop()
        out: list[str] = []
        for endpoint in self.endpoints:
            host, port = split_hostport(endpoint)
            if host == "localhost" or _is_ip(host):
                out.append(f"{host}:{port}")
                continue
            infos = await asyncio.wait_for(loop.getaddrinfo(host, port, family=socket.AF_INET), self.op_timeout)
            out.extend(sorted({f"{info[4][0]}:{port}" for info in infos}))
        return out

    async def _new_client(self) -> Etcd3Client:
        server_name = self.security.server_name
        if server_name is None and self.security.tls:
            # verify etcd's certificate against the name the operator wrote, not the address
            server_name = split_hostport(self.endpoints[0])[0]
        client = Etcd3Client(await self._resolve(), rpc_max_attempts=1, tls_server_name=server_name,
                             **self.security.channel_args())
        # gRPC shares subchannels between channels process-wide: without a local pool a
        # "fresh" channel inherits the old one's reconnect back-off (seconds to 2 min) and
        # keeps failing although etcd is back.  etcd3aio 0.3 builds its options here.
        options = getattr(getattr(client, "_manager", None), "grpc_options", None)
        if isinstance(options, list):
            options += [
                ("grpc.use_local_subchannel_pool", 1),
                ("grpc.initial_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", int(self.retry_max * 1000)),
            ]
        return client

    async def _authenticate(self, client: Etcd3Client) -> None:
        if self._user:
            resp = await client.auth.authenticate(self._user, self._password or "", timeout=self.op_timeout)
            client.set_token(resp.token)

    def _record(self) -> MemberRecord:
        assert self.member is not None
        return self.member.with_live(self._live) if self._live else self.member

    async def _register(self, client: Etcd3Client) -> None:
        lease = await client.lease.grant(self.ttl, timeout=self.op_timeout)
        self._live_dirty = False
        await client.kv.put(self.member.key(self.prefix), self._record().to_json(), lease=lease.ID,
                            timeout=self.op_timeout)
        pending = len(self._record_ops)     # what is asked now is written below
        for key, value in list(self._records.items()):
            await client.kv.put(key, value, lease=lease.ID, timeout=self.op_timeout)
        self._resolve_ops(pending)
        old, self.lease_id = self.lease_id, lease.ID
        if old:  # the record now hangs on the new lease: the old one only has to go
            with contextlib.suppress(Exception):
                await client.lease.revoke(old, timeout=self.op_timeout)

    async def _ping(self, client: Etcd3Client) -> None:
        await client.kv.get(self.prefix, count_only=True, timeout=self.op_timeout)

    async def _keepalive(self, client: Etcd3Client) -> None:
        interval = max(0.3, self.ttl / 3)
        last_put = last_auth = time.monotonic()
        while True:
            await self._idle(min(interval, self.update_interval))
            if self._stop.is_set():
                return
            self._wake.clear()
            if self.member is not None and self._record_ops:
                await self._flush_records(client)
            now = time.monotonic()
            if self._user and now - last_auth >= self.token_refresh:
                await self._authenticate(client)
                last_auth = now
            if self.member is None:
                await self._ping(client)
                continue
            await self._keepalive_once(client)
            if self._live_dirty and now - last_put >= self.update_interval:
                self._live_dirty = False
                await client.kv.put(self.member.key(self.prefix), self._record().to_json(),
                                    lease=self.lease_id, timeout=self.op_timeout)
                last_put = now

    async def _keepalive_once(self, client: Etcd3Client) -> None:
        stream = client.lease.keep_alive(self.lease_id)
        try:
            async with asyncio.timeout(self.op_timeout):
                async for resp in stream:
                    if resp.TTL <= 0:
                        raise SessionLost(f"lease {self.lease_id:x} expired")
                    return
            raise SessionLost("keep-alive stream closed without an answer")
        finally:
            stream.cancel()

    def _spawn(self, watcher: Watcher, client: Etcd3Client) -> None:
        task = asyncio.get_running_loop().create_task(self._run_watcher(watcher, client))
        self._tasks[watcher] = task

    async def _run_watcher(self, watcher: Watcher, client: Etcd3Client) -> None:
        delay = 0.2
        while True:
            try:
                await watcher.run(client, self.op_timeout)
                delay = 0.2  # the watch ended (compaction, cancel): resync at once
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep watching; the keep-alive decides the state
                log.debug("registry: watcher %r failed (%s), restarting", watcher, _short(exc))
                delay = min(delay * 2, self.retry_max)
            await asyncio.sleep(delay)

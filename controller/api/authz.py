"""Who may call what on the controller's port (least privilege by role).

`AuthzInterceptor` (a grpc.aio server interceptor) wraps every method handler
with a check of the caller's certificate role (transport.roles) against
`POLICY`; a refused call ends with PERMISSION_DENIED, is counted per
(role, method) and logged (at most one line per certificate and method every
`LOG_EVERY_S`, with the number suppressed). Plain-text servers (--insecure,
`spanrec record` on loopback) have no identities: nothing is checked.

`Authorizer.check_site` is the sensor-site rule the SensorLink servicer
applies to a Hello: a sensor speaks only for the site of its certificate.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Any, Awaitable, Callable

import grpc

from transport.roles import PeerIdentity, peer_identity

log = logging.getLogger("spanrec.controller.api.authz")

SENSOR_LINK = "/spanrec.v1.SensorLink/"
ADMIN = "/spanrec.v1.Admin/"
READ_ONLY_ADMIN = frozenset({"GetStatus", "ListCalls", "GetCall"})   # auditor: no files
AUDITOR_ONLY = frozenset({"ListAudit"})      # the audit trail: auditors, nobody else
# Health checking and reflection (schema only) answer any certificate of the CA.
OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/",
                 "/grpc.reflection.v1.ServerReflection/")
LOG_EVERY_S = 10.0


def allowed_roles(method: str) -> frozenset[str] | None:
    """Roles that may call `method` (a full gRPC method name); None = any
    authenticated peer. Unknown methods (a new Admin RPC) are operator-only
    until this table says otherwise."""
    if method.startswith(OPEN_SERVICES):
        return None
    if method.startswith(SENSOR_LINK):
        return frozenset({"sensor"})
    if method.startswith(ADMIN) and method[len(ADMIN):] in READ_ONLY_ADMIN:
        return frozenset({"operator", "auditor"})
    if method.startswith(ADMIN) and method[len(ADMIN):] in AUDITOR_ONLY:
        return frozenset({"auditor"})
    return frozenset({"operator"})


class Authorizer:
    """Counts and logs refusals; holds the site rules."""

    def __init__(self, *, require_site: bool = False, sensor_sites: dict[str, str] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.require_site = require_site
        self.sensor_sites = dict(sensor_sites or {})   # sensor id -> site (controller config)
        self.denied: Counter[tuple[str, str]] = Counter()   # (role, method or "site") -> refusals
        self._clock = clock
        self._last_log: dict[tuple[str, str], tuple[float, int]] = {}
        self._legacy_logged: set[str] = set()
        self._lock = threading.Lock()

    def refused(self, peer: PeerIdentity, what: str, reason: str, addr: str) -> None:
        """Counts a refusal; logs it unless the same certificate was just logged for it."""
        key = (peer.name, what)
        now = self._clock()
        with self._lock:
            self.denied[(peer.role or "invalid", what)] += 1
            last, suppressed = self._last_log.get(key, (-1e18, 0))
            if now - last < LOG_EVERY_S:
                self._last_log[key] = (last, suppressed + 1)
                return
            self._last_log[key] = (now, 0)
        log.warning("refused: %s", reason, extra={
            "certificate_cn": peer.name, "role": peer.role, "what": what, "peer": addr,
            "suppressed": suppressed})

    def note_legacy(self, peer: PeerIdentity) -> None:
        if peer.legacy and peer.name not in self._legacy_logged:
            self._legacy_logged.add(peer.name)
            log.warning("certificate without a role: treated as a sensor; re-issue it with "
                        "make-certs client NAME --role ...", extra={"certificate_cn": peer.name})

    def check_method(self, peer: PeerIdentity | None, method: str) -> str | None:
        """None if allowed, else the refusal message."""
        roles = allowed_roles(method)
        if peer is None or roles is None:
            return None
        self.note_legacy(peer)
        if peer.role in roles:
            return None
        if not peer.role:
            return f"certificate {peer.name!r} refused: {peer.problem}"
        return (f"certificate {peer.name!r} has role {peer.role}; {method} needs "
                f"{' or '.join(sorted(roles))}")

    def check_site(self, peer: PeerIdentity | None, sensor_id: str, site: str) -> str | None:
        """A Hello's site: None if the sensor may speak for it, else why not."""
        bound = self.sensor_sites.get(sensor_id) or (peer.site if peer else "")
        if bound:
            if site != bound:
                return f"sensor {sensor_id!r} may speak for site {bound!r} only, not {site!r}"
            return None
        if peer is not None and self.require_site:
            return (f"certificate {peer.name!r} names no site (make-certs client NAME --site SITE) "
                    "and the controller requires one")
        return None

    def counts(self) -> dict[str, int]:
        """`role:what` -> refusals, for status and logs."""
        with self._lock:
            return {f"{role}:{what}": n for (role, what), n in sorted(self.denied.items())}


def _guard(check: Callable[[Any], Awaitable[None]], handler: grpc.RpcMethodHandler
           ) -> grpc.RpcMethodHandler:
    """The same handler, with `check(context)` run before the servicer."""
    ser = dict(request_deserializer=handler.request_deserializer,
               response_serializer=handler.response_serializer)
    if handler.unary_unary is not None:
        inner_uu = handler.unary_unary

        async def uu(request: Any, context: Any) -> Any:
            await check(context)
            return await inner_uu(request, context)
        return grpc.unary_unary_rpc_method_handler(uu, **ser)
    if handler.unary_stream is not None:
        inner_us = handler.unary_stream

        async def us(request: Any, context: Any) -> Any:
            await check(context)
            async for item in inner_us(request, context):
                yield item
        return grpc.unary_stream_rpc_method_handler(us, **ser)
    if handler.stream_unary is not None:
        inner_su = handler.stream_unary

        async def su(requests: Any, context: Any) -> Any:
            await check(context)
            return await inner_su(requests, context)
        return grpc.stream_unary_rpc_method_handler(su, **ser)
    inner_ss = handler.stream_stream

    async def ss(requests: Any, context: Any) -> Any:
        await check(context)
        async for item in inner_ss(requests, context):
            yield item
    return grpc.stream_stream_rpc_method_handler(ss, **ser)


class AuthzInterceptor(grpc.aio.ServerInterceptor):
    """Role check before every RPC (grpc.aio servicers must be coroutines or
    async generators, as ours are)."""

    def __init__(self, authorizer: Authorizer) -> None:
        self.authorizer = authorizer

    async def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails
                                ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        method = details.method
        if handler is None or allowed_roles(method) is None:
            return handler
        authz = self.authorizer

        async def check(context: Any) -> None:
            peer = peer_identity(context)
            reason = authz.check_method(peer, method)
            if reason is not None:
                assert peer is not None
                authz.refused(peer, method, reason, context.peer())
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, reason)
        return _guard(check, handler)

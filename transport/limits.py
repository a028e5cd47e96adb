"""Open-files limit and the bounds on connections that are not yet authenticated.

Every TCP connection costs the controller one file descriptor before any TLS
handshake; with the usual soft limit of 1,024, a thousand idle connections
left it unable to accept a sensor (or open a recording). So at start the soft
limit is raised to the hard limit (`raise_nofile`, logged), gRPC closes a
connection whose TLS handshake has not finished within
`HANDSHAKE_TIMEOUT_MS` (gRPC's default is 120 s), and the number of
connections gRPC accepts is bounded below the limit
(`grpc.max_allowed_incoming_connections`) so recordings, the write-ahead log
and the outbox always keep descriptors. `FdWatch` counts open descriptors
and warns (rate-limited) when they near the limit.
"""
from __future__ import annotations

import logging
import os
import resource
import time
from dataclasses import dataclass

log = logging.getLogger("spanrec.transport.limits")

HANDSHAKE_TIMEOUT_MS = 10_000
FD_RESERVE = 256          # descriptors kept for files, etcd, S3, logs
WARN_FRACTION = 0.8
WARN_EVERY_S = 60.0


@dataclass(frozen=True)
class NofileLimit:
    before: int           # soft limit found at start
    soft: int             # soft limit now
    hard: int

    @property
    def max_connections(self) -> int:
        """Connections gRPC may hold open at once: the limit minus a reserve."""
        return max(64, self.soft - FD_RESERVE)


def _cap(value: int) -> int:
    return 1 << 20 if value == resource.RLIM_INFINITY else value


def raise_nofile(want: int | None = None) -> NofileLimit:
    """Raises RLIMIT_NOFILE's soft limit to `want` (default: the hard limit,
    capped at 1,048,576); never lowers it. Refusals leave it as it was."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(_cap(hard), want if want is not None else _cap(hard))
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-files limit", extra={
                "soft": soft, "hard": hard, "error": str(exc)})
            return NofileLimit(soft, soft, _cap(hard))
    return NofileLimit(soft, max(soft, target), _cap(hard))


def open_fds() -> int:
    """Descriptors this process has open (Linux /proc; -1 elsewhere)."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1    # the listing's own descriptor
    except OSError:
        return -1


class FdWatch:
    """`check()` every few seconds: counts descriptors, warns near the limit."""

    def __init__(self, limit: NofileLimit) -> None:
        self.limit = limit
        self.open = 0
        self.peak = 0
        self.warnings = 0
        self._last_warn = -1e18

    def check(self) -> int:
        n = open_fds()
        self.open = n
        self.peak = max(self.peak, n)
        if n >= WARN_FRACTION * self.limit.soft and time.monotonic() - self._last_warn > WARN_EVERY_S:
            self._last_warn = time.monotonic()
            self.warnings += 1
            log.warning("open files near the limit (idle or unauthenticated connections?)",
                        extra={"open_files": n, "limit": self.limit.soft,
                               "max_connections": self.limit.max_connections})
        return n

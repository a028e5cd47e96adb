"""Failed TLS handshakes on the controller's listening ports: one rate-limited
WARNING line naming the peer and the reason, and counters for fleet status.

grpcio has no hook for a server-side handshake that fails (no call, servicer
or interceptor exists yet). gRPC core traces handshakes when
GRPC_TRACE=handshaker and GRPC_VERBOSITY=INFO, on file descriptor 2. So
`install()` (only `spanrec controller` serving TLS; before grpc is imported,
which is when core reads those variables) points fd 2 at a pipe and reads it
on a daemon thread:

* Python keeps writing to the real stderr: `sys.stderr` and the logging
  handlers get a copy of the original fd 2.
* the pipe's write end is non-blocking: when the reader falls behind, gRPC's
  lines are lost, gRPC's threads never wait.
* handshake trace records feed `TraceParser`; failures on a listening port go
  to `HandshakeLog` (client handshakes of our own channels, e.g. to etcd, are
  not ours); any other gRPC line is forwarded unchanged when its severity
  reaches the GRPC_VERBOSITY in effect before (default ERROR, cli/__init__.py);
  a line not from gRPC is forwarded as it is.

This parses gRPC core's trace format (grpcio 1.85): an upgrade may change it;
tests/transport/test_handshake_log.py fails then.
"""
from __future__ import annotations

import io
import logging
import os
import re
import select
import sys
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Callable
from urllib.parse import unquote

log = logging.getLogger("spanrec.tls")

WINDOW_S = 60.0
MAX_TRACKED = 4096          # handshakes in flight remembered (oldest dropped)

# "I1206 06:58:38.827149   26733 handshaker.cc:155] message"
_HEADER = re.compile(rb"^([IWEF])\d{4} \d\d:\d\d:\d\d\.\d+\s+(\d+)\s+([\w.+-]+:\d+)\] ?")
_CALL_NEXT = re.compile(r"CallNextHandshakerLocked: error=(.*?)\s+shutdown=(true|false) "
                        r"index=\d+, args=\{endpoint=([^,\s]+)", re.S)
_MANAGER = re.compile(r"^handshake[_ ]manager (0x[0-9a-fA-F]+):\s*(.*)", re.S)
_LOCAL = re.compile(r"grpc\.internal\.endpoint_local_address=([^,}\s]+)")
_PEER = re.compile(r"grpc\.internal\.endpoint_peer_address=([^,}\s]+)")
_SOURCE_TRACE = re.compile(r"\s*=== Source Location Trace: ===.*", re.S)
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}


@dataclass(frozen=True)
class HandshakeFailed:
    peer: str      # "127.0.0.1:44476", "[::1]:5000"
    local: str     # the address it connected to
    reason: str    # gRPC's error text, e.g. "UNKNOWN: Ssl handshake failed (...): ..."

    @property
    def local_port(self) -> int:
        return _port(self.local)

    @property
    def host(self) -> str:
        return self.peer.rpartition(":")[0] or self.peer


def _address(uri: str) -> str:
    """"ipv4:127.0.0.1:5000" -> "127.0.0.1:5000"; "ipv6:%5B::1%5D:5000" -> "[::1]:5000"."""
    scheme, _, rest = uri.partition(":")
    return unquote(rest) if scheme in ("ipv4", "ipv6") else unquote(uri)


def _port(address: str) -> int:
    try:
        return int(address.rpartition(":")[2])
    except ValueError:
        return -1


def _first_line(text: str) -> str:
    text = _SOURCE_TRACE.sub("", text).strip()
    return text.removesuffix(": OK").strip()


@dataclass
class _Handshake:
    local: str = ""
    peer: str = ""
    endpoint: str = ""
    shutdown: str = ""     # "Shutdown called: ..." reason (timeout, server stopping)


@dataclass
class _CallNext:
    error: str
    endpoint: str
    local: str
    peer: str


class TraceParser:
    """gRPC core's handshaker trace, record by record -> HandshakeFailed.

    Ties a record to a connection by the handshake manager's pointer: the
    "CallNextHandshakerLocked" record (endpoint, local and peer addresses, no
    manager) is followed on the same thread by "handshake manager 0x..:
    calling handshaker ..." or "... Failed with error: ...". A timeout shows
    as "Shutdown called: ... Handshake timed out" then a failed read. Memory:
    at most `max_tracked` handshakes in flight, oldest dropped."""

    def __init__(self, max_tracked: int = MAX_TRACKED) -> None:
        self.max_tracked = max_tracked
        self._managers: OrderedDict[str, _Handshake] = OrderedDict()
        self._by_endpoint: dict[str, str] = {}
        self._last: OrderedDict[str, _CallNext] = OrderedDict()   # thread id -> last CallNext
        self.unmatched = 0      # failures whose peer could not be found

    def tracked(self) -> int:
        return len(self._managers)

    def record(self, tid: str, message: str) -> tuple[bool, HandshakeFailed | None]:
        """One trace record (its first line's message and any continuation
        lines). Returns (handshake-related, failure or None)."""
        m = _CALL_NEXT.search(message)
        if m:
            error, endpoint = _first_line(m.group(1)), m.group(3)
            local, peer = _LOCAL.search(message), _PEER.search(message)
            call = _CallNext(error, endpoint, _address(local.group(1)) if local else "",
                             _address(peer.group(1)) if peer else "")
            self._last[tid] = call
            self._last.move_to_end(tid)
            while len(self._last) > 1024:
                self._last.popitem(last=False)
            if error == "OK" and "grpc.auth_context=" in message:   # handshake done
                self._drop(self._by_endpoint.get(endpoint, ""))
            return True, None
        m = _MANAGER.match(message)
        if not m:
            return ("andshake" in message), None
        manager, what = m.group(1), m.group(2)
        if what.startswith("adding handshaker") and what.rstrip().endswith("at index 0"):
            self._drop(manager)                       # a new manager (pointers are reused)
            self._track(manager, _Handshake())
        elif what.startswith("calling handshaker"):
            call = self._last.pop(tid, None)
            hs = self._managers.get(manager) or self._track(manager, _Handshake())
            if call is not None:
                hs.local, hs.peer = call.local or hs.local, call.peer or hs.peer
                if call.endpoint.startswith("0x"):
                    hs.endpoint = call.endpoint
                    self._by_endpoint[call.endpoint] = manager
        elif what.startswith("Shutdown called:"):
            hs = self._managers.get(manager) or self._track(manager, _Handshake())
            hs.shutdown = _first_line(what.partition(":")[2])
        elif what.startswith("Failed with error:"):
            hs = self._drop(manager) or _Handshake()
            call = self._last.pop(tid, None)
            local = (call.local if call else "") or hs.local
            peer = (call.peer if call else "") or hs.peer
            if not (local and peer):
                self.unmatched += 1
                return True, None
            return True, HandshakeFailed(peer, local, hs.shutdown or _first_line(what.partition(":")[2]))
        return True, None

    def _track(self, manager: str, hs: _Handshake) -> _Handshake:
        self._managers[manager] = hs
        while len(self._managers) > self.max_tracked:
            self._forget(*self._managers.popitem(last=False))
        return hs

    def _drop(self, manager: str) -> _Handshake | None:
        hs = self._managers.pop(manager, None)
        if hs is not None:
            self._forget(manager, hs)
        return hs

    def _forget(self, manager: str, hs: _Handshake) -> None:
        if hs.endpoint and self._by_endpoint.get(hs.endpoint) == manager:
            del self._by_endpoint[hs.endpoint]


_REASONS: list[tuple[str, str]] = [
    ("Handshake timed out", "handshake timed out"),
    ("HTTPS_PROXY_REQUEST", "not TLS (HTTP proxy request)"),
    ("HTTP_REQUEST", "not TLS (plain HTTP request)"),
    ("WRONG_VERSION_NUMBER", "not TLS, or an old TLS version"),
    ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "no client certificate"),
    ("unable to get local issuer certificate", "client certificate not signed by the cluster CA"),
    ("self-signed certificate", "client certificate not signed by the cluster CA"),
    ("self signed certificate", "client certificate not signed by the cluster CA"),
    ("certificate has expired", "client certificate expired"),
    ("certificate is not yet valid", "client certificate not yet valid"),
    ("unsupported certificate purpose", "client certificate not for client use (extended key usage)"),
    ("NO_SHARED_CIPHER", "no TLS cipher in common"),
    ("UNSUPPORTED_PROTOCOL", "TLS version not supported"),
    ("ALERT_UNKNOWN_CA", "the client does not trust the controller's certificate (unknown CA)"),
    ("ALERT_BAD_CERTIFICATE", "the client refused the controller's certificate"),
    ("ALERT_CERTIFICATE", "the client refused the controller's certificate"),
    ("Socket closed", "connection closed during the handshake (a TCP probe, or the client "
                      "refused the controller's certificate)"),
    ("Endpoint closing", "connection closed during the handshake"),
    ("Connection reset", "connection reset during the handshake"),
]
_OPENSSL = re.compile(r"error:[0-9a-fA-F]+:[^:]*:[^:]*:(.*)")


def describe(reason: str) -> str:
    """A short human reason for gRPC's error text; else the OpenSSL reason."""
    for needle, human in _REASONS:
        if needle in reason:
            return human
    m = _OPENSSL.search(reason)
    return (m.group(1) if m else reason).strip()[:200]


class HandshakeLog:
    """Counts failures on `ports` and logs at most one line per peer host per
    `window_s`, plus one summary per window when lines were held back."""

    def __init__(self, ports: set[int] | None = None, *, window_s: float = WINDOW_S,
                 clock: Callable[[], float] = time.monotonic,
                 logger: logging.Logger = log) -> None:
        self.ports: set[int] = set(ports or ())
        self.window_s = window_s
        self.clock = clock
        self.log = logger
        self.total = 0
        self.by_reason: Counter[str] = Counter()
        self.reader_errors = 0       # exceptions in the reader thread (it carries on)
        self._last_logged: dict[str, float] = {}
        self._window_start = clock()
        self._window_failures = 0
        self._window_peers: set[str] = set()
        self._suppressed = 0
        self._lock = threading.Lock()

    def observe(self, ev: HandshakeFailed) -> bool:
        """True when `ev` is on one of our ports (counted)."""
        if ev.local_port not in self.ports:
            return False
        human = describe(ev.reason)
        with self._lock:
            now = self.clock()
            self._roll(now)
            self.total += 1
            self.by_reason[human] += 1
            self._window_failures += 1
            if len(self._window_peers) < MAX_TRACKED:
                self._window_peers.add(ev.host)
            last = self._last_logged.get(ev.host)
            if last is not None and now - last < self.window_s:
                self._suppressed += 1
                return True
            if len(self._last_logged) >= MAX_TRACKED:
                self._last_logged.pop(next(iter(self._last_logged)))
            self._last_logged[ev.host] = now
        self.log.warning(f"TLS handshake from {ev.peer} failed: {human}",
                         extra={"peer": ev.peer, "listen": ev.local, "error": ev.reason[:300]})
        return True

    def tick(self) -> None:
        with self._lock:
            self._roll(self.clock())

    def _roll(self, now: float) -> None:
        if now - self._window_start < self.window_s:
            return
        if self._suppressed:
            self.log.warning(f"{self._window_failures} failed TLS handshakes from "
                             f"{len(self._window_peers)} peers in the last {self.window_s:.0f} s",
                             extra={"not_logged": self._suppressed, "total": self.total})
        self._window_start, self._window_failures, self._suppressed = now, 0, 0
        self._window_peers = set()
        self._last_logged = {h: t for h, t in self._last_logged.items() if now - t < self.window_s}


def _threshold(verbosity: str) -> int:
    """GRPC_VERBOSITY -> lowest severity forwarded (4: nothing)."""
    v = verbosity.strip().upper()
    return {"DEBUG": 0, "INFO": 0, "ERROR": 2, "NONE": 4}.get(v, 2)


class StderrCapture:
    """fd 2 -> a non-blocking pipe read by a daemon thread (see the module doc)."""

    def __init__(self, handshakes: HandshakeLog, *, forward_from: int = 2,
                 forward_handshakes: bool = False) -> None:
        self.handshakes = handshakes
        self.parser = TraceParser()
        self.forward_from = forward_from
        self.forward_handshakes = forward_handshakes
        self.real_fd = -1
        self._read_fd = -1
        self._pending: list[bytes] = []    # the record being read: first line + continuations
        self._forward_orphans = True       # continuation lines whose record was already handled
        self._partial = b""

    def start(self) -> io.TextIOWrapper:
        """Redirects fd 2; returns a text stream on the real stderr."""
        self.real_fd = os.dup(2)                      # not inherited by children
        r, w = os.pipe()
        try:
            import fcntl
            fcntl.fcntl(w, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
        except OSError:
            pass                                      # 64 KiB then
        os.set_blocking(w, False)
        os.dup2(w, 2)
        os.close(w)
        self._read_fd = r
        threading.Thread(target=self._run, name="grpc-stderr", daemon=True).start()
        return io.TextIOWrapper(io.FileIO(self.real_fd, "w", closefd=False),
                                encoding=getattr(sys.stderr, "encoding", None) or "utf-8",
                                errors="backslashreplace", line_buffering=True, write_through=True)

    def _run(self) -> None:
        while True:
            try:
                ready, _, _ = select.select([self._read_fd], [], [], 5.0)
                if ready:
                    data = os.read(self._read_fd, 1 << 16)
                    if not data:
                        return
                    self.feed(data)
                self.handshakes.tick()
            except Exception:   # noqa: BLE001 - never die: fd 2 would fill and gRPC lines be lost
                self.handshakes.reader_errors += 1
                time.sleep(0.1)

    def feed(self, data: bytes) -> None:
        """Bytes read from the pipe. gRPC writes a record (with its
        continuation lines) in one write(), so a read ending on a newline
        ends a record: it is handled then, not when the next one comes."""
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            self._line(line + b"\n")
        if not self._partial:
            self._flush()

    def _line(self, line: bytes) -> None:
        if _HEADER.match(line):
            self._flush()
            self._pending = [line]
        elif self._pending:
            self._pending.append(line)
        elif self._forward_orphans:
            self._write(line)

    def _flush(self) -> None:
        if not self._pending:
            return
        lines, self._pending = self._pending, []
        m = _HEADER.match(lines[0])
        assert m is not None
        severity, tid = _SEVERITY[m.group(1).decode()], m.group(2).decode()
        message = (lines[0][m.end():] + b"".join(lines[1:])).decode("utf-8", "replace")
        related, failed = self.parser.record(tid, message)
        if failed is not None:
            self.handshakes.observe(failed)
        if "Log level INFO is not suitable for production" in message:
            forward = False                   # we asked for INFO, not the user
        elif related:
            forward = self.forward_handshakes and severity >= self.forward_from
        else:
            forward = severity >= self.forward_from
        self._forward_orphans = forward
        if forward:
            self._write(b"".join(lines))

    def _write(self, data: bytes) -> None:
        try:
            os.write(self.real_fd, data)
        except OSError:
            pass


_installed: StderrCapture | None = None


def install(listen_port: int = 0) -> HandshakeLog | None:
    """`spanrec controller` serving TLS, before grpc is imported: trace
    handshakes and log the failed ones. None (and a warning) when grpc core
    already read its environment."""
    global _installed
    if _installed is not None:
        return _installed.handshakes
    if "grpc._cython.cygrpc" in sys.modules:
        log.warning("failed TLS handshakes are not logged: gRPC was initialised before")
        return None
    verbosity = os.environ.get("GRPC_VERBOSITY", "ERROR")
    trace = os.environ.get("GRPC_TRACE", "")
    tracers = {t.strip() for t in trace.split(",")}
    os.environ["GRPC_VERBOSITY"] = "INFO"
    if not tracers & {"handshaker", "all"}:
        os.environ["GRPC_TRACE"] = f"{trace},handshaker" if trace.strip() else "handshaker"
    handshakes = HandshakeLog({listen_port} if listen_port else set())
    capture = StderrCapture(handshakes, forward_from=_threshold(verbosity),
                            forward_handshakes=bool(tracers & {"handshaker", "all"}))
    old = sys.stderr
    real = capture.start()
    sys.stderr = real
    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger))]
    for lg in loggers:
        for h in lg.handlers:
            if isinstance(h, logging.StreamHandler) and h.stream in (old, sys.__stderr__):
                h.setStream(real)
    _installed = capture
    return handshakes


def listening(port: int) -> None:
    """The port the controller bound (when --listen gave port 0)."""
    if _installed is not None and port:
        _installed.handshakes.ports.add(port)


def failed_total() -> int:
    """Failed TLS handshakes on the controller's ports since start (0: not installed)."""
    return _installed.handshakes.total if _installed is not None else 0

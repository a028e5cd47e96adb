"""Packet sources: live libpcap capture and capture-file replay behind one interface.

Why one interface (heplify's ``PacketSource``): everything after capture
(classification, batching, sending) is shared, so every test of it runs
offline on files while production reads an interface.

A source yields *batches* ``list[(ts_ns, data)]`` in capture order, never
single packets: per-call overhead in Python is what limits a sensor, and the
gRPC link sends batches anyway. Live capture yields ``[]`` at least every
``idle_s`` (200 ms) on a quiet link so the consumer can send heartbeats.

Live capture design (measured, see ``scripts/bench-capture``): python-libpcap
``Sniff`` with immediate mode OFF and a short timeout (10 ms). Immediate mode
makes libpcap use fixed-size ring frames of ``snaplen`` bytes so its 2 MiB
ring holds only a few dozen 64 KiB frames; without it TPACKET_V3 packs frames
by their real size and the timeout bounds the latency. A dedicated daemon
thread does nothing but iterate ``Sniff.capture()`` (which releases the GIL
inside ``pcap_next``) and ``deque.append`` each packet tuple as is; the
consumer pops up to ``max_batch`` at a time, converts timestamps, and sleeps
``poll_s`` (5 ms) between batches so the reader drains the ring without GIL
hand-offs. A ``deque`` is used because its append/popleft are atomic: no
lock and no ``queue.Queue`` per packet. The reader cannot batch locally: on
an idle link ``pcap_next`` blocks in libpcap (an empty TPACKET_V3 block never
times out), so anything it held back would be stranded.

Limits (measured, see the report of scripts/bench-capture): libpcap's ring
is 2 MiB (this binding cannot change it), about 7,000 RTP-sized frames, so
any stall of the reader longer than ring/rate (~45 ms at 150 k packets/s)
drops packets in the kernel; they are counted in ``stats().kernel_drops``.
Every other busy Python thread in the process delays the reader (it needs
the GIL back after each ``pcap_next``).
"""
from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from os import PathLike
from typing import Protocol

from protocols.pcapfile import CaptureFileError, read_frames
from sensor.bpf import PcapProbeError, default_bpf, probe

__all__ = ["CaptureError", "CaptureStats", "PacketSource", "LiveCapture", "FileReplay"]

Frame = tuple[int, bytes]


class CaptureError(Exception):
    """A capture could not be opened or failed; the message names interface/filter/file."""


@dataclass(frozen=True, slots=True)
class CaptureStats:
    """Counters of a source. ``backlog_drops``: packets libpcap delivered but the
    consumer was too far behind to hold (bounded memory); kernel drops are the
    ring overflowing, interface drops the NIC's own."""

    captured: int = 0
    kernel_drops: int = 0
    interface_drops: int = 0
    backlog_drops: int = 0


class PacketSource(Protocol):
    linktype: int

    def batches(self) -> Iterator[list[Frame]]: ...

    def stats(self) -> CaptureStats: ...

    def close(self) -> None: ...


class LiveCapture:
    """Capture from a network interface with python-libpcap on a reader thread.

    The interface and the filter are checked first through libpcap directly
    (:mod:`sensor.bpf`) so errors carry libpcap's own text and the link type
    is libpcap's ``pcap_datalink`` (Ethernet for ethernet, veth and Linux
    loopback; raw IP for tun; Linux cooked for ``any``). ``bpf=None`` means
    the VoIP prefilter for that link type (``sensor.bpf.default_bpf``); ``""``
    captures everything.

    ``close()`` stops delivery at once and never blocks: the reader thread is
    a daemon left inside ``pcap_next`` until the next packet or process exit,
    because closing a pcap handle under a running read is unsafe.
    """

    def __init__(self, interface: str, bpf: str | None, snaplen: int = 65535, timeout_ms: int = 10,
                 immediate: bool = False, promisc: bool = True, *, max_batch: int = 4096,
                 max_pending: int = 262144, idle_s: float = 0.2, poll_s: float = 0.005) -> None:
        if timeout_ms <= 0:
            raise ValueError("timeout_ms must be > 0: with 0 a quiet link delivers nothing")
        try:
            from pylibpcap.base import Sniff
            from pylibpcap.exception import LibpcapError
        except ImportError as exc:  # pragma: no cover - dependency of the package
            raise CaptureError(f"python-libpcap is not installed: {exc}") from exc
        try:
            probed = probe(interface, "", snaplen)
        except PcapProbeError as exc:
            raise CaptureError(f"cannot capture on interface {interface!r}: {exc}") from exc
        if bpf is None:
            bpf = default_bpf(probed.linktype)
        if bpf:
            try:
                probe(interface, bpf, snaplen)
            except PcapProbeError as exc:
                raise CaptureError(f"bad capture filter {bpf!r} on {interface!r}: {exc}") from exc
        self.interface = interface
        self.bpf = bpf
        self.linktype: int = probed.linktype
        try:
            self._sniff = Sniff(interface, count=-1, promisc=int(promisc), snaplen=snaplen,
                                timeout=timeout_ms, filters=bpf, immediate_mode=int(immediate))
        except LibpcapError as exc:
            raise CaptureError(f"cannot open capture on {interface!r} with filter {bpf!r}: "
                               f"{exc or 'libpcap error'}") from exc
        self._pending: deque[tuple[int, float, bytes]] = deque()
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._idle_s = idle_s
        self._poll_s = poll_s
        self._closed = False
        self._reader_error: BaseException | None = None
        self._popped = 0  # counted by the consumer: the reader does nothing but append
        self._backlog_drops = 0
        self._thread = threading.Thread(target=self._reader, name=f"pcap-{interface}", daemon=True)
        self._thread.start()

    def _reader(self) -> None:
        """Only read and append: the one loop that must keep up with the wire."""
        pending = self._pending
        append = pending.append
        limit = self._max_pending
        try:
            for pkt in self._sniff.capture():
                if self._closed:
                    break
                if pkt[0]:  # (0, 0, b"") is a timeout
                    if len(pending) < limit:
                        append(pkt)
                    else:
                        self._backlog_drops += 1
        except BaseException as exc:  # reported by batches(), never lost in a thread
            self._reader_error = exc

    def batches(self) -> Iterator[list[Frame]]:
        pending = self._pending
        popleft = pending.popleft
        last = time.monotonic()
        while not self._closed:
            n = len(pending)
            if n:
                if n > self._max_batch:
                    n = self._max_batch
                out: list[Frame] = []
                add = out.append
                for _ in range(n):
                    pkt = popleft()
                    add((round(pkt[1] * 1e6) * 1000, pkt[2]))  # libpcap gives µs
                self._popped += n
                yield out
                last = time.monotonic()
                if n < self._max_batch:
                    # Let the reader drain the ring alone for a moment: while this
                    # thread is runnable, every GIL release the reader makes inside
                    # pcap_next hands the GIL over here for up to the switch
                    # interval (5 ms), so it would read about one packet per switch.
                    time.sleep(self._poll_s)
                continue
            if self._reader_error is not None:
                raise CaptureError(f"capture on {self.interface!r} failed: "
                                   f"{self._reader_error!r}") from self._reader_error
            now = time.monotonic()
            if now - last >= self._idle_s:
                yield []
                last = time.monotonic()
            else:
                time.sleep(self._poll_s)

    def stats(self) -> CaptureStats:
        try:
            st = self._sniff.stats()
            kdrop, ifdrop = int(st.ps_drop), int(st.ps_ifdrop)
        except Exception:  # handle gone or stats unsupported: report what we know
            kdrop = ifdrop = 0
        captured = self._popped + len(self._pending) + self._backlog_drops
        return CaptureStats(captured=captured, kernel_drops=kdrop, interface_drops=ifdrop,
                            backlog_drops=self._backlog_drops)

    def close(self) -> None:
        self._closed = True
        self._pending.clear()


class FileReplay:
    """Replay a pcap/pcapng file (via ``protocols.pcapfile.read_frames``) in batches.

    ``linktype`` is the link type of the frames of the batch just yielded. A
    pcapng file whose interfaces have different link types gets a batch
    boundary wherever the link type changes, and ``linktype`` is updated
    before the first batch of the new type is yielded, so a consumer reading
    ``source.linktype`` next to each batch always decodes correctly.

    A truncated or corrupt file yields every good frame first, then raises
    ``CaptureFileError`` from ``batches()`` (the sensor reports it).

    ``realtime=True`` paces delivery like the capture: a frame is yielded when
    its capture time, relative to the first paced frame, has elapsed on the
    monotonic clock. Frames are yielded as soon as they are due (a batch holds
    what became due together), and ``[]`` at least every ``idle_s`` while the
    file is idle, like live capture. ``fast_frames``: the first N frames are
    delivered at once, unpaced and never in a batch with later frames (a
    resumed replay runs them through the classifier only, to learn SDP).

    ``clock_ns``: after each yield, no frame older than this is still to come
    (the newest frame yielded; in real time, the replay clock while idle).
    """

    def __init__(self, path: str | PathLike[str], batch_size: int = 256, *,
                 realtime: bool = False, fast_frames: int = 0, idle_s: float = 0.2) -> None:
        self.path = path
        self._batch_size = batch_size
        self._realtime = realtime
        self._fast_frames = fast_frames
        self._idle_s = idle_s
        self._frames = read_frames(path)
        self._first: tuple[int, int, bytes] | None = None
        self._error: CaptureFileError | None = None
        self._count = 0
        self._closed = False
        self.linktype: int = 1
        self.clock_ns = 0
        try:  # peek so linktype is right before the first batch
            self._first = next(self._frames)
            self.linktype = self._first[1]
        except StopIteration:
            pass
        except CaptureFileError as exc:
            self._error = exc
        except OSError as exc:
            raise CaptureError(f"cannot read capture file {path}: {exc.strerror or exc}") from exc

    def _all(self) -> Iterator[tuple[int, int, bytes]]:
        assert self._first is not None
        yield self._first
        yield from self._frames

    def batches(self) -> Iterator[list[Frame]]:
        if self._error is not None:
            raise self._error
        if self._first is None:
            return
        size = self._batch_size
        current = self._first[1]
        batch: list[Frame] = []
        index = 0
        fast = self._fast_frames
        realtime = self._realtime
        anchor_wall = anchor_ts = 0
        last_yield = time.monotonic()
        try:
            for ts, lt, data in self._all():
                if self._closed:
                    return
                if realtime and index >= fast:
                    if index == fast:       # pacing starts at the first paced frame
                        if batch:
                            yield self._out(batch)
                            batch = []
                        anchor_wall, anchor_ts = time.monotonic(), ts
                    due = anchor_wall + (ts - anchor_ts) / 1e9
                    while True:
                        now = time.monotonic()
                        if now >= due or self._closed:
                            break
                        # not due yet: hand over what is due, then wait (an empty
                        # batch every idle_s while the file is idle)
                        clock = anchor_ts + int((now - anchor_wall) * 1e9)
                        if batch:
                            yield self._out(batch, min(clock, ts - 1))
                            batch = []
                            last_yield = time.monotonic()
                        elif now - last_yield >= self._idle_s:
                            self.clock_ns = max(self.clock_ns, min(clock, ts - 1))
                            yield []
                            last_yield = time.monotonic()
                        else:
                            time.sleep(min(due - now, self._idle_s - (now - last_yield)))
                elif index == fast and fast and batch:
                    yield self._out(batch)   # the fast part never shares a batch
                    batch = []
                if lt != current or len(batch) >= size:
                    if batch:
                        yield self._out(batch)
                        batch = []
                        last_yield = time.monotonic()
                    if lt != current:
                        current = lt
                        self.linktype = lt
                batch.append((ts, data))
                index += 1
        except CaptureFileError:
            if batch and not self._closed:  # the good frames first, then the error
                yield self._out(batch)
            raise
        if batch and not self._closed:
            yield self._out(batch)

    def _out(self, batch: list[Frame], clock: int = 0) -> list[Frame]:
        self._count += len(batch)
        self.clock_ns = max(self.clock_ns, batch[-1][0], clock)
        return batch

    def stats(self) -> CaptureStats:
        return CaptureStats(captured=self._count)

    def close(self) -> None:
        self._closed = True
        try:
            self._frames.close()
        except ValueError:  # being iterated right now (another thread): the flag stops it
            pass

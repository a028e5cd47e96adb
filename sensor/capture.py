"""Packet sources: live libpcap capture and capture-file replay behind one interface.

Why one interface (heplify's ``PacketSource``): everything after capture
(classification, batching, sending) is shared, so every test of it runs
offline on files while production reads an interface.

A source yields *batches* ``list[(ts_ns, data)]`` in capture order, never
single packets: per-call overhead in Python is what limits a sensor, and the
gRPC link sends batches anyway. Live capture yields ``[]`` at least every
``idle_s`` (200 ms) on a quiet link so the consumer can send heartbeats.

Live capture design (issue #13, sensor/libpcap.py): libpcap's own loop, in C,
writes pcap records into a pipe from a thread that holds no GIL
(`pcap_loop` with `pcap_dump` as its callback); `batches()` reads the pipe
in chunks of up to 1 MiB and cuts them into frames (one slice per frame).
Python work (classification, gRPC, garbage collection) never delays the
capture loop; a stall of the Python side fills the pipe, then the kernel
ring, whose size is set (`buffer_bytes`, default 64 MiB; libpcap's default
is 2 MiB). Kernel and interface drops come from `pcap_stats`. Timestamps are
the kernel's, in nanoseconds.

The earlier design (python-libpcap's `Sniff` iterated by a Python thread)
lost packets whenever another Python thread held the GIL and could not size
the ring: docs/DECISIONS.md "Live capture in C".
"""
from __future__ import annotations

import os
import select
import time
from collections.abc import Iterator
from dataclasses import dataclass
from os import PathLike
from typing import Protocol

from protocols.pcapfile import CaptureFileError, read_frames
from sensor.libpcap import FilterError, LibpcapError, LoopCapture, PcapStream

__all__ = ["CaptureError", "CaptureStats", "PacketSource", "LiveCapture", "FileReplay"]

Frame = tuple[int, bytes]

#: kernel ring of a live capture (--capture-buffer-mb): 64 MiB holds a 1 s stall
#: at 10 k packets/s many times over (docs/BENCHMARK.md "Stalls")
DEFAULT_BUFFER_BYTES = 64 << 20
_READ_BYTES = 1 << 20


class CaptureError(Exception):
    """A capture could not be opened or failed; the message names interface/filter/file."""


@dataclass(frozen=True, slots=True)
class CaptureStats:
    """Counters of a source: kernel drops are the ring overflowing (a slow
    consumer backs up into the ring), interface drops the NIC's own.
    ``backlog_drops`` (packets delivered but not held) is 0 since the capture
    loop writes into a pipe; kept for the wire counters."""

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
    """Capture from a network interface: libpcap's own loop in C writes pcap
    records into a pipe (sensor/libpcap.py `LoopCapture`), and `batches()`
    reads the pipe in chunks of up to 1 MiB and yields the frames.

    Errors carry libpcap's own text and the link type is libpcap's
    ``pcap_datalink`` (Ethernet for ethernet, veth and Linux loopback; raw IP
    for tun; Linux cooked for ``any``). ``bpf=None`` means the VoIP prefilter
    for that link type (``sensor.bpf.default_bpf``); ``""`` captures everything.

    ``buffer_bytes`` is the kernel ring (libpcap's ``pcap_set_buffer_size``):
    with the pipe, what a stall of this process is absorbed by. At a timeout
    of ``timeout_ms`` the kernel hands over a ring block per timeout even when
    it is nearly empty, so the ring lasts blocks x timeout at low rates;
    64 MiB is 512 blocks of 128 KiB (snaplen 65535): 5 s at 10 ms.

    ``close()`` never blocks.
    """

    def __init__(self, interface: str, bpf: str | None, snaplen: int = 65535, timeout_ms: int = 10,
                 immediate: bool = False, promisc: bool = True, *, max_batch: int = 4096,
                 buffer_bytes: int = DEFAULT_BUFFER_BYTES, idle_s: float = 0.2,
                 poll_s: float = 0.01) -> None:
        if timeout_ms <= 0:
            raise ValueError("timeout_ms must be > 0: with 0 a quiet link delivers nothing")
        self.interface = interface
        try:
            self._cap = LoopCapture(interface, bpf, snaplen=snaplen, timeout_ms=timeout_ms,
                                    buffer_bytes=buffer_bytes, promisc=promisc, immediate=immediate)
        except FilterError as exc:
            raise CaptureError(f"bad capture filter {exc.bpf!r} on {interface!r}: {exc}") from exc
        except LibpcapError as exc:
            raise CaptureError(f"cannot capture on interface {interface!r}: {exc}") from exc
        self.bpf = self._cap.bpf
        self.linktype: int = self._cap.linktype
        self._stream = PcapStream()
        self._max_batch = max_batch
        self._idle_s = idle_s
        self._poll_ms = max(1, int(poll_s * 1000))
        self._closed = False
        self._stopping = False

    def batches(self) -> Iterator[list[Frame]]:
        fd = self._cap.fd
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        feed = self._stream.feed
        limit = self._max_batch
        last = time.monotonic()
        while not self._closed:
            if not poller.poll(self._poll_ms):
                now = time.monotonic()
                if now - last >= self._idle_s:
                    yield []
                    last = now
                continue
            try:
                chunk = os.read(fd, _READ_BYTES)
            except OSError as exc:
                if self._closed:
                    return
                raise CaptureError(f"capture on {self.interface!r} failed: {exc}") from exc
            if not chunk:                     # the loop ended
                if self._closed or self._stopping:
                    return
                raise CaptureError(f"capture on {self.interface!r} ended: "
                                   f"{self._cap.error or 'libpcap loop stopped'}")
            try:
                frames = feed(chunk)
            except LibpcapError as exc:
                raise CaptureError(f"capture on {self.interface!r}: {exc}") from exc
            if not frames:
                continue
            for i in range(0, len(frames), limit):
                yield frames[i:i + limit] if len(frames) > limit else frames
            last = time.monotonic()

    def stats(self) -> CaptureStats:
        c = self._cap.counters()
        return CaptureStats(captured=self._stream.frames, kernel_drops=c.kernel_drops,
                            interface_drops=c.interface_drops, backlog_drops=0)

    def stop(self) -> None:
        """Capture nothing more; `batches()` still yields what was captured,
        then ends (a filter change: sensor/refilter.py)."""
        self._stopping = True
        self._cap.stop()

    def close(self) -> None:
        self._closed = True
        self._cap.close()


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

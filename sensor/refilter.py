"""A live capture whose BPF filter can change while it runs (runtime config
from etcd), without a restart and without a gap.

A running libpcap loop cannot safely take a new filter (on Linux
`pcap_setfilter` also resets the ring the loop is reading), so a change opens a
second handle with the new filter first and closes the old one after: for a
moment both capture, and the controller's dedup drops the copies (same
datagram, same sensor, microseconds apart). A filter that libpcap refuses
keeps the old one and is reported; counters add up across handles.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

from sensor.capture import CaptureError, CaptureStats, LiveCapture

log = logging.getLogger("spanrec.sensor.capture")


class RefilterableCapture:
    """`PacketSource` over a `LiveCapture`, with `set_filter()` from any thread."""

    def __init__(self, interface: str, bpf: str | None, **options) -> None:
        self.interface = interface
        self.options = options
        self.bpf = bpf
        self._live = LiveCapture(interface, bpf, **options)
        self.linktype = self._live.linktype
        self._pending: list[str | None] = []
        self._lock = threading.Lock()
        self._base = CaptureStats()
        self.filter_errors = 0

    def set_filter(self, bpf: str | None) -> None:
        """Ask for a new filter (None: the default VoIP filter); applied between batches."""
        with self._lock:
            self._pending.append(bpf)

    def batches(self) -> Iterator[list[tuple[int, bytes]]]:
        while True:
            for frames in self._live.batches():
                yield frames
                if self._pending:
                    break
            else:
                return                          # the capture ended
            with self._lock:
                bpf = self._pending[-1]
                self._pending.clear()
            if bpf == self.bpf:
                continue
            try:
                new = LiveCapture(self.interface, bpf, **self.options)
            except CaptureError as exc:
                self.filter_errors += 1
                log.error("new capture filter refused; keeping the old one",
                          extra={"bpf": bpf, "error": str(exc)})
                continue
            old, self._live = self._live, new
            for frames in _drain(old):          # what the old handle still holds
                yield frames
            s = old.stats()
            self._base = CaptureStats(self._base.captured + s.captured,
                                      self._base.kernel_drops + s.kernel_drops,
                                      self._base.interface_drops + s.interface_drops,
                                      self._base.backlog_drops + s.backlog_drops)
            old.close()
            log.info("capture filter changed", extra={"interface": self.interface, "bpf": bpf})
            self.bpf = bpf

    def stats(self) -> CaptureStats:
        s, b = self._live.stats(), self._base
        return CaptureStats(b.captured + s.captured, b.kernel_drops + s.kernel_drops,
                            b.interface_drops + s.interface_drops, b.backlog_drops + s.backlog_drops)

    def close(self) -> None:
        self._live.close()


def _drain(capture: LiveCapture) -> Iterator[list[tuple[int, bytes]]]:
    """What the old handle captured before it stopped (the new one captures
    already): its batches until the end of its pipe. (Draining "until the first
    idle tick" never ended while traffic kept coming.)"""
    capture.stop()
    for frames in capture.batches():
        if frames:
            yield frames

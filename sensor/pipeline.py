"""The sensor's one loop: capture -> classify -> batch -> send.

Live capture and file replay are the same after `PacketSource.batches()`.
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from proto import sensor_pb2
from protocols.pcapfile import CaptureFileError
from sensor.capture import CaptureError, FileReplay, LiveCapture, PacketSource
from sensor.classify import Classifier
from sensor.sender import ControllerUnreachable, Sender

log = logging.getLogger("spanrec.sensor")


@dataclass
class SensorOptions:
    sensor_id: str
    controller: str | None
    site: str = ""
    interface: str | None = None
    pcap: str | None = None
    bpf: str | None = None
    snaplen: int = 65535
    timeout_ms: int = 10
    connect_timeout_s: float | None = None
    max_batches: int = 4096
    spool_dir: str | None = None          # disk spool of unacknowledged batches
    spool_max_bytes: int = 1 << 30
    realtime: bool = False                # pace a replay like the capture
    etcd: str | None = None               # find the controller in the registry
    etcd_prefix: str = "/spanrec/"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    insecure: bool = False


class SensorFailed(Exception):
    """The sensor could not do its job; the message says why, in one line."""


def open_source(opts: SensorOptions) -> PacketSource:
    if opts.pcap:
        if not os.path.isfile(opts.pcap):
            raise SensorFailed(f"capture file not found: {opts.pcap}")
        return FileReplay(opts.pcap)
    assert opts.interface
    try:
        # bpf=None lets the capture pick the default filter for the link type
        return LiveCapture(opts.interface, opts.bpf,
                           snaplen=opts.snaplen, timeout_ms=opts.timeout_ms)
    except CaptureError as exc:
        raise SensorFailed(str(exc)) from exc


def run_sensor(opts: SensorOptions, stop: threading.Event | None = None) -> str:
    """Run until the source ends (replay) or `stop` is set (live).

    Returns the capture error text ("" when the source ended cleanly) after
    the controller has confirmed everything; raises SensorFailed when the
    controller cannot be reached.
    """
    stop = stop or threading.Event()
    source = open_source(opts)
    classifier = Classifier()
    replay_total = os.path.getsize(opts.pcap) if opts.pcap else 0
    replay_bytes = [0]

    def stats() -> sensor_pb2.Counters:
        cap = source.stats()
        c = classifier.counters
        return sensor_pb2.Counters(
            captured=c.seen, filtered=c.filtered, decode_errors=c.decode_errors,
            kernel_drops=cap.kernel_drops, interface_drops=cap.interface_drops,
            backlog_drops=cap.backlog_drops)

    mode = "replay" if opts.pcap else "live"
    sender = Sender(
        opts.controller, opts.sensor_id, site=opts.site, mode=mode,
        interfaces=(opts.interface,) if opts.interface else (),
        connect_timeout_s=opts.connect_timeout_s, max_batches=opts.max_batches,
        stats=stats, progress=(lambda: (replay_bytes[0], replay_total)) if opts.pcap else None,
    )
    sender.start()
    error = ""
    try:
        for frames in source.batches():
            if stop.is_set() or sender.done:
                break
            if not frames:
                continue
            replay_bytes[0] += sum(len(f[1]) for f in frames) + 16 * len(frames)
            accepted = classifier.accept_batch(source.linktype, frames)
            sender.submit(source.linktype, accepted)
    except CaptureFileError as exc:
        error = str(exc)
        log.error("capture file error; everything before it was sent", extra={"error": error})
    finally:
        if opts.pcap:
            replay_bytes[0] = replay_total
        sender.finish(error)
    try:
        if mode == "replay":
            while not sender.wait_done(0.5):
                if stop.is_set():
                    break
        else:
            stop.wait()
            sender.stop()
    except ControllerUnreachable as exc:
        raise SensorFailed(str(exc)) from exc
    finally:
        sender.stop()
        source.close()
    return error

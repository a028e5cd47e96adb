"""The sensor's one loop: capture -> classify -> batch -> send.

Live capture and file replay are the same after `PacketSource.batches()`.

With `spool_dir`, every batch goes through the disk spool
`<spool_dir>/<sensor_id>/` (sensor/spool.py) before it is sent. A restarted
sensor resends what its spool holds first. A restarted *replay* of the same
file (same path, size and mtime) also continues after the last spooled frame
instead of starting again: the frames before it go through the classifier only
(so SDP-learned media ports are known again), unpaced and not sent. A replay
that the controller confirmed as complete clears that state, so running the
same replay again starts from the beginning.
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proto import sensor_pb2
from protocols.pcapfile import CaptureFileError
from sensor.capture import CaptureError, FileReplay, LiveCapture, PacketSource
from sensor.classify import Classifier
from sensor.refilter import RefilterableCapture
from sensor.sender import VERSION, ControllerRefused, ControllerUnreachable, Sender
from sensor.spool import Spool, SpoolError
from transport.tls import Security

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
    rtp_heuristics: bool = True           # forward RTP recognised without SDP (sensor.classify)
    etcd_security: Any = None             # registry.EtcdSecurity (TLS, credentials) for --etcd


class SensorFailed(Exception):
    """The sensor could not do its job; the message says why, in one line."""


def replay_identity(path: str) -> dict:
    """What a replay spool belongs to: a resumed replay must read the same file."""
    st = os.stat(path)
    return {"kind": "replay", "path": os.path.abspath(path), "size": st.st_size,
            "mtime_ns": st.st_mtime_ns}


def open_spool(opts: SensorOptions) -> tuple[Spool | None, int]:
    """The sensor's spool and, for a replay of the same file, the frames to skip."""
    if not opts.spool_dir:
        return None, 0
    try:
        spool = Spool(Path(opts.spool_dir) / opts.sensor_id, opts.spool_max_bytes)
    except SpoolError as exc:
        raise SensorFailed(str(exc)) from exc
    if spool.torn_records:
        log.warning("spool had a cut record (sensor killed while writing); truncated",
                    extra={"spool": str(spool.dir), "torn_records": spool.torn_records})
    resume = 0
    old = spool.source
    if opts.pcap:
        ident = replay_identity(opts.pcap)
        if old == ident:
            resume = spool.cursor
        else:
            if old is not None and old.get("kind") == "replay" and len(spool):
                # a replay is reproducible from its file; its leftovers never go
                # into another file's replay
                log.warning("spool holds batches of another replay; discarded",
                            extra={"spool": str(spool.dir), "file": old.get("path"),
                                   "batches": spool.clear()})
            spool.set_source(ident)
    elif old is not None:
        spool.set_source(None)         # live: leftovers are resent, no resume state
    if len(spool) or resume:
        log.info("resuming from the spool", extra={
            "spool": str(spool.dir), "batches": len(spool), "bytes": spool.depth_bytes,
            "resume_after_frames": resume})
    return spool, resume


def start_registry(opts: SensorOptions):
    """Registers the sensor in etcd (leased, kept alive in the background) when
    --etcd is given; its locator then tells the sender where the controller is.
    etcd being away never stops the capture: the registry reports 'degraded'."""
    if not opts.etcd:
        return None
    from registry import EtcdSecurity, EtcdSecurityError, MemberRecord, Registry, parse_endpoints
    endpoints = parse_endpoints(opts.etcd)
    try:
        security = opts.etcd_security or EtcdSecurity.from_options(endpoints)
    except EtcdSecurityError as exc:
        raise SensorFailed(str(exc)) from None
    reg = Registry(endpoints, opts.etcd_prefix, MemberRecord(
        id=opts.sensor_id, role="sensor", site=opts.site, version=VERSION,
        interfaces=(opts.interface,) if opts.interface else ()), security=security)
    reg.start(wait=2.0)
    return reg


def watch_filter(registry, source: RefilterableCapture, flag_bpf: str | None) -> None:
    """Runtime config: `bpf` in etcd /spanrec/config/sensor (JSON) replaces the
    capture filter while the sensor runs; removing it restores --bpf (or the
    default). The last value seen is kept while etcd is away."""
    config = registry.config("sensor")

    def apply(values: dict) -> None:
        bpf = values.get("bpf") if isinstance(values, dict) else None
        source.set_filter(bpf if isinstance(bpf, str) and bpf.strip() else flag_bpf)

    config.on_change(apply)
    current = config.get("bpf")
    if current:
        apply({"bpf": current})


def open_source(opts: SensorOptions, fast_frames: int = 0) -> PacketSource:
    if opts.pcap:
        if not os.path.isfile(opts.pcap):
            raise SensorFailed(f"capture file not found: {opts.pcap}")
        return FileReplay(opts.pcap, realtime=opts.realtime, fast_frames=fast_frames)
    assert opts.interface
    try:
        # bpf=None lets the capture pick the default filter for the link type
        if opts.etcd:   # the filter may change at run time (etcd /spanrec/config/sensor)
            return RefilterableCapture(opts.interface, opts.bpf,
                                       snaplen=opts.snaplen, timeout_ms=opts.timeout_ms)
        return LiveCapture(opts.interface, opts.bpf,
                           snaplen=opts.snaplen, timeout_ms=opts.timeout_ms)
    except CaptureError as exc:
        raise SensorFailed(str(exc)) from exc


def heartbeat_counters(c: Any, cap: Any) -> sensor_pb2.Counters:
    """A heartbeat's Counters from the classifier's counters `c` and the
    capture's stats `cap` (kernel, interface and backlog drops)."""
    return sensor_pb2.Counters(
        # filtered_settled: packets held for RTP probing are not counted
        # yet (they may be forwarded), so the counter never goes down
        captured=c.seen, filtered=c.filtered_settled, decode_errors=c.decode_errors,
        kernel_drops=cap.kernel_drops, interface_drops=cap.interface_drops,
        backlog_drops=cap.backlog_drops, expected_flows=c.expected_flows,
        rtp_heuristic_flows=c.rtp_heuristic_flows,
        rtp_heuristic_packets=c.rtp_heuristic_packets,
        sip_tls_flows=c.sip_tls_flows, sip_tls_packets=c.sip_tls_packets,
        sdp_endpoints_refused=c.sdp_endpoints_refused, media_not_rtp=c.media_not_rtp)


def run_sensor(opts: SensorOptions, stop: threading.Event | None = None) -> str:
    """Run until the source ends (replay) or `stop` is set (live).

    Returns the capture error text ("" when the source ended cleanly) after
    the controller has confirmed everything; raises SensorFailed when the
    controller cannot be reached.
    """
    stop = stop or threading.Event()
    if opts.pcap and not os.path.isfile(opts.pcap):
        raise SensorFailed(f"capture file not found: {opts.pcap}")
    spool, resume = open_spool(opts)
    try:
        source = open_source(opts, fast_frames=resume)
    except BaseException:
        if spool is not None:
            spool.close()
        raise
    classifier = Classifier(rtp_heuristics=opts.rtp_heuristics)
    replay_total = os.path.getsize(opts.pcap) if opts.pcap else 0
    replay_bytes = [0]

    def stats() -> sensor_pb2.Counters:
        return heartbeat_counters(classifier.counters, source.stats())

    mode = "replay" if opts.pcap else "live"
    registry = start_registry(opts)
    if registry is not None and isinstance(source, RefilterableCapture):
        watch_filter(registry, source, opts.bpf)
    sender = Sender(
        opts.controller or "", opts.sensor_id, site=opts.site, mode=mode,
        resolve=registry.locator().current if registry is not None and not opts.controller else None,
        on_unusable=registry.locator().report_failure if registry is not None and not opts.controller else None,
        interfaces=(opts.interface,) if opts.interface else (),
        connect_timeout_s=opts.connect_timeout_s, max_batches=opts.max_batches,
        stats=stats, progress=(lambda: (replay_bytes[0], replay_total)) if opts.pcap else None,
        # mTLS, or plain text only with opts.insecure (transport.tls.Security)
        channel_credentials=Security.from_settings(opts).channel_credentials(),
        spool=spool,
        on_expect=classifier.expect,      # the controller's media hints, queued thread-safely
    )
    sender.start()
    error = ""
    consumed = 0          # frames read from the source: the spool's resume cursor
    replay = isinstance(source, FileReplay)
    try:
        for frames in source.batches():
            if stop.is_set() or sender.done:
                break
            if replay:
                sender.advance_clock(source.clock_ns)
            if not frames:
                continue
            consumed += len(frames)
            replay_bytes[0] += sum(len(f[1]) for f in frames) + 16 * len(frames)
            accepted = classifier.accept_batch(source.linktype, frames)
            if consumed <= resume:
                continue          # sent by the previous run (spooled): classifier state only
            sender.submit(source.linktype, accepted, cursor=consumed if replay else 0)
            if replay:
                sender.advance_clock(source.clock_ns)
            if registry is not None:
                c = sender.counters_pb()       # throttled by the registry (every 2 s at most)
                registry.update(captured=c.captured, forwarded=c.forwarded,
                                queue_drops=c.queue_drops, kernel_drops=c.kernel_drops)
    except CaptureFileError as exc:
        error = str(exc)
        log.error("capture file error; everything before it was sent", extra={"error": error})
    finally:
        if opts.pcap:
            replay_bytes[0] = replay_total
        classifier.flush()     # held probe packets: filtered (before the end's counters)
        sender.finish(error)
    completed = False
    try:
        if mode == "replay":
            while not sender.wait_done(0.5):
                if stop.is_set():
                    break
            completed = sender.done and len(sender.outbox) == 0
        else:
            while not stop.wait(0.5):
                if sender.done:               # the link gave up: say why
                    sender.wait_done(0)
                    break
            sender.stop()
    except ControllerRefused as exc:
        raise SensorFailed(str(exc)) from exc
    except ControllerUnreachable as exc:
        raise SensorFailed(
            f"{exc}" + (f"; {len(spool)} batch(es) kept in {spool.dir} for the next run"
                        if spool is not None and len(spool) else "")) from exc
    finally:
        sender.stop()
        source.close()
        if registry is not None:
            registry.stop()
        if spool is not None:
            if completed:
                spool.set_source(None)     # the replay is done: a rerun starts from scratch
            spool.close(remove_if_empty=True)
    return error

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

Sharded controller (issue #12; `controller` is ``ID=HOST:PORT,...``): one
`Sender` per shard (own stream, seqs, acks, and spool folder
`<spool_dir>/<sensor_id>/<shard_id>/` with its own resume cursor), and a
`ShardRouter` (sensor/route.py) that sends each forwarded frame to the shard
owning its call, or to every shard (broadcast batches). With one controller
none of this exists: no router, no extra decode, `Hello.ring` empty.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proto import sensor_pb2
from protocols.pcapfile import CaptureFileError
from sensor.capture import CaptureError, FileReplay, LiveCapture, PacketSource
from sensor.classify import Classifier
from transport.batches import unpack as unpack_batch
from sensor.refilter import RefilterableCapture
from sensor.route import parse_shards
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
    buffer_bytes: int = 64 << 20          # kernel capture ring (libpcap's buffer size)
    compression: str = "none"             # the link (transport/batches.py): "none", "gzip" or "zstd"
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
    # routing keys of legs naming another leg (protocols/callkey.py); must match the
    # controller shards' --leg-header
    leg_headers: tuple[str, ...] = ("x-call-id", "x-cid")
    # a controller shard whose etcd record vanished stays in the ring this long (registry/shards.py)
    shard_grace_s: float = 300.0


class SensorFailed(Exception):
    """The sensor could not do its job; the message says why, in one line."""


def replay_identity(path: str) -> dict:
    """What a replay spool belongs to: a resumed replay must read the same file."""
    st = os.stat(path)
    return {"kind": "replay", "path": os.path.abspath(path), "size": st.st_size,
            "mtime_ns": st.st_mtime_ns}


def open_spool(opts: SensorOptions, shard_id: str | None = None) -> tuple[Spool | None, int]:
    """The sensor's spool (a shard's: `<spool_dir>/<sensor_id>/<shard_id>/`) and,
    for a replay of the same file, the frames to skip."""
    if not opts.spool_dir:
        return None, 0
    folder = Path(opts.spool_dir) / opts.sensor_id
    if shard_id is not None:
        folder = folder / shard_id
    try:
        spool = Spool(folder, opts.spool_max_bytes)
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


#: frames a replay sends per batch (a live capture sends what one read of its pipe
#: holds, up to 4096): 1024 rather than 256 cut the controller's CPU of `spanrec
#: record` on 300 calls x 20 s by ~1 s of ~10 (gRPC, asyncio and ack work per
#: message; docs/BENCHMARK.md)
REPLAY_BATCH = 1024


def open_source(opts: SensorOptions, fast_frames: int = 0, batch_size: int = REPLAY_BATCH) -> PacketSource:
    if opts.pcap:
        if not os.path.isfile(opts.pcap):
            raise SensorFailed(f"capture file not found: {opts.pcap}")
        return FileReplay(opts.pcap, batch_size, realtime=opts.realtime, fast_frames=fast_frames)
    assert opts.interface
    try:
        # bpf=None lets the capture pick the default filter for the link type
        if opts.etcd:   # the filter may change at run time (etcd /spanrec/config/sensor)
            return RefilterableCapture(opts.interface, opts.bpf, snaplen=opts.snaplen,
                                       timeout_ms=opts.timeout_ms, buffer_bytes=opts.buffer_bytes)
        return LiveCapture(opts.interface, opts.bpf, snaplen=opts.snaplen,
                           timeout_ms=opts.timeout_ms, buffer_bytes=opts.buffer_bytes)
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


class ShardedSender:
    """One `Sender` per controller shard, used by `run_sensor` like one Sender.

    `submit` routes a batch (`ShardRouter.batches`): each shard gets its own
    frames and the broadcast ones, in capture order, as batches marked
    broadcast or not. A replay resumed from the spools skips, per shard, the
    frames already spooled for that shard (`resume[i]`: its spool's cursor);
    the router still sees them, so its tables are the same as in the first run.
    Clock, finish and stop go to every shard; the replay is complete when every
    shard confirmed it, and one shard's link failing fails the sensor.

    With a ring kept in etcd (`membership`: () -> (version, shards), registry.shards),
    `sync` (called by the pipeline thread before each batch) applies a new
    membership: the router's ring is updated (calls in progress keep their shard),
    a new shard gets its Sender (`make_sender(shard) -> (Sender, resume)`, its own
    spool folder), and the Sender of a shard removed from the ring is stopped.
    """

    def __init__(self, senders: list[Sender], router: Any, resume: list[int], *,
                 membership: Any = None, make_sender: Any = None) -> None:
        self.senders = senders
        self.router = router
        self.resume = resume
        self.forwarded = 0
        ids = [s.shard_id for s in router.ring.shards]
        self.by_id: dict[str, Sender] = dict(zip(ids, senders))
        self._resume_by_id: dict[str, int] = dict(zip(ids, resume))
        self.membership = membership
        self._make_sender = make_sender
        self._version = membership()[0] if membership is not None else None
        self._started = False
        self._finished: str | None = None
        self.retired: list[Sender] = []
        self.rerouted = 0                   # packets of removed shards sent to their new owners

    def sync(self) -> bool:
        """Apply a new membership from etcd, if any; True when the ring changed."""
        if self.membership is None:
            return False
        version, shards = self.membership()
        if version == self._version:
            return False
        self._version = version
        if not shards:
            log.warning("no controller shard left in etcd: keeping the last ring until one registers")
            return False
        for shard in shards:
            sender = self.by_id.get(shard.shard_id)
            if sender is not None:
                sender.target = shard.address    # used from its next connection on
                continue
            sender, resume = self._make_sender(shard)
            self.by_id[shard.shard_id] = sender
            self._resume_by_id[shard.shard_id] = resume
            if self._started:
                sender.start()
            if self._finished is not None:
                sender.finish(self._finished)
        keep = {s.shard_id for s in shards}
        orphans: list[tuple[int, list[tuple[int, bytes]]]] = []
        for sid in [sid for sid in self.by_id if sid not in keep]:
            sender = self.by_id.pop(sid)
            self._resume_by_id.pop(sid, None)
            sender.stop()
            batches = unacked_batches(sender)
            log.warning("controller shard removed from the ring: its link is closed and what it "
                        "had not acknowledged goes to the shards that own those calls now",
                        extra={"shard_id": sid, "unacked_batches": len(batches),
                               "packets": sum(len(f) for _, f, _b in batches)})
            # its broadcast batches reached every other shard already
            orphans += [(lt, frames) for lt, frames, broadcast in batches if not broadcast]
            self.retired.append(sender)
        self.router.update_ring(shards)
        order = [s.shard_id for s in self.router.ring.shards]
        self.resume = [self._resume_by_id[sid] for sid in order]
        self.senders = [self.by_id[sid] for sid in order]
        for linktype, frames in orphans:      # nothing spooled is lost with its shard
            self.rerouted += len(frames)
            self.submit(linktype, frames)
        log.info("controller shards changed", extra={
            "shards": {s.shard_id: f"{s.address} {s.state}" for s in self.router.ring.shards}})
        return True

    def start(self) -> None:
        self._started = True
        for s in self.senders:
            s.start()

    def submit(self, linktype: int, frames: list[tuple[int, bytes]], cursor: int = 0,
               start_cursor: int = 0) -> None:
        """`cursor`: frames read from the source after this batch (0: live);
        `start_cursor`: before it. Only a shard's last run of the batch carries
        `cursor`, so a sensor killed between two runs resends the batch's runs
        (copies the controller drops) instead of skipping one."""
        if not frames:
            return
        self.forwarded += len(frames)
        for s, runs, resume in zip(self.senders, self.router.batches(linktype, frames), self.resume):
            if cursor and cursor <= resume:
                continue            # spooled for this shard by the previous run
            last = len(runs) - 1
            for j, (broadcast, part) in enumerate(runs):
                s.submit(linktype, part, cursor=cursor if j == last else start_cursor,
                         broadcast=broadcast)

    def advance_clock(self, clock_ns: int) -> None:
        # an idle shard (no packet of this sensor) still sees the clock advance
        for s in self.senders:
            s.advance_clock(clock_ns)

    def finish(self, error: str = "") -> None:
        self._finished = error
        for s in self.senders:
            s.finish(error)

    def stop(self) -> None:
        for s in self.senders + self.retired:
            s.stop()

    @property
    def done(self) -> bool:
        """A link ended: failed (or, after `finish`, confirmed)."""
        return any(s.done for s in self.senders)

    @property
    def complete(self) -> bool:
        return all(s.done for s in self.senders)

    def wait_done(self, timeout: float | None = None) -> bool:
        """Every shard confirmed the end; raises the first link failure."""
        self.sync()
        for s in list(self.senders):
            if s.done:
                s.wait_done(0)          # raises its failure, if any
        deadline = None if timeout is None else time.monotonic() + timeout
        for s in list(self.senders):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not s.wait_done(left):
                return False
        return True

    def unacked(self) -> int:
        return sum(len(s.outbox) for s in self.senders)

    def counters_pb(self) -> sensor_pb2.Counters:
        """Sensor-wide counters (for the registry): frames forwarded once each."""
        c = self.senders[0].counters_pb()
        c.forwarded = self.forwarded
        c.queue_drops = sum(s.outbox.dropped_packets for s in self.senders)
        c.send_queue = self.unacked()
        return c


def unacked_batches(sender: Sender) -> list[tuple[int, list[tuple[int, bytes]], bool]]:
    """(linktype, frames, broadcast) of every batch `sender` holds unacknowledged
    (in memory or in its spool), in order."""
    return outbox_batches(sender.outbox)


def outbox_batches(outbox: Any) -> list[tuple[int, list[tuple[int, bytes]], bool]]:
    """(linktype, frames, broadcast) of every unacknowledged batch of an
    `Outbox` or `SpoolOutbox`, in order."""
    out: list[tuple[int, list[tuple[int, bytes]], bool]] = []
    seq = outbox.acked_seq
    while True:
        items = outbox.after(seq, 256)
        if not items:
            return out
        for item in items:
            msg = item.message
            if isinstance(msg, (bytes, bytearray)):
                msg = sensor_pb2.SensorMessage.FromString(bytes(msg))
            if msg.HasField("batch"):
                f = unpack_batch(msg.batch)
                frames, off = [], 0
                for ts, n in zip(f.timestamps, f.lengths):
                    frames.append((ts, f.data[off:off + n]))
                    off += n
                out.append((f.linktype, frames, f.broadcast))
            seq = item.seq


def reroute_stranded(opts: SensorOptions, ring_ids: set[str] | None, sender: Any) -> int:
    """A live sensor whose controller changed shape between two runs (one
    controller -> shards, shards -> one, a shard gone) finds batches in spool
    folders it no longer sends from: `<spool_dir>/<sensor_id>/` itself (sent to
    one controller) or `<sensor_id>/<shard_id>/` of a shard not in `ring_ids`
    (None: one controller now). They go through `sender` (routed to their calls'
    shards now) before capture starts; then the old folder is emptied. A crash
    between the two sends copies twice (the controller drops them), never none.
    Returns the packets moved."""
    if not opts.spool_dir or opts.pcap:
        return 0
    base = Path(opts.spool_dir) / opts.sensor_id
    folders: list[Path] = []
    if ring_ids is not None:
        folders.append(base)               # what went to one controller
    if base.is_dir():
        folders += sorted(d for d in base.iterdir()
                          if d.is_dir() and (ring_ids is None or d.name not in ring_ids)
                          and any(d.glob("*.seg")))
    moved = 0
    for folder in folders:
        if not any(folder.glob("*.seg")):
            continue
        try:
            spool = Spool(folder, opts.spool_max_bytes)
        except SpoolError as exc:
            log.error("cannot open a spool folder left by another controller layout",
                      extra={"spool": str(folder), "error": str(exc)})
            continue
        try:
            from sensor.sender import SpoolOutbox
            batches = outbox_batches(SpoolOutbox(spool))
            packets = sum(len(frames) for _, frames, _b in batches)
            for linktype, frames, _broadcast in batches:
                sender.submit(linktype, frames)
            if batches:
                log.warning("batches spooled for another controller layout resent to the "
                            "controller's shards now", extra={
                                "spool": str(folder), "batches": len(batches), "packets": packets})
            spool.clear()
            moved += packets
        finally:
            spool.close(remove_if_empty=folder != base)
    return moved


def _split_at(frames: list, start: int, cuts: list[int]) -> list[tuple[list, int]]:
    """`frames` (source positions start+1..) cut after each position in `cuts`:
    [(piece, frames consumed after it)]."""
    end = start + len(frames)
    out = []
    at = start
    for cut in cuts:
        if at < cut < end:
            out.append((frames[at - start:cut - start], cut))
            at = cut
    out.append((frames[at - start:], end))
    return out


def run_sensor(opts: SensorOptions, stop: threading.Event | None = None) -> str:
    """Run until the source ends (replay) or `stop` is set (live).

    Returns the capture error text ("" when the source ended cleanly) after
    the controller has confirmed everything; raises SensorFailed when the
    controller cannot be reached.
    """
    stop = stop or threading.Event()
    if opts.pcap and not os.path.isfile(opts.pcap):
        raise SensorFailed(f"capture file not found: {opts.pcap}")
    try:
        shards = parse_shards(opts.controller) if opts.controller else []
    except ValueError as exc:
        raise SensorFailed(str(exc)) from None
    from registry.ring import Ring, Shard
    ring_shards = [Shard(sid, addr) for sid, addr in shards]
    registry = start_registry(opts)
    watch = None
    if registry is not None and not opts.controller:
        # the controller's shards in etcd (registry/shards.py); none: one controller
        watch = registry.shards(opts.shard_grace_s)
        if not watch.wait_synced(10.0):
            log.warning("etcd did not answer within 10 s: no controller shard list; "
                        "dialling the registered controller")
        ring_shards = watch.current()[1]
        if not ring_shards:
            watch = None
    seed = None
    if opts.controller and len(shards) == 1 and shards[0][0] == shards[0][1]:
        # one address (not ID=HOST:PORT): ask it whether it is one shard of several
        from sensor.discover import MEMBERS_FILE, SeedMembership
        seed = SeedMembership(shards[0][1], Security.from_settings(opts).channel_credentials(),
                              # live sensors only: a finished replay leaves no spool folder
                              saved=Path(opts.spool_dir) / opts.sensor_id / MEMBERS_FILE
                              if opts.spool_dir and not opts.pcap else None)
        learnt = seed.first(min(opts.connect_timeout_s or 5.0, 5.0))
        if len(learnt) > 1:
            ring_shards = learnt
            if seed.leg_headers:
                opts = dataclasses.replace(opts, leg_headers=seed.leg_headers)
            log.info("the controller is sharded: routing calls over its shards", extra={
                "controller": seed.address, "shards": {s.shard_id: s.address for s in learnt}})
        seed.start()
    membership: Any = watch if watch is not None else \
        (seed if seed is not None and len(ring_shards) > 1 else None)
    sharded = len(ring_shards) > 1 or watch is not None
    ring = Ring(ring_shards) if sharded else None
    spools: list[Spool | None] = []
    resumes: list[int] = []
    try:
        for shard in (ring.shards if ring is not None else [None]):
            sp, res = open_spool(opts, shard.shard_id if shard is not None else None)
            spools.append(sp)
            resumes.append(res)
        resume = min(resumes)
        # a replay reads REPLAY_BATCH frames per shard at a time: each shard's stream
        # still gets batches of ~REPLAY_BATCH (gRPC's cost is per message)
        source = open_source(opts, fast_frames=resume,
                             batch_size=REPLAY_BATCH * (len(ring.shards) if ring is not None else 1))
    except BaseException:
        for sp in spools:
            if sp is not None:
                sp.close()
        if registry is not None:
            registry.stop()
        if seed is not None:
            seed.stop()
        raise
    spool = spools[0]
    classifier = Classifier(rtp_heuristics=opts.rtp_heuristics)
    replay_total = os.path.getsize(opts.pcap) if opts.pcap else 0
    replay_bytes = [0]

    def stats() -> sensor_pb2.Counters:
        # Per sensor: every shard's stream carries the same capture counters
        # (only the link ones - forwarded, queue, batches - are the stream's);
        # the controller must not sum them over shards.
        return heartbeat_counters(classifier.counters, source.stats())

    mode = "replay" if opts.pcap else "live"
    if registry is not None and isinstance(source, RefilterableCapture):
        watch_filter(registry, source, opts.bpf)
    common: dict[str, Any] = dict(
        site=opts.site, mode=mode,
        interfaces=(opts.interface,) if opts.interface else (),
        connect_timeout_s=opts.connect_timeout_s, max_batches=opts.max_batches,
        compression=opts.compression, stats=stats, progress=(lambda: (replay_bytes[0], replay_total)) if opts.pcap else None,
        # mTLS, or plain text only with opts.insecure (transport.tls.Security)
        channel_credentials=Security.from_settings(opts).channel_credentials())
    sender: Sender | ShardedSender
    if ring is None:
        sender = Sender(
            shards[0][1] if shards else "", opts.sensor_id,
            resolve=registry.locator().current if registry is not None and not opts.controller else None,
            on_unusable=registry.locator().report_failure if registry is not None and not opts.controller else None,
            spool=spool,
            on_expect=classifier.expect,      # the controller's media hints, queued thread-safely
            **common)
    else:
        from sensor.route import ShardRouter
        router = ShardRouter(ring, opts.leg_headers)
        # Hello.ring: the shard ids of the ring (from etcd: what this sensor knows now)
        ids: Any = membership.ids if membership is not None else tuple(s.shard_id for s in ring.shards)

        def hints(sid: str):
            def on_expect(flows: list[tuple[bytes, int]]) -> None:
                classifier.expect(flows)
                router.expect(sid, flows)   # the announcing shard owns these endpoints
            return on_expect

        def make_sender(shard: Any) -> tuple[Sender, int]:
            """A shard that joined the ring (etcd): its Sender and spool folder."""
            sp, _res = open_spool(opts, shard.shard_id)
            spools.append(sp)
            return Sender(shard.address, opts.sensor_id, spool=sp, on_expect=hints(shard.shard_id),
                          ring=ids, **common), 0

        sender = ShardedSender(
            [Sender(shard.address, opts.sensor_id, spool=spools[i], on_expect=hints(shard.shard_id),
                    ring=ids, **common) for i, shard in enumerate(ring.shards)],
            router, resumes if opts.pcap else [0] * len(resumes),
            membership=membership.current if membership is not None else None,
            make_sender=make_sender)
        log.info("routing calls over controller shards", extra={
            "shards": {s.shard_id: s.address for s in ring.shards},
            "from": "etcd" if watch is not None else "the controller" if seed is not None
            else "--controller"})
    if seed is not None:
        reroute_stranded(opts, {s.shard_id for s in ring.shards} if ring is not None else None, sender)
    sender.start()
    resharded = ""        # one controller at start, shards now: the sensor restarts
    error = ""
    consumed = 0          # frames read from the source: the spool's resume cursor
    replay = isinstance(source, FileReplay)
    cuts = sorted(set(resumes)) if sharded and replay else []
    try:
        for frames in source.batches():
            if stop.is_set() or sender.done:
                break
            if membership is not None:
                sender.sync()        # shards joined, left or came back (etcd, the controller)
            elif seed is not None and len(seed.current()[1]) > 1:
                resharded = ", ".join(seed.ids())
                break
            if replay:
                sender.advance_clock(source.clock_ns)
            if not frames:
                continue
            replay_bytes[0] += sum(len(f[1]) for f in frames) + 16 * len(frames)
            if sharded:
                # a source batch never spans a shard's resume point (per-shard skip)
                start = consumed
                consumed += len(frames)
                for piece, after in (_split_at(frames, start, cuts) if cuts else [(frames, consumed)]):
                    accepted = classifier.accept_batch(source.linktype, piece)
                    sender.submit(source.linktype, accepted, cursor=after if replay else 0,
                                  start_cursor=after - len(piece) if replay else 0)
                    start = after
            else:
                consumed += len(frames)
                accepted = classifier.accept_batch(source.linktype, frames)
                if consumed <= resume:
                    continue      # sent by the previous run (spooled): classifier state only
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
        if resharded:
            pass                              # stopping: the spool keeps what was not sent
        elif mode == "replay":
            while not sender.wait_done(0.5):
                if stop.is_set():
                    break
            if isinstance(sender, ShardedSender):
                completed = sender.complete and sender.unacked() == 0
            else:
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
        held = sum(len(sp) for sp in spools if sp is not None)
        where = spool.dir if len(spools) == 1 and spool is not None else \
            Path(opts.spool_dir or "") / opts.sensor_id
        raise SensorFailed(
            f"{exc}" + (f"; {held} batch(es) kept in {where} for the next run" if held else "")) from exc
    finally:
        sender.stop()
        source.close()
        if registry is not None:
            registry.stop()
        if seed is not None:
            seed.stop()
        for sp in spools:
            if sp is not None:
                if completed:
                    sp.set_source(None)     # the replay is done: a rerun starts from scratch
                sp.close(remove_if_empty=True)
    if resharded:
        raise SensorFailed(
            f"controller {seed.address} is sharded now (shards {resharded}): restart the sensor "
            "to route calls over them (what it spooled is routed then)")
    return error

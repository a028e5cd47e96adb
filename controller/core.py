"""The controller's transport-free pipeline: order -> dedup -> calls -> finalize -> store.

`Recorder` knows nothing of gRPC: the servicer in link.py (and tests) call
`sensor_hello`, `ingest`, `heartbeat`, `end_of_capture` and `tick`.

With a write-ahead log (controller/ingest/wal.py) every batch and sensor event is
logged before it is processed, `ingest` returns only the seq whose log is
durable (cumulative acks), and `recover()` replays the log into a fresh
Recorder after a crash. Recordings already stored before the crash are
remembered ("stored" records) so the replay does not write them again, nor a
partial copy of one whose first packets were in a segment already deleted.
"""
from __future__ import annotations

import inspect
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from controller.calls.engine import CallConfig, CallEngine
from controller.ingest.clock import SensorClock, call_clock
from controller.ingest.sensortime import WallOffset
from controller.ingest.dedup import DedupConfig, Deduplicator
from controller.calls.hints import MediaHints
from controller.calls.finished import iso_time
from controller.output.writer import RecordingWriter
from controller.ingest.sitefilter import SiteNetworks
from controller.ingest.shard import BroadcastFrame, ShardIdentity
from controller.ingest.order import Packet, TimeMerger
from protocols.errors import DecodeError
from protocols.layers import decode
from protocols.fragments import Reassembler
from controller.ingest.wal import BATCH, END, DISCONNECT, HELLO, SNAPSHOT, STORED, WalError, WriteAheadLog
from storage.base import RecordingStore

log = logging.getLogger("spanrec.controller")

_SECOND = 1_000_000_000


@dataclass
class SensorState:
    sensor_id: str
    site: str = ""
    version: str = ""
    mode: str = "live"
    session: str = ""
    acked_seq: int = 0
    connected: bool = False
    ended: bool = False
    end_error: str = ""
    last_seen: float = 0.0          # wall clock, seconds
    counters: dict[str, int] = field(default_factory=dict)
    packets_received: int = 0
    batches_received: int = 0
    replay_bytes: int = 0
    replay_total: int = 0
    clock_ns: int = 0               # newest packet time or heartbeat clock (WAL snapshots)
    durable_seq: int = 0            # highest seq whose write-ahead log record is durable
    unsynced: deque = field(default_factory=deque)   # (wal lsn, seq) not yet durable
    clock: SensorClock = field(init=False)     # capture clock correction (controller/ingest/clock.py)

    wall: WallOffset = field(init=False)       # live sensors: offset onto the controller clock

    def __post_init__(self) -> None:
        self.clock = SensorClock(self.sensor_id)
        self.wall = WallOffset(self.sensor_id)


#: CallEngine.advance takes `elsewhere` (sensors on another timeline) once calls.py has it
_ADVANCE_APART = "elsewhere" in inspect.signature(CallEngine.advance).parameters


class Recorder:
    """Turns packets from sensors into recordings."""

    def __init__(
        self,
        store: RecordingStore,
        *,
        call_config: CallConfig | None = None,
        dedup_config: DedupConfig | None = None,
        expected_sensors: int = 0,
        controller_id: str = "controller",
        wal: WriteAheadLog | None = None,
        wal_horizon_s: float = 10.0,
        wall_clock: bool = False,
        site_networks: SiteNetworks | None = None,
        shard: ShardIdentity | None = None,
    ) -> None:
        self.controller_id = controller_id
        self.hints = MediaHints()
        self.call_config = call_config or CallConfig()
        self.engine = CallEngine(self.call_config)
        self.engine.table.on_new_media = self.hints.add
        self.dedup = Deduplicator(dedup_config or DedupConfig())
        self.fragments = Reassembler()      # IP fragments -> datagrams parsed for SIP/SDP
        self.merger = TimeMerger(expected_sources=expected_sensors)
        self.writer = RecordingWriter(store, on_done=self._written if wal is not None else None)
        self._telemetry = None
        self.sensors: dict[str, SensorState] = {}
        self.decode_errors = 0
        self.bad_batches = 0        # rejected by the link: lengths did not match data
        self.packets_in = 0
        self.peak_active_calls = 0
        self._next_advance = 0
        # live sensors put on the controller's clock, live calls timed out on it
        # (the controller process; transport-free tests feed captures as "live")
        self.wall_clock = wall_clock
        self._next_by_sensor: dict[str, int] = {}   # advances of other timelines
        self._lock = threading.Lock()
        self.all_replays_done = threading.Event()
        # write-ahead log bookkeeping (all unused without a log)
        self.wal = wal
        self._replaying = False
        # capture time kept before the oldest packet still needed: dedup windows,
        # TCP messages dated by their last segment, fragments
        self._horizon_ns = int(wal_horizon_s * _SECOND)
        self._book_lock = threading.Lock()
        self._pending_writes: dict[int, int] = {}      # id(FinishedCall) -> started_ns
        self._stored: dict[str, tuple[int, int]] = {}  # Call-ID -> (started_ns, until_ns)
        self.replay_suppressed = 0  # calls not written again: stored before a crash
        self._replay_until = -1     # newest capture time in the replayed log
        self.recovered: dict[str, Any] = {}
        # address ranges per site (issue #11, controller/ingest/sitefilter.py): configuration
        # only, so a replay of the log drops what the live path dropped
        self.site_networks = site_networks
        self._site_ranges: dict = {}                 # sensor id -> SiteRanges of its site
        self.outside_site: dict[str, int] = {}       # sensor id -> packets dropped
        self._outside_warned: dict[str, tuple[float, int]] = {}   # sensor id -> (time, count)
        # sharded controller (issue #12, controller/ingest/shard.py): this shard's identity;
        # None (one controller): nothing below changes. Broadcast batches' frames are
        # marked (BroadcastFrame) and the call engine keeps only this shard's calls.
        self.shard = shard
        self._frag_routed: dict[tuple, tuple[int, bool, int]] = {}  # datagram -> (ts, routed?, n)
        self.ring_refused = 0       # sensor streams refused: they route over another shard list
        if shard is not None:
            shard.use_leg_headers(self.call_config.leg_headers)   # as the sensors' (--leg-header)
            self.engine.shard = shard

    @property
    def telemetry(self):
        """controller.output.telemetry.Telemetry or None: latency hooks (per batch, per call)."""
        return self._telemetry

    @telemetry.setter
    def telemetry(self, value) -> None:
        self._telemetry = value
        self.writer.telemetry = value

    # -- sensor events -------------------------------------------------
    def sensor_hello(self, sensor_id: str, *, session: str, site: str = "", version: str = "",
                     mode: str = "live", clock_ns: int = 0) -> int:
        """Registers a (re)connecting sensor; returns the seq already acknowledged.
        `clock_ns`: a live sensor's clock when it said Hello (its first offset
        sample, sensortime.WallOffset.hello)."""
        with self._lock:
            self._log(HELLO, {"sensor_id": sensor_id, "session": session, "site": site,
                              "version": version, "mode": mode})
            st = self.sensors.get(sensor_id)
            if st is None or st.session != session:
                st = SensorState(sensor_id, site=site, version=version, mode=mode, session=session)
                self.sensors[sensor_id] = st
            st.connected = True
            st.ended = False
            st.last_seen = time.time()
            if clock_ns and self.wall_clock and mode == "live" and not self._replaying:
                st.wall.hello(clock_ns)
            self._bind_site(st)
            self.merger.add_source(sensor_id)
            if self.wal is not None and not self._replaying:
                self.wal.sync()      # everything received so far is acknowledged as durable
                st.unsynced.clear()
                st.durable_seq = st.acked_seq
            return st.acked_seq

    def ring_refusal(self, sensor_id: str, ring: list[str]) -> str | None:
        """None when a sensor routing over `ring` (Hello.ring, sorted shard ids;
        empty: it sends everything to one controller) may stream here, else the
        reason (logged and counted): a sensor routing over another shard list
        than this controller's would split calls between shards silently."""
        ring = list(ring)
        if self.shard is not None:
            reason = self.shard.hello_refusal(ring)
        elif len(ring) > 1:
            reason = (f"this controller is not sharded; the sensor routes over "
                      f"[{', '.join(sorted(ring))}]: give the sensor this controller alone "
                      f"(--controller HOST:PORT) or start the controller as one shard of that "
                      f"ring, or calls would be split")
        else:
            return None
        if reason is not None:
            self.ring_refused += 1
            log.error("sensor refused: it routes calls over another shard list", extra={
                "sensor_id": sensor_id, "sensor_ring": ring,
                "shard_id": self.shard.shard_id if self.shard is not None else "",
                "ring": self.shard.ring_ids if self.shard is not None else [],
                "reason": reason})
        return reason

    def sensor_disconnected(self, sensor_id: str) -> None:
        st = self.sensors.get(sensor_id)
        if st is not None:
            st.connected = False
            if self.wal is not None and not self._replaying:
                try:
                    with self._lock:
                        self._log(DISCONNECT, {"sensor_id": sensor_id})
                except WalError:
                    pass     # the log closed first (shutdown): a reconnect logs a hello anyway

    def ingest(self, sensor_id: str, seq: int, linktype: int, timestamps: list[int],
               lengths: list[int], data: bytes, broadcast: bool = False) -> int:
        """Takes one batch; returns the seq to acknowledge (cumulative). With a
        write-ahead log that is the newest seq whose record is durable, which
        may be lower than `seq`: a later ack covers it.

        `broadcast` (Batch.broadcast): the sensor sent the batch to every shard
        (packets it could not route one by one); a shard keeps only what belongs
        to its calls (controller/ingest/shard.py). The flag is logged with the batch, so
        a replay of the log filters the same way. Without a shard identity the
        batch is processed like any other."""
        t0 = time.monotonic()
        with self._lock:
            st = self.sensors[sensor_id]
            if seq <= st.acked_seq:
                return self._ack(st)         # a resend of what we already have
            if self.wall_clock and st.mode == "live" and timestamps and not self._replaying:
                # onto the controller's clock before the log: a replay of the log
                # then sees the same times without the wall clock
                before = st.wall.offset
                oldest, newest = min(timestamps), max(timestamps)
                shift = st.wall.batch(newest, len(timestamps), oldest)
                if shift != before:
                    st.clock.sanitizer.rebase(shift - before)
                if shift:
                    timestamps = [t + shift for t in timestamps]
                timestamps, lengths, data = st.wall.refuse(timestamps, lengths, data,
                                                           oldest + shift, newest + shift)
            wal = self.wal
            if wal is not None and not self._replaying:
                if wal.needs_roll():
                    wal.roll(self._snapshot())
                st.unsynced.append((wal.append_batch(sensor_id, seq, linktype, timestamps,
                                                     lengths, data, broadcast=broadcast), seq))
            # one monotonic-enough clock per sensor before merge and dedup
            corrected = st.clock.correct(timestamps)
            packets: list[Packet] = []
            append = packets.append
            off = 0
            if broadcast and self.shard is not None:
                view = memoryview(data)
                for ts, n in zip(corrected, lengths):
                    append((ts, sensor_id, linktype, BroadcastFrame(view[off:off + n])))
                    off += n
                self.shard.counters["broadcast_packets"] += len(packets)
            else:
                for ts, n in zip(corrected, lengths):
                    append((ts, sensor_id, linktype, data[off:off + n]))
                    off += n
            st.packets_received += len(packets)
            st.batches_received += 1
            st.last_seen = time.time()
            if packets and st.clock.last is not None and st.clock.last > st.clock_ns:
                st.clock_ns = st.clock.last
            self.merger.push(sensor_id, packets, len(data))
            self._release()
            st.acked_seq = seq
            ack = self._ack(st)
        if self.telemetry is not None:
            self.telemetry.batch_acked(time.monotonic() - t0, sensor_id)
        return ack

    def _bind_site(self, st: SensorState) -> None:
        """The address ranges a sensor's packets must touch: its site's, if any."""
        ranges = self.site_networks.for_site(st.site) if self.site_networks else None
        if ranges is None:
            self._site_ranges.pop(st.sensor_id, None)
        else:
            self._site_ranges[st.sensor_id] = ranges

    def _outside_warning(self, dropped: dict[str, int]) -> None:
        """Counts packets outside their sensor's site; a WARNING per sensor at most
        once a minute (with the count since the last one)."""
        now = time.monotonic()
        for sid, n in dropped.items():
            total = self.outside_site.get(sid, 0) + n
            self.outside_site[sid] = total
            last, at = self._outside_warned.get(sid, (-1e18, 0))
            if now - last >= 60.0:
                self._outside_warned[sid] = (now, total)
                ranges = self._site_ranges.get(sid)
                log.warning("packets outside the sensor's site ranges dropped", extra={
                    "sensor_id": sid, "site": ranges.site if ranges else "",
                    "packets": total - at, "outside_site": total,
                    "networks": [str(n) for n in ranges.networks][:8] if ranges else []})

    def _ack(self, st: SensorState) -> int:
        if self.wal is None or self._replaying:
            return st.acked_seq
        durable = self.wal.durable_lsn
        unsynced = st.unsynced
        while unsynced and unsynced[0][0] <= durable:
            st.durable_seq = unsynced.popleft()[1]
        return st.durable_seq

    def heartbeat(self, sensor_id: str, clock_ns: int, counters: dict[str, int],
                  replay_bytes: int = 0, replay_total: int = 0) -> None:
        with self._lock:
            st = self.sensors.get(sensor_id)
            if st is None:
                return
            st.counters = counters
            st.last_seen = time.time()
            st.replay_bytes, st.replay_total = replay_bytes, replay_total
            if self.wall_clock and st.mode == "live" and not self._replaying:
                before = st.wall.offset
                onto = st.wall.heartbeat(clock_ns)     # None: implausible, refused
                if st.wall.offset != before:
                    st.clock.sanitizer.rebase(st.wall.offset - before)
                if onto is None:
                    self.merger.heartbeat(sensor_id, st.clock_ns)    # heard, not advanced
                    return
                clock_ns = onto
            corrected = st.clock.heartbeat(clock_ns)
            # a clock far ahead of the packets moves nothing, but the sensor is heard
            clock_ns = st.clock_ns if corrected is None else corrected
            if clock_ns > st.clock_ns:
                st.clock_ns = clock_ns
            self.merger.heartbeat(sensor_id, clock_ns)

    def end_of_capture(self, sensor_id: str, counters: dict[str, int], error: str) -> None:
        """A replay ended: release its packets; when no source is left, end every call."""
        with self._lock:
            st = self.sensors.get(sensor_id)
            if st is None:
                return
            self._log(END, {"sensor_id": sensor_id, "counters": counters, "error": error})
            st.counters, st.ended, st.end_error = counters, True, error
            st.replay_bytes = st.replay_total
            apart = sensor_id in self.merger.apart(self.merger.released_until)
            self.merger.remove_source(sensor_id)
            self._process(self.merger.release())
            if apart and st.clock_ns:
                # a replay on a timeline of its own (beside live traffic): no other
                # clock will end its calls, so its own end does (BYE + linger)
                others = frozenset(sid for sid in self.sensors if sid != sensor_id)
                end = st.clock_ns + int((self.call_config.linger_s + 1) * _SECOND)
                self._submit(self._advance(end, correlate=False, elsewhere=others))
            if all(s.ended or not s.connected for s in self.sensors.values()) and \
                    len(self.sensors) >= self.merger.expected_sources:
                self._process(self.merger.release(drain=True))
                self._submit(self.engine.finish_all("capture-end"))
                self.writer.submit(self.engine.late_due(0, everything=True))
                self.all_replays_done.set()
            if self.wal is not None and not self._replaying:
                self.wal.sync()      # the sensor forgets its batches after our answer

    def tick(self) -> None:
        """Called about once a second: moves time on when traffic is idle."""
        keep = None
        with self._lock:
            self._release()
            mark = self.merger.released_until
            if 0 < mark < (1 << 62):
                # legs are matched by media only at packet-driven advances, so the
                # result (and call.pcap's order of equal timestamps) never depends
                # on wall-clock timing
                self._submit(self._advance(mark, correlate=False,
                                                 elsewhere=self.merger.apart(mark)))
                self.writer.submit(self.engine.late_due(mark))
            if self.wall_clock and not self._replaying and \
                    any(st.mode == "live" for st in self.sensors.values()):
                # live calls end on the controller's clock even when no sensor
                # sends anything (live sensors are on it: sensortime.py); the
                # grace covers packets still on their way or held for ordering.
                # Calls on other timelines (replays) are left alone.
                now = time.time_ns() - int(self.merger.stale_after_s * _SECOND) - _SECOND
                if now > mark:
                    live = {sid for sid, st in self.sensors.items() if st.mode == "live"}
                    self._submit(self._advance(now, correlate=False,
                                                     elsewhere=self.merger.apart(now) - live))
            if self.wal is not None:
                if not self._replaying and self.wal.needs_roll():
                    # a quiet site's segment closes by age, so what it holds can go
                    try:
                        self.wal.roll(self._snapshot())
                    except WalError as exc:    # disk full: the next batch's roll fails loudly
                        log.error("write-ahead log: cannot start a new segment",
                                  extra={"error": str(exc)})
                keep = self._keep_ts()
        if keep is not None:
            self.wal.delete_before(keep)     # type: ignore[union-attr]

    def shutdown(self, keep_active: bool = False) -> None:
        """Graceful stop: everything pending becomes a recording.

        `keep_active` (with a write-ahead log): calls still in progress are not
        written: their packets stay in the log and the next start rebuilds them,
        so a restart (an upgrade) does not cut a call in two recordings.  Calls
        already over are written first."""
        if keep_active and self.wal is not None:
            self.writer.join()
            with self._lock:
                active = len(self.engine.table)
                self.wal.sync()
                self.wal.close()
            log.info("active calls continue after the restart (write-ahead log)",
                     extra={"active_calls": active})
            return
        with self._lock:
            self._process(self.merger.release(drain=True))
            self._submit(self.engine.finish_all("capture-end"))
            self.writer.submit(self.engine.late_due(0, everything=True))
        self.writer.join()
        self.engine.close()
        if self.wal is not None:
            with self._lock:
                # every call is written: only the sensors' sessions are still needed
                self.wal.roll(self._snapshot())
            self.wal.delete_before(1 << 62)
            self.wal.close()

    # -- write-ahead log ---------------------------------------------------
    def _log(self, kind: int, value: dict[str, Any]) -> None:
        if self.wal is not None and not self._replaying:
            self.wal.append_event(kind, value)

    def _submit(self, calls: list) -> None:
        """Hand finished calls to the writer, except those already stored
        before a crash (or a fragment of one)."""
        if not calls:
            return
        sites = {sid: st.site for sid, st in self.sensors.items()}
        for call in calls:
            call.sites = {sid: sites.get(sid, "") for sid in call.sensors}
            self._call_clock(call)
        if self.wal is None:
            self.writer.submit(calls)
            return
        out = []
        with self._book_lock:
            stored = self._stored
            for call in calls:
                if stored and self._already_stored(call):
                    self.replay_suppressed += 1
                    continue
                self._pending_writes[id(call)] = call.started_ns
                out.append(call)
        self.writer.submit(out)

    def _already_stored(self, call) -> bool:
        # only calls rebuilt from the replayed log: a call that starts on new
        # traffic is never dropped, whatever its Call-ID
        if call.started_ns > self._replay_until:
            return False
        for cid in call.call_ids:
            hit = self._stored.get(cid)
            if hit is not None and hit[0] <= call.started_ns <= hit[1]:
                return True
        return False

    def _written(self, call, rec) -> None:
        """Writer callback: the call is stored (rec) or given up (None)."""
        if rec is not None:
            last = call.frame_ts[-1] if call.frame_ts else call.started_ns
            cfg = self.call_config
            idle = cfg.answered_timeout_s if call.answered_ns is not None else cfg.setup_timeout_s
            entry = {"id": rec.recording_id, "call_ids": list(call.call_ids),
                     "started_ns": call.started_ns,
                     "until_ns": last + int((idle + cfg.linger_s + cfg.recent_call_id_s) * _SECOND)}
            try:
                # logged before the call stops pinning its segments (see delete_before)
                self.wal.append_event(STORED, entry)     # type: ignore[union-attr]
            except WalError as exc:
                log.error("write-ahead log: cannot record a stored recording",
                          extra={"error": str(exc)})
            with self._book_lock:
                self._remember_stored(entry)
        with self._book_lock:
            self._pending_writes.pop(id(call), None)

    def _remember_stored(self, entry: dict[str, Any]) -> None:
        for cid in entry["call_ids"]:
            self._stored[cid] = (entry["started_ns"], entry["until_ns"])

    def _keep_ts(self) -> int | None:
        """Capture time before which no packet is needed any more: older than the
        first packet of every active call and of every call not yet stored, and
        than everything the merger still holds."""
        mark = self.merger.released_until
        if mark < 0:
            return None
        keep = mark + 1
        for call in self.engine.table.calls():
            if call.started_ns < keep:
                keep = call.started_ns
        keep = min(keep, self.engine.late_oldest())    # late packets not yet written
        with self._book_lock:
            if self._pending_writes:
                keep = min(keep, min(self._pending_writes.values()))
            # forget stored calls no replay or retransmission can bring back
            if self._stored:
                old = mark - 60 * _SECOND
                for cid in [c for c, (_, until) in self._stored.items() if until < old]:
                    del self._stored[cid]
        return keep - self._horizon_ns

    def _snapshot(self) -> dict[str, Any]:
        """What a new segment starts with: sensor sessions and recent stored calls."""
        with self._book_lock:
            stored = [{"call_ids": [cid], "started_ns": a, "until_ns": b}
                      for cid, (a, b) in self._stored.items()]
        return {"sensors": [{
            "sensor_id": st.sensor_id, "site": st.site, "version": st.version, "mode": st.mode,
            "session": st.session, "acked_seq": st.acked_seq, "connected": st.connected,
            "ended": st.ended, "end_error": st.end_error, "clock_ns": st.clock_ns,
            "clock": st.clock.sanitizer.state(),
        } for st in self.sensors.values()], "stored": stored}

    def _restore(self, snap: dict[str, Any], first: bool) -> None:
        for s in snap.get("sensors", []):
            sid = s["sensor_id"]
            st = self.sensors.get(sid)
            if first or st is None:
                st = SensorState(sid, site=s["site"], version=s["version"], mode=s["mode"],
                                 session=s["session"], acked_seq=s["acked_seq"],
                                 connected=s["connected"], ended=s["ended"],
                                 end_error=s["end_error"], last_seen=time.time(),
                                 clock_ns=s["clock_ns"])
                st.clock.sanitizer.restore(s.get("clock", {}))
                self.sensors[sid] = st
                self._bind_site(st)
                if not st.ended:
                    self.merger.add_source(sid)
                    if st.clock_ns:
                        self.merger.heartbeat(sid, st.clock_ns)
            elif st.session == s["session"] and s["acked_seq"] > st.acked_seq:
                st.acked_seq = s["acked_seq"]   # records lost in a damaged segment

    def recover(self) -> dict[str, Any]:
        """Replay the write-ahead log (same path as live traffic, in order), then
        open it for appending. Call once, before serving."""
        wal = self.wal
        if wal is None:
            return {}
        t0 = time.monotonic()
        with self._book_lock:
            for kind, value in wal.scan({STORED, SNAPSHOT}):
                for entry in (value.get("stored", []) if kind == SNAPSHOT else [value]):
                    self._remember_stored(entry)
        batches = 0
        first = True
        self._replaying = True
        try:
            for kind, value in wal.replay():
                if kind == BATCH:
                    if value.sensor_id not in self.sensors:
                        self.sensor_hello(value.sensor_id, session="")
                    if value.max_ts > self._replay_until:
                        self._replay_until = value.max_ts
                    self.ingest(value.sensor_id, value.seq, value.linktype, value.timestamps,
                                value.lengths, value.data, broadcast=value.broadcast)
                    batches += 1
                elif kind == SNAPSHOT:
                    with self._lock:
                        self._restore(value, first)
                    first = False
                elif kind == HELLO:
                    self.sensor_hello(value["sensor_id"], session=value["session"],
                                      site=value["site"], version=value["version"],
                                      mode=value["mode"])
                elif kind == DISCONNECT:
                    self.sensor_disconnected(value["sensor_id"])
                elif kind == END:
                    self.end_of_capture(value["sensor_id"], value["counters"], value["error"])
        finally:
            self._replaying = False
        with self._lock:
            for st in self.sensors.values():
                st.connected = False         # they reconnect
                st.durable_seq = st.acked_seq
                st.unsynced.clear()
            wal.open(self._snapshot())
        self.recovered = {
            "batches": batches, "seconds": round(time.monotonic() - t0, 3),
            "active_calls": len(self.engine.table), "calls_written": self.writer.written,
            "sensors": {sid: st.acked_seq for sid, st in self.sensors.items()},
            **{k: v for k, v in wal.counters.items() if k in ("torn_tail_bytes", "corrupt_segments")},
        }
        if batches or self.sensors:
            log.info("write-ahead log replayed", extra=self.recovered)
        return self.recovered

    def _call_clock(self, call) -> None:
        """call.json `clock` and a warning when a sensor of the call had its
        capture clock corrected while the call lasted."""
        end = call.frame_ts[-1] if len(call.frame_ts) else call.started_ns
        if call.ended_ns is not None and call.ended_ns > end:
            end = call.ended_ns
        clocks = {sid: st.clock for sid, st in self.sensors.items()}
        clock, warning = call_clock(clocks, call.sensors, call.started_ns - _SECOND,
                                    end + _SECOND, iso_time)
        if clock is not None:
            call.clock = clock
            call.warnings.append(warning)

    # -- the packet path ----------------------------------------------
    def _advance(self, now_ns: int, correlate: bool = True,
                 elsewhere: frozenset[str] = frozenset()) -> list:
        if _ADVANCE_APART:
            return self.engine.advance(now_ns, correlate, elsewhere=elsewhere)
        return self.engine.advance(now_ns, correlate)

    def _release(self) -> None:
        """Packets the merge lets go, and a logged count when its bound forced it."""
        before = self.merger.overflow_packets
        self._process(self.merger.release())
        if self.merger.overflow_packets != before:
            log.warning("too many packets held for ordering: oldest released early", extra={
                "packets": self.merger.overflow_packets - before,
                "overflow_packets": self.merger.overflow_packets,
                "max_held": self.merger.max_held, "max_held_bytes": self.merger.max_held_bytes})

    def _other_timeline(self, ts: int, sid: str) -> None:
        """A packet far behind the main timeline (an old capture replayed beside
        live traffic): that sensor's calls advance on its own clock."""
        nxt = self._next_by_sensor.get(sid, 0)
        if ts >= nxt or ts < nxt - 2 * _SECOND:
            self._next_by_sensor[sid] = ts + _SECOND
            self._submit(self._advance(ts, elsewhere=self.merger.apart(ts)))

    def _process(self, packets: list[Packet]) -> None:
        if not packets:
            return
        engine_process = self.engine.process
        is_dup = self.dedup.is_duplicate
        engine_duplicate = self.engine.duplicate
        next_advance = self._next_advance
        lag = self.merger.max_lag_ns if self.merger.timelines else 1 << 62
        heap = self.engine.deadlines   # a call ends before a packet stamped after its deadline
        end_due = self.engine.end_due
        errors = 0
        site_ranges = self._site_ranges      # empty unless some site has address ranges
        outside: dict[str, int] | None = None
        for ts, sid, linktype, data in packets:
            try:
                d = decode(linktype, data)
            except DecodeError:
                errors += 1
                continue
            if site_ranges:
                ranges = site_ranges.get(sid)
                if ranges is not None and not ranges.keeps(d.src, d.dst):
                    if outside is None:
                        outside = {}
                    outside[sid] = outside.get(sid, 0) + 1
                    continue
            off = d.payload_offset
            # SIP starts with an ASCII letter, RTP/RTCP with version bits 10 (0x80..0xBF).
            is_sip = d.payload_len > 0 and 0x41 <= data[off] < 0x80
            if is_dup(ts, sid, data, d, is_sip):
                engine_duplicate(sid, data, d)
                continue
            if heap and heap[0][0] < ts and ts >= next_advance - lag:
                # calls whose deadline passed end before this packet, whatever other
                # packets this engine saw (the same with 1 shard or N)
                done = end_due(ts - 1, self.merger.apart(ts) if self.merger.timelines else frozenset())
                if done:
                    self._submit(done)
            engine_process(ts, sid, linktype, data, d)
            if d.is_fragment:
                self._fragment(ts, sid, linktype, data, d)
            if ts < next_advance - lag:
                self._other_timeline(ts, sid)
            elif ts >= next_advance:
                # checkpoints on a grid of capture time, not counted from whichever
                # packet this engine saw first: every shard checks at the same times
                next_advance = (ts // _SECOND + 1) * _SECOND
                self._submit(self._advance(ts, elsewhere=self.merger.apart(ts)))
                late = self.engine.late_due(ts)
                if late:
                    self.writer.submit(late)
                active = len(self.engine.table)
                if active > self.peak_active_calls:
                    self.peak_active_calls = active
        self._next_advance = next_advance
        self.decode_errors += errors
        if outside:
            self._outside_warning(outside)
        self.packets_in += len(packets)

    def _fragment(self, ts: int, sid: str, linktype: int, data: bytes, d) -> None:
        """An IP fragment (already a frame of its call): when it completes its
        datagram, the rebuilt datagram is parsed for SIP/SDP, not recorded.
        A shard notes whether any fragment of the datagram was routed here (then
        it is this shard's) or all came broadcast (then the engine tests it)."""
        done = self.fragments.add(ts, linktype, data, d)
        broadcast = 0
        if self.shard is not None:
            broadcast = self._broadcast_fragments(ts, data, d, done is not None)
        if done is None:
            return
        try:
            rd = decode(done.linktype, done.frame)
        except DecodeError:
            self.decode_errors += 1
            return
        if broadcast:
            self.engine.reassembled(ts, sid, linktype, done.frame, rd, broadcast, d.ip_id)
        else:
            self.engine.reassembled(ts, sid, linktype, done.frame, rd)

    def _broadcast_fragments(self, ts: int, data: bytes, d, complete: bool) -> int:
        """Per datagram in progress: was any fragment routed here? When `complete`:
        the number of its fragments if all came broadcast, else 0. Bounded like the
        reassembler (entries older than its timeout are dropped)."""
        frags = self._frag_routed
        key = (d.ip_version, d.src, d.dst, d.ip_id)
        first, routed, n = frags.pop(key, (ts, False, 0))
        routed = routed or data.__class__ is not BroadcastFrame
        if complete:
            return 0 if routed else n + 1
        if len(frags) >= 8192:
            horizon = ts - 60 * _SECOND
            for k in [k for k, v in frags.items() if v[0] < horizon]:
                del frags[k]
            while len(frags) >= 8192:
                del frags[next(iter(frags))]
        frags[key] = (first, routed, n + 1)
        return 0

    # -- status --------------------------------------------------------
    def status(self) -> dict[str, Any]:
        now = time.time()
        sensors = []
        for st in self.sensors.values():
            age = now - st.last_seen
            if st.ended:
                state = "done"
            elif st.connected and age < 5:
                state = "up"
            elif age < 60:
                state = "stale"
            else:
                state = "gone"
            sensors.append({
                "sensor_id": st.sensor_id, "site": st.site, "version": st.version,
                "mode": st.mode, "state": state, "last_seen": st.last_seen,
                "counters": dict(st.counters), "packets_received": st.packets_received,
                "duplicates_dropped": self.dedup.dropped_by_sensor.get(st.sensor_id, 0),
                "replay_bytes": st.replay_bytes, "replay_total": st.replay_total,
                "error": st.end_error,
                "clock_steps": st.clock.steps, "clock_restamped": st.clock.restamped,
                # time per sensor (issue #11): offset onto the controller clock,
                # packets shifted, heartbeats refused, merge exclusions
                "clock_offset_ns": st.wall.offset, "clock_corrected": st.wall.corrected,
                "heartbeats_refused": st.wall.refused_heartbeats,
                "packets_refused": st.wall.refused_packets,
                # site address ranges (issue #11): packets neither from nor to the site
                "outside_site": self.outside_site.get(st.sensor_id, 0),
                **self.merger.source_state(st.sensor_id),
            })
        out = {
            "controller_id": self.controller_id,
            "sensors": sensors,
            "active_calls": len(self.engine.table),
            "recordings_written": self.writer.written,
            "storage_errors": self.writer.errors,
            "late_for_deleted": self.writer.late_for_deleted,
            "decode_errors": self.decode_errors,
            "bad_batches": self.bad_batches,
            "duplicates_dropped": self.dedup.dropped,
            "outside_site": sum(self.outside_site.values()),
            "packets_in": self.packets_in,
            "merge_held": self.merger.held, "merge_held_bytes": self.merger.held_bytes,
            "merge_overflow_packets": self.merger.overflow_packets,
            "engine": dict(self.engine.counters),
            "fragments": dict(self.fragments.counters),
        }
        counters = getattr(self.writer.store, "counters", None)
        if callable(counters):
            c = counters()
            out.update({"storage_pending": c["pending"], "storage_uploaded": c["uploaded"],
                        "storage_retries": c["retries"], "storage_upload_errors": c["errors"]})
        indexer = getattr(self.writer.store, "indexer", None)
        if indexer is not None:          # callindex/indexer.py (IndexingStore)
            out.update(indexer.counters())
            out["index"] = indexer.url
        if self.wal is not None:
            out["wal"] = self.wal.stats()
            out["replay_suppressed"] = self.replay_suppressed
        if self.shard is not None:
            out["shard"] = self.shard.status()
            out["not_owned_packets"] = self.shard.counters["not_owned_packets"]
        if self.shard is not None or self.ring_refused:
            out["ring_refused"] = self.ring_refused
        return out

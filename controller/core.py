"""The controller's transport-free pipeline: order -> dedup -> calls -> finalize -> store.

`Recorder` knows nothing of gRPC: the servicer in link.py (and tests) call
`sensor_hello`, `ingest`, `heartbeat`, `end_of_capture` and `tick`.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from controller.calls import CallConfig, CallEngine
from controller.dedup import DedupConfig, Deduplicator
from controller.finalize import build_recording
from controller.order import Packet, TimeMerger
from protocols.errors import DecodeError
from protocols.layers import decode
from storage.base import RecordingStore, StorageError

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


class RecordingWriter:
    """Finalizes finished calls and writes them to storage on threads of their
    own, so numpy decoding and storage latency never stall the packet path.
    Several threads, because a durable write waits on fsync (or on S3), not
    on the CPU."""

    def __init__(self, store: RecordingStore, recent: int = 200, threads: int = 4) -> None:
        self.store = store
        self.written = 0
        self.errors = 0
        self.recent: deque[dict[str, Any]] = deque(maxlen=recent)
        self._queue: queue.Queue = queue.Queue()
        self._count_lock = threading.Lock()
        for i in range(threads):
            threading.Thread(target=self._run, name=f"spanrec-writer-{i}", daemon=True).start()

    def submit(self, calls: list) -> None:
        for call in calls:
            self._queue.put(call)

    def join(self) -> None:
        """Wait until everything submitted so far is written (or failed)."""
        self._queue.join()

    def _run(self) -> None:
        while True:
            call = self._queue.get()
            try:
                rec = build_recording(call)
                location = self.store.put(rec.prefix, rec.files)
                summary = dict(rec.metadata)
                summary["location"] = location
                with self._count_lock:
                    self.written += 1
                    self.recent.append(summary)
                log.info("recording written", extra={
                    "recording_id": rec.recording_id, "location": location,
                    "status": rec.metadata.get("status")})
            except StorageError as exc:
                with self._count_lock:
                    self.errors += 1
                log.error("recording not stored", extra={"error": str(exc)})
            except Exception:  # noqa: BLE001 - one bad call must not stop the writer
                with self._count_lock:
                    self.errors += 1
                log.exception("recording failed")
            finally:
                self._queue.task_done()


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
    ) -> None:
        self.controller_id = controller_id
        self.engine = CallEngine(call_config)
        self.dedup = Deduplicator(dedup_config or DedupConfig())
        self.merger = TimeMerger(expected_sources=expected_sensors)
        self.writer = RecordingWriter(store)
        self.sensors: dict[str, SensorState] = {}
        self.decode_errors = 0
        self.bad_batches = 0        # rejected by the link: lengths did not match data
        self.packets_in = 0
        self.peak_active_calls = 0
        self._next_advance = 0
        self._lock = threading.Lock()
        self.all_replays_done = threading.Event()

    # -- sensor events -------------------------------------------------
    def sensor_hello(self, sensor_id: str, *, session: str, site: str = "", version: str = "",
                     mode: str = "live") -> int:
        """Registers a (re)connecting sensor; returns the seq already acknowledged."""
        with self._lock:
            st = self.sensors.get(sensor_id)
            if st is None or st.session != session:
                st = SensorState(sensor_id, site=site, version=version, mode=mode, session=session)
                self.sensors[sensor_id] = st
            st.connected = True
            st.ended = False
            st.last_seen = time.time()
            self.merger.add_source(sensor_id)
            return st.acked_seq

    def sensor_disconnected(self, sensor_id: str) -> None:
        st = self.sensors.get(sensor_id)
        if st is not None:
            st.connected = False

    def ingest(self, sensor_id: str, seq: int, linktype: int, timestamps: list[int],
               lengths: list[int], data: bytes) -> int:
        """Takes one batch; returns the seq to acknowledge (cumulative)."""
        with self._lock:
            st = self.sensors[sensor_id]
            if seq <= st.acked_seq:
                return st.acked_seq          # a resend of what we already have
            packets: list[Packet] = []
            append = packets.append
            off = 0
            for ts, n in zip(timestamps, lengths):
                append((ts, sensor_id, linktype, data[off:off + n]))
                off += n
            st.packets_received += len(packets)
            st.batches_received += 1
            st.last_seen = time.time()
            self.merger.push(sensor_id, packets)
            self._process(self.merger.release())
            st.acked_seq = seq
            return seq

    def heartbeat(self, sensor_id: str, clock_ns: int, counters: dict[str, int],
                  replay_bytes: int = 0, replay_total: int = 0) -> None:
        with self._lock:
            st = self.sensors.get(sensor_id)
            if st is None:
                return
            st.counters = counters
            st.last_seen = time.time()
            st.replay_bytes, st.replay_total = replay_bytes, replay_total
            self.merger.heartbeat(sensor_id, clock_ns)

    def end_of_capture(self, sensor_id: str, counters: dict[str, int], error: str) -> None:
        """A replay ended: release its packets; when no source is left, end every call."""
        with self._lock:
            st = self.sensors.get(sensor_id)
            if st is None:
                return
            st.counters, st.ended, st.end_error = counters, True, error
            st.replay_bytes = st.replay_total
            self.merger.remove_source(sensor_id)
            self._process(self.merger.release())
            if all(s.ended or not s.connected for s in self.sensors.values()) and \
                    len(self.sensors) >= self.merger.expected_sources:
                self._process(self.merger.release(drain=True))
                self.writer.submit(self.engine.finish_all("capture-end"))
                self.all_replays_done.set()

    def tick(self) -> None:
        """Called about once a second: moves time on when traffic is idle."""
        with self._lock:
            self._process(self.merger.release())
            mark = self.merger.released_until
            if 0 < mark < (1 << 62):
                self.writer.submit(self.engine.advance(mark))

    def shutdown(self) -> None:
        """Graceful stop: everything pending becomes a recording."""
        with self._lock:
            self._process(self.merger.release(drain=True))
            self.writer.submit(self.engine.finish_all("capture-end"))
        self.writer.join()

    # -- the packet path ----------------------------------------------
    def _process(self, packets: list[Packet]) -> None:
        if not packets:
            return
        engine_process = self.engine.process
        is_dup = self.dedup.is_duplicate
        next_advance = self._next_advance
        errors = 0
        for ts, sid, linktype, data in packets:
            try:
                d = decode(linktype, data)
            except DecodeError:
                errors += 1
                continue
            off = d.payload_offset
            # SIP starts with an ASCII letter, RTP/RTCP with version bits 10.
            is_sip = d.payload_len > 0 and data[off] >= 0x41
            if is_dup(ts, sid, data, d, is_sip):
                continue
            engine_process(ts, sid, linktype, data, d)
            if ts >= next_advance:
                next_advance = ts + _SECOND
                self.writer.submit(self.engine.advance(ts))
                active = len(self.engine.active())
                if active > self.peak_active_calls:
                    self.peak_active_calls = active
        self._next_advance = next_advance
        self.decode_errors += errors
        self.packets_in += len(packets)

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
            })
        return {
            "controller_id": self.controller_id,
            "sensors": sensors,
            "active_calls": len(self.engine.active()),
            "recordings_written": self.writer.written,
            "storage_errors": self.writer.errors,
            "decode_errors": self.decode_errors,
            "bad_batches": self.bad_batches,
            "duplicates_dropped": self.dedup.dropped,
            "packets_in": self.packets_in,
            "engine": dict(self.engine.counters),
        }

"""OpenTelemetry for the controller: metrics (Prometheus scrape and/or OTLP)
and a trace per call, from its first packet to its stored recording.

Counters are *observed* from `Recorder.status()` when a reader collects, so
the packet path pays nothing for them. Latencies are histograms fed by the
few hooks below (`batch_acked`, `call_stored`), called once per batch and
once per call, never per packet.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Iterable

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Tracer

log = logging.getLogger("spanrec.telemetry")

# Sensor counters exported per sensor (name in Counters -> metric suffix)
SENSOR_COUNTERS = ("captured", "forwarded", "filtered", "decode_errors", "kernel_drops",
                   "interface_drops", "backlog_drops", "queue_drops", "reconnects")
# Controller totals from Recorder.status()
CONTROLLER_COUNTERS = ("packets_in", "duplicates_dropped", "decode_errors", "bad_batches",
                       "recordings_written", "storage_errors", "storage_uploaded",
                       "storage_retries", "storage_upload_errors", "replay_suppressed",
                       "late_for_deleted")


#: histogram bounds, seconds: a batch ack (tens of µs .. seconds when the
#: write-ahead log waits for the disk) and a call's finalize/store/end-to-stored
#: (ms .. minutes under overload)
ACK_BUCKETS_S = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
CALL_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0,
                  20.0, 30.0, 60.0, 120.0, 300.0)


class Telemetry:
    """Metrics and traces of one controller. `status` is Recorder.status."""

    def __init__(self, status: Callable[[], dict[str, Any]], *, controller_id: str = "controller",
                 prometheus_listen: str | None = None, otlp_endpoint: str | None = None,
                 readers: Iterable[MetricReader] = (), export_interval_s: float = 10.0) -> None:
        self._status = status
        self._cache: tuple[float, dict[str, Any]] = (0.0, {})
        self._lock = threading.Lock()
        resource = Resource.create({"service.name": "spanrec-controller",
                                    "service.instance.id": controller_id})
        all_readers = list(readers)
        self.prometheus_port: int | None = None
        if prometheus_listen:
            from opentelemetry.exporter.prometheus import PrometheusMetricReader
            from prometheus_client import start_http_server
            host, _, port = prometheus_listen.rpartition(":")
            all_readers.append(PrometheusMetricReader())
            # no host: loopback; every interface only when asked (0.0.0.0)
            server, _thread = start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1")
            self.prometheus_port = server.server_port
        if otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
            all_readers.append(PeriodicExportingMetricReader(
                OTLPMetricExporter(endpoint=otlp_endpoint, insecure=True),
                export_interval_millis=int(export_interval_s * 1000)))
        self.meter_provider = MeterProvider(resource=resource, metric_readers=all_readers)
        meter = self.meter_provider.get_meter("spanrec.controller")
        for name in CONTROLLER_COUNTERS:
            meter.create_observable_counter(f"spanrec.controller.{name}",
                                            callbacks=[self._total(name)])
        meter.create_observable_gauge("spanrec.controller.active_calls",
                                      callbacks=[self._total("active_calls")])
        meter.create_observable_gauge("spanrec.controller.storage_pending",
                                      callbacks=[self._total("storage_pending")])
        meter.create_observable_gauge("spanrec.controller.wal_bytes", unit="By",
                                      callbacks=[self._wal("bytes")])
        meter.create_observable_counter("spanrec.controller.wal_segments_forced",
                                        callbacks=[self._wal("segments_forced")])
        meter.create_observable_counter("spanrec.controller.wal_torn_tail_bytes", unit="By",
                                        callbacks=[self._wal("torn_tail_bytes")])
        for name in SENSOR_COUNTERS:
            meter.create_observable_counter(f"spanrec.sensor.{name}", callbacks=[self._per_sensor(name)])
        meter.create_observable_gauge("spanrec.sensor.send_queue",
                                      callbacks=[self._per_sensor("send_queue")])
        meter.create_observable_counter("spanrec.sensor.duplicates_dropped",
                                        callbacks=[self._sensor_field("duplicates_dropped")])
        # bucket bounds in seconds that resolve each real range (the SDK's default
        # bounds, 0 5 10 25 ... 10000, are meant for milliseconds: every ack and
        # finalize fell in the first bucket)
        self._batch_ack = meter.create_histogram(
            "spanrec.controller.batch_ack_duration", unit="s",
            description="time from receiving a batch to acknowledging it",
            explicit_bucket_boundaries_advisory=ACK_BUCKETS_S)
        self._finalize = meter.create_histogram(
            "spanrec.controller.call_finalize_duration", unit="s",
            description="building call.json, audio.wav and call.pcap of one call",
            explicit_bucket_boundaries_advisory=CALL_BUCKETS_S)
        self._store = meter.create_histogram(
            "spanrec.controller.storage_write_duration", unit="s",
            description="writing one recording to storage",
            explicit_bucket_boundaries_advisory=CALL_BUCKETS_S)
        self._ended_to_stored = meter.create_histogram(
            "spanrec.controller.call_end_to_stored_duration", unit="s",
            description="from the call's end (BYE, timeout) being seen to its recording "
                        "stored: waiting for the writer, finalize and storage",
            explicit_bucket_boundaries_advisory=CALL_BUCKETS_S)
        self.tracer_provider = TracerProvider(resource=resource)
        if otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            self.tracer_provider.add_span_processor(
                BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint, insecure=True)))
        self.tracer: Tracer = self.tracer_provider.get_tracer("spanrec.controller")

    # -- observed counters ------------------------------------------------
    def _snapshot(self) -> dict[str, Any]:
        """One status() per collection, shared by all callbacks."""
        with self._lock:
            at, snap = self._cache
            if time.monotonic() - at > 0.5:
                snap = self._status()
                self._cache = (time.monotonic(), snap)
            return snap

    def _total(self, name: str):
        def cb(options: CallbackOptions) -> Iterable[Observation]:
            value = self._snapshot().get(name)
            return [Observation(int(value))] if value is not None else []
        return cb

    def _wal(self, name: str):
        def cb(options: CallbackOptions) -> Iterable[Observation]:
            value = (self._snapshot().get("wal") or {}).get(name)
            return [Observation(int(value))] if value is not None else []
        return cb

    def _per_sensor(self, name: str):
        def cb(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(int(s["counters"].get(name, 0)),
                                {"sensor_id": s["sensor_id"], "site": s["site"]})
                    for s in self._snapshot().get("sensors", [])]
        return cb

    def _sensor_field(self, name: str):
        def cb(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(int(s.get(name, 0)), {"sensor_id": s["sensor_id"], "site": s["site"]})
                    for s in self._snapshot().get("sensors", [])]
        return cb

    # -- hooks ----------------------------------------------------------------
    def batch_acked(self, seconds: float, sensor_id: str) -> None:
        self._batch_ack.record(seconds, {"sensor_id": sensor_id})

    def call_stored(self, meta: dict[str, Any], first_packet_ns: int, finalize_s: float,
                    store_s: float, ok: bool, queued_s: float = 0.0) -> None:
        """One trace per call: first packet -> finalize -> stored recording."""
        self._finalize.record(finalize_s)
        self._store.record(store_s, {"ok": ok})
        if ok:
            self._ended_to_stored.record(queued_s + finalize_s + store_s)
        end_ns = time.time_ns()
        store_start = end_ns - int(store_s * 1e9)
        final_start = store_start - int(finalize_s * 1e9)
        attrs = {"spanrec.recording_id": str(meta.get("id", "")),
                 "spanrec.call_ids": ",".join(meta.get("call_ids", [])),
                 "spanrec.status": str(meta.get("status", "")),
                 "spanrec.end_reason": str(meta.get("end_reason", ""))}
        root = self.tracer.start_span("call", start_time=min(first_packet_ns, final_start),
                                      attributes=attrs)
        from opentelemetry import trace
        ctx = trace.set_span_in_context(root)
        self.tracer.start_span("finalize", context=ctx, start_time=final_start).end(end_time=store_start)
        self.tracer.start_span("store", context=ctx, start_time=store_start,
                               attributes={"ok": ok}).end(end_time=end_ns)
        root.end(end_time=end_ns)

    def shutdown(self) -> None:
        try:
            self.tracer_provider.shutdown()
            self.meter_provider.shutdown()
        except Exception:  # noqa: BLE001 - telemetry must never break a shutdown
            log.warning("telemetry shutdown failed", exc_info=True)

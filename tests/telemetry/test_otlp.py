"""`spanrec controller --otlp-endpoint` exports metrics and call traces to a real
OTLP/gRPC receiver (the OpenTelemetry collector's service, served here)."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from tests.conftest import capture
from tests.e2e.test_record import tshark_invite_call_ids
from tests.s3server import free_ports


class Receiver(metrics_service_pb2_grpc.MetricsServiceServicer,
               trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.metrics: dict[str, list] = {}
        self.spans: list = []
        self.lock = threading.Lock()

    def Export(self, request, context):  # both services share the method name
        with self.lock:
            if isinstance(request, metrics_service_pb2.ExportMetricsServiceRequest):
                for rm in request.resource_metrics:
                    for sm in rm.scope_metrics:
                        for m in sm.metrics:
                            self.metrics.setdefault(m.name, []).append(m)
                return metrics_service_pb2.ExportMetricsServiceResponse()
            for rs in request.resource_spans:
                for ss in rs.scope_spans:
                    self.spans.extend(ss.spans)
            return trace_service_pb2.ExportTraceServiceResponse()


def test_metrics_and_traces_reach_an_otlp_receiver(tmp_path: Path) -> None:
    src = capture("MagicJack-_short_call.pcap")
    receiver = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(4))
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(receiver, server)
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    otlp_port, port = free_ports(2)
    server.add_insecure_port(f"127.0.0.1:{otlp_port}")
    server.start()
    controller = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "controller", "--listen", f"127.0.0.1:{port}",
         "--storage", str(tmp_path / "rec"), "--state-dir", str(tmp_path / "state"), "--insecure",
         "--otlp-endpoint", f"127.0.0.1:{otlp_port}"], stdin=subprocess.DEVNULL,
        stdout=open(tmp_path / "controller.log", "wb"), stderr=subprocess.STDOUT)
    try:
        ch = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(ch).result(timeout=20)
        ch.close()
        sensor = subprocess.run(
            [sys.executable, "-m", "cli.main", "sensor", "--pcap", str(src), "--controller",
             f"127.0.0.1:{port}", "--sensor-id", "s1", "--insecure", "--spool-dir",
             str(tmp_path / "spool")], capture_output=True, text=True, timeout=120)
        assert sensor.returncode == 0, sensor.stderr
        (call_id,) = tshark_invite_call_ids(src)
        deadline = time.monotonic() + 30
        while not list((tmp_path / "rec").rglob("call.json")):
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        controller.terminate()                 # shutdown flushes the exporters
        assert controller.wait(30) == 0, (tmp_path / "controller.log").read_text()[-2000:]
        server.stop(1)
    names = set(receiver.metrics)
    assert {"spanrec.controller.packets_in", "spanrec.controller.recordings_written",
            "spanrec.sensor.captured", "spanrec.controller.batch_ack_duration",
            "spanrec.controller.call_finalize_duration"} <= names, names
    written = receiver.metrics["spanrec.controller.recordings_written"][-1].sum.data_points[0].as_int
    assert written == 1
    roots = [s for s in receiver.spans if s.name == "call"]
    assert len(roots) == 1
    attrs = {a.key: a.value.string_value for a in roots[0].attributes}
    assert attrs["spanrec.call_ids"] == call_id
    kids = {s.name for s in receiver.spans if s.parent_span_id == roots[0].span_id}
    assert kids == {"finalize", "store"}

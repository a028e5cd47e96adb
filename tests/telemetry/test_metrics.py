"""Controller metrics: Prometheus scrape and in-memory reader, against tshark counts."""
from __future__ import annotations

import re
import urllib.request
from pathlib import Path

from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from controller.core import Recorder
from controller.output.telemetry import Telemetry
from protocols.pcapfile import read_frames
from storage.local import LocalStore
from tests.conftest import capture
from tests.e2e.test_record import tshark_count, tshark_invite_call_ids
from tests.s3server import free_ports


def _feed(recorder: Recorder, path: Path) -> int:
    frames = list(read_frames(path))
    recorder.sensor_hello("s1", session="x", site="lab", mode="replay")
    for i in range(0, len(frames), 100):
        chunk = frames[i:i + 100]
        recorder.ingest("s1", i // 100 + 1, chunk[0][1], [f[0] for f in chunk],
                        [len(f[2]) for f in chunk], b"".join(f[2] for f in chunk))
    recorder.end_of_capture("s1", {"captured": len(frames)}, "")
    recorder.writer.join()
    return len(frames)


def _points(reader: InMemoryMetricReader) -> dict[str, list]:
    out: dict[str, list] = {}
    for rm in reader.get_metrics_data().resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                out[m.name] = list(m.data.data_points)
    return out


def test_counters_and_histograms(tmp_path: Path) -> None:
    src = capture("sip-rtp-g711.pcap")     # two calls, one leg each (trace per call)
    recorder = Recorder(LocalStore(tmp_path))
    reader = InMemoryMetricReader()
    (port,) = free_ports(1)
    tel = Telemetry(recorder.status, readers=[reader], prometheus_listen=f"127.0.0.1:{port}")
    spans = InMemorySpanExporter()
    tel.tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    recorder.telemetry = tel
    n = _feed(recorder, src)
    assert n == tshark_count(src, "frame")
    pts = _points(reader)
    assert pts["spanrec.controller.packets_in"][0].value == n
    calls = len(tshark_invite_call_ids(src))
    assert pts["spanrec.controller.recordings_written"][0].value == calls
    (cap,) = pts["spanrec.sensor.captured"]
    assert cap.value == n and dict(cap.attributes) == {"sensor_id": "s1", "site": "lab"}
    assert pts["spanrec.controller.call_finalize_duration"][0].count == calls
    assert pts["spanrec.controller.storage_write_duration"][0].count == calls
    assert pts["spanrec.controller.batch_ack_duration"][0].count == (n + 99) // 100
    ended = pts["spanrec.controller.call_end_to_stored_duration"][0]
    assert ended.count == calls and ended.sum >= pts["spanrec.controller.call_finalize_duration"][0].sum
    # bounds that resolve the real range: a batch ack takes µs to ms, and the
    # acks must not all land in one bucket (the SDK's default bounds are for ms)
    ack = pts["spanrec.controller.batch_ack_duration"][0]
    assert ack.explicit_bounds[0] <= 0.0001 and ack.explicit_bounds[-1] >= 1.0
    assert max(ack.bucket_counts) < ack.count or ack.count == 1
    fin = pts["spanrec.controller.call_finalize_duration"][0]
    assert fin.explicit_bounds[0] <= 0.01 and fin.explicit_bounds[-1] >= 60
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert re.search(rf"^spanrec_controller_packets_in_total(\{{[^}}]*\}})? {n}(\.0)?$", body, re.M), body
    assert re.search(rf'^spanrec_sensor_captured_total\{{[^}}]*sensor_id="s1"[^}}]*\}} {n}(\.0)?$',
                     body, re.M)
    # one trace per call: first packet -> finalize -> store
    roots = [sp for sp in spans.get_finished_spans() if sp.name == "call"]
    assert sorted(sp.attributes["spanrec.call_ids"] for sp in roots) == \
        sorted(tshark_invite_call_ids(src))
    first_frame_ns = next(iter(read_frames(src)))[0]
    for root in roots:
        assert root.start_time >= first_frame_ns
        kids = [sp for sp in spans.get_finished_spans() if sp.parent and sp.parent.span_id == root.context.span_id]
        assert sorted(k.name for k in kids) == ["finalize", "store"]
    tel.shutdown()

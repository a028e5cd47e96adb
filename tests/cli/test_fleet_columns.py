"""`spanrecctl fleet` shows every drop and refusal (issue #11): the time fields
of SensorStatus, the sensor's refusal counters and the controller's
authorization refusals, in the table (only when non-zero) and in JSON."""
from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from cli import output
from proto import admin_pb2, sensor_pb2
from transport.admin_client import AdminClient


class _Stub:
    def __init__(self, st: admin_pb2.Status) -> None:
        self.st = st

    def GetStatus(self, request, timeout=None):   # noqa: N802 (gRPC name)
        return self.st


def _fleet(st: admin_pb2.Status):
    client = AdminClient.__new__(AdminClient)     # no channel: the stub answers
    client.target, client.timeout_s, client._stub = "ctl:7600", 1.0, _Stub(st)
    return client.fleet()


def _status(**sensor_fields) -> admin_pb2.Status:
    st = admin_pb2.Status(controller_id="c1", storage="file:///rec", authz_refused=0)
    st.sensors.append(admin_pb2.SensorStatus(
        sensor_id="quiet", site="a", state="up", link="connected", mode="live",
        counters=sensor_pb2.Counters(captured=10)))
    st.sensors.append(admin_pb2.SensorStatus(
        sensor_id="busy", site="b", state="up", link="connected", mode="live", **sensor_fields))
    return st


BUSY = dict(
    counters=sensor_pb2.Counters(captured=100, sdp_endpoints_refused=4, media_not_rtp=17),
    clock_offset_ns=-2_500_000, clock_corrected=90, heartbeats_refused=3, packets_refused=5,
    merge="stalled", merge_stalls=2, merge_held=40, clock_steps=1, clock_restamped=6)


def _render(fleet, fmt: str, monkeypatch) -> str:
    buf = io.StringIO()
    monkeypatch.setattr(output, "out", Console(file=buf, width=400, soft_wrap=False))
    if fmt == "json":
        monkeypatch.setattr("sys.stdout", buf)
    output.print_fleet(fleet, fmt)
    return buf.getvalue()


def _row(text: str, sensor: str) -> dict[str, str]:
    """The cells of `sensor`'s row by column header."""
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("┃"))
    row = next(line for line in lines if line.startswith("│ " + sensor + " "))
    return dict(zip((c.strip() for c in header.strip("┃").split("┃")),
                    (c.strip() for c in row.strip("│").split("│"))))


def test_table_shows_offset_clock_merge_refused_and_not_rtp(monkeypatch) -> None:
    st = _status(**BUSY)
    st.authz_refused = 7
    text = _render(_fleet(st), "table", monkeypatch)
    busy, quiet = _row(text, "busy"), _row(text, "quiet")
    assert busy["offset"] == "-2.5 ms"
    assert busy["refused"] == "12 (packets 5, heartbeats 3, SDP endpoints 4)"
    assert busy["not RTP"] == "17"
    assert busy["clock/merge"] == "corrected 90, steps 1, restamped 6, stalled, stalls 2, held 40"
    assert (quiet["offset"], quiet["refused"], quiet["not RTP"], quiet["clock/merge"]) == \
        ("-", "0", "0", "-")
    assert "7 request(s) refused by certificate role or site" in text


def test_columns_and_footer_absent_when_all_zero(monkeypatch) -> None:
    text = _render(_fleet(_status()), "table", monkeypatch)
    for header in ("offset", "clock/merge", "refused", "not RTP"):
        assert header not in text
    assert "certificate role" not in text


@pytest.mark.parametrize("field, value, header", [
    ("clock_offset_ns", 1_200_000_000, "offset"), ("packets_refused", 1, "refused"),
    ("merge", "lagging", "clock/merge"), ("outside_site", 9, "refused")])
def test_each_column_appears_on_its_own(monkeypatch, field, value, header) -> None:
    text = _render(_fleet(_status(**{field: value})), "table", monkeypatch)
    assert header in text
    if field == "clock_offset_ns":
        assert _row(text, "busy")["offset"] == "+1.200 s"
    if field == "outside_site":
        assert _row(text, "busy")["refused"] == "9 (outside site 9)"


def test_json_names_every_field(monkeypatch) -> None:
    st = _status(**BUSY)
    st.authz_refused = 7
    st.sensors[1].outside_site = 11
    doc = json.loads(_render(_fleet(st), "json", monkeypatch))
    assert doc["authz_refused"] == 7
    busy = next(s for s in doc["sensors"] if s["sensor_id"] == "busy")
    want = dict(sdp_endpoints_refused=4, media_not_rtp=17, clock_offset_ns=-2_500_000,
                clock_corrected=90, heartbeats_refused=3, packets_refused=5, merge="stalled",
                merge_stalls=2, merge_held=40, clock_steps=1, clock_restamped=6, outside_site=11)
    assert {k: busy[k] for k in want} == want

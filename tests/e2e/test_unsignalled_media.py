"""Media seen without signalling reaches the operator: `spanrec record` prints
one stderr line (flows, packets, likely cause) and `spanrecctl fleet` shows
the same summary plus each sensor's SIP-over-TLS counters.

The capture (tests/sensor/test_classify_tls.py) holds a SIP dialog over TLS
on 5061 and its RTP in clear. Expectations: the TLS segments generated
(checked there against tshark decoding 5061 as TLS), and the RTP as tshark
decodes the two media ports as RTP — packets, and flows: RTP conversations
(both directions of one endpoint pair are one flow, as tshark's UDP
conversations).

The flow and packet counts come from the call engine's `unsignalled_*`
counters; until the engine reports them they are 0 and the assertions on
them fail (by design: they say what the operator must see).
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import spanrec_record
from tests.sensor.test_classify_tls import TlsCapture, sip_tls_capture, tshark
from tests.transport.procs import SPANRECCTL, Controller, run

NOT_SEEN = "signalling not seen: on another mirror, or the capture started mid-call"


def rtp_truth(cap: TlsCapture) -> tuple[int, int]:
    """(RTP flows, RTP packets) as tshark decodes the media ports; a flow is a
    conversation: the endpoint pair, both directions."""
    rows = tshark(cap.path, "rtp", "ip.src", "udp.srcport", "ip.dst", "udp.dstport")
    assert rows, "tshark found no RTP: the test would prove nothing"
    return len({frozenset(((a, p), (b, q))) for a, p, b, q in rows}), len(rows)


def warning_lines(stderr: str, prog: str = "spanrec") -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith(f"{prog}: warning: ")]


@pytest.fixture(scope="module")
def cap(tmp_path_factory) -> TlsCapture:
    return sip_tls_capture(tmp_path_factory.mktemp("tlscap"))


def test_record_names_sip_over_tls_and_counts_unsignalled_media(cap: TlsCapture,
                                                                 tmp_path: Path) -> None:
    flows, packets = rtp_truth(cap)
    rec = spanrec_record([cap.path], tmp_path / "rec")
    assert rec.returncode == 0, rec.stderr
    assert "Traceback" not in rec.stderr
    lines = [ln for ln in warning_lines(rec.stderr) if "signalling" in ln]
    assert len(lines) == 1, rec.stderr                          # one line, not one per flow
    line = lines[0]
    assert f"SIP over TLS: signalling is encrypted (sensor replay-1 saw {cap.tls_segments} packets)" \
        in line, line
    assert f"media without signalling: {flows} flow(s), {packets} packet(s)" in line, line


def test_record_without_signalling_at_all_says_not_seen(cap: TlsCapture, tmp_path: Path) -> None:
    """RTP alone (no TLS either): the cause is signalling on another mirror or
    a capture started mid-call."""
    from protocols.pcapfile import read_frames, write_pcap
    from protocols.layers import decode
    only_rtp = tmp_path / "rtp-only.pcap"
    with open(only_rtp, "wb") as fh:
        write_pcap(fh, [(ts, data) for ts, lt, data in read_frames(cap.path)
                        if decode(lt, data).proto == 17], 1)
    flows, packets = rtp_truth(TlsCapture(only_rtp, 0, 0, 0, 0))
    rec = spanrec_record([only_rtp], tmp_path / "rec")
    assert rec.returncode == 0, rec.stderr
    lines = [ln for ln in warning_lines(rec.stderr) if "signalling" in ln]
    assert lines == [f"spanrec: warning: media without signalling: {flows} flow(s), "
                     f"{packets} packet(s); likely cause: {NOT_SEEN}"], rec.stderr


def test_record_of_a_signalled_call_says_nothing(tmp_path: Path) -> None:
    from tests.transport.procs import REPO
    rec = spanrec_record([REPO / "samples" / "sample-call.pcap"], tmp_path / "rec")
    assert rec.returncode == 0, rec.stderr
    assert not [ln for ln in warning_lines(rec.stderr) if "signalling" in ln], rec.stderr


@pytest.fixture(scope="module")
def controller(cap: TlsCapture, tmp_path_factory):
    work = tmp_path_factory.mktemp("ctl-tls")
    c = Controller(work, tls=None)
    try:
        proc = c.replay(cap.path, "edge-tls", None, workdir=work)
        assert proc.returncode == 0, proc.stderr
        yield c
    finally:
        assert c.stop() == 0, c.log.read_text()


def fleet(c: Controller, fmt: str) -> str:
    proc = run(SPANRECCTL, "fleet", "--controller", c.target, "--insecure", "-o", fmt, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stdout


def settled_fleet(c: Controller) -> dict:
    """The fleet once the replay's EndOfCapture is in and no call is active."""
    deadline = time.monotonic() + 30
    while True:
        f = json.loads(fleet(c, "json"))
        if f["sensors"] and f["sensors"][0]["state"] == "done" and not f["active_calls"]:
            return f
        assert time.monotonic() < deadline, f
        time.sleep(0.3)


def test_fleet_json_shows_tls_and_unsignalled_media(cap: TlsCapture, controller: Controller) -> None:
    flows, packets = rtp_truth(cap)
    f = settled_fleet(controller)
    (s,) = f["sensors"]
    assert (s["sip_tls_flows"], s["sip_tls_packets"]) == (cap.tls_flows, cap.tls_segments)
    assert s["forwarded"] == packets                 # the RTP in clear, nothing of the TLS
    assert f["unsignalled_media"] == {
        "flows": flows, "packets": packets, "ambiguous_packets": 0,
        "sip_tls_flows": cap.tls_flows, "sip_tls_packets": cap.tls_segments,
        "likely_cause": f"SIP over TLS: signalling is encrypted "
                        f"(sensor edge-tls saw {cap.tls_segments} packets)"}


def test_fleet_table_shows_tls_and_unsignalled_media(cap: TlsCapture, controller: Controller) -> None:
    flows, packets = rtp_truth(cap)
    settled_fleet(controller)
    out = fleet(controller, "table")
    assert "SIP/TLS packets" in out, out
    row = next(ln for ln in out.splitlines() if "edge-tls" in ln and "done" in ln)
    assert re.search(rf"\b{cap.tls_segments}\b", row), row
    assert (f"media without signalling: {flows} flow(s), {packets} packet(s); likely cause: "
            f"SIP over TLS: signalling is encrypted (sensor edge-tls saw {cap.tls_segments} packets)"
            ) in out, out


def test_fleet_of_a_signalled_call_shows_nothing_of_it(tmp_path: Path) -> None:
    from tests.transport.procs import REPO
    c = Controller(tmp_path, tls=None)
    try:
        assert c.replay(REPO / "samples" / "sample-call.pcap", "edge-ok", None,
                        workdir=tmp_path).returncode == 0
        f = settled_fleet(c)
        assert f["unsignalled_media"] == {"flows": 0, "packets": 0, "ambiguous_packets": 0,
                                          "sip_tls_flows": 0, "sip_tls_packets": 0,
                                          "likely_cause": ""}
        out = fleet(c, "table")
        assert "without signalling" not in out and "SIP/TLS" not in out, out
    finally:
        assert c.stop() == 0, c.log.read_text()

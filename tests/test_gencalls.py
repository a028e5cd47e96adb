"""The sample-capture generator: deterministic, and tshark reads what it writes."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from controller.media.audio import decode_stream
from protocols.pcapfile import LINKTYPE_ETHERNET, read_frames
from scripts import gencalls
from tests.conftest import REPO, require_tool

SAMPLE = REPO / "samples" / "sample-call.pcap"


def _tshark(*args: str) -> str:
    tshark = require_tool("tshark")
    return subprocess.run([tshark, *args], capture_output=True, text=True, check=True, timeout=120).stdout


def _rtp_streams(path: Path) -> list[dict[str, str]]:
    """Rows of ``tshark -z rtp,streams``, found through the SDP (no heuristics)."""
    rows = []
    for line in _tshark("-r", str(path), "-q", "-z", "rtp,streams").splitlines():
        f = line.split()
        if len(f) >= 11 and f[6].startswith("0x"):
            rows.append({"src": f[2], "sport": f[3], "dst": f[4], "dport": f[5], "ssrc": f[6].lower(),
                         "payload": f[7], "packets": f[8], "lost": f[9]})
    return rows


def test_sample_is_the_default_output(tmp_path):
    """The committed sample equals what the generator writes with its defaults."""
    out = tmp_path / "s.pcap"
    assert gencalls.main([str(out)]) == 0
    assert SAMPLE.is_file(), "run: python scripts/gencalls.py samples/sample-call.pcap"
    assert out.read_bytes() == SAMPLE.read_bytes()
    assert SAMPLE.stat().st_size < 500_000


def test_deterministic_and_seeded():
    def blob(seed: int) -> bytes:
        return b"".join(b for _, b in gencalls.frames(calls=4, duration=2, concurrent=3, seed=seed))
    assert blob(7) == blob(7)
    assert blob(7) != blob(8)


def test_time_order_and_overlap():
    plans = gencalls.plan(calls=6, duration=3, concurrent=3)
    ts = [t for t, _ in gencalls.frames_for(plans)]
    assert ts == sorted(ts)
    # At the middle of call 3 the calls 1..3 (at least) are all up.
    mid = plans[3].answer_ns + 1_000_000_000  # type: ignore[operator]
    assert sum(p.invite_ns <= mid <= p.end_ns for p in plans) >= 3
    assert len({p.caller_ip for p in plans} | {p.callee_ip for p in plans}) == 12


def test_sample_sip_flow_in_tshark():
    plans = gencalls.plan()
    out = _tshark("-r", str(SAMPLE), "-Y", "sip", "-T", "fields", "-e", "sip.Call-ID",
                  "-e", "sip.Method", "-e", "sip.Status-Code", "-e", "sip.CSeq.method")
    flows: dict[str, list[str]] = {}
    for line in out.splitlines():
        call_id, method, status, cseq = line.split("\t")
        flows.setdefault(call_id, []).append(method or f"{status} {cseq}")
    assert set(flows) == {p.call_id for p in plans}
    for flow in flows.values():
        assert flow == ["INVITE", "100 INVITE", "180 INVITE", "200 INVITE", "ACK", "BYE", "200 BYE"]
    sdp = _tshark("-r", str(SAMPLE), "-Y", "sdp", "-T", "fields", "-e", "sdp.media.port")
    ports = {p.caller_rtp_port for p in plans} | {p.callee_rtp_port for p in plans}
    assert sorted(int(x) for x in sdp.split()) == sorted(ports)  # INVITE and 200 OK of each call


def test_sample_rtp_streams_lossless_in_tshark():
    plans = gencalls.plan()
    rows = _rtp_streams(SAMPLE)
    assert len(rows) == 4
    expected = {f"0x{p.caller_ssrc:08x}" for p in plans} | {f"0x{p.callee_ssrc:08x}" for p in plans}
    assert {r["ssrc"] for r in rows} == expected
    assert {r["payload"] for r in rows} == {"g711U", "g711A"}
    assert all(r["packets"] == "500" and r["lost"] == "0" for r in rows)
    bad = _tshark("-r", str(SAMPLE), "-o", "ip.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE",
                  "-Y", "ip.checksum.status==0 || udp.checksum.status==0 || _ws.malformed")
    assert bad.strip() == ""
    assert "Sender Report" in _tshark("-r", str(SAMPLE), "-Y", "rtcp")


def test_busy_call_and_many_calls(tmp_path):
    out = tmp_path / "busy.pcap"
    gencalls.main([str(out), "--calls", "4", "--duration", "2", "--concurrent", "4", "--busy-every", "2",
                   "--codecs", "PCMA"])
    statuses = _tshark("-r", str(out), "-Y", "sip.Status-Code==486", "-T", "fields", "-e", "sip.Call-ID")
    plans = gencalls.plan(4, 2, 4, busy_every=2, codecs=["PCMA"])
    assert sorted(statuses.split()) == sorted(p.call_id for p in plans if not p.answered)
    rows = _rtp_streams(out)
    assert len(rows) == 4 and all(r["lost"] == "0" and r["packets"] == "100" for r in rows)


def test_audio_is_not_silence():
    plan = gencalls.plan()[0]
    stamps, payloads = [], []
    for _, linktype, data in read_frames(SAMPLE):
        assert linktype == LINKTYPE_ETHERNET
        if len(data) == 214 and int.from_bytes(data[50:54], "big") == plan.caller_ssrc:
            stamps.append(int.from_bytes(data[46:50], "big"))
            payloads.append(data[54:])
    assert len(payloads) == plan.rtp_packets
    pcm = decode_stream(plan.codec, stamps, payloads).samples.astype(np.float64)
    assert len(pcm) == 500 * 160 and np.sqrt(np.mean(pcm ** 2)) > 2000


def test_cli_runs_as_a_script(tmp_path):
    out = tmp_path / "cli.pcap"
    subprocess.run([sys.executable, str(REPO / "scripts" / "gencalls.py"), str(out), "--calls", "1",
                    "--duration", "1"], check=True, capture_output=True, timeout=60, cwd=tmp_path)
    assert sum(1 for _ in read_frames(out)) > 100


@pytest.mark.parametrize("args", [["--codecs", "G729"], ["--duration", "0"], ["--concurrent", "0"]])
def test_cli_rejects_bad_arguments(tmp_path, args):
    with pytest.raises(SystemExit):
        gencalls.main([str(tmp_path / "x.pcap"), *args])

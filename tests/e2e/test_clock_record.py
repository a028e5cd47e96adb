"""`spanrec record` on a capture whose record timestamps jump by years.

The capture holds one ordinary call (INVITE, 180, 200, ACK, RTP both ways,
BYE, 200). Its record timestamps are then damaged the way broken writers and
stepped clocks do: three records stamped years away (one SIP, two RTP), and
from the middle of the call on, every record two years earlier (the clock was
set back and stayed). Expectations come from the capture as tshark reads it
and from the damage the test did; the recording must keep the call's order and
its end by BYE, hold every packet, and say what was corrected.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.conftest import require_tool
from tests.controller.test_legs import frame, rtp, sdp, sip, speech
from tests.e2e.conftest import spanrec_record
from tests.protocols._build import write_classic_pcap

S = 1_000_000_000
MS = 1_000_000
YEAR = 365 * 86_400 * S
T0 = 1_700_000_000 * S
A, B = "10.5.0.1", "10.5.0.2"
CID = "clock-steps@lab"
STEP = -2 * YEAR
OUTLIERS = {"180": 10 * YEAR, 20: 5 * YEAR, 100: -3 * YEAR}   # what, by how much


def _capture(path: Path) -> tuple[list[int], int]:
    """Writes the damaged capture; returns (true times in file order, index of the step)."""
    sig = [(T0, frame(A, 5060, B, 5060, sip("INVITE sip:b SIP/2.0", CID, body=sdp(A, 4000)))),
           (T0 + 200 * MS, frame(B, 5060, A, 5060, sip("SIP/2.0 180 Ringing", CID, to_tag="tt"))),
           (T0 + 1000 * MS, frame(B, 5060, A, 5060, sip("SIP/2.0 200 OK", CID, to_tag="tt",
                                                        body=sdp(B, 5000)))),
           (T0 + 1100 * MS, frame(A, 5060, B, 5060, sip("ACK sip:b SIP/2.0", CID, "1 ACK", to_tag="tt",
                                                        branch="z9hG4bK-ack")))]
    ab, ba = speech(11, 250), speech(12, 250)
    media = []
    for i in range(250):
        t = T0 + 1200 * MS + i * 20 * MS
        media.append((t, frame(A, 4000, B, 5000, rtp(i, 0x1111, ab[i]))))
        media.append((t + 3 * MS, frame(B, 5000, A, 4000, rtp(i, 0x2222, ba[i]))))
    end = [(T0 + 6300 * MS, frame(A, 5060, B, 5060, sip("BYE sip:b SIP/2.0", CID, "2 BYE", to_tag="tt",
                                                        branch="z9hG4bK-bye"))),
           (T0 + 6350 * MS, frame(B, 5060, A, 5060, sip("SIP/2.0 200 OK", CID, "2 BYE", to_tag="tt",
                                                        branch="z9hG4bK-bye")))]
    packets = sig + media + end
    true = [t for t, _ in packets]
    step_at = next(i for i, t in enumerate(true) if t >= T0 + 3700 * MS)
    stamped = [t + (STEP if i >= step_at else 0) for i, t in enumerate(true)]
    stamped[1] += OUTLIERS["180"]
    for k in (20, 100):                      # RTP packets, well before the step
        stamped[len(sig) + k] += OUTLIERS[k]
    write_classic_pcap(path, list(zip(stamped, [d for _, d in packets])))
    return true, step_at


def _tshark(path: Path, *fields: str, display: str = "") -> list[list[str]]:
    cmd = [require_tool("tshark"), "-r", str(path), "-T", "fields", "-E", "separator=|"]
    if display:
        cmd += ["-Y", display]
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60).stdout
    return [ln.split("|") for ln in out.splitlines() if ln.strip()]


def test_clock_jumping_by_years_keeps_the_call_in_order(tmp_path: Path) -> None:
    cap = tmp_path / "jumpy.pcap"
    true, step_at = _capture(cap)
    # what tshark reads in the file: the call's SIP, BYE and its 200 included, and the damage
    sip_msgs = _tshark(cap, "sip.Call-ID", "sip.Method", "sip.Status-Code", display="sip")
    assert [m[0] for m in sip_msgs] == [CID] * 6
    assert [m[1] or m[2] for m in sip_msgs] == ["INVITE", "180", "200", "ACK", "BYE", "200"]
    times = [float(t[0]) for t in _tshark(cap, "frame.time_epoch")]
    assert len(times) == len(true)
    # back jumps: after each of the two outliers ahead, into the one behind, the step
    assert sum(1 for a, b in zip(times, times[1:]) if b < a - 2) == 4

    run = spanrec_record([cap], tmp_path / "rec")
    assert run.returncode == 0, run.stderr
    (call,) = run.calls
    assert call["call_ids"] == [CID]
    assert (call["status"], call["final_response"], call["end_reason"]) == ("answered", 200, "bye")
    assert call["started_at"] <= call["answered_at"] <= call["ended_at"]
    assert call["started_at"].startswith("2023-11-14T22:13:20")        # T0: the clock before the step
    assert call["ended_at"] < "2023-11-14T22:14"                       # seconds later, not years
    assert call.get("late_packets", 0) == 0 and call.get("late_files", []) == []
    # every packet of the capture is in call.pcap, in time order
    (folder,) = [p.parent for p in run.out.rglob("call.json")]
    rec_times = [float(t[0]) for t in _tshark(folder / "call.pcap", "frame.time_epoch")]
    assert len(rec_times) == len(times)
    assert rec_times == sorted(rec_times)
    assert [m[0] or m[1] for m in _tshark(folder / "call.pcap", "sip.Method", "sip.Status-Code",
                                          display="sip")] == ["INVITE", "180", "200", "ACK", "BYE", "200"]
    # what was corrected: one step back of two years, the three outliers restamped
    clock = call["clock"]
    assert clock["packets_restamped"] == len(OUTLIERS)
    (step,) = clock["steps"]
    jump = (true[step_at] + STEP - true[step_at - 1]) / S
    assert step["sensor"] == "replay-1" and abs(step["jump_s"] - jump) < 0.01
    assert any("clock" in w for w in call["warnings"])
    warnings = [ln for ln in run.stderr.splitlines() if ln.startswith("spanrec: warning:")
                and "clock" in ln]
    assert len(warnings) == 1 and str(cap) in warnings[0], run.stderr
    assert "1 time(s)" in warnings[0] and f"{len(OUTLIERS)} packet(s)" in warnings[0]
    doc = json.loads((folder / "call.json").read_text())
    assert doc["clock"] == clock

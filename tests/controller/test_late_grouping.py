"""Late packets of a call are grouped: a retransmission series is one late file.

The call's BYE gets no answer, so the UA retransmits it on RFC 3261 timer E
(500 ms doubling up to T2 = 4 s) until timer F (64·T1 = 32 s). The call ends
at BYE + linger; the retransmissions after that are late. Expected counts come
from the schedule written here, read back by tshark.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from controller.core import Recorder
from storage.local import LocalStore
from tests.conftest import require_tool
from tests.controller.test_late_packets import Sensor
from tests.controller.test_legs import SBC_IN, A, frame, rtp, sdp, sip, speech

S = 1_000_000_000
MS = 1_000_000
T0 = 1_700_000_000 * S
CID = "grouped@lab"


def timer_e(start: int) -> list[int]:
    """Retransmission times of a non-INVITE request over UDP: T1 doubling up to T2, until F."""
    out, t, interval = [], start, 500 * MS
    while True:
        t += interval
        if t - start >= 32 * S:
            return out
        out.append(t)
        interval = min(2 * interval, 4 * S)


def _bye() -> bytes:
    return frame(A, 5060, SBC_IN, 5060, sip("BYE sip:b SIP/2.0", CID, "2 BYE", to_tag="tt",
                                            branch="z9hG4bK-bye"))


def _tshark(path: Path, *fields: str, display: str = "") -> list[str]:
    cmd = [require_tool("tshark"), "-r", str(path), "-T", "fields"]
    if display:
        cmd += ["-Y", display]
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60).stdout
    return [ln for ln in out.splitlines() if ln.strip()]


def test_bye_retransmitted_after_the_call_is_one_late_file(tmp_path: Path) -> None:
    out = tmp_path / "rec"
    rec = Recorder(LocalStore(out, fsync=False))
    sensor = Sensor(rec)
    audio = speech(5, 50)
    call = [(T0, frame(A, 5060, SBC_IN, 5060, sip("INVITE sip:b SIP/2.0", CID, body=sdp(A, 4000)))),
            (T0 + 100 * MS, frame(SBC_IN, 5060, A, 5060, sip("SIP/2.0 200 OK", CID, to_tag="tt",
                                                             body=sdp(SBC_IN, 5000))))]
    call += [(T0 + 200 * MS + i * 20 * MS, frame(A, 4000, SBC_IN, 5000, rtp(i, 7, audio[i])))
             for i in range(50)]
    bye = T0 + 2 * S
    retrans = timer_e(bye)
    assert [round((t - bye) / S, 1) for t in retrans] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5,
                                                          23.5, 27.5, 31.5]
    packets = call + [(bye, _bye())] + [(t, _bye()) for t in retrans]
    # a live sensor: other traffic moves capture time on every 500 ms, in between
    filler = [(t, frame("10.9.9.9", 1, "10.9.9.8", 2, b"x"))
              for t in range(bye + 250 * MS, bye + 70 * S, 500 * MS)]
    for ts, data in sorted(packets + filler, key=lambda p: p[0]):
        sensor.send([(ts, data)])
    rec.writer.join()

    (folder,) = [p.parent for p in out.rglob("call.json")]
    doc = json.loads((folder / "call.json").read_text())
    linger = 2 * S
    in_call = [t for t in retrans if t <= bye + linger]
    late = [t for t in retrans if t > bye + linger]
    assert len(late) == 8
    assert doc["late_files"] == ["late-1.pcap"], doc["late_files"]      # not eight files
    assert doc["late_packets"] == len(late) and doc["late_dropped"] == 0
    # tshark: the late file holds every late retransmission, all BYEs of this call
    got = _tshark(folder / "late-1.pcap", "sip.Method", "sip.Call-ID", "frame.time_epoch")
    assert [ln.split("\t")[:2] for ln in got] == [["BYE", CID]] * len(late)
    assert [round(float(ln.split("\t")[2]) * 1e3) for ln in got] == [t // MS for t in late]
    # and call.pcap has the BYE with the retransmissions inside the linger
    assert len(_tshark(folder / "call.pcap", "frame.number", display="sip.Method == \"BYE\"")) \
        == 1 + len(in_call)
    assert doc["end_reason"] == "bye"
    rec.shutdown()
    assert json.loads((folder / "call.json").read_text())["late_files"] == ["late-1.pcap"]

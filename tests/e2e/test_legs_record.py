"""Two legs of one B2BUA call seen by two sensors (two files), the child leg first:
`spanrec record` writes one recording with both legs, each leg's sensor and the
audio of both ends.  Audio expectations: audioop decodes of the payloads sent."""
from __future__ import annotations

import io
import warnings
import wave
from pathlib import Path

import numpy as np

from protocols.pcapfile import write_pcap
from tests.controller.test_legs import SBC_IN, SBC_OUT, A, B, frame, rtp, sdp, sip, speech

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

T0 = 1_700_000_000 * 1_000_000_000
MS = 1_000_000


def _leg(call_id: str, caller: str, callee: str, cport: int, eport: int, t0: int,
         send: list[bytes], back: list[bytes], headers: tuple[str, ...] = ()) -> list[tuple[int, bytes]]:
    out = [
        (t0, frame(caller, 5060, callee, 5060, sip("INVITE sip:bob@example.com SIP/2.0", call_id,
                                                   body=sdp(caller, cport), headers=headers))),
        (t0 + 100 * MS, frame(callee, 5060, caller, 5060, sip("SIP/2.0 200 OK", call_id, to_tag="tt",
                                                              body=sdp(callee, eport)))),
        (t0 + 200 * MS, frame(caller, 5060, callee, 5060, sip("ACK sip:bob@example.com SIP/2.0", call_id,
                                                              "1 ACK", to_tag="tt", branch="z9hG4bK-a"))),
    ]
    for i, (p, q) in enumerate(zip(send, back)):
        t = t0 + 300 * MS + i * 20 * MS
        out.append((t, frame(caller, cport, callee, eport, rtp(i, 0x100 + cport, p))))
        out.append((t + MS, frame(callee, eport, caller, cport, rtp(i, 0x100 + eport, q))))
    end = t0 + 300 * MS + len(send) * 20 * MS + 100 * MS
    out.append((end, frame(caller, 5060, callee, 5060, sip("BYE sip:bob@example.com SIP/2.0", call_id,
                                                           "2 BYE", to_tag="tt", branch="z9hG4bK-b"))))
    out.append((end + MS, frame(callee, 5060, caller, 5060, sip("SIP/2.0 200 OK", call_id, "2 BYE",
                                                                to_tag="tt", branch="z9hG4bK-b"))))
    return out


def test_child_leg_first_at_another_sensor_is_merged(tmp_path: Path, record) -> None:
    caller_audio, callee_audio = speech(11, 100), speech(12, 100)
    # leg 1 (A -> SBC) at site 1; leg 2 (SBC -> B, naming leg 1) at site 2, whose clock
    # runs 80 ms ahead: its INVITE is dated before the parent's
    parent = _leg("parent@lab", A, SBC_IN, 4000, 5000, T0, caller_audio, callee_audio)
    child = _leg("child@lab", SBC_OUT, B, 6000, 7000, T0 - 80 * MS, caller_audio, callee_audio,
                 headers=("X-Call-ID: parent@lab",))
    files = []
    for name, frames in (("site1.pcap", parent), ("site2.pcap", child)):
        with (tmp_path / name).open("wb") as f:
            write_pcap(f, frames, 1)
        files.append(tmp_path / name)
    run = record(files, tmp_path / "out")
    assert run.returncode == 0, run.stderr
    (doc,) = run.calls
    assert doc["call_ids"] == ["parent@lab", "child@lab"]
    legs = {leg["call_id"]: leg for leg in doc["legs"]}
    assert legs["parent@lab"]["relation"] is None
    assert legs["child@lab"]["relation"] == {"to": "parent@lab", "by": "x-call-id"}
    assert legs["parent@lab"]["sensors"] == ["replay-1"] and legs["child@lab"]["sensors"] == ["replay-2"]
    assert doc["pcap_packets"] == len(parent) + len(child) and doc["copies_dropped"] == 0
    assert doc["started_at"].endswith(":13:19.920000Z")   # the child's INVITE, the earliest packet
    with wave.open(io.BytesIO(next(run.out.rglob("audio.wav")).read_bytes())) as w:
        stereo = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    for ch, payloads in enumerate((caller_audio, callee_audio)):
        exp = np.frombuffer(b"".join(audioop.ulaw2lin(p, 2) for p in payloads), dtype="<i2")
        start = np.flatnonzero(stereo[:, ch])[0]
        assert np.array_equal(stereo[start:start + len(exp), ch], exp), ch

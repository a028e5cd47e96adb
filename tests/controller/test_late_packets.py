"""Packets of a call that come after its end was decided are added to its recording.

A call is recorded and stored; then packets of it arrive (a spooled sensor
catching up, a retransmission after the linger): they land in late-1.pcap of
the same recording folder, counted in call.json, the original files unchanged.
The expected packets are the ones the test sends, counted by tshark.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from controller.core import Recorder
from storage.local import LocalStore
from storage.outbox import OutboxStore
from tests.conftest import require_tool
from tests.controller.test_legs import SBC_IN, A, frame, rtp, sdp, sip, speech

S = 1_000_000_000
T0 = 1_700_000_000 * S


class Sensor:
    def __init__(self, rec: Recorder, sid: str = "s1") -> None:
        self.rec, self.sid, self.seq = rec, sid, 0
        rec.sensor_hello(sid, session="x", mode="live")

    def send(self, frames: list[tuple[int, bytes]]) -> None:
        self.seq += 1
        self.rec.ingest(self.sid, self.seq, 1, [t for t, _ in frames], [len(d) for _, d in frames],
                        b"".join(d for _, d in frames))
        self.rec.heartbeat(self.sid, frames[-1][0], {})


def _call(t0: int) -> tuple[list[tuple[int, bytes]], list[tuple[int, bytes]]]:
    """(the call up to its BYE, packets of it sent later)"""
    audio = speech(3, 60)
    frames = [(t0, frame(A, 5060, SBC_IN, 5060, sip("INVITE sip:b SIP/2.0", "late@lab", body=sdp(A, 4000)))),
              (t0 + S // 10, frame(SBC_IN, 5060, A, 5060, sip("SIP/2.0 200 OK", "late@lab", to_tag="tt",
                                                              body=sdp(SBC_IN, 5000))))]
    frames += [(t0 + S // 5 + i * 20_000_000, frame(A, 4000, SBC_IN, 5000, rtp(i, 7, audio[i])))
               for i in range(50)]
    bye = t0 + 2 * S
    frames.append((bye, frame(A, 5060, SBC_IN, 5060, sip("BYE sip:b SIP/2.0", "late@lab", "2 BYE",
                                                        to_tag="tt", branch="z9hG4bK-b"))))
    late = [(bye + 5 * S, frame(SBC_IN, 5060, A, 5060, sip("SIP/2.0 200 OK", "late@lab", "2 BYE",
                                                           to_tag="tt", branch="z9hG4bK-b")))]
    late += [(bye + 5 * S + i * 20_000_000, frame(A, 4000, SBC_IN, 5000, rtp(50 + i, 7, audio[50 + i])))
             for i in range(1, 10)]
    return frames, late


def _tick(sensor: Sensor, t: int) -> None:
    """Other traffic moves capture time on (a packet of no call)."""
    sensor.send([(t, frame("10.9.9.9", 1, "10.9.9.8", 2, b"x"))])


def _count(path: Path) -> int:
    out = subprocess.run([require_tool("tshark"), "-r", str(path), "-T", "fields", "-e", "frame.number"],
                         capture_output=True, text=True, check=True).stdout
    return len(out.split())


def test_late_packets_are_added_to_the_stored_recording(tmp_path: Path) -> None:
    out = tmp_path / "rec"
    rec = Recorder(LocalStore(out, fsync=False))
    sensor = Sensor(rec)
    call, late = _call(T0)
    sensor.send(call)
    _tick(sensor, call[-1][0] + 4 * S)          # past the linger: the call is finished
    rec.writer.join()
    (folder,) = [p.parent for p in out.rglob("call.json")]
    pcap_before = (folder / "call.pcap").read_bytes()
    sensor.send(late)                            # e.g. a sensor catching up
    # held 32 s from the first late packet (a retransmission series), then quiet
    # for the linger: handed to the writer
    _tick(sensor, late[-1][0] + 4 * S)
    rec.writer.join()
    assert not (folder / "late-1.pcap").exists()
    _tick(sensor, late[0][0] + 34 * S)
    rec.writer.join()
    doc = json.loads((folder / "call.json").read_text())
    assert doc["late_packets"] == len(late) == _count(folder / "late-1.pcap")
    assert doc["late_files"] == ["late-1.pcap"] and doc["late_dropped"] == 0
    assert (folder / "call.pcap").read_bytes() == pcap_before
    assert rec.status()["engine"]["late_packets"] == len(late)
    # a second batch later (after that file was written): late-2.pcap, counts add up
    more = [(late[0][0] + 35 * S, frame(A, 4000, SBC_IN, 5000, rtp(70, 7, speech(4, 1)[0])))]
    sensor.send(more)
    rec.shutdown()
    doc = json.loads((folder / "call.json").read_text())
    assert doc["late_files"] == ["late-1.pcap", "late-2.pcap"]
    assert doc["late_packets"] == len(late) + 1 == _count(folder / "late-1.pcap") + _count(folder / "late-2.pcap")
    assert len(list(out.rglob("call.json"))) == 1      # never a second recording


def test_late_packets_through_the_outbox(tmp_path: Path) -> None:
    """With a remote store the addition goes through the outbox like a recording."""
    target = LocalStore(tmp_path / "store", fsync=False)
    box = OutboxStore(target, tmp_path / "outbox", initial_wait=0.01, max_wait=0.05)
    box.start()
    rec = Recorder(box)
    sensor = Sensor(rec)
    call, late = _call(T0)
    sensor.send(call)
    _tick(sensor, call[-1][0] + 4 * S)
    sensor.send(late)
    rec.shutdown()
    assert box.drain(10)
    (folder,) = [p.parent for p in (tmp_path / "store").rglob("call.json")]
    assert sorted(p.name for p in folder.iterdir()) == ["audio.wav", "call.json", "call.pcap", "late-1.pcap"]
    assert json.loads((folder / "call.json").read_text())["late_packets"] == len(late)
    box.stop()


def test_late_packets_do_not_bring_back_an_erased_recording(tmp_path: Path) -> None:
    """Issue #15: a recording erased on request (or expired) between its store
    and its late packets stays gone: the packets are dropped and counted, no
    folder, late-1.pcap or call.json appears again."""
    out = tmp_path / "rec"
    store = LocalStore(out, fsync=False)
    rec = Recorder(store)
    sensor = Sensor(rec)
    call, late = _call(T0)
    sensor.send(call)
    _tick(sensor, call[-1][0] + 4 * S)
    rec.writer.join()
    (folder,) = [p.parent for p in out.rglob("call.json")]
    prefix = folder.relative_to(out).as_posix()
    assert store.delete(prefix)                  # spanrecctl erase, done by another process
    sensor.send(late)
    _tick(sensor, late[0][0] + 34 * S)
    rec.writer.join()
    assert not folder.exists() and list(out.rglob("*.pcap")) == []
    st = rec.status()
    assert st["late_for_deleted"] == len(late) and st["storage_errors"] == 0
    assert st["engine"]["late_packets"] == len(late)   # seen as late, then dropped
    rec.shutdown()
    assert list(out.rglob("call.json")) == []

"""Long calls: frames spilled to disk give the same recordings, and memory stays flat.

The reference for "the same" is the recording of the same capture without
spilling (itself checked against tshark elsewhere); the long generated call is
checked against what the generator sent (packet count, audio length), counted
by tshark on the written call.pcap.
"""
from __future__ import annotations

import gc
import json
import resource
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from controller.calls.engine import CallConfig, CallEngine
from controller.output.finalize import build_recording
from protocols.errors import DecodeError
from protocols.fragments import Reassembler
from protocols.layers import decode
from protocols.pcapfile import read_frames
from tests.conftest import CALL_CAPTURES, capture, require_tool


def _record(path: Path, config: CallConfig) -> dict[str, dict[str, bytes]]:
    engine = CallEngine(config)
    frags = Reassembler()
    finished = []
    next_advance = 0
    for ts, lt, data in read_frames(path):
        try:
            d = decode(lt, data)
        except DecodeError:
            continue
        engine.process(ts, "s1", lt, data, d)
        if d.is_fragment:
            done = frags.add(ts, lt, data, d)
            if done is not None:
                engine.reassembled(ts, "s1", lt, done.frame, decode(done.linktype, done.frame))
        if ts >= next_advance:
            next_advance = ts + 1_000_000_000
            finished += engine.advance(ts)
    finished += engine.finish_all()
    out = {}
    for call in finished:
        rec = build_recording(call)
        out[rec.recording_id] = {name: data if isinstance(data, bytes) else Path(data).read_bytes()
                                 for name, data in rec.files.items()}
        call.release()
    out["spilled"] = {"calls": engine.spilled_calls}   # type: ignore[dict-item]
    return out


@pytest.mark.parametrize("name", CALL_CAPTURES)
def test_spilled_calls_give_the_same_recordings(tmp_path: Path, name: str) -> None:
    path = capture(name)
    plain = _record(path, CallConfig())
    spilled = _record(path, CallConfig(spill_frames=300, spill_dir=tmp_path / "spill"))
    assert plain.pop("spilled") == {"calls": 0}
    spilled_calls = spilled.pop("spilled")["calls"]
    assert spilled == plain
    big = [f for f in plain.values() if json.loads(f["call.json"])["pcap_packets"] > 600]
    assert spilled_calls >= len(big)
    spill_dir = tmp_path / "spill"
    assert not spill_dir.exists() or not any(spill_dir.iterdir())   # every spill file deleted


def _frame(src: str, sport: int, dst: str, dport: int, payload: bytes) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), 0, 0, 64, 17, 0,
                     bytes(map(int, src.split("."))), bytes(map(int, dst.split("."))))
    return b"\x02" * 12 + b"\x08\x00" + ip + struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def _sip(first: str, cseq: str, to_tag: str | None, body: str = "") -> bytes:
    to = "<sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else "")
    head = [first, "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-" + cseq.replace(" ", ""),
            "From: <sip:alice@example.com>;tag=ft", f"To: {to}", "Call-ID: long@lab", f"CSeq: {cseq}",
            f"Content-Length: {len(body)}"] + (["Content-Type: application/sdp"] if body else [])
    return ("\r\n".join(head) + "\r\n\r\n" + body).encode()


def _sdp(ip: str, port: int) -> str:
    return (f"v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n")


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / (1 << 20)


@pytest.mark.slow
def test_two_hour_call_keeps_memory_flat(tmp_path: Path) -> None:
    """A generated 2-hour G.711 call (720,000 RTP packets) through the Recorder:
    RSS after 30 minutes and at the end differ by less than 16 MiB, and the
    recording holds every packet and 2 hours of audio."""
    from controller.core import Recorder
    from storage.local import LocalStore

    minutes = 120
    out = tmp_path / "rec"
    rec = Recorder(LocalStore(out, fsync=False),
                   call_config=CallConfig(spill_dir=tmp_path / "spill"))
    rec.sensor_hello("s1", session="long", mode="replay")
    t0 = 1_700_000_000 * 1_000_000_000
    rng = np.random.default_rng(5)
    payloads = [rng.integers(0, 256, 160, dtype=np.uint8).tobytes() for _ in range(64)]
    seq = [0]
    sent = [0]

    def batch(frames: list[tuple[int, bytes]]) -> None:
        seq[0] += 1
        rec.ingest("s1", seq[0], 1, [t for t, _ in frames], [len(d) for _, d in frames],
                   b"".join(d for _, d in frames))
        sent[0] += len(frames)

    batch([(t0, _frame("10.0.0.1", 5060, "10.0.0.2", 5060,
                       _sip("INVITE sip:bob@example.com SIP/2.0", "1 INVITE", None, _sdp("10.0.0.1", 4000)))),
           (t0 + 10**8, _frame("10.0.0.2", 5060, "10.0.0.1", 5060,
                               _sip("SIP/2.0 200 OK", "1 INVITE", "tt", _sdp("10.0.0.2", 5000))))])
    start = t0 + 2 * 10**8
    rss = {}
    n = minutes * 60 * 50
    for chunk in range(0, n, 128):
        frames = []
        for i in range(chunk, min(n, chunk + 128)):
            t = start + i * 20_000_000
            hdr = struct.pack("!BBHII", 0x80, 8, i & 0xFFFF, (i * 160) & 0xFFFFFFFF, 0xA)
            frames.append((t, _frame("10.0.0.1", 4000, "10.0.0.2", 5000, hdr + payloads[i % 64])))
            hdr = struct.pack("!BBHII", 0x80, 8, i & 0xFFFF, (i * 160) & 0xFFFFFFFF, 0xB)
            frames.append((t + 1_000_000, _frame("10.0.0.2", 5000, "10.0.0.1", 4000, hdr + payloads[(i + 7) % 64])))
        batch(frames)
        minute = chunk // 3000
        if minute in (30, minutes - 1) and minute not in rss:
            gc.collect()
            rss[minute] = _rss_mib()
    end = start + n * 20_000_000
    batch([(end, _frame("10.0.0.1", 5060, "10.0.0.2", 5060,
                        _sip("BYE sip:bob@example.com SIP/2.0", "2 BYE", "tt")))])
    rec.end_of_capture("s1", {}, "")
    rec.shutdown()
    assert rss[minutes - 1] - rss[30] < 16, rss
    (pcap,) = out.rglob("call.pcap")
    tshark = require_tool("tshark")
    count = subprocess.run([tshark, "-r", str(pcap), "-T", "fields", "-e", "frame.number"],
                           capture_output=True, text=True, check=True).stdout.split()
    assert len(count) == sent[0]
    import soundfile
    info = soundfile.info(str(next(out.rglob("audio.*"))))
    assert abs(info.frames - minutes * 60 * info.samplerate) <= 2 * 160 * info.samplerate // 8000
    assert not any((tmp_path / "spill").iterdir())    # spilled, then deleted once stored


def test_loss_accounting_folded_for_long_streams_counts_the_same() -> None:
    """RtpStream.compact (run at each spill) keeps loss, duplicate and reorder
    accounting exact while holding only the last sequence numbers."""
    from controller.media.streams import RtpStream

    rng = np.random.default_rng(9)
    seqs = []
    s = 100
    for _ in range(20_000):
        s = (s + int(rng.choice([1, 1, 1, 1, 2, 3]))) & 0xFFFF
        seqs.append(s)
    for i in range(0, len(seqs) - 5, 97):            # some reordering and duplicates
        seqs[i], seqs[i + 1] = seqs[i + 1], seqs[i]
        seqs.insert(i + 3, seqs[i + 2])
    plain = RtpStream(b"a", 1, b"b", 2, 7, 0, {}, 0, seqs[0])
    folded = RtpStream(b"a", 1, b"b", 2, 7, 0, {}, 0, seqs[0])
    for n, q in enumerate(seqs):
        plain.add(n, 0, q, n * 160, n)
        folded.add(n, 0, q, n * 160, n)
        if n % 500 == 0:
            folded.compact(keep=200)
    assert len(folded.bits) <= 200 + 500
    assert (folded.lost, folded.duplicates, folded.packets) == (plain.lost, plain.duplicates, plain.packets)
    assert plain.lost > 1000 and plain.duplicates > 100


def test_spill_files_of_a_killed_run_are_deleted_at_start(tmp_path: Path) -> None:
    """Issue #15: a controller killed during a long call leaves its spill files
    (the call's packets in the clear); the next engine on the same folder
    deletes them - the write-ahead log rebuilds the call - and nothing else."""
    spill = tmp_path / "spill"
    engine = CallEngine(CallConfig(spill_frames=5, spill_dir=spill))
    t = 1_700_000_000_000_000_000
    engine.process(t, "s1", 1, f := _frame("10.0.0.1", 5060, "10.0.0.2", 5060,
                                          _sip("INVITE sip:bob@example.com SIP/2.0", "1 INVITE", None,
                                               _sdp("10.0.0.1", 4000))),
                   decode(1, f))
    for i in range(50):
        data = _frame("10.0.0.1", 4000, "10.0.0.2", 4002, struct.pack("!BBHII", 0x80, 8, i, i * 160, 7) + b"\xd5" * 160)
        engine.process(t + (i + 1) * 20_000_000, "s1", 1, data, decode(1, data))
    engine.advance(t + 2_000_000_000)
    left = sorted(p.name for p in spill.iterdir())
    assert engine.spilled_calls == 1 and left and all(n.split(".")[0].isdigit() for n in left)
    (spill / "notes.txt").write_text("not ours")
    del engine                                   # killed: nothing closed
    CallEngine(CallConfig(spill_frames=5, spill_dir=spill))
    assert sorted(p.name for p in spill.iterdir()) == ["notes.txt"]

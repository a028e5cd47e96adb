"""audio.wav of lossless G.711 calls, sample for sample, against tshark + audioop.

Expected channel content: the RTP payloads tshark extracts for the stream,
each decoded with audioop (ulaw2lin/alaw2lin) and written at its RTP
timestamp; the channel starts at the first packet's capture time relative to
the earlier of the two streams.  Channel 0 must be the stream sent from the
caller's address (IP source of the INVITE), channel 1 the other.
"""
from __future__ import annotations

import io
import warnings
import wave
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import capture, require_tool
from tests.controller import tshark_calls as tc

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

G711 = {0: audioop.ulaw2lin, 8: audioop.alaw2lin}
LOSSLESS = ["MagicJack-_short_call.pcap", "nb6-telephone.pcap", "rtp_conversacion.pcap"]


@pytest.fixture(scope="module", autouse=True)
def _tshark() -> None:
    require_tool("tshark")


def read_wav(data: bytes) -> np.ndarray:
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, 8000)
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return pcm.reshape(-1, 2)


def expected_channel(packets: list[tc.RtpPacket], skip: set[int] = frozenset()) -> np.ndarray:
    """Decoded payloads placed at their RTP timestamps (relative to the first packet's);
    packets whose frame number is in `skip` leave zeros."""
    ts0 = packets[0].timestamp
    n = max(p.timestamp - ts0 + len(p.payload) for p in packets)
    out = np.zeros(n, dtype=np.int16)
    for p in packets:
        if p.frame in skip:
            continue
        pcm = np.frombuffer(G711[p.pt](p.payload, 2), dtype="<i2")
        out[p.timestamp - ts0:p.timestamp - ts0 + len(pcm)] = pcm
    return out


def caller_and_callee(path: Path, call_id: str) -> tuple[list[tc.RtpPacket], list[tc.RtpPacket]]:
    caller_ip = tc.expected_calls(path)[call_id].caller_src
    by_stream: dict[tuple, list[tc.RtpPacket]] = {}
    for p in tc.rtp_packets(path):
        if p.pt in G711:
            by_stream.setdefault((p.src, p.sport, p.ssrc), []).append(p)
    (caller,) = [v for k, v in by_stream.items() if k[0] == caller_ip]
    (callee,) = [v for k, v in by_stream.items() if k[0] != caller_ip]
    return caller, callee


def check_stereo(stereo: np.ndarray, left: np.ndarray, left_ns: int, right: np.ndarray,
                 right_ns: int) -> None:
    t0 = min(left_ns, right_ns)
    for ch, exp, start in ((0, left, left_ns), (1, right, right_ns)):
        off = round((start - t0) * 8000 / 1e9)
        got = stereo[:, ch]
        assert np.array_equal(got[off:off + len(exp)], exp), f"channel {ch}"
        assert not got[:off].any() and not got[off + len(exp):].any(), f"channel {ch} padding"
    assert len(stereo) == max(round((s - t0) * 8000 / 1e9) + len(e)
                              for e, s in ((left, left_ns), (right, right_ns)))


@pytest.mark.parametrize("name", LOSSLESS)
def test_audio_equals_audioop_decode_of_tshark_payloads(name: str) -> None:
    path = capture(name)
    run = tc.engine_run(path)
    (call,), (rec,) = run.calls, run.recordings
    caller, callee = caller_and_callee(path, call.call_ids[0])
    stereo = read_wav(rec.files["audio.wav"])
    check_stereo(stereo, expected_channel(caller), caller[0].ts_ns,
                 expected_channel(callee), callee[0].ts_ns)
    used = {s["direction"]: s for s in rec.metadata["streams"] if s["used_for_audio"]}
    assert used["caller"]["ssrc"] == caller[0].ssrc and used["callee"]["ssrc"] == callee[0].ssrc
    assert used["caller"]["src"].startswith(caller[0].src + ":")


def test_removed_rtp_packets_leave_zeros_exactly_there(tmp_path: Path) -> None:
    from protocols.pcapfile import read_frames, write_pcap

    path = capture("nb6-telephone.pcap")  # PCMA: no code decodes to 0, so zeros = missing
    call_id = next(iter(tc.expected_calls(path)))
    caller, callee = caller_and_callee(path, call_id)
    removed = {p.frame for p in callee[100:105]} | {callee[150].frame}
    frames = list(read_frames(path))
    cut = tmp_path / "cut.pcap"
    with cut.open("wb") as f:
        write_pcap(f, [(ts, data) for i, (ts, _, data) in enumerate(frames, 1) if i not in removed],
                   frames[0][1])

    run = tc.run_engine(cut)
    (rec,) = run.recordings
    stereo = read_wav(rec.files["audio.wav"])
    right = expected_channel(callee, removed)
    check_stereo(stereo, expected_channel(caller), caller[0].ts_ns, right, callee[0].ts_ns)
    off = round((callee[0].ts_ns - min(caller[0].ts_ns, callee[0].ts_ns)) * 8000 / 1e9)
    for p in callee:
        pos = off + p.timestamp - callee[0].timestamp
        segment = stereo[pos:pos + len(p.payload), 1]
        assert (not segment.any()) == (p.frame in removed), p.frame
    (stream,) = [s for s in rec.metadata["streams"] if s["ssrc"] == callee[0].ssrc]
    tshark_cut = {s.ssrc: s for s in tc.rtp_streams(cut)}[callee[0].ssrc]
    assert stream["packets"] == len(callee) - len(removed) == tshark_cut.packets
    assert stream["lost"] == len(removed) == tshark_cut.lost


def test_audio_of_a_relayed_call_uses_one_leg_per_direction() -> None:
    path = capture("SIP_CALL_RTP_G711")  # PCMA: the first non-zero sample is the stream start
    rec = tc.engine_run(path).by_call_id()["12013223@200.57.7.195"][1]
    stereo = read_wav(rec.files["audio.wav"])
    used = {s["direction"]: s for s in rec.metadata["streams"] if s["used_for_audio"]}
    for ch, direction in enumerate(("caller", "callee")):
        src, sport = used[direction]["src"].rsplit(":", 1)
        exp = expected_channel(tc.stream_packets(path, src, int(sport), used[direction]["ssrc"]))
        start = np.flatnonzero(stereo[:, ch])[0]
        assert np.array_equal(stereo[start:start + len(exp), ch], exp), direction

"""G.711 decode and timeline placement, checked against the stdlib audioop."""
from __future__ import annotations

import io
import subprocess
import warnings
import wave

import numpy as np
import pytest

from controller.media.audio import (ALAW_TABLE, CODECS, ULAW_TABLE, DecodedStream, alaw_encode, build_stereo,
                              decode_stream, ulaw_encode, unwrap_timestamps, wav_bytes)
from tests.conftest import capture, require_tool

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # reference implementation (stdlib until 3.12)

FRAME = 160


def _stream(n_packets: int, seed: int = 1, first_ts: int = 1000) -> tuple[list[int], list[bytes]]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, n_packets * FRAME, dtype=np.uint8).tobytes()
    payloads = [data[i * FRAME:(i + 1) * FRAME] for i in range(n_packets)]
    stamps = [(first_ts + i * FRAME) & 0xFFFFFFFF for i in range(n_packets)]
    return stamps, payloads


def _ref(payloads: list[bytes], codec: str = "PCMU") -> np.ndarray:
    conv = audioop.ulaw2lin if codec == "PCMU" else audioop.alaw2lin
    return np.frombuffer(conv(b"".join(payloads), 2), dtype="<i2")


def test_tables_equal_audioop():
    codes = bytes(range(256))
    assert ULAW_TABLE.dtype == np.int16 and ULAW_TABLE.shape == (256,)
    assert np.array_equal(ULAW_TABLE, np.frombuffer(audioop.ulaw2lin(codes, 2), "<i2"))
    assert np.array_equal(ALAW_TABLE, np.frombuffer(audioop.alaw2lin(codes, 2), "<i2"))


def test_encoders_equal_audioop():
    pcm = np.arange(-32768, 32768, dtype=np.int16)
    assert np.array_equal(ulaw_encode(pcm), np.frombuffer(audioop.lin2ulaw(pcm.tobytes(), 2), np.uint8))
    assert np.array_equal(alaw_encode(pcm), np.frombuffer(audioop.lin2alaw(pcm.tobytes(), 2), np.uint8))


def test_registry():
    assert set(CODECS) >= {"PCMU", "PCMA"}
    assert all(c.clock_rate == c.sample_rate == 8000 for c in CODECS.values())


@pytest.mark.parametrize("codec", ["PCMU", "PCMA", "pcmu"])
def test_lossless_equals_audioop(codec):
    stamps, payloads = _stream(50)
    out = decode_stream(codec, stamps, payloads)
    assert isinstance(out, DecodedStream) and out.sample_rate == 8000 and out.origin_ts == 1000
    assert out.samples.dtype == np.int16
    assert np.array_equal(out.samples, _ref(payloads, codec.upper()))


def test_lost_packets_are_zeros():
    stamps, payloads = _stream(20)
    ref = _ref(payloads)
    lost = {3, 4, 11}
    keep = [i for i in range(20) if i not in lost]
    out = decode_stream("PCMU", [stamps[i] for i in keep], [payloads[i] for i in keep]).samples
    assert len(out) == len(ref)
    for i in range(20):
        part = out[i * FRAME:(i + 1) * FRAME]
        if i in lost:
            assert not part.any()
        else:
            assert np.array_equal(part, ref[i * FRAME:(i + 1) * FRAME])


def test_wraparound():
    stamps, payloads = _stream(30, first_ts=2**32 - 5 * FRAME - 7)
    assert stamps[10] < stamps[0]  # really wraps
    out = decode_stream("PCMU", stamps, payloads)
    assert np.array_equal(out.samples, _ref(payloads))
    assert out.origin_ts == 2**32 - 5 * FRAME - 7
    assert list(unwrap_timestamps([2**32 - 1, 0, 2**32 - 2])) == [2**32 - 1, 2**32, 2**32 - 2]


def test_reordered_and_duplicated():
    stamps, payloads = _stream(25, first_ts=2**32 - 3 * FRAME)  # reorder across the wrap too
    order = [2, 0, 1, 3, 5, 4, 4, 6] + list(range(7, 25)) + [10]
    out = decode_stream("PCMU", [stamps[i] for i in order], [payloads[i] for i in order])
    assert np.array_equal(out.samples, _ref(payloads))
    assert out.origin_ts == stamps[0]  # packet 0 arrived second but is the origin


def test_duplicate_written_once_first_copy_wins():
    stamps, payloads = _stream(3)
    other = bytes([0x00]) * FRAME
    out = decode_stream("PCMU", stamps + [stamps[1]], payloads + [other]).samples
    assert np.array_equal(out, _ref(payloads))


def test_empty_and_errors():
    assert decode_stream("PCMU", [], []).samples.size == 0
    with pytest.raises(KeyError):
        decode_stream("G729", [0], [b"\x00"])
    with pytest.raises(ValueError):
        decode_stream("PCMU", [0, 2**31 - 1], [b"\x00", b"\x00"], max_samples=10**6)


def test_stereo_alignment():
    left = DecodedStream(np.arange(1, 801, dtype=np.int16), 0, 8000)        # 100 ms
    right = DecodedStream(np.full(400, -5, dtype=np.int16), 0, 8000)        # 50 ms
    # Right starts 25 ms (200 samples) + 40 µs (0.32 sample, rounds away) later.
    stereo = build_stereo(left, 1_000_000_000, right, 1_025_040_000)
    assert stereo.shape == (800, 2) and stereo.dtype == np.int16
    assert np.array_equal(stereo[:, 0], left.samples)
    assert not stereo[:200, 1].any() and (stereo[200:600, 1] == -5).all() and not stereo[600:, 1].any()
    # Right earlier than left: the timeline starts with the right channel.
    stereo = build_stereo(left, 2_000_000_000, right, 1_900_000_000)
    assert stereo.shape == (800 + 800, 2)
    assert (stereo[:400, 1] == -5).all() and np.array_equal(stereo[800:, 0], left.samples)
    # One side missing: silence on that channel.
    mono = build_stereo(None, None, right, 5)
    assert mono.shape == (400, 2) and not mono[:, 0].any()
    assert build_stereo(None, None, None, None).shape == (0, 2)


def test_wav_roundtrip():
    rng = np.random.default_rng(7)
    stereo = rng.integers(-32768, 32768, (1234, 2), dtype=np.int16)
    data = wav_bytes(stereo, 8000)
    with wave.open(io.BytesIO(data)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate(), wav.getnframes()) == (2, 2, 8000, 1234)
        back = np.frombuffer(wav.readframes(1234), "<i2").reshape(-1, 2)
    assert np.array_equal(back, stereo)


def test_real_capture_stream_equals_audioop():
    path = capture("MagicJack-_short_call.pcap")
    tshark = require_tool("tshark")
    out = subprocess.run(
        [tshark, "-r", str(path), "-o", "rtp.heuristic_rtp:TRUE", "-Y", "rtp.ssrc==0x2a173650",
         "-T", "fields", "-e", "rtp.timestamp", "-e", "rtp.payload"],
        capture_output=True, text=True, check=True, timeout=60).stdout
    stamps, payloads = [], []
    for line in out.splitlines():
        ts, payload = line.split("\t")
        stamps.append(int(ts))
        payloads.append(bytes.fromhex(payload.replace(":", "")))
    assert len(payloads) == 642  # tshark: 642 packets, 0 lost
    decoded = decode_stream("PCMU", stamps, payloads)
    ref = _ref(payloads)
    assert len(decoded.samples) == len(ref)
    assert np.array_equal(decoded.samples, ref)


def test_general_path_mixed_sizes_odd_lengths_and_loss():
    """Packets of varying (odd) sizes: the per-sample placement path."""
    rng = np.random.default_rng(3)
    sizes = [160, 80, 81, 159, 240, 1, 160]
    data = rng.integers(0, 256, sum(sizes), dtype=np.uint8).tobytes()
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    payloads = [data[offsets[i]:offsets[i + 1]] for i in range(len(sizes))]
    stamps = [int(5000 + offsets[i]) for i in range(len(sizes))]
    ref = _ref(payloads)
    assert np.array_equal(decode_stream("PCMU", stamps, payloads).samples, ref)
    keep = [0, 2, 3, 6, 4, 3]  # packets 1 and 5 lost, 4 late, 3 twice
    out = decode_stream("PCMU", [stamps[i] for i in keep], [payloads[i] for i in keep]).samples
    expected = ref.copy()
    for lost in (1, 5):
        expected[offsets[lost]:offsets[lost + 1]] = 0
    assert np.array_equal(out, expected)

"""Decoders (controller/media/codecs.py) against independent references.

G.711 against audioop, G.722 against the G722 package (sippy's libg722, not
FFmpeg), Opus against opuslib (the system libopus through ctypes, not PyAV);
the public captures' payloads are the ones tshark extracts.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import soundfile as sf

from controller.media.codecs import CODECS, codec_for, opus_packet_samples
from tests.conftest import capture, require_tool
from tests.controller import tshark_calls as tc

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

G722 = pytest.importorskip("G722")
opuslib = pytest.importorskip("opuslib")


def _payloads(name: str, pt: int) -> list[tc.RtpPacket]:
    require_tool("tshark")
    pkts = [p for p in tc.rtp_packets(capture(name)) if p.pt == pt]
    assert pkts
    return pkts


def _channel(rec, side: int) -> tuple[np.ndarray, int]:
    audio = rec.metadata["audio"]
    pcm, rate = sf.read(io.BytesIO(rec.files[audio["file"]]), dtype="int16", always_2d=True)
    assert rate == audio["sample_rate"] and pcm.shape[1] == 2
    return pcm[:, side], rate


def _placed(pkts: list[tc.RtpPacket], pcm: list[np.ndarray], per_tick: int) -> np.ndarray:
    """Reference channel: each packet's samples at (timestamp - first) * per_tick."""
    ts0 = pkts[0].timestamp
    n = max((p.timestamp - ts0) * per_tick + len(x) for p, x in zip(pkts, pcm))
    out = np.zeros(n, np.int16)
    for p, x in zip(pkts, pcm):
        at = (p.timestamp - ts0) * per_tick
        out[at:at + len(x)] = x
    return out


def test_registry_and_lookup() -> None:
    assert {n: (c.clock_rate, c.sample_rate) for n, c in CODECS.items()} == {
        "PCMU": (8000, 8000), "PCMA": (8000, 8000), "G722": (8000, 16000), "OPUS": (48000, 48000)}
    assert codec_for(("opus", 48000, 2)).name == "OPUS"
    assert codec_for(("G722", 8000, 1)).sample_rate == 16000
    for enc in (("OPUS", 8000, 2), ("PCMU", 16000, 1), ("CN", 8000, 1),
                ("telephone-event", 8000, 1), ("G729", 8000, 1), None):
        assert codec_for(enc) is None, enc


@pytest.mark.parametrize("name,ref", [("PCMU", audioop.ulaw2lin), ("PCMA", audioop.alaw2lin)])
def test_g711_decoder_equals_audioop(name, ref) -> None:
    rng = np.random.default_rng(5)
    payloads = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in (160, 80, 1, 0, 161)]
    dec = CODECS[name].new_decoder()
    pcm, lengths = dec.decode_packets(payloads)
    assert list(lengths) == [160, 80, 1, 0, 161]
    assert np.array_equal(pcm, np.frombuffer(ref(b"".join(payloads), 2), "<i2"))


def test_opus_toc_durations() -> None:
    assert opus_packet_samples(b"") == 0
    assert opus_packet_samples(bytes([15 << 3])) == 960            # hybrid FB 20 ms
    assert opus_packet_samples(bytes([3 << 3])) == 2880            # SILK 60 ms
    assert opus_packet_samples(bytes([(16 << 3) | 1])) == 240      # CELT 2.5 ms x 2
    assert opus_packet_samples(bytes([(31 << 3) | 3, 6])) == 5760  # CELT 20 ms x 6
    assert opus_packet_samples(bytes([(31 << 3) | 3, 7])) == 0     # 140 ms: invalid


def test_g722_decoder_equals_libg722_per_packet_and_joined() -> None:
    pkts = _payloads("sip-rtp-g722.pcap", 9)
    ref_dec = G722.G722(16000, 64000)
    ref = [np.asarray(ref_dec.decode(p.payload), dtype=np.int16) for p in pkts]
    dec = CODECS["G722"].new_decoder()
    # in two batches: the ADPCM state must carry over from one call to the next
    half = len(pkts) // 2
    a, la = dec.decode_packets([p.payload for p in pkts[:half]])
    b, lb = dec.decode_packets([p.payload for p in pkts[half:]])
    assert np.array_equal(np.concatenate([a, b]), np.concatenate(ref))
    assert list(np.concatenate([la, lb])) == [len(x) for x in ref] == [320] * len(pkts)


def test_g722_capture_audio_equals_reference_decode() -> None:
    """sip-rtp-g722.pcap: 16 kHz, the length of the RTP timestamps' span, sample for
    sample the libg722 decode of tshark's payloads, and speech (not noise)."""
    pkts = _payloads("sip-rtp-g722.pcap", 9)
    ref_dec = G722.G722(16000, 64000)
    exp = _placed(pkts, [np.asarray(ref_dec.decode(p.payload), dtype=np.int16) for p in pkts], 2)
    (rec,) = tc.engine_run(capture("sip-rtp-g722.pcap")).recordings
    got, rate = _channel(rec, 1)
    assert rate == 16000 and rec.metadata["audio"]["file"] == "audio.wav"
    assert len(got) == len(exp) == (pkts[-1].timestamp - pkts[0].timestamp + 160) * 2 == 136000
    assert np.array_equal(got, exp)
    assert not _channel(rec, 0)[0].any()
    x = got.astype(np.float64)
    assert np.sqrt(np.mean(x ** 2)) > 100                    # not silence
    assert np.corrcoef(x[1:], x[:-1])[0, 1] > 0.5            # not white noise: speech is smooth
    (s,) = rec.metadata["streams"]
    assert (s["codec"], s["decoded"], s["used_for_audio"]) == ("G722", True, True)


def test_opus_capture_audio_matches_opuslib() -> None:
    """sip-rtp-opus.pcap: 48 kHz mono decode equals opuslib's up to libopus version
    rounding (the two libraries are different builds of libopus)."""
    pkts = _payloads("sip-rtp-opus.pcap", 99)
    ref_dec = opuslib.Decoder(48000, 1)
    ref = [np.frombuffer(ref_dec.decode(p.payload, 5760), dtype="<i2") for p in pkts]
    exp = _placed(pkts, ref, 1)
    (rec,) = tc.engine_run(capture("sip-rtp-opus.pcap")).recordings
    got, rate = _channel(rec, 1)
    assert rate == 48000
    assert len(got) == len(exp) == pkts[-1].timestamp - pkts[0].timestamp + 960 == 408000
    diff = np.abs(got.astype(np.int32) - exp)
    assert diff.max() <= 2 and np.mean(diff) < 0.1
    assert np.corrcoef(got, exp)[0, 1] > 0.99999
    assert np.sqrt(np.mean(exp.astype(np.float64) ** 2)) > 100


def test_opus_decoder_state_and_corrupt_packets() -> None:
    """Packets decoded in batches give the same samples as one by one; a corrupt
    packet gives no samples and the decoder goes on."""
    enc = opuslib.Encoder(48000, 1, opuslib.APPLICATION_VOIP)
    t = np.arange(960 * 20)
    pcm = (np.sin(2 * np.pi * 440 * t / 48000) * 8000).astype(np.int16)
    payloads = [enc.encode(pcm[i:i + 960].tobytes(), 960) for i in range(0, len(pcm), 960)]
    one = CODECS["OPUS"].new_decoder()
    whole, lengths = one.decode_packets(payloads)
    assert list(lengths) == [960] * 20
    two = CODECS["OPUS"].new_decoder()
    parts = [two.decode_packets(payloads[i:i + 3])[0] for i in range(0, 20, 3)]
    assert np.array_equal(np.concatenate(parts), whole)
    bad = CODECS["OPUS"].new_decoder()
    _, lengths = bad.decode_packets([payloads[0], b"\xff\xff\xff", b"", payloads[1]])
    assert list(lengths) == [960, 0, 0, 960]

"""The audio timeline on constructed calls: codec switch, loss, reordering, SSRC
change, wrap-around, timestamp jumps, CN/DTMF, undecodable codecs, formats.

Every call is built packet by packet through the real engine; the expected
channels come from references independent of the code under test (audioop
for G.711, the G722 package, opuslib) placed where the rules of
docs/DECISIONS.md "Audio" put them.
"""
from __future__ import annotations

import io
import struct
import warnings

import numpy as np
import pytest
import soundfile as sf

from controller.calls.engine import CallEngine
from controller.output.finalize import build_recording
from protocols.layers import decode, str_to_ip

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

S = 1_000_000_000
A, B = "10.5.0.1", "10.5.0.2"        # caller, callee
AP, BP = 4000, 5000                  # their RTP ports
PCMU_SDP = {0: "PCMU/8000", 8: "PCMA/8000", 9: "G722/8000", 13: "CN/8000",
            101: "telephone-event/8000", 18: "G729/8000"}


def _frame(src: str, sport: int, dst: str, dport: int, payload: bytes) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), 1, 0, 64, 17, 0,
                     str_to_ip(src), str_to_ip(dst))
    return b"\x00" * 12 + b"\x08\x00" + ip + struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def _sdp(ip: str, port: int, pts: dict[int, str]) -> str:
    return (f"v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP {' '.join(map(str, pts))}\r\n"
            + "".join(f"a=rtpmap:{pt} {enc}\r\n" for pt, enc in pts.items()))


def _sip(first: str, cseq: str, to_tag: str | None, branch: str, body: str = "") -> bytes:
    head = [first, f"Via: SIP/2.0/UDP {A}:5060;branch={branch}", "From: <sip:a@x>;tag=ft",
            "To: <sip:b@x>" + (f";tag={to_tag}" if to_tag else ""), "Call-ID: render-1",
            f"CSeq: {cseq}", f"Content-Length: {len(body)}"]
    if body:
        head.append("Content-Type: application/sdp")
    return ("\r\n".join(head) + "\r\n\r\n" + body).encode()


def rtp(seq: int, ts: int, ssrc: int, pt: int, payload: bytes) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


class Call:
    """One call fed through CallEngine; `pkt` sends RTP from a side (0 caller, 1 callee)."""

    def __init__(self, pts: dict[int, str] | None = None, t: float = 0.0) -> None:
        self.engine = CallEngine()
        self.finished: list = []
        pts = pts or {0: PCMU_SDP[0], 101: PCMU_SDP[101]}
        self.send(t, A, 5060, B, 5060, _sip("INVITE sip:b@x SIP/2.0", "1 INVITE", None, "z9hG4bK-1",
                                            _sdp(A, AP, pts)))
        self.send(t + 0.1, B, 5060, A, 5060, _sip("SIP/2.0 200 OK", "1 INVITE", "tt", "z9hG4bK-1",
                                                  _sdp(B, BP, pts)))
        self.send(t + 0.2, A, 5060, B, 5060, _sip("ACK sip:b@x SIP/2.0", "1 ACK", "tt", "z9hG4bK-a"))

    def send(self, t: float, src: str, sport: int, dst: str, dport: int, payload: bytes) -> None:
        data = _frame(src, sport, dst, dport, payload)
        self.engine.process(round(t * S), "s1", 1, data, decode(1, data))
        self.finished += self.engine.advance(round(t * S))

    def pkt(self, t: float, side: int, data: bytes) -> None:
        if side == 0:
            self.send(t, A, AP, B, BP, data)
        else:
            self.send(t, B, BP, A, AP, data)

    def reinvite(self, t: float, pts: dict[int, str], cseq: int = 2) -> None:
        self.send(t, A, 5060, B, 5060, _sip("INVITE sip:b@x SIP/2.0", f"{cseq} INVITE", "tt",
                                            f"z9hG4bK-r{cseq}", _sdp(A, AP, pts)))
        self.send(t + 0.05, B, 5060, A, 5060, _sip("SIP/2.0 200 OK", f"{cseq} INVITE", "tt",
                                                   f"z9hG4bK-r{cseq}", _sdp(B, BP, pts)))

    def recording(self, fmt: str = "wav"):
        self.finished += self.engine.finish_all()
        (call,) = self.finished
        return build_recording(call, fmt)


def audio(rec) -> tuple[np.ndarray, int]:
    meta = rec.metadata["audio"]
    pcm, rate = sf.read(io.BytesIO(rec.files[meta["file"]]), dtype="int16", always_2d=True)
    assert rate == meta["sample_rate"] and pcm.shape[1] == 2
    return pcm, rate


def tone(n: int, freq: float = 440.0, rate: int = 8000, amp: float = 8000.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return (np.sin(2 * np.pi * freq * t / rate) * amp + rng.normal(0, 300, n)).astype(np.int16)


def g711(codec: str, n_packets: int, seed: int = 0) -> list[bytes]:
    """Payloads of a tone (A-law has no code decoding to 0: zeros mean 'no packet')."""
    pcm = tone(160 * n_packets, 300 + 50 * seed, seed=seed).tobytes()
    enc = audioop.lin2ulaw(pcm, 2) if codec == "PCMU" else audioop.lin2alaw(pcm, 2)
    return [enc[i * 160:(i + 1) * 160] for i in range(n_packets)]


def ref(codec: str, payloads: list[bytes]) -> np.ndarray:
    conv = audioop.ulaw2lin if codec == "PCMU" else audioop.alaw2lin
    return np.frombuffer(conv(b"".join(payloads), 2), "<i2")


def off(t: float, t0: float, rate: int) -> int:
    return round((t - t0) * rate)


def _used(rec) -> dict:
    return {(s["direction"], s["ssrc"]): s for s in rec.metadata["streams"]}


# -- codec switches -----------------------------------------------------------------

def test_codec_switch_pcmu_to_pcma_by_reinvite_continues_at_the_right_time() -> None:
    c = Call()
    ulaw, alaw = g711("PCMU", 100), g711("PCMA", 100, seed=1)
    callee = g711("PCMA", 200, seed=2)
    for i in range(200):
        t = 1.0 + i * 0.02
        if i == 100:
            c.reinvite(t - 0.01, {8: PCMU_SDP[8]})
        pt, pl = (0, ulaw[i]) if i < 100 else (8, alaw[i - 100])
        c.pkt(t, 0, rtp(1000 + i, 5000 + i * 160, 0xA1, pt, pl))
        c.pkt(t + 0.005, 1, rtp(i, 90 + i * 160, 0xB1, 8, callee[i]))
    rec = c.recording()
    pcm, rate = audio(rec)
    assert rate == 8000
    assert np.array_equal(pcm[:16000, 0], ref("PCMU", ulaw))
    assert np.array_equal(pcm[16000:32000, 0], ref("PCMA", alaw))      # from 3.0 s on, exactly
    assert np.array_equal(pcm[40:40 + 32000, 1], ref("PCMA", callee))
    seg = rec.metadata["audio"]["sources"]["caller"]["segments"]
    assert [(s["codec"], s["packets"], s["offset_s"]) for s in seg] == [("PCMU", 100, 0.0), ("PCMA", 100, 2.0)]


def test_codec_switch_to_g722_upsamples_the_call_to_16khz() -> None:
    G722 = pytest.importorskip("G722")
    c = Call({0: PCMU_SDP[0], 9: PCMU_SDP[9]})
    ulaw = g711("PCMU", 100)
    wide = tone(320 * 100, 700, rate=16000, seed=3)
    g722 = G722.G722(16000, 64000).encode(wide)
    g722_payloads = [g722[i * 160:(i + 1) * 160] for i in range(100)]
    callee = g711("PCMU", 200, seed=4)
    for i in range(200):
        t = 1.0 + i * 0.02
        if i == 100:
            c.reinvite(t - 0.01, {9: PCMU_SDP[9]})
        pt, pl = (0, ulaw[i]) if i < 100 else (9, g722_payloads[i - 100])
        c.pkt(t, 0, rtp(7 + i, 123 + i * 160, 0xA2, pt, pl))
        c.pkt(t, 1, rtp(9 + i, 456 + i * 160, 0xB2, 0, callee[i]))
    rec = c.recording()
    pcm, rate = audio(rec)
    assert rate == 16000 and rec.metadata["audio"]["sample_rate"] == 16000
    exp_wide = np.asarray(G722.G722(16000, 64000).decode(g722), dtype=np.int16)
    # the G.722 part starts exactly 2 s (32000 samples at 16 kHz) after the first packet
    assert np.array_equal(pcm[32000:64000, 0], exp_wide)
    # the PCMU part and the callee are resampled (soxr): compare with a one-shot soxr
    import soxr
    for got, exp in ((pcm[:32000, 0], ref("PCMU", ulaw)), (pcm[:64000, 1], ref("PCMU", callee))):
        up = soxr.resample(exp, 8000, 16000)
        assert len(up) == len(got)
        assert np.corrcoef(got.astype(float), up.astype(float))[0, 1] > 0.999
    assert len(pcm) == 64000


# -- loss, reordering, duplicates ---------------------------------------------------

def test_ten_percent_random_loss_leaves_zeros_exactly_where_lost() -> None:
    rng = np.random.default_rng(11)
    n = 500
    lost = set(rng.choice(np.arange(1, n), size=n // 10, replace=False).tolist())
    c = Call({8: PCMU_SDP[8]})
    alaw = g711("PCMA", n, seed=5)
    for i in range(n):
        if i not in lost:
            c.pkt(1.0 + i * 0.02 + rng.uniform(0, 0.004), 0, rtp(i, i * 160, 0xA3, 8, alaw[i]))
    rec = c.recording()
    pcm, _ = audio(rec)
    exp = ref("PCMA", alaw).copy()
    for i in lost:
        exp[i * 160:(i + 1) * 160] = 0
    assert len(pcm) == len(exp) and np.array_equal(pcm[:, 0], exp)
    for i in range(n):
        assert (not pcm[i * 160:(i + 1) * 160, 0].any()) == (i in lost)
    (s,) = rec.metadata["streams"]
    assert (s["lost"], s["packets"]) == (len(lost), n - len(lost))


def test_opus_loss_leaves_silence_of_the_timestamp_gap() -> None:
    opuslib = pytest.importorskip("opuslib")
    enc = opuslib.Encoder(48000, 1, opuslib.APPLICATION_VOIP)
    pcm48 = tone(960 * 150, 440, rate=48000, seed=6)
    payloads = [enc.encode(pcm48[i * 960:(i + 1) * 960].tobytes(), 960) for i in range(150)]
    lost = set(np.random.default_rng(2).choice(np.arange(1, 150), 15, replace=False).tolist())
    c = Call({111: "opus/48000/2"})
    dec = opuslib.Decoder(48000, 1)
    exp = np.zeros(150 * 960, np.int16)
    for i in range(150):
        if i in lost:
            continue
        c.pkt(1.0 + i * 0.02, 0, rtp(i, 777 + i * 960, 0xA4, 111, payloads[i]))
        exp[i * 960:(i + 1) * 960] = np.frombuffer(dec.decode(payloads[i], 5760), "<i2")
    pcm, rate = audio(c.recording())
    assert rate == 48000 and len(pcm) == len(exp)
    for i in range(150):
        part = pcm[i * 960:(i + 1) * 960, 0]
        assert (not part.any()) if i in lost else part.any(), i
    assert np.abs(pcm[:, 0].astype(np.int32) - exp).max() <= 2


def _jittered_call(order: list[int], codec_pt: int = 0, payloads: list[bytes] | None = None,
                   pts: dict[int, str] | None = None):
    c = Call(pts)
    for slot, i in enumerate(order):      # capture time follows arrival, timestamps follow i
        c.pkt(1.0 + slot * 0.02, 0, rtp(300 + i, 4242 + i * 160, 0xA5, codec_pt, payloads[i]))
    return c.recording()


@pytest.mark.parametrize("codec", ["PCMU", "G722"])
def test_reordered_and_duplicated_packets_give_the_same_audio_as_in_order(codec: str) -> None:
    n = 300
    if codec == "G722":
        G722 = pytest.importorskip("G722")
        data = G722.G722(16000, 64000).encode(tone(320 * n, 500, rate=16000, seed=7))
        payloads, pt, pts = [data[i * 160:(i + 1) * 160] for i in range(n)], 9, {9: PCMU_SDP[9]}
    else:
        payloads, pt, pts = g711("PCMU", n, seed=7), 0, None
    in_order = _jittered_call(list(range(n)), pt, payloads, pts)
    rng = np.random.default_rng(8)
    order = [0]                           # the first packet stays first: same anchor
    rest = list(range(1, n))
    for k in range(0, len(rest), 6):
        block = rest[k:k + 6]
        rng.shuffle(block)
        order += block
    order.insert(50, order[40])           # a duplicate, arriving late
    shuffled = _jittered_call(order, pt, payloads, pts)
    a, _ = audio(in_order)
    b, _ = audio(shuffled)
    assert np.array_equal(a, b) and a[:, 0].any()
    (s,) = shuffled.metadata["streams"]
    assert s["lost"] == 0 and s["duplicates"] == 1


# -- stream changes, wrap-around, timestamp jumps -----------------------------------

def test_ssrc_change_continues_on_the_same_channel_at_wall_clock_time() -> None:
    c = Call({8: PCMU_SDP[8]})
    first, second = g711("PCMA", 150, seed=9), g711("PCMA", 150, seed=10)
    for i in range(150):
        c.pkt(1.0 + i * 0.02, 0, rtp(100 + i, 10_000 + i * 160, 0x1111, 8, first[i]))
    for i in range(150):   # a transfer / relay restart: new SSRC, sequence and timestamps
        c.pkt(4.5 + i * 0.02, 0, rtp(40_000 + i, 3_000_000_000 + i * 160, 0x2222, 8, second[i]))
    rec = c.recording()
    pcm, _ = audio(rec)
    at = off(4.5, 1.0, 8000)
    assert np.array_equal(pcm[:24000, 0], ref("PCMA", first))
    assert not pcm[24000:at, 0].any()
    assert np.array_equal(pcm[at:at + 24000, 0], ref("PCMA", second)) and len(pcm) == at + 24000
    used = _used(rec)
    assert used[("caller", 0x1111)]["used_for_audio"] and used[("caller", 0x2222)]["used_for_audio"]
    src = rec.metadata["audio"]["sources"]["caller"]
    assert [s["ssrc"] for s in src["segments"]] == [0x1111, 0x2222]
    assert [s["offset_s"] for s in src["segments"]] == [0.0, 3.5]


def test_new_ssrc_overlapping_the_old_one_takes_over_from_its_first_packet() -> None:
    c = Call({8: PCMU_SDP[8]})
    first, second = g711("PCMA", 100, seed=12), g711("PCMA", 100, seed=13)
    for i in range(100):
        c.pkt(1.0 + i * 0.02, 0, rtp(i, i * 160, 0x3333, 8, first[i]))
    for i in range(100):   # starts 60 ms before the old stream's last packet
        c.pkt(2.92 + 0.001 + i * 0.02, 0, rtp(9000 + i, 77 + i * 160, 0x4444, 8, second[i]))
    pcm, _ = audio(c.recording())
    at = off(2.921, 1.0, 8000)
    assert np.array_equal(pcm[:at, 0], ref("PCMA", first)[:at])
    assert np.array_equal(pcm[at:at + 16000, 0], ref("PCMA", second))


def test_sequence_and_timestamp_wrap_around() -> None:
    c = Call({8: PCMU_SDP[8]})
    n = 400
    alaw = g711("PCMA", n, seed=14)
    ts0 = 2**32 - 100 * 160 + 37
    order = list(range(n))
    order[120], order[121] = order[121], order[120]     # reordered just after the wraps
    order.remove(250)                                    # one lost
    for slot, i in enumerate(order):
        c.pkt(1.0 + slot * 0.02, 0, rtp(65_500 + i, ts0 + i * 160, 0xA6, 8, alaw[i]))
    rec = c.recording()
    pcm, _ = audio(rec)
    exp = ref("PCMA", alaw).copy()
    exp[250 * 160:251 * 160] = 0
    assert len(pcm) == n * 160 and np.array_equal(pcm[:, 0], exp)
    (s,) = rec.metadata["streams"]
    assert (s["packets"], s["lost"]) == (n - 1, 1)


def _one_stream(times: list[float], stamps: list[int], payloads: list[bytes]):
    c = Call({8: PCMU_SDP[8]})
    for i, (t, ts) in enumerate(zip(times, stamps)):
        c.pkt(t, 0, rtp(i, ts, 0xA7, 8, payloads[i]))
    return c.recording()


def test_timestamp_jump_of_a_restarted_source_does_not_stretch_the_timeline() -> None:
    alaw = g711("PCMA", 200, seed=15)
    times = [1.0 + i * 0.02 for i in range(200)]
    stamps = [i * 160 + (3_000_000 if i >= 100 else 0) for i in range(200)]   # +375 s in RTP time
    rec = _one_stream(times, stamps, alaw)
    pcm, _ = audio(rec)
    assert len(pcm) == 200 * 160 and np.array_equal(pcm[:, 0], ref("PCMA", alaw))
    segs = rec.metadata["audio"]["sources"]["caller"]["segments"]
    assert [s["offset_s"] for s in segs] == [0.0, 2.0]


def test_timestamps_running_on_through_a_pause_do_not_squash_the_timeline() -> None:
    """The sender stops for 5 s and resumes with the next timestamp (no gap in RTP time)."""
    alaw = g711("PCMA", 200, seed=16)
    times = [1.0 + i * 0.02 + (5.0 if i >= 100 else 0) for i in range(200)]
    rec = _one_stream(times, [i * 160 for i in range(200)], alaw)
    pcm, _ = audio(rec)
    at = off(times[100], 1.0, 8000)
    exp = ref("PCMA", alaw)
    assert np.array_equal(pcm[:16000, 0], exp[:16000]) and not pcm[16000:at, 0].any()
    assert np.array_equal(pcm[at:, 0], exp[16000:])


def test_a_burst_of_late_packets_is_placed_by_timestamp() -> None:
    """Jitter, not a restart: packets held back 1.5 s and delivered in a burst stay
    where their timestamps put them, like the undisturbed stream."""
    alaw = g711("PCMA", 300, seed=17)
    stamps = [i * 160 for i in range(300)]
    steady = [1.0 + i * 0.02 for i in range(300)]
    burst = [t if not 100 <= i < 175 else 4.5 + (i - 100) * 0.0001 for i, t in enumerate(steady)]
    a, _ = audio(_one_stream(steady, stamps, alaw))
    b, _ = audio(_one_stream(burst, stamps, alaw))
    assert np.array_equal(a, b) and np.array_equal(a[:, 0], ref("PCMA", alaw))


# -- what is not audio, what cannot be decoded --------------------------------------

def test_comfort_noise_is_silence_and_telephone_events_are_not_audio() -> None:
    c = Call({0: PCMU_SDP[0], 13: PCMU_SDP[13], 101: PCMU_SDP[101]})
    ulaw = g711("PCMU", 120, seed=18)
    for i in range(120):
        if i < 50 or i >= 70:
            pt, pl = 0, ulaw[i]
        elif i < 60:
            pt, pl = 13, b"\x40"                                # CN: noise level only
        else:
            pt, pl = 101, struct.pack("!BBH", 5, 0x0A, 160 * (i - 59))   # digit 5
        c.pkt(1.0 + i * 0.02, 0, rtp(i, i * 160, 0xA8, pt, pl))
    rec = c.recording()
    pcm, rate = audio(rec)
    exp = ref("PCMU", ulaw).copy()
    exp[50 * 160:70 * 160] = 0
    assert rate == 8000 and np.array_equal(pcm[:, 0], exp)
    (s,) = rec.metadata["streams"]
    assert (s["codec"], s["packets"], s["decoded"]) == ("PCMU", 120, True)
    assert [seg["codec"] for seg in rec.metadata["audio"]["sources"]["caller"]["segments"]] == ["PCMU"]


def test_undecodable_stream_is_listed_and_the_other_channel_still_written() -> None:
    c = Call({0: PCMU_SDP[0], 18: PCMU_SDP[18]})
    ulaw = g711("PCMU", 100, seed=19)
    for i in range(100):
        c.pkt(1.0 + i * 0.02, 0, rtp(i, i * 160, 0xA9, 0, ulaw[i]))
        c.pkt(1.0 + i * 0.02, 1, rtp(i, i * 160, 0xB9, 18, bytes(range(i % 5, i % 5 + 20))))
    rec = c.recording()
    pcm, _ = audio(rec)
    assert np.array_equal(pcm[:, 0], ref("PCMU", ulaw)) and not pcm[:, 1].any()
    used = _used(rec)
    g729 = used[("callee", 0xB9)]
    assert (g729["codec"], g729["decoded"], g729["used_for_audio"], g729["packets"]) == ("G729", False, False, 100)
    assert used[("caller", 0xA9)]["decoded"]
    assert list(rec.metadata["audio"]["sources"]) == ["caller"]
    assert rec.metadata["pcap_packets"] == 3 + 200          # the G.729 packets are in call.pcap


# -- formats and rendering ----------------------------------------------------------

def _two_sided(fmt: str):
    c = Call({9: PCMU_SDP[9], 0: PCMU_SDP[0]})
    ulaw = g711("PCMU", 250, seed=20)
    callee = g711("PCMU", 250, seed=21)
    for i in range(250):
        c.pkt(1.0 + i * 0.02, 0, rtp(i, i * 160, 0xAA, 0, ulaw[i]))
        c.pkt(1.013 + i * 0.02, 1, rtp(i, i * 160, 0xBA, 0, callee[i]))
    return c.recording(fmt)


def test_flac_is_lossless_and_named_in_call_json() -> None:
    wav = _two_sided("wav")
    flac = _two_sided("flac")
    assert "audio.flac" in flac.files and "audio.wav" not in flac.files
    assert flac.metadata["audio"]["file"] == "audio.flac" and flac.files["audio.flac"][:4] == b"fLaC"
    assert np.array_equal(audio(flac)[0], audio(wav)[0])


def test_opus_file_is_ogg_opus_close_to_the_wav() -> None:
    wav, _ = audio(_two_sided("wav"))
    rec = _two_sided("opus")
    assert rec.metadata["audio"]["file"] == "audio.opus" and "audio.wav" not in rec.files
    data = rec.files["audio.opus"]
    assert data[:4] == b"OggS" and b"OpusHead" in data[:64]
    pcm, rate = audio(rec)
    assert rate == 8000 and abs(len(pcm) - len(wav)) <= 160
    n = min(len(pcm), len(wav))
    for ch in (0, 1):
        assert np.corrcoef(pcm[:n, ch].astype(float), wav[:n, ch].astype(float))[0, 1] > 0.95
    assert len(data) < len(_two_sided("wav").files["audio.wav"]) / 2


def test_chunked_rendering_equals_one_pass(monkeypatch) -> None:
    """Chunk boundaries (decode batches, resampler feeding) change nothing."""
    G722 = pytest.importorskip("G722")
    import controller.media.audio as audio_mod

    def build(fmt: str = "wav"):
        c = Call({0: PCMU_SDP[0], 9: PCMU_SDP[9]})
        data = G722.G722(16000, 64000).encode(tone(320 * 150, 900, rate=16000, seed=22))
        ulaw = g711("PCMU", 150, seed=23)
        for i in range(150):
            c.pkt(1.0 + i * 0.02, 0, rtp(i, i * 160, 0xAB, 9, data[i * 160:(i + 1) * 160]))
            c.pkt(1.0 + i * 0.02, 1, rtp(i, i * 160, 0xBB, 0, ulaw[i]))
        return c.recording(fmt).files["audio.wav"]

    whole = build()
    monkeypatch.setattr(audio_mod, "CHUNK_FRAMES", 777)
    assert build() == whole


def test_audio_format_setting_and_flags() -> None:
    from click.testing import CliRunner
    from pydantic import ValidationError

    from cli.main import cli
    from cli.settings import ControllerSettings
    assert ControllerSettings().audio_format == "wav"
    assert ControllerSettings(audio_format="opus").audio_format == "opus"
    with pytest.raises(ValidationError):
        ControllerSettings(audio_format="mp3")
    for cmd in ("record", "controller"):
        out = CliRunner().invoke(cli, [cmd, "--help"]).output
        assert "--audio-format [wav|flac|opus]" in out


def test_garbage_timestamps_and_payload_types_stay_bounded() -> None:
    """Random timestamps, payload types (audio, CN, events, unknown, Opus) and sizes:
    a recording comes out, no longer than the packets' capture span + 30 s."""
    rng = np.random.default_rng(24)
    c = Call({0: PCMU_SDP[0], 8: PCMU_SDP[8], 9: PCMU_SDP[9], 13: PCMU_SDP[13],
              101: PCMU_SDP[101], 111: "opus/48000/2"})
    n = 3000
    pts = rng.choice([0, 8, 9, 13, 101, 96, 111], n)
    jumpy = rng.random(n) < 0.2
    ts = np.cumsum(np.where(jumpy, rng.integers(0, 2**32, n), 160)) & 0xFFFFFFFF
    for i in range(n):
        payload = rng.integers(0, 256, int(rng.integers(0, 400)), dtype=np.uint8).tobytes()
        c.pkt(1.0 + i * 0.02, i % 2, rtp(int(rng.integers(0, 65536)), int(ts[i]), 0xC0 + i % 2,
                                         int(pts[i]), payload))
    rec = c.recording()
    pcm, rate = audio(rec)
    assert rate == 48000 and len(pcm) <= (n * 0.02 + 30) * rate
    assert rec.metadata["pcap_packets"] == 3 + n

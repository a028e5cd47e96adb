"""SDES-SRTP (RFC 4568) decrypted at finalize: audio equal, sample for sample, to the
audioop decode of the plaintext we encrypted with libsrtp; SRTCP reports read in
clear; re-keying, rollover, authentication failures, spilled calls; call.pcap keeps
the ciphertext as captured."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from controller.calls.engine import CallConfig
from controller.media.srtp import SdesKeyError, sdes_keys
from protocols.pcapfile import read_frames
from tests.controller._srtp_calls import (CALLEE_PORT, CALLER_PORT, PROFILES, SrtpCall, crypto,
                                          decode_payloads, key_of, protector, read_wav, rtp, sdp,
                                          two_way, voice)
from tests.controller.test_calls_engine import CALLEE_IP, CALLER_IP


def sdes_call(suite: str, config: CallConfig | None = None, pt: int = 0):
    n = PROFILES[suite][1]
    ka, kb = key_of(1, n), key_of(2, n)
    call = SrtpCall(sdp(CALLER_IP, CALLER_PORT, "RTP/SAVP", (crypto(1, suite, ka),), pt),
                    sdp(CALLEE_IP, CALLEE_PORT, "RTP/SAVP", (crypto(1, suite, kb),), pt), config)
    return call, protector(suite, ka), protector(suite, kb)


def check_audio(rec, call: SrtpCall, pt: int = 0) -> None:
    stereo = read_wav(rec.files["audio.wav"])
    for side in (0, 1):
        exp = decode_payloads(call.sent[side].payloads, pt)
        got = stereo[:, side]
        assert np.array_equal(got[:len(exp)], exp), f"channel {side}"
        assert not got[len(exp):].any()


@pytest.mark.parametrize("suite", sorted(PROFILES))
def test_sdes_suites_decrypt_to_the_plaintext(suite: str, tmp_path: Path) -> None:
    call, pa, pb = sdes_call(suite, pt=8 if "GCM" in suite else 0)
    pt = 8 if "GCM" in suite else 0
    two_way(call, 2.2, 150, {0: pa, 1: pb}, pt=pt)
    finished, rec = call.finish(6)
    meta = rec.metadata
    check_audio(rec, call, pt)
    assert meta["encrypted"] is True
    for s in meta["streams"]:
        assert s["encrypted"] and s["decoded"] and s["used_for_audio"]
        assert s["encryption"] == {"method": "sdes", "suite": suite, "keys": "visible",
                                   "decrypted": 150, "auth_failures": 0, "not_decrypted": 0,
                                   "reason": None}
        assert (s["packets"], s["lost"]) == (150, 0)
        assert s["codec"] == ("PCMA" if pt == 8 else "PCMU")
    assert not any(src["noise"]["noise_like"] for src in meta["audio"]["sources"].values())
    # call.pcap: the packets as captured (ciphertext), every one of them
    path = tmp_path / "call.pcap"
    path.write_bytes(rec.files["call.pcap"])
    payloads = {data[42:] for _, _, data in read_frames(path)}
    assert set(call.sent[0].frames) | set(call.sent[1].frames) <= payloads


def test_each_direction_uses_the_key_of_its_own_sdp() -> None:
    # swapped keys (caller encrypts with the callee's key): nothing authenticates
    suite = "AES_CM_128_HMAC_SHA1_80"
    call, pa, pb = sdes_call(suite)
    two_way(call, 2.2, 50, {0: pb, 1: pa})
    _, rec = call.finish(4)
    meta = rec.metadata
    assert meta["audio"] is None and "audio.wav" not in rec.files
    for s in meta["streams"]:
        assert s["encrypted"] and not s["decoded"]
        assert (s["encryption"]["decrypted"], s["encryption"]["auth_failures"]) == (0, 50)
    assert any("authentication failed" in w for w in meta["warnings"])


def test_tampered_packets_are_counted_and_silent() -> None:
    suite = "AES_CM_128_HMAC_SHA1_32"
    call, pa, pb = sdes_call(suite)
    pay = voice(100, 7)
    bad = {10, 11, 60}
    for i in range(100):
        pkt = pa.protect(rtp(500 + i, i * 160, 0xA, 0, pay[i]))
        if i in bad:            # one flipped bit of ciphertext: the tag no longer matches
            pkt = pkt[:20] + bytes([pkt[20] ^ 1]) + pkt[21:]
        call.send(2.2 + i * 0.02, 0, pkt, None if i in bad else pay[i])
    _, rec = call.finish(5)
    (s,) = rec.metadata["streams"]
    assert s["encryption"]["auth_failures"] == 3 and s["encryption"]["decrypted"] == 97
    assert s["packets"] == 100 and s["lost"] == 0       # quality sees every packet
    stereo = read_wav(rec.files["audio.wav"])
    assert np.array_equal(stereo[:16000, 0], decode_payloads(call.sent[0].payloads))


def test_rollover_counter_across_the_sequence_wrap() -> None:
    call, pa, pb = sdes_call("AES_CM_128_HMAC_SHA1_80")
    two_way(call, 2.2, 300, {0: pa, 1: pb}, seq0=65536 - 150)   # wraps after 150 packets
    _, rec = call.finish(9)
    check_audio(rec, call)
    for s in rec.metadata["streams"]:
        assert (s["encryption"]["decrypted"], s["encryption"]["auth_failures"]) == (300, 0)
        assert s["lost"] == 0


def test_reinvite_rekeys_and_late_packets_keep_the_old_key() -> None:
    suite = "AES_CM_128_HMAC_SHA1_80"
    call, pa, pb = sdes_call(suite)
    ka2, kb2 = key_of(3), key_of(4)
    pa2, pb2 = protector(suite, ka2), protector(suite, kb2)
    pay = {0: voice(200, 1), 1: voice(200, 2)}
    # re-INVITE at 3.9 s: new keys on both sides; each sender switches a few packets late
    switch = {0: 90, 1: 95}      # packet index (at 2.2 + i * 0.02 s) from which the new key is used
    for i in range(200):
        t = 2.2 + i * 0.02
        if i == 85:
            call.reinvite(t - 0.001, 2, sdp(CALLER_IP, CALLER_PORT, "RTP/SAVP", (crypto(1, suite, ka2),)),
                          sdp(CALLEE_IP, CALLEE_PORT, "RTP/SAVP", (crypto(1, suite, kb2),)))
        for side, ssrc, old, new in ((0, 0xA, pa, pa2), (1, 0xB, pb, pb2)):
            s = new if i >= switch[side] else old
            call.send(t, side, s.protect(rtp(100 + i, i * 160, ssrc, 0, pay[side][i])),
                      pay[side][i])
    _, rec = call.finish(8)
    check_audio(rec, call)
    for s in rec.metadata["streams"]:
        assert (s["encryption"]["decrypted"], s["encryption"]["auth_failures"]) == (200, 0)


def test_offer_with_several_crypto_lines_answer_picks_one() -> None:
    # the offerer lists two suites (tags 1, 2); the answer takes tag 2: the offerer
    # then sends with its tag-2 line (RFC 4568 6.1)
    k80, k32, kb = key_of(1), key_of(5), key_of(2)
    call = SrtpCall(sdp(CALLER_IP, CALLER_PORT, "RTP/SAVP",
                        (crypto(1, "AES_CM_128_HMAC_SHA1_80", k80), crypto(2, "AES_CM_128_HMAC_SHA1_32", k32))),
                    sdp(CALLEE_IP, CALLEE_PORT, "RTP/SAVP", (crypto(2, "AES_CM_128_HMAC_SHA1_32", kb),)))
    two_way(call, 2.2, 80, {0: protector("AES_CM_128_HMAC_SHA1_32", k32),
                            1: protector("AES_CM_128_HMAC_SHA1_32", kb)})
    _, rec = call.finish(5)
    check_audio(rec, call)
    caller = rec.metadata["streams"][0]
    assert caller["encryption"]["suite"] == "AES_CM_128_HMAC_SHA1_32"
    assert caller["encryption"]["decrypted"] == 80


def test_mki_is_matched_and_stripped() -> None:
    suite = "AES_CM_128_HMAC_SHA1_80"
    ka, kb = key_of(1), key_of(2)
    call = SrtpCall(sdp(CALLER_IP, CALLER_PORT, "RTP/SAVP", (crypto(1, suite, ka, "|2^20|7:2"),)),
                    sdp(CALLEE_IP, CALLEE_PORT, "RTP/SAVP", (crypto(1, suite, kb),)))
    pa, pb = protector(suite, ka), protector(suite, kb)
    pay = voice(60, 3)
    for i in range(60):
        pkt = pa.protect(rtp(1 + i, i * 160, 0xA, 0, pay[i]))
        pkt = pkt[:-10] + b"\x00\x07" + pkt[-10:]          # MKI 7 (2 bytes) before the tag
        call.send(2.2 + i * 0.02, 0, pkt, pay[i])
    _, rec = call.finish(4)
    stereo = read_wav(rec.files["audio.wav"])
    assert np.array_equal(stereo[:, 0], decode_payloads(call.sent[0].payloads))
    assert rec.metadata["streams"][0]["encryption"]["decrypted"] == 60


def test_srtcp_sender_report_is_read_in_clear() -> None:
    suite = "AES_CM_128_HMAC_SHA1_80"
    call, pa, pb = sdes_call(suite)
    two_way(call, 2.2, 100, {0: pa, 1: pb})
    ntp = (3_900_000_000 << 32) | 0x12345678
    sr = struct.pack("!BBHIIIIII", 0x81, 200, 12, 0xA, ntp >> 32, ntp & 0xFFFFFFFF, 16000, 100, 16000)
    sr += struct.pack("!IIIIII", 0xB, (3 << 24) | 7, 1099, 40, 0, 0)   # a report block about 0xB
    call.send(4.3, 0, pa.protect_rtcp(sr), None, rtcp=True)
    _, rec = call.finish(6)
    caller, callee = rec.metadata["streams"]
    assert caller["rtcp"]["sender_reports"] == 1
    assert (caller["rtcp"]["packets"], caller["rtcp"]["octets"]) == (100, 16000)
    assert callee["rtcp"]["cumulative_lost"] == 7 and callee["rtcp"]["fraction_lost"] == round(3 / 256, 4)
    assert not any("SRTCP" in w for w in rec.metadata["warnings"])


def test_sdes_offer_answered_in_clear_is_plain_rtp() -> None:
    # best-effort SRTP: RTP/AVP offer with a=crypto, answered RTP/AVP without: plain RTP both ways
    call = SrtpCall(sdp(CALLER_IP, CALLER_PORT, "RTP/AVP", (crypto(1, "AES_CM_128_HMAC_SHA1_80", key_of(1)),)),
                    sdp(CALLEE_IP, CALLEE_PORT, "RTP/AVP"))
    two_way(call, 2.2, 100, {})
    _, rec = call.finish(5)
    check_audio(rec, call)
    assert rec.metadata["encrypted"] is False
    assert all(not s["encrypted"] and s["encryption"] is None for s in rec.metadata["streams"])


def test_long_call_spilled_to_disk_is_decrypted(tmp_path: Path) -> None:
    call, pa, pb = sdes_call("AES_CM_128_HMAC_SHA1_80",
                             CallConfig(spill_frames=200, spill_dir=tmp_path / "spill"))
    two_way(call, 2.2, 700, {0: pa, 1: pb})
    finished, rec = call.finish(17)
    assert finished.spill is not None
    audio = rec.files["audio.wav"]
    stereo = read_wav(audio.read_bytes() if isinstance(audio, Path) else audio)
    for side in (0, 1):
        assert np.array_equal(stereo[:, side][:140000], decode_payloads(call.sent[side].payloads))
    assert all(s["encryption"]["decrypted"] == 700 for s in rec.metadata["streams"])
    finished.release()
    assert not any((tmp_path / "spill").iterdir())


@pytest.mark.parametrize("suite, params, why", [
    ("AES_256_CM_HMAC_SHA1_80", "inline:" + "A" * 62, "not supported"),
    ("AES_CM_128_HMAC_SHA1_80", "inline:QUJD", "needs a 30-byte"),
    ("AES_CM_128_HMAC_SHA1_80", "inline:%%%", "base64"),
    ("AES_CM_128_HMAC_SHA1_80", "uri:http://x", "only inline"),
    # RFC 4568 session parameters that change what the packets are (clear payload,
    # another key derivation rate): decrypting with the default policy would make noise
    ("AES_CM_128_HMAC_SHA1_80", "inline:" + "QUJD" * 10 + " UNENCRYPTED_SRTP", "UNENCRYPTED_SRTP"),
    ("AES_CM_128_HMAC_SHA1_80", "inline:" + "QUJD" * 10 + " KDR=1", "KDR=1"),
])
def test_unusable_keys_say_why(suite: str, params: str, why: str) -> None:
    with pytest.raises(SdesKeyError, match=why):
        sdes_keys(1, suite, params)


def test_window_size_hint_is_harmless() -> None:
    key = bytes(range(30))
    import base64
    (k,) = sdes_keys(1, "AES_CM_128_HMAC_SHA1_80", "inline:" + base64.b64encode(key).decode() + " WSH=128")
    assert k.key == key


def test_dtmf_events_inside_srtp_are_read_after_decryption() -> None:
    suite = "AES_CM_128_HMAC_SHA1_80"
    call, pa, pb = sdes_call(suite)
    two_way(call, 2.2, 50, {0: pa, 1: pb})
    # RFC 4733 event '7' from the caller: three updates, then three end packets
    for k, (dur, end) in enumerate([(160, 0), (320, 0), (480, 0), (640, 1), (640, 1), (640, 1)]):
        ev = struct.pack("!BBH", 7, (end << 7) | 10, dur)
        call.send(3.3 + k * 0.02, 0, pa.protect(rtp(2000 + k, 90000, 0xA, 101, ev, marker=k == 0)), None)
    _, rec = call.finish(5)
    assert [(d["digit"], d["direction"], d["duration_ms"]) for d in rec.metadata["dtmf"]] == \
        [("7", "caller", 80)]


def test_spilled_call_without_usable_keys_is_not_decoded(tmp_path: Path) -> None:
    fp = "a=fingerprint:sha-256 " + ":".join(["AB"] * 32)
    call = SrtpCall(sdp(CALLER_IP, CALLER_PORT, "UDP/TLS/RTP/SAVP", (fp,)),
                    sdp(CALLEE_IP, CALLEE_PORT, "UDP/TLS/RTP/SAVP", (fp,)),
                    CallConfig(spill_frames=100, spill_dir=tmp_path / "spill"))
    s80 = "AES_CM_128_HMAC_SHA1_80"
    two_way(call, 2.2, 400, {0: protector(s80, key_of(1)), 1: protector(s80, key_of(2))})
    finished, rec = call.finish(12)
    assert finished.spill is not None and rec.metadata["audio"] is None
    assert all(s["encryption"]["not_decrypted"] == 400 and not s["decoded"]
               for s in rec.metadata["streams"])
    finished.release()


def test_reinvite_from_srtp_to_plain_rtp() -> None:
    # re-INVITE at packet 85 drops SRTP (RTP/AVP both ways); the senders switch 3 packets later
    suite = "AES_CM_128_HMAC_SHA1_80"
    call, pa, pb = sdes_call(suite)
    pay = {0: voice(160, 1), 1: voice(160, 2)}
    for i in range(160):
        t = 2.2 + i * 0.02
        if i == 85:
            call.reinvite(t - 0.001, 2, sdp(CALLER_IP, CALLER_PORT), sdp(CALLEE_IP, CALLEE_PORT))
        for side, ssrc, s in ((0, 0xA, pa), (1, 0xB, pb)):
            pkt = rtp(100 + i, i * 160, ssrc, 0, pay[side][i])
            call.send(t, side, s.protect(pkt) if i < 88 else pkt, pay[side][i])
    _, rec = call.finish(7)
    check_audio(rec, call)
    for s in rec.metadata["streams"]:
        assert (s["encryption"]["decrypted"], s["encryption"]["auth_failures"]) == (88, 0)
        assert s["encrypted"] and s["decoded"]

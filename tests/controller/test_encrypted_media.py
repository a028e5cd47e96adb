"""Encrypted media whose keys a recorder cannot see is said so and never decoded
(DTLS-SRTP, ZRTP, unsupported or missing SDES keys); audio that decodes to random
noise anyway (ciphertext under a plain-RTP SDP) is flagged; real audio never is
(every public capture)."""
from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from protocols.pcapfile import write_pcap
from tests.conftest import CAPTURES, require_tool
from tests.controller._srtp_calls import (CALLEE_PORT, CALLER_PORT, SrtpCall, crypto,
                                          decode_payloads, key_of, protector, read_wav, rtp, sdp,
                                          two_way, voice)
from tests.controller.test_calls_engine import CALLEE_IP, CALLER_IP

FINGERPRINT = "a=fingerprint:sha-256 " + ":".join(f"{b:02X}" for b in range(32))


def zrtp_packet(seq: int, ssrc: int, msg_type: bytes, body: bytes) -> bytes:
    """RFC 6189 section 5: 0x10, unused, sequence, 'ZRTP', SSRC, message, CRC-32C."""
    msg = b"\x50\x5a" + struct.pack("!H", (12 + len(body)) // 4) + msg_type.ljust(8) + body
    head = struct.pack("!BBH4sI", 0x10, 0, seq, b"ZRTP", ssrc) + msg
    return head + struct.pack("!I", _crc32c(head))


def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def test_dtls_srtp_is_not_decoded_and_says_why(tmp_path: Path) -> None:
    offer = sdp(CALLER_IP, CALLER_PORT, "UDP/TLS/RTP/SAVPF", (FINGERPRINT, "a=setup:actpass"))
    answer = sdp(CALLEE_IP, CALLEE_PORT, "UDP/TLS/RTP/SAVPF", (FINGERPRINT, "a=setup:active"))
    call = SrtpCall(offer, answer)
    # a DTLS ClientHello-shaped record (content type 22) then SRTP under keys nobody saw
    call.send(2.15, 1, bytes([22, 0xFE, 0xFD]) + bytes(10) + b"\x00\x10" + bytes(16), None)
    hidden = "AES_CM_128_HMAC_SHA1_80"
    two_way(call, 2.2, 120, {0: protector(hidden, key_of(8)), 1: protector(hidden, key_of(9))})
    finished, rec = call.finish(6)
    meta = rec.metadata
    assert meta["encrypted"] is True and meta["audio"] is None and "audio.wav" not in rec.files
    for s in meta["streams"]:
        assert s["encrypted"] and not s["decoded"] and not s["used_for_audio"]
        enc = s["encryption"]
        assert (enc["method"], enc["keys"], enc["decrypted"], enc["not_decrypted"]) == \
            ("dtls-srtp", "none", 0, 120)
        assert "DTLS" in enc["reason"]
        # figures that need no payload are still there
        assert (s["packets"], s["lost"]) == (120, 0) and s["jitter_ms"] is not None
    assert any("dtls-srtp" in w for w in meta["warnings"])
    assert any(w.startswith("No audio file") for w in meta["warnings"])
    if require_tool("tshark"):
        # tshark, told these ports carry RTP, counts the same packets per SSRC
        path = tmp_path / "dtls.pcap"
        path.write_bytes(rec.files["call.pcap"])
        out = subprocess.run(["tshark", "-r", str(path), "-d", f"udp.port=={CALLER_PORT},rtp",
                              "-d", f"udp.port=={CALLEE_PORT},rtp", "-Y", "rtp", "-T", "fields",
                              "-e", "rtp.ssrc"], capture_output=True, text=True, check=True).stdout
        counts = {int(x, 16): out.split().count(x) for x in set(out.split())}
        assert counts == {s["ssrc"]: s["packets"] for s in meta["streams"]}


def test_zrtp_media_after_the_handshake_is_not_decoded(tmp_path: Path) -> None:
    zhash = "a=zrtp-hash:1.10 " + "ab" * 32
    call = SrtpCall(sdp(CALLER_IP, CALLER_PORT, "RTP/AVP", (zhash,)),
                    sdp(CALLEE_IP, CALLEE_PORT, "RTP/AVP", (zhash,)))
    pay = {0: voice(150, 1), 1: voice(150, 2)}
    srtp = {0: protector("AES_CM_128_HMAC_SHA1_32", key_of(11)),
            1: protector("AES_CM_128_HMAC_SHA1_32", key_of(12))}
    zseq = 0
    for i in range(150):
        t = 2.2 + i * 0.02
        if i == 50:                     # the handshake, both ways, between two media packets
            for k, mtype in enumerate((b"Hello", b"HelloACK", b"Commit", b"DHPart1", b"DHPart2",
                                       b"Confirm1", b"Confirm2", b"Conf2ACK")):
                side = k % 2
                zseq += 1
                call.send(t - 0.015 + k * 0.001, side, zrtp_packet(zseq, 0xA + side, mtype, bytes(76)),
                          None)
                call.sent[side].payloads.pop()      # not a media packet
        for side, ssrc in ((0, 0xA), (1, 0xB)):
            pkt = rtp(300 + i, i * 160, ssrc, 0, pay[side][i])
            call.send(t, side, srtp[side].protect(pkt) if i >= 50 else pkt,
                      pay[side][i] if i < 50 else None)
    _, rec = call.finish(6)
    meta = rec.metadata
    assert meta["encrypted"] is True and meta["media_other"] == 8
    stereo = read_wav(rec.files["audio.wav"])
    assert len(stereo) == 50 * 160                             # the file ends with the clear part
    for side, s in enumerate(meta["streams"]):
        assert s["encrypted"] and s["decoded"]                 # the clear part is heard
        enc = s["encryption"]
        assert (enc["method"], enc["keys"], enc["not_decrypted"]) == ("zrtp", "none", 100)
        exp = decode_payloads(call.sent[side].payloads[:50])
        assert np.array_equal(stereo[:, side], exp)
    assert any("(zrtp)" in w for w in meta["warnings"])
    if require_tool("tshark"):   # the handshake is ZRTP to tshark too
        path = tmp_path / "zrtp.pcap"
        path.write_bytes(rec.files["call.pcap"])
        out = subprocess.run(["tshark", "-r", str(path), "-Y", "zrtp", "-T", "fields", "-e",
                              "zrtp.type"], capture_output=True, text=True, check=True).stdout
        assert len(out.split()) == 8


@pytest.mark.parametrize("attrs, method, why", [
    ((crypto(1, "AES_256_CM_HMAC_SHA1_80", key_of(1, 46)),), "sdes", "not supported"),
    ((), "unknown", "without any key exchange"),
    ((crypto(1, "AES_CM_128_HMAC_SHA1_80", b"short"),), "sdes", "30-byte"),
])
def test_savp_without_usable_keys_is_not_decoded(attrs: tuple, method: str, why: str) -> None:
    call = SrtpCall(sdp(CALLER_IP, CALLER_PORT, "RTP/SAVP", attrs),
                    sdp(CALLEE_IP, CALLEE_PORT, "RTP/SAVP", attrs))
    s80 = "AES_CM_128_HMAC_SHA1_80"
    two_way(call, 2.2, 60, {0: protector(s80, key_of(3)), 1: protector(s80, key_of(4))})
    _, rec = call.finish(5)
    meta = rec.metadata
    assert meta["audio"] is None and meta["encrypted"] is True
    for s in meta["streams"]:
        assert s["encrypted"] and not s["decoded"]
        assert s["encryption"]["method"] == method and why in s["encryption"]["reason"]
        assert s["encryption"]["not_decrypted"] == 60 and s["packets"] == 60


@pytest.mark.parametrize("pt", [0, 8])
def test_ciphertext_under_a_plain_sdp_is_flagged_as_noise(pt: int) -> None:
    # the SDP says RTP/AVP (ZRTP missed, a misconfigured SBC): the caller's packets are
    # SRTP all the same; decoded as G.711 they are noise, the callee's real audio is not
    call = SrtpCall(sdp(CALLER_IP, CALLER_PORT, pt=pt), sdp(CALLEE_IP, CALLEE_PORT, pt=pt))
    two_way(call, 2.2, 250, {0: protector("AEAD_AES_128_GCM", key_of(5, 28))}, pt=pt)
    _, rec = call.finish(8)
    meta = rec.metadata
    noise = {side: src["noise"] for side, src in meta["audio"]["sources"].items()}
    assert noise["caller"]["noise_like"] is True and noise["caller"]["noise_s"] > 4
    assert noise["callee"]["noise_like"] is False and noise["callee"]["windows_noise_like"] == 0
    assert any(w.startswith("The caller audio channel is statistically random noise")
               for w in meta["warnings"])
    assert not any("callee audio channel" in w for w in meta["warnings"])


def _capture_files() -> list[Path]:
    if not CAPTURES.is_dir():
        return []
    return sorted(p for p in CAPTURES.iterdir()
                  if p.name != "SOURCES.md" and not p.name.startswith("."))


@pytest.mark.parametrize("path", _capture_files(), ids=lambda p: p.name)
def test_no_real_capture_is_flagged_as_noise(path: Path) -> None:
    from tests.controller import tshark_calls as tc
    run = tc.engine_run(path)
    for rec in run.recordings:
        audio = rec.metadata["audio"]
        for side, src in (audio or {}).get("sources", {}).items():
            assert src["noise"]["windows_noise_like"] == 0, (rec.metadata["call_ids"], side)
        assert not any("random noise" in w for w in rec.metadata["warnings"])
        assert rec.metadata["encrypted"] is False

"""`spanrec record` on an SDES-SRTP call we generate (written to a tmp dir): the
audio is the plaintext we encrypted, call.pcap keeps the ciphertext."""
from __future__ import annotations

import io
import json
import wave
from pathlib import Path

import numpy as np

from protocols.pcapfile import read_frames, write_pcap
from scripts.gencalls_packets import udp_frame
from tests.controller._srtp_calls import (CALLEE_PORT, CALLER_PORT, crypto, decode_payloads, key_of,
                                          protector, rtp, sdp, voice)
from tests.controller.test_calls_engine import CALLEE_IP, CALLER_IP, sip
from tests.e2e.conftest import spanrec_record

S = 1_000_000_000
T0 = 1_764_000_000 * S
SUITE = "AES_CM_128_HMAC_SHA1_80"


def _capture(path: Path) -> tuple[dict[int, list[bytes]], set[bytes]]:
    ka, kb = key_of(21), key_of(22)
    frames: list[tuple[int, bytes]] = []
    ip_id = [0]

    def put(t: float, src: str, sport: int, dst: str, dport: int, payload: bytes) -> None:
        ip_id[0] += 1
        frames.append((T0 + int(t * S), udp_frame(src, dst, sport, dport, payload, ip_id[0])))

    offer = sdp(CALLER_IP, CALLER_PORT, "RTP/SAVP", (crypto(1, SUITE, ka),))
    answer = sdp(CALLEE_IP, CALLEE_PORT, "RTP/SAVP", (crypto(1, SUITE, kb),))
    put(0, CALLER_IP, 5060, CALLEE_IP, 5060, sip("INVITE sip:bob@example.com SIP/2.0", call_id="srtp-e2e",
                                                 body=offer))
    put(1, CALLEE_IP, 5060, CALLER_IP, 5060, sip("SIP/2.0 200 OK", call_id="srtp-e2e", to_tag="tt",
                                                 body=answer))
    put(1.1, CALLER_IP, 5060, CALLEE_IP, 5060, sip("ACK sip:bob@example.com SIP/2.0", call_id="srtp-e2e",
                                                   cseq="1 ACK", to_tag="tt", branch="z9hG4bK-ack"))
    plain = {0: voice(200, 31), 1: voice(200, 32)}
    prot = {0: protector(SUITE, ka), 1: protector(SUITE, kb)}
    cipher: set[bytes] = set()
    for i in range(200):
        for side, ssrc in ((0, 0x1111), (1, 0x2222)):
            pkt = prot[side].protect(rtp(7 + i, i * 160, ssrc, 0, plain[side][i]))
            cipher.add(pkt)
            if side == 0:
                put(1.2 + i * 0.02, CALLER_IP, CALLER_PORT, CALLEE_IP, CALLEE_PORT, pkt)
            else:
                put(1.2 + i * 0.02, CALLEE_IP, CALLEE_PORT, CALLER_IP, CALLER_PORT, pkt)
    put(6, CALLER_IP, 5060, CALLEE_IP, 5060, sip("BYE sip:bob@example.com SIP/2.0", call_id="srtp-e2e",
                                                 cseq="2 BYE", to_tag="tt", branch="z9hG4bK-bye"))
    put(6.01, CALLEE_IP, 5060, CALLER_IP, 5060, sip("SIP/2.0 200 OK", call_id="srtp-e2e", cseq="2 BYE",
                                                    to_tag="tt", branch="z9hG4bK-bye"))
    with path.open("wb") as fh:
        write_pcap(fh, frames, 1)
    return plain, cipher


def test_record_decrypts_an_sdes_srtp_capture(tmp_path: Path) -> None:
    src = tmp_path / "sdes-srtp.pcap"
    plain, cipher = _capture(src)
    run = spanrec_record([src], tmp_path / "rec")
    assert run.returncode == 0, run.stderr
    (call,) = run.calls
    assert call["encrypted"] is True and call["warnings"] == []
    for s in call["streams"]:
        assert s["encrypted"] and s["decoded"]
        assert s["encryption"]["method"] == "sdes" and s["encryption"]["decrypted"] == 200
    (folder,) = {p.parent for p in (tmp_path / "rec").rglob("call.json")}
    assert json.loads((folder / "call.json").read_text())["id"] == call["id"]
    with wave.open(io.BytesIO((folder / "audio.wav").read_bytes())) as w:
        stereo = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, 2)
    for side in (0, 1):
        assert np.array_equal(stereo[:, side], decode_payloads(plain[side]))
    stored = {data[42:] for _, _, data in read_frames(folder / "call.pcap")}
    assert cipher <= stored                     # the packets as captured: ciphertext

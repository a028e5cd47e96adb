"""Synthetic calls with encrypted media for the SRTP tests: SIP + SDP written here,
G.711 payloads made with audioop from a generated signal, encrypted with libsrtp
(pylibsrtp ``protect``) under the key each side's SDP announces.  Expectations
come from these plaintext payloads (audioop decode), never from spanrec."""
from __future__ import annotations

import base64
import io
import struct
import warnings
import wave
from dataclasses import dataclass, field

import numpy as np
from pylibsrtp import Policy, Session

from controller.calls.engine import CallConfig
from controller.output.finalize import build_recording
from tests.controller.test_calls_engine import CALLEE_IP, CALLER_IP, Feed, sip

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

PROFILES = {
    "AES_CM_128_HMAC_SHA1_80": (Policy.SRTP_PROFILE_AES128_CM_SHA1_80, 30),
    "AES_CM_128_HMAC_SHA1_32": (Policy.SRTP_PROFILE_AES128_CM_SHA1_32, 30),
    "AEAD_AES_128_GCM": (Policy.SRTP_PROFILE_AEAD_AES_128_GCM, 28),
    "AEAD_AES_256_GCM": (Policy.SRTP_PROFILE_AEAD_AES_256_GCM, 44),
}
DECODE = {0: audioop.ulaw2lin, 8: audioop.alaw2lin}
ENCODE = {0: audioop.lin2ulaw, 8: audioop.lin2alaw}
CALLER_PORT, CALLEE_PORT = 4000, 5000


def key_of(seed: int, n: int = 30) -> bytes:
    return bytes((seed * 37 + i * 11) & 0xFF for i in range(n))


def crypto(tag: int, suite: str, key: bytes, extra: str = "") -> str:
    return f"a=crypto:{tag} {suite} inline:{base64.b64encode(key).decode()}{extra}"


def sdp(ip: str, port: int, proto: str = "RTP/AVP", attrs: tuple[str, ...] = (), pt: int = 0) -> str:
    name = {0: "PCMU", 8: "PCMA"}[pt]
    return (f"v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
            f"m=audio {port} {proto} {pt} 101\r\na=rtpmap:{pt} {name}/8000\r\n"
            "a=rtpmap:101 telephone-event/8000\r\n" + "".join(a + "\r\n" for a in attrs))


def voice(n_packets: int, seed: int, pt: int = 0) -> list[bytes]:
    """20 ms G.711 payloads of a speech-like signal (low-passed noise under a
    syllable envelope), encoded by audioop."""
    rng = np.random.default_rng(seed)
    n = n_packets * 160
    x = np.convolve(rng.normal(size=n + 15), np.hanning(16), mode="valid")[:n]
    env = 0.3 + 0.7 * np.abs(np.sin(np.arange(n) * np.pi / 1600))
    pcm = np.clip(x / np.abs(x).max() * 12000 * env, -32767, 32767).astype("<i2")
    octets = ENCODE[pt](pcm.tobytes(), 2)
    return [octets[i * 160:(i + 1) * 160] for i in range(n_packets)]


def rtp(seq: int, ts: int, ssrc: int, pt: int, payload: bytes, marker: bool = False) -> bytes:
    return struct.pack("!BBHII", 0x80, pt | (0x80 if marker else 0), seq & 0xFFFF,
                       ts & 0xFFFFFFFF, ssrc) + payload


def protector(suite: str, key: bytes) -> Session:
    profile, _ = PROFILES[suite]
    return Session(policy=Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile))


def decode_payloads(payloads: list[bytes | None], pt: int = 0) -> np.ndarray:
    """The reference channel: audioop decode of each plaintext payload, zeros for None."""
    return np.concatenate([np.frombuffer(DECODE[pt](p, 2), "<i2") if p is not None
                           else np.zeros(160, np.int16) for p in payloads])


def read_wav(data: bytes) -> np.ndarray:
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, 8000)
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, 2)


@dataclass
class Sent:
    """What one side sent: its plaintext payloads (None: not expected in the audio)."""

    payloads: list[bytes | None] = field(default_factory=list)
    frames: list[bytes] = field(default_factory=list)


class SrtpCall:
    """An answered call (INVITE at 0 s, 200 at 2 s, BYE at `end`) with the SDPs given."""

    def __init__(self, offer: str, answer: str, config: CallConfig | None = None) -> None:
        self.f = Feed(config)
        self.f.invite(0, body=offer)
        self.f.response(0.01, 100)
        self.f.response(1, 180, to_tag="tt")
        self.f.response(2, 200, to_tag="tt", body=answer)
        self.f.request(2.1, "ACK", 1, to_tag="tt", branch="z9hG4bK-ack")
        self.sent = {0: Sent(), 1: Sent()}

    def send(self, t: float, side: int, packet: bytes, plain: bytes | None, rtcp: bool = False) -> None:
        """One UDP datagram from `side` (0 caller) to the other's media port."""
        src, sport, dst, dport = ((CALLER_IP, CALLER_PORT, CALLEE_IP, CALLEE_PORT) if side == 0
                                  else (CALLEE_IP, CALLEE_PORT, CALLER_IP, CALLER_PORT))
        if rtcp:
            sport, dport = sport + 1, dport + 1
        self.f.send(t, src, sport, dst, dport, packet)
        if not rtcp:
            self.sent[side].payloads.append(plain)
        self.sent[side].frames.append(packet)

    def reinvite(self, t: float, cseq: int, offer: str, answer: str) -> None:
        self.f.send(t, CALLER_IP, 5060, CALLEE_IP, 5060,
                    sip("INVITE sip:bob@example.com SIP/2.0", cseq=f"{cseq} INVITE", to_tag="tt",
                        branch=f"z9hG4bK-re{cseq}", body=offer))
        self.f.send(t + 0.05, CALLEE_IP, 5060, CALLER_IP, 5060,
                    sip("SIP/2.0 200 OK", cseq=f"{cseq} INVITE", to_tag="tt",
                        branch=f"z9hG4bK-re{cseq}", body=answer))
        self.f.send(t + 0.1, CALLER_IP, 5060, CALLEE_IP, 5060,
                    sip("ACK sip:bob@example.com SIP/2.0", cseq=f"{cseq} ACK", to_tag="tt",
                        branch=f"z9hG4bK-reack{cseq}"))

    def finish(self, t: float, fmt: str = "wav"):
        """BYE at `t`; returns (FinishedCall, Recording) of the one call."""
        self.f.request(t, "BYE", 99, to_tag="tt", branch="z9hG4bK-bye")
        self.f.finished += self.f.engine.finish_all()
        (call,) = self.f.finished
        return call, build_recording(call, fmt)


def two_way(call: SrtpCall, t0: float, n: int, protect: dict[int, Session | None],
            seq0: int = 1000, pt: int = 0, payloads: dict[int, list[bytes]] | None = None) -> None:
    """n packets each way every 20 ms from t0, SSRC 0xA (caller) and 0xB (callee)."""
    payloads = payloads or {0: voice(n, 1, pt), 1: voice(n, 2, pt)}
    for i in range(n):
        for side, ssrc in ((0, 0xA), (1, 0xB)):
            pkt = rtp(seq0 + i, 8000 + i * 160, ssrc, pt, payloads[side][i])
            s = protect.get(side)
            call.send(t0 + i * 0.02, side, s.protect(pkt) if s else pkt,
                      payloads[side][i])

"""Which call an RTP packet belongs to, when SDP alone does not say.

Every input is built here packet by packet, so the truth (which flows belong to
which call, which payload bytes each side sent) is known independently of
spanrec: concurrent calls to one shared media endpoint (a media server, IVR),
a PBX that steps out of the media path (direct media), media whose signalling
was never seen (picked up mid-call, joined later), requests with an unknown
method, video beside audio.
"""
from __future__ import annotations

import audioop
import io
import struct
import wave

import numpy as np

from controller.calls.engine import CallConfig, CallEngine
from controller.output.finalize import build_recording
from protocols.layers import decode, str_to_ip
from protocols.pcapfile import read_frames

S = 1_000_000_000
SERVER = "10.0.0.50"          # a media server answering every call on one endpoint
SERVER_PORT = 20000


def udp_frame(src: str, sport: int, dst: str, dport: int, payload: bytes) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), 1, 0, 64, 17, 0,
                     str_to_ip(src), str_to_ip(dst))
    return b"\x00" * 12 + b"\x08\x00" + ip + struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def sdp(ip: str, port: int, extra: str = "") -> str:
    return (f"v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n{extra}")


def sip(first: str, call_id: str, cseq: str, from_tag: str, to_tag: str | None, via: str,
        contact: str, body: str = "") -> bytes:
    to = "<sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else "")
    head = [first, f"Via: SIP/2.0/UDP {via}:5060;branch=z9hG4bK-{call_id}-{cseq.split()[0]}-{first[:3]}",
            f"From: <sip:alice@example.com>;tag={from_tag}", f"To: {to}", f"Call-ID: {call_id}",
            f"CSeq: {cseq}", f"Contact: <sip:x@{contact}:5060>", f"Content-Length: {len(body.encode())}"]
    if body:
        head.append("Content-Type: application/sdp")
    return ("\r\n".join(head) + "\r\n\r\n" + body).encode()


def rtp(seq: int, ts: int, ssrc: int, payload: bytes, pt: int = 0) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


def tone(freq: float, n: int, seed: int) -> list[bytes]:
    """n µ-law packets of 160 samples of a tone plus a little noise (speech-like level)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n * 160) / 8000
    x = (6000 * np.sin(2 * np.pi * freq * t) + rng.normal(0, 300, t.size)).astype("<i2")
    law = audioop.lin2ulaw(x.tobytes(), 2)
    return [law[i * 160:(i + 1) * 160] for i in range(n)]


class Feed:
    def __init__(self, config: CallConfig | None = None) -> None:
        self.engine = CallEngine(config)
        self.finished: list = []

    def send(self, t: float, src: str, sport: int, dst: str, dport: int, payload: bytes) -> bool:
        ts = int(t * S)
        frame = udp_frame(src, sport, dst, dport, payload)
        hit = self.engine.process(ts, "s1", 1, frame, decode(1, frame))
        self.finished += self.engine.advance(ts)
        return hit

    def recordings(self) -> list:
        self.finished += self.engine.finish_all()
        return [build_recording(c) for c in self.finished]


def answer(f: Feed, t: float, cid: str, a: str, a_port: int, b: str, b_port: int) -> None:
    """INVITE a -> b (SDP a:a_port), 200 OK (SDP b:b_port), ACK."""
    f.send(t, a, 5060, b, 5060, sip("INVITE sip:bob@example.com SIP/2.0", cid, "1 INVITE", "ft", None,
                                     a, a, sdp(a, a_port)))
    f.send(t + 0.1, b, 5060, a, 5060, sip("SIP/2.0 200 OK", cid, "1 INVITE", "ft", "tt", a, b,
                                          sdp(b, b_port)))
    f.send(t + 0.2, a, 5060, b, 5060, sip("ACK sip:bob@example.com SIP/2.0", cid, "1 ACK", "ft", "tt",
                                          a, a))


def bye(f: Feed, t: float, cid: str, a: str, b: str) -> None:
    f.send(t, a, 5060, b, 5060, sip("BYE sip:bob@example.com SIP/2.0", cid, "2 BYE", "ft", "tt", a, a))
    f.send(t + 0.05, b, 5060, a, 5060, sip("SIP/2.0 200 OK", cid, "2 BYE", "ft", "tt", a, b))


def pcap_flows(rec) -> dict[tuple[int, int], int]:
    """(src port, dst port) -> packets of the RTP in call.pcap (read back as a capture file)."""
    import tempfile
    from pathlib import Path
    out: dict[tuple[int, int], int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "call.pcap"
        p.write_bytes(rec.files["call.pcap"])
        for _ts, lt, data in read_frames(p):
            d = decode(lt, data)
            if d.proto == 17 and d.sport != 5060 and d.dport != 5060:
                key = (d.sport, d.dport)
                out[key] = out.get(key, 0) + 1
    return out


def channels(rec) -> np.ndarray:
    with wave.open(io.BytesIO(rec.files["audio.wav"])) as w:
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, 2)


def test_concurrent_calls_to_one_shared_endpoint_keep_their_own_media() -> None:
    """Six overlapping calls, each phone on its own port, all answered on one
    media server endpoint that echoes: each recording holds exactly its flows."""
    f = Feed()
    calls = [(f"c{i}", f"10.0.1.{i + 1}", 30000 + 2 * i) for i in range(6)]
    sent: dict[str, dict[tuple[int, int], int]] = {}
    audio: dict[str, list[bytes]] = {}
    for i, (cid, ip, port) in enumerate(calls):
        answer(f, i * 0.5, cid, ip, port, SERVER, SERVER_PORT)
        sent[cid] = {}
        audio[cid] = tone(300 + 100 * i, 200, i)
    # interleaved media of all calls: phone -> server and the server's echo back
    for k in range(200):
        for i, (cid, ip, port) in enumerate(calls):
            t = 3 + i * 0.5 + k * 0.02
            f.send(t, ip, port, SERVER, SERVER_PORT, rtp(k, k * 160, 0x1000 + i, audio[cid][k]))
            f.send(t + 0.001, SERVER, SERVER_PORT, ip, port, rtp(k, k * 160, 0xCA110000, audio[cid][k]))
            sent[cid][(port, SERVER_PORT)] = sent[cid].get((port, SERVER_PORT), 0) + 1
            sent[cid][(SERVER_PORT, port)] = sent[cid].get((SERVER_PORT, port), 0) + 1
    for i, (cid, ip, _port) in enumerate(calls):
        bye(f, 12 + i * 0.5, cid, ip, SERVER)
    recs = {r.metadata["call_ids"][0]: r for r in f.recordings()}
    assert sorted(recs) == sorted(sent)
    for cid, rec in recs.items():
        assert pcap_flows(rec) == sent[cid], cid
        assert "media_ambiguous_packets" not in rec.metadata
        ref = np.frombuffer(audioop.ulaw2lin(b"".join(audio[cid]), 2), "<i2")
        ch = channels(rec)
        start = np.flatnonzero(ch[:, 0])[0]
        assert np.array_equal(ch[start:start + ref.size, 0], ref), cid   # the phone's own voice


def test_shared_endpoint_flow_that_no_sdp_names_is_ambiguous_not_guessed() -> None:
    """Two phones behind one NAT address send from ports their SDPs did not
    announce to the shared endpoint: nobody can tell whose packets they are."""
    f = Feed()
    answer(f, 0, "n1", "10.0.2.1", 40000, SERVER, SERVER_PORT)
    answer(f, 0.3, "n2", "10.0.2.1", 40002, SERVER, SERVER_PORT)
    for k in range(50):
        f.send(1 + k * 0.02, "10.0.2.1", 50000, SERVER, SERVER_PORT, rtp(k, k * 160, 7, b"\x55" * 160))
    bye(f, 3, "n1", "10.0.2.1", SERVER)
    bye(f, 3.1, "n2", "10.0.2.1", SERVER)
    recs = [r.metadata for r in f.recordings()]
    assert len(recs) == 2
    for meta in recs:
        assert meta["streams"] == [] and meta["media_ambiguous_packets"] == 50
        assert any("could not be assigned" in w for w in meta["warnings"])


def test_port_reused_by_the_next_call_after_bye_goes_to_the_new_call() -> None:
    f = Feed()
    answer(f, 0, "old", "10.0.3.1", 30000, SERVER, SERVER_PORT)
    bye(f, 1, "old", "10.0.3.1", SERVER)
    answer(f, 1.5, "new", "10.0.3.1", 30000, SERVER, SERVER_PORT)   # within the old call's linger
    for k in range(30):
        f.send(1.8 + k * 0.02, "10.0.3.1", 30000, SERVER, SERVER_PORT, rtp(k, k * 160, 9, b"\x11" * 160))
    bye(f, 3, "new", "10.0.3.1", SERVER)
    recs = {r.metadata["call_ids"][0]: r for r in f.recordings()}
    assert pcap_flows(recs["old"]) == {} and pcap_flows(recs["new"]) == {(30000, SERVER_PORT): 30}


def test_direct_media_after_reinvites_is_one_call() -> None:
    """Asterisk-style direct media: A calls the PBX (leg a), the PBX calls B (leg b),
    media first relayed by the PBX, then both phones re-INVITEd to talk directly."""
    A, B, PBX = "10.0.4.1", "10.0.4.2", "10.0.4.9"
    f = Feed()
    answer(f, 0, "leg-a", A, 4000, PBX, 10000)           # A <-> PBX
    answer(f, 0.05, "leg-b", PBX, 10002, B, 6000)        # PBX <-> B
    a_voice, b_voice = tone(440, 300, 1), tone(700, 300, 2)
    for k in range(100):                                  # relayed through the PBX
        t = 1 + k * 0.02
        f.send(t, A, 4000, PBX, 10000, rtp(k, k * 160, 0xA, a_voice[k]))
        f.send(t + 0.002, PBX, 10002, B, 6000, rtp(k, k * 160, 0xA2, a_voice[k]))
        f.send(t, B, 6000, PBX, 10002, rtp(k, k * 160, 0xB, b_voice[k]))
        f.send(t + 0.002, PBX, 10000, A, 4000, rtp(k, k * 160, 0xB2, b_voice[k]))
    # re-INVITEs from the PBX: each phone now gets the other phone's endpoint
    f.send(3.1, PBX, 5060, A, 5060, sip("INVITE sip:a@x SIP/2.0", "leg-a", "1 INVITE", "tt", "ft", PBX,
                                        PBX, sdp(B, 6000)))
    f.send(3.15, A, 5060, PBX, 5060, sip("SIP/2.0 200 OK", "leg-a", "1 INVITE", "tt", "ft", PBX, A,
                                         sdp(A, 4000)))
    f.send(3.2, PBX, 5060, B, 5060, sip("INVITE sip:b@x SIP/2.0", "leg-b", "2 INVITE", "ft", "tt", PBX,
                                        PBX, sdp(A, 4000)))
    f.send(3.25, B, 5060, PBX, 5060, sip("SIP/2.0 200 OK", "leg-b", "2 INVITE", "ft", "tt", PBX, B,
                                         sdp(B, 6000)))
    for k in range(100, 300):                             # direct: phone to phone
        t = 1 + k * 0.02 + 0.5
        f.send(t, A, 4000, B, 6000, rtp(k, k * 160, 0xA, a_voice[k]))
        f.send(t, B, 6000, A, 4000, rtp(k, k * 160, 0xB, b_voice[k]))
    bye(f, 8, "leg-a", A, PBX)
    bye(f, 8.01, "leg-b", PBX, B)
    (rec,) = f.recordings()
    meta = rec.metadata
    assert sorted(meta["call_ids"]) == ["leg-a", "leg-b"]
    assert {leg["call_id"]: (leg["relation"] or {}).get("by") for leg in meta["legs"]}["leg-b"] \
        in ("direct-media", "media")
    flows = pcap_flows(rec)
    assert flows[(4000, 6000)] == 200 and flows[(6000, 4000)] == 200
    ch = channels(rec)
    ref_a = np.frombuffer(audioop.ulaw2lin(b"".join(a_voice[100:]), 2), "<i2")
    ref_b = np.frombuffer(audioop.ulaw2lin(b"".join(b_voice[100:]), 2), "<i2")
    # the direct part of each channel is what each phone sent, sample for sample
    assert _contains(ch[:, 0], ref_a) and _contains(ch[:, 1], ref_b)


def _contains(channel: np.ndarray, ref: np.ndarray) -> bool:
    head = ref[:160]
    for i in np.flatnonzero(channel == head[0]):
        if np.array_equal(channel[i:i + ref.size], ref):
            return True
    return False


def test_unknown_method_with_invite_cseq_starts_no_call() -> None:
    f = Feed()
    for i in range(5):
        f.send(i, "10.0.5.1", 5060, "10.0.5.2", 5060,
               sip("aaaaaaaa sip:user@host SIP/2.0", f"scan-{i}", "1 INVITE", "x", None, "10.0.5.1",
                   "10.0.5.1"))
    f.send(6, "10.0.5.1", 5060, "10.0.5.2", 5060,
           sip("OPTIONS sip:user@host SIP/2.0", "scan-9", "1 INVITE", "x", None, "10.0.5.1", "10.0.5.1"))
    assert f.recordings() == []
    c = f.engine.counters
    assert c["calls_started"] == 0 and c["requests_ignored"] == 6


def test_media_without_signalling_is_recorded_and_joined_by_a_later_bye() -> None:
    """A sensor restarted mid-call: RTP without its INVITE becomes a recording of its
    own; the BYE that later names the two hosts joins it and ends it."""
    A, B = "10.0.6.1", "10.0.6.2"
    f = Feed()
    a_voice, b_voice = tone(500, 150, 3), tone(900, 150, 4)
    for k in range(150):
        f.send(k * 0.02, A, 16000, B, 18000, rtp(k, k * 160, 0xA, a_voice[k]))
        f.send(k * 0.02 + 0.001, B, 18000, A, 16000, rtp(k, k * 160, 0xB, b_voice[k]))
    bye(f, 3.1, "lost-invite", A, B)
    (rec,) = f.recordings()
    meta = rec.metadata
    assert meta["signalling"] == "mid-call" and meta["call_ids"] == ["lost-invite"]
    assert meta["end_reason"] == "bye" and pcap_flows(rec) == {(16000, 18000): 150, (18000, 16000): 150}
    ch = channels(rec)
    assert np.array_equal(ch[:150 * 160, 0], np.frombuffer(audioop.ulaw2lin(b"".join(a_voice), 2), "<i2"))
    # B's first packet came 1 ms (8 samples) after A's
    assert np.array_equal(ch[8:8 + 150 * 160, 1], np.frombuffer(audioop.ulaw2lin(b"".join(b_voice), 2), "<i2"))


def test_media_without_any_signalling_is_a_recording_of_its_own() -> None:
    f = Feed()
    voice = tone(350, 100, 5)
    for k in range(100):
        f.send(k * 0.02, "10.0.7.1", 16002, "10.0.7.2", 18002, rtp(k, k * 160, 0xA, voice[k]))
    for k in range(3):                                   # a few stray RTP-like datagrams: no recording
        f.send(5 + k * 0.02, "10.0.7.5", 30000, "10.0.7.6", 30002, rtp(k, k * 160, 0xF, b"\x01" * 20))
    f.send(5.5, "10.0.7.8", 53, "10.0.7.9", 3333, b"\x81\x80" + bytes(30))   # a DNS answer
    (rec,) = f.recordings()
    meta = rec.metadata
    assert meta["signalling"] == "none" and meta["call_ids"] == [] and meta["legs"] == []
    assert meta["status"] == "incomplete" and any("No signalling" in w for w in meta["warnings"])
    assert pcap_flows(rec) == {(16002, 18002): 100}
    ch = channels(rec)
    assert np.array_equal(ch[:, 0][:16000], np.frombuffer(audioop.ulaw2lin(b"".join(voice), 2), "<i2"))
    c = f.engine.counters
    assert c["unsignalled_flows"] == 2 and c["unsignalled_packets"] == 100 and c["unsignalled_dropped"] == 3


def test_reinvite_naming_the_flow_joins_media_recorded_without_signalling() -> None:
    A, B = "10.0.8.1", "10.0.8.2"
    f = Feed()
    for k in range(100):
        f.send(k * 0.02, A, 16004, B, 18004, rtp(k, k * 160, 0xA, b"\x20" * 160))
    f.send(2.1, A, 5060, B, 5060, sip("INVITE sip:b@x SIP/2.0", "re-1", "5 INVITE", "ft", "tt", A, A,
                                      sdp(A, 16004)))
    f.send(2.15, B, 5060, A, 5060, sip("SIP/2.0 200 OK", "re-1", "5 INVITE", "ft", "tt", A, B,
                                       sdp(B, 18004)))
    for k in range(100, 150):
        f.send(k * 0.02 + 0.2, A, 16004, B, 18004, rtp(k, k * 160, 0xA, b"\x20" * 160))
    bye(f, 4, "re-1", A, B)
    (rec,) = f.recordings()
    meta = rec.metadata
    assert meta["call_ids"] == ["re-1"] and meta["signalling"] == "mid-call"
    assert meta["status"] == "answered" and meta["end_reason"] == "bye"
    assert pcap_flows(rec) == {(16004, 18004): 150}


def test_early_rtp_before_the_answer_sdp_is_the_same_call() -> None:
    """RTP of a call seen just before the SDP that announces it (two sensors'
    clocks, a slow mirror): the media-only start is taken over by the call."""
    A, B = "10.0.9.1", "10.0.9.2"
    f = Feed()
    f.send(0, A, 5060, B, 5060, sip("INVITE sip:b@x SIP/2.0", "early", "1 INVITE", "ft", None, A, A,
                                    sdp(A, 16006)))
    for k in range(5):                                    # callee's RTP before the 200 OK
        f.send(0.5 + k * 0.02, B, 18006, "10.0.9.3", 16008, rtp(k, k * 160, 0xB, b"\x30" * 160))
    f.send(0.7, B, 5060, A, 5060, sip("SIP/2.0 200 OK", "early", "1 INVITE", "ft", "tt", A, B,
                                      sdp(B, 18006)))
    for k in range(5, 60):
        f.send(0.5 + k * 0.02, B, 18006, A, 16006, rtp(k, k * 160, 0xB, b"\x30" * 160))
    bye(f, 3, "early", A, B)
    (rec,) = f.recordings()
    assert rec.metadata["signalling"] == "complete" and rec.metadata["call_ids"] == ["early"]
    assert sum(pcap_flows(rec).values()) == 60


def test_video_media_is_in_the_call_but_not_in_the_audio() -> None:
    A, B = "10.0.10.1", "10.0.10.2"
    video = "m=video {p} RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
    f = Feed()
    f.send(0, A, 5060, B, 5060, sip("INVITE sip:b@x SIP/2.0", "vid", "1 INVITE", "ft", None, A, A,
                                    sdp(A, 4000, video.format(p=4100))))
    f.send(0.1, B, 5060, A, 5060, sip("SIP/2.0 200 OK", "vid", "1 INVITE", "ft", "tt", A, B,
                                      sdp(B, 6000, video.format(p=6100))))
    voice = tone(440, 50, 6)
    for k in range(50):
        f.send(0.2 + k * 0.02, A, 4000, B, 6000, rtp(k, k * 160, 0xA, voice[k]))
        f.send(0.2 + k * 0.02, A, 4100, B, 6100, rtp(k, k * 3000, 0xA7, bytes(900), pt=96))
    f.send(1.3, A, 4101, B, 6101, bytes([0x80, 200, 0, 6]) + bytes(24))  # video RTCP SR
    bye(f, 2, "vid", A, B)
    (rec,) = f.recordings()
    meta = rec.metadata
    kinds = {s["kind"]: s for s in meta["streams"]}
    assert kinds["video"]["codec"] == "H264" and kinds["video"]["packets"] == 50
    assert kinds["video"]["used_for_audio"] is False and kinds["audio"]["used_for_audio"] is True
    assert pcap_flows(rec) == {(4000, 6000): 50, (4100, 6100): 50, (4101, 6101): 1}
    ch = channels(rec)
    assert np.array_equal(ch[:8000, 0], np.frombuffer(audioop.ulaw2lin(b"".join(voice), 2), "<i2"))

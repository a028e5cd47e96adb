"""Leg merge: B2BUA/SBC legs with different Call-IDs become one recording.

Synthetic legs built packet by packet (each correlation rule alone, any
arrival order, the cases that must NOT merge), then the public captures whose
legs SOURCES.md describes.  Audio expectations come from audioop decodes of
the payloads the test itself sent.
"""
from __future__ import annotations

import io
import struct
import warnings
import wave

import numpy as np
import pytest

from controller.calls.engine import CallConfig, CallEngine
from controller.output.finalize import build_recording
from controller.calls.legs import BY_ICID, BY_SESSION_ID, leg_keys, sdp_origin_key
from protocols.layers import decode, str_to_ip
from protocols.sip import parse_sip

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

S = 1_000_000_000
A, SBC_IN, SBC_OUT, B = "10.1.0.1", "10.1.0.10", "10.2.0.10", "10.2.0.2"
UUID_A, UUID_B, UUID_C = "a" * 31 + "1", "b" * 31 + "2", "c" * 31 + "3"
NULL = "0" * 32


def frame(src: str, sport: int, dst: str, dport: int, payload: bytes) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), 1, 0, 64, 17, 0,
                     str_to_ip(src), str_to_ip(dst))
    return b"\x00" * 12 + b"\x08\x00" + ip + struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def sdp(ip: str, port: int, origin: str = "- 1 1") -> str:
    return (f"v=0\r\no={origin} IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


def sip(first: str, call_id: str, cseq: str = "1 INVITE", *, to_tag: str | None = None,
        from_tag: str = "ft", branch: str = "z9hG4bK-1", body: str = "",
        headers: tuple[str, ...] = ()) -> bytes:
    to = "<sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else "")
    head = [first, f"Via: SIP/2.0/UDP 192.0.2.1:5060;branch={branch}",
            f"From: <sip:alice@example.com>;tag={from_tag}", f"To: {to}",
            f"Call-ID: {call_id}", f"CSeq: {cseq}", *headers,
            f"Content-Length: {len(body.encode())}"]
    if body:
        head.append("Content-Type: application/sdp")
    return ("\r\n".join(head) + "\r\n\r\n" + body).encode()


def rtp(seq: int, ssrc: int, payload: bytes) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, (seq * 160) & 0xFFFFFFFF, ssrc) + payload


def speech(seed: int, n: int) -> list[bytes]:
    """n PCMU payloads of varied bytes (not silence): what relays must forward unchanged."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, 160, dtype=np.uint8).tobytes() for _ in range(n)]


class Feed:
    def __init__(self, config: CallConfig | None = None) -> None:
        self.engine = CallEngine(config)
        self.finished: list = []

    def send(self, t: float, src: str, sport: int, dst: str, dport: int, payload: bytes,
             sensor: str = "s1") -> None:
        data = frame(src, sport, dst, dport, payload)
        self.engine.process(int(t * S), sensor, 1, data, decode(1, data))
        self.finished += self.engine.advance(int(t * S))

    def leg(self, t: float, call_id: str, caller: str, callee: str, caller_port: int,
            callee_port: int, headers: tuple[str, ...] = (), answer_headers: tuple[str, ...] = (),
            origin: str = "- 1 1", sensor: str = "s1") -> None:
        """INVITE (offer) at t, 200 OK (answer) at t+0.1, ACK at t+0.2."""
        self.send(t, caller, 5060, callee, 5060, sip("INVITE sip:bob@example.com SIP/2.0", call_id,
                  body=sdp(caller, caller_port, origin), headers=headers), sensor)
        self.send(t + 0.1, callee, 5060, caller, 5060, sip("SIP/2.0 200 OK", call_id, to_tag="tt",
                  body=sdp(callee, callee_port), headers=answer_headers), sensor)
        self.send(t + 0.2, caller, 5060, callee, 5060, sip("ACK sip:bob@example.com SIP/2.0", call_id,
                  "1 ACK", to_tag="tt", branch="z9hG4bK-ack"), sensor)

    def bye(self, t: float, call_id: str, caller: str, callee: str, sensor: str = "s1") -> None:
        self.send(t, caller, 5060, callee, 5060, sip("BYE sip:bob@example.com SIP/2.0", call_id,
                  "2 BYE", to_tag="tt", branch="z9hG4bK-bye"), sensor)
        self.send(t + 0.01, callee, 5060, caller, 5060, sip("SIP/2.0 200 OK", call_id, "2 BYE",
                  to_tag="tt", branch="z9hG4bK-bye"), sensor)

    def done(self) -> list[dict]:
        self.finished += self.engine.finish_all()
        return [build_recording(c).metadata for c in self.finished]

    def recordings(self):
        self.finished += self.engine.finish_all()
        return [build_recording(c) for c in self.finished]


def _relations(meta: dict) -> dict[str, dict | None]:
    return {leg["call_id"]: leg["relation"] for leg in meta["legs"]}


# -- pure key extraction ------------------------------------------------------------

def test_leg_keys_from_headers() -> None:
    msg = parse_sip(sip("INVITE sip:b SIP/2.0", "leg2", headers=(
        "X-Call-ID: leg1", f"Session-ID: {UUID_B.upper()};remote={UUID_A}",
        'P-Charging-Vector: icid-value="AyretyU0dm+6O2IrT5tAFrbHLso=";icid-generated-at=192.0.6.8')))
    assert leg_keys(msg, ("x-call-id", "x-cid")) == [
        ("x-call-id", "leg1"), (BY_SESSION_ID, f"{UUID_A}/{UUID_B}"),
        (BY_ICID, "AyretyU0dm+6O2IrT5tAFrbHLso=")]
    # the pair is unordered: the other direction gives the same key
    back = parse_sip(sip("BYE sip:a SIP/2.0", "leg1", "2 BYE", headers=(
        f"Session-ID: {UUID_A};remote={UUID_B}",)))
    assert leg_keys(back, ()) == [(BY_SESSION_ID, f"{UUID_A}/{UUID_B}")]


def test_leg_keys_that_identify_nothing() -> None:
    for headers in ((f"Session-ID: {UUID_A};remote={NULL}",), (f"Session-ID: {UUID_A}",),
                    ("Session-ID: not-a-uuid",), ("X-Call-ID: same",), ("X-Other: leg1",),
                    ("P-Charging-Vector: orig-ioi=home1.net",)):
        msg = parse_sip(sip("INVITE sip:b SIP/2.0", "same", headers=headers))
        assert leg_keys(msg, ("x-call-id",)) == [], headers


def test_sdp_origin_key() -> None:
    assert sdp_origin_key(sdp(A, 4000, "- 191 1228500736").encode()) == \
        (("sdp-origin", "- 191 1228500736"), A)
    assert sdp_origin_key(sdp(A, 4000, "- 0 0").encode()) is None
    assert sdp_origin_key(sdp(A, 4000, "user 12 34").encode()) is None
    assert sdp_origin_key(b"v=0\r\n") is None


# -- merging by signalling ------------------------------------------------------------

@pytest.mark.parametrize("child_first", [False, True])
def test_x_call_id_merges_legs_in_any_order(child_first: bool) -> None:
    f = Feed()
    parent = lambda t: f.leg(t, "leg1", A, SBC_IN, 4000, 5000)  # noqa: E731
    child = lambda t: f.leg(t, "leg2", SBC_OUT, B, 6000, 7000,  # noqa: E731
                            headers=("X-Call-ID: leg1",), sensor="s2")
    if child_first:  # e.g. seen by another site's sensor whose clock is ahead
        child(1.0)
        parent(1.05)
    else:
        parent(1.0)
        child(1.05)
    f.bye(5.0, "leg1", A, SBC_IN)
    f.bye(5.0, "leg2", SBC_OUT, B, sensor="s2")
    (meta,) = f.done()
    assert meta["call_ids"] == ["leg1", "leg2"]  # the parent is the root, whatever came first
    assert _relations(meta) == {"leg1": None, "leg2": {"to": "leg1", "by": "x-call-id"}}
    legs = {leg["call_id"]: leg for leg in meta["legs"]}
    assert legs["leg1"]["sensors"] == ["s1"] and legs["leg2"]["sensors"] == ["s2"]
    assert meta["sip_packets"] == 10 and meta["status"] == "answered" and meta["end_reason"] == "bye"
    assert f.engine.counters["calls_finished"] == 1


def test_x_cid_and_configured_header() -> None:
    f = Feed(CallConfig(leg_headers=("x-orig-callid",)))
    f.leg(1.0, "leg1", A, SBC_IN, 4000, 5000)
    f.leg(1.1, "leg2", SBC_OUT, B, 6000, 7000, headers=("X-Orig-CallID: leg1",))
    f.leg(1.2, "leg3", SBC_OUT, B, 6002, 7002, headers=("X-CID: leg1",))  # not configured here
    metas = f.done()
    assert sorted(m["call_ids"] for m in metas) == [["leg1", "leg2"], ["leg3"]]


def test_chain_of_sbcs_is_one_recording() -> None:
    f = Feed()
    f.leg(1.0, "leg1", A, SBC_IN, 4000, 5000)
    f.leg(1.1, "leg2", SBC_OUT, "10.3.0.10", 6000, 7000, headers=("X-Call-ID: leg1",))
    f.leg(1.2, "leg3", "10.3.0.11", B, 8000, 9000, headers=("X-CID: leg2",))
    (meta,) = f.done()
    assert meta["call_ids"] == ["leg1", "leg2", "leg3"]
    assert _relations(meta) == {"leg1": None, "leg2": {"to": "leg1", "by": "x-call-id"},
                                "leg3": {"to": "leg2", "by": "x-cid"}}


def test_session_id_pair_merges_and_a_shared_uuid_alone_does_not() -> None:
    f = Feed()
    # leg 1: A -> SBC; leg 2: SBC -> B; the uuids are end to end (RFC 7989)
    f.leg(1.0, "leg1", A, SBC_IN, 4000, 5000, headers=(f"Session-ID: {UUID_A};remote={NULL}",),
          answer_headers=(f"Session-ID: {UUID_B};remote={UUID_A}",))
    f.leg(1.05, "leg2", SBC_OUT, B, 6000, 7000, headers=(f"Session-ID: {UUID_A};remote={NULL}",),
          answer_headers=(f"Session-ID: {UUID_B};remote={UUID_A}",))
    # a conference focus (uuid B) in another call with C: shares one uuid only
    f.leg(1.1, "conf", "10.9.0.1", B, 8000, 9000, headers=(f"Session-ID: {UUID_C};remote={NULL}",),
          answer_headers=(f"Session-ID: {UUID_B};remote={UUID_C}",))
    metas = {m["call_ids"][0]: m for m in f.done()}
    assert metas["leg1"]["call_ids"] == ["leg1", "leg2"] and metas["conf"]["call_ids"] == ["conf"]
    assert _relations(metas["leg1"])["leg2"] == {"to": "leg1", "by": "session-id"}


def test_icid_merges() -> None:
    f = Feed()
    pcv = ("P-Charging-Vector: icid-value=1234bc9876e;icid-generated-at=192.0.6.8",)
    f.leg(1.0, "leg1", A, SBC_IN, 4000, 5000, headers=pcv)
    f.leg(1.1, "leg2", SBC_OUT, B, 6000, 7000, headers=pcv)
    f.leg(1.2, "other", "10.9.0.1", B, 8000, 9000, headers=(
        "P-Charging-Vector: icid-value=ffff0000aaaa",))
    metas = sorted(m["call_ids"] for m in f.done())
    assert metas == [["leg1", "leg2"], ["other"]]


def test_sdp_origin_merges_only_a_rewritten_copy_close_in_time() -> None:
    f = Feed()
    f.leg(1.0, "leg1", A, SBC_IN, 4000, 5000, origin="- 191 1228500736")
    f.leg(1.2, "leg2", SBC_OUT, B, 6000, 7000, origin="- 191 1228500736")   # SBC copy
    f.leg(1.3, "same-ua", A, SBC_IN, 4002, 5002, origin="- 191 1228500736")  # same address
    f.leg(9.0, "late", "10.9.0.1", B, 8000, 9000, origin="- 191 1228500736")  # > 2 s later
    f.leg(1.0, "zero1", "10.8.0.1", B, 8100, 9100, origin="- 0 0")
    f.leg(1.1, "zero2", "10.8.0.2", B, 8200, 9200, origin="- 0 0")
    metas = sorted(m["call_ids"] for m in f.done())
    assert metas == [["late"], ["leg1", "leg2"], ["same-ua"], ["zero1"], ["zero2"]]


def _read_wav(data: bytes) -> np.ndarray:
    with wave.open(io.BytesIO(data)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)


def _ulaw(payloads: list[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(audioop.ulaw2lin(p, 2) for p in payloads), dtype="<i2")


def test_link_found_late_merges_two_calls_with_their_media() -> None:
    """Both legs have RTP before the header linking them appears (in a re-INVITE):
    the merged recording has every packet and the audio of both legs."""
    f = Feed(CallConfig(merge_by_media=False))
    f.leg(1.0, "leg1", A, SBC_IN, 4000, 5000)
    f.leg(1.0, "leg2", SBC_OUT, B, 6000, 7000)
    caller, callee = speech(1, 100), speech(2, 100)
    for i in range(100):
        t = 1.3 + i * 0.02
        f.send(t, A, 4000, SBC_IN, 5000, rtp(i, 0xA1, caller[i]))           # A speaks (leg 1)
        f.send(t, SBC_OUT, 6000, B, 7000, rtp(i, 0xB1, caller[i]))          # relayed (leg 2)
        f.send(t + 0.001, B, 7000, SBC_OUT, 6000, rtp(i, 0xB2, callee[i]))  # B speaks (leg 2)
        f.send(t + 0.002, SBC_IN, 5000, A, 4000, rtp(i, 0xA2, callee[i]))  # relayed (leg 1)
        if i == 50:
            f.send(t, SBC_OUT, 5060, B, 5060, sip("INVITE sip:b SIP/2.0", "leg2", "2 INVITE",
                   to_tag="tt", branch="z9hG4bK-re", headers=("X-Call-ID: leg1",)))
    f.bye(4.0, "leg1", A, SBC_IN)
    f.bye(4.0, "leg2", SBC_OUT, B)
    (rec,) = f.recordings()
    meta = rec.metadata
    assert meta["call_ids"] == ["leg1", "leg2"]
    assert {s["ssrc"]: s["packets"] for s in meta["streams"]} == {0xA1: 100, 0xB1: 100, 0xB2: 100, 0xA2: 100}
    assert {s["ssrc"]: s["call_id"] for s in meta["streams"]} == {0xA1: "leg1", 0xA2: "leg1",
                                                                  0xB1: "leg2", 0xB2: "leg2"}
    assert meta["pcap_packets"] == 400 + meta["sip_packets"] == 400 + 11
    stereo = _read_wav(rec.files["audio.wav"])
    exp_caller, exp_callee = _ulaw(caller), _ulaw(callee)
    assert np.array_equal(stereo[:len(exp_caller), 0], exp_caller)
    start = np.flatnonzero(stereo[:, 1])[0]
    assert start <= 8 and np.array_equal(stereo[start:start + len(exp_callee), 1], exp_callee)
    src = meta["audio"]["sources"]
    assert src["caller"]["candidates"] == 2 and src["callee"]["candidates"] == 2


# -- merging by media (fallback) ----------------------------------------------------

def _relay_call(f: Feed, payloads_out: list[bytes], relay_src: str = SBC_OUT, t0: float = 1.3) -> None:
    for i, p in enumerate(payloads_out):
        t = t0 + i * 0.02
        f.send(t, A, 4000, SBC_IN, 5000, rtp(i, 0xA1, p))
        f.send(t + 0.003, relay_src, 6000, B, 7000, rtp(1000 + i, 0xB1, p))  # new SSRC and seq


def test_relayed_media_merges_legs_without_headers() -> None:
    f = Feed()
    f.leg(1.0, "leg1", A, SBC_IN, 4000, 5000)
    f.leg(1.05, "leg2", SBC_IN, B, 6000, 7000)      # a single-homed relay (Asterisk, rtpengine)
    silence = [b"\xff" * 160] * 100                # silence first: matches nothing
    _relay_call(f, silence + speech(3, 150), relay_src=SBC_IN)
    f.bye(6.0, "leg1", A, SBC_IN)
    f.bye(6.0, "leg2", SBC_IN, B)
    (meta,) = f.done()
    assert meta["call_ids"] == ["leg1", "leg2"]
    assert _relations(meta)["leg2"] == {"to": "leg1", "by": "media"}
    assert {s["direction"] for s in meta["streams"]} == {"caller"}


def test_dual_homed_relay_is_left_to_signalling() -> None:
    """Received on one address, sent from another: media alone could be a phone in
    two calls; without a header the legs stay apart (documented limit)."""
    f = Feed()
    f.leg(1.0, "leg1", A, SBC_IN, 4000, 5000)
    f.leg(1.05, "leg2", SBC_OUT, B, 6000, 7000)
    _relay_call(f, speech(3, 150), relay_src=SBC_OUT)
    assert sorted(m["call_ids"] for m in f.done()) == [["leg1"], ["leg2"]]


def test_same_audio_from_one_source_to_two_calls_is_not_a_relay() -> None:
    """Music on hold: one server sends the same payloads to two callers."""
    f = Feed()
    f.leg(1.0, "hold1", A, SBC_IN, 4000, 5000)
    f.leg(1.0, "hold2", B, SBC_IN, 4100, 5100)
    moh = speech(4, 150)
    for i, p in enumerate(moh):
        f.send(1.3 + i * 0.02, SBC_IN, 5000, A, 4000, rtp(i, 0x11, p))
        f.send(1.3 + i * 0.02, SBC_IN, 5100, B, 4100, rtp(i, 0x22, p))
    assert sorted(m["call_ids"] for m in f.done()) == [["hold1"], ["hold2"]]


def test_unrelated_calls_stay_apart() -> None:
    f = Feed()
    f.leg(1.0, "c1", A, SBC_IN, 4000, 5000)
    f.leg(1.0, "c2", "10.5.0.1", "10.5.0.2", 4200, 5200)
    a, b = speech(5, 150), speech(6, 150)
    for i in range(150):
        f.send(1.3 + i * 0.02, A, 4000, SBC_IN, 5000, rtp(i, 0x1, a[i]))
        f.send(1.3 + i * 0.02, "10.5.0.1", 4200, "10.5.0.2", 5200, rtp(i, 0x2, b[i]))
    assert sorted(m["call_ids"] for m in f.done()) == [["c1"], ["c2"]]


def test_echo_of_my_audio_in_another_call_is_not_a_relay() -> None:
    """A phone in two calls at once sends the same audio to both; one peer echoes it
    back: the echo (later, back to its origin) is not that phone relaying."""
    f = Feed()
    f.leg(1.0, "site", A, SBC_IN, 4000, 5000)           # A -> X
    f.leg(1.0, "cross", A, B, 4200, 5200)               # A -> B, B echoes
    audio = speech(7, 150)
    for i, p in enumerate(audio):
        t = 1.3 + i * 0.02
        f.send(t, A, 4000, SBC_IN, 5000, rtp(i, 0x1, p))
        f.send(t, A, 4200, B, 5200, rtp(i, 0x2, p))
        f.send(t + 0.0004, B, 5200, A, 4200, rtp(i, 0x3, p))   # the echo
    assert sorted(m["call_ids"] for m in f.done()) == [["cross"], ["site"]]

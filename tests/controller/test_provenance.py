"""Provenance: who contributed which packets, and the traces a forged packet leaves.

Built packet by packet: two sensors (two sites) see one call; one of them
reports RTP with the sequence numbers of the real stream but other payloads,
and a BYE nobody else saw.  The truth is what each sensor was made to send.
"""
from __future__ import annotations

from controller.calls.engine import CallEngine
from controller.output.finalize import build_recording
from protocols.layers import decode
from tests.controller.test_media_routing import rtp, sdp, sip, udp_frame

S = 1_000_000_000
A, B = "10.1.0.1", "10.1.0.2"


class TwoSensors:
    def __init__(self) -> None:
        self.engine = CallEngine()
        self.finished: list = []

    def send(self, t: float, sensor: str, src: str, sport: int, dst: str, dport: int, payload: bytes,
             ip_id: int = 1) -> None:
        frame = bytearray(udp_frame(src, sport, dst, dport, payload))
        frame[18:20] = ip_id.to_bytes(2, "big")
        frame = bytes(frame)
        ts = int(t * S)
        self.engine.process(ts, sensor, 1, frame, decode(1, frame))
        self.finished += self.engine.advance(ts)

    def copy(self, sensor: str, src: str, sport: int, dst: str, dport: int, payload: bytes) -> None:
        """A mirror copy dedup dropped (what the Recorder reports to the engine)."""
        frame = udp_frame(src, sport, dst, dport, payload)
        self.engine.duplicate(sensor, frame, decode(1, frame))

    def metas(self) -> list[dict]:
        self.finished += self.engine.finish_all()
        out = []
        for c in self.finished:
            c.sites = {"s-a": "site-a", "s-b": "site-b"}
            out.append(build_recording(c).metadata)
        return out


def _setup(f: TwoSensors) -> None:
    invite = sip("INVITE sip:b@x SIP/2.0", "prov", "1 INVITE", "ft", None, A, A, sdp(A, 16000))
    ok = sip("SIP/2.0 200 OK", "prov", "1 INVITE", "ft", "tt", A, B, sdp(B, 18000))
    for t, src, dst, msg in ((0, A, B, invite), (0.1, B, A, ok)):
        f.send(t, "s-a", src, 5060, dst, 5060, msg)
        f.copy("s-b", src, 5060, dst, 5060, msg)       # site B's mirror saw the same SIP


def test_packets_by_sensor_and_forged_rtp_is_a_conflict() -> None:
    f = TwoSensors()
    _setup(f)
    for k in range(100):
        f.send(0.2 + k * 0.02, "s-a", A, 16000, B, 18000, rtp(k, k * 160, 0xA, b"\x55" * 160), ip_id=k)
    for k in range(40, 50):   # site B's sensor claims other audio for 10 of those packets
        f.send(1.5 + k * 0.001, "s-b", A, 16000, B, 18000, rtp(k, k * 160, 0xA, b"\x11" * 160),
               ip_id=1000 + k)
    bye = sip("BYE sip:b@x SIP/2.0", "prov", "2 BYE", "ft", "tt", A, A)
    f.send(3, "s-a", A, 5060, B, 5060, bye)
    f.copy("s-b", A, 5060, B, 5060, bye)
    (meta,) = f.metas()
    (stream,) = meta["streams"]
    assert stream["packets_by_sensor"] == {"s-a": 100, "s-b": 10} and stream["duplicates"] == 10
    rtp_conflicts = [c for c in meta["conflicts"] if c["kind"] == "rtp-content"]
    assert sorted(c["seq"] for c in rtp_conflicts) == list(range(40, 50))
    assert {c["sensor"] for c in rtp_conflicts} == {"s-b"} and rtp_conflicts[0]["site"] == "site-b"
    assert not [c for c in meta["conflicts"] if c["kind"] == "bye-one-sensor"]   # both saw the BYE
    assert any("different content" in w for w in meta["warnings"])
    (leg,) = meta["legs"]
    assert leg["sip_packets_by_sensor"] == {"s-a": 3}


def test_bye_seen_by_one_sensor_of_two_is_flagged() -> None:
    f = TwoSensors()
    _setup(f)
    for k in range(20):
        f.send(0.2 + k * 0.02, "s-a", A, 16000, B, 18000, rtp(k, k * 160, 0xA, b"\x55" * 160), ip_id=k)
    f.send(1, "s-b", A, 5060, B, 5060, sip("BYE sip:b@x SIP/2.0", "prov", "2 BYE", "ft", "tt", A, A))
    (meta,) = f.metas()
    (c,) = [c for c in meta["conflicts"] if c["kind"] == "bye-one-sensor"]
    assert (c["call_id"], c["sensor"], c["site"]) == ("prov", "s-b", "site-b")
    assert meta["end_reason"] == "bye" and any("may be forged" in w for w in meta["warnings"])


def test_a_plain_call_has_no_conflicts() -> None:
    f = TwoSensors()
    _setup(f)
    for k in range(20):
        f.send(0.2 + k * 0.02, "s-a", A, 16000, B, 18000, rtp(k, k * 160, 0xA, b"\x55" * 160), ip_id=k)
    f.send(0.9, "s-a", A, 16000, B, 18000, rtp(19, 19 * 160, 0xA, b"\x55" * 160), ip_id=999)  # re-sent
    bye = sip("BYE sip:b@x SIP/2.0", "prov", "2 BYE", "ft", "tt", A, A)
    f.send(1, "s-a", A, 5060, B, 5060, bye)
    f.copy("s-b", A, 5060, B, 5060, bye)
    (meta,) = f.metas()
    assert meta["conflicts"] == [] and meta["streams"][0]["duplicates"] == 1


def test_audio_stamped_after_the_call_is_not_audio() -> None:
    """RTP of a call stamped long after its BYE (out of order, as a lagging or lying
    sensor delivers it before the call is written) stays in call.pcap, is counted on
    its stream and named in a warning, and never lengthens the audio."""
    f = TwoSensors()
    _setup(f)
    for k in range(100):
        f.send(0.2 + k * 0.02, "s-a", A, 16000, B, 18000, rtp(k, k * 160, 0xA, b"\x55" * 160), ip_id=k)
    bye = sip("BYE sip:b@x SIP/2.0", "prov", "2 BYE", "ft", "tt", A, A)
    frame = udp_frame(A, 5060, B, 5060, bye)
    f.engine.process(3 * S, "s-a", 1, frame, decode(1, frame))
    late = udp_frame(A, 16000, B, 18000, rtp(100, 100 * 160, 0xA, b"\x55" * 160))
    f.engine.process(3700 * S, "s-a", 1, late, decode(1, late))    # an hour on: no advance between
    (meta,) = f.metas()
    (stream,) = meta["streams"]
    assert stream["packets"] == 101 and stream["outside_call_window"] == 1
    assert any("after its end" in w for w in meta["warnings"]), meta["warnings"]
    assert meta["audio"]["sources"]["caller"]["packets"] == 100     # the hour-late one is not audio

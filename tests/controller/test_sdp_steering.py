"""An SDP is untrusted input: it must not steer capture into unrelated traffic.

Any host that gets an INVITE past a mirror writes its SDP.  An SDP naming a
DNS server's port 53 must not make the sensor forward DNS nor the controller
keep it in the call; a 10,000-m-line SDP must not map 20,000 endpoints nor
send them to every sensor; a datagram that is not RTP on an audio port is not
media, while T.38 (UDPTL) on an m=image port is.  The DNS datagrams here start
with 0x80 0x00 (query id 0x80xx): shaped like RTP with payload type 0, so only
the port rule stops them (RFC 1035 gives the id no structure).
"""
from __future__ import annotations

from controller.calls.engine import CallEngine
from controller.calls.calltable import MAX_CALL_ENDPOINTS
from controller.output.finalize import build_recording
from controller.calls.hints import MediaHints
from controller.media.streams import sdp_media_checked
from protocols.layers import decode
from protocols.mediaports import MAX_MEDIA_LINES
from protocols.pcapfile import read_frames
from sensor.classify import Classifier
from tests.controller._sipbuild import S, audio_line, dns_query, rtp, sdp, sip, udp_frame

CALLER, CALLEE, DNS = "10.1.0.1", "10.1.0.2", "10.9.9.53"


def _engine() -> tuple[CallEngine, MediaHints]:
    engine = CallEngine()
    hints = MediaHints()
    engine.table.on_new_media = hints.add
    return engine, hints


def _feed(engine: CallEngine, frames: list[tuple[float, bytes]]) -> list:
    out = []
    for t, frame in frames:
        engine.process(int(t * S), "s1", 1, frame, decode(1, frame))
        out += engine.advance(int(t * S))
    return out + engine.finish_all()


def _call(body_invite: str, body_answer: str) -> list[tuple[float, bytes]]:
    return [
        (0.0, udp_frame(CALLER, 5060, CALLEE, 5060,
                        sip("INVITE sip:bob@example.com SIP/2.0", "c1", "1 INVITE", "a", None, CALLER,
                            body_invite))),
        (0.1, udp_frame(CALLEE, 5060, CALLER, 5060,
                        sip("SIP/2.0 200 OK", "c1", "1 INVITE", "a", "b", CALLER, body_answer))),
    ]


def _pcap_udp_ports(rec) -> list[tuple[int, int]]:
    import tempfile, os
    with tempfile.NamedTemporaryFile(suffix=".pcap", delete=False) as f:
        f.write(rec.files["call.pcap"])
    try:
        out = []
        for _, lt, data in read_frames(f.name):
            d = decode(lt, data)
            out.append((d.sport, d.dport))
        return out
    finally:
        os.unlink(f.name)


def test_sdp_naming_a_dns_server_does_not_pull_dns_into_the_call() -> None:
    engine, hints = _engine()
    frames = _call(sdp(DNS, [audio_line(53)]), sdp(CALLEE, [audio_line(30000)]))
    dns = [(0.2 + i * 0.02, udp_frame(CALLER if i % 2 else "10.1.0.77", 40000 + i, DNS, 53,
                                      dns_query(0x8000 + i))) for i in range(20)]
    finished = _feed(engine, frames + dns)
    assert len(finished) == 1
    rec = build_recording(finished[0])
    ports = _pcap_udp_ports(rec)
    assert all(53 not in p for p in ports), ports          # no DNS datagram in call.pcap
    assert rec.metadata["sdp_endpoints_refused"] == 2       # port 53 and its RTCP port 54
    assert all(port >= 1024 for _, port in hints.since(0)[1])
    assert engine.counters["sdp_endpoints_refused"] == 2


def test_sensor_does_not_forward_dns_named_by_an_sdp() -> None:
    cl = Classifier()
    frames = [(int(t * S), f) for t, f in _call(sdp(DNS, [audio_line(53)]), sdp(CALLEE, [audio_line(30000)]))]
    assert len(cl.accept_batch(1, frames)) == 2            # the SIP itself is forwarded
    dns = [(int(1 * S) + i, udp_frame("10.1.0.77", 40000 + i, DNS, 53, dns_query(0x8000 + i)))
           for i in range(20)]
    assert cl.accept_batch(1, dns) == []
    assert cl.counters.sdp_endpoints_refused == 2
    cl.expect([(bytes([10, 9, 9, 53]), 53)])               # nor when the controller asks
    assert cl.accept_batch(1, dns) == []


def test_ten_thousand_media_lines_are_bounded_and_counted() -> None:
    # 10,000 m= lines do not fit a UDP datagram (SIP over TCP carries them): the
    # SDP parsers of controller and sensor are given the body itself
    big = sdp(CALLER, [f"m=audio {20000 + 2 * i} RTP/AVP 0\r\n" for i in range(10_000)]).encode()
    media, refused = sdp_media_checked(big)
    assert len(media) == 2 * MAX_MEDIA_LINES and refused == 2 * (10_000 - MAX_MEDIA_LINES)
    cl = Classifier()
    cl._learn_sdp(big, 1)
    assert cl.media_endpoints == 2 * MAX_MEDIA_LINES
    assert cl.counters.sdp_endpoints_refused == 2 * (10_000 - MAX_MEDIA_LINES)


def test_thousands_of_media_lines_in_a_datagram_are_bounded_end_to_end() -> None:
    engine, hints = _engine()
    n = 2_500                    # what fits one UDP datagram
    big = sdp(CALLER, [f"m=audio {20000 + 2 * i} RTP/AVP 0\r\n" for i in range(n)])
    frames = _call(big, sdp(CALLEE, [audio_line(30000)]))
    for t, f in frames:
        engine.process(int(t * S), "s1", 1, f, decode(1, f))
    call = engine.table.get("c1")
    assert len(call.endpoints) == 2 * MAX_MEDIA_LINES + 2
    assert len(hints) == 2 * MAX_MEDIA_LINES + 2              # expected flows sent to sensors
    assert engine.counters["sdp_endpoints_refused"] == 2 * (n - MAX_MEDIA_LINES)
    cl = Classifier()
    cl.accept_batch(1, [(int(t * S), f) for t, f in frames])
    assert cl.media_endpoints == 2 * MAX_MEDIA_LINES + 2
    assert cl.counters.sdp_endpoints_refused == 2 * (n - MAX_MEDIA_LINES)


def test_many_sdps_of_one_call_are_bounded_per_call() -> None:
    engine, hints = _engine()
    frames = _call(sdp(CALLER, [audio_line(20000)]), sdp(CALLEE, [audio_line(30000)]))
    for i in range(2, 200):      # re-INVITEs, each naming 16 new ports
        body = sdp(CALLER, [audio_line(40000 + 40 * i + 2 * k) for k in range(16)])
        frames.append((0.1 + i * 0.01, udp_frame(CALLER, 5060, CALLEE, 5060, sip(
            "INVITE sip:bob@example.com SIP/2.0", "c1", f"{i} INVITE", "a", "b", CALLER, body))))
    for t, f in frames:
        engine.process(int(t * S), "s1", 1, f, decode(1, f))
    call = engine.table.get("c1")
    assert len(call.endpoints) == MAX_CALL_ENDPOINTS
    assert engine.counters["sdp_endpoints_refused"] == 4 + 198 * 32 - MAX_CALL_ENDPOINTS  # 4 first


def test_non_rtp_on_an_audio_port_is_not_kept_but_t38_on_an_image_port_is() -> None:
    engine, _ = _engine()
    image = "m=image 30002 udptl t38\r\n"
    frames = _call(sdp(CALLER, [audio_line(20000)]), sdp(CALLEE, [audio_line(30000), image]))
    syslog = b"<13>Nov 26 10:00:00 host app: hello world"
    udptl = b"\x00\x00\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09"    # T.38 UDPTL: seq 0, primary IFP
    for i in range(10):
        frames.append((0.2 + i * 0.02, udp_frame(CALLER, 20000, CALLEE, 30000, rtp(i, i * 160, 7))))
        frames.append((0.21 + i * 0.02, udp_frame("10.1.0.99", 514, CALLEE, 30000, syslog)))
        frames.append((0.215 + i * 0.02, udp_frame(CALLER, 20002, CALLEE, 30002, udptl)))
    finished = _feed(engine, frames)
    rec = build_recording(finished[0])
    ports = _pcap_udp_ports(rec)
    assert ports.count((20000, 30000)) == 10                # the RTP
    assert ports.count((20002, 30002)) == 10                # T.38 kept
    assert (514, 30000) not in ports                        # syslog on the audio port: not media
    assert rec.metadata["media_refused"] == 10
    assert engine.counters["media_refused"] == 10


def test_sensor_forwards_only_rtp_shaped_datagrams_on_audio_ports() -> None:
    cl = Classifier(rtp_heuristics=False)
    image = "m=image 30002 udptl t38\r\n"
    frames = [(int(t * S), f) for t, f in _call(sdp(CALLER, [audio_line(20000)]),
                                                 sdp(CALLEE, [audio_line(30000), image]))]
    cl.accept_batch(1, frames)
    t = 2 * S
    ok = [udp_frame(CALLER, 20000, CALLEE, 30000, rtp(1, 160, 7)),                   # PCMU: named
          udp_frame(CALLER, 20001, CALLEE, 30001, bytes([0x80, 200, 0, 6]) + bytes(24)),  # RTCP SR
          udp_frame(CALLER, 20002, CALLEE, 30002, b"\x00\x00\x00\x01" + bytes(8))]   # UDPTL on image
    bad = [udp_frame(CALLER, 20000, CALLEE, 30000, rtp(2, 320, 7, pt=72)),           # PT 72: unassigned, not named
           udp_frame("10.1.0.99", 514, CALLEE, 30000, b"<13>Nov 26 10:00:00 host app: hi")]
    out = cl.accept_batch(1, [(t + i, f) for i, f in enumerate(ok + bad)])
    assert [f for _, f in out] == ok
    assert cl.counters.media_not_rtp == 2

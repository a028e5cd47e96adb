"""The classifier's refusal counters reach the heartbeat (issue #11): an SDP
naming port 53 (refused endpoints) and a datagram that is not RTP on an SDP
media port (media_not_rtp) are counted in the Counters message the sensor
sends, built by sensor/pipeline.py's heartbeat_counters."""
from __future__ import annotations

from sensor.capture import CaptureStats
from sensor.classify import Classifier
from sensor.pipeline import heartbeat_counters
from tests.controller._sipbuild import S, audio_line, sdp, sip, udp_frame

CALLER, CALLEE, DNS = "10.1.0.1", "10.1.0.2", "10.9.9.53"


def _sip(first: str, to_tag: str | None, body: str) -> bytes:
    return udp_frame(CALLER, 5060, CALLEE, 5060,
                     sip(first, "c1", "1 INVITE", "a", to_tag, CALLER, body))


def test_refused_endpoints_and_not_rtp_reach_the_heartbeat() -> None:
    cl = Classifier(rtp_heuristics=False)
    cl.accept_batch(1, [
        (0, _sip("INVITE sip:bob@example.com SIP/2.0", None, sdp(DNS, [audio_line(53)]))),
        (S // 10, _sip("SIP/2.0 200 OK", "b", sdp(CALLEE, [audio_line(30000)]))),
    ])
    syslog = udp_frame("10.1.0.99", 514, CALLEE, 30000, b"<13>Nov 26 10:00:00 host app: hi")
    assert cl.accept_batch(1, [(S, syslog), (S + 1, syslog)]) == []
    hb = heartbeat_counters(cl.counters, CaptureStats(kernel_drops=3))
    assert hb.sdp_endpoints_refused == 2        # port 53 and its RTCP port 54
    assert hb.media_not_rtp == 2
    assert hb.kernel_drops == 3 and hb.captured == cl.counters.seen

"""The unsignalled-media summary an operator reads (controller/calls/unsignalled.py)."""
from __future__ import annotations

from controller.calls.unsignalled import CAUSE_NOT_SEEN, summarize


def status(engine: dict, *sensors: tuple[str, int, int]) -> dict:
    return {"engine": engine, "sensors": [
        {"sensor_id": sid, "counters": {"captured": 9, "sip_tls_flows": f, "sip_tls_packets": p}}
        for sid, f, p in sensors]}


def test_tls_named_per_sensor_that_saw_it() -> None:
    u = summarize(status({"unsignalled_flows": 4, "unsignalled_packets": 1200,
                          "media_ambiguous_packets": 7},
                         ("west", 1, 1), ("east", 3, 45), ("north", 0, 0)))
    assert (u.flows, u.packets, u.ambiguous_packets) == (4, 1200, 7)
    assert (u.sip_tls_flows, u.sip_tls_packets) == (4, 46)
    assert u.tls_by_sensor == {"west": 1, "east": 45}
    assert u.likely_cause == ("SIP over TLS: signalling is encrypted "
                              "(sensor east saw 45 packets, sensor west saw 1 packet)")
    assert u.worth_reporting


def test_without_tls_the_cause_is_signalling_not_seen() -> None:
    u = summarize(status({"unsignalled_flows": 1, "unsignalled_packets": 3}, ("a", 0, 0)))
    assert u.likely_cause == CAUSE_NOT_SEEN and u.worth_reporting


def test_nothing_to_report() -> None:
    # an engine that does not report the counters (yet), sensors of an older version
    u = summarize({"engine": {}, "sensors": [{"sensor_id": "old", "counters": {"captured": 5}}]})
    assert (u.flows, u.packets, u.sip_tls_packets, u.likely_cause) == (0, 0, 0, "")
    assert not u.worth_reporting
    # ambiguous RTP alone is not media without signalling
    assert not summarize(status({"media_ambiguous_packets": 3})).worth_reporting

"""Media seen without signalling, summarised for the operator (pure).

Read from `Recorder.status()`: the call engine's counters (`unsignalled_flows`,
`unsignalled_packets`, `media_ambiguous_packets`; zero until the engine
reports them) and each sensor's SIP-over-TLS counters (`sip_tls_flows`,
`sip_tls_packets`, from its heartbeats). The likely cause is a guess an
operator can act on:

* a sensor saw SIP over TLS: the signalling is encrypted, so its calls'
  media (RTP in clear) can never be tied to a dialog;
* otherwise, with media flows that had no signalling: the signalling is on
  another mirror (a sensor that is not connected), or the capture started
  in the middle of the calls.

Used by the admin API (`controller.api.link`, `UnsignalledMedia`) and by
`spanrec record` (`cli.output.print_unsignalled`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

CAUSE_TLS = "SIP over TLS: signalling is encrypted"
CAUSE_NOT_SEEN = "signalling not seen: on another mirror, or the capture started mid-call"


@dataclass(frozen=True)
class UnsignalledMedia:
    flows: int = 0                 # media flows with no signalling (call engine)
    packets: int = 0
    ambiguous_packets: int = 0     # RTP several calls could own
    sip_tls_flows: int = 0         # summed over sensors
    sip_tls_packets: int = 0
    tls_by_sensor: dict[str, int] = field(default_factory=dict)  # sensor -> SIP-TLS packets
    likely_cause: str = ""         # "" when there is nothing to report

    @property
    def worth_reporting(self) -> bool:
        """Something is not being recorded: media without signalling, or SIP over TLS."""
        return bool(self.flows or self.packets or self.sip_tls_packets)


def likely_cause(flows: int, packets: int, tls_by_sensor: dict[str, int]) -> str:
    seen = {s: n for s, n in sorted(tls_by_sensor.items()) if n}
    if seen:
        who = ", ".join(f"sensor {s} saw {n} packet{'s' if n != 1 else ''}"
                        for s, n in seen.items())
        return f"{CAUSE_TLS} ({who})"
    if flows or packets:
        return CAUSE_NOT_SEEN
    return ""


def summarize(status: dict[str, Any]) -> UnsignalledMedia:
    """The summary of a `Recorder.status()` dict."""
    engine = status.get("engine") or {}
    flows = int(engine.get("unsignalled_flows", 0))
    packets = int(engine.get("unsignalled_packets", 0))
    tls_by_sensor: dict[str, int] = {}
    tls_flows = 0
    for s in status.get("sensors") or ():
        c = s.get("counters") or {}
        tls_flows += int(c.get("sip_tls_flows", 0))
        n = int(c.get("sip_tls_packets", 0))
        if n:
            tls_by_sensor[s["sensor_id"]] = n
    return UnsignalledMedia(
        flows=flows, packets=packets,
        ambiguous_packets=int(engine.get("media_ambiguous_packets", 0)),
        sip_tls_flows=tls_flows, sip_tls_packets=sum(tls_by_sensor.values()),
        tls_by_sensor=tls_by_sensor, likely_cause=likely_cause(flows, packets, tls_by_sensor))

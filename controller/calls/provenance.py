"""Which sensor contributed what, and the traces a forged or inconsistent packet leaves.

A sensor holds a valid certificate and may still lie (a stolen branch key, a
broken box): it can inject a BYE that cuts another site's call, or RTP that
replaces a caller's audio.  The recorder cannot always tell the forgery from
the real thing, but it can make sure the recording shows who said what, and
flag what does not add up:

* ``streams[].packets_by_sensor``: RTP packets of the stream kept, per sensor
  (mirror copies dropped by dedup are in ``copies_dropped_by_sensor``);
  ``legs[].sip_packets_by_sensor`` the same for each leg's SIP.
* conflicts (call.json ``conflicts``, one sentence each in ``warnings``):
  - ``rtp-content``: one sequence number of one stream arrived twice with
    different payloads (a source re-sending a packet sends the same bytes;
    two sensors reporting different content for one packet means one lies);
  - ``bye-one-sensor``: the leg's signalling was seen by several sensors but
    its BYE by only one of them.
Per-packet cost: one dict increment per RTP packet (streams.MediaEndpoint.packet);
everything else happens on SIP messages or at finalize.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["note_sip", "note_copy", "call_conflicts"]

_BYE = b"BYE "
_MAX_CONFLICTS = 50


def note_sip(leg: Any, sensor_id: str, payload: bytes) -> None:
    """A SIP packet of the leg kept from `sensor_id` (`payload`: the message)."""
    leg.sip_by_sensor[sensor_id] = leg.sip_by_sensor.get(sensor_id, 0) + 1
    leg.seen_by.add(sensor_id)
    if payload[:4] == _BYE:
        leg.bye_by.add(sensor_id)


def note_copy(leg: Any, sensor_id: str, head: bytes) -> None:
    """A mirror copy of one of the leg's SIP packets that dedup dropped."""
    leg.seen_by.add(sensor_id)
    if head[:4] == _BYE:
        leg.bye_by.add(sensor_id)


def _payload(frames: Sequence[bytes], ref: int) -> bytes | None:
    if ref < 0:
        return None
    idx, start, end = ref >> 34, (ref >> 17) & 0x1FFFF, ref & 0x1FFFF
    try:
        return bytes(frames[idx][start:end])
    except IndexError:
        return None


def _seq_of(frames: Sequence[bytes], ref: int) -> int | None:
    """RTP sequence number of the packet whose payload `ref` points at (plain header)."""
    idx, start = ref >> 34, (ref >> 17) & 0x1FFFF
    frame = frames[idx]
    if start < 12 or frame[start - 12] & 0xDF != 0x80:
        return None                     # CSRC or extension: not read here
    return (frame[start - 10] << 8) | frame[start - 9]


def call_conflicts(frames: Sequence[bytes], streams: Sequence[Any], legs: Sequence[Any],
                   sites: dict[str, str]) -> list[dict[str, Any]]:
    """The conflicts of a finished call (see the module docstring).  Every
    ``bye-one-sensor`` is listed; ``rtp-content`` entries are listed up to 50,
    the rest of them in one entry per stream with ``seq`` null and their
    ``count`` (so a flood of forged RTP cannot hide a forged BYE)."""
    out: list[dict[str, Any]] = []
    listed = 0
    for i, s in enumerate(streams):
        if not s.dups:
            continue
        wanted = {seq for seq, _ref, _sensor in s.dups}
        originals: dict[int, tuple[bytes, int]] = {}
        for run in s.by_pt.values():
            for ref in run.refs:
                if ref < 0:
                    continue
                seq = _seq_of(frames, ref)
                if seq in wanted and seq not in originals:
                    originals[seq] = (_payload(frames, ref) or b"", ref)
        stream_sensors = sorted(s.by_sensor)
        more: dict[str, int] = {}
        for seq, ref, sensor in s.dups:
            orig = originals.get(seq)
            dup = _payload(frames, ref)
            if orig is None or dup is None or dup == orig[0]:
                continue
            if listed >= _MAX_CONFLICTS:
                more[sensor] = more.get(sensor, 0) + 1
                continue
            listed += 1
            others = [x for x in stream_sensors if x != sensor]
            out.append({"kind": "rtp-content", "stream": i, "seq": seq, "count": 1,
                        "sensor": sensor or None, "site": sites.get(sensor) or None,
                        # whose copy the recording kept (the first to arrive), when it can be told
                        "kept_from": others[0] if len(others) == 1 else None,
                        "stream_sensors": stream_sensors,
                        "detail": "a packet with this sequence number arrived twice with different "
                                  "payloads; the first to arrive is kept" +
                                  (f" (also seen from {', '.join(others)})" if others else "")})
        for sensor, n in sorted(more.items()):
            out.append({"kind": "rtp-content", "stream": i, "seq": None, "count": n,
                        "sensor": sensor or None, "site": sites.get(sensor) or None,
                        "kept_from": None, "stream_sensors": stream_sensors,
                        "detail": f"{n} more packets of this stream arrived twice with different "
                                  "payloads (not listed one by one)"})
    for leg in legs:
        if len(leg.bye_by) == 1 and len(leg.seen_by) > 1:
            (only,) = leg.bye_by
            out.append({"kind": "bye-one-sensor", "call_id": leg.call_id, "sensor": only,
                        "site": sites.get(only) or None, "stream_sensors": None,
                        "detail": f"BYE seen only by {only}; the leg's signalling was seen by "
                                  f"{', '.join(sorted(leg.seen_by))}"})
    return out


def conflict_warnings(conflicts: list[dict[str, Any]]) -> list[str]:
    out = []
    rtp = [c for c in conflicts if c["kind"] == "rtp-content"]
    if rtp:
        # every sensor that sent the stream: which of them lies cannot be told
        sensors = sorted({x for c in rtp for x in (c["stream_sensors"] or [])} |
                         {c["sensor"] for c in rtp if c["sensor"]})
        kept = sorted({c["kept_from"] for c in rtp if c.get("kept_from")})
        out.append(f"{sum(c.get('count', 1) for c in rtp)} RTP packets arrived twice with different "
                   f"content (from sensors {', '.join(sensors) or '?'}"
                   + (f"; the audio uses the copies of {', '.join(kept)}, which arrived first"
                      if kept else "; the audio uses the copies that arrived first")
                   + "): one source of this media may be forged.")
    for c in conflicts:
        if c["kind"] == "bye-one-sensor":
            out.append(f"The BYE of {c['call_id']} was seen only by sensor {c['sensor']} although "
                       "other sensors saw the call's signalling: it may be forged.")
    return out

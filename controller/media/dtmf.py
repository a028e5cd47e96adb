"""DTMF digits of a call: RFC 2833/4733 telephone events and SIP INFO.

Runs at finalize time.  Two sources:

* **RFC 4733 events** in the RTP streams (payload types the SDP maps to
  ``telephone-event``).  Every packet of one key press carries the same RTP
  timestamp (the event's start) and a growing duration; the end packet is
  sent three times.  So one digit = one (stream, RTP timestamp, event code),
  whatever number of packets (or repeated end packets) carried it: its time
  is the first packet's capture time, its duration the largest duration seen.
* **SIP INFO** with ``application/dtmf-relay`` (``Signal=5`` /
  ``Duration=160``) or ``application/dtmf`` (the digit alone) bodies.
  `note_info` is called by `Dialog.apply` for each new (not retransmitted)
  INFO request and keeps (time, side, content type, body); retransmissions
  and proxy-hop copies were already dropped by the dialog.

The same press seen twice — on two streams of one direction (a media relay,
two sensors' legs) or on two legs of the call — is one digit: same digit,
direction and source, starts less than `SAME_PRESS_NS` apart, from different
streams or legs (two presses of one digit on one stream always have
different RTP timestamps).  Times are seconds from the call's start
(``started_at``), like every other call.json time offset.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from protocols.errors import RtpError
from protocols.rtp import event_to_digit, parse_telephone_event

from controller.media.hold import caller_tags
from controller.media.streams import SIDE_NAMES, RtpStream

if TYPE_CHECKING:
    from protocols.sip import SipMessage

__all__ = ["note_info", "rfc4733_digits", "sip_info_digits", "parse_info_body", "call_dtmf",
           "SAME_PRESS_NS"]

SAME_PRESS_NS = 250_000_000
_NS = 1_000_000_000
_REF_MASK = (1 << 17) - 1
_DTMF_TYPES = ("application/dtmf-relay", "application/dtmf")
_FIELD_RE = re.compile(r"^\s*([A-Za-z-]+)\s*[=:]\s*(\S*)\s*$", re.MULTILINE)
_DIGIT_RE = re.compile(r"^\s*([0-9*#A-Da-d]|1[0-6])\s*$")
_MAX_INFO = 4096          # INFO DTMF kept per dialog (a bound, never reached by a person)


def note_info(log: list, ts_ns: int, side: int, msg: SipMessage) -> None:
    """Keep a DTMF INFO request's body (called by Dialog.apply for new requests)."""
    ct = (msg.content_type or "").lower()
    if msg.body and ct.startswith(_DTMF_TYPES) and len(log) < _MAX_INFO:
        log.append((ts_ns, side, msg.from_tag, ct, bytes(msg.body[:256])))


def _digit(text: str) -> str | None:
    """'5', '*', '#', 'A'..'D' (any case), or an event code 10..16 -> its DTMF text."""
    m = _DIGIT_RE.match(text)
    if m is None:
        return None
    value = m.group(1)
    if len(value) == 2:
        try:
            return event_to_digit(int(value))
        except RtpError:
            return None
    return value.upper()


def parse_info_body(content_type: str, body: bytes) -> tuple[str, int | None] | None:
    """(digit, duration ms or None) of a SIP INFO DTMF body, None if it holds none.

    ``application/dtmf-relay``: ``Signal=<digit>`` and optional
    ``Duration=<ms>`` lines (any case, ``=`` or ``:``, spaces allowed);
    ``application/dtmf``: the digit alone, or the same two lines."""
    text = body.decode("utf-8", "replace")
    fields = {k.lower(): v for k, v in _FIELD_RE.findall(text)}
    if "signal" in fields:
        digit = _digit(fields["signal"])
    elif content_type.startswith("application/dtmf") and "-relay" not in content_type:
        digit = _digit(text.strip())
    else:
        digit = None
    if digit is None:
        return None
    dur = fields.get("duration", "")
    return digit, int(dur) if dur.isdigit() and len(dur) < 7 else None


def rfc4733_digits(frame_ts: Sequence[int], frame_data: Sequence[bytes], stream: RtpStream,
                   rtpmap: dict) -> list[tuple[int, str, int | None]]:
    """(start ns, digit, duration ms) of each key press in one stream's telephone events."""
    events: dict[tuple[int, int], list] = {}     # (rtp ts, event) -> [first ns, max duration, clock]
    for pt, run in stream.by_pt.items():
        enc = stream.encoding(pt, rtpmap)
        if enc is None or not enc[0].upper().startswith("TELEPHONE-EVENT"):
            continue
        clock = enc[1] or 8000
        for ts, ref in zip(run.timestamps, run.refs):
            if ref < 0:
                continue
            idx = ref >> 34
            start = (ref >> 17) & _REF_MASK
            try:
                ev = parse_telephone_event(frame_data[idx][start:ref & _REF_MASK])
            except RtpError:
                continue
            key = (ts, ev.event)
            t = frame_ts[idx]
            hit = events.get(key)
            if hit is None:
                events[key] = [t, ev.duration, clock]
            else:
                if t < hit[0]:
                    hit[0] = t
                if ev.duration > hit[1]:
                    hit[1] = ev.duration
    out = []
    for (_, code), (t, duration, clock) in events.items():
        try:
            digit = event_to_digit(code)
        except RtpError:
            continue                       # a tone, not a key
        out.append((t, digit, duration * 1000 // clock if duration else None))
    out.sort()
    return out


def sip_info_digits(info_log: Iterable[tuple], tags: set[str] | None = None
                    ) -> list[tuple[int, int, str, int | None, str | None]]:
    """(time ns, side, digit, duration ms, From-tag) of each DTMF INFO of one dialog.
    ``tags``: the caller's From-tags on every hop (hold.caller_tags); an INFO
    whose From-tag is one of them comes from the caller."""
    out = []
    for ts, side, from_tag, ct, body in info_log:
        parsed = parse_info_body(ct, body)
        if parsed is None:
            continue
        if tags and from_tag:
            side = 0 if from_tag in tags else 1
        out.append((ts, side, parsed[0], parsed[1], from_tag))
    return out


def _merge(found: list[tuple[int, str, int | None, str, str, object]]
           ) -> list[tuple[int, str, int | None, str, str, object]]:
    """One entry per press: drop copies of a press from another stream or leg."""
    found.sort(key=lambda e: e[0])
    kept: list[tuple[int, str, int | None, str, str, object]] = []
    for e in found:
        t, digit, _, source, direction, origin = e
        dup = False
        for k in reversed(kept):
            if t - k[0] >= SAME_PRESS_NS:
                break
            if k[1] == digit and k[3] == source and k[4] == direction and k[5] != origin:
                dup = True
                break
        if not dup:
            kept.append(e)
    return kept


def call_dtmf(started_ns: int, frame_ts: Sequence[int], frame_data: Sequence[bytes],
              streams: Sequence[RtpStream], rtpmap: dict, legs: Sequence[Any]) -> list[dict[str, Any]]:
    """call.json "dtmf": every key press, in time order."""
    found: list[tuple[int, str, int | None, str, str, object]] = []
    for s in streams:
        for t, digit, dur in rfc4733_digits(frame_ts, frame_data, s, rtpmap):
            found.append((t, digit, dur, "rfc4733", SIDE_NAMES[s.sender], s))
    for leg in legs:
        log = getattr(leg.dialog, "info_log", None)
        if not log:
            continue
        tags = caller_tags(getattr(leg.dialog, "media_log", ()), leg.dialog.caller_tag)
        for t, side, digit, dur, from_tag in sip_info_digits(log, tags):
            # origin: the leg and hop (a B2BUA that keeps the Call-ID shows one INFO per hop)
            found.append((t, digit, dur, "sip-info", SIDE_NAMES[side], (leg.call_id, from_tag)))
    return [{"digit": digit, "at_s": round((t - started_ns) / _NS, 3), "duration_ms": dur,
             "source": source, "direction": direction}
            for t, digit, dur, source, direction, _ in _merge(found)]

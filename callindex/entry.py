"""One index row from one recording's call.json (pure: no I/O).

The row holds what people search and sort by; everything else stays in
call.json, which the player and `spanrecctl call` read from storage. Per
direction (caller = the party that sent the INVITE, callee = the other) the
worst MOS and the loss over that direction's streams; ``min_mos`` is the worst
of both, for "MOS below".
"""
from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Any

from callindex.numbers import normalise_number, uri_user

__all__ = ["EntryError", "index_row", "parse_time_us"]

#: columns of the calls table filled from call.json (callindex/schema.py)
_TEXT_LIMIT = 1024


class EntryError(ValueError):
    """The document is not a recording's call.json (what is wrong, in one sentence)."""


def parse_time_us(value: Any) -> int | None:
    """An ISO 8601 time of call.json (``2024-01-15T10:00:01.728848Z``) as UTC
    microseconds since the epoch; None for a missing one."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise EntryError(f"time {value!r} is not a string")
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    except ValueError:
        raise EntryError(f"time {value!r} is not ISO 8601") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    delta = t - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def _text(value: Any) -> str | None:
    if value is None:
        return None
    s = str(value)
    return s[:_TEXT_LIMIT]


def _words(values: Any) -> str:
    """A list as ' a b c ' (each value once, sorted): LIKE '% a %' finds one."""
    if not isinstance(values, list):
        return ""
    items = sorted({str(v).replace(" ", "_") for v in values if v not in (None, "")})
    return " " + " ".join(items) + " " if items else ""


def _direction_quality(streams: list[dict], direction: str) -> tuple[float | None, float | None]:
    """(worst MOS, lost / expected) of one direction's audio streams that were used."""
    mos: list[float] = []
    lost = expected = 0
    for s in streams:
        if not isinstance(s, dict) or s.get("direction") != direction or s.get("kind", "audio") != "audio":
            continue
        m = s.get("mos")
        if isinstance(m, (int, float)) and not isinstance(m, bool):
            mos.append(float(m))
        packets = s.get("packets")
        lo = s.get("lost")
        if isinstance(packets, int) and isinstance(lo, int):
            lost += max(lo, 0)
            expected += packets + max(lo, 0)
    return (min(mos) if mos else None, round(lost / expected, 6) if expected else None)


def index_row(doc: Any, prefix: str, location: str | None = None) -> dict[str, Any]:
    """The calls-table row of the recording at `prefix` whose call.json is `doc`
    (parsed JSON or its bytes). Raises EntryError when it is not one."""
    raw = None
    if isinstance(doc, (bytes, bytearray, memoryview)):
        raw = bytes(doc)
        try:
            doc = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise EntryError(f"call.json of {prefix} is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise EntryError(f"call.json of {prefix} is not an object")
    rid = doc.get("id")
    if not isinstance(rid, str) or not rid:
        raise EntryError(f"call.json of {prefix} has no recording id")
    if not prefix.endswith("/" + rid) and prefix != rid:
        raise EntryError(f"call.json of {prefix} names another recording ({rid})")
    started = parse_time_us(doc.get("started_at"))
    if started is None:
        raise EntryError(f"call.json of {prefix} has no start time")
    answered = parse_time_us(doc.get("answered_at"))
    ended = parse_time_us(doc.get("ended_at"))
    from_uri = _text(doc.get("from"))
    to_uri = _text(doc.get("to"))
    from_user = uri_user(from_uri)
    to_user = uri_user(to_uri)
    streams = doc.get("streams") if isinstance(doc.get("streams"), list) else []
    mos_caller, loss_caller = _direction_quality(streams, "caller")
    mos_callee, loss_callee = _direction_quality(streams, "callee")
    moses = [m for m in (mos_caller, mos_callee) if m is not None]
    codecs = [s.get("codec") for s in streams if isinstance(s, dict) and s.get("used_for_audio")]
    if not codecs:
        codecs = [s.get("codec") for s in streams if isinstance(s, dict)]
    audio = doc.get("audio") if isinstance(doc.get("audio"), dict) else {}
    call_ids = [c for c in doc.get("call_ids") or [] if isinstance(c, str)]
    final = doc.get("final_response")
    retention = doc.get("retention") if isinstance(doc.get("retention"), dict) else {}
    retain_until = parse_time_us(retention.get("retain_until"))
    if raw is None:
        raw = json.dumps(doc, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return {
        "id": rid,
        "prefix": prefix,
        "location": _text(location),
        "started_us": started,
        "answered_us": answered,
        "ended_us": ended,
        "duration_s": round((ended - started) / 1e6, 6) if ended is not None and ended >= started else None,
        "talk_s": round((ended - answered) / 1e6, 6) if ended is not None and answered is not None
        and ended >= answered else None,
        "from_uri": from_uri,
        "to_uri": to_uri,
        "from_user": from_user.lower()[:_TEXT_LIMIT],
        "to_user": to_user.lower()[:_TEXT_LIMIT],
        "from_number": normalise_number(from_user),
        "to_number": normalise_number(to_user),
        "call_ids": call_ids,
        "status": _text(doc.get("status")) or "",
        "final_response": final if isinstance(final, int) and not isinstance(final, bool) else None,
        "end_reason": _text(doc.get("end_reason")),
        "recorded": doc.get("recorded") is not False,
        "not_recorded_reason": _text(doc.get("not_recorded_reason")),
        "encrypted": bool(doc.get("encrypted")),
        "signalling": _text(doc.get("signalling")),
        "has_dtmf": bool(doc.get("dtmf")),
        "has_hold": bool(doc.get("hold")),
        "codecs": _words([str(x).lower() for x in codecs if x]),
        "sensors": _words(doc.get("sensors")),
        "sites": _words(doc.get("sites")),
        "mos_caller": mos_caller,
        "mos_callee": mos_callee,
        "min_mos": min(moses) if moses else None,
        "loss_caller": loss_caller,
        "loss_callee": loss_callee,
        "audio_file": _text(audio.get("file")),
        "pcap_file": _text(doc.get("pcap")),
        "warnings": len(doc.get("warnings") or []) if isinstance(doc.get("warnings"), list) else 0,
        "doc_sha256": hashlib.sha256(raw).hexdigest(),
        "retain_until_us": retain_until,
    }

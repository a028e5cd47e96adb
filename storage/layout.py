"""Where a recording lives inside a store, and what it is called.

The layout is the contract between the controller and everyone who reads the
recordings later, so it is kept in one tiny module with no I/O.  Both values are
pure functions of the call's first Call-ID and its start time: processing the
same capture twice yields the same folder, and a second run overwrites the
first instead of adding a duplicate.
"""
from __future__ import annotations

import hashlib
import re
from datetime import datetime, timezone

#: File names a recording folder may contain (one audio file, by `audio_format`).
CALL_JSON = "call.json"
AUDIO_WAV = "audio.wav"      # 16-bit PCM (RF64 beyond 4 GiB)
AUDIO_FLAC = "audio.flac"    # FLAC, 16 bit
AUDIO_OPUS = "audio.opus"    # Opus in Ogg (RFC 7845)
CALL_PCAP = "call.pcap"
HOLD_JSON = "hold.json"      # a legal hold on the recording (callindex/lifecycle.py)

#: `audio_format` setting -> audio file name.
AUDIO_FILES: dict[str, str] = {"wav": AUDIO_WAV, "flac": AUDIO_FLAC, "opus": AUDIO_OPUS}

#: Content types used by object stores (and by anyone serving the folder).
CONTENT_TYPES: dict[str, str] = {
    ".json": "application/json",
    ".wav": "audio/wav",
    ".flac": "audio/flac",
    ".opus": "audio/ogg",
    ".pcap": "application/vnd.tcpdump.pcap",
}


def audio_file_name(audio_format: str) -> str:
    """The audio file of a recording in `audio_format` (wav, flac, opus)."""
    try:
        return AUDIO_FILES[audio_format]
    except KeyError:
        raise ValueError(f"unknown audio format {audio_format!r} (wav, flac or opus)") from None


def content_type(name: str) -> str:
    """MIME type of a recording file, from its extension."""
    for ext, ctype in CONTENT_TYPES.items():
        if name.endswith(ext):
            return ctype
    return "application/octet-stream"


def _utc(started_at: datetime) -> datetime:
    # A naive datetime is taken as UTC: the pipeline only ever works in UTC.
    if started_at.tzinfo is None:
        return started_at.replace(tzinfo=timezone.utc)
    return started_at.astimezone(timezone.utc)


def recording_prefix(started_at: datetime, recording_id: str) -> str:
    """``YYYY/MM/DD/<recording_id>`` using the UTC date of the call's start."""
    if not recording_id or "/" in recording_id or recording_id in (".", ".."):
        raise ValueError(f"invalid recording id {recording_id!r}")
    day = _utc(started_at)
    return f"{day:%Y/%m/%d}/{recording_id}"


_ID = re.compile(r"^(\d{8}T\d{6}Z)-[0-9a-f]{12}$")


def prefix_of_id(recording_id: str) -> str | None:
    """`YYYY/MM/DD/<id>` of a recording id (the id starts with the call's UTC start
    second, the date of the folder); None when it is not a recording id."""
    m = _ID.match(recording_id)
    if not m:
        return None
    started = datetime.strptime(m.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    return recording_prefix(started, recording_id)


def recording_id(first_call_id: str, started_ns: int) -> str:
    """Stable id of a recording: ``YYYYMMDDTHHMMSSZ-<12 hex>``.

    The time part is the call's start (UTC, second resolution) so ids sort by
    time and are readable; the hex part is the first 12 hex digits (48 bits) of
    ``sha256(f"{first_call_id}\\n{started_ns}")``, which keeps two calls that
    started in the same second apart and contains only characters safe in file
    names and object keys whatever the Call-ID holds.
    """
    started = datetime.fromtimestamp(started_ns // 1_000_000_000, tz=timezone.utc)
    digest = hashlib.sha256(f"{first_call_id}\n{started_ns}".encode("utf-8", "surrogateescape"))
    return f"{started:%Y%m%dT%H%M%SZ}-{digest.hexdigest()[:12]}"


def prefix_date(started_ns: int) -> datetime:
    """UTC datetime of a start time in ns (for :func:`recording_prefix`)."""
    return datetime.fromtimestamp(started_ns / 1e9, tz=timezone.utc)


def valid_prefix(prefix: str) -> str:
    """Normalise and check a recording prefix; refuse anything escaping the root."""
    parts = [p for p in prefix.strip("/").split("/") if p]
    if not parts or any(p in (".", "..") or "\\" in p for p in parts):
        raise ValueError(f"invalid recording prefix {prefix!r}")
    return "/".join(parts)


def valid_name(name: str) -> str:
    """A recording file name: one plain path component."""
    if not name or "/" in name or "\\" in name or name in (".", "..") or name.startswith("."):
        raise ValueError(f"invalid recording file name {name!r}")
    return name

"""Which call a SIP message belongs to: keys that sensors and controller shards
compute alike from the message.

Two uses of one parser:

* `leg_keys(msg, leg_headers)` — the correlation keys a message carries,
  strongest first; the controller merges legs (dialogs with other Call-IDs)
  by them (controller/calls/legs.py);
* `RouteTable.key(msg)` — the *routing key* of a message: every packet of one
  call, whichever sensor saw it, must reach the one shard that owns the call
  (registry/ring.py chooses the shard from the key).

The routing key is the Call-ID, or for a leg whose SIP names another leg's
Call-ID (``X-Call-ID``, ``X-CID``, ``--leg-header``) the key of that leg: a
B2BUA's second leg goes where its first went.  Session-ID,
P-Charging-Vector icid and the SDP origin are *not* routing keys: a proxy may add either to a
dialog half-way through its path (the same Call-ID seen before and after it
would then go to two shards), and an origin is known only to the sensors that
saw the earlier INVITE (two sensors would key one dialog two ways; sipp and
many phones also reuse one origin for every call); legs linked only by them or
by relayed media merge when they land on one shard (docs/DECISIONS.md
"Sharding").  A routing key is sticky per Call-ID in a bounded table, so a
message that names nothing (a BYE) follows its dialog's first message.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

from protocols.sip import SipMessage

__all__ = ["LegKey", "BY_SESSION_ID", "BY_ICID", "BY_SDP_ORIGIN", "leg_keys", "session_pair_key",
           "icid_key", "sdp_origin_key", "RouteTable", "media_key"]

BY_SESSION_ID = "session-id"
BY_ICID = "icid"
BY_SDP_ORIGIN = "sdp-origin"

#: A correlation key: (kind, value).  For header links the value is the named Call-ID.
LegKey = tuple[str, str]

_NULL_UUID = "0" * 32
_UUID_RE = re.compile(r"^\s*([0-9a-fA-F]{32})\s*(?:;(.*))?$")
_REMOTE_RE = re.compile(r"(?:^|;)\s*remote\s*=\s*([0-9a-fA-F]{32})", re.IGNORECASE)
_ICID_RE = re.compile(r"(?:^|;)\s*icid-value\s*=\s*(\"[^\"]+\"|[^;\s]+)", re.IGNORECASE)
_ORIGIN_RE = re.compile(rb"^o=(\S+) (\d+) (\d+) IN IP[46] (\S+)\s*$", re.MULTILINE)
_ORIGIN_MIN_DIGITS = 6


def session_pair_key(values: list[str]) -> LegKey | None:
    """RFC 7989 Session-ID as the unordered pair of its uuids (they swap with
    direction); None while either is the null uuid (an initial INVITE)."""
    for value in values:
        m = _UUID_RE.match(value)
        if m is None:
            continue
        local = m.group(1).lower()
        r = _REMOTE_RE.search(m.group(2) or "")
        remote = r.group(1).lower() if r else _NULL_UUID
        if local == _NULL_UUID or remote == _NULL_UUID:
            return None
        return (BY_SESSION_ID, "/".join(sorted((local, remote))))
    return None


def icid_key(values: list[str]) -> LegKey | None:
    """P-Charging-Vector ``icid-value`` (IMS charging id, kept end to end)."""
    for value in values:
        m = _ICID_RE.search(value)
        if m is not None:
            return (BY_ICID, m.group(1).strip('"'))
    return None


def named_call_id(msg: SipMessage, leg_headers: Iterable[str]) -> str | None:
    """The other leg's Call-ID a header of this message names, if any."""
    own = msg.call_id
    for name in leg_headers:
        values = msg.headers.get(name)
        if values:
            named = values[0].strip()
            if named and named != own:
                return named
    return None


def leg_keys(msg: SipMessage, leg_headers: Iterable[str]) -> list[LegKey]:
    """Correlation keys a SIP message carries, strongest first.

    Header links come as (header name, named Call-ID); the others as
    (BY_SESSION_ID | BY_ICID, value).  Pure: parsing only, no state.
    """
    headers = msg.headers
    out: list[LegKey] = []
    own = msg.call_id
    for name in leg_headers:
        values = headers.get(name)
        if values:
            named = values[0].strip()
            if named and named != own:
                out.append((name, named))
    values = headers.get("session-id")
    if values:
        key = session_pair_key(values)
        if key is not None:
            out.append(key)
    values = headers.get("p-charging-vector")
    if values:
        key = icid_key(values)
        if key is not None:
            out.append(key)
    return out


def sdp_origin_key(sdp: bytes) -> tuple[LegKey, str] | None:
    """(key, origin address) of an SDP's ``o=`` line if it can identify a session:
    username, session id and version, with at least 6 digits (``o=- 0 0`` is no one)."""
    m = _ORIGIN_RE.search(sdp)
    if m is None:
        return None
    user, sess_id, version, addr = (g.decode("ascii", "replace") for g in m.groups())
    if len(sess_id.lstrip("0")) + len(version.lstrip("0")) < _ORIGIN_MIN_DIGITS:
        return None
    return (BY_SDP_ORIGIN, f"{user} {sess_id} {version}"), addr


def media_key(a: bytes, a_port: int, b: bytes, b_port: int) -> str:
    """Routing key of media no SDP announced: its two endpoints, in either direction,
    each port rounded down to even so a flow's RTCP (port + 1, RFC 3550) goes
    with its RTP."""
    x, y = (a, a_port & ~1), (b, b_port & ~1)
    lo, hi = (x, y) if x <= y else (y, x)
    return f"m:{lo[0].hex()}:{lo[1]}-{hi[0].hex()}:{hi[1]}"


class RouteTable:
    """Routing keys of the dialogs one sensor (or router) has seen: Call-ID ->
    key, bounded (the oldest forgotten first; a forgotten dialog's later
    messages route by their own Call-ID or named leg again, which is the same
    key unless the dialog was named by another)."""

    def __init__(self, leg_headers: Iterable[str] = ("x-call-id", "x-cid"),
                 max_entries: int = 200_000) -> None:
        self.leg_headers = tuple(h.lower() for h in leg_headers)
        self.max_entries = max_entries
        self._keys: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def key(self, msg: SipMessage) -> str:
        """The routing key of one SIP message (remembered for its Call-ID)."""
        cid = msg.call_id or ""
        key = self._keys.get(cid)
        if key is not None:
            return key
        named = named_call_id(msg, self.leg_headers)
        if named is not None:
            key = self._keys.get(named) or named
        else:
            key = cid
        self.bind(cid, key)
        return key

    def bind(self, call_id: str, key: str) -> None:
        """Remember `call_id`'s key (its first message, or an owner's announcement)."""
        keys = self._keys
        if call_id not in keys and len(keys) >= self.max_entries:
            del keys[next(iter(keys))]
        keys[call_id] = key

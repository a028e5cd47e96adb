"""Patterns operators write for From/To URIs: the recording rules
(controller/calls/rules.py) and the retention rules (storage/retention.py).

Shell-style globs (``fnmatch``: ``*``, ``?``, ``[...]``, ``[!...]``),
case-insensitive, matched against the whole URI without parameters
(``sip:+4930123@pbx.example.com``) *and* its user part (``+4930123``; for
``tel:`` URIs the number), of both From and To. A ``from:`` or ``to:`` prefix
limits a pattern to that side (``to:1???``). Globs, not regular expressions:
they cannot take exponential time on a hostile URI. Pure; no I/O.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

__all__ = ["SIDES", "UriPattern", "compile_pattern", "user_part", "party_uris"]

SIDES = ("from", "to")

#: (side, uri as given, uri lower-cased, user part lower-cased) per party
PartyUris = tuple[tuple[str, str, str, str], ...]


@dataclass(frozen=True, slots=True)
class UriPattern:
    text: str                  # as configured (for reasons)
    side: str | None           # "from", "to" or None (both)
    regex: re.Pattern[str]

    def match(self, uris: PartyUris) -> str | None:
        """The side name and URI matched, e.g. "to sip:1001@pbx", or None."""
        for side, uri, low, user in uris:
            if self.side is not None and side != self.side:
                continue
            if self.regex.match(low) or (user and self.regex.match(user)):
                return f"{side} {uri}"
        return None


def compile_pattern(text: str) -> UriPattern:
    side: str | None = None
    body = text
    head, sep, rest = text.partition(":")
    if sep and head.lower() in SIDES:
        side, body = head.lower(), rest
    return UriPattern(text, side, re.compile(fnmatch.translate(body.lower())))


def user_part(uri: str) -> str:
    """'sip:+4930123@host' -> '+4930123'; 'tel:+4930123;ext=1' -> '+4930123'; '' if none."""
    scheme, sep, rest = uri.partition(":")
    if not sep:
        return ""
    if scheme.lower() == "tel":
        user = rest
    else:
        user, at, _host = rest.rpartition("@")
        if not at:
            return ""
    return user.split(";", 1)[0].lower()


def party_uris(from_uri: str | None, to_uri: str | None) -> PartyUris:
    """What `UriPattern.match` takes, for one call."""
    return tuple((side, uri, uri.lower(), user_part(uri))
                 for side, uri in (("from", from_uri or ""), ("to", to_uri or "")))

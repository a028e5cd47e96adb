"""Recording rules: which calls get their media recorded, and why not.

Pure and typed: no I/O, no logging, no engine state.  `RecordingRules.decide`
is called once per leg, on the first SIP message of its INVITE transaction
(controller/calls/engine.py); a call whose root leg is not recorded keeps its
signalling (call.json, call.pcap with SIP only) and no media.

Rules, first that applies wins:

1. ``skip_header`` (default ``X-Record``): the header is present with one of
   ``skip_values`` (default ``no``, ``false``, ``0``, ``off``; case-insensitive,
   parameters after ``;`` ignored) -> not recorded.  Any other value (``yes``)
   decides nothing.
2. ``exclude`` patterns: one matches the From or To URI -> not recorded.
3. ``include`` patterns: one matches -> recorded.
4. ``default``: ``record`` or ``signalling-only``.  Unset, it is
   ``signalling-only`` when there are include patterns ("record only these")
   and ``record`` otherwise; ``record`` together with include patterns is a
   configuration error (the patterns would decide nothing).

Patterns are shell-style globs (``fnmatch``: ``*``, ``?``, ``[...]``,
``[!...]``), case-insensitive, matched against the whole URI as in the header
without parameters (``sip:+4930123@pbx.example.com``) *and* against its user
part (``+4930123``; for ``tel:`` URIs the number), of both From and To.  A
``from:`` or ``to:`` prefix limits a pattern to that side (``to:1???``).
Globs, not regular expressions: the examples operators write (``sip:+4930*``,
``1???``) are globs, and a glob cannot take exponential time on a hostile URI.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from protocols.sip import COMPACT_FORMS
from protocols.uripatterns import SIDES as _SIDES, UriPattern, compile_pattern, party_uris

__all__ = ["Decision", "RECORD", "RecordingRules", "RulesError", "DEFAULT_SKIP_HEADER",
           "DEFAULT_SKIP_VALUES", "RECORD_MODE", "SIGNALLING_ONLY"]

RECORD_MODE = "record"
SIGNALLING_ONLY = "signalling-only"
DEFAULT_SKIP_HEADER = "X-Record"
DEFAULT_SKIP_VALUES = ("no", "false", "0", "off")

Default = Literal["record", "signalling-only"]

_HEADER_RE = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
_MAX_PATTERNS = 1000
_MAX_PATTERN_LEN = 512
_FIELDS = ("skip_header", "skip_values", "include", "exclude", "default")


class RulesError(ValueError):
    """A bad rule set; ``field`` names the offending setting (``include[2]``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"record_rules{'.' + field if field else ''}: {message}")
        self.field = field


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether a call's media is recorded; ``reason`` says why not (None when recorded)."""

    record: bool
    reason: str | None = None


RECORD = Decision(True, None)


_Pattern = UriPattern
_compile = compile_pattern


@dataclass(frozen=True)
class RecordingRules:
    """Which calls are recorded; see the module docstring for the rules.

    Build from config with `from_dict` (file, environment, etcd); the
    constructor checks its fields too and raises `RulesError`.
    """

    skip_header: str | None = DEFAULT_SKIP_HEADER
    skip_values: tuple[str, ...] = DEFAULT_SKIP_VALUES
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    default: Default | None = None
    # compiled forms, derived from the fields above
    _key: str | None = field(init=False, repr=False, compare=False, default=None)
    _no: frozenset[str] = field(init=False, repr=False, compare=False, default=frozenset())
    _in: tuple[_Pattern, ...] = field(init=False, repr=False, compare=False, default=())
    _out: tuple[_Pattern, ...] = field(init=False, repr=False, compare=False, default=())

    def __post_init__(self) -> None:
        header = self.skip_header
        if header is not None and (not isinstance(header, str) or not _HEADER_RE.fullmatch(header)):
            raise RulesError("skip_header", f"not a SIP header name: {header!r}")
        _check_strings("skip_values", self.skip_values, allow_empty=False)
        for name in ("include", "exclude"):
            patterns = getattr(self, name)
            _check_strings(name, patterns)
            for i, text in enumerate(patterns):
                head, sep, rest = text.partition(":")
                if sep and head.lower() in _SIDES and not rest:
                    raise RulesError(f"{name}[{i}]", f"nothing after {head}: in {text!r}")
        if self.default not in (None, RECORD_MODE, SIGNALLING_ONLY):
            raise RulesError("default", f"expected 'record' or 'signalling-only', got {self.default!r}")
        if self.default == RECORD_MODE and self.include:
            raise RulesError("default", "'record' with include patterns would record every call; "
                                        "drop the default or the include patterns")
        key = None if header is None else header.lower()
        object.__setattr__(self, "_key", COMPACT_FORMS.get(key, key) if key else None)
        object.__setattr__(self, "_no", frozenset(v.lower() for v in self.skip_values))
        object.__setattr__(self, "_in", tuple(_compile(p) for p in self.include))
        object.__setattr__(self, "_out", tuple(_compile(p) for p in self.exclude))

    # -- config -----------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> RecordingRules:
        """Rules from a config mapping (TOML table, JSON object); missing keys take
        the defaults, keys may use '-' or '_'.  `RulesError` names the bad field.

        ``skip_header``: a header name; null, "" or "none" turn the header rule off.
        ``skip_values``, ``include``, ``exclude``: a list of strings (or one string).
        ``default``: "record", "signalling-only" or null (see the module docstring).
        """
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise RulesError("", f"expected an object (table), got {type(data).__name__}")
        kwargs: dict[str, Any] = {}
        for raw_key, value in data.items():
            key = str(raw_key).replace("-", "_")
            if key not in _FIELDS:
                raise RulesError(str(raw_key), f"unknown field (expected {', '.join(_FIELDS)})")
            if key == "skip_header":
                if value is not None and not isinstance(value, str):
                    raise RulesError(key, f"expected a header name or null, got {value!r}")
                value = (value or "").strip()
                kwargs[key] = None if value.lower() in ("", "none") else value
            elif key == "default":
                kwargs[key] = value
            else:
                kwargs[key] = _string_list(key, value)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The rules as config (`from_dict` reads it back): for logs and status."""
        return {"skip_header": self.skip_header, "skip_values": list(self.skip_values),
                "include": list(self.include), "exclude": list(self.exclude),
                "default": self.effective_default}

    def records_nothing(self) -> bool:
        """True when no call can have its media recorded: an exclude pattern that
        matches every URI (``*``, ``from:*``), or no include pattern and the default
        signalling-only.  A change to such rules is logged as a warning."""
        for text in self.exclude:
            head, sep, rest = text.partition(":")
            body = rest if sep and head.lower() in _SIDES else text
            if body and set(body) <= {"*"}:
                return True
        return not self.include and self.effective_default == SIGNALLING_ONLY

    # -- deciding -----------------------------------------------------------------
    @property
    def effective_default(self) -> str:
        """`default`, or what it means when unset."""
        if self.default is not None:
            return self.default
        return SIGNALLING_ONLY if self.include else RECORD_MODE

    def decide(self, from_uri: str | None, to_uri: str | None,
               headers: Mapping[str, Sequence[str]]) -> Decision:
        """Record this call or not, and why not.  ``headers``: lower-case full
        header names to their values (`protocols.sip.SipMessage.headers`)."""
        if self._key is not None:
            for value in headers.get(self._key, ()):
                token = value.split(";", 1)[0].strip()
                if token.lower() in self._no:
                    return Decision(False, f"header {self.skip_header}: {token}")
        if self._in or self._out:
            uris = party_uris(from_uri, to_uri)
            for p in self._out:
                hit = p.match(uris)
                if hit is not None:
                    return Decision(False, f"{hit} matches exclude pattern {p.text!r}")
            for p in self._in:
                if p.match(uris) is not None:
                    return RECORD
        if self.effective_default == RECORD_MODE:
            return RECORD
        if self._in:
            return Decision(False, "from/to match no include pattern")
        return Decision(False, "default is signalling-only")


def _string_list(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise RulesError(name, f"expected a list of strings, got {type(value).__name__}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise RulesError(f"{name}[{i}]", f"expected a string, got {item!r}")
    return tuple(value)


def _check_strings(name: str, values: Any, allow_empty: bool = True) -> None:
    if not isinstance(values, tuple):
        raise RulesError(name, f"expected a tuple of strings, got {type(values).__name__}")
    if not values and not allow_empty:
        raise RulesError(name, "must not be empty")
    if len(values) > _MAX_PATTERNS:
        raise RulesError(name, f"at most {_MAX_PATTERNS} entries, got {len(values)}")
    for i, item in enumerate(values):
        if not isinstance(item, str):
            raise RulesError(f"{name}[{i}]", f"expected a string, got {item!r}")
        text = item.strip()
        if not text:
            raise RulesError(f"{name}[{i}]", "empty")
        if text != item or any(c.isspace() for c in item):
            raise RulesError(f"{name}[{i}]", f"white space in {item!r}")
        if len(item) > _MAX_PATTERN_LEN:
            raise RulesError(f"{name}[{i}]", f"longer than {_MAX_PATTERN_LEN} characters")
        if not item.isprintable():
            raise RulesError(f"{name}[{i}]", f"not printable: {item!r}")

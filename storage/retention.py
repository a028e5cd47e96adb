"""How long a recording is kept (issue #15): retention rules, pure.

A policy is a default (days, or none: keep until erased) and rules, first
match wins. A rule matches a call by its From/To URIs (the same patterns as the
recording rules, protocols/uripatterns.py: a ``from:`` or ``to:`` prefix
limits it to one side, so "calls to our trading desk" and "calls from it" are
rules of their own) and/or by site (a sensor of that site saw the call). Each
rule names its days. Retention counts from the call's start: the controller
writes ``retention: {days, rule, retain_until}`` into call.json when it
stores the recording; the index keeps ``retain_until``; the expiry job
(storage/expiry.py) deletes what is past it, unless held.

Configuration (TOML ``[controller.retention]``, JSON in SPANREC_RETENTION or
etcd like the recording rules)::

    {"default_days": 3650,
     "rules": [{"name": "trading", "match": ["to:+4969*", "from:+4969*"], "days": 2555},
               {"name": "support-berlin", "site": "berlin", "days": 180}]}
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from protocols.uripatterns import UriPattern, compile_pattern, party_uris

__all__ = ["RetentionError", "RetentionRule", "RetentionPolicy", "MAX_DAYS"]

MAX_DAYS = 100 * 366          # a century: more is a typo
_MAX_RULES = 1000


class RetentionError(ValueError):
    """A bad retention setting (which one, why)."""


@dataclass(frozen=True)
class RetentionRule:
    name: str
    days: int
    match: tuple[str, ...] = ()
    site: str | None = None
    _patterns: tuple[UriPattern, ...] = field(default=(), repr=False, compare=False)

    def applies(self, from_uri: str | None, to_uri: str | None, sites: list[str]) -> bool:
        if self.site is not None and self.site not in sites:
            return False
        if self._patterns:
            uris = party_uris(from_uri, to_uri)
            return any(p.match(uris) is not None for p in self._patterns)
        return True


def _days(v: Any, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise RetentionError(f"{where}: days must be a whole number, got {v!r}")
    if not 1 <= v <= MAX_DAYS:
        raise RetentionError(f"{where}: days {v} out of range 1..{MAX_DAYS}")
    return v


@dataclass(frozen=True)
class RetentionPolicy:
    default_days: int | None = None       # None: kept until erased
    rules: tuple[RetentionRule, ...] = ()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "RetentionPolicy":
        if not d:
            return cls()
        unknown = set(d) - {"default_days", "rules"}
        if unknown:
            raise RetentionError(f"retention: unknown setting(s) {', '.join(sorted(unknown))}")
        default = d.get("default_days")
        if default is not None:
            default = _days(default, "retention.default_days")
        raw = d.get("rules") or []
        if not isinstance(raw, list) or len(raw) > _MAX_RULES:
            raise RetentionError(f"retention.rules: a list of at most {_MAX_RULES} rules")
        rules = []
        for i, r in enumerate(raw):
            where = f"retention.rules[{i}]"
            if not isinstance(r, Mapping):
                raise RetentionError(f"{where}: a table with days and match and/or site")
            extra = set(r) - {"name", "days", "match", "site"}
            if extra:
                raise RetentionError(f"{where}: unknown setting(s) {', '.join(sorted(extra))}")
            match = r.get("match") or []
            if isinstance(match, str):
                match = [match]
            if not isinstance(match, list) or not all(isinstance(m, str) and m for m in match):
                raise RetentionError(f"{where}.match: a list of URI patterns")
            site = r.get("site")
            if site is not None and (not isinstance(site, str) or not site):
                raise RetentionError(f"{where}.site: a site name")
            if not match and site is None:
                raise RetentionError(f"{where}: needs match patterns or a site (else it is the default)")
            name = str(r.get("name") or f"rule-{i + 1}")
            rules.append(RetentionRule(name, _days(r.get("days"), where), tuple(match), site,
                                       tuple(compile_pattern(m) for m in match)))
        return cls(default, tuple(rules))

    def to_dict(self) -> dict[str, Any]:
        return {"default_days": self.default_days,
                "rules": [{"name": r.name, "days": r.days, **({"match": list(r.match)} if r.match else {}),
                           **({"site": r.site} if r.site else {})} for r in self.rules]}

    def decide(self, meta: Mapping[str, Any]) -> dict[str, Any] | None:
        """call.json's ``retention`` for a recording's metadata (None: no retention
        configured, the recording is kept until erased)."""
        sites = list(meta.get("sites") or [])
        for r in self.rules:
            if r.applies(meta.get("from"), meta.get("to"), sites):
                return _entry(meta, r.days, r.name)
        if self.default_days is not None:
            return _entry(meta, self.default_days, "default")
        return None


def _entry(meta: Mapping[str, Any], days: int, rule: str) -> dict[str, Any]:
    started = meta.get("started_at")
    t = datetime.fromisoformat(started.replace("Z", "+00:00")) if started else datetime.now(timezone.utc)
    until = (t + timedelta(days=days)).astimezone(timezone.utc)
    return {"days": days, "rule": rule, "retain_until": until.isoformat().replace("+00:00", "Z")}

"""A search over the index: what a user may ask (`CallQuery`), checked when it
is made, and its SQL (`where`, `order_by`), the same for SQLite and PostgreSQL.

Numbers: ``number`` matches either party, ``from_number``/``to_number`` one
side; ``match`` is ``substring`` (default), ``prefix`` or ``exact``. A number
with letters (``alice``) is looked for in the URIs' user parts; a URI
(``sip:alice@example.com``, or anything with an ``@``) in the stored URIs,
ignoring case. ``allowed``
are a role's number patterns (callindex/numbers.py `pattern_to_like`): a call is
visible when either party matches one of them; None means no restriction, an
empty list means nothing is visible.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import and_, bindparam, column, false, func, literal_column, or_, select, table, true
from sqlalchemy.sql.elements import ColumnElement

from callindex.entry import EntryError, parse_time_us
from callindex.numbers import normalise_number, number_query, pattern_to_like
from callindex.schema import call_legs, calls

__all__ = ["CallQuery", "QueryError", "SORTS", "where", "order_by", "parse_when"]

MATCHES = ("substring", "prefix", "exact")
#: sort name -> column (descending with a leading '-')
SORTS = {"started": calls.c.started_us, "duration": calls.c.duration_s, "from": calls.c.from_user,
         "to": calls.c.to_user, "status": calls.c.status, "mos": calls.c.min_mos}
MAX_LIMIT = 1000


class QueryError(ValueError):
    """A search that cannot be run (which field, why), e.g. an unknown sort."""


def parse_when(text: str | None) -> int | None:
    """A time a user gives (ISO 8601 date or date-time, UTC unless it says
    otherwise) as UTC microseconds; None for None."""
    if text is None or text == "":
        return None
    try:
        if len(text) == 10:
            d = datetime.fromisoformat(text).replace(tzinfo=timezone.utc)
            text = d.isoformat()
        return parse_time_us(text)
    except (EntryError, ValueError):
        raise QueryError(f"time {text!r}: expected ISO 8601, e.g. 2024-01-15 or 2024-01-15T10:00:00Z") from None


@dataclass
class CallQuery:
    since_us: int | None = None          # started at or after
    until_us: int | None = None          # started before
    number: str | None = None            # either party
    from_number: str | None = None
    to_number: str | None = None
    match: str = "substring"
    call_id: str | None = None           # any leg's Call-ID, exactly
    status: str | None = None
    min_duration_s: float | None = None
    max_duration_s: float | None = None
    site: str | None = None
    sensor: str | None = None
    codec: str | None = None
    mos_below: float | None = None
    has_dtmf: bool | None = None
    has_hold: bool | None = None
    recorded: bool | None = None
    held: bool | None = None             # under legal hold (issue #15)
    retain_until_before_us: int | None = None   # retention over by then
    sort: str = "-started"
    limit: int = 50
    offset: int = 0
    allowed: list[str] | None = field(default=None)

    def __post_init__(self) -> None:
        if self.match not in MATCHES:
            raise QueryError(f"match {self.match!r}: one of {', '.join(MATCHES)}")
        if self.sort.lstrip("-") not in SORTS:
            raise QueryError(f"sort {self.sort!r}: one of {', '.join(SORTS)} (a leading - for descending)")
        if not 1 <= self.limit <= MAX_LIMIT:
            raise QueryError(f"limit {self.limit}: between 1 and {MAX_LIMIT}")
        if self.offset < 0:
            raise QueryError(f"offset {self.offset}: not negative")
        for name in ("number", "from_number", "to_number"):
            v = getattr(self, name)
            if v is not None and not v.strip():
                raise QueryError(f"{name.replace('_', '-')}: empty")

    def to_dict(self) -> dict[str, Any]:
        """The non-default fields (for the audit trail and the API)."""
        base = CallQuery()
        return {k: v for k, v in self.__dict__.items() if v != getattr(base, k)}


def _escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


_URI_SCHEMES = ("sip:", "sips:", "tel:")


_FTS = table("calls_numbers", column("rowid"), column("calls_numbers"))


def _fts(col_name: str, needle: str) -> ColumnElement:
    """SQLite: calls whose `col_name` contains `needle` (3+ characters), through the
    FTS5 trigram table (revision 0005, rows keyed by the calls rowid) instead of a
    scan of LIKE '%…%'."""
    expr = "{" + col_name + "} : \"" + needle.replace('"', '""') + "\""
    return literal_column("calls.rowid").in_(select(_FTS.c.rowid).where(
        _FTS.c.calls_numbers.op("MATCH")(bindparam("fts", expr, unique=True))))


def _side(text: str, match: str, number_col, user_col, uri_col, dialect: str = "sqlite") -> ColumnElement:
    if text.strip().lower().startswith(_URI_SCHEMES) or "@" in text:
        # a URI (or user@host): the stored URI, case-insensitively
        q = text.strip().lower()
        col = func.lower(uri_col)
    else:
        q = number_query(text)
        col = number_col if normalise_number(q) is not None else user_col
        if match == "substring" and dialect == "sqlite" and len(q) >= 3:
            return _fts(col.name, q)
    if match == "exact":
        return col == q
    pat = _escape(q) + "%" if match == "prefix" else "%" + _escape(q) + "%"
    return col.like(pat, escape="\\")


def _allowed(patterns: list[str]) -> ColumnElement:
    if not patterns:
        return false()
    c = calls.c
    terms = []
    for p in patterns:
        like = pattern_to_like(p)
        terms += [c.from_number.like(like, escape="\\"), c.to_number.like(like, escape="\\"),
                  c.from_user.like(like, escape="\\"), c.to_user.like(like, escape="\\")]
    return or_(*terms)


def where(q: CallQuery, dialect: str) -> ColumnElement:
    c = calls.c
    terms: list[ColumnElement] = []
    if q.since_us is not None:
        terms.append(c.started_us >= q.since_us)
    if q.until_us is not None:
        terms.append(c.started_us < q.until_us)
    if q.number and dialect == "sqlite" and q.match == "substring" and not (
            q.number.strip().lower().startswith(_URI_SCHEMES) or "@" in q.number) and len(number_query(q.number)) >= 3:
        qn = number_query(q.number)             # either party in one full-text lookup
        cols = "from_number to_number" if normalise_number(qn) is not None else "from_user to_user"
        terms.append(_fts(cols, qn))
    elif q.number:
        terms.append(or_(_side(q.number, q.match, c.from_number, c.from_user, c.from_uri, dialect),
                         _side(q.number, q.match, c.to_number, c.to_user, c.to_uri, dialect)))
    if q.from_number:
        terms.append(_side(q.from_number, q.match, c.from_number, c.from_user, c.from_uri, dialect))
    if q.to_number:
        terms.append(_side(q.to_number, q.match, c.to_number, c.to_user, c.to_uri, dialect))
    if q.call_id:
        terms.append(c.id.in_(select(call_legs.c.recording_id).where(call_legs.c.call_id == q.call_id)))
    if q.status:
        terms.append(c.status == q.status)
    if q.min_duration_s is not None:
        terms.append(c.duration_s >= q.min_duration_s)
    if q.max_duration_s is not None:
        terms.append(c.duration_s <= q.max_duration_s)
    if q.site:
        terms.append(c.sites.like("% " + _escape(q.site.replace(" ", "_")) + " %", escape="\\"))
    if q.sensor:
        terms.append(c.sensors.like("% " + _escape(q.sensor.replace(" ", "_")) + " %", escape="\\"))
    if q.codec:
        terms.append(c.codecs.like("% " + _escape(q.codec.lower()) + " %", escape="\\"))
    if q.mos_below is not None:
        terms.append(c.min_mos < q.mos_below)
    if q.has_dtmf is not None:
        terms.append(c.has_dtmf == q.has_dtmf)
    if q.has_hold is not None:
        terms.append(c.has_hold == q.has_hold)
    if q.recorded is not None:
        terms.append(c.recorded == q.recorded)
    if q.held is not None:
        terms.append(c.held == q.held)
    if q.retain_until_before_us is not None:
        terms.append(c.retain_until_us <= q.retain_until_before_us)
    if q.allowed is not None:
        terms.append(_allowed(q.allowed))
    return and_(true(), *terms)


_TEXT_SORTS = ("from", "to", "status")


def order_by(q: CallQuery, dialect: str = "sqlite") -> list:
    """The ORDER BY of a query: missing values (no MOS, no duration) last either
    way, text by code point (PostgreSQL's locale collation would order '+49' and
    'alice' differently from SQLite), the recording id breaking ties."""
    name = q.sort.lstrip("-")
    col = SORTS[name]
    if name in _TEXT_SORTS and dialect == "postgresql":
        col = col.collate("C")
    first = col.desc() if q.sort.startswith("-") else col.asc()
    if name != "started":          # started_us is never NULL: its index serves the ORDER BY as is
        first = first.nulls_last()
    tie = calls.c.id.desc() if q.sort.startswith("-") else calls.c.id.asc()
    return [first, tie]

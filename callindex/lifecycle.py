"""What happens to a recording after it is stored (issue #15): legal hold,
expiry when its retention is over, erasure on request (GDPR Art. 17).

Storage is the truth here too. A hold is a file in the recording's folder,
``hold.json`` (``{"held": true|false, "reason", "by", "at", "history": [...]}``):
it travels with the recording, survives an index rebuild and is checked again
in storage before anything is deleted — a stale index can never delete a held
call. The index's ``held`` and ``retain_until_us`` columns only find the
candidates fast. Every hold, release, expiry and erasure is appended to the
audit trail; what cannot be audited is not done.

Deletion goes through the store's ``delete`` (every file; every object
version on a versioned bucket). On S3 with Object Lock the server refuses a
deletion before retain-until: expiry never asks before, erasure reports the
refusal (compliance mode cannot be overridden by anyone; governance mode only
with --bypass-governance). With --object-lock a hold is also an S3 Object Legal
Hold on every version of the recording's objects, so the server refuses to
delete a held recording even after its retention; release lifts it.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterator

from callindex.audit import AuditTrail
from callindex.db import CallIndex, iso_us
from callindex.entry import parse_time_us
from callindex.query import CallQuery
from storage.base import StorageError, layers
from storage.layout import CALL_JSON, HOLD_JSON, prefix_of_id

__all__ = ["Who", "Outcome", "hold", "release", "expire", "erase", "held_in_storage"]

_PAGE = 500
log = logging.getLogger("spanrec.callindex.lifecycle")


@dataclass(frozen=True)
class Who:
    actor: str
    role: str
    address: str = ""


@dataclass
class Outcome:
    recording_id: str
    prefix: str
    done: bool
    what: str            # held | released | expired | would expire | erased | refused ...
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rows(index: CallIndex, q: CallQuery, limit: int | None = None) -> Iterator[dict]:
    """Every row a query finds, page by page (newest first)."""
    offset = 0
    seen = 0
    while True:
        page = index.search(CallQuery(**{**q.__dict__, "limit": _PAGE, "offset": offset}), count=False)
        for row in page.calls:
            yield row
            seen += 1
            if limit is not None and seen >= limit:
                return
        if len(page.calls) < _PAGE:
            return
        offset += _PAGE


def _targets(index: CallIndex, ids: list[str] | None, query: CallQuery | None) -> Iterator[tuple[str, dict | None]]:
    for rid in ids or []:
        yield rid, index.get(rid)
    if query is not None:
        for row in _rows(index, query):
            yield row["id"], row


def held_in_storage(store: Any, prefix: str) -> dict | None:
    """The recording's hold.json when it says held, else None."""
    try:
        doc = json.loads(store.get(prefix, HOLD_JSON))
    except StorageError:
        return None
    except ValueError:
        return {"held": True, "reason": "hold.json unreadable: treated as held"}
    return doc if doc.get("held") else None


def _set_hold(store, index: CallIndex, trail: AuditTrail, who: Who, rid: str, row: dict | None,
              held: bool, reason: str) -> Outcome:
    if row is None:
        return Outcome(rid, "", False, "not found", "not in the index")
    prefix = row["prefix"]
    try:
        old = json.loads(store.get(prefix, HOLD_JSON))
    except (StorageError, ValueError):
        old = {}
    if bool(old.get("held")) == held:
        index.set_held(rid, held)          # the index catches up with storage
        return Outcome(rid, prefix, True, "already held" if held else "not held")
    now = iso_us(time.time_ns() // 1000)
    entry = {"held": held, "reason": reason, "by": who.actor, "at": now}
    doc = {**entry, "history": list(old.get("history") or []) + [entry]}
    trail.append(who.actor, who.role, "hold-add" if held else "hold-remove", recording_id=rid,
                 address=who.address, detail={"reason": reason})
    store.add(prefix, {HOLD_JSON: json.dumps(doc, indent=2, ensure_ascii=False).encode("utf-8")})
    index.set_held(rid, held)
    problem = _s3_legal_hold(store, prefix, held)
    if problem:
        log.error("legal hold recorded, but the S3 object legal hold could not be %s",
                  "set" if held else "lifted", extra={"recording_id": rid, "error": problem})
        reason = f"{reason} (S3 object legal hold not {'set' if held else 'lifted'}: {problem})".lstrip()
    return Outcome(rid, prefix, True, "held" if held else "released", reason)


def _waits_for_index(store: Any, prefix: str) -> bool:
    """This controller keeps the recording's call.json for the index (its
    database was away): a copy erasure must remove too."""
    indexer = getattr(store, "indexer", None)
    return indexer is not None and hasattr(indexer, "has_pending") and indexer.has_pending(prefix)


def _s3_legal_hold(store: Any, prefix: str, held: bool) -> str:
    """With --object-lock, the hold is also an S3 Object Legal Hold on every
    object version (storage/s3.py set_legal_hold): the server refuses deletion
    however the retention and whoever asks. '' when done or not applicable,
    else why not (spanrec's own hold, hold.json, is in place either way)."""
    s = next((layer for layer in layers(store) if hasattr(type(layer), "set_legal_hold")), None)
    if s is None:
        return ""
    try:
        s.set_legal_hold(prefix, held)
    except StorageError as exc:
        return str(exc)
    return ""


def hold(store, index: CallIndex, trail: AuditTrail, who: Who, *, ids: list[str] | None = None,
         query: CallQuery | None = None, reason: str = "") -> list[Outcome]:
    """Put recordings (by id, or every one a query finds) under legal hold."""
    return [_set_hold(store, index, trail, who, rid, row, True, reason)
            for rid, row in _targets(index, ids, query)]


def release(store, index: CallIndex, trail: AuditTrail, who: Who, *, ids: list[str] | None = None,
            query: CallQuery | None = None, reason: str = "") -> list[Outcome]:
    """Take the legal hold off (the history stays in hold.json and the trail)."""
    return [_set_hold(store, index, trail, who, rid, row, False, reason)
            for rid, row in _targets(index, ids, query)]


def _delete(store, index: CallIndex, trail: AuditTrail, who: Who, row: dict, action: str,
            detail: dict) -> Outcome:
    rid, prefix = row["id"], row["prefix"]
    h = held_in_storage(store, prefix)
    if h is not None:
        index.set_held(rid, True)
        return Outcome(rid, prefix, False, "held", h.get("reason") or "under legal hold")
    trail.append(who.actor, who.role, action, recording_id=rid, address=who.address, detail=detail)
    try:
        store.delete(prefix)
    except StorageError as exc:
        return Outcome(rid, prefix, False, "refused", str(exc))
    index.remove(rid)
    return Outcome(rid, prefix, True, "expired" if action == "expire" else "erased")


def expire(store, index: CallIndex, trail: AuditTrail, who: Who, *, as_of_us: int | None = None,
           dry_run: bool = False, limit: int | None = None) -> list[Outcome]:
    """Delete every recording whose retention is over by `as_of_us` (now), unless
    held; `dry_run` only lists them. The retain-until is read again from the
    stored call.json before a deletion (the index may be stale)."""
    now = time.time_ns() // 1000
    as_of = now if as_of_us is None else as_of_us
    out = []
    q = CallQuery(retain_until_before_us=as_of, held=False, sort="started")
    for row in list(_rows(index, q, limit)):
        if dry_run:
            out.append(Outcome(row["id"], row["prefix"], False, "would expire",
                               f"retain until {row['retain_until']}"))
            continue
        try:
            meta = json.loads(store.get(row["prefix"], CALL_JSON))
            until = parse_time_us(((meta.get("retention") or {}).get("retain_until")))
        except (StorageError, ValueError) as exc:
            out.append(Outcome(row["id"], row["prefix"], False, "skipped", f"call.json unreadable: {exc}"))
            continue
        if until is None or until > now:
            out.append(Outcome(row["id"], row["prefix"], False, "skipped",
                               "retention in storage is not over (index stale)"))
            continue
        out.append(_delete(store, index, trail, who, row, "expire",
                           {"retain_until": iso_us(until), "rule": (meta.get("retention") or {}).get("rule")}))
    return out


def erase(store, index: CallIndex, trail: AuditTrail, who: Who, *, ids: list[str] | None = None,
          number: str | None = None, reason: str = "") -> list[Outcome]:
    """Erase recordings on request: by id, or every call where `number` is
    either party (exact, as the index normalises it). Held ones are refused.
    An id the index does not know is erased where its id places it (storage,
    this controller's outbox, its call.json waiting for the index) when anything
    is there."""
    q = CallQuery(number=number, match="exact", sort="started") if number else None
    out = []
    for rid, row in list(_targets(index, ids, q)):
        if row is None:
            # not (or no longer) in the index: a recording the index has not caught
            # up with, or one still in this controller's outbox after another shard
            # erased it from storage and the index (spanrecctl asks every shard):
            # erased where its id says it is, if anything is there
            prefix = prefix_of_id(rid)
            try:
                present = bool(prefix) and (bool(store.list_files(prefix)) or _waits_for_index(store, prefix))
            except StorageError as exc:
                out.append(Outcome(rid, prefix or "", False, "refused", str(exc)))
                continue
            if not present:
                out.append(Outcome(rid, prefix or "", False, "not found", "not in the index or storage"))
                continue
            row = {"id": rid, "prefix": prefix}
        out.append(_delete(store, index, trail, who, row, "erase", {"reason": reason, "number": number}))
    return out

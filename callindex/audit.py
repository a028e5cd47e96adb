"""The audit trail: who searched, played, downloaded or looked at what, when,
from where — appended, never edited.

Entries live in the index database (`audit`); spanrec has no code that
updates or deletes one. Each entry carries the SHA-256 of the entry before it
and its own (over its fields, canonical JSON), so an entry changed, removed or
inserted behind spanrec's back breaks the chain: `AuditTrail.verify` names
the first entry that does not follow. Writers serialise on the one-row
`audit_head` table (updated first in the transaction: a row lock in
PostgreSQL, the write lock in SQLite), so controllers, shards and the web
server can append to one chain at once.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from callindex.db import CallIndex, _unavailable, iso_us
from callindex.schema import audit, audit_head

__all__ = ["AuditTrail", "AuditEntry", "ACTIONS"]

ACTIONS = ("search", "view", "play", "download", "sign-in", "sign-in-failed", "sign-out",
           "user-add", "user-remove", "hold-add", "hold-remove", "expire", "erase", "verify")
_GENESIS = "0" * 64


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    at_us: int
    actor: str
    role: str
    action: str
    recording_id: str | None
    address: str
    detail: dict[str, Any]
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "at": iso_us(self.at_us), "actor": self.actor, "role": self.role,
                "action": self.action, "recording_id": self.recording_id, "address": self.address,
                "detail": self.detail}


def _digest(prev: str, seq: int, at_us: int, actor: str, role: str, action: str,
            recording_id: str | None, address: str, detail: str) -> str:
    body = json.dumps([prev, seq, at_us, actor, role, action, recording_id, address, detail],
                      ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


class AuditTrail:
    def __init__(self, index: CallIndex) -> None:
        self.index = index

    def append(self, actor: str, role: str, action: str, *, recording_id: str | None = None,
               address: str = "", detail: dict[str, Any] | None = None) -> int:
        """Appends one entry; returns its sequence number. IndexUnavailable on failure:
        the caller refuses what it was about to do (nothing unaudited)."""
        if action not in ACTIONS:
            raise ValueError(f"unknown audit action {action!r}")
        detail_s = json.dumps(detail or {}, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        at_us = time.time_ns() // 1000
        try:
            with self.index.engine.begin() as conn:
                conn.execute(update(audit_head).where(audit_head.c.id == 1)
                             .values(seq=audit_head.c.seq + 1))
                seq, prev = conn.execute(select(audit_head.c.seq, audit_head.c.hash)
                                         .where(audit_head.c.id == 1)).one()
                h = _digest(prev, seq, at_us, actor[:256], role, action, recording_id,
                            address[:256], detail_s)
                conn.execute(insert(audit).values(
                    seq=seq, at_us=at_us, actor=actor[:256], role=role, action=action,
                    recording_id=recording_id, address=address[:256], detail=detail_s,
                    prev_hash=prev, hash=h))
                conn.execute(update(audit_head).where(audit_head.c.id == 1).values(hash=h))
                return seq
        except SQLAlchemyError as exc:
            raise _unavailable("cannot append to the audit trail", self.index.url, exc) from None

    def entries(self, since_us: int | None = None, limit: int = 100, offset: int = 0,
                recording_id: str | None = None) -> list[AuditEntry]:
        """Newest first."""
        stmt = select(audit)
        if since_us is not None:
            stmt = stmt.where(audit.c.at_us >= since_us)
        if recording_id is not None:
            stmt = stmt.where(audit.c.recording_id == recording_id)
        stmt = stmt.order_by(audit.c.seq.desc()).limit(limit).offset(offset)
        try:
            with self.index.engine.connect() as conn:
                rows = conn.execute(stmt).mappings().all()
        except SQLAlchemyError as exc:
            raise _unavailable("cannot read the audit trail", self.index.url, exc) from None
        return [AuditEntry(r["seq"], r["at_us"], r["actor"], r["role"], r["action"], r["recording_id"],
                           r["address"], json.loads(r["detail"]), r["prev_hash"], r["hash"]) for r in rows]

    def verify(self) -> tuple[int, int | None]:
        """(entries checked, seq of the first entry that breaks the chain or None)."""
        prev = _GENESIS
        expect = 1
        n = 0
        try:
            with self.index.engine.connect() as conn:
                head_seq, head_hash = conn.execute(select(audit_head.c.seq, audit_head.c.hash)).one()
                for r in conn.execute(select(audit).order_by(audit.c.seq)).mappings():
                    n += 1
                    h = _digest(prev, r["seq"], r["at_us"], r["actor"], r["role"], r["action"],
                                r["recording_id"], r["address"], r["detail"])
                    if r["seq"] != expect or r["prev_hash"] != prev or r["hash"] != h:
                        return n, r["seq"]
                    prev = h
                    expect += 1
        except SQLAlchemyError as exc:
            raise _unavailable("cannot read the audit trail", self.index.url, exc) from None
        if head_seq != expect - 1 or head_hash != prev:
            return n, expect        # entries removed from the end
        return n, None

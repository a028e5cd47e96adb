"""`spanrec index rebuild`: the index from the recordings alone.

Lists the store's recordings (a folder or a bucket), reads each call.json and
indexes it; a row whose call.json is unchanged is left as it is, so a rebuild
over a live index changes nothing but what differs. Rows of recordings no
longer in storage are removed (within ``--since`` when given). A call.json that
cannot be read or is not valid is counted and named, never fatal.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Callable

from callindex.db import CallIndex
from callindex.entry import EntryError, index_row
from callindex.lifecycle import held_in_storage
from storage.base import RecordingStore, StorageError
from storage.layout import CALL_JSON

log = logging.getLogger("spanrec.index")

__all__ = ["RebuildResult", "rebuild"]


@dataclass
class RebuildResult:
    recordings: int = 0       # folders found in storage (within --since)
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0          # rows whose recording is gone
    failed: list[tuple[str, str]] = field(default_factory=list)   # (prefix, why)

    def to_dict(self) -> dict:
        return {"recordings": self.recordings, "added": self.added, "updated": self.updated,
                "unchanged": self.unchanged, "removed": self.removed,
                "failed": [{"prefix": p, "error": e} for p, e in self.failed]}


def _day_us(prefix: str) -> int | None:
    """UTC microseconds of the day a prefix YYYY/MM/DD/ID names (None if not one)."""
    from datetime import datetime, timezone
    parts = prefix.split("/")
    if len(parts) < 4:
        return None
    try:
        d = datetime(int(parts[-4]), int(parts[-3]), int(parts[-2]), tzinfo=timezone.utc)
    except ValueError:
        return None
    return int(d.timestamp()) * 1_000_000


def rebuild(store: RecordingStore, index: CallIndex, since_us: int | None = None,
            progress: Callable[[int, int], None] | None = None) -> RebuildResult:
    res = RebuildResult()
    prefixes = store.list_recordings()
    if since_us is not None:
        day = since_us - since_us % 86_400_000_000
        prefixes = [p for p in prefixes if (_day_us(p) or 0) >= day]
    known = index.prefixes(since_us)
    seen: set[str] = set()
    for i, prefix in enumerate(prefixes, 1):
        if progress is not None:
            progress(i, len(prefixes))
        try:
            raw = store.get(prefix, CALL_JSON)
        except StorageError as exc:
            if f"no file {CALL_JSON}" in str(exc):
                continue          # not a recording (a folder of something else)
            res.failed.append((prefix, str(exc)))
            continue
        res.recordings += 1
        seen.add(prefix)
        held = held_in_storage(store, prefix) is not None      # hold.json: storage is the truth
        if known.get(prefix) == (hashlib.sha256(raw).hexdigest(), held):
            res.unchanged += 1    # nothing to do: not even a write
            continue
        try:
            row = index_row(raw, prefix, getattr(store, "url", "").rstrip("/") + "/" + prefix)
        except EntryError as exc:
            res.failed.append((prefix, str(exc)))
            continue
        row["held"] = held
        if since_us is not None and row["started_us"] < since_us:
            seen.discard(prefix)
            res.recordings -= 1
            continue
        outcome = index.add_row(row)
        setattr(res, outcome, getattr(res, outcome) + 1)
    for prefix in set(known) - seen:
        rid = prefix.rsplit("/", 1)[-1]
        if index.remove(rid):
            res.removed += 1
    return res

"""Admin views of the active calls that never stall the packet path.

With 20,000 active calls, building every call's summary (a sha256 per
recording id, the legs, a sort) took 0.5-0.9 s; run on the asyncio loop it
starved sensors and health checks.  So the Admin servicer (controller/api/link.py)
calls these from a worker thread, and they hold the recorder's lock only to
copy the list of call objects (a few ms for 20 k); summaries are built outside
the lock, for one page only.

Pages are ordered by (start ns, root Call-ID); a page token is the position
after the last call returned (``a:<ns>:<call-id>``), then ``r:<n>`` inside the
recent recordings, so a call that starts or ends between two requests never
shifts the others.  Page size bounded by `MAX_PAGE`.
"""
from __future__ import annotations

from typing import Any

from controller.calls.finish import call_summary
from storage.layout import recording_id

__all__ = ["MAX_PAGE", "PageError", "call_page", "find_active", "summary"]

MAX_PAGE = 1000


class PageError(ValueError):
    """A page token this server did not make."""


def _snapshot(recorder: Any) -> list:
    with recorder._lock:       # the packet path holds it per batch: this only copies
        calls = {id(c): c for c in recorder.engine.table.by_call_id.values()}
    return [c for c in calls.values() if not c.done]


summary = call_summary          # what `CallEngine.active()` gives for one call


def _parse(token: str) -> tuple[str, Any]:
    if not token:
        return "a", None
    try:
        kind, _, rest = token.partition(":")
        if kind == "a":
            ns, _, cid = rest.partition(":")
            return "a", (int(ns), cid)
        if kind == "r":
            return "r", int(rest)
    except ValueError:
        pass
    raise PageError(f"invalid page token {token!r}")


def call_page(recorder: Any, page_size: int, token: str, active_only: bool
              ) -> tuple[list[tuple[dict, bool]], str, int]:
    """(one page of (summary, active) rows, next page token or "", active calls)."""
    size = min(page_size or MAX_PAGE, MAX_PAGE)
    kind, pos = _parse(token)
    calls = _snapshot(recorder)
    rows: list[tuple[dict, bool]] = []
    next_token = ""
    if kind == "a":
        keyed = []
        for call in calls:
            try:
                keyed.append(((call.started_ns, call.first_call_id), call))
            except (RuntimeError, ValueError, KeyError):   # changed under us: skip it
                continue
        keyed.sort(key=lambda e: e[0])
        start = 0
        if pos is not None:
            import bisect
            start = bisect.bisect_right([k for k, _ in keyed], pos)
        for key, call in keyed[start:start + size]:
            rows.append((summary(call), True))
            next_token = f"a:{key[0]}:{key[1]}"
        if start + size < len(keyed):
            return rows, next_token, len(calls)
        next_token = "" if active_only else "r:0"
        pos = 0
    if not active_only and len(rows) < size:
        recent = list(reversed(list(recorder.writer.recent)))
        take = recent[pos:pos + size - len(rows)]
        rows += [(c, False) for c in take]
        end = pos + len(take)
        next_token = f"r:{end}" if end < len(recent) else ""
    elif kind == "a" and not active_only and not rows:
        next_token = "r:0"
    return rows, next_token, len(calls)


def find_active(recorder: Any, rec_id: str) -> dict | None:
    """The summary of the active call with this recording id, or None."""
    for call in _snapshot(recorder):
        if recording_id(call.first_call_id, call.started_ns) == rec_id:
            return summary(call)
    return None

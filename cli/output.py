"""The one output module: records go to stdout as a rich table or as JSON;
messages and progress go to stderr."""
from __future__ import annotations

import json
import sys
from typing import Any, Iterable

from rich.console import Console
from rich.table import Table

# Piped output is read by scripts and people with wide terminals: do not wrap at 80.
out = Console(file=sys.stdout, soft_wrap=False, width=None if sys.stdout.isatty() else 250)
err = Console(file=sys.stderr, stderr=True)

CALL_COLUMNS = [
    ("id", "recording"), ("started_at", "started (UTC)"), ("from", "from"), ("to", "to"),
    ("status", "status"), ("final_response", "final"), ("end_reason", "end"),
    ("duration", "duration"), ("streams", "streams"), ("audio", "audio"),
]


def _call_row(call: dict[str, Any]) -> dict[str, str]:
    started = call.get("started_at") or ""
    duration = ""
    if call.get("answered_at") and call.get("ended_at"):
        from datetime import datetime
        a = datetime.fromisoformat(call["answered_at"].replace("Z", "+00:00"))
        e = datetime.fromisoformat(call["ended_at"].replace("Z", "+00:00"))
        duration = f"{(e - a).total_seconds():.1f}s"
    return {
        "id": str(call.get("id", "")),
        "started_at": started.replace("T", " ")[:19],
        "from": str(call.get("from") or ""),
        "to": str(call.get("to") or ""),
        "status": str(call.get("status") or ""),
        "final_response": "" if call.get("final_response") is None else str(call["final_response"]),
        "end_reason": str(call.get("end_reason") or ""),
        "duration": duration,
        "streams": str(len(call.get("streams") or [])),
        "audio": "yes" if call.get("audio") else "no",
    }


def print_calls(calls: Iterable[dict[str, Any]], fmt: str = "table", title: str = "") -> None:
    calls = sorted(calls, key=lambda c: (c.get("started_at") or "", str(c.get("id"))))
    if fmt == "json":
        out.print_json(json.dumps(calls, default=str)) if out.is_terminal else \
            print(json.dumps(calls, default=str, indent=2))
        return
    table = Table(title=title or None)
    for _, header in CALL_COLUMNS:
        table.add_column(header, overflow="fold")
    for call in calls:
        row = _call_row(call)
        table.add_row(*(row[k] for k, _ in CALL_COLUMNS))
    out.print(table)


def error(message: str) -> None:
    """One line on stderr, never wrapped (scripts grep it)."""
    sys.stderr.write("spanrec: error: " + " ".join(message.split()) + "\n")
    sys.stderr.flush()


def warning(message: str) -> None:
    sys.stderr.write("spanrec: warning: " + " ".join(message.split()) + "\n")
    sys.stderr.flush()

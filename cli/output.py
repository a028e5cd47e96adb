"""The one output module: records go to stdout as a rich table or as JSON;
messages and progress go to stderr. Used by `spanrec` and `spanrecctl`."""
from __future__ import annotations

import dataclasses
import json
import sys
from datetime import datetime, timezone
from typing import Any, Iterable

from rich.console import Console
from rich.markup import escape
from rich.table import Table

# Piped output is read by scripts and people with wide terminals: do not wrap at 80.
out = Console(file=sys.stdout, soft_wrap=False, width=None if sys.stdout.isatty() else 250)
err = Console(file=sys.stderr, stderr=True)
PROGRAM = "spanrec"   # prefix of error and warning lines


def set_program(name: str) -> None:
    global PROGRAM
    PROGRAM = name


def _plain(obj: Any) -> Any:
    """Dataclasses (the admin client's records) to dicts, recursively."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, (list, tuple)):
        return [_plain(o) for o in obj]
    return obj


def print_json(obj: Any) -> None:
    text = json.dumps(_plain(obj), default=str, indent=2)
    out.print_json(text) if out.is_terminal else print(text)

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
        print_json(calls)
        return
    table = Table(title=title or None)
    for _, header in CALL_COLUMNS:
        table.add_column(header, overflow="fold")
    for call in calls:
        row = _call_row(call)
        table.add_row(*(row[k] for k, _ in CALL_COLUMNS))
    out.print(table)


SEARCH_COLUMNS = [
    ("id", "recording"), ("started_at", "started (UTC)"), ("from", "from"), ("to", "to"),
    ("status", "status"), ("duration", "duration"), ("codecs", "codecs"), ("mos", "MOS"),
    ("marks", ""),
]


def print_search(page: Any, fmt: str = "table") -> None:
    """`spanrec index search` / `spanrecctl search`: one page of the call index."""
    page = _plain(page)
    if fmt == "json":
        print_json(page)
        return
    calls = page["calls"]
    total = page.get("total")
    first = page.get("offset", 0) + 1
    shown = f"{first}-{first + len(calls) - 1}" if calls else "0"
    table = Table(title=f"{shown} of {total if total is not None else '?'} call(s)", title_justify="left")
    for _, header in SEARCH_COLUMNS:
        table.add_column(header, overflow="fold")
    for c in calls:
        mos = [m for m in (c.get("mos_caller"), c.get("mos_callee")) if m is not None]
        marks = [m for m, on in (("dtmf", c.get("has_dtmf")), ("hold", c.get("has_hold")),
                                 ("encrypted", c.get("encrypted")),
                                 ("not recorded", c.get("recorded") is False)) if on]
        dur = c.get("duration_s")
        table.add_row(str(c.get("id", "")), _short(c.get("started_at") or ""), str(c.get("from") or ""),
                      str(c.get("to") or ""), str(c.get("status") or ""),
                      f"{dur:.1f}s" if isinstance(dur, (int, float)) else "",
                      ",".join(c.get("codecs") or []), f"{min(mos):.2f}" if mos else "",
                      " ".join(marks))
    out.print(table)


def print_audit(trail: Any, fmt: str = "table") -> None:
    """`spanrecctl audit`: entries newest first; the chain's verdict below."""
    trail = _plain(trail)
    if fmt == "json":
        print_json(trail)
    else:
        table = Table(title=f"audit trail: {len(trail['entries'])} entr(y/ies)", title_justify="left")
        for h in ("#", "at (UTC)", "actor", "role", "action", "recording", "address", "detail"):
            table.add_column(h, overflow="fold")
        for e in trail["entries"]:
            table.add_row(str(e["seq"]), _short(e["at"] or ""), e["actor"], e["role"], e["action"],
                          e.get("recording_id") or "", e["address"],
                          json.dumps(e["detail"], sort_keys=True) if e["detail"] else "")
        out.print(table)
    if trail["verified"]:
        note(f"hash chain verified over {trail['checked']} entr(y/ies)")
    else:
        error(f"audit trail altered: the hash chain breaks at entry {trail['broken_at']} "
              f"({trail['checked']} checked)")


def print_outcomes(found: list[dict], fmt: str = "table", title: str = "") -> None:
    """`spanrecctl hold` / `erase`: one row per recording."""
    if fmt == "json":
        print_json(found)
        return
    done = len(found) if title == "would expire" else sum(1 for o in found if o["done"])
    table = Table(title=f"{done} of {len(found)} recording(s) {title}", title_justify="left")
    for h in ("recording", "done", "what", "reason"):
        table.add_column(h, overflow="fold")
    for o in found:
        table.add_row(o["recording_id"], "yes" if o["done"] else "NO", o["what"], o["reason"])
    out.print(table)


def print_verify(res: dict, fmt: str = "table") -> None:
    """`spanrecctl verify`: every recording checked, its problems."""
    if fmt == "json":
        print_json(res)
        return
    table = Table(title=f"{res['checked']} recording(s) checked, {res['failed']} failed", title_justify="left")
    for h in ("recording", "verifies", "problems"):
        table.add_column(h, overflow="fold")
    for c in res["checks"]:
        table.add_row(c["recording_id"], "yes" if c["ok"] else "NO", "; ".join(c["problems"]))
    out.print(table)


# -- spanrecctl --------------------------------------------------------------
def _age(iso: str, now: datetime | None = None) -> str:
    """'3s ago' / '5m ago' / '2h ago' for an ISO 8601 UTC time; '-' when empty."""
    if not iso:
        return "-"
    then = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    secs = max(0, int(((now or datetime.now(timezone.utc)) - then).total_seconds()))
    if secs < 120:
        return f"{secs}s ago"
    if secs < 7200:
        return f"{secs // 60}m ago"
    if secs < 172800:
        return f"{secs // 3600}h ago"
    return f"{secs // 86400}d ago"


def _rate(v: float) -> str:
    return f"{v:,.0f}" if v >= 10 else f"{v:.1f}"


def _short(iso: str) -> str:
    return (iso or "").replace("T", " ")[:19]


FLEET_COLUMNS = [
    ("sensor_id", "sensor"), ("site", "site"), ("state", "state"), ("link", "link"),
    ("mode", "mode"), ("version", "version"), ("last_heartbeat", "last heartbeat"),
    ("captured_per_s", "captured/s"), ("forwarded_per_s", "forwarded/s"),
    ("kernel_drops", "kernel drops"), ("queue_drops", "queue drops"), ("send_queue", "spool"),
    ("identity", "certificate"), ("registered", "etcd"),
]
# Shown only when some sensor has a non-zero value (placed before "certificate").
REFUSED_PARTS = (("packets_refused", "packets"), ("heartbeats_refused", "heartbeats"),
                 ("sdp_endpoints_refused", "SDP endpoints"), ("outside_site", "outside site"))
OPTIONAL_FLEET_COLUMNS = [
    ("refused", "refused"), ("media_not_rtp", "not RTP"),
    ("clock_offset_ns", "offset"), ("clock_merge", "clock/merge"),
]


def _offset(ns: int) -> str:
    """A clock offset, signed, in a readable unit ("-" when none)."""
    if not ns:
        return "-"
    if abs(ns) >= 1_000_000_000:
        return f"{ns / 1e9:+.3f} s"
    if abs(ns) >= 1_000_000:
        return f"{ns / 1e6:+.1f} ms"
    return f"{ns / 1e3:+.0f} us"


def _refused(s: dict[str, Any]) -> str:
    """Total refusals of a sensor, with the non-zero parts: "7 (packets 5, SDP endpoints 2)"."""
    parts = [(what, s.get(k, 0)) for k, what in REFUSED_PARTS if s.get(k, 0)]
    if not parts:
        return "0"
    return f"{sum(n for _, n in parts)} (" + ", ".join(f"{w} {n}" for w, n in parts) + ")"


def _clock_merge(s: dict[str, Any]) -> str:
    """The non-zero clock and merge counters of a sensor, compactly ("-" when none)."""
    parts = [f"{what} {s[k]}" for k, what in (
        ("clock_corrected", "corrected"), ("clock_steps", "steps"),
        ("clock_restamped", "restamped")) if s.get(k)]
    if s.get("merge"):
        parts.append(s["merge"])
    parts += [f"{what} {s[k]}" for k, what in (("merge_stalls", "stalls"), ("merge_held", "held"))
              if s.get(k)]
    return ", ".join(parts) or "-"


def _fleet_columns(sensors: list[dict[str, Any]]) -> list[tuple[str, str]]:
    columns = list(FLEET_COLUMNS)
    at = columns.index(("send_queue", "spool")) + 1
    if any(s.get("sip_tls_packets") for s in sensors):
        columns.insert(at, ("sip_tls_packets", "SIP/TLS packets"))
        at += 1
    shown = {
        "refused": any(s.get(k) for s in sensors for k, _ in REFUSED_PARTS),
        "media_not_rtp": any(s.get("media_not_rtp") for s in sensors),
        "clock_offset_ns": any(s.get("clock_offset_ns") for s in sensors),
        "clock_merge": any(_clock_merge(s) != "-" for s in sensors),
    }
    for col in OPTIONAL_FLEET_COLUMNS:
        if shown[col[0]]:
            columns.insert(at, col)
            at += 1
    return columns


MEMBER_COLUMNS = [("role", "role"), ("id", "id"), ("site", "site"), ("address", "address"),
                  ("version", "version"), ("started_at", "started (UTC)")]


def unsignalled_line(u: dict[str, Any]) -> str:
    """One line about media seen without signalling (an `UnsignalledMedia` as a
    dict); "" when there is nothing to report."""
    flows, packets = u.get("flows", 0), u.get("packets", 0)
    cause = u.get("likely_cause") or ""
    if flows or packets:
        line = f"media without signalling: {flows} flow(s), {packets} packet(s)"
        if u.get("ambiguous_packets"):
            line += f", {u['ambiguous_packets']} packet(s) several calls could own"
        return line + (f"; likely cause: {cause}" if cause else "")
    if u.get("sip_tls_packets") and cause:
        return f"signalling not recorded: {cause}"
    return ""


def print_unsignalled(status: dict[str, Any]) -> None:
    """`spanrec record`, at the end: one stderr line when media without
    signalling (or SIP over TLS) was seen; nothing otherwise."""
    from controller.calls.unsignalled import summarize
    line = unsignalled_line(dataclasses.asdict(summarize(status)))
    if line:
        warning(line)


def print_fleet(fleet: Any, fmt: str = "table") -> None:
    """`spanrecctl fleet`: one row per sensor, the controller in the title;
    media seen without signalling (and SIP over TLS) below it when there is any."""
    fleet = _plain(fleet)
    if not fleet.get("shard_members"):
        fleet.pop("shard_members", None)   # a controller that is not sharded: as before
    if fmt == "json":
        print_json(fleet)
        return
    title = (f"controller {fleet['controller_id']} at {fleet['controller']}: "
             f"{len(fleet['sensors'])} sensor(s), {fleet['active_calls']} active call(s), "
             f"{fleet['recordings_written']} recording(s) written to {fleet['storage']}")
    if fleet.get("storage_errors"):
        title += f", {fleet['storage_errors']} storage error(s)"
    for key, what in (("decode_errors", "undecodable packet(s)"), ("bad_batches", "refused batch(es)")):
        if fleet.get(key):
            title += f", {fleet[key]} {what}"
    if fleet.get("storage_pending"):
        title += f", {fleet['storage_pending']} waiting for storage"
    if fleet.get("index_pending"):
        title += f", {fleet['index_pending']} waiting for the call index"
    if fleet.get("index_errors"):
        title += f", {fleet['index_errors']} not indexable"
    if fleet.get("late_for_deleted"):
        title += f", {fleet['late_for_deleted']} late packet(s) dropped (recording erased or expired)"
    if fleet.get("registry_state"):
        title += f"; etcd registry {fleet['registry_state']}"
    out.print(_sensor_table(title, fleet["sensors"], _fleet_columns(fleet["sensors"]),
                            bool(fleet.get("registry_state"))))
    _fleet_notes(fleet)


def _sensor_table(title: str, sensors: list[dict[str, Any]], columns: list[tuple[str, str]],
                  registry: bool) -> Table:
    """One row per sensor (`spanrecctl fleet`, one controller or every shard)."""
    table = Table(title=title, title_justify="left")
    right = ("_s", "drops", "queue", "packets", "_ns", "refused", "not_rtp", "received", "shards")
    for key, header in columns:
        table.add_column(header, overflow="fold",
                         justify="right" if key.endswith(right) else "left")
    styles = {"up": "green", "stale": "yellow", "gone": "red", "done": "blue"}
    for s in sensors:
        row = {k: escape(str(s.get(k, ""))) for k, _ in columns}
        row["last_heartbeat"] = _age(s.get("last_heartbeat") or s.get("last_seen") or "")
        row["captured_per_s"] = _rate(s["captured_per_s"])
        row["forwarded_per_s"] = _rate(s["forwarded_per_s"])
        row["identity"] = s.get("identity") or "-"
        row["refused"] = _refused(s)
        row["clock_offset_ns"] = _offset(s.get("clock_offset_ns", 0))
        row["clock_merge"] = _clock_merge(s)
        row["registered"] = ("yes" if s.get("registered") else "no") if registry else "-"
        style = styles.get(s["state"])
        row["state"] = f"[{style}]{s['state']}[/]" if style else s["state"]
        table.add_row(*(row[k] for k, _ in columns))
    return table


def _fleet_notes(fleet: dict[str, Any]) -> None:
    """Below the fleet table: media without signalling, refusals, etcd members."""
    line = unsignalled_line(fleet.get("unsignalled_media") or {})
    if line:
        out.print(f"[yellow]{escape(line)}[/]", soft_wrap=True)
    if fleet.get("authz_refused"):
        out.print(f"[yellow]{fleet['authz_refused']} request(s) refused by certificate role or site "
                  "(controller log: 'refused:')[/]", soft_wrap=True)
    if fleet.get("tls_handshakes_failed"):
        out.print(f"[yellow]{fleet['tls_handshakes_failed']} failed TLS handshake(s) "
                  "(controller log: 'TLS handshake from')[/]", soft_wrap=True)
    if fleet.get("members"):
        members = Table(title="registered in etcd", title_justify="left")
        for _, header in MEMBER_COLUMNS:
            members.add_column(header, overflow="fold")
        for m in fleet["members"]:
            members.add_row(*(str(m.get(k, "")) for k, _ in MEMBER_COLUMNS))
        out.print(members)


SHARD_COLUMNS = [
    ("shard_id", "shard"), ("address", "address"), ("state", "state"), ("sensors", "sensors"),
    ("active_calls", "active calls"), ("packets_in", "packets in"), ("packets_per_s", "packets/s"),
    ("recordings_written", "recordings"), ("duplicates_dropped", "duplicates"),
    ("not_owned_packets", "not owned"),
]
# Shown only when some shard has a non-zero value (or, for error, is unreachable).
OPTIONAL_SHARD_COLUMNS = [
    ("decode_errors", "undecodable"), ("bad_batches", "refused batches"),
    ("ring_refused", "ring refused"), ("storage_pending", "storage pending"),
    ("storage_errors", "storage errors"), ("late_for_deleted", "late for deleted"), ("error", "error"),
]


def print_cluster_fleet(fleet: Any, fmt: str = "table") -> None:
    """`spanrecctl fleet` of a sharded controller: one row per shard (its share,
    the totals in the footer), then each sensor once over every shard."""
    fleet = _plain(fleet)
    if fmt == "json":
        print_json(fleet)
        return
    shards, totals = fleet["shards"], fleet["totals"]
    down = fleet["unreachable"]
    title = (f"sharded controller at {fleet['controller']} ({len(shards)} shard(s)"
             + (f", [red]{len(down)} unreachable[/]" if down else "")
             + f"): {len(fleet['sensors'])} sensor(s), {totals['active_calls']} active call(s), "
             f"{totals['recordings_written']} recording(s) written to {escape(fleet['storage'])}")
    if fleet.get("registry_state"):
        title += f"; etcd registry {fleet['registry_state']}"
    columns = list(SHARD_COLUMNS) + [
        c for c in OPTIONAL_SHARD_COLUMNS
        if any(s.get(c[0]) for s in shards)]
    table = Table(title=title, title_justify="left", show_footer=True)
    for key, header in columns:
        numeric = key not in ("shard_id", "address", "state", "error")
        footer = "total" if key == "shard_id" else ""
        if numeric:
            v = totals.get(key, "")
            footer = _rate(v) if key == "packets_per_s" else f"{v:,}" if v != "" else ""
        table.add_column(header, overflow="fold", footer=footer,
                         justify="right" if numeric else "left")
    for sh in shards:
        row = {k: escape(str(sh.get(k, ""))) for k, _ in columns}
        if sh["state"] == "unreachable":
            row = {k: ("-" if k not in ("shard_id", "address", "error") else v) for k, v in row.items()}
            row["state"] = "[red]unreachable[/]"
        else:
            row["state"] = "[green]up[/]"
            row["packets_per_s"] = _rate(sh["packets_per_s"])
            for k, _ in columns:
                if isinstance(sh.get(k), int) and not isinstance(sh.get(k), bool):
                    row[k] = f"{sh[k]:,}"
        table.add_row(*(row[k] for k, _ in columns))
    out.print(table)
    n = len(shards)
    sensors = [dict(s, received=s.get("packets_received", 0),
                    shards=f"{len(s.get('shards') or [])}/{n}") for s in fleet["sensors"]]
    columns = _fleet_columns(sensors)
    at = columns.index(("forwarded_per_s", "forwarded/s")) + 1
    columns[at:at] = [("received", "received"), ("shards", "shards")]
    out.print(_sensor_table(f"sensors (each once; forwarded and received summed over its "
                            f"streams to the {n} shards)", sensors, columns,
                            bool(fleet.get("registry_state"))))
    _fleet_notes({**fleet, **{k: totals.get(k, 0) for k in ("authz_refused", "tls_handshakes_failed")}})


CALL_LIST_COLUMNS = [
    ("id", "recording"), ("state", "state"), ("started_at", "started (UTC)"), ("from_uri", "from"),
    ("to_uri", "to"), ("status", "status"), ("end_reason", "end"), ("location", "location"),
]


def print_call_list(calls: Any, fmt: str = "table", title: str = "") -> None:
    """`spanrecctl calls`: active calls first, then recent recordings."""
    calls = _plain(calls)
    if fmt == "json":
        print_json(calls)
        return
    table = Table(title=title or None, title_justify="left")
    for _, header in CALL_LIST_COLUMNS:
        table.add_column(header, overflow="fold")
    for c in calls:
        row = {k: str(c.get(k) or "") for k, _ in CALL_LIST_COLUMNS}
        row["state"] = "active" if c.get("active") else "stored"
        row["started_at"] = _short(c.get("started_at", ""))
        table.add_row(*(row[k] for k, _ in CALL_LIST_COLUMNS))
    out.print(table)


def print_call(detail: Any, fmt: str = "table") -> None:
    """`spanrecctl call ID`: JSON is call.json itself (an active call: its live
    summary with "active": true); the table shows the main fields and streams."""
    detail = _plain(detail)
    summary, call = detail["summary"], dict(detail["call"])
    if fmt == "json":
        if summary["active"]:
            call["active"] = True
        print_json(call)
        return
    fields = Table(show_header=False, title=f"recording {summary['id']}", title_justify="left")
    fields.add_column("field", style="bold")
    fields.add_column("value", overflow="fold")
    final = summary.get("final_response")
    rows = [
        ("state", "active" if summary["active"] else "stored"),
        ("call-id", ", ".join(summary["call_ids"])),
        ("from", summary["from_uri"]), ("to", summary["to_uri"]),
        ("status", summary["status"] + (f" ({final})" if final else "")),
        ("end", summary["end_reason"]),
        ("started (UTC)", _short(summary["started_at"])),
        ("answered (UTC)", _short(summary["answered_at"])),
        ("ended (UTC)", _short(summary["ended_at"])),
        ("sensors", ", ".join(call.get("sensors") or [])),
        ("location", summary["location"]),
        ("files", ", ".join(detail["files"])),
    ]
    if summary["active"]:
        rows.append(("packets", str(summary["packets"])))
    for name, value in rows:
        if value:
            fields.add_row(name, value)
    out.print(fields)
    streams = call.get("streams") or []
    if streams:
        table = Table(title="streams", title_justify="left")
        cols = ["src", "dst", "ssrc", "codec", "direction", "packets", "lost", "used_for_audio"]
        for col in cols:
            table.add_column(col.replace("_", " "), overflow="fold")
        for st in streams:
            table.add_row(*("" if st.get(c) is None else str(st.get(c)) for c in cols))
        out.print(table)


def print_downloads(files: Any, fmt: str = "table", title: str = "") -> None:
    """`spanrecctl get`: the files written."""
    files = _plain(files)
    if fmt == "json":
        print_json(files)
        return
    table = Table(title=title or None, title_justify="left")
    for header in ("file", "bytes", "sha256", "path"):
        table.add_column(header, overflow="fold", justify="right" if header == "bytes" else "left")
    for f in files:
        table.add_row(f["name"], f"{f['size']:,}", f["sha256"][:16], f["path"])
    out.print(table)


def error(message: str) -> None:
    """One line on stderr, never wrapped (scripts grep it); secrets masked."""
    from storage.redact import redact
    sys.stderr.write(f"{PROGRAM}: error: " + " ".join(redact(message).split()) + "\n")
    sys.stderr.flush()


def warning(message: str) -> None:
    sys.stderr.write(f"{PROGRAM}: warning: " + " ".join(message.split()) + "\n")
    sys.stderr.flush()


def note(message: str) -> None:
    """One informational line on stderr (stdout stays the table or JSON)."""
    sys.stderr.write(f"{PROGRAM}: " + " ".join(message.split()) + "\n")
    sys.stderr.flush()

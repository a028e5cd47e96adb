"""`spanrec index`: the call index from the command line (callindex/).

    spanrec index rebuild --storage URL --index URL [--since DATE]
    spanrec index search --index URL [--number N] [--since T] ... [-o json]

`rebuild` reads every recording's call.json from storage and brings the index
in line with it (storage is the source of truth); `search` queries an index
directly (the same query `spanrecctl search` sends to a controller).
"""
from __future__ import annotations

import sys
from typing import Any, Callable

import click

from cli import output
from cli.settings import ConfigError, Failure

#: the search filters, shared by `spanrec index search` and `spanrecctl search`
_search_options = [
    click.option("--number", help="Either party's number or user (substring; see --match)."),
    click.option("--from-number", help="The caller's number or user."),
    click.option("--to-number", help="The callee's number or user."),
    click.option("--match", type=click.Choice(["substring", "prefix", "exact"]), default="substring",
                 show_default=True, help="How --number/--from-number/--to-number match."),
    click.option("--since", help="Calls started at or after (ISO 8601, UTC unless it says otherwise)."),
    click.option("--until", help="Calls started before (ISO 8601)."),
    click.option("--status", help="answered, cancelled, failed, ... as in call.json."),
    click.option("--call-id", help="A Call-ID of any leg, exactly."),
    click.option("--min-duration", type=float, help="Seconds, at least."),
    click.option("--max-duration", type=float, help="Seconds, at most."),
    click.option("--site", help="Seen by a sensor of this site."),
    click.option("--sensor", help="Seen by this sensor."),
    click.option("--codec", help="A codec of the recorded audio (PCMA, G722, opus, ...)."),
    click.option("--mos-below", type=float, help="Either direction's MOS below this."),
    click.option("--has-dtmf/--no-dtmf", default=None, help="With (without) DTMF events."),
    click.option("--has-hold/--no-hold", default=None, help="With (without) hold."),
    click.option("--sort", default="-started", show_default=True,
                 help="started, duration, from, to, status or mos; a leading - for descending."),
    click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True),
    click.option("--offset", type=click.IntRange(0), default=0, show_default=True),
]


def search_options(f: Callable) -> Callable:
    for opt in reversed(_search_options):
        f = opt(f)
    return f


def query_from_flags(flags: dict[str, Any]):
    """CallQuery from the flags above (QueryError -> a usage error)."""
    from callindex.query import CallQuery, QueryError, parse_when
    try:
        return CallQuery(
            since_us=parse_when(flags.get("since")), until_us=parse_when(flags.get("until")),
            number=flags.get("number"), from_number=flags.get("from_number"),
            to_number=flags.get("to_number"), match=flags.get("match") or "substring",
            call_id=flags.get("call_id"), status=flags.get("status"),
            min_duration_s=flags.get("min_duration"), max_duration_s=flags.get("max_duration"),
            site=flags.get("site"), sensor=flags.get("sensor"), codec=flags.get("codec"),
            mos_below=flags.get("mos_below"), has_dtmf=flags.get("has_dtmf"),
            has_hold=flags.get("has_hold"), sort=flags.get("sort") or "-started",
            limit=flags.get("limit") or 50, offset=flags.get("offset") or 0)
    except QueryError as exc:
        raise click.UsageError(str(exc)) from None


def _open_store(storage: str, s3_endpoint: str | None):
    from storage import open_store
    from storage.base import StorageError
    try:
        return open_store(storage, endpoint=s3_endpoint)
    except StorageError as exc:
        raise Failure(f"storage {storage}: {exc}") from None


def _open(url: str, password_file: str | None):
    from callindex.db import IndexUnavailable, IndexUrlError, open_index
    try:
        return open_index(url, password_file=password_file)
    except IndexUrlError as exc:
        raise ConfigError(str(exc)) from None
    except IndexUnavailable as exc:
        raise Failure(str(exc)) from None


_index_url = click.option("--index", "index_url", required=True, envvar="SPANREC_INDEX",
                          help="sqlite:///PATH or postgresql://USER@HOST[:PORT]/DB (env SPANREC_INDEX).")
_password_file = click.option("--index-password-file", type=click.Path(dir_okay=False),
                              help="File holding the PostgreSQL password (else SPANREC_INDEX_PASSWORD, "
                                   "PGPASSWORD or ~/.pgpass).")


@click.group("index")
def index_group() -> None:
    """The call index: rebuild it from storage, search it."""


@index_group.command("rebuild")
@click.option("--storage", required=True, help="Folder, file:///path or s3://BUCKET/PREFIX "
                                               "(S3 endpoint and keys from SPANREC_S3_* env).")
@click.option("--s3-endpoint", envvar="SPANREC_S3_ENDPOINT", help="S3 endpoint URL.")
@_index_url
@_password_file
@click.option("--since", help="Only recordings started on or after this date (ISO 8601).")
@click.option("-o", "--output", "fmt", type=click.Choice(["table", "json"]), default="table")
def rebuild_cmd(storage: str, s3_endpoint: str | None, index_url: str, index_password_file: str | None,
                since: str | None, fmt: str) -> None:
    """Bring the index in line with the recordings in storage (which stay the truth)."""
    from callindex.db import IndexUnavailable
    from callindex.query import QueryError, parse_when
    from callindex.rebuild import rebuild
    from storage.base import StorageError
    try:
        since_us = parse_when(since)
    except QueryError as exc:
        raise click.UsageError(str(exc)) from None
    store = _open_store(storage, s3_endpoint)
    index = _open(index_url, index_password_file)
    try:
        res = rebuild(store, index, since_us)
    except (StorageError, IndexUnavailable) as exc:
        raise Failure(str(exc)) from None
    finally:
        index.close()
    if fmt == "json":
        output.print_json(res.to_dict())
    else:
        output.note(f"{res.recordings} recording(s) in {store.url}: {res.added} added, {res.updated} "
                    f"updated, {res.unchanged} unchanged, {res.removed} removed from {index.url}")
        for prefix, why in res.failed:
            output.error(f"{prefix}: {why}")
    if res.failed:
        sys.exit(1)


@index_group.command("search")
@_index_url
@_password_file
@search_options
@click.option("-o", "--output", "fmt", type=click.Choice(["table", "json"]), default="table")
def search_cmd(index_url: str, index_password_file: str | None, fmt: str, **flags: Any) -> None:
    """Search the call index directly (spanrecctl search asks a controller)."""
    from callindex.db import IndexUnavailable
    q = query_from_flags(flags)
    index = _open(index_url, index_password_file)
    try:
        page = index.search(q)
    except IndexUnavailable as exc:
        raise Failure(str(exc)) from None
    finally:
        index.close()
    output.print_search({"calls": page.calls, "total": page.total, "offset": page.offset,
                         "limit": page.limit}, fmt)


@click.group("user")
def user_group() -> None:
    """Users of the web player: add, list, remove (stored in the call index)."""


def _read_password(password_file: str | None) -> str:
    if password_file:
        try:
            text = open(password_file, encoding="utf-8").read()
        except OSError as exc:
            raise click.UsageError(f"--password-file {password_file}: {exc.strerror or exc}") from None
    else:
        if sys.stdin.isatty():
            text = click.prompt("password", hide_input=True, confirmation_prompt=True)
        else:
            text = sys.stdin.readline()
    return text.rstrip("\r\n")


def _local_actor() -> str:
    import getpass
    try:
        return f"{getpass.getuser()} (spanrec user)"
    except Exception:  # noqa: BLE001 - no name for this uid
        return "(spanrec user)"


@user_group.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(["admin", "supervisor", "listener", "auditor"]), required=True,
              help="admin: everything; supervisor / listener: calls of --numbers; auditor: the audit trail.")
@click.option("--numbers", "numbers", multiple=True, metavar="GLOB",
              help="Number pattern whose calls the user may see (either party; '+4930*'); repeatable.")
@click.option("--password-file", type=click.Path(dir_okay=False),
              help="Read the password from this file (else one line from stdin).")
@_index_url
@_password_file
def user_add(name: str, role: str, numbers: tuple[str, ...], password_file: str | None, index_url: str,
             index_password_file: str | None) -> None:
    """Add a user (password hashed with argon2id)."""
    from callindex.audit import AuditTrail
    from callindex.db import IndexUnavailable
    from callindex.users import UserError, Users
    password = _read_password(password_file)
    index = _open(index_url, index_password_file)
    try:
        user = Users(index).add(name, role, password, list(numbers))
        AuditTrail(index).append(_local_actor(), "admin", "user-add",
                                 detail={"user": name, "role": role, "numbers": list(user.numbers)})
    except UserError as exc:
        raise click.UsageError(str(exc)) from None
    except IndexUnavailable as exc:
        raise Failure(str(exc)) from None
    finally:
        index.close()
    output.note(f"user {name} added ({role}{': ' + ', '.join(user.numbers) if user.numbers else ''})")


@user_group.command("remove")
@click.argument("name")
@_index_url
@_password_file
def user_remove(name: str, index_url: str, index_password_file: str | None) -> None:
    """Remove a user."""
    from callindex.audit import AuditTrail
    from callindex.db import IndexUnavailable
    from callindex.users import Users
    index = _open(index_url, index_password_file)
    try:
        if not Users(index).remove(name):
            raise Failure(f"no user {name!r}")
        AuditTrail(index).append(_local_actor(), "admin", "user-remove", detail={"user": name})
    except IndexUnavailable as exc:
        raise Failure(str(exc)) from None
    finally:
        index.close()
    output.note(f"user {name} removed")


@user_group.command("list")
@_index_url
@_password_file
@click.option("-o", "--output", "fmt", type=click.Choice(["table", "json"]), default="table")
def user_list(index_url: str, index_password_file: str | None, fmt: str) -> None:
    """The users, their roles and number patterns (never a password or its hash)."""
    from callindex.db import IndexUnavailable
    from callindex.users import Users
    index = _open(index_url, index_password_file)
    try:
        found = Users(index).list()
    except IndexUnavailable as exc:
        raise Failure(str(exc)) from None
    finally:
        index.close()
    rows = [{"name": u.name, "role": u.role, "numbers": list(u.numbers)} for u in found]
    if fmt == "json":
        output.print_json(rows)
        return
    from rich.table import Table
    table = Table(title=f"{len(rows)} user(s)", title_justify="left")
    for h in ("name", "role", "numbers"):
        table.add_column(h)
    for r in rows:
        table.add_row(r["name"], r["role"], ", ".join(r["numbers"]))
    output.out.print(table)


@click.command("expire")
@click.option("--storage", required=True, envvar="SPANREC_STORAGE",
              help="Folder, file:///path or s3://BUCKET/PREFIX (S3 endpoint and keys from SPANREC_S3_*).")
@click.option("--s3-endpoint", envvar="SPANREC_S3_ENDPOINT", help="S3 endpoint URL.")
@_index_url
@_password_file
@click.option("--dry-run", is_flag=True, help="Only list what would be deleted.")
@click.option("--as-of", help="With --dry-run: what will have expired by this date (ISO 8601).")
@click.option("--limit", type=click.IntRange(1), help="At most this many recordings in this run.")
@click.option("-o", "--output", "fmt", type=click.Choice(["table", "json"]), default="table")
def expire_cmd(storage: str, s3_endpoint: str | None, index_url: str, index_password_file: str | None,
               dry_run: bool, as_of: str | None, limit: int | None, fmt: str) -> None:
    """Delete recordings whose retention is over (from storage and the index), unless
    held; each deletion is in the audit trail. The controller also runs this
    periodically (--expire-every). Exit 1 if some could not be deleted."""
    from callindex.audit import AuditTrail
    from callindex.db import IndexUnavailable
    from callindex.lifecycle import Who, expire
    from callindex.query import QueryError, parse_when
    from storage.base import StorageError
    if as_of and not dry_run:
        raise click.UsageError("--as-of goes with --dry-run (expiry deletes only what is over now)")
    try:
        as_of_us = parse_when(as_of)
    except QueryError as exc:
        raise click.UsageError(str(exc)) from None
    store = _open_store(storage, s3_endpoint)
    index = _open(index_url, index_password_file)
    try:
        found = expire(store, index, AuditTrail(index), Who(_local_actor().replace("spanrec user", "spanrec expire"),
                                                             "admin"),
                       as_of_us=as_of_us, dry_run=dry_run, limit=limit)
    except (StorageError, IndexUnavailable) as exc:
        raise Failure(str(exc)) from None
    finally:
        index.close()
    output.print_outcomes([o.to_dict() for o in found], fmt,
                          title="would expire" if dry_run else "expired")
    if any(not o.done and o.what not in ("would expire",) for o in found):
        sys.exit(1)

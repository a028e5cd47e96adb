"""The index database: SQLite (embedded default) or PostgreSQL (a cluster).

`open_index(url)` connects, brings the schema to the newest migration (an
advisory lock in PostgreSQL, a file lock beside an SQLite file, so that the
shards of one start do not race) and returns a `CallIndex`. Credentials never
sit in logs: a PostgreSQL URL carries at most a user; the password comes from
``SPANREC_INDEX_PASSWORD``, a file (``--index-password-file``) or libpq's own
``PGPASSWORD``/``~/.pgpass``; `CallIndex.url` is the URL without it.

Failures of the database (down, refused, timed out) raise `IndexUnavailable`
with one sentence; a URL that cannot work raises `IndexUrlError`.
"""
from __future__ import annotations

import fcntl
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from sqlalchemy import bindparam, create_engine, delete, event, func, insert, select, text, update
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, SQLAlchemyError

from callindex.entry import index_row
from callindex.query import CallQuery, order_by, where
from callindex.schema import SCHEMA_REVISION, call_legs, calls
from storage import files as filemodes

__all__ = ["CallIndex", "IndexUnavailable", "IndexUrlError", "SearchPage", "open_index", "iso_us"]

_MIGRATE_LOCK = 0x5350_414E   # pg_advisory_xact_lock key ('SPAN')
PASSWORD_ENV = "SPANREC_INDEX_PASSWORD"


class IndexUrlError(ValueError):
    """An index URL or its credentials that cannot work (what and why)."""


class IndexUnavailable(Exception):
    """The index database failed or cannot be reached (one sentence, no secrets)."""


def iso_us(us: int | None) -> str | None:
    if us is None:
        return None
    t = datetime.fromtimestamp(us // 1_000_000, tz=timezone.utc).replace(microsecond=us % 1_000_000)
    return t.isoformat().replace("+00:00", "Z")


@dataclass
class SearchPage:
    calls: list[dict[str, Any]]
    total: int | None        # all matches (None when not counted)
    offset: int
    limit: int


def _engine_url(url: str, password_file: str | Path | None):
    try:
        u = make_url(url)
    except ArgumentError:
        raise IndexUrlError(f"index URL {url!r}: expected sqlite:///PATH or postgresql://USER@HOST[:PORT]/DB") from None
    backend = u.get_backend_name()
    if backend == "sqlite":
        if u.drivername not in ("sqlite", "sqlite+pysqlite"):
            raise IndexUrlError(f"index URL: driver {u.drivername} is not supported (sqlite:///PATH)")
        if not u.database or u.database == ":memory:":
            raise IndexUrlError("index URL: an SQLite index needs a file (sqlite:///PATH)")
        return u.set(drivername="sqlite+pysqlite")
    if backend == "postgresql":
        if u.password:
            raise IndexUrlError("index URL: put no password in the URL (it would be seen in process "
                                f"lists and logs): use {PASSWORD_ENV}, --index-password-file or ~/.pgpass")
        secret = os.environ.get(PASSWORD_ENV)
        if password_file is not None:
            try:
                secret = Path(password_file).read_text().strip()
            except OSError as exc:
                raise IndexUrlError(f"index password file {password_file}: {exc.strerror or exc}") from None
        u = u.set(drivername="postgresql+psycopg")
        return u.set(password=secret) if secret else u
    raise IndexUrlError(f"index URL {u.render_as_string(hide_password=True)}: "
                        "sqlite:///PATH or postgresql://USER@HOST[:PORT]/DB")


def _no_table(exc: DBAPIError) -> bool:
    text_ = str(getattr(exc, "orig", exc)).lower()
    return "no such table" in text_ or "does not exist" in text_ and "relation" in text_


def check_url(url: str, password_file: str | Path | None = None) -> str:
    """The URL as it may be shown (no password); IndexUrlError if it cannot work."""
    eu = _engine_url(url, password_file)
    return eu.set(drivername=eu.get_backend_name()).render_as_string(hide_password=True)


def _unavailable(what: str, url: str, exc: BaseException) -> IndexUnavailable:
    orig = getattr(exc, "orig", None) or exc
    msg = " ".join(str(orig).split())[:300]
    return IndexUnavailable(f"index {url}: {what}: {msg}")


_SELECT_OLD = select(calls.c.doc_sha256, calls.c.location, calls.c.held).where(calls.c.id == bindparam("rid"))
_INSERT_CALL = insert(calls)
_UPDATE_CALL = update(calls).where(calls.c.id == bindparam("rid"))
_DELETE_LEGS = delete(call_legs).where(call_legs.c.recording_id == bindparam("rid"))
_INSERT_LEG = insert(call_legs)
# SQLite's substring table (revision 0005): rows keyed by the calls row's rowid
_FTS_DELETE = text("DELETE FROM calls_numbers WHERE rowid = (SELECT rowid FROM calls WHERE id = :rid)")
_FTS_INSERT = text("INSERT INTO calls_numbers (rowid, id, from_number, to_number, from_user, to_user) "
                   "SELECT rowid, id, coalesce(from_number, ''), coalesce(to_number, ''), from_user, to_user "
                   "FROM calls WHERE id = :rid")


class CallIndex:
    def __init__(self, engine: Engine, url: str, lock_path: Path | None = None) -> None:
        self.engine = engine
        self.url = url
        self.dialect = engine.dialect.name
        self._lock_path = lock_path

    def __repr__(self) -> str:
        return f"CallIndex({self.url})"

    # -- schema ------------------------------------------------------------
    def migrate(self) -> str:
        """Upgrade the schema to the newest revision; returns it."""
        from alembic import command
        from alembic.config import Config
        cfg = Config()
        cfg.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
        lock_fd = None
        try:
            if self._lock_path is not None:
                lock_fd = filemodes.open_fd(self._lock_path, os.O_RDWR)
                fcntl.flock(lock_fd, fcntl.LOCK_EX)
            with self.engine.connect() as conn:
                if self.dialect == "sqlite":
                    # a batch migration re-creates tables: with foreign keys on, dropping
                    # the old `calls` would cascade into call_legs (PRAGMA outside a transaction)
                    conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
                    conn.commit()          # SQLAlchemy's autobegin; SQLite itself is outside one
                try:
                    with conn.begin():
                        if self.dialect == "postgresql":
                            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATE_LOCK})
                        cfg.attributes["connection"] = conn
                        command.upgrade(cfg, "head")
                finally:
                    if self.dialect == "sqlite":
                        conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                        conn.commit()
        except DBAPIError as exc:
            raise _unavailable("cannot migrate the schema", self.url, exc) from None
        except SQLAlchemyError as exc:
            raise _unavailable("cannot migrate the schema", self.url, exc) from None
        except Exception as exc:   # alembic: a revision this spanrec does not know
            if exc.__class__.__module__.startswith("alembic"):
                raise IndexUrlError(f"index {self.url}: schema {exc} (a newer spanrec made it?)") from None
            raise
        finally:
            if lock_fd is not None:
                os.close(lock_fd)
        return self.revision()

    def current_revision(self) -> str | None:
        """The schema's revision, None for an empty database (no alembic_version)."""
        try:
            with self.engine.connect() as conn:
                return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except DBAPIError as exc:
            if _no_table(exc):
                return None
            raise _unavailable("cannot read the schema revision", self.url, exc) from None
        except SQLAlchemyError as exc:
            raise _unavailable("cannot read the schema revision", self.url, exc) from None

    def revision(self) -> str | None:
        return self.current_revision()

    # -- writing -----------------------------------------------------------
    def add(self, prefix: str, doc: Any, location: str | None = None) -> str:
        """Index (or re-index) the recording at `prefix` from its call.json;
        returns 'added', 'updated' or 'unchanged'. Indexing the same call.json
        twice changes nothing. EntryError for a document that is not one."""
        row = index_row(doc, prefix, location)
        return self.add_row(row)

    def add_row(self, row: dict[str, Any]) -> str:
        row = dict(row)
        call_ids = row.pop("call_ids")
        row["indexed_us"] = time.time_ns() // 1000
        for attempt in (1, 2):
            try:
                with self.engine.begin() as conn:
                    # prebuilt statements with bound parameters: compiled once (the
                    # controller indexes every recording it writes)
                    old = conn.execute(_SELECT_OLD, {"rid": row["id"]}).first()
                    if old is not None and old[0] == row["doc_sha256"] and \
                            (row["location"] is None or old[1] == row["location"]) and \
                            ("held" not in row or bool(old[2]) == row["held"]):
                        return "unchanged"
                    if old is None:
                        # the same folder under another id cannot be: the prefix ends in the id
                        conn.execute(_INSERT_CALL, row)
                        result = "added"
                    else:
                        if row["location"] is None:
                            row["location"] = old[1]
                        conn.execute(_UPDATE_CALL, {**row, "rid": row["id"]})
                        conn.execute(_DELETE_LEGS, {"rid": row["id"]})
                        result = "updated"
                    if call_ids:
                        conn.execute(_INSERT_LEG, [{"recording_id": row["id"], "call_id": c}
                                                   for c in dict.fromkeys(call_ids)])
                    if self.dialect == "sqlite":     # the substring search table (revision 0005)
                        if result == "updated":
                            conn.execute(_FTS_DELETE, {"rid": row["id"]})
                        conn.execute(_FTS_INSERT, {"rid": row["id"]})
                    return result
            except IntegrityError:
                if attempt == 2:
                    raise
                continue          # another writer added it meanwhile: update it
            except SQLAlchemyError as exc:
                raise _unavailable("cannot index a recording", self.url, exc) from None
        raise AssertionError("unreachable")

    def set_held(self, recording_id: str, held: bool) -> bool:
        try:
            with self.engine.begin() as conn:
                return conn.execute(update(calls).where(calls.c.id == recording_id)
                                    .values(held=held)).rowcount > 0
        except SQLAlchemyError as exc:
            raise _unavailable("cannot set a hold", self.url, exc) from None

    def remove(self, recording_id: str) -> bool:
        try:
            with self.engine.begin() as conn:
                conn.execute(delete(call_legs).where(call_legs.c.recording_id == recording_id))
                if self.dialect == "sqlite":
                    conn.execute(_FTS_DELETE, {"rid": recording_id})
                return conn.execute(delete(calls).where(calls.c.id == recording_id)).rowcount > 0
        except SQLAlchemyError as exc:
            raise _unavailable("cannot remove a recording", self.url, exc) from None

    # -- reading -----------------------------------------------------------
    def search(self, q: CallQuery, count: bool = True) -> SearchPage:
        cond = where(q, self.dialect)
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(select(calls).where(cond).order_by(*order_by(q, self.dialect))
                                    .limit(q.limit).offset(q.offset)).mappings().all()
                total = conn.execute(select(func.count()).select_from(calls).where(cond)).scalar() \
                    if count else None
                legs = self._legs(conn, [r["id"] for r in rows])
        except SQLAlchemyError as exc:
            raise _unavailable("search failed", self.url, exc) from None
        return SearchPage([public_row(r, legs.get(r["id"], [])) for r in rows], total, q.offset, q.limit)

    def get(self, recording_id: str) -> dict[str, Any] | None:
        try:
            with self.engine.connect() as conn:
                r = conn.execute(select(calls).where(calls.c.id == recording_id)).mappings().first()
                legs = self._legs(conn, [recording_id]) if r is not None else {}
        except SQLAlchemyError as exc:
            raise _unavailable("lookup failed", self.url, exc) from None
        return public_row(r, legs.get(recording_id, [])) if r is not None else None

    def prefixes(self, since_us: int | None = None) -> dict[str, tuple[str, bool]]:
        """prefix -> (doc_sha256, held) of the indexed recordings started at or after `since_us`."""
        stmt = select(calls.c.prefix, calls.c.doc_sha256, calls.c.held)
        if since_us is not None:
            stmt = stmt.where(calls.c.started_us >= since_us)
        try:
            with self.engine.connect() as conn:
                return {p: (h, bool(held)) for p, h, held in conn.execute(stmt)}
        except SQLAlchemyError as exc:
            raise _unavailable("listing failed", self.url, exc) from None

    def count(self) -> int:
        try:
            with self.engine.connect() as conn:
                return conn.execute(select(func.count()).select_from(calls)).scalar() or 0
        except SQLAlchemyError as exc:
            raise _unavailable("count failed", self.url, exc) from None

    @staticmethod
    def _legs(conn, ids: Iterable[str]) -> dict[str, list[str]]:
        ids = list(ids)
        out: dict[str, list[str]] = {}
        if not ids:
            return out
        for rid, cid in conn.execute(select(call_legs.c.recording_id, call_legs.c.call_id)
                                     .where(call_legs.c.recording_id.in_(ids))):
            out.setdefault(rid, []).append(cid)
        return out

    def close(self) -> None:
        self.engine.dispose()


def public_row(r: Any, call_ids: list[str]) -> dict[str, Any]:
    """A row as the API, the CLI and the web show it (times ISO 8601, lists as lists)."""
    d = dict(r)
    out = {"id": d["id"], "prefix": d["prefix"], "location": d["location"],
           "started_at": iso_us(d["started_us"]), "answered_at": iso_us(d["answered_us"]),
           "ended_at": iso_us(d["ended_us"]), "duration_s": d["duration_s"], "talk_s": d["talk_s"],
           "from": d["from_uri"], "to": d["to_uri"], "from_number": d["from_number"],
           "to_number": d["to_number"], "call_ids": sorted(call_ids), "status": d["status"],
           "final_response": d["final_response"], "end_reason": d["end_reason"],
           "recorded": d["recorded"], "not_recorded_reason": d["not_recorded_reason"],
           "encrypted": d["encrypted"], "signalling": d["signalling"], "has_dtmf": d["has_dtmf"],
           "has_hold": d["has_hold"], "codecs": d["codecs"].split(), "sensors": d["sensors"].split(),
           "sites": d["sites"].split(), "mos_caller": d["mos_caller"], "mos_callee": d["mos_callee"],
           "loss_caller": d["loss_caller"], "loss_callee": d["loss_callee"],
           "audio_file": d["audio_file"], "pcap_file": d["pcap_file"], "warnings": d["warnings"],
           "retain_until": iso_us(d.get("retain_until_us")), "held": bool(d.get("held"))}
    return out


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")       # readers do not block the writer
    cur.execute("PRAGMA synchronous=NORMAL")     # durable at checkpoints; storage is the truth
    cur.execute("PRAGMA busy_timeout=30000")     # shards of one `record` share the file
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA case_sensitive_like=ON")   # LIKE 'prefix%' can use the indexes (stored lower-case)
    cur.close()


def open_index(url: str, *, password_file: str | Path | None = None, migrate: bool = True,
               connect_timeout_s: float = 5.0) -> CallIndex:
    """Connect to the index at `url` and (by default) migrate its schema."""
    eu = _engine_url(url, password_file)
    shown = eu.set(drivername=eu.get_backend_name()).render_as_string(hide_password=True)
    lock_path = None
    if eu.get_backend_name() == "sqlite":
        path = Path(eu.database).expanduser().absolute()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise IndexUrlError(f"index {shown}: {exc.strerror or exc}") from None
        eu = eu.set(database=str(path))
        try:   # numbers and call times: private like the recordings (SQLite gives -wal/-shm the same mode)
            os.close(filemodes.open_fd(path, os.O_RDWR))
        except OSError as exc:
            raise IndexUrlError(f"index {shown}: {exc.strerror or exc}") from None
        engine = create_engine(eu, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        lock_path = path.with_name("." + path.name + ".lock")
    else:
        engine = create_engine(eu, pool_pre_ping=True, pool_size=4, max_overflow=4,
                               connect_args={"connect_timeout": max(1, int(connect_timeout_s)),
                                             "application_name": "spanrec"})
    index = CallIndex(engine, shown, lock_path)
    if migrate:
        rev = index.current_revision()
        if rev != SCHEMA_REVISION:      # Alembic (and its import) only when there is work
            rev = index.migrate()
        if rev != SCHEMA_REVISION:
            raise IndexUrlError(f"index {shown}: schema revision {rev}, this spanrec knows {SCHEMA_REVISION}")
    return index

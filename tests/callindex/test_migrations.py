"""The Alembic migrations create exactly what callindex/schema.py describes."""
from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from callindex.db import open_index
from callindex.schema import SCHEMA_REVISION, metadata


def test_migrations_match_the_schema(index_url):
    ix = open_index(index_url)
    assert ix.revision() == SCHEMA_REVISION
    with ix.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    # PostgreSQL's own search indexes (revision 0004: varchar_pattern_ops, pg_trgm) are
    # dialect-specific and documented in callindex/schema.py rather than declared there
    pg_only = [d for d in diff if d[0] == "remove_index" and d[1].name.endswith(("_pattern", "_trgm"))]
    # SQLite's FTS5 table (revision 0005) and its shadow tables, documented likewise
    fts = [d for d in diff if d[0] == "remove_table" and d[1].name.startswith("calls_numbers")]
    diff = [d for d in diff if d not in fts]
    assert bool(fts) == (ix.dialect == "sqlite")
    assert [d for d in diff if d not in pg_only] == []
    if ix.dialect == "postgresql":
        assert len(pg_only) == 8            # 4 columns x (pattern_ops, trigram)
    ix.migrate()            # again: nothing to do
    ix.close()


def test_upgrading_an_existing_index_keeps_every_row_and_leg(index_url):
    """An index made at revision 0002 (rows with legs) upgraded to the newest keeps
    all of it (a batch copy on SQLite with foreign keys on once cascaded into call_legs)."""
    import json

    from alembic import command
    from alembic.config import Config
    from pathlib import Path

    import callindex.db as db
    from callindex.query import CallQuery
    ix = open_index(index_url, migrate=False)
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(db.__file__).with_name("migrations")))
    with ix.engine.connect() as conn:
        with conn.begin():
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0002")
        from sqlalchemy import text
        with conn.begin():
            conn.execute(text(
                "INSERT INTO calls (id, prefix, started_us, from_user, to_user, status, recorded, encrypted, "
                "has_dtmf, has_hold, codecs, sensors, sites, warnings, doc_sha256, indexed_us) VALUES "
                "('r1', '2024/01/15/r1', 1705312800000000, '100', '200', 'answered', true, false, false, "
                "false, '', '', '', 0, 'x', 0)"))
            conn.execute(text("INSERT INTO call_legs (recording_id, call_id) VALUES ('r1', 'a@x'), ('r1', 'b@y')"))
    ix.close()
    ix = open_index(index_url)                     # migrates to the newest revision
    assert ix.revision() == SCHEMA_REVISION
    assert ix.get("r1")["call_ids"] == ["a@x", "b@y"]
    assert [c["id"] for c in ix.search(CallQuery(call_id="b@y")).calls] == ["r1"]
    assert json.dumps(ix.get("r1")["held"]) == "false"
    ix.close()

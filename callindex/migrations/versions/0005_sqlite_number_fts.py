"""SQLite: a trigram full-text table for number substrings

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06

``LIKE '%…%'`` cannot use an index; over a million recordings an either-party
substring took ~1.2 s p95 on SQLite (docs/BENCHMARK.md). ``calls_numbers`` is an
FTS5 table with the trigram tokenizer (SQLite 3.34+) holding each call's
numbers and user parts; callindex/db.py keeps it in step with ``calls`` in the
same transaction and callindex/query.py searches substrings of 3 or more
characters through it. PostgreSQL has pg_trgm indexes instead (revision 0004).
"""
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    bind.exec_driver_sql(
        "CREATE VIRTUAL TABLE IF NOT EXISTS calls_numbers USING fts5("
        "id UNINDEXED, from_number, to_number, from_user, to_user, tokenize='trigram')")
    # the FTS row's rowid is the calls row's rowid: deleting one by rowid is a lookup
    # (FTS5 cannot index the UNINDEXED id column)
    bind.exec_driver_sql(
        "INSERT INTO calls_numbers (rowid, id, from_number, to_number, from_user, to_user) "
        "SELECT rowid, id, coalesce(from_number, ''), coalesce(to_number, ''), from_user, to_user FROM calls")


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        bind.exec_driver_sql("DROP TABLE IF EXISTS calls_numbers")

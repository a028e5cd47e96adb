"""indexes for search at a million recordings (scripts/bench-index, docs/BENCHMARK.md)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06

- (has_dtmf, started_us): "has DTMF" without a full scan (both databases).
- PostgreSQL: number indexes with varchar_pattern_ops (LIKE 'prefix%' under a
  non-C collation), and pg_trgm GIN indexes for substrings (LIKE '%…%');
  pg_trgm is a trusted extension (PostgreSQL 13+: a database owner may create
  it); where it cannot be created the substring search stays a scan and a
  warning says so.
"""
import logging

from alembic import op
import sqlalchemy as sa

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

log = logging.getLogger("spanrec.index")


def upgrade() -> None:
    op.create_index("ix_calls_dtmf_started", "calls", ["has_dtmf", "started_us"])
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    for col in ("from_number", "to_number", "from_user", "to_user"):
        op.create_index(f"ix_calls_{col}_pattern", "calls", [sa.text(f"{col} varchar_pattern_ops")])
    try:
        with bind.begin_nested():
            bind.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    except sa.exc.DBAPIError as exc:
        log.warning("pg_trgm not available: number substring searches scan the table",
                    extra={"error": str(getattr(exc, "orig", exc)).splitlines()[0]})
        return
    for col in ("from_number", "to_number", "from_user", "to_user"):
        op.create_index(f"ix_calls_{col}_trgm", "calls", [sa.text(f"{col} gin_trgm_ops")],
                        postgresql_using="gin")


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        for col in ("from_number", "to_number", "from_user", "to_user"):
            bind.exec_driver_sql(f"DROP INDEX IF EXISTS ix_calls_{col}_trgm")
            op.drop_index(f"ix_calls_{col}_pattern", table_name="calls")
    op.drop_index("ix_calls_dtmf_started", table_name="calls")

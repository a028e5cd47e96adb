"""The index's tables (SQLAlchemy Core). The database is changed only by the
Alembic migrations in callindex/migrations/versions/, which must create exactly
this; tests/callindex/test_migrations.py compares the two.

Times are UTC microseconds since the epoch (BIGINT): exact, sortable and the
same in SQLite and PostgreSQL. List-valued fields (codecs, sensors, sites) are
stored as ' a b c ' so that one LIKE '% a %' finds a member; the Call-IDs of a
call's legs have their own table, searched by equality.
"""
from __future__ import annotations

from sqlalchemy import (BigInteger, Boolean, Column, Float, ForeignKey, Index, Integer, MetaData,
                        String, Table, Text, false)

__all__ = ["metadata", "calls", "call_legs", "users", "audit", "audit_head", "SCHEMA_REVISION"]

#: the Alembic revision this module describes
SCHEMA_REVISION = "0005"

metadata = MetaData()

calls = Table(
    "calls", metadata,
    Column("id", String(200), primary_key=True),
    Column("prefix", String(300), nullable=False, unique=True),
    Column("location", Text),
    Column("started_us", BigInteger, nullable=False),
    Column("answered_us", BigInteger),
    Column("ended_us", BigInteger),
    Column("duration_s", Float),
    Column("talk_s", Float),
    Column("from_uri", Text),
    Column("to_uri", Text),
    Column("from_user", String(1024), nullable=False),
    Column("to_user", String(1024), nullable=False),
    Column("from_number", String(1024)),
    Column("to_number", String(1024)),
    Column("status", String(64), nullable=False),
    Column("final_response", Integer),
    Column("end_reason", String(128)),
    Column("recorded", Boolean, nullable=False),
    Column("not_recorded_reason", Text),
    Column("encrypted", Boolean, nullable=False),
    Column("signalling", String(64)),
    Column("has_dtmf", Boolean, nullable=False),
    Column("has_hold", Boolean, nullable=False),
    Column("codecs", Text, nullable=False),
    Column("sensors", Text, nullable=False),
    Column("sites", Text, nullable=False),
    Column("mos_caller", Float),
    Column("mos_callee", Float),
    Column("min_mos", Float),
    Column("loss_caller", Float),
    Column("loss_callee", Float),
    Column("audio_file", String(64)),
    Column("pcap_file", String(64)),
    Column("warnings", Integer, nullable=False),
    Column("doc_sha256", String(64), nullable=False),
    Column("indexed_us", BigInteger, nullable=False),
    # revision 0003 (issue #15): retention and legal hold (callindex/lifecycle.py)
    Column("retain_until_us", BigInteger),                 # None: kept until erased
    Column("held", Boolean, nullable=False, server_default=false()),
    Index("ix_calls_started", "started_us"),
    Index("ix_calls_from_number", "from_number"),
    Index("ix_calls_to_number", "to_number"),
    Index("ix_calls_from_user", "from_user"),
    Index("ix_calls_to_user", "to_user"),
    Index("ix_calls_status_started", "status", "started_us"),
    Index("ix_calls_duration", "duration_s"),
    Index("ix_calls_retain_until", "retain_until_us"),
    Index("ix_calls_dtmf_started", "has_dtmf", "started_us"),     # revision 0004
    # PostgreSQL only (revision 0004): varchar_pattern_ops and pg_trgm indexes on the
    # number and user columns; SQLite only (revision 0005): the FTS5 trigram table
    # calls_numbers (id, from_number, to_number, from_user, to_user) kept by db.py;
    # neither declared here (dialect-specific)
)

call_legs = Table(
    "call_legs", metadata,
    Column("recording_id", String(200), ForeignKey("calls.id", ondelete="CASCADE"), primary_key=True),
    Column("call_id", String(1024), primary_key=True),
    Index("ix_call_legs_call_id", "call_id"),
)

# -- who may see what, and what they did (revision 0002, callindex/users.py, audit.py)

users = Table(
    "users", metadata,
    Column("name", String(128), primary_key=True),
    Column("role", String(32), nullable=False),          # admin | supervisor | listener | auditor
    Column("numbers", Text, nullable=False),             # JSON list of number patterns
    Column("password_hash", Text, nullable=False),       # argon2id (PHC string)
    Column("created_us", BigInteger, nullable=False),
    Column("disabled", Boolean, nullable=False),
)

#: append-only: each entry carries the SHA-256 of the one before it (hash chain)
audit = Table(
    "audit", metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("at_us", BigInteger, nullable=False),
    Column("actor", String(256), nullable=False),        # user name or certificate CN
    Column("role", String(32), nullable=False),
    Column("action", String(32), nullable=False),        # search | play | download | view | sign-in ...
    Column("recording_id", String(200)),
    Column("address", String(256), nullable=False),      # the client's address
    Column("detail", Text, nullable=False),              # JSON: the query, the file
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Index("ix_audit_at", "at_us"),
    Index("ix_audit_recording", "recording_id"),
)

#: one row: the chain's last sequence number and hash; updating it first in a
#: transaction serialises writers across processes on both databases
audit_head = Table(
    "audit_head", metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)

"""The call index: one row per stored recording, for search.

Storage stays the source of truth: every row is derived from a recording's
call.json (callindex/entry.py), so the index can always be rebuilt from the
recordings alone (callindex/rebuild.py). One schema (callindex/schema.py) for
the embedded default (SQLite) and a cluster (PostgreSQL), versioned with
Alembic migrations (callindex/migrations/); the database in callindex/db.py;
queries in callindex/query.py; the controller's side, which indexes each
recording as it is written and keeps what the database could not take, in
callindex/indexer.py.
"""

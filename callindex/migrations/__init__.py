"""Alembic migrations of the call index (run by callindex.db.CallIndex.migrate)."""

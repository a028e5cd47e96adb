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
    assert diff == []
    ix.migrate()            # again: nothing to do
    ix.close()

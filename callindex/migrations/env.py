"""Alembic environment: always run from callindex.db with a connection in
``config.attributes["connection"]`` (no alembic.ini, no URL here)."""
from __future__ import annotations

from alembic import context

from callindex.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()

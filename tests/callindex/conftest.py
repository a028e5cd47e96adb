from __future__ import annotations

from typing import Iterator

import pytest

from tests.pgserver import PgServer, find_pg_bin


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A real PostgreSQL server on loopback; skips when apt postgresql is absent."""
    bindir = find_pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL not installed (apt postgresql)")
    server = PgServer(bindir).init()
    try:
        yield server
    finally:
        server.close()


_DBS = iter(range(1, 10_000))


@pytest.fixture(params=["sqlite", "postgresql"])
def index_url(request, tmp_path) -> str:
    """An empty index of each kind (a fresh PostgreSQL database per test)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.sqlite'}"
    pg: PgServer = request.getfixturevalue("pg_server")
    name = f"t{next(_DBS)}"
    pg._run(str(pg.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(pg.port), "-U", pg.user, name)
    return f"postgresql://{pg.user}@127.0.0.1:{pg.port}/{name}"

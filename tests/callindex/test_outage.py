"""A recording written while the index database is away is indexed when it
returns (real PostgreSQL, stopped and started by PID), and a newer call.json
kept pending is never overwritten by an older one."""
from __future__ import annotations

import json
import time

import pytest

from callindex.db import open_index
from callindex.indexer import Indexer, IndexingStore
from callindex.query import CallQuery
from storage.local import LocalStore
from tests.callindex.conftest import _DBS
from tests.callindex.test_index import CALLS, prefix


def _wait(cond, timeout=30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def pg_url(pg_server):
    name = f"t{next(_DBS)}"
    pg_server._run(str(pg_server.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(pg_server.port),
                   "-U", pg_server.user, name)
    return f"postgresql://{pg_server.user}@127.0.0.1:{pg_server.port}/{name}"


def test_recordings_written_while_the_database_is_down_are_indexed_when_it_is_back(
        pg_server, pg_url, tmp_path):
    indexer = Indexer(lambda: open_index(pg_url, connect_timeout_s=2), tmp_path / "pending",
                      retry_s=0.2, max_retry_s=0.5)
    store = IndexingStore(LocalStore(tmp_path / "rec", fsync=False), indexer)
    first, second = CALLS[0], CALLS[1]
    store.put(prefix(first), {"call.json": json.dumps(first).encode()})
    assert indexer.indexed == 1
    pg_server.stop()
    try:
        store.put(prefix(second), {"call.json": json.dumps(second).encode()})
        newer = dict(first, late_packets=7)       # late packets rewrite call.json meanwhile
        store.add(prefix(first), {"call.json": json.dumps(newer).encode()})
        assert indexer.pending == 2 and indexer.counters()["index_pending"] == 2
        assert (tmp_path / "rec" / prefix(second) / "call.json").exists()   # the recording is not held up
        time.sleep(1.0)
        assert indexer.pending == 2 and indexer.retries >= 1
    finally:
        pg_server.start()
    assert _wait(lambda: indexer.pending == 0), indexer.counters()
    ix = open_index(pg_url)
    assert {c["id"] for c in ix.search(CallQuery()).calls} == {first["id"], second["id"]}
    # the newer call.json won: rebuilt from storage, the row does not change
    from callindex.rebuild import rebuild
    res = rebuild(LocalStore(tmp_path / "rec"), ix)
    assert res.unchanged == 2 and res.updated == 0
    indexer.close()
    ix.close()


def test_pending_call_json_survives_a_restart(pg_server, pg_url, tmp_path):
    pg_server.stop()
    try:
        indexer = Indexer(lambda: open_index(pg_url, connect_timeout_s=2), tmp_path / "pending",
                          retry_s=60)
        indexer.add(prefix(CALLS[2]), json.dumps(CALLS[2]).encode(), "loc")
        indexer.close(drain=False)
        assert [p.stat().st_mode & 0o777 for p in (tmp_path / "pending").glob("*.json")] == [0o600]
    finally:
        pg_server.start()
    again = Indexer(lambda: open_index(pg_url), tmp_path / "pending", retry_s=0.2)
    again.wake()
    assert _wait(lambda: again.pending == 0)
    assert open_index(pg_url).get(CALLS[2]["id"])["location"] == "loc"
    again.close()

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


def test_erasure_while_the_database_is_away_does_not_come_back(pg_server, pg_url, tmp_path):
    """A recording erased while its call.json waits for the database (another
    controller erased it; or this one through storage) is dropped from the
    pending folder too: when the database returns, nothing of it is indexed."""
    from callindex.audit import AuditTrail
    from callindex.lifecycle import Who, erase
    indexer = Indexer(lambda: open_index(pg_url, connect_timeout_s=2), tmp_path / "pending",
                      retry_s=0.2, max_retry_s=0.5)
    store = IndexingStore(LocalStore(tmp_path / "rec", fsync=False), indexer)
    t = CALLS[0]["started_at"]                     # a real recording id: its folder follows from it
    gone = dict(CALLS[0], id=f"{t[0:4]}{t[5:7]}{t[8:10]}T{t[11:13]}{t[14:16]}{t[17:19]}Z-0123456789ab")
    kept = CALLS[1]
    pg_server.stop()
    try:
        for call in (gone, kept):
            store.put(prefix(call), {"call.json": json.dumps(call).encode()})
        assert indexer.pending == 2 and indexer.has_pending(prefix(gone))
        store.target.delete(prefix(gone))          # storage erased elsewhere: only the copy here
    finally:
        pg_server.start()
    ix = open_index(pg_url)
    indexer.close(drain=False)
    indexer = Indexer(lambda: open_index(pg_url), tmp_path / "pending", retry_s=60)
    store = IndexingStore(LocalStore(tmp_path / "rec", fsync=False), indexer)
    (out,) = erase(store, ix, AuditTrail(ix), Who("ops", "operator"), ids=[gone["id"]], reason="GDPR")
    assert (out.done, out.what) == (True, "erased") and not indexer.has_pending(prefix(gone))
    indexer.wake()
    assert _wait(lambda: indexer.pending == 0)
    assert {c["id"] for c in ix.search(CallQuery()).calls} == {kept["id"]}
    indexer.close()
    ix.close()

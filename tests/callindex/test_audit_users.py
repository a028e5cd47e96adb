"""The audit trail (append-only, hash-chained) and users (argon2, roles) on
SQLite and a real PostgreSQL server."""
from __future__ import annotations

import threading

import pytest
from sqlalchemy import text

from callindex.audit import AuditTrail
from callindex.db import open_index
from callindex.users import UserError, Users


def test_entries_come_back_newest_first_and_the_chain_verifies(index_url):
    ix = open_index(index_url)
    trail = AuditTrail(ix)
    assert trail.verify() == (0, None)
    trail.append("ops1", "operator", "search", address="10.0.0.1:5000", detail={"number": "200"})
    trail.append("ops1", "operator", "download", recording_id="r1", address="10.0.0.1:5000",
                 detail={"file": "audio.wav"})
    got = trail.entries()
    assert [(e.seq, e.action, e.recording_id) for e in got] == [(2, "download", "r1"), (1, "search", None)]
    assert got[1].detail == {"number": "200"} and got[0].prev_hash == got[1].hash
    assert trail.verify() == (2, None)
    assert [e.seq for e in trail.entries(recording_id="r1")] == [2]
    ix.close()


@pytest.mark.parametrize("tamper", [
    "UPDATE audit SET actor = 'someone-else' WHERE seq = 2",
    "DELETE FROM audit WHERE seq = 2",
    "DELETE FROM audit WHERE seq = 3",
    "UPDATE audit SET detail = '{}' WHERE seq = 1",
])
def test_an_entry_changed_behind_spanrecs_back_breaks_the_chain(tmp_path, tamper):
    ix = open_index(f"sqlite:///{tmp_path / 'i.sqlite'}")
    trail = AuditTrail(ix)
    for i in range(3):
        trail.append("u", "admin", "play", recording_id=f"r{i}", detail={"i": i})
    with ix.engine.begin() as conn:
        conn.execute(text(tamper))
    n, broken = trail.verify()
    assert broken is not None


def test_writers_at_once_make_one_chain(index_url):
    ix = open_index(index_url)
    trail = AuditTrail(ix)

    def work(k):
        for i in range(10):
            trail.append(f"w{k}", "operator", "search", detail={"i": i})
    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert trail.verify() == (40, None)
    assert sorted(e.seq for e in trail.entries(limit=100)) == list(range(1, 41))
    ix.close()


def test_users_passwords_and_roles(index_url):
    ix = open_index(index_url)
    users = Users(ix)
    users.add("sup", "supervisor", "correct horse", ["+4930*", "200"])
    users.add("aud", "auditor", "battery staple")
    with pytest.raises(UserError, match="exists"):
        users.add("sup", "admin", "whatever1")
    with pytest.raises(UserError, match="needs --numbers"):
        users.add("lis", "listener", "whatever1")
    with pytest.raises(UserError, match="role"):
        users.add("x", "root", "whatever1")
    with pytest.raises(UserError, match="8 characters"):
        users.add("x", "admin", "short")
    assert users.authenticate("sup", "wrong") is None
    assert users.authenticate("nobody", "correct horse") is None
    sup = users.authenticate("sup", "correct horse")
    assert sup.role == "supervisor" and sup.allowed() == ["+4930*", "200"]
    assert users.authenticate("aud", "battery staple").allowed() == []
    with ix.engine.connect() as conn:
        stored = conn.execute(text("SELECT password_hash FROM users WHERE name = 'sup'")).scalar()
    assert stored.startswith("$argon2id$") and "correct horse" not in stored
    assert users.remove("aud") and users.get("aud") is None
    ix.close()

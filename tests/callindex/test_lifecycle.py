"""Retention, legal hold and erasure over real recordings (`spanrec record
--retention-days`) in a folder and the index on SQLite and PostgreSQL:
expiry with a clock the test controls, a held call surviving expiry and
erasure, erasure leaving nothing in storage, index or outbox, and every
step in the audit trail (issue #15)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from callindex.audit import AuditTrail
from callindex.db import open_index
from callindex.lifecycle import Who, erase, expire, hold, release
from callindex.query import CallQuery, parse_when
from callindex.rebuild import rebuild
from storage.local import LocalStore
from storage.outbox import OutboxStore
from tests.conftest import REPO

SAMPLE = REPO / "samples" / "sample-call.pcap"
WHO = Who("ops-bob", "operator", "127.0.0.1:1")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("life") / "recordings"
    done = subprocess.run([sys.executable, "-m", "cli.main", "record", str(SAMPLE), "--out", str(out),
                           "--no-progress", "-o", "json", "--retention-days", "30"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture
def lab(recorded, tmp_path, index_url):
    out = tmp_path / "recordings"
    shutil.copytree(recorded, out, ignore=shutil.ignore_patterns("index.sqlite*", ".index*"))
    store = LocalStore(out, fsync=False)
    index = open_index(index_url)
    rebuild(store, index)
    calls = {json.loads(p.read_text())["from"]: json.loads(p.read_text()) for p in out.rglob("call.json")}
    yield store, index, AuditTrail(index), calls, out
    index.close()


def test_retention_is_in_call_json_and_the_index(lab):
    store, index, _, calls, _ = lab
    for meta in calls.values():
        r = meta["retention"]
        assert r["days"] == 30 and r["rule"] == "default"
        assert parse_when(r["retain_until"]) - parse_when(meta["started_at"]) == 30 * 86400 * 10**6
        assert index.get(meta["id"])["retain_until"] == r["retain_until"]


def test_expiry_with_a_controlled_clock(lab):
    store, index, trail, calls, out = lab
    (first, second) = sorted(calls.values(), key=lambda m: m["started_at"])
    just_before = parse_when(first["retention"]["retain_until"]) - 1
    assert expire(store, index, trail, WHO, as_of_us=just_before, dry_run=True) == []
    between = parse_when(first["retention"]["retain_until"])
    listed = expire(store, index, trail, WHO, as_of_us=between, dry_run=True)
    assert [(o.recording_id, o.what) for o in listed] == [(first["id"], "would expire")]
    assert index.count() == 2 and len(list(out.rglob("call.json"))) == 2      # a dry run deletes nothing
    done = expire(store, index, trail, WHO)            # now: both are long past 30 days (2024)
    assert sorted(o.recording_id for o in done if o.what == "expired") == sorted([first["id"], second["id"]])
    assert index.count() == 0 and not list(out.rglob("call.json"))
    assert [e.action for e in trail.entries()] == ["expire", "expire"]
    assert trail.verify()[1] is None


def test_a_held_call_survives_expiry_and_erasure(lab):
    store, index, trail, calls, out = lab
    kept = calls["sip:10001@10.1.0.2"]
    other = calls["sip:10000@10.1.0.1"]
    got = hold(store, index, trail, WHO, query=CallQuery(number="10001", since_us=parse_when("2024-01-15"),
                                                      until_us=parse_when("2024-01-16")), reason="case 42")
    assert [(o.recording_id, o.what) for o in got] == [(kept["id"], "held")]
    assert index.get(kept["id"])["held"] is True
    done = {o.recording_id: o.what for o in expire(store, index, trail, WHO)}
    assert done == {other["id"]: "expired"}
    refused = erase(store, index, trail, WHO, number="10001", reason="GDPR request")
    assert [(o.recording_id, o.what, o.done) for o in refused] == [(kept["id"], "held", False)]
    assert index.get(kept["id"]) is not None and list(out.rglob("call.json"))
    # the hold is in storage: a rebuilt index still knows it, and a stale index cannot delete
    index.set_held(kept["id"], False)
    assert [o.what for o in erase(store, index, trail, WHO, ids=[kept["id"]])] == ["held"]
    assert index.get(kept["id"])["held"] is True
    # released: now it goes
    assert [o.what for o in release(store, index, trail, WHO, ids=[kept["id"]], reason="case closed")] == ["released"]
    assert [o.what for o in erase(store, index, trail, WHO, number="10001")] == ["erased"]
    assert index.count() == 0 and not list(out.rglob("*.json"))
    actions = [e.action for e in reversed(trail.entries())]
    assert actions == ["hold-add", "expire", "hold-remove", "erase"]


def test_erasure_leaves_nothing_in_storage_index_or_outbox(lab, tmp_path):
    store, index, trail, calls, out = lab
    meta = calls["sip:10000@10.1.0.1"]
    row = index.get(meta["id"])
    outbox = OutboxStore(store, tmp_path / "outbox")        # not started: its entries stay pending
    outbox.add(row["prefix"], {"late-1.pcap": b"\xd4\xc3\xb2\xa1late"})
    assert any((tmp_path / "outbox").rglob("late-1.pcap"))
    got = erase(outbox, index, trail, WHO, number="10000", reason="GDPR")
    assert [(o.recording_id, o.what) for o in got] == [(meta["id"], "erased")]
    assert not any((tmp_path / "outbox").rglob("*.pcap"))
    assert not (out / row["prefix"]).exists() and index.get(meta["id"]) is None
    assert index.search(CallQuery(number="10000")).total == 0
    e = trail.entries(limit=1)[0]
    assert (e.action, e.recording_id, e.detail["reason"]) == ("erase", meta["id"], "GDPR")


def test_erasure_does_not_wait_for_the_index(lab, tmp_path):
    """An id the index does not know (its database was away when the call was
    stored; or another shard already erased it and this controller's outbox
    still holds a copy) is erased where its id places it, audited; an id found
    nowhere is 'not found' and leaves no audit entry."""
    store, index, trail, calls, out = lab
    meta = calls["sip:10001@10.1.0.2"]
    prefix = index.get(meta["id"])["prefix"]
    index.remove(meta["id"])                                 # the index never had it
    before = len(trail.entries(limit=1000))
    (got,) = erase(store, index, trail, WHO, ids=[meta["id"]], reason="GDPR")
    assert (got.recording_id, got.done, got.what) == (meta["id"], True, "erased")
    assert not (out / prefix).exists()
    assert trail.entries(limit=1)[0].recording_id == meta["id"]
    # only a copy in the outbox (storage and index already without it)
    outbox = OutboxStore(store, tmp_path / "outbox")         # not started: its entries stay pending
    outbox.put(prefix, {"call.json": json.dumps(meta).encode(), "audio.wav": b"RIFF"})
    assert any((tmp_path / "outbox").rglob("audio.wav")) and not (out / prefix).exists()
    (got,) = erase(outbox, index, trail, WHO, ids=[meta["id"]], reason="GDPR")
    assert got.done and got.what == "erased" and not any((tmp_path / "outbox").rglob("audio.wav"))
    n = len(trail.entries(limit=1000))
    assert n == before + 2
    (got,) = erase(outbox, index, trail, WHO, ids=[meta["id"]], reason="GDPR")
    assert (got.done, got.what) == (False, "not found") and len(trail.entries(limit=1000)) == n


def test_spanrec_expire_command(recorded, tmp_path):
    """`spanrec expire --storage --index [--dry-run [--as-of]]` on a copy of the recordings."""
    out = tmp_path / "recordings"
    shutil.copytree(recorded, out)
    url = f"sqlite:///{out / 'index.sqlite'}"

    def run(*args):
        return subprocess.run([sys.executable, "-m", "cli.main", "expire", "--storage", str(out), "--index", url,
                               "-o", "json", *args], cwd=REPO, capture_output=True, text=True, timeout=120)
    early = run("--dry-run", "--as-of", "2024-01-20")
    assert early.returncode == 0 and json.loads(early.stdout) == []
    later = run("--dry-run", "--as-of", "2024-03-01")
    assert later.returncode == 0 and [o["what"] for o in json.loads(later.stdout)] == ["would expire"] * 2
    assert len(list(out.rglob("call.json"))) == 2
    assert run("--as-of", "2024-03-01").returncode == 2              # --as-of only with --dry-run
    gone = run()
    assert gone.returncode == 0 and [o["what"] for o in json.loads(gone.stdout)] == ["expired"] * 2
    assert not list(out.rglob("call.json"))

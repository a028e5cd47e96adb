"""`spanrec record` indexes what it records: on the public captures, every
recording is in the index with the caller tshark reads from the INVITE, a
search by that caller finds it, and a rebuild from the recordings alone gives
the same index."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest

from callindex.db import open_index
from callindex.query import CallQuery
from tests.conftest import CALL_CAPTURES, REPO, capture
from tests.protocols import _tshark

pytestmark = pytest.mark.slow
FILES = ["sip-rtp-g711.pcap", "SIP_DTMF2.cap", "aaa.pcap", "nb6-telephone.pcap", "sip_ipv4_tcp.pcap",
         "SIP-RTP-Normal_Call_two_parties.pcap"]
assert set(FILES) <= set(CALL_CAPTURES)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    paths = [capture(f) for f in FILES]
    out = tmp_path_factory.mktemp("rec") / "recordings"
    done = subprocess.run([sys.executable, "-m", "cli.main", "record", *map(str, paths), "--out", str(out),
                           "--no-progress", "-o", "json"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return paths, out, json.loads(done.stdout)


def _invite_callers(paths: list[Path]) -> dict[str, str]:
    """Call-ID -> the From user of its first INVITE, as tshark reads it."""
    out: dict[str, str] = {}
    for p in paths:
        for row in _tshark.table(p):
            if _tshark.first(row, "sip.Method") == "INVITE":
                cid = _tshark.first(row, "sip.Call-ID")
                user = _tshark.first(row, "sip.from.user")
                if cid and cid not in out:
                    out[cid] = unquote(user or "").lower()
    return out


def test_every_recording_is_indexed_with_its_caller(recorded):
    paths, out, printed = recorded
    index = open_index(f"sqlite:///{out / 'index.sqlite'}")
    callers = _invite_callers(paths)
    page = index.search(CallQuery(limit=1000))
    assert page.total == len(printed) > 0
    assert {c["id"] for c in page.calls} == {c["id"] for c in printed}
    checked = 0
    for row in page.calls:
        seen = [callers[c] for c in row["call_ids"] if c in callers]
        if not seen:
            continue          # a call picked up without its INVITE in the capture
        from callindex.numbers import uri_user
        assert uri_user(row["from"]).lower() in seen, row
        key = row["from_number"] or uri_user(row["from"]).lower()
        if key:
            found = index.search(CallQuery(from_number=key, match="exact", limit=1000)).calls
            assert row["id"] in {c["id"] for c in found}
        checked += 1
    assert checked >= len(FILES) - 1
    index.close()


def test_rebuild_from_storage_equals_the_live_index(recorded, tmp_path):
    _, out, _ = recorded
    live = open_index(f"sqlite:///{out / 'index.sqlite'}")
    fresh_url = f"sqlite:///{tmp_path / 'rebuilt.sqlite'}"
    done = subprocess.run([sys.executable, "-m", "cli.main", "index", "rebuild", "--storage", str(out),
                           "--index", fresh_url, "-o", "json"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["added"] == live.count() and not report["failed"]
    fresh = open_index(fresh_url)
    q = CallQuery(limit=1000)
    assert fresh.search(q) == live.search(q)
    # a second rebuild over the same index writes nothing
    again = subprocess.run([sys.executable, "-m", "cli.main", "index", "rebuild", "--storage", str(out),
                            "--index", fresh_url, "-o", "json"], cwd=REPO, capture_output=True, text=True,
                           timeout=300)
    assert json.loads(again.stdout)["unchanged"] == live.count()
    live.close()
    fresh.close()


def test_the_index_file_is_private(recorded):
    _, out, _ = recorded
    assert (out / "index.sqlite").stat().st_mode & 0o077 == 0


def test_shards_write_to_one_postgresql_index(pg_server, tmp_path):
    """`spanrec record --shards 2 --index postgresql://...`: both shard processes
    index into the one database; every recording is there once."""
    from tests.callindex.conftest import _DBS
    name = f"t{next(_DBS)}"
    pg_server._run(str(pg_server.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(pg_server.port),
                   "-U", pg_server.user, name)
    url = f"postgresql://{pg_server.user}@127.0.0.1:{pg_server.port}/{name}"
    paths = [REPO / "samples" / "sample-call.pcap", capture("sip-rtp-g711.pcap")]
    out = tmp_path / "recordings"
    done = subprocess.run([sys.executable, "-m", "cli.main", "record", *map(str, paths), "--out", str(out),
                           "--no-progress", "-o", "json", "--shards", "2", "--index", url],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    stored = {p.parent.name for p in out.rglob("call.json")}
    index = open_index(url)
    page = index.search(CallQuery(limit=1000))
    assert {c["id"] for c in page.calls} == stored and page.total == len(stored) >= 3
    assert not (out / "index.sqlite").exists()          # --index given: no default SQLite file
    index.close()

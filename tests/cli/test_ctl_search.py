"""`spanrecctl search` and `spanrecctl audit` against a real mTLS controller
with a call index: who may search, who may read the trail, an operator
certificate limited to number patterns, and every search and download in the
trail (issue #14)."""
from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest

from tests.protocols import _tshark
from tests.transport.procs import REPO, SPANRECCTL, Controller, identity, make_certs, run

SAMPLE = REPO / "samples" / "sample-call.pcap"


def _callers() -> dict[str, str]:
    """Call-ID -> From user of its INVITE, as tshark reads the sample."""
    out = {}
    for row in _tshark.table(SAMPLE):
        if _tshark.first(row, "sip.Method") == "INVITE":
            out.setdefault(_tshark.first(row, "sip.Call-ID"), _tshark.first(row, "sip.from.user"))
    return out


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    callers = _callers()
    assert len(set(callers.values())) >= 2
    one = sorted(set(callers.values()))[0]
    d = tmp_path_factory.mktemp("pki")
    make_certs(d, "ca")
    make_certs(d, "server", "controller.local", "--san", "127.0.0.1")
    make_certs(d, "client", "branch-1", "--site", "lab")
    make_certs(d, "client", "ops-bob", "--role", "operator")
    make_certs(d, "client", "ops-limited", "--role", "operator", "--numbers", one)
    make_certs(d, "client", "audit-carol", "--role", "auditor")
    work = tmp_path_factory.mktemp("ctl-search")
    c = Controller(work, identity(d, "controller.local"), probe=identity(d, "ops-bob"),
                   extra=("--index", f"sqlite:///{work / 'index.sqlite'}"))
    try:
        proc = c.replay(SAMPLE, "branch-1", identity(d, "branch-1"), workdir=work)
        assert proc.returncode == 0, proc.stderr
        c.wait_recordings(len(callers))
        deadline = time.monotonic() + 30
        while len(_search(c, identity(d, "ops-bob"))["calls"]) < len(callers):
            assert time.monotonic() < deadline, c.log.read_text()
            time.sleep(0.3)
        yield SimpleNamespace(c=c, pki=d, callers=callers, one=one, work=work)
    finally:
        assert c.stop() == 0, c.log.read_text()


def ctl(lab, who: str, *args: str):
    return run(SPANRECCTL, *args[:1], "--controller", lab.c.target, *identity(lab.pki, who).flags(),
               *args[1:], timeout=60)


def _search(c, ident, *args):
    proc = run(SPANRECCTL, "search", "--controller", c.target, *ident.flags(), "-o", "json", *args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_an_operator_finds_every_call_by_its_caller(lab):
    page = _search(lab.c, identity(lab.pki, "ops-bob"))
    stored = {p.parent.name for p in lab.c.storage.rglob("call.json")}
    assert {c["id"] for c in page["calls"]} == stored and page["total"] == len(stored)
    for cid, user in lab.callers.items():
        found = _search(lab.c, identity(lab.pki, "ops-bob"), "--from-number", user, "--match", "exact")
        assert [c["call_ids"] for c in found["calls"]] == [[cid]]


def test_a_limited_operator_sees_only_its_numbers(lab):
    ident = identity(lab.pki, "ops-limited")
    page = _search(lab.c, ident)
    assert page["calls"] and all(lab.one in (c["from"] + c["to"]) for c in page["calls"])
    mine = {c["id"] for c in page["calls"]}
    every = {c["id"] for c in _search(lab.c, identity(lab.pki, "ops-bob"))["calls"]}
    others = sorted(every - mine)
    assert others
    listed = json.loads(ctl(lab, "ops-limited", "calls", "-o", "json").stdout)
    assert {c["id"] for c in listed} == mine
    refused = ctl(lab, "ops-limited", "get", others[0], "--out", str(lab.work / "dl-limited"))
    assert refused.returncode == 1 and "not a call of this certificate's numbers" in refused.stderr
    ok = ctl(lab, "ops-limited", "get", sorted(mine)[0], "--out", str(lab.work / "dl-limited"))
    assert ok.returncode == 0, ok.stderr


def test_roles_search_for_operators_the_trail_for_auditors(lab):
    no = ctl(lab, "audit-carol", "search")
    assert no.returncode == 1 and "refused" in no.stderr
    no = ctl(lab, "ops-bob", "audit")
    assert no.returncode == 1 and "refused" in no.stderr
    no = ctl(lab, "branch-1", "search")
    assert no.returncode == 1


def test_every_search_and_download_is_in_the_trail(lab):
    rid = sorted(p.parent.name for p in lab.c.storage.rglob("call.json"))[0]
    _search(lab.c, identity(lab.pki, "ops-bob"), "--number", "20001")
    got = ctl(lab, "ops-bob", "get", rid, "--out", str(lab.work / "dl"))
    assert got.returncode == 0, got.stderr
    proc = ctl(lab, "audit-carol", "audit", "-o", "json", "--limit", "1000")
    assert proc.returncode == 0, proc.stderr
    trail = json.loads(proc.stdout)
    assert trail["verified"] is True
    entries = trail["entries"]
    searches = [e for e in entries if e["action"] == "search" and e["actor"] == "ops-bob"]
    assert any(e["detail"].get("number") == "20001" for e in searches)
    downloads = {e["detail"]["file"] for e in entries
                 if e["action"] == "download" and e["recording_id"] == rid and e["actor"] == "ops-bob"}
    assert downloads == {p.name for p in (lab.work / "dl" / rid).iterdir()}
    assert all(e["address"].startswith("ipv4:127.0.0.1:") for e in entries if e["actor"] == "ops-bob")
    assert all(e["role"] == "operator" for e in entries if e["actor"] == "ops-bob")


def test_an_altered_trail_fails_audit(lab):
    import sqlite3
    db = sqlite3.connect(lab.work / "index.sqlite")
    db.execute("UPDATE audit SET actor = 'nobody' WHERE seq = 1")
    db.commit()
    db.close()
    proc = ctl(lab, "audit-carol", "audit")
    assert proc.returncode == 1 and "hash chain breaks at entry 1" in proc.stderr


def test_a_controller_without_a_key_says_once_that_recordings_are_unencrypted(lab):
    log = lab.c.log.read_text()
    assert log.count("recordings are stored unencrypted") == 1

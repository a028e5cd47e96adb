"""The call index on SQLite and on a real PostgreSQL server: indexing,
idempotence, every search filter, role patterns, the same answers from both.

The call.json documents are written here by hand (the fields call.json
documents in docs/ARCHITECTURE.md), so what a search must find is known
independently of spanrec's own output.
"""
from __future__ import annotations

import json

import pytest

from callindex.db import IndexUrlError, open_index
from callindex.query import CallQuery, QueryError, parse_when


def doc(rid, start, frm, to, *, status="answered", dur=60.0, call_ids=None, codec="PCMA",
        mos=(4.4, 4.3), dtmf=False, hold=False, sensors=("s1",), sites=("berlin",), lost=(0, 0)):
    t0 = parse_when(start)
    iso = lambda us: None if us is None else (  # noqa: E731
        __import__("datetime").datetime.fromtimestamp(us / 1e6, __import__("datetime").timezone.utc)
        .isoformat().replace("+00:00", "Z"))
    answered = t0 + 2_000_000 if status == "answered" else None
    streams = [{"kind": "audio", "codec": codec, "direction": d, "packets": 1000, "lost": lo,
                "mos": m, "used_for_audio": True} for d, m, lo in zip(("caller", "callee"), mos, lost)]
    return {"id": rid, "call_ids": call_ids or [f"{rid}@host"], "from": frm, "to": to, "status": status,
            "final_response": 200 if status == "answered" else 486, "end_reason": "bye",
            "started_at": iso(t0), "answered_at": iso(answered), "ended_at": iso(t0 + int(dur * 1e6)),
            "sensors": list(sensors), "sites": list(sites), "streams": streams,
            "dtmf": [{"digit": "1"}] if dtmf else [], "hold": [{"start": 1}] if hold else [],
            "audio": {"file": "audio.wav"}, "pcap": "call.pcap", "recorded": True, "warnings": []}


CALLS = [
    doc("r1", "2024-01-15T10:00:00Z", "sip:+4930123456@a", "sip:200@pbx", dur=30, dtmf=True),
    doc("r2", "2024-01-15T11:00:00Z", "sip:201@pbx", "tel:+49-30-999", status="cancelled", dur=5,
        codec="PCMU", mos=(None, None)),
    doc("r3", "2024-01-16T09:00:00Z", '"Alice" <sip:alice@example.com>', "sip:0049301234@gw", dur=600,
        hold=True, mos=(2.1, 4.0), lost=(50, 0), call_ids=["leg-a@x", "leg-b@y"], sites=("paris",)),
    doc("r4", "2024-01-17T09:00:00Z", "sip:30123@pbx", "sip:+4930123456@a", dur=120, codec="G722",
        sensors=("s2",)),
]


def prefix(d):
    s = d["started_at"]
    return f"{s[0:4]}/{s[5:7]}/{s[8:10]}/{d['id']}"


@pytest.fixture
def index(index_url):
    ix = open_index(index_url)
    for d in CALLS:
        assert ix.add(prefix(d), json.dumps(d).encode(), f"file:///rec/{prefix(d)}") == "added"
    yield ix
    ix.close()


def ids(ix, **kw):
    return [c["id"] for c in ix.search(CallQuery(sort="started", **kw)).calls]


def test_indexing_the_same_call_json_twice_changes_nothing(index):
    d = CALLS[0]
    before = index.get("r1")
    assert index.add(prefix(d), json.dumps(d).encode(), f"file:///rec/{prefix(d)}") == "unchanged"
    assert index.get("r1") == before and index.count() == 4
    changed = dict(d, late_packets=3)
    assert index.add(prefix(d), json.dumps(changed).encode(), None) == "updated"
    assert index.count() == 4 and index.get("r1")["location"] == f"file:///rec/{prefix(d)}"


@pytest.mark.parametrize("query,expected", [
    (dict(number="4930123456"), ["r1", "r4"]),            # either party, substring
    (dict(number="+4930123456", match="exact"), ["r1", "r4"]),
    (dict(from_number="+4930123456", match="exact"), ["r1"]),
    (dict(to_number="+4930123456"), ["r4"]),
    (dict(number="030-123", match="substring"), []),     # separators ignored: 030123 is in none
    (dict(number="0049", match="prefix"), ["r3"]),
    (dict(number="30-999"), ["r2"]),                     # tel: with separators is stored as +4930999
    (dict(number="alice"), ["r3"]),                      # a name, not a number
    (dict(number="ALI", match="prefix"), ["r3"]),
    (dict(number="sip:alice@example.com", match="exact"), []),       # the stored URI has a display name
    (dict(number="alice@EXAMPLE.com"), ["r3"]),                      # a URI: substring, any case
    (dict(to_number="tel:+49-30-999", match="exact"), ["r2"]),
    (dict(from_number="sip:201@", match="prefix"), ["r2"]),
    (dict(call_id="leg-b@y"), ["r3"]),
    (dict(status="cancelled"), ["r2"]),
    (dict(since_us=parse_when("2024-01-16"), until_us=parse_when("2024-01-17")), ["r3"]),
    (dict(min_duration_s=100), ["r3", "r4"]),
    (dict(max_duration_s=30), ["r1", "r2"]),
    (dict(site="paris"), ["r3"]),
    (dict(sensor="s2"), ["r4"]),
    (dict(codec="pcmu"), ["r2"]),
    (dict(codec="G722"), ["r4"]),
    (dict(mos_below=3.0), ["r3"]),
    (dict(has_dtmf=True), ["r1"]),
    (dict(has_hold=True), ["r3"]),
    (dict(has_hold=False, has_dtmf=False), ["r2", "r4"]),
    (dict(allowed=["+4930*"]), ["r1", "r2", "r4"]),      # a supervisor's group (tel:+49-30-999 too)
    (dict(allowed=["20?"]), ["r1", "r2"]),
    (dict(allowed=[]), []),                              # a role with no numbers sees nothing
    (dict(allowed=["+4930*"], number="200"), ["r1"]),
])
def test_search_filters(index, query, expected):
    assert ids(index, **query) == expected


def test_sort_pagination_and_total(index):
    page = index.search(CallQuery(sort="-duration", limit=2))
    assert [c["id"] for c in page.calls] == ["r3", "r4"] and page.total == 4
    page = index.search(CallQuery(sort="-duration", limit=2, offset=2))
    assert [c["id"] for c in page.calls] == ["r1", "r2"]
    r3 = index.get("r3")
    assert r3["call_ids"] == ["leg-a@x", "leg-b@y"] and r3["loss_caller"] == pytest.approx(50 / 1050)
    assert r3["mos_caller"] == 2.1 and r3["duration_s"] == 600 and r3["from_number"] is None


def test_remove(index):
    assert ids(index, number="30999") == ["r2"]
    assert index.remove("r2") and not index.remove("r2")
    assert index.count() == 3 and index.get("r2") is None
    assert ids(index, number="30999") == []          # the substring table follows (SQLite)


def test_a_changed_number_is_found_by_its_new_digits_only(index):
    d = dict(CALLS[3], **{"from": "sip:777888@pbx"})
    assert index.add(prefix(d), json.dumps(d).encode(), None) == "updated"
    assert ids(index, number="7788") == ["r4"] and ids(index, from_number="30123", match="exact") == []


def test_both_backends_answer_alike(tmp_path, pg_server):
    """The same documents and queries on SQLite and PostgreSQL: the same rows."""
    from tests.callindex.conftest import _DBS
    name = f"t{next(_DBS)}"
    pg_server._run(str(pg_server.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(pg_server.port),
                   "-U", pg_server.user, name)
    a = open_index(f"sqlite:///{tmp_path / 'a.sqlite'}")
    b = open_index(f"postgresql://{pg_server.user}@127.0.0.1:{pg_server.port}/{name}")
    for ix in (a, b):
        for d in CALLS:
            ix.add(prefix(d), json.dumps(d).encode(), "loc")
    for q in (CallQuery(), CallQuery(number="30"), CallQuery(sort="mos"), CallQuery(sort="-from"),
              CallQuery(allowed=["*1*"]), CallQuery(number="a", match="prefix")):
        assert a.search(q) == b.search(q)


@pytest.mark.parametrize("url,why", [
    ("postgresql://u:secret@h/db", "no password in the URL"),
    ("mysql://u@h/db", "sqlite:///PATH or postgresql"),
    ("sqlite://", "needs a file"),
    ("not a url", "expected sqlite"),
])
def test_bad_urls_say_why(url, why):
    with pytest.raises(IndexUrlError, match=why):
        open_index(url)


@pytest.mark.parametrize("kw,why", [
    (dict(sort="size"), "sort"), (dict(limit=0), "limit"), (dict(match="regex"), "match"),
    (dict(number="  "), "empty"),
])
def test_bad_queries_say_why(kw, why):
    with pytest.raises(QueryError, match=why):
        CallQuery(**kw)
    with pytest.raises(QueryError, match="ISO 8601"):
        parse_when("yesterday")

"""Member records and controller choice, without etcd."""
from __future__ import annotations

import json

import pytest

from registry.members import MemberRecord, config_key, members_prefix, normalize_prefix
from registry.watch import choose_controller


def test_record_json_round_trip() -> None:
    rec = MemberRecord(id="s1", role="sensor", site="paris", version="0.1.0", interfaces=["eth1", "eth2"],
                       started_at="2026-11-26T15:04:05Z")
    data = json.loads(rec.to_json())
    assert data == {"id": "s1", "site": "paris", "role": "sensor", "version": "0.1.0", "address": "",
                    "interfaces": ["eth1", "eth2"], "started_at": "2026-11-26T15:04:05Z"}
    assert MemberRecord.from_json(rec.to_json()) == rec
    live = rec.with_live({"captured": 7})
    again = MemberRecord.from_json(live.to_json())
    assert again.live == {"captured": 7} and again.updated_at.endswith("Z")
    # unknown fields from newer members are ignored
    assert MemberRecord.from_json(json.dumps({**data, "future": 1})) == rec


def test_started_at_is_iso_utc() -> None:
    rec = MemberRecord(id="c1", role="controller")
    assert len(rec.started_at) == 20 and rec.started_at[10] == "T" and rec.started_at.endswith("Z")


@pytest.mark.parametrize("bad", [b"[]", b"not json", b'{"role": "sensor"}', b'{"id": "x", "role": "printer"}'])
def test_bad_records_raise_value_error(bad: bytes) -> None:
    with pytest.raises(ValueError):
        MemberRecord.from_json(bad)


@pytest.mark.parametrize("bad_id", ["", "a/b", "a b"])
def test_bad_ids(bad_id: str) -> None:
    with pytest.raises(ValueError):
        MemberRecord(id=bad_id, role="sensor")


def test_keys() -> None:
    assert normalize_prefix("spanrec") == "/spanrec/" == normalize_prefix("/spanrec/")
    assert MemberRecord(id="s1", role="sensor").key("/spanrec") == "/spanrec/members/sensor/s1"
    assert members_prefix("/x/", "controller") == "/x/members/controller/"
    assert config_key("/spanrec/", "sensor") == "/spanrec/config/sensor"
    assert config_key("/spanrec/", "/other/key") == "/other/key"


def test_choose_controller_newest_with_address() -> None:
    old = MemberRecord(id="a", role="controller", address="10.0.0.1:1", started_at="2026-01-01T00:00:00Z")
    new = MemberRecord(id="b", role="controller", address="10.0.0.2:1", started_at="2026-01-02T00:00:00Z")
    blank = MemberRecord(id="c", role="controller", address="", started_at="2027-01-01T00:00:00Z")
    assert choose_controller({"a": old, "b": new, "c": blank}) == "10.0.0.2:1"
    assert choose_controller({"c": blank}) is None
    assert choose_controller({}) is None

"""The ring from etcd (issue #12, registry/shards.py): membership rules (grace period,
leaving, drained), records validated, a real etcd watch, the shard's own identity
following it, and the sensor's router keeping calls in progress on their shard."""
from __future__ import annotations

import json

import pytest

from controller.ingest.shard import ShardIdentity
from registry import MemberRecord, Registry
from registry.ring import ACTIVE, LEAVING, Ring, Shard, ShardListError, parse_members
from registry.shards import ShardMembership, ShardRecord, shard_key
from sensor.route import ShardRouter
from tests.registry.conftest import put, wait_for


def rec(sid: str, state: str = ACTIVE, drained: bool = False, port: int = 7600) -> ShardRecord:
    return ShardRecord(sid, f"127.0.0.1:{port}", state, sid, "0.1.0", drained)


def states(m: ShardMembership, now: float) -> dict[str, str]:
    return {s.shard_id: s.state for s in m.shards(now)}


def test_parse_members_shared() -> None:
    assert parse_members("a=h:1, h2:2") == [Shard("a", "h:1"), Shard("h2:2", "h2:2")]
    for bad, why in (("a=h", "expected HOST:PORT"), ("a=h:1,a=h:2", "given twice"), ("a=h:1,", "empty")):
        with pytest.raises(ShardListError, match=why):
            parse_members(bad)


def test_vanished_shard_kept_for_grace_then_removed() -> None:
    m = ShardMembership(grace_s=300)
    m.snapshot({"a": rec("a"), "b": rec("b")}, now=0)
    v = m.version
    m.delete("b", now=10)                        # lease expired: killed
    assert m.version > v
    assert states(m, 10) == {"a": ACTIVE, "b": LEAVING}     # no new call, calls in progress stay
    assert states(m, 309) == {"a": ACTIVE, "b": LEAVING}
    m.put(rec("b"), now=200)                     # back (same id) within the grace period
    assert states(m, 400) == {"a": ACTIVE, "b": ACTIVE}
    m.delete("b", now=400)
    assert states(m, 699) == {"a": ACTIVE, "b": LEAVING}
    v = m.version
    assert states(m, 700) == {"a": ACTIVE}       # gone for good: removed, counted
    assert m.version > v and m.expired == 1


def test_drained_shard_removed_at_once_and_leaving_state() -> None:
    m = ShardMembership(grace_s=300)
    m.snapshot({"a": rec("a"), "b": rec("b")}, now=0)
    m.put(rec("b", LEAVING), now=1)
    assert states(m, 1) == {"a": ACTIVE, "b": LEAVING}
    m.put(rec("b", LEAVING, drained=True), now=2)
    m.delete("b", now=2)
    assert states(m, 2) == {"a": ACTIVE} and m.drained == 1
    # a snapshot after an etcd outage: what is missing is treated like a delete
    m.snapshot({}, now=3)
    assert states(m, 3) == {"a": LEAVING}


def test_record_validated() -> None:
    good = rec("A-0").to_json()
    assert ShardRecord.from_json(good) == rec("A-0")
    for bad in ({"shard_id": "x", "address": "nohostport", "state": "active"},
                {"shard_id": "x", "address": "h:1", "state": "gone"},
                {"shard_id": "x y", "address": "h:1", "state": "active"},
                {"shard_id": "x", "address": "h:1", "state": "active", "drained": "yes"}):
        with pytest.raises(ValueError):
            ShardRecord.from_json(json.dumps(bad))


def test_identity_follows_membership_and_refuses_retriably() -> None:
    shards = [[Shard("A-0", "h:1")], 0]

    def source():
        return shards[1], shards[0]
    ident = ShardIdentity("A-0", Ring([Shard("A-0", "h:1")]))
    ident.follow(source)
    assert ident.hello_refusal(["A-0"]) is None
    shards[:] = [[Shard("A-0", "h:1"), Shard("B-0", "h:2")], 1]
    reason = ident.hello_refusal(["A-0"])
    assert reason and "changing" in reason and ident.refusal_retriable(["A-0"])
    assert ident.hello_refusal(["B-0", "A-0"]) is None
    assert not ident.refusal_retriable([])       # a sensor with no ring: a configuration error
    # our own record not (yet) seen: still in our ring
    shards[:] = [[Shard("B-0", "h:2")], 2]
    assert ident.ring_ids == ["A-0", "B-0"]


def test_router_keeps_calls_in_progress_on_their_shard() -> None:
    ring = Ring([Shard("a", "h:1"), Shard("b", "h:2")])
    router = ShardRouter(ring)
    keys = [f"call-{i}" for i in range(200)]
    before = {k: ring.shards[ring.owner(k)].shard_id for k in keys}
    router.update_ring([Shard("a", "h:1"), Shard("b", "h:2"), Shard("c", "h:3")])   # scale up
    after = {k: ring.shards[ring.owner(k)].shard_id for k in keys}
    assert after == before                      # cached owners stay
    fresh = [f"new-{i}" for i in range(300)]
    assert {ring.shards[ring.owner(k)].shard_id for k in fresh} == {"a", "b", "c"}
    router.update_ring([Shard("a", "h:1"), Shard("b", "h:2", LEAVING), Shard("c", "h:3")])
    assert all(ring.shards[ring.owner(k)].shard_id == v for k, v in before.items())
    assert "b" not in {ring.shards[ring.owner(f"later-{i}")].shard_id for i in range(300)}
    router.update_ring([Shard("a", "h:1"), Shard("c", "h:3")])       # b gone: its keys move
    moved = {k: ring.shards[ring.owner(k)].shard_id for k, v in before.items() if v == "b"}
    assert moved and set(moved.values()) <= {"a", "c"}
    assert len(router.counters.routed) == 2


def test_registered_records_watched_in_etcd(etcd_server) -> None:
    """A shard's record on its member lease; leaving, drained + delete; a bad record ignored;
    the lease expiring leaves the shard in its grace period."""
    ep = etcd_server.endpoint
    viewer = Registry([ep], "/t/")
    watch = viewer.shards(grace_s=60)
    viewer.start(wait=5)
    shard = Registry([ep], "/t/", MemberRecord(id="A-0", role="controller", address="127.0.0.1:7600"),
                     ttl=2)
    key = shard_key("/t/", "A-0")
    shard.put_record(key, rec("A-0").to_json())
    shard.start(wait=5)
    put(ep, "/t/shards/bad", b'{"shard_id": "bad", "address": "x", "state": "active"}')
    try:
        assert wait_for(lambda: [s.shard_id for s in watch.current()[1]] == ["A-0"], 5)
        assert wait_for(lambda: watch.refused == 1, 5)
        shard.put_record(key, rec("A-0", LEAVING).to_json()).result(5)
        assert wait_for(lambda: watch.current()[1][0].state == LEAVING, 5)
        shard.put_record(key, rec("A-0", LEAVING, drained=True).to_json())
        shard.put_record(key, None).result(5)
        assert wait_for(lambda: watch.current()[1] == [], 5)      # drained: removed at once
        shard.put_record(key, rec("A-0").to_json()).result(5)
        assert wait_for(lambda: watch.current()[1] == [Shard("A-0", "127.0.0.1:7600")], 5)
        shard.stop()                                 # lease revoked: not a drain
        assert wait_for(lambda: watch.current()[1] == [Shard("A-0", "127.0.0.1:7600", LEAVING)], 5)
    finally:
        shard.stop()
        viewer.stop()


def test_removed_shard_unacked_batches_go_to_the_new_owners() -> None:
    """A shard removed from the ring for good (grace period over) had batches it
    never acknowledged: they are routed again over the shards left, nothing lost."""
    from scripts.gencalls import frames as gen_frames
    from sensor.pipeline import ShardedSender
    from sensor.sender import Sender

    shards = [Shard("a", "127.0.0.1:1"), Shard("b", "127.0.0.1:2")]
    state = {"version": 1, "shards": shards}
    router = ShardRouter(Ring(list(shards)))
    made: list[Sender] = []

    def make_sender(shard):
        s = Sender(shard.address, "s1", mode="live")
        made.append(s)
        return s, 0

    senders = [Sender(s.address, "s1", mode="live") for s in router.ring.shards]   # never started
    fan = ShardedSender(senders, router, [0, 0], membership=lambda: (state["version"], state["shards"]),
                        make_sender=make_sender)
    frames = list(gen_frames(calls=6, duration=1.0, concurrent=6, seed=4))
    fan.submit(1, frames)
    a, b = fan.by_id["a"], fan.by_id["b"]
    on_b = sum(p.packets for p in b.outbox.after(0, 10_000))
    assert on_b and sum(p.packets for p in a.outbox.after(0, 10_000)) + on_b == len(frames)
    state.update(version=2, shards=[shards[0]])          # b gone for good
    assert fan.sync()
    assert fan.rerouted == on_b
    assert sum(p.packets for p in a.outbox.after(0, 10_000)) == len(frames)    # a holds everything
    fan.stop()

"""Call ownership by rendezvous hashing (registry/ring.py): balanced, the same
everywhere, and a membership change moves only what it must."""
from __future__ import annotations

from collections import Counter

import pytest

from registry.ring import LEAVING, Ring, Shard

KEYS = [f"{i:08x}-call@10.0.{i % 251}.{i % 13}" for i in range(100_000)]


def _ring(n: int, **kw) -> Ring:
    return Ring([Shard(f"ctl-{i}", f"10.0.0.{i}:50051") for i in range(n)], **kw)


@pytest.mark.parametrize("n", [2, 4, 8, 32])
def test_balance_within_ten_percent(n: int) -> None:
    ring = _ring(n)
    counts = Counter(ring.owner(k) for k in KEYS)
    mean = len(KEYS) / n
    assert len(counts) == n
    assert max(abs(c - mean) / mean for c in counts.values()) < 0.10, counts


def test_same_owner_everywhere_whatever_the_list_order() -> None:
    a = _ring(8)
    b = Ring(list(reversed(a.shards)))
    assert all(a.shards[a.owner(k)].shard_id == b.shards[b.owner(k)].shard_id for k in KEYS[:5000])


def test_adding_a_shard_moves_only_its_share() -> None:
    before, after = _ring(4), _ring(5)
    moved = [k for k in KEYS if before.shards[before.place(k)].shard_id != after.shards[after.place(k)].shard_id]
    assert all(after.shards[after.place(k)].shard_id == "ctl-4" for k in moved)
    assert 0.17 < len(moved) / len(KEYS) < 0.23          # ~1/5


def test_removing_a_shard_moves_only_its_keys() -> None:
    before = _ring(5)
    after = Ring([s for s in before.shards if s.shard_id != "ctl-2"])
    for k in KEYS[:20_000]:
        was = before.shards[before.place(k)].shard_id
        now = after.shards[after.place(k)].shard_id
        assert was == now or was == "ctl-2"


def test_leaving_shard_keeps_its_calls_and_takes_no_new_ones() -> None:
    ring = _ring(3)
    held = [k for k in KEYS[:3000] if ring.shards[ring.owner(k)].shard_id == "ctl-1"]
    ring.update([Shard(s.shard_id, s.address, LEAVING if s.shard_id == "ctl-1" else s.state)
                 for s in ring.shards])
    assert all(ring.shards[ring.owner(k)].shard_id == "ctl-1" for k in held)      # in progress: stay
    fresh = [k for k in KEYS[3000:6000]]
    assert not any(ring.shards[ring.owner(k)].shard_id == "ctl-1" for k in fresh)
    ring.update([s for s in ring.shards if s.shard_id != "ctl-1"])               # gone: re-placed
    assert all(ring.shards[ring.owner(k)].shard_id != "ctl-1" for k in held)


def test_pin_and_bounded_cache() -> None:
    ring = _ring(4, max_cached=100)
    for k in KEYS[:1000]:
        ring.owner(k)
    assert len(ring._owners) <= 100
    ring.pin("x", "ctl-3")
    assert ring.shards[ring.owner("x")].shard_id == "ctl-3"
    with pytest.raises(ValueError):
        Ring([])
    with pytest.raises(ValueError):
        Ring([Shard("a", "x"), Shard("a", "y")])

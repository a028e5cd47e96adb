"""Which shard owns a call: rendezvous (highest-random-weight) hashing over the
shards of the cluster.

Every shard gets a pseudo-random weight per routing key (protocols/callkey.py);
the key belongs to the active shard of highest weight.  Every sensor and every
`spanrec record` reader computes the same owner from the same shard list, with
no table to share: the copies of one packet that several mirrors saw, and the
legs of one call seen at several sites, reach the same shard.  Adding or
removing a shard moves only the keys it wins or held (1/N of them), like a
token ring (Cortex/Loki/Tempo) without the token bookkeeping; a lookup is N
hashes, paid once per call (owners are cached per key).

A shard that is *leaving* (scale down, rolling update) owns no new key, but
the calls it already has stay with it: the caller keeps its cached owners
until the call's key is forgotten (`Ring.pin`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from hashlib import blake2b

__all__ = ["Shard", "Ring", "ACTIVE", "LEAVING", "ShardListError", "parse_members"]

ACTIVE = "active"
LEAVING = "leaving"


@dataclass(frozen=True)
class Shard:
    """One controller shard: a call engine behind its own gRPC address."""

    shard_id: str
    address: str
    state: str = ACTIVE


class ShardListError(ValueError):
    """A malformed shard list (``--controller`` of a sensor, ``--shard-members`` of a
    shard); the message is one line."""


SHARD_ID_RE = re.compile(r"[A-Za-z0-9_.:-]+")


def _hostport_ok(value: str) -> bool:
    host, sep, port = value.rpartition(":")
    return bool(sep and host and port.isdigit() and int(port) <= 65535)


def parse_members(text: str) -> list[Shard]:
    """A shard list: ``ID=HOST:PORT,ID=HOST:PORT,...``; an entry without ``ID=``
    (``HOST:PORT``) is its own id.  Sensors (``--controller``) and shards
    (``--shard-members``) both parse with this, so both name the shards alike
    and build the same ring.  Raises ShardListError (one line) when malformed."""
    out: list[Shard] = []
    seen: set[str] = set()
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            raise ShardListError(f"empty entry in shard list {text!r}")
        sid, sep, addr = entry.partition("=")
        if not sep:
            sid, addr = entry, entry
        sid, addr = sid.strip(), addr.strip()
        if not _hostport_ok(addr):
            raise ShardListError(f"expected HOST:PORT or ID=HOST:PORT, got {entry!r}")
        if not SHARD_ID_RE.fullmatch(sid) or sid in (".", ".."):
            raise ShardListError(f"bad shard id {sid!r} (letters, digits, _ . : -)")
        if sid in seen:
            raise ShardListError(f"shard id {sid!r} given twice")
        seen.add(sid)
        out.append(Shard(sid, addr))
    return out


class Ring:
    """The shards and the owner of each routing key (cached, bounded)."""

    def __init__(self, shards: list[Shard], max_cached: int = 500_000) -> None:
        if not shards:
            raise ValueError("a ring needs at least one shard")
        self.max_cached = max_cached
        self._owners: dict[str, int] = {}
        self.shards: list[Shard] = []
        self._salts: list[bytes] = []
        self._active: list[int] = []
        self.update(shards)

    def __len__(self) -> int:
        return len(self.shards)

    def update(self, shards: list[Shard]) -> None:
        """A new membership.  Cached owners of keys stay where they are when
        their shard still exists (calls in progress finish where they started);
        new keys are placed over the active shards."""
        old = {s.shard_id: i for i, s in enumerate(self.shards)}
        by_id = {s.shard_id: s for s in shards}
        if len(by_id) != len(shards):
            raise ValueError("shard ids must be unique")
        self.shards = sorted(shards, key=lambda s: s.shard_id)
        self._salts = [blake2b(s.shard_id.encode(), digest_size=16).digest() for s in self.shards]
        self._active = [i for i, s in enumerate(self.shards) if s.state == ACTIVE] or \
            list(range(len(self.shards)))
        if old:
            new_index = {s.shard_id: i for i, s in enumerate(self.shards)}
            back = {i: new_index.get(sid) for sid, i in old.items()}
            self._owners = {k: back[i] for k, i in self._owners.items() if back[i] is not None}

    def owner(self, key: str) -> int:
        """Index (into `shards`) of the shard that owns `key`."""
        i = self._owners.get(key)
        if i is None:
            i = self.place(key)
            owners = self._owners
            if len(owners) >= self.max_cached:
                del owners[next(iter(owners))]
            owners[key] = i
        return i

    def place(self, key: str) -> int:
        """The active shard of highest weight for `key` (no cache)."""
        data = key.encode("utf-8", "surrogatepass")
        best, best_w = self._active[0], -1
        for i in self._active:
            w = int.from_bytes(blake2b(data, digest_size=8, key=self._salts[i]).digest(), "big")
            if w > best_w:
                best, best_w = i, w
        return best

    def pin(self, key: str, shard_id: str) -> None:
        """`key` belongs to `shard_id` whatever the hashing says (an owner's announcement)."""
        for i, s in enumerate(self.shards):
            if s.shard_id == shard_id:
                self._owners[key] = i
                return

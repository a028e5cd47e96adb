"""One shard of a sharded controller (issue #12): which calls are its own.

One logical controller is N shard processes; sensors route every packet of a
call to the shard that owns the call (sensor/route.py: `RouteTable` key ->
`Ring.owner`).  What a sensor cannot route one by one (SIP-over-TCP segments:
one connection between proxies multiplexes many calls; IP fragments whose
first fragment it did not see; SIP without a Call-ID) comes in batches marked
``Batch.broadcast`` to *every* shard, and each shard keeps only what belongs
to the calls it owns:

* a complete SIP message (TCP reassembled, or a datagram rebuilt from
  fragments) is kept when ``owns_message``: the owner of its routing key,
  computed with the same `RouteTable` (same leg headers) and the same `Ring`
  as the sensors, is this shard; else it is dropped with the frames that only
  carried it, and counted (``not_owned_messages``, ``not_owned_packets``);
* any other broadcast packet is kept only when it belongs to a call this shard
  already has (its media endpoints, its fragments); it never starts a call
  (no media-only call from broadcast RTP).

Packets that were not broadcast are processed as ever: the sensor sent them
here because this shard owns them.  A broadcast frame is marked by its type
(`BroadcastFrame`, a bytes subclass): the packet tuples of the merge and the
call engine's signatures stay as they are, and a controller without a shard
identity never creates one (no per-packet cost).
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from controller.settings import DEFAULT_LEG_HEADERS
from protocols.callkey import RouteTable
from protocols.sip import SipMessage
from registry.ring import Ring, Shard

__all__ = ["BroadcastFrame", "ShardIdentity", "COUNTER_NAMES"]


class BroadcastFrame(bytes):
    """A frame that came in a broadcast batch (a bytes object like any other)."""

    __slots__ = ()


COUNTER_NAMES = (
    "broadcast_packets",      # packets received in broadcast batches
    "broadcast_messages",     # complete SIP messages from broadcast frames put to the test
    "not_owned_messages",     # ... of them owned by another shard: dropped
    "not_owned_packets",      # broadcast frames dropped: they carried only other shards' calls
    "broadcast_duplicates",   # broadcast frames the deduplicator dropped (another mirror's copy)
)


class ShardIdentity:
    """This shard's id, the ring it is part of, and the ownership test."""

    def __init__(self, shard_id: str, ring: Ring,
                 leg_headers: Iterable[str] = DEFAULT_LEG_HEADERS,
                 max_routes: int = 200_000) -> None:
        ids = [s.shard_id for s in ring.shards]
        if shard_id not in ids:
            raise ValueError(f"shard {shard_id!r} is not in the ring {ids}")
        self.shard_id = shard_id
        self.ring = ring
        self.index = ids.index(shard_id)
        self.max_routes = max_routes
        self.routes = RouteTable(leg_headers, max_routes)
        self.counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
        # a ring kept in etcd (registry/shards.py): () -> (version, shards), applied lazily
        self._source: Callable[[], tuple[int, list[Shard]]] | None = None
        self._version: int | None = None
        self._me = next(s for s in ring.shards if s.shard_id == shard_id)
        self._lock = threading.Lock()

    # -- a ring from etcd --------------------------------------------------------
    @property
    def dynamic(self) -> bool:
        """The ring follows the shard records in etcd (it may be changing)."""
        return self._source is not None

    def follow(self, source: Callable[[], tuple[int, list[Shard]]]) -> None:
        """Take the ring from `source` (registry.shards.ShardsWatch.current), the
        membership the sensors build too; this shard stays in it while its own
        record is not (yet) seen."""
        with self._lock:
            self._source = source
            self._version = None
            self._sync()

    def _sync(self) -> None:
        """With the lock held: apply a new membership (Ring.update keeps the owners
        of calls in progress)."""
        src = self._source
        if src is None:
            return
        version, shards = src()
        if version == self._version:
            return
        self._version = version
        if not any(s.shard_id == self.shard_id for s in shards):
            shards = [*shards, self._me]
        self.ring.update(list(shards))
        self.index = [s.shard_id for s in self.ring.shards].index(self.shard_id)

    # -- configuration -----------------------------------------------------
    @property
    def leg_headers(self) -> tuple[str, ...]:
        return self.routes.leg_headers

    def use_leg_headers(self, leg_headers: Iterable[str]) -> None:
        """The controller's leg headers (CallConfig.leg_headers) are the routing
        keys' (sensors must be given the same ones): a new, empty table."""
        headers = tuple(h.lower() for h in leg_headers)
        if headers != self.routes.leg_headers:
            self.routes = RouteTable(headers, self.max_routes)

    @property
    def ring_ids(self) -> list[str]:
        """The shard ids of the ring, sorted (what a sensor's Hello.ring must be)."""
        with self._lock:
            self._sync()
            return sorted(s.shard_id for s in self.ring.shards)

    def members(self) -> list[Shard]:
        """Every shard of the ring (this one included), sorted by id."""
        with self._lock:
            self._sync()
            return sorted(self.ring.shards, key=lambda s: s.shard_id)

    # -- ownership -----------------------------------------------------------
    def owns_key(self, key: str) -> bool:
        with self._lock:
            self._sync()
            return self.ring.owner(key) == self.index

    def owns_message(self, msg: SipMessage) -> bool:
        """Does this shard own the call of a SIP message (its routing key's owner)?"""
        with self._lock:
            self._sync()
            return self.ring.owner(self.routes.key(msg)) == self.index

    def learn(self, msg: SipMessage) -> None:
        """A message routed here: its Call-ID's routing key is remembered (sticky),
        as the sensors' tables remember it."""
        self.routes.key(msg)

    # -- the sensor link -------------------------------------------------------
    def hello_refusal(self, sensor_ring: Iterable[str]) -> str | None:
        """None when a sensor routing over `sensor_ring` (Hello.ring) may stream
        to this shard, else the one-line reason.  An empty ring (a sensor sending
        everything to one controller) is accepted by a ring of one shard only."""
        ours = self.ring_ids
        theirs = sorted(sensor_ring)
        if theirs == ours or (not theirs and len(ours) == 1 and not self.dynamic):
            return None
        if self.dynamic:
            if theirs:
                return (f"shard membership is changing: this shard {self.shard_id} has "
                        f"[{', '.join(ours)}] from etcd, the sensor [{', '.join(theirs)}]; "
                        f"retry once the sensor has etcd's update")
            return (f"this controller is shard {self.shard_id} of [{', '.join(ours)}] (shards in "
                    f"etcd); the sensor routes over no shard list: give it --etcd without "
                    f"--controller or calls would be split")
        addresses = ",".join(f"{s.shard_id}={s.address or 'HOST:PORT'}"
                             for s in sorted(self.ring.shards, key=lambda s: s.shard_id))
        routes = f"[{', '.join(theirs)}]" if theirs else "no shard list (one controller)"
        return (f"this controller is shard {self.shard_id} of [{', '.join(ours)}]; the sensor "
                f"routes over {routes}: give the sensor every shard (--controller {addresses}) "
                f"or calls would be split")

    def refusal_retriable(self, sensor_ring: Iterable[str]) -> bool:
        """A refused Hello the sensor should retry (UNAVAILABLE, not FAILED_PRECONDITION):
        both sides follow etcd and only disagree while a change propagates."""
        return self.dynamic and bool(list(sensor_ring))

    def status(self) -> dict:
        return {"shard_id": self.shard_id, "ring": self.ring_ids, **self.counters}

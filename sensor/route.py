"""Which controller shard each forwarded frame goes to (issue #12).

One logical controller is N shards (registry/ring.py); every packet of one
call must reach the shard that owns it, so the sensor routes.  Per frame the
router finds a *routing key* and sends the frame to ``Ring.owner(key)``:

* SIP over UDP (a datagram starting with a SIP start line): its
  ``RouteTable`` key (protocols/callkey.py: the Call-ID, or the Call-ID a leg
  header such as X-Call-ID names, sticky per Call-ID).  A message that does
  not parse gives its Call-ID (and leg headers) by regex; one without any
  Call-ID is broadcast.  SDP in it (application/sdp or multipart) maps each
  media endpoint (connection address, port) and its RTCP port (a=rtcp or
  port+1) to the call's shard.
* UDP to or from a mapped endpoint (destination first, then source): that
  endpoint's shard.  Endpoints the controller announced (``expect``, from
  one shard's Expect messages) are mapped to the shard that announced them.
* Other UDP (RTP the classifier's heuristics recognised): ``media_key`` of its
  two endpoints, the same shard in both directions.
* A first IP fragment: as any UDP datagram (its SIP Call-ID by regex, the
  message is incomplete); its later fragments, keyed (src, dst, IP id), go
  where it went.  Fragments of a SIP datagram are re-assembled to learn SDP.
* Broadcast (every shard; each keeps only the calls it owns): SIP over TCP
  segments (a message may span segments; a segment that holds a whole SIP
  message with SDP still maps its endpoints), later fragments whose first
  fragment was not seen, frames that do not decode, other protocols.

Tables are bounded and expire by capture time like the classifier's (media
endpoints: 200,000, 2 h without traffic; fragments: 4,096, 30 s).  Pure: no
threads, no I/O; ``expect`` may be called from any thread (queued, applied at
the start of the next ``split``).  Used only with more than one shard.
"""
from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from protocols.callkey import RouteTable, media_key
from protocols.errors import DecodeError
from protocols.layers import decode, str_to_ip
from protocols.mediaports import MAX_MEDIA_LINES, media_port_ok
from protocols.sdp import parse_sdp
from protocols.sip import SipMessage, looks_like_sip, parse_sip
from registry.ring import Ring, ShardListError, parse_members

__all__ = ["BROADCAST", "ShardRouter", "RouterCounters", "parse_shards", "ShardListError"]

#: shard index of a frame that goes to every shard
BROADCAST = -1

Frame = tuple[int, bytes]

_NS = 1_000_000_000
_UDP, _TCP = 17, 6
_REFRESH_NS = 60 * _NS      # rewrite an endpoint's last-seen time at most once a minute
_SWEEP_NS = 60 * _NS
_FRAG_TTL_NS = 30 * _NS
_MAX_SIP_DATAGRAM = 65535
_CALL_ID_RE = re.compile(rb"\n(?:call-id|i)[ \t]*:[ \t]*([^\r\n]*?)[ \t]*\r?\n", re.IGNORECASE)
_SDP_START = b"\r\n\r\nv=0"


def parse_shards(text: str) -> list[tuple[str, str]]:
    """``--controller``: [(shard id, address)] (registry.ring.parse_members, the
    parser the shards use too; ShardListError when malformed)."""
    return [(s.shard_id, s.address) for s in parse_members(text)]


@dataclass(slots=True)
class RouterCounters:
    routed: list[int] = field(default_factory=list)   # frames sent to one shard, per shard index
    broadcast: int = 0               # frames sent to every shard
    endpoints_learned: int = 0       # media endpoints mapped from SDP
    endpoints_expected: int = 0      # media endpoints mapped from a shard's Expect
    sip_by_regex: int = 0            # SIP whose Call-ID came from the regex (cut or malformed)
    sip_broadcast: int = 0           # SIP over UDP without any Call-ID: broadcast


class _Frag:
    """A fragmented datagram whose first fragment was routed."""

    __slots__ = ("shard", "ts", "parts", "total")

    def __init__(self, shard: int, ts: int, first: bytes | None) -> None:
        self.shard = shard
        self.ts = ts
        # re-assembly of a SIP datagram only (to learn its SDP): offset -> chunk
        self.parts: dict[int, bytes] | None = None if first is None else {0: first}
        self.total = -1

    def add(self, offset: int, chunk: bytes, last: bool) -> bytes | None:
        """Add a chunk of the IP payload; the whole UDP datagram once complete."""
        parts = self.parts
        if parts is None:
            return None
        parts[offset] = chunk
        if last:
            self.total = offset + len(chunk)
        if self.total < 0:
            return None
        out = bytearray()
        for off in sorted(parts):
            if off != len(out):
                return None
            out += parts[off]
        return bytes(out) if len(out) == self.total else None


class ShardRouter:
    """Routes frames over the shards of a ring; see the module docstring."""

    def __init__(self, ring: Ring, leg_headers: Iterable[str] = ("x-call-id", "x-cid"), *,
                 ttl_s: float = 7200.0, max_endpoints: int = 200_000,
                 max_fragments: int = 4096) -> None:
        self.ring = ring
        self.routes = RouteTable(leg_headers)
        self.counters = RouterCounters(routed=[0] * len(ring))
        self._ttl_ns = int(ttl_s * _NS)
        self._max_endpoints = max_endpoints
        self._max_fragments = max_fragments
        # (address bytes, port) -> [shard index, last seen capture time]
        self._endpoints: dict[tuple[bytes, int], list[int]] = {}
        self._frags: dict[tuple[bytes, bytes, int | None], _Frag] = {}
        # (src, sport, dst, dport) -> shard of its media_key: a memo (the key is 1 µs)
        self._flows: dict[tuple[bytes, int, bytes, int], int] = {}
        self._max_flows = 65536
        self._expected_in: deque[tuple[int, list[tuple[bytes, int]]]] = deque()
        self._last_sweep = 0
        names = self.routes.leg_headers
        self._leg_re = re.compile(
            rb"\n(" + b"|".join(re.escape(n.encode()) for n in names)
            + rb")[ \t]*:[ \t]*([^\r\n]*?)[ \t]*\r?\n", re.IGNORECASE) if names else None

    def __len__(self) -> int:
        return len(self.ring)

    @property
    def endpoints(self) -> int:
        return len(self._endpoints)

    # -- public -----------------------------------------------------------
    def expect(self, shard: int | str, flows: Iterable[tuple[bytes, int]]) -> None:
        """Media endpoints a shard announced (its Expect messages): they belong to
        that shard (its index, or its id: a ring from etcd changes indices).
        Thread-safe; applied at the start of the next `split`."""
        self._expected_in.append((shard, list(flows)))

    def update_ring(self, shards: list) -> None:
        """A new membership (registry.shards: a ring kept in etcd): `Ring.update`
        (calls in progress keep their shard), and this router's tables follow the
        shards' new indices; what belonged to a shard that is gone is forgotten
        (its calls' later packets are placed again).  Call it from the thread
        that calls `assign`."""
        old_ids = [s.shard_id for s in self.ring.shards]
        self.ring.update(shards)
        new_index = {s.shard_id: i for i, s in enumerate(self.ring.shards)}
        back = [new_index.get(sid, -2) for sid in old_ids]     # -2: gone
        if back == list(range(len(back))) and len(back) == len(self.ring):
            return
        eps = self._endpoints
        for k in list(eps):
            e = eps[k]
            j = back[e[0]]
            if j < 0:
                del eps[k]
            else:
                e[0] = j
        for k in list(self._frags):
            fr = self._frags[k]
            if fr.shard >= 0:
                j = back[fr.shard]
                if j < 0:
                    del self._frags[k]
                else:
                    fr.shard = j
        self._flows.clear()
        routed = [0] * len(self.ring)
        for i, n in enumerate(self.counters.routed):
            if back[i] >= 0:
                routed[back[i]] = n
        self.counters.routed = routed

    def split(self, linktype: int, frames: list[Frame]) -> tuple[list[list[Frame]], list[Frame]]:
        """(frames per shard index, in capture order; frames for every shard)."""
        per: list[list[Frame]] = [[] for _ in range(len(self.ring))]
        everyone: list[Frame] = []
        for frame, shard in zip(frames, self.assign(linktype, frames)):
            (everyone if shard < 0 else per[shard]).append(frame)
        return per, everyone

    def batches(self, linktype: int, frames: list[Frame]) -> list[list[tuple[bool, list[Frame]]]]:
        """Per shard index, its batches in capture order: (broadcast?, frames) runs
        of its own frames and the broadcast ones, so each stream keeps capture order."""
        n = len(self.ring)
        runs: list[list[tuple[bool, list[Frame]]]] = [[] for _ in range(n)]
        cur: list[list[Frame] | None] = [None] * n
        cur_b: list[bool] = [False] * n
        for frame, shard in zip(frames, self.assign(linktype, frames)):
            if shard >= 0:
                run = cur[shard]
                if run is None or cur_b[shard]:
                    run = cur[shard] = []
                    cur_b[shard] = False
                    runs[shard].append((False, run))
                run.append(frame)
            else:
                for i in range(n):
                    run = cur[i]
                    if run is None or not cur_b[i]:
                        run = cur[i] = []
                        cur_b[i] = True
                        runs[i].append((True, run))
                    run.append(frame)
        return runs

    def assign(self, linktype: int, frames: list[Frame]) -> list[int]:
        """The shard index of each frame (`BROADCAST`: every shard)."""
        if not frames:
            return []
        if self._expected_in:
            self._add_expected(frames[0][0])
        out: list[int] = []
        put = out.append
        ep_get = self._endpoints.get
        flow_get = self._flows.get
        routed = self.counters.routed
        broadcast = 0
        ts = 0
        for ts, data in frames:
            try:
                d = decode(linktype, data)
            except DecodeError:
                put(BROADCAST)
                broadcast += 1
                continue
            proto = d.proto
            if proto == _UDP:
                if d.frag_offset:                       # a later fragment: no ports
                    shard = self._later_fragment(d, data, ts)
                    if shard < 0:
                        put(BROADCAST)
                        broadcast += 1
                        continue
                else:
                    off = d.payload_offset
                    if d.payload_len and data[off] < 0x80 and \
                            looks_like_sip(data[off:off + d.payload_len]):
                        shard = self._sip(d, data, ts)
                        if shard < 0:
                            put(BROADCAST)
                            broadcast += 1
                            continue
                    else:
                        e = ep_get((d.dst, d.dport)) or ep_get((d.src, d.sport))
                        if e is not None:
                            shard = e[0]
                            if ts - e[1] > _REFRESH_NS:
                                e[1] = ts
                        else:                           # media no SDP named: its endpoint pair
                            fk = (d.src, d.sport, d.dst, d.dport)
                            shard = flow_get(fk, -1)
                            if shard < 0:
                                shard = self._flow(fk)
                        if d.is_fragment:               # first fragment of RTP & co
                            self._remember_fragment(d, ts, shard, None)
                put(shard)
                routed[shard] += 1
            else:
                if proto == _TCP and d.payload_len:
                    self._learn_tcp(data[d.payload_offset:d.payload_offset + d.payload_len], ts)
                put(BROADCAST)
                broadcast += 1
        self.counters.broadcast += broadcast
        if ts - self._last_sweep > _SWEEP_NS:
            self._sweep(ts)
        return out

    # -- SIP ----------------------------------------------------------------
    def _sip(self, d, data: bytes, ts: int) -> int:
        """Shard of a UDP datagram (or first fragment) starting with SIP; -1: broadcast."""
        off = d.payload_offset
        payload = data[off:off + d.payload_len]
        msg: SipMessage | None = None
        if not d.is_fragment:
            try:
                msg = parse_sip(payload)
            except DecodeError:
                msg = None
        if msg is not None and msg.call_id:
            key = self.routes.key(msg)
        else:
            key = self._key_by_regex(payload)
            if key is None:
                self.counters.sip_broadcast += 1
                if d.is_fragment:
                    self._remember_fragment(d, ts, BROADCAST, None)
                return BROADCAST
        shard = self.ring.owner(key)
        if d.is_fragment:
            self._remember_fragment(d, ts, shard, data[off - 8:off + d.payload_len])
        elif msg is not None:
            self._learn_message(msg, shard, ts)
        else:
            at = payload.find(_SDP_START)
            if at >= 0:
                self._learn_sdp(payload[at + 4:], shard, ts)
        return shard

    def _key_by_regex(self, payload: bytes) -> str | None:
        """Routing key of a SIP message that did not parse (cut, malformed)."""
        m = _CALL_ID_RE.search(payload)
        if m is None:
            return None
        cid = m.group(1).decode("utf-8", "replace").strip()
        if not cid:
            return None
        self.counters.sip_by_regex += 1
        headers: dict[str, list[str]] = {"call-id": [cid]}
        if self._leg_re is not None:
            for lm in self._leg_re.finditer(payload):
                headers.setdefault(lm.group(1).decode("ascii", "replace").lower(),
                                   [lm.group(2).decode("utf-8", "replace").strip()])
        return self.routes.key(SipMessage(True, None, None, None, None, headers, b""))

    def _learn_message(self, msg: SipMessage, shard: int, ts: int) -> None:
        body = msg.body
        if not body or b"v=0" not in body:
            return
        ctype = msg.content_type or ""
        if ctype == "application/sdp":
            self._learn_sdp(body, shard, ts)
        elif ctype.startswith("multipart/"):
            at = body.find(b"v=0")
            self._learn_sdp(body[at:], shard, ts)

    def _learn_sdp(self, body: bytes, shard: int, ts: int) -> None:
        try:
            sdp = parse_sdp(body)
        except DecodeError:
            return
        lines = 0
        for md in sdp.media:
            if not md.port or not md.connection:
                continue
            try:
                addr = str_to_ip(md.connection)
            except ValueError:       # a host name: nothing to match packets against
                continue
            if addr in (b"\0\0\0\0", bytes(16)):   # hold
                continue
            lines += 1
            if lines > MAX_MEDIA_LINES:
                break
            for port in (md.port, md.rtcp_port or md.port + 1):
                if media_port_ok(port) and self._map((addr, port), shard, ts):
                    self.counters.endpoints_learned += 1

    def _learn_tcp(self, payload: bytes, ts: int) -> None:
        """A TCP segment holding a whole SIP message with SDP: map its endpoints
        (the segment itself is broadcast; messages across segments are left to
        the owner shard's Expect)."""
        if b"v=0" not in payload or payload[0] >= 0x80 or not looks_like_sip(payload):
            return
        try:
            msg = parse_sip(payload)
        except DecodeError:
            return
        if msg.call_id:
            self._learn_message(msg, self.ring.owner(self.routes.key(msg)), ts)

    # -- endpoints ------------------------------------------------------------
    def _map(self, key: tuple[bytes, int], shard: int, ts: int) -> bool:
        """Map an endpoint to a shard (the latest mapping wins); True when new."""
        eps = self._endpoints
        new = key not in eps
        if new and len(eps) >= self._max_endpoints:
            self._evict(ts)
        eps[key] = [shard, ts]
        return new

    def _add_expected(self, ts: int) -> None:
        inbox = self._expected_in
        n = len(self.ring)
        while inbox:
            shard, flows = inbox.popleft()
            if isinstance(shard, str):
                shard = next((i for i, s in enumerate(self.ring.shards) if s.shard_id == shard), -1)
            if not 0 <= shard < n:
                continue
            for key in flows:
                if media_port_ok(key[1]):
                    self._map(key, shard, ts)
                    self.counters.endpoints_expected += 1   # pinned (new or moved)

    def _flow(self, fk: tuple[bytes, int, bytes, int]) -> int:
        """Shard of a media flow no SDP named: by its endpoint pair, the same on every
        sensor (a rule using this sensor's own SDP knowledge — e.g. a neighbouring
        port of a known endpoint — would send two mirrors' copies to two shards)."""
        shard = self.ring.owner(media_key(*fk))
        flows = self._flows
        if len(flows) >= self._max_flows:
            del flows[next(iter(flows))]
        flows[fk] = shard
        return shard

    # -- fragments ------------------------------------------------------------
    def _remember_fragment(self, d, ts: int, shard: int, first: bytes | None) -> None:
        frags = self._frags
        if len(frags) >= self._max_fragments:
            self._expire_fragments(ts)
            while len(frags) >= self._max_fragments:
                del frags[next(iter(frags))]
        frags[(d.src, d.dst, d.ip_id)] = _Frag(shard, ts, first)

    def _later_fragment(self, d, data: bytes, ts: int) -> int:
        key = (d.src, d.dst, d.ip_id)
        fr = self._frags.get(key)
        if fr is None:
            return BROADCAST
        if fr.parts is not None:
            off = d.payload_offset
            whole = fr.add(d.frag_offset, data[off:off + d.payload_len], not d.more_fragments)
            if whole is not None:
                fr.parts = None
                payload = whole[8:]
                if fr.shard >= 0 and len(payload) <= _MAX_SIP_DATAGRAM:
                    try:
                        self._learn_message(parse_sip(payload), fr.shard, ts)
                    except DecodeError:
                        pass
        return fr.shard

    # -- expiry ---------------------------------------------------------------
    def _sweep(self, now: int) -> None:
        self._last_sweep = now
        horizon = now - self._ttl_ns
        eps = self._endpoints
        for k in [k for k, e in eps.items() if e[1] < horizon]:
            del eps[k]
        self._expire_fragments(now)

    def _expire_fragments(self, now: int) -> None:
        horizon = now - _FRAG_TTL_NS
        frags = self._frags
        for k in [k for k, fr in frags.items() if fr.ts < horizon]:
            del frags[k]

    def _evict(self, now: int) -> None:
        """Make room: drop expired endpoints, else the oldest tenth."""
        eps = self._endpoints
        horizon = now - self._ttl_ns
        stale = [k for k, e in eps.items() if e[1] < horizon]
        if not stale:
            stale = sorted(eps, key=lambda k: eps[k][1])[: max(1, len(eps) // 10)]
        for k in stale:
            del eps[k]

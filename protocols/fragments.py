"""IPv4 and IPv6 fragment reassembly, pure and transport-free.

`Reassembler.add(ts_ns, linktype, data, d)` takes one fragment (a frame and its
`layers.decode` result with `d.is_fragment`) and returns a `Datagram` when the
datagram it belongs to is complete: a plain, unfragmented IP packet

* IPv4: the first fragment's header (options kept) with MF=0, offset 0, the
  new total length and a recomputed header checksum;
* IPv6: the first fragment's base header and unfragmentable extension headers,
  the fragment header removed, the previous next-header field set to the
  fragment header's and the payload length fixed;

prefixed by the L2 header of the first fragment, so `layers.decode(linktype,
frame)` decodes it like any other frame.  A fragment carried inside a mirror
tunnel (`d.encap`) cannot keep its outer headers (their lengths would be
wrong): the datagram is then returned as raw IP (linktype 101).

Datagrams are keyed by (IP version, src, dst, IP id, protocol).  Fragments may
come in any order; an exact repeat is a duplicate, a fragment overlapping bytes
already held keeps the first data (counted).  Memory is bounded: a datagram is
dropped when its data would exceed `max_bytes`, the oldest datagram in progress
is evicted past `max_datagrams` or `max_total_bytes`, and a datagram not complete
`timeout_ns` of capture time after its first fragment expires (checked on every
`add` and by `expire(now)`).  Bad input is counted, never raised.
"""
from __future__ import annotations

import struct
from collections import OrderedDict
from typing import NamedTuple

from protocols.layers import Decoded

__all__ = ["Datagram", "Reassembler"]

_RAW_IP = 101
_IPV6_EXT = frozenset((0, 43, 60))  # hop-by-hop, routing, destination options
_IPV6_FRAG_H = 44
_IPV6_AH = 51
_H = struct.Struct("!H")
_IPV6_FRAG = struct.Struct("!BxHI")

COUNTERS = ("fragments", "datagrams", "duplicates", "overlaps", "expired", "evicted",
            "oversize", "malformed", "inconsistent")


class Datagram(NamedTuple):
    """A reassembled datagram: decode it with `layers.decode(linktype, frame)`."""

    ts_ns: int          # capture time of the fragment that completed it
    linktype: int       # the fragments' linktype, or 101 (raw IP) for tunnelled fragments
    frame: bytes
    fragments: int      # fragments that contributed data


class _Pending:
    __slots__ = ("first_ts", "chunks", "held", "total", "head", "count")

    def __init__(self, ts_ns: int) -> None:
        self.first_ts = ts_ns
        self.chunks: list[tuple[int, int, bytes]] = []  # (start, end, data), disjoint, sorted
        self.held = 0                                   # bytes in chunks
        self.total: int | None = None                   # length, known from the last fragment
        self.head: tuple[int, bytes, bytes] | None = None  # linktype, L2 prefix, IP header
        self.count = 0


def _checksum(hdr: bytes | bytearray) -> int:
    if len(hdr) % 2:
        hdr = bytes(hdr) + b"\0"
    s = sum(struct.unpack(f"!{len(hdr) // 2}H", hdr))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


class Reassembler:
    """Fragments in, whole datagrams out; bounded in datagrams, bytes and time."""

    def __init__(self, timeout_s: float = 30.0, max_datagrams: int = 4096,
                 max_bytes: int = 65535, max_total_bytes: int = 64 << 20) -> None:
        self.timeout_ns = int(timeout_s * 1_000_000_000)
        self.max_datagrams = max_datagrams
        self.max_bytes = max_bytes
        self.max_total_bytes = max_total_bytes
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self._pending: OrderedDict[tuple, _Pending] = OrderedDict()  # oldest first
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def bytes_held(self) -> int:
        return self._bytes

    # -- public ---------------------------------------------------------------
    def expire(self, now_ns: int) -> int:
        """Drop the datagrams whose first fragment is `timeout_ns` or more before now."""
        n = 0
        limit = now_ns - self.timeout_ns
        pending = self._pending
        while pending:
            key, p = next(iter(pending.items()))
            if p.first_ts > limit:
                break
            self._drop(key)
            n += 1
        self.counters["expired"] += n
        return n

    def add(self, ts_ns: int, linktype: int, data: bytes, d: Decoded) -> Datagram | None:
        """One fragment; the datagram if this fragment completed it, else None."""
        c = self.counters
        c["fragments"] += 1
        self.expire(ts_ns)
        if not d.is_fragment or d.ip_id is None:
            c["malformed"] += 1
            return None
        try:
            part = self._split(data, d)
        except (IndexError, struct.error):
            part = None
        if part is None:
            c["malformed"] += 1
            return None
        head, start, payload = part
        end = start + len(payload)
        last = not d.more_fragments
        key = (d.ip_version, d.src, d.dst, d.ip_id, d.proto)
        p = self._pending.get(key)
        if end > self.max_bytes or (not last and not payload):
            c["oversize" if end > self.max_bytes else "malformed"] += 1
            if p is not None:
                self._drop(key)
            return None
        if p is None:
            p = self._pending[key] = _Pending(ts_ns)
        if last:
            if p.total is None and all(ce <= end for _, ce, _ in p.chunks):
                p.total = end
            elif p.total != end:
                c["inconsistent"] += 1
                return None
        elif p.total is not None and end > p.total:
            c["inconsistent"] += 1
            return None
        if start == 0 and p.head is None:
            p.head = (_RAW_IP if d.encap else linktype, *head)  # type: ignore[assignment]
        added = self._insert(p, start, payload)
        if added > 0:
            p.count += 1
            self._bytes += added
        # (a fragment adding no bytes may still complete the datagram: an empty last
        # fragment, or a last one whose bytes an overlapping fragment brought first)
        if p.total is not None and p.head is not None and p.held == p.total:
            self._drop(key)
            return self._build(ts_ns, p)
        self._bound(key)
        return None

    # -- internals ------------------------------------------------------------
    def _split(self, data: bytes, d: Decoded) -> tuple[tuple[bytes, bytes], int, bytes] | None:
        """((L2 prefix, IP header without the fragment header, next header patched),
        fragment offset, fragment data) of one fragment."""
        l3 = d.l3_offset
        prefix = b"" if d.encap else data[:l3]
        if d.ip_version == 4:
            vihl = data[l3]
            hlen = (vihl & 0x0F) * 4
            tot = _H.unpack_from(data, l3 + 2)[0] or len(data) - l3
            if vihl >> 4 != 4 or hlen < 20 or tot < hlen or l3 + tot > len(data):
                return None
            frag = _H.unpack_from(data, l3 + 6)[0]
            start = (frag & 0x1FFF) << 3
            return (prefix, data[l3:l3 + hlen]), start, data[l3 + hlen:l3 + tot]
        if d.ip_version != 6 or len(data) < l3 + 40:
            return None
        plen = _H.unpack_from(data, l3 + 4)[0]
        end = l3 + 40 + plen if plen else len(data)
        if end > len(data):
            return None
        nh_at = l3 + 6
        nh = data[nh_at]
        p = l3 + 40
        for _ in range(16):
            if nh == _IPV6_FRAG_H:
                if end - p < 8:
                    return None
                inner, fo, _id = _IPV6_FRAG.unpack_from(data, p)
                hdr = bytearray(data[l3:p])
                hdr[nh_at - l3] = inner
                return (prefix, bytes(hdr)), fo & 0xFFF8, data[p + 8:end]
            if nh in _IPV6_EXT or nh == _IPV6_AH:
                if end - p < 8:
                    return None
                hlen = (data[p + 1] + 2) * 4 if nh == _IPV6_AH else (data[p + 1] + 1) * 8
                nh_at = p
                nh = data[p]
                p += hlen
            else:
                return None
        return None

    def _insert(self, p: _Pending, start: int, payload: bytes) -> int:
        """Store the bytes of [start, end) not held yet; the number stored, or -1 if
        none was new (a duplicate, or an overlap adding nothing)."""
        end = start + len(payload)
        c = self.counters
        new: list[tuple[int, int, bytes]] = []
        pos = start
        overlap = False
        exact = False
        for cs, ce, cd in p.chunks:
            if ce <= pos or cs >= end:
                continue
            overlap = True
            if cs == start and ce == end and cd == payload:
                exact = True
            if cs > pos:
                new.append((pos, cs, payload[pos - start:cs - start]))
            pos = max(pos, ce)
            if pos >= end:
                break
        if pos < end:
            new.append((pos, end, payload[pos - start:]))
        if overlap:
            c["duplicates" if exact else "overlaps"] += 1
        if not new:
            return -1
        p.chunks.extend(new)
        p.chunks.sort()
        added = sum(e - s for s, e, _ in new)
        p.held += added
        return added

    def _bound(self, key: tuple) -> None:
        """Evict the oldest datagrams (not `key`, just added) past the bounds."""
        pending = self._pending
        while len(pending) > self.max_datagrams or \
                (self._bytes > self.max_total_bytes and len(pending) > 1):
            old = next(iter(pending))
            if old == key:
                pending.move_to_end(key)
                old = next(iter(pending))
                if old == key:
                    break
            self._drop(old)
            self.counters["evicted"] += 1

    def _drop(self, key: tuple) -> None:
        p = self._pending.pop(key)
        self._bytes -= p.held

    def _build(self, ts_ns: int, p: _Pending) -> Datagram | None:
        linktype, prefix, hdr = p.head  # type: ignore[misc]
        body = b"".join(cd for _, _, cd in p.chunks)
        if hdr[0] >> 4 == 4:
            tot = len(hdr) + len(body)
            if tot > 0xFFFF:
                self.counters["oversize"] += 1
                return None
            h = bytearray(hdr)
            h[2:4] = _H.pack(tot)
            h[6:8] = _H.pack(_H.unpack_from(h, 6)[0] & 0xC000)  # keep DF/reserved: MF 0, offset 0
            h[10:12] = b"\0\0"
            h[10:12] = _H.pack(_checksum(h))
        else:
            plen = len(hdr) - 40 + len(body)
            if plen > 0xFFFF:
                self.counters["oversize"] += 1
                return None
            h = bytearray(hdr)
            h[4:6] = _H.pack(plen)
        self.counters["datagrams"] += 1
        return Datagram(ts_ns, linktype, prefix + bytes(h) + body, p.count)

"""Drops a packet that another mirror (or the same one twice) already delivered.

Two copies of one packet differ in their L2 headers, TTL/hop limit and IPv4
header checksum; the IP ID, addresses, ports and transport payload are equal.
The key is therefore a 64-bit hash of the IP datagram from the source address
on (addresses, ports, TCP seq, transport payload; the protocol byte sits before
the addresses and is implied by the ports/payload) plus the IPv4 ID. A copy is dropped only when the first
one was seen less than a window ago (capture time): a SIP retransmission comes
500 ms or more later and is kept; RTP copies from other sites come within a few
hundred ms. Packets arrive here in capture-time order (controller/ingest/order.py),
so keys are kept in two generations that rotate every horizon (the longer window):
no per-key eviction, at most two horizons of keys; the table is also bounded in
size.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from protocols.layers import Decoded


@dataclass
class DedupConfig:
    sip_window_ms: float = 300.0     # below the 500 ms first SIP retransmission (T1)
    media_window_ms: float = 1000.0  # path delay and clock skew between sites
    max_entries: int = 2_000_000


@dataclass
class Deduplicator:
    config: DedupConfig = field(default_factory=DedupConfig)
    dropped: int = 0
    dropped_by_sensor: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Two generations of keys (key -> capture time of the kept copy): new keys go
        # into the current one; every `horizon` of capture time the previous one is
        # dropped whole and the current one becomes it. A key is so kept between one
        # and two horizons, long enough for any window, with no per-key eviction.
        self._seen: dict[int, int] = {}
        self._old: dict[int, int] = {}
        self._sip_window = int(self.config.sip_window_ms * 1e6)
        self._media_window = int(self.config.media_window_ms * 1e6)
        self._horizon = max(self._sip_window, self._media_window)
        self._rotate_at = -(1 << 62)     # the first packet starts the clock
        self._half = max(1, self.config.max_entries // 2)   # a generation's bound

    def __len__(self) -> int:
        """Keys held (both generations)."""
        return len(self._seen) + len(self._old)

    def is_duplicate(self, ts_ns: int, sensor_id: str, data: bytes, d: Decoded,
                     is_sip: bool) -> bool:
        # IPv4: skip version..checksum except the IP ID (added below); from the
        # addresses on, copies are byte-identical. IPv6: skip up to the hop limit.
        l3 = d.l3_offset
        end = d.payload_offset + d.payload_len
        if d.ip_version == 4:
            key = (hash(data[l3 + 12:end]) << 16) | (d.ip_id or 0)
        else:
            key = hash(data[l3 + 8:end])
        seen = self._seen
        first = seen.get(key)
        if first is None:
            first = self._old.get(key)
        if first is not None:
            window = self._sip_window if is_sip else self._media_window
            if -window <= ts_ns - first <= window:
                self.dropped += 1
                by = self.dropped_by_sensor
                by[sensor_id] = by.get(sensor_id, 0) + 1
                return True
        seen[key] = ts_ns
        if ts_ns >= self._rotate_at or len(seen) > self._half:
            self._rotate(ts_ns)
        return False

    def _rotate(self, now_ns: int) -> None:
        """A new generation (packets come in time order): the previous one's keys
        are all older than one horizon, so no later packet can match them. A
        generation over half of `max_entries` rotates early: the table then keeps
        between half and all of the bound, the newest keys."""
        self._old = self._seen
        self._seen = {}
        self._rotate_at = now_ns + self._horizon

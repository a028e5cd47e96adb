"""What a sensor forwards: SIP by content, and the RTP/RTCP its SDP announced.

Why content and not ports: SIP runs on any port (5060, 5080, 25060, TLS
offload boxes...), and RTP ports are dynamic. So every UDP/TCP payload that
starts with a SIP start line is forwarded, media endpoints (address, port)
are learned from SDP bodies, and UDP packets to or from a learned endpoint
are forwarded (RTP, RTCP, RFC 2833 events riding in RTP). Everything else is
counted as filtered.

Cost: a frame is decoded once; the hot path for RTP is one dict lookup on
``(dst address bytes, dst port)`` (then the source side). SIP detection and
SDP parsing only run on the little signalling traffic.

Details worth knowing:

* TCP: once a segment of a connection starts with SIP, every later segment
  of that connection (both directions) with payload, FIN or RST is
  forwarded, so SIP messages split over segments survive. Each direction is
  also re-assembled in order (bounded, resynchronised on a gap at the next
  SIP start line) only to learn SDP from complete messages.
* IP fragments: a first fragment is classified like any UDP packet (its
  ports and the SIP start line are in it); later fragments of a datagram
  whose first fragment was forwarded are forwarded too, keyed by
  (src, dst, IP id). Fragments arriving before their first fragment are
  filtered (mirror ports deliver in order in practice). Forwarded fragments
  are re-assembled here so SDP inside large INVITEs is learned.
* Learned state expires by capture time (frame timestamps, so replays behave
  like live capture): media endpoints and TCP flows after ``ttl_s`` without
  traffic (2 h), fragments after 30 s; each table is bounded.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocols.errors import DecodeError
from protocols.layers import Decoded, decode, str_to_ip
from protocols.sdp import parse_sdp
from protocols.sip import looks_like_sip, parse_sip, split_stream
from sensor.bpf import DEFAULT_BPF, default_bpf  # the live prefilter (see sensor.bpf)

__all__ = ["DEFAULT_BPF", "default_bpf", "Classifier", "ClassifierCounters"]


_NS = 1_000_000_000
_UDP, _TCP = 17, 6
_TCP_FIN_RST = 0x01 | 0x04
_TCP_RST = 0x04
_REFRESH_NS = 60 * _NS  # rewrite a media entry's last-seen time at most once a minute
_SWEEP_NS = 60 * _NS
_FRAG_TTL_NS = 30 * _NS
_MAX_STREAM_BUF = 256 * 1024
_ETH_IP_TYPES = frozenset((0x0800, 0x86DD))
_VLAN_TYPES = frozenset((0x8100, 0x88A8, 0x9100, 0x9200))


@dataclass(slots=True)
class ClassifierCounters:
    seen: int = 0
    forwarded: int = 0
    filtered: int = 0
    decode_errors: int = 0
    media_learned: int = 0


def _is_ip_frame(linktype: int, data: bytes) -> bool:
    """False for frames that are not IP at all (ARP, LLDP, ...): filtered, not malformed."""
    if linktype != 1:
        return True
    off = 12
    while len(data) >= off + 2:
        et = (data[off] << 8) | data[off + 1]
        if et in _VLAN_TYPES:
            off += 4
            continue
        return et in _ETH_IP_TYPES
    return True  # too short to tell: malformed


class _Fragments:
    """In-order re-assembly of forwarded IP fragments, only to learn SDP."""

    __slots__ = ("parts", "total", "ts")

    def __init__(self, ts: int) -> None:
        self.parts: dict[int, bytes] = {}
        self.total = -1
        self.ts = ts

    def add(self, offset: int, chunk: bytes, last: bool) -> bytes | None:
        """Add a chunk of the IP payload; the whole UDP datagram once complete."""
        self.parts[offset] = chunk
        if last:
            self.total = offset + len(chunk)
        if self.total < 0:
            return None
        out = bytearray()
        for off in sorted(self.parts):
            if off != len(out):  # a hole (or overlap): not complete
                return None
            out += self.parts[off]
        return bytes(out) if len(out) == self.total else None


class _Stream:
    """One direction of a SIP TCP connection, re-assembled in order for SDP learning."""

    __slots__ = ("next_seq", "buf")

    def __init__(self) -> None:
        self.next_seq = -1
        self.buf = b""


class Classifier:
    """Decides per frame whether the sensor forwards it; see the module docstring."""

    def __init__(self, ttl_s: float = 7200.0, max_media: int = 200_000,
                 max_flows: int = 50_000, max_fragments: int = 4096) -> None:
        self.counters = ClassifierCounters()
        self._ttl_ns = int(ttl_s * _NS)
        self._max_media = max_media
        self._max_flows = max_flows
        self._max_fragments = max_fragments
        # (address bytes, port) -> last seen capture time (ns)
        self._media: dict[tuple[bytes, int], int] = {}
        # (src, sport, dst, dport) of SIP TCP connections, both directions -> last seen
        self._flows: dict[tuple[bytes, int, bytes, int], int] = {}
        self._streams: dict[tuple[bytes, int, bytes, int], _Stream] = {}
        # (src, dst, ip id) of datagrams whose first fragment was forwarded
        self._frags: dict[tuple[bytes, bytes, int | None], _Fragments] = {}
        self._last_sweep = 0

    # -- public -----------------------------------------------------------
    def accept(self, linktype: int, data: bytes, ts_ns: int = 0) -> bool:
        return bool(self.accept_batch(linktype, [(ts_ns, data)]))

    def accept_batch(self, linktype: int, frames: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
        """The frames to forward, in order. Never raises on packet content."""
        out: list[tuple[int, bytes]] = []
        keep = out.append
        media = self._media
        media_get = media.get
        flows_get = self._flows.get
        errors = 0
        ts = 0
        for frame in frames:
            ts, data = frame
            try:
                d = decode(linktype, data)
            except DecodeError:
                if _is_ip_frame(linktype, data):
                    errors += 1
                continue
            proto = d.proto
            if proto == _UDP:
                if d.is_fragment and d.frag_offset:
                    if self._later_fragment(d, data, ts):
                        keep(frame)
                    continue
                key = (d.dst, d.dport)
                last = media_get(key)
                if last is None:
                    key = (d.src, d.sport)
                    last = media_get(key)
                if last is not None:
                    if ts - last > _REFRESH_NS:
                        media[key] = ts
                    keep(frame)
                    if d.is_fragment:
                        self._first_fragment(d, data, ts)
                    continue
                off = d.payload_offset
                payload = data[off:off + d.payload_len]
                try:
                    if looks_like_sip(payload):
                        keep(frame)
                        if d.is_fragment:
                            self._first_fragment(d, data, ts)
                        else:
                            self._learn_from_message(payload, ts)
                except DecodeError:
                    errors += 1
            elif proto == _TCP:
                fkey = (d.src, d.sport, d.dst, d.dport)
                known = flows_get(fkey) is not None
                off = d.payload_offset
                payload = data[off:off + d.payload_len]
                try:
                    if not known and payload and looks_like_sip(payload):
                        self._add_flow(d.src, d.sport, d.dst, d.dport, ts)
                        known = True
                    if known and (payload or d.tcp_flags & _TCP_FIN_RST):
                        keep(frame)
                        self._flows[fkey] = ts
                        if payload:
                            self._tcp_learn(fkey, d.tcp_seq, payload, ts)
                        if d.tcp_flags & _TCP_RST:
                            self._drop_flow(fkey)
                except DecodeError:
                    errors += 1
        c = self.counters
        n = len(frames)
        c.seen += n
        c.forwarded += len(out)
        c.decode_errors += errors
        c.filtered += n - len(out) - errors
        if ts - self._last_sweep > _SWEEP_NS:
            self._sweep(ts)
        return out

    @property
    def media_endpoints(self) -> int:
        return len(self._media)

    # -- SDP learning -----------------------------------------------------
    def _learn_from_message(self, msg: bytes, ts: int) -> None:
        """Learn media endpoints from a SIP message carrying SDP (alone or in multipart)."""
        if b"v=0" not in msg:
            return
        body: bytes | None = None
        try:
            sip = parse_sip(msg)
            ctype = sip.content_type or ""
            if ctype == "application/sdp":
                body = sip.body
            elif ctype.startswith("multipart/"):
                at = sip.body.find(b"v=0")
                body = sip.body[at:] if at >= 0 else None
        except DecodeError:
            at = msg.find(b"\r\n\r\nv=0")
            body = msg[at + 4:] if at >= 0 else None
        if body:
            self._learn_sdp(body, ts)

    def _learn_sdp(self, body: bytes, ts: int) -> None:
        try:
            sdp = parse_sdp(body)
        except DecodeError:
            return
        for md in sdp.media:
            if not md.port or not md.connection:
                continue
            try:
                addr = str_to_ip(md.connection)
            except ValueError:  # a host name: nothing to match packets against
                continue
            if addr in (b"\0\0\0\0", bytes(16)):  # hold (c=0.0.0.0)
                continue
            rtcp = md.rtcp_port or md.port + 1
            for port in (md.port, rtcp):
                if (addr, port) not in self._media:
                    self.counters.media_learned += 1
                    if len(self._media) >= self._max_media:
                        self._evict(self._media, ts)
                self._media[(addr, port)] = ts

    # -- TCP --------------------------------------------------------------
    def _add_flow(self, src: bytes, sport: int, dst: bytes, dport: int, ts: int) -> None:
        if len(self._flows) >= self._max_flows:
            self._evict(self._flows, ts)
        self._flows[(src, sport, dst, dport)] = ts
        self._flows[(dst, dport, src, sport)] = ts

    def _drop_flow(self, key: tuple[bytes, int, bytes, int]) -> None:
        src, sport, dst, dport = key
        for k in (key, (dst, dport, src, sport)):
            self._flows.pop(k, None)
            self._streams.pop(k, None)

    def _tcp_learn(self, key: tuple[bytes, int, bytes, int], seq: int, payload: bytes,
                   ts: int) -> None:
        """Append in-order payload, learn SDP from each complete message."""
        st = self._streams.get(key)
        if st is None:
            st = self._streams[key] = _Stream()
        if st.next_seq == seq:
            buf = st.buf + payload
        elif st.next_seq != -1 and ((st.next_seq - seq) & 0xFFFFFFFF) < 0x80000000:
            return  # retransmission of data already seen
        elif looks_like_sip(payload):  # (re)synchronise on a message start
            buf = payload
        else:
            st.buf, st.next_seq = b"", -1  # gap: wait for the next message start
            return
        st.next_seq = (seq + len(payload)) & 0xFFFFFFFF
        try:
            messages, rest = split_stream(buf)
        except DecodeError:
            st.buf, st.next_seq = b"", -1
            return
        for msg in messages:
            self._learn_from_message(msg, ts)
        st.buf = rest if len(rest) <= _MAX_STREAM_BUF else b""

    # -- fragments --------------------------------------------------------
    def _first_fragment(self, d: Decoded, data: bytes, ts: int) -> None:
        if len(self._frags) >= self._max_fragments:
            self._evict_frags(ts)
        fr = self._frags[(d.src, d.dst, d.ip_id)] = _Fragments(ts)
        start = d.payload_offset - 8  # the UDP header is part of the fragmented payload
        fr.add(0, data[start:d.payload_offset + d.payload_len], False)

    def _later_fragment(self, d: Decoded, data: bytes, ts: int) -> bool:
        key = (d.src, d.dst, d.ip_id)
        fr = self._frags.get(key)
        if fr is None:
            return False
        off = d.payload_offset
        whole = fr.add(d.frag_offset, data[off:off + d.payload_len], not d.more_fragments)
        if whole is not None:
            del self._frags[key]
            payload = whole[8:]
            if looks_like_sip(payload):
                self._learn_from_message(payload, ts)
        return True

    # -- expiry -----------------------------------------------------------
    def _sweep(self, now: int) -> None:
        self._last_sweep = now
        horizon = now - self._ttl_ns
        for table in (self._media, self._flows):
            stale = [k for k, seen in table.items() if seen < horizon]
            for k in stale:
                del table[k]
        for k in [k for k in self._streams if k not in self._flows]:
            del self._streams[k]
        self._evict_frags(now)

    def _evict(self, table: dict[Any, int], now: int) -> None:
        """Make room: drop expired entries, else the oldest tenth."""
        horizon = now - self._ttl_ns
        stale = [k for k, seen in table.items() if seen < horizon]
        if not stale:
            stale = sorted(table, key=table.__getitem__)[: max(1, len(table) // 10)]
        for k in stale:
            del table[k]

    def _evict_frags(self, now: int) -> None:
        horizon = now - _FRAG_TTL_NS
        for k in [k for k, fr in self._frags.items() if fr.ts < horizon]:
            del self._frags[k]
        while len(self._frags) >= self._max_fragments:
            del self._frags[next(iter(self._frags))]

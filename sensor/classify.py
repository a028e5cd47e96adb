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
* SDP cannot steer capture (protocols/mediaports.py): ports below 1024 and
  well-known service ports are never learned (nor taken from Expect), only
  the first 16 m= lines count (``sdp_endpoints_refused``), and an endpoint of
  an RTP m= line forwards only RTP (version 2, a static or dynamic payload
  type or one its SDP named), RTCP,
  and STUN/ZRTP/DTLS (RFC 7983); other datagrams go on through the rules
  below (``media_not_rtp``). UDPTL (T.38) endpoints forward every datagram;
  Expect carries no kind: RTP-shaped only.
* Learned state expires by capture time (frame timestamps, so replays behave
  like live capture): media endpoints and TCP flows after ``ttl_s`` without
  traffic (2 h), fragments after 30 s; each table is bounded.
* Expected media (``expect``): endpoints the controller learned from SDP
  another sensor saw. Queued thread-safely from the link thread and added to
  the media table at the start of the next ``accept_batch``, like SDP-learned
  ones (same bound, expiry and refresh).
* RTP heuristics (``rtp_heuristics``, default on), only for UDP datagrams
  nothing above accepted: a payload that looks like RTP (version 2, >= 12
  bytes, payload type 0-34 or 96-127) is held, up to 4 per flow
  (src, sport, dst, dport; 4096 flows, LRU, 2 s capture-time window). When
  three held packets of one SSRC advance the sequence by 1..5 and the RTP
  timestamp by 0..16000 per step, the flow is confirmed: the held packets
  are forwarded (capture order, original timestamps) with the third, and the
  flow's receive endpoint (dst, dport) goes into a table checked right after
  the media table (both directions, like media), so later packets cost two
  lookups more than SDP-known media and known RTP pays nothing. RTCP
  (version 2, type 200-204, length consistent) to or from port+1 of either
  endpoint of a confirmed flow is forwarded too. A held packet is counted as
  filtered until it is forwarded (``filtered`` then goes down by it), so
  seen == forwarded + filtered + decode_errors always holds;
  ``filtered_settled`` leaves held packets out and never goes down (what
  heartbeats report: metrics counters must not decrease). ``flush()`` at the
  end of a capture drops what is still held. See docs/DECISIONS.md for the
  thresholds.
* SIP over TLS (counted, never forwarded): a TCP segment on port 5061
  (``SIP_TLS_PORTS``) whose payload starts with a TLS record header
  (content type 20-23, version 3.0-3.4) marks its connection (both
  directions) as SIP over TLS; every later payload segment of it counts in
  ``sip_tls_packets``, each new connection in ``sip_tls_flows``. Encrypted
  signalling is useless to the controller, so it is not forwarded; the
  counters tell the operator why RTP seen in clear has no call. Only TCP
  not already known as SIP pays for the check (two port compares).
"""
from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Iterable

from protocols.errors import DecodeError
from protocols.layers import Decoded, decode, str_to_ip
from protocols.mediaports import MAX_MEDIA_LINES, media_port_ok, rtp_shaped
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
# RTP heuristics (see the module docstring and docs/DECISIONS.md)
_PROBE_PACKETS = 4               # held packets per probed flow
_PROBE_WINDOW_NS = 2 * _NS       # held packets older than this (vs. the newest) are dropped
_MAX_SEQ_STEP = 5                # sequence advance per step: 1..5 (a few losses)
_MAX_TS_STEP = 16000             # RTP timestamp advance per step: 0..2 s at 8 kHz
_SEQ_TS_SSRC = struct.Struct("!HII")
_pos_key = itemgetter(0, 1)
_VLAN_TYPES = frozenset((0x8100, 0x88A8, 0x9100, 0x9200))
# SIP over TLS (RFC 3261 sips: port); other TLS ports are HTTPS & co, not SIP
SIP_TLS_PORTS = frozenset((5061,))
_TLS_CONTENT_TYPES = frozenset((20, 21, 22, 23))  # change_cipher_spec, alert, handshake, data
# RTP payload types taken on an RTP endpoint: the static ones (0-34) and the dynamic
# range (96-127), whatever the receiver's SDP named (senders use the offer's types:
# sipp answers PCMU and receives PCMA), plus any other its SDP named
_ALL_PTS = frozenset(range(35)) | frozenset(range(96, 128))


@dataclass(slots=True)
class ClassifierCounters:
    seen: int = 0
    forwarded: int = 0
    filtered: int = 0
    decode_errors: int = 0
    media_learned: int = 0
    expected_flows: int = 0          # media endpoints added from the controller's Expect
    rtp_heuristic_flows: int = 0     # flows confirmed as RTP by the heuristics
    rtp_heuristic_packets: int = 0   # packets forwarded because of them (RTP and RTCP)
    sip_tls_flows: int = 0           # TCP connections on a SIP-TLS port carrying TLS records
    sip_tls_packets: int = 0         # their segments with payload (filtered: encrypted)
    sdp_endpoints_refused: int = 0   # SDP media endpoints refused: system/service port, too many m= lines
    media_not_rtp: int = 0           # datagrams on an RTP endpoint that were not RTP-shaped (filtered)
    # `filtered` without the packets the heuristics still hold (they may be
    # forwarded later): never decreases; set once per batch (one atomic write)
    filtered_settled: int = 0


def _is_tls_record(payload: bytes) -> bool:
    """Does a TCP payload start with a TLS record header (type 20-23, version 3.0-3.4)?"""
    return len(payload) >= 5 and payload[0] in _TLS_CONTENT_TYPES and payload[1] == 3 \
        and payload[2] <= 4


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


class _Held:
    """A packet held while its flow is probed for RTP."""

    __slots__ = ("batch", "pos", "order", "frame", "ts", "seq", "rtp_ts", "ssrc")

    def __init__(self, batch: int, pos: int, order: int, frame: tuple[int, bytes], ts: int,
                 seq: int, rtp_ts: int, ssrc: int) -> None:
        self.batch, self.pos, self.order, self.frame, self.ts = batch, pos, order, frame, ts
        self.seq, self.rtp_ts, self.ssrc = seq, rtp_ts, ssrc


def _step(a: _Held, seq: int, rtp_ts: int) -> bool:
    """Does (seq, rtp_ts) plausibly follow `a` in one RTP stream?"""
    return (1 <= ((seq - a.seq) & 0xFFFF) <= _MAX_SEQ_STEP
            and ((rtp_ts - a.rtp_ts) & 0xFFFFFFFF) <= _MAX_TS_STEP)


class _Stream:
    """One direction of a SIP TCP connection, re-assembled in order for SDP learning."""

    __slots__ = ("next_seq", "buf")

    def __init__(self) -> None:
        self.next_seq = -1
        self.buf = b""


class Classifier:
    """Decides per frame whether the sensor forwards it; see the module docstring."""

    def __init__(self, ttl_s: float = 7200.0, max_media: int = 200_000,
                 max_flows: int = 50_000, max_fragments: int = 4096, *,
                 rtp_heuristics: bool = True, max_probes: int = 4096) -> None:
        self.counters = ClassifierCounters()
        self.rtp_heuristics = rtp_heuristics
        self._max_probes = max_probes
        self._ttl_ns = int(ttl_s * _NS)
        self._max_media = max_media
        self._max_flows = max_flows
        self._max_fragments = max_fragments
        # (address bytes, port) -> last seen capture time (ns)
        self._media: dict[tuple[bytes, int], int] = {}
        # (address bytes, port) -> RTP payload types its SDP named (_ALL_PTS for the
        # controller's Expect): only RTP-shaped datagrams match; absent: any datagram (T.38)
        self._media_pts: dict[tuple[bytes, int], frozenset[int]] = {}
        # (src, sport, dst, dport) of SIP TCP connections, both directions -> last seen
        self._flows: dict[tuple[bytes, int, bytes, int], int] = {}
        self._streams: dict[tuple[bytes, int, bytes, int], _Stream] = {}
        # (src, sport, dst, dport) of SIP-over-TLS connections, both directions -> last seen
        self._tls: dict[tuple[bytes, int, bytes, int], int] = {}
        # (src, dst, ip id) of datagrams whose first fragment was forwarded
        self._frags: dict[tuple[bytes, bytes, int | None], _Fragments] = {}
        self._last_sweep = 0
        self._last_ts = 0
        # Expect from the controller: lists of (address, port), appended by the link thread
        self._expected_in: deque[list[tuple[bytes, int]]] = deque()
        # RTP heuristics: receive endpoints of confirmed flows -> last seen, and
        # the port+1 endpoints where their RTCP is accepted
        self._heur: dict[tuple[bytes, int], int] = {}
        self._heur_rtcp: dict[tuple[bytes, int], int] = {}
        # (src, sport, dst, dport) -> held packets, least recently probed first
        self._probes: dict[tuple[bytes, int, bytes, int], list[_Held]] = {}
        self._held = 0                   # packets in _probes
        self._batch = 0
        self._order = 0
        self._released: list[tuple[int, int, tuple[int, bytes]]] = []  # (pos, order, frame)

    # -- public -----------------------------------------------------------
    def accept(self, linktype: int, data: bytes, ts_ns: int = 0) -> bool:
        return bool(self.accept_batch(linktype, [(ts_ns, data)]))

    def expect(self, flows: Iterable[tuple[bytes, int]]) -> None:
        """Media endpoints the controller expects. Thread-safe (any thread): they
        are added to the media table at the start of the next `accept_batch`
        that has frames."""
        self._expected_in.append(list(flows))

    def accept_batch(self, linktype: int, frames: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
        """The frames to forward, in order. Never raises on packet content.

        With RTP heuristics, frames held in earlier batches may come out of a
        later one (before that batch's frames, in capture order)."""
        if self._expected_in and frames:
            self._add_expected(frames[0][0])
        out: list[tuple[int, bytes]] = []
        keep = out.append
        media = self._media
        media_get = media.get
        pts_get = self._media_pts.get
        not_rtp = 0
        flows_get = self._flows.get
        heur = self._heur
        heur_get = heur.get
        probing = self.rtp_heuristics
        self._batch += 1
        hpackets = 0
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
                    pts = pts_get(key)
                    if pts is not None:     # an RTP endpoint: RTP/RTCP-shaped datagrams only
                        off = d.payload_offset
                        if d.payload_len < 12 or data[off] >> 6 != 2 or not (
                                (data[off + 1] & 0x7F) in pts or 200 <= data[off + 1] <= 207):
                            if not rtp_shaped(data[off:off + d.payload_len], pts):
                                last = None
                                not_rtp += 1
                if last is not None:
                    if ts - last > _REFRESH_NS:
                        media[key] = ts
                    keep(frame)
                    if d.is_fragment:
                        self._first_fragment(d, data, ts)
                    continue
                if heur:                 # flows confirmed by the RTP heuristics
                    key = (d.dst, d.dport)
                    last = heur_get(key)
                    if last is None:
                        key = (d.src, d.sport)
                        last = heur_get(key)
                    if last is not None:
                        if ts - last > _REFRESH_NS:
                            heur[key] = ts
                        keep(frame)
                        hpackets += 1
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
                    elif probing and d.payload_len >= 8 and payload[0] & 0xC0 == 0x80 \
                            and not d.is_fragment and self._probe(d, payload, frame, ts, len(out)):
                        keep(frame)
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
                    elif not known and payload and (d.dport in SIP_TLS_PORTS
                                                    or d.sport in SIP_TLS_PORTS):
                        self._count_tls(fkey, payload, ts)
                    if known and (payload or d.tcp_flags & _TCP_FIN_RST):
                        keep(frame)
                        self._flows[fkey] = ts
                        if payload:
                            self._tcp_learn(fkey, d.tcp_seq, payload, ts)
                        if d.tcp_flags & _TCP_RST:
                            self._drop_flow(fkey)
                except DecodeError:
                    errors += 1
        if self._released:
            out = self._merge_released(out)
        c = self.counters
        n = len(frames)
        c.seen += n
        c.forwarded += len(out)
        c.decode_errors += errors
        # held packets released now were counted as filtered when they came
        c.filtered += n - len(out) - errors
        c.rtp_heuristic_packets += hpackets
        c.media_not_rtp += not_rtp
        if n:
            self._last_ts = ts
        if ts - self._last_sweep > _SWEEP_NS:
            self._sweep(ts)
        c.filtered_settled = c.filtered - self._held
        return out

    def flush(self) -> None:
        """The capture ended: drop the packets held for RTP probing (they stay
        counted as filtered)."""
        self._probes.clear()
        self._held = 0
        self.counters.filtered_settled = self.counters.filtered

    @property
    def media_endpoints(self) -> int:
        return len(self._media)

    # -- expected media (controller) and RTP heuristics ------------------
    def _add_expected(self, ts: int) -> None:
        media = self._media
        inbox = self._expected_in
        pts = self._media_pts
        while inbox:
            for key in inbox.popleft():
                if not media_port_ok(key[1]):
                    self.counters.sdp_endpoints_refused += 1
                    continue
                if key not in media:
                    self.counters.expected_flows += 1
                    if len(media) >= self._max_media:
                        self._evict(media, ts)
                    pts[key] = _ALL_PTS     # kind unknown: RTP-shaped only
                media[key] = ts

    def _probe(self, d: Decoded, payload: bytes, frame: tuple[int, bytes], ts: int,
               pos: int) -> bool:
        """A version 2 UDP payload nothing else accepted: RTCP of a confirmed
        flow, or RTP probed per flow. True: forward this frame now."""
        b1 = payload[1]
        n = len(payload)
        if 200 <= b1 <= 204:             # RTCP SR, RR, SDES, BYE, APP
            rtcp = self._heur_rtcp
            key = (d.dst, d.dport)
            last = rtcp.get(key)
            if last is None:
                key = (d.src, d.sport)
                last = rtcp.get(key)
            if last is None or ((payload[2] << 8 | payload[3]) + 1) * 4 > n:
                return False
            if ts - last > _REFRESH_NS:
                rtcp[key] = ts
            self.counters.rtp_heuristic_packets += 1
            return True
        pt = b1 & 0x7F
        if n < 12 or 34 < pt < 96 or 12 + (payload[0] & 0x0F) * 4 > n:
            return False
        seq, rtp_ts, ssrc = _SEQ_TS_SSRC.unpack_from(payload, 2)
        flow = (d.src, d.sport, d.dst, d.dport)
        probes = self._probes
        held = probes.pop(flow, None)    # re-inserted last: least recently probed first
        if held is None:
            if len(probes) >= self._max_probes:
                self._held -= len(probes.pop(next(iter(probes))))
            held = []
        else:
            if ts - held[0].ts > _PROBE_WINDOW_NS:
                recent = [h for h in held if ts - h.ts <= _PROBE_WINDOW_NS]
                self._held -= len(held) - len(recent)
                held = recent
            if len(held) >= 2:
                same = [h for h in held if h.ssrc == ssrc]
                if len(same) >= 2 and _step(same[-2], same[-1].seq, same[-1].rtp_ts) \
                        and _step(same[-1], seq, rtp_ts):
                    self._confirm(d, ts, held)
                    return True
        self._order += 1
        held.append(_Held(self._batch, pos, self._order, frame, ts, seq, rtp_ts, ssrc))
        if len(held) > _PROBE_PACKETS:
            del held[0]
        else:
            self._held += 1
        probes[flow] = held
        return False

    def _confirm(self, d: Decoded, ts: int, held: list[_Held]) -> None:
        """The flow is RTP: release its held packets (and the reverse flow's)."""
        c = self.counters
        c.rtp_heuristic_flows += 1
        reverse = self._probes.pop((d.dst, d.dport, d.src, d.sport), [])
        batch = self._batch
        for h in held + reverse:
            self._released.append((h.pos if h.batch == batch else 0, h.order, h.frame))
        self._held -= len(held) + len(reverse)
        c.rtp_heuristic_packets += len(held) + len(reverse) + 1
        heur = self._heur
        if len(heur) >= self._max_media:
            self._evict(heur, ts)
        heur[(d.dst, d.dport)] = ts
        rtcp = self._heur_rtcp
        if len(rtcp) >= self._max_media:
            self._evict(rtcp, ts)
        for addr, port in ((d.dst, d.dport), (d.src, d.sport)):
            if port < 65535:
                rtcp[(addr, port + 1)] = ts

    def _merge_released(self, out: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
        """Insert released held packets where they came in: those of earlier
        batches first, those of this batch before the frames that followed them."""
        released = sorted(self._released, key=_pos_key)
        self._released = []
        merged: list[tuple[int, bytes]] = []
        at = 0
        for pos, _order, frame in released:
            if pos > at:
                merged += out[at:pos]
                at = pos
            merged.append(frame)
        merged += out[at:]
        return merged

    @property
    def probing_flows(self) -> int:
        """Flows with packets held by the RTP heuristics."""
        return len(self._probes)

    @property
    def held_packets(self) -> int:
        """Packets held by the RTP heuristics (at most 4 per probed flow)."""
        return self._held

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
        lines = 0
        c = self.counters
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
            lines += 1
            if lines > MAX_MEDIA_LINES:        # protocols/mediaports.py
                c.sdp_endpoints_refused += 2
                continue
            # RTP transports (RTP/AVP, RTP/SAVPF, UDP/TLS/RTP/SAVP...): RTP/RTCP-shaped
            # datagrams of the named payload types; UDPTL (T.38) and others: any datagram
            pts = _ALL_PTS.union(md.formats) if "RTP" in md.proto.upper() else None
            for port in (md.port, rtcp):
                if not media_port_ok(port):
                    c.sdp_endpoints_refused += 1
                    continue
                key = (addr, port)
                if key not in self._media:
                    c.media_learned += 1
                    if len(self._media) >= self._max_media:
                        self._evict(self._media, ts)
                self._media[key] = ts
                if pts is None:
                    self._media_pts.pop(key, None)
                else:
                    old = self._media_pts.get(key)
                    self._media_pts[key] = pts if old is None or old is _ALL_PTS else old | pts

    # -- TCP --------------------------------------------------------------
    def _count_tls(self, key: tuple[bytes, int, bytes, int], payload: bytes, ts: int) -> None:
        """A payload segment on a SIP-TLS port: counted when its connection is
        (or this segment shows it is) TLS. Never forwarded."""
        tls = self._tls
        if key in tls:
            if ts - tls[key] > _REFRESH_NS:
                tls[key] = ts
        elif _is_tls_record(payload):
            if len(tls) >= self._max_flows:
                self._evict(tls, ts)
            src, sport, dst, dport = key
            tls[key] = tls[(dst, dport, src, sport)] = ts
            self.counters.sip_tls_flows += 1
        else:
            return
        self.counters.sip_tls_packets += 1

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
        for table in (self._media, self._flows, self._heur, self._heur_rtcp, self._tls):
            stale = [k for k, seen in table.items() if seen < horizon]
            for k in stale:
                del table[k]
        probe_horizon = now - _PROBE_WINDOW_NS
        for k in [k for k, held in self._probes.items() if held[-1].ts < probe_horizon]:
            self._held -= len(self._probes.pop(k))
        for k in [k for k in self._streams if k not in self._flows]:
            del self._streams[k]
        for k in [k for k in self._media_pts if k not in self._media]:
            del self._media_pts[k]
        self._evict_frags(now)

    def _evict(self, table: dict[Any, int], now: int) -> None:
        """Make room: drop expired entries, else the oldest tenth."""
        horizon = now - self._ttl_ns
        stale = [k for k, seen in table.items() if seen < horizon]
        if not stale:
            stale = sorted(table, key=table.__getitem__)[: max(1, len(table) // 10)]
        for k in stale:
            del table[k]
        if table is self._media:
            for k in stale:
                self._media_pts.pop(k, None)

    def _evict_frags(self, now: int) -> None:
        horizon = now - _FRAG_TTL_NS
        for k in [k for k, fr in self._frags.items() if fr.ts < horizon]:
            del self._frags[k]
        while len(self._frags) >= self._max_fragments:
            del self._frags[next(iter(self._frags))]

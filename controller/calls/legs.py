"""Leg merge: which SIP dialogs (legs) with different Call-IDs are one call.

A call through a B2BUA or SBC is two or more dialogs, each with its own
Call-ID.  The engine keeps one `Leg` (dialog state, sensors, relation) per
Call-ID and groups legs into one call (controller/calls/calltable.py) when one of
these says they belong together, strongest first:

1. a header naming the other leg's Call-ID (``X-Call-ID``, ``X-CID``; the list
   is configurable): the leg carrying it is the child of the named leg;
2. RFC 7989 ``Session-ID``: both uuids (``<local>;remote=<remote>``) — they
   swap with direction, so the *unordered pair* is the key; the null uuid of an
   initial INVITE matches nothing (a conference focus shares its own uuid with
   every participant: one uuid alone would merge unrelated calls);
3. ``P-Charging-Vector`` ``icid-value`` (IMS charging id, kept end to end);
4. the SDP origin (``o=`` username, session id and version) of the initial
   offer, when an SBC passes it unchanged but rewrites the address: same
   origin, different address, initial INVITEs less than 2 s apart, and an
   origin with at least 6 digits (``o=- 0 0`` identifies nothing);
5. fallback, `MediaCorrelator`: two legs whose RTP carries the same payload
   bytes within a short time (a media relay forwarding between them).

The key functions are pure; `MediaCorrelator` holds a bounded index.
"""
from __future__ import annotations

from collections import deque
from zlib import crc32
from collections.abc import Callable, Container, Iterable
from typing import TYPE_CHECKING

from protocols.callkey import BY_ICID, BY_SDP_ORIGIN, BY_SESSION_ID, LegKey, leg_keys, sdp_origin_key
from protocols.sip import SipMessage

from controller.settings import DEFAULT_LEG_HEADERS

if TYPE_CHECKING:
    from controller.calls.calltable import Call, CallTable
    from controller.calls.dialogs import Dialog
    from controller.media.streams import RtpStream

__all__ = ["Leg", "LegKey", "LegLinker", "leg_keys", "sdp_origin_key", "MediaCorrelator", "BY_MEDIA",
           "BY_SESSION_ID", "BY_ICID", "BY_SDP_ORIGIN", "DEFAULT_LEG_HEADERS"]

BY_MEDIA = "media"

_ORIGIN_WINDOW_NS = 2_000_000_000  # initial INVITEs of two legs with one SDP origin: this close
_RELAY_JITTER_NS = 30_000_000      # a relay's delay varies less than this between packets


class Leg:
    """One dialog (one Call-ID) of a call."""

    __slots__ = ("call_id", "dialog", "started_ns", "last_ns", "sensors", "relation", "sip_packets",
                 "media_now", "pair", "sip_by_sensor", "seen_by", "bye_by")

    def __init__(self, call_id: str, dialog: Dialog, ts_ns: int) -> None:
        self.call_id = call_id
        self.dialog = dialog
        self.started_ns = ts_ns
        self.last_ns = ts_ns                 # last SIP message of this leg
        self.sensors: set[str] = set()       # sensors whose copy of its SIP was kept
        self.relation: tuple[str, str] | None = None  # (Call-ID it was linked to, by what)
        self.sip_packets = 0
        # provenance (controller/calls/provenance.py): SIP packets kept per sensor; sensors that
        # saw any of its SIP (kept or dropped as a mirror copy); sensors that saw its BYE
        self.sip_by_sensor: dict[str, int] = {}
        self.seen_by: set[str] = set()
        self.bye_by: set[str] = set()
        #: audio endpoint each side's latest SDP announced (direct media, `MediaPairs`)
        self.media_now: list[tuple[bytes, int] | None] = [None, None]
        self.pair: frozenset | None = None


class LegLinker:
    """Applies rules 1-4 to each new SIP message of a leg, through the call table.

    ``merge(a, b, flipped)`` (the engine's) joins two calls and returns the one
    kept.  A header naming a Call-ID not seen yet registers it as an alias, so
    that leg joins this call when it appears (the child may come first);
    ``recent`` holds Call-IDs of calls already finished (not revived).
    """

    def __init__(self, table: CallTable, leg_headers: Iterable[str], recent: Container[str],
                 merge: Callable[[Call, Call, bool], Call]) -> None:
        self.table = table
        self.leg_headers = tuple(h.lower() for h in leg_headers)
        self.recent = recent
        self.merge = merge

    def correlate(self, call: Call, leg: Leg, msg: SipMessage, ts_ns: int) -> Call:
        """Merge the call with whatever call the message's correlation keys name."""
        table = self.table
        for key in leg_keys(msg, self.leg_headers):
            kind, value = key
            if kind in self.leg_headers:           # names the other leg's Call-ID
                other = table.get(value)
                if other is None:
                    if value not in self.recent:
                        table.add_alias(call, value)
                        leg.relation = leg.relation or (value, kind)
                    continue
                if other is not call:
                    leg.relation = leg.relation or (value, kind)
                    call = self.merge(call, other, False)
                elif value in call.legs and leg.relation is None and value != leg.call_id:
                    leg.relation = (value, kind)
                continue
            hit = table.keys.get(key)
            if hit is None:
                table.add_key(call, key, leg.call_id, "", ts_ns)
            elif hit[0] is not call and not hit[0].done:
                if leg.relation is None:
                    leg.relation = (hit[1], kind)
                call = self.merge(call, hit[0], False)
        return call

    def correlate_origin(self, call: Call, leg: Leg, sdp: bytes, ts_ns: int) -> Call:
        """Rule 4, on the SDP offer of an initial INVITE."""
        found = sdp_origin_key(sdp)
        if found is None:
            return call
        key, addr = found
        hit = self.table.keys.get(key)
        if hit is None:
            self.table.add_key(call, key, leg.call_id, addr, ts_ns)
            return call
        other, other_leg, other_addr, seen_ns = hit
        if other is call or other.done or other_addr == addr or ts_ns - seen_ns > _ORIGIN_WINDOW_NS:
            return call
        if leg.relation is None:
            leg.relation = (other_leg, BY_SDP_ORIGIN)
        return self.merge(call, other, False)


class MediaCorrelator:
    """Finds legs whose RTP is the same audio relayed (the fallback of leg merge).

    Runs off the packet path: `scan` is called with the engine's once-per-second
    `advance` and reads the payloads new since the last scan of each stream that
    is still probed.  Payloads are sampled by content (byte 17 % 8 == 0), so two
    streams carrying the same bytes sample the same packets; near-constant
    payloads (silence, comfort noise) are skipped.  Two streams of different
    calls match when ``needed`` sampled payloads were seen on both within
    ``window_ns``, with a steady delay, and they can be a relay: samples are
    taken in capture-time order, so the first occurrence of a payload anywhere
    is the original and a later one the relayed copy; the relay receives the
    original where it sends the copy from (one relay address: a dual-homed
    SBC is left to the signalling rules), the copy goes to someone else than
    the original's source (a phone in two calls whose peer echoes its audio is
    not a relay), and sources and destinations differ (music on hold sent by
    one server to many callers has one source).

    Only calls that share a media address with another active call are
    probed (the relay's).  A stream is probed for at most ``probe_ns`` after its first packet and
    until ``max_samples`` non-trivial samples found nothing; calls already
    linked by signalling are not probed.  The index is bounded by time
    (``window_ns``) and by ``max_entries``.
    """

    def __init__(self, window_ns: int = 1_000_000_000, needed: int = 3,
                 probe_ns: int = 60_000_000_000, max_samples: int = 64,
                 max_entries: int = 200_000) -> None:
        self.window_ns = window_ns
        self.needed = needed
        self.probe_ns = probe_ns
        self.max_samples = max_samples
        self.max_entries = max_entries
        self._index: dict[int, tuple[Call, RtpStream, int]] = {}
        self._fifo: deque[tuple[int, int]] = deque()
        # (id original stream, id relayed stream) -> relay delays seen (ns)
        self._votes: dict[tuple[int, int], list[int]] = {}
        self._voters: dict[int, set[tuple[int, int]]] = {}  # id(call) -> its vote keys
        self.samples = 0
        self.matches = 0

    def scan(self, calls: Iterable[Call], now_ns: int) -> list[tuple[Call, Call, bool]]:
        """(earlier call, later call, flipped) for every pair that matched now."""
        samples: list[tuple[int, int, Call, RtpStream]] = []
        # a relay has one address in both legs' SDP: only calls sharing a media
        # address with another call can be relayed legs (phone to phone: never)
        calls = [c for c in calls if not c.done and c.probe_media and c.streams]
        shared: dict[bytes, int] = {}
        for call in calls:
            for addr in call.media_addrs:
                shared[addr] = shared.get(addr, 0) + 1
        for call in calls:
            if not any(shared[a] > 1 for a in call.media_addrs):
                continue
            for stream in call.streams.values():
                if not stream.probe_done:
                    self._sample(call, stream, now_ns, samples)
        # in capture-time order, so the index always holds a payload's first occurrence
        samples.sort(key=lambda x: x[0])
        out: list[tuple[Call, Call, bool]] = []
        index = self._index
        for ts, h, call, stream in samples:
            hit = index.get(h)
            if hit is None or hit[0].done or ts - hit[2] > self.window_ns:
                index[h] = (call, stream, ts)
                self._fifo.append((ts, h))
                continue
            other, orig, seen_ns = hit
            if other is call:
                continue
            # the first occurrence is the original, this one relayed: by one relay
            # address (received on orig.dst, sent from relayed.src), to someone else
            # than the original's source (an echo is not a relay), from another source
            # to another destination (music on hold to many callers is not a relay)
            if orig.dst != stream.src or stream.dst == orig.src or orig.src == stream.src \
                    or orig.dst == stream.dst:
                continue
            pair = self._vote(other, call, orig, stream, ts - seen_ns, orig.sender == stream.sender)
            if pair is not None:
                out.append(pair)
        self._expire(now_ns)
        return out

    def _sample(self, call: Call, stream: RtpStream, now_ns: int,
                samples: list[tuple[int, int, Call, RtpStream]]) -> None:
        """The stream's payloads new since the last scan that are sampled."""
        if now_ns - stream.first_ns > self.probe_ns:
            stream.probe_done = True
            return
        frames = call.frame_data
        frame_ts = call.frame_ts
        base = call.frame_base
        for run in stream.by_pt.values():
            refs = run.refs
            start = run.probed
            if start == len(refs):
                continue
            run.probed = len(refs)
            for ref in refs[start:]:
                if ref < 0:
                    continue
                idx = (ref >> 34) - base
                if idx < 0:
                    continue                         # spilled meanwhile
                frame = frames[idx]
                start = (ref >> 17) & 0x1FFFF
                end = ref & 0x1FFFF
                # sampled by content: one payload byte, so the same bytes are sampled
                # in every stream that carries them (and no copy for most packets)
                if end - start < 32 or frame[start + 17] & 7:
                    continue
                payload = frame[start:end]
                if len(set(payload[:64])) < 12:     # silence, comfort noise, tones
                    continue
                h = crc32(payload)   # not hash(): the same in every process
                self.samples += 1
                stream.probe_samples += 1
                samples.append((frame_ts[idx], h, call, stream))
            if stream.probe_samples >= self.max_samples:
                stream.probe_done = True
                return

    def _vote(self, a: Call, b: Call, orig: RtpStream, relayed: RtpStream, delay: int,
              same: bool) -> tuple[Call, Call, bool] | None:
        """One more payload relayed from `orig` to `relayed` after `delay`: a match once
        ``needed`` of them agree on the delay (a relay's is steady; the same bytes
        recurring in unrelated audio land at random delays)."""
        key = (id(orig), id(relayed))
        delays = self._votes.get(key)
        if delays is None:
            delays = self._votes[key] = []
            self._voters.setdefault(id(a), set()).add(key)
            self._voters.setdefault(id(b), set()).add(key)
        if len(delays) >= self.needed:
            return None                   # matched already
        delays.append(delay)
        if len(delays) < self.needed:
            return None
        if max(delays) - min(delays) > _RELAY_JITTER_NS:
            delays.pop(0)                 # inconsistent: keep looking
            return None
        self.matches += 1
        first, second = (a, b) if a.started_ns <= b.started_ns else (b, a)
        return first, second, not same

    def forget(self, call: Call) -> None:
        """A call ended or was merged: its votes go (its index entries age out)."""
        for key in self._voters.pop(id(call), ()):
            self._votes.pop(key, None)

    def _expire(self, now_ns: int) -> None:
        fifo, index = self._fifo, self._index
        limit = now_ns - 2 * self.window_ns   # a stream scanned late still finds its partner
        while fifo and (fifo[0][0] < limit or len(fifo) > self.max_entries):
            ts, h = fifo.popleft()
            hit = index.get(h)
            if hit is not None and hit[2] == ts:
                del index[h]


#: leg relation of two legs whose final SDPs name the same two media endpoints
BY_DIRECT_MEDIA = "direct-media"


class MediaPairs:
    """Legs whose latest offer/answer names the same two media endpoints.

    A B2BUA (Asterisk with direct media, an SBC that steps out of the media
    path) re-INVITEs both phones to talk to each other: afterwards the
    caller's leg and the callee's leg each name the two phones' endpoints, and
    all RTP flows between the phones, past the PBX.  Two legs in that state at
    the same time are one call (`BY_DIRECT_MEDIA`).  `update` is called with
    the audio endpoint each SDP announces; it returns the other leg (and
    whether its sides run the other way) when the pair is already a live
    leg's, else None.  Hold (a null address) changes nothing.
    """

    def __init__(self) -> None:
        self._by_pair: dict[frozenset, Leg] = {}

    def update(self, leg: Leg, side: int, endpoint: tuple[bytes, int]) -> tuple[Leg, bool] | None:
        leg.media_now[side] = endpoint
        a, b = leg.media_now
        if a is None or b is None or a == b:
            return None
        pair = frozenset((a, b))
        old = leg.pair
        if old is not None and old != pair and self._by_pair.get(old) is leg:
            del self._by_pair[old]
        leg.pair = pair
        other = self._by_pair.get(pair)
        self._by_pair[pair] = leg
        if other is None or other is leg or other.pair != pair:
            return None
        return other, other.media_now[0] != leg.media_now[0]

    def forget(self, legs) -> None:
        for leg in legs:
            if leg.pair is not None and self._by_pair.get(leg.pair) is leg:
                del self._by_pair[leg.pair]

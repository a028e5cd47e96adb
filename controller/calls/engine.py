"""The call engine: routes every packet to its call and tells when a call is over.

Call state lives behind one narrow interface, `CallTable` (controller/calls/calltable.py):
Call-ID -> call, media endpoint (ip bytes, port) -> call, correlation key -> call.
Nothing else holds calls, so several controllers can later each own a set of
calls keyed the same way.  A call is one or more legs (controller/calls/legs.py):
legs with different Call-IDs are merged into one call when a header, a
Session-ID, a charging id, an SDP origin or their relayed media say so.

`CallEngine.process` is the per-packet path.  RTP costs one dict lookup on
(dst ip, dst port) (a second on the source for symmetric RTP), a cached
stream check and a few appends; SIP is parsed only when the payload looks
like SIP.  SIP over TCP goes through `controller.calls.tcpstream` (one reassembler
per direction of a connection), which hands back whole messages with the
frames that carried them.  Time is capture time only: `advance(now)` ends calls whose linger
or inactivity deadline passed, using a lazy heap so packets never touch it.
Malformed input is counted, never raised.
"""
from __future__ import annotations

import heapq
import logging
import os
import tempfile
import re
import struct
from collections import deque
from itertools import count
from pathlib import Path

from protocols.errors import DecodeError
from protocols.layers import Decoded
from protocols.sip import SipMessage, looks_like_sip, parse_sip
from storage.layout import prefix_date, recording_id, recording_prefix

from controller.calls.admission import Admission
from controller.calls.calltable import AMBIGUOUS, Call, CallTable, SharedEndpoint, all_ended
from controller.calls.dialogs import Dialog, parse_truncated
from controller.calls.finished import FinishedCall
from controller.calls.finish import call_summary, finished_call
from controller.calls.late import LateCatcher, LateFrames
from controller.calls.legs import BY_DIRECT_MEDIA, BY_MEDIA, Leg, LegLinker, MediaCorrelator, MediaPairs
from controller.calls.pickup import MediaOnlyCalls, message_hosts
from controller.calls.provenance import note_copy, note_sip
from controller.calls.rules import RecordingRules
from controller.settings import CallConfig
from controller.ingest.shard import BroadcastFrame, ShardIdentity
from controller.calls.spill import CallSpill, remove_leftovers
from controller.media.streams import (NOT_RTP, RTCP, RTP_NEW_STREAM, MediaEndpoint, SdpMedia, sdp_body, sdp_media,
                                sdp_media_checked)
from protocols.mediaports import rtp_shaped
from controller.calls.tcpstream import BROKEN, FIN, MESSAGE, RST, SYN, Chunk, TcpLimits, TcpReassembler

__all__ = ["CallConfig", "Call", "CallTable", "CallEngine", "FinishedCall"]

log = logging.getLogger("spanrec.calls")

_NS = 1_000_000_000
_U32 = struct.Struct("!I")
_CALL_ID_RE = re.compile(rb"^(?:call-id|i)[ \t]*:[ \t]*([^\r\n]+?)[ \t]*\r?$",
                         re.IGNORECASE | re.MULTILINE)
_FRAG_KEEP_NS = 5 * _NS     # how long a fragmented datagram's later fragments are routed
#: CSeq methods that start a call for an unknown Call-ID: the INVITE transaction, and a
#: CANCEL of it (same CSeq number) seen before any other message of the INVITE.
_CALL_START = frozenset(("INVITE", "CANCEL"))
_SYN_FIN_RST = SYN | FIN | RST
#: m= kinds whose transport is RTP: only RTP-shaped datagrams on their ports are media
_RTP_KINDS = frozenset(("audio", "video", "text"))
_MAX_BCAST_SERIALS = 65536  # broadcast TCP frames remembered as kept / not owned (shards)


class _NotOwned:
    """`Chunk.owner` of a TCP message another shard owns (done: nothing joins it)."""

    __slots__ = ()
    done = True


_NOT_OWNED = _NotOwned()


class CallEngine:
    """Transport-free call tracking: packets in (capture-time order), finished calls out."""

    def __init__(self, config: CallConfig | None = None, tcp_limits: TcpLimits | None = None) -> None:
        self.config = config or CallConfig()
        self._tcp = TcpReassembler(tcp_limits)
        self._tcp_serial = count()
        self.table = CallTable()
        self._media_map = self.table.media  # the hot path's one lookup (same dict)
        self._linger_ns = int(self.config.linger_s * _NS)
        self._answered_ns = int(self.config.answered_timeout_s * _NS)
        self._setup_ns = int(self.config.setup_timeout_s * _NS)
        self._recent_ns = int(self.config.recent_call_id_s * _NS)
        self._heap: list[tuple[int, int, Call]] = []
        self._seq = count()
        self._recent: dict[str, int] = {}          # finished Call-ID -> until (ns)
        self._recent_order: deque[tuple[int, str]] = deque()
        self._frags: dict[tuple[bytes, int], tuple[Call, int]] = {}  # (src, ip id) -> call
        self._frag_order: deque[tuple[int, tuple[bytes, int]]] = deque()
        self._c: dict[str, int] = dict.fromkeys((
            "sip_messages", "sip_retransmissions", "sip_errors", "sip_ignored", "sip_after_end",
            "sdp_errors", "rtp_packets", "rtp_unmatched", "rtp_errors", "rtcp_packets",
            "media_other", "relay_legs", "fragments", "sip_reassembled", "calls_started", "calls_finished",
            "internal_errors", "legs_merged", "copies_dropped", "calls_not_recorded",
            "late_packets", "unsignalled_flows", "unsignalled_packets", "unsignalled_dropped",
            "calls_picked_up", "media_ambiguous_packets", "requests_ignored",
            "sdp_endpoints_refused", "media_refused"), 0)
        self._late = LateCatcher(int(self.config.late_window_s * _NS), self._linger_ns)
        self._late_hit = None     # set by _sip_message for a message of a finished call
        #: recording rules (controller/calls/rules.py) for calls that start from now on; may be
        #: replaced at any time (etcd runtime config): each leg is decided once
        self.rules: RecordingRules = self.config.record_rules
        self._not_recorded: dict[str, str] = {}  # leg Call-ID -> why its media is not kept
        self._provisional: set[str] = set()      # legs decided on a truncated message
        self._linker = LegLinker(self.table, self.config.leg_headers, self._recent, self._merge)
        self._media_corr = MediaCorrelator() if self.config.merge_by_media else None
        self._spill_frames = max(1, self.config.spill_frames)
        self._spill_dir = self.config.spill_dir or Path(tempfile.gettempdir()) / f"spanrec-spill-{os.getpid()}"
        self._spill_serial = count()
        self.spilled_calls = 0
        if self.config.spill_dir is not None:     # this controller's own folder (state dir)
            left = remove_leftovers(self._spill_dir)
            if left:
                log.warning("spill files of a previous run deleted (its calls come back from the "
                            "write-ahead log)", extra={"files": left, "dir": str(self._spill_dir)})
        self._rtp_finished = 0  # RTP packets of finished calls (active ones: their streams)
        # SSRC -> {id(call): (call, sender, rtpmap)} of active streams (relay legs)
        self._ssrc_owners: dict[int, dict[int, tuple[Call, int, dict, str]]] = {}
        self._pairs = MediaPairs()           # direct media (legs.py)
        self._msg_addrs: tuple = ()          # IP addresses of the packet carrying the SIP message
        self._pickup = MediaOnlyCalls(self.table, int(self.config.unsignalled_timeout_s * _NS),
                                      self.config.unsignalled_min_packets)
        #: endpoints of calls the recording rules keep signalling-only: their RTP is
        #: neither kept nor taken for media without signalling; -> until (ns)
        self._muted: dict[tuple[bytes, int], int] = {}
        #: INVITE floods: pending calls bounded, failed attempts summarised (admission.py)
        self._admission = Admission(self.config.max_pending_calls,
                                    self.config.attempts_per_source)
        #: sharded controller (controller/ingest/shard.py): this shard's identity; None (one
        #: controller) keeps every path as it was. Set by the Recorder.
        self.shard: ShardIdentity | None = None
        self._not_owned_hit = False           # set by _sip_message: another shard's message
        self._tested = False                  # set by _sip_message: the ownership test ran
        #: broadcast first fragments tested: (src, ip id) -> owned? (their datagram follows)
        self._frag_verdicts: dict[tuple[bytes, int], bool] = {}
        #: broadcast TCP frame serial -> kept by a call (True) / counted not owned (False)
        self._bcast_serials: dict[int, bool] = {}

    @property
    def counters(self) -> dict[str, int]:
        c = dict(self._c)
        c["rtp_packets"] = self._rtp_finished + sum(
            s.packets for call in self.table.calls() for s in call.streams.values())
        c["active_calls"] = len(self.table)
        c["sdp_endpoints_refused"] += self.table.endpoints_refused
        c.update(self._tcp.stats())
        c.update(self._admission.counters)
        c["pending_calls"] = len(self._admission)
        return c

    # -- the packet path ------------------------------------------------------
    def process(self, ts_ns: int, sensor_id: str, linktype: int, data: bytes, d: Decoded) -> bool:
        """Route one packet; True if it belongs to a call (or created one)."""
        try:
            if d.proto == 17:
                ep = self._media_map.get((d.dst, d.dport))
                if ep is not None:
                    code = ep.packet(ts_ns, sensor_id, linktype, data, d, True)
                    if code:
                        self._media_event(code, ep, ts_ns, data, d)
                    return True
                ep = self._media_map.get((d.src, d.sport))
                if ep is not None:  # symmetric RTP: sent from where that side receives
                    code = ep.packet(ts_ns, sensor_id, linktype, data, d, False)
                    if code:
                        self._media_event(code, ep, ts_ns, data, d)
                    return True
                if d.is_fragment and d.sport == 0 and d.dport == 0:
                    return self._fragment(ts_ns, sensor_id, linktype, data, d)
                if self._late:
                    late = self._late.by_endpoint(d.dst, d.dport, d.src, d.sport)
                    if late is not None:   # media of a call already finished
                        self._late.add(late, ts_ns, data)
                        self._c["late_packets"] += 1
                        return True
                if d.payload_len >= 12 and 0x80 <= data[d.payload_offset] < 0xC0:
                    return self._unmatched_rtp(ts_ns, sensor_id, linktype, data, d)
            elif d.proto == 6:
                return self._tcp_segment(ts_ns, sensor_id, linktype, data, d)
            else:
                return False
            return self._signalling(ts_ns, sensor_id, linktype, data, d)
        except Exception:  # noqa: BLE001 - one bad packet must never stop the controller
            self._c["internal_errors"] += 1
            log.exception("packet dropped by an internal error")
            return False

    def duplicate(self, sensor_id: str, data: bytes, d: Decoded) -> None:
        """A mirror copy the deduplicator dropped: counted, per sensor, on the stream
        (RTP) and the call (RTP, RTCP, SIP over UDP) it is a copy of."""
        try:
            if self.shard is not None and data.__class__ is BroadcastFrame:
                # every shard gets (and drops) the second mirror's broadcast copy
                self.shard.counters["broadcast_duplicates"] += 1
            call = None
            if d.proto == 17:
                ep = self._media_map.get((d.dst, d.dport))
                if ep is not None and ep.__class__ is SharedEndpoint:
                    ep = ep.pick(d.src, d.sport)
                if ep is None:
                    ep = self._media_map.get((d.src, d.sport))
                    if ep is not None and ep.__class__ is SharedEndpoint:
                        ep = ep.pick(d.dst, d.dport)
                if ep is not None:
                    call = ep.call
                    off = d.payload_offset
                    if d.payload_len >= 12 and data[off] >> 6 == 2 and not 200 <= data[off + 1] <= 207:
                        ssrc = _U32.unpack_from(data, off + 8)[0]
                        stream = call.streams.get((d.src, d.sport, d.dst, d.dport, ssrc))
                        if stream is not None:
                            stream.copies[sensor_id] = stream.copies.get(sensor_id, 0) + 1
                elif d.payload_len:
                    off = d.payload_offset
                    m = _CALL_ID_RE.search(data, off, off + d.payload_len)
                    if m is not None:
                        cid = m.group(1).decode("utf-8", "replace")
                        call = self.table.get(cid)
                        leg = call.legs.get(cid) if call is not None else None
                        if leg is not None:
                            note_copy(leg, sensor_id, data[off:off + 4])
            if call is not None:
                call.copies[sensor_id] = call.copies.get(sensor_id, 0) + 1
                self._c["copies_dropped"] += 1
        except Exception:  # noqa: BLE001 - bookkeeping must never stop the controller
            self._c["internal_errors"] += 1
            log.exception("duplicate not counted: internal error")

    def _media_event(self, code: int, ep: MediaEndpoint, ts_ns: int, data: bytes, d: Decoded) -> None:
        """Bookkeeping for the packets `MediaEndpoint.packet` did not just count."""
        c = self._c
        if ep.__class__ is SharedEndpoint:
            if code == AMBIGUOUS:
                for m in ep.members:
                    m.call.ambiguous += 1
                c["media_ambiguous_packets"] += 1
                return
            ep = ep.last
        if code == RTP_NEW_STREAM:
            call = ep.call
            self._admission.settle(call)      # media: not a pending attempt
            stream = ep.c_stream
            self._ssrc_owners.setdefault(stream.ssrc, {})[id(call)] = (call, stream.sender, ep.rtpmap,
                                                                       ep.leg)
        elif code == RTCP:
            ep.call.rtcp_packets += 1
            ep.call.rtcp_frames.append(ep.call.frames_held - 1)  # just appended (quality.py)
            c["rtcp_packets"] += 1
        elif code == NOT_RTP:
            call = ep.call
            off = d.payload_offset
            if ep.kind in _RTP_KINDS and not rtp_shaped(data[off:off + d.payload_len]):
                # an RTP port's SDP does not make other datagrams media (T.38 on m=image is)
                call.drop_last_frame()
                call.media_refused += 1
                c["media_refused"] += 1
                return
            call.media_other += 1
            c["media_other"] += 1
            if d.payload_len >= 12 and data[off] == 0x10 and data[off + 4:off + 8] == b"ZRTP":
                # RFC 6189 section 5: first byte 0x10, magic cookie 'ZRTP' at offset 4
                flow = (d.src, d.sport, d.dst, d.dport)
                if flow not in call.zrtp:
                    call.zrtp[flow] = ts_ns
        else:
            c["rtp_errors"] += 1

    def _unmatched_rtp(self, ts_ns: int, sensor_id: str, linktype: int, data: bytes,
                       d: Decoded) -> bool:
        """RTP on an endpoint no SDP announced: a media relay's other leg, or not ours.

        A relay forwards a stream unchanged (same SSRC) from a port of its own.
        The packet joins a call only if exactly one active call already has a
        stream with this SSRC (sipp and friends reuse SSRCs: then it is
        ambiguous and dropped) and the relay's address is one the call's SDPs
        announced; never by SSRC alone.
        """
        off = d.payload_offset
        if 200 <= data[off + 1] <= 207:
            if self.shard is not None and data.__class__ is BroadcastFrame:
                self.shard.counters["not_owned_packets"] += 1    # another shard's RTCP
            else:
                self._c["rtp_unmatched"] += 1
            return False
        owners = self._ssrc_owners.get(_U32.unpack_from(data, off + 8)[0])
        call = None
        if owners is not None and len(owners) == 1:
            call, sender, rtpmap, leg = next(iter(owners.values()))
            if d.dst in call.media_addrs:
                addr, port, side = d.dst, d.dport, 1 - sender
            elif d.src in call.media_addrs:
                addr, port, side = d.src, d.sport, sender
            else:
                call = None
        if call is None:
            return self._unsignalled(ts_ns, sensor_id, linktype, data, d)
        self.table.add_media(call, side, SdpMedia(addr, port, False, rtpmap), leg)
        if port % 2 == 0 and (addr, port + 1) not in self.table.media:
            self.table.add_media(call, side, SdpMedia(addr, port + 1, True, rtpmap), leg)
        self._c["relay_legs"] += 1
        ep = self.table.endpoint_of((addr, port), call)
        code = ep.packet(ts_ns, sensor_id, linktype, data, d, addr == d.dst and port == d.dport)
        if code:
            self._media_event(code, ep, ts_ns, data, d)
        return True

    def _unsignalled(self, ts_ns: int, sensor_id: str, linktype: int, data: bytes, d: Decoded) -> bool:
        """RTP of a flow no SDP announced: a media-only call of its own
        (controller/calls/pickup.py), unless the recording rules muted that endpoint."""
        if self.shard is not None and data.__class__ is BroadcastFrame:
            # broadcast media joins only calls this shard has: never a call of its own
            self.shard.counters["not_owned_packets"] += 1
            return False
        muted = self._muted
        if muted and ((d.dst, d.dport) in muted or (d.src, d.sport) in muted):
            self._c["rtp_unmatched"] += 1
            return False
        pt = data[d.payload_offset + 1] & 0x7F
        if not self.config.record_unsignalled or d.sport < 1024 or d.dport < 1024 \
                or 34 < pt < 96:
            # RTP never runs on a system port (DNS, NetBIOS... can start with 0x80)
            self._c["rtp_unmatched"] += 1
            return False
        call = self._pickup.start(ts_ns, linktype, d)
        self._c["unsignalled_flows"] += 1
        self._schedule(call, ts_ns + self._pickup.idle_ns)
        ep = self._media_map[(d.dst, d.dport)]
        code = ep.packet(ts_ns, sensor_id, linktype, data, d, True)
        if code:
            self._media_event(code, ep, ts_ns, data, d)
        return True

    def _signalling(self, ts_ns: int, sensor_id: str, linktype: int, data: bytes, d: Decoded) -> bool:
        n = d.payload_len
        if n == 0:
            return False
        off = d.payload_offset
        payload = data[off:off + n]
        if not looks_like_sip(payload):
            return False
        return self._sip(ts_ns, sensor_id, linktype, data, d, payload)

    def _sip(self, ts_ns: int, sensor_id: str, linktype: int, data: bytes, d: Decoded,
             payload: bytes) -> bool:
        """One SIP datagram (UDP, or the first IP fragment of one)."""
        self._msg_addrs = (d.src, d.dst)
        broadcast = self.shard is not None and data.__class__ is BroadcastFrame
        call, leg = self._sip_message(ts_ns, linktype, payload, d.is_fragment, False, broadcast)
        if broadcast and d.is_fragment and self._tested and d.ip_id is not None:
            # the datagram rebuilt later follows this verdict (reassembled)
            verdicts = self._frag_verdicts
            if len(verdicts) >= 4096:
                del verdicts[next(iter(verdicts))]
            verdicts[(d.src, d.ip_id)] = not self._not_owned_hit
        if call is None:
            if self._not_owned_hit:
                self.shard.counters["not_owned_packets"] += 1   # type: ignore[union-attr]
                return False
            late = self._late_hit
            if late is None:
                return False
            self._late_hit = None
            self._late.add(late, ts_ns, data)
            self._c["late_packets"] += 1
            return True
        call.add_frame(ts_ns, sensor_id, linktype, data)
        if leg is not None:
            if d.is_fragment and d.ip_id is not None:
                self._remember_fragment(d, call, ts_ns)
            call.sip_packets += 1
            leg.sip_packets += 1
            leg.sensors.add(sensor_id)
            note_sip(leg, sensor_id, payload)
        return True

    def _sip_message(self, ts_ns: int, linktype: int, payload: bytes,
                     truncated_ok: bool, reassembled: bool = False,
                     broadcast: bool = False) -> tuple[Call | None, Leg | None]:
        """Apply one SIP message to its call: (the call, its leg), or (None, None) if
        it belongs to none; a malformed message of a known call gives (that call, None).
        A message of a call already finished sets `_late_hit` (read by `_sip`).
        `broadcast` (a shard, controller/ingest/shard.py): the message came only in broadcast
        frames; one another shard owns is dropped, counted and sets `_not_owned_hit`."""
        c = self._c
        self._late_hit = None     # never left over from a TCP message or a reassembled one
        self._not_owned_hit = False
        self._tested = False
        truncated = False
        try:
            msg = parse_sip(payload)
        except DecodeError:
            c["sip_errors"] += 1
            msg = parse_truncated(payload) if truncated_ok else None
            if msg is None:
                return self._broken_sip_call(payload), None
            truncated = True
        try:  # From/To are parsed lazily: a malformed one must not escape later
            msg.from_uri, msg.to_uri, msg.from_tag, msg.to_tag
        except DecodeError:
            if not truncated:
                c["sip_errors"] += 1
            return self._broken_sip_call(payload), None
        call_id = msg.call_id
        try:
            cseq, cseq_method = msg.cseq
        except DecodeError:
            cseq_method = ""
            cseq = -1
        if not call_id or cseq < 0:
            if not truncated:
                c["sip_errors"] += 1
            return self._broken_sip_call(payload), None
        shard = self.shard
        if shard is not None:
            if broadcast:
                self._tested = True
                sc = shard.counters
                sc["broadcast_messages"] += 1
                if not shard.owns_message(msg):
                    sc["not_owned_messages"] += 1
                    self._not_owned_hit = True
                    return None, None
            else:
                shard.learn(msg)      # routed here: its routing key, as the sensor's
        call = self.table.get(call_id)
        leg = call.legs.get(call_id) if call is not None else None
        if leg is None:
            if call is None and self._late:
                late = self._late.by_call_id(call_id)
                if late is not None:       # a message of a call already finished
                    c["sip_after_end"] += 1
                    self._late_hit = late
                    return None, None
            if cseq_method not in _CALL_START or msg.is_request and msg.method != cseq_method:
                # only INVITE (or its CANCEL) starts a call - the method of the request
                # line, not the CSeq's (scanners send "aaaa sip:x SIP/2.0" with CSeq INVITE);
                # an in-dialog request may pick up media recorded without signalling
                picked = self._pickup_target(msg, cseq_method) if call is None else None
                if picked is None:
                    c["sip_ignored"] += 1
                    if msg.is_request:
                        c["requests_ignored"] += 1
                    return None, None
                call = picked
            if call_id in self._recent:
                c["sip_after_end"] += 1
                return None, None
            if call is None:       # a new call
                call = Call(call_id, ts_ns, linktype)
                self.table.add(call)
                leg = call.legs[call_id]
                c["calls_started"] += 1
                self._schedule(call, ts_ns + self._setup_ns)
                for victim in self._admission.admit(call, self._msg_addrs[0] if self._msg_addrs else b"",
                                                    msg.to_uri or ""):
                    self._drop_pending(victim, ts_ns)
            elif call.media_only:  # media recorded without signalling: this dialog is its
                leg = Leg(call_id, Dialog(), ts_ns)
                self.table.add_leg(call, leg)
                self._pickup.joined(call)
                c["calls_picked_up"] += 1
            else:                  # a leg another leg named (X-Call-ID) before it was seen
                leg = Leg(call_id, Dialog(), ts_ns)
                self.table.add_leg(call, leg)
                c["legs_merged"] += 1
            self._decide(call, call_id, msg, truncated)
        elif reassembled and call_id in self._provisional:
            self._decide(call, call_id, msg, False)   # the whole message: all its headers
        leg.last_ns = ts_ns
        dialog = leg.dialog
        repeat = dialog.is_repeat(msg, cseq, cseq_method, not reassembled)
        if repeat:
            if not reassembled:
                c["sip_retransmissions"] += 1
        else:
            c["sip_messages"] += 1
            call = self._linker.correlate(call, leg, msg, ts_ns)
        was_ended = dialog.ended_ns
        was_answered = dialog.answered_ns
        offer = dialog.apply(msg, ts_ns, cseq, cseq_method, repeat)
        if dialog.answered_ns is not None:
            self._admission.settle(call)
            if was_answered is None and self._answered_ns < self._setup_ns:
                # a short answered timeout is due before the setup deadline scheduled
                self._schedule(call, ts_ns + self._answered_ns)
        if offer is not None:
            call = self._register_sdp(call, offer[0], offer[1], leg, ts_ns)
            if not repeat and msg.is_request and msg.to_tag is None and cseq_method == "INVITE":
                call = self._linker.correlate_origin(call, leg, offer[1], ts_ns)
        if dialog.ended_ns is not None and dialog.ended_ns != was_ended:
            self._schedule(call, dialog.ended_ns + self._linger_ns)
        return call, leg

    # -- leg merge (controller/calls/legs.py has the rules) -------------------------
    def _merge(self, a: Call, b: Call, flip: bool, keep_first: bool = False) -> Call:
        """One call from two: the one that started first keeps everything (`a`
        with `keep_first`: its legs' sides stay, `b`'s are flipped if `flip`)."""
        keep, other = (a, b) if keep_first or a.started_ns <= b.started_ns else (b, a)
        for stream in other.streams.values():
            owners = self._ssrc_owners.get(stream.ssrc)
            if owners is not None and id(other) in owners:
                entry = owners.pop(id(other))
                owners[id(keep)] = (keep, 1 - entry[1] if flip else entry[1], entry[2], entry[3])
        self.table.merge(keep, other, flip)
        self._admission.forget(other)
        if self._media_corr is not None:
            self._media_corr.forget(other)
        if self._not_recorded:
            self._check_recorded(keep)
        self._c["legs_merged"] += len(other.legs)
        self._schedule(keep, self._deadline(keep))
        return keep

    # -- recording rules (controller/calls/rules.py) ---------------------------------
    def _decide(self, call: Call, call_id: str, msg: SipMessage, truncated: bool) -> None:
        """A new leg: record its media or not, by the rules in force now.  A leg
        decided on a truncated message (first IP fragment) is decided again on the
        reassembled one.  The call follows its root leg's decision."""
        decision = self.rules.decide(msg.from_uri, msg.to_uri, msg.headers)
        if truncated:
            self._provisional.add(call_id)
        else:
            self._provisional.discard(call_id)
        if decision.record:
            self._not_recorded.pop(call_id, None)
        else:
            self._not_recorded[call_id] = decision.reason or "not recorded"
            self._check_recorded(call)

    def _not_recorded_reason(self, call: Call) -> str | None:
        """Why the call's media is not recorded (its root leg's decision), or None."""
        return self._not_recorded.get(call.root.call_id)

    def _check_recorded(self, call: Call) -> None:
        """A call whose root leg is not recorded but that has media mapped (that
        leg joined or was merged in later): unmap its media so no more RTP is
        kept; finalize leaves what was kept out of the recording."""
        if not call.endpoints or self._not_recorded_reason(call) is None:
            return
        until = call.last_ns + self._answered_ns + self._recent_ns
        for key in call.endpoints:
            self.table.unmap(key, call)
            self._muted[key] = until
        call.endpoints.clear()   # nor caught as late media once the call is finished
        self._forget_ssrcs(call)
        call.probe_media = False
        if self._media_corr is not None:
            self._media_corr.forget(call)

    def _broken_sip_call(self, payload: bytes) -> Call | None:
        """Malformed SIP of a known call (found by its Call-ID header) stays in its pcap."""
        m = _CALL_ID_RE.search(payload)
        if m is None:
            return None
        call = self.table.get(m.group(1).decode("utf-8", "replace"))
        if call is None:
            return None
        call.sip_errors += 1
        return call

    # -- SIP over TCP -----------------------------------------------------------
    def _tcp_segment(self, ts_ns: int, sensor_id: str, linktype: int, data: bytes,
                     d: Decoded) -> bool:
        """A TCP segment: fed to its stream's reassembler if the connection carries SIP
        (a stream starts at a segment holding a SIP start line)."""
        n = d.payload_len
        if n == 0 and not d.tcp_flags & _SYN_FIN_RST:
            return False  # a bare ACK
        key = (d.src, d.sport, d.dst, d.dport)
        off = d.payload_offset
        payload = data[off:off + n]
        tcp = self._tcp
        if key not in tcp.streams:
            if not payload:
                if not (d.tcp_flags & RST and (d.dst, d.dport, d.src, d.sport) in tcp.streams):
                    return False
            elif not looks_like_sip(payload) and b"SIP/2.0" not in payload:
                return False
        frame = (next(self._tcp_serial), ts_ns, sensor_id, linktype, data)
        chunks = tcp.segment(key, ts_ns, d.tcp_seq, d.tcp_flags, payload, frame)
        if chunks:
            self._tcp_chunks(chunks)
        return True

    def _tcp_chunks(self, chunks: list[Chunk]) -> None:
        """Messages (and lost bytes, late retransmissions) the TCP streams handed back."""
        shard = self.shard
        for ch in chunks:
            if ch.kind == MESSAGE:
                linktype = ch.frames[0][3] if ch.frames else 1
                self._msg_addrs = ()      # (a TCP message: its hosts are in its headers)
                # a shard tests a message only broadcast frames carried (any routed
                # frame: the sensor sent it here, this shard owns it)
                broadcast = shard is not None and \
                    all(f[4].__class__ is BroadcastFrame for f in ch.frames)
                call, leg = self._sip_message(ch.ts_ns, linktype, ch.data, False, False, broadcast)
                if call is not None:
                    ch.owner = call
                    self._tcp_frames(call, ch.frames, leg)
                if broadcast:
                    if self._not_owned_hit:
                        ch.owner = _NOT_OWNED
                    self._broadcast_frames(ch.frames, not self._not_owned_hit)
            elif ch.kind == BROKEN:
                call = self._broken_sip_call(ch.data)
                if call is not None:
                    ch.owner = call
                    self._tcp_frames(call, ch.frames)
            else:  # RETRANSMISSION of messages already delivered
                done: set[int] = set()
                ours = not_ours = False
                for m in ch.of:
                    call = m.owner
                    if call is _NOT_OWNED:
                        not_ours = True
                        continue
                    ours = True
                    if call is not None and not call.done and id(call) not in done:
                        done.add(id(call))
                        self._tcp_frames(call, ch.frames)
                if shard is not None and (ours or not_ours):
                    self._broadcast_frames(ch.frames, ours)

    def _broadcast_frames(self, frames: list, ours: bool) -> None:
        """A shard's bookkeeping of broadcast TCP frames: a frame that carried only
        messages another shard owns is counted once in `not_owned_packets`; one that
        also carried a message of this shard's is not (or no longer) counted."""
        seen = self._bcast_serials
        delta = 0
        for f in frames:
            if f[4].__class__ is not BroadcastFrame:
                continue
            serial = f[0]
            state = seen.get(serial)
            if state is None:
                if len(seen) >= _MAX_BCAST_SERIALS:
                    del seen[next(iter(seen))]
                seen[serial] = ours
                if not ours:
                    delta += 1
            elif ours and state is False:
                seen[serial] = True
                delta -= 1
        if delta:
            self.shard.counters["not_owned_packets"] += delta    # type: ignore[union-attr]

    @staticmethod
    def _tcp_frames(call: Call, frames: list, leg: Leg | None = None) -> None:
        """Keep the frames of a TCP message in its call (each frame once per call)."""
        seen = call.tcp_frames
        if seen is None:
            seen = call.tcp_frames = set()
        last = call.last_ns
        for serial, ts, sensor_id, linktype, data in frames:
            if serial in seen:
                continue
            seen.add(serial)
            call.add_frame(ts, sensor_id, linktype, data)
            call.sip_packets += 1
            if leg is not None:
                leg.sip_packets += 1
                leg.sensors.add(sensor_id)
                note_sip(leg, sensor_id, b"")    # (a segment: no start line to read)
            if ts > last:
                last = ts
        call.last_ns = last

    def _register_sdp(self, call: Call, side: int, body: bytes, leg: Leg, ts_ns: int) -> Call:
        """Map the media an SDP announces to the call; returns the call, which may
        have absorbed another (media recorded without signalling, direct media)."""
        if self._not_recorded and self._not_recorded_reason(call) is not None:
            self._mute(body, ts_ns)
            return call  # signalling only: its media is never mapped, so no RTP is kept
        try:
            media, refused = sdp_media_checked(body)
        except DecodeError:
            self._c["sdp_errors"] += 1
            return call
        if refused:
            call.endpoints_refused += refused
            self._c["sdp_endpoints_refused"] += refused
        seen: set[str] = set()
        audio: tuple[bytes, int] | None = None
        for m in media:
            key = (m.addr, m.port)
            prev = self._media_map.get(key)
            if prev is not None:
                call = self._adopt(call, prev, side)
            self.table.add_media(call, side, m, leg.call_id)
            if m.security is not None and m.kind not in seen:   # the first m= line of a kind
                seen.add(m.kind)
                call.security.append((ts_ns, leg.call_id, side, m.kind, m.security))
                if m.kind == "audio" and not m.rtcp:
                    audio = key
        if audio is not None:
            hit = self._pairs.update(leg, side, audio)
            if hit is not None:
                call = self._direct_media(call, leg, hit[0], hit[1])
        return call

    def _adopt(self, call: Call, prev, side: int) -> Call:
        """An SDP of `call` names an endpoint of a media-only call: it takes it over."""
        members = prev.members if prev.__class__ is SharedEndpoint else (prev,)
        for ep in members:
            other = ep.call
            if other is not call and other.media_only and not other.done:
                self._pickup.forget(other)
                call = self._merge(call, other, ep.side != side, keep_first=True)
                self._pickup.joined(call)
                self._c["calls_picked_up"] += 1
        return call

    def _direct_media(self, call: Call, leg: Leg, other_leg: Leg, flip: bool) -> Call:
        """Two legs whose final SDPs name the same two endpoints: one call."""
        other = self.table.get(other_leg.call_id)
        if other is None or other is call or other.done or all_ended(other):
            return call
        later = leg if leg.started_ns >= other_leg.started_ns else other_leg
        if later.relation is None:
            earlier = other_leg if later is leg else leg
            later.relation = (earlier.call_id, BY_DIRECT_MEDIA)
        return self._merge(call, other, flip)

    def _mute(self, body: bytes, ts_ns: int) -> None:
        """Endpoints of a call not recorded: its RTP must not become a media-only call."""
        try:
            media = sdp_media(body)
        except DecodeError:
            return
        until = ts_ns + self._answered_ns + self._recent_ns
        for m in media:
            self._muted[(m.addr, m.port)] = until
        if len(self._muted) > 65536:
            for key in [k for k, t in self._muted.items() if t <= ts_ns]:
                del self._muted[key]

    def _pickup_target(self, msg: SipMessage, cseq_method: str) -> Call | None:
        """A media-only call an in-dialog request of an unknown Call-ID names: by the
        endpoints of its SDP, else by the hosts of the request (one candidate only)."""
        if not msg.is_request or msg.to_tag is None or not self._pickup:
            return None
        if msg.body:
            body = sdp_body(msg.content_type, msg.body)
            if body is not None:
                try:
                    for m in sdp_media(body):
                        ep = self._media_map.get((m.addr, m.port))
                        if ep is not None and ep.__class__ is not SharedEndpoint and ep.call.media_only:
                            return ep.call
                except DecodeError:
                    pass
        return self._pickup.by_hosts(message_hosts(msg).union(self._msg_addrs))

    # -- IP fragments: each fragment is a frame of its call's pcap (the later ones
    # follow the first); the datagram rebuilt from them (protocols.fragments) is parsed --
    def reassembled(self, ts_ns: int, sensor_id: str, linktype: int, data: bytes,
                    d: Decoded, broadcast: int = 0, ip_id: int | None = None) -> bool:
        """A UDP datagram rebuilt from IP fragments that `process` already saw: its SIP
        message (and SDP) is applied to the call, but it is no frame of the call's
        pcap (its fragments are).  `linktype` is the fragments' (a new call's pcap);
        `d` is `data` decoded.  True if it belongs to a call.
        `broadcast` (a shard): the datagram was rebuilt from this many fragments, all
        from broadcast batches: kept only if its SIP message is this shard's (or, not
        SIP, its endpoints are a call's of this shard), else counted as not owned; a
        datagram whose first fragment (`ip_id`) was tested already follows that verdict."""
        try:
            n = d.payload_len
            if d.proto != 17 or n == 0 or d.is_fragment:
                return False
            off = d.payload_offset
            payload = data[off:off + n]
            if not looks_like_sip(payload):
                if broadcast and self.shard is not None and \
                        (d.dst, d.dport) not in self._media_map and \
                        (d.src, d.sport) not in self._media_map:
                    self.shard.counters["not_owned_packets"] += broadcast
                return False
            self._msg_addrs = (d.src, d.dst)
            test = bool(broadcast) and self.shard is not None
            if test and ip_id is not None:
                verdict = self._frag_verdicts.pop((d.src, ip_id), None)
                if verdict is not None:
                    test = False                 # decided (and counted) on its first fragment
                    if not verdict:
                        self.shard.counters["not_owned_packets"] += broadcast - 1  # type: ignore[union-attr]
                        return False
            call, _leg = self._sip_message(ts_ns, linktype, payload, False, True, test)
            if call is None:
                if self._not_owned_hit:
                    self.shard.counters["not_owned_packets"] += broadcast  # type: ignore[union-attr]
                return False
            self._c["sip_reassembled"] += 1
            return True
        except Exception:  # noqa: BLE001 - one bad packet must never stop the controller
            self._c["internal_errors"] += 1
            log.exception("reassembled datagram dropped by an internal error")
            return False

    def _remember_fragment(self, d: Decoded, call: Call, ts_ns: int) -> None:
        key = (d.src, d.ip_id)
        self._frags[key] = (call, ts_ns)
        self._frag_order.append((ts_ns + _FRAG_KEEP_NS, key))

    def _fragment(self, ts_ns: int, sensor_id: str, linktype: int, data: bytes, d: Decoded) -> bool:
        self._c["fragments"] += 1
        hit = self._frags.get((d.src, d.ip_id))
        if hit is None or hit[0].done:
            return False
        hit[0].add_frame(ts_ns, sensor_id, linktype, data)
        return True

    # -- time -----------------------------------------------------------------
    def _schedule(self, call: Call, deadline_ns: int) -> None:
        heapq.heappush(self._heap, (deadline_ns, next(self._seq), call))

    def _deadline(self, call: Call) -> int:
        """When the call is over unless something happens: every leg ended (plus
        linger) or idle (answered: no packet of the call; not answered: no SIP of
        that leg — or no packet at all for a one-leg call, early media)."""
        if call.media_only:
            return call.last_ns + self._pickup.idle_ns
        deadline = 0
        one = len(call.legs) == 1
        for leg in call.legs.values():
            dialog = leg.dialog
            if dialog.ended_ns is not None:
                t = dialog.ended_ns + self._linger_ns
            elif dialog.answered_ns is not None:
                t = call.last_ns + self._answered_ns
            else:
                t = (call.last_ns if one else leg.last_ns) + self._setup_ns
            if t > deadline:
                deadline = t
        return deadline

    def advance(self, now_ns: int, correlate: bool = True,
                elsewhere: frozenset[str] = frozenset()) -> list[FinishedCall]:
        """Calls whose linger or inactivity deadline is at or before `now_ns`;
        `correlate`: also look for legs carrying the same relayed media;
        `elsewhere`: sensors on another timeline than `now_ns` (order.py
        `apart`): a call seen only by them is not ended by this time."""
        if self._tcp.streams:
            chunks = self._tcp.advance(now_ns)
            if chunks:
                self._tcp_chunks(chunks)
        if correlate and self._media_corr is not None and self._media_map:
            for first, second, flip in self._media_corr.scan(self.table.calls(), now_ns):
                if first.done or second.done or first is second:
                    continue
                child = min(second.legs.values(), key=lambda leg: leg.started_ns)
                if child.relation is None:
                    child.relation = (first.root.call_id, BY_MEDIA)
                self._merge(first, second, flip)
        self._spill()
        out = self.end_due(now_ns, elsewhere)
        self._expire(now_ns)
        return out

    @property
    def deadlines(self) -> list:
        """The heap of (deadline, n, call), earliest first — entries may be stale
        (a call's deadline only moves later, or is rescheduled earlier with a new
        entry). The same list for the engine's life: it is compacted in place."""
        return self._heap

    def end_due(self, now_ns: int, elsewhere: frozenset[str] = frozenset()) -> list[FinishedCall]:
        """End the calls whose deadline is at or before `now_ns`, nothing else.

        The Recorder calls it before a packet stamped after some deadline, so a
        call never takes a packet stamped after its own deadline and the outcome
        does not depend on which other packets this engine sees (one shard or
        several, docs/DECISIONS.md "Sharding").  A call is finished *at its
        deadline*, not at `now_ns`: its late window and the recent Call-IDs run
        from there."""
        out: list[FinishedCall] = []
        kept: list[Call] = []
        heap = self._heap
        while heap and heap[0][0] <= now_ns:
            _, _, call = heapq.heappop(heap)
            if call.done:
                continue
            deadline = self._deadline(call)
            if deadline > now_ns:
                self._schedule(call, deadline)
                continue
            if elsewhere and call.sensors and call.sensors <= elsewhere:
                kept.append(call)
                continue
            done = self._finish(call, deadline, "timeout")
            if done is not None:
                out.append(done)
        for call in kept:
            self._schedule(call, self._deadline(call))
        return out

    def _forget_ssrcs(self, call: Call) -> None:
        """The call's streams no longer name it as a relay candidate."""
        for stream in call.streams.values():
            owners = self._ssrc_owners.get(stream.ssrc)
            if owners is not None:
                owners.pop(id(call), None)
                if not owners:
                    del self._ssrc_owners[stream.ssrc]

    def late_due(self, now_ns: int, everything: bool = False) -> list[LateFrames]:
        """Packets of finished calls, ready to be added to their recordings."""
        return self._late.due(now_ns, everything) if self._late or everything else []

    def late_oldest(self) -> int:
        """Capture time of the oldest late packet not yet handed out (or a huge value)."""
        return self._late.oldest()

    def close(self) -> None:
        """Remove the spill folder if this engine made it and it is empty."""
        if self.config.spill_dir is None:
            try:
                self._spill_dir.rmdir()
            except OSError:
                pass

    def _spill(self) -> None:
        """Move the frames of calls holding too many to their spill files."""
        limit = self._spill_frames
        for call in self.table.calls():
            if len(call.frame_data) < limit or call.done:
                continue
            spill = call.spill
            if spill is None:
                spill = call.spill = CallSpill(self._spill_dir, f"{next(self._spill_serial)}")
                self.spilled_calls += 1
            spill.spill_frames(call.frame_ts, call.frame_data)
            call.frame_base += len(call.frame_data)
            call.frame_data.clear()
            call.frame_ts.clear()
            for stream in call.streams.values():
                stream.compact()
                for run in stream.by_pt.values():
                    if run.refs:
                        offset, n = spill.spill_run(run.refs, run.timestamps)
                        run.spilled.append((offset, n, 0))
                        run.n_spilled += n
                        run.probed = max(0, run.probed - n)
                        del run.refs[:]
                        del run.timestamps[:]

    def finish_all(self, reason: str = "capture-end") -> list[FinishedCall]:
        """End every active call (capture over, shutdown)."""
        chunks = self._tcp.flush()
        if chunks:
            self._tcp_chunks(chunks)
        calls = sorted(self.table.calls(), key=lambda c: c.started_ns)
        out = []
        for call in calls:
            done = self._finish(call, call.last_ns, reason)
            if done is not None:
                out.append(done)
        self._heap.clear()
        self._admission.flush()
        self._ssrc_owners.clear()
        self._frags.clear()
        self._frag_order.clear()
        return out

    def _expire(self, now_ns: int) -> None:
        order = self._recent_order
        while order and order[0][0] <= now_ns:
            until, cid = order.popleft()
            if self._recent.get(cid) == until:
                del self._recent[cid]
        if self._muted and len(self._muted) > 4096:
            for key in [k for k, t in self._muted.items() if t <= now_ns]:
                del self._muted[key]
        forder = self._frag_order
        while forder and forder[0][0] <= now_ns:
            _, key = forder.popleft()
            hit = self._frags.get(key)
            if hit is not None and hit[1] + _FRAG_KEEP_NS <= now_ns:
                del self._frags[key]

    def _finish(self, call: Call, now_ns: int, reason: str) -> FinishedCall | None:
        """The call is over: its FinishedCall (None: a media-only call too small to keep)."""
        low_priority = False
        if self._admission.is_pending(call) and not call.streams and not call.media_only:
            # never answered, no media: a failed attempt (admission.py): summarised
            # beyond its source's budget, else written after the real calls
            src, dest = self._admission.source_of(call)
            self._admission.forget(call)
            if self._admission.failed_attempt(call, src, dest, now_ns):
                self._drop_pending(call, now_ns, summarise=False)
                return None
            low_priority = True
        self._admission.forget(call)
        call.done = True
        if self._media_corr is not None:
            self._media_corr.forget(call)
        rtpmap: dict[int, tuple[str, int, int]] = {}
        for key in call.endpoints:
            ep = self.table.endpoint_of(key, call)
            if ep is not None:
                rtpmap.update(ep.rtpmap)
        self.table.remove(call)
        self._forget_ssrcs(call)
        self._pairs.forget(call.legs.values())
        if call.media_only:
            self._pickup.forget(call)
            packets = call.frames_held
            if not self._pickup.looks_like_media(call):
                self._c["unsignalled_dropped"] += packets
                self._c["calls_finished"] += 1
                if call.spill is not None:
                    call.spill.close()
                return None
            self._c["unsignalled_packets"] += packets
        rid = recording_id(call.first_call_id, call.started_ns)
        self._late.register(rid, recording_prefix(prefix_date(call.started_ns), rid), call.linktype,
                            call.call_ids, call.endpoints, now_ns)
        until = now_ns + self._recent_ns
        for cid in call.call_ids:
            self._recent[cid] = until
            self._recent_order.append((until, cid))
        self._c["calls_finished"] += 1
        self._rtp_finished += sum(s.packets for s in call.streams.values())
        legs = call.ordered_legs()
        for leg in legs:
            leg.dialog.close(call.last_ns, reason)  # keeps an earlier end (BYE ...)
        why_not = self._not_recorded.get(legs[0].call_id) if self._not_recorded else None
        if self._not_recorded or self._provisional:
            for leg in legs:
                self._not_recorded.pop(leg.call_id, None)
                self._provisional.discard(leg.call_id)
        if why_not is not None:
            self._c["calls_not_recorded"] += 1
        streams = sorted(call.streams.values(), key=lambda s: s.first_ns)
        for s in streams:
            for pt, enc in s.rtpmap.items():
                rtpmap.setdefault(pt, enc)
        finished = finished_call(call, legs, streams, rtpmap, why_not)
        # the frames now belong to the recording; a TCP stream may still name this call
        # for a while (a late retransmission): it must not keep them alive
        call.frame_ts, call.frame_data, call.tcp_frames, call.spill = [], [], None, None
        finished.low_priority = low_priority    # the writer takes real calls first
        return finished

    def _drop_pending(self, call: Call, now_ns: int, summarise: bool = True) -> None:
        """A pending call evicted by the flood bound (`summarise`: counted into the
        attempt summary), or a failed attempt summarised: gone, never written."""
        if summarise:
            src, dest = self._admission.source_of(call)
            self._admission.summarise(src, dest)
        self._admission.forget(call)
        call.done = True
        if self._media_corr is not None:
            self._media_corr.forget(call)
        self.table.remove(call)
        self._forget_ssrcs(call)
        self._pairs.forget(call.legs.values())
        until = now_ns + self._recent_ns
        for cid in call.call_ids:       # its later messages are not a new call
            self._recent[cid] = until
            self._recent_order.append((until, cid))
            self._not_recorded.pop(cid, None)
            self._provisional.discard(cid)
        if call.spill is not None:
            call.spill.close()
        self._c["calls_finished"] += 1
        # the heap still names it until its deadline: keep only the shell
        call.frame_ts, call.frame_data, call.streams, call.tcp_frames, call.spill = [], [], {}, None, None
        call.legs = {}
        if len(self._heap) > 4 * len(self.table) + 4096:
            # in place: the Recorder holds this list (`deadlines`) through a batch
            self._heap[:] = [e for e in self._heap if not e[2].done]
            heapq.heapify(self._heap)

    # -- status ---------------------------------------------------------------
    def active(self) -> list[dict]:
        """One summary per active call, oldest first."""
        return [call_summary(call) for call in sorted(self.table.calls(), key=lambda c: c.started_ns)]

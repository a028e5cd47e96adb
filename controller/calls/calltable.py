"""Call state, and the one table it is reachable from.

`CallTable` is the narrow interface behind which every active call lives:
Call-ID -> call, media endpoint (ip bytes, port) -> call, correlation key ->
call.  Nothing else holds calls, so several controllers can later each own a
set of calls keyed the same way.  A call is one or more legs (dialogs with
their own Call-ID, controller/calls/legs.py); `merge` joins two calls when a leg of
one turns out to belong to the other.
"""
from __future__ import annotations

from array import array
from collections.abc import Callable

from controller.calls.dialogs import Dialog
from controller.calls.legs import Leg, LegKey
from controller.calls.spill import CallSpill
from controller.media.streams import MediaEndpoint, MediaSecurity, RtpStream, SdpMedia

__all__ = ["Call", "CallTable", "SharedEndpoint", "AMBIGUOUS", "all_ended", "MAX_CALL_ENDPOINTS"]

#: media endpoints one call may map (SDPs of all its legs and re-INVITEs); more
#: are refused and counted (`Call.endpoints_refused`, `CallTable.endpoints_refused`)
MAX_CALL_ENDPOINTS = 128

_REF_FRAME_SHIFT = 34  # streams.pack_ref: frame index << 34


class Call:
    """Everything recorded about one call while it is active."""

    __slots__ = ("legs", "started_ns", "last_ns", "linktype", "frame_ts", "frame_data",
                 "other_linktype", "sensors", "last_sensor", "streams", "endpoints", "media_addrs",
                 "rtcp_packets", "media_other", "sip_packets", "sip_errors", "done", "tcp_frames",
                 "aliases", "keys", "copies", "probe_media", "frame_base", "spill", "rtcp_frames",
                 "security", "zrtp", "media_only", "ambiguous", "endpoints_refused",
                 "media_refused")

    def __init__(self, call_id: str, ts_ns: int, linktype: int) -> None:
        self.legs: dict[str, Leg] = {call_id: Leg(call_id, Dialog(), ts_ns)}
        self.started_ns = ts_ns
        self.last_ns = ts_ns
        self.linktype = linktype
        self.frame_ts: list[int] = []
        self.frame_data: list[bytes] = []
        self.other_linktype: list[int] = []   # frame indexes not written to call.pcap
        self.sensors: set[str] = set()
        self.last_sensor: str | None = None
        self.streams: dict[tuple, RtpStream] = {}
        self.endpoints: list[tuple[bytes, int]] = []
        self.media_addrs: set[bytes] = set()  # every IP its SDPs announced
        self.rtcp_packets = 0
        self.rtcp_frames: list[int] = []      # frame indexes of its RTCP packets (quality.py)
        self.media_other = 0                  # non-RTP datagrams on media ports
        self.sip_packets = 0
        self.sip_errors = 0
        self.done = False
        self.tcp_frames: set[int] | None = None  # serials of the TCP frames kept (no doubles)
        self.aliases: set[str] = set()        # Call-IDs named by a leg header, not seen yet
        self.keys: set[LegKey] = set()        # correlation keys registered in the table
        self.copies: dict[str, int] = {}      # sensor -> mirror copies dropped (SIP, RTCP, RTP)
        self.probe_media = True               # MediaCorrelator looks at its streams
        self.frame_base = 0                   # frames before the in-memory ones: spilled
        self.spill: CallSpill | None = None   # controller/calls/spill.py, for long calls
        #: every SDP media line's encryption, in time order: (ts, leg Call-ID, side of the
        #: SDP's author, media kind, MediaSecurity) - what each side encrypts its media with
        self.security: list[tuple[int, str, int, str, MediaSecurity]] = []
        #: media flows (src, sport, dst, dport) that carried ZRTP -> capture time of the first
        self.zrtp: dict[tuple[bytes, int, bytes, int], int] = {}
        self.media_only = False               # no signalling seen yet (controller/calls/pickup.py)
        self.ambiguous = 0                    # packets of a shared endpoint it may own, kept by none
        self.endpoints_refused = 0            # SDP endpoints over MAX_CALL_ENDPOINTS or on refused ports
        self.media_refused = 0                # non-RTP datagrams on an RTP endpoint: not kept

    def drop_last_frame(self) -> None:
        """Forget the frame just added (a datagram on a media port that is not media)."""
        idx = self.frame_base + len(self.frame_data) - 1
        self.frame_data.pop()
        self.frame_ts.pop()
        if self.other_linktype and self.other_linktype[-1] == idx:
            self.other_linktype.pop()

    def add_frame(self, ts_ns: int, sensor_id: str, linktype: int, data: bytes) -> int:
        """Keep a packet for call.pcap; returns its frame index."""
        self.frame_ts.append(ts_ns)
        self.frame_data.append(data)
        self.last_ns = ts_ns
        if sensor_id != self.last_sensor:
            self.sensors.add(sensor_id)
            self.last_sensor = sensor_id
        idx = self.frame_base + len(self.frame_data) - 1
        if linktype != self.linktype:
            self.other_linktype.append(idx)
        return idx

    @property
    def frames_held(self) -> int:
        """Frames of the call so far (spilled and in memory)."""
        return self.frame_base + len(self.frame_data)

    @property
    def call_ids(self) -> list[str]:
        """Call-IDs of its legs: the root leg first, then by start."""
        return [leg.call_id for leg in self.ordered_legs()]

    @property
    def first_call_id(self) -> str:
        return self.root.call_id

    def ordered_legs(self) -> list[Leg]:
        legs = sorted(self.legs.values(), key=lambda leg: leg.started_ns)
        root = self.root
        return [root] + [leg for leg in legs if leg is not root]

    @property
    def root(self) -> Leg:
        """The original caller's leg: the earliest leg not linked to another."""
        legs = self.legs.values()
        free = [leg for leg in legs if leg.relation is None]
        return min(free or legs, key=lambda leg: leg.started_ns)

    @property
    def dialog(self) -> Dialog:
        return self.root.dialog


def all_ended(call: Call) -> bool:
    """Every dialog of the call ended (BYE, final error): it only lingers now."""
    return all(leg.dialog.ended_ns is not None for leg in call.legs.values())


#: `SharedEndpoint.packet`: several calls could own the packet; it went to none
AMBIGUOUS = 5


class SharedEndpoint:
    """A receive endpoint announced by several active calls at once: a media
    server, IVR or gateway that answers every call on one IP:port.

    A packet sent to it (or from it, symmetric RTP) belongs to the call whose
    SDPs name the packet's *far* end: the far end is announced by the other
    side of that call (an endpoint of its own in the table); failing that (NAT,
    latching: the far end sends from elsewhere) the one call whose SDPs named
    the far end's address; failing that the one call still in its dialog
    (the others only linger after BYE).  Otherwise the packet is ambiguous:
    counted in every candidate call, kept in none — one customer's voice is
    never put into another customer's recording.  A flow's owner is cached.
    """

    __slots__ = ("members", "media", "flows", "last")

    def __init__(self, media: dict, members: list[MediaEndpoint]) -> None:
        self.media = media
        self.members = members
        self.flows: dict[tuple[bytes, int], MediaEndpoint] = {}
        self.last: MediaEndpoint | None = None     # the member of the last packet

    def member(self, call: Call) -> MediaEndpoint | None:
        for m in self.members:
            if m.call is call:
                return m
        return None

    def put(self, ep: MediaEndpoint) -> None:
        """Add (or replace) the endpoint of ep.call."""
        self.members = [m for m in self.members if m.call is not ep.call] + [ep]
        self.flows.clear()

    def drop(self, call: Call) -> MediaEndpoint | SharedEndpoint | None:
        """Remove the call; returns what the table should hold instead when
        the endpoint is no longer shared (the last member, or self)."""
        self.members = [m for m in self.members if m.call is not call]
        self.flows.clear()
        if len(self.members) == 1:
            return self.members[0]
        if not self.members:
            raise AssertionError("a shared endpoint lost every member")
        return None

    def moved(self, old: Call, new: Call, flip: bool) -> MediaEndpoint | None:
        """`old` was merged into `new`: its member now belongs to `new` (one per call)."""
        mine = [m for m in self.members if m.call is old]
        for m in mine:
            m.call = new
            if flip:
                m.side = 1 - m.side
        if mine:
            kept = [m for m in self.members if m.call is not new] + [mine[-1]]
            self.members = kept
        self.flows.clear()
        return self.members[0] if len(self.members) == 1 else None

    def pick(self, addr: bytes, port: int) -> MediaEndpoint | None:
        """The member whose call owns the flow with far end (addr, port), or None."""
        hit = self.flows.get((addr, port))
        if hit is not None:
            return hit
        members = self.members
        found: MediaEndpoint | None = None
        far = self.media.get((addr, port))
        if far is not None:
            far_calls = ({id(m.call) for m in far.members} if isinstance(far, SharedEndpoint)
                         else {id(far.call)})
            mine = [m for m in members if id(m.call) in far_calls]
            if len(mine) == 1:
                found = mine[0]
        if found is None:
            mine = [m for m in members if addr in m.call.media_addrs]
            if len(mine) == 1:
                found = mine[0]
            else:
                live = [m for m in (mine or members) if not all_ended(m.call)]
                if len(live) == 1:
                    found = live[0]
        if found is not None:
            self.flows[(addr, port)] = found
        return found

    def packet(self, ts_ns: int, sensor_id: str, linktype: int, data: bytes, d,
               by_dst: bool) -> int:
        m = self.pick(d.src, d.sport) if by_dst else self.pick(d.dst, d.dport)
        self.last = m
        if m is None:
            return AMBIGUOUS
        return m.packet(ts_ns, sensor_id, linktype, data, d, by_dst)


class CallTable:
    """The one place call state is reachable from: by Call-ID, media endpoint and
    correlation key."""

    def __init__(self) -> None:
        self.by_call_id: dict[str, Call] = {}
        self.media: dict[tuple[bytes, int], MediaEndpoint] = {}
        self.keys: dict[LegKey, tuple[Call, str, str, int]] = {}  # key -> (call, leg, extra, ts)
        #: called with (addr, port) when an endpoint is mapped for the first time
        self.on_new_media: Callable[[bytes, int], None] | None = None
        self.max_call_endpoints = MAX_CALL_ENDPOINTS
        self.endpoints_refused = 0    # over a call's bound (every call)

    def __len__(self) -> int:
        return len({id(c) for c in self.by_call_id.values()})

    def get(self, call_id: str) -> Call | None:
        return self.by_call_id.get(call_id)

    def add(self, call: Call) -> None:
        for cid in call.legs:
            self.by_call_id[cid] = call

    def add_leg(self, call: Call, leg: Leg) -> None:
        call.legs[leg.call_id] = leg
        call.aliases.discard(leg.call_id)
        self.by_call_id[leg.call_id] = call
        if leg.started_ns < call.started_ns:
            call.started_ns = leg.started_ns

    def add_alias(self, call: Call, call_id: str) -> None:
        """A Call-ID named by one of the call's legs: its leg joins when it appears."""
        if call_id not in self.by_call_id:
            self.by_call_id[call_id] = call
            call.aliases.add(call_id)

    def add_key(self, call: Call, key: LegKey, leg: str, extra: str, ts_ns: int) -> None:
        if key not in self.keys:
            self.keys[key] = (call, leg, extra, ts_ns)
            call.keys.add(key)

    def add_media(self, call: Call, side: int, media: SdpMedia, leg: str) -> None:
        """Map a receive endpoint to a call.  When another active call already
        announced it (a media server, IVR or gateway answering every call on one
        IP:port), the endpoint is shared and each packet goes to the call whose
        SDPs name its far end (`SharedEndpoint`); a call whose dialogs all ended
        (lingering) gives the endpoint up to the new one (a port reused)."""
        key = (media.addr, media.port)
        if len(call.endpoints) >= self.max_call_endpoints and key not in call.endpoints:
            call.endpoints_refused += 1
            self.endpoints_refused += 1
            return
        ep = self.media.get(key)
        new = MediaEndpoint(call, side, media.rtcp, dict(media.rtpmap), leg, media.kind)
        if ep is None:
            self.media[key] = new
            if self.on_new_media is not None:
                self.on_new_media(media.addr, media.port)
        elif isinstance(ep, SharedEndpoint):
            ep.put(new)
        elif ep.call is call:
            if ep.side == side and ep.rtcp == media.rtcp:
                if media.rtpmap:
                    ep.rtpmap.update(media.rtpmap)
                return
            self.media[key] = new
        elif ep.call.done or all_ended(ep.call):
            self.media[key] = new
        else:
            self.media[key] = SharedEndpoint(self.media, [ep, new])
        if key not in call.endpoints:
            call.endpoints.append(key)
        call.media_addrs.add(media.addr)

    def endpoint_of(self, key: tuple[bytes, int], call: Call) -> MediaEndpoint | None:
        """The call's own endpoint at `key` (also when the endpoint is shared)."""
        ep = self.media.get(key)
        if isinstance(ep, SharedEndpoint):
            return ep.member(call)
        return ep if ep is not None and ep.call is call else None

    def unmap(self, key: tuple[bytes, int], call: Call) -> None:
        """The call no longer receives at `key` (other calls sharing it still do)."""
        ep = self.media.get(key)
        if isinstance(ep, SharedEndpoint):
            rest = ep.drop(call)
            if rest is not None:
                self.media[key] = rest
        elif ep is not None and ep.call is call:
            del self.media[key]

    def merge(self, keep: Call, other: Call, flip: bool) -> None:
        """Move everything of `other` into `keep` (`other` is then done).

        Frames are appended (call.pcap is sorted by time when written) and the
        payload references of other's streams are shifted by the frame offset.
        `flip`: other's legs run the other way (its callee is keep's caller).
        """
        offset = keep.frames_held
        runs_shift = 0
        if other.spill is not None:
            # other's spilled frames follow keep's frames on keep's spill file
            if keep.spill is None:
                keep.spill = CallSpill(other.spill.path.parent, other.spill.path.stem + "-m")
            if keep.frame_data:
                keep.spill.spill_frames(keep.frame_ts, keep.frame_data)
                keep.frame_base += len(keep.frame_data)
                keep.frame_data.clear()
                keep.frame_ts.clear()
            runs_shift = keep.spill.absorb(other.spill)
            keep.frame_base += other.frame_base
            other.spill = None
        keep.frame_data.extend(other.frame_data)
        keep.frame_ts.extend(other.frame_ts)
        n_other = other.frames_held
        if other.linktype != keep.linktype:
            # one pcap has one link type: other's frames are all of another one
            keep.other_linktype.extend(range(offset, offset + n_other))
        else:
            keep.other_linktype.extend(offset + i for i in other.other_linktype)
        shift = offset << _REF_FRAME_SHIFT
        for key, stream in other.streams.items():
            for run in stream.by_pt.values():
                if shift:
                    run.refs = array("q", (r + shift if r >= 0 else r for r in run.refs))
                if run.spilled:
                    run.spilled = [(o + runs_shift, n, sh + offset) for o, n, sh in run.spilled]
            if flip:
                stream.sender = 1 - stream.sender
            k = key
            while k in keep.streams:
                k = k + (len(keep.streams),)
            keep.streams[k] = stream
        for key in other.endpoints:
            ep = self.media.get(key)
            if isinstance(ep, SharedEndpoint):
                rest = ep.moved(other, keep, flip)
                if rest is not None:
                    self.media[key] = rest
            elif ep is not None and ep.call is other:
                ep.call = keep
                if flip:
                    ep.side = 1 - ep.side
        keep.endpoints.extend(k for k in other.endpoints if k not in keep.endpoints)
        keep.media_addrs |= other.media_addrs
        for cid, leg in other.legs.items():
            keep.legs[cid] = leg
            self.by_call_id[cid] = keep
        for cid in other.aliases:
            if cid not in keep.legs:
                keep.aliases.add(cid)
                self.by_call_id[cid] = keep
        keep.aliases -= keep.legs.keys()
        for key in other.keys:
            hit = self.keys.get(key)
            if hit is not None and hit[0] is other:
                self.keys[key] = (keep,) + hit[1:]
            keep.keys.add(key)
        keep.started_ns = min(keep.started_ns, other.started_ns)
        keep.last_ns = max(keep.last_ns, other.last_ns)
        keep.sensors |= other.sensors
        keep.rtcp_packets += other.rtcp_packets
        keep.rtcp_frames.extend(offset + i for i in other.rtcp_frames)
        keep.media_other += other.media_other
        keep.ambiguous += other.ambiguous
        keep.endpoints_refused += other.endpoints_refused
        keep.media_refused += other.media_refused
        keep.security.extend((t, leg, 1 - side if flip else side, kind, sec)
                             for t, leg, side, kind, sec in other.security)
        keep.security.sort(key=lambda e: e[0])
        for flow, t in other.zrtp.items():
            keep.zrtp[flow] = min(t, keep.zrtp.get(flow, t))
        keep.sip_packets += other.sip_packets
        keep.sip_errors += other.sip_errors
        for sid, n in other.copies.items():
            keep.copies[sid] = keep.copies.get(sid, 0) + n
        if other.tcp_frames:
            keep.tcp_frames = (keep.tcp_frames or set()) | other.tcp_frames
        keep.probe_media = False
        other.done = True
        other.frame_ts, other.frame_data, other.streams = [], [], {}

    def remove(self, call: Call) -> None:
        for cid in list(call.legs) + list(call.aliases):
            if self.by_call_id.get(cid) is call:
                del self.by_call_id[cid]
        for key in call.endpoints:
            self.unmap(key, call)
        for key in call.keys:
            hit = self.keys.get(key)
            if hit is not None and hit[0] is call:
                del self.keys[key]

    def calls(self) -> list[Call]:
        seen: dict[int, Call] = {}
        for call in self.by_call_id.values():
            seen.setdefault(id(call), call)
        return list(seen.values())

"""Media whose signalling was never seen: recorded on its own, joined when signalling shows up.

A sensor restarts, a capture starts in the middle of calls, the SIP runs over
TLS or past another mirror: RTP arrives for which no SDP announced either end.
Dropping it loses calls that are being recorded for a reason.  So the first
RTP packet of such a flow starts a *media-only* call: both ends of the flow
become media endpoints of it (RTCP on port+1 of even ports too), so the rest
of the flow, both directions, takes the ordinary packet path.  Channel 0 is the
side that sent the first packet (who called is unknown).

A media-only call joins a real call when signalling names it later:

* an SDP (INVITE, re-INVITE, UPDATE, their answers, of any call) that announces
  one of its endpoints: the call owning that SDP takes the media-only call
  over whole (frames, streams) — `CallEngine._adopt`;
* an in-dialog request of an unknown Call-ID (BYE, UPDATE, INFO ...) whose
  hosts — bottom Via, Contact and Request-URI — include both addresses of
  exactly one media-only call's flow: the request's dialog becomes its leg (a
  BYE then ends it).  Several candidates (two phones with several calls
  between them): nothing is joined — never a guess.

It starts only on a plausible RTP packet (version 2, payload type 0-34 or
96-127, both ports >= 1024: DNS or NetBIOS datagrams may begin with 0x80)
and ends after `idle_ns` without a packet.  One whose streams all have fewer
than `min_packets` packets, or lose more than they receive, is not written
(stray RTP-looking datagrams); its packets are counted.  call.json says ``"signalling": "none"`` (or ``"mid-call"``
once joined) and a warning sentence.
"""
from __future__ import annotations

import re

from protocols.layers import Decoded, ip_to_str, str_to_ip
from protocols.sip import SipMessage

from controller.calls.calltable import Call, CallTable
from controller.media.streams import CALLEE, CALLER, SdpMedia

__all__ = ["MediaOnlyCalls", "is_media_key", "message_hosts"]

_KEY_PREFIX = "media "          # no SIP Call-ID holds a space (RFC 3261 word)
_HOST_RE = re.compile(r"(?:sips?:(?:[^@;>\s]*@)?|SIP/2\.0/[A-Za-z]+\s+)(\[[0-9A-Fa-f:.]+\]|[0-9.]+)")


def is_media_key(call_id: str) -> bool:
    """Is this the synthetic leg id of a media-only call?"""
    return call_id.startswith(_KEY_PREFIX)


def _endpoint_text(addr: bytes, port: int) -> str:
    text = ip_to_str(addr)
    return f"[{text}]:{port}" if len(addr) == 16 else f"{text}:{port}"


def message_hosts(msg: SipMessage) -> set[bytes]:
    """IP addresses a SIP request names for its two ends: every Via sent-by,
    Contact and the Request-URI (host names are ignored: nothing to match)."""
    texts = list(msg.headers.get("via", ())) + list(msg.headers.get("contact", ()))
    if msg.request_uri:
        texts.append(msg.request_uri)
    out: set[bytes] = set()
    for text in texts:
        for m in _HOST_RE.finditer(text):
            host = m.group(1).strip("[]")
            try:
                out.add(str_to_ip(host))
            except ValueError:
                continue
    return out


class MediaOnlyCalls:
    """The media-only calls that are active, and how signalling finds them."""

    def __init__(self, table: CallTable, idle_ns: int, min_packets: int) -> None:
        self.table = table
        self.idle_ns = idle_ns
        self.min_packets = min_packets
        self.calls: dict[int, Call] = {}      # id(call) -> call, media-only now

    def __len__(self) -> int:
        return len(self.calls)

    def start(self, ts_ns: int, linktype: int, d: Decoded) -> Call:
        """A media-only call for the flow of this (unmatched RTP) packet; its
        endpoints are mapped, so the caller routes the packet again."""
        key = (f"{_KEY_PREFIX}{_endpoint_text(d.src, d.sport)} "
               f"{_endpoint_text(d.dst, d.dport)}")
        call = Call(key, ts_ns, linktype)
        call.media_only = True
        call.probe_media = False          # no relay probing: it has no leg to link
        self.table.add(call)
        # the sender of the first packet is channel 0: it receives where it sends from
        for side, addr, port in ((CALLER, d.src, d.sport), (CALLEE, d.dst, d.dport)):
            self.table.add_media(call, side, SdpMedia(addr, port, False, {}), key)
            if port % 2 == 0 and port < 0xFFFF:
                self.table.add_media(call, side, SdpMedia(addr, port + 1, True, {}), key)
        self.calls[id(call)] = call
        return call

    def forget(self, call: Call) -> None:
        """The call ended, or signalling joined it."""
        self.calls.pop(id(call), None)

    def joined(self, call: Call) -> None:
        """Signalling named the call: it is a call like the others from now on
        (its synthetic leg goes; the real legs stay)."""
        self.forget(call)
        call.media_only = False
        for cid in [cid for cid in call.legs if is_media_key(cid)]:
            del call.legs[cid]
            if self.table.by_call_id.get(cid) is call:
                del self.table.by_call_id[cid]
        call.probe_media = True

    def looks_like_media(self, call: Call) -> bool:
        """Worth a recording: one stream of at least `min_packets` packets whose
        sequence numbers mostly follow each other (not a stray datagram series)."""
        for stream in call.streams.values():
            n = stream.packets
            if n >= self.min_packets and stream.lost < n:
                return True
        return False

    def by_hosts(self, hosts: set[bytes]) -> Call | None:
        """The one media-only call whose flow runs between two of `hosts`."""
        if not hosts or not self.calls:
            return None
        found = None
        for call in self.calls.values():
            if call.done:
                continue
            addrs = {key[0] for key in call.endpoints}
            if addrs and addrs <= hosts:
                if found is not None:
                    return None        # ambiguous: never guess
                found = call
        return found

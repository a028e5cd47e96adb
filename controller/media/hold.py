"""Hold and resume, from the SDP offers and answers of each dialog.

`note_media` is called by `Dialog.apply` for every new (not retransmitted)
message of an offer/answer transaction (INVITE, UPDATE, PRACK, ACK) and keeps
a small tuple per SDP (its audio direction and whether its address is null)
and per rejection (a final >= 300 to INVITE/UPDATE/PRACK).  `hold_intervals`
replays that log at finalize time.

**Hold** (docs/DECISIONS.md "Call features"): side X holds the other side
from the moment X offers audio that X will not receive — ``a=sendonly``,
``a=inactive``, or a null connection address (``c=IN IP4 0.0.0.0``, the
RFC 2543 way) — until X offers audio it receives again (``sendrecv`` or
``recvonly`` with a real address).  The offer counts at its own time (when the
user pressed the button), unless the transaction is rejected (a final
response >= 300, e.g. 491 glare or 488), which cancels it.  An answer can
start or end a hold too: answering a normal offer with sendonly/inactive is
holding; a holder that answers recvonly/sendrecv has resumed.  ``recvonly``
in an offer is one-way audio (mute), not a hold; ``recvonly`` in an answer
is the held side's acknowledgement.  A hold still running when the call ends
ends with the call.  Both sides may hold at once (two intervals).

Offers and answers are paired per dialog in time order, by transaction
(who sent the request, method, CSeq): an SDP in a transaction without an
offer is an offer (INVITE/UPDATE/PRACK requests, or a 18x/2xx to an INVITE
that carried none — the delayed offer), the other side's SDP in that
transaction (18x, 2xx, ACK; a PRACK for an offer in a reliable 18x) is its
answer; the same SDP again in a later response (183 then 200) repeats it.
Which side sent a message is recomputed from the From-tags of every initial
INVITE of the Call-ID (`caller_tags`): one per hop when a B2BUA keeps the
Call-ID but not the tags.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from protocols.errors import DecodeError
from protocols.sdp import parse_sdp

from controller.media.streams import SIDE_NAMES, sdp_body

if TYPE_CHECKING:
    from protocols.sip import SipMessage

__all__ = ["note_media", "sdp_state", "caller_tags", "hold_transitions", "hold_intervals", "call_hold"]

_NS = 1_000_000_000
_OFFER_METHODS = frozenset(("INVITE", "UPDATE", "PRACK", "ACK"))
_MAX_LOG = 4096     # bound per dialog; a call re-negotiates a handful of times

#: What one SDP says about audio: (direction, null address).  None: no audio in it.
SdpState = tuple[str, bool]


def sdp_state(body: bytes) -> SdpState | None:
    """(direction, null address) of the first audio media of an SDP body."""
    try:
        sd = parse_sdp(body)
    except DecodeError:
        return None
    for md in sd.media:
        if md.media.lower() != "audio":
            continue
        if md.port == 0:
            return ("inactive", False)      # audio refused / removed
        conn = md.connection or ""
        null = conn in ("0.0.0.0", "::") or conn.startswith("0.0.0.0/")
        return (md.direction, null)
    return None


def note_media(log: list, ts_ns: int, side: int, msg: SipMessage, cseq: int, method: str) -> None:
    """Keep what hold detection needs of one new SIP message (called by Dialog.apply):
    (ts, side, is request, CSeq method, CSeq, status, SdpState or None, From-tag,
    initial INVITE).  An initial INVITE is kept even without SDP: its From-tag says
    which tags are the caller's on every hop (see `_sides`)."""
    if method not in _OFFER_METHODS or len(log) >= _MAX_LOG:
        return
    is_req = msg.is_request
    status = 0 if is_req else (msg.status or 0)
    if not is_req and (status < 180 or (300 > status and not msg.body)):
        return
    initial = is_req and method == "INVITE" and msg.to_tag is None
    state = None
    if msg.body and status < 300:
        body = sdp_body(msg.content_type, msg.body)
        state = None if body is None else sdp_state(body)
    if state is None and status < 300 and not initial:
        return
    log.append((ts_ns, side, is_req, method, cseq, status, state, msg.from_tag, initial))


def caller_tags(log: Sequence[tuple], caller_tag: str | None) -> set[str]:
    """Every From-tag the caller has: one per hop when a B2BUA keeps the Call-ID but
    rewrites the tags (erspan_sip_ipv4_udp.pcapng), where the dialog's own rule
    (the first INVITE's From-tag) would take the next hop's caller for the callee."""
    tags = {e[7] for e in log if e[8] and e[7]}
    if caller_tag:
        tags.add(caller_tag)
    return tags


def _sides(log: Sequence[tuple], tags: set[str]) -> list[tuple]:
    """The log with each entry's side recomputed from the caller's tags of every hop."""
    out = []
    for e in log:
        side = e[1]
        if e[7]:
            from_caller = e[7] in tags
            side = (0 if from_caller else 1) if e[2] else (1 if from_caller else 0)
        out.append((e[0], side) + tuple(e[2:7]))
    return out


def _holding(state: SdpState) -> bool:
    """The side that sent this SDP does not receive audio: it holds (in an offer)."""
    return state[1] or state[0] in ("sendonly", "inactive")


def _receives(state: SdpState) -> bool:
    return not state[1] and state[0] in ("sendrecv", "recvonly")


def hold_transitions(log: Sequence[tuple]) -> list[tuple[int, int, bool]]:
    """(ts, side, now holding) each time a side starts or stops holding, in order."""
    holding = [False, False]
    changes: list[list] = []            # [ts, side, holding, transaction key, cancelled]
    offers: dict[tuple, tuple[int, SdpState]] = {}   # transaction key -> (offerer, its SDP)
    answered_by: dict[tuple, int] = {}  # transaction key -> side that answered in it
    last_offer: tuple | None = None

    def set_state(ts: int, side: int, value: bool, key: tuple) -> None:
        if holding[side] != value:
            holding[side] = value
            changes.append([ts, side, value, key, False])

    for ts, side, is_req, method, cseq, status, state in sorted(log, key=lambda e: e[0]):
        if state is None and status < 300:
            continue                           # an initial INVITE without SDP
        # a transaction: who sent the request, its method (ACK: its INVITE's), CSeq
        key = (side if is_req else 1 - side, "INVITE" if method == "ACK" else method, cseq)
        if state is None:                      # a rejection: the offer never took effect
            if key in offers and key not in answered_by:
                del offers[key]
                if last_offer == key:
                    last_offer = None
                for ch in changes:
                    if ch[3] == key:
                        ch[4] = True
                holding = [False, False]
                for ch in changes:
                    if not ch[4]:
                        holding[ch[1]] = ch[2]
            continue
        offer = offers.get(key)
        if offer is None and method in ("ACK", "PRACK") and last_offer is not None \
                and last_offer not in answered_by and offers[last_offer][0] != side:
            key = last_offer                   # PRACK answering an offer in a reliable 18x
            offer = offers[key]
        if offer is not None and offer[0] != side:            # the answer (or it again)
            answered_by[key] = side
            if offer[1] == ("sendrecv", False):
                set_state(ts, side, not _receives(state), key)
            elif _receives(state):
                set_state(ts, side, False, key)
            continue
        if offer is not None and not is_req:
            continue                           # the offer repeated in a later response
        if method == "ACK":
            continue                           # answers an offer the capture missed
        offers[key] = (side, state)            # a new offer
        last_offer = key
        set_state(ts, side, _holding(state), key)
    return [(ts, side, value) for ts, side, value, _, cancelled in changes if not cancelled]


def hold_intervals(log: Sequence[tuple], end_ns: int, caller_tag: str | None = None
                   ) -> list[tuple[int, int, int]]:
    """(start ns, end ns, side that holds) of one dialog, from its `note_media` log."""
    changes = hold_transitions(_sides(log, caller_tags(log, caller_tag)))
    out = []
    start: list[int | None] = [None, None]
    for ts, side, value in changes:
        if value and start[side] is None:
            start[side] = ts
        elif not value and start[side] is not None:
            out.append((start[side], ts, side))
            start[side] = None
    for side in (0, 1):
        if start[side] is not None:
            out.append((start[side], max(end_ns, start[side]), side))
    out.sort()
    return out


def call_hold(started_ns: int, ended_ns: int, legs: Sequence[Any]) -> list[dict[str, Any]]:
    """call.json "hold": the intervals of every leg, those of one side joined where
    they overlap (an SBC's two legs carry one hold), in time order."""
    found: list[tuple[int, int, int]] = []
    for leg in legs:
        log = getattr(leg.dialog, "media_log", None)
        if log:
            found.extend(hold_intervals(log, ended_ns, leg.dialog.caller_tag))
    found.sort()
    merged: list[list[int]] = []
    for start, end, side in found:
        for m in reversed(merged):
            if m[2] == side and start <= m[1]:
                m[1] = max(m[1], end)
                break
        else:
            merged.append([start, end, side])
    merged.sort()
    return [{"start_s": round((s - started_ns) / _NS, 3), "end_s": round((e - started_ns) / _NS, 3),
             "by": SIDE_NAMES[side]} for s, e, side in merged]

"""How a call that is over becomes a `FinishedCall` (the hand-over to output).

`finished_call` takes the call engine's `Call` once the engine has done its
own bookkeeping (call table, SSRC owners, late packets, recording rules) and
builds what the recording needs: the dialog that speaks for the call, times,
frames (a spilled call's through its files), streams, counts, and a warning for
what was not seen (no signalling, no INVITE, media shared with other calls).
`call_summary` is how an active call looks from outside (Admin API).
"""
from __future__ import annotations

from controller.calls.calltable import Call
from controller.calls.dialogs import Dialog
from controller.calls.finished import FinishedCall, iso_time
from controller.calls.legs import Leg
from controller.calls.spill import FrameStore, TimeStore
from controller.media.streams import RtpStream
from storage.layout import recording_id

__all__ = ["call_summary", "finished_call", "summary_dialog"]


def finished_call(call: Call, legs: list[Leg], streams: list[RtpStream],
                  rtpmap: dict[int, tuple[str, int, int]], why_not: str | None) -> FinishedCall:
    """The FinishedCall of `call` (legs in order, root first; its streams by start)."""
    dialog = summary_dialog(legs)
    finished = FinishedCall(
        call_ids=list(call.call_ids),
        from_uri=legs[0].dialog.from_uri,
        to_uri=legs[0].dialog.to_uri,
        status=dialog.status,
        final_response=dialog.final_response,
        end_reason=dialog.end_reason or "capture-end",
        started_ns=call.started_ns,
        answered_ns=dialog.answered_ns if dialog.answered_ns is not None else min(
            (leg.dialog.answered_ns for leg in legs if leg.dialog.answered_ns is not None),
            default=None),
        ended_ns=max(leg.dialog.ended_ns for leg in legs if leg.dialog.ended_ns is not None),
        sensors=sorted(call.sensors),
        linktype=call.linktype,
        frame_ts=call.frame_ts if call.spill is None else TimeStore(call.spill, call.frame_ts),
        frame_data=call.frame_data if call.spill is None else FrameStore(call.spill, call.frame_data),
        other_linktype=call.other_linktype,
        rtcp_frames=call.rtcp_frames,
        security=call.security,
        zrtp=call.zrtp,
        streams=streams,
        rtpmap=rtpmap,
        legs=legs,
        copies=dict(call.copies),
        spill=call.spill,
        recorded=why_not is None,
        not_recorded_reason=why_not,
        counts={
            "sip_messages": sum(leg.dialog.messages for leg in legs),
            "sip_retransmissions": sum(leg.dialog.retransmissions for leg in legs),
            "sip_packets": call.sip_packets,
            "sip_errors": call.sip_errors,
            "rtp_packets": sum(s.packets for s in streams),
            "rtcp_packets": call.rtcp_packets,
            "media_other": call.media_other,
        },
    )
    if call.media_only:
        finished.key = call.first_call_id
        finished.call_ids, finished.legs = [], []
        finished.signalling = "none"
        finished.warnings.append(
            "No signalling was seen for this media (a capture gap, a sensor restart, SIP on "
            "another mirror or over TLS): who called whom and the call's outcome are unknown.")
    elif not any(leg.dialog.have_invite for leg in legs):
        finished.signalling = "mid-call"
        finished.warnings.append(
            "The call's INVITE was not seen (picked up mid-call): its start, answer time and "
            "the media before the first signalling seen are missing.")
    if call.endpoints_refused or call.media_refused:
        finished.counts["sdp_endpoints_refused"] = call.endpoints_refused
        finished.counts["media_refused"] = call.media_refused
    if call.ambiguous:
        finished.counts["media_ambiguous_packets"] = call.ambiguous
        finished.warnings.append(
            f"{call.ambiguous} packets to or from a media endpoint this call shared with other "
            "calls could not be assigned to one call and are in no recording.")
    return finished


def call_summary(call: Call) -> dict:
    """What an active call looks like from outside (Admin API, `CallEngine.active`)."""
    dialog = call.dialog
    return {
        "id": recording_id(call.first_call_id, call.started_ns),
        "call_ids": list(call.call_ids),
        "from": dialog.from_uri,
        "to": dialog.to_uri,
        "status": dialog.live_status(),
        "started_at": iso_time(call.started_ns),
        "packets": call.frames_held,
    }


def summary_dialog(legs: list[Leg]) -> Dialog:
    """The dialog that says what the call was for its caller: the root leg's, unless
    the root leg has no final response and another leg has one (root = legs[0])."""
    root = legs[0].dialog
    if root.final_response is not None or len(legs) == 1:
        return root
    for leg in legs[1:]:
        if leg.dialog.status == "answered":
            return leg.dialog
    for leg in legs[1:]:
        if leg.dialog.final_response is not None:
            return leg.dialog
    return root

"""A call that is over: what the call engine hands to the output stage.

`FinishedCall` is made by `controller.calls.engine.CallEngine` and read by
`controller.output.finalize`; nothing in it is shared with the engine any more.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from controller.calls.legs import Leg
    from controller.calls.spill import CallSpill
    from controller.media.streams import RtpStream

__all__ = ["FinishedCall", "iso_time"]

_NS = 1_000_000_000


@dataclass
class FinishedCall:
    """A call that is over (made by calls.CallEngine): everything a recording needs,
    and nothing shared with the engine any more."""

    call_ids: list[str]
    from_uri: str | None
    to_uri: str | None
    status: str
    final_response: int | None
    end_reason: str
    started_ns: int
    answered_ns: int | None
    ended_ns: int | None
    sensors: list[str]
    linktype: int
    frame_ts: list[int]
    frame_data: list[bytes]
    other_linktype: list[int]
    streams: list[RtpStream]
    rtpmap: dict[int, tuple[str, int, int]]  # every payload type the call's SDPs named
    counts: dict[str, int] = field(default_factory=dict)
    legs: list[Leg] = field(default_factory=list)      # root leg first
    copies: dict[str, int] = field(default_factory=dict)  # sensor -> mirror copies dropped
    sites: dict[str, str] = field(default_factory=dict)   # sensor -> site (set by the Recorder)
    spill: CallSpill | None = None   # a long call's frames on disk (deleted by `release`)
    recorded: bool = True            # False: recording rules said signalling only (rules.py)
    not_recorded_reason: str | None = None
    rtcp_frames: list[int] = field(default_factory=list)  # frame indexes of RTCP (quality.py)
    #: (ts, leg Call-ID, side of the SDP's author, media kind, MediaSecurity) of every SDP
    #: media line in time order (calltable.Call.security): who encrypts with what
    security: list = field(default_factory=list)
    #: media flows (src, sport, dst, dport) that carried ZRTP -> capture time of the first
    zrtp: dict = field(default_factory=dict)
    #: recording id key of a media-only call (no Call-ID): its synthetic flow name
    key: str | None = None
    #: how much of the call's signalling was seen: "complete" (its INVITE), "mid-call"
    #: (picked up by a later request: re-INVITE, UPDATE, BYE), "none" (media only)
    signalling: str = "complete"
    #: sensor clocks that stepped during the call (controller/ingest/clock.py), None if none did
    clock: dict | None = None
    #: what the operator must know about this recording, one sentence each (call.json)
    warnings: list[str] = field(default_factory=list)
    #: time.monotonic() when the engine handed the call to the writer (telemetry only)
    queued_mono: float = 0.0

    def release(self) -> None:
        """The recording is stored (or given up): delete the spill files."""
        if self.spill is not None:
            self.spill.close()
            self.spill = None



def iso_time(ns: int | None) -> str | None:
    """ISO 8601 UTC with microseconds and 'Z' (exact: no float on the way)."""
    if ns is None:
        return None
    sec, rem = divmod(ns, _NS)
    day = datetime.fromtimestamp(sec, tz=timezone.utc)
    return f"{day:%Y-%m-%dT%H:%M:%S}.{rem // 1000:06d}Z"

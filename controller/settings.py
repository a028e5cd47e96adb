"""Tunables of the call engine (controller/calls/engine.py).

Kept apart from the engine so the CLI settings layer can build one without
importing the packet path.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from controller.calls.rules import RecordingRules

DEFAULT_LEG_HEADERS = ("x-call-id", "x-cid")


@dataclass
class CallConfig:
    """When a call is considered over.

    ``answered_timeout_s``: an answered call with no SIP and no RTP/RTCP for this
    long ends with ``end_reason = "timeout"`` (a lost BYE, or a sensor that went
    away).  Five minutes is long enough for calls on hold without RTP keep-alive
    (phones send RTCP or re-INVITEs well within that) and short enough to not
    hold memory for dead calls.

    ``setup_timeout_s``: the same for calls that were never answered.  RFC 3261
    Timer C (a proxy's INVITE transaction) must be longer than 3 minutes, and a
    phone ringing with no answer is cut by the network after 2-3 minutes, so a
    setup silent for 180 s is dead: ringing produces no packets, so this must
    not be shorter than the longest ring.  It also ends a call left challenged
    (401/407) with no new INVITE.

    ``linger_s``: after the end of a call (BYE, CANCEL + final response, final
    error response) packets still belong to it: the ACK, the 200 for the BYE,
    retransmissions and the last RTP in flight.  Measured in capture time.

    ``recent_call_id_s``: a Call-ID finished less than this ago does not start a
    new call (a late 200 OK retransmission of a finished call would otherwise
    create a phantom one); 32 s = 64*T1, the lifetime of a SIP transaction.

    ``leg_headers``: SIP headers (lower case) whose value is the Call-ID of
    another leg of the same call (B2BUA/SBC), strongest first.
    ``merge_by_media``: also merge legs whose RTP carries the same payloads
    (a media relay between them) when no header links them.

    ``spill_frames``: a call holding more frames than this in memory moves
    them (and its streams' payload references) to a file in ``spill_dir``
    (controller/calls/spill.py): memory per active call stays bounded whatever its
    length.  20,000 frames is ~3 minutes of a two-way G.711 call, ~5 MB.
    ``spill_dir`` None: a folder under the system's temporary directory.

    ``record_rules``: which calls get their media recorded (controller/calls/rules.py);
    the engine's ``rules`` attribute starts from it and may be replaced at run time.

    ``record_unsignalled``: RTP of a flow whose signalling was never seen (a
    sensor restart, a capture started mid-call, SIP on another mirror or over
    TLS) becomes a media-only recording (controller/calls/pickup.py); it ends after
    ``unsignalled_timeout_s`` without a packet (longer than a hold without RTP
    is not knowable without signalling; 20 s rides out short gaps), and one
    with fewer than ``unsignalled_min_packets`` packets (under half a second of
    20 ms packets: stray datagrams) is counted, not written.
    """

    answered_timeout_s: float = 300.0
    setup_timeout_s: float = 180.0
    linger_s: float = 2.0
    recent_call_id_s: float = 32.0
    leg_headers: tuple[str, ...] = DEFAULT_LEG_HEADERS
    merge_by_media: bool = True
    spill_frames: int = 20_000
    spill_dir: Path | None = None
    late_window_s: float = 60.0
    record_rules: RecordingRules = field(default_factory=RecordingRules)
    record_unsignalled: bool = True
    unsignalled_timeout_s: float = 20.0
    unsignalled_min_packets: int = 25
    max_pending_calls: int = 10_000        # unanswered calls without media held (admission.py)
    attempts_per_source: int = 120         # failed attempts written per source per minute

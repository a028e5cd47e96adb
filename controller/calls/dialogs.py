"""SIP dialog state of one call: what happened to the initial INVITE, and when it ended.

The rules (they are the contract of call.json, see docs/ARCHITECTURE.md):

* The *initial* INVITE is the one without a To-tag; its CSeq may grow when
  the caller answers an auth challenge (INVITE -> 401/407 -> ACK -> INVITE
  CSeq+1, same Call-ID): still one call.  Requests carrying a To-tag are
  in-dialog (re-INVITE), and the CSeq space is per direction, so a
  transaction is identified by (From-tag, CSeq).
* Final response to the initial INVITE: 2xx -> answered (even after a CANCEL
  that crossed it, or after an error from another fork); 401/407 -> challenged,
  final only if no new INVITE follows; 486/600 -> busy; 487, or any final
  error after a CANCEL -> cancelled; other >= 300 -> rejected.
* The side that sent a message comes from the From-tag, not from addresses
  (proxies and NAT change addresses, never tags): a request whose From-tag is
  the caller's comes from the caller; a response to it comes from the callee.
* A message seen again (retransmission, or the same message on the next hop
  of a proxy: same bottom Via branch, tags, CSeq and method/status) changes
  nothing.

Everything here is pure state-machine code on a `Dialog`; the engine feeds it
parsed messages and registers whatever SDP it returns.
"""
from __future__ import annotations

import re

from protocols.errors import SipError
from protocols.sip import SipMessage, parse_sip

from controller.media.dtmf import note_info
from controller.media.hold import note_media
from controller.media.streams import CALLEE, CALLER, sdp_body

BUSY_CODES = frozenset((486, 600))
CHALLENGE_CODES = frozenset((401, 407))

#: Requests whose body may carry an SDP offer or answer.
SDP_REQUESTS = frozenset(("INVITE", "ACK", "UPDATE", "PRACK"))

_BRANCH_RE = re.compile(r";\s*branch\s*=\s*([^;,\s]+)", re.IGNORECASE)
_CL_LINE_RE = re.compile(rb"^(?:content-length|l)[ \t]*:[^\r\n]*\r?\n", re.IGNORECASE | re.MULTILINE)


class Dialog:
    """SIP state of one call (all the dialogs sharing its Call-ID)."""

    __slots__ = ("caller_tag", "from_uri", "to_uri", "have_invite", "invite_cseq", "reinvites",
                 "cancel_seen", "challenge", "answered_ns", "final_response", "status",
                 "ended_ns", "end_reason", "seen", "phase", "messages", "retransmissions",
                 "info_log", "media_log", "midcall")

    def __init__(self) -> None:
        self.caller_tag: str | None = None
        self.from_uri: str | None = None
        self.to_uri: str | None = None
        self.have_invite = False          # from/to taken from an INVITE request
        self.invite_cseq: int | None = None
        self.reinvites: set[tuple[str | None, int]] = set()
        self.cancel_seen = False
        self.challenge: int | None = None  # pending 401/407 of the current attempt
        self.answered_ns: int | None = None
        self.final_response: int | None = None
        self.status = "incomplete"
        self.ended_ns: int | None = None
        self.end_reason: str | None = None
        self.seen: set[tuple] = set()
        self.phase = "setup"              # for the live view: setup, ringing, early, answered, ended
        self.messages = 0                 # distinct messages
        self.retransmissions = 0
        # call features (issue #5): small logs read at finalize time
        self.info_log: list[tuple] = []   # DTMF SIP INFO bodies (controller/media/dtmf.py)
        self.media_log: list[tuple] = []  # SDP directions, rejections (controller/media/hold.py)
        self.midcall = False              # first seen: an in-dialog request (INVITE not seen)

    # -- identification ---------------------------------------------------
    def is_repeat(self, msg: SipMessage, cseq: int, method: str, count: bool = True) -> bool:
        """True if this exact message was seen before (retransmission or next hop);
        `count=False`: a repeat is not counted (a reassembled datagram, already
        counted at its first fragment)."""
        key = (cseq, method, msg.method if msg.is_request else msg.status,
               bottom_branch(msg), msg.from_tag, msg.to_tag)
        if key in self.seen:
            if count:
                self.retransmissions += 1
            return True
        self.seen.add(key)
        self.messages += 1
        return False

    def sender(self, msg: SipMessage) -> int:
        """CALLER or CALLEE: who sent this message (by From-tag)."""
        from_caller = msg.from_tag == self.caller_tag
        if msg.is_request:
            return CALLER if from_caller else CALLEE
        return CALLEE if from_caller else CALLER

    # -- state ------------------------------------------------------------
    def end(self, ts_ns: int, reason: str) -> None:
        if self.ended_ns is None:
            self.ended_ns = ts_ns
            self.end_reason = reason
            self.phase = "ended"

    def apply(self, msg: SipMessage, ts_ns: int, cseq: int, method: str,
              repeat: bool = False) -> tuple[int, bytes] | None:
        """Update the state with one message; returns (sending side, SDP body) if it
        carries SDP.  A repeat only yields its SDP (a proxy hop may rewrite it)."""
        if self.caller_tag is None:
            self._learn_caller(msg)
            if msg.is_request and msg.to_tag is not None:
                # picked up mid-call (capture gap, sensor restart): an in-dialog
                # request proves the dialog was established
                self.midcall = True
                self.status = "answered"
                self.phase = "answered"
        if not repeat:
            if msg.is_request:
                self._request(msg, ts_ns, cseq)
            elif method == "INVITE":
                self._invite_response(msg, ts_ns, cseq)
            # call features (issue #5): DTMF by SIP INFO, hold/resume by SDP
            if msg.is_request and msg.method == "INFO":
                note_info(self.info_log, ts_ns, self.sender(msg), msg)
            else:
                note_media(self.media_log, ts_ns, self.sender(msg), msg, cseq, method)
        if msg.body and (msg.is_request and msg.method in SDP_REQUESTS
                         or not msg.is_request and method in SDP_REQUESTS and msg.status is not None
                         and 180 <= msg.status < 300):
            body = sdp_body(msg.content_type, msg.body)
            if body is not None:
                return self.sender(msg), body
        return None

    def _learn_caller(self, msg: SipMessage) -> None:
        # Any message of the initial transaction carries the caller's From; a
        # capture starting with an in-dialog request from the callee is not
        # distinguishable and is taken as coming from the caller.
        self.caller_tag = msg.from_tag
        self.from_uri = msg.from_uri
        self.to_uri = msg.to_uri

    def _request(self, msg: SipMessage, ts_ns: int, cseq: int) -> None:
        m = msg.method
        if m == "INVITE":
            if msg.to_tag is not None:
                self.reinvites.add((msg.from_tag, cseq))
                return
            if not self.have_invite and msg.from_tag == self.caller_tag:
                self.have_invite = True
                self.from_uri = msg.from_uri
                self.to_uri = msg.to_uri
            if self.invite_cseq is None or cseq > self.invite_cseq:
                self.invite_cseq = cseq
                if self.answered_ns is None:
                    # a new attempt (after a challenge, 422, 491 ...): earlier
                    # non-2xx outcomes no longer count
                    self.challenge = None
                    self.cancel_seen = False
                    if self.final_response is not None:
                        self.final_response = None
                        self.status = "incomplete"
                        self.ended_ns = None
                        self.end_reason = None
                        self.phase = "setup"
        elif m == "CANCEL":
            if self.invite_cseq is None or cseq == self.invite_cseq:
                self.cancel_seen = True
        elif m == "BYE":
            self.end(ts_ns, "bye")

    def _invite_response(self, msg: SipMessage, ts_ns: int, cseq: int) -> None:
        code = msg.status or 0
        if msg.from_tag != self.caller_tag or (msg.from_tag, cseq) in self.reinvites:
            return  # response to a re-INVITE
        if self.invite_cseq is None:
            self.invite_cseq = cseq
        elif cseq > self.invite_cseq:
            if self.answered_ns is not None:
                return  # most likely a re-INVITE whose request we missed
            self.invite_cseq = cseq  # the new attempt's request was not seen
            self.challenge = None
        elif cseq < self.invite_cseq and not 200 <= code < 300:
            return  # late response to an earlier attempt (a 2xx to it still answers)
        if code < 200:
            if self.answered_ns is None and self.ended_ns is None:
                self.phase = "early" if msg.body else ("ringing" if code >= 180 else self.phase)
            return
        if code < 300:
            if self.answered_ns is None:
                self.answered_ns = ts_ns
                self.final_response = code
                self.status = "answered"
                self.challenge = None
                self.phase = "answered"
                if self.end_reason in ("cancel", "final-response"):
                    # CANCEL crossing the 200 OK, or an error from another
                    # fork: the call is answered and lasts until BYE
                    self.ended_ns = None
                    self.end_reason = None
            return
        if self.answered_ns is not None or self.final_response is not None:
            return
        if code in CHALLENGE_CODES:
            self.challenge = code
            return
        self.final_response = code
        if code == 487 or self.cancel_seen:
            self.status = "cancelled"
            self.end(ts_ns, "cancel")
        else:
            self.status = "busy" if code in BUSY_CODES else "rejected"
            self.end(ts_ns, "final-response")

    def close(self, ts_ns: int, reason: str) -> None:
        """The call ends now for a reason outside SIP (timeout, capture end)."""
        self.end(ts_ns, reason)
        if self.final_response is None and self.challenge is not None:
            self.final_response = self.challenge
            self.status = "rejected"

    def live_status(self) -> str:
        return self.status if self.final_response is not None else self.phase


def bottom_branch(msg: SipMessage) -> str | None:
    """Branch of the bottom Via: the originating UA's, the same on every proxy hop."""
    vias = msg.headers.get("via")
    if not vias:
        return None
    last = vias[-1].rsplit(",", 1)[-1]
    m = _BRANCH_RE.search(last)
    return m.group(1) if m else None


def parse_truncated(payload: bytes) -> SipMessage | None:
    """The head of a SIP message cut short (first IP fragment, truncated datagram).

    Keeps every complete header line and drops the body, so the Call-ID, CSeq,
    tags and URIs are still known.  None if even that does not parse.
    """
    end = payload.find(b"\r\n\r\n")
    if end >= 0:
        head = payload[:end + 2]
    else:
        cut = payload.rfind(b"\r\n")
        if cut <= 0:
            return None
        head = payload[:cut + 2]
    head = _CL_LINE_RE.sub(b"", head) + b"\r\n"
    try:
        msg = parse_sip(head)
    except SipError:
        return None
    msg.body = b""
    return msg

"""Exceptions raised by the protocol parsers for malformed network input."""
from __future__ import annotations

__all__ = ["DecodeError", "SipError", "SdpError", "RtpError"]


class DecodeError(ValueError):
    """Malformed or unsupported network input (L2-L4 decode and base of the others)."""


class SipError(DecodeError):
    """Malformed SIP message or stream."""


class SdpError(DecodeError):
    """Malformed SDP body."""


class RtpError(DecodeError):
    """Malformed RTP packet or RFC 4733 telephone-event payload."""

"""SIP messages (RFC 3261): cheap detection, parsing, and TCP stream framing."""
from __future__ import annotations

import re
from dataclasses import dataclass

from protocols.errors import SipError

__all__ = ["SipMessage", "looks_like_sip", "parse_sip", "split_stream", "frame_stream",
           "COMPACT_FORMS"]

COMPACT_FORMS: dict[str, str] = {
    "i": "call-id", "f": "from", "t": "to", "v": "via", "m": "contact",
    "l": "content-length", "c": "content-type", "k": "supported", "s": "subject",
    "e": "content-encoding", "o": "event", "r": "refer-to", "b": "referred-by",
    "x": "session-expires", "u": "allow-events",
}

_TOKEN = rb"[A-Za-z0-9!%'*+\-.`_~]+"
# first line of a request (sip:/sips:/tel: URI) or of a response
_LOOKS_RE = re.compile(
    rb"(?:SIP/2\.0 [1-6][0-9][0-9][ \r\n]|" + _TOKEN
    + rb" (?:[Ss][Ii][Pp][Ss]?|[Tt][Ee][Ll]):[^ \r\n]{1,4096} SIP/2\.0\r?\n)")
_REQUEST_RE = re.compile(
    r"([A-Za-z0-9!%'*+\-.`_~]+) ([A-Za-z][A-Za-z0-9+.\-]*:\S+) SIP/2\.0")
_STATUS_RE = re.compile(r"SIP/2\.0 ([1-6][0-9][0-9])(?: (.*))?")
_LINE_SPLIT = re.compile(r"\r?\n")
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_KEEPALIVE = re.compile(rb"[\r\n]*")
# (possessive runs, and the value ending at a non-blank instead of a lazy value before
# optional blanks: that backtracked over runs of blanks, seconds for a few KB of them)
_CL_RE = re.compile(rb"^(?:content-length|l)[ \t]*+:[ \t]*+((?:[^\r\n]*[^ \t\r\n])?)[ \t]*+\r?$",
                    re.IGNORECASE | re.MULTILINE)
_PRINTABLE_RE = re.compile(rb"[\x20-\x7e]*\r?")
_TAG_RE = re.compile(r";\s*tag\s*=\s*([^;,\s>]+)", re.IGNORECASE)
_BRANCH_RE = re.compile(r";\s*branch\s*=\s*([^;,\s]+)", re.IGNORECASE)
_MAX_HEAD = 65536  # a stream head this long without a header end is not SIP


def looks_like_sip(payload: bytes | bytearray | memoryview) -> bool:
    """Cheap check: is the first line a SIP request line or status line?"""
    return _LOOKS_RE.match(payload) is not None


def _split_name_addr(value: str) -> tuple[str, str]:
    """(URI, header-params text) of a From/To/Contact-style value."""
    v = value.strip()
    i = 0
    if v.startswith('"'):  # quoted display name may contain '<', ';', ...
        i = 1
        while i < len(v):
            c = v[i]
            if c == "\\":
                i += 2
                continue
            if c == '"':
                break
            i += 1
        i += 1
    lt = v.find("<", i)
    if lt >= 0:
        gt = v.find(">", lt + 1)
        if gt < 0:
            raise SipError(f"unterminated '<' in {value!r}")
        return v[lt + 1:gt].strip(), v[gt + 1:]
    semi = v.find(";", i)
    if semi < 0:
        return v[i:].strip(), ""
    return v[i:semi].strip(), v[semi:]


def _strip_uri_params(uri: str) -> str:
    """URI without ';params' and '?headers' (a ';' inside the user part is kept)."""
    at = uri.find("@")
    start = at + 1 if at >= 0 else 0
    ends = [p for p in (uri.find(";", start), uri.find("?", start)) if p >= 0]
    return uri[:min(ends)] if ends else uri


@dataclass(slots=True)
class SipMessage:
    """One SIP request or response. Header names are lower-case full names."""

    is_request: bool
    method: str | None
    request_uri: str | None
    status: int | None
    reason: str | None
    headers: dict[str, list[str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """First value of a header (any case; compact forms accepted), or None."""
        key = name.lower()
        values = self.headers.get(COMPACT_FORMS.get(key, key))
        return values[0] if values else None

    @property
    def call_id(self) -> str | None:
        return self.header("call-id")

    @property
    def cseq(self) -> tuple[int, str]:
        """(sequence number, method) of the CSeq header; SipError if missing or bad."""
        value = self.header("cseq")
        if value is None:
            raise SipError("missing CSeq header")
        parts = value.split()
        if len(parts) != 2 or not parts[0].isdigit() or not parts[0].isascii():
            raise SipError(f"bad CSeq header {value[:80]!r}")
        try:
            return int(parts[0]), parts[1]
        except ValueError:  # more digits than int() converts (sys.get_int_max_str_digits)
            raise SipError(f"bad CSeq header {value[:80]!r}") from None

    def _addr(self, name: str) -> tuple[str, str] | None:
        value = self.header(name)
        return None if value is None else _split_name_addr(value)

    @property
    def from_uri(self) -> str | None:
        addr = self._addr("from")
        return None if addr is None else _strip_uri_params(addr[0])

    @property
    def to_uri(self) -> str | None:
        addr = self._addr("to")
        return None if addr is None else _strip_uri_params(addr[0])

    @property
    def from_tag(self) -> str | None:
        addr = self._addr("from")
        m = None if addr is None else _TAG_RE.search(addr[1])
        return m.group(1) if m else None

    @property
    def to_tag(self) -> str | None:
        addr = self._addr("to")
        m = None if addr is None else _TAG_RE.search(addr[1])
        return m.group(1) if m else None

    @property
    def via_branch(self) -> str | None:
        value = self.header("via")
        if value is None:
            return None
        m = _BRANCH_RE.search(value.split(",", 1)[0])
        return m.group(1) if m else None

    @property
    def content_type(self) -> str | None:
        value = self.header("content-type")
        if value is None:
            return None
        return value.split(";", 1)[0].strip().lower() or None


def parse_sip(payload: bytes | bytearray | memoryview) -> SipMessage:
    """Parse one complete SIP message; SipError if malformed or cut short."""
    data = bytes(payload)
    m = _HEAD_END.search(data)
    if m is None:
        raise SipError("no end of SIP headers (empty line) found")
    head = data[:m.start()].decode("utf-8", "replace")
    rest = data[m.end():]
    lines = _LINE_SPLIT.split(head)
    start = lines[0].strip()
    req = _REQUEST_RE.fullmatch(start)
    if req is not None:
        is_request = True
        method: str | None = req.group(1)
        request_uri: str | None = req.group(2)
        status: int | None = None
        reason: str | None = None
    else:
        st = _STATUS_RE.fullmatch(start)
        if st is None:
            raise SipError(f"bad SIP start line {start[:80]!r}")
        is_request = False
        method = request_uri = None
        status = int(st.group(1))
        reason = (st.group(2) or "").strip()
    headers: dict[str, list[str]] = {}
    last: list[str] | None = None
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):  # folded continuation of the previous header
            if last is None:
                raise SipError("continuation line before any header")
            extra = line.strip()
            if extra:
                last[-1] = f"{last[-1]} {extra}" if last[-1] else extra
            continue
        name, sep, value = line.partition(":")
        name = name.strip().lower()
        if not sep or not name:
            raise SipError(f"bad SIP header line {line[:80]!r}")
        name = COMPACT_FORMS.get(name, name)
        last = headers.setdefault(name, [])
        last.append(value.strip())
    body = rest
    cl_values = headers.get("content-length")
    if cl_values:
        text = cl_values[0]
        if not text.isdigit() or not text.isascii():
            raise SipError(f"bad Content-Length {text[:20]!r}")
        try:
            cl = int(text)
        except ValueError:  # more digits than int() converts (sys.get_int_max_str_digits)
            raise SipError(f"bad Content-Length {text[:20]!r}...") from None
        if cl > len(rest):
            raise SipError(f"Content-Length {cl} but only {len(rest)} body bytes")
        body = rest[:cl]
    return SipMessage(is_request, method, request_uri, status, reason, headers, body)


def _content_length(text: bytes | bytearray) -> int | None:
    """Value of a Content-Length (ASCII digits) in a stream head; None if it is not one,
    or has more digits than int() converts (sys.get_int_max_str_digits: ValueError)."""
    if not text.isdigit():
        return None
    try:
        return int(text)
    except ValueError:
        return None


def frame_stream(buf: bytes | bytearray, pos: int = 0) -> tuple[list[tuple[int, int]], int, str | None]:
    """Message boundaries in a SIP-over-TCP byte stream, without copying it.

    Returns ``(spans, rest, error)``: ``spans`` are the ``(start, end)`` offsets of
    the complete messages from ``pos`` on (leading CRLF keep-alives skipped,
    framing by Content-Length, absent = 0); ``rest`` is the offset of what is
    left (an incomplete message, or ``len(buf)``); ``error`` is None, or why
    the bytes at ``rest`` cannot be the start of a SIP message.
    """
    data = buf
    n = len(data)
    spans: list[tuple[int, int]] = []
    while True:
        pos = _KEEPALIVE.match(data, pos).end()
        if pos >= n:
            return spans, n, None
        if _LOOKS_RE.match(data, pos) is None:
            eol = data.find(b"\n", pos)
            if eol < 0 and n - pos <= 4096 and _PRINTABLE_RE.match(data, pos).end() == n:
                return spans, pos, None  # first line not complete yet
            return spans, pos, f"stream does not start with a SIP message at byte {pos}"
        m = _HEAD_END.search(data, pos)
        if m is None:
            if n - pos > _MAX_HEAD:
                return spans, pos, f"no end of SIP headers within {_MAX_HEAD} bytes"
            return spans, pos, None
        cl_m = _CL_RE.search(data, pos, m.start() + 2)
        cl = 0
        if cl_m is not None:
            cl = _content_length(cl_m.group(1))
            if cl is None:
                return spans, pos, f"bad Content-Length {bytes(cl_m.group(1)[:20])!r}"
        end = m.end() + cl
        if end > n:
            return spans, pos, None
        spans.append((pos, end))
        pos = end


def split_stream(buf: bytes | bytearray) -> tuple[list[bytes], bytes]:
    """Split a SIP-over-TCP byte stream into complete messages and the incomplete rest.

    Leading CRLF keep-alives are skipped. Framing is by Content-Length (absent = 0).
    SipError if the head of the buffer is not SIP.
    """
    data = bytes(buf)
    spans, rest, error = frame_stream(data)
    if error is not None:
        raise SipError(error)
    return [data[a:b] for a, b in spans], data[rest:]

"""SIP over TCP: byte-stream reassembly per direction of a connection.

A SIP message on TCP may span several segments, and one segment may carry the
end of one message and the start of the next (RFC 3261 18.3: framing by
Content-Length).  `TcpStream` rebuilds one direction of one connection from
the segments a mirror port saw, in capture order, and hands back whole SIP
messages, each with the frames that carried its bytes, so a call's call.pcap
holds every segment of its messages.

What a mirror sees is not what the receiver got, so everything here is
tolerant and bounded:

* retransmitted data (a sequence range already seen) adds no bytes; its frame
  still belongs to the message(s) whose bytes it carries (pending ones, or the
  last few delivered ones: `Chunk.of`, routed by `Chunk.owner`);
* a segment ahead of the next expected byte is held (bounded in bytes) until
  the gap fills; a gap still open after `TcpLimits.gap_timeout_s` of capture
  time, or when the held bytes exceed the limit, is skipped: the message it
  cut is handed back as BROKEN and the stream resynchronises at the next SIP
  start line (counted);
* a stream first seen mid-message (capture started late) waits like a gap for
  earlier segments (reordering), then starts at its first SIP start line; where
  boundaries are unknown (there, after a gap, after garbage) only a whole
  standard start line counts (`find_start`), so the tail of a request line is
  never taken for one; CRLF keep-alives between messages are skipped; bytes
  that cannot be framed are handed back as BROKEN, never raised;
* FIN or RST: whatever is complete is delivered, then the stream is forgotten
  (RST forgets both directions).  A SYN on a known key starts afresh.
* memory: per stream at most `max_buffer` bytes of an unfinished message plus
  `max_ahead` bytes held out of order; at most `max_streams` streams and
  `max_total_bytes` buffered over all of them (least recently used evicted
  first); streams idle for `idle_s` of capture time are dropped.

Frames are opaque to this module: the caller passes whatever reference it
wants back (the call engine passes (serial, ts, sensor, linktype, data)).
"""
from __future__ import annotations

import re
from bisect import bisect_left
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from protocols.sip import _CL_RE, _HEAD_END, _MAX_HEAD, _content_length, frame_stream

__all__ = ["TcpLimits", "Chunk", "Owner", "TcpStream", "TcpReassembler", "find_start",
           "MESSAGE", "BROKEN", "RETRANSMISSION", "FIN", "SYN", "RST"]

FIN = 0x01
SYN = 0x02
RST = 0x04

#: What a `Chunk` is.
MESSAGE = 0          # one complete SIP message (framed by Content-Length)
BROKEN = 1           # bytes that could not be framed (cut by a gap, garbage, overflow)
RETRANSMISSION = 2   # a frame repeating bytes of messages already delivered (`of`)

_MASK = 0xFFFFFFFF
_HALF = 0x80000000
_MAX_LINE = 4096      # a partial line kept while looking for a start line
_CRLF_RE = re.compile(rb"[\r\n]*")
# A start line where message boundaries are unknown: the tail of a request line
# ("NVITE sip:...", "TIONS sip:...") looks like one, so only standard methods count, whole.
_STRICT_START_RE = re.compile(
    rb"(?:SIP/2\.0 [1-6][0-9][0-9][ \r\n]|(?:INVITE|ACK|BYE|CANCEL|OPTIONS|REGISTER|PRACK|"
    rb"SUBSCRIBE|NOTIFY|PUBLISH|INFO|REFER|MESSAGE|UPDATE) (?:[Ss][Ii][Pp][Ss]?|[Tt][Ee][Ll]):"
    rb"[^ \r\n]{1,4096} SIP/2\.0\r?\n)")
_NS = 1_000_000_000

COUNTER_NAMES = ("tcp_segments", "tcp_retransmissions", "tcp_out_of_order", "tcp_gaps",
                 "tcp_resyncs", "tcp_skipped_bytes", "tcp_broken", "tcp_overflows",
                 "tcp_streams_evicted", "tcp_streams_expired", "tcp_streams_closed")


@dataclass
class TcpLimits:
    """Bounds of the reassembly (all times in capture time)."""

    max_buffer: int = 256 * 1024        # bytes of one unfinished message
    max_ahead: int = 256 * 1024         # bytes held out of order per stream
    max_frames: int = 4096              # frames referenced by one stream's pending bytes
    recent_messages: int = 16           # delivered messages a late retransmission can join
    gap_timeout_s: float = 1.0          # a gap still open after this is skipped
    max_streams: int = 10_000
    max_total_bytes: int = 64 * 1024 * 1024
    idle_s: float = 300.0


class Owner:
    """Who a delivered message went to (set by the consumer); all a stream keeps of
    its last messages, so a late retransmission finds them without holding their bytes."""

    __slots__ = ("owner",)

    def __init__(self) -> None:
        self.owner: Any = None


class Chunk:
    """What a stream hands back: a message, unframable bytes, or a late retransmission."""

    __slots__ = ("kind", "data", "frames", "ts_ns", "ref", "of")

    def __init__(self, kind: int, data: bytes, frames: list, ts_ns: int,
                 of: list[Owner] | None = None) -> None:
        self.kind = kind
        self.data = data
        self.frames = frames      # frame references, in the order their bytes come
        self.ts_ns = ts_ns        # capture time of the last frame that added bytes to it
        self.ref = Owner()
        self.of = of              # RETRANSMISSION: the delivered messages it repeats

    @property
    def owner(self) -> Any:
        """Set by the consumer (the call the message went to)."""
        return self.ref.owner

    @owner.setter
    def owner(self, value: Any) -> None:
        self.ref.owner = value

    def __repr__(self) -> str:
        kind = ("MESSAGE", "BROKEN", "RETRANSMISSION")[self.kind]
        return f"Chunk({kind}, {self.data[:40]!r}, frames={len(self.frames)}, ts={self.ts_ns})"


def find_start(buf: bytes | bytearray, frm: int = 0) -> int:
    """Offset of the first SIP start line at or after `frm`, or -1.

    Used where the position of message boundaries is unknown (first bytes of a
    stream, after a gap, after garbage), so only a whole standard start line counts
    (`_STRICT_START_RE`), at a line start or not (a message may follow a body that
    does not end in CRLF): the tail of a request line ("NVITE sip:...", "TIONS
    sip:...") is never taken for one.  Extension methods are found only once framing
    is back (`frame_stream`).
    """
    if buf.find(b"SIP/2.0", frm) < 0:
        return -1
    # one search: searching again from the line start at each "SIP/2.0" was quadratic
    # in the length of a line full of them (63 KB of them took half a minute)
    m = _STRICT_START_RE.search(buf, frm)
    return -1 if m is None else m.start()


def _failing_starts(buf: bytes | bytearray):
    """Predicate: would `frame_stream` fail at the start line at offset k of `buf`
    (header section without end within _MAX_HEAD bytes, or a bad Content-Length)?
    Costs one scan of `buf` to build, then a bisection per start line; False where
    it cannot tell cheaply (past the first header end) — framing there decides."""
    n = len(buf)
    head = _HEAD_END.search(buf)
    if head is None:
        return lambda k: n - k > _MAX_HEAD
    end = head.start()
    cls = [(m.start(), _content_length(m.group(1)) is not None)
           for m in _CL_RE.finditer(buf, 0, end + 2)]
    starts = [a for a, _ in cls]

    def fails(k: int) -> bool:
        if k > end:
            return False
        i = bisect_left(starts, k)
        return i < len(cls) and not cls[i][1]
    return fails


def _at_boundary(payload: bytes) -> bool:
    """Does a segment start at a message boundary (a start line, or keep-alive CRLFs)?"""
    k = _CRLF_RE.match(payload).end()
    return k == len(payload) or _STRICT_START_RE.match(payload, k) is not None


def _blank(data: bytes | bytearray) -> bool:
    return _CRLF_RE.match(data).end() == len(data)


class TcpStream:
    """One direction of one TCP connection: segments in, SIP messages out.

    Positions are absolute byte offsets (Python ints: the 32-bit sequence
    number is unwrapped around the next expected byte).  ``buf`` holds the
    bytes from ``start`` up to ``next`` not yet handed back; ``frames`` the
    frames overlapping them as (first, end, frame, ts, carried new bytes).
    """

    __slots__ = ("limits", "counters", "next", "start", "buf", "frames", "synced", "dropped",
                 "tentative", "ooo", "ooo_bytes", "ooo_since", "recent", "last_ns")

    def __init__(self, limits: TcpLimits | None = None,
                 counters: dict[str, int] | None = None) -> None:
        self.limits = limits or TcpLimits()
        self.counters = counters if counters is not None else dict.fromkeys(COUNTER_NAMES, 0)
        self.next: int | None = None      # absolute position of the next expected byte
        self.start = 0                    # absolute position of buf[0]
        self.buf = bytearray()
        self.frames: list[tuple[int, int, Any, int, bool]] = []
        self.synced = False               # buf[0] is a message boundary
        self.dropped = False              # bytes were skipped since the last sync
        self.tentative = False            # first segment seen mid-message: earlier ones may come
        self.ooo: dict[int, tuple[bytes, list[tuple[Any, int]]]] = {}  # position -> data, frames
        self.ooo_bytes = 0
        self.ooo_since: int | None = None  # capture time the oldest held segment arrived
        self.recent: deque[tuple[int, int, Owner]] = deque(maxlen=self.limits.recent_messages)
        self.last_ns = 0

    @property
    def size(self) -> int:
        """Bytes buffered (unfinished message + held out of order)."""
        return len(self.buf) + self.ooo_bytes

    def _abs(self, seq: int) -> int:
        nxt = self.next
        return nxt + (((seq - nxt) + _HALF) & _MASK) - _HALF

    # -- input ------------------------------------------------------------
    def segment(self, ts_ns: int, seq: int, flags: int, payload: bytes, frame: Any) -> list[Chunk]:
        """One TCP segment in capture order; returns what it completed."""
        out: list[Chunk] = []
        self.last_ns = ts_ns
        self.counters["tcp_segments"] += 1
        if flags & SYN:
            if self.buf or self.ooo:
                self.close(out)
            self._reset()
            seq = (seq + 1) & _MASK          # SYN takes one sequence number
            self.next = self.start = seq
            self.synced = True
        n = len(payload)
        if n:
            if self.next is None:            # first data seen, no SYN
                self.next = self.start = seq
                self.tentative = not _at_boundary(payload)
            p = self._abs(seq)
            end = p + n
            if self.tentative and self._tentative(p, payload, frame, ts_ns, out):
                pass
            elif end <= self.next:
                self.counters["tcp_retransmissions"] += 1
                self._old(p, end, frame, ts_ns, out)
            elif p > self.next:
                self._hold(p, payload, frame, ts_ns, out)
            else:
                nxt = self.next
                if p < nxt:
                    self.counters["tcp_retransmissions"] += 1
                    self._old(p, nxt, frame, ts_ns, out, pending=False)
                self.buf += payload[nxt - p:] if p < nxt else payload
                self.next = end
                self.frames.append((p, end, frame, ts_ns, True))
                if self.ooo:
                    self._drain()
                self._frame(out)
        if self.ooo and ts_ns - self.ooo_since > self.limits.gap_timeout_s * _NS:
            self._skip_gaps(out, ts_ns)
        if flags & (FIN | RST):
            self.close(out)
        return out

    def _tentative(self, p: int, payload: bytes, frame: Any, ts_ns: int, out: list[Chunk]) -> bool:
        """The stream's first segment did not start at a message boundary, so what came
        before it may still arrive (reordering): everything is held, and an earlier
        segment becomes the start; the stream starts for good when a segment starting
        a message is the earliest, or when the wait ends like a gap (`_skip_gap`).
        True if the segment was held."""
        if p < self.next:
            if self.next - p > self.limits.max_ahead:
                self.counters["tcp_retransmissions"] += 1
                return True                      # far behind: nothing to do with it
            self.next = self.start = p
            if _at_boundary(payload):
                self.tentative = False
                return False                     # now the first byte: the normal path
        self._hold(p, payload, frame, ts_ns, out)
        self.counters["tcp_out_of_order"] -= 1   # (waiting, not reordered)
        return True

    def _reset(self) -> None:
        self.next = None
        self.start = 0
        self.buf = bytearray()
        self.frames = []
        self.synced = False
        self.dropped = False
        self.tentative = False
        self.ooo = {}
        self.ooo_bytes = 0
        self.ooo_since = None

    def _old(self, p: int, end: int, frame: Any, ts_ns: int, out: list[Chunk],
             pending: bool = True) -> None:
        """A frame repeating bytes [p, end) already seen: it joins their message(s)."""
        if pending and end > self.start and len(self.frames) < self.limits.max_frames:
            self.frames.append((p, end, frame, ts_ns, False))
        if p < self.start and end - p > 1:   # (a 1-byte repeat is a TCP keep-alive probe)
            of = [m for a, b, m in self.recent if a < end and p < b]
            if of:
                out.append(Chunk(RETRANSMISSION, b"", [frame], ts_ns, of))

    def _hold(self, p: int, payload: bytes, frame: Any, ts_ns: int, out: list[Chunk]) -> None:
        """A segment beyond a gap: keep it until the gap fills (bounded)."""
        self.counters["tcp_out_of_order"] += 1
        held = self.ooo.get(p)
        if held is None:
            self.ooo[p] = (payload, [(frame, ts_ns)])
            self.ooo_bytes += len(payload)
        else:
            self.counters["tcp_retransmissions"] += 1
            data, frames = held
            frames.append((frame, ts_ns))
            if len(payload) > len(data):
                self.ooo[p] = (payload, frames)
                self.ooo_bytes += len(payload) - len(data)
        if self.ooo_since is None:
            self.ooo_since = ts_ns
        lim = self.limits
        while self.ooo and (self.ooo_bytes > lim.max_ahead
                            or max(self.ooo) - self.next > lim.max_ahead):
            self._skip_gap(out)

    def _drain(self) -> None:
        """Move held segments that now follow the stream into the buffer."""
        ooo = self.ooo
        for p in sorted(ooo):
            if p > self.next:
                break
            data, frames = ooo.pop(p)
            self.ooo_bytes -= len(data)
            end = p + len(data)
            first = True
            for frame, ts in frames:
                new = first and end > self.next
                if len(self.frames) < self.limits.max_frames or new:
                    self.frames.append((p, end, frame, ts, new))
                first = False
            if end > self.next:
                self.buf += data[self.next - p:]
                self.next = end
        self.ooo_since = min((t for _, fr in ooo.values() for _, t in fr), default=None)

    def _skip_gap(self, out: list[Chunk]) -> None:
        """Give up on the bytes missing before the first held segment."""
        first = min(self.ooo)
        if self.tentative:                  # nothing earlier came: start at a start line
            self.tentative = False
        else:
            self.counters["tcp_gaps"] += 1
            self.counters["tcp_skipped_bytes"] += first - self.next
            self._drop(len(self.buf), out)  # the message the gap cut (BROKEN)
            self.dropped = True
        self.synced = False
        self.next = self.start = first
        self.buf = bytearray()
        self.frames = []
        self._drain()
        self._frame(out)

    def _skip_gaps(self, out: list[Chunk], now_ns: int | None = None) -> None:
        """Skip every gap whose held segments waited too long (all of them if now_ns is None)."""
        limit = self.limits.gap_timeout_s * _NS
        while self.ooo and (now_ns is None or now_ns - self.ooo_since > limit):
            self._skip_gap(out)

    def expire_gaps(self, now_ns: int) -> list[Chunk]:
        out: list[Chunk] = []
        if self.ooo:
            self._skip_gaps(out, now_ns)
        return out

    def close(self, out: list[Chunk]) -> None:
        """End of the stream: deliver what is complete; the rest is BROKEN."""
        if self.ooo:
            self._skip_gaps(out)
        if self.buf:
            self._drop(len(self.buf), out)
        self.frames = []

    # -- framing ------------------------------------------------------------
    def _frame(self, out: list[Chunk]) -> None:
        """Hand back every complete message at the head of the buffer."""
        while self.buf:
            if not self.synced:
                k = find_start(self.buf, 0)
                if k < 0:
                    cut = self.buf.rfind(b"\n") + 1   # keep a partial (start?) line
                    if len(self.buf) - cut > _MAX_LINE:
                        cut = len(self.buf)
                    if cut:
                        self._drop(cut, out, skipped=True)
                    return
                if k:
                    self._drop(k, out, skipped=True)
                if self.dropped:
                    self.counters["tcp_resyncs"] += 1
                    self.dropped = False
                self.synced = True
            buf = self.buf
            spans, rest, error = frame_stream(buf)
            for a, b in spans:
                self._deliver(a, b, bytes(buf[a:b]), out)
            if rest:
                self._consume(rest)
            if error is not None:
                self._unframable(out)
                continue
            if len(self.buf) > self.limits.max_buffer or len(self.frames) > self.limits.max_frames:
                self.counters["tcp_overflows"] += 1
                self._drop(len(self.buf), out)
                self.synced = False
                self.dropped = True
            return

    def _unframable(self, out: list[Chunk]) -> None:
        """The head of the buffer cannot start a SIP message (garbage, a bad
        Content-Length, a header section without end): it comes back as BROKEN up to
        the next start line, where framing goes on."""
        k = find_start(self.buf, 1)
        if k >= 0:
            # Start lines whose message fails in the same way (inside the same header
            # section before a bad Content-Length, or with no header end within
            # _MAX_HEAD) each come back as BROKEN here, without framing each again:
            # that scanned the rest of the buffer once per start line (a 100 KB
            # segment of start lines took seconds).
            fails = _failing_starts(self.buf)   # (offsets of the buffer as it is now)
            prev = 0                             # how much of it is dropped
            while k >= 0 and fails(k):
                self._drop(k - prev, out, skipped=True)
                self.counters["tcp_resyncs"] += 1
                prev = k
                j = find_start(self.buf, 1)
                k = prev + j if j >= 0 else -1
            if prev:
                k = k - prev if k >= 0 else -1
                self.dropped = False
        if k < 0:
            cut = self.buf.rfind(b"\n") + 1          # keep a partial (start?) line
            if cut == 0 or len(self.buf) - cut > _MAX_LINE:
                cut = len(self.buf)
            self._drop(cut, out, skipped=True)
            self.synced = False
            self.dropped = True
        else:
            self._drop(k, out, skipped=True)
            self.counters["tcp_resyncs"] += 1
            self.dropped = False

    def _overlapping(self, a: int, b: int) -> tuple[list, int]:
        frames = []
        ts = None
        for first, end, frame, t, new in self.frames:
            if first < b and a < end:
                frames.append(frame)
                if new and (ts is None or t > ts):
                    ts = t
        return frames, ts if ts is not None else self.last_ns

    def _deliver(self, i: int, j: int, data: bytes, out: list[Chunk]) -> None:
        a, b = self.start + i, self.start + j
        frames, ts = self._overlapping(a, b)
        chunk = Chunk(MESSAGE, data, frames, ts)
        out.append(chunk)
        self.recent.append((a, b, chunk.ref))

    def _consume(self, k: int) -> None:
        del self.buf[:k]
        self.start += k
        start = self.start
        self.frames = [f for f in self.frames if f[1] > start]

    def _drop(self, k: int, out: list[Chunk], skipped: bool = False) -> None:
        """Throw away the first k buffered bytes; if they are not blank they come back as
        BROKEN with their frames (a known Call-ID in them still finds its call)."""
        if k <= 0:
            return
        data = bytes(self.buf[:k])
        if not _blank(data):
            frames, ts = self._overlapping(self.start, self.start + k)
            out.append(Chunk(BROKEN, data, frames, ts))
            self.counters["tcp_broken"] += 1
            if skipped:
                self.counters["tcp_skipped_bytes"] += k
                self.dropped = True
        self._consume(k)


class TcpReassembler:
    """Every TCP stream, keyed by (src ip, sport, dst ip, dport); bounded (LRU, idle expiry,
    total bytes).  The counters are shared by all streams."""

    def __init__(self, limits: TcpLimits | None = None) -> None:
        self.limits = limits or TcpLimits()
        self.streams: OrderedDict[tuple[bytes, int, bytes, int], TcpStream] = OrderedDict()
        self.counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
        self._waiting: set[tuple[bytes, int, bytes, int]] = set()  # streams holding a gap
        self._bytes = 0

    def __contains__(self, key: object) -> bool:
        return key in self.streams

    def __len__(self) -> int:
        return len(self.streams)

    def segment(self, key: tuple[bytes, int, bytes, int], ts_ns: int, seq: int, flags: int,
                payload: bytes, frame: Any) -> list[Chunk]:
        """Feed one segment (creating the stream if it carries data)."""
        out: list[Chunk] = []
        streams = self.streams
        st = streams.get(key)
        if st is None:
            if flags & RST:
                self._close((key[2], key[3], key[0], key[1]), out)
            if not payload:
                return out
            if len(streams) >= self.limits.max_streams:
                self._evict(out)
            st = streams[key] = TcpStream(self.limits, self.counters)
        else:
            streams.move_to_end(key)
        before = st.size
        out += st.segment(ts_ns, seq, flags, payload, frame)
        if flags & (FIN | RST):
            self._bytes -= before
            del streams[key]
            self._waiting.discard(key)
            self.counters["tcp_streams_closed"] += 1
            if flags & RST:
                self._close((key[2], key[3], key[0], key[1]), out)
            return out
        self._bytes += st.size - before
        if st.ooo:
            self._waiting.add(key)
        else:
            self._waiting.discard(key)
        while self._bytes > self.limits.max_total_bytes and len(streams) > 1:
            self._evict(out)
        return out

    def _close(self, key: tuple[bytes, int, bytes, int], out: list[Chunk]) -> None:
        st = self.streams.pop(key, None)
        if st is None:
            return
        self._bytes -= st.size
        self._waiting.discard(key)
        st.close(out)
        self.counters["tcp_streams_closed"] += 1

    def _evict(self, out: list[Chunk]) -> None:
        key = next(iter(self.streams))
        self.counters["tcp_streams_evicted"] += 1
        self.counters["tcp_streams_closed"] -= 1
        self._close(key, out)

    def advance(self, now_ns: int) -> list[Chunk]:
        """Skip gaps that waited too long, forget idle streams."""
        out: list[Chunk] = []
        for key in list(self._waiting):
            st = self.streams[key]
            before = st.size
            out += st.expire_gaps(now_ns)
            self._bytes += st.size - before
            if not st.ooo:
                self._waiting.discard(key)
        horizon = now_ns - int(self.limits.idle_s * _NS)
        streams = self.streams
        while streams:
            key, st = next(iter(streams.items()))
            if st.last_ns > horizon:
                break
            self.counters["tcp_streams_expired"] += 1
            self.counters["tcp_streams_closed"] -= 1
            self._close(key, out)
        return out

    def flush(self) -> list[Chunk]:
        """Close every stream (capture over): everything complete is delivered."""
        out: list[Chunk] = []
        for key in list(self.streams):
            self._close(key, out)
        return out

    def stats(self) -> dict[str, int]:
        c = dict(self.counters)
        c["tcp_streams"] = len(self.streams)
        c["tcp_buffered_bytes"] = self._bytes
        return c

"""Encrypted media of a finished call: which streams are encrypted, and their plaintext
where the keys were visible (SDES, RFC 4568).  Runs at finalize, on the writer thread.

Who encrypts with what (RFC 4568 5.1): each side encrypts what it *sends* with
the key in its *own* SDP.  A stream sent by side s on leg L (``RtpStream.sender``,
``.leg``) of media kind k is governed, at a packet's capture time, by the latest
SDP media line of (L, s, k) at or before it (``FinishedCall.security``; a
re-INVITE re-keys).  It is SRTP when that line is secure (SAVP profile or
a=crypto) and the other side's latest line is too (an RTP/AVP offer with
a=crypto answered without it stays plain RTP); after the first ZRTP packet
(RFC 6189) on its flow, in either direction, it is SRTP whatever the SDP says.

* SDES keys of a supported suite (controller/media/srtp.py): every packet is tried
  with the key that opened the stream's previous packet, then the governing
  line's keys, then every other key of that side (packets around a re-key
  still carry the old one); one that none opens is an authentication failure
  and is dropped (counted, never decoded).  A packet that no key opens while
  the governing line is plain is plain RTP.
* DTLS-SRTP (``UDP/TLS/...`` or a=fingerprint), ZRTP, SAVP with an unsupported
  suite or no key at all: its SRTP packets are not decoded (``reason`` says
  why); quality figures from the clear RTP headers are still computed.

The result (`SecureMedia`) gives the audio and DTMF code the call as it should
be heard: stream views whose payload references point at the plaintext (in
memory, or for a spilled call in a file beside its spill files) and that leave
out everything still encrypted; call.pcap keeps the packets as captured.
SRTCP is decrypted the same way (`SecureMedia.rtcp`: frame index -> RTCP in
clear, or None when it stays encrypted) for quality.py.
"""
from __future__ import annotations

import mmap
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from protocols.errors import DecodeError
from protocols.layers import decode

from controller.media.quality import rtp_header_offset
from controller.media.srtp import AUTH_FAILED, OK, REPLAY, Decryptor, SdesKey, SdesKeyError, sdes_keys
from controller.media.streams import PayloadRun, RtpStream

__all__ = ["StreamSecurity", "SecureMedia", "secure_media"]

_NS = 1_000_000_000
_MASK = (1 << 17) - 1
SWITCH_NS = 2 * _NS         # after a re-INVITE to plain RTP, old keys are still tried this long

_REASONS = {
    "dtls-srtp": "keys negotiated by DTLS (RFC 5764) inside the media path: not visible to a recorder",
    "zrtp": "keys negotiated in-band by ZRTP (RFC 6189): not visible to a recorder",
    "unknown": "encrypted profile without any key exchange the recorder knows (no a=crypto, "
               "a=fingerprint or ZRTP)",
}


@dataclass
class StreamSecurity:
    """call.json ``streams[].encryption`` of one stream (None for plain RTP)."""

    method: str | None = None       # "sdes" | "dtls-srtp" | "zrtp" | "unknown"; None: plain
    suite: str | None = None        # SDES crypto suite of the key that opened it (or offered)
    keys: str = "none"              # "visible": SDES keys in the signalling
    decrypted: int = 0              # SRTP packets decrypted
    auth_failures: int = 0          # SRTP packets no visible key authenticated
    not_decrypted: int = 0          # SRTP packets with no usable key (not decoded)
    reason: str | None = None       # why (some) packets were not decrypted

    @property
    def encrypted(self) -> bool:
        return self.method is not None

    def as_json(self) -> dict[str, Any] | None:
        if self.method is None:
            return None
        return {"method": self.method, "suite": self.suite, "keys": self.keys,
                "decrypted": self.decrypted, "auth_failures": self.auth_failures,
                "not_decrypted": self.not_decrypted, "reason": self.reason}


class _View:
    """A stream as audio/DTMF see it: its own attributes, other payload runs."""

    def __init__(self, stream: RtpStream, by_pt: dict[int, PayloadRun]) -> None:
        self._stream = stream
        self.by_pt = by_pt

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _Plain:
    """Plaintext payloads appended after the call's frames (virtual frame indexes
    ``base + k``): a list in memory, or a file read through a map (a spilled call)."""

    def __init__(self, path: Path | None) -> None:
        self.items: list[bytes] = []
        self.ts = array("q")
        self.path = path
        self._fh = open(path, "w+b") if path is not None else None   # noqa: SIM115
        self._offsets = array("q", [0])
        self._mm: mmap.mmap | None = None

    def add(self, ts_ns: int, payload: bytes) -> int:
        self.ts.append(ts_ns)
        if self._fh is None:
            self.items.append(payload)
            return len(self.items) - 1
        self._fh.write(payload)
        self._offsets.append(self._offsets[-1] + len(payload))
        return len(self._offsets) - 2

    def __len__(self) -> int:
        return len(self.ts)

    def __getitem__(self, k: int) -> bytes:
        if self._fh is None:
            return self.items[k]
        if self._mm is None:
            self._fh.flush()
            self._mm = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ) \
                if self._offsets[-1] else None
        if self._mm is None:
            return b""
        return self._mm[self._offsets[k]:self._offsets[k + 1]]

    def close(self) -> None:
        if self._mm is not None:
            self._mm.close()
            self._mm = None
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            if self.path is not None:
                self.path.unlink(missing_ok=True)


class _Concat(Sequence):
    """The call's frames (or capture times) followed by the plaintext ones."""

    def __init__(self, base: Sequence, extra: Sequence) -> None:
        self.base = base
        self.extra = extra
        self.n = len(base)

    def __len__(self) -> int:
        return self.n + len(self.extra)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self.base[i] if i < self.n else self.extra[i - self.n]

    def __iter__(self) -> Iterator:
        yield from self.base
        yield from self.extra


@dataclass
class SecureMedia:
    security: list[StreamSecurity]          # per call.streams index
    streams: list                           # what audio/DTMF use (views), same order
    frame_ts: Sequence[int]
    frame_data: Sequence[bytes]
    rtcp: dict[int, bytes | None] = field(default_factory=dict)
    rtcp_dropped: int = 0                   # SRTCP packets left encrypted
    negotiated: bool = False                # some SDP of the call asked for encryption
    _plain: _Plain | None = None

    @property
    def encrypted(self) -> bool:
        """Any stream encrypted (with no media at all: an SDP asked for encryption)."""
        return any(s.encrypted for s in self.security) or (self.negotiated and not self.security)

    def close(self) -> None:
        if self._plain is not None:
            self._plain.close()


# -- what each side's SDP says -------------------------------------------------------

@dataclass
class _Line:
    ts: int
    secure: bool
    method: str | None
    keys: list[SdesKey]
    suite: str | None
    problem: str | None             # why the a=crypto keys cannot be used


def _line(ts: int, sec) -> _Line:
    if not sec.encrypted:
        return _Line(ts, False, None, [], None, None)
    keys: list[SdesKey] = []
    problems = []
    suite = sec.crypto[0][1] if sec.crypto else None
    tls = "TLS" in sec.profile.upper()
    if sec.crypto and not tls:
        for tag, name, params in sec.crypto:
            try:
                keys.extend(sdes_keys(tag, name, params))
            except SdesKeyError as e:
                problems.append(str(e))
    if tls or (sec.dtls and not keys):
        method = "dtls-srtp"
    elif sec.crypto and not tls:
        method = "sdes"
    elif sec.zrtp:
        method = "zrtp"
    else:
        method = "unknown"
    problem = None
    if method == "sdes" and not keys:
        problem = "; ".join(dict.fromkeys(problems)) or "no usable key"
    return _Line(ts, True, method, keys, keys[0].suite if keys else suite, problem)


def _governing(lines: list[_Line], t: int) -> int:
    """Index of the latest line at or before t (the first one before any)."""
    k = 0
    for i, ln in enumerate(lines):
        if ln.ts <= t:
            k = i
        else:
            break
    return k


def _lines_of(call: Any, s: RtpStream, side: int) -> list[_Line]:
    own = [(t, sec) for t, leg, sd, kind, sec in call.security
           if sd == side and kind == s.kind and leg == s.leg]
    if not own:     # a stream matched on another leg (relay): that side's lines on any leg
        own = [(t, sec) for t, leg, sd, kind, sec in call.security if sd == side and kind == s.kind]
    return [_line(t, sec) for t, sec in own]


# -- one stream -------------------------------------------------------------------------

class _Work:
    """Everything about one stream's packets while they are sorted out."""

    def __init__(self, call: Any, s: RtpStream, zrtp_ns: int | None) -> None:
        self.s = s
        self.own = _lines_of(call, s, s.sender)
        self.peer = _lines_of(call, s, 1 - s.sender)
        self.zrtp_ns = zrtp_ns
        self.info = StreamSecurity()
        self.decs: dict[SdesKey, Decryptor] = {}
        self.last: Decryptor | None = None
        methods = [ln.method for ln in self.own if ln.secure]
        if zrtp_ns is not None:
            self.info.method = "zrtp"
        elif methods and self._any_effective():
            self.info.method = methods[-1]
        keyed = [ln for ln in self.own if ln.keys]
        if keyed:
            self.info.keys = "visible"
        if self.info.method is not None:
            self.info.suite = next((ln.suite for ln in reversed(self.own) if ln.suite), None)

    def _any_effective(self) -> bool:
        return any(self.effective(i, ln.ts) for i, ln in enumerate(self.own))

    def effective(self, g: int, t: int) -> bool:
        """Is the own line ``g`` (governing at time t) in force as SRTP?"""
        if not self.own or not self.own[g].secure:
            return False
        if not self.peer:
            return True
        return self.peer[_governing(self.peer, t)].secure

    def candidates(self, g: int) -> list[Decryptor]:
        order = list(self.own[g].keys)
        for ln in reversed(self.own):
            order.extend(k for k in ln.keys if k not in order)
        out = []
        for k in order:
            d = self.decs.get(k)
            if d is None:
                d = self.decs[k] = Decryptor(k)
            out.append(d)
        return out

    def open(self, packet: bytes, g: int) -> tuple[int, bytes]:
        """Decrypt with the last key that worked, then the candidates."""
        code = AUTH_FAILED
        if self.last is not None:
            code, out = self.last.rtp(packet)
            if code == OK:
                return OK, out
        for d in self.candidates(g):
            if d is self.last:
                continue
            c, out = d.rtp(packet)
            if c == OK:
                self.last = d
                if d.key.suite != self.info.suite:
                    self.info.suite = d.key.suite
                return OK, out
            if c == REPLAY:
                code = REPLAY
        return code, b""


def _stream_packets(s: RtpStream) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(refs, RTP timestamps, payload types) of the packets it kept, in arrival order."""
    refs_l, ts_l, pt_l = [], [], []
    for pt, run in s.by_pt.items():
        refs = np.asarray(run.refs, dtype=np.int64)
        ok = refs >= 0
        refs_l.append(refs[ok])
        ts_l.append(np.asarray(run.timestamps, dtype=np.int64)[ok])
        pt_l.append(np.full(int(ok.sum()), pt, dtype=np.int64))
    if not refs_l:
        z = np.zeros(0, np.int64)
        return z, z, z
    refs = np.concatenate(refs_l)
    order = np.argsort(refs, kind="stable")
    return refs[order], np.concatenate(ts_l)[order], np.concatenate(pt_l)[order]


def _runs(s: RtpStream, keep: list[tuple[int, int, int]]) -> dict[int, PayloadRun]:
    """Payload runs of (pt, RTP timestamp, ref) in arrival order."""
    out: dict[int, PayloadRun] = {}
    for pt, ts, ref in keep:
        run = out.get(pt)
        if run is None:
            run = out[pt] = PayloadRun(s.by_pt[pt].first_ns)
        run.timestamps.append(ts)
        run.refs.append(ref)
    return out


def _udp_end(call: Any, data: bytes, fallback: int) -> int:
    try:
        d = decode(call.linktype, data)
    except DecodeError:
        return fallback
    return d.payload_offset + d.payload_len


def _sdes_stream(call: Any, w: _Work, plain: _Plain, base: int) -> dict[int, PayloadRun]:
    """Decrypt an SDES stream packet by packet; returns its runs over the plaintext."""
    s, info = w.s, w.info
    refs, tss, pts = _stream_packets(s)
    frames, times = call.frame_data, call.frame_ts
    other = set(call.other_linktype)
    keep: list[tuple[int, int, int]] = []
    own = w.own
    for ref, ts, pt in zip(refs.tolist(), tss.tolist(), pts.tolist()):
        idx = ref >> 34
        start = (ref >> 17) & _MASK
        end = ref & _MASK
        t = times[idx]
        if w.zrtp_ns is not None and t >= w.zrtp_ns:
            info.not_decrypted += 1
            continue
        data = frames[idx]
        hdr = rtp_header_offset(data, start, s.ssrc)
        if hdr < 0:
            info.not_decrypted += 1
            continue
        if data[hdr] & 0x20 and idx not in other:       # padding: the stream cut `end` short
            end = _udp_end(call, data, end)
        g = _governing(own, t)
        secure = w.effective(g, t)
        if secure or w.last is not None or t - own[g].ts < SWITCH_NS:
            code, out = w.open(bytes(data[hdr:end]), g)
        else:
            code, out = AUTH_FAILED, b""
        if code == OK:
            info.decrypted += 1
            payload = out[start - hdr:]
            if out[0] & 0x20 and payload:
                payload = payload[:max(0, len(payload) - payload[-1])]
        elif not secure:
            payload = bytes(data[start:ref & _MASK])  # plain RTP (the line says so)
        else:
            if code == AUTH_FAILED:
                info.auth_failures += 1
            continue                                  # replays: copies, never audio
        k = plain.add(t, bytes(payload))
        keep.append((pt, ts, ((base + k) << 34) | len(payload)))
    if info.auth_failures and info.reason is None:
        info.reason = "packets that no visible key authenticates are not decoded"
    return _runs(s, keep)


def _keyless_stream(call: Any, w: _Work) -> dict[int, PayloadRun]:
    """A stream without usable keys: only the packets sent in clear remain."""
    s, info = w.s, w.info
    refs, tss, pts = _stream_packets(s)
    times = call.frame_ts
    keep: list[tuple[int, int, int]] = []
    for ref, ts, pt in zip(refs.tolist(), tss.tolist(), pts.tolist()):
        t = times[ref >> 34]
        if (w.zrtp_ns is not None and t >= w.zrtp_ns) or \
                (w.own and w.effective(_governing(w.own, t), t)):
            info.not_decrypted += 1
        else:
            keep.append((pt, ts, ref))
    return _runs(s, keep)


def _reason(w: _Work) -> str | None:
    if w.zrtp_ns is not None:
        return _REASONS["zrtp"]
    bad = [ln for ln in w.own if ln.secure and ln.problem]
    if bad:
        return f"SDES key not usable: {bad[-1].problem}"
    return _REASONS.get(w.info.method or "")


# -- the call -----------------------------------------------------------------------------

def _zrtp_start(call: Any, s: RtpStream) -> int | None:
    times = [call.zrtp.get(f) for f in ((s.src, s.sport, s.dst, s.dport),
                                        (s.dst, s.dport, s.src, s.sport))]
    times = [t for t in times if t is not None]
    return min(times) if times else None


def secure_media(call: Any) -> SecureMedia:
    """Sort out the encrypted media of a finished call (finalize.FinishedCall)."""
    negotiated = any(sec.encrypted for _, _, _, _, sec in call.security)
    works = []
    for s in call.streams:
        z = _zrtp_start(call, s)
        works.append(_Work(call, s, z) if (negotiated or z is not None) else None)
    if not any(w is not None and (w.info.encrypted or w.info.keys == "visible") for w in works):
        return SecureMedia([w.info if w else StreamSecurity() for w in works], list(call.streams),
                           call.frame_ts, call.frame_data, negotiated=negotiated)
    spill = getattr(call, "spill", None)
    plain = _Plain(spill.path.with_suffix(".plain") if spill is not None else None)
    base = len(call.frame_data)
    views: list = []
    for s, w in zip(call.streams, works):
        if w is None or not (w.info.encrypted or w.info.keys == "visible"):
            views.append(s)
            continue
        if w.info.keys == "visible" and s.kind == "audio":
            views.append(_View(s, _sdes_stream(call, w, plain, base)))
            if w.info.decrypted and w.info.method is None:
                w.info.method = "sdes"          # SRTP although the answer looked plain
        else:
            views.append(_View(s, _keyless_stream(call, w)))
        if w.info.encrypted and (w.info.not_decrypted or not w.info.decrypted):
            w.info.reason = w.info.reason or _reason(w)
        if s.kind != "audio" and w.info.keys == "visible":
            w.info.reason = "not audio: left encrypted (call.pcap has it)"
    if spill is None:
        frame_data: Sequence[bytes] = list(call.frame_data) + plain.items
        frame_ts: Sequence[int] = list(call.frame_ts) + plain.ts.tolist()
    else:
        frame_data = _Concat(call.frame_data, plain)
        frame_ts = _Concat(call.frame_ts, plain.ts)
    out = SecureMedia([w.info if w else StreamSecurity() for w in works], views, frame_ts,
                      frame_data, negotiated=negotiated, _plain=plain)
    _srtcp(call, works, out)
    return out


def _srtcp(call: Any, works: list, out: SecureMedia) -> None:
    """Decrypt the call's SRTCP (sender SSRC in clear at bytes 4..8) with the keys of
    the stream that SSRC sends, else any key of the call; encrypted RTCP nobody can
    open is None (left out of the RTCP figures)."""
    by_ssrc: dict[int, list[_Work]] = {}
    for w in works:
        if w is not None:
            by_ssrc.setdefault(w.s.ssrc, []).append(w)
    every = [w for w in works if w is not None]
    all_secure = bool(every) and all(w.info.encrypted for w in every)
    skip = set(call.other_linktype)
    for idx in call.rtcp_frames:
        if idx in skip:
            continue
        data = call.frame_data[idx]
        try:
            d = decode(call.linktype, data)
        except DecodeError:
            continue
        pkt = bytes(data[d.payload_offset:d.payload_offset + d.payload_len])
        if len(pkt) < 8:
            continue
        t = call.frame_ts[idx]
        ssrc = int.from_bytes(pkt[4:8], "big")
        mine = by_ssrc.get(ssrc, [])
        near = [w for w in mine if w.s.src == d.src] or mine
        opened = None
        for w in near + [w for w in every if w not in near]:
            if not w.own or not any(ln.keys for ln in w.own):
                continue
            for dec in w.candidates(_governing(w.own, t)):
                code, plain = dec.rtcp(pkt)
                if code == OK:
                    opened = plain
                    break
            if opened is not None:
                break
        if opened is not None:
            out.rtcp[idx] = opened
            continue
        secure = any(w.info.encrypted for w in near) if near else all_secure
        if secure:
            out.rtcp[idx] = None
            out.rtcp_dropped += 1

"""Ethernet/IPv4/UDP frames for the call generator (``scripts/gencalls.py``).

Kept apart from the call logic: SIP and RTCP frames go through the plain
``udp_frame`` (real checksums, a few per call), RTP through ``RtpSource``,
which builds frames in numpy chunks because it makes almost all of them.
"""
from __future__ import annotations

import ipaddress
import struct
from functools import lru_cache
from typing import Any

import numpy as np

from controller.media.audio import alaw_encode, ulaw_encode

MS = 1_000_000
SEC = 1_000_000_000
PTIME_NS = 20 * MS
FRAME = 160                                   # G.711 octets (= samples) per 20 ms
PAYLOAD_TYPES = {"PCMU": 0, "PCMA": 8}
RTCP_INTERVAL_NS = 5 * SEC


def _fold(s: Any) -> Any:
    """One's complement fold of a 32-bit sum (int or numpy array alike)."""
    s = (s & 0xFFFF) + (s >> 16)
    return (s & 0xFFFF) + (s >> 16)


def _wordsum(data: bytes) -> int:
    if len(data) & 1:
        data += b"\0"
    return sum(struct.unpack(f"!{len(data) // 2}H", data))


def _mac(ip: bytes) -> bytes:
    return b"\x02\x00" + ip  # locally administered, derived from the address


def udp_frame(src: str, dst: str, sport: int, dport: int, payload: bytes, ip_id: int, tos: int = 0x68) -> bytes:
    """One Ethernet/IPv4/UDP frame with correct IP and UDP checksums (slow path: SIP, RTCP)."""
    s, d = ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed
    ulen = 8 + len(payload)
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, tos, 20 + ulen, ip_id & 0xFFFF, 0x4000, 64, 17, 0, s, d)
    ip = ip[:10] + struct.pack(">H", ~_fold(_wordsum(ip)) & 0xFFFF) + ip[12:]
    csum = ~_fold(_wordsum(s + d) + 17 + ulen + sport + dport + ulen + _wordsum(payload)) & 0xFFFF
    udp = struct.pack(">HHHH", sport, dport, ulen, csum or 0xFFFF)
    return _mac(d) + _mac(s) + b"\x08\x00" + ip + udp + payload


@lru_cache(maxsize=256)
def tone_frames(codec: str, freq: int) -> tuple[tuple[bytes, ...], tuple[int, ...]]:
    """One second (50 frames) of a tone with a 2 Hz envelope: loops seamlessly
    because both frequencies are whole numbers of cycles per second."""
    t = np.arange(8000) / 8000.0
    pcm = (9000 * (0.55 + 0.45 * np.sin(2 * np.pi * 2 * t)) * np.sin(2 * np.pi * freq * t)).astype(np.int16)
    octets = (ulaw_encode if codec == "PCMU" else alaw_encode)(pcm).tobytes()
    frames = tuple(octets[k * FRAME:(k + 1) * FRAME] for k in range(50))
    return frames, tuple(_wordsum(f) for f in frames)


_ROW = 54 + FRAME                              # bytes of one RTP frame
_CHUNK = 100                                   # RTP frames built per numpy pass (2 s)


def _be(values: np.ndarray, dtype: str) -> np.ndarray:
    """Big-endian bytes of each value, one row per value."""
    return values.astype(dtype).view(np.uint8).reshape(len(values), -1)


class RtpSource:
    """RTP (and RTCP) of one direction.

    Frames are built ``_CHUNK`` at a time with numpy on one template row:
    only IP ID, both checksums, sequence number, timestamp, marker and payload
    change per packet, and the checksums are updated incrementally from
    precomputed sums (the payload sums come with the looping tone).  Python
    then only slices the chunk per packet.
    """

    def __init__(self, src: str, dst: str, sport: int, dport: int, ssrc: int, codec: str, tone_hz: int,
                 packets: int, first_ns: int, seed_key: list[int], rtcp: bool) -> None:
        rng = np.random.default_rng(seed_key)
        self.src, self.dst, self.sport, self.dport, self.ssrc = src, dst, sport, dport, ssrc
        self.pt = pt = PAYLOAD_TYPES[codec]
        payloads, paysums = tone_frames(codec, tone_hz)
        self.paymat = np.frombuffer(b"".join(payloads), np.uint8).reshape(len(payloads), FRAME)
        self.paysums = np.array(paysums, dtype=np.int64)
        self.seq0, self.ts0, self.id0 = (int(x) for x in rng.integers(0, [1 << 16, 1 << 32, 1 << 16]))
        s, d = ipaddress.IPv4Address(self.src).packed, ipaddress.IPv4Address(self.dst).packed
        ulen = 8 + 12 + FRAME
        row = (_mac(d) + _mac(s) + b"\x08\x00" + struct.pack(">BBHHHBBH", 0x45, 0xB8, 20 + ulen, 0, 0x4000, 64, 17, 0)
               + s + d + struct.pack(">HHHHBBHII", self.sport, self.dport, ulen, 0, 0x80, pt, 0, 0, ssrc))
        self.template = np.frombuffer(row + bytes(FRAME), np.uint8)
        self.ip_base = _wordsum(row[14:34])
        self.udp_base = (_wordsum(s + d) + 17 + ulen + self.sport + self.dport + ulen
                         + (0x8000 | pt) + (ssrc >> 16) + (ssrc & 0xFFFF))
        # Sender jitter: +-2 ms at most, so packets of a stream stay in order.
        n = packets
        self.times = (first_ns + np.arange(n, dtype=np.int64) * PTIME_NS
                      + np.clip(rng.normal(0, 300_000, n), -2 * MS, 2 * MS).astype(np.int64))
        self.start_ns = first_ns - 2 * MS
        self.pos, self.chunk_at, self.chunk = 0, -2 * _CHUNK, b""
        self.next_rtcp = first_ns + RTCP_INTERVAL_NS if rtcp else None
        self.done = n == 0

    def _build(self, a: int, b: int) -> bytes:
        i = np.arange(a, b, dtype=np.int64)
        seq, ts, ip_id, k = (self.seq0 + i) & 0xFFFF, (self.ts0 + i * FRAME) & 0xFFFFFFFF, (self.id0 + i) & 0xFFFF, i % 50
        marker = np.where(i == 0, 0x80, 0)
        ucs = ~_fold(self.udp_base + marker + seq + (ts >> 16) + (ts & 0xFFFF) + self.paysums[k]) & 0xFFFF
        arr = np.empty((b - a, _ROW), np.uint8)
        arr[:] = self.template
        arr[:, 18:20] = _be(ip_id, ">u2")
        arr[:, 24:26] = _be(~_fold(self.ip_base + ip_id) & 0xFFFF, ">u2")
        arr[:, 40:42] = _be(np.where(ucs == 0, 0xFFFF, ucs), ">u2")
        arr[:, 43] = self.pt | marker
        arr[:, 44:46] = _be(seq, ">u2")
        arr[:, 46:50] = _be(ts, ">u4")
        arr[:, 54:] = self.paymat[k]
        return arr.tobytes()

    def until(self, t_end: int) -> list[tuple[int, bytes]]:
        """Frames earlier than ``t_end`` not returned yet (unordered: the merge sorts)."""
        times, n = self.times, len(self.times)
        j = int(np.searchsorted(times, t_end))
        out: list[tuple[int, bytes]] = []
        while self.next_rtcp is not None and self.next_rtcp < t_end:
            t = self.next_rtcp
            if n == 0 or t > times[-1]:
                self.next_rtcp = None
                break
            i = int(np.searchsorted(times, t))  # packets sent before this report
            out.append((t, _rtcp(self.src, self.dst, self.sport + 1, self.dport + 1, self.ssrc, t,
                                 (self.ts0 + i * FRAME) & 0xFFFFFFFF, i, i * FRAME, self.id0 + i + 30000)))
            self.next_rtcp = t + RTCP_INTERVAL_NS
        while self.pos < j:
            if not self.chunk_at <= self.pos < self.chunk_at + _CHUNK:
                self.chunk_at = self.pos
                self.chunk = self._build(self.pos, min(n, self.pos + _CHUNK))
            e = min(j, self.chunk_at + _CHUNK)
            buf, base = self.chunk, (self.pos - self.chunk_at) * _ROW
            out.extend(zip(times[self.pos:e].tolist(),
                           [buf[o:o + _ROW] for o in range(base, base + (e - self.pos) * _ROW, _ROW)]))
            self.pos = e
        if self.pos >= n and self.next_rtcp is None:
            self.done, self.chunk = True, b""
        return out


def _rtcp(src: str, dst: str, sport: int, dport: int, ssrc: int, t_ns: int, rtp_ts: int,
          packets: int, octets: int, ip_id: int) -> bytes:
    """RTCP compound packet: sender report + SDES CNAME."""
    secs, frac = divmod(t_ns, SEC)
    ntp_hi, ntp_lo = secs + 2_208_988_800, (frac << 32) // SEC
    sr = struct.pack(">BBHIIIIII", 0x80, 200, 6, ssrc, ntp_hi, ntp_lo, rtp_ts, packets, octets)
    cname = f"gencalls@{src}".encode()
    item = bytes([1, len(cname)]) + cname + b"\0" * (4 - (2 + len(cname)) % 4)  # null-terminated, padded
    sdes = struct.pack(">BBHI", 0x81, 202, (4 + len(item)) // 4, ssrc) + item
    return udp_frame(src, dst, sport, dport, sr + sdes, ip_id, tos=0xB8)

"""A waveform for the player: per channel, the min and max sample of each of
N equal slices of a recording's audio.wav, read in bounded chunks through the
store's range reads (a one-hour call never sits in memory whole).

Only PCM WAV (audio.wav, what spanrec writes by default: 16-bit, 2 channels)
is measured; other audio formats get no waveform (`PeaksError`).
"""
from __future__ import annotations

import struct
from typing import Callable

import numpy as np

__all__ = ["PeaksError", "wav_peaks"]

_CHUNK = 1 << 20


class PeaksError(ValueError):
    """No waveform for this file (why)."""


def _data_chunk(head: bytes) -> tuple[int, int, int, int]:
    """(data offset, data size, channels, sample rate) of a 16-bit PCM WAV header."""
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RF64") or head[8:12] != b"WAVE":
        raise PeaksError("not a WAV file")
    pos = 12
    channels = rate = bits = None
    while pos + 8 <= len(head):
        cid, size = head[pos:pos + 4], struct.unpack_from("<I", head, pos + 4)[0]
        body = pos + 8
        if cid == b"fmt ":
            if body + 16 > len(head):
                break
            fmt, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", head, body)
            if fmt not in (1, 0xFFFE) or bits != 16:
                raise PeaksError(f"WAV format {fmt} with {bits} bits: only 16-bit PCM")
        elif cid == b"data":
            if channels is None or rate is None:
                break
            return body, size, channels, rate
        pos = body + size + (size & 1)
    raise PeaksError("WAV header without fmt/data in its first bytes")


def wav_peaks(read: Callable[[int, int], bytes], file_size: int, n: int = 800) -> dict:
    """`read(start, length)` reads the file; returns {"duration_s", "rate",
    "channels": [[[min, max] per slice] per channel]} with samples scaled to -1..1."""
    if not 10 <= n <= 4000:
        raise PeaksError("slices: between 10 and 4000")
    head = read(0, 4096)
    off, size, ch, rate = _data_chunk(head)
    if size in (0, 0xFFFFFFFF) or off + size > file_size:
        size = file_size - off            # RF64 or a size the writer could not know
    frames = size // (2 * ch)
    if frames == 0:
        return {"duration_s": 0.0, "rate": rate, "channels": [[] for _ in range(ch)]}
    edges = np.linspace(0, frames, n + 1).astype(np.int64)
    lo = np.zeros((ch, n), dtype=np.int32)
    hi = np.zeros((ch, n), dtype=np.int32)
    step = max(1, _CHUNK // (2 * ch))
    for f0 in range(0, frames, step):
        f1 = min(frames, f0 + step)
        raw = read(off + f0 * 2 * ch, (f1 - f0) * 2 * ch)
        got = len(raw) // (2 * ch)
        if got == 0:
            break
        x = np.frombuffer(raw[:got * 2 * ch], dtype="<i2").reshape(got, ch)
        # slices touching this chunk
        s0 = int(np.searchsorted(edges, f0, side="right")) - 1
        s1 = int(np.searchsorted(edges, f0 + got, side="left"))
        for s in range(max(s0, 0), min(s1, n)):
            a = max(edges[s], f0) - f0
            b = min(edges[s + 1], f0 + got) - f0
            if b > a:
                seg = x[a:b]
                lo[:, s] = np.minimum(lo[:, s], seg.min(axis=0))
                hi[:, s] = np.maximum(hi[:, s], seg.max(axis=0))
    scale = 1 / 32768.0
    return {"duration_s": frames / rate, "rate": rate,
            "channels": [[[round(float(lo[c, s]) * scale, 4), round(float(hi[c, s]) * scale, 4)]
                          for s in range(n)] for c in range(ch)]}

"""Last line of defence against audio made from ciphertext: does a decoded channel look
like random noise?

A sample codec fed encrypted bytes plays full-scale white noise: G.711 of
uniformly random octets uses all 256 code values equally often (code entropy
~8 bits), neighbouring samples are uncorrelated and the spectrum is flat.  Real
audio is never all of these at once: speech, tones, DTMF and modem signals have
a shaped spectrum (and mostly strong neighbour correlation); silence, comfort
noise and line hiss can be white but are quiet, so they use few code values.

The channel's decoded samples (at the codec's rate, before any resampling) are
cut in windows of ``WINDOW``; windows quieter than ``QUIET_RMS`` are not judged.
A judged window is *noise-like* when its µ-law code entropy is at least
``ENTROPY_BITS``, its spectral flatness (Welch, Hann, 256-sample segments) at
least ``FLATNESS`` and |lag-1 autocorrelation| at most ``CORRELATION``.  A channel
is flagged when at least ``MIN_WINDOWS`` windows and ``MIN_FRACTION`` of the judged
ones are noise-like.  Figures behind the thresholds: docs/DECISIONS.md
("Encrypted media").  Cost: ~0.1 ms per window (0.26 s of 8 kHz audio); so that
it stays a small part of finalizing a long call, the first ``FULL_WINDOWS``
windows of a channel are all judged and after them one in ``STRIDE`` (each
standing for ``STRIDE`` windows in ``noise_s``): ciphertext makes every window
noise-like, so sampling changes no verdict, and it measured 35 % of finalize
CPU (200 calls x 10 s) before.
"""
from __future__ import annotations

import numpy as np

from controller.media.audio import ulaw_encode

__all__ = ["WINDOW", "window_stats", "NoiseMeter"]

WINDOW = 2048
_SEG = 256
QUIET_RMS = 200.0           # ~ -44 dBFS
ENTROPY_BITS = 7.0
FLATNESS = 0.6
CORRELATION = 0.25
MIN_WINDOWS = 2
MIN_FRACTION = 0.25
FULL_WINDOWS = 16
STRIDE = 4
_HANN = np.hanning(_SEG)


def window_stats(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(rms, µ-law code entropy in bits, spectral flatness, lag-1 autocorrelation) of
    every row of ``w`` (int16, k × WINDOW)."""
    x = w.astype(np.float64)
    flat, r1 = _shape(x)
    return _rms(x), _entropy(w), flat, r1


def _rms(x: np.ndarray) -> np.ndarray:
    return np.sqrt((x * x).mean(axis=1))


def _entropy(w: np.ndarray) -> np.ndarray:
    """µ-law code entropy in bits of every row of ``w`` (int16)."""
    k = w.shape[0]
    codes = ulaw_encode(w.reshape(-1)).astype(np.int64).reshape(k, -1)
    counts = np.bincount((codes + 256 * np.arange(k)[:, None]).reshape(-1),
                         minlength=256 * k).reshape(k, 256)
    p = counts / w.shape[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log2(p), 0.0).sum(axis=1)


def _shape(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(spectral flatness, lag-1 autocorrelation) of every row of ``x`` (float64)."""
    xc, r1 = _correlation(x)
    return _flatness(xc), r1


def _correlation(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows less their mean, lag-1 autocorrelation) of every row of ``x``."""
    xc = x - x.mean(axis=1, keepdims=True)
    energy = (xc * xc).sum(axis=1)
    safe = np.where(energy > 0, energy, 1.0)
    r1 = np.where(energy > 0, (xc[:, 1:] * xc[:, :-1]).sum(axis=1) / safe, 1.0)
    return xc, r1


def _flatness(xc: np.ndarray) -> np.ndarray:
    """Spectral flatness (Welch, Hann, `_SEG`-sample segments, no DC) of every row."""
    k = xc.shape[0]
    segs = xc.reshape(k, -1, _SEG) * _HANN
    psd = (np.abs(np.fft.rfft(segs, axis=2)) ** 2).mean(axis=1)[:, 1:]   # no DC
    psd = np.maximum(psd, 1e-12)
    return np.exp(np.log(psd).mean(axis=1)) / psd.mean(axis=1)


def _noise_like(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(loud, noise-like) of every row of ``w``: the same verdicts as thresholds on
    `window_stats`, each test run only on the rows that passed the cheaper ones
    before it (rms, entropy, neighbour correlation, then the spectrum: most real
    audio never reaches the FFT)."""
    x = w.astype(np.float64)
    loud = _rms(x) >= QUIET_RMS
    noisy = loud.copy()
    if noisy.any():
        rows = np.flatnonzero(noisy)
        noisy[rows] = _entropy(w[rows]) >= ENTROPY_BITS
    if noisy.any():
        rows = np.flatnonzero(noisy)
        xc, r1 = _correlation(x[rows])
        white = np.abs(r1) <= CORRELATION      # tones and speech stop here, before the FFT
        noisy[rows] = white
        if white.any():
            noisy[rows[white]] = _flatness(xc[white]) >= FLATNESS
    return loud, noisy


class NoiseMeter:
    """One channel's verdict, fed with its decoded samples as they are rendered."""

    def __init__(self) -> None:
        self.judged = 0
        self.noisy = 0
        self.seconds = 0.0          # of noise-like audio
        self._carry: dict[int, np.ndarray] = {}   # rate -> samples short of a window
        self._index = 0                           # windows seen so far (judged or not)

    def feed(self, samples: np.ndarray, rate: int) -> None:
        carry = self._carry.get(rate)
        buf = np.concatenate((carry, samples)) if carry is not None and carry.size else samples
        whole = buf.size - buf.size % WINDOW
        self._carry[rate] = buf[whole:].copy()
        if not whole:
            return
        windows = buf[:whole].reshape(-1, WINDOW)
        idx = self._index + np.arange(windows.shape[0])
        self._index += windows.shape[0]
        pick = (idx < FULL_WINDOWS) | (idx % STRIDE == 0)
        if not pick.any():
            return                  # none of these windows is one of the sampled ones
        weight = np.where(idx[pick] < FULL_WINDOWS, 1, STRIDE)
        loud, noisy = _noise_like(windows[pick])
        self.judged += int(loud.sum())
        self.noisy += int(noisy.sum())
        self.seconds += int(weight[noisy].sum()) * WINDOW / rate

    @property
    def noise_like(self) -> bool:
        return self.noisy >= MIN_WINDOWS and self.noisy >= MIN_FRACTION * self.judged

    def verdict(self) -> dict:
        """call.json ``audio.sources.<side>.noise``."""
        return {"noise_like": self.noise_like, "noise_s": round(self.seconds, 2),
                "windows_judged": self.judged, "windows_noise_like": self.noisy}

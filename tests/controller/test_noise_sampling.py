"""The noise check judges a channel's first windows all, then one in STRIDE; fed in
pieces of any size (the renderer reads chunks), the verdict is the same."""
from __future__ import annotations

import numpy as np

from controller.media.audio import ULAW_TABLE as ULAW
from controller.media.noise import FULL_WINDOWS, STRIDE, WINDOW, NoiseMeter


def _ciphertext_as_ulaw(n: int) -> np.ndarray:
    """µ-law decode of uniformly random bytes: what SRTP decoded as G.711 sounds like."""
    return ULAW[np.random.default_rng(5).integers(0, 256, n)].astype(np.int16)


def test_window_by_window_feeding_equals_one_feed() -> None:
    x = _ciphertext_as_ulaw(WINDOW * (FULL_WINDOWS + 3 * STRIDE + 1))
    whole, pieces = NoiseMeter(), NoiseMeter()
    whole.feed(x, 8000)
    for i in range(0, x.size, WINDOW):          # one window per call: most calls judge none
        pieces.feed(x[i:i + WINDOW], 8000)
    assert whole.verdict() == pieces.verdict()
    assert whole.noise_like and whole.judged == FULL_WINDOWS + 4


def test_speech_like_tone_is_not_noise() -> None:
    t = np.arange(WINDOW * 40) / 8000
    x = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    m = NoiseMeter()
    m.feed(x, 8000)
    assert not m.noise_like and m.judged > 0


def test_stepwise_judging_gives_the_thresholds_verdicts() -> None:
    """The meter runs the spectrum only on loud, high-entropy windows; its verdicts
    are those of all four thresholds applied to every window (noise, tones,
    quiet hiss, silence, loud hiss, clipped noise)."""
    from controller.media.noise import (CORRELATION, ENTROPY_BITS, FLATNESS, QUIET_RMS,
                                        _noise_like, window_stats)
    rng = np.random.default_rng(9)
    t = np.arange(WINDOW) / 8000
    rows = [_ciphertext_as_ulaw(WINDOW), (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16),
            rng.normal(0, 50, WINDOW).astype(np.int16), np.zeros(WINDOW, np.int16),
            rng.normal(0, 6000, WINDOW).astype(np.int16),
            np.clip(rng.normal(0, 30000, WINDOW), -32768, 32767).astype(np.int16)]
    w = np.stack(rows)
    rms, ent, flat, r1 = window_stats(w)
    loud_ref = rms >= QUIET_RMS
    noisy_ref = loud_ref & (ent >= ENTROPY_BITS) & (flat >= FLATNESS) & (np.abs(r1) <= CORRELATION)
    loud, noisy = _noise_like(w)
    assert loud.tolist() == loud_ref.tolist()
    assert noisy.tolist() == noisy_ref.tolist()
    assert noisy[0] and not noisy[1] and not loud[3]

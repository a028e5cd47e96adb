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

"""The vectorised stream analysis (controller/media/jitter.py) equals the per-packet
reference (quality.analyse, itself checked against tshark in test_quality.py)
on random streams: reordering, loss, CN, telephone-event, markers, timestamp
jumps and wraps, several payload types."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from controller.media.jitter import analyse_arrays
from controller.media.quality import analyse

CLOCKS = {0: 8000, 8: 8000, 9: 8000, 13: 8000, 101: 0, 111: 48000}


@st.composite
def streams(draw):
    n = draw(st.integers(1, 400))
    seq0 = draw(st.integers(0, 0xFFFF))
    ts0 = draw(st.integers(0, 0xFFFFFFFF))
    t = 1_700_000_000 * 10**9
    out = []
    seq, ts = seq0, ts0
    pts = draw(st.lists(st.sampled_from(sorted(CLOCKS)), min_size=1, max_size=3))
    for _ in range(n):
        t += draw(st.integers(0, 60_000_000))
        step = draw(st.sampled_from([1, 1, 1, 1, 2, -1, 3]))
        seq = (seq + step) & 0xFFFF
        ts = (ts + draw(st.sampled_from([160, 160, 160, 0, 320, -160, 8000 * 5]))) & 0xFFFFFFFF
        out.append((t, seq, ts, draw(st.sampled_from(pts)), draw(st.booleans()) and draw(st.booleans())))
    return out


@settings(max_examples=120, deadline=None)
@given(streams())
def test_vectorised_analysis_equals_the_reference(packets) -> None:
    ref = analyse(packets, CLOCKS)
    arrays = [np.array(col, dtype=np.int64) for col in zip(*packets)]
    arrays[4] = arrays[4].astype(bool)
    got = analyse_arrays(*arrays, CLOCKS)
    if got is None:      # a sequence restart: the caller falls back to the reference
        return
    assert got["out_of_order"] == ref["out_of_order"]
    for key in ("max_delta_ms", "jitter_ms", "max_jitter_ms", "last_jitter_ms"):
        if ref[key] is None:
            assert got[key] is None, key
        else:
            assert got[key] == pytest.approx(ref[key], abs=0.0011), key


def test_restart_falls_back() -> None:
    pk = [(i * 20_000_000, (100 + i) if i < 10 else (5000 + i), i * 160, 0, False) for i in range(20)]
    arrays = [np.array(col, dtype=np.int64) for col in zip(*pk)]
    arrays[4] = arrays[4].astype(bool)
    assert analyse_arrays(*arrays, CLOCKS) is not None      # a jump forward is in order
    pk = [(i * 20_000_000, (30000 + i) if i < 10 else (100 + i), i * 160, 0, False) for i in range(20)]
    arrays = [np.array(col, dtype=np.int64) for col in zip(*pk)]
    arrays[4] = arrays[4].astype(bool)
    assert analyse_arrays(*arrays, CLOCKS) is None

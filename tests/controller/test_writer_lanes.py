"""The writer's queue never lets late packets overtake their own recording.

Failed attempts wait in the low lane behind real calls (controller/calls/admission.py);
late packets of a recording must still be stored after that recording, or the
store has no call.json to add them to ("late packets not stored").
"""
from __future__ import annotations

from types import SimpleNamespace

from controller.calls.admission import PriorityLanes
from controller.calls.late import LateFrames


def test_late_frames_never_overtake_a_low_priority_recording() -> None:
    q = PriorityLanes()
    attempt = SimpleNamespace(name="attempt", low_priority=True)
    q.put(attempt)                                   # a failed attempt, low lane
    late = LateFrames("rid-attempt", "2005/07/04/rid-attempt", 1, [(1, b"x")])
    q.put(late)                                      # its late packets, submitted after it
    real = SimpleNamespace(name="real", low_priority=False)
    q.put(real)                                      # a real call submitted last
    got = [q.get() for _ in range(3)]
    assert got == [real, attempt, late]              # real first; late after its recording

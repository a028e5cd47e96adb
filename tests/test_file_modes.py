"""Files holding calls are private whatever the umask: recordings, write-ahead
log, sensor spool (real processes), storage outbox and spilled calls; group
access only by --file-mode."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from controller.calls.spill import CallSpill
from sensor.spool import Spool
from storage import files as filemodes
from storage.local import LocalStore
from storage.outbox import OutboxStore
from tests.transport.procs import REPO, Controller

SAMPLE = REPO / "samples" / "sample-call.pcap"


def _modes(root: Path) -> dict[str, int]:
    out = {root.name: stat.S_IMODE(root.stat().st_mode)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            out[str(p.relative_to(root.parent))] = stat.S_IMODE(p.lstat().st_mode)
    return out


def _assert_private(modes: dict[str, int], file_mode: int = 0o600, dir_mode: int = 0o700) -> None:
    assert modes
    for path, mode in modes.items():
        assert mode in (file_mode, dir_mode), f"{path}: {mode:04o}"


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda m: os.umask(m)
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_controller_and_sensor_files_are_private(tmp_path, umask, mask) -> None:
    umask(mask)                              # inherited by the controller and sensor processes
    c = Controller(tmp_path, None, extra=("--keep-calls-on-stop",))
    try:
        proc = c.replay(SAMPLE, "s1", None, workdir=tmp_path)
        assert proc.returncode == 0, proc.stderr
        c.wait_recordings(1)
    finally:
        assert c.stop() == 0, c.log.read_text()
    recordings = _modes(tmp_path / "recordings")
    assert any(p.endswith("audio.wav") for p in recordings)
    _assert_private(recordings)
    state = _modes(tmp_path / "state")
    assert any("wal" in p and mode == 0o600 for p, mode in state.items())
    _assert_private(state)


def test_file_mode_flag_gives_the_group_read(tmp_path, umask) -> None:
    umask(0o077)                             # strict umask: the flag still wins
    c = Controller(tmp_path, None, extra=("--file-mode", "0640"))
    try:
        assert c.replay(SAMPLE, "s1", None, workdir=tmp_path).returncode == 0
        c.wait_recordings(1)
    finally:
        assert c.stop() == 0, c.log.read_text()
    _assert_private(_modes(tmp_path / "recordings"), 0o640, 0o750)


def test_outbox_and_spill_files_are_private(tmp_path, umask) -> None:
    umask(0o022)
    outbox = OutboxStore(LocalStore(tmp_path / "target"), tmp_path / "outbox")   # not started
    outbox.put("2026/01/02/x", {"call.json": b"{}", "audio.wav": b"RIFF"})
    _assert_private(_modes(tmp_path / "outbox"))
    spill = CallSpill(tmp_path / "spill", "call-1")
    _assert_private(_modes(tmp_path / "spill"))
    assert filemodes.FILE_MODE == 0o600
    del spill
    spool = Spool(tmp_path / "spool", 1 << 20)
    spool.append(b"batch" * 100, packets=1)
    spool.close()
    modes = _modes(tmp_path / "spool")
    assert any(p.endswith(".seg") for p in modes), modes
    _assert_private(modes)

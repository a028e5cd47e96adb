"""scripts/fuzz itself: every target runs, inputs are reproducible from (seed, index)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

FUZZ = [sys.executable, str(REPO / "scripts" / "fuzz")]
TARGETS = ["sip", "sdp", "rtp", "telephone-event", "decode", "fragments", "tcp", "pcap"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*FUZZ, *args], capture_output=True, text=True, timeout=120, cwd=REPO)


def test_list_names_every_target() -> None:
    out = run("--list")
    assert out.returncode == 0, out.stderr
    names = [line.split()[0] for line in out.stdout.splitlines()]
    assert set(TARGETS) <= set(names)


def test_every_target_runs_and_finds_nothing(tmp_path: Path) -> None:
    out = run("all", "--inputs", "150", "--seed", "7", "--crash-dir", str(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    counted = dict(re.findall(r"^([\w-]+): (\d+) inputs in", out.stdout, re.MULTILINE))
    assert set(TARGETS) <= set(counted) and all(int(n) == 150 for n in counted.values())
    assert not list(tmp_path.iterdir())


def test_an_input_is_reproduced_from_seed_and_index() -> None:
    first = run("tcp", "--seed", "11", "--index", "42")
    again = run("tcp", "--seed", "11", "--index", "42")
    assert first.returncode == 0 and first.stdout == again.stdout
    assert first.stdout.splitlines()[-1] == "no crash"

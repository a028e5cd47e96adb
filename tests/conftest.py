"""Shared pytest fixtures: where the public captures are, and tool checks."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CAPTURES = Path(os.environ.get("SPANREC_CAPTURES", REPO.parent / "shared" / "captures"))


def capture(name: str) -> Path:
    """Path of a public sample capture; skips the test when it is absent."""
    path = CAPTURES / name
    if not path.is_file():
        pytest.skip(f"sample capture {name} not available at {CAPTURES}")
    return path


def require_tool(name: str) -> str:
    """Absolute path of a command-line tool; skips the test when it is absent."""
    found = shutil.which(name)
    if not found:
        pytest.skip(f"{name} not installed")
    return found


@pytest.fixture
def captures_dir() -> Path:
    if not CAPTURES.is_dir():
        pytest.skip(f"sample captures not available at {CAPTURES}")
    return CAPTURES

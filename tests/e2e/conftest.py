"""Runs `spanrec record` as a user would: a subprocess with real gRPC on loopback."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class RecordRun:
    returncode: int
    stdout: str
    stderr: str
    calls: list[dict]
    out: Path

    def by_call_id(self) -> dict[str, dict]:
        return {cid: c for c in self.calls for cid in c["call_ids"]}


def spanrec_record(files: list[Path], out: Path, *extra: str, env: dict | None = None,
                   timeout: float = 300) -> RecordRun:
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "record", *map(str, files), "--out", str(out),
         "--no-progress", "-o", "json", *extra],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})})
    calls: list[dict] = []
    # call.json files on disk are the contract; stdout JSON is a convenience
    for path in sorted(out.rglob("call.json")) if out.exists() else []:
        calls.append(json.loads(path.read_text()))
    return RecordRun(proc.returncode, proc.stdout, proc.stderr, calls, out)


@pytest.fixture
def record():
    return spanrec_record

"""Recordings and users for the web player's tests: `spanrec record` of the
bundled sample (two calls: 10000 -> 20000 and 10001 -> 20001) and, where the
public captures are present, one of them; users of every role."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import CAPTURES, REPO

SAMPLE = REPO / "samples" / "sample-call.pcap"
PUBLIC = "sip-rtp-g711.pcap"
PASSWORDS = {"ada": "admin-pass-1", "sam": "super-pass-1", "lee": "listen-pass-1", "aud": "audit-pass-1"}


def spanrec(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=REPO, capture_output=True,
                          text=True, input=stdin, timeout=300)


@pytest.fixture(scope="session")
def web_lab(tmp_path_factory) -> SimpleNamespace:
    out = tmp_path_factory.mktemp("web") / "recordings"
    inputs = [str(SAMPLE)]
    public = CAPTURES / PUBLIC
    if public.is_file():
        inputs.append(str(public))
    done = spanrec("record", *inputs, "--out", str(out), "--no-progress", "-o", "json")
    assert done.returncode == 0, done.stderr
    url = f"sqlite:///{out / 'index.sqlite'}"
    for name, role, numbers in (("ada", "admin", ()), ("sam", "supervisor", ("1000*",)),
                                ("lee", "listener", ("10001",)), ("aud", "auditor", ())):
        args = ["user", "add", name, "--role", role, "--index", url]
        for n in numbers:
            args += ["--numbers", n]
        r = spanrec(*args, stdin=PASSWORDS[name] + "\n")
        assert r.returncode == 0, r.stderr
    return SimpleNamespace(out=out, index_url=url, public=public if public.is_file() else None)


def folder_of(out: Path, recording_id: str) -> Path:
    (cj,) = [p for p in out.rglob("call.json") if p.parent.name == recording_id]
    return cj.parent

"""Secrets never appear in error lines: a storage URL with credentials, S3 keys."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from storage.redact import redact, redact_url

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCY"


def _controller(tmp_path: Path, storage: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "controller", "--insecure", "--listen", "127.0.0.1:0",
         "--storage", storage, "--state-dir", str(tmp_path / "state")],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        env={**os.environ, **env}, cwd=tmp_path)


@pytest.mark.parametrize("storage", [f"s3://AKIAEXAMPLE:{SECRET}@bucket/calls",
                                     f"file://admin:{SECRET}@nas/recordings"])
def test_storage_url_with_credentials_is_refused_without_echoing_them(tmp_path, storage) -> None:
    proc = _controller(tmp_path, storage)
    assert proc.returncode != 0
    assert SECRET not in proc.stderr + proc.stdout
    assert "***@" in proc.stderr            # the user still sees which URL was wrong


def test_redaction_rules() -> None:
    assert redact_url("s3://k:s@b/p") == "s3://***@b/p"
    assert redact_url("https://h/o?X-Amz-Signature=abcd&x=1") == "https://h/o?X-Amz-Signature=***&x=1"
    assert redact(f"error with {SECRET} inside", [SECRET]) == "error with *** inside"
    assert redact("nothing secret here") == "nothing secret here"

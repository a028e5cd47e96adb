"""S3 keys from files (SPANREC_S3_SECRET_KEY_FILE), never needed on a command line."""
from __future__ import annotations

from pathlib import Path

import pytest

from storage import open_store
from storage.base import StorageError


def test_secret_key_from_a_file(tmp_path: Path, s3_server, monkeypatch) -> None:
    secret = tmp_path / "s3-secret"
    secret.write_text(s3_server.secret_key + "\n")
    secret.chmod(0o600)
    monkeypatch.delenv("SPANREC_S3_SECRET_KEY", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    monkeypatch.setenv("SPANREC_S3_SECRET_KEY_FILE", str(secret))
    store = open_store("s3://from-file/p", endpoint=f"http://{s3_server.endpoint}",
                       access_key=s3_server.access_key)
    store.check()
    store.put("2024/01/01/x", {"call.json": b"{}"})
    assert store.get("2024/01/01/x", "call.json") == b"{}"


def test_unreadable_secret_file_is_one_clear_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("SPANREC_S3_SECRET_KEY", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    monkeypatch.setenv("SPANREC_S3_SECRET_KEY_FILE", str(tmp_path / "missing"))
    with pytest.raises(StorageError, match="SPANREC_S3_SECRET_KEY_FILE: cannot read"):
        open_store("s3://b/p", endpoint="http://127.0.0.1:9", access_key="k")

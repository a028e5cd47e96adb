"""The committed generated code is what scripts/gen-proto produces from proto/*.proto."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    (tmp_path / "proto").mkdir()
    for src in (REPO / "proto").glob("*.proto"):
        shutil.copy(src, tmp_path / "proto" / src.name)
    protos = sorted(p.name for p in (REPO / "proto").glob("*.proto"))
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I.", "--python_out=.",
                    "--pyi_out=.", "--grpc_python_out=.", *[f"proto/{p}" for p in protos]],
                   cwd=tmp_path, check=True)
    generated = sorted(p.name for p in (tmp_path / "proto").iterdir() if p.suffix in (".py", ".pyi"))
    assert generated
    for name in generated:
        assert (REPO / "proto" / name).read_bytes() == (tmp_path / "proto" / name).read_bytes(), \
            f"proto/{name} is stale: run scripts/gen-proto"

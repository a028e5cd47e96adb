"""controller/ is one package per stage of the data flow (docs/ARCHITECTURE.md):
each stage imports only the stages before it.  Checked on the source with `ast`,
imports under `if TYPE_CHECKING:` excepted (type hints only)."""
from __future__ import annotations

import ast
from pathlib import Path

CONTROLLER = Path(__file__).resolve().parents[1] / "controller"

#: stage -> the controller stages it may import (top-level settings always allowed)
ALLOWED = {
    "ingest": set(),
    "media": set(),
    "calls": {"ingest", "media"},
    "output": {"calls", "media"},
    "api": {"calls", "media", "output", "ingest", "core"},
}


def _runtime_imports(tree: ast.Module) -> list[str]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for b in node.body for n in ast.walk(b)}
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            out.append(node.module)
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names]
    return out


def test_each_stage_imports_only_the_stages_before_it() -> None:
    wrong = []
    for stage, allowed in ALLOWED.items():
        for path in sorted((CONTROLLER / stage).glob("*.py")):
            for mod in _runtime_imports(ast.parse(path.read_text())):
                parts = mod.split(".")
                if parts[0] != "controller" or len(parts) < 2 or parts[1] in ("settings", stage):
                    continue
                if parts[1] not in allowed:
                    wrong.append(f"{path.relative_to(CONTROLLER.parent)} imports {mod}")
    assert not wrong, "\n".join(wrong)


def test_no_flat_modules_left() -> None:
    assert sorted(p.name for p in CONTROLLER.glob("*.py")) == ["__init__.py", "core.py", "settings.py"]

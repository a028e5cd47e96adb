"""deploy/docker/Dockerfile, checked by reading it: there is no container engine
(and no hadolint) where the suite runs, so the image itself is never built here."""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, comments dropped, continuations joined."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in text.splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if buf and line.lstrip().startswith("#"):     # a comment inside a continued RUN
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    assert not buf, "Dockerfile ends inside a line continuation"
    return out


def stages(ins: list[tuple[str, str]]) -> list[dict]:
    """One dict per FROM: its image, name and instructions."""
    args = {}
    for word, rest in ins:
        if word == "FROM":
            break
        if word == "ARG" and "=" in rest:
            k, _, v = rest.partition("=")
            args[k.strip()] = v.strip()
    out: list[dict] = []
    for word, rest in ins:
        if word == "FROM":
            parts = rest.split()
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), parts[0])
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else ""
            out.append({"image": image, "name": name, "ins": []})
        elif out:
            out[-1]["ins"].append((word, rest))
    return out


@pytest.fixture(scope="module")
def parsed() -> list[dict]:
    return stages(instructions(DOCKERFILE.read_text()))


def runs(stage: dict) -> list[str]:
    return [rest for word, rest in stage["ins"] if word == "RUN"]


def apt_installed(stage: dict) -> set[str]:
    pkgs: set[str] = set()
    for cmd in runs(stage):
        for part in cmd.split("&&"):
            words = shlex.split(part)
            if "apt-get" in words and "install" in words:
                pkgs.update(w for w in words[words.index("install") + 1:] if not w.startswith("-"))
    return pkgs


def test_multi_stage_from_python_311_slim(parsed: list[dict]) -> None:
    assert len(parsed) >= 2
    assert parsed[0]["name"] == "builder"
    for stage in parsed:
        assert stage["image"].startswith("python:3.11-slim"), stage["image"]
    final = parsed[-1]
    copies = [rest for word, rest in final["ins"] if word == "COPY"]
    assert any(c.startswith("--from=builder ") for c in copies), "runtime must copy the builder's venv"
    # the runtime copies the built venv only, never the sources
    assert all(c.startswith("--from=") for c in copies), copies


def test_builder_has_compilers_runtime_has_only_libraries(parsed: list[dict]) -> None:
    builder, final = parsed[0], parsed[-1]
    assert {"gcc", "libpcap-dev"} <= apt_installed(builder)
    runtime_pkgs = apt_installed(final)
    assert any(re.fullmatch(r"libpcap0\.8(t64)?", p) for p in runtime_pkgs), runtime_pkgs
    assert "libopus0" in runtime_pkgs
    assert not {p for p in runtime_pkgs if p.endswith("-dev") or p in {"gcc", "build-essential", "make"}}
    assert any("pip wheel" in r for r in runs(builder)), "the builder should build wheels"


def test_apt_lists_removed_in_the_same_layer(parsed: list[dict]) -> None:
    for stage in parsed:
        for cmd in runs(stage):
            if "apt-get install" in cmd:
                assert "--no-install-recommends" in cmd, cmd
                assert "rm -rf /var/lib/apt/lists/*" in cmd, cmd


def test_final_user_is_numeric_non_root(parsed: list[dict]) -> None:
    users = [rest for word, rest in parsed[-1]["ins"] if word == "USER"]
    assert users, "the runtime stage must set USER"
    user = users[-1].split(":")
    assert all(p.isdigit() for p in user), "numeric uid[:gid], so runAsNonRoot can verify it"
    assert int(user[0]) == 10001 and all(int(p) != 0 for p in user)


def test_entrypoint_cmd_and_workdir(parsed: list[dict]) -> None:
    final = dict((w, r) for w, r in parsed[-1]["ins"] if w in {"ENTRYPOINT", "CMD", "WORKDIR"})
    assert json.loads(final["ENTRYPOINT"]) == ["spanrec"]
    assert json.loads(final["CMD"]) == ["controller", "--help"]
    assert final["WORKDIR"] == "/var/lib/spanrec"


def test_no_secrets_baked_in() -> None:
    text = DOCKERFILE.read_text()
    ins = instructions(text)
    for word, rest in ins:
        if word in {"ENV", "ARG", "LABEL"}:
            assert not re.search(r"(SECRET|PASSWORD|ACCESS_KEY|TOKEN)", rest, re.I), rest
        if word in {"COPY", "ADD"}:
            assert not re.search(r"\.(key|pem)\b|\bpki\b|\.env\b", rest), rest
    assert "BEGIN" not in text and "PRIVATE KEY" not in text
    assert not any(word == "ADD" for word, _ in ins), "COPY only (ADD fetches URLs and unpacks)"


def test_dockerignore_keeps_state_and_keys_out() -> None:
    lines = {ln.strip() for ln in DOCKERIGNORE.read_text().splitlines()
             if ln.strip() and not ln.startswith("#")}
    assert {".git", ".venv", "pki", "spanrec-spool", "spanrec-state", "recordings"} <= lines
    assert "**/*.key" in lines


def test_copied_sources_are_the_packages_pyproject_lists(parsed: list[dict]) -> None:
    import tomllib
    # a sub-package (controller.calls) comes with its top-level folder
    packages = {p.split(".")[0] for p in
                tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]}
    copied = {rest.split()[0] for w, rest in parsed[0]["ins"] if w == "COPY" and not rest.startswith("--")}
    assert packages <= copied, packages - copied
    for src in copied:
        assert (REPO / src).exists(), src
    ignored = {ln.strip() for ln in DOCKERIGNORE.read_text().splitlines()}
    assert not (copied & ignored), copied & ignored

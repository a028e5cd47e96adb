"""README's two set-up commands stay true: the first records the bundled sample,
the second is what .ci/run calls."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

from tests.e2e.conftest import spanrec_record
from tests.e2e.test_record import tshark_invite_call_ids

REPO = Path(__file__).resolve().parent.parent


def setup_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Set-up on a fresh Debian machine", 1)[1].split("\n## ", 1)[0]
    return [b.strip() for b in re.findall(r"```sh\n(.*?)```", section, re.S)]


def test_exactly_two_setup_commands_and_ci_uses_the_second() -> None:
    cmds = setup_commands()
    assert len(cmds) == 2 and all("\n" not in c for c in cmds)
    assert cmds[1] in (REPO / ".ci" / "run").read_text().replace(" -q -p no:cacheprovider", "")


def test_first_command_records_the_bundled_sample(tmp_path: Path) -> None:
    first = setup_commands()[0]
    assert first.startswith("bash scripts/install.sh && ")
    argv = shlex.split(first.split("&&", 1)[1])
    assert argv[:2] == [".venv/bin/spanrec", "record"]
    sample = REPO / argv[2]
    assert sample.is_file()
    run = spanrec_record([sample], tmp_path / "recordings")
    assert run.returncode == 0, run.stderr
    assert sorted(cid for c in run.calls for cid in c["call_ids"]) == sorted(tshark_invite_call_ids(sample))
    assert all(c["status"] == "answered" and c["audio"] for c in run.calls)

"""Every capture-file error of `spanrec record` is one line naming the file once.

Exit status as DECISIONS.md "Exit status" says: 2 for a bad argument (a file
that does not exist), 1 for a damaged file (what came before the damage is
still recorded).
"""
from __future__ import annotations

import struct
from pathlib import Path

import pytest

from tests.controller.test_legs import frame, sip
from tests.e2e.conftest import spanrec_record
from tests.protocols._build import write_classic_pcap

S = 1_000_000_000


def _good(path: Path) -> None:
    write_classic_pcap(path, [(1_700_000_000 * S + i * S, frame("10.0.0.1", 5060, "10.0.0.2", 5060,
                                                               sip("OPTIONS sip:b SIP/2.0", f"o{i}@x",
                                                                   "1 OPTIONS")))
                              for i in range(3)])


def _missing(path: Path) -> None:
    pass


def _magic(path: Path) -> None:
    path.write_bytes(b"this is a text file, not a capture\n")


def _header(path: Path) -> None:
    path.write_bytes(struct.pack("<IHH", 0xA1B23C4D, 2, 4))        # magic, then 16 bytes short


def _record(path: Path) -> None:
    _good(path)
    data = path.read_bytes()
    path.write_bytes(data[:-20])                                    # last record cut short


@pytest.mark.parametrize("make, status", [(_missing, 2), (_magic, 1), (_header, 1), (_record, 1)],
                         ids=["missing", "unknown-magic", "truncated-header", "truncated-record"])
def test_error_names_the_file_once(tmp_path: Path, make, status: int) -> None:
    cap = tmp_path / "input" / "a.cap"
    cap.parent.mkdir()
    make(cap)
    run = spanrec_record([cap], tmp_path / "rec", timeout=120)
    assert run.returncode == status, run.stderr
    errors = [ln for ln in run.stderr.splitlines() if "error" in ln.lower()]
    assert len(errors) == 1, run.stderr
    (line,) = errors
    assert line.startswith("spanrec: error: ")
    assert line.count("a.cap") == 1, line

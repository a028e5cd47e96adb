"""`spanrec record` end to end on real captures, checked against tshark."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path


from tests.conftest import CALL_CAPTURES, capture, require_tool
from tests.e2e.conftest import spanrec_record



# sip_ipv4_tcp_fragmented.pcap carries SIP on TCP port 6060 (SOURCES.md)
DECODE_AS = ("-d", "tcp.port==6060,sip")


def tshark_invite_call_ids(path: Path) -> set[str]:
    """Call-IDs that have an INVITE transaction, as tshark decodes them."""
    tshark = require_tool("tshark")
    out = subprocess.run([tshark, "-r", str(path), *DECODE_AS, "-Y", "sip.CSeq.method == \"INVITE\"",
                          "-T", "fields", "-e", "sip.Call-ID"],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    return {line.split(",")[0].strip() for line in out.splitlines() if line.strip()}


def tshark_count(path: Path, display_filter: str) -> int:
    tshark = require_tool("tshark")
    out = subprocess.run([tshark, "-r", str(path), *DECODE_AS, "-Y", display_filter, "-T", "fields",
                          "-e", "frame.number"], capture_output=True, text=True, check=True,
                         timeout=120).stdout
    return len(out.split())


def test_all_captures_at_once_give_every_call(tmp_path: Path) -> None:
    files = [capture(n) for n in CALL_CAPTURES]
    run = spanrec_record(files, tmp_path / "rec", timeout=600)
    assert run.returncode == 0, run.stderr
    expected: set[str] = set()
    for f in files:
        expected |= tshark_invite_call_ids(f)
    got = [cid for c in run.calls for cid in c["call_ids"]]
    assert sorted(got) == sorted(expected)          # every call once, no extra
    table = json.loads(run.stdout)
    assert sorted(cid for c in table for cid in c["call_ids"]) == sorted(expected)
    # status and final response as tshark's messages say (rules in tests/controller/tshark_calls.py)
    from tests.controller.tshark_calls import expected_calls
    by_id = run.by_call_id()
    for f in files:
        for cid, exp in expected_calls(f).items():
            got_call = by_id[cid]
            assert (got_call["status"], got_call["final_response"]) == (exp.status, exp.final_response), \
                f"{f.name} {cid}"


def test_two_sensors_replaying_the_same_traffic_give_the_same_calls(tmp_path: Path) -> None:
    src = capture("SIP-RTP-Normal_Call_two_parties.pcap")
    twin = tmp_path / "copy-of-same-traffic.pcap"
    shutil.copy(src, twin)
    one = spanrec_record([src], tmp_path / "one")
    two = spanrec_record([src, twin], tmp_path / "two")
    assert one.returncode == 0 and two.returncode == 0, two.stderr
    assert {c["id"] for c in one.calls} == {c["id"] for c in two.calls}
    for call in two.calls:
        # the copies of the second sensor were dropped: the recording holds one sensor's packets
        assert call["sensors"] in (["replay-1"], ["replay-2"])
        # (the capture's two B2BUA legs are one call)
        flt = " || ".join(f'sip.Call-ID == "{cid}"' for cid in call["call_ids"])
        # each SIP message of the call is in its pcap once: same count as tshark in the original
        pcap = next(two.out.rglob(f"{call['id']}/call.pcap"))
        expect = tshark_count(src, flt)
        assert tshark_count(pcap, flt) == expect
        # every packet of the call was captured twice: one copy dropped per packet kept
        assert call["copies_dropped"] == call["pcap_packets"] == tshark_count(pcap, "frame")
        other = {"replay-1": "replay-2", "replay-2": "replay-1"}[call["sensors"][0]]
        assert call["copies_dropped_by_sensor"] == {other: call["pcap_packets"]}
        # and no frame twice: tshark finds no two frames with the same IP id and UDP payload
        tshark = require_tool("tshark")
        rows = subprocess.run([tshark, "-r", str(pcap), "-T", "fields", "-e", "ip.src",
                               "-e", "ip.id", "-e", "udp.srcport", "-e", "udp.payload"],
                              capture_output=True, text=True, check=True).stdout.splitlines()
        assert len(rows) == len(set(rows))
        single = next(one.out.rglob(f"{call['id']}/call.pcap"))
        assert pcap.read_bytes() == single.read_bytes()


def test_same_input_twice_overwrites_not_duplicates(tmp_path: Path) -> None:
    src = capture("MagicJack-_short_call.pcap")
    first = spanrec_record([src], tmp_path / "rec")
    second = spanrec_record([src], tmp_path / "rec")
    assert first.returncode == 0 and second.returncode == 0
    assert len(second.calls) == len(first.calls) == 1
    folders = [p.parent for p in (tmp_path / "rec").rglob("call.json")]
    assert len(folders) == 1
    # YYYY/MM/DD of the call's start (2012-04-12, tshark's first INVITE time), UTC
    assert folders[0].relative_to(tmp_path / "rec").parts[:3] == ("2012", "04", "12")
    assert sorted(p.name for p in folders[0].iterdir()) == ["audio.wav", "call.json", "call.pcap"]


def test_truncated_capture_records_what_came_before_and_says_where(tmp_path: Path) -> None:
    src = capture("MagicJack-_short_call.pcap")
    data = src.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: int(len(data) * 0.9) + 7])      # mid-record
    run = spanrec_record([cut], tmp_path / "rec")
    assert run.returncode == 1
    errors = [ln for ln in run.stderr.splitlines() if ln.startswith("spanrec: error:")]
    assert errors and "cut.pcap" in errors[0] and "offset" in errors[0], run.stderr
    assert "Traceback" not in run.stderr
    (call,) = run.calls                                      # the call before the cut is recorded
    assert call["call_ids"] == ["C5570127C1A6A1ABF7ED9DB9AD608CE00xc0a8000a"]
    assert call["status"] == "answered"


def test_garbage_file_is_a_clear_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"this is not a capture file at all" * 10)
    run = spanrec_record([junk], tmp_path / "rec")
    assert run.returncode == 1
    errors = [ln for ln in run.stderr.splitlines() if ln.startswith("spanrec: error:")]
    assert errors and "junk.pcap" in errors[0], run.stderr
    assert "Traceback" not in run.stderr
    assert run.calls == []

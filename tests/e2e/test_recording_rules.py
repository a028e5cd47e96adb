"""Recording rules end to end: `spanrec record` with rules from a config file,
flags and the environment, and a running `spanrec controller` whose rules
change through etcd (written with etcd's own JSON gateway) and apply to the
calls that start afterwards.  call.pcap files are read back with tshark."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import pytest

from protocols.pcapfile import LINKTYPE_ETHERNET, write_pcap
from tests.controller.test_legs import A, B, frame
from tests.controller.test_rules import call_packets
from tests.e2e.conftest import spanrec_record
from tests.e2e.test_cluster import etcd, fleet, start_controller, stop, wait_for  # noqa: F401
from tests.e2e.test_record import tshark_count
from tests.e2e.test_runtime_config import etcd_put
from tests.s3server import free_ports

S = 1_000_000_000
T0 = datetime(2024, 3, 1, 9, 0, tzinfo=timezone.utc).timestamp()
SPANREC = [sys.executable, "-m", "cli.main"]


def write_calls(path: Path, *calls: dict, t0: float = T0) -> Path:
    """A capture of whole calls (tests/controller/test_rules.py `call_packets`)."""
    pkts = []
    for i, spec in enumerate(calls):
        for t, src, sport, dst, dport, payload in call_packets(t0 + 0.05 * i, port=4000 + 100 * i,
                                                              caller=A, callee=B, **spec):
            pkts.append((round(t * S), frame(src, sport, dst, dport, payload)))
    pkts.sort(key=lambda p: p[0])
    with open(path, "wb") as fh:
        write_pcap(fh, pkts, LINKTYPE_ETHERNET)
    return path


def recordings(root: Path) -> dict[str, tuple[dict, Path]]:
    """Call-ID -> (call.json, its folder)."""
    out = {}
    for path in root.rglob("call.json"):
        meta = json.loads(path.read_text())
        out[meta["call_ids"][0]] = (meta, path.parent)
    return out


def check_not_recorded(meta: dict, folder: Path, reason: str) -> None:
    assert meta["recorded"] is False and meta["not_recorded_reason"] == reason, meta
    assert meta["status"] == "answered" and meta["end_reason"] == "bye"
    assert meta["streams"] == [] and meta["audio"] is None
    assert sorted(p.name for p in folder.iterdir()) == ["call.json", "call.pcap"]
    pcap = folder / "call.pcap"
    assert tshark_count(pcap, "sip") == 5 == meta["pcap_packets"]
    assert tshark_count(pcap, "not sip") == 0


def check_recorded(meta: dict, folder: Path) -> None:
    assert meta["recorded"] is True and meta["not_recorded_reason"] is None, meta
    assert (folder / "audio.wav").exists() and meta["rtp_packets"] == 50
    pcap = folder / "call.pcap"
    assert tshark_count(pcap, "rtp") == 50 and tshark_count(pcap, "sip") == 5


CALLS = (
    {"call_id": "to-1001", "to_user": "1001"},
    {"call_id": "to-1999", "to_user": "1999"},
    {"call_id": "to-bob", "to_user": "bob"},
    {"call_id": "private", "to_user": "1002", "invite_headers": ("X-Record: no",)},
)


def test_record_with_rules_from_a_config_file(tmp_path: Path) -> None:
    pcap = write_calls(tmp_path / "calls.pcap", *CALLS)
    config = tmp_path / "spanrec.toml"
    config.write_text('[controller.record_rules]\ninclude = ["to:1???"]\nexclude = ["to:1999"]\n')
    run = spanrec_record([pcap], tmp_path / "rec", "--config", str(config))
    assert run.returncode == 0, run.stderr
    recs = recordings(tmp_path / "rec")
    assert sorted(recs) == ["private", "to-1001", "to-1999", "to-bob"]
    check_recorded(*recs["to-1001"])
    check_not_recorded(*recs["to-1999"], "to sip:1999@example.com matches exclude pattern 'to:1999'")
    check_not_recorded(*recs["to-bob"], "from/to match no include pattern")
    check_not_recorded(*recs["private"], "header X-Record: no")


def test_flags_and_environment_over_the_file(tmp_path: Path) -> None:
    pcap = write_calls(tmp_path / "calls.pcap", *CALLS)
    config = tmp_path / "spanrec.toml"
    config.write_text('[controller.record_rules]\ninclude = ["to:1???"]\nexclude = ["to:1999"]\n')
    # a flag replaces its field of the table: the exclude list is now only 1001, and the
    # header rule is off, so the "private" call (To 1002) is recorded
    run = spanrec_record([pcap], tmp_path / "rec", "--config", str(config),
                         "--record-exclude", "to:1001", "--no-record-header", "none")
    assert run.returncode == 0, run.stderr
    recs = recordings(tmp_path / "rec")
    check_not_recorded(*recs["to-1001"], "to sip:1001@example.com matches exclude pattern 'to:1001'")
    check_recorded(*recs["to-1999"])
    check_recorded(*recs["private"])
    check_not_recorded(*recs["to-bob"], "from/to match no include pattern")
    # the environment's JSON beats the file's table
    run = spanrec_record([pcap], tmp_path / "rec2", "--config", str(config),
                         env={"SPANREC_RECORD_RULES": '{"default": "signalling-only"}'})
    assert run.returncode == 0, run.stderr
    recs = recordings(tmp_path / "rec2")
    assert {cid: m["not_recorded_reason"] for cid, (m, _) in recs.items()} == {
        "to-1001": "default is signalling-only", "to-1999": "default is signalling-only",
        "to-bob": "default is signalling-only", "private": "header X-Record: no"}


@pytest.mark.parametrize("args,env,toml,needle", [
    (["--record-only", "to:"], {}, None, "invalid settings: record_rules.include[0]: nothing after to:"),
    (["--record-only", "1???", "--record-default", "record"], {}, None,
     "record_rules.default: 'record' with include patterns would record every call"),
    (["--record-default", "sometimes"], {}, None, "'sometimes' is not one of"),
    (["--no-record-header", "X Record"], {}, None, "record_rules.skip_header: not a SIP header name"),
    ([], {"SPANREC_RECORD_RULES": "{not json"}, None, "invalid setting 'record_rules': Value error, not JSON"),
    ([], {"SPANREC_RECORD_RULES": '["x"]'}, None, "expected a table (TOML) or a JSON object"),
    ([], {}, '[controller.record_rules]\nincude = ["1???"]\n', "record_rules.incude: unknown field"),
    ([], {}, '[controller.record_rules]\nexclude = [1]\n', "record_rules.exclude[0]: expected a string"),
])
def test_bad_rules_give_one_line_and_status_2(tmp_path: Path, args, env, toml, needle) -> None:
    pcap = write_calls(tmp_path / "calls.pcap", CALLS[0])
    extra = list(args)
    if toml is not None:
        (tmp_path / "c.toml").write_text(toml)
        extra += ["--config", str(tmp_path / "c.toml")]
    for cmd in (["record", str(pcap), "--out", str(tmp_path / "rec")], ["controller", "--insecure"]):
        proc = subprocess.run([*SPANREC, *cmd, *extra], capture_output=True, text=True, timeout=60,
                              env={**os.environ, **env}, stdin=subprocess.DEVNULL)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode == 2, proc.stderr
        assert len(lines) == 1 and lines[0].startswith("spanrec: error: "), proc.stderr
        assert needle in lines[0]
    assert not (tmp_path / "rec").exists()


# -- a running controller, rules from etcd --------------------------------------------

def etcd_delete(endpoint: str, key: str) -> None:
    body = json.dumps({"key": base64.b64encode(key.encode()).decode()}).encode()
    req = urllib.request.Request(f"http://{endpoint}/v3/kv/deleterange", data=body,
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=5).read()


def replay(tmp_path: Path, port: int, pcap: Path, sensor_id: str) -> None:
    proc = subprocess.run(
        [*SPANREC, "sensor", "--pcap", str(pcap), "--controller", f"127.0.0.1:{port}",
         "--sensor-id", sensor_id, "--insecure", "--spool-dir", str(tmp_path / "spool"),
         "--log-format", "text", "--connect-timeout", "30"],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr


def log_count(tmp_path: Path, text: str) -> int:
    return (tmp_path / "controller.log").read_text(errors="replace").count(text)


def test_rules_changed_in_etcd_apply_to_the_next_calls(tmp_path: Path, etcd) -> None:  # noqa: F811
    (port,) = free_ports(1)
    key = "/spanrec/config/controller"
    controller = start_controller(tmp_path, port, etcd)
    rec = tmp_path / "rec"
    changed = "recording rules changed"
    try:
        wait_for(lambda: fleet(port)["registry_state"] == "ok", 30, "controller registered")

        # 1. nothing recorded from now on
        etcd_put(etcd.endpoint, key, json.dumps({"record_rules": {"default": "signalling-only"}}))
        wait_for(lambda: log_count(tmp_path, changed) == 1, 15, "rules applied")
        replay(tmp_path, port, write_calls(tmp_path / "p1.pcap", {"call_id": "p1", "to_user": "1001"}),
               "replay-1")
        wait_for(lambda: "p1" in recordings(rec), 30, "p1 written")
        check_not_recorded(*recordings(rec)["p1"], "default is signalling-only")

        # 2. an invalid rule set is logged and ignored: the rules in force stay
        etcd_put(etcd.endpoint, key, json.dumps({"record_rules": {"include": [1]}}))
        wait_for(lambda: log_count(tmp_path, "recording rules from etcd ignored") == 1, 15,
                 "bad rules refused")
        assert "record_rules.include[0]: expected a string" in (tmp_path / "controller.log").read_text()
        replay(tmp_path, port, write_calls(tmp_path / "p2.pcap", {"call_id": "p2", "to_user": "1001"},
                                           t0=T0 + 60), "replay-2")
        wait_for(lambda: "p2" in recordings(rec), 30, "p2 written")
        check_not_recorded(*recordings(rec)["p2"], "default is signalling-only")

        # 3. record only calls to 4-digit numbers
        etcd_put(etcd.endpoint, key, json.dumps({"record_rules": {"include": ["to:1???"]}}))
        wait_for(lambda: log_count(tmp_path, changed) == 2, 15, "include rules applied")
        replay(tmp_path, port, write_calls(tmp_path / "p3.pcap", {"call_id": "p3-1001", "to_user": "1001"},
                                           {"call_id": "p3-bob", "to_user": "bob"}, t0=T0 + 120),
               "replay-3")
        wait_for(lambda: {"p3-1001", "p3-bob"} <= recordings(rec).keys(), 30, "p3 written")
        check_recorded(*recordings(rec)["p3-1001"])
        check_not_recorded(*recordings(rec)["p3-bob"], "from/to match no include pattern")

        # 4. key deleted: back to the controller's own settings (record everything,
        # except what the X-Record header refuses)
        etcd_delete(etcd.endpoint, key)
        wait_for(lambda: log_count(tmp_path, changed) == 3, 15, "settings rules back")
        replay(tmp_path, port, write_calls(tmp_path / "p4.pcap", {"call_id": "p4-bob", "to_user": "bob"},
                                           {"call_id": "p4-private", "to_user": "bob",
                                            "invite_headers": ("X-Record: off",)}, t0=T0 + 180),
               "replay-4")
        wait_for(lambda: {"p4-bob", "p4-private"} <= recordings(rec).keys(), 30, "p4 written")
        check_recorded(*recordings(rec)["p4-bob"])
        check_not_recorded(*recordings(rec)["p4-private"], "header X-Record: off")
        assert controller.poll() is None
    finally:
        assert stop(controller) == 0, (tmp_path / "controller.log").read_text()[-3000:]


def test_retention_changed_in_etcd_applies_to_the_next_recordings(tmp_path: Path, etcd) -> None:  # noqa: F811
    """Issue #15: the "retention" object of <prefix>config/controller replaces the
    retention policy at run time; a bad one is refused and the policy in force stays."""
    (port,) = free_ports(1)
    key = "/spanrec/config/controller"
    controller = start_controller(tmp_path, port, etcd)
    rec = tmp_path / "rec"
    try:
        wait_for(lambda: fleet(port)["registry_state"] == "ok", 30, "controller registered")
        replay(tmp_path, port, write_calls(tmp_path / "r0.pcap", {"call_id": "r0", "to_user": "1001"}), "replay-0")
        wait_for(lambda: "r0" in recordings(rec), 30, "r0 written")
        assert recordings(rec)["r0"][0]["retention"] is None          # no policy: kept until erased
        etcd_put(etcd.endpoint, key, json.dumps({"retention": {
            "default_days": 30, "rules": [{"name": "desk", "match": ["to:1???"], "days": 2555}]}}))
        wait_for(lambda: log_count(tmp_path, "retention changed") == 1, 15, "retention applied")
        replay(tmp_path, port, write_calls(tmp_path / "r1.pcap", {"call_id": "r1-desk", "to_user": "1001"},
                                           {"call_id": "r1-bob", "to_user": "bob"}, t0=T0 + 60), "replay-1")
        wait_for(lambda: {"r1-desk", "r1-bob"} <= recordings(rec).keys(), 30, "r1 written")
        desk, bob = recordings(rec)["r1-desk"][0]["retention"], recordings(rec)["r1-bob"][0]["retention"]
        assert (desk["rule"], desk["days"]) == ("desk", 2555) and (bob["rule"], bob["days"]) == ("default", 30)
        etcd_put(etcd.endpoint, key, json.dumps({"retention": {"default_days": -1}}))
        wait_for(lambda: log_count(tmp_path, "retention from etcd ignored") >= 1, 15, "bad retention refused")
        assert controller.poll() is None
    finally:
        stop(controller)

"""`spanrecctl` against a sharded controller (issue #12): one view whichever
shard is asked.  Real processes: `spanrec controller --shards 2 --insecure`
(a supervisor and two shard processes), a replay sensor routing over both,
then `fleet` / `calls` / `call` / `get` through either shard; one shard
stopped (SIGSTOP: it accepts connections and never answers) is shown as
unreachable and `fleet` exits 3 (EXIT_PARTIAL) within its timeout.
The merge rules themselves (each sensor once, the call found on another
shard) also have a test without processes, with fake clients."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import grpc
import pytest

from proto import admin_pb2, admin_pb2_grpc
from tests.conftest import require_tool
from tests.e2e.test_shards_controller import _alive, _free_run, _serving, _shards_of
from tests.transport.procs import REPO, SPANREC, SPANRECCTL, run

SAMPLE = REPO / "samples" / "sample-call.pcap"
SHARDS = ["shard-0", "shard-1"]


class Sharded:
    """The supervisor, its shards' PIDs, and what the replay left in storage."""

    def __init__(self, tmp: Path) -> None:
        self.port = _free_run(2)
        self.storage = tmp / "rec"
        self.log = open(tmp / "supervisor.log", "w+")
        self.proc = subprocess.Popen(
            [*SPANREC, "controller", "--shards", "2", "--insecure",
             "--listen", f"127.0.0.1:{self.port}", "--state-dir", str(tmp / "state"),
             "--storage", str(self.storage), "--log-format", "text",
             "--index", f"sqlite:///{tmp / 'index.sqlite'}"],       # one index for both shards
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.pids: dict[str, int] = {}

    def target(self, i: int) -> str:
        return f"127.0.0.1:{self.port + i}"

    def stop(self) -> None:
        for pid in self.pids.values():          # a stopped shard must be able to stop
            if _alive(pid):
                os.kill(pid, signal.SIGCONT)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in self.pids.values():          # nothing of this test may outlive it
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.log.close()


def ctl(cmd: str, target: str, *args: str) -> subprocess.CompletedProcess:
    return run(SPANRECCTL, cmd, "--controller", target, "--insecure", *args, timeout=60)


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stdout


def stored(c: Sharded) -> dict[str, Path]:
    return {p.parent.name: p.parent for p in c.storage.rglob("call.json")}


def own_calls(target: str) -> set[str]:
    """The recording ids one shard lists itself (its own ListCalls, no merge)."""
    with grpc.insecure_channel(target) as ch:
        lst = admin_pb2_grpc.AdminStub(ch).ListCalls(admin_pb2.ListCallsRequest(), timeout=5)
    return {c.id for c in lst.calls}


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ctl-shards")
    c = Sharded(tmp)
    try:
        line = c.proc.stdout.readline().strip()        # the member list sensors are given
        members = f"shard-0={c.target(0)},shard-1={c.target(1)}"
        assert line == f"sensors: --controller {members}", line
        deadline = time.monotonic() + 30
        while not (_serving(c.port) and _serving(c.port + 1)):
            assert time.monotonic() < deadline and c.proc.poll() is None, \
                Path(c.log.name).read_text()[-3000:]
            time.sleep(0.1)
        c.pids = {sid: pid for sid, (pid, _) in _shards_of(c.proc.pid).items()}
        assert sorted(c.pids) == SHARDS
        sensor = run(SPANREC, "sensor", "--pcap", str(SAMPLE), "--insecure", "--controller",
                     members, "--sensor-id", "branch-9", "--site", "lab", "--log-format", "text",
                     "--spool-dir", str(tmp / "spool"), timeout=60)
        assert sensor.returncode == 0, sensor.stderr
        while True:                                    # every recording written, none active
            fleet = json.loads(ok(ctl("fleet", c.target(0), "-o", "json")))
            written = fleet["totals"]["recordings_written"]
            if written and not fleet["totals"]["active_calls"] and len(stored(c)) >= written:
                break
            assert time.monotonic() < deadline, fleet
            time.sleep(0.2)
        yield c
    finally:
        c.stop()


def test_fleet_is_one_view_from_either_shard(sharded: Sharded) -> None:
    captured = len(subprocess.run([require_tool("tshark"), "-r", str(SAMPLE)], capture_output=True,
                                  text=True, check=True, timeout=60).stdout.splitlines())
    views = []
    for i in (0, 1):
        fleet = json.loads(ok(ctl("fleet", sharded.target(i), "-o", "json")))
        assert (fleet["controller"], fleet["shard_id"]) == (sharded.target(i), SHARDS[i])
        assert fleet["ring"] == SHARDS and fleet["unreachable"] == []
        assert [(s["shard_id"], s["address"], s["state"]) for s in fleet["shards"]] == \
            [(sid, sharded.target(j), "up") for j, sid in enumerate(SHARDS)]
        assert all(s["recordings_written"] for s in fleet["shards"]), fleet["shards"]   # both own calls
        (s,) = fleet["sensors"]                        # the sensor once, not once per shard
        assert (s["sensor_id"], s["state"], s["mode"]) == ("branch-9", "done", "replay")
        assert [p["shard_id"] for p in s["shards"]] == SHARDS
        # capture counters once (not summed): what tshark counts in the capture
        assert s["captured"] == captured
        # the packets received per shard add up to what the sensor forwarded on its
        # streams; the sample is SIP over UDP: nothing broadcast, so that is the
        # capture minus what the sensor filtered
        received = sum(p["packets_received"] for p in s["shards"])
        assert received == s["packets_received"] == s["forwarded"] \
            == sum(p["forwarded"] for p in s["shards"])
        assert s["forwarded"] == s["captured"] - s["filtered"] - s["decode_errors"]
        assert fleet["totals"]["packets_in"] == received
        assert fleet["totals"]["recordings_written"] == len(stored(sharded))
        views.append({k: fleet[k] for k in ("ring", "storage", "shards", "sensors", "totals")})
    assert views[0] == views[1]
    out = ok(ctl("fleet", sharded.target(1)))
    for text in ("sharded controller at", *SHARDS, "total", "branch-9", "2/2",
                 f"{len(stored(sharded))} recording(s)"):
        assert text in out, out


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_calls_merge_every_shard(sharded: Sharded, fmt: str) -> None:
    folders = stored(sharded)
    mine = [own_calls(sharded.target(i)) for i in (0, 1)]
    assert mine[0] and mine[1] and not mine[0] & mine[1]    # each shard wrote its own share
    for i in (0, 1):
        out = ok(ctl("calls", sharded.target(i), "-o", fmt))
        if fmt == "json":
            assert sorted(c["id"] for c in json.loads(out)) == sorted(folders)
            assert json.loads(ok(ctl("calls", sharded.target(i), "--active", "-o", "json"))) == []
        else:
            assert f"{len(folders)} call(s) on {sharded.target(i)}" in out, out
            assert "2 of 2 answered" in out and all(rid in out for rid in folders)


def test_call_and_get_through_the_other_shard(sharded: Sharded, tmp_path: Path) -> None:
    owner = {rid: i for i in (0, 1) for rid in own_calls(sharded.target(i))}
    folders = stored(sharded)
    assert sorted(owner) == sorted(folders)
    for rid, folder in folders.items():
        other = sharded.target(1 - owner[rid])      # the shard that did not write it
        assert json.loads(ok(ctl("call", other, rid, "-o", "json"))) == \
            json.loads((folder / "call.json").read_text())
        ok(ctl("get", other, rid, "--out", str(tmp_path), "-o", "json"))
        want = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
        assert sorted(p.name for p in (tmp_path / rid).iterdir()) == want
        for name in want:
            assert (tmp_path / rid / name).read_bytes() == (folder / name).read_bytes(), name
    missing = next(iter(folders))[:-1] + "0"
    missing = missing if missing not in folders else missing[:-1] + "1"
    proc = ctl("call", sharded.target(0), missing)
    assert proc.returncode == 1 and f"recording {missing}" in proc.stderr, proc.stderr


def test_a_stopped_shard_is_unreachable_and_the_answer_partial(sharded: Sharded) -> None:
    pid = sharded.pids["shard-1"]
    os.kill(pid, signal.SIGSTOP)           # accepts TCP, never answers: the timeout path
    try:
        t0 = time.monotonic()
        proc = ctl("fleet", sharded.target(0), "--timeout", "2", "-o", "json")
        assert time.monotonic() - t0 < 10
        assert proc.returncode == 3, proc.stderr       # EXIT_PARTIAL (cli/ctl.py)
        assert "partial answer: shard(s) shard-1 did not answer" in proc.stderr
        fleet = json.loads(proc.stdout)
        assert fleet["unreachable"] == ["shard-1"]
        up, down = fleet["shards"]
        assert (up["shard_id"], up["state"], down["shard_id"], down["state"]) == \
            ("shard-0", "up", "shard-1", "unreachable")
        assert "unreachable" in down["error"] and "within 2 s" in down["error"]
        (s,) = fleet["sensors"]
        assert [p["shard_id"] for p in s["shards"]] == ["shard-0"]
        table = ctl("fleet", sharded.target(0), "--timeout", "2")
        assert table.returncode == 3 and "unreachable" in table.stdout and "1/2" in table.stdout
        calls = ctl("calls", sharded.target(0), "--timeout", "2", "-o", "json")
        assert calls.returncode == 3
        assert {c["id"] for c in json.loads(calls.stdout)} == own_calls(sharded.target(0))
    finally:
        os.kill(pid, signal.SIGCONT)


# -- the merge rules, without processes ---------------------------------------
def test_cluster_merges_sensors_and_finds_calls_elsewhere(monkeypatch) -> None:
    import transport.admin_client as ac
    import transport.admin_cluster as acl

    def sensor(**kw):
        base = {f: 0 for f, spec in ac.SensorInfo.__dataclass_fields__.items()
                if spec.type in ("int", "float")}
        base.update(sensor_id="s", site="x", version="1", mode="live", state="up",
                    link="connected", peer="", identity="", last_seen="2026-01-01T00:00:00Z",
                    last_heartbeat="", connected_since="", error="", merge="")
        base.update(kw)
        return ac.SensorInfo(**base)

    members = [ac.ShardMemberInfo("a", "h:1"), ac.ShardMemberInfo("b", "h:2")]

    def fleet(sid, s, target):
        return ac.Fleet(controller=target, controller_id=sid, version="1", storage="file:///r",
                        active_calls=1, recordings_written=2, storage_errors=0, decode_errors=0,
                        duplicates_dropped=0, packets_in=s.packets_received, sensors=[s],
                        shard_id=sid, ring=["a", "b"], shard_members=members)

    sa = sensor(captured=100, filtered=10, forwarded=50, packets_received=50, kernel_drops=3)
    sb = sensor(captured=90, filtered=9, forwarded=40, packets_received=40, kernel_drops=3,
                state="stale", link="disconnected")
    detail = ac.CallDetail(summary=None, call={"id": "r"}, files=[])

    class Fake:
        def __init__(self, target, security=None, timeout_s=5.0):
            self.target, self.security, self.timeout_s = target, security, timeout_s

        def fleet(self):
            return fleet("a", sa, self.target) if self.target == "h:1" else fleet("b", sb, self.target)

        def call(self, rid):
            if self.target == "h:2" and rid == "r":
                return detail
            raise ac.AdminNotFound(f"recording {rid}: not found")

        def close(self):
            pass

    monkeypatch.setattr(acl, "AdminClient", Fake)
    asked = Fake("h:1")
    view = acl.Cluster(asked).fleet()
    (s,) = view.sensors
    assert (s.captured, s.filtered, s.kernel_drops) == (100, 10, 3)     # once: the freshest
    assert (s.forwarded, s.packets_received) == (90, 90)                 # summed over streams
    assert (s.state, s.link) == ("stale", "partial")
    assert view.totals["active_calls"] == 2 and view.totals["packets_in"] == 90
    assert acl.Cluster(asked).call("r") is detail                        # found on shard b
    with pytest.raises(ac.AdminNotFound, match="recording q"):
        acl.Cluster(asked).call("q")


def test_erase_asks_every_shard(sharded: Sharded) -> None:
    """`spanrecctl erase` through one shard: the recording leaves storage and the
    index, and every other shard is asked to drop what it still holds of it (a
    copy in its outbox); with a shard that does not answer the erasure is done
    and the answer partial (exit 3). Runs last: it deletes recordings."""
    first, second = sorted(stored(sharded))[:2]
    proc = ctl("erase", sharded.target(1), first, "--yes", "--reason", "GDPR 1", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    assert [(o["recording_id"], o["what"]) for o in json.loads(proc.stdout)] == [(first, "erased")]
    assert first not in stored(sharded)
    pid = sharded.pids["shard-0"]
    os.kill(pid, signal.SIGSTOP)
    try:
        proc = ctl("erase", sharded.target(1), second, "--yes", "--timeout", "2", "-o", "json")
    finally:
        os.kill(pid, signal.SIGCONT)
    assert proc.returncode == 3, proc.stderr
    assert "partial answer: shard(s) shard-0 did not answer" in proc.stderr
    assert [(o["recording_id"], o["what"]) for o in json.loads(proc.stdout)] == [(second, "erased")]
    assert second not in stored(sharded)

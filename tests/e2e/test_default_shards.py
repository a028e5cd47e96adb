"""The default shard count (issue #12) and sensors that learn the shards from
one controller address.

`spanrec controller` without --shards runs one shard per core; a sensor given
`--controller HOST:PORT` alone asks that shard for the others
(`SensorLink.Members`, sensor/discover.py) and routes each call to its owner,
so every call is recorded once, whole, whatever the shard count. The Call-IDs
expected come from tshark, not from spanrec."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from cli.settings import ControllerSettings, available_cores
from proto import sensor_pb2, sensor_pb2_grpc
from registry.ring import Shard
from sensor.discover import SeedMembership
from sensor.pipeline import SensorOptions, reroute_stranded
from sensor.spool import Spool
from tests.conftest import REPO, require_tool
from tests.e2e.test_shards_controller import _free_run, _serving, _shards_of, _wait

SPANREC = [sys.executable, "-m", "cli.main"]


def _env_default() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SPANREC_SHARDS"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


# -- how many shards by default ------------------------------------------------
def test_default_shard_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPANREC_SHARDS", raising=False)
    monkeypatch.setattr("cli.settings.available_cores", lambda: 8)
    s = ControllerSettings()
    assert s.shards == 0
    assert s.shard_count() == 8                                   # controller: every core
    assert ControllerSettings(listen="127.0.0.1:0").shard_count() == 1   # no port run
    assert ControllerSettings(shards=3).shard_count() == 3        # asked for
    child = ControllerSettings(shard_id="a", shard_members="a=h:1,b=h:2")
    assert child.shard_count() == 1                               # one shard of a ring
    rec = ControllerSettings(listen="127.0.0.1:0")
    big = 100 << 20
    assert rec.shard_count(1, 1 << 20) == 1                       # small input: one process
    assert rec.shard_count(1, big) == 3                           # 3 per sensor at most
    assert rec.shard_count(3, big) == 5                           # 8 cores - 3 sensors
    assert rec.shard_count(8, big) == 1
    monkeypatch.setattr("cli.settings.available_cores", lambda: 2)
    assert rec.shard_count(1, big) == 1                           # this CI machine: 2 cores


def test_available_cores_is_the_affinity_or_less() -> None:
    assert 1 <= available_cores() <= len(os.sched_getaffinity(0))


# -- a sensor that learns the shards --------------------------------------------
def _call_ids(pcap: Path) -> set[str]:
    require_tool("tshark")
    out = subprocess.run(["tshark", "-r", str(pcap), "-Y", "sip.Method == \"INVITE\"", "-T", "fields",
                          "-e", "sip.Call-ID"], capture_output=True, text=True, check=True).stdout
    return {ln.strip() for ln in out.splitlines() if ln.strip()}


@pytest.fixture
def default_controller(tmp_path: Path):
    """`spanrec controller` with no --shards (SPANREC_SHARDS unset) on this machine."""
    n = available_cores()
    if n < 2:
        pytest.skip("one core: the default is one controller process")
    listen, health = _free_run(n), _free_run(n)
    err = open(tmp_path / "controller.log", "w+")
    proc = subprocess.Popen(
        [*SPANREC, "controller", "--insecure", "--listen", f"127.0.0.1:{listen}",
         "--health-listen", f"127.0.0.1:{health}", "--state-dir", str(tmp_path / "state"),
         "--storage", str(tmp_path / "rec"), "--log-format", "text"],
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
        env=_env_default())
    try:
        _wait(lambda: all(_serving(health + i) for i in range(n)), 60, "every shard SERVING")
        yield proc, n, listen, tmp_path
    finally:
        pids = [pid for pid, _ in _shards_of(proc.pid).values()]
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pid in pids:                       # nothing of this test may outlive it
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        err.close()


def test_sensor_given_one_address_routes_over_the_default_shards(default_controller) -> None:
    proc, n, listen, tmp_path = default_controller
    assert sorted(_shards_of(proc.pid)) == [f"shard-{i}" for i in range(n)]

    # what shard-0 tells a sensor
    with grpc.insecure_channel(f"127.0.0.1:{listen}") as ch:
        reply = sensor_pb2_grpc.SensorLinkStub(ch).Members(sensor_pb2.MembersRequest(), timeout=5)
    assert [(m.shard_id, m.address) for m in reply.members] == \
        [(f"shard-{i}", f"127.0.0.1:{listen + i}") for i in range(n)]
    assert list(reply.leg_headers) == ["x-call-id", "x-cid"]

    pcap = tmp_path / "calls.pcap"
    subprocess.run([sys.executable, str(REPO / "scripts" / "gencalls.py"), str(pcap), "--calls", "24",
                    "--duration", "2", "--concurrent", "8"], check=True, cwd=REPO)
    want = _call_ids(pcap)
    assert len(want) == 24
    sensor = subprocess.run(
        [*SPANREC, "sensor", "--pcap", str(pcap), "--controller", f"127.0.0.1:{listen}",
         "--insecure", "--sensor-id", "s1", "--spool-dir", str(tmp_path / "spool"),
         "--log-format", "text"],
        cwd=REPO, capture_output=True, text=True, timeout=180, env=_env_default())
    assert sensor.returncode == 0, sensor.stderr[-3000:]
    assert "the controller is sharded: routing calls over its shards" in sensor.stderr
    assert not (tmp_path / "spool" / "s1").exists()     # a finished replay leaves no spool

    # SIGTERM: the shards write what they hold and stop
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(120) == 0
    got: dict[str, int] = {}
    for call_json in (tmp_path / "rec").rglob("call.json"):
        meta = json.loads(call_json.read_text())
        for leg in meta["legs"]:
            got[leg["call_id"]] = got.get(leg["call_id"], 0) + 1
    assert set(got) == want                    # every call recorded ...
    assert all(v == 1 for v in got.values()), {k: v for k, v in got.items() if v > 1}   # ... once
    logs = (tmp_path / "controller.log").read_text()
    assert "sensor refused" not in logs, logs[-3000:]


def test_members_of_one_controller_and_of_none(tmp_path: Path) -> None:
    """One controller answers no members (the sensor sends it everything); a
    controller that does not answer leaves the list saved last time, else none."""
    port = _free_run(1)
    health = _free_run(1)
    proc = subprocess.Popen(
        [*SPANREC, "controller", "--insecure", "--shards", "1", "--listen", f"127.0.0.1:{port}",
         "--health-listen", f"127.0.0.1:{health}", "--state-dir", str(tmp_path / "state"),
         "--storage", str(tmp_path / "rec")],
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait(lambda: _serving(health), 60, "controller SERVING")
        saved = tmp_path / "members.json"
        seed = SeedMembership(f"127.0.0.1:{port}", None, saved=saved)
        assert seed.first(5) == []
        assert json.loads(saved.read_text())["members"] == []
    finally:
        proc.terminate()
        proc.wait(60)
    # down now: the saved list (none) is used; a saved list of shards is used as saved
    t0 = time.monotonic()
    assert SeedMembership(f"127.0.0.1:{port}", None, saved=saved).first(1) == []
    assert time.monotonic() - t0 < 5
    saved.write_text(json.dumps({"controller": f"127.0.0.1:{port}", "leg_headers": ["x-cid"],
                                 "members": [{"shard_id": "a", "address": "127.0.0.1:1"},
                                             {"shard_id": "b", "address": "127.0.0.1:2"}]}))
    seed = SeedMembership(f"127.0.0.1:{port}", None, saved=saved)
    assert [s.shard_id for s in seed.first(1)] == ["a", "b"]
    assert seed.leg_headers == ("x-cid",) and seed.current()[0] == 1
    # ... but not one saved for another controller address, nor a damaged one
    assert SeedMembership("127.0.0.1:9", None, saved=saved).first(0.5) == []
    saved.write_text("{not json")
    assert SeedMembership(f"127.0.0.1:{port}", None, saved=saved).first(0.5) == []


# -- batches spooled for another controller layout --------------------------------
class _Collect:
    def __init__(self) -> None:
        self.frames: list[tuple[int, list[tuple[int, bytes]]]] = []

    def submit(self, linktype: int, frames: list[tuple[int, bytes]], cursor: int = 0) -> None:
        self.frames.append((linktype, frames))


def _spool_batches(folder: Path, batches: list[list[tuple[int, bytes]]], acked: int) -> None:
    sp = Spool(folder, 1 << 20)
    for frames in batches:
        msg = sensor_pb2.Batch(linktype=1, timestamps_ns=[t for t, _ in frames],
                               lengths=[len(d) for _, d in frames], data=b"".join(d for _, d in frames))
        sp.append(msg.SerializeToString(), packets=len(frames), first_ts=frames[0][0])
    sp.ack(acked)
    sp.close()


def test_batches_spooled_for_another_layout_are_resent(tmp_path: Path) -> None:
    """A live sensor restarted after its controller became sharded resends what
    it had spooled for the one controller (and for a shard that is gone), not
    what was acknowledged, and empties those folders; a shard still in the
    ring keeps its own spool."""
    opts = SensorOptions(sensor_id="s1", controller="127.0.0.1:1", spool_dir=str(tmp_path))
    base = tmp_path / "s1"
    b = [[(10 + i, bytes([i]) * 60)] for i in range(4)]
    _spool_batches(base, b[:3], acked=1)                 # plain: batch 1 acknowledged
    _spool_batches(base / "gone", [b[3]], acked=0)       # a shard no longer in the ring
    _spool_batches(base / "shard-0", [b[0]], acked=0)    # a shard of the ring now: its own
    out = _Collect()
    moved = reroute_stranded(opts, {"shard-0", "shard-1"}, out)
    assert moved == 3
    assert [f for _, f in out.frames] == [b[1], b[2], b[3]]
    assert all(lt == 1 for lt, _ in out.frames)
    assert len(Spool(base / "shard-0", 1 << 20)) == 1
    again = _Collect()
    assert reroute_stranded(opts, {"shard-0", "shard-1"}, again) == 0 and not again.frames
    # a replay never does this (it is resent from its file)
    assert reroute_stranded(SensorOptions(sensor_id="s1", controller="x:1", spool_dir=str(tmp_path),
                                          pcap="f.pcap"), None, again) == 0


def test_wildcard_member_hosts_are_the_seed_host() -> None:
    seed = SeedMembership("10.1.2.3:7600", None)
    reply = sensor_pb2.RingMembers(members=[
        sensor_pb2.RingMember(shard_id="shard-0", address="0.0.0.0:7600"),
        sensor_pb2.RingMember(shard_id="shard-1", address="ctl.example:7601", state="leaving")])
    assert seed._shards_of(reply) == [Shard("shard-0", "10.1.2.3:7600"),
                                      Shard("shard-1", "ctl.example:7601", "leaving")]

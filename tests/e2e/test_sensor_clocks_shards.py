"""Time and trust hold across shards (issue #12 on top of issue #11).

The cases of tests/e2e/test_sensor_clocks.py (a sensor an hour behind and one
heartbeating clock_ns=0 beside a good one; the only sensor dying mid-call; a
silent and a frozen-clock sensor beside a good one), against two shards:

* ``supervisor``: one `spanrec controller --shards 2 --insecure` (the member
  list read from the line it prints);
* ``two-controllers``: two separate `spanrec controller --shard-id A|B
  --shard-members A=...,B=...` processes (controller ids A and B), one static
  ring, as two machines would run them.

The test sensors route like real ones (sensor/route.py): one stream per shard
with ``Hello.ring`` = the sorted shard ids, every generated frame sent to
``ShardRouter(Ring(...)).assign`` 's shard (broadcast frames to every shard,
``Batch.broadcast``), heartbeats on every stream; the odd behaviours (skew,
zero clock, death, silence, frozen clock) apply to all of a sensor's streams.

Besides what test_sensor_clocks.py asserts (read from every shard's Admin
GetStatus), each call is recorded exactly once across the shards, on the shard
the ring names, and each shard owns some of the good sensor's calls (generator
seeds are chosen with the ring so they do) while one shard gets no packet at
all from the odd sensor and must still write its good calls on time.
"""
from __future__ import annotations

import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from proto import admin_pb2, admin_pb2_grpc, sensor_pb2, sensor_pb2_grpc
from registry.ring import Ring, Shard, parse_members
from scripts.gencalls import frames as gen_frames
from scripts.gencalls import plan as gen_plan
from sensor.route import ShardRouter
from tests.conftest import REPO
from tests.e2e.test_shards_controller import _free_run
from tests.s3server import free_ports

SEC = 1_000_000_000
SPANREC = [sys.executable, "-m", "cli.main"]
CONFIGS = ["supervisor", "two-controllers"]
_CALL_ID = re.compile(rb"\r\nCall-ID: *([^\r\n]+)")


# -- the sharded test sensor ----------------------------------------------------
class ShardedLiveSensor:
    """tests/e2e/test_sensor_clocks.py's LiveSensor routed over the shards of a
    ring: sends `frames` (generated from time 0) in real time with its clock
    `skew_ns` off, each frame on the stream of the shard `ShardRouter.assign`
    names (broadcast ones on every stream, in `Batch.broadcast` runs), and a
    heartbeat every 0.5 s on every stream with its clock (or 0).  The sensor
    dies (`stop_after_s`: every stream ends), goes silent (`silent_after_s`:
    streams open, nothing sent) or freezes (`frozen_after_s`: no packets,
    heartbeats with a stopped clock) on all its streams at once."""

    def __init__(self, shards: list[tuple[Shard, grpc.Channel]], sid: str, frames: list,
                 skew_ns: int = 0, zero_clock: bool = False, stop_after_s: float | None = None,
                 silent_after_s: float | None = None, frozen_after_s: float | None = None) -> None:
        self.ring = Ring([s for s, _ in shards])
        self.router = ShardRouter(self.ring)
        self.ids = [s.shard_id for s in self.ring.shards]           # sorted: Hello.ring
        channels = {s.shard_id: ch for s, ch in shards}
        self.channels = [channels[i] for i in self.ids]               # by ring index
        self.sid, self.frames, self.skew = sid, frames, skew_ns
        self.zero_clock, self.stop_after_s = zero_clock, stop_after_s
        self.silent_after_s, self.frozen_after_s = silent_after_s, frozen_after_s
        self.frozen_at: int | None = None
        self.session = uuid.uuid4().hex
        self.stop = threading.Event()
        self.errors: list[tuple[str, BaseException]] = []
        self.sent = dict.fromkeys(self.ids, 0)        # packets sent per shard (broadcast: each)
        self.last_frame_at: float | None = None       # monotonic time the last frame went out
        self._queues: list[queue.Queue] = [queue.Queue() for _ in self.ids]
        self._seq = [0] * len(self.ids)
        self._streams = [threading.Thread(target=self._stream, args=(i,), daemon=True)
                         for i in range(len(self.ids))]
        self._driver = threading.Thread(target=self._drive, daemon=True)

    def start(self) -> None:
        for t in self._streams:
            t.start()
        self._driver.start()

    def is_alive(self) -> bool:
        """Every stream still open (none refused, ended or failed)."""
        return all(t.is_alive() for t in self._streams) and not self.errors

    def join(self, timeout: float) -> None:
        for t in [self._driver, *self._streams]:
            t.join(timeout)

    # -- one stream per shard -----------------------------------------------------
    def _requests(self, i: int):
        yield sensor_pb2.SensorMessage(hello=sensor_pb2.Hello(
            sensor_id=self.sid, session=self.session, mode="live", version="test",
            ring=self.ids, clock_ns=0 if self.zero_clock else time.time_ns() + self.skew))
        q = self._queues[i]
        while True:
            msg = q.get()
            if msg is None:
                return                              # the stream just ends
            yield msg

    def _stream(self, i: int) -> None:
        try:
            stub = sensor_pb2_grpc.SensorLinkStub(self.channels[i])
            for _ in stub.Stream(self._requests(i)):
                pass
        except grpc.RpcError as exc:
            if not self.stop.is_set() and self.stop_after_s is None:
                self.errors.append((self.ids[i], exc))

    def _heartbeat(self, clock_ns: int) -> None:
        for q in self._queues:
            q.put(sensor_pb2.SensorMessage(heartbeat=sensor_pb2.Heartbeat(
                sensor_id=self.sid, clock_ns=clock_ns)))

    def _send(self, t0: int, base: int, batch: list) -> None:
        """Route `batch` like a real sensor: runs of each shard's own frames and
        of broadcast frames, in capture order per stream."""
        runs: list[list[tuple[bool, list]]] = [[] for _ in self.ids]
        for frame, shard in zip(batch, self.router.assign(1, batch)):
            for i in (range(len(self.ids)) if shard < 0 else (shard,)):
                bc = shard < 0
                if not runs[i] or runs[i][-1][0] != bc:
                    runs[i].append((bc, []))
                runs[i][-1][1].append(frame)
        for i, shard_runs in enumerate(runs):
            for bc, frames in shard_runs:
                self._seq[i] += 1
                self.sent[self.ids[i]] += len(frames)
                self._queues[i].put(sensor_pb2.SensorMessage(batch=sensor_pb2.Batch(
                    seq=self._seq[i], sensor_id=self.sid, linktype=1, broadcast=bc,
                    timestamps_ns=[t0 + (ts - base) + self.skew for ts, _ in frames],
                    lengths=[len(d) for _, d in frames], data=b"".join(d for _, d in frames))))

    def _drive(self) -> None:
        try:
            self._run()
        finally:
            for q in self._queues:
                q.put(None)

    def _run(self) -> None:
        t0 = time.time_ns()
        base = self.frames[0][0] if self.frames else 0
        i, beat = 0, 0.0
        while not self.stop.is_set():
            el = time.time_ns() - t0
            if self.stop_after_s is not None and el > self.stop_after_s * SEC:
                return                              # the sensor dies: every stream ends
            if self.silent_after_s is not None and el > self.silent_after_s * SEC:
                time.sleep(0.05)                    # stuck: streams stay open, nothing comes
                continue
            if self.frozen_after_s is not None and el > self.frozen_after_s * SEC:
                if self.frozen_at is None:
                    self.frozen_at = time.time_ns() + self.skew
                if time.monotonic() - beat >= 0.5:
                    beat = time.monotonic()
                    self._heartbeat(self.frozen_at)
                time.sleep(0.02)
                continue
            batch = []
            while i < len(self.frames) and self.frames[i][0] - base <= el:
                batch.append(self.frames[i])
                i += 1
            if batch:
                self._send(t0, base, batch)
                if i == len(self.frames):
                    self.last_frame_at = time.monotonic()
            if time.monotonic() - beat >= 0.5:
                beat = time.monotonic()
                self._heartbeat(0 if self.zero_clock else time.time_ns() + self.skew)
            time.sleep(0.02)


# -- generated calls and their owners -------------------------------------------
def _owners(frames: list, ring_ids: list[str]) -> dict[str, str]:
    """Call-ID -> the shard id a sensor routes it to (every frame of it: one shard)."""
    router = ShardRouter(Ring([Shard(i, "127.0.0.1:1") for i in ring_ids]))
    ids = [s.shard_id for s in router.ring.shards]
    out: dict[str, set[str]] = {}
    for (_, d), shard in zip(frames, router.assign(1, frames)):
        m = _CALL_ID.search(d)
        if m is not None:
            out.setdefault(m.group(1).decode(), set()).add(ids[shard] if shard >= 0 else "*")
    assert all(len(v) == 1 for v in out.values()), out
    return {cid: next(iter(v)) for cid, v in out.items()}


def _calls(ring_ids: list[str], want: str, *, first_seed: int, answered_by_s: float | None = None,
           **gen) -> tuple[list, dict[str, str]]:
    """Generated frames (first seed from `first_seed` on) whose calls are owned by
    every shard of the ring (want="split") or by one shard only (want="one"), and
    their owners; with `answered_by_s`, every call is answered by then."""
    for seed in range(first_seed, first_seed + 100):
        if answered_by_s is not None and any(
                p.answer_ns is None or p.answer_ns > answered_by_s * SEC
                for p in gen_plan(seed=seed, start_ns=0, **gen)):
            continue
        frames = list(gen_frames(seed=seed, start_ns=0, **gen))
        owners = _owners(frames, ring_ids)
        shards = set(owners.values())
        if (want == "split" and shards == set(ring_ids)) or (want == "one" and len(shards) == 1):
            return frames, owners
    raise AssertionError(f"no seed gives calls {want} over {ring_ids}")


# -- the controllers --------------------------------------------------------------
class Cluster:
    """Two shards of one ring: one supervisor or two separate shard processes."""

    def __init__(self, tmp_path: Path, how: str, *extra: str) -> None:
        self.tmp, self.how = tmp_path, how
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []
        common = ["--insecure", "--log-format", "text", *extra]
        try:
            if how == "supervisor":
                port = _free_run(2)
                out, log = tmp_path / "supervisor.out", tmp_path / "supervisor.log"
                self._spawn(["controller", "--shards", "2", "--listen", f"127.0.0.1:{port}",
                             "--storage", str(tmp_path / "rec"),
                             "--state-dir", str(tmp_path / "state"), *common], out, log)
                line = self._wait_line(out)
                self.members = parse_members(line.split("--controller", 1)[1].strip())
                self.storage = [tmp_path / "rec"]
            else:
                pa, pb = free_ports(2)
                members = f"A=127.0.0.1:{pa},B=127.0.0.1:{pb}"
                self.members = parse_members(members)
                self.storage = []
                for sid, port in (("A", pa), ("B", pb)):
                    log = tmp_path / f"controller-{sid}.log"
                    self.storage.append(tmp_path / f"rec-{sid}")
                    self._spawn(["controller", "--shard-id", sid, "--shard-members", members,
                                 "--controller-id", sid, "--listen", f"127.0.0.1:{port}",
                                 "--storage", str(tmp_path / f"rec-{sid}"),
                                 "--state-dir", str(tmp_path / f"state-{sid}"), *common], log, log)
            self.members.sort(key=lambda s: s.shard_id)
            self.ids = [s.shard_id for s in self.members]
            self.channels = {s.shard_id: grpc.insecure_channel(s.address) for s in self.members}
            for ch in self.channels.values():
                grpc.channel_ready_future(ch).result(timeout=30)
        except BaseException:
            self.stop()
            raise

    def _spawn(self, args: list[str], out: Path, log: Path) -> None:
        self.logs.append(log)
        err = open(log, "ab")
        so = err if out == log else open(out, "wb")
        self.procs.append(subprocess.Popen([*SPANREC, *args], cwd=REPO, stdin=subprocess.DEVNULL,
                                           stdout=so, stderr=err))

    def _wait_line(self, out: Path) -> str:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for line in out.read_text().splitlines():
                if line.startswith("sensors: --controller "):
                    return line
            assert self.procs[0].poll() is None, self.log_tail()
            time.sleep(0.1)
        raise AssertionError("no member list printed\n" + self.log_tail())

    def shards(self) -> list[tuple[Shard, grpc.Channel]]:
        return [(s, self.channels[s.shard_id]) for s in self.members]

    def written(self) -> list[dict]:
        return [json.loads(p.read_text()) for d in self.storage for p in d.rglob("call.json")]

    def status(self) -> dict[str, admin_pb2.Status]:
        out = {}
        for sid, ch in self.channels.items():
            st = admin_pb2_grpc.AdminStub(ch).GetStatus(admin_pb2.StatusRequest(), timeout=10)
            assert st.shard_id == sid and list(st.ring) == self.ids, (sid, st.shard_id, st.ring)
            out[sid] = st
        return out

    def recordings_by_shard(self) -> dict[str, list[str]]:
        """Shard id -> the root Call-ID of each recording it wrote (Admin ListCalls)."""
        out = {}
        for sid, ch in self.channels.items():
            page = admin_pb2_grpc.AdminStub(ch).ListCalls(admin_pb2.ListCallsRequest(), timeout=10)
            out[sid] = [c.call_ids[0] for c in page.calls if not c.active]
        return out

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def log_tail(self) -> str:
        return "\n".join(f"--- {p.name}\n" + p.read_text(errors="replace")[-2000:]
                         for p in self.logs if p.exists())

    def stop(self) -> None:
        for ch in getattr(self, "channels", {}).values():
            ch.close()
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)

    def wait(self, pred, timeout: float, what: str) -> float:
        t0 = time.monotonic()
        while not pred():
            assert time.monotonic() - t0 < timeout, f"{what} ({self.how})\n{self.log_tail()}"
            time.sleep(0.25)
        return time.monotonic() - t0


def _once_on_owner(cluster: Cluster, owners: dict[str, str]) -> None:
    """Each of these calls recorded exactly once across the shards, by its owner."""
    by_shard = cluster.recordings_by_shard()
    for cid, owner in owners.items():
        where = [sid for sid, cids in by_shard.items() for c in cids if c == cid]
        assert where == [owner], (cid, owner, by_shard)
    docs = [d for d in cluster.written() if d["call_ids"][0] in owners]
    assert sorted(d["call_ids"][0] for d in docs) == sorted(owners), docs


# -- hour-behind and clock_ns=0 sensors beside a good one -----------------------------
@dataclass
class SkewRun:
    how: str
    ids: list[str]
    good: dict[str, str]                    # Call-ID -> owner shard
    slow: dict[str, str]
    quiet: str                              # the shard that got no packet from "slow"
    docs: list[dict] = field(default_factory=list)
    by_shard: dict[str, list[str]] = field(default_factory=dict)
    status: dict[str, admin_pb2.Status] = field(default_factory=dict)
    sent: dict[str, dict[str, int]] = field(default_factory=dict)
    alive: dict[str, bool] = field(default_factory=dict)
    controllers_alive: bool = False


@pytest.fixture(scope="module", params=CONFIGS)
def skew_run(request, tmp_path_factory) -> SkewRun:
    """Beside a correct live sensor: one an hour behind whose calls are all one
    shard's, one heartbeating clock_ns=0 and sending nothing.  Waits for every call
    of the good sensor (and the slow sensor's), then takes each shard's view while
    all three are still connected."""
    how = request.param
    cluster = Cluster(tmp_path_factory.mktemp(f"skew-{how}"), how, "--answered-timeout", "3")
    ids = cluster.ids
    gen = dict(calls=2, duration=3.0, concurrent=2)
    good, good_own = _calls(ids, "split", first_seed=1, **gen)
    slow, slow_own = _calls(ids, "one", first_seed=7, **gen)
    (busy,) = set(slow_own.values())
    run = SkewRun(how, ids, good_own, slow_own, quiet=next(i for i in ids if i != busy))
    sensors = [ShardedLiveSensor(cluster.shards(), "good", good),
               ShardedLiveSensor(cluster.shards(), "slow", slow, -3600 * SEC),
               ShardedLiveSensor(cluster.shards(), "zero", [], zero_clock=True)]
    try:
        for s in sensors:
            s.start()

        def recorded(cids) -> bool:
            have = {d["call_ids"][0] for d in cluster.written() if d["status"] != "incomplete"}
            return set(cids) <= have
        cluster.wait(lambda: recorded(good_own), 40, "the good sensor's recordings")
        try:        # the slow sensor's calls end at about the same time: a little more
            cluster.wait(lambda: recorded(slow_own), 8, "the slow sensor's recordings")
        except AssertionError:
            pass
        time.sleep(0.5)         # Admin's recent recordings follow call.json
        run.docs = cluster.written()
        run.by_shard = cluster.recordings_by_shard()
        run.status = cluster.status()
        run.sent = {s.sid: dict(s.sent) for s in sensors}
        run.alive = {s.sid: s.is_alive() for s in sensors}
        run.controllers_alive = cluster.alive()
    finally:
        for s in sensors:
            s.stop.set()
        cluster.stop()
    return run


def test_skewed_and_zero_clock_sensors_hold_nobody(skew_run: SkewRun) -> None:
    """Every call of the good sensor written once, whole, by its owner — on the
    shard that got no packet from the hour-behind sensor too — while all three
    sensors are connected; each shard judges each sensor's clock on its own:
    the slow sensor's offset (from heartbeats alone where it sent no packet), the
    good one's zero, the zero clock's heartbeats refused."""
    run = skew_run
    assert set(run.good.values()) == set(run.ids)                  # both shards own good calls
    assert run.sent["slow"][run.quiet] == 0 and sum(run.sent["slow"].values()) > 0
    assert sum(run.sent["zero"].values()) == 0
    for cid, owner in run.good.items():
        docs = [d for d in run.docs if d["call_ids"][0] == cid]
        assert len(docs) == 1 and docs[0]["status"] != "incomplete" and \
            docs[0]["sensors"] == ["good"], (cid, docs)
        assert [sid for sid, c in run.by_shard.items() if cid in c] == [owner], (cid, run.by_shard)
    for sid, st in run.status.items():
        s = {x.sensor_id: x for x in st.sensors}
        assert set(s) == {"good", "slow", "zero"}, (sid, st)
        assert abs(s["slow"].clock_offset_ns - 3600 * SEC) < 2 * SEC, (sid, s["slow"])
        assert s["good"].clock_offset_ns == 0, (sid, s["good"])
        assert s["zero"].heartbeats_refused > 0, (sid, s["zero"])
        assert all(x.link == "connected" for x in s.values()), (sid, st)
    assert all(run.alive.values()), run.alive                     # nobody disconnected
    assert run.controllers_alive


def test_skewed_sensor_calls_recorded_once(skew_run: SkewRun) -> None:
    """The hour-behind sensor's own calls: each recorded once, whole, by its owner
    (its Hello carries its clock, as a real sensor's does: its first INVITE is
    corrected too — without that it went in an hour early and its call was split)."""
    run = skew_run
    for cid, owner in run.slow.items():
        docs = [d for d in run.docs if d["call_ids"][0] == cid]
        assert len(docs) == 1 and docs[0]["status"] != "incomplete", \
            (cid, [(d["status"], d["end_reason"], d["started_at"], d["sip_packets"]) for d in docs])
        assert [sid for sid, c in run.by_shard.items() for x in c if x == cid] == [owner], \
            (cid, run.by_shard)


# -- the only sensor dies mid-call --------------------------------------------------
@pytest.mark.parametrize("how", CONFIGS)
def test_only_sensor_dies_mid_call(tmp_path: Path, how: str) -> None:
    """The only sensor dies (every stream ends) 3 s into 8 s calls, both answered,
    owned by both shards; with --answered-timeout 3 each shard writes its calls on
    its own clock, once, well before any stop."""
    cluster = Cluster(tmp_path, how, "--answered-timeout", "3")
    stop_after = 3.0
    frames, owners = _calls(cluster.ids, "split", first_seed=1, answered_by_s=stop_after - 0.25,
                            calls=2, duration=8.0, concurrent=12)
    sensor = ShardedLiveSensor(cluster.shards(), "only", frames, stop_after_s=stop_after)
    try:
        sensor.start()
        cluster.wait(lambda: len(cluster.written()) >= len(owners), 30, "recordings")
        time.sleep(0.5)
        docs = cluster.written()
        assert len(docs) == len(owners), docs
        assert {d["end_reason"] for d in docs} == {"timeout"}, docs
        _once_on_owner(cluster, owners)
        assert all(sensor.sent[sid] > 0 for sid in cluster.ids), sensor.sent
        assert cluster.alive()
    finally:
        sensor.stop.set()
        cluster.stop()


# -- a silent or frozen-clock sensor beside a good one ---------------------------------
#: test_sensor_clocks.py measured the good calls written ~3 s after their last
#: frame alone; a stuck sensor may add at most 5 s (stale or stalled) + 3 s slack
_WRITTEN_WITHIN_S = 3 + 5 + 3


@pytest.mark.parametrize("how", CONFIGS)
@pytest.mark.parametrize("stuck", ["silent", "frozen-clock"])
def test_stuck_sensor_holds_others_back_a_bounded_time(tmp_path: Path, how: str,
                                                       stuck: str) -> None:
    """A connected sensor that stops sending packets — silent (no heartbeats either)
    or heartbeating a clock that stopped — on all its streams, one of its shards
    never having had a packet from it: every shard writes the good sensor's calls
    (each once, by its owner) within a bounded time of their last packet, and shows
    the stuck sensor stale (silent) or cut out of the merge (frozen)."""
    cluster = Cluster(tmp_path, how, "--answered-timeout", "3")
    good, owners = _calls(cluster.ids, "split", first_seed=3,
                          calls=2, duration=2.0, concurrent=2)
    stuck_frames = list(gen_frames(calls=1, duration=30.0, concurrent=1, seed=9, start_ns=0))
    after = {"silent_after_s": 0.5} if stuck == "silent" else {"frozen_after_s": 0.5}
    sensors = [ShardedLiveSensor(cluster.shards(), "good", good),
               ShardedLiveSensor(cluster.shards(), "stuck", stuck_frames, **after)]
    try:
        for s in sensors:
            s.start()

        def done() -> bool:
            return {d["call_ids"][0] for d in cluster.written() if "good" in d["sensors"]} \
                >= set(owners)
        cluster.wait(done, 60, "the good sensor's recordings")
        held = time.monotonic() - sensors[0].last_frame_at
        print(f"{how}: good calls written {held:.1f} s after their last frame beside a "
              f"{stuck} sensor")
        status = cluster.status()
        quiet = [sid for sid in cluster.ids if sensors[1].sent[sid] == 0]
        assert len(quiet) == 1, sensors[1].sent         # one shard never had a packet from it
        for sid, st in status.items():
            s = {x.sensor_id: x for x in st.sensors}
            if stuck == "silent":
                # no heartbeat for a while: "stale" (out of the merge) on every shard
                assert s["stuck"].state == "stale", (sid, s["stuck"])
            else:
                # heartbeats of a clock that stopped: cut out of every shard's merge
                assert s["stuck"].merge == "stalled" and s["stuck"].merge_stalls >= 1, \
                    (sid, s["stuck"])
            assert s["stuck"].link == "connected", (sid, s["stuck"])
        assert sensors[1].is_alive()                    # still connected throughout
        time.sleep(0.5)
        _once_on_owner(cluster, owners)
        assert held < _WRITTEN_WITHIN_S, held
    finally:
        for s in sensors:
            s.stop.set()
        cluster.stop()

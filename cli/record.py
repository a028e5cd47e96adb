"""`spanrec record`: the whole path on one machine.

A controller runs in this process on a loopback port; each capture file is
replayed by its own sensor process (`spanrec sensor --pcap`), so the packets
cross real gRPC exactly as in production and the sensors use a second core.
"""
from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

from cli import output
from cli.serve import build_recorder, close_indexer, open_storage, tune_gc
from cli.settings import ControllerSettings, Failure
from cli.shards import describe_exit, free_ports, reap, spawn, stop_all
from controller.api.link import serve
from storage.base import own_cpu_by_layer


def run_record(settings: ControllerSettings, files: list[Path], *, fmt: str = "table",
               progress: bool = True) -> bool:
    n = settings.shard_count(len(files), sum(_size(p) for p in files))
    if n > 1:
        return run_record_sharded(settings, files, n, fmt=fmt, progress=progress)
    store = open_storage(settings)
    recorder = build_recorder(settings, store, expected_sensors=len(files))
    tune_gc()
    stats_path = os.environ.get("SPANREC_BENCH_STATS")
    rss_start = _rss_kib()
    me = resource.getrusage(resource.RUSAGE_SELF)
    startup_cpu = me.ru_utime + me.ru_stime     # imports, storage and recorder set-up
    t0 = time.monotonic()
    ok = asyncio.run(_record(settings, recorder, files, fmt, progress))
    if stats_path:
        _write_stats(stats_path, recorder, time.monotonic() - t0, rss_start, startup_cpu)
    return ok


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0        # the sensor says what is wrong with the file


def _naming(path: Path, message: str) -> str:
    """A sensor's error about its file: errors about the file itself (not found,
    CaptureFileError) already name it, exactly as it was passed; others (the
    controller link...) get it in front, so each line names the file once."""
    return message if str(path) in message else f"{path}: {message}"


def _clock_warnings(status: dict, paths: dict[str, Path]) -> None:
    """One line per file whose capture clock was corrected (controller/ingest/clock.py)."""
    for s in status["sensors"]:
        steps, restamped = s.get("clock_steps", 0), s.get("clock_restamped", 0)
        if steps or restamped:
            output.warning(f"{paths.get(s['sensor_id'], s['sensor_id'])}: capture clock stepped "
                           f"back {steps} time(s) and {restamped} packet(s) off the clock were "
                           "restamped; recordings use the corrected times (call.json clock)")


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _write_stats(path: str, recorder, elapsed: float, rss_start: int, startup_cpu: float = 0.0) -> None:
    """Figures for scripts/bench: this process is the controller, children are sensors."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    Path(path).write_text(json.dumps({
        "elapsed_s": elapsed,
        "controller_cpu_s": me.ru_utime + me.ru_stime,
        "controller_startup_cpu_s": startup_cpu,
        "controller_peak_rss_kib": me.ru_maxrss,
        "controller_start_rss_kib": rss_start,
        "sensors_cpu_s": kids.ru_utime + kids.ru_stime,
        "sensors_peak_rss_kib": kids.ru_maxrss,
        "packets_in": recorder.packets_in,
        "recordings": recorder.writer.written,
        "peak_active_calls": recorder.peak_active_calls,
        # issue #15: CPU of encryption and signed manifests (0 when off)
        "controller_protection_cpu_s": sum(cpu for layer, cpu in own_cpu_by_layer(recorder.writer.store).items()
                                           if layer in ("EncryptingStore", "SigningStore")),
    }))


def _start_sensors(files: list[Path], controller: str, logdir: Path,
                   ) -> list[tuple[str, Path, subprocess.Popen, Path]]:
    """One `spanrec sensor --pcap FILE` process per file (sensor id replay-<i>)."""
    procs: list[tuple[str, Path, subprocess.Popen, Path]] = []
    for i, path in enumerate(files, 1):
        sid = f"replay-{i}"
        errfile = logdir / f"{sid}.log"
        with open(errfile, "wb") as err:
            proc = spawn(
                [sys.executable, "-m", "cli.main", "sensor", "--pcap", str(path),
                 "--controller", controller, "--sensor-id", sid,
                 "--log-level", "warning", "--log-format", "text", "--connect-timeout", "30",
                 # one machine: compressing the link would only cost CPU on both ends
                 "--compression", "none",
                 # each run spools into its own temporary folder: a crashed
                 # earlier run must not resume into this one
                 "--spool-dir", str(logdir / "spool")],
                stdout=subprocess.DEVNULL, stderr=err,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        procs.append((sid, path, proc, errfile))
    return procs


def _progress_bar(procs, show: bool):
    bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                   TextColumn("{task.fields[pkts]} packets"), TimeElapsedColumn(),
                   console=output.err, disable=not show, transient=False)
    tasks = {sid: bar.add_task(path.name, total=path.stat().st_size, pkts=0)
             for sid, path, _, _ in procs}
    return bar, tasks


def _sensor_errors(procs) -> bool:
    """One line per sensor that failed, naming its file; False if any did."""
    ok = True
    for sid, path, proc, errfile in procs:
        if proc.returncode != 0:
            ok = False
            lines = [ln for ln in errfile.read_text(errors="replace").splitlines() if ln.strip()]
            last = lines[-1] if lines else f"sensor exited with status {proc.returncode}"
            output.error(_naming(path, last.removeprefix("spanrec: error: ")))
    return ok


async def _record(settings, recorder, files: list[Path], fmt: str, show: bool) -> bool:
    server, port = await serve(recorder, "127.0.0.1:0")
    logdir = tempfile.TemporaryDirectory(prefix="spanrec-record-")
    procs = _start_sensors(files, f"127.0.0.1:{port}", Path(logdir.name))
    bar, tasks = _progress_bar(procs, show)
    with bar:
        while True:
            for s in recorder.status()["sensors"]:
                if s["sensor_id"] in tasks:
                    bar.update(tasks[s["sensor_id"]], completed=s["replay_bytes"],
                               pkts=s["packets_received"])
            if all(p.poll() is not None for _, _, p, _ in procs):
                break
            await asyncio.sleep(0.2)
        done = {sid for sid, _, p, _ in procs if p.returncode == 0}
        for s in recorder.status()["sensors"]:
            if s["sensor_id"] in tasks:
                task = tasks[s["sensor_id"]]
                bar.update(task, pkts=s["packets_received"],
                           completed=bar.tasks[task].total if s["sensor_id"] in done
                           else s["replay_bytes"])

    ok = _sensor_errors(procs)
    if not recorder.all_replays_done.is_set():
        ok = False  # a sensor died before it finished: record what arrived
    await asyncio.to_thread(recorder.shutdown)
    await server.stop(grace=1.0)
    logdir.cleanup()
    await asyncio.to_thread(close_indexer, recorder)
    if recorder.writer.errors:
        ok = False
        output.error(f"{recorder.writer.errors} recording(s) could not be written")
    _index_warnings(recorder.status())
    output.print_unsignalled(recorder.status())   # media seen without signalling, SIP over TLS
    _clock_warnings(recorder.status(), {sid: path for sid, path, _, _ in procs})
    output.print_calls(list(recorder.writer.recent), fmt,
                       title=f"{recorder.writer.written} call(s) recorded to {recorder.writer.store.url}")
    return ok


def _index_warnings(status: dict) -> None:
    """The call index could not take every recording: say so (they are kept)."""
    if status.get("index_pending"):
        output.error(f"{status['index_pending']} recording(s) not yet in the call index "
                     f"{status.get('index', '')}: kept and indexed at the next run, or run "
                     "`spanrec index rebuild`")
    if status.get("index_errors"):
        output.error(f"{status['index_errors']} recording(s) could not be indexed (see the log)")


# -- `spanrec record --shards N` ---------------------------------------------
#: what a shard of a record run takes from record's settings (the rest of the
#: controller's settings are left at their defaults: no etcd, metrics, health
#: port or stop behaviour from the user's environment or config file)
_SHARD_SETTINGS = ("storage", "s3_endpoint", "s3_access_key", "s3_secret_key",
                   "answered_timeout_s", "setup_timeout_s", "linger_s", "sip_dedup_window_ms",
                   "media_dedup_window_ms", "leg_headers", "merge_by_media", "audio_format",
                   "file_mode", "log_level", "log_format", "index", "index_password_file",
                   "index_pending_dir", "retention_days", "retention", "object_lock", "s3_sse",
                   "encryption_key_file", "signing_key_file", "verify_key_file")
_RECORD_STOP_TIMEOUT_S = 300.0
_READY_TIMEOUT_S = 30.0


def _env_value(value) -> str:
    if hasattr(value, "get_secret_value"):
        return value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def _shard_env(settings: ControllerSettings) -> dict[str, str]:
    """The environment of a record run's shard: record's resolved settings as
    SPANREC_* values (flags, environment and --config already merged here), every
    other controller setting unset, the plain-text exemption of record's sensors."""
    names = set(ControllerSettings.model_fields)
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("SPANREC_") and k[len("SPANREC_"):].lower() in names)}
    env.pop("SPANREC_BENCH_STATS", None)
    for name in _SHARD_SETTINGS:
        value = getattr(settings, name)
        if value is not None and value != ():
            env[f"SPANREC_{name.upper()}"] = _env_value(value)
    # the rules with the single flags already applied, as one table
    env["SPANREC_RECORD_RULES"] = json.dumps(settings.recording_rules().to_dict())
    if settings.site_networks:
        env["SPANREC_SITE_NETWORKS"] = json.dumps(settings.site_networks)
    env["SPANREC_INSECURE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1].removeprefix("spanrec: error: ") if lines else ""


class _Shard:
    def __init__(self, shard_id: str, port: int, root: Path) -> None:
        self.shard_id, self.port = shard_id, port
        self.log = root / f"{shard_id}.log"
        self.results = root / f"{shard_id}.json"
        self.state = root / shard_id
        self.proc: subprocess.Popen | None = None
        self.stub = None

    def failure(self) -> str:
        why = _last_line(self.log)
        code = self.proc.returncode if self.proc is not None else None
        what = describe_exit(code) if code is not None else "failed"
        return f"controller shard {self.shard_id} (127.0.0.1:{self.port}) {what}" + \
            (f": {why}" if why else "")


def _status(shard: _Shard):
    """The shard's Admin GetStatus, or None when it does not answer (yet)."""
    import grpc
    from proto import admin_pb2, admin_pb2_grpc
    if shard.stub is None:
        # retried every 0.1 s while the shard starts (not gRPC's 1 s+ reconnect backoff)
        shard.channel = grpc.insecure_channel(f"127.0.0.1:{shard.port}", options=[
            ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 500)])
        shard.stub = admin_pb2_grpc.AdminStub(shard.channel)
    try:
        return shard.stub.GetStatus(admin_pb2.StatusRequest(), timeout=2.0)
    except grpc.RpcError:
        return None


def _merge_status(statuses: list[dict]) -> dict:
    """One `Recorder.status()`-like dict of the shards' (what record prints from):
    a sensor's sensor-wide counters are the same on every shard (max), its
    packets and restamped packets are split over them (sum), clock steps are
    seen by each shard that had packets on both sides (max)."""
    sensors: dict[str, dict] = {}
    engine: dict[str, int] = {}
    for st in statuses:
        for s in st.get("sensors", ()):
            m = sensors.get(s["sensor_id"])
            if m is None:
                sensors[s["sensor_id"]] = {**s, "counters": dict(s.get("counters") or {})}
                continue
            for k in ("packets_received", "clock_restamped", "duplicates_dropped"):
                m[k] = m.get(k, 0) + s.get(k, 0)
            for k in ("clock_steps", "replay_bytes"):
                m[k] = max(m.get(k, 0), s.get(k, 0))
            for k, v in (s.get("counters") or {}).items():
                m["counters"][k] = max(m["counters"].get(k, 0), v)
        for k, v in (st.get("engine") or {}).items():
            if isinstance(v, (int, float)):
                engine[k] = engine.get(k, 0) + v
    return {"sensors": list(sensors.values()), "engine": engine}


def run_record_sharded(settings: ControllerSettings, files: list[Path], n: int, *,
                       fmt: str = "table", progress: bool = True) -> bool:
    """`spanrec record --shards N`: N `spanrec controller` shard processes on
    loopback ports, the sensors routing each call to its shard; prints and
    returns what the single-process run does for the same input."""
    store = open_storage(settings)      # the same check (and one line) as one process
    stats_path = os.environ.get("SPANREC_BENCH_STATS")
    t0 = time.monotonic()
    tmp = tempfile.TemporaryDirectory(prefix="spanrec-record-")
    root = Path(tmp.name)
    shards = [_Shard(f"shard-{i}", port, root) for i, port in enumerate(free_ports(n))]
    members = ",".join(f"{s.shard_id}=127.0.0.1:{s.port}" for s in shards)
    env = _shard_env(settings)
    usage: dict[int, object] = {}
    sensors: list[tuple[str, Path, subprocess.Popen, Path]] = []
    try:
        for s in shards:
            with open(s.log, "wb") as err:
                s.proc = spawn(
                    [sys.executable, "-m", "cli.main", "controller", "--insecure",
                     "--shards", "1", "--shard-id", s.shard_id, "--shard-members", members,
                     "--listen", f"127.0.0.1:{s.port}", "--state-dir", str(s.state),
                     "--controller-id", s.shard_id],
                    stdout=subprocess.DEVNULL, stderr=err,
                    # not flags (no --help for them): a controller serving this run
                    env={**env, "SPANREC_EXPECTED_SENSORS": str(len(files)),
                         "SPANREC_RESULTS_FILE": str(s.results)})
        _wait_ready(shards)
        sensors = _start_sensors(files, members, root)
        _follow(shards, sensors, usage, progress)
        # every replay ended on every shard: the shards write what is left and stop
        killed = stop_all([s.proc for s in shards if s.proc is not None],
                          timeout_s=_RECORD_STOP_TIMEOUT_S, usage=usage)
        if killed:
            raise Failure(f"controller shard(s) did not stop within {_RECORD_STOP_TIMEOUT_S:g} s "
                          "and were killed: " + ", ".join(s.shard_id for s in shards
                                                          if s.proc in killed))
        results = []
        for s in shards:
            try:
                results.append(json.loads(s.results.read_text()))
            except (OSError, ValueError):
                raise Failure(s.failure() + " (no results)") from None
        _relay_logs(shards)
    finally:
        stop_all([p for _, _, p, _ in sensors] + [s.proc for s in shards if s.proc is not None],
                 timeout_s=10.0)
        for s in shards:
            if s.stub is not None:
                s.channel.close()
        tmp.cleanup()

    ok = _sensor_errors(sensors)
    if not all(r["all_replays_done"] for r in results):
        ok = False  # a sensor died before it finished: record what arrived
    errors = sum(r["errors"] for r in results)
    written = sum(r["written"] for r in results)
    if errors:
        ok = False
        output.error(f"{errors} recording(s) could not be written")
    status = _merge_status([r["status"] for r in results])
    output.print_unsignalled(status)
    _clock_warnings(status, {sid: path for sid, path, _, _ in sensors})
    calls = [c for r in results for c in r["recordings"]]
    if len(calls) > _RECENT:     # one process keeps the last 200 written: the same bound
        calls = sorted(calls, key=lambda c: (c.get("ended_at") or c.get("started_at") or "",
                                             str(c.get("id"))))[-_RECENT:]
    output.print_calls(calls, fmt, title=f"{written} call(s) recorded to {store.url}")
    if stats_path:
        _write_sharded_stats(stats_path, shards, sensors, results, usage, time.monotonic() - t0)
    return ok


_RECENT = 200   # RecordingWriter.recent bound (controller/output/writer.py)


def _wait_ready(shards: list[_Shard]) -> None:
    """Every shard answers its Admin API, or one line about the first that
    failed (a port taken, a bad storage) and the others are stopped."""
    deadline = time.monotonic() + _READY_TIMEOUT_S
    pending = list(shards)
    while pending:
        for s in list(pending):
            assert s.proc is not None
            if s.proc.poll() is not None:
                raise Failure(s.failure())
            if _status(s) is not None:
                pending.remove(s)
        if pending and time.monotonic() > deadline:
            raise Failure(f"controller shard {pending[0].shard_id} (127.0.0.1:{pending[0].port}) "
                          f"did not answer within {_READY_TIMEOUT_S:g} s")
        if pending:
            time.sleep(0.1)


def _follow(shards: list[_Shard], sensors, usage: dict, show: bool) -> None:
    """Progress (summed over the shards) until every sensor exited; a shard that
    dies meanwhile ends the run with one line (its sensors would wait for it)."""
    bar, tasks = _progress_bar(sensors, show)
    with bar:
        while True:
            for s in shards:
                if s.proc is not None and s.proc.poll() is not None:
                    raise Failure(s.failure())
            if show:
                received: dict[str, int] = {}
                replayed: dict[str, int] = {}
                for s in shards:
                    st = _status(s)
                    for x in st.sensors if st is not None else ():
                        received[x.sensor_id] = received.get(x.sensor_id, 0) + x.packets_received
                        replayed[x.sensor_id] = max(replayed.get(x.sensor_id, 0), x.replay_bytes)
                for sid, task in tasks.items():
                    if sid in received:
                        bar.update(task, completed=replayed[sid], pkts=received[sid])
            for _, _, p, _ in sensors:
                u = reap(p)
                if u is not None:
                    usage[p.pid] = u
            if all(p.returncode is not None for _, _, p, _ in sensors):
                break
            time.sleep(0.2)
        for sid, _, p, _ in sensors:
            if p.returncode == 0:
                bar.update(tasks[sid], completed=bar.tasks[tasks[sid]].total)


def _relay_logs(shards: list[_Shard]) -> None:
    """What the shards logged (warnings, by default) goes to stderr as one
    process's would, without the plain-text warning each shard gives."""
    from transport.tls import INSECURE_WARNING
    for s in shards:
        try:
            text = s.log.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            if line.strip() and INSECURE_WARNING not in line:
                print(line, file=sys.stderr)


def _write_sharded_stats(path: str, shards: list[_Shard], sensors, results: list[dict],
                         usage: dict, elapsed: float) -> None:
    """SPANREC_BENCH_STATS of a sharded run: the controller is the sum of its
    shard processes (CPU, peak and start RSS: memory of the logical controller;
    peak active calls: the sum of each shard's peak, an upper bound)."""
    def cpu(u) -> float:
        return u.ru_utime + u.ru_stime if u is not None else 0.0
    shard_usage = [usage.get(s.proc.pid) for s in shards if s.proc is not None]
    sensor_usage = [usage.get(p.pid) for _, _, p, _ in sensors]
    Path(path).write_text(json.dumps({
        "elapsed_s": elapsed,
        "controller_cpu_s": sum(cpu(u) for u in shard_usage),
        "controller_peak_rss_kib": sum(u.ru_maxrss for u in shard_usage if u is not None),
        "controller_start_rss_kib": sum(r["stats"]["start_rss_kib"] for r in results),
        "sensors_cpu_s": sum(cpu(u) for u in sensor_usage),
        "sensors_peak_rss_kib": max((u.ru_maxrss for u in sensor_usage if u is not None), default=0),
        "packets_in": sum(r["stats"]["packets_in"] for r in results),
        "recordings": sum(r["written"] for r in results),
        "peak_active_calls": sum(r["stats"]["peak_active_calls"] for r in results),
        "shards": len(shards),
    }))

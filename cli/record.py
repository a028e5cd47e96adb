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
from cli.serve import build_recorder, open_storage, tune_gc
from cli.settings import ControllerSettings
from controller.link import serve


def run_record(settings: ControllerSettings, files: list[Path], *, fmt: str = "table",
               progress: bool = True) -> bool:
    store = open_storage(settings)
    recorder = build_recorder(settings, store, expected_sensors=len(files))
    tune_gc()
    stats_path = os.environ.get("SPANREC_BENCH_STATS")
    rss_start = _rss_kib()
    t0 = time.monotonic()
    ok = asyncio.run(_record(settings, recorder, files, fmt, progress))
    if stats_path:
        _write_stats(stats_path, recorder, time.monotonic() - t0, rss_start)
    return ok


def _naming(path: Path, message: str) -> str:
    """A sensor's error about its file: errors about the file itself (not found,
    CaptureFileError) already name it, exactly as it was passed; others (the
    controller link...) get it in front, so each line names the file once."""
    return message if str(path) in message else f"{path}: {message}"


def _clock_warnings(status: dict, paths: dict[str, Path]) -> None:
    """One line per file whose capture clock was corrected (controller/clock.py)."""
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


def _write_stats(path: str, recorder, elapsed: float, rss_start: int) -> None:
    """Figures for scripts/bench: this process is the controller, children are sensors."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    Path(path).write_text(json.dumps({
        "elapsed_s": elapsed,
        "controller_cpu_s": me.ru_utime + me.ru_stime,
        "controller_peak_rss_kib": me.ru_maxrss,
        "controller_start_rss_kib": rss_start,
        "sensors_cpu_s": kids.ru_utime + kids.ru_stime,
        "sensors_peak_rss_kib": kids.ru_maxrss,
        "packets_in": recorder.packets_in,
        "recordings": recorder.writer.written,
        "peak_active_calls": recorder.peak_active_calls,
    }))


async def _record(settings, recorder, files: list[Path], fmt: str, show: bool) -> bool:
    server, port = await serve(recorder, "127.0.0.1:0")
    logdir = tempfile.TemporaryDirectory(prefix="spanrec-record-")
    procs: list[tuple[str, Path, subprocess.Popen, Path]] = []
    for i, path in enumerate(files, 1):
        sid = f"replay-{i}"
        errfile = Path(logdir.name) / f"{sid}.log"
        with open(errfile, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "cli.main", "sensor", "--pcap", str(path),
                 "--controller", f"127.0.0.1:{port}", "--sensor-id", sid,
                 "--log-level", "warning", "--log-format", "text", "--connect-timeout", "30",
                 # each run spools into its own temporary folder: a crashed
                 # earlier run must not resume into this one
                 "--spool-dir", str(Path(logdir.name) / "spool")],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        procs.append((sid, path, proc, errfile))

    bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                   TextColumn("{task.fields[pkts]} packets"), TimeElapsedColumn(),
                   console=output.err, disable=not show, transient=False)
    tasks = {sid: bar.add_task(path.name, total=path.stat().st_size, pkts=0)
             for sid, path, _, _ in procs}
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

    ok = True
    for sid, path, proc, errfile in procs:
        if proc.returncode != 0:
            ok = False
            lines = [ln for ln in errfile.read_text(errors="replace").splitlines() if ln.strip()]
            last = lines[-1] if lines else f"sensor exited with status {proc.returncode}"
            output.error(_naming(path, last.removeprefix("spanrec: error: ")))
    if not recorder.all_replays_done.is_set():
        ok = False  # a sensor died before it finished: record what arrived
    await asyncio.to_thread(recorder.shutdown)
    await server.stop(grace=1.0)
    logdir.cleanup()
    if recorder.writer.errors:
        ok = False
        output.error(f"{recorder.writer.errors} recording(s) could not be written")
    output.print_unsignalled(recorder.status())   # media seen without signalling, SIP over TLS
    _clock_warnings(recorder.status(), {sid: path for sid, path, _, _ in procs})
    output.print_calls(list(recorder.writer.recent), fmt,
                       title=f"{recorder.writer.written} call(s) recorded to {recorder.writer.store.url}")
    return ok

"""`spanrec controller --shards N` (issue #12): a supervisor of N real shard
processes.  Each shard serves; one killed with SIGKILL is back (same state
folder) within seconds; SIGTERM to the supervisor stops every shard (checked
by PID); a malformed shard list is one line and exit 2."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import REPO

SPANREC = [sys.executable, "-m", "cli.main"]


def _free_run(n: int) -> int:
    """A port P with P..P+n-1 all free on loopback now."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n > 65535:
            continue
        socks = []
        try:
            for p in range(base, base + n):
                t = socket.socket()
                socks.append(t)
                t.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for t in socks:
                t.close()
    raise RuntimeError("no run of free ports")


def _serving(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        try:
            reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""),
                                                         timeout=1)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def _wait(cond, timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return time.monotonic() - t0
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what}")


def _shards_of(pid: int) -> dict[str, tuple[int, list[str]]]:
    """shard id -> (PID, argv) of the running children of `pid`."""
    out: dict[str, tuple[int, list[str]]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = [a.decode() for a in (entry / "cmdline").read_bytes().split(b"\0") if a]
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if fields[0] == "Z" or int(fields[1]) != pid or "--shard-id" not in argv:
            continue
        # the last --shard-id / --state-dir of the command line is the one in force
        sid = argv[len(argv) - 1 - argv[::-1].index("--shard-id") + 1]
        out[sid] = (int(entry.name), argv)
    return out


def _flag(argv: list[str], name: str) -> str:
    return argv[len(argv) - 1 - argv[::-1].index(name) + 1]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


@pytest.fixture
def supervisor(tmp_path: Path):
    listen, health = _free_run(2), _free_run(2)
    err = open(tmp_path / "supervisor.log", "w+")
    proc = subprocess.Popen(
        [*SPANREC, "controller", "--shards", "2", "--insecure", "--listen", f"127.0.0.1:{listen}",
         "--health-listen", f"127.0.0.1:{health}", "--state-dir", str(tmp_path / "state"),
         "--storage", str(tmp_path / "rec"), "--log-format", "text"],
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, text=True)
    pids: set[int] = set()
    try:
        yield proc, listen, health, tmp_path, err, pids
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pid in pids:                       # nothing of this test may outlive it
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        err.close()


def test_supervisor_serves_restarts_and_stops(supervisor) -> None:
    proc, listen, health, tmp_path, err, pids = supervisor
    line = proc.stdout.readline()              # the member list sensors must be given
    assert line.strip() == (f"sensors: --controller shard-0=127.0.0.1:{listen},"
                            f"shard-1=127.0.0.1:{listen + 1}"), line
    _wait(lambda: _serving(health) and _serving(health + 1), 30, "both shards SERVING")
    shards = _shards_of(proc.pid)
    assert sorted(shards) == ["shard-0", "shard-1"]
    pids.update(pid for pid, _ in shards.values())
    for sid, (_, argv) in shards.items():
        i = int(sid.rpartition("-")[2])
        assert _flag(argv, "--listen") == f"127.0.0.1:{listen + i}"
        assert _flag(argv, "--state-dir") == str(tmp_path / "state" / sid)
        assert _flag(argv, "--health-listen") == f"127.0.0.1:{health + i}"

    # kill -9 one shard: the supervisor starts it again with the same arguments
    old_pid, old_argv = shards["shard-1"]
    os.kill(old_pid, signal.SIGKILL)
    _wait(lambda: not _alive(old_pid), 5, "the killed shard gone")

    def back() -> bool:
        now = _shards_of(proc.pid).get("shard-1")
        return now is not None and now[0] != old_pid and _serving(health + 1)
    took = _wait(back, 15, "shard-1 restarted and SERVING")
    new_pid, new_argv = _shards_of(proc.pid)["shard-1"]
    pids.add(new_pid)
    assert new_argv == old_argv                # same state folder, same everything
    assert took < 10, f"restart took {took:.1f} s"
    assert _shards_of(proc.pid)["shard-0"][0] == shards["shard-0"][0]   # the other untouched
    assert _serving(health)
    err.flush()
    log = Path(err.name).read_text()
    assert "shard shard-1" in log and "restarting it in" in log, log[-3000:]

    # SIGTERM to the supervisor: every shard stops, the supervisor exits 0
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, Path(err.name).read_text()[-3000:]
    left = [pid for pid in pids if _alive(pid)]
    assert not left, f"shard processes left: {left}"
    assert "sharded controller stopped" in Path(err.name).read_text()


@pytest.mark.parametrize("args,needle", [
    (["--shard-id", "a", "--shard-members", "a=127.0.0.1"], "expected HOST:PORT"),
    (["--shard-id", "a", "--shard-members", "a=127.0.0.1:7600,a=127.0.0.1:7601"], "given twice"),
    (["--shard-id", "c", "--shard-members", "a=127.0.0.1:7600,b=127.0.0.1:7601"], "not among"),
    (["--shard-id", "a", "--shard-members", "127.0.0.1:7600"], "expected ID=HOST:PORT"),
    (["--shard-members", "a=127.0.0.1:7600,b=127.0.0.1:7601"], "go together"),
    (["--shards", "2", "--listen", "127.0.0.1:0"], "fixed --listen port"),
    (["--shards", "2", "--shard-id", "a", "--shard-members", "a=h:1,b=h:2"], "--shards"),
])
def test_malformed_shard_flags_exit_2_with_one_line(args: list[str], needle: str,
                                                    tmp_path: Path) -> None:
    proc = subprocess.run([*SPANREC, "controller", "--insecure", "--state-dir", str(tmp_path / "s"),
                           "--storage", str(tmp_path / "r"), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("spanrec: error: "), proc.stderr
    assert needle in lines[0], lines[0]

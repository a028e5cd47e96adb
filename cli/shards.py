"""Shard processes (issue #12): one logical controller is N `spanrec controller`
processes, each one shard of a static ring (--shard-id, --shard-members);
sensors route each call to the shard that owns it (sensor/route.py).

`spanrec controller --shards N` runs `run_supervisor`: it starts the N shards
with the same flags (each on --listen PORT+i with --state-dir DIR/shard-<i>),
prints the member list sensors must be given, forwards SIGTERM/SIGINT and
waits, and restarts a shard that dies with the same arguments: the same state
folder, so it replays its write-ahead log and the sensors resend what it had
not acknowledged (docs/DECISIONS.md "Sharding: processes").  The supervisor
itself listens on nothing and imports no gRPC.

The helpers for child processes (free loopback ports, stop by PID, reap with
resource usage) are shared with `spanrec record --shards N` (cli/record.py).
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cli.settings import ConfigError, ControllerSettings, Failure

log = logging.getLogger("spanrec.shards")

#: a shard that exits with an error status this soon after the supervisor
#: started it the first time has a configuration or start-up error (port in
#: use, bad state folder): no restart.  Killed by a signal, it is restarted.
STARTUP_GRACE_S = 5.0
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
#: a shard that ran this long before it died restarts after the first delay again
BACKOFF_RESET_S = 60.0

_PR_SET_PDEATHSIG = 1
_PARENT_ENV = "SPANREC_PARENT_PID"


def die_with_parent() -> None:
    """Called first thing in a child `spawn` started (SPANREC_PARENT_PID set):
    SIGTERM to this process when its parent dies, even by kill -9, so no shard
    or sensor outlives a supervisor or `spanrec record`.  Done in the child
    itself, not in a preexec_fn: forking a process with gRPC threads (record's
    in-process controller, its Admin polling) and running Python before exec
    breaks gRPC's fork handlers."""
    parent = os.environ.pop(_PARENT_ENV, "")
    if not parent.isdigit():
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):      # the parent died before prctl
        sys.exit(1)


def spawn(argv: list[str], env: dict[str, str] | None = None, **kwargs: Any) -> subprocess.Popen:
    """A child process that is sent SIGTERM when this process dies."""
    env = dict(os.environ if env is None else env)
    env[_PARENT_ENV] = str(os.getpid())
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, env=env, **kwargs)


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """`n` distinct ports free on `host` now (another process may still take
    one before the shard binds it: the shard then fails with one line)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def reap(proc: subprocess.Popen, block: bool = False) -> Any:
    """Collects an exited child with its resource usage (os.wait4); sets
    `proc.returncode`.  None while it runs (or when already collected)."""
    if proc.returncode is not None:
        return None
    try:
        pid, status, usage = os.wait4(proc.pid, 0 if block else os.WNOHANG)
    except ChildProcessError:
        proc.returncode = proc.returncode if proc.returncode is not None else -1
        return None
    if pid == 0:
        return None
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage


def stop_all(procs: list[subprocess.Popen], timeout_s: float = 30.0,
             usage: dict[int, Any] | None = None) -> list[subprocess.Popen]:
    """SIGTERM to every running child by PID, SIGKILL to those still running
    after `timeout_s`; every child is collected.  Returns the ones killed."""
    for p in procs:
        if p.returncode is None:
            try:
                os.kill(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    killed = []
    deadline = time.monotonic() + timeout_s
    for p in procs:
        while p.returncode is None:
            u = reap(p)
            if u is not None and usage is not None:
                usage[p.pid] = u
            if p.returncode is not None:
                break
            if time.monotonic() >= deadline:
                try:
                    os.kill(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                killed.append(p)
                u = reap(p, block=True)
                if u is not None and usage is not None:
                    usage[p.pid] = u
                break
            time.sleep(0.05)
    return killed


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


# -- `spanrec controller --shards N` -----------------------------------------
def _with_port(hostport: str, offset: int) -> str:
    host, _, port = hostport.rpartition(":")
    return f"{host}:{int(port) + offset}"


def _member_host(settings: ControllerSettings) -> str:
    """The host sensors reach the shards on: --advertise's, or --listen's
    (this host's name for a wildcard address)."""
    if settings.advertise:
        return settings.advertise.rpartition(":")[0]
    host = settings.listen.rpartition(":")[0]
    if host.strip("[]") in ("0.0.0.0", "::", ""):
        return socket.getfqdn()
    return host


@dataclass
class ShardProcess:
    shard_id: str
    argv: list[str]
    proc: subprocess.Popen | None = None
    started: float = 0.0
    ever_up: bool = False            # lived past STARTUP_GRACE_S once
    restarts: int = 0
    quick_deaths: int = 0            # consecutive deaths before BACKOFF_RESET_S
    restart_at: float | None = None  # monotonic time of the pending restart
    log_extra: dict = field(default_factory=dict)

    def start(self) -> None:
        self.proc = spawn(self.argv)
        self.started = time.monotonic()
        self.restart_at = None
        log.info("shard started", extra={"shard_id": self.shard_id, "pid": self.proc.pid,
                                         "restarts": self.restarts, **self.log_extra})


def shard_plan(settings: ControllerSettings, n: int, args: list[str]) -> tuple[str, list[ShardProcess]]:
    """The member list and each shard's command line: the supervisor's own
    arguments with the per-shard ones after them (the last of a flag wins)."""
    if settings.shard_id or settings.shard_members:
        raise ConfigError("--shards starts its own shards: give it without --shard-id/--shard-members")
    host, _, port = settings.listen.rpartition(":")
    port_i = int(port)
    if port_i == 0:
        raise ConfigError("--shards needs a fixed --listen port (shard i listens on PORT+i)")
    listens = {"listen": settings.listen, "health_listen": settings.health_listen,
               "metrics_listen": settings.metrics_listen, "advertise": settings.advertise}
    for name, value in listens.items():
        if value and int(value.rpartition(":")[2]) + n - 1 > 65535:
            raise ConfigError(f"--{name.replace('_', '-')} {value}: no room for {n} ports after it")
    member_host = _member_host(settings)
    etcd = bool(settings.etcd)
    # with etcd, shard ids are unique across machines (two controllers A and B, N shards
    # each: A-0.., B-0..) and each shard registers itself; else a static member list
    ids = [f"{settings.controller_id}-{i}" if etcd else f"shard-{i}" for i in range(n)]
    adv_port = int(settings.advertise.rpartition(":")[2]) if settings.advertise else port_i
    members = ",".join(f"{sid}={member_host}:{adv_port + i}" for i, sid in enumerate(ids))
    state = Path(settings.state_dir).expanduser().absolute()
    plan = []
    for i, sid in enumerate(ids):
        argv = [sys.executable, "-m", "cli.main", "controller", *args, "--shards", "1", "--shard-id", sid]
        if etcd:
            argv += ["--listen", _with_port(settings.listen, i), "--state-dir", str(state / f"shard-{i}"),
                     "--controller-id", sid, "--advertise", f"{member_host}:{adv_port + i}"]
        else:
            argv += ["--shard-members", members,
                     "--listen", _with_port(settings.listen, i), "--state-dir", str(state / sid),
                     "--controller-id", f"{settings.controller_id}-{sid}"]
        for flag, value in (("--health-listen", settings.health_listen),
                            ("--metrics-listen", settings.metrics_listen),
                            ("--advertise", None if etcd else settings.advertise)):
            if value:
                argv += [flag, _with_port(value, i)]
        plan.append(ShardProcess(sid, argv, log_extra={
            "listen": _with_port(settings.listen, i),
            "state_dir": str(state / (f"shard-{i}" if etcd else sid))}))
    return members, plan


def run_supervisor(settings: ControllerSettings, members: str, shards: list[ShardProcess]) -> None:
    """`spanrec controller --shards N` (N > 1, `shard_plan`): start, watch,
    restart, stop."""
    n = len(shards)
    from storage import files as filemodes
    try:        # the shards' parent folder, as private as one controller's state folder
        filemodes.private_dir(Path(settings.state_dir).expanduser().absolute())
    except OSError as exc:
        raise Failure(f"state folder {settings.state_dir}: {exc.strerror or exc}") from None
    stop_signal: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        stop_signal.append(signum)
        for s in shards:                     # forwarded by PID, every time it comes
            if s.proc is not None and s.proc.returncode is None:
                try:
                    os.kill(s.proc.pid, signum)
                except ProcessLookupError:
                    pass

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    if settings.etcd:
        log.info("sharded controller: shards register in etcd; give sensors --etcd",
                 extra={"shards": n, "members": members})
        print(f"sensors: --etcd {settings.etcd}" + (f" --etcd-prefix {settings.etcd_prefix}"
                                                     if settings.etcd_prefix != "/spanrec/" else ""),
              flush=True)
    else:
        log.info("sharded controller: give sensors --controller " + members,
                 extra={"shards": n, "members": members})
        print(f"sensors: --controller {members}", flush=True)
    try:
        for s in shards:
            s.start()
        # with etcd a shard that exits 0 by itself drained after its own SIGTERM (scale
        # down): it is not restarted
        _supervise(shards, stop_signal, restart_clean=not settings.etcd)
    except BaseException:
        stop_all([s.proc for s in shards if s.proc is not None])
        raise
    failed = [s for s in shards if s.proc is not None and s.proc.returncode not in (0, None)]
    log.info("sharded controller stopped", extra={"shards": n,
                                                  "failed": [s.shard_id for s in failed]})
    if failed:
        raise Failure("shard(s) " + ", ".join(f"{s.shard_id} {describe_exit(s.proc.returncode)}"
                                              for s in failed if s.proc is not None))


def _supervise(shards: list[ShardProcess], stop_signal: list[int], restart_clean: bool = True) -> None:
    while True:
        if not restart_clean and all(s.proc is not None and s.proc.returncode == 0 and
                                     s.restart_at is None for s in shards):
            log.info("every shard drained and left: the supervisor ends")
            return
        now = time.monotonic()
        if stop_signal:
            # forwarded already; wait for every shard (no restart while stopping)
            for s in shards:
                if s.proc is not None:
                    while s.proc.returncode is None:
                        reap(s.proc, block=True)
            return
        for s in shards:
            p = s.proc
            if p is None:
                continue
            if p.returncode is None:
                reap(p)
                if p.returncode is None:
                    if not s.ever_up and now - s.started >= STARTUP_GRACE_S:
                        s.ever_up = True
                    continue
                if stop_signal:
                    continue
                if not restart_clean and p.returncode == 0:
                    log.info(f"shard {s.shard_id} (pid {p.pid}) drained and left; not restarted",
                             extra={"shard_id": s.shard_id, "pid": p.pid, **s.log_extra})
                    continue
                if not s.ever_up and s.restarts == 0 and p.returncode > 0:
                    # its own error exit right after the first start (a port in
                    # use, a bad state folder): restarting would only repeat it
                    others = [o.proc for o in shards if o is not s and o.proc is not None]
                    stop_all(others)
                    raise Failure(f"shard {s.shard_id} {describe_exit(p.returncode)} while "
                                  "starting (its error is above); stopped the other shards")
                lived = now - s.started
                s.quick_deaths = 0 if lived >= BACKOFF_RESET_S else s.quick_deaths + 1
                delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * (2 ** max(0, s.quick_deaths - 1)))
                s.restart_at = now + delay
                log.warning(f"shard {s.shard_id} (pid {p.pid}) {describe_exit(p.returncode)}; "
                            f"restarting it in {delay:g} s with the same state folder",
                            extra={"shard_id": s.shard_id, "pid": p.pid, "status": p.returncode,
                                   "lived_s": round(lived, 1), "delay_s": delay,
                                   **s.log_extra})
            elif s.restart_at is not None and now >= s.restart_at:
                s.restarts += 1
                s.start()
        time.sleep(0.1)

"""A real PostgreSQL server for tests (apt ``postgresql``): a throw-away
cluster in a temporary folder on a free loopback port.

PostgreSQL refuses to run as root, so as root the cluster belongs to the
``postgres`` user (made by the apt package) and its commands run through
``runuser``. ``initdb -A trust``: only loopback, only for the test. ``stop()``
is ``pg_ctl stop`` (fast), then the postmaster's PID from ``postmaster.pid``
is killed if it is still there; ``start()`` again reuses the data, which is how
tests take the database away and bring it back.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.s3server import free_ports


def find_pg_bin() -> Path | None:
    env = os.environ.get("SPANREC_PG_BIN")
    if env and (Path(env) / "pg_ctl").exists():
        return Path(env)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


class PgServer:
    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.tmp = Path(tempfile.mkdtemp(prefix="spanrec-pg-"))
        self.data = self.tmp / "data"
        self.port = free_ports(1)[0]
        self.user = "spanrec"
        self.db = "spanrec"
        self._as: list[str] = []
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root needs the postgres user (apt postgresql)") from None
            os.chown(self.tmp, pw.pw_uid, pw.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.db}"

    def _run(self, *argv: str) -> None:
        done = subprocess.run([*self._as, *argv], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {done.stderr.strip()[-500:]}")

    def init(self) -> "PgServer":
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", self.user,
                  "--no-sync", "-E", "UTF8")
        self.start()
        self._run(str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U",
                  self.user, self.db)
        return self

    def start(self) -> "PgServer":
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60", "-l",
                  str(self.tmp / "log"), "-o",
                  f"-p {self.port} -k {self.tmp} -c listen_addresses=127.0.0.1 -c fsync=off",
                  "start")
        return self

    def pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        pid = self.pid()
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-w", "-t", "30", "-m", "fast", "stop")
        except (RuntimeError, subprocess.TimeoutExpired):
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                time.sleep(0.5)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

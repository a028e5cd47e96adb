"""Storage outbox: a finished recording is durable locally before it is uploaded.

`OutboxStore` wraps the real store (S3). `put` writes the recording's files to
``<dir>/<prefix>/`` (each file fsynced, the folder renamed into place, so an
entry is either whole or absent) and returns at once; uploader threads send
entries to the real store, retrying without a time limit (exponential back-off
capped at ``max_wait`` s), and remove an entry once the store has it. Entries
left by an earlier run are uploaded at start. So the controller keeps recording
while the store is down, and a crash between upload and removal only uploads
the same recording again: the layout's prefix is stable and a put overwrites,
so nothing is duplicated.

Counters: ``pending`` (entries waiting), ``uploaded``, ``retries`` (failed
attempts that will be retried) and ``errors`` (entries that could not even be
written locally or read back).
"""
from __future__ import annotations

import logging
import os
import queue
import secrets
import shutil
import threading
from pathlib import Path

from tenacity import Retrying, retry_if_exception_type, stop_when_event_set, wait_exponential

from storage import files as filemodes
from storage.base import FileData, RecordingStore, StorageError, check_range, write_data
from storage.layout import valid_name, valid_prefix
from storage.local import read_range

log = logging.getLogger("spanrec.storage.outbox")

_TOKEN = ".entry"          # random token of one version of an entry
_ADD = ".add"              # the entry adds files to a stored recording (late packets)
_TMP = ".tmp-"
_TRASH = ".trash-"


_READ_LIMIT = 8 << 20   # larger outbox files go to the store as files, not bytes

class OutboxStore:
    """A `RecordingStore` that writes to a local outbox and uploads in the background."""

    def __init__(self, target: RecordingStore, directory: Path | str, *, threads: int = 2,
                 initial_wait: float = 0.5, max_wait: float = 30.0) -> None:
        self.target = target
        self.url = target.url
        self.dir = Path(directory).expanduser().absolute()
        self.initial_wait = initial_wait
        self.max_wait = max_wait
        self.uploaded = 0
        self.retries = 0
        self.errors = 0
        self._queue: queue.Queue[str] = queue.Queue()
        self._queued: set[str] = set()
        self._add_lock = threading.Lock()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._busy = 0
        self._uploading: set[str] = set()   # prefixes an uploader thread has in hand
        self._again: set[str] = set()       # ... and that were queued again meanwhile
        self._stop = threading.Event()
        try:
            filemodes.private_dir(self.dir)
        except OSError as exc:
            raise StorageError(f"outbox {self.dir}: {exc.strerror or exc}") from None
        self._threads = [threading.Thread(target=self._run, name=f"spanrec-upload-{i}", daemon=True)
                         for i in range(threads)]

    def __repr__(self) -> str:
        return f"OutboxStore({self.dir} -> {self.url})"

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> int:
        """Queue every entry an earlier run left and start the uploaders;
        returns how many entries were found."""
        found = self._scan()
        for prefix in found:
            self._enqueue(prefix)
        if found:
            log.info("outbox: uploading recordings left by an earlier run",
                     extra={"pending": len(found), "storage": self.url})
        for t in self._threads:
            t.start()
        return len(found)

    def _scan(self) -> list[str]:
        out: list[str] = []
        for dirpath, dirnames, filenames in os.walk(self.dir):
            for d in [d for d in dirnames if d.startswith((_TMP, _TRASH))]:
                shutil.rmtree(Path(dirpath) / d, ignore_errors=True)   # interrupted put/removal
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            if _TOKEN in filenames:
                out.append(Path(dirpath).relative_to(self.dir).as_posix())
        for dirpath, _dirs, _files in sorted(os.walk(self.dir), reverse=True):
            if Path(dirpath) != self.dir:
                _prune_empty(Path(dirpath), self.dir)
        return out

    def drain(self, timeout: float) -> bool:
        """Wait up to `timeout` s for the outbox to empty; True when it did."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._queued and not self._busy, timeout)

    def stop(self) -> None:
        """Stop uploading (entries not uploaded stay for the next start)."""
        self._stop.set()

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._queued) + self._busy

    def counters(self) -> dict[str, int]:
        return {"pending": self.pending, "uploaded": self.uploaded, "retries": self.retries,
                "errors": self.errors}

    # -- RecordingStore ----------------------------------------------------
    def put(self, prefix: str, files: dict[str, FileData], _add: bool = False) -> str:
        try:
            prefix = valid_prefix(prefix)
            for name in files:
                valid_name(name)
        except ValueError as exc:
            raise StorageError(f"outbox {self.dir}: {exc}") from None
        entry = self.dir.joinpath(*prefix.split("/"))
        try:
            filemodes.make_dirs(entry.parent)
            tmp = entry.parent / f"{_TMP}{entry.name}.{secrets.token_hex(4)}"
            tmp.mkdir(mode=filemodes.DIR_MODE)
            os.chmod(tmp, filemodes.DIR_MODE)
            for name, data in files.items():
                _write_synced(tmp / name, data)
            if _add:
                _write_synced(tmp / _ADD, b"")
            _write_synced(tmp / _TOKEN, secrets.token_hex(8).encode())
            _fsync(tmp)
            if entry.exists():       # a newer version of a recording still waiting
                trash = entry.parent / f"{_TRASH}{entry.name}.{secrets.token_hex(4)}"
                os.rename(entry, trash)
                os.rename(tmp, entry)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.rename(tmp, entry)
            _fsync(entry.parent)
        except OSError as exc:
            with self._lock:
                self.errors += 1
            raise StorageError(f"outbox {self.dir}: cannot write recording {prefix}: "
                               f"{exc.strerror or exc}") from exc
        self._enqueue(prefix)
        return self.location(prefix)

    def add(self, prefix: str, files: dict[str, FileData]) -> str:
        """Files added to a recording: merged into its version still waiting here
        (a whole recording, or earlier additions), else an entry of additions."""
        try:
            entry = self.dir.joinpath(*valid_prefix(prefix).split("/"))
        except ValueError as exc:
            raise StorageError(f"outbox {self.dir}: {exc}") from None
        with self._add_lock:
            token, existing = self._read(entry)
            if token is None:
                return self.put(prefix, files, _add=True)
            return self.put(prefix, {**existing, **files}, _add=(entry / _ADD).exists())

    def location(self, prefix: str) -> str:
        return f"{self.url.rstrip('/')}/{prefix}"

    def get(self, prefix: str, name: str) -> bytes:
        """A file of a recording still waiting in the outbox is read from there (the
        newest version: what size/get_range serve too), else from the store."""
        path = self._pending_file(prefix, name)
        if path is not None:
            try:
                return path.read_bytes()
            except FileNotFoundError:
                pass             # uploaded and removed meanwhile: the store has it now
            except OSError as exc:
                raise StorageError(f"outbox {path}: {exc.strerror or exc}") from exc
        return self.target.get(prefix, name)

    def _pending_file(self, prefix: str, name: str) -> Path | None:
        """The file `name` of the version of a recording still waiting in the
        outbox (the newest one), or None: not pending, or not in the entry (an
        entry of late additions holds only those) - then the store has it."""
        try:
            entry = self.dir.joinpath(*valid_prefix(prefix).split("/"))
            path = entry / valid_name(name)
        except ValueError as exc:
            raise StorageError(f"outbox {self.dir}: {exc}") from None
        if self._token(entry) is None or not path.is_file():
            return None
        return path

    def size(self, prefix: str, name: str) -> int:
        path = self._pending_file(prefix, name)
        if path is not None:
            try:
                return path.stat().st_size
            except FileNotFoundError:
                pass             # uploaded and removed meanwhile: the store has it now
            except OSError as exc:
                raise StorageError(f"outbox {path}: {exc.strerror or exc}") from exc
        return self.target.size(prefix, name)

    def get_range(self, prefix: str, name: str, start: int, length: int) -> bytes:
        start, length = check_range(start, length)
        path = self._pending_file(prefix, name)
        if path is not None:
            try:
                # once open, the file stays readable even if the entry is
                # uploaded and removed (or replaced) meanwhile
                return read_range(path, start, length)
            except FileNotFoundError:
                pass             # uploaded and removed meanwhile: the store has it now
            except OSError as exc:
                raise StorageError(f"outbox {path}: {exc.strerror or exc}") from exc
        return self.target.get_range(prefix, name, start, length)

    def list_recordings(self) -> list[str]:
        return self.target.list_recordings()

    def delete(self, prefix: str) -> bool:
        """Drops a recording still waiting here (never uploaded) and deletes it from the store."""
        try:
            entry = self.dir.joinpath(*valid_prefix(prefix).split("/"))
        except ValueError as exc:
            raise StorageError(f"outbox {self.dir}: {exc}") from None
        with self._lock:
            while prefix in self._uploading:     # an upload in hand finishes first, then goes
                self._idle.wait(0.1)
            had = entry.is_dir()
            if had:
                shutil.rmtree(entry, ignore_errors=True)
        return self.target.delete(prefix) or had

    def list_files(self, prefix: str) -> list[str]:
        """The files of a recording as get/size serve them: a whole version still
        waiting here is the recording; an entry of additions adds its files to
        the store's; else the store's."""
        try:
            entry = self.dir.joinpath(*valid_prefix(prefix).split("/"))
        except ValueError as exc:
            raise StorageError(f"outbox {self.dir}: {exc}") from None
        try:
            if self._token(entry) is None:
                raise FileNotFoundError
            adds = (entry / _ADD).exists()
            names = {p.name for p in entry.iterdir() if p.is_file() and not p.name.startswith(".")}
        except FileNotFoundError:    # not pending, or uploaded and removed meanwhile
            return self.target.list_files(prefix)
        except OSError as exc:
            raise StorageError(f"outbox {entry}: {exc.strerror or exc}") from exc
        return sorted(names | set(self.target.list_files(prefix)) if adds else names)

    def check(self) -> None:
        self.target.check()

    # -- uploading -----------------------------------------------------------
    def _enqueue(self, prefix: str) -> None:
        with self._lock:
            if prefix in self._queued:
                return
            self._queued.add(prefix)
        self._queue.put(prefix)

    def _run(self) -> None:
        while not self._stop.is_set():
            prefix = self._queue.get()
            if self._stop.is_set():
                return
            with self._lock:
                self._queued.discard(prefix)
                if prefix in self._uploading:
                    # One recording is uploaded by one thread at a time: two puts
                    # of it in flight could land in either order, the older last.
                    self._again.add(prefix)
                    continue
                self._uploading.add(prefix)
                self._busy += 1
            try:
                self._upload(prefix)
            except Exception as exc:  # noqa: BLE001 - one bad entry must not stop the uploader
                if not (isinstance(exc, StorageError) and self._stop.is_set()):
                    with self._lock:
                        self.errors += 1
                    log.exception("outbox: upload failed", extra={"prefix": prefix})
            finally:
                with self._idle:
                    self._uploading.discard(prefix)
                    if prefix in self._again:
                        self._again.discard(prefix)
                        self._queued.add(prefix)
                        self._queue.put(prefix)
                    self._busy -= 1
                    self._idle.notify_all()

    def _upload(self, prefix: str) -> None:
        entry = self.dir.joinpath(*prefix.split("/"))

        def attempt() -> str:
            if self._stop.is_set():
                raise StorageError("outbox stopped")
            token, files = self._read(entry)
            if token is None:
                return ""            # removed meanwhile (uploaded by another thread)
            if (entry / _ADD).exists():
                self.target.add(prefix, files)
            else:
                self.target.put(prefix, files)
            return token

        def before_sleep(state) -> None:  # tenacity RetryCallState
            with self._lock:
                self.retries += 1
            exc = state.outcome.exception() if state.outcome else None
            log.warning("outbox: upload failed, retrying", extra={
                "prefix": prefix, "storage": self.url, "attempt": state.attempt_number,
                "error": str(exc)})

        # no time limit: only stop() ends the retries (the entry stays for the next start)
        retrying = Retrying(stop=stop_when_event_set(self._stop), sleep=self._stop.wait, reraise=True,
                            wait=wait_exponential(multiplier=self.initial_wait, max=self.max_wait),
                            retry=retry_if_exception_type(StorageError), before_sleep=before_sleep)
        token = retrying(attempt)
        if not token:
            return
        # remove the entry only if it is still the version just uploaded; under the
        # lock `add` holds while it replaces an entry, or a newer version (late
        # packets) written between the check and the rename would be removed
        with self._add_lock:
            if self._token(entry) == token:
                trash = entry.parent / f"{_TRASH}{entry.name}.{secrets.token_hex(4)}"
                try:
                    os.rename(entry, trash)
                    shutil.rmtree(trash, ignore_errors=True)
                    _fsync(entry.parent)   # empty YYYY/MM/DD folders go at the next start
                except OSError as exc:
                    log.warning("outbox: cannot remove uploaded entry", extra={
                        "prefix": prefix, "error": str(exc)})
        with self._lock:
            self.uploaded += 1
        log.info("outbox: recording uploaded", extra={"prefix": prefix, "storage": self.url})

    def _read(self, entry: Path) -> tuple[str | None, dict[str, FileData]]:
        token = self._token(entry)
        if token is None:
            return None, {}
        try:
            files: dict[str, FileData] = {
                p.name: p if p.stat().st_size > _READ_LIMIT else p.read_bytes()
                for p in sorted(entry.iterdir()) if p.is_file() and not p.name.startswith(".")}
        except FileNotFoundError:
            return None, {}
        except OSError as exc:
            raise StorageError(f"outbox {entry}: {exc.strerror or exc}") from exc
        return token, files

    @staticmethod
    def _token(entry: Path) -> str | None:
        try:
            return (entry / _TOKEN).read_text()
        except OSError:
            return None


def _write_synced(path: Path, data: FileData) -> None:
    with filemodes.open_file(path, "wb") as fh:
        write_data(fh, data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _prune_empty(folder: Path, root: Path) -> None:
    """Remove empty YYYY/MM/DD folders up to (not including) the root."""
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent

"""The controller's side of the index: each recording is indexed as it is
written, and nothing is lost while the database is away.

`IndexingStore` wraps the recording store the writer threads use: after a
recording (or its late packets) is stored, its call.json goes to the
`Indexer`. The indexer adds it to the index at once; when the database cannot
take it (down, unreachable, failing) the call.json is written to a pending
folder (one file per recording, the newest call.json replacing an older one,
fsynced) and a background thread retries with back-off until the database is
back, oldest first. A recording whose call.json is pending is never indexed
directly, so an older version cannot overwrite a newer one. Counters:
``indexed``, ``pending``, ``retries``, ``index_errors`` (a call.json that is
not one: logged, kept in ``bad/``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

from callindex.entry import EntryError
from storage import files as filemodes
from storage.base import FileData, RecordingStore, StoreWrapper
from storage.layout import CALL_JSON

log = logging.getLogger("spanrec.index")

__all__ = ["Indexer", "IndexingStore"]


class Indexer:
    def __init__(self, connect: Callable[[], Any], pending_dir: Path | str, *,
                 retry_s: float = 2.0, max_retry_s: float = 60.0) -> None:
        """`connect()` returns a CallIndex or raises IndexUnavailable; it is
        called again after a failure, so the database may be down at start."""
        self._connect = connect
        self.dir = Path(pending_dir).expanduser().absolute()    # made when first needed
        self.retry_s = retry_s
        self.max_retry_s = max_retry_s
        self.index = None
        self.url = ""
        self.indexed = 0
        self.retries = 0
        self.index_errors = 0
        self._lock = threading.Lock()       # the pending folder and the connection
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._down_since: float | None = None
        self._thread = threading.Thread(target=self._run, name="spanrec-indexer", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        try:
            return sum(1 for e in os.scandir(self.dir) if e.name.endswith(".json"))
        except OSError:
            return 0

    def counters(self) -> dict[str, int]:
        return {"indexed": self.indexed, "index_pending": self.pending,
                "index_retries": self.retries, "index_errors": self.index_errors}

    def _file(self, prefix: str) -> Path:
        return self.dir / (hashlib.sha256(prefix.encode()).hexdigest()[:32] + ".json")

    def add(self, prefix: str, call_json: bytes, location: str | None) -> None:
        """Index one recording's call.json, or keep it pending. Never raises."""
        from callindex.db import IndexUnavailable
        with self._lock:
            path = self._file(prefix)
            if self._down_since is None and not path.exists():
                try:
                    if self.index is None:
                        self.index = self._connect()
                        self.url = self.index.url
                    self.index.add(prefix, call_json, location)
                    self.indexed += 1
                    return
                except EntryError as exc:
                    self._bad(prefix, call_json, exc)
                    return
                except IndexUnavailable as exc:
                    self._went_down(exc)
                except Exception as exc:  # noqa: BLE001 - the index never loses a recording
                    self._went_down(exc)
            self._keep(path, prefix, call_json, location)
        self._wake.set()

    def _went_down(self, exc: BaseException) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("call index unavailable: recordings are indexed when it is back",
                        extra={"error": str(exc), "pending_dir": str(self.dir)})

    def _keep(self, path: Path, prefix: str, call_json: bytes, location: str | None) -> None:
        entry = json.dumps({"prefix": prefix, "location": location,
                            "call_json": call_json.decode("utf-8", "replace")}).encode()
        tmp = path.with_name(".tmp-" + path.name)
        try:
            filemodes.private_dir(self.dir)
            fd = filemodes.open_fd(tmp, os.O_WRONLY | os.O_TRUNC)
            try:
                os.write(fd, entry)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as exc:
            self.index_errors += 1
            log.error("recording not indexed and not kept for later: rebuild the index "
                      "(spanrec index rebuild)", extra={"prefix": prefix, "error": str(exc)})

    def _bad(self, prefix: str, call_json: bytes, exc: BaseException) -> None:
        self.index_errors += 1
        log.error("recording not indexed: its call.json is not valid", extra={
            "prefix": prefix, "error": str(exc)})

    def drain(self) -> bool:
        """Index what is pending, oldest first; True when nothing is left."""
        from callindex.db import IndexUnavailable
        if not self.dir.is_dir() or not any(self.dir.glob("*.json")):
            self._down_since = None
            return True
        if self.index is None:       # connecting may take its timeout: writers go on meanwhile
            try:
                index = self._connect()
            except Exception as exc:  # noqa: BLE001
                self.retries += 1
                self._went_down(exc)
                return False
            with self._lock:
                if self.index is None:
                    self.index, self.url = index, index.url
                else:
                    index.close()
        with self._lock:
            try:
                entries = sorted(self.dir.glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
            except OSError:
                entries = []
            done = 0
            for path in entries:
                try:
                    entry = json.loads(path.read_bytes())
                    self.index.add(entry["prefix"], entry["call_json"].encode("utf-8"), entry.get("location"))
                    self.indexed += 1
                except (EntryError, ValueError, KeyError, TypeError) as exc:
                    self._bad(str(path.name), b"", exc)
                    bad = self.dir / "bad"
                    filemodes.private_dir(bad)
                    os.replace(path, bad / path.name)
                    continue
                except FileNotFoundError:
                    continue
                except (IndexUnavailable, Exception) as exc:  # noqa: BLE001
                    self.retries += 1
                    self._went_down(exc)
                    return False
                path.unlink(missing_ok=True)
                done += 1
            if self._down_since is not None:
                log.warning("call index back: pending recordings indexed", extra={
                    "indexed": done, "down_s": round(time.monotonic() - self._down_since, 1)})
            self._down_since = None
            return True

    def has_pending(self, prefix: str) -> bool:
        """Whether a call.json of this recording waits here for the database."""
        return self._file(prefix).exists()

    def forget(self, prefix: str) -> bool:
        """Drop what waits here of a recording (erased meanwhile: its call.json
        must not reach the index later); True when something was dropped."""
        path = self._file(prefix)
        with self._lock:
            dropped = False
            for p in (path, self.dir / "bad" / path.name):
                try:
                    p.unlink()
                    dropped = True
                except FileNotFoundError:
                    pass
            return dropped

    def wake(self) -> None:
        """Try the pending ones now (at start: what an earlier run left)."""
        self._wake.set()

    def _run(self) -> None:
        wait = self.retry_s
        while not self._stop.is_set():
            self._wake.wait(wait)
            self._wake.clear()
            if self._stop.is_set():
                return
            if self.drain():
                wait = self.retry_s
            else:
                wait = min(wait * 2, self.max_retry_s)

    def close(self, drain: bool = True) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5.0)
        if drain:
            self.drain()
        if self.index is not None:
            self.index.close()


class IndexingStore(StoreWrapper):
    """A RecordingStore that indexes each call.json it stores (see module doc)."""

    def __init__(self, target: RecordingStore, indexer: Indexer) -> None:
        super().__init__(target)
        self.indexer = indexer

    def __repr__(self) -> str:
        return f"IndexingStore({self.target!r})"

    def _index(self, prefix: str, files: dict[str, FileData], location: str) -> None:
        data = files.get(CALL_JSON)
        if data is None:
            return
        if not isinstance(data, (bytes, bytearray, memoryview)):
            try:
                data = Path(data).read_bytes()
            except OSError as exc:
                log.error("recording not indexed: call.json unreadable", extra={
                    "prefix": prefix, "error": str(exc)})
                return
        self.indexer.add(prefix, bytes(data), location)

    def put(self, prefix: str, files: dict[str, FileData]) -> str:
        location = self.target.put(prefix, files)
        self._index(prefix, files, location)
        return location

    def add(self, prefix: str, files: dict[str, FileData]) -> str:
        location = self.target.add(prefix, files)
        self._index(prefix, files, location)
        return location

    def delete(self, prefix: str) -> bool:
        """The recording goes from storage and from what waits to be indexed
        (an erasure while the database was away must not come back with it)."""
        dropped = self.indexer.forget(prefix)
        return self.target.delete(prefix) or dropped


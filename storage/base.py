"""The interface every recording store offers, and its one error type.

The controller talks to storage only through :class:`RecordingStore`, so a local
folder and an S3 bucket are interchangeable and tests can assert that both give
identical results.
"""
from __future__ import annotations

import operator
import shutil
import threading
from pathlib import Path
from typing import BinaryIO, Protocol, Union, runtime_checkable

#: The content of one file of a recording: its bytes, or a (large) file to copy
#: from (a long call's call.pcap or audio, never read into memory at once).
FileData = Union[bytes, Path]


def data_size(data: FileData) -> int:
    return len(data) if isinstance(data, (bytes, bytearray, memoryview)) else Path(data).stat().st_size


def write_data(fh: BinaryIO, data: FileData) -> None:
    """Write bytes, or copy a file in chunks."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        fh.write(data)
        return
    with open(data, "rb") as src:
        shutil.copyfileobj(src, fh, 1 << 20)


def check_range(start: int, length: int) -> tuple[int, int]:
    """Validate a byte range of ``get_range``: integers, neither negative
    (``ValueError``; ``TypeError`` for a non-integer)."""
    start, length = operator.index(start), operator.index(length)
    if start < 0 or length < 0:
        raise ValueError(f"invalid byte range: start {start}, length {length} (both must be >= 0)")
    return start, length


class StorageError(Exception):
    """A store could not be used or an operation on it failed.

    The message names the store and what failed in one sentence; it never
    contains credentials (stores build it from their public URL only).
    """


@runtime_checkable
class RecordingStore(Protocol):
    """A place recordings are written to, one folder (prefix) per recording."""

    #: Public location of the store (``file:///...`` or ``s3://bucket/prefix``), no secrets.
    url: str

    def put(self, prefix: str, files: dict[str, FileData]) -> str:
        """Write the recording at ``prefix`` so that it holds exactly ``files``.

        Files of the same name are overwritten and files under the prefix that
        are not in ``files`` are removed, so writing the same input twice never
        duplicates anything.  Returns the location URL of the recording folder.
        """
        ...

    def add(self, prefix: str, files: dict[str, FileData]) -> str:
        """Write (or replace) these files of a recording, keeping its others
        (late packets appended to a stored recording)."""
        ...

    def get(self, prefix: str, name: str) -> bytes:
        """Bytes of one file of a recording; :class:`StorageError` if absent."""
        ...

    def size(self, prefix: str, name: str) -> int:
        """Size in bytes of one file of a recording, without reading it.

        :class:`StorageError` if the file is absent (or the prefix or name is
        invalid, as for :meth:`get`).
        """
        ...

    def get_range(self, prefix: str, name: str, start: int, length: int) -> bytes:
        """At most ``length`` bytes of one file of a recording from offset ``start``
        (an HTTP Range request), without reading the rest of the file.

        Fewer bytes when the range reaches the end of the file, ``b""`` when
        ``start`` is at or after the end or ``length`` is 0.  Prefix and name are
        checked as for :meth:`get` and an absent file is a :class:`StorageError`
        (also for a 0-length range); a negative ``start`` or ``length`` is a
        ``ValueError``.
        """
        ...

    def list_recordings(self) -> list[str]:
        """Sorted prefixes (``YYYY/MM/DD/<id>``) of every stored recording."""
        ...

    def delete(self, prefix: str) -> bool:
        """Remove a recording's folder and every file (every object version on a
        versioned bucket); False if there was none. StorageError when the store
        refuses (an S3 Object Lock retention not yet over)."""
        ...

    def list_files(self, prefix: str) -> list[str]:
        """Sorted names of the files of one recording (``[]`` for a recording
        that does not exist); hidden/temporary files (``.name``) are left out.
        The prefix is checked as for :meth:`get`."""
        ...

    def check(self) -> None:
        """Raise :class:`StorageError` if the store cannot be written to."""
        ...


class StoreWrapper:
    """A RecordingStore over another one (`target`): every method forwards to it
    unless a subclass overrides it — the index (callindex/indexer.py), signed
    manifests (storage/manifest.py) and encryption (storage/encryption.py) each
    change only what they add. Anything else (an S3 store's ``object_lock``, an
    outbox's ``counters``) is read through from the target."""

    def __init__(self, target: RecordingStore) -> None:
        self.target = target
        self.url = target.url
        self.own_cpu_s = 0.0          # CPU of this wrapper's own work, its target's excluded
        self._cpu_lock = threading.Lock()

    def _count_cpu(self, seconds: float) -> None:
        """Add thread CPU seconds spent on this wrapper's own work (writer
        threads measure with time.thread_time around it, not around the
        target): `scripts/bench --protect` reports what protection costs from
        the same run instead of comparing two noisy runs."""
        with self._cpu_lock:
            self.own_cpu_s += seconds

    def __getattr__(self, name: str):
        if name in ("target", "_cpu_lock") or name.startswith("__"):   # not yet set (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.target, name)

    def put(self, prefix: str, files: dict[str, FileData]) -> str:
        return self.target.put(prefix, files)

    def add(self, prefix: str, files: dict[str, FileData]) -> str:
        return self.target.add(prefix, files)

    def get(self, prefix: str, name: str) -> bytes:
        return self.target.get(prefix, name)

    def size(self, prefix: str, name: str) -> int:
        return self.target.size(prefix, name)

    def get_range(self, prefix: str, name: str, start: int, length: int) -> bytes:
        return self.target.get_range(prefix, name, start, length)

    def list_recordings(self) -> list[str]:
        return self.target.list_recordings()

    def list_files(self, prefix: str) -> list[str]:
        return self.target.list_files(prefix)

    def delete(self, prefix: str) -> bool:
        return self.target.delete(prefix)

    def check(self) -> None:
        self.target.check()


def layers(store: object):
    """Every layer of a store stack, top first: the wrappers and what they
    wrap (an outbox's target too), read from ``target`` attributes themselves
    (never through a wrapper's forwarding)."""
    while store is not None:
        yield store
        store = vars(store).get("target") if hasattr(store, "__dict__") else None


def own_cpu_by_layer(store: object) -> dict[str, float]:
    """CPU seconds each wrapper of a store stack spent on its own work, by class
    name (``{"EncryptingStore": 0.12, "SigningStore": 0.34, ...}``)."""
    out: dict[str, float] = {}
    for layer in layers(store):
        if isinstance(layer, StoreWrapper):
            name = type(layer).__name__
            out[name] = out.get(name, 0.0) + layer.own_cpu_s
    return out

"""The interface every recording store offers, and its one error type.

The controller talks to storage only through :class:`RecordingStore`, so a local
folder and an S3 bucket are interchangeable and tests can assert that both give
identical results.
"""
from __future__ import annotations

import shutil
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

    def list_recordings(self) -> list[str]:
        """Sorted prefixes (``YYYY/MM/DD/<id>``) of every stored recording."""
        ...

    def check(self) -> None:
        """Raise :class:`StorageError` if the store cannot be written to."""
        ...

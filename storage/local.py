"""Recordings in a local (or mounted) folder.

Each file is written to a temporary file in its final directory and renamed
over the old one, so a reader never sees half a file and a crash never leaves
a truncated recording under its real name.
"""
from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

from storage import files as filemodes
from storage.base import FileData, StorageError, check_range, write_data
from storage.layout import valid_name, valid_prefix

_TMP_PREFIX = ".tmp-"


class LocalStore:
    """A :class:`storage.base.RecordingStore` on a folder.

    ``fsync`` makes each file durable before it replaces the old one; it can be
    turned off for benchmarks on throw-away folders.
    """

    def __init__(self, root: Path | str, *, fsync: bool = True) -> None:
        self.root = Path(root).expanduser().absolute()
        self.fsync = fsync
        self.url = self.root.as_uri()

    def __repr__(self) -> str:
        return f"LocalStore({self.url})"

    def _dir(self, prefix: str) -> Path:
        try:
            return self.root.joinpath(*valid_prefix(prefix).split("/"))
        except ValueError as exc:
            raise StorageError(f"{self.url}: {exc}") from None

    def put(self, prefix: str, files: dict[str, FileData]) -> str:
        return self._write(prefix, files, replace=True)

    def add(self, prefix: str, files: dict[str, FileData]) -> str:
        return self._write(prefix, files, replace=False)

    def _write(self, prefix: str, files: dict[str, FileData], replace: bool) -> str:
        """Write the files; `replace`: the folder then holds exactly them."""
        folder = self._dir(prefix)
        try:
            names = {valid_name(n) for n in files}
        except ValueError as exc:
            raise StorageError(f"{self.url}: {exc}") from None
        try:
            filemodes.make_dirs(folder)
            for name, data in files.items():
                self._write_atomic(folder, name, data)
            # Remove what an earlier run left and this one no longer has (e.g.
            # audio.wav when the call turned out to have no media), plus temp
            # files of an interrupted write, so the folder equals the recording.
            for entry in os.scandir(folder) if replace else ():
                if entry.name not in names and entry.is_file(follow_symlinks=False):
                    os.unlink(entry.path)
            if self.fsync:
                fsync_path(folder)
        except OSError as exc:
            raise StorageError(f"{self.url}: cannot write recording {prefix}: {exc.strerror or exc}") from exc
        return folder.as_uri()

    def _write_atomic(self, folder: Path, name: str, data: FileData) -> None:
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX + name + ".", dir=folder)
        try:
            with os.fdopen(fd, "wb") as fh:
                write_data(fh, data)
                if self.fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
            filemodes.fix_mode(tmp)  # 0600 unless --file-mode grants the group (storage/files.py)
            os.replace(tmp, folder / name)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def get(self, prefix: str, name: str) -> bytes:
        folder = self._dir(prefix)
        try:
            return (folder / valid_name(name)).read_bytes()
        except ValueError as exc:
            raise StorageError(f"{self.url}: {exc}") from None
        except FileNotFoundError:
            raise StorageError(f"{self.url}: no file {name} in recording {prefix}") from None
        except OSError as exc:
            raise StorageError(f"{self.url}: cannot read {prefix}/{name}: {exc.strerror or exc}") from exc

    def size(self, prefix: str, name: str) -> int:
        folder = self._dir(prefix)
        try:
            st = os.stat(folder / valid_name(name))
        except ValueError as exc:
            raise StorageError(f"{self.url}: {exc}") from None
        except FileNotFoundError:
            raise StorageError(f"{self.url}: no file {name} in recording {prefix}") from None
        except OSError as exc:
            raise StorageError(f"{self.url}: cannot read {prefix}/{name}: {exc.strerror or exc}") from exc
        if not stat.S_ISREG(st.st_mode):
            raise StorageError(f"{self.url}: cannot read {prefix}/{name}: not a file")
        return st.st_size

    def get_range(self, prefix: str, name: str, start: int, length: int) -> bytes:
        start, length = check_range(start, length)
        folder = self._dir(prefix)
        try:
            return read_range(folder / valid_name(name), start, length)
        except ValueError as exc:
            raise StorageError(f"{self.url}: {exc}") from None
        except FileNotFoundError:
            raise StorageError(f"{self.url}: no file {name} in recording {prefix}") from None
        except OSError as exc:
            raise StorageError(f"{self.url}: cannot read {prefix}/{name}: {exc.strerror or exc}") from exc

    def list_recordings(self) -> list[str]:
        """Every folder under the root that directly holds a (non-temporary) file."""
        found: list[str] = []
        if not self.root.is_dir():
            return found
        try:
            for dirpath, dirnames, filenames in os.walk(self.root):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                if dirpath == str(self.root):
                    continue
                if any(not f.startswith(".") for f in filenames):
                    found.append(Path(dirpath).relative_to(self.root).as_posix())
        except OSError as exc:
            raise StorageError(f"{self.url}: cannot list recordings: {exc.strerror or exc}") from exc
        return sorted(found)

    def delete(self, prefix: str) -> bool:
        folder = self._dir(prefix)
        if not folder.is_dir():
            return False
        try:
            shutil.rmtree(folder)
            if self.fsync:
                fsync_path(folder.parent)
        except OSError as exc:
            raise StorageError(f"{self.url}: cannot delete recording {prefix}: {exc.strerror or exc}") from exc
        return True

    def list_files(self, prefix: str) -> list[str]:
        """Names of the regular files in the recording's folder (none starting with
        "."), sorted; [] when the folder does not exist."""
        folder = self._dir(prefix)
        try:
            with os.scandir(folder) as entries:
                return sorted(e.name for e in entries
                              if not e.name.startswith(".") and e.is_file(follow_symlinks=False))
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise StorageError(f"{self.url}: cannot list recording {prefix}: {exc.strerror or exc}") from exc

    def check(self) -> None:
        """Create the root if needed and prove it is writable with a probe file."""
        try:
            filemodes.make_dirs(self.root)
            fd, probe = tempfile.mkstemp(prefix=_TMP_PREFIX + "check.", dir=self.root)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise StorageError(f"{self.url}: folder is not writable: {exc.strerror or exc}") from exc


def read_range(path: Path, start: int, length: int) -> bytes:
    """At most `length` bytes of a file from offset `start` (b"" at/after its end):
    open, seek, read; never the whole file. OSError as raised (FileNotFoundError
    when absent, IsADirectoryError for a folder). Shared with the outbox."""
    with open(path, "rb") as fh:
        # bounded by what the file holds, so a huge `length` (an open-ended HTTP
        # range) never allocates more than the bytes actually returned
        length = min(length, max(0, os.fstat(fh.fileno()).st_size - start))
        if length == 0:
            return b""
        fh.seek(start)
        return fh.read(length)


def fsync_path(path: Path) -> None:
    """fsync a file or, for a folder, the renames in it (POSIX; a no-op where
    unsupported). Shared with the controller's write-ahead log."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

"""Modes of the files spanrec creates: private whatever the umask.

Recordings (storage/local.py), the storage outbox, the sensor spool, spilled
calls and the write-ahead log hold call audio and signalling. They are
created `FILE_MODE` (0600) in folders `DIR_MODE` (0700), set explicitly with
fchmod/chmod so neither a lax umask (022) nor a strict one (077) decides.
Group access is configuration: `--file-mode 0640` (folders then 0750) via
`configure`, once at start-up, for the whole process.
"""
from __future__ import annotations

import os
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


def configure(file_mode: int) -> None:
    """Sets the process-wide modes; `file_mode` may grant group read/write only
    (never execute, never others): a folder gets the matching search bits."""
    global FILE_MODE, DIR_MODE
    if file_mode & ~0o660 or not file_mode & 0o600 == 0o600:
        raise ValueError(f"file mode {file_mode:04o}: allowed are 0600, 0640 and 0660")
    FILE_MODE = file_mode
    DIR_MODE = 0o700 | (0o050 if file_mode & 0o040 else 0) | (0o020 if file_mode & 0o020 else 0)


def parse_mode(text: str) -> int:
    """'0640' / '640' / '0o640' -> 0o640 (ValueError with the reason)."""
    try:
        mode = int(str(text).lower().removeprefix("0o"), 8)
    except ValueError:
        raise ValueError(f"not an octal file mode: {text!r}") from None
    configure_check = FILE_MODE, DIR_MODE
    try:
        configure(mode)
    finally:
        _restore(*configure_check)
    return mode


def _restore(file_mode: int, dir_mode: int) -> None:
    global FILE_MODE, DIR_MODE
    FILE_MODE, DIR_MODE = file_mode, dir_mode


def make_dirs(path: Path | str) -> Path:
    """`mkdir -p` where every folder created gets DIR_MODE (existing ones are
    left as they are: the operator's choice)."""
    path = Path(path)
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(d, DIR_MODE)
    return path


def private_dir(path: Path | str) -> Path:
    """A folder spanrec owns (state, spool, outbox, spill): created if missing
    and set to DIR_MODE even if it existed."""
    path = make_dirs(path)
    os.chmod(path, DIR_MODE)
    return path


def open_fd(path: Path | str, flags: int) -> int:
    """os.open with O_CREAT at FILE_MODE, then fchmod (umask never widens or
    narrows it). A file that existed keeps its content, its mode is set."""
    fd = os.open(path, flags | os.O_CREAT, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    except OSError:
        os.close(fd)
        raise
    return fd


def open_file(path: Path | str, mode: str = "wb"):  # noqa: ANN201 - a file object
    """open() for writing ('wb', 'w+b', 'ab') at FILE_MODE."""
    flags = os.O_RDWR if "+" in mode else os.O_WRONLY
    if "w" in mode:
        flags |= os.O_TRUNC
    if "a" in mode:
        flags |= os.O_APPEND
    return os.fdopen(open_fd(path, flags | getattr(os, "O_CLOEXEC", 0)), mode)


def fix_mode(path: Path | str) -> None:
    """A file made by something else (mkstemp, a library) set to FILE_MODE."""
    os.chmod(path, FILE_MODE)


def key_file_problem(st: os.stat_result, path: Path | str) -> str | None:
    """Why a secret key file (a key-encryption key, the signing key, an SSE-C
    key) is too open, or None. Others may never access it; the group may read
    it only when root owns the file and the group cannot write it - how
    Kubernetes mounts a Secret for a pod with an fsGroup (root:fsGroup, 0440),
    the rule PostgreSQL applies to its TLS key. One sentence naming the file."""
    import stat as _stat
    mode = _stat.S_IMODE(st.st_mode)
    if mode & 0o007 or (mode & 0o070 and (st.st_uid != 0 or mode & 0o030)):
        return (f"{path} is accessible by group or others (mode {mode:04o}): run chmod 600 {path} "
                f"(group read is accepted only on a root-owned file, as a Kubernetes Secret is mounted)")
    return None

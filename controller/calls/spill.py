"""Long calls: their frames and payload references moved out of memory as they go.

An active call keeps every packet until it ends (call.pcap, audio).  For an
ordinary call that is a few MB; an 8-hour call would hold ~1 GB.  So once a
call holds more than `CallConfig.spill_frames` frames in memory, the engine
moves them to a per-call spill file (`CallSpill.spill_frames`), and the
payload references of its RTP streams with them (`spill_run`); memory per
active call is then bounded by that threshold, whatever the call's length.

Frame indexes never change: frame *i* of a call is record *i* of its spill
file while ``i < spilled``, else element ``i - spilled`` of the in-memory tail.
When the call ends, `FrameStore`/`TimeStore` give finalize the same
sequence interface a list has (``frames[i]``, ``len``, iteration), reading
spilled frames through an mmap, and `load_runs` puts each stream's
references back in one array each (16 bytes per packet, at finalize only).

File format (private, deleted once the recording is stored): frames file =
records ``<q ts_ns><I length><data>``; runs file = ``length`` int64
references then ``length`` int64 RTP timestamps per chunk.
"""
from __future__ import annotations

import mmap
import os
import struct
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from storage import files as filemodes

if TYPE_CHECKING:
    from controller.media.streams import RtpStream

__all__ = ["CallSpill", "FrameStore", "TimeStore", "load_runs", "remove_leftovers"]

_REC = struct.Struct("<qI")
_REF_FRAME_SHIFT = 34


class CallSpill:
    """The spill files of one call (frames, payload references)."""

    def __init__(self, directory: Path, name: str) -> None:
        filemodes.private_dir(directory)
        self.path = directory / f"{name}.frames"
        self.runs_path = directory / f"{name}.runs"
        self._fh = filemodes.open_file(self.path, "w+b")          # lives as long as the call
        self._runs = filemodes.open_file(self.runs_path, "w+b")
        self._count = 0                            # frames spilled
        self._offsets: array | None = None         # file offset of each, built at finalize
        self._end = 0
        self._runs_end = 0
        self._mm: mmap.mmap | None = None
        self.outputs: list[Path] = []      # files written from it at finalize (call.pcap)

    @property
    def spilled(self) -> int:
        return self._count

    @property
    def offsets(self) -> array:
        """File offset of every spilled frame: found by one pass over the file when
        first needed (at finalize), so nothing per frame is held while the call
        goes on."""
        if self._offsets is None:
            mm = self.view()
            offsets = array("Q")
            pos = 0
            unpack = _REC.unpack_from
            for _ in range(self._count):
                offsets.append(pos)
                pos += 12 + unpack(mm, pos)[1]
            self._offsets = offsets
        return self._offsets

    def spill_frames(self, ts: Sequence[int], data: Sequence[bytes]) -> None:
        """Append frames (in index order) to the file."""
        out = []
        pos = self._end
        pack = _REC.pack
        for t, d in zip(ts, data):
            out.append(pack(t, len(d)))
            out.append(d)
            pos += 12 + len(d)
        self._count += len(data)
        self._fh.seek(self._end)
        self._fh.write(b"".join(out))
        self._end = pos

    def spill_run(self, refs: array, timestamps: array) -> tuple[int, int]:
        """Append one chunk of payload references; returns (offset, count)."""
        off = self._runs_end
        self._runs.seek(off)
        refs.tofile(self._runs)
        timestamps.tofile(self._runs)
        self._runs_end = off + 16 * len(refs)
        return off, len(refs)

    def absorb(self, other: CallSpill) -> int:
        """Append another call's spilled frames after ours (a merge); returns the
        offset to add to its runs-file chunk offsets."""
        other._fh.flush()
        self._fh.seek(self._end)
        other._fh.seek(0)
        _copy(other._fh, self._fh, other._end)
        self._count += other._count
        self._end += other._end
        runs_shift = self._runs_end
        other._runs.flush()
        self._runs.seek(self._runs_end)
        other._runs.seek(0)
        _copy(other._runs, self._runs, other._runs_end)
        self._runs_end += other._runs_end
        other.close()
        return runs_shift

    def read_run(self, offset: int, count: int) -> tuple[array, array]:
        self._runs.flush()
        self._runs.seek(offset)
        refs = array("q")
        refs.fromfile(self._runs, count)
        ts = array("q")
        ts.fromfile(self._runs, count)
        return refs, ts

    def view(self) -> mmap.mmap | None:
        """A read-only map of the frames file (after the last spill)."""
        if self._mm is None and self._end:
            self._fh.flush()
            self._mm = mmap.mmap(self._fh.fileno(), self._end, access=mmap.ACCESS_READ)
        return self._mm

    def close(self) -> None:
        """Close and delete the files (the recording is stored, or the call merged)."""
        for path in self.outputs:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        if self._mm is not None:
            self._mm.close()
            self._mm = None
        for fh, path in ((self._fh, self.path), (self._runs, self.runs_path)):
            try:
                fh.close()
            finally:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass


def remove_leftovers(directory: Path) -> int:
    """Delete the spill files a previous process left in its spill folder (it
    was killed: its files were never closed).  They hold the packets of calls
    in the clear; the write-ahead log rebuilds those calls, so nothing is lost,
    and an erased call's packets do not stay behind here.  Only spill files
    (``<serial>.<suffix>``) are touched.  Returns how many were deleted."""
    gone = 0
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return 0
    for entry in entries:
        stem = entry.name.split(".", 1)[0]
        if stem.isdigit() and "." in entry.name and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
                gone += 1
            except FileNotFoundError:
                pass
    return gone


def _copy(src, dst, n: int) -> None:
    while n > 0:
        chunk = src.read(min(n, 1 << 20))
        if not chunk:
            break
        dst.write(chunk)
        n -= len(chunk)


class _Spilled(Sequence):
    """A finished call's per-frame values: the spilled ones read from the file's
    map, then the in-memory tail (frame i = record i, else tail[i - spilled])."""

    def __init__(self, spill: CallSpill, tail: list) -> None:
        self.spill = spill
        self.tail = tail
        self._n = spill.spilled
        self._mm = spill.view()

    def _record(self, off: int):
        raise NotImplementedError

    def __len__(self) -> int:
        return self._n + len(self.tail)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if i < self._n:
            return self._record(self.spill.offsets[i])
        return self.tail[i - self._n]

    def __iter__(self) -> Iterator:
        record = self._record
        for off in self.spill.offsets:
            yield record(off)
        yield from self.tail


class FrameStore(_Spilled):
    """Frames of a finished call (same indexes as while it was active)."""

    def _record(self, off: int) -> bytes:
        _, n = _REC.unpack_from(self._mm, off)
        return self._mm[off + 12:off + 12 + n]


class TimeStore(_Spilled):
    """Capture times of a finished call's frames (same indexes as `FrameStore`)."""

    def _record(self, off: int) -> int:
        return _REC.unpack_from(self._mm, off)[0]


def load_runs(streams: Sequence[RtpStream], spill: CallSpill | None) -> None:
    """Give every payload run of a finished call all its references in memory again
    (spilled chunks first, shifted by any merge, then the in-memory tail)."""
    if spill is None:
        return
    for stream in streams:
        for run in stream.by_pt.values():
            if not run.spilled:
                continue
            refs = array("q")
            ts = array("q")
            for offset, count, shift in run.spilled:
                r, t = spill.read_run(offset, count)
                if shift:
                    delta = shift << _REF_FRAME_SHIFT
                    r = array("q", (x + delta if x >= 0 else x for x in r))
                refs.extend(r)
                ts.extend(t)
            refs.extend(run.refs)
            ts.extend(run.timestamps)
            run.refs, run.timestamps = refs, ts
            run.spilled = []
            run.n_spilled = 0

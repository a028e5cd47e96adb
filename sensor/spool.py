"""The sensor's disk spool: every batch until the controller acknowledges it.

Layout of a spool folder (one per sensor id, see ``sensor/pipeline.py``)::

    lock                      flock'ed by the one sensor process using the folder
    ack                       two 32-byte slots: generation, acked seq, resume cursor, CRC
    source                    JSON: what this spool's batches were captured from
    00000000000000000001.seg  segment files, named by the seq of their first record
    00000000000000004097.seg

A segment is a sequence of records, appended only::

    u32 body length | u32 CRC32(body) | body
    body = u64 seq | u64 cursor | i64 first_ts_ns | u32 packets | payload

``payload`` is opaque here (the sender stores a serialized ``Batch`` without
its seq). Seqs are consecutive inside a segment; ``cursor`` is how far the
source had got when the batch was made (frames of a replayed file), so a
restarted replay continues after the last spooled batch.

Durability: records are written with ``pwrite`` straight to the kernel (no
user-space buffer), so a ``kill -9`` right after ``append()`` returns loses
nothing: the page cache belongs to the kernel, not to the process. Only a
power loss or kernel crash can lose what was not yet fsync'ed; ``fsync`` runs
at most every ``fsync_interval_s`` (and on rotation and close). A record cut
by a crash (torn tail) fails its length or CRC check when the spool is opened
again: the segment is truncated there and ``torn_records`` counts it.

Acknowledged records are forgotten by deleting whole segments once every
record in them is acknowledged; the ack pointer itself is rewritten in place
(two alternating CRC-checked slots, so a torn write leaves the other slot).

Bound: segment files never exceed ``max_bytes`` in total. When a new record
does not fit, ``append(on_full="drop")`` (live capture) deletes the oldest
segment and counts its unacknowledged batches and packets as dropped;
``on_full="raise"`` (replay: nothing may be lost) raises ``SpoolFull`` and the
caller waits for acks.

Thread safety: one lock around every method; the producer appends while the
link thread reads and acks.
"""
from __future__ import annotations

import bisect
import errno
import fcntl
import json
import os
import struct
import threading
import time
import zlib
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from storage import files as filemodes

__all__ = ["Spool", "SpoolError", "SpoolFull", "SpoolRecord"]

_REC = struct.Struct("<II")          # body length, crc32(body)
_BODY = struct.Struct("<QQqI")       # seq, cursor, first_ts_ns, packets
_ACK = struct.Struct("<QQQ")         # generation, acked seq, cursor
_ACK_SLOT = 32                       # _ACK + u32 crc + 4 bytes padding
MAX_RECORD = 256 << 20               # a body longer than this is corruption
SEGMENT_BYTES = 16 << 20


class SpoolError(Exception):
    """The spool folder cannot be used (in use by another process, unwritable)."""


class SpoolFull(Exception):
    """No room for the record and dropping was not allowed."""


class SpoolRecord(NamedTuple):
    seq: int
    cursor: int
    first_ts: int
    packets: int
    payload: bytes


@dataclass
class _Segment:
    path: Path
    first_seq: int
    fd: int
    offsets: array           # 'Q': file offset of each record; seq = first_seq + index
    packets: array           # 'I': packets of each record
    size: int = 0

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self.offsets) - 1

    def __len__(self) -> int:
        return len(self.offsets)


class Spool:
    """Append-only, size-bounded, crash-safe queue of batches on disk."""

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int, *,
                 segment_bytes: int | None = None, fsync_interval_s: float | None = 1.0) -> None:
        self.dir = Path(directory)
        self.max_bytes = int(max_bytes)
        if self.max_bytes <= 0:
            raise ValueError("max_bytes must be > 0")
        self.segment_bytes = segment_bytes or max(64 << 10, min(SEGMENT_BYTES, self.max_bytes // 8))
        self.fsync_interval_s = fsync_interval_s
        self._lock = threading.RLock()
        self._segments: list[_Segment] = []
        self._active: _Segment | None = None
        self._ack_fd = -1
        self._ack_gen = 0
        self.acked_seq = 0
        self.next_seq = 1
        self.cursor = 0               # cursor of the newest record (or persisted after acks)
        self.depth_batches = 0        # unacknowledged records
        self.depth_bytes = 0          # their size on disk
        self.disk_bytes = 0           # all segment files
        self.dropped_batches = 0
        self.dropped_packets = 0
        self.torn_records = 0         # cut records truncated when the spool was opened
        self.recovered_batches = 0    # unacknowledged records found when the spool was opened
        self._last_sync = time.monotonic()
        self._dirty = False
        self._closed = False
        try:
            filemodes.private_dir(self.dir)
            self._lock_fd = self._take_lock()
        except OSError as exc:
            raise SpoolError(f"spool folder {self.dir}: {exc.strerror or exc}") from exc
        try:
            self._recover()
        except OSError as exc:
            self._release_lock()
            raise SpoolError(f"spool folder {self.dir}: {exc.strerror or exc}") from exc

    # -- opening -------------------------------------------------------
    def _take_lock(self) -> int:
        path = self.dir / "lock"
        while True:
            fd = filemodes.open_fd(path, os.O_RDWR | os.O_CLOEXEC)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    raise SpoolError(f"spool folder {self.dir} is used by another sensor process "
                                     f"(give each sensor its own --spool-dir)") from None
                raise
            # the previous owner may have removed the file between our open and flock
            try:
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    os.ftruncate(fd, 0)
                    os.write(fd, f"{os.getpid()}\n".encode())
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)

    def _release_lock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def _recover(self) -> None:
        self._ack_fd = filemodes.open_fd(self.dir / "ack", os.O_RDWR | os.O_CLOEXEC)
        acked, cursor = self._read_ack()
        self.acked_seq = acked
        self.cursor = cursor
        last_seq = acked
        for path in sorted(self.dir.glob("*.seg")):
            try:
                first = int(path.stem)
            except ValueError:
                continue
            seg = self._scan(path, first)
            if seg is None:
                continue
            last_seq = max(last_seq, seg.last_seq)
            if seg.last_seq <= self.acked_seq:
                self._delete(seg)
                continue
            self._segments.append(seg)
        self.next_seq = last_seq + 1
        self._recount()
        self.recovered_batches = self.depth_batches
        if self._segments:
            newest = self._segments[-1]
            head = os.pread(newest.fd, _BODY.size, newest.offsets[-1] + _REC.size)
            self.cursor = max(self.cursor, _BODY.unpack(head)[1])

    def _scan(self, path: Path, first: int) -> _Segment | None:
        """Index a segment; truncate it at the first bad record (torn tail)."""
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        size = os.fstat(fd).st_size
        offsets, packets = array("Q"), array("I")
        off = 0
        expect = first
        with open(fd, "rb", buffering=1 << 20, closefd=False) as fh:
            while off < size:
                head = fh.read(_REC.size)
                if len(head) < _REC.size:
                    break
                length, crc = _REC.unpack(head)
                if length < _BODY.size or length > MAX_RECORD or off + _REC.size + length > size:
                    break
                body = fh.read(length)
                if len(body) < length or zlib.crc32(body) != crc:
                    break
                seq, _cursor, _ts, npk = _BODY.unpack_from(body)
                if seq != expect:
                    break
                offsets.append(off)
                packets.append(npk)
                off += _REC.size + length
                expect += 1
        if off < size:
            self.torn_records += 1
            os.ftruncate(fd, off)
            os.fsync(fd)
        if not offsets:
            os.close(fd)
            path.unlink(missing_ok=True)
            return None
        return _Segment(path, first, fd, offsets, packets, off)

    def _recount(self) -> None:
        depth = nbytes = disk = 0
        for seg in self._segments:
            disk += seg.size
            start = max(0, self.acked_seq + 1 - seg.first_seq)
            if start < len(seg):
                depth += len(seg) - start
                nbytes += seg.size - seg.offsets[start]
        self.depth_batches, self.depth_bytes, self.disk_bytes = depth, nbytes, disk

    def _read_ack(self) -> tuple[int, int]:
        data = os.pread(self._ack_fd, 2 * _ACK_SLOT, 0)
        best = (0, 0, 0)
        for i in range(2):
            slot = data[i * _ACK_SLOT:(i + 1) * _ACK_SLOT]
            if len(slot) < _ACK.size + 4:
                continue
            (crc,) = struct.unpack_from("<I", slot, _ACK.size)
            if zlib.crc32(slot[:_ACK.size]) != crc:
                continue           # torn by a power loss: the other slot is the previous one
            gen, acked, cursor = _ACK.unpack_from(slot)
            if gen >= best[0]:
                best = (gen, acked, cursor)
        self._ack_gen = best[0]
        return best[1], best[2]

    def _write_ack(self) -> None:
        self._ack_gen += 1
        head = _ACK.pack(self._ack_gen, self.acked_seq, self.cursor)
        slot = head + struct.pack("<I", zlib.crc32(head)) + bytes(_ACK_SLOT - _ACK.size - 4)
        os.pwrite(self._ack_fd, slot, (self._ack_gen % 2) * _ACK_SLOT)

    # -- source identity -----------------------------------------------
    @property
    def source(self) -> dict | None:
        """What the spooled batches were captured from (set by the pipeline), or None."""
        try:
            return json.loads((self.dir / "source").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def set_source(self, source: dict | None) -> None:
        """Record a new source; the resume cursor starts again at 0."""
        with self._lock:
            path = self.dir / "source"
            if source is None:
                path.unlink(missing_ok=True)
            else:
                tmp = path.with_suffix(".tmp")
                with filemodes.open_file(tmp, "wb") as fh:
                    fh.write(json.dumps(source, sort_keys=True).encode())
                os.replace(tmp, path)
            self.cursor = 0
            self._write_ack()

    # -- producer ------------------------------------------------------
    def append(self, payload: bytes, *, packets: int = 0, first_ts: int = 0, cursor: int = 0,
               on_full: str = "drop") -> int:
        """Store one record and return its seq. ``on_full``: "drop" the oldest or "raise"."""
        body_len = _BODY.size + len(payload)
        need = _REC.size + body_len
        with self._lock:
            if self._closed:
                raise SpoolError("spool is closed")
            self._make_room(need, on_full)
            seg = self._active
            if seg is None or seg.size >= self.segment_bytes:
                seg = self._rotate()
            seq = self.next_seq
            head = _BODY.pack(seq, cursor, first_ts, packets)
            crc = zlib.crc32(payload, zlib.crc32(head))
            reason = "short write"
            try:
                written = os.pwritev(seg.fd, [_REC.pack(body_len, crc), head, payload], seg.size)
            except OSError as exc:
                written, reason = -1, exc.strerror or str(exc)
            if written != need:    # disk full or I/O error: leave no partial record behind
                try:
                    os.ftruncate(seg.fd, seg.size)
                except OSError:
                    pass
                raise SpoolError(f"cannot write to spool {seg.path}: {reason}")
            seg.offsets.append(seg.size)
            seg.packets.append(packets)
            seg.size += need
            self.next_seq = seq + 1
            self.cursor = cursor
            self.depth_batches += 1
            self.depth_bytes += need
            self.disk_bytes += need
            self._dirty = True
            if self.fsync_interval_s is not None and \
                    time.monotonic() - self._last_sync >= self.fsync_interval_s:
                self._sync()
            return seq

    def _make_room(self, need: int, on_full: str) -> None:
        while self.disk_bytes + need > self.max_bytes and self._segments:
            if self._reclaim_acked():
                continue
            if on_full != "drop":
                raise SpoolFull(f"spool {self.dir} is full ({self.disk_bytes} bytes)")
            self._drop_oldest()

    def _reclaim_acked(self) -> bool:
        """Delete the oldest segment if every record in it is acknowledged."""
        seg = self._segments[0]
        if seg.last_seq > self.acked_seq:
            return False
        self._segments.pop(0)
        if seg is self._active:
            self._active = None
        self.disk_bytes -= seg.size
        self._delete(seg)
        return True

    def _drop_oldest(self) -> None:
        seg = self._segments.pop(0)
        if seg is self._active:
            self._active = None
        start = max(0, self.acked_seq + 1 - seg.first_seq)
        lost = len(seg) - start
        if lost > 0:
            self.dropped_batches += lost
            self.dropped_packets += sum(seg.packets[start:])
            self.depth_batches -= lost
            self.depth_bytes -= seg.size - seg.offsets[start]
        self.disk_bytes -= seg.size
        self._delete(seg)

    def _rotate(self) -> _Segment:
        if self._active is not None:
            self._sync()
        path = self.dir / f"{self.next_seq:020d}.seg"
        fd = filemodes.open_fd(path, os.O_RDWR | os.O_TRUNC | os.O_CLOEXEC)
        seg = _Segment(path, self.next_seq, fd, array("Q"), array("I"))
        self._segments.append(seg)
        self._active = seg
        if self.fsync_interval_s is not None:
            dfd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        return seg

    def _sync(self) -> None:
        if self._active is not None and self._dirty:
            os.fsync(self._active.fd)
        self._dirty = False
        self._last_sync = time.monotonic()

    @staticmethod
    def _delete(seg: _Segment) -> None:
        os.close(seg.fd)
        seg.path.unlink(missing_ok=True)

    # -- consumer ------------------------------------------------------
    def _locate(self, seq: int) -> tuple[int, int] | None:
        """(segment index, record index) of the first record with a seq >= `seq`."""
        segs = self._segments
        if not segs:
            return None
        i = bisect.bisect_right([s.first_seq for s in segs], seq) - 1
        if i < 0:
            return 0, 0
        seg = segs[i]
        if seq <= seg.last_seq:
            return i, seq - seg.first_seq
        return (i + 1, 0) if i + 1 < len(segs) else None

    def _read(self, seg: _Segment, idx: int) -> SpoolRecord:
        off = seg.offsets[idx]
        end = seg.offsets[idx + 1] if idx + 1 < len(seg) else seg.size
        data = os.pread(seg.fd, end - off, off)
        length, crc = _REC.unpack_from(data)
        body = memoryview(data)[_REC.size:]
        if len(body) != length or zlib.crc32(body) != crc:
            raise SpoolError(f"spool record {seg.first_seq + idx} in {seg.path} is corrupt")
        seq, cursor, ts, npk = _BODY.unpack_from(body)
        return SpoolRecord(seq, cursor, ts, npk, bytes(body[_BODY.size:]))

    def read(self, after: int, limit: int = 64, max_bytes: int = 8 << 20) -> list[SpoolRecord]:
        """Up to `limit` records with a seq above max(`after`, acked seq), in order."""
        out: list[SpoolRecord] = []
        size = 0
        with self._lock:
            pos = self._locate(max(after, self.acked_seq) + 1)
            if pos is None:
                return out
            i, j = pos
            while i < len(self._segments) and len(out) < limit and size < max_bytes:
                seg = self._segments[i]
                if j >= len(seg):
                    i, j = i + 1, 0
                    continue
                rec = self._read(seg, j)
                out.append(rec)
                size += len(rec.payload)
                j += 1
        return out

    def iter_from(self, seq: int) -> Iterator[SpoolRecord]:
        """Every record with a seq >= `seq` (and above the ack pointer), read lazily."""
        after = seq - 1
        while True:
            chunk = self.read(after, limit=64)
            if not chunk:
                return
            yield from chunk
            after = chunk[-1].seq

    def has_after(self, seq: int) -> bool:
        with self._lock:
            return bool(self._segments) and self.next_seq - 1 > max(seq, self.acked_seq)

    def first_ts_after(self, seq: int) -> int | None:
        """Capture time of the first packet of the first record above `seq`, if any."""
        with self._lock:
            pos = self._locate(max(seq, self.acked_seq) + 1)
            if pos is None:
                return None
            seg = self._segments[pos[0]]
            if pos[1] >= len(seg):
                return None
            head = os.pread(seg.fd, _BODY.size, seg.offsets[pos[1]] + _REC.size)
            return _BODY.unpack(head)[2]

    def first_seq(self) -> int:
        """Seq of the oldest unacknowledged record (next_seq when there is none)."""
        with self._lock:
            pos = self._locate(self.acked_seq + 1)
            if pos is None:
                return self.next_seq
            seg = self._segments[pos[0]]
            return seg.first_seq + pos[1]

    def ack(self, seq: int) -> int:
        """Everything up to `seq` is acknowledged; returns how many records that released."""
        with self._lock:
            if seq <= self.acked_seq or self._closed:
                return 0
            seq = min(seq, self.next_seq - 1)
            before = self.depth_batches
            self.acked_seq = seq
            while self._segments and self._segments[0].last_seq <= seq:
                self._reclaim_acked()
            self._recount()
            self._write_ack()
            return before - self.depth_batches

    def clear(self) -> int:
        """Forget every record (acknowledged or not); returns how many unacked ones."""
        with self._lock:
            lost = self.depth_batches
            for seg in self._segments:
                self._delete(seg)
            self._segments.clear()
            self._active = None
            self.acked_seq = self.next_seq - 1
            self._recount()
            self._write_ack()
            return lost

    def __len__(self) -> int:
        return self.depth_batches

    def close(self, remove_if_empty: bool = False) -> None:
        """Sync and close. With `remove_if_empty`, an empty spool without a source
        leaves no files behind (nor its folder, nor an empty parent folder)."""
        with self._lock:
            if self._closed:
                return
            self._sync()
            self._closed = True
            empty = self.depth_batches == 0
            for seg in self._segments:
                os.close(seg.fd)
            self._segments.clear()
            self._active = None
            os.close(self._ack_fd)
            if remove_if_empty and empty and not (self.dir / "source").exists():
                for p in self.dir.glob("*.seg"):
                    p.unlink(missing_ok=True)
                for name in ("ack", "lock"):
                    (self.dir / name).unlink(missing_ok=True)
                for d in (self.dir, self.dir.parent):
                    try:
                        d.rmdir()
                    except OSError:
                        break
            self._release_lock()

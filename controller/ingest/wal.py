"""The controller's write-ahead log: what a sensor sees acknowledged is on disk.

Every batch a sensor sends is appended here before it enters the call
pipeline, and the controller acknowledges a batch only once the log holding it
is durable. After a crash the log is replayed into a fresh `Recorder` through
the same path as live traffic, which rebuilds every call that was active and
restores each sensor session's acknowledged seq, so resent batches are dropped.

Files: ``<dir>/<20-digit segment number>.wal``, each starting with an 8-byte
magic, then records::

    u32 length of payload | u32 crc32(kind + payload) | u8 kind | payload

Batch payloads are binary (sensor id, seq, linktype, max ts, timestamps,
lengths, data); a broadcast batch (a sharded controller, Batch.broadcast:
controller/ingest/shard.py) is the same payload under its own kind, so a replay
filters it as the live path did; the rare events (hello, disconnect, end of capture, recording
stored, segment snapshot) are JSON. A record that is cut short or fails its
CRC ends the replay of its segment (a torn tail after a crash; counted).

Durability (``fsync``):

* ``"group"`` (default): a syncer thread fsyncs whatever was appended since its
  last fsync, back to back (group commit). `durable_lsn` moves after each
  fsync; the recorder acknowledges only batches at or below it. Survives a
  machine crash or power loss.
* ``"always"``: fsync inside every append (the slow reference).
* ``"never"``: durable once written to the kernel (page cache): survives
  ``kill -9`` of the controller, not a machine crash.

Encryption (issue #15, ``keyring``: storage/keys.py): the log holds the
calls' packets, so with a key-encryption key each segment gets a data key of
its own, wrapped by the KEK in a KEY record right after the magic; every later
record's payload is ``nonce (12) | AES-256-GCM(data key, payload, aad=kind)``
(the CRC is over that). A segment without a KEY record is plain (written before
encryption was on); an encrypted one without the key to unwrap it is skipped
and counted (``undecryptable_segments``).

Segments: a new one is started every ``segment_bytes``, when the current one
holds packets and is ``segment_seconds`` old (default 5 minutes: on a quiet
site a segment would otherwise stay open for days, and with it the packets of
calls long stored - and of calls erased since, issue #15), and at every open
(old segments are never appended to). The recorder deletes closed segments, oldest
first, once every packet in them is older than what it still needs
(`delete_before`); ``max_bytes`` bounds the whole log, deleting the oldest
segment even if it is still needed (counted and logged).
"""
from __future__ import annotations

import json
import logging
import os
import struct
import threading
import time
import zlib
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from storage import files as filemodes
from storage.local import fsync_path

log = logging.getLogger("spanrec.controller.ingest.wal")

MAGIC = b"SPWAL01\n"
_HEAD = struct.Struct("<IIB")            # payload length, crc32(kind + payload), kind
_BATCH = struct.Struct("<HQIIq")         # sensor id length, seq, linktype, packets, max ts
_MAX_RECORD = 1 << 30

BATCH, HELLO, DISCONNECT, END, STORED, SNAPSHOT, BATCH_BROADCAST, KEY = 1, 2, 3, 4, 5, 6, 7, 8
KINDS = {BATCH: "batch", HELLO: "hello", DISCONNECT: "disconnect", END: "end",
         STORED: "stored", SNAPSHOT: "snapshot", BATCH_BROADCAST: "batch-broadcast", KEY: "key"}
FSYNC_POLICIES = ("group", "always", "never")


@dataclass
class Batch:
    sensor_id: str
    seq: int
    linktype: int
    timestamps: list[int]
    lengths: list[int]
    data: bytes
    max_ts: int
    broadcast: bool = False     # a broadcast batch (BATCH_BROADCAST records)


@dataclass
class Segment:
    number: int
    path: Path
    size: int = 0
    max_ts: int = -1          # newest capture time of any packet in it (-1: none)
    opened: float = field(default_factory=time.monotonic)   # when this process started it


class WalError(Exception):
    """The log cannot be used (folder not writable, disk full)."""


def _encode_batch(sensor_id: str, seq: int, linktype: int, timestamps: Any, lengths: Any,
                  data: bytes) -> tuple[bytes, int]:
    ts = array("q", timestamps)
    ln = array("I", lengths)
    max_ts = max(ts) if ts else -1
    sid = sensor_id.encode()
    head = _BATCH.pack(len(sid), seq, linktype, len(ts), max_ts)
    return b"".join((head, sid, ts.tobytes(), ln.tobytes(), data)), max_ts


def _decode_batch(payload: bytes) -> Batch:
    sid_len, seq, linktype, n, max_ts = _BATCH.unpack_from(payload, 0)
    off = _BATCH.size
    sid = payload[off:off + sid_len].decode()
    off += sid_len
    ts = array("q")
    ts.frombytes(payload[off:off + 8 * n])
    off += 8 * n
    ln = array("I")
    ln.frombytes(payload[off:off + 4 * n])
    off += 4 * n
    data = payload[off:]
    if len(ts) != n or len(ln) != n or sum(ln) != len(data):
        raise ValueError("batch record lengths do not match")
    return Batch(sid, seq, linktype, ts.tolist(), ln.tolist(), bytes(data), max_ts)


def _open_payload(aead: Any, kind: int, payload: Any) -> bytes | None:
    """A record's payload in the clear (None when it does not authenticate)."""
    if aead is None:
        return bytes(payload)
    from cryptography.exceptions import InvalidTag
    p = bytes(payload)
    try:
        return aead.decrypt(p[:12], p[12:], bytes((kind,)))
    except (InvalidTag, ValueError):
        return None


def _record(kind: int, payload: bytes) -> bytes:
    crc = zlib.crc32(payload, zlib.crc32(bytes((kind,))))
    return _HEAD.pack(len(payload), crc, kind) + payload


class WriteAheadLog:
    """Segmented append-only log with group commit. Thread-safe."""

    def __init__(self, directory: Path | str, *, segment_bytes: int = 64 << 20,
                 segment_seconds: float = 300.0, max_bytes: int = 4 << 30, fsync: str = "group",
                 keyring: Any = None) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {FSYNC_POLICIES}, got {fsync!r}")
        if not segment_seconds > 0:
            raise ValueError(f"segment_seconds must be positive, got {segment_seconds!r}")
        self.dir = Path(directory)
        self.segment_bytes = segment_bytes
        self.segment_seconds = segment_seconds
        self.max_bytes = max_bytes
        self.fsync = fsync
        self.keyring = keyring              # storage.keys KeyProvider, or None: plain
        self._aead: Any = None              # the current segment's cipher
        self._nonce_prefix = b""
        self._nonce_counter = 0
        try:
            filemodes.private_dir(self.dir)
        except OSError as exc:
            raise WalError(f"write-ahead log {self.dir}: {exc.strerror or exc}") from None
        self.segments: list[Segment] = [
            Segment(int(p.stem), p, p.stat().st_size) for p in sorted(self.dir.glob("*.wal"))
            if p.stem.isdigit()]
        self._lock = threading.Lock()        # appends, roll, segment list
        self._sync_lock = threading.Lock()   # one fsync at a time; roll closes fds under it
        self._cond = threading.Condition(self._lock)
        self._fd: int | None = None
        self._generation = 0                 # bumped at every roll
        self.appended_lsn = 0                # records appended by this process
        self.durable_lsn = 0                 # records known on disk (per the policy)
        self._closed = False
        self._syncer: threading.Thread | None = None
        self.counters = {
            "records_appended": 0, "bytes_appended": 0, "fsyncs": 0,
            "records_replayed": 0, "torn_tail_bytes": 0, "corrupt_segments": 0,
            "segments_deleted": 0, "segments_forced": 0, "bytes_forced": 0,
            "undecryptable_segments": 0,
        }

    # -- replay ----------------------------------------------------------
    def replay(self) -> Iterator[tuple[int, Any]]:
        """Every good record of the existing segments in order: ``(kind, value)``
        with a `Batch` for batches and the decoded JSON for the rest. Fills in
        each segment's newest packet time on the way."""
        for i, seg in enumerate(list(self.segments)):
            last = i == len(self.segments) - 1
            for kind, payload in self._read(seg, last):
                if kind == BATCH or kind == BATCH_BROADCAST:
                    b = _decode_batch(payload)
                    if kind == BATCH_BROADCAST:
                        b.broadcast = True
                        kind = BATCH        # one kind of batch for the replaying side
                    if b.max_ts > seg.max_ts:
                        seg.max_ts = b.max_ts
                    value: Any = b
                else:
                    value = json.loads(payload)
                self.counters["records_replayed"] += 1
                yield kind, value

    def scan(self, kinds: set[int]) -> Iterator[tuple[int, Any]]:
        """Records of the given (JSON) kinds only; other payloads are skipped
        unread (a quick first pass before `replay`)."""
        for seg in list(self.segments):
            try:
                fh = open(seg.path, "rb")
            except OSError:
                continue
            with fh:
                if fh.read(len(MAGIC)) != MAGIC:
                    continue
                aead = None
                while True:
                    head = fh.read(_HEAD.size)
                    if len(head) < _HEAD.size:
                        break
                    length, crc, kind = _HEAD.unpack(head)
                    if length > _MAX_RECORD:
                        break
                    if kind not in kinds and kind != KEY:
                        fh.seek(length, os.SEEK_CUR)
                        continue
                    payload = fh.read(length)
                    if len(payload) < length or zlib.crc32(payload, zlib.crc32(bytes((kind,)))) != crc:
                        break
                    if kind == KEY:
                        aead = self._unwrap(payload, seg)
                        if aead is False:
                            break
                        continue
                    plain = _open_payload(aead, kind, payload)
                    if plain is None:
                        break
                    yield kind, json.loads(plain)

    def _read(self, seg: Segment, last: bool) -> Iterator[tuple[int, bytes]]:
        try:
            buf = seg.path.read_bytes()
        except OSError as exc:
            log.error("write-ahead log segment unreadable", extra={"path": str(seg.path),
                                                                   "error": str(exc)})
            self.counters["corrupt_segments"] += 1
            return
        if not buf:
            return
        if buf[:len(MAGIC)] != MAGIC:
            self.counters["corrupt_segments"] += 1
            log.error("write-ahead log segment has no header", extra={"path": str(seg.path)})
            return
        off, end = len(MAGIC), len(buf)
        mv = memoryview(buf)
        aead = None
        while off < end:
            bad = ""
            if off + _HEAD.size > end:
                bad = "cut short"
            else:
                length, crc, kind = _HEAD.unpack_from(buf, off)
                stop = off + _HEAD.size + length
                if length > _MAX_RECORD or stop > end:
                    bad = "cut short"
                elif kind not in KINDS:
                    bad = "unknown kind"
                else:
                    payload = mv[off + _HEAD.size:stop]
                    if zlib.crc32(payload, zlib.crc32(bytes((kind,)))) != crc:
                        bad = "crc mismatch"
            if bad:
                lost = end - off
                if last:
                    self.counters["torn_tail_bytes"] += lost
                    log.warning("write-ahead log ends in a torn record; ignored",
                                extra={"path": str(seg.path), "offset": off, "bytes": lost,
                                       "reason": bad})
                else:
                    self.counters["corrupt_segments"] += 1
                    log.error("write-ahead log segment damaged; rest of it skipped",
                              extra={"path": str(seg.path), "offset": off, "bytes": lost,
                                     "reason": bad})
                return
            off = stop
            if kind == KEY:
                aead = self._unwrap(payload, seg)
                if aead is False:
                    return
                continue
            plain = _open_payload(aead, kind, payload)
            if plain is None:
                self.counters["corrupt_segments"] += 1
                log.error("write-ahead log record does not decrypt; rest of the segment skipped",
                          extra={"path": str(seg.path), "offset": off})
                return
            yield kind, plain

    def _unwrap(self, payload: Any, seg: Segment) -> Any:
        """The cipher of a segment's KEY record, or False (counted, logged) when
        it cannot be unwrapped with the keys at hand."""
        import base64
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        try:
            rec = json.loads(bytes(payload))
            if self.keyring is None:
                raise ValueError("the segment is encrypted and no key-encryption key is configured")
            key = self.keyring.unwrap(rec["kek"], base64.b64decode(rec["wrapped"]))
            return AESGCM(key)
        except Exception as exc:  # noqa: BLE001 - EncryptionError, bad JSON: the segment is unreadable
            self.counters["undecryptable_segments"] += 1
            log.error("write-ahead log segment cannot be decrypted; skipped",
                      extra={"path": str(seg.path), "error": str(exc)})
            return False

    def _seal(self, kind: int, payload: bytes) -> bytes:
        """The payload as written: encrypted under the segment's data key, if any."""
        if self._aead is None:
            return payload
        self._nonce_counter += 1
        nonce = self._nonce_prefix + self._nonce_counter.to_bytes(8, "big")
        return nonce + self._aead.encrypt(nonce, payload, bytes((kind,)))

    # -- appending ---------------------------------------------------------
    def open(self, snapshot: dict[str, Any]) -> None:
        """Make replayed segments durable, start a new segment beginning with
        `snapshot`, and start the syncer."""
        for seg in self.segments:
            fsync_path(seg.path)
        with self._lock:
            self._roll_locked(snapshot)
            self.durable_lsn = self.appended_lsn
        if self.fsync == "group":
            self._syncer = threading.Thread(target=self._sync_loop, name="spanrec-wal-sync",
                                            daemon=True)
            self._syncer.start()

    def needs_roll(self) -> bool:
        """The current segment is full, or holds packets and is segment_seconds old."""
        if self._fd is None:
            return False
        seg = self.segments[-1]
        return seg.size >= self.segment_bytes or (
            seg.max_ts >= 0 and time.monotonic() - seg.opened >= self.segment_seconds)

    def roll(self, snapshot: dict[str, Any]) -> None:
        with self._lock:
            self._roll_locked(snapshot)

    def _roll_locked(self, snapshot: dict[str, Any]) -> None:
        number = self.segments[-1].number + 1 if self.segments else 1
        path = self.dir / f"{number:020d}.wal"
        with self._sync_lock:
            if self._fd is not None:
                if self.fsync != "never":
                    os.fsync(self._fd)
                    self.counters["fsyncs"] += 1
                os.close(self._fd)
                self._fd = None
                self.durable_lsn = self.appended_lsn
            try:
                fd = filemodes.open_fd(path, os.O_WRONLY | os.O_EXCL | os.O_APPEND)
            except OSError as exc:
                raise WalError(f"write-ahead log {path}: {exc.strerror or exc}") from None
            self._fd = fd
            self._generation += 1
        self.segments.append(Segment(number, path))
        self._write_locked(MAGIC, None)
        fsync_path(self.dir)
        self._aead = None
        if self.keyring is not None:           # a data key per segment, wrapped by the KEK
            import base64
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
            key = os.urandom(32)
            kek, wrapped = self.keyring.wrap(key)
            self._write_locked(_record(KEY, json.dumps(
                {"kek": kek, "wrapped": base64.b64encode(wrapped).decode()}).encode()), None)
            self._aead = AESGCM(key)
            self._nonce_prefix = os.urandom(4)
            self._nonce_counter = 0
        self._write_locked(_record(SNAPSHOT, self._seal(SNAPSHOT, json.dumps(snapshot).encode())), None)
        self._enforce_bound_locked()

    def append_batch(self, sensor_id: str, seq: int, linktype: int, timestamps: Any,
                     lengths: Any, data: bytes, broadcast: bool = False) -> int:
        payload, max_ts = _encode_batch(sensor_id, seq, linktype, timestamps, lengths, data)
        return self._append(BATCH_BROADCAST if broadcast else BATCH, payload, max_ts)

    def append_event(self, kind: int, value: dict[str, Any]) -> int:
        return self._append(kind, json.dumps(value).encode(), None)

    def _append(self, kind: int, payload: bytes, max_ts: int | None) -> int:
        with self._lock:
            if self._fd is None:
                raise WalError("write-ahead log is not open")
            # sealed under the lock: a roll changes the segment's key
            self._write_locked(_record(kind, self._seal(kind, payload)), max_ts)
            self.appended_lsn += 1
            lsn = self.appended_lsn
            if self.fsync == "never":
                self.durable_lsn = lsn
            elif self.fsync == "always":
                with self._sync_lock:
                    os.fsync(self._fd)
                    self.counters["fsyncs"] += 1
                self.durable_lsn = lsn
            else:
                self._cond.notify()
            return lsn

    def _write_locked(self, rec: bytes, max_ts: int | None) -> None:
        assert self._fd is not None
        view = memoryview(rec)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError as exc:
            raise WalError(f"write-ahead log {self.segments[-1].path}: {exc.strerror or exc}") from None
        seg = self.segments[-1]
        seg.size += len(rec)
        if max_ts is not None and max_ts > seg.max_ts:
            seg.max_ts = max_ts
        self.counters["records_appended"] += 1
        self.counters["bytes_appended"] += len(rec)

    # -- durability -------------------------------------------------------
    def _sync_loop(self) -> None:
        while True:
            with self._lock:
                while not self._closed and self.appended_lsn <= self.durable_lsn:
                    self._cond.wait(1.0)
                if self._closed:
                    return
                lsn, fd, gen = self.appended_lsn, self._fd, self._generation
            self._sync_to(lsn, fd, gen)

    def _sync_to(self, lsn: int, fd: int | None, gen: int) -> None:
        with self._sync_lock:
            # a roll since the snapshot fsynced and closed that segment itself
            if fd is not None and gen == self._generation:
                try:
                    os.fsync(fd)
                except OSError as exc:
                    log.error("write-ahead log fsync failed", extra={"error": str(exc)})
                    return
                self.counters["fsyncs"] += 1
        with self._lock:
            if lsn > self.durable_lsn:
                self.durable_lsn = lsn

    def sync(self) -> int:
        """Make everything appended so far durable now; returns durable_lsn."""
        with self._lock:
            lsn, fd, gen = self.appended_lsn, self._fd, self._generation
        if lsn > self.durable_lsn:
            if self.fsync == "never":
                with self._lock:
                    self.durable_lsn = max(self.durable_lsn, lsn)
            else:
                self._sync_to(lsn, fd, gen)
        return self.durable_lsn

    # -- truncation -------------------------------------------------------
    def delete_before(self, keep_ts: int) -> int:
        """Delete closed segments, oldest first, while every packet in them is
        older than `keep_ts`. Returns how many were deleted."""
        with self._lock:
            doomed = []
            for seg in self.segments[:-1]:
                if seg.max_ts >= keep_ts:
                    break
                doomed.append(seg)
        if not doomed:
            return 0
        # what made these segments unneeded (e.g. "stored" records) must be on
        # disk before the segments go
        self.sync()
        with self._lock:
            for seg in doomed:
                self._unlink_locked(seg)
                self.counters["segments_deleted"] += 1
        return len(doomed)

    def _enforce_bound_locked(self) -> None:
        while len(self.segments) > 1 and self.total_bytes() > self.max_bytes:
            seg = self.segments[0]
            self.counters["segments_forced"] += 1
            self.counters["bytes_forced"] += seg.size
            log.warning("write-ahead log over its size bound: oldest segment deleted while "
                        "still needed; a crash now would lose the calls in it",
                        extra={"path": str(seg.path), "bytes": seg.size,
                               "max_bytes": self.max_bytes})
            self._unlink_locked(seg)

    def _unlink_locked(self, seg: Segment) -> None:
        try:
            seg.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.error("cannot delete write-ahead log segment", extra={"path": str(seg.path),
                                                                      "error": str(exc)})
            return
        self.segments.remove(seg)

    def total_bytes(self) -> int:
        return sum(s.size for s in self.segments)

    def close(self) -> None:
        """Sync and close (a graceful stop). The files stay for the next start."""
        with self._lock:
            self._closed = True
            self._cond.notify_all()
        if self._syncer is not None:
            self._syncer.join(5)
        with self._sync_lock:
            if self._fd is not None:
                if self.fsync != "never":
                    os.fsync(self._fd)
                os.close(self._fd)
                self._fd = None
        self.durable_lsn = self.appended_lsn

    def stats(self) -> dict[str, int]:
        out = dict(self.counters)
        out["segments"] = len(self.segments)
        out["bytes"] = self.total_bytes()
        return out




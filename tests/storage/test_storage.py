"""Storage backends: a local folder and a real S3 server give identical results."""
from __future__ import annotations

import itertools
import time
from datetime import datetime, timezone

import pytest

from storage import (LocalStore, RecordingStore, RetryPolicy, S3Store, StorageError, open_store,
                     recording_id, recording_prefix)
from storage.layout import content_type

FAST_RETRY = RetryPolicy(attempts=3, initial=0.01, max_wait=0.05, connect_timeout=0.5, read_timeout=2.0)
_bucket_no = itertools.count()

FILES = {
    "call.json": b'{"call_id": "abc@host"}\n',
    "audio.wav": b"RIFF" + bytes(range(256)) * 40,
    "call.pcap": b"\x4d\x3c\xb2\xa1" + b"\x00" * 1000,
}


def s3_store(server, prefix: str = "rec") -> S3Store:
    """A fresh bucket per test so tests never see each other's objects."""
    bucket = f"spanrec-test-{next(_bucket_no)}-{time.monotonic_ns() % 10**9}"
    store = open_store(f"s3://{bucket}/{prefix}", endpoint=f"http://{server.endpoint}",
                       access_key=server.access_key, secret_key=server.secret_key, retry=FAST_RETRY)
    assert isinstance(store, S3Store)
    return store


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def store(request, tmp_path) -> RecordingStore:
    if request.param == "local":
        return LocalStore(tmp_path / "recordings")
    return s3_store(request.getfixturevalue("s3_server"))


# -- layout -----------------------------------------------------------------

def test_layout_prefix_uses_utc_date():
    started = datetime(2024, 3, 1, 0, 30, tzinfo=timezone.utc)
    rid = recording_id("a84b4c76e66710@pc33.atlanta.com", 1_709_253_000_123_456_789)
    assert rid.startswith("20240301T003000Z-") and len(rid) == len("20240301T003000Z-") + 12
    assert recording_prefix(started, rid) == f"2024/03/01/{rid}"
    assert rid == recording_id("a84b4c76e66710@pc33.atlanta.com", 1_709_253_000_123_456_789)
    assert rid != recording_id("a84b4c76e66710@pc33.atlanta.com", 1_709_253_000_123_456_790)
    with pytest.raises(ValueError):
        recording_prefix(started, "../x")


def test_content_types():
    assert content_type("call.json") == "application/json"
    assert content_type("audio.wav") == "audio/wav"
    assert content_type("call.pcap") == "application/vnd.tcpdump.pcap"


# -- both backends ----------------------------------------------------------

def test_put_get_list(store: RecordingStore):
    store.check()
    prefix = "2024/03/01/20240301T003000Z-0123456789ab"
    location = store.put(prefix, FILES)
    assert location.endswith(prefix)
    assert store.list_recordings() == [prefix]
    for name, data in FILES.items():
        assert store.get(prefix, name) == data
    with pytest.raises(StorageError):
        store.get(prefix, "missing.wav")


def test_put_twice_overwrites(store: RecordingStore):
    prefix = "2024/03/01/rec-a"
    store.put(prefix, FILES)
    newer = dict(FILES, **{"call.json": b'{"v": 2}'})
    store.put(prefix, newer)
    assert store.list_recordings() == [prefix]
    assert store.get(prefix, "call.json") == b'{"v": 2}'


def test_stale_files_removed(store: RecordingStore):
    prefix = "2024/03/01/rec-b"
    sibling = "2024/03/01/rec-bb"  # a key prefix of rec-b... must not be touched
    store.put(prefix, FILES)
    store.put(sibling, FILES)
    without_audio = {k: v for k, v in FILES.items() if k != "audio.wav"}
    store.put(prefix, without_audio)
    with pytest.raises(StorageError):
        store.get(prefix, "audio.wav")
    assert store.get(sibling, "audio.wav") == FILES["audio.wav"]
    assert store.list_recordings() == [prefix, sibling]


def test_invalid_names_rejected(store: RecordingStore):
    for prefix, name in (("../escape", "call.json"), ("2024/01/01/x", "../call.json"), ("", "call.json")):
        with pytest.raises(StorageError):
            store.put(prefix, {name: b"x"})


@pytest.mark.s3
def test_local_and_s3_identical(tmp_path, s3_server):
    local = LocalStore(tmp_path / "rec")
    s3 = s3_store(s3_server, prefix="deep/er")
    recordings = {
        "2024/03/01/r1": FILES,
        "2024/03/02/r2": {"call.json": b"{}", "call.pcap": b"p" * 10},
        "2023/12/31/r3": {"call.json": b"[]"},
    }
    for target in (local, s3):
        for prefix, files in recordings.items():
            target.put(prefix, files)
        target.put("2024/03/01/r1", {"call.json": b"{}"})  # stale audio and pcap go
    assert local.list_recordings() == s3.list_recordings() == sorted(recordings)
    expected = dict(recordings, **{"2024/03/01/r1": {"call.json": b"{}"}})
    for prefix, files in expected.items():
        for name in ("call.json", "audio.wav", "call.pcap"):
            if name in files:
                assert local.get(prefix, name) == s3.get(prefix, name) == files[name]
            else:
                for target in (local, s3):
                    with pytest.raises(StorageError):
                        target.get(prefix, name)
    # The local folder holds exactly the recording files (no temp leftovers).
    on_disk = sorted(p.relative_to(local.root).as_posix() for p in local.root.rglob("*") if p.is_file())
    assert on_disk == sorted(f"{p}/{n}" for p, fs in expected.items() for n in fs)


@pytest.mark.s3
def test_s3_objects_carry_content_type(s3_server):
    store = s3_store(s3_server)
    store.put("2024/03/01/r1", FILES)
    for name in FILES:
        stat = store._client.stat_object(store.bucket, f"rec/2024/03/01/r1/{name}")
        assert stat.content_type == content_type(name)


# -- failures ---------------------------------------------------------------

def test_s3_server_down_fails_fast_with_clear_message():
    from tests.s3server import free_ports

    port = free_ports(1)[0]  # nothing listens here
    store = open_store("s3://recordings/x", endpoint=f"http://127.0.0.1:{port}",
                       access_key="AKIDEXAMPLE", secret_key="very-secret-value", retry=FAST_RETRY)
    t0 = time.monotonic()
    with pytest.raises(StorageError) as info:
        store.put("2024/03/01/r1", FILES)
    elapsed = time.monotonic() - t0
    text = str(info.value)
    assert elapsed < 3.0
    assert f"127.0.0.1:{port}" in text and "after 3 attempts" in text
    assert "very-secret-value" not in text and "AKIDEXAMPLE" not in text
    with pytest.raises(StorageError):
        store.check()


@pytest.mark.s3
def test_s3_wrong_secret_is_not_retried(s3_server):
    store = open_store("s3://recordings/x", endpoint=f"http://{s3_server.endpoint}",
                       access_key=s3_server.access_key, secret_key="wrong-secret-value",
                       retry=RetryPolicy(attempts=5, initial=1.0))
    t0 = time.monotonic()
    with pytest.raises(StorageError) as info:
        store.check()
    assert time.monotonic() - t0 < 1.0  # a permanent error: no back-off
    assert "wrong-secret-value" not in str(info.value)


@pytest.mark.parametrize("url", ["", "ftp://host/x", "s3://", "s3://key:secret@bucket/x",
                                 "file://otherhost/x", "s3://Bad_Bucket!/x"])
def test_bad_url(url, monkeypatch):
    monkeypatch.setenv("SPANREC_S3_ENDPOINT", "127.0.0.1:1")
    monkeypatch.setenv("SPANREC_S3_ACCESS_KEY", "a")
    monkeypatch.setenv("SPANREC_S3_SECRET_KEY", "b")
    with pytest.raises(StorageError) as info:
        open_store(url)
    assert "secret" not in str(info.value).replace("SECRET_KEY", "")


def test_s3_missing_settings(monkeypatch):
    for name in ("SPANREC_S3_ENDPOINT", "SPANREC_S3_ACCESS_KEY", "SPANREC_S3_SECRET_KEY",
                 "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(StorageError, match="missing S3 endpoint"):
        open_store("s3://bucket/x")
    monkeypatch.setenv("SPANREC_S3_ENDPOINT", "https://s3.example.com")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "a")
    with pytest.raises(StorageError, match="secret key"):
        open_store("s3://bucket/x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "b")
    store = open_store("s3://bucket/x")
    assert isinstance(store, S3Store) and store.url == "s3://bucket/x"
    assert store._where.endswith("https://s3.example.com")


def test_open_store_local(tmp_path):
    assert isinstance(open_store(str(tmp_path)), LocalStore)
    store = open_store(tmp_path.as_uri())
    assert isinstance(store, LocalStore) and store.root == tmp_path


def test_local_unwritable_root(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(StorageError, match="not writable"):
        LocalStore(blocker / "sub").check()


def test_large_file_put_from_a_path(store: RecordingStore, tmp_path):
    """A long call's call.pcap/audio come as files: streamed, never read whole; on S3
    above one part (16 MiB) that is a multipart upload. Same bytes come back."""
    import hashlib
    import os

    big = tmp_path / "big.pcap"
    data = os.urandom(20 << 20)
    big.write_bytes(data)
    store.put("2026/01/02/20260102T000000Z-0123456789ab", {"call.json": b"{}", "call.pcap": big})
    got = store.get("2026/01/02/20260102T000000Z-0123456789ab", "call.pcap")
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    assert big.exists()          # the store copies; the caller deletes its file


# -- byte ranges (HTTP Range requests of a web player) ----------------------

RANGE_PREFIX = "2026/01/02/20260102T000000Z-0123456789ab"


def _range_cases(size: int) -> list[tuple[int, int]]:
    mib = 1 << 20
    return [
        (0, 0), (0, 1), (0, 100), (1, 10), (12345, 0),       # start, 0-length
        (mib - 10, 20), (mib - 1, 2), (mib, 1),              # crossing / at 1 MiB
        (mib - 100_000, 2 * mib),                            # crossing two MiB boundaries
        (size - 1, 1), (size - 1, 1000),                     # the last byte
        (size - 10, 10), (size - 10, 11),                    # up to / beyond the end
        (size, 0), (size, 1), (size + 1, 5), (10 * size, 1 << 40),   # at / after the end
        (0, size), (0, size + 1), (0, 1 << 40),              # whole file, open-ended
    ]


def test_size_and_get_range(store: RecordingStore):
    import os

    data = os.urandom(3 << 20)
    store.put(RANGE_PREFIX, {"call.json": b"{}", "audio.wav": data, "empty.bin": b""})
    assert store.size(RANGE_PREFIX, "audio.wav") == len(data)
    assert store.size(RANGE_PREFIX, "call.json") == 2
    assert store.size(RANGE_PREFIX, "empty.bin") == 0
    for start, length in _range_cases(len(data)):
        got = store.get_range(RANGE_PREFIX, "audio.wav", start, length)
        assert got == data[start:start + length], (start, length, len(got))
    for start, length in ((0, 0), (0, 1), (0, 100), (1, 1)):
        assert store.get_range(RANGE_PREFIX, "empty.bin", start, length) == b""
    # stitching consecutive ranges gives back the file (what a player does)
    step = 700_001
    assert b"".join(store.get_range(RANGE_PREFIX, "audio.wav", a, step)
                    for a in range(0, len(data), step)) == data


def test_size_and_get_range_errors(store: RecordingStore):
    store.put(RANGE_PREFIX, {"call.json": b"{}"})
    # absent file / recording: StorageError naming file and recording, as get does
    for prefix, name in ((RANGE_PREFIX, "audio.wav"), ("2026/01/02/other", "call.json")):
        with pytest.raises(StorageError) as got:
            store.get(prefix, name)
        with pytest.raises(StorageError, match=f"no file {name} in recording {prefix}"):
            store.size(prefix, name)
        for start, length in ((0, 10), (0, 0), (5, 1)):
            with pytest.raises(StorageError, match=f"no file {name} in recording {prefix}"):
                store.get_range(prefix, name, start, length)
        if isinstance(store, LocalStore):
            assert f"no file {name} in recording {prefix}" in str(got.value)
    # invalid prefix or name: the same error type as get
    for prefix, name in (("../escape", "call.json"), (RANGE_PREFIX, "../call.json"),
                         ("", "call.json"), (RANGE_PREFIX, ".tmp-call.json"), (RANGE_PREFIX, "")):
        if name or isinstance(store, LocalStore):   # S3Store.get(prefix, "") reads the folder key
            with pytest.raises(StorageError):
                store.get(prefix, name)
        with pytest.raises(StorageError, match="invalid"):
            store.size(prefix, name)
        with pytest.raises(StorageError, match="invalid"):
            store.get_range(prefix, name, 0, 1)
    # negative start or length
    for start, length in ((-1, 1), (0, -1), (-5, -5)):
        with pytest.raises(ValueError):
            store.get_range(RANGE_PREFIX, "call.json", start, length)
    with pytest.raises(TypeError):
        store.get_range(RANGE_PREFIX, "call.json", 0.5, 1)


def test_outbox_reads_ranges_of_a_pending_recording(tmp_path):
    """While a recording waits in the outbox (store down, not uploaded yet) a
    player can already stream it; once uploaded the store answers."""
    import os

    from storage.outbox import OutboxStore

    target = LocalStore(tmp_path / "store", fsync=False)
    box = OutboxStore(target, tmp_path / "outbox", initial_wait=0.01, max_wait=0.05)
    data = os.urandom(3 << 20)
    stored_before = b"older version in the store"
    target.put(RANGE_PREFIX, {"call.json": b"{}", "call.pcap": stored_before})
    box.put(RANGE_PREFIX, {"call.json": b"{}", "audio.wav": data})   # not started: stays pending
    assert (tmp_path / "outbox" / RANGE_PREFIX / "audio.wav").is_file()
    with pytest.raises(StorageError):
        target.size(RANGE_PREFIX, "audio.wav")                     # only in the outbox
    assert box.size(RANGE_PREFIX, "audio.wav") == len(data)
    for start, length in _range_cases(len(data)):
        assert box.get_range(RANGE_PREFIX, "audio.wav", start, length) == data[start:start + length]
    # a file not in the pending entry comes from the store; absent in both: error
    assert box.get_range(RANGE_PREFIX, "call.pcap", 6, 7) == stored_before[6:13]
    with pytest.raises(StorageError, match="no file missing.wav in recording"):
        box.get_range(RANGE_PREFIX, "missing.wav", 0, 1)
    with pytest.raises(StorageError, match="invalid"):
        box.get_range("../x", "audio.wav", 0, 1)
    with pytest.raises(ValueError):
        box.get_range(RANGE_PREFIX, "audio.wav", -1, 1)

    box.start()
    assert box.drain(10)
    box.stop()
    assert not (tmp_path / "outbox" / RANGE_PREFIX).exists()
    assert box.size(RANGE_PREFIX, "audio.wav") == len(data)        # now from the store
    assert box.get_range(RANGE_PREFIX, "audio.wav", (1 << 20) - 5, 10) == data[(1 << 20) - 5:(1 << 20) + 5]
    with pytest.raises(StorageError):
        box.size(RANGE_PREFIX, "call.pcap")                        # the upload replaced the recording


def test_indexing_store_delegates_ranges(tmp_path):
    from callindex.indexer import IndexingStore

    target = LocalStore(tmp_path / "store", fsync=False)
    target.put(RANGE_PREFIX, {"audio.wav": b"0123456789"})
    wrapped = IndexingStore.__new__(IndexingStore)   # no Indexer thread: reads never index
    wrapped.target, wrapped.url = target, target.url
    # real methods of the class (here inherited from storage.base.StoreWrapper), not __getattr__
    assert all(any(n in vars(k) for k in IndexingStore.__mro__ if k is not object) for n in ("size", "get_range"))
    assert wrapped.size(RANGE_PREFIX, "audio.wav") == 10
    assert wrapped.get_range(RANGE_PREFIX, "audio.wav", 8, 5) == b"89"

"""Write once on a real S3 server (SeaweedFS): with --object-lock, every file
of a recording carries Object Lock retention until its retain-until; the
server refuses to delete it before then (governance mode without the bypass
right, and compliance mode), an overwrite leaves the locked version in
place, and a bucket without Object Lock is refused at start (issue #15)."""
from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from minio import Minio
from minio.error import S3Error

from storage import open_store
from storage.base import StorageError


def _store(s3_server, bucket: str, lock: str | None):
    store = open_store(f"s3://{bucket}/rec", endpoint=f"http://{s3_server.endpoint}",
                       access_key=s3_server.access_key, secret_key=s3_server.secret_key)
    store.object_lock = lock
    return store


def _client(s3_server) -> Minio:
    return Minio(s3_server.endpoint, access_key=s3_server.access_key, secret_key=s3_server.secret_key,
                 secure=False)


def _call_json(days_left: float) -> bytes:
    until = datetime.now(timezone.utc) + timedelta(days=days_left)
    return json.dumps({"id": "20240115T100000Z-aaaaaaaaaaaa", "started_at": "2024-01-15T10:00:00Z",
                       "retention": {"days": 1, "rule": "default",
                                     "retain_until": until.isoformat().replace("+00:00", "Z")}}).encode()


PREFIX = "2024/01/15/20240115T100000Z-aaaaaaaaaaaa"


@pytest.mark.parametrize("mode", ["governance", "compliance"])
def test_locked_files_cannot_be_deleted_or_replaced(s3_server, mode):
    bucket = f"lock-{mode[:3]}-{uuid.uuid4().hex[:8]}"
    store = _store(s3_server, bucket, mode)
    store.check()                         # creates the bucket with object lock and versioning
    store.put(PREFIX, {"call.json": _call_json(1), "audio.wav": b"RIFF-original", "hold.json": b"{}"})
    c = _client(s3_server)
    key = f"rec/{PREFIX}/audio.wav"
    ret = c.get_object_retention(bucket, key)
    assert ret.mode == mode.upper() and ret.retain_until_date > datetime.now(timezone.utc)
    first = c.stat_object(bucket, key).version_id
    with pytest.raises(S3Error):
        c.remove_object(bucket, key, version_id=first)        # the server refuses
    # spanrec's own deletion (expiry, erasure) is refused too, with the reason
    with pytest.raises(StorageError, match="cannot delete recording"):
        store.delete(PREFIX)
    # an overwrite makes a new version; the locked one stays, byte for byte
    store.put(PREFIX, {"call.json": _call_json(1), "audio.wav": b"RIFF-tampered"})
    old = c.get_object(bucket, key, version_id=first)
    try:
        assert old.read() == b"RIFF-original"
    finally:
        old.close()
        old.release_conn()
    # hold.json is never locked: a hold can be taken off
    hold_versions = [o.version_id for o in c.list_objects(bucket, prefix=f"rec/{PREFIX}/hold.json",
                                                          include_version=True)]
    for v in hold_versions:
        c.remove_object(bucket, f"rec/{PREFIX}/hold.json", version_id=v)


def test_a_recording_past_its_retention_is_not_locked(s3_server):
    bucket = f"lock-old-{uuid.uuid4().hex[:8]}"
    store = _store(s3_server, bucket, "governance")
    store.check()
    store.put(PREFIX, {"call.json": _call_json(-1), "audio.wav": b"RIFF"})
    assert store.delete(PREFIX) is True
    c = _client(s3_server)
    assert not list(c.list_objects(bucket, prefix="rec/", recursive=True, include_version=True))


def test_a_bucket_without_object_lock_is_refused_at_start(s3_server):
    bucket = f"nolock-{uuid.uuid4().hex[:8]}"
    _client(s3_server).make_bucket(bucket)
    with pytest.raises(StorageError, match="needs a bucket created with Object Lock"):
        _store(s3_server, bucket, "compliance").check()


def test_sse_s3_asks_the_server_to_encrypt_every_object(s3_server):
    """--s3-sse s3: the server stores each object encrypted (its stat says AES256);
    spanrec reads it back as written."""
    bucket = f"sse-{uuid.uuid4().hex[:8]}"
    store = _store(s3_server, bucket, None)
    store.sse = "s3"
    store.check()
    store.put(PREFIX, {"call.json": b"{}", "audio.wav": b"RIFF-sse"})
    st = _client(s3_server).stat_object(bucket, f"rec/{PREFIX}/audio.wav")
    assert st.metadata.get("X-Amz-Server-Side-Encryption") == "AES256"
    assert store.get(PREFIX, "audio.wav") == b"RIFF-sse"


def test_a_legal_hold_is_enforced_by_the_server(s3_server, tmp_path):
    """With --object-lock, `spanrecctl hold add` also puts an S3 Object Legal
    Hold on every version of the recording's objects: the server refuses to
    delete any of them after the retention is over, even with the governance
    bypass; erasure is refused; `hold remove` lifts it and erasure works."""
    from callindex.audit import AuditTrail
    from callindex.db import open_index
    from callindex.lifecycle import Who, erase, hold, release
    bucket = f"lock-hold-{uuid.uuid4().hex[:8]}"
    store = _store(s3_server, bucket, "governance")
    store.bypass_governance = True                 # an admin's right: a legal hold still stands
    store.check()
    rid = PREFIX.rsplit("/", 1)[1]
    meta = json.loads(_call_json(-1))              # retention already over: no retention lock
    meta.update({"from": "sip:alice@pbx", "to": "sip:bob@pbx", "status": "answered"})
    for audio in (b"RIFF-first", b"RIFF-second"):  # two versions of audio.wav and call.json
        store.put(PREFIX, {"call.json": json.dumps(meta).encode(), "audio.wav": audio})
    index = open_index(f"sqlite:///{tmp_path / 'index.sqlite'}")
    index.add(PREFIX, meta, f"s3://{bucket}/rec/{PREFIX}")
    trail, who = AuditTrail(index), Who("ops", "operator")
    (got,) = hold(store, index, trail, who, ids=[rid], reason="case 42")
    assert got.done and got.what == "held" and got.reason == "case 42"
    c = _client(s3_server)
    versions = [(o.object_name, o.version_id) for o in c.list_objects(
        bucket, prefix=f"rec/{PREFIX}/", include_version=True)]
    assert len(versions) == 5                      # hold.json too: the hold record stays
    for name, version in versions:
        assert c.is_object_legal_hold_enabled(bucket, name, version_id=version)
        with pytest.raises(S3Error):
            c.remove_object(bucket, name, version_id=version)         # the server refuses
    with pytest.raises(StorageError, match="cannot delete recording"):
        store.delete(PREFIX)                                          # even spanrec with the bypass
    assert sorted(store.list_files(PREFIX)) == ["audio.wav", "call.json", "hold.json"]   # nothing lost
    (got,) = release(store, index, trail, who, ids=[rid], reason="case closed")
    assert got.done and got.what == "released"
    assert not any(c.is_object_legal_hold_enabled(bucket, n, version_id=v) for n, v in versions)
    (gone,) = erase(store, index, trail, who, ids=[rid], reason="request 7")
    assert gone.done and gone.what == "erased"
    assert not list(c.list_objects(bucket, prefix="rec/", recursive=True, include_version=True))
    index.close()

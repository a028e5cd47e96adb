"""Tamper evidence (issue #15): signed manifests, verification, key rotation,
key files and scripts/make-keys, on a local folder and a real S3 server."""
from __future__ import annotations

import base64
import hashlib
import io
import itertools
import json
import os
import re
import stat
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from callindex.indexer import IndexingStore
from storage import LocalStore, RetryPolicy, StorageError, open_store
from storage.manifest import (MANIFEST, ManifestError, SigningKey, SigningStore, VerifyKey, VerifyResult,
                              build_manifest, canonical, load_signing_key, load_verify_key, verify_recording,
                              verify_since)
from storage.outbox import OutboxStore

ROOT = Path(__file__).resolve().parents[2]
MAKE_KEYS = ROOT / "scripts" / "make-keys"
FAST_RETRY = RetryPolicy(attempts=3, initial=0.01, max_wait=0.05, connect_timeout=0.5, read_timeout=5.0)
_bucket_no = itertools.count()

P1 = "2024/03/01/20240301T003000Z-0123456789ab"
P2 = "2024/03/02/20240302T101500Z-abcdef012345"
FILES = {
    "call.json": '{"call_id": "abc@host", "from": "Zoë"}\n'.encode(),
    "audio.wav": b"RIFF" + bytes(range(256)) * 40,
    "call.pcap": b"\xd4\xc3\xb2\xa1" + b"\x01" * 1000,
}


# -- fixtures and helpers -----------------------------------------------------

def s3_store(server):
    bucket = f"spanrec-manifest-{next(_bucket_no)}-{time.monotonic_ns() % 10**9}"
    return open_store(f"s3://{bucket}/rec", endpoint=f"http://{server.endpoint}",
                      access_key=server.access_key, secret_key=server.secret_key, retry=FAST_RETRY)


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "recordings", fsync=False)
    return s3_store(request.getfixturevalue("s3_server"))


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate()


def write_behind(store, prefix: str, name: str, data: bytes) -> None:
    """Change a file behind the store's back: straight into the folder / bucket."""
    if isinstance(store, LocalStore):
        (store.root / prefix / name).write_bytes(data)
    else:
        store._client.put_object(store.bucket, store._key(prefix, name), io.BytesIO(data), len(data))


def delete_behind(store, prefix: str, name: str) -> None:
    if isinstance(store, LocalStore):
        (store.root / prefix / name).unlink()
    else:
        store._client.remove_object(store.bucket, store._key(prefix, name))


def only_problem(result: VerifyResult) -> str:
    assert not result.ok
    assert len(result.problems) == 1, result.problems
    return result.problems[0]


# -- signing and verifying ----------------------------------------------------

def test_signed_recording_verifies(store, key):
    signing = SigningStore(store, key)
    location = signing.put(P1, FILES)
    assert location.endswith(P1)
    assert store.list_files(P1) == sorted([*FILES, MANIFEST])
    manifest = json.loads(store.get(P1, MANIFEST))
    assert set(manifest) == {"version", "recording", "created_at", "files", "key_id", "signature"}
    assert manifest["version"] == 1 and manifest["recording"] == P1
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", manifest["created_at"])
    assert manifest["files"] == {n: {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d)}
                                 for n, d in FILES.items()}
    raw = key.private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert manifest["key_id"] == hashlib.sha256(raw).hexdigest()[:16] == key.key_id
    # the signature covers the canonical JSON without "signature"
    body = {k: v for k, v in manifest.items() if k != "signature"}
    signed = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert signed == canonical(manifest)
    key.private_key.public_key().verify(base64.b64decode(manifest["signature"]), signed)

    result = verify_recording(store, P1, [key.verify_key])
    assert result.ok and result.problems == [] and result.key_id == key.key_id
    assert verify_recording(signing, P1, {key.key_id: key.verify_key}).ok   # through the wrapper too


def test_put_from_paths_and_put_again(store, key, tmp_path):
    big = tmp_path / "audio.wav"
    big.write_bytes(os.urandom(3 << 20))           # hashed in chunks from the file
    signing = SigningStore(store, key)
    signing.put(P1, {"call.json": b"{}", "audio.wav": big})
    assert verify_recording(store, P1, [key.verify_key]).ok
    signing.put(P1, {"call.json": b'{"v": 2}'})     # replaces the folder: audio and its entry go
    assert store.list_files(P1) == ["call.json", MANIFEST]
    assert set(json.loads(store.get(P1, MANIFEST))["files"]) == {"call.json"}
    assert verify_recording(store, P1, [key.verify_key]).ok


@pytest.mark.parametrize("name", ["audio.wav", "call.pcap", "call.json"])
def test_one_flipped_byte_is_found(store, key, name):
    SigningStore(store, key).put(P1, FILES)
    data = bytearray(FILES[name])
    data[len(data) // 2] ^= 0x01
    write_behind(store, P1, name, bytes(data))
    problem = only_problem(verify_recording(store, P1, [key.verify_key]))
    assert name in problem and "SHA-256" in problem


def test_size_change_deleted_and_extra_files(store, key):
    SigningStore(store, key).put(P1, FILES)
    write_behind(store, P1, "call.pcap", FILES["call.pcap"] + b"more")
    problem = only_problem(verify_recording(store, P1, [key.verify_key]))
    assert "call.pcap" in problem and str(len(FILES["call.pcap"])) in problem

    SigningStore(store, key).put(P1, FILES)
    delete_behind(store, P1, "audio.wav")
    problem = only_problem(verify_recording(store, P1, [key.verify_key]))
    assert "audio.wav" in problem and "missing" in problem

    SigningStore(store, key).put(P1, FILES)
    write_behind(store, P1, "late-1.pcap", b"injected")
    problem = only_problem(verify_recording(store, P1, [key.verify_key]))
    assert "late-1.pcap" in problem and "not listed" in problem

    delete_behind(store, P1, MANIFEST)
    problem = only_problem(verify_recording(store, P1, [key.verify_key]))
    assert MANIFEST in problem and "no" in problem


def test_edited_manifest_fails(store, key):
    SigningStore(store, key).put(P1, FILES)
    manifest = json.loads(store.get(P1, MANIFEST))
    # a hash changed to match a replaced audio file: the signature no longer fits
    forged_audio = b"RIFF" + b"\x00" * 100
    manifest["files"]["audio.wav"] = {"sha256": hashlib.sha256(forged_audio).hexdigest(),
                                      "size": len(forged_audio)}
    write_behind(store, P1, "audio.wav", forged_audio)
    write_behind(store, P1, MANIFEST, json.dumps(manifest).encode())
    problem = only_problem(verify_recording(store, P1, [key.verify_key]))
    assert "signature" in problem and MANIFEST in problem

    write_behind(store, P1, MANIFEST, b"{not json")
    assert "not valid JSON" in only_problem(verify_recording(store, P1, [key.verify_key]))


def test_resigned_with_another_key_fails(store, key):
    SigningStore(store, key).put(P1, FILES)
    intruder = SigningKey.generate()
    # the intruder's own manifest: an unknown key id
    write_behind(store, P1, MANIFEST, build_manifest(P1, FILES, intruder))
    problem = only_problem(verify_recording(store, P1, [key.verify_key]))
    assert "unknown key id" in problem and intruder.key_id in problem
    # ... or claiming the real key id: a bad signature
    manifest = json.loads(build_manifest(P1, FILES, intruder))
    manifest["key_id"] = key.key_id
    manifest["signature"] = base64.b64encode(intruder.sign(canonical(manifest))).decode()
    write_behind(store, P1, MANIFEST, json.dumps(manifest).encode())
    assert "signature does not match" in only_problem(verify_recording(store, P1, [key.verify_key]))


def test_manifest_copied_to_another_recording_fails(store, key):
    SigningStore(store, key).put(P1, FILES)
    store.put(P2, {**FILES, MANIFEST: store.get(P1, MANIFEST)})
    problem = only_problem(verify_recording(store, P2, [key.verify_key]))
    assert P1 in problem and P2 in problem


def test_add_late_packets_keeps_manifest_valid(store, key):
    signing = SigningStore(store, key)
    signing.put(P1, FILES)
    signing.add(P1, {"late-1.pcap": b"\xd4\xc3\xb2\xa1late"})
    result = verify_recording(store, P1, [key.verify_key])
    assert result.ok, result.problems
    files = json.loads(store.get(P1, MANIFEST))["files"]
    assert set(files) == {*FILES, "late-1.pcap"}
    # a replaced file gets its new entry; the others keep theirs
    signing.add(P1, {"late-1.pcap": b"\xd4\xc3\xb2\xa1later", "late-2.pcap": b"2"})
    assert verify_recording(store, P1, [key.verify_key]).ok
    assert json.loads(store.get(P1, MANIFEST))["files"]["call.json"] == files["call.json"]
    # the added file is covered: changing it is found
    write_behind(store, P1, "late-2.pcap", b"3")
    assert "late-2.pcap" in only_problem(verify_recording(store, P1, [key.verify_key]))


def test_add_to_a_recording_without_manifest_covers_stored_files(store, key):
    store.put(P1, FILES)                               # written before signing was enabled
    SigningStore(store, key).add(P1, {"late-1.pcap": b"late"})
    assert verify_recording(store, P1, [key.verify_key]).ok
    assert set(json.loads(store.get(P1, MANIFEST))["files"]) == {*FILES, "late-1.pcap"}
    SigningStore(store, key).add(P2, {"late-1.pcap": b"late"})   # nothing stored yet
    assert verify_recording(store, P2, [key.verify_key]).ok


def test_add_does_not_launder_a_tampered_manifest(store, key):
    signing = SigningStore(store, key)
    signing.put(P1, FILES)
    manifest = json.loads(store.get(P1, MANIFEST))
    manifest["files"]["audio.wav"]["sha256"] = "0" * 64
    edited = json.dumps(manifest).encode()
    write_behind(store, P1, MANIFEST, edited)
    signing.add(P1, {"late-1.pcap": b"late"})          # the packets are kept ...
    assert store.get(P1, "late-1.pcap") == b"late"
    assert store.get(P1, MANIFEST) == edited           # ... the evidence too
    problems = verify_recording(store, P1, [key.verify_key]).problems
    assert any("signature" in p for p in problems)
    assert any("late-1.pcap" in p and "not listed" in p for p in problems)


def test_manifest_is_not_a_file_the_caller_gives(store, key):
    with pytest.raises(StorageError, match=MANIFEST):
        SigningStore(store, key).put(P1, {**FILES, MANIFEST: b"{}"})
    with pytest.raises(StorageError, match=MANIFEST):
        SigningStore(store, key).add(P1, {MANIFEST: b"{}"})


def test_key_rotation(store):
    old, new = SigningKey.generate(), SigningKey.generate()
    SigningStore(store, old).put(P1, FILES)
    SigningStore(store, new).put(P2, FILES)
    both = [old.verify_key, new.verify_key]
    assert verify_recording(store, P1, both).ok and verify_recording(store, P2, both).ok
    assert verify_recording(store, P1, {old.key_id: old.verify_key}).key_id == old.key_id
    assert "unknown key id" in only_problem(verify_recording(store, P1, [new.verify_key]))
    assert [(p, r.ok) for p, r in verify_since(store, both, date(2024, 3, 1))] == [(P1, True), (P2, True)]

    # late packets for an old recording after the rotation: re-signed with the
    # new key when the old public key is known to the signing store
    SigningStore(store, new, verify_keys=[old.verify_key]).add(P1, {"late-1.pcap": b"late"})
    assert verify_recording(store, P1, [new.verify_key]).key_id == new.key_id
    assert verify_recording(store, P1, [new.verify_key]).ok
    # without it the old manifest cannot be checked, so it is not re-signed
    SigningStore(store, old).put(P1, FILES)
    SigningStore(store, new).add(P1, {"late-1.pcap": b"late"})
    problems = verify_recording(store, P1, both).problems
    assert problems == ["file late-1.pcap is in the folder but not listed in manifest.json."]


def test_verify_since_filters_by_date(store, key):
    signing = SigningStore(store, key)
    signing.put("2024/02/28/a", FILES)
    signing.put(P1, FILES)
    signing.put(P2, FILES)
    store.put("2024/03/05/unsigned", FILES)
    got = dict(verify_since(store, [key.verify_key], "2024-03-01"))
    assert sorted(got) == [P1, P2, "2024/03/05/unsigned"]
    assert got[P1].ok and got[P2].ok and not got["2024/03/05/unsigned"].ok
    assert [p for p, _ in verify_since(store, key.verify_key, date(2024, 3, 2))] == [P2, "2024/03/05/unsigned"]


class RecordingReads:
    """Forwards to a store and records every read (get and get_range sizes)."""

    def __init__(self, target) -> None:
        self.target, self.url = target, target.url
        self.largest = 0
        self.whole: list[str] = []

    def __getattr__(self, name):
        return getattr(self.target, name)

    def get(self, prefix, name):
        data = self.target.get(prefix, name)
        self.whole.append(name)
        self.largest = max(self.largest, len(data))
        return data

    def get_range(self, prefix, name, start, length):
        data = self.target.get_range(prefix, name, start, length)
        self.largest = max(self.largest, len(data))
        return data


def test_verification_reads_large_files_in_ranges(store, key):
    audio = os.urandom(5 << 20)
    SigningStore(store, key).put(P1, {**FILES, "audio.wav": audio})
    reads = RecordingReads(store)
    assert verify_recording(reads, P1, [key.verify_key]).ok
    assert reads.whole == [MANIFEST]
    assert reads.largest == 1 << 20
    # add to a folder without manifest hashes the stored files in ranges too
    store.put(P2, {**FILES, "audio.wav": audio})
    reads = RecordingReads(store)
    SigningStore(reads, key).add(P2, {"late-1.pcap": b"late"})
    assert reads.whole == [] and reads.largest == 1 << 20
    assert verify_recording(store, P2, [key.verify_key]).ok


# -- list_files on the stores and wrappers -----------------------------------

def test_list_files(store):
    assert store.list_files(P1) == []
    store.put(P1, FILES)
    store.put(P1 + "x", {"other": b"1"})              # a sibling whose name extends P1
    store.put(P1 + "/sub", {"deeper": b"1"})          # a folder below is not a file of P1
    assert store.list_files(P1) == sorted(FILES)
    assert store.list_files(P1 + "/") == sorted(FILES)
    with pytest.raises(StorageError):
        store.list_files("../escape")


def test_list_files_through_wrappers(tmp_path, key):
    local = LocalStore(tmp_path / "rec", fsync=False)

    class NoIndex:
        def add(self, *args):
            pass

    indexing = IndexingStore(local, NoIndex())
    SigningStore(indexing, key).put(P1, FILES)
    assert indexing.list_files(P1) == sorted([*FILES, MANIFEST])
    outbox = OutboxStore(local, tmp_path / "outbox")   # not started: entries stay pending
    assert outbox.list_files(P1) == sorted([*FILES, MANIFEST])
    outbox.add(P1, {"late-1.pcap": b"late"})           # pending additions: the store's files plus them
    assert outbox.list_files(P1) == sorted([*FILES, MANIFEST, "late-1.pcap"])
    outbox.put(P2, {"call.json": b"{}"})               # a pending whole recording: its files
    assert outbox.list_files(P2) == ["call.json"]
    # signing on top of the outbox sees the pending version (its manifest)
    signing = SigningStore(outbox, key)
    signing.put(P2, FILES)
    signing.add(P2, {"late-1.pcap": b"late"})
    assert verify_recording(outbox, P2, [key.verify_key]).ok
    outbox.start()
    assert outbox.drain(10)
    outbox.stop()
    assert verify_recording(local, P2, [key.verify_key]).ok


# -- key files ----------------------------------------------------------------

def _write_key(path: Path, data: bytes, mode: int) -> Path:
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


def test_load_keys(tmp_path, key):
    priv = _write_key(tmp_path / "signing.key", key.pem(), 0o600)
    pub = _write_key(tmp_path / "signing.pub", key.verify_key.pem(), 0o644)
    assert load_signing_key(priv).key_id == key.key_id
    assert load_verify_key(pub).key_id == key.key_id
    assert isinstance(load_verify_key(str(pub)), VerifyKey)


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o660, 0o620])
def test_private_key_readable_by_others_is_refused(tmp_path, key, mode):
    priv = _write_key(tmp_path / "signing.key", key.pem(), mode)
    with pytest.raises(ManifestError) as exc:
        load_signing_key(priv)
    assert str(priv) in str(exc.value) and f"{mode:04o}" in str(exc.value) and "chmod 600" in str(exc.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")
def test_private_key_group_readable_only_when_root_owns_it(tmp_path, key):
    """root:fsGroup 0440 is how Kubernetes mounts a Secret: accepted; 0640 of
    another owner is not."""
    priv = _write_key(tmp_path / "signing.key", key.pem(), 0o440)
    os.chown(priv, 0, 10001)
    assert load_signing_key(priv).key_id == key.key_id
    os.chown(priv, 10001, 10001)
    with pytest.raises(ManifestError, match="accessible by group or others"):
        load_signing_key(priv)


def test_bad_key_files(tmp_path, key):
    with pytest.raises(ManifestError, match="does not exist"):
        load_signing_key(tmp_path / "missing.key")
    with pytest.raises(ManifestError, match="does not exist"):
        load_verify_key(tmp_path / "missing.pub")
    garbage = _write_key(tmp_path / "garbage.key", b"not a key", 0o600)
    with pytest.raises(ManifestError, match="not a PEM private key"):
        load_signing_key(garbage)
    pub = _write_key(tmp_path / "signing.pub", key.verify_key.pem(), 0o600)
    with pytest.raises(ManifestError, match="not a PEM private key"):
        load_signing_key(pub)
    priv = _write_key(tmp_path / "signing.key", key.pem(), 0o600)
    with pytest.raises(ManifestError, match="private key: give the .pub"):
        load_verify_key(priv)
    ecdsa = ec.generate_private_key(ec.SECP256R1())    # a make-certs key
    ec_priv = _write_key(tmp_path / "ec.key", ecdsa.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()), 0o600)
    with pytest.raises(ManifestError, match="not an Ed25519 private key"):
        load_signing_key(ec_priv)
    ec_pub = _write_key(tmp_path / "ec.pub", ecdsa.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo), 0o644)
    with pytest.raises(ManifestError, match="not an Ed25519 public key"):
        load_verify_key(ec_pub)
    with pytest.raises(ManifestError, match="not a regular file"):
        load_verify_key(tmp_path)
    if os.geteuid() != 0:                               # root reads anything
        unreadable = _write_key(tmp_path / "locked.key", key.pem(), 0o000)
        with pytest.raises(ManifestError, match="cannot read"):
            load_signing_key(unreadable)


# -- scripts/make-keys ----------------------------------------------------------

def _make_keys(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(MAKE_KEYS), *args], capture_output=True, text=True,
                          timeout=60)


def test_make_keys(tmp_path):
    assert os.access(MAKE_KEYS, os.X_OK)
    assert MAKE_KEYS.read_text().startswith("#!/usr/bin/env python3\n")
    out = tmp_path / "keys" / "deep"
    run = _make_keys("--out", str(out))
    assert run.returncode == 0, run.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert modes == {"signing.key": 0o600, "signing.pub": 0o644, "kek.key": 0o600, "s3-sse-c.key": 0o600}
    assert len(base64.b64decode((out / "s3-sse-c.key").read_text().strip(), validate=True)) == 32
    for name in modes:
        assert str(out / name) in run.stdout
    signing, verify = load_signing_key(out / "signing.key"), load_verify_key(out / "signing.pub")
    assert signing.key_id == verify.key_id and signing.key_id in run.stdout
    assert b"BEGIN PRIVATE KEY" in (out / "signing.key").read_bytes()     # PKCS8
    kek = (out / "kek.key").read_text()
    m = re.fullmatch(r"spanrec-kek-v1:([0-9a-f]{8}):([A-Za-z0-9+/]+=*)", kek)
    assert m, kek
    assert len(base64.b64decode(m.group(2), validate=True)) == 32
    assert m.group(1) in run.stdout

    # a manifest signed with it verifies with the .pub
    local = LocalStore(tmp_path / "rec", fsync=False)
    SigningStore(local, signing).put(P1, FILES)
    assert verify_recording(local, P1, [verify]).ok

    before = {p.name: p.read_bytes() for p in out.iterdir()}
    again = _make_keys("--out", str(out))
    assert again.returncode == 1 and "--force" in again.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    (out / "signing.key").unlink()                       # one file left: still refused, nothing written
    assert _make_keys("--out", str(out)).returncode == 1
    assert sorted(p.name for p in out.iterdir()) == ["kek.key", "s3-sse-c.key", "signing.pub"]
    forced = _make_keys("--out", str(out), "--force")
    assert forced.returncode == 0, forced.stderr
    assert (out / "signing.pub").read_bytes() != before["signing.pub"]
    assert (out / "kek.key").read_bytes() != before["kek.key"]
    assert sorted(p.name for p in out.iterdir()) == ["kek.key", "s3-sse-c.key", "signing.key", "signing.pub"]


# -- cost (printed, not asserted) ------------------------------------------------

def test_measure_signing_and_verification(tmp_path, key, capsys):
    n, size = 200, 1 << 20
    payload = os.urandom(size)
    recordings = []
    for i in range(n):
        audio = payload[i:] + payload[:i]               # distinct contents, ~1 MB each
        recordings.append((f"2024/03/01/20240301T000000Z-{i:012x}",
                           {"call.json": b'{"call_id": "%d"}' % i, "audio.wav": audio[: size - 64 * 1024],
                            "call.pcap": audio[-64 * 1024:]}))
    plain = LocalStore(tmp_path / "plain", fsync=False)
    signed = SigningStore(LocalStore(tmp_path / "signed", fsync=False), key)

    t0 = time.perf_counter()
    for prefix, files in recordings:
        build_manifest(prefix, files, key)
    t_manifest = time.perf_counter() - t0
    t_plain = t_signed = 0.0
    for prefix, files in recordings:                   # interleaved: same cache/disk state
        t0 = time.perf_counter()
        plain.put(prefix, files)
        t1 = time.perf_counter()
        signed.put(prefix, files)
        t_plain, t_signed = t_plain + t1 - t0, t_signed + time.perf_counter() - t1
    t0 = time.perf_counter()
    results = list(verify_since(signed.target, [key.verify_key], "2024-03-01"))
    t_verify = time.perf_counter() - t0
    assert len(results) == n and all(r.ok for _, r in results)
    with capsys.disabled():
        print(f"\n[manifest] {n} recordings of {size / 1e6:.2f} MB on a local folder (fsync off): "
              f"manifest (hash + sign) {t_manifest / n * 1e3:.2f} ms/recording; "
              f"put {t_plain / n * 1e3:.2f} ms plain vs {t_signed / n * 1e3:.2f} ms signed; "
              f"verification {n / t_verify:.0f} recordings/s ({n * size / t_verify / 1e6:.0f} MB/s)")

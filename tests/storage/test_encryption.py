"""Encryption at rest (storage/encryption.py): the file format, the keyring and
EncryptingStore on a local folder and a real S3 server (SeaweedFS)."""
from __future__ import annotations

import base64
import itertools
import os
import random
import struct
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage import LocalStore, RecordingStore, RetryPolicy, S3Store, StorageError, open_store
from storage.encryption import (CHUNK_SIZE, MAGIC, TAG_SIZE, EncryptingStore, EncryptionError,
                                FileKeyring, KeyProvider, decrypt, decrypt_range,
                                default_encrypt_names, encrypt_file, is_encrypted, load_keyring,
                                new_data_key, plain_size, read_header)

FAST_RETRY = RetryPolicy(attempts=3, initial=0.01, max_wait=0.05, connect_timeout=0.5, read_timeout=2.0)
_bucket_no = itertools.count()
PREFIX = "2024/03/01/20240301T003000Z-0123456789ab"
PATTERN = b"KNOWN-PLAINTEXT-PATTERN-0123456789"


def s3_store(server) -> S3Store:
    bucket = f"spanrec-enc-{next(_bucket_no)}-{time.monotonic_ns() % 10**9}"
    store = open_store(f"s3://{bucket}/rec", endpoint=f"http://{server.endpoint}",
                       access_key=server.access_key, secret_key=server.secret_key, retry=FAST_RETRY)
    assert isinstance(store, S3Store)
    return store


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def target(request, tmp_path) -> RecordingStore:
    """The store under the EncryptingStore (read directly: what a reader without keys sees)."""
    if request.param == "local":
        return LocalStore(tmp_path / "recordings", fsync=False)
    return s3_store(request.getfixturevalue("s3_server"))


def key_line(kid: str, key: bytes | None = None) -> str:
    return f"spanrec-kek-v1:{kid}:{base64.b64encode(key or os.urandom(32)).decode()}"


def key_file(folder: Path, kid: str, *, key: bytes | None = None, mode: int = 0o600) -> Path:
    path = folder / f"{kid}.kek"
    path.write_text(key_line(kid, key) + "\n")
    os.chmod(path, mode)
    return path


@pytest.fixture
def keys(tmp_path) -> dict[str, Path]:
    folder = tmp_path / "keys"
    folder.mkdir()
    return {kid: key_file(folder, kid) for kid in ("A", "B")}


def audio(n: int, seed: int = 1) -> bytes:
    """n bytes looking like audio, with the known pattern in it."""
    rnd = random.Random(seed)
    body = bytearray(rnd.randbytes(n))
    for pos in range(0, max(0, n - len(PATTERN)), 50_000):
        body[pos:pos + len(PATTERN)] = PATTERN
    return bytes(body)


def header_of(target: RecordingStore, prefix: str, name: str):
    return read_header(target.get_range(prefix, name, 0, 4096))


# -- round trips --------------------------------------------------------------

def test_put_get_bytes_and_path(target, keys, tmp_path):
    enc = EncryptingStore(target, FileKeyring(keys["A"]))
    big = tmp_path / "spill" / "call.pcap"
    big.parent.mkdir()
    pcap = audio(5 * 1024 * 1024, seed=2)
    big.write_bytes(pcap)
    wav = audio(640_044, seed=3)
    call_json = b'{"call_id": "abc@host", "note": "' + PATTERN + b'"}'
    location = enc.put(PREFIX, {"call.json": call_json, "audio.wav": wav, "call.pcap": big})
    assert location.endswith(PREFIX)
    assert sorted(p.name for p in big.parent.iterdir()) == ["call.pcap"]   # temp file removed
    assert enc.list_recordings() == [PREFIX]
    assert enc.get(PREFIX, "call.json") == call_json
    assert enc.get(PREFIX, "audio.wav") == wav
    assert enc.get(PREFIX, "call.pcap") == pcap
    assert enc.size(PREFIX, "audio.wav") == len(wav)
    assert enc.size(PREFIX, "call.pcap") == len(pcap)
    assert enc.size(PREFIX, "call.json") == len(call_json)
    # a reader without the key sees ciphertext, call.json stays plain (the index reads it)
    assert target.get(PREFIX, "call.json") == call_json
    for name, plain in (("audio.wav", wav), ("call.pcap", pcap)):
        raw = target.get(PREFIX, name)
        assert raw.startswith(MAGIC) and raw != plain and PATTERN not in raw and plain[:64] not in raw
        hdr = read_header(raw)
        assert hdr.kek_id == "A" and hdr.chunk_size == CHUNK_SIZE and hdr.plain_size == len(plain)
        assert len(raw) == hdr.encrypted_size == hdr.length + len(plain) + TAG_SIZE * hdr.chunks
    # one data key per recording (same wrapped key), a nonce prefix per file
    a, p = header_of(target, PREFIX, "audio.wav"), header_of(target, PREFIX, "call.pcap")
    assert a.wrapped == p.wrapped and a.nonce_prefix != p.nonce_prefix
    with pytest.raises(StorageError):
        enc.get(PREFIX, "missing.wav")
    with pytest.raises(StorageError):
        enc.size(PREFIX, "missing.wav")
    with pytest.raises(StorageError):
        enc.get_range(PREFIX, "missing.wav", 0, 0)


def test_add_and_put_again(target, keys):
    enc = EncryptingStore(target, FileKeyring(keys["A"]))
    wav = audio(100_000)
    enc.put(PREFIX, {"call.json": b"{}", "audio.wav": wav, "call.pcap": b"pcap"})
    late = audio(3000, seed=9)
    enc.add(PREFIX, {"late-1.pcap": late, "call.json": b'{"late": 1}'})
    assert enc.get(PREFIX, "late-1.pcap") == late and enc.get(PREFIX, "audio.wav") == wav
    assert target.get(PREFIX, "call.json") == b'{"late": 1}'
    assert is_encrypted(target.get(PREFIX, "late-1.pcap"))
    # add makes its own data key (documented choice): no read of the store on write
    assert header_of(target, PREFIX, "late-1.pcap").wrapped != header_of(target, PREFIX, "audio.wav").wrapped
    # put again replaces the file: the cached header of the old one must not get in the way
    assert enc.get_range(PREFIX, "audio.wav", 10, 5) == wav[10:15]
    wav2 = audio(90_000, seed=5)
    enc.put(PREFIX, {"call.json": b"{}", "audio.wav": wav2})
    assert enc.get_range(PREFIX, "audio.wav", 10, 5) == wav2[10:15]
    other = EncryptingStore(target, FileKeyring(keys["A"]))
    assert other.get_range(PREFIX, "audio.wav", 70_000, 10) == wav2[70_000:70_010]
    target.put(PREFIX, {"audio.wav": wav})   # replaced behind its back, by a plain file
    assert other.get_range(PREFIX, "audio.wav", 70_000, 10) == wav[70_000:70_010]


def test_default_names():
    assert [n for n in ("call.json", "audio.wav", "audio.flac", "audio.opus", "call.pcap",
                        "late-1.pcap", "late-12.pcap", "notes.txt", "late.pcap")
            if default_encrypt_names(n)] == \
        ["audio.wav", "audio.flac", "audio.opus", "call.pcap", "late-1.pcap", "late-12.pcap"]


@pytest.mark.parametrize("n", [0, 1, CHUNK_SIZE, 3 * CHUNK_SIZE, 5 * CHUNK_SIZE + 123])
def test_get_range_equals_slices(target, keys, n):
    enc = EncryptingStore(target, FileKeyring(keys["A"]))
    data = audio(n, seed=n)
    enc.put(PREFIX, {"audio.wav": data})
    assert enc.size(PREFIX, "audio.wav") == n
    c = CHUNK_SIZE
    ranges = [(0, 0), (0, 1), (0, n), (0, n + 1000), (0, 1 << 40), (n, 1), (n + 5, 10), (n, 0)]
    ranges += [(c - 1, 1), (c - 1, 2), (c, 1), (c, c), (c - 3, c + 6), (2 * c - 1, 2), (2 * c, 5)]
    if n:
        ranges += [(n - 1, 1), (n - 1, 10), (max(0, n - 2), 2), (max(0, n - c - 1), c + 1)]
    rnd = random.Random(n)
    ranges += [(rnd.randrange(n + 10), rnd.randrange(3 * c)) for _ in range(25)]
    for start, length in ranges:
        assert enc.get_range(PREFIX, "audio.wav", start, length) == data[start:start + length], (start, length)
    fresh = EncryptingStore(target, FileKeyring(keys["A"]))   # no cached header
    for start, length in ranges[::3]:
        assert fresh.get_range(PREFIX, "audio.wav", start, length) == data[start:start + length]
    with pytest.raises(ValueError):
        enc.get_range(PREFIX, "audio.wav", -1, 3)


# -- tampering and wrong keys ---------------------------------------------------

def _tamper(target, fn):
    raw = bytearray(target.get(PREFIX, "audio.wav"))
    target.add(PREFIX, {"audio.wav": bytes(fn(raw))})


def _flip(raw: bytearray) -> bytearray:
    hdr = read_header(raw)
    raw[hdr.chunk_offset(1) + 100] ^= 0x01
    return raw


def _swap(raw: bytearray) -> bytearray:
    hdr = read_header(raw)
    size = CHUNK_SIZE + TAG_SIZE
    a, b = hdr.chunk_offset(0), hdr.chunk_offset(1)
    raw[a:a + size], raw[b:b + size] = raw[b:b + size], raw[a:a + size]
    return raw


def _truncate(raw: bytearray) -> bytearray:
    return raw[:read_header(raw).chunk_offset(3)]   # three whole chunks left, the last one dropped


def _truncate_mid(raw: bytearray) -> bytearray:
    return raw[:-100]


def _header_size(raw: bytearray) -> bytearray:
    struct.pack_into(">Q", raw, 15, 2 * CHUNK_SIZE)   # claims 2 chunks: the old chunk 1 is not the last
    return raw[:read_header(raw).chunk_offset(2)]


@pytest.mark.parametrize("tamper", [_flip, _swap, _truncate, _truncate_mid, _header_size])
def test_tampering_detected(target, keys, tamper):
    enc = EncryptingStore(target, FileKeyring(keys["A"]))
    data = audio(3 * CHUNK_SIZE + 500)
    enc.put(PREFIX, {"audio.wav": data})
    assert enc.get_range(PREFIX, "audio.wav", 0, 10) == data[:10]     # header now cached
    _tamper(target, tamper)
    with pytest.raises(EncryptionError, match=rf"{PREFIX}/audio.wav"):
        enc.get(PREFIX, "audio.wav")
    fresh = EncryptingStore(target, FileKeyring(keys["A"]))
    for store in (enc, fresh):
        with pytest.raises(EncryptionError, match="audio.wav"):
            store.get_range(PREFIX, "audio.wav", CHUNK_SIZE, 3 * CHUNK_SIZE)   # chunks 1..3 (the last)
        if tamper in (_truncate, _truncate_mid, _header_size):
            with pytest.raises(EncryptionError, match="audio.wav"):   # past the end: the last chunk is checked
                store.get_range(PREFIX, "audio.wav", len(data) + 10, 5)


def test_truncation_leaves_earlier_ranges_readable(target, keys):
    """A range read only authenticates the chunks it reads: before the cut, the
    (authentic) plaintext is served; from the cut on, EncryptionError."""
    enc = EncryptingStore(target, FileKeyring(keys["A"]))
    data = audio(3 * CHUNK_SIZE + 500)
    enc.put(PREFIX, {"audio.wav": data})
    _tamper(target, _truncate)
    assert enc.get_range(PREFIX, "audio.wav", 100, CHUNK_SIZE) == data[100:100 + CHUNK_SIZE]
    with pytest.raises(EncryptionError, match="truncated"):
        enc.get_range(PREFIX, "audio.wav", 3 * CHUNK_SIZE - 1, 2)


def test_wrong_key_same_id(target, keys, tmp_path):
    EncryptingStore(target, FileKeyring(keys["A"])).put(PREFIX, {"audio.wav": audio(1000)})
    impostor = key_file(tmp_path, "A", key=os.urandom(32))   # another key under the id A
    enc = EncryptingStore(target, FileKeyring(impostor))
    with pytest.raises(EncryptionError, match=r"audio.wav: cannot decrypt: key-encryption key 'A'"):
        enc.get(PREFIX, "audio.wav")
    with pytest.raises(EncryptionError, match="does not unwrap"):
        enc.get_range(PREFIX, "audio.wav", 0, 10)
    assert enc.size(PREFIX, "audio.wav") == 1000   # the header's size needs no key


def test_rotation(target, keys):
    old = audio(200_000, seed=1)
    EncryptingStore(target, FileKeyring(keys["A"])).put(PREFIX, {"audio.wav": old, "call.json": b"{}"})
    rotated = EncryptingStore(target, FileKeyring(keys["B"], keys["A"]))
    assert rotated.keyring.current_id() == "B" and rotated.keyring.ids == ["B", "A"]
    assert rotated.get(PREFIX, "audio.wav") == old
    assert rotated.get_range(PREFIX, "audio.wav", 150_000, 100) == old[150_000:150_100]
    new_prefix = "2024/03/02/20240302T000000Z-aaaaaaaaaaaa"
    new = audio(50_000, seed=7)
    rotated.put(new_prefix, {"audio.wav": new})
    assert header_of(target, new_prefix, "audio.wav").kek_id == "B"
    assert header_of(target, PREFIX, "audio.wav").kek_id == "A"   # old recordings are not rewritten
    only_b = EncryptingStore(target, FileKeyring(keys["B"]))
    assert only_b.get(new_prefix, "audio.wav") == new
    with pytest.raises(EncryptionError, match=r"key-encryption key 'A', which is not in the keyring \(it holds 'B'\)"):
        only_b.get(PREFIX, "audio.wav")
    with pytest.raises(EncryptionError, match="'A', which is not in the keyring"):
        only_b.get_range(PREFIX, "audio.wav", 0, 100)


def test_plain_files_before_encryption(target, keys):
    wav = audio(700_000)
    target.put(PREFIX, {"call.json": b"{}", "audio.wav": wav, "call.pcap": b"\xd4\xc3\xb2\xa1tiny"})
    enc = EncryptingStore(target, FileKeyring(keys["A"]))
    assert enc.get(PREFIX, "audio.wav") == wav
    assert enc.size(PREFIX, "audio.wav") == len(wav) and enc.size(PREFIX, "call.pcap") == 8
    for start, length in [(0, 10), (100, 1000), (600_000, 1 << 20), (len(wav), 4), (0, 0)]:
        assert enc.get_range(PREFIX, "audio.wav", start, length) == wav[start:start + length]
    assert enc.get_range(PREFIX, "call.pcap", 2, 100) == b"\xb2\xa1tiny"
    enc.add(PREFIX, {"late-1.pcap": b"late packets"})     # a late file now is encrypted
    assert is_encrypted(target.get(PREFIX, "late-1.pcap"))
    assert enc.get(PREFIX, "late-1.pcap") == b"late packets" and enc.get(PREFIX, "audio.wav") == wav
    strict = EncryptingStore(target, FileKeyring(keys["A"]), allow_plain=False)
    assert strict.get(PREFIX, "call.json") == b"{}"
    with pytest.raises(EncryptionError, match="not encrypted"):
        strict.get(PREFIX, "audio.wav")


def test_forwarding(tmp_path, keys):
    target = LocalStore(tmp_path / "r", fsync=False)
    enc = EncryptingStore(target, FileKeyring(keys["A"]))
    enc.check()
    assert enc.url == target.url and enc.root == target.root and enc.fsync is False
    assert isinstance(enc, RecordingStore) and "kek='A'" in repr(enc)


# -- keys ---------------------------------------------------------------------

@pytest.mark.parametrize("mode", [0o644, 0o604, 0o610, 0o660, 0o620])
def test_key_file_mode_refused(tmp_path, mode):
    path = key_file(tmp_path, "A", mode=mode)
    with pytest.raises(EncryptionError) as err:
        FileKeyring(path)
    assert str(err.value).startswith(f"key file {path} is accessible by group or others "
                                     f"(mode {mode:04o}): run chmod 600 {path}")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")
def test_group_read_only_on_a_root_owned_key_file(tmp_path):
    """A Kubernetes Secret in a pod with an fsGroup is mounted root:fsGroup 0440:
    accepted; the same mode on a file another user owns is not."""
    for mode in (0o440, 0o640):
        path = key_file(tmp_path, "A", mode=mode)
        os.chown(path, 0, 10001)
        assert FileKeyring(path).ids == ["A"]
        os.chown(path, 10001, 10001)
        with pytest.raises(EncryptionError, match="accessible by group or others"):
            FileKeyring(path)
        path.unlink()


def test_key_file_format(tmp_path):
    key = os.urandom(32)
    b64 = base64.b64encode(key).decode()
    two = tmp_path / "two.kek"
    two.write_text(f"# spanrec keys, newest first\n\n{key_line('k2')}\r\nspanrec-kek-v1:k1:{b64}\n")
    two.chmod(0o400)
    ring = FileKeyring(two)
    assert ring.ids == ["k2", "k1"] and ring.current_id() == "k2"
    assert b64 not in repr(ring)
    for bad in ("spanrec-kek-v1:k1:" + base64.b64encode(os.urandom(16)).decode(),   # 16 bytes
                "spanrec-kek-v2:k1:" + b64, "spanrec-kek-v1::" + b64, "spanrec-kek-v1:a b:" + b64,
                "spanrec-kek-v1:k1:" + b64[:-4] + "!!!=", b64):
        path = tmp_path / "bad.kek"
        path.write_text(key_line("ok") + "\n" + bad + "\n")
        path.chmod(0o600)
        with pytest.raises(EncryptionError, match=r"bad.kek: line 2 is not a key-encryption key") as err:
            FileKeyring(path)
        assert b64 not in str(err.value) and b64[:20] not in str(err.value)
    dup = tmp_path / "dup.kek"
    dup.write_text(f"{key_line('x')}\n{key_line('x')}\n")
    dup.chmod(0o600)
    with pytest.raises(EncryptionError, match="given twice with different keys"):
        FileKeyring(dup)
    empty = tmp_path / "empty.kek"
    empty.write_text("# nothing\n")
    empty.chmod(0o600)
    with pytest.raises(EncryptionError, match="no key-encryption key found"):
        FileKeyring(empty)
    with pytest.raises(EncryptionError, match="cannot read it"):
        FileKeyring(tmp_path / "absent.kek")


def test_env_kek(monkeypatch, target, keys):
    key_a = base64.b64encode(os.urandom(32)).decode()
    monkeypatch.setenv("SPANREC_KEK", f"spanrec-kek-v1:env-a:{key_a}")
    ring = FileKeyring.from_env()
    assert ring is not None and ring.ids == ["env-a"]
    assert isinstance(ring, KeyProvider)
    data = audio(70_000)
    EncryptingStore(target, ring).put(PREFIX, {"audio.wav": data})
    assert header_of(target, PREFIX, "audio.wav").kek_id == "env-a"
    # two keys in the variable (rotation), separated by a newline or a space
    monkeypatch.setenv("SPANREC_KEK", f"{key_line('env-b')} spanrec-kek-v1:env-a:{key_a}")
    rotated = load_keyring()
    assert rotated is not None and rotated.ids == ["env-b", "env-a"]
    assert EncryptingStore(target, rotated).get(PREFIX, "audio.wav") == data
    monkeypatch.setenv("SPANREC_KEK", "spanrec-kek-v1:env-a:not-base64")
    with pytest.raises(EncryptionError, match="SPANREC_KEK: entry 1 is not a key-encryption key"):
        FileKeyring.from_env()
    monkeypatch.delenv("SPANREC_KEK")
    assert FileKeyring.from_env() is None and load_keyring() is None
    monkeypatch.setenv("SPANREC_KEK_FILE", str(keys["B"]))
    assert FileKeyring.from_env().ids == ["B"]
    assert load_keyring([keys["A"], keys["B"]]).ids == ["A", "B"]


# -- the functions --------------------------------------------------------------

@pytest.fixture(scope="module")
def ring() -> FileKeyring:
    return FileKeyring.from_text(key_line("A"))


def test_encrypt_file_path_streaming(tmp_path, ring):
    src = tmp_path / "audio.wav"
    data = audio(1_000_000)
    src.write_bytes(data)
    out = encrypt_file(src, ring)
    assert isinstance(out, Path) and out.parent == tmp_path and out.name.startswith(".audio.wav.")
    assert (out.stat().st_mode & 0o777) == 0o600
    blob = out.read_bytes()
    assert decrypt(blob, ring) == data and plain_size(blob[:512]) == len(data)
    assert PATTERN not in blob
    # bytes and Path give the same format
    assert decrypt(encrypt_file(data, ring), ring) == data
    reads: list[tuple[int, int]] = []

    def read(start: int, length: int) -> bytes:
        reads.append((start, length))
        return blob[start:start + length]

    mid = len(data) // 2
    assert decrypt_range(read, mid, 65536, ring) == data[mid:mid + 65536]
    assert len(reads) == 2 and reads[1][1] == 2 * (CHUNK_SIZE + TAG_SIZE)   # header, then 2 chunks


def test_shared_data_key_and_small_chunks(ring):
    dk = new_data_key(ring)
    assert "key=" not in repr(dk)
    a = encrypt_file(b"x" * 1000, ring, data_key=dk, chunk_size=100)
    b = encrypt_file(b"x" * 1000, ring, data_key=dk, chunk_size=100)
    ha, hb = read_header(a), read_header(b)
    assert ha.chunks == 10 and ha.wrapped == hb.wrapped and ha.nonce_prefix != hb.nonce_prefix
    assert a[ha.length:] != b[hb.length:]
    assert decrypt(a, ring) == decrypt(b, ring) == b"x" * 1000
    with pytest.raises(EncryptionError, match="followed by extra data"):
        decrypt(a + b"\0", ring)
    with pytest.raises(EncryptionError, match="my.wav: not an encrypted spanrec file"):
        decrypt(b"RIFF....", ring, name="my.wav")


# -- fuzzing: random input and mutations raise EncryptionError, never anything else --

_FUZZ_PLAIN = bytes(range(256)) * 3 + b"tail"          # 772 bytes: 7 chunks of 120, the last 52
_FUZZ_RING = FileKeyring.from_text(key_line("fuzz"))
_FUZZ_BLOB = encrypt_file(_FUZZ_PLAIN, _FUZZ_RING, chunk_size=120)
_FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _reader(blob: bytes):
    return lambda start, length: blob[start:start + length]


@st.composite
def mutated(draw) -> bytes:
    blob = bytearray(_FUZZ_BLOB)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete", "swap"]))
        pos = draw(st.integers(0, max(0, len(blob) - 1)))
        if kind == "flip" and blob:
            blob[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and blob:
            blob[pos] = draw(st.integers(0, 255))
        elif kind == "cut":
            del blob[pos:]
        elif kind == "insert":
            blob[pos:pos] = draw(st.binary(min_size=1, max_size=40))
        elif kind == "delete":
            del blob[pos:pos + draw(st.integers(1, 200))]
        elif kind == "swap":
            i, j = draw(st.integers(0, 6)), draw(st.integers(0, 6))
            hdr_len, size = read_header(_FUZZ_BLOB).length, 120 + TAG_SIZE
            a, b = hdr_len + i * size, hdr_len + j * size
            if b + size <= len(blob) and a + size <= len(blob) and i != j and 6 not in (i, j):
                blob[a:a + size], blob[b:b + size] = blob[b:b + size], blob[a:a + size]
    return bytes(blob)


def _header_like(draw_bytes: bytes) -> bytes:
    return MAGIC + b"\x01" + draw_bytes


@_FUZZ
@given(st.one_of(st.binary(max_size=600), st.binary(max_size=600).map(_header_like)),
       st.integers(0, 2000), st.integers(0, 2000))
def test_fuzz_random_bytes(blob, start, length):
    with pytest.raises(EncryptionError):
        decrypt(blob, _FUZZ_RING)
    with pytest.raises(EncryptionError):
        decrypt_range(_reader(blob), start, length or 1, _FUZZ_RING)


@_FUZZ
@given(mutated(), st.integers(0, 900), st.integers(0, 900))
def test_fuzz_mutations(blob, start, length):
    """Either the exact plaintext (the mutation changed nothing that is read) or
    EncryptionError; never other exceptions, never wrong data."""
    try:
        assert decrypt(blob, _FUZZ_RING) == _FUZZ_PLAIN
        assert blob == _FUZZ_BLOB
    except EncryptionError:
        pass
    try:
        assert decrypt_range(_reader(blob), start, length, _FUZZ_RING) == _FUZZ_PLAIN[start:start + length]
    except EncryptionError:
        pass


def test_fuzz_unmutated_ranges():
    for start in range(0, 800, 37):
        for length in (0, 1, 119, 120, 121, 500, 900):
            assert decrypt_range(_reader(_FUZZ_BLOB), start, length, _FUZZ_RING) == \
                _FUZZ_PLAIN[start:start + length]


# -- performance (printed, not asserted) ---------------------------------------

def test_performance_figures(tmp_path, ring, capsys):
    """Cost of encryption per recording (20 s and 1 h stereo 8 kHz 16-bit WAV)
    and the latency of a 64 KiB range in the middle of the 1-hour file."""
    lines = []
    for label, seconds in (("20 s", 20), ("1 h", 3600)):
        n = 44 + seconds * 8000 * 2 * 2
        data = os.urandom(n)
        reps = 20 if seconds == 20 else 2
        best = min(_timed(lambda: encrypt_file(data, ring)) for _ in range(reps))
        lines.append(f"encrypt {label} WAV bytes ({n / 1e6:.1f} MB): {best * 1e3:.1f} ms, {n / best / 1e6:.0f} MB/s")
        src = tmp_path / f"audio-{seconds}.wav"
        src.write_bytes(data)
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            out = encrypt_file(src, ring)
            times.append(time.perf_counter() - t)
            out.unlink()
        best = min(times)
        lines.append(f"encrypt {label} WAV as Path, streamed to a file: {best * 1e3:.1f} ms, {n / best / 1e6:.0f} MB/s")
        blob = encrypt_file(data, ring)
        best = min(_timed(lambda: decrypt(blob, ring)) for _ in range(reps))
        lines.append(f"decrypt {label} WAV whole: {best * 1e3:.1f} ms, {n / best / 1e6:.0f} MB/s")
    mid = n // 2
    read = _reader(blob)
    assert decrypt_range(read, mid, 65536, ring) == data[mid:mid + 65536]
    best = min(_timed(lambda: decrypt_range(read, mid, 65536, ring)) for _ in range(200))
    lines.append(f"decrypt_range 64 KiB mid 1 h file (header + unwrap + 2 chunks, in memory): {best * 1e6:.0f} us")
    store = LocalStore(tmp_path / "store", fsync=False)
    enc = EncryptingStore(store, ring)
    src.write_bytes(data)
    t = time.perf_counter()
    enc.put(PREFIX, {"audio.wav": src})
    lines.append(f"EncryptingStore.put 1 h WAV (Path) on LocalStore, no fsync: {(time.perf_counter() - t) * 1e3:.0f} ms")
    enc.size(PREFIX, "audio.wav")
    best = min(_timed(lambda: enc.get_range(PREFIX, "audio.wav", mid, 65536)) for _ in range(200))
    lines.append(f"EncryptingStore.get_range 64 KiB mid 1 h file, LocalStore, header cached: {best * 1e6:.0f} us")
    best = min(_timed(lambda: store.get_range(PREFIX, "audio.wav", mid, 65536)) for _ in range(200))
    lines.append(f"LocalStore.get_range 64 KiB of the ciphertext, for comparison: {best * 1e6:.0f} us")
    best = min(_timed(lambda: EncryptingStore(store, ring).get_range(PREFIX, "audio.wav", mid, 65536))
               for _ in range(200))
    lines.append(f"EncryptingStore.get_range 64 KiB mid 1 h file, LocalStore, cold (header read + unwrap): {best * 1e6:.0f} us")
    with capsys.disabled():
        print("\n" + "\n".join("  perf: " + line for line in lines))


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t

"""Encryption at rest of recording files (issue #15), with random access.

Two levels of keys (envelope encryption):

* a **data key** (256 bits, ``os.urandom(32)``) encrypts the files of one
  recording; it is stored in each file's header, wrapped (encrypted) by
* a **key-encryption key** (KEK) of a :class:`KeyProvider`: :class:`FileKeyring`
  reads them from key files or ``SPANREC_KEK``; a KMS can be plugged in later
  by implementing the same three methods.

Key-encryption keys, their key files and how a data key is wrapped:
storage/keys.py.

File format (all integers big-endian)::

    offset  size  field
    0       8     magic  b"SPANENC1"
    8       1     version (1)
    9       2     header length H (bytes, from offset 0, incl. the magic)
    11      4     chunk size C: plaintext bytes per chunk (default 64 KiB, <= 16 MiB)
    15      8     plaintext size P
    23      8     file nonce prefix (random per file)
    31      1     length n of the KEK id (1..255)
    32      n     KEK id (UTF-8)
    32+n    2     length m of the wrapped data key (1..1024)
    34+n    m     wrapped data key
    H       ...   chunks 0 .. N-1, N = max(1, ceil(P / C))

    chunk i = AES-256-GCM(data key,
                          nonce = file nonce prefix || uint32(i),
                          plaintext[i*C : (i+1)*C],
                          associated data = SHA-256(header) || uint32(i) || uint8(is last))
            = ciphertext || 16-byte tag, so the file is H + P + 16*N bytes.

This is the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár 2015):
the index in nonce and associated data stops reordering, the last-chunk flag
stops truncation at a chunk boundary, and the header digest authenticates
every header field (plaintext size, chunk size, KEK id, wrapped key) with each
chunk, so a modified header fails on the first chunk read.  An empty file
still has one (empty, last) chunk, so even it is authenticated.  Any chunk can
be decrypted alone: a range read costs the header plus the chunks it touches.

One data key per recording write: ``put`` makes a new data key and uses it
for all the files it encrypts, each file with its own random 8-byte nonce
prefix (nonce uniqueness: chunk indexes within a file, random prefixes between
files; the chance of two equal prefixes under one key is ~k^2/2^65 for k files).
``add`` (late-N.pcap) makes a new data key too, instead of unwrapping the one of
the recording's existing files: a write never depends on reading the store
(the store may be an outbox in front of an S3 that is down, or the old KEK may
have been retired from the writer), there is no read-modify race with a
concurrent ``put``, and late files get the *current* KEK after a rotation.
Nothing relies on the files of a recording sharing a key.

What is and is not protected
    Confidentiality and integrity of the encrypted files' contents.  call.json
    stays plain (the call index is built from it).  ``size`` reports the
    header's plaintext size without authenticating it (no key use, one small
    read); every read of the content authenticates it.  A file without the
    magic is served as it is (recordings written before encryption was turned
    on stay readable) - so someone who can write to the store can also replace
    an encrypted file by a plain one; ``allow_plain=False`` refuses plain files
    whose name would be encrypted.  Appending bytes after the last chunk is
    detected by :func:`decrypt` (whole file) but ignored by range reads (they
    only ever return authenticated plaintext).

Errors are :class:`EncryptionError`, a :class:`storage.base.StorageError`
(so code that handles storage failures handles these too), with one sentence
naming the file; key material never appears in messages or reprs.
"""
from __future__ import annotations

import hashlib
import os
import struct
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from storage.base import FileData, RecordingStore, StorageError, StoreWrapper, check_range
from storage.keys import KEY_SIZE, EncryptionError, FileKeyring, KeyProvider, load_keyring

__all__ = [
    "CHUNK_SIZE", "DataKey", "EncryptingStore", "EncryptionError", "FileKeyring", "Header",
    "KeyProvider", "MAGIC", "decrypt", "decrypt_range", "default_encrypt_names", "encrypt_file",
    "is_encrypted", "load_keyring", "new_data_key", "plain_size", "read_header",
]

MAGIC = b"SPANENC1"
VERSION = 1
CHUNK_SIZE = 64 * 1024            # plaintext bytes per chunk (default)
MAX_CHUNK_SIZE = 16 << 20         # a header asking for more is refused (memory bound)
TAG_SIZE = 16
NONCE_PREFIX_SIZE = 8
MAX_CHUNKS = 1 << 32              # 4-byte chunk index in the nonce
MAX_WRAPPED = 1024                # a KMS ciphertext blob is a few hundred bytes

_FIXED = struct.Struct(">8sBHIQ8sB")   # magic, version, H, C, P, nonce prefix, len(kek id)
_WRAP_LEN = struct.Struct(">H")
_INDEX = struct.Struct(">I")
_AD_TAIL = struct.Struct(">IB")
_MAX_HEADER = _FIXED.size + 255 + _WRAP_LEN.size + MAX_WRAPPED
_PROBE = 512                      # first read of a file: its whole header, usually


# -- the file format --------------------------------------------------------

@dataclass(frozen=True)
class Header:
    """The parsed header of an encrypted file (see the module doc)."""

    version: int
    length: int          # H: bytes of the header
    chunk_size: int      # C
    plain_size: int      # P
    nonce_prefix: bytes
    kek_id: str
    wrapped: bytes = field(repr=False)
    raw: bytes = field(repr=False)
    digest: bytes = field(repr=False)

    @property
    def chunks(self) -> int:
        """N: number of chunks (at least 1: an empty file has one empty chunk)."""
        return max(1, -(-self.plain_size // self.chunk_size))

    @property
    def encrypted_size(self) -> int:
        return self.length + self.plain_size + TAG_SIZE * self.chunks

    def chunk_offset(self, i: int) -> int:
        """Offset of chunk ``i`` in the encrypted file."""
        return self.length + i * (self.chunk_size + TAG_SIZE)

    def chunk_plain_size(self, i: int) -> int:
        return min(self.chunk_size, self.plain_size - i * self.chunk_size)

    def nonce(self, i: int) -> bytes:
        return self.nonce_prefix + _INDEX.pack(i)

    def associated_data(self, i: int) -> bytes:
        return self.digest + _AD_TAIL.pack(i, 1 if i == self.chunks - 1 else 0)


def is_encrypted(data: bytes | bytearray | memoryview) -> bool:
    """Whether data (a file, or its first bytes) starts with the format's magic."""
    return bytes(data[:len(MAGIC)]) == MAGIC


def _header_length(data: bytes | bytearray | memoryview, name: str) -> int:
    """H from the first 11 bytes of a file (magic and version checked)."""
    if not is_encrypted(data):
        raise EncryptionError(f"{name}: not an encrypted spanrec file (no {MAGIC.decode()} header)")
    if len(data) < 11:
        raise EncryptionError(f"{name}: truncated header ({len(data)} bytes)")
    if data[8] != VERSION:
        raise EncryptionError(f"{name}: unsupported encryption format version {data[8]} (this spanrec reads {VERSION})")
    length = int.from_bytes(data[9:11], "big")
    if not _FIXED.size + 1 + _WRAP_LEN.size + 1 <= length <= _MAX_HEADER:
        raise EncryptionError(f"{name}: invalid header length {length}")
    return length


def read_header(data: bytes | bytearray | memoryview, *, name: str = "encrypted file") -> Header:
    """Parse (not authenticate) the header at the start of ``data``, which may
    hold more of the file; :class:`EncryptionError` when it is no valid header."""
    length = _header_length(data, name)
    if len(data) < length:
        raise EncryptionError(f"{name}: truncated header ({len(data)} of {length} bytes)")
    raw = bytes(data[:length])
    _magic, version, _h, chunk_size, size, prefix, id_len = _FIXED.unpack_from(raw)
    pos = _FIXED.size
    if id_len == 0 or pos + id_len + _WRAP_LEN.size > length:
        raise EncryptionError(f"{name}: invalid key id length {id_len} in the header")
    try:
        kek_id = raw[pos:pos + id_len].decode("utf-8")
    except UnicodeDecodeError:
        raise EncryptionError(f"{name}: the key id in the header is not UTF-8") from None
    pos += id_len
    (wrap_len,) = _WRAP_LEN.unpack_from(raw, pos)
    pos += _WRAP_LEN.size
    if wrap_len == 0 or wrap_len > MAX_WRAPPED or pos + wrap_len != length:
        raise EncryptionError(f"{name}: invalid wrapped key length {wrap_len} in the header")
    if not 0 < chunk_size <= MAX_CHUNK_SIZE:
        raise EncryptionError(f"{name}: invalid chunk size {chunk_size} in the header")
    if size > chunk_size * MAX_CHUNKS:
        raise EncryptionError(f"{name}: invalid plaintext size {size} in the header")
    return Header(version, length, chunk_size, size, prefix, kek_id, raw[pos:], raw,
                  hashlib.sha256(raw).digest())


def plain_size(header_bytes: bytes | bytearray | memoryview) -> int:
    """Plaintext size of an encrypted file from its header (its first bytes;
    :data:`_PROBE` = 512 bytes hold any header a FileKeyring writes).  Not
    authenticated: reading the content is."""
    return read_header(header_bytes).plain_size


@dataclass(frozen=True)
class DataKey:
    """A data key and its wrapped form (what a file header stores)."""

    key: bytes = field(repr=False)
    kek_id: str
    wrapped: bytes = field(repr=False)


def new_data_key(keyring: KeyProvider) -> DataKey:
    """A random data key (``os.urandom(32)``), wrapped by the keyring's current KEK."""
    key = os.urandom(KEY_SIZE)
    kek_id, wrapped = keyring.wrap(key)
    id_bytes = kek_id.encode("utf-8")
    if not 0 < len(id_bytes) <= 255 or not 0 < len(wrapped) <= MAX_WRAPPED:
        raise EncryptionError(f"key provider returned an unusable key id or wrapped key "
                              f"({len(id_bytes)} and {len(wrapped)} bytes)")
    return DataKey(key, kek_id, bytes(wrapped))


def _new_header(dk: DataKey, size: int, chunk_size: int) -> Header:
    if not 0 < chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk size must be 1..{MAX_CHUNK_SIZE} bytes, got {chunk_size}")
    if size > chunk_size * MAX_CHUNKS:
        raise EncryptionError(f"{size} bytes are too many for chunks of {chunk_size} bytes")
    id_bytes = dk.kek_id.encode("utf-8")
    length = _FIXED.size + len(id_bytes) + _WRAP_LEN.size + len(dk.wrapped)
    prefix = os.urandom(NONCE_PREFIX_SIZE)
    raw = (_FIXED.pack(MAGIC, VERSION, length, chunk_size, size, prefix, len(id_bytes))
           + id_bytes + _WRAP_LEN.pack(len(dk.wrapped)) + dk.wrapped)
    return Header(VERSION, length, chunk_size, size, prefix, dk.kek_id, dk.wrapped, raw,
                  hashlib.sha256(raw).digest())


def _readinto_exact(fh: Any, view: memoryview) -> int:
    got = 0
    while got < len(view):
        n = fh.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def encrypt_file(data: FileData, keyring: KeyProvider, *, data_key: DataKey | None = None,
                 chunk_size: int = CHUNK_SIZE) -> bytes | Path:
    """The encrypted form of ``data``: bytes for bytes; for a Path, a new file
    beside it (``.<name>.*.spanenc``, mode 0600) written chunk by chunk - the
    caller owns and removes it.  ``data_key``: the recording's key (default: a
    new one from ``keyring``).  OSError as raised when the file cannot be read
    or written."""
    dk = data_key or new_data_key(keyring)
    aead = AESGCM(dk.key)
    if isinstance(data, (bytes, bytearray, memoryview)):
        view = memoryview(data).cast("B")
        hdr = _new_header(dk, len(view), chunk_size)
        out = bytearray(hdr.encrypted_size)
        _seal_into(view, hdr, aead, memoryview(out))
        return bytes(out)
    src = Path(data)
    with open(src, "rb") as fin:
        size = os.fstat(fin.fileno()).st_size
        hdr = _new_header(dk, size, chunk_size)
        fd, tmp = tempfile.mkstemp(prefix=f".{src.name}.", suffix=".spanenc", dir=src.parent)
        try:
            with os.fdopen(fd, "wb", buffering=1 << 20) as out:
                out.write(hdr.raw)
                buf = memoryview(bytearray(min(chunk_size, max(size, 1))))
                for i in range(hdr.chunks):
                    want = hdr.chunk_plain_size(i)
                    if _readinto_exact(fin, buf[:want]) != want:
                        raise EncryptionError(f"{src}: the file shrank while it was being encrypted")
                    out.write(aead.encrypt(hdr.nonce(i), buf[:want], hdr.associated_data(i)))
                if fin.read(1):
                    raise EncryptionError(f"{src}: the file grew while it was being encrypted")
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    return Path(tmp)


def _seal_into(view: memoryview, hdr: Header, aead: AESGCM, out: memoryview) -> None:
    """The encrypted file of plaintext ``view`` written into ``out`` (exactly
    ``hdr.encrypted_size`` bytes): header, then each chunk sealed in place
    (``encrypt_into``: no chunk is allocated or joined)."""
    out[:hdr.length] = hdr.raw
    pos, size = hdr.length, hdr.chunk_size
    for i in range(hdr.chunks):
        plain = view[i * size:(i + 1) * size]
        end = pos + len(plain) + TAG_SIZE
        aead.encrypt_into(hdr.nonce(i), plain, hdr.associated_data(i), out[pos:end])
        pos = end


class _OutputBuffer(threading.local):
    """One reusable output buffer per writing thread for the encrypted files
    of a put: a fresh ~1 MB allocation per recording costs more in page faults
    than the AES-GCM itself.  The buffer is only reused when nothing holds a
    view of it any more - a store below that kept the data (a queue, a retry
    list) keeps a view, resizing the bytearray then raises BufferError, and
    that buffer is left to it and never written again."""

    KEEP = 32 << 20          # a bigger put gets a buffer of its own, not kept

    def __init__(self) -> None:
        self.buf: bytearray | None = None

    def take(self, size: int) -> bytearray:
        buf, self.buf = self.buf, None
        if buf is None or len(buf) < size:
            buf = bytearray(size + (size >> 3))
        return buf

    def give(self, buf: bytearray) -> None:
        if len(buf) > self.KEEP:
            return
        try:
            buf.append(0)          # BufferError while any view of it is alive
            del buf[-1]
        except BufferError:
            return
        self.buf = buf


def _unwrap(hdr: Header, keyring: KeyProvider, name: str) -> AESGCM:
    try:
        key = keyring.unwrap(hdr.kek_id, hdr.wrapped)
    except EncryptionError as exc:
        raise EncryptionError(f"{name}: cannot decrypt: {exc}") from None
    if len(key) != KEY_SIZE:
        raise EncryptionError(f"{name}: cannot decrypt: the key provider returned a {len(key)}-byte data key")
    return AESGCM(key)


def _open_chunks(hdr: Header, aead: AESGCM, first: int, last: int,
                 data: bytes | memoryview, name: str) -> list[bytes]:
    """Plaintext of chunks first..last from their ciphertext ``data`` (read
    from the chunk_offset of `first`)."""
    view = memoryview(data)
    out: list[bytes] = []
    pos = 0
    for i in range(first, last + 1):
        size = hdr.chunk_plain_size(i) + TAG_SIZE
        if pos + size > len(view):
            raise EncryptionError(f"{name}: the file is truncated (chunk {i} of {hdr.chunks} is incomplete)")
        try:
            out.append(aead.decrypt(hdr.nonce(i), view[pos:pos + size], hdr.associated_data(i)))
        except InvalidTag:
            raise EncryptionError(f"{name}: chunk {i} of {hdr.chunks} failed authentication "
                                  f"(the file was modified, truncated or reordered, or the key is wrong)") from None
        pos += size
    return out


def decrypt(blob: bytes | bytearray | memoryview, keyring: KeyProvider, *,
            name: str = "encrypted file") -> bytes:
    """Plaintext of a whole encrypted file, every chunk and its length authenticated."""
    hdr = read_header(blob, name=name)
    if len(blob) != hdr.encrypted_size:
        what = "truncated" if len(blob) < hdr.encrypted_size else "followed by extra data"
        raise EncryptionError(f"{name}: the file is {what} ({len(blob)} bytes, the header "
                              f"announces {hdr.encrypted_size})")
    aead = _unwrap(hdr, keyring, name)
    return b"".join(_open_chunks(hdr, aead, 0, hdr.chunks - 1, memoryview(blob)[hdr.length:], name))


def _read_header_via(read: Callable[[int, int], bytes], name: str, probe: bytes | None = None) -> Header:
    data = read(0, _PROBE) if probe is None else probe
    length = _header_length(data, name)
    if len(data) < length:
        data = bytes(data) + read(len(data), length - len(data))
    return read_header(data, name=name)


def _range(hdr: Header, aead: Callable[[], AESGCM], read: Callable[[int, int], bytes],
           start: int, length: int, name: str) -> bytes:
    """Plaintext bytes start..start+length, reading only the chunks they touch.
    At or past the end, the last chunk is read and authenticated anyway, so an
    empty answer is never the result of a modified plaintext size."""
    if length == 0:
        return b""
    if start >= hdr.plain_size:
        first = last = hdr.chunks - 1
        end = start
    else:
        end = min(start + length, hdr.plain_size)
        first, last = start // hdr.chunk_size, (end - 1) // hdr.chunk_size
    offset = hdr.chunk_offset(first)
    want = hdr.chunk_offset(last) + hdr.chunk_plain_size(last) + TAG_SIZE - offset
    plain = _open_chunks(hdr, aead(), first, last, read(offset, want), name)
    if start >= hdr.plain_size:
        return b""
    skip = start - first * hdr.chunk_size
    if first == last:
        return plain[0][skip:skip + end - start]
    return b"".join(plain)[skip:skip + end - start]


def decrypt_range(read: Callable[[int, int], bytes], start: int, length: int,
                  keyring: KeyProvider, *, name: str = "encrypted file") -> bytes:
    """At most ``length`` plaintext bytes from offset ``start`` of an encrypted
    file read through ``read(offset, length)`` (a ranged read of the encrypted
    file: fewer bytes at its end): the header, then only the chunks the range
    touches.  ``b""`` past the end, as for ``RecordingStore.get_range``."""
    start, length = check_range(start, length)
    hdr = _read_header_via(read, name)
    return _range(hdr, lambda: _unwrap(hdr, keyring, name), read, start, length, name)


# -- the store wrapper --------------------------------------------------------

def default_encrypt_names(name: str) -> bool:
    """The files encrypted by default: audio.*, call.pcap and late-*.pcap
    (call.json stays plain: the call index is built from it)."""
    return name.startswith("audio.") or name == "call.pcap" or fnmatchcase(name, "late-*.pcap")


class _Opened:
    """A header read from the store and, once needed, its unwrapped data key."""

    __slots__ = ("header", "aead")

    def __init__(self, header: Header) -> None:
        self.header = header
        self.aead: AESGCM | None = None


class EncryptingStore(StoreWrapper):
    """A RecordingStore that encrypts files on write and decrypts them on read.

    ``put``/``add`` encrypt the files ``encrypt_names(name)`` selects with one
    new data key per call (see the module doc); ``get``/``size``/``get_range``
    decrypt any file with the magic (``size``: plaintext size; ``get_range``:
    the header, then only the chunks the range needs) and return other files
    as stored (unless ``allow_plain=False``).  Everything else is forwarded.

    Headers (and unwrapped data keys) of recently read files are cached
    (``cache_size`` entries), so the web player's sequence of range requests
    costs one store read each.  A cached header is only a hint: were the file
    replaced, its chunks fail authentication under the old header, and the read
    is retried once with the header read again.
    """

    def __init__(self, target: RecordingStore, keyring: KeyProvider, *,
                 encrypt_names: Callable[[str], bool] = default_encrypt_names,
                 chunk_size: int = CHUNK_SIZE, allow_plain: bool = True, cache_size: int = 256) -> None:
        if not 0 < chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk size must be 1..{MAX_CHUNK_SIZE} bytes, got {chunk_size}")
        super().__init__(target)
        self.keyring = keyring
        self.encrypt_names = encrypt_names
        self.chunk_size = chunk_size
        self.allow_plain = allow_plain
        self._cache_size = cache_size
        self._cache: OrderedDict[tuple[str, str], _Opened] = OrderedDict()
        self._lock = threading.Lock()
        self._output = _OutputBuffer()

    def __repr__(self) -> str:
        return f"EncryptingStore({self.target!r}, kek={self.keyring.current_id()!r})"

    def _where(self, prefix: str, name: str) -> str:
        return f"{self.url.rstrip('/')}/{prefix}/{name}"

    # -- writing -------------------------------------------------------------
    def put(self, prefix: str, files: dict[str, FileData]) -> str:
        return self._write(prefix, files, self.target.put)

    def add(self, prefix: str, files: dict[str, FileData]) -> str:
        return self._write(prefix, files, self.target.add)

    def _write(self, prefix: str, files: dict[str, FileData],
               write: Callable[[str, dict[str, FileData]], str]) -> str:
        names = [n for n in files if self.encrypt_names(n)]
        self._forget(prefix)
        if not names:
            return write(prefix, dict(files))
        started = time.thread_time()
        dk = new_data_key(self.keyring)
        out = dict(files)
        temps: list[Path] = []
        # files in memory are sealed into this thread's reusable buffer, one
        # after the other; files on disk (long calls) into temporary files
        in_memory = [(n, _new_header(dk, len(files[n]), self.chunk_size)) for n in names
                     if isinstance(files[n], (bytes, bytearray, memoryview))]
        buf = self._output.take(sum(h.encrypted_size for _, h in in_memory)) if in_memory else None
        views: list[memoryview] = []
        try:
            if buf is not None:
                whole = memoryview(buf)
                views.append(whole)
                aead, pos = AESGCM(dk.key), 0
                for n, hdr in in_memory:
                    view = whole[pos:pos + hdr.encrypted_size]
                    views.append(view)
                    _seal_into(memoryview(files[n]).cast("B"), hdr, aead, view)
                    out[n] = view
                    pos += hdr.encrypted_size
            for n in names:
                if isinstance(files[n], (bytes, bytearray, memoryview)):
                    continue
                try:
                    enc = encrypt_file(files[n], self.keyring, data_key=dk, chunk_size=self.chunk_size)
                except OSError as exc:
                    raise StorageError(f"{self._where(prefix, n)}: cannot encrypt: {exc.strerror or exc}") from exc
                temps.append(enc)  # type: ignore[arg-type]
                out[n] = enc
            sealed = time.thread_time()
            self._count_cpu(sealed - started)
            return write(prefix, out)
        finally:
            out.clear()
            for view in reversed(views):
                try:
                    view.release()
                except BufferError:
                    pass
            if buf is not None:
                self._output.give(buf)
            for tmp in temps:
                try:
                    tmp.unlink()
                except OSError:
                    pass
            self._forget(prefix)

    # -- reading ---------------------------------------------------------------
    def _plain(self, prefix: str, name: str) -> None:
        if not self.allow_plain and self.encrypt_names(name):
            raise EncryptionError(f"{self._where(prefix, name)}: not encrypted, and plain files are not allowed")

    def get(self, prefix: str, name: str) -> bytes:
        data = self.target.get(prefix, name)
        if not is_encrypted(data):
            self._plain(prefix, name)
            return data
        return decrypt(data, self.keyring, name=self._where(prefix, name))

    def size(self, prefix: str, name: str) -> int:
        probe = self.target.get_range(prefix, name, 0, _PROBE)
        if not is_encrypted(probe):
            self._plain(prefix, name)
            return len(probe) if len(probe) < _PROBE else self.target.size(prefix, name)
        return self._load(prefix, name, probe).header.plain_size

    def get_range(self, prefix: str, name: str, start: int, length: int) -> bytes:
        start, length = check_range(start, length)
        where = self._where(prefix, name)
        cached = self._cached(prefix, name)
        # a range that needs no chunk must still find an absent file: no cache then
        if cached is not None and length and start < cached.header.plain_size:
            try:
                return self._read(prefix, name, cached, start, length, where)
            except EncryptionError:
                self._forget(prefix, name)   # replaced meanwhile? read its header again
        probe = self.target.get_range(prefix, name, 0, _PROBE)
        if not is_encrypted(probe):
            self._plain(prefix, name)
            if len(probe) < _PROBE or start + length <= len(probe):
                return probe[start:start + length]
            return self.target.get_range(prefix, name, start, length)
        return self._read(prefix, name, self._load(prefix, name, probe), start, length, where)

    def _read(self, prefix: str, name: str, opened: _Opened, start: int, length: int, where: str) -> bytes:
        def aead() -> AESGCM:
            if opened.aead is None:
                opened.aead = _unwrap(opened.header, self.keyring, where)
            return opened.aead

        return _range(opened.header, aead, lambda s, n: self.target.get_range(prefix, name, s, n),
                      start, length, where)

    def _load(self, prefix: str, name: str, probe: bytes) -> _Opened:
        """The header of a file from its first bytes (read more if needed), cached."""
        hdr = _read_header_via(lambda s, n: self.target.get_range(prefix, name, s, n),
                               self._where(prefix, name), probe)
        with self._lock:
            old = self._cache.get((prefix, name))
            if old is not None and old.header.raw == hdr.raw:
                self._cache.move_to_end((prefix, name))
                return old                          # keeps its unwrapped key
            opened = self._cache[(prefix, name)] = _Opened(hdr)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
            return opened

    def _cached(self, prefix: str, name: str) -> _Opened | None:
        with self._lock:
            opened = self._cache.get((prefix, name))
            if opened is not None:
                self._cache.move_to_end((prefix, name))
            return opened

    def _forget(self, prefix: str, name: str | None = None) -> None:
        with self._lock:
            for key in [k for k in self._cache if k[0] == prefix and (name is None or k[1] == name)]:
                del self._cache[key]

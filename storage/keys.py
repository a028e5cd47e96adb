"""Key-encryption keys (KEKs) for encryption at rest (issue #15).

A :class:`KeyProvider` wraps and unwraps the data keys of recordings
(storage/encryption.py) and of write-ahead log segments
(controller/ingest/wal.py): :class:`FileKeyring` holds local keys from key
files or ``SPANREC_KEK``; a KMS plugs in by implementing the same three
methods (``current_id``, ``wrap``, ``unwrap``).

Key lines
    ``spanrec-kek-v1:<key-id>:<base64 of 32 bytes>`` (what scripts/make-keys
    writes), one per line; blank lines and ``#`` comments are ignored.  The
    FIRST key given is current (wraps the data keys of new recordings), the
    others only unwrap: to rotate, put a new key first and keep the old ones -
    old recordings are never rewritten and stay readable while their KEK is in
    the keyring.  Key files accessible by others, or by the group unless root
    owns them (a Kubernetes Secret), are refused (storage/files.py).

Wrapping a data key
    AES-256-GCM under the KEK with a random 96-bit nonce; associated data
    ``b"spanrec-kek-wrap-v1\\0" + kek_id``; stored as nonce || ciphertext || tag
    (60 bytes).  Chosen over AES key wrap (RFC 3394) because it is the same
    primitive and library call as the data encryption, and its associated data
    binds the wrapped key to its KEK id (and this format), which RFC 3394
    cannot.  Random nonces are safe far beyond our rate: one wrap per recording
    (or per ``add``), and the NIST bound of 2^32 random-nonce messages per key
    is ~4 billion recordings per KEK.  The 28 extra bytes per file do not matter.

Errors are :class:`EncryptionError` (a :class:`storage.base.StorageError`),
one sentence naming the key file or variable; key material never appears in
messages or reprs.
"""
from __future__ import annotations

import base64
import binascii
import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from storage import files as filemodes
from storage.base import StorageError

__all__ = ["ENV_VAR", "EncryptionError", "FileKeyring", "KEK_LINE_PREFIX", "KEY_SIZE", "KeyProvider",
           "load_keyring"]

KEY_SIZE = 32                     # AES-256
KEK_LINE_PREFIX = "spanrec-kek-v1"
ENV_VAR = "SPANREC_KEK"
_WRAP_NONCE = 12
_WRAP_AD = b"spanrec-kek-wrap-v1\0"


class EncryptionError(StorageError):
    """A file cannot be encrypted or decrypted: modified, truncated, not
    encrypted, or the key to read it is missing or wrong; or a key file is
    unusable.  One sentence naming the file; never key material."""


# -- key-encryption keys ------------------------------------------------------

@runtime_checkable
class KeyProvider(Protocol):
    """Wraps and unwraps data keys with key-encryption keys (KEKs): a keyring
    of local keys (:class:`FileKeyring`) or, later, a KMS."""

    def current_id(self) -> str:
        """Id of the KEK that :meth:`wrap` uses (new recordings)."""
        ...

    def wrap(self, data_key: bytes) -> tuple[str, bytes]:
        """(KEK id, wrapped data key) under the current KEK."""
        ...

    def unwrap(self, kek_id: str, wrapped: bytes) -> bytes:
        """The data key wrapped by KEK ``kek_id``; :class:`EncryptionError` when
        that KEK is unknown or does not unwrap it."""
        ...


def _valid_kek_id(kek_id: str) -> bool:
    """1..128 printable ASCII characters, no ':' ',' or whitespace."""
    return 0 < len(kek_id) <= 128 and all("!" <= ch <= "~" and ch not in ":," for ch in kek_id)


def _parse_key_line(line: str) -> tuple[str, bytes] | None:
    """(id, 32-byte key) of a ``spanrec-kek-v1:<id>:<base64>`` line, else None."""
    head, sep, b64 = line.rpartition(":")
    tag, sep2, kek_id = head.partition(":")
    if not sep or not sep2 or tag != KEK_LINE_PREFIX or not _valid_kek_id(kek_id):
        return None
    text = b64.strip()
    try:
        alt = b"-_" if ("-" in text or "_" in text) else None
        key = base64.b64decode(text + "=" * (-len(text) % 4), altchars=alt, validate=True)
    except (binascii.Error, ValueError):
        return None
    return (kek_id, key) if len(key) == KEY_SIZE else None


def _read_key_file(path: Path) -> str:
    """Text of a key file, refused when group or others may access it."""
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise EncryptionError(f"key file {path} is not a regular file")
            problem = filemodes.key_file_problem(st, path)
            if problem:
                raise EncryptionError(f"key file {problem}")
            raw = fh.read(1 << 20)
    except OSError as exc:
        raise EncryptionError(f"key file {path}: cannot read it: {exc.strerror or exc}") from None
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise EncryptionError(f"key file {path} is not a text file of "
                              f"{KEK_LINE_PREFIX}:<key-id>:<base64 of 32 bytes> lines") from None


class FileKeyring:
    """KEKs from key files and/or ``SPANREC_KEK``-style text; the first key is current.

    ``FileKeyring(path, ...)`` reads the files in order (each may hold several
    key lines); :meth:`from_text` parses the same lines from a string (an
    environment variable: lines may also be separated by spaces or commas);
    :meth:`from_env` reads ``SPANREC_KEK`` or the file(s) in ``SPANREC_KEK_FILE``.
    """

    def __init__(self, *paths: str | os.PathLike[str]) -> None:
        if not paths:
            raise EncryptionError("no key file given: a keyring needs at least one key-encryption key")
        self._init([(f"key file {Path(p)}", [(f"line {no}", line) for no, line in
                                             enumerate(_read_key_file(Path(p)).splitlines(), 1)])
                    for p in paths])

    @classmethod
    def from_text(cls, text: str, source: str = ENV_VAR) -> FileKeyring:
        """Keys from text (one ``spanrec-kek-v1:...`` item per line, or separated
        by spaces/commas); ``source`` names it in messages."""
        items = [item for line in text.splitlines() if not line.strip().startswith("#")
                 for item in line.replace(",", " ").split()]
        self = cls.__new__(cls)
        self._init([(source, [(f"entry {no}", item) for no, item in enumerate(items, 1)])])
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> FileKeyring | None:
        """``SPANREC_KEK`` (key lines), else ``SPANREC_KEK_FILE`` (key files,
        separated by ``os.pathsep``); None when neither is set."""
        env = os.environ if environ is None else environ
        text = env.get(ENV_VAR, "")
        if text.strip():
            return cls.from_text(text, ENV_VAR)
        files = [p for p in env.get(ENV_VAR + "_FILE", "").split(os.pathsep) if p.strip()]
        return cls(*files) if files else None

    def _init(self, sources: list[tuple[str, list[tuple[str, str]]]]) -> None:
        keys: dict[str, bytes] = {}
        for source, lines in sources:
            for where, line in lines:
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                parsed = _parse_key_line(line)
                if parsed is None:
                    raise EncryptionError(
                        f"{source}: {where} is not a key-encryption key "
                        f"({KEK_LINE_PREFIX}:<key-id>:<base64 of 32 bytes>)")
                kek_id, key = parsed
                if keys.get(kek_id, key) != key:
                    raise EncryptionError(f"{source}: key id {kek_id!r} is given twice with different keys")
                keys.setdefault(kek_id, key)
        if not keys:
            names = ", ".join(s for s, _ in sources)
            raise EncryptionError(f"{names}: no key-encryption key found")
        self._current = next(iter(keys))
        self._keys = {kek_id: AESGCM(key) for kek_id, key in keys.items()}

    def __repr__(self) -> str:
        return f"FileKeyring(current={self._current!r}, ids={self.ids!r})"

    @property
    def ids(self) -> list[str]:
        """KEK ids, the current one first."""
        return list(self._keys)

    def current_id(self) -> str:
        return self._current

    def wrap(self, data_key: bytes) -> tuple[str, bytes]:
        if len(data_key) != KEY_SIZE:
            raise EncryptionError(f"a data key has {KEY_SIZE} bytes, not {len(data_key)}")
        nonce = os.urandom(_WRAP_NONCE)
        ad = _WRAP_AD + self._current.encode()
        return self._current, nonce + self._keys[self._current].encrypt(nonce, bytes(data_key), ad)

    def unwrap(self, kek_id: str, wrapped: bytes) -> bytes:
        aead = self._keys.get(kek_id)
        if aead is None:
            raise EncryptionError(f"its data key is wrapped by key-encryption key {kek_id!r}, which is "
                                  f"not in the keyring (it holds {', '.join(map(repr, self._keys))})")
        try:
            key = aead.decrypt(bytes(wrapped[:_WRAP_NONCE]), bytes(wrapped[_WRAP_NONCE:]),
                               _WRAP_AD + kek_id.encode())
        except (InvalidTag, ValueError):
            key = b""
        if len(key) != KEY_SIZE:
            raise EncryptionError(f"key-encryption key {kek_id!r} of the keyring does not unwrap its data "
                                  f"key (a different key under the same id, or a modified header)")
        return key


def load_keyring(paths: Iterable[str | os.PathLike[str]] = (), *,
                 environ: Mapping[str, str] | None = None) -> FileKeyring | None:
    """The keyring of key files ``paths`` if any, else of the environment
    (:meth:`FileKeyring.from_env`); None: encryption is off."""
    paths = list(paths)
    return FileKeyring(*paths) if paths else FileKeyring.from_env(environ)

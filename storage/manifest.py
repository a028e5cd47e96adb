"""Tamper evidence: a signed manifest in every recording folder (issue #15).

Each recording folder holds ``manifest.json``::

    {"version": 1,
     "recording": "2024/03/01/20240301T003000Z-0123456789ab",
     "created_at": "2024-03-01T00:31:02Z",
     "files": {"audio.wav": {"sha256": "<64 hex>", "size": 1234}, ...},
     "key_id": "<16 hex>",
     "signature": "<base64>"}

``files`` lists every file of the folder except manifest.json itself;
``key_id`` is the first 16 hex digits of SHA-256 of the signer's raw Ed25519
public key (32 bytes), so verification picks the right key after a rotation;
``signature`` is the Ed25519 signature over the canonical JSON of the object
without ``signature`` (``sort_keys``, separators ``(",", ":")``,
``ensure_ascii=False``, UTF-8). How the file itself is laid out (indentation)
does not matter: the signed bytes are rebuilt from the parsed object.

`SigningStore` wraps a `RecordingStore` and writes the manifest together with
the files (in the same put/add); `verify_recording` / `verify_since` check
folders against it, reading big files in 1 MiB ranges.

Keys (``scripts/make-keys``): the private key is PEM PKCS8 and must be mode
0600 (no group/other bits); the public key is PEM SubjectPublicKeyInfo.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import re
import stat
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from storage import files as filemodes
from storage.base import FileData, RecordingStore, StorageError, StoreWrapper
from storage.layout import valid_name, valid_prefix

log = logging.getLogger("spanrec.storage.manifest")

MANIFEST = "manifest.json"
VERSION = 1
CHUNK = 1 << 20          # files are hashed / read back in 1 MiB pieces

_HEX64 = re.compile(r"[0-9a-f]{64}")
_KEYS = frozenset({"version", "recording", "created_at", "files", "key_id", "signature"})


class ManifestError(Exception):
    """A key cannot be used (missing, unreadable, wrong type, too open) or a
    manifest cannot be built; the message is one sentence naming the file."""


# -- keys -------------------------------------------------------------------

def key_id_of(public_key: Ed25519PublicKey) -> str:
    """First 16 hex digits of SHA-256 of the raw (32-byte) public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


class VerifyKey:
    """An Ed25519 public key and its key id."""

    def __init__(self, public_key: Ed25519PublicKey) -> None:
        if not isinstance(public_key, Ed25519PublicKey):
            raise TypeError("VerifyKey needs an Ed25519 public key")
        self.public_key = public_key
        self.key_id = key_id_of(public_key)

    def __repr__(self) -> str:
        return f"VerifyKey({self.key_id})"

    def verify(self, signature: bytes, data: bytes) -> bool:
        try:
            self.public_key.verify(signature, data)
        except InvalidSignature:
            return False
        return True

    def pem(self) -> bytes:
        return self.public_key.public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)


class SigningKey:
    """An Ed25519 private key; ``verify_key`` / ``key_id`` of its public half."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        if not isinstance(private_key, Ed25519PrivateKey):
            raise TypeError("SigningKey needs an Ed25519 private key")
        self.private_key = private_key
        self.verify_key = VerifyKey(private_key.public_key())
        self.key_id = self.verify_key.key_id

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    def __repr__(self) -> str:
        return f"SigningKey({self.key_id})"

    def sign(self, data: bytes) -> bytes:
        return self.private_key.sign(data)

    def pem(self) -> bytes:
        """PEM PKCS8, unencrypted (what scripts/make-keys writes)."""
        return self.private_key.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption())


def _read_key_file(path: Path, what: str, private: bool) -> bytes:
    try:
        with open(path, "rb") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise ManifestError(f"{what} {path} is not a regular file.")
            problem = filemodes.key_file_problem(os.fstat(fh.fileno()), path) if private else None
            if problem:
                raise ManifestError(f"{what} {problem}.")
            return fh.read()
    except FileNotFoundError:
        raise ManifestError(f"{what} {path} does not exist.") from None
    except IsADirectoryError:
        raise ManifestError(f"{what} {path} is not a regular file.") from None
    except OSError as exc:
        raise ManifestError(f"cannot read {what} {path}: {exc.strerror or exc}.") from None


def load_signing_key(path: Path | str) -> SigningKey:
    """The Ed25519 private key (PEM PKCS8, unencrypted, mode 0600) at `path`."""
    path = Path(path)
    what = "signing key file"
    data = _read_key_file(path, what, private=True)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # password-protected
        raise ManifestError(f"{what} {path} is encrypted: spanrec needs an unencrypted PEM PKCS8 "
                            f"Ed25519 key (scripts/make-keys).") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ManifestError(f"{what} {path} is not a PEM private key "
                            f"(expected an Ed25519 key in PKCS8, from scripts/make-keys).") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ManifestError(f"{what} {path} holds a {_kind(key)} key, not an Ed25519 private key.")
    return SigningKey(key)


def load_verify_key(path: Path | str) -> VerifyKey:
    """The Ed25519 public key (PEM SubjectPublicKeyInfo) at `path`."""
    path = Path(path)
    what = "verify key file"
    data = _read_key_file(path, what, private=False)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        hint = " (it is a private key: give the .pub file)" if b"PRIVATE KEY" in data else ""
        raise ManifestError(f"{what} {path} is not a PEM public key{hint}.") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ManifestError(f"{what} {path} holds a {_kind(key)} key, not an Ed25519 public key.")
    return VerifyKey(key)


def _kind(key: object) -> str:
    name = type(key).__name__.lstrip("_")
    for suffix in ("PrivateKey", "PublicKey"):
        name = name.removesuffix(suffix)
    return name or "different"


def _key_table(keys: Mapping[str, VerifyKey] | Iterable[VerifyKey] | VerifyKey) -> dict[str, VerifyKey]:
    """key id -> key from a dict (its ids must be the keys' ids), a list or one key."""
    if isinstance(keys, VerifyKey):
        return {keys.key_id: keys}
    if isinstance(keys, SigningKey):
        return {keys.key_id: keys.verify_key}
    if isinstance(keys, Mapping):
        for kid, key in keys.items():
            if kid != key.key_id:
                raise ManifestError(f"verify key given as {kid!r} has key id {key.key_id}.")
        return dict(keys)
    table: dict[str, VerifyKey] = {}
    for key in keys:
        key = key.verify_key if isinstance(key, SigningKey) else key
        table[key.key_id] = key
    return table


# -- manifest ---------------------------------------------------------------

def canonical(obj: dict[str, Any]) -> bytes:
    """The bytes a signature covers: `obj` without "signature", canonical JSON."""
    body = {k: v for k, v in obj.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def hash_data(data: FileData) -> dict[str, Any]:
    """``{"sha256": hex, "size": n}`` of bytes, or of a file read in 1 MiB chunks."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    digest, size = hashlib.sha256(), 0
    with open(data, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return {"sha256": digest.hexdigest(), "size": size}


def hash_stored(store: RecordingStore, prefix: str, name: str) -> dict[str, Any]:
    """``{"sha256", "size"}`` of a stored file, read with get_range in 1 MiB pieces."""
    total = store.size(prefix, name)
    digest, offset = hashlib.sha256(), 0
    while offset < total:
        chunk = store.get_range(prefix, name, offset, min(CHUNK, total - offset))
        if not chunk:       # shrank meanwhile: the hash then tells
            break
        digest.update(chunk)
        offset += len(chunk)
    return {"sha256": digest.hexdigest(), "size": offset}


def sign_manifest(prefix: str, entries: Mapping[str, Mapping[str, Any]], key: SigningKey,
                  created_at: datetime | None = None) -> dict[str, Any]:
    """The manifest object of a recording whose files have these entries."""
    when = (created_at or datetime.now(timezone.utc)).astimezone(timezone.utc)
    obj: dict[str, Any] = {
        "version": VERSION,
        "recording": valid_prefix(prefix),
        "created_at": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "files": {name: {"sha256": e["sha256"], "size": int(e["size"])}
                  for name, e in sorted(entries.items())},
        "key_id": key.key_id,
    }
    obj["signature"] = base64.b64encode(key.sign(canonical(obj))).decode("ascii")
    return obj


def manifest_bytes(obj: dict[str, Any]) -> bytes:
    """manifest.json as written: indented for people, UTF-8, newline-terminated."""
    return (json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def build_manifest(prefix: str, files: Mapping[str, FileData], key: SigningKey) -> bytes:
    """manifest.json (bytes) for a recording that holds exactly `files`."""
    if MANIFEST in files:
        raise ManifestError(f"{MANIFEST} is written by the signing store, not given as a file.")
    return manifest_bytes(sign_manifest(prefix, {n: hash_data(d) for n, d in files.items()}, key))


def _parse(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    """The manifest object, or None and one sentence saying what is wrong."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None, f"{MANIFEST} is not valid JSON."
    if not isinstance(obj, dict):
        return None, f"{MANIFEST} is not a JSON object."
    missing = sorted(_KEYS - obj.keys())
    if missing:
        return None, f"{MANIFEST} lacks {', '.join(missing)}."
    if obj["version"] != VERSION:
        return None, f"{MANIFEST} has unsupported version {obj['version']!r} (expected {VERSION})."
    files = obj["files"]
    if not isinstance(files, dict) or not all(isinstance(k, str) for k in (obj["recording"], obj["key_id"],
                                                                             obj["signature"])):
        return None, f"{MANIFEST} is malformed (files, recording, key_id or signature of the wrong type)."
    for name, entry in files.items():
        try:
            valid_name(name)
        except ValueError:
            return None, f"{MANIFEST} lists an invalid file name {name!r}."
        if (name == MANIFEST or not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str)
                or not _HEX64.fullmatch(entry["sha256"]) or type(entry.get("size")) is not int
                or entry["size"] < 0):
            return None, f"{MANIFEST} has a malformed entry for {name}."
    return obj, ""


def _check_signature(obj: dict[str, Any], keys: dict[str, VerifyKey]) -> str:
    """'' when the manifest's signature is good with the key it names, else why not."""
    key = keys.get(obj["key_id"])
    if key is None:
        return f"{MANIFEST} is signed with unknown key id {obj['key_id']}."
    try:
        signature = base64.b64decode(obj["signature"], validate=True)
    except (binascii.Error, ValueError):
        return f"{MANIFEST} signature is not valid base64."
    if not key.verify(signature, canonical(obj)):
        return f"{MANIFEST} signature does not match its content (key id {obj['key_id']}): edited or forged."
    return ""


# -- verification -----------------------------------------------------------

@dataclass
class VerifyResult:
    """Outcome of verifying one recording: ``ok`` when nothing is wrong."""

    ok: bool
    problems: list[str] = field(default_factory=list)
    key_id: str | None = None          # the key the manifest names (if it was read)


def verify_recording(store: RecordingStore, prefix: str,
                     verify_keys: Mapping[str, VerifyKey] | Iterable[VerifyKey] | VerifyKey) -> VerifyResult:
    """Check a recording folder against its signed manifest.

    Problems (one sentence each, file named): no manifest, unparsable manifest,
    unknown key id, bad signature, a manifest made for another recording, a
    listed file missing, a file present but not listed, size or SHA-256
    mismatch. Files are read with ``get_range`` in 1 MiB pieces. A store error
    (unreadable folder, outage) is reported as a problem too.
    """
    keys = _key_table(verify_keys)
    problems: list[str] = []
    try:
        names = store.list_files(prefix)
        if MANIFEST not in names:
            return VerifyResult(False, [f"recording {prefix} has no {MANIFEST}."])
        obj, why = _parse(store.get(prefix, MANIFEST))
        if obj is None:
            return VerifyResult(False, [why])
        if why := _check_signature(obj, keys):
            problems.append(why)
        try:
            here = valid_prefix(prefix)
        except ValueError:
            here = prefix
        if obj["recording"] != here:
            problems.append(f"{MANIFEST} was made for recording {obj['recording']}, not {here}.")
        listed: dict[str, dict[str, Any]] = obj["files"]
        present = set(names) - {MANIFEST}
        for name in sorted(listed.keys() - present):
            problems.append(f"file {name} is listed in {MANIFEST} but missing.")
        for name in sorted(present - listed.keys()):
            problems.append(f"file {name} is in the folder but not listed in {MANIFEST}.")
        for name in sorted(listed.keys() & present):
            want = listed[name]
            size = store.size(prefix, name)
            if size != want["size"]:
                problems.append(f"file {name} has {size} bytes, {MANIFEST} says {want['size']}.")
                continue
            got = hash_stored(store, prefix, name)
            if got["sha256"] != want["sha256"] or got["size"] != want["size"]:
                problems.append(f"file {name} does not match its SHA-256 in {MANIFEST} (content changed).")
    except StorageError as exc:
        problems.append(f"recording {prefix} could not be read: {exc}")
        return VerifyResult(False, problems)
    return VerifyResult(not problems, problems, obj["key_id"])


def _prefix_date(prefix: str) -> date | None:
    parts = prefix.strip("/").split("/")
    if len(parts) < 4:
        return None
    try:
        return date(int(parts[0]), int(parts[1]), int(parts[2]))
    except ValueError:
        return None


def verify_since(store: RecordingStore,
                 verify_keys: Mapping[str, VerifyKey] | Iterable[VerifyKey] | VerifyKey,
                 since_date: date | datetime | str) -> Iterator[tuple[str, VerifyResult]]:
    """(prefix, result) for every recording whose folder date (``YYYY/MM/DD``
    of the prefix, UTC) is on or after `since_date` (a date, a datetime or
    ``"YYYY-MM-DD"``), in prefix order."""
    if isinstance(since_date, str):
        since = date.fromisoformat(since_date)
    elif isinstance(since_date, datetime):
        since = (since_date.astimezone(timezone.utc) if since_date.tzinfo else since_date).date()
    else:
        since = since_date
    keys = _key_table(verify_keys)
    for prefix in store.list_recordings():
        day = _prefix_date(prefix)
        if day is not None and day >= since:
            yield prefix, verify_recording(store, prefix, keys)


# -- the signing wrapper ----------------------------------------------------

class SigningStore(StoreWrapper):
    """A `RecordingStore` that writes a signed manifest.json with every put/add.

    ``put`` writes the files and their manifest in one put. ``add`` (late
    packets) reads the manifest already stored, updates the entries of the added
    files, re-signs and writes it in the same add; a folder without a manifest
    (written before signing was enabled) gets one covering its stored files.
    A stored manifest is only extended when its signature is good with this
    key or one of ``verify_keys`` (the old public keys after a rotation):
    otherwise re-signing would launder an edit, so the files are added and the
    manifest left as it is (verification keeps failing) and an error logged.

    Concurrent adds to one recording must be serialised by the caller (the
    manifest is read, changed and written back).
    """

    def __init__(self, target: RecordingStore, signing_key: SigningKey, *,
                 verify_keys: Mapping[str, VerifyKey] | Iterable[VerifyKey] = ()) -> None:
        super().__init__(target)
        self.signing_key = signing_key
        self.verify_keys = {**_key_table(verify_keys), signing_key.key_id: signing_key.verify_key}

    def __repr__(self) -> str:
        return f"SigningStore({self.target!r}, key {self.signing_key.key_id})"

    def _refuse_manifest(self, files: Mapping[str, FileData]) -> None:
        if MANIFEST in files:
            raise StorageError(f"{self.url}: {MANIFEST} is written by the signing store, not given as a file")

    def _sign(self, prefix: str, entries: Mapping[str, Mapping[str, Any]]) -> bytes:
        try:
            return manifest_bytes(sign_manifest(prefix, entries, self.signing_key))
        except ValueError as exc:   # invalid prefix
            raise StorageError(f"{self.url}: {exc}") from None

    def _hash(self, files: Mapping[str, FileData]) -> dict[str, dict[str, Any]]:
        try:
            return {name: hash_data(data) for name, data in files.items()}
        except OSError as exc:
            raise StorageError(f"{self.url}: cannot read {exc.filename}: {exc.strerror or exc}") from exc

    def put(self, prefix: str, files: dict[str, FileData]) -> str:
        started = time.thread_time()
        self._refuse_manifest(files)
        manifest = self._sign(prefix, self._hash(files))
        self._count_cpu(time.thread_time() - started)
        return self.target.put(prefix, {**files, MANIFEST: manifest})

    def add(self, prefix: str, files: dict[str, FileData]) -> str:
        self._refuse_manifest(files)
        stored = self.target.list_files(prefix)
        if MANIFEST in stored:
            obj, why = _parse(self.target.get(prefix, MANIFEST))
            if obj is not None:
                why = _check_signature(obj, self.verify_keys)
            if obj is not None and not why and obj["recording"] != valid_prefix(prefix):
                why = f"{MANIFEST} was made for recording {obj['recording']}"
            if why:
                log.error("manifest not extended: the stored one does not verify; files added unsigned",
                          extra={"prefix": prefix, "problem": why, "files": sorted(files)})
                return self.target.add(prefix, files)
            assert obj is not None
            entries = dict(obj["files"])
        else:
            entries = {name: hash_stored(self.target, prefix, name) for name in stored if name not in files}
        entries.update(self._hash(files))
        return self.target.add(prefix, {**files, MANIFEST: self._sign(prefix, entries)})


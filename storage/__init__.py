"""Recording storage: the folder layout and its backends (local folder, S3).

``open_store(url)`` is the one entry point the controller and the CLI use::

    /var/lib/spanrec            -> LocalStore
    file:///var/lib/spanrec     -> LocalStore
    s3://bucket/some/prefix     -> S3Store (endpoint and keys from arguments or env)

S3 settings not passed explicitly come from the environment:
``SPANREC_S3_ENDPOINT`` (``host:port`` or ``http(s)://host:port``),
``SPANREC_S3_ACCESS_KEY``/``SPANREC_S3_SECRET_KEY`` (or ``AWS_ACCESS_KEY_ID``/
``AWS_SECRET_ACCESS_KEY``), ``SPANREC_S3_SECURE`` and ``SPANREC_S3_REGION``
(or ``AWS_REGION``).  Keys are never put into URLs, messages or logs.
``SPANREC_S3_SSE_C_KEY`` (or ``SPANREC_S3_SSE_C_KEY_FILE``, a 0600 file):
server-side encryption with a customer key (SSE-C, issue #15) - the base64 of
32 random bytes (``scripts/make-keys`` writes ``s3-sse-c.key``); several keys
separated by blanks, commas or lines rotate it: the first encrypts new objects,
each is tried to read one (then none: objects written before SSE-C was on).
HTTPS only; every reader of the bucket (web player, index rebuild, expiry)
needs the same variable.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from storage.base import RecordingStore, StorageError
from storage.layout import recording_id, recording_prefix
from storage.local import LocalStore
from storage.redact import redact_url

if TYPE_CHECKING:
    from storage.s3 import RetryPolicy, S3Store

__all__ = [
    "LocalStore", "RecordingStore", "RetryPolicy", "S3Store", "StorageError",
    "open_store", "recording_id", "recording_prefix",
]


def __getattr__(name: str) -> Any:
    """S3Store and RetryPolicy on first use: the S3 client library (minio, ~0.1 s
    to import) is not loaded by a process that records to a folder."""
    if name in ("S3Store", "RetryPolicy"):
        from storage import s3
        return getattr(s3, name)
    raise AttributeError(f"module 'storage' has no attribute {name!r}")


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _env(*names: str) -> str | None:
    """First set variable of `names`; for each, `NAME_FILE` names a file holding
    the value (Kubernetes/Docker secrets), so keys never need a command line."""
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
        path = os.environ.get(name + "_FILE")
        if path:
            try:
                with open(path, encoding="utf-8") as f:
                    return f.read().strip()
            except OSError as exc:
                raise StorageError(f"{name}_FILE: cannot read {path}: {exc.strerror}") from None
    return None


def _sse_c_keys() -> list[bytes]:
    """The SSE-C keys of SPANREC_S3_SSE_C_KEY(_FILE), current first; [] when unset."""
    path = os.environ.get("SPANREC_S3_SSE_C_KEY_FILE")
    if path and not os.environ.get("SPANREC_S3_SSE_C_KEY"):
        try:
            st = os.stat(path)
        except OSError as exc:
            raise StorageError(f"SPANREC_S3_SSE_C_KEY_FILE: cannot read {path}: {exc.strerror}") from None
        from storage.files import key_file_problem
        problem = key_file_problem(st, path)
        if problem:
            raise StorageError(f"SPANREC_S3_SSE_C_KEY_FILE: {problem}")
    text = _env("SPANREC_S3_SSE_C_KEY")
    if not text:
        return []
    import base64
    import binascii
    keys = []
    for no, item in enumerate(text.replace(",", " ").split(), 1):
        try:
            key = base64.b64decode(item, validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if len(key) != 32:
            raise StorageError(f"SPANREC_S3_SSE_C_KEY: key {no} is not the base64 of 32 bytes "
                               f"(make one with scripts/make-keys or `openssl rand -base64 32`)")
        keys.append(key)
    return keys


def _parse_bool(value: str, what: str) -> bool:
    if value.strip().lower() in _TRUE:
        return True
    if value.strip().lower() in _FALSE:
        return False
    raise StorageError(f"{what} must be true or false, got {value!r}")


def _split_endpoint(endpoint: str, secure: bool | None) -> tuple[str, bool]:
    """``http://h:p`` / ``https://h:p`` / ``h:p`` -> (``h:p``, secure)."""
    endpoint = endpoint.strip()
    if "://" in endpoint:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path.strip("/"):
            raise StorageError(f"S3 endpoint must be host[:port] or http(s)://host[:port], got {parts.scheme}://{parts.hostname or ''}{parts.path}")
        if parts.username or parts.password:
            raise StorageError("S3 endpoint must not contain credentials; use SPANREC_S3_ACCESS_KEY/SPANREC_S3_SECRET_KEY")
        scheme_secure = parts.scheme == "https"
        if secure is not None and secure != scheme_secure:
            raise StorageError(f"S3 endpoint scheme {parts.scheme} contradicts secure={secure}")
        return parts.netloc, scheme_secure
    if not endpoint or "/" in endpoint or "@" in endpoint:
        raise StorageError("S3 endpoint must be host[:port] or http(s)://host[:port]")
    if secure is None:
        env = _env("SPANREC_S3_SECURE")
        secure = _parse_bool(env, "SPANREC_S3_SECURE") if env is not None else True
    return endpoint, secure


def open_store(
    url: str,
    *,
    endpoint: str | None = None,
    access_key: str | None = None,
    secret_key: str | None = None,
    secure: bool | None = None,
    region: str | None = None,
    retry: RetryPolicy | None = None,
) -> RecordingStore:
    """The store a URL names; :class:`StorageError` when it is unusable as a URL.

    Nothing is contacted here: call ``check()`` to prove the store works.
    """
    if not url or not url.strip():
        raise StorageError("storage URL is empty")
    url = url.strip()
    if "://" not in url:
        return LocalStore(Path(url))
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path:
            raise StorageError(f"file URL must be file:///absolute/path, got {redact_url(url)!r}")
        return LocalStore(Path(unquote(parts.path)))
    if scheme != "s3":
        raise StorageError(f"unsupported storage URL scheme {scheme!r}: use a path, file:///path or s3://bucket/prefix")
    if "@" in parts.netloc:
        raise StorageError("s3:// URL must not contain credentials; use SPANREC_S3_ACCESS_KEY/SPANREC_S3_SECRET_KEY")
    bucket = parts.netloc
    if not bucket:
        raise StorageError("s3:// URL has no bucket: use s3://bucket/prefix")
    endpoint = endpoint or _env("SPANREC_S3_ENDPOINT")
    access_key = access_key or _env("SPANREC_S3_ACCESS_KEY", "AWS_ACCESS_KEY_ID")
    secret_key = secret_key or _env("SPANREC_S3_SECRET_KEY", "AWS_SECRET_ACCESS_KEY")
    missing = [name for name, value in (
        ("endpoint (SPANREC_S3_ENDPOINT)", endpoint),
        ("access key (SPANREC_S3_ACCESS_KEY or AWS_ACCESS_KEY_ID)", access_key),
        ("secret key (SPANREC_S3_SECRET_KEY or AWS_SECRET_ACCESS_KEY)", secret_key),
    ) if not value]
    if missing:
        raise StorageError(f"s3://{bucket}{parts.path}: missing S3 " + ", ".join(missing))
    assert endpoint and access_key and secret_key
    host, is_secure = _split_endpoint(endpoint, secure)
    from storage.s3 import S3Store
    return S3Store(bucket, unquote(parts.path), host, access_key, secret_key, is_secure,
                   region or _env("SPANREC_S3_REGION", "AWS_REGION"), retry=retry,
                   sse_c_keys=_sse_c_keys())

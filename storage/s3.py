"""Recordings in an S3-compatible bucket (AWS, MinIO, SeaweedFS, Ceph ...).

Uses the ``minio`` SDK.  The SDK's own urllib3 retries are replaced by one
bounded tenacity policy with short timeouts so that an unreachable endpoint
turns into a :class:`StorageError` in a predictable time instead of minutes.
Only transient failures (network errors, 5xx, throttling) are retried; a bad
key or a missing permission fails at once.  Messages are built from the
endpoint, bucket and key only: credentials never appear in them.
"""
from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from collections.abc import Sequence
from typing import Any, Callable, TypeVar

import certifi
import urllib3
from minio import Minio
from minio.helpers import check_bucket_name
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from storage.base import FileData, StorageError, check_range, data_size
from storage.layout import CALL_JSON, HOLD_JSON, content_type, valid_name, valid_prefix

T = TypeVar("T")

#: S3 error codes worth another try; everything else is a permanent answer.
#: S3 error codes meaning the object (or its whole bucket) is not there.
_ABSENT_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NoSuchObject", "ResourceNotFound"})
#: answers to a read whose SSE-C key does not fit the object (wrong key, a key
#: for a plain object, none for an SSE-C one): the next key is tried
_SSEC_MISMATCH = frozenset({"AccessDenied", "Forbidden", "InvalidRequest", "InvalidArgument", "BadRequest"})

_TRANSIENT_CODES = frozenset({
    "InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout",
    "RequestTimeTooSkewed", "OperationAborted", "Throttling", "ThrottlingException",
})


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries for transient S3 failures.

    ``attempts`` tries in total, waiting ``initial``·2^n seconds (at most
    ``max_wait``) between them; ``connect_timeout``/``read_timeout`` bound each
    HTTP request.  The defaults give up after roughly 10 s of outage; tests use
    tiny values to stay fast.
    """

    attempts: int = 5
    initial: float = 0.5
    max_wait: float = 5.0
    connect_timeout: float = 5.0
    read_timeout: float = 30.0


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, S3Error):
        return exc.code in _TRANSIENT_CODES
    if isinstance(exc, (ServerError, InvalidResponseError)):
        return True  # 5xx or a non-S3 answer (proxy error page): may pass.
    return isinstance(exc, (urllib3.exceptions.HTTPError, OSError))


def _reason(exc: BaseException) -> str:
    """One-line cause of a failure, without request headers or secrets."""
    if isinstance(exc, S3Error):
        return f"{exc.code}: {exc.message}"
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        exc = exc.reason
    if isinstance(exc, urllib3.exceptions.NewConnectionError):
        return "connection failed (" + str(exc).rsplit(":", 1)[-1].strip() + ")"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class S3Store:
    """A :class:`storage.base.RecordingStore` on ``s3://bucket/prefix``.

    ``endpoint`` is ``host[:port]`` (no scheme); ``secure`` selects HTTPS.  The
    bucket is created on first use when missing.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str,
        endpoint: str,
        access_key: str,
        secret_key: str,
        secure: bool,
        region: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        sse_c_keys: Sequence[bytes] = (),
    ) -> None:
        self.bucket = bucket
        self.key_prefix = "/".join(p for p in prefix.split("/") if p)
        self.endpoint = endpoint
        self.retry = retry or RetryPolicy()
        scheme = "https" if secure else "http"
        base = f"s3://{bucket}/{self.key_prefix}".rstrip("/")
        self.url = base
        self._where = f"{base} at {scheme}://{endpoint}"
        try:
            check_bucket_name(bucket, strict=True)
        except ValueError as exc:
            raise StorageError(f"{self._where}: {exc}") from None
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=self.retry.connect_timeout, read=self.retry.read_timeout),
            maxsize=10,
            cert_reqs="CERT_REQUIRED",
            ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
            retries=urllib3.Retry(total=0, connect=0, read=0, redirect=0, status=0),
        )
        try:
            self._client = Minio(endpoint, access_key=access_key, secret_key=secret_key,
                                 secure=secure, region=region, http_client=http)
        except ValueError as exc:
            raise StorageError(f"{self._where}: invalid S3 endpoint: {exc}") from None
        self._bucket_ready = False
        self.bypass_governance = False     # erasure of governance-locked objects (an admin's choice)
        self.object_lock: str | None = None   # "governance" | "compliance" (issue #15)
        # server-side encryption as well (issue #15): "s3" (SSE-S3) or "c" (SSE-C: the
        # first key encrypts new objects, every key is tried to read one)
        self.sse: str | None = None
        self._ssec: list[Any] = []
        self._ssec_hint = 0                   # index of the key that opened the last object
        if sse_c_keys:
            if not secure:
                raise StorageError(f"{self._where}: SSE-C needs an https:// endpoint (the key is sent "
                                   f"with every request; S3 servers refuse it over plain HTTP)")
            from minio.sse import SseCustomerKey
            self._ssec = [SseCustomerKey(bytes(k)) for k in sse_c_keys]
            self.sse = "c"

    def __repr__(self) -> str:
        return f"S3Store({self._where})"

    # -- helpers -----------------------------------------------------------
    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one S3 operation under the retry policy; failures become StorageError."""
        retrying = Retrying(
            stop=stop_after_attempt(max(1, self.retry.attempts)),
            wait=wait_exponential(multiplier=self.retry.initial, max=self.retry.max_wait),
            retry=retry_if_exception(_transient),
            reraise=True,
        )
        try:
            return retrying(fn)
        except (MinioException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            tries = retrying.statistics.get("attempt_number", 1)
            after = f" after {tries} attempts" if tries > 1 else ""
            raise StorageError(f"{self._where}: {what} failed{after}: {_reason(exc)}") from None

    def _key(self, prefix: str, name: str = "") -> str:
        try:
            parts = [self.key_prefix, valid_prefix(prefix), valid_name(name) if name else ""]
        except ValueError as exc:
            raise StorageError(f"{self._where}: {exc}") from None
        return "/".join(p for p in parts if p) + ("" if name else "/")

    def _ensure_bucket(self) -> None:
        if self._bucket_ready:
            return

        def ensure() -> None:
            if not self._client.bucket_exists(self.bucket):
                try:
                    # with --object-lock a new bucket gets it (S3 can add it only at creation)
                    self._client.make_bucket(self.bucket, object_lock=self.object_lock is not None)
                except S3Error as exc:  # created meanwhile by another writer
                    if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise

        self._call(f"creating bucket {self.bucket}", ensure)
        self._bucket_ready = True

    # -- RecordingStore ----------------------------------------------------
    def _retention(self, files: dict[str, FileData]):
        """Object Lock retention for the files of a put/add: the retain-until of the
        call.json among them (issue #15); None without --object-lock or retention."""
        if self.object_lock is None:
            return None
        doc = files.get(CALL_JSON)
        until = None
        if isinstance(doc, (bytes, bytearray, memoryview)):
            try:
                until = ((json.loads(bytes(doc)).get("retention") or {}).get("retain_until"))
            except (ValueError, AttributeError):
                until = None
        if until is None:
            return None
        from minio.commonconfig import COMPLIANCE, GOVERNANCE
        from minio.retention import Retention
        t = datetime.fromisoformat(until.replace("Z", "+00:00"))
        if t <= datetime.now(timezone.utc):
            return None          # already over (an old capture replayed): nothing to lock
        return Retention(COMPLIANCE if self.object_lock == "compliance" else GOVERNANCE, t)

    def put(self, prefix: str, files: dict[str, FileData]) -> str:
        folder = self._key(prefix)
        keys = {self._key(prefix, name): (name, data) for name, data in files.items()}
        self._ensure_bucket()
        lock = self._retention(files)
        for key, (name, data) in keys.items():
            self._call(f"writing {key}", lambda key=key, name=name, data=data: self._put(
                key, name, data, None if name == HOLD_JSON else lock))

        # Objects directly under the folder that this recording no longer has.
        def stale() -> list[str]:
            return [o.object_name for o in self._client.list_objects(self.bucket, prefix=folder)
                    if not o.is_dir and o.object_name not in keys]

        for key in self._call(f"listing {folder}", stale):
            self._call(f"removing stale {key}", lambda key=key: self._client.remove_object(self.bucket, key))
        return f"s3://{self.bucket}/{folder.rstrip('/')}"

    def add(self, prefix: str, files: dict[str, FileData]) -> str:
        self._ensure_bucket()
        lock = self._retention(files)
        for name, data in files.items():
            key = self._key(prefix, name)
            self._call(f"writing {key}", lambda key=key, name=name, data=data: self._put(
                key, name, data, None if name == HOLD_JSON else lock))
        return f"s3://{self.bucket}/{self._key(prefix).rstrip('/')}"

    def _put(self, key: str, name: str, data: FileData, retention: Any = None) -> None:
        """One object: bytes in one request; a file (a long call's audio or pcap)
        streamed, as a multipart upload when larger than one part (16 MiB);
        with Object Lock retention when given."""
        sse = None
        if self._ssec:
            sse = self._ssec[0]
        elif self.sse == "s3":
            from minio.sse import SseS3
            sse = SseS3()
        if isinstance(data, (bytes, bytearray, memoryview)):
            self._client.put_object(self.bucket, key, io.BytesIO(data), len(data),
                                    content_type=content_type(name), retention=retention, sse=sse)
            return
        with open(data, "rb") as fh:
            self._client.put_object(self.bucket, key, fh, data_size(data), content_type=content_type(name),
                                    part_size=16 << 20, retention=retention, sse=sse)

    def _with_ssec(self, op: Callable[[Any], T]) -> T:
        """``op(ssec)`` with the SSE-C key that opens the object: the one that
        opened the last object first, then the other keys (a rotation), then
        none (an object stored before SSE-C was on). Without SSE-C: ``op(None)``."""
        if not self._ssec:
            return op(None)
        hint = self._ssec_hint
        order = [hint] + [i for i in range(len(self._ssec)) if i != hint] + [-1]
        last: S3Error | None = None
        for i in order:
            try:
                out = op(self._ssec[i] if i >= 0 else None)
            except S3Error as exc:
                # a wrong key is refused (403 AccessDenied), a key for a plain object
                # or no key for an SSE-C one is a bad request; absence is final
                if exc.code in _ABSENT_CODES or exc.code not in _SSEC_MISMATCH:
                    raise
                last = exc
                continue
            if i >= 0:
                self._ssec_hint = i
            return out
        assert last is not None
        raise last

    def get(self, prefix: str, name: str) -> bytes:
        key = self._key(prefix, name)

        def read() -> bytes:
            resp = self._with_ssec(lambda k: self._client.get_object(self.bucket, key, ssec=k))
            try:
                return resp.read()
            finally:
                resp.close()
                resp.release_conn()

        return self._call(f"reading {key}", read)

    def _file_key(self, prefix: str, name: str) -> str:
        """Key of one file; unlike `_key`, an empty name is refused (not the folder)."""
        try:
            valid_name(name)
        except ValueError as exc:
            raise StorageError(f"{self._where}: {exc}") from None
        return self._key(prefix, name)

    def _absent(self, prefix: str, name: str) -> StorageError:
        return StorageError(f"{self._where}: no file {name} in recording {prefix}")

    def size(self, prefix: str, name: str) -> int:
        key = self._file_key(prefix, name)

        def stat() -> int | None:
            try:
                return self._with_ssec(lambda k: self._client.stat_object(self.bucket, key, ssec=k)).size
            except S3Error as exc:
                if exc.code in _ABSENT_CODES:
                    return None
                raise

        size = self._call(f"reading size of {key}", stat)
        if size is None:
            raise self._absent(prefix, name)
        return int(size)

    def get_range(self, prefix: str, name: str, start: int, length: int) -> bytes:
        start, length = check_range(start, length)
        key = self._file_key(prefix, name)
        if length == 0:
            # minio sends no Range (or an open-ended one) for length 0: nothing to
            # read, but an absent file is still an error, as for any other range
            self.size(prefix, name)
            return b""

        def read() -> bytes | None:
            try:
                resp = self._with_ssec(lambda k: self._client.get_object(
                    self.bucket, key, offset=start, length=length, ssec=k))
            except S3Error as exc:
                if exc.code in _ABSENT_CODES:
                    return None
                if exc.code == "InvalidRange":   # start at/after the end (or an empty object)
                    return b""
                raise
            try:
                if resp.status == 206:
                    return resp.read()[:length]
                # a server that ignores Range answers 200 with the whole object:
                # skip to `start` in chunks, keep only the range
                skip = start
                while skip:
                    chunk = resp.read(min(skip, 1 << 20))
                    if not chunk:
                        return b""
                    skip -= len(chunk)
                return resp.read(length)
            finally:
                resp.close()
                resp.release_conn()

        data = self._call(f"reading {key} bytes {start}+{length}", read)
        if data is None:
            raise self._absent(prefix, name)
        return data

    def list_recordings(self) -> list[str]:
        """Every key folder under the store prefix that directly holds an object."""
        base = self.key_prefix + "/" if self.key_prefix else ""

        def listing() -> list[str]:
            found: set[str] = set()
            try:
                objects = self._client.list_objects(self.bucket, prefix=base or None, recursive=True)
                for obj in objects:
                    rel = obj.object_name[len(base):]
                    folder, _, name = rel.rpartition("/")
                    if folder and name and not name.startswith("."):
                        found.add(folder)
            except S3Error as exc:
                if exc.code == "NoSuchBucket":
                    return []
                raise
            return sorted(found)

        return self._call("listing recordings", listing)

    def delete(self, prefix: str) -> bool:
        """Every object version under the recording's folder (a delete marker alone
        would leave the data on a versioned bucket); Object Lock refusals name the
        object and the server's reason."""
        from minio.deleteobjects import DeleteObject
        folder = self._key(prefix)

        def versions() -> list:
            try:
                return [DeleteObject(o.object_name, o.version_id) for o in self._client.list_objects(
                    self.bucket, prefix=folder, recursive=True, include_version=True) if not o.is_dir]
            except S3Error as exc:
                if exc.code == "NoSuchBucket":
                    return []
                raise
        targets = self._call(f"listing {folder}", versions)
        if not targets:
            return False
        # hold.json last, and only when everything else went: a deletion the
        # server refuses in part (Object Lock) keeps the recording's hold record
        last = [t for t in targets if t.name.endswith("/" + HOLD_JSON)]
        first = [t for t in targets if not t.name.endswith("/" + HOLD_JSON)]
        for batch in (first, last):
            if not batch:
                continue

            def remove(batch=batch) -> list[str]:
                errs = self._client.remove_objects(self.bucket, batch,
                                                   bypass_governance_mode=self.bypass_governance)
                return [f"{e.name}: {e.code} {e.message}" for e in errs]
            failed = self._call(f"deleting {folder}", remove)
            if failed:
                raise StorageError(f"{self._where}: cannot delete recording {prefix}: {failed[0]}"
                                   + (f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""))
        return True

    def set_legal_hold(self, prefix: str, on: bool) -> int:
        """With --object-lock: an S3 Object Legal Hold on (off) every version of
        every object of the recording (hold.json too: the hold record cannot be
        deleted while it holds; a new version of it can be written), so the server itself
        refuses deletion while a court's hold lasts, even after the retention
        (and even with the governance bypass). Returns the versions changed; 0
        without --object-lock (the bucket may not support it)."""
        if self.object_lock is None:
            return 0
        folder = self._key(prefix)

        def versions() -> list[tuple[str, str | None]]:
            return [(o.object_name, o.version_id) for o in self._client.list_objects(
                self.bucket, prefix=folder, recursive=True, include_version=True)
                if not o.is_dir and not o.is_delete_marker]
        targets = self._call(f"listing {folder}", versions)
        change = self._client.enable_object_legal_hold if on else self._client.disable_object_legal_hold
        for name, version in targets:
            self._call(f"{'setting' if on else 'lifting'} the legal hold of {name}",
                       lambda name=name, version=version: change(self.bucket, name, version_id=version))
        return len(targets)

    def list_files(self, prefix: str) -> list[str]:
        """Names of the objects directly under the recording's key folder (none
        starting with "."), sorted; [] when there are none (or no bucket)."""
        folder = self._key(prefix)

        def listing() -> list[str]:
            try:
                return sorted(name for o in self._client.list_objects(self.bucket, prefix=folder)
                              if not o.is_dir
                              for name in [o.object_name[len(folder):]]
                              if name and "/" not in name and not name.startswith("."))
            except S3Error as exc:
                if exc.code == "NoSuchBucket":
                    return []
                raise

        return self._call(f"listing {folder}", listing)

    def check(self) -> None:
        """Prove endpoint, credentials and bucket work (creating the bucket if missing)."""
        self._bucket_ready = False
        self._ensure_bucket()
        self._call("listing bucket", lambda: next(iter(self._client.list_objects(
            self.bucket, prefix=self.key_prefix or None)), None))
        if self.object_lock is not None:
            self._check_object_lock()

    def _check_object_lock(self) -> None:
        """--object-lock needs a bucket with versioning and Object Lock enabled."""
        def config():
            try:
                return self._client.get_object_lock_config(self.bucket)
            except S3Error as exc:
                if exc.code in ("ObjectLockConfigurationNotFoundError", "ObjectLockConfigurationNotFound",
                                "InvalidRequest", "NoSuchObjectLockConfiguration"):
                    return None
                raise
        cfg = self._call("reading the bucket's object lock", config)
        if cfg is None:
            raise StorageError(f"{self._where}: --object-lock {self.object_lock} needs a bucket created "
                               "with Object Lock (and versioning) enabled; this one has none: make a new "
                               "bucket with object lock, or drop --object-lock")
        versioning = self._call("reading the bucket's versioning",
                                lambda: self._client.get_bucket_versioning(self.bucket))
        if getattr(versioning, "status", None) != "Enabled":
            raise StorageError(f"{self._where}: --object-lock {self.object_lock} needs versioning enabled "
                               f"on the bucket (it is {getattr(versioning, 'status', None) or 'off'})")

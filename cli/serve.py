"""Runs the controller (`spanrec controller`) and builds its parts from settings."""
from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import inspect
import json
import logging
import os
import resource
import shutil
import signal
import socket
from pathlib import Path
from typing import Any

from cli.settings import ConfigError, ControllerSettings, Failure
from controller.api.authz import Authorizer
from controller.calls.engine import CallConfig
from controller.core import Recorder
from controller.ingest.dedup import DedupConfig
from controller.calls.rules import RecordingRules, RulesError
from controller.api.link import serve
from controller.ingest.wal import WalError, WriteAheadLog
from storage import files as filemodes
from storage import open_store
from storage.redact import redact
from storage.base import RecordingStore, StorageError
from storage.local import LocalStore
from storage.outbox import OutboxStore
from transport import handshakes
from transport.limits import FdWatch, raise_nofile
from transport.tls import Security

log = logging.getLogger("spanrec.controller")


def open_storage(settings: ControllerSettings) -> RecordingStore:
    try:
        store = open_store(
            settings.storage, endpoint=settings.s3_endpoint,
            access_key=settings.s3_access_key.get_secret_value() if settings.s3_access_key else None,
            secret_key=settings.s3_secret_key.get_secret_value() if settings.s3_secret_key else None)
        if settings.object_lock is not None:
            if not hasattr(store, "object_lock"):
                raise Failure(f"--object-lock {settings.object_lock}: only S3 storage can lock objects "
                              f"(storage {settings.storage})")
            store.object_lock = settings.object_lock
        if settings.s3_sse is not None:
            if not hasattr(store, "sse"):
                raise Failure(f"--s3-sse: only S3 storage has server-side encryption (storage {settings.storage})")
            if settings.s3_sse == "c" and store.sse != "c":
                raise Failure("--s3-sse c: no customer key: set SPANREC_S3_SSE_C_KEY_FILE (a 0600 file with "
                              "the base64 of 32 bytes, scripts/make-keys writes s3-sse-c.key)")
            if settings.s3_sse == "s3" and store.sse == "c":
                raise Failure("--s3-sse s3 and SPANREC_S3_SSE_C_KEY together: an object has one kind of "
                              "server-side encryption; choose one")
            store.sse = settings.s3_sse
        store.check()
    except StorageError as exc:
        keys = [s.get_secret_value() for s in (settings.s3_access_key, settings.s3_secret_key) if s]
        raise Failure(redact(f"storage {settings.storage}: {exc}", keys)) from None
    return store


def tune_gc() -> None:
    """The controller keeps millions of small objects (packets of active calls)
    that are never cyclic garbage; the default gen-0 threshold of 700 makes the
    cyclic collector rescan them over and over. Measured on 200 calls x 10 s:
    ingest 155-190 k -> 190-204 k packets/s. Objects from start-up are frozen."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def open_indexer(settings: ControllerSettings):
    """The call index of --index (callindex/indexer.py), or None without one. A
    URL that cannot work stops the start; a database that is down does not:
    recordings are kept for it (index_pending) and indexed when it is back."""
    url = settings.index
    if not url or url.lower() == "none":
        return None
    from callindex.db import IndexUnavailable, IndexUrlError, check_url, open_index
    from callindex.indexer import Indexer
    try:
        shown = check_url(url, settings.index_password_file)
    except IndexUrlError as exc:
        raise Failure(str(exc)) from None
    pending = settings.index_pending_dir or Path(settings.state_dir).expanduser().absolute() / "index-pending"

    def connect():
        return open_index(url, password_file=settings.index_password_file)
    indexer = Indexer(connect, pending)
    indexer.url = shown
    try:
        indexer.index = connect()
    except IndexUrlError as exc:
        indexer.close(drain=False)
        raise Failure(str(exc)) from None
    except IndexUnavailable as exc:
        log.warning("call index unavailable at start: recordings are indexed when it is back",
                    extra={"index": shown, "error": str(exc)})
    indexer.wake()       # what an earlier run left pending
    return indexer


def start_expiry(settings: ControllerSettings, recorder: Recorder):
    """Issue #15: the expiry job every --expire-every seconds on a controller with a
    call index (on a static ring only the first shard runs it: one deleter)."""
    indexer = getattr(recorder.writer.store, "indexer", None)
    if indexer is None or settings.expire_every_s <= 0:
        return None
    members = sorted(sid for sid, _ in settings.members())
    if settings.shard_id and members and settings.shard_id != members[0]:
        return None
    from callindex.audit import AuditTrail
    from callindex.lifecycle import Who, expire
    who = Who(f"spanrec expiry ({settings.controller_id})", "controller")

    def run_once() -> None:
        index = indexer.index
        if index is None:
            return
        found = expire(recorder.writer.store, index, AuditTrail(index), who, limit=10_000)
        gone = sum(1 for o in found if o.done)
        kept = [o for o in found if not o.done]
        if gone or kept:
            log.info("expiry: recordings past their retention deleted", extra={
                "deleted": gone, "not_deleted": len(kept),
                "why_not": sorted({o.what for o in kept})})

    async def loop_() -> None:
        while True:
            await asyncio.sleep(min(60.0, settings.expire_every_s))   # not at once at start
            try:
                await asyncio.to_thread(run_once)
            except Exception as exc:  # noqa: BLE001 - the next round tries again
                log.warning("expiry failed; tried again later", extra={"error": str(exc)})
            await asyncio.sleep(max(0.0, settings.expire_every_s - 60.0))
    return asyncio.get_running_loop().create_task(loop_())


def close_indexer(recorder: Recorder) -> None:
    """Index what is pending once more and let the database go (at stop)."""
    indexer = getattr(recorder.writer.store, "indexer", None)
    if indexer is not None:
        indexer.close()
        if indexer.pending:
            log.warning("stopping with recordings not yet in the call index; they are indexed "
                        "at the next start", extra={"pending": indexer.pending, "index": indexer.url})


_warned_plain = False


def secure_store(settings: ControllerSettings, store: RecordingStore,
                 quiet: bool = False) -> tuple[RecordingStore, dict]:
    """Issue #15: manifests signed over what is stored (SigningStore, below the
    encryption: verifiable without the key) and audio/pcap encrypted before they
    leave the controller (EncryptingStore, above the outbox: it holds ciphertext).
    Returns the store and the public keys verification accepts."""
    global _warned_plain
    verify_keys: dict = {}
    try:
        if settings.signing_key_file is not None:
            from storage.manifest import SigningStore, load_signing_key, load_verify_key
            key = load_signing_key(settings.signing_key_file)
            olds = [load_verify_key(p) for p in settings.verify_key_file]
            verify_keys = {k.key_id: k for k in [key.verify_key, *olds]}
            store = SigningStore(store, key, verify_keys=olds)
        from storage.encryption import load_keyring, EncryptingStore
        keyring = load_keyring(settings.encryption_key_file)
    except Exception as exc:  # ManifestError, EncryptionError: one sentence naming the file
        if exc.__class__.__name__ in ("ManifestError", "EncryptionError"):
            raise Failure(str(exc)) from None
        raise
    if keyring is not None:
        store = EncryptingStore(store, keyring)
    elif not _warned_plain:
        _warned_plain = True
        # a controller says it once at start; `spanrec record` (a local run into a
        # folder of one's own) only at info level, not on every newcomer's first run
        (log.info if quiet else log.warning)(
            "recordings are stored unencrypted (no --encryption-key-file or SPANREC_KEK): "
            "anyone who can read the storage can listen to them")
    return store, verify_keys


def build_recorder(settings: ControllerSettings, store: RecordingStore,
                   expected_sensors: int = 0, wal: WriteAheadLog | None = None,
                   spill_dir: Path | None = None) -> Recorder:
    store, verify_keys = secure_store(settings, store, quiet=expected_sensors > 0)
    indexer = open_indexer(settings)
    if indexer is not None:
        from callindex.indexer import IndexingStore
        store = IndexingStore(store, indexer)
    recorder = Recorder(
        store,
        call_config=CallConfig(answered_timeout_s=settings.answered_timeout_s,
                               setup_timeout_s=settings.setup_timeout_s,
                               linger_s=settings.linger_s,
                               leg_headers=settings.leg_headers,
                               merge_by_media=settings.merge_by_media,
                               spill_dir=spill_dir,
                               record_rules=settings.recording_rules()),
        dedup_config=DedupConfig(sip_window_ms=settings.sip_dedup_window_ms,
                                 media_window_ms=settings.media_dedup_window_ms),
        expected_sensors=expected_sensors,
        controller_id=settings.controller_id,
        wal=wal, wall_clock=True, site_networks=settings.site_ranges(),
        **shard_option(settings))
    recorder.writer.audio_format = settings.audio_format
    recorder.writer.verify_keys = verify_keys
    policy = settings.retention_policy()
    recorder.writer.retention = policy if (policy.default_days is not None or policy.rules) else None
    return recorder


def shard_option(settings: ControllerSettings) -> dict:
    """``{"shard": ShardIdentity(...)}`` for one shard of a ring of more than one
    (--shard-id/--shard-members): the Recorder refuses sensors routing over
    another ring and keeps only its own calls from broadcast batches."""
    members = settings.members()
    if settings.etcd_shard():      # the ring comes from etcd (start_registry); ourselves until then
        members = [(settings.shard_id, settings.advertise or settings.listen)]
    elif len(members) <= 1:
        return {}
    from registry.ring import Ring, Shard
    try:
        from controller.ingest.shard import ShardIdentity
    except ImportError:
        ShardIdentity = None   # noqa: N806 - controller/ingest/shard.py not in this build yet
    if ShardIdentity is None or "shard" not in inspect.signature(Recorder.__init__).parameters:
        log.warning("this build has no shard support in the recorder (controller/ingest/shard.py): "
                    "broadcast batches are recorded whole and sensors' rings are not checked",
                    extra={"shard_id": settings.shard_id})
        return {}
    ring = Ring([Shard(sid, addr) for sid, addr in members])
    return {"shard": ShardIdentity(settings.shard_id, ring)}


def lock_state_dir(state_dir: Path) -> int:
    """One controller per state folder: two writing one log would corrupt it."""
    try:
        filemodes.private_dir(state_dir)
        fd = filemodes.open_fd(state_dir / "lock", os.O_RDWR)
    except OSError as exc:
        raise Failure(f"state folder {state_dir}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise Failure(f"state folder {state_dir} is in use by another controller") from None
    return fd  # held (open) until the process ends


def open_durable(settings: ControllerSettings, store: RecordingStore,
                 ) -> tuple[Recorder, OutboxStore | None]:
    """The controller's Recorder with its write-ahead log (state_dir/wal) and,
    for a remote store, the storage outbox (state_dir/outbox); replays the log
    and queues what the outbox holds. A local folder gets no outbox: a put there
    is already durable (fsync + rename) and fails only with the local disk."""
    state = Path(settings.state_dir).expanduser().absolute()
    outbox = None
    target: RecordingStore = store
    try:
        if not isinstance(store, LocalStore):
            outbox = OutboxStore(store, state / "outbox")
            target = outbox
        from storage.keys import EncryptionError, load_keyring
        try:   # the log holds the calls' packets: encrypted like the recordings (issue #15)
            keyring = load_keyring(settings.encryption_key_file)
        except EncryptionError as exc:
            raise Failure(str(exc)) from None
        wal = WriteAheadLog(state / "wal", keyring=keyring)
        # long calls' frames (controller/calls/spill.py): what a crash left is rebuilt
        # from the write-ahead log, so the folder starts empty
        shutil.rmtree(state / "spill", ignore_errors=True)
        recorder = build_recorder(settings, target, wal=wal, spill_dir=state / "spill")
        if outbox is not None:
            outbox.start()
        recorder.recover()
    except (WalError, StorageError, OSError) as exc:
        raise Failure(f"state folder {state}: {exc}") from None
    return recorder, outbox


def advertised(settings: ControllerSettings, port: int) -> str:
    """Where sensors reach this controller: --advertise, or --listen with the
    bound port and, for a wildcard address, this host's name."""
    if settings.advertise:
        return settings.advertise
    host = settings.listen.rpartition(":")[0].strip("[]")
    if host in ("0.0.0.0", "::", ""):
        host = socket.getfqdn()
    return f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"


def start_registry(settings: ControllerSettings, port: int, loop: asyncio.AbstractEventLoop,
                   recorder: Recorder | None = None):
    """Registers this controller in etcd (leased; sensors find it there) and
    watches the fleet. It runs on the controller's own event loop (one loop
    for grpc.aio) and never blocks it: etcd being away never stops recording,
    the state just reads 'degraded'."""
    if not settings.etcd:
        return None
    from registry import MemberRecord, Registry, parse_endpoints
    from sensor.sender import VERSION
    endpoints = parse_endpoints(settings.etcd)
    try:
        security = settings.etcd_security()   # TLS to etcd; a password never in plain text
    except ConfigError as exc:
        raise Failure(str(exc)) from None
    reg = Registry(endpoints, settings.etcd_prefix, MemberRecord(
        id=settings.controller_id, role="controller", site=settings.site, version=VERSION,
        address=advertised(settings, port)), security=security)
    if settings.etcd_shard():
        # one shard of a ring kept in etcd: its record on the same lease, and the ring
        # (ownership of broadcast frames, the Hello check) from every shard's record
        from registry.shards import ShardRecord, shard_key
        record = ShardRecord(settings.shard_id, advertised(settings, port), "active",
                             settings.controller_id, VERSION)
        reg.put_record(shard_key(settings.etcd_prefix, settings.shard_id), record.to_json())
        reg.shard_record = record          # type: ignore[attr-defined]  # for the drain
        if recorder is not None and recorder.shard is not None:
            recorder.shard.follow(reg.shards(settings.shard_grace_s).current)
        log.info("registering as shard in etcd", extra={"shard_id": settings.shard_id,
                                                         "address": record.address})
    reg.start(loop=loop)
    log.info("registering in etcd", extra={"address": advertised(settings, port)})
    return reg


def _watch_config_key(registry, key: str, parse, errors, refused: str, use) -> None:
    """One key of <prefix>config/controller in etcd: a bad value is refused before
    it is accepted (logged with `refused`; the value in force stays), a good one
    is handed to ``use(value, from_etcd)`` at start and at every change; no key:
    ``use(None, False)``, the settings' own."""
    def check(config: dict) -> None:  # refused values never reach apply(): the last good stays
        try:
            parse(config.get(key) or {})
        except errors as exc:
            raise ValueError(f"{refused}: {exc}") from None

    def apply(config: dict) -> None:
        raw = config.get(key)
        try:
            value = None if raw is None else parse(raw)
        except errors as exc:
            log.warning("%s: %s", refused, exc)
            return
        use(value, raw is not None)

    watcher = registry.config("controller")
    watcher.add_validator(check)
    watcher.on_change(apply)
    apply(watcher.current())


def watch_record_rules(registry, recorder: Recorder, base: RecordingRules) -> None:
    """Recording rules from etcd: the "record_rules" object of
    <prefix>config/controller replaces the rules for calls that start from then
    on (calls already started keep their decision). No key, or no record_rules
    in it: the rules of the flags, environment and file (`base`). An invalid
    object is logged and ignored: the rules in force stay."""
    def use(rules: RecordingRules | None, from_etcd: bool) -> None:
        rules = rules or base
        old = recorder.engine.rules
        if rules != old:
            recorder.engine.rules = rules   # read once per new leg: no lock needed
            before, after = old.to_dict(), rules.to_dict()
            changed = {k: {"from": before[k], "to": v} for k, v in after.items() if before[k] != v}
            extra = {"source": "etcd" if from_etcd else "settings", "rules": after,
                     "changed": changed}
            if rules.records_nothing() and not old.records_nothing():
                log.warning("recording rules changed: NO CALL WILL HAVE ITS MEDIA RECORDED from now on "
                            "(audio off): %s", changed, extra=extra)
            else:
                log.info("recording rules changed", extra=extra)

    _watch_config_key(registry, "record_rules", RecordingRules.from_dict, RulesError,
                      "recording rules from etcd ignored, the rules in force stay", use)


def watch_retention(registry, recorder: Recorder, base: Any) -> None:
    """Retention rules from etcd: the "retention" object of <prefix>config/controller
    replaces the policy for recordings stored from then on (stored ones keep the
    retain-until their call.json names). No key: the policy of the settings. An
    invalid object is logged and ignored: the policy in force stays."""
    from storage.retention import RetentionError, RetentionPolicy

    def use(policy: RetentionPolicy | None, from_etcd: bool) -> None:
        policy = policy or base
        if policy != (recorder.writer.retention or RetentionPolicy()):
            recorder.writer.retention = policy if (policy.default_days is not None or policy.rules) else None
            log.info("retention changed", extra={"source": "etcd" if from_etcd else "settings",
                                                 "retention": policy.to_dict()})

    _watch_config_key(registry, "retention", RetentionPolicy.from_dict, RetentionError,
                      "retention from etcd ignored, the policy in force stays", use)


def start_telemetry(settings: ControllerSettings, recorder: Recorder):
    """OpenTelemetry metrics (Prometheus endpoint and/or OTLP) and call traces."""
    if not settings.metrics_listen and not settings.otlp_endpoint:
        return None
    from controller.output.telemetry import Telemetry
    try:
        tel = Telemetry(recorder.status, controller_id=settings.controller_id,
                        prometheus_listen=settings.metrics_listen,
                        otlp_endpoint=settings.otlp_endpoint)
    except OSError as exc:
        raise Failure(f"cannot serve metrics on {settings.metrics_listen}: {exc}") from None
    recorder.telemetry = tel
    log.info("telemetry on", extra={"prometheus": settings.metrics_listen,
                                    "otlp": settings.otlp_endpoint})
    return tel


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def write_results(path: Path, recorder: Recorder, store: RecordingStore, rss_start: int) -> None:
    """A shard of `spanrec record --shards N` (SPANREC_RESULTS_FILE): what the
    record process prints and measures, written after the shard stopped (so
    after every recording was written), whole or not at all."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    doc = {
        "status": recorder.status(),
        "recordings": list(recorder.writer.recent),
        "written": recorder.writer.written,
        "errors": recorder.writer.errors,
        "all_replays_done": recorder.all_replays_done.is_set(),
        "storage_url": store.url,
        "stats": {"cpu_s": me.ru_utime + me.ru_stime, "peak_rss_kib": me.ru_maxrss,
                  "start_rss_kib": rss_start, "packets_in": recorder.packets_in,
                  "peak_active_calls": recorder.peak_active_calls},
    }
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(doc, default=str))
    os.replace(tmp, path)


#: after marking itself leaving, a shard waits this long before it believes "no active
#: call": sensors need a moment to see the change (a call they placed here just before
#: still arrives)
DRAIN_SETTLE_S = 3.0


async def drain_shard(settings: ControllerSettings, registry, recorder: Recorder,
                      stop_again: asyncio.Event) -> None:
    """SIGTERM to a shard registered in etcd (scale down, rolling update): mark the
    record `leaving` (sensors give it no new call; its calls keep coming), keep
    recording until no call is active (at most --drain-limit; a second signal cuts
    it short), then write `drained` and delete the record, so sensors drop the
    shard at once instead of waiting for it during the grace period."""
    from dataclasses import replace
    from registry.shards import shard_key
    key = shard_key(settings.etcd_prefix, settings.shard_id)
    record = registry.shard_record
    loop = asyncio.get_running_loop()

    async def write(value: bytes | None) -> None:
        try:
            await asyncio.wait_for(asyncio.wrap_future(registry.put_record(key, value)), 10.0)
        except asyncio.TimeoutError:
            log.warning("etcd did not take the shard record in 10 s (kept trying)",
                        extra={"shard_id": settings.shard_id})

    started = loop.time()
    await write(replace(record, state="leaving").to_json())
    log.info("shard leaving: no new calls; recording the active ones until they end",
             extra={"shard_id": settings.shard_id, "drain_limit_s": settings.drain_limit_s,
                    "active_calls": len(recorder.engine.table)})
    reason = "no active call"
    while True:
        active = len(recorder.engine.table)
        elapsed = loop.time() - started
        if active == 0 and elapsed >= min(DRAIN_SETTLE_S, settings.drain_limit_s):
            break
        if elapsed >= settings.drain_limit_s:
            reason = "drain limit"
            log.warning("shard drain limit reached: the calls still active are written now",
                        extra={"shard_id": settings.shard_id, "active_calls": active})
            break
        if stop_again.is_set():
            reason = "second signal"
            log.warning("shard drain cut short by a second signal",
                        extra={"shard_id": settings.shard_id, "active_calls": active})
            break
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop_again.wait(), 0.5)
    await write(replace(record, state="leaving", drained=True).to_json())
    await write(None)
    log.info("shard drained: left etcd", extra={"shard_id": settings.shard_id, "reason": reason,
                                                "drain_s": round(loop.time() - started, 1)})


class _ShardTag(logging.Filter):
    """Every log line of a shard names it (the shards of a supervisor share its stderr)."""

    def __init__(self, shard_id: str) -> None:
        super().__init__()
        self.shard_id = shard_id

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "shard_id"):
            record.shard_id = self.shard_id
        return True


def run_controller(settings: ControllerSettings) -> None:
    if settings.shard_id:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_ShardTag(settings.shard_id))
    store = open_storage(settings)
    lock_state_dir(Path(settings.state_dir).expanduser().absolute())
    if settings.expected_sensors:
        # a shard of `spanrec record --shards N`: the controller record runs in
        # its own process (cli/record.py): no write-ahead log, no outbox (the
        # capture files are the durable copy), waits for every replay
        recorder, outbox = build_recorder(settings, store,
                                          expected_sensors=settings.expected_sensors), None
    else:
        recorder, outbox = open_durable(settings, store)
    tune_gc()
    rss_start = rss_kib()

    telemetry = start_telemetry(settings, recorder)
    nofile = raise_nofile()
    log.info("open-files limit", extra={"before": nofile.before, "limit": nofile.soft,
                                        "hard": nofile.hard,
                                        "max_connections": nofile.max_connections})
    authorizer = Authorizer(require_site=settings.require_site)

    async def main() -> None:
        try:
            server, port = await serve(recorder, settings.listen,
                                       server_credentials=Security.from_settings(settings).server_credentials(),
                                       health_listen=settings.health_listen,
                                       authorizer=authorizer,
                                       max_connections=nofile.max_connections)
        except (OSError, RuntimeError) as exc:
            raise Failure(f"cannot listen on {settings.listen}"
                          f"{' or ' + settings.health_listen if settings.health_listen else ''}: {exc}") from None
        handshakes.listening(port)
        log.info("controller listening", extra={"listen": settings.listen, "port": port,
                                                "storage": store.url})
        registry = start_registry(settings, port, asyncio.get_running_loop(), recorder)
        server._spanrec_admin.registry = registry  # type: ignore[attr-defined]
        if registry is not None:
            watch_record_rules(registry, recorder, settings.recording_rules())
            watch_retention(registry, recorder, settings.retention_policy())
        fds = FdWatch(nofile)

        async def watch_fds() -> None:
            while True:
                fds.check()
                await asyncio.sleep(5.0)
        fd_task = asyncio.get_running_loop().create_task(watch_fds())
        expiry_task = start_expiry(settings, recorder)
        stop = asyncio.Event()
        stop_again = asyncio.Event()         # a second signal: cut a shard's drain short
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            (stop_again if stop.is_set() else stop).set()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        await stop.wait()
        if registry is not None and settings.etcd_shard() and not settings.keep_calls_on_stop:
            await drain_shard(settings, registry, recorder, stop_again)
        fd_task.cancel()
        if expiry_task is not None:
            expiry_task.cancel()
        log.info("controller stopping: finishing active calls",
                 extra={"refused": authorizer.counts(), "open_files_peak": fds.peak})
        await server.stop(grace=2.0)
        server._spanrec_ticker.cancel()      # type: ignore[attr-defined]  # time stops with the packets
        if server._spanrec_health_server is not None:  # type: ignore[attr-defined]
            await server._spanrec_health_server.stop(grace=0)  # type: ignore[attr-defined]
        if registry is not None:
            await registry.stop_async()
        await asyncio.to_thread(recorder.shutdown, settings.keep_calls_on_stop)
        if telemetry is not None:
            telemetry.shutdown()
        if outbox is not None and not await asyncio.to_thread(outbox.drain, 10.0):
            log.warning("controller stopping with recordings not yet uploaded; they are "
                        "uploaded at the next start", extra={"pending": outbox.pending})
        await asyncio.to_thread(close_indexer, recorder)
        log.info("controller stopped", extra={"recordings_written": recorder.writer.written})
        if settings.results_file is not None:
            write_results(Path(settings.results_file), recorder, store, rss_start)

    asyncio.run(main())

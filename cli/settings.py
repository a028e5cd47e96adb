"""Settings of each command: flags > environment (SPANREC_*) > config file > defaults.

pydantic-settings validates everything; the CLI turns a validation error into
one line and exit status 2.
"""
from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from controller.calls.rules import RecordingRules, RulesError
from controller.settings import DEFAULT_LEG_HEADERS


class ConfigError(Exception):
    """Bad flags, environment or config file; the message is one line (exit 2)."""


class Failure(Exception):
    """A runtime failure the user should read as one line (exit 1)."""


def _hostport(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return value


def parse_members(text: str) -> list[tuple[str, str]]:
    """``--shard-members``: [(id, address)] by registry.ring.parse_members, the
    parser the sensors' ``--controller`` uses too (same ids, same ring); a
    ValueError with one line when malformed."""
    from registry.ring import parse_members as parse
    return [(s.shard_id, s.address) for s in parse(text)]


def _leg_headers(v: Any) -> Any:
    """--leg-header (repeatable) or a comma list: lower-case SIP header names."""
    if isinstance(v, str):
        v = v.split(",")
    names = tuple(str(h).strip().lower() for h in v)
    for name in names:
        if not re.fullmatch(r"[a-z0-9!#$%&'*+.^_`|~-]+", name):
            raise ValueError(f"not a SIP header name: {name!r}")
    return names


class _Base(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SPANREC_", extra="forbid",
                                      validate_default=True)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"


class _Cluster(_Base):
    """What every networked command shares: TLS files and the etcd registry."""
    tls_cert: Path | None = None        # PEM certificate of this process
    tls_key: Path | None = None         # its private key
    tls_ca: Path | None = None          # CA that signs the peers' certificates
    insecure: bool = False              # plain-text gRPC (logged as a warning)
    etcd: str | None = None             # comma list of etcd endpoints, host:port
    etcd_prefix: str = "/spanrec/"
    etcd_user: str | None = None
    etcd_password: SecretStr | None = None
    etcd_ca: Path | None = None         # CA that signs etcd's certificate: TLS to etcd
    etcd_cert: Path | None = None       # client certificate for etcd (--client-cert-auth)
    etcd_key: Path | None = None
    etcd_insecure: bool = False         # plain text to a non-loopback etcd (warned)
    etcd_server_name: str | None = None  # name in etcd's certificate (default: the endpoint host)

    def etcd_security(self) -> Any:
        """registry.EtcdSecurity from these settings (the password file from the environment);
        raises ConfigError with one line when unsafe or wrong."""
        from registry import EtcdSecurity, EtcdSecurityError, parse_endpoints
        try:
            return EtcdSecurity.from_options(
                parse_endpoints(self.etcd or ""), ca=self.etcd_ca, cert=self.etcd_cert, key=self.etcd_key,
                insecure=self.etcd_insecure, server_name=self.etcd_server_name, user=self.etcd_user,
                password=self.etcd_password.get_secret_value() if self.etcd_password else None)
        except EtcdSecurityError as exc:
            raise ConfigError(str(exc)) from None
    file_mode: str = "0600"             # recordings, outbox, spool, WAL, spill (storage/files.py)

    @field_validator("file_mode")
    @classmethod
    def _check_file_mode(cls, v: str) -> str:
        from storage.files import parse_mode
        return f"{parse_mode(v):04o}"


#: `spanrec record` inputs smaller than this run on one shard (shard_count)
SMALL_INPUT_BYTES = 32 << 20


def available_cores() -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota
    (a container's `cpu.max`, e.g. a Kubernetes CPU limit), at least 1."""
    cores = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max" and int(period) > 0:
            cores = min(cores, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


class ControllerSettings(_Cluster):
    listen: str = "0.0.0.0:7600"
    storage: str = "./recordings"
    s3_endpoint: str | None = None
    s3_access_key: SecretStr | None = None
    s3_secret_key: SecretStr | None = None
    answered_timeout_s: float = Field(300.0, gt=0)
    setup_timeout_s: float = Field(180.0, gt=0)
    linger_s: float = Field(2.0, ge=0)
    sip_dedup_window_ms: float = Field(300.0, ge=0)
    media_dedup_window_ms: float = Field(1000.0, ge=0)
    leg_headers: Annotated[tuple[str, ...], NoDecode] = DEFAULT_LEG_HEADERS  # comma list in the env
    merge_by_media: bool = True
    controller_id: str = Field("controller", min_length=1, max_length=128,
                               pattern=r"^[A-Za-z0-9_.:-]+$")
    advertise: str | None = None               # HOST:PORT sensors use (registered in etcd)
    site: str = ""
    state_dir: Path = Path("./spanrec-state")  # write-ahead log and storage outbox
    metrics_listen: str | None = None          # HOST:PORT of the Prometheus scrape endpoint
    health_listen: str | None = None           # HOST:PORT of plain-text gRPC health only (probes)
    keep_calls_on_stop: bool = False           # SIGTERM leaves active calls to the next start (WAL)
    otlp_endpoint: str | None = None           # OTLP/gRPC collector for metrics and traces
    audio_format: Literal["wav", "flac", "opus"] = "wav"   # audio.wav | audio.flac | audio.opus
    # the call index (callindex/): sqlite:///PATH or postgresql://USER@HOST[:PORT]/DB, or none
    index: str | None = None
    index_password_file: Path | None = None    # else SPANREC_INDEX_PASSWORD or libpq's own
    index_pending_dir: Path | None = None      # call.json kept while the index is away (state_dir/index-pending)
    # retention (storage/retention.py): the default rule's days and the rules table
    # ([controller.retention], JSON in SPANREC_RETENTION, or etcd like the recording rules)
    retention_days: int | None = Field(None, ge=1, le=36600)
    retention: Annotated[dict[str, Any] | None, NoDecode] = None
    expire_every_s: float = Field(3600.0, ge=0)   # the controller's expiry job (0: off)
    # issue #15: write once, encryption at rest, signed manifests
    object_lock: Literal["governance", "compliance"] | None = None
    s3_sse: Literal["s3", "c"] | None = None   # S3 server-side encryption on top: SSE-S3 or SSE-C
    encryption_key_file: Annotated[tuple[Path, ...], NoDecode] = ()   # KEKs, the first is current
    signing_key_file: Path | None = None                               # Ed25519 private key (PEM)
    verify_key_file: Annotated[tuple[Path, ...], NoDecode] = ()       # older public keys (rotation)

    @field_validator("encryption_key_file", "verify_key_file", mode="before")
    @classmethod
    def _paths(cls, v: Any) -> Any:
        if isinstance(v, (str, Path)):
            v = [p.strip() for p in str(v).split(",") if p.strip()]
        return tuple(v or ())
    # recording rules (controller/calls/rules.py): a table ([controller.record_rules], or JSON in
    # SPANREC_RECORD_RULES), and single settings that replace one of its fields
    record_rules: Annotated[dict[str, Any] | None, NoDecode] = None
    no_record_header: str | None = None        # skip_header ("" or "none": no header rule)
    record_only: Annotated[tuple[str, ...], NoDecode] = ()     # include (comma list in the env)
    record_exclude: Annotated[tuple[str, ...], NoDecode] = ()  # exclude (comma list in the env)
    record_default: Literal["record", "signalling-only"] | None = None

    require_site: bool = False                 # refuse sensor certificates that name no site
    # address ranges per site (controller/ingest/sitefilter.py): a table ([controller.site_networks]),
    # JSON (SPANREC_SITE_NETWORKS), or the path of a TOML/JSON file (--site-networks PATH)
    site_networks: Annotated[dict[str, Any] | str | None, NoDecode] = None

    # sharding (issue #12, cli/shards.py): this process is one shard of a static ring ...
    shard_id: str | None = Field(None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")
    shard_members: str | None = None           # ID=HOST:PORT,... every shard of the ring
    # ... or a supervisor of N shard processes (`spanrec controller --shards N`,
    # `spanrec record --shards N`); 0 (the default): chosen from the cores available
    # (`shard_count`, docs/DECISIONS.md "Sharding: how many shards by default")
    shards: int = Field(0, ge=0, le=256)
    # shard membership through etcd (registry/shards.py): how long a shard whose record
    # vanished stays in the ring (expected back), and how long SIGTERM waits for calls
    shard_grace_s: float = Field(300.0, ge=0)
    drain_limit_s: float = Field(600.0, ge=0)
    # environment only (SPANREC_EXPECTED_SENSORS, SPANREC_RESULTS_FILE), set by
    # `spanrec record --shards N` for its shards: a shard that waits for K replays
    # (like record's in-process controller) and leaves its results in a file
    expected_sensors: int = Field(0, ge=0)
    results_file: Path | None = None

    _check_listen = field_validator("listen")(lambda cls, v: _hostport(v))

    @field_validator("shard_members")
    @classmethod
    def _check_members(cls, v: str | None) -> str | None:
        if v is not None:
            parse_members(v)
        return v

    @model_validator(mode="after")
    def _check_shard(self) -> ControllerSettings:
        if self.shard_members is None and self.shard_id is None:
            return self
        if self.shard_id is not None and self.shard_members is None and self.etcd:
            return self         # one shard of a ring kept in etcd (registry/shards.py)
        if self.shard_members is None or self.shard_id is None:
            raise ValueError("--shard-id and --shard-members go together (or --shard-id with --etcd)")
        members = parse_members(self.shard_members)
        ids = [sid for sid, _ in members]
        if self.shard_id not in ids:
            bare = any(sid == addr for sid, addr in members)
            raise ValueError(f"shard id {self.shard_id!r} is not among --shard-members "
                             f"({', '.join(ids)})" + ("; a bare HOST:PORT entry is its own id "
                                                     "(expected ID=HOST:PORT to name one)" if bare else ""))
        return self

    def etcd_shard(self) -> bool:
        """One shard whose ring is the shard records in etcd (no static member list)."""
        return bool(self.shard_id and self.etcd and not self.shard_members)

    def members(self) -> list[tuple[str, str]]:
        """[(shard id, HOST:PORT)] of this shard's ring; [] when not sharded."""
        return parse_members(self.shard_members) if self.shard_members else []

    def shard_count(self, replay_files: int = 0, input_bytes: int = 0) -> int:
        """--shards, or for 0 (the default) the cores available (`available_cores`):
        `spanrec controller` one shard per core (one when it listens on port 0:
        shards need PORT..PORT+N-1, or when it is one shard of a ring already);
        `spanrec record` (`replay_files` > 0) leaves a core to each file's sensor
        process, runs at most 3 shards per sensor (one sensor forwards ~200 k
        packets per CPU second, one shard takes ~55-70 k: scripts/bench), and one
        shard for inputs under SMALL_INPUT_BYTES (starting shard processes costs
        more than they save)."""
        if self.shards:
            return self.shards
        if self.shard_id or self.shard_members:
            return 1
        cores = available_cores()
        if not replay_files:
            return 1 if self.listen.rpartition(":")[2] == "0" else cores
        if input_bytes < SMALL_INPUT_BYTES:
            return 1
        return max(1, min(cores - replay_files, 3 * replay_files))

    @field_validator("metrics_listen")
    @classmethod
    def _metrics_loopback(cls, v: str | None) -> str | None:
        """`:9464` means loopback (127.0.0.1:9464): every interface only when
        written out (`0.0.0.0:9464`, `[::]:9464`)."""
        if v is None:
            return v
        v = _hostport(v) if not v.startswith(":") else _hostport("127.0.0.1" + v)
        return v
    _check_health = field_validator("health_listen")(lambda cls, v: v if v is None else _hostport(v))

    @field_validator("record_rules", "retention", mode="before")
    @classmethod
    def _parse_record_rules(cls, v: Any) -> Any:
        if isinstance(v, str):
            try:
                v = json.loads(v)
            except ValueError as exc:
                raise ValueError(f"not JSON: {exc}") from None
        if v is not None and not isinstance(v, dict):
            raise ValueError("expected a table (TOML) or a JSON object")
        return v

    @field_validator("record_only", "record_exclude", mode="before")
    @classmethod
    def _split_patterns(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [p.strip() for p in v.split(",") if p.strip()]
        return v

    @model_validator(mode="after")
    def _check_rules(self) -> ControllerSettings:
        try:
            self.recording_rules()
        except RulesError as exc:
            raise ValueError(str(exc)) from None
        return self

    @model_validator(mode="after")
    def _check_site_networks(self) -> ControllerSettings:
        from controller.ingest.sitefilter import SiteNetworks, load_site_networks
        v = self.site_networks
        if v is None or v == "":
            self.site_networks = None
            return self
        try:
            if isinstance(v, str):
                v = json.loads(v) if v.lstrip().startswith("{") else load_site_networks(v)
            self.site_networks = SiteNetworks.from_dict(v).as_dict()
        except ValueError as exc:    # SiteNetworksError, bad JSON
            raise ValueError(str(exc).splitlines()[0]) from None
        return self

    def site_ranges(self) -> Any:
        """controller.ingest.sitefilter.SiteNetworks, or None when no site has ranges."""
        from controller.ingest.sitefilter import SiteNetworks
        return SiteNetworks.from_dict(self.site_networks) if self.site_networks else None

    @model_validator(mode="after")
    def _check_retention(self) -> ControllerSettings:
        from storage.retention import RetentionError
        try:
            self.retention_policy()
        except RetentionError as exc:
            raise ValueError(str(exc)) from None
        return self

    def retention_policy(self) -> Any:
        """storage.retention.RetentionPolicy: the retention table with --retention-days as its default."""
        from storage.retention import RetentionPolicy
        data = dict(self.retention or {})
        if self.retention_days is not None:
            data["default_days"] = self.retention_days
        return RetentionPolicy.from_dict(data)

    def recording_rules(self) -> RecordingRules:
        """The rules: the record_rules table with the single settings over it."""
        data = {str(k).replace("-", "_"): v for k, v in (self.record_rules or {}).items()}
        if self.no_record_header is not None:
            data["skip_header"] = self.no_record_header
        if self.record_only:
            data["include"] = list(self.record_only)
        if self.record_exclude:
            data["exclude"] = list(self.record_exclude)
        if self.record_default is not None:
            data["default"] = self.record_default
        return RecordingRules.from_dict(data)

    _check_leg_headers = field_validator("leg_headers", mode="before")(
        lambda cls, v: _leg_headers(v))


class SensorSettings(_Cluster):
    sensor_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")
    controller: str | None = None
    site: str = ""
    interface: str | None = None
    pcap: Path | None = None
    bpf: str | None = None
    snaplen: int = Field(65535, ge=256, le=262144)
    timeout_ms: int = Field(10, ge=1, le=1000)
    capture_buffer_mb: int = Field(64, ge=1, le=4096)   # kernel ring (sensor/libpcap.py)
    # the sensor link (transport/batches.py): zstd per batch by default, measured in
    # docs/BENCHMARK.md "WAN" (0.41 of the bytes on the shared captures, ~0.5-0.9 µs of
    # sensor CPU a packet); gzip is gRPC's stream compression
    compression: Literal["none", "gzip", "zstd"] = "zstd"
    connect_timeout_s: float | None = Field(None, gt=0)
    max_batches: int = Field(4096, ge=4)
    spool_dir: Path = Path("./spanrec-spool")  # batches the controller has not acknowledged
    spool_max_mb: float = Field(1024.0, gt=0)  # when full, the oldest batches are dropped (counted)
    realtime: bool = False                     # replay a file at its captured pace
    rtp_heuristics: bool = True                # forward RTP recognised without SDP
    # routing keys (sensor/route.py): the same as the controller shards' --leg-header
    leg_headers: Annotated[tuple[str, ...], NoDecode] = DEFAULT_LEG_HEADERS
    shard_grace_s: float = Field(300.0, ge=0)  # a shard whose etcd record vanished stays this long

    _check_leg_headers = field_validator("leg_headers", mode="before")(
        lambda cls, v: _leg_headers(v))

    @field_validator("controller")
    @classmethod
    def _check_controller(cls, v: str | None) -> str | None:
        """HOST:PORT, or the shards of a sharded controller: ID=HOST:PORT,... (sensor/route.py)."""
        if v is None:
            return v
        from registry.ring import parse_members as parse
        parse(v)                 # ShardListError (a ValueError): one line, exit 2
        return v


def _read_file(path: str | None, section: str) -> dict[str, Any]:
    if not path:
        return {}
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    values = data.get(section, data)
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path}: [{section}] must be a table")
    tables = _TABLES.get(section, ())
    return {k.replace("-", "_"): v for k, v in values.items()
            if not isinstance(v, dict) or k.replace("-", "_") in tables}


#: settings that are tables in the config file ([controller.record_rules])
_TABLES = {"controller": ("record_rules", "site_networks", "retention")}


def load(cls: type[_Base], section: str, config_file: str | None, flags: dict[str, Any]) -> Any:
    """Builds settings with flags > environment > file > defaults."""
    values = _read_file(config_file, section)
    # init values beat the environment in pydantic-settings: drop file values
    # that the environment sets, so the environment wins over the file.
    values = {k: v for k, v in values.items() if f"SPANREC_{k.upper()}" not in os.environ}
    values.update({k: v for k, v in flags.items() if v is not None and v != ()})
    try:
        return cls(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        if not err["loc"]:  # a check across settings (recording rules): its own message
            raise ConfigError(f"invalid settings: {err['msg'].removeprefix('Value error, ')}") from None
        where = ".".join(str(p) for p in err["loc"]) or "settings"
        raise ConfigError(f"invalid setting {where!r}: {err['msg']}") from None

"""`spanrec` command line: record (the embedded default), controller, sensor.

Errors are mapped to one line here, once: bad flags or config exit 2, runtime
failures exit 1. Set SPANREC_DEBUG=1 for tracebacks.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from cli.settings import ConfigError, ControllerSettings, Failure, SensorSettings, load


_config_option = click.option(
    "--config", "config_file", type=click.Path(dir_okay=False),
    help="TOML config file; its [controller] or [sensor] table (or top-level keys) "
         "sets defaults. Flags beat SPANREC_* environment variables, which beat the file.")
_log_options = [
    click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
                 help="Log level (default info; env SPANREC_LOG_LEVEL)."),
    click.option("--log-format", type=click.Choice(["json", "text"]),
                 help="Logs on stderr as JSON lines (default) or key=value text."),
]


def _with_logs(f):
    for opt in reversed(_log_options):
        f = opt(f)
    return f


_cluster_options = [
    click.option("--tls-cert", type=click.Path(dir_okay=False),
                 help="PEM certificate of this process (mTLS; env SPANREC_TLS_CERT)."),
    click.option("--tls-key", type=click.Path(dir_okay=False),
                 help="PEM private key of --tls-cert (env SPANREC_TLS_KEY)."),
    click.option("--tls-ca", type=click.Path(dir_okay=False),
                 help="PEM CA certificate that signs the peers (env SPANREC_TLS_CA)."),
    click.option("--insecure", is_flag=True, default=None,
                 help="Plain-text gRPC without TLS (logged as a warning); only for labs."),
    click.option("--etcd", help="etcd endpoints, comma separated host:port (registry and runtime "
                                "config). Credentials only from SPANREC_ETCD_USER/_PASSWORD."),
    click.option("--etcd-prefix", help="Key prefix in etcd (default /spanrec/)."),
    click.option("--etcd-ca", type=click.Path(dir_okay=False),
                 help="PEM CA of etcd's certificate: TLS to etcd (env SPANREC_ETCD_CA)."),
    click.option("--etcd-cert", type=click.Path(dir_okay=False),
                 help="PEM client certificate for etcd (env SPANREC_ETCD_CERT)."),
    click.option("--etcd-key", type=click.Path(dir_okay=False),
                 help="PEM private key of --etcd-cert (env SPANREC_ETCD_KEY)."),
    click.option("--etcd-server-name", help="Name to verify in etcd's certificate (default: the "
                                            "--etcd host)."),
    click.option("--etcd-insecure", is_flag=True, default=None,
                 help="Allow plain text to an etcd on another host (warned); never with a password."),
    click.option("--file-mode", help="Mode of recordings, spool, outbox, write-ahead log and "
                                     "spill files: 0600 (default; folders 0700), or 0640/0660 to "
                                     "let the group read (folders 0750/0770). Umask is ignored."),
]


def _with_cluster(f):
    for opt in reversed(_cluster_options):
        f = opt(f)
    return f


_rule_options = [
    click.option("--no-record-header", metavar="NAME",
                 help="SIP header whose value no/false/0/off in a call's INVITE means: do not "
                      "record its media (default X-Record; \"none\" turns the rule off)."),
    click.option("--record-only", "record_only", multiple=True, metavar="PATTERN",
                 help="Record only calls whose From or To URI (or its user part) matches this "
                      "glob, e.g. 'sip:+4930*' or '1???' (prefix from:/to: for one side); repeat "
                      "for several. Other calls keep call.json and a SIP-only call.pcap."),
    click.option("--record-exclude", "record_exclude", multiple=True, metavar="PATTERN",
                 help="Never record calls whose From or To matches this glob (beats "
                      "--record-only); repeatable."),
    click.option("--record-default", type=click.Choice(["record", "signalling-only"]),
                 help="For calls no pattern decides (default: signalling-only with "
                      "--record-only, else record). Full rules: [controller.record_rules] in "
                      "--config or SPANREC_RECORD_RULES (JSON); with --etcd also "
                      "/spanrec/config/controller at run time."),
]


def _with_rules(f):
    for opt in reversed(_rule_options):
        f = opt(f)
    return f


def _with_index(f):
    f = click.option("--index-password-file", type=click.Path(dir_okay=False),
                     help="File holding the PostgreSQL index's password (else env "
                          "SPANREC_INDEX_PASSWORD, PGPASSWORD or ~/.pgpass).")(f)
    return click.option("--index", help="Call index the recordings are entered in: sqlite:///PATH or "
                                        "postgresql://USER@HOST[:PORT]/DB, or none; env SPANREC_INDEX.")(f)


def _with_protection(f):
    """Issue #15: write once, encryption at rest, signed manifests."""
    for opt in reversed([
        click.option("--object-lock", type=click.Choice(["governance", "compliance"]),
                     help="S3 Object Lock on every recording file until its retain-until (the bucket "
                          "needs object lock and versioning; checked at start)."),
        click.option("--s3-sse", type=click.Choice(["s3", "c"]),
                     help="Also ask the S3 server to encrypt every object: s3 = SSE-S3 (its own keys), "
                          "c = SSE-C with the key in SPANREC_S3_SSE_C_KEY_FILE (https only; every reader "
                          "needs it). spanrec's own encryption is --encryption-key-file."),
        click.option("--encryption-key-file", "encryption_key_file", multiple=True,
                     type=click.Path(dir_okay=False),
                     help="Key-encryption key (scripts/make-keys); repeat for rotation, the first is "
                          "used for new recordings. Else SPANREC_KEK; without one nothing is encrypted."),
        click.option("--signing-key-file", type=click.Path(dir_okay=False),
                     help="Ed25519 private key that signs each recording's manifest.json."),
        click.option("--verify-key-file", "verify_key_file", multiple=True, type=click.Path(dir_okay=False),
                     help="Older public keys still accepted when verifying (after a rotation)."),
    ]):
        f = opt(f)
    return f


_retention_option = click.option(
    "--retention-days", "retention_days", type=click.IntRange(1, 36600),
    help="Keep recordings this many days from the call's start (the default retention rule; "
         "rules per number or site: [controller.retention]); env SPANREC_RETENTION_DAYS.")


_audio_format_option = click.option(
    "--audio-format", type=click.Choice(["wav", "flac", "opus"]),
    help="Audio file of each recording: audio.wav (16-bit PCM, default), audio.flac "
         "(lossless) or audio.opus (Ogg Opus, ~48 kbit/s); env SPANREC_AUDIO_FORMAT.")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option("0.1.0", prog_name="spanrec")
def cli() -> None:
    """spanrec records VoIP calls from mirrored SIP/RTP traffic.

    Sensors capture on mirror ports (or replay capture files) and stream SIP,
    RTP and RTCP over gRPC to a controller, which writes one recording per
    call: call.json, audio.wav and call.pcap.
    """


@cli.command()
@click.argument("files", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, readable=True))
@click.option("--out", "out", type=click.Path(file_okay=False), default="recordings",
              show_default=True, help="Folder the recordings are written to.")
@click.option("--storage", help="Storage URL instead of --out: a folder, file:///path or "
                                "s3://BUCKET/PREFIX (endpoint and keys from SPANREC_S3_* env).")
@click.option("-o", "--output", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True, help="How the list of recorded calls is printed on stdout.")
@click.option("--no-progress", is_flag=True, help="Do not show the progress bars on stderr.")
@click.option("--shards", type=click.IntRange(0, 256),
              help="Controller shard processes; calls are split over them by the sensors. "
                   "Default (or 0): the cores available less one per FILE (its sensor), at most "
                   "3 per FILE, and 1 (the controller in this process) for inputs under 32 MiB.")
@_audio_format_option
@_retention_option
@_with_protection
@_with_index
@_with_rules
@_config_option
@_with_logs
def record(files: tuple[str, ...], out: str, storage: str | None, fmt: str, no_progress: bool,
           shards: int | None, config_file: str | None, log_level: str | None,
           log_format: str | None, index: str | None, index_password_file: str | None,
           retention_days: int | None, object_lock: str | None, s3_sse: str | None,
           encryption_key_file: tuple[str, ...],
           signing_key_file: str | None, verify_key_file: tuple[str, ...], **rules: Any) -> None:
    """Record capture FILES (pcap or pcapng) into --out.

    Runs the whole path on this machine: a controller in this process and one
    sensor process per file, talking real gRPC on loopback. Waits until every
    call is written, then prints the calls. Exit status 1 when a file was
    truncated or corrupt (everything before the bad spot is still recorded).
    Each recording is entered in a call index: by default index.sqlite in the
    recordings folder (`spanrec index search`).
    """
    settings = load(ControllerSettings, "controller", config_file, {
        "storage": storage or out, "log_level": log_level or "warning", "log_format": log_format,
        "listen": "127.0.0.1:0", "shards": shards, "index": index,
        "index_password_file": index_password_file, "retention_days": retention_days,
        "object_lock": object_lock, "s3_sse": s3_sse, "encryption_key_file": encryption_key_file or None,
        "signing_key_file": signing_key_file, "verify_key_file": verify_key_file or None, **rules})
    settings = _record_index(settings)
    _setup_logs(settings)
    _file_modes(settings)
    # Exempt from mTLS: the controller listens on 127.0.0.1 only and the sensors
    # are this process's own children, which inherit this environment.
    for name in ("SPANREC_TLS_CERT", "SPANREC_TLS_KEY", "SPANREC_TLS_CA"):
        os.environ.pop(name, None)
    os.environ["SPANREC_INSECURE"] = "1"
    from cli.record import run_record
    ok = run_record(settings, [Path(f) for f in files], fmt=fmt, progress=not no_progress)
    if not ok:
        sys.exit(1)


def _record_index(settings: ControllerSettings) -> ControllerSettings:
    """record's default index: index.sqlite in a local recordings folder (the
    call.json it cannot take kept in .index-pending there). With S3 storage
    only an --index given is used."""
    folder = _local_folder(settings.storage)
    update: dict[str, Any] = {}
    if settings.index is None and folder is not None:
        update["index"] = f"sqlite:///{folder / 'index.sqlite'}"
    if settings.index_pending_dir is None and folder is not None:
        update["index_pending_dir"] = folder / ".index-pending"
    return settings.model_copy(update=update) if update else settings


def _local_folder(storage: str) -> Path | None:
    if storage.startswith("s3://"):
        return None
    path = storage[len("file://"):] if storage.startswith("file://") else storage
    return Path(path).expanduser().absolute()


@cli.command()
@click.option("--listen", help="HOST:PORT for sensors and the admin API (default 0.0.0.0:7600).")
@click.option("--storage", help="Folder, file:///path or s3://BUCKET/PREFIX (default ./recordings). "
                                "S3 endpoint/keys: --s3-endpoint or SPANREC_S3_ENDPOINT, "
                                "SPANREC_S3_ACCESS_KEY, SPANREC_S3_SECRET_KEY.")
@click.option("--s3-endpoint", help="S3 endpoint URL, e.g. http://127.0.0.1:9000.")
@click.option("--answered-timeout", "answered_timeout_s", type=float,
              help="End an answered call after this many seconds without SIP or RTP (default 300).")
@click.option("--setup-timeout", "setup_timeout_s", type=float,
              help="End an unanswered call after this many seconds without SIP or RTP (default 180).")
@click.option("--sip-dedup-window", "sip_dedup_window_ms", type=float,
              help="A SIP packet seen again within this many ms (capture time) is a mirror copy "
                   "(default 300: below the 500 ms first retransmission).")
@click.option("--media-dedup-window", "media_dedup_window_ms", type=float,
              help="The same for RTP/RTCP (default 1000).")
@click.option("--leg-header", "leg_headers", multiple=True,
              help="SIP header naming another leg's Call-ID (B2BUA/SBC); repeat for several "
                   "(default X-Call-ID and X-CID).")
@click.option("--merge-by-media/--no-merge-by-media", default=None,
              help="Merge legs whose RTP is the same audio relayed (default on).")
@click.option("--controller-id", help="Name of this controller in status output.")
@click.option("--advertise", help="HOST:PORT sensors should connect to, registered in etcd "
                                  "(default: --listen, with this host's name for 0.0.0.0).")
@click.option("--site", help="Site name of this controller in the registry.")
@click.option("--state-dir", type=click.Path(file_okay=False),
              help="Folder for the write-ahead log and the storage outbox (default ./spanrec-state).")
@click.option("--metrics-listen", help="[HOST]:PORT of a Prometheus scrape endpoint (off by default); "
                                      "':9464' is 127.0.0.1:9464, give 0.0.0.0:9464 for every interface.")
@click.option("--keep-calls-on-stop/--finish-calls-on-stop", "keep_calls_on_stop", default=None,
              help="On SIGTERM, leave calls in progress in the write-ahead log for the next start "
                   "(a restart does not split them) instead of writing them now (default).")
@click.option("--health-listen", help="HOST:PORT serving only gRPC health checking in plain text, "
                                      "for probes that cannot do mTLS (off by default).")
@click.option("--otlp-endpoint", help="OTLP/gRPC collector for metrics and traces (off by default).")
@click.option("--require-site/--no-require-site", default=None,
              help="Refuse sensors whose certificate names no site (make-certs client --site); "
                   "a certificate that names one always binds the sensor to it (default off).")
@click.option("--site-networks", help="TOML/JSON file of site = [CIDR, ...]: a sensor's packets whose "
                                      "source and destination are both outside its site's ranges "
                                      "are dropped and counted (default off).")
@click.option("--shards", type=click.IntRange(0, 256),
              help="Run N shard processes of one logical controller (default, or 0: one per "
                   "core available; 1 with --listen port 0). N > 1: shard i is 'shard-<i>' on "
                   "--listen PORT+i with --state-dir DIR/shard-<i> (health/metrics ports +i too); a "
                   "shard that dies is restarted with its state. A sensor given HOST:PORT alone "
                   "learns the shards from it (or give every shard: --controller "
                   "shard-0=HOST:PORT,..., printed at start); with --etcd shard i is "
                   "'<controller-id>-<i>', registered in etcd, and sensors with --etcd find every "
                   "shard there. 1: this process alone.")
@click.option("--shard-id", help="This process is the shard ID of --shard-members, or with --etcd "
                                 "and no --shard-members, of the shards registered in etcd.")
@click.option("--shard-grace", "shard_grace_s", type=float,
              help="With --etcd: a shard whose record vanished (killed, machine down) stays in "
                   "the ring this many seconds, expected back, before its calls move (default "
                   "300; give the sensors the same).")
@click.option("--drain-limit", "drain_limit_s", type=float,
              help="With --etcd, a shard's SIGTERM: it marks itself leaving and keeps recording "
                   "until its calls end, at most this many seconds (default 600), then leaves "
                   "etcd and exits. A second SIGTERM cuts the drain short.")
@click.option("--shard-members", metavar="ID=HOST:PORT,...",
              help="Every shard of a static ring (this one included); sensors route each call "
                   "to the shard that owns it and must be given the same list.")
@_with_index
@_retention_option
@click.option("--expire-every", "expire_every_s", type=click.FloatRange(min=0),
              help="Seconds between runs of the expiry job (deletes recordings past their retention "
                   "unless held; default 3600; 0: off; needs --index).")
@_with_protection
@_audio_format_option
@_with_rules
@_with_cluster
@_config_option
@_with_logs
def controller(config_file: str | None, **flags: Any) -> None:
    """Run a controller: receive sensors' packets and write recordings until stopped."""
    settings = load(ControllerSettings, "controller", config_file, flags)
    _setup_logs(settings)
    if settings.shard_count() > 1:
        # a supervisor of shard processes: each child installs its own TLS
        # handshake watch; this process listens on nothing
        from cli.shards import run_supervisor, shard_plan
        plan = shard_plan(settings, settings.shard_count(), _command_args("controller"))
        _check_security(settings)        # refused here once, not by every shard
        if settings.etcd:
            settings.etcd_security().warn()
        _file_modes(settings)
        run_supervisor(settings, *plan)
        return
    if not settings.insecure:   # before grpc is imported: gRPC core reads GRPC_TRACE then
        from transport import handshakes   # failed TLS handshakes logged and counted
        handshakes.install(_port(settings.listen))
    _check_security(settings)
    if settings.etcd:
        settings.etcd_security().warn()  # TLS/plain-text rules for etcd: exit 2 before anything runs
    _file_modes(settings)
    from cli.serve import run_controller
    run_controller(settings)


@cli.command()
@click.option("--interface", "-i", help="Capture live on this interface (mirror port).")
@click.option("--pcap", type=click.Path(exists=True, dir_okay=False),
              help="Replay this capture file instead of capturing live.")
@click.option("--controller", help="Controller HOST:PORT (or find it with --etcd), or the shards of a "
                                   "sharded controller: ID=HOST:PORT,ID=HOST:PORT,... (each call goes "
                                   "to the shard that owns it).")
@click.option("--sensor-id", help="Unique id of this sensor (letters, digits, _ . : -).")
@click.option("--site", help="Site name shown in status.")
@click.option("--bpf", help="BPF filter for live capture (default: UDP, TCP and IP fragments, "
                            "with or without VLAN tags).")
@click.option("--snaplen", type=int, help="Bytes kept per packet in live capture (default 65535).")
@click.option("--timeout-ms", type=int, help="libpcap read timeout: the most a packet waits in "
                                             "the kernel ring (default 10).")
@click.option("--compression", type=click.Choice(["zstd", "gzip", "none"]),
              help="Compress the link to the controller: zstd compresses each batch (default; "
                   "~0.4 of the bytes on real captures for ~0.5-0.9 µs of CPU a packet), gzip is "
                   "gRPC's compression of the stream (costlier), none for a LAN where CPU is "
                   "scarcer than bandwidth (docs/BENCHMARK.md \"WAN\").")
@click.option("--capture-buffer-mb", type=int,
              help="Kernel capture ring in MiB (libpcap's buffer size; default 64): what absorbs "
                   "a pause of the sensor. At low rates the ring lasts about "
                   "(MiB / 0.125) x --timeout-ms: 64 MiB at 10 ms is 5 s.")
@click.option("--connect-timeout", "connect_timeout_s", type=float,
              help="Give up when the controller is unreachable this long "
                   "(default: never for live capture, 30 s for a replay).")
@click.option("--spool-dir", type=click.Path(file_okay=False),
              help="Folder where batches wait until the controller acknowledges them "
                   "(default ./spanrec-spool).")
@click.option("--spool-max-mb", type=float,
              help="Spool size bound in MiB; when full the oldest batches are dropped and "
                   "counted (default 1024).")
@click.option("--realtime", is_flag=True, default=None,
              help="Replay --pcap at the pace it was captured instead of as fast as possible.")
@click.option("--rtp-heuristics/--no-rtp-heuristics", default=None,
              help="Also forward UDP flows that look like RTP (sequence and timestamp advancing) "
                   "on ports no SDP announced, and their RTCP (default on).")
@click.option("--leg-header", "leg_headers", multiple=True,
              help="SIP header naming another leg's Call-ID (B2BUA/SBC), used to route a call's "
                   "legs to one controller shard; repeat for several (default X-Call-ID and "
                   "X-CID). Give the same as the controller shards' --leg-header.")
@click.option("--shard-grace", "shard_grace_s", type=float,
              help="With --etcd and a sharded controller: a shard whose record vanished from etcd "
                   "(killed, machine down) keeps its calls in progress this many seconds, "
                   "expected back with the same id, before its calls move (default 300; give the "
                   "shards the same).")
@_with_cluster
@_config_option
@_with_logs
def sensor(config_file: str | None, **flags: Any) -> None:
    """Run a sensor: capture (or replay) SIP/RTP and stream it to the controller."""
    settings = load(SensorSettings, "sensor", config_file, flags)
    if bool(settings.interface) == bool(settings.pcap):
        raise ConfigError("give exactly one of --interface or --pcap")
    if not settings.controller and not settings.etcd:
        raise ConfigError("give --controller HOST:PORT or --etcd to find the controller")
    _setup_logs(settings)
    _check_security(settings)
    _file_modes(settings)
    from sensor.pipeline import SensorFailed, SensorOptions, run_sensor
    connect_timeout = settings.connect_timeout_s
    if connect_timeout is None and settings.pcap:
        connect_timeout = 30.0
    opts = SensorOptions(
        sensor_id=settings.sensor_id, controller=settings.controller, site=settings.site,
        interface=settings.interface, pcap=str(settings.pcap) if settings.pcap else None,
        bpf=settings.bpf, snaplen=settings.snaplen, timeout_ms=settings.timeout_ms,
        buffer_bytes=settings.capture_buffer_mb << 20, compression=settings.compression,
        connect_timeout_s=connect_timeout, max_batches=settings.max_batches,
        spool_dir=str(settings.spool_dir), spool_max_bytes=int(settings.spool_max_mb * (1 << 20)),
        realtime=settings.realtime, etcd=settings.etcd, etcd_prefix=settings.etcd_prefix,
        tls_cert=settings.tls_cert, tls_key=settings.tls_key, tls_ca=settings.tls_ca,
        insecure=settings.insecure, rtp_heuristics=settings.rtp_heuristics,
        etcd_security=settings.etcd_security() if settings.etcd else None,
        leg_headers=settings.leg_headers, shard_grace_s=settings.shard_grace_s)
    if opts.etcd_security is not None:
        opts.etcd_security.warn()
    import signal
    import threading
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    from transport.tls import TlsError
    try:
        error = run_sensor(opts, stop)
    except SensorFailed as exc:
        raise Failure(str(exc)) from None
    except TlsError as exc:
        raise ConfigError(str(exc)) from None
    if error:
        raise Failure(error)


def _check_security(settings: Any) -> None:
    """mTLS files load and match, or --insecure was given (logged): else exit 2."""
    from transport.tls import INSECURE_WARNING, Security, TlsError
    try:
        security = Security.from_settings(settings)
    except TlsError as exc:
        raise ConfigError(str(exc)) from None
    if security.insecure:
        import logging
        logging.getLogger("spanrec.security").warning(INSECURE_WARNING)


def _file_modes(settings: Any) -> None:
    """Files this process creates get --file-mode whatever the umask (storage/files.py)."""
    from storage.files import configure, parse_mode
    configure(parse_mode(settings.file_mode))


def _port(listen: str) -> int:
    try:
        return int(listen.rpartition(":")[2])
    except ValueError:
        return 0


def _setup_logs(settings: Any) -> None:
    from cli import logs
    logs.setup(settings.log_level, settings.log_format)


def _add_index_commands() -> None:
    from cli.index import expire_cmd, index_group, user_group
    cli.add_command(index_group)
    cli.add_command(user_group)
    cli.add_command(expire_cmd)
    from cli.web import web_cmd
    cli.add_command(web_cmd)


_add_index_commands()
_ARGV: list[str] = []


def _command_args(name: str) -> list[str]:
    """The arguments given after the command `name` (a supervisor passes them on)."""
    args = _ARGV or sys.argv[1:]
    return list(args[args.index(name) + 1:]) if name in args else []


def main(argv: list[str] | None = None) -> None:
    """Entry point: one line per error, exit 2 for usage/config, 1 for failures."""
    from cli.errors import run
    from cli.shards import die_with_parent
    die_with_parent()        # a shard or sensor started by a supervisor or `spanrec record`
    _ARGV[:] = sys.argv[1:] if argv is None else argv
    run(cli, "spanrec", argv, usage_errors=(ConfigError,), failures=(Failure,))


if __name__ == "__main__":
    main()

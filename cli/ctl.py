"""`spanrecctl`: the fleet CLI, a client of the controller's Admin API.

Commands talk to `transport.admin_client.AdminClient` (dataclasses, no
protobuf) and print through `cli.output` (a table, or JSON with `-o json`).
Errors are one line: exit 2 for usage and TLS settings, 1 when the
controller cannot be reached (within --timeout) or answers with an error.

A sharded controller (`spanrec controller --shards N`, issue #12) is one view
whichever shard is asked: its Status names every shard, and `fleet`, `calls`,
`call` and `get` ask them all (`transport.admin_cluster.Cluster`).  When some
shards do not answer, what the others said is printed, the missing shards are
named on stderr, and the exit code is 3 (`EXIT_PARTIAL`).
"""
from __future__ import annotations

import sys
import time

from pathlib import Path
from typing import Any, Callable

import click

from cli import output

PROG = "spanrecctl"
#: a sharded controller's answer without some shards (they did not answer in time)
EXIT_PARTIAL = 3

_options = [
    click.option("--controller", "-c", envvar="SPANREC_CONTROLLER", default="127.0.0.1:7600",
                 show_default=True, help="Controller HOST:PORT (env SPANREC_CONTROLLER)."),
    click.option("--etcd", envvar="SPANREC_ETCD",
                 help="Find the controller in etcd instead (comma list of host:port; env "
                      "SPANREC_ETCD; credentials from SPANREC_ETCD_USER/_PASSWORD[_FILE])."),
    click.option("--etcd-prefix", envvar="SPANREC_ETCD_PREFIX", default="/spanrec/",
                 show_default=True, help="Key prefix of the registry in etcd."),
    click.option("--tls-cert", envvar="SPANREC_TLS_CERT", type=click.Path(dir_okay=False),
                 help="PEM client certificate signed by the cluster CA (env SPANREC_TLS_CERT)."),
    click.option("--tls-key", envvar="SPANREC_TLS_KEY", type=click.Path(dir_okay=False),
                 help="PEM private key of --tls-cert (env SPANREC_TLS_KEY)."),
    click.option("--tls-ca", envvar="SPANREC_TLS_CA", type=click.Path(dir_okay=False),
                 help="PEM CA certificate that signs the controller (env SPANREC_TLS_CA)."),
    click.option("--insecure", is_flag=True, envvar="SPANREC_INSECURE",
                 help="Plain-text gRPC without TLS (warned about); only for labs."),
    click.option("--timeout", "timeout_s", type=click.FloatRange(min=0.1), default=5.0,
                 show_default=True, help="Seconds to wait for the controller's answer."),
    click.option("-o", "--output", "fmt", type=click.Choice(["table", "json"]), default="table",
                 show_default=True, help="A readable table, or JSON for scripts."),
]


def _client_options(f: Callable) -> Callable:
    for opt in reversed(_options):
        f = opt(f)
    return f


class _Config(Exception):
    """One line, exit 2."""


def _from_etcd(etcd: str, prefix: str, timeout_s: float) -> str:
    """Address of the most recently started controller registered in etcd."""
    from registry import EtcdSecurity, EtcdSecurityError, Registry, parse_endpoints
    endpoints = parse_endpoints(etcd)
    try:  # TLS to etcd from SPANREC_ETCD_CA/_CERT/_KEY (or _INSECURE), as the daemons
        security = EtcdSecurity.from_options(endpoints)
    except EtcdSecurityError as exc:
        raise _Config(str(exc)) from None
    security.warn()
    reg = Registry(endpoints, prefix, None, security=security, watch_members=True)
    try:
        if not reg.start(wait=timeout_s):
            raise AdminLookupFailed(f"etcd {etcd} unreachable ({reg.state.value})")
        deadline = time.monotonic() + 1.0
        while True:
            found = [m for m in reg.members().values() if m.role == "controller" and m.address]
            if found or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        reg.stop()
    if not found:
        raise AdminLookupFailed(f"no controller registered in etcd {etcd} under {prefix}")
    return max(found, key=lambda m: m.started_at).address


class AdminLookupFailed(Exception):
    """The controller could not be found (exit 1)."""


def _connect(controller: str, tls_cert: str | None, tls_key: str | None, tls_ca: str | None,
             insecure: bool, timeout_s: float, etcd: str | None = None,
             etcd_prefix: str = "/spanrec/") -> Any:
    from transport.admin_client import AdminClient
    from transport.tls import INSECURE_WARNING, Security, TlsError
    if etcd:
        controller = _from_etcd(etcd, etcd_prefix, timeout_s)
    host, sep, port = controller.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise _Config(f"--controller: expected HOST:PORT, got {controller!r}")
    try:
        security = Security.from_options(tls_cert, tls_key, tls_ca, insecure)
    except TlsError as exc:
        raise _Config(str(exc)) from None
    if security.insecure:
        output.warning(INSECURE_WARNING)
    return AdminClient(controller, security, timeout_s=timeout_s)


def _partial(unreachable: list[str]) -> None:
    """Exit EXIT_PARTIAL, after one stderr line, when some shards did not answer."""
    if unreachable:
        output.warning(f"partial answer: shard(s) {', '.join(unreachable)} did not answer "
                       f"(exit {EXIT_PARTIAL})")
        sys.exit(EXIT_PARTIAL)     # click's Exit would be returned, not raised, by cli.errors.run


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option("0.1.0", prog_name=PROG)
def ctl() -> None:
    """spanrecctl: look at a spanrec controller's fleet, calls and recordings.

    Talks to the controller's admin API over mTLS: give a client certificate
    from the cluster CA (scripts/make-certs ... client NAME) with --tls-cert,
    --tls-key and --tls-ca, or SPANREC_TLS_* in the environment.
    """


@ctl.command()
@_client_options
def fleet(fmt: str, **conn: Any) -> None:
    """Sensors: state, link, last heartbeat, packet rates, drops, spool depth;
    media seen without signalling (flows, packets, likely cause such as SIP
    over TLS) and each sensor's SIP-over-TLS packets when there are any.

    A sharded controller: every shard (its state, calls, packets, drops; the
    totals below), each sensor once; exit 3 when some shard did not answer."""
    from transport.admin_cluster import Cluster
    with _connect(**conn) as admin:
        view = admin.fleet()
        if view.shard_members:
            view = Cluster(admin, view).fleet()
    if view.__class__.__name__ == "ClusterFleet":
        output.print_cluster_fleet(view, fmt)
        _partial(view.unreachable)
    else:
        output.print_fleet(view, fmt)


@ctl.command()
@click.option("--active", is_flag=True, help="Only calls in progress.")
@click.option("--limit", type=click.IntRange(min=0), default=0,
              help="At most this many calls (0 = all the controller keeps); with --page, the page size.")
@click.option("--page", "page", default=None, metavar="TOKEN",
              help="One page only: '' (or 'first') for the first, then the token printed after it.")
@_client_options
def calls(active: bool, limit: int, page: str | None, fmt: str, **conn: Any) -> None:
    """Active calls, then recent recordings with their storage location.

    A sharded controller: every shard's calls in one list (without --page; a
    page is the asked shard's), exit 3 when some shard did not answer."""
    from transport.admin_cluster import Cluster
    token, missing, shards = "", [], 0
    with _connect(**conn) as admin:
        cluster = Cluster(admin)
        if page is None:
            found, missing = cluster.calls(active_only=active, limit=limit)
            shards = len(cluster.members)
        else:
            found, token = admin.calls_page(active_only=active, limit=limit,
                                            page_token="" if page == "first" else page)
    title = f"{len(found)} {'active ' if active else ''}call(s) on {conn['controller']}"
    if shards:
        title += f" and the other shards ({shards - len(missing)} of {shards} answered)"
    output.print_call_list(found, fmt, title=title)
    if token:
        output.note(f"next page: spanrecctl calls --page {token}")
    _partial(missing)


@ctl.command()
@click.argument("recording_id", metavar="ID")
@_client_options
def call(recording_id: str, fmt: str, **conn: Any) -> None:
    """One call: its call.json (stored) or live summary (active), from whichever
    shard of a sharded controller has it."""
    from transport.admin_cluster import Cluster
    with _connect(**conn) as admin:
        output.print_call(Cluster(admin).call(recording_id), fmt)


@ctl.command()
@click.argument("recording_id", metavar="ID")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=".",
              show_default=True, help="Folder to write into; the files go to OUT/ID/.")
@_client_options
def get(recording_id: str, out_dir: str, fmt: str, **conn: Any) -> None:
    """Download a stored recording's files (call.json, call.pcap, audio.wav)."""
    from transport.admin_cluster import Cluster
    with _connect(**conn) as admin:
        files = Cluster(admin).download(recording_id, Path(out_dir))
    output.print_downloads(files, fmt, title=f"recording {recording_id} -> "
                                             f"{Path(out_dir) / recording_id}")


from cli.index import search_options  # noqa: E402 - the same filters as `spanrec index search`


@ctl.command()
@search_options
@_client_options
def search(fmt: str, controller: str, etcd: str | None, etcd_prefix: str, tls_cert: str | None,
           tls_key: str | None, tls_ca: str | None, insecure: bool, timeout_s: float,
           **flags: Any) -> None:
    """Search the call index of the cluster (needs an operator certificate; one
    limited to number patterns finds only those calls). Every search is audited."""
    from cli.index import query_from_flags
    query_from_flags(flags)          # a bad flag is a usage error here, before connecting
    fields = {"since": flags["since"], "until": flags["until"], "number": flags["number"],
              "from_number": flags["from_number"], "to_number": flags["to_number"],
              "match": flags["match"], "call_id": flags["call_id"], "status": flags["status"],
              "min_duration_s": flags["min_duration"], "max_duration_s": flags["max_duration"],
              "site": flags["site"], "sensor": flags["sensor"], "codec": flags["codec"],
              "mos_below": flags["mos_below"], "has_dtmf": flags["has_dtmf"],
              "has_hold": flags["has_hold"], "sort": flags["sort"], "limit": flags["limit"],
              "offset": flags["offset"]}
    with _connect(controller, tls_cert, tls_key, tls_ca, insecure, timeout_s, etcd, etcd_prefix) as admin:
        output.print_search(admin.search(**fields), fmt)


@ctl.command()
@click.option("--since", help="Entries at or after (ISO 8601).")
@click.option("--recording", "recording_id", metavar="ID", help="Only entries about this recording.")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0, show_default=True)
@_client_options
def audit(since: str | None, recording_id: str | None, limit: int, offset: int, fmt: str,
          **conn: Any) -> None:
    """The audit trail: who searched, viewed, played or downloaded what, when and
    from where (needs an auditor certificate). Exit 1 when its hash chain does
    not verify (an entry was changed or removed behind spanrec's back)."""
    with _connect(**conn) as admin:
        trail = admin.audit(since=since, limit=limit, offset=offset, recording_id=recording_id)
    output.print_audit(trail, fmt)
    if not trail["verified"]:
        sys.exit(1)


@ctl.group()
def hold() -> None:
    """Legal hold: a held recording is never deleted by expiry or erasure (operator certificate)."""


def _hold_cmd(release: bool):
    @click.argument("ids", nargs=-1, metavar="[ID]...")
    @click.option("--number", help="Every call where this number is either party (exact).")
    @click.option("--since", help="With --number: calls started at or after (ISO 8601).")
    @click.option("--until", help="With --number: calls started before (ISO 8601).")
    @click.option("--reason", default="", help="Why (the case, the request): kept in hold.json and the trail.")
    @_client_options
    def cmd(ids: tuple[str, ...], number: str | None, since: str | None, until: str | None, reason: str,
            fmt: str, **conn: Any) -> None:
        if not ids and not number:
            raise click.UsageError("give recording IDs or --number")
        with _connect(**conn) as admin:
            found = admin.hold(ids=list(ids), number=number, since=since, until=until, reason=reason,
                               release=release)
        output.print_outcomes(found, fmt, title=("released" if release else "held"))
        if any(not o["done"] for o in found):
            sys.exit(1)
    return cmd


hold.command("add", help="Put recordings under legal hold (IDs, or --number with a time range).")(_hold_cmd(False))
hold.command("remove", help="Take the legal hold off.")(_hold_cmd(True))


@ctl.command()
@click.argument("ids", nargs=-1, metavar="[ID]...")
@click.option("--number", help="Every call where this number is either party (exact): a GDPR erasure.")
@click.option("--reason", default="", help="Why (the request's reference): kept in the audit trail.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@_client_options
def erase(ids: tuple[str, ...], number: str | None, reason: str, yes: bool, fmt: str, **conn: Any) -> None:
    """Erase recordings on request: gone from storage, the index and the outbox of
    every shard of the controller. Held recordings are refused. Exit 1 if any
    could not be erased, 3 if some shard did not answer."""
    if not ids and not number:
        raise click.UsageError("give recording IDs or --number")
    if not yes and sys.stdin.isatty():
        what = f"every recording of {number}" if number else f"{len(ids)} recording(s)"
        click.confirm(f"erase {what} for good?", abort=True)
    from transport.admin_cluster import Cluster
    with _connect(**conn) as admin:
        # a sharded controller: the other shards drop what they still hold of
        # the erased recordings (outbox); exit 3 when one did not answer
        found, missing = Cluster(admin).erase(ids=list(ids), number=number, reason=reason)
    output.print_outcomes(found, fmt, title="erased")
    if any(not o["done"] for o in found):
        sys.exit(1)
    _partial(missing)


@ctl.command()
@click.argument("ids", nargs=-1, metavar="[ID]...")
@click.option("--since", help="Every recording of calls started since this date (YYYY-MM-DD).")
@_client_options
def verify(ids: tuple[str, ...], since: str | None, fmt: str, **conn: Any) -> None:
    """Check recordings against their signed manifests (every file's SHA-256, the
    Ed25519 signature). Exit 1 on any mismatch."""
    if not ids and not since:
        raise click.UsageError("give recording IDs or --since DATE")
    with _connect(**conn) as admin:
        res = admin.verify(ids=list(ids), since=since)
    output.print_verify(res, fmt)
    if res["failed"]:
        sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    """Entry point: one line per error; exit 2 for usage/TLS settings, 1 for failures."""
    from cli.errors import run
    from transport.admin_client import AdminFailed
    output.set_program(PROG)
    run(ctl, PROG, argv, usage_errors=(_Config,), failures=(AdminFailed, AdminLookupFailed))


if __name__ == "__main__":
    main()

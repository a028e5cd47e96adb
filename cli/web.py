"""`spanrec web`: the web player (web/app.py) on HOST:PORT.

    spanrec web --listen 0.0.0.0:8443 --index URL --storage URL \\
                --tls-cert web.crt --tls-key web.key --session-key-file key

HTTPS with --tls-cert/--tls-key; without them the session cookie is still
marked Secure (browsers then send it only over HTTPS or to localhost) unless
--insecure-cookies says this is a lab. Active calls come from a controller's
Admin API with --controller and an operator client certificate (the SPANREC_TLS_*
of spanrecctl).
"""
from __future__ import annotations

import logging
from typing import Any

import click

from cli.settings import ConfigError, Failure

log = logging.getLogger("spanrec.web")


@click.command("web")
@click.option("--listen", default="127.0.0.1:8080", show_default=True, help="HOST:PORT to serve on.")
@click.option("--index", "index_url", required=True, envvar="SPANREC_INDEX",
              help="The call index: sqlite:///PATH or postgresql://USER@HOST[:PORT]/DB (env SPANREC_INDEX).")
@click.option("--index-password-file", type=click.Path(dir_okay=False),
              help="PostgreSQL password file (else SPANREC_INDEX_PASSWORD, PGPASSWORD or ~/.pgpass).")
@click.option("--storage", required=True, envvar="SPANREC_STORAGE",
              help="The recordings: a folder, file:///path or s3://BUCKET/PREFIX (keys from SPANREC_S3_*).")
@click.option("--s3-endpoint", envvar="SPANREC_S3_ENDPOINT", help="S3 endpoint URL.")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), help="HTTPS certificate (PEM).")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), help="Its private key (PEM).")
@click.option("--session-key-file", type=click.Path(exists=True, dir_okay=False),
              help="Secret that signs session cookies (32+ characters; shared by replicas). "
                   "Default: a new one per start.")
@click.option("--insecure-cookies", is_flag=True,
              help="Session cookies without the Secure flag: a lab on plain HTTP only.")
@click.option("--controller", envvar="SPANREC_CONTROLLER",
              help="Controller HOST:PORT for the active calls (operator certificate from SPANREC_TLS_*).")
@click.option("--encryption-key-file", "encryption_key_file", multiple=True, type=click.Path(dir_okay=False),
              help="Key-encryption key(s) to play encrypted recordings (else SPANREC_KEK).")
@click.option("--verify-key-file", "verify_key_file", multiple=True, type=click.Path(dir_okay=False),
              help="Public key(s) of the controllers' signing keys: each call page says whether "
                   "the recording verifies.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info")
def web_cmd(listen: str, index_url: str, index_password_file: str | None, storage: str,
            s3_endpoint: str | None, tls_cert: str | None, tls_key: str | None,
            session_key_file: str | None, insecure_cookies: bool, controller: str | None,
            encryption_key_file: tuple[str, ...], verify_key_file: tuple[str, ...], log_level: str) -> None:
    """Serve the web player: search, playback with the SIP ladder, roles, audit trail."""
    from cli import logs
    logs.setup(log_level, "json")
    if bool(tls_cert) != bool(tls_key):
        raise ConfigError("--tls-cert and --tls-key go together")
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--listen: expected HOST:PORT, got {listen!r}")
    from callindex.db import IndexUnavailable, IndexUrlError, open_index
    from storage import open_store
    from storage.base import StorageError
    from web.app import WebConfig, create_app
    from web.auth import load_secret
    try:
        index = open_index(index_url, password_file=index_password_file)
    except IndexUrlError as exc:
        raise ConfigError(str(exc)) from None
    except IndexUnavailable as exc:
        raise Failure(str(exc)) from None
    try:
        store = open_store(storage, endpoint=s3_endpoint)
        store.check()
    except StorageError as exc:
        raise Failure(f"storage {storage}: {exc}") from None
    try:
        secret = load_secret(session_key_file)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    from storage.encryption import EncryptingStore, EncryptionError, load_keyring
    from storage.manifest import ManifestError, load_verify_key
    try:
        keyring = load_keyring(encryption_key_file)
        verify_keys = {k.key_id: k for k in (load_verify_key(p) for p in verify_key_file)}
    except (EncryptionError, ManifestError) as exc:
        raise ConfigError(str(exc)) from None
    if keyring is not None:
        store = EncryptingStore(store, keyring)
    if not tls_cert and not insecure_cookies:
        log.warning("serving plain HTTP with Secure session cookies: browsers sign in only on "
                    "localhost; give --tls-cert/--tls-key, or --insecure-cookies for a lab")
    app = create_app(WebConfig(index=index, store=store, secret=secret, verify_keys=verify_keys,
                               secure_cookies=not insecure_cookies,
                               active_calls=_active_source(controller) if controller else None))
    import uvicorn
    log.info("web player listening", extra={"listen": listen, "index": index.url, "storage": store.url,
                                            "https": bool(tls_cert)})
    try:
        uvicorn.run(app, host=host.strip("[]") or "0.0.0.0", port=int(port), ssl_certfile=tls_cert,
                    ssl_keyfile=tls_key, log_config=None, access_log=False, server_header=False,
                    proxy_headers=False)
    except OSError as exc:
        raise Failure(f"cannot listen on {listen}: {exc}") from None


def _active_source(controller: str) -> Any:
    """A function giving the controller's active calls (dicts with from/to)."""
    import os

    from transport.admin_client import AdminClient
    from transport.admin_cluster import Cluster
    from transport.tls import Security

    def active() -> list[dict]:
        security = Security.from_options(os.environ.get("SPANREC_TLS_CERT"), os.environ.get("SPANREC_TLS_KEY"),
                                         os.environ.get("SPANREC_TLS_CA"),
                                         bool(os.environ.get("SPANREC_INSECURE")))
        with AdminClient(controller, security, timeout_s=3.0) as admin:
            # a sharded controller: every shard's active calls (the asked one names them all)
            found, _missing = Cluster(admin).calls(active_only=True, limit=500)
            return [{"id": c.id, "from": c.from_uri, "to": c.to_uri, "status": c.status,
                     "started_at": c.started_at, "packets": getattr(c, "packets", "")} for c in found]
    return active

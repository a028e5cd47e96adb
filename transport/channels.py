"""gRPC channel and listening-port builders that honour a `Security`."""
from __future__ import annotations

import grpc

from transport.tls import Security

# Recording files and batches are bigger than gRPC's 4 MiB default.
MESSAGE_OPTIONS = [
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.max_receive_message_length", 64 << 20),
]


def open_channel(target: str, security: Security, *, options: list | None = None) -> grpc.Channel:
    """A blocking channel to `target` (HOST:PORT): mTLS, or plain text when insecure.
    With TLS the controller's certificate must name `HOST` (make-certs server --san)."""
    opts = MESSAGE_OPTIONS + list(options or [])
    creds = security.channel_credentials()
    if creds is None:
        return grpc.insecure_channel(target, options=opts)
    return grpc.secure_channel(target, creds, options=opts)


def add_port(server: grpc.aio.Server, listen: str,
             credentials: grpc.ServerCredentials | None) -> int:
    """Binds `listen` with TLS (or plain text when `credentials` is None); the bound port."""
    if credentials is not None:
        return server.add_secure_port(listen, credentials)
    return server.add_insecure_port(listen)

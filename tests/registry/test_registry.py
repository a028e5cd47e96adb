"""The registry against a real etcd: register, watch, locate, config, kill -9, outage."""
from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from registry import EventKind, MemberRecord, Registry, RegistryState
from tests.etcdserver import EtcdServer

from .conftest import etcd_call, get, put, wait_for

REPO = Path(__file__).resolve().parents[2]
TTL = 3  # seconds: short leases keep the tests short


def timing(name: str, seconds: float) -> None:
    print(f"TIMING {name} {seconds:.3f}s")


def sensor(sid: str = "s1", **kw: object) -> MemberRecord:
    return MemberRecord(id=sid, role="sensor", site="paris", version="0.1.0", interfaces=("eth1",), **kw)


def controller(cid: str = "c1", address: str = "127.0.0.1:50051", **kw: object) -> MemberRecord:
    return MemberRecord(id=cid, role="controller", site="paris", version="0.1.0", address=address, **kw)


def registry(srv: EtcdServer, member: MemberRecord | None, **kw: object) -> Registry:
    kw.setdefault("ttl", TTL)
    kw.setdefault("retry_max", 1.0)
    return Registry([srv.endpoint], "/spanrec/", member, **kw)


def next_event(q: queue.Queue, kind: EventKind, key: str, timeout: float):
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            ev = q.get(timeout=left)
        except queue.Empty:
            break
        if ev.kind is kind and ev.key == key:
            return ev
    raise AssertionError(f"no {kind.value} event for {key} within {timeout} s")


def test_registration_appears_with_json(etcd_server: EtcdServer) -> None:
    ctl = registry(etcd_server, controller())
    events = ctl.events()
    assert ctl.start(wait=5)
    sen = registry(etcd_server, sensor(), update_interval=0.2)
    t0 = time.monotonic()
    try:
        assert sen.start(wait=5)
        ev = next_event(events, EventKind.JOIN, "sensor/s1", 5)
        timing("register->controller sees join", time.monotonic() - t0)
        assert ev.member == sensor(started_at=ev.member.started_at)

        kv = get(etcd_server.endpoint, "/spanrec/members/sensor/s1")
        data = json.loads(kv.value)
        assert {k: data[k] for k in ("id", "site", "role", "version", "address", "interfaces")} == {
            "id": "s1", "site": "paris", "role": "sensor", "version": "0.1.0", "address": "", "interfaces": ["eth1"]}
        assert data["started_at"].endswith("Z")
        assert kv.lease == sen.lease_id != 0  # on a lease, so it goes when the process goes
        ttl = etcd_call(etcd_server.endpoint, lambda c: c.lease.time_to_live(kv.lease, timeout=5))
        assert ttl.grantedTTL == TTL and 0 < ttl.TTL <= TTL

        # live fields (throttled) reach the controller as an update
        sen.update(captured=10, forwarded=4)
        ev = next_event(events, EventKind.UPDATE, "sensor/s1", 5)
        assert ev.member.live == {"captured": 10, "forwarded": 4}
        assert set(ctl.members()) == {"controller/c1", "sensor/s1"}
    finally:
        sen.stop()
    # a clean stop revokes the lease: gone at once, not after the TTL
    next_event(events, EventKind.LEAVE, "sensor/s1", 2)
    ctl.stop()
    assert ctl.state is RegistryState.STOPPED


SENSOR_SCRIPT = """
import sys, time
from registry import MemberRecord, Registry
reg = Registry([sys.argv[1]], "/spanrec/", MemberRecord(id="killed", role="sensor"), ttl=int(sys.argv[2]))
print("ok" if reg.start(wait=10) else "failed", flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_killed_sensor_process_disappears(etcd_server: EtcdServer) -> None:
    ctl = registry(etcd_server, controller())
    events = ctl.events()
    ctl.start(wait=5)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", SENSOR_SCRIPT, etcd_server.endpoint, str(TTL)],
                            stdout=subprocess.PIPE, env=env, cwd=REPO)
    try:
        assert proc.stdout.readline().strip() == b"ok"
        next_event(events, EventKind.JOIN, "sensor/killed", 5)
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
        t0 = time.monotonic()
        ev = next_event(events, EventKind.LEAVE, "sensor/killed", 10)
        took = time.monotonic() - t0
        timing("kill -9 -> leave event", took)
        assert ev.member.id == "killed" and took < 10
        assert "sensor/killed" not in ctl.members()
        assert get(etcd_server.endpoint, "/spanrec/members/sensor/killed") is None
    finally:
        proc.kill()
        proc.wait()
        ctl.stop()


def test_locator_follows_controller(etcd_server: EtcdServer) -> None:
    sen = registry(etcd_server, sensor())
    loc = sen.locator()
    sen.start(wait=5)
    assert loc.wait_synced(5) and loc.current() is None

    # the sensor's link thread: re-resolve, wait for a change, like before each reconnect
    seen: list[str | None] = []
    def link_thread() -> None:
        addr = loc.current()
        while addr != "10.0.0.3:50051" and len(seen) < 10:
            addr = loc.wait_change(10, since=addr)
            seen.append(addr)
    t = threading.Thread(target=link_thread)
    t.start()

    c1 = registry(etcd_server, controller(address="10.0.0.1:50051"))
    t0 = time.monotonic()
    c1.start(wait=5)
    assert wait_for(lambda: loc.current() == "10.0.0.1:50051", 5)
    timing("controller register -> locator", time.monotonic() - t0)

    # the controller restarts elsewhere (same id, new record and address)
    c1.stop()
    c2 = registry(etcd_server, controller(address="10.0.0.2:50051"))
    c2.start(wait=5)
    assert wait_for(lambda: loc.current() == "10.0.0.2:50051", 5)
    # an operator (or a controller) rewrites the address in place
    rec = controller(address="10.0.0.3:50051")
    put(etcd_server.endpoint, rec.key(), rec.to_json())
    assert wait_for(lambda: loc.current() == "10.0.0.3:50051", 5)
    t.join(10)
    # a clean stop revokes the lease: None in between tells the link to wait
    assert seen == ["10.0.0.1:50051", None, "10.0.0.2:50051", "10.0.0.3:50051"]
    c2.stop()
    sen.stop()


def test_config_watcher(etcd_server: EtcdServer, caplog: pytest.LogCaptureFixture) -> None:
    put(etcd_server.endpoint, "/spanrec/config/sensor", json.dumps({"bpf": "udp"}))
    sen = registry(etcd_server, sensor())
    cfg = sen.config("sensor")
    changes: list[dict] = []
    cfg.on_change(changes.append)
    sen.start(wait=5)
    assert cfg.wait_synced(5) and cfg.current() == {"bpf": "udp"}

    t0 = time.monotonic()
    put(etcd_server.endpoint, "/spanrec/config/sensor", json.dumps({"bpf": "udp port 5060"}))
    assert wait_for(lambda: cfg.get("bpf") == "udp port 5060", 5)
    timing("config put -> ConfigWatcher", time.monotonic() - t0)
    with caplog.at_level(logging.WARNING, "spanrec.registry"):
        put(etcd_server.endpoint, "/spanrec/config/sensor", "{broken")  # ignored, previous kept
        assert wait_for(lambda: "not JSON" in caplog.text, 5)
    assert cfg.current() == {"bpf": "udp port 5060"}
    etcd_call(etcd_server.endpoint, lambda c: c.kv.delete("/spanrec/config/sensor", timeout=5))
    assert wait_for(lambda: cfg.current() == {}, 5)
    assert changes == [{"bpf": "udp"}, {"bpf": "udp port 5060"}, {}]
    sen.stop()


@pytest.mark.slow
def test_etcd_down_then_back(etcd_server: EtcdServer) -> None:
    ctl = registry(etcd_server, controller())
    sen = registry(etcd_server, sensor())
    loc = sen.locator()
    cfg = sen.config("sensor")
    put(etcd_server.endpoint, "/spanrec/config/sensor", '{"bpf": "udp"}')
    ctl.start(wait=5)
    sen.start(wait=5)
    assert wait_for(lambda: set(ctl.members()) == {"controller/c1", "sensor/s1"}, 5)
    assert wait_for(lambda: loc.current() == "127.0.0.1:50051", 5) and cfg.wait_synced(5)
    old_lease = sen.lease_id
    before = ctl.members()

    etcd_server.stop()
    t0 = time.monotonic()
    assert sen.wait_state(RegistryState.DEGRADED, 5) and ctl.wait_state(RegistryState.DEGRADED, 5)
    timing("etcd stop -> degraded", time.monotonic() - t0)
    # nothing raises, nothing blocks, the last known state stays
    t1 = time.monotonic()
    sen.update(captured=1)
    assert ctl.members() == before and loc.current() == "127.0.0.1:50051" and cfg.current() == {"bpf": "udp"}
    assert time.monotonic() - t1 < 0.1
    time.sleep(TTL + 0.5)  # longer than the lease TTL
    assert sen.state is RegistryState.DEGRADED and ctl.members() == before

    etcd_server.start()
    t0 = time.monotonic()
    assert sen.wait_state(RegistryState.OK, 10) and ctl.wait_state(RegistryState.OK, 10)
    timing("etcd restart -> both ok", time.monotonic() - t0)
    assert sen.lease_id not in (0, old_lease)  # registered again on a new lease
    kv = get(etcd_server.endpoint, "/spanrec/members/sensor/s1")
    assert kv is not None and kv.lease == sen.lease_id
    assert wait_for(lambda: ctl.members().get("sensor/s1") and ctl.members()["sensor/s1"].live == {"captured": 1}, 5)
    sen.stop()
    ctl.stop()


def test_start_with_etcd_down_never_blocks(etcd_server: EtcdServer) -> None:
    etcd_server.stop()
    sen = registry(etcd_server, sensor())
    loc = sen.locator()
    t0 = time.monotonic()
    assert sen.start() is False
    assert time.monotonic() - t0 < 0.5
    assert sen.wait_state(RegistryState.DEGRADED, 3)
    assert loc.current() is None and sen.members() == {}
    etcd_server.start()
    t0 = time.monotonic()
    assert sen.wait_state(RegistryState.OK, 5)
    timing("etcd first start -> ok", time.monotonic() - t0)
    assert "sensor/s1" in wait_for(lambda: sen.members(), 5)
    t0 = time.monotonic()
    sen.stop()
    assert time.monotonic() - t0 < 2


def test_credentials(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """user/password go over TLS only (a password in plain text is refused: test_etcd_tls.py)."""
    from etcd3aio import Etcd3Client

    from registry import EtcdSecurity
    from tests.etcdserver import Pki, find_etcd
    import asyncio
    secret = "pw-Zq81-never-logged"
    srv = EtcdServer(find_etcd(), tls=Pki(tmp_path / "pki"))
    srv.start()
    try:
        async def enable_auth() -> None:
            async with Etcd3Client([srv.endpoint], ca_cert=srv.tls.ca.read_bytes(),
                                   cert_chain=srv.client_cert.read_bytes(),
                                   cert_key=srv.client_key.read_bytes()) as c:
                await c.auth.user_add("root", secret, timeout=5)
                await c.auth.user_grant_role("root", "root", timeout=5)
                await c.auth.auth_enable(timeout=5)
        asyncio.run(enable_auth())
        crt, key = srv.tls.client("nobody")  # a CN that is no etcd user: the password decides

        def sec(password: str) -> EtcdSecurity:
            return EtcdSecurity(ca=srv.tls.ca, cert=crt, key=key, user="root", password=password
                                ).check([srv.endpoint])
        caplog.set_level(logging.DEBUG)
        bad = registry(srv, sensor("bad"), security=sec("wrong-" + secret))
        good = registry(srv, controller(), security=sec(secret))
        bad.start()
        assert good.start(wait=5)
        assert wait_for(lambda: "sensor/bad" not in good.members() and "controller/c1" in good.members(), 5)
        assert bad.wait_state(RegistryState.DEGRADED, 5)
        assert secret not in repr(good) and secret not in repr(bad)
        bad.stop()
        good.stop()
        assert secret not in caplog.text
        assert "root" not in caplog.text or "password" not in caplog.text.lower()
    finally:
        srv.close()


def test_on_the_callers_loop(etcd_server: EtcdServer) -> None:
    """The controller mode: the core runs on an existing (grpc.aio) loop, not its own thread."""
    import asyncio

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        ctl = registry(etcd_server, controller())
        threads: list[int] = []
        ctl.on_change(lambda ev: threads.append(threading.get_ident()))
        assert ctl.start(wait=5, loop=loop)
        assert wait_for(lambda: "controller/c1" in ctl.members(), 5)
        assert threads and set(threads) == {thread.ident}  # callbacks on the caller's loop
        viewer = registry(etcd_server, None)  # no member: watch only, health by a cheap read
        assert viewer.start(wait=5) and "controller/c1" in wait_for(viewer.members, 5)
        asyncio.run_coroutine_threadsafe(ctl.stop_async(), loop).result(5)
        assert ctl.state is RegistryState.STOPPED
        assert wait_for(lambda: "controller/c1" not in viewer.members(), 2)
        etcd_server.stop()
        assert viewer.wait_state(RegistryState.DEGRADED, 5)
        viewer.stop()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def test_lost_lease_registers_again(etcd_server: EtcdServer) -> None:
    """A lease that etcd no longer knows (expired while the process was frozen, revoked)
    makes the keep-alive answer TTL 0: the member takes a new lease and puts its record again."""
    ctl = registry(etcd_server, controller())
    events = ctl.events()
    sen = registry(etcd_server, sensor())
    ctl.start(wait=5)
    sen.start(wait=5)
    next_event(events, EventKind.JOIN, "sensor/s1", 5)
    old = sen.lease_id
    etcd_call(etcd_server.endpoint, lambda c: c.lease.revoke(old, timeout=5))
    next_event(events, EventKind.LEAVE, "sensor/s1", 5)
    t0 = time.monotonic()
    next_event(events, EventKind.JOIN, "sensor/s1", 5)
    timing("lease lost -> registered again", time.monotonic() - t0)
    assert sen.wait_state(RegistryState.OK, 2) and sen.lease_id not in (0, old)
    assert get(etcd_server.endpoint, "/spanrec/members/sensor/s1").lease == sen.lease_id
    sen.stop()
    ctl.stop()

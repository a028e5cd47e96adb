"""etcd is not trusted blindly (issue #11): TLS with client certificates, passwords only over
TLS, validated config and member records, loud logs for what moves the fleet.

Against a real etcd started with ``--cert-file --key-file --trusted-ca-file
--client-cert-auth`` (certificates made here with ``cryptography``) and, for
passwords, with etcd auth enabled through its own gRPC API.
"""
from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from etcd3aio import Etcd3Client
from etcd3aio.auth import PermissionType

from registry import EtcdSecurity, EtcdSecurityError, MemberRecord, Registry, RegistryState
from tests.etcdserver import EtcdServer, Pki, find_etcd

from .conftest import put, wait_for

TTL = 3


@pytest.fixture
def tls_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    binary = find_etcd()
    if binary is None:
        pytest.skip("no etcd binary")
    server = EtcdServer(binary, tls=Pki(tmp_path / "pki"))
    try:
        server.start()
        yield server
    finally:
        server.close()


def tls_call(srv: EtcdServer, fn):
    async def main():
        async with Etcd3Client([srv.endpoint], ca_cert=srv.tls.ca.read_bytes(),
                               cert_chain=srv.client_cert.read_bytes(),
                               cert_key=srv.client_key.read_bytes()) as client:
            return await fn(client)
    return asyncio.run(main())


def reg(endpoint: str, member: MemberRecord | None, security: EtcdSecurity | None = None) -> Registry:
    return Registry([endpoint], "/spanrec/", member, security=security, ttl=TTL, retry_max=0.5)


def controller(cid: str, address: str, started_at: str = "") -> MemberRecord:
    kw = {"started_at": started_at} if started_at else {}
    return MemberRecord(id=cid, role="controller", address=address, **kw)


# ---- the rules, no etcd needed ---------------------------------------------------------------
def test_plain_text_rules(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    env: dict[str, str] = {}
    # a password never crosses in clear, not even to loopback, not even with --etcd-insecure
    with pytest.raises(EtcdSecurityError, match="plain text"):
        EtcdSecurity.from_options(["127.0.0.1:2379"], environ={"SPANREC_ETCD_USER": "u",
                                                               "SPANREC_ETCD_PASSWORD": "p"})
    with pytest.raises(EtcdSecurityError, match="plain text"):
        EtcdSecurity.from_options(["10.1.2.3:2379"], insecure=True, user="u", password="p", environ=env)
    with pytest.raises(EtcdSecurityError, match="plain text"):  # the library refuses too
        Registry(["127.0.0.1:2379"], user="u", password="p")
    # plain text to another host: only with the explicit opt-in, warned
    with pytest.raises(EtcdSecurityError, match="--etcd-insecure"):
        EtcdSecurity.from_options(["etcd.example:2379"], environ=env)
    sec = EtcdSecurity.from_options(["etcd.example:2379"], environ={"SPANREC_ETCD_INSECURE": "1"})
    caplog.set_level(logging.WARNING)
    sec.warn()
    assert "plain text" in caplog.text
    assert EtcdSecurity.from_options(["127.0.0.1:2379", "localhost:2380"], environ=env).tls is False
    # files: together, readable, the key of the certificate
    pki = Pki(tmp_path)
    crt, key = pki.client("c")
    other_crt, other_key = pki.client("d")
    with pytest.raises(EtcdSecurityError, match="--etcd-cert and --etcd-key go together"):
        EtcdSecurity.from_options(["e:1"], ca=pki.ca, cert=crt, environ=env)
    with pytest.raises(EtcdSecurityError, match="needs --etcd-ca"):
        EtcdSecurity.from_options(["e:1"], cert=crt, key=key, environ=env)
    with pytest.raises(EtcdSecurityError, match="not the private key"):
        EtcdSecurity.from_options(["e:1"], ca=pki.ca, cert=crt, key=other_key, environ=env)
    with pytest.raises(EtcdSecurityError, match="--etcd-ca .*cannot read"):
        EtcdSecurity.from_options(["e:1"], ca=tmp_path / "missing.crt", environ=env)
    ok = EtcdSecurity.from_options(["e:1"], environ={"SPANREC_ETCD_CA": str(pki.ca), "SPANREC_ETCD_CERT": str(crt),
                                                     "SPANREC_ETCD_KEY": str(key), "SPANREC_ETCD_USER": "u",
                                                     "SPANREC_ETCD_PASSWORD": "pw-secret"})
    assert ok.tls and ok.channel_args()["cert_chain"] == crt.read_bytes()
    assert "pw-secret" not in repr(ok)


# ---- a real etcd with TLS and client certificates --------------------------------------------
def test_tls_client_certificates(tls_etcd: EtcdServer, tmp_path: Path) -> None:
    srv, pki = tls_etcd, tls_etcd.tls
    good = EtcdSecurity(ca=pki.ca, cert=srv.client_cert, key=srv.client_key).check([srv.endpoint])
    ctl = reg(srv.endpoint, controller("c1", "127.0.0.1:7600"), good)
    try:
        assert ctl.start(wait=5), "TLS with a client certificate of the CA must register"
        rec = wait_for(lambda: tls_call(srv, lambda c: c.kv.get("/spanrec/members/controller/c1", timeout=2)).kvs, 5)
        assert json.loads(rec[0].value)["address"] == "127.0.0.1:7600"
    finally:
        ctl.stop()

    rogue = Pki(tmp_path / "rogue", "rogue-ca")
    rogue_crt, rogue_key = rogue.client("root")
    refused = {
        # no TLS at all: the TLS port does not answer plain text
        "plain": None,
        # our CA, but no client certificate: --client-cert-auth refuses
        "no client cert": EtcdSecurity(ca=pki.ca).check([srv.endpoint]),
        # a client certificate from another CA
        "rogue client": EtcdSecurity(ca=pki.ca, cert=rogue_crt, key=rogue_key).check([srv.endpoint]),
        # etcd's certificate not vouched for by the CA we trust (a fake etcd would look like this)
        "rogue ca": EtcdSecurity(ca=rogue.ca, cert=srv.client_cert, key=srv.client_key).check([srv.endpoint]),
        # the certificate does not name the host we asked for
        "wrong name": EtcdSecurity(ca=pki.ca, cert=srv.client_cert, key=srv.client_key,
                                   server_name="etcd.elsewhere").check([srv.endpoint]),
    }
    for label, sec in refused.items():
        r = reg(srv.endpoint, MemberRecord(id="x", role="sensor"), sec)
        try:
            assert not r.start(wait=1.5), label
            assert r.state is RegistryState.DEGRADED, label
        finally:
            r.stop()
    assert not tls_call(srv, lambda c: c.kv.get("/spanrec/members/sensor/x", timeout=2)).kvs


def test_tls_with_password_auth(tls_etcd: EtcdServer, caplog: pytest.LogCaptureFixture) -> None:
    srv, pki = tls_etcd, tls_etcd.tls
    secret = "pw-7Hq-never-logged"

    async def enable_auth(c: Etcd3Client) -> None:
        await c.auth.user_add("root", "root-" + secret, timeout=5)
        await c.auth.user_grant_role("root", "root", timeout=5)
        await c.auth.role_add("spanrec", timeout=5)
        await c.auth.role_grant_permission("spanrec", "/spanrec/", b"/spanrec0",
                                           perm_type=PermissionType.READWRITE, timeout=5)
        await c.auth.user_add("fleet", secret, timeout=5)
        await c.auth.user_grant_role("fleet", "spanrec", timeout=5)
        await c.auth.auth_enable(timeout=5)
    tls_call(srv, enable_auth)

    # a client certificate whose CN is no etcd user: only the password gives rights
    crt, key = pki.client("sensor-7")
    caplog.set_level(logging.DEBUG)
    good = reg(srv.endpoint, controller("c1", "127.0.0.1:7600"),
               EtcdSecurity(ca=pki.ca, cert=crt, key=key, user="fleet", password=secret).check([srv.endpoint]))
    bad = reg(srv.endpoint, MemberRecord(id="bad", role="sensor"),
              EtcdSecurity(ca=pki.ca, cert=crt, key=key, user="fleet", password="wrong").check([srv.endpoint]))
    nopw = reg(srv.endpoint, MemberRecord(id="nopw", role="sensor"),
               EtcdSecurity(ca=pki.ca, cert=crt, key=key).check([srv.endpoint]))
    try:
        assert good.start(wait=5)
        bad.start()
        nopw.start()
        assert bad.wait_state(RegistryState.DEGRADED, 5)
        assert nopw.wait_state(RegistryState.DEGRADED, 5)  # permission denied for CN sensor-7
        assert wait_for(lambda: "controller/c1" in good.members(), 5)
        assert not any(k.startswith("sensor/") for k in good.members())
    finally:
        for r in (good, bad, nopw):
            r.stop()
    assert secret not in caplog.text and secret not in repr(good)


# ---- what is read back is checked --------------------------------------------------------------
def test_runtime_config_validated(etcd_server: EtcdServer, caplog: pytest.LogCaptureFixture) -> None:
    ep = etcd_server.endpoint
    put(ep, "/spanrec/config/sensor", json.dumps({"bpf": "udp port 5060"}))
    r = reg(ep, MemberRecord(id="s1", role="sensor"))
    caplog.set_level(logging.WARNING, logger="spanrec.registry")
    try:
        cfg = r.config("sensor")
        assert r.start(wait=5) and cfg.wait_synced(5)
        assert wait_for(lambda: cfg.current() == {"bpf": "udp port 5060"}, 5)
        for bad, why in [({"bpf": "udp", "capture": "off"}, "unknown key 'capture'"),
                         ({"bpf": 17}, "bpf"),
                         ({"bpf": "x" * 9000}, "bpf"),
                         ([1, 2], "not a JSON object")]:
            before = r.refusals()["config:/spanrec/config/sensor"]
            put(ep, "/spanrec/config/sensor", json.dumps(bad))
            assert wait_for(lambda: r.refusals()["config:/spanrec/config/sensor"] == before + 1, 5), bad
            assert why in caplog.text
            assert cfg.current() == {"bpf": "udp port 5060"}, "the last good config stays"
        assert "keeping the last good config" in caplog.text
        put(ep, "/spanrec/config/sensor", json.dumps({"bpf": "udp"}))
        assert wait_for(lambda: cfg.current() == {"bpf": "udp"}, 5)
        # an extra validator (the controller's rules) refuses the same way
        ccfg = r.config("controller")
        ccfg.add_validator(lambda c: (_ for _ in ()).throw(ValueError("no")) if c.get("record_rules") == {} else None)
        put(ep, "/spanrec/config/controller", json.dumps({"record_rules": {"default": "record"}}))
        assert wait_for(lambda: ccfg.current() == {"record_rules": {"default": "record"}}, 5)
        put(ep, "/spanrec/config/controller", json.dumps({"record_rules": {}}))
        assert wait_for(lambda: r.refusals()["config:/spanrec/config/controller"] == 1, 5)
        assert ccfg.current() == {"record_rules": {"default": "record"}}
    finally:
        r.stop()


def test_member_records_validated_and_moves_logged(etcd_server: EtcdServer,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    ep = etcd_server.endpoint
    real = reg(ep, controller("c1", "127.0.0.1:7600", "2026-01-01T00:00:00Z"))
    viewer = reg(ep, MemberRecord(id="s1", role="sensor"))
    caplog.set_level(logging.INFO, logger="spanrec.registry")
    try:
        assert real.start(wait=5)
        loc = viewer.locator()
        assert viewer.start(wait=5)
        assert wait_for(lambda: loc.current() == "127.0.0.1:7600", 5)
        # records that must not be believed: a newer start time would win if they were
        later = "2030-01-01T00:00:00Z"
        bad = {
            "/spanrec/members/controller/evil1": {"id": "evil1", "role": "controller", "address": "evil",
                                                  "started_at": later},
            "/spanrec/members/controller/evil2": {"id": "c9", "role": "controller", "address": "10.6.6.6:7600",
                                                  "started_at": later},
            "/spanrec/members/controller/evil3": {"id": "evil3", "role": "controller", "address": "10.6.6.6:99999",
                                                  "started_at": later},
            "/spanrec/members/controller/evil4": {"id": "evil4", "role": "controller", "address": "10.6.6.6:7600",
                                                  "started_at": later, "interfaces": "eth0"},
            "/spanrec/members/controller/evil5": {"id": "evil5", "role": "controller",
                                                  "address": ["10.6.6.6:7600"], "started_at": later},
        }
        for key, value in bad.items():
            put(ep, key, json.dumps(value))
        assert wait_for(lambda: real.refusals()["member_records"] >= len(bad), 5), real.refusals()
        assert wait_for(lambda: viewer.refusals()["member_records"] >= len(bad), 5), viewer.refusals()
        assert loc.current() == "127.0.0.1:7600"
        assert "refusing member record at /spanrec/members/controller/evil2: it names controller/c9" in caplog.text
        assert "MOVED" not in caplog.text
        # a well-formed newer controller moves the sensors: a WARNING naming both and who claims it
        put(ep, "/spanrec/members/controller/c2", MemberRecord(
            id="c2", role="controller", site="lyon", address="127.0.0.1:7700", started_at=later).to_json())
        assert wait_for(lambda: loc.current() == "127.0.0.1:7700", 5)
        moved = [r for r in caplog.records if "MOVED" in r.getMessage()]
        assert moved and moved[0].levelno == logging.WARNING
        assert "127.0.0.1:7600" in moved[0].getMessage() and "c2 (site lyon" in moved[0].getMessage()
        # the sensor reports it cannot use c2 (say its TLS handshake failed): back to c1
        assert loc.report_failure("127.0.0.1:7700", "CERTIFICATE_VERIFY_FAILED") == "127.0.0.1:7600"
        assert viewer.refusals()["controller_failures"] == 1
    finally:
        viewer.stop()
        real.stop()

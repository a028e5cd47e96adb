"""Least privilege on a real `spanrec controller` over mTLS: a certificate's
role (make-certs client --role) decides what it may call, and a sensor's
certificate binds it to its site (make-certs client --site).

Expectations come from the issue, not from the code: a sensor key must not
read recordings, an operator key must not feed packets, an auditor reads
status and call metadata but no audio or pcap."""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from proto import admin_pb2, admin_pb2_grpc, sensor_pb2, sensor_pb2_grpc
from tests.transport.procs import (REPO, SPANRECCTL, Controller, Identity, identity, make_certs,
                                   one_error_line, run)
from transport.roles import identity_of

SAMPLE = REPO / "samples" / "sample-call.pcap"
ADMIN_RPCS = ("GetStatus", "ListCalls", "GetCall", "GetRecordingFile")


def _legacy_client(pki: Path, name: str) -> Identity:
    """A client certificate as make-certs issued them before roles existed (no SAN)."""
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
    ca = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    (pki / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (pki / f"{name}.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return identity(pki, name)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> SimpleNamespace:
    d = tmp_path_factory.mktemp("pki-roles")
    make_certs(d, "ca")
    make_certs(d, "server", "controller.local", "--san", "127.0.0.1")
    make_certs(d, "client", "lab-1", "--site", "lab")
    make_certs(d, "client", "paris-1", "--site", "paris")
    make_certs(d, "client", "ops-bob", "--role", "operator")
    make_certs(d, "client", "audit-carol", "--role", "auditor")
    legacy = _legacy_client(d, "old-box")
    return SimpleNamespace(dir=d, sensor=identity(d, "lab-1"), paris=identity(d, "paris-1"),
                           operator=identity(d, "ops-bob"), auditor=identity(d, "audit-carol"),
                           legacy=legacy, server=identity(d, "controller.local"))


@pytest.fixture(scope="module")
def recorded(pki, tmp_path_factory):
    """A controller with one stored recording, streamed by the lab sensor."""
    work = tmp_path_factory.mktemp("roles-controller")
    c = Controller(work, pki.server, probe=pki.sensor)   # health answers any role
    try:
        proc = c.replay(SAMPLE, "lab-1", pki.sensor, workdir=work)
        assert proc.returncode == 0, proc.stderr
        found = c.wait_recordings(1)
        c.recording_id = json.loads(found[0].read_text())["id"]
        yield c
    finally:
        assert c.stop() == 0, c.log.read_text()
    assert "Traceback" not in c.log.read_text()


def _channel(c: Controller, who: Identity) -> grpc.Channel:
    return grpc.secure_channel(c.target, who.channel_credentials())


def _admin_codes(c: Controller, who: Identity) -> dict[str, grpc.StatusCode]:
    """The status of each Admin RPC for this certificate (OK when it answered)."""
    out = {}
    with _channel(c, who) as ch:
        stub = admin_pb2_grpc.AdminStub(ch)
        calls = {
            "GetStatus": lambda: stub.GetStatus(admin_pb2.StatusRequest(), timeout=5),
            "ListCalls": lambda: stub.ListCalls(admin_pb2.ListCallsRequest(), timeout=5),
            "GetCall": lambda: stub.GetCall(admin_pb2.GetCallRequest(id=c.recording_id), timeout=5),
            "GetRecordingFile": lambda: list(stub.GetRecordingFile(admin_pb2.GetRecordingFileRequest(
                id=c.recording_id, name="call.pcap"), timeout=5)),
        }
        for name, call in calls.items():
            try:
                call()
                out[name] = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                out[name] = exc.code()
    assert set(out) == set(ADMIN_RPCS)
    return out


def _hello(c: Controller, who: Identity, sensor_id: str, site: str) -> grpc.StatusCode:
    with _channel(c, who) as ch:
        hello = sensor_pb2.SensorMessage(hello=sensor_pb2.Hello(
            sensor_id=sensor_id, site=site, session="roles-test", mode="replay"))
        try:
            reply = next(sensor_pb2_grpc.SensorLinkStub(ch).Stream(iter([hello]), timeout=5))
            assert reply.WhichOneof("kind") == "ack"
            return grpc.StatusCode.OK
        except grpc.RpcError as exc:
            return exc.code()


def test_make_certs_puts_role_and_site_in_the_certificate(pki) -> None:
    def sans(who: Identity) -> list[str]:
        cert = x509.load_pem_x509_certificate(who.cert.read_bytes())
        return sorted(cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(x509.UniformResourceIdentifier))
    assert sans(pki.sensor) == ["spanrec:role:sensor", "spanrec:site:lab"]
    assert sans(pki.operator) == ["spanrec:role:operator"]
    assert sans(pki.auditor) == ["spanrec:role:auditor"]
    legacy = identity_of(x509.load_pem_x509_certificate(pki.legacy.cert.read_bytes()))
    assert (legacy.role, legacy.legacy) == ("sensor", True)


def test_sensor_certificate_is_refused_by_every_admin_rpc(recorded, pki) -> None:
    assert _admin_codes(recorded, pki.sensor) == dict.fromkeys(ADMIN_RPCS, grpc.StatusCode.PERMISSION_DENIED)
    assert _admin_codes(recorded, pki.legacy) == dict.fromkeys(ADMIN_RPCS, grpc.StatusCode.PERMISSION_DENIED)


def test_operator_reads_everything_and_auditor_no_files(recorded, pki) -> None:
    assert _admin_codes(recorded, pki.operator) == dict.fromkeys(ADMIN_RPCS, grpc.StatusCode.OK)
    assert _admin_codes(recorded, pki.auditor) == {
        "GetStatus": grpc.StatusCode.OK, "ListCalls": grpc.StatusCode.OK,
        "GetCall": grpc.StatusCode.OK, "GetRecordingFile": grpc.StatusCode.PERMISSION_DENIED}


def test_only_sensor_certificates_stream(recorded, pki) -> None:
    assert _hello(recorded, pki.operator, "ops-bob", "lab") == grpc.StatusCode.PERMISSION_DENIED
    assert _hello(recorded, pki.auditor, "audit-carol", "lab") == grpc.StatusCode.PERMISSION_DENIED
    # a certificate from before roles: still a sensor (the fleet keeps recording)
    assert _hello(recorded, pki.legacy, "old-box", "anywhere") == grpc.StatusCode.OK


def test_a_sensor_speaks_only_for_its_site(recorded, pki) -> None:
    assert _hello(recorded, pki.paris, "paris-1", "lab") == grpc.StatusCode.PERMISSION_DENIED
    assert _hello(recorded, pki.paris, "paris-1", "paris") == grpc.StatusCode.OK
    log = recorded.log.read_text()
    assert "may speak for site 'paris' only, not 'lab'" in log and "paris-1" in log


def test_refusals_are_logged_with_the_certificate(recorded, pki) -> None:
    _admin_codes(recorded, pki.sensor)
    log = recorded.log.read_text()
    assert "refused: certificate 'lab-1' has role sensor; /spanrec.v1.Admin/GetRecordingFile" in log


def test_spanrecctl_with_each_role(recorded, pki, tmp_path) -> None:
    def ctl(who: Identity, *args: str):
        return run(SPANRECCTL, *args, "--controller", recorded.target, *who.flags(), timeout=60)
    got = ctl(pki.operator, "get", recorded.recording_id, "--out", str(tmp_path / "op"))
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "op" / recorded.recording_id / "call.pcap").stat().st_size > 0
    for who in (pki.sensor, pki.auditor):
        proc = ctl(who, "get", recorded.recording_id, "--out", str(tmp_path / "x"))
        assert proc.returncode != 0
        assert "refused us" in one_error_line(proc, "spanrecctl")
    listed = ctl(pki.auditor, "calls", "-o", "json")
    assert listed.returncode == 0 and recorded.recording_id in listed.stdout
    assert ctl(pki.sensor, "calls").returncode != 0


def test_health_answers_every_role(recorded, pki) -> None:
    for who in (pki.sensor, pki.operator, pki.auditor):
        with _channel(recorded, who) as ch:
            reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING

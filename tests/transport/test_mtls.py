"""mTLS between sensors, spanrecctl and a real `spanrec controller` process, with a
PKI made by scripts/make-certs: the right CA works; another CA, no certificate,
or a certificate naming another sensor is refused."""
from __future__ import annotations

import json
import stat
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from proto import admin_pb2, admin_pb2_grpc, sensor_pb2, sensor_pb2_grpc
from tests.transport.procs import (REPO, free_ports, SPANRECCTL, Controller, Identity, identity, make_certs,
                                   one_error_line, run)
from transport.tls import Security, TlsError, TlsFiles, load

SAMPLE = REPO / "samples" / "sample-call.pcap"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("pki")
    good, other = root / "good", root / "other"
    make_certs(good, "ca")
    make_certs(good, "server", "controller.local", "--san", "127.0.0.1,localhost")
    make_certs(good, "client", "branch-7")
    make_certs(good, "client", "ops-alice", "--role", "operator")
    make_certs(other, "ca", "--name", "rogue CA")
    make_certs(other, "client", "branch-7")
    make_certs(other, "client", "ops-alice", "--role", "operator")
    return SimpleNamespace(good=good, other=other)


@pytest.fixture(scope="module")
def controller(pki, tmp_path_factory):
    work = tmp_path_factory.mktemp("mtls-controller")
    (health_port,) = free_ports(1)
    c = Controller(work, identity(pki.good, "controller.local"), probe=identity(pki.good, "ops-alice"),
                   extra=("--health-listen", f"127.0.0.1:{health_port}"))
    c.health_target = f"127.0.0.1:{health_port}"
    yield c
    assert c.stop() == 0, c.log.read_text()
    assert "Traceback" not in c.log.read_text()


# -- make-certs ---------------------------------------------------------------
def test_make_certs_writes_a_small_ecdsa_pki(pki) -> None:
    d = pki.good
    for name in ("ca", "controller.local", "branch-7"):
        assert stat.S_IMODE((d / f"{name}.key").stat().st_mode) == 0o600
        assert stat.S_IMODE((d / f"{name}.crt").stat().st_mode) == 0o644
    ca = x509.load_pem_x509_certificate((d / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((d / "controller.local.crt").read_bytes())
    client = x509.load_pem_x509_certificate((d / "branch-7.crt").read_bytes())
    for cert in (ca, server, client):
        key = cert.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    client.verify_directly_issued_by(ca)
    server.verify_directly_issued_by(ca)
    assert client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "branch-7"
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "controller.local" in san.get_values_for_type(x509.DNSName)
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    eku = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    days = (client.not_valid_after_utc - datetime.now(timezone.utc)).days
    assert 300 < days <= 397
    # never overwrites a key by accident
    import subprocess
    with pytest.raises(subprocess.CalledProcessError) as exc:
        make_certs(d, "client", "branch-7")
    assert "exists" in exc.value.stderr


# -- transport.tls file checks ---------------------------------------------------
def test_tls_files_errors_are_one_clear_line(pki, tmp_path: Path) -> None:
    g, o = pki.good, pki.other
    not_pem = tmp_path / "junk.pem"
    not_pem.write_text("hello\n")

    def err(cert: Path, key: Path, ca: Path) -> str:
        with pytest.raises(TlsError) as exc:
            load(TlsFiles(cert, key, ca))
        assert "\n" not in str(exc.value)
        return str(exc.value)

    assert "file not found" in err(g / "branch-7.crt", g / "branch-7.key", g / "missing.crt")
    assert "is a directory" in err(g, g / "branch-7.key", g / "ca.crt")
    assert "not a PEM file" in err(g / "branch-7.crt", not_pem, g / "ca.crt")
    assert "not a PEM private key" in err(g / "branch-7.crt", g / "ca.crt", g / "ca.crt")
    assert "is not the private key of" in err(g / "branch-7.crt", g / "ops-alice.key", g / "ca.crt")
    assert "is not signed by the CA" in err(o / "branch-7.crt", o / "branch-7.key", g / "ca.crt")
    assert "not a CA certificate" in err(g / "branch-7.crt", g / "branch-7.key", g / "ops-alice.crt")
    assert load(TlsFiles(g / "branch-7.crt", g / "branch-7.key", g / "ca.crt")).common_name == "branch-7"
    with pytest.raises(TlsError, match="or --insecure"):
        Security.from_options(None, None, None, False)
    assert Security.from_options(None, None, None, True).server_credentials() is None


# -- the sensor link -----------------------------------------------------------
def test_sensor_with_a_certificate_from_the_cluster_ca_records(controller, pki, tmp_path) -> None:
    proc = controller.replay(SAMPLE, "branch-7", identity(pki.good, "branch-7"), workdir=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert controller.wait_recordings(1)
    fleet = run(SPANRECCTL, "fleet", "--controller", controller.target, "-o", "json",
                *identity(pki.good, "ops-alice").flags())
    assert fleet.returncode == 0, fleet.stderr
    (s,) = [s for s in json.loads(fleet.stdout)["sensors"] if s["sensor_id"] == "branch-7"]
    assert s["identity"] == "branch-7" and s["state"] == "done" and s["captured"] > 0


def _hello(channel: grpc.Channel, sensor_id: str) -> sensor_pb2.ControllerMessage:
    stub = sensor_pb2_grpc.SensorLinkStub(channel)
    hello = sensor_pb2.SensorMessage(hello=sensor_pb2.Hello(
        sensor_id=sensor_id, session="test", mode="replay"))
    call = stub.Stream(iter([hello]), timeout=5)
    return next(call)


def _sensor_ids(controller: Controller) -> set[str]:
    with controller.channel() as ch:
        status = admin_pb2_grpc.AdminStub(ch).GetStatus(admin_pb2.StatusRequest(), timeout=5)
    return {s.sensor_id for s in status.sensors}


@pytest.mark.parametrize("who", ["cert-from-another-ca", "no-cert"])
def test_sensor_without_a_cluster_certificate_is_refused(controller, pki, who: str) -> None:
    ca = (pki.good / "ca.crt").read_bytes()   # the sensor trusts the right server ...
    if who == "no-cert":
        creds = grpc.ssl_channel_credentials(ca)
    else:                                     # ... but shows a certificate of another CA
        rogue = identity(pki.other, "branch-7")
        creds = grpc.ssl_channel_credentials(ca, rogue.key.read_bytes(), rogue.cert.read_bytes())
    with grpc.secure_channel(controller.target, creds) as ch:
        with pytest.raises(grpc.RpcError) as exc:
            _hello(ch, f"intruder-{who}")
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE   # the TLS handshake failed
    assert f"intruder-{who}" not in _sensor_ids(controller)


def test_spanrec_sensor_of_another_pki_or_plain_text_fails(controller, pki, tmp_path) -> None:
    rogue = identity(pki.other, "branch-7")          # its own CA: neither side trusts the other
    for name, security in (("rogue-sensor", rogue), ("plain-sensor", None)):
        t0 = time.monotonic()
        proc = controller.replay(SAMPLE, name, security, "--connect-timeout", "2",
                                 workdir=tmp_path, timeout=60)
        assert proc.returncode == 1, proc.stderr
        line = one_error_line(proc, "spanrec", only=False)
        assert controller.target in line and "unreachable" in line
        assert time.monotonic() - t0 < 30
    assert not {"rogue-sensor", "plain-sensor"} & _sensor_ids(controller)


def test_certificate_must_name_the_sensor(controller, pki) -> None:
    """A valid sensor certificate of the cluster, but for another sensor: refused at Hello."""
    b7 = identity(pki.good, "branch-7")
    with grpc.secure_channel(controller.target, b7.channel_credentials()) as ch:
        with pytest.raises(grpc.RpcError) as exc:
            _hello(ch, "branch-8")
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "'branch-7' does not match sensor_id 'branch-8'" in exc.value.details()
    assert "branch-8" not in _sensor_ids(controller)
    with grpc.secure_channel(controller.target, b7.channel_credentials()) as ch:
        assert _hello(ch, "branch-7").WhichOneof("kind") == "ack"   # CN = sensor_id: accepted


# -- spanrecctl ----------------------------------------------------------------------
def test_spanrecctl_needs_a_cluster_certificate(controller, pki) -> None:
    ok = run(SPANRECCTL, "calls", "--controller", controller.target, "-o", "json",
             *identity(pki.good, "ops-alice").flags())
    assert ok.returncode == 0, ok.stderr
    cases = {
        "plain text": ["--insecure"],
        "another CA": Identity(pki.other / "ops-alice.crt", pki.other / "ops-alice.key",
                               pki.other / "ca.crt").flags(),
    }
    for name, flags in cases.items():
        t0 = time.monotonic()
        proc = run(SPANRECCTL, "fleet", "--controller", controller.target, *flags, timeout=30)
        assert proc.returncode == 1, (name, proc.stderr)
        line = one_error_line(proc, "spanrecctl")
        assert f"controller {controller.target} unreachable" in line, line
        assert time.monotonic() - t0 < 10
        assert proc.stdout == ""
    # no certificate given at all: refused before connecting, exit 2
    proc = run(SPANRECCTL, "fleet", "--controller", controller.target,
               "--tls-ca", str(pki.good / "ca.crt"))
    assert proc.returncode == 2
    assert "missing --tls-cert, --tls-key" in one_error_line(proc, "spanrecctl")


def test_health_and_reflection_behind_mtls(controller) -> None:
    with controller.channel() as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", "spanrec.v1.SensorLink", "spanrec.v1.Admin"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        (answer,) = refl.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        names = {s.name for s in answer.list_services_response.service}
    assert {"spanrec.v1.SensorLink", "spanrec.v1.Admin", "grpc.health.v1.Health"} <= names


def test_plain_health_port_for_probes_serves_health_only(controller) -> None:
    """--health-listen: Kubernetes' grpc probe cannot do mTLS, so health checking alone
    is served in plain text on its own port; nothing else is reachable there."""
    with grpc.insecure_channel(controller.health_target) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", "spanrec.v1.SensorLink"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:
            admin_pb2_grpc.AdminStub(ch).GetStatus(admin_pb2.StatusRequest(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    with grpc.insecure_channel(controller.target) as ch:      # the main port stays mTLS only
        with pytest.raises(grpc.RpcError):
            health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=3)


def test_sensor_refused_for_its_name_fails_fast(controller, pki, tmp_path) -> None:
    """A refusal is not an outage: the sensor stops at once with one line, not after retrying."""
    b7 = identity(pki.good, "branch-7")
    t0 = time.monotonic()
    proc = controller.replay(SAMPLE, "branch-9", b7, "--connect-timeout", "60",
                             workdir=tmp_path, timeout=60)
    assert proc.returncode == 1, proc.stderr
    line = one_error_line(proc, "spanrec", only=False)
    assert "refused this sensor" in line and "does not match sensor_id 'branch-9'" in line
    assert time.monotonic() - t0 < 20

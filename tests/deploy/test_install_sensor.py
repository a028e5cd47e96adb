"""scripts/install-sensor.sh, run for real into a separate root (--destdir): files
and permissions, the systemd unit (systemd-analyze verify), re-running (upgrade
in place, config and spool kept), --uninstall; and the installed sensor
capturing a sipp call in a netlab namespace, recorded by a controller over mTLS.

To stay fast and offline the script borrows this test's environment for the
dependencies (--deps-from sys.prefix: spanrec itself is built and installed
into DESTDIR/opt/spanrec/venv with --no-deps, a .pth file points at our
site-packages) and skips apt (--no-apt).
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import require_tool
from tests.e2e.test_live import stop
from tests.netlab import SENSOR_IFACE, NetLab, NetlabUnavailable, netlab_context
from tests.s3server import free_ports
from tests.transport.procs import identity, make_certs

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "install-sensor.sh"
SENSOR_ID = "branch-7"
UNIT = "etc/systemd/system/spanrec-sensor.service"
CONFIG = "etc/spanrec/sensor.toml"
VENV = "opt/spanrec/venv"


def install(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pki")
    # the controller listens on the lab's uplink address (derived from our PID)
    uplink_ip = NetLab(prefix="probe").uplink_root_ip
    make_certs(root, "ca")
    make_certs(root, "server", "controller.local", "--san", f"127.0.0.1,{uplink_ip}")
    make_certs(root, "client", SENSOR_ID)
    return root


@pytest.fixture(scope="module")
def installed(pki, tmp_path_factory) -> SimpleNamespace:
    if sys.prefix == sys.base_prefix:
        pytest.skip("the tests must run in a virtual environment (--deps-from borrows it)")
    dest = tmp_path_factory.mktemp("destdir")
    (port,) = free_ports(1)
    controller = f"{NetLab(prefix='probe').uplink_root_ip}:{port}"
    sensor = identity(pki, SENSOR_ID)
    build_before = (REPO / "build").exists()
    t0 = time.monotonic()
    res = install("--destdir", str(dest), "--deps-from", sys.prefix, "--no-apt",
                  "--interface", SENSOR_IFACE, "--controller", controller, "--site", "lab",
                  "--sensor-id", SENSOR_ID, "--bpf", "udp or (ip[6:2] & 0x1fff != 0)",
                  "--tls-cert", str(sensor.cert), "--tls-key", str(sensor.key),
                  "--tls-ca", str(sensor.ca))
    assert res.returncode == 0, res.stderr
    return SimpleNamespace(root=dest, controller=controller, pki=pki, stderr=res.stderr,
                           seconds=time.monotonic() - t0,
                           wrote_build=not build_before and (REPO / "build").exists())


# -- flags ----------------------------------------------------------------------
def test_help_and_errors_are_one_line(tmp_path: Path) -> None:
    res = install("--help")
    assert res.returncode == 0 and "--destdir" in res.stdout and "--uninstall" in res.stdout
    for args, message in [
        (["--bogus"], "unknown option: --bogus"),
        (["--destdir", str(tmp_path), "--controller", "c:1", "--insecure"], "needs --interface"),
        (["--destdir", str(tmp_path), "--interface", "eth1", "--insecure"], "--controller HOST:PORT or --etcd"),
        (["--destdir", str(tmp_path), "--interface", "eth1", "--controller", "c:1"], "--tls-cert"),
        (["--destdir", str(tmp_path), "--interface", "eth1", "--controller", "nope", "--insecure"],
         "HOST:PORT"),
        (["--destdir", str(tmp_path), "--interface", "eth1", "--controller", "c:1",
          "--tls-cert", "/nonexistent"], "give all of --tls-cert"),
        (["--destdir", str(tmp_path), "--interface", "eth1", "--etcd", "etcd.example.net:2379",
          "--insecure"], "etcd etcd.example.net is not on this host: give --etcd-ca"),
        (["--destdir", str(tmp_path), "--interface", "eth1", "--etcd", "10.0.0.5:2379", "--insecure",
          "--etcd-cert", str(SCRIPT)], "give --etcd-cert and --etcd-key together"),
        (["--destdir", str(tmp_path), "--interface", "eth1", "--etcd", "10.0.0.5:2379", "--insecure",
          "--etcd-cert", str(SCRIPT), "--etcd-key", str(SCRIPT)], "--etcd-cert needs --etcd-ca"),
        (["--destdir", str(tmp_path), "--interface", "eth1", "--etcd", "10.0.0.5:2379", "--insecure",
          "--etcd-ca", str(SCRIPT), "--etcd-insecure"], "--etcd-insecure and --etcd-ca exclude each other"),
        (["--destdir", str(tmp_path), "--interface", "eth1", "--etcd", "10.0.0.5:2379", "--insecure",
          "--etcd-ca", "/nonexistent"], "cannot read /nonexistent"),
        (["--purge"], "--purge only goes with --uninstall"),
        (["--site"], "--site needs a value"),
    ]:
        res = install(*args)
        assert res.returncode == 1, (args, res.stderr)
        assert res.stderr.count("\n") == 1 and res.stderr.startswith("install-sensor: error: "), res.stderr
        assert message in res.stderr, (args, res.stderr)
    assert not (tmp_path / "opt").exists()             # nothing done before the checks passed


# -- what the install wrote ----------------------------------------------------------
def test_files_permissions_and_config(installed) -> None:
    root = installed.root
    config = root / CONFIG
    assert mode(config) == 0o640
    assert mode(root / "etc/spanrec/tls") == 0o750
    assert mode(root / "etc/spanrec/tls/sensor.key") == 0o600
    assert mode(root / "etc/spanrec/tls/sensor.crt") == 0o644
    assert mode(root / UNIT) == 0o644
    assert mode(root / "var/lib/spanrec/spool") == 0o750
    assert (root / "etc/spanrec/tls/sensor.key").read_bytes() == (installed.pki / f"{SENSOR_ID}.key").read_bytes()
    settings = tomllib.loads(config.read_text())["sensor"]
    assert settings == {
        "sensor_id": SENSOR_ID, "site": "lab", "interface": SENSOR_IFACE,
        "bpf": "udp or (ip[6:2] & 0x1fff != 0)", "controller": installed.controller,
        "tls_cert": "/etc/spanrec/tls/sensor.crt", "tls_key": "/etc/spanrec/tls/sensor.key",
        "tls_ca": "/etc/spanrec/tls/ca.crt", "insecure": False,
        "spool_dir": "/var/lib/spanrec/spool"}
    # what --destdir could not do is recorded for the target
    postinst = (root / "opt/spanrec/postinst.sh").read_text()
    for line in ("useradd --system", "chown spanrec:spanrec /etc/spanrec/tls/sensor.key",
                 "chown root:spanrec /etc/spanrec/sensor.toml",
                 "chown spanrec:spanrec /var/lib/spanrec /var/lib/spanrec/spool",
                 "systemctl enable spanrec-sensor.service"):
        assert line in postinst
    # the venv runs its own copy of spanrec, not the checkout
    where = subprocess.run([str(root / VENV / "bin/python"), "-c", "import cli; print(cli.__file__)"],
                           capture_output=True, text=True, check=True, cwd="/").stdout
    assert where.startswith(str(root / VENV)), where
    assert not installed.wrote_build                     # built from a copy of the checkout
    assert installed.seconds < 60, installed.stderr


def test_unit_runs_the_sensor_unprivileged_and_verifies(installed, tmp_path: Path) -> None:
    text = (installed.root / UNIT).read_text()
    for line in ("User=spanrec", "ExecStart=/opt/spanrec/venv/bin/spanrec sensor --config /etc/spanrec/sensor.toml",
                 "AmbientCapabilities=CAP_NET_RAW CAP_NET_ADMIN",
                 "CapabilityBoundingSet=CAP_NET_RAW CAP_NET_ADMIN", "NoNewPrivileges=yes",
                 "ProtectSystem=strict", "ReadWritePaths=/var/lib/spanrec", "Restart=on-failure",
                 "StandardOutput=journal", "WantedBy=multi-user.target"):
        assert line in text.splitlines(), line
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (apt package systemd): unit not verified")
    # verify checks that ExecStart exists: point it at the venv inside DESTDIR
    unit = tmp_path / "spanrec-sensor.service"
    unit.write_text(text.replace("ExecStart=/opt/", f"ExecStart={installed.root}/opt/"))
    res = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True)
    assert res.returncode == 0 and not res.stderr.strip() and not res.stdout.strip(), res.stderr + res.stdout


# -- the installed sensor captures ------------------------------------------------------
@pytest.mark.live
def test_installed_sensor_captures_a_call_in_a_namespace(installed, tmp_path: Path) -> None:
    require_tool("sipp")
    setpriv = require_tool("setpriv")
    root = installed.root
    try:
        ctx = netlab_context(uplink=True)
        lab = ctx.__enter__()
    except NetlabUnavailable as exc:
        pytest.skip(str(exc))
    controller = sensor = None
    out = tmp_path / "rec"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        assert lab.uplink_root_ip == installed.controller.rpartition(":")[0]
        server = identity(installed.pki, "controller.local")
        controller = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "controller", "--listen", installed.controller,
             "--storage", str(out), "--state-dir", str(tmp_path / "state"), "--log-format", "text",
             "--tls-cert", str(server.cert), "--tls-key", str(server.key), "--tls-ca", str(server.ca)],
            stdin=subprocess.DEVNULL, stdout=open(tmp_path / "controller.log", "wb"),
            stderr=subprocess.STDOUT, env=env)
        # As the unit runs it: the installed venv's `spanrec sensor --config`, with no
        # capabilities but CAP_NET_RAW and CAP_NET_ADMIN and no_new_privs. The config
        # names the final paths (/etc/spanrec/tls, /var/lib/spanrec/spool): flags point
        # them into DESTDIR.
        tls = root / "etc/spanrec/tls"
        sensor = lab.run_in(
            lab.sensor_ns,
            [setpriv, "--bounding-set=-all,+net_raw,+net_admin", "--inh-caps=-all,+net_raw,+net_admin",
             "--no-new-privs", "--",
             str(root / VENV / "bin/spanrec"), "sensor", "--config", str(root / CONFIG),
             "--spool-dir", str(root / "var/lib/spanrec/spool"), "--log-format", "text",
             "--tls-cert", str(tls / "sensor.crt"), "--tls-key", str(tls / "sensor.key"),
             "--tls-ca", str(tls / "ca.crt")],
            stdin=subprocess.DEVNULL, stdout=open(tmp_path / "sensor.log", "wb"),
            stderr=subprocess.STDOUT, env=env, cwd="/")
        deadline = time.monotonic() + 30
        while b"sensor connected" not in (tmp_path / "controller.log").read_bytes():
            assert controller.poll() is None, (tmp_path / "controller.log").read_text()
            assert sensor.poll() is None, (tmp_path / "sensor.log").read_text()
            assert time.monotonic() < deadline, "sensor never connected"
            time.sleep(0.2)
        time.sleep(0.5)                                   # capture handle is open
        assert lab.sipp_call(timeout_s=30) == (0, 0)
        deadline = time.monotonic() + 30                  # BYE + linger, then written
        while not list(out.rglob("call.json")):
            assert time.monotonic() < deadline, (tmp_path / "controller.log").read_text()
            time.sleep(0.3)
    finally:
        if sensor is not None:
            stop(sensor)
        if controller is not None:
            stop(controller)
        ctx.__exit__(None, None, None)
    (meta,) = [json.loads(p.read_text()) for p in out.rglob("call.json")]
    assert meta["status"] == "answered" and meta["sensors"] == [SENSOR_ID]
    assert any(s["codec"] == "PCMA" for s in meta["streams"])
    assert "Traceback" not in (tmp_path / "sensor.log").read_text()


# -- re-run and uninstall (last: they change the install) ---------------------------------
def test_rerun_upgrades_in_place_and_keeps_config_and_spool(installed) -> None:
    root = installed.root
    config = root / CONFIG
    marker = root / "var/lib/spanrec/spool/batch-kept"
    marker.write_bytes(b"unacknowledged")
    before = config.read_text()
    (root / VENV / "lib").joinpath("stale-marker").write_text("x")
    res = install("--destdir", str(root), "--deps-from", sys.prefix, "--no-apt")
    assert res.returncode == 0, res.stderr
    assert "kept" in res.stderr and config.read_text() == before
    # flags given on a re-run change only those settings
    res = install("--destdir", str(root), "--deps-from", sys.prefix, "--no-apt", "--site", "branch hq",
                  "--controller", "10.9.9.9:7600")
    assert res.returncode == 0, res.stderr
    settings = tomllib.loads(config.read_text())["sensor"]
    assert settings["site"] == "branch hq" and settings["controller"] == "10.9.9.9:7600"
    assert settings["interface"] == SENSOR_IFACE and settings["tls_key"] == "/etc/spanrec/tls/sensor.key"
    assert mode(config) == 0o640 and mode(root / "etc/spanrec/tls/sensor.key") == 0o600
    assert marker.read_bytes() == b"unacknowledged"
    assert (root / VENV / "lib/stale-marker").exists()   # upgraded in place, not recreated


def test_etcd_tls_flags_copy_files_and_write_config(installed, tmp_path: Path) -> None:
    root = installed.root
    config = root / CONFIG
    etcd_pki = tmp_path / "etcd-pki"                     # etcd has its own CA
    etcd_pki.mkdir()
    make_certs(etcd_pki, "ca")
    make_certs(etcd_pki, "client", SENSOR_ID)
    client = identity(etcd_pki, SENSOR_ID)
    res = install("--destdir", str(root), "--deps-from", sys.prefix, "--no-apt",
                  "--etcd", "10.0.0.5:2379,10.0.0.6:2379", "--etcd-ca", str(client.ca),
                  "--etcd-cert", str(client.cert), "--etcd-key", str(client.key),
                  "--etcd-server-name", "etcd.example.net")
    assert res.returncode == 0, res.stderr
    etcd_dir = root / "etc/spanrec/etcd"
    assert mode(etcd_dir) == 0o750
    assert mode(etcd_dir / "client.key") == 0o600
    assert mode(etcd_dir / "client.crt") == 0o644 and mode(etcd_dir / "ca.crt") == 0o644
    assert (etcd_dir / "client.key").read_bytes() == client.key.read_bytes()
    assert (etcd_dir / "ca.crt").read_bytes() == client.ca.read_bytes()
    settings = tomllib.loads(config.read_text())["sensor"]
    assert {k: v for k, v in settings.items() if k.startswith("etcd")} == {
        "etcd": "10.0.0.5:2379,10.0.0.6:2379", "etcd_ca": "/etc/spanrec/etcd/ca.crt",
        "etcd_cert": "/etc/spanrec/etcd/client.crt", "etcd_key": "/etc/spanrec/etcd/client.key",
        "etcd_server_name": "etcd.example.net", "etcd_insecure": False}
    assert settings["tls_key"] == "/etc/spanrec/tls/sensor.key"          # gRPC TLS kept
    assert 'etcd_ca = "/etc/spanrec/etcd/ca.crt"' in config.read_text().splitlines()
    postinst = (root / "opt/spanrec/postinst.sh").read_text()
    assert "chown spanrec:spanrec /etc/spanrec/etcd/client.key" in postinst
    assert "chown root:spanrec /etc/spanrec/etcd" in postinst
    # the installed sensor's own check accepts it (files under DESTDIR)
    check = subprocess.run(
        [str(root / VENV / "bin/python"), "-c",
         "import sys; from pathlib import Path; from cli.settings import SensorSettings, load;"
         "s = load(SensorSettings, 'sensor', sys.argv[1], {}); d = sys.argv[2];"
         "s = s.model_copy(update={k: Path(d + str(getattr(s, k))) for k in ('etcd_ca', 'etcd_cert', 'etcd_key')});"
         "print(s.etcd_security().tls)", str(config), str(root)],
        capture_output=True, text=True, cwd="/")
    assert check.stdout.strip() == "True", check.stderr
    # a key that is not the certificate's is refused by the install's config check
    other = tmp_path / "other"
    other.mkdir()
    make_certs(other, "ca")
    make_certs(other, "client", SENSOR_ID)
    res = install("--destdir", str(root), "--deps-from", sys.prefix, "--no-apt",
                  "--etcd-ca", str(client.ca), "--etcd-cert", str(client.cert),
                  "--etcd-key", str(other / f"{SENSOR_ID}.key"))
    assert res.returncode == 1 and "is not the private key of --etcd-cert" in res.stderr, res.stderr
    # --etcd-insecure: plain text, the TLS keys and files go
    res = install("--destdir", str(root), "--deps-from", sys.prefix, "--no-apt", "--etcd-insecure")
    assert res.returncode == 0, res.stderr
    settings = tomllib.loads(config.read_text())["sensor"]
    assert settings["etcd_insecure"] is True
    assert not {"etcd_ca", "etcd_cert", "etcd_key"} & settings.keys()
    assert not etcd_dir.exists()
    assert "etcd_insecure = true" in config.read_text().splitlines()


def test_uninstall_keeps_the_spool_unless_purge(installed) -> None:
    root = installed.root
    marker = root / "var/lib/spanrec/spool/batch-kept"
    marker.write_bytes(b"unacknowledged")
    res = install("--destdir", str(root), "--uninstall")
    assert res.returncode == 0, res.stderr
    for gone in ("opt/spanrec", "etc/spanrec", UNIT):
        assert not (root / gone).exists(), gone
    assert marker.read_bytes() == b"unacknowledged"
    res = install("--destdir", str(root), "--uninstall")   # idempotent
    assert res.returncode == 0, res.stderr
    res = install("--destdir", str(root), "--uninstall", "--purge")
    assert res.returncode == 0, res.stderr
    assert not (root / "var/lib/spanrec").exists()

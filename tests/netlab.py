"""A throw-away network-namespace lab: two phones on a switch with a SPAN port.

Why: the sensor's job is to capture what a switch mirrors. Testing that
against real kernels, real bridges and real SIP/RTP (sipp) catches what file
replays cannot (timeouts, ring behaviour, checksums, the BPF filter).

Topology (all names get a unique prefix ``<prefix><pid>-``)::

    ns "a" (phoneA)          ns "sw" (switch)                 ns "b" (phoneB)
    eth0 10.77.0.1/24 ─veth─ pa ─┐                  ┌─ pb ─veth─ eth0 10.77.0.2/24
                                 └── br0 (bridge) ──┘
              tc ingress on pa and pb: mirred egress mirror ─► mir0
                                                               │ veth
    ns "sensor":                                          mir1 (no address)

Every frame entering the bridge from a phone is mirrored once (ingress only)
to ``mir0``; its veth peer ``mir1`` is the sensor's capture interface and
lives in its own namespace, so nothing in the root namespace changes and a
sensor process sees exactly the SPAN traffic. Run a process there with
``lab.run_in(lab.sensor_ns, argv)`` (``ip netns exec``); its PID is the
command's own PID (``ip netns exec`` execs), so it is stopped by PID at exit.

A sensor in the sensor namespace reaches a controller in the root namespace
either through a pathname Unix socket (``unix:/tmp/...``: filesystem sockets
are not bound to a network namespace) or, with ``uplink=True``, through a
veth pair ``ROOT_UPLINK``/``up0`` addressed ``169.254.X.1``/``169.254.X.2``
(``lab.uplink_root_ip`` / ``lab.uplink_sensor_ip``).

The phones' ``eth0`` have TX checksum offload disabled, otherwise mirrored
UDP frames carry partial checksums (FACTS.md).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

PHONE_A_IP = "10.77.0.1"
PHONE_B_IP = "10.77.0.2"
PREFIX_LEN = 24
SENSOR_IFACE = "mir1"
SIPP_PCAP_DIR = Path("/usr/share/sip-tester")
SIPP_UAS_MEDIA_PORT = 6000


class NetlabUnavailable(RuntimeError):
    """The host cannot build the lab (not root, no ``ip netns``, ...)."""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _ns_cmd(ns: str, *argv: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, *argv], check=True, capture_output=True, text=True)


def check_available() -> None:
    """Raise NetlabUnavailable unless we are root with iproute2 netns support."""
    if os.geteuid() != 0:
        raise NetlabUnavailable("netlab needs root")
    for tool in ("ip", "tc", "ethtool"):
        if shutil.which(tool) is None:
            raise NetlabUnavailable(f"netlab needs {tool}")
    probe = f"spanrec-probe{os.getpid()}"
    try:
        _ip("netns", "add", probe)
    except subprocess.CalledProcessError as exc:
        raise NetlabUnavailable(f"ip netns unavailable: {exc.stderr.strip()}") from exc
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)


@dataclass
class LabResources:
    """What a lab made and must undo: processes (stopped by PID), namespaces,
    links in the root namespace, temporary folders.  Both labs build on it."""

    procs: list[subprocess.Popen[Any]] = field(default_factory=list, kw_only=True)
    namespaces: list[str] = field(default_factory=list, kw_only=True)
    root_links: list[str] = field(default_factory=list, kw_only=True)
    tmpdirs: list[tempfile.TemporaryDirectory[str]] = field(default_factory=list, kw_only=True)

    def teardown(self) -> None:
        """Kill what we started (by PID), then delete our namespaces and links."""
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for link in self.root_links:
            subprocess.run(["ip", "link", "del", link], capture_output=True)
        for tmp in self.tmpdirs:
            tmp.cleanup()

    def run_in(self, ns: str, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside namespace ``ns``; the lab kills it at teardown."""
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], **popen_kwargs)
        self.procs.append(proc)
        return proc

    def tmpdir(self) -> Path:
        tmp = tempfile.TemporaryDirectory(prefix="spanrec-netlab-")
        self.tmpdirs.append(tmp)
        return Path(tmp.name)


@dataclass
class NetLab(LabResources):
    """Handles of a built lab; created by :func:`netlab_context`."""

    prefix: str
    uplink: bool = False
    sensor_iface: str = SENSOR_IFACE
    phone_a_ip: str = PHONE_A_IP
    phone_b_ip: str = PHONE_B_IP

    @property
    def switch_ns(self) -> str:
        return f"{self.prefix}sw"

    @property
    def phone_a_ns(self) -> str:
        return f"{self.prefix}a"

    @property
    def phone_b_ns(self) -> str:
        return f"{self.prefix}b"

    @property
    def sensor_ns(self) -> str:
        return f"{self.prefix}sensor"

    @property
    def uplink_root_iface(self) -> str:
        return f"spr{os.getpid() % 10**9}"[:15]

    @property
    def _uplink_octet(self) -> int:
        return os.getpid() % 250 + 1

    @property
    def uplink_root_ip(self) -> str:
        return f"169.254.{self._uplink_octet}.1"

    @property
    def uplink_sensor_ip(self) -> str:
        return f"169.254.{self._uplink_octet}.2"

    # -- building ---------------------------------------------------------
    def build(self) -> None:
        for ns in (self.switch_ns, self.phone_a_ns, self.phone_b_ns, self.sensor_ns):
            _ip("netns", "add", ns)
            self.namespaces.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        sw = self.switch_ns
        _ip("-n", sw, "link", "add", "br0", "type", "bridge", "stp_state", "0")
        _ip("-n", sw, "link", "set", "br0", "up")
        for port, ns, addr in (("pa", self.phone_a_ns, PHONE_A_IP), ("pb", self.phone_b_ns, PHONE_B_IP)):
            _ip("-n", sw, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("-n", sw, "link", "set", port, "master", "br0")
            _ip("-n", sw, "link", "set", port, "up")
            _ip("-n", ns, "addr", "add", f"{addr}/{PREFIX_LEN}", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ns_cmd(ns, "ethtool", "-K", "eth0", "tx", "off")
        _ip("-n", sw, "link", "add", "mir0", "type", "veth", "peer", "name", SENSOR_IFACE,
            "netns", self.sensor_ns)
        _ip("-n", sw, "link", "set", "mir0", "up")
        _ip("-n", self.sensor_ns, "link", "set", SENSOR_IFACE, "up")
        for port in ("pa", "pb"):
            _ns_cmd(sw, "tc", "qdisc", "add", "dev", port, "clsact")
            # No matchall classifier on this kernel: u32 matching everything.
            _ns_cmd(sw, "tc", "filter", "add", "dev", port, "ingress", "protocol", "all",
                    "u32", "match", "u32", "0", "0",
                    "action", "mirred", "egress", "mirror", "dev", "mir0")
        if self.uplink:
            root_if = self.uplink_root_iface
            _ip("link", "add", root_if, "type", "veth", "peer", "name", "up0", "netns", self.sensor_ns)
            self.root_links.append(root_if)
            _ip("addr", "add", f"{self.uplink_root_ip}/30", "dev", root_if)
            _ip("link", "set", root_if, "up")
            _ip("-n", self.sensor_ns, "addr", "add", f"{self.uplink_sensor_ip}/30", "dev", "up0")
            _ip("-n", self.sensor_ns, "link", "set", "up0", "up")

    # -- running things ---------------------------------------------------
    def start_sipp_uas(self, calls: int = 1, timeout_s: int = 60) -> subprocess.Popen[Any]:
        """sipp UAS on phoneB:5060, echoing RTP on port 6000 (two-way media)."""
        return self.run_in(
            self.phone_b_ns,
            ["sipp", "-sn", "uas", "-i", PHONE_B_IP, "-p", "5060", "-mp", str(SIPP_UAS_MEDIA_PORT),
             "-rtp_echo", "-nostdin", "-m", str(calls), "-timeout", str(timeout_s)],
            cwd=self.tmpdir(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def start_sipp_uac_pcap(self, calls: int = 1, timeout_s: int = 60) -> subprocess.Popen[Any]:
        """sipp UAC on phoneA:5061 calling phoneB, playing g711a.pcap then RFC 2833 DTMF.

        ``uac_pcap`` opens ``pcap/...`` relative to its working directory,
        so it runs in a temporary directory holding a ``pcap`` symlink.
        """
        workdir = self.tmpdir()
        (workdir / "pcap").symlink_to(SIPP_PCAP_DIR)
        return self.run_in(
            self.phone_a_ns,
            ["sipp", "-sn", "uac_pcap", f"{PHONE_B_IP}:5060", "-i", PHONE_A_IP, "-p", "5061",
             "-m", str(calls), "-nostdin", "-timeout", str(timeout_s), "-timeout_error"],
            cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def sipp_call(self, calls: int = 1, timeout_s: int = 60) -> tuple[int, int]:
        """Run ``calls`` uac_pcap calls A -> B to completion; (uac rc, uas rc)."""
        uas = self.start_sipp_uas(calls, timeout_s)
        uac = self.start_sipp_uac_pcap(calls, timeout_s)
        uac_rc = uac.wait(timeout=timeout_s + 10)
        uas_rc = uas.wait(timeout=timeout_s + 10)
        return uac_rc, uas_rc


@contextmanager
def netlab_context(prefix: str = "spanrec", uplink: bool = False) -> Iterator[NetLab]:
    """Build a lab, yield it, always tear it down. Raises NetlabUnavailable."""
    check_available()
    lab = NetLab(prefix=f"{prefix}{os.getpid()}-", uplink=uplink)
    try:
        lab.build()
        yield lab
    finally:
        lab.teardown()


@pytest.fixture
def netlab() -> Iterator[NetLab]:
    """pytest fixture: a fresh lab per test, skipped where it cannot run."""
    try:
        check_available()
    except NetlabUnavailable as exc:
        pytest.skip(str(exc))
    with netlab_context() as lab:
        yield lab

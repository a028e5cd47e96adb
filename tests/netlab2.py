"""A two-site network-namespace lab: a bridge per site, a router between them,
and each site's bridge ports mirrored to that site's own sensor.

Why: a call between two sites crosses two mirrored switches, so two sensors
see each of its packets -- with different MACs and TTLs (the router rewrote
them) but the same IP datagram. That is the controller's dedup case, tested
here with real kernels, real routing and real SIP/RTP (sipp).

Topology (every namespace name gets the prefix ``sr2-<pid>-``)::

      site A (10.81.1.0/24)                          site B (10.81.2.0/24)
    a1  .11 ─┐                                     ┌─ p-b1 ── b1 .21
    a2  .12 ─┼─ p-* ─ brA ─ p-rt ── ethA .1 ─ rt ─ ethB .1 ── p-rt ─ brB
    sbc .13 ─┘    (ns swA)          (ns rt, ip_forward=1)           (ns swB)
        tc ingress on every port of brA:                 tc ingress on every port of brB:
        mirred egress mirror ─► mir0 ═veth═ mir1         mirred egress mirror ─► mir0 ═veth═ mir1
                                    (ns senA)                                         (ns senB)

Every frame entering a bridge is mirrored once, at its ingress port (the
router's port included), so a sensor sees each frame that crosses its site
exactly once, and a frame between the sites is seen once per site. Hosts
route everything through ``.1`` (the router). The hosts' and the router's
veths have TX checksum offload off (FACTS.md: partial checksums otherwise).

The sensor namespaces reach a controller in the root namespace through
uplinks: veth ``s2a<pid>``/``up0`` (169.254.X.9/30 - .10) and
``s2b<pid>``/``up0`` (169.254.X.13/30 - .14); the controller listens on
:attr:`TwoSiteLab.controller_ip` (169.254.X.9) and site B's sensor namespace
routes that one address through its own uplink.

Processes are started with :meth:`TwoSiteLab.run_in` (``ip netns exec``
execs, so the PID is the command's own) and killed by PID at teardown.
"""
from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.netlab import LabResources, NetlabUnavailable, check_available

__all__ = ["Host", "TwoSiteLab", "two_site_lab", "NetlabUnavailable", "SENSOR_IFACE",
           "SITES", "SIPP_PCAP_DIR"]

SENSOR_IFACE = "mir1"
SIPP_PCAP_DIR = Path("/usr/share/sip-tester")
PREFIX_LEN = 24
#: site -> (subnet /24 first three octets, {host name: last octet}); .1 is the router
SITES: dict[str, tuple[str, dict[str, int]]] = {
    "A": ("10.81.1", {"a1": 11, "a2": 12, "sbc": 13}),
    "B": ("10.81.2", {"b1": 21}),
}


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _ns_cmd(ns: str, *argv: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, *argv], check=True, capture_output=True, text=True)


@dataclass(frozen=True)
class Host:
    name: str
    site: str
    ns: str
    ip: str


@dataclass
class TwoSiteLab(LabResources):
    """Handles of a built two-site lab; created by :func:`two_site_lab`."""

    prefix: str
    hosts: dict[str, Host] = field(default_factory=dict)
    sensor_iface: str = SENSOR_IFACE

    # -- names ------------------------------------------------------------
    def switch_ns(self, site: str) -> str:
        return f"{self.prefix}sw{site}"

    def sensor_ns(self, site: str) -> str:
        return f"{self.prefix}sen{site}"

    @property
    def router_ns(self) -> str:
        return f"{self.prefix}rt"

    @staticmethod
    def router_ip(site: str) -> str:
        return f"{SITES[site][0]}.1"

    @staticmethod
    def subnet(site: str) -> str:
        return f"{SITES[site][0]}.0/{PREFIX_LEN}"

    def site_of_ip(self, ip: str) -> str | None:
        for site, (net, _) in SITES.items():
            if ip.startswith(net + "."):
                return site
        return None

    @property
    def _octet(self) -> int:
        return os.getpid() % 250 + 1

    @property
    def controller_ip(self) -> str:
        """Root-namespace address the sensors of both sites can reach."""
        return f"169.254.{self._octet}.9"

    def _uplink(self, site: str) -> tuple[str, str, str]:
        """(root interface, root ip, sensor-side ip) of a site's uplink."""
        base = {"A": 8, "B": 12}[site]
        return (f"s2{site.lower()}{os.getpid() % 10**9}"[:15],
                f"169.254.{self._octet}.{base + 1}", f"169.254.{self._octet}.{base + 2}")

    # -- building -----------------------------------------------------------
    def _add_ns(self, ns: str) -> None:
        _ip("netns", "add", ns)
        self.namespaces.append(ns)
        _ip("-n", ns, "link", "set", "lo", "up")

    def build(self) -> None:
        rt = self.router_ns
        self._add_ns(rt)
        _ns_cmd(rt, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for site, (net, members) in SITES.items():
            sw = self.switch_ns(site)
            sen = self.sensor_ns(site)
            self._add_ns(sw)
            self._add_ns(sen)
            _ip("-n", sw, "link", "add", "br0", "type", "bridge", "stp_state", "0")
            _ip("-n", sw, "link", "set", "br0", "up")
            ports = []
            for name, octet in members.items():
                host = Host(name, site, f"{self.prefix}{name}", f"{net}.{octet}")
                self.hosts[name] = host
                self._add_ns(host.ns)
                port = f"p-{name}"
                self._plug(sw, port, host.ns, "eth0", f"{host.ip}/{PREFIX_LEN}")
                _ip("-n", host.ns, "route", "add", "default", "via", self.router_ip(site))
                ports.append(port)
            # the router's leg into this site
            self._plug(sw, "p-rt", rt, f"eth{site}", f"{self.router_ip(site)}/{PREFIX_LEN}")
            ports.append("p-rt")
            # SPAN: every port's ingress mirrored to mir0, whose peer is the sensor's mir1
            _ip("-n", sw, "link", "add", "mir0", "type", "veth", "peer", "name", SENSOR_IFACE,
                "netns", sen)
            _ip("-n", sw, "link", "set", "mir0", "up")
            _ip("-n", sen, "link", "set", SENSOR_IFACE, "up")
            for port in ports:
                _ns_cmd(sw, "tc", "qdisc", "add", "dev", port, "clsact")
                # no matchall classifier on this kernel: u32 matching everything
                _ns_cmd(sw, "tc", "filter", "add", "dev", port, "ingress", "protocol", "all",
                        "u32", "match", "u32", "0", "0",
                        "action", "mirred", "egress", "mirror", "dev", "mir0")
            # uplink from the sensor namespace to the controller in the root namespace
            root_if, root_ip, sen_ip = self._uplink(site)
            _ip("link", "add", root_if, "type", "veth", "peer", "name", "up0", "netns", sen)
            self.root_links.append(root_if)
            _ip("addr", "add", f"{root_ip}/30", "dev", root_if)
            _ip("link", "set", root_if, "up")
            _ip("-n", sen, "addr", "add", f"{sen_ip}/30", "dev", "up0")
            _ip("-n", sen, "link", "set", "up0", "up")
            if root_ip != self.controller_ip:
                _ip("-n", sen, "route", "add", f"{self.controller_ip}/32", "via", root_ip)

    def _plug(self, sw: str, port: str, ns: str, ifname: str, addr: str) -> None:
        """A veth from the bridge in ``sw`` to interface ``ifname`` (addressed) in ``ns``."""
        _ip("-n", sw, "link", "add", port, "type", "veth", "peer", "name", ifname, "netns", ns)
        _ip("-n", sw, "link", "set", port, "master", "br0")
        _ip("-n", sw, "link", "set", port, "up")
        _ip("-n", ns, "addr", "add", addr, "dev", ifname)
        _ip("-n", ns, "link", "set", ifname, "up")
        _ns_cmd(ns, "ethtool", "-K", ifname, "tx", "off")

    # -- running things -----------------------------------------------------
    def sipp(self, host: str, argv: Sequence[str], *, workdir: Path | None = None,
             log: Path | None = None) -> subprocess.Popen[Any]:
        """Start ``sipp ARGV -i <host ip> -nostdin`` on ``host``.

        The working directory holds a ``pcap`` symlink to sipp's sample
        captures (``uac_pcap`` opens ``pcap/g711a.pcap``); pass ``workdir``
        to add files of your own (it gets the symlink too). Callers must give
        ``-m`` and ``-timeout`` (unbounded sipp runs hang CI).
        """
        workdir = workdir or self.tmpdir()
        link = workdir / "pcap"
        if not link.exists():
            link.symlink_to(SIPP_PCAP_DIR)
        out = open(log, "wb") if log is not None else subprocess.DEVNULL
        try:
            return self.run_in(self.hosts[host].ns,
                               ["sipp", *argv, "-i", self.hosts[host].ip, "-nostdin"],
                               cwd=workdir, stdin=subprocess.DEVNULL, stdout=out,
                               stderr=subprocess.STDOUT)
        finally:
            if log is not None:
                out.close()


@contextmanager
def two_site_lab(prefix: str = "sr2") -> Iterator[TwoSiteLab]:
    """Build the lab, yield it, always tear it down. Raises NetlabUnavailable."""
    check_available()
    lab = TwoSiteLab(prefix=f"{prefix}-{os.getpid()}-")
    try:
        lab.build()
        yield lab
    finally:
        lab.teardown()

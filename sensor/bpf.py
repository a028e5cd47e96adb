"""The kernel prefilter of live capture: BPF expressions libpcap compiles
(sensor/libpcap.py installs them on the capture handle)."""
from __future__ import annotations

__all__ = ["DEFAULT_BPF", "default_bpf"]

# Kernel prefilter for live capture: all UDP and TCP (SIP and RTP ports are
# not known in advance), IPv6 fragments (libpcap's "udp" only looks at the
# fixed IPv6 header's next header; IPv4 fragments carry proto 17 in every
# fragment so "udp" already matches them), the tunnels protocols.layers
# decapsulates (GRE and ERSPAN = IP protocol 47, IP-in-IP = 4 and 41; VXLAN
# is UDP already), and the same behind one 802.1Q tag.
# Dropped in the kernel: ARP, ICMP, STP/LLDP and other non-UDP/TCP/tunnel traffic.
_TUNNELS = "ip proto 47 or ip6 proto 47 or ip proto 4 or ip6 proto 4 or ip proto 41 or ip6 proto 41"
_L4 = f"udp or tcp or ip6 proto 44 or {_TUNNELS}"
DEFAULT_BPF = f"{_L4} or (vlan and ({_L4}))"
# libpcap accepts "vlan" only on Ethernet-like link types (not on Linux
# cooked captures of "any", nor on raw IP from tun devices).
_VLAN_LINKTYPES = frozenset((1,))


def default_bpf(linktype: int) -> str:
    """DEFAULT_BPF where libpcap understands "vlan", the same without it elsewhere."""
    return DEFAULT_BPF if linktype in _VLAN_LINKTYPES else _L4

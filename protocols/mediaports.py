"""Which UDP ports an SDP may name as media, and what a media packet looks like.

An SDP is untrusted input: any host that can send an INVITE past a mirror
writes it.  Media endpoints learned from SDP steer what the sensors forward
and what the controller keeps in a call, so an SDP naming a DNS server's port
53 (or a SIP, VXLAN or database port) would pull that service's traffic into
a recording.  Sensor (sensor/classify.py) and controller (controller/media/streams.py)
share these rules:

* `media_port_ok(port)`: ports below 1024 and the well-known UDP service ports
  of `SERVICE_PORTS` are refused, unless the operator allows them
  (`allow_ports`); RTP stacks allocate from the dynamic ranges.
* `rtp_shaped(payload)`: RTP or RTCP version 2, or one of the protocols
  RFC 7983 multiplexes on an RTP port (STUN with its magic cookie, ZRTP with
  its magic, DTLS records).  Used for m= lines whose transport is RTP; for
  other kinds (T.38 UDPTL on ``m=image``, ``m=application``) every datagram
  on the port is media.
* `MAX_MEDIA_LINES`: the m= lines of one SDP that are mapped (real offers
  have 1-4; a 10,000-line SDP would map 20,000 endpoints).

Pure and cheap: nothing here runs per packet of a known RTP stream.
"""
from __future__ import annotations

__all__ = ["SERVICE_PORTS", "MAX_MEDIA_LINES", "media_port_ok", "rtp_shaped", "allow_ports"]

#: UDP ports of services that are never RTP: refused as SDP media endpoints
#: (with every port below 1024).
SERVICE_PORTS = frozenset((
    1194,         # OpenVPN
    1645, 1646, 1812, 1813, 3799,  # RADIUS (old, auth/acct, CoA)
    1701,         # L2TP
    1900,         # SSDP
    2049,         # NFS
    2055, 4739, 6343, 9995, 9996,  # NetFlow, IPFIX, sFlow
    2123, 2152,   # GTP-C, GTP-U
    2379, 2380,   # etcd
    3306, 5432, 6379, 11211, 27017,  # databases and caches
    3784, 3785,   # BFD
    4500,         # IPsec NAT-T
    4789, 6081, 8472,  # VXLAN, Geneve, Linux VXLAN
    5060, 5061,   # SIP: an SDP naming it would take SIP off the signalling path
    5353, 5355,   # mDNS, LLMNR
))

#: m= lines of one SDP that are mapped; the rest are counted and ignored.
MAX_MEDIA_LINES = 16

_allowed: frozenset[int] = frozenset()


def allow_ports(ports: frozenset[int] | set[int] | list[int]) -> None:
    """Ports the operator allows as media although the rules above refuse them
    (a lab PBX that really sends RTP from port 1000). Process-wide."""
    global _allowed
    _allowed = frozenset(int(p) for p in ports)


def media_port_ok(port: int) -> bool:
    """May an SDP name this UDP port as a media (RTP, RTCP, UDPTL) endpoint?"""
    if port in _allowed:
        return True
    return 1024 <= port <= 0xFFFF and port not in SERVICE_PORTS


def rtp_shaped(payload: bytes, pts: frozenset[int] | None = None) -> bool:
    """Is this UDP payload RTP/RTCP (version 2; with `pts`, an RTP payload type
    among them), or STUN/ZRTP/DTLS as RFC 7983 multiplexes them on RTP ports?"""
    n = len(payload)
    if n < 4:
        return False
    b0 = payload[0]
    if b0 >> 6 == 2:
        b1 = payload[1]
        if 200 <= b1 <= 207:
            return n >= 8                      # RTCP
        return n >= 12 and (pts is None or (b1 & 0x7F) in pts)
    if b0 < 4:                                 # STUN: magic cookie (RFC 5389)
        return n >= 20 and payload[4:8] == b"\x21\x12\xa4\x42"
    if 16 <= b0 <= 19:                         # ZRTP (RFC 6189)
        return n >= 12 and payload[4:8] == b"ZRTP"
    if 20 <= b0 <= 63:                         # DTLS record: content type, version 254.x
        return 20 <= b0 <= 25 and n >= 13 and payload[1] == 0xFE
    return False

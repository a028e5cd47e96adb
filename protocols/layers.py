"""L2-L4 decode: link layer -> IPv4/IPv6 -> UDP/TCP, without copying payloads.

`decode(linktype, data)` returns a `Decoded` tuple of offsets and header
fields; the payload is `data[d.payload_offset:d.payload_offset + d.payload_len]`.

Tunnels used to carry mirrored traffic are removed (see `protocols.tunnels`):
GRE (Ethernet bridging, IPv4, IPv6), ERSPAN I/II/III, VXLAN on UDP port 4789,
IPv4/IPv6 in IPv4/IPv6. The result then describes the innermost IP packet
(its offsets still index the original frame) and `encap` says which tunnel
kinds were removed. An unfragmented outer packet is decapsulated; GRE that
carries something else and UDP to 4789 that is not VXLAN stay the outer packet.
"""
from __future__ import annotations

import socket
import struct
from typing import NamedTuple

from protocols import tunnels as _tun
from protocols.errors import DecodeError

__all__ = ["Decoded", "decode", "ip_to_str", "str_to_ip"]


class Decoded(NamedTuple):
    """Result of `decode`. Offsets are into the frame passed to `decode`."""

    ip_version: int
    src: bytes
    dst: bytes
    proto: int
    sport: int
    dport: int
    payload_offset: int
    payload_len: int
    l3_offset: int
    ip_id: int | None
    is_fragment: bool
    frag_offset: int
    more_fragments: bool
    tcp_seq: int
    tcp_flags: int
    # bitmask of the tunnel kinds removed to reach this packet, protocols.tunnels.ENCAP_*
    # (GRE 1, ERSPAN 2, VXLAN 4, IP-in-IP 8); 0 = not tunnelled
    encap: int = 0


_new = tuple.__new__  # builds a Decoded without the NamedTuple __new__ call

_ETH_IPV4 = 0x0800
_ETH_IPV6 = 0x86DD
_VLAN_TYPES = frozenset((0x8100, 0x88A8, 0x9100, 0x9200))
_ETH_PPPOE = 0x8864  # PPPoE session stage (RFC 2516)
_PPP_IPV4 = 0x0021
_PPP_IPV6 = 0x0057
# BSD loopback address families meaning IPv4 / IPv6 (Linux, BSDs, Darwin)
_AF_INET = 2
_AF_INET6 = frozenset((10, 24, 28, 30))

_ETH_IPV4_UDP = struct.Struct("!12xHBxHHHxB2x4s4sHHH")  # fast path, IHL 5
_IPV4 = struct.Struct("!BxHHHxB2x4s4s")  # vihl, tot_len, id, frag, proto, src, dst
_IPV6 = struct.Struct("!IHBx16s16s")  # vtf, payload_len, next header, src, dst
_UDP = struct.Struct("!HHH")  # sport, dport, length
_TCP = struct.Struct("!HHI4xBB")  # sport, dport, seq, data offset byte, flags
_IPV6_FRAG = struct.Struct("!BxHI")  # next header, offset+flags, id
_U32_LE = struct.Struct("<I")
_U32_BE = struct.Struct(">I")

_UDP_P = 17
_TCP_P = 6
_IPV6_EXT = frozenset((0, 43, 60))  # hop-by-hop, routing, destination options
_IPV6_FRAG_H = 44
_IPV6_AH = 51
_GRE_P = 47
_IPIP_P = 4  # IPv4 inside
_IPV6_IN_IP_P = 41  # IPv6 inside
_TUNNEL_PROTOS = frozenset((_GRE_P, _IPIP_P, _IPV6_IN_IP_P))
_VXLAN_PORT = _tun.VXLAN_PORT


def _tagged(et: int, data: bytes, off: int) -> Decoded:
    """Skips 802.1Q/QinQ tags (any depth) before the ethertype's payload."""
    while et in _VLAN_TYPES:
        if len(data) < off + 4:
            raise DecodeError("short VLAN tag")
        et = (data[off + 2] << 8) | data[off + 3]
        off += 4
    return _by_ethertype(et, data, off)


def decode(linktype: int, data: bytes) -> Decoded:
    """Decode one frame of the given pcap linktype; raises DecodeError if not IP or malformed."""
    if linktype == 1:  # Ethernet
        n = len(data)
        if n >= 42:
            # fast path: Ethernet II + IPv4 without options + unfragmented UDP
            et, vihl, tot_len, ip_id, frag, proto, src, dst, sport, dport, ulen = \
                _ETH_IPV4_UDP.unpack_from(data, 0)
            if (et == 0x0800 and vihl == 0x45 and proto == 17 and not frag & 0x3FFF
                    and 28 <= tot_len <= n - 14 and 8 <= ulen <= tot_len - 20
                    and dport != 4789):  # VXLAN: the general path decapsulates
                return _new(Decoded, (4, src, dst, 17, sport, dport, 42, ulen - 8, 14, ip_id,
                                      False, 0, False, 0, 0, 0))
        elif n < 14:
            raise DecodeError("short Ethernet frame")
        et = (data[12] << 8) | data[13]
        off = 14
        if et == _ETH_IPV4:
            return _ipv4(data, off)
        return _tagged(et, data, off)
    if linktype == 113:  # Linux cooked v1
        if len(data) < 16:
            raise DecodeError("short Linux SLL header")
        et = (data[14] << 8) | data[15]
        off = 16
        return _tagged(et, data, off)
    if linktype == 276:  # Linux cooked v2
        if len(data) < 20:
            raise DecodeError("short Linux SLL2 header")
        et = (data[0] << 8) | data[1]
        off = 20
        return _tagged(et, data, off)
    if linktype == 101:  # raw IP, version from the header
        if not data:
            raise DecodeError("empty raw IP frame")
        v = data[0] >> 4
        if v == 4:
            return _ipv4(data, 0)
        if v == 6:
            return _ipv6(data, 0)
        raise DecodeError(f"raw IP frame with IP version {v}")
    if linktype == 228:
        return _ipv4(data, 0)
    if linktype == 229:
        return _ipv6(data, 0)
    if linktype == 0 or linktype == 108:  # BSD loopback (host / network byte order)
        if len(data) < 4:
            raise DecodeError("short loopback header")
        if linktype == 108:
            fam = _U32_BE.unpack_from(data, 0)[0]
        else:
            fam = _U32_LE.unpack_from(data, 0)[0]
            if fam > 0xFFFF:  # written on a big-endian host
                fam = _U32_BE.unpack_from(data, 0)[0]
        if fam == _AF_INET:
            return _ipv4(data, 4)
        if fam in _AF_INET6:
            return _ipv6(data, 4)
        raise DecodeError(f"loopback address family {fam} is not IP")
    raise DecodeError(f"unsupported linktype {linktype}")


def _by_ethertype(et: int, data: bytes, off: int) -> Decoded:
    if et == _ETH_IPV4:
        return _ipv4(data, off)
    if et == _ETH_IPV6:
        return _ipv6(data, off)
    if et == _ETH_PPPOE:
        if len(data) < off + 8:
            raise DecodeError("short PPPoE header")
        ppp = (data[off + 6] << 8) | data[off + 7]
        if ppp == _PPP_IPV4:
            return _ipv4(data, off + 8)
        if ppp == _PPP_IPV6:
            return _ipv6(data, off + 8)
        raise DecodeError(f"PPP protocol 0x{ppp:04x} is not IP")
    raise DecodeError(f"ethertype 0x{et:04x} is not IP")


def _ipv4(data: bytes, off: int, depth: int = 0) -> Decoded:
    if len(data) < off + 20:
        raise DecodeError("short IPv4 header")
    vihl, tot_len, ip_id, frag, proto, src, dst = _IPV4.unpack_from(data, off)
    if vihl >> 4 != 4:
        raise DecodeError(f"IP version {vihl >> 4} in an IPv4 packet")
    hlen = (vihl & 0x0F) * 4
    avail = len(data) - off
    if tot_len == 0:  # TSO/GSO capture on the sending host: length left to the NIC
        tot_len = avail
    if hlen < 20 or tot_len < hlen:
        raise DecodeError(f"bad IPv4 header length {hlen} / total length {tot_len}")
    if tot_len > avail:
        raise DecodeError(f"truncated IPv4 packet: total length {tot_len}, {avail} captured")
    l4 = off + hlen
    l4len = tot_len - hlen
    frag_offset = (frag & 0x1FFF) << 3
    mf = (frag & 0x2000) != 0
    if frag_offset:
        return _new(Decoded, (4, src, dst, proto, 0, 0, l4, l4len, off, ip_id,
                              True, frag_offset, mf, 0, 0, 0))
    return _l4(4, src, dst, proto, data, l4, l4len, off, ip_id, mf, 0, mf, depth)


def _l4(ver: int, src: bytes, dst: bytes, proto: int, data: bytes, l4: int, l4len: int,
        l3: int, ip_id: int | None, is_frag: bool, frag_offset: int, mf: bool,
        depth: int = 0) -> Decoded:
    if proto == _UDP_P:
        if l4len < 8:
            raise DecodeError("short UDP header")
        sport, dport, ulen = _UDP.unpack_from(data, l4)
        if is_frag:  # first fragment: the rest is only part of the datagram
            plen = l4len - 8
        elif 8 <= ulen <= l4len:
            plen = ulen - 8
        elif ulen == 0 and ver == 6:  # jumbogram
            plen = l4len - 8
        else:
            raise DecodeError(f"bad UDP length {ulen} for {l4len} bytes")
        d = _new(Decoded, (ver, src, dst, 17, sport, dport, l4 + 8, plen, l3, ip_id,
                           is_frag, frag_offset, mf, 0, 0, 0))
        if dport == _VXLAN_PORT and not is_frag:
            return _vxlan(d, data, depth)
        return d
    if proto == _TCP_P:
        if l4len < 20:
            raise DecodeError("short TCP header")
        sport, dport, seq, doff, flags = _TCP.unpack_from(data, l4)
        thlen = (doff >> 4) * 4
        if thlen < 20 or thlen > l4len:
            raise DecodeError(f"bad TCP data offset {thlen}")
        return _new(Decoded, (ver, src, dst, 6, sport, dport, l4 + thlen, l4len - thlen, l3,
                              ip_id, is_frag, frag_offset, mf, seq, flags, 0))
    d = _new(Decoded, (ver, src, dst, proto, 0, 0, l4, l4len, l3, ip_id,
                       is_frag, frag_offset, mf, 0, 0, 0))
    if proto in _TUNNEL_PROTOS and not is_frag:
        return _tunnel(d, data, depth)
    return d


def _ipv6(data: bytes, off: int, depth: int = 0) -> Decoded:
    if len(data) < off + 40:
        raise DecodeError("short IPv6 header")
    vtf, plen, nh, src, dst = _IPV6.unpack_from(data, off)
    if vtf >> 28 != 6:
        raise DecodeError(f"IP version {vtf >> 28} in an IPv6 packet")
    p = off + 40
    avail = len(data) - p
    if plen == 0:  # jumbogram or TSO capture: take what was captured
        plen = avail
    elif plen > avail:
        raise DecodeError(f"truncated IPv6 packet: payload length {plen}, {avail} captured")
    end = p + plen
    ip_id: int | None = None
    frag_offset = 0
    mf = False
    is_frag = False
    while True:
        if nh in _IPV6_EXT or nh == _IPV6_AH:
            if end - p < 8:
                raise DecodeError(f"short IPv6 extension header {nh}")
            hlen = (data[p + 1] + 2) * 4 if nh == _IPV6_AH else (data[p + 1] + 1) * 8
            if hlen > end - p:
                raise DecodeError(f"IPv6 extension header {nh} exceeds the packet")
            nh = data[p]
            p += hlen
        elif nh == _IPV6_FRAG_H:
            if end - p < 8:
                raise DecodeError("short IPv6 fragment header")
            nh, fo, ip_id = _IPV6_FRAG.unpack_from(data, p)
            p += 8
            frag_offset = fo & 0xFFF8
            mf = (fo & 1) != 0
            if frag_offset or mf:
                is_frag = True
                if frag_offset:
                    return _new(Decoded, (6, src, dst, nh, 0, 0, p, end - p, off, ip_id,
                                          True, frag_offset, mf, 0, 0, 0))
        else:
            break
    return _l4(6, src, dst, nh, data, p, end - p, off, ip_id, is_frag, frag_offset, mf, depth)


def _tunnel(outer: Decoded, data: bytes, depth: int) -> Decoded:
    """The innermost packet of an unfragmented GRE / IP-in-IP packet, or `outer`."""
    off = outer.payload_offset
    end = off + outer.payload_len
    proto = outer.proto
    if proto == _GRE_P:
        found = _tun.gre(data, off, end)
        if found is None:
            return outer
        kind, off, bits = found
    else:
        kind = _tun.INNER_IPV4 if proto == _IPIP_P else _tun.INNER_IPV6
        bits = _tun.ENCAP_IPIP
    if depth >= _tun.MAX_TUNNELS:
        raise DecodeError(f"more than {_tun.MAX_TUNNELS} nested tunnels")
    if end < len(data):  # the inner packet ends where the outer payload does
        data = data[:end]
    inner = _inner(kind, data, off, depth + 1)
    if inner is None:
        return outer
    return _new(Decoded, (*inner[:15], inner[15] | bits))


def _vxlan(outer: Decoded, data: bytes, depth: int) -> Decoded:
    """The innermost packet of a VXLAN packet, or `outer` (plain UDP) if it is none."""
    off = outer.payload_offset
    end = off + outer.payload_len
    if depth >= _tun.MAX_TUNNELS:
        return outer
    eth = _tun.vxlan(data, off, end)
    if eth is None:
        return outer
    if end < len(data):
        data = data[:end]
    try:
        inner = _inner(_tun.INNER_ETHERNET, data, eth, depth + 1)
    except DecodeError:  # port 4789 is only a hint
        return outer
    if inner is None:
        return outer
    return _new(Decoded, (*inner[:15], inner[15] | _tun.ENCAP_VXLAN))


def _inner(kind: int, data: bytes, off: int, depth: int) -> Decoded | None:
    """Decode what a tunnel carries; None when it is not IP (ARP, LLDP... inside)."""
    if kind == _tun.INNER_IPV4:
        return _ipv4(data, off, depth)
    if kind == _tun.INNER_IPV6:
        return _ipv6(data, off, depth)
    if len(data) < off + 14:
        raise DecodeError("short Ethernet header inside a tunnel")
    et = (data[off + 12] << 8) | data[off + 13]
    off += 14
    while et in _VLAN_TYPES:
        if len(data) < off + 4:
            raise DecodeError("short VLAN tag inside a tunnel")
        et = (data[off + 2] << 8) | data[off + 3]
        off += 4
    if et == _ETH_IPV4:
        return _ipv4(data, off, depth)
    if et == _ETH_IPV6:
        return _ipv6(data, off, depth)
    if et == _ETH_PPPOE and len(data) >= off + 8:
        ppp = (data[off + 6] << 8) | data[off + 7]
        if ppp == _PPP_IPV4:
            return _ipv4(data, off + 8, depth)
        if ppp == _PPP_IPV6:
            return _ipv6(data, off + 8, depth)
    return None


def ip_to_str(b: bytes) -> str:
    """Text form of a packed IPv4 (4 bytes) or IPv6 (16 bytes) address."""
    if len(b) == 4:
        return socket.inet_ntop(socket.AF_INET, b)
    if len(b) == 16:
        return socket.inet_ntop(socket.AF_INET6, b)
    raise ValueError(f"address of {len(b)} bytes is neither IPv4 nor IPv6")


def str_to_ip(s: str) -> bytes:
    """Packed bytes of an IPv4 or IPv6 address text; ValueError if neither."""
    try:
        if ":" in s:
            return socket.inet_pton(socket.AF_INET6, s)
        return socket.inet_pton(socket.AF_INET, s)
    except OSError as exc:
        raise ValueError(f"not an IP address: {s!r}") from exc

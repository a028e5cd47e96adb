"""Tunnel headers used to carry mirrored traffic: GRE, ERSPAN I/II/III, VXLAN.

Pure header parsing for `protocols.layers`, which does the recursion into the
inner packet. Each function looks at one tunnel header inside
``data[off:end]`` and says what follows it; offsets stay offsets into the
original frame. A header that is present but malformed (too short, unknown
version) raises `DecodeError`; a well-formed header carrying something that is
not decapsulated here (PPTP, MPLS, keepalives, ...) gives ``None`` so the
caller keeps the outer packet.

`Decoded.encap` is a bitmask of the tunnel kinds removed, ``ENCAP_*`` below
(0 = the packet was not tunnelled). ERSPAN rides on GRE, so an ERSPAN frame
has ``ENCAP_GRE | ENCAP_ERSPAN``; IPv4-in-IPv4, IPv6-in-IPv4, IPv4/IPv6-in-IPv6
are all ``ENCAP_IPIP``.
"""
from __future__ import annotations

from protocols.errors import DecodeError

__all__ = ["ENCAP_GRE", "ENCAP_ERSPAN", "ENCAP_VXLAN", "ENCAP_IPIP", "MAX_TUNNELS",
           "INNER_ETHERNET", "INNER_IPV4", "INNER_IPV6", "VXLAN_PORT", "gre", "vxlan"]

ENCAP_GRE = 1  # GRE (RFC 2784/2890): transparent Ethernet bridging or IP directly
ENCAP_ERSPAN = 2  # Cisco ERSPAN type I, II or III (always together with ENCAP_GRE)
ENCAP_VXLAN = 4  # VXLAN (RFC 7348) on UDP destination port 4789
ENCAP_IPIP = 8  # IP-in-IP: IPv4 protocol / IPv6 next header 4 (IPv4) or 41 (IPv6)

MAX_TUNNELS = 4  # tunnel layers removed at most; one more raises DecodeError

# what follows a tunnel header
INNER_ETHERNET = 1
INNER_IPV4 = 4
INNER_IPV6 = 6

VXLAN_PORT = 4789

_GRE_C = 0x80  # checksum (and offset) present
_GRE_R = 0x40  # routing present (RFC 1701, obsolete): SREs not decapsulated
_GRE_K = 0x20  # key present
_GRE_S = 0x10  # sequence number present

_GRE_TEB = 0x6558
_GRE_IPV4 = 0x0800
_GRE_IPV6 = 0x86DD
_GRE_ERSPAN_I_II = 0x88BE
_GRE_ERSPAN_III = 0x22EB

_ERSPAN_FT_ETHERNET = 0
_ERSPAN_FT_IP = 2


def gre(data: bytes, off: int, end: int) -> tuple[int, int, int] | None:
    """``(inner kind, inner offset, ENCAP_* bits)`` of the GRE packet at ``data[off:end]``.

    None for GRE that is not decapsulated: version 1 (PPTP's enhanced GRE),
    routing present, or a protocol type other than Ethernet bridging, IPv4,
    IPv6 and ERSPAN. DecodeError when the header is shorter than its flags
    say or the version is neither 0 nor 1.
    """
    if end - off < 4:
        raise DecodeError("short GRE header")
    flags = data[off]
    ver = data[off + 1] & 0x07
    if ver:
        if ver == 1:
            return None
        raise DecodeError(f"GRE version {ver}")
    if flags & _GRE_R:
        return None
    p = off + 4
    if flags & _GRE_C:
        p += 4
    if flags & _GRE_K:
        p += 4
    if flags & _GRE_S:
        p += 4
    if p > end:
        raise DecodeError(f"short GRE header: flags need {p - off} bytes, {end - off} left")
    ptype = (data[off + 2] << 8) | data[off + 3]
    if ptype == _GRE_TEB:
        return INNER_ETHERNET, p, ENCAP_GRE
    if ptype == _GRE_IPV4:
        return INNER_IPV4, p, ENCAP_GRE
    if ptype == _GRE_IPV6:
        return INNER_IPV6, p, ENCAP_GRE
    if ptype == _GRE_ERSPAN_I_II:
        if not flags & _GRE_S:  # type I: the mirrored frame follows the GRE header
            return INNER_ETHERNET, p, ENCAP_GRE | ENCAP_ERSPAN
        if end - p < 8:
            raise DecodeError("short ERSPAN type II header")
        if data[p] >> 4 != 1:
            raise DecodeError(f"ERSPAN version {data[p] >> 4} under GRE type 0x88be")
        return INNER_ETHERNET, p + 8, ENCAP_GRE | ENCAP_ERSPAN
    if ptype == _GRE_ERSPAN_III:
        if end - p < 12:
            raise DecodeError("short ERSPAN type III header")
        if data[p] >> 4 != 2:
            raise DecodeError(f"ERSPAN version {data[p] >> 4} under GRE type 0x22eb")
        ft = (data[p + 10] >> 2) & 0x1F
        o_bit = data[p + 11] & 0x01
        p += 12
        if o_bit:  # 8-byte platform specific subheader
            if end - p < 8:
                raise DecodeError("short ERSPAN type III platform specific subheader")
            p += 8
        if ft == _ERSPAN_FT_ETHERNET:
            return INNER_ETHERNET, p, ENCAP_GRE | ENCAP_ERSPAN
        if ft == _ERSPAN_FT_IP:  # an IP packet without its Ethernet header
            if p >= end:
                raise DecodeError("ERSPAN type III IP frame without data")
            v = data[p] >> 4
            if v == 4:
                return INNER_IPV4, p, ENCAP_GRE | ENCAP_ERSPAN
            if v == 6:
                return INNER_IPV6, p, ENCAP_GRE | ENCAP_ERSPAN
            raise DecodeError(f"ERSPAN type III IP frame with IP version {v}")
        return None
    return None


def vxlan(data: bytes, off: int, end: int) -> int | None:
    """Offset of the inner Ethernet frame if ``data[off:end]`` is a VXLAN packet, else None.

    Never raises: the UDP port is only a hint, so anything that is not VXLAN
    (I flag clear, reserved flag bits set, too short for an Ethernet header)
    stays plain UDP. The G bit of the group policy extension is allowed.
    """
    if end - off < 8 + 14:
        return None
    if data[off] & 0x7F != 0x08:  # I set, R bits clear (0x80 = G of VXLAN-GBP allowed)
        return None
    return off + 8

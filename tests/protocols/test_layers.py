"""layers.decode compared field by field with tshark, on real and synthetic frames."""
from __future__ import annotations

import struct
from pathlib import Path

import pytest

from protocols.errors import DecodeError
from protocols.layers import Decoded, decode, ip_to_str, str_to_ip
from protocols.pcapfile import (
    LINKTYPE_ETHERNET, LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP, LINKTYPE_NULL, LINKTYPE_RAW, read_frames,
)
from tests.conftest import capture
from tests.protocols._build import section
from tests.protocols._tshark import first, table

CAPTURES = [
    "SIP-RTP-Normal_Call_two_parties.pcap",  # ARP, ICMP, TCP, UDP
    "MagicJack-_short_call.pcap",  # ICMP errors quoting UDP
    "SIP_CALL_RTP_G711",  # 802.3/LLC frames
    "ipv6frag.pcap",  # Linux SLL, IPv6 fragments
    "erspan_sip_ipv4_udp.pcapng",  # GRE (Ethernet bridging): the inner packet
    "sip_ipv4_tcp.pcap",
    "DTMFsipinfo.pcap",  # PPPoE
]


def _hex(text: str) -> int:
    return int(text, 16) if text.startswith("0x") else int(text)


_L4_NAMES = {"udp": 17, "tcp": 6, "icmpv6": 58}


def _ipv6_upper_layer(row: dict[str, list[str]]) -> int:
    """Protocol after the IPv6 extension headers, from tshark's protocol stack."""
    stack = first(row, "frame.protocols").split(":")
    after = [p for p in stack[stack.index("ipv6") + 1:] if not p.startswith("ipv6.")]
    if after and after[0] in _L4_NAMES:
        return _L4_NAMES[after[0]]
    return int(first(row, "ipv6.nxt"))


def _innermost_row(row: dict[str, list[str]]) -> dict[str, list[str]]:
    """A GRE row reduced to its innermost occurrence of every field (decode decapsulates)."""
    return {f: v[-1:] for f, v in row.items()}


def _check_row(d: Decoded | None, row: dict[str, list[str]], where: str) -> None:
    if row["gre"]:
        row = _innermost_row(row)
    ip4 = first(row, "ip.src")
    ip6 = first(row, "ipv6.src")
    if ip4 is None and ip6 is None:
        assert d is None, f"{where}: decoded a frame tshark sees as non-IP"
        return
    assert d is not None, f"{where}: tshark sees IP but decode failed"
    if ip4 is not None:
        assert d.ip_version == 4, where
        assert (ip_to_str(d.src), ip_to_str(d.dst)) == (ip4, first(row, "ip.dst")), where
        proto = int(first(row, "ip.proto"))
        assert d.ip_id == _hex(first(row, "ip.id")), where
        frag_off = int(first(row, "ip.frag_offset") or 0) * 8  # tshark: 8-byte units
        mf = first(row, "ip.flags.mf") in ("1", "True")
    else:
        assert d.ip_version == 6, where
        assert (ip_to_str(d.src), ip_to_str(d.dst)) == (ip6, first(row, "ipv6.dst")), where
        ident = first(row, "ipv6.fraghdr.ident")
        if ident is not None:
            proto = int(first(row, "ipv6.fraghdr.nxt"))
            assert d.ip_id == _hex(ident), where
            frag_off = int(first(row, "ipv6.fraghdr.offset")) * 8
            mf = first(row, "ipv6.fraghdr.more") in ("1", "True")
        else:
            proto = _ipv6_upper_layer(row)
            assert d.ip_id is None, where
            frag_off, mf = 0, False
    assert d.proto == proto, where
    assert (d.frag_offset, d.more_fragments, d.is_fragment) == (frag_off, mf, bool(frag_off or mf)), where
    sport = dport = 0
    if frag_off == 0:
        if proto == 17:
            sport, dport = int(first(row, "udp.srcport")), int(first(row, "udp.dstport"))
            if not mf:
                assert d.payload_len == int(first(row, "udp.length")) - 8, where
        elif proto == 6:
            sport, dport = int(first(row, "tcp.srcport")), int(first(row, "tcp.dstport"))
            assert d.payload_len == int(first(row, "tcp.len")), where
            assert d.tcp_seq == int(first(row, "tcp.seq_raw")), where
            assert d.tcp_flags == _hex(first(row, "tcp.flags")) & 0xFF, where
    assert (d.sport, d.dport) == (sport, dport), where
    if proto != 6:
        assert (d.tcp_seq, d.tcp_flags) == (0, 0), where


def _decode_or_none(linktype: int, data: bytes) -> Decoded | None:
    try:
        return decode(linktype, data)
    except DecodeError:
        return None


@pytest.mark.parametrize("name", CAPTURES)
def test_decode_matches_tshark(name: str) -> None:
    path = capture(name)
    rows = table(path)
    frames = list(read_frames(path))
    assert len(frames) == len(rows)
    decoded = 0
    for i, ((_, lt, data), row) in enumerate(zip(frames, rows), 1):
        d = _decode_or_none(lt, data)
        _check_row(d, row, f"{name} frame {i}")
        if d is not None:
            decoded += 1
            assert d.payload_offset + d.payload_len <= len(data)
    assert decoded > 0


def test_gre_frames_give_inner_packet() -> None:
    """(tests/protocols/test_tunnels.py checks every tunnel kind against tshark)"""
    path = capture("erspan_sip_ipv4_udp.pcapng")
    for _, lt, data in read_frames(path):
        d = decode(lt, data)
        assert (d.proto, d.encap, d.l3_offset) == (17, 1, 14 + 20 + 8 + 14)
        assert data[14 + 20 + 2:14 + 20 + 4] == b"\x65\x58"  # GRE protocol: TEB


def test_ethernet_padding_excluded() -> None:
    ip = bytes.fromhex("4500001c00010000401100000a0000010a00000213c413c400080000")
    frame = b"\x00" * 12 + b"\x08\x00" + ip + b"\xaa" * 18  # padded to 60 bytes
    d = decode(LINKTYPE_ETHERNET, frame)
    assert (d.payload_offset, d.payload_len) == (42, 0)


# ---- synthetic frames, each file checked by tshark ----

def _udp_ipv4(payload: bytes, options: bytes = b"", frag: int = 0, proto: int = 17,
              src: str = "192.0.2.1", dst: str = "198.51.100.7") -> bytes:
    l4 = struct.pack("!HHHH", 5060, 5080, 8 + len(payload), 0) + payload if proto == 17 else payload
    ihl = 5 + len(options) // 4
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + len(l4), 0x1234, frag, 64, proto, 0,
                      str_to_ip(src), str_to_ip(dst))
    return hdr + options + l4


def _ipv6(next_header: int, body: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 0x60000000, len(body), next_header, 64,
                       str_to_ip("2001:db8::1"), str_to_ip("2001:db8::2")) + body


def _udp(payload: bytes, sport: int = 5060, dport: int = 5062) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def _tcp(payload: bytes) -> bytes:
    opts = b"\x01\x01\x08\x0a" + b"\x00" * 8  # NOP NOP timestamps
    return struct.pack("!HHIIBBHHH", 5061, 40000, 123456789, 1, (5 + 3) << 4, 0x18, 1024, 0, 0) \
        + opts + payload


SIP = b"OPTIONS sip:x@example.com SIP/2.0\r\n\r\n"
ETH = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02"


def _ipv6_variants() -> list[bytes]:
    hop = bytes([60, 0]) + b"\x01\x04\x00\x00\x00\x00"  # hop-by-hop -> destination, PadN
    dst = bytes([43, 0]) + b"\x01\x04\x00\x00\x00\x00"  # destination -> routing
    rt = bytes([17, 2, 2, 1]) + b"\x00" * 4 + str_to_ip("2001:db8::99")  # type 2 -> UDP
    frag_first = bytes([17, 0]) + struct.pack("!HI", 0x0001, 0xCAFE)  # offset 0, M=1
    frag_last = bytes([17, 0]) + struct.pack("!HI", (16 << 3) | 0, 0xCAFE)  # offset 128 B
    return [
        _ipv6(17, _udp(SIP)),
        _ipv6(6, _tcp(SIP)),
        _ipv6(0, hop + dst + rt + _udp(SIP)),
        _ipv6(44, frag_first + _udp(SIP * 4)[:120]),
        _ipv6(44, frag_last + b"tail of the datagram"),
        _ipv6(58, b"\x80\x00\x00\x00\x00\x01\x00\x01"),  # ICMPv6 echo
    ]


def _ipv4_variants() -> list[bytes]:
    return [
        _udp_ipv4(SIP),
        _udp_ipv4(SIP, options=b"\x94\x04\x00\x00" + b"\x01\x01\x01\x00"),  # router alert, NOPs, EOL
        _udp_ipv4(SIP * 2, frag=0x2000),  # first fragment (MF)
        _udp_ipv4(b"more fragment data", frag=0x0010, proto=17),  # offset 128, last
        _udp_ipv4(_tcp(SIP), proto=6),
        _udp_ipv4(b"\x08\x00\x00\x00\x00\x01\x00\x01", proto=1),
    ]


def _synthetic() -> dict[int, list[bytes]]:
    v4, v6 = _ipv4_variants(), _ipv6_variants()
    eth = []
    for ip in v4:
        eth.append(ETH + b"\x08\x00" + ip)
        eth.append(ETH + b"\x81\x00\x00\x64\x08\x00" + ip)  # 802.1Q
        eth.append(ETH + b"\x88\xa8\x00\xc8\x81\x00\x00\x64\x08\x00" + ip)  # QinQ
        eth.append(ETH + b"\x91\x00\x00\x0a\x81\x00\x00\x14\x08\x00" + ip)
        eth.append((ETH + b"\x08\x00" + ip).ljust(60, b"\0"))  # padded short frame
    for ip in v6:
        eth.append(ETH + b"\x86\xdd" + ip)
        eth.append(ETH + b"\x81\x00\x00\x64\x86\xdd" + ip)
    eth.append(ETH + b"\x08\x06" + b"\x00\x01\x08\x00\x06\x04\x00\x01" + b"\x00" * 20)  # ARP
    eth.append(ETH + b"\x88\x64\x11\x00\x00\x01\x00\x00\x00\x21" + v4[0][:-2])  # PPPoE, IP cut
    sll = [b"\x00\x00\x00\x01\x00\x06" + ETH[:8] + b"\x08\x00" + ip for ip in v4] + \
          [b"\x00\x04\x00\x01\x00\x06" + ETH[:8] + b"\x86\xdd" + ip for ip in v6]
    sll2 = [b"\x08\x00\x00\x00\x00\x00\x00\x02\x00\x01\x00\x06" + ETH[:8] + ip for ip in v4] + \
           [b"\x86\xdd\x00\x00\x00\x00\x00\x02\x00\x01\x04\x06" + ETH[:8] + ip for ip in v6]
    null = [struct.pack("<I", 2) + ip for ip in v4] + [struct.pack("<I", 30) + ip for ip in v6] \
        + [struct.pack(">I", 2) + v4[0], struct.pack(">I", 24) + v6[0]]
    loop = [struct.pack(">I", 2) + ip for ip in v4] + [struct.pack(">I", 24) + ip for ip in v6]
    return {
        LINKTYPE_ETHERNET: eth, LINKTYPE_LINUX_SLL: sll, LINKTYPE_LINUX_SLL2: sll2,
        LINKTYPE_NULL: null, LINKTYPE_LOOP: loop, LINKTYPE_RAW: v4 + v6,
        LINKTYPE_IPV4: v4, LINKTYPE_IPV6: v6,
    }


def test_synthetic_link_types_match_tshark(tmp_path: Path) -> None:
    # one pcapng with an interface per link type, so tshark runs once
    synthetic = _synthetic()
    linktypes = sorted(synthetic)
    packets = [(i, n, fr) for i, lt in enumerate(linktypes) for n, fr in enumerate(synthetic[lt])]
    path = tmp_path / "linktypes.pcapng"
    path.write_bytes(section("<", [(lt, None, None) for lt in linktypes], packets))
    frames = list(read_frames(path))
    rows = table(path)
    assert len(rows) == len(frames) == len(packets)
    assert [(lt, data) for _, lt, data in frames] == [(linktypes[i], fr) for i, _, fr in packets]
    for n, ((_, lt, data), row) in enumerate(zip(frames, rows)):
        _check_row(_decode_or_none(lt, data), row, f"frame {n} linktype {lt}")


def test_truncated_and_unknown_raise_decode_error() -> None:
    ip = _udp_ipv4(SIP)
    bad = [
        (LINKTYPE_ETHERNET, b""),
        (LINKTYPE_ETHERNET, ETH + b"\x08\x00" + ip[:30]),  # IP total length beyond data
        (LINKTYPE_ETHERNET, ETH + b"\x08\x00" + b"\x46" + ip[1:]),  # IHL says options
        (LINKTYPE_ETHERNET, ETH + b"\x81\x00\x00"),
        (LINKTYPE_ETHERNET, ETH + b"\x00\x26" + b"\x42" * 40),  # 802.3 length
        (LINKTYPE_RAW, b"\x55" * 40),
        (LINKTYPE_IPV6, _ipv6(17, _udp(SIP))[:50]),
        (LINKTYPE_IPV6, _ipv6(0, b"\x11\x08" + b"\x00" * 6)),  # ext header beyond packet
        (147, ip),  # user linktype
    ]
    for lt, data in bad:
        with pytest.raises(DecodeError):
            decode(lt, data)


def test_ip_text_roundtrip() -> None:
    for text in ("10.0.0.1", "255.255.255.255", "2001:db8::1", "::ffff:192.0.2.1", "fe80::1"):
        assert ip_to_str(str_to_ip(text)) == text
    with pytest.raises(ValueError):
        str_to_ip("300.1.1.1")
    with pytest.raises(ValueError):
        ip_to_str(b"\x01\x02\x03")

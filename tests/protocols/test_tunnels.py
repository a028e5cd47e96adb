"""Tunnel decapsulation in layers.decode, checked against tshark's innermost layers.

tshark lists every occurrence of a field in a tunnelled frame (outer first), so
the expectation for decode is the last IP layer of tshark's protocol stack and
the UDP/TCP layer right after it.
"""
from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.errors import DecodeError
from protocols.layers import Decoded, decode, ip_to_str, str_to_ip
from protocols.pcapfile import LINKTYPE_ETHERNET, read_frames, write_pcap
from protocols.tunnels import ENCAP_ERSPAN, ENCAP_GRE, ENCAP_IPIP, ENCAP_VXLAN, MAX_TUNNELS
from sensor.bpf import DEFAULT_BPF
from tests.conftest import capture, require_tool
from tests.protocols._tshark import Row, table
from tests.protocols._build import inet_checksum

GRE_CAPTURE = "erspan_sip_ipv4_udp.pcapng"


# ---- tshark's innermost packet ---------------------------------------------

def _innermost(row: Row) -> dict[str, object]:
    """Innermost IP packet of a tshark row: version, addresses, protocol, ports, IP ID."""
    stack = row["frame.protocols"][0].split(":")
    ip_layers = [i for i, p in enumerate(stack) if p in ("ip", "ipv6")]
    if not ip_layers:
        return {}
    last = ip_layers[-1]
    after = stack[last + 1] if last + 1 < len(stack) else ""
    if stack[last] == "ip":
        out: dict[str, object] = {
            "ip_version": 4, "src": row["ip.src"][-1], "dst": row["ip.dst"][-1],
            "proto": int(row["ip.proto"][-1]), "ip_id": int(row["ip.id"][-1], 16)}
    else:
        out = {"ip_version": 6, "src": row["ipv6.src"][-1], "dst": row["ipv6.dst"][-1],
               "proto": int(row["ipv6.nxt"][-1]), "ip_id": None}
    out["sport"] = out["dport"] = 0
    out["payload_len"] = None
    if after == "udp":
        out["sport"], out["dport"] = int(row["udp.srcport"][-1]), int(row["udp.dstport"][-1])
        out["payload_len"] = int(row["udp.length"][-1]) - 8
    elif after == "tcp":
        out["sport"], out["dport"] = int(row["tcp.srcport"][-1]), int(row["tcp.dstport"][-1])
        out["payload_len"] = int(row["tcp.len"][-1])
    return out


def _check(d: Decoded, data: bytes, row: Row, where: str) -> None:
    exp = _innermost(row)
    assert exp, f"{where}: tshark sees no IP"
    got = {"ip_version": d.ip_version, "src": ip_to_str(d.src), "dst": ip_to_str(d.dst),
           "proto": d.proto, "ip_id": d.ip_id, "sport": d.sport, "dport": d.dport}
    want = {k: v for k, v in exp.items() if k != "payload_len"}
    assert got == want, where
    if exp["payload_len"] is not None:
        assert d.payload_len == exp["payload_len"], where
    # l3_offset points at the inner IP header, the payload lies inside the frame
    assert data[d.l3_offset] >> 4 == d.ip_version, where
    ip_src_at = d.l3_offset + (12 if d.ip_version == 4 else 8)
    assert data[ip_src_at:ip_src_at + len(d.src)] == d.src, where
    assert d.l3_offset < d.payload_offset <= d.payload_offset + d.payload_len <= len(data), where


# ---- the public ERSPAN/GRE capture -----------------------------------------

def test_gre_capture_gives_innermost_packet() -> None:
    path = capture(GRE_CAPTURE)
    rows = table(path)
    frames = list(read_frames(path))
    assert len(rows) == len(frames) > 0
    for i, ((_, lt, data), row) in enumerate(zip(frames, rows), 1):
        assert "gre" in row["frame.protocols"][0].split(":")
        d = decode(lt, data)
        _check(d, data, row, f"frame {i}")
        assert d.encap == ENCAP_GRE and d.proto == 17
        payload = data[d.payload_offset:d.payload_offset + d.payload_len]
        if row["sip.Method"]:
            assert payload.startswith(row["sip.Method"][0].encode() + b" "), i
        else:
            assert payload.startswith(b"SIP/2.0 " + row["sip.Status-Code"][0].encode()), i


# ---- synthetic frames ------------------------------------------------------

MAC = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02"
MAC2 = b"\x02\x00\x00\x00\x00\x03\x02\x00\x00\x00\x00\x04"


def eth(ethertype: int, body: bytes, mac: bytes = MAC, vlan: int | None = None) -> bytes:
    tag = struct.pack("!HH", 0x8100, vlan) if vlan is not None else b""
    return mac + tag + struct.pack("!H", ethertype) + body


def ipv4(proto: int, body: bytes, src: str = "203.0.113.1", dst: str = "203.0.113.2",
         ip_id: int = 0x1111) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), ip_id, 0x4000, 64, proto, 0,
                      str_to_ip(src), str_to_ip(dst))
    return hdr[:10] + struct.pack("!H", inet_checksum(hdr)) + hdr[12:] + body


def ipv6(nh: int, body: bytes, src: str = "2001:db8:1::1", dst: str = "2001:db8:1::2") -> bytes:
    return struct.pack("!IHBB16s16s", 0x60000000, len(body), nh, 64, str_to_ip(src),
                       str_to_ip(dst)) + body


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def tcp(sport: int, dport: int, payload: bytes, seq: int = 1000) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 0x50, 0x18, 65535, 0, 0) + payload


def sip(n: int) -> bytes:
    return (f"OPTIONS sip:probe@example.com SIP/2.0\r\nCall-ID: tunnel-{n}@example.com\r\n"
            f"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()


def gre(ptype: int, body: bytes, key: int | None = None, seq: int | None = None,
        checksum: bool = False, version: int = 0) -> bytes:
    flags = (0x8000 if checksum else 0) | (0x2000 if key is not None else 0) \
        | (0x1000 if seq is not None else 0) | version
    opt = b""
    if checksum:
        opt += b"\0\0\0\0"  # checksum + reserved1, filled in below
    if key is not None:
        opt += struct.pack("!I", key)
    if seq is not None:
        opt += struct.pack("!I", seq)
    pkt = struct.pack("!HH", flags, ptype) + opt + body
    if checksum:
        pkt = pkt[:4] + struct.pack("!H", inet_checksum(pkt)) + pkt[6:]
    return pkt


def erspan2(frame: bytes, session: int = 7, vlan: int = 100, index: int = 3) -> bytes:
    return struct.pack("!HHI", (1 << 12) | vlan, session, index) + frame


def erspan3(frame: bytes, subheader: bool, session: int = 9, vlan: int = 200, ft: int = 0) -> bytes:
    last = (1 << 15) | (ft << 10) | (5 << 4) | (1 << 1) | int(subheader)  # P, FT, HW ID, Gra
    hdr = struct.pack("!HHIHH", (2 << 12) | vlan, session, 0x01020304, 0xABCD, last)
    if subheader:
        hdr += struct.pack("!II", (7 << 26) | 42, 0x00000001)  # platform 7: source index
    return hdr + frame


def vxlan(frame: bytes, vni: int = 5001) -> bytes:
    return struct.pack("!II", 0x08000000, vni << 8) + frame


def _inner_v4(n: int, proto: str = "udp") -> bytes:
    l4 = udp(5060 + n, 5080, sip(n)) if proto == "udp" else tcp(5060, 40000 + n, sip(n))
    return ipv4(17 if proto == "udp" else 6, l4, src=f"10.1.{n}.1", dst=f"10.2.{n}.2", ip_id=n)


def _inner_v6(n: int) -> bytes:
    return ipv6(17, udp(5060, 5090 + n, sip(n)), src=f"2001:db8:a::{n}", dst=f"2001:db8:b::{n}")


def _outer_v4(proto: int, body: bytes) -> bytes:
    return eth(0x0800, ipv4(proto, body, src="192.0.2.10", dst="192.0.2.20", ip_id=0x7777))


# (name, frame, expected encap, protocol tshark must show in the stack)
def _synthetic() -> list[tuple[str, bytes, int, str]]:
    arp = eth(0x0806, bytes.fromhex("0001080006040001") + bytes(20), MAC2)
    nested_vxlan = _outer_v4(17, udp(51000, 4789, vxlan(eth(0x0800, _inner_v4(40), MAC2))))
    return [
        ("gre teb", _outer_v4(47, gre(0x6558, eth(0x0800, _inner_v4(1), MAC2))), ENCAP_GRE, "gre"),
        ("gre teb key+seq+checksum",
         _outer_v4(47, gre(0x6558, eth(0x0800, _inner_v4(2), MAC2), key=0xBEEF, seq=77,
                           checksum=True)), ENCAP_GRE, "gre"),
        ("gre ipv4 key", _outer_v4(47, gre(0x0800, _inner_v4(3), key=12)), ENCAP_GRE, "gre"),
        ("gre ipv6 seq", _outer_v4(47, gre(0x86DD, _inner_v6(4), seq=1)), ENCAP_GRE, "gre"),
        ("gre teb over ipv6 outer",
         eth(0x86DD, ipv6(47, gre(0x6558, eth(0x86DD, _inner_v6(5), MAC2)))), ENCAP_GRE, "gre"),
        ("gre teb inner vlan tcp",
         _outer_v4(47, gre(0x6558, eth(0x0800, _inner_v4(6, "tcp"), MAC2, vlan=30))), ENCAP_GRE,
         "gre"),
        ("gre teb inner arp", _outer_v4(47, gre(0x6558, arp)), 0, "arp"),
        ("erspan I", _outer_v4(47, gre(0x88BE, eth(0x0800, _inner_v4(7), MAC2))),
         ENCAP_GRE | ENCAP_ERSPAN, "erspan"),
        ("erspan II", _outer_v4(47, gre(0x88BE, erspan2(eth(0x0800, _inner_v4(8), MAC2)), seq=5)),
         ENCAP_GRE | ENCAP_ERSPAN, "erspan"),
        ("erspan II inner vlan ipv6",
         _outer_v4(47, gre(0x88BE, erspan2(eth(0x86DD, _inner_v6(9), MAC2, vlan=44)), seq=6)),
         ENCAP_GRE | ENCAP_ERSPAN, "erspan"),
        ("erspan III", _outer_v4(47, gre(0x22EB, erspan3(eth(0x0800, _inner_v4(10), MAC2), False),
                                         seq=1)), ENCAP_GRE | ENCAP_ERSPAN, "erspan"),
        ("erspan III subheader",
         _outer_v4(47, gre(0x22EB, erspan3(eth(0x0800, _inner_v4(11, "tcp"), MAC2), True), seq=2)),
         ENCAP_GRE | ENCAP_ERSPAN, "erspan"),
        ("erspan III subheader ipv6",
         _outer_v4(47, gre(0x22EB, erspan3(eth(0x86DD, _inner_v6(12), MAC2), True), seq=3)),
         ENCAP_GRE | ENCAP_ERSPAN, "erspan"),
        ("vxlan", _outer_v4(17, udp(49152, 4789, vxlan(eth(0x0800, _inner_v4(13), MAC2)))),
         ENCAP_VXLAN, "vxlan"),
        ("vxlan inner ipv6 outer vlan",
         eth(0x0800, ipv4(17, udp(40000, 4789, vxlan(eth(0x86DD, _inner_v6(14), MAC2)))), vlan=9),
         ENCAP_VXLAN, "vxlan"),
        ("vxlan over ipv6", eth(0x86DD, ipv6(17, udp(40001, 4789, vxlan(
            eth(0x0800, _inner_v4(15, "tcp"), MAC2))))), ENCAP_VXLAN, "vxlan"),
        ("ipip", _outer_v4(4, _inner_v4(16)), ENCAP_IPIP, "ip"),
        ("ipv6 in ipv4", _outer_v4(41, _inner_v6(17)), ENCAP_IPIP, "ipv6"),
        ("ipv4 in ipv6", eth(0x86DD, ipv6(4, _inner_v4(18, "tcp"))), ENCAP_IPIP, "ip"),
        ("ipv6 in ipv6", eth(0x86DD, ipv6(41, _inner_v6(19))), ENCAP_IPIP, "ipv6"),
        ("erspan II carrying vxlan",
         _outer_v4(47, gre(0x88BE, erspan2(eth(0x0800, nested_vxlan[14:], MAC2)), seq=9)),
         ENCAP_GRE | ENCAP_ERSPAN | ENCAP_VXLAN, "vxlan"),
        ("gre carrying ipip", _outer_v4(47, gre(0x0800, ipv4(4, _inner_v4(20)))),
         ENCAP_GRE | ENCAP_IPIP, "gre"),
        ("plain udp", eth(0x0800, _inner_v4(21)), 0, "udp"),
    ]


def test_synthetic_tunnels_match_tshark(tmp_path: Path) -> None:
    cases = _synthetic()
    path = tmp_path / "tunnels.pcap"
    with open(path, "wb") as f:
        write_pcap(f, [(1_700_000_000_000_000_000 + i * 1000, fr) for i, (_, fr, _, _) in
                       enumerate(cases)], LINKTYPE_ETHERNET)
    rows = table(path)
    frames = list(read_frames(path))
    assert len(rows) == len(frames) == len(cases)
    for (name, frame, encap, layer), (_, lt, data), row in zip(cases, frames, rows):
        assert data == frame
        assert layer in row["frame.protocols"][0].split(":"), (name, row["frame.protocols"])
        d = decode(lt, data)
        _check(d, data, row, name)
        assert d.encap == encap, name


# ---- what is not decapsulated, and malformed tunnels -------------------------

def test_not_decapsulated_gives_outer_packet() -> None:
    v4 = eth(0x0800, _inner_v4(1))

    def to_4789(payload: bytes) -> bytes:
        return _outer_v4(17, udp(5060, 4789, payload))

    cases = {
        # UDP to 4789 that is not VXLAN: I flag clear, reserved bits, too short, inner not IP,
        # inner IP truncated
        "sip to 4789": to_4789(sip(1)),
        "vxlan I clear": to_4789(b"\x00" + vxlan(v4)[1:]),
        "vxlan reserved flag": to_4789(b"\x0c" + vxlan(v4)[1:]),
        "vxlan short": to_4789(vxlan(b"")[:8] + b"abc"),
        "vxlan arp": to_4789(vxlan(eth(0x0806, bytes(28)))),
        "vxlan truncated inner": to_4789(vxlan(v4[:44])),
        "vxlan bad inner version": to_4789(vxlan(eth(0x0800, b"\x55" * 40))),
        # GRE that is not decapsulated
        "pptp gre v1": _outer_v4(47, gre(0x880B, b"\xff\x03\x00\x21" + _inner_v4(2), key=1,
                                         version=1)),
        "gre mpls": _outer_v4(47, gre(0x8847, b"\x00\x01\x01\x40" + _inner_v4(3))),
        "gre routing": _outer_v4(47, struct.pack("!HHHH", 0x4000, 0x0800, 0, 0) + _inner_v4(4)),
        "gre keepalive": _outer_v4(47, gre(0x0000, b"")),
        "erspan III other frame type": _outer_v4(47, gre(0x22EB, erspan3(_inner_v4(5), False, ft=3),
                                                          seq=1)),
    }
    for name, frame in cases.items():
        d = decode(LINKTYPE_ETHERNET, frame)
        assert (ip_to_str(d.src), d.encap) == ("192.0.2.10", 0), name
        assert d.l3_offset == 14, name
        if d.proto == 17:
            assert d.dport == 4789 and d.payload_offset == 42, name
        else:
            assert (d.proto, d.sport, d.dport, d.payload_offset) == (47, 0, 0, 34), name


def test_outer_fragment_is_not_decapsulated() -> None:
    body = gre(0x6558, eth(0x0800, _inner_v4(1), MAC2))
    ip = bytearray(ipv4(47, body))
    ip[6:8] = b"\x20\x00"  # first fragment (MF)
    d = decode(LINKTYPE_ETHERNET, eth(0x0800, bytes(ip)))
    assert (d.proto, d.encap, d.is_fragment, d.l3_offset) == (47, 0, True, 14)


def test_erspan_III_ip_frame_type() -> None:
    """ERSPAN III frame type 2: the mirrored packet without its Ethernet header."""
    for inner, ver in ((_inner_v4(3), 4), (_inner_v6(3), 6)):
        frame = _outer_v4(47, gre(0x22EB, erspan3(inner, True, ft=2), seq=1))
        d = decode(LINKTYPE_ETHERNET, frame)
        assert (d.ip_version, d.encap) == (ver, ENCAP_GRE | ENCAP_ERSPAN)
        assert d.l3_offset == 14 + 20 + 8 + 12 + 8  # Ethernet, IP, GRE+seq, ERSPAN III, subheader


def test_inner_packet_bounded_by_outer_payload() -> None:
    """Bytes after the outer IP packet (Ethernet padding, trailers) are not the inner packet's."""
    inner = _inner_v4(1)
    outer = bytearray(ipv4(4, inner))
    outer[2:4] = struct.pack("!H", 20 + len(inner) - 10)  # outer ends 10 bytes into the inner
    with pytest.raises(DecodeError):
        decode(LINKTYPE_ETHERNET, eth(0x0800, bytes(outer)))
    padded = eth(0x0800, ipv4(4, inner)) + b"\0" * 20
    d = decode(LINKTYPE_ETHERNET, padded)
    assert d.payload_offset + d.payload_len == len(padded) - 20


def _nest(depth: int) -> bytes:
    pkt = _inner_v4(1)
    for _ in range(depth):
        pkt = ipv4(4, pkt)
    return eth(0x0800, pkt)


def test_nesting_depth_is_bounded() -> None:
    d = decode(LINKTYPE_ETHERNET, _nest(MAX_TUNNELS))
    assert (ip_to_str(d.src), d.sport, d.encap) == ("10.1.1.1", 5061, ENCAP_IPIP)
    assert d.l3_offset == 14 + 20 * MAX_TUNNELS
    with pytest.raises(DecodeError, match="nested"):
        decode(LINKTYPE_ETHERNET, _nest(MAX_TUNNELS + 1))
    # VXLAN past the limit is only UDP to port 4789
    deep = _inner_v4(1)
    for _ in range(MAX_TUNNELS):
        deep = ipv4(4, deep)
    vx = ipv4(17, udp(1, 4789, vxlan(eth(0x0800, deep))))
    for _ in range(MAX_TUNNELS):
        vx = ipv4(4, vx)
    d = decode(LINKTYPE_ETHERNET, eth(0x0800, vx))
    assert (d.dport, d.encap) == (4789, ENCAP_IPIP)


def test_malformed_tunnels_raise_decode_error() -> None:
    v4 = eth(0x0800, _inner_v4(1), MAC2)
    teb = gre(0x6558, v4)
    bad = {
        "gre shorter than 4": _outer_v4(47, b"\x00\x00\x65"),
        "gre key missing": _outer_v4(47, struct.pack("!HH", 0x2000, 0x6558)),
        "gre checksum+key+seq cut": _outer_v4(47, struct.pack("!HHI", 0xB000, 0x6558, 0)),
        "gre version 2": _outer_v4(47, struct.pack("!HH", 0x0002, 0x6558) + teb[4:]),
        "gre version 7": _outer_v4(47, struct.pack("!HH", 0x0007, 0x0800) + _inner_v4(1)),
        "erspan II short": _outer_v4(47, gre(0x88BE, b"\x10\x00\x00", seq=1)),
        "erspan II version 2": _outer_v4(47, gre(0x88BE, b"\x20" + erspan2(v4)[1:], seq=1)),
        "erspan III short": _outer_v4(47, gre(0x22EB, erspan3(b"", False)[:10], seq=1)),
        "erspan III subheader cut": _outer_v4(47, gre(0x22EB, erspan3(b"", True)[:16], seq=1)),
        "erspan III version 1": _outer_v4(47, gre(0x22EB, b"\x10" + erspan3(v4, False)[1:], seq=1)),
        "teb short inner ethernet": _outer_v4(47, gre(0x6558, MAC2)),
        "teb truncated inner ip": _outer_v4(47, gre(0x6558, eth(0x0800, _inner_v4(1)[:30]))),
        "teb inner ip version": _outer_v4(47, gre(0x6558, eth(0x0800, b"\x65" + _inner_v4(1)[1:]))),
        "ipip inner ipv6 header": _outer_v4(4, _inner_v6(1)),
        "ipv6-in-ip short": _outer_v4(41, _inner_v6(1)[:30]),
        "ipip empty": _outer_v4(4, b""),
    }
    for name, frame in bad.items():
        with pytest.raises(DecodeError):
            decode(LINKTYPE_ETHERNET, frame)
            pytest.fail(name)


# ---- fuzzing tunnel-shaped input -------------------------------------------

FUZZ = settings(max_examples=400, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
_FRAMES = [fr for _, fr, _, _ in _synthetic()] + [_nest(MAX_TUNNELS), _nest(MAX_TUNNELS + 1)]


def _decode_checked(data: bytes) -> None:
    try:
        d = decode(LINKTYPE_ETHERNET, data)
    except DecodeError:
        return
    assert 0 <= d.l3_offset < d.payload_offset <= d.payload_offset + d.payload_len <= len(data)
    assert len(d.src) == len(d.dst) == (4 if d.ip_version == 4 else 16)
    assert 0 <= d.encap <= 15


@FUZZ
@given(st.sampled_from(_FRAMES), st.lists(st.tuples(st.integers(0, 3), st.integers(0, 10_000),
                                                     st.integers(0, 255)), max_size=6),
       st.integers(0, 2000))
def test_fuzz_mutated_tunnels(frame: bytes, ops: list[tuple[int, int, int]], cut: int) -> None:
    buf = bytearray(frame)
    for op, pos, val in ops:
        if not buf:
            break
        i = pos % len(buf)
        if op == 0:
            buf[i] = val
        elif op == 1:
            del buf[i:i + 1 + val % 32]
        elif op == 2:
            buf[i:i] = bytes([val]) * (1 + val % 8)
        else:
            buf[i] ^= 1 << (val % 8)
    _decode_checked(bytes(buf[:cut]) if cut < len(buf) else bytes(buf))


@FUZZ
@given(st.integers(0, 0xFFFF), st.sampled_from([0x6558, 0x0800, 0x86DD, 0x88BE, 0x22EB, 0x8847]),
       st.binary(max_size=120), st.sampled_from([4, 17, 41, 47]))
def test_fuzz_random_tunnel_headers(flags: int, ptype: int, rest: bytes, proto: int) -> None:
    if proto == 47:
        body = struct.pack("!HH", flags, ptype) + rest
    elif proto == 17:
        body = udp(1234, 4789, struct.pack("!H", flags) + rest)
    else:
        body = rest
    _decode_checked(_outer_v4(proto, body))
    _decode_checked(eth(0x86DD, ipv6(proto, body)))


# ---- sensor side: the kernel prefilter keeps tunnelled traffic ---------------

def test_default_bpf_compiles_and_keeps_gre_capture(tmp_path: Path) -> None:
    tcpdump = require_tool("tcpdump")
    subprocess.run([tcpdump, "-d", "-y", "EN10MB", DEFAULT_BPF], check=True, capture_output=True)
    src = capture(GRE_CAPTURE)
    out = tmp_path / "filtered.pcap"
    subprocess.run([tcpdump, "-r", str(src), "-w", str(out), DEFAULT_BPF], check=True,
                   capture_output=True)
    assert [d for _, _, d in read_frames(out)] == [d for _, _, d in read_frames(src)]


def test_default_bpf_keeps_synthetic_tunnels(tmp_path: Path) -> None:
    """Every synthetic tunnel frame, also behind an 802.1Q tag, passes; ICMP does not."""
    tcpdump = require_tool("tcpdump")
    frames = [fr for _, fr, _, _ in _synthetic()]
    # one 802.1Q tag is what the filter looks behind (QinQ is not)
    frames += [fr[:12] + b"\x81\x00\x00\x64" + fr[12:] for fr in frames if fr[12:14] != b"\x81\x00"]
    icmp = _outer_v4(1, b"\x08\x00\xf7\xff\x00\x00\x00\x00")
    src, out = tmp_path / "in.pcap", tmp_path / "out.pcap"
    with open(src, "wb") as f:
        write_pcap(f, [(i, fr) for i, fr in enumerate(frames + [icmp])], LINKTYPE_ETHERNET)
    subprocess.run([tcpdump, "-r", str(src), "-w", str(out), DEFAULT_BPF], check=True,
                   capture_output=True)
    assert [d for _, _, d in read_frames(out)] == frames

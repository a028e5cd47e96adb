"""Test-side builder of pcapng sections (test data, checked against tshark)."""
from __future__ import annotations

import struct


def block(bo: str, btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    length = len(body) + 12
    return struct.pack(bo + "II", btype, length) + body + struct.pack(bo + "I", length)


def option(bo: str, code: int, value: bytes) -> bytes:
    return struct.pack(bo + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def section(bo: str, interfaces: list[tuple[int, int | None, int | None]],
            packets: list[tuple[int, int, bytes]], spb: bytes | None = None) -> bytes:
    """SHB, a name-resolution block (to be skipped), IDBs (linktype, tsresol, tsoffset),
    EPBs (interface, timestamp units, data) and optionally a simple packet block."""
    out = [block(bo, 0x0A0D0D0A, struct.pack(bo + "IHHq", 0x1A2B3C4D, 1, 0, -1)),
           block(bo, 4, struct.pack(bo + "HH", 0, 0))]
    for linktype, tsresol, tsoffset in interfaces:
        opts = b""
        if tsresol is not None:
            opts += option(bo, 9, bytes([tsresol]))
        if tsoffset is not None:
            opts += option(bo, 14, struct.pack(bo + "q", tsoffset))
        if opts:
            opts += option(bo, 0, b"")
        out.append(block(bo, 1, struct.pack(bo + "HHI", linktype, 0, 262144) + opts))
    for iface, units, data in packets:
        out.append(block(bo, 6, struct.pack(bo + "IIIII", iface, units >> 32, units & 0xFFFFFFFF,
                                            len(data), len(data)) + data))
    if spb is not None:
        out.append(block(bo, 3, struct.pack(bo + "I", len(spb)) + spb))
    return b"".join(out)


# ---- classic pcap and frames built by hand (independent of protocols/) --------------

def read_classic_pcap(path) -> tuple[int, list[tuple[int, bytes]]]:
    """(linktype, [(ts_ns, frame)]) of a classic pcap file (µs or ns magic, either byte order)."""
    with open(path, "rb") as f:
        raw = f.read()
    magic = raw[:4]
    for bo in ("<", ">"):
        (m,) = struct.unpack(bo + "I", magic)
        if m in (0xA1B2C3D4, 0xA1B23C4D):
            break
    else:
        raise ValueError(f"{path}: not a classic pcap file")
    scale = 1 if m == 0xA1B23C4D else 1000
    linktype = struct.unpack(bo + "I", raw[20:24])[0] & 0x0FFFFFFF
    frames, off = [], 24
    while off + 16 <= len(raw):
        sec, frac, incl, _orig = struct.unpack(bo + "IIII", raw[off:off + 16])
        off += 16
        frames.append((sec * 1_000_000_000 + frac * scale, raw[off:off + incl]))
        off += incl
    return linktype, frames


def write_classic_pcap(path, frames, linktype: int = 1) -> None:
    """Little-endian classic pcap with the nanosecond magic."""
    out = [struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, linktype)]
    for ts, data in frames:
        sec, ns = divmod(ts, 1_000_000_000)
        out.append(struct.pack("<IIII", sec, ns, len(data), len(data)) + data)
    with open(path, "wb") as f:
        f.write(b"".join(out))


def inet_checksum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4_with_checksum(packet: bytes) -> bytes:
    """The IPv4 packet with its header checksum computed again."""
    ihl = (packet[0] & 0x0F) * 4
    hdr = packet[:10] + b"\0\0" + packet[12:ihl]
    return hdr[:10] + struct.pack("!H", inet_checksum(hdr)) + packet[12:]


def ipv4(proto: int, body: bytes, src: bytes, dst: bytes, ip_id: int = 0, ttl: int = 64,
         flags_frag: int = 0x4000) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), ip_id, flags_frag, ttl, proto, 0,
                      src, dst)
    return ipv4_with_checksum(hdr + body)


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def ethernet(ethertype: int, body: bytes, dst_mac: bytes = b"\x02\0\0\0\0\x0a",
             src_mac: bytes = b"\x02\0\0\0\0\x0b") -> bytes:
    return dst_mac + src_mac + struct.pack("!H", ethertype) + body


def vlan_tagged(frame: bytes, vid: int, tpid: int = 0x8100) -> bytes:
    """An Ethernet frame with one more tag in front of its (possibly tagged) type:
    tagging a 802.1Q frame again with tpid 0x88A8 gives QinQ."""
    return frame[:12] + struct.pack("!HH", tpid, vid) + frame[12:]


def gre(ptype: int, body: bytes, seq: int | None = None) -> bytes:
    flags = 0x1000 if seq is not None else 0
    return struct.pack("!HH", flags, ptype) + (struct.pack("!I", seq) if seq is not None else b"") \
        + body


def erspan2(frame: bytes, session: int = 7, vlan: int = 100, index: int = 3) -> bytes:
    """ERSPAN type II header (version 1) + the mirrored Ethernet frame (GRE type 0x88BE)."""
    return struct.pack("!HHI", (1 << 12) | vlan, session, index) + frame


def erspan3(frame: bytes, session: int = 9, vlan: int = 200, timestamp: int = 0) -> bytes:
    """ERSPAN type III header (version 2, no platform subheader, frame type 0 = Ethernet)
    + the mirrored frame (GRE type 0x22EB)."""
    last = (5 << 4) | (1 << 1)        # hardware ID 5, timestamp granularity 1 (100 µs)
    return struct.pack("!HHIHH", (2 << 12) | vlan, session, timestamp & 0xFFFFFFFF, 0,
                       last) + frame


def vxlan(frame: bytes, vni: int = 5001) -> bytes:
    """VXLAN header (I flag) + the inner Ethernet frame (UDP port 4789)."""
    return struct.pack("!II", 0x08000000, vni << 8) + frame


def ipv4_fragments(frame: bytes, first_payload: int) -> list[bytes]:
    """An Ethernet/IPv4 frame (IHL 5, no padding) cut in two IP fragments: the first
    carries `first_payload` bytes of the IP payload (a multiple of 8), the second the rest.
    DF is cleared, the IP ID kept, both checksums computed."""
    assert first_payload % 8 == 0 and frame[12:14] == b"\x08\x00" and frame[14] == 0x45
    ip = frame[14:]
    total = struct.unpack("!H", ip[2:4])[0]
    hdr, payload = ip[:20], ip[20:total]
    out = []
    for off, chunk, more in ((0, payload[:first_payload], True),
                             (first_payload, payload[first_payload:], False)):
        h = bytearray(hdr)
        h[2:4] = struct.pack("!H", 20 + len(chunk))
        h[6:8] = struct.pack("!H", (0x2000 if more else 0) | (off // 8))
        out.append(frame[:14] + ipv4_with_checksum(bytes(h) + chunk))
    return out

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

"""Reading pcap/pcapng capture files and writing classic nanosecond pcap.

`read_frames(path)` yields `(ts_ns, linktype, data)` with exact integer
nanosecond timestamps. On a truncated or corrupt file every good frame before
the bad spot is yielded first, then `CaptureFileError` names the byte offset
of the bad record (or block).
"""
from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterable, Iterator, Sequence
from typing import BinaryIO

__all__ = [
    "LINKTYPE_NULL", "LINKTYPE_ETHERNET", "LINKTYPE_RAW", "LINKTYPE_LOOP",
    "LINKTYPE_LINUX_SLL", "LINKTYPE_IPV4", "LINKTYPE_IPV6", "LINKTYPE_LINUX_SLL2",
    "MAX_CAPLEN", "CaptureFileError", "read_frames", "write_pcap", "pcap_bytes", "pcap_bytes_of",
]

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

MAX_CAPLEN = 262144  # 256 KiB: larger captured lengths mean a corrupt file
_CHUNK = 1 << 20  # buffered read size

_NS = 1_000_000_000

# classic pcap
_MAGIC_NS = 0xA1B23C4D
_MAX_TS_NS = (1 << 32) * 1_000_000_000   # a record's seconds field is 32 bits
_PCAP_HDR = {"<": struct.Struct("<IHHiIII"), ">": struct.Struct(">IHHiIII")}
_REC_HDR = {"<": struct.Struct("<IIII"), ">": struct.Struct(">IIII")}

# pcapng
_IDB = 0x00000001
_OPB = 0x00000002  # obsolete Packet Block
_SPB = 0x00000003
_EPB = 0x00000006
_BLK_HDR = {"<": struct.Struct("<II"), ">": struct.Struct(">II")}
_U32 = {"<": struct.Struct("<I"), ">": struct.Struct(">I")}
_IDB_BODY = {"<": struct.Struct("<HHI"), ">": struct.Struct(">HHI")}
_EPB_BODY = {"<": struct.Struct("<IIIII"), ">": struct.Struct(">IIIII")}
_EPB_FULL = {"<": struct.Struct("<IIIIIII"), ">": struct.Struct(">IIIIIII")}  # header + body
_OPB_BODY = {"<": struct.Struct("<HHIIII"), ">": struct.Struct(">HHIIII")}
_OPT_HDR = {"<": struct.Struct("<HH"), ">": struct.Struct(">HH")}
_I64 = {"<": struct.Struct("<q"), ">": struct.Struct(">q")}
_OPT_TSRESOL = 9
_OPT_TSOFFSET = 14
_MAX_BLOCK = 16 * 1024 * 1024  # a block this large means a corrupt file


class CaptureFileError(Exception):
    """A capture file is truncated, corrupt or not a capture file."""

    def __init__(self, path: str | os.PathLike[str], offset: int, reason: str) -> None:
        self.path = os.fspath(path)
        self.offset = offset
        self.reason = reason
        super().__init__(f"{self.path}: {reason} at byte offset {offset}")

    def __reduce__(self):  # keep pickling (multiprocessing) working
        return (type(self), (self.path, self.offset, self.reason))


class _Reader:
    """Chunked reader: `buf[pos:]` holds unread bytes, `base` is buf's file offset."""

    __slots__ = ("f", "buf", "pos", "base", "eof")

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.buf = b""
        self.pos = 0
        self.base = 0
        self.eof = False

    def fill(self, need: int) -> bool:
        """Make at least `need` unread bytes available; False if the file ends first."""
        avail = len(self.buf) - self.pos
        if avail >= need:
            return True
        if self.eof:
            return False
        parts = [self.buf[self.pos:]]
        self.base += self.pos
        self.pos = 0
        while avail < need:
            chunk = self.f.read(max(_CHUNK, need - avail))
            if not chunk:
                self.eof = True
                break
            parts.append(chunk)
            avail += len(chunk)
        self.buf = b"".join(parts)
        return avail >= need


def read_frames(path: str | os.PathLike[str]) -> Iterator[tuple[int, int, bytes]]:
    """Yield `(ts_ns, linktype, data)` for every frame of a pcap or pcapng file."""
    with open(path, "rb", buffering=0) as f:
        yield from read_frames_from(f, path)


def read_frames_from(fileobj: BinaryIO, name: str | os.PathLike[str] = "<stream>"
                     ) -> Iterator[tuple[int, int, bytes]]:
    """`read_frames` of an open binary file (a BytesIO of a recording's call.pcap);
    `name` is what CaptureFileError calls it."""
    r = _Reader(fileobj)
    if not r.fill(4):
        raise CaptureFileError(name, 0, "empty file" if len(r.buf) == 0 else "file too short")
    magic = r.buf[0:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        yield from _read_pcap(r, name, "<")
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        yield from _read_pcap(r, name, ">")
    elif magic == b"\x0a\x0d\x0d\x0a":
        yield from _read_pcapng(r, name)
    else:
        raise CaptureFileError(name, 0, f"unknown file magic {magic.hex()}")


def _read_pcap(r: _Reader, path: str | os.PathLike[str], bo: str) -> Iterator[tuple[int, int, bytes]]:
    hdr = _PCAP_HDR[bo]
    if not r.fill(hdr.size):
        raise CaptureFileError(path, 0, "truncated pcap file header")
    magic, _vmaj, _vmin, _zone, _sigfigs, _snaplen, network = hdr.unpack_from(r.buf, 0)
    linktype = network & 0x0FFFFFFF  # upper bits may carry FCS length
    frac_mul = 1 if magic == _MAGIC_NS else 1000
    r.pos = hdr.size
    unpack_from = _REC_HDR[bo].unpack_from
    ns = _NS
    maxcap = MAX_CAPLEN
    buf = r.buf
    pos = r.pos
    n = len(buf)
    while True:
        if n - pos < 16:
            r.pos = pos
            if not r.fill(16):
                if len(r.buf) == r.pos:
                    return
                raise CaptureFileError(path, r.base + r.pos, "truncated record header")
            buf, pos, n = r.buf, r.pos, len(r.buf)
        sec, frac, incl, _orig = unpack_from(buf, pos)
        if incl > maxcap:
            raise CaptureFileError(path, r.base + pos, f"captured length {incl} exceeds {maxcap}")
        start = pos + 16
        end = start + incl
        if end > n:
            r.pos = pos
            if not r.fill(16 + incl):
                raise CaptureFileError(
                    path, r.base + r.pos, f"truncated record: captured length {incl}, "
                    f"{len(r.buf) - r.pos - 16} bytes left")
            buf, pos, n = r.buf, r.pos, len(r.buf)
            start = pos + 16
            end = start + incl
        yield (sec * ns + frac * frac_mul, linktype, buf[start:end])
        pos = end


def _tsresol_to_ns(value: int) -> tuple[int, int]:
    """(multiplier, divisor) converting pcapng timestamp units to ns exactly (floor)."""
    if value & 0x80:
        return _NS, 1 << (value & 0x7F)
    exp = value
    if exp <= 9:
        return 10 ** (9 - exp), 1
    return 1, 10 ** (exp - 9)


def _parse_idb(body: bytes, bo: str) -> tuple[int, int, int, int] | None:
    """(linktype, mul, div, offset_ns) of an IDB body, None if malformed."""
    if len(body) < 8:
        return None
    linktype, _res, _snaplen = _IDB_BODY[bo].unpack_from(body, 0)
    mul, div, offset_s = 1000, 1, 0
    opt_hdr = _OPT_HDR[bo]
    p = 8
    while p + 4 <= len(body):
        code, length = opt_hdr.unpack_from(body, p)
        p += 4
        if code == 0:
            break
        if p + length > len(body):
            return None
        if code == _OPT_TSRESOL and length >= 1:
            mul, div = _tsresol_to_ns(body[p])
        elif code == _OPT_TSOFFSET and length >= 8:
            offset_s = _I64[bo].unpack_from(body, p)[0]
        p += (length + 3) & ~3
    return linktype, mul, div, offset_s * _NS


def _read_pcapng(r: _Reader, path: str | os.PathLike[str]) -> Iterator[tuple[int, int, bytes]]:
    bo = "<"
    ifaces: list[tuple[int, int, int, int]] = []
    last_ts = 0
    in_section = False
    blk_unpack = _BLK_HDR[bo].unpack_from
    epb_unpack = _EPB_BODY[bo].unpack_from
    full_unpack = _EPB_FULL[bo].unpack_from
    u32_unpack = _U32[bo].unpack_from
    maxcap = MAX_CAPLEN
    buf, pos, n = r.buf, r.pos, len(r.buf)
    while True:
        # fast path: an Enhanced Packet Block wholly in the buffer, all fields sane
        if n - pos >= 32 and in_section:
            btype, blen, iface, hi, lo, incl, _orig = full_unpack(buf, pos)
            end = pos + blen
            if (btype == 6 and end <= n and incl + 32 <= blen and not blen & 3
                    and incl <= maxcap and iface < len(ifaces)
                    and u32_unpack(buf, end - 4)[0] == blen):
                linktype, mul, div, off_ns = ifaces[iface]
                last_ts = ((hi << 32) | lo) * mul // div + off_ns
                yield (last_ts, linktype, buf[pos + 28:pos + 28 + incl])
                pos = end
                continue
        # slow path: any block, with refills and precise errors
        r.pos = pos
        if not r.fill(12):
            if len(r.buf) == r.pos:
                return
            raise CaptureFileError(path, r.base + r.pos, "truncated block header")
        buf, pos = r.buf, r.pos
        offset = r.base + pos
        if buf[pos:pos + 4] == b"\x0a\x0d\x0d\x0a":
            bom = buf[pos + 8:pos + 12]
            if bom == b"\x4d\x3c\x2b\x1a":
                bo = "<"
            elif bom == b"\x1a\x2b\x3c\x4d":
                bo = ">"
            else:
                raise CaptureFileError(path, offset, f"bad section byte-order magic {bom.hex()}")
            blk_unpack = _BLK_HDR[bo].unpack_from
            epb_unpack = _EPB_BODY[bo].unpack_from
            full_unpack = _EPB_FULL[bo].unpack_from
            u32_unpack = _U32[bo].unpack_from
            ifaces = []
            in_section = True
        elif not in_section:
            raise CaptureFileError(path, offset, "block before section header")
        btype, blen = blk_unpack(buf, pos)
        if blen < 12 or blen & 3 or blen > _MAX_BLOCK:
            raise CaptureFileError(path, offset, f"bad block length {blen}")
        if not r.fill(blen):
            raise CaptureFileError(
                path, offset, f"truncated block: length {blen}, {len(r.buf) - r.pos} bytes left")
        buf, pos = r.buf, r.pos
        n = len(buf)
        if u32_unpack(buf, pos + blen - 4)[0] != blen:
            raise CaptureFileError(path, offset, "block trailing length does not match")
        body_start = pos + 8
        body_end = pos + blen - 4
        pos += blen
        r.pos = pos
        if btype == _EPB or btype == _OPB:
            if body_end - body_start < 20:
                raise CaptureFileError(path, offset, "packet block too short")
            if btype == _EPB:
                iface, hi, lo, incl, _orig = epb_unpack(buf, body_start)
            else:
                iface, _drops, hi, lo, incl, _orig = _OPB_BODY[bo].unpack_from(buf, body_start)
            data_start = body_start + 20
            if incl > maxcap:
                raise CaptureFileError(path, offset, f"captured length {incl} exceeds {maxcap}")
            if data_start + incl > body_end:
                raise CaptureFileError(path, offset, f"captured length {incl} exceeds block")
            if iface >= len(ifaces):
                raise CaptureFileError(path, offset, f"unknown interface id {iface}")
            linktype, mul, div, off_ns = ifaces[iface]
            ts = ((hi << 32) | lo) * mul // div + off_ns
            last_ts = ts
            yield (ts, linktype, buf[data_start:data_start + incl])
        elif btype == _SPB:
            if body_end - body_start < 4:
                raise CaptureFileError(path, offset, "simple packet block too short")
            if not ifaces:
                raise CaptureFileError(path, offset, "simple packet block without interface")
            orig = u32_unpack(buf, body_start)[0]
            incl = min(orig, body_end - body_start - 4)
            if incl > maxcap:
                raise CaptureFileError(path, offset, f"captured length {incl} exceeds {maxcap}")
            # an SPB carries no timestamp: reuse the previous frame's time
            yield (last_ts, ifaces[0][0], buf[body_start + 4:body_start + 4 + incl])
        elif btype == _IDB:
            idb = _parse_idb(buf[body_start:body_end], bo)
            if idb is None:
                raise CaptureFileError(path, offset, "malformed interface description block")
            ifaces.append(idb)
        # the SHB body needs nothing more; other block types are skipped


_W_FILE_HDR = struct.Struct("<IHHiIII")
_W_REC_HDR = struct.Struct("<IIII")


def write_pcap(fileobj: BinaryIO, frames: Iterable[tuple[int, bytes]], linktype: int,
               snaplen: int = MAX_CAPLEN) -> int:
    """Write classic little-endian pcap with the nanosecond magic; returns frames written.

    Frames longer than `snaplen` are cut to it (the original length is kept).
    """
    write = fileobj.write
    write(_W_FILE_HDR.pack(_MAGIC_NS, 2, 4, 0, 0, snaplen, linktype))
    pack = _W_REC_HDR.pack
    count = 0
    for ts_ns, data in frames:
        if ts_ns < 0:
            raise ValueError(f"negative timestamp {ts_ns}")
        sec, frac = divmod(ts_ns, _NS)
        orig = len(data)
        if orig > snaplen:
            data = data[:snaplen]
        write(pack(sec, frac, len(data), orig))
        write(data)
        count += 1
    return count


def pcap_bytes(frames: Iterable[tuple[int, bytes]], linktype: int) -> bytes:
    """The bytes of a classic nanosecond pcap file holding `frames`."""
    out = io.BytesIO()
    write_pcap(out, frames, linktype)
    return out.getvalue()


def pcap_bytes_of(timestamps: Sequence[int], frames: Sequence[bytes], linktype: int,
                  snaplen: int = MAX_CAPLEN, lengths: Sequence[int] | None = None) -> bytes:
    """The same bytes as `pcap_bytes(zip(timestamps, frames), linktype)`, built a
    call at a time: the record headers in one numpy array, handed to one join
    beside the frames (no per-frame pack or write; a call's call.pcap).
    `timestamps` and `lengths` (the frames' lengths, when known) may be arrays."""
    import numpy as np    # here: the sensor reads captures through this module without numpy

    n = len(frames)
    if n != len(timestamps):
        raise ValueError(f"{len(timestamps)} timestamps for {n} frames")
    ts = np.asarray(timestamps, dtype=np.int64) if isinstance(timestamps, np.ndarray) \
        else np.fromiter(timestamps, dtype=np.int64, count=n)
    lens = np.asarray(lengths, dtype=np.int64) if lengths is not None \
        else np.fromiter(map(len, frames), dtype=np.int64, count=n)
    if n and (int(ts.min()) < 0 or int(ts.max()) >= _MAX_TS_NS or int(lens.max()) > snaplen):
        out = io.BytesIO()                  # write_pcap raises or cuts
        write_pcap(out, zip(ts.tolist(), frames), linktype, snaplen)
        return out.getvalue()
    hdr = np.empty((n, 4), dtype="<u4")
    hdr[:, 0] = ts // _NS
    hdr[:, 1] = ts % _NS
    hdr[:, 2] = lens
    hdr[:, 3] = lens
    parts: list[bytes] = [b""] * (2 * n + 1)
    parts[0] = _W_FILE_HDR.pack(_MAGIC_NS, 2, 4, 0, 0, snaplen, linktype)
    parts[1::2] = hdr.view("V16").ravel().tolist()   # one 16-byte bytes per record
    parts[2::2] = frames
    return b"".join(parts)

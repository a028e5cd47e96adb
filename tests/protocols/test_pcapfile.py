"""read_frames / write_pcap against tshark (the independent reader)."""
from __future__ import annotations

import io
import json
import struct
import subprocess
from pathlib import Path

import pytest

from protocols.pcapfile import (
    LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_RAW, CaptureFileError, pcap_bytes,
    pcap_bytes_of, read_frames, write_pcap,
)
from tests.conftest import capture, require_tool
from tests.protocols._build import section
from tests.protocols._tshark import epoch_ns, first, table

SAMPLES = [
    ("SIP_DTMF2.cap", LINKTYPE_ETHERNET),
    ("sip_ipv4_tcp.pcap", LINKTYPE_ETHERNET),
    ("erspan_sip_ipv4_udp.pcapng", LINKTYPE_ETHERNET),
    ("ipv6frag.pcap", LINKTYPE_LINUX_SLL),
    ("MagicJack-_short_call.pcap", LINKTYPE_ETHERNET),
]

# A tiny raw-IPv4 UDP datagram used in synthetic files.
RAW_UDP = bytes.fromhex("4500001c00010000401100000a0000010a00000213c413c400080000")


def _check_against_tshark(path: Path, frames: list[tuple[int, int, bytes]]) -> None:
    rows = table(path)
    assert len(frames) == len(rows)
    for (ts, _lt, data), row in zip(frames, rows):
        assert ts == epoch_ns(first(row, "frame.time_epoch")), row["frame.number"]
        assert len(data) == int(first(row, "frame.cap_len"))


@pytest.mark.parametrize("name,linktype", SAMPLES)
def test_frames_match_tshark(name: str, linktype: int) -> None:
    path = capture(name)
    frames = list(read_frames(path))
    _check_against_tshark(path, frames)
    assert {lt for _, lt, _ in frames} == {linktype}
    assert all(isinstance(ts, int) for ts, _, _ in frames)


@pytest.mark.parametrize("name", ["ipv6frag.pcap", "erspan_sip_ipv4_udp.pcapng"])
def test_frame_bytes_match_tshark(name: str) -> None:
    path = capture(name)
    proc = subprocess.run([require_tool("tshark"), "-n", "-r", str(path), "-T", "json", "-x",
                           "-j", "frame"], capture_output=True, check=True, timeout=60)
    expected = [bytes.fromhex(pkt["_source"]["layers"]["frame_raw"][0])
                for pkt in json.loads(proc.stdout)]
    assert [data for _, _, data in read_frames(path)] == expected


def _record_offsets(path: Path) -> list[int]:
    """Byte offset of each classic-pcap record, from tshark's captured lengths."""
    offsets, off = [], 24
    for row in table(path):
        offsets.append(off)
        off += 16 + int(first(row, "frame.cap_len"))
    return offsets


@pytest.mark.parametrize("cut", ["mid_data", "mid_header"])
def test_truncated_pcap_yields_good_frames_then_error(tmp_path: Path, cut: str) -> None:
    src = capture("SIP_DTMF2.cap")
    offsets = _record_offsets(src)
    k = len(offsets) // 2
    rows = table(src)
    cut_at = offsets[k] + (16 + int(first(rows[k], "frame.cap_len")) // 2 if cut == "mid_data" else 7)
    bad = tmp_path / "cut.pcap"
    bad.write_bytes(src.read_bytes()[:cut_at])
    got = []
    with pytest.raises(CaptureFileError) as info:
        for frame in read_frames(bad):
            got.append(frame)
    assert len(got) == k
    assert [ts for ts, _, _ in got] == [epoch_ns(first(r, "frame.time_epoch")) for r in rows[:k]]
    assert info.value.offset == offsets[k]
    assert info.value.path == str(bad)
    assert str(info.value).startswith(f"{bad}: ")
    assert str(info.value).endswith(f" at byte offset {offsets[k]}")


def test_huge_caplen_is_corrupt(tmp_path: Path) -> None:
    src = capture("sip_ipv4_tcp.pcap")
    offsets = _record_offsets(src)
    data = bytearray(src.read_bytes())
    struct.pack_into("<I", data, offsets[3] + 8, 300_000)  # caplen of record 3
    bad = tmp_path / "corrupt.pcap"
    bad.write_bytes(bytes(data))
    got = []
    with pytest.raises(CaptureFileError) as info:
        got.extend(read_frames(bad))
    assert len(got) == 3
    assert info.value.offset == offsets[3]


def test_truncated_pcapng_block(tmp_path: Path) -> None:
    src = capture("erspan_sip_ipv4_udp.pcapng")
    raw = src.read_bytes()
    last_len = struct.unpack("<I", raw[-4:])[0]  # a block ends with its own length
    last_off = len(raw) - last_len
    n_frames = len(table(src))
    # the last block is not a packet (interface statistics): cut inside it
    bad = tmp_path / "cut.pcapng"
    bad.write_bytes(raw[:last_off + last_len // 2])
    got = []
    with pytest.raises(CaptureFileError) as info:
        got.extend(read_frames(bad))
    assert len(got) == n_frames
    assert info.value.offset == last_off


def test_pcapng_bad_block_length(tmp_path: Path) -> None:
    src = capture("erspan_sip_ipv4_udp.pcapng")
    raw = bytearray(src.read_bytes())
    shb_len = struct.unpack_from("<I", raw, 4)[0]
    idb_len = struct.unpack_from("<I", raw, shb_len + 4)[0]
    first_pkt = shb_len + idb_len
    second_pkt = first_pkt + struct.unpack_from("<I", raw, first_pkt + 4)[0]
    struct.pack_into("<I", raw, second_pkt + 4, 13)  # not a multiple of 4
    bad = tmp_path / "bad.pcapng"
    bad.write_bytes(bytes(raw))
    got = []
    with pytest.raises(CaptureFileError) as info:
        got.extend(read_frames(bad))
    assert len(got) == 1
    assert info.value.offset == second_pkt


@pytest.mark.parametrize("content,reason", [
    (b"", "empty"),
    (b"\xd4\xc3", "short"),
    (b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n" * 4, "magic"),
    (b"\xd4\xc3\xb2\xa1\x02\x00\x04\x00", "header"),
])
def test_not_a_capture(tmp_path: Path, content: bytes, reason: str) -> None:
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(content)
    with pytest.raises(CaptureFileError) as info:
        list(read_frames(bad))
    assert info.value.offset == 0
    assert reason in info.value.reason


TS_SAMPLES = [0, 1, 999_999_999, 1_700_000_000_123_456_789, 1_105_725_482_965_944_000,
              4_294_967_295_999_999_999]


def test_write_pcap_nanosecond_roundtrip_with_tshark(tmp_path: Path) -> None:
    out = tmp_path / "ns.pcap"
    frames = [(ts, RAW_UDP) for ts in TS_SAMPLES]
    with out.open("wb") as f:
        assert write_pcap(f, frames, LINKTYPE_RAW) == len(frames)
    assert out.read_bytes()[:4] == bytes.fromhex("4d3cb2a1")
    rows = table(out)
    assert [epoch_ns(first(r, "frame.time_epoch")) for r in rows] == TS_SAMPLES
    assert [first(r, "ip.src") for r in rows] == ["10.0.0.1"] * len(frames)
    assert list(read_frames(out)) == [(ts, LINKTYPE_RAW, RAW_UDP) for ts in TS_SAMPLES]


def test_pcap_bytes_and_snaplen() -> None:
    blob = pcap_bytes([(5, b"abc")], LINKTYPE_ETHERNET)
    assert len(blob) == 24 + 16 + 3
    buf = io.BytesIO()
    write_pcap(buf, [(5, b"x" * 100)], LINKTYPE_ETHERNET, snaplen=10)
    caplen, origlen = struct.unpack_from("<II", buf.getvalue(), 24 + 8)
    assert (caplen, origlen) == (10, 100)


def test_pcap_bytes_of_is_read_back_by_tshark(tmp_path: Path) -> None:
    """The call-at-a-time writer (numpy record headers, one join) gives a file tshark
    reads back frame for frame, and the very bytes of the frame-by-frame writer."""
    frames = [(ts, RAW_UDP + bytes(i % 7)) for i, ts in enumerate(TS_SAMPLES)]
    ts, data = [f[0] for f in frames], [f[1] for f in frames]
    blob = pcap_bytes_of(ts, data, LINKTYPE_RAW)
    assert blob == pcap_bytes(frames, LINKTYPE_RAW)
    out = tmp_path / "of.pcap"
    out.write_bytes(blob)
    rows = table(out)
    assert [epoch_ns(first(r, "frame.time_epoch")) for r in rows] == TS_SAMPLES
    assert [int(first(r, "frame.cap_len")) for r in rows] == [len(d) for d in data]
    assert pcap_bytes_of([], [], LINKTYPE_RAW) == pcap_bytes([], LINKTYPE_RAW)


def test_pcap_bytes_of_cuts_and_refuses_like_write_pcap() -> None:
    big = [(5, b"x" * 100), (6, b"y" * 3)]
    assert pcap_bytes_of([5, 6], [big[0][1], big[1][1]], LINKTYPE_ETHERNET, snaplen=10) == \
        _written(big, snaplen=10)
    with pytest.raises(ValueError, match="negative timestamp"):
        pcap_bytes_of([5, -1], [b"a", b"b"], LINKTYPE_ETHERNET)
    with pytest.raises(ValueError):
        pcap_bytes_of([5], [b"a", b"b"], LINKTYPE_ETHERNET)


def _written(frames: list[tuple[int, bytes]], snaplen: int) -> bytes:
    buf = io.BytesIO()
    write_pcap(buf, frames, LINKTYPE_ETHERNET, snaplen=snaplen)
    return buf.getvalue()


def _big_endian_us_pcap(stamps_us: list[tuple[int, int]]) -> bytes:
    out = struct.pack(">IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, LINKTYPE_RAW)
    for sec, usec in stamps_us:
        out += struct.pack(">IIII", sec, usec, len(RAW_UDP), len(RAW_UDP)) + RAW_UDP
    return out


def test_big_endian_microsecond_pcap(tmp_path: Path) -> None:
    path = tmp_path / "be.pcap"
    path.write_bytes(_big_endian_us_pcap([(1_600_000_000, 1), (1_600_000_001, 999_999)]))
    frames = list(read_frames(path))
    _check_against_tshark(path, frames)
    assert all(d == RAW_UDP for _, _, d in frames)


RESOLUTIONS = [(None, None), (9, None), (0x94, 100), (0x8A, None), (3, -5)]
UNITS = [1_700_000_000 * 1_000_000 + 123_457, 1_700_000_000 * 1_048_576 + 777_777,
         (1 << 63) // 1_000_000_000, 1_000_000_000]  # (tshark misprints negative times)


def test_pcapng_resolutions_and_byte_orders_against_tshark(tmp_path: Path) -> None:
    # one multi-section file: each section one byte order and if_tsresol/if_tsoffset
    blob, no_time = b"", set()
    for bo in ("<", ">"):
        for tsresol, tsoffset in RESOLUTIONS:
            blob += section(bo, [(LINKTYPE_RAW, tsresol, tsoffset)],
                            [(0, u, RAW_UDP) for u in UNITS], spb=RAW_UDP)
            no_time.add(len(no_time) * (len(UNITS) + 1) + len(UNITS))
    path = tmp_path / "t.pcapng"
    path.write_bytes(blob)
    frames = list(read_frames(path))
    rows = table(path)
    assert len(frames) == len(rows) == 10 * (len(UNITS) + 1)
    for i, ((ts, lt, data), row) in enumerate(zip(frames, rows)):
        assert (lt, data) == (LINKTYPE_RAW, RAW_UDP)
        if i in no_time:  # a simple packet block has no time: we reuse the previous one
            assert ts == frames[i - 1][0]
        else:
            assert ts == epoch_ns(first(row, "frame.time_epoch")), i


def test_pcapng_picoseconds(tmp_path: Path) -> None:
    # tshark 4.0 overflows on picosecond units, so the expectation is plain arithmetic
    units = [1_782_579_200_777_777, 999]
    path = tmp_path / "ps.pcapng"
    path.write_bytes(section("<", [(LINKTYPE_RAW, 12, 2)], [(0, u, RAW_UDP) for u in units]))
    assert [ts for ts, _, _ in read_frames(path)] == [1_782_579_200_777 + 2_000_000_000,
                                                       2_000_000_000]


def test_pcapng_multiple_sections(tmp_path: Path) -> None:
    src = capture("erspan_sip_ipv4_udp.pcapng")
    path = tmp_path / "multi.pcapng"
    path.write_bytes(
        section(">", [(LINKTYPE_RAW, 0x94, 7)], [(0, 3 << 20, RAW_UDP), (0, 9 << 20, RAW_UDP)],
                spb=RAW_UDP)
        + src.read_bytes()
        + section("<", [(LINKTYPE_RAW, 9, None)], [(0, 10 ** 18, RAW_UDP)], spb=RAW_UDP))
    frames = list(read_frames(path))
    rows = table(path)
    assert len(frames) == len(rows) == 3 + 140 + 2
    spb = {2, 144}  # simple packet blocks carry no time
    for i, ((ts, _, data), row) in enumerate(zip(frames, rows)):
        assert len(data) == int(first(row, "frame.cap_len"))
        if i not in spb:
            assert ts == epoch_ns(first(row, "frame.time_epoch")), i

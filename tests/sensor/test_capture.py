"""FileReplay: the same frames and timestamps as protocols.pcapfile, in batches."""
from __future__ import annotations

import struct
from pathlib import Path

import pytest

from protocols.pcapfile import CaptureFileError, read_frames, write_pcap
from sensor.capture import CaptureError, CaptureStats, FileReplay, PacketSource
from tests.conftest import CAPTURES, capture


def replay_all(path: Path, batch_size: int = 256) -> list[tuple[int, int, bytes]]:
    source = FileReplay(path, batch_size=batch_size)
    out = []
    for batch in source.batches():
        assert 0 < len(batch) <= batch_size
        out.extend((ts, source.linktype, data) for ts, data in batch)
    return out


def sample_files() -> list[str]:
    if not CAPTURES.is_dir():
        return ["SIP_CALL_RTP_G711"]  # skipped by capture()
    return sorted(p.name for p in CAPTURES.iterdir() if p.suffix != ".md")


@pytest.mark.parametrize("name", sample_files())
def test_same_frames_and_timestamps_as_read_frames(name: str) -> None:
    path = capture(name)
    expected = list(read_frames(path))
    assert replay_all(path) == expected
    assert replay_all(path, batch_size=7) == expected


def test_is_a_packet_source_with_stats() -> None:
    path = capture("sip-rtp-g711.pcap")
    source: PacketSource = FileReplay(path)
    assert source.linktype == 1  # known before the first batch
    total = sum(len(b) for b in source.batches())
    assert source.stats() == CaptureStats(captured=total)
    source.close()


def test_truncated_file_yields_good_frames_then_raises(tmp_path: Path) -> None:
    src = capture("nb6-telephone.pcap")
    data = src.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) // 2])
    good = []
    with pytest.raises(CaptureFileError):
        for ts, lt, frame in read_frames(cut):
            good.append((ts, lt, frame))
    source = FileReplay(cut)
    got = []
    with pytest.raises(CaptureFileError) as err:
        for batch in source.batches():
            got.extend((ts, source.linktype, d) for ts, d in batch)
    assert got == good and len(got) > 100
    assert str(cut) in str(err.value)
    assert source.stats().captured == len(good)


def test_corrupt_header_raises_from_batches(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"this is not a capture file")
    source = FileReplay(bad)
    with pytest.raises(CaptureFileError):
        list(source.batches())


def test_missing_file_is_a_capture_error(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="nope.pcap"):
        FileReplay(tmp_path / "nope.pcap")


def test_empty_capture_has_no_batches(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pcap"
    with open(empty, "wb") as f:
        write_pcap(f, [], 1)
    assert list(FileReplay(empty).batches()) == []


def _pcapng(frames: list[tuple[int, int, bytes]], linktypes: list[int]) -> bytes:
    """A little-endian pcapng: one IDB per linktype (µs resolution), EPBs (iface, ts_us, data)."""
    def block(btype: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        n = len(body) + 12
        return struct.pack("<II", btype, n) + body + struct.pack("<I", n)

    out = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    for lt in linktypes:
        out += block(1, struct.pack("<HHI", lt, 0, 65535))
    for iface, ts_us, data in frames:
        out += block(6, struct.pack("<IIIII", iface, ts_us >> 32, ts_us & 0xFFFFFFFF,
                                    len(data), len(data)) + data)
    return out


def test_pcapng_linktype_change_is_a_batch_boundary(tmp_path: Path) -> None:
    eth = b"\x02" * 12 + b"\x08\x00" + b"\x45" + b"\0" * 19
    raw = b"\x45" + b"\0" * 19
    frames = [(0, 1, eth), (0, 2, eth), (1, 3, raw), (1, 4, raw), (0, 5, eth)]
    path = tmp_path / "mixed.pcapng"
    path.write_bytes(_pcapng(frames, [1, 101]))
    source = FileReplay(path)
    seen = []
    for batch in source.batches():
        seen.append((source.linktype, [ts // 1000 for ts, _ in batch]))
    assert seen == [(1, [1, 2]), (101, [3, 4]), (1, [5])]

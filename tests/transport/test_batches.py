"""Batches on the sensor -> controller link (transport/batches.py): what the
controller unpacks is, byte for byte and nanosecond for nanosecond, what the
capture file holds (read by tshark-checked protocols.pcapfile); bad batches
are refused with one error, never a crash or an empty ingest."""
from __future__ import annotations

import struct

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from proto import sensor_pb2
from protocols.pcapfile import read_frames
from tests.conftest import capture
from transport.batches import MAX_BATCH_BYTES, BatchFormatError, pack, unpack

CAPTURES = ["SIP_DTMF2.cap", "sip-rtp-opus.pcap", "ipv6frag.pcap", "erspan_sip_ipv4_udp.pcapng",
            "sip_ipv4_tcp_fragmented.pcap"]


def _batches(name: str) -> list[tuple[int, list[tuple[int, bytes]]]]:
    frames = list(read_frames(capture(name)))
    out = []
    for i in range(0, len(frames), 256):
        chunk = frames[i:i + 256]
        lt = chunk[0][1]
        out.append((lt, [(ts, data) for ts, t, data in chunk if t == lt]))
    return out


def _wire(payload: bytes, seq: int = 7) -> sensor_pb2.Batch:
    """What the controller receives: the payload with its seq, as sensor/sender.py sends it."""
    b = sensor_pb2.Batch.FromString(payload)
    b.seq = seq
    return sensor_pb2.Batch.FromString(b.SerializeToString())


@pytest.mark.parametrize("compression", ["none", "zstd"])
@pytest.mark.parametrize("name", CAPTURES)
def test_unpacked_frames_are_the_captured_frames(name: str, compression: str) -> None:
    for lt, frames in _batches(name):
        got = unpack(_wire(pack("s1", lt, frames, broadcast=True, compression=compression)))
        assert got.linktype == lt and got.broadcast
        assert got.timestamps == [ts for ts, _ in frames]
        assert got.lengths == [len(d) for _, d in frames]
        assert got.data == b"".join(d for _, d in frames)


def test_fewer_bytes_than_the_old_form() -> None:
    """Deltas save 3-5 of 8 bytes of time a packet; zstd much of the rest of a call."""
    frames = [f for _, fs in _batches("SIP_DTMF2.cap") for f in fs]
    old = sensor_pb2.Batch(sensor_id="s1", linktype=1, timestamps_ns=[t for t, _ in frames],
                           lengths=[len(d) for _, d in frames],
                           data=b"".join(d for _, d in frames)).SerializeToString()
    deltas = pack("s1", 1, frames)
    zstd = pack("s1", 1, frames, compression="zstd")
    assert len(old) - len(deltas) >= 3 * len(frames)
    assert len(zstd) < 0.7 * len(deltas)


def test_older_sensors_batches_are_accepted() -> None:
    b = sensor_pb2.Batch(seq=3, linktype=1, timestamps_ns=[5, 9], lengths=[2, 3], data=b"abcde")
    got = unpack(b)
    assert (got.timestamps, got.lengths, got.data) == ([5, 9], [2, 3], b"abcde")


def test_an_older_controller_refuses_new_batches_loudly() -> None:
    """An older controller's only check (times and lengths per packet, lengths adding up
    to data) fails on both new forms: it aborts the stream instead of acknowledging
    an empty batch, and the sensor keeps the batch."""
    frames = [(1_000, b"x" * 60), (2_000, b"y" * 70)]
    for compression in ("none", "zstd"):
        b = _wire(pack("s1", 1, frames, compression=compression))
        assert len(b.timestamps_ns) != len(b.lengths) or sum(b.lengths) != len(b.data)


def _zstd_batch(data: bytes, **fields) -> sensor_pb2.Batch:
    return sensor_pb2.Batch(seq=1, zstd=True, data=data, **fields)


@pytest.mark.parametrize("batch,reason", [
    (sensor_pb2.Batch(linktype=1, ts_deltas_ns=[0], first_ns=5, lengths=[1, 1], data=b"ab"),
     "time deltas"),
    (sensor_pb2.Batch(linktype=1, timestamps_ns=[1], ts_deltas_ns=[0], lengths=[1], data=b"a"),
     "time deltas"),
    (sensor_pb2.Batch(linktype=1, timestamps_ns=[1, 2], lengths=[1], data=b"a"), "timestamps"),
    (sensor_pb2.Batch(linktype=1, timestamps_ns=[1], lengths=[5], data=b"a"), "lengths"),
    (_zstd_batch(b"not a zstd frame"), "bad zstd frame"),
    (_zstd_batch(zstandard.ZstdCompressor().compress(b"\xff" * 40)), "does not hold a batch"),
    (_zstd_batch(zstandard.ZstdCompressor().compress(b""), lengths=[1]), "inside its frame"),
])
def test_malformed_batches_get_one_error(batch: sensor_pb2.Batch, reason: str) -> None:
    with pytest.raises(BatchFormatError, match=reason):
        unpack(batch)


def test_a_zstd_batch_inside_a_zstd_batch_is_refused() -> None:
    inner = pack("s1", 1, [(1, b"abc")], compression="zstd")
    with pytest.raises(BatchFormatError, match="inside a zstd frame"):
        unpack(_zstd_batch(zstandard.ZstdCompressor().compress(inner)))


@pytest.mark.parametrize("content_size", [True, False])
def test_a_decompression_bomb_is_refused(content_size: bool) -> None:
    """A few KiB that would expand past the link's message bound: refused whether the
    frame announces its size (the library would trust it) or not."""
    big = bytes(MAX_BATCH_BYTES + 1)
    frame = zstandard.ZstdCompressor(level=1, write_content_size=content_size).compress(big)
    assert len(frame) < 64 << 10
    with pytest.raises(BatchFormatError):
        unpack(_zstd_batch(frame))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.booleans())
def test_fuzz_any_bytes_give_frames_or_one_error(blob: bytes, wrap: bool) -> None:
    """Random batches (and random zstd frames of random bytes): unpack returns
    consistent frames or raises BatchFormatError, nothing else."""
    try:
        b = sensor_pb2.Batch.FromString(blob)
    except Exception:  # noqa: BLE001 - not a protobuf message: the link rejects it earlier
        return
    if wrap:
        b = _zstd_batch(zstandard.ZstdCompressor().compress(blob))
    try:
        got = unpack(b)
    except BatchFormatError:
        return
    assert len(got.timestamps) == len(got.lengths) and sum(got.lengths) == len(got.data)


def test_first_time_and_deltas_cover_the_whole_range() -> None:
    """Times from 1970 to 2106 and back again within one batch (a replay of an old
    capture beside a clock step) survive the zigzag deltas."""
    times = [0, 4_294_967_295_999_999_999, 1, 1_700_000_000_123_456_789, 1_700_000_000_123_456_788]
    frames = [(t, struct.pack("!Q", i)) for i, t in enumerate(times)]
    assert unpack(_wire(pack("s1", 101, frames))).timestamps == times

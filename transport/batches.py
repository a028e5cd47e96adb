"""The packing of a `Batch` of frames on the sensor -> controller link (proto/sensor.proto).

A sensor's uplink at a branch is often the thinnest part of the path, so a batch
carries less than the frames it holds (docs/BENCHMARK.md "WAN"):

* **times as deltas**, always: zigzag varints of the gap to the previous packet
  (~3 bytes at tens of µs apart) instead of 8-byte integers.
* **zstd** per batch (`--compression zstd`): the serialized batch in one zstd
  frame (level 1) in `data`. Mirrored VoIP repeats itself within a batch — MAC pairs, IP
  and UDP headers, RTP headers — so this drops the link-layer headers and most
  other headers without the controller losing a byte of them.

The controller rebuilds the very frames captured (`unpack`): call.pcap, the
write-ahead log and everything after the link see what the mirror saw. It
accepts every form (`timestamps_ns` from older sensors too); a decompressed
batch is bounded by the link's message size, so a small frame cannot expand
into gigabytes.

Both sides run this once per batch, with numpy, never per frame in Python.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from proto import sensor_pb2

__all__ = ["COMPRESSIONS", "MAX_BATCH_BYTES", "BatchFormatError", "Frames", "pack", "unpack"]

#: --compression: none, gzip (gRPC's message compression of the whole stream, in
#: transport; batches as `none`), zstd (each batch compressed here).
COMPRESSIONS = ("none", "gzip", "zstd")
ZSTD_LEVEL = 1
#: what a batch may decompress to: the link's gRPC message bound
MAX_BATCH_BYTES = 64 << 20

_local = threading.local()       # the zstd compressor of each thread that packs


class BatchFormatError(ValueError):
    """A batch whose fields do not describe its data (never from a sound sensor)."""


class Frames(NamedTuple):
    """What the controller ingests: frame i is data[sum(lengths[:i]):][:lengths[i]]."""
    linktype: int
    timestamps: list[int]
    lengths: list[int]
    data: bytes
    broadcast: bool


def pack(sensor_id: str, linktype: int, frames: Sequence[tuple[int, bytes]],
         broadcast: bool = False, compression: str = "none") -> bytes:
    """A serialized Batch without its seq (sensor/sender.py adds it when sending)
    holding `frames`, a non-empty list of (capture time ns, frame bytes)."""
    times, datas = zip(*frames)
    ts = np.array(times, dtype=np.int64)
    batch = sensor_pb2.Batch(
        sensor_id=sensor_id, linktype=linktype, first_ns=int(ts[0]),
        ts_deltas_ns=np.diff(ts, prepend=ts[0]).tolist(),
        lengths=list(map(len, datas)), data=b"".join(datas), broadcast=broadcast)
    payload = batch.SerializeToString()
    if compression != "zstd":
        return payload
    compressor = getattr(_local, "compressor", None)
    if compressor is None:        # one per thread: a ZstdCompressor must not be shared
        import zstandard
        compressor = _local.compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    return sensor_pb2.Batch(zstd=True, data=compressor.compress(payload)).SerializeToString()


def unpack(b: sensor_pb2.Batch) -> Frames:
    """The frames of a Batch in any form; BatchFormatError when its fields disagree
    with each other or with its data, or its zstd frame is bad or too big."""
    if b.zstd:
        if b.lengths or b.timestamps_ns or b.ts_deltas_ns:
            raise BatchFormatError("a zstd batch carries its packets inside its frame")
        b = _inflate(b.data)
    lengths = list(b.lengths)
    n = len(lengths)
    if b.ts_deltas_ns:
        if b.timestamps_ns or len(b.ts_deltas_ns) != n:
            raise BatchFormatError("time deltas do not match the packets")
        timestamps = (np.cumsum(np.fromiter(b.ts_deltas_ns, dtype=np.int64, count=n))
                      + b.first_ns).tolist()
    else:
        timestamps = list(b.timestamps_ns)
        if len(timestamps) != n:
            raise BatchFormatError("timestamps do not match the packets")
    if sum(lengths) != len(b.data):
        raise BatchFormatError("lengths do not match data")
    return Frames(b.linktype, timestamps, lengths, b.data, b.broadcast)


def _inflate(frame: bytes) -> sensor_pb2.Batch:
    import zstandard
    try:
        # a frame's header may announce its size, and then the library trusts it
        # over max_output_size: refuse a too-big one before decompressing
        size = zstandard.frame_content_size(frame)
        if size > MAX_BATCH_BYTES:
            raise BatchFormatError(f"zstd frame of {size} bytes, more than {MAX_BATCH_BYTES}")
        raw = zstandard.ZstdDecompressor().decompress(frame, max_output_size=MAX_BATCH_BYTES)
    except zstandard.ZstdError as exc:
        raise BatchFormatError(f"bad zstd frame: {exc}") from None
    try:
        inner = sensor_pb2.Batch.FromString(raw)
    except Exception:  # noqa: BLE001 - protobuf's DecodeError; any garbage lands here
        raise BatchFormatError("zstd frame does not hold a batch") from None
    if inner.zstd:
        raise BatchFormatError("zstd frame inside a zstd frame")
    return inner

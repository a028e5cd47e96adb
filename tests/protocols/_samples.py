"""Frames of the sample captures paired with their tshark rows."""
from __future__ import annotations

from collections.abc import Iterator

from protocols.errors import DecodeError
from protocols.layers import Decoded, decode
from protocols.pcapfile import read_frames
from tests.conftest import capture
from tests.protocols._tshark import Row, table


def udp_frames(name: str) -> Iterator[tuple[Row, Decoded, bytes]]:
    """(tshark row, decode result, UDP payload) of every unfragmented UDP frame."""
    path = capture(name)
    rows = table(path)
    frames = list(read_frames(path))
    assert len(rows) == len(frames)
    for row, (_, lt, data) in zip(rows, frames):
        try:
            d = decode(lt, data)
        except DecodeError:
            continue
        if d.proto == 17 and not d.is_fragment:
            yield row, d, data[d.payload_offset:d.payload_offset + d.payload_len]

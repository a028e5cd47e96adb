"""Recording files over HTTP with byte ranges (RFC 9110 §14): the player's
<audio> element asks for the part it plays, so a one-hour call starts as fast
as a one-minute one, and nothing is read whole from storage.
"""
from __future__ import annotations

import re
from typing import Iterator

from fastapi.responses import Response, StreamingResponse

from storage.layout import content_type

__all__ = ["file_response", "parse_range"]

_CHUNK = 1 << 20
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None | str:
    """(start, end inclusive), None for no (usable) range, 'unsatisfiable'."""
    if not header:
        return None
    m = _RANGE.match(header.strip().split(",")[0].strip())   # several ranges: the first
    if not m or (not m.group(1) and not m.group(2)):
        return None
    if not m.group(1):                       # bytes=-N: the last N bytes
        n = int(m.group(2))
        if n == 0:
            return "unsatisfiable"
        return max(0, size - n), size - 1
    start = int(m.group(1))
    end = int(m.group(2)) if m.group(2) else size - 1
    if start >= size or end < start:
        return "unsatisfiable"
    return start, min(end, size - 1)


def _chunks(store, prefix: str, name: str, start: int, end: int, first: bytes) -> Iterator[bytes]:
    if not first:
        return
    yield first
    pos = start + len(first)
    while pos <= end:
        data = store.get_range(prefix, name, pos, min(_CHUNK, end - pos + 1))
        if not data:
            return
        yield data
        pos += len(data)


def file_response(store, prefix: str, name: str, size: int, range_header: str | None,
                  download: bool = False) -> Response:
    """The file or the asked range of it. The first chunk is read before the
    response starts, so a file that cannot be read (storage away, a key the
    player lacks, a modified file) is a StorageError here, not a 200 whose body
    breaks off; later chunks are read as the client takes them."""
    headers = {"Accept-Ranges": "bytes", "Cache-Control": "private, max-age=300"}
    if download:
        headers["Content-Disposition"] = f'attachment; filename="{name}"'
    r = parse_range(range_header, size)
    if r == "unsatisfiable":
        return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{size}"})
    if r is None:
        first = store.get_range(prefix, name, 0, min(_CHUNK, size)) if size else b""
        headers["Content-Length"] = str(size)
        return StreamingResponse(_chunks(store, prefix, name, 0, size - 1, first),
                                 media_type=content_type(name), headers=headers)
    start, end = r
    first = store.get_range(prefix, name, start, min(_CHUNK, end - start + 1))
    headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    headers["Content-Length"] = str(end - start + 1)
    return StreamingResponse(_chunks(store, prefix, name, start, end, first), status_code=206,
                             media_type=content_type(name), headers=headers)

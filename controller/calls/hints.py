"""Media endpoints announced by SDP, as a log the sensor streams read from.

When one site sees the signalling and the media flows past another, the
other site's sensor does not know the media ports. The call engine calls
`MediaHints.add` for every new (address, port) it maps from SDP; each sensor
stream (controller/api/link.py) remembers the generation it has sent and sends
`Expect` with what came after (`since`).

`add` is on the controller's packet path (under the recorder's lock, once per
new endpoint, not per packet): a lock, a deque append and a counter. The log
is bounded; a stream that fell further behind than the bound gets what is
left.  What reaches it is bounded upstream (at most 16 m= lines of an SDP,
`MAX_CALL_ENDPOINTS` per call: controller/media/streams.py, controller/calls/calltable.py),
and an endpoint on a port no SDP may name (protocols/mediaports.py) is never
logged, whoever adds it: counted in `refused`.
"""
from __future__ import annotations

import threading
from collections import deque
from itertools import islice

from protocols.mediaports import media_port_ok

__all__ = ["MediaHints"]

Endpoint = tuple[bytes, int]


class MediaHints:
    """A bounded, thread-safe log of media endpoints with a generation counter.

    Generation n is the n-th endpoint ever added (1-based); `since(0)` returns
    everything still in the log.
    """

    def __init__(self, max_entries: int = 65536) -> None:
        self._log: deque[Endpoint] = deque(maxlen=max_entries)
        self._gen = 0
        self._lock = threading.Lock()
        self.refused = 0        # endpoints on refused ports (never sent to sensors)

    @property
    def generation(self) -> int:
        return self._gen

    def __len__(self) -> int:
        return len(self._log)

    def add(self, addr: bytes, port: int) -> None:
        """Log one endpoint (packed 4 or 16 byte address, UDP port)."""
        if not media_port_ok(port):
            self.refused += 1
            return
        with self._lock:
            self._log.append((addr, port))
            self._gen += 1

    def since(self, gen: int) -> tuple[int, list[Endpoint]]:
        """(current generation, endpoints added after generation `gen`). When the
        log was trimmed past `gen`, the endpoints still in it."""
        if gen >= self._gen:          # the common case, without the lock
            return gen, []
        with self._lock:
            current = self._gen
            new = min(current - gen, len(self._log))
            # from the right end: O(new), not O(log size)
            out = list(islice(reversed(self._log), new))
        out.reverse()
        return current, out

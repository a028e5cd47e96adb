"""An adversarial sensor for end-to-end tests: a gRPC client holding a valid
sensor certificate that speaks SensorLink (proto/sensor.proto) itself.

It does the minimum sensor/sender.py does (Hello, then Batch messages of
captured frames with capture timestamps, Heartbeat with a clock, and
EndOfCapture), with whatever frames the test wants to forge. Frames are
built here (Ethernet / IPv4 / UDP with real checksums), independently of
the project's own packet code.
"""
from __future__ import annotations

import ipaddress
import queue
import struct
import threading
import uuid
from collections.abc import Iterable, Iterator

import grpc

from proto import sensor_pb2, sensor_pb2_grpc

LINKTYPE_ETHERNET = 1


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def udp_frame(src: str, dst: str, sport: int, dport: int, payload: bytes, ip_id: int) -> bytes:
    """One Ethernet II / IPv4 / UDP frame with valid IP and UDP checksums."""
    s, d = ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed
    ulen = 8 + len(payload)
    pseudo = s + d + struct.pack("!BBH", 0, 17, ulen)
    udp = struct.pack("!HHHH", sport, dport, ulen, 0) + payload
    ucs = _csum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", ucs) + udp[8:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + ulen, ip_id & 0xFFFF, 0x4000, 64, 17, 0, s, d)
    ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
    eth = b"\x02\x00\xbb\xbb\x00\x02" + b"\x02\x00\xbb\xbb\x00\x01" + b"\x08\x00"
    return eth + ip + udp


def rtp_packet(seq: int, ts: int, ssrc: int, pt: int, payload: bytes, marker: bool = False) -> bytes:
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF,
                       ts & 0xFFFFFFFF, ssrc) + payload


class ForgingSensor:
    """One SensorLink stream. Messages are queued by the test thread and read
    by gRPC from a generator; a reader thread records the controller's acks
    and notices. `refused` holds the status code when the stream failed."""

    def __init__(self, target: str, credentials: grpc.ChannelCredentials, sensor_id: str,
                 site: str, mode: str = "replay") -> None:
        self.sensor_id = sensor_id
        self._q: queue.Queue = queue.Queue()
        self._channel = grpc.secure_channel(target, credentials)
        self.acked = 0
        self.capture_done = threading.Event()
        self.failed: grpc.RpcError | None = None
        self.finished = threading.Event()
        self._hello_acked = threading.Event()
        self._seq = 0
        self._q.put(sensor_pb2.SensorMessage(hello=sensor_pb2.Hello(
            sensor_id=sensor_id, site=site, version="forger", session=uuid.uuid4().hex,
            mode=mode)))
        self._call = sensor_pb2_grpc.SensorLinkStub(self._channel).Stream(self._requests())
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _requests(self) -> Iterator[sensor_pb2.SensorMessage]:
        while True:
            msg = self._q.get()
            if msg is None:
                return
            yield msg

    def _read(self) -> None:
        try:
            for reply in self._call:
                kind = reply.WhichOneof("kind")
                if kind == "ack":
                    self.acked = max(self.acked, reply.ack.seq)
                    self._hello_acked.set()
                elif kind == "notice" and reply.notice.capture_done:
                    self.capture_done.set()
        except grpc.RpcError as exc:
            if not self.capture_done.is_set():
                self.failed = exc
        finally:
            self.finished.set()
            self._hello_acked.set()

    def wait_hello(self, timeout: float = 10) -> None:
        assert self._hello_acked.wait(timeout), "no answer to Hello"
        if self.failed is not None:
            raise self.failed

    def heartbeat(self, clock_ns: int) -> None:
        self._q.put(sensor_pb2.SensorMessage(heartbeat=sensor_pb2.Heartbeat(
            sensor_id=self.sensor_id, clock_ns=clock_ns, counters=sensor_pb2.Counters())))

    def send(self, frames: Iterable[tuple[int, bytes]]) -> int:
        """One batch of (capture ts ns, Ethernet frame), in time order. Not waited
        for: with a write-ahead log the controller acknowledges a batch once it
        is durable, possibly in a later answer; end() waits for everything."""
        frames = sorted(frames, key=lambda f: f[0])
        self._seq += 1
        self._q.put(sensor_pb2.SensorMessage(batch=sensor_pb2.Batch(
            seq=self._seq, sensor_id=self.sensor_id, linktype=LINKTYPE_ETHERNET,
            timestamps_ns=[t for t, _ in frames], lengths=[len(f) for _, f in frames],
            data=b"".join(f for _, f in frames))))
        return len(frames)

    def end(self, timeout: float = 20) -> None:
        """EndOfCapture; waits for the controller's capture_done notice."""
        self._q.put(sensor_pb2.SensorMessage(end=sensor_pb2.EndOfCapture(
            sensor_id=self.sensor_id, last_seq=self._seq, counters=sensor_pb2.Counters())))
        assert self.capture_done.wait(timeout), f"no capture_done notice ({self.failed})"

    def close(self) -> None:
        self._q.put(None)
        self._call.cancel()
        self._reader.join(5)
        self._channel.close()

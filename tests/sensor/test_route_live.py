"""A real `spanrec sensor` process routing over two controller shards (issue #12).

Two minimal gRPC servers stand in for the shards: they record the Hello, the
batches (frames and the broadcast flag) and the heartbeats, ack every batch and
answer EndOfCapture as controller/api/link.py does (Notice capture_done).  The same
file replayed to one server (in-process `run_sensor`, the router forbidden) is
the reference: the shards together get exactly what one controller gets.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from proto import sensor_pb2, sensor_pb2_grpc
from transport.batches import unpack
from protocols.errors import DecodeError
from protocols.layers import decode
from protocols.sip import looks_like_sip, parse_sip
from tests.conftest import CAPTURES

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "samples" / "sample-call.pcap"


class Shard(sensor_pb2_grpc.SensorLinkServicer):
    """Records what one sensor stream carries; acks like a controller."""

    def __init__(self) -> None:
        self.hellos: list[sensor_pb2.Hello] = []
        self.batches: list[sensor_pb2.Batch] = []
        self.beats: list[sensor_pb2.Heartbeat] = []
        self.ended = threading.Event()
        self.lock = threading.Lock()

    def Stream(self, request_iterator, context):
        for msg in request_iterator:
            kind = msg.WhichOneof("kind")
            with self.lock:
                if kind == "hello":
                    self.hellos.append(msg.hello)
                    yield sensor_pb2.ControllerMessage(ack=sensor_pb2.Ack(seq=0))
                elif kind == "batch":
                    self.batches.append(msg.batch)
                    yield sensor_pb2.ControllerMessage(ack=sensor_pb2.Ack(seq=msg.batch.seq))
                elif kind == "heartbeat":
                    self.beats.append(msg.heartbeat)
                elif kind == "end":
                    self.ended.set()
                    yield sensor_pb2.ControllerMessage(notice=sensor_pb2.Notice(capture_done=True))

    def frames(self, broadcast: bool | None = None) -> list[bytes]:
        out = []
        for b in map(unpack, self.batches):      # zstd batches too (the sensor's default)
            if broadcast is not None and b.broadcast != broadcast:
                continue
            at = 0
            for n in b.lengths:
                out.append(b.data[at:at + n])
                at += n
        return out


@pytest.fixture
def shards():
    started = []

    def start() -> tuple[Shard, int]:
        servicer = Shard()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                             options=[("grpc.max_receive_message_length", 64 << 20)])
        sensor_pb2_grpc.add_SensorLinkServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        started.append(server)
        return servicer, port

    yield start
    for server in started:
        server.stop(0)


def _call_id(data: bytes, linktype: int = 1) -> str | None:
    try:
        d = decode(linktype, data)
    except DecodeError:
        return None
    if d.proto != 17 or d.is_fragment:
        return None
    payload = data[d.payload_offset:d.payload_offset + d.payload_len]
    if not looks_like_sip(payload):
        return None
    try:
        return parse_sip(payload).call_id
    except DecodeError:
        return None


def _single_run(pcap: Path, port: int, tmp: Path, monkeypatch) -> None:
    """The reference: one controller, in process; the router must not run."""
    import sensor.route
    from sensor.pipeline import SensorOptions, run_sensor

    def forbidden(*_a, **_k):
        raise AssertionError("the router ran with one controller")

    monkeypatch.setattr(sensor.route.ShardRouter, "__init__", forbidden)
    monkeypatch.setattr(sensor.route.ShardRouter, "assign", forbidden)
    opts = SensorOptions(sensor_id="ref", controller=f"127.0.0.1:{port}", pcap=str(pcap),
                         insecure=True, connect_timeout_s=20, spool_dir=str(tmp / "ref-spool"))
    assert run_sensor(opts) == ""


CASES = [SAMPLE] + [CAPTURES / n for n in ("sip_ipv4_tcp.pcap", "ipv6frag.pcap", "SIP_CALL_RTP_G711")]


@pytest.mark.parametrize("pcap", CASES, ids=lambda p: p.name)
def test_sensor_process_routes_over_two_shards(pcap: Path, shards, tmp_path: Path, monkeypatch) -> None:
    if not pcap.is_file():
        pytest.skip(f"capture {pcap.name} not available")
    ref, ref_port = shards()
    _single_run(pcap, ref_port, tmp_path, monkeypatch)
    assert ref.ended.is_set() and [list(h.ring) for h in ref.hellos] == [[]]
    assert not any(b.broadcast for b in ref.batches)

    lt = ref.batches[0].linktype
    (a, pa), (b, pb) = shards(), shards()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "sensor", "--pcap", str(pcap), "--insecure",
         "--sensor-id", "s1", "--spool-dir", str(tmp_path / "spool"), "--connect-timeout", "20",
         "--controller", f"b=127.0.0.1:{pb},a=127.0.0.1:{pa}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for s in (a, b):
        assert [list(h.ring) for h in s.hellos] == [["a", "b"]]
        assert s.ended.is_set()
    # together the shards got what one controller gets; broadcast frames reach both
    routed_a, routed_b = a.frames(broadcast=False), b.frames(broadcast=False)
    bcast_a, bcast_b = a.frames(broadcast=True), b.frames(broadcast=True)
    assert Counter(bcast_a) == Counter(bcast_b)
    assert Counter(routed_a) + Counter(routed_b) + Counter(bcast_a) == Counter(ref.frames())
    # each Call-ID's SIP (over UDP) on exactly one shard
    where: dict[str, set[str]] = {}
    for name, frames in (("a", routed_a), ("b", routed_b)):
        for data in frames:
            cid = _call_id(data, lt)
            if cid:
                where.setdefault(cid, set()).add(name)
    assert where or pcap.name == "sip_ipv4_tcp.pcap"        # SIP over TCP only: broadcast
    assert all(len(v) == 1 for v in where.values()), where
    from registry.ring import Ring
    from registry.ring import Shard as RingShard
    ring = Ring([RingShard("a", ""), RingShard("b", "")])   # what every shard computes alike
    assert {cid: v.pop() for cid, v in where.items()} == \
        {cid: ring.shards[ring.owner(cid)].shard_id for cid in where}
    # broadcast only for TCP segments and IP fragments after the first
    for data in bcast_a:
        d = decode(lt, data)
        assert d.proto == 6 or d.frag_offset, d
    if pcap.name == "sip_ipv4_tcp.pcap":
        assert bcast_a
    # no spool left behind: the replay completed on both shards
    assert not (tmp_path / "spool" / "s1").exists()


def test_idle_shard_still_gets_heartbeats_and_its_clock_advances(shards) -> None:
    """A shard that no packet of this sensor goes to still sees its clock advance."""
    from registry.ring import Ring
    from registry.ring import Shard as RingShard
    from scripts.gencalls import frames as gen_frames
    from sensor.pipeline import ShardedSender
    from sensor.route import ShardRouter
    from sensor.sender import Sender

    (a, pa), (b, pb) = shards(), shards()
    ring = Ring([RingShard("a", f"127.0.0.1:{pa}"), RingShard("b", f"127.0.0.1:{pb}")])
    router = ShardRouter(ring)
    frames = list(gen_frames(calls=1, duration=1.0, concurrent=1, seed=1))
    owner = router.assign(1, frames[:1])[0]
    idle = b if owner == 0 else a
    senders = [Sender(s.address, "s1", mode="replay", heartbeat_s=0.1, ring=("a", "b"))
               for s in ring.shards]
    fan = ShardedSender(senders, router, [0, 0])
    fan.start()
    try:
        fan.submit(1, frames)
        fan.advance_clock(frames[-1][0] + 5_000_000_000)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(
                h.clock_ns >= frames[-1][0] + 5_000_000_000 for h in list(idle.beats)):
            time.sleep(0.05)
        assert not idle.frames()
        assert any(h.clock_ns >= frames[-1][0] + 5_000_000_000 for h in idle.beats)
        fan.finish()
        assert fan.wait_done(10) and fan.complete
    finally:
        fan.stop()

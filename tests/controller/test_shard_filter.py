"""Inside one shard of a sharded controller (issue #12, controller/ingest/shard.py).

Transport-free: Recorders with a `ShardIdentity` of a 2- or 3-shard ring are fed
the same capture, every packet in broadcast batches (what a sensor sends for
SIP over TCP), and their recordings together must be exactly those of one
Recorder without shards, each call recorded by the one shard an independent
computation (RouteTable + Ring over the reassembled messages) names, with the
not-owned counters adding up.  Real capture: sip_ipv4_tcp_fragmented.pcap (a
SIP-over-TCP trunk: 4 connections, 70 Call-IDs, legs named by X-cid, 234
messages spanning segments); sip_ipv4_tcp.pcap (SIP over TCP with RTP: audio).
"""
from __future__ import annotations

import asyncio
import json
import struct
import threading
from pathlib import Path

import grpc
import pytest

from controller.core import Recorder
from controller.api.link import SensorLinkServicer
from controller.settings import DEFAULT_LEG_HEADERS
from controller.ingest.shard import BroadcastFrame, ShardIdentity
from controller.calls.tcpstream import MESSAGE, RETRANSMISSION, TcpReassembler
from controller.ingest.wal import BATCH, WriteAheadLog
from proto import sensor_pb2, sensor_pb2_grpc
from protocols.callkey import RouteTable
from protocols.errors import DecodeError
from protocols.layers import decode, str_to_ip
from protocols.pcapfile import read_frames
from protocols.sip import parse_sip
from registry.ring import Ring, Shard
from storage.local import LocalStore
from tests.conftest import capture
from tests.controller._sipbuild import S, audio_line, rtp, sdp, sip, udp_frame

TRUNK = "sip_ipv4_tcp_fragmented.pcap"
TCP_CALL = "sip_ipv4_tcp.pcap"
BATCH_SIZE = 64
#: call.json fields a shard may legitimately differ in (none expected so far)
SHARD_SPECIFIC: set[str] = set()


def ring_of(n: int) -> Ring:
    return Ring([Shard(f"shard-{i}", f"10.1.0.{i}:7000") for i in range(n)])


# -- feeding -----------------------------------------------------------------------
def frames_of(name: str) -> list[tuple[int, int, bytes]]:
    return list(read_frames(capture(name)))


def feed(rec: Recorder, frames, broadcast=lambda i, data: True, sid: str = "s1") -> None:
    """One replay sensor: batches of consecutive frames with the same broadcast flag."""
    rec.sensor_hello(sid, session="A", mode="replay")
    seq = 0
    i = 0
    while i < len(frames):
        flag = broadcast(i, frames[i][2])
        j = i
        while j < len(frames) and j - i < BATCH_SIZE and broadcast(j, frames[j][2]) == flag \
                and frames[j][1] == frames[i][1]:
            j += 1
        part = frames[i:j]
        seq += 1
        rec.ingest(sid, seq, part[0][1], [f[0] for f in part], [len(f[2]) for f in part],
                   b"".join(f[2] for f in part), broadcast=flag)
        i = j
    rec.end_of_capture(sid, {}, "")
    rec.shutdown()


def recordings(root: Path) -> dict[str, dict[str, bytes]]:
    """Every stored recording: prefix -> {file name: bytes}."""
    out: dict[str, dict[str, bytes]] = {}
    for js in sorted(root.rglob("call.json")):
        out[js.parent.relative_to(root).as_posix()] = {
            p.name: p.read_bytes() for p in sorted(js.parent.iterdir()) if p.is_file()}
    return out


def meta(files: dict[str, bytes]) -> dict:
    doc = json.loads(files["call.json"])
    return {k: v for k, v in doc.items() if k not in SHARD_SPECIFIC}


def run(tmp_path: Path, name: str, frames, shard: ShardIdentity | None = None,
        **kw) -> tuple[Recorder, dict[str, dict[str, bytes]]]:
    out = tmp_path / name
    rec = Recorder(LocalStore(out, fsync=False), shard=shard)
    feed(rec, frames, **kw)
    return rec, recordings(out)


# -- the independent computation ------------------------------------------------------
def expected_owners(frames, ring: Ring) -> tuple[dict[str, int], list[int], dict[int, set[int]]]:
    """From the capture alone: the owner shard of each Call-ID (RouteTable key of its
    first message -> Ring), the owner of every complete SIP message, and per TCP
    frame index the owners of the messages it carried (or repeated)."""
    routes = RouteTable(DEFAULT_LEG_HEADERS)
    r = TcpReassembler()
    owner_of_cid: dict[str, int] = {}
    messages: list[int] = []
    frame_owners: dict[int, set[int]] = {}

    def chunks_done(chunks) -> None:
        for ch in chunks:
            if ch.kind == MESSAGE:
                try:
                    msg = parse_sip(ch.data)
                    msg.cseq
                except DecodeError:
                    continue
                if not msg.call_id:
                    continue
                owner = ring.place(routes.key(msg))
                owner_of_cid.setdefault(msg.call_id, owner)
                messages.append(owner)
                ch.owner = owner
                for f in ch.frames:
                    frame_owners.setdefault(f, set()).add(owner)
            elif ch.kind == RETRANSMISSION:
                for m in ch.of:
                    if m.owner is not None:
                        for f in ch.frames:
                            frame_owners.setdefault(f, set()).add(m.owner)

    for index, (ts, lt, data) in enumerate(frames):
        d = decode(lt, data)
        if d.proto != 6:
            continue
        off = d.payload_offset
        chunks_done(r.segment((d.src, d.sport, d.dst, d.dport), ts, d.tcp_seq, d.tcp_flags,
                              data[off:off + d.payload_len], index))
    chunks_done(r.flush())
    return owner_of_cid, messages, frame_owners


# -- the union of the shards is the single controller ---------------------------------
@pytest.mark.parametrize("name", [TRUNK, TCP_CALL])
@pytest.mark.parametrize("n", [2, 3])
def test_shards_together_record_what_one_controller_records(tmp_path: Path, name: str, n: int) -> None:
    frames = frames_of(name)
    single, expected = run(tmp_path, "single", frames)
    assert expected, "the capture gives recordings"
    ring = ring_of(n)
    owner_of_cid, messages, frame_owners = expected_owners(frames, ring)

    shards = [ShardIdentity(f"shard-{i}", ring_of(n)) for i in range(n)]
    got: dict[str, dict[str, bytes]] = {}
    by_shard: dict[str, int] = {}
    recs = []
    for i, shard in enumerate(shards):
        rec, recs_i = run(tmp_path, f"shard-{i}", frames, shard)
        recs.append(rec)
        for prefix, files in recs_i.items():
            assert prefix not in got, f"{prefix} recorded by two shards"
            got[prefix] = files
            by_shard[prefix] = i
    # the same recordings (ids), the same files byte for byte apart from shard counters
    assert sorted(got) == sorted(expected)
    audio = 0
    for prefix, files in expected.items():
        assert sorted(got[prefix]) == sorted(files), prefix
        assert meta(got[prefix]) == meta(files), prefix
        for fname, data in files.items():
            if fname != "call.json":
                assert got[prefix][fname] == data, (prefix, fname)
                audio += fname.startswith("audio")
        # recorded by the owner of its Call-IDs, computed independently
        cids = json.loads(files["call.json"])["call_ids"]
        owners = {owner_of_cid[c] for c in cids if c in owner_of_cid}
        assert owners == {by_shard[prefix]}, (prefix, cids, owners)
    if name == TCP_CALL:
        assert audio == 1       # the call's audio, rendered by its shard alone
    assert len(set(by_shard.values())) > 1 or len(expected) < 4   # the calls were spread

    # the counters add up: every shard tested every message, each has one owner
    for i, rec in enumerate(recs):
        c = rec.status()["shard"]
        assert c["shard_id"] == f"shard-{i}" and c["ring"] == [f"shard-{k}" for k in range(n)]
        assert c["broadcast_packets"] == len(frames)
        assert c["broadcast_messages"] == len(messages)
        assert c["not_owned_messages"] == sum(1 for o in messages if o != i)
        tcp_not_owned = sum(1 for owners in frame_owners.values() if i not in owners)
        udp_not_owned = c["not_owned_packets"] - tcp_not_owned
        assert rec.status()["not_owned_packets"] == c["not_owned_packets"]
        # broadcast RTP/RTCP joins only a call this shard has: the owner keeps it all,
        # the others count every datagram (and start no media-only call)
        owns_any = any(s == i for s in by_shard.values())
        udp = sum(1 for _, lt, f in frames if decode(lt, f).proto == 17)
        assert udp_not_owned == (0 if owns_any or not udp else udp), c
        assert rec.engine.counters["internal_errors"] == 0
        assert rec.engine.counters["unsignalled_flows"] == single.engine.counters["unsignalled_flows"] == 0
    assert sum(r.status()["shard"]["not_owned_messages"] for r in recs) == (n - 1) * len(messages)
    assert "shard" not in single.status() and "not_owned_packets" not in single.status()


def test_broadcast_flag_without_shard_changes_nothing(tmp_path: Path) -> None:
    frames = frames_of(TCP_CALL)
    _, plain = run(tmp_path, "plain", frames, broadcast=lambda i, d: False)
    rec, flagged = run(tmp_path, "flagged", frames)
    assert flagged == plain
    assert "shard" not in rec.status()


def test_ring_of_one_shard_keeps_everything(tmp_path: Path) -> None:
    frames = frames_of(TRUNK)
    _, expected = run(tmp_path, "single", frames)
    rec, got = run(tmp_path, "one", frames, ShardIdentity("only", Ring([Shard("only", "")])))
    assert got == expected
    assert rec.status()["not_owned_packets"] == 0


# -- UDP: routed packets are untouched, broadcast ones start nothing --------------------
def _udp_call(call_id: str, caller: str, port: int, t0: float) -> list[tuple[int, int, bytes]]:
    callee = "10.2.0.9"
    inv = sip("INVITE sip:bob@example.com SIP/2.0", call_id, "1 INVITE", "ft", None, caller,
              sdp(caller, [audio_line(port)]))
    ok = sip("SIP/2.0 200 OK", call_id, "1 INVITE", "ft", "tt", caller,
             sdp(callee, [audio_line(port + 2)]))
    ack = sip("ACK sip:bob@example.com SIP/2.0", call_id, "1 ACK", "ft", "tt", caller)
    bye = sip("BYE sip:bob@example.com SIP/2.0", call_id, "2 BYE", "ft", "tt", caller)
    bye_ok = sip("SIP/2.0 200 OK", call_id, "2 BYE", "ft", "tt", caller)
    out = [(t0, udp_frame(caller, 5060, callee, 5060, inv)),
           (t0 + 0.1, udp_frame(callee, 5060, caller, 5060, ok)),
           (t0 + 0.2, udp_frame(caller, 5060, callee, 5060, ack))]
    for k in range(60):
        t = t0 + 0.3 + k * 0.02
        out.append((t, udp_frame(caller, port, callee, port + 2, rtp(k, k * 160, 0x1000 + port))))
        out.append((t + 0.001, udp_frame(callee, port + 2, caller, port, rtp(k, k * 160, 0x2000 + port))))
    out += [(t0 + 2.0, udp_frame(caller, 5060, callee, 5060, bye)),
            (t0 + 2.1, udp_frame(callee, 5060, caller, 5060, bye_ok))]
    return [(int(t * S), 1, f) for t, f in out]


def test_udp_call_routed_to_its_shard_is_unaffected(tmp_path: Path) -> None:
    frames = _udp_call("udp-call-1", "10.2.0.1", 20000, 1000.0)
    _, expected = run(tmp_path, "single", frames, broadcast=lambda i, d: False)
    assert len(expected) == 1
    ring = ring_of(3)
    owner = ring.place("udp-call-1")
    # the owner gets the call routed (not broadcast): the same recording, nothing counted
    rec, got = run(tmp_path, "owner", frames, ShardIdentity(f"shard-{owner}", ring_of(3)),
                   broadcast=lambda i, d: False)
    assert got == expected
    c = rec.status()["shard"]
    assert (c["broadcast_packets"], c["not_owned_messages"], c["not_owned_packets"]) == (0, 0, 0)
    # a routed message is never tested, even one a shard would not own (the sensor decided)
    other = (owner + 1) % 3
    rec, got = run(tmp_path, "other", frames, ShardIdentity(f"shard-{other}", ring_of(3)),
                   broadcast=lambda i, d: False)
    assert got == expected


def test_broadcast_udp_sip_and_media_follow_ownership(tmp_path: Path) -> None:
    """UDP in broadcast batches (a sensor broadcasts SIP it could not key, and a
    later sensor may broadcast more): SIP by the ownership test, media only into
    calls the shard has - never a media-only call of its own."""
    frames = sorted(_udp_call("bc-1", "10.2.0.1", 20000, 1000.0)
                    + _udp_call("bc-2", "10.2.0.2", 22000, 1000.5)
                    + _udp_call("bc-3", "10.2.0.3", 24000, 1001.0), key=lambda f: f[0])
    _, expected = run(tmp_path, "single", frames, broadcast=lambda i, d: False)
    assert len(expected) == 3
    got: dict = {}
    total_not_owned = 0
    for i in range(2):
        rec, mine = run(tmp_path, f"shard-{i}", frames, ShardIdentity(f"shard-{i}", ring_of(2)))
        assert not set(mine) & set(got)
        got.update(mine)
        c = rec.status()["shard"]
        assert rec.engine.counters["unsignalled_flows"] == 0
        total_not_owned += c["not_owned_packets"]
        owned = {cid for cid in ("bc-1", "bc-2", "bc-3") if ring_of(2).place(cid) == i}
        assert c["not_owned_messages"] == 5 * (3 - len(owned))
    assert got == expected
    assert total_not_owned == len(frames)        # every frame: kept by one, counted by the other


# -- IP fragments ------------------------------------------------------------------------
def test_broadcast_fragments_rebuild_only_owned_sip(tmp_path: Path) -> None:
    """ipv6frag.pcap: SIP over UDP/IPv6 whose INVITEs are fragmented; everything broadcast
    (a sensor that saw no first fragment would broadcast the rest)."""
    frames = frames_of("ipv6frag.pcap")
    _, expected = run(tmp_path, "single", frames)
    assert expected
    got: dict = {}
    for i in range(2):
        rec, mine = run(tmp_path, f"shard-{i}", frames, ShardIdentity(f"shard-{i}", ring_of(2)))
        assert not set(mine) & set(got)
        got.update(mine)
        assert rec.engine.counters["internal_errors"] == 0
    assert sorted(got) == sorted(expected)
    for prefix in expected:
        assert got[prefix] == expected[prefix]


def test_broadcast_fragments_count_each_packet_once(tmp_path: Path) -> None:
    frames = frames_of("ipv6frag.pcap")
    n_sip = 32          # 30 datagrams + 2 fragmented INVITEs (tested on their first fragment)
    owner = None
    for i in range(3):
        rec, got = run(tmp_path, f"shard-{i}", frames, ShardIdentity(f"shard-{i}", ring_of(3)))
        c = rec.status()["shard"]
        assert c["broadcast_messages"] == n_sip
        if got:
            owner = i
            assert (c["not_owned_messages"], c["not_owned_packets"]) == (0, 0)
        else:
            assert (c["not_owned_messages"], c["not_owned_packets"]) == (n_sip, len(frames))
    assert owner is not None


def _ipv4_fragments(src: str, dst: str, ip_id: int, udp: bytes, size: int) -> list[bytes]:
    """An IPv4 datagram (UDP header + payload) cut into fragments of `size` bytes (x8)."""
    out = []
    for off in range(0, len(udp), size):
        piece = udp[off:off + size]
        more = off + size < len(udp)
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(piece), ip_id,
                         (0x2000 if more else 0) | (off // 8), 64, 17, 0,
                         str_to_ip(src), str_to_ip(dst))
        out.append(b"\x00" * 12 + b"\x08\x00" + ip + piece)
    return out


def test_broadcast_fragments_without_call_id_in_the_first(tmp_path: Path) -> None:
    """An INVITE whose Call-ID lies beyond its first fragment: a sensor cannot key it,
    so every fragment is broadcast; only the datagram rebuilt from them has an owner."""
    caller, callee = "10.3.0.1", "10.3.0.2"
    calls = []
    for k in range(6):
        cid = f"frag-call-{k}"
        head = "".join(f"Via: SIP/2.0/UDP proxy{j}.example.com:5060;branch=z9hG4bK-{k}-{j}\r\n"
                       for j in range(12))
        invite = sip("INVITE sip:bob@example.com SIP/2.0", cid, "1 INVITE", "ft", None, caller,
                     sdp(caller, [audio_line(30000 + 4 * k)]))
        first, rest = invite.split(b"\r\n", 1)
        invite = first + b"\r\n" + head.encode() + rest
        assert invite.index(b"Call-ID") > 600
        udp = struct.pack("!HHHH", 5060, 5060, 8 + len(invite), 0) + invite
        t0 = 2000.0 + k
        pkts = [(t0 + j * 1e-4, f) for j, f in enumerate(_ipv4_fragments(caller, callee, 100 + k, udp, 512))]
        busy = sip("SIP/2.0 486 Busy Here", cid, "1 INVITE", "ft", "tt", caller)
        pkts.append((t0 + 0.2, udp_frame(callee, 5060, caller, 5060, busy)))
        calls.append((cid, len(pkts) - 1, pkts))
    frames = sorted(((int(t * S), 1, f) for _, _, pkts in calls for t, f in pkts), key=lambda f: f[0])
    # the 486s are routed (they carry their Call-ID): to their owner only
    ring = ring_of(2)
    owner_of = {cid: ring.place(cid) for cid, _, _ in calls}
    is_frag = [decode(1, f).is_fragment for _, _, f in frames]
    _, expected = run(tmp_path, "single", frames, broadcast=lambda i, d: False)
    assert len(expected) == 6
    got: dict = {}
    for i in range(2):
        mine_cids = {cid for cid, o in owner_of.items() if o == i}
        cid_of = [next(c for c in owner_of if c.encode() in f) if not is_frag[j] else None
                  for j, (_, _, f) in enumerate(frames)]
        # this shard's stream: every fragment (broadcast), the 486s of its own calls (routed)
        stream = [f for j, f in enumerate(frames) if is_frag[j] or cid_of[j] in mine_cids]
        rec, mine = run(tmp_path, f"shard-{i}", stream, ShardIdentity(f"shard-{i}", ring_of(2)),
                        broadcast=lambda j, d: decode(1, d).is_fragment)
        assert not set(mine) & set(got)
        got.update(mine)
        c = rec.status()["shard"]
        others = [n for cid, n, _ in calls if owner_of[cid] != i]
        assert c["not_owned_messages"] == len(others)
        assert c["not_owned_packets"] == sum(others)
        assert rec.engine.counters["sip_reassembled"] == 6 - len(others)
    assert got == expected


def test_fragments_with_one_routed_are_this_shards(tmp_path: Path) -> None:
    """A datagram one of whose fragments was routed here is this shard's (the sensor
    routed its first fragment): its SIP is applied without the test."""
    frames = frames_of("ipv6frag.pcap")
    _, expected = run(tmp_path, "single", frames)
    frag = [i for i, (_, lt, d) in enumerate(frames) if decode(lt, d).is_fragment]
    assert frag
    later = {i for i in frag if decode(frames[i][1], frames[i][2]).frag_offset}
    assert later and len(later) < len(frag)
    for i in range(2):
        # everything routed to this shard but the later fragments, broadcast: it records all
        rec, got = run(tmp_path, f"shard-{i}", frames, ShardIdentity(f"shard-{i}", ring_of(2)),
                       broadcast=lambda k, d: k in later)
        assert got == expected
        c = rec.status()["shard"]
        assert c["broadcast_packets"] == len(later) and c["not_owned_packets"] == 0
        assert c["broadcast_messages"] == 0       # rebuilt with a routed first fragment: no test


# -- the write-ahead log keeps the flag ----------------------------------------------------
def test_wal_replay_of_broadcast_batches_gives_the_same_recordings(tmp_path: Path) -> None:
    frames = frames_of(TRUNK)
    ring = ring_of(2)
    want = {}
    for i in range(2):
        _, want[i] = run(tmp_path, f"live-{i}", frames, ShardIdentity(f"shard-{i}", ring_of(2)))
    for i in range(2):
        state, out = tmp_path / f"state-{i}", tmp_path / f"rec-{i}"
        rec = Recorder(LocalStore(out, fsync=False), wal=WriteAheadLog(state),
                       shard=ShardIdentity(f"shard-{i}", ring))
        rec.recover()
        rec.sensor_hello("s1", session="A", mode="replay")
        seq = 0
        for k in range(0, len(frames), BATCH_SIZE):
            part = frames[k:k + BATCH_SIZE]
            seq += 1
            rec.ingest("s1", seq, 1, [f[0] for f in part], [len(f[2]) for f in part],
                       b"".join(f[2] for f in part), broadcast=True)
        rec.writer.join()
        rec.wal.sync()
        kinds = [(k, v.broadcast) for k, v in WriteAheadLog(state).replay() if k == BATCH]
        assert kinds and all(b for _, b in kinds)
        del rec                                   # "crash"
        again = Recorder(LocalStore(out, fsync=False), wal=WriteAheadLog(state),
                         shard=ShardIdentity(f"shard-{i}", ring_of(2)))
        info = again.recover()
        assert info["sensors"] == {"s1": seq}
        again.sensor_hello("s1", session="A", mode="replay")
        again.end_of_capture("s1", {}, "")
        again.shutdown()
        assert recordings(out) == want[i]
        assert again.status()["shard"]["broadcast_packets"] == len(frames)


def test_broadcast_frame_is_plain_bytes_otherwise() -> None:
    f = BroadcastFrame(memoryview(b"xabcx")[1:4])
    assert f == b"abc" and hash(f) == hash(b"abc") and b"".join([f, b"d"]) == b"abcd"
    assert f.__class__ is BroadcastFrame and f[1:].__class__ is bytes


# -- the Hello ring check over gRPC ---------------------------------------------------------
class _Server:
    """The real sensor-link servicer on an in-process grpc.aio server (own loop thread)."""

    def __init__(self, rec: Recorder) -> None:
        self.rec = rec
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()

        def main() -> None:
            asyncio.set_event_loop(self.loop)

            async def start() -> None:
                self.server = grpc.aio.server()
                sensor_pb2_grpc.add_SensorLinkServicer_to_server(SensorLinkServicer(rec), self.server)
                self.port = self.server.add_insecure_port("127.0.0.1:0")
                await self.server.start()
                ready.set()
            self.loop.run_until_complete(start())
            self.loop.run_forever()

        self.thread = threading.Thread(target=main, daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def hello(self, ring: list[str]) -> tuple[grpc.StatusCode | None, str]:
        """Hello with `ring`, then end: (None, "") when acked, else the refusal."""
        def msgs():
            yield sensor_pb2.SensorMessage(hello=sensor_pb2.Hello(
                sensor_id="s1", session="x", mode="replay", ring=ring))
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as ch:
            stub = sensor_pb2_grpc.SensorLinkStub(ch)
            try:
                for reply in stub.Stream(msgs(), timeout=10):
                    if reply.WhichOneof("kind") == "ack":
                        return None, ""
            except grpc.RpcError as exc:
                return exc.code(), exc.details()
        return None, "no ack"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(None), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def test_hello_ring_must_be_the_shards_ring(tmp_path: Path) -> None:
    rec = Recorder(LocalStore(tmp_path / "rec", fsync=False),
                   shard=ShardIdentity("shard-1", ring_of(2)))
    srv = _Server(rec)
    try:
        assert srv.hello(["shard-0", "shard-1"]) == (None, "")
        code, text = srv.hello(["shard-0", "shard-1", "shard-2"])
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert text.startswith("this controller is shard shard-1 of [shard-0, shard-1]; the sensor "
                               "routes over [shard-0, shard-1, shard-2]: give the sensor every shard "
                               "(--controller shard-0=10.1.0.0:7000,shard-1=10.1.0.1:7000)"), text
        code, text = srv.hello([])               # a sensor sending everything here
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "no shard list" in text
        code, _ = srv.hello(["shard-1", "shard-9"])
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        st = rec.status()
        assert st["ring_refused"] == 3
        assert st["shard"]["shard_id"] == "shard-1" and st["shard"]["ring"] == ["shard-0", "shard-1"]
    finally:
        srv.stop()


def test_hello_ring_against_one_shard_and_no_shard(tmp_path: Path) -> None:
    one = Recorder(LocalStore(tmp_path / "one", fsync=False),
                   shard=ShardIdentity("solo", Ring([Shard("solo", "h:1")])))
    srv = _Server(one)
    try:
        assert srv.hello([]) == (None, "")          # ring-less Hello: a ring of one accepts it
        assert srv.hello(["solo"]) == (None, "")
        assert srv.hello(["solo", "x"])[0] == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        srv.stop()
    plain = Recorder(LocalStore(tmp_path / "plain", fsync=False))
    srv = _Server(plain)
    try:
        assert srv.hello([]) == (None, "")
        assert srv.hello(["a"]) == (None, "")
        code, text = srv.hello(["a", "b"])           # an unsharded controller: calls would split
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "not sharded" in text
        assert plain.status()["ring_refused"] == 1
    finally:
        srv.stop()


def test_admin_status_names_the_shard(tmp_path: Path) -> None:
    from controller.api.link import AdminServicer
    from proto import admin_pb2
    frames = frames_of(TRUNK)
    rec, _ = run(tmp_path, "s", frames, ShardIdentity("shard-1", ring_of(2)))
    st = asyncio.run(AdminServicer(rec).GetStatus(admin_pb2.StatusRequest(), None))
    assert (st.shard_id, list(st.ring)) == ("shard-1", ["shard-0", "shard-1"])
    assert st.not_owned_packets == rec.status()["not_owned_packets"] > 0
    assert st.ring_refused == 0
    plain, _ = run(tmp_path, "p", frames[:10])
    st = asyncio.run(AdminServicer(plain).GetStatus(admin_pb2.StatusRequest(), None))
    assert (st.shard_id, list(st.ring), st.not_owned_packets) == ("", [], 0)

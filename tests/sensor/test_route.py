"""sensor/route.py: every packet of one call reaches one shard (issue #12).

Frames come from the project's generators (scripts/gencalls.py, the builders of
tests/controller/test_media_routing.py) and from the shared real captures; the
truth (which Call-ID a frame carries, which endpoints its SDP names) is taken
independently of the router: from the generator's plans, parse_sip, or tshark.
"""
from __future__ import annotations

import struct
import subprocess
from collections import defaultdict

import pytest

from protocols.layers import str_to_ip
from protocols.pcapfile import read_frames
from protocols.sip import looks_like_sip, parse_sip
from registry.ring import Ring, Shard
from scripts.gencalls import frames as gen_frames, frames_for, plan
from sensor.classify import Classifier
from sensor.route import BROADCAST, ShardRouter, ShardListError, parse_shards
from tests.conftest import CALL_CAPTURES, CAPTURES, require_tool
from tests.controller.test_media_routing import rtp, sdp, sip, udp_frame

S = 1_000_000_000


def ring(n: int = 3) -> Ring:
    return Ring([Shard(f"s{i}", f"127.0.0.1:{7600 + i}") for i in range(n)])


def tcp_frame(src: str, sport: int, dst: str, dport: int, payload: bytes, seq: int = 1) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + len(payload), 7, 0, 64, 6, 0,
                     str_to_ip(src), str_to_ip(dst))
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, 0x18, 65535, 0, 0)
    return b"\x00" * 12 + b"\x08\x00" + ip + tcp + payload


def fragments(src: str, sport: int, dst: str, dport: int, payload: bytes, ip_id: int,
              size: int = 600) -> list[bytes]:
    """One UDP datagram as IPv4 fragments of `size` bytes (a multiple of 8)."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    out = []
    for off in range(0, len(udp), size):
        chunk = udp[off:off + size]
        more = off + size < len(udp)
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(chunk), ip_id,
                         (0x2000 if more else 0) | (off >> 3), 64, 17, 0, str_to_ip(src), str_to_ip(dst))
        out.append(b"\x00" * 12 + b"\x08\x00" + ip + chunk)
    return out


def call_id_of(data: bytes) -> str | None:
    """The Call-ID of a UDP SIP frame (Ethernet, IPv4, no options), by parse_sip."""
    payload = data[42:]
    if not looks_like_sip(payload):
        return None
    return parse_sip(payload).call_id


# -- generated calls -------------------------------------------------------------
def test_gencalls_every_call_on_one_shard_with_its_media() -> None:
    plans = plan(40, duration=4.0, concurrent=40, seed=3)
    frames = list(frames_for(plans, seed=3))
    router = ShardRouter(ring(3))
    shards: list[int] = []
    for i in range(0, len(frames), 256):
        shards += router.assign(1, frames[i:i + 256])
    assert BROADCAST not in shards
    by_call: dict[str, set[int]] = defaultdict(set)
    for (_, data), shard in zip(frames, shards):
        cid = call_id_of(data)
        if cid is not None:
            by_call[cid].add(shard)
    assert len(by_call) == 40 and all(len(v) == 1 for v in by_call.values())
    owner = {cid: next(iter(v)) for cid, v in by_call.items()}
    assert len(set(owner.values())) == 3            # the calls are spread over the shards
    endpoint_call = {}
    for p in plans:
        for ip, port in ((p.caller_ip, p.caller_rtp_port), (p.callee_ip, p.callee_rtp_port)):
            endpoint_call[(str_to_ip(ip), port)] = p.call_id
            endpoint_call[(str_to_ip(ip), port + 1)] = p.call_id   # RTCP
    media = 0
    for (_, data), shard in zip(frames, shards):
        if call_id_of(data) is not None:
            continue
        src, dst = data[26:30], data[30:34]
        sport, dport = struct.unpack_from("!HH", data, 34)
        cid = endpoint_call.get((dst, dport)) or endpoint_call[(src, sport)]
        assert shard == owner[cid]
        media += 1
    assert media > 1000
    c = router.counters
    assert sum(c.routed) == len(frames) and c.broadcast == 0 and c.endpoints_learned == 160


def test_copies_of_a_frame_land_on_the_same_shard() -> None:
    frames = list(gen_frames(calls=6, duration=2.0, concurrent=6, seed=5))
    doubled = []
    for ts, data in frames:
        vlan = data[:12] + b"\x81\x00\x00\x07" + data[12:]    # a second mirror: VLAN-tagged copy
        doubled += [(ts, data), (ts, bytes(data)), (ts + 1000, vlan)]
    shards = ShardRouter(ring(4)).assign(1, doubled)
    for i in range(0, len(shards), 3):
        assert shards[i] == shards[i + 1] == shards[i + 2] != BROADCAST


def test_split_keeps_capture_order_and_batches_interleave_broadcast() -> None:
    frames = list(gen_frames(calls=4, duration=1.0, concurrent=4, seed=2))[:200]
    tcp = (frames[50][0], tcp_frame("10.9.0.1", 5080, "10.9.0.2", 5060, b"OPTIONS sip:x SIP/2.0\r\n"))
    junk = (frames[120][0], b"\x01\x02\x03")
    mixed = frames[:51] + [tcp] + frames[51:121] + [junk] + frames[121:]
    router = ShardRouter(ring(2))
    per, everyone = router.split(1, mixed)
    assert everyone == [tcp, junk]
    assert sum(map(len, per)) == len(frames)
    for lst in per:
        assert [mixed.index(f) for f in lst] == sorted(mixed.index(f) for f in lst)
    runs = router.batches(1, mixed)
    for i, shard_runs in enumerate(runs):
        flat = [f for _, part in shard_runs for f in part]
        assert flat == [f for f in mixed if f in per[i] or f in everyone]
        assert [b for b, part in shard_runs if tcp in part or junk in part] == [True, True]


# -- SIP details ---------------------------------------------------------------------
def test_leg_header_compact_form_malformed_and_fragmented_sip_follow_their_call() -> None:
    r = ShardRouter(ring(5))
    a, b = "10.0.0.1", "10.0.0.2"
    invite = sip("INVITE sip:bob@example.com SIP/2.0", "leg-a@x", "1 INVITE", "t1", None, a, a,
                 sdp(a, 30000))
    # the B2BUA's second leg names the first one: same shard (RouteTable key)
    leg_b = sip("INVITE sip:bob@example.com SIP/2.0", "leg-b@y", "1 INVITE", "t2", None, b, b,
                sdp(b, 31000)).replace(b"Call-ID:", b"X-Call-ID: leg-a@x\r\nCall-ID:", 1)
    bye_b = sip("BYE sip:bob@example.com SIP/2.0", "leg-b@y", "2 BYE", "t2", "u", b, b)
    compact = sip("INFO sip:bob@example.com SIP/2.0", "leg-a@x", "3 INFO", "t1", "u", a, a) \
        .replace(b"Call-ID:", b"i:", 1)
    cut = sip("INVITE sip:bob@example.com SIP/2.0", "leg-a@x", "1 INVITE", "t1", None, a, a,
              sdp(a, 30000))[:-40]              # Content-Length says more: SipError -> regex
    no_cid = b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h\r\n\r\n"
    frames = [(S, udp_frame(a, 5060, b, 5060, invite)),
              (S + 1, udp_frame(b, 5060, "10.0.0.3", 5060, leg_b)),
              (S + 2, udp_frame(b, 5060, "10.0.0.3", 5060, bye_b)),
              (S + 3, udp_frame(a, 5060, b, 5060, compact)),
              (S + 4, udp_frame(a, 5060, b, 5060, cut)),
              (S + 5, udp_frame(a, 5060, b, 5060, no_cid)),
              # media of both legs' SDP, before any Expect
              (S + 6, udp_frame("10.7.7.7", 40000, a, 30000, rtp(1, 160, 9, b"\xff" * 160))),
              (S + 7, udp_frame(b, 31001, "10.7.7.7", 40001, b"\x81\xc8\x00\x06" + bytes(24)))]
    shards = r.assign(1, frames)
    home = r.ring.owner("leg-a@x")
    assert shards == [home] * 5 + [BROADCAST] + [home] * 2
    assert r.counters.sip_by_regex == 1 and r.counters.sip_broadcast == 1

    # a big INVITE in IPv4 fragments: the first by its Call-ID (regex), the rest follow it,
    # and the SDP (in the last fragment) is learned from the re-assembled datagram
    big = sip("INVITE sip:carol@example.com SIP/2.0", "frag@z", "1 INVITE", "t9", None, a, a,
              sdp(a, 32000, "a=x-pad:" + "p" * 1500 + "\r\n"))
    parts = fragments(a, 5060, b, 5060, big, ip_id=777)
    assert len(parts) >= 3
    lost = fragments(a, 5060, b, 5060, big, ip_id=778)[1:]      # first fragment never seen
    got = r.assign(1, [(2 * S + i, f) for i, f in enumerate(parts + lost)]
                   + [(3 * S, udp_frame("10.7.7.7", 40000, a, 32000, rtp(1, 160, 9, b"\xff" * 160)))])
    owner = r.ring.owner("frag@z")
    assert got == [owner] * len(parts) + [BROADCAST] * len(lost) + [owner]


def test_tcp_broadcast_learns_sdp_and_expect_pins_endpoints() -> None:
    r = ShardRouter(ring(3))
    a, b = "10.1.0.1", "10.1.0.2"
    invite = sip("INVITE sip:bob@example.com SIP/2.0", "tcp-call", "1 INVITE", "t1", None, a, a,
                 sdp(a, 34000))
    rtp_frame = udp_frame("10.8.8.8", 50000, a, 34000, rtp(1, 160, 5, b"\xff" * 160))
    assert r.assign(1, [(S, tcp_frame(a, 5060, b, 5060, invite)), (S + 1, rtp_frame)]) == \
        [BROADCAST, r.ring.owner("tcp-call")]
    # media another site's SDP announced, before any SDP here: the announcing shard's
    heur = udp_frame("10.8.8.9", 50002, "10.2.0.9", 36000, rtp(1, 160, 6, b"\xff" * 160))
    before = r.assign(1, [(S + 2, heur)])[0]
    pinned = (before + 1) % 3
    r.expect(pinned, [(str_to_ip("10.2.0.9"), 36000)])
    assert r.assign(1, [(S + 3, heur)]) == [pinned]
    assert r.counters.endpoints_expected == 1


def test_tables_are_bounded_and_expire() -> None:
    r = ShardRouter(ring(2), max_endpoints=100, max_fragments=10)
    msgs = []
    for i in range(80):
        ip = f"10.3.{i // 200}.{i % 200 + 1}"
        body = sip("INVITE sip:b@x SIP/2.0", f"c{i}", "1 INVITE", "t", None, ip, ip, sdp(ip, 20000))
        msgs.append((S + i, udp_frame(ip, 5060, "10.9.9.9", 5060, body)))
    r.assign(1, msgs)
    assert r.endpoints <= 100
    r.assign(1, [(3 * 3600 * S, udp_frame("1.1.1.1", 1, "2.2.2.2", 2, b"x"))])
    assert r.endpoints == 0                      # 2 h without traffic


def test_parse_shards() -> None:
    assert parse_shards("h:1") == [("h:1", "h:1")]
    assert parse_shards("a=h:1, b=[::1]:2,h3:3") == [("a", "h:1"), ("b", "[::1]:2"), ("h3:3", "h3:3")]
    for bad in ("a=h:1,", "a=h", "a=h:1,a=g:2", "a b=h:1", "..=h:1", "a=h:99999"):
        with pytest.raises(ShardListError):
            parse_shards(bad)


# -- real captures ---------------------------------------------------------------------
def _tshark_truth(path) -> dict[int, tuple[str, list[tuple[str, int]]]]:
    """frame number -> (Call-ID, [(SDP connection address, media port)]) for SIP frames."""
    tshark = require_tool("tshark")
    out = subprocess.run(
        [tshark, "-n", "-r", str(path), "-Y", "sip", "-T", "fields", "-E", "separator=\t",
         "-E", "occurrence=a", "-E", "aggregator=|", "-e", "frame.number", "-e", "sip.Call-ID",
         "-e", "sdp.connection_info.address", "-e", "sdp.media.port"],
        capture_output=True, text=True, timeout=120, check=True).stdout
    truth = {}
    for line in out.splitlines():
        num, cids, addrs, ports = (line.split("\t") + ["", "", ""])[:4]
        ids = set(filter(None, cids.split("|")))
        if len(ids) != 1:
            continue
        addr_list, port_list = addrs.split("|") if addrs else [], ports.split("|") if ports else []
        eps = [(a, int(p)) for a, p in zip(addr_list, port_list) if p.isdigit()] \
            if len(addr_list) == len(port_list) else []
        truth[int(num)] = (ids.pop(), eps)
    return truth


@pytest.mark.parametrize("name", CALL_CAPTURES)
def test_real_captures_one_shard_per_call(name: str) -> None:
    path = CAPTURES / name
    if not path.is_file():
        pytest.skip(f"sample capture {name} not available at {CAPTURES}")
    truth = _tshark_truth(path)
    raw = list(read_frames(path))
    number = {}
    classifier = Classifier()
    router = ShardRouter(ring(3))
    shard_of: dict[int, int] = {}
    linktype = raw[0][1] if raw else 1
    for i in range(0, len(raw), 256):
        chunk = [(ts, data) for ts, _lt, data in raw[i:i + 256]]
        for j, f in enumerate(chunk):
            number[id(f)] = i + j + 1
        accepted = classifier.accept_batch(linktype, chunk)
        for f, shard in zip(accepted, router.assign(linktype, accepted)):
            shard_of[number[id(f)]] = shard
    by_call: dict[str, set[int]] = defaultdict(set)
    for num, (cid, _eps) in truth.items():
        shard = shard_of.get(num, BROADCAST)
        if shard != BROADCAST:
            by_call[cid].add(shard)
    assert all(len(v) == 1 for v in by_call.values()), by_call
    # RTP to an endpoint one call's SDP named (after that SDP) goes to the call's shard
    named: dict[tuple[bytes, int], set[str]] = defaultdict(set)
    since: dict[tuple[bytes, int], int] = {}
    for num, (cid, eps) in sorted(truth.items()):
        for addr, port in eps:
            try:
                key = (str_to_ip(addr), port)
            except ValueError:
                continue
            named[key].add(cid)
            since.setdefault(key, num)
    from protocols.layers import decode
    checked = 0
    for num, shard in shard_of.items():
        if num in truth or shard == BROADCAST:
            continue
        d = decode(linktype, raw[num - 1][2])
        if d.proto != 17 or d.is_fragment:
            continue
        for key in ((d.dst, d.dport), (d.src, d.sport)):
            cids = named.get(key)
            if cids and len(cids) == 1 and since[key] < num:
                cid = next(iter(cids))
                if cid in by_call:
                    assert shard in by_call[cid], (num, cid)
                    checked += 1
                break
    assert checked >= {"sip-rtp-g711.pcap": 400, "SIP_CALL_RTP_G711": 400}.get(name, 0)

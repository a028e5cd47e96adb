"""What several mirrors, tunnels and the network do to one call, through the
real path: `spanrec record FILE...` (controller in the process, one replay
sensor process per file, gRPC on loopback, a LocalStore folder).

The inputs are built here from a public capture (sip-rtp-g711.pcap: two
G.711 calls, SIP over UDP) and written as pcap files; what they hold is
checked with tshark, and the expectations come from tshark or from the
recording of the unmodified capture, never from the recording under test.

Covered elsewhere, not repeated here: an identical second copy (same bytes
and times) by two sensors (tests/e2e/test_record.py), dedup keys and windows
in isolation (tests/controller/test_order_dedup.py), tunnel decode against
tshark (tests/protocols/test_tunnels.py), an IPv6-fragmented INVITE through
the call engine (tests/controller/test_calls_captures.py).

test_media_copy_400ms_later_is_dropped guards the media window: RTP once got
the 300 ms SIP window (RTP's first byte 0x80 passed the "starts with a
letter" test).
"""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import capture, require_tool
from tests.controller import tshark_calls as tc
from tests.protocols._build import (
    erspan2, erspan3, ethernet, gre, ipv4, ipv4_fragments, ipv4_with_checksum, read_classic_pcap,
    udp, vlan_tagged, vxlan, write_classic_pcap)

REPO = Path(__file__).resolve().parents[2]
G711 = "sip-rtp-g711.pcap"
CALL1 = "1-1966@10.0.2.20"          # frames 1-433 of G711 (tshark), its INVITE is frame 1
MS = 1_000_000

# `spanrec record` as the user runs it; the only addition: the Recorder that
# `spanrec record` builds is kept, and its status() (dedup counters per sensor)
# written to a file when the command is done.
_DRIVER = r"""
import json, sys
import cli.record
built = []
_real = cli.record.build_recorder
def _keep(*a, **k):
    rec = _real(*a, **k)
    built.append(rec)
    return rec
cli.record.build_recorder = _keep
from cli.main import cli
try:
    cli.main(args=sys.argv[2:], prog_name="spanrec", standalone_mode=False)
finally:
    if built:
        with open(sys.argv[1], "w") as f:
            json.dump(built[0].status(), f)
"""


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    require_tool("tshark")


# ---- running spanrec record ---------------------------------------------------

class Run:
    def __init__(self, out: Path, status: dict) -> None:
        self.out = out
        self.status = status
        self.recordings: dict[str, dict[str, bytes]] = {}
        for meta in out.rglob("call.json"):
            folder = meta.parent
            self.recordings[folder.name] = {p.name: p.read_bytes() for p in folder.iterdir()}

    def meta(self, rec_id: str) -> dict:
        return json.loads(self.recordings[rec_id]["call.json"])

    def by_call_id(self, call_id: str) -> tuple[str, dict]:
        (hit,) = [(rid, m) for rid in self.recordings
                  if call_id in (m := self.meta(rid))["call_ids"]]
        return hit

    def dropped(self, sensor_id: str) -> int:
        (s,) = [s for s in self.status["sensors"] if s["sensor_id"] == sensor_id]
        return s["duplicates_dropped"]

    def counters(self, sensor_id: str) -> dict[str, int]:
        """The sensor's own counters (captured, forwarded, filtered) from its last report."""
        (s,) = [s for s in self.status["sensors"] if s["sensor_id"] == sensor_id]
        return s["counters"]

    def received(self, sensor_id: str) -> int:
        (s,) = [s for s in self.status["sensors"] if s["sensor_id"] == sensor_id]
        return s["packets_received"]


def record(files: list[Path], out: Path) -> Run:
    status_file = out.with_name(out.name + "-status.json")
    proc = subprocess.run(
        [sys.executable, "-c", _DRIVER, str(status_file), "record", *map(str, files),
         "--out", str(out), "--no-progress", "-o", "json"],
        cwd=REPO, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return Run(out, json.loads(status_file.read_text()))


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Run:
    """The unmodified capture, one sensor: the reference recording."""
    return record([capture(G711)], tmp_path_factory.mktemp("plain") / "rec")


# ---- tshark ----------------------------------------------------------------------

def tshark_fields(path: Path, display_filter: str, *names: str, extra: tuple[str, ...] = ()) \
        -> list[list[str]]:
    args = ["tshark", "-n", "-r", str(path), *extra, "-Y", display_filter, "-T", "fields"]
    for n in names:
        args += ["-e", n]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=60).stdout
    return [line.split("\t") for line in out.splitlines() if line.strip()]


def tshark_count(path: Path, display_filter: str, extra: tuple[str, ...] = ()) -> int:
    return len(tshark_fields(path, display_filter, "frame.number", extra=extra))


def frames_of(path: Path) -> list[tuple[int, bytes]]:
    linktype, frames = read_classic_pcap(path)
    assert linktype == 1
    return frames


def pcap_frames(data: bytes, tmp: Path) -> list[tuple[int, bytes]]:
    """Frames of a recording's call.pcap, read by the test's own reader."""
    tmp.write_bytes(data)
    return frames_of(tmp)


# ---- building the inputs ------------------------------------------------------------

def mirror_copy(frames: list[tuple[int, bytes]],
                delay_ns: int = 30 * MS) -> list[tuple[int, bytes]]:
    """What a second mirror one router hop away sees: other MACs, TTL - 1 (IPv4 header
    checksum computed again), 30 ms later."""
    out = []
    for ts, fr in frames:
        assert fr[12:14] == b"\x08\x00"
        ip = bytearray(fr[14:])
        ip[8] -= 1
        out.append((ts + delay_ns, b"\x06\x00\x00\x00\x01\x01" + b"\x06\x00\x00\x00\x01\x02"
                    + fr[12:14] + ipv4_with_checksum(bytes(ip))))
    return out


def test_mirror_copy_is_what_tshark_says(tmp_path: Path) -> None:
    """The constructed copy: every frame with TTL - 1, a header checksum tshark finds good,
    other MACs, 30 ms later, and otherwise the same IP datagram."""
    src = capture(G711)
    copy = tmp_path / "copy.pcap"
    write_classic_pcap(copy, mirror_copy(frames_of(src)))
    fields = ("frame.time_epoch", "eth.src", "ip.ttl", "ip.id", "ip.checksum.status", "udp.payload")
    check = ("-o", "ip.check_checksum:TRUE")
    a = tshark_fields(src, "ip", *fields, extra=check)
    b = tshark_fields(copy, "ip", *fields, extra=check)
    assert len(a) == len(b) == len(frames_of(src)) > 800
    for x, y in zip(a, b):
        assert tc.epoch_ns(y[0]) - tc.epoch_ns(x[0]) == 30 * MS
        assert y[1] != x[1] and int(y[2]) == int(x[2]) - 1 and y[3] == x[3] and y[5] == x[5]
        assert y[4] == "1"                                   # "Good"


# ---- a) the same call through two sensors ---------------------------------------------

_COUNTERS = {"sensors", "copies_dropped", "copies_dropped_by_sensor"}


def without_counters(value):
    """call.json without who-sent-what: sensors and copy counters, at any depth."""
    if isinstance(value, dict):
        return {k: without_counters(v) for k, v in value.items() if k not in _COUNTERS}
    if isinstance(value, list):
        return [without_counters(v) for v in value]
    return value


def test_second_mirror_copy_is_dropped_and_recordings_are_identical(tmp_path: Path,
                                                                    plain: Run) -> None:
    src = capture(G711)
    copy = tmp_path / "site-b.pcap"
    write_classic_pcap(copy, mirror_copy(frames_of(src)))
    two = record([src, copy], tmp_path / "two")

    # every packet of the second file is a copy: all that its sensor forwarded are dropped,
    # none of the first sensor's. (The sensors filter the same 3 of 852 frames: UDP that is
    # neither SIP nor RTP — two to a port before an SDP names it, one 0xffffffff keep-alive
    # on a media port that tshark calls RTP by its SDP conversation although it is not RTP
    # version 2 (issue 11: SDP endpoints take RTP-shaped datagrams only); every SIP and
    # RTP frame goes.)
    n_copy = tshark_count(copy, "frame")
    n_voip = tshark_count(copy, "sip || (rtp && rtp.version == 2)")
    a, b = two.counters("replay-1"), two.counters("replay-2")
    assert a["captured"] == b["captured"] == n_copy
    assert n_voip <= b["forwarded"] == a["forwarded"] <= n_copy
    assert two.received("replay-2") == b["forwarded"]
    assert two.dropped("replay-2") == b["forwarded"]
    assert two.dropped("replay-1") == 0
    assert two.status["duplicates_dropped"] == b["forwarded"]
    assert plain.status["duplicates_dropped"] == 0

    # the same recordings as one sensor's, byte for byte; call.json too (sensors included:
    # the first sensor's packets are 30 ms earlier, so they are the ones kept)
    assert set(two.recordings) == set(plain.recordings)
    assert len(two.recordings) == len(tc.expected_calls(src)) == 2
    for rid, files in plain.recordings.items():
        assert sorted(two.recordings[rid]) == sorted(files) \
            == ["audio.wav", "call.json", "call.pcap"]
        assert without_counters(two.meta(rid)) == without_counters(plain.meta(rid))
        assert two.meta(rid)["sensors"] == ["replay-1"]
        if "copies_dropped" in two.meta(rid):  # per-call copy counters, where call.json has them
            m = two.meta(rid)
            assert m["copies_dropped"] == plain.meta(rid)["pcap_packets"]
            assert m["copies_dropped_by_sensor"] == {"replay-2": m["copies_dropped"]}
        assert two.recordings[rid]["call.pcap"] == files["call.pcap"]
        assert two.recordings[rid]["audio.wav"] == files["audio.wav"]


def test_media_copy_400ms_later_is_dropped(tmp_path: Path, plain: Run) -> None:
    """docs/ARCHITECTURE.md (Dedup): a media packet is a copy when its key was seen less than
    1 s earlier. The second mirror's copies 400 ms late: its non-SIP packets are all dropped
    (its SIP copies, past the 300 ms SIP window, are kept as retransmissions by design)."""
    src = capture(G711)
    copy = tmp_path / "site-b-400ms.pcap"
    write_classic_pcap(copy, mirror_copy(frames_of(src), 400 * MS))
    two = record([src, copy], tmp_path / "two")
    forwarded = two.counters("replay-2")["forwarded"]
    assert two.dropped("replay-2") == forwarded - tshark_count(copy, "sip")
    for rid in plain.recordings:
        assert [s["packets"] for s in two.meta(rid)["streams"]] == \
            [s["packets"] for s in plain.meta(rid)["streams"]]


# ---- b) a SIP retransmission is not a copy ------------------------------------------------

def _retransmitted(tmp_path: Path) -> tuple[list[tuple[int, bytes]], Path, Path]:
    """G711 with the caller's INVITE sent again 500 ms later as the very same IP datagram
    (same IP ID: what a stack with IP ID 0 under DF sends) and again 1.5 s later with a
    new IP ID, the rest of the capture 1.5 s later; and a second mirror's copy of it all."""
    src = capture(G711)
    frames = frames_of(src)
    t0, invite = frames[0]
    assert tshark_fields(src, "frame.number == 1", "sip.Method", "sip.Call-ID") \
        == [["INVITE", CALL1]]
    ip = bytearray(invite[14:])
    ip[4:6] = struct.pack("!H", (struct.unpack("!H", ip[4:6])[0] + 0x100) & 0xFFFF)
    new_id = invite[:14] + ipv4_with_checksum(bytes(ip))
    shift = 1500 * MS
    retx = [(t0, invite), (t0 + 500 * MS, invite), (t0 + shift, new_id)] \
        + [(ts + shift, fr) for ts, fr in frames[1:]]
    path = tmp_path / "retransmitted.pcap"
    write_classic_pcap(path, retx)
    site_b = tmp_path / "retransmitted-site-b.pcap"
    write_classic_pcap(site_b, mirror_copy(retx))
    return retx, path, site_b


@pytest.mark.parametrize("sensors", [1, 2])
def test_invite_retransmitted_after_500ms_is_kept(tmp_path: Path, sensors: int) -> None:
    """Both retransmissions are in call.pcap (the same-bytes one too); with a second
    mirror, its copies of all three INVITEs (+30 ms) are dropped."""
    retx, path, site_b = _retransmitted(tmp_path)
    # tshark: three INVITEs of the call, the later two retransmissions, one with the same IP ID
    rows = tshark_fields(path, f'sip.Call-ID == "{CALL1}" && sip.Method == "INVITE"',
                         "ip.id", "sip.resend")
    assert [r[1] for r in rows] == ["0", "1", "1"] and rows[0][0] == rows[1][0] != rows[2][0]
    want_sip = tshark_count(path, f'sip.Call-ID == "{CALL1}"')
    want_resent = tshark_count(path, f'sip.Call-ID == "{CALL1}" && sip.resend == 1')

    run = record([path, site_b][:sensors], tmp_path / "rec")
    rid, meta = run.by_call_id(CALL1)
    pcap = tmp_path / "call.pcap"
    pcap.write_bytes(run.recordings[rid]["call.pcap"])
    assert tshark_count(pcap, "sip") == want_sip
    assert tshark_count(pcap, 'sip.Method == "INVITE"') == 3
    assert tshark_count(pcap, "sip.resend == 1") == want_resent == 2
    assert frames_of(pcap)[:3] == retx[:3]                  # the three INVITEs as captured
    assert (meta["sip_packets"], meta["sip_retransmissions"]) == (want_sip, want_resent)
    assert meta["status"] == "answered" and meta["sensors"] == ["replay-1"]
    assert run.dropped("replay-1") == 0
    if sensors == 2:       # every packet the second mirror's sensor forwarded was a copy
        assert run.dropped("replay-2") == run.received("replay-2") \
            == run.received("replay-1") >= tshark_count(path, "sip || (rtp && rtp.version == 2)")


# ---- c) tunnelled and tagged copies -------------------------------------------------------

_OUTER_SRC, _OUTER_DST = bytes([192, 0, 2, 10]), bytes([192, 0, 2, 20])


def _outer(proto: int, body: bytes, i: int) -> bytes:
    return ethernet(0x0800, ipv4(proto, body, _OUTER_SRC, _OUTER_DST, ip_id=i & 0xFFFF))


ENCAPS = {
    # name: (frame builder (frame, index) -> frame, a protocol tshark shows in each frame)
    "vlan": (lambda fr, i: vlan_tagged(fr, 100), "vlan"),
    "qinq": (lambda fr, i: vlan_tagged(vlan_tagged(fr, 100), 200, tpid=0x88A8), "ieee8021ad"),
    "erspan-ii": (lambda fr, i: _outer(47, gre(0x88BE, erspan2(fr), seq=i), i), "erspan"),
    "erspan-iii": (lambda fr, i: _outer(47, gre(0x22EB, erspan3(fr, timestamp=i), seq=i), i),
                   "erspan"),
    "vxlan": (lambda fr, i: _outer(17, udp(49152 + i % 1000, 4789, vxlan(fr)), i), "vxlan"),
}


@pytest.mark.parametrize("encap", list(ENCAPS))
def test_encapsulated_copy_is_recorded_like_the_plain_call(tmp_path: Path, plain: Run,
                                                           encap: str) -> None:
    build, layer = ENCAPS[encap]
    src = capture(G711)
    frames = frames_of(src)
    wrapped = [(ts, build(fr, i)) for i, (ts, fr) in enumerate(frames)]
    path = tmp_path / f"{encap}.pcap"
    write_classic_pcap(path, wrapped)

    # tshark sees the tunnel in every frame and the same calls and media inside
    protos = tshark_fields(path, "frame", "frame.protocols")
    assert len(protos) == len(frames) and all(layer in p[0].split(":") for p in protos)
    if encap == "qinq":                      # 802.1ad S-tag, then the 802.1Q C-tag
        assert all(":ieee8021ad:ethertype:vlan:ethertype:ip:" in p[0] for p in protos)
    want = tc.expected_calls(src)
    got = tc.expected_calls(path)
    assert {c: (e.status, e.final_response, len(e.rows)) for c, e in got.items()} == \
        {c: (e.status, e.final_response, len(e.rows)) for c, e in want.items()}
    assert {(s.src, s.sport, s.ssrc, s.packets, s.lost) for s in tc.rtp_streams(path)} == \
        {(s.src, s.sport, s.ssrc, s.packets, s.lost) for s in tc.rtp_streams(src)}

    run = record([path], tmp_path / "rec")
    assert set(run.recordings) == set(plain.recordings)
    keep = ("call_ids", "from", "to", "status", "final_response", "end_reason", "started_at",
            "answered_at", "ended_at", "streams", "dtmf", "pcap_packets", "sip_packets",
            "rtp_packets", "rtcp_packets")
    original = {(ts, fr): wrapped[i][1] for i, (ts, fr) in enumerate(frames)}
    for rid, files in plain.recordings.items():
        a, b = plain.meta(rid), run.meta(rid)
        assert {k: b[k] for k in keep} == {k: a[k] for k in keep}, rid
        assert run.recordings[rid]["audio.wav"] == files["audio.wav"], rid
        # call.pcap: the frames as captured, i.e. the same packets, wrapped
        ref = pcap_frames(files["call.pcap"], tmp_path / "ref.pcap")
        mine = pcap_frames(run.recordings[rid]["call.pcap"], tmp_path / "mine.pcap")
        assert mine == [(ts, original[(ts, fr)]) for ts, fr in ref], rid
        # tshark agrees on the call's SIP in the recorded pcap
        (cid,) = b["call_ids"]
        assert tshark_count(tmp_path / "mine.pcap", f'sip.Call-ID == "{cid}"') \
            == len(want[cid].rows)


# ---- d) an IPv4-fragmented INVITE ---------------------------------------------------------

_CALLEE_RTP_PORT = 27942     # callee's SDP (200 OK, frame 4): audio 27942 at 10.0.2.15
_SENT_FROM = 27950           # the port the callee's RTP is rewritten to come from


def _asymmetric(frames: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """The callee's RTP of call 1 sent from a port no SDP names (UDP checksum 0 = none):
    it can then only be matched by where it goes, 10.0.2.20:6000 from the INVITE's SDP."""
    out = []
    for ts, fr in frames:
        if fr[23] == 17 and fr[26:34] == bytes([10, 0, 2, 15, 10, 0, 2, 20]) \
                and struct.unpack("!HH", fr[34:38]) == (_CALLEE_RTP_PORT, 6000):
            fr = fr[:34] + struct.pack("!H", _SENT_FROM) + fr[36:40] + b"\0\0" + fr[42:]
        out.append((ts, fr))
    return out


def test_fragmented_invite_sdp_matches_the_media(tmp_path: Path, plain: Run) -> None:
    src = capture(G711)
    base = _asymmetric(frames_of(src))
    t0, invite = base[0]
    body_at = invite.index(b"\r\n\r\n") + 4 - 34          # SDP start, in the IP payload
    first = (body_at - 16) // 8 * 8                        # the SDP wholly in fragment 2
    frag1, frag2 = ipv4_fragments(invite, first)
    fragmented = [(t0, frag1), (t0 + 10_000, frag2)] + base[1:]
    base_path, frag_path = tmp_path / "asymmetric.pcap", tmp_path / "fragmented.pcap"
    write_classic_pcap(base_path, base)
    write_classic_pcap(frag_path, fragmented)

    # tshark: two fragments, the INVITE (with its SDP) only in the reassembled datagram;
    # the callee's RTP comes from a port no SDP announces and goes to the INVITE's 6000
    rows = tshark_fields(frag_path, "frame.number <= 2", "ip.flags.mf", "ip.frag_offset", "ip.id")
    assert [(r[0], r[2]) for r in rows] == [("1", "0xfe17"), ("0", "0xfe17")]
    # (tshark versions give the offset in bytes or in 8-byte units)
    assert rows[0][1] == "0" and first in (int(rows[1][1]), int(rows[1][1]) * 8)
    assert tshark_count(frag_path, "sdp", extra=("-o", "ip.defragment:FALSE")) == 3
    sdp = tshark_fields(frag_path, f'sip.Call-ID == "{CALL1}" && sdp', "frame.number",
                        "sdp.connection_info", "sdp.media")
    assert sdp == [["2", "IN IP4 10.0.2.20", "audio 6000 RTP/AVP 0"],        # the INVITE
                   ["5", "IN IP4 10.0.2.15", "audio 27942 RTP/AVP 0 101"]]   # its 200 OK
    (stream,) = [s for s in tc.rtp_streams(frag_path) if s.sport == _SENT_FROM]
    assert (stream.src, stream.dst, stream.dport) == ("10.0.2.15", "10.0.2.20", 6000)

    run = record([frag_path], tmp_path / "rec")
    rid, meta = run.by_call_id(CALL1)
    assert meta["status"] == tc.expected_calls(frag_path)[CALL1].status == "answered"
    assert [(s["src"], s["dst"], s["ssrc"], s["packets"], s["lost"]) for s in meta["streams"]] == \
        [(f"10.0.2.15:{_SENT_FROM}", "10.0.2.20:6000", stream.ssrc, stream.packets, stream.lost)]
    assert meta["streams"][0]["used_for_audio"]
    # the same audio as the unmodified call (same payloads, only another source port)
    prid, _ = plain.by_call_id(CALL1)
    assert prid == rid
    assert run.recordings[rid]["audio.wav"] == plain.recordings[prid]["audio.wav"]
    # call.pcap: the two fragments as captured, never the rebuilt datagram
    frames = pcap_frames(run.recordings[rid]["call.pcap"], tmp_path / "call.pcap")
    assert frames[:2] == fragmented[:2]
    assert all(fr != invite for _, fr in frames)
    ref = pcap_frames(plain.recordings[prid]["call.pcap"], tmp_path / "plain.pcap")
    assert len(frames) == len(ref) + 1
    assert tshark_count(tmp_path / "call.pcap", f'sip.Call-ID == "{CALL1}"') == \
        tshark_count(src, f'sip.Call-ID == "{CALL1}"')

"""RTP streams of each call against tshark: which streams, which direction, how many packets.

Expected mapping, computed from tshark only with the documented rules: a
stream belongs to the call whose SDP (the latest before the stream's first
packet) announced its destination (sender = the other side) or its source
(symmetric RTP: sender = that side); a stream on unannounced ports with the
SSRC of such a stream and an address the call announced is a media relay's
other leg (same sender).
"""
from __future__ import annotations

import pytest

from tests.conftest import capture, require_tool
from tests.controller import tshark_calls as tc
from tests.controller.tshark_calls import expected_recordings

MEDIA_CAPTURES = [
    "MagicJack-_short_call.pcap",
    "nb6-telephone.pcap",
    "rtp_conversacion.pcap",
    "sip-rtp-g711.pcap",
    "sip-rtp-g722.pcap",
    "sip-rtp-opus.pcap",
    "SIP_DTMF2.cap",
    "SIP_CALL_RTP_G711",
    "FAX-Call-t38-CA-TDM-SIP-FB-1.pcap",
    "SIP-RTP-Normal_Call_two_parties.pcap",
    "sip_ipv4_tcp.pcap",
    "aaa.pcap",
]

Key = tuple[str, int, str, int, int]


@pytest.fixture(scope="module", autouse=True)
def _tshark() -> None:
    require_tool("tshark")


def _endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def expected_streams(path) -> dict[str, dict[Key, str]]:
    """call id -> {stream key: sender side}, from tshark."""
    first_ns: dict[Key, int] = {}
    for p in tc.rtp_packets(path):
        first_ns.setdefault((p.src, p.sport, p.dst, p.dport, p.ssrc), p.ts_ns)
    announced = tc.sdp_announcements(path)

    def owner(addr: str, port: int, at_ns: int) -> tc.SdpAnnouncement | None:
        best = None
        for a in announced:
            if a.addr == addr and a.port == port and a.ts_ns <= at_ns:
                best = a  # announcements are in capture order: keep the latest
        return best

    out: dict[str, dict[Key, str]] = {}
    unmapped = []
    for s in tc.rtp_streams(path):
        key = (s.src, s.sport, s.dst, s.dport, s.ssrc)
        start = first_ns.get(key)
        if start is None:
            continue
        a = owner(s.dst, s.dport, start)
        if a is not None:
            out.setdefault(a.call_id, {})[key] = "callee" if a.side == "caller" else "caller"
            continue
        a = owner(s.src, s.sport, start)
        if a is not None:
            out.setdefault(a.call_id, {})[key] = a.side
            continue
        unmapped.append(key)
    for key in unmapped:  # relay legs
        owners = {(cid, side) for cid, streams in out.items() for k, side in streams.items()
                  if k[4] == key[4]}
        if len(owners) == 1:
            cid, side = owners.pop()
            addrs = {a.addr for a in announced if a.call_id == cid}
            if key[0] in addrs or key[2] in addrs:
                out[cid][key] = side
    return out


def _got_streams(path) -> dict[str, dict[Key, dict]]:
    out = {}
    for cid, (call, rec) in tc.engine_run(path).by_call_id().items():
        streams = {}
        for s in rec.metadata["streams"]:
            src, sport = _endpoint(s["src"])
            dst, dport = _endpoint(s["dst"])
            streams[(src, sport, dst, dport, s["ssrc"])] = s
        out[cid] = streams
    return out


def _t38_mislabelled(path, key: Key) -> int:
    """RTP packets of a stream that tshark decodes as T.38: after a T.38 re-INVITE
    (even one refused with 488) tshark's SDP conversation turns the port into T.38.
    Counted from the raw UDP payloads tshark extracts (version 2, same SSRC)."""
    src, sport, dst, dport, ssrc = key
    rows = tc.fields(path, f"t38 && ip.src=={src} && udp.srcport=={sport} && ip.dst=={dst} "
                           f"&& udp.dstport=={dport}", ("udp.payload",))
    n = 0
    for (hexdata,) in rows:
        b = bytes.fromhex(hexdata.replace(":", ""))
        n += len(b) >= 12 and b[0] >> 6 == 2 and int.from_bytes(b[8:12], "big") == ssrc
    return n


@pytest.mark.parametrize("name", MEDIA_CAPTURES)
def test_streams_mapped_to_calls_like_tshark(name: str) -> None:
    path = capture(name)
    expected = expected_streams(path)
    got = _got_streams(path)
    tshark_by_key = {(s.src, s.sport, s.dst, s.dport, s.ssrc): s for s in tc.rtp_streams(path)}
    legs = {root: group for root, group in
            expected_recordings(name, tc.expected_calls(path)).items()}
    for cid, streams in got.items():
        exp = {}
        for leg in legs.get(cid, [cid]):   # a recording of B2BUA legs has all their streams
            exp.update(expected.get(leg, {}))
        assert set(streams) == set(exp), cid
        for key, s in streams.items():
            assert s["direction"] == exp[key], key
            ts = tshark_by_key[key]
            extra = _t38_mislabelled(path, key) if name.startswith("FAX") else 0
            assert s["packets"] == ts.packets + extra, key
            if not extra:
                assert s["lost"] == max(ts.lost, 0), key
            assert s["duplicates"] == 0


def test_fax_stream_counted_past_the_refused_t38_reinvite() -> None:
    """tshark stops counting 0x0EAF0EAF at the T.38 re-INVITE; its sequence
    numbers run on without a gap, so the whole stream is one RTP stream."""
    path = capture("FAX-Call-t38-CA-TDM-SIP-FB-1.pcap")
    got = _got_streams(path)
    streams = [s for c in got.values() for s in c.values() if s["ssrc"] == 0x0EAF0EAF]
    assert len(streams) == 1
    key = ("10.35.60.100", 15580, "10.23.1.52", 16756, 0x0EAF0EAF)
    assert streams[0]["packets"] == 1838 + _t38_mislabelled(path, key) == 3848
    assert streams[0]["lost"] == 0


def test_loss_counted_like_tshark() -> None:
    path = capture("SIP_DTMF2.cap")
    got = _got_streams(path)["25672@192.168.105.110"]
    lossy = [s for s in tc.rtp_streams(path) if s.lost > 0]
    assert lossy
    for s in lossy:
        assert got[(s.src, s.sport, s.dst, s.dport, s.ssrc)]["lost"] == s.lost


@pytest.mark.parametrize("name", ["SIP_CALL_RTP_G711", "SIP_DTMF2.cap"])
def test_one_stream_per_direction_used_for_audio(name: str) -> None:
    """Several streams carry one direction (relay legs): the one with most G.711 packets
    (tshark count, PT 0/8) is used; ties go to the one that started first."""
    path = capture(name)
    audio_pkts: dict[Key, int] = {}
    first: dict[Key, int] = {}
    for p in tc.rtp_packets(path):
        key = (p.src, p.sport, p.dst, p.dport, p.ssrc)
        first.setdefault(key, p.ts_ns)
        audio_pkts[key] = audio_pkts.get(key, 0) + (p.pt in (0, 8))
    for cid, streams in _got_streams(path).items():
        by_dir: dict[str, list[Key]] = {}
        for key, s in streams.items():
            by_dir.setdefault(s["direction"], []).append(key)
        for direction, keys in by_dir.items():
            best = min(keys, key=lambda k: (-audio_pkts[k], first[k]))
            used = [k for k in keys if streams[k]["used_for_audio"]]
            assert used == [best], (cid, direction)
            assert streams[best]["decoded"] is True
    if name == "SIP_CALL_RTP_G711":
        streams = _got_streams(path)["12013223@200.57.7.195"]
        assert len(streams) == 4, "both legs of the relay, each SSRC twice"
        assert sorted(s["ssrc"] for s in streams.values()) == [0x58F33DEA] * 2 + [0xD2BD4E3E] * 2


def test_wideband_codecs_are_decoded() -> None:
    """G.722 and Opus are decoded since issue #5 (sample checks: test_codecs.py); a
    codec that cannot be decoded is covered by test_audio_render.py."""
    for name, codec, rate in (("sip-rtp-opus.pcap", "OPUS", 48000), ("sip-rtp-g722.pcap", "G722", 16000)):
        run = tc.engine_run(capture(name))
        (rec,) = run.recordings
        (s,) = rec.metadata["streams"]
        assert (s["codec"], s["decoded"], s["used_for_audio"]) == (codec, True, True)
        assert rec.metadata["audio"]["sample_rate"] == rate and "audio.wav" in rec.files

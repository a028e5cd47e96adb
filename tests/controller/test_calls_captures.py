"""The call engine on every public capture with calls, checked against tshark.

Expectations come from tests/controller/tshark_calls.py (tshark fields + the
documented rules), never from spanrec's own output.
"""
from __future__ import annotations

import json

import pytest

from tests.conftest import CALL_CAPTURES, capture, require_tool
from tests.controller import tshark_calls as tc
from tests.controller.tshark_calls import expected_recordings

CAPTURES = CALL_CAPTURES

def _strip_params(uri: str) -> str:
    """tshark's sip.from.addr keeps URI parameters (;user=phone); call.json does not."""
    at = uri.find("@")
    semi = uri.find(";", at + 1 if at >= 0 else 0)
    return uri if semi < 0 else uri[:semi]


@pytest.fixture(scope="module", autouse=True)
def _tshark() -> None:
    require_tool("tshark")


@pytest.mark.parametrize("name", CAPTURES)
def test_calls_match_tshark(name: str) -> None:
    path = capture(name)
    expected = tc.expected_calls(path)
    run = tc.engine_run(path)
    recordings = expected_recordings(name, expected)
    got = {c.call_ids[0]: sorted(c.call_ids) for c in run.calls}
    assert got == {root: sorted(g) for root, g in recordings.items()}, \
        "one recording per Call-ID with an INVITE transaction, B2BUA legs merged"
    assert run.counters["internal_errors"] == 0
    for call, rec in zip(run.calls, run.recordings):
        exp = expected[call.call_ids[0]]
        meta = rec.metadata
        assert (meta["status"], meta["final_response"]) == (exp.status, exp.final_response), call.call_ids
        assert call.answered_ns == exp.answered_ns
        if name == "ipv6frag.pcap":
            # the INVITE is IPv6-fragmented: the call starts at its first fragment,
            # tshark dates the reassembled INVITE at its last fragment
            assert 0 <= exp.first_ns - call.started_ns < 50_000_000
        else:
            assert call.started_ns == exp.first_ns
        if exp.bye_ns is not None and exp.status == "answered":
            # a call of several legs ends with the last leg's BYE
            byes = [expected[c].bye_ns for c in recordings[call.call_ids[0]]]
            assert (meta["end_reason"], call.ended_ns) == ("bye", max(b for b in byes if b))


@pytest.mark.parametrize("name", CAPTURES)
def test_from_to_are_the_invite_uris(name: str) -> None:
    path = capture(name)
    rows = tc.fields(path, 'sip.Method == "INVITE" && !sip.to.tag', ("sip.Call-ID", "sip.from.addr",
                                                                     "sip.to.addr"))
    first: dict[str, tuple[str, str]] = {}
    for cid, frm, to in rows:
        first.setdefault(cid, (_strip_params(frm), _strip_params(to)))
    for cid, (call, rec) in tc.engine_run(path).by_call_id().items():
        if cid in first:
            assert (rec.metadata["from"], rec.metadata["to"]) == first[cid]


@pytest.mark.parametrize("name", ["MagicJack-_short_call.pcap", "aaa.pcap", "SIP_DTMF2.cap"])
def test_call_json_shape(name: str) -> None:
    run = tc.engine_run(capture(name))
    for call, rec in zip(run.calls, run.recordings):
        doc = json.loads(rec.files["call.json"])
        assert list(doc)[:17] == ["id", "call_ids", "from", "to", "status", "final_response",
                                  "end_reason", "started_at", "answered_at", "ended_at", "sensors",
                                  "sites", "legs", "streams", "dtmf", "hold", "audio"]
        assert [leg["call_id"] for leg in doc["legs"]] == doc["call_ids"]
        assert doc["legs"][0]["relation"] is None
        assert doc["legs"][0]["from"] == doc["from"] and doc["legs"][0]["sensors"] == ["sensor-a"]
        assert doc["id"] == rec.recording_id and rec.prefix.endswith("/" + rec.recording_id)
        assert rec.prefix.startswith(doc["started_at"][:10].replace("-", "/"))
        assert doc["started_at"].endswith("Z")
        assert len(doc["started_at"]) == len("2012-04-12T15:40:15.711324Z")
        assert doc["sensors"] == ["sensor-a"] and doc["pcap"] == "call.pcap" \
            and (doc["dtmf"] == [] or name == "SIP_DTMF2.cap")  # its digits: tests/controller/test_dtmf.py
        assert ("audio.wav" in rec.files) == (doc["audio"] is not None)
        assert doc["status"] in {"answered", "busy", "cancelled", "rejected", "incomplete"}


def test_rejected_calls_have_no_audio_unless_early_media() -> None:
    run = tc.engine_run(capture("aaa.pcap"))
    by_id = run.by_call_id()
    # 407 then 183 with early media then 480: the 9 early-media packets are recorded
    call, rec = by_id["11894297-4432a9f8@192.168.1.2"]
    assert rec.metadata["end_reason"] == "final-response"
    assert [s["packets"] for s in rec.metadata["streams"]] == [9]
    call, rec = by_id["105090259-446faf7a@192.168.1.2"]
    assert (rec.metadata["end_reason"], rec.metadata["audio"]) == ("cancel", None)
    assert "audio.wav" not in rec.files


def test_pcap_holds_every_packet_of_the_call_in_order(tmp_path) -> None:
    from protocols.pcapfile import read_frames
    path = capture("rtp_conversacion.pcap")
    exp = tc.expected_calls(path)
    run = tc.engine_run(path)
    for call, rec in zip(run.calls, run.recordings):
        sip_times = sorted(r.ts_ns for r in exp[call.call_ids[0]].rows)
        meta = rec.metadata
        assert len(sip_times) == meta["sip_packets"]
        out = tmp_path / "call.pcap"
        out.write_bytes(rec.files["call.pcap"])
        frames = list(read_frames(out))
        times = [ts for ts, _, _ in frames]
        assert times == sorted(times) and set(sip_times) <= set(times)
        assert {lt for _, lt, _ in frames} == {1}
        assert len(frames) == meta["pcap_packets"] == meta["sip_packets"] + meta["rtp_packets"] \
            + meta["rtcp_packets"] + meta["media_other"]
        # RTP packets: exactly tshark's for the call's streams (both directions)
        streams = {(s.src, s.sport, s.ssrc) for s in tc.rtp_streams(path)}
        assert meta["rtp_packets"] == sum(p for p in (s.packets for s in tc.rtp_streams(path)))
        assert len(streams) == len(meta["streams"])


def test_fragmented_invite_sdp_is_parsed() -> None:
    """ipv6frag.pcap: the INVITEs' SDP is in their second IPv6 fragment. With reassembly
    (as Recorder._process does) the media they announce is known right after them; the
    fragments, not the rebuilt datagrams, are the call's pcap frames."""
    from protocols.layers import str_to_ip
    from protocols.pcapfile import read_frames
    path = capture("ipv6frag.pcap")
    frames = list(read_frames(path))
    offers = {(str_to_ip("fd17:625c:f037:2:a00:27ff:feb9:1521"), 15062),
              (str_to_ip("fd17:625c:f037:2:a00:27ff:feb9:4334"), 30002)}
    # frames 1-5: INVITE (2 fragments), 100 Trying, INVITE of the next hop (2 fragments)
    with_r = tc.run_engine(path, frames=frames[:5])
    without = tc.run_engine(path, frames=frames[:5], reassemble=False)
    assert with_r.counters["sip_reassembled"] == 2 and without.counters["sip_reassembled"] == 0
    assert with_r.counters["fragments"] == without.counters["fragments"] == 2
    (call,) = with_r.calls
    assert len(call.frame_data) == 5                   # every fragment, no rebuilt frame
    assert {pt for pt in call.rtpmap} >= {100, 101, 120, 121}
    assert not without.calls[0].rtpmap
    # the whole capture: same recording as without reassembly except the SDP now known
    full, plain = tc.engine_run(path), tc.run_engine(path, reassemble=False)
    assert full.recordings[0].files["call.pcap"] == plain.recordings[0].files["call.pcap"]
    for key in ("sip_messages", "sip_retransmissions", "sip_packets", "pcap_packets"):
        assert full.recordings[0].metadata[key] == plain.recordings[0].metadata[key], key
    # the engine's media map holds the endpoints the INVITEs announce (tshark: sdp.media.port)
    from controller.calls.engine import CallEngine
    from protocols.fragments import Reassembler
    from protocols.layers import decode
    engine, frags = CallEngine(), Reassembler()
    for ts, lt, data in frames[:5]:
        d = decode(lt, data)
        engine.process(ts, "sensor-a", lt, data, d)
        if d.is_fragment and (g := frags.add(ts, lt, data, d)) is not None:
            engine.reassembled(ts, "sensor-a", lt, g.frame, decode(g.linktype, g.frame))
    assert offers <= set(engine.table.media)

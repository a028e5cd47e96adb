"""Public captures of calls that crossed several hops, through `spanrec record`.

What must hold (issue "Multi-site"): one recording per call whatever the
number of legs or hops, every packet once in its call.pcap, mirror copies
dropped and counted.  Expectations come from tshark on the input and on the
written call.pcap, and from audioop decodes of the payloads tshark extracts.
"""
from __future__ import annotations

import io
import warnings
import wave
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import capture, require_tool
from tests.controller import tshark_calls as tc

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

SIP_WINDOW_NS = 300_000_000


@pytest.fixture(scope="module", autouse=True)
def _tshark() -> None:
    require_tool("tshark")


def _copies(path: Path, display_filter: str = "ip") -> int:
    """IPv4 datagrams seen again (same addresses, IP ID and payload) within the SIP
    dedup window: what a mirror that copies a packet twice produces."""
    rows = tc.fields(path, display_filter, ("frame.time_epoch", "ip.src", "ip.dst", "ip.id",
                                            "udp.payload"))
    last: dict[tuple, int] = {}
    copies = 0
    for t, *key in rows:
        ts = tc.epoch_ns(t)
        k = tuple(key)
        if k in last and ts - last[k] <= SIP_WINDOW_NS:
            copies += 1
            continue
        last[k] = ts
    return copies


def _sip_frames(path: Path, call_ids: list[str]) -> Counter:
    flt = " || ".join(f'sip.Call-ID == "{cid}"' for cid in call_ids)
    return Counter(tuple(r) for r in tc.fields(path, flt, ("ip.src", "ip.dst", "ip.id", "udp.payload")))


def _call_dir(run, call_id: str) -> Path:
    doc = run.by_call_id()[call_id]
    (path,) = [p.parent for p in run.out.rglob("call.json") if p.parent.name == doc["id"]]
    return path


def test_fax_b2bua_legs_one_recording_duplicates_dropped(tmp_path: Path, record) -> None:
    path = capture("FAX-Call-t38-CA-TDM-SIP-FB-1.pcap")
    legs = ["00e9d4a500e9d48-0015-0001-0000-0000@10.35.40.25",
            "SD4909701-9ff11bf72eb4a347c92974d8fbbc2668-ao8o3i1"]
    run = record([path], tmp_path / "out")
    assert run.returncode == 0, run.stderr
    (doc,) = run.calls
    assert doc["call_ids"] == legs
    assert [leg["relation"] for leg in doc["legs"]] == [None, {"to": legs[0], "by": "sdp-origin"}]
    assert all(leg["status"] == "answered" for leg in doc["legs"])
    expected_copies = _copies(path, "sip")
    assert expected_copies == 23                      # SOURCES.md: 23 byte-identical SIP copies
    assert doc["copies_dropped"] == expected_copies
    assert doc["copies_dropped_by_sensor"] == {doc["sensors"][0]: expected_copies}
    # call.pcap: every SIP message of both legs, each copy once
    pcap = _call_dir(run, legs[0]) / "call.pcap"
    got = _sip_frames(pcap, legs)
    want = _sip_frames(path, legs)
    assert set(got) == set(want)
    assert sum(want.values()) - sum(got.values()) == expected_copies
    assert _copies(pcap) == 0


def _ulaw_channel(packets: list[tc.RtpPacket]) -> np.ndarray:
    ts0 = packets[0].timestamp
    out = np.zeros(max(p.timestamp - ts0 + len(p.payload) for p in packets), dtype=np.int16)
    for p in packets:
        pcm = np.frombuffer(audioop.ulaw2lin(p.payload, 2), dtype="<i2")
        out[p.timestamp - ts0:p.timestamp - ts0 + len(pcm)] = pcm
    return out


def test_b2bua_legs_merged_by_relayed_media(tmp_path: Path, record) -> None:
    """SIP-RTP-Normal_Call_two_parties: Asterisk bridges two legs (new SSRCs, new
    sequence numbers, same payloads): one recording; channel 0 = what the caller
    (192.168.20.132) sent, channel 1 = what the final callee (192.168.20.1) sent."""
    path = capture("SIP-RTP-Normal_Call_two_parties.pcap")
    run = record([path], tmp_path / "out")
    assert run.returncode == 0, run.stderr
    (doc,) = run.calls
    root, child = "3cfe1c77155241bb89eb003ab8e2f87b", "54be7fcc-b009-4326-a81e-371a5a93c4b6"
    assert doc["call_ids"] == [root, child]
    assert doc["legs"][1]["relation"] == {"to": root, "by": "media"}
    assert doc["legs"][0]["to"] == "sip:2222@192.168.20.130" and doc["legs"][1]["to"] == "sip:2222@192.168.20.1"
    assert len(doc["streams"]) == 4 and doc["copies_dropped"] == 0
    src = doc["audio"]["sources"]
    assert src["caller"]["src"] == "192.168.20.132:4000" and src["caller"]["call_id"] == root
    assert src["callee"]["src"] == "192.168.20.1:4000" and src["callee"]["call_id"] == child
    with wave.open(io.BytesIO((_call_dir(run, root) / "audio.wav").read_bytes())) as w:
        stereo = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    streams = {(s.src, s.sport): s.ssrc for s in tc.rtp_streams(path)}
    for ch, (ip, port) in enumerate((("192.168.20.132", 4000), ("192.168.20.1", 4000))):
        exp = _ulaw_channel(tc.stream_packets(path, ip, port, streams[(ip, port)]))
        got = stereo[:, ch]
        # PCMU silence decodes to 0: align on the first non-zero sample of each
        off = np.flatnonzero(got)[0] - np.flatnonzero(exp)[0]
        assert off >= 0 and np.array_equal(got[off:off + len(exp)], exp), f"channel {ch}"


@pytest.mark.parametrize("name", ["SIP_DTMF2.cap", "ipv6frag.pcap"])
def test_same_call_id_on_two_hops_is_one_call(tmp_path: Path, record, name: str) -> None:
    path = capture(name)
    run = record([path], tmp_path / "out")
    assert run.returncode == 0, run.stderr
    invites = {cid for (cid,) in tc.fields(path, 'sip.Method == "INVITE"', ("sip.Call-ID",))}
    assert sorted(cid for d in run.calls for cid in d["call_ids"]) == sorted(invites)
    for doc in run.calls:
        (cid,) = doc["call_ids"]
        assert len(doc["legs"]) == 1
        # both hops' copies of every message are in the pcap (they are not mirror copies)
        pcap = _call_dir(run, cid) / "call.pcap"
        flt = f'sip.Call-ID == "{cid}"'
        want = tc.fields(path, flt, ("frame.time_epoch",))
        got = tc.fields(pcap, flt, ("frame.time_epoch",))
        assert sorted(got) == sorted(want)
        if doc["status"] == "answered":
            # its INVITE crossed two hops: seen at least twice, as different datagrams
            invite = tc.fields(pcap, f'{flt} && sip.Method == "INVITE"', ("udp.srcport", "udp.dstport",
                                                                         "udp.payload"))
            assert len({tuple(r) for r in invite}) >= 2 and doc["sip_retransmissions"] > 0
        assert doc["copies_dropped"] == 0   # another hop's copy is not a mirror copy


def test_media_relay_streams_in_one_recording(tmp_path: Path, record) -> None:
    path = capture("SIP_CALL_RTP_G711")
    run = record([path], tmp_path / "out")
    assert run.returncode == 0, run.stderr
    doc = run.by_call_id()["12013223@200.57.7.195"]
    assert len(doc["legs"]) == 1
    relayed = [s for s in tc.rtp_streams(path) if s.packets > 100]
    got = {(s["src"], s["dst"], s["ssrc"]): s["packets"] for s in doc["streams"]}
    assert got == {(f"{s.src}:{s.sport}", f"{s.dst}:{s.dport}", s.ssrc): s.packets for s in relayed}
    assert doc["audio"]["sources"]["caller"]["candidates"] == 2
    assert doc["audio"]["sources"]["callee"]["candidates"] == 2

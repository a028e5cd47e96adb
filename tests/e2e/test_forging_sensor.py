"""A sensor with a valid certificate that lies (issue #11), with real processes.

One `spanrec controller` over mTLS, one real sensor of site A (`spanrec sensor
--pcap samples/sample-call.pcap`, the capture scripts/gencalls.py makes: two
answered PCMU/PCMA calls between 10.1.0.x and 10.2.0.x) and a forging site-B
sensor: a gRPC client holding a valid site-B sensor certificate that speaks
SensorLink itself (tests/e2e/forger.py). While the capture's first call is
live (capture timestamps inside it), site B injects

* (b) RTP to the caller's media port: the callee's flow, SSRC and sequence
  numbers, its own payload, each packet 1 ms ahead of the real one;
* (a) a BYE of that call's dialog halfway through it, as if the callee hung up;
* (c) an INVITE of a new call between two site-A addresses.

Without --site-networks the controller cannot tell these from real packets;
the tests state what the recording then holds (the forged BYE ends the call
early, the forged payload is in its audio) and check that call.json's
provenance reveals sensor B. With --site-networks (site B owns none of these
addresses) every forged packet is dropped and counted for sensor B, and the
recordings are what the capture alone gives. A third lab repeats scenario 1
with 60 forged RTP packets, more than call.json keeps conflicts (50).

Two defects of controller/calls/provenance.py found here are fixed and tested: the
RTP warning named only the sensor whose copy arrived second (the honest one,
when the forger is faster), and 50 conflicting RTP packets crowded the forged
BYE's conflict out of call.json.

A site-B certificate whose Hello claims site A is refused: covered at the
process level by tests/transport/test_roles.py::test_a_sensor_speaks_only_for_its_site
(not repeated here).

Expectations come from the input only: tshark (and the pcap reader) on the
capture sensor A replays, and the frames the forger builds, never spanrec's
output. Three labs (controller + two sensors each), ~15 s in all.
"""
from __future__ import annotations

import json
import threading
import time
import warnings
import wave
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from protocols.pcapfile import read_frames
from tests.conftest import require_tool
from tests.controller import tshark_calls as tc
from tests.e2e.forger import ForgingSensor, rtp_packet, udp_frame
from tests.transport.procs import (REPO, SPANREC, SPANRECCTL, Controller, identity, make_certs,
                                   run)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

pytestmark = [pytest.mark.slow]

SAMPLE = REPO / "samples" / "sample-call.pcap"
SITE_NETWORKS = {"site-a": ["10.1.0.0/16", "10.2.0.0/16"], "site-b": ["10.9.0.0/16"]}
FORGED_RTP = 20                  # forged RTP packets in the main scenarios
FLOOD_RTP = 60                   # ... in the flood scenario (more than call.json's 50 conflicts)
FORGED_INVITE_CALL_ID = "forged-invite-7f3a@10.1.0.3"
FORGED_PAYLOAD = bytes([0x00, 0x80]) * 80     # mu-law full-scale square wave: no tone looks like it
MS = 1_000_000
SECOND = 1_000_000_000


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    require_tool("tshark")
    if not SAMPLE.is_file():
        pytest.skip(f"{SAMPLE} missing")


def _ns(iso: str) -> int:
    """call.json time ('2024-01-15T10:00:06.167732Z') -> ns since the epoch (µs precision)."""
    t = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return (int(t.timestamp()) * 1_000_000 + t.microsecond) * 1000


def _us(ns: int) -> int:
    return ns // 1000


# -- what the capture holds (tshark only) ------------------------------------------

@dataclass
class RtpRow:
    ts: int
    seq: int
    rtp_ts: int
    ssrc: int
    pt: int
    payload: bytes


@dataclass
class Capture:
    call_id: str                 # the capture's first call (the victim)
    caller: str
    callee: str
    caller_contact: str
    invite_from: str             # From of the INVITE (caller's tag)
    ok_to: str                   # To of the 200 OK (callee's tag)
    invite_ns: int
    bye_ns: int                  # the real BYE (sent by the callee)
    sip_ns: list[int]            # capture times of the call's SIP messages
    caller_media: tuple[str, int]
    callee_media: tuple[str, int]
    to_caller: list[RtpRow]      # the callee's RTP to the caller's media port
    frames: Counter              # (ts, bytes) of the call: its SIP and both media flows (RTP, RTCP)
    call_ids: list[str]          # Call-IDs with an INVITE
    first_ns: int


def _capture(path: Path) -> Capture:
    sip = tc.fields(path, "sip", ("frame.time_epoch", "sip.Call-ID", "sip.Method", "sip.Status-Code",
                                  "sip.CSeq.method", "sip.From", "sip.To", "sip.Contact",
                                  "sdp.connection_info.address", "sdp.media.port", "ip.src", "ip.dst"))
    call_id = sip[0][1]
    rows = [r for r in sip if r[1] == call_id]
    invite = next(r for r in rows if r[2] == "INVITE")
    ok = next(r for r in rows if r[3] == "200" and r[4] == "INVITE")
    bye = next(r for r in rows if r[2] == "BYE")
    caller_media, callee_media = (invite[8], int(invite[9])), (ok[8], int(ok[9]))
    (ca, cp), (ka, kp) = caller_media, callee_media
    rtp = [RtpRow(tc.epoch_ns(t), int(seq), int(ts), int(ssrc, 16), int(pt),
                  bytes.fromhex(payload.replace(":", "")))
           for t, seq, ts, ssrc, pt, payload in tc.fields(
               path, f"rtp && ip.src == {ka} && udp.srcport == {kp} && ip.dst == {ca} && udp.dstport == {cp}",
               ("frame.time_epoch", "rtp.seq", "rtp.timestamp", "rtp.ssrc", "rtp.p_type", "rtp.payload"))]
    media = (f"ip.addr == {ca} && ip.addr == {ka} && (udp.port == {cp} || udp.port == {cp + 1}) "
             f"&& (udp.port == {kp} || udp.port == {kp + 1})")
    numbers = {int(r[0]) for r in tc.fields(path, f'sip.Call-ID == "{call_id}" || ({media})',
                                             ("frame.number",))}
    all_frames = list(read_frames(path))
    return Capture(
        call_id=call_id, caller=invite[10], callee=invite[11], caller_contact=invite[7],
        invite_from=invite[5], ok_to=ok[6], invite_ns=tc.epoch_ns(invite[0]),
        bye_ns=tc.epoch_ns(bye[0]), sip_ns=[tc.epoch_ns(r[0]) for r in rows],
        caller_media=caller_media, callee_media=callee_media, to_caller=rtp,
        frames=Counter((all_frames[n - 1][0], bytes(all_frames[n - 1][2])) for n in numbers),
        call_ids=sorted({r[1] for r in sip if r[2] == "INVITE"}), first_ns=all_frames[0][0])


# -- what site B forges ------------------------------------------------------------

@dataclass
class Forgery:
    frames: list[tuple[int, bytes]] = field(default_factory=list)
    bye: tuple[int, bytes] = (0, b"")
    rtp: list[tuple[int, bytes]] = field(default_factory=list)
    rtp_rows: list[RtpRow] = field(default_factory=list)     # the real packets they shadow
    invite: tuple[int, bytes] = (0, b"")


def _forgery(cap: Capture, n_rtp: int) -> Forgery:
    f = Forgery()
    ip_id = 0x7000
    # (b) RTP 2 s after the first packet of the flow: same flow, SSRC and
    # sequence numbers as the callee's, 1 ms ahead of each of them
    first = cap.to_caller[0].ts
    start = next(i for i, r in enumerate(cap.to_caller) if r.ts >= first + 2 * SECOND)
    for r in cap.to_caller[start:start + n_rtp]:
        payload = rtp_packet(r.seq, r.rtp_ts, r.ssrc, r.pt, FORGED_PAYLOAD)
        f.rtp.append((r.ts - MS, udp_frame(cap.callee_media[0], cap.caller_media[0],
                                           cap.callee_media[1], cap.caller_media[1], payload, ip_id)))
        f.rtp_rows.append(r)
        ip_id += 1
    # (a) a BYE of the dialog halfway through the call, as if from the callee
    uri = cap.caller_contact.strip("<>")
    bye = (f"BYE {uri} SIP/2.0\r\n"
           f"Via: SIP/2.0/UDP {cap.callee}:5060;branch=z9hG4bKforged0001;rport\r\n"
           "Max-Forwards: 70\r\n"
           f"From: {cap.ok_to}\r\n"
           f"To: {cap.invite_from}\r\n"
           f"Call-ID: {cap.call_id}\r\n"
           "CSeq: 7 BYE\r\n"
           "Content-Length: 0\r\n\r\n").encode()
    f.bye = ((cap.invite_ns + cap.bye_ns) // 2,
             udp_frame(cap.callee, cap.caller, 5060, 5060, bye, ip_id))
    ip_id += 1
    # (c) an INVITE of a new call between two site-A addresses, 3 s into the call
    sdp = ("v=0\r\no=- 1 1 IN IP4 10.1.0.3\r\ns=-\r\nc=IN IP4 10.1.0.3\r\nt=0 0\r\n"
           "m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n").encode()
    invite = ("INVITE sip:30000@10.2.0.3:5060 SIP/2.0\r\n"
              "Via: SIP/2.0/UDP 10.1.0.3:5060;branch=z9hG4bKforged0002;rport\r\n"
              "Max-Forwards: 70\r\n"
              "From: <sip:30001@10.1.0.3>;tag=f0f0f0\r\n"
              "To: <sip:30000@10.2.0.3>\r\n"
              f"Call-ID: {FORGED_INVITE_CALL_ID}\r\n"
              "CSeq: 1 INVITE\r\n"
              "Contact: <sip:30001@10.1.0.3:5060>\r\n"
              "Content-Type: application/sdp\r\n"
              f"Content-Length: {len(sdp)}\r\n\r\n").encode() + sdp
    f.invite = (cap.invite_ns + 3 * SECOND, udp_frame("10.1.0.3", "10.2.0.3", 5060, 5060, invite, ip_id))
    f.frames = sorted([*f.rtp, f.bye, f.invite], key=lambda x: x[0])
    assert cap.invite_ns < f.frames[0][0] and f.frames[-1][0] < cap.bye_ns     # all while the call is live
    return f


# -- the lab -------------------------------------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> SimpleNamespace:
    d = tmp_path_factory.mktemp("pki-forge")
    make_certs(d, "ca")
    make_certs(d, "server", "controller.local", "--san", "127.0.0.1")
    make_certs(d, "client", "sensor-a", "--site", "site-a")
    make_certs(d, "client", "sensor-b", "--site", "site-b")
    make_certs(d, "client", "ops", "--role", "operator")
    return SimpleNamespace(server=identity(d, "controller.local"), a=identity(d, "sensor-a"),
                           b=identity(d, "sensor-b"), operator=identity(d, "ops"))


@pytest.fixture(scope="module")
def capture() -> Capture:
    return _capture(SAMPLE)


@dataclass
class Recording:
    meta: dict                        # call.json
    dir: Path

    def frames(self, name: str = "call.pcap") -> Counter:
        return Counter((ts, bytes(data)) for ts, _lt, data in read_frames(self.dir / name))

    def late_frames(self) -> Counter:
        out: Counter = Counter()
        for name in self.meta.get("late_files") or []:
            out += self.frames(name)
        return out

    def stereo(self) -> np.ndarray:
        with wave.open(str(self.dir / self.meta["audio"]["file"])) as w:
            assert (w.getnchannels(), w.getframerate()) == (2, 8000)
            return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)


@dataclass
class Lab:
    recordings: dict[str, Recording]  # Call-ID -> recording
    fleet: dict[str, dict]            # sensor id -> `spanrecctl fleet -o json` row
    forgery: Forgery


def _run_lab(work: Path, pki: SimpleNamespace, cap: Capture, forgery: Forgery,
             site_networks: bool) -> Lab:
    extra: tuple[str, ...] = ()
    if site_networks:
        cfg = work / "sites.toml"
        cfg.write_text("".join(f"{site} = {json.dumps(nets)}\n" for site, nets in SITE_NETWORKS.items()))
        extra = ("--site-networks", str(cfg))
    c = Controller(work, pki.server, probe=pki.operator, extra=extra)
    done = threading.Event()
    forger = None
    try:
        forger = ForgingSensor(c.target, pki.b.channel_credentials(), "sensor-b", "site-b")
        forger.wait_hello()
        # Sensor B's clock stays just before the capture while sensor A replays
        # it: the controller holds A's packets (merge by capture time) until B
        # has sent its forgeries, which then fall inside the live call.
        hold = cap.first_ns - SECOND
        forger.heartbeat(hold)

        def beat() -> None:
            k = 0
            while not done.wait(0.5):
                k += 1
                forger.heartbeat(hold + k)     # advancing (never "stalled"), still before A
        threading.Thread(target=beat, daemon=True).start()
        time.sleep(1.2)                        # B's clock is in before A's first batch
        a = run(SPANREC, "sensor", "--pcap", str(SAMPLE), "--controller", c.target,
                "--sensor-id", "sensor-a", "--site", "site-a", "--log-format", "text",
                "--spool-dir", str(work / "spool-a"), *pki.a.flags(), timeout=60)
        assert a.returncode == 0, a.stderr
        assert forger.send(forgery.frames) == len(forgery.frames)
        done.set()
        forger.end()                           # the controller answered: every batch processed
        fleet = run(SPANRECCTL, "fleet", "-o", "json", "--controller", c.target,
                    *pki.operator.flags(), timeout=30)
        assert fleet.returncode == 0, fleet.stderr
    finally:
        done.set()
        if forger is not None:
            forger.close()
        rc = c.stop()                          # SIGTERM: every recording written
    log = c.log.read_text()
    assert rc == 0, log
    assert "Traceback" not in log, log
    recordings: dict[str, Recording] = {}
    for p in sorted(c.storage.rglob("call.json")):
        meta = json.loads(p.read_text())
        for cid in meta["call_ids"]:
            assert cid not in recordings, f"{cid} recorded twice"
            recordings[cid] = Recording(meta, p.parent)
    return Lab(recordings, {s["sensor_id"]: s for s in json.loads(fleet.stdout)["sensors"]}, forgery)


@pytest.fixture(scope="module")
def forged(tmp_path_factory, pki, capture) -> Lab:
    """Scenario 1: no --site-networks."""
    return _run_lab(tmp_path_factory.mktemp("forged"), pki, capture,
                    _forgery(capture, FORGED_RTP), site_networks=False)


@pytest.fixture(scope="module")
def filtered(tmp_path_factory, pki, capture) -> Lab:
    """Scenario 2: the same forgeries, with --site-networks."""
    return _run_lab(tmp_path_factory.mktemp("filtered"), pki, capture,
                    _forgery(capture, FORGED_RTP), site_networks=True)


def _audio_block(rec: Recording, cap: Capture, rows: list[RtpRow]) -> np.ndarray:
    """The callee channel (1) where the packets `rows` of the callee's stream play."""
    callee = rec.meta["audio"]["sources"]["callee"]
    assert callee["src"] == "%s:%d" % cap.callee_media
    offset = round(callee["segments"][0]["offset_s"] * 8000)
    start = offset + (rows[0].rtp_ts - cap.to_caller[0].rtp_ts)
    return rec.stereo()[start:start + 160 * len(rows), 1]


def _ulaw(payloads: list[bytes]) -> np.ndarray:
    return np.frombuffer(audioop.ulaw2lin(b"".join(payloads), 2), dtype="<i2")


# -- scenario 1: no site ranges: the forgery is recorded, and shows -----------------

def test_forged_bye_ends_the_call_early_and_its_provenance_names_sensor_b(forged, capture) -> None:
    rec = forged.recordings[capture.call_id]
    meta = rec.meta
    bye_ns, _ = forged.forgery.bye
    # what the recording holds: the call ends at the forged BYE, ~6 s early
    assert (meta["status"], meta["end_reason"]) == ("answered", "bye")
    assert _us(_ns(meta["ended_at"])) == _us(bye_ns) < _us(capture.bye_ns)
    assert _us(_ns(meta["started_at"])) == _us(capture.invite_ns)
    # ... and who said so: one SIP packet of the leg from sensor B (the BYE),
    # the call's other messages up to then from sensor A
    (leg,) = meta["legs"]
    before = sum(1 for t in capture.sip_ns if t < bye_ns)
    assert leg["sip_packets_by_sensor"] == {"sensor-a": before, "sensor-b": 1}
    assert meta["sensors"] == ["sensor-a", "sensor-b"] and meta["sites"] == ["site-a", "site-b"]
    bye_conflicts = [c for c in meta["conflicts"] if c["kind"] == "bye-one-sensor"]
    assert bye_conflicts == [{
        "kind": "bye-one-sensor", "call_id": capture.call_id, "sensor": "sensor-b", "site": "site-b",
        "stream_sensors": None, "detail": bye_conflicts[0]["detail"]}]
    assert any("BYE" in w and "sensor-b" in w for w in meta["warnings"])


def test_nothing_genuine_is_lost_the_rest_of_the_call_is_late(forged, capture) -> None:
    """call.pcap holds the call up to the forged BYE (+ linger) with the 21
    forged packets; the real remainder (media and the real BYE) is appended as
    late-N.pcap. Together: every frame of the call in the capture, once, plus
    the forged ones (the INVITE belongs to another call)."""
    rec = forged.recordings[capture.call_id]
    forged_here = Counter([*forged.forgery.rtp, forged.forgery.bye])
    pcap, late = rec.frames(), rec.late_frames()
    assert pcap & forged_here == forged_here             # every forged packet is in call.pcap
    assert pcap + late == capture.frames + forged_here
    assert late and rec.meta["late_packets"] == sum(late.values())
    assert rec.meta["pcap_packets"] == sum(pcap.values())
    real_bye = [f for f in late if b"BYE sip:" in f[1]]
    assert [ts for ts, _ in real_bye] == [capture.bye_ns]


def test_forged_rtp_is_counted_for_sensor_b_and_flagged_by_sequence_number(forged, capture) -> None:
    meta = forged.recordings[capture.call_id].meta
    ca, cp = capture.caller_media
    (stream,) = [s for s in meta["streams"] if s["dst"] == f"{ca}:{cp}"]
    assert stream["packets_by_sensor"]["sensor-b"] == FORGED_RTP
    assert stream["sensors"] == ["sensor-a", "sensor-b"]
    (other,) = [s for s in meta["streams"] if s is not stream]
    assert other["packets_by_sensor"] == {"sensor-a": other["packets"]}
    rtp_conflicts = [c for c in meta["conflicts"] if c["kind"] == "rtp-content"]
    assert sorted(c["seq"] for c in rtp_conflicts) == [r.seq for r in forged.forgery.rtp_rows]
    for c in rtp_conflicts:
        assert c["stream_sensors"] == ["sensor-a", "sensor-b"]
        assert "sensor-b" in c["detail"], c          # "... (also seen from sensor-b)"


def test_forged_payload_is_what_the_recording_plays(forged, capture) -> None:
    """The forger's copy came first (1 ms ahead), so its payload is the audio of
    those 400 ms of the callee's channel; the real packets count as duplicates."""
    rec = forged.recordings[capture.call_id]
    got = _audio_block(rec, capture, forged.forgery.rtp_rows)
    assert np.array_equal(got, _ulaw([FORGED_PAYLOAD] * FORGED_RTP))
    assert not np.array_equal(got, _ulaw([r.payload for r in forged.forgery.rtp_rows]))


def test_rtp_conflict_warning_names_the_forging_sensor(forged, capture) -> None:
    meta = forged.recordings[capture.call_id].meta
    (warning,) = [w for w in meta["warnings"] if "RTP packets arrived twice" in w]
    assert f"{FORGED_RTP} RTP packets" in warning
    assert "sensor-b" in warning


def test_forged_invite_makes_a_recording_of_sensor_b_only(forged) -> None:
    meta = forged.recordings[FORGED_INVITE_CALL_ID].meta
    assert meta["sensors"] == ["sensor-b"] and meta["sites"] == ["site-b"]
    assert [leg["sip_packets_by_sensor"] for leg in meta["legs"]] == [{"sensor-b": 1}]
    assert forged.recordings[FORGED_INVITE_CALL_ID].frames() == Counter([forged.forgery.invite])


def test_fleet_without_site_ranges_counts_nothing_outside(forged) -> None:
    b = forged.fleet["sensor-b"]
    assert (b["site"], b["identity"]) == ("site-b", "sensor-b")
    assert b["packets_received"] == len(forged.forgery.frames) == FORGED_RTP + 2
    assert b["outside_site"] == 0 and forged.fleet["sensor-a"]["outside_site"] == 0


# -- scenario 2: site ranges: the forgery is dropped and counted ---------------------
# Each expectation below fails on scenario 1's result (asserted above): the call
# ended at the forged BYE, it had conflicts and sensor B's packets, the forged
# INVITE was recorded, and nothing was counted outside the site.

def test_with_site_ranges_the_recordings_are_the_capture_alone(filtered, capture) -> None:
    assert sorted(filtered.recordings) == capture.call_ids          # no forged INVITE
    rec = filtered.recordings[capture.call_id]
    meta = rec.meta
    assert (meta["status"], meta["end_reason"]) == ("answered", "bye")
    assert _us(_ns(meta["started_at"])) == _us(capture.invite_ns)
    assert _us(_ns(meta["ended_at"])) == _us(capture.bye_ns)       # full length
    assert rec.frames() == capture.frames                           # every frame of the call, once
    assert meta["pcap_packets"] == sum(capture.frames.values())
    assert not meta.get("late_files") and not meta.get("late_packets")
    assert meta["conflicts"] == [] and meta["warnings"] == []
    for r in filtered.recordings.values():
        assert r.meta["sensors"] == ["sensor-a"], r.meta["call_ids"]
        assert all(s["packets_by_sensor"] == {"sensor-a": s["packets"]} for s in r.meta["streams"])
        assert all(set(leg["sip_packets_by_sensor"]) == {"sensor-a"} for leg in r.meta["legs"])


def test_with_site_ranges_the_audio_is_the_real_one(filtered, capture) -> None:
    rows = _forgery(capture, FORGED_RTP).rtp_rows
    got = _audio_block(filtered.recordings[capture.call_id], capture, rows)
    assert np.array_equal(got, _ulaw([r.payload for r in rows]))


def test_with_site_ranges_fleet_counts_every_forged_packet_outside(filtered) -> None:
    b, a = filtered.fleet["sensor-b"], filtered.fleet["sensor-a"]
    sent = len(filtered.forgery.frames)
    assert sent == FORGED_RTP + 2
    assert b["outside_site"] == sent and b["packets_received"] == sent
    assert a["outside_site"] == 0 and a["packets_received"] == sum(1 for _ in read_frames(SAMPLE))


@pytest.fixture(scope="module")
def flooded(tmp_path_factory, pki, capture) -> Lab:
    """Scenario 1 with more forged RTP packets than call.json keeps conflicts (50)."""
    return _run_lab(tmp_path_factory.mktemp("flooded"), pki, capture,
                    _forgery(capture, FLOOD_RTP), site_networks=False)


def test_flood_the_bye_still_ends_the_call_and_shows_in_the_leg_counts(flooded, capture) -> None:
    """What stays when the forger also sends more conflicting RTP than call.json
    keeps conflicts: the leg's per-sensor SIP counts (the BYE from sensor B)."""
    meta = flooded.recordings[capture.call_id].meta
    assert _us(_ns(meta["ended_at"])) == _us(flooded.forgery.bye[0]) < _us(capture.bye_ns)
    (leg,) = meta["legs"]
    assert leg["sip_packets_by_sensor"]["sensor-b"] == 1
    ca, cp = capture.caller_media
    (stream,) = [s for s in meta["streams"] if s["dst"] == f"{ca}:{cp}"]
    assert stream["packets_by_sensor"]["sensor-b"] == FLOOD_RTP
    rtp = [c for c in meta["conflicts"] if c["kind"] == "rtp-content"]
    # 50 listed one by one (the documented bound), the other 10 counted in one entry
    assert len([c for c in rtp if c["seq"] is not None]) == 50
    assert sum(c["count"] for c in rtp) == FLOOD_RTP
    assert any(f"{FLOOD_RTP} RTP packets" in w and "sensor-b" in w for w in meta["warnings"])


def test_flood_does_not_hide_the_forged_bye_conflict(flooded, capture) -> None:
    meta = flooded.recordings[capture.call_id].meta
    assert [c["sensor"] for c in meta["conflicts"] if c["kind"] == "bye-one-sensor"] == ["sensor-b"]
    assert any("BYE" in w and "sensor-b" in w for w in meta["warnings"])

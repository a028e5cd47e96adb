"""Per-stream quality in call.json: jitter, delta and loss against tshark's RTP stream
analysis, reordering and duplicates on constructed streams, the E-model figures,
and the RTCP report summary against tshark's RTCP fields.

Expectations come from tshark (`-z rtp,streams`, RTCP fields) or from the
published formulas (RFC 3550 A.8, ITU-T G.107), never from spanrec's output.
"""
from __future__ import annotations

import re
import subprocess
from functools import lru_cache
from pathlib import Path

import pytest

from controller.calls.engine import CallConfig
from controller.media.quality import analyse, mos_from_r, r_factor
from tests.conftest import capture, require_tool
from tests.controller import tshark_calls as tc
from tests.controller.test_calls_engine import CALLEE_IP, CALLER_IP, Feed, answered_call, rtp

#: Every public capture with RTP.  FAX-Call-t38-CA-TDM-SIP-FB-1.pcap is left out:
#: tshark labels part of its T.38 UDPTL as RTP (3848 vs 1838 packets, see
#: test_calls_streams.py) and flags both streams as having problems.
RTP_CAPTURES = ["SIP_DTMF2.cap", "rtp_conversacion.pcap", "MagicJack-_short_call.pcap",
                "SIP_CALL_RTP_G711", "nb6-telephone.pcap", "sip-rtp-g711.pcap", "sip-rtp-g722.pcap",
                "sip-rtp-opus.pcap", "SIP-RTP-Normal_Call_two_parties.pcap", "aaa.pcap",
                "sip_ipv4_tcp.pcap"]
TOLERANCE_MS = 0.0015     # tshark prints 3 decimals

_ROW = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+(\S+)\s+(\d+)\s+(\S+)\s+(\d+)\s+0x([0-9A-Fa-f]+)\s+.*?"
                  r"\s+(\d+)\s+(-?\d+)\s+\([^)]*\)" + r"\s+(-?[\d.]+)" * 6)


@pytest.fixture(scope="module", autouse=True)
def _tshark() -> None:
    require_tool("tshark")


@lru_cache(maxsize=None)
def tshark_streams(path: Path) -> dict[tuple, dict[str, float]]:
    """`tshark -z rtp,streams` (RTP heuristics on): per (src, sport, dst, dport, ssrc)."""
    out = subprocess.run(["tshark", "-n", "-r", str(path), *tc.RTP_HEURISTICS, "-q", "-z",
                          "rtp,streams"], capture_output=True, text=True, timeout=120, check=True).stdout
    streams = {}
    for line in out.splitlines():
        m = _ROW.match(line)
        if m:
            g = m.groups()
            streams[(g[0], int(g[1]), g[2], int(g[3]), int(g[4], 16))] = {
                "packets": int(g[5]), "lost": int(g[6]), "max_delta_ms": float(g[9]),
                "jitter_ms": float(g[11]), "max_jitter_ms": float(g[12])}
    return streams


def tshark_out_of_order(path: Path, key: tuple) -> int:
    """Packets of the stream (tshark's RTP, in capture order) whose sequence number is
    below the highest one seen before them (unwrapped)."""
    top = None
    late = 0
    for p in tc.rtp_packets(path):
        if (p.src, p.sport, p.dst, p.dport, p.ssrc) != key:
            continue
        if top is None:
            top = p.seq
            continue
        ext = top + ((p.seq - top + 0x8000) & 0xFFFF) - 0x8000
        if ext > top:
            top = ext
        elif ext < top:
            late += 1
    return late


def _key(s: dict) -> tuple:
    src, sport = s["src"].rsplit(":", 1)
    dst, dport = s["dst"].rsplit(":", 1)
    return (src.strip("[]"), int(sport), dst.strip("[]"), int(dport), s["ssrc"])


@pytest.mark.parametrize("name", RTP_CAPTURES)
def test_jitter_delta_and_loss_equal_tsharks(name: str) -> None:
    path = capture(name)
    expected = tshark_streams(path)
    seen = 0
    for rec in tc.engine_run(path).recordings:
        for s in rec.metadata["streams"]:
            exp = expected[_key(s)]
            assert s["packets"] == exp["packets"] and s["lost"] == max(exp["lost"], 0), _key(s)
            for field in ("max_delta_ms", "jitter_ms", "max_jitter_ms"):
                assert abs(s[field] - exp[field]) <= TOLERANCE_MS, (_key(s), field, s[field], exp[field])
            assert s["out_of_order"] == tshark_out_of_order(path, _key(s))
            seen += 1
    assert seen   # which tshark streams belong to a call: test_calls_streams.py


def test_figures_of_the_issue_captures() -> None:
    """The stream with RFC 2833 events: its jitter jumps after each event (events carry
    the event's start timestamp, tshark keeps them out of the nominal time), as tshark's."""
    rec = tc.engine_run(capture("SIP_DTMF2.cap")).recordings[1]
    got = {s["ssrc"]: (s["max_jitter_ms"], s["jitter_ms"], s["max_delta_ms"], s["lost"])
           for s in rec.metadata["streams"]}
    assert got == {0x5711BF84: (15.767, 1.522, 30.068, 0), 0x9A7B5382: (0.019, 0.01, 60.002, 2)}


# -- constructed streams ------------------------------------------------------------------

def _stream_meta(sends) -> dict:
    f = Feed()
    answered_call(f)
    for t, seq, ts in sends:
        f.send(t, CALLER_IP, 4000, CALLEE_IP, 5000, rtp(seq, ts, 0xA))
    (meta,) = f.done()
    (s,) = meta["streams"]
    return s


def test_perfect_stream_has_no_jitter() -> None:
    s = _stream_meta([(3 + i * 0.02, i, i * 160) for i in range(100)])
    assert (s["packets"], s["lost"], s["out_of_order"], s["duplicates"]) == (100, 0, 0, 0)
    assert s["jitter_ms"] == 0 and s["max_jitter_ms"] == 0 and s["max_delta_ms"] == 20.0
    assert (s["r_factor"], s["mos"]) == (93.2, 4.41)
    assert s["rtcp"] is None


def test_reordered_duplicated_and_lost_packets_are_counted_apart() -> None:
    order = [0, 1, 2, 3, 3, 4, 6, 5, 7, 8, 9, 12, 13, 11, 14]   # 10 lost, 3 twice, 5 and 11 late
    s = _stream_meta([(3 + i * 0.02, seq, seq * 160) for i, seq in enumerate(order)])
    assert (s["packets"], s["lost"], s["duplicates"], s["out_of_order"]) == (15, 1, 1, 2)
    assert s["r_factor"] < 93.2 and s["mos"] < 4.41


def test_interarrival_jitter_is_rfc3550_a8_in_ms() -> None:
    """J(i) = J(i-1) + (|D(i-1,i)| - J(i-1)) / 16, D from arrival and RTP timestamp."""
    arrivals_ms = [0, 20, 45, 60, 80, 103, 120, 140, 170, 180]
    packets = [(int(a * 1_000_000), i, i * 160, 0, False) for i, a in enumerate(arrivals_ms)]
    j = 0.0
    js = []
    for i in range(1, len(arrivals_ms)):
        d = abs((arrivals_ms[i] - arrivals_ms[i - 1]) - 20)
        j += (d - j) / 16
        js.append(j)
    q = analyse(packets, {0: 8000})
    assert abs(q["last_jitter_ms"] - js[-1]) < 1e-3
    assert abs(q["max_jitter_ms"] - max(js)) < 1e-3
    assert abs(q["jitter_ms"] - sum(js) / len(js)) < 1e-3
    assert q["max_delta_ms"] == 30.0


def test_e_model() -> None:
    """G.107: R = 93.2 - Id - Ie,eff, Ie,eff = Ie + (95 - Ie) Ppl / (Ppl / BurstR + Bpl),
    Id = 0.024 Ta + 0.11 (Ta - 177.3) for Ta > 177.3 ms; MOS = 1 + 0.035 R + R (R - 60) (100 - R) 7e-6."""
    assert r_factor("PCMA", 0) == pytest.approx(93.2)
    assert r_factor("PCMU", 2.0) == pytest.approx(93.2 - 95 * 2 / (2 + 25.1))
    assert r_factor("PCMU", 2.0, burst_ratio=2.0) == pytest.approx(93.2 - 95 * 2 / (1 + 25.1))
    assert r_factor("G729", 0) == pytest.approx(82.2)
    assert r_factor("G729", 1.0) == pytest.approx(93.2 - 11 - 84 * 1 / (1 + 19))
    ta = 300.0
    assert r_factor("PCMA", 0, rtt_ms=2 * ta) == pytest.approx(93.2 - 0.024 * ta - 0.11 * (ta - 177.3))
    assert r_factor("PCMA", 0, rtt_ms=100) == pytest.approx(93.2 - 0.024 * 50)
    assert r_factor("PCMA", 100) == pytest.approx(93.2 - 95 * 100 / (100 + 25.1))
    assert mos_from_r(93.2) == pytest.approx(1 + 0.035 * 93.2 + 93.2 * 33.2 * 6.8 * 7e-6)
    assert (mos_from_r(-5), mos_from_r(0), mos_from_r(100), mos_from_r(120)) == (1.0, 1.0, 4.5, 4.5)


def test_quality_is_the_same_when_the_call_spills_to_disk(tmp_path: Path) -> None:
    sends = [(3 + i * 0.02 + (0.004 if i % 7 == 0 else 0), i, i * 160) for i in range(400) if i != 50]
    plain = _stream_meta(sends)
    f = Feed(CallConfig(spill_frames=64, spill_dir=tmp_path))
    answered_call(f)
    for t, seq, ts in sends:
        f.send(t, CALLER_IP, 4000, CALLEE_IP, 5000, rtp(seq, ts, 0xA))
    f.finished += f.engine.finish_all()
    assert f.engine.spilled_calls == 1
    from controller.output.finalize import build_recording
    (s,) = build_recording(f.finished[0]).metadata["streams"]
    f.finished[0].release()
    keys = ("packets", "lost", "out_of_order", "jitter_ms", "max_jitter_ms", "max_delta_ms",
            "r_factor", "mos")
    assert {k: s[k] for k in keys} == {k: plain[k] for k in keys} and plain["lost"] == 1


# -- RTCP ---------------------------------------------------------------------------------

_RTCP_FIELDS = ("frame.time_epoch", "ip.src", "ip.dst", "rtcp.pt", "rtcp.senderssrc",
                "rtcp.sender.packetcount", "rtcp.sender.octetcount", "rtcp.timestamp.ntp.msw",
                "rtcp.timestamp.ntp.lsw", "rtcp.ssrc.identifier", "rtcp.ssrc.fraction",
                "rtcp.ssrc.cum_nr", "rtcp.ssrc.jitter", "rtcp.ssrc.lsr", "rtcp.ssrc.dlsr")


def _ints(text: str, base: int = 10) -> list[int]:
    return [int(x, base) for x in text.split("|") if x]


def expected_rtcp(path: Path, src: str, dst: str, ssrc: int) -> dict | None:
    """What tshark's RTCP fields say about one stream, by the documented rules: SRs the
    SSRC sent, report blocks about it (the ones between the stream's addresses if any),
    last values, RTT = RR capture time - capture time of the SR its LSR names - DLSR."""
    srs, blocks = [], []
    for r in tc.fields(path, "rtcp && !icmp", _RTCP_FIELDS, tc.RTP_HEURISTICS, occurrence="a"):
        r = r + [""] * (len(_RTCP_FIELDS) - len(r))
        t = tc.epoch_ns(r[0])
        pts, senders = _ints(r[3]), _ints(r[4], 16)
        sr_senders = [s for p, s in zip([p for p in pts if p in (200, 201)], senders) if p == 200]
        for s, n, o, msw, lsw in zip(sr_senders, _ints(r[5]), _ints(r[6]), _ints(r[7]), _ints(r[8])):
            srs.append((t, r[1], r[2], s, n, o, ((msw & 0xFFFF) << 16) | (lsw >> 16)))
        fr = _ints(r[10])
        for about, f, cum, jit, lsr, dlsr in zip(_ints(r[9], 16)[:len(fr)], fr, _ints(r[11]),
                                                 _ints(r[12]), _ints(r[13]), _ints(r[14])):
            blocks.append((t, r[1], r[2], about, f, cum, jit, lsr, dlsr))
    mine = [x for x in srs if x[3] == ssrc]
    mine = [x for x in mine if (x[1], x[2]) == (src, dst)] or mine
    about = [x for x in blocks if x[3] == ssrc]
    about = [x for x in about if (x[1], x[2]) == (dst, src)] or about
    if not mine and not about:
        return None
    out = {"sender_reports": len(mine), "receiver_reports": len(about)}
    if mine:
        out["packets"], out["octets"] = mine[-1][4], mine[-1][5]
    if about:
        out["fraction_lost"] = about[-1][4] / 256
        out["cumulative_lost"] = about[-1][5]
        out["jitter_ms"] = about[-1][6] / 8
        rtts = []
        for t, _, _, _, _, _, _, lsr, dlsr in about:
            sent = [x[0] for x in srs if x[3] == ssrc and x[6] == lsr and lsr]
            rtt = (t - sent[0]) / 1e6 - dlsr / 65.536 if sent else None
            if rtt is not None and rtt >= -1.0:   # below: DLSR noise of the phone
                rtts.append(rtt)
        out["rtt_ms"] = max(0.0, sum(rtts) / len(rtts)) if rtts else None
    return out


#: RTCP packets tshark's heuristic refuses (2 bytes after the last part: frames 531
#: and 2646, SR + RR + SDES): relay copies of packets it does decode, sent on to
#: 200.57.7.199 — spanrec counts them.  (stream) -> (sender, receiver reports)
TSHARK_REFUSED = {("SIP_CALL_RTP_G711", "200.57.7.196", 40378, 0xD2BD4E3E): (2, 0),
                  ("SIP_CALL_RTP_G711", "200.57.7.199", 4800, 0x58F33DEA): (0, 2)}


@pytest.mark.parametrize("name", ["rtp_conversacion.pcap", "SIP-RTP-Normal_Call_two_parties.pcap",
                                  "sip_ipv4_tcp.pcap", "SIP_CALL_RTP_G711"])
def test_rtcp_summary_equals_tsharks_reports(name: str, tmp_path: Path) -> None:
    """tshark reads each recording's own call.pcap: the RTCP sent after a call ended
    (after BYE + linger) is not part of it, for tshark as for call.json."""
    n = 0
    for i, rec in enumerate(tc.engine_run(capture(name)).recordings):
        path = tmp_path / f"call-{i}.pcap"
        path.write_bytes(rec.files["call.pcap"])
        for s in rec.metadata["streams"]:
            key = _key(s)
            exp = expected_rtcp(path, key[0], key[2], key[4])
            if exp is not None:
                extra = TSHARK_REFUSED.get((name,) + key[:2] + key[4:], (0, 0))
                exp["sender_reports"] += extra[0]
                exp["receiver_reports"] += extra[1]
            got = s["rtcp"]
            if exp is None:
                assert got is None
                continue
            n += 1
            for field, value in exp.items():
                if isinstance(value, float):
                    assert abs(got[field] - value) < 0.002, (key, field, got[field], value)
                else:
                    assert got[field] == value, (key, field)
    assert n >= 2


def test_rtt_feeds_the_delay_impairment() -> None:
    rec = tc.engine_run(capture("rtp_conversacion.pcap")).recordings[0]
    for s in rec.metadata["streams"]:
        assert s["rtcp"]["rtt_ms"] is not None and s["rtcp"]["rtt_ms"] < 5
        assert s["r_factor"] == round(93.2 - 0.024 * s["rtcp"]["rtt_ms"] / 2, 1)

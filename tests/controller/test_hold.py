"""Hold/resume and the call flows around it, recorded as the user experienced them:
constructed calls (re-INVITE sendonly/inactive/c=0.0.0.0, UPDATE, PRACK, delayed
offer, rejected re-INVITE, mutual hold, forked INVITE with early media) and the
public captures (holds of erspan_sip_ipv4_udp.pcapng from tshark's SDP fields,
DTMFsipinfo.pcap's re-INVITEs and CANCEL crossing the 200, early media kept,
aaa.pcap's final responses)."""
from __future__ import annotations

import pytest

from tests.conftest import capture, require_tool
from tests.controller import tshark_calls as tc
from tests.controller.test_calls_engine import CALLEE_IP, CALLER_IP, Feed, answered_call, rtp, sip

S = 1_000_000_000


def sdp(ip: str, port: int, direction: str | None = None) -> str:
    return (f"v=0\r\no=- 1 2 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
            + (f"a={direction}\r\n" if direction else ""))


def from_caller(f: Feed, t: float, method: str, cseq: int, body: str = "", branch: str = "") -> None:
    f.send(t, CALLER_IP, 5060, CALLEE_IP, 5060,
           sip(f"{method} sip:bob@example.com SIP/2.0", cseq=f"{cseq} {method}", to_tag="tt",
               branch=branch or f"z9hG4bK-c{method}{cseq}", body=body))


def from_callee(f: Feed, t: float, method: str, cseq: int, body: str = "") -> None:
    f.send(t, CALLEE_IP, 5060, CALLER_IP, 5060,
           sip(f"{method} sip:alice@example.com SIP/2.0", cseq=f"{cseq} {method}", from_tag="tt",
               to_tag="ftag", branch=f"z9hG4bK-e{method}{cseq}", body=body))


def reply_to_caller(f: Feed, t: float, code: int, method: str, cseq: int, body: str = "") -> None:
    """The callee's response to a request of the caller."""
    f.send(t, CALLEE_IP, 5060, CALLER_IP, 5060,
           sip(f"SIP/2.0 {code} X", cseq=f"{cseq} {method}", to_tag="tt",
               branch=f"z9hG4bK-c{method}{cseq}", body=body))


def reply_to_callee(f: Feed, t: float, code: int, method: str, cseq: int, body: str = "") -> None:
    f.send(t, CALLER_IP, 5060, CALLEE_IP, 5060,
           sip(f"SIP/2.0 {code} X", cseq=f"{cseq} {method}", from_tag="tt", to_tag="ftag",
               branch=f"z9hG4bK-e{method}{cseq}", body=body))


def caller_reinvite(f: Feed, t: float, cseq: int, offer: str, answer: str | None, code: int = 200) -> None:
    from_caller(f, t, "INVITE", cseq, offer)
    reply_to_caller(f, t + 0.05, code, "INVITE", cseq, answer or "")
    from_caller(f, t + 0.1, "ACK", cseq, branch=f"z9hG4bK-ack{cseq}")


def bye(f: Feed, t: float, cseq: int = 9) -> list[dict]:
    from_caller(f, t, "BYE", cseq)
    reply_to_caller(f, t + 0.01, 200, "BYE", cseq)
    return f.done()


def holds(meta: dict) -> list[tuple]:
    return [(h["start_s"], h["end_s"], h["by"]) for h in meta["hold"]]


def test_reinvite_sendonly_then_sendrecv() -> None:
    f = Feed()
    answered_call(f)
    caller_reinvite(f, 10, 2, sdp(CALLER_IP, 4000, "sendonly"), sdp(CALLEE_IP, 5000, "recvonly"))
    caller_reinvite(f, 20, 3, sdp(CALLER_IP, 4000, "sendrecv"), sdp(CALLEE_IP, 5000))
    (meta,) = bye(f, 30)
    assert holds(meta) == [(10.0, 20.0, "caller")]
    assert (meta["status"], meta["end_reason"]) == ("answered", "bye")


def test_null_address_hold_by_the_callee_lasts_until_the_end() -> None:
    f = Feed()
    answered_call(f)
    from_callee(f, 12, "INVITE", 1, sdp("0.0.0.0", 5000))
    reply_to_callee(f, 12.05, 200, "INVITE", 1, sdp(CALLER_IP, 4000))
    (meta,) = bye(f, 25)
    assert holds(meta) == [(12.0, 25.0, "callee")]


def test_inactive_by_update_and_recvonly_offer_is_no_hold() -> None:
    f = Feed()
    answered_call(f)
    from_caller(f, 5, "UPDATE", 2, sdp(CALLER_IP, 4000, "inactive"))
    reply_to_caller(f, 5.05, 200, "UPDATE", 2, sdp(CALLEE_IP, 5000, "inactive"))
    from_caller(f, 8, "UPDATE", 3, sdp(CALLER_IP, 4000, "recvonly"))       # mute, not hold
    reply_to_caller(f, 8.05, 200, "UPDATE", 3, sdp(CALLEE_IP, 5000, "sendonly"))
    (meta,) = bye(f, 12)
    assert holds(meta) == [(5.0, 8.0, "caller")]


def test_rejected_reinvite_is_no_hold() -> None:
    f = Feed()
    answered_call(f)
    caller_reinvite(f, 10, 2, sdp(CALLER_IP, 4000, "sendonly"), None, code=491)
    (meta,) = bye(f, 20)
    assert holds(meta) == []


def test_delayed_offer_reinvite_answered_sendonly_in_the_ack() -> None:
    f = Feed()
    answered_call(f)
    from_caller(f, 10, "INVITE", 2)
    reply_to_caller(f, 10.05, 200, "INVITE", 2, sdp(CALLEE_IP, 5000))          # the offer
    from_caller(f, 10.1, "ACK", 2, sdp(CALLER_IP, 4000, "sendonly"), branch="z9hG4bK-ack2")
    caller_reinvite(f, 15, 3, sdp(CALLER_IP, 4000), sdp(CALLEE_IP, 5000))
    (meta,) = bye(f, 20)
    assert holds(meta) == [(10.1, 15.0, "caller")]


def test_mutual_hold() -> None:
    f = Feed()
    answered_call(f)
    caller_reinvite(f, 10, 2, sdp(CALLER_IP, 4000, "sendonly"), sdp(CALLEE_IP, 5000, "recvonly"))
    from_callee(f, 12, "INVITE", 1, sdp(CALLEE_IP, 5000, "inactive"))
    reply_to_callee(f, 12.05, 200, "INVITE", 1, sdp(CALLER_IP, 4000, "inactive"))
    from_callee(f, 15, "INVITE", 2, sdp(CALLEE_IP, 5000))
    reply_to_callee(f, 15.05, 200, "INVITE", 2, sdp(CALLER_IP, 4000, "sendonly"))   # still holding
    caller_reinvite(f, 18, 3, sdp(CALLER_IP, 4000), sdp(CALLEE_IP, 5000))
    (meta,) = bye(f, 20)
    assert holds(meta) == [(10.0, 18.0, "caller"), (12.0, 15.0, "callee")]


def test_prack_answer_then_update_hold_before_the_200() -> None:
    f = Feed()
    f.invite(0)                                                                   # no SDP
    reply_to_caller(f, 1, 183, "INVITE", 1, sdp(CALLEE_IP, 5000))                 # offer, 100rel
    from_caller(f, 1.1, "PRACK", 2, sdp(CALLER_IP, 4000))                         # answer
    reply_to_caller(f, 1.15, 200, "PRACK", 2)
    for i in range(10):                                                           # early media
        f.send(1.2 + i * 0.02, CALLEE_IP, 5000, CALLER_IP, 4000, rtp(i, i * 160, 0xB))
    from_caller(f, 2, "UPDATE", 3, sdp(CALLER_IP, 4000, "sendonly"))
    reply_to_caller(f, 2.05, 200, "UPDATE", 3, sdp(CALLEE_IP, 5000, "recvonly"))
    reply_to_caller(f, 3, 200, "INVITE", 1)
    from_caller(f, 3.1, "ACK", 1, branch="z9hG4bK-ack1")
    from_caller(f, 4, "UPDATE", 4, sdp(CALLER_IP, 4000, "sendrecv"))
    reply_to_caller(f, 4.05, 200, "UPDATE", 4, sdp(CALLEE_IP, 5000))
    (meta,) = bye(f, 6)
    assert holds(meta) == [(2.0, 4.0, "caller")]
    assert meta["status"] == "answered" and meta["answered_at"].endswith(":03.000000Z")
    (s,) = meta["streams"]
    assert (s["direction"], s["packets"]) == ("callee", 10)                       # early media kept


def test_forked_invite_early_media_from_two_forks_then_one_answers() -> None:
    f = Feed()
    f.invite(0, body=sdp(CALLER_IP, 4000))
    fork_b = "10.0.0.3"
    f.send(1, CALLEE_IP, 5060, CALLER_IP, 5060, sip("SIP/2.0 183 X", to_tag="a", body=sdp(CALLEE_IP, 5000)))
    f.send(1.1, fork_b, 5060, CALLER_IP, 5060, sip("SIP/2.0 183 X", to_tag="b", body=sdp(fork_b, 7000)))
    for i in range(20):
        f.send(1.2 + i * 0.02, CALLEE_IP, 5000, CALLER_IP, 4000, rtp(i, i * 160, 0xA1))
        f.send(1.2 + i * 0.02, fork_b, 7000, CALLER_IP, 4000, rtp(i, i * 160, 0xB1))
    f.send(2, fork_b, 5060, CALLER_IP, 5060, sip("SIP/2.0 180 X", to_tag="b"))
    f.send(3, fork_b, 5060, CALLER_IP, 5060, sip("SIP/2.0 200 X", to_tag="b", body=sdp(fork_b, 7000)))
    f.send(3.1, CALLER_IP, 5060, fork_b, 5060, sip("ACK sip:bob@example.com SIP/2.0", cseq="1 ACK",
                                                   to_tag="b", branch="z9hG4bK-ack"))
    f.send(3.2, CALLEE_IP, 5060, CALLER_IP, 5060, sip("SIP/2.0 487 X", to_tag="a"))  # the other fork
    for i in range(20, 40):
        f.send(3.2 + (i - 20) * 0.02, fork_b, 7000, CALLER_IP, 4000, rtp(i, i * 160, 0xB1))
    (meta,) = bye(f, 5)
    assert (meta["status"], meta["final_response"]) == ("answered", 200)
    assert meta["answered_at"].endswith(":03.000000Z") and holds(meta) == []
    packets = {s["ssrc"]: s["packets"] for s in meta["streams"]}
    assert packets == {0xA1: 20, 0xB1: 40}


# -- public captures --------------------------------------------------------------------

@pytest.fixture(scope="module")
def _tshark() -> None:
    require_tool("tshark")


def _expected_holds(path) -> dict[str, list[tuple[int, int, str]]]:
    """Holds by tshark's SIP/SDP fields: a re-INVITE/UPDATE whose SDP is sendonly,
    inactive or c=0.0.0.0 starts a hold by its sender (the caller if its From-tag is
    the From-tag of an initial INVITE of that Call-ID, on any hop); a later one from
    the same side that is not ends it, else the first BYE does.  Overlapping holds of
    one side (two hops) are one."""
    rows = tc.fields(path, "sip", ("frame.time_epoch", "sip.Call-ID", "sip.Method", "sip.from.tag",
                                   "sip.to.tag", "sdp.connection_info", "sdp.media_attr"),
                     occurrence="a")
    caller_tags: dict[str, set[str]] = {}
    for t, cid, method, ftag, ttag, *_ in rows:
        if method == "INVITE" and not ttag:
            caller_tags.setdefault(cid, set()).add(ftag)
    out: dict[str, list] = {}
    open_: dict[tuple[str, str], int] = {}
    for t, cid, method, ftag, ttag, conn, attrs in rows:
        if method == "BYE":
            for (c, side), start in list(open_.items()):
                if c == cid:
                    out.setdefault(cid, []).append((start, tc.epoch_ns(t), side))
                    del open_[(c, side)]
        if method not in ("INVITE", "UPDATE") or not ttag or not conn:
            continue
        side = "caller" if ftag in caller_tags.get(cid, ()) else "callee"
        held = "0.0.0.0" in conn or any(a in ("sendonly", "inactive") for a in attrs.split("|"))
        if held and (cid, side) not in open_:
            open_[(cid, side)] = tc.epoch_ns(t)
        elif not held and (cid, side) in open_:
            out.setdefault(cid, []).append((open_.pop((cid, side)), tc.epoch_ns(t), side))
    return out


def test_holds_of_the_erspan_capture_equal_tsharks(_tshark) -> None:
    path = capture("erspan_sip_ipv4_udp.pcapng")
    expected = _expected_holds(path)
    calls = tc.expected_calls(path)
    assert len(expected) == 3
    run = tc.engine_run(path)
    for call, rec in zip(run.calls, run.recordings):
        cid = call.call_ids[0]
        start = calls[cid].first_ns
        exp = sorted(((s - start) / S, (e - start) / S, side) for s, e, side in expected.get(cid, []))
        got = holds(rec.metadata)
        assert len(got) == len(exp), cid
        for g, e in zip(got, exp):
            assert g[2] == e[2] and abs(g[0] - e[0]) <= 0.0005 and abs(g[1] - e[1]) <= 0.0005, (g, e)


def test_dtmfsipinfo_reinvites_and_cancel_crossing_the_200(_tshark) -> None:
    path = capture("DTMFsipinfo.pcap")
    exp = tc.expected_calls(path)
    (cid,) = exp
    rows = tc.fields(path, "sip", ("frame.time_epoch", "sip.Method", "sip.Status-Code", "sip.CSeq.method",
                                   "sip.to.tag"))
    first_200 = min(tc.epoch_ns(r[0]) for r in rows if r[2] == "200" and r[3] == "INVITE")
    cancels = [r for r in rows if r[1] == "CANCEL"]
    reinvites = [r for r in rows if r[1] == "INVITE" and r[4]]
    assert cancels and len(reinvites) == 2 and min(tc.epoch_ns(r[0]) for r in cancels) > first_200 - S
    (call,) = tc.engine_run(path).calls
    (rec,) = tc.engine_run(path).recordings
    meta = rec.metadata
    assert (meta["status"], meta["final_response"]) == ("answered", 200)
    assert call.answered_ns == first_200 == exp[cid].answered_ns
    assert meta["end_reason"] == "capture-end" and meta["ended_at"] is not None
    assert holds(meta) == []                  # the callee's re-INVITEs only refresh (sendrecv)


def test_early_media_is_kept(_tshark) -> None:
    """nb6-telephone.pcap: 183 with SDP, the callee's audio starts before the 200 OK;
    aaa.pcap: 183, 9 packets of early media, then 480 (test_calls_captures.py)."""
    path = capture("nb6-telephone.pcap")
    (rec,) = tc.engine_run(path).recordings
    (call,) = tc.engine_run(path).calls
    answered = call.answered_ns
    rtp_rows = tc.rtp_packets(path)
    early = [p for p in rtp_rows if p.ts_ns < answered]
    assert early and all(p.src == "109.3.79.137" for p in early)
    s = next(s for s in rec.metadata["streams"] if s["src"] == "109.3.79.137:44344")
    assert s["packets"] == sum(1 for p in rtp_rows if p.src == "109.3.79.137")
    assert s["used_for_audio"]


def test_aaa_final_responses(_tshark) -> None:
    path = capture("aaa.pcap")
    rows = tc.fields(path, "sip.Status-Code >= 300 && sip.CSeq.method == \"INVITE\"",
                     ("sip.Call-ID", "sip.Status-Code"))
    last: dict[str, int] = {}
    for cid, code in rows:
        if code not in ("401", "407"):
            last[cid] = int(code)
    assert sorted(last.values()) == [403, 403, 408, 480]
    got = {c.call_ids[0]: r.metadata["final_response"] for c, r in
           zip(tc.engine_run(path).calls, tc.engine_run(path).recordings)}
    assert got == last

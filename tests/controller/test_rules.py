"""Recording rules (controller/calls/rules.py): the pure decision, its config errors,
and the engine built packet by packet (tests/controller/test_legs.py's Feed):
a call not recorded keeps call.json and a SIP-only call.pcap (read back with
tshark), says why, and keeps no RTP in memory; the other calls are recorded."""
from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from controller.calls.engine import CallConfig
from controller.calls.rules import RECORD, Decision, RecordingRules, RulesError
from protocols.layers import decode, str_to_ip
from protocols.sip import parse_sip
from storage.layout import AUDIO_WAV, CALL_PCAP
from tests.controller.test_legs import SBC_IN, SBC_OUT, A, B, Feed, frame, rtp, sdp, sip, speech

S = 1_000_000_000


def headers(*lines: str) -> dict[str, list[str]]:
    return parse_sip(sip("INVITE sip:b SIP/2.0", "c1", headers=lines)).headers


# -- decide: each rule ---------------------------------------------------------------

def test_default_rules_record_everything() -> None:
    rules = RecordingRules()
    assert rules.decide("sip:alice@a", "sip:bob@b", headers()) == RECORD
    assert rules.decide(None, None, {}) == RECORD
    assert rules.effective_default == "record"


@pytest.mark.parametrize("value", ["no", "No", "FALSE", "0", "off", " no ;reason=gdpr"])
def test_header_says_no(value: str) -> None:
    d = RecordingRules().decide("sip:a@x", "sip:b@y", headers(f"X-Record: {value}"))
    assert d == Decision(False, f"header X-Record: {value.split(';')[0].strip()}")


@pytest.mark.parametrize("value", ["yes", "1", "maybe", ""])
def test_other_header_values_decide_nothing(value: str) -> None:
    assert RecordingRules().decide("sip:a@x", "sip:b@y", headers(f"X-Record: {value}")).record


def test_header_name_and_values_are_configurable() -> None:
    rules = RecordingRules.from_dict({"skip_header": "P-Privacy-Record", "skip_values": ["never"]})
    assert not rules.decide("a", "b", headers("p-privacy-record: NEVER")).record
    assert rules.decide("a", "b", headers("P-Privacy-Record: no")).record
    assert rules.decide("a", "b", headers("X-Record: no")).record      # not the configured one
    # a header appearing twice: any value meaning no counts
    assert not rules.decide("a", "b", headers("P-Privacy-Record: yes", "P-Privacy-Record: never")).record


@pytest.mark.parametrize("off", [None, "", "none", "NONE"])
def test_header_rule_can_be_turned_off(off) -> None:
    rules = RecordingRules.from_dict({"skip_header": off})
    assert rules.skip_header is None
    assert rules.decide("a", "b", headers("X-Record: no")).record


def test_compact_header_name() -> None:
    # "s" is Subject's compact form: the parser stores the full name
    rules = RecordingRules.from_dict({"skip_header": "s"})
    assert not rules.decide("a", "b", headers("s: no")).record
    assert not rules.decide("a", "b", headers("Subject: no")).record


def test_include_patterns_record_only_matching_numbers() -> None:
    rules = RecordingRules.from_dict({"include": ["sip:+4930*", "1???"]})
    assert rules.effective_default == "signalling-only"
    # the whole URI (as in the header, without parameters) ...
    assert rules.decide("sip:+4930123@pbx.example.com", "sip:bob@b", {}) == RECORD
    # ... or its user part, of From or To; case-insensitive
    assert rules.decide("sip:alice@a", "SIP:1234@B", {}) == RECORD
    assert rules.decide("tel:1234", "sip:bob@b", {}) == RECORD
    assert rules.decide("sip:1234;isup-oli=0@a", "sip:bob@b", {}) == RECORD
    assert rules.decide("sip:alice@a", "sip:12345@b", {}) == \
        Decision(False, "from/to match no include pattern")
    assert not rules.decide("sip:+4940123@a", "sip:bob@b", {}).record
    assert not rules.decide(None, None, {}).record


def test_side_prefix_limits_a_pattern_to_from_or_to() -> None:
    rules = RecordingRules.from_dict({"include": ["to:sip:hotline@*"]})
    assert rules.decide("sip:alice@a", "sip:hotline@pbx", {}).record
    assert not rules.decide("sip:hotline@pbx", "sip:alice@a", {}).record
    rules = RecordingRules.from_dict({"exclude": ["FROM:*@spam.example"]})
    assert rules.decide("sip:alice@a", "sip:x@spam.example", {}).record
    assert rules.decide("sip:x@spam.example", "sip:alice@a", {}) == \
        Decision(False, "from sip:x@spam.example matches exclude pattern 'FROM:*@spam.example'")


def test_glob_classes() -> None:
    rules = RecordingRules.from_dict({"include": ["10[0-4]?", "sip:[!9]*@internal"]})
    assert rules.decide("sip:1031@x", "sip:z@y", {}).record
    assert not rules.decide("sip:1051@x", "sip:z@y", {}).record
    assert rules.decide("sip:z@y", "sip:555@internal", {}).record
    assert not rules.decide("sip:z@y", "sip:955@internal", {}).record


def test_default_signalling_only_records_nothing() -> None:
    rules = RecordingRules.from_dict({"default": "signalling-only"})
    assert rules.decide("sip:a@x", "sip:b@y", {}) == Decision(False, "default is signalling-only")


# -- decide: precedence ----------------------------------------------------------------

def test_header_beats_patterns_and_exclude_beats_include() -> None:
    rules = RecordingRules.from_dict({"include": ["sip:+4930*"], "exclude": ["*@blocked"]})
    assert rules.decide("sip:+4930123@a", "sip:b@c", headers("X-Record: off")) == \
        Decision(False, "header X-Record: off")
    assert rules.decide("sip:+4930123@a", "sip:b@blocked", {}) == \
        Decision(False, "to sip:b@blocked matches exclude pattern '*@blocked'")
    assert rules.decide("sip:+4930123@a", "sip:b@c", {}) == RECORD
    # include patterns with an explicit signalling-only default: the same
    rules2 = RecordingRules.from_dict({"include": ["sip:+4930*"], "default": "signalling-only"})
    assert rules2.decide("sip:+4930123@a", "sip:b@c", {}) == RECORD
    # exclude alone: everything else is recorded
    rules3 = RecordingRules.from_dict({"exclude": ["*@blocked"]})
    assert rules3.decide("sip:a@x", "sip:b@y", {}) == RECORD


# -- config: parsing and errors ------------------------------------------------------

def test_from_dict_round_trip_and_dashes() -> None:
    rules = RecordingRules.from_dict({"skip-header": "X-Rec", "include": "1???", "exclude": []})
    assert rules.skip_header == "X-Rec" and rules.include == ("1???",)
    assert RecordingRules.from_dict(rules.to_dict()) == rules.__class__(
        skip_header="X-Rec", include=("1???",), default="signalling-only")
    assert RecordingRules.from_dict(None) == RecordingRules() == RecordingRules.from_dict({})


@pytest.mark.parametrize("data,field,needle", [
    ({"includ": ["x"]}, "includ", "unknown field"),
    ({"include": ["ok", 5]}, "include[1]", "expected a string"),
    ({"include": [""]}, "include[0]", "empty"),
    ({"include": ["a b"]}, "include[0]", "white space"),
    ({"exclude": ["to:"]}, "exclude[0]", "nothing after to:"),
    ({"exclude": {"a": 1}}, "exclude", "expected a list of strings"),
    ({"include": ["x" * 600]}, "include[0]", "longer than"),
    ({"default": "maybe"}, "default", "expected 'record' or 'signalling-only'"),
    ({"default": "record", "include": ["1???"]}, "default", "would record every call"),
    ({"skip_header": "X Record"}, "skip_header", "not a SIP header name"),
    ({"skip_header": 3}, "skip_header", "expected a header name"),
    ({"skip_values": []}, "skip_values", "must not be empty"),
    (["include"], "", "expected an object"),
])
def test_bad_config_names_the_field(data, field: str, needle: str) -> None:
    with pytest.raises(RulesError) as exc:
        RecordingRules.from_dict(data)
    assert exc.value.field == field
    assert needle in str(exc.value)
    assert str(exc.value).startswith(f"record_rules.{field}:" if field else "record_rules:")


def test_constructor_checks_too() -> None:
    with pytest.raises(RulesError, match="include"):
        RecordingRules(include=["1???"])  # type: ignore[arg-type]
    with pytest.raises(RulesError, match="default"):
        RecordingRules(default="sometimes")  # type: ignore[arg-type]


# -- the engine ------------------------------------------------------------------------

def call_packets(t: float, call_id: str, caller: str, callee: str, port: int, n_rtp: int = 25,
                 invite_headers: tuple[str, ...] = (), to_user: str = "bob"):
    """A whole call as (t, src, sport, dst, dport, payload): INVITE/200/ACK, n RTP
    packets each way (SSRC = port, port + 1), BYE/200."""
    to = f"sip:{to_user}@example.com"

    def retarget(msg: bytes) -> bytes:  # sip() always writes To: <sip:bob@example.com>
        return msg.replace(b"<sip:bob@example.com>", f"<{to}>".encode())
    yield t, caller, 5060, callee, 5060, retarget(sip(f"INVITE {to} SIP/2.0", call_id,
                                                      body=sdp(caller, port), headers=invite_headers))
    yield t + 0.1, callee, 5060, caller, 5060, retarget(sip("SIP/2.0 200 OK", call_id, to_tag="tt",
                                                            body=sdp(callee, port + 1000)))
    yield t + 0.2, caller, 5060, callee, 5060, retarget(sip(f"ACK {to} SIP/2.0", call_id, "1 ACK",
                                                            to_tag="tt", branch="z9hG4bK-ack"))
    out, back = speech(port, n_rtp), speech(port + 1, n_rtp)
    for i in range(n_rtp):
        yield t + 0.3 + i * 0.02, caller, port, callee, port + 1000, rtp(i, port, out[i])
        yield t + 0.301 + i * 0.02, callee, port + 1000, caller, port, rtp(i, port + 1, back[i])
    end = t + 0.4 + n_rtp * 0.02
    yield end, caller, 5060, callee, 5060, retarget(sip(f"BYE {to} SIP/2.0", call_id, "2 BYE",
                                                        to_tag="tt", branch="z9hG4bK-bye"))
    yield end + 0.01, callee, 5060, caller, 5060, retarget(sip("SIP/2.0 200 OK", call_id, "2 BYE",
                                                               to_tag="tt", branch="z9hG4bK-bye"))


def call(f: Feed, *args, **kwargs) -> None:
    for t, src, sport, dst, dport, payload in call_packets(*args, **kwargs):
        f.send(t, src, sport, dst, dport, payload)


def tshark_count(path: Path, display_filter: str) -> int:
    out = subprocess.run(["tshark", "-n", "-r", str(path), "-o", "rtp.heuristic_rtp:TRUE",
                          "-Y", display_filter, "-T", "fields", "-e", "frame.number"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return len([ln for ln in out.splitlines() if ln.strip()])


def by_call(recordings) -> dict:
    return {r.metadata["call_ids"][0]: r for r in recordings}


needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")


@needs_tshark
def test_x_record_no_keeps_signalling_only(tmp_path: Path) -> None:
    f = Feed()
    call(f, 1.0, "keep-1", A, B, 4000)
    call(f, 1.05, "private", A, B, 4100, invite_headers=("X-Record: no",))
    call(f, 1.1, "keep-2", A, B, 4200)
    recs = by_call(f.recordings())
    assert f.engine.counters["calls_not_recorded"] == 1
    private = recs["private"]
    meta = private.metadata
    assert meta["recorded"] is False and meta["not_recorded_reason"] == "header X-Record: no"
    assert meta["status"] == "answered" and meta["end_reason"] == "bye"   # metadata is all there
    assert meta["streams"] == [] and meta["audio"] is None and AUDIO_WAV not in private.files
    assert meta["rtp_packets"] == 0 and meta["pcap_packets"] == meta["sip_packets"] == 5
    path = tmp_path / "private.pcap"
    path.write_bytes(private.files[CALL_PCAP])
    assert tshark_count(path, "sip") == 5
    assert tshark_count(path, "rtp or rtcp or not sip") == 0
    for cid in ("keep-1", "keep-2"):
        m = recs[cid].metadata
        assert m["recorded"] is True and m["not_recorded_reason"] is None
        assert m["rtp_packets"] == 50 and AUDIO_WAV in recs[cid].files
        path = tmp_path / f"{cid}.pcap"
        path.write_bytes(recs[cid].files[CALL_PCAP])
        assert tshark_count(path, "rtp") == 50 and tshark_count(path, "sip") == 5


def test_media_of_a_call_not_recorded_is_never_kept() -> None:
    """Memory: its SDP is not mapped, so its RTP does not even reach the call."""
    f = Feed()
    call(f, 1.0, "private", A, B, 4100, invite_headers=("X-Record: no",), n_rtp=40)
    assert f.engine.counters["rtp_unmatched"] == 80
    (active,) = f.engine.table.calls()
    assert len(active.frame_data) == 5 and not active.streams and not active.endpoints
    assert not f.engine.table.media


def test_patterns_choose_the_calls(tmp_path: Path) -> None:
    rules = RecordingRules.from_dict({"include": ["to:1???"], "exclude": ["to:1999"]})
    f = Feed(CallConfig(record_rules=rules))
    call(f, 1.0, "to-1001", A, B, 4000, to_user="1001")
    call(f, 1.0, "to-1999", A, B, 4100, to_user="1999")
    call(f, 1.0, "to-bob", A, B, 4200)
    recs = by_call(f.recordings())
    assert {cid: r.metadata["not_recorded_reason"] for cid, r in recs.items()} == {
        "to-1001": None,
        "to-1999": "to sip:1999@example.com matches exclude pattern 'to:1999'",
        "to-bob": "from/to match no include pattern"}
    assert [recs[c].metadata["rtp_packets"] for c in ("to-1001", "to-1999", "to-bob")] == [50, 0, 0]


def test_rule_change_applies_to_calls_that_start_after_it() -> None:
    f = Feed()
    f.send(1.0, A, 5060, B, 5060, sip("INVITE sip:bob@example.com SIP/2.0", "before",
                                      body=sdp(A, 4000)))
    f.engine.rules = RecordingRules.from_dict({"default": "signalling-only"})
    # the call already started goes on being recorded, its answer's SDP included
    f.send(1.1, B, 5060, A, 5060, sip("SIP/2.0 200 OK", "before", to_tag="tt", body=sdp(B, 5000)))
    for i in range(10):
        f.send(1.2 + i * 0.02, B, 5000, A, 4000, rtp(i, 7, b"\x11" * 160))
    call(f, 2.0, "after", A, B, 4100)
    recs = by_call(f.recordings())
    assert recs["before"].metadata["recorded"] and recs["before"].metadata["rtp_packets"] == 10
    assert recs["after"].metadata["not_recorded_reason"] == "default is signalling-only"


def test_the_root_leg_decides_even_when_it_is_seen_last() -> None:
    """A child leg (X-Call-ID) seen first and recorded, then its parent with
    X-Record: no: the call is not recorded; media kept so far is left out and
    no more is kept."""
    f = Feed()
    f.leg(1.0, "leg2", SBC_OUT, B, 6000, 7000, headers=("X-Call-ID: leg1",))
    for i in range(10):
        f.send(1.3 + i * 0.02, SBC_OUT, 6000, B, 7000, rtp(i, 9, b"\x22" * 160))
    assert f.engine.table.media
    f.leg(1.5, "leg1", A, SBC_IN, 4000, 5000, headers=("X-Record: no",))
    assert not f.engine.table.media            # unmapped at once
    for i in range(10):
        f.send(1.8 + i * 0.02, SBC_OUT, 6000, B, 7000, rtp(10 + i, 9, b"\x22" * 160))
    f.bye(3.0, "leg1", A, SBC_IN)
    f.bye(3.0, "leg2", SBC_OUT, B)
    (rec,) = f.recordings()
    meta = rec.metadata
    assert meta["call_ids"] == ["leg1", "leg2"]
    assert meta["recorded"] is False and meta["not_recorded_reason"] == "header X-Record: no"
    assert meta["streams"] == [] and AUDIO_WAV not in rec.files
    assert meta["pcap_packets"] == meta["sip_packets"] == 10   # the 10 RTP kept early are dropped
    assert not f.engine._not_recorded and not f.engine._provisional    # forgotten with the call
    # its media is not caught as late packets of the finished call either
    f.send(3.5, SBC_OUT, 6000, B, 7000, rtp(30, 9, b"\x22" * 160))
    assert f.engine.counters.get("late_packets", 0) == 0


def test_a_recorded_root_keeps_a_child_that_said_no() -> None:
    f = Feed()
    f.leg(1.0, "leg1", A, SBC_IN, 4000, 5000)
    f.leg(1.05, "leg2", SBC_OUT, B, 6000, 7000, headers=("X-Call-ID: leg1", "X-Record: no"))
    for i in range(10):
        f.send(1.3 + i * 0.02, SBC_OUT, 6000, B, 7000, rtp(i, 9, b"\x22" * 160))
    (meta,) = f.done()
    assert meta["call_ids"] == ["leg1", "leg2"] and meta["recorded"] is True
    assert meta["rtp_packets"] == 10


def _ipv4_fragments(src: str, dst: str, udp: bytes, cut: int, ip_id: int) -> list[bytes]:
    """An Ethernet/IPv4 datagram split at `cut` bytes of its UDP part (a multiple of 8)."""
    out = []
    for off, part, more in ((0, udp[:cut], 1), (cut, udp[cut:], 0)):
        flags = (more << 13) | (off // 8)
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(part), ip_id, flags, 64, 17, 0,
                         str_to_ip(src), str_to_ip(dst))
        out.append(b"\x00" * 12 + b"\x08\x00" + ip + part)
    return out


def test_header_beyond_the_first_fragment_still_counts() -> None:
    """A big INVITE: X-Record is in its second IP fragment.  The call is decided on
    the truncated first fragment, then again on the reassembled datagram."""
    f = Feed()
    filler = tuple(f"X-Filler-{i}: {'y' * 60}" for i in range(20))
    payload = sip("INVITE sip:bob@example.com SIP/2.0", "big", body=sdp(A, 4000),
                  headers=(*filler, "X-Record: no"))
    udp = struct.pack("!HHHH", 5060, 5060, 8 + len(payload), 0) + payload
    cut = (udp.index(b"X-Record") - 40) // 8 * 8
    frags = _ipv4_fragments(A, B, udp, cut, 77)
    t = int(1.0 * S)
    for data in frags:
        assert f.engine.process(t, "s1", 1, data, decode(1, data))
    assert "big" in f.engine._provisional and not f.engine._not_recorded
    whole = frame(A, 5060, B, 5060, payload)
    assert f.engine.reassembled(t, "s1", 1, whole, decode(1, whole))
    assert f.engine._not_recorded == {"big": "header X-Record: no"} and not f.engine.table.media
    (meta,) = f.done()
    assert meta["recorded"] is False and meta["pcap_packets"] == 2

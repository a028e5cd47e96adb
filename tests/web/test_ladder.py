"""web.ladder: the SIP ladder of a call.pcap, checked against tshark's SIP dissection.

tshark runs with its default reassembly (TCP streams, IPv4/IPv6 fragments) and
SIP on 6060/TCP; its PDML output has one <proto name="sip"> per SIP message,
so a frame completing several messages gives several, in stream order.
"""
from __future__ import annotations

import ipaddress
import os
import random
import struct
import subprocess
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import web.ladder as ladder_mod
from protocols.layers import str_to_ip
from protocols.pcapfile import pcap_bytes
from tests.conftest import CALL_CAPTURES, CAPTURES, capture, require_tool
from tests.controller._sipbuild import S, audio_line, sdp, sip, udp_frame
from tests.protocols._build import ethernet, ipv4, ipv4_fragments, udp, vlan_tagged
from web.ladder import MAX_MESSAGES, Ladder, LadderError, LadderMessage, ladder

TSHARK_OPTS = ("-o", "tcp.desegment_tcp_streams:TRUE", "-o", "ip.defragment:TRUE",
               "-o", "ipv6.defragment:TRUE", "-d", "tcp.port==6060,sip")


class Ref(NamedTuple):
    """One SIP message as tshark dissected it."""

    label: str        # method, or status code
    call_id: str | None
    src: str          # "IP:port" / "[IPv6]:port" of the innermost IP packet
    dst: str
    sdp: bool         # an SDP body (tshark's sdp dissector inside the message)


def _host(addr: str, port: str) -> str:
    ip = ipaddress.ip_address(addr)
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


@lru_cache(maxsize=None)
def tshark_sip(path: Path) -> tuple[Ref, ...]:
    """Every SIP message tshark finds in the file, in its order (a file cut short: exit
    status 2, "appears to have been cut short", after the output of the frames before)."""
    tshark = require_tool("tshark")
    proc = subprocess.run([tshark, "-n", "-r", str(path), *TSHARK_OPTS, "-Y", "sip", "-T", "pdml"],
                          capture_output=True, timeout=120)
    if proc.returncode != 0 and b"cut short" not in proc.stderr:
        raise AssertionError(f"tshark failed: {proc.stderr.decode(errors='replace')}")
    out: list[Ref] = []
    for packet in ET.fromstring(proc.stdout).iter("packet"):
        addr: dict[str, str] = {}
        for proto in packet.findall("proto"):      # in order: outer headers before inner ones
            name = proto.get("name")
            if name in ("ip", "ipv6", "udp", "tcp"):
                for fld in proto.iter("field"):
                    fname = fld.get("name", "")
                    for key in ("src", "dst", "srcport", "dstport"):
                        if fname == f"{name}.{key}":
                            addr[key] = fld.get("show", "")
            elif name == "sip":
                fields: dict[str, str] = {}
                for fld in proto.iter("field"):
                    fields.setdefault(fld.get("name", ""), fld.get("show", ""))
                label = fields.get("sip.Method") or fields.get("sip.Status-Code") or "?"
                sdp = any(p.get("name") == "sdp" for p in proto.iter("proto"))
                out.append(Ref(label, fields.get("sip.Call-ID"), _host(addr["src"], addr["srcport"]),
                               _host(addr["dst"], addr["dstport"]), sdp))
    return tuple(out)


def _kind(m: LadderMessage) -> str:
    return m.label if m.is_request else m.label.split(" ", 1)[0]


@lru_cache(maxsize=None)
def _ladder_of(name: str) -> Ladder:
    return ladder(capture(name).read_bytes())


@pytest.mark.parametrize("name", CALL_CAPTURES)
def test_messages_match_tshark(name: str) -> None:
    path = capture(name)
    ref = tshark_sip(path)
    lad = _ladder_of(name)
    assert ref, "tshark finds no SIP message"
    assert len(lad.messages) == len(ref)
    assert [_kind(m) for m in lad.messages] == [r.label for r in ref]
    assert {m.call_id for m in lad.messages} == {r.call_id for r in ref}
    assert [m.has_sdp for m in lad.messages] == [r.sdp for r in ref]
    # arrows: the same endpoints, hosts in order of first appearance
    assert [(lad.hosts[m.src], lad.hosts[m.dst]) for m in lad.messages] == [(r.src, r.dst) for r in ref]
    hosts: list[str] = []
    for r in ref:
        for h in (r.src, r.dst):
            if h not in hosts:
                hosts.append(h)
    assert lad.hosts == hosts
    assert not lad.truncated and lad.error is None


@pytest.mark.parametrize("name", ["sip_ipv4_tcp.pcap", "sip_ipv4_tcp_fragmented.pcap",
                                  "ipv6frag.pcap", "DTMFsipinfo.pcap"])
def test_fields(name: str) -> None:
    lad = _ladder_of(name)
    tcp = "tcp" in name
    t0 = lad.messages[0]
    assert t0.t == 0.0
    for m in lad.messages:
        assert m.transport == ("TCP" if tcp else "UDP")
        assert m.t >= -1.0
        assert m.at.endswith("Z") and len(m.at) == len("2024-01-01T00:00:00.000000Z")
        when = datetime.strptime(m.at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
        first = datetime.strptime(t0.at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
        assert abs((when - first).total_seconds() - m.t) < 2e-6
        seq, method = m.cseq.split(" ")
        assert seq.isdigit()
        if m.is_request:
            assert m.label == method and m.summary.startswith(f"{method} ")
        else:
            assert m.label[:3].isdigit() and m.summary.startswith(f"SIP/2.0 {m.label[:3]}")
    if name == "ipv6frag.pcap":
        assert all(h.startswith("[") for h in lad.hosts)
    # SDP: the INVITE of a basic call carries an offer, its 100 Trying none
    invite = next(m for m in lad.messages if m.label == "INVITE")
    assert invite.has_sdp
    assert not any(m.has_sdp for m in lad.messages if m.label.startswith("100"))


# -- built captures -------------------------------------------------------------------------

A, B = "10.0.0.1", "10.0.0.2"


def _invite() -> bytes:
    return sip("INVITE sip:bob@example.com SIP/2.0", "call-1", "1 INVITE", "ft", None, A,
               sdp(A, [audio_line(4000)]))


def test_retransmitted_invite() -> None:
    inv = _invite()
    trying = sip("SIP/2.0 100 Trying", "call-1", "1 INVITE", "ft", None, A)
    frames = [(1 * S, udp_frame(A, 5060, B, 5060, inv)),
              (1 * S + 500_000_000, udp_frame(A, 5060, B, 5060, inv)),
              (2 * S, udp_frame(B, 5060, A, 5060, trying)),
              (3 * S, udp_frame(B, 5060, A, 5060, trying))]
    lad = ladder(pcap_bytes(frames, 1))
    assert lad.hosts == [f"{A}:5060", f"{B}:5060"]
    assert [(m.label, m.src, m.dst, m.retransmission) for m in lad.messages] == [
        ("INVITE", 0, 1, False), ("INVITE", 0, 1, True),
        ("100 Trying", 1, 0, False), ("100 Trying", 1, 0, True)]
    first = lad.messages[0]
    assert first.call_id == "call-1" and first.cseq == "1 INVITE" and first.is_request
    assert first.has_sdp and not lad.messages[2].has_sdp
    assert first.transport == "UDP" and first.summary == "INVITE sip:bob@example.com SIP/2.0"
    assert first.at == "1970-01-01T00:00:01.000000Z"
    assert [m.t for m in lad.messages] == [0.0, 0.5, 1.0, 2.0]
    assert lad.skipped == 0 and not lad.truncated and lad.error is None


def test_same_request_other_direction_or_branch_is_no_retransmission() -> None:
    inv = _invite()
    other_branch = inv.replace(b"branch=z9hG4bK-call-1", b"branch=z9hG4bK-other")
    frames = [(S, udp_frame(A, 5060, B, 5060, inv)),
              (S, udp_frame(B, 5060, A, 5060, inv)),         # the other way (a spiral)
              (S, udp_frame(A, 5060, B, 5060, other_branch))]  # a new transaction
    assert [m.retransmission for m in ladder(pcap_bytes(frames, 1)).messages] == [False] * 3


C = "10.0.0.3"
SYN, ACK_PSH = 0x02, 0x18


def _tcp(src: str, sport: int, dst: str, dport: int, seq: int, payload: bytes = b"",
         flags: int = ACK_PSH) -> bytes:
    seg = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, 0, 5 << 4, flags, 65535, 0, 0)
    return ethernet(0x0800, ipv4(6, seg + payload, str_to_ip(src), str_to_ip(dst)))


def _tcp_messages() -> tuple[bytes, bytes, bytes]:
    register = sip("REGISTER sip:example.com SIP/2.0", "call-2", "1 REGISTER", "r", None, C)
    options = sip("OPTIONS sip:example.com SIP/2.0", "call-3", "1 OPTIONS", "o", None, C)
    bye = sip("BYE sip:bob@example.com SIP/2.0", "call-2", "2 BYE", "r", "t", C)
    return register, options, bye


def test_mixed_transports_against_tshark(tmp_path: Path) -> None:
    """VLAN, IPv4 fragments, and SIP over TCP: a message cut across segments, several
    messages in one segment, a retransmitted segment; one wrapping sequence number."""
    inv = _invite()
    ok = sip("SIP/2.0 200 OK", "call-1", "1 INVITE", "ft", "tt", A, sdp(B, [audio_line(5000)] * 8))
    register, options, bye = _tcp_messages()
    isn = 0xFFFFFF00                                        # the stream's numbers wrap at 2**32
    stream = register + options + bye
    cut1, cut2 = len(register) // 2, len(register) + len(options) + 10
    seg2 = stream[cut1:cut2]
    frames = [vlan_tagged(udp_frame(A, 5060, B, 5060, inv), 100),
              *ipv4_fragments(ethernet(0x0800, ipv4(17, udp(5060, 5060, ok), str_to_ip(B),
                                                    str_to_ip(A), ip_id=77, flags_frag=0)), 400),
              _tcp(C, 40000, B, 5060, isn, flags=SYN),
              _tcp(C, 40000, B, 5060, isn + 1, stream[:cut1]),
              _tcp(C, 40000, B, 5060, isn + 1 + cut1, seg2),
              _tcp(C, 40000, B, 5060, isn + 1 + cut1, seg2),          # retransmitted segment
              _tcp(C, 40000, B, 5060, isn + 1 + cut2, stream[cut2:])]
    blob = pcap_bytes([(S + i * 1000, f) for i, f in enumerate(frames)], 1)
    lad = ladder(blob)
    assert [m.label for m in lad.messages] == ["INVITE", "200 OK", "REGISTER", "OPTIONS", "BYE"]
    assert [m.transport for m in lad.messages] == ["UDP", "UDP", "TCP", "TCP", "TCP"]
    assert lad.hosts == [f"{A}:5060", f"{B}:5060", f"{C}:40000"]
    assert [m.has_sdp for m in lad.messages] == [True, True, False, False, False]
    assert lad.messages[1].at == "1970-01-01T00:00:01.000002Z"       # the last fragment
    assert lad.messages[4].t == pytest.approx(7e-6)              # the segment completing it
    assert lad.skipped == 0
    path = tmp_path / "mixed.pcap"
    path.write_bytes(blob)
    ref = tshark_sip(path)
    assert [_kind(m) for m in lad.messages] == [r.label for r in ref]
    assert [(lad.hosts[m.src], lad.hosts[m.dst]) for m in lad.messages] == [(r.src, r.dst) for r in ref]


def test_tcp_out_of_order_and_late_start() -> None:
    """Segments out of order are put back in order; a stream first seen mid-message
    starts at its next message."""
    register, options, bye = _tcp_messages()
    stream = register + options + bye
    a, b = len(register) - 30, len(register) + len(options)
    frames = [_tcp(C, 40001, B, 5060, 5000 + a, stream[a:b]),     # mid-message: not a start
              _tcp(C, 40001, B, 5060, 5000 + b, stream[b:]),
              _tcp(C, 40002, B, 5060, 100, stream[:a]),
              _tcp(C, 40002, B, 5060, 100 + b, stream[b:]),       # ahead of the gap
              _tcp(C, 40002, B, 5060, 100 + a, stream[a:b])]      # fills it
    lad = ladder(pcap_bytes([(S, f) for f in frames], 1))
    assert [(m.label, lad.hosts[m.src]) for m in lad.messages] == [
        ("BYE", f"{C}:40001"), ("REGISTER", f"{C}:40002"), ("OPTIONS", f"{C}:40002"),
        ("BYE", f"{C}:40002")]
    assert lad.skipped == 0


def test_tcp_garbage_resynchronises() -> None:
    register, options, _ = _tcp_messages()
    broken = b"INVITE sip:x SIP/2.0\r\nContent-Length: lots\r\n\r\n"
    frames = [_tcp(C, 40003, B, 5060, 1, register),
              _tcp(C, 40003, B, 5060, 1 + len(register), broken),
              _tcp(C, 40003, B, 5060, 1 + len(register) + len(broken), options)]
    lad = ladder(pcap_bytes([(S, f) for f in frames], 1))
    assert [m.label for m in lad.messages] == ["REGISTER", "OPTIONS"] and lad.skipped == 1


def test_message_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    assert MAX_MESSAGES >= 1000
    monkeypatch.setattr(ladder_mod, "MAX_MESSAGES", 3)
    frames = [(S + i, udp_frame(A, 5060, B, 5060, _invite())) for i in range(5)]
    lad = ladder(pcap_bytes(frames, 1))
    assert len(lad.messages) == 3 and lad.truncated


def test_bad_packets_are_skipped() -> None:
    inv = _invite()
    frames = [(S, b"\x00" * 10),                                          # short Ethernet frame
              (S, udp_frame(A, 5060, B, 5060, b"INVITE sip:x SIP/2.0\r\nVia: x\r\n")),  # no header end
              (S, udp_frame(A, 5060, B, 5060, inv))]
    lad = ladder(pcap_bytes(frames, 1))
    assert [m.label for m in lad.messages] == ["INVITE"] and lad.skipped == 2


# -- not a capture, cut short, fuzz -----------------------------------------------------------

@pytest.mark.parametrize("blob", [b"", b"hello", b"GARBAGE" * 100, b"\xd4\xc3\xb2\xa1\x02\x00",
                                  b"\x0a\x0d\x0d\x0a\xff\xff\xff\xff", bytes(range(256))])
def test_not_a_capture(blob: bytes) -> None:
    with pytest.raises(LadderError):
        ladder(blob)


def test_header_only_capture_is_empty() -> None:
    lad = ladder(pcap_bytes([], 1))
    assert lad.hosts == [] and lad.messages == [] and lad.error is None


@pytest.mark.parametrize("name", ["DTMFsipinfo.pcap", "sip_ipv4_tcp_fragmented.pcap"])
def test_cut_capture(name: str) -> None:
    data = capture(name).read_bytes()
    full = _ladder_of(name).messages
    for cut in (len(data) // 3 + 5, len(data) // 2 + 7):
        lad = ladder(data[:cut])
        assert 0 < len(lad.messages) < len(full)
        assert lad.messages == full[:len(lad.messages)]
        assert lad.error is not None and "cut short" in lad.error


def test_cut_capture_against_tshark(tmp_path: Path) -> None:
    """The messages before the cut are those tshark reads from the same cut file."""
    data = capture("DTMFsipinfo.pcap").read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[:len(data) // 2 + 7])
    ref = tshark_sip(cut)
    lad = ladder(cut.read_bytes())
    assert ref and [_kind(m) for m in lad.messages] == [r.label for r in ref]


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_PCAP_HDR = pcap_bytes([], 1)


def _only_ladder_error(blob: bytes) -> None:
    try:
        lad = ladder(blob)
    except LadderError:
        return
    assert isinstance(lad, Ladder)
    assert all(0 <= m.src < len(lad.hosts) and 0 <= m.dst < len(lad.hosts) for m in lad.messages)


@FUZZ
@given(st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=300).map(lambda b: _PCAP_HDR + b),
    st.binary(max_size=300).map(lambda b: bytes.fromhex("0a0d0d0a") + b),
))
def test_fuzz_random_bytes(blob: bytes) -> None:
    _only_ladder_error(blob)


@lru_cache(maxsize=None)
def _heads() -> list[bytes]:
    names = ["sip_ipv4_tcp_fragmented.pcap", "ipv6frag.pcap", "erspan_sip_ipv4_udp.pcapng"]
    heads = [(CAPTURES / n).read_bytes()[:8000] for n in names if (CAPTURES / n).is_file()]
    if not heads:
        pytest.skip("sample captures not available")
    return heads


@FUZZ
@given(st.integers(0, 2), st.integers(0, 2**32), st.integers(1, 40))
def test_fuzz_mutated_captures(which: int, seed: int, flips: int) -> None:
    heads = _heads()
    rnd = random.Random(seed)
    blob = bytearray(heads[which % len(heads)])
    for _ in range(flips):
        blob[rnd.randrange(len(blob))] = rnd.randrange(256)
    _only_ladder_error(bytes(blob[:rnd.randrange(len(blob)) + 1] if rnd.random() < 0.3 else blob))


def test_no_io_beyond_the_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pure: works with file opening forbidden."""
    data = capture("sip_ipv4_tcp.pcap").read_bytes()

    def no_open(*args: object, **kwargs: object) -> None:
        raise AssertionError("ladder() opened a file")
    monkeypatch.setattr("builtins.open", no_open)
    monkeypatch.setattr(os, "open", no_open)
    assert len(ladder(data).messages) == 7

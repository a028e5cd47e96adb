"""Classifier: what the sensor forwards, checked against tshark on public captures."""
from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest

from protocols.pcapfile import read_frames, write_pcap
from sensor.capture import FileReplay
from sensor.classify import DEFAULT_BPF, Classifier, default_bpf
from tests.conftest import CALL_CAPTURES, capture, require_tool

# SIP on a port tshark does not dissect as SIP by default
DECODE_AS = {"sip_ipv4_tcp_fragmented.pcap": ("-d", "tcp.port==6060,sip")}


def tshark_fields(path: Path, display_filter: str, *fields: str) -> list[list[str]]:
    tshark = require_tool("tshark")
    argv = [tshark, "-r", str(path), *DECODE_AS.get(path.name, ()), "-Y", display_filter,
            "-T", "fields", "-E", "separator=|"]
    for f in fields:
        argv += ["-e", f]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return [line.split("|") for line in out.splitlines() if line]


def tshark_frames(path: Path, display_filter: str) -> set[int]:
    return {int(row[0]) for row in tshark_fields(path, display_filter, "frame.number")}


def sdp_media_frames(path: Path, sip_frames: set[int]) -> set[int]:
    """RTP/RTCP frames tshark tied to a conversation set up by SDP inside SIP.

    (tshark also sets up RTP from MGCP's SDP and finds some RTCP by other
    means; those are not ours to forward.)"""
    rows = tshark_fields(path, "(rtp.setup-frame or rtcp.setup-frame) and not icmp and not icmpv6",
                         "frame.number", "rtp.setup-frame", "rtcp.setup-frame")
    frames = set()
    for number, rtp_setup, rtcp_setup in rows:
        setups = {int(x) for x in (rtp_setup + "," + rtcp_setup).split(",") if x}
        if setups & sip_frames:
            frames.add(int(number))
    return frames


def classify_file(path: Path, classifier: Classifier | None = None) -> tuple[set[int], Classifier]:
    """1-based numbers of the frames the classifier forwards, through FileReplay."""
    classifier = classifier or Classifier()
    source = FileReplay(path)
    accepted: set[int] = set()
    number = 0
    for batch in source.batches():
        kept = {id(frame) for frame in classifier.accept_batch(source.linktype, batch)}
        for frame in batch:
            number += 1
            if id(frame) in kept:
                accepted.add(number)
    return accepted, classifier


@pytest.mark.parametrize("name", CALL_CAPTURES)
def test_forwards_every_sip_and_sdp_media_packet(name: str) -> None:
    path = capture(name)
    accepted, clf = classify_file(path)
    sip = tshark_frames(path, "sip")
    media = sdp_media_frames(path, sip)
    assert sip, "tshark found no SIP: the test would prove nothing"
    assert sorted(sip - accepted) == []
    assert sorted(media - accepted) == []
    c = clf.counters
    assert c.seen == c.forwarded + c.filtered + c.decode_errors
    assert c.decode_errors == 0


@pytest.mark.parametrize("name", ["SIP-RTP-Normal_Call_two_parties.pcap", "aaa.pcap",
                                  "MagicJack-_short_call.pcap", "rtp_conversacion.pcap"])
def test_filters_non_voip(name: str) -> None:
    path = capture(name)
    accepted, clf = classify_file(path)
    other = tshark_frames(path, "dns or arp or nbns or icmp or ssdp or browser")
    assert other, "capture has no non-VoIP frames to check"
    assert sorted(other & accepted) == []
    assert clf.counters.filtered >= len(other)


def test_two_party_capture_forwards_exactly_voip() -> None:
    """On the B2BUA capture every forwarded frame is SIP or SDP-announced media."""
    path = capture("SIP-RTP-Normal_Call_two_parties.pcap")
    accepted, _ = classify_file(path)
    sip = tshark_frames(path, "sip")
    assert accepted == sip | sdp_media_frames(path, sip)


# -- synthetic frames --------------------------------------------------------
MAC = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02"


def ipv4(src: str, dst: str, proto: int, l4: bytes, ip_id: int = 1, frag: int = 0) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), ip_id, frag, 64, proto, 0,
                      bytes(map(int, src.split("."))), bytes(map(int, dst.split("."))))
    return MAC + b"\x08\x00" + hdr + l4


def udp(src: str, sport: int, dst: str, dport: int, payload: bytes) -> bytes:
    return ipv4(src, dst, 17, struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload)


def tcp(src: str, sport: int, dst: str, dport: int, seq: int, payload: bytes,
        flags: int = 0x18) -> bytes:
    return ipv4(src, dst, 6, struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 0x50, flags,
                                         65535, 0, 0) + payload)


def rtp(seq: int = 1) -> bytes:
    return struct.pack("!BBHII", 0x80, 8, seq, seq * 160, 0x1234) + b"\xd5" * 160


def invite(sdp: str, content_type: str = "application/sdp") -> bytes:
    body = sdp.replace("\n", "\r\n").encode()
    head = (f"INVITE sip:bob@10.0.0.2 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\n"
            f"From: <sip:alice@10.0.0.1>;tag=1\r\nTo: <sip:bob@10.0.0.2>\r\nCall-ID: c1\r\n"
            f"CSeq: 1 INVITE\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


SDP = "v=0\no=- 1 1 IN IP4 10.0.0.1\ns=-\nc=IN IP4 10.0.0.1\nt=0 0\nm=audio 4000 RTP/AVP 8\n"


def test_learns_media_from_sdp_and_forwards_rtp_both_ways() -> None:
    clf = Classifier()
    assert clf.accept(1, udp("10.0.0.1", 5060, "10.0.0.2", 5080, invite(SDP)), 1)
    assert clf.accept(1, udp("10.0.0.9", 7000, "10.0.0.1", 4000, rtp()), 2)  # to the endpoint
    assert clf.accept(1, udp("10.0.0.1", 4000, "10.0.0.9", 7000, rtp()), 3)  # from it
    assert clf.accept(1, udp("10.0.0.9", 7001, "10.0.0.1", 4001, b"\x81\xc8" + bytes(26)), 4)
    assert not clf.accept(1, udp("10.0.0.9", 7000, "10.0.0.1", 4002, rtp()), 5)
    assert not clf.accept(1, udp("10.0.0.9", 7000, "10.0.0.3", 4000, rtp()), 6)
    assert clf.counters.forwarded == 4 and clf.counters.filtered == 2


def test_sip_on_any_port_and_a_rtcp_and_disabled_streams() -> None:
    sdp = SDP + "a=rtcp:4100\nm=video 0 RTP/AVP 96\n"
    clf = Classifier()
    assert clf.accept(1, udp("10.0.0.1", 33333, "10.0.0.2", 44444, invite(sdp)), 1)
    assert clf.accept(1, udp("10.0.0.9", 1, "10.0.0.1", 4100, b"\x81\xc9" + bytes(6)), 2)
    assert not clf.accept(1, udp("10.0.0.9", 1, "10.0.0.1", 4001, b"\x81\xc9" + bytes(6)), 3)
    assert not clf.accept(1, udp("10.0.0.9", 1, "10.0.0.1", 0, rtp()), 4)


def test_multipart_and_ipv6_connection() -> None:
    sdp6 = SDP.replace("c=IN IP4 10.0.0.1", "c=IN IP6 2001:db8::1")
    body = f"--b\nContent-Type: application/sdp\n\n{sdp6}--b\nContent-Type: text/plain\n\nhi\n--b--\n"
    clf = Classifier()
    clf.accept(1, udp("10.0.0.1", 5060, "10.0.0.2", 5060, invite(body, "multipart/mixed;boundary=b")))
    assert clf.media_endpoints == 2  # RTP and RTCP of 2001:db8::1 port 4000


def test_tcp_sip_split_over_segments_is_forwarded_and_sdp_learned() -> None:
    msg = invite(SDP)
    first, second = msg[:100], msg[100:]
    clf = Classifier()
    frames = [
        (1, tcp("10.0.0.1", 40000, "10.0.0.2", 5060, 1000, first)),
        (2, tcp("10.0.0.1", 40000, "10.0.0.2", 5060, 1100, second)),
        (3, tcp("10.0.0.2", 5060, "10.0.0.1", 40000, 7, b"SIP/2.0 100 Trying\r\n")),
        (4, tcp("10.0.0.1", 40001, "10.0.0.2", 5060, 1, b"GET / HTTP/1.1\r\n\r\n")),
        (5, udp("10.0.0.9", 7000, "10.0.0.1", 4000, rtp())),
        (6, tcp("10.0.0.1", 40000, "10.0.0.2", 5060, 1100 + len(second), b"", flags=0x11)),
    ]
    out = clf.accept_batch(1, frames)
    assert [ts for ts, _ in out] == [1, 2, 3, 5, 6]


def test_ipv4_fragmented_invite_forwarded_and_learned() -> None:
    msg = invite(SDP)
    datagram = struct.pack("!HHHH", 5060, 5060, 8 + len(msg), 0) + msg
    cut = (len(datagram) // 2) & ~7  # fragment offsets are multiples of 8
    frames = [
        (1, ipv4("10.0.0.1", "10.0.0.2", 17, datagram[:cut], ip_id=77, frag=0x2000)),
        (2, ipv4("10.0.0.1", "10.0.0.2", 17, datagram[cut:], ip_id=77, frag=cut // 8)),
        (3, ipv4("10.0.0.1", "10.0.0.2", 17, b"x" * 16, ip_id=78, frag=2)),  # unknown datagram
        (4, udp("10.0.0.9", 7000, "10.0.0.1", 4000, rtp())),
    ]
    out = Classifier().accept_batch(1, frames)
    assert [ts for ts, _ in out] == [1, 2, 4]


def test_garbage_is_counted_never_raised() -> None:
    arp = MAC + b"\x08\x06" + bytes(28)
    truncated = udp("10.0.0.1", 5060, "10.0.0.2", 5060, b"INVITE sip:x SIP/2.0\r\n")[:30]
    frames = [(0, b""), (0, b"\x00" * 13), (0, bytes(range(256)) * 2), (0, truncated), (0, arp),
              (0, MAC + b"\x08\x00" + b"\x45" + bytes(19)),  # IPv4 total length 0, no L4
              (0, udp("10.0.0.1", 5060, "10.0.0.2", 5060, b"SIP/2.0 200 OK\r\n\r\nv=0\r\nc=junk\r\n"))]
    clf = Classifier()
    for linktype in (1, 101, 113, 276, 0, 228, 229, 999):
        clf.accept_batch(linktype, frames)
    c = clf.counters
    assert c.seen == 8 * len(frames)
    assert c.decode_errors > 0 and c.seen == c.forwarded + c.filtered + c.decode_errors
    one = Classifier()
    one.accept_batch(1, [(0, arp)])
    assert one.counters.filtered == 1 and one.counters.decode_errors == 0


def test_media_expires_without_traffic() -> None:
    clf = Classifier(ttl_s=10)
    ns = 1_000_000_000
    clf.accept(1, udp("10.0.0.1", 5060, "10.0.0.2", 5060, invite(SDP)), 0)
    assert clf.accept(1, udp("10.0.0.9", 7000, "10.0.0.1", 4000, rtp()), 5 * ns)
    clf.accept(1, udp("10.0.0.7", 1, "10.0.0.8", 2, b"x"), 200 * ns)  # time passes, sweep
    assert not clf.accept(1, udp("10.0.0.9", 7000, "10.0.0.1", 4000, rtp()), 201 * ns)


def test_media_table_is_bounded() -> None:
    clf = Classifier(max_media=100)
    for i in range(200):
        sdp = SDP.replace("m=audio 4000", f"m=audio {10000 + 2 * i}")
        clf.accept(1, udp("10.0.0.1", 5060, "10.0.0.2", 5060, invite(sdp)), i)
    assert clf.media_endpoints <= 100


# -- the kernel prefilter ----------------------------------------------------
def test_default_bpf_compiles_with_tcpdump() -> None:
    tcpdump = require_tool("tcpdump")
    for name, linktype in (("EN10MB", 1), ("LINUX_SLL", 113), ("RAW", 101)):
        subprocess.run([tcpdump, "-d", "-y", name, default_bpf(linktype)], check=True,
                       capture_output=True)
    assert default_bpf(1) == DEFAULT_BPF


def _vlan_tagged(path: Path, out: Path) -> None:
    frames = [(ts, data[:12] + b"\x81\x00\x00\x64" + data[12:])
              for ts, _lt, data in read_frames(path)]
    with open(out, "wb") as f:
        write_pcap(f, frames, 1)


@pytest.mark.parametrize("name,vlan", [("SIP-RTP-Normal_Call_two_parties.pcap", False),
                                       ("ipv6frag.pcap", False), ("sip_ipv4_tcp.pcap", False),
                                       ("nb6-telephone.pcap", True)])
def test_default_bpf_keeps_everything_we_forward(name: str, vlan: bool, tmp_path: Path) -> None:
    """Applied by libpcap (tcpdump -r), the prefilter loses nothing the classifier forwards."""
    tcpdump = require_tool("tcpdump")
    src = capture(name)
    if vlan:
        _vlan_tagged(src, tmp_path / "vlan.pcap")
        src = tmp_path / "vlan.pcap"
    filtered = tmp_path / "filtered.pcap"
    linktype = FileReplay(src).linktype
    subprocess.run([tcpdump, "-r", str(src), "-w", str(filtered), default_bpf(linktype)],
                   check=True, capture_output=True)

    def forwarded(path: Path) -> list[bytes]:
        src = FileReplay(path)
        clf = Classifier()
        return [d for batch in src.batches() for _ts, d in clf.accept_batch(src.linktype, batch)]

    before = forwarded(src)
    assert before and forwarded(filtered) == before

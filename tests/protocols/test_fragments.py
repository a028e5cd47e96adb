"""IP fragment reassembly (protocols.fragments), checked against tshark's own reassembly."""
from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest

from protocols.fragments import Reassembler
from protocols.layers import decode
from protocols.pcapfile import LINKTYPE_ETHERNET, read_frames, write_pcap
from tests.conftest import capture, require_tool

_S = 1_000_000_000
SRC, DST = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
ETH = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00"


def _tshark(path: Path, *args: str) -> list[list[str]]:
    out = subprocess.run([require_tool("tshark"), "-r", str(path), *args],
                         capture_output=True, text=True, check=True).stdout
    return [line.split("\t") for line in out.splitlines() if line]


def _sum(hdr: bytes) -> int:
    s = sum(struct.unpack(f"!{len(hdr) // 2}H", hdr))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _ipv4(ip_id: int, off: int, mf: bool, data: bytes, src: bytes = SRC) -> bytes:
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(data), ip_id,
                                (off >> 3) | (0x2000 if mf else 0), 64, 17, 0, src, DST))
    hdr[10:12] = struct.pack("!H", _sum(bytes(hdr)))
    return ETH + bytes(hdr) + data


def _udp_sip(n: int = 3492) -> tuple[bytes, bytes]:
    """(UDP header + payload, payload): a SIP INVITE with an SDP body, `n` bytes of payload."""
    base = b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n" \
           b"m=audio 40000 RTP/AVP 0\r\na=x-pad:"
    pad = 0
    for _ in range(3):
        sdp = base + b"p" * pad + b"\r\n"
        head = (b"INVITE sip:b@10.0.0.2 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\n"
                b"From: <sip:a@10.0.0.1>;tag=1\r\nTo: <sip:b@10.0.0.2>\r\n"
                b"Call-ID: frag-1@10.0.0.1\r\nCSeq: 1 INVITE\r\nContent-Type: application/sdp\r\n"
                b"Content-Length: " + str(len(sdp)).encode() + b"\r\n\r\n")
        pad += n - len(head) - len(sdp)
    payload = head + sdp
    assert len(payload) == n
    return struct.pack("!HHHH", 5060, 5060, 8 + len(payload), 0) + payload, payload


def _fragments(ip_id: int = 0x1234, size: int = 1000) -> tuple[list[bytes], bytes]:
    udp, payload = _udp_sip()
    pieces = [udp[i:i + size] for i in range(0, len(udp), size)]
    frames = [_ipv4(ip_id, i * size, i < len(pieces) - 1, p) for i, p in enumerate(pieces)]
    return frames, payload


def _feed(r: Reassembler, frames: list[bytes], t0: int = 0) -> list:
    out = []
    for i, f in enumerate(frames):
        g = r.add(t0 + i * 1000, LINKTYPE_ETHERNET, f, decode(LINKTYPE_ETHERNET, f))
        if g is not None:
            out.append(g)
    return out


def _payload(frame: bytes) -> bytes:
    d = decode(LINKTYPE_ETHERNET, frame)
    assert not d.is_fragment and d.proto == 17 and (d.sport, d.dport) == (5060, 5060)
    return frame[d.payload_offset:d.payload_offset + d.payload_len]


def _tshark_payload(tmp_path: Path, frames: list[bytes]) -> bytes:
    """The UDP payload tshark reassembles from these fragments (its default defragmentation)."""
    path = tmp_path / "frags.pcap"
    with open(path, "wb") as f:
        write_pcap(f, [(i * 1000, fr) for i, fr in enumerate(frames)], LINKTYPE_ETHERNET)
    rows = [r for r in _tshark(path, "-T", "fields", "-e", "udp.payload") if r[0]]
    assert len(rows) == 1
    return bytes.fromhex(rows[0][0])


def _check_plain_ipv4(tmp_path: Path, frame: bytes) -> None:
    """The rebuilt packet is a valid unfragmented IPv4 packet, for tshark too."""
    hdr = frame[14:34]
    assert _sum(hdr) == 0 and struct.unpack_from("!H", hdr, 6)[0] & 0x3FFF == 0
    assert struct.unpack_from("!H", hdr, 2)[0] == len(frame) - 14
    path = tmp_path / "whole.pcap"
    with open(path, "wb") as f:
        write_pcap(f, [(0, frame)], LINKTYPE_ETHERNET)
    rows = _tshark(path, "-o", "ip.check_checksum:TRUE", "-T", "fields", "-e", "ip.flags.mf",
                   "-e", "ip.frag_offset", "-e", "ip.checksum.status", "-e", "sip.Call-ID",
                   "-e", "sdp.media.port")
    assert len(rows) == 1 and rows[0][0] in ("0", "False")
    assert rows[0][1:] == ["0", "1", "frag-1@10.0.0.1", "40000"]


# ---- IPv6: the fragmented INVITEs of ipv6frag.pcap ------------------------------

def test_ipv6frag_reassembles_like_tshark(tmp_path: Path) -> None:
    path = capture("ipv6frag.pcap")
    r = Reassembler()
    out = []
    linktype = 0
    for ts, linktype, data in read_frames(path):
        d = decode(linktype, data)
        if d.is_fragment:
            g = r.add(ts, linktype, data, d)
            if g is not None:
                assert g.linktype == linktype
                dd = decode(g.linktype, g.frame)
                assert not dd.is_fragment and dd.proto == 17 and dd.ip_version == 6
                out.append((g.ts_ns, g.frame))
    assert r.counters["fragments"] == 4 and r.counters["datagrams"] == 2 and len(r) == 0
    whole = tmp_path / "reassembled.pcap"
    with open(whole, "wb") as f:
        write_pcap(f, out, linktype)
    fields = ("-T", "fields", "-e", "frame.time_epoch", "-e", "sip.Call-ID", "-e", "sip.CSeq.seq",
              "-e", "sip.Content-Length", "-e", "sdp.media.port")
    ours = _tshark(whole, "-Y", "sip", *fields)
    theirs = _tshark(path, "-Y", "sip && ipv6.reassembled.in", *fields)
    if not theirs:  # field name of older tshark releases
        theirs = _tshark(path, "-Y", "sip && ipv6.fragment", *fields)
    assert len(ours) == 2 and ours == theirs
    assert {row[4] for row in ours} == {"15062", "30002"}


def test_ipv6_fragments_in_any_order() -> None:
    path = capture("ipv6frag.pcap")
    frags = [(ts, lt, data) for ts, lt, data in read_frames(path) if decode(lt, data).is_fragment]
    inorder, reverse = Reassembler(), Reassembler()
    a = [inorder.add(ts, lt, x, decode(lt, x)) for ts, lt, x in frags]
    b = [reverse.add(ts, lt, x, decode(lt, x)) for ts, lt, x in reversed(frags)]
    assert sorted(g.frame for g in a if g) == sorted(g.frame for g in b if g)
    assert len([g for g in b if g]) == 2


# ---- IPv4: synthetic fragments, tshark as the reference --------------------------

@pytest.mark.parametrize("order", ["in-order", "reversed", "duplicated", "overlapping"])
def test_ipv4_reassembly_matches_tshark(tmp_path: Path, order: str) -> None:
    frames, payload = _fragments()
    assert len(frames) == 4
    if order == "reversed":
        frames = frames[::-1]
    elif order == "duplicated":
        frames = [frames[0], frames[2], frames[0], frames[1], frames[2], frames[3]]
    elif order == "overlapping":
        udp, _ = _udp_sip()
        # bytes 504..1504 again (consistent data): overlaps fragments 0 and 1
        frames = [frames[0], _ipv4(0x1234, 504, True, udp[504:1504]), frames[1], frames[2],
                  frames[3]]
    r = Reassembler()
    got = _feed(r, frames)
    assert len(got) == 1 and len(r) == 0 and r.bytes_held == 0
    assert _payload(got[0].frame) == payload == _tshark_payload(tmp_path, frames)
    _check_plain_ipv4(tmp_path, got[0].frame)
    assert got[0].ts_ns == (len(frames) - 1) * 1000
    c = r.counters
    assert c["datagrams"] == 1 and c["fragments"] == len(frames)
    assert c["duplicates"] == (2 if order == "duplicated" else 0)
    # the extra copy overlaps fragment 0, then fragment 1 overlaps it
    assert c["overlaps"] == (2 if order == "overlapping" else 0)


def test_ipv4_overlap_keeps_first_data() -> None:
    frames, payload = _fragments()
    udp, _ = _udp_sip()
    bogus = _ipv4(0x1234, 1000, True, b"X" * 1000)
    r = Reassembler()
    got = _feed(r, [frames[0], frames[1], bogus, frames[2], frames[3]])
    assert len(got) == 1 and _payload(got[0].frame) == payload
    assert r.counters["overlaps"] == 1
    # the bogus copy first: its bytes are kept, the real fragment only counts as an overlap
    r = Reassembler()
    got = _feed(r, [frames[0], bogus, frames[1], frames[2], frames[3]])
    assert len(got) == 1 and _payload(got[0].frame)[992:1992] == b"X" * 1000


def test_missing_fragment_expires_after_timeout() -> None:
    frames, _ = _fragments()
    r = Reassembler(timeout_s=30)
    assert _feed(r, [frames[0], frames[1], frames[3]]) == []
    assert len(r) == 1 and r.bytes_held == sum(len(f) - 34 for f in (frames[0], frames[1], frames[3]))
    assert r.expire(29 * _S) == 0 and len(r) == 1
    # any later fragment moves capture time on: the incomplete datagram is dropped, counted
    other, _ = _fragments(ip_id=7)
    assert r.add(31 * _S, LINKTYPE_ETHERNET, other[0], decode(LINKTYPE_ETHERNET, other[0])) is None
    assert r.counters["expired"] == 1 and len(r) == 1
    # the missing fragment arriving late starts a new datagram that never completes
    assert _feed(r, [frames[2]], t0=32 * _S) == []
    assert r.expire(100 * _S) == 2 and len(r) == 0 and r.bytes_held == 0
    assert r.counters["datagrams"] == 0


def test_memory_bounds() -> None:
    r = Reassembler(max_datagrams=4)
    for i in range(10):
        frames, _ = _fragments(ip_id=i)
        assert _feed(r, frames[:1]) == []
    assert len(r) == 4 and r.counters["evicted"] == 6
    # the newest datagrams are the ones kept: they still complete
    frames, payload = _fragments(ip_id=9)
    got = _feed(r, frames[1:])
    assert len(got) == 1 and _payload(got[0].frame) == payload
    frames, _ = _fragments(ip_id=0)     # evicted: its first fragment is gone
    assert _feed(r, frames[1:]) == []
    # total bytes bound
    r = Reassembler(max_total_bytes=2500)
    for i in range(3):
        frames, _ = _fragments(ip_id=i)
        _feed(r, frames[:2])
    assert r.bytes_held <= 2500 and r.counters["evicted"] >= 1
    # a datagram larger than max_bytes is dropped
    r = Reassembler(max_bytes=2000)
    frames, _ = _fragments()
    assert _feed(r, frames) == [] and r.counters["oversize"] >= 1


def test_key_includes_source_and_id() -> None:
    a, pa = _fragments(ip_id=1)
    b = [_ipv4(1, i * 1000, i < 3, f[34:], src=bytes([10, 0, 0, 9])) for i, f in enumerate(a)]
    r = Reassembler()
    got = _feed(r, [a[0], b[0], a[1], b[1], a[2], b[2], b[3], a[3]])
    assert len(got) == 2 and all(_payload(g.frame) == pa for g in got)
    assert decode(LINKTYPE_ETHERNET, got[0].frame).src == bytes([10, 0, 0, 9])


def test_bad_input_is_counted_not_raised() -> None:
    frames, _ = _fragments()
    r = Reassembler()
    d = decode(LINKTYPE_ETHERNET, frames[1])
    assert r.add(0, LINKTYPE_ETHERNET, frames[1][:20], d) is None     # cut short
    whole = frames[0][:14] + frames[0][14:]
    assert r.add(0, LINKTYPE_ETHERNET, whole, d._replace(is_fragment=False)) is None
    # a second "last" fragment that disagrees on the length
    assert _feed(r, [frames[3], _ipv4(0x1234, 2000, False, b"y" * 16)]) == []
    c = r.counters
    assert c["malformed"] == 2 and c["inconsistent"] == 1

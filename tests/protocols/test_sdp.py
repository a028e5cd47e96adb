"""SDP parsing against tshark's SDP dissector, and edge cases."""
from __future__ import annotations

import pytest

from protocols.errors import SdpError
from protocols.sdp import parse_sdp
from protocols.sip import looks_like_sip, parse_sip
from tests.protocols._samples import udp_frames
from tests.protocols._tshark import first

CAPTURES = [
    "SIP_DTMF2.cap", "aaa.pcap", "MagicJack-_short_call.pcap", "ipv6frag.pcap",
    "SIP-RTP-Normal_Call_two_parties.pcap", "SIP_CALL_RTP_G711", "DTMFsipinfo.pcap",
    "FAX-Call-t38-CA-TDM-SIP-FB-1.pcap",
]


@pytest.mark.parametrize("name", CAPTURES)
def test_sdp_matches_tshark(name: str) -> None:
    seen = 0
    for row, _d, payload in udp_frames(name):
        if first(row, "sip.Call-ID") is None or not looks_like_sip(payload):
            continue
        msg = parse_sip(payload)
        if msg.content_type != "application/sdp" or not msg.body:
            assert row["sdp.media"] == [], first(row, "frame.number")
            continue
        seen += 1
        sd = parse_sdp(msg.body)
        frame = first(row, "frame.number")
        assert [m.port for m in sd.media] == [int(p) for p in row["sdp.media.port"]], frame
        lines = [m.split() for m in row["sdp.media"]]
        assert [m.media for m in sd.media] == [m[0] for m in lines], frame
        assert [m.proto for m in sd.media] == [m[2] for m in lines], frame
        assert [m.formats for m in sd.media] == [[int(f) for f in m[3:] if f.isdigit()]
                                                for m in lines], frame
        mine = {a for a in [sd.connection, *(m.connection for m in sd.media)] if a}
        assert mine == set(row["sdp.connection_info.address"]), frame
        for m in sd.media:
            for pt in m.formats:
                if pt in (0, 8):
                    assert m.rtpmap[pt] == ("PCMU" if pt == 0 else "PCMA", 8000, 1)
    assert seen > 0


SDP = b"""v=0\r
o=alice 2890844526 2890844527 IN IP4 host.atlanta.example.com\r
s=-\r
c=IN IP4 192.0.2.101\r
t=0 0\r
a=sendonly\r
m=audio 49172 RTP/AVP 0 8 97 101 13\r
a=rtpmap:97 iLBC/8000\r
a=rtpmap:101 telephone-event/8000\r
a=fmtp:101 0-15\r
a=rtcp:53020 IN IP4 192.0.2.102\r
m=video 51372 RTP/AVP 31 96\r
c=IN IP6 2001:db8::2/64\r
a=rtpmap:96 opus/48000/2\r
a=recvonly\r
m=image 0 udptl t38\r
"""


def test_parse_sdp_details() -> None:
    sd = parse_sdp(SDP)
    assert sd.origin == "alice 2890844526 2890844527 IN IP4 host.atlanta.example.com"
    assert sd.connection == "192.0.2.101"
    assert sd.direction == "sendonly"
    audio, video, image = sd.media
    assert (audio.media, audio.port, audio.proto, audio.formats) == ("audio", 49172, "RTP/AVP",
                                                                    [0, 8, 97, 101, 13])
    assert audio.connection == "192.0.2.101"
    assert audio.rtpmap == {0: ("PCMU", 8000, 1), 8: ("PCMA", 8000, 1), 97: ("ILBC", 8000, 1),
                            101: ("TELEPHONE-EVENT", 8000, 1), 13: ("CN", 8000, 1)}
    assert audio.direction == "sendonly" and audio.rtcp_port == 53020
    assert video.connection == "2001:db8::2" and video.direction == "recvonly"
    assert video.rtpmap == {96: ("OPUS", 48000, 2)}
    assert video.rtcp_port is None
    assert (image.port, image.formats, image.direction) == (0, [], "sendonly")


def test_lf_only_and_defaults() -> None:
    sd = parse_sdp(b"v=0\nm=audio 4000 RTP/AVP 9 3 4 18\n")
    assert sd.connection is None and sd.origin is None and sd.direction == "sendrecv"
    (m,) = sd.media
    assert m.connection is None and m.direction == "sendrecv"
    assert m.rtpmap == {9: ("G722", 8000, 1), 3: ("GSM", 8000, 1), 4: ("G723", 8000, 1),
                        18: ("G729", 8000, 1)}


@pytest.mark.parametrize("body", [
    b"", b"hello", b"o=- 1 1 IN IP4 1.2.3.4\r\nv=0\r\n",
    b"v=0\r\nm=audio\r\n", b"v=0\r\nm=audio port RTP/AVP 0\r\n", b"v=0\r\nm=audio 70000 RTP/AVP 0\r\n",
    b"v=0\r\nc=IN IP4\r\n", b"v=0\r\nm=audio 1 RTP/AVP 0\r\nc=XX IP4 1.2.3.4\r\n",
])
def test_not_sdp_or_malformed(body: bytes) -> None:
    with pytest.raises(SdpError):
        parse_sdp(body)


def test_security_attributes() -> None:
    """RFC 4568 a=crypto (key and session params), RFC 8122 a=fingerprint and RFC 6189
    a=zrtp-hash, at media or session level, and the transport profile."""
    sd = parse_sdp(b"v=0\r\nc=IN IP4 10.0.0.1\r\na=fingerprint:sha-256 AB:CD:EF\r\nt=0 0\r\n"
                   b"m=audio 4000 RTP/SAVP 0\r\n"
                   b"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:32\r\n"
                   b"a=crypto:2 AEAD_AES_128_GCM inline:x1z2 UNENCRYPTED_SRTP KDR=3\r\n"
                   b"m=audio 4002 UDP/TLS/RTP/SAVPF 0\r\na=setup:actpass\r\n"
                   b"m=audio 4004 RTP/AVP 0\r\na=zrtp-hash:1.10 fe30efd0\r\n")
    sdes, dtls, zrtp = sd.media
    assert sdes.crypto == [(1, "AES_CM_128_HMAC_SHA1_80",
                            "inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:32"),
                           (2, "AEAD_AES_128_GCM", "inline:x1z2 UNENCRYPTED_SRTP KDR=3")]
    assert sdes.secure and dtls.secure and not zrtp.secure
    assert dtls.fingerprint == "sha-256 AB:CD:EF" and dtls.crypto == []
    assert zrtp.zrtp_hash == "1.10 fe30efd0" and zrtp.fingerprint == "sha-256 AB:CD:EF"

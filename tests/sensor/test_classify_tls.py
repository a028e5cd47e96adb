"""Classifier: SIP over TLS on port 5061 is counted (sip_tls_flows/packets)
and never forwarded, while the call's RTP in clear still is.

The capture is built here: a real TLS 1.3 session from Python's ssl module
(memory BIOs, a throw-away certificate) carrying a SIP dialog, cut into TCP
segments of at most 400 bytes (so records span segments); a second SIP-TLS
connection seen from its middle (hand-framed application-data records, no
handshake); HTTPS on 443 and non-TLS bytes on 5061 (neither is SIP over TLS);
and the call's RTP both ways in clear. Expectations: the segments generated,
cross-checked with tshark decoding port 5061 as TLS; RTP as tshark decodes
the two media ports as RTP.
"""
from __future__ import annotations

import datetime as dt
import ssl
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from protocols.pcapfile import write_pcap
from sensor.classify import Classifier
from tests.conftest import require_tool
from tests.sensor.test_classify import MAC, udp
from tests.sensor.test_classify_heuristics import classify_file

MS = 1_000_000
SEC = 1_000_000_000
T0 = 1_700_000_000 * SEC
UA, PROXY, UA2 = "10.20.0.1", "10.20.0.2", "10.20.0.3"
RTP_A, RTP_B = 20000, 30000          # caller's and callee's RTP ports
MSS = 400                             # small: TLS records span segments
RTP_PACKETS = 150                     # per direction, 20 ms apart: 3 s


def _tcp(src: str, sport: int, dst: str, dport: int, seq: int, ack: int, flags: int,
         payload: bytes = b"") -> bytes:
    l4 = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 0x50,
                     flags, 65535, 0, 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0x4000, 64, 6, 0,
                     bytes(map(int, src.split("."))), bytes(map(int, dst.split("."))))
    return MAC + b"\x08\x00" + ip + l4


_SYN, _ACK, _PSH, _FIN = 0x02, 0x10, 0x08, 0x01


@dataclass
class _Conn:
    """One TCP connection written as frames; counts its payload segments."""
    client: tuple[str, int]
    server: tuple[str, int]
    frames: list[tuple[int, bytes]]
    seq: dict[str, int] = field(default_factory=lambda: {"c": 1000, "s": 5000})
    segments: int = 0                  # frames with payload

    def _frame(self, ts: int, side: str, flags: int, payload: bytes = b"") -> None:
        (src, sport), (dst, dport) = (self.client, self.server) if side == "c" \
            else (self.server, self.client)
        other = "s" if side == "c" else "c"
        self.frames.append((ts, _tcp(src, sport, dst, dport, self.seq[side], self.seq[other],
                                     flags, payload)))

    def handshake(self, ts: int) -> None:
        self._frame(ts, "c", _SYN)
        self.seq["c"] += 1
        self._frame(ts + MS, "s", _SYN | _ACK)
        self.seq["s"] += 1
        self._frame(ts + 2 * MS, "c", _ACK)

    def send(self, ts: int, side: str, data: bytes) -> None:
        """`data` in segments of at most MSS bytes, then the peer's pure ACK."""
        for i in range(0, len(data), MSS):
            chunk = data[i:i + MSS]
            self._frame(ts, side, _PSH | _ACK, chunk)
            self.seq[side] += len(chunk)
            self.segments += 1
            ts += 10_000
        self._frame(ts + MS, "s" if side == "c" else "c", _ACK)

    def close(self, ts: int) -> None:
        for side, at in (("c", ts), ("s", ts + MS)):
            self._frame(at, side, _FIN | _ACK)
            self.seq[side] += 1
        self._frame(ts + 2 * MS, "c", _ACK)


def _context_pair(tmp: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sip.example.net")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=2))
            .sign(key, hashes.SHA256()))
    certfile, keyfile = tmp / "sip.crt", tmp / "sip.key"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(certfile, keyfile)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    return client, server


class _Tls:
    """A client and a server ssl object joined by memory BIOs: what each writes
    comes out as the bytes of TLS records to put on the wire."""

    def __init__(self, tmp: Path) -> None:
        cctx, sctx = _context_pair(tmp)
        self.bios = {k: (ssl.MemoryBIO(), ssl.MemoryBIO()) for k in "cs"}   # (incoming, outgoing)
        self.obj = {"c": cctx.wrap_bio(*self.bios["c"], server_side=False),
                    "s": sctx.wrap_bio(*self.bios["s"], server_side=True)}

    def wire(self, side: str) -> bytes:
        """Bytes `side` produced since the last call; handed to the peer."""
        data = self.bios[side][1].read()
        self.bios["s" if side == "c" else "c"][0].write(data)
        return data

    def handshake(self) -> list[tuple[str, bytes]]:
        flights: list[tuple[str, bytes]] = []
        done = {"c": False, "s": False}
        for _ in range(10):
            for side in "cs":
                if not done[side]:
                    try:
                        self.obj[side].do_handshake()
                        done[side] = True
                    except ssl.SSLWantReadError:
                        pass
                data = self.wire(side)
                if data:
                    flights.append((side, data))
            if all(done.values()):
                return flights
        raise AssertionError("TLS handshake did not finish")

    def message(self, side: str, text: str) -> bytes:
        """A SIP message sent by `side`; the peer reads it (and any ticket)."""
        self.obj[side].write(text.replace("\n", "\r\n").encode())
        data = self.wire(side)
        peer = self.obj["s" if side == "c" else "c"]
        try:
            while peer.read(65536):
                pass
        except ssl.SSLWantReadError:
            pass
        return data


SDP = (f"v=0\no=- 1 1 IN IP4 {UA}\ns=-\nc=IN IP4 {{ip}}\nt=0 0\nm=audio {{port}} RTP/AVP 8\n"
       "a=rtpmap:8 PCMA/8000\n")


def _sip(first: str, cseq: str, sdp_ip: str = "", sdp_port: int = 0) -> str:
    body = SDP.format(ip=sdp_ip, port=sdp_port).replace("\n", "\r\n") if sdp_port else ""
    return (f"{first}\nVia: SIP/2.0/TLS {UA}:40001;branch=z9hG4bKtls1\n"
            f"From: <sips:alice@example.net>;tag=a1\nTo: <sips:bob@example.net>\n"
            f"Call-ID: tls-call-1@example.net\nCSeq: {cseq}\n"
            f"Content-Length: {len(body)}\n\n") + body


def _rtp(seq: int, ssrc: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 8, seq, seq * 160, ssrc) + b"\xd5" * 160


@dataclass
class TlsCapture:
    path: Path
    tls_flows: int            # SIP-over-TLS connections (5061) in the capture
    tls_segments: int         # their TCP segments with payload
    rtp_packets: int          # RTP in clear, both directions
    rtp_streams: int


def sip_tls_capture(tmp: Path) -> TlsCapture:
    """The capture described in the module docstring."""
    frames: list[tuple[int, bytes]] = []
    tls = _Tls(tmp)
    conn = _Conn((UA, 40001), (PROXY, 5061), frames)
    conn.handshake(T0)
    t = T0 + 10 * MS
    for side, data in tls.handshake():
        conn.send(t, side, data)
        t += 5 * MS
    dialog = [("c", 50, _sip("INVITE sips:bob@example.net SIP/2.0", "1 INVITE", UA, RTP_A)),
              ("s", 80, _sip("SIP/2.0 100 Trying", "1 INVITE")),
              ("s", 200, _sip("SIP/2.0 180 Ringing", "1 INVITE")),
              ("s", 300, _sip("SIP/2.0 200 OK", "1 INVITE", PROXY, RTP_B)),
              ("c", 320, _sip("ACK sips:bob@example.net SIP/2.0", "1 ACK")),
              ("c", 3500, _sip("BYE sips:bob@example.net SIP/2.0", "2 BYE")),
              ("s", 3520, _sip("SIP/2.0 200 OK", "2 BYE"))]
    for side, at_ms, text in dialog:
        conn.send(T0 + at_ms * MS, side, tls.message(side, text))
    conn.close(T0 + 3600 * MS)

    # a second SIP-TLS connection, seen from its middle: application data only
    mid = _Conn((UA2, 40002), (PROXY, 5061), frames)
    for i in range(6):
        body = bytes((i * 37 + k) & 0xFF for k in range(90 + 40 * i))
        mid.send(T0 + (1000 + 100 * i) * MS, "c" if i % 2 == 0 else "s",
                 b"\x17\x03\x03" + struct.pack("!H", len(body)) + body)
    # not SIP over TLS: HTTPS on 443, and bytes that are no TLS record on 5061
    https = _Conn((UA, 40443), (PROXY, 443), frames)
    https.handshake(T0 + 500 * MS)
    https.send(T0 + 510 * MS, "c", b"\x16\x03\x01\x00\x05hello")
    https.send(T0 + 520 * MS, "s", b"\x17\x03\x03\x00\x04data")
    junk = _Conn((UA2, 40003), (PROXY, 5061), frames)
    junk.send(T0 + 600 * MS, "c", b"HELLO not tls at all")

    # the call's RTP in clear, both ways
    rtp = 0
    for i in range(RTP_PACKETS):
        at = T0 + 400 * MS + i * 20 * MS
        frames.append((at, udp(UA, RTP_A, PROXY, RTP_B, _rtp(100 + i, 0xA1A1A1A1))))
        frames.append((at + 3 * MS, udp(PROXY, RTP_B, UA, RTP_A, _rtp(700 + i, 0xB2B2B2B2))))
        rtp += 2
    frames.sort(key=lambda f: f[0])
    path = tmp / "sip-tls-rtp-clear.pcap"
    with open(path, "wb") as fh:
        write_pcap(fh, frames, 1)
    return TlsCapture(path, tls_flows=2, tls_segments=conn.segments + mid.segments,
                      rtp_packets=rtp, rtp_streams=2)


def tshark(path: Path, display_filter: str, *fields: str) -> list[list[str]]:
    argv = [require_tool("tshark"), "-r", str(path), "-d", "tcp.port==5061,tls",
            "-d", f"udp.port=={RTP_A},rtp", "-d", f"udp.port=={RTP_B},rtp",
            "-o", "tcp.desegment_tcp_streams:TRUE", "-o", "tls.desegment_ssl_records:TRUE",
            "-Y", display_filter, "-T", "fields", "-E", "separator=|"]
    for f in fields or ("frame.number",):
        argv += ["-e", f]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=120).stdout
    return [line.split("|") for line in out.splitlines() if line]


def tshark_numbers(path: Path, display_filter: str) -> set[int]:
    return {int(row[0]) for row in tshark(path, display_filter)}


def test_sip_over_tls_counted_not_forwarded_rtp_forwarded(tmp_path: Path) -> None:
    cap = sip_tls_capture(tmp_path)
    # tshark: every payload segment on 5061 of the two TLS connections carries
    # TLS (a record in it, or part of one it reassembles in a later frame)
    tls_frames = tshark_numbers(cap.path, "tcp.port==5061 and tcp.len>0 and "
                                          "(tls or tcp.reassembled_in)")
    assert len(tls_frames) == cap.tls_segments
    # ... and the handshake is real: tshark sees the ClientHello and ServerHello
    assert len(tshark_numbers(cap.path, "tls.handshake.type==1 and tcp.port==5061")) == 1
    assert len(tshark_numbers(cap.path, "tls.handshake.type==2 and tcp.port==5061")) == 1
    rtp_frames = tshark_numbers(cap.path, "rtp")
    assert len(rtp_frames) == cap.rtp_packets
    tcp_frames = tshark_numbers(cap.path, "tcp")

    accepted, clf = classify_file(cap.path)
    c = clf.counters
    assert c.sip_tls_packets == len(tls_frames)
    assert c.sip_tls_flows == cap.tls_flows
    assert accepted & tcp_frames == set()          # nothing TLS (nor any TCP) forwarded
    assert accepted == rtp_frames                  # the RTP in clear, by the heuristics
    assert c.rtp_heuristic_packets == len(rtp_frames)
    assert c.seen == c.forwarded + c.filtered + c.decode_errors


def test_sip_over_tcp_in_clear_on_5061_is_sip_not_tls() -> None:
    """Plain SIP on the TLS port is forwarded as SIP and never counted as TLS."""
    clf = Classifier()
    invite = _sip("INVITE sips:bob@example.net SIP/2.0", "1 INVITE").replace("\n", "\r\n").encode()
    frames = [(T0, _tcp(UA, 40001, PROXY, 5061, 1, 1, _PSH | _ACK, invite)),
              (T0 + MS, _tcp(PROXY, 5061, UA, 40001, 1, 1 + len(invite), _PSH | _ACK,
                             b"\x17\x03\x03\x00\x02ab"))]   # even if a later segment looks like TLS
    assert len(clf.accept_batch(1, frames)) == 2
    assert (clf.counters.sip_tls_flows, clf.counters.sip_tls_packets) == (0, 0)


def test_tls_record_header_variants() -> None:
    """Each record type 20-23 and version 3.0-3.4 starts a SIP-TLS connection
    on 5061; other first bytes (SSLv2, type 24, version 2.x, 3.5) do not."""
    port = 41000
    for payload, counted in [(b"\x14\x03\x03\x00\x01\x01", True), (b"\x15\x03\x00\x00\x02\x01\x00", True),
                             (b"\x16\x03\x01\x00\x01\x00", True), (b"\x17\x03\x04\x00\x01\x00", True),
                             (b"\x18\x03\x03\x00\x01\x00", False), (b"\x16\x02\x00\x00\x01\x00", False),
                             (b"\x16\x03\x05\x00\x01\x00", False), (b"\x80\x2e\x01\x03\x01", False),
                             (b"\x16\x03", False)]:
        clf = Classifier()
        port += 1
        assert clf.accept_batch(1, [(T0, _tcp(UA, port, PROXY, 5061, 1, 1, _PSH | _ACK, payload))]) == []
        assert clf.counters.sip_tls_packets == int(counted), payload
        # the same bytes to a port that is not SIP-TLS: never counted
        clf = Classifier()
        clf.accept_batch(1, [(T0, _tcp(UA, port, PROXY, 443, 1, 1, _PSH | _ACK, payload))])
        assert clf.counters.sip_tls_packets == 0

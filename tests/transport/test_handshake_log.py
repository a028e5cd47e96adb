"""Failed TLS handshakes on the controller (issue #11): gRPC core's handshaker
trace parsed into one rate-limited WARNING per peer with the reason, counted in
fleet status (transport/handshakes.py). The traces below are real grpcio 1.85
output (channel arguments not used by the parser removed); a gRPC upgrade that
changes the format fails these tests and the process test at the end."""
from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from types import SimpleNamespace

import grpc
import pytest

from proto import admin_pb2, admin_pb2_grpc
from tests.transport.procs import REPO, SPANRECCTL, Controller, identity, make_certs, run
from transport.handshakes import (HandshakeFailed, HandshakeLog, StderrCapture, TraceParser,
                                  describe)

SAMPLE = REPO / "samples" / "sample-call.pcap"

OTHER_CA_AND_HTTP = """\
W1206 07:00:11.761357   27966 log.cc:102] Log level INFO is not suitable for production. Prefer WARNING or ERROR. However if you see this message in a debug environment or test environment it is safe to ignore this message.
I1206 07:00:11.761472   27966 trace.cc:91] gRPC Tracers: handshaker
I1206 07:00:13.264807   27969 handshaker.cc:80] handshake_manager 0x7f7aa0002110: adding handshaker endpoint_info [0x7f7aa0001250] at index 0
I1206 07:00:13.264913   27969 handshaker.cc:80] handshake_manager 0x7f7aa0002110: adding handshaker security [0x7f7aa0002490] at index 1
I1206 07:00:13.264925   27969 handshaker.cc:155] CallNextHandshakerLocked: error=OK shutdown=false index=0, args={endpoint=0x7f7aa0001c30, args={grpc.resource_quota=0x5608e18c0600}, read_buffer.Length()=0, exit_early=0}
I1206 07:00:13.264935   27969 channel_trace.h:396] handshake manager 0x7f7aa0002110:  calling handshaker endpoint_info at index 0
I1206 07:00:13.264959   27969 handshaker.cc:155] CallNextHandshakerLocked: error=OK shutdown=false index=1, args={endpoint=0x7f7aa0001c30, args={grpc.internal.endpoint_local_address=ipv4:127.0.0.1:50999, grpc.internal.endpoint_peer_address=ipv4:127.0.0.1:45620, grpc.resource_quota=0x5608e18c0600}, read_buffer.Length()=0, exit_early=0}
I1206 07:00:13.264977   27969 channel_trace.h:396] handshake manager 0x7f7aa0002110:  calling handshaker security at index 1
I1206 07:00:13.269029   27968 ssl_transport_security.cc:2563] Handshake failed with error SSL_ERROR_SSL: error:1000007d:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate
I1206 07:00:13.269073   27968 handshaker.cc:155] CallNextHandshakerLocked: error=UNKNOWN: Ssl handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate: OK
=== Source Location Trace: ===
src/core/util/status_helper.cc:68
 shutdown=false index=2, args={endpoint=0x7f7aa0001c30, args={grpc.internal.endpoint_local_address=ipv4:127.0.0.1:50999, grpc.internal.endpoint_peer_address=ipv4:127.0.0.1:45620, grpc.resource_quota=0x5608e18c0600}, read_buffer.Length()=0, exit_early=0}
I1206 07:00:13.269094   27968 channel_trace.h:396] handshake manager 0x7f7aa0002110: Failed with error: UNKNOWN: Ssl handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate: OK
=== Source Location Trace: ===
src/core/util/status_helper.cc:68
I1206 07:00:14.362488   27969 handshaker.cc:80] handshake_manager 0x7f7aa000e0c0: adding handshaker endpoint_info [0x7f7aa0014240] at index 0
I1206 07:00:14.362561   27969 handshaker.cc:80] handshake_manager 0x7f7aa000e0c0: adding handshaker security [0x7f7aa0002e60] at index 1
I1206 07:00:14.362569   27969 handshaker.cc:155] CallNextHandshakerLocked: error=OK shutdown=false index=0, args={endpoint=0x7f7aa000dd30, args={grpc.resource_quota=0x5608e18c0600}, read_buffer.Length()=0, exit_early=0}
I1206 07:00:14.362597   27969 channel_trace.h:396] handshake manager 0x7f7aa000e0c0:  calling handshaker endpoint_info at index 0
I1206 07:00:14.362621   27969 handshaker.cc:155] CallNextHandshakerLocked: error=OK shutdown=false index=1, args={endpoint=0x7f7aa000dd30, args={grpc.internal.endpoint_local_address=ipv4:127.0.0.1:50999, grpc.internal.endpoint_peer_address=ipv4:127.0.0.1:45626, grpc.resource_quota=0x5608e18c0600}, read_buffer.Length()=0, exit_early=0}
I1206 07:00:14.362627   27969 channel_trace.h:396] handshake manager 0x7f7aa000e0c0:  calling handshaker security at index 1
I1206 07:00:14.363747   27969 ssl_transport_security.cc:2563] Handshake failed with error SSL_ERROR_SSL: error:1000007d:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate
I1206 07:00:14.363766   27969 handshaker.cc:155] CallNextHandshakerLocked: error=UNKNOWN: Ssl handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate: OK
=== Source Location Trace: ===
src/core/util/status_helper.cc:68
 shutdown=false index=2, args={endpoint=0x7f7aa000dd30, args={grpc.internal.endpoint_local_address=ipv4:127.0.0.1:50999, grpc.internal.endpoint_peer_address=ipv4:127.0.0.1:45626, grpc.resource_quota=0x5608e18c0600}, read_buffer.Length()=0, exit_early=0}
I1206 07:00:14.363777   27969 channel_trace.h:396] handshake manager 0x7f7aa000e0c0: Failed with error: UNKNOWN: Ssl handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate: OK
=== Source Location Trace: ===
src/core/util/status_helper.cc:68
I1206 07:00:15.266344   27969 handshaker.cc:80] handshake_manager 0x7f7aa0002110: adding handshaker endpoint_info [0x7f7aa0014370] at index 0
I1206 07:00:15.266423   27969 handshaker.cc:80] handshake_manager 0x7f7aa0002110: adding handshaker security [0x7f7aa0002e60] at index 1
I1206 07:00:15.266431   27969 handshaker.cc:155] CallNextHandshakerLocked: error=OK shutdown=false index=0, args={endpoint=0x7f7aa0002490, args={grpc.resource_quota=0x5608e18c0600}, read_buffer.Length()=0, exit_early=0}
I1206 07:00:15.266443   27969 channel_trace.h:396] handshake manager 0x7f7aa0002110:  calling handshaker endpoint_info at index 0
I1206 07:00:15.266504   27968 handshaker.cc:155] CallNextHandshakerLocked: error=OK shutdown=false index=1, args={endpoint=0x7f7aa0002490, args={grpc.internal.endpoint_local_address=ipv4:127.0.0.1:50999, grpc.internal.endpoint_peer_address=ipv4:127.0.0.1:45628, grpc.resource_quota=0x5608e18c0600}, read_buffer.Length()=0, exit_early=0}
I1206 07:00:15.266511   27968 channel_trace.h:396] handshake manager 0x7f7aa0002110:  calling handshaker security at index 1
I1206 07:00:15.266543   27968 ssl_transport_security.cc:2563] Handshake failed with error SSL_ERROR_SSL: error:1000009c:SSL routines:OPENSSL_internal:HTTP_REQUEST: Invalid certificate verification context
I1206 07:00:15.266567   27968 handshaker.cc:155] CallNextHandshakerLocked: error=UNKNOWN: Ssl handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000009c:SSL routines:OPENSSL_internal:HTTP_REQUEST: Invalid certificate verification context: OK
=== Source Location Trace: ===
src/core/util/status_helper.cc:68
 shutdown=false index=2, args={endpoint=0x7f7aa0002490, args={grpc.internal.endpoint_local_address=ipv4:127.0.0.1:50999, grpc.internal.endpoint_peer_address=ipv4:127.0.0.1:45628, grpc.resource_quota=0x5608e18c0600}, read_buffer.Length()=0, exit_early=0}
I1206 07:00:15.266573   27968 channel_trace.h:396] handshake manager 0x7f7aa0002110: Failed with error: UNKNOWN: Ssl handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000009c:SSL routines:OPENSSL_internal:HTTP_REQUEST: Invalid certificate verification context: OK
=== Source Location Trace: ===
src/core/util/status_helper.cc:68
"""

TIMEOUT = """\
W1206 07:00:39.453181   28367 log.cc:102] Log level INFO is not suitable for production. Prefer WARNING or ERROR. However if you see this message in a debug environment or test environment it is safe to ignore this message.
I1206 07:00:39.453304   28367 trace.cc:91] gRPC Tracers: handshaker
I1206 07:00:40.493698   28369 handshaker.cc:80] handshake_manager 0x7fdbe8002060: adding handshaker endpoint_info [0x7fdbf0001090] at index 0
I1206 07:00:40.493834   28369 handshaker.cc:80] handshake_manager 0x7fdbe8002060: adding handshaker security [0x7fdbf0001380] at index 1
I1206 07:00:40.493847   28369 handshaker.cc:155] CallNextHandshakerLocked: error=OK shutdown=false index=0, args={endpoint=0x7fdbe8001b80, args={grpc.server_handshake_timeout_ms=2000}, read_buffer.Length()=0, exit_early=0}
I1206 07:00:40.493866   28369 channel_trace.h:396] handshake manager 0x7fdbe8002060:  calling handshaker endpoint_info at index 0
I1206 07:00:40.493898   28372 handshaker.cc:155] CallNextHandshakerLocked: error=OK shutdown=false index=1, args={endpoint=0x7fdbe8001b80, args={grpc.internal.endpoint_local_address=ipv4:127.0.0.1:51999, grpc.internal.endpoint_peer_address=ipv4:127.0.0.1:40162, grpc.server_handshake_timeout_ms=2000}, read_buffer.Length()=0, exit_early=0}
I1206 07:00:40.493913   28372 channel_trace.h:396] handshake manager 0x7fdbe8002060:  calling handshaker security at index 1
I1206 07:00:42.494695   28372 channel_trace.h:396] handshake manager 0x7fdbe8002060: Shutdown called: UNKNOWN: Handshake timed out
=== Source Location Trace: ===
src/core/util/status_helper.cc:68
I1206 07:00:42.494749   28372 channel_trace.h:396] handshake manager 0x7fdbe8002060: Shutting down handshaker security at index 1
I1206 07:00:42.494879   28372 handshaker.cc:155] CallNextHandshakerLocked: error=UNAVAILABLE: Handshake read failed (Endpoint closing)
=== Source Location Trace: ===
src/core/util/status_helper.cc:124
 shutdown=true index=2, args={endpoint=(nil), args={grpc.internal.endpoint_local_address=ipv4:127.0.0.1:51999, grpc.internal.endpoint_peer_address=ipv4:127.0.0.1:40162, grpc.server_handshake_timeout_ms=2000}, read_buffer.Length()=0, exit_early=0}
I1206 07:00:42.494924   28372 channel_trace.h:396] handshake manager 0x7fdbe8002060: Failed with error: UNAVAILABLE: Handshake read failed (Endpoint closing)
=== Source Location Trace: ===
src/core/util/status_helper.cc:124
"""

GOOD_SERVER = """\
W1206 07:01:37.675588   29144 log.cc:102] Log level INFO is not suitable for production. Prefer WARNING or ERROR. However if you see this message in a debug environment or test environment it is safe to ignore this message.
I1206 07:01:37.675699   29144 trace.cc:91] gRPC Tracers: handshaker
I1206 07:01:38.693394   29146 handshaker.cc:80] handshake_manager 0x7fa5d80020b0: adding handshaker endpoint_info [0x7fa5d80011f0] at index 0
I1206 07:01:38.693495   29146 handshaker.cc:80] handshake_manager 0x7fa5d80020b0: adding handshaker security [0x7fa5d8002430] at index 1
I1206 07:01:38.693511   29146 handshaker.cc:155] CallNextHandshakerLocked: error=OK shutdown=false index=0, args={endpoint=0x7fa5d8001c10, args={grpc.server_handshake_timeout_ms=2000}, read_buffer.Length()=0, exit_early=0}
I1206 07:01:38.693524   29146 channel_trace.h:396] handshake manager 0x7fa5d80020b0:  calling handshaker endpoint_info at index 0
I1206 07:01:38.693536   29146 handshaker.cc:155] CallNextHandshakerLocked: error=OK shutdown=false index=1, args={endpoint=0x7fa5d8001c10, args={grpc.internal.endpoint_local_address=ipv4:127.0.0.1:51999, grpc.internal.endpoint_peer_address=ipv4:127.0.0.1:45254, grpc.server_handshake_timeout_ms=2000}, read_buffer.Length()=0, exit_early=0}
I1206 07:01:38.693554   29146 channel_trace.h:396] handshake manager 0x7fa5d80020b0:  calling handshaker security at index 1
I1206 07:01:38.695547   29148 handshaker.cc:155] CallNextHandshakerLocked: error=OK shutdown=false index=2, args={endpoint=0x7fa5d8001c10, args={grpc.auth_context=0x7fa5d0003d20, grpc.internal.channelz_security=0x7fa5d0006c70, grpc.internal.endpoint_local_address=ipv4:127.0.0.1:51999, grpc.internal.endpoint_peer_address=ipv4:127.0.0.1:45254, grpc.server_handshake_timeout_ms=2000}, read_buffer.Length()=0, exit_early=0}
"""

GOOD_CLIENT = """\
W1206 07:01:38.685127   29180 log.cc:102] Log level INFO is not suitable for production. Prefer WARNING or ERROR. However if you see this message in a debug environment or test environment it is safe to ignore this message.
I1206 07:01:38.685296   29180 trace.cc:91] gRPC Tracers: handshaker
I1206 07:01:38.692290   29186 handshaker.cc:80] handshake_manager 0x7f4978006240: adding handshaker tcp_connect [0x7f49780033b0] at index 0
I1206 07:01:38.692364   29186 handshaker.cc:80] handshake_manager 0x7f4978006240: adding handshaker http_connect_client [0x7f4978006390] at index 1
I1206 07:01:38.692374   29186 handshaker.cc:80] handshake_manager 0x7f4978006240: adding handshaker endpoint_info [0x7f4978005c20] at index 2
I1206 07:01:38.692687   29186 handshaker.cc:80] handshake_manager 0x7f4978006240: adding handshaker security [0x7f49780075d0] at index 3
I1206 07:01:38.692713   29186 handshaker.cc:155] CallNextHandshakerLocked: error=OK shutdown=false index=0, args={endpoint=(nil), args={grpc.fork_epoch=0, grpc.http.max_concurrent_streams_reject_on_client=1, grpc.http2_scheme=https, grpc.internal.channel_credentials=0x5635632de6e0, grpc.internal.no_subchannel.channelz_containing_base_node=0x7f4978002270, grpc.internal.tcp_handshaker_bind_endpoint_to_pollset=1, grpc.internal.tcp_handshaker_resolved_address=ipv4:127.0.0.1:51999, grpc.server_uri=dns:///127.0.0.1:51999}, read_buffer.Length()=0, exit_early=0}
I1206 07:01:38.692734   29186 channel_trace.h:396] handshake manager 0x7f4978006240:  calling handshaker tcp_connect at index 0
I1206 07:01:38.693632   29187 handshaker.cc:155] CallNextHandshakerLocked: error=OK shutdown=false index=1, args={endpoint=0x7f496c0039e0, args={grpc.fork_epoch=0, grpc.http.max_concurrent_streams_reject_on_client=1, grpc.http2_scheme=https, grpc.internal.channel_credentials=0x5635632de6e0, grpc.internal.no_subchannel.channelz_containing_base_node=0x7f4978002270, grpc.server_uri=dns:///127.0.0.1:51999}, read_buffer.Length()=0, exit_early=0}
I1206 07:01:38.693661   29187 channel_trace.h:396] handshake manager 0x7f4978006240:  calling handshaker http_connect_client at index 1
I1206 07:01:38.693666   29187 handshaker.cc:155] CallNextHandshakerLocked: error=OK shutdown=false index=2, args={endpoint=0x7f496c0039e0, args={grpc.fork_epoch=0, grpc.http.max_concurrent_streams_reject_on_client=1, grpc.http2_scheme=https, grpc.internal.channel_credentials=0x5635632de6e0, grpc.internal.no_subchannel.channelz_containing_base_node=0x7f4978002270, grpc.server_uri=dns:///127.0.0.1:51999}, read_buffer.Length()=0, exit_early=0}
I1206 07:01:38.693678   29187 channel_trace.h:396] handshake manager 0x7f4978006240:  calling handshaker endpoint_info at index 2
I1206 07:01:38.693685   29187 handshaker.cc:155] CallNextHandshakerLocked: error=OK shutdown=false index=3, args={endpoint=0x7f496c0039e0, args={grpc.fork_epoch=0, grpc.http.max_concurrent_streams_reject_on_client=1, grpc.http2_scheme=https, grpc.internal.channel_credentials=0x5635632de6e0, grpc.internal.endpoint_local_address=ipv4:127.0.0.1:45254, grpc.internal.endpoint_peer_address=ipv4:127.0.0.1:51999, grpc.internal.no_subchannel.channelz_containing_base_node=0x7f4978002270, grpc.server_uri=dns:///127.0.0.1:51999}, read_buffer.Length()=0, exit_early=0}
I1206 07:01:38.693707   29187 channel_trace.h:396] handshake manager 0x7f4978006240:  calling handshaker security at index 3
I1206 07:01:38.694897   29186 handshaker.cc:155] CallNextHandshakerLocked: error=OK shutdown=false index=4, args={endpoint=0x7f496c0039e0, args={grpc.auth_context=0x7f49780060a0, grpc.fork_epoch=0, grpc.http.max_concurrent_streams_reject_on_client=1, grpc.http2_scheme=https, grpc.internal.channel_credentials=0x5635632de6e0, grpc.internal.channelz_security=0x7f4978013540, grpc.internal.endpoint_local_address=ipv4:127.0.0.1:45254, grpc.internal.endpoint_peer_address=ipv4:127.0.0.1:51999, grpc.internal.no_subchannel.channelz_containing_base_node=0x7f4978002270, grpc.server_uri=dns:///127.0.0.1:51999}, read_buffer.Length()=0, exit_early=0}
"""

# The last handshake above alone: a plain HTTP request (OpenSSL HTTP_REQUEST).
HTTP_ONLY = OTHER_CA_AND_HTTP[OTHER_CA_AND_HTTP.index("I1206 07:00:15"):]


def _feed(text: str, ports: set[int], chunk: int = 0) -> tuple[StderrCapture, HandshakeLog, list[str], bytes]:
    """Feeds `text` into a capture whose real stderr is a pipe; returns the
    warnings logged and the bytes forwarded."""
    lines: list[str] = []

    class Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())
    logger = logging.getLogger("test.handshakes")
    logger.handlers[:] = [Grab()]
    logger.propagate = False
    hl = HandshakeLog(ports, logger=logger)
    cap = StderrCapture(hl)
    r, w = os.pipe()
    cap.real_fd = w
    data = text.encode()
    if chunk:
        for i in range(0, len(data), chunk):
            cap.feed(data[i:i + chunk])
    else:
        cap.feed(data)
    cap.feed(b"")
    os.close(w)
    forwarded = os.read(r, 1 << 20)
    os.close(r)
    return cap, hl, lines, forwarded


# -- the parser on real traces ------------------------------------------------------
def test_other_ca_and_plain_http_name_the_peer_and_the_reason() -> None:
    cap, hl, lines, forwarded = _feed(OTHER_CA_AND_HTTP, {50999})
    assert hl.total == 3
    assert hl.by_reason == {"client certificate not signed by the cluster CA": 2,
                            "not TLS (plain HTTP request)": 1}
    # one line per peer host per minute: the three come from 127.0.0.1
    assert lines == ["TLS handshake from 127.0.0.1:45620 failed: "
                     "client certificate not signed by the cluster CA"]
    assert forwarded == b""            # INFO traces and gRPC's own "INFO" warning: not forwarded
    assert cap.parser.tracked() == 0 and cap.parser.unmatched == 0


def test_records_are_tied_by_manager_and_thread_whatever_the_read_size() -> None:
    for chunk in (1, 7, 100, 4096):
        _, hl, _, _ = _feed(OTHER_CA_AND_HTTP, {50999}, chunk=chunk)
        assert hl.total == 3, chunk
        assert sum(hl.by_reason.values()) == 3


def test_plain_http_request() -> None:
    _, hl, lines, _ = _feed(HTTP_ONLY, {50999})
    assert lines == ["TLS handshake from 127.0.0.1:45628 failed: not TLS (plain HTTP request)"]


def test_handshake_timeout_is_named_not_the_read_that_follows() -> None:
    _, hl, lines, _ = _feed(TIMEOUT, {51999})
    assert lines == ["TLS handshake from 127.0.0.1:40162 failed: handshake timed out"]
    assert hl.total == 1


def test_successful_handshakes_are_not_failures_and_not_kept() -> None:
    cap, hl, lines, _ = _feed(GOOD_SERVER, {51999})
    assert hl.total == 0 and lines == [] and cap.parser.tracked() == 0
    cap, hl, lines, _ = _feed(GOOD_CLIENT, {51999})
    assert hl.total == 0 and lines == [] and cap.parser.tracked() == 0


def test_failures_on_other_local_ports_are_not_ours() -> None:
    """Our own outgoing channels (etcd, OTLP) handshake in the same trace: their
    local address is an ephemeral port, not a listening one."""
    _, hl, lines, _ = _feed(OTHER_CA_AND_HTTP, {7600})
    assert hl.total == 0 and lines == []


def test_parser_memory_is_bounded() -> None:
    parser = TraceParser(max_tracked=16)
    for i in range(1000):
        parser.record("1", f"handshake_manager 0x{i:x}: adding handshaker endpoint_info [0x1] at index 0")
        parser.record("1", "CallNextHandshakerLocked: error=OK shutdown=false index=1, args={endpoint="
                           f"0x{i:x}0, args={{grpc.internal.endpoint_local_address=ipv4:127.0.0.1:1, "
                           f"grpc.internal.endpoint_peer_address=ipv4:10.0.0.1:{i}}}}}")
        parser.record("1", f"handshake manager 0x{i:x}:  calling handshaker security at index 1")
    assert parser.tracked() == 16
    assert len(parser._by_endpoint) <= 16


def test_forwarding_keeps_warnings_and_other_lines() -> None:
    text = ("I1206 07:00:11.1 1 chttp2_transport.cc:1] noise\n"
            "E1206 07:00:11.2 1 tcp_server.cc:2] Failed to bind\n"
            "=== Source Location Trace: ===\n"
            "src/core/x.cc:1\n"
            "something else wrote this\n")
    _, hl, _, forwarded = _feed(text, {1})
    assert forwarded == (b"E1206 07:00:11.2 1 tcp_server.cc:2] Failed to bind\n"
                         b"=== Source Location Trace: ===\nsrc/core/x.cc:1\n"
                         b"something else wrote this\n")


def test_reasons() -> None:
    assert describe("UNKNOWN: Ssl handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: "
                    "error:100000c0:SSL routines:OPENSSL_internal:PEER_DID_NOT_RETURN_A_CERTIFICATE: "
                    "Invalid certificate verification context") == "no client certificate"
    assert describe("UNKNOWN: Ssl handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: "
                    "error:1000007d:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: "
                    "certificate has expired") == "client certificate expired"
    assert describe("UNKNOWN: Ssl handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: "
                    "error:10000070:SSL routines:OPENSSL_internal:SOMETHING_NEW: text") == "SOMETHING_NEW: text"
    assert describe("UNAVAILABLE: Handshake read failed (Socket closed)").startswith(
        "connection closed during the handshake")


def test_rate_limit_one_line_per_peer_per_minute_and_a_summary() -> None:
    now = [1000.0]
    lines: list[str] = []

    class Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())
    logger = logging.getLogger("test.handshakes.rate")
    logger.handlers[:] = [Grab()]
    logger.propagate = False
    hl = HandshakeLog({7600}, clock=lambda: now[0], logger=logger)
    reason = "UNKNOWN: Ssl handshake failed: error:1000009c:SSL routines:OPENSSL_internal:HTTP_REQUEST: x"
    for i in range(51):
        hl.observe(HandshakeFailed(f"10.0.0.5:{40000 + i}", "10.0.0.1:7600", reason))
        now[0] += 0.1
    hl.observe(HandshakeFailed("10.0.0.6:1", "10.0.0.1:7600", reason))
    assert lines == ["TLS handshake from 10.0.0.5:40000 failed: not TLS (plain HTTP request)",
                     "TLS handshake from 10.0.0.6:1 failed: not TLS (plain HTTP request)"]
    assert hl.total == 52
    now[0] += 60
    hl.tick()
    assert lines[2:] == ["52 failed TLS handshakes from 2 peers in the last 60 s"]
    hl.observe(HandshakeFailed("10.0.0.5:50000", "10.0.0.1:7600", reason))   # a new minute: logged again
    assert lines[3] == "TLS handshake from 10.0.0.5:50000 failed: not TLS (plain HTTP request)"
    now[0] += 61
    hl.tick()
    assert len(lines) == 4             # nothing held back: no summary


# -- a real `spanrec controller` ----------------------------------------------------
@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("pki")
    good, other = root / "good", root / "other"
    make_certs(good, "ca")
    make_certs(good, "server", "controller.local", "--san", "127.0.0.1,localhost")
    make_certs(good, "client", "branch-7")
    make_certs(good, "client", "ops-alice", "--role", "operator")
    make_certs(other, "ca", "--name", "rogue CA")
    make_certs(other, "client", "branch-7")
    return SimpleNamespace(good=good, other=other)


def _status(c: Controller) -> admin_pb2.Status:
    with c.channel() as ch:
        return admin_pb2_grpc.AdminStub(ch).GetStatus(admin_pb2.StatusRequest(), timeout=10)


def _http(source: str, target: tuple[str, int]) -> int:
    s = socket.create_connection(target, timeout=5, source_address=(source, 0))
    port = s.getsockname()[1]
    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
    try:
        s.recv(100)
    except OSError:
        pass
    s.close()
    return port


def _failures(log: str) -> list[str]:
    return [ln for ln in log.splitlines() if "TLS handshake from" in ln or "failed TLS handshakes" in ln]


def test_controller_logs_failed_handshakes_rate_limited_and_counts_them(pki, tmp_path) -> None:
    c = Controller(tmp_path, identity(pki.good, "controller.local"), probe=identity(pki.good, "ops-alice"))
    try:
        # good connections: the probe above, an operator and a sensor
        assert _status(c).tls_handshakes_failed == 0
        sensor = c.replay(SAMPLE, "branch-7", identity(pki.good, "branch-7"), workdir=tmp_path)
        assert sensor.returncode == 0, sensor.stderr
        c.wait_recordings(1)
        assert _failures(c.log.read_text()) == []

        # a sensor certificate from another CA (from 127.0.0.1; it trusts the controller) ...
        rogue = identity(pki.other, "branch-7")
        creds = grpc.ssl_channel_credentials((pki.good / "ca.crt").read_bytes(), rogue.key.read_bytes(),
                                             rogue.cert.read_bytes())
        with grpc.secure_channel(c.target, creds) as ch:
            with pytest.raises(grpc.FutureTimeoutError):
                grpc.channel_ready_future(ch).result(timeout=1.5)
        # ... and plain HTTP (from 127.0.0.2)
        port = _http("127.0.0.2", ("127.0.0.1", c.port))
        deadline = time.monotonic() + 10
        while len(_failures(c.log.read_text())) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        lines = _failures(c.log.read_text())
        assert len(lines) == 2, c.log.read_text()
        assert re.search(r"TLS handshake from 127\.0\.0\.1:\d+ failed: client certificate not signed "
                         r"by the cluster CA", lines[0]), lines
        assert f"TLS handshake from 127.0.0.2:{port} failed: not TLS (plain HTTP request)" in lines[1], lines
        assert lines[0].startswith("warning spanrec.tls: ")

        before = _status(c).tls_handshakes_failed
        assert before >= 2
        for _ in range(50):                      # the same peer within the minute: no new lines
            _http("127.0.0.2", ("127.0.0.1", c.port))
        deadline = time.monotonic() + 10
        while _status(c).tls_handshakes_failed < before + 50 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _status(c).tls_handshakes_failed == before + 50
        assert _failures(c.log.read_text()) == lines

        fleet = run(SPANRECCTL, "fleet", "--controller", c.target, "-o", "json",
                    *identity(pki.good, "ops-alice").flags())
        assert fleet.returncode == 0, fleet.stderr
        assert json.loads(fleet.stdout)["tls_handshakes_failed"] == before + 50
        table = run(SPANRECCTL, "fleet", "--controller", c.target, *identity(pki.good, "ops-alice").flags())
        assert f"{before + 50} failed TLS handshake(s)" in table.stdout, table.stdout
        # the controller's other logging is unchanged
        assert "controller listening" in c.log.read_text()
    finally:
        assert c.stop() == 0, c.log.read_text()
    text = c.log.read_text()
    assert "controller stopped" in text and "Traceback" not in text
    assert not re.search(r"^[IW]\d{4} ", text, re.M), text      # no gRPC trace leaks through


def test_insecure_controller_does_not_trace(tmp_path) -> None:
    c = Controller(tmp_path, None)
    try:
        _http("127.0.0.1", ("127.0.0.1", c.port))
        with c.channel() as ch:
            st = admin_pb2_grpc.AdminStub(ch).GetStatus(admin_pb2.StatusRequest(), timeout=10)
        assert st.tls_handshakes_failed == 0
    finally:
        assert c.stop() == 0
    assert _failures(c.log.read_text()) == []

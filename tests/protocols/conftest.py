"""Start tshark on the sample captures these tests use while the first tests run."""
from __future__ import annotations

import pytest

from tests.conftest import CAPTURES
from tests.protocols._tshark import prefetch

USED = [
    "SIP-RTP-Normal_Call_two_parties.pcap", "SIP_CALL_RTP_G711", "MagicJack-_short_call.pcap",
    "SIP_DTMF2.cap", "DTMFsipinfo.pcap", "ipv6frag.pcap", "erspan_sip_ipv4_udp.pcapng",
    "sip_ipv4_tcp.pcap", "aaa.pcap", "sip_ipv4_tcp_fragmented.pcap",
]


@pytest.fixture(scope="session", autouse=True)
def _prefetch_tshark_tables() -> None:
    prefetch([CAPTURES / name for name in USED])

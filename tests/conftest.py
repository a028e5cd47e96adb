"""Shared pytest fixtures: where the public captures are, and tool checks."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CAPTURES = Path(os.environ.get("SPANREC_CAPTURES", REPO.parent / "shared" / "captures"))

# The controllers and record runs the tests start are one process each unless a
# test asks for shards (--shards N): the default, one shard per core, changes with
# the machine. tests/e2e/test_default_shards.py runs the default itself.
os.environ.setdefault("SPANREC_SHARDS", "1")


# Every public capture that holds SIP calls (SOURCES.md); the rest have none.
CALL_CAPTURES = [
    "DTMFsipinfo.pcap", "aaa.pcap", "MagicJack-_short_call.pcap", "nb6-telephone.pcap",
    "rtp_conversacion.pcap", "sip-rtp-g711.pcap", "sip-rtp-g722.pcap", "sip-rtp-opus.pcap",
    "SIP_DTMF2.cap", "SIP_CALL_RTP_G711", "FAX-Call-t38-CA-TDM-SIP-FB-1.pcap",
    "SIP-RTP-Normal_Call_two_parties.pcap", "sip_ipv4_tcp.pcap", "ipv6frag.pcap",
    "erspan_sip_ipv4_udp.pcapng",    # SIP inside GRE (transparent Ethernet bridging)
    "sip_ipv4_tcp_fragmented.pcap",  # SIP over TCP port 6060, messages across segments
]


def capture(name: str) -> Path:
    """Path of a public sample capture; skips the test when it is absent."""
    path = CAPTURES / name
    if not path.is_file():
        pytest.skip(f"sample capture {name} not available at {CAPTURES}")
    return path


def require_tool(name: str) -> str:
    """Absolute path of a command-line tool; skips the test when it is absent."""
    found = shutil.which(name)
    if not found:
        pytest.skip(f"{name} not installed")
    return found


@pytest.fixture
def captures_dir() -> Path:
    if not CAPTURES.is_dir():
        pytest.skip(f"sample captures not available at {CAPTURES}")
    return CAPTURES

"""Ask libpcap itself about an interface and a filter, with libpcap's own error text.

Why: a capture opened with a bad filter or interface should fail with
libpcap's own text (e.g. "syntax error in filter expression") and the true
link type, before the capture loop (sensor/libpcap.py) starts, without
depending on tcpdump being installed on a sensor.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
from dataclasses import dataclass

__all__ = ["PcapProbeError", "ProbeResult", "probe", "dlt_to_linktype",
           "DEFAULT_BPF", "default_bpf"]

# Kernel prefilter for live capture: all UDP and TCP (SIP and RTP ports are
# not known in advance), IPv6 fragments (libpcap's "udp" only looks at the
# fixed IPv6 header's next header; IPv4 fragments carry proto 17 in every
# fragment so "udp" already matches them), the tunnels protocols.layers
# decapsulates (GRE and ERSPAN = IP protocol 47, IP-in-IP = 4 and 41; VXLAN
# is UDP already), and the same behind one 802.1Q tag.
# Dropped in the kernel: ARP, ICMP, STP/LLDP and other non-UDP/TCP/tunnel traffic.
_TUNNELS = "ip proto 47 or ip6 proto 47 or ip proto 4 or ip6 proto 4 or ip proto 41 or ip6 proto 41"
_L4 = f"udp or tcp or ip6 proto 44 or {_TUNNELS}"
DEFAULT_BPF = f"{_L4} or (vlan and ({_L4}))"
# libpcap accepts "vlan" only on Ethernet-like link types (not on Linux
# cooked captures of "any", nor on raw IP from tun devices).
_VLAN_LINKTYPES = frozenset((1,))


def default_bpf(linktype: int) -> str:
    """DEFAULT_BPF where libpcap understands "vlan", the same without it elsewhere."""
    return DEFAULT_BPF if linktype in _VLAN_LINKTYPES else _L4

_ERRBUF_SIZE = 256
# DLT values that differ from the LINKTYPE values written to capture files
_DLT_TO_LINKTYPE = {12: 101, 14: 101}  # DLT_RAW (Linux and OpenBSD numbering) -> LINKTYPE_RAW


class PcapProbeError(Exception):
    """libpcap refused the interface or the filter; the message is libpcap's."""


@dataclass(frozen=True, slots=True)
class ProbeResult:
    linktype: int  # LINKTYPE_* as written to pcap files
    dlt: int  # what pcap_datalink returned


class _BpfProgram(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.c_void_p)]


@functools.cache
def _lib() -> ctypes.CDLL:
    names = [n for n in (ctypes.util.find_library("pcap"), "libpcap.so.0.8", "libpcap.so.1") if n]
    last: OSError | None = None
    for name in names:
        try:
            lib = ctypes.CDLL(name)
        except OSError as exc:
            last = exc
            continue
        lib.pcap_create.restype = ctypes.c_void_p
        lib.pcap_create.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        lib.pcap_open_dead.restype = ctypes.c_void_p
        lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
        for fn in ("pcap_set_snaplen", "pcap_set_timeout"):
            getattr(lib, fn).argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.pcap_activate.argtypes = [ctypes.c_void_p]
        lib.pcap_datalink.argtypes = [ctypes.c_void_p]
        lib.pcap_geterr.restype = ctypes.c_char_p
        lib.pcap_geterr.argtypes = [ctypes.c_void_p]
        lib.pcap_statustostr.restype = ctypes.c_char_p
        lib.pcap_statustostr.argtypes = [ctypes.c_int]
        lib.pcap_compile.argtypes = [ctypes.c_void_p, ctypes.POINTER(_BpfProgram), ctypes.c_char_p,
                                     ctypes.c_int, ctypes.c_uint32]
        lib.pcap_freecode.argtypes = [ctypes.POINTER(_BpfProgram)]
        lib.pcap_close.argtypes = [ctypes.c_void_p]
        return lib
    raise PcapProbeError(f"libpcap shared library not found ({last})")


def dlt_to_linktype(dlt: int) -> int:
    return _DLT_TO_LINKTYPE.get(dlt, dlt)


def _compile_on(lib: ctypes.CDLL, handle: int, bpf: str) -> None:
    prog = _BpfProgram()
    # netmask PCAP_NETMASK_UNKNOWN: only "ip broadcast" would need the real one
    if lib.pcap_compile(handle, ctypes.byref(prog), bpf.encode(), 1, 0xFFFFFFFF) != 0:
        raise PcapProbeError((lib.pcap_geterr(handle) or b"").decode(errors="replace"))
    lib.pcap_freecode(ctypes.byref(prog))


def probe(interface: str, bpf: str = "", snaplen: int = 65535) -> ProbeResult:
    """Open ``interface`` briefly: check it can be captured on and ``bpf`` compiles for it.

    Activation allocates a ring for a moment (a few ms); the handle is closed
    before returning, so the real capture opens a clean one.
    """
    lib = _lib()
    errbuf = ctypes.create_string_buffer(_ERRBUF_SIZE)
    handle = lib.pcap_create(interface.encode(), errbuf)
    if not handle:
        raise PcapProbeError(errbuf.value.decode(errors="replace") or "pcap_create failed")
    try:
        lib.pcap_set_snaplen(handle, snaplen)
        lib.pcap_set_timeout(handle, 10)
        status = lib.pcap_activate(handle)
        if status < 0:
            detail = (lib.pcap_geterr(handle) or b"").decode(errors="replace")
            kind = (lib.pcap_statustostr(status) or b"").decode(errors="replace")
            raise PcapProbeError(f"{kind}: {detail}" if detail and detail != kind else kind)
        dlt = lib.pcap_datalink(handle)
        if bpf:
            _compile_on(lib, handle, bpf)
        return ProbeResult(linktype=dlt_to_linktype(dlt), dlt=dlt)
    finally:
        lib.pcap_close(handle)

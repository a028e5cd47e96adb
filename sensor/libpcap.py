"""A live capture whose loop runs in C: libpcap through ctypes (issue #13).

Why not python-libpcap here: its `Sniff` cannot set the kernel ring's size
(libpcap's default 2 MiB, ~16 TPACKET_V3 blocks: at a 10 ms timeout the ring
holds ~160 ms of traffic whatever the rate, so a sensor paused for 300 ms lost
packets even at 3,300 packets/s), and its loop is Python: every packet needs
the GIL back, so any busy Python thread (classification, gRPC, garbage
collection) makes the ring overflow. libpcap itself offers both remedies:

* `pcap_create` + `pcap_set_buffer_size` + `pcap_activate`: the ring size
  (and snaplen, timeout, promiscuous and immediate mode, nanosecond stamps);
* `pcap_loop` with `pcap_dump` as its callback, writing pcap records into
  a pipe: the whole capture loop is libpcap's own C code, in a thread that
  ctypes lets run without the GIL. The Python side reads the pipe in large
  chunks (`PcapStream`), so a Python stall fills the pipe (1 MiB) and then the
  kernel ring (`buffer_bytes`), and loses nothing while they last.

Errors are libpcap's own text (a missing interface, a filter it cannot
compile); the link type is libpcap's `pcap_datalink`, and a filter of None is
the VoIP prefilter for it (sensor/bpf.py). This is the only hand-written
libpcap binding in spanrec; docs/DECISIONS.md "Live capture in C" says why.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import functools
import os
import struct
import threading
from dataclasses import dataclass

from sensor.bpf import default_bpf

__all__ = ["LibpcapError", "FilterError", "LoopCapture", "PcapStream", "PcapCounters",
           "load_libpcap"]

_PCAP_TSTAMP_PRECISION_NANO = 1
# DLT values that differ from the LINKTYPE values written to capture files
_DLT_TO_LINKTYPE = {12: 101, 14: 101}  # DLT_RAW (Linux and OpenBSD numbering) -> LINKTYPE_RAW
_F_SETPIPE_SZ = 1031
_F_GETPIPE_SZ = 1032
PIPE_BYTES = 1 << 20            # asked for the pipe; Linux allows 1 MiB unprivileged
_STDIO_BUFFER = 256 << 10        # pcap_dump's FILE buffer: one write() per 256 KiB


class LibpcapError(Exception):
    """libpcap refused or failed; the message is libpcap's own text."""


class FilterError(LibpcapError):
    """libpcap could not compile or install the capture filter `bpf`."""

    def __init__(self, message: str, bpf: str) -> None:
        super().__init__(message)
        self.bpf = bpf


class _BpfProgram(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.c_void_p)]


class _Stat(ctypes.Structure):
    _fields_ = [("ps_recv", ctypes.c_uint), ("ps_drop", ctypes.c_uint), ("ps_ifdrop", ctypes.c_uint)]


@dataclass(frozen=True, slots=True)
class PcapCounters:
    received: int = 0       # packets the filter passed (libpcap's ps_recv)
    kernel_drops: int = 0   # the ring was full (ps_drop)
    interface_drops: int = 0


@functools.cache
def load_libpcap() -> tuple[ctypes.CDLL, ctypes.CDLL]:
    """(libpcap, libc) with the signatures used here; LibpcapError when the
    shared library is missing (the install scripts call this to check)."""
    names = [n for n in (ctypes.util.find_library("pcap"), "libpcap.so.0.8", "libpcap.so.1") if n]
    lib = None
    last: OSError | None = None
    for name in names:
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError as exc:
            last = exc
    if lib is None:
        raise LibpcapError(f"libpcap shared library not found ({last})")
    vp, i = ctypes.c_void_p, ctypes.c_int
    lib.pcap_create.restype = vp
    lib.pcap_create.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    for fn in ("pcap_set_snaplen", "pcap_set_timeout", "pcap_set_promisc", "pcap_set_buffer_size",
               "pcap_set_immediate_mode", "pcap_set_tstamp_precision"):
        getattr(lib, fn).argtypes = [vp, i]
    for fn in ("pcap_activate", "pcap_datalink", "pcap_close", "pcap_breakloop",
               "pcap_dump_flush", "pcap_dump_close"):
        getattr(lib, fn).argtypes = [vp]
    lib.pcap_geterr.restype = ctypes.c_char_p
    lib.pcap_geterr.argtypes = [vp]
    lib.pcap_statustostr.restype = ctypes.c_char_p
    lib.pcap_statustostr.argtypes = [i]
    lib.pcap_compile.argtypes = [vp, ctypes.POINTER(_BpfProgram), ctypes.c_char_p, i, ctypes.c_uint32]
    lib.pcap_freecode.argtypes = [ctypes.POINTER(_BpfProgram)]
    lib.pcap_setfilter.argtypes = [vp, ctypes.POINTER(_BpfProgram)]
    lib.pcap_dump_fopen.restype = vp
    lib.pcap_dump_fopen.argtypes = [vp, vp]
    # pcap_loop's callback is passed as a plain pointer: pcap_dump itself
    lib.pcap_loop.argtypes = [vp, i, vp, vp]
    lib.pcap_stats.argtypes = [vp, ctypes.POINTER(_Stat)]
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.fdopen.restype = vp
    libc.fdopen.argtypes = [i, ctypes.c_char_p]
    libc.setvbuf.argtypes = [vp, vp, i, ctypes.c_size_t]
    libc.fclose.argtypes = [vp]
    return lib, libc


def _err(lib: ctypes.CDLL, handle: int, status: int | None = None) -> str:
    detail = (lib.pcap_geterr(handle) or b"").decode(errors="replace")
    if status is None:
        return detail or "libpcap error"
    kind = (lib.pcap_statustostr(status) or b"").decode(errors="replace")
    return f"{kind}: {detail}" if detail and detail != kind else kind


class LoopCapture:
    """One activated libpcap handle whose `pcap_loop` writes pcap records into
    a pipe from a thread of its own; `fd` is the pipe's read end.

    `close()` never blocks: it breaks the loop (libpcap wakes its poll), and
    the loop thread then closes the dumper (EOF on the pipe) and the handle.
    """

    def __init__(self, interface: str, bpf: str | None, *, snaplen: int = 65535, timeout_ms: int = 10,
                 buffer_bytes: int = 64 << 20, promisc: bool = True, immediate: bool = False) -> None:
        lib, libc = load_libpcap()
        self._lib = lib
        errbuf = ctypes.create_string_buffer(256)
        handle = lib.pcap_create(interface.encode(), errbuf)
        if not handle:
            raise LibpcapError(errbuf.value.decode(errors="replace") or "pcap_create failed")
        self._handle = handle
        self._dumper: int | None = None
        self._closed = threading.Event()
        self._error = ""
        r = w = -1
        try:
            lib.pcap_set_snaplen(handle, snaplen)
            lib.pcap_set_promisc(handle, int(promisc))
            lib.pcap_set_timeout(handle, timeout_ms)
            lib.pcap_set_buffer_size(handle, buffer_bytes)
            lib.pcap_set_immediate_mode(handle, int(immediate))
            lib.pcap_set_tstamp_precision(handle, _PCAP_TSTAMP_PRECISION_NANO)   # may be refused: µs
            status = lib.pcap_activate(handle)
            if status < 0:
                raise LibpcapError(_err(lib, handle, status))
            dlt = lib.pcap_datalink(handle)
            self.linktype = _DLT_TO_LINKTYPE.get(dlt, dlt)
            self.bpf = default_bpf(self.linktype) if bpf is None else bpf
            if self.bpf:
                prog = _BpfProgram()
                # netmask PCAP_NETMASK_UNKNOWN: only "ip broadcast" would need the real one
                if lib.pcap_compile(handle, ctypes.byref(prog), self.bpf.encode(), 1, 0xFFFFFFFF) != 0:
                    raise FilterError(_err(lib, handle), self.bpf)
                try:
                    if lib.pcap_setfilter(handle, ctypes.byref(prog)) != 0:
                        raise FilterError(_err(lib, handle), self.bpf)
                finally:
                    lib.pcap_freecode(ctypes.byref(prog))
            r, w = os.pipe2(os.O_CLOEXEC)
            try:
                fcntl.fcntl(w, _F_SETPIPE_SZ, PIPE_BYTES)
            except OSError:
                pass                        # the default 64 KiB: the ring still buffers
            pipe_bytes = fcntl.fcntl(w, _F_GETPIPE_SZ)
            fh = libc.fdopen(w, b"wb")
            if not fh:
                raise LibpcapError(f"fdopen: {os.strerror(ctypes.get_errno() or errno.EIO)}")
            w = -1                          # owned by the FILE now
            # one write() per buffer; a quarter of the pipe at most, so a flush
            # always finds room once the reader has drained the pipe
            libc.setvbuf(fh, None, 0, max(4096, min(_STDIO_BUFFER, pipe_bytes // 4)))   # _IOFBF
            dumper = lib.pcap_dump_fopen(handle, fh)
            if not dumper:
                libc.fclose(fh)
                raise LibpcapError(_err(lib, handle))
            self._dumper = dumper
        except BaseException:
            for fd in (r, w):
                if fd >= 0:
                    os.close(fd)
            lib.pcap_close(handle)
            raise
        self.fd = r
        self._flush_s = max(0.001, timeout_ms / 1000)
        self._dumper_lock = threading.Lock()
        self._last = PcapCounters()
        self._loop_ptr = ctypes.cast(lib.pcap_dump, ctypes.c_void_p)
        self._thread = threading.Thread(target=self._loop, name=f"pcap-loop-{interface}", daemon=True)
        self._thread.start()
        self._flusher = threading.Thread(target=self._flush_loop, name=f"pcap-flush-{interface}",
                                         daemon=True)
        self._flusher.start()

    def _loop(self) -> None:
        lib, handle = self._lib, self._handle
        try:
            rc = lib.pcap_loop(handle, -1, self._loop_ptr, self._dumper)   # GIL released
            if rc == -1:
                self._error = _err(lib, handle)
        finally:
            with self._dumper_lock:
                lib.pcap_dump_close(self._dumper)      # flushes; the reader sees EOF
                self._dumper = None
            self._closed.wait()                        # stats() may still be asked
            lib.pcap_close(handle)

    def _flush_loop(self) -> None:
        """Every timeout: push what the loop buffered into the pipe, so a packet
        waits at most ~2 timeouts at low rates (at high rates the buffer fills
        and goes by itself). A thread of its own: a flush that blocks on a full
        pipe waits for the reader, never stops it."""
        lib = self._lib
        while not self._closed.wait(self._flush_s):
            with self._dumper_lock:
                if self._dumper is None:
                    return
                lib.pcap_dump_flush(self._dumper)      # GIL released

    @property
    def error(self) -> str:
        """libpcap's text when the loop failed (interface gone...), else ""."""
        return self._error

    def counters(self) -> PcapCounters:
        """libpcap's counters (the last ones read once closed)."""
        if self._closed.is_set():
            return self._last
        st = _Stat()
        if self._lib.pcap_stats(self._handle, ctypes.byref(st)) == 0:
            self._last = PcapCounters(st.ps_recv, st.ps_drop, st.ps_ifdrop)
        return self._last

    def stop(self) -> None:
        """Stop capturing but keep the pipe: what the loop wrote is still read,
        then EOF (the loop's thread closes the dumper)."""
        self._lib.pcap_breakloop(self._handle)

    def close(self) -> None:
        """Stop: the loop breaks, a write blocked on the pipe fails (read end
        closed), the threads close the dumper and the handle."""
        if not self._closed.is_set():
            self.counters()
            self._lib.pcap_breakloop(self._handle)
            self._closed.set()
            try:
                os.close(self.fd)
            except OSError:
                pass


class PcapStream:
    """Incremental reader of the pcap records `LoopCapture` writes: `feed`
    bytes, get `(ts_ns, frame)` tuples. One slice per frame, no other copy."""

    _HDR = struct.Struct("<IIII")

    def __init__(self) -> None:
        self._buf = b""
        self._scale = 0          # ns per fraction unit, from the file header's magic
        self.frames = 0

    def feed(self, chunk: bytes) -> list[tuple[int, bytes]]:
        buf = self._buf + chunk if self._buf else chunk
        off = 0
        if not self._scale:
            if len(buf) < 24:
                self._buf = buf
                return []
            magic = buf[:4]
            if magic == b"\x4d\x3c\xb2\xa1":
                self._scale = 1
            elif magic == b"\xd4\xc3\xb2\xa1":
                self._scale = 1000
            else:
                raise LibpcapError(f"unexpected pcap stream magic {magic.hex()}")
            off = 24
        out: list[tuple[int, bytes]] = []
        add = out.append
        unpack = self._HDR.unpack_from
        scale = self._scale
        end = len(buf)
        while end - off >= 16:
            sec, frac, caplen, _wire = unpack(buf, off)
            stop = off + 16 + caplen
            if stop > end:
                break
            add((sec * 1_000_000_000 + frac * scale, buf[off + 16:stop]))
            off = stop
        self._buf = buf[off:] if off < end else b""
        self.frames += len(out)
        return out

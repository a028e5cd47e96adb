"""RTP audio decoders behind one small interface: G.711 µ/A-law, G.722, Opus.

A :class:`Decoder` turns the payloads of consecutive packets of *one* stream
(in RTP timestamp order) into int16 PCM at its ``sample_rate``; it keeps the
codec's state from one call to the next, so a stream is decoded by one
decoder in batches of packets.  ``decode_packets`` also says how many samples
each payload gave, which is what placement on the timeline needs.

* G.711: one numpy table lookup over the joined payloads (stateless), with the
  tables of ``controller.media.audio`` (bit-exact with ``audioop``).
* G.722: FFmpeg's ADPCM decoder through PyAV, fed the joined payloads of a
  batch as one packet (G.722 has no framing: one octet = two 16 kHz samples,
  and the decoder state runs on across packet boundaries exactly as it does
  packet by packet).  RTP clock 8000, sample rate 16000 (RFC 3551 §4.5.2).
* Opus: libopus through PyAV (FFmpeg's own Opus decoder if PyAV lacks it),
  one packet at a time (variable frame duration), downmixed to mono, 48 kHz.
  A payload that does not decode gives no samples (silence on the timeline).

Comfort noise (RFC 3389) and telephone-event (RFC 4733) are not audio: they
have no decoder here and are never placed (CN periods are silence).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from controller.media.audio import CODECS as G711_CODECS

__all__ = ["Decoder", "CodecInfo", "CODECS", "NON_AUDIO", "codec_for", "opus_packet_samples"]

#: Encodings that carry no audio to decode (kept in call.pcap, not placed).
NON_AUDIO = frozenset(("CN", "COMFORT-NOISE", "TELEPHONE-EVENT"))

_EMPTY = np.zeros(0, dtype=np.int16)
_MAX_AV_PACKET = 1 << 20        # joined G.722 octets per PyAV packet


class Decoder:
    """Decoder of one RTP stream's payloads (one instance per stream segment)."""

    name = ""
    clock_rate = 8000       # RTP timestamp rate
    sample_rate = 8000      # PCM rate

    def decode_packets(self, payloads: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """(int16 samples of all payloads in order, samples per payload as int64)."""
        raise NotImplementedError

    def decode(self, payloads: Sequence[bytes]) -> np.ndarray:
        return self.decode_packets(payloads)[0]

    def nominal_samples(self, payload: bytes) -> int:
        """Samples a payload decodes to, read from its size or header (no decoding)."""
        raise NotImplementedError


class _PerOctet(Decoder):
    """Codecs where every payload octet gives a fixed number of samples."""

    per_octet = 1

    def nominal_samples(self, payload: bytes) -> int:
        return len(payload) * self.per_octet

    def decode_packets(self, payloads: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
        joined = getattr(payloads, "octets", None)     # timeline.JoinedPayloads: already one buffer
        if joined is not None:
            return self._decode_octets(joined), payloads.lengths * self.per_octet
        lengths = np.fromiter(map(len, payloads), dtype=np.int64, count=len(payloads))
        if not payloads:
            return _EMPTY, lengths
        return self._decode_octets(b"".join(payloads)), lengths * self.per_octet

    def _decode_octets(self, octets: bytes) -> np.ndarray:
        raise NotImplementedError


class G711Decoder(_PerOctet):
    def __init__(self, name: str) -> None:
        self.name = name
        self._decode = G711_CODECS[name].decode       # shared pair table: nothing to build

    def _decode_octets(self, octets: bytes) -> np.ndarray:
        return self._decode(np.frombuffer(octets, dtype=np.uint8))


def _av_context(names: Sequence[str], rate: int):
    """A PyAV audio decoder context, mono, for the first codec name PyAV has."""
    import av  # imported here: without PyAV only G.722/Opus are undecodable
    for name in names:
        try:
            ctx = av.CodecContext.create(name, "r")
        except (av.error.FFmpegError, ValueError):  # codec not built into this PyAV
            continue
        ctx.sample_rate = rate
        ctx.layout = "mono"
        return ctx
    raise LookupError(f"PyAV has none of the decoders {', '.join(names)}")


def _frame_pcm(frame) -> np.ndarray:
    """One decoded PyAV frame as mono int16 (s16 as is; float scaled and clipped)."""
    if frame.format.name == "s16" and len(frame.layout.channels) == 1:    # the usual case
        return np.frombuffer(frame.planes[0], np.int16, count=frame.samples)
    a = frame.to_ndarray()
    if a.ndim == 2 and a.shape[0] > 1:          # planar with several channels: average
        a = a.mean(axis=0)
    a = a.reshape(-1)
    if a.dtype == np.int16:
        return a
    if a.dtype.kind == "f":
        return np.clip(np.rint(a * 32768.0), -32768, 32767).astype(np.int16)
    return a.astype(np.int16)


class G722Decoder(_PerOctet):
    name = "G722"
    clock_rate = 8000
    sample_rate = 16000
    per_octet = 2

    def __init__(self) -> None:
        self._ctx = _av_context(("g722",), self.sample_rate)

    def _decode_octets(self, octets: bytes) -> np.ndarray:
        import av
        out: list[np.ndarray] = []
        for i in range(0, len(octets), _MAX_AV_PACKET):
            for frame in self._ctx.decode(av.Packet(octets[i:i + _MAX_AV_PACKET])):
                out.append(_frame_pcm(frame))
        pcm = np.concatenate(out) if out else _EMPTY
        want = 2 * len(octets)
        if pcm.size != want:        # never seen; keep placement exact whatever happens
            pcm = np.concatenate([pcm, np.zeros(max(0, want - pcm.size), np.int16)])[:want]
        return pcm


#: Opus frame duration in 48 kHz samples by TOC configuration (RFC 6716 §3.1).
_OPUS_FRAME = ([480, 960, 1920, 2880] * 3 + [480, 960] * 2 + [120, 240, 480, 960] * 4)


def opus_packet_samples(payload: bytes) -> int:
    """48 kHz samples an Opus packet holds, from its TOC byte (0 if malformed)."""
    if not payload:
        return 0
    toc = payload[0]
    code = toc & 3
    if code == 0:
        frames = 1
    elif code < 3:
        frames = 2
    else:
        frames = payload[1] & 0x3F if len(payload) > 1 else 0
    n = _OPUS_FRAME[toc >> 3] * frames
    return n if n <= 5760 else 0        # at most 120 ms per packet


class OpusDecoder(Decoder):
    name = "OPUS"
    clock_rate = 48000
    sample_rate = 48000

    def __init__(self) -> None:
        self._ctx = _av_context(("libopus", "opus"), self.sample_rate)

    def nominal_samples(self, payload: bytes) -> int:
        return opus_packet_samples(payload)

    def decode_packets(self, payloads: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
        import av
        lengths = np.zeros(len(payloads), dtype=np.int64)
        out: list[np.ndarray] = []
        decode = self._ctx.decode
        for i, payload in enumerate(payloads):
            if not payload:             # an empty av.Packet would flush the decoder
                continue
            try:
                frames = decode(av.Packet(payload))
            except av.error.FFmpegError:
                continue                # corrupt packet: silence, the decoder goes on
            n = 0
            for frame in frames:
                pcm = _frame_pcm(frame)
                out.append(pcm)
                n += pcm.size
            lengths[i] = n
        return (np.concatenate(out) if out else _EMPTY), lengths


@dataclass(frozen=True)
class CodecInfo:
    """A decodable encoding: RTP clock rate, PCM rate, and how to make a decoder."""

    name: str
    clock_rate: int
    sample_rate: int
    factory: Callable[[], Decoder]
    per_octet: int = 0          # samples per payload octet; 0: ``nominal`` reads each payload
    nominal: Callable[[bytes], int] | None = None

    def new_decoder(self) -> Decoder:
        return self.factory()


#: Encoding name (SDP ``a=rtpmap``, upper case) -> codec.
CODECS: dict[str, CodecInfo] = {
    "PCMU": CodecInfo("PCMU", 8000, 8000, lambda: G711Decoder("PCMU"), 1),
    "PCMA": CodecInfo("PCMA", 8000, 8000, lambda: G711Decoder("PCMA"), 1),
    "G722": CodecInfo("G722", 8000, 16000, G722Decoder, 2),
    "OPUS": CodecInfo("OPUS", 48000, 48000, OpusDecoder, 0, opus_packet_samples),
}

_available: dict[str, bool] = {}


def _works(info: CodecInfo) -> bool:
    ok = _available.get(info.name)
    if ok is None:
        try:
            info.new_decoder()
            ok = True
        except (ImportError, LookupError):
            ok = False
        _available[info.name] = ok
    return ok


def codec_for(encoding: tuple[str, int, int] | None) -> CodecInfo | None:
    """The decoder of an (encoding, clock rate, channels) from SDP or the static
    table, or None: unknown encoding, non-audio, a clock rate the codec does not
    use (RFC 7587: Opus is always 48000), or a decoder this build lacks."""
    if encoding is None:
        return None
    info = CODECS.get(encoding[0].upper())
    if info is None or encoding[1] != info.clock_rate or not _works(info):
        return None
    return info

"""Multi-site: two mirrored sites joined by a router, one sensor per site, one
controller; sipp calls within a site, across the sites, and through a B2BUA
leg pair correlated by X-Call-ID (topology: tests/netlab2.py).

Expected: exactly one recording per call, every SIP message and RTP packet
once in its call.pcap, audio equal to what was sent, and the duplicate
counters equal to what was mirrored twice.

Nothing expected comes from spanrec: tcpdump captures both mirror interfaces
beside the sensors, and tshark's view of those two captures says which
packets belong to which call (Call-ID, SDP endpoints) and which were seen by
both sites (same source, destination, IP ID, ports and UDP payload: the
router changed MACs and TTL only). Audio is compared with audioop's decode of
the RTP payloads sipp played (test_live's helper).

The three calls run at the same time, each with audio of its own (sipp's
g711a.pcap for the cross-site call, generated tones for the others): two
concurrent calls carrying the same bytes look like a media relay to the
controller's media fallback, which ``test_concurrent_calls_with_the_same_audio_stay_apart``
covers on a lab run of its own.

Each lab runs once per module (~20 s); the tests only read its results.
"""
from __future__ import annotations

import audioop
import json
import os
import signal
import struct
import subprocess
import sys
import time
import wave
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, require_tool
from tests.e2e.test_live import SIPP_G711A, reference_alaw, stop
from tests.netlab2 import SENSOR_IFACE, NetlabUnavailable, TwoSiteLab, two_site_lab
from tests.s3server import free_ports

pytestmark = [pytest.mark.live, pytest.mark.slow]

SCENARIOS = Path(__file__).resolve().parent / "sipp"
SENSOR_ID = {"A": "sensorA", "B": "sensorB"}
SITE_CALL = "site-1@lab"      # a1 -> a2, within site A
CROSS_CALL = "cross-1@lab"    # a1 -> b1, across the router
LEG1 = "leg1-1@lab"           # a1 -> sbc (B2BUA incoming leg, site A)
LEG2 = "leg2-1@lab"           # sbc -> b1 (B2BUA outgoing leg, X-Call-ID: leg1-1@lab)
ALL_CALL_IDS = (SITE_CALL, CROSS_CALL, LEG1, LEG2)
# generated audio: (seconds, tone 1 Hz, its step per 0.5 s, tone 2 Hz, its step)
TONES = {
    "site": (4.0, 500.0, 60.0, 1500.0, -50.0),    # a1 plays it to a2 (uac_play_pcap.xml)
    "leg1": (4.0, 300.0, 110.0, 900.0, 40.0),     # a1 plays it to the sbc
    "leg2": (3.0, 400.0, 90.0, 1250.0, -70.0),    # b1 plays it to the sbc (uas_play_pcap.xml)
}
# how far the start of a channel may lie from where the mirrors' capture times put it
ALIGN_TOLERANCE_SAMPLES = 16  # 2 ms


# -- generated audio: tones sipp plays from a pcap --------------------------------

def tone_pcm(seconds: float, f1: float, step1: float, f2: float, step2: float) -> np.ndarray:
    """Two tones whose pitches step every 0.5 s: no shift of it matches itself."""
    n = int(seconds * 8000)
    t = np.arange(n) / 8000.0
    step = (t // 0.5).astype(int)
    pcm = 7000 * np.sin(2 * np.pi * (f1 + step1 * step) * t) \
        + 3000 * np.sin(2 * np.pi * (f2 + step2 * step) * t)
    return pcm.astype("<i2")


def write_rtp_pcap(path: Path, alaw: bytes, *, ssrc: int, ptime_ms: int = 20) -> None:
    """Classic pcap (Ethernet/IPv4/UDP/RTP PCMA) of ``alaw`` in ``ptime_ms`` packets,
    for sipp's play_pcap_audio (which takes the RTP part and the pacing)."""
    per = 8 * ptime_ms
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for i in range(len(alaw) // per):
        rtp = struct.pack("!BBHII", 0x80, 8 | (0x80 if i == 0 else 0), 1000 + i, 160_000 + i * per,
                          ssrc) + alaw[i * per:(i + 1) * per]
        udp = struct.pack("!HHHH", 40000, 40002, 8 + len(rtp), 0) + rtp
        ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i, 0, 64, 17, 0,
                                   bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])))
        csum = sum(struct.unpack("!10H", ip))
        csum = (csum & 0xFFFF) + (csum >> 16)
        struct.pack_into("!H", ip, 10, ~((csum & 0xFFFF) + (csum >> 16)) & 0xFFFF)
        frame = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + bytes(ip) + udp
        usec = i * ptime_ms * 1000
        out.append(struct.pack("<IIII", 1_700_000_000 + usec // 1_000_000, usec % 1_000_000,
                               len(frame), len(frame)) + frame)
    path.write_bytes(b"".join(out))


def tone_workdir(work: Path, name: str, filename: str) -> Path:
    """A sipp working directory holding tone ``name`` as ``filename``."""
    d = work / name
    d.mkdir()
    write_rtp_pcap(d / filename, audioop.lin2alaw(tone_pcm(*TONES[name]).tobytes(), 2),
                   ssrc=0x51000000 + list(TONES).index(name))
    return d


# -- tshark's view of a capture ------------------------------------------------------

FIELDS = ("frame.time_epoch", "ip.src", "ip.dst", "ip.id", "udp.srcport", "udp.dstport",
          "sip.Call-ID", "sdp.connection_info.address", "sdp.media.port", "udp.payload", "ip.ttl")

Key = tuple[str, str, int, int, int, str]   # src, dst, IP ID, sport, dport, UDP payload (hex)


@dataclass(frozen=True)
class Packet:
    ts_ns: int
    key: Key
    call_id: str                          # "" unless SIP
    sdp: tuple[tuple[str, int], ...]      # media endpoints announced in this message
    ttl: int = field(default=0, compare=False)   # 64 at the sender's site, 63 past the router

    @property
    def src(self) -> tuple[str, int]:
        return self.key[0], self.key[3]

    @property
    def dst(self) -> tuple[str, int]:
        return self.key[1], self.key[4]

    @property
    def ssrc(self) -> int | None:
        return None if self.rtp_pt is None else int(self.key[5][16:24], 16)

    @property
    def rtp_pt(self) -> int | None:
        payload = self.key[5]
        if self.call_id or len(payload) < 24 or int(payload[:2], 16) >> 6 != 2:
            return None
        return int(payload[2:4], 16) & 0x7F


def _epoch_ns(text: str) -> int:
    sec, _, frac = text.partition(".")
    return int(sec) * 1_000_000_000 + int((frac + "000000000")[:9])


def tshark_packets(path: Path) -> list[Packet]:
    """Every UDP/IPv4 packet of a capture, as tshark decodes it."""
    tshark = require_tool("tshark")
    argv = [tshark, "-r", str(path), "-Y", "udp && ip", "-T", "fields", "-E", "separator=/t",
            "-E", "aggregator=,"]
    for f in FIELDS:
        argv += ["-e", f]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    packets = []
    for line in out.splitlines():
        ts, src, dst, ipid, sport, dport, cid, addrs, ports, payload, ttl = \
            (line.split("\t") + [""] * 11)[:11]
        addr_list = addrs.split(",") if addrs else []
        port_list = [int(p) for p in ports.split(",")] if ports else []
        if len(addr_list) == 1 and len(port_list) > 1:
            addr_list *= len(port_list)          # one session-level c= for every m=
        packets.append(Packet(_epoch_ns(ts), (src, dst, int(ipid, 16), int(sport), int(dport),
                                              payload.replace(":", "").lower()),
                              cid.split(",")[0], tuple(zip(addr_list, port_list)), int(ttl)))
    return packets


@dataclass
class Mirrors:
    """Both sites' mirror captures, each packet assigned to the Call-ID it belongs to."""

    by_site: dict[str, list[Packet]]
    call_of: dict[Packet, str] = field(default_factory=dict)
    unassigned: list[Packet] = field(default_factory=list)

    def __post_init__(self) -> None:
        endpoints: dict[tuple[str, int], str] = {}
        for pkts in self.by_site.values():
            for p in pkts:
                for ep in p.sdp:
                    assert endpoints.setdefault(ep, p.call_id) == p.call_id, \
                        f"{ep} announced by two calls: the lab must give every sipp its own ports"
        self.endpoints = endpoints
        for pkts in self.by_site.values():
            for p in pkts:
                cid = p.call_id or endpoints.get(p.dst) or endpoints.get(p.src)
                if cid:
                    self.call_of[p] = cid
                else:
                    self.unassigned.append(p)

    def site_packets(self, site: str, call_ids: Iterable[str]) -> list[Packet]:
        wanted = set(call_ids)
        return [p for p in self.by_site[site] if self.call_of.get(p) in wanted]

    def union(self, call_ids: Iterable[str]) -> Counter[Key]:
        """What a recording must hold: each packet once, i.e. per key the most
        times one sensor saw it (a real SIP retransmission counts again)."""
        call_ids = list(call_ids)
        per_site = [Counter(p.key for p in self.site_packets(s, call_ids)) for s in self.by_site]
        keys = set().union(*per_site)
        return Counter({k: max(c[k] for c in per_site) for k in keys})

    def copies(self, call_ids: Iterable[str] | None = None,
               flow: tuple[tuple[str, int], tuple[str, int], int] | None = None) -> dict[str, int]:
        """Copies the controller must drop, by site (of these calls; of this RTP
        flow: source, destination, SSRC). A packet seen by both sites was first
        captured where it was sent (TTL 64) and a few microseconds later, past
        the router, at the other site (TTL 63): that later copy is the duplicate.
        The order comes from the TTL, not from timestamps: two capture processes
        on one interface time-stamp the same frame up to ~15 us apart, as much as
        the gap between the sites."""
        wanted = set(call_ids) if call_ids is not None else None
        seen: dict[str, Counter[Key]] = {}
        routed_into: dict[Key, str] = {}
        for site, pkts in self.by_site.items():
            c: Counter[Key] = Counter()
            for p in pkts:
                if wanted is not None and self.call_of.get(p) not in wanted:
                    continue
                if flow is not None and (p.call_id or (p.src, p.dst, p.ssrc) != flow):
                    continue
                c[p.key] += 1
                if p.ttl < 64:
                    routed_into[p.key] = site
            seen[site] = c
        dropped = {site: 0 for site in self.by_site}
        a, b = seen["A"], seen["B"]
        for key in a.keys() & b.keys():
            dropped[routed_into[key]] += min(a[key], b[key])
        return dropped

    def first_seen(self, call_ids: Iterable[str]) -> dict[Key, list[int]]:
        """Per key, the capture time of the kept (earliest) copy of each occurrence."""
        call_ids = list(call_ids)
        per_site = []
        for site in self.by_site:
            t: dict[Key, list[int]] = defaultdict(list)
            for p in self.site_packets(site, call_ids):
                t[p.key].append(p.ts_ns)
            per_site.append(t)
        keys = set().union(*per_site)
        out = {}
        for k in keys:
            lists = [sorted(t.get(k, [])) for t in per_site]
            n = max(len(x) for x in lists)
            out[k] = [min(x[i] for x in lists if i < len(x)) for i in range(n)]
        return out

    def first_rtp_ns(self, src: tuple[str, int], pt: int = 8) -> int:
        return min(p.ts_ns for pkts in self.by_site.values() for p in pkts
                   if p.src == src and p.rtp_pt == pt)

    def media_endpoint(self, call_id: str, host_ip: str) -> tuple[str, int]:
        (ep,) = [ep for ep, cid in self.endpoints.items() if cid == call_id and ep[0] == host_ip]
        return ep


# -- running the lab -----------------------------------------------------------------

@dataclass
class Recording:
    path: Path                    # the folder holding call.json
    meta: dict

    @property
    def call_ids(self) -> list[str]:
        return self.meta["call_ids"]


@dataclass
class LabRun:
    lab_hosts: dict[str, str]     # host name -> ip
    recordings: list[Recording]
    fleet: dict
    mirrors: Mirrors
    audio: dict[str, np.ndarray]  # what was played, by the name the calls gave it
    sipp_rc: dict[str, int]
    logs: Path
    seconds: float

    def recordings_of(self, call_id: str) -> list[Recording]:
        return [r for r in self.recordings if call_id in r.call_ids]


#: starts the calls on a built lab; returns (each sipp's exit status, audio played by name)
Calls = Callable[[TwoSiteLab, Path, Path], tuple[dict[str, int], dict[str, Path]]]


def _wait_for(predicate, timeout: float, what: str, logs: Path, procs: dict[str, subprocess.Popen]) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        for name, proc in procs.items():
            assert proc.poll() is None, f"{name} exited early:\n" + _tail(logs / f"{name}.log")
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n" + \
            _tail(logs / "controller.log")
        time.sleep(0.2)


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def _wait_sipp(procs: dict[str, subprocess.Popen]) -> dict[str, int]:
    rc = {}
    for name, proc in procs.items():
        try:
            rc[name] = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            rc[name] = -999
    return rc


SIPP_LIMITS = ["-m", "1", "-timeout", "40"]
UAC_LIMITS = [*SIPP_LIMITS, "-timeout_error"]


def three_calls(lab: TwoSiteLab, work: Path, logs: Path) -> tuple[dict[str, int], dict[str, Path]]:
    """Within site A, across the sites, and the B2BUA leg pair, at the same time."""
    ip = {name: h.ip for name, h in lab.hosts.items()}
    site_dir = tone_workdir(work, "site", "play.pcap")
    leg1_dir = tone_workdir(work, "leg1", "play.pcap")
    leg2_dir = tone_workdir(work, "leg2", "tone.pcap")
    uas = {
        "a2-uas": lab.sipp("a2", ["-sn", "uas", "-p", "5060", "-mp", "6100", "-rtp_echo", *SIPP_LIMITS],
                           log=logs / "a2-uas.log"),
        "b1-uas": lab.sipp("b1", ["-sn", "uas", "-p", "5060", "-mp", "6300", "-rtp_echo", *SIPP_LIMITS],
                           log=logs / "b1-uas.log"),
        # the B2BUA's incoming leg: answers, sends no audio (leg 2's callee does)
        "sbc-uas": lab.sipp("sbc", ["-sn", "uas", "-p", "5060", "-mp", "6500", *SIPP_LIMITS],
                            log=logs / "sbc-uas.log"),
        "b1-play": lab.sipp("b1", ["-sf", str(SCENARIOS / "uas_play_pcap.xml"), "-p", "5070",
                                   "-mp", "6700", *SIPP_LIMITS], workdir=leg2_dir,
                            log=logs / "b1-play.log"),
    }
    time.sleep(0.5)                                   # the UASs listen
    uac = {
        "a1-site": lab.sipp("a1", ["-sf", str(SCENARIOS / "uac_play_pcap.xml"), f"{ip['a2']}:5060",
                                   "-p", "5061", "-mp", "6000", "-cid_str", "site-%u@lab", *UAC_LIMITS],
                            workdir=site_dir, log=logs / "a1-site.log"),
        "a1-cross": lab.sipp("a1", ["-sn", "uac_pcap", f"{ip['b1']}:5060", "-p", "5062", "-mp", "6200",
                                    "-cid_str", "cross-%u@lab", *UAC_LIMITS], log=logs / "a1-cross.log"),
        "a1-leg1": lab.sipp("a1", ["-sf", str(SCENARIOS / "uac_play_pcap.xml"), f"{ip['sbc']}:5060",
                                   "-p", "5063", "-mp", "6400", "-cid_str", "leg1-%u@lab", *UAC_LIMITS],
                            workdir=leg1_dir, log=logs / "a1-leg1.log"),
    }
    time.sleep(0.5)                                   # leg 1's INVITE is out: the B2BUA calls on
    uac["sbc-leg2"] = lab.sipp("sbc", ["-sf", str(SCENARIOS / "b2bua_leg2_uac.xml"), f"{ip['b1']}:5070",
                                       "-p", "5061", "-mp", "6600", "-cid_str", "leg2-%u@lab",
                                       *UAC_LIMITS], log=logs / "sbc-leg2.log")
    return _wait_sipp({**uac, **uas}), {"cross": SIPP_G711A, "site": site_dir / "play.pcap",
                                        "leg1": leg1_dir / "play.pcap", "leg2": leg2_dir / "tone.pcap"}


def same_audio_calls(lab: TwoSiteLab, work: Path, logs: Path) -> tuple[dict[str, int], dict[str, Path]]:
    """a1 calls a2 and b1 at once, both calls playing sipp's g711a.pcap, both echoed."""
    ip = {name: h.ip for name, h in lab.hosts.items()}
    uas = {
        "a2-uas": lab.sipp("a2", ["-sn", "uas", "-p", "5060", "-mp", "6100", "-rtp_echo", *SIPP_LIMITS],
                           log=logs / "a2-uas.log"),
        "b1-uas": lab.sipp("b1", ["-sn", "uas", "-p", "5060", "-mp", "6300", "-rtp_echo", *SIPP_LIMITS],
                           log=logs / "b1-uas.log"),
    }
    time.sleep(0.5)
    uac = {
        "a1-site": lab.sipp("a1", ["-sn", "uac_pcap", f"{ip['a2']}:5060", "-p", "5061", "-mp", "6000",
                                   "-cid_str", "site-%u@lab", *UAC_LIMITS], log=logs / "a1-site.log"),
        "a1-cross": lab.sipp("a1", ["-sn", "uac_pcap", f"{ip['b1']}:5060", "-p", "5062", "-mp", "6200",
                                    "-cid_str", "cross-%u@lab", *UAC_LIMITS], log=logs / "a1-cross.log"),
    }
    return _wait_sipp({**uac, **uas}), {"cross": SIPP_G711A, "site": SIPP_G711A}


@dataclass
class ControllerSide:
    """What a `StartControllers` started: processes named ``controller*`` (each
    logging to ``logs/<name>.log``, stopped by PID after the sensors), the
    arguments that point a sensor and spanrecctl at it, and how many "sensor
    connected" lines its logs hold once both sensors are up."""

    procs: dict[str, subprocess.Popen]
    sensor_args: list[str]
    ctl_args: list[str]
    links: int = 2


#: starts the controller side on a built lab: (lab, tmp, logs, storage folder, env)
StartControllers = Callable[[TwoSiteLab, Path, Path, Path, dict[str, str]], ControllerSide]


def one_controller(lab: TwoSiteLab, tmp: Path, logs: Path, out: Path, env: dict[str, str]) -> ControllerSide:
    (port,) = free_ports(1)
    listen = f"{lab.controller_ip}:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "controller", "--listen", listen, "--storage", str(out),
         "--state-dir", str(tmp / "state"), "--insecure", "--log-format", "text"],
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=open(logs / "controller.log", "wb"),
        stderr=subprocess.STDOUT, env=env)
    return ControllerSide({"controller": proc}, ["--controller", listen], ["--controller", listen])


def run_lab(tmp: Path, calls: Calls, call_ids: Iterable[str],
            controllers: StartControllers = one_controller) -> LabRun:
    """Build the lab, start the controller, two sensors and two tcpdumps, run
    ``calls``, wait until every Call-ID is recorded, read the fleet status,
    stop everything (by PID) and tear the lab down."""
    for tool in ("sipp", "tshark", "tcpdump"):
        require_tool(tool)
    if not SIPP_G711A.is_file():
        pytest.skip("sipp's g711a.pcap not installed")
    t0 = time.monotonic()
    logs = tmp / "logs"
    logs.mkdir()
    out = tmp / "rec"
    try:
        ctx = two_site_lab()
        lab = ctx.__enter__()
    except NetlabUnavailable as exc:
        pytest.skip(str(exc))
    procs: dict[str, subprocess.Popen] = {}
    fleet: dict = {}
    controller_rc: dict[str, int] = {}
    try:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        side = controllers(lab, tmp, logs, out, env)
        procs.update(side.procs)
        for site in ("A", "B"):
            ns = lab.sensor_ns(site)
            procs[f"tcpdump{site}"] = lab.run_in(
                ns, ["tcpdump", "-i", SENSOR_IFACE, "-w", str(tmp / f"mirror{site}.pcap"), "-U",
                     "--immediate-mode", "-s", "0", "-n", "udp"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=open(logs / f"tcpdump{site}.log", "wb"))
            procs[f"sensor{site}"] = lab.run_in(
                ns, [sys.executable, "-m", "cli.main", "sensor", "--interface", SENSOR_IFACE,
                     *side.sensor_args, "--sensor-id", SENSOR_ID[site], "--site", site,
                     "--spool-dir", str(tmp / f"spool{site}"), "--log-format", "text", "--insecure"],
                cwd=REPO, stdin=subprocess.DEVNULL, stdout=open(logs / f"sensor{site}.log", "wb"),
                stderr=subprocess.STDOUT, env=env)
        _wait_for(lambda: sum((logs / f"{name}.log").read_bytes().count(b"sensor connected")
                              for name in side.procs) >= side.links
                  and all(b"listening on" in (logs / f"tcpdump{s}.log").read_bytes() for s in "AB"),
                  30, "both sensors and both tcpdumps", logs, procs)
        time.sleep(0.5)                               # the sensors' capture handles are open

        work = tmp / "sipp"
        work.mkdir()
        sipp_rc, played = calls(lab, work, logs)

        def all_recorded() -> bool:
            ids = set()
            for p in out.rglob("call.json"):
                try:
                    ids.update(json.loads(p.read_text())["call_ids"])
                except (OSError, ValueError):
                    return False
            return ids >= set(call_ids)
        if all(rc == 0 for rc in sipp_rc.values()):
            _wait_for(all_recorded, 30, "a recording of every call", logs, procs)
        time.sleep(1.0)                               # nothing else is still being written
        ctl = subprocess.run([sys.executable, "-m", "cli.ctl", "fleet", *side.ctl_args,
                              "--insecure", "-o", "json"], cwd=REPO, capture_output=True, text=True,
                             timeout=30, env=env)
        assert ctl.returncode == 0, ctl.stderr
        fleet = json.loads(ctl.stdout)
    finally:
        for name in ("tcpdumpA", "tcpdumpB"):
            if name in procs and procs[name].poll() is None:
                procs[name].send_signal(signal.SIGINT)   # flushes the capture file
                try:
                    procs[name].wait(10)
                except subprocess.TimeoutExpired:
                    pass
        for name in ("sensorA", "sensorB"):
            if name in procs:
                stop(procs[name])
        for name in [n for n in procs if n.startswith("controller")]:
            controller_rc[name] = stop(procs[name])
        ctx.__exit__(None, None, None)
    for name, rc in controller_rc.items():
        assert rc == 0, _tail(logs / f"{name}.log")

    recordings = [Recording(p.parent, json.loads(p.read_text())) for p in sorted(out.rglob("call.json"))]
    mirrors = Mirrors({site: tshark_packets(tmp / f"mirror{site}.pcap") for site in ("A", "B")})
    audio = {name: reference_alaw(path) for name, path in played.items()}
    return LabRun({name: h.ip for name, h in lab.hosts.items()}, recordings, fleet, mirrors, audio,
                  sipp_rc, logs, time.monotonic() - t0)


@pytest.fixture(scope="module")
def lab_run(tmp_path_factory: pytest.TempPathFactory) -> LabRun:
    return run_lab(tmp_path_factory.mktemp("two-site"), three_calls, ALL_CALL_IDS)


# -- helpers for the assertions ------------------------------------------------------

def only_recording(run: LabRun, call_id: str) -> Recording:
    found = run.recordings_of(call_id)
    assert len(found) == 1, f"{call_id}: {len(found)} recordings " \
        f"{[r.call_ids for r in found]} (all: {[r.call_ids for r in run.recordings]})"
    return found[0]


def pcap_keys(rec: Recording) -> list[Packet]:
    return tshark_packets(rec.path / "call.pcap")


def wav_channels(rec: Recording) -> np.ndarray:
    with wave.open(str(rec.path / "audio.wav")) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, 8000)
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)


def audio_start(channel: np.ndarray, expected: np.ndarray, what: str) -> int:
    """Sample where ``expected`` begins in ``channel``; asserts it is there unchanged."""
    nonzero = np.flatnonzero(channel)                # A-law never decodes to 0
    assert nonzero.size, f"{what}: silent"
    start = int(nonzero[0])
    got = channel[start:start + len(expected)]
    assert len(got) == len(expected) and np.array_equal(got, expected), \
        f"{what}: {int(np.count_nonzero(got != expected[:len(got)]))} of {len(expected)} samples differ"
    return start


def check_pcap_once(run: LabRun, rec: Recording, call_ids: list[str]) -> int:
    """call.pcap holds each packet of the call exactly once, and the copy kept is
    the one captured first. Returns the number of packets."""
    frames = pcap_keys(rec)
    got = Counter(p.key for p in frames)
    want = run.mirrors.union(call_ids)
    missing = want - got
    extra = got - want
    assert not missing and not extra, (
        f"{call_ids}: call.pcap has {sum(got.values())} packets, the mirrors {sum(want.values())}; "
        f"missing {sum(missing.values())} (e.g. {list(missing)[:2]}), "
        f"extra/repeated {sum(extra.values())} (e.g. {list(extra)[:2]})")
    assert rec.meta["pcap_packets"] == len(frames)
    # the copy kept is the first one: captured at the sender's site, before the router.
    # The merger orders the two sensors' streams by capture time but waits for a
    # lagging sensor only so long (a stall on this shared VM): then the routed copy,
    # µs later, can be the first to arrive. Each packet is still in once, at its
    # capture time (below); a handful in a call (<= 1 %) may be the later copy.
    routed = [p.key[:5] for p in frames if p.ttl != 64]
    assert len(routed) <= len(frames) // 100, \
        f"{call_ids}: {len(routed)} packets kept from the later mirror, e.g. {routed[:3]}"
    # ... with its capture time (not its arrival at the controller)
    first = run.mirrors.first_seen(call_ids)
    by_key: dict[Key, list[int]] = defaultdict(list)
    for p in frames:
        by_key[p.key].append(p.ts_ns)
    off = [(k[:5], ts - t0) for k, tss in by_key.items()
           for ts, t0 in zip(sorted(tss), first[k]) if abs(ts - t0) > 1_000_000]
    assert not off, f"{call_ids}: {len(off)} packets not at their capture time, e.g. {off[:3]}"
    return len(frames)


def check_alignment(m: Mirrors, first: tuple[str, str], second: tuple[str, str],
                    start0: int, start1: int) -> None:
    """The two channels start as far apart as the first RTP packets of the two
    senders ((Call-ID, host ip)) were in capture time."""
    gap_ns = (m.first_rtp_ns(m.media_endpoint(*second)) - m.first_rtp_ns(m.media_endpoint(*first)))
    want = gap_ns * 8000 / 1e9
    assert abs((start1 - start0) - want) <= ALIGN_TOLERANCE_SAMPLES, \
        f"channel 1 starts {start1 - start0} samples after channel 0, the capture says {want:.1f}"


def check_copies(m: Mirrors, meta: dict, call_ids: list[str]) -> None:
    """call.json's copies_dropped (total, by sensor, per stream) match the mirrors."""
    expected = {SENSOR_ID[s]: n for s, n in m.copies(call_ids).items() if n}
    assert meta["copies_dropped"] == sum(expected.values()), (meta["copies_dropped"], expected)
    assert {k: v for k, v in meta["copies_dropped_by_sensor"].items() if v} == expected
    for s in meta["streams"]:
        want = {SENSOR_ID[site]: n for site, n in _stream_copies(m, call_ids, s["src"], s["dst"], s["ssrc"]).items() if n}
        assert s["copies_dropped"] == sum(want.values()), (s, want)
        assert {k: v for k, v in s["copies_dropped_by_sensor"].items() if v} == want, (s, want)


def _stream_copies(m: Mirrors, call_ids: list[str], src: str, dst: str, ssrc: int) -> dict[str, int]:
    """Copies of one RTP stream (call.json's "ip:port" endpoints, SSRC) seen by both sites."""
    def ep(text: str) -> tuple[str, int]:
        host, _, port = text.rpartition(":")
        return host.strip("[]"), int(port)
    return m.copies(call_ids, flow=(ep(src), ep(dst), ssrc))


# -- the tests -----------------------------------------------------------------------

def sipp_failures(run: LabRun) -> str:
    return f"sipp exit codes {run.sipp_rc}\n" + "\n".join(
        f"--- {n}\n{_tail(run.logs / f'{n}.log', 1500)}" for n, rc in run.sipp_rc.items() if rc)


def test_lab_ran_every_call_and_mirrored_it(lab_run: LabRun) -> None:
    """Preconditions: every sipp succeeded; the mirrors saw what the topology says."""
    assert all(rc == 0 for rc in lab_run.sipp_rc.values()), sipp_failures(lab_run)
    m = lab_run.mirrors
    assert not m.unassigned, f"{len(m.unassigned)} UDP packets of no call: {m.unassigned[:3]}"
    assert len(m.site_packets("A", [SITE_CALL])) > 400 and not m.site_packets("B", [SITE_CALL]), \
        "the site call must stay in A"
    assert not m.site_packets("B", [LEG1]), "leg 1 (a1 -> sbc) must stay in A"
    for cid in (CROSS_CALL, LEG2):                  # crossing calls: each packet once per site
        a, b = (Counter(p.key for p in m.site_packets(s, [cid])) for s in "AB")
        assert a == b and sum(a.values()) > 100, cid


def test_each_call_is_exactly_one_recording(lab_run: LabRun) -> None:
    for cid in (SITE_CALL, CROSS_CALL):
        rec = only_recording(lab_run, cid)
        assert rec.call_ids == [cid]
        assert rec.meta["status"] == "answered" and rec.meta["end_reason"] == "bye", cid
    assert only_recording(lab_run, SITE_CALL).meta["sensors"] == [SENSOR_ID["A"]]
    assert sorted(only_recording(lab_run, CROSS_CALL).meta["sensors"]) == sorted(SENSOR_ID.values())
    # no phantom recording (e.g. one opened by a late copy from the other site)
    for rec in lab_run.recordings:
        assert set(rec.call_ids) <= set(ALL_CALL_IDS), rec.call_ids


@pytest.mark.parametrize("call_id", [SITE_CALL, CROSS_CALL])
def test_call_pcap_holds_every_packet_once(lab_run: LabRun, call_id: str) -> None:
    check_pcap_once(lab_run, only_recording(lab_run, call_id), [call_id])


@pytest.mark.parametrize("call_id,played", [(SITE_CALL, "site"), (CROSS_CALL, "cross")])
def test_audio_is_what_was_sent(lab_run: LabRun, call_id: str, played: str) -> None:
    """Channel 0: what a1 played; channel 1: the callee's echo of it, where the
    capture times put it."""
    rec = only_recording(lab_run, call_id)
    pcm = wav_channels(rec)
    sent = lab_run.audio[played]
    start0 = audio_start(pcm[:, 0], sent, f"{call_id} channel 0")
    start1 = audio_start(pcm[:, 1], sent, f"{call_id} channel 1 (echo)")
    callee = lab_run.lab_hosts["a2" if call_id == SITE_CALL else "b1"]
    check_alignment(lab_run.mirrors, (call_id, lab_run.lab_hosts["a1"]), (call_id, callee),
                    start0, start1)


def test_duplicate_counters_equal_what_was_mirrored_twice(lab_run: LabRun) -> None:
    """Controller status (spanrecctl fleet): the total and each sensor's
    duplicates_dropped are the copies tshark finds in both mirrors; every packet
    a mirror showed reached the controller."""
    m = lab_run.mirrors
    expected = m.copies()
    fleet = lab_run.fleet
    sensors = {s["sensor_id"]: s for s in fleet["sensors"]}
    got = {site: sensors[SENSOR_ID[site]]["duplicates_dropped"] for site in "AB"}
    assert sum(expected.values()) > 500               # the cross call and leg 2, both ways
    assert got == expected, f"duplicates_dropped by site {got}, mirrored twice {expected}"
    assert fleet["duplicates_dropped"] == sum(expected.values())
    for site in "AB":
        assert sensors[SENSOR_ID[site]]["packets_received"] == len(m.by_site[site]), site
        assert sensors[SENSOR_ID[site]]["site"] == site


@pytest.mark.parametrize("call_id", [SITE_CALL, CROSS_CALL])
def test_call_json_counts_the_copies_it_dropped(lab_run: LabRun, call_id: str) -> None:
    """call.json: copies_dropped (total, by sensor, per stream) of this call."""
    rec = only_recording(lab_run, call_id)
    check_copies(lab_run.mirrors, rec.meta, [call_id])
    if call_id == SITE_CALL:
        assert rec.meta["copies_dropped"] == 0


def test_b2bua_legs_are_each_recorded_once(lab_run: LabRun) -> None:
    """Merged or not, each leg's Call-ID is in exactly one recording, and the
    recordings holding the legs have each of their packets once."""
    recs = {id(r): r for cid in (LEG1, LEG2) for r in [only_recording(lab_run, cid)]}
    got: Counter[Key] = Counter()
    for rec in recs.values():
        got.update(p.key for p in pcap_keys(rec))
    assert got == lab_run.mirrors.union([LEG1, LEG2])


def test_b2bua_leg_pair_is_one_recording(lab_run: LabRun) -> None:
    """Leg 2's INVITE names leg 1 in X-Call-ID: one recording with both legs,
    caller audio from leg 1's caller (X), callee audio from leg 2's callee (Y)."""
    rec = only_recording(lab_run, LEG1)
    meta = rec.meta
    assert meta["call_ids"] == [LEG1, LEG2]
    assert only_recording(lab_run, LEG2) is rec
    assert len(lab_run.recordings) == 3               # site, cross, and the leg pair
    assert [leg["call_id"] for leg in meta["legs"]] == [LEG1, LEG2]
    legs = {leg["call_id"]: leg for leg in meta["legs"]}
    assert legs[LEG1]["relation"] is None
    assert legs[LEG2]["relation"] == {"to": LEG1, "by": "x-call-id"}
    for leg in legs.values():
        assert leg["status"] == "answered" and leg["end_reason"] == "bye"
    assert legs[LEG1]["sensors"] == [SENSOR_ID["A"]] and legs[LEG1]["sites"] == ["A"]
    assert sorted(legs[LEG2]["sensors"]) == sorted(SENSOR_ID.values())
    assert sorted(legs[LEG2]["sites"]) == ["A", "B"]
    assert sorted(meta["sites"]) == ["A", "B"]
    # every packet of both legs once; copies only on leg 2 (it crosses the router)
    check_pcap_once(lab_run, rec, [LEG1, LEG2])
    m = lab_run.mirrors
    assert m.copies([LEG1]) == {"A": 0, "B": 0}
    check_copies(m, meta, [LEG1, LEG2])
    assert meta["copies_dropped"] > 0
    # audio: channel 0 = X from leg 1's caller, channel 1 = Y from leg 2's callee
    sources = meta["audio"]["sources"]
    assert sources["caller"]["call_id"] == LEG1 and sources["callee"]["call_id"] == LEG2
    pcm = wav_channels(rec)
    start0 = audio_start(pcm[:, 0], lab_run.audio["leg1"], "leg pair channel 0 (X)")
    start1 = audio_start(pcm[:, 1], lab_run.audio["leg2"], "leg pair channel 1 (Y)")
    hosts = lab_run.lab_hosts
    check_alignment(m, (LEG1, hosts["a1"]), (LEG2, hosts["b1"]), start0, start1)


def test_concurrent_calls_with_the_same_audio_stay_apart(tmp_path: Path) -> None:
    """a1 calls a2 (site A) and b1 (site B) at once, both calls playing sipp's
    g711a.pcap, both callees echoing it: two unrelated dialogs (own Call-IDs,
    own SDP endpoints, no correlation header), so two recordings."""
    run = run_lab(tmp_path, same_audio_calls, (SITE_CALL, CROSS_CALL))
    assert all(rc == 0 for rc in run.sipp_rc.values()), sipp_failures(run)
    merged = [r.meta.get("legs") for r in run.recordings if len(r.call_ids) > 1]
    assert not merged, f"merged: {merged}"
    for cid in (SITE_CALL, CROSS_CALL):
        rec = only_recording(run, cid)
        assert rec.call_ids == [cid]
        check_pcap_once(run, rec, [cid])

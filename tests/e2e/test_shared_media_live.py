"""Live: many concurrent calls answered on ONE media endpoint (a media server,
IVR or gateway: here sipp's UAS with ``-rtp_echo`` on 10.77.0.2:6000) are
each recorded with their own RTP and nothing else.

The lab: phone A runs a sipp UAC placing overlapping calls at several calls
per second; each call offers a media port of its own
(``sipp/uac_auto_port_play.xml``, ``[auto_media_port]``) and plays sipp's
g711a.pcap from it; phone B's sipp UAS answers every call with the same SDP
endpoint and echoes the RTP back. A live ``spanrec sensor`` captures the
bridge's mirror port and streams to a live ``spanrec controller``; tcpdump
captures the same mirror port beside the sensor.

Nothing expected comes from spanrec: tshark's reading of the tcpdump capture
says, per Call-ID, which endpoints its SDP offer and answer announced, and
so which RTP packets are the call's (the two flows between its UAC port and
the shared UAS endpoint). Audio is compared with audioop's decode of the RTP
payloads in sipp's g711a.pcap.

The defect this guards against: RTP went to the newest call holding the
shared endpoint, so a call's audio landed in other calls' recordings.

The lab runs once per module (~40 s); the tests only read its results.
``Rig`` (the live controller + sensor + tcpdump on a netlab) and the mirror
analysis are shared with tests/e2e/test_pickup_live.py.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import REPO, require_tool
from tests.e2e.test_live import SIPP_G711A, reference_alaw, stop
from tests.e2e.test_two_site import Key, Packet, audio_start, tshark_packets, wav_channels
from tests.netlab import (PHONE_A_IP, PHONE_B_IP, SENSOR_IFACE, SIPP_PCAP_DIR, NetLab,
                          NetlabUnavailable, netlab_context)
from tests.s3server import free_ports

pytestmark = [pytest.mark.live, pytest.mark.slow]

SCENARIOS = Path(__file__).resolve().parent / "sipp"
SENSOR_ID = "mirror-1"
UAS_MEDIA = (PHONE_B_IP, 6000)      # the one endpoint every call's answer announces
UAC_MEDIA_BASE = 20000              # call n offers 20000 + 4 (n - 1)
CALLS = 30
RATE = 5                            # calls per second: ~35 calls at once at the peak
HOLD_MS = 7500                      # after the ACK; g711a.pcap plays for 7.05 s


# -- a live controller, sensor and tcpdump on a netlab ------------------------------

def tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


@dataclass
class Recording:
    path: Path                      # the folder holding call.json
    meta: dict
    _packets: list[Packet] | None = field(default=None, repr=False)

    @property
    def call_ids(self) -> list[str]:
        return list(self.meta.get("call_ids") or [])

    @property
    def packets(self) -> list[Packet]:
        """call.pcap as tshark reads it (UDP/IPv4)."""
        if self._packets is None:
            self._packets = tshark_packets(self.path / "call.pcap")
        return self._packets


@dataclass
class Rig:
    """A built netlab with a live controller (root namespace, uplink address),
    tcpdump and a live sensor on the mirror interface. Every process is
    stopped by PID; the sensor can be killed (-9) and started again with the
    same id and spool folder, as a real restart would."""

    lab: NetLab
    tmp: Path
    listen: str
    controller_args: tuple[str, ...] = ()
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    sensor_starts: int = 0

    @property
    def logs(self) -> Path:
        return self.tmp / "logs"

    @property
    def out(self) -> Path:
        return self.tmp / "rec"

    @property
    def mirror_pcap(self) -> Path:
        return self.tmp / "mirror.pcap"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONUNBUFFERED": "1"}

    def start_controller(self) -> None:
        self.procs["controller"] = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "controller", "--listen", self.listen,
             "--storage", str(self.out), "--state-dir", str(self.tmp / "state"), "--insecure",
             "--log-format", "text", "--finish-calls-on-stop", *self.controller_args],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=open(self.logs / "controller.log", "wb"),
            stderr=subprocess.STDOUT, env=self.env)

    def start_tcpdump(self) -> None:
        self.procs["tcpdump"] = self.lab.run_in(
            self.lab.sensor_ns, ["tcpdump", "-i", SENSOR_IFACE, "-w", str(self.mirror_pcap), "-U",
                                 "--immediate-mode", "-B", "65536", "-s", "0", "-n", "udp"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(self.logs / "tcpdump.log", "wb"))
        self.wait_for(lambda: b"listening on" in (self.logs / "tcpdump.log").read_bytes(), 20,
                      "tcpdump")

    def connects(self) -> int:
        return (self.logs / "controller.log").read_bytes().count(b"sensor connected")

    def start_sensor(self) -> float:
        """Start the sensor; returns the wall-clock time its (new) link to the
        controller was seen: its capture handle was opened before it connects."""
        before = self.connects()
        self.procs["sensor"] = self.lab.run_in(
            self.lab.sensor_ns,
            [sys.executable, "-m", "cli.main", "sensor", "--interface", SENSOR_IFACE,
             "--controller", self.listen, "--sensor-id", SENSOR_ID, "--site", "lab",
             "--spool-dir", str(self.tmp / "spool"), "--log-format", "text", "--insecure"],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=open(self.logs / "sensor.log", "ab"),
            stderr=subprocess.STDOUT, env=self.env)
        self.sensor_starts += 1
        self.wait_for(lambda: self.connects() > before, 30, "the sensor's connection")
        return time.time()

    def kill_sensor(self) -> float:
        """kill -9 the sensor (by PID); returns the wall-clock time of the kill."""
        proc = self.procs["sensor"]
        at = time.time()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        return at

    def sipp(self, name: str, ns: str, argv: list[str], workdir: Path) -> subprocess.Popen:
        self.procs[name] = self.lab.run_in(
            ns, ["sipp", *argv, "-nostdin"], cwd=workdir, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=open(self.logs / f"{name}.log", "wb"))
        return self.procs[name]

    def wait_sipp(self, names: list[str], timeout: float) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        rc = {}
        for name in names:
            try:
                rc[name] = self.procs[name].wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                rc[name] = -999
        return rc

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            for name in ("controller", "sensor"):
                proc = self.procs.get(name)
                assert proc is None or proc.poll() is None, \
                    f"{name} exited early:\n" + tail(self.logs / f"{name}.log")
            assert time.monotonic() < deadline, f"timed out waiting for {what}\n" + \
                tail(self.logs / "controller.log")
            time.sleep(0.2)

    def tcpdump_dropped(self) -> int | None:
        """tcpdump's own count of packets the kernel dropped (None: not reported)."""
        m = re.search(rb"(\d+) packets? dropped by kernel", (self.logs / "tcpdump.log").read_bytes())
        return int(m.group(1)) if m else None

    def recorded_call_ids(self) -> set[str]:
        ids: set[str] = set()
        for p in self.out.rglob("call.json") if self.out.exists() else []:
            try:
                ids.update(json.loads(p.read_text()).get("call_ids") or [])
            except (OSError, ValueError):
                pass                      # being written
        return ids

    def recordings(self) -> list[Recording]:
        return [Recording(p.parent, json.loads(p.read_text()))
                for p in sorted(self.out.rglob("call.json"))]

    def stop_all(self) -> int:
        """tcpdump (SIGINT: flushes its file), sensor, controller; the controller's rc."""
        tcpdump = self.procs.get("tcpdump")
        if tcpdump is not None and tcpdump.poll() is None:
            tcpdump.send_signal(signal.SIGINT)
            try:
                tcpdump.wait(10)
            except subprocess.TimeoutExpired:
                tcpdump.kill()
        for name, proc in self.procs.items():
            if name.startswith("sipp") and proc.poll() is None:
                proc.kill()
        if "sensor" in self.procs:
            stop(self.procs["sensor"])
        rc = 0
        if "controller" in self.procs:
            rc = stop(self.procs["controller"], timeout=60)
        return rc


@contextmanager
def live_rig(tmp: Path, controller_args: tuple[str, ...] = ()) -> Iterator[Rig]:
    """Build the lab, start controller, tcpdump and sensor; always stop them
    (by PID) and tear the lab down. Asserts the controller exited cleanly."""
    for tool in ("sipp", "tshark", "tcpdump"):
        require_tool(tool)
    if not SIPP_G711A.is_file():
        pytest.skip("sipp's g711a.pcap not installed")
    try:
        ctx = netlab_context(prefix="sprmed", uplink=True)
        lab = ctx.__enter__()
    except NetlabUnavailable as exc:
        pytest.skip(str(exc))
    (tmp / "logs").mkdir(parents=True, exist_ok=True)
    rig = None
    controller_rc = 0
    try:
        (port,) = free_ports(1)
        rig = Rig(lab, tmp, f"{lab.uplink_root_ip}:{port}", controller_args)
        rig.start_controller()
        rig.start_tcpdump()
        rig.start_sensor()
        time.sleep(0.5)
        yield rig
    finally:
        if rig is not None:
            controller_rc = rig.stop_all()
        ctx.__exit__(None, None, None)
    assert controller_rc == 0, tail(tmp / "logs" / "controller.log")


def sipp_workdir(tmp: Path, name: str, play: Path | None = None, tone: Path | None = None) -> Path:
    """A sipp working directory: ``pcap`` -> sipp's samples, ``play.pcap`` /
    ``tone.pcap`` -> what the auto-port scenarios play."""
    d = tmp / name
    d.mkdir()
    (d / "pcap").symlink_to(SIPP_PCAP_DIR)
    if play is not None:
        (d / "play.pcap").symlink_to(play)
    if tone is not None:
        (d / "tone.pcap").symlink_to(tone)
    return d


# -- tshark's view of the mirror ------------------------------------------------------

Endpoint = tuple[str, int]


@dataclass
class CallTruth:
    """One Call-ID as the mirror capture shows it."""

    call_id: str
    sip: list[Packet] = field(default_factory=list)
    uac: Endpoint | None = None     # the offer's media endpoint (phone A)
    uas: Endpoint | None = None     # the answer's media endpoint (phone B)
    rtp: list[Packet] = field(default_factory=list)   # both flows uac <-> uas

    def first_ns(self, method_or_status: str) -> int | None:
        """Capture time of the first SIP packet whose first line starts with this."""
        want = method_or_status.encode().hex()
        for p in self.sip:
            if p.key[5].startswith(want):
                return p.ts_ns
        return None

    def flows(self) -> dict[tuple[Endpoint, Endpoint], int]:
        return dict(Counter((p.src, p.dst) for p in self.rtp))


@dataclass
class MirrorTruth:
    calls: dict[str, CallTruth]
    unassigned: list[Packet]        # UDP of no call
    problems: list[str]             # the lab did not do what the test needs

    def call_of_rtp(self) -> dict[Key, str]:
        return {p.key: c.call_id for c in self.calls.values() for p in c.rtp}


def mirror_truth(packets: list[Packet]) -> MirrorTruth:
    """Per Call-ID: its SIP, the endpoints its SDP announced on each phone, and
    the RTP packets between them. Any UDP packet that is neither SIP nor
    between a call's two announced endpoints is ``unassigned``."""
    calls: dict[str, CallTruth] = {}
    problems: list[str] = []
    for p in packets:
        if not p.call_id:
            continue
        c = calls.setdefault(p.call_id, CallTruth(p.call_id))
        c.sip.append(p)
        for ep in p.sdp:
            side = "uac" if ep[0] == PHONE_A_IP else "uas" if ep[0] == PHONE_B_IP else None
            if side is None:
                problems.append(f"{p.call_id}: SDP names {ep}, on neither phone")
                continue
            old = getattr(c, side)
            if old is not None and old != ep:
                problems.append(f"{p.call_id}: {side} SDP endpoint changed {old} -> {ep}")
            setattr(c, side, ep)
    flows: dict[tuple[Endpoint, Endpoint], str] = {}
    for c in calls.values():
        if c.uac is None or c.uas is None:
            problems.append(f"{c.call_id}: offer {c.uac} answer {c.uas}")
            continue
        for pair in ((c.uac, c.uas), (c.uas, c.uac)):
            other = flows.setdefault(pair, c.call_id)
            if other != c.call_id:
                problems.append(f"{c.call_id} and {other} announce the same endpoint pair {pair}")
    unassigned = []
    for p in packets:
        if p.call_id:
            continue
        cid = flows.get((p.src, p.dst))
        if cid is None:
            unassigned.append(p)
        else:
            calls[cid].rtp.append(p)
    return MirrorTruth(calls, unassigned, problems)


def foreign_rtp(packets: list[Packet], owner: dict[Key, str], call_id: str) -> Counter[str]:
    """Non-SIP UDP packets of a call.pcap that are not this call's, by the Call-ID
    the mirror gives them; packets the mirror never showed are counted under
    "not on the mirror <src port>-><dst port>"."""
    out: Counter[str] = Counter()
    for p in packets:
        if p.call_id:
            continue
        cid = owner.get(p.key)
        if cid is None:
            out[f"not on the mirror {p.key[3]}->{p.key[4]}"] += 1
        elif cid != call_id:
            out[cid] += 1
    return out


def ep_text(ep: Endpoint) -> str:
    return f"{ep[0]}:{ep[1]}"


def call_json_flows(meta: dict) -> dict[tuple[str, str], int]:
    """call.json streams summed per (src, dst)."""
    out: Counter[tuple[str, str]] = Counter()
    for s in meta.get("streams") or []:
        out[(s["src"], s["dst"])] += int(s["packets"])
    return dict(out)


# -- the lab run -----------------------------------------------------------------------

@dataclass
class SharedRun:
    truth: MirrorTruth
    recordings: list[Recording]
    sipp_rc: dict[str, int]
    logs: Path
    seconds: float
    tcpdump_dropped: int | None = None

    def of(self, call_id: str) -> list[Recording]:
        return [r for r in self.recordings if call_id in r.call_ids]


@pytest.fixture(scope="module")
def shared_run(tmp_path_factory: pytest.TempPathFactory) -> SharedRun:
    tmp = tmp_path_factory.mktemp("shared-media")
    t0 = time.monotonic()
    with live_rig(tmp) as rig:
        uas = rig.sipp("sipp-uas", rig.lab.phone_b_ns,
                       ["-sn", "uas", "-i", PHONE_B_IP, "-p", "5060", "-mp", str(UAS_MEDIA[1]),
                        "-rtp_echo", "-m", str(CALLS), "-timeout", "90"], sipp_workdir(tmp, "uas"))
        time.sleep(0.5)                                   # the UAS listens
        rig.sipp("sipp-uac", rig.lab.phone_a_ns,
                 ["-sf", str(SCENARIOS / "uac_auto_port_play.xml"), f"{PHONE_B_IP}:5060",
                  "-i", PHONE_A_IP, "-p", "5061", "-mp", str(UAC_MEDIA_BASE),
                  "-r", str(RATE), "-m", str(CALLS), "-l", str(CALLS), "-d", str(HOLD_MS),
                  "-cid_str", "shared-%u@lab", "-timeout", "80", "-timeout_error"],
                 sipp_workdir(tmp, "uac", play=SIPP_G711A))
        sipp_rc = rig.wait_sipp(["sipp-uac", "sipp-uas"], timeout=90)
        assert uas.poll() is not None
        want = {f"shared-{n}@lab" for n in range(1, CALLS + 1)}
        if all(rc == 0 for rc in sipp_rc.values()):
            rig.wait_for(lambda: rig.recorded_call_ids() >= want, 90, "a recording of every call")
        time.sleep(1.5)                                   # nothing else is still being written
    return SharedRun(mirror_truth(tshark_packets(rig.mirror_pcap)), rig.recordings(), sipp_rc,
                     rig.logs, time.monotonic() - t0, rig.tcpdump_dropped())


# -- the tests -------------------------------------------------------------------------

def test_lab_made_concurrent_calls_on_one_shared_media_endpoint(shared_run: SharedRun) -> None:
    """Preconditions (from the mirror only): every call ran, overlapped with
    others, offered its own UAC port, was answered on the one shared UAS
    endpoint, and carried two-way RTP."""
    run = shared_run
    assert all(rc == 0 for rc in run.sipp_rc.values()), \
        f"sipp exit codes {run.sipp_rc}\n" + "\n".join(tail(run.logs / f"{n}.log", 1500)
                                                        for n in run.sipp_rc)
    assert run.tcpdump_dropped == 0, f"tcpdump: {run.tcpdump_dropped} packets dropped by kernel"
    t = run.truth
    assert not t.problems, t.problems[:10]
    assert not t.unassigned, f"{len(t.unassigned)} UDP packets of no call, e.g. {t.unassigned[:3]}"
    assert len(t.calls) == CALLS
    assert {c.uas for c in t.calls.values()} == {UAS_MEDIA}
    uac_ports = [c.uac for c in t.calls.values()]
    assert len(set(uac_ports)) == CALLS, "every call must offer its own media port"
    for c in t.calls.values():
        flows = c.flows()
        assert flows.get((c.uac, c.uas), 0) >= 230 and flows.get((c.uas, c.uac), 0) >= 230, \
            (c.call_id, flows)
    # overlapping: the most calls with media at the same moment
    spans = sorted((min(p.ts_ns for p in c.rtp), max(p.ts_ns for p in c.rtp)) for c in t.calls.values())
    peak = max(sum(1 for s, e in spans if s <= t0 <= e) for t0, _ in spans)
    assert peak >= 15, f"only {peak} calls overlapped"


def test_each_call_is_exactly_one_recording(shared_run: SharedRun) -> None:
    counts = {cid: len(shared_run.of(cid)) for cid in shared_run.truth.calls}
    wrong = {cid: n for cid, n in counts.items() if n != 1}
    assert not wrong, f"recordings per Call-ID (should be 1): {wrong}; " \
        f"all recordings: {[r.call_ids for r in shared_run.recordings]}"
    for cid in shared_run.truth.calls:
        assert shared_run.of(cid)[0].call_ids == [cid]
    assert len(shared_run.recordings) == len(shared_run.truth.calls), \
        [r.call_ids for r in shared_run.recordings]


def test_every_rtp_packet_is_in_its_own_calls_recording_only(shared_run: SharedRun) -> None:
    """Each call.pcap holds exactly its call's SIP and RTP per tshark (count and
    (src port, dst port) set), and no packet of any other call."""
    truth = shared_run.truth
    owner = truth.call_of_rtp()
    problems = []
    totals = Counter()
    for cid, call in sorted(truth.calls.items(), key=lambda kv: int(kv[0].split("-")[1].split("@")[0])):
        recs = shared_run.of(cid)
        if len(recs) != 1:
            problems.append(f"{cid}: {len(recs)} recordings")
            continue
        rec = recs[0]
        got = rec.packets
        got_rtp = [p for p in got if not p.call_id]
        own = Counter(p.key for p in got_rtp if owner.get(p.key) == cid)
        foreign = foreign_rtp(got_rtp, owner, cid)
        want_rtp = Counter(p.key for p in call.rtp)
        missing = sum((want_rtp - own).values())
        repeated = sum((own - want_rtp).values())
        sip_ok = Counter(p.key for p in got if p.call_id) == Counter(p.key for p in call.sip)
        ports_got = {(p.key[3], p.key[4]) for p in got_rtp}
        ports_want = {(p.key[3], p.key[4]) for p in call.rtp}
        totals["want"] += len(call.rtp)
        totals["own"] += sum(own.values())
        totals["foreign"] += sum(foreign.values())
        if missing or repeated or foreign or not sip_ok or ports_got != ports_want:
            problems.append(
                f"{cid}: {sum(own.values())} of its {len(call.rtp)} RTP packets (missing {missing}, "
                f"repeated {repeated}), {sum(foreign.values())} of other calls "
                f"{dict(foreign.most_common(3))}, SIP {'ok' if sip_ok else 'differs'}, "
                f"{len(ports_got - ports_want)} port pairs not its own, e.g. "
                f"{sorted(ports_got - ports_want)[:2]}, {len(ports_want - ports_got)} of its own missing")
    assert not problems, (
        f"{len(problems)} of {len(truth.calls)} calls wrong; RTP in the right recording "
        f"{totals['own']} of {totals['want']}, in a wrong one {totals['foreign']}:\n"
        + "\n".join(problems))


def test_every_rtp_packet_is_recorded_exactly_once(shared_run: SharedRun) -> None:
    """Across all recordings, each RTP packet the mirror carried appears once."""
    seen: Counter[Key] = Counter()
    for rec in shared_run.recordings:
        seen.update(p.key for p in rec.packets if not p.call_id)
    want = Counter(shared_run.truth.call_of_rtp().keys())
    missing = want - seen
    extra = seen - want
    assert not missing and not extra, \
        f"{sum(want.values())} RTP packets on the mirror: {sum(missing.values())} in no " \
        f"recording, {sum(extra.values())} extra copies or unknown"


def test_call_json_streams_are_the_calls_two_flows(shared_run: SharedRun) -> None:
    """Streams in call.json: exactly the call's two flows, with tshark's packet
    counts, nothing counted as ambiguous, no warning."""
    problems = []
    for cid, call in shared_run.truth.calls.items():
        recs = shared_run.of(cid)
        if len(recs) != 1:
            problems.append(f"{cid}: {len(recs)} recordings")
            continue
        meta = recs[0].meta
        want = {(ep_text(s), ep_text(d)): n for (s, d), n in call.flows().items()}
        got = call_json_flows(meta)
        if got != want:
            own = {k: got.get(k, 0) for k in want}
            others = {k: n for k, n in got.items() if k not in want}
            problems.append(f"{cid}: its flows {own} (tshark {want}); "
                            f"{len(others)} other flows with {sum(others.values())} packets")
        if meta.get("media_ambiguous_packets", 0) or meta.get("warnings"):
            problems.append(f"{cid}: media_ambiguous_packets {meta.get('media_ambiguous_packets')}, "
                            f"warnings {meta.get('warnings')}")
    assert not problems, f"{len(problems)} of {len(shared_run.truth.calls)} calls:\n" + \
        "\n".join(problems)


def test_each_recording_has_both_channels_of_its_own_audio(shared_run: SharedRun) -> None:
    """audio.wav: channel 0 is exactly what the caller played (g711a.pcap),
    channel 1 exactly the UAS's echo of it."""
    expected = reference_alaw(SIPP_G711A)
    problems = []
    for cid in shared_run.truth.calls:
        recs = shared_run.of(cid)
        if len(recs) != 1:
            problems.append(f"{cid}: {len(recs)} recordings")
            continue
        if not (recs[0].path / "audio.wav").is_file():
            problems.append(f"{cid}: no audio.wav")
            continue
        pcm = wav_channels(recs[0])
        for ch in (0, 1):
            try:
                audio_start(pcm[:, ch], expected, f"{cid} channel {ch}")
            except AssertionError as exc:
                problems.append(str(exc).splitlines()[0])
    assert not problems, f"{len(problems)} channels wrong:\n" + "\n".join(problems)


"""Live: calls whose setup a restarting sensor missed are still recorded.

The lab: phone A's sipp UAC places calls at a steady rate, each ~9.5 s
long; phone B's sipp UAS answers each; every call has its own media port on
both sides (``sipp/uac_auto_port_play.xml``, ``sipp/uas_auto_port_play.xml``)
and each side plays a tone, so every RTP flow is told apart by its ports. A
live ``spanrec sensor`` on the mirror port is killed with SIGKILL mid-run
and started again ~3 s later with the same sensor id and spool folder, as a
real restart would be; the calls go on and finish. tcpdump captures the
mirror port the whole time.

Nothing expected comes from spanrec: tshark's reading of the tcpdump capture
says, per Call-ID, its SIP, the media endpoints its SDP offer and answer
announced and its RTP (the two flows between them); the kill time and the
time the restarted sensor was connected again (its capture is opened before
it connects) split the run. A call whose INVITE, 200 and ACK all fell
between the kill and the restart is a *gap call*: the sensor never saw its
setup. A call set up a second or more before the kill, or after the restart
settled (its connection + 0.5 s), is a *complete call*.

Expected, for every RTP packet tcpdump captured after the restart settled:
it is in exactly one recording's call.pcap. A gap call's packets are all in
one recording marked ``signalling`` "none" (media only) or "mid-call"
(joined by its later BYE), holding audio and no other call's media; a
complete call is one recording with ``signalling`` "complete", holding its
packets and no other call's media.

The defect this guards against: the calls whose setup fell into the gap got
no recording at all; the controller received and discarded their media.
"""
from __future__ import annotations

import audioop
import re
import time
import wave
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.test_shared_media_live import (SCENARIOS, CallTruth, MirrorTruth, Recording,
                                              foreign_rtp, live_rig, mirror_truth, sipp_workdir,
                                              tail)
from tests.e2e.test_two_site import Key, tone_pcm, tshark_packets, write_rtp_pcap
from tests.netlab import PHONE_A_IP, PHONE_B_IP

pytestmark = [pytest.mark.live, pytest.mark.slow]

CALLS = 48
RATE = 4                       # calls per second: ~38 calls at once
HOLD_MS = 9500                 # UAC: from the ACK to its BYE
TONE_S = 9.0                   # each side plays this long
KILL_AFTER_S = 4.0             # after the first call
DOWN_S = 3.0                   # between the kill and the restart
SETTLE_NS = 500_000_000        # after the restarted sensor connected
COMPLETE_MARGIN_NS = 1_000_000_000   # setup this long before the kill: surely sent
UAC_MEDIA_BASE = 20000
UAS_MEDIA_BASE = 30000
MEDIA_ONLY = ("none", "mid-call")
INVITE_CSEQ = re.compile(r"\r\nCSeq:\s*\d+\s+INVITE\b", re.IGNORECASE)


@dataclass
class PickupRun:
    truth: MirrorTruth
    recordings: list[Recording]
    sipp_rc: dict[str, int]
    logs: Path
    kill_ns: int
    restart_ns: int            # the new sensor process was started
    settled_ns: int            # its link was up + SETTLE_NS
    seconds: float
    tcpdump_dropped: int | None

    def setup_ns(self, call: CallTruth) -> tuple[int, int]:
        """(first, last) capture time of the call's INVITE transaction: the
        INVITE, the responses to it and the ACK."""
        times = []
        for p in call.sip:
            text = bytes.fromhex(p.key[5]).decode("latin-1")
            if text.startswith(("INVITE ", "ACK ")) or (
                    text.startswith("SIP/2.0") and INVITE_CSEQ.search(text)):
                times.append(p.ts_ns)
        return min(times), max(times)

    def gap_calls(self) -> list[CallTruth]:
        out = []
        for c in self.truth.calls.values():
            first, last = self.setup_ns(c)
            if first > self.kill_ns and last < self.restart_ns:
                out.append(c)
        return sorted(out, key=lambda c: self.setup_ns(c))

    def complete_calls(self) -> list[CallTruth]:
        out = []
        for c in self.truth.calls.values():
            first, last = self.setup_ns(c)
            if last < self.kill_ns - COMPLETE_MARGIN_NS or first > self.settled_ns:
                out.append(c)
        return sorted(out, key=lambda c: self.setup_ns(c))

    def after_settle(self, call: CallTruth) -> list[Key]:
        return [p.key for p in call.rtp if p.ts_ns >= self.settled_ns]

    def holding(self, keys: list[Key]) -> dict[int, int]:
        """index of recording -> how many of ``keys`` its call.pcap holds."""
        want = set(keys)
        out = {}
        for i, rec in enumerate(self.recordings):
            n = sum(1 for p in rec.packets if p.key in want)
            if n:
                out[i] = n
        return out

    def describe(self, i: int) -> str:
        r = self.recordings[i]
        return f"recording {i} (call_ids {r.call_ids}, signalling {r.meta.get('signalling')!r})"


def tone_file(path: Path, f1: float, f2: float, ssrc: int) -> Path:
    pcm = tone_pcm(TONE_S, f1, 40.0, f2, -30.0)
    write_rtp_pcap(path, audioop.lin2alaw(pcm.tobytes(), 2), ssrc=ssrc)
    return path


@pytest.fixture(scope="module")
def pickup_run(tmp_path_factory: pytest.TempPathFactory) -> PickupRun:
    tmp = tmp_path_factory.mktemp("pickup")
    t0 = time.monotonic()
    (tmp / "audio").mkdir()
    caller_tone = tone_file(tmp / "audio" / "caller.pcap", 440.0, 1300.0, 0x5A000001)
    callee_tone = tone_file(tmp / "audio" / "callee.pcap", 620.0, 1700.0, 0x5A000002)
    with live_rig(tmp) as rig:
        rig.sipp("sipp-uas", rig.lab.phone_b_ns,
                 ["-sf", str(SCENARIOS / "uas_auto_port_play.xml"), "-i", PHONE_B_IP, "-p", "5060",
                  "-mp", str(UAS_MEDIA_BASE), "-m", str(CALLS), "-timeout", "90"],
                 sipp_workdir(tmp, "uas", tone=callee_tone))
        time.sleep(0.5)                                   # the UAS listens
        rig.sipp("sipp-uac", rig.lab.phone_a_ns,
                 ["-sf", str(SCENARIOS / "uac_auto_port_play.xml"), f"{PHONE_B_IP}:5060",
                  "-i", PHONE_A_IP, "-p", "5061", "-mp", str(UAC_MEDIA_BASE),
                  "-r", str(RATE), "-m", str(CALLS), "-l", str(CALLS), "-d", str(HOLD_MS),
                  "-cid_str", "pickup-%u@lab", "-timeout", "80", "-timeout_error"],
                 sipp_workdir(tmp, "uac", play=caller_tone))
        time.sleep(KILL_AFTER_S)
        kill_ns = int(rig.kill_sensor() * 1e9)
        time.sleep(DOWN_S)
        restart_ns = time.time_ns()
        settled_ns = int(rig.start_sensor() * 1e9) + SETTLE_NS
        sipp_rc = rig.wait_sipp(["sipp-uac", "sipp-uas"], timeout=90)
        # the complete calls end by BYE (+ linger); then the graceful stop writes
        # whatever is still open (media-only calls among them)
        if all(rc == 0 for rc in sipp_rc.values()):
            last = f"pickup-{CALLS}@lab"                 # set up after the restart
            rig.wait_for(lambda: last in rig.recorded_call_ids(), 90, f"a recording of {last}")
        time.sleep(3.0)
    return PickupRun(mirror_truth(tshark_packets(rig.mirror_pcap)), rig.recordings(), sipp_rc,
                     rig.logs, kill_ns, restart_ns, settled_ns, time.monotonic() - t0,
                     rig.tcpdump_dropped())


# -- the tests -------------------------------------------------------------------------

def test_lab_killed_the_sensor_mid_call_and_calls_went_on(pickup_run: PickupRun) -> None:
    """Preconditions (from the mirror and the clock only): every call ran with
    its own endpoints and two-way RTP; some calls were set up while the sensor
    was down, others before and after; gap calls have media after the restart."""
    run = pickup_run
    assert all(rc == 0 for rc in run.sipp_rc.values()), \
        f"sipp exit codes {run.sipp_rc}\n" + "\n".join(tail(run.logs / f"{n}.log", 1500)
                                                        for n in run.sipp_rc)
    assert run.tcpdump_dropped == 0, f"tcpdump: {run.tcpdump_dropped} packets dropped by kernel"
    t = run.truth
    assert not t.problems, t.problems[:10]
    assert not t.unassigned, f"{len(t.unassigned)} UDP packets of no call, e.g. {t.unassigned[:3]}"
    assert len(t.calls) == CALLS
    assert len({c.uac for c in t.calls.values()}) == CALLS
    assert len({c.uas for c in t.calls.values()}) == CALLS
    for c in t.calls.values():
        flows = c.flows()
        assert flows.get((c.uac, c.uas), 0) >= 400 and flows.get((c.uas, c.uac), 0) >= 400, \
            (c.call_id, flows)
    gap = run.gap_calls()
    before = [c for c in run.complete_calls() if run.setup_ns(c)[1] < run.kill_ns]
    after = [c for c in run.complete_calls() if run.setup_ns(c)[0] > run.settled_ns]
    down_s = (run.settled_ns - run.kill_ns) / 1e9
    assert len(gap) >= 8 and len(before) >= 5 and len(after) >= 5, \
        f"sensor down {down_s:.1f} s: {len(gap)} gap calls, {len(before)} set up before, " \
        f"{len(after)} after"
    for c in gap:
        assert len(run.after_settle(c)) >= 200, (c.call_id, len(run.after_settle(c)))


def test_every_rtp_packet_after_the_restart_is_in_exactly_one_recording(pickup_run: PickupRun) -> None:
    run = pickup_run
    seen: Counter[Key] = Counter()
    for rec in run.recordings:
        seen.update(p.key for p in rec.packets if not p.call_id)
    per_call = {}
    total = missing = repeated = 0
    for cid, c in run.truth.calls.items():
        keys = run.after_settle(c)
        m = sum(1 for k in keys if seen[k] == 0)
        r = sum(1 for k in keys if seen[k] > 1)
        total += len(keys)
        missing += m
        repeated += r
        if m or r:
            per_call[cid] = (len(keys), m, r)
    gap = {c.call_id for c in run.gap_calls()}
    assert not per_call, (
        f"{total} RTP packets after the restart settled: {missing} in no recording, {repeated} in "
        f"more than one; per call (packets, missing, repeated), * = set up in the gap:\n"
        + "\n".join(f"{'*' if cid in gap else ' '} {cid}: {v}" for cid, v in sorted(per_call.items())))


def test_calls_set_up_in_the_gap_are_media_only_recordings_of_their_own(pickup_run: PickupRun) -> None:
    run = pickup_run
    owner = run.truth.call_of_rtp()
    problems = []
    gap = run.gap_calls()
    for c in gap:
        keys = run.after_settle(c)
        holders = run.holding(keys)
        if len(holders) != 1:
            problems.append(f"{c.call_id}: its {len(keys)} RTP packets after the restart are in "
                            f"{len(holders)} recordings {holders}")
            continue
        (i, n), = holders.items()
        rec = run.recordings[i]
        foreign = foreign_rtp(rec.packets, owner, c.call_id)
        bad = []
        if n != len(keys):
            bad.append(f"holds {n} of its {len(keys)} RTP packets after the restart")
        if rec.meta.get("signalling") not in MEDIA_ONLY:
            bad.append(f"signalling {rec.meta.get('signalling')!r}")
        if foreign:
            bad.append(f"{sum(foreign.values())} RTP packets of other calls {dict(foreign.most_common(3))}")
        others = [cid for cid in rec.call_ids if cid != c.call_id and cid in run.truth.calls]
        if others:
            bad.append(f"call_ids of other calls {others}")
        if not (rec.path / "audio.wav").is_file():
            bad.append("no audio.wav")
        else:
            with wave.open(str(rec.path / "audio.wav")) as w:
                pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, w.getnchannels())
            silent = [ch for ch in range(pcm.shape[1]) if not np.count_nonzero(pcm[:, ch])]
            if pcm.shape[1] != 2 or silent:
                bad.append(f"audio: {pcm.shape[1]} channels, silent {silent}")
        if bad:
            problems.append(f"{c.call_id} -> {run.describe(i)}: " + "; ".join(bad))
    assert not problems, f"{len(problems)} of {len(gap)} calls set up while the sensor was down:\n" \
        + "\n".join(problems)


def test_calls_with_complete_signalling_are_unaffected(pickup_run: PickupRun) -> None:
    run = pickup_run
    owner = run.truth.call_of_rtp()
    problems = []
    complete = run.complete_calls()
    for c in complete:
        recs = [r for r in run.recordings if c.call_id in r.call_ids]
        if len(recs) != 1:
            problems.append(f"{c.call_id}: {len(recs)} recordings")
            continue
        rec = recs[0]
        keys = set(run.after_settle(c))
        got = {p.key for p in rec.packets if not p.call_id}
        foreign = foreign_rtp(rec.packets, owner, c.call_id)
        bad = []
        if rec.call_ids != [c.call_id]:
            bad.append(f"call_ids {rec.call_ids}")
        if rec.meta.get("signalling") != "complete":
            bad.append(f"signalling {rec.meta.get('signalling')!r}")
        if keys - got:
            bad.append(f"missing {len(keys - got)} of its {len(keys)} RTP packets after the restart")
        if foreign:
            bad.append(f"{sum(foreign.values())} RTP packets of other calls {dict(foreign.most_common(3))}")
        if rec.meta.get("status") != "answered" or rec.meta.get("end_reason") != "bye":
            bad.append(f"status {rec.meta.get('status')} end_reason {rec.meta.get('end_reason')}")
        if bad:
            problems.append(f"{c.call_id}: " + "; ".join(bad))
    assert not problems, f"{len(problems)} of {len(complete)} complete calls:\n" + "\n".join(problems)

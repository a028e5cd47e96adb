"""`spanrec record --shards N` (issue #12) gives what one controller process
gives: the same recordings (folders, call.json, call.pcap and audio byte for
byte), the same printed list, exit status and clock warnings, with the calls
split over N real shard processes by the sensors (sensor/route.py) and kept by
their owners (controller/ingest/shard.py).  One documented exception: parts one process joins only by relayed media or
SDP origin (legs so related, streams no SDP names) are recorded apart when they
land on different shards — then their recordings together hold exactly the
frames of the one-process recording."""
from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from protocols.pcapfile import read_frames
from tests.conftest import CALL_CAPTURES, REPO, capture, require_tool
from tests.e2e.conftest import RecordRun, spanrec_record

SAMPLE = REPO / "samples" / "sample-call.pcap"

#: call.json keys a sharded run may write differently: none today; the shard
#: that wrote a recording, should call.json ever name it.  Sensor names are the
#: same (replay-<i>) in every run, and call.json holds capture times only.
IGNORED_KEYS = frozenset({"shard"})

SHARDS = (1, 4)          # the issue: the same recordings through 1 and through 4 shards


def _recordings(out: Path) -> dict[str, dict[str, bytes]]:
    """Recording folder (relative to --out) -> {file name: bytes}."""
    found: dict[str, dict[str, bytes]] = {}
    for cj in sorted(out.rglob("call.json")):
        folder = cj.parent
        found[str(folder.relative_to(out))] = {p.name: p.read_bytes()
                                               for p in sorted(folder.iterdir()) if p.is_file()}
    return found


def _call_json(data: bytes) -> dict:
    return {k: v for k, v in json.loads(data).items() if k not in IGNORED_KEYS}


def _printed(run: RecordRun) -> list[dict]:
    """The `-o json` list, with the --out folder (which differs per run) left out."""
    calls = json.loads(run.stdout)
    for c in calls:
        c["location"] = c.get("location", "").replace(run.out.resolve().as_uri(), "OUT")
        for k in IGNORED_KEYS:
            c.pop(k, None)
    return calls


def _warnings(run: RecordRun) -> list[str]:
    return [ln for ln in run.stderr.splitlines()
            if "capture clock stepped" in ln or "media without signalling" in ln
            or "signalling not recorded" in ln]


def _frames(data: bytes, tmp: Path) -> Counter:
    """The frames (capture time, bytes) of a pcap file's contents, as a multiset."""
    tmp.write_bytes(data)
    return Counter((ts, bytes(d)) for ts, _lt, d in read_frames(tmp))


#: how one process joins legs that a sharded controller can only join when they land
#: on one shard (docs/DECISIONS.md "Sharding"): relayed media, SDP origin
LOOSE = frozenset({"media", "sdp-origin"})


def _sdp_endpoints(pcap: bytes, tmp: Path) -> set[str]:
    """Every "addr:port" an SDP in the pcap names (and its RTCP port), by tshark."""
    require_tool("tshark")
    tmp.write_bytes(pcap)
    out = subprocess.run(["tshark", "-r", str(tmp), "-Y", "sdp", "-T", "fields", "-E", "occurrence=a",
                          "-e", "sdp.connection_info.address", "-e", "sdp.media.port"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    found: set[str] = set()
    for line in out.splitlines():
        addrs, _, ports = line.partition("\t")
        addr = addrs.split(",")[0]
        for port in filter(None, ports.split(",")):
            found |= {f"{addr}:{port}", f"{addr}:{int(port) + 1}"}
    return found


def _loosely_joined(files: dict[str, bytes], tmp: Path) -> bool:
    """Did one process join parts of this recording only by relayed media or SDP
    origin: a leg so related, or a stream neither of whose ends an SDP names?"""
    doc = json.loads(files["call.json"])
    if any((leg.get("relation") or {}).get("by") in LOOSE for leg in doc.get("legs") or []):
        return True
    named = _sdp_endpoints(files["call.pcap"], tmp)
    return any(st["src"] not in named and st["dst"] not in named for st in doc.get("streams") or [])


def _check_split(where: str, folder: str, want: dict, got: dict, unmatched: set[str],
                 tmp: Path) -> set[str]:
    """A recording of loosely joined parts, recorded apart by the shards: the
    recordings holding its frames hold exactly them (nothing lost or doubled), and
    each names only its Call-IDs (a media-only part none)."""
    frames = _frames(want[folder]["call.pcap"], tmp)
    cids = set(json.loads(want[folder]["call.json"]).get("call_ids") or [])
    parts = [f for f in unmatched if set(_frames(got[f]["call.pcap"], tmp)) <= set(frames)]
    assert len(parts) > 1, f"{where}: {folder} differs and is not split into parts"
    union: Counter = Counter()
    for f in parts:
        assert set(json.loads(got[f]["call.json"]).get("call_ids") or []) <= cids, f"{where}: {f}"
        union += _frames(got[f]["call.pcap"], tmp)
    assert union == frames, f"{where}: {folder}: frames differ"
    return set(parts)


def _compare(files: list[Path], tmp_path: Path) -> None:
    runs = {n: spanrec_record(files, tmp_path / f"shards-{n}", "--shards", str(n), timeout=600)
            for n in SHARDS}
    base = runs[1]
    assert base.calls, f"{[f.name for f in files]}: no recording at all"
    want = _recordings(base.out)
    for n in SHARDS[1:]:
        run = runs[n]
        where = f"--shards {n} on {', '.join(f.name for f in files)}"
        assert run.returncode == base.returncode, f"{where}: exit status\n{run.stderr[-2000:]}"
        got = _recordings(run.out)
        same = {f for f in want if f in got and got[f] == want[f]}
        unmatched = set(got) - same
        split: set[str] = set()
        for folder in sorted(set(want) - same):
            files_got = got.get(folder)
            if files_got is not None and _call_json(files_got["call.json"]) == \
                    _call_json(want[folder]["call.json"]) and all(
                    files_got.get(k) == v for k, v in want[folder].items() if k != "call.json"):
                continue              # equal but for the ignored keys
            if _loosely_joined(want[folder], tmp_path / "sdp.pcap"):
                unmatched -= _check_split(where, folder, want, got, unmatched, tmp_path / "frames.pcap")
                split.add(folder)
        for folder, files_want in want.items():
            if folder in split:
                continue
            assert folder in got, f"{where}: {folder} missing"
            files_got = got[folder]
            assert sorted(files_got) == sorted(files_want), f"{where}: {folder}: files differ"
            assert _call_json(files_got["call.json"]) == _call_json(files_want["call.json"]), \
                f"{where}: {folder}/call.json differs"
            for name, data in files_want.items():
                if name != "call.json":
                    assert files_got[name] == data, f"{where}: {folder}/{name} differs"
        assert not (unmatched - set(want)), f"{where}: recordings no single process wrote: {unmatched}"
        if not split:     # a part recorded apart is listed (and, media only, warned about) too
            assert _printed(run) == _printed(base), f"{where}: printed list differs"
            assert _warnings(run) == _warnings(base), f"{where}: warnings differ"


def test_sample_call_same_with_shards(tmp_path: Path) -> None:
    _compare([SAMPLE], tmp_path)


@pytest.mark.parametrize("name", CALL_CAPTURES)
def test_shared_capture_same_with_shards(name: str, tmp_path: Path) -> None:
    _compare([capture(name)], tmp_path)


def test_bench_stats_sum_the_shards(tmp_path: Path) -> None:
    """SPANREC_BENCH_STATS of a sharded run: the controller figures are the
    shards' (CPU summed over the processes), the counts those of one process."""
    stats = {}
    for n in (1, 2):
        path = tmp_path / f"stats-{n}.json"
        run = spanrec_record([SAMPLE], tmp_path / f"out-{n}", "--shards", str(n),
                             env={"SPANREC_BENCH_STATS": str(path)})
        assert run.returncode == 0, run.stderr
        stats[n] = json.loads(path.read_text())
    assert stats[2]["recordings"] == stats[1]["recordings"] == len(run.calls)
    assert stats[2]["packets_in"] == stats[1]["packets_in"]
    assert stats[2]["shards"] == 2
    for key in ("controller_cpu_s", "controller_peak_rss_kib", "sensors_cpu_s"):
        assert stats[2][key] > 0, key


_TAKE_PORT = """
import socket, sys
if "controller" in sys.argv and "shard-1" in sys.argv and "--listen" in sys.argv:
    _host, _, _port = sys.argv[sys.argv.index("--listen") + 1].rpartition(":")
    _taken = socket.socket()
    _taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    _taken.bind((_host, int(_port)))
    _taken.listen()
"""


def test_shard_whose_port_is_taken_is_one_line(tmp_path: Path) -> None:
    """A shard that cannot listen (its port taken by another process just
    before it binds: sitecustomize in that shard only): one line naming the
    shard and why, exit 1, no hang, no process left."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_TAKE_PORT)
    run = spanrec_record([SAMPLE], tmp_path / "out", "--shards", "2", timeout=120,
                         env={"PYTHONPATH": f"{site}:{REPO}"})
    assert run.returncode == 1, run.stderr
    lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("spanrec: error: "), run.stderr
    assert "shard-1" in lines[0] and "cannot listen" in lines[0], lines[0]
    assert not _processes_with(str(site))      # every shard and sensor stopped


def _processes_with(marker: str) -> set[int]:
    """PIDs of running processes whose environment holds `marker` (this test's)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    found.add(int(entry.name))
            except OSError:
                continue
    return found

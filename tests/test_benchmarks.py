"""Benchmarks are code: each benchmark script runs once on a tiny input, so a
changed flag, interface or default cannot silently break one.  Nothing here
judges speed (the figures are the scripts' output, never asserted); what is
checked is that each script runs to the end and reports what it promises:
spanrec beside tcpdump on the same capture, every generated call recorded.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import CAPTURES, REPO, require_tool

PY = sys.executable


def _run(argv: list[str], timeout: int = 240) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_bench_records_every_call_beside_tcpdump() -> None:
    require_tool("tcpdump")
    out = _run([PY, "scripts/bench", "--calls", "3", "--duration", "1", "--json", "--protect", "1"])
    fig = json.loads(out.stdout)
    rec = fig["spanrec_record"]
    # --protect: the same record run with encryption and signing, every call recorded
    prot = fig["protection"]
    assert prot["pairs"] == 1 and prot["recordings"] == [3]
    assert len(prot["controller_cpu_s_protected"]) == 1 and prot["cost_fraction_best"] is not None
    # the protected run measured its own encryption and signing CPU
    assert prot["protection_cpu_s"][0] > 0 and 0 < prot["protection_share_of_controller_cpu"][0] < 1
    assert rec["exit_status"] == 0 and rec["recordings"] == 3 and rec["peak_active_calls"] == 3
    assert rec["controller_packets_per_cpu_s"] > 0 and rec["controller_mib_per_concurrent_call"] > 0
    # start-up CPU reported apart (imports alone take a measurable part of a second)
    assert 0 < rec["controller_startup_cpu_s"] < rec["controller_cpu_s"]
    assert fig["tcpdump"]["packets_per_s"] > 0          # the reference, on the same file


def test_bench_shards_1_and_2_rows() -> None:
    """`scripts/bench --shards 1,2`: a row per count on the same capture (issue #12)."""
    require_tool("tcpdump")
    out = _run([PY, "scripts/bench", "--calls", "3", "--duration", "1", "--shards", "1,2", "--cluster", "--json"],
               timeout=300)
    fig = json.loads(out.stdout)
    rows = fig["shards"]
    assert [r["shards"] for r in rows] == [1, 2], rows
    for r in rows:
        assert r["exit_status"] == 0 and r["recordings"] == 3, r
        assert r["packets_per_s"] > 0 and r["controller_cpu_s"] > 0, r
        assert r["controller_packets_per_cpu_s"] > 0 and r["controller_peak_rss_mib"] > 0, r
        assert r["controller_mib_per_concurrent_call"] > 0 and r["throughput_vs_1_shard"] > 0, r
    assert [s["shard"] for s in rows[1]["per_shard"]] == ["shard-0", "shard-1"]
    assert sum(s["packets"] for s in rows[1]["per_shard"]) >= fig["packets"]
    assert fig["spanrec_record"] == rows[0]           # the old key: the first count's row
    cluster = fig["cluster_shards"]                   # --cluster: the plain-text run over 1 and 2 shards
    assert [c["shards"] for c in cluster] == [1, 2], cluster
    assert all(c["recordings"] == 3 and c["controller_cpu_s"] > 0 and c["packets_per_s"] > 0 for c in cluster)


def test_bench_failover_tiny() -> None:
    """`scripts/bench-failover`: shard-1 killed mid-replay comes back, its calls
    flow again, and every call is recorded once and whole (issue #12)."""
    out = _run([PY, "scripts/bench-failover", "--calls", "6", "--concurrent", "6", "--duration", "3",
                "--kill-at", "1.5", "--json"], timeout=300)
    [r] = json.loads(out.stdout)
    assert r["killed"] and r["sensor_exit_status"] == 0 and r["supervisor_exit_status"] == 0, r
    assert r["kill_to_serving_s"] > 0 and r["kill_to_flowing_s"] is not None, r
    assert r["recordings"] == 6 and r["calls_recorded_once"] == 6 and r["all_once_and_whole"], r


def test_bench_cluster_mode_runs() -> None:
    require_tool("tcpdump")
    out = _run([PY, "scripts/bench", "--calls", "2", "--duration", "1", "--json", "--cluster"], timeout=300)
    fig = json.loads(out.stdout)
    assert fig["spanrec_record"]["recordings"] == 2
    assert any("cluster" in k for k in fig), sorted(fig)
    # call end -> stored, from the controllers' histogram: one entry per call
    lat = fig["cluster_plain"]["end_to_stored_s"]
    assert lat["count"] == 2 and 0 < lat["p50"] <= lat["p99"], lat


def test_bench_dedup_tiny() -> None:
    out = _run([PY, "scripts/bench-dedup", "--rate", "2000", "--seconds", "0.5",
                "--repeat-seconds", "1"])
    assert "decode + dedup" in out.stdout and "table entries" in out.stdout


def test_bench_spool_tiny() -> None:
    out = _run([PY, "-m", "tests.link.bench_spool", "--batches", "20"])
    assert "acked 20" in out.stdout


def test_bench_capture_classifier_offline() -> None:
    if not CAPTURES.is_dir():
        pytest.skip(f"public captures not available at {CAPTURES}")
    out = _run([PY, "scripts/bench-capture", "--classifier"])
    assert out.stdout.count("µs/packet") >= 3


@pytest.mark.live
def test_bench_capture_live_tiny() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    require_tool("tcpdump")
    out = _run([PY, "scripts/bench-capture", "--seconds", "0.5", "--rates", "2000",
                "--tools", "tcpdump,live,classify,sensor", "--stall-ms", "0,100", "--stalls", "1"],
               timeout=300)
    rows = {ln.split()[0]: ln.split() for ln in out.stdout.splitlines()
            if ln.split() and ln.split()[0] in ("tcpdump", "live", "classify", "sensor")}
    for tool in ("tcpdump", "live", "classify", "sensor"):
        assert tool in rows, out.stdout
        # each tool really captured (a sensor that cannot connect or filters the
        # traffic out reports 0: the rot the issue found)
        assert int(rows[tool][4]) > 0, out.stdout
    stalled = [ln.split() for ln in out.stdout.splitlines() if ln.startswith("sensor+1x100ms")]
    assert stalled and int(stalled[0][4]) > 0, out.stdout      # the paused sensor's row


def test_bench_shards_tiny() -> None:
    out = _run([PY, "scripts/bench-shards", "--calls", "20", "--duration", "1", "--concurrent", "10",
                "--shards", "1,4", "--json"])
    rows = json.loads(out.stdout)
    assert [r["shards"] for r in rows] == [1, 4]
    assert all(r["calls"] == 20 and r["split_calls"] == 0 for r in rows), rows
    assert rows[1]["route_us_per_packet"] > 0 and rows[0]["bytes_sent_per_byte"] == 1.0


def test_bench_wan_tiny() -> None:
    """`scripts/bench-wan`: link bytes per forwarded byte, none, gzip and zstd, with and
    without TLS."""
    out = _run([PY, "scripts/bench-wan", "--calls", "2", "--duration", "1", "--json"])
    fig = json.loads(out.stdout)
    runs = {(r["compression"], r["tls"]): r for r in fig["runs"]}
    assert set(runs) == {(c, t) for c in ("none", "gzip", "zstd") for t in (False, True)}
    assert fig["forwarded_bytes"] > 0
    # every frame crossed the link: uncompressed, its bytes (less the 8-byte times) did
    assert runs[("none", False)]["bytes_per_forwarded_byte"] >= 0.9
    for c in ("gzip", "zstd"):
        assert runs[(c, False)]["link_bytes"] < runs[("none", False)]["link_bytes"]
    assert all(r["controller_cpu_s"] > 0 for r in runs.values())


def test_bench_engine_tiny() -> None:
    """`scripts/bench-engine`: one shard's CPU without gRPC; every generated call
    finalised, and the three parts reported for each run."""
    out = _run([PY, "scripts/bench-engine", "--calls", "3", "--duration", "1", "--runs", "2", "--json"])
    fig = json.loads(out.stdout)
    assert fig["calls"] == 3 and len(fig["runs"]) == 2
    assert all(r["calls"] == 3 and r["packets"] == fig["packets"] > 0 for r in fig["runs"])
    assert fig["best_packets_per_cpu_s"] > 0
    prot = json.loads(_run([PY, "scripts/bench-engine", "--calls", "3", "--duration", "1", "--runs", "1",
                            "--protect", "--json"]).stdout)
    assert prot["protected"] is True and prot["runs"][0]["calls"] == 3


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_bench_index_tiny(backend: str) -> None:
    """`scripts/bench-index`: 300 generated recordings indexed (one by one, in bulk,
    one by one on the full index), every query searched twice, the database's
    size, the plans and one tried index; the figures are the script's."""
    if backend == "postgresql":
        from tests.pgserver import find_pg_bin
        if find_pg_bin() is None:
            pytest.skip("PostgreSQL not installed (apt postgresql)")
    out = _run([PY, "scripts/bench-index", "--recordings", "300", "--runs", "2", "--json",
                "--backends", backend, "--one-by-one", "100", "--tail-one-by-one", "50", "--batch", "64",
                "--explain", "--try-index", "CREATE INDEX ix_try_dtmf ON calls (has_dtmf, started_us)"])
    fig = json.loads(out.stdout)
    assert fig["recordings"] == 300 and fig["goal_p95_ms"] == 200
    r = fig["backends"][backend]
    assert r["recordings"] == 300
    ix = r["indexing"]
    assert [ix[k]["recordings"] for k in ("one_by_one", "bulk", "one_by_one_full")] == [100, 150, 50]
    assert {"per_s", "p50_ms", "p99_ms"} <= set(ix["one_by_one"]) and "insert_only_per_s" in ix["bulk"]
    assert {"bytes", "bytes_per_recording", "parts"} <= set(r["size"])
    assert set(r["queries"]) == {
        "recent calls (newest 50)", "number, either party, substring", "number, either party, exact",
        "from-number prefix", "one day", "one day + status", "Call-ID exact", "MOS < 3, last 7 days",
        "has DTMF"}
    for q in r["queries"].values():
        assert q["runs"] == 2
        assert {"p50_ms", "p95_ms", "max_ms", "page_p50_ms", "page_p95_ms", "matches_median",
                "meets_goal"} <= set(q)
    assert set(r["plans"]) == set(r["queries"]) and all(p["page"] and p["count"] for p in r["plans"].values())
    assert set(r["tried"]["queries"]) == set(r["queries"]) and len(r["tried"]["statements"]) == 1


def test_bench_web_times_each_request() -> None:
    """`scripts/bench-web` (issue #14): page, audio start, seek, waveform, ladder per call."""
    out = _run([PY, "scripts/bench-web", "--durations", "1,2", "--runs", "1", "--json"])
    fig = json.loads(out.stdout)
    assert len(fig["calls"]) == 2
    for row in fig["calls"]:
        for k in ("page", "audio_start", "seek", "peaks", "ladder"):
            assert row[f"{k}_ms_best"] > 0

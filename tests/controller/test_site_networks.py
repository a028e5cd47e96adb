"""Site address ranges (issue #11): a sensor's packets neither from nor to its
site's ranges are dropped and counted (controller/ingest/sitefilter.py, Recorder)."""
from __future__ import annotations

import ipaddress
import json
import logging
import time
from pathlib import Path

import pytest

from controller.core import Recorder
from controller.ingest.sitefilter import SiteNetworks, SiteNetworksError
from protocols.layers import decode
from storage.local import LocalStore
from tests.controller._sipbuild import S, audio_line, rtp, sdp, sip, udp_frame


def _ip(a: str) -> bytes:
    return ipaddress.ip_address(a).packed


NETS = SiteNetworks.from_dict({"a": ["10.1.0.0/16", "192.168.7.0/24", "2001:db8:a::/48"],
                               "b": "172.16.0.0/12, fd00::/8"})


@pytest.mark.parametrize("src,dst,kept", [
    ("10.1.0.1", "10.2.0.1", True),         # from the site
    ("10.2.0.1", "10.1.255.255", True),     # to the site
    ("10.9.0.1", "10.8.0.1", False),        # neither
    ("10.0.255.255", "10.2.0.0", False),    # just outside the /16 on both sides
    ("192.168.7.200", "8.8.8.8", True),
    ("192.168.8.1", "8.8.8.8", False),
    ("2001:db8:a:ffff::1", "2001:db8:b::1", True),
    ("2001:db8:b::1", "2001:db8:a::5", True),
    ("2001:db8:b::1", "2001:db8:c::1", False),
    ("::ffff:10.1.0.1", "2001:db8:c::1", False),   # an IPv6 address is not an IPv4 one
])
def test_site_a_ranges(src: str, dst: str, kept: bool) -> None:
    r = NETS.for_site("a")
    assert r is not None and r.keeps(_ip(src), _ip(dst)) is kept
    assert r.keeps(_ip(src), _ip(dst)) is kept          # cached answer is the same


def test_string_list_and_other_sites() -> None:
    b = NETS.for_site("b")
    assert b.keeps(_ip("172.31.255.1"), _ip("1.1.1.1")) and not b.keeps(_ip("172.32.0.1"), _ip("1.1.1.1"))
    assert b.keeps(_ip("fd12::1"), _ip("2001::1"))
    assert NETS.for_site("c") is None and NETS.for_site("") is None    # no ranges: all kept


def test_innermost_addresses_of_a_tunnel() -> None:
    """The decoder gives the innermost IP packet's addresses: GRE to the site
    carrying a forged inner packet is judged by the inner one."""
    import struct
    inner = udp_frame("10.9.0.1", 5060, "10.8.0.1", 5060, b"INVITE x")[14:]
    gre = struct.pack("!HH", 0, 0x0800) + inner
    outer = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(gre), 1, 0, 64, 47, 0,
                        _ip("10.1.0.1"), _ip("10.1.0.2"))
    d = decode(1, b"\x00" * 12 + b"\x08\x00" + outer + gre)
    assert (d.src, d.dst) == (_ip("10.9.0.1"), _ip("10.8.0.1"))
    assert not NETS.for_site("a").keeps(d.src, d.dst)


@pytest.mark.parametrize("table,msg", [
    ({"a": ["10.1.0.0/33"]}, "site 'a'"),
    ({"a": ["10.1.0.1/16"]}, "host bits"),
    ({"a": ["not-a-net"]}, "not-a-net"),
    ({"a": []}, "non-empty"),
    ({"a": [16]}, "not a CIDR"),
])
def test_malformed_entries(table: dict, msg: str) -> None:
    with pytest.raises(SiteNetworksError, match=msg) as exc:
        SiteNetworks.from_dict(table)
    assert "\n" not in str(exc.value)


def test_cost_per_packet() -> None:
    """Cached lookups of a kept packet and a dropped one (figure printed with -s)."""
    r = NETS.for_site("a")
    kept, dropped = (_ip("10.1.0.1"), _ip("10.2.0.1")), (_ip("10.9.0.1"), _ip("10.8.0.1"))
    n = 200_000
    for pair in (kept, dropped):
        t0 = time.perf_counter()
        for _ in range(n):
            r.keeps(*pair)
        ns = (time.perf_counter() - t0) / n * 1e9
        print(f"keeps {pair[0].hex()}: {ns:.0f} ns")
        assert ns < 5_000


# -- Recorder ------------------------------------------------------------------

def _call(call_id: str, a: str, b: str, t0: int) -> list[tuple[int, bytes]]:
    tag = call_id[:4]
    frames = [
        (t0, udp_frame(a, 5060, b, 5060, sip(f"INVITE sip:bob@{b} SIP/2.0", call_id, "1 INVITE",
                                             tag, None, a, sdp(a, [audio_line(20000)])))),
        (t0 + S // 10, udp_frame(b, 5060, a, 5060, sip("SIP/2.0 200 OK", call_id, "1 INVITE", tag, "bt",
                                                       a, sdp(b, [audio_line(30000)])))),
        (t0 + S // 5, udp_frame(a, 5060, b, 5060, sip(f"ACK sip:bob@{b} SIP/2.0", call_id, "1 ACK",
                                                      tag, "bt", a))),
    ]
    for i in range(50):
        ts = t0 + S // 5 + (i + 1) * 20_000_000
        frames.append((ts, udp_frame(a, 20000, b, 30000, rtp(i, i * 160, 0x1111))))
        frames.append((ts + 1000, udp_frame(b, 30000, a, 20000, rtp(i, i * 160, 0x2222))))
    end = t0 + 2 * S
    frames.append((end, udp_frame(a, 5060, b, 5060, sip(f"BYE sip:bob@{b} SIP/2.0", call_id, "2 BYE",
                                                       tag, "bt", a))))
    frames.append((end + S // 10, udp_frame(b, 5060, a, 5060, sip("SIP/2.0 200 OK", call_id, "2 BYE",
                                                                 tag, "bt", a))))
    return frames


def test_recorder_drops_a_forged_call(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rec = Recorder(LocalStore(tmp_path / "rec", fsync=False),
                   site_networks=SiteNetworks.from_dict({"A": ["10.1.0.0/16"]}))
    t0 = 1_700_000_000 * S
    good = _call("good-call@a", "10.1.0.1", "10.2.0.1", t0)
    forged = _call("forged-call@x", "10.9.0.1", "10.8.0.1", t0 + S // 2)
    frames = sorted(good + forged)
    rec.sensor_hello("sa", session="s1", site="A", mode="replay")
    rec.sensor_hello("other", session="s2", site="B", mode="replay")   # no ranges for B
    with caplog.at_level(logging.WARNING, logger="spanrec.controller"):
        for seq, i in enumerate(range(0, len(frames), 16), 1):
            chunk = frames[i:i + 16]
            rec.ingest("sa", seq, 1, [f[0] for f in chunk], [len(f[1]) for f in chunk],
                       b"".join(f[1] for f in chunk))
        # the same forged call from a sensor of a site without ranges is kept
        rec.ingest("other", 1, 1, [f[0] for f in forged], [len(f[1]) for f in forged],
                   b"".join(f[1] for f in forged))
        rec.end_of_capture("sa", {}, "")
        rec.end_of_capture("other", {}, "")
        rec.writer.join()
    docs = [json.loads(p.read_text()) for p in sorted((tmp_path / "rec").rglob("call.json"))]
    by_sensor = {tuple(sorted(d["sensors"])) if isinstance(d["sensors"], list) else
                 tuple(sorted(d["sensors"])): d for d in docs}
    assert len(docs) == 2, [d.get("call_ids") for d in docs]
    assert set(by_sensor) == {("sa",), ("other",)}
    assert "good-call@a" in json.dumps(by_sensor[("sa",)])
    assert "forged-call@x" not in json.dumps(by_sensor[("sa",)])
    assert "forged-call@x" in json.dumps(by_sensor[("other",)])
    status = {s["sensor_id"]: s for s in rec.status()["sensors"]}
    assert status["sa"]["outside_site"] == len(forged)
    assert status["other"]["outside_site"] == 0
    assert rec.status()["outside_site"] == len(forged)
    warnings = [r for r in caplog.records if "outside the sensor's site" in r.getMessage()]
    assert len(warnings) == 1                      # rate-limited: one a minute per sensor
    assert warnings[0].sensor_id == "sa" and warnings[0].site == "A"
    rec.shutdown()


# -- settings ------------------------------------------------------------------

def test_settings_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cli.settings import ControllerSettings, load
    monkeypatch.delenv("SPANREC_SITE_NETWORKS", raising=False)
    assert load(ControllerSettings, "controller", None, {}).site_ranges() is None   # off
    toml = tmp_path / "nets.toml"
    toml.write_text('[site_networks]\nA = ["10.1.0.0/16", "2001:db8:a::/48"]\n')
    js = tmp_path / "nets.json"
    js.write_text('{"A": ["10.1.0.0/16"]}')
    conf = tmp_path / "spanrec.toml"
    conf.write_text('[controller.site_networks]\nA = ["10.1.0.0/16"]\n')
    for s in (load(ControllerSettings, "controller", None, {"site_networks": str(toml)}),
              load(ControllerSettings, "controller", None, {"site_networks": str(js)}),
              load(ControllerSettings, "controller", str(conf), {})):
        assert s.site_ranges().for_site("A").keeps(_ip("10.1.2.3"), _ip("1.1.1.1"))
    monkeypatch.setenv("SPANREC_SITE_NETWORKS", '{"B": ["172.16.0.0/12"]}')
    assert load(ControllerSettings, "controller", None, {}).site_networks == {"B": ["172.16.0.0/12"]}


def test_malformed_config_is_one_line_exit_2(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys
    bad = tmp_path / "nets.toml"
    bad.write_text('A = ["10.1.0.0/16", "10.2.0.0/33"]\n')
    proc = subprocess.run([sys.executable, "-m", "cli.main", "controller", "--insecure",
                           "--site-networks", str(bad), "--state-dir", str(tmp_path / "st")],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                          env={k: v for k, v in os.environ.items() if not k.startswith("SPANREC_")})
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "site 'A'" in lines[0] and "10.2.0.0/33" in lines[0], lines[0]


def test_write_ahead_log_replay_drops_the_same(tmp_path: Path) -> None:
    """The site comes from the logged Hello and the ranges from configuration:
    a replay after a crash drops exactly what the live path dropped."""
    from controller.ingest.wal import WriteAheadLog
    nets = {"A": ["10.1.0.0/16"]}
    t0 = 1_700_000_000 * S
    forged = _call("forged-call@x", "10.9.0.1", "10.8.0.1", t0 + S // 2)
    frames = sorted(_call("good-call@a", "10.1.0.1", "10.2.0.1", t0) + forged)
    rec = Recorder(LocalStore(tmp_path / "rec", fsync=False), wal=WriteAheadLog(tmp_path / "st"),
                   site_networks=SiteNetworks.from_dict(nets))
    rec.recover()
    rec.sensor_hello("sa", session="s1", site="A", mode="replay")
    for seq, i in enumerate(range(0, len(frames), 16), 1):
        chunk = frames[i:i + 16]
        rec.ingest("sa", seq, 1, [f[0] for f in chunk], [len(f[1]) for f in chunk],
                   b"".join(f[1] for f in chunk))
    rec.writer.join()
    rec.wal.sync()
    del rec                                   # "crash"
    again = Recorder(LocalStore(tmp_path / "rec2", fsync=False), wal=WriteAheadLog(tmp_path / "st"),
                     site_networks=SiteNetworks.from_dict(nets))
    again.recover()
    again.end_of_capture("sa", {}, "")
    again.shutdown()
    assert again.outside_site["sa"] == len(forged)

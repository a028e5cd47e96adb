"""Media seen where signalling was not: the controller tells sensors which media
endpoints SDP announced (Expect), so a sensor that saw no SIP forwards them.

A real grpc.aio controller (tests.link.test_resend.ServerThread), real
`Sender`s and classifiers, and `spanrec sensor` as a subprocess. The call comes
from scripts/gencalls.py; how many RTP packets it holds is read by tshark
from the input capture.
"""
from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from controller.calls.engine import CallTable
from controller.core import Recorder
from controller.calls.hints import MediaHints
from protocols.layers import decode
from protocols.pcapfile import LINKTYPE_ETHERNET, read_frames, write_pcap
from scripts import gencalls
from scripts.gencalls_packets import udp_frame
from sensor.classify import Classifier
from sensor.sender import Sender
from storage.local import LocalStore
from tests.conftest import REPO, require_tool
from tests.link.test_resend import ServerThread, free_port

MS = 1_000_000
SEC = 1_000_000_000


# -- MediaHints -------------------------------------------------------------------
def test_media_hints_log_generations_and_bound() -> None:
    hints = MediaHints(max_entries=5)
    assert hints.since(0) == (0, [])
    P = 20000           # media ports (ports < 1024 and service ports are refused: test_sdp_steering)
    for port in range(P + 1, P + 4):
        hints.add(b"\x0a\x00\x00\x01", port)
    gen, flows = hints.since(0)
    assert gen == 3 and [p for _, p in flows] == [P + 1, P + 2, P + 3]
    assert hints.since(3) == (3, [])
    for port in range(P + 4, P + 10):
        hints.add(bytes(16), port)
    assert hints.since(3) == (9, [(bytes(16), P + p) for p in range(5, 10)])   # trimmed: what is left
    assert hints.since(7) == (9, [(bytes(16), P + 8), (bytes(16), P + 9)])
    assert len(hints) == 5 and hints.generation == 9


def test_media_hints_are_thread_safe() -> None:
    hints = MediaHints(max_entries=100_000)
    seen: list[tuple[bytes, int]] = []
    done = threading.Event()

    def reader() -> None:
        gen = 0
        while True:
            finished = done.is_set()
            gen, flows = hints.since(gen)
            seen.extend(flows)
            if finished:
                return

    th = threading.Thread(target=reader)
    th.start()
    writers = [threading.Thread(target=lambda k=k: [hints.add(bytes([k, 0, 0, 1]), p)
                                                     for p in range(30_000, 40_000)]) for k in range(4)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    done.set()
    th.join()
    assert len(seen) == 40_000 and len(set(seen)) == 40_000


# -- the link ------------------------------------------------------------------------
class Expected:
    """on_expect callback of a Sender: what arrived, from the link thread."""

    def __init__(self, classifier: Classifier | None = None) -> None:
        self.classifier = classifier
        self.messages: list[list[tuple[bytes, int]]] = []
        self.cond = threading.Condition()

    def __call__(self, flows: list[tuple[bytes, int]]) -> None:
        if self.classifier is not None:
            self.classifier.expect(flows)
        with self.cond:
            self.messages.append(flows)
            self.cond.notify_all()

    def flows(self) -> list[tuple[bytes, int]]:
        with self.cond:
            return [f for m in self.messages for f in m]

    def wait(self, n: int, timeout: float = 10.0) -> list[tuple[bytes, int]]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while len([f for m in self.messages for f in m]) < n:
                left = deadline - time.monotonic()
                assert left > 0, f"only {len(self.flows())} of {n} expected flows arrived"
                self.cond.wait(left)
        return self.flows()


@pytest.fixture
def server(tmp_path: Path):
    recorder = Recorder(LocalStore(tmp_path / "recordings"))
    srv = ServerThread(recorder, free_port())
    yield srv
    srv.stop()


def test_a_quiet_sensor_gets_new_endpoints_in_chunks(server: ServerThread) -> None:
    got = Expected()
    sender = Sender(f"127.0.0.1:{server.port}", "quiet", mode="live", heartbeat_s=30.0,
                    on_expect=got)
    sender.start()
    try:
        deadline = time.monotonic() + 10
        while "quiet" not in server.recorder.sensors:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.3)
        assert got.flows() == []
        # no batch, no heartbeat for 30 s: the controller's 200 ms tick sends them
        t0 = time.monotonic()
        server.recorder.hints.add(b"\x0a\x00\x00\x05", 20000)
        got.wait(1)
        assert time.monotonic() - t0 < 2.0
        for i in range(2500):
            server.recorder.hints.add(bytes([10, 1, i >> 8, i & 0xFF]), 30000)
        flows = got.wait(2501)
        assert flows[0] == (b"\x0a\x00\x00\x05", 20000)
        assert flows[1:] == [(bytes([10, 1, i >> 8, i & 0xFF]), 30000) for i in range(2500)]
        assert max(len(m) for m in got.messages) <= 1000 and len(got.messages) >= 4
    finally:
        sender.stop()


def test_a_connecting_sensor_gets_what_is_already_known(server: ServerThread) -> None:
    hints = server.recorder.hints
    hints.add(b"\x0a\x00\x00\x07", 4000)
    hints.add(bytes(15) + b"\x01", 4001)                      # IPv6
    got = Expected()
    sender = Sender(f"127.0.0.1:{server.port}", "late", mode="live", on_expect=got)
    sender.start()
    try:
        assert got.wait(2) == [(b"\x0a\x00\x00\x07", 4000), (bytes(15) + b"\x01", 4001)]
    finally:
        sender.stop()


# -- one call, signalling at one site, media at another -------------------------------
@pytest.fixture
def media_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    """The call engine reports new media endpoints through CallTable.on_new_media.
    Until controller/calls/engine.py calls it itself, add_media is wrapped to do so."""
    if "on_new_media" in inspect.getsource(CallTable.add_media):
        return
    original = CallTable.add_media

    def add_media(self: CallTable, call, side, media) -> None:  # type: ignore[no-untyped-def]
        new = (media.addr, media.port) not in self.media
        original(self, call, side, media)
        hook = getattr(self, "on_new_media", None)
        if new and hook is not None:
            hook(media.addr, media.port)

    monkeypatch.setattr(CallTable, "add_media", add_media)


class SplitCall:
    """One generated call, written as a capture, and split: SIP setup and
    teardown for the signalling site, RTP/RTCP for the media site."""

    def __init__(self, tmp_path: Path, seed: int = 11, duration: float = 2.0) -> None:
        self.plan = gencalls.plan(calls=1, duration=duration, concurrent=1, seed=seed)[0]
        frames = list(gencalls.frames_for([self.plan], seed))
        self.path = tmp_path / "call.pcap"
        with open(self.path, "wb") as fh:
            write_pcap(fh, frames, LINKTYPE_ETHERNET)
        sip = [f for f in frames if decode(1, f[1]).dport == gencalls.SIP_PORT]
        self.media = [f for f in frames if decode(1, f[1]).dport != gencalls.SIP_PORT]
        first_media = self.media[0][0]
        self.setup = [f for f in sip if f[0] < first_media]
        self.teardown = [f for f in sip if f[0] >= first_media]
        assert self.setup and self.teardown and self.media

    def tshark_rtp(self) -> Counter:
        """RTP packets per SSRC in the input capture, as tshark decodes them
        (it follows the SDP of the SIP setup)."""
        out = subprocess.run([require_tool("tshark"), "-r", str(self.path), "-Y", "rtp",
                              "-T", "fields", "-e", "rtp.ssrc"],
                             capture_output=True, text=True, check=True).stdout
        return Counter(int(x, 16) for x in out.split())


def wait_for(predicate, timeout: float = 10.0, what: str = "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def signalling_site(server: ServerThread, call: SplitCall) -> Sender:
    """Sensor 1 sends the call setup; returns once the controller has logged
    the call's media endpoints (RTP and RTCP of both sides)."""
    s1 = Sender(f"127.0.0.1:{server.port}", "s1", mode="replay", connect_timeout_s=20)
    s1.start()
    clf1 = Classifier()
    s1.submit(1, clf1.accept_batch(1, call.setup))
    wait_for(lambda: server.recorder.hints.generation >= 4, what="media hints")
    return s1


def check_recording(server: ServerThread, call: SplitCall, media_sensor: str) -> dict:
    server.recorder.writer.join()
    files = sorted((server.recorder.writer.store.root).rglob("call.json"))
    assert len(files) == 1
    meta = json.loads(files[0].read_text())
    assert meta["status"] == "answered" and meta["end_reason"] == "bye"
    assert sorted(meta["sensors"]) == sorted(["s1", media_sensor])
    expected = call.tshark_rtp()
    assert sorted(expected) == sorted([call.plan.caller_ssrc, call.plan.callee_ssrc])
    streams = {int(s["ssrc"], 16) if isinstance(s["ssrc"], str) else s["ssrc"]: s
               for s in meta["streams"]}
    for ssrc, n in expected.items():
        assert streams[ssrc]["packets"] == n
        assert streams[ssrc]["sensors"] == [media_sensor]
    # every packet of the input capture is in the call's pcap
    recorded = list(read_frames(files[0].parent / "call.pcap"))
    assert len(recorded) == len(call.setup) + len(call.media) + len(call.teardown)
    return meta


def test_media_seen_only_by_another_sensor_is_recorded(server: ServerThread, tmp_path: Path,
                                                        media_hook: None) -> None:
    call = SplitCall(tmp_path)
    # without the controller's word the media site forwards none of it
    assert Classifier(rtp_heuristics=False).accept_batch(1, call.media) == []

    s1 = signalling_site(server, call)
    clf2 = Classifier(rtp_heuristics=False)
    got = Expected(clf2)
    s2 = Sender(f"127.0.0.1:{server.port}", "s2", mode="replay", connect_timeout_s=20,
                on_expect=got)
    s2.start()
    flows = got.wait(4)
    p = call.plan
    caller, callee = (bytes(map(int, ip.split("."))) for ip in (p.caller_ip, p.callee_ip))
    assert set(flows) >= {(caller, p.caller_rtp_port), (callee, p.callee_rtp_port)}
    forwarded = 0
    for i in range(0, len(call.media), 64):
        accepted = clf2.accept_batch(1, call.media[i:i + 64])
        forwarded += len(accepted)
        s2.submit(1, accepted)
    assert forwarded == len(call.media)
    assert clf2.counters.expected_flows >= 4 and clf2.counters.rtp_heuristic_flows == 0
    s2.finish()
    assert s2.wait_done(20)
    s1.submit(1, Classifier().accept_batch(1, call.teardown))
    s1.finish()
    assert s1.wait_done(20)
    check_recording(server, call, "s2")


def test_spanrec_sensor_without_heuristics_forwards_expected_media(
        server: ServerThread, tmp_path: Path, media_hook: None) -> None:
    """The same with the media site as `spanrec sensor --no-rtp-heuristics`
    replaying in real time: its file starts with 3 s of other traffic, time
    enough to connect and hear from the controller."""
    call = SplitCall(tmp_path, seed=12, duration=1.0)
    first = call.media[0][0]
    lead = [(first - 3 * SEC + i * 100 * MS, udp_frame("10.77.0.1", "10.77.0.2", 5353, 53,
                                                       b"\x12\x34\x01\x00" + bytes(20), i))
            for i in range(30)]
    media_pcap = tmp_path / "media.pcap"
    with open(media_pcap, "wb") as fh:
        write_pcap(fh, lead + call.media, LINKTYPE_ETHERNET)

    s1 = signalling_site(server, call)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPANREC_")}
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "sensor", "--pcap", str(media_pcap), "--realtime",
         "--controller", f"127.0.0.1:{server.port}", "--sensor-id", "s2", "--insecure",
         "--no-rtp-heuristics", "--spool-dir", str(tmp_path / "spool"), "--log-level", "error"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    st = server.recorder.sensors["s2"]
    assert st.packets_received == len(call.media)
    assert st.counters["expected_flows"] >= 4
    assert st.counters["rtp_heuristic_flows"] == 0
    assert st.counters["filtered"] == len(lead)
    s1.submit(1, Classifier().accept_batch(1, call.teardown))
    s1.finish()
    assert s1.wait_done(20)
    check_recording(server, call, "s2")

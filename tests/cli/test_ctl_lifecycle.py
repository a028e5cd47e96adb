"""Issue #15 end to end: a controller with a call index, retention, an
encryption key and a signing key (scripts/make-keys) records a replayed
capture; the stored audio and call.pcap are ciphertext, `spanrecctl get`
gives them back decrypted (tshark reads the pcap), `spanrecctl verify`
passes and fails on one flipped byte, a legal hold blocks erasure, erasure
leaves nothing behind, the key can be rotated, and all of it is audited."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from tests.transport.procs import REPO, SPANRECCTL, Controller, identity, make_certs, run

SAMPLE = REPO / "samples" / "sample-call.pcap"


def _keys(d, name="keys"):
    out = d / name
    subprocess.run([sys.executable, str(REPO / "scripts" / "make-keys"), "--out", str(out)], check=True,
                   capture_output=True, timeout=60)
    return out


def _start(work, pki, keys, extra_keys=()):
    kek = ["--encryption-key-file", str(keys / "kek.key")]
    for k in extra_keys:
        kek += ["--encryption-key-file", str(k / "kek.key")]
    return Controller(work, identity(pki, "controller.local"), probe=identity(pki, "ops"),
                      extra=("--index", f"sqlite:///{work / 'index.sqlite'}", "--retention-days", "3650",
                             "--signing-key-file", str(keys / "signing.key"), *kek))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    make_certs(d, "ca")
    make_certs(d, "server", "controller.local", "--san", "127.0.0.1")
    make_certs(d, "client", "branch-1", "--site", "lab")
    make_certs(d, "client", "ops", "--role", "operator")
    make_certs(d, "client", "aud", "--role", "auditor")
    work = tmp_path_factory.mktemp("life")
    keys = _keys(work)
    c = _start(work, d, keys)
    proc = c.replay(SAMPLE, "branch-1", identity(d, "branch-1"), workdir=work)
    assert proc.returncode == 0, proc.stderr
    c.wait_recordings(2)
    lab = SimpleNamespace(c=c, pki=d, work=work, keys=keys)
    deadline = time.monotonic() + 30
    while len(_json(lab, "ops", "search", "-o", "json")["calls"]) < 2:
        assert time.monotonic() < deadline, c.log.read_text()
        time.sleep(0.3)
    yield lab
    lab.c.stop()


def ctl(lab, who, *args):
    n = 2 if args[0] == "hold" else 1          # `hold add|remove` is a group and its command
    return run(SPANRECCTL, *args[:n], "--controller", lab.c.target, *identity(lab.pki, who).flags(),
               *args[n:], timeout=120)


def _json(lab, who, *args):
    proc = ctl(lab, who, *args)
    assert proc.returncode in (0, 1), proc.stderr
    return json.loads(proc.stdout)


def _folders(lab):
    return {p.parent.name: p.parent for p in lab.c.storage.rglob("call.json")}


def test_audio_and_pcap_are_stored_encrypted_and_come_back_decrypted(lab):
    for rid, folder in _folders(lab).items():
        for name in ("audio.wav", "call.pcap"):
            raw = (folder / name).read_bytes()
            assert raw[:8] == b"SPANENC1" and b"RIFF" not in raw[:64]
        meta = json.loads((folder / "call.json").read_text())
        assert meta["retention"]["days"] == 3650
        got = ctl(lab, "ops", "get", rid, "--out", str(lab.work / "dl"))
        assert got.returncode == 0, got.stderr
        pcap = lab.work / "dl" / rid / "call.pcap"
        ids = subprocess.run(["tshark", "-n", "-r", str(pcap), "-Y", "sip", "-T", "fields", "-e", "sip.Call-ID"],
                             capture_output=True, text=True, check=True).stdout.split()
        assert set(ids) == set(meta["call_ids"])
        assert (lab.work / "dl" / rid / "audio.wav").read_bytes()[:4] == b"RIFF"


def test_verify_passes_and_a_flipped_byte_fails(lab):
    rid, folder = sorted(_folders(lab).items())[0]
    ok = _json(lab, "ops", "verify", rid, "-o", "json")
    assert ok["failed"] == 0 and ok["checks"][0]["ok"]
    every = ctl(lab, "ops", "verify", "--since", "2024-01-01", "-o", "json")
    assert every.returncode == 0 and json.loads(every.stdout)["checked"] == 2
    for name in ("audio.wav", "call.pcap", "call.json"):
        path = folder / name
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        original = path.read_bytes()
        path.write_bytes(bytes(data))
        try:
            bad = ctl(lab, "ops", "verify", rid, "-o", "json")
            assert bad.returncode == 1
            problems = json.loads(bad.stdout)["checks"][0]["problems"]
            assert any(name in p for p in problems), problems
        finally:
            path.write_bytes(original)
    assert ctl(lab, "aud", "verify", rid).returncode == 1          # operators only


def test_a_hold_blocks_erasure_and_erasure_leaves_nothing(lab):
    folders = _folders(lab)
    calls = {json.loads((f / "call.json").read_text())["from"]: rid for rid, f in folders.items()}
    held = calls["sip:10001@10.1.0.2"]
    other = calls["sip:10000@10.1.0.1"]
    got = _json(lab, "ops", "hold", "add", "--number", "10001", "--since", "2024-01-15", "--until", "2024-01-16",
                "--reason", "case 7", "-o", "json")
    assert [(o["recording_id"], o["what"]) for o in got] == [(held, "held")]
    assert json.loads((folders[held] / "hold.json").read_text())["held"] is True
    refused = ctl(lab, "ops", "erase", held, "--reason", "GDPR 1", "--yes", "-o", "json")
    assert refused.returncode == 1 and json.loads(refused.stdout)[0]["what"] == "held"
    assert folders[held].exists()
    # still verifies: the hold was signed into the manifest
    assert _json(lab, "ops", "verify", held, "-o", "json")["failed"] == 0
    gone = _json(lab, "ops", "erase", "--number", "10000", "--reason", "GDPR 2", "--yes", "-o", "json")
    assert [(o["recording_id"], o["what"]) for o in gone] == [(other, "erased")]
    assert not folders[other].exists()
    assert [c["id"] for c in _json(lab, "ops", "search", "--number", "10000", "-o", "json")["calls"]] == []
    _json(lab, "ops", "hold", "remove", held, "--reason", "case closed", "-o", "json")
    assert _json(lab, "ops", "erase", held, "--yes", "-o", "json")[0]["what"] == "erased"
    trail = _json(lab, "aud", "audit", "-o", "json", "--limit", "1000")
    actions = [(e["action"], e["recording_id"]) for e in trail["entries"]]
    for step in (("hold-add", held), ("erase", other), ("hold-remove", held), ("erase", held)):
        assert step in actions
    assert trail["verified"]


def test_a_rotated_key_still_reads_old_recordings(tmp_path, lab):
    """After a restart with a new key first and the old one kept, an old recording
    still downloads decrypted; a recording without any key is unreadable."""
    from storage.encryption import EncryptingStore, EncryptionError, FileKeyring
    from storage.local import LocalStore
    old_keys = _keys(tmp_path, "old")
    new_keys = _keys(tmp_path, "new")
    work = tmp_path / "rot"
    work.mkdir()
    c = _start(work, lab.pki, old_keys)
    try:
        assert c.replay(SAMPLE, "branch-1", identity(lab.pki, "branch-1"), workdir=work).returncode == 0
        c.wait_recordings(2)
        time.sleep(1.0)
    finally:
        assert c.stop() == 0, c.log.read_text()
    c = _start(work, lab.pki, new_keys, extra_keys=[old_keys])
    try:
        rid = sorted(p.parent.name for p in c.storage.rglob("call.json"))[0]
        got = run(SPANRECCTL, "get", rid, "--out", str(work / "dl"), "--controller", c.target,
                  *identity(lab.pki, "ops").flags(), timeout=60)
        assert got.returncode == 0, got.stderr
        assert (work / "dl" / rid / "audio.wav").read_bytes()[:4] == b"RIFF"
    finally:
        c.stop()
    prefix = next(p.parent for p in (work / "recordings").rglob("call.json")).relative_to(work / "recordings")
    wrong = EncryptingStore(LocalStore(work / "recordings"), FileKeyring(new_keys / "kek.key"))
    with pytest.raises(EncryptionError):
        wrong.get(prefix.as_posix(), "audio.wav")


def test_the_controller_expires_recordings_itself(tmp_path):
    """--expire-every: the controller's own expiry job deletes what is past its
    retention (a 2024 capture kept 1 day) and says so in the audit trail."""
    from callindex.audit import AuditTrail
    from callindex.db import open_index
    c = Controller(tmp_path, None, extra=("--index", f"sqlite:///{tmp_path / 'index.sqlite'}",
                                          "--retention-days", "1", "--expire-every", "1"))
    try:
        assert c.replay(SAMPLE, "branch-1", None, workdir=tmp_path).returncode == 0
        deadline = time.monotonic() + 60
        seen = False
        while True:
            n = len(list(c.storage.rglob("call.json"))) if c.storage.exists() else 0
            seen = seen or n > 0
            trail = AuditTrail(open_index(f"sqlite:///{tmp_path / 'index.sqlite'}")).entries()
            if len([e for e in trail if e.action == "expire"]) == 2 and n == 0:
                break
            assert time.monotonic() < deadline, c.log.read_text()[-2000:]
            time.sleep(0.5)
        assert all(e.actor.startswith("spanrec expiry") for e in trail if e.action == "expire")
    finally:
        assert c.stop() == 0, c.log.read_text()[-2000:]

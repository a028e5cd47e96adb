"""The controller's write-ahead log: records, torn tails, segment deletion, and a
Recorder that "crashes" (dropped without shutdown) and is rebuilt from the log."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from controller.core import Recorder
from controller.ingest.wal import BATCH, END, HELLO, SNAPSHOT, STORED, Batch, WalError, WriteAheadLog
from scripts.gencalls import frames as gen_frames
from storage.local import LocalStore

LINKTYPE_ETHERNET = 1


def _batch(i: int, n: int = 3) -> tuple[list[int], list[int], bytes]:
    ts = [1_000_000_000 * i + k for k in range(n)]
    datas = [bytes([i % 256, k]) * (k + 1) for k in range(n)]
    return ts, [len(d) for d in datas], b"".join(datas)


# -- the log itself ----------------------------------------------------------
def test_append_then_replay_in_order(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path, fsync="group")
    wal.open({"sensors": []})
    for i in range(1, 6):
        ts, ln, data = _batch(i)
        wal.append_batch("s1", i, LINKTYPE_ETHERNET, ts, ln, data)
    wal.append_event(END, {"sensor_id": "s1", "counters": {}, "error": ""})
    assert wal.sync() == wal.appended_lsn == 6
    wal.close()

    again = WriteAheadLog(tmp_path)
    records = list(again.replay())
    assert [k for k, _ in records] == [SNAPSHOT] + [BATCH] * 5 + [END]
    b = records[3][1]
    assert isinstance(b, Batch)
    assert (b.sensor_id, b.seq, b.linktype) == ("s1", 3, LINKTYPE_ETHERNET)
    assert (b.timestamps, b.lengths, b.data) == tuple(map(list, _batch(3)[:2])) + (_batch(3)[2],)
    assert b.max_ts == max(b.timestamps)
    assert again.segments[0].max_ts == 5_000_000_002


@pytest.mark.parametrize("policy", ["group", "always", "never"])
def test_durable_lsn_follows_the_policy(tmp_path: Path, policy: str) -> None:
    wal = WriteAheadLog(tmp_path, fsync=policy)
    wal.open({})
    lsn = wal.append_batch("s1", 1, 1, *_batch(1))
    if policy == "group":
        deadline = time.monotonic() + 5
        while wal.durable_lsn < lsn:           # the syncer thread catches up
            assert time.monotonic() < deadline
            time.sleep(0.001)
    assert wal.durable_lsn == lsn
    assert (wal.counters["fsyncs"] > 0) == (policy != "never")
    wal.close()


def test_torn_tail_is_dropped_and_counted(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    wal.open({})
    for i in range(1, 4):
        wal.append_batch("s1", i, 1, *_batch(i))
    wal.close()
    seg = sorted(tmp_path.glob("*.wal"))[-1]
    whole = seg.read_bytes()
    # the process died in the middle of writing batch 3
    seg.write_bytes(whole[:-5])
    got = [v.seq for k, v in WriteAheadLog(tmp_path).replay() if k == BATCH]
    assert got == [1, 2]
    again = WriteAheadLog(tmp_path)
    list(again.replay())
    assert again.counters["torn_tail_bytes"] > 0 and again.counters["corrupt_segments"] == 0

    # a flipped bit in the last record fails its CRC: also a torn tail
    bad = bytearray(whole)
    bad[-3] ^= 0x40
    seg.write_bytes(bytes(bad))
    assert [v.seq for k, v in WriteAheadLog(tmp_path).replay() if k == BATCH] == [1, 2]


def test_damaged_middle_segment_skips_its_rest_and_goes_on(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path, segment_bytes=100)
    wal.open({})
    for i in range(1, 7):
        if wal.needs_roll():
            wal.roll({})
        wal.append_batch("s1", i, 1, *_batch(i))
    wal.close()
    segs = sorted(tmp_path.glob("*.wal"))
    assert len(segs) >= 3
    raw = bytearray(segs[0].read_bytes())
    raw[-2] ^= 0xFF
    segs[0].write_bytes(bytes(raw))
    again = WriteAheadLog(tmp_path)
    seqs = [v.seq for k, v in again.replay() if k == BATCH]
    assert again.counters["corrupt_segments"] == 1
    assert seqs == sorted(seqs) and seqs[-1] == 6 and len(seqs) == 5


def test_segments_roll_and_old_ones_go_only_when_unneeded(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path, segment_bytes=150)
    wal.open({})
    for i in range(1, 10):
        if wal.needs_roll():
            wal.roll({})
        wal.append_batch("s1", i, 1, *_batch(i))
    n = len(wal.segments)
    assert n >= 4
    # a call that started at t=4 s is still active: nothing newer than 4 s goes
    deleted = wal.delete_before(4_000_000_000)
    assert deleted >= 1
    assert all(s.max_ts >= 4_000_000_000 for s in wal.segments[:-1])
    assert wal.counters["segments_deleted"] == deleted
    assert len(list(tmp_path.glob("*.wal"))) == n - deleted
    # the current segment is never deleted
    wal.delete_before(1 << 62)
    assert len(wal.segments) == 1
    wal.close()


def test_size_bound_drops_oldest_and_counts(tmp_path: Path, caplog) -> None:
    wal = WriteAheadLog(tmp_path, segment_bytes=300, max_bytes=1000)
    wal.open({})
    for i in range(1, 20):
        if wal.needs_roll():
            wal.roll({})
        wal.append_batch("s1", i, 1, *_batch(i))
    assert wal.counters["segments_forced"] > 0
    assert wal.total_bytes() <= 1000 + 400
    assert "over its size bound" in caplog.text
    wal.close()


def test_unwritable_folder_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(WalError, match="write-ahead log"):
        WriteAheadLog(tmp_path / "file" / "wal")


# -- a Recorder rebuilt from its log ----------------------------------------
def _capture_batches(calls: int, duration: float, concurrent: int, size: int = 64):
    fr = list(gen_frames(calls=calls, duration=duration, concurrent=concurrent))
    return [fr[i:i + size] for i in range(0, len(fr), size)]


def _feed(rec: Recorder, batches, start: int = 1, stop: int | None = None,
          tick_every: int = 0) -> int:
    """Send batches[start-1:stop] with seq = index + 1 (a sensor resends from
    its last ack); returns the last ack."""
    ack = 0
    for seq in range(start, (stop or len(batches)) + 1):
        b = batches[seq - 1]
        ack = rec.ingest("s1", seq, LINKTYPE_ETHERNET, [f[0] for f in b], [len(f[1]) for f in b],
                         b"".join(f[1] for f in b))
        if tick_every and seq % tick_every == 0:
            rec.writer.join()      # (deterministic test: stored calls free their segments now)
            rec.tick()
    return ack


def _recordings(root: Path) -> dict[str, tuple[dict, bytes]]:
    out = {}
    for js in sorted(root.rglob("call.json")):
        out[js.parent.relative_to(root).as_posix()] = (json.loads(js.read_text()),
                                                       (js.parent / "call.pcap").read_bytes())
    return out


def _reference(tmp_path: Path, batches) -> dict:
    out = tmp_path / "reference"
    rec = Recorder(LocalStore(out, fsync=False))
    rec.sensor_hello("s1", session="A", mode="replay")
    _feed(rec, batches)
    rec.end_of_capture("s1", {}, "")
    rec.shutdown()
    return _recordings(out)


def _wait_acked(rec: Recorder, seq: int) -> None:
    deadline = time.monotonic() + 5
    while rec.ingest("s1", seq, 1, [], [], b"") < seq:   # a resend: only asks for the ack
        assert time.monotonic() < deadline
        time.sleep(0.002)


@pytest.mark.parametrize("segment_bytes", [64 << 20, 32 << 10], ids=["one-segment", "small-segments"])
def test_crashed_recorder_replays_to_the_same_recordings(tmp_path: Path, segment_bytes: int) -> None:
    batches = _capture_batches(calls=6, duration=3.0, concurrent=2)
    expected = _reference(tmp_path, batches)
    assert len(expected) == 6

    state, out = tmp_path / "state", tmp_path / "rec"
    horizon = 1.0 if segment_bytes < 1 << 20 else 10.0
    rec = Recorder(LocalStore(out, fsync=False), wal=WriteAheadLog(state, segment_bytes=segment_bytes),
                   wal_horizon_s=horizon)
    rec.recover()                         # empty log: just opens it
    assert rec.sensor_hello("s1", session="A", mode="replay") == 0
    crash_at = len(batches) * 2 // 3
    _feed(rec, batches, 1, crash_at, tick_every=3)
    _wait_acked(rec, crash_at)
    written_before = len(_recordings(out))
    assert 0 < written_before < 6         # some calls done, others active at the crash
    if segment_bytes < 1 << 20:
        assert rec.wal.counters["segments_deleted"] > 0   # finished calls freed their segments
    rec.writer.join()
    del rec                               # "crash": no shutdown, nothing flushed by us

    again = Recorder(LocalStore(out, fsync=False), wal=WriteAheadLog(state, segment_bytes=segment_bytes),
                     wal_horizon_s=horizon)
    info = again.recover()
    assert info["sensors"] == {"s1": crash_at}
    # the sensor reconnects with its session: the controller has everything up to crash_at
    assert again.sensor_hello("s1", session="A", mode="replay") == crash_at
    # it resends a few batches it had not seen acked: they are dropped
    assert _feed(again, batches, crash_at - 3, crash_at) == crash_at
    _feed(again, batches, crash_at + 1)
    again.end_of_capture("s1", {}, "")
    again.shutdown()
    got = _recordings(out)
    assert sorted(got) == sorted(expected)          # no phantom or partial recording
    for prefix, (meta, pcap) in expected.items():
        assert got[prefix][0] == meta, prefix
        assert got[prefix][1] == pcap, prefix
    # the calls stored before the crash were not written again
    assert again.replay_suppressed == written_before or segment_bytes < 1 << 20
    # after a graceful stop the log holds only the sensor's session
    assert len(again.wal.segments) == 1
    kinds = [k for k, _ in WriteAheadLog(state).replay()]
    assert kinds == [SNAPSHOT]


def test_acks_wait_for_durability(tmp_path: Path) -> None:
    """With "always" every ack is durable at once; with group commit an ack may
    lag, but never runs ahead of the log."""
    batches = _capture_batches(calls=1, duration=1.0, concurrent=1, size=8)
    wal = WriteAheadLog(tmp_path / "state", fsync="group")
    rec = Recorder(LocalStore(tmp_path / "rec", fsync=False), wal=wal)
    rec.recover()
    rec.sensor_hello("s1", session="A")
    for seq, b in enumerate(batches, 1):
        ack = rec.ingest("s1", seq, 1, [f[0] for f in b], [len(f[1]) for f in b],
                         b"".join(f[1] for f in b))
        assert ack <= seq
        st = rec.sensors["s1"]
        assert all(lsn > wal.durable_lsn for lsn, _ in st.unsynced) or not st.unsynced
    # a reconnect (hello) syncs: everything received is acknowledged
    assert rec.sensor_hello("s1", session="A") == len(batches)
    rec.shutdown()

    wal2 = WriteAheadLog(tmp_path / "state2", fsync="always")
    rec2 = Recorder(LocalStore(tmp_path / "rec2", fsync=False), wal=wal2)
    rec2.recover()
    rec2.sensor_hello("s1", session="A")
    assert _feed(rec2, batches, 1, 5) == 5
    rec2.shutdown()


def test_replay_restores_sessions_and_ended_replays(tmp_path: Path) -> None:
    """A replay that ended before the crash does not hold the merger back, a new
    session of a sensor starts again at seq 1, and status shows the log."""
    batches = _capture_batches(calls=2, duration=1.0, concurrent=1)
    state = tmp_path / "state"
    rec = Recorder(LocalStore(tmp_path / "rec", fsync=False), wal=WriteAheadLog(state))
    rec.recover()
    rec.sensor_hello("s1", session="A", mode="replay")
    _feed(rec, batches)
    rec.end_of_capture("s1", {}, "")
    rec.writer.join()
    n = len(_recordings(tmp_path / "rec"))
    assert n == 2
    del rec

    again = Recorder(LocalStore(tmp_path / "rec", fsync=False), wal=WriteAheadLog(state))
    again.recover()
    again.writer.join()
    assert again.replay_suppressed == 2 and again.writer.written == 0
    assert again.sensors["s1"].ended
    assert again.sensor_hello("s1", session="B", mode="replay") == 0   # a new run of the sensor
    st = again.status()
    assert st["wal"]["segments"] == 2 and st["replay_suppressed"] == 2
    again.shutdown()
    assert len(_recordings(tmp_path / "rec")) == 2


def test_kinds_in_log(tmp_path: Path) -> None:
    """Every sensor event the replay needs is in the log, stored calls too."""
    batches = _capture_batches(calls=1, duration=1.0, concurrent=1)
    state = tmp_path / "state"
    rec = Recorder(LocalStore(tmp_path / "rec", fsync=False), wal=WriteAheadLog(state))
    rec.recover()
    rec.sensor_hello("s1", session="A", mode="replay")
    _feed(rec, batches)
    rec.sensor_disconnected("s1")
    rec.sensor_hello("s1", session="A", mode="replay")
    rec.end_of_capture("s1", {"captured": 5}, "")
    rec.writer.join()
    kinds = [k for k, _ in WriteAheadLog(state).replay()]
    assert kinds[0] == SNAPSHOT and kinds[1] == HELLO
    assert kinds.count(BATCH) == len(batches)
    assert END in kinds and STORED in kinds
    assert os.listdir(state)


def test_graceful_stop_keeping_active_calls_does_not_split_them(tmp_path: Path) -> None:
    """`--keep-calls-on-stop` (a rolling upgrade): SIGTERM writes the calls already
    over, leaves the active ones in the log, and the next start continues them:
    the recordings equal an uninterrupted run's, byte for byte."""
    batches = _capture_batches(calls=4, duration=3.0, concurrent=2)
    expected = _reference(tmp_path, batches)
    state, out = tmp_path / "state", tmp_path / "rec"
    rec = Recorder(LocalStore(out, fsync=False), wal=WriteAheadLog(state))
    rec.recover()
    rec.sensor_hello("s1", session="A", mode="replay")
    stop_at = len(batches) // 2
    _feed(rec, batches, 1, stop_at, tick_every=3)
    _wait_acked(rec, stop_at)
    active = len(rec.engine.table)
    assert active > 0
    rec.shutdown(keep_active=True)
    written = set(_recordings(out))
    assert len(written) <= len(expected) - active           # the active calls were not written
    again = Recorder(LocalStore(out, fsync=False), wal=WriteAheadLog(state))
    again.recover()
    assert again.sensor_hello("s1", session="A", mode="replay") == stop_at
    # the calls in progress are back (with calls already stored, which the log
    # replays too and which are not written again)
    assert len(again.engine.table) >= active
    _feed(again, batches, stop_at + 1)
    again.end_of_capture("s1", {}, "")
    again.shutdown()
    got = _recordings(out)
    assert sorted(got) == sorted(expected) and written < set(got)
    for prefix, (meta, pcap) in expected.items():
        assert got[prefix] == (meta, pcap), prefix


def _keyring(tmp_path: Path, name: str):
    import base64
    from storage.keys import FileKeyring
    path = tmp_path / f"{name}.key"
    path.write_text(f"spanrec-kek-v1:{name}:{base64.b64encode(os.urandom(32)).decode()}")
    path.chmod(0o600)
    return FileKeyring(path), path


def test_an_encrypted_log_holds_no_packet_in_the_clear_and_replays(tmp_path: Path) -> None:
    """Issue #15: with a key-encryption key every record after the segment's KEY
    record is AES-GCM; replay with the key gives the batches back; without it
    the segment is skipped and counted, never misread."""
    keyring, _ = _keyring(tmp_path, "k1")
    marker = b"SECRET-RTP-PAYLOAD-" * 20
    wal = WriteAheadLog(tmp_path / "wal", fsync="never", keyring=keyring, segment_bytes=4096)
    wal.open({"sessions": {}})
    for seq in range(1, 6):
        wal.append_batch("s1", seq, 1, [seq * 1000], [len(marker)], marker)
        if wal.needs_roll():
            wal.roll({"sessions": {}})
    wal.append_event(END, {"sensor_id": "s1"})
    wal.close()
    raw = b"".join(p.read_bytes() for p in sorted((tmp_path / "wal").glob("*.wal")))
    assert marker[:20] not in raw and b"sensor_id" not in raw
    again = WriteAheadLog(tmp_path / "wal", fsync="never", keyring=keyring)
    got = list(again.replay())
    batches = [v for k, v in got if k == BATCH]
    assert [b.seq for b in batches] == [1, 2, 3, 4, 5] and all(b.data == marker for b in batches)
    assert (END, {"sensor_id": "s1"}) in got
    assert [v for k, v in again.scan({END})] == [{"sensor_id": "s1"}]
    blind = WriteAheadLog(tmp_path / "wal", fsync="never")
    assert [k for k, _ in blind.replay() if k == BATCH] == []
    assert blind.counters["undecryptable_segments"] >= 1


def test_a_quiet_sites_log_lets_stored_calls_go(tmp_path: Path) -> None:
    """Issue #15: with little traffic a segment would stay open (and keep every
    stored call's packets, erased ones too) until it filled 64 MiB; it closes
    after segment_seconds instead, and once the calls in it are stored the
    next tick deletes it: no segment left holds a packet of them."""
    keyring, _ = _keyring(tmp_path, "k1")
    batches = _capture_batches(calls=2, duration=1.0, concurrent=1)
    state = tmp_path / "state"
    wal = WriteAheadLog(state, fsync="never", keyring=keyring, segment_seconds=0.2)
    rec = Recorder(LocalStore(tmp_path / "rec", fsync=False), wal=wal, wal_horizon_s=1.0)
    rec.recover()
    rec.sensor_hello("s1", session="A", mode="replay")
    _feed(rec, batches)
    rec.end_of_capture("s1", {}, "")
    rec.writer.join()
    assert len(_recordings(tmp_path / "rec")) == 2
    first = wal.segments[0].number
    assert not wal.needs_roll()                  # young: no roll yet
    time.sleep(0.3)
    assert wal.needs_roll()
    rec.tick()                                   # rolls by age, then deletes what is not needed
    rec.tick()
    assert wal.segments[0].number > first and wal.counters["segments_deleted"] >= 1
    replayed = list(WriteAheadLog(state, keyring=keyring).replay())
    assert [k for k, _ in replayed if k == BATCH] == []      # no packet of the stored calls
    # a segment that holds no packet does not roll by age (a roll every tick otherwise)
    time.sleep(0.3)
    assert not wal.needs_roll()
    rec.shutdown()


def test_segment_seconds_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="segment_seconds"):
        WriteAheadLog(tmp_path, segment_seconds=0)

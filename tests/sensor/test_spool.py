"""The sensor's disk spool: order, acks, rotation, size bound, crash recovery."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sensor.spool import Spool, SpoolError, SpoolFull


def payload(i: int, size: int = 100) -> bytes:
    return (f"batch-{i}:".encode() * size)[:size]


def fill(spool: Spool, n: int, size: int = 100, start: int = 0, **kw) -> list[int]:
    return [spool.append(payload(start + i, size), packets=i + 1, first_ts=1000 + i, cursor=start + i + 1, **kw)
            for i in range(n)]


def test_append_iterate_in_order(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "s", 1 << 20)
    assert fill(sp, 5) == [1, 2, 3, 4, 5]
    recs = list(sp.iter_from(1))
    assert [r.seq for r in recs] == [1, 2, 3, 4, 5]
    assert [r.payload for r in recs] == [payload(i) for i in range(5)]
    assert [r.packets for r in recs] == [1, 2, 3, 4, 5]
    assert [r.first_ts for r in recs] == [1000, 1001, 1002, 1003, 1004]
    assert [r.seq for r in sp.iter_from(4)] == [4, 5]
    assert [r.seq for r in sp.read(after=2, limit=2)] == [3, 4]
    assert len(sp) == 5 and sp.cursor == 5
    assert sp.has_after(4) and not sp.has_after(5)
    assert sp.first_ts_after(2) == 1002
    sp.close()


def test_ack_releases_and_survives_restart(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "s", 1 << 20)
    fill(sp, 10)
    assert sp.ack(4) == 4
    assert len(sp) == 6 and sp.first_seq() == 5
    assert [r.seq for r in sp.iter_from(1)] == list(range(5, 11))   # acked ones are never read
    sp.close()
    again = Spool(tmp_path / "s", 1 << 20)
    assert again.acked_seq == 4 and len(again) == 6 and again.recovered_batches == 6
    assert [r.seq for r in again.iter_from(1)] == list(range(5, 11))
    assert again.cursor == 10                                       # of the newest record
    assert again.append(b"new") == 11                               # numbering continues
    again.close()


def test_rotation_deletes_fully_acked_segments(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "s", 1 << 20, segment_bytes=1000)
    fill(sp, 40, size=200)                   # ~224 bytes each: 5 per segment
    segs = sorted((tmp_path / "s").glob("*.seg"))
    assert len(segs) == 8
    sp.ack(12)
    left = sorted((tmp_path / "s").glob("*.seg"))
    assert len(left) == 6                    # segments 1-5 and 6-10 gone, 11-15 keeps 13-15
    assert [r.seq for r in sp.iter_from(1)][:3] == [13, 14, 15]
    sp.ack(40)
    assert len(sp) == 0 and sp.depth_bytes == 0
    sp.close()


def test_bound_drops_oldest_and_counts(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "s", 5000, segment_bytes=1000)
    fill(sp, 60, size=200)
    assert sp.disk_bytes <= 5000
    assert sp.dropped_batches > 0
    # what is left is the newest, contiguous, and everything dropped is counted
    seqs = [r.seq for r in sp.iter_from(1)]
    assert seqs == list(range(seqs[0], 61))
    assert sp.dropped_batches + len(seqs) == 60
    assert sp.dropped_packets == sum(range(1, seqs[0]))      # packets of batches 1..first-1
    sp.close()


def test_full_spool_raises_when_dropping_is_not_allowed(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "s", 5000, segment_bytes=1000)
    with pytest.raises(SpoolFull):
        fill(sp, 60, size=200, on_full="raise")
    n = len(sp)
    assert sp.dropped_batches == 0
    sp.ack(5)                                # the first segment is acked: room again
    sp.append(b"x" * 200, on_full="raise")
    assert len(sp) == n - 5 + 1
    sp.close()


def test_torn_tail_is_truncated_and_counted(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "s", 1 << 20)
    fill(sp, 5)
    sp.close()
    (seg,) = (tmp_path / "s").glob("*.seg")
    good = seg.stat().st_size
    with open(seg, "ab") as fh:              # a record cut in the middle, as a kill -9 mid-write
        fh.write(b"\x00\x10\x00\x00\xde\xad")
    again = Spool(tmp_path / "s", 1 << 20)
    assert again.torn_records == 1
    assert seg.stat().st_size == good
    assert [r.seq for r in again.iter_from(1)] == [1, 2, 3, 4, 5]
    assert again.append(b"after") == 6
    again.close()


def test_corrupt_record_in_the_middle_keeps_what_came_before(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "s", 1 << 20)
    fill(sp, 5)
    sp.close()
    (seg,) = (tmp_path / "s").glob("*.seg")
    data = bytearray(seg.read_bytes())
    rec = len(data) // 5
    data[3 * rec + 40] ^= 0xFF               # flip a payload byte of record 4
    seg.write_bytes(bytes(data))
    again = Spool(tmp_path / "s", 1 << 20)
    assert again.torn_records == 1
    assert [r.seq for r in again.iter_from(1)] == [1, 2, 3]
    again.close()


def test_kill_9_while_appending_loses_nothing_appended(tmp_path: Path) -> None:
    """A child process appends and reports each seq; SIGKILL it, reopen the spool."""
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from sensor.spool import Spool\n"
         f"sp = Spool({str(tmp_path / 's')!r}, 1 << 30, segment_bytes=1 << 16)\n"
         "i = 0\n"
         "while True:\n"
         "    i += 1\n"
         "    seq = sp.append(b'%d;' % i * 300, packets=1, cursor=i)\n"
         "    print(seq, flush=True)\n"],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
    done = 0
    assert child.stdout is not None
    for line in child.stdout:
        done = int(line)
        if done >= 2000:
            break
    child.kill()
    child.wait()
    again = Spool(tmp_path / "s", 1 << 30)
    recs = list(again.iter_from(1))
    assert len(recs) >= done                 # every reported append is there
    assert [r.seq for r in recs] == list(range(1, len(recs) + 1))
    assert all(r.payload == b"%d;" % r.seq * 300 for r in recs)
    assert again.cursor == len(recs)
    again.close()


def test_ack_pointer_torn_slot_falls_back_to_the_other(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "s", 1 << 20)
    fill(sp, 10)
    sp.ack(3)
    sp.ack(6)
    sp.close()
    ack = tmp_path / "s" / "ack"
    data = bytearray(ack.read_bytes())
    # the newest slot (generation 2 -> slot 0) is torn: the previous ack (3) is used
    data[8] ^= 0xFF
    ack.write_bytes(bytes(data))
    again = Spool(tmp_path / "s", 1 << 20)
    assert again.acked_seq == 3
    assert [r.seq for r in again.iter_from(1)][0] == 4
    again.close()


def test_source_and_resume_cursor_survive_restart(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "s", 1 << 20)
    sp.set_source({"kind": "replay", "path": "/x.pcap"})
    fill(sp, 3)                              # cursors 1, 2, 3
    sp.ack(3)                                # all acked: segments deleted, cursor kept
    sp.close()
    again = Spool(tmp_path / "s", 1 << 20)
    assert again.source == {"kind": "replay", "path": "/x.pcap"}
    assert again.cursor == 3 and len(again) == 0
    again.set_source(None)
    assert again.cursor == 0
    again.close(remove_if_empty=True)
    assert not (tmp_path / "s").exists()


def test_one_process_per_spool_folder(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "s", 1 << 20)
    child = subprocess.run(
        [sys.executable, "-c",
         f"from sensor.spool import Spool; Spool({str(tmp_path / 's')!r}, 1 << 20)"],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    assert child.returncode != 0 and "used by another sensor process" in child.stderr
    sp.close()
    Spool(tmp_path / "s", 1 << 20).close()   # free again


def test_unwritable_folder_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SpoolError, match="spool folder"):
        Spool(blocker / "s", 1 << 20)
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(SpoolError):
            Spool(ro / "s", 1 << 20)

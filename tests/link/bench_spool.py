"""What the disk spool costs the sensor: batches/s and MB/s, spool on vs off.

    .venv/bin/python -m tests.link.bench_spool [--batches 4000] [--dir /var/tmp]

1. `Spool.append` alone (write-through, fsync policies), then read + ack.
2. `Sender` end to end to an ack-only gRPC server in another process (so the
   controller's own cost is not measured): submit -> (spool) -> stream -> ack,
   memory outbox vs spool.

Batches are 256 RTP-sized frames (214 bytes), like a busy replay.
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from pathlib import Path

FRAME = b"\x00" * 214
BATCH = [(1_700_000_000_000_000_000 + i * 20_000_000, FRAME) for i in range(256)]


def _serve(port: int, ready) -> None:
    import grpc

    from proto import sensor_pb2, sensor_pb2_grpc

    class Ack(sensor_pb2_grpc.SensorLinkServicer):
        async def Stream(self, it, context):
            async for msg in it:
                kind = msg.WhichOneof("kind")
                if kind == "batch":
                    yield sensor_pb2.ControllerMessage(ack=sensor_pb2.Ack(seq=msg.batch.seq))
                elif kind == "hello":
                    yield sensor_pb2.ControllerMessage(ack=sensor_pb2.Ack(seq=0))
                elif kind == "end":
                    yield sensor_pb2.ControllerMessage(notice=sensor_pb2.Notice(capture_done=True))

    async def main() -> None:
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20)])
        sensor_pb2_grpc.add_SensorLinkServicer_to_server(Ack(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        ready.set()
        await server.wait_for_termination()

    asyncio.run(main())


def bench_append(folder: Path, n: int) -> None:
    from proto import sensor_pb2
    from sensor.spool import Spool
    payload = sensor_pb2.Batch(sensor_id="bench", linktype=1,
                               timestamps_ns=[f[0] for f in BATCH], lengths=[len(f[1]) for f in BATCH],
                               data=b"".join(f[1] for f in BATCH)).SerializeToString()
    mb = len(payload) * n / 1e6
    for label, fsync in (("no fsync", None), ("fsync every 1 s", 1.0), ("fsync every 200 ms", 0.2),
                         ("fsync every batch", 0.0)):
        shutil.rmtree(folder / "a", ignore_errors=True)
        sp = Spool(folder / "a", 4 << 30, fsync_interval_s=fsync)
        count = n if fsync != 0.0 else max(50, n // 20)
        t = time.perf_counter()
        for _ in range(count):
            sp.append(payload, packets=256)
        dt = time.perf_counter() - t
        print(f"  append, {label:20s}: {count / dt:9.0f} batches/s {len(payload) * count / dt / 1e6:7.0f} MB/s")
        if fsync is None:
            t = time.perf_counter()
            got = 0
            after = 0
            while True:
                recs = sp.read(after, limit=64)
                if not recs:
                    break
                got += len(recs)
                after = recs[-1].seq
                sp.ack(after)
            dt = time.perf_counter() - t
            print(f"  read + ack {'':14s}: {got / dt:9.0f} batches/s {mb / dt:7.0f} MB/s")
        sp.close()


def bench_sender(folder: Path, n: int) -> None:
    from sensor.sender import Sender
    from sensor.spool import Spool
    from tests.link.test_resend import free_port
    port = free_port()
    ready = mp.get_context("spawn").Event()
    proc = mp.get_context("spawn").Process(target=_serve, args=(port, ready), daemon=True)
    proc.start()
    ready.wait(30)
    try:
        for label in ("memory outbox", "spool (no fsync)", "spool (fsync 1 s)", "spool (fsync 200 ms)"):
            shutil.rmtree(folder / "s", ignore_errors=True)
            spool = None
            if label.startswith("spool"):
                fsync = {"spool (no fsync)": None, "spool (fsync 1 s)": 1.0}.get(label, 0.2)
                spool = Spool(folder / "s", 4 << 30, fsync_interval_s=fsync)
            sender = Sender(f"127.0.0.1:{port}", "bench", mode="replay", spool=spool,
                            connect_timeout_s=10)
            sender.start()
            t = time.perf_counter()
            for _ in range(n):
                sender.submit(1, BATCH)
            sender.finish()
            assert sender.wait_done(120)
            dt = time.perf_counter() - t
            size = sum(len(f[1]) for f in BATCH) * n / 1e6
            print(f"  {label:22s}: {n / dt:7.0f} batches/s {n * 256 / dt / 1e3:6.0f} k packets/s "
                  f"{size / dt:5.0f} MB/s  acked {sender.counters.batches_acked}")
            sender.stop()
            if spool is not None:
                spool.close()
    finally:
        proc.terminate()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=4000)
    ap.add_argument("--dir", default=None, help="where the spool goes (default: a temp folder)")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="spool-bench-", dir=args.dir))
    try:
        st = os.statvfs(folder)
        print(f"spool folder {folder} ({st.f_bavail * st.f_frsize >> 30} GiB free), "
              f"{args.batches} batches of 256 x 214-byte frames")
        print("Spool:")
        bench_append(folder, args.batches)
        print("Sender to an ack-only server (other process):")
        bench_sender(folder, args.batches)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()

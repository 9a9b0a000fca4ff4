"""Disk usage under sustained writes stays bounded by snapshots + compaction (Raft §7).

    python bench/bench_disk_bounded.py [--seconds 120] [--segment-mb 4]

A 3-node LocalCluster with fsync'd WALs (in a temporary directory) takes writes from 16
concurrent writers (256-byte values over 20,000 keys, so the state itself stays ~6 MB) for
--seconds; nodes snapshot every --snapshot-entries applied entries and keep
--trailing entries. Every 5 s the script prints the bytes under each node's directory; the
claim is that the maximum stops growing once the first snapshots are taken. WAL segments are
--segment-mb MB (the default 64 MB would take far longer to roll than a short run).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time

import engine
import engine.aio.node as node_module
from engine.aio.wal import WriteAheadLog
from engine.kv import commands


def du(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except FileNotFoundError:
                pass
    return total


async def main(args: argparse.Namespace) -> None:
    segment_bytes = args.segment_mb * 1024 * 1024

    def open_storage(config: engine.NodeConfig) -> WriteAheadLog:
        assert config.data_dir is not None
        os.makedirs(config.data_dir, exist_ok=True)
        return WriteAheadLog(config.data_dir, segment_bytes=segment_bytes, fsync=config.fsync)

    node_module._open_storage = open_storage  # type: ignore[assignment]
    data_dir = tempfile.mkdtemp(prefix="diskbench-")
    async with engine.LocalCluster(n=3, data_dir=data_dir,
                                   snapshot_entries=args.snapshot_entries,
                                   snapshot_trailing_entries=args.trailing) as cluster:
        leader = await cluster.wait_leader()
        stop = asyncio.Event()
        written = 0

        async def writer(worker: int) -> None:
            nonlocal written
            i = worker
            while not stop.is_set():
                await leader.propose(commands.encode_put(b"k%05d" % (i % 20_000), b"v" * 256))
                written += 1
                i += 16

        tasks = [asyncio.create_task(writer(w)) for w in range(16)]
        started = time.perf_counter()
        samples = []
        while time.perf_counter() - started < args.seconds:
            await asyncio.sleep(5)
            sizes = [du(os.path.join(data_dir, f"n{i}")) for i in sorted(cluster.nodes)]
            samples.append(max(sizes))
            print(f"t={time.perf_counter() - started:5.0f} s  writes={written:8d}  "
                  f"per-node MB={[round(s / 1e6, 1) for s in sizes]}  "
                  f"snapshots={leader.snapshot_stats['taken']:.0f}", flush=True)
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        elapsed = time.perf_counter() - started
        print(f"{written} writes in {elapsed:.0f} s ({written / elapsed:.0f}/s), "
              f"{written * 256 / 1e6:.0f} MB of values written; per-node disk max "
              f"{max(samples) / 1e6:.1f} MB, at the end {samples[-1] / 1e6:.1f} MB, max over "
              f"the second half {max(samples[len(samples) // 2:]) / 1e6:.1f} MB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=120)
    parser.add_argument("--segment-mb", type=int, default=4)
    parser.add_argument("--snapshot-entries", type=int, default=50_000)
    parser.add_argument("--trailing", type=int, default=5_000)
    asyncio.run(main(parser.parse_args()))

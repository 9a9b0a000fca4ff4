"""Install rate of a large state-machine snapshot over loopback UDP (Raft §7, chunked).

    python bench/bench_snapshot_install.py [--mb 100] [--data-dir DIR] [--chunk-kb 60]

A 3-node LocalCluster (one process, real UDP on 127.0.0.1) fills its KV store with about
--mb MB (1 KiB values), node 3 being down; the leader snapshots and compacts its log so node 3
can only catch up through the snapshot; node 3 restarts and the time from its restart to the
installed, restored snapshot gives the rate. Conditions to quote with the number: all three
nodes share one Python process (one GIL) on this machine, the chunk size and window are the
Limits given, and with --data-dir every snapshot write is fsynced.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time

import engine
from engine.config import Limits
from engine.kv import commands


async def main(args: argparse.Namespace) -> None:
    limits = Limits(max_snapshot_chunk_bytes=args.chunk_kb * 1024,
                    max_snapshot_inflight_chunks=args.window,
                    max_uncommitted_bytes=512 * 1024 * 1024)
    data_dir = args.data_dir or (tempfile.mkdtemp(prefix="snapbench-") if args.disk else None)
    async with engine.LocalCluster(n=3, data_dir=data_dir, limits=limits,
                                   snapshot_entries=10**9, snapshot_bytes=1 << 40,
                                   snapshot_trailing_entries=0, request_timeout_s=60) as cluster:
        leader = await cluster.wait_leader()
        lagging = next(i for i in cluster.nodes if i != leader.node_id)
        await cluster.stop(lagging)
        value = b"v" * 1024
        keys = args.mb * 1024
        started = time.perf_counter()
        for start in range(0, keys, 2000):
            await asyncio.gather(*(leader.propose(commands.encode_put(b"key-%09d" % i, value))
                                   for i in range(start, min(start + 2000, keys))))
        fill_s = time.perf_counter() - started
        pause_started = time.perf_counter()
        assert leader.take_snapshot()
        pause_ms = (time.perf_counter() - pause_started) * 1000
        while leader.status()["snapshot_index"] < leader.status()["applied_index"] - 1:
            await asyncio.sleep(0.01)
        size = int(leader.snapshot_stats["last_bytes"])
        restarted_at = time.perf_counter()
        node = await cluster.restart(lagging)
        while node.status()["snapshots"]["installed"] < 1 or node.status()["applied_index"] < (
                leader.status()["snapshot_index"]):
            await asyncio.sleep(0.005)
        took = time.perf_counter() - restarted_at
        sender = leader.status()["snapshots"]
        print(f"filled {keys} keys in {fill_s:.1f} s; snapshot {size / 1e6:.1f} MB, "
              f"leader pause {pause_ms:.1f} ms, "
              f"write {leader.snapshot_stats['last_write_s']:.2f} s")
        print(f"install: {size / 1e6:.1f} MB in {took:.2f} s = {size / 1e6 / took:.1f} MB/s "
              f"(chunks sent {sender['chunks_sent']}, retransmits {sender['retransmits']}, "
              f"chunk {args.chunk_kb} KiB, window {args.window}, "
              f"{'fsync to ' + data_dir if data_dir else 'in memory'})")
        assert node.state_machine == leader.state_machine


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--chunk-kb", type=int, default=60)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--disk", action="store_true", help="use a temporary data dir")
    asyncio.run(main(parser.parse_args()))

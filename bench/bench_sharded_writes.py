"""Write throughput of a sharded LocalCluster against an unsharded one, through
engine.Client, in one process (3 nodes, real UDP, in-memory storage).

    PYTHONPATH=. python bench/bench_sharded_writes.py [--writers 64] [--seconds 3]

Cases: `plain` (one group per node, engine.aio.node.Node), `sharded-1` (the meta group
and one range on a NodeHost per node), `sharded-4 sticky` (4 ranges, each writer keeps to
one range) and `sharded-4 mixed` (each write to the next range). The client's sessions are
per group: the warm-up opens one per writer in each range before the timing starts. Prints
puts/s and latency percentiles per case, and the core (cython or python).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from engine._core import IMPLEMENTATION
from engine.aio.local_cluster import LocalCluster

PREFIXES = [b"a", b"key3", b"key6", b"key8"]   # one per range of presplit_keys(4)


async def run(label: str, writers: int, seconds: float, *, sticky: bool = True,
              ranges: int = 1, **options: Any) -> None:
    async with LocalCluster(n=3, **options) as cluster:
        await cluster.wait_leader()
        async with cluster.client() as client:
            # Routes, leaders and one session per writer in each range before timing.
            await asyncio.gather(*[client.put(PREFIXES[r] + b"%d" % i, b"w")
                                   for i in range(writers) for r in range(ranges)])
            done = 0
            latencies: list[float] = []
            stop = time.perf_counter() + seconds

            async def writer(j: int) -> None:
                nonlocal done
                i = j
                while time.perf_counter() < stop:
                    prefix = PREFIXES[(j if sticky else i) % ranges]
                    began = time.perf_counter()
                    await client.put(prefix + b"%04d" % (i % 1000), b"v" * 16)
                    latencies.append(time.perf_counter() - began)
                    done += 1
                    i += writers + 1

            began = time.perf_counter()
            await asyncio.gather(*[writer(j) for j in range(writers)])
            rate = done / (time.perf_counter() - began)
            latencies.sort()

            def ms(q: float) -> float:
                return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

            print(f"  {label:18s} {rate:8.0f} puts/s   p50 {ms(0.5):6.1f} ms   "
                  f"p99 {ms(0.99):6.1f} ms", flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--writers", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    print(f"{IMPLEMENTATION} core, 3 nodes, {args.writers} concurrent writers, "
          f"{args.seconds:g} s per case")
    await run("plain", args.writers, args.seconds)
    await run("sharded-1", args.writers, args.seconds, split_keys=[])
    await run("sharded-4 sticky", args.writers, args.seconds, ranges=4, shards=4)
    await run("sharded-4 mixed", args.writers, args.seconds, ranges=4, shards=4,
              sticky=False)


if __name__ == "__main__":
    asyncio.run(main())

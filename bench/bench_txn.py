"""Transactions through engine.Client against plain puts, on one sharded LocalCluster
(3 nodes, 8 ranges, real UDP, in-memory storage), in one process.

    PYTHONPATH=. python bench/bench_txn.py [--seconds 3] [--clients 1,256]

Cases, each at every concurrency of --clients (concurrent workers sharing one client, each on
its own keys, a transaction on keys never written before, so nothing conflicts):
  put            one engine.Client.put;
  txn 1-shard    a transaction writing 2 keys of one range (one-phase commit: one command);
  txn 2-shard    a transaction writing 2 keys of two ranges (intents, then the record, then
                 asynchronous resolution);
  txn 2-shard pc the same with parallel commits (the record is staged beside the intents).
Prints operations/s and latency p50/p99 per case, the core (cython or python), the load
average before and after, and the ratios the design asks about: 1-shard transactions over
puts (throughput) and one client's 2-shard commit p50 over its put p50.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Awaitable, Callable

from engine._core import IMPLEMENTATION
from engine.aio.client import Client
from engine.aio.local_cluster import LocalCluster
from engine.aio.shard_server import presplit_keys
from engine.aio.txn import AsyncTransaction

SHARDS = 8
STARTS = [b"a"] + presplit_keys(SHARDS)   # one key prefix inside each range


def key(shard: int, worker: int, which: int) -> bytes:
    return STARTS[shard % SHARDS] + b"/w%05d.%d" % (worker, which)


_rounds: dict[int, int] = {}


def fresh(shard: int, worker: int) -> bytes:
    """A key no transaction wrote before: a commit never waits on the asynchronous
    resolution of the worker's previous transaction (that would measure the push path)."""
    n = _rounds[worker] = _rounds.get(worker, 0) + 1
    return STARTS[shard % SHARDS] + b"/t%05d.%d" % (worker, n)


async def measure(op: Callable[[int], Awaitable[None]], workers: int,
                  seconds: float) -> tuple[float, float, float]:
    await asyncio.gather(*(op(j) for j in range(workers)))   # routes, leaders, sessions
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def worker(j: int) -> None:
        while time.perf_counter() < stop:
            began = time.perf_counter()
            await op(j)
            latencies.append(time.perf_counter() - began)

    began = time.perf_counter()
    await asyncio.gather(*(worker(j) for j in range(workers)))
    rate = len(latencies) / (time.perf_counter() - began)
    latencies.sort()

    def ms(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

    return rate, ms(0.5), ms(0.99)


def cases(client: Client) -> dict[str, Callable[[int], Awaitable[None]]]:
    async def put(j: int) -> None:
        await client.put(key(j, j, 0), b"v" * 16)

    def txn(shards: int, parallel: bool) -> Callable[[int], Awaitable[None]]:
        async def body(j: int) -> None:
            async def write(tx: AsyncTransaction) -> None:
                tx.put(fresh(j, j), b"v" * 16)
                tx.put(fresh(j + shards - 1, j), b"v" * 16)
            await client.run_transaction(write, parallel_commits=parallel)
        return body

    return {"put": put, "txn 1-shard": txn(1, False), "txn 2-shard": txn(2, False),
            "txn 2-shard pc": txn(2, True)}


async def main(seconds: float, concurrency: list[int]) -> None:
    print(f"core {IMPLEMENTATION}, 3 nodes, {SHARDS} ranges, load average before "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    results: dict[tuple[str, int], tuple[float, float, float]] = {}
    async with LocalCluster(n=3, shards=SHARDS) as cluster:
        await cluster.wait_leader()
        async with cluster.client() as client:
            for workers in concurrency:
                for label, op in cases(client).items():
                    found = results[label, workers] = await measure(op, workers, seconds)
                    print(f"  {label:15s} clients {workers:4d}  {found[0]:8.0f} ops/s   "
                          f"p50 {found[1]:7.2f} ms   p99 {found[2]:7.2f} ms", flush=True)
    print(f"load average after {os.getloadavg()[0]:.2f}")
    top, one = max(concurrency), min(concurrency)
    print(f"txn 1-shard / put throughput at {top} clients: "
          f"{results['txn 1-shard', top][0] / results['put', top][0]:.2f}")
    for label in ("txn 2-shard", "txn 2-shard pc"):
        print(f"{label} p50 / put p50 at {one} client(s): "
              f"{results[label, one][1] / results['put', one][1]:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", default="1,256",
                        help="comma-separated concurrencies (default 1,256)")
    args = parser.parse_args()
    asyncio.run(main(args.seconds, [int(c) for c in args.clients.split(",")]))

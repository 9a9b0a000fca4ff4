#!/usr/bin/env python
"""Honest throughput under a hostile flood, and how fast a live node refuses hostile datagrams.

Run:  python bench/bench_hostile.py                       # both parts, ~1 minute
      python bench/bench_hostile.py --only throughput --rates 5000,20000 --repeats 5
      ENGINE_NO_EXTENSIONS=1 python bench/bench_hostile.py   # the pure-Python decoder

Part 1, "absorb": a LocalCluster of 3 (one process, one event loop) and the flow-controlled
attacker of tests/hostile (hostile_support.Attacker) in the same loop, which sends a burst and
waits until the node has read it: 100,000 random datagrams, then 100,000 bit-flipped valid
frames, to the leader. Prints datagrams refused per second: what one node's loop absorbs when
the attacker is as fast as the node (the bound of the flow control).

Part 2, "throughput" (issue 7 item 5: honest traffic keeps >= 90% of its throughput): the
same cluster; honest load = `--outstanding` coroutines each looping `await leader.propose(put)`
(16-byte values) for `--duration` s; committed proposals/s counted in that window. Without a
flood, then with a flood from a SEPARATE process (the attacker's CPU is not the node's) at a
fixed `--rates` datagrams/s, split evenly between the leader and one follower: 45% random
datagrams, 45% bit-flipped valid frames, 10% replays of genuine peer frames sniffed off the
wire, plus one 65,507-byte datagram in every 1,000. Phases alternate (baseline, flood, baseline,
...) `--repeats` times; the medians, their ratio and the median of the ratios of adjacent
(baseline, flood) pairs (robust to load drifting during the run) are printed, with the datagrams the
targets actually refused during the flood windows and the kernel's drops on their sockets
(a flood the kernel drops never costs the node anything, so it is shown).

The machine is shared: absolute figures move with its load; compare within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import platform
import random
import socket
import statistics
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "hostile"))

from hostile_support import (  # noqa: E402
    MAX_UDP_PAYLOAD,
    Attacker,
    Sniffer,
    flipped_frames,
    genuine_pool,
    kernel_drops,
    new_codec,
    plausible_headers,
    random_datagrams,
)

import engine  # noqa: E402
from engine._core import IMPLEMENTATION  # noqa: E402
from engine.aio.loop import loop_name, new_event_loop  # noqa: E402
from engine.kv import commands  # noqa: E402

POOL_SIZE = 20_000  # distinct hostile datagrams the flooder cycles through, per target


# ---------------------------------------------------------------------- the flooder process


def flood(targets: list[tuple[str, int]], pools: list[list[bytes]], rate: float,
          seconds: float, started: Any, result: Any) -> None:
    """Send `rate` datagrams/s for `seconds`, round-robin over targets, paced every ~1 ms."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sendto = sock.sendto
    sent = errors = 0
    positions = [0] * len(targets)
    begin = time.perf_counter()
    started.set()
    while True:
        elapsed = time.perf_counter() - begin
        if elapsed >= seconds:
            break
        due = int(rate * elapsed)
        while sent + errors < due:
            which = (sent + errors) % len(targets)
            pool = pools[which]
            datagram = pool[positions[which] % len(pool)]
            positions[which] += 1
            try:
                sendto(datagram, targets[which])
                sent += 1
            except OSError:  # ENOBUFS under pressure: counted, not retried
                errors += 1
        time.sleep(0.0005)
    result.put((sent, errors, time.perf_counter() - begin))


def flood_pool(rng: random.Random, frame_pool: list[bytes], headers: list[bytes],
               replay_frames: list[bytes], max_datagram: int) -> list[bytes]:
    pool: list[bytes] = []
    pool += random_datagrams(rng, POOL_SIZE * 45 // 100, headers)
    pool += flipped_frames(rng, frame_pool, POOL_SIZE * 45 // 100)
    pool += (replay_frames * (POOL_SIZE // 10 // max(len(replay_frames), 1) + 1))[
        : POOL_SIZE // 10]
    rng.shuffle(pool)
    for at in range(0, len(pool), 1000):
        pool[at] = rng.randbytes(MAX_UDP_PAYLOAD if at % 2000 else max_datagram + 1)
    return pool


# ---------------------------------------------------------------------- measurements


async def honest_throughput(leader: engine.Node, outstanding: int, seconds: float,
                            name: str) -> float:
    """Committed proposals/s through `leader` with `outstanding` always in flight."""
    loop = asyncio.get_running_loop()
    done = 0
    stop_at = 0.0
    value = b"v" * 16

    async def worker(number: int) -> None:
        nonlocal done
        count = 0
        while loop.time() < stop_at:
            key = f"{name}-{number}-{count}".encode()
            await leader.propose(commands.encode_put(key, value))
            if loop.time() <= stop_at:
                done += 1
            count += 1

    start = loop.time()
    stop_at = start + seconds
    await asyncio.gather(*(worker(n) for n in range(outstanding)))
    return done / seconds


def refused(node: engine.Node) -> int:
    dropped = node.transport.stats()["dropped"]
    return dropped["decode_error"] + dropped["replayed"]


async def part_absorb(seed: int) -> None:
    rng = random.Random(seed)
    async with engine.LocalCluster(n=3) as cluster:
        leader = await cluster.wait_leader()
        members = sorted(cluster.nodes)
        pool = genuine_pool(new_codec(cluster.cluster_key), rng, members)
        headers = plausible_headers(0, members)
        for label, datagrams in (
            ("random", random_datagrams(rng, 100_000, headers)),
            ("bit-flipped", flipped_frames(rng, pool, 100_000)),
        ):
            batch = list(datagrams)
            attacker = Attacker(leader.transport)
            before = refused(leader)
            started = time.perf_counter()
            try:
                await attacker.send_all(batch)
            finally:
                attacker.close()
            elapsed = time.perf_counter() - started
            assert not attacker.accepted and refused(leader) - before == len(batch)
            size = sum(map(len, batch)) / len(batch)
            print(f"  absorb  {label:<12} {len(batch):>7,} datagrams (mean {size:,.0f} B) "
                  f"refused in {elapsed:5.2f} s = {len(batch) / elapsed:>9,.0f} /s, "
                  f"0 accepted, kernel drops {attacker.kernel_dropped()}")


async def part_throughput(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    ctx = mp.get_context("spawn")
    async with engine.LocalCluster(n=3) as cluster:
        leader = await cluster.wait_leader()
        follower = next(n for n in cluster.nodes.values() if n is not leader)
        targets = [leader, follower]
        members = sorted(cluster.nodes)
        codec = new_codec(cluster.cluster_key)
        frame_pool = genuine_pool(codec, rng, members)
        headers = plausible_headers(0, members)
        sniffer = Sniffer(n.transport for n in cluster.nodes.values())
        await asyncio.sleep(0.5)
        sniffer.stop()
        await asyncio.sleep(0.1)
        pools = [flood_pool(rng, frame_pool, headers,
                            sniffer.captured.get(t.transport.address, []),
                            leader.config.limits.max_datagram_bytes) for t in targets]
        addresses = [t.transport.address for t in targets]
        await honest_throughput(leader, args.outstanding, 1.0, "warmup")

        for rate in args.rates:
            baseline: list[float] = []
            attacked: list[float] = []
            refused_rates: list[float] = []
            sent_rates: list[float] = []
            kernel = 0
            for repeat in range(args.repeats):
                baseline.append(await honest_throughput(
                    leader, args.outstanding, args.duration, f"b{rate}-{repeat}"))
                started, result = ctx.Event(), ctx.Queue()
                flooder = ctx.Process(target=flood, args=(
                    addresses, pools, rate, args.duration + 1.0, started, result))
                flooder.start()
                while not started.is_set():
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.2)  # the flood is at its rate before measuring
                drops_before = [kernel_drops(a[1]) or 0 for a in addresses]
                refused_before = sum(refused(t) for t in targets)
                window = time.perf_counter()
                attacked.append(await honest_throughput(
                    leader, args.outstanding, args.duration, f"a{rate}-{repeat}"))
                window = time.perf_counter() - window
                refused_rates.append((sum(refused(t) for t in targets) - refused_before)
                                     / window)
                kernel += sum((kernel_drops(a[1]) or 0) - b
                              for a, b in zip(addresses, drops_before, strict=True))
                while result.empty():
                    await asyncio.sleep(0.05)
                sent, errors, seconds = result.get()
                sent_rates.append(sent / seconds)
                flooder.join()
            base, hit = statistics.median(baseline), statistics.median(attacked)
            print(f"  flood {rate:>7,.0f} datagrams/s (sent {statistics.median(sent_rates):,.0f}/s,"
                  f" refused by the targets {statistics.median(refused_rates):,.0f}/s, "
                  f"kernel drops {kernel}):")
            pairs = statistics.median(h / b for h, b in zip(attacked, baseline, strict=True))
            print(f"    honest proposals/s  without {base:>9,.0f}   with {hit:>9,.0f}   "
                  f"ratio of medians {hit / base:6.1%}, median of paired ratios {pairs:6.1%}")
            print(f"    runs without {[round(x) for x in baseline]}")
            print(f"    runs with    {[round(x) for x in attacked]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("absorb", "throughput"))
    parser.add_argument("--rates", default="5000,20000",
                        type=lambda text: [float(r) for r in text.split(",")])
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--outstanding", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    print(f"bench_hostile: Python {platform.python_version()}, codec {IMPLEMENTATION}, "
          f"loop {loop_name(loop)}, {os.cpu_count()} cores, load avg "
          f"{os.getloadavg()[0]:.1f}; 3 nodes in one process, flooder in another")
    try:
        if args.only in (None, "absorb"):
            loop.run_until_complete(part_absorb(args.seed))
        if args.only in (None, "throughput"):
            print(f"  honest load: {args.outstanding} proposals outstanding, "
                  f"{args.duration} s windows, median of {args.repeats}")
            loop.run_until_complete(part_throughput(args))
    finally:
        loop.close()


if __name__ == "__main__":
    main()

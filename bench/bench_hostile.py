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

Part 2, "throughput" (the bar: honest traffic keeps >= 90% of its throughput): the
same cluster; honest load = `--outstanding` coroutines each looping `await leader.propose(put)`
(16-byte values over a fixed set of KEYS_PER_WORKER keys per coroutine, so the store and its
snapshots stay the same size all run) for `--duration` s; committed proposals/s counted in that
window. Without a flood, then with a flood from ONE long-lived separate process, rate-limited
to `--rates` datagrams/s, split evenly between the leader and one follower: 45% random
datagrams, 45% bit-flipped valid frames, 10% replays of genuine peer frames sniffed off the
wire, plus one 65,507-byte datagram in every 1,000. Three windows alternate `--repeats` times:
"without" (no flood), "sham" (the flooder sends the same datagrams at the same rate to a
socket of its own that nobody reads: the same load on the machine, nothing for the nodes) and
"with" (the real flood); after each flood window the next one waits until the nodes' sockets
are drained. Every window is printed with the cluster process's CPU share, its longest
event-loop stall and the snapshots taken in it; then per kind the medians and, for with /
without, sham / without and with / sham, the ratio of medians and the median of the paired
ratios of one repeat (robust to load drifting during the run) — for proposals/s and for
proposals per CPU-second of the cluster's process — with the datagrams the targets refused
during the flood windows, the flooder's own CPU and the kernel's drops on the targets'
sockets (a flood the kernel drops never costs the node anything, so it is shown).

Honest accounting on a small machine: the flooder is another process but not another
machine; on 2 cores it competes with the cluster (and with anything else running) for CPU.
with / without is what a user of such a box sees; sham / without is what the flooder's mere
presence costs; with / sham, and the per-CPU-second ratios, are the node's own cost of
refusing the flood. Report all of them, with the flood rate.

Why the load is shaped this way: with a fresh key per honest write the store would grow by
~100k keys per window, and every 100k applied entries each node snapshots it (with
data_dir=None off the event loop: tests/hostile/test_hostile_live.py::
test_in_memory_snapshot_is_serialised_off_the_event_loop), so windows that cross a snapshot
boundary would measure the snapshot, not the flood: hence a fixed set of keys. A flooder
spawned per window would pickle ~40 MB of pools on the cluster's loop: hence one long-lived
flooder. A flood's unread backlog (up to 8 MB of socket buffer) would spill into the next
baseline: hence the drain after each flood window.

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
    receive_queue_bytes,
)

import engine  # noqa: E402
from engine._core import IMPLEMENTATION  # noqa: E402
from engine.aio.loop import loop_name, new_event_loop  # noqa: E402
from engine.kv import commands  # noqa: E402

POOL_SIZE = 20_000  # distinct hostile datagrams the flooder cycles through, per target


# ---------------------------------------------------------------------- the flooder process


def flooder(targets: list[tuple[str, int]], pools: list[list[bytes]], commands: Any,
            flooding: Any) -> None:
    """A separate process, started ONCE (spawning one per window pickled ~40 MB of pools on
    the cluster's loop each time). For each (rate, sham) received on `commands` it sends
    `rate` datagrams/s, round-robin over targets, paced every ~0.5 ms, until `flooding` is
    cleared; then it answers (sent, send errors, seconds, its own CPU seconds). A sham flood
    sends the same datagrams at the same rate to a socket of its own that nobody reads: the
    same load on the machine, nothing for the nodes. None ends it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sendto = sock.sendto
    positions = [0] * len(targets)
    while (command := commands.recv()) is not None:
        rate, sham = command
        aimed = [sink.getsockname()] * len(targets) if sham else targets
        sent = errors = 0
        cpu = time.process_time()
        begin = time.perf_counter()
        while flooding.is_set():
            due = int(rate * (time.perf_counter() - begin))
            while sent + errors < due:
                which = (sent + errors) % len(targets)
                pool = pools[which]
                datagram = pool[positions[which] % len(pool)]
                positions[which] += 1
                try:
                    sendto(datagram, aimed[which])
                    sent += 1
                except OSError:  # ENOBUFS under pressure: counted, not retried
                    errors += 1
            time.sleep(0.0005)
        commands.send((sent, errors, time.perf_counter() - begin, time.process_time() - cpu))
    sock.close()
    sink.close()


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


# Distinct keys each honest worker cycles through. Bounded on purpose: with a fresh key per
# write the KV store would grow by ~100k keys per window and every snapshot with it, so the
# windows that cross a snapshot boundary would measure the snapshot, not the flood (see the
# module docstring).
KEYS_PER_WORKER = 4


async def honest_throughput(leader: engine.Node, outstanding: int, seconds: float) -> float:
    """Committed proposals/s through `leader` with `outstanding` always in flight (puts of
    16-byte values over a fixed set of outstanding x KEYS_PER_WORKER keys)."""
    loop = asyncio.get_running_loop()
    done = 0
    stop_at = 0.0
    value = b"v" * 16

    async def worker(number: int) -> None:
        nonlocal done
        keys = [f"h{number}-{k}".encode() for k in range(KEYS_PER_WORKER)]
        count = 0
        while loop.time() < stop_at:
            await leader.propose(commands.encode_put(keys[count % KEYS_PER_WORKER], value))
            if loop.time() <= stop_at:
                done += 1
            count += 1

    start = loop.time()
    stop_at = start + seconds
    await asyncio.gather(*(worker(n) for n in range(outstanding)))
    return done / seconds


class StallMonitor:
    """The longest the event loop went without running a 1 ms timer (a stall stops the
    cluster's nodes and the honest load alike, so a window with one is flagged)."""

    def __init__(self) -> None:
        self.longest_s = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._watch())

    def take(self) -> float:
        longest, self.longest_s = self.longest_s, 0.0
        return longest

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(0.001)
            self.longest_s = max(self.longest_s, loop.time() - before - 0.001)


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


async def drained(nodes: list[engine.Node], timeout_s: float = 10.0) -> float:
    """Wait until the nodes' sockets hold no unread datagram (a flood's backlog must not be
    read during the next baseline window); returns the seconds waited."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while any((receive_queue_bytes(n.transport.address[1]) or 0) > 0 for n in nodes):
        if loop.time() - started > timeout_s:
            break
        await asyncio.sleep(0.01)
    return loop.time() - started


def snapshots_taken(cluster: engine.LocalCluster) -> int:
    return sum(int(n.snapshot_stats["taken"]) for n in cluster.nodes.values())


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
        commands_to, commands_from = ctx.Pipe()
        flooding = ctx.Event()
        process = ctx.Process(target=flooder, args=(addresses, pools, commands_from, flooding),
                              daemon=True)
        process.start()  # pickles the pools once, before any measured window
        monitor = StallMonitor()
        monitor.start()
        try:
            await honest_throughput(leader, args.outstanding, 1.0)
            for rate in args.rates:
                await measure_rate(args, cluster, targets, rate, commands_to, flooding, monitor)
        finally:
            flooding.clear()
            commands_to.send(None)
            process.join(5.0)
            if process.is_alive():
                process.kill()
            monitor.stop()


KINDS = ("without", "sham", "with")


async def measure_rate(args: argparse.Namespace, cluster: engine.LocalCluster,
                       targets: list[engine.Node], rate: float, commands_to: Any,
                       flooding: Any, monitor: StallMonitor) -> None:
    """`args.repeats` times: a baseline window, a sham-flood window and a flood window at
    `rate` (see the module docstring); print every window and the ratios."""
    leader = targets[0]
    ports = [t.transport.address[1] for t in targets]
    # Per kind: committed proposals/s, and proposals per CPU-second of the cluster's process
    # (the node's own efficiency, whatever share of a core the shared machine left it).
    rates: dict[str, list[float]] = {kind: [] for kind in KINDS}
    per_cpu: dict[str, list[float]] = {kind: [] for kind in KINDS}
    refused_rates: list[float] = []
    sent_rates: list[float] = []
    flooder_cpu: list[float] = []
    kernel = 0
    rows: list[str] = []

    async def window(kind: str, repeat: int) -> None:
        snapshots = snapshots_taken(cluster)
        monitor.take()
        cpu, wall = time.process_time(), time.perf_counter()
        result = await honest_throughput(leader, args.outstanding, args.duration)
        cpu_s = time.process_time() - cpu
        cpu_share = cpu_s / (time.perf_counter() - wall)
        rates[kind].append(result)
        per_cpu[kind].append(result * args.duration / cpu_s)
        rows.append(f"      {kind + str(repeat):<9} {result:>9,.0f}/s   "
                    f"{per_cpu[kind][-1]:>9,.0f}/CPU-s   cluster CPU {cpu_share:4.0%}, longest "
                    f"loop stall {monitor.take() * 1000:4.0f} ms, snapshots "
                    f"{snapshots_taken(cluster) - snapshots}")

    async def flood_window(kind: str, repeat: int) -> None:
        nonlocal kernel
        flooding.set()
        commands_to.send((rate, kind == "sham"))
        await asyncio.sleep(0.2)  # the flood is at its rate before measuring
        drops_before = [kernel_drops(port) or 0 for port in ports]
        refused_before = sum(refused(t) for t in targets)
        started = time.perf_counter()
        await window(kind, repeat)
        elapsed = time.perf_counter() - started
        flooding.clear()
        sent, _errors, seconds, cpu_s = await asyncio.get_running_loop().run_in_executor(
            None, commands_to.recv)
        if kind == "with":
            refused_rates.append((sum(refused(t) for t in targets) - refused_before) / elapsed)
            kernel += sum((kernel_drops(port) or 0) - before
                          for port, before in zip(ports, drops_before, strict=True))
            sent_rates.append(sent / seconds)
            flooder_cpu.append(cpu_s / seconds)
        await drained(list(cluster.nodes.values()))

    for repeat in range(args.repeats):
        await window("without", repeat)
        await flood_window("sham", repeat)
        await flood_window("with", repeat)

    print(f"  flood {rate:>7,.0f} datagrams/s (sent {statistics.median(sent_rates):,.0f}/s, "
          f"flooder CPU {statistics.median(flooder_cpu):.0%} of a core; refused by the targets "
          f"{statistics.median(refused_rates):,.0f}/s, kernel drops {kernel}):")
    print("\n".join(rows))
    if min(rates["without"]) <= 0 or min(rates["sham"]) <= 0:
        print("    a reference window committed nothing: no ratio (see the stalls above)")
        return
    for label, series in (("honest proposals/s", rates), ("per CPU-second", per_cpu)):
        medians = {kind: statistics.median(series[kind]) for kind in KINDS}
        print(f"    {label:<19} " + "   ".join(
            f"{kind} {medians[kind]:>9,.0f}" for kind in KINDS))
        for over, under in (("with", "without"), ("sham", "without"), ("with", "sham")):
            pairs = statistics.median(
                h / b for h, b in zip(series[over], series[under], strict=True))
            print(f"      {over}/{under:<8} ratio of medians "
                  f"{medians[over] / medians[under]:6.1%}, median of paired ratios {pairs:6.1%}")


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

"""`python -m engine bench`: throughput and latency of a local cluster on loopback UDP.

Node 1 runs in this process and is made leader; the other nodes are `python -m engine serve`
processes. Proposals are driven from the leader's process as a library user would
(`await node.propose(cmd)`), with --concurrency of them outstanding at any time. The figures
printed are measured, after --warmup seconds, over --duration seconds, with the conditions.
Benchmarks are never timed assertions in the test suite (DESIGN.md §7).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

from engine.errors import ConfigError


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--protocol", default="raft", choices=["raft", "paxos"])
    parser.add_argument("--nodes", type=int, default=3, help="cluster size (3, 5 or 7)")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    parser.add_argument("--payload", type=int, default=100, help="value bytes per proposal")
    parser.add_argument("--concurrency", type=int, default=1024,
                        help="proposals outstanding at any time")
    durability = parser.add_mutually_exclusive_group()
    durability.add_argument("--fsync", action="store_true",
                            help="durable: WAL on disk, fsync before every acknowledgement")
    durability.add_argument("--no-fsync", dest="fsync", action="store_false",
                            help="in-memory nodes (default)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")


def _check_arguments(args: argparse.Namespace) -> None:
    if args.nodes not in (1, 3, 5, 7):
        raise ConfigError(f"--nodes must be 1, 3, 5 or 7, got {args.nodes}")
    if args.duration <= 0 or args.warmup < 0:
        raise ConfigError("--duration must be positive and --warmup not negative")
    if not 0 <= args.payload <= 1_000_000:
        raise ConfigError(f"--payload must be 0..1000000 bytes, got {args.payload}")
    if not 1 <= args.concurrency <= 65_536:
        raise ConfigError(f"--concurrency must be 1..65536, got {args.concurrency}")
    if args.protocol != "raft":
        raise ConfigError(f"--protocol {args.protocol} is not available yet")


def run_bench(args: argparse.Namespace) -> int:
    _check_arguments(args)
    from engine.aio.loop import loop_name, new_event_loop

    workdir = tempfile.mkdtemp(prefix="engine-bench-")
    processes: list[subprocess.Popen[bytes]] = []
    loop = new_event_loop()
    try:
        result = loop.run_until_complete(_bench(args, workdir, processes))
        result["conditions"]["event_loop"] = loop_name(loop)
    finally:
        loop.close()
        _stop_processes(processes)
        shutil.rmtree(workdir, ignore_errors=True)
    _print_result(result)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    return 0


def _stop_processes(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def _bench(args: argparse.Namespace, workdir: str,
                 processes: list[subprocess.Popen[bytes]]) -> dict[str, Any]:
    import engine
    from engine.aio.local_cluster import free_udp_ports
    from engine.aio.node import Node
    from engine.kv import KVStore, commands
    from engine.types import NodeConfig

    key = os.urandom(32)
    key_file = os.path.join(workdir, "cluster.key")
    with open(key_file, "w") as handle:
        handle.write(key.hex())
    ports = free_udp_ports(args.nodes)
    members = {i: f"127.0.0.1:{port}" for i, port in enumerate(ports, 1)}
    members_arg = ",".join(f"{i}={address}" for i, address in members.items())
    for node_id in range(2, args.nodes + 1):
        command = [sys.executable, "-m", "engine", "serve", "--node-id", str(node_id),
                   "--members", members_arg, "--cluster-key-file", key_file]
        if args.fsync:
            command += ["--data-dir", os.path.join(workdir, f"n{node_id}")]
        processes.append(subprocess.Popen(command, stdin=subprocess.DEVNULL))
    config = NodeConfig(
        node_id=1, members=members, cluster_key=key,
        data_dir=os.path.join(workdir, "n1") if args.fsync else None,
    )
    node = Node(config, KVStore())
    await node.start()
    try:
        await _make_leader(node, processes)
        value = os.urandom(args.payload)
        payloads = [commands.encode_put(b"key-%d" % i, value) for i in range(4096)]
        latencies_ns, ops, measured_s, cpu = await _drive(node, payloads, args)
    finally:
        await node.stop()
    lat_ms = np.asarray(latencies_ns, dtype=np.float64) / 1e6
    percentiles = {
        f"p{p}": float(np.percentile(lat_ms, p)) if len(lat_ms) else None
        for p in (50, 90, 99, 99.9)
    }
    percentiles["max"] = float(lat_ms.max()) if len(lat_ms) else None
    return {
        "ops_per_s": ops / measured_s,
        "mb_per_s": ops * args.payload / measured_s / 1e6,
        "committed_ops": ops,
        "latency_ms": percentiles,
        "leader_cpu_percent": cpu,
        "conditions": {
            "protocol": args.protocol, "nodes": args.nodes, "payload_bytes": args.payload,
            "concurrency": args.concurrency, "fsync": bool(args.fsync),
            "duration_s": round(measured_s, 3), "warmup_s": args.warmup,
            "clients": "library (proposals in the leader's process)",
            "processes": "node 1 in this process, others as `python -m engine serve`",
            "implementation": engine.IMPLEMENTATION, "cpus": os.cpu_count(),
            "python": platform.python_version(), "machine": platform.machine(),
        },
    }


async def _make_leader(node: Any, processes: list[subprocess.Popen[bytes]]) -> None:
    """Campaign until node 1 leads a quorum (the other processes may still be starting)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while loop.time() < deadline:
        for process in processes:
            if process.poll() is not None:
                raise ConfigError(f"a node process exited early with status {process.returncode}")
        if node.core.role != "leader":
            node.campaign()
        await asyncio.sleep(0.3)
        if node.core.role == "leader":
            try:  # one committed write proves a quorum follows
                from engine.kv import commands

                await node.propose(commands.encode_put(b"bench-ready", b"1"), timeout=2.0)
                return
            except Exception:
                continue
    raise ConfigError("node 1 did not become leader within 30 s")


async def _drive(node: Any, payloads: list[bytes], args: argparse.Namespace
                 ) -> tuple[list[int], int, float, float]:
    loop = asyncio.get_running_loop()
    perf = time.perf_counter_ns
    start = loop.time()
    measure_from = start + args.warmup
    stop_at = measure_from + args.duration
    latencies: list[int] = []
    counted = 0
    errors = 0
    count = len(payloads)

    async def worker(offset: int) -> None:
        nonlocal counted, errors
        i = offset
        while True:
            now = loop.time()
            if now >= stop_at:
                return
            t0 = perf()
            try:
                await node.propose(payloads[i % count])
            except Exception:
                errors += 1
                continue
            finished = loop.time()
            if measure_from <= finished < stop_at:
                latencies.append(perf() - t0)
                counted += 1
            i += args.concurrency

    progress = asyncio.ensure_future(_progress(loop, start, measure_from, stop_at, lambda: counted))
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    wall_before = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(args.concurrency)))
    progress.cancel()
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    wall = time.perf_counter() - wall_before
    cpu_s = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    if errors:
        print(f"note: {errors} proposals failed during the run", file=sys.stderr)
    return latencies, counted, args.duration, 100.0 * cpu_s / wall


async def _progress(loop: asyncio.AbstractEventLoop, start: float, measure_from: float,
                    stop_at: float, done: Any) -> None:
    if not sys.stderr.isatty():
        return
    while True:
        now = loop.time()
        phase = "warmup" if now < measure_from else "measuring"
        print(f"\r{phase}: {now - start:5.1f}/{stop_at - start:.1f} s, {done()} ops",
              end="", file=sys.stderr, flush=True)
        await asyncio.sleep(0.5)


def _print_result(result: dict[str, Any]) -> None:
    c = result["conditions"]
    lat = result["latency_ms"]

    def ms(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f} ms"

    print()
    print(f"engine bench: {c['protocol']}, {c['nodes']} nodes on loopback UDP, "
          f"{c['payload_bytes']}-byte values, {c['concurrency']} outstanding, "
          f"fsync={'on' if c['fsync'] else 'off'}, {c['implementation']} core, "
          f"{c['event_loop']} loop, {c['cpus']} CPUs")
    print(f"  committed: {result['ops_per_s']:,.0f} ops/s  ({result['mb_per_s']:.2f} MB/s of "
          f"values, {result['committed_ops']:,} ops in {c['duration_s']} s)")
    print(f"  latency:   p50 {ms(lat['p50'])}  p90 {ms(lat['p90'])}  p99 {ms(lat['p99'])}  "
          f"p99.9 {ms(lat['p99.9'])}  max {ms(lat['max'])}")
    print(f"  leader process CPU: {result['leader_cpu_percent']:.0f}%")

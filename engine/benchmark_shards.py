"""`python -m engine bench --shards N`: many groups per process, measured.

Every node is a separate process running an engine.aio.node_host.NodeHost with N groups
(Raft, engine.KVStore each); a new group elects the replica its id names (NodeHost), so the
leaders spread evenly over the processes. Two modes:

  active (default)  each process drives closed-loop writes to the groups it leads, the
                    outstanding writes split over the processes in proportion to the groups
                    they lead (--concurrency in total). Reported: aggregate writes per
                    second, latency, CPU per process, and with --fsync the fsyncs per second
                    of each process (one per host turn for all its groups: group commit
                    across groups, so it should not grow with N).
  --idle            every group is created, elected and left alone until all are quiet
                    (quiescence); then the CPU of each process over --duration seconds, its
                    resident memory per group, and one group's write latency (sequential
                    writes to a group this process leads) amid its idle neighbours.

Compare `--shards 1` with `--shards 64` (or `--idle --shards 1` with `--idle --shards
10000`) in one sitting: same harness, same machine, same processes.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

from engine.errors import ConfigError

# Groups are created in batches of this many, each batch given time to elect and go quiet
# before the next: thousands of first elections at once would only compete for the CPU.
CREATE_BATCH = 500
READY_TIMEOUT_S = 600.0


def add_shard_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", type=int, default=None, metavar="N",
                        help="N groups per process on NodeHosts (engine.aio.node_host), "
                             "each node a separate process; see engine/benchmark_shards.py")
    parser.add_argument("--idle", action="store_true",
                        help="with --shards: measure idle groups (CPU, memory per group, one "
                             "group's write latency) instead of a write load")


# ---------------------------------------------------------------------------- the worker

def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _percentiles(latencies_ns: list[int]) -> dict[str, float | None]:
    if not latencies_ns:
        return {"p50": None, "p99": None, "p999": None}
    ordered = sorted(latencies_ns)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6

    return {"p50": at(0.5), "p99": at(0.99), "p999": at(0.999)}


async def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    import engine
    from engine.aio.node_host import NodeHost
    from engine.config import NodeConfig
    from engine.kv import commands

    node_id = spec["node_id"]
    members = {int(k): v for k, v in spec["members"].items()}
    config = NodeConfig(node_id=node_id, members=members,
                        cluster_key=bytes.fromhex(spec["key"]),
                        data_dir=spec["data_dir"], fsync=bool(spec["data_dir"]))
    shards = spec["shards"]
    rss_before = _rss_bytes()
    async with NodeHost(config) as host:
        for first in range(1, shards + 1, CREATE_BATCH):
            for group in range(first, min(first + CREATE_BATCH, shards + 1)):
                await host.add_group(group, engine.KVStore())
            # Let this batch elect before the next (the other processes add it too).
            for _ in range(200):
                if len(host.awake) < CREATE_BATCH // 10:
                    break
                await asyncio.sleep(0.05)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT_S
        while loop.time() < deadline:
            if all(node.core.leader_id for node in host.nodes.values()) and (
                    not spec["idle"] or not host.awake):
                break
            await asyncio.sleep(0.1)
        else:
            raise ConfigError(f"node {node_id}: groups without a leader after "
                              f"{READY_TIMEOUT_S:.0f} s")
        led = sorted(g for g, node in host.nodes.items() if str(node.core.role) == "leader")
        # The groups' long-lived objects leave the collector's view (gc.freeze): a full
        # collection would otherwise walk every group's state, a pause of milliseconds at
        # 10,000 groups (docs/multigroup.md, "Costs and limits").
        gc.collect()
        gc.freeze()
        print(json.dumps({"ready": node_id, "led": len(led)}), flush=True)
        # The parent's start signal, read off the loop: the groups keep running meanwhile
        # (a blocked loop would fall silent and its peers would elect new leaders).
        go = json.loads(await loop.run_in_executor(None, sys.stdin.readline))
        value = os.urandom(spec["payload"])
        result: dict[str, Any] = {"node_id": node_id, "groups": shards, "led": len(led)}
        if spec["idle"]:
            result.update(await _measure_idle(host, led, go, value, rss_before))
        else:
            result.update(await _measure_active(host, led, go, value, spec, commands))
        result["host"] = host.status()["counters"]
        # Every process serves until all have measured (a leader's probe writes need their
        # followers): report, then wait for the parent's stop.
        print(json.dumps({"result": result}), flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)
        return result


async def _measure_idle(host: Any, led: list[int], go: dict[str, Any], value: bytes,
                        rss_before: int) -> dict[str, Any]:
    from engine.kv import commands

    cpu0, wall0 = time.process_time(), time.monotonic()
    await asyncio.sleep(go["duration"])
    cpu_percent = 100.0 * (time.process_time() - cpu0) / (time.monotonic() - wall0)
    awake_after = len(host.awake)
    latencies: list[int] = []
    if led:
        node = host.nodes[led[0]]
        for i in range(go["probe_writes"]):
            started = time.perf_counter_ns()
            await node.propose(commands.encode_put(b"probe-%d" % i, value))
            latencies.append(time.perf_counter_ns() - started)
    rss = _rss_bytes()
    return {"cpu_percent": cpu_percent, "awake_groups_after_idle": awake_after,
            "rss_bytes": rss, "rss_per_group_bytes": (rss - rss_before) / max(1, len(host.nodes)),
            "probe_latency_ms": _percentiles(latencies), "probe_writes": len(latencies)}


async def _measure_active(host: Any, led: list[int], go: dict[str, Any], value: bytes,
                          spec: dict[str, Any], commands: Any) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    concurrency = go["concurrency"].get(str(spec["node_id"]), 0)
    latencies: list[int] = []
    errors = 0
    perf = time.perf_counter_ns
    start_ns = perf() + int(go["warmup"] * 1e9)
    stop_ns = start_ns + int(go["duration"] * 1e9)
    submits = [host.nodes[g].submit for g in led]
    payloads = [commands.encode_put(b"key-%d" % i, value) for i in range(10_000)]

    async def worker(offset: int) -> None:
        nonlocal errors
        i = offset
        record = latencies.append
        started = perf()
        while started < stop_ns:
            try:
                await submits[i % len(submits)](payloads[i % len(payloads)])
            except Exception:
                errors += 1
                await asyncio.sleep(0)
                started = perf()
                continue
            finished = perf()
            if start_ns <= finished < stop_ns:
                record(finished - started)
            started = finished
            i += concurrency

    syncs0 = cpu0 = 0.0

    async def window() -> None:
        nonlocal syncs0, cpu0
        await asyncio.sleep(go["warmup"])
        syncs0 = host.host.counters["syncs"]
        cpu0 = time.process_time()

    waiter = loop.create_task(window())
    if submits and concurrency:
        await asyncio.gather(*(worker(offset) for offset in range(concurrency)))
    else:
        await asyncio.sleep(go["warmup"] + go["duration"])
    await waiter
    cpu_percent = 100.0 * (time.process_time() - cpu0) / go["duration"]
    syncs = host.host.counters["syncs"] - syncs0
    return {"ops": len(latencies), "errors": errors, "concurrency": concurrency,
            "latency_ms": _percentiles(latencies), "cpu_percent": cpu_percent,
            "fsyncs_per_s": syncs / go["duration"]}


def _worker_main(spec_text: str) -> int:
    from engine.aio.loop import new_event_loop

    loop = new_event_loop()
    try:
        loop.run_until_complete(_worker(json.loads(spec_text)))
    finally:
        loop.close()
    return 0


# ---------------------------------------------------------------------------- the parent

def run_shard_bench(args: argparse.Namespace) -> int:
    from engine import IMPLEMENTATION, __version__
    from engine.aio.local_cluster import free_udp_ports

    if args.shards < 1:
        raise ConfigError("--shards must be at least 1")
    if args.protocol != "raft":
        raise ConfigError("--shards hosts Raft groups (quiescence is Raft's)")
    workdir = tempfile.mkdtemp(prefix="engine-shards-", dir=args.data_dir)
    ports = free_udp_ports(args.nodes)
    members = {i: f"127.0.0.1:{port}" for i, port in enumerate(ports, 1)}
    key = secrets.token_hex(32)
    processes: list[subprocess.Popen[str]] = []
    try:
        for node_id in members:
            spec = {"node_id": node_id, "members": members, "key": key, "shards": args.shards,
                    "idle": bool(args.idle), "payload": args.payload,
                    "data_dir": os.path.join(workdir, f"n{node_id}") if args.fsync else None}
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "engine.benchmark_shards", "--worker", json.dumps(spec)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        led: dict[str, int] = {}
        for process in processes:
            line = process.stdout.readline() if process.stdout else ""
            if not line:
                raise ConfigError("a shard-bench worker exited before it was ready")
            ready = json.loads(line)
            led[str(ready["ready"])] = ready["led"]
        total_led = max(1, sum(led.values()))
        concurrency = {node: round(args.concurrency * count / total_led)
                       for node, count in led.items()}
        go = {"warmup": args.warmup, "duration": args.duration, "concurrency": concurrency,
              "probe_writes": 200}
        for process in processes:
            assert process.stdin is not None
            process.stdin.write(json.dumps(go) + "\n")
            process.stdin.flush()
        results = []
        for process in processes:
            assert process.stdout is not None
            while True:
                line = process.stdout.readline()
                if not line:
                    raise ConfigError("a shard-bench worker exited before it reported")
                if line.startswith("{") and "result" in (report := json.loads(line)):
                    results.append(report["result"])
                    break
        for process in processes:
            process.communicate("stop\n", timeout=60)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
        shutil.rmtree(workdir, ignore_errors=True)
    output = {
        "shards": args.shards, "idle": bool(args.idle), "nodes": args.nodes,
        "fsync": bool(args.fsync), "payload_bytes": args.payload,
        "implementation": IMPLEMENTATION, "version": __version__, "cpus": os.cpu_count(),
        "python": platform.python_version(), "per_process": results,
    }
    if not args.idle:
        output["ops_per_s"] = sum(r["ops"] for r in results) / args.duration
        output["fsyncs_per_s"] = [r["fsyncs_per_s"] for r in results]
    _print(output, args)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(output, handle, indent=2)
    return 0


def _print(output: dict[str, Any], args: argparse.Namespace) -> None:
    header = (f"engine shards bench: {output['shards']} groups per process, {output['nodes']} "
              f"processes, {output['implementation']} core, "
              f"{'fsync' if output['fsync'] else 'no fsync'}, "
              f"{'idle' if output['idle'] else f'concurrency {args.concurrency}'}")
    print(header)
    for r in output["per_process"]:
        if output["idle"]:
            probe = r["probe_latency_ms"]
            print(f"  node {r['node_id']}: leads {r['led']}, CPU {r['cpu_percent']:.1f}% of a "
                  f"core, RSS {r['rss_bytes'] / 2**20:.0f} MiB "
                  f"({r['rss_per_group_bytes'] / 1024:.1f} KiB per group), awake after idle "
                  f"{r['awake_groups_after_idle']}, one group's write p50 "
                  f"{_ms(probe['p50'])} p99 {_ms(probe['p99'])}")
        else:
            lat = r["latency_ms"]
            print(f"  node {r['node_id']}: leads {r['led']}, {r['ops'] / args.duration:,.0f} "
                  f"writes/s, p50 {_ms(lat['p50'])} p99 {_ms(lat['p99'])}, CPU "
                  f"{r['cpu_percent']:.0f}%, fsyncs/s {r['fsyncs_per_s']:.0f}")
    if not output["idle"]:
        print(f"  total: {output['ops_per_s']:,.0f} writes/s")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} ms"


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        sys.exit(_worker_main(sys.argv[2]))
    print("usage: python -m engine bench --shards N [--idle] (see engine/benchmark_shards.py)",
          file=sys.stderr)
    sys.exit(2)

"""`python -m engine bench`: throughput and latency of a local cluster on loopback UDP.

Theory of operation
-------------------
A run starts a cluster, makes node 1 leader, drives writes for --warmup + --duration seconds
and reports what was measured in the --duration window, with the conditions:

* Nodes: node 1 always runs in this process (so the profiler can watch it and its CPU is this
  process's); with --processes separate (default) the others are `python -m engine serve`
  processes, with --processes one they are in this process too (LocalCluster).
* Load: --clients library proposes from the leader's process as a library user would
  (`await node.submit(cmd)`, propose without a coroutine per write); --clients udp runs
  --client-processes load generators
  (`python -m engine.benchmark --load-generator SPEC`, this module's __main__), each an
  engine.Client over UDP with its share of the --concurrency outstanding writes.
  --concurrency is always the total number of requests outstanding at any time.
* Latency: every write in the window is timed (caller's view) and kept in an HdrHistogram
  (microseconds, 3 significant digits); throughput counts writes completed in the window.
* CPU: per process, from getrusage (this process) and /proc/<pid>/stat (children), as % of
  one core over the window.
* --profile attaches engine.profiling.LatencyProfiler to the leader (per-stage breakdown).
* --sweep concurrency=1,4,16 runs one measurement per value on the same cluster and writes a
  JSON table and PNG plots to --out.

Benchmarks are never timed assertions in the test suite (DESIGN.md §7).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from hdrh.histogram import HdrHistogram

from engine.config import Limits
from engine.errors import ConfigError, EngineError

# Latency histograms are in microseconds: 1 us .. 100 s, 3 significant digits.
_HIST_HIGHEST_US = 100_000_000
# Percentiles plotted as the latency CDF and kept in the JSON.
CDF_PERCENTILES = (0, 1, 5, 10, 20, 30, 40, 50, 60, 70, 75, 80, 85, 90, 95, 97.5, 99, 99.5,
                   99.9, 99.95, 99.99, 100)
SWEEPABLE = ("concurrency", "payload")
_KEY_SPACE = 4096
# A UDP client request carries the command plus a session header in one datagram.
_REQUEST_OVERHEAD_BYTES = 512


# ---------------------------------------------------------------------------- arguments


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--protocol", default="raft", choices=["raft", "paxos"])
    parser.add_argument("--nodes", type=int, default=3, help="cluster size (1, 3, 5 or 7)")
    parser.add_argument("--processes", default="separate", choices=["separate", "one"],
                        help="nodes as separate processes (default) or all in this process")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    parser.add_argument("--payload", type=int, default=100, help="value bytes per write")
    parser.add_argument("--concurrency", type=int, default=1024,
                        help="writes outstanding at any time (in total)")
    parser.add_argument("--clients", default="library", choices=["library", "udp"],
                        help="library: proposals in the leader's process; udp: engine.Client "
                             "load generators in separate processes")
    parser.add_argument("--client-processes", type=int, default=None,
                        help="load-generator processes with --clients udp (default 2)")
    durability = parser.add_mutually_exclusive_group()
    durability.add_argument("--fsync", action="store_true",
                            help="durable: WAL on disk, fsync before every acknowledgement")
    durability.add_argument("--no-fsync", dest="fsync", action="store_false",
                            help="in-memory nodes (default)")
    parser.add_argument("--data-dir", default=None,
                        help="with --fsync: put the nodes' WALs under this directory "
                             "(default: a temporary directory, removed afterwards)")
    parser.add_argument("--profile", action="store_true",
                        help="split each write's latency on the leader into stages")
    parser.add_argument("--sweep", metavar="PARAM=V1,V2,...", default=None,
                        help="one measurement per value, e.g. concurrency=1,4,16,64,256,1024; "
                             f"PARAM is one of {', '.join(SWEEPABLE)}")
    parser.add_argument("--out", default="bench-out", metavar="DIR",
                        help="with --sweep: directory for sweep.json and the PNG plots")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    from engine.benchmark_shards import add_shard_arguments

    add_shard_arguments(parser)


def parse_sweep(text: str) -> tuple[str, list[int]]:
    name, sep, values_text = text.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or name not in SWEEPABLE:
        raise ConfigError(f"--sweep must look like concurrency=1,4,16 (PARAM one of "
                          f"{', '.join(SWEEPABLE)}), got {text!r}")
    try:
        values = [int(v) for v in values_text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--sweep values must be integers, got {values_text!r}") from None
    if not values:
        raise ConfigError("--sweep names no value")
    return name, values


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse settings that cannot run, with a message that says why."""
    limits = Limits()
    if args.nodes not in (1, 3, 5, 7):
        raise ConfigError(f"--nodes must be 1, 3, 5 or 7 (an even size tolerates no more "
                          f"failures than the odd size below it), got {args.nodes}")
    if args.duration <= 0:
        raise ConfigError(f"--duration must be positive, got {args.duration}")
    if args.warmup < 0:
        raise ConfigError(f"--warmup must not be negative, got {args.warmup}")
    if args.client_processes is not None and args.clients != "udp":
        raise ConfigError("--client-processes applies only to --clients udp")
    if args.clients == "udp" and args.client_processes is None:
        args.client_processes = 2
    if args.clients == "udp" and args.client_processes < 1:
        raise ConfigError(f"--client-processes must be at least 1, got {args.client_processes}")
    points = [args]
    if args.sweep:
        name, values = parse_sweep(args.sweep)
        points = [_with(args, name, value) for value in values]
    for point in points:
        _check_point(point, limits)
    if args.data_dir is not None and not args.fsync:
        raise ConfigError("--data-dir needs --fsync (without it the nodes keep their log in "
                          "memory)")


def _check_point(point: argparse.Namespace, limits: Limits) -> None:
    if not 1 <= point.concurrency <= limits.max_pending_proposals:
        raise ConfigError(f"--concurrency must be 1..{limits.max_pending_proposals} "
                          f"(Limits.max_pending_proposals), got {point.concurrency}")
    max_payload = limits.max_entry_bytes - _REQUEST_OVERHEAD_BYTES
    if point.clients == "udp":
        # engine.Client sends each request in one datagram.
        max_payload = limits.max_datagram_bytes - _REQUEST_OVERHEAD_BYTES
    if not 0 <= point.payload <= max_payload:
        raise ConfigError(f"--payload must be 0..{max_payload} bytes with --clients "
                          f"{point.clients}, got {point.payload}")
    if point.clients == "udp" and point.client_processes > point.concurrency:
        raise ConfigError(f"--client-processes {point.client_processes} exceeds --concurrency "
                          f"{point.concurrency}: each load generator needs at least one "
                          "outstanding write")


def _with(args: argparse.Namespace, name: str, value: int) -> argparse.Namespace:
    point = copy.copy(args)
    setattr(point, name, value)
    return point


# ---------------------------------------------------------------------------- entry point


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_bench(args: argparse.Namespace) -> int:
    if getattr(args, "shards", None) is not None:
        from engine.benchmark_shards import run_shard_bench

        return run_shard_bench(args)
    check_arguments(args)
    # SIGTERM (and SIGINT, even if inherited as ignored) unwind through the finally blocks,
    # so every node and load-generator process this run started is stopped by its PID.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(signal.SIGINT, _interrupt)
    from engine.aio.loop import new_event_loop

    started: list[subprocess.Popen[bytes]] = []
    workdirs: list[str] = []
    loop = new_event_loop()
    try:
        if args.sweep:
            name, values = parse_sweep(args.sweep)
            results = _run(loop, _run_points(
                args, [_with(args, name, value) for value in values], started, workdirs))
            for result in results:
                print_result(result)
            output: Any = {"sweep": name, "points": results}
            # The results are on disk before plotting starts: a plotting failure never
            # loses a run.
            write_json(args.json, output)
            paths = [write_sweep_json(results, name, args.out)]
            try:
                paths += plot_sweep(results, name, args.out)
            except Exception:
                print(f"the plots failed; the results are in {', '.join(paths)}",
                      file=sys.stderr)
                raise
            print(f"\nsweep over {name}: wrote {', '.join(paths)}")
        else:
            output = _run(loop, _run_points(args, [args], started, workdirs))[0]
            print_result(output)
            write_json(args.json, output)
    finally:
        # Normally BenchCluster.close already did this; after an interrupt (Ctrl-C, SIGTERM)
        # the coroutines never resume, so stop every process by PID and remove the dirs here.
        stop_processes(started)
        for workdir in workdirs:
            shutil.rmtree(workdir, ignore_errors=True)
        loop.close()
    return 0


def write_json(path: str | None, output: Any) -> None:
    """--json FILE: the result (or the sweep), if asked for."""
    if path:
        with open(path, "w") as handle:
            json.dump(output, handle, indent=2)


def _run(loop: asyncio.AbstractEventLoop, coroutine: Any) -> Any:
    """run_until_complete, but an interrupt cancels the run and lets it clean up first."""
    task = loop.create_task(coroutine)
    try:
        return loop.run_until_complete(task)
    except KeyboardInterrupt:
        task.cancel()
        with contextlib.suppress(BaseException):
            loop.run_until_complete(task)
        raise


async def _run_points(args: argparse.Namespace, points: list[argparse.Namespace],
                      started: list[subprocess.Popen[bytes]], workdirs: list[str]
                      ) -> list[dict[str, Any]]:
    from engine.aio.loop import loop_name

    async with BenchCluster(args, started, workdirs) as cluster:
        results = []
        for point in points:
            result = await measure(cluster, point)
            result["conditions"]["event_loop"] = loop_name(asyncio.get_running_loop())
            results.append(result)
        return results


# ---------------------------------------------------------------------------- the cluster


class BenchCluster:
    """Node 1 (leader) in this process; the others as processes or in this process."""

    def __init__(self, args: argparse.Namespace,
                 started: list[subprocess.Popen[bytes]] | None = None,
                 workdirs: list[str] | None = None) -> None:
        self.args = args
        # Shared with run_bench, which stops/removes them if the run is interrupted.
        self.started = started if started is not None else []
        self.workdirs = workdirs if workdirs is not None else []
        self.workdir = ""
        self.key = os.urandom(32)
        self.key_file = ""
        self.members: dict[int, str] = {}
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.nodes: list[Any] = []
        self.leader: Any = None

    async def __aenter__(self) -> BenchCluster:
        try:
            await self._start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _data_dir(self, node_id: int) -> str | None:
        if not self.args.fsync:
            return None
        return os.path.join(self.workdir, f"n{node_id}")

    async def _start(self) -> None:
        from engine.aio.local_cluster import free_udp_ports
        from engine.aio.node import Node
        from engine.config import NodeConfig
        from engine.kv import KVStore

        args = self.args
        base = args.data_dir if args.data_dir is not None else None
        if base is not None:
            os.makedirs(base, exist_ok=True)
        self.workdir = tempfile.mkdtemp(prefix="engine-bench-", dir=base)
        self.workdirs.append(self.workdir)
        self.key_file = os.path.join(self.workdir, "cluster.key")
        with open(self.key_file, "w") as handle:
            handle.write(self.key.hex())
        ports = free_udp_ports(args.nodes)
        self.members = {i: f"127.0.0.1:{port}" for i, port in enumerate(ports, 1)}
        in_process = list(self.members) if args.processes == "one" else [1]
        for node_id in in_process:
            config = NodeConfig(node_id=node_id, members=dict(self.members),
                                protocol=args.protocol, cluster_key=self.key,
                                data_dir=self._data_dir(node_id))
            node = Node(config, KVStore())
            await node.start()
            self.nodes.append(node)
        self.leader = self.nodes[0]
        members_arg = ",".join(f"{i}={a}" for i, a in self.members.items())
        for node_id in self.members:
            if node_id in in_process:
                continue
            # Warnings and errors only: a node's INFO events (snapshots every second at these
            # rates) would bury the benchmark's own output.
            command = [sys.executable, "-m", "engine", "--log-level", "warning", "serve",
                       "--node-id", str(node_id),
                       "--members", members_arg, "--cluster-key-file", self.key_file,
                       "--protocol", args.protocol]
            data_dir = self._data_dir(node_id)
            if data_dir is not None:
                command += ["--data-dir", data_dir]
            self.processes[node_id] = subprocess.Popen(command, stdin=subprocess.DEVNULL)
            self.started.append(self.processes[node_id])
        await self._make_leader()

    async def _make_leader(self) -> None:
        """Campaign until node 1 leads a quorum (the other processes may still be starting)."""
        from engine.kv import commands

        node = self.leader
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while loop.time() < deadline:
            for node_id, process in self.processes.items():
                if process.poll() is not None:
                    raise ConfigError(f"node {node_id}'s process exited early with status "
                                      f"{process.returncode}")
            if node.core.role != "leader":
                await self._move_leadership_here(node)
            await asyncio.sleep(0.3)
            if node.core.role == "leader":
                try:  # one committed write proves a quorum follows
                    await node.propose(commands.encode_put(b"bench-ready", b"1"), timeout=2.0)
                    return
                except Exception:
                    continue
        raise ConfigError("node 1 did not become leader within 30 s")

    async def _move_leadership_here(self, node: Any) -> None:
        """Campaign when no leader is known; otherwise ask the leader to transfer to node 1
        (a campaign alone is ignored while followers hear from a live leader, §4.2.3)."""
        leader_id = node.core.leader_id
        if not leader_id or leader_id == node.node_id:
            node.campaign()
            return
        if self.args.protocol != "raft":
            node.campaign()  # a Paxos campaign is a forced phase 1
            return
        from engine.aio.client import Client

        async with Client([node.config.members[leader_id]],
                          cluster_key=node.config.cluster_key) as client:
            with contextlib.suppress(EngineError):
                await client.transfer_leadership(node.node_id, timeout=3.0)

    def node_pids(self) -> dict[str, int]:
        return {f"node {i}": p.pid for i, p in self.processes.items()}

    async def close(self) -> None:
        for node in self.nodes:
            if node.running:
                await node.stop()
        stop_processes(list(self.processes.values()))
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def stop_processes(processes: list[subprocess.Popen[Any]], timeout: float = 5.0) -> None:
    """SIGTERM each (by its PID), wait, SIGKILL what is still alive."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ---------------------------------------------------------------------------- CPU


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu_seconds(pid: int | None) -> float | None:
    """user+system CPU seconds of a process (None: this one) or None if unreadable."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # Fields after "(comm)": state is [0], utime [11], stime [12] (proc(5): 14 and 15).
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


class CpuMeter:
    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = pids
        self.before: dict[str, float | None] = {}
        self.started = 0.0

    def start(self) -> None:
        self.started = time.perf_counter()
        self.before = {name: process_cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self) -> dict[str, float | None]:
        wall = time.perf_counter() - self.started
        out: dict[str, float | None] = {}
        for name, pid in self.pids.items():
            after = process_cpu_seconds(pid)
            before = self.before.get(name)
            out[name] = (None if after is None or before is None or wall <= 0
                         else round(100.0 * (after - before) / wall, 1))
        return out


# ---------------------------------------------------------------------------- latency


def new_histogram() -> HdrHistogram:
    return HdrHistogram(1, _HIST_HIGHEST_US, 3)


def histogram_from_ns(latencies_ns: list[int]) -> HdrHistogram:
    """Record many latencies at once: bucket to microseconds first (HdrHistogram's own
    resolution at 3 digits is coarser above 1 ms), then one record per distinct value."""
    histogram = new_histogram()
    if latencies_ns:
        micros = np.clip(np.asarray(latencies_ns, dtype=np.int64) // 1000, 1, _HIST_HIGHEST_US)
        values, counts = np.unique(micros, return_counts=True)
        for value, count in zip(values.tolist(), counts.tolist(), strict=True):
            histogram.record_value(value, count)
    return histogram


def latency_summary(histogram: HdrHistogram) -> dict[str, float | None]:
    count = histogram.get_total_count()
    out: dict[str, float | None] = {}
    for percentile in (50, 90, 99, 99.9):
        out[f"p{percentile}"] = (histogram.get_value_at_percentile(percentile) / 1000
                                 if count else None)
    out["max"] = histogram.get_max_value() / 1000 if count else None
    out["mean"] = histogram.get_mean_value() / 1000 if count else None
    return out


def latency_cdf(histogram: HdrHistogram) -> list[list[float]]:
    if not histogram.get_total_count():
        return []
    return [[p, histogram.get_value_at_percentile(p) / 1000] for p in CDF_PERCENTILES]


# ---------------------------------------------------------------------------- measuring


async def measure(cluster: BenchCluster, args: argparse.Namespace) -> dict[str, Any]:
    """One measurement: --warmup then --duration seconds of load at args' settings."""
    import engine

    profiler = None
    if args.profile:
        from engine.profiling import LatencyProfiler

        profiler = LatencyProfiler(args.nodes)
        cluster.leader.attach_profiler(profiler)
    here = "node 1 (this process)" if args.processes == "separate" else \
        f"nodes 1-{args.nodes} (this process)"
    if args.clients == "library":
        here = here.replace(" (this process)", " + library load (this process)")
    pids: dict[str, int | None] = {here: None, **cluster.node_pids()}
    try:
        if args.clients == "library":
            outcome = await _drive_library(cluster.leader, args, pids, profiler)
        else:
            outcome = await _drive_udp(cluster, args, pids, profiler)
    finally:
        if profiler is not None:
            cluster.leader.attach_profiler(None)
    histogram: HdrHistogram = outcome["histogram"]
    ops = histogram.get_total_count()
    cpu = outcome["cpu"]
    result: dict[str, Any] = {
        "ops_per_s": ops / args.duration,
        "mb_per_s": ops * args.payload / args.duration / 1e6,
        "committed_ops": ops,
        "errors": outcome["errors"],
        "latency_ms": latency_summary(histogram),
        "latency_cdf": latency_cdf(histogram),
        "leader_cpu_percent": next(iter(cpu.values())),
        "cpu_percent": cpu,
        "conditions": {
            "protocol": args.protocol, "nodes": args.nodes, "payload_bytes": args.payload,
            "concurrency": args.concurrency, "fsync": bool(args.fsync),
            "duration_s": args.duration, "warmup_s": args.warmup,
            "clients": ("library (proposals in the leader's process)"
                        if args.clients == "library" else
                        f"udp (engine.Client in {args.client_processes} load-generator "
                        "processes)"),
            "processes": ("node 1 in this process, others as `python -m engine serve`"
                          if args.processes == "separate" else "all nodes in this process"),
            "profiled": bool(args.profile),
            "implementation": engine.IMPLEMENTATION, "version": engine.__version__,
            "cpus": os.cpu_count(),
            "python": platform.python_version(), "machine": platform.machine(),
        },
    }
    if "client_counters" in outcome:
        result["client_counters"] = outcome["client_counters"]
    if profiler is not None:
        result["profile"] = profiler.summary()
    return result


class _Window:
    """The warmup/measure schedule on the loop clock, with the hooks run at its edges."""

    def __init__(self, args: argparse.Namespace, start: float) -> None:
        self.start = start
        self.measure_from = start + args.warmup
        self.stop_at = self.measure_from + args.duration


async def _run_window(window: _Window, on_measure: Callable[[], None],
                      on_stop: Callable[[], None], done: Callable[[], int]) -> None:
    """Sleep through the schedule (showing progress, _Progress) calling the hooks."""
    loop = asyncio.get_running_loop()
    with _Progress(window.stop_at - window.start) as progress:
        measuring = False
        while True:
            now = loop.time()
            if not measuring and now >= window.measure_from:
                measuring = True
                on_measure()
            if now >= window.stop_at:
                on_stop()
                return
            progress.update(now - window.start, "measuring" if measuring else "warmup", done())
            next_edge = window.stop_at if measuring else window.measure_from
            await asyncio.sleep(max(0.0, min(0.25, next_edge - now)))


async def _closed_loop(operation: Callable[[int], Awaitable[Any]], concurrency: int,
                       measure_from: float, stop_at: float) -> tuple[list[int], int]:
    """`concurrency` workers, each awaiting operation(i) back to back (i = its offset, then
    += concurrency) until stop_at (loop time). Returns the latencies in ns of the operations
    that finished inside [measure_from, stop_at) and the number that raised.

    The load shares the leader's CPU in library mode, so a worker reads one clock per write:
    the window's edges are converted to perf_counter_ns once."""
    loop = asyncio.get_running_loop()
    perf = time.perf_counter_ns
    offset_ns = perf() - int(loop.time() * 1e9)
    measure_from_ns = int(measure_from * 1e9) + offset_ns
    stop_at_ns = int(stop_at * 1e9) + offset_ns
    latencies: list[int] = []
    errors = 0

    async def worker(offset: int) -> None:
        nonlocal errors
        record = latencies.append
        i = offset
        started = perf()
        while started < stop_at_ns:
            try:
                await operation(i)
            except Exception:
                errors += 1
                await asyncio.sleep(0)  # refused at the call (Overloaded): let the loop run
                started = perf()
                continue
            finished = perf()
            if measure_from_ns <= finished < stop_at_ns:
                record(finished - started)
            started = finished
            i += concurrency

    await asyncio.gather(*(worker(offset) for offset in range(concurrency)))
    return latencies, errors


async def _drive_library(node: Any, args: argparse.Namespace, pids: dict[str, int | None],
                         profiler: Any) -> dict[str, Any]:
    from engine.kv import commands

    value = os.urandom(args.payload)
    payloads = [commands.encode_put(b"key-%d" % i, value) for i in range(_KEY_SPACE)]
    loop = asyncio.get_running_loop()
    window = _Window(args, loop.time())
    count = len(payloads)
    meter = CpuMeter(pids)
    submit = node.submit
    load = asyncio.ensure_future(_closed_loop(
        lambda i: submit(payloads[i % count]), args.concurrency,
        window.measure_from, window.stop_at))
    applied_at_start = node.counters["applied"]

    def on_measure() -> None:
        meter.start()
        if profiler is not None:
            profiler.start()

    cpu: dict[str, float | None] = {}

    def on_stop() -> None:
        cpu.update(meter.stop())
        if profiler is not None:
            profiler.stop()

    await _run_window(window, on_measure, on_stop,
                      lambda: node.counters["applied"] - applied_at_start)
    latencies, errors = await load
    return {"histogram": histogram_from_ns(latencies), "errors": errors, "cpu": cpu}


async def _drive_udp(cluster: BenchCluster, args: argparse.Namespace,
                     pids: dict[str, int | None], profiler: Any) -> dict[str, Any]:
    """Load generators in separate processes: start, wait until each has a leader, go."""
    shares = [args.concurrency // args.client_processes] * args.client_processes
    for i in range(args.concurrency % args.client_processes):
        shares[i] += 1
    generators: list[subprocess.Popen[bytes]] = []
    loop = asyncio.get_running_loop()
    try:
        for number, share in enumerate(shares):
            spec = {"addresses": [cluster.members[1]], "key_file": cluster.key_file,
                    "concurrency": share, "payload": args.payload, "warmup": args.warmup,
                    "duration": args.duration, "generator": number}
            generators.append(subprocess.Popen(
                [sys.executable, "-m", "engine.benchmark", "--load-generator", json.dumps(spec)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE))
            cluster.started.append(generators[-1])
        for number, generator in enumerate(generators):
            pids[f"load generator {number + 1}"] = generator.pid
        for generator in generators:
            assert generator.stdout is not None
            line = await loop.run_in_executor(None, generator.stdout.readline)
            if line.strip() != b"ready":
                raise ConfigError(f"a load generator failed to start (said {line!r})")
        start_wall = time.time() + 0.05
        for generator in generators:
            assert generator.stdin is not None
            generator.stdin.write(f"go {start_wall!r}\n".encode())
            generator.stdin.flush()
        await asyncio.sleep(max(0.0, start_wall - time.time()))
        window = _Window(args, loop.time())
        meter = CpuMeter(pids)
        cpu: dict[str, float | None] = {}
        applied_at_start = cluster.leader.counters["applied"]

        def on_measure() -> None:
            meter.start()
            if profiler is not None:
                profiler.start()

        def on_stop() -> None:
            cpu.update(meter.stop())
            if profiler is not None:
                profiler.stop()

        await _run_window(window, on_measure, on_stop,
                          lambda: cluster.leader.counters["applied"] - applied_at_start)
        histogram = new_histogram()
        errors = 0
        counters: dict[str, int] = {}
        for generator in generators:
            stdout, _ = await loop.run_in_executor(None, generator.communicate)
            if generator.returncode != 0:
                raise ConfigError(f"a load generator exited with status {generator.returncode}")
            report = json.loads(stdout)
            histogram.decode_and_add(report["histogram"])
            errors += report["errors"]
            for name, value in report["counters"].items():
                counters[name] = counters.get(name, 0) + value
        return {"histogram": histogram, "errors": errors, "cpu": cpu,
                "client_counters": counters}
    finally:
        stop_processes(generators)


# Without a terminal (CI logs, `2> file`) progress is one line per this many seconds.
PROGRESS_LINE_INTERVAL_S = 5.0


class _Progress:
    """A rich progress bar on a terminal (stderr); otherwise a plain line on stderr when the
    phase changes and every PROGRESS_LINE_INTERVAL_S seconds, so a long run in a log is
    visibly alive."""

    def __init__(self, total_s: float) -> None:
        self.total_s = total_s
        self._progress: Any = None
        self._task: Any = None
        self._last_line: tuple[str, float] | None = None   # phase, elapsed of the last line

    def __enter__(self) -> _Progress:
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn(),
                TextColumn("{task.fields[ops]:>10,} ops"),
                console=Console(stderr=True), transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task("warmup", total=self.total_s, ops=0)
        return self

    def update(self, elapsed_s: float, phase: str, ops: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=elapsed_s, description=phase, ops=ops)
            return
        last = self._last_line
        if last is None or last[0] != phase or elapsed_s - last[1] >= PROGRESS_LINE_INTERVAL_S:
            self._last_line = (phase, elapsed_s)
            print(f"bench: {phase} {elapsed_s:.0f}/{self.total_s:.0f} s, {ops:,} ops",
                  file=sys.stderr, flush=True)

    def __exit__(self, *exc_info: object) -> None:
        if self._progress is not None:
            self._progress.stop()


# ---------------------------------------------------------------------------- load generator


async def _load_generator(spec: dict[str, Any]) -> dict[str, Any]:
    """One load-generator process: engine.Client writes, `concurrency` outstanding."""
    from engine.aio.client import Client

    with open(spec["key_file"]) as handle:
        key = bytes.fromhex(handle.read().strip())
    loop = asyncio.get_running_loop()
    value = os.urandom(spec["payload"])
    prefix = b"g%d-" % spec["generator"]
    keys = [prefix + b"%d" % i for i in range(_KEY_SPACE)]
    latencies: list[int] = []
    errors = 0
    async with Client(spec["addresses"], cluster_key=key, timeout=60.0,
                      attempt_timeout=2.0) as client:
        await client.put(prefix + b"ready", b"1")  # finds the leader before the clock starts
        print("ready", flush=True)
        line = await loop.run_in_executor(None, sys.stdin.readline)
        start_wall = float(line.split()[1])
        await asyncio.sleep(max(0.0, start_wall - time.time()))
        start = loop.time()
        measure_from = start + spec["warmup"]
        stop_at = measure_from + spec["duration"]
        cpu_before = process_cpu_seconds(None)
        latencies, errors = await _closed_loop(
            lambda i: client.put(keys[i % _KEY_SPACE], value), spec["concurrency"],
            measure_from, stop_at)
        cpu_after = process_cpu_seconds(None)
        counters = dict(client.counters)
    histogram = histogram_from_ns(latencies)
    return {"histogram": histogram.encode().decode("ascii"), "errors": errors,
            "counters": counters,
            "cpu_s": (cpu_after or 0.0) - (cpu_before or 0.0)}


def _load_generator_main(spec_text: str) -> int:
    from engine.aio.loop import new_event_loop

    signal.signal(signal.SIGTERM, signal.default_int_handler)
    spec = json.loads(spec_text)
    loop = new_event_loop()
    try:
        report = _run(loop, _load_generator(spec))
    except KeyboardInterrupt:  # stopped by the bench: nothing to report
        return 130
    finally:
        loop.close()
    sys.stdout.write(json.dumps(report) + "\n")
    return 0


# ---------------------------------------------------------------------------- output


def print_result(result: dict[str, Any]) -> None:
    c = result["conditions"]
    lat = result["latency_ms"]

    def ms(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f} ms"

    print()
    print(f"engine {c.get('version', '?')} bench: {c['protocol']}, {c['nodes']} nodes on "
          "loopback UDP, "
          f"{c['payload_bytes']}-byte values, {c['concurrency']} outstanding, "
          f"fsync={'on' if c['fsync'] else 'off'}, {c['implementation']} core, "
          f"{c.get('event_loop', '?')} loop, {c['cpus']} CPUs")
    print(f"  clients:   {c['clients']}; {c['processes']}"
          + ("; PROFILED (slower than unprofiled)" if c["profiled"] else ""))
    print(f"  committed: {result['ops_per_s']:,.0f} ops/s  ({result['mb_per_s']:.2f} MB/s of "
          f"values, {result['committed_ops']:,} ops in {c['duration_s']} s)")
    print(f"  latency:   p50 {ms(lat['p50'])}  p90 {ms(lat['p90'])}  p99 {ms(lat['p99'])}  "
          f"p99.9 {ms(lat['p99.9'])}  max {ms(lat['max'])}")
    cpu = ", ".join(f"{name} {'n/a' if value is None else f'{value:.0f}%'}"
                    for name, value in result["cpu_percent"].items())
    print(f"  CPU (% of one core): {cpu}")
    if result["errors"]:
        print(f"  errors: {result['errors']} writes failed during the run")
    counters = result.get("client_counters")
    if counters and counters.get("retries"):
        print(f"  client retries: {counters['retries']}")
    if "profile" in result:
        from engine.profiling import format_summary

        print(format_summary(result["profile"]))


def _swept_values(results: list[dict[str, Any]], name: str) -> list[Any]:
    key = {"concurrency": "concurrency", "payload": "payload_bytes"}[name]
    return [r["conditions"][key] for r in results]


def write_sweep_json(results: list[dict[str, Any]], name: str, out_dir: str) -> str:
    """out_dir/sweep.json: a table of the sweep plus every point's full result; its path."""
    os.makedirs(out_dir, exist_ok=True)
    table = [{name: x, "ops_per_s": r["ops_per_s"], "mb_per_s": r["mb_per_s"],
              **{f"{p}_ms": r["latency_ms"][p] for p in ("p50", "p90", "p99", "p99.9", "max")},
              "cpu_percent": r["cpu_percent"]}
             for x, r in zip(_swept_values(results, name), results, strict=True)]
    path = os.path.join(out_dir, "sweep.json")
    with open(path, "w") as handle:
        json.dump({"sweep": name, "table": table, "points": results}, handle, indent=2)
    return path


def plot_sweep(results: list[dict[str, Any]], name: str, out_dir: str) -> list[str]:
    """Throughput, latency-vs-throughput and CDF plots (PNG) in out_dir; their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    xs = _swept_values(results, name)
    throughput = [r["ops_per_s"] for r in results]
    paths: list[str] = []
    c = results[0]["conditions"]
    title = (f"{c['protocol']}, {c['nodes']} nodes, fsync={'on' if c['fsync'] else 'off'}, "
             f"{c['clients'].split(' ')[0]} clients")

    figure, axes = plt.subplots(figsize=(7, 4.5))
    axes.plot(xs, throughput, marker="o")
    axes.set_xscale("log", base=2)
    axes.set_xlabel(name)
    axes.set_ylabel("committed ops/s")
    axes.set_title(f"throughput vs {name} ({title})")
    axes.grid(True, alpha=0.3)
    paths.append(os.path.join(out_dir, f"throughput_vs_{name}.png"))
    figure.savefig(paths[-1], dpi=100, bbox_inches="tight")
    plt.close(figure)

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for percentile in ("p50", "p90", "p99", "p99.9"):
        axes.plot(throughput, [r["latency_ms"][percentile] for r in results], marker="o",
                  label=percentile)
    for x, t, r in zip(xs, throughput, results, strict=True):
        axes.annotate(f"{name}={x}", (t, r["latency_ms"]["p50"] or 0), fontsize=7,
                      textcoords="offset points", xytext=(3, -10))
    axes.set_yscale("log")
    axes.set_xlabel("committed ops/s")
    axes.set_ylabel("latency (ms)")
    axes.set_title(f"latency percentiles vs throughput ({title})")
    axes.legend()
    axes.grid(True, alpha=0.3)
    paths.append(os.path.join(out_dir, "latency_vs_throughput.png"))
    figure.savefig(paths[-1], dpi=100, bbox_inches="tight")
    plt.close(figure)

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for x, r in zip(xs, results, strict=True):
        cdf = r["latency_cdf"]
        if cdf:
            axes.plot([v for _, v in cdf], [p / 100 for p, _ in cdf], label=f"{name}={x}")
    axes.set_xscale("log")
    axes.set_xlabel("latency (ms)")
    axes.set_ylabel("fraction of writes")
    axes.set_title(f"latency CDF ({title})")
    axes.legend(fontsize=8)
    axes.grid(True, alpha=0.3)
    paths.append(os.path.join(out_dir, "latency_cdf.png"))
    figure.savefig(paths[-1], dpi=100, bbox_inches="tight")
    plt.close(figure)
    return paths


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--load-generator":
        sys.exit(_load_generator_main(sys.argv[2]))
    print("usage: python -m engine.benchmark --load-generator SPEC_JSON "
          "(internal; use `python -m engine bench`)", file=sys.stderr)
    sys.exit(2)

"""Side-by-side: engine vs PySyncObj vs etcd, same machine, same run
(method and results: docs/performance.md).

    python bench/compare_peers.py            # 3 repetitions of 10 s each per system and scenario
    python bench/compare_peers.py --quick    # 1 repetition of 3 s (a smoke run, noisier)

Scenarios (3 nodes on loopback, 100-byte values, the same for every system in a scenario):

  library   no fsync, writes from the leader's own process, --concurrency outstanding:
            engine (`python -m engine bench --clients library --no-fsync`) vs PySyncObj
            0.3.17 (in-memory journal, `@replicated` calls with callbacks in the leader process,
            as its docs drive it).
  external  fsync on, external client processes, --external-concurrency outstanding:
            engine (`--clients udp --fsync`, engine.Client load generators) vs etcd 3.4
            (Debian's etcd-server; bench/etcd_load, a Go clientv3 generator shaped like etcd's
            own `benchmark put`: --etcd-conns connections shared by the writers).
  single    fsync on, one external client, one write outstanding: engine vs etcd.

Each system's run starts its own cluster (own data dirs in a temp dir) and stops every process
it started by PID (SIGINT/SIGTERM, then SIGKILL) in a finally block, also on Ctrl-C. Repetitions
go round robin over the systems of a scenario (engine, peer, engine, peer, ...). The table
shows medians over the repetitions and the ratio engine/peer (throughput: higher is better for
engine; latency: lower is better for engine). Missing tools are installed: PySyncObj with pip,
etcd/Go/etcd client sources with apt-get (Debian packages), the Go generator is built offline
against /usr/share/gocode. If that build fails, a weaker Python generator (HTTP JSON gateway,
threads) runs instead and the output says so.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PAYLOAD = 100
NODES = 3
TARGETS = (
    "library:  engine >= 20x PySyncObj throughput (no fsync)",
    "external: engine >= 2x etcd throughput (fsync), p99 <= etcd's p99",
    "single:   engine p50 <= etcd's p50 (fsync, one client)",
)


# ---------------------------------------------------------------------------- processes


class Processes:
    """Every process this script starts, stopped by PID in reverse order."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[Any]] = []

    def start(self, command: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        process = subprocess.Popen(command, **kwargs)
        self.started.append(process)
        return process

    def stop(self, process: subprocess.Popen[Any], first: int = signal.SIGTERM,
             timeout: float = 10.0) -> None:
        if process.poll() is None:
            process.send_signal(first)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process in self.started:
            self.started.remove(process)

    def stop_all(self) -> None:
        for process in reversed(list(self.started)):
            self.stop(process)


def free_tcp_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError):
        return None


# ---------------------------------------------------------------------------- setup


def ensure_pysyncobj() -> str:
    try:
        import pysyncobj  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "pysyncobj==0.3.17"],
                       check=True)
    from pysyncobj import version

    return str(getattr(version, "VERSION", "?"))


def ensure_debian_packages() -> None:
    wanted = {"etcd": "etcd-server", "etcdctl": "etcd-client", "go": "golang-go"}
    missing = [package for tool, package in wanted.items() if shutil.which(tool) is None]
    if not Path("/usr/share/gocode/src/go.etcd.io/etcd/clientv3").is_dir():
        missing.append("golang-etcd-server-dev")
    if missing:
        print(f"installing Debian packages: {' '.join(missing)}", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def build_etcd_load(out_dir: Path) -> Path | None:
    """Build bench/etcd_load offline (GOPATH mode against Debian's Go sources)."""
    binary = out_dir / "etcd_load"
    env = {**os.environ, "GOPATH": "/usr/share/gocode", "GO111MODULE": "off", "GOFLAGS": "",
           "GOPROXY": "off", "GOCACHE": str(Path.home() / ".cache" / "engine-etcd-load")}
    result = subprocess.run(["go", "build", "-o", str(binary), "."], cwd=HERE / "etcd_load",
                            env=env, capture_output=True, text=True)
    if result.returncode != 0:
        print(f"could not build bench/etcd_load:\n{result.stderr}", file=sys.stderr)
        return None
    return binary


# ---------------------------------------------------------------------------- engine


def run_engine(procs: Processes, workdir: Path, scenario: str, args: argparse.Namespace
               ) -> dict[str, Any]:
    out = workdir / "engine.json"
    command = [sys.executable, "-m", "engine", "bench", "--protocol", "raft",
               "--nodes", str(NODES), "--payload", str(PAYLOAD),
               "--duration", str(args.duration), "--warmup", str(args.warmup),
               "--json", str(out)]
    if scenario == "library":
        command += ["--clients", "library", "--no-fsync", "--concurrency", str(args.concurrency)]
    elif scenario == "external":
        command += ["--clients", "udp", "--fsync", "--data-dir", str(workdir),
                    "--concurrency", str(args.external_concurrency)]
    else:
        command += ["--clients", "udp", "--client-processes", "1", "--fsync",
                    "--data-dir", str(workdir), "--concurrency", "1"]
    process = procs.start(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        stdout, _ = process.communicate(timeout=args.duration + args.warmup + 120)
    finally:
        procs.stop(process)  # SIGTERM: the bench's finally blocks stop its own processes
    if process.returncode != 0:
        raise RuntimeError(f"engine bench failed ({process.returncode}):\n{stdout}")
    result = json.loads(out.read_text())
    return {"ops_per_s": result["ops_per_s"], "p50": result["latency_ms"]["p50"],
            "p99": result["latency_ms"]["p99"], "cpu": result["cpu_percent"],
            "generator": result["conditions"]["clients"], "command": " ".join(command[1:])}


# ---------------------------------------------------------------------------- PySyncObj


def pysyncobj_node(spec: dict[str, Any]) -> int:
    """One PySyncObj node; the one that becomes leader drives the load and reports JSON."""
    import numpy as np
    from hdrh.histogram import HdrHistogram
    from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated

    class KV(SyncObj):  # type: ignore[misc]
        def __init__(self, me: str, partners: list[str]) -> None:
            # journalFile=None: in-memory journal, no fsync (PySyncObj's default).
            # appendEntriesUseBatch (default True) sends commands on its tick: throughput;
            # False wakes the loop per command: latency (run both, the table shows each).
            super().__init__(me, partners, SyncObjConf(
                journalFile=None, dynamicMembershipChange=False,
                appendEntriesUseBatch=spec["batch"]))
            self._data: dict[bytes, bytes] = {}

        @replicated  # type: ignore[misc]
        def set(self, key: bytes, value: bytes) -> None:
            self._data[key] = value

    me = spec["addresses"][spec["index"]]
    node = KV(me, [a for a in spec["addresses"] if a != me])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    deadline = time.monotonic() + 30
    while not stop.is_set() and time.monotonic() < deadline:
        status = node.getStatus()
        leader = status["leader"]
        if leader is not None and status["has_quorum"]:
            break
        time.sleep(0.05)
    if str(node.getStatus()["leader"]) != str(node.selfNode):
        stop.wait(3600)  # a follower: serve until stopped
        node.destroy()
        return 0
    value = os.urandom(spec["payload"])
    keys = [b"key-%d" % i for i in range(4096)]
    latencies: list[int] = []
    errors = [0]
    start = time.monotonic()
    measure_from = start + spec["warmup"]
    stop_at = measure_from + spec["duration"]
    perf = time.perf_counter_ns
    concurrency = spec["concurrency"]

    def issue(i: int) -> None:
        t0 = perf()
        node.set(keys[i % 4096], value, callback=lambda result, error: done(i, t0, error))

    def done(i: int, t0: int, error: Any) -> None:  # runs on PySyncObj's thread
        now = time.monotonic()
        if error != FAIL_REASON.SUCCESS:
            errors[0] += 1
        elif measure_from <= now < stop_at:
            latencies.append(perf() - t0)
        if now < stop_at:
            issue(i + concurrency)

    for i in range(concurrency):
        issue(i)
    time.sleep(max(0.0, measure_from - time.monotonic()))
    cpu_at_measure = time.process_time()
    time.sleep(max(0.0, stop_at - time.monotonic()))
    cpu_at_stop = time.process_time()
    time.sleep(0.5)
    histogram = HdrHistogram(1, 100_000_000, 3)
    micros = np.clip(np.asarray(list(latencies), dtype=np.int64) // 1000, 1, 100_000_000)
    for v, c in zip(*np.unique(micros, return_counts=True), strict=True):
        histogram.record_value(int(v), int(c))
    print(json.dumps({
        "ops": histogram.get_total_count(), "errors": errors[0],
        "p50": histogram.get_value_at_percentile(50) / 1000,
        "p99": histogram.get_value_at_percentile(99) / 1000,
        "cpu_percent": 100 * (cpu_at_stop - cpu_at_measure) / spec["duration"],
    }), flush=True)
    stop.wait(60)
    node.destroy()
    return 0


def run_pysyncobj(procs: Processes, args: argparse.Namespace, batch: bool) -> dict[str, Any]:
    ports = free_tcp_ports(NODES)
    addresses = [f"127.0.0.1:{p}" for p in ports]
    nodes = []
    try:
        for index in range(NODES):
            spec = {"addresses": addresses, "index": index, "payload": PAYLOAD,
                    "concurrency": args.concurrency, "warmup": args.warmup,
                    "duration": args.duration, "batch": batch}
            nodes.append(procs.start(
                [sys.executable, str(Path(__file__).resolve()), "--pysyncobj-node",
                 json.dumps(spec)], stdout=subprocess.PIPE, text=True))
        report: dict[str, Any] | None = None
        readers = []
        lock = threading.Lock()

        def read(process: subprocess.Popen[str]) -> None:
            nonlocal report
            assert process.stdout is not None
            line = process.stdout.readline()
            if line.strip():
                with lock:
                    report = json.loads(line)

        for process in nodes:
            thread = threading.Thread(target=read, args=(process,), daemon=True)
            thread.start()
            readers.append(thread)
        deadline = time.monotonic() + 30 + args.warmup + args.duration + 30
        while report is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if report is None:
            raise RuntimeError("PySyncObj: no leader reported a result")
    finally:
        for process in nodes:
            procs.stop(process)
    assert report is not None
    return {"ops_per_s": report["ops"] / args.duration, "p50": report["p50"],
            "p99": report["p99"], "cpu": {"leader": report["cpu_percent"]},
            "generator": f"PySyncObj @replicated calls with callbacks in the leader process, "
                         f"{args.concurrency} outstanding, appendEntriesUseBatch={batch}",
            "errors": report["errors"]}


# ---------------------------------------------------------------------------- etcd


def start_etcd(procs: Processes, workdir: Path) -> tuple[list[str], list[subprocess.Popen[Any]]]:
    ports = free_tcp_ports(2 * NODES)
    names = [f"n{i}" for i in range(1, NODES + 1)]
    peer = {n: f"http://127.0.0.1:{ports[i]}" for i, n in enumerate(names)}
    client = {n: f"http://127.0.0.1:{ports[NODES + i]}" for i, n in enumerate(names)}
    cluster = ",".join(f"{n}={peer[n]}" for n in names)
    processes = []
    for n in names:
        log = open(workdir / f"etcd-{n}.log", "w")  # noqa: SIM115 (closed with the dir)
        processes.append(procs.start([
            "etcd", "--name", n, "--data-dir", str(workdir / f"etcd-{n}"),
            "--listen-peer-urls", peer[n], "--initial-advertise-peer-urls", peer[n],
            "--listen-client-urls", client[n], "--advertise-client-urls", client[n],
            "--initial-cluster", cluster, "--initial-cluster-state", "new",
            "--initial-cluster-token", f"bench-{os.getpid()}",
            "--log-level", "warn",
        ], stdout=log, stderr=subprocess.STDOUT))
    return [client[n] for n in names], processes


def etcd_leader(endpoints: list[str], processes: list[subprocess.Popen[Any]]) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(f"etcd exited early with status {process.returncode}")
        result = subprocess.run(
            ["etcdctl", "--endpoints", ",".join(endpoints), "endpoint", "status", "-w", "json"],
            capture_output=True, text=True, env={**os.environ, "ETCDCTL_API": "3"})
        if result.returncode == 0:
            for item in json.loads(result.stdout):
                header = item["Status"]["header"]
                if item["Status"].get("leader") and item["Status"]["leader"] == header[
                        "member_id"]:
                    return str(item["Endpoint"])
        time.sleep(0.3)
    raise RuntimeError("etcd elected no leader within 30 s")


def run_etcd(procs: Processes, workdir: Path, scenario: str, args: argparse.Namespace,
             generator: Path | None) -> dict[str, Any]:
    endpoints, processes = start_etcd(procs, workdir)
    try:
        leader = etcd_leader(endpoints, processes)
        clients = args.external_concurrency if scenario == "external" else 1
        conns = min(args.etcd_conns, clients)
        leader_pid = processes[endpoints.index(leader)].pid
        cpu_before = {p.pid: cpu_seconds(p.pid) for p in processes}
        if generator is not None:
            command = [str(generator), "--endpoints", leader, "--conns", str(conns),
                       "--clients", str(clients), "--warmup", str(args.warmup),
                       "--duration", str(args.duration), "--val-size", str(PAYLOAD)]
            out = subprocess.run(command, capture_output=True, text=True,
                                 timeout=args.warmup + args.duration + 120)
            if out.returncode != 0:
                raise RuntimeError(f"etcd_load failed: {out.stderr}")
            report = json.loads(out.stdout)
            name = report["generator"]
        else:
            report = python_etcd_load(leader, clients, args)
            name = report["generator"]
        total_s = args.warmup + args.duration
        cpu = {}
        for process in processes:
            after, before = cpu_seconds(process.pid), cpu_before[process.pid]
            label = "leader" if process.pid == leader_pid else f"etcd {process.pid}"
            cpu[label] = (None if after is None or before is None
                          else round(100 * (after - before) / total_s, 1))
        return {"ops_per_s": report["ops_per_s"], "p50": report["latency_ms"].get("p50"),
                "p99": report["latency_ms"].get("p99"), "cpu": cpu,
                "generator": name, "errors": report.get("errors", 0)}
    finally:
        for process in processes:
            procs.stop(process)


def python_etcd_load(endpoint: str, clients: int, args: argparse.Namespace) -> dict[str, Any]:
    """Fallback: threads posting to etcd's v3 JSON gateway over keep-alive HTTP. Weaker than a
    gRPC generator (the gateway costs etcd's leader CPU; Python threads cost ours)."""
    import base64
    import http.client

    host, port = endpoint.removeprefix("http://").split(":")
    value = base64.b64encode(b"v" * PAYLOAD).decode()
    start = time.monotonic()
    measure_from = start + args.warmup
    stop_at = measure_from + args.duration
    latencies: list[float] = []
    errors = [0]
    threads = min(clients, 64)

    def worker(number: int) -> None:
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        i = number
        while time.monotonic() < stop_at:
            body = json.dumps({"key": base64.b64encode(b"key-%d" % (i % 4096)).decode(),
                               "value": value})
            t0 = time.monotonic()
            try:
                connection.request("POST", "/v3/kv/put", body)
                connection.getresponse().read()
            except OSError:
                errors[0] += 1
                connection = http.client.HTTPConnection(host, int(port), timeout=30)
                continue
            t1 = time.monotonic()
            if measure_from <= t1 < stop_at:
                latencies.append((t1 - t0) * 1000)
            i += threads

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    latencies.sort()

    def pct(p: float) -> float | None:
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] \
            if latencies else None

    return {"generator": f"PYTHON FALLBACK (http.client threads x {threads} via the JSON "
                         "gateway; weaker than etcd's benchmark tool, understates etcd)",
            "ops_per_s": len(latencies) / args.duration, "errors": errors[0],
            "latency_ms": {"p50": pct(50), "p99": pct(99)}}


# ---------------------------------------------------------------------------- report


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "ops_per_s": median([r["ops_per_s"] for r in runs]),
        "p50": median([r["p50"] for r in runs]),
        "p99": median([r["p99"] for r in runs]),
        "runs": runs,
        "generator": runs[0]["generator"],
    }


def print_table(results: dict[str, dict[str, dict[str, Any]]], args: argparse.Namespace
                ) -> None:
    print()
    print(f"engine vs peers: {NODES} nodes on loopback, {PAYLOAD}-byte values, "
          f"{args.repetitions} repetition(s) x {args.duration} s (+{args.warmup} s warmup), "
          f"medians; {os.cpu_count()} CPUs")
    print(f"{'scenario':<10}{'system':<18}{'ops/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'x ops/s':>9}{'x p50':>7}{'x p99':>7}  generator")
    for scenario, systems in results.items():
        engine = systems.get("engine")
        for system, summary in systems.items():
            ratios = ["", "", ""]
            if system != "engine" and engine is not None:
                ratios = [_ratio(engine["ops_per_s"], summary["ops_per_s"]),
                          _ratio(engine["p50"], summary["p50"]),
                          _ratio(engine["p99"], summary["p99"])]
            print(f"{scenario:<10}{system:<18}{_num(summary['ops_per_s'], 0):>10}"
                  f"{_num(summary['p50'], 2):>9}{_num(summary['p99'], 2):>9}"
                  f"{ratios[0]:>9}{ratios[1]:>7}{ratios[2]:>7}  {summary['generator']}")
    print("(x = engine / peer: throughput higher is better, latency lower is better)")
    print("targets:")
    for line in TARGETS:
        print(f"  {line}: {_verdict(line, results)}")


def _num(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "n/a" if not a or not b else f"{a / b:.2f}"


def _verdict(target: str, results: dict[str, dict[str, dict[str, Any]]]) -> str:
    scenario = target.split(":")[0]
    systems = results.get(scenario, {})
    engine = systems.get("engine")
    if scenario == "library":  # the stronger PySyncObj configuration
        peers = [v for k, v in systems.items() if k.startswith("pysyncobj")]
        peer = max(peers, key=lambda v: v["ops_per_s"] or 0) if peers else None
    else:
        peer = systems.get("etcd")
    if engine is None or peer is None or not peer["ops_per_s"]:
        return "not measured"
    if scenario == "library":
        ratio = engine["ops_per_s"] / peer["ops_per_s"]
        return f"{'MET' if ratio >= 20 else 'NOT MET'} ({ratio:.1f}x)"
    if scenario == "external":
        ratio = engine["ops_per_s"] / peer["ops_per_s"]
        p99_ok = engine["p99"] is not None and peer["p99"] is not None and \
            engine["p99"] <= peer["p99"]
        return (f"{'MET' if ratio >= 2 and p99_ok else 'NOT MET'} ({ratio:.2f}x throughput, "
                f"p99 {_num(engine['p99'], 2)} vs {_num(peer['p99'], 2)} ms)")
    ok = engine["p50"] is not None and peer["p50"] is not None and engine["p50"] <= peer["p50"]
    return (f"{'MET' if ok else 'NOT MET'} (p50 {_num(engine['p50'], 2)} vs "
            f"{_num(peer['p50'], 2)} ms)")


# ---------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="1 repetition of 3 s + 1 s warmup (overrides the next three)")
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=1024,
                        help="outstanding writes in the library scenario")
    parser.add_argument("--external-concurrency", type=int, default=1000,
                        help="outstanding writes in the external scenario (etcd: clients)")
    parser.add_argument("--etcd-conns", type=int, default=100,
                        help="gRPC connections of the etcd generator")
    parser.add_argument("--scenarios", default="library,external,single")
    parser.add_argument("--systems", default="engine,pysyncobj,etcd")
    parser.add_argument("--data-dir", default=None,
                        help="parent of the temporary data dirs (same disk for every system)")
    parser.add_argument("--json", metavar="FILE", help="also write all runs as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.repetitions, args.duration, args.warmup = 1, 3.0, 1.0
    if args.repetitions < 1 or args.duration <= 0 or args.warmup < 0:
        parser.error("--repetitions >= 1, --duration > 0, --warmup >= 0")
    return args


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM, and SIGINT even if inherited as ignored, unwind through the finally below.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    scenarios = [s for s in args.scenarios.split(",") if s]
    systems = [s for s in args.systems.split(",") if s]
    plan = {"library": ["engine", "pysyncobj", "pysyncobj-nobatch"], "external": ["engine", "etcd"],
            "single": ["engine", "etcd"]}
    procs = Processes()
    workroot = Path(tempfile.mkdtemp(prefix="compare-peers-", dir=args.data_dir))
    results: dict[str, dict[str, dict[str, Any]]] = {}
    try:
        generator = None
        if "etcd" in systems and set(scenarios) & {"external", "single"}:
            ensure_debian_packages()
            generator = build_etcd_load(workroot)
            print("etcd load generator: " + ("bench/etcd_load (Go, clientv3 over gRPC, shaped "
                                             "like etcd's `benchmark put`)" if generator else
                                             "PYTHON FALLBACK via the JSON gateway (weaker)"))
        if "pysyncobj" in systems and "library" in scenarios:
            print(f"PySyncObj {ensure_pysyncobj()}")
        for scenario in scenarios:
            chosen = [system for system in plan[scenario] if system.split("-")[0] in systems]
            runs: dict[str, list[dict[str, Any]]] = {system: [] for system in chosen}
            # Round robin (engine, peer, engine, peer, ...): a slow drift of the machine (its
            # disk, its neighbours) then weighs on every system alike, not on whichever ran
            # last.
            for repetition in range(args.repetitions):
                for system in chosen:
                    workdir = Path(tempfile.mkdtemp(prefix=f"{system}-", dir=workroot))
                    try:
                        if system == "engine":
                            run = run_engine(procs, workdir, scenario, args)
                        elif system.startswith("pysyncobj"):
                            run = run_pysyncobj(procs, args, batch=system == "pysyncobj")
                        else:
                            run = run_etcd(procs, workdir, scenario, args, generator)
                    finally:
                        shutil.rmtree(workdir, ignore_errors=True)
                    runs[system].append(run)
                    print(f"{scenario:<9} {system:<17} #{repetition + 1}: "
                          f"{run['ops_per_s']:>10,.0f} ops/s  p50 {_num(run['p50'], 2)} ms  "
                          f"p99 {_num(run['p99'], 2)} ms  cpu {run['cpu']}", flush=True)
            results[scenario] = {system: summarize(runs[system]) for system in chosen}
    except KeyboardInterrupt:
        print("interrupted: stopping every process started", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        shutil.rmtree(workroot, ignore_errors=True)
    print_table(results, args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--pysyncobj-node":
        sys.exit(pysyncobj_node(json.loads(sys.argv[2])))
    sys.exit(main())

"""Check time of the linearizability checker (engine/testing/linearizability.py).

    pytest bench/bench_linearizability.py -p benchmark   # pytest-benchmark rows
    python bench/bench_linearizability.py          # the table below, over many seeds
    python bench/bench_linearizability.py --profile   # cProfile of the slowest invalid case

Workload (Jepsen's register test, anchors-testing.md §1-2): 200 ops per key, 10 concurrent
clients per key, read:write:cas = 2:1:1 over values 0-4 (repeated values make the search
harder) or unique values, 5 % of ops end "info" and 2 % never take effect. Valid histories are
generated linearizable; invalid ones are the same histories with one read changed to a value
never written (the search must then exhaust every order before that read) or to a stale value.
"""

from __future__ import annotations

import argparse
import cProfile
import platform
import pstats
import random
import statistics
import time
from typing import Any

from engine.testing.history_gen import (
    generate_register_history,
    mutate_stale_read,
    mutate_unwritten_read,
)
from engine.testing.linearizability import check_linearizable

OPS_PER_KEY = 200
CLIENTS = 10


def must(mutation: tuple[list[dict[str, Any]], int] | None) -> list[dict[str, Any]]:
    assert mutation is not None, "no event to mutate"
    return mutation[0]


def history(seed: int, keys: int = 1, unique: bool = False) -> list[dict[str, Any]]:
    return generate_register_history(random.Random(seed), keys=keys, ops_per_key=OPS_PER_KEY,
                                     clients=CLIENTS, unique_values=unique)


# -- pytest-benchmark ------------------------------------------------------------------------------


def test_bench_lin_valid_one_key(benchmark: Any) -> None:
    benchmark.group = "linearizability: 200 ops/key, 10 clients"
    h = history(1)
    assert benchmark(check_linearizable, h, "kv").valid is True


def test_bench_lin_valid_20_keys(benchmark: Any) -> None:
    benchmark.group = "linearizability: 200 ops/key, 10 clients"
    h = history(1, keys=20)
    assert benchmark(check_linearizable, h, "kv").valid is True


def test_bench_lin_invalid_one_key(benchmark: Any) -> None:
    benchmark.group = "linearizability: 200 ops/key, 10 clients"
    h = history(1)
    mutated = must(mutate_unwritten_read(h, random.Random(1)))
    assert benchmark(check_linearizable, mutated, "kv").valid is False


# -- script ----------------------------------------------------------------------------------------


def timed(h: list[dict[str, Any]], limit: float) -> tuple[float, Any]:
    start = time.perf_counter()
    result = check_linearizable(h, "kv", time_limit_s=limit)
    return time.perf_counter() - start, result


def row(name: str, samples: list[float], verdicts: list[Any]) -> None:
    samples = sorted(samples)
    p90 = samples[min(len(samples) - 1, int(0.9 * len(samples)))]
    counts = {v: verdicts.count(v) for v in (True, False, "unknown") if verdicts.count(v)}
    print(f"{name:<44} {len(samples):>5} {statistics.median(samples) * 1e3:9.2f} "
          f"{p90 * 1e3:9.2f} {samples[-1] * 1e3:9.1f}   {counts}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--time-limit", type=float, default=10.0)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    print(f"linearizability check, {OPS_PER_KEY} ops/key, {CLIENTS} clients/key, "
          f"{args.seeds} seeds, time limit {args.time_limit} s; Python "
          f"{platform.python_version()}, {platform.machine()}")
    print(f"{'history':<44} {'runs':>5} {'median ms':>9} {'p90 ms':>9} {'max ms':>9}   verdicts")
    cases = [
        ("valid, 1 key, values 0-4", lambda s: history(s)),
        ("valid, 1 key, unique values", lambda s: history(s, unique=True)),
        ("valid, 20 keys (4,000 ops)", lambda s: history(s, keys=20)),
        ("unwritten read, 1 key, values 0-4",
         lambda s: must(mutate_unwritten_read(history(s), random.Random(s)))),
        ("unwritten read, 1 key, unique values",
         lambda s: must(mutate_unwritten_read(history(s, unique=True), random.Random(s)))),
        ("stale read, 1 key, unique values",
         lambda s: must(mutate_stale_read(history(s, unique=True), random.Random(s)))),
    ]
    slowest: tuple[float, Any] = (0.0, None)
    for name, make in cases:
        samples, verdicts = [], []
        for seed in range(args.seeds):
            h = make(seed)
            seconds, result = timed(h, args.time_limit)
            samples.append(seconds)
            verdicts.append(result.valid)
            if result.valid is not True and seconds > slowest[0]:
                slowest = (seconds, h)
        row(name, samples, verdicts)
    if args.profile and slowest[1] is not None:
        print(f"\ncProfile of the slowest invalid history ({slowest[0]:.2f} s):")
        profile = cProfile.Profile()
        profile.runcall(check_linearizable, slowest[1], "kv", args.time_limit)
        pstats.Stats(profile).sort_stats("tottime").print_stats(8)


if __name__ == "__main__":
    main()

"""Micro-benchmarks of the KV store's PUT hot path (engine/_core/kvput), both implementations.

    pytest bench/bench_kvput.py               # pytest-benchmark, one row per implementation
    python bench/bench_kvput.py               # timeit both in one run, prints Cython/Python ratios

Workload: 10,000 session-less PUTs with 100-byte values over 4,096 keys (as `engine bench`
writes them, so most overwrite a key: the result says so and carries the revision, not the
previous value, which only a command asking for it gets) applied to a map with apply_put, and
the same commands with a session header parsed with parse_put. The commands exist before timing
starts (they come out of the log in the real system).
"""

from __future__ import annotations

import functools
import importlib
import platform
import timeit
from collections.abc import Callable
from types import ModuleType, SimpleNamespace
from typing import Any

from engine.kv import commands

PUTS = 10_000
KEYS = 4_096
VALUE_BYTES = 100


def puts(session: bool = False) -> list[bytes]:
    value = bytes(range(VALUE_BYTES))
    if session:
        return [commands.encode_put(b"key-%d" % (k % KEYS), value, client_id=7, seq=k + 1)
                for k in range(PUTS)]
    return [commands.encode_put(b"key-%d" % (k % KEYS), value) for k in range(PUTS)]


def apply_all(kvput: ModuleType, batch: list[bytes]) -> dict[bytes, bytes]:
    data: dict[bytes, bytes] = {}
    apply_put = kvput.apply_put
    for index, command in enumerate(batch, 1):
        apply_put(data, command, index)
    return data


def parse_all(kvput: ModuleType, batch: list[bytes]) -> int:
    parse_put = kvput.parse_put
    return sum(parse_put(command)[3] for command in batch)


# -- pytest-benchmark ------------------------------------------------------------------------------


def test_bench_kvput_apply_10k(benchmark: Any, impl: SimpleNamespace) -> None:
    benchmark.group = "kvput: apply_put 10k (100 B values, 4,096 keys)"
    data = benchmark(apply_all, impl.kvput, puts())
    assert len(data) == KEYS


def test_bench_kvput_parse_session_10k(benchmark: Any, impl: SimpleNamespace) -> None:
    benchmark.group = "kvput: parse_put 10k with a session"
    assert benchmark(parse_all, impl.kvput, puts(session=True)) == PUTS * (PUTS + 1) // 2


# -- script: both implementations in one run -----------------------------------------------------


def best_seconds(function: Callable[[], object], number: int, repeat: int = 7) -> float:
    return min(timeit.repeat(function, number=number, repeat=repeat)) / number


def main() -> None:
    impls = {name: importlib.import_module(f"engine._core.kvput_{name}") for name in ("c", "py")}
    print(f"engine/_core/kvput: {PUTS:,} PUTs x {VALUE_BYTES} B values over {KEYS:,} keys; best "
          f"of 7 repeats (timeit); Python {platform.python_version()}, {platform.machine()}")
    plain, session = puts(), puts(session=True)
    cases: list[tuple[str, Callable[[ModuleType], object]]] = [
        ("apply_put (no session)", lambda m: apply_all(m, plain)),
        ("parse_put (with a session)", lambda m: parse_all(m, session)),
    ]
    width = max(len(label) for label, _ in cases)
    print(f"{'workload':<{width}}  {'cython ms':>10}  {'python ms':>10}  {'py/c':>6}")
    for label, run in cases:
        seconds = {name: best_seconds(functools.partial(run, module), 10)
                   for name, module in impls.items()}
        print(f"{label:<{width}}  {seconds['c'] * 1e3:>10.3f}  {seconds['py'] * 1e3:>10.3f}  "
              f"{seconds['py'] / seconds['c']:>5.1f}x")


if __name__ == "__main__":
    main()

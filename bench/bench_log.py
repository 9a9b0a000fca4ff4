"""Micro-benchmarks of the in-memory log (engine/_core/log), both implementations.

    pytest bench/bench_log.py                 # pytest-benchmark, one row per implementation
    python bench/bench_log.py                 # timeit both in one run, prints Cython/Python ratios

Workload: 10,000 entries with 100-byte payloads appended to a fresh log, then read back with
entries(1, 10_001). The Entry objects and payloads exist before timing starts (they come from
the codec or the proposal queue in the real system); reading back builds new Entry objects.
"""

from __future__ import annotations

import importlib
import platform
import timeit
from collections.abc import Callable
from types import ModuleType, SimpleNamespace
from typing import Any

ENTRIES = 10_000
PAYLOAD_BYTES = 100


def payloads() -> list[bytes]:
    return [bytes([k % 256]) * PAYLOAD_BYTES for k in range(ENTRIES)]


def entry_batch(codec: ModuleType) -> list[Any]:
    return [codec.Entry(1, k + 1, data) for k, data in enumerate(payloads())]


def append_and_read(log_module: ModuleType, batch: list[Any]) -> list[Any]:
    log = log_module.EntryLog()
    log.append(batch)
    return log.entries(1, ENTRIES + 1)


def propose_and_read(log_module: ModuleType, data: list[bytes]) -> list[Any]:
    log = log_module.EntryLog()
    log.append_payloads(1, 0, data)
    return log.entries(1, ENTRIES + 1)


def term_lookups(log: Any) -> int:
    term_at = log.term_at
    total = 0
    for index in range(1, ENTRIES + 1):
        total += term_at(index)
    return total


# -- pytest-benchmark ------------------------------------------------------------------------------


def test_bench_log_append_read_10k(benchmark: Any, impl: SimpleNamespace) -> None:
    benchmark.group = "log: append 10k Entry (100 B) + read back"
    batch = entry_batch(impl.codec)
    result = benchmark(append_and_read, impl.log, batch)
    assert len(result) == ENTRIES and result[-1].data == batch[-1].data


def test_bench_log_append_payloads_read_10k(benchmark: Any, impl: SimpleNamespace) -> None:
    benchmark.group = "log: append_payloads 10k (100 B) + read back"
    data = payloads()
    result = benchmark(propose_and_read, impl.log, data)
    assert len(result) == ENTRIES and result[-1].data == data[-1]


def test_bench_log_term_at_10k(benchmark: Any, impl: SimpleNamespace) -> None:
    benchmark.group = "log: 10k term_at"
    log = impl.log.EntryLog()
    log.append_payloads(3, 0, payloads())
    assert benchmark(term_lookups, log) == 3 * ENTRIES


# -- script: both implementations in one run -----------------------------------------------------


def best_seconds(function: Callable[[], object], number: int, repeat: int = 7) -> float:
    return min(timeit.repeat(function, number=number, repeat=repeat)) / number


def main() -> None:
    impls = {
        name: (importlib.import_module(f"engine._core.log_{name}"),
               importlib.import_module(f"engine._core.codec_{name}"))
        for name in ("c", "py")
    }
    print(f"engine/_core/log: {ENTRIES:,} entries x {PAYLOAD_BYTES} B payloads; best of 7 "
          f"repeats (timeit); Python {platform.python_version()}, {platform.machine()}, "
          f"{platform.processor() or platform.platform()}")
    rows: list[tuple[str, float, float]] = []
    cases: list[tuple[str, Callable[[ModuleType, ModuleType], Callable[[], object]]]] = [
        ("append(list[Entry]) + entries() read back", _append_case),
        ("append_payloads() + entries() read back", _propose_case),
        ("10k term_at() calls", _term_case),
    ]
    for label, make in cases:
        seconds = {name: best_seconds(make(lm, codec), 20) for name, (lm, codec) in impls.items()}
        rows.append((label, seconds["c"], seconds["py"]))
    width = max(len(label) for label, _, _ in rows)
    print(f"{'workload':<{width}}  {'cython ms':>10}  {'python ms':>10}  {'py/c':>6}")
    for label, c_seconds, py_seconds in rows:
        print(f"{label:<{width}}  {c_seconds * 1e3:>10.3f}  {py_seconds * 1e3:>10.3f}  "
              f"{py_seconds / c_seconds:>5.1f}x")


def _append_case(log_module: ModuleType, codec: ModuleType) -> Callable[[], object]:
    batch = entry_batch(codec)
    return lambda: append_and_read(log_module, batch)


def _propose_case(log_module: ModuleType, codec: ModuleType) -> Callable[[], object]:
    data = payloads()
    return lambda: propose_and_read(log_module, data)


def _term_case(log_module: ModuleType, codec: ModuleType) -> Callable[[], object]:
    log = log_module.EntryLog()
    log.append_payloads(3, 0, payloads())
    return lambda: term_lookups(log)


if __name__ == "__main__":
    main()

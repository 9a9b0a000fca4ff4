"""Micro-benchmarks of the in-memory log (engine/_core/log), both implementations.

    pytest bench/bench_log.py                 # pytest-benchmark, one row per implementation
    python bench/bench_log.py                 # timeit both in one run, prints Cython/Python ratios

Workload: 10,000 entries with 100-byte payloads appended to a fresh log, then read back with
entries(1, 10_001). The Entry objects and payloads exist before timing starts (they come from
the codec or the proposal queue in the real system); reading back builds new Entry objects.

Memory (budget: <= 32 bytes per entry beyond the payload): 1,000,000 entries of 0, 100 and
1,000 bytes appended in batches of 1,000, measured with tracemalloc. The script prints the
bytes/entry for both implementations; test_memory_overhead_1m_entries_1000_bytes asserts the
1 GB case, which the default test suite runs at 200,000 entries only.
"""

from __future__ import annotations

import gc
import importlib
import platform
import timeit
import tracemalloc
from collections.abc import Callable
from types import ModuleType, SimpleNamespace
from typing import Any

ENTRIES = 10_000
PAYLOAD_BYTES = 100
MEMORY_ENTRIES = 1_000_000
MEMORY_BATCH = 1_000
OVERHEAD_LIMIT = 32  # bytes per entry beyond its payload (tests/_core/test_log.py's budget)


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


def overhead_per_entry(log_module: ModuleType, size: int, entries: int = MEMORY_ENTRIES) -> float:
    """Bytes allocated per entry beyond its payload by a log of `entries` `size`-byte payloads,
    appended in leader batches (tracemalloc sees the C twin's PyMem_* buffers too)."""
    payloads = [bytes([k % 256]) * size for k in range(MEMORY_BATCH)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        log = log_module.EntryLog()
        for term in range(entries // MEMORY_BATCH):
            log.append_payloads(term, 0, payloads)
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(log) == entries and log.payload_bytes == entries * size
    return (used - log.payload_bytes) / entries


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


def test_memory_overhead_1m_entries_1000_bytes(impl: SimpleNamespace) -> None:
    # The 1 GB case of tests/_core/test_log.py::test_memory_overhead_per_entry.
    overhead = overhead_per_entry(impl.log, 1000)
    print(f"{impl.name}: {overhead:.2f} bytes/entry beyond 1,000-byte payloads at 1M entries")
    assert overhead <= OVERHEAD_LIMIT


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
    print(f"\nmemory: bytes per entry beyond the payload at {MEMORY_ENTRIES:,} entries "
          f"(batches of {MEMORY_BATCH:,}; tracemalloc; limit {OVERHEAD_LIMIT})")
    print(f"{'payload':>8}  {'cython':>8}  {'python':>8}")
    for size in (0, 100, 1000):
        row = [overhead_per_entry(lm, size) for lm, _ in impls.values()]
        print(f"{size:>6} B  {row[0]:>8.2f}  {row[1]:>8.2f}")


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

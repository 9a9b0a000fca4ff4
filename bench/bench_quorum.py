"""Micro-benchmarks of the quorum arithmetic (engine/_core/quorum), both implementations.

    pytest bench/bench_quorum.py              # pytest-benchmark, one row per implementation
    python bench/bench_quorum.py              # timeit both in one run, prints the ratios

Workloads: committed_index of 5 voters (one call, as on every append ack); the batched
committed index of 10,000 groups x 5 voters (a multi-raft host), compared with a plain Python
loop over the rows.
"""

from __future__ import annotations

import importlib
import platform
import timeit
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np

from engine._core import quorum_py

GROUPS = 10_000
VOTERS = 5
MATCH_5 = [1_000_007, 1_000_003, 999_998, 1_000_010, 1_000_001]


def match_matrix() -> np.ndarray:
    rng = np.random.default_rng(20240601)
    return rng.integers(1_000_000, 1_010_000, size=(GROUPS, VOTERS), dtype=np.uint64)


def plain_python_loop(rows: list[list[int]]) -> list[int]:
    """Baseline: one committed_index per row, the rows already plain Python lists."""
    committed_index = quorum_py.committed_index
    return [committed_index(row) for row in rows]


def plain_python_loop_over_ndarray(match: np.ndarray) -> list[int]:
    """Baseline as a user holding the numpy array would write it (row views, numpy scalars)."""
    committed_index = quorum_py.committed_index
    return [committed_index(row) for row in match]


# -- pytest-benchmark ------------------------------------------------------------------------------


def test_bench_quorum_commit_index_5_voters(benchmark: Any, impl: SimpleNamespace) -> None:
    benchmark.group = "quorum: committed_index, 5 voters"
    assert benchmark(impl.quorum.committed_index, MATCH_5) == 1_000_003


def test_bench_quorum_batched_10k_groups(benchmark: Any, impl: SimpleNamespace) -> None:
    benchmark.group = "quorum: 10k groups x 5 voters"
    match = match_matrix()
    result = benchmark(impl.quorum.batched_committed_index, match)
    assert result.tolist() == plain_python_loop(match.tolist())


def test_bench_quorum_plain_loop_10k_groups(benchmark: Any) -> None:
    benchmark.group = "quorum: 10k groups x 5 voters"
    rows = match_matrix().tolist()
    assert len(benchmark(plain_python_loop, rows)) == GROUPS


# -- script: both implementations in one run -----------------------------------------------------


def best_seconds(function: Callable[[], object], number: int, repeat: int = 7) -> float:
    return min(timeit.repeat(function, number=number, repeat=repeat)) / number


def main() -> None:
    quorum_c = importlib.import_module("engine._core.quorum_c")
    match = match_matrix()
    rows = match.tolist()
    assert quorum_c.batched_committed_index(match).tolist() == plain_python_loop(rows)
    assert quorum_py.batched_committed_index(match).tolist() == plain_python_loop(rows)
    print(f"engine/_core/quorum: best of 7 repeats (timeit); Python "
          f"{platform.python_version()}, numpy {np.__version__}, {platform.machine()}, "
          f"{platform.processor() or platform.platform()}")
    c_one = best_seconds(lambda: quorum_c.committed_index(MATCH_5), 200_000)
    py_one = best_seconds(lambda: quorum_py.committed_index(MATCH_5), 200_000)
    c_batch = best_seconds(lambda: quorum_c.batched_committed_index(match), 200)
    py_batch = best_seconds(lambda: quorum_py.batched_committed_index(match), 20)
    loop_lists = best_seconds(lambda: plain_python_loop(rows), 5)
    loop_ndarray = best_seconds(lambda: plain_python_loop_over_ndarray(match), 3)
    print(f"committed_index, {VOTERS} voters (one call):   cython {c_one * 1e9:8.0f} ns   "
          f"python {py_one * 1e9:8.0f} ns   py/c {py_one / c_one:5.1f}x")
    print(f"batched, {GROUPS:,} groups x {VOTERS} voters:")
    print(f"  cython batched_committed_index       {c_batch * 1e3:8.3f} ms")
    print(f"  python batched (np.partition)        {py_batch * 1e3:8.3f} ms   "
          f"{py_batch / c_batch:6.1f}x the cython time")
    print(f"  plain Python loop over list rows     {loop_lists * 1e3:8.3f} ms   "
          f"{loop_lists / c_batch:6.1f}x the cython time")
    print(f"  plain Python loop over ndarray rows  {loop_ndarray * 1e3:8.3f} ms   "
          f"{loop_ndarray / c_batch:6.1f}x the cython time")


if __name__ == "__main__":
    main()

"""bench/test_micro.py cannot rot: every benchmark body is built and run once, untimed, in
each implementation it is measured in, and its result checked as the benchmark checks it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from engine.testing import implementations

MICRO = Path(__file__).resolve().parents[2] / "bench" / "test_micro.py"


def load(name: str, path: Path) -> ModuleType:
    """Import a file of bench/ (not a package) under `name`."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module   # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


micro = load("bench_test_micro", MICRO)


@pytest.mark.parametrize(("case", "implementation"), micro.rows())
def test_each_benchmark_body_runs_once(case: str, implementation: str) -> None:
    spec = micro.CASES[case]
    body = spec.prepare(implementations.load(implementation))
    assert spec.check(body())


def test_every_twin_workload_is_measured_in_every_implementation() -> None:
    """The Cython/Python ratios need both twins of each workload in one run."""
    rows = micro.rows()
    for case, spec in micro.CASES.items():
        measured = sorted(name for row_case, name in rows if row_case == case)
        expected = implementations.available() if spec.twins else implementations.available()[:1]
        assert measured == sorted(expected), case


def test_the_ratio_summary_pairs_the_twins() -> None:
    conftest = load("bench_conftest", MICRO.parent / "conftest.py")
    lines = conftest.ratio_lines({("g", "roundtrip", "c"): 2e-6, ("g", "roundtrip", "py"): 6e-6,
                                ("g", "roundtrip_encrypted", "c"): 3e-6})
    assert lines[0] == "g"
    assert "py/c   3.0x" in lines[1] and "x  1.00 of the first row" in lines[1]
    assert "x  1.50 of the first row" in lines[3] and "py/c" not in lines[3]

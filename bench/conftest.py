"""Shared fixtures of the benchmarks in bench/, and the ratio summary of bench/test_micro.py.

`impl` runs a benchmark against both implementations of engine/_core ("c" and "py"), like
multidict/propcache. Under ENGINE_NO_EXTENSIONS=1 only "py" exists (nothing compiled is
expected there); under ENGINE_REQUIRE_EXTENSIONS=1 a missing compiled module is an error.
"""

from __future__ import annotations

import pytest

from engine.testing import implementations

IMPLEMENTATIONS = implementations.available()
load_impl = implementations.load
impl, both_impls = implementations.pytest_fixtures()

# (group, case, implementation) -> median seconds of each test_micro row run in this session.
_MEDIANS: dict[tuple[str, str, str], float] = {}


@pytest.fixture(scope="session")
def micro_medians() -> dict[tuple[str, str, str], float]:
    return _MEDIANS


def ratio_lines(medians: dict[tuple[str, str, str], float]) -> list[str]:
    """Per group (in run order): the Cython/Python ratio of each case measured in both, and
    each row's median over the group's first row's (e.g. encrypted over authenticated)."""
    groups: dict[str, list[tuple[str, str, float]]] = {}
    for (group, case, implementation), median in medians.items():
        groups.setdefault(group, []).append((case, implementation, median))
    lines = []
    for group, measured in groups.items():
        lines.append(group)
        first = measured[0][2]
        by_case = {(case, name): median for case, name, median in measured}
        for case, name, median in measured:
            twin = by_case.get((case, "py")) if name == "c" else None
            py_over_c = f"   py/c {twin / median:5.1f}x" if twin is not None else ""
            lines.append(f"  {case:<34} {name:<3} {median * 1e6:12.2f} us   "
                         f"x{median / first:6.2f} of the first row{py_over_c}")
    return lines


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _MEDIANS:
        terminalreporter.section("Cython/Python ratios and ratios within each group (medians)")
        for line in ratio_lines(_MEDIANS):
            terminalreporter.write_line(line)

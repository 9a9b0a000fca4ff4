"""Shared fixtures for micro-benchmarks (same impl fixture as tests).

`impl` runs a test against both implementations of engine/_core ("c" and "py"), like
multidict/propcache. Under ENGINE_NO_EXTENSIONS=1 only "py" exists (nothing compiled is
expected there); under ENGINE_REQUIRE_EXTENSIONS=1 a missing compiled module is an error.
"""

from __future__ import annotations

import importlib
from types import SimpleNamespace

import pytest

from engine._core import flag

IMPLEMENTATIONS = ["py"] if flag("ENGINE_NO_EXTENSIONS") else ["c", "py"]


def load_impl(name: str) -> SimpleNamespace:
    suffix = {"c": "_c", "py": "_py"}[name]
    return SimpleNamespace(
        name=name,
        codec=importlib.import_module(f"engine._core.codec{suffix}"),
        log=importlib.import_module(f"engine._core.log{suffix}"),
        quorum=importlib.import_module(f"engine._core.quorum{suffix}"),
    )


@pytest.fixture(params=IMPLEMENTATIONS, scope="session")
def impl(request: pytest.FixtureRequest) -> SimpleNamespace:
    """Namespace with .codec, .log, .quorum modules of one implementation."""
    return load_impl(request.param)


@pytest.fixture(scope="session")
def both_impls() -> list[SimpleNamespace]:
    """Every available implementation, for differential (c == py) tests."""
    return [load_impl(name) for name in IMPLEMENTATIONS]

"""Both implementations of engine/_core side by side, for parity tests and benchmarks.

`available()` lists "c" and "py", or only "py" under ENGINE_NO_EXTENSIONS=1 (nothing compiled
is expected there). `load(name)` returns a namespace with .codec, .kvput, .log and .quorum of one
implementation; under ENGINE_REQUIRE_EXTENSIONS=1 a missing compiled module is an ImportError.
"""

from __future__ import annotations

import importlib
from types import SimpleNamespace

from engine._core import flag


def available() -> list[str]:
    return ["py"] if flag("ENGINE_NO_EXTENSIONS") else ["c", "py"]


def load(name: str) -> SimpleNamespace:
    suffix = {"c": "_c", "py": "_py"}[name]
    return SimpleNamespace(
        name=name,
        codec=importlib.import_module(f"engine._core.codec{suffix}"),
        kvput=importlib.import_module(f"engine._core.kvput{suffix}"),
        log=importlib.import_module(f"engine._core.log{suffix}"),
        quorum=importlib.import_module(f"engine._core.quorum{suffix}"),
    )


def pytest_fixtures() -> tuple[object, object]:
    """pytest fixtures `impl` (each implementation in turn) and `both_impls` (all of them),
    imported by tests/conftest.py and bench/conftest.py."""
    import pytest

    @pytest.fixture(params=available(), scope="session")
    def impl(request: pytest.FixtureRequest) -> SimpleNamespace:
        """Namespace with .codec, .kvput, .log, .quorum modules of one implementation."""
        return load(request.param)

    @pytest.fixture(scope="session")
    def both_impls() -> list[SimpleNamespace]:
        """Every available implementation, for differential (c == py) tests."""
        return [load(name) for name in available()]

    return impl, both_impls

"""Shared fixtures.

`impl` runs a test against both implementations of engine/_core ("c" and "py"), like
multidict/propcache. Under ENGINE_NO_EXTENSIONS=1 only "py" exists (nothing compiled is
expected there); under ENGINE_REQUIRE_EXTENSIONS=1 a missing compiled module is an error.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from engine.testing import implementations

IMPLEMENTATIONS = implementations.available()
load_impl = implementations.load


@pytest.fixture(params=IMPLEMENTATIONS, scope="session")
def impl(request: pytest.FixtureRequest) -> SimpleNamespace:
    """Namespace with .codec, .log, .quorum modules of one implementation."""
    return load_impl(request.param)


@pytest.fixture(scope="session")
def both_impls() -> list[SimpleNamespace]:
    """Every available implementation, for differential (c == py) tests."""
    return [load_impl(name) for name in IMPLEMENTATIONS]

"""Shared fixtures for micro-benchmarks (same impl fixture as tests).

`impl` runs a test against both implementations of engine/_core ("c" and "py"), like
multidict/propcache. Under ENGINE_NO_EXTENSIONS=1 only "py" exists (nothing compiled is
expected there); under ENGINE_REQUIRE_EXTENSIONS=1 a missing compiled module is an error.
"""

from __future__ import annotations

from engine.testing import implementations

IMPLEMENTATIONS = implementations.available()
load_impl = implementations.load
impl, both_impls = implementations.pytest_fixtures()

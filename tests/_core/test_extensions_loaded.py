"""The selected engine._core implementation is the one the environment asks for (yarl's
test_quoting_c_loaded): under ENGINE_REQUIRE_EXTENSIONS=1 (CI) the compiled modules, under
ENGINE_NO_EXTENSIONS=1 the pure-Python twins, so a silent fallback cannot pass CI.
"""

from __future__ import annotations

import importlib.machinery

import engine._core as core
from engine._core import flag

NAMES = ("codec", "kvput", "log", "quorum")


def is_compiled(module: object) -> bool:
    path = getattr(module, "__file__", "") or ""
    return path.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def test_required_extensions_are_the_selected_compiled_modules() -> None:
    selected = {name: getattr(core, name) for name in NAMES}
    if flag("ENGINE_NO_EXTENSIONS"):
        assert core.IMPLEMENTATION == "python"
        for name, module in selected.items():
            assert module.__name__ == f"engine._core.{name}_py"
            assert not is_compiled(module)
    elif flag("ENGINE_REQUIRE_EXTENSIONS"):
        assert core.IMPLEMENTATION == "cython"
        for name, module in selected.items():
            assert module.__name__ == f"engine._core.{name}_c"
            assert is_compiled(module), module.__file__
    else:
        # Without either flag the choice is all-compiled or all-Python, and consistent.
        suffix = "_c" if core.IMPLEMENTATION == "cython" else "_py"
        assert core.IMPLEMENTATION in ("cython", "python")
        for name, module in selected.items():
            assert module.__name__ == f"engine._core.{name}{suffix}"
            assert is_compiled(module) == (suffix == "_c")


def test_public_records_come_from_the_selected_codec() -> None:
    from engine import messages

    assert messages.Message is core.codec.Message
    assert messages.Entry is core.codec.Entry

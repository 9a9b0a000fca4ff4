"""The pure-Python fallback is never silent (DESIGN §6): with the compiled modules unimportable
and ENGINE_NO_EXTENSIONS unset, importing engine warns once, naming the cause; choosing the
twins with ENGINE_NO_EXTENSIONS=1 is silent.

Each case runs in a fresh interpreter whose meta path refuses every `engine._core.*_c` module,
as an uncompiled install (sources without the .so files) would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WARNING_START = "engine: the compiled core is not loaded"

BLOCK_EXTENSIONS_AND_IMPORT = """
import importlib.abc, sys

class NoExtensions(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.startswith("engine._core.") and name.endswith("_c"):
            raise ImportError(f"no compiled module {name} (blocked)")
        return None

sys.meta_path.insert(0, NoExtensions())
import engine
import engine._core, engine.aio, engine.kv  # more imports: still one warning
print(engine.IMPLEMENTATION, engine.Node.status.__name__)
"""


def run_without_extensions(**env: str) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("ENGINE_NO_EXTENSIONS", "ENGINE_REQUIRE_EXTENSIONS",
                                  "PYTHONWARNINGS")}
    environment["PYTHONPATH"] = str(ROOT)
    environment.update(env)
    return subprocess.run([sys.executable, "-c", BLOCK_EXTENSIONS_AND_IMPORT],
                          capture_output=True, text=True, env=environment, cwd=ROOT,
                          timeout=120)


def test_fallback_to_the_twins_warns_once_naming_the_cause() -> None:
    result = run_without_extensions()
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "python"
    assert result.stderr.count(WARNING_START) == 1, result.stderr
    assert "RuntimeWarning" in result.stderr
    assert "(blocked)" in result.stderr  # the ImportError's own text
    assert "ENGINE_NO_EXTENSIONS=1" in result.stderr and "pip install -e ." in result.stderr


def test_chosen_twins_do_not_warn() -> None:
    result = run_without_extensions(ENGINE_NO_EXTENSIONS="1", PYTHONWARNINGS="error")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "python"
    assert WARNING_START not in result.stderr, result.stderr


def test_required_extensions_fail_instead_of_warning() -> None:
    result = run_without_extensions(ENGINE_REQUIRE_EXTENSIONS="1")
    assert result.returncode != 0
    assert "ImportError" in result.stderr and "(blocked)" in result.stderr
    assert WARNING_START not in result.stderr

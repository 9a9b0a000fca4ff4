"""Layering (DESIGN.md §2): the protocol cores are sans-IO.

Method: parse every module of the core packages with `ast` and refuse imports of I/O, clock,
thread and process modules, calls of the built-in `open`, and module-level `random` functions
(a core may only use a seeded `random.Random` it was given or built from its seed).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "engine"
CORE_PACKAGES = ["_core", "raft", "paxos", "twopc", "kv", "lock"]
FORBIDDEN_MODULES = {
    "asyncio", "socket", "time", "threading", "multiprocessing", "subprocess", "select",
    "selectors", "io", "pathlib", "shutil", "tempfile", "os", "signal", "datetime", "uvloop",
    "asyncio_dgram", "concurrent",
}
# engine/_core/__init__.py reads ENGINE_NO_EXTENSIONS / ENGINE_REQUIRE_EXTENSIONS from
# os.environ once at import to pick an implementation; that is configuration, not I/O.
ALLOWED = {("_core/__init__.py", "os")}
RANDOM_ALLOWED_ATTRIBUTES = {"Random"}


def core_files() -> list[Path]:
    files: list[Path] = []
    for package in CORE_PACKAGES:
        directory = ROOT / package
        if directory.is_dir():
            files.extend(sorted(directory.rglob("*.py")) + sorted(directory.rglob("*.pyx")))
    return files


def violations(path: Path, relative: str | None = None) -> list[str]:
    relative = relative or str(path.relative_to(ROOT))
    source = path.read_text()
    if path.suffix == ".pyx":
        # Cython syntax is not Python: check import lines only.
        found = []
        for number, line in enumerate(source.splitlines(), 1):
            words = line.replace(",", " ").split()
            if words[:1] in (["import"], ["from"]) and len(words) > 1:
                top = words[1].split(".")[0]
                if top in FORBIDDEN_MODULES and (relative, top) not in ALLOWED:
                    found.append(f"{relative}:{number}: imports {top}")
        return found
    found = []
    tree = ast.parse(source, filename=str(path))
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module == "random":
                bad = [a.name for a in node.names if a.name not in RANDOM_ALLOWED_ATTRIBUTES]
                if bad:
                    found.append(f"{relative}:{node.lineno}: from random import {bad}")
        for name in names:
            top = name.split(".")[0]
            if top in FORBIDDEN_MODULES and (relative, top) not in ALLOWED:
                found.append(f"{relative}:{node.lineno}: imports {name}")
        is_call = isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        if is_call and node.func.id == "open":
            found.append(f"{relative}:{node.lineno}: calls open()")
        if (
            isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            and node.value.id == "random" and node.attr not in RANDOM_ALLOWED_ATTRIBUTES
        ):
            found.append(f"{relative}:{node.lineno}: uses random.{node.attr} (unseeded)")
    return found


@pytest.mark.parametrize("path", core_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_core_module_is_sans_io(path: Path) -> None:
    assert violations(path) == []


def test_scanner_catches_forbidden_imports(tmp_path: Path) -> None:
    """The scan itself must be able to fail: feed it a module that breaks every rule."""
    bad = tmp_path / "probe.py"
    bad.write_text(
        "import asyncio\nfrom time import monotonic\nimport random\nx = random.random()\n"
        "open('f')\n"
    )
    found = violations(bad, relative="raft/probe.py")
    assert len(found) == 4, found


def test_core_packages_exist() -> None:
    assert len(core_files()) >= 6

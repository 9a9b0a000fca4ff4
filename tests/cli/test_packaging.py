"""Packaging metadata: license, one version, the console script, honest description, runtime
dependencies exactly what runtime code imports, and wheels built by cibuildwheel."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
TOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]
# Modules only `python -m engine bench` loads (its dependencies are the bench extra's).
BENCH_ONLY = {"engine/benchmark.py", "engine/profiling.py"}
# Distribution name -> the top-level module it installs.
MODULE_OF = {"asyncio-dgram": "asyncio_dgram", "hdrhistogram": "hdrh"}


def requirement_name(requirement: str) -> str:
    for stop in "<>=;[ !~":
        requirement = requirement.split(stop, 1)[0]
    return requirement.strip().lower()


def third_party_imports(paths: list[Path]) -> set[str]:
    stdlib = set(sys.stdlib_module_names)
    found: set[str] = set()
    for path in paths:
        if path.suffix == ".pyx":   # Cython: its Python-level imports, line by line
            text = path.read_text()   # (cimport lines are compile-time only)
            found |= set(re.findall(r"^import +(\w+)", text, re.M))
            found |= set(re.findall(r"^from +(\w+)[\w.]* +import ", text, re.M))
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            found |= {n.split(".")[0] for n in names} - stdlib - {"engine", "__future__"}
    return found - stdlib - {"engine", "__future__"}


def test_license_file_is_the_mit_license_pyproject_names() -> None:
    assert PROJECT["license"] == "MIT" and PROJECT["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")


def test_metadata_names_authors_and_classifiers() -> None:
    assert PROJECT["authors"]
    assert "Programming Language :: Python :: 3.11" in PROJECT["classifiers"]
    assert "Typing :: Typed" in PROJECT["classifiers"]


def test_description_claims_no_unimplemented_protocol() -> None:
    for text in (PROJECT["description"], __import__("engine").__doc__):
        assert "2PC" not in text and "two-phase" not in text.lower()


def test_runtime_dependencies_are_what_runtime_code_imports() -> None:
    runtime = [p for p in (ROOT / "engine").rglob("*.py")
               if str(p.relative_to(ROOT)) not in BENCH_ONLY and "testing" not in p.parts]
    runtime += list((ROOT / "engine" / "_core").glob("*.pyx"))
    declared = {MODULE_OF.get(name, name) for name in map(requirement_name,
                                                          PROJECT["dependencies"])}
    assert third_party_imports(runtime) == declared
    bench = {MODULE_OF.get(requirement_name(r), requirement_name(r))
             for r in PROJECT["optional-dependencies"]["bench"]}
    assert third_party_imports([ROOT / p for p in BENCH_ONLY]) - declared <= bench


def test_console_script_is_the_module_entry_point() -> None:
    assert PROJECT["scripts"]["engine"] == "engine.__main__:main"
    module, _, function = PROJECT["scripts"]["engine"].partition(":")
    # What the installed `engine` script runs, as pip's generated wrapper does.
    result = subprocess.run(
        [sys.executable, "-c", f"import sys; from {module} import {function}; "
                               f"sys.argv[0] = 'engine'; sys.exit({function}())", "--version"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("engine ")


def test_wheels_are_built_by_cibuildwheel_for_every_supported_python() -> None:
    config = TOOLS["cibuildwheel"]
    assert config["build"] == "cp311-* cp312-* cp313-*"
    assert PROJECT["requires-python"] == ">=3.11"
    assert "tests/_core" in config["test-command"]

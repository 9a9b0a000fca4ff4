"""Layering (DESIGN.md §2): the allowed-imports graph of engine/, sans-IO layers, no cycles.

Method: parse every module of engine/ with `ast` (Cython sources: their import lines) and check
three rules.

1. Imports between units (a top-level module or package of engine/, e.g. `raft`, `types`)
   follow ALLOWED: the cores (raft, paxos) import no I/O and not each other; replication
   imports no core; `_core` imports only errors and wire codes; state machines (kv and the
   packages to come: shard, txn, coord, fs) never import aio. Imports under `if
   TYPE_CHECKING:` count too: a layer that names another's types depends on it. A unit missing
   from ALLOWED is an error, so a new package declares its place before it lands.
2. Only aio, cli, benchmark, testing and __main__ (plus logs and profiling, see IO_ALLOWED)
   touch sockets, files, clocks, threads or processes: everywhere else the I/O modules, the
   built-in `open` and the unseeded module-level `random` functions are refused (a core uses
   only a seeded `random.Random` it was given or built from its seed).
3. The module graph, function-level imports included (TYPE_CHECKING blocks excluded: they
   never run), has no cycle. A function-level import may defer an optional dependency or keep
   `import engine` cheap; it must never hide a cycle.

Each rule is proven able to fail on a small synthetic tree with a planted violation.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from engine.testing.serializability import strongly_connected_components

REPOSITORY = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------- the graph

FOUNDATION = frozenset({"errors", "wire", "types", "limits"})
# What a consensus core may use: the foundation, the message vocabulary, the compiled hot
# paths, the Core protocol and the protocol-neutral machinery.
CORE_DEPS = FOUNDATION | {"messages", "_core", "core", "replication"}
# Deterministic state machines (applied on every replica): never aio, never a core.
STATE_MACHINE_DEPS = FOUNDATION | {"messages", "_core"}
UNITS = frozenset({
    "engine", "__main__", "errors", "wire", "types", "limits", "config", "messages", "core",
    "_core", "replication", "raft", "paxos", "driver", "host", "kv", "shard", "txn", "coord", "fs",
    "aio", "cli", "testing", "benchmark", "benchmark_shards", "logs", "profiling", "twopc",
})
ALLOWED: dict[str, frozenset[str]] = {
    "errors": frozenset(),
    "wire": frozenset(),  # the wire codes: a leaf
    "types": frozenset({"errors", "wire"}),
    "limits": frozenset({"errors", "wire"}),
    "_core": frozenset({"errors", "wire"}),
    "messages": frozenset({"wire", "_core"}),
    "core": frozenset({"errors", "types", "messages"}),
    "replication": FOUNDATION | {"messages", "_core"},
    "raft": CORE_DEPS,
    "paxos": CORE_DEPS,
    # Above the cores: a NodeConfig is checked against what its protocol's core needs.
    "config": FOUNDATION | {"raft", "paxos"},
    # The KV store embeds the coordination state (leases, locks, watches, elections).
    "kv": STATE_MACHINE_DEPS | {"coord"},
    "shard": STATE_MACHINE_DEPS | {"kv"},
    "txn": STATE_MACHINE_DEPS | {"kv", "shard"},
    "coord": STATE_MACHINE_DEPS,
    "fs": STATE_MACHINE_DEPS | {"kv", "shard", "txn"},
    # Classic 2PC, a sans-IO protocol of its own: the foundation only, no core, no aio.
    "twopc": FOUNDATION,
    # The driver runs cores and state machines against interfaces: no aio, no I/O. It
    # reports events (a snapshot taken, a node removed) through engine.logs' structured
    # records; the handlers a shell installs do the writing.
    "driver": CORE_DEPS | {"config", "raft", "paxos", "kv", "shard", "txn", "coord", "fs",
                           "logs"},
    # Many groups' drivers under one turn, one transport and one storage: still no I/O.
    "host": frozenset({"driver", "messages", "types", "errors"}),
    "logs": frozenset({"errors"}),
    "profiling": frozenset({"messages"}),
    "aio": UNITS - {"testing", "benchmark", "benchmark_shards", "__main__"},
    "cli": UNITS - {"testing", "benchmark", "benchmark_shards", "__main__"},
    "testing": UNITS - {"benchmark", "benchmark_shards", "__main__"},
    "benchmark": UNITS - {"__main__"},
    "benchmark_shards": UNITS - {"__main__"},
    "__main__": UNITS,
    # The public re-exports.
    "engine": UNITS - {"testing", "benchmark", "benchmark_shards", "cli", "__main__"},
}
# The units that may touch sockets, files, clocks, threads and processes.
IO_ALLOWED = frozenset({
    "aio", "cli", "benchmark", "benchmark_shards", "testing", "__main__",
    "logs",        # the log formatter stamps records with the wall clock and writes stderr
    "profiling",   # the benchmark's latency profiler reads the monotonic clock
})
FORBIDDEN_MODULES = frozenset({
    "asyncio", "socket", "time", "threading", "multiprocessing", "subprocess", "select",
    "selectors", "io", "pathlib", "shutil", "tempfile", "os", "signal", "datetime", "uvloop",
    "asyncio_dgram", "concurrent",
})
# engine/_core/__init__.py reads ENGINE_NO_EXTENSIONS / ENGINE_REQUIRE_EXTENSIONS from
# os.environ once at import to pick an implementation; that is configuration, not I/O.
IO_EXCEPTIONS = frozenset({("engine._core", "os")})
RANDOM_ALLOWED_ATTRIBUTES = frozenset({"Random"})

# --------------------------------------------------------------------------- the scan


@dataclass(frozen=True)
class Import:
    source: str          # importing module, dotted ("engine.raft.core")
    target: str          # imported module, dotted (an engine module, or the top of another)
    line: int
    function_level: bool
    type_checking: bool


@dataclass
class Tree:
    modules: dict[str, Path] = field(default_factory=dict)
    imports: list[Import] = field(default_factory=list)
    io_uses: list[tuple[str, int, str]] = field(default_factory=list)   # module, line, what


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _resolve(modules: dict[str, Path], base: str, names: list[str]) -> list[str]:
    """`from base import a, b`: the submodules named, else `base` itself."""
    found = [f"{base}.{name}" for name in names if f"{base}.{name}" in modules]
    return found if len(found) == len(names) else [*found, base]


def _is_type_checking(test: ast.expr) -> bool:
    return "TYPE_CHECKING" in ast.unparse(test)


def scan(root: Path) -> Tree:
    """Every import and I/O use of the package `root / "engine"`."""
    tree = Tree()
    files = sorted((root / "engine").rglob("*.py")) + sorted((root / "engine").rglob("*.pyx"))
    for path in files:
        tree.modules[module_name(root, path)] = path
    for name, path in tree.modules.items():
        if path.suffix == ".pyx":
            _scan_cython(tree, name, path)
        else:
            _scan_python(tree, name, path)
    return tree


def _scan_cython(tree: Tree, name: str, path: Path) -> None:
    # Cython syntax is not Python: import lines only (cimports are C-level, not modules).
    for number, line in enumerate(path.read_text().splitlines(), 1):
        words = line.replace(",", " ").split()
        indented = line[:1].isspace()
        if words[:1] == ["import"] and len(words) > 1:
            targets = [words[1]]
        elif words[:1] == ["from"] and len(words) > 3 and words[2] == "import":
            targets = _resolve(tree.modules, words[1], words[3:]) if words[1].startswith(
                "engine") else [words[1]]
        else:
            continue
        for target in targets:
            _record(tree, name, target, number, indented, False)


def _scan_python(tree: Tree, name: str, path: Path) -> None:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def visit(node: ast.AST, in_function: bool, type_checking: bool) -> None:
        for child in ast.iter_child_nodes(node):
            function = in_function or isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            guarded = type_checking or (
                isinstance(child, ast.If) and _is_type_checking(child.test))
            targets: list[str] = []
            if isinstance(child, ast.Import):
                targets = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                names = [alias.name for alias in child.names]
                targets = _resolve(tree.modules, base, names) if base.startswith(
                    "engine") else [base]
                if base == "random":
                    bad = sorted(set(names) - RANDOM_ALLOWED_ATTRIBUTES)
                    if bad:
                        tree.io_uses.append((name, child.lineno, f"from random import {bad}"))
            for target in targets:
                _record(tree, name, target, child.lineno, function, guarded)
            if (isinstance(child, ast.Call) and isinstance(child.func, ast.Name)
                    and child.func.id == "open"):
                tree.io_uses.append((name, child.lineno, "calls open()"))
            if (isinstance(child, ast.Attribute) and isinstance(child.value, ast.Name)
                    and child.value.id == "random"
                    and child.attr not in RANDOM_ALLOWED_ATTRIBUTES):
                tree.io_uses.append((name, child.lineno, f"uses random.{child.attr} (unseeded)"))
            visit(child, function, guarded)

    visit(ast.parse(path.read_text(), filename=str(path)), False, False)


def _record(tree: Tree, name: str, target: str, line: int, function: bool, guarded: bool) -> None:
    tree.imports.append(Import(name, target, line, function, guarded))
    top = target.split(".")[0]
    if top in FORBIDDEN_MODULES and not guarded:
        tree.io_uses.append((name, line, f"imports {target}"))


# --------------------------------------------------------------------------- the rules


def graph_violations(tree: Tree) -> list[str]:
    """Rule 1: imports between units outside ALLOWED, and units not in it."""
    found = []
    for unit in sorted({unit_of(module) for module in tree.modules}):
        if unit not in ALLOWED:
            found.append(f"engine unit {unit!r} is not in the allowed-imports graph")
    for imp in tree.imports:
        if not imp.target.startswith("engine"):
            continue
        source, target = unit_of(imp.source), unit_of(imp.target)
        if source != target and source in ALLOWED and target not in ALLOWED[source]:
            found.append(f"{imp.source}:{imp.line}: {source} may not import {imp.target}")
    return found


def io_violations(tree: Tree) -> list[str]:
    """Rule 2: I/O, clocks and unseeded randomness outside IO_ALLOWED."""
    found = []
    for module, line, what in tree.io_uses:
        if unit_of(module) in IO_ALLOWED:
            continue
        top = what.removeprefix("imports ").split(".")[0]
        if (module, top) in IO_EXCEPTIONS:
            continue
        found.append(f"{module}:{line}: {what}")
    return found


def cycle_violations(tree: Tree) -> list[str]:
    """Rule 3: cycles among engine modules, function-level imports included."""
    edges: dict[str, dict[str, Import]] = {}
    for imp in tree.imports:
        if imp.type_checking or not imp.target.startswith("engine"):
            continue
        parts = imp.target.split(".")
        # Importing a.b.c runs the __init__ of a.b first; the importer's own packages are
        # already initialising, so they add no edge.
        for i in range(2, len(parts) + 1):
            target = ".".join(parts[:i])
            if (target in tree.modules and target != imp.source
                    and not imp.source.startswith(target + ".")):
                edges.setdefault(imp.source, {}).setdefault(target, imp)
    found = []
    for component in strongly_connected_components(
            sorted(tree.modules), lambda module: sorted(edges.get(module, {}))):
        members = set(component)
        links = []
        for source in component:
            for target, imp in sorted(edges.get(source, {}).items()):
                if target in members:
                    where = " (function-level)" if imp.function_level else ""
                    links.append(f"{source}:{imp.line} -> {target}{where}")
        found.append(f"import cycle among {component}: " + "; ".join(links))
    return found


# --------------------------------------------------------------------------- engine/


@pytest.fixture(scope="module")
def engine_tree() -> Tree:
    return scan(REPOSITORY)


def test_imports_follow_the_allowed_graph(engine_tree: Tree) -> None:
    assert graph_violations(engine_tree) == []


def test_only_the_io_layers_touch_io_clocks_or_unseeded_randomness(engine_tree: Tree) -> None:
    assert io_violations(engine_tree) == []


def test_no_import_cycle_not_even_behind_a_function_level_import(engine_tree: Tree) -> None:
    assert cycle_violations(engine_tree) == []


def test_the_scan_sees_the_layers(engine_tree: Tree) -> None:
    units = {unit_of(module) for module in engine_tree.modules}
    assert {"raft", "paxos", "replication", "_core", "kv", "aio", "config", "wire"} <= units
    assert len(engine_tree.imports) > 300


def test_the_graph_states_the_design_rules() -> None:
    """DESIGN.md §2, checked on ALLOWED itself so that loosening it fails here."""
    cores = {"raft", "paxos"}
    state_machines = {"kv", "shard", "txn", "coord", "fs"}
    for core in cores:
        assert not ALLOWED[core] & (cores | {"aio", "config", "driver", "testing"}), core
    assert not ALLOWED["replication"] & cores
    assert ALLOWED["_core"] <= {"errors", "wire"}
    assert ALLOWED["twopc"] <= FOUNDATION
    assert ALLOWED["wire"] == frozenset()
    for machine in state_machines:
        assert "aio" not in ALLOWED[machine] and not ALLOWED[machine] & cores, machine
    for unit, allowed in ALLOWED.items():
        if unit not in IO_ALLOWED | {"engine"}:
            assert not allowed & {"aio", "cli", "testing", "benchmark"}, unit


# --------------------------------------------------------------------------- planted faults


def _plant(tmp_path: Path, files: dict[str, str]) -> Tree:
    """A synthetic engine/ of the given files (path -> source); every package gets an
    __init__.py."""
    for relative, source in files.items():
        path = tmp_path / "engine" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
        for parent in path.relative_to(tmp_path).parents:
            init = tmp_path / parent / "__init__.py"
            if parent != Path(".") and not init.exists():
                init.write_text("")
    return scan(tmp_path)


def test_a_core_importing_the_other_core_is_caught(tmp_path: Path) -> None:
    tree = _plant(tmp_path, {"raft/core.py": "", "paxos/core.py": "from engine.raft import core\n"})
    assert graph_violations(tree) == ["engine.paxos.core:1: paxos may not import engine.raft.core"]


def test_replication_importing_a_core_is_caught(tmp_path: Path) -> None:
    tree = _plant(tmp_path, {
        "raft/log.py": "", "replication/reads.py": "def f():\n    import engine.raft.log\n"})
    assert graph_violations(tree) == [
        "engine.replication.reads:2: replication may not import engine.raft.log"]


def test_core_compiled_code_importing_beyond_errors_and_wire_is_caught(tmp_path: Path) -> None:
    tree = _plant(tmp_path, {
        "messages.py": "", "wire.py": "", "errors.py": "",
        "_core/codec_c.pyx": "from engine.wire import KNOWN_MESSAGE_TYPES\n"
                             "from engine.errors import DecodeError\n"
                             "    from engine.messages import Message\n",
        "_core/codec_py.py": "from engine import messages\n"})
    assert sorted(graph_violations(tree)) == [
        "engine._core.codec_c:3: _core may not import engine.messages",
        "engine._core.codec_py:1: _core may not import engine.messages",
    ]


def test_a_state_machine_importing_aio_is_caught_even_for_types(tmp_path: Path) -> None:
    tree = _plant(tmp_path, {
        "aio/node.py": "",
        "kv/store.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                       "    from engine.aio.node import Node\n"})
    assert graph_violations(tree) == ["engine.kv.store:3: kv may not import engine.aio.node"]


def test_an_undeclared_package_is_caught(tmp_path: Path) -> None:
    tree = _plant(tmp_path, {"gossip/peer.py": ""})
    assert graph_violations(tree) == ["engine unit 'gossip' is not in the allowed-imports graph"]


def test_io_in_a_sans_io_layer_is_caught(tmp_path: Path) -> None:
    tree = _plant(tmp_path, {
        "raft/probe.py": "import asyncio\nfrom time import monotonic\nimport random\n"
                         "x = random.random()\nopen('f')\nfrom random import choice\n",
        "replication/clock.py": "def now():\n    import time\n    return time.time()\n",
        "aio/udp.py": "import socket\nimport time\n",
        "_core/__init__.py": "import os\n"})
    assert io_violations(tree) == [
        "engine.raft.probe:1: imports asyncio",
        "engine.raft.probe:2: imports time",
        "engine.raft.probe:4: uses random.random (unseeded)",
        "engine.raft.probe:5: calls open()",
        "engine.raft.probe:6: from random import ['choice']",
        "engine.replication.clock:2: imports time",
    ]


def test_a_function_level_import_hiding_a_cycle_is_caught(tmp_path: Path) -> None:
    tree = _plant(tmp_path, {
        "types.py": "def check():\n    from engine.paxos.config import PaxosConfig\n",
        "paxos/config.py": "from engine.types import Limits\n"})
    assert cycle_violations(tree) == [
        "import cycle among ['engine.paxos.config', 'engine.types']: "
        "engine.paxos.config:1 -> engine.types; "
        "engine.types:2 -> engine.paxos.config (function-level)"
    ]


def test_a_cycle_through_a_package_init_is_caught(tmp_path: Path) -> None:
    tree = _plant(tmp_path, {
        "paxos/__init__.py": "from engine.paxos.config import PaxosConfig\n",
        "paxos/config.py": "from engine.config import Limits\n",
        "config.py": "def f():\n    from engine.paxos.quorums import check\n",
        "paxos/quorums.py": ""})
    [cycle] = cycle_violations(tree)
    assert "engine.config:2 -> engine.paxos (function-level)" in cycle


def test_type_checking_imports_and_deferred_imports_without_a_cycle_pass(tmp_path: Path) -> None:
    tree = _plant(tmp_path, {
        "aio/node.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                       "    from engine.aio.metrics import Metrics\n",
        "aio/metrics.py": "from engine.aio.node import Node\n",
        "benchmark.py": "def run():\n    from engine.aio.node import Node\n"})
    assert cycle_violations(tree) == [] and graph_violations(tree) == []

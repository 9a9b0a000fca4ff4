"""Test harness shipped with engine: users test their own state machines with it.

- check_linearizable: a linearizability checker (Wing & Gong / Lowe / Porcupine search) for
  Jepsen-shaped histories, with register, kv and set models and pluggable user models.
- sim: the deterministic simulator (seeded network, disk and clock) for the protocol cores.
- nemesis: Jepsen-style fault injection against real `serve` processes (kill -9, pauses,
  partitions, packet faults, WAL-tail damage) with register and set workloads.
- check_mutual_exclusion, check_watch_history, check_namespace_tree, PosixModel: checkers
  for locks with fencing tokens, watches and a file-system namespace (locks.py, watches.py,
  namespace.py), and the POSIX namespace oracle for model-based tests.
- memory_txn, fs_check: an in-memory optimistic serializable transactional store (the
  client protocol engine.FileSystem runs on) with a deterministic interleaver of clients'
  transaction steps, and the tree checker over a file system's stored keys.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from engine.testing.linearizability import CheckResult, check_linearizable
from engine.testing.models import HistoryError, KVModel, Model, RegisterModel, SetModel
from engine.testing.serializability import Result as SerializabilityResult
from engine.testing.serializability import check_serializable

if TYPE_CHECKING:
    from engine.testing.nemesis import RunConfig, RunResult, run
    from engine.testing.process_cluster import ProcessCluster

# Imported on first use, so `python -m engine.testing.nemesis` runs the module once (runpy
# warns when the package has already imported the module it is asked to run).
_LAZY = {"RunConfig": "engine.testing.nemesis", "RunResult": "engine.testing.nemesis",
         "run": "engine.testing.nemesis", "ProcessCluster": "engine.testing.process_cluster"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'engine.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "check_linearizable", "CheckResult", "check_serializable", "SerializabilityResult",
    "HistoryError", "Model", "RegisterModel", "KVModel",
    "SetModel", "RunConfig", "RunResult", "run", "ProcessCluster",
]

from engine.testing.locks import (  # noqa: E402
    LockCheckResult,
    check_mutual_exclusion,
    lock_handover_delays,
)
from engine.testing.namespace import (  # noqa: E402
    InodeRecord,
    NamespaceCheckResult,
    PosixModel,
    check_acknowledged_effects,
    check_namespace_tree,
)
from engine.testing.watches import (  # noqa: E402
    Change,
    Compacted,
    Overflow,
    WatchCheckResult,
    Watcher,
    check_watch_history,
)

__all__ += [
    "check_mutual_exclusion", "LockCheckResult", "lock_handover_delays", "check_watch_history",
    "Change", "Compacted", "Overflow", "Watcher", "WatchCheckResult", "PosixModel",
    "check_namespace_tree", "check_acknowledged_effects", "InodeRecord", "NamespaceCheckResult",
]

"""engine: a consensus engine for Python (Raft, Multi-Paxos over UDP, Cython core).

    import engine
    node = engine.Node(engine.NodeConfig(...), state_machine=engine.KVStore())

The runtime classes (Node, LocalCluster, Client, KVStore) are imported on first use so that
`import engine` stays cheap for code that only needs the sans-IO cores or the errors.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from engine._core import IMPLEMENTATION
from engine.errors import (
    ConfChangeInProgress,
    ConfigError,
    DecodeError,
    EngineError,
    EntryTooLarge,
    InvariantViolation,
    LogIndexError,
    MembershipError,
    NotLeader,
    Overloaded,
    Rejected,
    StateMachineError,
    Stopped,
    StorageError,
    Superseded,
    Timeout,
)
from engine.types import Limits, NodeConfig, TimingConfig

if TYPE_CHECKING:
    from engine.aio.client import Client
    from engine.aio.local_cluster import LocalCluster
    from engine.aio.node import Node
    from engine.aio.register import WriteOnceRegister
    from engine.kv import KVStore

try:
    __version__ = version("engine")   # the one version: pyproject.toml's, as installed
except PackageNotFoundError:   # a source tree that was never installed
    __version__ = "0+unknown"

_LAZY = {
    "Node": "engine.aio.node",
    "LocalCluster": "engine.aio.local_cluster",
    "Client": "engine.aio.client",
    "KVStore": "engine.kv",
    "WriteOnceRegister": "engine.aio.register",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "IMPLEMENTATION", "__version__", "Node", "NodeConfig", "LocalCluster", "Client", "KVStore",
    "WriteOnceRegister", "Limits", "TimingConfig",
    "ConfigError", "DecodeError", "EngineError", "EntryTooLarge", "InvariantViolation",
    "LogIndexError", "MembershipError", "ConfChangeInProgress",
    "NotLeader", "Overloaded", "Rejected", "StateMachineError", "StorageError", "Superseded",
    "Stopped", "Timeout",
]

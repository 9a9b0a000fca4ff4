"""Test harness shipped with engine: users test their own state machines with it.

- check_linearizable: a linearizability checker (Wing & Gong / Lowe / Porcupine search) for
  Jepsen-shaped histories, with register, kv and set models and pluggable user models.
- sim: the deterministic simulator (seeded network, disk and clock) for the protocol cores.
- nemesis: Jepsen-style fault injection against real `serve` processes (kill -9, pauses,
  partitions, packet faults, WAL-tail damage) with register and set workloads.
"""

from engine.testing.linearizability import CheckResult, check_linearizable
from engine.testing.models import HistoryError, KVModel, Model, RegisterModel, SetModel
from engine.testing.nemesis import RunConfig, RunResult, run
from engine.testing.process_cluster import ProcessCluster

__all__ = [
    "check_linearizable", "CheckResult", "HistoryError", "Model", "RegisterModel", "KVModel",
    "SetModel", "RunConfig", "RunResult", "run", "ProcessCluster",
]

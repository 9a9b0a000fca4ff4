"""Test harness shipped with engine: users test their own state machines with it.

- check_linearizable: a linearizability checker (Wing & Gong / Lowe / Porcupine search) for
  Jepsen-shaped histories, with register, kv and set models and pluggable user models.
- sim: the deterministic simulator (seeded network, disk and clock) for the protocol cores.
"""

from engine.testing.linearizability import CheckResult, check_linearizable
from engine.testing.models import HistoryError, KVModel, Model, RegisterModel, SetModel

__all__ = [
    "check_linearizable", "CheckResult", "HistoryError", "Model", "RegisterModel", "KVModel",
    "SetModel",
]

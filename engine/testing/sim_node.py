"""What the simulator and its protocol adapters (sim_raft.py, sim_paxos.py) share, below
both: a simulated node, a proposal, and the view of the simulation an adapter uses. The
adapters import this module, never sim.py (which imports them).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from engine.driver import Driver
from engine.limits import Limits, TimingConfig
from engine.testing.sim_disk import SimDisk
from engine.types import HardState, Snapshot


class Proposal(NamedTuple):
    """A proposal as the core accepted it: its first slot/index and term/ballot."""

    first: int
    last: int
    term: int
    command: bytes


@dataclass(slots=True)
class SimNode:
    node_id: int
    # The shipped driver (engine.driver.Driver) of this incarnation; None while down.
    driver: Driver | None = None
    incarnation: int = 0
    disk: SimDisk = field(default_factory=SimDisk)
    storage: Any = None  # sim.SimStorage while up
    last_commit: int = 0
    last_term: int = 0
    applied_index: int = 0
    # The state machine: Raft, the commands applied (no no-ops); Paxos, one value per slot.
    applied: list[Any] = field(default_factory=list)
    digest: bytes = b""  # Paxos: digest chain over `applied`
    led_ballot: int = 0  # Paxos: the ballot this node last led (counts leader changes)
    snapshot_index: int = 0  # index of the last snapshot taken or installed (in memory)
    # Membership: a spare node joins (runs) once first added; a witness stays one for life
    # (a node id is never reused across witness and full roles).
    joined: bool = True
    witness: bool = False

    @property
    def core(self) -> Any:
        driver = self.driver
        return None if driver is None else driver.core

    @property
    def up(self) -> bool:
        return self.driver is not None

    @property
    def pending(self) -> dict[int, Any]:
        """Proposals this incarnation's core accepted, not answered yet (the driver's)."""
        return {} if self.driver is None else self.driver.proposals

    # Read-only views of the disk under the names scenario tests use.
    @property
    def disk_snapshot(self) -> Snapshot | None:
        return self.disk.snapshot

    @property
    def disk_hard_state(self) -> HardState:
        return self.disk.hard_state

    @property
    def disk_entries(self) -> list[Any]:
        return self.disk.entries

    @property
    def disk_log_start(self) -> tuple[int, int]:
        return self.disk.log_start

    @property
    def disk_last_index(self) -> int:
        return self.disk.last_index

    def disk_term(self, index: int) -> int | None:
        """Term of the entry at index on disk; None if a snapshot covers it; 0 if absent."""
        return self.disk.term(index)


class SimulationView(Protocol):
    """The part of sim.Simulation a protocol adapter reads and calls."""

    initial_voters: tuple[int, ...]
    nodes: dict[int, SimNode]
    stats: dict[str, int]
    snapshot_counters: dict[int, dict[str, int]]
    rng: random.Random
    timing: TimingConfig
    limits: Limits
    check_invariants: bool
    lease_reads_enabled: bool

    @staticmethod
    def address(node_id: int) -> str: ...
    def check_durable(self) -> None: ...
    def messages_in_flight(self) -> Iterator[Any]: ...
    def on_new_leader(self, node_id: int) -> None: ...


__all__ = ["Proposal", "SimNode", "SimulationView"]

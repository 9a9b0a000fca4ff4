"""What a consensus core is, as the driver sees it (DESIGN.md §1, §2).

A core is sans-IO and deterministic: the driver feeds it inputs (`tick`, `step`, `propose`,
`read_index`) and takes its output as a `Ready` (etcd's Ready/Advance contract,
engine.types.Ready), which it persists, sends and applies before calling `advance`. Every
protocol core (engine.raft.RaftCore, engine.paxos.PaxosCore) satisfies `Core`; mypy checks it
where each core module declares itself (`_: type[Core] = RaftCore`).

What only some protocols offer is a small capability protocol of its own. A driver resolves
them once, when it builds a node (`capabilities(core)`), and never probes a core's attributes
afterwards: a feature a protocol lacks is a clear ConfigError at the call, not an
AttributeError deep in a turn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from engine.types import Ready, Snapshot


class LogView(Protocol):
    """The part of a core's log the driver reads (snapshot policy, status)."""

    @property
    def first_index(self) -> int: ...
    @property
    def last_index(self) -> int: ...
    @property
    def persisted_index(self) -> int: ...
    def term(self, index: int) -> int: ...


@runtime_checkable
class Core(Protocol):
    """A sans-IO consensus core: inputs in, one Ready out, advance() when it is handled."""

    node_id: int
    role: Any               # a StrEnum; "leader" when this core leads
    leader_id: int          # 0 when unknown
    commit_index: int
    applied_index: int

    @property
    def term(self) -> int: ...                      # Raft's term; Paxos' promised ballot
    @property
    def log(self) -> Any: ...                       # a LogView
    @property
    def snapshot_index(self) -> int: ...

    def tick(self) -> None: ...
    def step(self, message: Any) -> None: ...
    def propose(self, commands: list[bytes]) -> tuple[int, int, int]: ...   # first, last, term
    def read_index(self, context: bytes) -> None: ...
    def campaign(self) -> None: ...
    def has_ready(self) -> bool: ...
    def ready(self) -> Ready: ...
    def advance(self, ready: Ready) -> None: ...
    def compact(self, snapshot: Snapshot, compact_to: int | None = None) -> None: ...
    def status(self) -> dict[str, Any]: ...


@runtime_checkable
class MembershipChanges(Protocol):
    """Joint-consensus / single-server membership changes (Raft thesis §4)."""

    @property
    def membership(self) -> Any: ...
    @property
    def membership_index(self) -> int: ...

    def propose_conf_change(self, change: Any, request_id: int = 0) -> tuple[int, int]: ...
    @property
    def conf_change_pending(self) -> bool: ...
    def configuration_at(self, index: int) -> Any: ...
    def configurations(self) -> list[tuple[int, Any]]: ...
    @property
    def is_witness(self) -> bool: ...


@runtime_checkable
class LeadershipTransfer(Protocol):
    """Hand leadership to a chosen member (Raft thesis §3.10)."""

    @property
    def lead_transferee(self) -> int: ...

    def transfer_leadership(self, target: int) -> None: ...


@runtime_checkable
class LeaseReads(Protocol):
    """Reads served on the leader's lease, without a round (Raft thesis §6.4.1)."""

    @property
    def ticks(self) -> int: ...
    def lease_read_index(self) -> tuple[int, int] | None: ...


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a core offers beyond `Core`, resolved once per node; None = not offered."""

    membership: MembershipChanges | None
    transfer: LeadershipTransfer | None
    lease_reads: LeaseReads | None


def capabilities(core: Core) -> Capabilities:
    """Resolve `core`'s optional capabilities (once, when a node is built)."""
    return Capabilities(
        membership=core if isinstance(core, MembershipChanges) else None,
        transfer=core if isinstance(core, LeadershipTransfer) else None,
        lease_reads=core if isinstance(core, LeaseReads) else None,
    )

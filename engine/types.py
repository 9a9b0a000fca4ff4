"""Ids and the records shared by cores and drivers: HardState, Snapshot, ReadState, Ready, and
the StateMachine protocol. Configuration is engine.config (NodeConfig) and engine.limits
(Limits, TimingConfig)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NewType, Protocol, runtime_checkable

from engine.errors import ConfigError
from engine.wire import U64_MAX

NodeId = NewType("NodeId", int)
Term = NewType("Term", int)
Index = NewType("Index", int)



@dataclass(frozen=True, slots=True)
class HardState:
    """What Raft must persist before answering (Raft Figure 2: currentTerm, votedFor; plus
    commit so a restarted node need not wait to learn it). For Paxos, term = promised ballot."""

    term: int = 0
    vote: int = 0
    commit: int = 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A state-machine snapshot covering the log through (index, term).

    `data` is the state machine's own bytes (StateMachine.snapshot()). The checksummed
    envelope used on disk and on the wire is engine.replication.snapshot.encode_snapshot /
    decode_snapshot.
    """

    index: int
    term: int
    data: bytes = b""
    # The verified envelope these came from, when at hand (saves re-encoding 100s of MB).
    envelope: bytes = field(default=b"", repr=False, compare=False)
    # The cluster configuration as of `index` (engine.raft.membership.encode_membership),
    # so a node restarting from this snapshot, or installing it, knows its membership;
    # b"" in snapshots written before membership changes existed.
    configuration: bytes = b""


@dataclass(slots=True)
class ReadState:
    """A linearizable read may be served once applied >= index (Raft §6.4)."""

    index: int
    context: bytes


@dataclass(slots=True)
class Ready:
    """Output of a protocol core since the last `advance()` (etcd's Ready).

    The driver must, in order:
      1. persist `entries` (an entry whose index is <= the stored last index replaces that
         suffix) and `hard_state` if not None; fsync once for both (group commit);
      `messages` may be sent before or during step 1 (leader's parallel write, Raft §10.2.1);
      2. then send `messages_after_persist` (votes, append acks: they promise durable state);
      3. apply `committed_entries` in order, serve `read_states` once applied >= index;
      4. call `core.advance(ready)`.

    `must_sync` (set by the core, never inferred by a driver): the write of step 1 must be
    fsynced before anything in steps 2-4 happens — true when there are entries or the
    hard state's term or vote changed (etcd's MustSync; Raft Figure 2, persistent state).
    A hard state that only moves the commit index is volatile and written without a sync.

    `snapshot` (None unless one arrived) is a snapshot received from the leader (Raft) or
    from a replica answering a catch-up request (Paxos; its `term` is then the ballot this
    replica stores at that slot, 0 for a hole — what the WAL's compaction marker needs): before
    step 1 the driver persists it durably (snapshot file, then the WAL's compaction marker
    at its (index, term)) and before step 3 it restores the state machine from it; every
    entry in `committed_entries` then follows snapshot.index.
    """

    hard_state: HardState | None = None
    entries: list[Any] = field(default_factory=list)
    messages: list[Any] = field(default_factory=list)
    messages_after_persist: list[Any] = field(default_factory=list)
    committed_entries: list[Any] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    snapshot: Snapshot | None = None
    must_sync: bool = False

    def is_empty(self) -> bool:
        return not (
            self.hard_state is not None or self.snapshot is not None or self.entries
            or self.messages
            or self.messages_after_persist or self.committed_entries or self.read_states
        )


@runtime_checkable
class StateMachine(Protocol):
    """What engine.Node replicates (engine.KVStore is one).

    `apply(index, command)` runs every committed command in log order, on every node, and
    must be deterministic; its result goes back to the proposer (engine.Node.propose,
    engine.Client.call). `query(query)` answers reads without changing state
    (engine.Node.read, engine.Client.query). `snapshot()` returns the whole state as bytes
    and `restore(data)` replaces the state with one. A state machine may also offer
    `snapshot_fork() -> Callable[[], bytes]` (freeze now, serialise on another thread) so
    snapshots do not pause the node.
    """

    def apply(self, index: int, command: bytes) -> bytes: ...
    def query(self, query: bytes) -> bytes: ...
    def snapshot(self) -> bytes: ...
    def restore(self, data: bytes) -> None: ...


# Node ids and client ids are disjoint ranges, so a transport tells a member from a client by
# its id alone and a client can never be mistaken for (or shadow) a member.
MAX_NODE_ID = (1 << 32) - 1
MIN_CLIENT_ID = 1 << 32


def check_client_id(client_id: int) -> int:
    """`client_id` if it is in the client range, else ConfigError (it could be a member's)."""
    if not isinstance(client_id, int) or not MIN_CLIENT_ID <= client_id <= U64_MAX:
        raise ConfigError(
            f"client_id must be an int in [2**32, 2**64) (ids below 2**32 are node ids), "
            f"got {client_id!r}")
    return client_id


def parse_address(address: str, *, allow_any_port: bool = False) -> tuple[str, int]:
    """'host:port' ('[::1]:port' for IPv6) -> (host, port); raises ConfigError with the
    offending text. allow_any_port accepts port 0 (a listener bound to any free port)."""
    host, sep, port_text = address.rpartition(":")
    lowest = 0 if allow_any_port else 1
    if not sep or not host or not port_text.isdigit() or not lowest <= int(port_text) < 65536:
        raise ConfigError(f"bad address {address!r}: expected host:port")
    return host.strip("[]"), int(port_text)

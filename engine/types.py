"""Ids, limits, configuration and the Ready/HardState records shared by cores and drivers.

Every queue, window and batch has its named limit in `Limits` (DESIGN.md §5 "Bounded
everything"). Exceeding one is back-pressure (engine.Overloaded) or a DecodeError, never
unbounded growth.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NewType, Protocol, runtime_checkable

from engine.errors import ConfigError

NodeId = NewType("NodeId", int)
Term = NewType("Term", int)
Index = NewType("Index", int)

U64_MAX = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class Limits:
    """Named bounds; one place for all of them."""

    # Wire: 65,000 bytes fits a loopback datagram (MTU 65,536). On a real Ethernet network
    # set 1,400 (1,500 MTU minus IP/UDP headers) so no datagram is IP-fragmented.
    max_datagram_bytes: int = 65_000
    max_messages_per_frame: int = 4_096
    max_entries_per_message: int = 65_536
    max_context_bytes: int = 64 * 1024 * 1024
    # A proposal larger than this is refused at propose time (EntryTooLarge).
    max_entry_bytes: int = 16 * 1024 * 1024
    # Raft replication window per follower (pipelining): appends in flight and their bytes.
    max_inflight_messages: int = 256
    max_inflight_bytes: int = 32 * 1024 * 1024
    # One append carries at most this many payload bytes.
    max_append_bytes: int = 256 * 1024
    # Back-pressure on the leader: proposals waiting and log bytes not yet committed.
    max_pending_proposals: int = 65_536
    max_uncommitted_bytes: int = 256 * 1024 * 1024
    # Committed entries handed to the state machine per Ready. Small on purpose: answers go
    # out (and the answered callers' next proposals come in) while the rest is applied, so
    # batches overlap instead of moving in lock step (docs/performance.md, "Apply batch").
    max_apply_batch: int = 256
    # Reassembly of chunked frames: concurrent partial frames per sender, total bytes.
    max_reassembly_frames: int = 64
    max_reassembly_bytes: int = 128 * 1024 * 1024
    # Client sessions kept by a state machine for exactly-once (Raft thesis §6.3).
    max_client_sessions: int = 100_000
    # Bytes of one session's cached last result (for its retries). A larger result (a value
    # read or replaced, asked for) is cached without its payload and a retry is answered
    # "applied, result not retained" with its revision. With max_client_sessions this bounds
    # the session table: sessions x (28 + max(this, 11)) bytes (KVStore.session_bytes_bound).
    max_session_result_bytes: int = 1_024
    # Replay window per sender (frames older than this many counters are refused).
    replay_window_frames: int = 1_024
    # Raft snapshot transfer (chunked over UDP): bytes per SNAPSHOT message, chunks in flight
    # per follower, and the largest snapshot a follower accepts (its reassembly buffer).
    max_snapshot_chunk_bytes: int = 60 * 1024
    max_snapshot_inflight_chunks: int = 64
    max_snapshot_bytes: int = 4 * 1024 * 1024 * 1024
    # Replay across restarts (docs/reliability.md, "Authenticated wire and cluster identity"):
    # a node refuses client frames whose epoch (the client's clock at its start, ns) is older
    # than its own boot time minus this bound, so a request captured before a restart cannot
    # be replayed after it (except one captured within this bound before the restart, and
    # then only once). It is also the largest backward clock skew of a client against a node
    # that is tolerated; a client whose frames get no answer renews its epoch.
    max_client_clock_skew_s: int = 60
    # Replies do not amplify: an answer to a client may be at most this many times the size
    # of its request unless the request opted into more (Message.index = max reply bytes).
    max_reply_amplification: int = 4

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"Limits.{name} must be a positive int, got {value!r}")
        if not 512 <= self.max_datagram_bytes <= 65_507:
            raise ConfigError(
                f"Limits.max_datagram_bytes must be in [512, 65507], got {self.max_datagram_bytes}"
            )


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


@dataclass(frozen=True, slots=True)
class TimingConfig:
    """Protocol time in ticks; the driver ticks every tick_ms milliseconds."""

    tick_ms: int = 10
    heartbeat_interval_ticks: int = 5          # 50 ms
    election_timeout_ticks: int = 30           # randomized in [T, 2T): 300-600 ms

    def __post_init__(self) -> None:
        if self.tick_ms <= 0:
            raise ConfigError(f"tick_ms must be positive, got {self.tick_ms}")
        if self.heartbeat_interval_ticks <= 0:
            raise ConfigError("heartbeat_interval_ticks must be positive")
        if self.election_timeout_ticks <= self.heartbeat_interval_ticks:
            raise ConfigError(
                "election_timeout_ticks must exceed heartbeat_interval_ticks "
                f"({self.election_timeout_ticks} <= {self.heartbeat_interval_ticks})"
            )


# Node ids and client ids are disjoint ranges, so a transport tells a member from a client by
# its id alone and a client can never be mistaken for (or shadow) a member.
MAX_NODE_ID = (1 << 32) - 1
MIN_CLIENT_ID = 1 << 32
CLUSTER_ID_LABEL = b"engine/cluster-id/v1/"  # domain separation of derive_cluster_id


def check_client_id(client_id: int) -> int:
    """`client_id` if it is in the client range, else ConfigError (it could be a member's)."""
    if not isinstance(client_id, int) or not MIN_CLIENT_ID <= client_id <= U64_MAX:
        raise ConfigError(
            f"client_id must be an int in [2**32, 2**64) (ids below 2**32 are node ids), "
            f"got {client_id!r}")
    return client_id


def derive_cluster_id(members: Mapping[int, str], cluster_key: bytes) -> int:
    """The cluster id of a cluster bootstrapped with `members` (id -> "host:port") under
    `cluster_key`.

    Every bootstrap node computes the same id from its configuration without talking to the
    others, and two clusters bootstrapped from different member lists get different ids, so
    their frames are refused (engine._core.codec_py, "Identities"). The addresses count too:
    a process started with a member's id at another address (a wrong list, or a copy of a
    node started twice) is of another cluster, so its newer boot epoch can never displace the
    real member's at its peers. Keyed by the cluster key: the id reveals nothing about the
    member list. Never 0 (0 marks an unbound sender).
    """
    text = ",".join(f"{member}={host.lower()}:{port}" for member, (host, port) in sorted(
        (member, parse_address(address)) for member, address in members.items())).encode()
    digest = hashlib.blake2b(CLUSTER_ID_LABEL + text, key=cluster_key, digest_size=8).digest()
    return int.from_bytes(digest, "little") or 1


def parse_address(address: str, *, allow_any_port: bool = False) -> tuple[str, int]:
    """'host:port' ('[::1]:port' for IPv6) -> (host, port); raises ConfigError with the
    offending text. allow_any_port accepts port 0 (a listener bound to any free port)."""
    host, sep, port_text = address.rpartition(":")
    lowest = 0 if allow_any_port else 1
    if not sep or not host or not port_text.isdigit() or not lowest <= int(port_text) < 65536:
        raise ConfigError(f"bad address {address!r}: expected host:port")
    return host.strip("[]"), int(port_text)


PROTOCOLS = ("raft", "paxos")


@dataclass(frozen=True)
class NodeConfig:
    """Configuration of one engine.Node (DESIGN.md §3).

    members maps every voter's id to its "host:port". data_dir=None keeps everything in
    memory (nothing survives a process restart). fsync=False with a data_dir writes the WAL
    without fsync: fast, and NOT durable (benchmarks only).
    """

    node_id: int
    members: dict[int, str]
    protocol: str = "raft"
    data_dir: str | None = None
    cluster_key: bytes = b""
    cluster_id: int = 0
    timing: TimingConfig = field(default_factory=TimingConfig)
    limits: Limits = field(default_factory=Limits)
    fsync: bool = True
    pre_vote: bool = True
    check_quorum: bool = True
    check_invariants: bool = False
    # A proposal or read not answered within this many seconds fails with engine.Timeout.
    request_timeout_s: float = 10.0
    # Seeds the randomized election timeout; None derives one from node_id and the boot time.
    seed: int | None = None
    # Honour authenticated ADMIN messages that switch the transport's fault filter
    # (partitions, loss, delay) — for fault-injection tests only; off in production.
    allow_fault_injection: bool = False
    # Paxos only: phase-1 / phase-2 quorum sizes (Flexible Paxos, |Q1| + |Q2| > n, checked by
    # PaxosConfig); None means a majority.
    phase1_quorum: int | None = None
    phase2_quorum: int | None = None
    # Raft snapshots: the driver snapshots the state machine once this many entries or
    # payload bytes were applied since the last snapshot, then trims the log below it except
    # the last snapshot_trailing_entries (so a follower slightly behind still gets entries).
    snapshot_entries: int = 100_000
    snapshot_bytes: int = 256 * 1024 * 1024
    snapshot_trailing_entries: int = 5_000
    # Lease reads (Raft thesis §6.4.1): the lease lasts election_timeout_ticks minus this
    # clock-drift bound after the heartbeat round a quorum acknowledged; None: a fifth of the
    # election timeout (at least 2 ticks).
    lease_drift_ticks: int | None = None
    # Membership (Raft only, thesis ch. 4). `members` is the bootstrap configuration: every
    # member's address; `learners` and `witnesses` name members that start as non-voters /
    # metadata-only voters (a witness that is not also a learner is a bootstrap witness
    # voter). `join=True` starts this node as a learner of an existing cluster (members = the
    # existing voters plus itself; with witness=True, as a witness learner): it never
    # campaigns, learns the real configuration from the leader, and waits for an operator's
    # `add_member` (engine.Node.add_member / `python -m engine members add`).
    learners: tuple[int, ...] = ()
    witnesses: tuple[int, ...] = ()
    join: bool = False
    witness: bool = False
    # Serve Prometheus metrics over HTTP at this "host:port" (port 0: any free port, see
    # engine.Node.metrics.address); None: no endpoint, no metrics kept (engine.aio.metrics).
    metrics_addr: str | None = None
    # The "host:port" the UDP socket binds (e.g. "0.0.0.0:7001" behind NAT or in a
    # container); None binds the member address, which is what the others send to.
    listen: str | None = None
    # Encrypt every frame's payload (AES-256-GCM under the frame's authentication subkey,
    # engine/_core/codec_py "Payload encryption"); every member and client of the cluster must
    # use the same setting: frames of the other mode are dropped and counted (wrong_mode).
    encrypt_payloads: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.node_id, int) or not 0 < self.node_id <= MAX_NODE_ID:
            raise ConfigError(f"node_id must be an int in [1, 2**32), got {self.node_id!r}")
        if not self.members:
            raise ConfigError("members must name at least one node")
        owners: dict[tuple[str, int], int] = {}
        for member_id, address in self.members.items():
            if not isinstance(member_id, int) or not 0 < member_id <= MAX_NODE_ID:
                raise ConfigError(f"member ids must be ints in [1, 2**32), got {member_id!r}")
            parsed = parse_address(address)
            if parsed in owners:
                raise ConfigError(
                    f"members {owners[parsed]} and {member_id} have the same address {address}")
            owners[parsed] = member_id
        if self.listen is not None:
            parse_address(self.listen)
        if self.node_id not in self.members:
            raise ConfigError(f"node_id {self.node_id} is not in members {sorted(self.members)}")
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if not isinstance(self.cluster_key, bytes) or not 16 <= len(self.cluster_key) <= 64:
            raise ConfigError("cluster_key must be 16 to 64 bytes (e.g. secrets.token_bytes(32))")
        if self.protocol == "paxos":
            # Validates at construction what the core will need: node ids fit a ballot
            # (16 bits) and the Flexible Paxos quorum intersection |Q1| + |Q2| > n.
            from engine.paxos.config import PaxosConfig

            PaxosConfig(self.node_id, tuple(sorted(self.members)),
                        phase1_quorum=self.phase1_quorum, phase2_quorum=self.phase2_quorum)
        elif self.phase1_quorum is not None or self.phase2_quorum is not None:
            raise ConfigError("phase1_quorum / phase2_quorum apply to protocol='paxos' only")
        if self.request_timeout_s <= 0:
            raise ConfigError("request_timeout_s must be positive")
        if self.snapshot_entries <= 0 or self.snapshot_bytes <= 0:
            raise ConfigError("snapshot_entries and snapshot_bytes must be positive")
        if self.snapshot_trailing_entries < 0:
            raise ConfigError("snapshot_trailing_entries must be >= 0")
        if self.metrics_addr is not None:
            parse_address(self.metrics_addr, allow_any_port=True)
        self._validate_membership()

    def _validate_membership(self) -> None:
        """The bootstrap membership fields (see above); raises ConfigError."""
        object.__setattr__(self, "learners", tuple(self.learners))
        object.__setattr__(self, "witnesses", tuple(self.witnesses))
        special = self.learners or self.witnesses or self.join or self.witness
        if special and self.protocol != "raft":
            raise ConfigError("learners, witnesses and join need protocol='raft'")
        for name in ("learners", "witnesses"):
            unknown = sorted(set(getattr(self, name)) - set(self.members))
            if unknown:
                raise ConfigError(f"{name} {unknown} are not in members {sorted(self.members)}")
        if self.witness and not self.join:
            raise ConfigError("witness=True starts a joining witness: it needs join=True "
                              "(a bootstrap witness is named in witnesses=)")
        if special:
            from engine.errors import MembershipError
            from engine.raft.membership import Membership

            learners, witnesses = self.bootstrap_learners(), self.bootstrap_witnesses()
            try:
                Membership.of(set(self.members) - set(learners), learners, witnesses).validate()
            except MembershipError as exc:
                raise ConfigError(f"bootstrap membership: {exc}") from None

    def bootstrap_learners(self) -> tuple[int, ...]:
        """Members that start as learners (this node too when joining)."""
        extra = (self.node_id,) if self.join and self.node_id not in self.learners else ()
        return tuple(sorted((*self.learners, *extra)))

    def bootstrap_witnesses(self) -> tuple[int, ...]:
        extra = (self.node_id,) if self.witness and self.node_id not in self.witnesses else ()
        return tuple(sorted((*self.witnesses, *extra)))

    def bootstrap_cluster_id(self) -> int:
        """The cluster id this node starts with when its data dir holds none: cluster_id if
        set; else 0 (unbound: learned from the first member frame) for a joining node; else
        derive_cluster_id over the bootstrap members."""
        if self.cluster_id or self.join:
            return self.cluster_id
        return derive_cluster_id(self.members, self.cluster_key)

    def address_of(self, node_id: int) -> tuple[str, int]:
        return parse_address(self.members[node_id])

"""Configuration of one engine.Node (DESIGN.md §3): NodeConfig and its helpers, with the
Limits and TimingConfig it carries (engine.limits).

This module sits above the cores: a NodeConfig is checked at construction against what the
chosen protocol's core will need (engine.paxos.config, engine.raft.membership), so a bad
configuration fails here, naming the field, and never inside a running node.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from engine.errors import ConfigError, MembershipError
from engine.limits import Limits, TimingConfig
from engine.paxos.config import PaxosConfig
from engine.raft.membership import Membership
from engine.types import MAX_NODE_ID, parse_address

CLUSTER_ID_LABEL = b"engine/cluster-id/v1/"  # domain separation of derive_cluster_id


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
    # Raft groups only: an idle group stops ticking and heartbeating until an input wakes it
    # (engine.raft.config.RaftConfig.quiesce). NodeHost turns it on for the groups it hosts.
    quiesce: bool = False
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


__all__ = [
    "NodeConfig", "Limits", "TimingConfig", "PROTOCOLS", "derive_cluster_id", "parse_address",
]

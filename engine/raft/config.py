"""RaftConfig: the static configuration of one Raft core."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from engine.errors import ConfigError, MembershipError
from engine.limits import Limits, TimingConfig
from engine.raft.membership import Membership


@dataclass(frozen=True, slots=True)
class RaftConfig:
    """The static configuration of one core. voters / learners / witnesses / addresses are
    the *bootstrap* membership (the configuration at index 0); the configuration in force is
    the newest one in the log or snapshot (engine.raft.membership). A node joining an existing
    cluster passes itself as a learner (witness too, for a witness) and learns the real
    configuration from the leader.

    pre_vote: thesis §9.6; check_quorum: thesis §6.2 (leader steps down without a quorum
    and followers with a live leader ignore votes, §4.2.3); check_invariants: run
    RaftCore._check_invariants() after every input (tests and simulation); seed: the one
    source of randomness (the randomized election timeout).
    """

    node_id: int
    voters: tuple[int, ...]
    timing: TimingConfig = field(default_factory=TimingConfig)
    limits: Limits = field(default_factory=Limits)
    pre_vote: bool = True
    check_quorum: bool = True
    check_invariants: bool = False
    seed: int = 0
    # Lease reads (thesis §6.4.1, needs check_quorum): a restarted node also ignores votes
    # for one election timeout, and the lease is shortened by lease_drift_ticks (None: a
    # fifth of the election timeout, at least 2 ticks) to bound clock drift between nodes.
    lease_read: bool = False
    lease_drift_ticks: int | None = None
    # Bootstrap membership beyond the voters (engine.raft.membership.Membership).
    learners: tuple[int, ...] = ()
    witnesses: tuple[int, ...] = ()
    addresses: tuple[tuple[int, str], ...] = ()
    # A learner is promoted only if its match index is within this many entries of the
    # leader's last index (thesis §4.2.1: a new voter must be caught up first).
    promote_max_lag_entries: int = 1_000
    # Quiescence (CockroachDB): an idle group stops ticking and heartbeating (RaftCore.quiet;
    # the process-level failure detector of engine.aio.node_host wakes it).
    quiesce: bool = False

    def bootstrap_membership(self) -> Membership:
        return Membership.of(self.voters, self.learners, self.witnesses, self.addresses)

    @property
    def lease_drift_ticks_or_default(self) -> int:
        if self.lease_drift_ticks is not None:
            return self.lease_drift_ticks
        return max(2, self.timing.election_timeout_ticks // 5)

    def __post_init__(self) -> None:
        if self.node_id <= 0:
            raise ConfigError(f"node_id must be positive, got {self.node_id}")
        if len(set(self.voters)) != len(self.voters) or any(v <= 0 for v in self.voters):
            raise ConfigError(f"voters must be distinct positive ids, got {self.voters}")
        if self.node_id not in self.voters and self.node_id not in self.learners:
            raise ConfigError(
                f"node_id {self.node_id} is not one of the voters {self.voters} "
                f"(nor a learner {self.learners})"
            )
        if self.promote_max_lag_entries < 0:
            raise ConfigError("promote_max_lag_entries must be >= 0")
        if isinstance(self.addresses, Mapping):
            # Accept {id: "host:port"} too; stored as sorted pairs (hashable, frozen).
            object.__setattr__(self, "addresses", tuple(sorted(self.addresses.items())))
        try:
            self.bootstrap_membership().validate()
        except MembershipError as exc:
            raise ConfigError(f"bootstrap membership: {exc}") from None
        drift = self.lease_drift_ticks_or_default
        if not 0 <= drift < self.timing.election_timeout_ticks:
            raise ConfigError(
                f"lease_drift_ticks {drift} must be in [0, election_timeout_ticks)"
            )

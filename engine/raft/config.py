"""RaftConfig: the static configuration of one Raft core."""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.errors import ConfigError
from engine.types import Limits, TimingConfig


@dataclass(frozen=True, slots=True)
class RaftConfig:
    """node_id and voters are fixed for the life of the core (no membership change yet).

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
        if self.node_id not in self.voters:
            raise ConfigError(f"node_id {self.node_id} is not one of the voters {self.voters}")
        drift = self.lease_drift_ticks_or_default
        if not 0 <= drift < self.timing.election_timeout_ticks:
            raise ConfigError(
                f"lease_drift_ticks {drift} must be in [0, election_timeout_ticks)"
            )

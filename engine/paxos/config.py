"""PaxosConfig: the static configuration of one Multi-Paxos core, with Flexible Paxos quorums."""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.errors import ConfigError
from engine.limits import Limits, TimingConfig
from engine.paxos.ballot import MAX_NODE_ID


@dataclass(frozen=True, slots=True)
class PaxosConfig:
    """node_id and voters (the acceptors, each also a proposer and learner) are fixed.

    phase1_quorum / phase2_quorum: sizes of the prepare (Q1) and accept (Q2) quorums; None
    means a majority. Flexible Paxos (Howard, Malkhi, Spiegelman 2016) only needs every Q1 to
    intersect every Q2, which for size-based quorums is |Q1| + |Q2| > n; checked here.
    check_invariants: run PaxosCore._check_invariants() after every input (tests, simulation).
    seed: the one source of randomness (randomized election timeouts).
    """

    node_id: int
    voters: tuple[int, ...]
    timing: TimingConfig = field(default_factory=TimingConfig)
    limits: Limits = field(default_factory=Limits)
    check_invariants: bool = False
    seed: int = 0
    phase1_quorum: int | None = None
    phase2_quorum: int | None = None

    def __post_init__(self) -> None:
        if not 0 < self.node_id <= MAX_NODE_ID:
            raise ConfigError(f"paxos node_id must be in [1, {MAX_NODE_ID}], got {self.node_id}")
        if len(set(self.voters)) != len(self.voters) or not self.voters:
            raise ConfigError(f"voters must be distinct, got {self.voters}")
        if any(not 0 < v <= MAX_NODE_ID for v in self.voters):
            raise ConfigError(f"paxos voter ids must be in [1, {MAX_NODE_ID}], got {self.voters}")
        if self.node_id not in self.voters:
            raise ConfigError(f"node_id {self.node_id} is not one of the voters {self.voters}")
        n = len(self.voters)
        q1, q2 = self.q1, self.q2
        for name, q in (("phase1_quorum", q1), ("phase2_quorum", q2)):
            if not 1 <= q <= n:
                raise ConfigError(f"{name} must be in [1, {n}], got {q}")
        if q1 + q2 <= n:
            # Flexible Paxos §3: a Q1 and a Q2 that do not intersect let two leaders choose
            # different values for one slot.
            raise ConfigError(
                f"phase1_quorum {q1} + phase2_quorum {q2} must exceed the {n} acceptors "
                "(Flexible Paxos quorum intersection)"
            )

    @property
    def q1(self) -> int:
        """Phase-1 (prepare/promise) quorum size."""
        return self.phase1_quorum if self.phase1_quorum is not None else len(self.voters) // 2 + 1

    @property
    def q2(self) -> int:
        """Phase-2 (accept/accepted) quorum size."""
        return self.phase2_quorum if self.phase2_quorum is not None else len(self.voters) // 2 + 1

    @property
    def read_quorum(self) -> int:
        """Acceptors (the leader included) that must confirm the leader's ballot for a read:
        the smallest set that intersects every Q1, n - |Q1| + 1 (<= |Q2|). A new leader needs
        a Q1 of promises, so one of them confirmed us first and nothing newer is chosen yet."""
        return len(self.voters) - self.q1 + 1

"""The honest-outcomes check (engine.testing.invariants.check_definite_failures_not_applied)
and the simulator's use of it: every proposal is answered as engine.Node answers it, and no
operation answered with a definite failure (engine.Rejected and its subclasses) may ever be
applied. The swarms (test_swarm.py, test_membership_swarm.py, tests/paxos/test_paxos_sim.py)
run it on every seed; here the check itself must catch a planted bug (an appended proposal
answered with Rejected) in each protocol and in the membership swarm."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import pytest

from engine import driver as driver_module
from engine import errors
from engine.errors import InvariantViolation
from engine.testing.invariants import check_definite_failures_not_applied
from engine.testing.sim import SimulationFailure, run_swarm

MEMBERSHIP_OFFSET = 100_000   # tests/sim/test_membership_swarm.py's seeds


def test_the_check_names_what_was_applied_after_a_definite_failure() -> None:
    check_definite_failures_not_applied({b"a": "Overloaded: full"}, [b"b", b"c"])
    check_definite_failures_not_applied(set(), [b"a"])
    with pytest.raises(InvariantViolation, match=r"1 operation.*b'a': Overloaded: full"):
        check_definite_failures_not_applied({b"a": "Overloaded: full"}, [b"b", b"a"])
    with pytest.raises(InvariantViolation, match="2 operation"):
        check_definite_failures_not_applied({"x", "y"}, ["y", "x", "z"])


def rejected_when_appended(cause: errors.EngineError, *, may_apply: bool) -> errors.EngineError:
    """A planted bug: work that entered a log answered with a definite failure."""
    return errors.Rejected(str(cause)) if may_apply else errors.unfinished(cause, may_apply=False)


def removal_is_definite(cause: errors.EngineError, *, may_apply: bool) -> errors.EngineError:
    """A planted bug: a removed node fails its appended proposals with MembershipError."""
    if isinstance(cause, errors.MembershipError):
        return errors.MembershipError(str(cause))
    return errors.unfinished(cause, may_apply=may_apply)


@pytest.mark.parametrize(("protocol", "membership", "seed", "planted"), [
    ("raft", False, 0, rejected_when_appended),
    ("paxos", False, 0, rejected_when_appended),
    ("raft", True, MEMBERSHIP_OFFSET + 4, removal_is_definite),
], ids=["raft", "paxos", "raft-membership-removal"])
def test_a_planted_false_rejection_is_caught(
    monkeypatch: pytest.MonkeyPatch, protocol: Literal["raft", "paxos"], membership: bool,
    seed: int, planted: Callable[..., errors.EngineError],
) -> None:
    honest = run_swarm(seed, protocol=protocol, membership=membership, fault_time_ms=5_000,
                       max_events=5_000)
    assert honest.stats["answered_unknown"] >= 1
    monkeypatch.setattr(driver_module, "unfinished", planted)
    with pytest.raises(SimulationFailure, match="answered with a definite failure were applied"):
        run_swarm(seed, protocol=protocol, membership=membership, fault_time_ms=5_000,
                  max_events=5_000)

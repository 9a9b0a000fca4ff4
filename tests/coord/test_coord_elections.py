"""Elections: campaign / leader / proclaim / resign / observe, on leases."""

from __future__ import annotations

import random

import pytest

from engine.coord import CoordState, Elections, Leader, LeaderChange
from engine.errors import FencingTokenStale, LeaseNotFound, NotElectionLeader


def test_first_candidate_leads_and_the_rest_queue() -> None:
    elections = Elections()
    assert elections.campaign(b"e", 1, b"one") == [LeaderChange(b"e", Leader(b"e", 1, b"one", 1))]
    assert elections.campaign(b"e", 2, b"two") == []
    assert elections.candidates(b"e") == [1, 2]
    assert elections.leader(b"e") == Leader(b"e", 1, b"one", 1)


def test_resign_hands_over_to_the_next_candidate_with_a_newer_term() -> None:
    elections = Elections()
    elections.campaign(b"e", 1, b"one")
    elections.campaign(b"e", 2, b"two")
    assert elections.resign(b"e", 1) == [LeaderChange(b"e", Leader(b"e", 2, b"two", 2))]
    assert elections.resign(b"e", 2) == [LeaderChange(b"e", None)]
    assert elections.resign(b"e", 2) == []


def test_proclaim_only_by_the_leader_and_observers_see_the_new_value() -> None:
    elections = Elections()
    elections.campaign(b"e", 1, b"one")
    elections.campaign(b"e", 2, b"two")
    with pytest.raises(NotElectionLeader):
        elections.proclaim(b"e", 2, b"mine")
    changes = elections.proclaim(b"e", 1, b"uno")
    assert changes == [LeaderChange(b"e", Leader(b"e", 1, b"uno", 1))]
    assert elections.proclaim(b"e", 1, b"uno") == []


def test_a_deposed_leaders_term_is_fenced() -> None:
    elections = Elections()
    elections.campaign(b"e", 1, b"one")
    elections.campaign(b"e", 2, b"two")
    elections.check_term(b"e", 1)
    elections.resign(b"e", 1)
    with pytest.raises(FencingTokenStale):
        elections.check_term(b"e", 1)
    elections.check_term(b"e", 2)


def test_a_lease_that_ends_leaves_its_elections() -> None:
    state = CoordState()
    a, b = state.grant_lease(100), state.grant_lease(100)
    state.campaign(b"x", a.lease_id, b"a")
    state.campaign(b"y", a.lease_id, b"a")
    state.campaign(b"x", b.lease_id, b"b")
    end = state.expire(a.lease_id, a.generation)
    assert end is not None
    assert end.leader_changes == (LeaderChange(b"x", Leader(b"x", b.lease_id, b"b", 3)),
                                  LeaderChange(b"y", None))
    with pytest.raises(LeaseNotFound):
        state.campaign(b"x", a.lease_id, b"a")


def test_elections_and_locks_are_separate_name_spaces() -> None:
    state = CoordState()
    lease = state.grant_lease(100)
    state.campaign(b"same", lease.lease_id, b"v")
    result = state.acquire(b"same", lease.lease_id)
    assert result.granted is not None and result.granted.token == 1


@pytest.mark.parametrize("seed", range(8))
def test_observed_changes_replay_every_leader_in_term_order(seed: int) -> None:
    """A seeded walk of campaigns, proclaims, resigns and lease ends: the LeaderChange events
    the operations return are exactly the successive leaders an observer must see, terms
    never go back, and the leader is always a live candidate at the head of the queue."""
    rng = random.Random(seed)
    state = CoordState()
    names = (b"x", b"y")
    observed: dict[bytes, list[Leader | None]] = {name: [None] for name in names}
    changes_seen = 0
    for _ in range(2_000):
        leases = [lease.lease_id for lease in state.leases]
        roll = rng.random()
        name = rng.choice(names)
        before = {n: state.elections.leader(n) for n in names}
        changes: list[LeaderChange] = []
        if roll < 0.15 or not leases:
            state.grant_lease(100)
            continue
        lease_id = rng.choice(leases)
        if roll < 0.5:
            changes = state.campaign(name, lease_id, b"v%d" % rng.randrange(3))
        elif roll < 0.65:
            try:
                changes = state.elections.proclaim(name, lease_id, b"p%d" % rng.randrange(3))
            except NotElectionLeader:
                assert before[name] is None or before[name].lease_id != lease_id
        elif roll < 0.85:
            changes = state.elections.resign(name, lease_id)
        else:
            lease = state.leases.get(lease_id)
            assert lease is not None
            end = state.expire(lease_id, lease.generation)
            assert end is not None
            changes = list(end.leader_changes)
        for change in changes:
            observed[change.election].append(change.leader)
            changes_seen += 1
        for n in names:
            leader = state.elections.leader(n)
            assert observed[n][-1] == leader            # nothing changed unannounced
            candidates = state.elections.candidates(n)
            assert (leader is None) == (not candidates)
            if leader is not None:
                assert candidates[0] == leader.lease_id and leader.lease_id in state.leases
    for stream in observed.values():
        terms = [leader.term for leader in stream if leader is not None]
        assert terms == sorted(terms)
        for previous, current in zip(stream, stream[1:], strict=False):
            assert previous != current                  # every event is a change
            if previous is not None and current is not None and current.term == previous.term:
                assert current.lease_id == previous.lease_id   # a proclaim, same leadership
    assert changes_seen > 100

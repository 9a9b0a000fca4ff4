"""Elections: campaign / leader / proclaim / resign / observe, on leases."""

from __future__ import annotations

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

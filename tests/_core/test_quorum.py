"""Quorum arithmetic (engine/_core/quorum): unit tests for both implementations and
differential tests c == py == deliberately naive oracles (etcd's quorum/quick_test.go idea)."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

U64_MAX = (1 << 64) - 1
PENDING, WON, LOST = 0, 1, 2


# -- naive oracles -------------------------------------------------------------------------------


def naive_committed_index(match: list[int]) -> int:
    """The largest index that at least a majority has reached, by counting (no sorting)."""
    if not match:
        return U64_MAX
    majority = len(match) // 2 + 1
    return max(index for index in match if sum(m >= index for m in match) >= majority)


def naive_vote_result(voters: set[int], votes: list[tuple[int, bool]]) -> int:
    first: dict[int, bool] = {}
    for voter, granted in votes:
        if voter in voters:
            first.setdefault(voter, granted)
    if not voters:
        return WON
    grants = sum(first.values())
    undecided = len(voters) - len(first)
    if 2 * grants > len(voters):
        return WON
    if 2 * (grants + undecided) <= len(voters):
        return LOST
    return PENDING


# -- committed index -----------------------------------------------------------------------------


@pytest.mark.parametrize("match, expected", [
    ([], U64_MAX),
    ([5], 5),
    ([1, 2], 1),
    ([2, 1, 3], 2),
    ([4, 1, 3, 2], 2),  # 4 voters need 3
    ([5, 1, 4, 2, 3], 3),
    ([7, 7, 0, 0, 7], 7),
    ([0, 0, U64_MAX], 0),
    ([U64_MAX, U64_MAX, 1], U64_MAX),
])
def test_committed_index(impl: SimpleNamespace, match: list[int], expected: int) -> None:
    assert impl.quorum.committed_index(match) == expected
    assert impl.quorum.committed_index(tuple(match)) == expected


def test_committed_index_many_voters_uses_the_same_rule(impl: SimpleNamespace) -> None:
    match = list(range(100, 0, -1))  # 100 voters (past the on-stack buffer): 51 must have it
    assert impl.quorum.committed_index(match) == 50


@pytest.mark.parametrize("voters", range(1, 10))
def test_committed_index_every_0_1_input(impl: SimpleNamespace, voters: int) -> None:
    # 0-1 principle (Knuth TAOCP 5.3.4): a comparator network that selects correctly on every
    # 0/1 input selects correctly on every input; covers the C twin's small-n networks.
    rows = [list(bits) for bits in itertools.product([0, 1], repeat=voters)]
    expected = [naive_committed_index(row) for row in rows]
    assert [impl.quorum.committed_index(row) for row in rows] == expected
    matrix = np.array(rows, dtype=np.uint64)
    assert impl.quorum.batched_committed_index(matrix).tolist() == expected


@pytest.mark.parametrize("match", [[-1, 2, 3], [1, 1 << 64]])
def test_committed_index_rejects_values_outside_uint64(impl: SimpleNamespace, match: list) -> None:
    with pytest.raises(OverflowError):
        impl.quorum.committed_index(match)


@pytest.mark.parametrize("old, new, expected", [
    ([5, 5, 1], [3, 3, 9], 3),
    ([3, 3, 9], [5, 5, 1], 3),
    ([4, 4, 4], [], 4),   # an empty half behaves like the other half (etcd joint.go)
    ([], [2, 9, 9], 9),
    ([], [], U64_MAX),
])
def test_joint_committed_index(
    impl: SimpleNamespace, old: list[int], new: list[int], expected: int
) -> None:
    assert impl.quorum.joint_committed_index(old, new) == expected


# -- batched -------------------------------------------------------------------------------------


def test_batched_committed_index(impl: SimpleNamespace) -> None:
    match = np.array([[5, 1, 4, 2, 3], [9, 9, 9, 0, 0], [0, 0, 0, 1, 1]], dtype=np.uint64)
    got = impl.quorum.batched_committed_index(match)
    assert got.dtype == np.uint64 and got.shape == (3,)
    assert got.tolist() == [3, 9, 0]
    assert match.tolist()[0] == [5, 1, 4, 2, 3]  # input untouched


@pytest.mark.parametrize("shape", [(0, 5), (0, 0), (3, 0)])
def test_batched_empty_shapes(impl: SimpleNamespace, shape: tuple[int, int]) -> None:
    got = impl.quorum.batched_committed_index(np.zeros(shape, dtype=np.uint64))
    assert got.dtype == np.uint64 and got.tolist() == [U64_MAX] * shape[0]


def test_batched_accepts_strided_and_readonly_input(impl: SimpleNamespace) -> None:
    full = np.arange(60, dtype=np.uint64).reshape(6, 10)
    view = full[::2, ::3]  # non-contiguous (3 x 4)
    view.flags.writeable = False
    expected = [naive_committed_index(row) for row in view.tolist()]
    assert impl.quorum.batched_committed_index(view).tolist() == expected


@pytest.mark.parametrize("bad", [
    np.zeros((2, 3), dtype=np.int64), np.zeros(3, dtype=np.uint64),
    np.zeros((1, 2, 3), dtype=np.uint64), [[1, 2, 3]],
])
def test_batched_rejects_other_shapes_and_dtypes(impl: SimpleNamespace, bad: object) -> None:
    with pytest.raises(TypeError):
        impl.quorum.batched_committed_index(bad)


# -- tallies -------------------------------------------------------------------------------------


def test_tally_wins_with_a_majority(impl: SimpleNamespace) -> None:
    tally = impl.quorum.Tally([1, 2, 3])
    assert tally.result() == PENDING
    assert tally.record(1, True) is True
    assert tally.result() == PENDING
    assert tally.record(2, False) is True
    assert tally.result() == PENDING
    assert tally.record(3, True) is True
    assert tally.result() == WON == impl.quorum.VoteResult.WON
    assert (tally.granted, tally.rejected) == (2, 1)


def test_tally_loses_as_soon_as_a_majority_is_out_of_reach(impl: SimpleNamespace) -> None:
    tally = impl.quorum.Tally([1, 2, 3, 4])  # 4 voters need 3 grants: 2 rejections lose
    tally.record(1, False)
    assert tally.result() == PENDING
    tally.record(2, False)
    assert tally.result() == LOST
    tally.record(3, True)
    tally.record(4, True)
    assert tally.result() == LOST


def test_tally_ignores_duplicates_and_non_voters(impl: SimpleNamespace) -> None:
    tally = impl.quorum.Tally([1, 2, 3, 3])  # repeated ids are one voter
    assert tally.voters == frozenset({1, 2, 3})
    assert tally.record(1, False) is True
    # A duplicated or reordered datagram cannot turn a rejection into a grant (first vote counts).
    assert tally.record(1, True) is False
    assert tally.record(4, True) is False
    assert tally.record(-1, True) is False
    assert tally.record(1 << 64, True) is False
    assert (tally.granted, tally.rejected, tally.result()) == (0, 1, PENDING)


def test_tally_results_are_the_shared_enum(both_impls: list[SimpleNamespace]) -> None:
    results = {impl.quorum.Tally([1]).result() for impl in both_impls}
    assert results == {both_impls[0].quorum.VoteResult.PENDING}
    assert [int(v) for v in both_impls[0].quorum.VoteResult] == [PENDING, WON, LOST]


def test_empty_tally_wins(impl: SimpleNamespace) -> None:
    # etcd majority.go: "the elections on an empty config win"; joint halves rely on it.
    tally = impl.quorum.Tally([])
    assert tally.result() == WON
    assert tally.record(1, True) is False


def test_tally_rejects_voter_ids_outside_uint64(impl: SimpleNamespace) -> None:
    with pytest.raises(OverflowError):
        impl.quorum.Tally([1, -2])


def test_joint_tally_needs_both_halves(impl: SimpleNamespace) -> None:
    tally = impl.quorum.JointTally([1, 2, 3], [3, 4, 5])
    assert tally.voters == frozenset({1, 2, 3, 4, 5})
    assert tally.record(1, True) and tally.record(2, True)
    assert tally.result() == PENDING  # old half won, new half undecided
    assert tally.record(3, True) is True  # counts in both halves
    assert tally.result() == PENDING
    assert tally.record(3, True) is False
    assert tally.record(4, True) is True
    assert tally.result() == WON
    assert (tally.granted, tally.rejected) == (4, 0)


def test_joint_tally_loses_if_either_half_loses(impl: SimpleNamespace) -> None:
    tally = impl.quorum.JointTally([1, 2, 3], [3, 4, 5])
    tally.record(1, True)
    tally.record(2, True)
    tally.record(4, False)
    tally.record(5, False)  # new half: 2 of 3 rejected
    assert tally.result() == LOST
    assert (tally.granted, tally.rejected) == (2, 2)
    assert tally.record(9, True) is False


def test_joint_tally_with_an_empty_half_is_the_other_half(impl: SimpleNamespace) -> None:
    halves: list[tuple[list[int], list[int]]] = [([1, 2, 3], []), ([], [1, 2, 3])]
    for old, new in halves:
        tally = impl.quorum.JointTally(old, new)
        tally.record(1, True)
        assert tally.result() == PENDING
        tally.record(2, True)
        assert tally.result() == WON
    assert impl.quorum.JointTally([], []).result() == WON


# -- differential: c == py == naive oracle -------------------------------------------------------

# Small index alphabet so that ties and duplicates are common; lengths cross the 32-voter
# on-stack buffer of the C twin; extremes of uint64 included.
match_values = st.one_of(st.integers(0, 6), st.integers(0, 1000),
                         st.sampled_from([U64_MAX, U64_MAX - 1, 1 << 63]))


@settings(max_examples=300, deadline=None)
@given(match=st.lists(match_values, max_size=70), other=st.lists(match_values, max_size=9))
def test_committed_index_differential(
    both_impls: list[SimpleNamespace], match: list[int], other: list[int]
) -> None:
    expected = naive_committed_index(match)
    expected_joint = min(expected, naive_committed_index(other))
    for impl in both_impls:
        assert impl.quorum.committed_index(match) == expected, impl.name
        assert impl.quorum.joint_committed_index(match, other) == expected_joint, impl.name
        assert impl.quorum.joint_committed_index(other, match) == expected_joint, impl.name


@settings(max_examples=200, deadline=None)
@given(voters=st.sets(st.integers(0, 9), max_size=7),
       new_voters=st.sets(st.integers(0, 9), max_size=7),
       votes=st.lists(st.tuples(st.integers(0, 11), st.booleans()), max_size=20))
def test_tally_differential(
    both_impls: list[SimpleNamespace], voters: set[int], new_voters: set[int],
    votes: list[tuple[int, bool]],
) -> None:
    for impl in both_impls:
        tally = impl.quorum.Tally(voters)
        joint = impl.quorum.JointTally(voters, new_voters)
        seen: set[int] = set()
        for k, (voter, granted) in enumerate(votes):
            counted = voter in voters and voter not in seen
            assert tally.record(voter, granted) is counted, impl.name
            joint_counted = voter in voters | new_voters and voter not in seen
            assert joint.record(voter, granted) is joint_counted, impl.name
            seen.add(voter)
            prefix = votes[:k + 1]
            assert tally.result() == naive_vote_result(voters, prefix), impl.name
            old_result = naive_vote_result(voters, prefix)
            new_result = naive_vote_result(new_voters, prefix)
            expected = (LOST if LOST in (old_result, new_result)
                        else WON if old_result == new_result == WON else PENDING)
            assert joint.result() == expected, impl.name
        first: dict[int, bool] = {}
        for voter, granted in votes:
            first.setdefault(voter, granted)
        in_old = {v: g for v, g in first.items() if v in voters}
        in_joint = {v: g for v, g in first.items() if v in voters | new_voters}
        assert (tally.granted, tally.rejected) == (
            sum(in_old.values()), len(in_old) - sum(in_old.values())), impl.name
        assert (joint.granted, joint.rejected) == (
            sum(in_joint.values()), len(in_joint) - sum(in_joint.values())), impl.name


@settings(max_examples=100, deadline=None)
@given(groups=st.integers(0, 12), voters=st.integers(0, 40), seed=st.integers(0, 2**32 - 1),
       alphabet=st.sampled_from([3, 1000, U64_MAX]))
def test_batched_differential(
    both_impls: list[SimpleNamespace], groups: int, voters: int, seed: int, alphabet: int
) -> None:
    rng = np.random.default_rng(seed)
    match = rng.integers(0, alphabet, size=(groups, voters), dtype=np.uint64, endpoint=True)
    expected = [naive_committed_index(row) for row in match.tolist()]
    for impl in both_impls:
        assert impl.quorum.batched_committed_index(match).tolist() == expected, impl.name

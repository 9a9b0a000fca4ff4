"""The coordination errors: typed, definite where nothing was done, and rebuilt intact by
copy and pickle (a node answering a remote client copies its errors)."""

from __future__ import annotations

import copy
import pickle

import pytest

from engine.errors import (
    Compacted,
    EngineError,
    FencingTokenStale,
    LeaseNotFound,
    LockKindMismatch,
    NotElectionLeader,
    Rejected,
    WatchOverflow,
)

ERRORS = [LeaseNotFound(3), FencingTokenStale(b"jobs", 1, 2), Compacted(4, 9),
          WatchOverflow(7), NotElectionLeader("not the leader"), LockKindMismatch("kind")]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_copy_and_pickle_keep_type_message_and_fields(error: EngineError) -> None:
    for twin in (copy.copy(error), pickle.loads(pickle.dumps(error))):
        assert type(twin) is type(error)
        assert str(twin) == str(error)
        assert vars(twin) == vars(error)


def test_refusals_are_definite_and_overflow_is_not_a_refusal() -> None:
    # Nothing was applied for these: the request may be retried as it is.
    for error in ERRORS:
        assert isinstance(error, Rejected) == (not isinstance(error, WatchOverflow))
    stale = FencingTokenStale(b"jobs", 1, 2)
    assert (stale.lock, stale.token, stale.newest_token) == (b"jobs", 1, 2)
    assert Compacted(4, 9).oldest_revision == 9

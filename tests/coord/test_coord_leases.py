"""LeaseTable (replicated) and Lessor (the leader's clock): one test per rule."""

from __future__ import annotations

import pytest

from engine.coord import Checkpoint, CoordState, Expire, LeaseTable, Lessor, LessorConfig
from engine.errors import LeaseNotFound, Overloaded, Rejected
from engine.limits import Limits


def test_grant_assigns_increasing_ids_never_reused() -> None:
    table = LeaseTable()
    first = table.grant(1_000)
    table.revoke(first.lease_id)
    second = table.grant(1_000)
    assert second.lease_id > first.lease_id
    assert (second.ttl_ms, second.remaining_ms, second.generation) == (1_000, 1_000, 1)


@pytest.mark.parametrize("ttl", [0, -5, 2**60, 1.5])
def test_grant_refuses_a_ttl_out_of_range(ttl: object) -> None:
    with pytest.raises(Rejected):
        LeaseTable().grant(ttl)  # type: ignore[arg-type]


def test_grant_is_bounded_by_max_leases() -> None:
    table = LeaseTable(Limits(max_leases=2))
    table.grant(10)
    table.grant(10)
    with pytest.raises(Overloaded):
        table.grant(10)


def test_keepalive_resets_remaining_and_bumps_generation() -> None:
    table = LeaseTable()
    lease = table.grant(1_000)
    table.checkpoint(lease.lease_id, 1, 300)
    assert lease.remaining_ms == 300
    table.keepalive(lease.lease_id)
    assert (lease.remaining_ms, lease.generation) == (1_000, 2)
    with pytest.raises(LeaseNotFound):
        table.keepalive(999)


def test_checkpoint_is_clamped_and_ignores_a_lease_gone() -> None:
    table = LeaseTable()
    lease = table.grant(1_000)
    assert table.checkpoint(lease.lease_id, 1, 5_000)
    assert lease.remaining_ms == 1_000
    table.checkpoint(lease.lease_id, 1, -3)
    assert lease.remaining_ms == 0
    assert not table.checkpoint(77, 1, 10)


def test_a_checkpoint_measured_before_a_renewal_does_not_undo_it() -> None:
    table = LeaseTable()
    lease = table.grant(1_000)
    table.keepalive(lease.lease_id)              # committed before the leader's CHECKPOINT
    assert not table.checkpoint(lease.lease_id, 1, 10)
    assert lease.remaining_ms == 1_000


def test_expire_applies_only_to_the_generation_the_leader_saw() -> None:
    table = LeaseTable()
    lease = table.grant(1_000)
    table.keepalive(lease.lease_id)          # committed before the leader's EXPIRE
    assert table.expire(lease.lease_id, 1) is None
    assert lease.lease_id in table
    assert table.expire(lease.lease_id, 2) is lease
    assert lease.lease_id not in table


def test_keys_attach_to_one_lease_and_revoke_returns_them() -> None:
    table = LeaseTable()
    a, b = table.grant(100), table.grant(100)
    table.attach(b"k1", a.lease_id)
    table.attach(b"k2", a.lease_id)
    table.attach(b"k1", b.lease_id)          # moves the key
    assert table.lease_of(b"k1") == b.lease_id
    assert table.detach(b"k2") == a.lease_id
    table.attach(b"k3", a.lease_id)
    ended = table.revoke(a.lease_id)
    assert ended is not None and ended.keys == {b"k3"}
    assert table.lease_of(b"k3") is None
    assert table.revoke(a.lease_id) is None
    with pytest.raises(LeaseNotFound):
        table.attach(b"k4", a.lease_id)


def test_lease_end_deletes_keys_and_grants_the_next_waiter_only() -> None:
    state = CoordState()
    holder, next_one, last = (state.grant_lease(100) for _ in range(3))
    state.leases.attach(b"svc/a", holder.lease_id)
    state.acquire(b"jobs", holder.lease_id)
    state.acquire(b"jobs", next_one.lease_id)
    state.acquire(b"jobs", last.lease_id)
    end = state.expire(holder.lease_id, holder.generation)
    assert end is not None
    assert end.keys == (b"svc/a",)
    assert [(g.lease_id, g.token) for g in end.grants] == [(next_one.lease_id, 2)]
    with pytest.raises(LeaseNotFound):
        state.acquire(b"jobs", holder.lease_id)


# ---------------------------------------------------------------------- Lessor


def _lessor(extend_ms: int = 500, drift: float = 0.1) -> tuple[LeaseTable, Lessor]:
    table = LeaseTable()
    return table, Lessor(table, LessorConfig(extend_ms=extend_ms, max_clock_drift=drift))


def test_a_follower_never_expires() -> None:
    table, lessor = _lessor()
    lease = table.grant(100)
    lessor.track(lease.lease_id, 0.0)
    assert lessor.expired(10**9) == []
    assert lessor.checkpoints(10**9) == []


def test_deadline_is_the_ttl_stretched_by_the_drift_bound() -> None:
    table, lessor = _lessor(drift=0.1)
    lessor.promote(0.0)
    lease = table.grant(1_000)
    lessor.track(lease.lease_id, 50.0)
    assert lessor.deadline(lease.lease_id) == pytest.approx(50.0 + 1_100.0)
    assert lessor.expired(1_149.0) == []
    assert lessor.expired(1_150.0) == [Expire(lease.lease_id, 1)]


def test_promote_extends_every_lease_by_the_election_timeout() -> None:
    table, lessor = _lessor(extend_ms=500, drift=0.0)
    lease = table.grant(1_000)
    table.checkpoint(lease.lease_id, 1, 200)
    lessor.promote(10_000.0)
    # remaining (200) + extend (500), never the remaining alone (etcd's Promote).
    assert lessor.deadline(lease.lease_id) == 10_700.0
    assert lessor.expired(10_699.0) == []
    assert [e.lease_id for e in lessor.expired(10_700.0)] == [lease.lease_id]


def test_renewal_moves_the_deadline_and_cancels_the_pending_decision() -> None:
    table, lessor = _lessor(drift=0.0)
    lessor.promote(0.0)
    lease = table.grant(100)
    lessor.track(lease.lease_id, 0.0)
    decided = lessor.expired(100.0)
    assert decided == [Expire(lease.lease_id, 1)]
    table.keepalive(lease.lease_id)                  # committed before the EXPIRE
    lessor.track(lease.lease_id, 101.0)
    assert table.expire(decided[0].lease_id, decided[0].generation) is None
    assert lessor.expired(10_000.0) == [Expire(lease.lease_id, 2)]


def test_an_expire_not_applied_is_proposed_again_after_the_retry_interval() -> None:
    table = LeaseTable()
    lessor = Lessor(table, LessorConfig(extend_ms=0, max_clock_drift=0.0,
                                        expire_retry_ms=1_000))
    lessor.promote(0.0)
    lease = table.grant(10)
    lessor.track(lease.lease_id, 0.0)
    assert len(lessor.expired(10.0)) == 1
    assert lessor.expired(500.0) == []               # in flight: not proposed twice
    assert len(lessor.expired(1_010.0)) == 1         # lost: proposed again


def test_expired_is_bounded_per_call_and_earliest_first() -> None:
    table = LeaseTable()
    lessor = Lessor(table, LessorConfig(extend_ms=0, max_clock_drift=0.0,
                                        max_expire_per_call=2))
    lessor.promote(0.0)
    leases = [table.grant(ttl) for ttl in (30, 10, 20)]
    for lease in leases:
        lessor.track(lease.lease_id, 0.0)
    assert [e.lease_id for e in lessor.expired(100.0)] == [2, 3]
    assert [e.lease_id for e in lessor.expired(100.0)] == [1]


def test_checkpoint_persists_a_true_time_lower_bound() -> None:
    table = LeaseTable()
    lessor = Lessor(table, LessorConfig(extend_ms=0, max_clock_drift=0.1,
                                        checkpoint_interval_ms=100))
    lessor.promote(0.0)
    lease = table.grant(1_000)
    lessor.track(lease.lease_id, 0.0)
    assert lessor.checkpoints(50.0) == []
    (checkpoint,) = lessor.checkpoints(220.0)
    # deadline 1100 on this clock; (1100 - 220) / 1.1 = 800 >= 1000 - 220 / 1.1.
    assert checkpoint == Checkpoint(lease.lease_id, 1, 800)
    assert checkpoint.remaining_ms >= 1_000 - 220 / 1.1


def test_demote_forgets_deadlines_and_revoked_leases_are_forgotten() -> None:
    table, lessor = _lessor(drift=0.0)
    lessor.promote(0.0)
    a, b = table.grant(10), table.grant(10)
    lessor.track(a.lease_id, 0.0)
    lessor.track(b.lease_id, 0.0)
    table.revoke(a.lease_id)
    lessor.track(a.lease_id, 1.0)
    assert [e.lease_id for e in lessor.expired(10_000.0)] == [b.lease_id]
    lessor.demote()
    assert lessor.expired(10**9) == [] and lessor.deadline(b.lease_id) is None


def test_many_renewals_keep_the_deadline_heap_bounded() -> None:
    table, lessor = _lessor(drift=0.0)
    lessor.promote(0.0)
    lease = table.grant(10_000)
    for step in range(5_000):
        table.keepalive(lease.lease_id)
        lessor.track(lease.lease_id, float(step))
    assert len(lessor._expiry) <= 2 * 1 + 64 + 1 and len(lessor._checkpoint) <= 2 + 64 + 1
    assert lessor.expired(4_999.0 + 10_000.0) == [Expire(lease.lease_id, 5_001)]

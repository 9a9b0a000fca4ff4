"""Stateful (hypothesis) tests: random grant / keepalive / acquire / release / revoke / expire /
time / leader-change sequences checked for mutual exclusion and token monotonicity by
engine.testing.locks, and random writes / watches / takes / compactions / restarts checked
for exactly-once, in-order delivery by engine.testing.watches."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from engine.coord import CoordState, Lessor, LessorConfig, WatchEvent, WatchLog
from engine.coord.watch import DELETE, PUT
from engine.errors import (
    Compacted,
    FencingTokenStale,
    LeaseNotFound,
    LockKindMismatch,
    WatchOverflow,
)
from engine.limits import Limits
from engine.testing.locks import check_mutual_exclusion
from engine.testing.watches import Change, Watcher, check_watch_history
from engine.testing.watches import Compacted as CompactedItem
from engine.testing.watches import Overflow as OverflowItem

MUTEXES = (b"a", b"b")
SETTINGS = settings(max_examples=60, stateful_step_count=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


class LockMachine(RuleBasedStateMachine):
    """One replicated CoordState, its leader's Lessor on one correct clock, and clients (one
    per lease) that keep writing with the last token they were granted, as a paused holder
    would."""

    def __init__(self) -> None:
        super().__init__()
        self.state = CoordState(Limits(max_lock_names=8))
        self.lessor = Lessor(self.state.leases, LessorConfig(
            extend_ms=20, max_clock_drift=0.0, expire_retry_ms=15, checkpoint_interval_ms=5))
        self.now = 0.0
        self.lessor.promote(self.now)
        self.history: list[dict[str, Any]] = []
        self.tokens: dict[tuple[int, bytes], int] = {}   # what each client was told
        self.granted_tokens: list[int] = []
        self.pending_expires: list[Any] = []
        self.lease_ids: list[int] = []
        self.renewed_at: dict[int, float] = {}
        for ttl in (10, 30, 60):     # clients from the start: every rule has work to do
            self.grant(ttl)

    # ------------------------------------------------------------------ bookkeeping

    def _granted(self, grants: Any) -> None:
        for grant in grants:
            self.tokens[(grant.lease_id, grant.lock)] = grant.token
            self.granted_tokens.append(grant.token)
            if grant.lock in MUTEXES:
                self.history.append({"type": "lock-acquired", "client": grant.lease_id,
                                     "lock": grant.lock, "token": grant.token,
                                     "time": self.now})

    def _ended(self, lease_id: int, kind: str) -> None:
        for name in MUTEXES:
            for holder in self.state.locks.holders(name):
                if holder.lease_id == lease_id:
                    self.history.append({"type": kind, "client": lease_id, "lock": name,
                                         "token": holder.token, "time": self.now})

    def _lease(self, index: int) -> int:
        return self.lease_ids[index % len(self.lease_ids)]

    # ------------------------------------------------------------------ rules

    @rule(ttl=st.sampled_from([10, 30, 60]))
    def grant(self, ttl: int) -> None:
        lease = self.state.grant_lease(ttl)
        self.lessor.track(lease.lease_id, self.now)
        self.renewed_at[lease.lease_id] = self.now
        self.lease_ids.append(lease.lease_id)

    @rule(index=st.integers(0, 20))
    def keepalive(self, index: int) -> None:
        lease_id = self._lease(index)
        try:
            self.state.keepalive(lease_id)
        except LeaseNotFound:
            return
        self.lessor.track(lease_id, self.now)
        self.renewed_at[lease_id] = self.now

    @rule(index=st.integers(0, 20), name=st.sampled_from(MUTEXES + (b"rw", b"sem")),
          shared=st.booleans())
    def acquire(self, index: int, name: bytes, shared: bool) -> None:
        lease_id = self._lease(index)
        already = any(h.lease_id == lease_id for h in self.state.locks.holders(name))
        try:
            if name == b"sem":
                result = self.state.acquire(name, lease_id, shared=True, capacity=2)
            else:
                result = self.state.acquire(name, lease_id, shared=shared and name == b"rw")
        except (LeaseNotFound, LockKindMismatch):
            return
        if result.granted is not None and not already:
            self._granted([result.granted])

    @rule(index=st.integers(0, 20), name=st.sampled_from(MUTEXES + (b"rw", b"sem")))
    def release(self, index: int, name: bytes) -> None:
        lease_id = self._lease(index)
        if name in MUTEXES:
            for holder in self.state.locks.holders(name):
                if holder.lease_id == lease_id:
                    self.history.append({"type": "lock-released", "client": lease_id,
                                         "lock": name, "token": holder.token,
                                         "time": self.now})
        self._granted(self.state.release(name, lease_id))

    @rule(index=st.integers(0, 20))
    def revoke(self, index: int) -> None:
        lease_id = self._lease(index)
        self._ended(lease_id, "lock-released")
        end = self.state.revoke(lease_id)
        self.lessor.track(lease_id, self.now)
        if end is not None:
            self._granted(end.grants)

    @rule(elapsed=st.sampled_from([1.0, 5.0, 20.0, 70.0]))
    def advance_time(self, elapsed: float) -> None:
        self.now += elapsed
        self.pending_expires += self.lessor.expired(self.now)

    @precondition(lambda self: self.pending_expires)
    @rule(position=st.integers(0, 10))
    def commit_expire(self, position: int) -> None:
        """An EXPIRE commits, possibly after renewals it did not see (then it is a no-op)."""
        decision = self.pending_expires.pop(position % len(self.pending_expires))
        lease = self.state.leases.get(decision.lease_id)
        if lease is not None and lease.generation == decision.generation:
            self._ended(decision.lease_id, "lock-lost")
        end = self.state.expire(decision.lease_id, decision.generation)
        self.lessor.track(decision.lease_id, self.now)
        if end is not None:
            # One correct clock here (drift 0): never before its TTL since the last renewal.
            assert self.now - self.renewed_at[decision.lease_id] >= end.lease.ttl_ms
            self._granted(end.grants)

    @rule()
    def checkpoint(self) -> None:
        for checkpoint in self.lessor.checkpoints(self.now):
            self.state.checkpoint(checkpoint.lease_id, checkpoint.generation,
                                  checkpoint.remaining_ms)

    @rule()
    def leader_change(self) -> None:
        self.lessor.demote()
        self.pending_expires.clear()     # the old leader's undecided proposals are lost
        self.lessor.promote(self.now)

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def fenced_write(self, data: st.DataObject) -> None:
        self.write_as(data.draw(st.sampled_from(sorted(self.tokens))))

    def write_as(self, client: tuple[int, bytes]) -> None:
        lease_id, name = client
        if name not in MUTEXES:
            return
        token = self.tokens[(lease_id, name)]
        try:
            self.state.check_fence(name, token)
            outcome = "accepted"
        except FencingTokenStale:
            outcome = "refused"
        self.history.append({"type": "fenced-write", "client": lease_id, "lock": name,
                             "token": token, "key": b"out", "outcome": outcome,
                             "time": self.now})

    # ------------------------------------------------------------------ invariants

    @invariant()
    def one_holder_per_mutex_and_no_lost_wakeup(self) -> None:
        for name in MUTEXES + (b"rw", b"sem"):
            holders = self.state.locks.holders(name)
            if name in MUTEXES:
                assert len(holders) <= 1
            if name == b"sem":
                assert len(holders) <= 2
            if any(not h.shared for h in holders):
                assert len(holders) == 1
            for holder in holders:
                assert holder.lease_id in self.state.leases
            if not holders:
                assert self.state.locks.waiters(name) == []

    @invariant()
    def tokens_strictly_increase_and_history_is_safe(self) -> None:
        assert self.granted_tokens == sorted(set(self.granted_tokens))
        result = check_mutual_exclusion(self.history, fence_knows_grants=True)
        assert result.valid, [str(v) for v in result.violations]
        assert not result.unexplained_refusals


TestLockMachine = LockMachine.TestCase
TestLockMachine.settings = SETTINGS


class WatchMachine(RuleBasedStateMachine):
    """One WatchLog with a small ring; logical watchers that resume after an overflow or a
    restart from the revision they were told, as the client does."""

    KEYS = (b"a/1", b"a/2", b"b/1")

    def __init__(self, history_events: int = 8) -> None:
        super().__init__()
        self.limits = Limits(watch_history_events=history_events, max_watch_buffer_events=3)
        self.resumes = 0
        self.log = WatchLog(self.limits)
        self.committed: list[Change] = []
        self.revision = 0
        self.values: dict[bytes, bytes] = {}
        # name -> [checker Watcher, live engine Watcher or None when ended]
        self.watchers: dict[int, list[Any]] = {}

    def _write(self, keys: list[bytes], delete: bool) -> None:
        self.revision += 1
        for key in keys:
            prev = self.values.get(key)
            if delete:
                if prev is None:
                    continue
                del self.values[key]
                event = WatchEvent(DELETE, key, None, self.revision, prev)
            else:
                value = b"v%d" % self.revision
                self.values[key] = value
                event = WatchEvent(PUT, key, value, self.revision, prev)
            self.log.record(event)
            self.committed.append(Change(event.revision, key, event.type, event.value))

    @rule(key=st.sampled_from(KEYS))
    def put(self, key: bytes) -> None:
        self._write([key], delete=False)

    @rule(key=st.sampled_from(KEYS))
    def delete(self, key: bytes) -> None:
        self._write([key], delete=True)

    @rule(keys=st.lists(st.sampled_from(KEYS), min_size=2, max_size=3, unique=True))
    def transaction(self, keys: list[bytes]) -> None:
        self._write(keys, delete=False)

    @rule(key=st.sampled_from((b"a/", b"a/1", b"b/", b"")), back=st.integers(-1, 12))
    def watch(self, key: bytes, back: int) -> None:
        prefix = not key.endswith(b"1")
        start = max(1, self.log.last_revision + 1 - back)
        logical = Watcher(name=len(self.watchers), key=key, prefix=prefix,
                          start_revision=start, received=[])
        self.watchers[logical.name] = [logical, None]
        self._open(logical.name, start)

    def _open(self, name: int, start: int) -> None:
        logical = self.watchers[name][0]
        try:
            self.watchers[name][1] = self.log.watch(logical.key, prefix=logical.prefix,
                                                    start_revision=start)
        except Compacted as gone:
            logical.received.append(CompactedItem(gone.oldest_revision))
            self.watchers[name][1] = None

    def _take(self, name: int, count: int | None) -> bool:
        logical, live = self.watchers[name]
        if live is None:
            return False
        try:
            events = live.take(count)
        except WatchOverflow as overflow:
            self.resumes += 1
            self._open(name, overflow.resume_revision)   # the client's seamless resume
            return True
        logical.received.extend(Change(e.revision, e.key, e.type, e.value) for e in events)
        return bool(events) or not live.synced

    @precondition(lambda self: self.watchers)
    @rule(data=st.data(), count=st.integers(1, 4))
    def take(self, data: st.DataObject, count: int) -> None:
        self._take(data.draw(st.sampled_from(sorted(self.watchers))), count)

    def check(self) -> None:
        self.teardown()

    @rule(back=st.integers(0, 30))
    def compact(self, back: int) -> None:
        self.log.compact(self.log.last_revision + 1 - back)

    @rule()
    def restart(self) -> None:
        """The node restores its snapshot: every watcher is cut off and resumes."""
        self.log.restore(self.log.snapshot())

    def teardown(self) -> None:
        for name in sorted(self.watchers):
            for _ in range(10_000):
                if not self._take(name, None):
                    break
        result = check_watch_history(self.committed, [w for w, _ in self.watchers.values()])
        assert result.valid, [str(d) for d in result.divergences.values()]
        for logical, live in self.watchers.values():
            assert live is None or live.synced
            assert not any(isinstance(item, OverflowItem) for item in logical.received)


TestWatchMachine = WatchMachine.TestCase
TestWatchMachine.settings = SETTINGS


# Seeded random walks over the same machines: hypothesis explores short programs and shrinks
# them; these run long ones (thousands of steps, many grants, expiries, overflows).


def _lock_walk(seed: int, steps: int) -> LockMachine:
    rng = random.Random(seed)
    machine = LockMachine()
    names = MUTEXES + (b"rw", b"sem")
    for step in range(steps):
        roll = rng.random()
        if roll < 0.08:
            machine.grant(rng.choice([10, 30, 60]))
        elif roll < 0.25:
            machine.keepalive(rng.randrange(20))
        elif roll < 0.45:
            machine.acquire(rng.randrange(20), rng.choice(names), rng.random() < 0.5)
        elif roll < 0.55:
            machine.release(rng.randrange(20), rng.choice(names))
        elif roll < 0.58:
            machine.revoke(rng.randrange(20))
        elif roll < 0.70:
            machine.advance_time(rng.choice([1.0, 5.0, 20.0, 70.0]))
        elif roll < 0.78 and machine.pending_expires:
            machine.commit_expire(rng.randrange(10))
        elif roll < 0.80:
            machine.checkpoint()
        elif roll < 0.82:
            machine.leader_change()
        elif machine.tokens:
            machine.write_as(rng.choice(sorted(machine.tokens)))
        machine.one_holder_per_mutex_and_no_lost_wakeup()
        if step % 250 == 0:
            machine.tokens_strictly_increase_and_history_is_safe()
    machine.tokens_strictly_increase_and_history_is_safe()
    return machine


@pytest.mark.parametrize("seed", range(12))
def test_lock_random_walk(seed: int) -> None:
    machine = _lock_walk(seed, 1_500)
    kinds = {(event["type"], event.get("outcome")) for event in machine.history}
    # The walk reaches the interesting cases: grants and the fence refusing.
    assert {("lock-acquired", None), ("fenced-write", "refused")} <= kinds


def test_lock_random_walks_reach_expiry_of_holders() -> None:
    lost = sum(event["type"] == "lock-lost" for seed in range(4)
               for event in _lock_walk(seed, 1_500).history)
    assert lost > 0


def _watch_walk(seed: int, steps: int) -> WatchMachine:
    rng = random.Random(seed)
    machine = WatchMachine(history_events=48)
    keys = WatchMachine.KEYS
    for _ in range(steps):
        roll = rng.random()
        if roll < 0.30:
            machine.put(rng.choice(keys))
        elif roll < 0.40:
            machine.delete(rng.choice(keys))
        elif roll < 0.50:
            machine.transaction(rng.sample(keys, rng.choice([2, 3])))
        elif roll < 0.56 and sum(live is not None for _, live in machine.watchers.values()) < 6:
            machine.watch(rng.choice((b"a/", b"a/1", b"b/", b"")), rng.randrange(-1, 13))
        elif roll < 0.92 and machine.watchers:
            name = rng.choice(sorted(machine.watchers))
            if rng.random() < 0.5:
                machine._take(name, rng.choice([1, 3]))
            else:
                while machine._take(name, None):     # a consumer keeping up
                    pass
        elif roll < 0.925:
            machine.compact(rng.randrange(30))
        else:
            machine.restart()
    machine.check()
    return machine


@pytest.mark.parametrize("seed", range(12))
def test_watch_random_walk(seed: int) -> None:
    machine = _watch_walk(seed, 1_500)
    ended = [item for logical, _ in machine.watchers.values() for item in logical.received
             if isinstance(item, CompactedItem)]
    delivered = sum(len(logical.received) for logical, _ in machine.watchers.values())
    # Reached: explicit Compacted ends, resumes after overflows and restarts, and volume.
    assert ended and machine.resumes and delivered > 500, (len(ended), machine.resumes,
                                                           delivered)

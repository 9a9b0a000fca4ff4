"""Coordination commands: the encoding round-trips, hostile bytes are a DecodeError and
nothing else, and apply() is deterministic (two replicas fed the same bytes agree on every
effect and end in the same snapshot) and returns refusals instead of raising."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.coord import CoordState
from engine.coord.commands import Command, CoordOp, apply, decode_command, encode_command
from engine.errors import DecodeError, LeaseNotFound, NotElectionLeader
from engine.limits import Limits

u64 = st.integers(0, 2**64 - 1)
names = st.binary(max_size=12)


@st.composite
def commands(draw: st.DrawFn) -> Command:
    op = draw(st.sampled_from(list(CoordOp)))
    fields: dict[str, object] = {}
    if op == CoordOp.GRANT:
        fields["ttl_ms"] = draw(u64)
    else:
        fields["lease_id"] = draw(u64)
    if op in (CoordOp.CHECKPOINT, CoordOp.EXPIRE):
        fields["generation"] = draw(u64)
    if op == CoordOp.CHECKPOINT:
        fields["remaining_ms"] = draw(u64)
    if op == CoordOp.ACQUIRE:
        fields["shared"] = draw(st.booleans())
        fields["capacity"] = draw(st.integers(0, 2**32 - 1))
    if op in (CoordOp.ACQUIRE, CoordOp.RELEASE, CoordOp.CAMPAIGN, CoordOp.PROCLAIM,
              CoordOp.RESIGN):
        fields["name"] = draw(names)
    if op in (CoordOp.CAMPAIGN, CoordOp.PROCLAIM):
        fields["value"] = draw(st.binary(max_size=12))
    return Command(op, **fields)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(command=commands())
def test_encoding_round_trips_and_every_truncation_is_refused(command: Command) -> None:
    data = encode_command(command)
    assert decode_command(data) == command
    for length in range(len(data)):
        with pytest.raises(DecodeError):
            decode_command(data[:length])
    with pytest.raises(DecodeError):
        decode_command(data + b"\0")


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=40))
def test_random_bytes_decode_or_raise_decode_error_only(data: bytes) -> None:
    try:
        command = decode_command(data)
    except DecodeError:
        return
    assert encode_command(command) == data          # accepted bytes are canonical


def test_unknown_version_op_and_mode_are_refused() -> None:
    good = encode_command(Command(CoordOp.ACQUIRE, lease_id=1, name=b"L"))
    for damaged in (b"\x02" + good[1:], good[:1] + b"\x63" + good[2:],
                    good[:10] + b"\x02" + good[11:]):
        with pytest.raises(DecodeError):
            decode_command(damaged)
    with pytest.raises(DecodeError):
        decode_command(b"\x01\x06" + b"\0" * 9 + (5_000).to_bytes(4, "little"))


def test_apply_returns_refusals_and_the_effects_to_act_on() -> None:
    state = CoordState()
    lease = apply(state, Command(CoordOp.GRANT, ttl_ms=1_000)).lease
    other = apply(state, Command(CoordOp.GRANT, ttl_ms=1_000)).lease
    assert lease is not None and other is not None
    refused = apply(state, Command(CoordOp.ACQUIRE, lease_id=99, name=b"L"))
    assert isinstance(refused.error, LeaseNotFound) and not refused.applied
    first = apply(state, Command(CoordOp.ACQUIRE, lease_id=lease.lease_id, name=b"L"))
    assert first.granted is not None and first.grants == (first.granted,)
    again = apply(state, Command(CoordOp.ACQUIRE, lease_id=lease.lease_id, name=b"L"))
    assert again.granted == first.granted and again.grants == ()    # nobody new to tell
    queued = apply(state, Command(CoordOp.ACQUIRE, lease_id=other.lease_id, name=b"L"))
    assert queued.granted is None and queued.position == 0
    state.leases.attach(b"svc/a", lease.lease_id)
    stale = apply(state, Command(CoordOp.EXPIRE, lease_id=lease.lease_id, generation=7))
    assert not stale.applied and stale.error is None
    ended = apply(state, Command(CoordOp.EXPIRE, lease_id=lease.lease_id, generation=1))
    assert ended.keys == (b"svc/a",) and [g.lease_id for g in ended.grants] == [other.lease_id]
    proclaim = apply(state, Command(CoordOp.PROCLAIM, lease_id=other.lease_id, name=b"e"))
    assert isinstance(proclaim.error, NotElectionLeader)


def _random_command(rng: random.Random) -> Command:
    op = rng.choice(list(CoordOp))
    return Command(op, lease_id=rng.randrange(1, 8), ttl_ms=rng.choice([0, 10, 100]),
                   generation=rng.randrange(1, 4), remaining_ms=rng.randrange(200),
                   name=rng.choice([b"a", b"b"]), value=rng.choice([b"x", b"y"]),
                   shared=rng.random() < 0.3, capacity=rng.choice([0, 0, 2]))


@pytest.mark.parametrize("seed", range(5))
def test_replicas_applying_the_same_bytes_agree(seed: int) -> None:
    rng = random.Random(seed)
    limits = Limits(max_lock_names=4, max_leases=6)
    replicas = (CoordState(limits), CoordState(limits))
    for _ in range(1_500):
        data = encode_command(_random_command(rng))
        effects = [apply(replica, decode_command(data)) for replica in replicas]
        assert effects[0] == effects[1] or repr(effects[0]) == repr(effects[1])
    assert replicas[0].snapshot() == replicas[1].snapshot()
    restored = CoordState(limits)
    restored.restore(replicas[0].snapshot())
    assert restored.snapshot() == replicas[0].snapshot()

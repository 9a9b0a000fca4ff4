"""engine.kv: the KV state machine, its encoding, sessions (Raft thesis §6.3) and snapshots."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.config import Limits
from engine.errors import DecodeError, InvariantViolation
from engine.kv import KVStore
from engine.kv.commands import (
    Op,
    Status,
    decode_client_id,
    decode_command,
    decode_result,
    encode_cas,
    encode_delete,
    encode_get,
    encode_put,
    encode_query,
    encode_register,
    encode_result,
)


class Applier:
    """Feeds commands to a store at increasing log indexes, decoding the results."""

    def __init__(self, store: KVStore | None = None) -> None:
        self.store = store or KVStore()
        self.index = self.store.applied_index

    def __call__(self, command: bytes):  # type: ignore[no-untyped-def]
        self.index += 1
        return decode_result(self.store.apply(self.index, command))

    def register(self) -> int:
        """Open a session (REGISTER); its id is the log index it applied at."""
        client_id = decode_client_id(self(encode_register()))
        assert client_id == self.index
        return client_id


# ---------------------------------------------------------------------------- operations


def test_put_get_delete() -> None:
    apply = Applier()
    first = apply(encode_put(b"k", b"v1"))
    assert first.ok and first.previous is None and not first.existed
    assert first.revision == 1
    second = apply(encode_put(b"k", b"v2", previous=True))
    assert second.ok and second.previous == b"v1" and second.existed
    assert second.revision == 2
    assert apply(encode_get(b"k")).value == b"v2"
    assert apply(encode_get(b"missing")).value is None
    deleted = apply(encode_delete(b"k", previous=True))
    assert deleted.ok and deleted.previous == b"v2" and deleted.revision == 5
    again = apply(encode_delete(b"k", previous=True))
    assert again.ok and again.previous is None and not again.existed
    assert apply(encode_get(b"k")).value is None
    assert len(apply.store) == 0


def test_put_and_delete_carry_the_previous_value_only_when_asked() -> None:
    apply = Applier()
    apply(encode_put(b"k", b"v1"))
    overwritten = apply(encode_put(b"k", b"v2"))
    assert overwritten.ok and overwritten.existed and overwritten.previous is None
    assert overwritten.revision == 2
    deleted = apply(encode_delete(b"k"))
    assert deleted.ok and deleted.existed and deleted.previous is None
    assert not apply(encode_delete(b"k")).existed
    assert decode_command(encode_put(b"k", b"v", previous=True)).previous
    assert not decode_command(encode_put(b"k", b"v")).previous


def test_empty_keys_and_values_are_distinct_from_absent() -> None:
    apply = Applier()
    apply(encode_put(b"", b""))
    assert apply(encode_get(b"")).value == b""
    assert not apply(encode_cas(b"", None, b"x")).ok     # present (empty), not absent
    assert apply(encode_cas(b"", b"", b"x")).ok


def test_cas() -> None:
    apply = Applier()
    created = apply(encode_cas(b"k", None, b"a"))      # None: the key must be absent
    assert created.ok and created.previous is None and not created.existed
    assert created.revision == 1
    refused = apply(encode_cas(b"k", None, b"b"))
    assert refused.status == Status.CAS_MISMATCH and refused.value == b"a"
    assert refused.error == ""                         # a mismatch is an answer, not an error
    wrong = apply(encode_cas(b"k", b"zzz", b"b"))
    assert wrong.status == Status.CAS_MISMATCH and wrong.value == b"a"
    swapped = apply(encode_cas(b"k", b"a", b"b"))
    assert swapped.ok and swapped.existed and swapped.revision == 4
    assert apply.store.get(b"k") == b"b"
    missing = apply(encode_cas(b"other", b"a", b"b"))
    assert missing.status == Status.CAS_MISMATCH and missing.value is None


def test_query_reads_without_changing_state() -> None:
    apply = Applier()
    apply(encode_put(b"k", b"v"))
    before = apply.store.snapshot()
    assert decode_result(apply.store.query(encode_query(b"k"))).value == b"v"
    assert decode_result(apply.store.query(encode_query(b"nope"))).value is None
    bad = decode_result(apply.store.query(encode_put(b"k", b"x")))   # a write is not a query
    assert bad.status == Status.MALFORMED
    assert decode_result(apply.store.query(b"\x01")).status == Status.MALFORMED
    assert apply.store.snapshot() == before


def test_apply_requires_increasing_indexes() -> None:
    store = KVStore()
    store.apply(5, encode_put(b"a", b"b"))
    with pytest.raises(InvariantViolation):
        store.apply(5, encode_put(b"a", b"c"))
    with pytest.raises(InvariantViolation):
        store.apply(3, encode_put(b"a", b"c"))
    assert store.get(b"a") == b"b"


def test_apply_batch_matches_apply() -> None:
    commands = [encode_put(b"a", b"1"), encode_register(), encode_cas(b"a", b"1", b"2"), b"junk",
                encode_delete(b"a", client_id=4, seq=1), encode_get(b"a")]
    one = KVStore()
    singles = [one.apply(index, command) for index, command in enumerate(commands, start=3)]
    batched = KVStore()
    assert batched.apply_batch(list(enumerate(commands, start=3))) == singles
    assert batched == one


# ---------------------------------------------------------------------------- encoding


def test_command_round_trip() -> None:
    cmd = decode_command(encode_cas(b"k", None, b"n", client_id=7, seq=3))
    assert (cmd.op, cmd.key, cmd.expected, cmd.value, cmd.client_id, cmd.seq) == \
        (Op.CAS, b"k", None, b"n", 7, 3)
    cmd = decode_command(encode_cas(b"k", b"", b"n"))
    assert cmd.expected == b"" and cmd.client_id is None
    assert decode_command(encode_put(b"k", b"v")).value == b"v"
    assert encode_query(b"k") == encode_get(b"k")


def test_encoding_is_little_endian_and_versioned() -> None:
    data = encode_put(b"ab", b"c", client_id=0x0102, seq=1)
    assert data[:3] == bytes([1, Op.PUT, 0x01])
    assert data[3:19] == struct.pack("<QQ", 0x0102, 1)
    assert data[19:] == b"\x02\x00\x00\x00ab\x01\x00\x00\x00c"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=40), st.binary(max_size=40),
       st.integers(0, (1 << 64) - 1), st.integers(1, (1 << 64) - 1))
def test_session_put_fast_path_encodes_like_the_general_path(
        key: bytes, value: bytes, client_id: int, seq: int) -> None:
    from engine.kv import commands

    general = commands._command(Op.PUT, key, commands._blob(value), 0, client_id, seq)
    assert encode_put(key, value, client_id=client_id, seq=seq) == general


def test_encoders_refuse_bad_sessions() -> None:
    with pytest.raises(ValueError):
        encode_put(b"k", b"v", client_id=1)
    with pytest.raises(ValueError):
        encode_put(b"k", b"v", client_id=1, seq=0)
    with pytest.raises(ValueError):
        encode_put(b"k", b"v", client_id=-1, seq=1)


def test_result_round_trip_and_garbage() -> None:
    for result in (encode_result(Status.OK), encode_result(Status.OK, b"v", b"p"),
                   encode_result(Status.MALFORMED, message="why"),
                   encode_result(Status.OK, revision=7, existed=True),
                   encode_result(Status.OK, previous=b"p", revision=2**64 - 1)):
        decoded = decode_result(result)
        assert encode_result(*_fields(decoded), revision=decoded.revision,
                             existed=decoded.existed) == result
    for garbage in (b"", b"\x01\x00", b"\x02\x00\x00", b"\x01\x09\x00", b"\x01\x00\x40",
                    b"\x01\x00\x08\x01\x00",
                    b"\x01\x00\x01\x05\x00\x00\x00ab", encode_result(Status.OK) + b"x"):
        with pytest.raises(DecodeError):
            decode_result(garbage)


def _fields(result):  # type: ignore[no-untyped-def]
    return result.status, result.value, result.previous, result.message


MALFORMED_COMMANDS = [
    b"",                                          # empty
    b"\x01\x01",                                  # short header
    b"\x02\x01\x00\x00\x00\x00\x00",              # unknown version
    b"\x01\x09\x00\x00\x00\x00\x00",              # unknown op
    b"\x01\x01\x80\x00\x00\x00\x00",              # unknown flag
    b"\x01\x02\x02\x00\x00\x00\x00",              # expected flag on a GET
    b"\x01\x02\x04\x00\x00\x00\x00",              # previous-value flag on a GET
    b"\x01\x04\x04\x00\x00\x00\x00\x00\x00\x00\x00",  # previous-value flag on a CAS
    b"\x01\x01\x01" + b"\x00" * 10,               # truncated session
    b"\x01\x02\x01" + struct.pack("<QQ", 1, 0) + b"\x00" * 4,   # seq 0
    b"\x01\x05\x01" + struct.pack("<QQ", 1, 1) + b"\x00" * 4,   # REGISTER in a session
    b"\x01\x05\x00\x01\x00\x00\x00k",             # REGISTER with a key
    encode_register() + b"\x00",                 # REGISTER with a tail
    b"\x01\x02\x00\xff\xff\xff\xff",              # key longer than the command
    b"\x01\x01\x00\x01\x00\x00\x00k",             # PUT without a value
    encode_put(b"k", b"v") + b"\x00",             # trailing byte
    encode_cas(b"k", b"e", b"n")[:-1],            # truncated
]


@pytest.mark.parametrize("command", MALFORMED_COMMANDS)
def test_malformed_commands_apply_as_errors(command: bytes) -> None:
    apply = Applier()
    apply(encode_put(b"k", b"v"))
    before = apply.store.items()
    result = apply(command)
    assert result.status == Status.MALFORMED and result.error
    assert apply.store.items() == before
    assert apply.store.applied_index == 2   # the index is consumed on every replica alike


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_never_raise_and_apply_alike_everywhere(command: bytes) -> None:
    replicas = [KVStore(), KVStore()]
    for replica in replicas:
        replica.apply(1, encode_put(b"k", b"v"))
    results = [replica.apply(2, command) for replica in replicas]
    assert results[0] == results[1]
    decode_result(results[0])              # always a well-formed result
    assert replicas[0] == replicas[1]


# ---------------------------------------------------------------------------- sessions


def test_register_opens_a_session_named_by_its_log_index() -> None:
    apply = Applier()
    apply(encode_put(b"k", b"v"))
    first, second = apply.register(), apply.register()
    assert (first, second) == (2, 3) and apply.store.session_ids() == [2, 3]
    assert apply(encode_put(b"k", b"w", client_id=first, seq=1)).ok
    assert apply.store.get(b"k") == b"w"


def test_an_unregistered_session_applies_nothing() -> None:
    # Ids come only from REGISTER: a made-up id (or an evicted one) is refused even at seq 1.
    apply = Applier()
    result = apply(encode_put(b"k", b"v", client_id=77, seq=1))
    assert result.status == Status.SESSION_EXPIRED and "never registered" in result.error
    assert apply.store.get(b"k") is None and apply.store.session_count == 0


def test_a_seq_one_retry_after_eviction_does_not_apply_twice() -> None:
    # The hole the seq-1-opens-a-session rule had: a first write applies, its session is
    # evicted, and a retry of that same write arrives. It must not apply again.
    apply = Applier(KVStore(Limits(max_client_sessions=1)))
    client = apply.register()
    increment = encode_cas(b"n", None, b"1", client_id=client, seq=1)
    assert apply(increment).ok
    apply(encode_delete(b"n"))                         # someone resets the counter
    apply.register()                                   # another client evicts ours
    assert apply(increment).status == Status.SESSION_EXPIRED
    assert apply.store.get(b"n") is None


def test_retry_returns_cached_result_without_reapplying() -> None:
    apply = Applier()
    client = apply.register()
    put = encode_put(b"k", b"v1", client_id=client, seq=1, previous=True)
    first = apply(put)
    assert first.previous is None and first.revision == 2
    apply(encode_put(b"k", b"other"))            # someone else writes in between
    retried = apply(put)                         # the same (client, seq): not applied again
    assert retried == first
    assert apply.store.get(b"k") == b"other"
    cas = encode_cas(b"n", None, b"1", client_id=client, seq=2)
    assert apply(cas).ok
    assert apply(cas).ok                         # cached OK, not a mismatch on re-apply
    assert apply.store.get(b"n") == b"1"


def test_stale_and_expired_requests_change_nothing() -> None:
    apply = Applier()
    client = apply.register()
    apply(encode_put(b"k", b"1", client_id=client, seq=1))
    apply(encode_put(b"k", b"2", client_id=client, seq=2))
    stale = apply(encode_put(b"k", b"old", client_id=client, seq=1))
    assert stale.status == Status.STALE_REQUEST and "stale" in stale.error
    assert apply.store.get(b"k") == b"2"
    # An unknown client id means its session was evicted (or never opened): re-applying would
    # break exactly-once (Raft thesis §6.3).
    expired = apply(encode_put(b"k", b"x", client_id=client + 100, seq=4))
    assert expired.status == Status.SESSION_EXPIRED
    assert apply.store.get(b"k") == b"2" and apply.store.session_count == 1


def test_exactly_once_under_random_retries_and_duplicates() -> None:
    """Clients increment counters with CAS (not idempotent: a second application would be a
    mismatch); the network retries and replays their commands arbitrarily. Every retry must
    get the cached OK and every counter ends at the number of increments acknowledged."""
    rng = random.Random(1234)
    apply = Applier()
    acknowledged = {apply.register(): 0 for _ in range(5)}
    sent: list[bytes] = []
    for _ in range(600):
        client_id = rng.choice(list(acknowledged))
        count = acknowledged[client_id]
        command = encode_cas(f"c{client_id}".encode(), str(count).encode() if count else None,
                             str(count + 1).encode(), client_id=client_id, seq=count + 1)
        sent.append(command)
        for _ in range(rng.randrange(1, 4)):            # the first try and its retries
            assert apply(command).ok
        if rng.random() < 0.5:                          # a delayed duplicate from the past
            assert apply(rng.choice(sent)).status in (Status.OK, Status.STALE_REQUEST)
        acknowledged[client_id] = count + 1
    for client_id, count in acknowledged.items():
        assert apply.store.get(f"c{client_id}".encode()) == str(count).encode()


def test_session_eviction_is_lru_by_log_index_and_deterministic() -> None:
    def run() -> KVStore:
        store = KVStore(Limits(max_client_sessions=3))
        apply = Applier(store)
        one, two, three = (apply.register() for _ in range(3))
        for client_id in (one, two, three):
            apply(encode_put(b"k", b"v", client_id=client_id, seq=1))
        apply(encode_put(b"k", b"v", client_id=one, seq=1))   # a retry refreshes client one
        four = apply.register()                                # evicts two, the least recent
        assert (one, two, three, four) == (1, 2, 3, 8)
        return store

    first, second = run(), run()
    assert first.session_ids() == [3, 1, 8]
    assert first == second and first.snapshot() == second.snapshot()
    apply = Applier(first)
    assert apply(encode_put(b"k", b"v", client_id=2, seq=2)).status == Status.SESSION_EXPIRED


def test_sessions_stay_bounded() -> None:
    store = KVStore(Limits(max_client_sessions=10))
    apply = Applier(store)
    for _ in range(100):
        apply(encode_put(b"k", b"v", client_id=apply.register(), seq=1))
    assert store.session_count == 10
    assert store.session_ids() == list(range(181, 200, 2))


# ---------------------------------------------------------------------------- snapshots


def _busy_store() -> KVStore:
    store = KVStore(Limits(max_client_sessions=4))
    apply = Applier(store)
    rng = random.Random(99)
    clients: list[int] = []
    for step in range(200):
        key = bytes([rng.randrange(20)])
        if rng.random() < 0.1 or not clients:
            clients.append(apply.register())
        if rng.random() < 0.5:
            apply(encode_put(key, str(step).encode()))
        else:
            apply(encode_put(key, b"s", client_id=rng.choice(clients), seq=step + 1))
        if rng.random() < 0.2:
            apply(encode_delete(key))
    return store


def test_snapshot_round_trip() -> None:
    store = _busy_store()
    data = store.snapshot()
    copy = KVStore(Limits(max_client_sessions=4))
    copy.restore(data)
    assert copy == store
    assert copy.snapshot() == data
    assert copy.session_ids() == store.session_ids()   # LRU order survives
    # And both continue identically, including eviction.
    for target in (store, copy):
        apply = Applier(target)
        for _ in range(3):
            apply(encode_put(b"z", b"z", client_id=apply.register(), seq=1))
    assert copy == store


def test_snapshot_is_deterministic_regardless_of_insertion_order() -> None:
    """Same keys, values and revisions, created in another order (each key's revision is
    the log index of its last write): the same snapshot bytes."""
    a, b = KVStore(), KVStore()
    for index, key in enumerate([b"x", b"a", b"m", b"x", b"a", b"m"], start=1):
        a.apply(index, encode_put(key, key))
    for index, key in enumerate([b"m", b"a", b"x", b"x", b"a", b"m"], start=1):
        b.apply(index, encode_put(key, key))
    assert a.items() == b.items()
    assert a.snapshot() != b.snapshot()   # the replaced versions differ
    for store in (a, b):   # drop them: a limit below one version keeps none
        store._max_history_bytes = 1
        store._collect()
        store.compact_watch(store.applied_index + 1)   # and the watch history, which differs
    assert a.snapshot() == b.snapshot()


def test_restore_replaces_state_and_rejects_garbage() -> None:
    store = _busy_store()
    data = store.snapshot()
    target = KVStore()
    target.apply(1, encode_put(b"only-here", b"1"))
    target.restore(data)
    assert target.get(b"only-here") is None and target == store
    before = target.snapshot()
    for garbage in (b"", b"XXXX" + data[4:], data[:-1], data + b"\x00",
                    data[:4] + struct.pack("<Q", 1) + struct.pack("<Q", 10**12) + data[20:]):
        with pytest.raises(DecodeError):
            target.restore(garbage)
        assert target.snapshot() == before    # unchanged by a failed restore


# ---------------------------------------------------------------------------- model


command_strategy = st.one_of(
    st.tuples(st.just("put"), st.binary(max_size=2), st.binary(max_size=3)),
    st.tuples(st.just("get"), st.binary(max_size=2), st.none()),
    st.tuples(st.just("delete"), st.binary(max_size=2), st.none()),
    st.tuples(st.just("cas"), st.binary(max_size=2),
              st.tuples(st.none() | st.binary(max_size=3), st.binary(max_size=3))),
    st.tuples(st.just("query"), st.binary(max_size=2), st.none()),
    st.tuples(st.just("snapshot"), st.none(), st.none()),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(command_strategy, max_size=60))
def test_against_a_dict_model(ops: list) -> None:
    model: dict[bytes, bytes] = {}
    store = KVStore()
    index = 0
    for op, key, arg in ops:
        index += 1
        if op == "put":
            result = decode_result(store.apply(index, encode_put(key, arg, previous=True)))
            assert result.ok and result.previous == model.get(key)
            assert result.revision == index and result.existed == (key in model)
            model[key] = arg
        elif op == "get":
            assert decode_result(store.apply(index, encode_get(key))).value == model.get(key)
        elif op == "delete":
            result = decode_result(store.apply(index, encode_delete(key, previous=True)))
            assert result.previous == model.pop(key, None)
        elif op == "cas":
            expected, new = arg
            result = decode_result(store.apply(index, encode_cas(key, expected, new)))
            if model.get(key) == expected:
                assert result.ok and result.existed == (expected is not None)
                model[key] = new
            else:
                assert result.status == Status.CAS_MISMATCH
                assert result.value == model.get(key)
        elif op == "query":
            assert decode_result(store.query(encode_query(key))).value == model.get(key)
        else:
            restored = KVStore()
            restored.restore(store.snapshot())
            assert restored == store
            store = restored
        assert dict(store.items()) == model


def test_snapshot_fork_freezes_state_while_apply_goes_on() -> None:
    from engine.kv import KVStore, encode_put

    store = KVStore()
    store.apply(7, encode_register())
    store.apply(8, encode_put(b"a", b"1", client_id=7, seq=1))
    serialize = store.snapshot_fork()
    expected = store.snapshot()
    store.apply(9, encode_put(b"a", b"2", client_id=7, seq=2))
    store.apply(10, encode_put(b"b", b"3"))
    assert serialize() == expected  # the fork saw none of the later applies
    restored = KVStore()
    restored.restore(serialize())
    assert restored.get(b"a") == b"1" and restored.get(b"b") is None

"""KVStore memory and snapshot size follow the live data plus a bounded session table and the
MVCC history (at most Limits.max_mvcc_history_bytes of replaced versions): a
write's result holds the previous value only when asked for, and a session caches at most
Limits.max_session_result_bytes of its last result (a retry past that is answered "applied,
result not retained", with the revision, never re-applied and never a failure)."""

from __future__ import annotations

import struct
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.config import Limits
from engine.errors import DecodeError
from engine.kv import KVStore
from engine.kv.commands import (
    Status,
    decode_client_id,
    decode_result,
    encode_cas,
    encode_get,
    encode_put,
    encode_register,
)

MIB = 1 << 20
SESSIONS = 50
KEY = b"k"
# The snapshot's fixed parts (engine/kv/store.py): header (magic, applied index, key and
# session counts, anchor and history counts, horizon) and the clock's first anchor; per key:
# two u32 lengths and its revision; per session: client id, seq, index, result length. The
# replaced versions it keeps take at most what they are accounted (KVStore.history_bytes).
SNAPSHOT_HEAD = struct.calcsize("<4sQQQ") + struct.calcsize("<QQ12s") + struct.calcsize("<Q12s")
KEY_ROW = 2 * 4 + 8
SESSION_ROW = struct.calcsize("<QQQ") + 4
STRIPPED_RESULT = 3 + 8   # head and revision: the most a stripped result keeps


def _session_table_bound(limits: Limits, sessions: int) -> int:
    return sessions * (SESSION_ROW + max(limits.max_session_result_bytes, STRIPPED_RESULT))


def _fifty_sessions_overwrite_one_key(store: KVStore, previous: bool) -> int:
    """The reported workload: 50 sessions each put a distinct 1 MiB value to one key.
    Returns the next free log index. Each command is dropped once applied (as the log's
    copy is, once compacted), so only what the store keeps stays allocated."""
    index = 1
    clients = []
    for _ in range(SESSIONS):
        clients.append(decode_client_id(decode_result(store.apply(index, encode_register()))))
        index += 1
    for number, client in enumerate(clients):
        value = bytes([number]) * MIB
        kwargs = {"previous": True} if previous else {}
        result = decode_result(store.apply(index, encode_put(KEY, value, client_id=client,
                                                             seq=1, **kwargs)))
        assert result.ok
        index += 1
    return index


def test_snapshot_of_50_sessions_overwriting_one_key_is_the_live_data_not_50x() -> None:
    limits = Limits()
    store = KVStore(limits)
    _fifty_sessions_overwrite_one_key(store, previous=False)
    live = len(KEY) + MIB + KEY_ROW
    assert store.history_bytes <= limits.max_mvcc_history_bytes
    assert store.watch_log.nbytes <= limits.watch_history_bytes
    # The watch history (each event accounted more than it takes in a snapshot) and the
    # coordination section's frames.
    watch = store.watch_log.nbytes + 256
    bound = (SNAPSHOT_HEAD + live + _session_table_bound(limits, SESSIONS) + store.history_bytes
             + watch)
    size = len(store.snapshot())
    assert size <= bound, f"snapshot of {size:,} bytes for {live:,} bytes of live data"
    # The session table's share is small and bounded; the histories' are their limits.
    assert bound < (live + 64 * 1024 + limits.max_mvcc_history_bytes
                    + limits.watch_history_bytes + 256)


def test_sessions_asking_for_the_previous_value_still_cache_a_bounded_result() -> None:
    limits = Limits()
    store = KVStore(limits)
    _fifty_sessions_overwrite_one_key(store, previous=True)
    assert store.session_bytes <= _session_table_bound(limits, SESSIONS)
    assert len(store.snapshot()) <= (SNAPSHOT_HEAD + len(KEY) + MIB + KEY_ROW
                                     + _session_table_bound(limits, SESSIONS)
                                     + store.history_bytes + store.watch_log.nbytes + 256)


def test_store_memory_is_the_live_data_plus_the_bounded_session_table() -> None:
    limits = Limits()
    store = KVStore(limits)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        _fifty_sessions_overwrite_one_key(store, previous=True)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # The live value and key, the session table, the replaced versions kept (at most
    # their limit), and per-object overhead (a _Session and an OrderedDict node per
    # session, a dict slot): well under 1 KiB each.
    assert store.history_bytes <= limits.max_mvcc_history_bytes
    bound = (MIB + _session_table_bound(limits, SESSIONS) + store.history_bytes
             + store.watch_log.nbytes + SESSIONS * 1024)
    assert held <= bound, f"the store holds {held:,} bytes for {MIB:,} bytes of live data"


def test_session_table_bound_follows_from_the_limits() -> None:
    limits = Limits(max_client_sessions=7, max_session_result_bytes=100)
    assert KVStore(limits).session_bytes_bound() == 7 * (SESSION_ROW + 100)
    # The whole table: every session at its largest, the oldest evicted past the count.
    store = KVStore(limits)
    index = 0
    for round_ in range(20):
        index += 1
        client = decode_client_id(decode_result(store.apply(index, encode_register())))
        index += 1
        store.apply(index, encode_put(KEY, bytes([round_]) * 500, client_id=client, seq=1,
                                      previous=True))
    assert store.session_count == 7
    assert store.session_bytes <= store.session_bytes_bound()


def test_a_retry_whose_result_was_not_retained_is_answered_applied_with_its_revision() -> None:
    store = KVStore(Limits(max_session_result_bytes=64))
    client = decode_client_id(decode_result(store.apply(1, encode_register())))
    store.apply(2, encode_put(KEY, b"a" * 1000))
    put = encode_put(KEY, b"b" * 1000, client_id=client, seq=1, previous=True)
    first = decode_result(store.apply(3, put))
    assert first.ok and first.previous == b"a" * 1000 and first.retained   # the first answer
    store.apply(4, encode_put(KEY, b"c"))                 # someone writes in between
    retried = decode_result(store.apply(5, put))          # the same (client, seq)
    assert retried.ok and not retried.retained            # applied, said so: never a failure
    assert (retried.revision, retried.existed, retried.previous) == (3, True, None)
    assert store.get(KEY) == b"c"                         # and not applied again


def test_a_retried_cas_mismatch_and_get_keep_their_status_without_the_value() -> None:
    store = KVStore(Limits(max_session_result_bytes=64))
    client = decode_client_id(decode_result(store.apply(1, encode_register())))
    store.apply(2, encode_put(KEY, b"x" * 1000))
    cas = encode_cas(KEY, b"y", b"z", client_id=client, seq=1)
    assert decode_result(store.apply(3, cas)).value == b"x" * 1000
    retried = decode_result(store.apply(4, cas))
    assert retried.status == Status.CAS_MISMATCH and not retried.retained
    assert retried.value is None and store.get(KEY) == b"x" * 1000
    get = encode_get(KEY, client_id=client, seq=2)
    assert decode_result(store.apply(5, get)).value == b"x" * 1000
    again = decode_result(store.apply(6, get))
    assert again.ok and not again.retained and again.value is None


def test_restore_under_a_smaller_limit_strips_large_cached_results() -> None:
    source = KVStore(Limits(max_session_result_bytes=4096))
    client = decode_client_id(decode_result(source.apply(1, encode_register())))
    source.apply(2, encode_put(KEY, b"a" * 1000))
    put = encode_put(KEY, b"b", client_id=client, seq=1, previous=True)
    source.apply(3, put)
    target = KVStore(Limits(max_session_result_bytes=64))
    target.restore(source.snapshot())
    assert target.session_bytes <= target.session_bytes_bound()
    retried = decode_result(target.apply(4, put))
    assert retried.ok and not retried.retained and retried.revision == 3
    assert target.get(KEY) == b"b"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.binary(max_size=40), st.booleans()),
                max_size=30),
       st.sampled_from([1, 11, 16, 64, 1024]))
def test_cached_results_never_exceed_the_limit(writes: list[tuple[int, bytes, bool]],
                                               limit: int) -> None:
    store = KVStore(Limits(max_session_result_bytes=limit))
    clients = [decode_client_id(decode_result(store.apply(i, encode_register())))
               for i in (1, 2, 3)]
    index = 3
    for seq, (who, value, previous) in enumerate(writes, 1):
        index += 1
        command = encode_put(KEY, value, client_id=clients[who], seq=seq, previous=previous)
        answered = store.apply(index, command)
        index += 1
        retried = store.apply(index, command)
        assert retried == answered or len(answered) > limit
        assert decode_result(retried).revision == decode_result(answered).revision
    assert store.session_bytes <= store.session_bytes_bound()


def test_restoring_a_cached_result_shorter_than_a_header_is_a_decode_error() -> None:
    snapshot = (struct.pack("<4sQQQ", b"EKV1", 5, 0, 1) + struct.pack("<QQQ", 1, 1, 5)
                + struct.pack("<I", 2) + b"\x01\x00")
    target = KVStore(Limits(max_session_result_bytes=1))
    before = target.snapshot()
    with pytest.raises(DecodeError):
        target.restore(snapshot)
    assert target.snapshot() == before

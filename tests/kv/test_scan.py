"""KVStore's key order and SCAN: against a naive sorted oracle over random writes, under both
twins of the PUT fast path, across snapshot / restore, and paged with small byte limits.

Method: hypothesis drives put / delete / cas sequences; the oracle is a dict whose sorted
items a range read filters by hand.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import ConfigError, DecodeError
from engine.kv import KVStore, commands
from engine.kv import store as store_module

_keys = st.binary(max_size=4)
_writes = st.lists(st.one_of(
    st.tuples(st.just("put"), _keys, st.binary(max_size=5), st.booleans()),
    st.tuples(st.just("delete"), _keys, st.just(b""), st.booleans()),
    st.tuples(st.just("cas"), _keys, st.binary(max_size=5), st.booleans()),
), max_size=60)


def _command(op: str, key: bytes, value: bytes, session: bool, seq: int) -> bytes:
    ids = {"client_id": 1, "seq": seq} if session else {}
    if op == "put":
        return commands.encode_put(key, value, **ids)
    if op == "delete":
        return commands.encode_delete(key, **ids)
    return commands.encode_cas(key, None, value, **ids)   # creates the key only if absent


def _apply(store: KVStore, oracle: dict[bytes, bytes],
           writes: list[tuple[str, bytes, bytes, bool]]) -> None:
    store.apply(1, commands.encode_register())   # session 1 (ids are log indexes)
    for index, (op, key, value, session) in enumerate(writes, 2):
        store.apply(index, _command(op, key, value, session, index))
        if op == "put":
            oracle[key] = value
        elif op == "delete":
            oracle.pop(key, None)
        else:
            oracle.setdefault(key, value)


def _oracle_scan(oracle: dict[bytes, bytes], start: bytes, end: bytes
                 ) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in sorted(oracle.items()) if k >= start and (not end or k < end)]


@pytest.fixture(params=["fast path", "general path"])
def store_path(request: pytest.FixtureRequest, impl: SimpleNamespace,
               monkeypatch: pytest.MonkeyPatch) -> str:
    """Each twin's PUT fast path (impl), and the general path (no fast path at all)."""
    monkeypatch.setattr(store_module, "_apply_put", impl.kvput.apply_put)
    monkeypatch.setattr(store_module, "_parse_put", impl.kvput.parse_put)
    if request.param == "general path":
        monkeypatch.setattr(store_module, "_apply_put", lambda d, c, i, created, versions: None)
        monkeypatch.setattr(store_module, "_parse_put", lambda c: None)
    return str(request.param)


# store_path's patches are the same for every example: a function-scoped fixture is fine.
@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes=_writes, start=_keys, end=_keys, limit=st.integers(1, 70))
def test_scan_matches_a_sorted_oracle(store_path: str,
                                      writes: list[tuple[str, bytes, bytes, bool]],
                                      start: bytes, end: bytes, limit: int) -> None:
    store: KVStore = KVStore()
    oracle: dict[bytes, bytes] = {}
    _apply(store, oracle, writes)
    assert store.keys_in_order() == sorted(oracle)
    expected = _oracle_scan(oracle, start, end)
    rows, more = store.scan(start, end, limit)
    assert rows == expected[:limit]
    assert more == (len(expected) > limit)
    if end and start > end:   # an empty range for the store; a caller's error to encode
        assert rows == [] and not more
        with pytest.raises(ConfigError):
            commands.encode_scan(start, end, limit=limit)
        return
    # The same through the query, its encoding and the client's decoding.
    page = commands.decode_scan_result(commands.decode_result(
        store.query(commands.encode_scan(start, end, limit=limit))))
    assert [tuple(item) for item in page.items] == rows and page.more == more
    assert page.revision == store.applied_index


@settings(max_examples=100, deadline=None)
@given(writes=_writes)
def test_snapshot_restore_rebuilds_the_order(writes: list[tuple[str, bytes, bytes, bool]]
                                             ) -> None:
    store: KVStore = KVStore()
    oracle: dict[bytes, bytes] = {}
    _apply(store, oracle, writes)
    restored = KVStore()
    restored.restore(store.snapshot())
    assert restored.keys_in_order() == sorted(oracle)
    assert restored.scan(b"") == store.scan(b"")
    # The order stays live after restore: creating and deleting keys updates it.
    restored.apply(store.applied_index + 1, commands.encode_put(b"\x00new", b"v"))
    for key in list(oracle)[:3]:
        restored.apply(restored.applied_index + 1, commands.encode_delete(key))
        del oracle[key]
    oracle[b"\x00new"] = b"v"
    assert restored.keys_in_order() == sorted(oracle)


def test_overwrites_leave_the_order_alone() -> None:
    """Only a created or deleted key changes the order (an overwrite touches the map)."""
    store = KVStore()
    for index, key in enumerate((b"b", b"a", b"c"), 1):
        store.apply(index, commands.encode_put(key, b"1"))
    assert store.keys_in_order() == [b"a", b"b", b"c"]
    order = store._keys   # the very object: an overwrite must not rebuild or touch it
    store.apply(4, commands.encode_put(b"a", b"2"))
    assert store._keys is order and store._new_keys == [] and list(order) == [b"a", b"b", b"c"]
    assert store.scan(b"a", b"b") == ([(b"a", b"2")], False)


def test_created_keys_are_ordered_in_one_batch_at_the_next_ordered_read() -> None:
    """A create only appends to the new-key list; a scan or a delete merges it into the
    order, so every path that reads the order sees every key exactly once."""
    store = KVStore()
    for index, key in enumerate((b"d", b"b", b"a", b"c"), 1):
        store.apply(index, commands.encode_put(key, b"1"))
    assert list(store._keys) == [] and sorted(store._new_keys) == [b"a", b"b", b"c", b"d"]
    store.apply(5, commands.encode_delete(b"b"))        # a delete settles first
    assert store._new_keys == [] and list(store._keys) == [b"a", b"c", b"d"]
    store.apply(6, commands.encode_put(b"b", b"2"))     # created again: once, not twice
    store.apply(7, commands.encode_put(b"b", b"3"))     # an overwrite: not created
    assert store._new_keys == [b"b"]
    assert store.scan(b"", b"") == ([(b"a", b"1"), (b"b", b"3"), (b"c", b"1"),
                                     (b"d", b"1")], False)


@settings(max_examples=60, deadline=None)
@given(n_keys=st.integers(0, 120), max_bytes=st.integers(1, 200),
       value_bytes=st.integers(0, 40), limit=st.integers(1, 9))
def test_paging_with_small_byte_limits_returns_every_key_once_in_order(
        n_keys: int, max_bytes: int, value_bytes: int, limit: int) -> None:
    store = KVStore()
    keys = [b"k%03d" % i for i in range(n_keys)]
    for index, key in enumerate(reversed(keys), 1):
        store.apply(index, commands.encode_put(key, bytes(value_bytes)))
    seen: list[bytes] = []
    cursor: bytes | None = b""
    pages = 0
    while cursor is not None:
        answer = store.query(commands.encode_scan(cursor, None, limit=limit,
                                                  max_bytes=max_bytes))
        page = commands.decode_scan_result(commands.decode_result(answer))
        # Bounded: at most `limit` keys and max_bytes, except a page of one key (progress).
        assert 1 <= len(page.items) <= limit or (not page.items and not page.more)
        assert (len(answer) <= max(max_bytes, commands.SCAN_RESULT_OVERHEAD_BYTES)
                or len(page.items) == 1)
        seen += [item.key for item in page.items]
        cursor = page.resume_key
        pages += 1
        assert pages <= n_keys + 1
    assert seen == keys


def test_a_page_is_at_most_a_datagram_whatever_the_query_asks() -> None:
    store = KVStore()
    for index in range(1, 200):
        store.apply(index, commands.encode_put(b"k%04d" % index, bytes(1000)))
    answer = store.query(commands.encode_scan(b""))   # asks for 4 GiB
    page = commands.decode_scan_result(commands.decode_result(answer))
    assert page.more and len(answer) <= store_module.Limits().max_datagram_bytes


def test_prefix_end() -> None:
    assert commands.prefix_end(b"user/") == b"user0"
    assert commands.prefix_end(b"a\xff\xff") == b"b"
    assert commands.prefix_end(b"\xff") == b"" == commands.prefix_end(b"")
    store = KVStore()
    for index, key in enumerate((b"user", b"user/", b"user/a", b"user/\xff", b"user0"), 1):
        store.apply(index, commands.encode_put(key, b""))
    rows, _ = store.scan(b"user/", commands.prefix_end(b"user/"))
    assert [k for k, _ in rows] == [b"user/", b"user/a", b"user/\xff"]


@pytest.mark.parametrize(("start", "end", "limit"), [
    (b"b", b"a", None), (b"a", None, 0), (b"a", None, -1), (b"a", None, True), ("a", None, 1),
])
def test_bad_scan_arguments_are_config_errors(start: bytes, end: bytes | None,
                                              limit: int | None) -> None:
    with pytest.raises(ConfigError):
        commands.check_scan_range(start, end, limit)
    with pytest.raises(ConfigError):
        commands.encode_scan(start, end, limit=1 if limit is None else limit)


def test_malformed_scan_queries_are_malformed_results() -> None:
    good = commands.encode_scan(b"a", b"b", limit=3, max_bytes=100)
    store = KVStore()
    for bad in (good[:4], good + b"x", good[:2] + b"\x01" + good[3:],
                good[:3] + bytes(4) + good[7:]):   # cut, extended, a flag, limit 0
        result = commands.decode_result(store.query(bad))
        assert result.status == commands.Status.MALFORMED
        with pytest.raises(DecodeError):
            commands.decode_scan(bad)
    # A SCAN is a query only: in the log it is MALFORMED on every replica, nothing applied.
    assert commands.decode_result(store.apply(1, good)).status == commands.Status.MALFORMED

"""KVStore.apply's PUT fast path (engine._core.kvput, both twins) must agree exactly with
decode_command and with the general path of KVStore.apply."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.config import Limits
from engine.errors import DecodeError
from engine.kv import KVStore, commands
from engine.kv import store as store_module

_keys = st.binary(max_size=6)
_sessions = st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 4)))


def _put(key: bytes, value: bytes, session: tuple[int, int] | None, previous: bool) -> bytes:
    if session is None:
        return commands.encode_put(key, value, previous=previous)
    return commands.encode_put(key, value, client_id=session[0], seq=session[1],
                               previous=previous)


def _mutations() -> st.SearchStrategy[bytes]:
    """Valid PUTs, other commands, and PUTs cut short, extended or with a byte flipped."""
    valid = st.builds(_put, _keys, st.binary(max_size=6), _sessions, st.booleans())
    other = st.one_of(
        st.just(commands.encode_register()),
        st.builds(lambda k, p: commands.encode_delete(k, previous=p), _keys, st.booleans()),
        st.builds(lambda k, e, n: commands.encode_cas(k, e, n), _keys,
                  st.one_of(st.none(), st.binary(max_size=3)), st.binary(max_size=3)),
    )

    def damage(data: bytes, position: int, how: int) -> bytes:
        position %= len(data) + 1
        if how == 0:
            return data[:position]
        if how == 1:
            return data + b"\x00"
        if position == len(data):
            return data
        return data[:position] + bytes([data[position] ^ 0x41]) + data[position + 1:]

    damaged = st.builds(damage, valid, st.integers(0, 64), st.integers(0, 2))
    return st.one_of(valid, other, damaged, st.binary(max_size=30))


def test_wire_constants_match_the_kv_codec(impl: SimpleNamespace) -> None:
    kvput = impl.kvput
    assert (kvput.VERSION, kvput.OP_PUT, kvput.FLAG_SESSION, kvput.FLAG_WANT_PREVIOUS,
            kvput.FLAG_PREVIOUS, kvput.FLAG_REVISION, kvput.FLAG_EXISTED, kvput.STATUS_OK
            ) == (commands.VERSION, commands.Op.PUT, commands.FLAG_SESSION,
                  commands.FLAG_WANT_PREVIOUS, commands.FLAG_PREVIOUS, commands.FLAG_REVISION,
                  commands.FLAG_EXISTED, commands.Status.OK)


@settings(max_examples=3000, deadline=None)
@given(_mutations())
def test_parse_put_agrees_with_decode_command(both_impls: list[SimpleNamespace],
                                              data: bytes) -> None:
    parsed = [impl.kvput.parse_put(data) for impl in both_impls]
    assert all(p == parsed[0] for p in parsed), (data, parsed)
    fast = parsed[0]
    try:
        command = commands.decode_command(data)
    except DecodeError:
        assert fast is None
        return
    if fast is None:
        # Only non-PUTs (or a PUT with a session seq of 0, which decoding refuses) fall back.
        assert command.op != commands.Op.PUT
        return
    key, value, client_id, seq, previous = fast
    assert (command.op, command.key, command.value, command.client_id, command.previous) == (
        commands.Op.PUT, key, value, client_id, previous)
    if client_id is not None:
        assert command.seq == seq


@settings(max_examples=500, deadline=None)
@given(st.lists(_mutations(), max_size=20))
def test_apply_put_twins_agree_result_for_result(both_impls: list[SimpleNamespace],
                                                 batch: list[bytes]) -> None:
    """Same results and same map from both twins, a session-less PUT applied and anything else
    (session PUTs included) refused with None and the map untouched."""
    maps: list[dict[bytes, bytes]] = [{b"k": b"old"} for _ in both_impls]
    for index, data in enumerate(batch, 1):
        before = dict(maps[0])
        created: list[list[bytes]] = [[] for _ in both_impls]
        results = [impl.kvput.apply_put(m, data, index, seen.append)
                   for impl, m, seen in zip(both_impls, maps, created, strict=True)]
        assert all(r == results[0] for r in results), (data, results)
        assert all(m == maps[0] for m in maps)
        assert all(seen == created[0] for seen in created)
        parsed = both_impls[0].kvput.parse_put(data)
        # `created` hears of a key the PUT created, never of an overwrite (KVStore's order).
        assert created[0] == ([parsed[0]] if parsed is not None and parsed[2] is None
                              and parsed[0] not in before else [])
        if parsed is None or parsed[2] is not None:
            assert results[0] is None and maps[0] == before
        else:
            assert maps[0][parsed[0]] == parsed[1]
            previous = before.get(parsed[0])
            assert results[0] == commands.encode_result(
                commands.Status.OK, previous=previous if parsed[4] else None, revision=index,
                existed=previous is not None)


def test_apply_put_created_callback_is_optional(impl: SimpleNamespace) -> None:
    """Without `created` (or with None) a PUT applies as ever, new key or not."""
    data: dict[bytes, bytes] = {}
    assert impl.kvput.apply_put(data, commands.encode_put(b"k", b"v"), 1) is not None
    assert impl.kvput.apply_put(data, commands.encode_put(b"k", b"w"), 2, None) is not None
    assert data == {b"k": b"w"}


def test_apply_put_refuses_what_is_not_bytes(impl: SimpleNamespace) -> None:
    put = commands.encode_put(b"k", b"v")
    data: dict[bytes, bytes] = {}
    assert impl.kvput.apply_put(data, bytearray(put), 1) is None
    assert impl.kvput.apply_put(data, memoryview(put), 1) is None
    assert impl.kvput.parse_put(bytearray(put)) is None
    assert data == {}


@settings(max_examples=300, deadline=None)
@given(st.lists(_mutations(), max_size=25), st.sampled_from([16, 1024]))
def test_apply_results_and_state_match_the_slow_path(batch: list[bytes],
                                                     result_limit: int) -> None:
    """Also with a session result limit small enough that cached results are stripped."""
    batch = [commands.encode_register()] * 3 + batch   # sessions 1..3 exist (ids = indexes)
    limits = Limits(max_session_result_bytes=result_limit)
    fast_store = KVStore(limits)
    fast = [fast_store.apply(index, data) for index, data in enumerate(batch, 1)]
    slow_store = KVStore(limits)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store_module, "_parse_put", lambda data: None)
        patch.setattr(store_module, "_apply_put",
                      lambda data, command, index, created, versions: None)
        slow = [slow_store.apply(index, data) for index, data in enumerate(batch, 1)]
    assert fast == slow
    assert fast_store == slow_store
    # Both paths keep the key order (the SCAN index) in step with the map, whose rows a
    # snapshot holds (sorted from the map itself).
    for store in (fast_store, slow_store):
        rows = KVStore()
        rows.restore(store.snapshot())
        assert store.keys_in_order() == rows.keys_in_order()
        assert store.scan(b"")[0] == rows.items()


@settings(max_examples=500, deadline=None)
@given(st.integers(0, 2**64 - 1), st.one_of(st.none(), st.binary(max_size=8)), st.booleans())
def test_put_result_twins_agree_with_the_result_codec(both_impls: list[SimpleNamespace],
                                                      revision: int, previous: bytes | None,
                                                      want_previous: bool) -> None:
    """The session PUT path's result (put_result) is the general path's encode_result."""
    results = [impl.kvput.put_result(revision, previous, want_previous) for impl in both_impls]
    assert all(r == results[0] for r in results)
    assert results[0] == commands.encode_result(
        commands.Status.OK, previous=previous if want_previous else None, revision=revision,
        existed=previous is not None)


@settings(max_examples=300, deadline=None)
@given(st.lists(_mutations(), max_size=25), st.integers(100, 400), st.booleans())
def test_apply_put_twins_keep_the_same_versions(both_impls: list[SimpleNamespace],
                                                batch: list[bytes], max_bytes: int,
                                                keep: bool) -> None:
    """With a Versions table (engine.kv.store's MVCC side table) both twins record the same
    revisions, push the same replaced values, and collect the same oldest versions when
    the table passes its bound."""
    tables = []
    maps: list[dict[bytes, bytes]] = [{} for _ in both_impls]
    for impl, data in zip(both_impls, maps, strict=True):
        versions = impl.kvput.Versions(max_bytes)
        versions.keep = keep
        versions.on_full = lambda v=versions: v.drop_oldest(max_bytes // 2)
        for index, command in enumerate(batch, 1):
            impl.kvput.apply_put(data, command, index, None, versions)
        tables.append(versions)
    first = tables[0]
    for versions in tables:
        assert (versions.revisions, versions.history, versions.queue[versions.head:],
                versions.nbytes) == (first.revisions, first.history,
                                     first.queue[first.head:], first.nbytes)
        assert versions.nbytes <= max_bytes
        assert set(versions.revisions) == set(maps[0])
    if not keep:
        assert first.history == {} and first.nbytes == 0

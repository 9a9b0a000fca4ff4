"""KVStore.apply's PUT fast path (_parse_put) must agree exactly with decode_command."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import DecodeError
from engine.kv import KVStore, commands
from engine.kv import store as store_module

_keys = st.binary(max_size=6)
_sessions = st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 4)))


def _put(key: bytes, value: bytes, session: tuple[int, int] | None) -> bytes:
    if session is None:
        return commands.encode_put(key, value)
    return commands.encode_put(key, value, client_id=session[0], seq=session[1])


def _mutations() -> st.SearchStrategy[bytes]:
    """Valid PUTs, other commands, and PUTs cut short, extended or with a byte flipped."""
    valid = st.builds(_put, _keys, st.binary(max_size=6), _sessions)
    other = st.one_of(
        st.just(commands.encode_register()),
        st.builds(commands.encode_delete, _keys),
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


@settings(max_examples=3000, deadline=None)
@given(_mutations())
def test_parse_put_agrees_with_decode_command(data: bytes) -> None:
    fast = store_module._parse_put(data) if data[:2] == store_module._PUT_PREFIX else None
    try:
        command = commands.decode_command(data)
    except DecodeError:
        assert fast is None
        return
    if fast is None:
        # Only non-PUTs (or a PUT with a session seq of 0, which decoding refuses) fall back.
        assert command.op != commands.Op.PUT
        return
    key, value, client_id, seq = fast
    assert (command.op, command.key, command.value, command.client_id) == (
        commands.Op.PUT, key, value, client_id)
    if client_id is not None:
        assert command.seq == seq


@settings(max_examples=300, deadline=None)
@given(st.lists(_mutations(), max_size=25))
def test_apply_results_and_state_match_the_slow_path(batch: list[bytes]) -> None:
    batch = [commands.encode_register()] * 3 + batch   # sessions 1..3 exist (ids = indexes)
    fast_store = KVStore()
    fast = [fast_store.apply(index, data) for index, data in enumerate(batch, 1)]
    slow_store = KVStore()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store_module, "_parse_put", lambda data: None)
        slow = [slow_store.apply(index, data) for index, data in enumerate(batch, 1)]
    assert fast == slow
    assert fast_store == slow_store

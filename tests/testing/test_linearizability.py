"""engine/testing/linearizability.py: the checker against histories with known answers.

Three kinds of evidence:
  1. hand-made histories (stale read, lost update, overlapping writes, cas, info ops, sets)
     whose verdict is worked out in the comment next to each;
  2. a brute-force oracle (every order of every subset of the info ops) on hundreds of small
     random histories, valid and not: the search must agree with it exactly;
  3. generated linearizable histories (valid by construction) and mutations of them that are
     invalid by construction.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import pytest

from engine.testing.history_gen import (
    NEVER_WRITTEN,
    generate_register_history,
    generate_set_history,
    mutate_lost_element,
    mutate_stale_read,
    mutate_unwritten_read,
)
from engine.testing.linearizability import (
    INITIAL_STEP_BUDGET,
    UNKNOWN,
    HistoryError,
    KVModel,
    Model,
    Operation,
    check_linearizable,
    main,
    parse_history,
)
from engine.testing.models import DROP, get_model

# -- a tiny DSL: ops as (process, f, value, outcome, result) in real-time event order --------------


def inv(p: int, f: str, value: Any = None, key: Any = None) -> dict[str, Any]:
    event = {"process": p, "type": "invoke", "f": f, "value": value}
    if key is not None:
        event["key"] = key
    return event


def ok(p: int, f: str, value: Any = None) -> dict[str, Any]:
    return {"process": p, "type": "ok", "f": f, "value": value}


def info(p: int, f: str, value: Any = None) -> dict[str, Any]:
    return {"process": p, "type": "info", "f": f, "value": value}


def fail(p: int, f: str, value: Any = None) -> dict[str, Any]:
    return {"process": p, "type": "fail", "f": f, "value": value}


def seq(p: int, f: str, value: Any = None, result: Any = None, key: Any = None
        ) -> list[dict[str, Any]]:
    """A complete "ok" op that overlaps nothing."""
    return [inv(p, f, value, key), ok(p, f, result if f == "read" else value)]


def W(p: int, v: Any, key: Any = None) -> list[dict[str, Any]]:  # noqa: N802
    return seq(p, "write", v, key=key)


def R(p: int, v: Any, key: Any = None) -> list[dict[str, Any]]:  # noqa: N802
    return seq(p, "read", None, v, key=key)


# -- register: hand-made ---------------------------------------------------------------------------


def test_empty_history_is_linearizable() -> None:
    assert check_linearizable([]).valid is True


def test_sequential_writes_and_reads() -> None:
    assert check_linearizable(R(0, None) + W(0, 1) + R(1, 1) + W(1, 2) + R(0, 2)).valid is True


def test_stale_read_is_not_linearizable() -> None:
    # write 1, then write 2 completes, then a read begins and returns 1: 1 was overwritten.
    result = check_linearizable(W(0, 1) + W(1, 2) + R(2, 1))
    assert result.valid is False
    assert not result
    assert "read -> 1" in result.explanation
    assert "not legal in this state" in result.explanation
    assert [op.value for op, _ in result.partitions[0].prefix] == [1, 2]


def test_read_of_initial_value_after_write_is_stale() -> None:
    assert check_linearizable(W(0, 1) + R(1, None)).valid is False


def test_lost_update_two_cas_from_same_value() -> None:
    # write 0; two concurrent cas 0->1 and 0->2 both succeed: only one can see 0.
    history = W(0, 0) + [
        inv(1, "cas", [0, 1]), inv(2, "cas", [0, 2]), ok(1, "cas", [0, 1]), ok(2, "cas", [0, 2]),
    ] + R(0, 2)
    assert check_linearizable(history).valid is False
    # With the second cas failing (Jepsen's "fail"), it is fine.
    history[-3] = fail(2, "cas", [0, 2])
    assert check_linearizable(history[:-2] + R(0, 1)).valid is True


def test_concurrent_writes_either_order_is_legal() -> None:
    overlap = [inv(0, "write", 1), inv(1, "write", 2), ok(0, "write", 1), ok(1, "write", 2)]
    assert check_linearizable(overlap + R(2, 1)).valid is True
    assert check_linearizable(overlap + R(2, 2)).valid is True
    # ... but once both completed, the register cannot change again.
    assert check_linearizable(overlap + R(2, 1) + R(2, 2)).valid is False
    assert check_linearizable(overlap + R(2, 2) + R(2, 1)).valid is False


def test_reads_during_overlapping_writes_see_both_orders() -> None:
    # Reads inside the window can observe 1 then 2, as long as no later read goes back.
    history = [inv(0, "write", 1), inv(1, "write", 2),
               inv(2, "read"), ok(2, "read", 1), inv(2, "read"), ok(2, "read", 2),
               ok(0, "write", 1), ok(1, "write", 2)]
    assert check_linearizable(history).valid is True
    assert check_linearizable(history + R(2, 1)).valid is False
    # A read that sees 2 then 1 forces write 2 before write 1: legal too.
    swapped = [inv(0, "write", 1), inv(1, "write", 2),
               inv(2, "read"), ok(2, "read", 2), inv(2, "read"), ok(2, "read", 1),
               ok(0, "write", 1), ok(1, "write", 2)]
    assert check_linearizable(swapped + R(3, 1)).valid is True


def test_read_overlapping_a_write_may_see_old_or_new() -> None:
    base = W(0, 1) + [inv(0, "write", 2), inv(1, "read")]
    assert check_linearizable(base + [ok(1, "read", 1), ok(0, "write", 2)]).valid is True
    assert check_linearizable(base + [ok(1, "read", 2), ok(0, "write", 2)]).valid is True
    assert check_linearizable(base + [ok(1, "read", 3), ok(0, "write", 2)]).valid is False


def test_cas_success_and_failure() -> None:
    good = W(0, 1) + seq(1, "cas", [1, 2]) + R(0, 2)
    assert check_linearizable(good).valid is True
    # An ok cas whose expected value was not current cannot have succeeded.
    assert check_linearizable(W(0, 1) + seq(1, "cas", [5, 2]) + R(0, 2)).valid is False
    # A failed cas (type fail) did not happen: the register keeps 1.
    failed = W(0, 1) + [inv(1, "cas", [5, 2]), fail(1, "cas", [5, 2])]
    assert check_linearizable(failed + R(0, 1)).valid is True
    assert check_linearizable(failed + R(0, 2)).valid is False
    # cas from the initial None
    assert check_linearizable(seq(0, "cas", [None, 7]) + R(1, 7)).valid is True


def test_failed_write_did_not_happen() -> None:
    history = W(0, 1) + [inv(1, "write", 3), fail(1, "write", 3)] + R(0, 3)
    assert check_linearizable(history).valid is False


def test_info_write_that_must_have_happened() -> None:
    # The only way to read 2 is that the indeterminate write took effect.
    history = W(0, 1) + [inv(1, "write", 2), info(1, "write", 2)] + R(0, 2)
    assert check_linearizable(history).valid is True
    # Without it, reading 2 is impossible.
    assert check_linearizable(W(0, 1) + R(0, 2)).valid is False


def test_info_write_that_must_not_have_happened_yet_or_ever() -> None:
    base = W(0, 1) + [inv(1, "write", 2), info(1, "write", 2)]
    # It may not have happened (yet): reads keep seeing 1 long after.
    assert check_linearizable(base + R(0, 1) + R(2, 1) + R(0, 1)).valid is True
    # It may take effect later, "up to forever": 1, 1, then 2.
    assert check_linearizable(base + R(0, 1) + R(0, 2)).valid is True
    # But once it happened it cannot be undone: 2 then 1 again is illegal.
    assert check_linearizable(base + R(0, 2) + R(0, 1)).valid is False
    # And it cannot take effect before it was invoked.
    early = W(0, 1) + R(2, 2) + [inv(1, "write", 2), info(1, "write", 2)]
    assert check_linearizable(early).valid is False


def test_info_cas_only_where_it_could_succeed() -> None:
    base = W(0, 1) + [inv(1, "cas", [1, 5]), info(1, "cas", [1, 5])]
    assert check_linearizable(base + R(0, 5)).valid is True
    assert check_linearizable(base + R(0, 1)).valid is True
    # After the register moved to 3 the info cas 1->5 cannot apply, and had it applied
    # before, write 3 overwrote it.
    assert check_linearizable(base + W(0, 3) + R(0, 5)).valid is False
    # Back at 1, it can still apply ("up to forever").
    assert check_linearizable(base + W(0, 3) + W(0, 1) + R(0, 5)).valid is True


def test_info_op_used_early_does_not_hide_the_same_state_without_it() -> None:
    # Found by a random search against the brute-force oracle when the memo ignored which
    # info ops were consumed: the search first reaches (reads done, state 1) having spent the
    # info "write 0" early; the only valid order reaches the same point with it unspent and
    # needs it later for the cas 0->0:
    #   read -> None, write 1 (info), read -> 1, write 0 (info), cas 0 -> 0.
    history = [
        inv(3, "write", 0), inv(0, "read"), info(3, "write", 0), inv(3, "write", 1),
        inv(2, "read"), ok(0, "read", 1), ok(2, "read", None),
        inv(2, "cas", [None, 0]), inv(1, "cas", [0, 0]), info(2, "cas", [None, 0]),
        ok(1, "cas", [0, 0]), info(3, "write", 1),
    ]
    assert check_linearizable(history).valid is True
    assert brute_force(history, "register") is True


def test_invoke_without_completion_is_indeterminate() -> None:
    history = W(0, 1) + [inv(1, "write", 2)] + R(0, 2)
    assert check_linearizable(history).valid is True
    assert check_linearizable(history + R(0, 1)).valid is False


def test_indeterminate_read_constrains_nothing() -> None:
    history = W(0, 1) + [inv(1, "read"), info(1, "read")] + R(0, 1)
    assert check_linearizable(history).valid is True


def test_process_reusing_id_after_info_is_a_new_logical_process() -> None:
    # Jepsen never reuses a process after info; be robust: the later invoke is a new op.
    history = [inv(0, "write", 1), info(0, "write", 1)] + W(0, 2) + R(1, 2)
    assert check_linearizable(history).valid is True
    history2 = [inv(0, "write", 1), info(0, "write", 1)] + W(0, 2) + R(1, 1)
    assert check_linearizable(history2).valid is True  # the info write landed after write 2
    assert check_linearizable(history2 + R(1, 2)).valid is False


def test_nemesis_events_are_ignored() -> None:
    nemesis = [{"process": "nemesis", "type": "info", "f": "start-partition", "value": None}]
    assert check_linearizable(W(0, 1) + nemesis + R(1, 1) + nemesis).valid is True


def test_time_field_orders_events() -> None:
    # Listed out of order, but the times say write(t=1..2) precedes read(t=3..4).
    history = [
        {"process": 1, "type": "invoke", "f": "read", "value": None, "time": 3},
        {"process": 1, "type": "ok", "f": "read", "value": None, "time": 4},
        {"process": 0, "type": "invoke", "f": "write", "value": 1, "time": 1},
        {"process": 0, "type": "ok", "f": "write", "value": 1, "time": 2},
    ]
    assert check_linearizable(history).valid is False
    for event in history:
        del event["time"]  # list order: the read comes first and sees None
    assert check_linearizable(history).valid is True


# -- kv: partitioned by key ------------------------------------------------------------------------


def test_kv_checks_each_key_on_its_own() -> None:
    history = W(0, 1, key="a") + W(1, 1, key="b") + W(0, 2, key="a") + R(1, 1, key="b") \
        + R(1, 2, key="a")
    assert check_linearizable(history, model="kv").valid is True
    stale = history + R(2, 1, key="a")
    result = check_linearizable(stale, model="kv")
    assert result.valid is False
    assert result.key == "a"
    assert result.illegal_keys == ["a"]
    assert "key 'a'" in result.summary()
    assert len(result.partitions) == 2


def test_kv_bytes_keys_and_independence() -> None:
    # Each key alone is fine; merged into one register it would not be.
    history = W(0, 1, key=b"x") + W(1, 2, key=b"y") + R(0, 1, key=b"x") + R(1, 2, key=b"y")
    assert check_linearizable(history, model="kv").valid is True
    with pytest.raises(HistoryError, match="model='kv'"):
        check_linearizable(history, model="register")


def G(p: int, v: Any, key: Any) -> list[dict[str, Any]]:  # noqa: N802
    return [inv(p, "get", None, key), ok(p, "get", v)]


def test_kv_append_strings_and_lists() -> None:
    # Porcupine's kv: values start as "", append concatenates, get reads, put overwrites.
    porcupine = KVModel(initial="")
    history = (seq(0, "append", "x", key="k") + seq(1, "append", "y", key="k")
               + G(0, "xy", "k") + seq(1, "put", "a", key="k")
               + G(0, "a", "k") + G(0, "", "j"))
    assert check_linearizable(history, model=porcupine).valid is True
    # With the default initial value (missing) a string append starts from "" as well.
    assert check_linearizable(history[:6], model="kv").valid is True
    # Appends are not commutative: reading "yx" after the appends completed in order is not.
    swapped = history[:4] + G(0, "yx", "k")
    result = check_linearizable(swapped, model=porcupine)
    assert result.valid is False and result.key == "k"
    assert "get -> 'yx'" in result.explanation and "append 'y'" in result.explanation
    # Jepsen's list-append: a list value gets the element at its end.
    lists = (seq(0, "append", 1, key="l") + seq(1, "append", 2, key="l")
             + seq(0, "read", None, [1, 2], key="l"))
    assert check_linearizable(lists, model="kv").valid is True
    assert check_linearizable(lists + seq(1, "read", None, [2, 1], key="l"),
                              model="kv").valid is False


def test_kv_concurrent_and_info_appends() -> None:
    porcupine = KVModel(initial="")
    overlap = [inv(0, "append", "x", key="k"), inv(1, "append", "y", key="k"),
               ok(0, "append", "x"), ok(1, "append", "y")]
    assert check_linearizable(overlap + G(2, "yx", "k"),
                              model=porcupine).valid is True
    assert check_linearizable(overlap + G(2, "y", "k"),
                              model=porcupine).valid is False
    # An append whose outcome is unknown may land, later, or never.
    maybe = seq(0, "append", "x", key="k") + [inv(1, "append", "y", key="k"),
                                              info(1, "append", "y")]
    for seen in ("x", "xy"):
        assert check_linearizable(maybe + G(0, seen, "k"),
                                  model=porcupine).valid is True
    assert check_linearizable(maybe + G(0, "yx", "k"),
                              model=porcupine).valid is False


def test_kv_append_to_a_number_is_not_legal() -> None:
    assert check_linearizable(W(0, 5, key="k") + seq(1, "append", "x", key="k"),
                              model="kv").valid is False
    with pytest.raises(HistoryError, match="append"):
        check_linearizable(seq(0, "incr", 1, key="k"), model="kv")


# -- set -------------------------------------------------------------------------------------------


def add(p: int, element: Any) -> list[dict[str, Any]]:
    return [inv(p, "add", element), ok(p, "add", element)]


def read_set(p: int, elements: list[Any]) -> list[dict[str, Any]]:
    return [inv(p, "read"), ok(p, "read", elements)]


def test_set_grows_and_reads_all() -> None:
    history = add(0, 1) + add(1, 2) + read_set(2, [1, 2]) + add(0, 3) + read_set(1, [3, 2, 1])
    assert check_linearizable(history, model="set").valid is True


def test_set_lost_element_is_not_linearizable() -> None:
    history = add(0, 1) + add(1, 2) + read_set(2, [2])
    result = check_linearizable(history, model="set")
    assert result.valid is False
    assert "read -> [2]" in result.explanation


def test_set_element_cannot_disappear_or_appear_early() -> None:
    concurrent = [inv(0, "add", 1), inv(1, "read"), ok(1, "read", [1]), ok(0, "add", 1)]
    assert check_linearizable(concurrent, model="set").valid is True
    assert check_linearizable(concurrent + read_set(1, []), model="set").valid is False
    assert check_linearizable(read_set(1, [1]) + add(0, 1), model="set").valid is False


def test_set_info_add_may_or_may_not_appear() -> None:
    base = add(0, 1) + [inv(1, "add", 2), info(1, "add", 2)]
    assert check_linearizable(base + read_set(0, [1]), model="set").valid is True
    assert check_linearizable(base + read_set(0, [1, 2]), model="set").valid is True
    assert check_linearizable(base + read_set(0, [1, 2]) + read_set(0, [1]),
                              model="set").valid is False


# -- user models -----------------------------------------------------------------------------------


class Counter:
    """Duck-typed model: increments and reads of a counter (no Model base class)."""

    def init(self) -> int:
        return 0

    def step(self, state: int, op_input: Any, op_output: Any) -> tuple[bool, int]:
        f, amount = op_input
        if f == "incr":
            return True, state + amount
        return op_output is UNKNOWN or op_output == state, state


class PerKeyQueue(Model):
    """A FIFO queue per key: enqueue x, dequeue -> x (state: tuple)."""

    name = "queue"

    def init(self) -> Hashable:
        return ()

    def op_input(self, op: Operation) -> Any:
        if op.f == "dequeue" and op.output is UNKNOWN:
            return ("dequeue?", None)
        return (op.f, op.value)

    def partition(self, ops: Sequence[Operation]) -> dict[Hashable, list[Operation]]:
        parts: dict[Hashable, list[Operation]] = {}
        for op in ops:
            parts.setdefault(op.key, []).append(op)
        return parts

    def step(self, state: Any, op_input: Any, op_output: Any) -> tuple[bool, Any]:
        f, value = op_input
        if f == "enqueue":
            return True, state + (value,)
        if f == "dequeue?":
            return bool(state), state[1:]
        return bool(state) and state[0] == op_output, state[1:]


def test_duck_typed_user_model() -> None:
    history = seq(0, "incr", 2) + [inv(1, "incr", 3), inv(2, "read"), ok(2, "read", 2),
                                   ok(1, "incr", 3)] + seq(2, "read", None, 5)
    assert check_linearizable(history, model=Counter()).valid is True
    assert check_linearizable(history + seq(0, "read", None, 4), model=Counter()).valid is False


def test_model_subclass_with_partition() -> None:
    q = "q1"
    good = seq(0, "enqueue", 1, key=q) + seq(1, "enqueue", 2, key=q) \
        + seq(0, "dequeue", None, 1, key=q) + seq(1, "enqueue", 9, key="q2")
    good[-4]["value"] = None  # dequeue invoke carries no value
    good[-3]["value"] = 1
    assert check_linearizable(good, model=PerKeyQueue()).valid is True
    bad = good + seq(1, "dequeue", None, 9, key=q)
    bad[-1]["value"] = 9
    result = check_linearizable(bad, model=PerKeyQueue())
    assert result.valid is False and result.key == q


def test_unknown_model_and_bad_model() -> None:
    with pytest.raises(HistoryError):
        check_linearizable([], model="queue")
    with pytest.raises(TypeError):
        check_linearizable([], model=object())


# -- malformed histories ---------------------------------------------------------------------------


@pytest.mark.parametrize("history, match", [
    ([ok(0, "read", 1)], "without a pending invoke"),
    ([inv(0, "read"), inv(0, "write", 1)], "still pending"),
    ([inv(0, "read"), ok(0, "write", 1)], "completed 'write'"),
    ([{"process": 0, "type": "invoke"}], "process, type and f"),
    ([inv(0, "read"), {"process": 0, "type": "done", "f": "read"}], "unknown event type"),
    ([inv(0, "incr", 1), ok(0, "incr", 1)], "unknown op"),
    ([inv(0, "cas", 1), ok(0, "cas", 1)], r"\[expected, new\]"),
    (["not a dict"], "not an object"),
])
def test_malformed_histories_raise(history: list[Any], match: str) -> None:
    with pytest.raises(HistoryError, match=match):
        check_linearizable(history)


# -- time limit ------------------------------------------------------------------------------------


def explosive_history(writers: int = 22) -> list[dict[str, Any]]:
    """`writers` fully concurrent writes of distinct values, then a read of a value never
    written: proving it illegal means trying every (subset, last write) of the writes."""
    return ([inv(p, "write", p) for p in range(writers)]
            + [ok(p, "write", p) for p in range(writers)] + R(writers, -1))


def test_time_limit_gives_unknown() -> None:
    result = check_linearizable(explosive_history(), time_limit_s=0.05)
    assert result.valid == "unknown"
    assert not result
    assert result.unknown_keys == [None]
    assert result.summary().startswith("unknown")


def test_small_explosive_history_is_decided() -> None:
    # The same shape with 6 writers is small enough to decide: the read is impossible.
    assert check_linearizable(explosive_history(6), time_limit_s=None).valid is False


def test_violation_beats_unknown_across_keys() -> None:
    explosive = [dict(e, key="slow") for e in explosive_history()]
    history = explosive + W(0, 1, key="bad") + W(0, 2, key="bad") + R(0, 1, key="bad")
    result = check_linearizable(history, model="kv", time_limit_s=0.05)
    # Keys are checked in sorted order: "bad" before "slow".
    assert result.valid is False and result.key == "bad"


def hard_but_linearizable(writers: int, key: Any) -> list[dict[str, Any]]:
    """`writers` fully concurrent writes, then a read of the first one's value: linearizable
    (that write went last), but the search tries the orders that start with it first and must
    work through every (subset, last write) of the others before it finds one ending in it."""
    return ([inv(p, "write", p, key) for p in range(writers)]
            + [dict(ok(p, "write", p), key=key) for p in range(writers)] + R(writers, 0, key=key))


def test_hard_first_key_does_not_starve_an_illegal_second_key() -> None:
    # Key 1 sorts first and needs ~10^8 search steps; key 2 is illegal and needs ~10^4 (9
    # concurrent writes, then a read of a value none of them wrote). Searched one key after
    # the other under one deadline, key 2 gets only what is left after the deadline and the
    # answer is "unknown"; interleaved, key 2 is proven illegal after key 1 had about as many
    # steps as key 2 needed.
    illegal = [dict(event, key=2) for event in explosive_history(9)]
    alone = check_linearizable(illegal, model="kv", time_limit_s=None)
    assert alone.valid is False and alone.steps > 4 * INITIAL_STEP_BUDGET
    result = check_linearizable(hard_but_linearizable(22, key=1) + illegal, model="kv")
    assert result.valid is False, result.summary()
    assert result.key == 2 and result.illegal_keys == [2]
    # The same evidence as key 2 alone (the events' positions in the history differ).
    found, own = result.partitions[1], alone.partitions[0]
    assert [(op.process, op.value, after) for op, after in found.prefix] == \
        [(op.process, op.value, after) for op, after in own.prefix]
    assert [(op.process, legal) for op, legal in found.blocked] == \
        [(op.process, legal) for op, legal in own.blocked]
    hard = result.partitions[0]
    assert hard.key == 1 and hard.valid == "unknown"
    assert hard.reason == "not decided: the search stopped at the first illegal key"
    # Both keys had the same budgets until key 2 was decided, in the first round whose total
    # reached its steps: the total before that round was below them, and each round's budget
    # is the total of the rounds before it plus the first budget.
    assert hard.steps <= 2 * alone.steps + INITIAL_STEP_BUDGET
    assert "the first key proven illegal" in result.summary()


def test_hard_key_is_linearizable_given_the_steps() -> None:
    # The same shape, small enough to finish: it is linearizable, only costly.
    result = check_linearizable(hard_but_linearizable(10, key=1), model="kv", time_limit_s=None)
    assert result.valid is True
    assert result.steps > 10 * INITIAL_STEP_BUDGET


def test_interleaving_stops_at_the_first_illegal_key_whatever_the_order() -> None:
    # Several illegal keys: the check ends at the first proven (the cheapest, in rounds), and
    # leaves the rest undecided rather than searching them.
    stale = W(0, 1) + W(1, 2) + R(2, 1)
    history = [dict(e, key=k) for k in ("a", "b", "c") for e in stale]
    result = check_linearizable(history, model="kv")
    assert result.valid is False and result.key == "a"
    assert [p.valid for p in result.partitions] == [False, "unknown", "unknown"]


def test_memo_limit_gives_unknown_never_a_wrong_verdict() -> None:
    # Linearizable, but deciding it needs more memo entries than allowed: "unknown".
    history = hard_but_linearizable(10, key=1)
    result = check_linearizable(history, model="kv", time_limit_s=None, memo_limit=100)
    assert result.valid == "unknown" and not result
    assert result.reason == "memo limit (100 entries) hit (key 1)"
    assert result.memo_peak <= 100
    assert result.partitions[0].cache_size == 100  # it stopped at the limit, not past it
    assert result.summary().startswith("unknown: memo limit (100 entries) hit")
    # Illegal, and deciding it needs more entries than allowed: "unknown" too, not False.
    explosive = explosive_history(10)
    capped = check_linearizable(explosive, time_limit_s=None, memo_limit=100)
    assert capped.valid == "unknown" and capped.memo_peak <= 100
    assert check_linearizable(explosive, time_limit_s=None).valid is False
    # With room enough, the verdict is the one the unlimited search gives.
    roomy = check_linearizable(history, model="kv", time_limit_s=None, memo_limit=100_000)
    assert roomy.valid is True and roomy.memo_peak <= 100_000


def test_memo_limit_over_all_keys_gives_up_the_largest_and_goes_on() -> None:
    # Key 1 fills the memo and is given up; key 2's violation is still found, and a proven
    # violation is a verdict whatever the other keys are.
    # Key 2 needs ~450 entries at most; key 1 holds ~250 after the first round and ~600 after
    # the second, in which key 2 is decided.
    illegal = [dict(event, key=2) for event in explosive_history(7)]
    result = check_linearizable(hard_but_linearizable(22, key=1) + illegal, model="kv",
                                memo_limit=600)
    assert result.valid is False and result.key == 2
    assert result.partitions[0].reason == "memo limit (600 entries) hit"
    assert result.memo_peak <= 600
    # Without a violation anywhere, the given-up key makes the answer unknown and says why.
    clean = hard_but_linearizable(22, key=1) + W(0, 1, key=2) + R(1, 1, key=2)
    result = check_linearizable(clean, model="kv", memo_limit=500)
    assert result.valid == "unknown"
    assert [p.valid for p in result.partitions] == ["unknown", True]
    assert result.partitions[0].reason == "memo limit (500 entries) hit"
    assert result.memo_peak <= 500


def test_memo_limit_resumes_a_key_that_was_not_the_largest() -> None:
    # Key "big" holds most of the memo when key "small" reaches the limit: "big" is given up,
    # "small" resumes where it stopped and is decided exactly as it is alone.
    big = hard_but_linearizable(22, key="big")
    small = hard_but_linearizable(9, key="small")
    alone = check_linearizable(small, model="kv", time_limit_s=None)
    assert alone.valid is True
    limit = alone.memo_peak + 2 * INITIAL_STEP_BUDGET
    result = check_linearizable(big + small, model="kv", memo_limit=limit)
    assert result.memo_peak <= limit
    verdicts = {p.key: (p.valid, p.reason) for p in result.partitions}
    assert verdicts["small"] == (True, "")
    assert verdicts["big"] == ("unknown", f"memo limit ({limit} entries) hit")
    assert result.partitions[1].steps == alone.steps


# -- brute-force oracle ----------------------------------------------------------------------------


def brute_force(history: list[dict[str, Any]], model_name: str) -> bool:
    """Every order of every subset of the info ops plus all completed ops, respecting real
    time (a before b whenever a returned before b was invoked)."""
    model = get_model(model_name)
    ops = [op for op in parse_history(history) if model.op_input(op) is not DROP]
    completed = [op for op in ops if op.ret is not None]
    optional = [op for op in ops if op.ret is None]
    for size in range(len(optional) + 1):
        for chosen in itertools.combinations(optional, size):
            for order in itertools.permutations(completed + list(chosen)):
                if legal_order(order, model):
                    return True
    return False


def legal_order(order: Sequence[Operation], model: Model) -> bool:
    for i, later in enumerate(order):
        for earlier in order[i + 1:]:
            if earlier.ret is not None and earlier.ret < later.call:
                return False  # `earlier` completed before `later` began but comes after it
    state = model.init()
    for op in order:
        legal, state = model.step(state, model.op_input(op), op.output)
        if not legal:
            return False
    return True


def random_small_history(rng: random.Random, model: str) -> list[dict[str, Any]]:
    """Up to 6 ops by 3 processes with random overlaps, values and outcomes (often invalid)."""
    history: list[dict[str, Any]] = []
    pending: dict[int, dict[str, Any]] = {}
    invoked = 0
    limit = rng.randint(1, 6)
    while invoked < limit or pending:
        p = rng.randrange(3)
        value: Any
        if p not in pending:
            if invoked == limit:
                continue
            if model == "set":
                f = rng.choice(["add", "read"])
                value = rng.randrange(3) if f == "add" else None
            else:
                f = rng.choice(["read", "write", "cas"])
                value = {"read": None, "write": rng.randrange(3),
                         "cas": [rng.choice([None, 0, 1, 2]), rng.randrange(3)]}[f]
            pending[p] = inv(p, f, value)
            history.append(pending[p])
            invoked += 1
            continue
        invoke = pending.pop(p)
        kind = rng.choices(["ok", "fail", "info"], [6, 1, 2])[0]
        value = invoke["value"]
        if invoke["f"] == "read" and kind == "ok":
            if model == "set":
                value = sorted(rng.sample(range(3), rng.randint(0, 2)))
            else:
                value = rng.choice([None, 0, 1, 2])
        history.append({"process": p, "type": kind, "f": invoke["f"], "value": value})
    return history


@pytest.mark.parametrize("model", ["register", "set"])
def test_search_agrees_with_brute_force(model: str) -> None:
    rng = random.Random(20240917)
    verdicts = {True: 0, False: 0}
    for _ in range(400):
        history = random_small_history(rng, model)
        expected = brute_force(history, model)
        result = check_linearizable(history, model=model, time_limit_s=None)
        assert result.valid is expected, (history, result.explanation)
        verdicts[expected] += 1
    # The corpus must exercise both answers, or the comparison proves little.
    assert verdicts[True] > 50 and verdicts[False] > 50, verdicts


# -- generated histories and mutations -------------------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_generated_register_histories_are_linearizable(seed: int) -> None:
    rng = random.Random(seed)
    history = generate_register_history(rng, keys=3, ops_per_key=120, clients=6, info_rate=0.1)
    assert any(e["type"] == "info" for e in history)
    assert any(e["type"] == "fail" for e in history)
    result = check_linearizable(history, model="kv")
    assert result.valid is True, result.explanation
    assert len(result.partitions) == 3


@pytest.mark.parametrize("seed", range(8))
def test_unwritten_read_mutation_is_caught(seed: int) -> None:
    rng = random.Random(seed)
    history = generate_register_history(rng, keys=2, ops_per_key=100, clients=5,
                                        info_rate=0.05, unique_values=seed % 2 == 0)
    mutated, index = mutate_unwritten_read(history, rng) or pytest.fail("no read to mutate")
    result = check_linearizable(mutated, model="kv")
    assert result.valid is False
    assert result.key == mutated[index]["key"]
    assert repr(NEVER_WRITTEN) in result.explanation or result.partitions


@pytest.mark.parametrize("seed", range(8))
def test_stale_read_mutation_is_caught(seed: int) -> None:
    rng = random.Random(seed)
    history = generate_register_history(rng, keys=2, ops_per_key=100, clients=5,
                                        info_rate=0.05, unique_values=True)
    assert check_linearizable(history, model="kv").valid is True
    mutated, index = mutate_stale_read(history, rng) or pytest.fail("no stale candidate")
    assert mutated[index]["value"] != history[index]["value"]
    result = check_linearizable(mutated, model="kv")
    assert result.valid is False
    assert result.key == mutated[index]["key"]


@pytest.mark.parametrize("seed", range(6))
def test_set_histories_and_lost_element(seed: int) -> None:
    rng = random.Random(seed)
    history = generate_set_history(rng, ops=120, clients=6, info_rate=0.1)
    assert check_linearizable(history, model="set").valid is True
    mutated, _ = mutate_lost_element(history, rng) or pytest.fail("no read to mutate")
    assert check_linearizable(mutated, model="set").valid is False


def test_generator_is_deterministic() -> None:
    one = generate_register_history(random.Random(7), keys=2, ops_per_key=50)
    two = generate_register_history(random.Random(7), keys=2, ops_per_key=50)
    assert one == two
    assert sum(e["type"] == "invoke" for e in one) == 100


# -- command line ----------------------------------------------------------------------------------


def write_jsonl(path: Path, history: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(event) + "\n" for event in history))
    return str(path)


def test_cli_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    history = generate_register_history(random.Random(1), keys=2, ops_per_key=50)
    assert main([write_jsonl(tmp_path / "h.jsonl", history)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("linearizable: 100 ops") or out.startswith("linearizable:")
    assert out.count("\n") == 1


def test_cli_invalid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_jsonl(tmp_path / "h.jsonl", W(0, 1, key="k") + W(1, 2, key="k")
                       + R(2, 1, key="k"))
    assert main([path]) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("NOT linearizable: key 'k'")
    assert "read -> 1" in out


def test_cli_unknown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_jsonl(tmp_path / "h.jsonl", explosive_history())
    assert main([path, "--time-limit", "0.05", "--model", "register"]) == 3
    assert capsys.readouterr().out.startswith("unknown")


def test_cli_memo_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_jsonl(tmp_path / "h.jsonl", explosive_history(10))
    assert main([path, "--memo-limit", "50", "--model", "register"]) == 3
    assert capsys.readouterr().out.startswith("unknown: memo limit (50 entries) hit")
    assert main([path, "--model", "register"]) == 1
    capsys.readouterr()


def test_cli_set_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_jsonl(tmp_path / "h.jsonl", add(0, 1) + read_set(1, []))
    assert main([path, "--model", "set"]) == 1
    capsys.readouterr()


@pytest.mark.parametrize("content, message", [
    ("{not json\n", "not JSON"),
    ("[1, 2]\n", "expected a JSON object"),
    (json.dumps(ok(0, "read", 1)) + "\n", "without a pending invoke"),
])
def test_cli_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str,
                       message: str) -> None:
    path = tmp_path / "h.jsonl"
    path.write_text(content)
    assert main([str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in captured.err
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err


def test_cli_missing_file_and_bad_args(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    assert main([str(tmp_path / "missing.jsonl")]) == 2
    assert "No such file" in capsys.readouterr().err
    assert main([]) == 2
    assert main(["x.jsonl", "--model", "nope"]) == 2
    capsys.readouterr()

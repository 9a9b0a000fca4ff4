"""Linearizability checker for Jepsen-style histories (Wing & Gong / Lowe search, as Porcupine).

    result = check_linearizable(history, model="kv", time_limit_s=10.0, memo_limit=MEMO_LIMIT)
    result.valid            True, False or "unknown" (a limit was hit first: result.reason)
    result.key              for False: the first key (partition) proven not linearizable
    result.explanation      for False: the longest linearizable prefix found for that key and
                            the operations that cannot be ordered after it

History: a list of dicts in Jepsen's shape, {"process", "type": invoke|ok|fail|info, "f", "key",
"value", "time"}. Each invoke is matched with the next completion of the same process. "ok" = it
happened (a read's value is in its ok), "fail" = it definitely did not happen (dropped), "info" =
unknown: it may have taken effect at any point after its invoke, up to forever, or never (its
return is at +infinity and the search may leave it out). An invoke never completed is an "info".
Jepsen's process never invokes again after an "info"; if it does, the new invoke simply starts a
new operation (a new logical process). Events are in real-time order: list order, stably sorted
by "time" when every event has one.

Algorithm (Lowe, "Testing for linearizability", 2017, after Wing & Gong 1993): the history of
one partition is a doubly linked list of call and return entries in real-time order. Walk it from
the head: at a call, try to linearize the op now (model.step legal and the pair (set of
linearized ops as a bitset, model state) not seen before); if so, "lift" its call and return out
of the list, push it and restart from the head; at a return of an op not yet linearized, the
current order is dead: pop the last linearized op, "unlift" it and try the next call after it.
Success when every completed op is linearized; failure when the stack is empty at a return.
The memo of (bitset, state) makes the search polynomial for bounded concurrency.
P-compositionality (Horn & Kroening, arXiv 1504.00204; locality, Herlihy & Wing 1990,
Theorem 1): the model partitions the history (one part per key for "kv" and "set"); the history
is linearizable iff every part is, so one illegal part decides the whole.

Scheduling (check_operations): the parts are searched interleaved, round robin, with a step
budget per part doubled every round, and the check ends at the first part proven illegal. A part
that is costly to decide therefore cannot starve a cheap illegal one, whatever the key order.
Memory is bounded by memo_limit, the memo entries held at once over all parts (a decided part
frees its memo); at the limit the part holding the most is given up as "unknown". The memo only
prunes revisits, so giving up never turns into a wrong verdict, and neither does the time limit.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.testing.models import (
    DROP,
    UNKNOWN,
    HistoryError,
    KVModel,
    Model,
    Operation,
    RegisterModel,
    SetModel,
    freeze,
    get_model,
)

__all__ = [
    "CheckResult",
    "HistoryError",
    "KVModel",
    "Model",
    "Operation",
    "PartitionResult",
    "RegisterModel",
    "SetModel",
    "UNKNOWN",
    "check_linearizable",
    "check_operations",
    "MEMO_LIMIT",
    "main",
    "parse_history",
]

UNKNOWN_VERDICT = "unknown"
COMPLETIONS = ("ok", "fail", "info")
# How many search steps run between two looks at the clock (a look costs ~50 ns; a step ~1 us).
DEADLINE_STRIDE = 1024
# Steps each undecided partition gets in the first round of the interleaved search; every
# round doubles it, so a key that needs s steps is decided before any other key has been
# given more than 2 * s + INITIAL_STEP_BUDGET (the total before its last round was below s).
INITIAL_STEP_BUDGET = 1024
# The most memo entries held at once over all partitions. An entry is a (bitset, state) key,
# its list of info-op sets and a dict slot: measured with tracemalloc, ~200 bytes for a 23-op
# register key, ~330 bytes for a 230-op key of Porcupine's c50 kv history (string states); more
# for larger model states. So 0.4-0.7 GB at this limit.
MEMO_LIMIT = 2_000_000


# -- history parsing -------------------------------------------------------------------------------


def _event_order(history: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Real-time order: list order, stably sorted by "time" when every event carries one."""
    times = [event.get("time") for event in history]
    if times and all(isinstance(t, int | float) and not isinstance(t, bool) for t in times):
        return sorted(history, key=lambda event: event["time"])
    return list(history)


def parse_history(history: Iterable[Mapping[str, Any]]) -> list[Operation]:
    """Match invokes with completions; drop "fail" ops and nemesis events.

    Raises HistoryError for a completion without a pending invoke, a second invoke while one is
    pending, a completion whose f differs from its invoke's, or an event that is not a dict with
    "process", "type" and "f".
    """
    events = list(history)
    for number, event in enumerate(events, 1):
        if not isinstance(event, Mapping):
            raise HistoryError(f"event {number} is not an object: {event!r}")
    ordered = _event_order(events)
    pending: dict[Any, tuple[int, Mapping[str, Any]]] = {}
    ops: list[Operation] = []
    for position, event in enumerate(ordered):
        process = event.get("process")
        if process == "nemesis":
            continue  # Jepsen's fault injector logs its own ops; they are not client ops
        kind = event.get("type")
        f = event.get("f")
        if process is None or kind is None or f is None:
            raise HistoryError(f"event needs process, type and f: {dict(event)!r}")
        if isinstance(process, list | dict):
            raise HistoryError(f"process must be a number or a name, got {process!r}")
        if kind == "invoke":
            if process in pending:
                raise HistoryError(
                    f"process {process!r} invoked {f!r} while its {pending[process][1]['f']!r} "
                    "is still pending (one op at a time per process)"
                )
            pending[process] = (position, event)
            continue
        if kind not in COMPLETIONS:
            raise HistoryError(f"unknown event type {kind!r} (want invoke/ok/fail/info)")
        if process not in pending:
            raise HistoryError(f"{kind} of {f!r} by process {process!r} without a pending invoke")
        call, invoke = pending.pop(process)
        if invoke["f"] != f:
            raise HistoryError(
                f"process {process!r} invoked {invoke['f']!r} but completed {f!r}"
            )
        if kind == "fail":
            continue  # definitely did not take effect
        value = freeze(invoke.get("value"))
        if kind == "ok":
            output = freeze(event.get("value"))
            ops.append(Operation(len(ops), process, f, freeze(invoke.get("key")), value, output,
                                 call, position, invoke.get("time"), event.get("time")))
        else:
            ops.append(Operation(len(ops), process, f, freeze(invoke.get("key")), value, UNKNOWN,
                                 call, None, invoke.get("time"), None))
    # Invoked but never completed: the outcome is unknown, exactly like "info".
    for call, invoke in pending.values():
        ops.append(Operation(len(ops), invoke["process"], invoke["f"], freeze(invoke.get("key")),
                             freeze(invoke.get("value")), UNKNOWN, call, None,
                             invoke.get("time"), None))
    return ops


# -- results ---------------------------------------------------------------------------------------


@dataclass
class PartitionResult:
    """The verdict for one partition (key) of the history.

    valid is "unknown" when the partition was not decided; `reason` then says why: the time
    limit, the memo limit, or that the search stopped at another key's violation first.
    """

    key: Hashable
    valid: bool | str
    ops: int
    steps: int = 0
    cache_size: int = 0  # memo entries held when the search ended
    reason: str = ""
    prefix: list[tuple[Operation, Any]] = field(default_factory=list)  # (op, state after it)
    prefix_start: Any = None  # the model state before the prefix (the initial state)
    blocked: list[tuple[Operation, bool]] = field(default_factory=list)  # (op, legal next?)
    explanation: str = ""


@dataclass
class CheckResult:
    """valid is True, False or "unknown". bool(result) is True only for valid is True.

    For False, `key` and `explanation` are the first partition proven illegal (the search
    stops there: other partitions may be left undecided). For "unknown", `reason` names the
    limit that was hit. `memo_peak` is the most memo entries held at once over all partitions
    (never more than `memo_limit`).
    """

    valid: bool | str
    model: str
    key: Hashable = None
    explanation: str = ""
    ops: int = 0
    elapsed_s: float = 0.0
    partitions: list[PartitionResult] = field(default_factory=list)
    reason: str = ""
    steps: int = 0
    rounds: int = 0
    memo_peak: int = 0
    memo_limit: int | None = None

    def __bool__(self) -> bool:
        return self.valid is True

    @property
    def illegal_keys(self) -> list[Hashable]:
        return [p.key for p in self.partitions if p.valid is False]

    @property
    def unknown_keys(self) -> list[Hashable]:
        return [p.key for p in self.partitions if p.valid == UNKNOWN_VERDICT]

    def summary(self) -> str:
        """The one-line verdict the CLI prints."""
        keys = len(self.partitions)
        where = f"{self.ops} ops, {keys} key{'s' if keys != 1 else ''}, model {self.model}"
        took = f"{self.elapsed_s:.3f} s"
        if self.valid is True:
            return f"linearizable: {where}, checked in {took}"
        if self.valid is False:
            if keys > 1:
                good = sum(p.valid is True for p in self.partitions)
                which = (f"key {self.key!r} (the first key proven illegal; {good} of {keys} "
                         "keys found linearizable before it)")
            else:
                which = "no valid order" if self.key is None else f"key {self.key!r}"
            return f"NOT linearizable: {which}; {where}, {took}"
        return (f"unknown: {self.reason}; {len(self.unknown_keys)} of {keys} keys undecided "
                f"(no violation found); {where}, {took}")


# -- the search ------------------------------------------------------------------------------------


class _Entry:
    """A call or return in a doubly linked list of one partition's history."""

    __slots__ = ("op", "pos", "is_call", "match", "prev", "next")

    def __init__(self, op: int, pos: int, is_call: bool) -> None:
        self.op = op
        self.pos = pos  # position in real-time order
        self.is_call = is_call
        self.match: _Entry | None = None  # call -> its return (None for "info"); return -> call
        self.prev: _Entry = self
        self.next: _Entry = self


_END = 1 << 62  # position of the tail sentinels: after every event


def _link(entries: list[_Entry]) -> _Entry:
    """A doubly linked list of entries (sorted by position) between two sentinels."""
    # The tail is a call without a return at the end: reaching it in the info list ends a
    # node's candidates; the main list always reaches a return before it.
    head, tail = _Entry(-1, -1, False), _Entry(-1, _END, True)
    last = head
    for entry in sorted(entries, key=lambda e: e.pos):
        last.next, entry.prev = entry, last
        last = entry
    last.next, tail.prev = tail, last
    tail.next = tail
    return head


def _build_lists(ops: Sequence[Operation]) -> tuple[_Entry, _Entry]:
    """Heads of (the calls and returns of completed ops, the calls of "info" ops)."""
    main: list[_Entry] = []
    info: list[_Entry] = []
    for local, op in enumerate(ops):
        call = _Entry(local, op.call, True)
        if op.ret is None:
            info.append(call)
            continue
        ret = _Entry(local, op.ret, False)
        call.match, ret.match = ret, call
        main += (call, ret)
    return _link(main), _link(info)


# What _Search.run stopped on.
_DECIDED, _BUDGET, _TIME, _MEMO = "decided", "budget", "time", "memo"


class _Search:
    """Lowe's search over one partition, resumable: run() advances it by a number of steps.

    Info ops (no return) live in a second list. At each node the candidates are the calls
    before the first unlinearized return R: completed ops first (walking the main list up to
    R), then info ops called before R. The memo is keyed by (completed ops linearized, state)
    and holds the sets of info ops linearized with them. A node (C, I, S) is pruned when
    (C, I', S) with I' a subset of I was entered before: info ops are optional and no return
    forces them, so every continuation of (C, I, S) is one of (C, I', S), which has been (or is
    being) explored. With no info ops this is exactly Lowe's (bitset, state) cache; with them
    it stops the search from trying every subset of the pending info ops, and trying completed
    ops first makes the small subsets come first so that the pruning bites. One more sound
    cut: an info op lifted right after another info op is skipped when it alone, from the
    state before the first, reaches the same state (that sibling spends fewer info ops).
    Both prunings are checked against a brute-force oracle in the tests.

    The memo only prunes: it never decides a verdict, so a search stopped when the memo is
    full has proven nothing either way ("unknown"), and one resumed later continues exactly
    where it stopped (the linked lists, the stack and the memo are its whole state).
    """

    def __init__(self, ops: Sequence[Operation], model: Model) -> None:
        self.ops = ops
        self.model = model
        self.inputs = [model.op_input(op) for op in ops]
        self.outputs = [op.output for op in ops]
        self.bits = [1 << local for local in range(len(ops))]
        self.head, self.info_head = _build_lists(ops)
        self.entry = self.head.next
        self.state = model.init()
        self.done = 0  # bitset of linearized completed ops
        self.optional = 0  # bitset of linearized info ops
        self.remaining = sum(op.ret is not None for op in ops)
        self.horizon = 0  # position of the first unlinearized return (while walking info ops)
        self.stack: list[tuple[_Entry, Any, int]] = []  # (lifted call, state before, horizon)
        self.cache: dict[tuple[int, Any], list[int]] = {}
        self.entries = 0  # info-op sets held by the cache: what the memo limit counts
        self.best: list[int] = []
        self.best_state = self.state
        self.steps = 0
        self.verdict: bool | None = None

    def release(self) -> None:
        """Drop the memo (the search cannot resume after this)."""
        self.cache = {}
        self.stack = []
        self.entries = 0

    def run(self, budget: int, deadline: float | None, memo_room: int) -> str:
        """At most `budget` more steps, stopping at the deadline or before the memo would hold
        more than `memo_room` entries. Returns _DECIDED (self.verdict is set), _BUDGET, _TIME
        or _MEMO; after any of the last three, run() may be called again."""
        step = self.model.step
        inputs, outputs, bits = self.inputs, self.outputs, self.bits
        head, info_head, stack, cache = self.head, self.info_head, self.stack, self.cache
        entry, state, done, optional = self.entry, self.state, self.done, self.optional
        remaining, horizon, entries, steps = self.remaining, self.horizon, self.entries, self.steps
        best = self.best
        stop = steps + budget
        checkpoint = steps  # the next step at which the budget and the clock are looked at
        outcome = _DECIDED
        while remaining:
            if steps >= checkpoint:
                if steps >= stop:
                    outcome = _BUDGET
                    break
                if deadline is not None and time.monotonic() > deadline:
                    outcome = _TIME
                    break
                checkpoint = min(stop, steps + DEADLINE_STRIDE)
            steps += 1
            ret = entry.match
            if not entry.is_call:
                # The first unlinearized return: completed candidates are exhausted; now the
                # info ops called before it.
                horizon = entry.pos
                entry = info_head.next
            elif ret is None and entry.pos >= horizon:
                # Past the info candidates (or the info tail): this node is exhausted.
                # Backtrack.
                if not stack:
                    self.verdict = False
                    break
                if len(stack) > len(best):
                    # The deepest stack so far is about to shrink: keep it as the longest
                    # linearizable prefix (copied here, at its first pop, not at every push).
                    best = [e.op for e, _, _ in stack]
                    self.best_state = state
                entry, state, horizon = stack.pop()
                ret = entry.match
                if ret is not None:
                    done ^= bits[entry.op]
                    ret.prev.next = ret  # unlift, in reverse order of the lift
                    ret.next.prev = ret
                    remaining += 1
                else:
                    optional ^= bits[entry.op]
                entry.prev.next = entry
                entry.next.prev = entry
                entry = entry.next
            else:
                local = entry.op
                legal, new_state = step(state, inputs[local], outputs[local])
                if legal and ret is None and stack and stack[-1][0].match is None:
                    # Info op y right after info op x: if y alone, from the state before x,
                    # gives the same state, this node is dominated by that sibling (same
                    # completed ops, fewer info ops spent, y is a candidate there too): skip it.
                    legal_alone, alone = step(stack[-1][1], inputs[local], outputs[local])
                    if legal_alone and alone == new_state:
                        legal = False
                if legal:
                    if ret is not None:
                        new_done, new_optional = done | bits[local], optional
                    else:
                        new_done, new_optional = done, optional | bits[local]
                    memo = (new_done, new_state)
                    seen = cache.get(memo)
                    fresh = True
                    if seen is not None:
                        for mask in seen:
                            if mask & new_optional == mask:
                                fresh = False
                                break
                    if fresh:
                        if entries >= memo_room:
                            # Stop before this entry is stored; a resumed run retries it.
                            steps -= 1
                            outcome = _MEMO
                            break
                        entries += 1
                        if seen is None:
                            cache[memo] = [new_optional]
                        else:
                            seen.append(new_optional)
                        stack.append((entry, state, horizon))
                        state, done, optional = new_state, new_done, new_optional
                        # lift: unlink the call and its return (Lowe §3)
                        entry.prev.next = entry.next
                        entry.next.prev = entry.prev
                        if ret is not None:
                            ret.prev.next = ret.next
                            ret.next.prev = ret.prev
                            remaining -= 1
                        entry = head.next
                        horizon = 0
                        continue
                entry = entry.next
        else:
            self.verdict = True
        self.entry, self.state, self.done, self.optional = entry, state, done, optional
        self.remaining, self.horizon, self.entries, self.steps = remaining, horizon, entries, steps
        self.best = best
        return outcome


def _blocked(ops: Sequence[Operation], model: Model, inputs: Sequence[Any],
             prefix: Sequence[int], state: Any) -> list[tuple[int, bool]]:
    """Ops that could come next after the prefix (called before the earliest unlinearized
    return), each with whether the model allows it in `state`."""
    done = set(prefix)
    rest = [local for local in range(len(ops)) if local not in done]
    returns = [ops[local].ret for local in rest if ops[local].ret is not None]
    horizon = min(r for r in returns if r is not None) if returns else float("inf")
    candidates = sorted((local for local in rest if ops[local].call < horizon),
                        key=lambda local: ops[local].call)
    return [(local, model.step(state, inputs[local], ops[local].output)[0])
            for local in candidates]


def _fmt_time(op: Operation) -> str:
    if op.call_time is None:
        return f"events {op.call}..{'inf' if op.ret is None else op.ret}"
    ret = "inf" if op.ret is None else (op.ret_time if op.ret_time is not None else "?")
    return f"t={op.call_time}..{ret}"


EXPLAIN_PREFIX_OPS = 10  # the explanation shows the end of the prefix; .prefix has all of it


def _explain(part: PartitionResult, model: Model) -> str:
    shown = part.prefix[-EXPLAIN_PREFIX_OPS:]
    label = "the history" if part.key is None else f"key {part.key!r}"
    lines = [f"{label}: {part.ops} ops; the longest linearizable prefix found has "
             f"{len(part.prefix)} ops, from state {model.describe_state(part.prefix_start)}"]
    if len(shown) < len(part.prefix):
        lines.append(f"  ... {len(part.prefix) - len(shown)} earlier ops")
    for op, after in shown:
        lines.append(f"  p{op.process} {model.describe_op(op)}  [{_fmt_time(op)}]"
                     f"  => {model.describe_state(after)}")
    state = part.prefix[-1][1] if part.prefix else part.prefix_start
    lines.append(f"after it (state {model.describe_state(state)}) no pending op can come next:")
    for op, legal in part.blocked:
        why = ("legal here, but every order continuing from it fails" if legal
               else "not legal in this state")
        must = "" if op.ret is None else " (must take effect before it returns)"
        lines.append(f"  p{op.process} {model.describe_op(op)}  [{_fmt_time(op)}]: {why}{must}")
    return "\n".join(lines)


def _illegal(part: PartitionResult, search: _Search, model: Model) -> None:
    """Fill in the evidence of a violation: the longest linearizable prefix the search found
    and the ops that could come next after it, none of which leads anywhere."""
    ops, inputs = search.ops, search.inputs
    state = part.prefix_start = model.init()
    for local in search.best:
        _, state = model.step(state, inputs[local], ops[local].output)
        part.prefix.append((ops[local], state))
    # An info op that is not legal here is simply left out: it explains nothing.
    part.blocked = [(ops[local], legal)
                    for local, legal in _blocked(ops, model, inputs, search.best,
                                                 search.best_state)
                    if legal or ops[local].ret is not None]
    part.explanation = _explain(part, model)


def _reasons(partitions: Sequence[PartitionResult]) -> str:
    """Why the undecided partitions are undecided, grouped: "memo limit ... (keys '0', '5')"."""
    keys: dict[str, list[Hashable]] = {}
    for part in partitions:
        if part.valid == UNKNOWN_VERDICT:
            keys.setdefault(part.reason, []).append(part.key)
    shown = []
    for reason, which in keys.items():
        if which != [None]:
            names = ", ".join(map(repr, which[:3])) + ("..." if len(which) > 3 else "")
            reason += f" (key{'s' if len(which) > 1 else ''} {names})"
        shown.append(reason)
    return "; ".join(shown)


def check_operations(ops: Sequence[Operation], model: Any = "register",
                     time_limit_s: float | None = 10.0,
                     memo_limit: int | None = MEMO_LIMIT) -> CheckResult:
    """Check already parsed operations (see parse_history) against a model.

    The partitions are searched interleaved, round robin, each given INITIAL_STEP_BUDGET
    steps in the first round and twice its last budget in every next one, so a key that is
    hard to decide delays the others by at most a constant factor instead of starving them;
    the first key proven illegal ends the whole check (one illegal part is enough:
    P-compositionality). A decided key frees its memo. When the memos of the keys still
    searched would hold more than `memo_limit` entries in all, the key holding the most is
    given up ("unknown", reason "memo limit") and its memo freed; the others go on, and can
    still prove a violation. At the time limit every key not decided is "unknown".
    """
    start = time.monotonic()
    deadline = None if time_limit_s is None else start + time_limit_s
    room_total = sys.maxsize if memo_limit is None else memo_limit
    chosen = get_model(model)
    parts = chosen.partition(ops)
    result = CheckResult(True, chosen.name, ops=len(ops), memo_limit=memo_limit)
    live: dict[Hashable, tuple[PartitionResult, _Search]] = {}
    for key in sorted(parts, key=repr):
        kept = [op for op in parts[key] if chosen.op_input(op) is not DROP]
        part = PartitionResult(key, UNKNOWN_VERDICT, len(kept))
        result.partitions.append(part)
        live[key] = (part, _Search(kept, chosen))

    def give_up(key: Hashable, reason: str) -> None:
        part, search = live.pop(key)
        part.reason, part.steps, part.cache_size = reason, search.steps, search.entries
        search.release()

    held = 0  # memo entries over every key in `live`
    budget = INITIAL_STEP_BUDGET
    while live and result.valid is not False:
        result.rounds += 1
        for key in list(live):
            if key not in live:
                continue  # given up for the memo limit earlier in this round
            part, search = live[key]
            before = search.entries
            outcome = search.run(budget, deadline, room_total - (held - before))
            held += search.entries - before
            result.memo_peak = max(result.memo_peak, held)
            if outcome == _DECIDED:
                held -= search.entries
                part.valid, part.steps, part.cache_size = \
                    search.verdict is True, search.steps, search.entries
                del live[key]
                if part.valid is False:
                    _illegal(part, search, chosen)
                    result.valid, result.key, result.explanation = \
                        False, key, part.explanation
                    search.release()
                    break
                search.release()
            elif outcome == _TIME:
                for other in list(live):
                    give_up(other, f"time limit ({time_limit_s:g} s) hit")
                break
            elif outcome == _MEMO:
                # Give up the key holding the most entries (this one on a tie): it frees the
                # most, and the memo limit stays a bound on the whole check.
                victim = max(live, key=lambda k: (live[k][1].entries, k == key))
                held -= live[victim][1].entries
                give_up(victim, f"memo limit ({memo_limit} entries) hit")
        budget *= 2
    if result.valid is False:
        for key in list(live):
            give_up(key, "not decided: the search stopped at the first illegal key")
    elif any(part.valid == UNKNOWN_VERDICT for part in result.partitions):
        result.valid = UNKNOWN_VERDICT
        result.reason = _reasons(result.partitions)
    result.steps = sum(part.steps for part in result.partitions)
    result.elapsed_s = time.monotonic() - start
    return result


def check_linearizable(history: Iterable[Mapping[str, Any]], model: Any = "register",
                       time_limit_s: float | None = 10.0,
                       memo_limit: int | None = MEMO_LIMIT) -> CheckResult:
    """Is the Jepsen-style history linearizable with respect to the model?

    model: "register" (one register, initial None), "kv" (a value per key: read/get,
    write/put, cas, append), "set" (a grow-only set per key), a Model instance, or any object
    with init() and step().
    time_limit_s: total budget over all partitions (None: no limit); when it runs out before a
    violation is found the verdict is "unknown".
    memo_limit: the most memo entries held at once over all partitions (None: no limit);
    beyond it a partition is given up and the verdict, unless another partition is proven
    illegal, is "unknown". Never a wrong verdict: the memo only prunes the search.
    """
    return check_operations(parse_history(history), model, time_limit_s, memo_limit)


# -- command line ----------------------------------------------------------------------------------


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """One JSON object per line; blank lines are skipped."""
    history: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as stream:
        for number, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError as exc:
                raise HistoryError(f"{path}:{number}: not JSON: {exc.msg}") from None
            if not isinstance(event, dict):
                raise HistoryError(f"{path}:{number}: expected a JSON object per line")
            history.append(event)
    return history


def main(argv: list[str] | None = None) -> int:
    """`python -m engine check HISTORY.jsonl`: exit 0 valid, 1 invalid, 3 unknown, 2 bad input."""
    parser = argparse.ArgumentParser(
        prog="python -m engine check",
        description="Check a Jepsen-style JSONL history for linearizability.",
        epilog="Transactional histories: --model list-append or --model rw-register checks "
               "serializability instead (engine.testing.serializability; "
               "`python -m engine check --model list-append --help`).",
    )
    parser.add_argument("history", help="JSON lines: {process, type, f, key, value, time}")
    parser.add_argument("--model", default="kv", choices=sorted(["register", "kv", "set"]),
                        help="kv (default; a register per key, keyless = one register), "
                             "register, set")
    parser.add_argument("--time-limit", type=float, default=10.0, metavar="SECONDS",
                        help="search budget over all keys (default 10); then 'unknown'")
    parser.add_argument("--memo-limit", type=int, default=MEMO_LIMIT, metavar="ENTRIES",
                        help="most memo entries held at once over all keys (default "
                             f"{MEMO_LIMIT}, 200-350 bytes each); beyond it a key is 'unknown'")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed a one-line usage error
        return 0 if exc.code == 0 else 2
    try:
        result = check_linearizable(read_jsonl(args.history), args.model, args.time_limit,
                                    args.memo_limit)
    except (HistoryError, OSError, UnicodeDecodeError) as exc:
        message = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        print(f"error: {args.history}: {message}", file=sys.stderr)
        return 2
    print(result.summary())
    if result.valid is False:
        print(result.explanation)
        return 1
    return 0 if result.valid is True else 3

"""Serializability checker for transactional histories, after Elle (Kingsbury & Alvaro, VLDB 2020).

    result = check_serializable(history, model="list-append", realtime=True)
    result.valid        True, False or "unknown" (a named limit was hit before a verdict)
    result.anomalies    each with its class (G0, G1a, ...), the transactions, and for a cycle
                        the edges that close it; result.explain() prints them

Models. "list-append": micro-ops ("append", key, value) and ("r", key, [values...]); every value
appended to a key is unique, so a read names the exact writers of everything it shows.
"rw-register": ("w", key, value) and ("r", key, value); written values are unique per key, a
read of None is the initial (never written) state.

History (JSON lines, one object per line; docs/checkers.md): either one record per transaction,
{"process", "type": "ok"|"fail"|"info", "value": [micro-ops], "invoke": t0, "complete": t1}, or
Jepsen's event pairs, {"process", "type": "invoke", "f": "txn", "value": [...], "time"?} followed
by the same process's completion. "ok" committed (its reads carry values), "fail" definitely did
not commit, "info" unknown: it may have committed at any instant after its invoke, or never.

Method (Adya's dependency graph, with Elle's inference of the version order):
1. Direct anomalies, no search needed: a read of a value nobody wrote (garbage-read), of a failed
   transaction's write (G1a), of a transaction's non-final write to a key (G1b), a list showing one
   element twice (duplicate-elements), two list reads of a key where neither is a prefix of the
   other (incompatible-order), a transaction that does not see its own writes (internal), and two
   committed transactions that read the same version of a key and both wrote it (lost-update).
2. The version order of each key, inferred only where sound. List-append: the longest read of the
   key (every other read must be a prefix of it). rw-register: the initial state precedes every
   write; a transaction that read version u of a key and then wrote v installed v after u (in a
   serial execution it read the latest version); a transaction's own writes to a key are in order.
3. Edges between committed transactions (ok, and info ones whose writes some read observed; an
   unobserved info transaction may never have committed and adds no edge): ww (T2 installed the
   version after T1's), wr (T2 read T1's version), rw (T1 read the version that T2's write
   follows), and optionally real-time order (T1 completed before T2 was invoked: strict
   serializability) and per-process order. Real-time edges are a transitive reduction (each
   transaction links only from the transactions completed before its invoke that no later
   completed one follows), so their number is bounded by the concurrency, not quadratic.
4. A cycle is an anomaly. Strongly connected components (Tarjan, iterative) find where cycles
   are; in each, a search for the most specific cycle: G0 (ww only), G1c (ww and wr, at least one
   wr), G-single (exactly one rw), G2 (two or more rw). A cycle that needs a real-time or process
   edge gets the suffix -realtime or -process (Elle's naming).

Bounds: max_transactions (history size) and max_search_steps (edges visited by the cycle search).
Beyond either, and with no anomaly already proven, the verdict is "unknown" with the reason:
never a silent pass.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from engine.testing.models import HistoryError

__all__ = [
    "Anomaly", "DEFAULT_MAX_SEARCH_STEPS", "DEFAULT_MAX_TRANSACTIONS", "HistoryError", "MODELS",
    "Result", "Step", "Txn", "UNKNOWN", "check_serializable", "main", "parse_transactions",
]

MODELS = ("list-append", "rw-register")
UNKNOWN = "unknown"
# History size checked at all: the graph build is linear in it, but a history this large is
# better split (by time window) than checked at once.
DEFAULT_MAX_TRANSACTIONS = 1_000_000
# Edges the cycle search may visit, over all components: a clean history needs none, a cyclic
# one needs a few passes over its components per anomaly class.
DEFAULT_MAX_SEARCH_STEPS = 2_000_000

STATUSES = ("ok", "fail", "info")
DATA_KINDS = ("ww", "wr", "rw")
# When a pair of transactions is linked by several kinds of edge, a cycle is explained by the
# first of them in this order: the one that makes the cycle's class the most severe.
LABEL_PREFERENCE = ("ww", "wr", "process", "realtime", "rw")
Key = Hashable
Op = tuple[str, Key, Any]


# -- transactions ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Txn:
    """One transaction. complete is +inf for "info", None when the history gave no time."""

    index: int
    process: Hashable
    status: str
    ops: tuple[Op, ...]
    invoke: float | None = None
    complete: float | None = None

    def describe(self) -> str:
        ops = " ".join(f"[{f} {key!r} {_show(value)}]" for f, key, value in self.ops)
        when = ""
        if self.invoke is not None:
            end = "never" if self.complete == math.inf else _show_time(self.complete)
            when = f", {_show_time(self.invoke)}..{end}"
        return f"T{self.index} (process {self.process!r}, {self.status}{when}): {ops}"


def _show_time(value: float | None) -> str:
    if value is None:
        return "?"
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _show(value: Any, limit: int = 8) -> str:
    if isinstance(value, tuple):
        items = list(value)
        if len(items) <= limit:
            return repr(items)
        head = ", ".join(repr(v) for v in items[:3])
        tail = ", ".join(repr(v) for v in items[-3:])
        return f"[{head}, ..., {tail}] ({len(items)} elements)"
    return "nil" if value is None else repr(value)


def _hashable(value: Any, what: str) -> Hashable:
    if isinstance(value, list | dict | set):
        raise HistoryError(f"{what} must be a string or a number, got {value!r}")
    return value  # type: ignore[no-any-return]


def _micro_ops(value: Any, model: str, status: str, where: str) -> tuple[Op, ...]:
    if not isinstance(value, list | tuple):
        raise HistoryError(f"{where}: value must be a list of micro-ops, got {value!r}")
    write = "append" if model == "list-append" else "w"
    ops: list[Op] = []
    for op in value:
        if not isinstance(op, list | tuple) or len(op) != 3:
            raise HistoryError(f"{where}: a micro-op is [f, key, value], got {op!r}")
        f, key, arg = op
        key = _hashable(key, f"{where}: a key")
        if f == write:
            if arg is None:
                raise HistoryError(f"{where}: {f} of None to {key!r} (None is the unwritten "
                                   "state)")
            ops.append((f, key, _hashable(arg, f"{where}: a written value")))
        elif f == "r":
            if status != "ok":
                ops.append(("r", key, None))   # a read that did not complete shows nothing
            elif model == "list-append":
                if arg is None:
                    arg = []   # a key never written reads as nil in some stores
                if not isinstance(arg, list | tuple):
                    raise HistoryError(f"{where}: a list-append read returns a list, got {arg!r}")
                read = tuple(arg)
                try:
                    hash(read)   # one C-level pass: any unhashable element raises
                except TypeError:
                    raise HistoryError(f"{where}: list elements must be strings or numbers, "
                                       f"got {arg!r}") from None
                ops.append(("r", key, read))
            else:
                ops.append(("r", key, _hashable(arg, f"{where}: a read value")))
        else:
            raise HistoryError(f"{where}: unknown micro-op {f!r} for model {model} "
                               f"(want {write!r} or 'r')")
    return tuple(ops)


def _time(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise HistoryError(f"{where}: a time must be a number, got {value!r}")
    return float(value)


def _from_records(records: Sequence[Mapping[str, Any]], model: str) -> list[Txn]:
    txns = []
    for index, record in enumerate(records):
        where = f"transaction {index}"
        status = record.get("type")
        if status not in STATUSES:
            raise HistoryError(f"{where}: type must be ok, fail or info, got {status!r}")
        process = _hashable(record.get("process"), f"{where}: process")
        invoke = _time(record.get("invoke"), where)
        complete = _time(record.get("complete"), where)
        if status == "info":
            complete = math.inf   # it may take effect at any instant after its invoke
        elif invoke is not None and complete is not None and complete < invoke:
            raise HistoryError(f"{where}: completes at {complete:g} before its invoke "
                               f"at {invoke:g}")
        ops = _micro_ops(record.get("value"), model, status, where)
        txns.append(Txn(index, process, status, ops, invoke, complete))
    return txns


def _from_events(events: Sequence[Mapping[str, Any]], model: str) -> list[Txn]:
    """Jepsen's event pairs: an invoke, then the same process's ok / fail / info."""
    raw = [event.get("time") for event in events]
    timed = all(isinstance(t, int | float) and not isinstance(t, bool) for t in raw)
    times = [float(t) if timed else float(i) for i, t in enumerate(raw)]  # type: ignore[arg-type]
    order = sorted(range(len(events)), key=lambda i: times[i])
    pending: dict[Hashable, tuple[int, float, Mapping[str, Any]]] = {}
    found: list[tuple[int, Txn]] = []   # (invoke position, transaction)
    for position in order:
        event = events[position]
        process = event.get("process")
        if process == "nemesis":
            continue   # the fault injector's own log lines are not transactions
        process = _hashable(process, f"event {position}: process")
        kind, f = event.get("type"), event.get("f", "txn")
        where = f"event {position}"
        if f != "txn":
            raise HistoryError(f"{where}: f must be 'txn', got {f!r}")
        at = times[position]
        if kind == "invoke":
            if process in pending:
                raise HistoryError(f"{where}: process {process!r} invoked a transaction while "
                                   "another is pending (one at a time per process)")
            pending[process] = (position, at, event)
            continue
        if kind not in STATUSES:
            raise HistoryError(f"{where}: type must be invoke, ok, fail or info, got {kind!r}")
        if process not in pending:
            raise HistoryError(f"{where}: {kind} of process {process!r} without an invoke")
        start, invoked_at, invoke = pending.pop(process)
        source = event if kind == "ok" else invoke   # only an ok completion carries reads
        ops = _micro_ops(source.get("value"), model, kind, where)
        complete = math.inf if kind == "info" else at
        found.append((start, Txn(0, process, kind, ops, invoked_at, complete)))
    for process, (start, invoked_at, invoke) in pending.items():   # never completed: info
        ops = _micro_ops(invoke.get("value"), model, "info", f"event {start}")
        found.append((start, Txn(0, process, "info", ops, invoked_at, math.inf)))
    found.sort(key=lambda pair: pair[0])
    return [Txn(i, t.process, t.status, t.ops, t.invoke, t.complete)
            for i, (_, t) in enumerate(found)]


def parse_transactions(history: Iterable[Any], model: str = "list-append") -> list[Txn]:
    """Transactions (numbered T0, T1, ... in invoke order) from records or Jepsen events.

    Raises HistoryError for a malformed history: unknown micro-op or status, a list-append read
    that is not a list, a completion without an invoke, times out of order.
    """
    items = list(history)
    if all(isinstance(item, Txn) for item in items):
        return items
    for number, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise HistoryError(f"entry {number} is not an object: {item!r}")
    if any(item.get("type") == "invoke" for item in items):
        return _from_events(items, model)
    return _from_records(items, model)


# -- results -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    """One edge of a cycle: source must precede target. For ww/wr/rw, key and the two values
    (before, after); for realtime, the completion and invoke times; for process, the process."""

    source: int
    target: int
    kind: str
    key: Key = None
    before: Any = None
    after: Any = None

    def describe(self, model: str) -> str:
        a, b, key = f"T{self.source}", f"T{self.target}", self.key
        appends = model == "list-append"
        if self.kind == "ww":
            what = "append" if appends else "write"
            return (f"{a} < {b} (ww): on {key!r}, {b}'s {what} of {_show(self.after)} "
                    f"follows {a}'s {_show(self.before)}")
        if self.kind == "wr":
            what = "append" if appends else "write"
            return f"{a} < {b} (wr): {b} read {a}'s {what} of {_show(self.before)} to {key!r}"
        if self.kind == "rw":
            if appends:
                upto = "empty" if self.before is None else f"up to {_show(self.before)}"
                return (f"{a} < {b} (rw): {a} read {key!r} {upto}, missing {b}'s append of "
                        f"{_show(self.after)} that comes next")
            return (f"{a} < {b} (rw): {a} read {key!r} = {_show(self.before)}, a version "
                    f"{b}'s write of {_show(self.after)} follows")
        if self.kind == "realtime":
            return (f"{a} < {b} (realtime): {a} completed at {_show_time(self.before)}, before "
                    f"{b} was invoked at {_show_time(self.after)}")
        return f"{a} < {b} (process): both ran on process {self.before!r}, {a} first"


@dataclass(slots=True)
class Anomaly:
    """kind: G0, G1a, G1b, G1c, G-single, G2 (with -process / -realtime when the cycle needs
    such an edge), lost-update, incompatible-order, garbage-read, duplicate-elements, internal."""

    kind: str
    txns: tuple[int, ...]
    explanation: str
    cycle: tuple[Step, ...] = ()


@dataclass
class Result:
    """valid is True, False or "unknown". bool(result) is True only for valid is True."""

    valid: bool | str
    model: str
    realtime: bool = True
    anomalies: list[Anomaly] = field(default_factory=list)
    reason: str = ""
    stats: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def __bool__(self) -> bool:
        return self.valid is True

    @property
    def anomaly_types(self) -> list[str]:
        return sorted({anomaly.kind for anomaly in self.anomalies})

    def summary(self) -> str:
        """The one-line verdict the CLI prints."""
        claim = "strictly serializable" if self.realtime else "serializable"
        n, edges = self.stats.get("transactions", 0), self.stats.get("edges", 0)
        where = (f"{n} transaction{'s' if n != 1 else ''}, "
                 f"{edges} edge{'s' if edges != 1 else ''}, model {self.model}, "
                 f"checked in {self.elapsed_s:.3f} s")
        if self.valid is True:
            return f"{claim}: {where}"
        if self.valid is False:
            counts: dict[str, int] = {}
            for anomaly in self.anomalies:
                counts[anomaly.kind] = counts.get(anomaly.kind, 0) + 1
            found = ", ".join(f"{kind} x{n}" for kind, n in sorted(counts.items()))
            return f"NOT {claim}: {found}; {where}"
        return f"unknown: {self.reason}; {where}"

    def explain(self, per_kind: int = 5) -> str:
        """The summary and the proof of each anomaly (at most per_kind of each class)."""
        lines = [self.summary()]
        if self.reason and self.valid is not UNKNOWN:
            lines.append(f"note: {self.reason}")
        shown: dict[str, int] = {}
        for anomaly in self.anomalies:
            shown[anomaly.kind] = shown.get(anomaly.kind, 0) + 1
            if shown[anomaly.kind] <= per_kind:
                lines.append("")
                lines.append(anomaly.explanation)
        for kind, n in sorted(shown.items()):
            if n > per_kind:
                lines.append(f"... and {n - per_kind} more {kind}")
        return "\n".join(lines)


# -- analysis of one model: direct anomalies and the dependency graph ------------------------------


class _Exhausted(Exception):
    """The cycle search used up max_search_steps."""


class _Graph:
    """Edges between transaction indexes; per pair, at most one label per kind."""

    def __init__(self, n: int) -> None:
        self.out: list[dict[int, list[tuple[str, Key, Any, Any]]]] = [{} for _ in range(n)]

    def add(self, a: int, b: int, kind: str, key: Key = None, before: Any = None,
            after: Any = None) -> None:
        if a == b:
            return
        labels = self.out[a].get(b)
        if labels is None:
            self.out[a][b] = [(kind, key, before, after)]
        elif all(label[0] != kind for label in labels):
            labels.append((kind, key, before, after))

    def edge_count(self) -> int:
        return sum(len(labels) for targets in self.out for labels in targets.values())


class _Analysis:
    """What both models share: the committed set, anomaly reports, the graph."""

    model = ""

    def __init__(self, txns: list[Txn]) -> None:
        self.txns = txns
        self.anomalies: list[Anomaly] = []
        self.graph = _Graph(len(txns))
        self.observed: set[int] = set()   # info transactions whose writes a read showed
        # (key, value) -> (writer, is its final write to the key)
        self.writer: dict[tuple[Key, Any], tuple[int, bool]] = {}

    def committed(self, index: int) -> bool:
        status = self.txns[index].status
        return status == "ok" or (status == "info" and index in self.observed)

    def report(self, kind: str, txns: Iterable[int], text: str) -> None:
        involved = tuple(dict.fromkeys(txns))
        lines = [f"{kind}: {text}"]
        lines += [f"  {self.txns[i].describe()}" for i in involved]
        self.anomalies.append(Anomaly(kind, involved, "\n".join(lines)))

    def nodes(self) -> list[int]:
        return [t.index for t in self.txns if self.committed(t.index)]

    def index_writes(self, op: str, verb: str) -> None:
        """self.writer[(key, value)] = (writer, is its final write to the key); both models
        need written values unique per key, which is what makes a read name its writer."""
        writer = self.writer
        for txn in self.txns:
            last: dict[Key, Any] = {}
            for f, key, value in txn.ops:
                if f != op:
                    continue
                earlier = writer.get((key, value))
                if earlier is not None:
                    raise HistoryError(f"T{earlier[0]} and T{txn.index} both {verb} {value!r} "
                                       f"to {key!r}: values must be unique per key")
                writer[(key, value)] = (txn.index, False)
                last[key] = value
            for key, value in last.items():
                writer[(key, value)] = (txn.index, True)

    def lost_updates(self, groups: dict[tuple[Key, Any], list[int]]) -> None:
        for (key, version), readers in groups.items():
            if len(readers) > 1:
                names = ", ".join(f"T{i}" for i in readers)
                self.report("lost-update", readers,
                            f"{names} each read {key!r} = {_show(version)} and each wrote "
                            f"{key!r}: in a serial order all but the first would have read "
                            "another's write")


def _internal_error(what: str, key: Key, got: Any, expected: Any) -> str:
    return f"read {key!r} = {_show(got)} {what}, expected {_show(expected)}"


class _ListAppend(_Analysis):
    model = "list-append"

    def __init__(self, txns: list[Txn]) -> None:
        super().__init__(txns)
        # per key: every distinct list read by an ok transaction -> its first reader
        self.reads: dict[Key, dict[tuple[Any, ...], int]] = {}
        self.external: list[tuple[int, Key, tuple[Any, ...]]] = []
        self.lost: dict[tuple[Key, Any], list[int]] = {}
        self._writes()
        self._reads()
        self._orders()

    def _writes(self) -> None:
        self.index_writes("append", "append")

    def _reads(self) -> None:
        for txn in self.txns:
            if txn.status != "ok":
                continue
            state: dict[Key, tuple[Any, ...]] = {}   # what the next read must show, if known
            own: dict[Key, list[Any]] = {}
            touched: set[Key] = set()
            appended = {key for f, key, _ in txn.ops if f == "append"}
            for f, key, value in txn.ops:
                if f == "append":
                    own.setdefault(key, []).append(value)
                    if key in state:
                        state[key] = (*state[key], value)
                    touched.add(key)
                    continue
                if key in state and value != state[key]:
                    self.report("internal", [txn.index], f"T{txn.index} " + _internal_error(
                        "after its own earlier read and appends", key, value, state[key]))
                elif key not in state and key in own:
                    mine = tuple(own[key])
                    if value[len(value) - len(mine):] != mine or len(value) < len(mine):
                        self.report("internal", [txn.index],
                                    f"T{txn.index} read {key!r} = {_show(value)} after its own "
                                    f"appends, expected a list ending with {_show(mine)}")
                if key not in touched:
                    self.external.append((txn.index, key, value))
                    if key in appended:
                        self.lost.setdefault((key, value), []).append(txn.index)
                touched.add(key)
                state[key] = value
                self.reads.setdefault(key, {}).setdefault(value, txn.index)

    def _orders(self) -> None:
        """The version order of each key: its longest read; the direct anomalies on the way."""
        self.longest: dict[Key, tuple[Any, ...]] = {}
        self.incompatible: set[tuple[Key, tuple[Any, ...]]] = set()
        for key, reads in self.reads.items():
            longest = max(reads, key=len)
            self.longest[key] = longest
            by_length = sorted(reads, key=len)
            # The first reader of each position: the shortest read that reaches it.
            checked: list[tuple[Any, ...]] = [longest]
            for read in by_length:
                if longest[:len(read)] != read:
                    self.incompatible.add((key, read))
                    checked.append(read)
                    self.report("incompatible-order", [reads[longest], reads[read]],
                                f"on {key!r}, T{reads[read]} read {_show(read, 20)}, not a "
                                f"prefix of T{reads[longest]}'s {_show(longest, 20)} (the "
                                "longest read): no single order of appends explains both")
            compatible = [r for r in by_length if (key, r) not in self.incompatible]
            for read in checked:
                self._elements(key, read, compatible if read is longest else [read], reads)

    def _elements(self, key: Key, read: tuple[Any, ...], readers: list[tuple[Any, ...]],
                  first_reader: dict[tuple[Any, ...], int]) -> None:
        """Garbage, aborted and duplicate elements of one read (and the prefixes in readers)."""
        def reader_of(position: int) -> int:
            for candidate in readers:   # shortest first
                if len(candidate) > position:
                    return first_reader[candidate]
            return first_reader[read]

        seen: dict[Any, int] = {}
        for position, value in enumerate(read):
            if value in seen:
                reader = reader_of(position)
                writer = self.writer.get((key, value))
                by = f", appended once by T{writer[0]}" if writer else ""
                self.report("duplicate-elements", [reader] + ([writer[0]] if writer else []),
                            f"T{reader} read {key!r} = {_show(read[:position + 1], 20)}, with "
                            f"{value!r} at positions {seen[value]} and {position}{by}")
                continue
            seen[value] = position
            writer = self.writer.get((key, value))
            if writer is None:
                reader = reader_of(position)
                self.report("garbage-read", [reader], f"T{reader} read {value!r} in {key!r}, "
                            "which no transaction appended")
                continue
            status = self.txns[writer[0]].status
            if status == "fail":
                reader = reader_of(position)
                self.report("G1a", [reader, writer[0]],
                            f"T{reader} read {value!r} in {key!r}, appended by T{writer[0]}, "
                            "which failed (definitely not committed): an aborted read")
            elif status == "info":
                self.observed.add(writer[0])

    def build(self) -> None:
        """ww along each key's longest read; wr and rw from each external read."""
        for key, longest in self.longest.items():
            previous: tuple[int, Any] | None = None
            placed: set[Any] = set()
            for value in longest:
                writer = self.writer.get((key, value))
                if writer is None or not self.committed(writer[0]) or value in placed:
                    continue   # a repeated element (reported) keeps its first position
                placed.add(value)
                if previous is not None:
                    self.graph.add(previous[0], writer[0], "ww", key, previous[1], value)
                previous = (writer[0], value)
        for reader, key, read in self.external:
            if (key, read) in self.incompatible:
                continue   # reported; it has no place in the version order
            if read:
                writer = self.writer.get((key, read[-1]))
                if writer is not None and writer[0] != reader:
                    if not writer[1]:
                        self.report("G1b", [reader, writer[0]],
                                    f"T{reader} read {key!r} = {_show(read)}, ending at "
                                    f"{read[-1]!r}, which T{writer[0]} appended before its "
                                    f"final append to {key!r}: an intermediate read")
                    if self.committed(writer[0]):
                        self.graph.add(writer[0], reader, "wr", key, read[-1])
            longest = self.longest[key]
            for value in longest[len(read):]:
                writer = self.writer.get((key, value))
                if writer is None or writer[0] == reader:
                    break   # its own append comes next; what follows it is ordered by ww
                if self.committed(writer[0]):
                    self.graph.add(reader, writer[0], "rw", key, read[-1] if read else None,
                                   value)
                    break
        self.lost_updates(self.lost)


class _Register(_Analysis):
    model = "rw-register"

    def __init__(self, txns: list[Txn]) -> None:
        super().__init__(txns)
        self.external: list[tuple[int, Key, Any]] = []
        # per key: version -> versions known to come right after it (None: the initial state)
        self.successors: dict[Key, dict[Any, set[Any]]] = {}
        self.lost: dict[tuple[Key, Any], list[int]] = {}
        self.chains: list[tuple[Key, Any, list[Any], int]] = []   # (key, read or nil, writes, T)
        self._writes()
        self._reads()

    def _writes(self) -> None:
        self.index_writes("w", "write")

    def _reads(self) -> None:
        for txn in self.txns:
            first_read: dict[Key, Any] = {}
            writes: dict[Key, list[Any]] = {}
            state: dict[Key, Any] = {}
            for f, key, value in txn.ops:
                if f == "w":
                    writes.setdefault(key, []).append(value)
                    state[key] = value
                    continue
                if txn.status != "ok":
                    continue
                if key in state and value != state[key]:
                    self.report("internal", [txn.index], f"T{txn.index} " + _internal_error(
                        "after its own read or write", key, value, state[key]))
                if key not in state:
                    first_read[key] = value
                    self.external.append((txn.index, key, value))
                    self._check_read(txn.index, key, value)
                state[key] = value
            for key, written in writes.items():
                read = first_read.get(key, _NOT_READ)
                if read is not _NOT_READ and txn.status == "ok":
                    self.lost.setdefault((key, read), []).append(txn.index)
                self.chains.append((key, read, written, txn.index))

    def _check_read(self, reader: int, key: Key, value: Any) -> None:
        if value is None:
            return
        writer = self.writer.get((key, value))
        if writer is None:
            self.report("garbage-read", [reader],
                        f"T{reader} read {key!r} = {value!r}, which no transaction wrote")
            return
        status = self.txns[writer[0]].status
        if status == "fail":
            self.report("G1a", [reader, writer[0]],
                        f"T{reader} read {key!r} = {value!r}, written by T{writer[0]}, which "
                        "failed (definitely not committed): an aborted read")
        elif status == "info":
            self.observed.add(writer[0])
        if not writer[1] and writer[0] != reader:
            self.report("G1b", [reader, writer[0]],
                        f"T{reader} read {key!r} = {value!r}, which T{writer[0]} overwrote "
                        "with a later write of its own: an intermediate read")

    def build(self) -> None:
        """Version orders (initial < all; read-then-write; own writes in order), then edges."""
        versions: dict[Key, set[Any]] = {}
        for (key, value), (writer, _) in self.writer.items():
            if self.committed(writer):
                versions.setdefault(key, set()).add(value)
        has_predecessor: set[tuple[Key, Any]] = set()
        for key, read, written, txn in self.chains:
            if not self.committed(txn):
                continue
            chain = ([read] if read is not _NOT_READ and read is not None else []) + written
            live = versions.get(key, set())
            for before, after in zip(chain, chain[1:], strict=False):
                if before in live and after in live:
                    self.successors.setdefault(key, {}).setdefault(before, set()).add(after)
                    has_predecessor.add((key, after))
        for key, live in versions.items():
            roots = {v for v in live if (key, v) not in has_predecessor}
            if roots:
                self.successors.setdefault(key, {})[None] = roots
        for key, successors in self.successors.items():
            for before, afters in successors.items():
                if before is None:
                    continue
                for after in afters:
                    self.graph.add(self.writer[(key, before)][0], self.writer[(key, after)][0],
                                   "ww", key, before, after)
        for reader, key, value in self.external:
            source = self.writer.get((key, value)) if value is not None else None
            if source is not None and self.committed(source[0]):
                self.graph.add(source[0], reader, "wr", key, value)
            if value is not None and source is None:
                continue   # garbage: no place in the order
            for after in sorted(self.successors.get(key, {}).get(value, ()), key=repr):
                self.graph.add(reader, self.writer[(key, after)][0], "rw", key, value, after)
        self.lost_updates(self.lost)


_NOT_READ = object()


# -- order edges -------------------------------------------------------------------------------


def _add_realtime(graph: _Graph, txns: list[Txn], nodes: list[int]) -> None:
    """T1 -> T2 when T1 completed before T2 was invoked, as a transitive reduction: a completed
    transaction leaves the frontier once a later completed one follows it (equal times are
    concurrent: an invoke at the instant of a completion is processed first)."""
    events: list[tuple[float, int, int]] = []
    for i in nodes:
        txn = txns[i]
        if txn.invoke is None or txn.complete is None:
            continue   # no time given: no real-time order for it
        events.append((txn.invoke, 0, i))
        if txn.complete != math.inf:
            events.append((txn.complete, 1, i))
    events.sort()
    frontier: set[int] = set()
    before: dict[int, list[int]] = {}
    for at, kind, i in events:
        if kind == 0:
            before[i] = sorted(frontier)
            for p in before[i]:
                graph.add(p, i, "realtime", None, txns[p].complete, at)
        else:
            frontier.difference_update(before.get(i, ()))
            frontier.add(i)


def _add_process(graph: _Graph, txns: list[Txn], nodes: list[int]) -> None:
    last: dict[Hashable, int] = {}
    for i in sorted(nodes, key=lambda i: (txns[i].invoke is None, txns[i].invoke or 0, i)):
        process = txns[i].process
        if process in last:
            graph.add(last[process], i, "process", None, process)
        last[process] = i


# -- cycle search ------------------------------------------------------------------------------


_Node = TypeVar("_Node", int, str)


def strongly_connected_components(
    nodes: Iterable[_Node], successors: Callable[[_Node], Iterable[_Node]],
) -> list[list[_Node]]:
    """Strongly connected components of more than one node (Tarjan 1972), with an explicit
    stack: histories are far deeper than Python's recursion limit. Each component is sorted;
    tests/test_layering.py uses it for import cycles too."""
    index: dict[_Node, int] = {}
    low: dict[_Node, int] = {}
    stack: list[_Node] = []
    on_stack: set[_Node] = set()
    components: list[list[_Node]] = []
    for root in nodes:
        if root in index:
            continue
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        work: list[tuple[_Node, Iterator[_Node]]] = [(root, iter(successors(root)))]
        while work:
            node, pending = work[-1]
            descended = False
            for nxt in pending:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(successors(nxt))))
                    descended = True
                    break
                if nxt in on_stack and index[nxt] < low[node]:
                    low[node] = index[nxt]
            if descended:
                continue
            work.pop()
            if work and low[node] < low[work[-1][0]]:
                low[work[-1][0]] = low[node]
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


class _Search:
    """Finds, in one strongly connected component, a cycle of each anomaly class."""

    def __init__(self, graph: _Graph, budget: int) -> None:
        self.out = graph.out
        self.budget = budget
        self.steps = 0

    def _step(self) -> None:
        self.steps += 1
        if self.steps > self.budget:
            raise _Exhausted

    def _successors(self, members: set[int], allowed: frozenset[str]
                    ) -> Callable[[int], Iterator[int]]:
        def successors(node: int) -> Iterator[int]:
            for nxt, labels in self.out[node].items():
                self._step()
                if nxt in members and any(label[0] in allowed for label in labels):
                    yield nxt
        return successors

    def _path(self, source: int, target: int, members: set[int], allowed: frozenset[str]
              ) -> list[Step] | None:
        """Shortest path (breadth first) from source to target over allowed edges."""
        parent: dict[int, int] = {source: source}
        queue = deque([source])
        while queue:
            node = queue.popleft()
            for nxt, labels in self.out[node].items():
                self._step()
                if nxt in parent or nxt not in members or \
                        not any(label[0] in allowed for label in labels):
                    continue
                parent[nxt] = node
                if nxt == target:
                    path = []
                    while nxt != source:
                        path.append(self._label(parent[nxt], nxt, allowed))
                        nxt = parent[nxt]
                    return path[::-1]
                queue.append(nxt)
        return None

    def _label(self, a: int, b: int, allowed: Iterable[str]) -> Step:
        labels = {label[0]: label for label in self.out[a][b]}
        for kind in LABEL_PREFERENCE:
            if kind in allowed and kind in labels:
                _, key, before, after = labels[kind]
                return Step(a, b, kind, key, before, after)
        raise AssertionError("an edge without an allowed label")

    def _through(self, members: set[int], required: str, allowed: frozenset[str]
                 ) -> list[Step] | None:
        """A cycle using allowed edges that contains a `required` edge: one exists exactly when
        such an edge joins two nodes of one component of the allowed subgraph."""
        inner = allowed | {required}
        component_of: dict[int, int] = {}
        for number, component in enumerate(
                strongly_connected_components(sorted(members), self._successors(members, inner))):
            for node in component:
                component_of[node] = number
        for u in sorted(component_of):
            for v, labels in self.out[u].items():
                if component_of.get(v, -1) != component_of[u] or \
                        all(label[0] != required for label in labels):
                    continue
                rest = self._path(v, u, members, inner)
                if rest is not None:
                    return [self._label(u, v, (required,)), *rest]
        return None

    def _single(self, members: set[int], allowed: frozenset[str]) -> list[Step] | None:
        """A cycle with exactly one rw edge: an rw edge u -> v and a path v -> u without rw."""
        for u in sorted(members):
            for v, labels in self.out[u].items():
                if v not in members or all(label[0] != "rw" for label in labels):
                    continue
                rest = self._path(v, u, members, allowed)
                if rest is not None:
                    return [self._label(u, v, ("rw",)), *rest]
        return None

    def _search(self, target: str, members: set[int], extra: frozenset[str]
                ) -> list[Step] | None:
        if target == "G0":
            return self._through(members, "ww", extra)
        if target == "G1c":
            return self._through(members, "wr", extra | {"ww"})
        if target == "G-single":
            return self._single(members, extra | {"ww", "wr"})
        return self._through(members, "rw", extra | {"ww", "wr"})

    def _any_cycle(self, component: list[int], allowed: frozenset[str]) -> list[Step]:
        """Some cycle of the component: it is strongly connected, so every edge inside it
        closes one (one breadth-first search)."""
        members = set(component)
        u = component[0]
        v = next(v for v, labels in self.out[u].items()
                 if v in members and any(label[0] in allowed for label in labels))
        rest = self._path(v, u, members, allowed)
        assert rest is not None, "a strongly connected component without a cycle"
        return [self._label(u, v, allowed), *rest]

    def classify(self, component: list[int], levels: list[tuple[str, frozenset[str]]]
                 ) -> tuple[list[tuple[str, list[Step]]], bool]:
        """The cycles of one component: at most one per class, each at the first level (data
        edges alone, then with process order, then with real-time order) where it exists; and
        whether the search budget ran out first (then at least one cycle, if the budget allowed
        the first search, so the component is still proven cyclic)."""
        members = set(component)
        found: dict[str, list[Step]] = {}
        top = frozenset(DATA_KINDS) | levels[-1][1]
        try:
            fallback = self._any_cycle(component, top)
        except _Exhausted:
            return [], True
        exhausted = False
        try:
            for _, extra in levels:
                for target in ("G0", "G1c", "G-single", "G2"):
                    if target in found or (target == "G2" and "G-single" in found):
                        continue
                    cycle = self._search(target, members, extra)
                    if cycle is not None:
                        base = _base_class(cycle)
                        if base not in found:
                            found[base] = cycle
        except _Exhausted:
            exhausted = True
        if not found:
            found[_base_class(fallback)] = fallback
        return [(_class(cycle), cycle) for cycle in found.values()], exhausted


def _base_class(cycle: Sequence[Step]) -> str:
    kinds = [step.kind for step in cycle]
    rw = kinds.count("rw")
    if rw >= 2:
        return "G2"
    if rw == 1:
        return "G-single"
    return "G1c" if "wr" in kinds else "G0"


def _class(cycle: Sequence[Step]) -> str:
    kinds = {step.kind for step in cycle}
    suffix = "-realtime" if "realtime" in kinds else "-process" if "process" in kinds else ""
    return _base_class(cycle) + suffix


_MEANING = {
    "G0": "a write cycle (ww edges only)",
    "G1c": "circular information flow (ww and wr edges)",
    "G-single": "a cycle with exactly one anti-dependency (rw)",
    "G2": "a cycle with two or more anti-dependencies (rw)",
}


def _explain_cycle(kind: str, cycle: list[Step], txns: list[Txn], model: str) -> str:
    base = kind.split("-realtime")[0].split("-process")[0]
    order = " -> ".join(f"T{step.source}" for step in cycle) + f" -> T{cycle[0].source}"
    lines = [f"{kind}: {_MEANING[base]}: {order}"]
    lines += [f"  {txns[step.source].describe()}" for step in cycle]
    lines += [f"  {step.describe(model)}" for step in cycle]
    lines.append("  so each transaction precedes itself: no serial order explains this")
    return "\n".join(lines)


# -- entry point -------------------------------------------------------------------------------


def check_serializable(history: Iterable[Any], model: str = "list-append", *,
                       realtime: bool = True, process_order: bool = False,
                       max_transactions: int = DEFAULT_MAX_TRANSACTIONS,
                       max_search_steps: int = DEFAULT_MAX_SEARCH_STEPS) -> Result:
    """Is the transactional history serializable (strictly, with realtime=True)?

    history: transaction records or Jepsen event pairs (see the module docstring), or Txn objects.
    model: "list-append" or "rw-register". realtime: add real-time order (strict
    serializability). process_order: add each process's order (implied by realtime).
    Verdict "unknown" when the history has more than max_transactions transactions, or the cycle
    search visits more than max_search_steps edges before proving any anomaly.
    Raises HistoryError for a malformed history, ValueError for an unknown model.
    """
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}: want one of {', '.join(MODELS)}")
    started = time.perf_counter()
    txns = parse_transactions(history, model)
    result = Result(UNKNOWN, model, realtime, stats={"transactions": len(txns)})
    if len(txns) > max_transactions:
        result.reason = (f"{len(txns)} transactions exceed max_transactions="
                         f"{max_transactions}: not checked")
        result.elapsed_s = time.perf_counter() - started
        return result
    analysis: _ListAppend | _Register = (
        _ListAppend(txns) if model == "list-append" else _Register(txns))
    analysis.build()
    nodes = analysis.nodes()
    levels: list[tuple[str, frozenset[str]]] = [("", frozenset())]
    if process_order:
        _add_process(analysis.graph, txns, nodes)
        levels.append(("-process", frozenset({"process"})))
    if realtime:
        _add_realtime(analysis.graph, txns, nodes)
        levels.append(("-realtime", levels[-1][1] | {"realtime"}))
    out = analysis.graph.out
    components = strongly_connected_components(nodes, lambda node: out[node].keys())
    search = _Search(analysis.graph, max_search_steps)
    anomalies = analysis.anomalies
    unclassified = 0
    for number, component in enumerate(components):
        cycles, exhausted = search.classify(component, levels)
        for kind, cycle in cycles:
            involved = tuple(step.source for step in cycle)
            anomalies.append(Anomaly(kind, involved, _explain_cycle(kind, cycle, txns, model),
                                     tuple(cycle)))
        if exhausted:
            unclassified = len(components) - number
            break
    result.anomalies = anomalies
    result.stats.update(nodes=len(nodes), edges=analysis.graph.edge_count(),
                        components=len(components), search_steps=search.steps)
    if unclassified:
        result.reason = (f"the cycle search reached max_search_steps={max_search_steps} with "
                         f"{unclassified} of {len(components)} cyclic components not fully "
                         "searched")
    if anomalies:
        result.valid = False
    elif not unclassified:
        result.valid = True
    result.elapsed_s = time.perf_counter() - started
    return result


# -- command line ------------------------------------------------------------------------------


def _read_jsonl(path: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as stream:
        for number, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise HistoryError(f"line {number}: not JSON: {exc.msg}") from None
            if not isinstance(record, dict):
                raise HistoryError(f"line {number}: expected a JSON object per line")
            records.append(record)
    return records


def main(argv: list[str] | None = None) -> int:
    """`python -m engine check --model list-append HISTORY.jsonl`: exit 0 valid, 1 anomalies,
    3 unknown, 2 bad input (the codes of the linearizability check)."""
    parser = argparse.ArgumentParser(
        prog="python -m engine check",
        description="Check a transactional JSONL history for (strict) serializability, "
                    "Elle-style: dependency cycles G0, G1c, G-single, G2, and G1a, G1b, lost "
                    "updates, garbage reads, duplicate elements, incompatible orders.")
    parser.add_argument("history", help="JSON lines: {process, type, value: [micro-ops], "
                                        "invoke, complete} or Jepsen invoke/ok event pairs")
    parser.add_argument("--model", default="list-append", choices=MODELS)
    parser.add_argument("--no-realtime", dest="realtime", action="store_false",
                        help="serializability only: no real-time edges")
    parser.add_argument("--process-order", action="store_true",
                        help="add each process's order (implied by real time)")
    parser.add_argument("--max-transactions", type=int, default=DEFAULT_MAX_TRANSACTIONS)
    parser.add_argument("--max-search-steps", type=int, default=DEFAULT_MAX_SEARCH_STEPS)
    parser.add_argument("--per-kind", type=int, default=5, metavar="N",
                        help="explain at most N anomalies of each class (default 5)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:   # argparse already printed a one-line usage error
        return 0 if exc.code == 0 else 2
    try:
        result = check_serializable(
            _read_jsonl(args.history), args.model, realtime=args.realtime,
            process_order=args.process_order, max_transactions=args.max_transactions,
            max_search_steps=args.max_search_steps)
    except (HistoryError, OSError, UnicodeDecodeError) as exc:
        message = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        print(f"error: {args.history}: {message}", file=sys.stderr)
        return 2
    print(result.explain(args.per_kind))
    if result.valid is False:
        return 1
    return 0 if result.valid is True else 3

"""Histories for testing and benchmarking the linearizability checker.

`generate_register_history` simulates a linearizable register per key with concurrent clients:
every op is invoked, takes effect atomically at a random later instant (its linearization point)
and completes at a random instant after that, so real-time intervals overlap at random. Some ops
end "info": either they took effect and the client never heard (a timeout after commit), or they
never took effect (lost before the leader). A cas whose expected value is not current ends
"fail". After an "info" the process is retired and the client continues as a new process, as in
Jepsen (process + number of clients). The result is linearizable by construction.

`generate_set_history` does the same for a grow-only set (add unique elements, read all).

The mutations turn a good history into one that is certainly not linearizable:
  mutate_unwritten_read   a read returns a value no op ever wrote
  mutate_stale_read       a read returns a value overwritten before it began (needs unique values)
  mutate_lost_element     a set read misses an element whose add completed before it began
Each returns (new history, index of the changed event), or None when no event qualifies.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

History = list[dict[str, Any]]

NEVER_WRITTEN = "never-written"


@dataclass
class _Pending:
    process: int
    f: str
    value: Any
    applied: bool = False
    lost: bool = False
    output: Any = None
    succeeded: bool = True


def _simulate(rng: random.Random, key: Any, ops: int, clients: int, first_process: int,
              process_stride: int, invoke: Callable[[random.Random], tuple[str, Any]],
              apply: Callable[[str, Any], tuple[bool, Any]], info_rate: float,
              lost_rate: float, start_time: int = 0) -> History:
    """One key's history: `clients` concurrent clients issue `ops` ops in total."""
    history: History = []
    processes = [first_process + c for c in range(clients)]
    pending: dict[int, _Pending] = {}
    issued = 0
    now = start_time

    def record(kind: str, op: _Pending, value: Any, client: int) -> None:
        event = {"process": processes[client], "type": kind, "f": op.f, "value": value,
                 "time": now}
        if key is not None:
            event["key"] = key
        history.append(event)

    while issued < ops or pending:
        now += rng.randint(1, 2_000)
        actions: list[tuple[str, int]] = []
        if issued < ops:
            actions += [("invoke", c) for c in range(clients) if c not in pending]
        for c, op in pending.items():
            actions.append(("complete" if op.applied or op.lost else "apply", c))
        action, client = rng.choice(actions)
        if action == "invoke":
            f, value = invoke(rng)
            op = pending[client] = _Pending(processes[client], f, value)
            issued += 1
            record("invoke", op, value, client)
        elif action == "apply":
            op = pending[client]
            if rng.random() < lost_rate:
                op.lost = True  # never takes effect; the client will hear nothing definite
            else:
                op.applied = True
                op.succeeded, op.output = apply(op.f, op.value)
        else:
            op = pending.pop(client)
            if op.lost or rng.random() < info_rate:
                record("info", op, op.value, client)
                processes[client] += process_stride  # Jepsen: a crashed process never returns
            elif not op.succeeded:
                record("fail", op, op.value, client)
            else:
                record("ok", op, op.output, client)
    return history


def _merge(histories: list[History]) -> History:
    merged = [event for history in histories for event in history]
    merged.sort(key=lambda event: event["time"])  # stable: ties keep per-key order
    return merged


def generate_register_history(rng: random.Random, *, keys: int = 1, ops_per_key: int = 200,
                              clients: int = 10, values: int = 5, unique_values: bool = False,
                              read_weight: int = 2, write_weight: int = 1, cas_weight: int = 1,
                              info_rate: float = 0.05, lost_rate: float = 0.02,
                              keyless: bool = False) -> History:
    """A linearizable read/write/cas history; keys are "k0", "k1", ... (None when keyless).

    values: writes and cas draw from range(values) (Jepsen uses 0-4: repeated values make the
    search harder); unique_values: every write/cas writes a fresh value (needed by
    mutate_stale_read).
    """
    histories = []
    for number in range(keys):
        key = None if keyless and keys == 1 else f"k{number}"
        sim = _RegisterSim(values, unique_values, (read_weight, write_weight, cas_weight))
        histories.append(_simulate(rng, key, ops_per_key, clients, number * clients,
                                   keys * clients, sim.invoke, sim.apply, info_rate, lost_rate))
    return _merge(histories)


class _RegisterSim:
    """The register of one key: draws ops and applies them at their linearization point."""

    def __init__(self, values: int, unique_values: bool, weights: tuple[int, int, int]) -> None:
        self.values = values
        self.unique_values = unique_values
        self.weights = weights
        self.register: Any = None
        self.counter = 0

    def fresh(self, rng: random.Random) -> int:
        if self.unique_values:
            self.counter += 1
            return self.counter
        return rng.randrange(self.values)

    def invoke(self, rng: random.Random) -> tuple[str, Any]:
        f = rng.choices(["read", "write", "cas"], self.weights)[0]
        if f == "read":
            return "read", None
        if f == "write":
            return "write", self.fresh(rng)
        # Half the cas ops expect the current value (they succeed unless a write intervenes),
        # half a random one (mostly "fail").
        pool = self.counter + 1 if self.unique_values else self.values
        expected = self.register if rng.random() < 0.5 else rng.randrange(pool)
        return "cas", [expected, self.fresh(rng)]

    def apply(self, f: str, value: Any) -> tuple[bool, Any]:
        if f == "read":
            return True, self.register
        if f == "write":
            self.register = value
            return True, value
        if self.register == value[0]:
            self.register = value[1]
            return True, value
        return False, value


def generate_set_history(rng: random.Random, *, ops: int = 200, clients: int = 10,
                         read_weight: int = 1, add_weight: int = 2, info_rate: float = 0.05,
                         lost_rate: float = 0.02) -> History:
    """A linearizable grow-only set history (one set, no key); adds unique integers."""
    members: set[int] = set()
    counter = [0]

    def invoke(r: random.Random) -> tuple[str, Any]:
        if r.choices([True, False], [read_weight, add_weight])[0]:
            return "read", None
        counter[0] += 1
        return "add", counter[0]

    def apply(f: str, value: Any) -> tuple[bool, Any]:
        if f == "read":
            return True, sorted(members)
        members.add(value)
        return True, value

    return _simulate(rng, None, ops, clients, 0, clients, invoke, apply, info_rate, lost_rate)


# -- mutations -------------------------------------------------------------------------------------


def _intervals(history: History) -> list[dict[str, Any]]:
    """Completed ops as {f, key, value, output, call, ret, ret_index} in list order."""
    pending: dict[Any, tuple[int, dict[str, Any]]] = {}
    ops = []
    for index, event in enumerate(history):
        if event["type"] == "invoke":
            pending[event["process"]] = (index, event)
            continue
        call, invoke = pending.pop(event["process"])
        ops.append({"f": event["f"], "key": invoke.get("key"), "value": invoke.get("value"),
                    "output": event.get("value"), "type": event["type"], "call": call,
                    "ret": index})
    return ops


def _reads(history: History, f: str = "read") -> list[int]:
    return [i for i, e in enumerate(history) if e["type"] == "ok" and e["f"] == f]


def mutate_unwritten_read(history: History, rng: random.Random) -> tuple[History, int] | None:
    """A completed read now returns a value that no op ever wrote."""
    reads = _reads(history)
    if not reads:
        return None
    index = rng.choice(reads)
    mutated = copy.deepcopy(history)
    mutated[index]["value"] = NEVER_WRITTEN
    return mutated, index


def mutate_stale_read(history: History, rng: random.Random) -> tuple[History, int] | None:
    """A completed read returns value a written by W1, where W2 (another value) began after W1
    completed and completed before the read began: a is overwritten for good before the read.
    Requires unique written values (generate_register_history(unique_values=True))."""
    ops = _intervals(history)
    writes = [op for op in ops if op["type"] == "ok" and op["f"] in ("write", "cas")]
    written = lambda op: op["value"] if op["f"] == "write" else op["value"][1]  # noqa: E731
    choices = []
    for read in (op for op in ops if op["type"] == "ok" and op["f"] == "read"):
        before = [w for w in writes if w["key"] == read["key"] and w["ret"] < read["call"]]
        if not before:
            continue
        # W2: the write that began last; any W1 that completed before W2 began is stale.
        w2 = max(before, key=lambda w: w["call"])
        choices += [(read["ret"], written(w1)) for w1 in before
                    if w1["ret"] < w2["call"] and written(w1) not in (written(w2), read["output"])]
    if not choices:
        return None
    index, stale = rng.choice(choices)
    mutated = copy.deepcopy(history)
    mutated[index]["value"] = stale
    return mutated, index


def mutate_lost_element(history: History, rng: random.Random) -> tuple[History, int] | None:
    """A completed set read misses an element whose add completed before the read began."""
    ops = _intervals(history)
    adds = [op for op in ops if op["type"] == "ok" and op["f"] == "add"]
    choices = []
    for read in (op for op in ops if op["type"] == "ok" and op["f"] == "read"):
        for add in adds:
            if add["ret"] < read["call"] and add["value"] in read["output"]:
                choices.append((read["ret"], add["value"]))
    if not choices:
        return None
    index, element = rng.choice(choices)
    mutated = copy.deepcopy(history)
    mutated[index]["value"] = [v for v in mutated[index]["value"] if v != element]
    return mutated, index

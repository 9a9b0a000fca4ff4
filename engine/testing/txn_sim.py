"""A deterministic harness for replicated transactions (engine.txn.coordinator over
engine.txn.participant), docs/transactions.md "Replicated transactions".

Several groups, each a TxnKVStore applying commands in an order the harness chooses (and a
replica applying the same commands, whose answers and snapshot must be the same: the
determinism consensus relies on; consensus itself is tested elsewhere). A seeded scheduler on
simulated time interleaves many clients' coordinators; requests and answers are lost,
duplicated and delayed; coordinators crash at their commit's marks (after the intents, after
the record, before resolution); every client's physical clock is skewed. A recovery sweep runs
periodically and once more, fault-free, one expiry after the last client stopped.

    sim = TxnSim(seed=1, workload="list-append")
    report = sim.run()          # report.history (checker records), report.violations

Workloads: "list-append" (history for check_serializable(model="list-append")) and "bank"
(transfers between accounts on different groups, and snapshot reads of every account whose
total must never change).
"""

from __future__ import annotations

import heapq
import json
import random
from collections import Counter
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from engine.errors import Timeout, TransactionConflict
from engine.limits import Limits
from engine.txn.coordinator import (
    Call,
    Mark,
    Steps,
    Transaction,
    TxnEnv,
    Wait,
    recovery_sweep,
    run_transaction,
)
from engine.txn.hlc import HybridLogicalClock
from engine.txn.participant import TxnKVStore, decode, encode

MS = 1_000_000
# A crash point: right after any request is sent (so after some of a batch of intents).
SENDING = "sending"


class RangeRouter:
    """Keys split into groups by sorted boundaries: group i owns [bounds[i-1], bounds[i])."""

    def __init__(self, bounds: list[bytes]) -> None:
        self.bounds = bounds

    def group_of(self, key: bytes) -> int:
        return sum(1 for b in self.bounds if key >= b)

    def groups_for_span(self, start: bytes, end: bytes) -> list[tuple[int, bytes, bytes]]:
        edges = [b""] + self.bounds + [b""]
        out = []
        for g in range(len(self.bounds) + 1):
            low, high = edges[g], edges[g + 1]
            s = max(start, low)
            e = high if not end else (end if not high else min(end, high))
            if not e or s < e:
                out.append((g, s, e))
        return out


@dataclass
class Faults:
    loss: float = 0.05
    duplicate: float = 0.05
    max_delay_ns: int = 3 * MS
    crash: float = 0.05          # chance a transaction's coordinator crashes at a commit mark
    # Every client's clock is off by up to this, either way: two clients differ by at most
    # twice it (within the default 10 ms uncertainty bound).
    skew_ns: int = 5 * MS


@dataclass
class Report:
    history: list[dict[str, Any]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    committed: int = 0
    failed: int = 0
    unknown: int = 0
    one_phase: int = 0
    # How many times coordinators passed each Mark (commit points, crash points).
    marks: Counter[str] = field(default_factory=Counter)


class _Task:
    def __init__(self, steps: Steps, done: Callable[[Any, BaseException | None], None],
                 crash_at: str | None, env: TxnEnv | None) -> None:
        self.steps = steps
        self.done = done
        self.crash_at = crash_at
        self.dead = False
        self.env = env


class TxnSim:
    def __init__(self, *, seed: int, workload: str = "list-append", groups: int = 3,
                 clients: int = 4, txns_per_client: int = 12, keys: int = 6,
                 faults: Faults | None = None, uncertainty_ns: int = 10 * MS,
                 expiry_ns: int = 200 * MS, hlc_offset_ns: int | None = None,
                 isolation: str = "serializable", planted: frozenset[str] = frozenset(),
                 parallel_commits: bool = False) -> None:
        self.rng = random.Random(seed)
        self.workload = workload
        self.faults = faults or Faults()
        self.uncertainty_ns = uncertainty_ns
        self.expiry_ns = expiry_ns
        self.hlc_offset_ns = hlc_offset_ns or uncertainty_ns
        self.isolation = isolation
        self.planted = planted
        self.parallel_commits = parallel_commits
        self.n_clients = clients
        self.txns_per_client = txns_per_client
        if workload == "bank":
            self.keys = [f"acct/{i:02d}".encode() for i in range(keys)]
        else:
            self.keys = [f"k/{i:02d}".encode() for i in range(keys)]
        step = max(1, len(self.keys) // groups)
        self.router = RangeRouter([self.keys[i] for i in range(step, len(self.keys), step)]
                                  [: groups - 1])
        self.n_groups = len(self.router.bounds) + 1
        # The least history a group keeps (two expiries), so collection runs during a test.
        limits = Limits(mvcc_retention_s=0)
        self.groups = [TxnKVStore(limits, expiry_ns=expiry_ns) for _ in range(self.n_groups)]
        self.replicas = [TxnKVStore(limits, expiry_ns=expiry_ns)
                         for _ in range(self.n_groups)]
        self.index = [0] * self.n_groups
        self.now_ns = 1_000 * MS
        self._queue: list[tuple[int, int, Callable[[], None]]] = []
        self._seq = 0
        self.report = Report()
        self.envs: list[TxnEnv] = []
        self._process = 0
        self._value = 0
        self.balance = 100

    # ------------------------------------------------------------------ scheduler

    def at(self, when_ns: int, fn: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (when_ns, self._seq, fn))

    def _delay(self) -> int:
        return self.rng.randrange(1, self.faults.max_delay_ns + 1)

    def _apply(self, group: int, message: dict[str, Any], query: bool) -> dict[str, Any]:
        data = encode(message)
        if query:
            answer = self.groups[group].query(data)
        else:
            self.index[group] += 1
            answer = self.groups[group].apply(self.index[group], data)
            twin = self.replicas[group].apply(self.index[group], data)
            if twin != answer:
                self.report.violations.append(f"group {group}: replicas answered differently")
            if message["op"] == "one_phase" and b'"COMMITTED"' in answer:
                self.report.one_phase += 1
        return decode(answer)

    def _duplicate(self, call: Call) -> None:
        self._apply(call.group, call.message, False)

    def _deliver(self, task: _Task, call: Call, reply: Callable[[Any], None],
                 faulty: bool) -> None:
        f = self.faults
        if faulty and self.rng.random() < f.loss:
            self.at(self.now_ns + 2 * f.max_delay_ns + MS, lambda: reply(None))
            return

        def arrive() -> None:
            answer = self._apply(call.group, call.message, call.query)
            if faulty and not call.query and self.rng.random() < f.duplicate:
                later = self.now_ns + self._delay() * 4
                self.at(later, lambda: self._duplicate(call))
            if faulty and self.rng.random() < f.loss:
                self.at(self.now_ns + f.max_delay_ns + MS, lambda: reply(None))
            else:
                self.at(self.now_ns + self._delay(), lambda: reply(answer))

        self.at(self.now_ns + self._delay(), arrive)

    def spawn(self, steps: Steps, done: Callable[[Any, BaseException | None], None], *,
              crash_at: str | None = None, faulty: bool = True) -> None:
        task = _Task(steps, done, crash_at, None)
        self.at(self.now_ns, lambda: self._step(task, None, faulty))

    def _step(self, task: _Task, value: Any, faulty: bool) -> None:
        if task.dead:
            return
        try:
            effect = task.steps.send(value)
        except StopIteration as stop:
            task.dead = True
            task.done(stop.value, None)
            return
        except Exception as exc:  # noqa: BLE001 - reported to the task's owner
            task.dead = True
            task.done(None, exc)
            return
        resume = lambda v: self._step(task, v, faulty)  # noqa: E731
        if (task.crash_at == SENDING and isinstance(effect, (Call, list))
                and self.rng.random() < 0.2):
            # The coordinator dies right after sending: its requests still arrive (some of
            # a parallel batch of intents, a record, a resolution), nothing reads the answers.
            task.dead = True
            for c in [effect] if isinstance(effect, Call) else effect:
                self._deliver(task, c, lambda _answer: None, faulty)
            task.steps.close()
            task.done(None, _Crashed(SENDING))
            return
        if isinstance(effect, Mark):
            self.report.marks[effect.name] += 1
            if effect.name == task.crash_at:
                task.dead = True
                task.steps.close()
                task.done(None, _Crashed(effect.name))
                return
            self.at(self.now_ns, lambda: resume(None))
        elif isinstance(effect, Wait):
            self.at(self.now_ns + effect.ns, lambda: resume(None))
        elif isinstance(effect, Call):
            self._deliver(task, effect, resume, faulty)
        else:
            calls = list(effect)
            answers: list[Any] = [None] * len(calls)
            left = [len(calls)]

            def one(i: int) -> Callable[[Any], None]:
                def got(answer: Any) -> None:
                    answers[i] = answer
                    left[0] -= 1
                    if left[0] == 0:
                        resume(answers)
                return got
            for i, c in enumerate(calls):
                self._deliver(task, c, one(i), faulty)

    def run_until_idle(self) -> None:
        while self._queue:
            when, _, fn = heapq.heappop(self._queue)
            self.now_ns = max(self.now_ns, when)
            fn()

    # ------------------------------------------------------------------ clients

    def _env(self) -> TxnEnv:
        skew = self.rng.randrange(-self.faults.skew_ns, self.faults.skew_ns + 1)
        hlc = HybridLogicalClock(lambda: self.now_ns + skew, max_offset_ns=self.hlc_offset_ns)
        env = TxnEnv(self.router, hlc, uncertainty_ns=self.uncertainty_ns,
                     expiry_ns=self.expiry_ns, backoff_ns=2 * MS, planted=self.planted,
                     parallel_commits=self.parallel_commits)
        self.envs.append(env)
        return env

    def _resolution_done(self, _result: Any, exc: BaseException | None) -> None:
        if exc is not None and not isinstance(exc, (Timeout, _Crashed)):
            self.report.violations.append(f"resolution: {exc!r}")

    def _final_sweep_done(self, _result: Any, exc: BaseException | None) -> None:
        if exc is not None:
            self.report.violations.append(f"final sweep: {exc}")

    def _body(self) -> Callable[[Transaction], Steps]:
        rng = self.rng
        if self.workload == "bank":
            if rng.random() < 0.3:
                return _bank_audit(self.keys)
            a, b = rng.sample(self.keys, 2)
            return _bank_transfer(a, b, rng.randrange(1, 30))
        ops: list[tuple[Any, ...]] = []
        for key in rng.sample(self.keys, rng.randrange(1, 4)):
            if rng.random() < 0.5:
                ops.append(("r", key))
            else:
                self._value += 1
                ops.append(("append", key, self._value))
        return _list_append(ops)

    def _client(self, process: int, left: int, env: TxnEnv) -> None:
        if left == 0:
            return
        body = self._body()
        crash_at = None
        if self.rng.random() < self.faults.crash:
            crash_at = self.rng.choice(["intents_written", "record_committed",
                                        "before_resolution", SENDING])
        invoke = self.now_ns
        txn_id = f"c{process}.{left}"

        def done(result: Any, exc: BaseException | None) -> None:
            entry: dict[str, Any] = {"process": process, "invoke": invoke,
                                     "complete": self.now_ns}
            next_process, next_env = process, env
            if exc is None:
                ops, _, finish = result
                entry.update(type="ok", value=ops)
                self.report.committed += 1
                if finish is not None:
                    self.spawn(finish, self._resolution_done)
                self._check_bank(ops)
            elif isinstance(exc, TransactionConflict):
                entry.update(type="fail", value=body.planned)  # type: ignore[attr-defined]
                self.report.failed += 1
            else:
                if not isinstance(exc, (Timeout, _Crashed)):
                    self.report.violations.append(f"transaction {txn_id}: {exc!r}")
                entry.update(type="info", value=body.planned)  # type: ignore[attr-defined]
                self.report.unknown += 1
                if isinstance(exc, _Crashed):
                    # A crashed coordinator's client comes back as a new process.
                    self._process += 1
                    next_process, next_env = self._process, self._env()
            self.report.history.append(entry)
            self.at(self.now_ns + self._delay(),
                    lambda: self._client(next_process, left - 1, next_env))

        self.spawn(run_transaction(env, txn_id, body, isolation=self.isolation), done,
                   crash_at=crash_at)

    def _check_bank(self, ops: Any) -> None:
        if self.workload == "bank" and ops and ops[0] == "audit":
            total = sum(ops[1].values())
            if total != self.balance * len(self.keys):
                self.report.violations.append(f"bank audit saw total {total}: {ops[1]}")

    def _sweeper(self, until_ns: list[int], env: TxnEnv) -> None:
        def again(_r: Any, _e: BaseException | None) -> None:
            if self._running:
                self.at(self.now_ns + self.expiry_ns // 2, lambda: self._sweeper(until_ns, env))
        self.spawn(recovery_sweep(env, list(range(self.n_groups))), again)

    # ------------------------------------------------------------------ the run

    def run(self) -> Report:
        if self.workload == "bank":
            for key in self.keys:
                g = self.router.group_of(key)
                self.groups[g]._install(key, 1, str(self.balance).encode())
                self.replicas[g]._install(key, 1, str(self.balance).encode())
        self._running = True
        for _ in range(self.n_clients):
            self._process += 1
            self._client(self._process, self.txns_per_client, self._env())
        self._sweeper([], self._env())
        # Run until every client finished (the sweeper reschedules itself while running).
        while self._queue and (self.report.committed + self.report.failed
                               + self.report.unknown) < self.n_clients * self.txns_per_client:
            when, _, fn = heapq.heappop(self._queue)
            self.now_ns = max(self.now_ns, when)
            fn()
        self._running = False
        self.run_until_idle()
        # One expiry after the coordinators stopped, a fault-free sweep resolves everything.
        self.now_ns += self.expiry_ns + 10 * MS
        self.spawn(recovery_sweep(self._env(), list(range(self.n_groups))),
                   self._final_sweep_done,
                   faulty=False)
        self.run_until_idle()
        for g, group in enumerate(self.groups):
            if group.intents:
                self.report.violations.append(
                    f"group {g}: intents outlive their bound: {sorted(group.intents)}")
            if group.unresolved_records():
                self.report.violations.append(f"group {g}: unresolved records")
            if group.snapshot() != self.replicas[g].snapshot():
                self.report.violations.append(f"group {g}: replica snapshots differ")
        self._final_read()
        for env in self.envs:
            if _not_monotonic(env.issued):
                self.report.violations.append("an HLC went backwards")
        return self.report

    def _final_read(self) -> None:
        """A fault-free read of every key after everything finished: in the history, so a
        committed write missing from it is an anomaly (and checked directly here)."""
        env = self._env()
        invoke = self.now_ns
        if self.workload == "bank":
            body = _bank_audit(self.keys)
        else:
            body = _list_append([("r", k) for k in self.keys])
        out: list[Any] = []
        self.spawn(run_transaction(env, "final", body),
                   lambda r, e: out.append((r, e)), faulty=False)
        self.run_until_idle()
        result, exc = out[0]
        if exc is not None:
            self.report.violations.append(f"final read failed: {exc}")
            return
        ops = result[0]
        self._check_bank(ops)
        if self.workload == "bank":
            return
        self.report.history.append({"process": 0, "type": "ok", "value": ops,
                                    "invoke": invoke, "complete": self.now_ns})
        final = {op[1]: set(op[2]) for op in ops}
        for entry in self.report.history:
            if entry["type"] == "ok":
                for op in entry["value"]:
                    if op[0] == "append" and op[2] not in final[op[1]]:
                        self.report.violations.append(f"committed append {op} lost")
            if entry["type"] == "fail":
                for op in entry["value"]:
                    if op[0] == "append" and op[2] in final[op[1]]:
                        self.report.violations.append(f"failed append {op} is visible")


class _Crashed(Exception):
    pass


def _not_monotonic(issued: list[int]) -> bool:
    # update() may return a value equal to an absorbed one only if above; every issued or
    # absorbed timestamp must be strictly above the previous one.
    return any(b <= a for a, b in zip(issued, issued[1:], strict=False))


def _list_append(ops: list[tuple[Any, ...]]) -> Callable[[Transaction], Steps]:
    planned = [[op[0], op[1].decode(), op[2] if op[0] == "append" else None] for op in ops]

    def body(tx: Transaction) -> Generator[Any, Any, list[list[Any]]]:
        out = []
        for op in ops:
            raw = yield from tx.get(op[1])
            current = json.loads(raw) if raw else []
            if op[0] == "r":
                out.append(["r", op[1].decode(), current])
            else:
                tx.put(op[1], json.dumps(current + [op[2]]).encode())
                out.append(["append", op[1].decode(), op[2]])
        return out

    body.planned = planned  # type: ignore[attr-defined]
    return body


def _bank_transfer(a: bytes, b: bytes, amount: int) -> Callable[[Transaction], Steps]:
    def body(tx: Transaction) -> Generator[Any, Any, list[Any]]:
        va = int((yield from tx.get(a)) or b"0")
        vb = int((yield from tx.get(b)) or b"0")
        if va >= amount:
            tx.put(a, str(va - amount).encode())
            tx.put(b, str(vb + amount).encode())
        return ["transfer", a.decode(), b.decode(), amount]

    body.planned = ["transfer", a.decode(), b.decode(), amount]  # type: ignore[attr-defined]
    return body


def _bank_audit(keys: list[bytes]) -> Callable[[Transaction], Steps]:
    def body(tx: Transaction) -> Generator[Any, Any, list[Any]]:
        rows = yield from tx.scan(b"acct/", b"acct0")
        return ["audit", {k.decode(): int(v) for k, v in rows}]

    body.planned = ["audit"]  # type: ignore[attr-defined]
    return body

"""The client side of replicated transactions, sans-IO (docs/transactions.md, "Replicated
transactions"): CockroachDB's protocol (transaction record, write intents, HLC timestamps,
read refresh, 1PC) with Percolator's primary record, over TxnKVStore groups.

Every operation is a generator that yields what it needs from the outside world and is sent
the answer back:
  * Call(group, message, query=False) -> the decoded answer dict, or None if the request or
    its answer was lost (the coordinator retries; every command is idempotent);
  * a list of Calls -> the list of answers (sent in parallel);
  * Wait(ns) -> None (back off before pushing a live transaction again);
  * Mark(name) -> None (a point the harness may crash the coordinator at).
A driver (engine.testing.txn_sim, or one over real groups) performs them. The coordinator's
environment, TxnEnv, supplies the router (which group owns a key, which groups a span
crosses) and the node's HLC.

Outcomes: `commit` returns the commit timestamp; TransactionConflict means definitely not
committed (no END COMMITTED was ever sent, or the record answered ABORTED); Timeout means the
outcome is unknown (END COMMITTED may have applied). A read meeting a committed value inside
its uncertainty interval raises UncertaintyRestart: run the body again at a higher timestamp
(run_transaction does).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from engine.errors import InvariantViolation, Timeout, TransactionConflict
from engine.txn.hlc import HybridLogicalClock
from engine.txn.participant import (
    ABORTED,
    COMMITTED,
    PENDING,
    STAGING,
    ts_int,
    ts_of,
    wall_ns,
)


@dataclass(frozen=True)
class Call:
    group: int
    message: dict[str, Any]
    query: bool = False


@dataclass(frozen=True)
class Wait:
    ns: int


@dataclass(frozen=True)
class Mark:
    name: str


Effect = Call | list[Call] | Wait | Mark
Steps = Generator[Effect, Any, Any]


class Router(Protocol):
    def group_of(self, key: bytes) -> int: ...
    def groups_for_span(self, start: bytes, end: bytes) -> list[tuple[int, bytes, bytes]]: ...


class UncertaintyRestart(Exception):
    """A read saw a committed value in (read_ts, uncertainty limit]: restart at `ts`."""

    def __init__(self, ts: int) -> None:
        super().__init__(f"uncertainty restart at {ts_of(ts)}")
        self.ts = ts


@dataclass
class TxnEnv:
    router: Router
    hlc: HybridLogicalClock
    # The uncertainty interval's width: Limits.max_clock_offset_ms in ns.
    uncertainty_ns: int
    # The participants' expiry (TxnKVStore.expiry_ns); a transaction older than half of it
    # heartbeats its record before writing intents.
    expiry_ns: int
    max_attempts: int = 8
    backoff_ns: int = 5_000_000
    # Parallel commits: the record is written STAGING together with the intents, and the
    # transaction is committed once they all land at or below its timestamp (one round).
    parallel_commits: bool = False
    # Planted bugs for the checker's tests only ("no_refresh", "resolve_early").
    planted: frozenset[str] = frozenset()
    # Every timestamp this node's HLC issued or absorbed (HLC monotonic, checked by tests).
    issued: list[int] = field(default_factory=list)

    def now(self) -> int:
        ts = ts_int(self.hlc.now())
        self.issued.append(ts)
        return ts

    def observe(self, answer: dict[str, Any] | None) -> None:
        if answer is not None and answer.get("clock"):
            self.issued.append(ts_int(self.hlc.update(ts_of(int(answer["clock"])))))


def call(env: TxnEnv, group: int, message: dict[str, Any], *, query: bool = False) -> Steps:
    """One command (or query) with retries: a fresh `now` each attempt; Timeout when every
    attempt was lost."""
    for _ in range(env.max_attempts):
        answer = yield Call(group, {**message, "now": env.now()}, query)
        env.observe(answer)
        if answer is not None:
            return answer
    raise Timeout(f"group {group}: no answer to {message['op']} after "
                  f"{env.max_attempts} attempts")


def call_many(env: TxnEnv, calls: Sequence[tuple[int, dict[str, Any]]]) -> Steps:
    """Commands to several groups in parallel, each retried until answered; Timeout if one
    never is."""
    answers: list[dict[str, Any] | None] = [None] * len(calls)
    for _ in range(env.max_attempts):
        todo = [i for i, a in enumerate(answers) if a is None]
        if not todo:
            return answers
        sent = yield [Call(calls[i][0], {**calls[i][1], "now": env.now()}) for i in todo]
        for i, answer in zip(todo, sent, strict=True):
            env.observe(answer)
            answers[i] = answer
    silent = sorted({calls[i][0] for i, a in enumerate(answers) if a is None})
    if silent:
        raise Timeout(f"no answer from groups {silent}")
    return answers


def _unknown(steps: Steps) -> Steps:
    """After the record may say committed: a Timeout stays a Timeout (outcome unknown)."""
    return (yield from steps)


def resolve_intent(env: TxnEnv, conflict: dict[str, Any], *, force: bool) -> Steps:
    """Deal with another transaction's intent met at conflict["key"]: push its record at its
    anchor (abort it if it is not live, or if `force`: wound-wait), then resolve the intent
    if its transaction is finished. Returns True if the intent is gone (retry now), False if
    its transaction is live (wait, then retry)."""
    anchor = bytes.fromhex(conflict["anchor"])
    answer = yield from call(env, env.router.group_of(anchor), {
        "op": "push", "txn": conflict["txn"], "start": conflict["start"], "force": force})
    if answer["st"] == PENDING:
        return False
    if answer["st"] == STAGING:
        answer = yield from recover_staging(env, conflict["txn"], anchor, answer)
    key = bytes.fromhex(conflict["key"])
    yield from call(env, env.router.group_of(key), {
        "op": "resolve", "txn": conflict["txn"], "status": answer["st"], "ts": answer["ts"],
        "keys": [key.hex()]})
    return True


def recover_staging(env: TxnEnv, txn: str, anchor: bytes, record: dict[str, Any]) -> Steps:
    """Parallel commits' status resolution: a STAGING transaction (expired, or wounded) is
    committed iff every promised intent exists at or below the staging timestamp. Ask every
    group (a missing intent is prevented from being written later), then record the outcome
    at the anchor; returns the anchor's answer (the record, COMMITTED or ABORTED)."""
    keys = [bytes.fromhex(k) for k in record["keys"]]
    found = yield from call_many(env, [
        (env.router.group_of(key), {"op": "query_intent", "txn": txn, "key": key.hex(),
                                    "ts": record["ts"]}) for key in keys])
    outcome = COMMITTED if all(a["found"] for a in found) else ABORTED
    answer = yield from call(env, env.router.group_of(anchor), {
        "op": "recover", "txn": txn, "ts": record["ts"], "status": outcome})
    return answer


class Transaction:
    """One attempt of a transaction: buffered writes, reads at `read_ts`."""

    def __init__(self, env: TxnEnv, txn_id: str, *, isolation: str = "serializable",
                 read_ts: int | None = None, uncertainty_limit: int | None = None,
                 start: int | None = None) -> None:
        if isolation not in ("serializable", "snapshot"):
            raise ValueError(f"isolation must be 'serializable' or 'snapshot', not {isolation!r}")
        self.env = env
        self.id = txn_id
        self.isolation = isolation
        self.start = env.now() if start is None else start
        self.read_ts = self.start if read_ts is None else read_ts
        base = wall_ns(self.start)
        self.uncertainty_limit = (uncertainty_limit if uncertainty_limit is not None
                                  else ((base + env.uncertainty_ns) << 32) | 0xFFFFFFFF)
        self.writes: dict[bytes, bytes | None] = {}
        self.read_keys: dict[int, set[bytes]] = {}
        self.read_spans: dict[int, list[tuple[bytes, bytes]]] = {}
        self.commit_ts: int | None = None

    # ------------------------------------------------------------------ reads and writes

    def put(self, key: bytes, value: bytes) -> None:
        self.writes[key] = value

    def delete(self, key: bytes) -> None:
        self.writes[key] = None

    def _wait_out(self, conflict: dict[str, Any], *, force: bool) -> Steps:
        gone = yield from resolve_intent(self.env, conflict, force=force)
        if not gone:
            yield Wait(self.env.backoff_ns)

    def get(self, key: bytes) -> Steps:
        if key in self.writes:
            return self.writes[key]
        group = self.env.router.group_of(key)
        while True:
            answer = yield from call(self.env, group, {
                "op": "read", "key": key.hex(), "txn": self.id, "ts": self.read_ts,
                "limit": self.uncertainty_limit})
            if answer["st"] == "ok":
                self.read_keys.setdefault(group, set()).add(key)
                value = answer["value"]
                return None if value is None else bytes.fromhex(value)
            if answer["st"] == "uncertain":
                raise UncertaintyRestart(int(answer["vts"]))
            self._check_compacted(answer)
            yield from self._wait_out(answer, force=False)

    def _check_compacted(self, answer: dict[str, Any]) -> None:
        if answer["st"] == "compacted":
            raise TransactionConflict(
                f"transaction {self.id} reads at {ts_of(self.read_ts)}, below the history the "
                f"group keeps (from {ts_of(int(answer['horizon']))}): retry at a newer timestamp")

    def scan(self, start: bytes, end: bytes = b"", limit: int | None = None) -> Steps:
        rows: dict[bytes, bytes | None] = {}
        for group, low, high in self.env.router.groups_for_span(start, end):
            while True:
                answer = yield from call(self.env, group, {
                    "op": "scan", "start": low.hex(), "end": high.hex(), "txn": self.id,
                    "ts": self.read_ts, "limit": self.uncertainty_limit})
                if answer["st"] == "ok":
                    break
                if answer["st"] == "uncertain":
                    raise UncertaintyRestart(int(answer["vts"]))
                self._check_compacted(answer)
                yield from self._wait_out(answer, force=False)
            self.read_spans.setdefault(group, []).append((low, high))
            for k, v in answer["rows"]:
                rows[bytes.fromhex(k)] = bytes.fromhex(v)
        for key, value in self.writes.items():
            if start <= key and (not end or key < end):
                rows[key] = value
        out = [(k, v) for k, v in sorted(rows.items()) if v is not None]
        return out if limit is None else out[:limit]

    # ------------------------------------------------------------------ commit

    def _read_groups(self) -> set[int]:
        return set(self.read_keys) | set(self.read_spans)

    def _reads_of(self, group: int) -> dict[str, Any]:
        return {"reads": sorted(k.hex() for k in self.read_keys.get(group, ())),
                "spans": [[s.hex(), e.hex()] for s, e in self.read_spans.get(group, [])]}

    def commit(self) -> Steps:
        """Commit; returns a generator to run afterwards (asynchronous intent resolution),
        or None. Sets self.commit_ts."""
        if not self.writes:
            self.commit_ts = self.read_ts  # read-only: its reads were one snapshot
            return None
        by_group: dict[int, list[bytes]] = {}
        for key in sorted(self.writes):
            by_group.setdefault(self.env.router.group_of(key), []).append(key)
        if len(by_group) == 1 and self._read_groups() <= set(by_group):
            yield from self._one_phase(next(iter(by_group)))
            return None
        return (yield from self._two_phase(by_group))

    def _writes_of(self, keys: list[bytes]) -> list[list[str | None]]:
        return [[k.hex(), None if self.writes[k] is None else self.writes[k].hex()]  # type: ignore[union-attr]
                for k in keys]

    def _one_phase(self, group: int) -> Steps:
        keys = sorted(self.writes)
        while True:
            answer = yield from call(self.env, group, {
                "op": "one_phase", "txn": self.id, "start": self.start, "ts": self.read_ts,
                "writes": self._writes_of(keys), "isolation": self.isolation,
                **self._reads_of(group)})
            if answer["st"] == COMMITTED:
                self.commit_ts = int(answer["ts"])
                return
            if answer["st"] == ABORTED:
                raise TransactionConflict(f"transaction {self.id}: a read was overwritten "
                                          "before it could commit")
            yield from self._wait_out(answer, force=False)

    def _two_phase(self, by_group: dict[int, list[bytes]]) -> Steps:
        env = self.env
        keys = sorted(self.writes)
        anchor = keys[0]
        anchor_group = env.router.group_of(anchor)
        if wall_ns(env.now()) - wall_ns(self.start) > env.expiry_ns // 2:
            answer = yield from self._definite(call(env, anchor_group, {
                "op": "heartbeat", "txn": self.id, "start": self.start}))
            if answer["st"] != PENDING:
                raise TransactionConflict(f"transaction {self.id} was aborted by another")
        mine = (self.start, self.id)
        commit_ts, too_old = self.read_ts, False
        parallel = env.parallel_commits
        # Before the record may say COMMITTED (an END COMMITTED, or with parallel commits
        # the STAGING record sent with the first intents), a Timeout is a definite failure.
        definite = self._definite
        pending = dict(by_group)
        staging: list[tuple[int, dict[str, Any]]] = []
        if parallel:
            staging = [(anchor_group, {
                "op": "end", "txn": self.id, "status": STAGING, "ts": self.read_ts,
                "start": self.start, "keys": [k.hex() for k in keys]})]
            definite = _unknown
        while pending:
            groups = sorted(pending)
            answers = yield from definite(call_many(env, staging + [
                (g, {"op": "intent", "txn": self.id, "ts": self.read_ts, "start": self.start,
                     "anchor": anchor.hex(), "writes": self._writes_of(pending[g])})
                for g in groups]))
            if staging:
                staged = answers.pop(0)
                staging = []
                if staged["st"] == COMMITTED:
                    # A recovery (a pusher's) found every intent at or below the staging
                    # timestamp first, while this answer was lost and retried: committed.
                    self.commit_ts = int(staged["ts"])
                    yield Mark("record_committed")
                    return self._finish(by_group, anchor_group, self.commit_ts)
                if staged["st"] != STAGING:
                    ts = yield from self._abort(anchor_group, keys, "aborted by another")
                    return (yield from self._adopt(by_group, anchor_group, ts))
            waited = False
            for g, answer in zip(groups, answers, strict=True):
                if answer["st"] == "ok":
                    commit_ts = max(commit_ts, int(answer["ts"]))
                    too_old = too_old or bool(answer["too_old"])
                    del pending[g]
                    continue
                # Wound-wait: an older transaction aborts a younger one holding its key; a
                # younger one waits, so waiting never closes a cycle.
                force = mine < (int(answer["start"]), answer["txn"])
                gone = yield from definite(resolve_intent(env, answer, force=force))
                waited = waited or not gone
            if waited:
                yield Wait(env.backoff_ns)
        yield Mark("intents_written")
        if parallel and commit_ts == self.read_ts:
            # Every intent is at or below the staging timestamp: committed now (implicitly);
            # the explicit COMMITTED and the resolution follow asynchronously.
            self.commit_ts = commit_ts
            yield Mark("implicitly_committed")
            yield Mark("record_committed")
            return self._finish(by_group, anchor_group, commit_ts, confirm=True)
        if self.isolation == "snapshot":
            if too_old:
                ts = yield from self._abort(anchor_group, keys, "a key it writes was overwritten",
                                         maybe_committed=parallel)
                return (yield from self._adopt(by_group, anchor_group, ts))
        elif commit_ts > self.read_ts and "no_refresh" not in env.planted:
            groups = sorted(self._read_groups())
            answers = yield from definite(call_many(env, [
                (g, {"op": "refresh", "txn": self.id, "from": self.read_ts, "to": commit_ts,
                     "keys": self._reads_of(g)["reads"], "spans": self._reads_of(g)["spans"]})
                for g in groups]))
            if any(a["st"] != "ok" for a in answers):
                ts = yield from self._abort(anchor_group, keys, "a read was overwritten",
                                         maybe_committed=parallel)
                return (yield from self._adopt(by_group, anchor_group, ts))
        if "resolve_early" in env.planted:
            # Planted bug: resolving intents as committed before the record says so.
            yield from self._resolve(by_group, COMMITTED, commit_ts)
        answer = yield from call(env, anchor_group, {
            "op": "end", "txn": self.id, "status": COMMITTED, "ts": commit_ts,
            "start": self.start, "keys": [k.hex() for k in keys]})
        if answer["st"] != COMMITTED:
            yield from self._resolve(by_group, ABORTED, 0)
            raise TransactionConflict(f"transaction {self.id} was aborted by another")
        # The record's timestamp: a recovery may have committed it at the staging timestamp.
        return (yield from self._adopt(by_group, anchor_group, int(answer["ts"])))

    def _adopt(self, by_group: dict[int, list[bytes]], anchor_group: int, ts: int) -> Steps:
        """The record says COMMITTED at ts: that is the outcome, whatever this coordinator
        saw (the record is the commit point)."""
        self.commit_ts = ts
        yield Mark("record_committed")
        return self._finish(by_group, anchor_group, ts)

    def _definite(self, steps: Steps) -> Steps:
        """Before END COMMITTED is sent the transaction cannot have committed: a Timeout
        there is a definite failure."""
        try:
            return (yield from steps)
        except Timeout as exc:
            raise TransactionConflict(f"transaction {self.id} not committed: {exc}") from None

    def _abort(self, anchor_group: int, keys: list[bytes], why: str, *,
               maybe_committed: bool = False) -> Steps:
        """Abort (TransactionConflict), unless the record already says COMMITTED: then
        return its timestamp. `maybe_committed`: a STAGING record may have been found
        committed by a recovery, so no answer from the anchor is a Timeout (unknown)."""
        try:
            answer = yield from call(self.env, anchor_group, {
                "op": "end", "txn": self.id, "status": ABORTED, "ts": 0, "start": self.start,
                "keys": [k.hex() for k in keys]})
            if answer["st"] == COMMITTED:
                # A recovery found every intent at or below the staging timestamp while this
                # coordinator's answers were lost (a retried intent landing after that
                # resolution looks pushed): committed, at the record's timestamp.
                return int(answer["ts"])
            by_group: dict[int, list[bytes]] = {}
            for key in keys:
                by_group.setdefault(self.env.router.group_of(key), []).append(key)
            yield from self._resolve(by_group, ABORTED, 0)
            yield from call(self.env, anchor_group, {"op": "resolved", "txn": self.id})
        except Timeout:
            if maybe_committed:
                raise
            # Otherwise the intents are left to pushers and the recovery sweep.
        raise TransactionConflict(f"transaction {self.id}: {why}")

    def _resolve(self, by_group: dict[int, list[bytes]], status: str, ts: int) -> Steps:
        groups = sorted(by_group)
        yield from call_many(self.env, [
            (g, {"op": "resolve", "txn": self.id, "status": status, "ts": ts,
                 "keys": [k.hex() for k in by_group[g]]}) for g in groups])

    def _finish(self, by_group: dict[int, list[bytes]], anchor_group: int,
                commit_ts: int, *, confirm: bool = False) -> Steps:
        yield Mark("before_resolution")
        try:
            if confirm:
                answer = yield from call(self.env, anchor_group, {
                    "op": "end", "txn": self.id, "status": COMMITTED, "ts": commit_ts,
                    "start": self.start, "keys": []})
                if answer["st"] != COMMITTED or int(answer["ts"]) != commit_ts:
                    raise InvariantViolation(
                        f"transaction {self.id} was implicitly committed at {commit_ts}, "
                        f"its record says {answer['st']} at {answer['ts']}")
            yield from self._resolve(by_group, COMMITTED, commit_ts)
            yield from call(self.env, anchor_group, {"op": "resolved", "txn": self.id})
        except Timeout:
            pass  # the recovery sweep finishes it


Body = Callable[[Transaction], Steps]


def run_transaction(env: TxnEnv, txn_id: str, body: Body, *,
                    isolation: str = "serializable", max_restarts: int = 16) -> Steps:
    """Run `body(tx)` and commit, restarting at a higher timestamp after an uncertainty
    restart. Returns (body's result, commit ts, resolution steps or None). Raises
    TransactionConflict (definitely not committed) or Timeout (unknown)."""
    read_ts: int | None = None
    limit: int | None = None
    for attempt in range(max_restarts):
        tx = Transaction(env, f"{txn_id}.{attempt}", isolation=isolation, read_ts=read_ts,
                         uncertainty_limit=limit)
        if read_ts is not None and read_ts < tx.start:
            tx.read_ts = tx.start
        try:
            result = yield from body(tx)
        except UncertaintyRestart as restart:
            # Restart above the uncertain value, keeping the first attempt's limit so the
            # restarts end (CockroachDB's observed-timestamp rule, simplified).
            read_ts, limit = restart.ts, tx.uncertainty_limit
            continue
        finish = yield from tx.commit()
        return result, tx.commit_ts, finish
    raise TransactionConflict(f"transaction {txn_id}: {max_restarts} uncertainty restarts")


def recovery_sweep(env: TxnEnv, groups: Sequence[int]) -> Steps:
    """Finish every abandoned transaction the groups know of: push the transaction of each
    intent older than the expiry at its anchor (aborting it if it is not live) and resolve
    the intent; resolve the intents of finished records not yet reported resolved."""
    for group in groups:
        answer = yield from call(env, group, {"op": "stale_intents"}, query=True)
        for key, txn, anchor, start in answer["intents"]:
            yield from resolve_intent(env, {"key": key, "txn": txn, "anchor": anchor,
                                            "start": start}, force=False)
        answer = yield from call(env, group, {"op": "unresolved"}, query=True)
        for txn, status, ts, keys in answer["records"]:
            by_group: dict[int, list[str]] = {}
            for key in keys:
                by_group.setdefault(env.router.group_of(bytes.fromhex(key)), []).append(key)
            yield from call_many(env, [
                (g, {"op": "resolve", "txn": txn, "status": status, "ts": ts, "keys": ks})
                for g, ks in sorted(by_group.items())])
            yield from call(env, group, {"op": "resolved", "txn": txn})

"""TxnKVStore: the participant side of replicated transactions (docs/transactions.md,
"Replicated transactions"). Sans-IO and deterministic: one instance per replica of a group.

Shape. A wrapper with KVStore's StateMachine surface (apply, query, snapshot, restore): a
command or query that starts with TXN_MAGIC is a transaction command, anything else goes to the
wrapped engine.KVStore unchanged. The transactional keyspace is kept beside it, not inside it,
because a transaction's versions must all carry its *commit* timestamp, the same in every
group, while KVStore stamps a write with max(stamp, the group's clock) (its module docstring,
"MVCC"), which would move a version resolved late above reads that already missed it. Plain
KV commands therefore do not see transactional keys (engine.Client.transaction reads and
writes the transactional ones).

State (all of it in the snapshot, versioned by SNAPSHOT_MAGIC):
  * versions: key -> committed versions [(ts, value | None)] in timestamp order
    (CockroachDB's MVCC; None is a delete);
  * intents: key -> Intent, at most one per key, a provisional value owned by one transaction
    at its provisional timestamp (CockroachDB's write intents, Percolator's locks);
  * records: txn id -> Record, the transaction records of the transactions anchored here
    (Percolator's primary: the commit point of a transaction is its record becoming
    COMMITTED in the anchor group, one consensus command; with parallel commits, a STAGING
    record whose every intent exists at or below its timestamp is committed already, and
    a recovery decides it with QUERY_INTENT, which prevents a missing intent, and RECOVER);
  * the timestamp cache: the highest timestamp each key (and each scanned span) was read at, and
    by which transaction; a write below it is pushed above it, so no write can slip under a
    read that already happened (serializability; CockroachDB's timestamp cache). It is bounded
    by max_read_entries: past it the oldest half is dropped and `read_floor` rises to the
    largest dropped timestamp, which every write is then pushed above (conservative);
  * the group's consensus time `clock`: the largest `now` (an HLC timestamp stamped by the
    proposer) any applied command carried. Liveness (heartbeats, expiry) is measured on it,
    never on a local clock, so every replica decides the same.

Timestamps are ints (Timestamp.wall_ns << 32 | logical, ordered like Timestamp).

History. Versions are kept while a read at or above the horizon could see them; the horizon
trails the group's clock by retention_ns = max(Limits.mvcc_retention_s, 2 * expiry_ns) (a
transaction reads at its start, and lives at most an expiry without a heartbeat) and only
rises. Each install collects the versions of its key below the horizon but the newest; a read
or scan below the horizon answers "compacted" (the coordinator restarts the transaction:
TransactionConflict), a refresh from below it fails. History is bounded by the write rate
times the retention; unlike KVStore there is no byte bound yet.

Liveness rule (abandoned transactions). A transaction is live while
clock - max(start, last heartbeat) <= expiry_ns. A push (PUSH) of a transaction that is not live
and not COMMITTED writes ABORTED; a COMMITTED one is reported so the pusher finishes it. A
commit (END) or a one-phase commit of a transaction that is no longer live and has no record
is refused (ABORTED): so once a pusher could have removed its intents, it can never commit.
Finished records are kept while their transaction could still send a command that matters
(until clock - max(start, heartbeat) > 2 * expiry_ns, and a COMMITTED one until its intents
were reported resolved), then dropped: a command arriving later finds no record and an expired
start, and is refused.
"""

from __future__ import annotations

import json
from bisect import bisect_right, insort
from dataclasses import dataclass, field
from typing import Any

from sortedcontainers import SortedList

from engine.errors import DecodeError, InvariantViolation
from engine.kv.store import KVStore
from engine.limits import Limits
from engine.txn.hlc import Timestamp

TXN_MAGIC = b"TXN1"
SNAPSHOT_MAGIC = b"ETX1"
# A transaction not heard of for this long (consensus time) may be aborted by anyone.
DEFAULT_EXPIRY_NS = 2_000_000_000
DEFAULT_MAX_READ_ENTRIES = 100_000
# Finished records are swept at most once per this fraction of the expiry (_gc_records).
GC_PERIOD_DIVISOR = 8
# The most intents or records one recovery-sweep query returns (one answer stays small).
SWEEP_PAGE = 256

PENDING = "PENDING"
STAGING = "STAGING"
COMMITTED = "COMMITTED"
ABORTED = "ABORTED"
FINAL = (COMMITTED, ABORTED)


def ts_int(ts: Timestamp) -> int:
    return (ts.wall_ns << 32) | ts.logical


def ts_of(value: int) -> Timestamp:
    return Timestamp(value >> 32, value & 0xFFFFFFFF)


def wall_ns(value: int) -> int:
    return value >> 32


def _hex(value: bytes | None) -> str | None:
    return None if value is None else value.hex()


def _unhex(value: str | None) -> bytes | None:
    return None if value is None else bytes.fromhex(value)


def encode(message: dict[str, Any]) -> bytes:
    """A transaction command, query or answer: TXN_MAGIC + canonical JSON (bytes as hex)."""
    return TXN_MAGIC + json.dumps(message, sort_keys=True, separators=(",", ":")).encode()


def decode(data: bytes) -> dict[str, Any]:
    if not data.startswith(TXN_MAGIC):
        raise DecodeError("not a transaction message")
    try:
        message = json.loads(data[len(TXN_MAGIC):])
    except ValueError as exc:
        raise DecodeError(f"malformed transaction message: {exc}") from None
    if not isinstance(message, dict):
        raise DecodeError("a transaction message is a JSON object")
    return message


@dataclass
class Intent:
    txn: str
    ts: int
    value: bytes | None
    anchor: bytes
    start: int
    # A committed version at or above the transaction's read timestamp existed when the
    # intent was written (snapshot isolation aborts then); kept so a retry answers the same.
    too_old: bool = False


@dataclass
class Record:
    status: str
    ts: int
    start: int
    heartbeat: int
    # The keys of the transaction's intents (every group); emptied once reported resolved.
    keys: list[bytes] = field(default_factory=list)


class TxnKVStore:
    """A KVStore plus the participant side of replicated transactions (module docstring)."""

    def __init__(self, limits: Limits | None = None, *, expiry_ns: int = DEFAULT_EXPIRY_NS,
                 max_read_entries: int = DEFAULT_MAX_READ_ENTRIES) -> None:
        self.kv = KVStore(limits)
        limits = limits or Limits()
        self.expiry_ns = expiry_ns
        # History kept for reads at a timestamp (module docstring, "History").
        self.retention_ns = max(limits.mvcc_retention_s * 1_000_000_000, 2 * expiry_ns)
        self.max_read_entries = max_read_entries
        self._reset()

    def _reset(self) -> None:
        self.versions: dict[bytes, list[tuple[int, bytes | None]]] = {}
        self.intents: dict[bytes, Intent] = {}
        self.records: dict[str, Record] = {}
        self._keys: SortedList = SortedList()
        # Timestamp cache: key -> (ts, reader txn or "" if several read at that ts).
        self.read_keys: dict[bytes, tuple[int, str]] = {}
        self.read_spans: list[tuple[bytes, bytes, int, str]] = []
        self.read_floor = 0
        self.clock = 0
        self._clock_before = 0   # the clock before the command being applied (not state)
        self.horizon = 0
        self._applied_index = 0

    # ------------------------------------------------------------------ StateMachine API

    @property
    def applied_index(self) -> int:
        return max(self._applied_index, self.kv.applied_index)

    def apply(self, index: int, command: bytes) -> bytes:
        if not command.startswith(TXN_MAGIC):
            if index <= self._applied_index:
                raise InvariantViolation(
                    f"apply at index {index} after index {self._applied_index} was applied")
            self._applied_index = index
            return self.kv.apply(index, command)
        if index <= self.applied_index:
            raise InvariantViolation(
                f"apply at index {index} after index {self.applied_index} was applied")
        self._applied_index = index
        try:
            cmd = decode(command)
            handler = _COMMANDS[cmd["op"]]
            self._clock_before = self.clock
            self.clock = max(self.clock, int(cmd.get("now", 0)))
            return encode(handler(self, cmd))
        except (DecodeError, KeyError, TypeError, ValueError) as exc:
            return encode({"st": "malformed", "message": str(exc)})

    def query(self, query: bytes) -> bytes:
        if not query.startswith(TXN_MAGIC):
            return self.kv.query(query)
        try:
            q = decode(query)
            limit = min(int(q.get("limit", SWEEP_PAGE)), SWEEP_PAGE)
            if q["op"] == "stale_intents":
                return encode({"st": "ok", "intents": self.stale_intents(int(q["now"]), limit)})
            if q["op"] == "unresolved":
                return encode({"st": "ok", "records": self.unresolved_records(limit)})
            raise KeyError(q["op"])
        except (DecodeError, KeyError, TypeError, ValueError) as exc:
            return encode({"st": "malformed", "message": str(exc)})

    # ------------------------------------------------------------------ reads

    def visible(self, key: bytes, ts: int) -> tuple[int, bytes | None] | None:
        """The committed version of `key` with the largest timestamp at or below `ts`."""
        versions = self.versions.get(key)
        if not versions:
            return None
        i = bisect_right(versions, ts, key=lambda v: v[0])
        return versions[i - 1] if i else None

    def _newest_in(self, key: bytes, low: int, high: int) -> int | None:
        """The timestamp of the newest committed version of `key` in (low, high]."""
        versions = self.versions.get(key) or []
        i = bisect_right(versions, high, key=lambda v: v[0])
        if i and versions[i - 1][0] > low:
            return versions[i - 1][0]
        return None

    def _read_one(self, key: bytes, txn: str, ts: int, limit: int) -> dict[str, Any] | None:
        """None if the read of `key` can proceed, else the answer that stops it: an intent
        of another transaction at or below the uncertainty limit (it must be resolved first),
        or a committed version in the uncertainty interval (ts, limit] (restart above it)."""
        limit = max(limit, ts)  # an intent at or below the read timestamp always conflicts
        intent = self.intents.get(key)
        if intent is not None and intent.txn != txn and intent.ts <= limit:
            return _intent_answer(key, intent)
        newest = self._newest_in(key, ts, limit)
        if newest is not None:
            return {"st": "uncertain", "vts": newest}
        return None

    def _note_read(self, key: bytes, ts: int, txn: str) -> None:
        old = self.read_keys.get(key)
        if old is None or ts > old[0]:
            self.read_keys[key] = (ts, txn)
        elif ts == old[0] and old[1] != txn:
            self.read_keys[key] = (ts, "")
        self._bound_reads()

    def _bound_reads(self) -> None:
        if len(self.read_keys) + len(self.read_spans) <= self.max_read_entries:
            return
        # Deterministic: drop the lowest-timestamp half, raise the floor above all of them.
        entries = sorted(self.read_keys.items(), key=lambda kv: (kv[1][0], kv[0]))
        drop = entries[: len(entries) // 2 + 1]
        for key, (ts, _) in drop:
            self.read_floor = max(self.read_floor, ts)
            del self.read_keys[key]
        if len(self.read_spans) > self.max_read_entries // 2:
            self.read_spans.sort(key=lambda s: (s[2], s[0], s[1]))
            cut = len(self.read_spans) // 2 + 1
            for span in self.read_spans[:cut]:
                self.read_floor = max(self.read_floor, span[2])
            del self.read_spans[:cut]

    def _read_above(self, key: bytes, txn: str) -> int:
        """The lowest timestamp another transaction may write `key` at (timestamp cache)."""
        low = self.read_floor + 1
        seen = self.read_keys.get(key)
        if seen is not None and seen[1] != txn:
            low = max(low, seen[0] + 1)
        for start, end, ts, reader in self.read_spans:
            if reader != txn and start <= key and (not end or key < end):
                low = max(low, ts + 1)
        return low

    def _cmd_read(self, cmd: dict[str, Any]) -> dict[str, Any]:
        key = bytes.fromhex(cmd["key"])
        txn, ts, limit = cmd["txn"], int(cmd["ts"]), int(cmd["limit"])
        stop = self._compacted(ts) or self._read_one(key, txn, ts, limit)
        if stop is not None:
            return stop
        self._note_read(key, ts, txn)
        intent = self.intents.get(key)
        if intent is not None and intent.txn == txn:
            return {"st": "ok", "value": _hex(intent.value), "clock": self.clock}
        seen = self.visible(key, ts)
        return {"st": "ok", "value": _hex(seen[1] if seen else None), "clock": self.clock}

    def _cmd_scan(self, cmd: dict[str, Any]) -> dict[str, Any]:
        start, end = bytes.fromhex(cmd["start"]), bytes.fromhex(cmd["end"])
        txn, ts, limit = cmd["txn"], int(cmd["ts"]), int(cmd["limit"])
        compacted = self._compacted(ts)
        if compacted is not None:
            return compacted
        rows: list[list[str]] = []
        stop_key = len(self._keys) if not end else self._keys.bisect_left(end)
        for i in range(self._keys.bisect_left(start), stop_key):
            key = self._keys[i]
            stop = self._read_one(key, txn, ts, limit)
            if stop is not None:
                return stop
        for i in range(self._keys.bisect_left(start), stop_key):
            key = self._keys[i]
            intent = self.intents.get(key)
            if intent is not None and intent.txn == txn:
                value = intent.value
            else:
                seen = self.visible(key, ts)
                value = seen[1] if seen else None
            if value is not None:
                rows.append([key.hex(), value.hex()])
        self.read_spans.append((start, end, ts, txn))
        self._bound_reads()
        return {"st": "ok", "rows": rows, "clock": self.clock}

    # ------------------------------------------------------------------ writes

    def _conflict(self, keys: list[bytes], txn: str) -> dict[str, Any] | None:
        for key in keys:
            intent = self.intents.get(key)
            if intent is not None and intent.txn != txn:
                return _intent_answer(key, intent)
        return None

    def _write_ts(self, key: bytes, txn: str, ts: int) -> tuple[int, bool]:
        """The timestamp a write of `key` at `ts` takes: above the timestamp cache and above
        the newest committed version (write-too-old, reported for snapshot isolation)."""
        out = max(ts, self._read_above(key, txn))
        versions = self.versions.get(key)
        too_old = bool(versions) and versions[-1][0] >= ts  # type: ignore[index]
        if versions:
            out = max(out, versions[-1][0] + 1)
        return out, too_old

    def _cmd_intent(self, cmd: dict[str, Any]) -> dict[str, Any]:
        txn, ts, start = cmd["txn"], int(cmd["ts"]), int(cmd["start"])
        anchor = bytes.fromhex(cmd["anchor"])
        writes = [(bytes.fromhex(k), _unhex(v)) for k, v in cmd["writes"]]
        conflict = self._conflict([k for k, _ in writes], txn)
        if conflict is not None:
            return conflict
        written, too_old = ts, False
        for key, value in writes:
            own = self.intents.get(key)
            if own is not None:
                # A retry or a duplicate: the intent stays at the timestamp it was first
                # written at (it has guarded every read at or above it since), never lower
                # or higher, so the answer is the same whichever copy the coordinator hears.
                written = max(written, own.ts)
                too_old = too_old or own.too_old
                continue
            at, old = self._write_ts(key, txn, ts)
            too_old = too_old or old
            written = max(written, at)
            self.intents[key] = Intent(txn, at, value, anchor, start, old)
            if key not in self.versions:
                self._keys.add(key)
        return {"st": "ok", "ts": written, "too_old": too_old, "clock": self.clock}

    def _install(self, key: bytes, ts: int, value: bytes | None) -> None:
        versions = self.versions.setdefault(key, [])
        self._collect(versions)
        i = bisect_right(versions, ts, key=lambda v: v[0])
        if i and versions[i - 1][0] == ts:
            return  # already installed (a duplicate resolution): same txn, same value
        insort(versions, (ts, value), key=lambda v: v[0])
        if key not in self._keys:
            self._keys.add(key)

    def _collect(self, versions: list[tuple[int, bytes | None]]) -> None:
        """Raise the horizon to the retention behind the group's clock and drop the versions
        of this key no read at or above it can see (all but the newest at or below it)."""
        wall = wall_ns(self.clock) - self.retention_ns
        if wall > 0:
            self.horizon = max(self.horizon, wall << 32)
        i = bisect_right(versions, self.horizon, key=lambda v: v[0])
        if i > 1:
            del versions[: i - 1]

    def _compacted(self, ts: int) -> dict[str, Any] | None:
        if ts < self.horizon:
            return {"st": "compacted", "horizon": self.horizon, "clock": self.clock}
        return None

    def _drop_intent(self, key: bytes) -> None:
        del self.intents[key]
        if key not in self.versions:
            self._keys.remove(key)

    def _cmd_resolve(self, cmd: dict[str, Any]) -> dict[str, Any]:
        txn, status, ts = cmd["txn"], cmd["status"], int(cmd["ts"])
        if status not in (COMMITTED, ABORTED):
            raise ValueError(f"resolve to {status}")
        resolved = 0
        for key in (bytes.fromhex(k) for k in cmd["keys"]):
            intent = self.intents.get(key)
            if intent is None or intent.txn != txn:
                continue
            if status == COMMITTED:
                # The intent becomes a version at the commit timestamp (>= intent.ts).
                self._install(key, ts, intent.value)
            self._drop_intent(key)
            resolved += 1
        return {"st": "ok", "resolved": resolved, "clock": self.clock}

    # ------------------------------------------------------------------ records

    def _live(self, start: int, heartbeat: int) -> bool:
        return wall_ns(self.clock) - wall_ns(max(start, heartbeat)) <= self.expiry_ns

    def _cmd_end(self, cmd: dict[str, Any]) -> dict[str, Any]:
        txn, status, start, ts = cmd["txn"], cmd["status"], int(cmd["start"]), int(cmd["ts"])
        if status not in (STAGING, COMMITTED, ABORTED):
            raise ValueError(f"end with status {status}")
        record = self.records.get(txn)
        if record is not None and record.status in FINAL:
            return _record_answer(record)
        if record is not None and record.status == STAGING:
            # Parallel commits: STAGING at ts with every intent at or below ts is committed
            # (implicitly). The coordinator confirms that with COMMITTED at the same ts; a
            # COMMITTED at a higher ts or an ABORTED means it saw an intent above ts, so the
            # transaction is not implicitly committed and may still be aborted if expired.
            if status == COMMITTED and ts == record.ts:
                record.status = COMMITTED
            elif status == COMMITTED and self._live(start, record.heartbeat):
                record.status, record.ts = COMMITTED, ts
            elif status != STAGING:
                record.status = ABORTED
            return _record_answer(record)
        if record is None and not self._live(start, 0):
            record = self.records[txn] = Record(ABORTED, 0, start, 0)
            return _record_answer(record)
        if record is not None and status != ABORTED and not self._live(start,
                                                                         record.heartbeat):
            record.status = ABORTED
            return _record_answer(record)
        keys = [bytes.fromhex(k) for k in cmd.get("keys", [])]
        heartbeat = record.heartbeat if record else 0
        self.records[txn] = Record(status, ts, start, heartbeat, keys)
        self._gc_records()
        return _record_answer(self.records[txn])

    def _cmd_recover(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """The outcome a recovery found for a STAGING record (COMMITTED if every promised
        intent was found at or below its timestamp, else ABORTED, the missing ones now
        prevented); applies only if the record is still STAGING at that timestamp."""
        record = self.records.get(cmd["txn"])
        if cmd["status"] not in FINAL:
            raise ValueError(f"recover to {cmd['status']}")
        if record is None:
            # Finished, its intents resolved, and forgotten (only such records are dropped):
            # whatever intent the recovery met is a stray copy with nothing to install.
            return {"st": ABORTED, "ts": 0, "keys": []}
        if cmd["status"] not in FINAL:
            raise ValueError(f"recover to {cmd['status']}")
        if record.status == STAGING and record.ts == int(cmd["ts"]):
            record.status = cmd["status"]
        return _record_answer(record)

    def _cmd_query_intent(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Is txn's intent on key here at or below ts? If not, prevent it from ever being
        written there: a read at ts by another party pushes any later write of the key above
        ts (CockroachDB's QueryIntent with prevention)."""
        txn, key, ts = cmd["txn"], bytes.fromhex(cmd["key"]), int(cmd["ts"])
        intent = self.intents.get(key)
        found = intent is not None and intent.txn == txn and intent.ts <= ts
        if not found:
            self._note_read(key, ts, "recovery:" + txn)
        return {"st": "ok", "found": found, "clock": self.clock}

    def _cmd_heartbeat(self, cmd: dict[str, Any]) -> dict[str, Any]:
        txn, start, now = cmd["txn"], int(cmd["start"]), int(cmd["now"])
        record = self.records.get(txn)
        if record is None:
            if not self._live(start, 0):
                record = self.records[txn] = Record(ABORTED, 0, start, 0)
            else:
                record = self.records[txn] = Record(PENDING, 0, start, now)
        elif record.status == PENDING:
            if self._live(start, record.heartbeat):
                record.heartbeat = max(record.heartbeat, now)
            else:
                record.status = ABORTED
        return _record_answer(record)

    def _cmd_push(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Abort the pushee if it is not live (or `force`: wound-wait), else report it
        PENDING; a finished pushee is reported as it is (the pusher finishes it)."""
        txn, start, force = cmd["txn"], int(cmd["start"]), bool(cmd.get("force"))
        record = self.records.get(txn)
        if record is None:
            if force or not self._live(start, 0):
                record = self.records[txn] = Record(ABORTED, 0, start, 0)
                return _record_answer(record)
            return {"st": PENDING, "ts": 0, "keys": [], "clock": self.clock}
        expired = not self._live(start, record.heartbeat)
        if record.status == PENDING and (force or expired):
            record.status = ABORTED
        elif record.status == STAGING and not (force or expired):
            return {"st": PENDING, "ts": 0, "keys": [], "clock": self.clock}
        # A STAGING answer: the pusher runs the recovery (query_intent, recover).
        return _record_answer(record)

    def _cmd_resolved(self, cmd: dict[str, Any]) -> dict[str, Any]:
        record = self.records.get(cmd["txn"])
        if record is not None and record.status in FINAL:
            record.keys = []
            if self._droppable(record):
                del self.records[cmd["txn"]]
        self._gc_records()
        return {"st": "ok", "clock": self.clock}

    def _droppable(self, r: Record) -> bool:
        """A finished record no command of its transaction can matter to any more."""
        return (r.status in FINAL and not r.keys
                and wall_ns(self.clock) - wall_ns(max(r.start, r.heartbeat)) > 2 * self.expiry_ns)

    def _gc_records(self) -> None:
        # A sweep reads every record: it runs when consensus time enters a new period of
        # GC_PERIOD_DIVISOR-ths of the expiry, so a commit costs O(1) amortized, and every
        # replica sweeps at the same commands (the clock is replicated state). A record
        # outlives its bound by at most one period: dropping it later is always safe.
        period = max(self.expiry_ns // GC_PERIOD_DIVISOR, 1)
        if wall_ns(self.clock) // period == wall_ns(self._clock_before) // period:
            return
        drop = [txn for txn, r in self.records.items() if self._droppable(r)]
        for txn in drop:
            del self.records[txn]

    # ------------------------------------------------------------------ refresh, 1PC

    def _refresh_fails(self, txn: str, keys: list[bytes], spans: list[tuple[bytes, bytes]],
                       low: int, high: int) -> bool:
        """True if a read at `low` of these keys and spans might differ from one at `high`:
        a committed version in (low, high], or another transaction's intent at or below
        high (it may commit there), or history below `low` already collected."""
        if low < self.horizon:
            return True
        candidates = list(keys)
        for start, end in spans:
            stop = len(self._keys) if not end else self._keys.bisect_left(end)
            candidates.extend(self._keys[i] for i in range(self._keys.bisect_left(start), stop))
        for key in candidates:
            intent = self.intents.get(key)
            if intent is not None and intent.txn != txn and intent.ts <= high:
                return True
            if self._newest_in(key, low, high) is not None:
                return True
        return False

    def _note_reads(self, txn: str, keys: list[bytes], spans: list[tuple[bytes, bytes]],
                    ts: int) -> None:
        for key in keys:
            self._note_read(key, ts, txn)
        for start, end in spans:
            self.read_spans.append((start, end, ts, txn))
        self._bound_reads()

    def _cmd_refresh(self, cmd: dict[str, Any]) -> dict[str, Any]:
        txn, low, high = cmd["txn"], int(cmd["from"]), int(cmd["to"])
        keys = [bytes.fromhex(k) for k in cmd["keys"]]
        spans = [(bytes.fromhex(s), bytes.fromhex(e)) for s, e in cmd["spans"]]
        if self._refresh_fails(txn, keys, spans, low, high):
            return {"st": "fail", "clock": self.clock}
        # The reads now hold up to `high`: nothing can be written under them any more.
        self._note_reads(txn, keys, spans, high)
        return {"st": "ok", "clock": self.clock}

    def _cmd_one_phase(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """A transaction whose every key is in this group commits in this one command."""
        txn, start, read_ts = cmd["txn"], int(cmd["start"]), int(cmd["ts"])
        record = self.records.get(txn)
        if record is not None:
            return _record_answer(record)  # a retry or duplicate: the first copy decided
        writes = [(bytes.fromhex(k), _unhex(v)) for k, v in cmd["writes"]]
        conflict = self._conflict([k for k, _ in writes], txn)
        if conflict is not None:
            return conflict
        if not self._live(start, 0) or read_ts < self.horizon:
            record = self.records[txn] = Record(ABORTED, 0, start, 0)
            return _record_answer(record)
        commit_ts, too_old = read_ts, False
        for key, _ in writes:
            at, old = self._write_ts(key, txn, read_ts)
            commit_ts, too_old = max(commit_ts, at), too_old or old
        keys = [bytes.fromhex(k) for k in cmd["reads"]]
        spans = [(bytes.fromhex(s), bytes.fromhex(e)) for s, e in cmd["spans"]]
        refused = too_old if cmd.get("isolation") == "snapshot" else (
            commit_ts > read_ts and self._refresh_fails(txn, keys, spans, read_ts, commit_ts))
        if refused:
            record = self.records[txn] = Record(ABORTED, 0, start, 0)
            return _record_answer(record)
        if commit_ts > read_ts:
            # Refreshed: the reads now hold up to the commit timestamp, as after a REFRESH.
            self._note_reads(txn, keys, spans, commit_ts)
        for key, value in writes:
            self._install(key, commit_ts, value)
        self.records[txn] = Record(COMMITTED, commit_ts, start, 0)
        self._gc_records()
        return _record_answer(self.records[txn])

    # ------------------------------------------------------------------ recovery

    def stale_intents(self, now: int, limit: int = SWEEP_PAGE) -> list[list[Any]]:
        """Up to `limit` intents whose transaction started more than expiry_ns before `now`,
        in key order: [key, txn, anchor, start] (a recovery sweep pushes each at its
        anchor; what is left is found by the next sweep)."""
        out: list[list[Any]] = []
        for key in sorted(self.intents):
            intent = self.intents[key]
            if wall_ns(now) - wall_ns(intent.start) > self.expiry_ns:
                out.append([key.hex(), intent.txn, intent.anchor.hex(), intent.start])
                if len(out) >= limit:
                    break
        return out

    def unresolved_records(self, limit: int = SWEEP_PAGE) -> list[list[Any]]:
        """Up to `limit` finished records whose intents are not reported resolved:
        [txn, status, ts, keys]."""
        return [[txn, r.status, r.ts, [k.hex() for k in r.keys]]
                for txn, r in sorted(self.records.items())
                if r.status in FINAL and r.keys][:limit]

    # ------------------------------------------------------------------ snapshots

    def snapshot(self) -> bytes:
        return self.state_snapshot() + self.kv.snapshot()

    def state_snapshot(self) -> bytes:
        """The transactional state alone (no wrapped KVStore): a host that snapshots the
        KVStore itself (engine.shard.replica.RangeStateMachine) stores this beside it."""
        state = {
            "applied": self._applied_index, "clock": self.clock, "floor": self.read_floor,
            "horizon": self.horizon,
            "versions": [[k.hex(), [[ts, _hex(v)] for ts, v in vs]]
                         for k, vs in sorted(self.versions.items())],
            "intents": [[k.hex(), i.txn, i.ts, _hex(i.value), i.anchor.hex(), i.start, i.too_old]
                        for k, i in sorted(self.intents.items())],
            "records": [[t, r.status, r.ts, r.start, r.heartbeat, [k.hex() for k in r.keys]]
                        for t, r in sorted(self.records.items())],
            "read_keys": [[k.hex(), ts, t] for k, (ts, t) in sorted(self.read_keys.items())],
            "read_spans": [[s.hex(), e.hex(), ts, t] for s, e, ts, t in self.read_spans],
        }
        body = json.dumps(state, sort_keys=True, separators=(",", ":")).encode()
        return SNAPSHOT_MAGIC + len(body).to_bytes(8, "little") + body

    def span_state(self, start: bytes, end: bytes | None) -> bytes:
        """A state_snapshot() of the versions and intents of [start, end) (end None: to the
        end), for the range split off there (engine.shard.replica). No records: they stay
        in the group of their anchor. Every read recorded on or across the span becomes the
        new state's floor, so no write there can slip under a read that already happened
        (timestamp cache, module docstring); consensus time and horizon carry over."""
        def inside(key: bytes) -> bool:
            return start <= key and (end is None or key < end)

        part = TxnKVStore(expiry_ns=self.expiry_ns, max_read_entries=self.max_read_entries)
        part.retention_ns = self.retention_ns
        part.versions = {k: list(v) for k, v in self.versions.items() if inside(k)}
        part.intents = {k: i for k, i in self.intents.items() if inside(k)}
        floor = self.read_floor
        for key, (ts, _) in self.read_keys.items():
            if inside(key):
                floor = max(floor, ts)
        for low, high, ts, _ in self.read_spans:
            if (not high or start < high) and (end is None or low < end):
                floor = max(floor, ts)
        part.read_floor, part.clock, part.horizon = floor, self.clock, self.horizon
        return part.state_snapshot()

    def restore(self, data: bytes) -> None:
        end = self.restore_state(data)
        self.kv.restore(data[end:])

    def restore_state(self, data: bytes) -> int:
        """Restore the transactional state of a state_snapshot(); the offset it ends at."""
        if not data.startswith(SNAPSHOT_MAGIC):
            raise DecodeError("not a TxnKVStore snapshot")
        n = int.from_bytes(data[4:12], "little")
        try:
            state = json.loads(data[12:12 + n])
        except ValueError as exc:
            raise DecodeError(f"corrupt TxnKVStore snapshot: {exc}") from None
        self._reset()
        self._applied_index = state["applied"]
        self.clock = state["clock"]
        self.read_floor = state["floor"]
        self.horizon = state["horizon"]
        for k, vs in state["versions"]:
            self.versions[bytes.fromhex(k)] = [(ts, _unhex(v)) for ts, v in vs]
        for k, txn, ts, v, anchor, start, too_old in state["intents"]:
            self.intents[bytes.fromhex(k)] = Intent(txn, ts, _unhex(v), bytes.fromhex(anchor),
                                                    start, too_old)
        for t, status, ts, start, hb, keys in state["records"]:
            self.records[t] = Record(status, ts, start, hb, [bytes.fromhex(k) for k in keys])
        self.read_keys = {bytes.fromhex(k): (ts, t) for k, ts, t in state["read_keys"]}
        self.read_spans = [(bytes.fromhex(s), bytes.fromhex(e), ts, t)
                           for s, e, ts, t in state["read_spans"]]
        self._keys = SortedList(set(self.versions) | set(self.intents))
        return 12 + n

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TxnKVStore):
            return NotImplemented
        return self.snapshot() == other.snapshot()

    __hash__ = None  # type: ignore[assignment]


def _intent_answer(key: bytes, intent: Intent) -> dict[str, Any]:
    return {"st": "intent", "key": key.hex(), "txn": intent.txn, "anchor": intent.anchor.hex(),
            "start": intent.start, "ts": intent.ts}


def _record_answer(record: Record) -> dict[str, Any]:
    return {"st": record.status, "ts": record.ts, "keys": [k.hex() for k in record.keys]}


_COMMANDS = {
    "read": TxnKVStore._cmd_read,
    "scan": TxnKVStore._cmd_scan,
    "intent": TxnKVStore._cmd_intent,
    "resolve": TxnKVStore._cmd_resolve,
    "end": TxnKVStore._cmd_end,
    "heartbeat": TxnKVStore._cmd_heartbeat,
    "push": TxnKVStore._cmd_push,
    "resolved": TxnKVStore._cmd_resolved,
    "refresh": TxnKVStore._cmd_refresh,
    "one_phase": TxnKVStore._cmd_one_phase,
    "recover": TxnKVStore._cmd_recover,
    "query_intent": TxnKVStore._cmd_query_intent,
}

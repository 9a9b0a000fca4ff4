"""TxnKVStore, the participant side of replicated transactions: intents, records, the
timestamp cache, uncertainty, 1PC, pushes of abandoned transactions, snapshots."""

from __future__ import annotations

from typing import Any

import pytest

from engine.errors import DecodeError, InvariantViolation
from engine.kv.commands import encode_put, encode_query
from engine.txn.participant import TxnKVStore, decode, encode

MS = 1_000_000
EXPIRY_NS = 100 * MS


def ts(ms: int, logical: int = 0) -> int:
    return ((1_000 + ms) * MS << 32) | logical


class Group:
    def __init__(self) -> None:
        self.sm = TxnKVStore(expiry_ns=EXPIRY_NS)
        self.index = 0

    def __call__(self, op: str, now: int = 0, **fields: Any) -> dict[str, Any]:
        self.index += 1
        return decode(self.sm.apply(self.index, encode({"op": op, "now": now, **fields})))


def intent(g: Group, txn: str, key: bytes, value: bytes | None, at: int,
           anchor: bytes = b"a", start: int | None = None) -> dict[str, Any]:
    return g("intent", now=at, txn=txn, ts=at, start=at if start is None else start,
             anchor=anchor.hex(), writes=[[key.hex(), None if value is None else value.hex()]])


def read(g: Group, txn: str, key: bytes, at: int, limit: int | None = None) -> dict[str, Any]:
    return g("read", now=at, txn=txn, key=key.hex(), ts=at,
             limit=at if limit is None else limit)


def commit(g: Group, txn: str, key: bytes, value: bytes, at: int) -> None:
    assert intent(g, txn, key, value, at)["st"] == "ok"
    assert g("end", now=at, txn=txn, status="COMMITTED", ts=at, start=at,
             keys=[key.hex()])["st"] == "COMMITTED"
    g("resolve", now=at, txn=txn, status="COMMITTED", ts=at, keys=[key.hex()])


def test_intent_is_invisible_until_resolved_then_a_version_at_the_commit_timestamp() -> None:
    g = Group()
    assert intent(g, "t1", b"k", b"v", ts(10))["ts"] == ts(10)
    # A read below the intent's timestamp ignores it; at or above, it must resolve it first.
    assert read(g, "t2", b"k", ts(5))["value"] is None
    met = read(g, "t2", b"k", ts(20))
    assert met["st"] == "intent" and met["txn"] == "t1"
    g("resolve", now=ts(30), txn="t1", status="COMMITTED", ts=ts(25), keys=[b"k".hex()])
    assert read(g, "t2", b"k", ts(24))["value"] is None
    assert read(g, "t2", b"k", ts(25))["value"] == b"v".hex()
    assert not g.sm.intents


def test_abort_removes_the_intent_and_a_second_writer_is_blocked_until_then() -> None:
    g = Group()
    intent(g, "t1", b"k", b"v", ts(10))
    assert intent(g, "t2", b"k", b"w", ts(11))["st"] == "intent"
    g("resolve", now=ts(12), txn="t1", status="ABORTED", ts=0, keys=[b"k".hex()])
    assert intent(g, "t2", b"k", b"w", ts(13))["st"] == "ok"


def test_a_write_below_a_read_is_pushed_above_it() -> None:
    g = Group()
    read(g, "r", b"k", ts(50))
    assert intent(g, "w", b"k", b"v", ts(10))["ts"] == ts(50, 1)
    # The reader's own later write is not pushed by its own read.
    g2 = Group()
    read(g2, "r", b"k", ts(50))
    assert intent(g2, "r", b"k", b"v", ts(50))["ts"] == ts(50)


def test_a_duplicate_intent_keeps_its_first_timestamp() -> None:
    g = Group()
    first = intent(g, "t", b"k", b"v", ts(10))
    read(g, "other", b"j", ts(90))
    read(g, "other", b"k", ts(5))
    assert intent(g, "t", b"k", b"v", ts(10)) == {**first, "clock": g.sm.clock}


def test_uncertainty_interval_restarts_a_read_that_may_follow_a_write() -> None:
    g = Group()
    commit(g, "t1", b"k", b"v", ts(10))
    answer = read(g, "t2", b"k", ts(8), limit=ts(12))
    assert answer == {"st": "uncertain", "vts": ts(10)}
    assert read(g, "t2", b"k", ts(8), limit=ts(9))["value"] is None


def test_one_phase_commit_and_its_refresh_in_one_command() -> None:
    g = Group()
    read(g, "t", b"k", ts(10))
    ok = g("one_phase", now=ts(11), txn="t", start=ts(10), ts=ts(10),
           writes=[[b"k".hex(), b"1".hex()]], reads=[b"k".hex()], spans=[])
    assert ok["st"] == "COMMITTED" and ok["ts"] == ts(10)
    # A duplicate answers the same and applies nothing again.
    again = g("one_phase", now=ts(12), txn="t", start=ts(10), ts=ts(10),
              writes=[[b"k".hex(), b"1".hex()]], reads=[b"k".hex()], spans=[])
    assert again == ok and len(g.sm.versions[b"k"]) == 1
    # t2 read k at 5 (before t's write at 10): its write is pushed above, its read is stale.
    stale = g("one_phase", now=ts(13), txn="t2", start=ts(5), ts=ts(5),
              writes=[[b"k".hex(), b"2".hex()]], reads=[b"k".hex()], spans=[])
    assert stale["st"] == "ABORTED"
    # Under snapshot isolation the same write is refused too (write-too-old).
    si = g("one_phase", now=ts(14), txn="t3", start=ts(5), ts=ts(5),
           writes=[[b"k".hex(), b"3".hex()]], reads=[], spans=[], isolation="snapshot")
    assert si["st"] == "ABORTED"
    assert [v for _, v in g.sm.versions[b"k"]] == [b"1"]


def test_refresh_fails_on_a_newer_version_or_a_foreign_intent_in_the_window() -> None:
    g = Group()
    commit(g, "w", b"k", b"v", ts(20))
    fail = g("refresh", now=ts(30), txn="t", keys=[b"k".hex()], spans=[], **{
        "from": ts(10), "to": ts(25)})
    assert fail["st"] == "fail"
    ok = g("refresh", now=ts(30), txn="t", keys=[b"k".hex()], spans=[], **{
        "from": ts(20), "to": ts(25)})
    assert ok["st"] == "ok"
    intent(g, "x", b"s/1", b"v", ts(22))
    span = g("refresh", now=ts(30), txn="t", keys=[], spans=[[b"s/".hex(), b"s0".hex()]],
             **{"from": ts(20), "to": ts(25)})
    assert span["st"] == "fail"


def test_push_aborts_only_an_expired_transaction_and_then_it_cannot_commit() -> None:
    g = Group()
    live = g("push", now=ts(50), txn="t", start=ts(0))
    assert live["st"] == "PENDING"
    dead = g("push", now=ts(101), txn="t", start=ts(0))
    assert dead["st"] == "ABORTED"
    end = g("end", now=ts(102), txn="t", status="COMMITTED", ts=ts(1), start=ts(0), keys=[])
    assert end["st"] == "ABORTED"
    # A transaction with no record and an expired start cannot commit either.
    late = g("end", now=ts(300), txn="u", status="COMMITTED", ts=ts(1), start=ts(150), keys=[])
    assert late["st"] == "ABORTED"


def test_heartbeats_keep_a_transaction_live_and_wound_wait_forces_an_abort() -> None:
    g = Group()
    assert g("heartbeat", now=ts(90), txn="t", start=ts(0))["st"] == "PENDING"
    assert g("push", now=ts(150), txn="t", start=ts(0))["st"] == "PENDING"
    assert g("push", now=ts(150), txn="t", start=ts(0), force=True)["st"] == "ABORTED"


def test_push_reports_a_committed_transaction_for_the_pusher_to_finish() -> None:
    g = Group()
    g("end", now=ts(1), txn="t", status="COMMITTED", ts=ts(1), start=ts(0),
      keys=[b"k".hex()])
    answer = g("push", now=ts(500), txn="t", start=ts(0), force=True)
    assert answer["st"] == "COMMITTED" and answer["ts"] == ts(1)
    assert g.sm.unresolved_records() == [["t", "COMMITTED", ts(1), [b"k".hex()]]]
    g("resolved", now=ts(501), txn="t")
    assert g.sm.unresolved_records() == [] and "t" not in g.sm.records


def test_timestamp_cache_is_bounded_and_its_floor_keeps_writes_above_dropped_reads() -> None:
    g = Group()
    g.sm.max_read_entries = 8
    for i in range(20):
        read(g, "r", f"k{i:02d}".encode(), ts(i))
    assert len(g.sm.read_keys) <= 8
    assert intent(g, "w", b"k00", b"v", ts(0))["ts"] > ts(0)
    assert intent(g, "w", b"zz", b"v", ts(0))["ts"] > g.sm.read_floor


def test_snapshot_round_trip_carries_the_transaction_state() -> None:
    g = Group()
    g.sm.apply(1000, encode_put(b"plain", b"p"))
    g.index = 1000
    commit(g, "t1", b"k", b"v", ts(10))
    intent(g, "t2", b"j", b"w", ts(11))
    read(g, "t3", b"x", ts(40))
    g("scan", now=ts(41), txn="t3", start=b"a".hex(), end=b"z".hex(), ts=ts(41), limit=ts(41))
    copy = TxnKVStore(expiry_ns=EXPIRY_NS)
    copy.restore(g.sm.snapshot())
    assert copy == g.sm and copy.snapshot() == g.sm.snapshot()
    assert copy.kv.get(b"plain") == b"p"
    assert decode(copy.query(encode({"op": "unresolved", "now": 0}))) == {
        "st": "ok", "records": g.sm.unresolved_records()}
    with pytest.raises(DecodeError):
        copy.restore(b"nope")


def test_plain_kv_commands_pass_through_and_bad_commands_are_answered() -> None:
    g = TxnKVStore()
    g.apply(1, encode_put(b"a", b"1"))
    assert g.query(encode_query(b"a")) == g.kv.query(encode_query(b"a"))
    assert decode(g.apply(2, encode({"op": "nope"})))["st"] == "malformed"
    assert decode(g.apply(3, b"TXN1{"))["st"] == "malformed"
    with pytest.raises(InvariantViolation):
        g.apply(3, encode({"op": "read"}))


def test_an_intent_at_or_below_the_read_timestamp_conflicts_whatever_the_limit() -> None:
    # After an uncertainty restart the read timestamp may pass the first attempt's limit.
    g = Group()
    intent(g, "w", b"k", b"v", ts(10))
    assert read(g, "r", b"k", ts(20), limit=ts(5))["st"] == "intent"


def test_a_retried_intent_answers_write_too_old_like_the_first_copy() -> None:
    # Snapshot isolation aborts on write-too-old; a retry whose first answer was lost must
    # hear it again, or two transfers that read the same balance both commit.
    g = Group()
    commit(g, "w", b"k", b"v", ts(20))
    first = intent(g, "t", b"k", b"x", ts(10))
    assert first["too_old"] is True
    assert intent(g, "t", b"k", b"x", ts(10))["too_old"] is True


def test_a_pushed_one_phase_commit_holds_its_reads_up_to_its_commit_timestamp() -> None:
    # t reads a and b at 10, writes b; b's read at 50 pushes it to commit at 50.1. A write
    # of a below that would slip under t's read of a (write skew), so it is pushed above.
    g = Group()
    read(g, "t", b"a", ts(10))
    read(g, "t", b"b", ts(10))
    read(g, "r", b"b", ts(50))
    ok = g("one_phase", now=ts(51), txn="t", start=ts(10), ts=ts(10),
           writes=[[b"b".hex(), b"1".hex()]], reads=[b"a".hex(), b"b".hex()], spans=[])
    assert ok["st"] == "COMMITTED" and ok["ts"] == ts(50, 1)
    assert intent(g, "u", b"a", b"2", ts(20))["ts"] > ts(50, 1)


def test_parallel_commits_staging_is_committed_iff_every_intent_is_at_or_below_it() -> None:
    g = Group()
    staged = g("end", now=ts(10), txn="t", status="STAGING", ts=ts(10), start=ts(10),
               keys=[b"a".hex(), b"b".hex()])
    assert staged["st"] == "STAGING"
    intent(g, "t", b"a", b"1", ts(10))
    # Live: a pusher waits; expired (or wounding): it gets STAGING and runs the recovery.
    assert g("push", now=ts(20), txn="t", start=ts(10))["st"] == "PENDING"
    assert g("push", now=ts(20), txn="t", start=ts(10), force=True)["st"] == "STAGING"
    found = g("query_intent", now=ts(21), txn="t", key=b"a".hex(), ts=ts(10))
    missing = g("query_intent", now=ts(21), txn="t", key=b"b".hex(), ts=ts(10))
    assert found["found"] is True and missing["found"] is False
    # The missing intent is prevented: written now, it lands above the staging timestamp.
    assert intent(g, "t", b"b", b"2", ts(10))["ts"] > ts(10)
    assert g("recover", now=ts(22), txn="t", ts=ts(10), status="ABORTED")["st"] == "ABORTED"
    # The coordinator, which saw b above the staging timestamp, cannot commit any more.
    late = g("end", now=ts(23), txn="t", status="COMMITTED", ts=ts(10, 5), start=ts(10),
             keys=[])
    assert late["st"] == "ABORTED"


def test_an_implicit_commit_is_confirmed_whatever_the_clock() -> None:
    g = Group()
    g("end", now=ts(10), txn="t", status="STAGING", ts=ts(10), start=ts(10), keys=[])
    confirmed = g("end", now=ts(900), txn="t", status="COMMITTED", ts=ts(10), start=ts(10),
                  keys=[])
    assert confirmed["st"] == "COMMITTED"
    # A recovery arriving after that (or after the record is forgotten) changes nothing.
    assert g("recover", now=ts(901), txn="t", ts=ts(10), status="ABORTED")["st"] == "COMMITTED"
    assert g("recover", now=ts(901), txn="gone", ts=ts(10), status="COMMITTED")["st"] == \
        "ABORTED"


def test_history_is_collected_behind_the_horizon_and_older_reads_are_refused() -> None:
    g = Group()  # retention: max(Limits.mvcc_retention_s, 2 * expiry) = 60 s
    for second in range(5):
        commit(g, f"t{second}", b"k", b"v%d" % second, ts(second * 30_000))
    # The clock is at 120 s: the horizon is 60 s (+1 s base); versions below it but the
    # newest are gone, the rest readable.
    assert [v for _, v in g.sm.versions[b"k"]] == [b"v2", b"v3", b"v4"]
    assert read(g, "r", b"k", ts(60_000))["value"] == b"v2".hex()
    assert read(g, "r", b"k", ts(10_000))["st"] == "compacted"
    fail = g("refresh", now=ts(120_001), txn="r", keys=[b"k".hex()], spans=[],
             **{"from": ts(10_000), "to": ts(120_000)})
    assert fail["st"] == "fail"
    copy = TxnKVStore(expiry_ns=EXPIRY_NS)
    copy.restore(g.sm.snapshot())
    assert copy.horizon == g.sm.horizon > 0


def test_sweep_queries_answer_one_bounded_page() -> None:
    g = Group()
    for i in range(5):
        intent(g, f"t{i}", b"k%d" % i, b"v", ts(0))
    page = decode(g.sm.query(encode({"op": "stale_intents", "now": ts(500), "limit": 3})))
    assert [row[1] for row in page["intents"]] == ["t0", "t1", "t2"]
    assert g.sm.stale_intents(ts(50)) == []  # not expired yet

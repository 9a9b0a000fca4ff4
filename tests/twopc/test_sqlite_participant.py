"""A sqlite3 database as a 2PC participant: the PEP 249 tpc_* shape is all engine.twopc needs.

sqlite has no PREPARE TRANSACTION, so SqliteParticipant makes "prepared" durable the way a
redo log does: tpc_prepare checks the branch's statements against the database inside a
savepoint, rolls them back, and commits them as a row of `_tpc_prepared` in the same sqlite
transaction; tpc_commit replays them and deletes the row atomically; tpc_rollback deletes the
row; tpc_recover lists the rows. A branch survives closing and reopening the database.
Limitation of the example: it holds no locks between prepare and commit, so a concurrent
writer could make the replay fail (a real resource keeps the prepared branch's locks).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from harness import COORDINATOR, Cluster

from engine.twopc import TwoPCConfig, Vote, Xid

P1, P2 = 2, 3


class SqliteParticipant:
    """PEP 249-shaped two-phase commit over one sqlite3 database file."""

    def __init__(self, path: Path) -> None:
        self.connection = sqlite3.connect(path, isolation_level=None)  # explicit BEGINs
        self.connection.execute(
            "CREATE TABLE IF NOT EXISTS _tpc_prepared (format_id INTEGER, gtrid TEXT, "
            "bqual TEXT, statements TEXT, PRIMARY KEY (format_id, gtrid, bqual))")
        self.pending: dict[Xid, list[tuple[str, list[object]]]] = {}

    def execute(self, xid: Xid, sql: str, *params: object) -> None:
        """Work of the branch, applied at commit."""
        self.pending[xid].append((sql, list(params)))

    def tpc_begin(self, xid: Xid) -> None:
        self.pending[xid] = []

    def tpc_prepare(self, xid: Xid) -> None:
        statements = self.pending.pop(xid)
        db = self.connection
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("SAVEPOINT check_branch")
            for sql, params in statements:
                db.execute(sql, params)            # raises on a constraint: the "no" vote
            db.execute("ROLLBACK TO check_branch")
            db.execute("RELEASE check_branch")
            db.execute("INSERT INTO _tpc_prepared VALUES (?, ?, ?, ?)",
                       (*xid, json.dumps(statements)))
            db.execute("COMMIT")
        except sqlite3.Error:
            db.execute("ROLLBACK")
            raise

    def tpc_commit(self, xid: Xid) -> None:
        db = self.connection
        db.execute("BEGIN IMMEDIATE")
        [(text,)] = db.execute(
            "SELECT statements FROM _tpc_prepared WHERE format_id=? AND gtrid=? AND bqual=?",
            xid).fetchall()
        for sql, params in json.loads(text):
            db.execute(sql, params)
        db.execute("DELETE FROM _tpc_prepared WHERE format_id=? AND gtrid=? AND bqual=?", xid)
        db.execute("COMMIT")

    def tpc_rollback(self, xid: Xid) -> None:
        self.pending.pop(xid, None)
        self.connection.execute(
            "DELETE FROM _tpc_prepared WHERE format_id=? AND gtrid=? AND bqual=?", xid)

    def tpc_recover(self) -> list[Xid]:
        rows = self.connection.execute(
            "SELECT format_id, gtrid, bqual FROM _tpc_prepared ORDER BY gtrid").fetchall()
        return [Xid(*row) for row in rows]

    def close(self) -> None:
        self.connection.close()


def _bank(path: Path, balances: dict[str, int]) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE accounts (name TEXT PRIMARY KEY, "
                   "balance INTEGER NOT NULL CHECK (balance >= 0))")
        db.executemany("INSERT INTO accounts VALUES (?, ?)", balances.items())
    db.close()


def _balances(resource: SqliteParticipant) -> dict[str, int]:
    return dict(resource.connection.execute("SELECT name, balance FROM accounts").fetchall())


def _transfer(cluster: Cluster, txid: str, amount: int) -> None:
    """alice (bank 1) pays bob (bank 2)."""
    assert cluster.coordinator is not None
    cluster.coordinator.begin(txid, [P1, P2])
    for node in (P1, P2):
        participant = cluster.participants[node]
        assert participant is not None
        participant.begin(txid)
        cluster.process(node)
    bank1, bank2 = cluster.resources[P1], cluster.resources[P2]
    assert isinstance(bank1, SqliteParticipant) and isinstance(bank2, SqliteParticipant)
    bank1.execute(Xid(0, txid, str(P1)),
                  "UPDATE accounts SET balance = balance - ? WHERE name = 'alice'", amount)
    bank2.execute(Xid(0, txid, str(P2)),
                  "UPDATE accounts SET balance = balance + ? WHERE name = 'bob'", amount)
    cluster.coordinator.commit(txid)
    cluster.process(COORDINATOR)


def _cluster(tmp_path: Path) -> Cluster:
    _bank(tmp_path / "bank1.db", {"alice": 100})
    _bank(tmp_path / "bank2.db", {"bob": 0})
    return Cluster(2, config=TwoPCConfig(decision_timeout_ticks=3, retry_ticks=2), resources={
        P1: SqliteParticipant(tmp_path / "bank1.db"),
        P2: SqliteParticipant(tmp_path / "bank2.db")})


def test_a_transfer_between_two_sqlite_databases_commits_atomically(tmp_path: Path) -> None:
    cluster = _cluster(tmp_path)
    _transfer(cluster, "pay-30", 30)
    cluster.settle(3)
    assert cluster.coordinator_outcomes == {"pay-30": True}
    bank1, bank2 = cluster.resources[P1], cluster.resources[P2]
    assert isinstance(bank1, SqliteParticipant) and isinstance(bank2, SqliteParticipant)
    assert _balances(bank1) == {"alice": 70} and _balances(bank2) == {"bob": 30}
    # An overdraft fails alice's CHECK at prepare: a "no" vote, rolled back at both.
    _transfer(cluster, "pay-500", 500)
    cluster.settle(3)
    assert cluster.coordinator_outcomes["pay-500"] is False
    assert _balances(bank1) == {"alice": 70} and _balances(bank2) == {"bob": 30}
    assert bank1.tpc_recover() == bank2.tpc_recover() == []


def test_a_prepared_sqlite_branch_survives_a_crash_and_is_resolved(tmp_path: Path) -> None:
    cluster = _cluster(tmp_path)
    _transfer(cluster, "pay-40", 40)
    while cluster.network and not isinstance(cluster.network[0], Vote):
        cluster.deliver()                                  # both prepare and vote yes
    votes = list(cluster.network)
    cluster.network.clear()
    assert cluster.coordinator is not None
    for vote in votes:
        cluster.coordinator.step(vote)
    cluster.process(COORDINATOR, send=False)               # commit forced, then it dies
    cluster.crash(COORDINATOR)
    # Bank 1's process dies too; its prepared branch is on disk.
    cluster.crash(P1)
    bank1 = cluster.resources[P1]
    assert isinstance(bank1, SqliteParticipant)
    bank1.close()
    reopened = SqliteParticipant(tmp_path / "bank1.db")
    assert reopened.tpc_recover() == [Xid(0, "pay-40", str(P1))]
    cluster.resources[P1] = reopened
    cluster.restart(P1)
    cluster.settle(30)
    # Blocked: both prepared, nobody alive knows the decision.
    assert {n: [x.global_transaction_id for x in xids]
            for n, xids in cluster.in_doubt().items()} == {P1: ["pay-40"], P2: ["pay-40"]}
    assert _balances(reopened) == {"alice": 100}
    cluster.restart(COORDINATOR)
    cluster.settle(5)
    bank2 = cluster.resources[P2]
    assert isinstance(bank2, SqliteParticipant)
    assert cluster.in_doubt() == {}
    assert _balances(reopened) == {"alice": 60} and _balances(bank2) == {"bob": 40}

"""The participant's resource interface, shaped like PEP 249's two-phase commit extensions.

Any resource that can hold a transaction in a durable *prepared* state takes part in
engine.twopc: the KV state machine, a database connection (psycopg2 and python-oracledb
implement exactly these methods), or a file. The participant core never calls it: it asks
its driver to (Ready.resource_calls), so the core stays sans-IO.

PEP 249, "Optional Two-Phase Commit Extensions":
  tpc_begin(xid)      start a transaction branch; the application then does its work on it
  tpc_prepare()       make it durable and promise to commit on request (the "yes" vote);
                      raising means "no"
  tpc_commit(xid)     commit a prepared branch (also after a restart)
  tpc_rollback(xid)   roll back a branch, prepared or not; an unknown or finished xid is a
                      no-op (a rollback may be repeated after a crash or a late prepare)
  tpc_recover()       the xids prepared and not yet committed or rolled back (after a crash)

One difference: PEP 249's tpc_prepare() acts on the connection's current branch; a resource
here may hold many branches at once, so tpc_prepare takes the xid.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable


class Xid(NamedTuple):
    """A transaction branch id (PEP 249 Connection.xid; X/Open XA): the global transaction
    id names the transaction, the branch qualifier the participant."""

    format_id: int
    global_transaction_id: str
    branch_qualifier: str


def xid_of(txid: str, participant_id: int) -> Xid:
    """The branch of transaction `txid` at participant `participant_id`."""
    return Xid(0, txid, str(participant_id))


@runtime_checkable
class TPCResource(Protocol):
    def tpc_begin(self, xid: Xid) -> None: ...
    def tpc_prepare(self, xid: Xid) -> None: ...
    def tpc_commit(self, xid: Xid) -> None: ...
    def tpc_rollback(self, xid: Xid) -> None: ...
    def tpc_recover(self) -> list[Xid]: ...

"""`members force-new-cluster --data-dir DIR --node-id N --yes`: disaster recovery when a
quorum is lost for good (etcd's --force-new-cluster), Raft only. UNSAFE by design.

It rewrites the stopped node's stored configuration to itself alone: one CONFIG entry whose
membership is {N} (its address and the recent ADMIN request ids kept), appended durably to
the WAL after the node's last entry, in a term above every term the node has seen. Nothing
else changes: the snapshot, every log entry and the cluster id stay. A configuration is in
force once appended (Raft thesis §4.1), so the node restarts as the only voter, elects
itself and commits its whole log (its entries not yet known committed included, as any new
leader would, Raft §5.4.2); then others join with `serve --join` and `members add`.

Why it is unsafe: a write the lost members acknowledged that never reached this node is
gone, and if a lost member comes back while this node serves, the old members can still
form their own quorum: two clusters, each accepting writes.
"""

from __future__ import annotations

import os
from typing import Any

from engine.errors import ConfigError, DecodeError
from engine.messages import Entry, EntryKind
from engine.paxos.ballot import make_ballot
from engine.raft.membership import Membership, decode_membership, encode_membership
from engine.types import HardState, parse_address

# Every Paxos ballot is at least this (round >= 1 above the node id's bits,
# engine.paxos.ballot); a Raft term gets there only after 65536 elections. The WAL does not
# record its protocol, so this tells a Paxos data dir apart before anything is written.
PAXOS_BALLOT_FLOOR = make_ballot(1, 1)

WARNING = (
    "WARNING: force-new-cluster makes node {node} the only member of a new cluster with "
    "the data in {data_dir}. Writes acknowledged by the lost members that never reached "
    "this node are LOST, and if any other member is still alive the cluster splits in two. "
    "Run it only when a quorum is gone for good, with every other member stopped."
)


def force_new_cluster(data_dir: str, node_id: int, address: str | None = None
                      ) -> dict[str, Any]:
    """Append the one-voter configuration of `node_id` to the WAL in `data_dir`; returns
    what was written. The WAL's lock refuses a data dir whose node is running."""
    from engine.aio.wal import WriteAheadLog

    if not os.path.isdir(data_dir):
        raise ConfigError(f"data dir {data_dir} is not a directory")
    if not any(name.startswith("wal-") for name in os.listdir(data_dir)):
        raise ConfigError(f"data dir {data_dir} holds no WAL")
    # Opening changes nothing a refusal below would need undone (as a node start, it only
    # cuts a torn tail and preallocates the last segment).
    with WriteAheadLog(data_dir) as wal:
        recovered = wal.open()
        if recovered.hard_state.term >= PAXOS_BALLOT_FLOOR:
            raise ConfigError(f"data dir {data_dir} holds Paxos ballots (term "
                              f"{recovered.hard_state.term}), not Raft terms: "
                              "force-new-cluster supports Raft data dirs only")
        current = _stored_membership(recovered)
        new = _single_voter(current, node_id, address)
        last_term = (recovered.entries[-1].term if recovered.entries
                     else recovered.snapshot_term)
        term = max(recovered.hard_state.term, last_term) + 1
        index = recovered.last_index + 1
        entry = Entry(term, index, encode_membership(new), int(EntryKind.CONFIG))
        wal.save([entry], HardState(term=term, vote=0, commit=recovered.hard_state.commit))
    return {"data_dir": data_dir, "node_id": node_id, "address": new.address_map()[node_id],
            "index": index, "term": term}


def _stored_membership(recovered: Any) -> Membership | None:
    """The newest configuration the data dir holds (a CONFIG entry, else the snapshot's);
    None when only the bootstrap --members ever applied."""
    for entry in reversed(recovered.entries):
        if entry.kind == EntryKind.CONFIG:
            return _decode(entry.data, f"configuration entry at {entry.index}")
    snapshot = recovered.snapshot
    if snapshot is not None and snapshot.configuration:
        return _decode(snapshot.configuration, f"snapshot at {snapshot.index}")
    return None


def _decode(payload: bytes, where: str) -> Membership:
    try:
        return decode_membership(payload)
    except DecodeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _single_voter(current: Membership | None, node_id: int, address: str | None
                  ) -> Membership:
    """{node_id} alone, at `address` or the address the stored configuration gives it."""
    if current is not None and node_id not in current.members:
        raise ConfigError(f"node {node_id} is not a member of the stored configuration "
                          f"(members {sorted(current.members)}): its data is not the "
                          "cluster's")
    if current is not None and current.is_witness(node_id):
        raise ConfigError(f"node {node_id} is a witness: it holds no data to start from")
    known = current.address_map().get(node_id) if current is not None else None
    chosen = address or known
    if not chosen:
        raise ConfigError(f"the data dir does not record node {node_id}'s address: "
                          "give it with --address HOST:PORT")
    parse_address(chosen)
    requests = current.requests if current is not None else ()
    return Membership(frozenset({node_id}), addresses=((node_id, chosen),), requests=requests)

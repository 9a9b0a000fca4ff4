"""The one message vocabulary shared by the codec, the protocol cores and the drivers.

The codes themselves (MessageType, EntryKind, ClientOp, ClientStatus, AdminOp) live in the
leaf module engine/wire.py, which the codec imports; they are re-exported here.

A `Message` is one record with etcd's shape (raftpb.Message): a type and a fixed set of
integer fields whose meaning depends on the type, plus a batch of `Entry` and an opaque
`context`. One shape for every protocol keeps the codec a single fast loop and lets one
transport carry Raft, Paxos, client and admin traffic.

Every message also names its consensus `group` (u64, keyword only, default 0: the group of a
single-group process), carried per message inside the authenticated frame; the driver routes
on it. Group 0 costs no byte on the wire (engine/_core/codec_py.py, "Message").

Field meanings by type (unused fields stay 0 / empty and cost no bytes on the wire):

Raft (Raft thesis ch. 3, §9.6 pre-vote, §6.4 ReadIndex, §3.10 leadership transfer)
  VOTE / PRE_VOTE            term (proposed term for PRE_VOTE), log_term + index = candidate's
                             last log term and index, context = b"transfer" when forced
  VOTE_RESPONSE / PRE_VOTE_RESPONSE   term, reject
  APPEND                     term, log_term + index = previous entry, commit, entries
  APPEND_RESPONSE            term, index = last index matched (accept) or rejected index,
                             reject, reject_hint + reject_term = fast backtracking hint
  HEARTBEAT                  term, commit, context = read-index context; status = 1: the
                             leader goes quiet (quiescence), index + log_term = its last entry
  HEARTBEAT_RESPONSE         term, context echoed
  SNAPSHOT                   term, index + log_term = snapshot's last entry, seq = chunk offset,
                             status = total size, context = chunk bytes
  SNAPSHOT_RESPONSE          term, index, seq = next offset wanted, reject
  TIMEOUT_NOW                term
  READ_INDEX                 term, context = request context (follower -> leader)
  READ_INDEX_RESPONSE        term, index = read index, context, reject

Multi-Paxos (Paxos Made Simple; PMMC) - `term` carries the ballot
  PREPARE                    term = ballot, index = first unchosen slot, commit = chosen-through
  PROMISE                    term = ballot, entries = accepted (slot in Entry.index, ballot in
                             Entry.term), reject (with the higher ballot in reject_term)
  ACCEPT                     term = ballot, entries = slots to accept, commit = chosen-through
  ACCEPTED                   term = ballot, index = highest slot accepted, reject, reject_term
  CHOSEN                     term = ballot, commit = chosen-through slot
  CATCHUP_REQUEST            index = first slot wanted, commit = last slot wanted
  CATCHUP_RESPONSE           entries = chosen slots, commit = chosen-through

Client (Raft thesis §6.3 sessions)
  CLIENT_REQUEST             src = client id, seq = request sequence, status = ClientOp,
                             context = command or query bytes, commit = the largest reply
                             the client accepts in bytes (0: Limits.max_reply_amplification
                             x the request's encoded size; engine.aio.node_serving)
  CLIENT_RESPONSE            dst = client id, seq, status = ClientStatus, context = result,
                             reject_hint = leader id hint (0 = unknown)

Admin
  ADMIN / ADMIN_RESPONSE     status = admin op, context = JSON payload, commit (ADMIN) = the
                             largest reply the client accepts, as for CLIENT_REQUEST
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from engine._core import codec as _codec
from engine.wire import (
    KNOWN_ENTRY_KINDS,
    KNOWN_MESSAGE_TYPES,
    AdminOp,
    ClientOp,
    ClientStatus,
    EntryKind,
    MessageType,
)


def enum_members(enum_class: type[Enum]) -> Any:
    """`enum_class`'s members as attributes of a plain class, for hot paths: reading
    `SomeEnum.MEMBER` runs the enum metaclass's __getattr__ hook (several times a plain class
    attribute's cost: docs/performance.md), and the Raft core reads them
    on every message. The values are the members themselves (same equality and str)."""
    return type(f"{enum_class.__name__}Members", (), dict(enum_class.__members__))


# Message and Entry come from the selected implementation (compiled or pure Python): both
# have the same constructor, attributes and equality.
Message = _codec.Message
Entry = _codec.Entry

__all__ = [
    "MessageType", "EntryKind", "ClientOp", "ClientStatus", "AdminOp", "Message", "Entry",
    "KNOWN_MESSAGE_TYPES", "KNOWN_ENTRY_KINDS", "enum_members",
]

"""The one message vocabulary shared by the codec, the protocol cores and the drivers.

A `Message` is one record with etcd's shape (raftpb.Message): a type and a fixed set of
integer fields whose meaning depends on the type, plus a batch of `Entry` and an opaque
`context`. One shape for every protocol keeps the codec a single fast loop and lets one
transport carry Raft, Paxos, client and admin traffic.

Field meanings by type (unused fields stay 0 / empty and cost no bytes on the wire):

Raft (Raft thesis ch. 3, §9.6 pre-vote, §6.4 ReadIndex, §3.10 leadership transfer)
  VOTE / PRE_VOTE            term (proposed term for PRE_VOTE), log_term + index = candidate's
                             last log term and index, context = b"transfer" when forced
  VOTE_RESPONSE / PRE_VOTE_RESPONSE   term, reject
  APPEND                     term, log_term + index = previous entry, commit, entries
  APPEND_RESPONSE            term, index = last index matched (accept) or rejected index,
                             reject, reject_hint + reject_term = fast backtracking hint
  HEARTBEAT                  term, commit, context = read-index context
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

from enum import Enum, IntEnum
from typing import Any


class MessageType(IntEnum):
    # Raft
    VOTE = 1
    VOTE_RESPONSE = 2
    PRE_VOTE = 3
    PRE_VOTE_RESPONSE = 4
    APPEND = 5
    APPEND_RESPONSE = 6
    HEARTBEAT = 7
    HEARTBEAT_RESPONSE = 8
    SNAPSHOT = 9
    SNAPSHOT_RESPONSE = 10
    TIMEOUT_NOW = 11
    READ_INDEX = 12
    READ_INDEX_RESPONSE = 13
    # Multi-Paxos
    PREPARE = 32
    PROMISE = 33
    ACCEPT = 34
    ACCEPTED = 35
    CHOSEN = 36
    CATCHUP_REQUEST = 37
    CATCHUP_RESPONSE = 38
    # Client
    CLIENT_REQUEST = 64
    CLIENT_RESPONSE = 65
    # Admin (status queries, fault filter for tests)
    ADMIN = 80
    ADMIN_RESPONSE = 81


# The codec refuses any other type code with DecodeError.
KNOWN_MESSAGE_TYPES: frozenset[int] = frozenset(int(t) for t in MessageType)


class EntryKind(IntEnum):
    NORMAL = 0   # a state-machine command
    NOOP = 1     # Raft §5.4.2 / §8: the empty entry a new leader appends; Paxos gap filler
    CONFIG = 2   # membership change (Raft thesis §4.3)


KNOWN_ENTRY_KINDS: frozenset[int] = frozenset(int(k) for k in EntryKind)


class ClientOp(IntEnum):
    WRITE = 1    # context = state-machine command; goes through the log
    READ = 2     # context = query; linearizable read (ReadIndex), no log write
    STATUS = 3   # node status as JSON


class ClientStatus(IntEnum):
    OK = 0
    NOT_LEADER = 1      # reject_hint = leader id if known; definite: not applied
    REJECTED = 2        # definite no (overload, too large, ...); context = reason
    ERROR = 3           # the state machine raised; context = message
    UNKNOWN = 4         # outcome unknown (e.g. leadership lost while pending)


class AdminOp(IntEnum):
    """ADMIN ops (authenticated with the cluster key like all traffic)."""

    # Fault injection: honoured only by nodes started with allow_fault_injection=True.
    SET_FAULTS = 1       # context = JSON {drop_to, drop_from, loss, duplicate, delay_ms, ...}
    CLEAR_FAULTS = 2
    # Operator: the leader hands leadership to context = JSON {"to": node_id} (Raft §3.10).
    TRANSFER_LEADER = 3
    # Membership (Raft thesis ch. 4), leader only, answered when the change is committed (OK,
    # context = JSON membership) or failed (REJECTED / UNKNOWN, context = JSON {"error",
    # "message"}); NOT_LEADER carries the leader's address.
    ADD_MEMBER = 4       # context = JSON {"id", "address", "learner": bool, "witness": bool}
    REMOVE_MEMBER = 5    # context = JSON {"id"}
    PROMOTE_MEMBER = 6   # context = JSON {"id"}: learner -> voter once caught up
    # Leader -> a node it removed (which never hears that its removal committed, thesis
    # §4.2.3): context = JSON {"index": index of the committed configuration without it}.
    MEMBER_REMOVED = 7
    # Online backup (engine.aio.snapshot_serving): context = JSON {"index", "term", "offset",
    # "size"}; index = term = 0 asks the leader for a fresh snapshot. The answer's context is
    # a 32-byte header (index, term, total envelope size, offset) and the chunk's bytes.
    SNAPSHOT_CHUNK = 8


def enum_members(enum_class: type[Enum]) -> Any:
    """`enum_class`'s members as attributes of a plain class, for hot paths: reading
    `SomeEnum.MEMBER` runs the enum metaclass's __getattr__ hook (several times a plain class
    attribute's cost: docs/performance.md), and the Raft core reads them
    on every message. The values are the members themselves (same equality and str)."""
    return type(f"{enum_class.__name__}Members", (), dict(enum_class.__members__))


# Message and Entry come from the selected implementation (compiled or pure Python): both
# have the same constructor, attributes and equality. Imported last because the codec
# modules read KNOWN_MESSAGE_TYPES / KNOWN_ENTRY_KINDS from this module.
from engine._core import codec as _codec  # noqa: E402

Message = _codec.Message
Entry = _codec.Entry

__all__ = [
    "MessageType", "EntryKind", "ClientOp", "ClientStatus", "AdminOp", "Message", "Entry",
    "KNOWN_MESSAGE_TYPES", "KNOWN_ENTRY_KINDS", "enum_members",
]

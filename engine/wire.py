"""Wire codes: the numbers the codec writes and every layer names (a leaf: it imports nothing
of engine).

The message and entry type codes, the client and admin op codes and the client status codes
are part of the wire format (engine/_core/codec_py.py): a code never changes meaning. The
codec refuses any type or kind code not listed here (DecodeError). What each message's fields
mean is engine/messages.py's module docstring. The wire-format bounds below are the defaults
of the Limits fields of the same names (engine.limits.Limits), which a codec is built with.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Protocol

U64_MAX = (1 << 64) - 1

# Defaults of Limits.max_messages_per_frame, max_entries_per_message, max_context_bytes and
# max_reassembly_bytes (engine.limits.Limits, where each is explained).
MAX_MESSAGES_PER_FRAME = 4_096
MAX_ENTRIES_PER_MESSAGE = 65_536
MAX_CONTEXT_BYTES = 64 * 1024 * 1024
MAX_REASSEMBLY_BYTES = 128 * 1024 * 1024


class WireLimits(Protocol):
    """The bounds a codec enforces (engine.limits.Limits has them)."""

    @property
    def max_messages_per_frame(self) -> int: ...
    @property
    def max_entries_per_message(self) -> int: ...
    @property
    def max_context_bytes(self) -> int: ...
    @property
    def max_reassembly_bytes(self) -> int: ...


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
    # Process level: "this process is up", one per peer process per heartbeat interval, group
    # 0, no payload (engine.aio.node_host: wakes quiet groups whose leader's process is silent)
    LIVENESS = 96


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
    WRONG_SHARD = 5     # the key is outside the range this group serves; definite: not
                        # applied; context = engine.shard.replica's wrong-shard answer


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


__all__ = [
    "MessageType", "EntryKind", "ClientOp", "ClientStatus", "AdminOp", "KNOWN_MESSAGE_TYPES",
    "KNOWN_ENTRY_KINDS", "U64_MAX", "WireLimits", "MAX_MESSAGES_PER_FRAME",
    "MAX_ENTRIES_PER_MESSAGE", "MAX_CONTEXT_BYTES", "MAX_REASSEMBLY_BYTES",
]

"""Typed errors of engine. Every error a user can see derives from EngineError.

An ambiguous outcome is never reported as a definite failure: `Timeout` means "unknown, may
or may not have taken effect"; `Rejected` means "definitely did not take effect".
"""

from __future__ import annotations


class EngineError(Exception):
    """Base class of every error raised by engine."""


class ConfigError(EngineError, ValueError):
    """A configuration value is invalid or inconsistent (raised at construction time)."""


class DecodeError(EngineError, ValueError):
    """A datagram or record is malformed, forged, truncated, oversized or replayed.

    Raised by the codec for anything it cannot accept; the transport drops and counts it.
    """


class WireVersionError(DecodeError):
    """A frame of another wire version (an older or newer release): refused, counted."""


class WrongReceiverError(DecodeError):
    """A frame addressed to another endpoint (e.g. replayed from one node to another)."""


class WrongClusterError(DecodeError):
    """An authenticated frame of another cluster id: a node of a different cluster holds the
    same key (e.g. one bootstrapped with a different member list). Never accepted."""

    def __init__(self, sender_id: int, cluster_id: int, expected_cluster_id: int) -> None:
        super().__init__(
            f"frame of node {sender_id} of cluster {cluster_id:#x}, this is cluster "
            f"{expected_cluster_id:#x}")
        self.sender_id = sender_id
        self.cluster_id = cluster_id
        self.expected_cluster_id = expected_cluster_id


class InvariantViolation(EngineError, AssertionError):
    """A protocol invariant does not hold: a bug in engine, never caused by remote input."""


class StorageError(EngineError):
    """The write-ahead log or hard state on disk is unreadable (names the file and offset)."""


class NotLeader(EngineError):
    """This node is not the leader; `leader_id` / `leader_address` hint at who is (or None)."""

    def __init__(
        self, message: str = "not the leader", *, leader_id: int | None = None,
        leader_address: str | None = None,
    ) -> None:
        super().__init__(message)
        self.leader_id = leader_id
        self.leader_address = leader_address


class Rejected(EngineError):
    """The request definitely did not take effect (e.g. dropped before being appended)."""


class Superseded(Rejected):
    """This copy of a proposal was dropped or overwritten by a new leader before it committed:
    it will never apply. Definite for the proposal that raised it, but a client that retried
    the same command (same session and seq) may have another copy in the log, so a node
    serving a remote client answers "outcome unknown" for it (the client retries, and the
    state machine's session table answers the copy that did apply)."""


class Overloaded(Rejected):
    """Back-pressure: a named limit (pending proposals, uncommitted bytes, ...) is full."""


class EntryTooLarge(Rejected, ValueError):
    """A proposal is larger than max_entry_bytes."""


class Timeout(EngineError, TimeoutError):
    """No answer in time: the outcome is unknown (the command may or may not have been applied)."""


class Stopped(EngineError):
    """The node or client was stopped while the request was pending (outcome unknown if sent)."""


class LogIndexError(EngineError, IndexError):
    """An index outside the range held by the in-memory log (compacted or not yet appended)."""


class StateMachineError(EngineError):
    """The state machine raised while applying this command (the message says what)."""


class MembershipError(Rejected, ValueError):
    """A membership change is refused as invalid or unsafe (removing the last voter, adding
    an existing member, promoting a learner that is not caught up, ...): definite, nothing
    was appended."""


class ConfChangeInProgress(Rejected):
    """Another membership change is not committed yet (or this leader has not committed an
    entry of its term): only one change may be in flight. Definite; retry once it commits."""

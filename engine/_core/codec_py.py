"""Wire format of engine: the readable pure-Python spec of codec_c.pyx.

Message/Entry: the records of engine.messages (one shape for all protocols, like etcd's
raftpb.Message). The frame format and encode/decode are specified below (see module
docstring sections added with the codec).
"""

from __future__ import annotations

from typing import Any


class Entry:
    """One log entry / accepted slot: term (Raft term or Paxos ballot), index (log index or
    slot), kind (engine.messages.EntryKind) and the opaque command bytes."""

    __slots__ = ("term", "index", "kind", "data")

    def __init__(self, term: int = 0, index: int = 0, data: bytes = b"", kind: int = 0) -> None:
        self.term = term
        self.index = index
        self.data = data
        self.kind = kind

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _ENTRY_TYPES):
            return NotImplemented
        return (
            self.term == other.term and self.index == other.index
            and self.kind == other.kind and self.data == other.data
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Entry(term={self.term}, index={self.index}, data={self.data!r}, kind={self.kind})"


class Message:
    """One protocol message; see engine.messages for the meaning of each field per type."""

    __slots__ = (
        "type", "src", "dst", "term", "log_term", "index", "commit", "reject",
        "reject_hint", "reject_term", "seq", "status", "entries", "context",
    )

    def __init__(
        self, type: int, src: int = 0, dst: int = 0, term: int = 0, log_term: int = 0,
        index: int = 0, commit: int = 0, reject: bool = False, reject_hint: int = 0,
        reject_term: int = 0, seq: int = 0, status: int = 0, entries: list[Any] | None = None,
        context: bytes = b"",
    ) -> None:
        self.type = type
        self.src = src
        self.dst = dst
        self.term = term
        self.log_term = log_term
        self.index = index
        self.commit = commit
        self.reject = bool(reject)
        self.reject_hint = reject_hint
        self.reject_term = reject_term
        self.seq = seq
        self.status = status
        self.entries = [] if entries is None else entries
        self.context = context

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _MESSAGE_TYPES):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in Message.__slots__)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        parts = [f"type={self.type}"]
        for name in Message.__slots__[1:]:
            value = getattr(self, name)
            if value:
                parts.append(f"{name}={value!r}")
        return "Message(" + ", ".join(parts) + ")"


# Equality holds across the two implementations (codec_c.Entry == codec_py.Entry) so that
# differential tests can compare decoded objects directly. codec_c registers its classes here.
_ENTRY_TYPES: tuple[type, ...] = (Entry,)
_MESSAGE_TYPES: tuple[type, ...] = (Message,)

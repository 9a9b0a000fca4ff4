"""Global safety invariants of a Multi-Paxos cluster, checked by the simulator after every
persist, apply, snapshot and restart (engine/testing/sim.py with protocol="paxos").

  Agreement           at most one value is chosen per slot, and a chosen value never changes:
                      a value is chosen once a phase-2 quorum has *durably* accepted it in one
                      ballot (votes are history: a vote stays counted when a later ballot
                      overwrites it) (Paxos Made Simple §2.2, P2).
  Ballot uniqueness   one value per (slot, ballot) across all acceptors (a proposer proposes
                      one value per slot and ballot).
  Promise durability  every acceptor's durable promised ballot never decreases (P1a).
  Learner safety      a learner applies only chosen values, strictly in slot order, so replicas
                      apply the same sequence; an applied NORMAL value with identity b at slot s
                      is exactly the command the leader of ballot b proposed at s (the
                      value-identity rule the driver relies on to resolve futures).
  State equality      every replica's state machine after slot s equals every other's after s
                      (a digest chain over the applied values, checked at every apply, every
                      snapshot install and every restart from a snapshot).
  Safe trimming       trimming forgets only chosen slots (every slot through the compaction
                      point is chosen), and no WAL compaction drops an accepted slot above its
                      marker (checked by the simulator on SimDisk.compact's result).
  Learned = chosen    a replica's commit index never passes the chosen prefix.
  Linearizable reads  a read index is >= every slot any replica knew committed when the read
                      began (checked by the simulator, as for Raft).

A violation raises engine.errors.InvariantViolation naming the node and slot.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from typing import Any

from engine.errors import InvariantViolation
from engine.messages import EntryKind
from engine.paxos.core import IDENTITY_BYTES

# An applied value: (entry kind, identity ballot bytes + command), as the checker compares it.
Value = tuple[int, bytes]


def encode_values(values: list[Value]) -> bytes:
    """The simulated state machine's snapshot: its applied values, length-prefixed."""
    return b"".join(struct.pack("<BI", kind, len(data)) + data for kind, data in values)


def decode_values(data: bytes) -> list[Value]:
    values: list[Value] = []
    offset = 0
    while offset < len(data):
        kind, length = struct.unpack_from("<BI", data, offset)
        offset += 5
        values.append((kind, bytes(data[offset:offset + length])))
        offset += length
    return values


def next_digest(digest: bytes, value: Value) -> bytes:
    """The state digest after applying `value` (a hash chain over the applied values)."""
    return hashlib.blake2b(digest + bytes((value[0],)) + value[1], digest_size=16).digest()


def digest_of(values: Iterable[Value]) -> bytes:
    digest = b""
    for value in values:
        digest = next_digest(digest, value)
    return digest


def applied_value(entry: Any) -> Value:
    """What a committed entry puts into the state machine, with its identity ballot."""
    return (entry.kind, entry.term.to_bytes(IDENTITY_BYTES, "little") + bytes(entry.data))


class PaxosChecker:
    """The global history of one simulated Multi-Paxos cluster and the invariants over it."""

    def __init__(self, q2: int) -> None:
        self.q2 = q2
        self.votes: dict[tuple[int, int], set[int]] = {}
        self.value_at: dict[tuple[int, int], Value] = {}
        self.chosen: dict[int, Value] = {}
        self.promised: dict[int, int] = {}
        self.proposed: dict[tuple[int, int], bytes] = {}
        # The state digest after each slot, set by the first replica to reach it.
        self.state_at: dict[int, bytes] = {}
        self._chosen_through = 0

    def chosen_through(self) -> int:
        """Every slot through this one is chosen."""
        while self._chosen_through + 1 in self.chosen:
            self._chosen_through += 1
        return self._chosen_through

    def on_proposed(self, first: int, ballot: int, commands: list[bytes]) -> None:
        for offset, command in enumerate(commands):
            self.proposed[(first + offset, ballot)] = command

    def on_trim(self, node: int, index: int) -> None:
        """Only chosen slots may be trimmed (an acceptor forgets what it accepted there)."""
        if index > self.chosen_through():
            raise InvariantViolation(
                f"node {node} trims through slot {index}; chosen only through "
                f"{self.chosen_through()}")

    def on_state(self, node: int, slot: int, digest: bytes) -> None:
        """Every replica's state machine after `slot` is the same."""
        if slot == 0:
            return
        known = self.state_at.setdefault(slot, digest)
        if known != digest:
            raise InvariantViolation(
                f"node {node}: state machine after slot {slot} differs from another replica's")

    def on_persist(self, node: int, promised: int, saved: list[Any]) -> None:
        """An acceptor's fsync completed: its promise and the slots it accepted are durable."""
        if promised < self.promised.get(node, 0):
            raise InvariantViolation(f"node {node}: durable promise went back to {promised}")
        self.promised[node] = promised
        for entry in saved:
            if entry.term == 0:
                continue  # a hole: nothing accepted
            key = (entry.index, entry.term)
            value = (entry.kind, bytes(entry.data))
            known = self.value_at.setdefault(key, value)
            if known != value:
                raise InvariantViolation(f"two values for slot/ballot {key}: {known} {value}")
            voters = self.votes.setdefault(key, set())
            voters.add(node)
            if len(voters) >= self.q2:
                chosen = self.chosen.setdefault(entry.index, value)
                if chosen != value:
                    raise InvariantViolation(
                        f"slot {entry.index}: {value} chosen after {chosen} (safety)")

    def on_apply(self, node: int, applied: list[Value], entry: Any) -> Value:
        """A learner applies a committed entry after `applied`; returns the value applied."""
        slot = entry.index
        if slot != len(applied) + 1:
            raise InvariantViolation(f"node {node} applied slot {slot} after {len(applied)}")
        value = applied_value(entry)
        chosen = self.chosen.get(slot)
        if chosen != value:
            raise InvariantViolation(
                f"node {node} applied {value} at slot {slot}, chosen is {chosen}")
        if entry.kind == EntryKind.NORMAL:
            proposed = self.proposed.get((slot, entry.term))
            if proposed != bytes(entry.data):
                raise InvariantViolation(
                    f"slot {slot} identity {entry.term}: applied {entry.data!r}, "
                    f"proposed {proposed!r}")
        return value

    @staticmethod
    def fail_node(node: int, what: str) -> None:
        raise InvariantViolation(f"node {node}: {what}")


__all__ = [
    "PaxosChecker", "Value", "encode_values", "decode_values", "next_digest", "digest_of",
    "applied_value",
]

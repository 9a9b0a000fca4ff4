"""Per-follower replication progress (etcd tracker/progress.go + inflights.go).

A leader keeps one Progress per peer. Two states (etcd design.md):

  PROBE      the leader does not know where the follower's log matches; it sends one append
             at a time (then pauses until an answer or a heartbeat response) and backtracks
             on rejects with the follower's hint.
  REPLICATE  the follower's log matches up to `match`; the leader streams appends
             optimistically (next advances on send), bounded by the in-flight window
             (Limits.max_inflight_messages / max_inflight_bytes): pipelining, thesis §10.2.2.
  SNAPSHOT   the entries the follower needs were compacted away (Raft §7): the leader
             streams a snapshot in chunks (engine.replication.snapshot.SnapshotSender) and sends no
             appends until the follower reports it installed (APPEND_RESPONSE >= its index).

UDP loses appends, so REPLICATE can stall with a full window of lost messages. The leader
detects that (no ack progress for a stall period while entries are in flight) and falls back
to PROBE, which re-sends from match + 1 (etcd reaches the same state via ReportUnreachable).

Invariants: match < next; in REPLICATE every in-flight append ends in (match, next - 1].
"""

from __future__ import annotations

from collections import deque
from enum import IntEnum
from typing import Any

from engine.messages import enum_members


class ProgressState(IntEnum):
    PROBE = 0
    REPLICATE = 1
    SNAPSHOT = 2


_PS = enum_members(ProgressState)  # the members as plain attributes (hot path)


class Inflights:
    """The bounded window of appends in flight to one follower: (last index, payload bytes)."""

    __slots__ = ("_queue", "bytes", "max_count", "max_bytes")

    def __init__(self, max_count: int, max_bytes: int) -> None:
        self._queue: deque[tuple[int, int]] = deque()
        self.bytes = 0
        self.max_count = max_count
        self.max_bytes = max_bytes

    def __len__(self) -> int:
        return len(self._queue)

    def full(self) -> bool:
        return len(self._queue) >= self.max_count or self.bytes >= self.max_bytes

    def add(self, last_index: int, size_bytes: int) -> None:
        self._queue.append((last_index, size_bytes))
        self.bytes += size_bytes

    def free_le(self, index: int) -> None:
        """Forget every append whose last index is <= index (acknowledged)."""
        queue = self._queue
        while queue and queue[0][0] <= index:
            self.bytes -= queue.popleft()[1]

    def reset(self) -> None:
        self._queue.clear()
        self.bytes = 0


class Progress:
    """What the leader knows about one peer's log (Raft Figure 2 matchIndex / nextIndex)."""

    __slots__ = (
        "match",
        "next",
        "state",
        "probe_sent",
        "recent_active",
        "inflights",
        "progress_tick",
        "read_ack",
        "snapshot",
        "heard_tick",
    )

    def __init__(self, next_index: int, max_inflight: int, max_inflight_bytes: int) -> None:
        self.match = 0
        self.next = next_index
        self.state = _PS.PROBE
        # PROBE only: an append is outstanding; wait for its answer or a heartbeat response.
        self.probe_sent = False
        # Check-quorum (thesis §6.2): heard from this peer during the current election timeout.
        self.recent_active = False
        self.inflights = Inflights(max_inflight, max_inflight_bytes)
        # Leader tick at which this follower last made progress (or the window became busy);
        # used to detect a REPLICATE window stalled by lost messages.
        self.progress_tick = 0
        # Highest heartbeat round (§6.4 ReadIndex, §6.4.1 lease) this peer has acknowledged.
        self.read_ack = 0
        # SNAPSHOT only: the transfer in progress (engine.replication.snapshot.SnapshotSender).
        self.snapshot: Any = None
        # Leader tick at which this peer last answered anything (witness rule W2 in core.py).
        self.heard_tick = 0

    def is_paused(self) -> bool:
        if self.state == _PS.PROBE:
            return self.probe_sent
        if self.state == _PS.SNAPSHOT:
            return True
        return self.inflights.full()

    def become_probe(self) -> None:
        self.snapshot = None
        self.state = _PS.PROBE
        self.next = self.match + 1
        self.probe_sent = False
        self.inflights.reset()

    def become_replicate(self, now_tick: int) -> None:
        self.snapshot = None
        self.state = _PS.REPLICATE
        self.next = self.match + 1
        self.probe_sent = False
        self.inflights.reset()
        self.progress_tick = now_tick

    def become_snapshot(self, sender: Any) -> None:
        """Start streaming `sender`'s snapshot; appends pause until it is installed."""
        self.state = _PS.SNAPSHOT
        self.snapshot = sender
        self.probe_sent = False
        self.inflights.reset()

    def maybe_update(self, index: int, now_tick: int) -> bool:
        """An append up to index was accepted; returns whether match advanced."""
        updated = False
        if index > self.match:
            self.match = index
            self.probe_sent = False
            self.progress_tick = now_tick
            updated = True
        self.next = max(self.next, index + 1)
        return updated

    def maybe_decrease_to(self, rejected: int, match_hint: int) -> bool:
        """The follower rejected an append whose previous index was `rejected`; match_hint is
        the largest index that may match. Returns False for a stale reject (etcd MaybeDecrTo)."""
        if self.state == _PS.REPLICATE:
            if rejected <= self.match:
                return False
            # Replicate sent optimistically; restart from the last known match.
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def sent_entries(self, last_index: int, size_bytes: int, count: int, now_tick: int) -> None:
        """Bookkeeping after sending an append that carried `count` entries ending at last_index."""
        if self.state == _PS.REPLICATE:
            if count:
                if not len(self.inflights):
                    self.progress_tick = now_tick
                self.next = last_index + 1
                self.inflights.add(last_index, size_bytes)
        else:
            self.probe_sent = True

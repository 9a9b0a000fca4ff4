"""Hybrid logical clocks (Kulkarni, Demirbas, Madeppa, Avva, Leone: "Logical Physical Clocks",
OPODIS 2014), sans-IO.

A timestamp is (wall_ns, logical): `wall_ns` is the paper's l (the largest physical time
heard of, in ns) and `logical` its c (a counter that orders events sharing one l). Timestamps
are totally ordered by (wall_ns, logical) and encode to 12 order-preserving bytes (big-endian
u64 wall, u32 logical), so encoded timestamps sort as keys in the same order.

The physical clock is injected (`physical_ns`, a callable returning ns): the clock never reads
one itself, so the simulator drives it with skewed, drifting or backwards-stepping time.

Rules (the paper's Figure 5):
  send / local event (`now`):   l' = max(l, pt); c' = c + 1 if l' == l else 0
  receive m (`update`):         l' = max(l, l_m, pt); c' = c + 1 / c_m + 1 / max(c, c_m) + 1
                                / 0 depending on which of l, l_m reached l'
so every timestamp a node issues is above every timestamp it issued or received before
(monotonic, and send -> receive is preserved: the happens-before order of Lamport 1978).

Bounded offset. The paper's Theorem 2 bounds l - pt by the clock synchronisation error ε. A
node enforces that bound: a received timestamp more than max_offset ahead of its own physical
clock is refused (engine.ClockOffsetError) *without* advancing the clock, so a single bad
clock cannot drag the cluster's timestamps into the future (CockroachDB's max-offset guard;
pkg/util/hlc). `l` is then always some node's physical reading, so it never exceeds the
largest physical time any node has read.

Logical overflow. `logical` is a u32. The paper bounds c by the number of events within ε
(Theorem 3), far below 2**32 in practice; should it reach the limit anyway, the clock carries
into wall_ns (wall_ns + 1, logical 0): still strictly increasing and totally ordered, at the
cost of l running 1 ns ahead of physical time per 2**32 events in one nanosecond.

Uncertainty (CockroachDB's rule, pkg/util/hlc/doc.go): clocks may differ by up to
max_offset, so a value written at a timestamp in (read_ts, read_ts + max_offset] may have
been written *before* the read in real time by a node whose clock is ahead. A read that
sees such a value cannot order itself before it and restarts at a timestamp above it
(`uncertain`, `Timestamp.next`).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from engine.errors import ClockOffsetError, ConfigError, DecodeError
from engine.limits import Limits

ENCODED_BYTES = 12
MAX_WALL_NS = (1 << 64) - 1
MAX_LOGICAL = (1 << 32) - 1
_STRUCT = struct.Struct(">QI")


@dataclass(frozen=True, order=True, slots=True)
class Timestamp:
    """An HLC timestamp; ordered by (wall_ns, logical)."""

    wall_ns: int
    logical: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.wall_ns <= MAX_WALL_NS or not 0 <= self.logical <= MAX_LOGICAL:
            raise ConfigError(
                f"HLC timestamp out of range: wall_ns={self.wall_ns}, logical={self.logical}")

    def encode(self) -> bytes:
        """12 bytes whose byte order is the timestamp order (big-endian, unsigned)."""
        return _STRUCT.pack(self.wall_ns, self.logical)

    @classmethod
    def decode(cls, data: bytes) -> Timestamp:
        if len(data) != ENCODED_BYTES:
            raise DecodeError(f"an HLC timestamp is {ENCODED_BYTES} bytes, got {len(data)}")
        wall_ns, logical = _STRUCT.unpack(data)
        return cls(wall_ns, logical)

    def next(self) -> Timestamp:
        """The smallest timestamp above this one."""
        if self.logical < MAX_LOGICAL:
            return Timestamp(self.wall_ns, self.logical + 1)
        return Timestamp(self.wall_ns + 1, 0)


ZERO = Timestamp(0, 0)


def uncertain(read_ts: Timestamp, value_ts: Timestamp, max_offset_ns: int) -> bool:
    """True if a value at `value_ts` lies in the read's uncertainty interval
    (read_ts, read_ts + max_offset]: the read must restart above it (at value_ts.next() or
    later), since the value may precede the read in real time. A value at or below read_ts
    is simply visible; one beyond the interval was certainly written after the read began."""
    if value_ts <= read_ts:
        return False
    limit = Timestamp(min(read_ts.wall_ns + max_offset_ns, MAX_WALL_NS), read_ts.logical)
    return value_ts <= limit


class HybridLogicalClock:
    """One node's HLC. `physical_ns` is the injected physical clock (ns; it may jump,
    drift or step backwards: the HLC stays monotonic). `max_offset_ns` is the tolerated
    clock offset (Limits.max_clock_offset_ms * 1e6). `max_logical` is for tests of the
    overflow carry; keep the default."""

    __slots__ = ("_physical_ns", "_wall_ns", "_logical", "max_offset_ns", "max_logical",
                 "node_id")

    def __init__(
        self, physical_ns: Callable[[], int], *, max_offset_ns: int, node_id: int | None = None,
        max_logical: int = MAX_LOGICAL, last: Timestamp = ZERO,
    ) -> None:
        if max_offset_ns <= 0:
            raise ConfigError(f"max_offset_ns must be positive, got {max_offset_ns}")
        if not 0 < max_logical <= MAX_LOGICAL:
            raise ConfigError(f"max_logical must be in [1, {MAX_LOGICAL}], got {max_logical}")
        self._physical_ns = physical_ns
        self.max_offset_ns = max_offset_ns
        self.max_logical = max_logical
        self.node_id = node_id
        # `last`: the highest timestamp issued before a restart (a node persists or waits out
        # max_offset, CockroachDB's rule, so its clock never goes back across a restart).
        self._wall_ns = last.wall_ns
        self._logical = last.logical

    @classmethod
    def for_limits(cls, physical_ns: Callable[[], int], limits: Limits, *,
                   node_id: int | None = None, last: Timestamp = ZERO) -> HybridLogicalClock:
        """A node's HLC with the offset bound of its Limits.max_clock_offset_ms."""
        return cls(physical_ns, max_offset_ns=limits.max_clock_offset_ms * 1_000_000,
                   node_id=node_id, last=last)

    @property
    def last(self) -> Timestamp:
        """The latest timestamp issued or absorbed (no clock read)."""
        return Timestamp(self._wall_ns, self._logical)

    def now(self) -> Timestamp:
        """A timestamp for a local or send event: above every earlier one of this node."""
        pt = self._read()
        if pt > self._wall_ns:
            self._wall_ns, self._logical = pt, 0
        else:
            self._tick_logical(self._logical + 1)
        return self.last

    def update(self, remote: Timestamp, *, from_node: int | None = None) -> Timestamp:
        """A receive event: the result is above both the local clock and `remote`.

        Raises ClockOffsetError, leaving the clock unchanged, if `remote` is more than
        max_offset ahead of this node's physical clock (the sender's clock, or this node's,
        is beyond the bound; the message must not be served)."""
        pt = self._read()
        ahead_ns = remote.wall_ns - pt
        if ahead_ns > self.max_offset_ns:
            raise ClockOffsetError(from_node, ahead_ns, self.max_offset_ns // 1_000_000)
        wall = max(self._wall_ns, remote.wall_ns, pt)
        if wall == self._wall_ns and wall == remote.wall_ns:
            logical = max(self._logical, remote.logical) + 1
        elif wall == self._wall_ns:
            logical = self._logical + 1
        elif wall == remote.wall_ns:
            logical = remote.logical + 1
        else:
            logical = 0
        self._wall_ns = wall
        self._tick_logical(logical)
        return self.last

    def _read(self) -> int:
        pt = self._physical_ns()
        if not 0 <= pt <= MAX_WALL_NS:
            raise ConfigError(f"physical clock returned {pt!r}, not a u64 of ns")
        return pt

    def _tick_logical(self, logical: int) -> None:
        # Counter overflow carries into wall_ns: still strictly increasing (module docstring).
        if logical > self.max_logical:
            self._wall_ns += 1
            logical = 0
        self._logical = logical

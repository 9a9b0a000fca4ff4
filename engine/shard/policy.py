"""When to split a range, and where: deterministic, from named limits.

A range is split when its data passes Limits.range_split_bytes (a range is snapshotted and
moved whole, so its size bounds the cost of a move and of a follower's catch-up) or its load
passes Limits.range_split_ops_per_s (one group's leader is one core: CockroachDB's load-based
splitting, default 2,500 QPS). Size is checked first: an oversized range is a problem even
when idle.

The split key is the median of a sample of the range's keys (for a size split, keys of the
stored data; for a load split, keys of recent requests): each side then holds about half of
what was sampled. It must lie strictly inside the range, so both sides are non-empty (the
meta group refuses anything else); when the median is the range's start (many samples of
one key) the next larger sampled key is taken, and when no sampled key lies inside the
range there is no split key (a single hot key cannot be split: it stays one range).

KeySampler keeps a bounded uniform sample (reservoir sampling, Vitter's Algorithm R) with a
seeded generator, so a replica's choice is reproducible.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

from engine.errors import ConfigError
from engine.limits import Limits
from engine.shard.map import RangeDescriptor


class SplitReason(Enum):
    SIZE = "size"
    LOAD = "load"


@dataclass(frozen=True, slots=True)
class SplitDecision:
    reason: SplitReason
    key: bytes


def split_reason(size_bytes: int, ops_per_s: float, limits: Limits) -> SplitReason | None:
    """Why a range of this size and load should split (past a threshold), or None."""
    if size_bytes > limits.range_split_bytes:
        return SplitReason.SIZE
    if ops_per_s > limits.range_split_ops_per_s:
        return SplitReason.LOAD
    return None


def split_key(samples: Iterable[bytes], start: bytes, end: bytes | None) -> bytes | None:
    """The median sampled key strictly inside (start, end), or None (see the module
    docstring). Deterministic: depends only on the multiset of samples."""
    inside = sorted(k for k in samples if start <= k and (end is None or k < end))
    if not inside:
        return None
    median = inside[len(inside) // 2]
    if median > start:
        return median
    above = [k for k in inside if k > start]
    return above[0] if above else None


def decide_split(descriptor: RangeDescriptor, *, size_bytes: int, ops_per_s: float,
                 samples: Sequence[bytes], limits: Limits | None = None
                 ) -> SplitDecision | None:
    """Split `descriptor`'s range, and where, or None (below both thresholds, or no key to
    split at)."""
    reason = split_reason(size_bytes, ops_per_s, limits or Limits())
    if reason is None:
        return None
    key = split_key(samples, descriptor.start, descriptor.end)
    return None if key is None else SplitDecision(reason, key)


class KeySampler:
    """A uniform sample of at most `capacity` keys (default Limits.max_split_key_samples)
    out of every key offered, reproducible from `seed`."""

    def __init__(self, *, seed: int, capacity: int | None = None,
                 limits: Limits | None = None) -> None:
        capacity = (limits or Limits()).max_split_key_samples if capacity is None \
            else capacity
        if not isinstance(capacity, int) or capacity < 1:
            raise ConfigError(f"sampler capacity must be a positive int, got {capacity!r}")
        self._capacity = capacity
        self._random = random.Random(seed)
        self._seen = 0
        self._sample: list[bytes] = []

    def offer(self, key: bytes) -> None:
        self._seen += 1
        if len(self._sample) < self._capacity:
            self._sample.append(key)
            return
        slot = self._random.randrange(self._seen)   # Algorithm R: keep with p = k / n
        if slot < self._capacity:
            self._sample[slot] = key

    @property
    def seen(self) -> int:
        return self._seen

    def sample(self) -> list[bytes]:
        return list(self._sample)

    def reset(self) -> None:
        self._seen = 0
        self._sample.clear()

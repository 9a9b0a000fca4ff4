"""Sharding, sans-IO: the shard map (which group serves which key range), the meta group's
state machine that holds it, the client's routing cache and the split policy.

- engine.shard.map: ShardMap, RangeDescriptor, Replica, ReplicaRole (and their bytes).
- engine.shard.meta: MetaStateMachine (split, merge, replica changes, each checked against
  the range's epoch) and the encoders of its commands, queries and results.
- engine.shard.routing: RangeCache, the client-side descriptor cache.
- engine.shard.policy: when to split a range and where (size and load thresholds).

Nothing here does I/O; the multi-group runtime that runs these is engine's driver and aio.
"""

from __future__ import annotations

from engine.shard.map import RangeDescriptor, Replica, ReplicaRole, ShardMap, check_owner, voters

__all__ = ["RangeDescriptor", "Replica", "ReplicaRole", "ShardMap", "check_owner", "voters"]

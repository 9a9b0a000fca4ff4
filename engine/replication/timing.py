"""Timeouts derived from TimingConfig, in ticks, shared by the cores.

The cores read no clock; every timer is a count of ticks (DESIGN.md §1). Over UDP a sender
learns of a lost datagram or a lost acknowledgement only by the absence of progress, so each
sender that keeps state per receiver (an append window, a snapshot transfer, a catch-up
request) goes back after a number of ticks without progress: longer than a round trip, which
heartbeats bound.
"""

from __future__ import annotations

import random

from engine.limits import TimingConfig


def retransmit_ticks(timing: TimingConfig) -> int:
    """Ticks without acknowledgement progress before a window of appends or snapshot chunks
    is sent again from the acknowledged point: two heartbeat intervals, at least half an
    election timeout (a fast go-back on a reported gap covers losses mid-window)."""
    return max(2 * timing.heartbeat_interval_ticks, timing.election_timeout_ticks // 2)


def retry_ticks(timing: TimingConfig) -> int:
    """Ticks before an unanswered request is sent again: two heartbeat intervals, one
    round trip with room for a heartbeat's delay."""
    return 2 * timing.heartbeat_interval_ticks


def randomized_election_timeout(timing: TimingConfig, rng: random.Random) -> int:
    """Raft §5.2: a timeout drawn from [T, 2T) so that candidates rarely split the vote."""
    timeout = timing.election_timeout_ticks
    return timeout + rng.randrange(timeout)

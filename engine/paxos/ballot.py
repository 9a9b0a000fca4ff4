"""Ballot numbers: (round, node_id) packed in one u64 so ballots are unique per proposer.

Paxos Made Simple §2.2 needs proposal numbers that are totally ordered and never reused by
two proposers. Packing the proposer's id in the low bits does both: two proposers can never
draw the same ballot, and comparing the packed integers compares rounds first, then ids.

Ballot 0 is "no ballot": nothing promised, nothing accepted (an empty slot on disk).
"""

from __future__ import annotations

from engine.errors import ConfigError

NODE_BITS = 16
MAX_NODE_ID = (1 << NODE_BITS) - 1
MAX_ROUND = (1 << (64 - NODE_BITS)) - 1
_NODE_MASK = MAX_NODE_ID

NO_BALLOT = 0


def make_ballot(round_: int, node_id: int) -> int:
    """The ballot of proposer `node_id` in `round_` (round >= 1)."""
    if not 0 < node_id <= MAX_NODE_ID:
        raise ConfigError(f"paxos node ids must be in [1, {MAX_NODE_ID}], got {node_id}")
    if not 0 < round_ <= MAX_ROUND:
        raise ConfigError(f"ballot round {round_} outside [1, {MAX_ROUND}]")
    return (round_ << NODE_BITS) | node_id


def ballot_round(ballot: int) -> int:
    return ballot >> NODE_BITS


def ballot_node(ballot: int) -> int:
    """The proposer that owns `ballot` (0 for NO_BALLOT)."""
    return ballot & _NODE_MASK


def next_ballot(above: int, node_id: int) -> int:
    """A ballot of `node_id` strictly greater than `above` (the next round)."""
    return make_ballot(ballot_round(above) + 1, node_id)


def format_ballot(ballot: int) -> str:
    return f"{ballot_round(ballot)}.{ballot_node(ballot)}"

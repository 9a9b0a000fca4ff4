"""Cluster membership for the Raft core: configurations, changes and their log encoding.

A `Membership` is one configuration (Raft thesis ch. 4):

  voters      the voting members (in a joint configuration: C_new, the incoming voters);
  old_voters  empty, or C_old while the configuration is joint (thesis §4.3): elections and
              commitment then need a majority of *both* voters and old_voters;
  learners    members that receive the log but never vote, never count toward commit and
              never campaign (thesis §4.2.1 "non-voting members"; etcd's Learners);
  witnesses   members that store log metadata only (term, index, kind; NORMAL payloads are
              dropped, CONFIG entries kept whole). A witness voter votes and acknowledges
              appends like any voter but never becomes leader. A witness joins as a witness
              learner (so its metadata catches up) and is then promoted, like any member.
  addresses   the "host:port" each member was added with: stored opaquely for the driver.

Configuration changes (`ConfChange`, a list of `ConfChangeOp`) are CONFIG log entries whose
payload is the *whole resulting* Membership (`encode_membership`), so the configuration in
force on a node is simply the newest CONFIG entry in its log (thesis §4.1: a configuration
takes effect when appended, not when committed; a truncated entry reverts it), or the
snapshot's configuration, or the static bootstrap configuration of RaftConfig.

A change that touches voters goes through joint consensus (thesis §4.3): the leader appends
C_old,new; once it commits, the leader appends C_new by itself. A change that touches only
learners does not alter any quorum and is appended as a simple configuration.

`apply_change` validates a change against the current membership and raises
engine.errors.MembershipError (a definite refusal) for anything unsafe; the checks that need
the leader's replication state (a learner must be caught up before promotion) are in the core.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum

from engine.errors import ConfigError, DecodeError, MembershipError
from engine.types import parse_address

ENCODING_VERSION = 1
# A config entry is a handful of ids and addresses; refuse anything absurd from the wire.
MAX_ENCODED_BYTES = 1 << 20
# Request ids of the most recent ADMIN membership operations, carried in every configuration
# (so in the log and in snapshots): a replayed or retried operation is recognised and not
# applied again (engine.aio.node_membership). Bounded: the oldest is forgotten first.
MAX_RECENT_REQUESTS = 64


@dataclass(frozen=True, slots=True)
class Membership:
    """One cluster configuration (see the module docstring). Sets are frozensets; compare
    and hash by value."""

    voters: frozenset[int]
    old_voters: frozenset[int] = frozenset()
    learners: frozenset[int] = frozenset()
    witnesses: frozenset[int] = frozenset()
    addresses: tuple[tuple[int, str], ...] = field(default=())
    requests: tuple[int, ...] = ()   # recent ADMIN request ids, newest last (see above)

    @classmethod
    def of(
        cls,
        voters: Iterable[int],
        learners: Iterable[int] = (),
        witnesses: Iterable[int] = (),
        addresses: Mapping[int, str] | Iterable[tuple[int, str]] = (),
        old_voters: Iterable[int] = (),
    ) -> Membership:
        pairs = addresses.items() if isinstance(addresses, Mapping) else addresses
        return cls(
            frozenset(voters), frozenset(old_voters), frozenset(learners),
            frozenset(witnesses), tuple(sorted((int(k), str(v)) for k, v in pairs)),
        )

    # ------------------------------------------------------------------ queries

    @property
    def joint(self) -> bool:
        return bool(self.old_voters)

    @property
    def all_voters(self) -> frozenset[int]:
        """Voters of either half: the nodes whose votes and acks can count."""
        return self.voters | self.old_voters

    @property
    def members(self) -> frozenset[int]:
        """Every node that receives the log (voters of either half and learners)."""
        return self.voters | self.old_voters | self.learners

    @property
    def halves(self) -> tuple[frozenset[int], ...]:
        """The voter sets that each need a majority: (C_new,) or (C_new, C_old)."""
        return (self.voters, self.old_voters) if self.old_voters else (self.voters,)

    def is_voter(self, node_id: int) -> bool:
        return node_id in self.voters or node_id in self.old_voters

    def is_witness(self, node_id: int) -> bool:
        return node_id in self.witnesses

    def can_lead(self, node_id: int) -> bool:
        """A node may campaign and lead: a voter (of either half) that stores payloads."""
        return self.is_voter(node_id) and node_id not in self.witnesses

    def address_map(self) -> dict[int, str]:
        return dict(self.addresses)

    def leave_joint(self) -> Membership:
        """C_new of a joint configuration (thesis §4.3), dropping members that left."""
        members = self.voters | self.learners
        return Membership(
            self.voters, frozenset(), self.learners, self.witnesses & members,
            tuple(pair for pair in self.addresses if pair[0] in members), self.requests,
        )

    def with_request(self, request_id: int) -> Membership:
        """This configuration also recording ADMIN request `request_id` (0: none)."""
        if not request_id:
            return self
        recent = (*self.requests, request_id)[-MAX_RECENT_REQUESTS:]
        return Membership(self.voters, self.old_voters, self.learners, self.witnesses,
                          self.addresses, recent)

    def validate(self) -> None:
        """Structural rules every configuration obeys; raises MembershipError."""
        if not self.voters:
            raise MembershipError("a configuration needs at least one voter")
        if any(not isinstance(i, int) or i <= 0 for i in self.members):
            raise MembershipError(f"member ids must be positive ints, got {sorted(self.members)}")
        if self.voters & self.learners:
            raise MembershipError(
                f"nodes {sorted(self.voters & self.learners)} are both voter and learner"
            )
        if not self.witnesses <= self.members:
            raise MembershipError(
                f"witnesses {sorted(self.witnesses - self.members)} are not members"
            )
        for half in self.halves:
            witnesses = len(half & self.witnesses)
            # Witness rule W1 (see engine/raft/core.py "Witnesses"): every majority of a
            # voter set must contain a full copy, i.e. witnesses < full voters.
            if witnesses >= len(half) - witnesses:
                raise MembershipError(
                    f"voters {sorted(half)} hold {witnesses} witness(es) and "
                    f"{len(half) - witnesses} full voter(s): witnesses must be fewer than "
                    "full voters, so that every majority holds the data"
                )
        if len({i for i, _ in self.addresses}) != len(self.addresses):
            raise MembershipError("duplicate addresses")

    def to_dict(self) -> dict[str, object]:
        """JSON-friendly view (status(), the driver)."""
        return {
            "voters": sorted(self.voters),
            "old_voters": sorted(self.old_voters),
            "learners": sorted(self.learners),
            "witnesses": sorted(self.witnesses),
            "joint": self.joint,
            "addresses": {str(i): a for i, a in self.addresses},
        }


# ---------------------------------------------------------------------- changes


class ConfChangeType(IntEnum):
    ADD_LEARNER = 1   # a new member that receives the log; address, witness
    PROMOTE = 2       # learner -> voter (joint); refused unless caught up
    DEMOTE = 3        # voter -> learner (joint)
    REMOVE = 4        # voter (joint) or learner (simple) leaves the cluster


@dataclass(frozen=True, slots=True)
class ConfChangeOp:
    type: ConfChangeType
    node_id: int
    address: str = ""
    witness: bool = False


ConfChange = Sequence[ConfChangeOp]


def add_learner(node_id: int, address: str = "", *, witness: bool = False) -> ConfChangeOp:
    return ConfChangeOp(ConfChangeType.ADD_LEARNER, node_id, address, witness)


def promote(node_id: int) -> ConfChangeOp:
    return ConfChangeOp(ConfChangeType.PROMOTE, node_id)


def demote(node_id: int) -> ConfChangeOp:
    return ConfChangeOp(ConfChangeType.DEMOTE, node_id)


def remove(node_id: int) -> ConfChangeOp:
    return ConfChangeOp(ConfChangeType.REMOVE, node_id)


def apply_change(current: Membership, change: ConfChange) -> Membership:
    """The configuration `change` leads to from `current` (not joint): C_old,new when voters
    change, else the new simple configuration. Raises MembershipError for an invalid or
    unsafe change (nothing is appended then)."""
    if current.joint:
        raise MembershipError("the configuration is joint; wait until C_new is appended")
    if not change:
        raise MembershipError("empty configuration change")
    voters = set(current.voters)
    learners = set(current.learners)
    witnesses = set(current.witnesses)
    addresses = dict(current.addresses)
    touched: set[int] = set()
    for op in change:
        node = op.node_id
        if not isinstance(node, int) or node <= 0:
            raise MembershipError(f"node id must be a positive int, got {node!r}")
        if node in touched:
            raise MembershipError(f"node {node} appears twice in one change")
        touched.add(node)
        kind = ConfChangeType(op.type)
        if kind == ConfChangeType.ADD_LEARNER:
            if node in voters or node in learners:
                raise MembershipError(f"node {node} is already a member")
            if op.address:
                try:
                    parse_address(op.address)
                except ConfigError as exc:
                    raise MembershipError(f"node {node}: {exc}") from None
                addresses[node] = op.address
            learners.add(node)
            if op.witness:
                witnesses.add(node)
        elif kind == ConfChangeType.PROMOTE:
            if node not in learners:
                raise MembershipError(f"node {node} is not a learner; cannot promote it")
            learners.discard(node)
            voters.add(node)
        elif kind == ConfChangeType.DEMOTE:
            if node not in voters:
                raise MembershipError(f"node {node} is not a voter; cannot demote it")
            voters.discard(node)
            learners.add(node)
        elif kind == ConfChangeType.REMOVE:
            if node not in voters and node not in learners:
                raise MembershipError(f"node {node} is not a member; cannot remove it")
            voters.discard(node)
            learners.discard(node)
        else:  # pragma: no cover - IntEnum conversion refuses unknown values
            raise MembershipError(f"unknown change type {op.type}")
    if not voters:
        raise MembershipError("the change would leave no voter (removing the last voter)")
    if not voters - witnesses:
        raise MembershipError("the change would leave no full (non-witness) voter")
    new_voters = frozenset(voters)
    if new_voters == current.voters:
        # Learners only: quorums are unchanged, a simple change is safe (thesis §4.2.1).
        members = new_voters | learners
        result = Membership(
            new_voters, frozenset(), frozenset(learners), frozenset(witnesses & members),
            tuple(sorted((i, a) for i, a in addresses.items() if i in members)),
            current.requests,
        )
    else:
        # Voters change: joint consensus (thesis §4.3). Leaving members keep their address
        # until C_new; a removed voter stays in old_voters.
        members = new_voters | current.voters | learners
        result = Membership(
            new_voters, current.voters, frozenset(learners), frozenset(witnesses & members),
            tuple(sorted((i, a) for i, a in addresses.items() if i in members)),
            current.requests,
        )
    result.validate()
    if result.joint:
        result.leave_joint().validate()
    return result


# ---------------------------------------------------------------------- encoding


def encode_membership(membership: Membership) -> bytes:
    """The CONFIG entry payload and the snapshot's configuration: versioned, canonical JSON
    (sorted keys and ids), a few hundred bytes for a handful of members."""
    body = {
        "v": ENCODING_VERSION,
        "voters": sorted(membership.voters),
        "old": sorted(membership.old_voters),
        "learners": sorted(membership.learners),
        "witnesses": sorted(membership.witnesses),
        "addresses": [[i, a] for i, a in membership.addresses],
    }
    if membership.requests:  # absent when empty: older encodings stay byte-identical
        body["requests"] = list(membership.requests)
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def _ids(body: dict[str, object], key: str) -> frozenset[int]:
    value = body.get(key, [])
    if not isinstance(value, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) and i > 0 for i in value
    ):
        raise DecodeError(f"configuration field {key!r} is not a list of positive ids")
    return frozenset(value)


def decode_membership(payload: bytes | bytearray | memoryview) -> Membership:
    """Inverse of encode_membership; raises DecodeError for anything malformed (remote input:
    a follower refuses an append carrying such an entry)."""
    if len(payload) > MAX_ENCODED_BYTES:
        raise DecodeError(f"configuration of {len(payload)} bytes is too large")
    try:
        body = json.loads(bytes(payload))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DecodeError(f"configuration is not valid JSON: {exc}") from None
    if not isinstance(body, dict) or body.get("v") != ENCODING_VERSION:
        raise DecodeError("configuration has an unknown version")
    raw_addresses = body.get("addresses", [])
    if not isinstance(raw_addresses, list) or not all(
        isinstance(p, list) and len(p) == 2 and isinstance(p[0], int) and isinstance(p[1], str)
        for p in raw_addresses
    ):
        raise DecodeError("configuration addresses are malformed")
    requests = body.get("requests", [])
    if not isinstance(requests, list) or len(requests) > MAX_RECENT_REQUESTS or not all(
        isinstance(i, int) and not isinstance(i, bool) and 0 < i < 1 << 64 for i in requests
    ):
        raise DecodeError("configuration requests are malformed")
    membership = Membership(
        _ids(body, "voters"), _ids(body, "old"), _ids(body, "learners"),
        _ids(body, "witnesses"), tuple(sorted((int(i), a) for i, a in raw_addresses)),
        tuple(requests),
    )
    try:
        membership.validate()
    except MembershipError as exc:
        raise DecodeError(f"configuration is invalid: {exc}") from None
    return membership


__all__ = [
    "Membership", "ConfChangeType", "ConfChangeOp", "ConfChange", "add_learner", "promote",
    "demote", "remove", "apply_change", "encode_membership", "decode_membership",
]

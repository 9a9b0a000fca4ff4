"""Mutual-exclusion checker for a lock service and the fenced resource it guards (sans-IO).

    result = check_mutual_exclusion(history)
    result.valid            False when a safety rule is broken (result.violations says which)
    result.fenced           refused writes the fence was right to refuse (the fence working)
    handovers = lock_handover_delays(history, bound_s=ttl_s + election_timeout_s)

History: a list of events in recorded order (list order is the order the checker reasons in;
the fenced writes among themselves are in the resource's order, the order it applied them):

    {"type": "lock-acquired", "client", "lock", "token", "time"}
    {"type": "lock-released" | "lock-lost", "client", "lock", "token", "time"}
    {"type": "fenced-write", "client", "lock", "token", "key", "outcome": "accepted" | "refused",
     "time"}

"lock-lost" is the harness's record of the moment a holder stopped holding without releasing
(its lease expired, it was killed or paused past its TTL); its time is when the fault hit.

Safety rules (the fencing scheme, Kleppmann 2016 "How to do distributed locking"; Chubby's
sequencers, Burrows OSDI 2006 §2.4):

  token-not-increasing  the tokens of one lock strictly increase with every grant.
  fence-violated        once the resource accepted a write with token t, it accepts no write
                        with a token < t of that lock. Since each grant has its own token, this
                        is "no two holders' accepted writes interleave".
  write-outside-grant   an accepted write carries a token granted (earlier in the history) to
                        the client that wrote it; a resource accepting a token never granted,
                        or before its grant, or from another client, is not fenced at all.
  stale-after-grant     only with fence_knows_grants=True (a fence inside the replicated state
                        machine that applies the grants, as `put(..., fence=lock)`, where the
                        events are recorded in apply order): once token t' is granted, no write
                        with a token < t' is accepted, even before the new holder wrote.

A refused write of token t is the fence working when a greater token of that lock was granted
or accepted before it (result.fenced); a refusal with no such reason is not a safety violation
(refusing is always safe) but is reported in result.unexplained_refusals, since it costs the
holder its lock for nothing.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.testing.models import HistoryError

__all__ = [
    "Handover",
    "LockCheckResult",
    "LockViolation",
    "check_mutual_exclusion",
    "lock_handover_delays",
    "summarize_handovers",
]

ACQUIRED = "lock-acquired"
RELEASED = "lock-released"
LOST = "lock-lost"
WRITE = "fenced-write"
EVENT_TYPES = (ACQUIRED, RELEASED, LOST, WRITE)
OUTCOMES = ("accepted", "refused")


@dataclass(frozen=True)
class LockViolation:
    """One broken rule, with the events (and their positions in the history) that prove it."""

    kind: str
    lock: Hashable
    message: str
    events: tuple[tuple[int, Mapping[str, Any]], ...]

    def __str__(self) -> str:
        proof = "; ".join(f"#{position} {dict(event)}" for position, event in self.events)
        return f"{self.kind} (lock {self.lock!r}): {self.message} [{proof}]"


@dataclass
class LockCheckResult:
    valid: bool
    violations: list[LockViolation] = field(default_factory=list)
    # Refused writes whose token was superseded before them: the fence working.
    fenced: list[tuple[int, Mapping[str, Any]]] = field(default_factory=list)
    # Refused writes with no greater token seen before them (safe, but a needless loss).
    unexplained_refusals: list[tuple[int, Mapping[str, Any]]] = field(default_factory=list)
    grants: int = 0
    accepted_writes: int = 0

    def __bool__(self) -> bool:
        return self.valid


def _validate(history: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    events = list(history)
    for number, event in enumerate(events):
        if not isinstance(event, Mapping):
            raise HistoryError(f"event #{number} is not an object: {event!r}")
        kind = event.get("type")
        if kind not in EVENT_TYPES:
            raise HistoryError(f"event #{number}: type {kind!r}, want one of {EVENT_TYPES}")
        for name in ("client", "lock", "token"):
            if name not in event:
                raise HistoryError(f"event #{number} ({kind}) has no {name!r}")
        token = event["token"]
        if not isinstance(token, int) or isinstance(token, bool):
            raise HistoryError(f"event #{number}: token {token!r} is not an integer")
        if kind == WRITE and event.get("outcome") not in OUTCOMES:
            raise HistoryError(
                f"event #{number}: outcome {event.get('outcome')!r}, want {OUTCOMES}")
    return events


def check_mutual_exclusion(
    history: Iterable[Mapping[str, Any]], *, fence_knows_grants: bool = False,
) -> LockCheckResult:
    """Check the safety rules of the module docstring over one recorded history."""
    events = _validate(history)
    result = LockCheckResult(valid=True)
    # Per lock: the last grant, every grant by token, the greatest accepted write.
    last_grant: dict[Hashable, tuple[int, Mapping[str, Any]]] = {}
    grants: dict[tuple[Hashable, int], tuple[int, Mapping[str, Any]]] = {}
    top_write: dict[Hashable, tuple[int, Mapping[str, Any]]] = {}

    def violate(kind: str, lock: Hashable, message: str,
                *proof: tuple[int, Mapping[str, Any]]) -> None:
        result.valid = False
        result.violations.append(LockViolation(kind, lock, message, tuple(proof)))

    for position, event in enumerate(events):
        kind, lock, token = event["type"], event["lock"], event["token"]
        here = (position, event)
        if kind == ACQUIRED:
            result.grants += 1
            previous = last_grant.get(lock)
            if previous is not None and token <= previous[1]["token"]:
                violate("token-not-increasing", lock,
                        f"token {token} granted after token {previous[1]['token']}",
                        previous, here)
            last_grant[lock] = here
            grants.setdefault((lock, token), here)
            continue
        if kind != WRITE:
            continue
        top = top_write.get(lock)
        newest = last_grant.get(lock)
        if event["outcome"] == "refused":
            superseded = ((top is not None and top[1]["token"] > token)
                          or (newest is not None and newest[1]["token"] > token))
            (result.fenced if superseded else result.unexplained_refusals).append(here)
            continue
        result.accepted_writes += 1
        grant = grants.get((lock, token))
        if grant is None:
            violate("write-outside-grant", lock,
                    f"write with token {token} accepted before any grant of that token", here)
        elif grant[1]["client"] != event["client"]:
            violate("write-outside-grant", lock,
                    f"token {token} was granted to {grant[1]['client']!r}, "
                    f"written by {event['client']!r}", grant, here)
        if top is not None and token < top[1]["token"]:
            violate("fence-violated", lock,
                    f"write with token {token} accepted after a write with token "
                    f"{top[1]['token']}: two holders' writes interleave", top, here)
        elif fence_knows_grants and newest is not None and token < newest[1]["token"]:
            violate("stale-after-grant", lock,
                    f"write with token {token} accepted after token {newest[1]['token']} "
                    "was granted", newest, here)
        if top is None or token > top[1]["token"]:
            top_write[lock] = here
    return result


@dataclass(frozen=True)
class Handover:
    """A holder's loss and the next grant of its lock: the liveness measure."""

    lock: Hashable
    lost: Mapping[str, Any]
    next_grant: Mapping[str, Any] | None   # None: never granted again in the history
    delay: float | None                    # next grant's time - loss time
    bound: float

    @property
    def within_bound(self) -> bool:
        return self.delay is not None and self.delay <= self.bound


def lock_handover_delays(
    history: Iterable[Mapping[str, Any]], bound_s: float,
) -> list[Handover]:
    """For every "lock-lost", the delay to the next grant of that lock, against bound_s.

    The bound a lease-based lock promises after a holder dies is its TTL plus the election
    timeout: the lease runs out on the leader's clock, and a new leader extends every lease by
    its election timeout rather than expiring one early (etcd's lessor Promote). Every event
    used must carry a numeric "time" from one clock.
    """
    events = _validate(history)
    pending: dict[Hashable, list[Mapping[str, Any]]] = {}
    handovers: list[Handover] = []
    for number, event in enumerate(events):
        if event["type"] not in (LOST, ACQUIRED):
            continue
        time = event.get("time")
        if not isinstance(time, int | float) or isinstance(time, bool):
            raise HistoryError(f"event #{number} ({event['type']}) has no numeric time")
        lock = event["lock"]
        if event["type"] == LOST:
            pending.setdefault(lock, []).append(event)
            continue
        for lost in pending.pop(lock, []):
            handovers.append(Handover(lock, lost, event, time - lost["time"], bound_s))
    for lock, losses in pending.items():
        handovers.extend(Handover(lock, lost, None, None, bound_s) for lost in losses)
    return handovers


def summarize_handovers(handovers: Sequence[Handover]) -> dict[str, Any]:
    """Count, worst delay and the handovers over the bound (or never regranted)."""
    delays = [h.delay for h in handovers if h.delay is not None]
    return {
        "handovers": len(handovers),
        "max_delay": max(delays) if delays else None,
        "over_bound": [h for h in handovers if not h.within_bound],
    }

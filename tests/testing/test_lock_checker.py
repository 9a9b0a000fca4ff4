"""engine/testing/locks.py: each safety rule catches its planted violation, clean histories pass.

Clean histories come from a correct lock service and a Kleppmann fenced resource (accept a
token >= the greatest accepted, refuse the rest) driven by hypothesis with paused holders that
write late; every refusal of such a run is the fence working. Mutating one refusal into an
acceptance is the bug the fence exists to stop, and the checker must name it.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from engine.testing.locks import check_mutual_exclusion, lock_handover_delays, summarize_handovers
from engine.testing.models import HistoryError

LOCK = "L"


def grant(client: str, token: int, time: float = 0.0) -> dict[str, Any]:
    return {"type": "lock-acquired", "client": client, "lock": LOCK, "token": token, "time": time}


def release(client: str, token: int, time: float = 0.0) -> dict[str, Any]:
    return {"type": "lock-released", "client": client, "lock": LOCK, "token": token, "time": time}


def lost(client: str, token: int, time: float = 0.0) -> dict[str, Any]:
    return {"type": "lock-lost", "client": client, "lock": LOCK, "token": token, "time": time}


def write(client: str, token: int, outcome: str = "accepted", key: str = "k",
          time: float = 0.0) -> dict[str, Any]:
    return {"type": "fenced-write", "client": client, "lock": LOCK, "token": token, "key": key,
            "outcome": outcome, "time": time}


def kinds(history: list[dict[str, Any]], **options: Any) -> list[str]:
    return [violation.kind for violation in check_mutual_exclusion(history, **options).violations]


def test_the_paused_holder_is_fenced_and_the_history_is_clean() -> None:
    # Kleppmann's scenario: A pauses past its TTL, B gets a higher token and writes, A wakes.
    history = [grant("A", 33), write("A", 33), lost("A", 33), grant("B", 34), write("B", 34),
               write("A", 33, "refused"), release("B", 34), grant("A", 35), write("A", 35)]
    result = check_mutual_exclusion(history)
    assert result.valid, [str(v) for v in result.violations]
    assert result.fenced == [(5, history[5])]
    assert (result.grants, result.accepted_writes, result.unexplained_refusals) == (3, 3, [])


def test_a_token_going_back_is_caught() -> None:
    assert kinds([grant("A", 5), release("A", 5), grant("B", 4)]) == ["token-not-increasing"]


def test_a_token_granted_twice_is_caught() -> None:
    result = check_mutual_exclusion([grant("A", 5), lost("A", 5), grant("B", 5)])
    assert [v.kind for v in result.violations] == ["token-not-increasing"]
    # The proof names both grants, by position.
    assert [position for position, _ in result.violations[0].events] == [0, 2]


def test_interleaved_writes_of_two_holders_are_caught() -> None:
    history = [grant("A", 1), write("A", 1), lost("A", 1), grant("B", 2), write("B", 2),
               write("A", 1)]
    result = check_mutual_exclusion(history)
    assert [v.kind for v in result.violations] == ["fence-violated"]
    assert [position for position, _ in result.violations[0].events] == [4, 5]


def test_a_write_with_a_token_never_granted_or_granted_to_another_is_caught() -> None:
    assert kinds([write("A", 7)]) == ["write-outside-grant"]
    assert kinds([grant("A", 7), write("B", 7)]) == ["write-outside-grant"]
    # Before its grant: the resource accepted a token nobody held yet.
    assert kinds([write("A", 7), grant("A", 7)]) == ["write-outside-grant"]


def test_a_state_machine_fence_must_refuse_once_a_newer_token_is_granted() -> None:
    # The external resource has not seen token 2 yet, so accepting 1 is legal there (Kleppmann);
    # a fence inside the replicated state machine applies the grant and must refuse.
    history = [grant("A", 1), lost("A", 1), grant("B", 2), write("A", 1)]
    assert kinds(history) == []
    assert kinds(history, fence_knows_grants=True) == ["stale-after-grant"]


def test_a_refusal_without_a_newer_token_is_reported_but_safe() -> None:
    result = check_mutual_exclusion([grant("A", 1), write("A", 1, "refused")])
    assert result.valid
    assert result.unexplained_refusals and not result.fenced


def test_locks_are_independent() -> None:
    other = {**grant("B", 1), "lock": "M"}
    assert kinds([grant("A", 5), other, {**write("B", 1), "lock": "M"}, write("A", 5)]) == []


def test_malformed_events_are_refused() -> None:
    for bad in ([{"type": "lock-acquired", "client": "A", "lock": LOCK}],
                [{**grant("A", 1), "type": "acquire"}], [{**write("A", 1), "outcome": "ok"}],
                [{**grant("A", 1), "token": "1"}], ["not an event"]):
        with pytest.raises(HistoryError):
            check_mutual_exclusion(bad)  # type: ignore[arg-type]


def test_handover_delays_against_ttl_plus_election_timeout() -> None:
    ttl, election = 2.0, 1.0
    history = [grant("A", 1, 0.0), lost("A", 1, 1.0), grant("B", 2, 3.5),   # 2.5 s <= 3 s
               lost("B", 2, 4.0), grant("C", 3, 8.0),                      # 4.0 s > 3 s
               lost("C", 3, 9.0)]                                          # never regranted
    handovers = lock_handover_delays(history, bound_s=ttl + election)
    assert [(h.delay, h.within_bound) for h in handovers] == [
        (2.5, True), (4.0, False), (None, False)]
    summary = summarize_handovers(handovers)
    assert summary["max_delay"] == 4.0 and len(summary["over_bound"]) == 2
    with pytest.raises(HistoryError):
        lock_handover_delays([{**lost("A", 1), "time": None}], bound_s=1.0)


# -- generated: a correct service and a fenced resource, then one planted acceptance ----------


@st.composite
def fenced_runs(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A correct lock service (each grant a new, greater token) and a Kleppmann resource, with
    clients that keep writing with their old token after losing the lock (paused holders)."""
    clients = ["A", "B", "C"]
    token = draw(st.integers(1, 100))
    held: dict[str, int] = {}        # the last token each client was granted
    top = 0                          # the greatest token the resource accepted
    history: list[dict[str, Any]] = []
    for step in range(draw(st.integers(1, 40))):
        client = draw(st.sampled_from(clients))
        if draw(st.booleans()) or client not in held:
            token += draw(st.integers(1, 3))
            held[client] = token
            history.append(grant(client, token, step))
            continue
        mine = held[client]
        outcome = "accepted" if mine >= top else "refused"
        top = max(top, mine) if outcome == "accepted" else top
        history.append(write(client, mine, outcome, time=step))
    return history


@settings(max_examples=300, deadline=None)
@given(fenced_runs())
def test_generated_fenced_histories_are_clean(history: list[dict[str, Any]]) -> None:
    result = check_mutual_exclusion(history)
    assert result.valid, [str(v) for v in result.violations]
    assert not result.unexplained_refusals
    refused = sum(1 for event in history if event.get("outcome") == "refused")
    assert len(result.fenced) == refused


@settings(max_examples=300, deadline=None)
@given(fenced_runs(), st.data())
def test_accepting_any_fenced_write_is_caught(history: list[dict[str, Any]],
                                              data: st.DataObject) -> None:
    refused = [i for i, event in enumerate(history) if event.get("outcome") == "refused"]
    assume(refused)
    planted = data.draw(st.sampled_from(refused))
    history[planted] = {**history[planted], "outcome": "accepted"}
    result = check_mutual_exclusion(history)
    assert not result.valid
    assert any(v.kind == "fence-violated" and v.events[-1][0] == planted
               for v in result.violations)

"""One test per rule of the Raft paper and thesis, on one RaftCore (etcd raft_paper_test.go style).

Method: build a core in a known state, feed it hand-written messages and ticks, and check the
Ready it produces (messages, messages_after_persist, entries, committed entries, read states)
and its state. Every core runs with check_invariants=True.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from engine.config import Limits, TimingConfig
from engine.errors import EntryTooLarge, NotLeader, Overloaded
from engine.messages import Entry, EntryKind, Message, MessageType
from engine.raft import RaftConfig, RaftCore, Role
from engine.raft.progress import ProgressState
from engine.types import HardState, ReadState

MT = MessageType
TIMING = TimingConfig(tick_ms=10, heartbeat_interval_ticks=2, election_timeout_ticks=10)


def make_core(
    node_id: int = 1,
    voters: tuple[int, ...] = (1, 2, 3),
    *,
    term: int = 0,
    vote: int = 0,
    commit: int = 0,
    log_terms: tuple[int, ...] = (),
    limits: Limits | None = None,
    pre_vote: bool = False,
    check_quorum: bool = False,
    seed: int = 0,
) -> RaftCore:
    config = RaftConfig(
        node_id,
        voters,
        TIMING,
        limits or Limits(),
        pre_vote=pre_vote,
        check_quorum=check_quorum,
        check_invariants=True,
        seed=seed,
    )
    entries = [Entry(t, i + 1, b"e%d" % (i + 1)) for i, t in enumerate(log_terms)]
    return RaftCore(
        config, HardState(max(term, *log_terms) if log_terms else term, vote, commit), entries
    )


def drain(core: RaftCore) -> tuple[list[Any], list[Any], list[Any]]:
    """Runs the driver loop (persisting instantly); returns (messages, after_persist, committed)."""
    messages: list[Any] = []
    after: list[Any] = []
    committed: list[Any] = []
    while core.has_ready():
        ready = core.ready()
        messages += ready.messages
        after += ready.messages_after_persist
        committed += ready.committed_entries
        core.advance(ready)
    return messages, after, committed


def sent(core: RaftCore) -> list[Any]:
    messages, after, _ = drain(core)
    return messages + after


def tick_until(core: RaftCore, predicate: Any, limit: int = 100) -> None:
    for _ in range(limit):
        if predicate():
            return
        core.tick()
    assert predicate()


def make_leader(voters: tuple[int, ...] = (1, 2, 3), **kwargs: Any) -> RaftCore:
    """Node 1 elected at the next term with votes from every peer, no-op acked by nobody."""
    core = make_core(1, voters, **kwargs)
    tick_until(core, lambda: core.role == Role.CANDIDATE or core.role == Role.LEADER)
    drain(core)
    for peer in voters[1:]:
        core.step(Message(MT.VOTE_RESPONSE, peer, 1, core.term))
    assert core.role == Role.LEADER
    drain(core)
    return core


def ack_all(core: RaftCore, peers: tuple[int, ...] = (2, 3)) -> list[Any]:
    out: list[Any] = []
    for peer in peers:
        core.step(Message(MT.APPEND_RESPONSE, peer, 1, core.term, index=core.log.last_index))
        out += sent(core)
    return out


# --------------------------------------------------------------------- §5.2 leader election


def test_follower_becomes_candidate_after_election_timeout() -> None:
    # Raft §5.2: a follower that hears nothing for an election timeout starts an election:
    # term + 1, votes for itself, asks every peer with its last log entry.
    core = make_core(log_terms=(1, 1))
    tick_until(core, lambda: core.role == Role.CANDIDATE)
    assert (core.term, core.vote) == (2, 1)
    messages, after, _ = drain(core)
    # The vote requests carry our own (persisted) vote: sent only after the fsync.
    assert not messages
    assert sorted(m.dst for m in after) == [2, 3]
    assert all((m.type, m.term, m.log_term, m.index) == (MT.VOTE, 2, 1, 2) for m in after)


def test_election_timeout_is_randomized_in_t_to_2t() -> None:
    # Raft §5.2: randomized timeouts in [T, 2T) keep split votes rare.
    timeouts = set()
    for seed in range(40):
        core = make_core(seed=seed)
        ticks = 0
        while core.role == Role.FOLLOWER:
            core.tick()
            ticks += 1
        assert TIMING.election_timeout_ticks <= ticks < 2 * TIMING.election_timeout_ticks
        timeouts.add(ticks)
    assert len(timeouts) > 3


def test_candidate_wins_with_a_majority_and_appends_a_noop() -> None:
    # Raft §5.2 + §8: a majority of votes makes a leader, which appends a no-op of its term
    # and replicates it at once (the Ready's `messages`, in parallel with its own fsync).
    core = make_core(1, (1, 2, 3, 4, 5))
    tick_until(core, lambda: core.role == Role.CANDIDATE)
    drain(core)
    core.step(Message(MT.VOTE_RESPONSE, 2, 1, core.term))
    core.step(Message(MT.VOTE_RESPONSE, 2, 1, core.term))  # duplicate: counted once
    assert core.role == Role.CANDIDATE
    core.step(Message(MT.VOTE_RESPONSE, 3, 1, core.term))
    assert core.role == Role.LEADER and core.leader_id == 1
    ready = core.ready()
    assert [(e.index, e.term, e.kind) for e in ready.entries] == [(1, core.term, EntryKind.NOOP)]
    appends = [m for m in ready.messages if m.type == MT.APPEND]
    assert sorted(m.dst for m in appends) == [2, 3, 4, 5]
    assert all(m.entries and m.entries[0].kind == EntryKind.NOOP for m in appends)


def test_candidate_loses_with_a_majority_of_rejections() -> None:
    core = make_core()
    tick_until(core, lambda: core.role == Role.CANDIDATE)
    term = core.term
    core.step(Message(MT.VOTE_RESPONSE, 2, 1, term, reject=True))
    core.step(Message(MT.VOTE_RESPONSE, 3, 1, term, reject=True))
    assert core.role == Role.FOLLOWER and core.term == term


def test_candidate_steps_down_for_a_leader_of_its_term() -> None:
    # Raft §5.2: an AppendEntries from a leader whose term is >= ours ends the candidacy.
    core = make_core()
    tick_until(core, lambda: core.role == Role.CANDIDATE)
    core.step(Message(MT.HEARTBEAT, 3, 1, core.term))
    assert core.role == Role.FOLLOWER and core.leader_id == 3


@pytest.mark.parametrize(
    "msg_type", [MT.APPEND, MT.HEARTBEAT, MT.VOTE_RESPONSE, MT.APPEND_RESPONSE]
)
def test_a_higher_term_makes_any_role_a_follower(msg_type: MessageType) -> None:
    # Raft §5.1: a node that sees a higher term adopts it and becomes a follower.
    for role_setup in ("follower", "candidate", "leader"):
        core = make_leader() if role_setup == "leader" else make_core()
        if role_setup == "candidate":
            while core.role != Role.CANDIDATE:
                core.tick()
        new_term = core.term + 5
        core.step(Message(msg_type, 2, 1, new_term))
        assert core.role == Role.FOLLOWER, role_setup
        assert core.term == new_term


def test_a_stale_term_message_is_ignored_and_a_stale_leader_is_told() -> None:
    core = make_core(term=5, check_quorum=True)
    core.step(Message(MT.VOTE, 2, 1, 4, log_term=9, index=9))
    assert core.vote == 0 and core.ignored.get("stale term") == 1
    core.step(Message(MT.HEARTBEAT, 2, 1, 3))
    (response,) = sent(core)
    assert (response.type, response.dst, response.term) == (MT.APPEND_RESPONSE, 2, 5)


def test_vote_at_most_once_per_term() -> None:
    # Raft §5.2: one vote per term, first come first served; a repeated request is re-granted.
    core = make_core(term=1)
    core.step(Message(MT.VOTE, 2, 1, 2))
    core.step(Message(MT.VOTE, 3, 1, 2))
    core.step(Message(MT.VOTE, 2, 1, 2))
    messages, after, _ = drain(core)
    assert not messages  # vote responses wait for the fsync of our vote
    assert [(m.dst, m.reject) for m in after] == [(2, False), (3, True), (2, False)]
    assert core.vote == 2


@pytest.mark.parametrize(
    ("log_term", "index", "granted"),
    [
        (1, 3, False),  # older last term
        (2, 2, False),  # same last term, shorter log
        (2, 3, True),  # same last term, same length
        (2, 4, True),  # same last term, longer log
        (3, 1, True),  # newer last term, even if shorter
    ],
)
def test_vote_only_for_an_up_to_date_log(log_term: int, index: int, granted: bool) -> None:
    # Raft §5.4.1: deny the vote if the candidate's log is less up to date than ours.
    core = make_core(log_terms=(1, 2, 2))
    core.step(Message(MT.VOTE, 2, 1, 5, log_term=log_term, index=index))
    (response,) = sent(core)
    assert response.reject is not granted
    assert (core.vote == 2) is granted


# --------------------------------------------------------------------- §5.3 log replication


def test_leader_sends_new_entries_immediately_and_counts_itself_after_fsync() -> None:
    # Thesis §10.2.1: the leader replicates in parallel with its own disk write; its own
    # match index moves only in advance(), after the driver synced Ready.entries.
    core = make_leader()
    ack_all(core)
    commit = core.commit_index
    first, last, term = core.propose([b"a", b"b"])
    assert (last - first, term) == (1, core.term)
    ready = core.ready()
    assert [e.data for e in ready.entries] == [b"a", b"b"]
    appends = [m for m in ready.messages if m.type == MT.APPEND and m.entries]
    assert sorted(m.dst for m in appends) == [2, 3]
    # One follower ack alone is not a quorum of 3 while the leader has not synced.
    core.step(Message(MT.APPEND_RESPONSE, 2, 1, core.term, index=last))
    assert core.commit_index == commit
    core.advance(ready)
    assert core.commit_index == last


def test_follower_appends_acks_after_persist_and_commits_up_to_the_new_entries() -> None:
    core = make_core(term=2, log_terms=(1,))
    entries = [Entry(2, 2, b"x"), Entry(2, 3, b"y")]
    core.step(Message(MT.APPEND, 2, 1, 2, log_term=1, index=1, commit=3, entries=entries))
    ready = core.ready()
    assert ready.entries == entries and not ready.messages
    (ack,) = ready.messages_after_persist
    assert (ack.type, ack.index, ack.reject) == (MT.APPEND_RESPONSE, 3, False)
    assert [e.index for e in ready.committed_entries] == [1, 2, 3]
    core.advance(ready)
    assert core.applied_index == 3


def test_follower_commit_is_capped_by_the_entries_it_matched() -> None:
    # Raft Figure 2: commitIndex = min(leaderCommit, index of last new entry); entries past
    # the matched prefix may be stale leftovers and must not be committed.
    core = make_core(term=3, log_terms=(1, 1, 1, 1))  # index 3-4 may be stale
    core.step(
        Message(MT.APPEND, 2, 1, 3, log_term=1, index=1, commit=4, entries=[Entry(1, 2, b"e2")])
    )
    assert core.commit_index == 2


def test_follower_rejects_a_mismatched_previous_entry_with_a_hint() -> None:
    # Raft §5.3 consistency check + etcd's hint: the largest index with term <= the leader's
    # previous term (findConflictByTerm).
    core = make_core(term=4, log_terms=(1, 1, 2, 2, 2))
    core.step(Message(MT.APPEND, 2, 1, 4, log_term=3, index=6))
    (reject,) = sent(core)
    assert reject.reject and reject.index == 6
    assert (reject.reject_hint, reject.reject_term) == (5, 2)
    core.step(Message(MT.APPEND, 2, 1, 4, log_term=1, index=4))
    (reject,) = sent(core)
    assert (reject.reject_hint, reject.reject_term) == (2, 1)


def test_follower_deletes_a_conflicting_suffix() -> None:
    # Raft §5.3: if an existing entry conflicts with a new one, delete it and all that follow.
    core = make_core(term=3, log_terms=(1, 1, 2, 2))
    core.step(Message(MT.APPEND, 2, 1, 3, log_term=1, index=2, entries=[Entry(3, 3, b"new")]))
    assert core.log.last_index == 3 and core.log.term(3) == 3
    ready = core.ready()
    assert [(e.index, e.term) for e in ready.entries] == [(3, 3)]
    # A stale, reordered copy of an older append does not truncate matching entries.
    core.advance(ready)
    core.step(Message(MT.APPEND, 2, 1, 3, log_term=1, index=1, entries=[Entry(1, 2, b"e2")]))
    assert core.log.last_index == 3


def test_leader_backtracks_one_term_per_round_trip() -> None:
    # Thesis §5.3 optimisation: with the hint the leader skips whole terms, so repairing a
    # divergent follower takes one round trip per term, not per entry.
    leader = make_core(1, (1, 2), log_terms=(1,) + (3,) * 20)
    follower = make_core(2, (1, 2), log_terms=(1,) + (2,) * 20)
    tick_until(leader, lambda: leader.role == Role.CANDIDATE)
    drain(leader)
    leader.step(Message(MT.VOTE_RESPONSE, 2, 1, leader.term))
    assert leader.role == Role.LEADER
    rounds = 0
    pending = sent(leader)
    while pending and rounds < 50:
        rounds += 1
        responses = []
        for m in pending:
            if m.dst == 2:
                follower.step(m)
        responses = sent(follower)
        for m in responses:
            leader.step(m)
        pending = sent(leader)
        if (
            follower.log.last_index == leader.log.last_index
            and follower.log.term(follower.log.last_index) == leader.term
        ):
            break
    assert follower.log.term(21) == 3 and follower.log.term(22) == leader.term
    assert rounds <= 4


def test_replicate_window_is_bounded_and_pipelined() -> None:
    limits = Limits(max_inflight_messages=2, max_append_bytes=64)
    core = make_leader(limits=limits)
    ack_all(core)
    for _ in range(10):
        core.propose([bytes(64)])
    appends = [m for m in sent(core) if m.type == MT.APPEND and m.dst == 2 and m.entries]
    assert len(appends) == 2  # window full: two appends in flight, each <= max_append_bytes
    assert all(len(m.entries) == 1 for m in appends)
    core.step(Message(MT.APPEND_RESPONSE, 2, 1, core.term, index=appends[0].entries[-1].index))
    more = [m for m in sent(core) if m.type == MT.APPEND and m.dst == 2 and m.entries]
    assert len(more) == 1  # one slot freed, one more append


def test_lost_appends_in_replicate_state_are_resent() -> None:
    # UDP: a whole window can be lost. The leader notices acks stopped and probes again.
    core = make_leader(limits=Limits(max_inflight_messages=2))
    ack_all(core)
    core.propose([b"lost-1"])
    core.propose([b"lost-2"])
    core.propose([b"queued"])
    drain(core)  # all appends to 2 and 3 are "lost"
    assert core._progress[2].state == ProgressState.REPLICATE
    resent: list[Any] = []
    for _ in range(4 * TIMING.election_timeout_ticks):
        core.tick()
        for m in sent(core):
            if m.type == MT.HEARTBEAT and m.dst == 2:
                core.step(Message(MT.HEARTBEAT_RESPONSE, 2, 1, core.term))
            if m.type == MT.APPEND and m.dst == 2 and m.entries:
                resent.append(m)
        if resent:
            break
    assert resent and resent[0].entries[0].data == b"lost-1"


def test_heartbeat_carries_commit_capped_by_match() -> None:
    core = make_leader()
    ack_all(core, peers=(2,))
    core.propose([b"x"])
    drain(core)
    core.step(Message(MT.APPEND_RESPONSE, 2, 1, core.term, index=core.log.last_index))
    drain(core)
    tick_until(core, lambda: core._heartbeat_elapsed == TIMING.heartbeat_interval_ticks - 1)
    core.tick()
    beats = {m.dst: m.commit for m in sent(core) if m.type == MT.HEARTBEAT}
    assert beats == {2: core.commit_index, 3: 0}


def commit_notices(messages: list[Message]) -> list[Message]:
    """Commit notices: HEARTBEATs without a round context (heartbeat rounds carry one)."""
    return [m for m in messages if m.type == MT.HEARTBEAT and not m.context]


def test_commit_reaches_followers_as_unanswered_notices_once_they_hold_it() -> None:
    # §5.3: followers learn the commit index from the leader. A follower in step is owed a
    # commit notice (a HEARTBEAT without a round context) that it does not answer, sent on the
    # leader's next tick; one whose ack was still in flight is owed its notice when that ack
    # reaches the commit index.
    core = make_leader()
    ack_all(core)
    _, last, _ = core.propose([b"x"])
    drain(core)
    core.step(Message(MT.APPEND_RESPONSE, 2, 1, core.term, index=last))
    assert core.commit_index == last
    assert sent(core) == []  # not in the turn that commits: on the next tick
    core.tick()
    notices = commit_notices(sent(core))
    assert [(m.type, m.dst, m.commit, m.context) for m in notices] == [
        (MT.HEARTBEAT, 2, last, b"")]
    core.step(Message(MT.APPEND_RESPONSE, 3, 1, core.term, index=last))
    core.tick()
    assert [(m.type, m.dst, m.commit, m.context) for m in commit_notices(sent(core))] == [
        (MT.HEARTBEAT, 3, last, b"")]
    # A repeated ack earns nothing more, and a notice is sent once.
    core.step(Message(MT.APPEND_RESPONSE, 3, 1, core.term, index=last))
    core.tick()
    assert commit_notices(sent(core)) == []

    follower = make_core(2, term=core.term, log_terms=(core.term,) * last)
    follower.step(notices[0])
    messages, after, committed = drain(follower)
    assert follower.commit_index == last and messages == after == []
    assert [e.index for e in committed] == list(range(1, last + 1))


def test_an_append_before_the_tick_carries_the_commit_and_cancels_the_notice() -> None:
    # Under load the next append reaches the follower before the tick and carries the
    # commit, so no notice datagram is spent on it (nor a wake-up of the follower).
    core = make_leader()
    ack_all(core)
    _, first, _ = core.propose([b"x"])
    drain(core)
    core.step(Message(MT.APPEND_RESPONSE, 2, 1, core.term, index=first))
    core.step(Message(MT.APPEND_RESPONSE, 3, 1, core.term, index=first))
    assert core.commit_index == first and sent(core) == []
    core.propose([b"y"])
    appends = [(m.type, m.dst, m.commit) for m in sent(core)]
    assert appends == [(MT.APPEND, 2, first), (MT.APPEND, 3, first)]
    core.tick()
    assert commit_notices(sent(core)) == []


def test_commit_notice_waits_for_a_follower_to_hold_the_commit_index() -> None:
    # Heartbeats cap the commit at the follower's match (etcd); notices are sent only where
    # match >= commit, so a follower never hears of a commit beyond what it is known to hold.
    core = make_leader()
    ack_all(core)
    _, first, _ = core.propose([b"x"])
    _, second, _ = core.propose([b"y"])
    drain(core)
    core.step(Message(MT.APPEND_RESPONSE, 3, 1, core.term, index=first - 1))  # stale: ignored
    core.step(Message(MT.APPEND_RESPONSE, 2, 1, core.term, index=first))
    assert core.commit_index == first
    core.tick()
    assert [(m.dst, m.commit) for m in commit_notices(sent(core))] == [(2, first)]
    core.step(Message(MT.APPEND_RESPONSE, 3, 1, core.term, index=second))
    assert core.commit_index == second
    core.tick()
    assert [(m.dst, m.commit) for m in commit_notices(sent(core))] == [(3, second)]
    core.step(Message(MT.APPEND_RESPONSE, 2, 1, core.term, index=second))  # node 2 catches up
    core.tick()
    assert [(m.dst, m.commit) for m in commit_notices(sent(core))] == [(2, second)]


# --------------------------------------------------------------------- §5.4.2 commitment


def test_figure8_leader_never_commits_an_old_term_entry_by_counting() -> None:
    # Raft §5.4.2 / Figure 8: an entry of an earlier term is not committed because a majority
    # holds it; only an entry of the leader's own term is, and it commits the older ones.
    core = make_core(1, (1, 2, 3, 4, 5), term=3, log_terms=(1, 2))
    tick_until(core, lambda: core.role == Role.CANDIDATE)
    drain(core)
    for peer in (2, 3):
        core.step(Message(MT.VOTE_RESPONSE, peer, 1, core.term))
    assert core.role == Role.LEADER
    drain(core)  # the leader persisted its no-op at index 3
    for peer in (2, 3):
        core.step(Message(MT.APPEND_RESPONSE, peer, 1, core.term, index=2))
    drain(core)
    assert core.commit_index == 0  # index 2 (term 2) is on 3 of 5, still not committed
    core.step(Message(MT.APPEND_RESPONSE, 2, 1, core.term, index=3))
    assert core.commit_index == 0
    core.step(Message(MT.APPEND_RESPONSE, 3, 1, core.term, index=3))
    assert core.commit_index == 3


def test_restart_restores_hard_state_and_applies_from_applied() -> None:
    core = make_core(term=4, vote=3, commit=3, log_terms=(1, 2, 2, 4))
    core_applied = RaftCore(
        core.config,
        HardState(4, 3, 3),
        [Entry(t, i + 1) for i, t in enumerate((1, 2, 2, 4))],
        applied=2,
    )
    assert (core.term, core.vote, core.commit_index) == (4, 3, 3)
    assert [e.index for e in core.ready().committed_entries] == [1, 2, 3]
    assert [e.index for e in core_applied.ready().committed_entries] == [3]


# --------------------------------------------------------------------- pre-vote (thesis §9.6)


def test_pre_vote_does_not_change_the_term_until_a_quorum_agrees() -> None:
    core = make_core(term=5, pre_vote=True)
    tick_until(core, lambda: core.role == Role.PRE_CANDIDATE)
    assert core.term == 5 and core.vote == 0
    messages, _, _ = drain(core)
    assert all((m.type, m.term) == (MT.PRE_VOTE, 6) for m in messages)
    core.step(Message(MT.PRE_VOTE_RESPONSE, 2, 1, 6))
    assert core.role == Role.CANDIDATE and core.term == 6 and core.vote == 1


def test_pre_vote_rejected_by_a_quorum_returns_to_follower_at_the_same_term() -> None:
    core = make_core(term=5, pre_vote=True)
    tick_until(core, lambda: core.role == Role.PRE_CANDIDATE)
    core.step(Message(MT.PRE_VOTE_RESPONSE, 2, 1, 5, reject=True))
    core.step(Message(MT.PRE_VOTE_RESPONSE, 3, 1, 5, reject=True))
    assert core.role == Role.FOLLOWER and core.term == 5


def test_granting_a_pre_vote_changes_neither_term_nor_vote() -> None:
    core = make_core(term=5, vote=2, pre_vote=True)
    core.step(Message(MT.PRE_VOTE, 3, 1, 6, log_term=5, index=9))
    (response,) = sent(core)
    assert (response.type, response.reject, response.term) == (MT.PRE_VOTE_RESPONSE, False, 6)
    assert (core.term, core.vote) == (5, 2)


# --------------------------------------------------------------------- check-quorum (§6.2, §4.2.3)


def test_leader_steps_down_without_a_quorum_for_an_election_timeout() -> None:
    core = make_leader(check_quorum=True)
    for _ in range(2 * TIMING.election_timeout_ticks + 1):
        core.tick()
        drain(core)
    assert core.role == Role.FOLLOWER and core.leader_id == 0


def test_leader_with_a_responsive_quorum_stays() -> None:
    core = make_leader(check_quorum=True)
    for _ in range(5 * TIMING.election_timeout_ticks):
        core.tick()
        for m in sent(core):
            if m.type == MT.HEARTBEAT and m.dst == 2:
                core.step(Message(MT.HEARTBEAT_RESPONSE, 2, 1, core.term))
    assert core.role == Role.LEADER


def test_follower_with_a_live_leader_ignores_votes() -> None:
    core = make_core(term=2, check_quorum=True)
    core.step(Message(MT.HEARTBEAT, 2, 1, 2))
    drain(core)
    core.step(Message(MT.VOTE, 3, 1, 3, log_term=9, index=9))
    core.step(Message(MT.PRE_VOTE, 3, 1, 3, log_term=9, index=9))
    assert core.term == 2 and core.vote == 0 and not sent(core)
    assert core.ignored["vote while leader lease holds"] == 2
    # A leadership transfer (context b"transfer") overrides the lease (thesis §3.10).
    core.step(Message(MT.VOTE, 3, 1, 3, log_term=9, index=9, context=b"transfer"))
    assert core.term == 3 and core.vote == 3


# --------------------------------------------------------------------- ReadIndex (§6.4)


def test_read_index_waits_for_a_commit_in_the_leaders_term_and_a_heartbeat_quorum() -> None:
    core = make_leader()
    core.read_index(b"r1")
    assert not core.ready().read_states  # the no-op of this term is not committed yet
    beats = [m for m in ack_all(core) if m.type == MT.HEARTBEAT and m.context]
    assert sorted(m.dst for m in beats) == [2, 3]
    assert not core.ready().read_states
    core.step(Message(MT.HEARTBEAT_RESPONSE, 2, 1, core.term, context=beats[0].context))
    assert core.ready().read_states == [ReadState(core.commit_index, b"r1")]


def test_follower_read_is_forwarded_and_answered() -> None:
    follower = make_core(2, term=3)
    follower.step(Message(MT.HEARTBEAT, 1, 2, 3))
    drain(follower)
    follower.read_index(b"ctx")
    (forward,) = sent(follower)
    assert (forward.type, forward.dst, forward.context) == (MT.READ_INDEX, 1, b"ctx")
    follower.step(Message(MT.READ_INDEX_RESPONSE, 1, 2, 3, index=7, context=b"ctx"))
    follower.step(Message(MT.READ_INDEX_RESPONSE, 1, 2, 3, reject=True, context=b"no"))
    assert follower.ready().read_states == [ReadState(7, b"ctx"), ReadState(0, b"no")]


def test_read_on_a_node_without_leader_raises_not_leader() -> None:
    with pytest.raises(NotLeader):
        make_core().read_index(b"x")


def test_pending_reads_are_refused_when_leadership_is_lost() -> None:
    core = make_leader()
    ack_all(core)
    core.read_index(b"local")
    core.step(Message(MT.READ_INDEX, 3, 1, core.term, context=b"remote"))
    drain(core)
    core.step(Message(MT.HEARTBEAT, 2, 1, core.term + 1))
    ready = core.ready()
    assert ready.read_states == [ReadState(0, b"local")]
    assert [
        (m.type, m.dst, m.reject) for m in ready.messages if m.type == MT.READ_INDEX_RESPONSE
    ] == [(MT.READ_INDEX_RESPONSE, 3, True)]


def test_single_node_reads_without_heartbeats() -> None:
    core = make_core(1, (1,))
    tick_until(core, lambda: core.role == Role.LEADER)
    drain(core)
    core.read_index(b"solo")
    assert core.ready().read_states == [ReadState(core.commit_index, b"solo")]


# --------------------------------------------------------------------- back-pressure and errors


def test_propose_on_a_follower_raises_not_leader_with_the_leader_id() -> None:
    core = make_core(term=2)
    with pytest.raises(NotLeader) as info:
        core.propose([b"x"])
    assert info.value.leader_id is None
    core.step(Message(MT.HEARTBEAT, 3, 1, 2))
    with pytest.raises(NotLeader) as info:
        core.propose([b"x"])
    assert info.value.leader_id == 3


def test_entry_too_large() -> None:
    core = make_leader(limits=Limits(max_entry_bytes=10))
    with pytest.raises(EntryTooLarge):
        core.propose([b"ok", bytes(11)])
    assert core.log.last_index == 1  # nothing of the batch was appended


def test_overloaded_by_pending_proposals() -> None:
    core = make_leader(limits=Limits(max_pending_proposals=4))
    core.propose([b"1", b"2"])
    with pytest.raises(Overloaded):
        core.propose([b"3", b"4"])  # the no-op counts too: 1 + 2 + 2 > 4
    core.propose([b"3"])
    ack_all(core)
    core.propose([b"4", b"5"])  # committing freed the budget


def test_overloaded_by_uncommitted_bytes() -> None:
    core = make_leader(limits=Limits(max_uncommitted_bytes=100))
    core.propose([bytes(150)])  # admitted into an empty budget
    with pytest.raises(Overloaded):
        core.propose([b"x"])
    ack_all(core)
    core.propose([bytes(100)])


# --------------------------------------------------------------------- robustness


def test_step_never_raises_on_garbage() -> None:
    # Never raise on remote input: drop and count (hostile or corrupted peers).
    rng = random.Random(1)
    cores = [make_core(), make_leader(), make_core(2, term=3, log_terms=(1, 2, 3))]
    types = [int(t) for t in MT] + [0, 99]
    for _ in range(3000):
        core = rng.choice(cores)
        entries = [
            Entry(rng.randrange(0, 6), rng.randrange(0, 8), b"g") for _ in range(rng.randrange(3))
        ]
        core.step(
            Message(
                rng.choice(types),
                rng.randrange(0, 5),
                rng.choice((1, 1, 2)),
                rng.randrange(0, 7),
                log_term=rng.randrange(0, 7),
                index=rng.randrange(0, 9),
                commit=rng.randrange(0, 9),
                reject=rng.random() < 0.3,
                reject_hint=rng.randrange(0, 9),
                reject_term=rng.randrange(0, 7),
                entries=entries,
                context=rng.choice((b"", b"12345678", b"x")),
            )
        )
        drain(core)
    assert sum(sum(core.ignored.values()) for core in cores) > 0

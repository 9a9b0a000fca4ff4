"""Honest outcomes through the driver (engine.Node over real loopback UDP): a definite failure
(engine.Rejected and its subclasses) only for work that provably never entered a log; work
appended or forwarded ends with its result or an unknown outcome (engine.OutcomeUnknown, a
Timeout), and a follower's forwarded proposals follow a leader change (Node.propose).

Timing bounds follow from the cluster's TimingConfig (election timeouts), never from how fast
this machine is."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

import engine
from engine.config import TimingConfig
from engine.kv import commands
from engine.messages import ClientStatus, Message, MessageType

put = commands.encode_put
TIMING = TimingConfig()   # the default: elections after 300-600 ms of silence
# The longest randomized election timeout, in seconds ([T, 2T) ticks, engine.types).
MAX_ELECTION_S = 2 * TIMING.election_timeout_ticks * TIMING.tick_ms / 1000


def value_of(node: engine.Node, key: bytes) -> bytes | None:
    return commands.decode_result(node.state_machine.query(commands.encode_get_query(key))).value


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0,
                   what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"{what} not reached in {timeout} s")
        await asyncio.sleep(0.01)


def outcome(future: asyncio.Future[bytes]) -> str:
    """"ok", "unknown" (a Timeout) or the name of any other error."""
    error = future.exception()
    if error is None:
        return "ok"
    return "unknown" if isinstance(error, engine.Timeout) else type(error).__name__


async def test_writes_appended_before_the_leader_removes_itself_are_never_a_definite_failure(
) -> None:
    """The leader removes itself with writes appended after C_new (thesis §4.2.2: it leads
    until C_new commits, then steps down and goes quiet). Those writes are in the followers'
    logs and the next leader commits them, so the removed leader must not fail them with
    MembershipError (a Rejected); they end "ok" or "unknown" and every one applies."""
    async with engine.LocalCluster(n=3) as cluster:
        leader = await cluster.wait_leader()
        me = leader.node_id
        futures: list[asyncio.Future[bytes]] = []
        keys = [b"k%d" % i for i in range(50)]
        follow = leader._follow_membership

        def follow_and_write() -> None:
            # Runs in the turn that appends C_new (before it is sent): the writes queued here
            # are appended in the next turn, after C_new and before any ack for it can arrive.
            follow()
            membership = leader.core.membership
            if not futures and me not in membership.voters and not membership.joint:
                futures.extend(leader.submit(put(key, b"v")) for key in keys)

        leader._follow_membership = follow_and_write  # type: ignore[method-assign]
        await leader.remove_member(me)
        assert len(futures) == len(keys)
        await asyncio.wait(futures, timeout=10.0)
        outcomes = [outcome(f) for f in futures]
        assert all(o in ("ok", "unknown") for o in outcomes), outcomes
        new = await cluster.wait_leader(among=[i for i in cluster.nodes if i != me])
        await wait_for(lambda: all(value_of(new, key) == b"v" for key in keys),
                       what="every write applied by the new leader")


async def session_put(leader: engine.Node, key: bytes) -> bytes:
    """A KV put in a fresh session (registered through the leader), seq 1."""
    session = commands.decode_client_id(commands.decode_result(
        await leader.propose(commands.encode_register())))
    return put(key, b"v", client_id=session, seq=1)


async def cut_off_leader(cluster: engine.LocalCluster, command: bytes
                         ) -> tuple[asyncio.Future[bytes], list[int]]:
    """Cut the leader off, then propose on a follower that still takes it for the leader:
    the proposal is forwarded into the partition. Returns its future and the other nodes."""
    leader = await cluster.wait_leader()
    others = [i for i in cluster.nodes if i != leader.node_id]
    follower = cluster.nodes[others[0]]
    await cluster.partition({leader.node_id}, set(others))
    future = follower.submit(command, timeout=60.0)   # far beyond every bound below
    await wait_for(lambda: follower.counters["forwarded"] >= 1, what="the write forwarded")
    return future, others


async def test_forwarded_session_write_is_reforwarded_to_the_new_leader() -> None:
    """A follower's forwarded KV write in a session is re-sent to the next leader (the
    session's seq makes a second copy harmless, Raft thesis §6.3): it completes shortly
    after the election, not at its deadline."""
    async with engine.LocalCluster(n=3, timing=TIMING) as cluster:
        leader = await cluster.wait_leader()
        command = await session_put(leader, b"moved")
        future, others = await cut_off_leader(cluster, command)
        new = await cluster.wait_leader(timeout=10.0, among=others)
        # Once the follower knows the new leader, one forward and one commit remain: well
        # inside one more election timeout (a loop that stalls that long loses its leader).
        result = await asyncio.wait_for(future, MAX_ELECTION_S)
        assert commands.decode_result(result).ok
        assert value_of(new, b"moved") == b"v"
        assert cluster.nodes[others[0]].counters["reforwarded"] == 1


async def test_forwarded_raw_write_ends_unknown_when_the_leader_changes() -> None:
    """A command without a session is not re-sent (a second copy could apply twice): once
    the follower learns of another leader, it fails at once with OutcomeUnknown (the old
    leader may have appended it), not at its deadline."""
    async with engine.LocalCluster(n=3, timing=TIMING) as cluster:
        future, others = await cut_off_leader(cluster, put(b"raw", b"v"))
        await cluster.wait_leader(timeout=10.0, among=others)
        with pytest.raises(engine.Timeout) as raised:
            await asyncio.wait_for(future, MAX_ELECTION_S)
        assert isinstance(raised.value, engine.OutcomeUnknown), raised.value
        assert cluster.nodes[others[0]].counters["reforwarded"] == 0


async def test_stop_fails_appended_proposals_as_unknown_and_queued_ones_as_stopped() -> None:
    async with engine.LocalCluster(n=3) as cluster:
        leader = await cluster.wait_leader()
        others = [i for i in cluster.nodes if i != leader.node_id]
        await cluster.partition({leader.node_id}, set(others))
        appended = leader.submit(put(b"k", b"v"))
        await wait_for(lambda: leader.status()["pending_proposals"] == 1
                       and leader.core.log.last_index > leader.core.commit_index,
                       what="the write appended")
        queued = leader.submit(put(b"q", b"v"))   # still in this turn's queue
        await leader.stop()
        with pytest.raises(engine.Stopped) as stopped:
            appended.result()
        assert isinstance(stopped.value, engine.OutcomeUnknown)   # it may still apply
        with pytest.raises(engine.Stopped) as stopped:
            queued.result()
        assert not isinstance(stopped.value, engine.Timeout)      # never left this node


def test_unfinished_is_definite_only_for_work_that_never_entered_a_log() -> None:
    cause = engine.NotLeader("no leader known in time", leader_id=3)
    kept = engine.errors.unfinished(cause, may_apply=False)
    assert type(kept) is engine.NotLeader and kept is not cause and kept.leader_id == 3
    for definite in (engine.MembershipError("removed"), engine.Overloaded("full"),
                     engine.Superseded("replaced"), cause):
        unknown = engine.errors.unfinished(definite, may_apply=True)
        assert type(unknown) is engine.OutcomeUnknown and str(definite) in str(unknown)
    stopped = engine.errors.unfinished(engine.Stopped("node stopped"), may_apply=True)
    assert isinstance(stopped, engine.Stopped) and isinstance(stopped, engine.Timeout)


async def test_a_refusal_of_a_resent_forwarded_proposal_is_not_definite() -> None:
    """The new leader's REJECTED is about its copy only once an earlier copy was forwarded
    to the old leader: the follower answers an unknown outcome; without an earlier copy the
    refusal is definite."""
    async with engine.LocalCluster(n=3) as cluster:
        leader = await cluster.wait_leader()
        follower = next(n for n in cluster.nodes.values() if n is not leader)
        loop = asyncio.get_running_loop()
        answers = []
        for resent in (False, True):
            future: asyncio.Future[bytes] = loop.create_future()
            if resent:
                follower._sent_before.add(future)
            follower._forwarded[10_000 + resent] = (b"cmd", future, loop.time() + 10)
            follower.driver.on_forward_response(Message(
                MessageType.CLIENT_RESPONSE, src=leader.node_id, dst=follower.node_id,
                seq=10_000 + resent, status=ClientStatus.REJECTED, context=b"overloaded"))
            answers.append(future.exception())
        assert type(answers[0]) is engine.Rejected
        assert isinstance(answers[1], engine.OutcomeUnknown)

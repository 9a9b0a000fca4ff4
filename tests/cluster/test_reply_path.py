"""A remote client's answer leaves the leader the moment its write applies (engine.aio.node
_AnsweringFuture), ahead of the followers' commit notices (which wait for the next tick)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import engine
from engine.aio.node import _AnsweringFuture
from engine.kv import commands
from engine.messages import MessageType
from engine.types import parse_address


async def test_answering_future_answers_synchronously_once() -> None:
    loop = asyncio.get_running_loop()
    seen: list[Any] = []
    for settle in ("result", "exception", "cancel"):
        future = _AnsweringFuture(loop, seen.append)
        if settle == "result":
            future.set_result(b"ok")
        elif settle == "exception":
            future.set_exception(engine.Rejected("no"))
        else:
            assert future.cancel()
            assert not future.cancel()   # already settled: no second answer
        assert seen[-1] is future        # before any loop turn ran
    assert len(seen) == 3
    # Observers (the latency profiler) run right after the answer, also synchronously.
    order: list[str] = []
    future = _AnsweringFuture(loop, lambda f: order.append("answer"))
    future.observe(lambda f: order.append("observer"))
    future.set_result(b"ok")
    assert order == ["answer", "observer"]
    assert seen[0].result() == b"ok"
    with pytest.raises(engine.Rejected):
        seen[1].result()
    assert seen[2].cancelled()


async def test_reply_leaves_before_the_commit_notices_which_wait_for_the_tick() -> None:
    async with engine.LocalCluster(n=3) as cluster:
        leader = await cluster.wait_leader()
        async with engine.Client(list(cluster.members.values()),
                                 cluster_key=cluster.cluster_key) as client:
            await client.put(b"warm", b"up")            # finds the leader
            transport = leader.transport
            written: list[list[tuple[int, bytes, int]]] = []
            original = transport._write_messages

            def record(address: Any, messages: list[Any]) -> None:
                written.append([(int(m.type), bytes(m.context), int(m.commit))
                                for m in messages])
                original(address, messages)

            transport._write_messages = record
            try:
                await client.put(b"k", b"v")
                index = leader.core.commit_index   # the write's entry is committed here
                # No further write: the followers' commit notices go out on the leader's next
                # tick (engine.raft.core _bcast_commit), not in the turn that answered.
                await asyncio.sleep(5 * leader.config.timing.tick_ms / 1000)
            finally:
                del transport._write_messages
            sent = [message for batch in written for message in batch]
            kinds = [kind for kind, _, _ in sent]
            response = kinds.index(MessageType.CLIENT_RESPONSE)
            # Commit notices of this write: heartbeats without a round context (engine.raft.
            # core) carrying its commit. A periodic heartbeat that left while the write was
            # still replicating (a slow machine can take a tick for that) carries an older
            # commit index and is not one.
            notices = [i for i, (kind, context, commit) in enumerate(sent)
                       if kind == MessageType.HEARTBEAT and not context and commit >= index]
            assert notices, sent
            assert response < min(notices), sent


async def test_a_follower_acks_new_entries_before_applying_committed_ones() -> None:
    """An APPEND that carries entry i+1 and the commit of i: the follower sends its ack for
    i+1 (the leader's commit, and its caller, wait for it) before it applies i (nobody
    waits for that). engine.driver.Driver._handle_ready_body, `apply_late`."""
    async with engine.LocalCluster(n=3) as cluster:
        leader = await cluster.wait_leader()
        await leader.propose(commands.encode_put(b"warm", b"up"))
        follower = next(n for i, n in cluster.nodes.items() if i != leader.node_id)
        events: list[tuple[str, int]] = []
        transport = follower.transport
        original_write = transport._write_messages
        original_apply = follower.state_machine.apply

        def record_acks(address: Any, messages: list[Any]) -> None:
            events.extend(("ack", m.index) for m in messages
                          if m.type == MessageType.APPEND_RESPONSE)
            original_write(address, messages)

        def record_apply(index: int, command: bytes) -> bytes:
            events.append(("apply", index))
            return original_apply(index, command)

        transport._write_messages = record_acks
        follower.state_machine.apply = record_apply  # type: ignore[method-assign]
        try:
            # Back to back: each APPEND carries the commit of the write before it (the
            # commit notices wait for the next tick).
            for i in range(20):
                await leader.propose(commands.encode_put(b"k%d" % i, b"v"))
            await asyncio.sleep(5 * leader.config.timing.tick_ms / 1000)
        finally:
            del transport._write_messages
            del follower.state_machine.apply
        position = {event: i for i, event in reversed(list(enumerate(events)))}  # first
        followed = [index for kind, index in events
                    if kind == "apply" and ("ack", index + 1) in position]
        acked_before = [index for index in followed
                        if position[("ack", index + 1)] < position[("apply", index)]]
        # Nearly all of them (a tick between two writes can deliver a commit alone).
        assert len(followed) >= 19 and len(acked_before) >= len(followed) // 2, events


async def test_a_replaced_copy_of_a_client_write_is_unknown_and_its_retry_applies() -> None:
    """A client write appended by a leader that is then cut off is replaced by the new
    leader's log. That copy never applies, but the client may already have retried the same
    command elsewhere (CI nemesis seed 101: the stale REJECTED of one attempt was taken as the
    answer while the retry applied), so the old leader answers UNKNOWN and the client's retry
    (same session and seq) gets the real outcome."""
    async with engine.LocalCluster(n=3) as cluster:
        old = await cluster.wait_leader()
        async with engine.Client(list(cluster.members.values()),
                                 cluster_key=cluster.cluster_key, attempt_timeout=30.0,
                                 timeout=60.0) as client:
            await client.put(b"warm", b"up")            # the client now targets `old`
            assert client._leader == parse_address(cluster.members[old.node_id])
            others = [i for i in cluster.nodes if i != old.node_id]
            await cluster.partition({old.node_id}, set(others))
            write = asyncio.ensure_future(client.put(b"k", b"v"))
            deadline = asyncio.get_running_loop().time() + 5.0
            while old.status()["last_index"] <= old.status()["commit_index"]:
                assert asyncio.get_running_loop().time() < deadline, old.status()
                await asyncio.sleep(0.01)               # the copy is in the old leader's log
            new = await cluster.wait_leader(among=others)
            await new.propose(commands.encode_put(b"other", b"x"))   # overwrites that index
            await cluster.heal()
            await asyncio.wait_for(write, 10.0)         # not Rejected: retried, applied
            assert client.counters["retries"] >= 1
            assert new.state_machine.get(b"k") == b"v"


async def test_library_proposal_replaced_by_a_new_leader_raises_superseded() -> None:
    async with engine.LocalCluster(n=3) as cluster:
        old = await cluster.wait_leader()
        others = [i for i in cluster.nodes if i != old.node_id]
        await cluster.partition({old.node_id}, set(others))
        lost = asyncio.ensure_future(old.propose(commands.encode_put(b"x", b"lost"),
                                                 timeout=30.0))
        new = await cluster.wait_leader(among=others)
        await new.propose(commands.encode_put(b"x", b"after"))
        await cluster.heal()
        with pytest.raises(engine.Superseded):   # a Rejected: definite for this proposal
            await asyncio.wait_for(lost, 10.0)

"""A remote client's answer leaves the leader the moment its write applies (engine.aio.node
_AnsweringFuture), ahead of the commit notices of the same turn."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import engine
from engine.aio.node import _AnsweringFuture
from engine.messages import MessageType


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
    assert seen[0].result() == b"ok"
    with pytest.raises(engine.Rejected):
        seen[1].result()
    assert seen[2].cancelled()


async def test_reply_leaves_before_the_commit_notices() -> None:
    async with engine.LocalCluster(n=3) as cluster:
        leader = await cluster.wait_leader()
        async with engine.Client(list(cluster.members.values()),
                                 cluster_key=cluster.cluster_key) as client:
            await client.put(b"warm", b"up")            # finds the leader
            transport = leader.transport
            written: list[list[tuple[int, bytes]]] = []
            original = transport._write_messages

            def record(address: Any, messages: list[Any]) -> None:
                written.append([(int(m.type), bytes(m.context)) for m in messages])
                original(address, messages)

            transport._write_messages = record
            try:
                await client.put(b"k", b"v")
            finally:
                del transport._write_messages
            kinds = [kind for batch in written for kind, _ in batch]
            response = kinds.index(MessageType.CLIENT_RESPONSE)
            # Commit notices: heartbeats without a round context (engine.raft.core).
            notices = [i for i, (kind, context) in enumerate(m for b in written for m in b)
                       if kind == MessageType.HEARTBEAT and not context]
            assert notices, kinds
            assert response < min(notices), kinds

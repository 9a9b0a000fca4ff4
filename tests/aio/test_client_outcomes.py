"""engine.Client never reports a definite failure for a write whose outcome is unknown
(DESIGN.md: an ambiguous outcome is never a definite failure). A scripted fake node answers
each attempt as told, so the orderings that are rare in a real cluster are exact here."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Sequence
from typing import Any

import pytest

import engine
from engine._core import codec
from engine.kv import commands
from engine.messages import AdminOp, ClientOp, ClientStatus, Message, MessageType

KEY = os.urandom(32)
NODE_ID = 1

OK = (ClientStatus.OK, commands.encode_result(commands.Status.OK))


class ScriptedNode:
    """Answers the n-th client request with script[n] (None: no answer, as if lost).

    A REGISTER (a session being opened) is answered at once with a new client id and is not
    counted in the script: it is kept in `registers`."""

    def __init__(self, script: Sequence[tuple[int, bytes] | None]) -> None:
        self.script = list(script)
        self.codec = codec.FrameCodec(KEY, 0, local_id=NODE_ID)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        host, port = self.sock.getsockname()
        self.address = f"{host}:{port}"
        self.requests: list[Message] = []
        self.registers: list[Message] = []
        self.counter = 0
        self.task: asyncio.Task[None] | None = None

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data, peer = await loop.sock_recvfrom(self.sock, 1 << 16)
            for message in self.codec.decode(data).messages:
                step: tuple[int, bytes] | None
                if (message.status == ClientOp.WRITE and commands.decode_command(
                        bytes(message.context)).op == commands.Op.REGISTER):
                    self.registers.append(message)
                    step = (ClientStatus.OK, commands.encode_result(
                        commands.Status.OK,
                        value=commands.encode_client_id(100 + len(self.registers))))
                else:
                    self.requests.append(message)
                    step = self.script[len(self.requests) - 1] if (
                        len(self.requests) <= len(self.script)) else None
                if step is None:
                    continue
                status, context = step
                self.counter += 1
                response = Message(MessageType.CLIENT_RESPONSE, src=NODE_ID, dst=message.src,
                                   seq=message.seq, status=int(status), context=context)
                frame = self.codec.encode(NODE_ID, 1, self.counter, [response], message.src)
                await loop.sock_sendto(self.sock, frame, peer)

    async def __aenter__(self) -> ScriptedNode:
        self.task = asyncio.ensure_future(self.serve())
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        assert self.task is not None
        self.task.cancel()
        self.sock.close()


def client_for(node: ScriptedNode, **kwargs: Any) -> engine.Client:
    return engine.Client([node.address], cluster_key=KEY, attempt_timeout=0.1, **kwargs)


async def test_a_rejection_on_the_first_attempt_is_definite() -> None:
    async with ScriptedNode([(ClientStatus.REJECTED, b"overloaded")]) as node:
        async with client_for(node) as client:
            with pytest.raises(engine.Rejected, match="overloaded"):
                await client.put(b"k", b"v")
    assert len(node.requests) == 1


async def test_a_rejection_after_a_lost_attempt_is_retried_in_the_same_session() -> None:
    # Attempt 1 may have been appended (no answer); attempt 2 is refused (that copy only);
    # attempt 3 gets the outcome of the copy that applied.
    script = [None, (ClientStatus.REJECTED, b"overloaded"), OK]
    async with ScriptedNode(script) as node:
        async with client_for(node) as client:
            await client.put(b"k", b"v")
    commands_sent = {bytes(m.context) for m in node.requests}
    assert len(node.requests) == 3 and len(commands_sent) == 1   # same session and seq


async def test_a_write_refused_after_an_unknown_attempt_ends_as_timeout_not_rejected() -> None:
    script = [(ClientStatus.UNKNOWN, b"outcome unknown")] + [
        (ClientStatus.REJECTED, b"overloaded")] * 100
    async with ScriptedNode(script) as node:
        async with client_for(node, timeout=1.0) as client:
            with pytest.raises(engine.Timeout, match="overloaded"):
                await client.put(b"k", b"v")


async def test_a_read_refusal_is_definite_even_after_a_retry() -> None:
    # Reads change nothing, so a "no" to any attempt is the answer.
    async with ScriptedNode([None, (ClientStatus.REJECTED, b"unknown read mode")]) as node:
        async with client_for(node) as client:
            with pytest.raises(engine.Rejected):
                await client.get(b"k")
    assert node.requests[0].status == ClientOp.READ


EXPIRED = (ClientStatus.OK, commands.encode_result(commands.Status.SESSION_EXPIRED,
                                                   message="unknown session"))


def sessions_of(node: ScriptedNode) -> list[tuple[int | None, int]]:
    decoded = [commands.decode_command(bytes(m.context)) for m in node.requests]
    return [(c.client_id, c.seq) for c in decoded]


async def test_an_evicted_session_is_replaced_and_the_write_goes_again() -> None:
    # The cluster evicted the client's idle session (Limits.max_client_sessions): the write
    # was not applied, so it is sent again in a new session; the old one is never reused.
    async with ScriptedNode([OK, EXPIRED, OK, OK]) as node:
        async with client_for(node) as client:
            await client.put(b"a", b"1")
            await client.put(b"b", b"2")
            await client.put(b"c", b"3")
            assert client.counters["sessions_expired"] == 1
    (first, one), (old, two), (new, fresh), (again, three) = sessions_of(node)
    assert (first, one, two) == (old, 1, 2)
    assert new != old and fresh == 1
    assert (again, three) == (new, 2)
    assert [first, new] == [101, 102] and len(node.registers) == 2   # ids the cluster gave


async def test_an_expired_session_after_a_lost_attempt_is_an_unknown_outcome() -> None:
    # The lost attempt may have applied before the eviction: neither failure nor success.
    async with ScriptedNode([OK, None, EXPIRED, OK]) as node:
        async with client_for(node) as client:
            await client.put(b"a", b"1")
            with pytest.raises(engine.Timeout, match="may have applied"):
                await client.put(b"b", b"2")
            await client.put(b"c", b"3")
    sessions = sessions_of(node)
    assert sessions[1] == sessions[2] == (sessions[0][0], 2)       # the same copy, retried
    assert sessions[3][0] != sessions[0][0] and sessions[3][1] == 1  # a new session after


async def test_a_write_the_state_machine_refused_is_not_reported_as_rejected() -> None:
    # The answer comes from applying the command (it entered the log), so it is the state
    # machine's error, not a Rejected ("never entered a log").
    stale = (ClientStatus.OK, commands.encode_result(commands.Status.STALE_REQUEST,
                                                     message="stale request"))
    async with ScriptedNode([stale]) as node:
        async with client_for(node) as client:
            with pytest.raises(engine.StateMachineError, match="stale") as raised:
                await client.put(b"k", b"v")
    assert not isinstance(raised.value, engine.Rejected)


async def test_an_admin_answer_of_unknown_outcome_is_a_timeout_not_rejected() -> None:
    # A node answers UNKNOWN when it cannot tell (a leadership transfer not done in time may
    # still complete): the client must not turn that into a definite failure.
    async with ScriptedNode([(ClientStatus.UNKNOWN, b"transfer not complete in time")]) as node:
        async with client_for(node) as client:
            with pytest.raises(engine.Timeout, match="not complete") as raised:
                await client.admin(node.address, AdminOp.TRANSFER_LEADER, {"to": 2})
    assert not isinstance(raised.value, engine.Rejected)


async def test_a_membership_refusal_after_an_unanswered_attempt_is_a_timeout() -> None:
    # The first removal may have committed; the second copy is refused because node 3 is no
    # longer a member. That refusal is about the copy only: the outcome is unknown.
    refused = (ClientStatus.REJECTED,
               b'{"error": "MembershipError", "message": "node 3 is not a member"}')
    async with ScriptedNode([None, refused]) as node:
        async with client_for(node) as client:
            with pytest.raises(engine.Timeout, match="not a member") as raised:
                await client.remove_member(3, timeout=30.0)
    assert not isinstance(raised.value, engine.Rejected)
    assert len(node.requests) == 2

"""The write-once register (engine.aio.register) over real loopback UDP.

Three acceptors on 127.0.0.1; some tests play one member with a raw UdpTransport speaking the
synod messages directly, to see exactly what a (restarted) acceptor answers.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

import engine
from engine.aio.local_cluster import free_udp_ports
from engine.aio.register import AcceptorState, WriteOnceRegister
from engine.aio.udp import UdpTransport
from engine.messages import Entry, Message, MessageType
from engine.paxos.ballot import make_ballot

MT = MessageType
KEY = secrets.token_bytes(32)


def members(n: int = 3) -> dict[int, str]:
    return {i: f"127.0.0.1:{port}" for i, port in enumerate(free_udp_ports(n), 1)}


def make(node: int, cluster: dict[int, str], data_dir: Path | None = None,
         **kwargs: Any) -> WriteOnceRegister:
    directory = None if data_dir is None else data_dir / f"n{node}"
    return WriteOnceRegister(node, cluster, KEY, directory, register_id=7, tick_ms=5,
                             check_invariants=True, **kwargs)


@asynccontextmanager
async def running(registers: list[WriteOnceRegister]) -> AsyncIterator[list[WriteOnceRegister]]:
    for register in registers:
        await register.start()
    try:
        yield registers
    finally:
        for register in registers:
            await register.stop()


class Impersonator:
    """Plays member `node_id` with a bare transport: sends synod messages, records replies."""

    def __init__(self, node_id: int, cluster: dict[int, str]) -> None:
        self.node_id = node_id
        self.received: list[Any] = []
        peers = {i: a for i, a in cluster.items() if i != node_id}
        self.transport = UdpTransport(node_id, cluster[node_id], peers, KEY, cluster_id=7,
                                      on_messages=lambda ms, _: self.received.extend(ms))

    async def ask(self, message: Any, want: Callable[[Any], bool], timeout: float = 5.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.transport.send([message])
            for _ in range(20):
                await asyncio.sleep(0.005)
                for reply in self.received:
                    if want(reply):
                        self.received.remove(reply)
                        return reply
        raise AssertionError(f"no reply to {message}")


async def test_proposers_and_learners_agree_on_one_value() -> None:
    cluster = members()
    async with running([make(i, cluster) for i in cluster]) as (r1, r2, r3):
        assert await r1.read() is None  # nothing accepted by a phase-1 quorum yet
        assert await r1.propose(b"first") == b"first"
        assert await r2.read() == b"first"
        assert await r3.propose(b"second") == b"first"  # write-once: the chosen value
        assert await r3.read() == b"first"
        assert r1.status()["counters"]["ballots"] >= 1


@pytest.mark.parametrize("loss", [0.0, 0.3])
async def test_duelling_proposers_on_every_node_return_the_same_value(loss: float) -> None:
    for round_ in range(3):
        cluster = members()
        registers = [make(i, cluster, seed=round_) for i in cluster]
        async with running(registers):
            for register in registers:
                if loss:
                    assert register._transport is not None
                    register._transport.set_fault_filter(loss=loss, seed=round_ * 10 + 1)
            proposed = {b"value-%d" % r.node_id for r in registers}
            results = await asyncio.gather(*(
                r.propose(b"value-%d" % r.node_id, timeout=20) for r in registers))
            assert len(set(results)) == 1 and results[0] in proposed
            reads = await asyncio.gather(*(r.read(timeout=20) for r in registers))
            assert reads == results


async def test_restarted_acceptor_keeps_its_promise_and_acceptance(tmp_path: Path) -> None:
    cluster = members()
    member3 = Impersonator(3, cluster)
    await member3.transport.start()
    high, low = make_ballot(50, 3), make_ballot(7, 3)
    async with running([make(2, cluster, tmp_path)]):
        promise = await member3.ask(Message(MT.PREPARE, 3, 2, high),
                                    lambda m: m.type == MT.PROMISE)
        assert not promise.reject and not promise.entries
        accepted = await member3.ask(
            Message(MT.ACCEPT, 3, 2, high, entries=[Entry(high, 1, b"x")]),
            lambda m: m.type == MT.ACCEPTED)
        assert not accepted.reject
    # Restart from the file only: a lower ballot is refused, naming the kept promise.
    async with running([make(2, cluster, tmp_path)]) as (restarted,):
        assert restarted.status()["promised"] == high
        refusal = await member3.ask(Message(MT.PREPARE, 3, 2, low),
                                    lambda m: m.type == MT.PROMISE)
        assert refusal.reject and refusal.reject_term == high
    await member3.transport.aclose()
    # Member 3 is down: a proposer's phase-1 quorum must include member 2, which reports the
    # value it accepted before its restart, so that value (not the proposer's) is chosen.
    async with running([make(1, cluster, tmp_path), make(2, cluster, tmp_path)]) as (r1, _):
        assert await r1.propose(b"y", timeout=10) == b"x"


async def test_in_memory_acceptor_forgets_its_promise_on_restart() -> None:
    # The counterpart of the test above: without a data_dir nothing survives a restart.
    cluster = members()
    member3 = Impersonator(3, cluster)
    await member3.transport.start()
    async with running([make(2, cluster)]):
        await member3.ask(Message(MT.PREPARE, 3, 2, make_ballot(50, 3)),
                          lambda m: m.type == MT.PROMISE)
    async with running([make(2, cluster)]):
        answer = await member3.ask(Message(MT.PREPARE, 3, 2, make_ballot(7, 3)),
                                   lambda m: m.type == MT.PROMISE)
        assert not answer.reject
    await member3.transport.aclose()


async def test_chosen_value_survives_a_whole_cluster_restart(tmp_path: Path) -> None:
    cluster = members()
    async with running([make(i, cluster, tmp_path) for i in cluster]) as (r1, _, _):
        assert await r1.propose(b"kept") == b"kept"
    async with running([make(i, cluster, tmp_path) for i in cluster]) as (_, r2, r3):
        assert await r3.propose(b"other") == b"kept"
        assert await r2.read() == b"kept"


async def test_lost_majority_times_out_then_a_returning_acceptor_unblocks() -> None:
    cluster = members()
    r1 = make(1, cluster)
    async with running([r1]):
        started = time.monotonic()
        with pytest.raises(engine.errors.Timeout):
            await r1.propose(b"v", timeout=0.3)
        assert 0.25 < time.monotonic() - started < 2.0
        with pytest.raises(engine.errors.Timeout):
            await r1.read(timeout=0.2)
        # Nobody waits any more: the proposer abandoned its ballot and stays quiet.
        await asyncio.sleep(0.05)
        sent = r1.status()["transport"]["messages_sent"]
        await asyncio.sleep(0.3)
        assert r1.status()["transport"]["messages_sent"] == sent
        async with running([make(2, cluster)]):
            assert await r1.propose(b"v", timeout=10) == b"v"


async def test_stopped_register_refuses_and_fails_waiters() -> None:
    cluster = members()
    r1 = make(1, cluster)
    await r1.start()
    pending = asyncio.ensure_future(r1.propose(b"v", timeout=10))
    await asyncio.sleep(0.05)
    await r1.stop()
    with pytest.raises(engine.errors.Stopped) as stopped:
        await pending
    assert isinstance(stopped.value, engine.errors.Timeout)   # sent: it may still be chosen
    with pytest.raises(engine.errors.Stopped):
        await r1.propose(b"v")


def test_state_file_round_trips_and_corruption_is_detected(tmp_path: Path) -> None:
    state = AcceptorState(make_ballot(3, 1), make_ballot(2, 2), b"acc", make_ballot(2, 2), b"acc")
    assert AcceptorState.decode(state.encode(), "f") == state
    empty = AcceptorState()
    assert AcceptorState.decode(empty.encode(), "f") == empty
    data = bytearray(state.encode())
    data[10] ^= 1
    with pytest.raises(engine.errors.StorageError, match="checksum"):
        AcceptorState.decode(bytes(data), "f")
    with pytest.raises(engine.errors.StorageError, match="truncated"):
        AcceptorState.decode(state.encode()[:5], "f")


async def test_corrupt_state_file_stops_startup(tmp_path: Path) -> None:
    cluster = members()
    async with running([make(1, cluster, tmp_path)]) as (r1,):
        with pytest.raises(engine.errors.Timeout):
            await r1.propose(b"v", timeout=0.1)  # persists a promise
    path = tmp_path / "n1" / "register-7.paxos"
    assert path.exists()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(engine.errors.StorageError):
        await make(1, cluster, tmp_path).start()
    assert not os.path.exists(str(path) + ".tmp")

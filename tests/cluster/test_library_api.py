"""The library's user-facing API: engine.KV over a Node, engine.SyncClient, Client.call /
Client.query against a user's own state machine, per-call timeouts, retry backoff with
jitter, IPv6 clients, and the engine.StateMachine protocol.

Method: real LocalClusters over loopback UDP; timing bounds follow from the timeouts given.
"""

from __future__ import annotations

import asyncio
import random
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import engine
from engine.aio import client as client_module
from engine.aio.local_cluster import free_udp_ports


class Counter:
    """A user's state machine: commands are decimal increments; the answer is the total."""

    def __init__(self) -> None:
        self.total = 0

    def apply(self, index: int, command: bytes) -> bytes:
        self.total += int(command)
        return str(self.total).encode()

    def query(self, query: bytes) -> bytes:
        return str(self.total).encode()

    def snapshot(self) -> bytes:
        return str(self.total).encode()

    def restore(self, data: bytes) -> None:
        self.total = int(data)


def addresses(cluster: engine.LocalCluster) -> list[str]:
    return list(cluster.members.values())


def test_state_machine_is_a_protocol_that_kvstore_and_user_machines_satisfy() -> None:
    assert isinstance(engine.KVStore(), engine.StateMachine)
    assert isinstance(Counter(), engine.StateMachine)
    assert not isinstance(object(), engine.StateMachine)


async def test_kv_facade_on_leader_and_follower() -> None:
    async with engine.LocalCluster(n=3) as cluster:
        leader = await cluster.wait_leader()
        follower = next(n for n in cluster.nodes.values() if n is not leader)
        kv, remote = engine.KV(leader), engine.KV(follower)
        first = await kv.put(b"k", b"v1", prev=True)
        assert first.prev is None and not first.existed and first.revision > 0
        second = await remote.put(b"k", b"v2", prev=True)    # forwarded to the leader
        assert second.prev == b"v1" and second.revision > first.revision
        assert (await kv.put(b"k", b"v2")).prev is None      # the previous value only if asked
        assert await remote.get(b"k") == b"v2"               # linearizable on a follower
        assert await kv.get(b"k", mode="lease", timeout=5) == b"v2"
        assert await kv.cas(b"k", b"nope", b"x") is False
        assert await kv.cas(b"k", b"v2", b"v3") is True
        assert await kv.cas(b"new", None, b"n") is True
        assert (await kv.delete(b"k", prev=True)).prev == b"v3"
        assert (await kv.delete(b"k")).existed is False
        assert await kv.get(b"k") is None


async def test_kv_facade_refuses_a_node_without_a_kvstore() -> None:
    async with engine.LocalCluster(n=1, state_machine=Counter) as cluster:
        node = await cluster.wait_leader()
        with pytest.raises(engine.ConfigError):
            engine.KV(node)


async def test_client_call_and_query_reach_a_user_state_machine() -> None:
    async with engine.LocalCluster(n=3, state_machine=Counter) as cluster:
        await cluster.wait_leader()
        async with engine.Client(addresses(cluster), cluster_key=cluster.cluster_key) as c:
            assert await c.call(b"5") == b"5"
            assert await c.call(b"2", timeout=5) == b"7"
            assert await c.query(b"") == b"7"
            assert await c.query(b"", mode="stale") in (b"5", b"7")


async def test_call_is_not_sent_again_after_an_unanswered_attempt() -> None:
    # A raw command has no session: a second copy could apply twice.
    (port,) = free_udp_ports(1)   # nothing listens there: no attempt is ever answered
    async with engine.Client([f"127.0.0.1:{port}"], cluster_key=b"k" * 32,
                             attempt_timeout=0.05) as c:
        with pytest.raises(engine.Timeout, match="may have applied"):
            await c.call(b"1", timeout=0.3)
        assert c.counters["datagrams_sent"] == 1
        with pytest.raises(engine.Timeout):
            await c.call(b"1", timeout=0.3, idempotent=True)
        assert c.counters["datagrams_sent"] > 2


async def test_every_client_method_honours_its_own_timeout() -> None:
    (port,) = free_udp_ports(1)
    async with engine.Client([f"127.0.0.1:{port}"], cluster_key=b"k" * 32,
                             timeout=60.0) as c:
        loop = asyncio.get_running_loop()
        for call in (c.put(b"k", b"v", timeout=0.2), c.get(b"k", timeout=0.2),
                     c.delete(b"k", timeout=0.2), c.cas(b"k", None, b"v", timeout=0.2),
                     c.query(b"", timeout=0.2), c.call(b"1", timeout=0.2),
                     c.status(timeout=0.2), c.members(timeout=0.2)):
            started = loop.time()
            with pytest.raises(engine.Timeout):
                await call
            # The client's own timeout is 60 s: only the per-call 0.2 s can end it this soon.
            assert loop.time() - started < 30


def test_backoff_is_exponential_with_full_jitter() -> None:
    random.seed(1)
    for attempt in range(1, 12):
        delays = [client_module.backoff_delay(attempt, 0.01, 1.0) for _ in range(200)]
        bound = min(1.0, 0.01 * 2 ** attempt)
        assert all(0 <= d < bound for d in delays)
        # Full jitter: spread over the whole range, not clustered at the bound.
        assert min(delays) < bound * 0.1 and max(delays) > bound * 0.9


async def test_client_retries_wait_growing_jittered_backoffs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[int] = []
    real = client_module.backoff_delay

    def recording(attempt: int, base: float, cap: float) -> float:
        attempts.append(attempt)
        return real(attempt, base, cap)

    monkeypatch.setattr(client_module, "backoff_delay", recording)
    (port,) = free_udp_ports(1)
    async with engine.Client([f"127.0.0.1:{port}"], cluster_key=b"k" * 32,
                             attempt_timeout=0.02) as c:
        with pytest.raises(engine.Timeout):
            # Three attempts and their backoffs take at most 0.26 s as designed (0.02 s waits
            # growing by 0.02 s, backoffs under 0.02, 0.04, 0.08 s): 2 s leaves room for a
            # loaded machine.
            await c.get(b"k", timeout=2.0)
    assert attempts[:3] == [1, 2, 3]


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="this machine has no IPv6 loopback")
async def test_client_talks_to_an_ipv6_cluster() -> None:
    async with engine.LocalCluster(n=3, host="::1") as cluster:
        assert all(a.startswith("[::1]:") for a in cluster.members.values())
        await cluster.wait_leader()
        async with engine.Client(addresses(cluster), cluster_key=cluster.cluster_key) as c:
            await c.put(b"k", b"v6")
            assert await c.get(b"k") == b"v6"
            assert (await c.members())["leader_id"] in cluster.members


def test_client_refuses_mixed_address_families() -> None:
    with pytest.raises(engine.ConfigError):
        client_module._local_address([("127.0.0.1", 1), ("::1", 2)])


@pytest.fixture
def threaded_cluster() -> Iterator[engine.LocalCluster]:
    """A LocalCluster running on an event loop in another thread (SyncClient blocks)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    cluster = engine.LocalCluster(n=3)

    def run(coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=60)

    run(cluster.start())
    run(cluster.wait_leader())
    try:
        yield cluster
    finally:
        run(cluster.close())
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


def test_sync_client_against_a_local_cluster(threaded_cluster: engine.LocalCluster) -> None:
    with engine.SyncClient(addresses(threaded_cluster),
                           cluster_key=threaded_cluster.cluster_key) as c:
        c.put(b"k", b"v")
        assert c.get(b"k") == b"v"
        assert c.get(b"k", mode="stale", timeout=5) in (b"v", None)
        assert c.cas(b"k", b"v", b"w") is True
        assert c.cas(b"k", b"v", b"x") is False
        assert c.delete(b"k", timeout=5).existed is True
        assert c.get(b"k") is None
        assert c.status()["node_id"] in threaded_cluster.members
        assert c.members()["leader_id"] in threaded_cluster.members
        assert c.client.counters["requests"] >= 6
    with pytest.raises(engine.Stopped):
        c.get(b"k")

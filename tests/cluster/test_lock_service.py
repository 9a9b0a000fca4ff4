"""Locks, leases and fencing end to end through a LocalCluster (docs/coordination.md): many
clients contending for one lock, checked by engine.testing.locks; a holder paused past its
TTL whose fenced write is refused after another client acquired; a lease's keys deleted when
it expires; elections."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import engine
from engine.testing.locks import check_mutual_exclusion


async def test_contending_clients_hold_the_lock_one_at_a_time_with_increasing_tokens() -> None:
    history: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    async with engine.LocalCluster(n=3) as cluster:
        await cluster.wait_leader()
        clients = [cluster.client() for _ in range(8)]
        for client in clients:
            await client.open()
        try:
            async def worker(number: int, client: engine.Client) -> None:
                for _ in range(3):
                    async with client.lock(b"jobs", ttl_s=5) as lock:
                        assert lock.token is not None
                        history.append({"type": "lock-acquired", "client": number,
                                        "lock": b"jobs", "token": lock.token,
                                        "time": loop.time()})
                        await client.put(b"resource", b"%d" % number, fence=lock)
                        history.append({"type": "fenced-write", "client": number,
                                        "lock": b"jobs", "token": lock.token,
                                        "key": b"resource", "outcome": "accepted",
                                        "time": loop.time()})
                        history.append({"type": "lock-released", "client": number,
                                        "lock": b"jobs", "token": lock.token,
                                        "time": loop.time()})

            await asyncio.wait_for(asyncio.gather(
                *(worker(n, c) for n, c in enumerate(clients))), 60)
            tokens = [event["token"] for event in history if event["type"] == "lock-acquired"]
            assert len(tokens) == 24 and tokens == sorted(set(tokens))
            result = check_mutual_exclusion(history)
            assert result.valid, result.violations
            assert await clients[0].leases() == []   # every lock's own lease was revoked
        finally:
            for client in clients:
                client.close()


async def test_a_holder_paused_past_its_ttl_has_its_fenced_write_refused() -> None:
    history: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()

    def note(kind: str, client: str, token: int, **more: Any) -> None:
        history.append({"type": kind, "client": client, "lock": b"L", "token": token,
                        "time": loop.time(), **more})

    async with engine.LocalCluster(n=3) as cluster:
        await cluster.wait_leader()
        async with cluster.client() as a, cluster.client() as b:
            first = await a.lock(b"L", ttl_s=1).acquire()
            assert first.token is not None and first.lease is not None
            # At most the TTL (less the drift bound) past the grant's send time.
            assert 0 < first.valid_until - loop.time() <= 1.0
            note("lock-acquired", "a", first.token)
            await a.put(b"res", b"a1", fence=first)
            note("fenced-write", "a", first.token, key=b"res", outcome="accepted")
            # a pauses: no keepalive reaches the cluster, its lease ends on the leader's clock.
            first.lease.stop_keepalive()
            note("lock-lost", "a", first.token)
            async with b.lock(b"L", ttl_s=5, timeout=30) as second:
                assert second.token is not None and second.token > first.token
                note("lock-acquired", "b", second.token)
                await b.put(b"res", b"b1", fence=second)
                note("fenced-write", "b", second.token, key=b"res", outcome="accepted")
                # a resumes and writes under its old token: the state machine refuses it.
                with pytest.raises(engine.FencingTokenStale) as refused:
                    await a.put(b"res", b"a2", fence=first)
                assert refused.value.newest_token == second.token
                note("fenced-write", "a", first.token, key=b"res", outcome="refused")
                assert await b.get(b"res") == b"b1"
                note("lock-released", "b", second.token)
            result = check_mutual_exclusion(history, fence_knows_grants=True)
            assert result.valid, result.violations
            assert len(result.fenced) == 1


async def test_keys_put_under_a_lease_are_deleted_when_it_expires() -> None:
    async with engine.LocalCluster(n=3) as cluster:
        await cluster.wait_leader()
        async with cluster.client() as client:
            lease = await client.grant_lease(0.5)
            await client.put(b"eph/a", b"1", lease=lease)
            await client.put(b"eph/b", b"2", lease=lease.id)
            await client.put(b"eph/c", b"3", lease=lease)
            await client.put(b"eph/c", b"kept")   # a later put without the lease keeps it
            await client.put(b"stays", b"x")
            assert [row["id"] for row in await client.leases()] == [lease.id]
            events = client.watch(b"eph/", prefix=True, start_revision=1)
            seen = [await anext(events) for _ in range(4)]
            assert [(e.type, e.key) for e in seen] == [
                ("put", b"eph/a"), ("put", b"eph/b"), ("put", b"eph/c"), ("put", b"eph/c")]
            # No keepalive: the leader expires it after its TTL (x 1.1, the drift bound).
            deleted = [await asyncio.wait_for(anext(events), 10) for _ in range(2)]
            assert [(e.type, e.key) for e in deleted] == [("delete", b"eph/a"),
                                                          ("delete", b"eph/b")]
            assert deleted[0].revision == deleted[1].revision   # one EXPIRE, one revision
            await events.aclose()
            assert await client.get(b"eph/a") is None and await client.get(b"eph/b") is None
            assert await client.get(b"eph/c") == b"kept" and await client.get(b"stays") == b"x"
            assert await client.leases() == []
            with pytest.raises(engine.LeaseNotFound):
                await client.keepalive(lease)
            with pytest.raises(engine.LeaseNotFound):
                await client.put(b"late", b"x", lease=lease)


async def test_a_lease_kept_alive_outlives_its_ttl_and_revoke_ends_it() -> None:
    async with engine.LocalCluster(n=1) as cluster:
        await cluster.wait_leader()
        async with cluster.client() as client:
            async with client.lease(0.5) as lease:
                await client.put(b"k", b"v", lease=lease)
                await asyncio.sleep(1.5)   # three TTLs: only the keepalives keep it
                assert not lease.lost and await client.get(b"k") == b"v"
            assert await client.get(b"k") is None   # revoked on exit


async def test_the_sync_client_holds_a_lock_and_fences_with_it() -> None:
    async with engine.LocalCluster(n=1) as cluster:
        await cluster.wait_leader()

        def script() -> tuple[int, int]:
            with engine.SyncClient(list(cluster.members.values()),
                                   cluster_key=cluster.cluster_key) as sync:
                with sync.lock(b"L", ttl_s=5) as first:
                    sync.put(b"r", b"1", fence=first)
                    first_token = first.token or 0
                with sync.lock(b"L", ttl_s=5) as second:
                    with pytest.raises(engine.FencingTokenStale):
                        sync.put(b"r", b"2", fence=(b"L", first_token))
                    second_token = second.token or 0
                    with sync.lease(5) as lease:
                        sync.put(b"e", b"x", lease=lease)
                    assert lease.id not in [row["id"] for row in sync.leases()]
                    assert sync.get(b"e") is None and sync.get(b"r") == b"1"
                return first_token, second_token

        first, second = await asyncio.to_thread(script)
        assert 0 < first < second


async def test_election_campaign_leader_resign_and_observe() -> None:
    async with engine.LocalCluster(n=3) as cluster:
        await cluster.wait_leader()
        async with cluster.client() as a, cluster.client() as b:
            first, second = a.election(b"svc"), b.election(b"svc")
            assert await first.leader() is None
            led = await first.campaign(b"node-a")
            assert led.value == b"node-a"
            observed = second.observe()
            assert (await anext(observed)).value == b"node-a"   # type: ignore[union-attr]
            waiting = asyncio.create_task(second.campaign(b"node-b"))
            await first.proclaim(b"node-a2")
            assert (await anext(observed)).value == b"node-a2"   # type: ignore[union-attr]
            await first.resign()
            now = await asyncio.wait_for(waiting, 10)
            assert now.value == b"node-b" and now.term > led.term
            assert (await anext(observed)).value == b"node-b"   # type: ignore[union-attr]
            await observed.aclose()
            await second.resign()
            assert await first.leader() is None


async def test_a_new_leader_keeps_a_renewed_lease_and_expires_an_abandoned_one() -> None:
    """The new leader's Lessor is promoted: a lease kept alive across the old leader's stop
    survives it, and one nobody renews is expired by the new leader (its TTL, the drift
    bound and the promotion's extension later)."""
    async with engine.LocalCluster(n=3) as cluster:
        old = await cluster.wait_leader()
        async with cluster.client() as client:
            # A TTL well above the election timeout (300-600 ms): a holder must reach the
            # new leader within its TTL of the last renewal the new leader applies.
            kept = await client.lease(3.0).grant()
            abandoned = await client.grant_lease(0.6)
            await client.put(b"kept", b"1", lease=kept)
            await client.put(b"gone", b"1", lease=abandoned)
            await cluster.stop(old.node_id)
            new = await cluster.wait_leader()
            assert new.node_id != old.node_id
            events = client.watch(b"gone", start_revision=1)
            assert (await anext(events)).type == "put"
            ended = await asyncio.wait_for(anext(events), 20)
            assert ended.type == "delete" and ended.key == b"gone"
            await events.aclose()
            assert await client.get(b"kept") == b"1" and not kept.lost
            assert [row["id"] for row in await client.leases()] == [kept.id]
            await kept.revoke()

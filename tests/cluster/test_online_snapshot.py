"""engine.Client.snapshot against a LocalCluster: a consistent snapshot of the running cluster
in the offline backup's format, fetched in chunks (engine.aio.snapshot_serving), and the
node's side under lost answers, replaced snapshots, redirects and hostile requests."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

import engine
from engine import errors
from engine.aio import snapshot_serving
from engine.cli import backup
from engine.kv import KVStore, commands
from engine.limits import Limits
from engine.messages import AdminOp, ClientStatus, MessageType
from engine.replication.snapshot import decode_snapshot, encode_snapshot
from engine.types import Snapshot


def client_of(cluster: engine.LocalCluster, *, addresses: list[str] | None = None,
              **options: Any) -> engine.Client:
    return engine.Client(addresses or list(cluster.members.values()),
                         cluster_key=cluster.cluster_key, **options)


def kv_of(envelope: bytes) -> KVStore:
    store = KVStore()
    store.restore(decode_snapshot(envelope).data)
    return store


def value_in(store: KVStore, key: bytes) -> bytes | None:
    return commands.decode_result(store.query(commands.encode_get_query(key))).value


async def test_online_snapshot_restores_into_a_new_cluster_with_every_acknowledged_write(
        tmp_path: Path) -> None:
    written = {b"k%04d" % i: os.urandom(200) for i in range(2000)}   # ~0.5 MB: many chunks
    async with engine.LocalCluster(n=3, data_dir=tmp_path / "old") as cluster:
        leader = await cluster.wait_leader()
        async with client_of(cluster) as client:
            for start in range(0, len(written), 200):
                batch = list(written.items())[start:start + 200]
                await asyncio.gather(*(client.put(k, v) for k, v in batch))
            await client.delete(b"k0007")
            del written[b"k0007"]
            path = tmp_path / "online.snap"
            envelope = await client.snapshot(str(path))
        assert leader.counters["snapshot_chunks_served"] >= len(envelope) // 65_000
    assert path.read_bytes() == envelope
    snapshot = decode_snapshot(envelope)
    assert snapshot.index >= len(written) + 1
    # The offline `snapshot save` format: a version-1 envelope without the membership.
    assert encode_snapshot(Snapshot(snapshot.index, snapshot.term, snapshot.data)) == envelope

    restored = backup.restore(str(path), str(tmp_path / "new" / "n1"))
    assert restored["index"] == snapshot.index
    async with engine.LocalCluster(n=1, data_dir=tmp_path / "new") as new:
        await new.wait_leader()
        async with client_of(new) as client:
            await client.put(b"after", b"restore")
            for key in (b"k0000", b"k0006", b"k0007", b"k1999"):
                assert await client.get(key) == written.get(key)


async def test_a_corrupted_snapshot_raises_snapshot_corrupt_and_writes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = snapshot_serving.encode_snapshot

    def damaged(snapshot: Snapshot) -> bytes:
        envelope = bytearray(real(snapshot))
        envelope[len(envelope) // 2] ^= 0x10   # a node whose memory flipped a bit
        return bytes(envelope)

    monkeypatch.setattr(snapshot_serving, "encode_snapshot", damaged)
    async with engine.LocalCluster(n=1) as cluster:
        await cluster.wait_leader()
        async with client_of(cluster, timeout=20) as client:
            await asyncio.gather(*(client.put(b"k%d" % i, b"v" * 100) for i in range(500)))
            path = tmp_path / "bad.snap"
            with pytest.raises(errors.SnapshotCorrupt, match="checksum mismatch"):
                await client.snapshot(str(path))
    assert os.listdir(tmp_path) == []


async def test_a_snapshot_replaced_during_the_fetch_is_fetched_again_whole() -> None:
    async with engine.LocalCluster(n=1) as cluster:
        leader = await cluster.wait_leader()
        async with client_of(cluster) as client:
            await asyncio.gather(*(client.put(b"k%d" % i, b"v" * 500) for i in range(300)))
            fetch_chunk = client._snapshot_chunk
            replaced = False

            async def chunk_after_replacement(*args: Any) -> Any:
                nonlocal replaced
                if not replaced:
                    # The node dropped it (idle expiry) and a write came after: the chunk
                    # asked for is gone, and the next snapshot holds the write.
                    replaced = True
                    snapshot_serving.serving(leader).held = None
                    await client.put(b"late", b"write")
                return await fetch_chunk(*args)

            client._snapshot_chunk = chunk_after_replacement  # type: ignore[method-assign,assignment]
            envelope = await client.snapshot()
            assert client.counters["snapshot_restarts"] == 1
    assert value_in(kv_of(envelope), b"late") == b"write"
    assert value_in(kv_of(envelope), b"k299") == b"v" * 500


async def test_lost_chunk_answers_are_asked_for_again() -> None:
    async with engine.LocalCluster(n=1) as cluster:
        await cluster.wait_leader()
        async with client_of(cluster, attempt_timeout=0.2) as client:
            await asyncio.gather(*(client.put(b"k%d" % i, b"v" * 1000) for i in range(300)))
            receive = client._on_datagram
            answers = 0

            def lose_every_third_answer(data: bytes, addr: Any) -> None:
                nonlocal answers
                answers += 1
                if answers % 3 != 0:
                    receive(data, addr)

            client._on_datagram = lose_every_third_answer  # type: ignore[method-assign]
            retries = client.counters["retries"]
            envelope = await client.snapshot()
            assert client.counters["retries"] > retries
    assert value_in(kv_of(envelope), b"k299") == b"v" * 1000


async def test_a_follower_points_the_client_to_the_leader() -> None:
    async with engine.LocalCluster(n=3) as cluster:
        leader = await cluster.wait_leader()
        follower = next(i for i in cluster.members if i != leader.config.node_id)
        async with client_of(cluster, addresses=[cluster.members[follower]]) as client:
            await client.put(b"k", b"v")
        # Only the follower's address: the leader is reached through the NOT_LEADER hint.
        async with client_of(cluster, addresses=[cluster.members[follower]]) as client:
            envelope = await client.snapshot()
            assert client.counters["redirects"] == 1
    assert value_in(kv_of(envelope), b"k") == b"v"


async def test_concurrent_saves_under_writes_all_complete() -> None:
    async with engine.LocalCluster(n=3) as cluster:
        await cluster.wait_leader()
        async with client_of(cluster) as writer, client_of(cluster) as a, \
                client_of(cluster) as b:
            await asyncio.gather(*(writer.put(b"k%d" % i, b"v" * 2000) for i in range(200)))
            stop = asyncio.Event()

            async def write() -> int:
                count = 0
                while not stop.is_set():
                    await writer.put(b"w%d" % count, b"x")
                    count += 1
                return count

            writing = asyncio.create_task(write())
            envelopes = await asyncio.gather(a.snapshot(timeout=30), b.snapshot(timeout=30))
            stop.set()
            await writing
    for envelope in envelopes:
        assert value_in(kv_of(envelope), b"k199") == b"v" * 2000


async def test_a_paxos_cluster_refuses_online_snapshots() -> None:
    async with engine.LocalCluster(n=1, protocol="paxos") as cluster:
        async with client_of(cluster, timeout=10) as client:
            await client.put(b"k", b"v")
            with pytest.raises(errors.Rejected, match="Raft"):
                await client.snapshot()


async def test_hostile_chunk_requests_get_typed_refusals_and_the_node_keeps_serving() -> None:
    loop = asyncio.get_running_loop()
    escaped: list[Any] = []
    loop.set_exception_handler(lambda _, context: escaped.append(context))
    async with engine.LocalCluster(n=1) as cluster:
        leader = await cluster.wait_leader()
        address = cluster.members[leader.config.node_id]
        async with client_of(cluster) as client:
            await asyncio.gather(*(client.put(b"k%d" % i, b"v" * 100) for i in range(200)))
            envelope = await client.snapshot()
            index, term = decode_snapshot(envelope).index, decode_snapshot(envelope).term
            total = len(envelope)
            bogus: list[dict[str, Any]] = [
                {"index": index, "term": term, "offset": total, "size": 100},
                {"index": index, "term": term, "offset": (1 << 64) - 1, "size": 100},
                {"index": index, "term": term, "offset": -5, "size": 100},
                {"index": index, "term": term, "offset": 0, "size": 0},
                {"index": index, "term": term, "offset": 0, "size": -1},
                {"index": index, "term": term, "offset": 1 << 70, "size": 1 << 70},
                {"index": index, "term": term, "offset": "0", "size": 100},
                {"index": index, "term": 0, "offset": 0, "size": 100},
                {"index": 0, "term": 0, "offset": 17, "size": 100},
                {},
            ]
            for spec in bogus:
                with pytest.raises(errors.Rejected):
                    await client.admin(address, AdminOp.SNAPSHOT_CHUNK, spec)
            for payload in (b"\xff\xfe", b"[1, 2]", b"{" * 50_000):
                answer = await client._exchange(
                    client.addresses[0], AdminOp.SNAPSHOT_CHUNK, client._next_request_number(),
                    payload, 2.0, MessageType.ADMIN)
                assert answer is not None and answer.status == ClientStatus.REJECTED
            refused = len(bogus) + 3
            assert leader.counters["snapshot_requests_refused"] == refused
            # A well-formed chunk request after them is served as before.
            await client.admin(address, AdminOp.SNAPSHOT_CHUNK,
                               {"index": index, "term": term, "offset": 0, "size": 100})
            await client.put(b"still", b"serving")
            assert value_in(kv_of(await client.snapshot()), b"still") == b"serving"
        assert json.loads(json.dumps(leader.status()["counters"]))[
            "snapshot_requests_refused"] == refused
    assert escaped == []


async def test_a_client_that_does_not_opt_into_large_answers_gets_small_chunks() -> None:
    """Message.commit = 1 (no opt-in): every answer stays within max_reply_amplification x
    its request, so the snapshot arrives in many small chunks and no answer is refused."""
    async with engine.LocalCluster(n=1) as cluster:
        leader = await cluster.wait_leader()
        async with client_of(cluster) as writer:
            await asyncio.gather(*(writer.put(b"k%d" % i, b"v" * 100) for i in range(50)))
        async with client_of(cluster, limits=Limits(max_reassembly_bytes=1)) as client:
            envelope = await client.snapshot()
        served = leader.counters["snapshot_chunks_served"]
        assert served >= len(envelope) // 600
        assert leader.counters["replies_too_large"] == 0
    assert value_in(kv_of(envelope), b"k49") == b"v" * 100

"""Watches end to end through a LocalCluster: every watcher sees exactly the committed
changes of its range from its start revision, in order, across the leader's stop (checked by
engine.testing.watches), and a start older than the retained history raises Compacted."""

from __future__ import annotations

import asyncio

import pytest

import engine
from engine.testing.watches import Change, Watcher, check_watch_history


async def _collect(client: engine.Client, key: bytes, prefix: bool, start: int,
                   into: list[Change]) -> None:
    async for event in client.watch(key, prefix=prefix, start_revision=start, poll_s=0.01):
        into.append(Change(event.revision, event.key, event.type, event.value))


async def test_watchers_see_every_change_once_in_order_across_a_leader_stop() -> None:
    async with engine.LocalCluster(n=3) as cluster:
        leader = await cluster.wait_leader()
        async with cluster.client() as writer, cluster.client() as reader:
            await writer.put(b"other", b"x")
            loop = asyncio.get_running_loop()
            until: asyncio.Future[dict[str, int]] = loop.create_future()
            specs = {"all": (b"w/", True, 1), "one": (b"w/3", False, 1),
                     "late": (b"w/", True, None)}
            received: dict[str, list[Change]] = {name: [] for name in specs}
            starts: dict[str, int] = {}
            tasks = []
            for name, (key, prefix, start) in specs.items():
                if start is None:   # from the next revision: everything after this write
                    start = (await writer.put(b"marker", b"m")).revision + 1
                    starts[name] = start
                else:
                    starts[name] = start
                tasks.append(asyncio.create_task(
                    _collect(reader, key, prefix, start, received[name])))
            committed: list[Change] = []
            for step in range(60):
                key = b"w/%d" % (step % 5)
                if step % 7 == 6:
                    result = await writer.delete(key)
                    if result.existed:
                        committed.append(Change(result.revision, key, "delete", None))
                else:
                    value = b"v%d" % step
                    result = await writer.put(key, value)
                    committed.append(Change(result.revision, key, "put", value))
                if step == 30:   # the leader goes: watchers and writer move on
                    await cluster.stop(leader.node_id)
            watchers = [Watcher(name, key, prefix=prefix, start_revision=starts[name],
                                received=received[name], until_revision=committed[-1].revision)
                        for name, (key, prefix, _) in specs.items()]
            until.set_result({watcher.name: max(c.revision for c in committed  # type: ignore[misc]
                                                if watcher.covers(c.key))
                              for watcher in watchers})
            targets = until.result()

            async def caught_up() -> None:
                while any(not received[name] or received[name][-1].revision < target
                          for name, target in targets.items()):
                    await asyncio.sleep(0.01)
            await asyncio.wait_for(caught_up(), 30)
            for task in tasks:   # a watcher that got its last change before `until` was set
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            checked = check_watch_history(committed, watchers)
            assert checked.valid, checked.divergences
            assert checked.delivered["all"] == len(committed)


async def test_a_watch_older_than_the_retained_history_raises_compacted() -> None:
    limits = engine.Limits(watch_history_events=5)
    async with engine.LocalCluster(n=1, state_machine=lambda: engine.KVStore(limits)) as cluster:
        await cluster.wait_leader()
        async with cluster.client() as client:
            revisions = [(await client.put(b"k%d" % n, b"v")).revision for n in range(10)]
            with pytest.raises(engine.Compacted) as caught:
                await anext(client.watch(b"k", prefix=True, start_revision=revisions[0]))
            oldest = caught.value.oldest_revision
            assert oldest == revisions[5]
            events = client.watch(b"k", prefix=True, start_revision=oldest)
            got = [(await anext(events)).revision for _ in range(5)]
            assert got == revisions[5:]
            await events.aclose()

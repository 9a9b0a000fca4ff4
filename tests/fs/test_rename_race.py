"""Concurrent namespace operations on two clients, every interleaving of their transaction
steps replayed deterministically (engine.testing.memory_txn.Interleaver).

The classic race: `mv /a /b/x` concurrent with `mv /b /a/y`. Each rename's own check passes
on the tree it started from; if both committed, a and b would be each other's ancestors, a
loop detached from / (JuiceFS's open loop bug, with its deeper `mv a b/d/e` || `mv b/d a/c`
form). The rename walks the destination's ancestors inside its transaction, so the two
conflict: exactly one commits, the other re-runs on the new tree and fails.
"""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import engine
from engine.fs.layout import ROOT
from engine.testing.fs_check import check_stored_namespace, stored_snapshot
from engine.testing.memory_txn import Interleaver, MemoryTxnStore

SCHEDULES = range(40)


async def race(setup: Callable[[engine.FileSystem], Awaitable[None]],
               first: Callable[[engine.FileSystem], Awaitable[Any]],
               second: Callable[[engine.FileSystem], Awaitable[Any]],
               seed: int) -> tuple[MemoryTxnStore, dict[str, Any], Interleaver]:
    store = MemoryTxnStore()
    await setup(engine.FileSystem(store.client()))
    interleaver = Interleaver(seed)
    a = engine.FileSystem(store.client(name="A", interleaver=interleaver))
    b = engine.FileSystem(store.client(name="B", interleaver=interleaver))
    results = await interleaver.run(A=first(a), B=second(b))
    check = check_stored_namespace(store.items())
    assert check.valid, [str(violation) for violation in check.violations]
    return store, results, interleaver


def overlapped(trace: list[str]) -> bool:
    """Both clients took steps before either finished (the schedule really interleaved)."""
    return trace.index("B") < len(trace) - 1 - trace[::-1].index("A") if "B" in trace else False


async def dirs(fs: engine.FileSystem, *paths: str) -> None:
    for path in paths:
        await fs.mkdir(path, parents=True)


@pytest.mark.parametrize("seed", SCHEDULES)
async def test_crossing_renames_of_two_directories_never_form_a_cycle(seed: int) -> None:
    store, results, trace = await race(
        lambda fs: dirs(fs, "/a", "/b"),
        lambda fs: fs.rename("/a", "/b/x"), lambda fs: fs.rename("/b", "/a/y"), seed)
    winners = [name for name, result in results.items() if result is None]
    assert len(winners) == 1, results
    loser = results["B" if winners == ["A"] else "A"]
    assert isinstance(loser, OSError) and loser.errno in (errno.ENOENT, errno.EINVAL)
    expected = {"/b", "/b/x"} if winners == ["A"] else {"/a", "/a/y"}
    assert set(stored_snapshot(store.items())) - {"/"} == expected


@pytest.mark.parametrize("seed", SCHEDULES)
async def test_the_deeper_crossing_rename_never_forms_a_cycle(seed: int) -> None:
    # `mv a b/d/e` || `mv b/d a/c`: the renamed directories are not each other's parents.
    store, results, _ = await race(
        lambda fs: dirs(fs, "/a", "/b/d"),
        lambda fs: fs.rename("/a", "/b/d/e"), lambda fs: fs.rename("/b/d", "/a/c"), seed)
    assert sum(result is None for result in results.values()) == 1, results


@pytest.mark.parametrize("seed", SCHEDULES)
async def test_crossing_renames_by_inode_never_form_a_cycle(seed: int) -> None:
    # As FUSE sends them: (directory inode, name) pairs, no path resolved from the root, so
    # no dirent on the way down is shared; only the ancestor walk's parent-pointer reads
    # make the two transactions conflict.
    store = MemoryTxnStore()
    fs = engine.FileSystem(store.client())
    await dirs(fs, "/a", "/b/d")
    a, b, d = [(await fs.stat(path)).ino for path in ("/a", "/b", "/b/d")]
    interleaver = Interleaver(seed)
    one = engine.FileSystem(store.client(name="A", interleaver=interleaver))
    two = engine.FileSystem(store.client(name="B", interleaver=interleaver))
    results = await interleaver.run(A=one.rename_at(ROOT, "a", d, "e"),
                                    B=two.rename_at(b, "d", a, "c"))
    check = check_stored_namespace(store.items())
    assert check.valid, [str(violation) for violation in check.violations]
    assert sum(result is None for result in results.values()) == 1, results
    loser = next(result for result in results.values() if result is not None)
    assert isinstance(loser, OSError) and loser.errno == errno.EINVAL


async def test_some_schedules_run_the_two_renames_truly_concurrently() -> None:
    # The race tests mean something only if the schedules overlap the two transactions and
    # the store sees the conflict.
    conflicts, overlaps = 0, 0
    for seed in SCHEDULES:
        store, _, interleaver = await race(
            lambda fs: dirs(fs, "/a", "/b"),
            lambda fs: fs.rename("/a", "/b/x"), lambda fs: fs.rename("/b", "/a/y"), seed)
        conflicts += store.conflicts
        overlaps += overlapped(interleaver.trace)
    assert conflicts > 0 and overlaps > 0


@pytest.mark.parametrize("seed", SCHEDULES)
async def test_rename_into_a_directory_racing_with_its_rmdir(seed: int) -> None:
    async def setup(fs: engine.FileSystem) -> None:
        await fs.mkdir("/d")
        await fs.write_file("/f", b"data")
    store, results, _ = await race(
        setup, lambda fs: fs.rename("/f", "/d/g"), lambda fs: fs.rmdir("/d"), seed)
    tree = stored_snapshot(store.items())
    if results["A"] is None:   # the rename won: the directory is not empty for rmdir
        assert isinstance(results["B"], OSError) and results["B"].errno == errno.ENOTEMPTY
        assert tree["/d/g"] == ("file", b"data")
    else:                      # rmdir won: the rename finds no target directory
        assert results["B"] is None and isinstance(results["A"], FileNotFoundError)
        assert tree == {"/": ("dir", None), "/f": ("file", b"data")}


@pytest.mark.parametrize("seed", SCHEDULES)
async def test_create_racing_with_a_rename_onto_the_same_name(seed: int) -> None:
    async def setup(fs: engine.FileSystem) -> None:
        await fs.mkdir("/d")
        await fs.write_file("/f", b"renamed")
    store, results, _ = await race(
        setup, lambda fs: fs.write_file("/d/x", b"created"),
        lambda fs: fs.rename("/f", "/d/x"), seed)
    assert results == {"A": None, "B": None}
    tree = stored_snapshot(store.items())
    # Serial either way: the later one's content is at /d/x, one inode, no leftover.
    assert tree["/d/x"] in (("file", b"created"), ("file", b"renamed"))
    assert "/f" not in tree


@pytest.mark.parametrize("seed", range(10))
async def test_concurrent_appends_are_not_lost(seed: int) -> None:
    async def setup(fs: engine.FileSystem) -> None:
        await fs.write_file("/log", b"")
    store, results, _ = await race(
        setup, lambda fs: fs.append("/log", b"A" * 5), lambda fs: fs.append("/log", b"B" * 5),
        seed)
    assert results == {"A": None, "B": None}
    assert stored_snapshot(store.items())["/log"][1] in (b"AAAAABBBBB", b"BBBBBAAAAA")


def test_overlap_means_both_stepped_before_either_finished() -> None:
    assert overlapped(["A", "B", "A"]) and not overlapped(["A", "A", "B"])

"""engine.testing.fs_check over stored keys: each rule it adds to check_namespace_tree can
fail, on a store corrupted by hand, and a valid store passes."""

from __future__ import annotations

import engine
from engine.fs.layout import Keys, encode_dirent, encode_u64
from engine.testing.fs_check import check_stored_namespace, stored_snapshot
from engine.testing.memory_txn import MemoryTxnStore

KEYS = Keys()


async def populated() -> tuple[MemoryTxnStore, dict[str, int]]:
    store = MemoryTxnStore()
    fs = engine.FileSystem(store.client(), chunk_size=4)
    await fs.mkdir("/a/b", parents=True)
    await fs.write_file("/a/f", b"0123456789")
    inos = {path: (await fs.stat(path)).ino for path in ("/a", "/a/b", "/a/f")}
    return store, inos


async def corrupt(store: MemoryTxnStore, **writes: tuple[bytes, bytes | None]) -> set[str]:
    async with store.client().transaction() as tx:
        for key, value in writes.values():
            if value is None:
                tx.delete(key)
            else:
                tx.put(key, value)
    return check_stored_namespace(store.items(), chunk_size=4).kinds()


async def test_a_valid_store_passes_and_reads_back() -> None:
    store, _ = await populated()
    assert check_stored_namespace(store.items(), chunk_size=4).valid
    assert stored_snapshot(store.items()) == {
        "/": ("dir", None), "/a": ("dir", None), "/a/b": ("dir", None),
        "/a/f": ("file", b"0123456789")}


async def test_a_parent_pointer_of_a_file_is_reported() -> None:
    store, inos = await populated()
    kinds = await corrupt(store, p=(KEYS.parent(inos["/a/f"]), encode_u64(1)))
    assert kinds == {"orphan-directory-key"}


async def test_a_short_chunk_is_reported() -> None:
    store, inos = await populated()
    assert await corrupt(store, c=(KEYS.chunk(inos["/a/f"], 1), b"45")) == {
        "wrong-chunk-length"}


async def test_an_orphan_chunk_is_reported() -> None:
    store, inos = await populated()
    assert "chunk-beyond-size" in await corrupt(store, c=(KEYS.chunk(inos["/a/f"], 7), b"x"))


async def test_a_rename_cycle_written_by_hand_is_reported() -> None:
    # The outcome of both crossing renames committing: /a moved under /a/b.
    store, inos = await populated()
    kinds = await corrupt(
        store, drop=(KEYS.dirent(1, "a"), None),
        add=(KEYS.dirent(inos["/a/b"], "x"), encode_dirent(inos["/a"], "dir")),
        up=(KEYS.parent(inos["/a"]), encode_u64(inos["/a/b"])))
    assert "cycle" in kinds and "unreachable" in kinds

"""engine.FileSystem over engine.Client's replicated transactions on a sharded LocalCluster:
the file system's tables are split across four ranges (chunks, directory entries, inodes and
link counts, parent pointers), so every namespace operation is a cross-shard transaction."""

from __future__ import annotations

import asyncio

import engine
from engine.aio.txn import AsyncTransaction
from engine.testing.fs_check import check_stored_namespace

# Ranges: [, fs/d) chunks | [fs/d, fs/i) entries | [fs/i, fs/p) inodes, link counts | [fs/p, )
SPLITS = [b"fs/d", b"fs/i", b"fs/p"]


async def test_namespace_operations_across_four_ranges_keep_a_valid_tree() -> None:
    async with engine.LocalCluster(n=3, shards=4, split_keys=SPLITS) as cluster:
        await cluster.wait_leader()
        async with cluster.client() as client, cluster.client() as other:
            fs = engine.FileSystem(client, chunk_size=8)
            fs2 = engine.FileSystem(other, chunk_size=8)
            await fs.mkdir("/a/b", parents=True)
            await fs.write_file("/a/b/f", b"0123456789abcdef-tail")
            await fs.mkdir("/c")
            # Two clients race renames of the same directory: serializable, one tree.
            results = await asyncio.gather(fs.rename("/a/b", "/c/b"),
                                           fs2.rename("/a/b", "/b"), return_exceptions=True)
            assert sum(1 for r in results if r is None) >= 1, results
            where = "/c/b" if await fs2.exists("/c/b") else "/b"
            assert await fs2.read_file(where + "/f") == b"0123456789abcdef-tail"
            assert await fs2.read_file(where + "/f", 4, 6) == b"456789"
            assert sorted(await fs.listdir("/")) == sorted(
                ["a", "c"] + (["b"] if where == "/b" else []))
            st = await fs.stat(where + "/f")
            assert st.kind == "file" and st.size == 21
            assert (await fs.stat("/c")).nlink == (3 if where == "/c/b" else 2)
            await fs.unlink(where + "/f")
            await fs.rmdir(where)

            async def rows(tx: AsyncTransaction) -> list[tuple[bytes, bytes]]:
                return await tx.scan(b"fs/", b"fs0")

            stored = await client.run_transaction(rows)
            result = check_stored_namespace(stored, chunk_size=8)
            assert result.valid, result
            assert sorted(await fs.listdir("/")) == ["a", "c"]

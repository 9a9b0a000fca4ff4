"""engine.FileSystem operation by operation: chunked contents and ranged reads, the named
limits, stat (HLC mtime, stable inode numbers), paginated listdir in byte order, symbolic
links, permissions, and the key layout itself."""

from __future__ import annotations

import errno
import stat

import pytest

import engine
from engine.fs.layout import CHUNK_SIZE, MAX_FILE_SIZE, NAME_MAX, Keys
from engine.testing.fs_check import check_stored_namespace
from engine.testing.memory_txn import MemoryTxnStore


@pytest.fixture
def store() -> MemoryTxnStore:
    return MemoryTxnStore()


@pytest.fixture
def fs(store: MemoryTxnStore) -> engine.FileSystem:
    return engine.FileSystem(store.client())


def chunk_keys(store: MemoryTxnStore) -> list[bytes]:
    return [key for key, _ in store.items() if key.startswith(Keys().chunk_prefix)]


def assert_tree(store: MemoryTxnStore, chunk_size: int = CHUNK_SIZE) -> None:
    result = check_stored_namespace(store.items(), chunk_size=chunk_size)
    assert result.valid, [str(violation) for violation in result.violations]


async def test_a_large_file_is_stored_in_chunks_and_read_by_range(
        store: MemoryTxnStore, fs: engine.FileSystem) -> None:
    data = bytes(range(256)) * 1000            # 256,000 bytes: 4 chunks of 64 KiB
    await fs.write_file("/big", data)
    assert len(chunk_keys(store)) == -(-len(data) // CHUNK_SIZE) == 4
    assert await fs.read_file("/big") == data
    for offset, length in ((0, 10), (CHUNK_SIZE - 3, 6), (CHUNK_SIZE * 2, CHUNK_SIZE + 1),
                           (len(data) - 5, 100), (len(data), 4), (len(data) + 9, None)):
        end = None if length is None else offset + length
        assert await fs.read_file("/big", offset, length) == data[offset:end]
    await fs.append("/big", b"tail")
    assert (await fs.stat("/big")).size == len(data) + 4
    assert await fs.read_file("/big", len(data) - 2) == data[-2:] + b"tail"
    await fs.write_file("/big", b"short")      # truncation drops the chunks past the end
    assert len(chunk_keys(store)) == 1
    assert_tree(store)
    await fs.unlink("/big")
    assert chunk_keys(store) == []
    assert_tree(store)


async def test_a_ranged_read_reads_only_the_chunks_it_covers(store: MemoryTxnStore) -> None:
    fs = engine.FileSystem(store.client(), chunk_size=4)
    await fs.write_file("/f", b"0123456789abcdef")
    store.keys_read.clear()
    reader = engine.FileSystem(store.client(), chunk_size=4)
    assert await reader.read_file("/f", 5, 4) == b"5678"
    chunk_prefix = Keys().chunk_prefix
    assert sorted(key[-4:] for key in store.keys_read if key.startswith(chunk_prefix)) == [
        (1).to_bytes(4, "big"), (2).to_bytes(4, "big")]


async def test_the_file_size_limit(store: MemoryTxnStore) -> None:
    assert MAX_FILE_SIZE == 8 * 1024 * 1024 and CHUNK_SIZE == 64 * 1024
    fs = engine.FileSystem(store.client(), max_file_size=10)
    await fs.write_file("/f", b"0123456789")
    with pytest.raises(OSError) as caught:
        await fs.write_file("/g", b"x" * 11)
    assert caught.value.errno == errno.EFBIG
    with pytest.raises(OSError) as caught:
        await fs.append("/f", b"x")
    assert caught.value.errno == errno.EFBIG
    assert await fs.read_file("/f") == b"0123456789"
    assert not await fs.exists("/g")


async def test_the_name_length_limit(fs: engine.FileSystem) -> None:
    await fs.write_file("/" + "n" * NAME_MAX, b"")
    with pytest.raises(OSError) as caught:
        await fs.mkdir("/" + "n" * (NAME_MAX + 1))
    assert caught.value.errno == errno.ENAMETOOLONG
    with pytest.raises(ValueError, match="null byte"):
        await fs.write_file("/a\x00b", b"")


async def test_stat_reports_the_hlc_mtime_and_a_stable_inode(fs: engine.FileSystem) -> None:
    await fs.write_file("/f", b"a")
    first = await fs.stat("/f")
    await fs.append("/f", b"b")
    second = await fs.stat("/f")
    assert second.mtime > first.mtime and second.st_mtime_ns >= first.st_mtime_ns
    assert stat.S_ISREG(second.st_mode) and stat.S_IMODE(second.st_mode) == 0o644
    assert (second.st_size, second.st_nlink) == (2, 1)
    await fs.mkdir("/d")
    await fs.rename("/f", "/d/g")
    assert (await fs.stat("/d/g")).ino == first.ino
    root = await fs.stat("/")
    assert stat.S_ISDIR(root.st_mode) and root.st_nlink == 3 and root.ino == 1


async def test_listdir_pages_in_byte_order(fs: engine.FileSystem) -> None:
    names = ["b", "a", "é", "Z", "aa", "a b", "日本"]
    await fs.mkdir("/d")
    for name in names:
        await fs.write_file(f"/d/{name}", b"")
    everything = await fs.listdir("/d")
    assert everything == sorted(names)          # code point order is UTF-8 byte order
    assert everything == sorted(names, key=str.encode)
    pages: list[str] = []
    after = None
    while page := await fs.listdir("/d", start_after=after, limit=3):
        pages += page
        after = page[-1]
    assert pages == everything


async def test_symlinks(fs: engine.FileSystem) -> None:
    await fs.mkdir("/d/e", parents=True)
    await fs.symlink("d/e", "/link")
    await fs.write_file("/link/f", b"through")
    assert await fs.read_file("/d/e/f") == b"through"
    assert await fs.readlink("/link") == "d/e"
    assert (await fs.lstat("/link")).kind == "symlink"
    assert (await fs.stat("/link")).kind == "dir"
    await fs.symlink("loop", "/loop")
    with pytest.raises(OSError) as caught:
        await fs.read_file("/loop")
    assert caught.value.errno == errno.ELOOP
    with pytest.raises(OSError) as caught:
        await fs.readlink("/d")
    assert caught.value.errno == errno.EINVAL


async def test_errors_are_pythons_own(fs: engine.FileSystem) -> None:
    await fs.mkdir("/d")
    await fs.write_file("/d/f", b"x")
    cases = [
        (fs.read_file("/missing"), FileNotFoundError),
        (fs.mkdir("/d"), FileExistsError),
        (fs.listdir("/d/f"), NotADirectoryError),
        (fs.read_file("/d"), IsADirectoryError),
        (fs.unlink("/d"), IsADirectoryError),
        (fs.mkdir("/d/f/g"), NotADirectoryError),
        (fs.mkdir("/x/y"), FileNotFoundError),
    ]
    for call, kind in cases:
        with pytest.raises(kind):
            await call
    with pytest.raises(OSError) as caught:
        await fs.rmdir("/d")
    assert caught.value.errno == errno.ENOTEMPTY
    with pytest.raises(OSError) as caught:
        await fs.rename("/d", "/d/sub")
    assert caught.value.errno == errno.EINVAL


async def test_mkdir_with_parents_is_one_transaction(store: MemoryTxnStore,
                                                     fs: engine.FileSystem) -> None:
    await fs.write_file("/a", b"")
    before = store.commits
    await fs.mkdir("/p/q/r", parents=True)
    assert store.commits == before + 1
    with pytest.raises(NotADirectoryError):
        await fs.mkdir("/a/q/r", parents=True)
    assert store.commits == before + 1       # the failed one wrote nothing
    await fs.mkdir("/p/q/r", parents=True, exist_ok=True)
    assert_tree(store)


async def test_permissions_refuse_what_the_mode_forbids(store: MemoryTxnStore,
                                                        fs: engine.FileSystem) -> None:
    await fs.mkdir("/d")
    await fs.write_file("/d/f", b"secret")
    await fs.chmod("/d/f", 0o200)
    with pytest.raises(PermissionError):
        await fs.read_file("/d/f")
    await fs.chmod("/d/f", 0o400)
    with pytest.raises(PermissionError):
        await fs.write_file("/d/f", b"overwrite")
    assert await fs.read_file("/d/f") == b"secret"
    await fs.chmod("/d", 0o500)
    with pytest.raises(PermissionError):
        await fs.write_file("/d/g", b"")
    with pytest.raises(PermissionError):
        await fs.unlink("/d/f")
    await fs.chmod("/d", 0o600)
    with pytest.raises(PermissionError):
        await fs.stat("/d/f")
    assert stat.S_IMODE((await fs.stat("/d")).st_mode) == 0o600
    lax = engine.FileSystem(store.client(), enforce_permissions=False)
    assert await lax.read_file("/d/f") == b"secret"


async def test_the_key_layout(store: MemoryTxnStore, fs: engine.FileSystem) -> None:
    await fs.mkdir("/d")
    await fs.write_file("/d/f", b"x")
    d, f = (await fs.stat("/d")).ino, (await fs.stat("/d/f")).ino
    keys = {key for key, _ in store.items()}
    u64 = lambda n: n.to_bytes(8, "big")  # noqa: E731
    assert keys == {
        b"fs/i" + u64(d), b"fs/p" + u64(d), b"fs/d" + u64(1) + b"d",
        b"fs/n" + u64(1),                                 # the root's link count became 3
        b"fs/i" + u64(f), b"fs/d" + u64(d) + b"f", b"fs/c" + u64(f) + (0).to_bytes(4, "big"),
    }

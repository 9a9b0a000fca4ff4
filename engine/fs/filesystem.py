"""engine.FileSystem: an inode-based POSIX-like namespace on a transactional key space.

Every operation is one serializable transaction (client.run_transaction), so it is atomic and
ordered against every other operation of every client; a transaction that loses a conflict is
re-run from scratch, re-resolving its paths. The key layout is in engine.fs.layout; the rules
and errors follow engine.testing.namespace.PosixModel (Linux rename(2), rmdir(2), unlink(2),
symlink(2)), the oracle of the model-based tests.

Rename and cycles (docs/filesystem.md). Moving a directory to another parent walks the
ancestors of the destination's parent inside the rename's transaction, reading each parent
pointer, and refuses with EINVAL if the moved directory is among them (rename(2)); it then
writes the moved directory's parent pointer. Two crossing renames (`mv /a /b/x` and
`mv /b /a/y`) each read the parent pointer the other writes, so serializability lets at most
one commit; the other re-runs, sees the new tree and fails with EINVAL. This is 3FS's rule
(the ancestors in the read-conflict set); JuiceFS checks one level only and can form a
detached loop across clients.

Inode numbers are random 63-bit ids from a seeded generator, checked absent inside the
creating transaction: there is no counter key every create would write (a single hot key,
and a conflict between every two concurrent creates), and two creators that draw the same id
conflict on the key they both read absent, so one re-runs with another id.
"""

from __future__ import annotations

import errno
import random
import stat as stat_module
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from engine.fs.client import Transaction, TransactionalClient
from engine.fs.layout import (
    CHUNK_SIZE,
    DEFAULT_PREFIX,
    MAX_FILE_SIZE,
    NAME_MAX,
    ROOT,
    ROOT_ATTRS,
    TYPE_BITS,
    InodeAttrs,
    Keys,
    decode_dirent,
    decode_u32,
    decode_u64,
    encode_dirent,
    encode_u32,
    encode_u64,
)
from engine.txn.hlc import Timestamp

__all__ = ["FileStat", "FileSystem"]

T = TypeVar("T")
# Linux's MAXSYMLINKS: symbolic links followed in one path resolution before ELOOP.
MAX_SYMLINKS = 40
_MESSAGES = {
    errno.ENOENT: "No such file or directory", errno.EEXIST: "File exists",
    errno.ENOTDIR: "Not a directory", errno.EISDIR: "Is a directory",
    errno.ENOTEMPTY: "Directory not empty", errno.EINVAL: "Invalid argument",
    errno.EBUSY: "Device or resource busy", errno.ELOOP: "Too many levels of symbolic links",
    errno.ENAMETOOLONG: "File name too long", errno.EFBIG: "File too large",
    errno.EACCES: "Permission denied", errno.EPERM: "Operation not permitted",
}


def _error(code: int, path: str) -> OSError:
    # OSError(errno, ...) builds the matching subclass (FileNotFoundError for ENOENT, ...).
    return OSError(code, _MESSAGES[code], path)


@dataclass(frozen=True)
class FileStat:
    """stat(2)'s answer: st_mode carries the type bits; mtime is an HLC timestamp."""

    ino: int
    kind: str
    mode: int
    nlink: int
    size: int
    mtime: Timestamp

    @property
    def st_ino(self) -> int:
        return self.ino

    @property
    def st_mode(self) -> int:
        return self.mode

    @property
    def st_nlink(self) -> int:
        return self.nlink

    @property
    def st_size(self) -> int:
        return self.size

    @property
    def st_mtime_ns(self) -> int:
        return self.mtime.wall_ns


@dataclass(frozen=True)
class _Found:
    """A resolved path: the directory holding the last component, its name, and the inode it
    names (None if absent) with that inode's kind."""

    parent: int
    name: str
    ino: int | None
    kind: str | None


class FileSystem:
    """A namespace on a transactional client (engine.fs.client.TransactionalClient).

    Paths are absolute ("/a/b"); "." and ".." are followed in the middle of a path; symbolic
    links are followed as PosixModel does. Errors are Python's own OSError subclasses.
    `enforce_permissions`: refuse with PermissionError what the owner's mode bits forbid
    (reading without r, writing without w, listing without r, creating or removing in a
    directory without w and x, passing through a directory without x), as for a non-root
    owner of every inode; permission bits are otherwise kept and reported only.
    """

    def __init__(self, client: TransactionalClient, *, prefix: bytes = DEFAULT_PREFIX,
                 chunk_size: int = CHUNK_SIZE, max_file_size: int = MAX_FILE_SIZE,
                 umask: int = 0o022, rng: random.Random | None = None,
                 enforce_permissions: bool = True) -> None:
        if chunk_size <= 0 or max_file_size < 0:
            raise ValueError("chunk_size must be positive and max_file_size non-negative")
        self.client = client
        self.keys = Keys(prefix)
        self.chunk_size = chunk_size
        self.max_file_size = max_file_size
        self.umask = umask
        self.enforce_permissions = enforce_permissions
        # A seeded generator (the namespace does no I/O, so it reads no entropy): seeded from
        # the client's clock and this object, so two file systems draw different ids.
        self._rng = rng if rng is not None else random.Random(hash((client.now(), id(self))))

    # -- transactions ----------------------------------------------------------------------

    async def _run(self, fn: Callable[[Transaction], Awaitable[T]]) -> T:
        return await self.client.run_transaction(fn)

    # -- inode records ---------------------------------------------------------------------

    async def _attrs(self, tx: Transaction, ino: int) -> InodeAttrs:
        data = await tx.get(self.keys.inode(ino))
        if data is None:
            if ino == ROOT:
                return ROOT_ATTRS
            raise OSError(errno.EIO, f"inode {ino} is missing", str(ino))
        return InodeAttrs.decode(data)

    def _put_attrs(self, tx: Transaction, ino: int, attrs: InodeAttrs) -> None:
        tx.put(self.keys.inode(ino), attrs.encode())

    async def _parent_of(self, tx: Transaction, ino: int) -> int:
        if ino == ROOT:
            return ROOT
        data = await tx.get(self.keys.parent(ino))
        if data is None:
            raise OSError(errno.EIO, f"directory {ino} has no parent pointer", str(ino))
        return decode_u64(data)

    async def _lookup(self, tx: Transaction, parent: int, name: str) -> tuple[int, str] | None:
        data = await tx.get(self.keys.dirent(parent, name))
        return None if data is None else decode_dirent(data)

    async def _is_empty(self, tx: Transaction, ino: int) -> bool:
        prefix = self.keys.dirents(ino)
        return not await tx.scan(prefix, Keys.end_of(prefix), limit=1)

    async def _new_ino(self, tx: Transaction) -> int:
        while True:
            ino = self._rng.randrange(ROOT + 1, 1 << 63)
            # The absent read joins the read set: a concurrent creator of the same id
            # conflicts with this transaction (module docstring).
            if await tx.get(self.keys.inode(ino)) is None:
                return ino

    async def _dir_nlink(self, tx: Transaction, ino: int) -> int:
        data = await tx.get(self.keys.nlink(ino))
        return 2 if data is None else decode_u32(data)

    async def _adjust_dir_nlink(self, tx: Transaction, ino: int, delta: int) -> None:
        nlink = await self._dir_nlink(tx, ino) + delta
        if nlink == 2:
            tx.delete(self.keys.nlink(ino))
        else:
            tx.put(self.keys.nlink(ino), encode_u32(nlink))

    def _check_access(self, attrs: InodeAttrs, bits: int, path: str) -> None:
        if self.enforce_permissions and attrs.mode & bits != bits:
            raise PermissionError(errno.EACCES, _MESSAGES[errno.EACCES], path)

    def _check_name(self, name: str, path: str) -> None:
        if "\x00" in name:   # as os does: a name is a C string; the listdir cursor needs it
            raise ValueError(f"embedded null byte in {path!r}")
        if len(name.encode()) > NAME_MAX:
            raise _error(errno.ENAMETOOLONG, path)

    # -- resolution (PosixModel._resolve, in one transaction) ------------------------------

    async def _resolve(self, tx: Transaction, path: str, *, follow_last: bool,
                       start: int = ROOT, budget: list[int] | None = None) -> _Found:
        if budget is None:
            budget = [MAX_SYMLINKS]
        parts = [part for part in path.split("/") if part]
        current, kind = (ROOT, "dir") if path.startswith("/") else (start, "dir")
        if not parts:
            return _Found(current, "", current, "dir")
        for part in parts[:-1]:
            current, kind = await self._step(tx, current, kind, part, path, budget)
        if kind != "dir":
            raise _error(errno.ENOTDIR, path)
        await self._search(tx, current, path)
        last = parts[-1]
        if last == ".":
            return _Found(current, last, current, "dir")
        if last == "..":
            return _Found(current, last, await self._parent_of(tx, current), "dir")
        entry = await self._lookup(tx, current, last)
        if entry is None:
            return _Found(current, last, None, None)
        child, child_kind = entry
        if follow_last and child_kind == "symlink":
            budget[0] -= 1
            if budget[0] < 0:
                raise _error(errno.ELOOP, path)
            target = (await self._attrs(tx, child)).target
            return await self._resolve(tx, target, follow_last=True, start=current,
                                       budget=budget)
        return _Found(current, last, child, child_kind)

    async def _search(self, tx: Transaction, directory: int, path: str) -> None:
        """Passing through a directory needs its x bit."""
        if self.enforce_permissions:
            self._check_access(await self._attrs(tx, directory), stat_module.S_IXUSR, path)

    async def _step(self, tx: Transaction, current: int, kind: str, part: str, path: str,
                    budget: list[int]) -> tuple[int, str]:
        if kind != "dir":
            raise _error(errno.ENOTDIR, path)
        await self._search(tx, current, path)
        if part == ".":
            return current, "dir"
        if part == "..":
            return await self._parent_of(tx, current), "dir"
        entry = await self._lookup(tx, current, part)
        if entry is None:
            raise _error(errno.ENOENT, path)
        child, child_kind = entry
        if child_kind == "symlink":
            budget[0] -= 1
            if budget[0] < 0:
                raise _error(errno.ELOOP, path)
            target = (await self._attrs(tx, child)).target
            found = await self._resolve(tx, target, follow_last=True, start=current,
                                        budget=budget)
            if found.ino is None or found.kind is None:
                raise _error(errno.ENOENT, path)
            return found.ino, found.kind
        return child, child_kind

    async def _check_modify(self, tx: Transaction, directory: int, path: str) -> None:
        """Adding or removing an entry needs w and x on the directory."""
        if self.enforce_permissions:
            self._check_access(await self._attrs(tx, directory),
                               stat_module.S_IWUSR | stat_module.S_IXUSR, path)

    # -- creating and dropping inodes ------------------------------------------------------

    async def _create(self, tx: Transaction, parent: int, name: str, attrs: InodeAttrs,
                      path: str) -> int:
        self._check_name(name, path)
        await self._check_modify(tx, parent, path)
        ino = await self._new_ino(tx)
        self._put_attrs(tx, ino, attrs)
        tx.put(self.keys.dirent(parent, name), encode_dirent(ino, attrs.kind))
        if attrs.kind == "dir":
            tx.put(self.keys.parent(ino), encode_u64(parent))
            await self._adjust_dir_nlink(tx, parent, +1)
        return ino

    def _chunks(self, size: int) -> int:
        return -(-size // self.chunk_size)

    def _delete_inode(self, tx: Transaction, ino: int, attrs: InodeAttrs) -> None:
        tx.delete(self.keys.inode(ino))
        if attrs.kind == "dir":
            tx.delete(self.keys.parent(ino))
            tx.delete(self.keys.nlink(ino))
        for index in range(self._chunks(attrs.size)):
            tx.delete(self.keys.chunk(ino, index))

    async def _drop_link(self, tx: Transaction, ino: int) -> None:
        attrs = await self._attrs(tx, ino)
        if attrs.nlink <= 1:
            self._delete_inode(tx, ino, attrs)
        else:
            self._put_attrs(tx, ino, attrs.with_(nlink=attrs.nlink - 1))

    # -- directories -----------------------------------------------------------------------

    async def mkdir(self, path: str, mode: int = 0o777, *, parents: bool = False,
                    exist_ok: bool = False) -> None:
        """pathlib.Path.mkdir's contract; with parents=True every missing ancestor is made
        in the same transaction."""
        stamp = self.client.now()

        async def body(tx: Transaction) -> None:
            await self._mkdir(tx, path, mode, parents, exist_ok, stamp)
        await self._run(body)

    async def _mkdir(self, tx: Transaction, path: str, mode: int, parents: bool,
                     exist_ok: bool, stamp: Timestamp) -> None:
        try:
            found = await self._resolve(tx, path, follow_last=False)
            if not found.name or found.ino is not None:
                raise _error(errno.EEXIST, path)
            await self._create(tx, found.parent, found.name,
                               InodeAttrs("dir", mode & ~self.umask, 2, 0, stamp), path)
        except FileNotFoundError:
            parent = path.rstrip("/").rsplit("/", 1)[0]
            if not parents or parent == path.rstrip("/"):
                raise
            await self._mkdir(tx, parent or "/", 0o777, True, True, stamp)
            await self._mkdir(tx, path, mode, False, exist_ok, stamp)
        except OSError:
            if not exist_ok or not await self._is_dir(tx, path):
                raise

    async def _is_dir(self, tx: Transaction, path: str) -> bool:
        try:
            found = await self._resolve(tx, path, follow_last=True)
        except OSError:
            return False
        return found.kind == "dir"

    async def rmdir(self, path: str) -> None:
        async def body(tx: Transaction) -> None:
            found = await self._resolve(tx, path, follow_last=False)
            if found.ino is None:
                raise _error(errno.ENOENT, path)
            if not found.name:
                raise _error(errno.EBUSY, path)
            if found.name == ".":
                raise _error(errno.EINVAL, path)
            if found.kind != "dir":
                raise _error(errno.ENOTDIR, path)
            # The scan puts the whole directory in the read set: a concurrent create in it
            # conflicts with this rmdir.
            if found.name == ".." or not await self._is_empty(tx, found.ino):
                raise _error(errno.ENOTEMPTY, path)
            await self._check_modify(tx, found.parent, path)
            tx.delete(self.keys.dirent(found.parent, found.name))
            await self._adjust_dir_nlink(tx, found.parent, -1)
            self._delete_inode(tx, found.ino, await self._attrs(tx, found.ino))
        await self._run(body)

    async def listdir(self, path: str = "/", *, start_after: str | None = None,
                      limit: int | None = None) -> list[str]:
        """Names in code point order; a page of them with start_after / limit (one range
        scan of the directory's entries)."""
        async def body(tx: Transaction) -> list[str]:
            found = await self._resolve(tx, path, follow_last=True)
            if found.ino is None:
                raise _error(errno.ENOENT, path)
            if found.kind != "dir":
                raise _error(errno.ENOTDIR, path)
            if self.enforce_permissions:
                self._check_access(await self._attrs(tx, found.ino), stat_module.S_IRUSR,
                                   path)
            prefix = self.keys.dirents(found.ino)
            start = prefix if start_after is None else prefix + start_after.encode() + b"\x00"
            rows = await tx.scan(start, Keys.end_of(prefix), limit=limit)
            return [key[len(prefix):].decode() for key, _ in rows]
        return await self._run(body)

    # -- files -----------------------------------------------------------------------------

    async def _open_for_write(self, tx: Transaction, path: str, mode: int,
                              stamp: Timestamp) -> tuple[int, InodeAttrs]:
        found = await self._resolve(tx, path, follow_last=True)
        if found.ino is None:
            attrs = InodeAttrs("file", mode & ~self.umask, 1, 0, stamp)
            return await self._create(tx, found.parent, found.name, attrs, path), attrs
        if found.kind == "dir":
            raise _error(errno.EISDIR, path)
        attrs = await self._attrs(tx, found.ino)
        self._check_access(attrs, stat_module.S_IWUSR, path)
        return found.ino, attrs

    def _write_range(self, tx: Transaction, ino: int, data: bytes, offset: int) -> None:
        """Write data at offset, whole chunks only: offset is a chunk boundary."""
        first = offset // self.chunk_size
        for index in range(self._chunks(len(data))):
            piece = data[index * self.chunk_size:(index + 1) * self.chunk_size]
            tx.put(self.keys.chunk(ino, first + index), piece)

    async def write_file(self, path: str, data: bytes, mode: int = 0o666) -> None:
        """Create or truncate, then write: open(path, "wb").write(data), atomically."""
        data = bytes(data)
        if len(data) > self.max_file_size:
            raise _error(errno.EFBIG, path)
        stamp = self.client.now()

        async def body(tx: Transaction) -> None:
            ino, attrs = await self._open_for_write(tx, path, mode, stamp)
            for index in range(self._chunks(len(data)), self._chunks(attrs.size)):
                tx.delete(self.keys.chunk(ino, index))
            self._write_range(tx, ino, data, 0)
            self._put_attrs(tx, ino, attrs.with_(size=len(data), mtime=stamp))
        await self._run(body)

    async def append(self, path: str, data: bytes, mode: int = 0o666) -> None:
        """open(path, "ab").write(data), atomically."""
        data = bytes(data)
        stamp = self.client.now()

        async def body(tx: Transaction) -> None:
            ino, attrs = await self._open_for_write(tx, path, mode, stamp)
            if attrs.size + len(data) > self.max_file_size:
                raise _error(errno.EFBIG, path)
            # Rewrite from the start of the last, partly filled chunk.
            start = attrs.size - attrs.size % self.chunk_size
            head = b""
            if start < attrs.size:
                head = await tx.get(self.keys.chunk(ino, start // self.chunk_size)) or b""
            self._write_range(tx, ino, head + data, start)
            self._put_attrs(tx, ino, attrs.with_(size=attrs.size + len(data), mtime=stamp))
        await self._run(body)

    async def read_file(self, path: str, offset: int = 0, length: int | None = None) -> bytes:
        """The whole file, or length bytes from offset (fewer at the end of the file);
        reads only the chunks the range covers."""
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("offset and length must be non-negative")

        async def body(tx: Transaction) -> bytes:
            found = await self._resolve(tx, path, follow_last=True)
            if found.ino is None:
                raise _error(errno.ENOENT, path)
            if found.kind == "dir":
                raise _error(errno.EISDIR, path)
            attrs = await self._attrs(tx, found.ino)
            self._check_access(attrs, stat_module.S_IRUSR, path)
            end = attrs.size if length is None else min(attrs.size, offset + length)
            if offset >= end:
                return b""
            first, last = offset // self.chunk_size, (end - 1) // self.chunk_size
            pieces = [await tx.get(self.keys.chunk(found.ino, index)) or b""
                      for index in range(first, last + 1)]
            base = first * self.chunk_size
            return b"".join(pieces)[offset - base:end - base]
        return await self._run(body)

    async def unlink(self, path: str) -> None:
        async def body(tx: Transaction) -> None:
            found = await self._resolve(tx, path, follow_last=False)
            if found.ino is None:
                raise _error(errno.ENOENT, path)
            if not found.name or found.kind == "dir":
                raise _error(errno.EISDIR, path)
            await self._check_modify(tx, found.parent, path)
            tx.delete(self.keys.dirent(found.parent, found.name))
            await self._drop_link(tx, found.ino)
        await self._run(body)

    async def link(self, src: str, dst: str) -> None:
        """link(2): a new name for a file; a symbolic link src is linked itself, not
        followed (Linux link(2)); directories cannot be linked (EPERM)."""
        async def body(tx: Transaction) -> None:
            source = await self._resolve(tx, src, follow_last=False)
            if source.ino is None or source.kind is None:
                raise _error(errno.ENOENT, src)
            target = await self._resolve(tx, dst, follow_last=False)
            if not target.name or target.ino is not None:
                raise _error(errno.EEXIST, dst)
            if source.kind == "dir":
                raise _error(errno.EPERM, src)
            self._check_name(target.name, dst)
            await self._check_modify(tx, target.parent, dst)
            tx.put(self.keys.dirent(target.parent, target.name),
                   encode_dirent(source.ino, source.kind))
            attrs = await self._attrs(tx, source.ino)
            self._put_attrs(tx, source.ino, attrs.with_(nlink=attrs.nlink + 1))
        await self._run(body)

    async def symlink(self, target: str, path: str) -> None:
        """os.symlink(target, path): target is stored as given, resolved when followed."""
        stamp = self.client.now()

        async def body(tx: Transaction) -> None:
            found = await self._resolve(tx, path, follow_last=False)
            if not found.name or found.ino is not None:
                raise _error(errno.EEXIST, path)
            await self._create(tx, found.parent, found.name,
                               InodeAttrs("symlink", 0o777, 1, len(target.encode()), stamp,
                                          target), path)
        await self._run(body)

    async def readlink(self, path: str) -> str:
        async def body(tx: Transaction) -> str:
            found = await self._resolve(tx, path, follow_last=False)
            if found.ino is None:
                raise _error(errno.ENOENT, path)
            if found.kind != "symlink":
                raise _error(errno.EINVAL, path)
            return (await self._attrs(tx, found.ino)).target
        return await self._run(body)

    # -- rename ----------------------------------------------------------------------------

    async def _ancestors(self, tx: Transaction, ino: int) -> list[int]:
        """ino and its directories up to the root, nearest first. Every parent pointer read
        joins the read set: a concurrent move of any of them conflicts with this
        transaction (the module docstring's cycle argument)."""
        chain = [ino]
        while chain[-1] != ROOT:
            chain.append(await self._parent_of(tx, chain[-1]))
        return chain

    async def rename(self, src: str, dst: str) -> None:
        """rename(2): atomic, replacing a file or an empty directory target; the checks run
        in Linux's order (PosixModel.rename)."""
        async def body(tx: Transaction) -> None:
            source = await self._resolve(tx, src, follow_last=False)
            target = await self._resolve(tx, dst, follow_last=False)
            await self._rename(tx, source, target, src, dst)
        await self._run(body)

    async def rename_at(self, src_dir: int, src_name: str, dst_dir: int,
                        dst_name: str) -> None:
        """rename(2) addressed by directory inode and name, as a FUSE rename request or
        renameat(2) with directory handles arrives: no path is resolved from the root, so
        nothing but the ancestor walk stops a cycle (module docstring)."""
        async def body(tx: Transaction) -> None:
            source = await self._entry_at(tx, src_dir, src_name)
            target = await self._entry_at(tx, dst_dir, dst_name)
            await self._rename(tx, source, target, src_name, dst_name)
        await self._run(body)

    async def _entry_at(self, tx: Transaction, directory: int, name: str) -> _Found:
        if directory != ROOT:
            data = await tx.get(self.keys.inode(directory))
            if data is None:
                raise _error(errno.ENOENT, name)
            if InodeAttrs.decode(data).kind != "dir":
                raise _error(errno.ENOTDIR, name)
        if name in ("", ".", ".."):
            return _Found(directory, name, directory, "dir")
        entry = await self._lookup(tx, directory, name)
        return _Found(directory, name, *entry) if entry else _Found(directory, name, None, None)

    async def _rename(self, tx: Transaction, source: _Found, target: _Found, src: str,
                      dst: str) -> None:
        if source.name in ("", ".", "..") or target.name in ("", ".", ".."):
            raise _error(errno.EBUSY, src if source.name in ("", ".", "..") else dst)
        if source.ino is None or source.kind is None:
            raise _error(errno.ENOENT, src)
        if source.parent != target.parent:
            if (source.kind == "dir"
                    and source.ino in await self._ancestors(tx, target.parent)):
                raise _error(errno.EINVAL, src)
            if (target.ino is not None
                    and target.ino in await self._ancestors(tx, source.parent)):
                raise _error(errno.ENOTEMPTY, dst)
        if source.ino == target.ino:
            return
        self._check_name(target.name, dst)
        await self._check_modify(tx, source.parent, src)
        await self._check_modify(tx, target.parent, dst)
        if target.ino is not None:
            if source.kind == "dir" and target.kind != "dir":
                raise _error(errno.ENOTDIR, dst)
            if source.kind != "dir" and target.kind == "dir":
                raise _error(errno.EISDIR, dst)
            if target.kind == "dir" and not await self._is_empty(tx, target.ino):
                raise _error(errno.ENOTEMPTY, dst)
            tx.delete(self.keys.dirent(target.parent, target.name))
            if target.kind == "dir":
                await self._adjust_dir_nlink(tx, target.parent, -1)
                self._delete_inode(tx, target.ino, await self._attrs(tx, target.ino))
            else:
                await self._drop_link(tx, target.ino)
        tx.delete(self.keys.dirent(source.parent, source.name))
        tx.put(self.keys.dirent(target.parent, target.name),
               encode_dirent(source.ino, source.kind))
        if source.kind == "dir" and source.parent != target.parent:
            tx.put(self.keys.parent(source.ino), encode_u64(target.parent))
            await self._adjust_dir_nlink(tx, source.parent, -1)
            await self._adjust_dir_nlink(tx, target.parent, +1)

    # -- attributes ------------------------------------------------------------------------

    async def stat(self, path: str, *, follow_symlinks: bool = True) -> FileStat:
        async def body(tx: Transaction) -> FileStat:
            found = await self._resolve(tx, path, follow_last=follow_symlinks)
            if found.ino is None:
                raise _error(errno.ENOENT, path)
            attrs = await self._attrs(tx, found.ino)
            nlink = (await self._dir_nlink(tx, found.ino) if attrs.kind == "dir"
                     else attrs.nlink)
            return FileStat(found.ino, attrs.kind, TYPE_BITS[attrs.kind] | attrs.mode, nlink,
                            attrs.size if attrs.kind != "dir" else 0, attrs.mtime)
        return await self._run(body)

    async def lstat(self, path: str) -> FileStat:
        return await self.stat(path, follow_symlinks=False)

    async def chmod(self, path: str, mode: int) -> None:
        """Set the permission bits (follows a final symbolic link, as os.chmod does)."""
        async def body(tx: Transaction) -> None:
            found = await self._resolve(tx, path, follow_last=True)
            if found.ino is None:
                raise _error(errno.ENOENT, path)
            attrs = await self._attrs(tx, found.ino)
            self._put_attrs(tx, found.ino, attrs.with_(mode=mode & 0o7777))
        await self._run(body)

    async def exists(self, path: str) -> bool:
        try:
            await self.stat(path)
        except OSError:
            return False
        return True

    async def is_dir(self, path: str) -> bool:
        try:
            return (await self.stat(path)).kind == "dir"
        except OSError:
            return False

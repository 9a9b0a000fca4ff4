"""A POSIX namespace oracle and the checkers for a replicated file-system namespace (sans-IO).

PosixModel is an in-memory, inode-based namespace with the operations and the errors of a
POSIX file system (Linux rename(2), rmdir(2), unlink(2), link(2), symlink(2) rules), raising
Python's own exceptions as os and pathlib do: FileNotFoundError, FileExistsError,
NotADirectoryError, IsADirectoryError, OSError(ENOTEMPTY), OSError(EINVAL) (a directory moved
into its own subtree), OSError(EBUSY) (the root), OSError(ELOOP). It is the oracle of model-based
tests: run the same operations on it and on the system under test, compare results and
exception types. tests/testing/test_namespace_model.py holds it against the local file system.

Paths are absolute in the model ("/a/b"); empty components are skipped; "." and ".." are
followed in the middle of a path. Symbolic links are followed in intermediate components and,
for read_file, write_file, append, listdir and stat, in the last one (a write through a
dangling link creates its target, as open(O_CREAT) does); never for lstat, readlink, unlink,
rmdir, rename, link or symlink. Directory sizes are 0 (real file systems report block sizes);
directory nlink is 2 + subdirectories (ext4, tmpfs). Permission bits are kept (mode & ~umask,
set by chmod, which follows a final link) but not enforced.

check_namespace_tree(inodes, dirents, chunks, root=1) walks a namespace's tables (what a
replicated file system stores: inode attributes, directory entries keyed by (parent inode,
name), file chunks keyed by (inode, index)) and reports every broken structural rule:

  bad-root               the root is missing or not a directory
  dangling-dirent        a directory entry names an inode that does not exist
  dirent-in-non-dir      a directory entry under an inode that is missing or not a directory
  root-linked            a directory entry names the root
  directory-linked-twice a directory has more than one entry naming it (no hard links to dirs)
  cycle                  directories whose parent entries form a loop, detached from the root
                         (the rename race: `mv /a /b/x` and `mv /b /a/y` both committed)
  unreachable            an inode with entries, none of them reachable from the root
  orphan-inode           an inode no entry names
  wrong-nlink            a file's nlink differs from its entry count, or a directory's from
                         2 + its subdirectories
  parent-mismatch        a directory's stored parent differs from the entry naming it
  orphan-chunk           a chunk of an inode that is missing or not a regular file
  chunk-beyond-size      a chunk past the end of its file (when chunk_size is given)

check_acknowledged_effects(model_after_acks, observed) compares the model that applied every
acknowledged operation with the namespace observed after the run: every path, kind and
content must agree, except under paths an operation with an unknown outcome touched.
"""

from __future__ import annotations

import errno
import stat as stat_module
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "InodeRecord",
    "NamespaceCheckResult",
    "NamespaceViolation",
    "PosixModel",
    "StatResult",
    "check_acknowledged_effects",
    "check_namespace_tree",
]

ROOT = 1
# Linux's MAXSYMLINKS: symbolic links followed in one path resolution before ELOOP.
MAX_SYMLINKS = 40
_MESSAGES = {
    errno.ENOENT: "No such file or directory", errno.EEXIST: "File exists",
    errno.ENOTDIR: "Not a directory", errno.EISDIR: "Is a directory",
    errno.ENOTEMPTY: "Directory not empty", errno.EINVAL: "Invalid argument",
    errno.EBUSY: "Device or resource busy", errno.ELOOP: "Too many levels of symbolic links",
    errno.EPERM: "Operation not permitted",
}


def _error(code: int, path: str) -> OSError:
    # OSError(errno, ...) builds the matching subclass (FileNotFoundError for ENOENT, ...).
    return OSError(code, _MESSAGES[code], path)


@dataclass
class _Inode:
    ino: int
    kind: str                      # "dir", "file" or "symlink"
    mode: int                      # permission bits
    nlink: int
    data: bytearray = field(default_factory=bytearray)
    entries: dict[str, int] = field(default_factory=dict)
    target: str = ""
    parent: int = ROOT


@dataclass(frozen=True)
class StatResult:
    ino: int
    kind: str
    mode: int                      # file type bits | permission bits, as st_mode
    nlink: int
    size: int


_TYPE_BITS = {"dir": stat_module.S_IFDIR, "file": stat_module.S_IFREG,
              "symlink": stat_module.S_IFLNK}


class PosixModel:
    """The namespace oracle (see the module docstring for the rules it follows)."""

    def __init__(self, *, umask: int = 0o022) -> None:
        self.umask = umask
        self._inodes: dict[int, _Inode] = {ROOT: _Inode(ROOT, "dir", 0o755, 2)}
        self._next_ino = ROOT + 1

    # -- resolution ----------------------------------------------------------------------------

    def _resolve(self, path: str, *, follow_last: bool, start: int = ROOT,
                 budget: list[int] | None = None) -> tuple[int, str, int | None]:
        """(directory inode, last name, inode or None); "" names the root itself."""
        if budget is None:
            budget = [MAX_SYMLINKS]
        parts = [part for part in path.split("/") if part]
        current = ROOT if path.startswith("/") else start
        if not parts:
            return current, "", current
        for part in parts[:-1]:
            current = self._step(current, part, path, budget)
        directory = self._inodes[current]
        if directory.kind != "dir":
            raise _error(errno.ENOTDIR, path)
        last = parts[-1]
        if last == ".":
            return current, last, current
        if last == "..":
            return current, last, directory.parent
        child = directory.entries.get(last)
        if child is not None and follow_last and self._inodes[child].kind == "symlink":
            budget[0] -= 1
            if budget[0] < 0:
                raise _error(errno.ELOOP, path)
            return self._resolve(self._inodes[child].target, follow_last=True, start=current,
                                 budget=budget)
        return current, last, child

    def _step(self, current: int, part: str, path: str, budget: list[int]) -> int:
        directory = self._inodes[current]
        if directory.kind != "dir":
            raise _error(errno.ENOTDIR, path)
        if part == ".":
            return current
        if part == "..":
            return directory.parent
        child = directory.entries.get(part)
        if child is None:
            raise _error(errno.ENOENT, path)
        if self._inodes[child].kind == "symlink":
            budget[0] -= 1
            if budget[0] < 0:
                raise _error(errno.ELOOP, path)
            _, _, target = self._resolve(self._inodes[child].target, follow_last=True,
                                         start=current, budget=budget)
            if target is None:
                raise _error(errno.ENOENT, path)
            return target
        return child

    def _new(self, kind: str, mode: int, parent: int) -> _Inode:
        inode = _Inode(self._next_ino, kind, mode & ~self.umask if kind != "symlink" else mode,
                       2 if kind == "dir" else 1, parent=parent)
        self._inodes[inode.ino] = inode
        self._next_ino += 1
        return inode

    def _drop_link(self, ino: int) -> None:
        inode = self._inodes[ino]
        inode.nlink -= 1
        if inode.nlink == 0 or inode.kind == "dir":
            del self._inodes[ino]

    def _ancestors(self, ino: int) -> list[int]:
        """ino and its directories up to the root, nearest first."""
        chain = [ino]
        while chain[-1] != ROOT:
            chain.append(self._inodes[chain[-1]].parent)
        return chain

    # -- directories ---------------------------------------------------------------------------

    def mkdir(self, path: str, mode: int = 0o777, *, parents: bool = False,
              exist_ok: bool = False) -> None:
        """pathlib.Path.mkdir's contract."""
        try:
            self._mkdir_one(path, mode)
        except FileNotFoundError:
            parent = path.rstrip("/").rsplit("/", 1)[0]
            if not parents or parent == path.rstrip("/"):
                raise
            self.mkdir(parent or "/", parents=True, exist_ok=True)
            self.mkdir(path, mode, exist_ok=exist_ok)
        except OSError:
            if not exist_ok or not self.is_dir(path):
                raise

    def _mkdir_one(self, path: str, mode: int) -> None:
        parent, name, ino = self._resolve(path, follow_last=False)
        if not name or ino is not None:
            raise _error(errno.EEXIST, path)
        directory = self._inodes[parent]
        directory.entries[name] = self._new("dir", mode, parent).ino
        directory.nlink += 1

    def rmdir(self, path: str) -> None:
        parent, name, ino = self._resolve(path, follow_last=False)
        if ino is None:
            raise _error(errno.ENOENT, path)
        if not name:
            raise _error(errno.EBUSY, path)
        if name == ".":
            raise _error(errno.EINVAL, path)
        inode = self._inodes[ino]
        if inode.kind != "dir":
            raise _error(errno.ENOTDIR, path)
        if inode.entries or name == "..":
            raise _error(errno.ENOTEMPTY, path)
        del self._inodes[parent].entries[name]
        self._inodes[parent].nlink -= 1
        del self._inodes[ino]

    def listdir(self, path: str, *, start_after: str | None = None,
                limit: int | None = None) -> list[str]:
        """Names in order (code point order), a page of them with start_after / limit."""
        _, _, ino = self._resolve(path, follow_last=True)
        if ino is None:
            raise _error(errno.ENOENT, path)
        inode = self._inodes[ino]
        if inode.kind != "dir":
            raise _error(errno.ENOTDIR, path)
        names = sorted(inode.entries)
        if start_after is not None:
            names = [name for name in names if name > start_after]
        return names if limit is None else names[:limit]

    # -- files ---------------------------------------------------------------------------------

    def _open_for_write(self, path: str, mode: int) -> _Inode:
        parent, name, ino = self._resolve(path, follow_last=True)
        if ino is None:
            inode = self._new("file", mode, parent)
            self._inodes[parent].entries[name] = inode.ino
            return inode
        inode = self._inodes[ino]
        if inode.kind == "dir":
            raise _error(errno.EISDIR, path)
        return inode

    def write_file(self, path: str, data: bytes, mode: int = 0o666) -> None:
        """Create or truncate, then write: open(path, "wb").write(data)."""
        self._open_for_write(path, mode).data[:] = data

    def append(self, path: str, data: bytes, mode: int = 0o666) -> None:
        """open(path, "ab").write(data)."""
        self._open_for_write(path, mode).data.extend(data)

    def read_file(self, path: str, offset: int = 0, length: int | None = None) -> bytes:
        """The whole file, or length bytes from offset (fewer at the end of the file)."""
        _, _, ino = self._resolve(path, follow_last=True)
        if ino is None:
            raise _error(errno.ENOENT, path)
        inode = self._inodes[ino]
        if inode.kind == "dir":
            raise _error(errno.EISDIR, path)
        end = len(inode.data) if length is None else offset + length
        return bytes(inode.data[offset:end])

    def unlink(self, path: str) -> None:
        parent, name, ino = self._resolve(path, follow_last=False)
        if ino is None:
            raise _error(errno.ENOENT, path)
        if not name or self._inodes[ino].kind == "dir":
            raise _error(errno.EISDIR, path)
        del self._inodes[parent].entries[name]
        self._drop_link(ino)

    def link(self, src: str, dst: str) -> None:
        """link(2): a symbolic link src is linked itself, not followed (Linux link(2))."""
        _, _, ino = self._resolve(src, follow_last=False)
        if ino is None:
            raise _error(errno.ENOENT, src)
        parent, name, existing = self._resolve(dst, follow_last=False)
        if not name or existing is not None:
            raise _error(errno.EEXIST, dst)
        inode = self._inodes[ino]
        if inode.kind == "dir":
            raise _error(errno.EPERM, src)
        self._inodes[parent].entries[name] = ino
        inode.nlink += 1

    def symlink(self, target: str, path: str) -> None:
        """os.symlink(target, path): target is stored as given, resolved when followed."""
        parent, name, ino = self._resolve(path, follow_last=False)
        if not name or ino is not None:
            raise _error(errno.EEXIST, path)
        inode = self._new("symlink", 0o777, parent)
        inode.target = target
        self._inodes[parent].entries[name] = inode.ino

    def readlink(self, path: str) -> str:
        _, _, ino = self._resolve(path, follow_last=False)
        if ino is None:
            raise _error(errno.ENOENT, path)
        inode = self._inodes[ino]
        if inode.kind != "symlink":
            raise _error(errno.EINVAL, path)
        return inode.target

    # -- rename --------------------------------------------------------------------------------

    def rename(self, src: str, dst: str) -> None:
        """rename(2): atomic, replacing a file or an empty directory target.

        The checks run in Linux's order (fs/namei.c do_renameat2, lock_rename): both parents
        resolved; "." / ".." / the root refused (EBUSY); a missing source (ENOENT); a directory
        moved into its own subtree (EINVAL); a target that is an ancestor of the source
        (ENOTEMPTY); two names of one inode (success, nothing done); then the type rules,
        directory over non-directory (ENOTDIR), non-directory over directory (EISDIR), and a
        non-empty directory target (ENOTEMPTY).
        """
        src_parent, src_name, src_ino = self._resolve(src, follow_last=False)
        dst_parent, dst_name, dst_ino = self._resolve(dst, follow_last=False)
        if src_name in ("", ".", "..") or dst_name in ("", ".", ".."):
            # Refused on the names alone, before the source is looked up.
            raise _error(errno.EBUSY, src if src_name in ("", ".", "..") else dst)
        if src_ino is None:
            raise _error(errno.ENOENT, src)
        source = self._inodes[src_ino]
        if src_parent != dst_parent:
            if source.kind == "dir" and src_ino in self._ancestors(dst_parent):
                raise _error(errno.EINVAL, src)
            if dst_ino is not None and dst_ino in self._ancestors(src_parent):
                raise _error(errno.ENOTEMPTY, dst)
        if src_ino == dst_ino:
            return
        if dst_ino is not None:
            target = self._inodes[dst_ino]
            if source.kind == "dir" and target.kind != "dir":
                raise _error(errno.ENOTDIR, dst)
            if source.kind != "dir" and target.kind == "dir":
                raise _error(errno.EISDIR, dst)
            if target.entries:
                raise _error(errno.ENOTEMPTY, dst)
            del self._inodes[dst_parent].entries[dst_name]
            if target.kind == "dir":
                self._inodes[dst_parent].nlink -= 1
            self._drop_link(dst_ino)
        del self._inodes[src_parent].entries[src_name]
        self._inodes[dst_parent].entries[dst_name] = src_ino
        if source.kind == "dir":
            source.parent = dst_parent
            self._inodes[src_parent].nlink -= 1
            self._inodes[dst_parent].nlink += 1

    # -- attributes ----------------------------------------------------------------------------

    def stat(self, path: str, *, follow_symlinks: bool = True) -> StatResult:
        _, _, ino = self._resolve(path, follow_last=follow_symlinks)
        if ino is None:
            raise _error(errno.ENOENT, path)
        inode = self._inodes[ino]
        size = {"file": len(inode.data), "symlink": len(inode.target.encode()), "dir": 0}
        return StatResult(ino, inode.kind, _TYPE_BITS[inode.kind] | inode.mode, inode.nlink,
                          size[inode.kind])

    def chmod(self, path: str, mode: int) -> None:
        """os.chmod: the permission bits of the inode path names, following a final link."""
        _, _, ino = self._resolve(path, follow_last=True)
        if ino is None:
            raise _error(errno.ENOENT, path)
        self._inodes[ino].mode = mode & 0o7777

    def lstat(self, path: str) -> StatResult:
        return self.stat(path, follow_symlinks=False)

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
        except OSError:
            return False
        return True

    def is_dir(self, path: str) -> bool:
        try:
            return self.stat(path).kind == "dir"
        except OSError:
            return False

    # -- views for the checkers ----------------------------------------------------------------

    def snapshot(self) -> dict[str, tuple[str, Any]]:
        """Every path (not following links) -> (kind, content): file bytes, link target, or
        None for a directory. The root is "/"."""
        out: dict[str, tuple[str, Any]] = {"/": ("dir", None)}
        stack = [("", ROOT)]
        while stack:
            prefix, ino = stack.pop()
            for name, child in self._inodes[ino].entries.items():
                path = f"{prefix}/{name}"
                inode = self._inodes[child]
                if inode.kind == "dir":
                    out[path] = ("dir", None)
                    stack.append((path, child))
                else:
                    out[path] = (inode.kind, bytes(inode.data) if inode.kind == "file"
                                 else inode.target)
        return out

    def tables(self, chunk_size: int = 65536) -> tuple[
            dict[int, InodeRecord], dict[tuple[int, str], int], dict[tuple[int, int], bytes]]:
        """The namespace as a replicated file system stores it: (inodes, dirents, chunks)."""
        inodes = {ino: InodeRecord(inode.kind, inode.nlink, len(inode.data),
                                   inode.parent if inode.kind == "dir" else None)
                  for ino, inode in self._inodes.items()}
        dirents = {(ino, name): child for ino, inode in self._inodes.items()
                   for name, child in inode.entries.items()}
        chunks = {(ino, index // chunk_size): bytes(inode.data[index:index + chunk_size])
                  for ino, inode in self._inodes.items() if inode.kind == "file"
                  for index in range(0, len(inode.data), chunk_size)}
        return inodes, dirents, chunks


# -- the tree checker --------------------------------------------------------------------------


@dataclass(frozen=True)
class InodeRecord:
    kind: str                 # "dir", "file" or "symlink"
    nlink: int
    size: int = 0
    parent: int | None = None  # a directory's stored parent inode, when the store keeps one


@dataclass(frozen=True)
class NamespaceViolation:
    kind: str
    message: str
    inodes: tuple[int, ...] = ()
    dirents: tuple[tuple[int, str, int], ...] = ()

    def __str__(self) -> str:
        return f"{self.kind}: {self.message} (inodes {self.inodes}, entries {self.dirents})"


@dataclass
class NamespaceCheckResult:
    valid: bool
    violations: list[NamespaceViolation] = field(default_factory=list)

    def kinds(self) -> set[str]:
        return {violation.kind for violation in self.violations}

    def __bool__(self) -> bool:
        return self.valid


def _record(value: InodeRecord | Mapping[str, Any]) -> InodeRecord:
    if isinstance(value, InodeRecord):
        return value
    return InodeRecord(value["kind"], value["nlink"], value.get("size", 0), value.get("parent"))


def check_namespace_tree(
    inodes: Mapping[int, InodeRecord | Mapping[str, Any]],
    dirents: Mapping[tuple[int, str], int] | Iterable[tuple[int, str, int]],
    chunks: Iterable[tuple[int, int]] = (),
    root: int = ROOT,
    *,
    chunk_size: int | None = None,
) -> NamespaceCheckResult:
    """Walk the tables from root; report every structural rule broken (module docstring)."""
    records = {ino: _record(value) for ino, value in inodes.items()}
    entries: list[tuple[int, str, int]] = (
        [(parent, name, child) for (parent, name), child in dirents.items()]
        if isinstance(dirents, Mapping) else [(p, n, c) for p, n, c in dirents])
    result = NamespaceCheckResult(valid=True)

    def violate(kind: str, message: str, inos: Iterable[int] = (),
                ents: Iterable[tuple[int, str, int]] = ()) -> None:
        result.valid = False
        result.violations.append(NamespaceViolation(kind, message, tuple(inos), tuple(ents)))

    if root not in records or records[root].kind != "dir":
        violate("bad-root", f"root inode {root} is missing or not a directory", [root])
    incoming: dict[int, list[tuple[int, str, int]]] = {}
    children: dict[int, list[int]] = {}
    for entry in entries:
        parent, name, child = entry
        if parent not in records or records[parent].kind != "dir":
            violate("dirent-in-non-dir", f"entry {name!r} under inode {parent}, which is "
                    + ("missing" if parent not in records else "not a directory"),
                    [parent], [entry])
            continue
        if child not in records:
            violate("dangling-dirent", f"entry {name!r} names inode {child}, which does not "
                    "exist", [child], [entry])
            continue
        if child == root:
            violate("root-linked", f"entry {name!r} under inode {parent} names the root",
                    [parent], [entry])
            continue
        incoming.setdefault(child, []).append(entry)
        children.setdefault(parent, []).append(child)

    reached: set[int] = set()
    if root in records:
        reached.add(root)
        frontier = [root]
        while frontier:
            ino = frontier.pop()
            for child in children.get(ino, []):
                if child not in reached:
                    reached.add(child)
                    if records[child].kind == "dir":
                        frontier.append(child)

    cycles_seen: set[frozenset[int]] = set()
    for ino, record in sorted(records.items()):
        links = incoming.get(ino, [])
        if record.kind == "dir" and len(links) > 1:
            violate("directory-linked-twice", f"directory {ino} has {len(links)} entries",
                    [ino], links)
        if ino != root and ino not in reached:
            if not links:
                violate("orphan-inode", f"inode {ino} ({record.kind}) has no entry", [ino])
            else:
                violate("unreachable", f"inode {ino} is not reachable from the root", [ino],
                        links)
                if record.kind == "dir":
                    cycle = _cycle_through(ino, incoming)
                    if cycle and frozenset(cycle) not in cycles_seen:
                        cycles_seen.add(frozenset(cycle))
                        violate("cycle", "directories " + " -> ".join(map(str, cycle))
                                + " are each other's ancestors, detached from the root", cycle,
                                [incoming[member][0] for member in cycle])
        if record.kind == "dir":
            want = 2 + sum(1 for child in children.get(ino, []) if records[child].kind == "dir")
        else:
            want = len(links)
        if record.nlink != want:
            violate("wrong-nlink", f"inode {ino} ({record.kind}) has nlink {record.nlink}, "
                    f"its entries give {want}", [ino], links)
        if (record.kind == "dir" and record.parent is not None and ino != root and links
                and links[0][0] != record.parent):
            violate("parent-mismatch", f"directory {ino} stores parent {record.parent}, its "
                    f"entry is under {links[0][0]}", [ino], links)

    for ino, index in chunks:
        owner = records.get(ino)
        if owner is None or owner.kind != "file":
            violate("orphan-chunk", f"chunk {index} of inode {ino}, which is "
                    + ("missing" if owner is None else f"a {owner.kind}"), [ino])
        elif chunk_size is not None and index * chunk_size >= owner.size:
            violate("chunk-beyond-size", f"chunk {index} of inode {ino} starts at "
                    f"{index * chunk_size}, past its size {owner.size}", [ino])
    return result


def _cycle_through(start: int, incoming: Mapping[int, list[tuple[int, str, int]]]) -> list[int]:
    """Follow parent entries up from start; the loop found, if the walk meets itself."""
    order: list[int] = []
    position: dict[int, int] = {}
    ino: int | None = start
    while ino is not None and ino not in position:
        position[ino] = len(order)
        order.append(ino)
        links = incoming.get(ino)
        ino = links[0][0] if links else None
    return [] if ino is None else order[position[ino]:]


def check_acknowledged_effects(
    model_after_acks: PosixModel | Mapping[str, tuple[str, Any]],
    observed: PosixModel | Mapping[str, tuple[str, Any]],
    *,
    uncertain: Iterable[str] = (),
) -> NamespaceCheckResult:
    """Every acknowledged operation's effect is present, and nothing else changed.

    model_after_acks: a PosixModel that applied the acknowledged operations in their commit
    order (or its snapshot()); observed: the namespace read back after the run, in the same
    shape. Paths at or under an entry of uncertain (touched by an operation whose outcome is
    unknown: a timeout, a crash of its coordinator) are skipped on both sides.
    """
    expected = model_after_acks.snapshot() if isinstance(model_after_acks, PosixModel) \
        else dict(model_after_acks)
    actual = observed.snapshot() if isinstance(observed, PosixModel) else dict(observed)
    skipped = [path.rstrip("/") for path in uncertain]

    def certain(path: str) -> bool:
        return not any(path == prefix or path.startswith(prefix + "/") for prefix in skipped)

    result = NamespaceCheckResult(valid=True)

    def violate(kind: str, message: str) -> None:
        result.valid = False
        result.violations.append(NamespaceViolation(kind, message))

    for path in sorted(expected):
        if not certain(path):
            continue
        if path not in actual:
            violate("missing-effect", f"{path} ({expected[path][0]}) is acknowledged but absent")
        elif actual[path] != expected[path]:
            violate("wrong-content", f"{path}: expected {expected[path]!r}, "
                    f"observed {actual[path]!r}")
    for path in sorted(set(actual) - set(expected)):
        if certain(path):
            violate("unexpected-entry", f"{path} ({actual[path][0]}) exists, no acknowledged "
                    "operation made it")
    return result

"""Checkers over a file system's stored keys (engine.fs.layout), for any backend that can
list its committed (key, value) pairs.

check_stored_namespace runs engine.testing.namespace.check_namespace_tree on the decoded
tables (a tree rooted at /, every inode reachable exactly once, link counts right, no orphan
inodes or chunks), and adds the layout's own rules: a parent pointer or link count key only
for an existing directory, and every chunk exactly as long as the file's size makes it.
stored_snapshot reads the namespace back in PosixModel.snapshot()'s shape, for comparing
with the model.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from engine.fs.layout import (
    CHUNK_SIZE,
    DEFAULT_PREFIX,
    ROOT,
    InodeAttrs,
    Keys,
    decode_dirent,
    decode_tables,
    decode_u64,
)
from engine.testing.namespace import (
    NamespaceCheckResult,
    NamespaceViolation,
    check_namespace_tree,
)

__all__ = ["check_stored_namespace", "stored_snapshot"]


def check_stored_namespace(items: Iterable[tuple[bytes, bytes]], *,
                           prefix: bytes = DEFAULT_PREFIX,
                           chunk_size: int = CHUNK_SIZE) -> NamespaceCheckResult:
    rows = list(items)
    inodes, dirents, chunks = decode_tables(rows, prefix)
    result = check_namespace_tree(inodes, dirents, chunks, chunk_size=chunk_size)
    keys = Keys(prefix)

    def violate(kind: str, message: str, ino: int) -> None:
        result.valid = False
        result.violations.append(NamespaceViolation(kind, message, (ino,)))

    for key, value in rows:
        for key_prefix, what in ((keys.parent_prefix, "parent pointer"),
                                 (keys.nlink_prefix, "link count")):
            if key.startswith(key_prefix):
                ino = decode_u64(key[len(key_prefix):])
                if ino not in inodes or inodes[ino]["kind"] != "dir":
                    violate("orphan-directory-key", f"{what} of inode {ino}, not a directory",
                            ino)
        if key.startswith(keys.chunk_prefix):
            rest = key[len(keys.chunk_prefix):]
            ino, index = decode_u64(rest), int.from_bytes(rest[8:12], "big")
            record = inodes.get(ino)
            if record is not None and record["kind"] == "file":
                size = record["size"]
                assert isinstance(size, int)
                want = min(chunk_size, size - index * chunk_size)
                if len(value) != want:
                    violate("wrong-chunk-length", f"chunk {index} of inode {ino} holds "
                            f"{len(value)} bytes, its size gives {want}", ino)
    return result


def stored_snapshot(items: Iterable[tuple[bytes, bytes]], *, prefix: bytes = DEFAULT_PREFIX,
                    chunk_size: int = CHUNK_SIZE) -> dict[str, tuple[str, Any]]:
    """Every path (links not followed) -> (kind, content): file bytes, link target, or None
    for a directory; the root is "/". Assumes a valid tree (check_stored_namespace)."""
    del chunk_size   # chunks are joined in index order, whatever their size
    keys = Keys(prefix)
    data = dict(items)
    attrs: dict[int, InodeAttrs] = {}
    entries: dict[int, list[tuple[str, int]]] = {}
    chunks: dict[int, list[tuple[int, bytes]]] = {}
    for key, value in data.items():
        if key.startswith(keys.inode_prefix):
            attrs[decode_u64(key[len(keys.inode_prefix):])] = InodeAttrs.decode(value)
        elif key.startswith(keys.dirent_prefix):
            rest = key[len(keys.dirent_prefix):]
            entries.setdefault(decode_u64(rest), []).append(
                (rest[8:].decode(), decode_dirent(value)[0]))
        elif key.startswith(keys.chunk_prefix):
            rest = key[len(keys.chunk_prefix):]
            chunks.setdefault(decode_u64(rest), []).append(
                (int.from_bytes(rest[8:12], "big"), value))
    out: dict[str, tuple[str, Any]] = {"/": ("dir", None)}
    stack = [("", ROOT)]
    while stack:
        path_prefix, ino = stack.pop()
        for name, child in entries.get(ino, []):
            path = f"{path_prefix}/{name}"
            record = attrs[child]
            if record.kind == "dir":
                out[path] = ("dir", None)
                stack.append((path, child))
            elif record.kind == "file":
                out[path] = ("file", b"".join(piece for _, piece in sorted(chunks.get(child,
                                                                                     []))))
            else:
                out[path] = ("symlink", record.target)
    return out

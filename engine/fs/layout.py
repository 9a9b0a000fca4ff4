"""The key layout of the file-system namespace in an ordered key space, and its limits.

Every key starts with the file system's prefix P (default b"fs/"); integers are big-endian so
keys sort in numeric order; the engine's KV orders keys bytewise.

    P "i" ino:u64                -> inode attributes (InodeAttrs.encode)
    P "p" ino:u64                -> a directory's parent inode (u64); the root names itself
    P "n" ino:u64                -> a directory's link count (u32), absent while it is 2
    P "d" parent:u64 name:utf-8  -> the entry's inode (u64) and kind (1 byte)
    P "c" ino:u64 index:u32      -> bytes [index * chunk_size, (index + 1) * chunk_size)

Directory entries of one directory are contiguous, ordered by the UTF-8 bytes of the name
(which is code point order), so listdir is one range scan from P "d" parent. A directory's
parent pointer is a key of its own, apart from its attributes: the ancestor walk of rename
reads only parent pointers, which change only when a directory moves, so it does not conflict
with the nlink updates of mkdir and rmdir in the directories it passes through. For the same
reason a directory's link count (2 + its subdirectories) is a key of its own: mkdir and
rmdir write it, while every path lookup through the directory reads only its attributes (the
permission bits), which change only on chmod.

The root (inode 1) exists implicitly: until an operation changes its attributes, its key is
absent and it reads as an empty directory, mode 0o755.
"""

from __future__ import annotations

import stat as stat_module
import struct
from collections.abc import Iterable
from dataclasses import dataclass, replace

from engine.errors import DecodeError
from engine.txn.hlc import ENCODED_BYTES, ZERO, Timestamp

__all__ = [
    "CHUNK_SIZE", "DEFAULT_PREFIX", "InodeAttrs", "Keys", "MAX_FILE_SIZE", "NAME_MAX", "ROOT",
    "decode_tables",
]

ROOT = 1
DEFAULT_PREFIX = b"fs/"
# File contents are stored in chunks of CHUNK_SIZE bytes, one key each (JuiceFS and 3FS split
# files the same way, with larger chunks over a separate block store). Every FileSystem over
# one key space must use the same chunk size.
CHUNK_SIZE = 64 * 1024
# The largest file: write_file and append write the whole change in one transaction, and a
# transaction's writes travel in one replicated entry, which Limits.max_entry_bytes (16 MiB
# by default) bounds; 8 MiB leaves room for the keys and the rest of the transaction.
MAX_FILE_SIZE = 8 * 1024 * 1024
# The longest name, in UTF-8 bytes (Linux NAME_MAX).
NAME_MAX = 255

KIND_CODES = {"dir": b"d", "file": b"f", "symlink": b"l"}
CODE_KINDS = {code: kind for kind, code in KIND_CODES.items()}
TYPE_BITS = {"dir": stat_module.S_IFDIR, "file": stat_module.S_IFREG,
             "symlink": stat_module.S_IFLNK}
_ATTRS = struct.Struct(">cIIQ")
_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")


@dataclass(frozen=True)
class InodeAttrs:
    """An inode's attributes; a symbolic link's target is kept with them."""

    kind: str
    mode: int                  # permission bits (no type bits)
    nlink: int                 # a file's or link's; a directory's is under P "n" (above)
    size: int = 0
    mtime: Timestamp = ZERO    # the writer's HLC timestamp
    target: str = ""

    def encode(self) -> bytes:
        return (_ATTRS.pack(KIND_CODES[self.kind], self.mode, self.nlink, self.size)
                + self.mtime.encode() + self.target.encode())

    @classmethod
    def decode(cls, data: bytes) -> InodeAttrs:
        head = _ATTRS.size + ENCODED_BYTES
        if len(data) < head or data[:1] not in CODE_KINDS:
            raise DecodeError(f"not an inode record: {data[:head]!r}")
        code, mode, nlink, size = _ATTRS.unpack_from(data)
        return cls(CODE_KINDS[code], mode, nlink, size,
                   Timestamp.decode(data[_ATTRS.size:head]), data[head:].decode())

    def with_(self, **changes: object) -> InodeAttrs:
        return replace(self, **changes)   # type: ignore[arg-type]


ROOT_ATTRS = InodeAttrs("dir", 0o755, 2)


class Keys:
    """The keys of one file system (module docstring)."""

    def __init__(self, prefix: bytes = DEFAULT_PREFIX) -> None:
        self.prefix = prefix
        self.inode_prefix = prefix + b"i"
        self.parent_prefix = prefix + b"p"
        self.dirent_prefix = prefix + b"d"
        self.chunk_prefix = prefix + b"c"
        self.nlink_prefix = prefix + b"n"

    def inode(self, ino: int) -> bytes:
        return self.inode_prefix + _U64.pack(ino)

    def parent(self, ino: int) -> bytes:
        return self.parent_prefix + _U64.pack(ino)

    def nlink(self, ino: int) -> bytes:
        return self.nlink_prefix + _U64.pack(ino)

    def dirents(self, parent: int) -> bytes:
        return self.dirent_prefix + _U64.pack(parent)

    def dirent(self, parent: int, name: str) -> bytes:
        return self.dirents(parent) + name.encode()

    def chunk(self, ino: int, index: int) -> bytes:
        return self.chunk_prefix + _U64.pack(ino) + _U32.pack(index)

    @staticmethod
    def end_of(prefix: bytes) -> bytes:
        """The first key after every key starting with prefix (prefix is never all 0xff)."""
        stripped = prefix.rstrip(b"\xff")
        return stripped[:-1] + bytes([stripped[-1] + 1])


def encode_u64(value: int) -> bytes:
    return _U64.pack(value)


def encode_u32(value: int) -> bytes:
    return _U32.pack(value)


def decode_u32(data: bytes) -> int:
    return int(_U32.unpack(data)[0])


def decode_u64(data: bytes) -> int:
    return int(_U64.unpack_from(data)[0])


def encode_dirent(ino: int, kind: str) -> bytes:
    return _U64.pack(ino) + KIND_CODES[kind]


def decode_dirent(data: bytes) -> tuple[int, str]:
    return decode_u64(data), CODE_KINDS[data[8:9]]


def decode_tables(items: Iterable[tuple[bytes, bytes]], prefix: bytes = DEFAULT_PREFIX) -> tuple[
        dict[int, dict[str, object]], dict[tuple[int, str], int], list[tuple[int, int]]]:
    """The stored keys as engine.testing.namespace.check_namespace_tree's tables: (inodes,
    dirents, chunks). Inode records carry kind, nlink, size and a directory's stored parent
    (None when its parent key is missing, which the checker then reports as a mismatch)."""
    keys = Keys(prefix)
    attrs: dict[int, InodeAttrs] = {}
    parents: dict[int, int] = {}
    nlinks: dict[int, int] = {}
    dirents: dict[tuple[int, str], int] = {}
    chunks: list[tuple[int, int]] = []
    for key, value in items:
        if key.startswith(keys.inode_prefix):
            attrs[decode_u64(key[len(keys.inode_prefix):])] = InodeAttrs.decode(value)
        elif key.startswith(keys.parent_prefix):
            parents[decode_u64(key[len(keys.parent_prefix):])] = decode_u64(value)
        elif key.startswith(keys.nlink_prefix):
            nlinks[decode_u64(key[len(keys.nlink_prefix):])] = int(_U32.unpack(value)[0])
        elif key.startswith(keys.dirent_prefix):
            rest = key[len(keys.dirent_prefix):]
            dirents[(decode_u64(rest), rest[8:].decode())] = decode_dirent(value)[0]
        elif key.startswith(keys.chunk_prefix):
            rest = key[len(keys.chunk_prefix):]
            chunks.append((decode_u64(rest), int(_U32.unpack_from(rest, 8)[0])))
    attrs.setdefault(ROOT, ROOT_ATTRS)
    parents.setdefault(ROOT, ROOT)
    inodes: dict[int, dict[str, object]] = {
        ino: {"kind": a.kind, "nlink": nlinks.get(ino, 2) if a.kind == "dir" else a.nlink,
              "size": a.size,
              "parent": parents.get(ino, -1) if a.kind == "dir" and ino != ROOT else None}
        for ino, a in attrs.items()}
    return inodes, dirents, chunks

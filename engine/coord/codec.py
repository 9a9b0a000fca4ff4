"""Snapshot framing shared by the coordination tables (sans-IO, deterministic).

A table's snapshot is one frame:

    magic (4 bytes) | version (u16) | body length (u32) | body | CRC-32 of everything before (u32)

The body is written with `Writer` (fixed-width little-endian integers, length-prefixed byte
strings) in a canonical order (every map sorted by its key), so two replicas with equal state
produce equal bytes. `Reader` refuses anything it cannot accept with a DecodeError: bad magic,
unknown version, a length or CRC that does not match, a truncated field, a count larger than
the bytes left could hold, trailing bytes. Each table then checks its own invariants (sorted,
no duplicates, values in range) and raises DecodeError before touching its state, so a
restore either replaces the whole state or leaves it unchanged.
"""

from __future__ import annotations

import struct
import zlib

from engine.errors import DecodeError

__all__ = ["Reader", "Writer", "frame", "unframe"]

_HEAD = struct.Struct("<4sHI")   # magic, version, body length
_CRC = struct.Struct("<I")
_U8 = struct.Struct("<B")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")


class Writer:
    """Accumulates a canonical body."""

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def u8(self, value: int) -> None:
        self._parts.append(_U8.pack(value))

    def u32(self, value: int) -> None:
        self._parts.append(_U32.pack(value))

    def u64(self, value: int) -> None:
        self._parts.append(_U64.pack(value))

    def i64(self, value: int) -> None:
        self._parts.append(_I64.pack(value))

    def blob(self, value: bytes) -> None:
        self._parts.append(_U32.pack(len(value)))
        self._parts.append(value)

    def optional_blob(self, value: bytes | None) -> None:
        if value is None:
            self.u8(0)
        else:
            self.u8(1)
            self.blob(value)

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


class Reader:
    """Reads a body written by Writer; every shortfall is a DecodeError naming the field."""

    __slots__ = ("_data", "_offset", "_what")

    def __init__(self, data: bytes, what: str) -> None:
        self._data = data
        self._offset = 0
        self._what = what

    def _take(self, size: int, field: str) -> bytes:
        end = self._offset + size
        if end > len(self._data):
            raise DecodeError(
                f"{self._what} snapshot truncated in {field} at offset {self._offset}")
        out = self._data[self._offset:end]
        self._offset = end
        return out

    def u8(self, field: str) -> int:
        return int(_U8.unpack(self._take(1, field))[0])

    def u32(self, field: str) -> int:
        return int(_U32.unpack(self._take(4, field))[0])

    def u64(self, field: str) -> int:
        return int(_U64.unpack(self._take(8, field))[0])

    def i64(self, field: str) -> int:
        return int(_I64.unpack(self._take(8, field))[0])

    def blob(self, field: str) -> bytes:
        return self._take(self.u32(field), field)

    def optional_blob(self, field: str) -> bytes | None:
        flag = self.u8(field)
        if flag == 0:
            return None
        if flag != 1:
            raise DecodeError(f"{self._what} snapshot: {field} presence flag {flag}")
        return self.blob(field)

    def count(self, field: str, min_row_bytes: int) -> int:
        """A row count, refused when the bytes left cannot hold that many rows (a corrupt
        count must not make the decoder loop or allocate)."""
        value = self.u32(field)
        if value * min_row_bytes > len(self._data) - self._offset:
            raise DecodeError(f"{self._what} snapshot: {field} {value} exceeds its size")
        return value

    def end(self) -> None:
        if self._offset != len(self._data):
            raise DecodeError(
                f"{len(self._data) - self._offset} trailing bytes in {self._what} snapshot")


def frame(magic: bytes, version: int, body: bytes) -> bytes:
    head = _HEAD.pack(magic, version, len(body)) + body
    return head + _CRC.pack(zlib.crc32(head))


def unframe(data: bytes, magic: bytes, version: int, what: str) -> Reader:
    """Check the frame of `data` and return a Reader over its body."""
    data = bytes(data)
    if len(data) < _HEAD.size + _CRC.size:
        raise DecodeError(f"{what} snapshot of {len(data)} bytes is shorter than its frame")
    got_magic, got_version, length = _HEAD.unpack_from(data, 0)
    if got_magic != magic:
        raise DecodeError(f"{what} snapshot has bad magic {got_magic!r}")
    if got_version != version:
        raise DecodeError(f"{what} snapshot version {got_version}, this build reads {version}")
    if _HEAD.size + length + _CRC.size != len(data):
        raise DecodeError(
            f"{what} snapshot body length {length} does not match its {len(data)} bytes")
    (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if crc != zlib.crc32(data[:len(data) - _CRC.size]):
        raise DecodeError(f"{what} snapshot fails its CRC-32")
    return Reader(data[_HEAD.size:len(data) - _CRC.size], what)

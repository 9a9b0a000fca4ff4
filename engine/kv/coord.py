"""The coordination vocabulary of the KV state machine: commands, queries and their answers
for leases, locks, fenced and leased puts, watches and elections (docs/coordination.md).

These share the KV command head (engine.kv.commands: u8 version | u8 op | u8 flags |
[u64 client_id | u64 seq] if flags & SESSION) with op codes of their own, so a coordination
command goes through the log, the session cache and retries exactly as a PUT does:

    COORD    head | an engine.coord.commands command (GRANT, KEEPALIVE, ACQUIRE, ...)
    PUT_EX   head | u32 key_len | key | u32 value_len | value | u64 lease_id (0: none)
             | u64 fence_token (0: no fence) | u32 fence_name_len | fence_name
Queries (ReadIndex reads, never in a log): u8 version | u8 op = COORD_QUERY | u8 kind | body

    LOCK      u64 lease_id | u32 name_len | name   -> JSON {token, position, holders}
    WATCH     u64 start_revision | u8 prefix | u32 max_events | u32 key_len | key
              -> u64 next_revision | u32 count | count x (u8 type | blob key
              | optional blob value | u64 revision)
    LEASES    (empty)                               -> JSON [{id, ttl_ms, remaining_ms, keys}]
    LEASE     u64 lease_id                          -> JSON {id, ...} or null
    ELECTION  u32 name_len | name                   -> JSON {lease_id, value, term} or null

Answers are KV results (engine.kv.commands.encode_result): OK with the payload as value, or
REFUSED with a JSON error payload ({"error": class name, "message", fields}) that
`error_from_payload` turns back into the typed engine error (FencingTokenStale,
LeaseNotFound, Compacted, ...). JSON payloads are written with sorted keys, so every replica
answers a command with the same bytes (the session cache keeps them).

A watch page ends at a revision boundary: it holds every event of each revision it holds,
so `next_revision` is a cursor a client resumes from without a gap or a duplicate, on any
node and after any leader change (the events are replicated state, the same everywhere).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

from engine import errors
from engine.coord.codec import Reader, Writer
from engine.errors import DecodeError

__all__ = [
    "OP_COORD", "OP_COORD_QUERY", "OP_PUT_EX", "Q_ELECTION", "Q_LEASE", "Q_LEASES", "Q_LOCK",
    "Q_WATCH", "PutEx", "WatchPage", "decode_put_ex", "decode_watch_page", "encode_coord",
    "encode_coord_query", "encode_put_ex", "encode_watch_page", "error_from_payload",
    "error_payload", "json_bytes",
]

OP_COORD = 32
OP_PUT_EX = 33
OP_COORD_QUERY = 34

Q_LOCK = 1
Q_WATCH = 2
Q_LEASES = 3
Q_LEASE = 4
Q_ELECTION = 5

_VERSION = 1
_FLAG_SESSION = 0x01
_HEAD = struct.Struct("<BBB")
_SESSION = struct.Struct("<QQ")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def _head(op: int, client_id: int | None, seq: int | None) -> bytes:
    if client_id is None:
        return _HEAD.pack(_VERSION, op, 0)
    return _HEAD.pack(_VERSION, op, _FLAG_SESSION) + _SESSION.pack(client_id, seq or 0)


def split_head(data: bytes) -> tuple[int, int | None, int | None, int]:
    """(op, client_id, seq, body offset) of a coordination command; DecodeError if short."""
    if len(data) < _HEAD.size:
        raise DecodeError("coordination command shorter than its head")
    version, op, flags = _HEAD.unpack_from(data, 0)
    if version != _VERSION or flags & ~_FLAG_SESSION:
        raise DecodeError(f"coordination command version {version} flags {flags:#x}")
    if not flags & _FLAG_SESSION:
        return op, None, None, _HEAD.size
    if len(data) < _HEAD.size + _SESSION.size:
        raise DecodeError("coordination command truncated in its session")
    client_id, seq = _SESSION.unpack_from(data, _HEAD.size)
    return op, client_id, seq, _HEAD.size + _SESSION.size


def encode_coord(command: bytes, *, client_id: int | None = None,
                 seq: int | None = None) -> bytes:
    """A COORD command carrying `command` (engine.coord.commands.encode_command)."""
    return _head(OP_COORD, client_id, seq) + command


@dataclass(frozen=True)
class PutEx:
    key: bytes
    value: bytes
    lease_id: int = 0
    fence_name: bytes = b""
    fence_token: int = 0


def encode_put_ex(key: bytes, value: bytes, *, lease_id: int = 0, fence_name: bytes = b"",
                  fence_token: int = 0, client_id: int | None = None,
                  seq: int | None = None) -> bytes:
    return b"".join((_head(OP_PUT_EX, client_id, seq), _U32.pack(len(key)), key,
                     _U32.pack(len(value)), value, _U64.pack(lease_id),
                     _U64.pack(fence_token), _U32.pack(len(fence_name)), fence_name))


def decode_put_ex(data: bytes, offset: int) -> PutEx:
    body = Reader(data[offset:], "leased or fenced put")
    key, value = body.blob("key"), body.blob("value")
    lease_id, token, name = body.u64("lease id"), body.u64("fence token"), body.blob("name")
    body.end()
    return PutEx(key, value, lease_id, name, token)


def encode_coord_query(kind: int, *, lease_id: int = 0, name: bytes = b"",
                       start_revision: int = 0, prefix: bool = False,
                       max_events: int = 0) -> bytes:
    head = _HEAD.pack(_VERSION, OP_COORD_QUERY, kind)
    if kind == Q_LOCK:
        return head + _U64.pack(lease_id) + _U32.pack(len(name)) + name
    if kind == Q_WATCH:
        return (head + _U64.pack(start_revision) + bytes((int(prefix),))
                + _U32.pack(max_events) + _U32.pack(len(name)) + name)
    if kind == Q_LEASE:
        return head + _U64.pack(lease_id)
    if kind == Q_ELECTION:
        return head + _U32.pack(len(name)) + name
    return head


def json_bytes(payload: Any) -> bytes:
    """Canonical JSON (sorted keys, no spaces): the same bytes on every replica."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


# ---------------------------------------------------------------------- errors


def error_payload(error: errors.EngineError) -> dict[str, Any]:
    out: dict[str, Any] = {"error": type(error).__name__, "message": str(error)}
    if isinstance(error, errors.FencingTokenStale):
        out.update(lock=error.lock.hex(), token=error.token, newest=error.newest_token,
                   reason=error.reason)
    elif isinstance(error, errors.LeaseNotFound):
        out["lease_id"] = error.lease_id
    elif isinstance(error, errors.Compacted):
        out.update(requested=error.requested_revision, oldest=error.oldest_revision)
    return out


_PLAIN_ERRORS: dict[str, type[errors.EngineError]] = {
    "LockKindMismatch": errors.LockKindMismatch, "NotElectionLeader": errors.NotElectionLeader,
    "Overloaded": errors.Overloaded, "Rejected": errors.Rejected,
}


def error_from_payload(raw: bytes | None) -> errors.EngineError:
    """The typed error a REFUSED answer carries (Rejected for one this build does not know)."""
    try:
        body = json.loads(raw or b"{}")
        name = str(body.get("error", ""))
        if name == "FencingTokenStale":
            return errors.FencingTokenStale(bytes.fromhex(body["lock"]), int(body["token"]),
                                            int(body["newest"]), str(body["reason"]))
        if name == "LeaseNotFound":
            return errors.LeaseNotFound(int(body["lease_id"]))
        if name == "Compacted":
            return errors.Compacted(int(body["requested"]), int(body["oldest"]))
        return _PLAIN_ERRORS.get(name, errors.Rejected)(str(body.get("message", name)))
    except (ValueError, KeyError, TypeError, AttributeError):
        return errors.Rejected(f"the cluster refused a coordination request: {raw!r}")


# ---------------------------------------------------------------------- watch pages


@dataclass(frozen=True)
class WatchPage:
    """Events in revision order and the revision to resume from."""

    events: list[tuple[str, bytes, bytes | None, int]]
    next_revision: int


_KINDS = ("put", "delete")


def encode_watch_page(events: list[Any], next_revision: int) -> bytes:
    out = Writer()
    out.u64(next_revision)
    out.u32(len(events))
    for event in events:
        out.u8(_KINDS.index(event.type))
        out.blob(event.key)
        out.optional_blob(event.value)
        out.u64(event.revision)
    return out.getvalue()


def decode_watch_page(data: bytes) -> WatchPage:
    body = Reader(data, "watch page")
    next_revision = body.u64("next revision")
    count = body.count("event count", 14)
    events = []
    for _ in range(count):
        kind = body.u8("type")
        if kind > 1:
            raise DecodeError(f"watch page: event type {kind}")
        key, value, revision = body.blob("key"), body.optional_blob("value"), body.u64("rev")
        events.append((_KINDS[kind], key, value, revision))
    body.end()
    return WatchPage(events, next_revision)

"""The coordination commands as they go through the log, and one apply entry point.

Encoding (versioned, little-endian, fixed-width integers, explicit lengths; a decoder
refuses short or trailing bytes, unknown versions and ops, out-of-range fields with a
DecodeError, so a replica answers a malformed command the same way everywhere):

    u8 version (=1) | u8 op | fields
    GRANT        u64 ttl_ms
    KEEPALIVE    u64 lease_id
    CHECKPOINT   u64 lease_id | u64 generation | u64 remaining_ms
    REVOKE       u64 lease_id
    EXPIRE       u64 lease_id | u64 generation
    ACQUIRE      u64 lease_id | u8 shared | u32 capacity | u32 name_len | name
    RELEASE      u64 lease_id | u32 name_len | name
    CAMPAIGN     u64 lease_id | u32 name_len | name | u32 value_len | value
    PROCLAIM     u64 lease_id | u32 name_len | name | u32 value_len | value
    RESIGN       u64 lease_id | u32 name_len | name

`apply(state, command)` runs one decoded command on a CoordState and returns an Effect: what
the caller (the KV store) must do next - answer the proposer, delete the keys of a lease that
ended, tell exactly the waiters granted, feed election observers. A refusal is an Effect with
the typed error (the same on every replica), never an exception out of apply.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum

from engine.coord.election import LeaderChange
from engine.coord.lease import Lease
from engine.coord.locks import Grant
from engine.coord.state import CoordState, LeaseEnd
from engine.errors import DecodeError, EngineError, Rejected

__all__ = ["Command", "CoordOp", "Effect", "apply", "decode_command", "encode_command"]

VERSION = 1
MAX_NAME_BYTES = 4_096
_HEAD = struct.Struct("<BB")
_U8 = struct.Struct("<B")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class CoordOp(IntEnum):
    GRANT = 1
    KEEPALIVE = 2
    CHECKPOINT = 3
    REVOKE = 4
    EXPIRE = 5
    ACQUIRE = 6
    RELEASE = 7
    CAMPAIGN = 8
    PROCLAIM = 9
    RESIGN = 10


@dataclass(frozen=True)
class Command:
    """One coordination command; the fields an op does not use stay at their defaults."""

    op: CoordOp
    lease_id: int = 0
    ttl_ms: int = 0
    generation: int = 0
    remaining_ms: int = 0
    name: bytes = b""
    value: bytes = b""
    shared: bool = False
    capacity: int = 0


_LEASE_ONLY = (CoordOp.KEEPALIVE, CoordOp.REVOKE)
_NAMED = (CoordOp.ACQUIRE, CoordOp.RELEASE, CoordOp.CAMPAIGN, CoordOp.PROCLAIM,
          CoordOp.RESIGN)
_WITH_VALUE = (CoordOp.CAMPAIGN, CoordOp.PROCLAIM)


def encode_command(command: Command) -> bytes:
    op = command.op
    parts = [_HEAD.pack(VERSION, op)]
    if op == CoordOp.GRANT:
        parts.append(_U64.pack(command.ttl_ms))
    else:
        parts.append(_U64.pack(command.lease_id))
    if op == CoordOp.CHECKPOINT:
        parts += (_U64.pack(command.generation), _U64.pack(command.remaining_ms))
    elif op == CoordOp.EXPIRE:
        parts.append(_U64.pack(command.generation))
    elif op == CoordOp.ACQUIRE:
        parts += (_U8.pack(int(command.shared)), _U32.pack(command.capacity))
    if op in _NAMED:
        if len(command.name) > MAX_NAME_BYTES:
            raise ValueError(f"a lock or election name is at most {MAX_NAME_BYTES} bytes")
        parts += (_U32.pack(len(command.name)), command.name)
    if op in _WITH_VALUE:
        parts += (_U32.pack(len(command.value)), command.value)
    return b"".join(parts)


def decode_command(data: bytes) -> Command:
    data = bytes(data)
    offset = 0

    def take(size: int, what: str) -> bytes:
        nonlocal offset
        if offset + size > len(data):
            raise DecodeError(f"coordination command truncated in {what} at offset {offset}")
        out = data[offset:offset + size]
        offset += size
        return out

    version, raw_op = _HEAD.unpack(take(_HEAD.size, "header"))
    if version != VERSION:
        raise DecodeError(f"coordination command version {version}, this build reads {VERSION}")
    try:
        op = CoordOp(raw_op)
    except ValueError:
        raise DecodeError(f"unknown coordination op {raw_op}") from None
    fields: dict[str, object] = {}
    (first,) = _U64.unpack(take(8, "lease id"))
    fields["ttl_ms" if op == CoordOp.GRANT else "lease_id"] = first
    if op == CoordOp.CHECKPOINT:
        fields["generation"], = _U64.unpack(take(8, "generation"))
        fields["remaining_ms"], = _U64.unpack(take(8, "remaining"))
    elif op == CoordOp.EXPIRE:
        fields["generation"], = _U64.unpack(take(8, "generation"))
    elif op == CoordOp.ACQUIRE:
        (shared,) = _U8.unpack(take(1, "mode"))
        if shared > 1:
            raise DecodeError(f"coordination command: mode flag {shared}")
        fields["shared"] = bool(shared)
        fields["capacity"], = _U32.unpack(take(4, "capacity"))
    if op in _NAMED:
        (length,) = _U32.unpack(take(4, "name length"))
        if length > MAX_NAME_BYTES:
            raise DecodeError(f"coordination command: name of {length} bytes")
        fields["name"] = take(length, "name")
    if op in _WITH_VALUE:
        (length,) = _U32.unpack(take(4, "value length"))
        fields["value"] = take(length, "value")
    if offset != len(data):
        raise DecodeError(f"{len(data) - offset} trailing bytes after a coordination command")
    return Command(op, **fields)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Effect:
    """What applying one command did.

    error      the typed refusal (nothing changed), else None
    lease      the lease granted or kept alive
    granted    ACQUIRE: the proposer's grant if it holds the lock now; position otherwise
    grants     every lock grant the command caused (tell exactly these waiters)
    keys       keys to delete (a lease that ended), sorted
    changes    election leader changes, in order (feed the observers)
    applied    False for a command that changed nothing without being refused (an EXPIRE
               or CHECKPOINT overtaken by a renewal, a REVOKE of a lease already gone)
    """

    error: EngineError | None = None
    lease: Lease | None = None
    granted: Grant | None = None
    position: int = 0
    grants: tuple[Grant, ...] = ()
    keys: tuple[bytes, ...] = ()
    changes: tuple[LeaderChange, ...] = ()
    applied: bool = True
    ended: LeaseEnd | None = field(default=None, repr=False)


def _ended(end: LeaseEnd | None) -> Effect:
    if end is None:
        return Effect(applied=False)
    return Effect(lease=end.lease, grants=end.grants, keys=end.keys,
                  changes=end.leader_changes, ended=end)


def apply(state: CoordState, command: Command) -> Effect:
    """Apply one command; deterministic, and a refusal is returned, never raised."""
    op = command.op
    try:
        if op == CoordOp.GRANT:
            return Effect(lease=state.grant_lease(command.ttl_ms))
        if op == CoordOp.KEEPALIVE:
            return Effect(lease=state.keepalive(command.lease_id))
        if op == CoordOp.CHECKPOINT:
            return Effect(applied=state.checkpoint(command.lease_id, command.generation,
                                                   command.remaining_ms))
        if op == CoordOp.REVOKE:
            return _ended(state.revoke(command.lease_id))
        if op == CoordOp.EXPIRE:
            return _ended(state.expire(command.lease_id, command.generation))
        if op == CoordOp.ACQUIRE:
            result = state.acquire(command.name, command.lease_id, shared=command.shared,
                                   capacity=command.capacity)
            return Effect(granted=result.granted, position=result.position,
                          grants=(result.granted,) if result.new and result.granted else ())
        if op == CoordOp.RELEASE:
            return Effect(grants=tuple(state.release(command.name, command.lease_id)))
        if op == CoordOp.CAMPAIGN:
            return Effect(changes=tuple(state.campaign(command.name, command.lease_id,
                                                       command.value)))
        if op == CoordOp.PROCLAIM:
            return Effect(changes=tuple(state.elections.proclaim(
                command.name, command.lease_id, command.value)))
        return Effect(changes=tuple(state.elections.resign(command.name, command.lease_id)))
    except Rejected as refused:
        return Effect(error=refused, applied=False)

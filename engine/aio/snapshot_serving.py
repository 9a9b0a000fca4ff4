"""Online backups: a running leader serves a consistent snapshot in chunks (`engine snapshot
save FILE --members ...`, engine.Client.snapshot), etcdctl's `snapshot save` over UDP.

Why chunks. A client request and its answer are one datagram each: the client does not
reassemble fragmented frames, a reply may be at most Limits.max_reply_amplification times its
request unless the request opts into more (Message.commit, engine.aio.node_serving), and a
snapshot can be megabytes. So the client asks for one chunk at a time and every answer fits
one datagram under both the node's Limits.max_datagram_bytes and the request's reply budget.

The wire (AdminOp.SNAPSHOT_CHUNK on the ADMIN frame, authenticated like all traffic):

    request  context = JSON {"index": I, "term": T, "offset": O, "size": S}
             I = T = 0 (with O = 0) asks for a fresh snapshot ("begin"); otherwise the chunk
             at O of the held snapshot (I, T). S is the largest chunk the client takes.
    answer   OK:  context = CHUNK_HEADER (u64 index, u64 term, u64 total, u64 offset) + chunk.
                  An (index, term) other than the one asked for means the snapshot asked for
                  is gone (replaced, expired, another node): the client starts again.
             NOT_LEADER (begin on a non-leader; context = the leader's address),
             REJECTED (a malformed request: nothing else happens; counted in
             counters["snapshot_requests_refused"]), UNKNOWN (busy or no answer in time:
             ask again).

Which snapshot, and where. Only the leader begins one, after a ReadIndex round (Raft thesis
§6.4): it confirms leadership with a quorum and waits until this node applied the read index,
so the snapshot holds every write acknowledged before the request was sent (a follower's
applied state is consistent too, but can trail the cluster by any amount). It is taken fresh
from the state machine (snapshot_fork() when it has one: frozen on the loop, serialised off
it), not read from the newest snapshot file, which covers the log only up to the last
snapshot threshold and so misses recent acknowledged writes. A leader never installs a
snapshot from another node, so the state machine does not change under the fork except by
apply on this loop. The envelope is engine.replication.snapshot's version 1 (no membership), exactly
what the offline `snapshot save --data-dir` writes, so `snapshot restore` takes either.

Bounded memory: one held snapshot per node. A begin reuses the held one when it covers the
begin's read index; otherwise the held one is dropped before a new one is made, unless a
client is still fetching it (served within IDLE_TIMEOUT_S and not yet to its end): then the
begin is answered "busy" (UNKNOWN) and the client backs off, so two concurrent saves under a
steady write load do not replace each other's snapshot forever. The held snapshot is dropped
after IDLE_TIMEOUT_S without a request. At most MAX_PENDING_BEGINS begins wait at once;
beyond that, "busy". Chunk requests are served by whichever node holds the snapshot, leader or
not (the bytes stay a consistent snapshot).
"""

from __future__ import annotations

import asyncio
import json
import struct
import weakref
from typing import TYPE_CHECKING, Any

from engine import errors
from engine._core import codec
from engine.limits import Limits
from engine.messages import ClientStatus, Message, MessageType, enum_members
from engine.replication.snapshot import ENVELOPE_OVERHEAD, decode_snapshot, encode_snapshot
from engine.types import U64_MAX, Snapshot

if TYPE_CHECKING:
    from engine.aio.node import Node

_MT = enum_members(MessageType)
_STATUS = enum_members(ClientStatus)

CHUNK_HEADER = struct.Struct("<QQQQ")   # index, term, total envelope bytes, offset
# A held snapshot nobody asked for in this long is dropped (seconds).
IDLE_TIMEOUT_S = 30.0
# Begins waiting for their ReadIndex round or for the snapshot being made, per node.
MAX_PENDING_BEGINS = 8
# The largest number of ADMIN_RESPONSE header bytes besides the context: the fixed part and
# the u64 fields an answer sets (src, dst, seq, status).
_REPLY_FIXED_BYTES = codec.encoded_size(Message(
    _MT.ADMIN_RESPONSE, src=1, dst=1, seq=1, status=1, context=b""))


def encode_request(index: int, term: int, offset: int, size: int) -> bytes:
    """The context of a SNAPSHOT_CHUNK request (index = term = 0: begin)."""
    return json.dumps({"index": index, "term": term, "offset": offset, "size": size},
                      separators=(",", ":")).encode()


def decode_request(context: bytes) -> tuple[int, int, int, int]:
    """(index, term, offset, size) of a request; DecodeError for anything malformed."""
    try:
        spec = json.loads(context)
    except (ValueError, RecursionError) as exc:
        raise errors.DecodeError(f"snapshot request is not JSON: {exc}") from None
    if not isinstance(spec, dict):
        raise errors.DecodeError("snapshot request must be a JSON object")
    values = []
    for name in ("index", "term", "offset", "size"):
        value = spec.get(name)
        if type(value) is not int or not 0 <= value <= U64_MAX:
            raise errors.DecodeError(f"snapshot request: {name} must be an integer in "
                                     f"[0, 2**64), got {value!r}")
        values.append(value)
    index, term, offset, size = values
    if size == 0:
        raise errors.DecodeError("snapshot request: size must be positive")
    if (index == 0) != (term == 0) or (index == 0 and offset != 0):
        raise errors.DecodeError("snapshot request: a begin has index = term = offset = 0")
    return index, term, offset, size


def encode_reply(index: int, term: int, total: int, offset: int, chunk: bytes) -> bytes:
    return CHUNK_HEADER.pack(index, term, total, offset) + chunk


def decode_reply(context: bytes) -> tuple[int, int, int, int, bytes]:
    """(index, term, total, offset, chunk) of an OK answer; SnapshotCorrupt if malformed."""
    if len(context) < CHUNK_HEADER.size:
        raise errors.SnapshotCorrupt(f"snapshot chunk answer of {len(context)} bytes is "
                                     "shorter than its header")
    index, term, total, offset = CHUNK_HEADER.unpack_from(context)
    return index, term, total, offset, bytes(context[CHUNK_HEADER.size:])


def max_chunk_bytes(limits: Limits) -> int:
    """The largest chunk whose answer fits one datagram under `limits` (what a client asks
    for: it does not reassemble fragments)."""
    return min(limits.max_snapshot_chunk_bytes,
               limits.max_datagram_bytes - codec.FRAME_OVERHEAD - _REPLY_FIXED_BYTES
               - CHUNK_HEADER.size)


class SnapshotAssembly:
    """The client's side of one snapshot: chunks in order, then the verified envelope.

    Every error is SnapshotCorrupt (nothing is returned): a total outside
    [ENVELOPE_OVERHEAD, max_bytes], a chunk at another offset than the next one, an empty
    chunk before the end, bytes past the total, and an envelope that fails decode_snapshot
    (the BLAKE2b digest over header and data, engine.replication.snapshot)."""

    def __init__(self, index: int, term: int, total: int, max_bytes: int) -> None:
        if not ENVELOPE_OVERHEAD <= total <= max_bytes:
            raise errors.SnapshotCorrupt(
                f"snapshot at index {index} term {term} announces {total} bytes (accepted: "
                f"{ENVELOPE_OVERHEAD} to {max_bytes}, Limits.max_snapshot_bytes)")
        self.index = index
        self.term = term
        self.total = total
        self._buffer = bytearray()

    @property
    def received(self) -> int:
        return len(self._buffer)

    @property
    def complete(self) -> bool:
        return len(self._buffer) == self.total

    def add(self, offset: int, chunk: bytes) -> None:
        if offset != len(self._buffer):
            raise errors.SnapshotCorrupt(f"snapshot chunk at offset {offset}, expected "
                                         f"{len(self._buffer)}")
        if not chunk and not self.complete:
            raise errors.SnapshotCorrupt(f"empty snapshot chunk at offset {offset} of "
                                         f"{self.total}")
        if offset + len(chunk) > self.total:
            raise errors.SnapshotCorrupt(f"snapshot chunk at offset {offset} runs past the "
                                         f"envelope's {self.total} bytes")
        self._buffer += chunk

    def envelope(self) -> bytes:
        """The whole envelope, verified; SnapshotCorrupt if incomplete or damaged."""
        if not self.complete:
            raise errors.SnapshotCorrupt(f"snapshot incomplete: {len(self._buffer)} of "
                                         f"{self.total} bytes")
        envelope = bytes(self._buffer)
        try:
            snapshot = decode_snapshot(envelope)
        except errors.DecodeError as exc:
            raise errors.SnapshotCorrupt(f"snapshot fetched is damaged, nothing written: "
                                         f"{exc}") from None
        if (snapshot.index, snapshot.term) != (self.index, self.term):
            raise errors.SnapshotCorrupt(
                f"snapshot envelope holds index {snapshot.index} term {snapshot.term}, "
                f"its chunks announced index {self.index} term {self.term}")
        return envelope


class _Held:
    __slots__ = ("index", "term", "envelope", "last_used", "served_to_end")

    def __init__(self, index: int, term: int, envelope: bytes, now: float) -> None:
        self.index = index
        self.term = term
        self.envelope = envelope
        self.last_used = now
        self.served_to_end = False


class SnapshotServing:
    """One node's snapshot serving state (see the module docstring). Holds no reference to
    its node: every method gets it, so the per-node registry (_SERVING) can be weak."""

    def __init__(self) -> None:
        self.held: _Held | None = None
        self.idle_timeout_s = IDLE_TIMEOUT_S
        self._building: asyncio.Future[None] | None = None
        self._pending_begins = 0
        self._timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ requests

    def on_request(self, node: Node, message: Message, address: Any) -> None:
        """Answer one SNAPSHOT_CHUNK request; never raises (hostile input is refused)."""
        try:
            index, term, offset, size = decode_request(message.context)
        except errors.DecodeError as exc:
            self._refuse(node, message, address, str(exc))
            return
        if index == 0:
            self._begin(node, message, address, size)
        else:
            self._serve(node, message, address, index, term, offset, size)

    def _serve(self, node: Node, message: Message, address: Any, index: int, term: int,
               offset: int, size: int) -> None:
        held = self.held
        if held is None or (held.index, held.term) != (index, term):
            # Not (or no longer) here: the header names what is held (0, 0: nothing).
            current = (held.index, held.term, len(held.envelope)) if held else (0, 0, 0)
            self._reply(node, message, address, _STATUS.OK, encode_reply(*current, 0, b""))
            return
        total = len(held.envelope)
        if offset >= total:
            self._refuse(node, message, address,
                         f"offset {offset} is not inside the {total}-byte snapshot")
            return
        capacity = self._chunk_capacity(node, message, size)
        if capacity <= 0:
            self._refuse(node, message, address,
                         "the request allows no reply large enough for a chunk: set "
                         "Message.commit to the largest reply you accept")
            return
        chunk = held.envelope[offset:offset + capacity]
        assert node._loop is not None
        held.last_used = node._loop.time()
        if offset + len(chunk) == total:
            held.served_to_end = True
        _count(node, "snapshot_chunks_served")
        self._reply(node, message, address, _STATUS.OK,
                    encode_reply(held.index, held.term, total, offset, chunk))

    @staticmethod
    def _chunk_capacity(node: Node, request: Message, size: int) -> int:
        """The chunk bytes an answer to `request` may carry: what the client asked for,
        within one datagram (the client does not reassemble fragments), within
        Limits.max_snapshot_chunk_bytes, and within the request's reply budget (the same
        bound as engine.aio.node_serving._within_budget, so that never has to refuse it)."""
        limits = node.config.limits
        overhead = _REPLY_FIXED_BYTES + CHUNK_HEADER.size
        amplified = limits.max_reply_amplification * (
            codec.encoded_size(request) + codec.FRAME_OVERHEAD) - codec.FRAME_OVERHEAD
        budget = max(request.commit, amplified) - overhead
        return min(size, budget, max_chunk_bytes(limits))

    def _begin(self, node: Node, message: Message, address: Any, size: int) -> None:
        if node.config.protocol != "raft":
            self._refuse(node, message, address, "online snapshots need a Raft cluster")
            return
        if node._core.leader_id != node.config.node_id:
            self._reply_not_leader(node, message, address)
            return
        if self._pending_begins >= MAX_PENDING_BEGINS:
            _count(node, "snapshot_begins_busy")
            self._reply(node, message, address, _STATUS.UNKNOWN,
                        b"busy: other snapshot requests are being served, ask again")
            return
        self._pending_begins += 1
        assert node._loop is not None
        node._loop.create_task(self._begin_task(node, message, address, size))

    async def _begin_task(self, node: Node, message: Message, address: Any,
                          size: int) -> None:
        try:
            try:
                # Raft thesis §6.4 ReadIndex: leadership confirmed by a quorum, and this node
                # applied the read index. The query's answer is not used: the barrier is.
                await node.read(b"", mode="linearizable")
            except errors.StateMachineError:
                pass   # the state machine refused the empty query after the barrier held
            covered = node._applied
            while True:
                held = self.held
                if held is not None and held.index >= covered:
                    break
                if self._building is not None:
                    await asyncio.shield(self._building)
                    continue
                if held is not None and not held.served_to_end:
                    _count(node, "snapshot_begins_busy")
                    self._reply(node, message, address, _STATUS.UNKNOWN,
                                b"busy: another snapshot is being fetched, ask again")
                    return
                await self._build(node)
            self._serve(node, message, address, held.index, held.term, 0, size)
        except errors.NotLeader:
            self._reply_not_leader(node, message, address)
        except errors.Rejected as exc:
            self._refuse(node, message, address, str(exc))
        except errors.EngineError as exc:   # Timeout, Stopped: the client asks again
            self._reply(node, message, address, _STATUS.UNKNOWN, str(exc).encode())
        finally:
            self._pending_begins -= 1

    async def _build(self, node: Node) -> None:
        """Snapshot the state machine now (on the leader) into the held envelope."""
        loop = asyncio.get_running_loop()
        building: asyncio.Future[None] = loop.create_future()
        self._building = building
        self.held = None   # one held snapshot per node: the old one goes first
        try:
            if node._core.leader_id != node.config.node_id:
                raise errors.NotLeader("leadership moved while the snapshot was asked for")
            if node._witness:
                raise errors.Rejected("a witness holds no state machine data")
            index = node._applied
            term = node._core.log.term(index)
            if index == 0 or term == 0:
                raise errors.Timeout(f"applied index {index} has no term in the log yet")
            # Frozen here, between two applies on this loop; serialised off the loop.
            fork = getattr(node.state_machine, "snapshot_fork", None)
            serialize = fork() if fork is not None else None
            data = b"" if serialize is not None else node.state_machine.snapshot()

            def envelope() -> bytes:
                body = serialize() if serialize is not None else data
                return encode_snapshot(Snapshot(index, term, body))

            built = await loop.run_in_executor(None, envelope)
            self.held = _Held(index, term, built, loop.time())
            _count(node, "snapshots_served")
            self._arm_timer(loop)
        finally:
            self._building = None
            building.set_result(None)

    # ------------------------------------------------------------------ idle expiry

    def expire(self, now: float) -> bool:
        """Drop the held snapshot if it has been idle for idle_timeout_s; True if it was."""
        held = self.held
        if held is not None and now - held.last_used >= self.idle_timeout_s:
            self.held = None
            return True
        return False

    def _arm_timer(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is None and self.held is not None:
            delay = self.held.last_used + self.idle_timeout_s - loop.time()
            self._timer = loop.call_later(max(delay, 0.0), self._on_timer, loop)

    def _on_timer(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        self.expire(loop.time())
        self._arm_timer(loop)   # still held (used meanwhile): check again when it may expire

    # ------------------------------------------------------------------ answers

    def _refuse(self, node: Node, message: Message, address: Any, reason: str) -> None:
        _count(node, "snapshot_requests_refused")
        self._reply(node, message, address, _STATUS.REJECTED, reason.encode())

    def _reply_not_leader(self, node: Node, message: Message, address: Any) -> None:
        hint = node._members.address_of(node._core.leader_id or 0)
        self._reply(node, message, address, _STATUS.NOT_LEADER, hint.encode())

    @staticmethod
    def _reply(node: Node, message: Message, address: Any, status: int,
               context: bytes) -> None:
        if node._transport is None or not node._running:
            return   # stopped meanwhile: the client asks again elsewhere
        node._serving.reply_admin(message, address, status, context)


def _count(node: Node, name: str) -> None:
    node.counters[name] = node.counters.get(name, 0) + 1


_SERVING: weakref.WeakKeyDictionary[Any, SnapshotServing] = weakref.WeakKeyDictionary()


def serving(node: Node) -> SnapshotServing:
    """The snapshot serving state of `node` (made on its first request)."""
    state = _SERVING.get(node)
    if state is None:
        state = _SERVING[node] = SnapshotServing()
    return state


def on_request(node: Node, message: Message, address: Any) -> None:
    """Node's hook (engine.aio.node_serving._on_admin, AdminOp.SNAPSHOT_CHUNK)."""
    serving(node).on_request(node, message, address)

"""Snapshots for every core: the checksummed envelope and the chunked transfer over UDP.

Envelope (the same bytes on disk and on the wire), little-endian::

    version 1: magic "ESNP" | u16 1 | u64 index | u64 term | u64 data length | data | digest
    version 2: magic "ESNP" | u16 2 | u64 index | u64 term | u64 data length
               | u32 configuration length | configuration | data | digest

digest = 32-byte BLAKE2b-256 over everything before it. Version 2 carries the cluster
configuration as of the snapshot's index (Snapshot.configuration: opaque bytes here; the Raft
core stores its encoded engine.raft.membership.Membership); a snapshot without one is written
as version 1, so version-1 envelopes and their bytes stay exactly as before and remain
readable. `decode_snapshot` refuses any envelope whose digest, magic, version or length does
not check out (engine.errors.DecodeError), so a replica never installs a corrupt or truncated
snapshot (Raft §7: a follower installs only the leader's state).

Chunked transfer (Raft Figure 13 InstallSnapshot, over a lossy datagram network). The sender
sends SNAPSHOT messages (index + log_term = the snapshot's last entry, seq = chunk offset,
status = total envelope size, context = chunk bytes). The receiver appends chunks that extend
its contiguous prefix and answers SNAPSHOT_RESPONSE with seq = the next offset it wants
(reject = True when a chunk arrived beyond a gap, asking the sender to go back at once;
status = SNAPSHOT_REFUSED when it will never take this snapshot). What ends a transfer (the
acknowledgement of the installed snapshot) is each core's own (engine/raft/core.py,
engine/paxos/core.py).

  * bounded: at most Limits.max_snapshot_chunk_bytes per message and
    Limits.max_snapshot_inflight_chunks unacknowledged chunks per receiver; the receiver
    refuses envelopes above Limits.max_snapshot_bytes;
  * retransmission: go-back-N from the acknowledged offset, at once on a gap signal and after
    `retransmit_ticks` (engine.replication.timing) without acknowledgement progress (lost
    chunks or lost acks);
  * resume: the receiver keeps its partial envelope across retries and even across a new
    transfer of the same snapshot (same index, term, size), and asks for the next offset.

This module is pure (no I/O, no clock): the cores call it from step() and tick().
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from collections.abc import Callable
from typing import Any

from engine.errors import DecodeError
from engine.messages import Message, MessageType
from engine.types import Snapshot

MAGIC = b"ESNP"
VERSION = 1
VERSION_WITH_CONFIGURATION = 2
_HEAD = struct.Struct("<4sHQQQ")
_CONFIG_LENGTH = struct.Struct("<I")
DIGEST_BYTES = 32
# The smallest envelope (version 1, no data).
ENVELOPE_OVERHEAD = _HEAD.size + DIGEST_BYTES
# SNAPSHOT_RESPONSE.status: the receiver will never take this snapshot (above its
# Limits.max_snapshot_bytes, or another transfer is advancing): stop streaming it.
SNAPSHOT_REFUSED = 1
_SNAPSHOT = MessageType.SNAPSHOT
_SNAPSHOT_RESPONSE = MessageType.SNAPSHOT_RESPONSE


def _digest(*parts: bytes | memoryview) -> bytes:
    h = hashlib.blake2b(digest_size=DIGEST_BYTES)
    for part in parts:
        h.update(part)
    return h.digest()


def encode_snapshot(snapshot: Snapshot) -> bytes:
    """The checksummed envelope of a snapshot (see the module docstring)."""
    configuration = getattr(snapshot, "configuration", b"")
    if not configuration:
        head = _HEAD.pack(MAGIC, VERSION, snapshot.index, snapshot.term, len(snapshot.data))
    else:
        head = _HEAD.pack(
            MAGIC, VERSION_WITH_CONFIGURATION, snapshot.index, snapshot.term,
            len(snapshot.data),
        ) + _CONFIG_LENGTH.pack(len(configuration)) + configuration
    return b"".join((head, snapshot.data, _digest(head, snapshot.data)))


def _body_start(view: memoryview, version: int) -> tuple[int, bytes]:
    """Offset of the data and the configuration bytes, per version."""
    if version == VERSION:
        return _HEAD.size, b""
    config_at = _HEAD.size + _CONFIG_LENGTH.size
    if len(view) < config_at + DIGEST_BYTES:
        raise DecodeError(f"snapshot envelope of {len(view)} bytes is shorter than its header")
    (config_length,) = _CONFIG_LENGTH.unpack_from(view, _HEAD.size)
    if config_at + config_length + DIGEST_BYTES > len(view):
        raise DecodeError(f"snapshot envelope declares a {config_length}-byte configuration")
    return config_at + config_length, bytes(view[config_at:config_at + config_length])


def decode_snapshot(envelope: bytes | bytearray | memoryview) -> Snapshot:
    """Verifies and opens an envelope; raises DecodeError if anything does not check out."""
    view = memoryview(envelope)
    if len(view) < ENVELOPE_OVERHEAD:
        raise DecodeError(f"snapshot envelope of {len(view)} bytes is shorter than its header")
    magic, version, index, term, length = _HEAD.unpack_from(view, 0)
    if magic != MAGIC or version not in (VERSION, VERSION_WITH_CONFIGURATION):
        raise DecodeError(f"snapshot envelope has magic {magic!r} version {version}")
    data_start, configuration = _body_start(view, version)
    if data_start + length + DIGEST_BYTES != len(view):
        raise DecodeError(
            f"snapshot envelope of {len(view)} bytes declares {length} data bytes"
        )
    body_end = data_start + length
    if _digest(view[:body_end]) != bytes(view[body_end:]):
        raise DecodeError(f"snapshot envelope at index {index} term {term}: checksum mismatch")
    return Snapshot(index, term, bytes(view[data_start:body_end]), configuration=configuration)


def with_configuration(envelope: bytes, configuration: bytes) -> bytes:
    """A version-1 envelope re-encoded as version 2 carrying `configuration` (verified first;
    the data is hashed once more). Envelopes that already carry one are returned as is."""
    snapshot = decode_snapshot(envelope)
    if snapshot.configuration:
        return envelope
    return encode_snapshot(
        Snapshot(snapshot.index, snapshot.term, snapshot.data, configuration=configuration)
    )


def peek_snapshot_header(envelope: bytes | bytearray | memoryview) -> tuple[int, int, int]:
    """(index, term, data length) from an envelope's header, unverified."""
    _, _, index, term, length = _HEAD.unpack_from(envelope, 0)
    return index, term, length


class SnapshotSender:
    """The leader's side of one transfer to one follower (a go-back-N window of chunks)."""

    __slots__ = (
        "index", "term", "envelope", "chunk_bytes", "window_chunks", "acked", "next_offset",
        "progress_tick", "_gap_offset", "_restart",
    )

    def __init__(self, index: int, term: int, envelope: bytes, chunk_bytes: int,
                 window_chunks: int, now_tick: int) -> None:
        self.index = index
        self.term = term
        self.envelope = envelope
        self.chunk_bytes = chunk_bytes
        self.window_chunks = window_chunks
        self.acked = 0          # every byte before it is at the follower
        self.next_offset = 0    # the next byte to send
        self.progress_tick = now_tick
        self._gap_offset = -1   # the gap we already went back for (one resend per gap)
        self._restart: tuple[int, int] | None = None   # (offset, tick) of the last restart_from

    @property
    def total(self) -> int:
        return len(self.envelope)

    def next_chunks(self) -> list[tuple[int, bytes]]:
        """Chunks to send now: the window after the acknowledged offset, not yet sent."""
        chunks: list[tuple[int, bytes]] = []
        limit = min(self.total, self.acked + self.window_chunks * self.chunk_bytes)
        view = memoryview(self.envelope)
        while self.next_offset < limit:
            end = min(self.next_offset + self.chunk_bytes, self.total)
            chunks.append((self.next_offset, bytes(view[self.next_offset:end])))
            self.next_offset = end
        return chunks

    def chunk_messages(self, src: int, dst: int, term: int) -> list[Any]:
        """The SNAPSHOT messages of next_chunks() from `src` to `dst` in `term`."""
        return [
            Message(_SNAPSHOT, src, dst, term, log_term=self.term, index=self.index,
                    seq=offset, status=self.total, context=chunk)
            for offset, chunk in self.next_chunks()
        ]

    def on_response(self, m: Any, now_tick: int, min_restart_ticks: int = 0) -> str | None:
        """A SNAPSHOT_RESPONSE that is neither stale nor a refusal nor the end of the
        transfer: None if chunk_messages() should be sent now, else why it is ignored."""
        if m.reject and m.seq < self.acked and not self.restart_from(
                m.seq, now_tick, min_restart_ticks):
            return "repeated snapshot rewind"
        if not self.on_ack(m.seq, m.reject, now_tick):
            return "bogus snapshot response"
        return None

    def on_ack(self, offset: int, gap: bool, now_tick: int) -> bool:
        """The follower wants `offset` next. Returns False for a useless (stale/bogus) ack."""
        if not 0 <= offset <= self.total:
            return False
        if offset > self.acked:
            self.acked = offset
            self.progress_tick = now_tick
            self.next_offset = max(self.next_offset, offset)
        fresh_gap = offset != self._gap_offset
        if gap and fresh_gap and offset == self.acked and offset < self.next_offset:
            # A chunk was lost or reordered: go back once for this gap (later chunks of the
            # same window report the same gap and must not each restart the window).
            self._gap_offset = offset
            self.next_offset = offset
        return True

    def restart_from(self, offset: int, now_tick: int, min_interval_ticks: int = 0) -> bool:
        """The receiver lost its partial copy (restart, bad checksum) and wants `offset`, below
        what it acknowledged: start over there. With min_interval_ticks, the same request
        again within that many ticks is ignored (False): every chunk of the resent window can
        draw it once more, and rewinding on each would multiply the traffic."""
        last = self._restart
        if last is not None and last[0] == offset and now_tick - last[1] < min_interval_ticks:
            return False
        self._restart = (offset, now_tick)
        self.acked = self.next_offset = offset
        return True

    def maybe_retransmit(self, now_tick: int, retransmit_ticks: int) -> bool:
        """No acknowledgement progress for retransmit_ticks: resend from the acked offset."""
        if now_tick - self.progress_tick < retransmit_ticks:
            return False
        self.progress_tick = now_tick
        self.next_offset = self.acked
        self._gap_offset = -1
        return True


class SnapshotReceiver:
    """The follower's side: the contiguous prefix of one envelope received so far."""

    __slots__ = ("index", "term", "total", "buffer")

    def __init__(self, index: int, term: int, total: int) -> None:
        self.index = index
        self.term = term
        self.total = total
        self.buffer = bytearray()

    def matches(self, index: int, term: int, total: int) -> bool:
        return (self.index, self.term, self.total) == (index, term, total)

    @property
    def received(self) -> int:
        return len(self.buffer)

    @property
    def complete(self) -> bool:
        return len(self.buffer) == self.total

    def add(self, offset: int, chunk: bytes) -> bool:
        """Takes the part of a chunk that extends the contiguous prefix; returns False if the
        chunk starts beyond it (a gap: an earlier chunk was lost or is late)."""
        have = len(self.buffer)
        if offset > have:
            return False
        end = min(offset + len(chunk), self.total)
        if end > have:
            self.buffer += chunk[have - offset:end - offset]
        return True

    def finish(self) -> Snapshot:
        """Verifies the whole envelope (DecodeError if corrupt) and checks it is the one
        announced in the SNAPSHOT messages."""
        snapshot = decode_snapshot(self.buffer)
        if (snapshot.index, snapshot.term) != (self.index, self.term):
            raise DecodeError(
                f"snapshot envelope holds ({snapshot.index}, {snapshot.term}), "
                f"announced ({self.index}, {self.term})"
            )
        return snapshot


def malformed_chunk(m: Any) -> bool:
    """A SNAPSHOT message whose fields cannot describe a chunk of an envelope."""
    total, offset, chunk = m.status, m.seq, m.context
    return (m.index <= 0 or total < ENVELOPE_OVERHEAD or not 0 <= offset < total or not chunk
            or offset + len(chunk) > total)


class SnapshotInbox:
    """A receiver's side of chunked transfers: at most one partial envelope at a time.

    `exclusive_ticks`: while the transfer in progress advanced within that many ticks, a
    chunk of another snapshot from another sender is refused (SNAPSHOT_REFUSED) instead of
    starting over, or two senders would reset each other's progress forever; 0 lets every
    new snapshot replace the partial one (a single sender, the leader)."""

    __slots__ = ("receiver", "source", "progress_tick", "max_bytes", "exclusive_ticks")

    def __init__(self, max_bytes: int, exclusive_ticks: int = 0) -> None:
        self.receiver: SnapshotReceiver | None = None
        self.source = 0
        self.progress_tick = 0
        self.max_bytes = max_bytes
        self.exclusive_ticks = exclusive_ticks

    def offer(
        self, m: Any, node_id: int, term: int, now_tick: int,
        check: Callable[[Snapshot], object] | None = None,
    ) -> tuple[Any, Snapshot | None, str | None]:
        """Takes one well-formed SNAPSHOT chunk (malformed_chunk(m) is False).

        Returns (reply, snapshot, ignored): the SNAPSHOT_RESPONSE to send from `node_id` in
        `term` (None once complete), the verified snapshot with its envelope once the last
        chunk arrived, and why the chunk was ignored or the envelope refused (to count).
        `check` may refuse a verified snapshot's contents by raising DecodeError."""
        total = m.status
        receiver = self.receiver
        if receiver is None or not receiver.matches(m.index, m.log_term, total):
            ignored = None
            if (receiver is not None and m.src != self.source
                    and now_tick - self.progress_tick < self.exclusive_ticks):
                ignored = "snapshot chunk from a second sender"
            elif total > self.max_bytes:
                ignored = "snapshot above max_snapshot_bytes"
            if ignored is not None:
                return Message(_SNAPSHOT_RESPONSE, node_id, m.src, term, index=m.index,
                               reject=True, status=SNAPSHOT_REFUSED), None, ignored
            receiver = self.receiver = SnapshotReceiver(m.index, m.log_term, total)
            self.source = m.src
        in_order = receiver.add(m.seq, m.context)
        if in_order:
            self.progress_tick = now_tick
        if not receiver.complete:
            return Message(_SNAPSHOT_RESPONSE, node_id, m.src, term, index=m.index,
                           seq=receiver.received, reject=not in_order), None, None
        self.receiver = None
        try:
            snapshot = receiver.finish()
            if check is not None:
                check(snapshot)
        except DecodeError:
            # Never install a corrupt snapshot: ask for it again from the start.
            return Message(_SNAPSHOT_RESPONSE, node_id, m.src, term, index=m.index, seq=0,
                           reject=True), None, CORRUPT_SNAPSHOT
        return None, dataclasses.replace(snapshot, envelope=bytes(receiver.buffer)), None


CORRUPT_SNAPSHOT = "snapshot checksum mismatch"

__all__ = [
    "encode_snapshot", "decode_snapshot", "peek_snapshot_header", "with_configuration",
    "SnapshotSender", "SnapshotReceiver", "SnapshotInbox", "ENVELOPE_OVERHEAD",
    "SNAPSHOT_REFUSED", "CORRUPT_SNAPSHOT", "malformed_chunk",
]

"""Snapshots for the Raft core: the checksummed envelope and the chunked transfer over UDP.

Envelope (the same bytes on disk and on the wire), little-endian::

    version 1: magic "ESNP" | u16 1 | u64 index | u64 term | u64 data length | data | digest
    version 2: magic "ESNP" | u16 2 | u64 index | u64 term | u64 data length
               | u32 configuration length | configuration | data | digest

digest = 32-byte BLAKE2b-256 over everything before it. Version 2 carries the cluster
configuration as of the snapshot's index (Snapshot.configuration, the encoded
engine.raft.membership.Membership); a snapshot without one is written as version 1, so
version-1 envelopes and their bytes stay exactly as before and remain readable.
`decode_snapshot` refuses any envelope whose digest, magic, version or length does not
check out (engine.errors.DecodeError), so a follower never installs a corrupt or truncated
snapshot (Raft §7: a follower installs only the leader's state).

Chunked transfer (Raft Figure 13 InstallSnapshot, over a lossy datagram network). The leader
sends SNAPSHOT messages (index + log_term = the snapshot's last entry, seq = chunk offset,
status = total envelope size, context = chunk bytes). The follower appends chunks that extend
its contiguous prefix and answers SNAPSHOT_RESPONSE with seq = the next offset it wants
(reject = True when a chunk arrived beyond a gap, asking the leader to go back at once).
Once the envelope is complete and verified, the follower installs it and, only after the
snapshot is durable (messages_after_persist), answers APPEND_RESPONSE(index = snapshot index),
which moves the leader's progress out of the SNAPSHOT state.

  * bounded: at most Limits.max_snapshot_chunk_bytes per message and
    Limits.max_snapshot_inflight_chunks unacknowledged chunks per follower; the follower
    refuses envelopes above Limits.max_snapshot_bytes;
  * retransmission: go-back-N from the acknowledged offset, at once on a gap signal and after
    `retransmit_ticks` without acknowledgement progress (lost chunks or lost acks);
  * resume: the follower keeps its partial envelope across leader retries and even across a
    new transfer of the same snapshot (same index, term, size), and asks for the next offset.

This module is pure (no I/O, no clock): the core calls it from step() and tick().
"""

from __future__ import annotations

import hashlib
import struct

from engine.errors import DecodeError
from engine.types import Snapshot

MAGIC = b"ESNP"
VERSION = 1
VERSION_WITH_CONFIGURATION = 2
_HEAD = struct.Struct("<4sHQQQ")
_CONFIG_LENGTH = struct.Struct("<I")
DIGEST_BYTES = 32
# The smallest envelope (version 1, no data).
ENVELOPE_OVERHEAD = _HEAD.size + DIGEST_BYTES


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


__all__ = [
    "encode_snapshot", "decode_snapshot", "peek_snapshot_header", "with_configuration",
    "SnapshotSender", "SnapshotReceiver", "ENVELOPE_OVERHEAD",
]

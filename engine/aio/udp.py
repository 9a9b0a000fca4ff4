"""UDP transport: authenticated, batched, fragmenting datagram endpoint of one node or client.

Choice of the hot path (DESIGN.md §4: the faster of asyncio-dgram and a bare
DatagramProtocol, measured): a bare asyncio.DatagramProtocol for both directions and
asyncio-dgram for nothing. asyncio-dgram's stream API puts every datagram through an
asyncio.Queue and a coroutine wake-up and awaits a drain event per send, which costs 38-42% of
the round-trip rate, far above the 10% the design allows; datagram_received decodes in place
and delivers the batch in the same callback. Sends are packed per peer per loop turn, which
beats a bare one-datagram-per-message echo. The figures (`python bench/bench_transport.py`)
and their conditions: docs/performance.md, "Transport".

Theory of operation
-------------------
Sending. `send(messages)` only enqueues: each message goes to the queue of its destination
peer's address (unknown destinations are dropped and counted). The first enqueue of a loop
turn schedules one `loop.call_soon(_flush)`, so everything the node produces in one turn
leaves in as few datagrams as possible: messages are packed in order into frames of at most
`limits.max_datagram_bytes` (codec.encoded_size + FRAME_OVERHEAD is exact). A message that
does not fit in one datagram on its own (e.g. an append carrying a 1 MiB entry) is encoded as
a frame of its own and carried in fragments (codec.encode_fragment); order per destination is
kept. `send_to_address(address, messages)` is the same for a reply to a client, which is not a
peer: client ids are random u64 and a reply goes back to the datagram's source address.
Replies have a queue of their own that a flush writes first: a client's answer never waits
behind the same turn's peer traffic (the leader's commit notices), which the node queues
before it applies (so a node that leaves the cluster while applying still sends them).

Receiving. Every datagram is authenticated by the codec before any of its body is parsed;
the codec also refuses another wire version, a frame for another receiver and (after its tag
verified) a frame of another cluster id, which is logged at WARNING as a conflict (rate
limited). A node id (below engine.types.MIN_CLIENT_ID) that is not a current peer is refused
as unknown_member (logged the same way); a client frame whose epoch is older than
`min_client_epoch` (the node's boot time minus Limits.max_client_clock_skew_s) is refused as
stale_epoch, so a request captured before a restart is not answered after it.
Then the per-sender ReplayWindow refuses anything already seen or from an older boot epoch.
Messages must name the frame's sender as `src` and this node (or 0) as `dst`. A datagram that
fails anything is dropped and counted by reason in `stats()["dropped"]`; nothing from the
network ever raises into the event loop. Accepted messages are delivered once per datagram:
`on_messages(messages, source_address)`.

Fragments. The chunks of one large frame are collected per (sender, epoch, fragment_id) under
bounds: at most `limits.max_reassembly_frames` partial frames per sender (the oldest of that
sender is evicted first, it is most likely missing a lost part) and
`limits.max_reassembly_bytes` reserved in total (parts x max datagram bytes each; a new partial
frame beyond it is refused). Incomplete frames expire after `reassembly_timeout_s`. Each
fragment passes the replay window itself, so the reassembled frame is not checked again (its
counter precedes its fragments'); it must come from the same sender and epoch.

Epoch and counter. The boot epoch is time.time_ns() at construction, forced strictly above
any epoch handed out before in this process, or the epoch the node persisted in its data dir
(engine.aio.node: max(persisted + 1, clock), fsynced before the socket binds), so a restarted
node's frames supersede its old incarnation's at every receiver even after a backward clock
step. The counter increments once per frame (and per fragment). Every frame names its
receiver: the peer's id, or for a reply the client id the reply is for.

Fault filter (tests only). `set_fault_filter()` drops messages to / frames from given node
ids (partitions), and drops, duplicates or delays outgoing datagrams with a seeded RNG.
"""

from __future__ import annotations

import asyncio
import bisect
import ipaddress
import itertools
import logging
import os
import random
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from engine._core import codec
from engine.config import Limits
from engine.errors import (
    ConfigError,
    DecodeError,
    WireVersionError,
    WrongClusterError,
    WrongModeError,
    WrongReceiverError,
)
from engine.types import MIN_CLIENT_ID, parse_address

logger = logging.getLogger("engine.aio.udp")

Address = tuple[str, int]
OnMessages = Callable[[list[Any], Address], None]

# Socket buffers, best effort: Linux caps them at net.core.rmem_max / wmem_max (often 4 MiB;
# 208 KiB by default), which is enough for a window of 64 KB datagrams to a few peers.
SOCKET_BUFFER_BYTES = 4 * 1024 * 1024
# Datagrams queued in the event loop's transport when the kernel buffer is full; beyond this
# the datagram is dropped (UDP semantics, the protocols retransmit). No Limits field exists
# for it yet, so it is a constructor option.
DEFAULT_MAX_SEND_BUFFER_BYTES = 16 * 1024 * 1024
# A partial frame with a part missing for this long is dropped (its part was lost).
DEFAULT_REASSEMBLY_TIMEOUT_S = 5.0
# Identity conflicts (another cluster id, a non-member node id) are logged at WARNING at most
# once per this many seconds per kind, with the count so far: loud, but not a log flood.
CONFLICT_LOG_INTERVAL_S = 10.0

DROP_REASONS: tuple[str, ...] = (
    # receive side
    "decode_error",         # malformed, truncated, wrong key, bad tag
    "old_version",          # another wire version (an older or newer release)
    "wrong_receiver",       # addressed to another endpoint (e.g. replayed from another node)
    "wrong_cluster",        # authenticated, but of another cluster id (logged as a conflict)
    "wrong_mode",           # cleartext where payload encryption is required, or the reverse
    "unknown_member",       # a node id that is not a member of this node's configuration
    "stale_epoch",          # a client epoch older than this node's boot minus the skew bound
    "replayed",             # seen before, or from an older boot epoch of its sender
    "unknown_sender",       # not a peer while accept_unknown_senders is False
    "reflected",            # claims to come from this node itself
    "src_mismatch",         # a message whose src is not the frame's sender
    "wrong_dst",            # a message addressed to another node
    "reassembly_invalid",   # fragments that do not reassemble into a valid frame
    "reassembly_overflow",  # a new partial frame beyond the reassembly bounds
    "reassembly_evicted",   # a partial frame pushed out by a newer one of its sender
    "reassembly_expired",   # a partial frame with a part missing past the timeout
    "callback_error",       # on_messages raised (logged); the datagram is consumed
    "no_handler",           # no on_messages callback set
    "filtered",             # dropped by the test fault filter (either direction)
    # send side
    "unknown_destination",  # Message.dst is not a peer
    "too_large",            # a frame larger than the receivers' reassembly bound
    "encode_error",         # the codec refused a message (a local bug); logged
    "send_buffer_full",     # the event loop's send queue is above max_send_buffer_bytes
    "send_error",           # sendto raised / the socket reported an error
    "closed",               # sent before start() or after close()
)

_last_epoch = 0

# Test hook: the wall clock this process reads, stepped by ENGINE_TEST_CLOCK_OFFSET_S seconds
# (engine.testing.nemesis "clock-step" restarts a node with its clock an hour back). The boot
# epoch (and the client-epoch bound derived from it, engine.aio.identity) is the engine's only
# wall-clock read; nothing else may read this variable.
_CLOCK_OFFSET_NS = int(float(os.environ.get("ENGINE_TEST_CLOCK_OFFSET_S", "0")) * 1e9)


def wall_clock_ns() -> int:
    """time.time_ns(), stepped by the ENGINE_TEST_CLOCK_OFFSET_S test hook."""
    return time.time_ns() + _CLOCK_OFFSET_NS


def new_boot_epoch(clock: Callable[[], int] = wall_clock_ns) -> int:
    """A boot epoch strictly above every one handed out before in this process.

    The wall clock in ns orders restarts across processes (it may step back, which is why a
    node with a data dir also persists its epoch: engine.aio.identity); the max() orders
    transports created within the same clock tick.
    """
    global _last_epoch
    _last_epoch = max(clock(), _last_epoch + 1)
    return _last_epoch


def as_address(address: Address | str) -> Address:
    """(host, port) from a tuple or "host:port"."""
    if isinstance(address, str):
        return parse_address(address)
    host, port = address
    return str(host), int(port)


def _is_numeric_host(host: str) -> bool:
    """An IPv4/IPv6 literal (usable by sendto as is, no name lookup)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass
class FaultFilter:
    """What the test fault filter does; see UdpTransport.set_fault_filter."""

    drop_to: frozenset[int]
    drop_from: frozenset[int]
    loss: float
    duplicate: float
    delay_ms: float
    jitter_ms: float
    rng: random.Random


class _Partial:
    """The chunks received so far of one fragmented frame."""

    __slots__ = ("chunks", "missing", "reserved_bytes", "deadline")

    def __init__(self, parts: int, reserved_bytes: int, deadline: float) -> None:
        self.chunks: list[bytes | None] = [None] * parts
        self.missing = parts
        self.reserved_bytes = reserved_bytes
        self.deadline = deadline


class _Protocol(asyncio.DatagramProtocol):
    """Binds the asyncio callbacks to the transport's methods without an extra call layer."""

    def __init__(self, owner: UdpTransport) -> None:
        # Instance attributes shadow the class methods, so asyncio calls the owner directly.
        self.datagram_received = owner._on_datagram  # type: ignore[method-assign,assignment]
        self.error_received = owner._on_error  # type: ignore[method-assign]
        self._owner = owner

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner._on_connection_lost(exc)


class UdpTransport:
    """One UDP endpoint speaking authenticated, batched frames (see the module docstring).

    `peers` maps node ids to (host, port) or "host:port"; `on_messages(messages, source)` is
    called once per accepted datagram (it may also be assigned after construction).
    `accept_unknown_senders=False` refuses frames from ids that are not peers (a node-only
    port); the default accepts clients, whose ids are random.
    """

    def __init__(
        self,
        node_id: int,
        bind_address: Address | str,
        peers: Mapping[int, Address | str],
        cluster_key: bytes,
        cluster_id: int = 0,
        limits: Limits | None = None,
        epoch: int | None = None,
        *,
        on_messages: OnMessages | None = None,
        accept_unknown_senders: bool = True,
        reassembly_timeout_s: float = DEFAULT_REASSEMBLY_TIMEOUT_S,
        max_send_buffer_bytes: int = DEFAULT_MAX_SEND_BUFFER_BYTES,
        min_client_epoch: int = 0,
        on_cluster_id: Callable[[int], None] | None = None,
        encrypt_payloads: bool = False,
    ) -> None:
        if not isinstance(node_id, int) or not 0 < node_id < 1 << 64:
            raise ConfigError(f"node_id must be an int in (0, 2**64), got {node_id!r}")
        if reassembly_timeout_s <= 0 or max_send_buffer_bytes <= 0:
            raise ConfigError("reassembly_timeout_s and max_send_buffer_bytes must be positive")
        limits = Limits() if limits is None else limits
        self.node_id = node_id
        self.bind_address = as_address(bind_address)
        self.limits = limits
        self.epoch = new_boot_epoch() if epoch is None else epoch
        self.on_messages = on_messages
        self.accept_unknown_senders = accept_unknown_senders
        self.reassembly_timeout_s = reassembly_timeout_s
        self.max_send_buffer_bytes = max_send_buffer_bytes
        self.min_client_epoch = min_client_epoch
        self._is_node = node_id < MIN_CLIENT_ID
        self.on_cluster_id = on_cluster_id
        self._cluster_key = cluster_key
        self._codec = codec.FrameCodec(
            cluster_key, cluster_id, limits.max_datagram_bytes, limits=limits, local_id=node_id,
            encrypt=encrypt_payloads)
        self._replay = codec.ReplayWindow(limits.replay_window_frames)
        self._peer_addresses: dict[int, Address] = {}
        self._configured_peers = {int(k): as_address(v) for k, v in peers.items()}
        self._counter = itertools.count(1)
        # Bytes of message payload one messages frame can carry within a datagram.
        self._frame_budget = limits.max_datagram_bytes - codec.FRAME_OVERHEAD
        self._max_messages = limits.max_messages_per_frame

        self._loop: asyncio.AbstractEventLoop | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._closed = False
        self._lost: asyncio.Future[None] | None = None
        self._outbox: dict[Address, list[Any]] = {}
        self._replies: dict[Address, list[Any]] = {}   # send_to_address; flushed first
        self._flush_handle: asyncio.Handle | None = None
        self._partials: OrderedDict[tuple[int, int, int], _Partial] = OrderedDict()
        self._partials_per_sender: dict[int, int] = {}
        self._reserved_bytes = 0
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._delayed: set[asyncio.TimerHandle] = set()
        self._fault: FaultFilter | None = None

        self._datagrams_sent = 0
        self._bytes_sent = 0
        self._messages_sent = 0
        self._datagrams_received = 0
        self._bytes_received = 0
        self._messages_received = 0
        self._fragments_sent = 0
        self._fragments_received = 0
        self._frames_reassembled = 0
        self._dropped = dict.fromkeys(DROP_REASONS, 0)
        self._conflict_logged_at: dict[str, float] = {}

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Bind the socket and resolve the peers' addresses once."""
        if self._transport is not None or self._closed:
            raise RuntimeError("UdpTransport.start() called twice")
        loop = asyncio.get_running_loop()
        host, port = self.bind_address
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        family, _, _, _, sockaddr = infos[0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
                except OSError:  # best effort (DESIGN: socket buffers raised when allowed)
                    pass
            sock.bind(sockaddr)
            sock.setblocking(False)
            for peer_id, address in self._configured_peers.items():
                self._peer_addresses[peer_id] = await self._resolve(loop, address, family)
            self._lost = loop.create_future()
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Protocol(self), sock=sock)
        except BaseException:
            sock.close()
            raise
        self._loop = loop
        self._transport = transport  # type: ignore[assignment]

    @staticmethod
    async def _resolve(
        loop: asyncio.AbstractEventLoop, address: Address, family: int,
    ) -> Address:
        """A numeric (ip, port) for sendto, so no name lookup happens per datagram."""
        infos = await loop.getaddrinfo(address[0], address[1], family=family,
                                       type=socket.SOCK_DGRAM)
        sockaddr = infos[0][4]
        return str(sockaddr[0]), int(sockaddr[1])

    @property
    def address(self) -> Address:
        """The bound (host, port), with the real port when bound to port 0."""
        if self._transport is None:
            raise RuntimeError("UdpTransport not started")
        sockname = self._transport.get_extra_info("sockname")
        return str(sockname[0]), int(sockname[1])

    @property
    def is_open(self) -> bool:
        return self._transport is not None and not self._closed

    async def set_peers(self, peers: Mapping[int, Address | str]) -> None:
        """Replace the peer map (e.g. a restarted peer bound elsewhere)."""
        configured = {int(k): as_address(v) for k, v in peers.items()}
        resolved: dict[int, Address] = {}
        if self._loop is not None and self._transport is not None:
            family = self._transport.get_extra_info("socket").family
            for peer_id, address in configured.items():
                resolved[peer_id] = await self._resolve(self._loop, address, family)
        self._configured_peers = configured
        self._peer_addresses = resolved

    def update_peers(self, peers: Mapping[int, Address | str]) -> None:
        """Make `peers` the peer set now (membership changes, Raft thesis §4.1: the driver
        calls this as each configuration takes effect): new or moved peers are added,
        peers not named are forgotten. Numeric addresses take effect at once; a host name is
        resolved in the background (messages to it are dropped as unknown_destination until
        then). Unlike set_peers this never waits, so the driver can call it mid-turn."""
        configured = {int(k): as_address(v) for k, v in peers.items()}
        configured.pop(self.node_id, None)
        for peer_id in [p for p in self._peer_addresses if p not in configured]:
            del self._peer_addresses[peer_id]
        for peer_id, address in configured.items():
            if self._configured_peers.get(peer_id) == address and (
                    peer_id in self._peer_addresses):
                continue
            if _is_numeric_host(address[0]):
                self._peer_addresses[peer_id] = address
            elif self._loop is not None and self._transport is not None:
                self._loop.create_task(self._resolve_peer(peer_id, address))
        self._configured_peers = configured

    def remove_peer(self, peer_id: int) -> None:
        """Forget one peer (a removed member): messages to it are dropped from now on."""
        self._configured_peers.pop(peer_id, None)
        self._peer_addresses.pop(peer_id, None)

    async def _resolve_peer(self, peer_id: int, address: Address) -> None:
        assert self._loop is not None and self._transport is not None
        family = self._transport.get_extra_info("socket").family
        try:
            resolved = await self._resolve(self._loop, address, family)
        except OSError as exc:
            logger.warning("udp %d: cannot resolve peer %d at %s: %s", self.node_id, peer_id,
                           address, exc)
            return
        if self._configured_peers.get(peer_id) == address:  # still wanted
            self._peer_addresses[peer_id] = resolved

    def close(self) -> None:
        """Close the socket; queued, delayed and partial data is discarded. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for handle in (self._flush_handle, self._sweep_handle, *self._delayed):
            if handle is not None:
                handle.cancel()
        self._flush_handle = self._sweep_handle = None
        self._delayed.clear()
        self._outbox.clear()
        self._replies.clear()
        self._partials.clear()
        self._partials_per_sender.clear()
        self._reserved_bytes = 0
        if self._transport is not None:
            self._transport.close()
        elif self._lost is not None and not self._lost.done():
            self._lost.set_result(None)

    async def wait_closed(self) -> None:
        """Wait until the event loop has released the socket (after close())."""
        if self._lost is not None:
            await asyncio.shield(self._lost)

    async def aclose(self) -> None:
        self.close()
        await self.wait_closed()

    def _on_connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            logger.warning("udp %d: socket lost: %s", self.node_id, exc)
        self._closed = True
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)

    # ------------------------------------------------------------------ sending

    def send(self, messages: Iterable[Any], *, now: bool = False) -> None:
        """Queue messages to their `dst` peers; they leave at the end of this loop turn, or
        with everything queued before them at once if `now` (flush() without scheduling)."""
        if not self.is_open:
            self._dropped["closed"] += _count(messages)
            return
        peers = self._peer_addresses
        outbox = self._outbox
        fault = self._fault
        for message in messages:
            address = peers.get(message.dst)
            if address is None:
                self._dropped["unknown_destination"] += 1
                continue
            if fault is not None and message.dst in fault.drop_to:
                self._dropped["filtered"] += 1
                continue
            queue = outbox.get(address)
            if queue is None:
                outbox[address] = [message]
            else:
                queue.append(message)
        if now:
            self.flush()
        else:
            self._schedule_flush()

    def send_to_address(self, address: Address, messages: Iterable[Any]) -> None:
        """Queue messages to a raw address (a reply to a client at its source address)."""
        if not self.is_open:
            self._dropped["closed"] += _count(messages)
            return
        messages = list(messages)
        fault = self._fault
        if fault is not None and fault.drop_to:
            kept = [m for m in messages if m.dst not in fault.drop_to]
            self._dropped["filtered"] += len(messages) - len(kept)
            messages = kept
        queue = self._replies.get(address)
        if queue is None:
            self._replies[address] = messages
        else:
            queue.extend(messages)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if self._flush_handle is None and (self._outbox or self._replies):
            assert self._loop is not None
            self._flush_handle = self._loop.call_soon(self._flush)

    def flush(self) -> None:
        """Write everything queued now, without waiting for the end of the loop turn."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        self._flush()

    def _flush(self) -> None:
        self._flush_handle = None
        replies, outbox = self._replies, self._outbox
        self._replies, self._outbox = {}, {}
        for queues in (replies, outbox):
            for address, messages in queues.items():
                if messages:
                    self._write_messages(address, messages)

    def _write_messages(self, address: Address, messages: list[Any]) -> None:
        """Pack messages, in order, into as few datagrams as possible, for the receiver
        their first one names (one peer or one client per address: NodeConfig refuses two
        members with one address, and a client owns its socket).

        Sizes come from one C-level map over codec.encoded_size (exact), so the common case,
        everything fits one datagram, costs no Python loop per message. A message too large
        for any datagram goes alone in fragments, between the batches before and after it.
        """
        sizes = list(map(codec.encoded_size, messages))
        budget = self._frame_budget
        receiver = messages[0].dst
        if len(messages) <= self._max_messages and sum(sizes) <= budget:
            self._write_frame(address, messages, receiver)   # the common case: one datagram
            return
        if max(sizes) <= budget:
            self._pack(address, messages, sizes, receiver)
            return
        start = 0
        for i, size in enumerate(sizes):
            if size > budget:
                if start < i:
                    self._pack(address, messages[start:i], sizes[start:i], receiver)
                self._write_fragmented(address, messages[i], receiver)
                start = i + 1
        if start < len(messages):
            self._pack(address, messages[start:], sizes[start:], receiver)

    def _pack(
        self, address: Address, messages: list[Any], sizes: list[int], receiver: int
    ) -> None:
        """Greedy first-fit in order; every size is <= the frame budget."""
        budget = self._frame_budget
        max_messages = self._max_messages
        count = len(messages)
        if count <= max_messages and sum(sizes) <= budget:
            self._write_frame(address, messages, receiver)
            return
        ends = list(itertools.accumulate(sizes))  # ends[i] = bytes of messages[0..i]
        start = 0
        consumed = 0
        while start < count:
            # The first message that would overflow this frame starts the next one.
            stop = min(bisect.bisect_right(ends, consumed + budget, start), start + max_messages)
            self._write_frame(address, messages[start:stop], receiver)
            consumed = ends[stop - 1]
            start = stop

    def _write_frame(self, address: Address, batch: list[Any], receiver: int) -> None:
        try:
            data = self._codec.encode(
                self.node_id, self.epoch, next(self._counter), batch, receiver)
        except (ValueError, TypeError, OverflowError):
            logger.exception("udp %d: cannot encode a batch for %s", self.node_id, address)
            self._dropped["encode_error"] += len(batch)
            return
        self._messages_sent += len(batch)
        if self._fault is None:
            self._sendto(data, address)
        else:
            self._write(data, address)

    def _write_fragmented(self, address: Address, message: Any, receiver: int) -> None:
        """Carry one frame larger than a datagram as fragments (codec.encode_fragment)."""
        frame_counter = next(self._counter)
        try:
            frame = self._codec.encode(
                self.node_id, self.epoch, frame_counter, [message], receiver)
        except ValueError as exc:
            # Larger than max_frame_bytes (the receivers' reassembly bound) or invalid.
            logger.warning("udp %d: message not sent to %s: %s", self.node_id, address, exc)
            self._dropped["too_large"] += 1
            return
        except (TypeError, OverflowError):
            logger.exception("udp %d: cannot encode a message for %s", self.node_id, address)
            self._dropped["encode_error"] += 1
            return
        chunk_bytes = self._codec.max_chunk_bytes
        parts = -(-len(frame) // chunk_bytes)
        view = memoryview(frame)
        for part in range(parts):
            chunk = view[part * chunk_bytes:(part + 1) * chunk_bytes]
            data = self._codec.encode_fragment(
                self.node_id, self.epoch, next(self._counter), frame_counter, part, parts, chunk,
                receiver)
            self._fragments_sent += 1
            self._write(data, address)
        self._messages_sent += 1

    def _write(self, data: bytes, address: Address) -> None:
        fault = self._fault
        if fault is None:
            self._sendto(data, address)
            return
        rng = fault.rng
        if fault.loss and rng.random() < fault.loss:
            self._dropped["filtered"] += 1
            return
        copies = 2 if fault.duplicate and rng.random() < fault.duplicate else 1
        for _ in range(copies):
            delay_s = (fault.delay_ms + fault.jitter_ms * rng.random()) / 1000.0
            if delay_s <= 0:
                self._sendto(data, address)
            else:
                self._send_later(delay_s, data, address)

    def _send_later(self, delay_s: float, data: bytes, address: Address) -> None:
        assert self._loop is not None
        handle: asyncio.TimerHandle

        def fire() -> None:
            self._delayed.discard(handle)
            if not self._closed:
                self._sendto(data, address)

        handle = self._loop.call_later(delay_s, fire)
        self._delayed.add(handle)

    def _sendto(self, data: bytes, address: Address) -> None:
        transport = self._transport
        if transport is None or self._closed:
            self._dropped["closed"] += 1
            return
        # Bounded everything (DESIGN §5): the loop queues datagrams the kernel refused with
        # EAGAIN; past the bound we drop like a full NIC queue would.
        # (asyncio's and uvloop's datagram transports both have it; typeshed omits it.)
        if transport.get_write_buffer_size() > self.max_send_buffer_bytes:  # type: ignore[attr-defined]
            self._dropped["send_buffer_full"] += 1
            return
        try:
            transport.sendto(data, address)
        except (OSError, ValueError) as exc:
            logger.debug("udp %d: sendto %s failed: %s", self.node_id, address, exc)
            self._dropped["send_error"] += 1
            return
        self._datagrams_sent += 1
        self._bytes_sent += len(data)

    # ------------------------------------------------------------------ receiving

    def _on_datagram(self, data: bytes, address: Address) -> None:
        """asyncio's datagram_received: decode, authenticate, de-replay, deliver."""
        self._datagrams_received += 1
        self._bytes_received += len(data)
        try:
            frame = self._codec.decode(data)
        except DecodeError as exc:
            self._count_refused(exc)
            return
        sender = frame.sender_id
        if not self._accept_sender(sender, frame):
            return
        if not self._replay.accept(sender, frame.epoch, frame.counter):
            self._dropped["replayed"] += 1
            return
        if frame.kind == codec.FRAME_FRAGMENT:
            self._on_fragment(frame, address)
        else:
            self._deliver(frame.messages, sender, address)

    def _count_refused(self, exc: DecodeError) -> None:
        """Count a frame the codec refused by reason; log an identity conflict loudly."""
        if isinstance(exc, WrongClusterError):
            self._dropped["wrong_cluster"] += 1
            self._log_conflict(
                "wrong_cluster",
                "udp %d: refused %d frames of another cluster, the last from node %d of "
                "cluster %#x (this is cluster %#x): a node holding this cluster key was "
                "bootstrapped with a different member list, or joined another cluster",
                exc.sender_id, exc.cluster_id, exc.expected_cluster_id)
        elif isinstance(exc, WrongReceiverError):
            self._dropped["wrong_receiver"] += 1
        elif isinstance(exc, WireVersionError):
            self._dropped["old_version"] += 1
        elif isinstance(exc, WrongModeError):
            self._dropped["wrong_mode"] += 1
        else:
            self._dropped["decode_error"] += 1

    def _log_conflict(self, reason: str, text: str, *args: Any) -> None:
        now = time.monotonic()
        last = self._conflict_logged_at.get(reason)
        if last is None or now - last >= CONFLICT_LOG_INTERVAL_S:
            self._conflict_logged_at[reason] = now
            logger.warning(text, self.node_id, self._dropped[reason], *args)

    def _accept_sender(self, sender: int, frame: Any) -> bool:
        if sender == self.node_id:
            self._dropped["reflected"] += 1
            return False
        if sender < MIN_CLIENT_ID and self._is_node:
            # A node id: a node hears only the members of its configuration (a client hears
            # whichever node answers it).
            if sender not in self._peer_addresses:
                self._dropped["unknown_member"] += 1
                self._log_conflict(
                    "unknown_member",
                    "udp %d: refused %d frames from nodes that are not members, the last "
                    "from node %d (members: %s)", sender, sorted(self._peer_addresses))
                return False
            if frame.cluster_id and not self._codec.cluster_id:
                self._adopt_cluster_id(frame.cluster_id)
        elif not self.accept_unknown_senders:
            self._dropped["unknown_sender"] += 1
            return False
        elif frame.epoch < self.min_client_epoch:
            self._dropped["stale_epoch"] += 1
            return False
        fault = self._fault
        if fault is not None and sender in fault.drop_from:
            self._dropped["filtered"] += 1
            return False
        return True

    def _deliver(self, messages: list[Any], sender: int, address: Address) -> None:
        node_id = self.node_id
        for message in messages:
            if message.src != sender or (message.dst != node_id and message.dst != 0):
                messages = self._misaddressed_removed(messages, sender)
                break
        if not messages:
            return
        callback = self.on_messages
        if callback is None:
            self._dropped["no_handler"] += 1
            return
        self._messages_received += len(messages)
        try:
            callback(messages, address)
        except Exception:
            # Never into the loop: asyncio would close the socket on an exception here.
            logger.exception("udp %d: on_messages raised", self.node_id)
            self._dropped["callback_error"] += 1

    def _misaddressed_removed(self, messages: list[Any], sender: int) -> list[Any]:
        """The slow path of _deliver: keep only messages from `sender` to this node."""
        kept = []
        for message in messages:
            if message.src != sender:
                self._dropped["src_mismatch"] += 1
            elif message.dst != self.node_id and message.dst != 0:
                self._dropped["wrong_dst"] += 1
            else:
                kept.append(message)
        return kept

    def _on_fragment(self, frame: Any, address: Address) -> None:
        self._fragments_received += 1
        sender = frame.sender_id
        key = (sender, frame.epoch, frame.fragment_id)
        partial = self._partials.get(key)
        if partial is None:
            partial = self._new_partial(key, frame.parts)
            if partial is None:
                return
        elif len(partial.chunks) != frame.parts:
            self._dropped["reassembly_invalid"] += 1
            self._discard_partial(key)
            return
        if partial.chunks[frame.part] is not None:
            return  # a resent part; the replay window passed it under a new counter
        partial.chunks[frame.part] = frame.chunk
        partial.missing -= 1
        if partial.missing:
            return
        self._discard_partial(key)
        chunks = partial.chunks
        self._on_reassembled(b"".join(chunks), sender, frame.epoch, address)  # type: ignore[arg-type]

    def _new_partial(self, key: tuple[int, int, int], parts: int) -> _Partial | None:
        assert self._loop is not None
        now = self._loop.time()
        self._expire_partials(now)
        sender = key[0]
        limits = self.limits
        reserved = parts * limits.max_datagram_bytes
        if parts < 2 or reserved > limits.max_reassembly_bytes:
            self._dropped["reassembly_invalid"] += 1
            return None
        if self._partials_per_sender.get(sender, 0) >= limits.max_reassembly_frames:
            oldest = next(k for k in self._partials if k[0] == sender)
            self._discard_partial(oldest)
            self._dropped["reassembly_evicted"] += 1
        if self._reserved_bytes + reserved > limits.max_reassembly_bytes:
            self._dropped["reassembly_overflow"] += 1
            return None
        partial = _Partial(parts, reserved, now + self.reassembly_timeout_s)
        self._partials[key] = partial
        self._partials_per_sender[sender] = self._partials_per_sender.get(sender, 0) + 1
        self._reserved_bytes += reserved
        if self._sweep_handle is None:
            self._sweep_handle = self._loop.call_later(self.reassembly_timeout_s, self._sweep)
        return partial

    def _discard_partial(self, key: tuple[int, int, int]) -> None:
        partial = self._partials.pop(key)
        self._reserved_bytes -= partial.reserved_bytes
        sender = key[0]
        remaining = self._partials_per_sender[sender] - 1
        if remaining:
            self._partials_per_sender[sender] = remaining
        else:
            del self._partials_per_sender[sender]

    def _expire_partials(self, now: float) -> None:
        # Insertion order is deadline order (one timeout for all), so expire from the front.
        while self._partials:
            key, partial = next(iter(self._partials.items()))
            if partial.deadline > now:
                break
            self._discard_partial(key)
            self._dropped["reassembly_expired"] += 1

    def _sweep(self) -> None:
        self._sweep_handle = None
        if self._closed or self._loop is None:
            return
        self._expire_partials(self._loop.time())
        if self._partials:
            first = next(iter(self._partials.values()))
            delay_s = max(first.deadline - self._loop.time(), 0.0) + 0.001
            self._sweep_handle = self._loop.call_later(delay_s, self._sweep)

    def _on_reassembled(self, data: bytes, sender: int, epoch: int, address: Address) -> None:
        try:
            frame = self._codec.decode(data)
        except DecodeError:
            self._dropped["reassembly_invalid"] += 1
            return
        if (
            frame.kind != codec.FRAME_MESSAGES or frame.sender_id != sender
            or frame.epoch != epoch
        ):
            self._dropped["reassembly_invalid"] += 1
            return
        self._frames_reassembled += 1
        self._deliver(frame.messages, sender, address)

    def _adopt_cluster_id(self, cluster_id: int) -> None:
        """An unbound node (one joining an existing cluster) takes the cluster id of the first
        authenticated frame of a member; on_cluster_id persists it (engine.aio.node)."""
        old = self._codec
        self._codec = codec.FrameCodec(
            self._cluster_key, cluster_id, old.max_datagram_bytes, limits=self.limits,
            local_id=self.node_id, encrypt=old.encrypt)
        logger.info("udp %d: joined cluster %#x", self.node_id, cluster_id)
        if self.on_cluster_id is not None:
            self.on_cluster_id(cluster_id)

    @property
    def cluster_id(self) -> int:
        """The cluster id this endpoint sends (0 while unbound, see _adopt_cluster_id)."""
        return self._codec.cluster_id

    def _on_error(self, exc: Exception) -> None:
        """asyncio's error_received (e.g. ICMP port unreachable): counted, never raised."""
        logger.debug("udp %d: socket error: %s", self.node_id, exc)
        self._dropped["send_error"] += 1

    # ------------------------------------------------------------------ tests and stats

    def set_fault_filter(
        self,
        drop_to: Iterable[int] | None = None,
        drop_from: Iterable[int] | None = None,
        loss: float = 0.0,
        duplicate: float = 0.0,
        delay_ms: float = 0.0,
        *,
        jitter_ms: float = 0.0,
        seed: int = 0,
    ) -> None:
        """Simulate faults (tests, LocalCluster.partition): drop all messages to `drop_to`
        and all frames from `drop_from`; lose, duplicate or delay (delay_ms plus a uniform
        jitter in [0, jitter_ms), which reorders) outgoing datagrams. Seeded: the same calls
        give the same decisions. Calling with no arguments (or clear_fault_filter) heals."""
        for name, p in (("loss", loss), ("duplicate", duplicate)):
            if not 0.0 <= p <= 1.0:
                raise ConfigError(f"{name} must be a probability, got {p!r}")
        if delay_ms < 0 or jitter_ms < 0:
            raise ConfigError("delay_ms and jitter_ms must be >= 0")
        drop_to_set = frozenset(drop_to or ())
        drop_from_set = frozenset(drop_from or ())
        if not (drop_to_set or drop_from_set or loss or duplicate or delay_ms or jitter_ms):
            self._fault = None
            return
        self._fault = FaultFilter(
            drop_to_set, drop_from_set, loss, duplicate, delay_ms, jitter_ms,
            random.Random(seed),
        )

    def clear_fault_filter(self) -> None:
        self._fault = None

    def stats(self) -> dict[str, Any]:
        """Counters since start; `dropped` maps every reason in DROP_REASONS to a count."""
        return {
            "cluster_id": self._codec.cluster_id,
            "epoch": self.epoch,
            "datagrams_sent": self._datagrams_sent,
            "bytes_sent": self._bytes_sent,
            "messages_sent": self._messages_sent,
            "fragments_sent": self._fragments_sent,
            "datagrams_received": self._datagrams_received,
            "bytes_received": self._bytes_received,
            "messages_received": self._messages_received,
            "fragments_received": self._fragments_received,
            "frames_reassembled": self._frames_reassembled,
            "partial_frames": len(self._partials),
            "dropped": dict(self._dropped),
        }


def _count(messages: Iterable[Any]) -> int:
    return len(messages) if isinstance(messages, (list, tuple)) else sum(1 for _ in messages)


__all__ = [
    "UdpTransport", "FaultFilter", "DROP_REASONS", "SOCKET_BUFFER_BYTES", "new_boot_epoch",
    "as_address",
]

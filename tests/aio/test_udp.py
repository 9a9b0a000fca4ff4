"""UdpTransport over real loopback sockets (DESIGN.md §5 "Wire", §7 tier 4).

Goal: batching (one flush per loop turn, as few datagrams as possible), fragmentation of a
frame larger than a datagram, and the receive guards (authentication, replay window,
addressing, reassembly bounds): a bad datagram is dropped and counted by reason, never raised.

Method: transports bound to 127.0.0.1 port 0 exchange messages on a fresh event loop of each
kind (stock asyncio, and uvloop when installed); hostile datagrams are crafted with the codec
or as raw bytes and sent from a plain socket. Each test waits on counters, never on sleeps
alone, and checks exact counts where the outcome is deterministic.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import time
import warnings
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from engine._core import codec
from engine.aio.loop import new_event_loop, uvloop_available
from engine.aio.udp import DROP_REASONS, UdpTransport, new_boot_epoch
from engine.config import Limits
from engine.errors import ConfigError
from engine.messages import Entry, Message, MessageType
from engine.types import MIN_CLIENT_ID

KEY = b"test-cluster-key-0123456789abcdef"
OTHER_KEY = b"another-cluster-key-0123456789ab"
LOCAL = ("127.0.0.1", 0)
# Client ids (engine.types.MIN_CLIENT_ID and above): senders a node hears without them being
# peers. A node id that is not a peer is refused as unknown_member.
C5, C6, C77 = MIN_CLIENT_ID + 5, MIN_CLIENT_ID + 6, MIN_CLIENT_ID + 77
LOOPS = ["asyncio"] + (["uvloop"] if uvloop_available() else [])

Received = list[tuple[list[Any], tuple[str, int]]]


@pytest.fixture(params=LOOPS)
def run(request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    """run(coroutine_function) on a fresh loop of one kind; the loop must end clean."""
    loops: list[asyncio.AbstractEventLoop] = []

    def runner(main: Callable[[], Awaitable[Any]], timeout_s: float = 10.0) -> Any:
        loop = new_event_loop(request.param)
        loops.append(loop)
        try:
            return loop.run_until_complete(asyncio.wait_for(main(), timeout_s))
        finally:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            assert not pending, f"tasks left running: {pending}"

    yield runner


async def until(predicate: Callable[[], bool], timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.002)


async def pair(
    limits: Limits | None = None, **options: Any,
) -> tuple[UdpTransport, UdpTransport, Received, Received]:
    """Nodes 1 and 2, peers of each other; returns both and what each received."""
    got_1: Received = []
    got_2: Received = []
    one = UdpTransport(1, LOCAL, {}, KEY, limits=limits,
                       on_messages=lambda m, a: got_1.append((m, a)), **options)
    two = UdpTransport(2, LOCAL, {}, KEY, limits=limits,
                       on_messages=lambda m, a: got_2.append((m, a)), **options)
    await one.start()
    await two.start()
    await one.set_peers({2: two.address})
    await two.set_peers({1: one.address})
    return one, two, got_1, got_2


async def close_all(*transports: UdpTransport) -> None:
    for transport in transports:
        transport.close()
    for transport in transports:
        await transport.wait_closed()


def flat(received: Received) -> list[Any]:
    return [message for batch, _ in received for message in batch]


def heartbeat(src: int, dst: int, index: int, context: bytes = b"") -> Any:
    return Message(MessageType.HEARTBEAT, src=src, dst=dst, term=3, index=index,
                   context=context)


def greedy_frames(sizes: list[int], budget: int) -> int:
    """Naive oracle: frames needed packing sizes in order, first fit."""
    frames, used = 0, budget
    for size in sizes:
        if used + size > budget:
            frames, used = frames + 1, 0
        used += size
    return frames


def raw_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(LOCAL)
    return sock


def dropped(transport: UdpTransport, reason: str) -> int:
    return int(transport.stats()["dropped"][reason])


# ---------------------------------------------------------------------- exchange and batching


def test_two_transports_exchange_batches(run: Callable[..., Any]) -> None:
    async def main() -> None:
        one, two, got_1, got_2 = await pair()
        to_two = [heartbeat(1, 2, i, b"ping") for i in range(5)]
        to_one = [Message(MessageType.APPEND_RESPONSE, src=2, dst=1, term=3, index=9,
                          reject=True, reject_hint=4, reject_term=2)]
        one.send(to_two)
        two.send(to_one)
        await until(lambda: len(flat(got_2)) == 5 and len(flat(got_1)) == 1)
        assert flat(got_2) == to_two
        assert flat(got_1) == to_one
        assert got_2[0][1] == one.address  # the datagram's source address
        assert got_1[0][1] == two.address
        s1, s2 = one.stats(), two.stats()
        assert s1["datagrams_sent"] == 1 and s2["datagrams_received"] == 1
        assert s1["bytes_sent"] == s2["bytes_received"]
        assert s1["messages_sent"] == 5 and s2["messages_received"] == 5
        assert not any(s1["dropped"].values()) and not any(s2["dropped"].values())
        await close_all(one, two)

    run(main)


def test_messages_of_one_turn_coalesce_into_few_datagrams(run: Callable[..., Any]) -> None:
    async def main() -> None:
        one, two, _, got_2 = await pair()
        messages = [heartbeat(1, 2, i, b"x" * 200) for i in range(2000)]
        for start in range(0, 2000, 10):  # 200 send() calls in one loop turn
            one.send(messages[start:start + 10])
        await until(lambda: len(flat(got_2)) == 2000)
        assert flat(got_2) == messages  # order kept across datagrams
        sizes = [codec.encoded_size(m) for m in messages]
        budget = Limits().max_datagram_bytes - codec.FRAME_OVERHEAD
        assert one.stats()["datagrams_sent"] == greedy_frames(sizes, budget) == len(got_2)
        assert len(got_2) == -(-sum(sizes) // budget)  # no datagram left half empty here
        await close_all(one, two)

    run(main)


def test_frames_respect_the_datagram_and_message_limits(run: Callable[..., Any]) -> None:
    async def main() -> None:
        limits = Limits(max_datagram_bytes=1400, max_messages_per_frame=8)
        one, two, _, got_2 = await pair(limits)
        small = [heartbeat(1, 2, i) for i in range(20)]          # count-bound: 8 + 8 + 4
        large = [heartbeat(1, 2, i, b"y" * 500) for i in range(5)]  # size-bound: 2 + 2 + 1
        one.send(small)
        await until(lambda: len(flat(got_2)) == 20)
        assert [len(batch) for batch, _ in got_2] == [8, 8, 4]
        got_2.clear()
        one.send(large)
        await until(lambda: len(flat(got_2)) == 5)
        assert [len(batch) for batch, _ in got_2] == [2, 2, 1]
        assert two.stats()["bytes_received"] <= 1400 * two.stats()["datagrams_received"]
        await close_all(one, two)

    run(main)


def test_separate_turns_send_separate_datagrams_and_flush_forces(run: Callable[..., Any]) -> None:
    async def main() -> None:
        one, two, _, got_2 = await pair()
        one.send([heartbeat(1, 2, 1)])
        await asyncio.sleep(0)  # the flush runs at the end of this turn
        one.send([heartbeat(1, 2, 2)])
        await until(lambda: len(got_2) == 2)
        one.send([heartbeat(1, 2, 3)])
        one.flush()  # written now, not at the end of the turn
        assert one.stats()["datagrams_sent"] == 3
        await until(lambda: len(got_2) == 3)
        await close_all(one, two)

    run(main)


def test_one_mebibyte_entry_travels_in_fragments(run: Callable[..., Any]) -> None:
    async def main() -> None:
        one, two, _, got_2 = await pair()
        entry = Entry(term=3, index=10, data=bytes(range(256)) * 4096)  # 1 MiB
        append = Message(MessageType.APPEND, src=1, dst=2, term=3, log_term=3, index=9,
                         commit=8, entries=[entry])
        before, after = heartbeat(1, 2, 1), heartbeat(1, 2, 2)
        one.send([before, append, after])
        await until(lambda: len(flat(got_2)) == 3)
        assert flat(got_2) == [before, append, after]  # order kept around the fragments
        frame_bytes = codec.FRAME_OVERHEAD + codec.encoded_size(append)
        chunk_bytes = Limits().max_datagram_bytes - codec.FRAGMENT_OVERHEAD
        parts = -(-frame_bytes // chunk_bytes)
        s1, s2 = one.stats(), two.stats()
        assert s1["fragments_sent"] == s2["fragments_received"] == parts == 17
        assert s1["datagrams_sent"] == parts + 2
        assert s2["frames_reassembled"] == 1 and s2["partial_frames"] == 0
        await close_all(one, two)

    run(main)


def test_reply_to_a_client_address_that_is_not_a_peer(run: Callable[..., Any]) -> None:
    async def main() -> None:
        client_id = (1 << 63) + 12345  # client ids are random u64
        answers: Received = []
        server = UdpTransport(1, LOCAL, {}, KEY)
        client = UdpTransport(client_id, LOCAL, {}, KEY,
                              on_messages=lambda m, a: answers.append((m, a)))

        def serve(messages: list[Any], source: tuple[str, int]) -> None:
            server.send_to_address(source, [
                Message(MessageType.CLIENT_RESPONSE, src=1, dst=m.src, seq=m.seq,
                        context=b"ok:" + m.context) for m in messages])

        server.on_messages = serve
        await server.start()
        await client.start()
        request = Message(MessageType.CLIENT_REQUEST, src=client_id, seq=7, status=1,
                          context=b"put k v")
        client.send_to_address(server.address, [request])
        await until(lambda: len(answers) == 1)
        (reply,), source = answers[0]
        assert (reply.dst, reply.seq, reply.context) == (client_id, 7, b"ok:put k v")
        assert source == server.address
        await close_all(server, client)

    run(main)


# ---------------------------------------------------------------------- receive guards


def test_garbage_wrong_key_and_wrong_cluster_are_dropped_and_counted(
    run: Callable[..., Any],
) -> None:
    async def main() -> None:
        one, two, _, got_2 = await pair(cluster_id=5)
        wrong_key = codec.FrameCodec(OTHER_KEY, 5).encode(1, 1, 1, [heartbeat(1, 2, 1)], 2)
        wrong_cluster = codec.FrameCodec(KEY, 9).encode(1, 1, 1, [heartbeat(1, 2, 1)], 2)
        wrong_receiver = codec.FrameCodec(KEY, 5).encode(1, 1, 2, [heartbeat(1, 2, 1)], 3)
        valid = codec.FrameCodec(KEY, 5).encode(1, 1, 1, [heartbeat(1, 2, 1)], 2)
        old_version = b"\x02" + valid[1:]
        flipped = bytearray(valid)
        flipped[50] ^= 0x01
        garbage = [b"", b"\x00", valid[:-1], valid[:30], bytes(flipped), wrong_key]
        # The version byte is read first: random bytes mostly count as another version.
        other_version = [old_version, b"garbage" * 50, b"\xff" * 2000]
        hostile = [*garbage, wrong_cluster, wrong_receiver, *other_version]
        with raw_socket() as sock:
            for datagram in hostile:
                sock.sendto(datagram, two.address)
        await until(lambda: two.stats()["datagrams_received"] == len(hostile))
        counts = two.stats()["dropped"]
        assert counts["decode_error"] == len(garbage)
        assert (counts["wrong_cluster"], counts["wrong_receiver"], counts["old_version"]) == (
            1, 1, len(other_version))
        assert got_2 == []
        # The endpoint still works after all of it.
        one.send([heartbeat(1, 2, 5)])
        await until(lambda: len(got_2) == 1)
        assert two.stats()["datagrams_received"] == len(hostile) + 1
        await close_all(one, two)

    run(main)


def test_replayed_and_older_epoch_datagrams_are_refused(run: Callable[..., Any]) -> None:
    async def main() -> None:
        one, two, _, got_2 = await pair()
        frames = codec.FrameCodec(KEY)
        first = frames.encode(1, 100, 1, [heartbeat(1, 2, 1)])
        second = frames.encode(1, 100, 2, [heartbeat(1, 2, 2)])
        older_epoch = frames.encode(1, 99, 50, [heartbeat(1, 2, 3)])
        with raw_socket() as sock:
            for datagram in (first, first, second, first, second, older_epoch):
                sock.sendto(datagram, two.address)
        await until(lambda: two.stats()["datagrams_received"] == 6)
        assert [m.index for m in flat(got_2)] == [1, 2]
        assert dropped(two, "replayed") == 4
        await close_all(one, two)

    run(main)


def test_a_restarted_sender_supersedes_its_old_epoch(run: Callable[..., Any]) -> None:
    async def main() -> None:
        old, two, _, got_2 = await pair()
        old.send([heartbeat(1, 2, 1)])
        await until(lambda: len(got_2) == 1)
        captured = codec.FrameCodec(KEY).encode(1, old.epoch, 1000, [heartbeat(1, 2, 99)])
        old.close()
        await old.wait_closed()
        new = UdpTransport(1, LOCAL, {2: two.address}, KEY)
        await new.start()
        assert new.epoch > old.epoch
        new.send([heartbeat(1, 2, 2)])
        await until(lambda: len(got_2) == 2)
        with raw_socket() as sock:  # a frame of the old incarnation, never seen before
            sock.sendto(captured, two.address)
        await until(lambda: dropped(two, "replayed") == 1)
        assert [m.index for m in flat(got_2)] == [1, 2]
        await close_all(new, two)

    run(main)


def test_misaddressed_messages_and_senders_are_dropped(run: Callable[..., Any]) -> None:
    async def main() -> None:
        got: Received = []
        node = UdpTransport(2, LOCAL, {1: ("127.0.0.1", 9)}, KEY, accept_unknown_senders=False,
                            on_messages=lambda m, a: got.append((m, a)))
        await node.start()
        frames = codec.FrameCodec(KEY)
        mixed = frames.encode(1, 5, 1, [
            heartbeat(1, 2, 1),   # fine
            heartbeat(3, 2, 2),   # src is not the frame's sender
            heartbeat(1, 4, 3),   # addressed to node 4
            heartbeat(1, 0, 4),   # dst 0: to whoever receives it (e.g. a client request)
        ])
        stranger = frames.encode(C77, 5, 1, [heartbeat(C77, 2, 1)])
        not_a_member = frames.encode(77, 5, 1, [heartbeat(77, 2, 1)])
        reflected = frames.encode(2, 5, 1, [heartbeat(2, 2, 1)])
        with raw_socket() as sock:
            for datagram in (mixed, stranger, not_a_member, reflected):
                sock.sendto(datagram, node.address)
        await until(lambda: node.stats()["datagrams_received"] == 4)
        assert [m.index for m in flat(got)] == [1, 4]
        counts = node.stats()["dropped"]
        assert (counts["src_mismatch"], counts["wrong_dst"]) == (1, 1)
        assert (counts["unknown_sender"], counts["reflected"]) == (1, 1)
        assert counts["unknown_member"] == 1
        await close_all(node)

    run(main)


def test_unknown_destination_is_dropped_and_counted(run: Callable[..., Any]) -> None:
    async def main() -> None:
        one, two, _, got_2 = await pair()
        one.send([heartbeat(1, 3, 1), heartbeat(1, 2, 2), heartbeat(1, 4, 3)])
        await until(lambda: len(got_2) == 1)
        assert [m.index for m in flat(got_2)] == [2]
        assert dropped(one, "unknown_destination") == 2
        await close_all(one, two)

    run(main)


def test_a_raising_callback_is_counted_and_the_endpoint_survives(
    run: Callable[..., Any],
) -> None:
    async def main() -> None:
        one, two, _, got_2 = await pair()
        calls: list[int] = []

        def explode(messages: list[Any], source: tuple[str, int]) -> None:
            calls.append(len(messages))
            raise RuntimeError("state machine bug")

        two.on_messages = explode
        one.send([heartbeat(1, 2, 1)])
        await until(lambda: dropped(two, "callback_error") == 1)
        two.on_messages = lambda m, a: got_2.append((m, a))
        one.send([heartbeat(1, 2, 2)])
        await until(lambda: len(got_2) == 1)
        assert calls == [1] and two.is_open
        await close_all(one, two)

    run(main)


# ---------------------------------------------------------------------- reassembly bounds


def fragments(sender: int, epoch: int, fragment_id: int, parts: int, first_counter: int,
              chunk: bytes = b"c" * 100) -> list[bytes]:
    frames = codec.FrameCodec(KEY)
    return [frames.encode_fragment(sender, epoch, first_counter + part, fragment_id, part,
                                   parts, chunk) for part in range(parts)]


def test_incomplete_fragmented_frames_expire(run: Callable[..., Any]) -> None:
    async def main() -> None:
        node = UdpTransport(2, LOCAL, {}, KEY, reassembly_timeout_s=0.05,
                            on_messages=lambda m, a: None)
        await node.start()
        with raw_socket() as sock:
            for datagram in fragments(C5, 1, fragment_id=1, parts=3, first_counter=1)[:2]:
                sock.sendto(datagram, node.address)
        await until(lambda: node.stats()["partial_frames"] == 1)
        await until(lambda: dropped(node, "reassembly_expired") == 1, timeout_s=2.0)
        assert node.stats()["partial_frames"] == 0
        await close_all(node)

    run(main)


def test_reassembly_is_bounded_per_sender_and_in_bytes(run: Callable[..., Any]) -> None:
    async def main() -> None:
        limits = Limits(max_datagram_bytes=1000, max_reassembly_frames=2,
                        max_reassembly_bytes=10_000)
        node = UdpTransport(2, LOCAL, {}, KEY, limits=limits, on_messages=lambda m, a: None)
        await node.start()
        with raw_socket() as sock:
            # Sender 5 starts three frames (4 parts, 4,000 bytes reserved each), one part of
            # each: the third evicts the first (per-sender bound).
            for fragment_id in (1, 2, 3):
                sock.sendto(fragments(C5, 1, fragment_id, 4, fragment_id * 10)[0], node.address)
            await until(lambda: node.stats()["fragments_received"] == 3)
            assert dropped(node, "reassembly_evicted") == 1
            assert node.stats()["partial_frames"] == 2
            # Sender 6: 8,000 bytes are reserved, 4,000 more would pass 10,000 (byte bound).
            sock.sendto(fragments(C6, 1, 1, 4, 1)[0], node.address)
            # A frame claiming more parts than could ever be reassembled is refused outright.
            sock.sendto(fragments(C6, 1, 2, 11, 20)[0], node.address)
            await until(lambda: node.stats()["fragments_received"] == 5)
        counts = node.stats()["dropped"]
        assert (counts["reassembly_overflow"], counts["reassembly_invalid"]) == (1, 1)
        assert node.stats()["partial_frames"] == 2
        await close_all(node)

    run(main)


def test_fragments_that_do_not_form_a_frame_are_refused(run: Callable[..., Any]) -> None:
    async def main() -> None:
        got: Received = []
        node = UdpTransport(2, LOCAL, {}, KEY, on_messages=lambda m, a: got.append((m, a)))
        await node.start()
        with raw_socket() as sock:
            for datagram in fragments(C5, 1, fragment_id=1, parts=2, first_counter=1):
                sock.sendto(datagram, node.address)  # joined chunks are not a frame
            await until(lambda: dropped(node, "reassembly_invalid") == 1)
            # A sender's chunks carrying another sender's frame are refused too.
            inner = codec.FrameCodec(KEY).encode(C6, 1, 1, [heartbeat(C6, 2, 1)])
            half = len(inner) // 2
            frames = codec.FrameCodec(KEY)
            for part, chunk in enumerate((inner[:half], inner[half:])):
                sock.sendto(frames.encode_fragment(C5, 1, 10 + part, 2, part, 2, chunk),
                            node.address)
            await until(lambda: dropped(node, "reassembly_invalid") == 2)
        assert got == [] and node.stats()["partial_frames"] == 0
        await close_all(node)

    run(main)


# ---------------------------------------------------------------------- fault filter


def test_fault_filter_partitions_and_heals(run: Callable[..., Any]) -> None:
    async def main() -> None:
        one, two, got_1, got_2 = await pair()
        one.set_fault_filter(drop_to={2})
        two.set_fault_filter(drop_from={1})
        one.send([heartbeat(1, 2, 1)])
        two.send([heartbeat(2, 1, 1)])
        await until(lambda: len(got_1) == 1)  # 2 -> 1 still flows
        await asyncio.sleep(0.02)
        assert got_2 == [] and dropped(one, "filtered") == 1
        one.clear_fault_filter()
        one.send([heartbeat(1, 2, 2)])  # now blocked on the receive side
        await until(lambda: dropped(two, "filtered") == 1)
        two.set_fault_filter()  # no arguments: healed
        one.send([heartbeat(1, 2, 3)])
        await until(lambda: len(got_2) == 1)
        assert [m.index for m in flat(got_2)] == [3]
        await close_all(one, two)

    run(main)


def test_fault_filter_loss_duplicate_and_delay(run: Callable[..., Any]) -> None:
    async def main() -> None:
        one, two, _, got_2 = await pair()
        one.set_fault_filter(loss=1.0)
        one.send([heartbeat(1, 2, 1)])
        await asyncio.sleep(0.02)
        assert got_2 == [] and dropped(one, "filtered") == 1
        one.set_fault_filter(duplicate=1.0)
        one.send([heartbeat(1, 2, 2)])
        await until(lambda: dropped(two, "replayed") == 1)  # the copy is refused
        assert [m.index for m in flat(got_2)] == [2]
        one.set_fault_filter(delay_ms=80)
        started = time.monotonic()
        one.send([heartbeat(1, 2, 3)])
        await until(lambda: len(got_2) == 2)
        assert time.monotonic() - started >= 0.07
        await close_all(one, two)

    run(main)


def test_fault_filter_is_seeded(run: Callable[..., Any]) -> None:
    async def delivered(seed: int) -> list[int]:
        one, two, _, got_2 = await pair()
        one.set_fault_filter(loss=0.5, seed=seed)
        for index in range(60):
            one.send([heartbeat(1, 2, index)])
            one.flush()  # one datagram each, so each draws once
        await until(lambda: len(got_2) + dropped(one, "filtered") == 60)
        await asyncio.sleep(0.01)
        await close_all(one, two)
        return [m.index for m in flat(got_2)]

    async def main() -> None:
        first, again, other = await delivered(1), await delivered(1), await delivered(2)
        assert first == again and first != other
        assert 10 < len(first) < 50

    run(main)


def test_close_is_clean_and_idempotent(run: Callable[..., Any]) -> None:
    async def main() -> None:
        one, two, _, got_2 = await pair(reassembly_timeout_s=30.0)
        one.set_fault_filter(delay_ms=10_000)  # a timer pending at close
        one.send([heartbeat(1, 2, 1)])
        one.flush()
        with raw_socket() as sock:  # a partial frame (and its sweep timer) pending at close
            sock.sendto(fragments(1, one.epoch, 1, 2, 10**6)[0], two.address)
        await until(lambda: two.stats()["partial_frames"] == 1)
        one.send([heartbeat(1, 2, 2)])  # queued, not yet flushed
        await close_all(one, two)
        one.close()
        await one.wait_closed()
        assert not one.is_open and not two.is_open
        one.send([heartbeat(1, 2, 3)])
        assert dropped(one, "closed") == 1
        assert got_2 == []
        loop = asyncio.get_running_loop()
        scheduled = getattr(loop, "_scheduled", [])  # stock asyncio exposes its timers
        ours = [h for h in scheduled if "UdpTransport" in repr(h) and not h.cancelled()]
        assert ours == []

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(main)
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


# ---------------------------------------------------------------------- small pieces


def test_boot_epochs_strictly_increase() -> None:
    epochs = [new_boot_epoch() for _ in range(1000)]
    assert all(a < b for a, b in zip(epochs, epochs[1:], strict=False))
    assert epochs[0] >= time.time_ns() - 10**9


def test_stats_name_every_drop_reason_and_bad_options_raise() -> None:
    transport = UdpTransport(1, LOCAL, {2: "127.0.0.1:7002"}, KEY)
    assert set(transport.stats()["dropped"]) == set(DROP_REASONS)
    transport.send([heartbeat(1, 2, 1)])  # not started: dropped and counted, no raise
    assert dropped(transport, "closed") == 1
    with pytest.raises(ConfigError):
        UdpTransport(0, LOCAL, {}, KEY)
    with pytest.raises(ConfigError):
        UdpTransport(1, LOCAL, {}, b"short")
    with pytest.raises(ConfigError):
        transport.set_fault_filter(loss=1.5)


def test_event_loop_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.aio import loop as loops

    best = "uvloop" if uvloop_available() else "asyncio"
    for kind, expected in (("auto", best), ("asyncio", "asyncio"), (None, best)):
        loop = new_event_loop(kind)
        try:
            assert loops.loop_name(loop) == expected
        finally:
            loop.close()
    monkeypatch.setenv("ENGINE_EVENT_LOOP", "asyncio")
    loop = new_event_loop()
    try:
        assert loops.loop_name(loop) == "asyncio"
    finally:
        loop.close()
    with pytest.raises(ConfigError):
        new_event_loop("tokio")
    previous = asyncio.get_event_loop_policy()
    try:
        assert loops.install_best_event_loop("auto") == best
        assert asyncio.run(_running_loop_name()) == best
    finally:
        asyncio.set_event_loop_policy(previous)


async def _running_loop_name() -> str:
    from engine.aio.loop import loop_name

    return loop_name()

"""engine.aio.snapshot_serving without a cluster: the request and answer encodings, the
client's chunk assembly and verification, the idle expiry and the chunk size bounds."""

from __future__ import annotations

import pytest

from engine import errors
from engine._core import codec
from engine.aio import snapshot_serving as serving
from engine.limits import Limits
from engine.messages import AdminOp, Message, MessageType
from engine.replication.snapshot import ENVELOPE_OVERHEAD, decode_snapshot, encode_snapshot
from engine.types import Snapshot

ENVELOPE = encode_snapshot(Snapshot(42, 3, bytes(range(256)) * 40))


def assemble(chunks: list[tuple[int, bytes]], total: int = len(ENVELOPE)) -> bytes:
    assembly = serving.SnapshotAssembly(42, 3, total, 1 << 20)
    for offset, chunk in chunks:
        assembly.add(offset, chunk)
    return assembly.envelope()


def chunks_of(envelope: bytes, size: int) -> list[tuple[int, bytes]]:
    return [(i, envelope[i:i + size]) for i in range(0, len(envelope), size)]


def test_chunks_in_order_give_back_the_verified_envelope() -> None:
    assert assemble(chunks_of(ENVELOPE, 1000)) == ENVELOPE
    assert decode_snapshot(assemble(chunks_of(ENVELOPE, 1))).index == 42


def test_a_corrupted_chunk_fails_the_checksum() -> None:
    chunks = chunks_of(ENVELOPE, 1000)
    offset, chunk = chunks[3]
    chunks[3] = (offset, chunk[:10] + bytes([chunk[10] ^ 1]) + chunk[11:])
    with pytest.raises(errors.SnapshotCorrupt, match="checksum mismatch"):
        assemble(chunks)


@pytest.mark.parametrize("case", ["gap", "overlap", "past_end", "empty", "short"])
def test_chunks_that_do_not_tile_the_envelope_are_refused(case: str) -> None:
    chunks = chunks_of(ENVELOPE, 1000)
    if case == "gap":
        del chunks[2]
    elif case == "overlap":
        chunks[2] = (chunks[2][0] - 1, chunks[2][1])
    elif case == "past_end":
        chunks[-1] = (chunks[-1][0], chunks[-1][1] + b"x")
    elif case == "empty":
        chunks[2] = (chunks[2][0], b"")
    else:
        del chunks[-1]
    with pytest.raises(errors.SnapshotCorrupt):
        assemble(chunks)


def test_an_announced_size_outside_the_limits_is_refused_before_any_chunk() -> None:
    with pytest.raises(errors.SnapshotCorrupt, match="Limits.max_snapshot_bytes"):
        serving.SnapshotAssembly(1, 1, (1 << 20) + 1, 1 << 20)
    with pytest.raises(errors.SnapshotCorrupt):
        serving.SnapshotAssembly(1, 1, ENVELOPE_OVERHEAD - 1, 1 << 20)


def test_an_envelope_of_another_snapshot_than_announced_is_refused() -> None:
    other = encode_snapshot(Snapshot(41, 3, b"data"))
    assembly = serving.SnapshotAssembly(42, 3, len(other), 1 << 20)
    assembly.add(0, other)
    with pytest.raises(errors.SnapshotCorrupt, match="announced index 42"):
        assembly.envelope()


def test_snapshot_corrupt_is_a_decode_error_and_a_storage_error() -> None:
    from engine.cli import exitcodes

    assert issubclass(errors.SnapshotCorrupt, errors.DecodeError)
    assert exitcodes.for_error(errors.SnapshotCorrupt("x")) == exitcodes.STORAGE


def test_requests_round_trip_and_malformed_ones_are_typed_errors() -> None:
    assert serving.decode_request(serving.encode_request(7, 2, 100, 500)) == (7, 2, 100, 500)
    assert serving.decode_request(serving.encode_request(0, 0, 0, 1)) == (0, 0, 0, 1)
    bad = [b"", b"\xff", b"[]", b'{"index": 1}', b"[" * 100_000,
           b'{"index": 1, "term": 1, "offset": -1, "size": 1}',
           b'{"index": 1, "term": 1, "offset": 18446744073709551616, "size": 1}',
           b'{"index": 1, "term": 1, "offset": 0, "size": 0}',
           b'{"index": 1, "term": 1, "offset": 0.5, "size": 1}',
           b'{"index": 1, "term": 1, "offset": true, "size": 1}',
           b'{"index": 1, "term": 1, "offset": "0", "size": 1}',
           b'{"index": 1, "term": 0, "offset": 0, "size": 1}',
           b'{"index": 0, "term": 0, "offset": 5, "size": 1}']
    for context in bad:
        with pytest.raises(errors.DecodeError):
            serving.decode_request(context)


def test_answers_carry_header_and_chunk() -> None:
    context = serving.encode_reply(42, 3, 9000, 100, b"abc")
    assert serving.decode_reply(context) == (42, 3, 9000, 100, b"abc")
    with pytest.raises(errors.SnapshotCorrupt):
        serving.decode_reply(context[:31])


def test_the_largest_chunk_answer_fits_one_datagram() -> None:
    for limits in (Limits(), Limits(max_datagram_bytes=1400), Limits(max_datagram_bytes=512)):
        size = serving.max_chunk_bytes(limits)
        assert size > 0
        answer = Message(MessageType.ADMIN_RESPONSE, src=(1 << 64) - 1, dst=(1 << 64) - 1,
                         seq=(1 << 64) - 1, status=4,
                         context=serving.encode_reply(1, 1, 1, 1, b"x" * size))
        assert codec.encoded_size(answer) + codec.FRAME_OVERHEAD <= limits.max_datagram_bytes


class _FakeNode:
    """What _chunk_capacity reads of a Node."""

    def __init__(self, limits: Limits) -> None:
        self.config = type("Config", (), {"limits": limits})()


def test_a_request_that_did_not_opt_in_gets_at_most_the_amplification_bound() -> None:
    limits = Limits()
    request = Message(MessageType.ADMIN, src=1 << 62, seq=1, status=AdminOp.SNAPSHOT_CHUNK,
                      context=serving.encode_request(42, 3, 0, 60_000))
    fake: serving.Node = _FakeNode(limits)  # type: ignore[assignment]
    capacity = serving.SnapshotServing._chunk_capacity(fake, request, 60_000)
    answer = Message(MessageType.ADMIN_RESPONSE, src=1, dst=1 << 62, seq=1,
                     context=serving.encode_reply(42, 3, 99_999, 0, b"x" * capacity))
    allowed = limits.max_reply_amplification * (codec.encoded_size(request)
                                                + codec.FRAME_OVERHEAD)
    assert 0 < codec.encoded_size(answer) + codec.FRAME_OVERHEAD <= allowed
    request.commit = 1 << 30   # opted in: one datagram's worth
    assert serving.SnapshotServing._chunk_capacity(fake, request, 1 << 20) == (
        serving.max_chunk_bytes(limits))


def test_a_held_snapshot_is_dropped_once_idle_for_the_timeout() -> None:
    state = serving.SnapshotServing()
    state.held = serving._Held(42, 3, ENVELOPE, now=100.0)
    assert not state.expire(100.0 + state.idle_timeout_s - 0.001)
    assert state.held is not None
    state.held.last_used = 120.0   # served meanwhile: the idle time counts from there
    assert not state.expire(100.0 + state.idle_timeout_s)
    assert state.expire(120.0 + state.idle_timeout_s)
    assert state.held is None

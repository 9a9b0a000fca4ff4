"""KVStore's coordination wiring (engine.kv.coord): leased and fenced puts, lease ends
deleting their keys with DELETE events, watch pages, the fast path's events, EKV3 snapshots
(EKV2 still restoring), and two replicas agreeing byte for byte."""

from __future__ import annotations

import json
import random

import pytest

from engine.coord.commands import Command, CoordOp, encode_command
from engine.errors import DecodeError
from engine.kv import KVStore
from engine.kv import coord as wire
from engine.kv.commands import Status, decode_result, encode_delete, encode_put
from engine.limits import Limits


class Log:
    def __init__(self, store: KVStore) -> None:
        self.store = store
        self.index = 0

    def __call__(self, command: bytes) -> object:
        self.index += 1
        return decode_result(self.store.apply(self.index, command))

    def coord(self, **fields: object) -> dict[str, object]:
        result = self(wire.encode_coord(encode_command(Command(**fields))))  # type: ignore[arg-type]
        assert result.status == Status.OK, result  # type: ignore[attr-defined]
        return json.loads(result.value)  # type: ignore[attr-defined,no-any-return]


def page(store: KVStore, start: int, key: bytes = b"", *, prefix: bool = True,
         limit: int = 1_000) -> wire.WatchPage:
    result = decode_result(store.query(wire.encode_coord_query(
        wire.Q_WATCH, start_revision=start, name=key, prefix=prefix, max_events=limit)))
    assert result.status == Status.OK, result
    return wire.decode_watch_page(result.value or b"")


def test_a_fenced_put_is_refused_once_a_newer_token_exists() -> None:
    log = Log(KVStore())
    a = log.coord(op=CoordOp.GRANT, ttl_ms=1_000)["lease"]["id"]  # type: ignore[index]
    b = log.coord(op=CoordOp.GRANT, ttl_ms=1_000)["lease"]["id"]  # type: ignore[index]
    assert log.coord(op=CoordOp.ACQUIRE, lease_id=a, name=b"L")["token"] == 1
    assert log.coord(op=CoordOp.ACQUIRE, lease_id=b, name=b"L")["token"] is None
    assert log(wire.encode_put_ex(b"r", b"a", fence_name=b"L", fence_token=1)).ok  # type: ignore[attr-defined]
    log.coord(op=CoordOp.EXPIRE, lease_id=a, generation=1)   # b is granted token 2
    refused = log(wire.encode_put_ex(b"r", b"stale", fence_name=b"L", fence_token=1))
    assert refused.status == Status.REFUSED  # type: ignore[attr-defined]
    error = wire.error_from_payload(refused.value)  # type: ignore[attr-defined]
    assert type(error).__name__ == "FencingTokenStale" and error.newest_token == 2  # type: ignore[attr-defined]
    assert log.store.get(b"r") == b"a"
    assert log(wire.encode_put_ex(b"r", b"b", fence_name=b"L", fence_token=2)).ok  # type: ignore[attr-defined]


def test_a_lease_end_deletes_the_keys_still_holding_its_puts_as_one_revision() -> None:
    store = KVStore()
    log = Log(store)
    lease = log.coord(op=CoordOp.GRANT, ttl_ms=1_000)["lease"]["id"]  # type: ignore[index]
    for key in (b"e/a", b"e/b", b"e/c"):
        assert log(wire.encode_put_ex(key, b"v", lease_id=lease)).ok  # type: ignore[attr-defined]
    log(encode_put(b"e/c", b"plain"))       # the fast path: e/c is no longer the lease's
    log(encode_delete(b"e/b"))              # deleted: detached
    revoke_at = log.index + 1
    log.coord(op=CoordOp.REVOKE, lease_id=lease)
    assert store.get(b"e/a") is None and store.get(b"e/c") == b"plain"
    events = page(store, 1, b"e/").events
    assert events[-1] == ("delete", b"e/a", None, revoke_at)
    assert [e[0] for e in events] == ["put", "put", "put", "put", "delete", "delete"]
    refused = log(wire.encode_put_ex(b"x", b"v", lease_id=lease))
    assert refused.status == Status.REFUSED  # type: ignore[attr-defined]


def test_watch_pages_end_at_revision_boundaries_and_resume_without_gaps() -> None:
    store = KVStore()
    log = Log(store)
    lease = log.coord(op=CoordOp.GRANT, ttl_ms=1_000)["lease"]["id"]  # type: ignore[index]
    for n in range(4):
        log(wire.encode_put_ex(b"k%d" % n, b"v", lease_id=lease))
    log.coord(op=CoordOp.REVOKE, lease_id=lease)   # four deletes at one revision
    seen: list[tuple[str, bytes, bytes | None, int]] = []
    cursor = 1
    while cursor <= store.applied_index:
        got = page(store, cursor, b"k", limit=1)
        seen += got.events
        cursor = got.next_revision
    assert len(seen) == 8 and [e[3] for e in seen] == sorted(e[3] for e in seen)
    assert page(store, 0).next_revision == store.applied_index + 1


def test_fast_path_puts_become_events_and_a_full_backlog_compacts_instead_of_a_gap() -> None:
    store = KVStore(Limits(watch_history_events=4))
    log = Log(store)
    for n in range(10):
        log(encode_put(b"k", b"%d" % n))   # no session: the compiled fast path
    got = page(store, 7, b"k", prefix=False)
    assert [(e[2], e[3]) for e in got.events] == [(b"6", 7), (b"7", 8), (b"8", 9), (b"9", 10)]
    refused = decode_result(store.query(wire.encode_coord_query(
        wire.Q_WATCH, start_revision=6, name=b"k", max_events=10)))
    assert refused.status == Status.REFUSED
    assert json.loads(refused.value or b"")["oldest"] == 7


def test_two_replicas_agree_and_ekv3_snapshots_round_trip() -> None:
    rng = random.Random(7)
    a, b = KVStore(), KVStore()
    logs = (Log(a), Log(b))
    commands: list[bytes] = []
    for _ in range(300):
        roll = rng.random()
        lease_id = rng.randint(1, 6)
        if roll < 0.15:
            raw = encode_command(Command(CoordOp.GRANT, ttl_ms=rng.randint(1, 9_000)))
        elif roll < 0.3:
            raw = encode_command(Command(CoordOp.ACQUIRE, lease_id=lease_id,
                                         name=rng.choice([b"x", b"y"])))
        elif roll < 0.4:
            raw = encode_command(Command(CoordOp.EXPIRE, lease_id=lease_id, generation=1))
        else:
            key = b"k%d" % rng.randint(0, 9)
            commands.append(rng.choice([
                encode_put(key, b"v"), encode_delete(key),
                wire.encode_put_ex(key, b"l", lease_id=lease_id),
                wire.encode_put_ex(key, b"f", fence_name=b"x", fence_token=rng.randint(1, 9))]))
            continue
        commands.append(wire.encode_coord(raw))
    for command in commands:
        assert [log(command) for log in logs][0] is not None
    assert a.snapshot() == b.snapshot() and a.snapshot()[:4] == b"EKV3"
    restored = KVStore()
    restored.restore(a.snapshot())
    assert restored == a and restored.snapshot() == a.snapshot()
    assert a.snapshot_fork()() == a.snapshot()
    with pytest.raises(DecodeError):
        KVStore().restore(a.snapshot()[:-3])


def test_an_ekv2_snapshot_restores_with_no_coordination_state() -> None:
    store = KVStore()
    log = Log(store)
    log(encode_put(b"k", b"v"))
    log.coord(op=CoordOp.GRANT, ttl_ms=1_000)
    ekv3 = store.snapshot()
    # EKV2 is EKV3's bytes before the coordination section, under the old magic.
    section = store._coord_section()
    ekv2 = b"EKV2" + ekv3[4:len(ekv3) - len(section)]
    old = KVStore()
    old.restore(ekv2)
    assert old.get(b"k") == b"v" and len(old.coord.leases) == 0
    assert old.watch_log.oldest_revision == store.applied_index + 1


def test_hostile_coordination_bytes_are_answered_never_raised() -> None:
    """Truncations and flipped bytes of every coordination command and query: each is
    answered (MALFORMED, REFUSED or applied), identically on two replicas."""
    rng = random.Random(11)
    a, b = KVStore(), KVStore()
    logs = (Log(a), Log(b))
    for log in logs:
        log.coord(op=CoordOp.GRANT, ttl_ms=1_000)
    samples = [
        wire.encode_coord(encode_command(Command(CoordOp.ACQUIRE, lease_id=1, name=b"L"))),
        wire.encode_coord(encode_command(Command(CoordOp.KEEPALIVE, lease_id=1)),
                          client_id=5, seq=1),
        wire.encode_put_ex(b"k", b"v", lease_id=1, fence_name=b"L", fence_token=1),
    ]
    queries = [wire.encode_coord_query(kind, lease_id=1, name=b"L", start_revision=1,
                                       max_events=3)
               for kind in (wire.Q_LOCK, wire.Q_WATCH, wire.Q_LEASES, wire.Q_LEASE,
                            wire.Q_ELECTION, 99)]
    for _ in range(400):
        sample = bytearray(rng.choice(samples))
        if rng.random() < 0.5:
            sample = sample[:rng.randrange(len(sample) + 1)]
        elif sample:
            sample[rng.randrange(len(sample))] ^= 1 << rng.randrange(8)
        answers = [log(bytes(sample)) for log in logs]
        assert answers[0] == answers[1]
        query = bytearray(rng.choice(queries))
        query = query[:rng.randrange(len(query) + 1)]
        assert decode_result(a.query(bytes(query))).status in (Status.OK, Status.MALFORMED,
                                                               Status.REFUSED)
    assert a.snapshot() == b.snapshot()


def test_fast_path_puts_of_big_values_stay_within_the_watch_byte_bound() -> None:
    limits = Limits(watch_history_bytes=10_000)
    store = KVStore(limits)
    log = Log(store)
    for n in range(200):
        log(encode_put(b"k", bytes([n]) * 1_000))
        assert store._pending_bytes <= 2 * limits.watch_history_bytes
    store.compact_watch(0)   # turns the queued PUTs into events, compacts nothing
    got = page(store, store.watch_log.oldest_revision, b"k", prefix=False)
    assert got.events and got.events[-1][3] == 200
    assert [e[3] for e in got.events] == list(range(got.events[0][3], 201))   # no gap
    assert store.watch_log.nbytes <= limits.watch_history_bytes
    refused = decode_result(store.query(wire.encode_coord_query(
        wire.Q_WATCH, start_revision=got.events[0][3] - 1, name=b"k", max_events=10)))
    assert refused.status == Status.REFUSED


@pytest.mark.parametrize("seed", range(4))
def test_replicas_keep_equal_watch_histories_whenever_they_serve_watches(seed: int) -> None:
    """The fast path's events are made when read; a replica that served watches in between
    (flushing early) ends with the same history and snapshot as one that did not."""
    rng = random.Random(seed)
    limits = Limits(watch_history_events=7, watch_history_bytes=900)
    reading, idle = KVStore(limits), KVStore(limits)
    logs = (Log(reading), Log(idle))
    for _ in range(400):
        roll = rng.random()
        if roll < 0.8:
            command = encode_put(b"k%d" % rng.randint(0, 5), bytes(rng.randint(0, 120)))
        elif roll < 0.9:
            command = encode_delete(b"k%d" % rng.randint(0, 5))
        else:
            command = wire.encode_coord(encode_command(Command(CoordOp.GRANT, ttl_ms=9)))
        for log in logs:
            log(command)
        if rng.random() < 0.2:
            reading.query(wire.encode_coord_query(wire.Q_WATCH, start_revision=reading.
                                                  applied_index, max_events=5))
    assert reading.snapshot() == idle.snapshot()
    assert reading.watch_log.nbytes <= limits.watch_history_bytes

"""Micro-benchmarks of engine/_core's hot paths: both twins (Cython and pure Python) in one run.

Run (pytest-benchmark, from the bench extra; pyproject's addopts turn the plugin off for the
test suite, `-p benchmark` turns it back on):

    python -m pytest bench/test_micro.py -p benchmark --benchmark-only
    python -m pytest bench/test_micro.py -p benchmark --benchmark-only -k codec     # one family
    python -m pytest bench/test_micro.py -p benchmark --benchmark-only --benchmark-save=baseline
    python -m pytest bench/test_micro.py -p benchmark --benchmark-only --benchmark-compare
    python -m pytest bench/test_micro.py -p benchmark --benchmark-only \\
        --benchmark-compare=0001 --benchmark-compare-fail=median:10%

`--benchmark-save=baseline` stores the run under .benchmarks/<machine id>/NNNN_baseline.json;
`--benchmark-compare` puts the newest saved run (or run NNNN) beside this one in the tables.

Each benchmark group holds one workload: its rows are the twins ("c", "py") and, for some, a
variant of the workload (payload encryption, the tag alone, a plain-Python baseline). After
the tables, a summary prints each group's Cython/Python ratio and each row's ratio to the
group's first row (medians; bench/conftest.py). Every figure should be quoted with its
conditions: pytest-benchmark's header prints the machine and Python.

Workloads:
  codec     Raft's replication hot path, authenticated frames: 64x1 = one frame of 64 APPENDs
            of one 100-byte entry each (~11.6 KB), 1x64 = one APPEND of 64 such entries. Every
            encode computes and every decode verifies the AES-256-GCM tag (the same
            `cryptography` call in both twins), a fixed cost that bounds the ratio: rows
            "gmac" (the tag alone, one computed and one verified) and "null-aead" (the codec's
            own work, a constant tag) show its share; "encrypted" is the same round trip with
            payload encryption (FrameCodec(encrypt=True)); "groups" the same round trip with
            every APPEND in its own consensus group (ids from 10,000: a 2-byte varint each).
  log       10,000 entries of 100 bytes appended to a fresh log and read back; 10,000 term_at.
  quorum    committed_index of 5 voters; the batched index of 10,000 groups x 5 voters, beside
            a plain Python loop over the rows (lists, or the ndarray's rows).
  kvput     10,000 session-less PUTs of 100-byte values over 4,096 keys applied with
            apply_put; the same with a session header parsed with parse_put.
  kvstore   KVStore.apply of 10,000 session-less PUTs of 100-byte values: into a fresh store
            (each creates its key: the map, its revision and the key order,
            engine/kv/store.py), and again into the store holding them (overwrites: the map,
            the revision and the replaced version kept for MVCC; and with
            Limits.mvcc_retention_s=0, no history kept); a SCAN query of 100 keys
            of 100,000, decoded. Run with the core engine.kv loaded (the compiled one when
            built): one row each.
Inputs are built before timing starts (they come from the log or the network in the system).
tests/bench/test_micro_bodies.py runs every body once, untimed, in the test suite.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from engine._core import quorum_py
from engine.kv import commands
from engine.testing import implementations

Body = Callable[[], Any]


@dataclass(frozen=True)
class Case:
    """One row: `prepare(impl)` builds the inputs and returns the timed body; `check` asserts
    on the body's result. `twins`: one row per implementation, else one row in total."""

    group: str
    prepare: Callable[[SimpleNamespace], Body]
    check: Callable[[Any], bool]
    twins: bool = True


# ---------------------------------------------------------------- codec

KEY = bytes(range(32))
CLUSTER_ID = 1
SHAPES = {"64x1": (64, 1), "1x64": (1, 64)}


def append_messages(codec: ModuleType, messages: int, entries: int) -> list[Any]:
    """`messages` APPENDs of `entries` 100-byte entries each (type 5 = MessageType.APPEND)."""
    return [
        codec.Message(
            5, src=1, dst=2, term=7, log_term=7, index=1000 + k * entries, commit=1000,
            entries=[
                codec.Entry(7, 1001 + k * entries + j, bytes([j]) * 100) for j in range(entries)
            ],
        )
        for k in range(messages)
    ]


class NullAead:
    """Stands in for a (sender, epoch)'s AESGCM to time the codec's own work: a constant tag
    that always verifies."""

    def encrypt(self, nonce: bytes, data: Any, associated_data: Any) -> bytes:
        return bytes(16)

    def decrypt(self, nonce: bytes, data: Any, associated_data: Any) -> bytes:
        return b""


def codec_body(operation: str, shape: str, *, encrypt: bool = False, null_aead: bool = False,
               groups: bool = False) -> Callable[[SimpleNamespace], Body]:
    def prepare(impl: SimpleNamespace) -> Body:
        codec = impl.codec.FrameCodec(KEY, CLUSTER_ID, encrypt=encrypt)
        if null_aead:
            # The subkey cache is keyed by the header's (sender_id, epoch) bytes and a cached
            # entry is used as is (codec_py._remember): this swaps sender 1, epoch 1's AEAD.
            codec._aeads[struct.pack("<QQ", 1, 1)] = NullAead()
        messages = append_messages(impl.codec, *SHAPES[shape])
        if groups:
            for number, message in enumerate(messages):
                message.group = 10_000 + number
        datagram = codec.encode(1, 1, 1, messages)
        if operation == "encode":
            return lambda: codec.encode(1, 1, 1, messages)
        if operation == "decode":
            return lambda: codec.decode(datagram).messages
        return lambda: codec.decode(codec.encode(1, 1, 1, messages)).messages

    return prepare


def gmac_body(shape: str) -> Callable[[SimpleNamespace], Body]:
    """What one encode + one decode spend on the tag: one GMAC computed, one verified (the
    subkey cached, as in a steady-state sender and receiver)."""

    def prepare(impl: SimpleNamespace) -> Body:
        from engine._core import codec_py

        datagram = codec_py.FrameCodec(KEY, CLUSTER_ID).encode(
            1, 1, 1, append_messages(codec_py, *SHAPES[shape]))
        aead = AESGCM(bytes(32))
        body = memoryview(datagram)[:-16]
        nonce = bytes(12)

        def tag_and_verify() -> bytes:
            tag: bytes = aead.encrypt(nonce, b"", body)
            return aead.decrypt(nonce, tag, body)

        return tag_and_verify

    return prepare


def _codec_cases() -> dict[str, Case]:
    cases: dict[str, Case] = {}
    for shape, (count, entries) in SHAPES.items():
        round_trip = f"codec encode+decode {shape}"

        def decoded(result: Any, count: int = count, entries: int = entries) -> bool:
            return len(result) == count and all(len(m.entries) == entries for m in result)

        cases[f"codec_encode_{shape}"] = Case(
            f"codec encode {shape}", codec_body("encode", shape),
            lambda datagram: isinstance(datagram, bytes) and len(datagram) > 7000)
        cases[f"codec_decode_{shape}"] = Case(
            f"codec decode {shape}", codec_body("decode", shape), decoded)
        cases[f"codec_roundtrip_{shape}"] = Case(
            round_trip, codec_body("round trip", shape), decoded)
        cases[f"codec_roundtrip_{shape}_encrypted"] = Case(
            round_trip, codec_body("round trip", shape, encrypt=True), decoded)
        cases[f"codec_roundtrip_{shape}_null-aead"] = Case(
            round_trip, codec_body("round trip", shape, null_aead=True), decoded)
        cases[f"codec_roundtrip_{shape}_groups"] = Case(
            round_trip, codec_body("round trip", shape, groups=True), decoded)
        cases[f"codec_roundtrip_{shape}_gmac"] = Case(
            round_trip, gmac_body(shape), lambda plaintext: plaintext == b"", twins=False)
    return cases


# ---------------------------------------------------------------- log

ENTRIES = 10_000
PAYLOAD_BYTES = 100


def payloads() -> list[bytes]:
    return [bytes([k % 256]) * PAYLOAD_BYTES for k in range(ENTRIES)]


def log_append_read(impl: SimpleNamespace) -> Body:
    batch = [impl.codec.Entry(1, k + 1, data) for k, data in enumerate(payloads())]

    def run() -> list[Any]:
        log = impl.log.EntryLog()
        log.append(batch)
        return list(log.entries(1, ENTRIES + 1))

    return run


def log_append_payloads_read(impl: SimpleNamespace) -> Body:
    data = payloads()

    def run() -> list[Any]:
        log = impl.log.EntryLog()
        log.append_payloads(1, 0, data)
        return list(log.entries(1, ENTRIES + 1))

    return run


def log_term_at(impl: SimpleNamespace) -> Body:
    log = impl.log.EntryLog()
    log.append_payloads(3, 0, payloads())
    term_at = log.term_at
    return lambda: sum(term_at(index) for index in range(1, ENTRIES + 1))


def read_back(entries: list[Any]) -> bool:
    return len(entries) == ENTRIES and entries[-1].data == payloads()[-1]


# ---------------------------------------------------------------- quorum

GROUPS = 10_000
VOTERS = 5
MATCH_5 = [1_000_007, 1_000_003, 999_998, 1_000_010, 1_000_001]


def match_matrix() -> np.ndarray:
    rng = np.random.default_rng(20240601)
    return rng.integers(1_000_000, 1_010_000, size=(GROUPS, VOTERS), dtype=np.uint64)


def quorum_batched(impl: SimpleNamespace) -> Body:
    match = match_matrix()
    return lambda: impl.quorum.batched_committed_index(match).tolist()


def plain_loop_over(rows_of: Callable[[np.ndarray], Any]) -> Callable[[SimpleNamespace], Body]:
    """Baseline: one committed_index per row, as a user holding the rows would write it."""

    def prepare(impl: SimpleNamespace) -> Body:
        rows = rows_of(match_matrix())
        committed_index = quorum_py.committed_index
        return lambda: [committed_index(row) for row in rows]

    return prepare


def batched_is_right(result: list[int]) -> bool:
    committed_index = quorum_py.committed_index
    return [int(x) for x in result] == [committed_index(r) for r in match_matrix().tolist()]


# ---------------------------------------------------------------- kvput

PUTS = 10_000
KEYS = 4_096


def puts(session: bool) -> list[bytes]:
    value = bytes(range(PAYLOAD_BYTES))
    if session:
        return [commands.encode_put(b"key-%d" % (k % KEYS), value, client_id=7, seq=k + 1)
                for k in range(PUTS)]
    return [commands.encode_put(b"key-%d" % (k % KEYS), value) for k in range(PUTS)]


def kvput_apply(impl: SimpleNamespace) -> Body:
    batch = puts(session=False)
    apply_put = impl.kvput.apply_put

    def run() -> dict[bytes, bytes]:
        data: dict[bytes, bytes] = {}
        for index, command in enumerate(batch, 1):
            apply_put(data, command, index)
        return data

    return run


def kvput_parse(impl: SimpleNamespace) -> Body:
    batch = puts(session=True)
    parse_put = impl.kvput.parse_put
    return lambda: sum(parse_put(command)[3] for command in batch)


# ---------------------------------------------------------------- kvstore

SCAN_STORE_KEYS = 100_000


def store_puts() -> list[bytes]:
    """PUTS session-less PUTs of 100-byte values to distinct keys in no order."""
    value = bytes(PAYLOAD_BYTES)
    return [commands.encode_put(b"user/%09d" % (k * 7919 % 10**9), value)
            for k in range(1, PUTS + 1)]


def kvstore_new_keys(impl: SimpleNamespace) -> Body:
    """Every PUT creates its key (the map and the key order), into a fresh store."""
    from engine.kv import KVStore

    batch = store_puts()

    def run() -> int:
        store = KVStore()
        apply = store.apply
        for index, command in enumerate(batch, 1):
            apply(index, command)
        return len(store)

    return run


def kvstore_existing_keys(impl: SimpleNamespace, retention_s: int | None = None) -> Body:
    """Every PUT overwrites a key the store holds: the map, the key's revision and (MVCC
    history kept, the default) the replaced version; retention_s=0 keeps no history."""
    from engine.config import Limits
    from engine.kv import KVStore

    batch = store_puts()
    store = KVStore(None if retention_s is None else Limits(mvcc_retention_s=retention_s))
    for index, command in enumerate(batch, 1):
        store.apply(index, command)

    def run() -> int:
        apply = store.apply
        for index, command in enumerate(batch, store.applied_index + 1):
            apply(index, command)
        return len(store)

    return run


def kvstore_scan(impl: SimpleNamespace) -> Body:
    from engine.kv import KVStore

    store = KVStore()
    value = bytes(PAYLOAD_BYTES)
    for index in range(1, SCAN_STORE_KEYS + 1):
        store.apply(index, commands.encode_put(b"user/%09d" % (index * 7919 % 10**9), value))
    query = commands.encode_scan(b"user/5", None, limit=100)
    return lambda: commands.decode_scan_result(commands.decode_result(store.query(query)))


# ---------------------------------------------------------------- the table

CASES: dict[str, Case] = {
    **_codec_cases(),
    "log_append_read": Case("log: append 10k Entry (100 B) + read back", log_append_read,
                            read_back),
    "log_append_payloads_read": Case("log: append_payloads 10k (100 B) + read back",
                                     log_append_payloads_read, read_back),
    "log_term_at": Case("log: 10k term_at", log_term_at, lambda total: total == 3 * ENTRIES),
    "quorum_committed_index": Case(
        "quorum: committed_index, 5 voters",
        lambda impl: lambda: impl.quorum.committed_index(MATCH_5),
        lambda index: index == 1_000_003),
    "quorum_batched": Case("quorum: 10k groups x 5 voters", quorum_batched, batched_is_right),
    "quorum_plain_loop_lists": Case(
        "quorum: 10k groups x 5 voters", plain_loop_over(lambda m: m.tolist()),
        batched_is_right, twins=False),
    "quorum_plain_loop_ndarray": Case(
        "quorum: 10k groups x 5 voters", plain_loop_over(lambda m: m), batched_is_right,
        twins=False),
    "kvput_apply": Case("kvput: apply_put 10k (100 B values, 4,096 keys)", kvput_apply,
                        lambda data: len(data) == KEYS),
    "kvput_parse_session": Case("kvput: parse_put 10k with a session", kvput_parse,
                                lambda total: total == PUTS * (PUTS + 1) // 2),
    "kvstore_apply_existing_keys": Case(
        "kvstore: apply 10k PUTs (100 B)", kvstore_existing_keys, lambda n: n == PUTS,
        twins=False),
    "kvstore_apply_existing_keys_no_history": Case(
        "kvstore: apply 10k PUTs (100 B)", lambda impl: kvstore_existing_keys(impl, 0),
        lambda n: n == PUTS, twins=False),
    "kvstore_apply_new_keys": Case(
        "kvstore: apply 10k PUTs (100 B)", kvstore_new_keys, lambda n: n == PUTS, twins=False),
    "kvstore_scan_100": Case(
        "kvstore: SCAN of 100 keys in 100k", kvstore_scan,
        lambda page: len(page.items) == 100 and page.more, twins=False),
}


def rows() -> list[tuple[str, str]]:
    """(case, implementation) of every benchmark: twins in each implementation available,
    the others once (in the first: "c" when compiled)."""
    names = implementations.available()
    return [(case, name) for case, spec in CASES.items()
            for name in (names if spec.twins else names[:1])]


@pytest.mark.parametrize(("case", "implementation"), rows())
def test_micro(benchmark: Any, micro_medians: dict[tuple[str, str, str], float], case: str,
               implementation: str) -> None:
    spec = CASES[case]
    body = spec.prepare(implementations.load(implementation))
    benchmark.group = spec.group
    benchmark.extra_info.update(case=case, implementation=implementation)
    result = benchmark(body)
    assert spec.check(result)
    if benchmark.stats is not None:   # None under --benchmark-disable
        micro_medians[(spec.group, case, implementation)] = benchmark.stats.stats.median

"""KVStore.apply of plain PUTs (no timestamp) with and without MVCC history.

    python bench/bench_kv_mvcc.py                 # history kept (the default Limits)
    python bench/bench_kv_mvcc.py --retention 0   # Limits(mvcc_retention_s=0): no history
    ENGINE_NO_EXTENSIONS=1 python bench/bench_kv_mvcc.py   # the pure-Python twin

10,000 session-less PUTs of 100-byte values to 10,000 keys: new keys into a fresh store;
overwrites at steady state (20 warm-up rounds first, so a store keeping history is at
Limits.max_mvcc_history_bytes and collecting); the same overwrites in a client session.
Prints the best of --repeat runs in ns per PUT. Run it alternately with an older checkout
(its Limits has no mvcc_retention_s: leave --retention out) to compare.
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable

from engine._core import kvput
from engine.config import Limits
from engine.kv import KVStore, commands

PUTS = 10_000
WARM_UP_ROUNDS = 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--retention", type=int, default=None,
                        help="Limits.mvcc_retention_s (default: the Limits default)")
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()

    def new_store() -> KVStore:
        if args.retention is None:
            return KVStore()
        return KVStore(Limits(mvcc_retention_s=args.retention))

    value = bytes(100)
    keys = [b"user/%09d" % (k * 7919 % 10**9) for k in range(1, PUTS + 1)]
    plain = [commands.encode_put(key, value) for key in keys]

    def new_keys() -> None:
        store = new_store()
        apply = store.apply
        for index, command in enumerate(plain, 1):
            apply(index, command)

    overwritten = new_store()

    def overwrites() -> None:
        apply = overwritten.apply
        for index, command in enumerate(plain, overwritten.applied_index + 1):
            apply(index, command)

    in_session = new_store()
    in_session.apply(1, commands.encode_register())
    rounds = iter([[commands.encode_put(key, value, client_id=1, seq=r * PUTS + i + 1)
                    for i, key in enumerate(keys)]
                   for r in range(WARM_UP_ROUNDS + args.repeat)])

    def session_overwrites() -> None:
        apply = in_session.apply
        for index, command in enumerate(next(rounds), in_session.applied_index + 1):
            apply(index, command)

    for _ in range(WARM_UP_ROUNDS):
        overwrites()
        session_overwrites()
    cases: list[tuple[str, Callable[[], None]]] = [
        ("new keys", new_keys), ("overwrites", overwrites),
        ("session overwrites", session_overwrites)]
    twin = kvput.__name__.rsplit(".", 1)[-1]
    for name, body in cases:
        best = min(timeit.repeat(body, number=1, repeat=args.repeat))
        print(f"{twin:9s} {name:20s} {best / PUTS * 1e9:7.0f} ns/put")


if __name__ == "__main__":
    main()

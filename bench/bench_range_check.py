"""The cost of a range's ownership check on the apply path (engine.shard.replica):
RangeStateMachine.apply against KVStore.apply for the same PUTs, with and without a client
session, and the serving side's check before proposing (refusal_of_request).

    PYTHONPATH=. python bench/bench_range_check.py [--puts 200000]

Prints ns per PUT for each and the ratio; the header names the core (cython or python).
"""

from __future__ import annotations

import argparse
import time

from engine._core import IMPLEMENTATION
from engine.kv import commands as kv
from engine.kv.store import KVStore
from engine.shard.map import RangeDescriptor, voters
from engine.shard.replica import RangeStateMachine


def _time(apply: object, puts: list[bytes], first: int) -> float:
    start = time.perf_counter_ns()
    for index, command in enumerate(puts, first):
        apply(index, command)   # type: ignore[operator]
    return (time.perf_counter_ns() - start) / len(puts)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--puts", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    descriptor = RangeDescriptor(1, b"", None, 1, voters(1, 2, 3))
    plain = [kv.encode_put(b"key%07d" % (i % 50_000), b"v" * 16) for i in range(args.puts)]
    session = [kv.encode_put(b"key%07d" % (i % 50_000), b"v" * 16, client_id=1, seq=i + 1)
               for i in range(args.puts)]
    print(f"{IMPLEMENTATION} core, {args.puts} PUTs of 16-byte values over 50k keys, "
          f"best of {args.rounds}")
    for name, puts in (("no session", plain), ("in a session", session)):
        best_kv = best_range = float("inf")
        for _ in range(args.rounds):
            store = KVStore()
            machine = RangeStateMachine(descriptor)
            first = 1
            if puts is session:   # the session the commands name: client id 1
                store.apply(1, kv.encode_register())
                machine.apply(1, kv.encode_register())
                first = 2
            best_kv = min(best_kv, _time(store.apply, puts, first))
            best_range = min(best_range, _time(machine.apply, puts, first))
        print(f"  apply {name}: KVStore {best_kv:.0f} ns, RangeStateMachine "
              f"{best_range:.0f} ns (+{best_range - best_kv:.0f} ns, "
              f"x{best_range / best_kv:.2f})")
    check = RangeStateMachine(descriptor).refusal_of_request
    start = time.perf_counter_ns()
    for command in session:
        check(command, True)
    print(f"  serving check before proposing: "
          f"{(time.perf_counter_ns() - start) / len(session):.0f} ns per request")


if __name__ == "__main__":
    main()

"""check_linearizable against histories someone else recorded and judged: Porcupine's test data.

The files are anishathalye/porcupine's test_data (MIT), kept unchanged in the shared data
directory next to the repository (../shared/histories/porcupine, README.md there), with each
history's verdict as Porcupine's own tests state it (expected.json):

- jepsen/etcd_NNN.log: Jepsen register histories recorded against etcd (read, write, cas);
- kv/cNN-ok.txt, kv/cNN-bad.txt: get/put/append histories of 1, 10 and 50 clients over 10 keys,
  every value starting as "".

The directory is data this test needs, not an optional extra: when it is missing the test
fails and says where it looked (ENGINE_SHARED_DIR overrides ../shared for a checkout that
does not sit next to it).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from engine.testing.linearizability import (
    INITIAL_STEP_BUDGET,
    check_linearizable,
    check_operations,
    parse_history,
)
from engine.testing.models import KVModel

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("ENGINE_SHARED_DIR", REPO / ".." / "shared"))
PORCUPINE = SHARED / "histories" / "porcupine"
EXPECTED = PORCUPINE / "expected.json"

# Generous: every history here is decided in well under a second (the whole set in ~2 s).
# The limit only turns a regression into "unknown" (a failure) instead of a hung test.
TIME_LIMIT_S = 120.0


def expected_verdicts() -> dict[str, bool]:
    if not EXPECTED.is_file():
        return {}
    verdicts: dict[str, bool] = json.loads(EXPECTED.read_text())["linearizable"]
    return verdicts


VERDICTS = expected_verdicts()


def require_data() -> None:
    if not VERDICTS:
        pytest.fail(f"Porcupine's histories are missing: no {EXPECTED} (the shared data "
                    "directory sits next to the repository; ENGINE_SHARED_DIR points elsewhere)")


# -- Porcupine's two file formats, parsed as its porcupine_test.go parses them -----------------

ETCD_LINE = re.compile(
    r"^INFO\s+jepsen\.util\s+-\s+(\d+)\s+:(invoke|ok|fail|info)\s+:(read|write|cas)\s+(.*?)\s*$")
KV_LINE = re.compile(r'^\{:process (\d+), :type :(invoke|ok), :f :(get|put|append), '
                     r':key "([^"]*)", :value (nil|"[^"]*")\}$')


def etcd_value(text: str) -> Any:
    if text in ("nil", ":timed-out"):
        return None
    if text.startswith("["):
        return [int(part) for part in text[1:-1].split()]
    return int(text)


def parse_etcd_log(path: Path) -> list[dict[str, Any]]:
    """Jepsen's log: `:fail` (a cas whose compare failed, a read that timed out) did not take
    effect; `:info` (a write or cas that timed out) may have, at any time after its invoke."""
    history = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        match = ETCD_LINE.match(line)
        assert match, f"{path.name}:{number}: not a Jepsen op line: {line!r}"
        process, kind, f, value = match.groups()
        history.append({"process": int(process), "type": kind, "f": f,
                        "value": etcd_value(value)})
    return history


def parse_kv_log(path: Path) -> list[dict[str, Any]]:
    history = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        match = KV_LINE.match(line)
        assert match, f"{path.name}:{number}: not a kv op line: {line!r}"
        process, kind, f, key, value = match.groups()
        history.append({"process": int(process), "type": kind, "f": f, "key": key,
                        "value": None if value == "nil" else value[1:-1]})
    return history


def check_file(name: str, **limits: Any) -> Any:
    path = PORCUPINE / name
    if name.startswith("jepsen/"):
        return check_linearizable(parse_etcd_log(path), "register", **limits)
    # Porcupine's kv model: every key starts as "", get returns it, append concatenates.
    return check_linearizable(parse_kv_log(path), KVModel(initial=""), **limits)


# -- every history, with its verdict --------------------------------------------------------------


def test_the_data_is_there_and_complete() -> None:
    require_data()
    on_disk = {f"{folder}/{path.name}" for folder in ("jepsen", "kv")
               for path in (PORCUPINE / folder).iterdir()}
    # etcd_095.log is empty in Porcupine's data (its tests skip it): no verdict to hold.
    assert (PORCUPINE / "jepsen" / "etcd_095.log").stat().st_size == 0
    assert on_disk - {"jepsen/etcd_095.log"} == set(VERDICTS)
    assert sum(name.startswith("jepsen/") for name in VERDICTS) == 102
    assert sum(name.startswith("kv/") for name in VERDICTS) == 6
    # Both answers are represented, or agreeing would prove little.
    assert sum(VERDICTS.values()) >= 10 and sum(not v for v in VERDICTS.values()) >= 10


@pytest.mark.parametrize("name", sorted(VERDICTS) or ["<missing data>"])
def test_porcupine_history_verdict(name: str) -> None:
    require_data()
    result = check_file(name, time_limit_s=TIME_LIMIT_S)
    assert result.valid is VERDICTS[name], (result.summary(), result.explanation)
    if result.valid is False:
        assert result.explanation and result.key in result.illegal_keys


def test_c50_bad_is_found_illegal_within_the_interleaving_bound() -> None:
    """50 clients over 10 keys, several keys illegal, some (key "0") costly for any Lowe-style
    search. Interleaving keys with doubling budgets finds the cheapest illegal key: after round
    r every key has had at most B * (2^r - 1) steps (B = INITIAL_STEP_BUDGET), and the round in
    which a key needing s steps is decided is the first whose total reaches s, so no key has
    had more than 2 * s + B steps by then."""
    require_data()
    result = check_file("kv/c50-bad.txt", time_limit_s=TIME_LIMIT_S)
    assert result.valid is False, result.summary()
    ops = [op for op in parse_history(parse_kv_log(PORCUPINE / "kv/c50-bad.txt"))
           if op.key == result.key]
    alone = check_operations(ops, KVModel(initial=""), time_limit_s=TIME_LIMIT_S)
    assert alone.valid is False
    own_steps = alone.steps
    keys = len(result.partitions)
    assert keys == 10
    bound = keys * (2 * own_steps + INITIAL_STEP_BUDGET)
    assert result.steps <= bound, (result.steps, own_steps)
    # Searched alone or in slices between other keys' slices, a key's search is the same
    # search: the same violation with the same evidence.
    assert alone.explanation == result.explanation
    # The others were left undecided, not searched to the end.
    undecided = [p for p in result.partitions if p.reason.startswith("not decided")]
    assert undecided and all(p.valid == "unknown" for p in undecided)

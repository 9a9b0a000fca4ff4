"""Every input in fuzz/corpus/crashes/ is a unit test (the fuzzer's crash inputs become
unit tests by being kept there; see fuzz/README.md).

Each file is run through fuzz/fuzz_codec.py's own `check_input`: decode with every available
implementation, only DecodeError may escape, the implementations agree, and an accepted frame
re-encodes byte-identically. The folder also holds hand-made inputs at the decoder's edges
(fuzz/make_corpus.py), so it is never empty. The seed corpus is replayed too: the seeds are
valid frames, and a change that makes the decoder refuse or mangle one shows up here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

FUZZ_DIR = Path(__file__).resolve().parents[2] / "fuzz"
sys.path.insert(0, str(FUZZ_DIR))

from fuzz_codec import CRASH_DIR, SEED_DIR, check_input, codecs, datagram_of  # noqa: E402

CRASHES = sorted(path for path in CRASH_DIR.iterdir() if path.is_file())
SEEDS = sorted(SEED_DIR.glob("*.bin"))


def test_the_regression_folder_is_not_empty() -> None:
    assert len(CRASHES) >= 20
    assert len(SEEDS) >= 20


@pytest.mark.parametrize("path", CRASHES, ids=[path.name for path in CRASHES])
def test_crash_input_passes_the_fuzz_checks(path: Path) -> None:
    check_input(path.read_bytes())


@pytest.mark.parametrize("path", SEEDS, ids=[path.name for path in SEEDS])
def test_seed_frame_decodes(path: Path) -> None:
    data = path.read_bytes()
    check_input(data)
    for codec in codecs():
        codec.decode(datagram_of(data))  # every seed is a valid frame

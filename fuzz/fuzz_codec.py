"""Coverage-guided fuzzing of the frame decoder (atheris / libFuzzer); see fuzz/README.md.

    python fuzz/fuzz_codec.py -max_total_time=60          # bounded run, crashes saved
    python fuzz/fuzz_codec.py fuzz/corpus/crashes/X.bin  # replay one input

Each input is decoded by every available implementation (engine._core.codec_c, compiled, and
engine._core.codec_py, its pure-Python spec) and `check_input` enforces:

  1. decode raises DecodeError and nothing else (codec_py docstring, "Errors");
  2. both implementations agree: the same frame, or the same error class and text;
  3. an accepted frame is canonical: encoding what was decoded gives back the same bytes.

The first input byte picks how the rest is used, so the fuzzer reaches the parser rather
than only the tag check (a random body never carries a valid keyed tag):
  even: the rest is a datagram, decoded as is (what an attacker without the key can do);
  odd:  the rest is a frame without its tag; the harness seals it with the test key first
        (what a buggy or compromised peer can do: garbage under a valid tag).

A failing input is written by libFuzzer to fuzz/corpus/crashes/ (the harness sets
-artifact_prefix there unless given). tests/hostile/test_fuzz_regressions.py replays every
file of that folder through `check_input`, so each crash becomes a unit test by being kept.

Without atheris (e.g. a Python it has no wheel for) the same `check_input` runs under a
seeded random-mutation loop over the seed corpus: `python fuzz/fuzz_codec.py
-max_total_time=60` still works, with no coverage guidance (it says so when it starts).
"""

from __future__ import annotations

import hashlib
import os
import random
import struct
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

KEY = bytes(range(32))
CLUSTER_ID = 0xC0FFEE
TAG_BYTES = 16
HEADER_BYTES = 42
WIRE_VERSION = 4
# The KDF's domain-separation label, restated from the spec (codec_py "Authentication").
SUBKEY_LABEL = b"engine/wire-v3/frame-subkey/aes256gcm"
SEED_DIR = HERE / "corpus" / "seed"
CRASH_DIR = HERE / "corpus" / "crashes"
MODE_RAW = 0
MODE_SEALED = 1


def implementations() -> list[ModuleType]:
    """codec_py always; codec_c too unless ENGINE_NO_EXTENSIONS is set or it is not built."""
    from engine._core import codec_py, flag

    modules = [codec_py]
    if not flag("ENGINE_NO_EXTENSIONS"):
        try:
            from engine._core import codec_c
        except ImportError:
            pass
        else:
            modules.insert(0, codec_c)
    return modules


_CODECS: list[Any] = []


def codecs() -> list[Any]:
    if not _CODECS:
        _CODECS.extend(module.FrameCodec(KEY, CLUSTER_ID) for module in implementations())
    return _CODECS


def seal(frame_without_tag: bytes) -> bytes:
    """The frame followed by its valid AES-256-GCM tag (codec_py docstring, "Authentication"):
    key from BLAKE2b(key=KEY, label || cluster id, sender, epoch), nonce = counter || kind as
    u32. An input shorter than a header is padded with zeros to name a key and nonce (the
    decoder refuses it by size anyway)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    header = frame_without_tag[:HEADER_BYTES].ljust(HEADER_BYTES, b"\x00")
    subkey = hashlib.blake2b(SUBKEY_LABEL + header[2:26], key=KEY, digest_size=32).digest()
    nonce = header[26:34] + struct.pack("<I", header[1])
    return frame_without_tag + AESGCM(subkey).encrypt(nonce, b"", frame_without_tag)


def datagram_of(data: bytes) -> bytes:
    """The datagram an input stands for (see the module docstring)."""
    if not data:
        return b""
    if data[0] & 1 == MODE_SEALED:
        return seal(data[1:])
    return data[1:]


def outcome(codec: Any, datagram: bytes) -> tuple[Any, ...]:
    """("ok", frame fields...) or ("error", class name, text); any other exception escapes."""
    from engine.errors import DecodeError

    try:
        frame = codec.decode(datagram)
    except DecodeError as error:
        return ("error", type(error).__name__, str(error))
    return (
        "ok", frame.kind, frame.sender_id, frame.epoch, frame.counter, frame.messages,
        frame.fragment_id, frame.part, frame.parts, frame.chunk, frame.receiver_id,
        frame.cluster_id,
    )


def reencoded(codec: Any, result: tuple[Any, ...]) -> bytes:
    """Encode a decoded frame again (for the canonical-form check): with the same codec, or
    for a frame of an unbound sender (cluster id 0) with an unbound codec of its module."""
    (_, kind, sender, epoch, counter, messages, fragment_id, part, parts, chunk, receiver,
     cluster_id) = result
    if cluster_id != codec.cluster_id:
        codec = sys.modules[type(codec).__module__].FrameCodec(KEY, cluster_id)
    if kind == 2:  # FRAME_FRAGMENT
        return codec.encode_fragment(
            sender, epoch, counter, fragment_id, part, parts, chunk, receiver)
    return codec.encode(sender, epoch, counter, messages, receiver)


def check_input(data: bytes) -> None:
    """The fuzz property; raises AssertionError (or whatever escaped decode) on a finding."""
    datagram = datagram_of(data)
    results = [outcome(codec, datagram) for codec in codecs()]
    first = results[0]
    for other in results[1:]:
        if other != first:
            raise AssertionError(f"implementations disagree on {datagram.hex()}: {results}")
    if first[0] == "ok":
        for codec in codecs():
            again = reencoded(codec, first)
            if again != datagram:
                raise AssertionError(
                    f"{type(codec).__module__} accepted a non-canonical frame "
                    f"{datagram.hex()}; it re-encodes as {again.hex()}"
                )


# ---------------------------------------------------------------------- entry points


def _default_args(argv: list[str]) -> list[str]:
    """libFuzzer arguments with this project's defaults added where not given."""
    args = list(argv)
    given = {arg.split("=", 1)[0] for arg in args if arg.startswith("-")}
    corpus_given = any(not arg.startswith("-") for arg in args[1:])
    if "-artifact_prefix" not in given:
        CRASH_DIR.mkdir(parents=True, exist_ok=True)
        args.append(f"-artifact_prefix={CRASH_DIR}{os.sep}")
    if "-timeout" not in given:
        args.append("-timeout=5")      # seconds per input: a hang is a finding too
    if "-max_len" not in given:
        args.append("-max_len=20000")  # room for multi-message frames and entry data
    if not corpus_given:
        # Seeds are read-only inputs; new interesting inputs go to a scratch folder that is
        # not committed (fuzz/corpus/work, see README).
        work = HERE / "corpus" / "work"
        work.mkdir(parents=True, exist_ok=True)
        args += [str(work), str(SEED_DIR)]
    return args


def _atheris_main(argv: list[str]) -> None:
    import atheris

    with atheris.instrument_imports(include=["engine"]):
        from engine._core import codec_py  # noqa: F401  (instrumented for coverage)
    codecs()  # build them now, outside the timed inputs
    atheris.Setup(_default_args(argv), check_input)
    atheris.Fuzz()


def _mutate(rng: random.Random, data: bytearray) -> None:
    """One random edit: flip a bit, cut the tail, insert bytes, or overwrite a u32 field."""
    at = rng.randrange(len(data) + 1)
    operation = rng.randrange(4)
    if operation == 0 and at < len(data):
        data[at] ^= 1 << rng.randrange(8)
    elif operation == 1:
        del data[at:]
    elif operation == 2:
        data[at:at] = rng.randbytes(rng.randrange(1, 9))
    else:
        data[at:at + 4] = rng.randbytes(4)


def _fallback_main(seconds: float, seed: int) -> None:
    """Random mutations of the seed corpus, no coverage guidance (atheris unavailable)."""
    rng = random.Random(seed)
    seeds = [path.read_bytes() for path in sorted(SEED_DIR.glob("*.bin"))] or [b"\x00"]
    print(f"atheris is not importable: random-mutation fallback, seed {seed}, {seconds} s",
          flush=True)
    deadline = time.monotonic() + seconds
    runs = 0
    while time.monotonic() < deadline:
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randrange(1, 5)):
            _mutate(rng, data)
        try:
            check_input(bytes(data))
        except BaseException:
            CRASH_DIR.mkdir(parents=True, exist_ok=True)
            path = CRASH_DIR / f"crash-{hashlib.sha1(data).hexdigest()}"
            path.write_bytes(bytes(data))
            print(f"finding after {runs} runs, input saved to {path}", flush=True)
            raise
        runs += 1
    print(f"Done {runs} runs in {seconds} s", flush=True)


def main(argv: list[str]) -> None:
    files = [Path(arg) for arg in argv[1:] if not arg.startswith("-") and Path(arg).is_file()]
    if files:  # replay mode: check the given inputs and report
        for path in files:
            check_input(path.read_bytes())
            print(f"{path}: ok")
        return
    try:
        import atheris  # noqa: F401
    except ImportError:
        options = dict(arg.lstrip("-").split("=", 1) for arg in argv[1:] if "=" in arg)
        _fallback_main(float(options.get("max_total_time", 60)), int(options.get("seed", 0)))
        return
    _atheris_main(argv)


if __name__ == "__main__":
    main(sys.argv)
